//! The GPU path of the trainer, llm.c-style: one flat f32 master copy of the parameters (the CPU
//! reference's `ParamLayout`), a bf16 shadow the GEMMs read, f32 gradients in the same layout,
//! AdamW moments; bf16 activations kept per layer for the backward pass. GEMMs run on cuBLASLt
//! (`gemm`), everything else on twofour's `gpt_*` kernels (cuda/gpt_*.cu). No floating-point
//! atomics: a step is reproducible bit for bit.
//!
//! Checked against `reference` by tests/gpu.rs: logits, loss, every gradient, 10 AdamW steps.

pub mod gemm;

use crate::reference::{Config, ParamLayout};
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, DevicePtr, DriverError, LaunchConfig, PushKernelArg};
use gemm::{Epilogue, Gemm};
use half::bf16;
use std::sync::Arc;
use twofour::{Device, Error, Result};

/// The head size every fused attention kernel is built for.
pub const HEAD_SIZE: usize = 64;
/// Rows of a column-sum chunk (gpt_colsum_partial).
const CHUNK_ROWS: usize = 512;
/// Blocks the fused LayerNorm backward aims for (two per H100 SM): its weight-gradient chunks.
const LN_CHUNKS: usize = 264;

/// Rows a block of the fused LayerNorm backward owns: a multiple of its 8 warps, about n / LN_CHUNKS.
fn ln_chunk_rows(n: usize) -> usize {
    n.div_ceil(LN_CHUNKS).next_multiple_of(8)
}
/// Blocks of the gradient-norm reduction: fixed, so the sum's order is too.
const NORM_BLOCKS: usize = 1024;

fn drv(what: &'static str) -> impl FnOnce(DriverError) -> Error {
    move |source| Error::Driver { during: what.into(), source }
}

/// A kernel argument (kernels take raw device pointers: offsets into the big buffers).
enum Arg {
    P(u64),
    I(i32),
    L(i64),
    F(f32),
}

struct Kernels {
    encoder_forward: CudaFunction,
    encoder_backward_wpe: CudaFunction,
    encoder_backward_wte: CudaFunction,
    layernorm_forward: CudaFunction,
    residual_layernorm_forward: CudaFunction,
    layernorm_backward: CudaFunction,
    /// gpt_layernorm_backward_fused_k{3,4,5}: C <= 768, 1024, 1280.
    layernorm_backward_fused: [CudaFunction; 3],
    attention_forward: CudaFunction,
    attention_backward_dot: CudaFunction,
    attention_backward_dkdv: AttKernel,
    attention_backward_dq: AttKernel,
    gelu_forward: CudaFunction,
    gelu_backward: CudaFunction,
    gated_forward: CudaFunction,
    gated_backward: CudaFunction,
    colsum_partial: CudaFunction,
    colsum_finalize: CudaFunction,
    colsum_finalize_wide: CudaFunction,
    softmax_cross_entropy: CudaFunction,
    adamw: CudaFunction,
    sumsq_partial: CudaFunction,
    f32_to_bf16: CudaFunction,
}

/// Bytes of dynamic shared memory of the attention kernels (see cuda/gpt_attention.cu): 64 x 72
/// bf16 tiles; forward 2 Q tiles (128 queries) + 2 x (K, V); dK/dV K, V + 2 x (Q, dO) + 2 x (lse, D); dQ Q, dO + 2 x (K, V).
const ATT_TILE: usize = 64 * 72 * 2;
const ATT_FWD_SMEM: usize = 6 * ATT_TILE;
/// Queries per CTA of the forward kernel (two 16-row m tiles a warp).
const ATT_FWD_ROWS: usize = 128;

/// An attention backward kernel (cuda/gpt_attention.cu) and its launch: `rows` keys (dK/dV) or
/// queries (dQ) a CTA of 128 threads, `smem` bytes of dynamic shared memory.
struct AttKernel {
    f: CudaFunction,
    name: &'static str,
    rows: usize,
    smem: usize,
}

impl AttKernel {
    /// The backward kernels, dK/dV and dQ on 64-row blocks. Shared memory: the block's own
    /// tiles + 2 x the other side's (Q, dO) or (K, V), + 2 x (lse, D) for dK/dV.
    fn load_backward(dev: &Device) -> Result<(AttKernel, AttKernel)> {
        let k = |name: &'static str, rows: usize, smem: usize| -> Result<AttKernel> {
            let f = dev.function(name)?;
            allow_smem(&f, smem)?;
            Ok(AttKernel { f, name, rows, smem })
        };
        let sides = 4 * 64 * 4;
        Ok((
            k("gpt_attention_backward_dkdv", 64, 6 * ATT_TILE + sides)?,
            k("gpt_attention_backward_dq", 64, 6 * ATT_TILE)?,
        ))
    }
}

/// Activations of one forward pass (bf16 unless noted), every layer's side by side.
struct Acts {
    tokens: CudaSlice<i32>,
    targets: CudaSlice<i32>,
    encoded: CudaSlice<bf16>,
    ln1: CudaSlice<bf16>,
    ln1_stats: CudaSlice<f32>, // mean then rstd, per layer: 2 x n
    qkv: CudaSlice<bf16>,
    atty: CudaSlice<bf16>,
    lse: CudaSlice<f32>,
    residual2: CudaSlice<bf16>,
    ln2: CudaSlice<bf16>,
    ln2_stats: CudaSlice<f32>,
    fch: CudaSlice<bf16>,
    fch_act: CudaSlice<bf16>,
    residual3: CudaSlice<bf16>,
    lnf: CudaSlice<bf16>,
    lnf_stats: CudaSlice<f32>,
    logits: CudaSlice<bf16>,
    losses: CudaSlice<f32>,
    // backward scratch
    proj: CudaSlice<bf16>,
    dres: CudaSlice<bf16>,
    dtmp: CudaSlice<bf16>,
    dact: CudaSlice<bf16>,
    dfch: CudaSlice<bf16>,
    dqkv: CudaSlice<bf16>,
    att_d: CudaSlice<f32>,
    partial: CudaSlice<f32>,
    /// Bias gradients written by GEMM epilogues, added to the gradients by gpt_colsum_finalize.
    dbias: CudaSlice<f32>,
    norm_partial: CudaSlice<f32>,
}

/// A GPT-2 model on the GPU, sized for batches of `b` sequences of `t` tokens.
pub struct GpuModel {
    pub cfg: Config,
    pub b: usize,
    pub t: usize,
    vp: usize,
    layout: ParamLayout,
    dev: Device,
    stream: Arc<CudaStream>,
    gemm: Gemm,
    k: Kernels,
    master: CudaSlice<f32>,
    shadow: CudaSlice<bf16>,
    grads: CudaSlice<f32>,
    m: CudaSlice<f32>,
    v: CudaSlice<f32>,
    a: Acts,
    /// AdamW steps taken.
    pub step: u32,
    /// Distinct tokens of the last forward pass's batch, grouped for the wte gradient.
    wte_groups: usize,
    wte_csr: CudaSlice<i32>,
    /// GELU fused into the fc GEMM's epilogue and its gradient into fcproj's dX GEMM (cuBLASLt);
    /// off: separate gpt_gelu_* kernels. On by default; `TWOFOUR_UNFUSED_GELU=1` turns it off.
    pub fused_gelu: bool,
    /// Bias gradients from the weight-gradient GEMMs' BGRADB epilogue instead of column-sum
    /// passes (switched off on its own if cuBLASLt refuses it). Off by default: on the H100 the
    /// epilogue slowed those GEMMs by more than the passes cost (docs/bench/notes.md);
    /// `TWOFOUR_FUSED_BGRAD=1` turns it on.
    pub fused_bgrad: bool,
    /// LayerNorm weight gradients summed inside the LayerNorm backward pass (one read of dout and
    /// x) instead of a column-sum pass; models up to 1280 channels. On by default (124M on the
    /// H100: +1.1% tokens/s, docs/bench/notes.md); `TWOFOUR_UNFUSED_LN_GRAD=1` turns it off.
    pub fused_ln_grad: bool,
    /// With `TWOFOUR_PROFILE=1`: seconds and calls per kernel (each launch synchronized).
    prof: Option<std::cell::RefCell<std::collections::BTreeMap<&'static str, (f64, usize)>>>,
}

/// The positions of a batch grouped by token id, as CSR: (distinct tokens ascending, offsets into
/// positions with one extra end offset, positions ascending within each token). The embedding
/// gradient sums each token's rows in this fixed order: no atomics, the same bits every run.
pub fn token_groups(inputs: &[u16]) -> (Vec<i32>, Vec<i32>, Vec<i32>) {
    let mut order: Vec<(u16, i32)> = inputs.iter().enumerate().map(|(i, &x)| (x, i as i32)).collect();
    order.sort_unstable();
    let (mut toks, mut offs) = (Vec::new(), Vec::new());
    for (i, &(tok, _)) in order.iter().enumerate() {
        if i == 0 || order[i - 1].0 != tok {
            toks.push(tok as i32);
            offs.push(i as i32);
        }
    }
    offs.push(order.len() as i32);
    (toks, offs, order.iter().map(|x| x.1).collect())
}

/// Lets an attention kernel use `bytes` of dynamic shared memory (> 48 KB).
fn allow_smem(f: &CudaFunction, bytes: usize) -> Result<()> {
    use cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES as MAXSMEM;
    f.set_attribute(MAXSMEM, bytes as i32).map_err(drv("configuring attention"))
}

/// Why a configuration cannot run on the GPU path, if it cannot.
pub fn check_config(c: &Config, t: usize) -> Result<()> {
    let bad = |d: String| Err(Error::Unsupported { op: "GPU trainer", detail: d });
    if c.channels % HEAD_SIZE != 0 || c.channels / c.heads != HEAD_SIZE || c.channels % c.heads != 0 {
        return bad(format!("the fused attention kernel needs a head size of {HEAD_SIZE}; this model has {} channels over {} heads (every GPT-2 preset qualifies; the tiny CPU model does not)", c.channels, c.heads));
    }
    if c.channels > 2048 {
        return bad(format!("the LayerNorm kernels hold a row of up to 2048 channels in registers; this model has {}", c.channels));
    }
    if t == 0 || t > c.max_seq {
        return bad(format!("sequence length {t} must be in 1..={}", c.max_seq));
    }
    Ok(())
}

impl GpuModel {
    /// Uploads `params` (the reference layout) and allocates everything for b x t batches.
    pub fn new(dev: Device, cfg: Config, b: usize, t: usize, params: &[f32]) -> Result<Self> {
        check_config(&cfg, t)?;
        let layout = ParamLayout::new(&cfg);
        if params.len() != layout.total {
            return Err(Error::Shape { op: "GpuModel::new", detail: format!("{} parameters given, the model has {}", params.len(), layout.total) });
        }
        let stream = dev.stream().clone();
        // One stream, raw pointers into big buffers: cudarc's per-buffer event tracking would only
        // add events to every launch.
        // SAFETY: all of the trainer's work is queued on this one stream.
        unsafe { dev.context().disable_event_tracking() };
        let f = |n: &str| dev.function(n);
        let (dkdv, dq) = AttKernel::load_backward(&dev)?;
        let k = Kernels {
            encoder_forward: f("gpt_encoder_forward")?,
            encoder_backward_wpe: f("gpt_encoder_backward_wpe")?,
            encoder_backward_wte: f("gpt_encoder_backward_wte")?,
            layernorm_forward: f("gpt_layernorm_forward")?,
            residual_layernorm_forward: f("gpt_residual_layernorm_forward")?,
            layernorm_backward: f("gpt_layernorm_backward")?,
            layernorm_backward_fused: [f("gpt_layernorm_backward_fused_k3")?, f("gpt_layernorm_backward_fused_k4")?, f("gpt_layernorm_backward_fused_k5")?],
            attention_forward: f("gpt_attention_forward")?,
            attention_backward_dot: f("gpt_attention_backward_dot")?,
            attention_backward_dkdv: dkdv,
            attention_backward_dq: dq,
            gelu_forward: f("gpt_gelu_forward")?,
            gelu_backward: f("gpt_gelu_backward")?,
            gated_forward: f("gated_forward")?,
            gated_backward: f("gated_backward")?,
            colsum_partial: f("gpt_colsum_partial")?,
            colsum_finalize: f("gpt_colsum_finalize")?,
            colsum_finalize_wide: f("gpt_colsum_finalize_wide")?,
            softmax_cross_entropy: f("gpt_softmax_cross_entropy")?,
            adamw: f("gpt_adamw")?,
            sumsq_partial: f("gpt_sumsq_partial")?,
            f32_to_bf16: f("gpt_f32_to_bf16")?,
        };
        allow_smem(&k.attention_forward, ATT_FWD_SMEM)?;

        let (n, ch, l, nh) = (b * t, cfg.channels, cfg.layers, cfg.heads);
        let fr = cfg.fc_rows();
        let vp = cfg.vocab.div_ceil(64) * 64;
        let zb = |len: usize| stream.alloc_zeros::<bf16>(len.max(1)).map_err(drv("allocating activations"));
        let zf = |len: usize| stream.alloc_zeros::<f32>(len.max(1)).map_err(drv("allocating activations"));
        let chunks = n.div_ceil(CHUNK_ROWS);
        let a = Acts {
            tokens: stream.alloc_zeros::<i32>(n).map_err(drv("allocating tokens"))?,
            targets: stream.alloc_zeros::<i32>(n).map_err(drv("allocating tokens"))?,
            encoded: zb(n * ch)?,
            ln1: zb(l * n * ch)?,
            ln1_stats: zf(l * 2 * n)?,
            qkv: zb(l * n * 3 * ch)?,
            atty: zb(l * n * ch)?,
            lse: zf(l * b * nh * t)?,
            residual2: zb(l * n * ch)?,
            ln2: zb(l * n * ch)?,
            ln2_stats: zf(l * 2 * n)?,
            fch: zb(l * n * fr)?,
            fch_act: zb(l * n * 4 * ch)?,
            residual3: zb(l * n * ch)?,
            lnf: zb(n * ch)?,
            lnf_stats: zf(2 * n)?,
            logits: zb(n * vp)?,
            losses: zf(n)?,
            proj: zb(n * ch)?,
            dres: zb(n * ch)?,
            dtmp: zb(n * ch)?,
            dact: zb(n * 4 * ch)?,
            dfch: zb(n * fr)?,
            dqkv: zb(n * 3 * ch)?,
            att_d: zf(b * nh * t)?,
            partial: zf((2 * chunks * fr.max(3 * ch)).max(2 * n.div_ceil(ln_chunk_rows(n)) * ch))?,
            dbias: zf(fr.max(3 * ch))?,
            norm_partial: zf(NORM_BLOCKS)?,
        };
        let total = layout.total;
        let master = stream.clone_htod(params).map_err(drv("uploading parameters"))?;
        let mut me = Self {
            cfg,
            b,
            t,
            vp,
            layout,
            gemm: Gemm::new(stream.clone())?,
            k,
            master,
            shadow: zb(total)?,
            grads: zf(total)?,
            m: zf(total)?,
            v: zf(total)?,
            a,
            step: 0,
            wte_groups: 0,
            wte_csr: stream.alloc_zeros::<i32>(3 * n + 1).map_err(drv("allocating tokens"))?,
            stream,
            dev,
            fused_gelu: std::env::var("TWOFOUR_UNFUSED_GELU").as_deref() != Ok("1"),
            fused_bgrad: std::env::var("TWOFOUR_FUSED_BGRAD").as_deref() == Ok("1"),
            fused_ln_grad: std::env::var("TWOFOUR_UNFUSED_LN_GRAD").as_deref() != Ok("1"),
            prof: (std::env::var("TWOFOUR_PROFILE").as_deref() == Ok("1")).then(Default::default),
        };
        me.refresh_shadow()?;
        Ok(me)
    }

    /// The GPU this model lives on.
    pub fn device(&self) -> &Device {
        &self.dev
    }

    fn p<T>(&self, s: &CudaSlice<T>) -> u64 {
        s.device_ptr(&self.stream).0
    }

    fn launch(&self, f: &CudaFunction, grid: (u32, u32, u32), block: (u32, u32, u32), smem: usize, args: &[Arg], what: &'static str) -> Result<()> {
        let mut lb = self.stream.launch_builder(f);
        for a in args {
            match a {
                Arg::P(x) => lb.arg(x),
                Arg::I(x) => lb.arg(x),
                Arg::L(x) => lb.arg(x),
                Arg::F(x) => lb.arg(x),
            };
        }
        let cfg = LaunchConfig { grid_dim: grid, block_dim: block, shared_mem_bytes: smem as u32 };
        let t0 = self.prof.as_ref().map(|_| {
            let _ = self.stream.synchronize();
            std::time::Instant::now()
        });
        // SAFETY: every pointer argument is an offset inside a live buffer of this model, sized
        // from the same dimensions the kernel receives (see each call site).
        unsafe { lb.launch(cfg) }.map_err(drv(what))?;
        if let (Some(t0), Some(p)) = (t0, self.prof.as_ref()) {
            self.stream.synchronize().map_err(drv(what))?;
            let mut p = p.borrow_mut();
            let e = p.entry(what.trim_start_matches("launching ")).or_insert((0.0, 0));
            e.0 += t0.elapsed().as_secs_f64();
            e.1 += 1;
        }
        Ok(())
    }

    /// Clears the `TWOFOUR_PROFILE=1` counts (after warm-up).
    pub fn reset_profile(&mut self) {
        if let Some(p) = &self.prof {
            p.borrow_mut().clear();
        }
        if let Some(p) = &mut self.gemm.profile {
            p.clear();
        }
    }

    /// The vocabulary dimension of the head GEMMs: padded to vp (a multiple of 64, which cuBLASLt
    /// runs much faster than 50257) when the rows past wte in the flat buffer (wpe's first rows)
    /// can stand in for the padding: their logits are ignored, and their gradient adds exact zeros
    /// because the loss kernel zeroes the padded columns of dlogits.
    fn head_rows(&self) -> usize {
        if self.vp - self.cfg.vocab <= self.cfg.max_seq { self.vp } else { self.cfg.vocab }
    }

    /// The `TWOFOUR_PROFILE=1` table: milliseconds and calls per kernel and GEMM kind, largest first.
    pub fn profile_report(&self) -> Option<String> {
        let k = self.prof.as_ref()?.borrow();
        let mut rows: Vec<(String, f64, usize)> = k.iter().map(|(n, (t, c))| (n.to_string(), *t, *c)).collect();
        if let Some(g) = &self.gemm.profile {
            rows.extend(g.iter().map(|(n, (t, c))| (n.clone(), *t, *c)));
        }
        rows.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
        let total: f64 = rows.iter().map(|r| r.1).sum();
        let mut s = format!("{:<60} {:>10} {:>7} {:>6}\n", "kernel", "ms", "calls", "share");
        for (n, t, c) in rows {
            s += &format!("{n:<60} {:>10.2} {c:>7} {:>5.1}%\n", t * 1e3, 100.0 * t / total);
        }
        Some(s)
    }

    fn blocks(n: usize, per: usize) -> (u32, u32, u32) {
        (n.div_ceil(per).max(1) as u32, 1, 1)
    }

    fn refresh_shadow(&mut self) -> Result<()> {
        let n = self.layout.total;
        let (o, i) = (self.p(&self.shadow), self.p(&self.master));
        self.launch(&self.k.f32_to_bf16, Self::blocks(n, 256), (256, 1, 1), 0, &[Arg::P(o), Arg::P(i), Arg::L(n as i64)], "launching gpt_f32_to_bf16")
    }

    /// Replaces parameters and optimizer state (resume).
    pub fn load_state(&mut self, params: &[f32], m: &[f32], v: &[f32], step: u32) -> Result<()> {
        let total = self.layout.total;
        if params.len() != total || m.len() != total || v.len() != total {
            return Err(Error::Shape { op: "GpuModel::load_state", detail: format!("state of {} / {} / {} values for a model of {total}", params.len(), m.len(), v.len()) });
        }
        self.stream.memcpy_htod(params, &mut self.master).map_err(drv("uploading parameters"))?;
        self.stream.memcpy_htod(m, &mut self.m).map_err(drv("uploading optimizer state"))?;
        self.stream.memcpy_htod(v, &mut self.v).map_err(drv("uploading optimizer state"))?;
        self.step = step;
        self.refresh_shadow()
    }

    /// (parameters, first moments, second moments) on the host.
    pub fn state(&self) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let d = |s: &CudaSlice<f32>| self.stream.clone_dtoh(s).map_err(drv("downloading state"));
        Ok((d(&self.master)?, d(&self.m)?, d(&self.v)?))
    }

    /// The accumulated gradients on the host (reference layout).
    pub fn grads(&self) -> Result<Vec<f32>> {
        self.stream.clone_dtoh(&self.grads).map_err(drv("downloading gradients"))
    }

    /// The logits of the last forward pass without targets' gradients (n x vocab, f32).
    pub fn logits(&self) -> Result<Vec<f32>> {
        let all = self.stream.clone_dtoh(&self.a.logits).map_err(drv("downloading logits"))?;
        let (n, v) = (self.b * self.t, self.cfg.vocab);
        Ok((0..n).flat_map(|i| all[i * self.vp..i * self.vp + v].iter().map(|x| x.to_f32()).collect::<Vec<_>>()).collect())
    }

    /// Zeroes the gradients (start of an optimizer step).
    pub fn zero_grads(&mut self) -> Result<()> {
        self.stream.memset_zeros(&mut self.grads).map_err(drv("zeroing gradients"))
    }

    /// Forward pass on b x t tokens. With `grad_scale` (1 / micro-batches per step), the loss
    /// kernel leaves d loss / d logits in place of the logits for `backward`. Returns the mean loss.
    pub fn forward(&mut self, inputs: &[u16], targets: &[u16], grad_scale: Option<f32>) -> Result<f32> {
        let (b, t, ch, l, nh) = (self.b, self.t, self.cfg.channels, self.cfg.layers, self.cfg.heads);
        let n = b * t;
        if inputs.len() != n || targets.len() != n {
            return Err(Error::Shape { op: "GpuModel::forward", detail: format!("{} inputs and {} targets for a {b} x {t} batch", inputs.len(), targets.len()) });
        }
        if let Some(&bad) = inputs.iter().chain(targets).find(|&&x| x as usize >= self.cfg.vocab) {
            return Err(Error::InvalidData { op: "GpuModel::forward", detail: format!("token {bad} is outside the vocabulary of {}", self.cfg.vocab) });
        }
        let ti: Vec<i32> = inputs.iter().map(|&x| x as i32).collect();
        let yi: Vec<i32> = targets.iter().map(|&x| x as i32).collect();
        self.stream.memcpy_htod(&ti, &mut self.a.tokens).map_err(drv("uploading tokens"))?;
        self.stream.memcpy_htod(&yi, &mut self.a.targets).map_err(drv("uploading tokens"))?;
        if grad_scale.is_some() {
            self.upload_wte_groups(inputs)?;
        }
        let p = self.layout.clone();
        let fr = self.cfg.fc_rows();
        let (m4, s4) = (self.p(&self.master), 4u64);
        let w32 = |off: usize| m4 + off as u64 * s4;
        let a = &self.a;
        let (enc, toks) = (self.p(&a.encoded), self.p(&a.tokens));
        self.launch(&self.k.encoder_forward, Self::blocks(n * ch, 256), (256, 1, 1), 0, &[Arg::P(enc), Arg::P(toks), Arg::P(w32(p.wte)), Arg::P(w32(p.wpe)), Arg::I(n as i32), Arg::I(t as i32), Arg::I(ch as i32)], "launching gpt_encoder_forward")?;
        let st = self.stream.clone();
        let bf = |s: &CudaSlice<bf16>, off: usize| s.device_ptr(&st).0 + off as u64 * 2;
        let ff = |s: &CudaSlice<f32>, off: usize| s.device_ptr(&st).0 + off as u64 * 4;
        let rows = Self::blocks(n, 8);
        self.launch(&self.k.layernorm_forward, rows, (256, 1, 1), 0, &[Arg::P(bf(&a.ln1, 0)), Arg::P(ff(&a.ln1_stats, 0)), Arg::P(ff(&a.ln1_stats, n)), Arg::P(enc), Arg::P(w32(p.ln1w)), Arg::P(w32(p.ln1b)), Arg::I(n as i32), Arg::I(ch as i32)], "launching gpt_layernorm_forward")?;
        let scale = 1.0 / (HEAD_SIZE as f32).sqrt();
        for li in 0..l {
            // qkv = ln1 Wqkv^T + b
            self.linear_forward(&LinearIo { x: (Buf::Ln1, li * n * ch), w: p.qkvw + li * 3 * ch * ch, bias: p.qkvb + li * 3 * ch, y: (Buf::Qkv, li * n * 3 * ch), ic: ch, oc: 3 * ch })?;
            let a = &self.a;
            self.launch(&self.k.attention_forward, ((t.div_ceil(ATT_FWD_ROWS)) as u32, (b * nh) as u32, 1), (128, 1, 1), ATT_FWD_SMEM, &[Arg::P(bf(&a.atty, li * n * ch)), Arg::P(ff(&a.lse, li * b * nh * t)), Arg::P(bf(&a.qkv, li * n * 3 * ch)), Arg::I(t as i32), Arg::I(nh as i32), Arg::F(scale)], "launching gpt_attention_forward")?;
            self.linear_forward(&LinearIo { x: (Buf::Atty, li * n * ch), w: p.attprojw + li * ch * ch, bias: p.attprojb + li * ch, y: (Buf::Proj, 0), ic: ch, oc: ch })?;
            let a = &self.a;
            let res_in = if li == 0 { bf(&a.encoded, 0) } else { bf(&a.residual3, (li - 1) * n * ch) };
            self.launch(&self.k.residual_layernorm_forward, rows, (256, 1, 1), 0, &[Arg::P(bf(&a.residual2, li * n * ch)), Arg::P(bf(&a.ln2, li * n * ch)), Arg::P(ff(&a.ln2_stats, li * 2 * n)), Arg::P(ff(&a.ln2_stats, li * 2 * n + n)), Arg::P(res_in), Arg::P(bf(&a.proj, 0)), Arg::P(w32(p.ln2w + li * ch)), Arg::P(w32(p.ln2b + li * ch)), Arg::I(n as i32), Arg::I(ch as i32)], "launching gpt_residual_layernorm_forward")?;
            let fc = LinearIo { x: (Buf::Ln2, li * n * ch), w: p.fcw + li * fr * ch, bias: p.fcb + li * fr, y: (Buf::Fch, li * n * fr), ic: ch, oc: fr };
            let fused = self.fused_gelu && !self.cfg.swiglu;
            self.linear_forward_gelu(&fc, fused.then_some((Buf::FchAct, li * n * 4 * ch)))?;
            let a = &self.a;
            let (fch, act) = (bf(&a.fch, li * n * fr), bf(&a.fch_act, li * n * 4 * ch));
            if !fused {
                if self.cfg.swiglu {
                    // twofour's gated kernel, token-major: up = fch[:, :4C], gate = fch[:, 4C:].
                    self.launch(&self.k.gated_forward, Self::gated_grid(n * 4 * ch), (256, 1, 1), 0, &[Arg::P(fch), Arg::P(act), Arg::L(n as i64), Arg::I(4 * ch as i32), Arg::I(0), Arg::I(0)], "launching gated_forward")?;
                } else {
                    self.launch(&self.k.gelu_forward, Self::blocks(n * 4 * ch / 8, 256), (256, 1, 1), 0, &[Arg::P(act), Arg::P(fch), Arg::L((n * 4 * ch) as i64)], "launching gpt_gelu_forward")?;
                }
            }
            self.linear_forward(&LinearIo { x: (Buf::FchAct, li * n * 4 * ch), w: p.fcprojw + li * 4 * ch * ch, bias: p.fcprojb + li * ch, y: (Buf::Proj, 0), ic: 4 * ch, oc: ch })?;
            let a = &self.a;
            let (lno, lns, lnw, lnb) = if li + 1 < l {
                (bf(&a.ln1, (li + 1) * n * ch), ff(&a.ln1_stats, (li + 1) * 2 * n), p.ln1w + (li + 1) * ch, p.ln1b + (li + 1) * ch)
            } else {
                (bf(&a.lnf, 0), ff(&a.lnf_stats, 0), p.lnfw, p.lnfb)
            };
            self.launch(&self.k.residual_layernorm_forward, rows, (256, 1, 1), 0, &[Arg::P(bf(&a.residual3, li * n * ch)), Arg::P(lno), Arg::P(lns), Arg::P(lns + n as u64 * 4), Arg::P(bf(&a.residual2, li * n * ch)), Arg::P(bf(&a.proj, 0)), Arg::P(w32(lnw)), Arg::P(w32(lnb)), Arg::I(n as i32), Arg::I(ch as i32)], "launching gpt_residual_layernorm_forward")?;
        }
        // Tied head: logits (n x V, row stride vp) = lnf wte^T.
        let (v, vp) = (self.cfg.vocab, self.vp);
        let (sh, lnf, lg) = (self.p(&self.shadow), self.p(&self.a.lnf), self.p(&self.a.logits));
        // SAFETY: wte is V x C, lnf n x C, logits n x vp.
        let vh = self.head_rows();
        unsafe { self.gemm.matmul(true, false, vh, n, ch, sh + p.wte as u64 * 2, ch, lnf, ch, lg, false, vp, 0.0, Epilogue::None) }?;
        let a = &self.a;
        let dscale = grad_scale.unwrap_or(0.0) / n as f32;
        self.launch(&self.k.softmax_cross_entropy, (n as u32, 1, 1), (512, 1, 1), 0, &[Arg::P(self.p(&a.logits)), Arg::P(self.p(&a.losses)), Arg::P(self.p(&a.targets)), Arg::I(v as i32), Arg::I(vp as i32), Arg::F(dscale), Arg::I(grad_scale.is_some() as i32)], "launching gpt_softmax_cross_entropy")?;
        let losses = self.stream.clone_dtoh(&self.a.losses).map_err(drv("downloading losses"))?;
        Ok((losses.iter().map(|&x| x as f64).sum::<f64>() / n as f64) as f32)
    }

    fn gated_grid(n: usize) -> (u32, u32, u32) {
        // twofour::gated's launch shape: 8 elements a thread, grid-stride beyond 16 waves.
        ((n / 8).div_ceil(256).clamp(1, 132 * 16) as u32, 1, 1)
    }

    /// Groups the batch's positions by token for gpt_encoder_backward_wte (see `token_groups`).
    fn upload_wte_groups(&mut self, inputs: &[u16]) -> Result<()> {
        let (toks, offs, pos) = token_groups(inputs);
        self.wte_groups = toks.len();
        let n = inputs.len();
        // CSR packed as [tokens (n) | offsets (n + 1) | positions (n)].
        let mut buf = vec![0i32; 3 * n + 1];
        buf[..toks.len()].copy_from_slice(&toks);
        buf[n..n + offs.len()].copy_from_slice(&offs);
        buf[2 * n + 1..].copy_from_slice(&pos);
        self.stream.memcpy_htod(&buf, &mut self.wte_csr).map_err(drv("uploading token groups"))
    }

    /// Backward pass of the last `forward(.., Some(_))`: adds every parameter's gradient.
    pub fn backward(&mut self) -> Result<()> {
        let (b, t, ch, l, nh) = (self.b, self.t, self.cfg.channels, self.cfg.layers, self.cfg.heads);
        let n = b * t;
        let p = self.layout.clone();
        let fr = self.cfg.fc_rows();
        let (vp, vh) = (self.vp, self.head_rows());
        let g4 = self.p(&self.grads);
        let gw = |off: usize| g4 + off as u64 * 4;
        let m4 = self.p(&self.master);
        let w32 = |off: usize| m4 + off as u64 * 4;
        let st = self.stream.clone();
        let bf = |s: &CudaSlice<bf16>, off: usize| s.device_ptr(&st).0 + off as u64 * 2;
        let ff = |s: &CudaSlice<f32>, off: usize| s.device_ptr(&st).0 + off as u64 * 4;
        

        // Head: dlnf = dlogits wte; dwte += dlogits^T lnf.
        let (sh, lnf, lg, dt) = (self.p(&self.shadow), self.p(&self.a.lnf), self.p(&self.a.logits), self.p(&self.a.dtmp));
        // SAFETY: wte is V x C, dlogits n x vp, lnf and dlnf n x C, the wte gradient V x C f32.
        unsafe {
            self.gemm.matmul(false, false, ch, n, vh, sh + p.wte as u64 * 2, ch, lg, vp, dt, false, ch, 0.0, Epilogue::None)?;
            self.gemm.matmul(false, true, ch, vh, n, lnf, ch, lg, vp, gw(p.wte), true, ch, 1.0, Epilogue::None)?;
        }
        self.stream.memset_zeros(&mut self.a.dres).map_err(drv("zeroing the residual gradient"))?;
        let last = bf(&self.a.residual3, (l - 1) * n * ch);
        self.ln_backward(bf(&self.a.dtmp, 0), last, ff(&self.a.lnf_stats, 0), n, w32(p.lnfw), gw(p.lnfw), gw(p.lnfb))?;
        let scale = 1.0 / (HEAD_SIZE as f32).sqrt();
        for li in (0..l).rev() {
            let a = &self.a;
            let res_in = if li == 0 { bf(&a.encoded, 0) } else { bf(&a.residual3, (li - 1) * n * ch) };
            // fcproj
            let fused = self.fused_gelu && !self.cfg.swiglu;
            let (dx, pre) = if fused { (Buf::Dfch, Some(li * n * fr)) } else { (Buf::Dact, None) };
            self.linear_backward_dgelu(Buf::Dres, (Buf::FchAct, li * n * 4 * ch), p.fcprojw + li * 4 * ch * ch, p.fcprojb + li * ch, dx, 4 * ch, ch, pre)?;
            let a = &self.a;
            let (fch, dact, dfch) = (bf(&a.fch, li * n * fr), bf(&a.dact, 0), bf(&a.dfch, 0));
            if !fused {
                if self.cfg.swiglu {
                    self.launch(&self.k.gated_backward, Self::gated_grid(n * 4 * ch), (256, 1, 1), 0, &[Arg::P(fch), Arg::P(dact), Arg::P(dfch), Arg::L(n as i64), Arg::I(4 * ch as i32), Arg::I(0), Arg::I(0)], "launching gated_backward")?;
                } else {
                    self.launch(&self.k.gelu_backward, Self::blocks(n * 4 * ch / 8, 256), (256, 1, 1), 0, &[Arg::P(dfch), Arg::P(fch), Arg::P(dact), Arg::L((n * 4 * ch) as i64)], "launching gpt_gelu_backward")?;
                }
            }
            // fc
            self.linear_backward(Buf::Dfch, (Buf::Ln2, li * n * ch), p.fcw + li * fr * ch, p.fcb + li * fr, Buf::Dtmp, ch, fr)?;
            let a = &self.a;
            self.ln_backward(bf(&a.dtmp, 0), bf(&a.residual2, li * n * ch), ff(&a.ln2_stats, li * 2 * n), n, w32(p.ln2w + li * ch), gw(p.ln2w + li * ch), gw(p.ln2b + li * ch))?;
            // attproj
            self.linear_backward(Buf::Dres, (Buf::Atty, li * n * ch), p.attprojw + li * ch * ch, p.attprojb + li * ch, Buf::Dtmp, ch, ch)?;
            // attention
            let a = &self.a;
            let (datty, atty, qkv, lse, dd, dqkv) = (bf(&a.dtmp, 0), bf(&a.atty, li * n * ch), bf(&a.qkv, li * n * 3 * ch), ff(&a.lse, li * b * nh * t), ff(&a.att_d, 0), bf(&a.dqkv, 0));
            self.launch(&self.k.attention_backward_dot, Self::blocks(n * 32, 256), (256, 1, 1), 0, &[Arg::P(dd), Arg::P(datty), Arg::P(atty), Arg::I(b as i32), Arg::I(t as i32), Arg::I(nh as i32)], "launching gpt_attention_backward_dot")?;
            let args = [Arg::P(dqkv), Arg::P(qkv), Arg::P(datty), Arg::P(lse), Arg::P(dd), Arg::I(t as i32), Arg::I(nh as i32), Arg::F(scale)];
            for k in [&self.k.attention_backward_dkdv, &self.k.attention_backward_dq] {
                self.launch(&k.f, (t.div_ceil(k.rows) as u32, (b * nh) as u32, 1), (128, 1, 1), k.smem, &args, k.name)?;
            }
            // qkv
            self.linear_backward(Buf::Dqkv, (Buf::Ln1, li * n * ch), p.qkvw + li * 3 * ch * ch, p.qkvb + li * 3 * ch, Buf::Dtmp, ch, 3 * ch)?;
            let a = &self.a;
            self.ln_backward(bf(&a.dtmp, 0), res_in, ff(&a.ln1_stats, li * 2 * n), n, w32(p.ln1w + li * ch), gw(p.ln1w + li * ch), gw(p.ln1b + li * ch))?;
        }
        // Embeddings.
        let a = &self.a;
        let dres = bf(&a.dres, 0);
        self.launch(&self.k.encoder_backward_wpe, Self::blocks(t * ch, 256), (256, 1, 1), 0, &[Arg::P(gw(p.wpe)), Arg::P(dres), Arg::I(b as i32), Arg::I(t as i32), Arg::I(ch as i32)], "launching gpt_encoder_backward_wpe")?;
        let csr = self.p(&self.wte_csr);
        self.launch(&self.k.encoder_backward_wte, (self.wte_groups as u32, 1, 1), (256, 1, 1), 0, &[Arg::P(gw(p.wte)), Arg::P(dres), Arg::P(csr), Arg::P(csr + n as u64 * 4), Arg::P(csr + (2 * n + 1) as u64 * 4), Arg::I(ch as i32)], "launching gpt_encoder_backward_wte")
    }

    /// dres += LN backward of dout; dw, db (f32 gradients) += their column sums.
    #[allow(clippy::too_many_arguments)]
    fn ln_backward(&self, dout: u64, inp: u64, stats: u64, n: usize, w: u64, dw: u64, db: u64) -> Result<()> {
        let ch = self.cfg.channels;
        let dres = self.p(&self.a.dres);
        let rstd = stats + n as u64 * 4;
        if self.fused_ln_grad && ch <= 1280 {
            let f = &self.k.layernorm_backward_fused[if ch <= 768 { 0 } else if ch <= 1024 { 1 } else { 2 }];
            let rows = ln_chunk_rows(n);
            let (chunks, part) = (n.div_ceil(rows), self.p(&self.a.partial));
            let args = [Arg::P(dres), Arg::P(part), Arg::P(dout), Arg::P(inp), Arg::P(stats), Arg::P(rstd), Arg::P(w), Arg::I(n as i32), Arg::I(ch as i32), Arg::I(rows as i32)];
            self.launch(f, (chunks as u32, 1, 1), (256, 1, 1), 0, &args, "launching gpt_layernorm_backward_fused")?;
            return self.launch(&self.k.colsum_finalize_wide, (ch.div_ceil(32) as u32, 1, 1), (32, 32, 1), 0, &[Arg::P(db), Arg::P(dw), Arg::P(part), Arg::I(chunks as i32), Arg::I(ch as i32)], "launching gpt_colsum_finalize_wide");
        }
        self.launch(&self.k.layernorm_backward, Self::blocks(n, 8), (256, 1, 1), 0, &[Arg::P(dres), Arg::P(dout), Arg::P(inp), Arg::P(stats), Arg::P(rstd), Arg::P(w), Arg::I(n as i32), Arg::I(ch as i32)], "launching gpt_layernorm_backward")?;
        self.colsum(dout, Some((inp, stats, rstd)), n, ch, db, Some(dw))
    }

    /// db[c] += sum of dout's column c; with x, dw[c] += sum of dout * normalized x.
    fn colsum(&self, dout: u64, x: Option<(u64, u64, u64)>, n: usize, cols: usize, db: u64, dw: Option<u64>) -> Result<()> {
        let chunks = n.div_ceil(CHUNK_ROWS);
        let part = self.p(&self.a.partial);
        let (xp, mp, rp) = x.unwrap_or((0, 0, 0));
        self.launch(&self.k.colsum_partial, (cols.div_ceil(64) as u32, chunks as u32, 1), (8, 32, 1), 0, &[Arg::P(part), Arg::P(dout), Arg::P(xp), Arg::P(mp), Arg::P(rp), Arg::I(n as i32), Arg::I(cols as i32), Arg::I(CHUNK_ROWS as i32)], "launching gpt_colsum_partial")?;
        self.launch(&self.k.colsum_finalize_wide, (cols.div_ceil(32) as u32, 1, 1), (32, 32, 1), 0, &[Arg::P(db), Arg::P(dw.unwrap_or(0)), Arg::P(part), Arg::I(chunks as i32), Arg::I(cols as i32)], "launching gpt_colsum_finalize_wide")
    }

    fn bptr(&self, b: Buf) -> u64 {
        let a = &self.a;
        self.p(match b {
            Buf::Ln1 => &a.ln1,
            Buf::Qkv => &a.qkv,
            Buf::Atty => &a.atty,
            Buf::Proj => &a.proj,
            Buf::Ln2 => &a.ln2,
            Buf::Fch => &a.fch,
            Buf::FchAct => &a.fch_act,
            Buf::Dres => &a.dres,
            Buf::Dtmp => &a.dtmp,
            Buf::Dact => &a.dact,
            Buf::Dfch => &a.dfch,
            Buf::Dqkv => &a.dqkv,
        })
    }

    /// y (n x oc) = x (n x ic) W^T + bias, W (oc x ic) and bias from the bf16 shadow.
    fn linear_forward(&mut self, io: &LinearIo) -> Result<()> {
        self.linear_forward_gelu(io, None)
    }

    /// With `gelu_out` (buffer, offset): y keeps the pre-activation and gelu(y) goes to gelu_out
    /// (cuBLASLt's GELU_AUX_BIAS epilogue: no separate activation pass).
    fn linear_forward_gelu(&mut self, io: &LinearIo, gelu_out: Option<(Buf, usize)>) -> Result<()> {
        let n = self.b * self.t;
        let (x, y, sh) = (self.bptr(io.x.0) + io.x.1 as u64 * 2, self.bptr(io.y.0) + io.y.1 as u64 * 2, self.p(&self.shadow));
        let bias = sh + io.bias as u64 * 2;
        let (d, epi) = match gelu_out {
            None => (y, Epilogue::Bias(bias)),
            Some((b, off)) => (self.bptr(b) + off as u64 * 2, Epilogue::GeluAuxBias { bias, aux: y, ld: io.oc }),
        };
        // Column-major view: y^T (oc x n) = (W viewed ic x oc)^T x^T (ic x n).
        // SAFETY: x holds n x ic, y (and the GELU output) n x oc, W oc x ic and bias oc values.
        unsafe { self.gemm.matmul(true, false, io.oc, n, io.ic, sh + io.w as u64 * 2, io.ic, x, io.ic, d, false, io.oc, 0.0, epi) }
    }

    /// dx (n x ic) = dy W; dW (oc x ic) += dy^T x (f32); db += column sums of dy.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(&mut self, dy: Buf, x: (Buf, usize), w: usize, bias: usize, dx: Buf, ic: usize, oc: usize) -> Result<()> {
        self.linear_backward_dgelu(dy, x, w, bias, dx, ic, oc, None)
    }

    /// With `gelu_in` (offset of x's pre-activation in `fch`): dx = (dy W) * gelu'(pre),
    /// cuBLASLt's DGELU epilogue (that pre-activation's bias gradient comes from the next
    /// layer's weight-gradient GEMM, as for every linear layer).
    #[allow(clippy::too_many_arguments)]
    fn linear_backward_dgelu(&mut self, dy: Buf, x: (Buf, usize), w: usize, bias: usize, dx: Buf, ic: usize, oc: usize, gelu_in: Option<usize>) -> Result<()> {
        let n = self.b * self.t;
        let (dyp, xp, dxp) = (self.bptr(dy), self.bptr(x.0) + x.1 as u64 * 2, self.bptr(dx));
        let (wp, g, db) = (self.p(&self.shadow) + w as u64 * 2, self.p(&self.grads), self.p(&self.a.dbias));
        let epi = match gelu_in {
            None => Epilogue::None,
            Some(off) => Epilogue::DGelu { aux: self.p(&self.a.fch) + off as u64 * 2, ld: ic },
        };
        // dx^T (ic x n) = W (ic x oc, column-major view) dy^T (oc x n)
        // SAFETY: dy holds n x oc, dx n x ic, W oc x ic, aux (pre-activation) n x ic.
        unsafe { self.gemm.matmul(false, false, ic, n, oc, wp, ic, dyp, oc, dxp, false, ic, 0.0, epi) }?;
        // dW^T (ic x oc) += x^T (ic x n) dy (n x oc); the bias gradient (column sums of dy) from
        // the same GEMM's epilogue when it can.
        let dw_gemm = |me: &mut Self, epi| {
            // SAFETY: x holds n x ic, dy n x oc, the weight gradient oc x ic f32, dbias oc f32.
            unsafe { me.gemm.matmul(false, true, ic, oc, n, xp, ic, dyp, oc, g + w as u64 * 4, true, ic, 1.0, epi) }
        };
        if self.fused_bgrad && dw_gemm(self, Epilogue::BGradB { bias_out: db }).map_err(|e| self.refused(e)).is_ok() {
            return self.add_dbias(g + bias as u64 * 4, oc);
        }
        dw_gemm(self, Epilogue::None)?;
        self.colsum(dyp, None, n, oc, g + bias as u64 * 4, None)
    }

    /// A cuBLASLt refusal of a fused epilogue turns the fusion off (once, with a note).
    fn refused(&mut self, e: Error) -> Error {
        if self.fused_bgrad {
            eprintln!("twofour-train: cuBLASLt refused a bias-gradient epilogue ({e}); using column-sum kernels");
            self.fused_bgrad = false;
        }
        e
    }

    /// grads[dst..dst + len] += dbias[..len].
    fn add_dbias(&self, dst: u64, len: usize) -> Result<()> {
        let db = self.p(&self.a.dbias);
        self.launch(&self.k.colsum_finalize, Self::blocks(len, 256), (256, 1, 1), 0, &[Arg::P(dst), Arg::P(0), Arg::P(db), Arg::I(1), Arg::I(len as i32)], "launching gpt_colsum_finalize")
    }

    /// Squared-norm reduction, clipping scale and one AdamW step (reference: AdamW::update).
    /// Returns the gradient norm before clipping.
    pub fn update(&mut self, lr: f32, beta1: f32, beta2: f32, eps: f32, weight_decay: f32, max_norm: f32) -> Result<f32> {
        let total = self.layout.total;
        let (np, g) = (self.p(&self.a.norm_partial), self.p(&self.grads));
        self.launch(&self.k.sumsq_partial, (NORM_BLOCKS as u32, 1, 1), (256, 1, 1), 0, &[Arg::P(np), Arg::P(g), Arg::L(total as i64)], "launching gpt_sumsq_partial")?;
        let parts = self.stream.clone_dtoh(&self.a.norm_partial).map_err(drv("downloading the gradient norm"))?;
        let norm = parts.iter().map(|&x| x as f64).sum::<f64>().sqrt() as f32;
        let gscale = if norm > max_norm && norm > 0.0 { max_norm / norm } else { 1.0 };
        self.step += 1;
        let (c1, c2) = (1.0 - beta1.powi(self.step as i32), 1.0 - beta2.powi(self.step as i32));
        let args = [Arg::P(self.p(&self.master)), Arg::P(self.p(&self.shadow)), Arg::P(self.p(&self.m)), Arg::P(self.p(&self.v)), Arg::P(g), Arg::L(total as i64), Arg::F(lr), Arg::F(beta1), Arg::F(beta2), Arg::F(eps), Arg::F(weight_decay), Arg::F(c1), Arg::F(c2), Arg::F(gscale)];
        self.launch(&self.k.adamw, Self::blocks(total, 256), (256, 1, 1), 0, &args, "launching gpt_adamw")?;
        Ok(norm)
    }

    /// Waits for the queued work.
    pub fn synchronize(&self) -> Result<()> {
        self.dev.synchronize()
    }
}

/// The activation and gradient buffers a linear layer reads or writes.
#[derive(Clone, Copy)]
enum Buf {
    Ln1,
    Qkv,
    Atty,
    Proj,
    Ln2,
    Fch,
    FchAct,
    Dres,
    Dtmp,
    Dact,
    Dfch,
    Dqkv,
}

struct LinearIo {
    x: (Buf, usize),
    w: usize,
    bias: usize,
    y: (Buf, usize),
    ic: usize,
    oc: usize,
}

/// The fused attention kernels alone, on host data, without cuBLASLt: forward (out, lse), then
/// backward (dqkv) for `dout`. For tests against the reference, and for compute-sanitizer
/// racecheck, which cannot run a process that also runs cuBLASLt's Hopper kernels.
pub fn attention_check(dev: &Device, b: usize, t: usize, nh: usize, qkv: &[bf16], dout: &[bf16]) -> Result<(Vec<bf16>, Vec<f32>, Vec<bf16>)> {
    let c = nh * HEAD_SIZE;
    if qkv.len() != b * t * 3 * c || dout.len() != b * t * c {
        return Err(Error::Shape { op: "attention_check", detail: format!("qkv {} and dout {} values for B={b} T={t} C={c}", qkv.len(), dout.len()) });
    }
    let st = dev.stream().clone();
    let fwd = dev.function("gpt_attention_forward")?;
    let dot = dev.function("gpt_attention_backward_dot")?;
    allow_smem(&fwd, ATT_FWD_SMEM)?;
    let (dkdv, dq) = AttKernel::load_backward(dev)?;
    let qkv_d = st.clone_htod(qkv).map_err(drv("uploading qkv"))?;
    let dout_d = st.clone_htod(dout).map_err(drv("uploading dout"))?;
    let mut out = dev.alloc_poisoned::<bf16>(b * t * c)?;
    let mut lse = dev.alloc_poisoned::<f32>(b * nh * t)?;
    let mut dd = dev.alloc_poisoned::<f32>(b * nh * t)?;
    let mut dqkv = dev.alloc_poisoned::<bf16>(b * t * 3 * c)?;
    let (ti, nhi, bi, scale) = (t as i32, nh as i32, b as i32, 1.0 / (HEAD_SIZE as f32).sqrt());
    let cfg = |grid, block, smem: usize| LaunchConfig { grid_dim: grid, block_dim: block, shared_mem_bytes: smem as u32 };
    // SAFETY: every buffer is sized from (b, t, nh) as the kernels index it (cuda/gpt_attention.cu).
    unsafe {
        let mut l = st.launch_builder(&fwd);
        l.arg(&mut out).arg(&mut lse).arg(&qkv_d).arg(&ti).arg(&nhi).arg(&scale);
        l.launch(cfg((t.div_ceil(ATT_FWD_ROWS) as u32, (b * nh) as u32, 1), (128, 1, 1), ATT_FWD_SMEM)).map_err(drv("launching gpt_attention_forward"))?;
        let mut l = st.launch_builder(&dot);
        l.arg(&mut dd).arg(&dout_d).arg(&out).arg(&bi).arg(&ti).arg(&nhi);
        l.launch(cfg(((b * t * 32).div_ceil(256) as u32, 1, 1), (256, 1, 1), 0)).map_err(drv("launching gpt_attention_backward_dot"))?;
        for k in [&dkdv, &dq] {
            let mut l = st.launch_builder(&k.f);
            l.arg(&mut dqkv).arg(&qkv_d).arg(&dout_d).arg(&lse).arg(&dd).arg(&ti).arg(&nhi).arg(&scale);
            l.launch(cfg((t.div_ceil(k.rows) as u32, (b * nh) as u32, 1), (128, 1, 1), k.smem)).map_err(drv(k.name))?;
        }
    }
    let d = |e| drv(e);
    Ok((st.clone_dtoh(&out).map_err(d("downloading"))?, st.clone_dtoh(&lse).map_err(d("downloading"))?, st.clone_dtoh(&dqkv).map_err(d("downloading"))?))
}

/// The LayerNorm kernels alone, on host data, without cuBLASLt (so compute-sanitizer racecheck
/// can run them, as `attention_check` does for attention): the forward pass for mean and 1/std,
/// then the backward of `dout`, fused (`gpt_layernorm_backward_fused_k*` + the fixed-order
/// finalize) or separate (`gpt_layernorm_backward` + `gpt_colsum_partial` + finalize). dinp, dw
/// and db accumulate onto `dinp0`, `dw0`, `db0`, as in the model. Returns (dinp, dw, db).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_check(dev: &Device, n: usize, c: usize, inp: &[bf16], dout: &[bf16], dinp0: &[bf16], w: &[f32], b: &[f32], dw0: &[f32], db0: &[f32], fused: bool) -> Result<(Vec<bf16>, Vec<f32>, Vec<f32>)> {
    if c % 8 != 0 || c > 1280 || inp.len() != n * c || dout.len() != n * c || dinp0.len() != n * c || [w, b, dw0, db0].iter().any(|v| v.len() != c) {
        return Err(Error::Shape { op: "layernorm_check", detail: format!("need C % 8 == 0, C <= 1280 and n x C = {n} x {c} rows, C-long w, b, dw0, db0") });
    }
    let st = dev.stream().clone();
    let up = |what: &'static str| drv(what);
    let (inp_d, dout_d) = (st.clone_htod(inp).map_err(up("uploading inp"))?, st.clone_htod(dout).map_err(up("uploading dout"))?);
    let mut dinp = st.clone_htod(dinp0).map_err(up("uploading dinp"))?;
    let (w_d, b_d) = (st.clone_htod(w).map_err(up("uploading w"))?, st.clone_htod(b).map_err(up("uploading b"))?);
    let (mut dw, mut db) = (st.clone_htod(dw0).map_err(up("uploading dw"))?, st.clone_htod(db0).map_err(up("uploading db"))?);
    let mut out = dev.alloc_poisoned::<bf16>(n * c)?;
    let (mut mean, mut rstd) = (dev.alloc_poisoned::<f32>(n)?, dev.alloc_poisoned::<f32>(n)?);
    let (ni, ci) = (n as i32, c as i32);
    let cfg = |grid: (u32, u32, u32), block: (u32, u32, u32)| LaunchConfig { grid_dim: grid, block_dim: block, shared_mem_bytes: 0 };
    let (rows, chunks) = if fused { (ln_chunk_rows(n), n.div_ceil(ln_chunk_rows(n))) } else { (CHUNK_ROWS, n.div_ceil(CHUNK_ROWS)) };
    let mut partial = dev.alloc_poisoned::<f32>(2 * chunks * c)?;
    let (rows_i, chunks_i) = (rows as i32, chunks as i32);
    let fwd = dev.function("gpt_layernorm_forward")?;
    let finalize = dev.function("gpt_colsum_finalize_wide")?;
    // SAFETY: every buffer is sized from (n, c) as the kernels index it (cuda/gpt_layernorm.cu,
    // cuda/gpt_elementwise.cu); `partial` holds 2 x chunks rows of c.
    unsafe {
        let mut l = st.launch_builder(&fwd);
        l.arg(&mut out).arg(&mut mean).arg(&mut rstd).arg(&inp_d).arg(&w_d).arg(&b_d).arg(&ni).arg(&ci);
        l.launch(cfg(GpuModel::blocks(n, 8), (256, 1, 1))).map_err(drv("launching gpt_layernorm_forward"))?;
        if fused {
            let f = dev.function(if c <= 768 { "gpt_layernorm_backward_fused_k3" } else if c <= 1024 { "gpt_layernorm_backward_fused_k4" } else { "gpt_layernorm_backward_fused_k5" })?;
            let mut l = st.launch_builder(&f);
            l.arg(&mut dinp).arg(&mut partial).arg(&dout_d).arg(&inp_d).arg(&mean).arg(&rstd).arg(&w_d).arg(&ni).arg(&ci).arg(&rows_i);
            l.launch(cfg((chunks as u32, 1, 1), (256, 1, 1))).map_err(drv("launching gpt_layernorm_backward_fused"))?;
        } else {
            let bwd = dev.function("gpt_layernorm_backward")?;
            let mut l = st.launch_builder(&bwd);
            l.arg(&mut dinp).arg(&dout_d).arg(&inp_d).arg(&mean).arg(&rstd).arg(&w_d).arg(&ni).arg(&ci);
            l.launch(cfg(GpuModel::blocks(n, 8), (256, 1, 1))).map_err(drv("launching gpt_layernorm_backward"))?;
            let part = dev.function("gpt_colsum_partial")?;
            let mut l = st.launch_builder(&part);
            l.arg(&mut partial).arg(&dout_d).arg(&inp_d).arg(&mean).arg(&rstd).arg(&ni).arg(&ci).arg(&rows_i);
            l.launch(cfg((c.div_ceil(64) as u32, chunks as u32, 1), (8, 32, 1))).map_err(drv("launching gpt_colsum_partial"))?;
        }
        let mut l = st.launch_builder(&finalize);
        l.arg(&mut db).arg(&mut dw).arg(&partial).arg(&chunks_i).arg(&ci);
        l.launch(cfg((c.div_ceil(32) as u32, 1, 1), (32, 32, 1))).map_err(drv("launching gpt_colsum_finalize_wide"))?;
    }
    let d = |e| drv(e);
    Ok((st.clone_dtoh(&dinp).map_err(d("downloading"))?, st.clone_dtoh(&dw).map_err(d("downloading"))?, st.clone_dtoh(&db).map_err(d("downloading"))?))
}
