//! The 2:4 sparse GEMM (cuda/sparse_gemm_sm90.cu): D = A * B [+ bias] [+ beta D], A a Sparse24,
//! B dense bf16 stored K-major (given as B^T, N x K row-major) or N-major (B itself, K x N
//! row-major), fp32 accumulation, D in bf16 or f32, row- or column-major. sm_90a only for now
//! (wgmma.mma_async.sp); reference: `reference::matmul` on the decompressed A.

use crate::device::{Device, KernelImage};
use crate::error::{shape, unsupported, During};
use crate::matrix::DeviceMatrix;
use crate::sparse24::Sparse24;
use crate::{MatLayout, Result};
use cudarc::driver::sys::{
    CUdevice_attribute, CUfunction_attribute, CUtensorMapDataType, CUtensorMapFloatOOBfill, CUtensorMapInterleave,
    CUtensorMapL2promotion, CUtensorMapSwizzle,
};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg};
use half::bf16;

/// Tile shape, pipeline depth, cluster and raster order of the sm_90a kernel. `bn`, `stages` and
/// `cluster_m` pick the compiled instance `sparse_gemm_sm90_bn{bn}_s{stages}[_c2]_{k|n}`; tiles
/// are 128 (M) x `bn` (N) x 64 (K). `cluster_m` = 2 runs clusters of two CTAs on vertically
/// adjacent tiles that load each B stage once for both (TMA multicast). `group_m` is the raster:
/// (cluster) tiles run in groups of `group_m` along M (M fastest within a group); 0 lets the
/// library choose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TileConfig {
    pub bn: u32,
    pub stages: u32,
    pub group_m: u32,
    pub schedule: Schedule,
    /// CTAs per cluster along M (1 or 2); tables written before clusters existed mean 1.
    #[serde(default = "one")]
    pub cluster_m: u32,
    /// Ping-pong consumers: each of the two consumer warpgroups owns whole 128 x `bn` tiles and
    /// their main loops take turns, so one tile's epilogue runs under the next tile's MMAs
    /// (instance `_pp`; data-parallel only).
    #[serde(default)]
    pub pingpong: bool,
    /// Stream-K only: how many K pieces each tile of the last, partial wave is split into (at
    /// least 2, at most K / 64); 0 lets the launch pick by `TileConfig::pick_tail_pieces`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tail_pieces: u32,
}

fn is_zero(x: &u32) -> bool {
    *x == 0
}

fn one() -> u32 {
    1
}

/// How tiles are spread over the SMs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Schedule {
    /// The library's choice (data-parallel until stream-K wins somewhere: see `wants_stream_k`).
    #[default]
    Auto,
    /// Whole tiles, round-robin over a persistent grid.
    DataParallel,
    /// Whole waves of tiles data-parallel; each tile of the last, partial wave split into K
    /// pieces spread over every SM (a data-parallel + Stream-K hybrid, Osama et al. 2023), taken
    /// piece by piece so that SMs working at once read the same K range. Each piece but the last
    /// stores its partial tile (plain f32 stores) and raises a flag; the last adds them, in piece
    /// order, and writes the tile: no atomics, no second kernel, the same bits every run.
    StreamK,
}

impl TileConfig {
    /// The compiled instances: 128 x {256, 192, 128} tiles, as many stages as fit 227 KB, the
    /// two wider ones also in clusters of two sharing B, 128 x 128 with ping-pong consumers, and
    /// 128 x 256 with 5 stages and a slim epilogue (`is_slim`).
    pub const ALL: [TileConfig; 8] = [
        TileConfig { bn: 256, stages: 4, group_m: 0, schedule: Schedule::Auto, cluster_m: 1, pingpong: false, tail_pieces: 0 },
        TileConfig { bn: 192, stages: 5, group_m: 0, schedule: Schedule::Auto, cluster_m: 1, pingpong: false, tail_pieces: 0 },
        TileConfig { bn: 128, stages: 6, group_m: 0, schedule: Schedule::Auto, cluster_m: 1, pingpong: false, tail_pieces: 0 },
        TileConfig { bn: 256, stages: 4, group_m: 0, schedule: Schedule::Auto, cluster_m: 2, pingpong: false, tail_pieces: 0 },
        TileConfig { bn: 192, stages: 5, group_m: 0, schedule: Schedule::Auto, cluster_m: 2, pingpong: false, tail_pieces: 0 },
        TileConfig { bn: 128, stages: 7, group_m: 0, schedule: Schedule::Auto, cluster_m: 1, pingpong: true, tail_pieces: 0 },
        TileConfig { bn: 256, stages: 5, group_m: 0, schedule: Schedule::Auto, cluster_m: 1, pingpong: false, tail_pieces: 0 },
        TileConfig { bn: 256, stages: 5, group_m: 0, schedule: Schedule::Auto, cluster_m: 2, pingpong: false, tail_pieces: 0 },
    ];

    /// The 5-stage 128 x 256 instances (alone or in clusters of two): one 8 KB TMA-store buffer a
    /// consumer warpgroup and no f32 staging, which frees the shared memory of a fifth stage
    /// (cuSPARSELt's kernel for the long-K dW shapes, same tile, 5 stages and 2-CTA clusters,
    /// has 232 KB: docs/bench/notes.md). It writes bf16 without
    /// beta only; other epilogues run it as the 4-stage instance (`for_epilogue`).
    pub fn is_slim(self) -> bool {
        self.bn == 256 && self.stages == 5
    }

    /// The config an epilogue that stages f32 chunks (f32 output, beta, the fused GELU backward)
    /// runs for `self`: the 4-stage sibling of the slim instance, `self` otherwise.
    pub fn for_epilogue(self, staged: bool) -> TileConfig {
        if staged && self.is_slim() {
            TileConfig { stages: 4, ..self }
        } else {
            self
        }
    }

    /// Whether `Schedule::Auto` picks stream-K. Never, for now: stream-K in K pieces wins on some
    /// partial-wave shapes (up to 1.24x) and loses on others (up to 1.17x slower) on the H100
    /// (docs/bench/gemm-streamk-h100.md), and a rule from the cost model mispredicted the all-tail
    /// shapes (docs/bench/notes.md); the tuner's table picks it per shape.
    pub fn wants_stream_k(_tiles: usize, _sms: usize) -> bool {
        false
    }

    /// Stream-K: the K pieces to split each of `tail` leftover tiles into, over `clusters`
    /// persistent clusters, for tiles of `k_blocks` K blocks: the count in 2 ..= 16 (and at most
    /// `k_blocks`) with the least predicted tail time, in K blocks of one tile:
    /// rounds x (k_blocks / pieces + 36) + 2 (pieces - 1), where a round is `clusters` pieces at
    /// once and costs 36 K blocks beyond its own (filling and draining a piece's pipeline, storing
    /// its partial and raising its flag), and the last piece adds each partial in about 2. The 36
    /// is fitted on the H100 (fifteenth session, GPT-2 large fc1 dW at 16k: 68 tail tiles of
    /// 128 x 256, 3 / 5 / 7 / 9 pieces took 0.219 / 0.227 / 0.238 / 0.256 ms, i.e. ~36 K blocks a
    /// round and ~0 a partial; the earlier 4 picked 5 pieces, 4% slower than 3). The 2 a partial
    /// is kept all the same: with the tail in one round it is what stops the split short of 16
    /// pieces (11 for 6 tiles of 256 K blocks). None when no split is possible.
    pub fn pick_tail_pieces(tail: usize, clusters: usize, k_blocks: usize) -> Option<usize> {
        let cost = |s: usize| (tail * s).div_ceil(clusters.max(1)) as f64 * (k_blocks as f64 / s as f64 + 36.0) + 2.0 * (s - 1) as f64;
        (2..=k_blocks.min(16)).min_by(|&a, &b| cost(a).total_cmp(&cost(b)))
    }
    pub const BM: usize = 128;
    pub const BK: usize = 64;

    fn kernel_name(self, b_n_major: bool) -> String {
        let c = if self.pingpong { "_pp" } else if self.cluster_m == 2 { "_c2" } else { "" };
        format!("sparse_gemm_sm90_bn{}_s{}{c}_{}", self.bn, self.stages, if b_n_major { "n" } else { "k" })
    }

    /// The instance with the fused GELU-backward epilogue (`sparse_gemm_gelu_backward`).
    fn fused_kernel_name(self) -> String {
        self.kernel_name(false) + "_gelu"
    }

    /// The config the fused GELU-backward epilogue runs for `self`: the same but 192 wide where
    /// `self` is 256 wide (no 256-wide fused instance: its accumulators leave the epilogue's MVUE
    /// too few registers, 2.2x slower on the H100).
    pub fn for_fused_epilogue(self) -> TileConfig {
        if self.bn == 256 {
            TileConfig { bn: 192, stages: 5, ..self }
        } else {
            self
        }
    }

    /// Dynamic shared memory the instance needs (mirrors `Smem` in the kernel).
    pub fn smem_bytes(self) -> usize {
        let s = self.stages as usize;
        let epilogue = if self.is_slim() { 2 * 8192 } else { 2 * 64 * 68 * 4 };
        s * self.stage_bytes() + epilogue + 2 * s * 8 + 1024
    }

    /// One pipeline stage: A's compressed values, B, A's metadata.
    const fn stage_bytes(self) -> usize {
        Self::BM * Self::BK / 2 * 2 + self.bn as usize * Self::BK * 2 + (Self::BM / 16) * (Self::BK / 32) * 16 * 4
    }

    /// The raster group that balances the bytes of A and B a wave of `sms` CTAs touches: a wave
    /// spans g M tiles and sms/g N tiles, reading g * 128 * K bytes of compressed A and
    /// (sms/g) * bn * 2K bytes of B, least at g = sqrt(sms * 2 bn / 128).
    pub fn auto_group_m(self, sms: usize) -> usize {
        ((sms as f64 * 2.0 * self.bn as f64 / 128.0).sqrt().round() as usize).max(1)
    }

    /// The default for a shape the tuner's table does not cover (or a GPU it has no table for):
    /// the instance with the least predicted time, waves x (tile width + a per-tile cost worth
    /// 128 columns). The per-tile cost is what a wave costs beyond its columns (the A slab, the
    /// pipeline fill, the epilogue): fitting the H100's per-wave times of the 256-, 192- and
    /// 128-column data-parallel instances (ninth session, after the ragged-N fix) gives 114
    /// columns on GPT-2 large fc1 dW and ~250 on XL fc1 dW; with the old 16 the default picked
    /// 128 x 128 for XL fc1 dW (0.423 ms against 0.327 for 128 x 256, the tuned pick). Ties go
    /// to the wider tile. Clusters are left to the tuner's measurements.
    pub fn default_for(m: usize, n: usize, sms: usize) -> TileConfig {
        let cost = |c: &TileConfig| {
            let tiles = m.div_ceil(Self::BM) * n.div_ceil(c.bn as usize);
            tiles.div_ceil(sms.max(1)) as f64 * (c.bn as f64 + 128.0)
        };
        *Self::ALL.iter().filter(|c| c.cluster_m == 1 && !c.pingpong).min_by(|a, b| cost(a).total_cmp(&cost(b))).unwrap_or(&Self::ALL[0])
    }
}

/// The dense operand B (K x N) and how it is stored.
#[derive(Clone, Copy)]
pub enum BOperand<'a> {
    /// B^T given: an N x K row-major matrix (B is K-major). X in Y = X W^T, dY in dX = dY W.
    KMajor(&'a DeviceMatrix<bf16>),
    /// B given: a K x N row-major matrix (B is N-major). X in dW = S(dY)^T X.
    NMajor(&'a DeviceMatrix<bf16>),
}

impl BOperand<'_> {
    /// (K, N) of B.
    fn kn(&self) -> (usize, usize) {
        match self {
            BOperand::KMajor(bt) => (bt.cols(), bt.rows()),
            BOperand::NMajor(b) => (b.rows(), b.cols()),
        }
    }
    fn matrix(&self) -> &DeviceMatrix<bf16> {
        match self {
            BOperand::KMajor(m) | BOperand::NMajor(m) => m,
        }
    }
}

/// Options of one sparse GEMM call.
#[derive(Clone, Copy, Default)]
pub struct GemmOptions<'a> {
    /// `RowMajor`: `d` is M x N. `ColMajor`: `d` is N x M row-major, i.e. D stored column-major
    /// (Y = X W^T comes out as D = W X^T column-major).
    pub d_layout: Option<MatLayout>,
    /// D = acc + beta * D_old when non-zero.
    pub beta: f32,
    /// Added to row m of D (the output feature of a linear layer); M entries.
    pub bias: Option<&'a CudaSlice<f32>>,
    /// Tile configuration; `None` picks `TileConfig::default_for`.
    pub config: Option<TileConfig>,
}

/// Output element types of the sparse GEMM.
pub trait GemmOut: DeviceRepr {
    const IS_F32: i32;
}
impl GemmOut for bf16 {
    const IS_F32: i32 = 0;
}
impl GemmOut for f32 {
    const IS_F32: i32 = 1;
}

/// A CUtensorMap, 128 bytes, passed by value to the kernel (`__grid_constant__`).
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct TensorMap([u64; 16]);
// SAFETY: plain bytes, the layout of CUtensorMap.
unsafe impl DeviceRepr for TensorMap {}

/// The kernel's `Params` (cuda/sparse_gemm_sm90.cu), field for field.
#[repr(C)]
#[derive(Clone, Copy)]
struct Params {
    d: u64,
    bias: u64,
    beta: f32,
    m: i32,
    n: i32,
    k: i32,
    d_col_major: i32,
    d_f32: i32,
    m_tiles: i32,
    n_tiles: i32,
    tma_store: i32,
    group_m: i32,
    stream_k: i32,
    dp_tiles: i32,
    pieces: i32,
    ws: u64,
    flags: u64,
    epoch: u32,
    mvue_step: u32,
    gelu_x: u64,
    mvue_vals: u64,
    mvue_meta: u64,
    mvue_mask: u64,
    mvue_seed: u64,
}

/// The fused epilogue's operands (device addresses): fc1's pre-activation X and, when `vals` is
/// not 0, S(dH^T)'s buffers and draws.
#[derive(Clone, Copy, Default)]
struct FusedGelu {
    x: u64,
    vals: u64,
    meta: u64,
    mask: u64,
    seed: u64,
    step: u32,
    /// Run it in epilogue warpgroups (`FusedEpilogue::EpilogueWarpgroups`).
    warpgroups: bool,
}

/// Where `sparse_gemm_gelu_backward` runs its fused epilogue (GELU backward, MVUE) on Hopper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FusedEpilogue {
    /// In the two consumer warpgroups after each tile's main loop (the tensor cores wait for it),
    /// at this tile configuration; None: the table's pick for the plain GEMM of this shape (a
    /// 256-wide one runs 192 wide, `TileConfig::for_fused_epilogue`).
    Consumers(Option<TileConfig>),
    /// In two epilogue warpgroups of their own that run a tile's epilogue while the consumers are
    /// in the next tile's main loop, dA handed over in shared memory (128 x 128 tiles, 6 stages,
    /// 544 threads, data-parallel; `group_m` the raster group, 0: automatic).
    EpilogueWarpgroups { group_m: u32 },
}

impl From<Option<TileConfig>> for FusedEpilogue {
    fn from(config: Option<TileConfig>) -> Self {
        FusedEpilogue::Consumers(config)
    }
}

/// The epilogue-warpgroup instance's tile and its shared memory: the stages, two hand-off buffers
/// of 128 rows x 136 bf16 (HAND_BYTES), 2 x stages + 4 mbarriers, 1 KB of alignment
/// (cuda/sparse_gemm_sm90.cu, Smem<.., EW>).
const EW_CONFIG: TileConfig = TileConfig { bn: 128, stages: 6, group_m: 0, schedule: Schedule::DataParallel, cluster_m: 1, pingpong: false, tail_pieces: 0 };
/// Its threads: two consumer warpgroups, EPI_WGS = 2 epilogue warpgroups and the producer as one
/// warp (`threads_of(2)` in cuda/sparse_gemm_sm90.cu).
const EW_THREADS: u32 = 128 * (2 + 2) + 32;
const EW_SMEM: usize = {
    const HAND_PITCH: usize = 136;  // bf16 a hand-off buffer row (HAND_PITCH in the kernel)
    let s = EW_CONFIG.stages as usize;
    s * EW_CONFIG.stage_bytes() + 2 * (TileConfig::BM * HAND_PITCH * 2) + (2 * s + 4) * 8 + 1024
};
// SAFETY: repr(C) plain data matching the CUDA struct.
unsafe impl DeviceRepr for Params {}

#[allow(clippy::too_many_arguments)]
fn tensor_map_2d(
    what: &str,
    ptr: u64,
    dtype: CUtensorMapDataType,
    elem_bytes: u64,
    inner: u64,
    outer: u64,
    box_inner: u32,
    box_outer: u32,
    swizzle: CUtensorMapSwizzle,
) -> Result<TensorMap> {
    let mut map = std::mem::MaybeUninit::<cudarc::driver::sys::CUtensorMap>::uninit();
    let dims = [inner, outer];
    let strides = [inner * elem_bytes];
    let boxes = [box_inner, box_outer];
    let elem_strides = [1u32, 1];
    // SAFETY: all pointers reference live locals of the sizes the rank (2) implies.
    let r = unsafe {
        cudarc::driver::sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            dtype,
            2,
            ptr as *mut _,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            elem_strides.as_ptr(),
            CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            swizzle,
            CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    r.result().during(format!("encoding the TMA descriptor of {what}"))?;
    // SAFETY: initialized by the successful call above; same size and alignment class.
    let map = unsafe { map.assume_init() };
    Ok(TensorMap(map.opaque))
}

/// The SM count, as a typed error when the driver cannot say (the grid depends on it).
fn sm_count(dev: &Device) -> Result<usize> {
    Ok(dev.context().attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).during("reading the SM count")? as usize)
}

/// `cfg`'s compiled instance, its name and dynamic shared memory, with the function's
/// shared-memory limit raised to that.
/// `fused`: the GELU-backward instance, None for the plain GEMM; Some(true): the one with
/// epilogue warpgroups.
fn instance(dev: &Device, cfg: TileConfig, b_n_major: bool, fused: Option<bool>) -> Result<(String, cudarc::driver::CudaFunction, usize)> {
    let (name, smem) = match fused {
        None => (cfg.kernel_name(b_n_major), cfg.smem_bytes()),
        Some(false) => (cfg.fused_kernel_name(), cfg.smem_bytes()),
        Some(true) => ("sparse_gemm_sm90_bn128_s6_ew_k_gelu".to_string(), EW_SMEM),
    };
    let f = dev.function(&name)?;
    f.set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32)
        .during("raising the kernel's shared-memory limit")?;
    Ok((name, f, smem))
}

/// Stream-K's split of `tiles` over `clusters`: (dp_tiles, pieces), the whole waves and the K
/// pieces of each leftover tile; `forced` pieces (clamped to 2 ..= k_blocks) or, with 0, the cost
/// model's. (tiles, 1), all data-parallel, when the tiles fill whole waves or K is one block.
fn stream_k_split(tiles: usize, clusters: usize, k_blocks: usize, forced: usize) -> (usize, usize) {
    let tail = tiles % clusters.max(1);
    let pieces = match forced {
        _ if tail == 0 || k_blocks < 2 => None,
        0 => TileConfig::pick_tail_pieces(tail, clusters, k_blocks),
        p => Some(p.clamp(2, k_blocks)),
    };
    pieces.map_or((tiles, 1), |p| (tiles - tail, p))
}

/// CTAs resident at once: one per SM, or as many whole clusters as fit times their size.
fn slots(dev: &Device, cfg: TileConfig, name: &str, f: &cudarc::driver::CudaFunction, smem: usize, sms: usize) -> Result<usize> {
    if cfg.cluster_m <= 1 {
        return Ok(sms);
    }
    Ok(cfg.cluster_m as usize * max_active_clusters(dev, name, f, smem, sms)?)
}

/// How many CTAs of `cfg`'s instance the persistent grid runs at once on `dev`: one per SM, or
/// for clusters as many whole clusters as fit (they must sit within one GPC).
pub fn resident_ctas(dev: &Device, cfg: TileConfig, b_n_major: bool) -> Result<usize> {
    let sms = sm_count(dev)?;
    let (name, f, smem) = instance(dev, cfg, b_n_major, None)?;
    slots(dev, cfg, &name, &f, smem, sms)
}

/// How many clusters of the instance `name` fit on the GPU at once (queried once per instance
/// and device; clusters must sit within one GPC, so this can be below SMs / 2).
fn max_active_clusters(dev: &Device, name: &str, f: &cudarc::driver::CudaFunction, smem: usize, sms: usize) -> Result<usize> {
    crate::launch::once_per_device(dev, &format!("clusters of {name}"), || {
        let cfg = LaunchConfig { grid_dim: (2 * sms as u32, 1, 1), block_dim: (384, 1, 1), shared_mem_bytes: smem as u32 };
        let n = f.occupancy_max_active_clusters(cfg, dev.stream()).during(format!("querying how many clusters of {name} fit"))? as usize;
        if n == 0 {
            return Err(unsupported("sparse_gemm", format!("no cluster of {name} fits on this GPU; use a config with cluster_m = 1")));
        }
        Ok(n)
    })
}

/// The layout key of a shape table entry: how B is read and D written ("kmajor-colmajor" for the
/// forward and input-gradient GEMMs of a linear layer, "nmajor-rowmajor" for the weight gradient).
pub fn storage_layout(b_n_major: bool, d_col_major: bool) -> String {
    format!("{}-{}", if b_n_major { "nmajor" } else { "kmajor" }, if d_col_major { "colmajor" } else { "rowmajor" })
}

/// D = A * B (+ bias) (+ beta D). A: Sparse24, M x K. B: see `BOperand`. `d`: M x N (row-major)
/// or N x M (`d_layout: ColMajor`). Rules: K a multiple of 64, N a multiple of 8. Hopper with the
/// native image runs the wgmma.sp kernel; sm_80+ otherwise (or with the Ampere image forced)
/// runs the mma.sp kernels with the same options (its speed measured on an H100 only).
pub fn sparse_gemm<T: GemmOut>(dev: &Device, a: &Sparse24, b: BOperand, d: &mut DeviceMatrix<T>, opts: &GemmOptions) -> Result<()> {
    check_gemm(a, b, d, opts)?;
    if !is_sm90(dev)? {
        // Not Hopper, or the Ampere image forced (TWOFOUR_FORCE_AMPERE=1): the warp-level mma.sp
        // kernels (sm_80 and up), same options; `opts.config` is the wgmma kernel's and unused.
        return crate::sparse_mma_sm80::gemm_sm80(dev, a, b, d, opts);
    }
    launch_sm90(dev, a, b, d, opts, None)
}

/// Whether the wgmma.sp kernels run here: Hopper with the native image. `Err` below sm_80.
fn is_sm90(dev: &Device) -> Result<bool> {
    let (major, minor) = dev.compute_capability();
    if major == 9 && dev.image() == KernelImage::Native {
        return Ok(true);
    }
    if major >= 8 {
        return Ok(false);
    }
    Err(unsupported("sparse_gemm", format!("2:4 sparse tensor cores need sm_80 or newer; this GPU is sm_{major}{minor}")))
}

/// fc2's input-gradient GEMM of a GELU MLP with fc1's GELU backward, and optionally MVUE 2:4, in
/// its epilogue: dA = dY W2 (W2 given as `w2t` = (W2 * M)^T compressed, F x d, as for `sparse_gemm`'s
/// dX; `dy` tokens x d), then dH = gelu'(X) dA (`x`: fc1's pre-activation, tokens x F) into
/// `dh`, and with `mvue = Some((seed, step, s))` S(dH^T) (F x tokens, 2:4 along tokens: fc1's dW
/// operand) into `s`. Bit for bit `sparse_gemm` (D column-major, bf16) then `gelu_backward` then
/// `mvue24_compress_into(dH, seed, step)`, without writing dA or reading dH back. F and tokens
/// multiples of 64, d of 64. `epilogue`: where the epilogue runs, `FusedEpilogue` (or a tile
/// configuration: `None` / `Some(cfg)` for `FusedEpilogue::Consumers`).
/// Hopper runs the fused kernel; other GPUs run the three kernels. Speed on the H100 at GPT-2
/// medium (16384 tokens, F = 4096, d = 1024; docs/bench/kernels-h100.md): the GEMM + GELU 0.253 ms
/// in the consumers, 0.217 ms in epilogue warpgroups, against 0.283 ms for the GEMM then
/// `gelu_backward`; with MVUE 0.337 / 0.302 ms against 0.372 ms for the three kernels: in
/// epilogue warpgroups MVUE adds 0.085 ms, less than alone (0.093), not yet hidden.
pub fn sparse_gemm_gelu_backward(
    dev: &Device,
    w2t: &Sparse24,
    dy: &DeviceMatrix<bf16>,
    x: &DeviceMatrix<bf16>,
    dh: &mut DeviceMatrix<bf16>,
    mvue: Option<(u64, u32, &mut Sparse24)>,
    epilogue: impl Into<FusedEpilogue>,
) -> Result<()> {
    let op = "sparse_gemm_gelu_backward";
    let (config, warpgroups) = match epilogue.into() {
        FusedEpilogue::Consumers(c) => (c, false),
        FusedEpilogue::EpilogueWarpgroups { group_m } => (Some(TileConfig { group_m, ..EW_CONFIG }), true),
    };
    let (f, d_model, tokens) = (w2t.rows(), w2t.cols(), dy.rows());
    if dy.cols() != d_model || (x.rows(), x.cols()) != (tokens, f) || (dh.rows(), dh.cols()) != (tokens, f) {
        return Err(shape(
            op,
            format!("W2^T is {f} x {d_model}, dY {} x {}, X {} x {}, dH {} x {}: need dY tokens x {d_model}, X and dH {tokens} x {f}", dy.rows(), dy.cols(), x.rows(), x.cols(), dh.rows(), dh.cols()),
        ));
    }
    if let Some((_, _, s)) = &mvue {
        if (s.rows(), s.cols()) != (f, tokens) {
            return Err(shape(op, format!("S(dH^T) is {} x {}, need {f} x {tokens}", s.rows(), s.cols())));
        }
    }
    if f % 64 != 0 || tokens % 64 != 0 {
        return Err(unsupported(op, format!("F = {f} and tokens = {tokens} must be multiples of 64 (the fused epilogue works on whole 64 x 64 chunks); use sparse_gemm, then gelu_backward_mvue")));
    }
    let opts = GemmOptions { d_layout: Some(MatLayout::ColMajor), config, ..Default::default() };
    let b = BOperand::KMajor(dy);
    if !is_sm90(dev)? {
        let mut da = DeviceMatrix::poisoned(dev, tokens, f)?;
        crate::sparse_mma_sm80::gemm_sm80(dev, w2t, b, &mut da, &opts)?;
        return match mvue {
            Some((seed, step, s)) => crate::gated::gelu_backward_mvue(dev, x, &da, dh, seed, step, s),
            None => crate::gated::gelu_backward(dev, x, &da, dh),
        };
    }
    check_gemm(w2t, b, dh, &opts)?;
    let stream = dev.stream();
    let (px, _gx) = x.data().device_ptr(stream);
    match mvue {
        Some((seed, step, s)) => {
            let (vals, _gv) = s.values.device_ptr_mut(stream);
            let (meta, _gm) = s.meta.device_ptr_mut(stream);
            let (mask, _gk) = s.mask.device_ptr_mut(stream);
            launch_sm90(dev, w2t, b, dh, &opts, Some(FusedGelu { x: px, vals, meta, mask, seed, step, warpgroups }))
        }
        None => launch_sm90(dev, w2t, b, dh, &opts, Some(FusedGelu { x: px, warpgroups, ..Default::default() })),
    }
}

/// `sparse_gemm`'s shape and option checks.
fn check_gemm<T: GemmOut>(a: &Sparse24, b: BOperand, d: &DeviceMatrix<T>, opts: &GemmOptions) -> Result<()> {
    let (m, k) = (a.rows(), a.cols());
    let (bk, n) = b.kn();
    let col = opts.d_layout == Some(MatLayout::ColMajor);
    let (dr, dc) = if col { (n, m) } else { (m, n) };
    if bk != k || d.rows() != dr || d.cols() != dc {
        return Err(shape(
            "sparse_gemm",
            format!(
                "A is {m} x {k}, B {bk} x {n}, D {} x {}: need B with K = {k} and D {dr} x {dc} ({})",
                d.rows(),
                d.cols(),
                if col { "column-major: N x M" } else { "row-major: M x N" }
            ),
        ));
    }
    if k % TileConfig::BK != 0 {
        return Err(unsupported("sparse_gemm", format!("K = {k} must be a multiple of 64 (one pipeline stage); pad K with zero columns")));
    }
    if n % 8 != 0 {
        return Err(unsupported("sparse_gemm", format!("N = {n} must be a multiple of 8 (16-byte rows for TMA and the epilogue's vector stores)")));
    }
    if let Some(b) = opts.bias {
        if b.len() != m {
            return Err(shape("sparse_gemm", format!("bias has {} entries, D has {m} rows", b.len())));
        }
    }
    Ok(())
}

/// The wgmma.sp launch (shapes checked): the plain GEMM, or with `fused` the GELU-backward epilogue.
fn launch_sm90<T: GemmOut>(dev: &Device, a: &Sparse24, b: BOperand, d: &mut DeviceMatrix<T>, opts: &GemmOptions, fused: Option<FusedGelu>) -> Result<()> {
    let (m, k) = (a.rows(), a.cols());
    let (_, n) = b.kn();
    let col = opts.d_layout == Some(MatLayout::ColMajor);
    let b_n_major = matches!(b, BOperand::NMajor(_));
    let sms = sm_count(dev)?;
    let cfg = opts.config.unwrap_or_else(|| {
        crate::shape_table::active(dev.name(), dev.compute_capability())
            .and_then(|t| t.lookup("sparse_gemm", &storage_layout(b_n_major, col), m, n, k))
            .unwrap_or_else(|| TileConfig::default_for(m, n, sms))
    });
    // The fused epilogue: the plain GEMM's pick (the table times that), at a fused instance; the
    // staged epilogues at a non-slim one.
    // (The epilogue-warpgroup call passes its one config: EW_CONFIG with the caller's group_m.)
    let ew = fused.is_some_and(|f| f.warpgroups);
    let cfg = match fused {
        Some(_) if ew => cfg,
        Some(_) => cfg.for_fused_epilogue(),
        None => cfg.for_epilogue(T::IS_F32 != 0 || opts.beta != 0.0),
    };
    if !TileConfig::ALL.iter().any(|c| c.bn == cfg.bn && c.stages == cfg.stages && c.cluster_m == cfg.cluster_m && c.pingpong == cfg.pingpong) {
        return Err(unsupported("sparse_gemm", format!("{cfg:?} is not a compiled instance; choose one of {:?}", TileConfig::ALL)));
    }

    let stream = dev.stream();
    let (pa, _ga) = a.values.device_ptr(stream);
    let (pe, _ge) = a.meta.device_ptr(stream);
    let (pb, _gb) = b.matrix().data().device_ptr(stream);
    use CUtensorMapDataType::*;
    use CUtensorMapSwizzle::*;
    let (k64, m64, n64) = (k as u64, m as u64, n as u64);
    let ta = tensor_map_2d("A values", pa, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, k64 / 2, m64, 32, 128, CU_TENSOR_MAP_SWIZZLE_64B)?;
    let tb = if b_n_major {
        tensor_map_2d("B", pb, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, n64, k64, 64, 64, CU_TENSOR_MAP_SWIZZLE_128B)?
    } else {
        // In a cluster each CTA loads half of the stage's B rows (and multicasts them).
        tensor_map_2d("B", pb, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, k64, n64, 64, cfg.bn / cfg.cluster_m, CU_TENSOR_MAP_SWIZZLE_128B)?
    };
    let te = tensor_map_2d("A metadata", pe, CU_TENSOR_MAP_DATA_TYPE_UINT32, 4, k64 / 2, m64 / 16, 32, 8, CU_TENSOR_MAP_SWIZZLE_NONE)?;
    let bias_ptr = match opts.bias {
        Some(b) => b.device_ptr(stream).0,
        None => 0,
    };
    // Tiles as the kernel schedules them: cluster tiles of cluster_m x 128 rows.
    let cm = cfg.cluster_m as usize;
    let (m_tiles, n_tiles) = (m.div_ceil(TileConfig::BM * cm), n.div_ceil(cfg.bn as usize));
    if m_tiles * n_tiles * (k / TileConfig::BK) >= 1 << 31 {
        return Err(unsupported("sparse_gemm", format!("{m} x {n} x {k} has 2^31 or more (tile, K block) steps, beyond the kernel's 32-bit schedule; split the GEMM along N")));
    }
    let group_m = if cfg.group_m > 0 { cfg.group_m as usize } else { cfg.auto_group_m(sms) }.clamp(1, m_tiles);
    let (pd, _gd) = {
        use cudarc::driver::DevicePtrMut;
        d.data_mut().device_ptr_mut(stream)
    };
    let stream_k = match cfg.schedule {
        Schedule::Auto => TileConfig::wants_stream_k(m_tiles * n_tiles, sms) && !cfg.pingpong,
        Schedule::DataParallel => false,
        Schedule::StreamK => true,
    };
    if stream_k && cfg.pingpong {
        return Err(unsupported("sparse_gemm", format!("{cfg:?}: the ping-pong instance runs whole tiles only; use Schedule::DataParallel or Auto")));
    }
    let (name, f, smem) = instance(dev, cfg, b_n_major, fused.map(|f| f.warpgroups))?;
    let tiles = m_tiles * n_tiles;
    // Persistent grid: one CTA per SM, or as many whole clusters as can be resident at once;
    // no more CTAs than tiles, except that a split stream-K tail fills every slot (with fewer
    // tiles than SMs it splits all of them along K).
    let slots = slots(dev, cfg, &name, &f, smem, sms)?;
    // Stream-K: whole waves data-parallel, only the last partial wave split (none when the tiles
    // fill whole waves, or K is a single block: then the launch is the data-parallel one).
    let k_blocks = k / TileConfig::BK;
    let (dp_tiles, pieces) = if stream_k { stream_k_split(tiles, slots / cm, k_blocks, cfg.tail_pieces as usize) } else { (tiles, 1) };
    let tail = tiles - dp_tiles;
    let grid = if tail > 0 { slots } else { (tiles * cm).min(slots) };
    let fu = fused.unwrap_or_default();
    let run = |ws_ptr: u64, flags_ptr: u64, epoch: u32| -> Result<()> {
        // bf16 output without beta goes out through TMA stores (64 x 64 boxes, 128B swizzle).
        let tma_store = T::IS_F32 == 0 && opts.beta == 0.0 && fused.is_none();
        let td = if tma_store {
            let (inner, outer) = if col { (m64, n64) } else { (n64, m64) };
            tensor_map_2d("D", pd, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, inner, outer, 64, 64, CU_TENSOR_MAP_SWIZZLE_128B)?
        } else {
            TensorMap([0; 16])
        };
        let params = Params {
            d: pd,
            bias: bias_ptr,
            beta: opts.beta,
            m: m as i32,
            n: n as i32,
            k: k as i32,
            d_col_major: col as i32,
            d_f32: T::IS_F32,
            m_tiles: m_tiles as i32,
            n_tiles: n_tiles as i32,
            tma_store: tma_store as i32,
            group_m: group_m as i32,
            stream_k: (tail > 0) as i32,
            dp_tiles: dp_tiles as i32,
            pieces: pieces as i32,
            ws: ws_ptr,
            flags: flags_ptr,
            epoch,
            mvue_step: fu.step,
            gelu_x: fu.x,
            mvue_vals: fu.vals,
            mvue_meta: fu.meta,
            mvue_mask: fu.mask,
            mvue_seed: fu.seed,
        };
        let threads = if ew { EW_THREADS } else { 384 };
        let launch = LaunchConfig { grid_dim: (grid as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: smem as u32 };
        let mut launcher = stream.launch_builder(&f);
        launcher.arg(&ta).arg(&tb).arg(&te).arg(&td).arg(&params);
        // SAFETY: the tensor maps describe live buffers of the checked shapes; Params matches the
        // kernel's struct; D has dr x dc elements of T as Params says.
        unsafe { launcher.launch(launch) }.during(format!("launching {name}"))?;
        Ok(())
    };
    if tail > 0 {
        // Stream-K workspace: a slot (64 x bn f32 and a flag) per tail tile, piece but the last,
        // CTA rank and consumer warpgroup.
        let partial_slots = tail * (pieces - 1) * cm * 2;
        dev.with_stream_k_workspace(partial_slots * 64 * cfg.bn as usize, partial_slots, run)
    } else {
        run(0, 0, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tables written before clusters existed (no `cluster_m` in their configs) still load, as
    /// single-CTA configs.
    #[test]
    fn configs_without_cluster_m_mean_single_ctas() {
        let old = r#"{"bn": 192, "stages": 5, "group_m": 8, "schedule": "DataParallel"}"#;
        let cfg: TileConfig = serde_json::from_str(old).expect("an old-format config");
        assert_eq!(cfg, TileConfig { group_m: 8, schedule: Schedule::DataParallel, ..TileConfig::ALL[1] });
        assert_eq!(cfg.cluster_m, 1);
        let back: TileConfig = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
    }

    /// The untuned default picks among the single-CTA instances only (clusters are the tuner's
    /// call) and names compiled kernels.
    #[test]
    fn default_config_is_a_single_cta_instance() {
        for (m, n) in [(768, 16384), (3072, 768), (6400, 1600), (11008, 16384), (16, 8)] {
            let cfg = TileConfig::default_for(m, n, 132);
            assert_eq!(cfg.cluster_m, 1, "{m} x {n}: {cfg:?}");
            assert!(TileConfig::ALL.contains(&cfg), "{m} x {n}: {cfg:?} is not compiled");
        }
        // Against the tuned picks of tables/h100.json (ninth session): XL fc1 dW and large fc1 dW
        // take 128 x 256 (1 wave fewer than 128 x 192 would need is not worth its narrower
        // tiles' fixed cost), GPT-2 small fc1 dW 128 x 192 (one wave instead of one and a bit).
        assert_eq!(TileConfig::default_for(6400, 1600, 132).bn, 256);
        assert_eq!(TileConfig::default_for(5120, 1280, 132).bn, 256);
        assert_eq!(TileConfig::default_for(3072, 768, 132).bn, 192);
        assert_eq!(TileConfig::ALL[3].kernel_name(false), "sparse_gemm_sm90_bn256_s4_c2_k");
        assert_eq!(TileConfig::ALL[0].kernel_name(true), "sparse_gemm_sm90_bn256_s4_n");
    }

    /// Every instance fits the H100's 227 KB of shared memory a block (the slim one by its smaller
    /// epilogue), and the staged epilogues never run the slim instance.
    #[test]
    fn instances_fit_shared_memory_and_slim_maps_to_staged() {
        for c in TileConfig::ALL {
            assert!(c.smem_bytes() <= 232_448, "{c:?}: {} bytes", c.smem_bytes());
        }
        let slim = TileConfig::ALL[6];
        assert!(slim.is_slim() && !TileConfig::ALL[0].is_slim());
        assert_eq!(slim.for_epilogue(true), TileConfig::ALL[0]);
        assert_eq!(slim.for_epilogue(false), slim);
        assert_eq!(slim.for_fused_epilogue().bn, 192);
        assert!(TileConfig::ALL.iter().all(|c| c.for_epilogue(true).smem_bytes() <= 232_448 && !c.for_epilogue(true).is_slim()));
        // The epilogue-warpgroup instance: 6 x 25 KB stages + two 34 KB hand-off buffers
        // (Smem<128, 6, 1>::TOTAL in cuda/sparse_gemm_sm90.cu), within the 227 KB an SM gives.
        assert_eq!(EW_SMEM, 224_384);
        assert!(EW_SMEM <= 232_448);
        assert_eq!(FusedEpilogue::from(None), FusedEpilogue::Consumers(None));
    }

    /// The kernel's `Schedule` (cuda/sparse_gemm_sm90.cu), step for step: the segments
    /// (tile, kb_begin, kb_end, piece) cluster `c` of `clusters` runs, in order, with each one's
    /// unit number. Units below dp_tiles are whole tiles; unit dp_tiles + q is piece q / tail of
    /// tail tile dp_tiles + q % tail.
    fn device_schedule(tiles: usize, k_blocks: usize, clusters: usize, dp_tiles: usize, pieces: usize, c: usize) -> Vec<(usize, usize, usize, usize, usize)> {
        let tail = tiles - dp_tiles;
        let units = dp_tiles + tail * pieces;
        (c..units)
            .step_by(clusters)
            .map(|unit| {
                let split = unit >= dp_tiles;
                let q = if split { unit - dp_tiles } else { 0 };
                let i = q / tail.max(1);
                let tile = if split { dp_tiles + q - i * tail } else { unit };
                (tile, i * k_blocks / pieces, if split { (i + 1) * k_blocks / pieces } else { k_blocks }, i, unit)
            })
            .collect()
    }

    const SPLITS: [(usize, usize, usize); 10] = [(450, 256, 132), (350, 256, 132), (72, 256, 132), (264, 16, 132), (5, 3, 132), (1, 1, 66), (133, 7, 132), (86, 256, 66), (200, 2, 132), (270, 256, 132)];

    /// Data-parallel waves + the split tail cover every (tile, K block) exactly once, give whole
    /// tiles below dp_tiles and non-empty pieces above, and give no cluster more than one unit
    /// beyond another's.
    fn check_cover(tiles: usize, k_blocks: usize, clusters: usize, forced: usize) {
        let (dp_tiles, pieces) = stream_k_split(tiles, clusters, k_blocks, forced);
        let mut seen = vec![0u8; tiles * k_blocks];
        let mut counts = Vec::new();
        for c in 0..clusters {
            let segs = device_schedule(tiles, k_blocks, clusters, dp_tiles, pieces, c);
            counts.push(segs.len());
            for (tile, b, e, _, _) in segs {
                assert!(b < e && e <= k_blocks, "{tiles}/{k_blocks}/{clusters}: segment {tile} {b}..{e}");
                if tile < dp_tiles {
                    assert_eq!((b, e), (0, k_blocks), "data-parallel tiles are whole");
                }
                for kb in b..e {
                    seen[tile * k_blocks + kb] += 1;
                }
            }
        }
        assert!(seen.iter().all(|&x| x == 1), "{tiles} tiles x {k_blocks} K blocks on {clusters}, {pieces} pieces: not covered exactly once");
        let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(hi - lo <= 1, "{tiles}/{k_blocks}/{clusters}: units per cluster {lo}..{hi}");
    }

    /// The fixup's bookkeeping, as the consumer does it (cuda/sparse_gemm_sm90.cu, fixup_*):
    /// pieces 0 .. pieces - 2 of a tail tile are partials in distinct slots, and the last piece,
    /// which adds them, is the tile's highest unit (it waits only on lower units, so the waits
    /// end: each partial is stored before its cluster reaches any later unit).
    fn check_waits(tiles: usize, k_blocks: usize, clusters: usize, forced: usize) {
        let (dp_tiles, pieces) = stream_k_split(tiles, clusters, k_blocks, forced);
        if dp_tiles == tiles {
            return;
        }
        let mut units = vec![vec![None; pieces]; tiles];
        let mut slots = std::collections::HashSet::new();
        for c in 0..clusters {
            for (tile, b, _, piece, unit) in device_schedule(tiles, k_blocks, clusters, dp_tiles, pieces, c) {
                if tile < dp_tiles {
                    continue;
                }
                assert_eq!(b, piece * k_blocks / pieces);
                assert!(units[tile][piece].replace(unit).is_none(), "tile {tile} piece {piece} twice");
                if piece < pieces - 1 {
                    assert!(slots.insert((tile - dp_tiles) * (pieces - 1) + piece), "slot reused");
                }
            }
        }
        for (tile, u) in units.iter().enumerate().skip(dp_tiles) {
            let last = u[pieces - 1].expect("every tail tile has its last piece");
            assert!(u[..pieces - 1].iter().all(|p| p.is_some_and(|p| p < last)), "{tiles}/{k_blocks}/{clusters}: tile {tile} units {u:?}");
        }
    }

    #[test]
    fn stream_k_units_cover_every_iteration_once() {
        for (tiles, k_blocks, clusters) in SPLITS {
            for forced in [0, 2, 16] {
                check_cover(tiles, k_blocks, clusters, forced);
            }
        }
    }

    #[test]
    fn stream_k_last_piece_waits_only_on_earlier_units() {
        for (tiles, k_blocks, clusters) in SPLITS {
            for forced in [0, 2, 16] {
                check_waits(tiles, k_blocks, clusters, forced);
            }
        }
    }

    proptest::proptest! {
        /// Both rules over random grids: tile counts, K lengths and cluster counts, with the
        /// model's pieces or forced ones.
        #[test]
        fn stream_k_schedule_holds_for_any_grid(tiles in 1usize..2500, k_blocks in 1usize..200, clusters in 1usize..140, forced in proptest::prop_oneof![proptest::strategy::Just(0usize), 2usize..=16]) {
            check_cover(tiles, k_blocks, clusters, forced);
            check_waits(tiles, k_blocks, clusters, forced);
        }
    }

    /// The pieces the cost model picks: GPT-2 XL fc1 dW (350 tiles of 128 x 256 on 132 SMs: 86
    /// left over, 256 K blocks) in three (two rounds of a third of a tile instead of one whole
    /// tile); a tail of 6 tiles in 11 (one round of 22 K blocks: finer pieces would add more in
    /// partials than they save); a 2-block K in two.
    #[test]
    fn tail_pieces_fill_the_rounds() {
        assert_eq!(TileConfig::pick_tail_pieces(86, 132, 256), Some(3));
        assert_eq!(TileConfig::pick_tail_pieces(6, 132, 256), Some(11));
        assert_eq!(TileConfig::pick_tail_pieces(61, 132, 1024), Some(2));
        assert_eq!(TileConfig::pick_tail_pieces(5, 132, 2), Some(2));
        assert_eq!(TileConfig::pick_tail_pieces(5, 132, 1), None);
        // GPT-2 large fc1 dW at 16k (200 tiles of 128 x 256): 3 pieces, the measured best.
        assert_eq!(TileConfig::pick_tail_pieces(68, 132, 256), Some(3));
    }
}
