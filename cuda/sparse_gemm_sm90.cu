// 2:4 sparse GEMM for Hopper: wgmma.mma_async.sp fed by TMA, warp-specialized, persistent.
//
//   D (M x N) = A (M x K, 2:4 along K: Sparse24 values + metadata) * B (K x N) [+ bias[m]] [+ beta D]
//
// B is read K-major (element (k, n) at B[n * K + k]: B given as its transpose, an N x K row-major
// matrix, like X in Y = X W^T or dY in dX = dY W) or N-major (element (k, n) at B[k * N + n], like
// X in dW = S(dY)^T X). D is written row- or column-major, in bf16 or f32.
//
// Pipeline (one CTA per SM, 3 warpgroups, tiles of 128 x BN):
//   warpgroup 0, producer: one thread issues TMA loads of the A values, B and the A metadata for
//     each 64-wide K block into a ring of STAGES shared-memory stages; `full[s]` completes when the
//     bytes land, the producer waits on `empty[s]` before reusing a stage.
//   warpgroups 1 and 2, consumers: rows 0-63 and 64-127 of the tile; per K block two
//     wgmma.sp m64nBNk32, the metadata register read from shared memory (layout: docs/layout.md);
//     one wgmma group stays in flight while the previous stage is released.
//   clusters (CM = 2): the two CTAs of a cluster take vertically adjacent tiles of the same N
//     tile; each producer loads its own A and metadata and half of the B stage, multicast into
//     both CTAs' shared memory (PTX ISA 9.7.9.25.5.1, .multicast::cluster), so each SM pulls
//     24 KB instead of 40 KB from L2 per 128x256 stage. A stage is free again only when the
//     consumers of both CTAs released it: they arrive on both CTAs' `empty[s]` (count 16).
//   ping-pong (PP = 1, BN = 128): each consumer warpgroup owns whole 128 x 128 tiles (two m64
//     wgmma.sp a k32 step, rows 0-63 and 64-127), the CTA's tiles alternating between them; the
//     producer fills the ring tile by tile, so one warpgroup's main loop runs while the other
//     stores its tile: the epilogue no longer stops the tensor cores (CUTLASS's "pingpong").
//   schedule: persistent CTAs walk the tiles in a grouped raster; with stream-K the tiles of
//     the last, partial wave are cut into K pieces spread over every SM, the last piece adding
//     the others' partials (Schedule, fixup_*).
//   epilogue: each consumer stages its 64 x BN accumulators through shared memory in 64 x 64
//     chunks. bf16 output without beta: TMA stores from two alternating 128B-swizzled buffers, so
//     the writes overlap the next tile's main loop. f32 output or beta != 0: coalesced 16-byte
//     loads/stores by the warpgroup, adding beta * D.
//   fused GELU backward (instances _k_gelu, FUSE = 1): fc2's dX GEMM of a GELU MLP, D = dA^T
//     (F x tokens, column-major: dA tokens x F). Each staged chunk becomes fc1's output gradient
//     dH = gelu'(X) bf16(dA) (gelu_backward's arithmetic), stored as D, and optionally S(dH^T),
//     MVUE 2:4 along tokens (mvue24.cu's draws, values and metadata): fc1's dW operand without
//     writing dA or reading dH back (gelu_mvue_chunk).
//
// Shared-memory layouts (what the wgmma descriptors describe, PTX ISA 9.7.15.5.1):
//   A stage: 128 rows x 32 compressed values (64 B a row), TMA 64B swizzle; SBO = 512 B (8 rows).
//   B stage, K-major: BN rows x 64 K values (128 B a row), TMA 128B swizzle; SBO = 1024 B (8 rows).
//   BN is 128, 192 or 256 (a multiple of the 64-column epilogue chunk and of the N-major block;
//   256 also with 5 stages and a slim epilogue, see Smem::SLIM);
//   192 fills the SMs better where N / 256 leaves a partial last wave (docs/bench/notes.md).
//   The second k32 step of a stage starts 32 B (A) / 64 B (B) into the swizzle atom, the usual
//   descriptor advance inside an atom.
//   B stage, N-major: BN/64 blocks of 64 K rows x 64 N values (128 B a row), TMA 128B swizzle;
//   LBO = 8192 B (next 64 N values), SBO = 1024 B (next 8 K rows); the second k32 step starts
//   32 rows = 4096 B further.
//   E stage: 8 row-blocks x 32 words: the Sparse24 metadata words of the tile, untouched.
#include "common.cuh"
#include "mvue24.cuh"
#include "activation.cuh"

#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define TWOFOUR_SM90A 1
#endif

namespace sm90 {

enum : int {
    BM = 128,        // tile rows: two consumer warpgroups of 64
    BK = 64,         // dense K per stage (32 compressed values)
    THREADS = 384,   // producer + 2 consumers
    EPI_COLS = 64,   // epilogue chunk width
    EPI_PITCH = 68,  // f32 words a staged row: +4 spreads the rows over the banks
    // FUSE >= 2: a tile's dA as bf16, 128 rows x BN tokens, handed from the consumers to the
    // epilogue warpgroups; 136 halves a row (128 + 8: the consumers' fragment stores of a warp,
    // rows g = 0..7 x t = 0..3, land on 4 g + t: 32 banks).
    HAND_PITCH = 136,
    HAND_BYTES = BM * HAND_PITCH * 2,  // one hand-off buffer (BN <= 128); two alternate
};

// Threads of an instance. The epilogue-warpgroup instance (FUSE == 2): 2 consumer warpgroups, 2
// epilogue warpgroups and a producer warp (one thread issues the TMA: a whole warpgroup's
// registers were idle), 544 threads: at most 5 warps on each of the SM's four 16384-register
// files, so 96 registers a thread, which every role fits (a consumer's 64 accumulators need 91).
// A third epilogue warpgroup would put 6 warps on one file (80 registers): ptxas compiles the
// whole kernel to the launch's budget, not to setmaxnreg's.
constexpr int EPI_WGS = 2;  // epilogue warpgroups of the FUSE == 2 instance
constexpr int threads_of(int fuse) { return fuse == 2 ? 128 * (2 + EPI_WGS) + 32 : THREADS; }

// A 128-byte CUtensorMap, passed by value as a __grid_constant__ parameter.
struct alignas(64) TensorMap {
    uint64_t opaque[16];
};

struct Params {
    void* d;           // M x N output (row- or column-major; bf16 or f32)
    const float* bias; // M entries or null
    float beta;        // D = acc (+ bias) + beta * D_old when beta != 0
    int m, n, k;
    int d_col_major;   // 0: D[m * N + n], 1: D[n * M + m]
    int d_f32;         // 0: bf16, 1: f32
    int m_tiles, n_tiles;  // m_tiles counts cluster tiles of CM x 128 rows
    int tma_store;     // 1: bf16 D, beta == 0: the epilogue writes D through TMA (td)
    int group_m;       // raster: tiles run in groups of group_m M tiles, M fastest within a group
    int stream_k;      // 1: tiles 0 .. dp_tiles run data-parallel (whole waves); each remaining
                       //    tile (the last partial wave) is split into `pieces` K ranges spread
                       //    over all CTAs (see Schedule and fixup_*)
    int dp_tiles;      // stream-K: the tiles before the split tail (a multiple of the clusters)
    int pieces;        // stream-K: K pieces of a tail tile, 2 .. k / BK
    float* ws;         // stream-K partials: per (tail tile, piece < pieces - 1, CTA rank, consumer
                       //    warpgroup) 64 x BN f32 in accumulator-register order (register i of
                       //    thread t at i * 128 + t)
    unsigned* flags;   // stream-K: per partial slot, the epoch of its last write
    unsigned epoch;    // this launch's number: a flag equal to it was written by this launch
    // Fused GELU backward (FUSE instances only; see gelu_mvue_chunk):
    unsigned mvue_step;          // MVUE's step (its Philox counter's third word)
    const uint16_t* gelu_x;      // fc1's pre-activation X, tokens x M row-major
    uint16_t* mvue_vals;         // S(dH^T) values (M x N/2), or null: no MVUE
    uint32_t* mvue_meta;         // S(dH^T) metadata words (crate::layout)
    uint32_t* mvue_mask;         // S(dH^T) mask bits
    unsigned long long mvue_seed;
};

template <int BN, int TRANS_B>
struct WgmmaSp;

// Grouped raster: the CTAs of one wave cover about group_m M tiles x (SMs / group_m) N tiles,
// so the A rows and B columns a wave needs stay in L2 (a slab of B is 4x one of compressed A,
// the host picks group_m to balance the two). M runs fastest within a group. mt counts cluster
// tiles (CM x 128 rows).
__device__ __forceinline__ void raster(int tile, int group_m, int m_tiles, int n_tiles, int& mt, int& nt) {
    const int per_group = group_m * n_tiles;
    const int group = tile / per_group, rem = tile % per_group;
    const int gm = min(group_m, m_tiles - group * group_m);
    mt = group * group_m + rem % gm;
    nt = rem / gm;
}

#include "sparse_gemm_sm90_wgmma.inc"

#ifdef TWOFOUR_SM90A
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(bar)), "r"(count));
}

__device__ __forceinline__ void mbar_expect_tx(uint64_t* bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(bar)), "r"(bytes)
                 : "memory");
}

__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_u32(bar)) : "memory");
}

__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t phase) {
    asm volatile(
        "{\n.reg .pred done;\nWAIT_%=:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
        "@!done bra WAIT_%=;\n}\n" ::"r"(smem_u32(bar)),
        "r"(phase)
        : "memory");
}

__device__ __forceinline__ void tma_load_2d(void* dst, const TensorMap* map, uint64_t* bar, int c0, int c1) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];"
        ::"r"(smem_u32(dst)), "l"(reinterpret_cast<uint64_t>(map)), "r"(smem_u32(bar)), "r"(c0), "r"(c1)
        : "memory");
}

// The same box into the same shared-memory offset of every CTA in `mask`; each destination's
// mbarrier at `bar`'s offset gets the bytes it received.
__device__ __forceinline__ void tma_load_2d_multicast(void* dst, const TensorMap* map, uint64_t* bar, int c0, int c1,
                                                      uint16_t mask) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster"
        " [%0], [%1, {%3, %4}], [%2], %5;"
        ::"r"(smem_u32(dst)), "l"(reinterpret_cast<uint64_t>(map)), "r"(smem_u32(bar)), "r"(c0), "r"(c1), "h"(mask)
        : "memory");
}

__device__ __forceinline__ uint32_t cluster_ctarank() {
    uint32_t r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}

// Arrives on the mbarrier at `bar`'s offset in CTA `rank` of the cluster (this CTA included).
__device__ __forceinline__ void mbar_arrive_cluster(uint64_t* bar, uint32_t rank) {
    uint32_t remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(smem_u32(bar)), "r"(rank));
    // Default semantics (release, CTA scope), as CUTLASS's ClusterBarrier::arrive: a cluster-scope
    // release here cost a fence per stage and made the cluster kernels 3.4x slower on the H100.
    asm volatile("mbarrier.arrive.shared::cluster.b64 _, [%0];" ::"r"(remote) : "memory");
}

__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}

__device__ __forceinline__ void tma_store_2d(const TensorMap* map, const void* src, int c0, int c1) {
    asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%2, %3}], [%1];"
                 ::"l"(reinterpret_cast<uint64_t>(map)), "r"(smem_u32(src)), "r"(c0), "r"(c1)
                 : "memory");
    asm volatile("cp.async.bulk.commit_group;" ::: "memory");
}

// Waits until at most N bulk stores of this thread still read shared memory.
template <int N>
__device__ __forceinline__ void tma_store_wait_read() {
    asm volatile("cp.async.bulk.wait_group.read %0;" ::"n"(N) : "memory");
}

// Byte offset of element (r, c) of a 64 x 64 bf16 tile with 128-byte rows under the TMA 128B
// swizzle: the 16-byte chunk index is XORed with the row index mod 8, which also spreads the
// rows a warp writes over all 32 banks.
__device__ __forceinline__ uint32_t swz128(int r, int c) {
    return r * 128 + ((((c * 2) >> 4) ^ (r & 7)) << 4) + ((c * 2) & 15);
}

// wgmma shared-memory matrix descriptor (PTX ISA 9.7.15.5.1.1): start address, leading byte
// offset (unused for swizzled K-major tiles), stride byte offset, swizzle mode in bits 62-63
// (1 = 128B, 2 = 64B).
__device__ __forceinline__ uint64_t smem_desc(uint32_t addr, uint32_t lbo, uint32_t sbo, uint64_t swizzle) {
    return (uint64_t)((addr & 0x3FFFF) >> 4) | ((uint64_t)(lbo >> 4) << 16) | ((uint64_t)(sbo >> 4) << 32) |
           (swizzle << 62);
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}

// Keeps the accumulators in registers across the asynchronous wgmma (as CUTLASS's
// warpgroup_fence_operand does): the compiler must not move or copy them in between.
template <int R>
__device__ __forceinline__ void fence_acc(float (&d)[R]) {
#pragma unroll
    for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

__device__ __forceinline__ void named_barrier(int id, int threads) {
    asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

__device__ __forceinline__ void named_arrive(int id, int threads) {
    asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(threads) : "memory");
}



// EW: the FUSE >= 2 instances, whose epilogue region holds the two hand-off buffers and whose
// barrier region 4 more mbarriers (hand_full[2], hand_empty[2]).
template <int BN, int STAGES, int EW = 0>
struct Smem {
    static constexpr int A_BYTES = BM * (BK / 2) * 2;  // 8 KB
    static constexpr int B_BYTES = BN * BK * 2;        // 16 / 32 KB
    static constexpr int E_BYTES = (BM / 16) * (BK / 32) * 16 * 4;  // 1 KB
    // SLIM (the 5-stage 128 x 256 instances): one 8 KB TMA-store buffer a warpgroup and no f32
    // staging, which leaves room for a fifth 41 KB stage (cuSPARSELt's kernel for the long-K dW
    // shapes has the same tile with 232 KB: docs/bench/notes.md). bf16 output without beta only:
    // the host runs the 4-stage instance for the staged epilogues.
    static constexpr bool SLIM = BN == 256 && STAGES == 5;
    static constexpr int TMA_BUFS = SLIM ? 1 : 2;  // TMA store buffers a warpgroup
    // f32 staging (2 x 64 x 68 words) or, for TMA stores, 2 warpgroups x TMA_BUFS x 8 KB.
    static constexpr int EPI_BYTES = EW ? 2 * HAND_BYTES : SLIM ? 2 * 8192 : 2 * 64 * EPI_PITCH * 4;
    static_assert(!EW || BN <= 128, "a hand-off buffer holds 128 tokens a row");
    static_assert(SLIM || EPI_BYTES >= 2 * 2 * 8192, "TMA store buffers must fit the staging region");
    static constexpr int A_OFF = 0;
    static constexpr int B_OFF = A_OFF + STAGES * A_BYTES;
    static constexpr int E_OFF = B_OFF + STAGES * B_BYTES;
    static constexpr int EPI_OFF = E_OFF + STAGES * E_BYTES;
    static constexpr int BAR_OFF = EPI_OFF + EPI_BYTES;
    static constexpr int TOTAL = BAR_OFF + (2 * STAGES + (EW ? 4 : 0)) * 8 + 1024;  // + 1024 for the alignment
    static constexpr uint32_t TX_BYTES = A_BYTES + B_BYTES + E_BYTES;
};

// m0: the first row of this CTA's tile (a cluster tile spans CM x BM rows, rank r takes the r-th).
template <int CM>
__device__ __forceinline__ void tile_coords(int tile, const Params& p, int& m0, int& nt) {
    // Read here, not kept in a register across the main loop (the consumers are at 168).
    const int rank = CM > 1 ? (int)cluster_ctarank() : 0;
    int mt;
    raster(tile, p.group_m, p.m_tiles, p.n_tiles, mt, nt);
    m0 = (mt * CM + rank) * BM;
}

// The work of one cluster (both of its CTAs run the same sequence), as segments (cluster tile,
// K blocks [kb_begin, kb_end)). The work of cluster c: units c, c + clusters, c + 2 clusters, ...
// Units below dp are whole tiles (data-parallel waves). With stream-K, unit dp + q is K piece q / tail of tail tile
// dp + q % tail: piece-major, so the clusters working at the same time read the same one or two K
// ranges of neighbouring tiles and share them in L2. (Contiguous equal shares of the tail's
// (tile, K block) steps, as in the Stream-K paper, start every CTA at a different K: on GPT-2 XL
// fc1 dW that read 1.46x the DRAM bytes of data-parallel and lost to it.) The host picks
// `pieces` so that the tail's rounds of `clusters` units fill the SMs (sparse_gemm.rs).
template <int CM>
struct Schedule {
    // 32-bit: the host refuses shapes with 2^31 or more (tile, K block) steps; 64-bit division
    // here made the 40-register producer spill. Every value is uniform (block index and
    // parameters), and the unit's fields are chosen by selects: a branch here made ptxas leave
    // the uniform datapath in the main loop (5-13% slower on long-K shapes).
    int unit, units, step, dp, tail, pieces, k_blocks;
    __device__ Schedule(const Params& p) : k_blocks(p.k / BK) {
        const int tiles = p.m_tiles * p.n_tiles;
        dp = p.stream_k ? p.dp_tiles : tiles;
        tail = tiles - dp;
        pieces = p.stream_k ? p.pieces : 1;
        units = dp + tail * pieces;
        unit = blockIdx.x / CM;
        step = gridDim.x / CM;
    }
    // The next segment: K blocks kb_begin .. kb_end of `tile`, and its piece (0 for whole tiles).
    __device__ bool next(int& tile, int& kb_begin, int& kb_end, int& piece) {
        if (unit >= units) return false;
        const bool split = unit >= dp;
        const int q = split ? unit - dp : 0;
        const int i = q / (tail > 0 ? tail : 1);
        tile = split ? dp + (q - i * tail) : unit;
        piece = i;
        kb_begin = i * k_blocks / pieces;  // 0 for whole tiles (i = 0)
        kb_end = split ? (i + 1) * k_blocks / pieces : k_blocks;
        unit += step;
        return true;
    }
    __device__ bool more() const { return unit < units; }
    __device__ bool next(int& tile, int& kb_begin, int& kb_end) {
        int piece;
        return next(tile, kb_begin, kb_end, piece);
    }
};

// Writes one consumer's 64 x 64 chunk (columns n0c .. n0c + 64 of rows m0w .. m0w + 64) from the
// staging buffer to D with 16-byte stores, in D's layout.
__device__ __forceinline__ void store_chunk(const Params& p, const float* stage, int m0w, int n0c, int tid) {
    const bool col = p.d_col_major;
#pragma unroll
    for (int it = 0; it < 4; ++it) {
        const int item = it * 128 + tid;        // 512 vectors of 8 elements
        const int a = item >> 3, b = (item & 7) * 8;  // row-major: row a, cols b..b+8; col-major: col a, rows b..b+8
        const int r0 = col ? b : a, c0 = col ? a : b;
        const int gm = m0w + r0, gn = n0c + c0;
        float v[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] = col ? stage[(r0 + j) * EPI_PITCH + c0] : stage[r0 * EPI_PITCH + c0 + j];
        if (col ? (gn >= p.n || gm >= p.m) : (gm >= p.m || gn >= p.n)) continue;
        long long off = col ? (long long)gn * p.m + gm : (long long)gm * p.n + gn;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            if (p.bias) v[j] += p.bias[col ? gm + j : gm];
        }
        if (p.d_f32) {
            float4* dst = reinterpret_cast<float4*>(static_cast<float*>(p.d) + off);
            if (p.beta != 0.f) {
                float4 o0 = dst[0], o1 = dst[1];
                v[0] += p.beta * o0.x; v[1] += p.beta * o0.y; v[2] += p.beta * o0.z; v[3] += p.beta * o0.w;
                v[4] += p.beta * o1.x; v[5] += p.beta * o1.y; v[6] += p.beta * o1.z; v[7] += p.beta * o1.w;
            }
            dst[0] = make_float4(v[0], v[1], v[2], v[3]);
            dst[1] = make_float4(v[4], v[5], v[6], v[7]);
        } else {
            uint4* dst = reinterpret_cast<uint4*>(static_cast<__nv_bfloat16*>(p.d) + off);
            if (p.beta != 0.f) {
                uint4 o = *dst;
                const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&o);
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    float2 f = __bfloat1622float2(h[j]);
                    v[2 * j] += p.beta * f.x;
                    v[2 * j + 1] += p.beta * f.y;
                }
            }
            uint4 out;
            __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&out);
#pragma unroll
            for (int j = 0; j < 4; ++j) h[j] = __floats2bfloat162_rn(v[2 * j], v[2 * j + 1]);
            *dst = out;
        }
    }
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

// Writes this warp's accumulators of columns chunk*64 .. +64 into a 64 x 64 bf16 TMA buffer in D's
// layout (row-major: [m][n]; column-major: [n][m]), bias added, with stmatrix: the accumulator
// fragment of an n8 block is exactly an 8x8 mma fragment (rows g / g + 8, columns 2t, 2t + 1), so
// one stmatrix.x4 stores two n8 blocks of 16 rows; .trans stores them transposed for [n][m]
// (PTX ISA 9.7.14.5.16). Each matrix row is a 16-byte chunk of the swizzled buffer.
template <int R>
__device__ __forceinline__ void stage_bf16(const Params& p, const float (&acc)[R], uint8_t* buf, int chunk, int warp,
                                           int lane, float b_lo, float b_hi) {
    const int i = lane >> 3, r = lane & 7;  // this lane addresses row r of matrix i
    const int rh = i & 1, jj = i >> 1;      // matrix i: rows 8 rh.., n8 block jj of the pair
#pragma unroll
    for (int pair = 0; pair < EPI_COLS / 16; ++pair) {
        const int q = chunk * (EPI_COLS / 8) + 2 * pair;
        const uint32_t r0 = pack_bf16(acc[4 * q] + b_lo, acc[4 * q + 1] + b_lo);
        const uint32_t r1 = pack_bf16(acc[4 * q + 2] + b_hi, acc[4 * q + 3] + b_hi);
        const uint32_t r2 = pack_bf16(acc[4 * q + 4] + b_lo, acc[4 * q + 5] + b_lo);
        const uint32_t r3 = pack_bf16(acc[4 * q + 6] + b_hi, acc[4 * q + 7] + b_hi);
        const int n = 8 * (2 * pair + jj), m = 16 * warp + 8 * rh;
        if (!p.d_col_major) {
            asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};"
                         ::"r"(smem_u32(buf + swz128(m + r, n))), "r"(r0), "r"(r1), "r"(r2), "r"(r3) : "memory");
        } else {
            asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};"
                         ::"r"(smem_u32(buf + swz128(n + r, m))), "r"(r0), "r"(r1), "r"(r2), "r"(r3) : "memory");
        }
    }
}

// Releases stage s: one arrival per consumer warp on the empty barrier of every CTA that
// multicasts into it (this one, and with CM = 2 the peer). Called by lanes 0 .. CM-1: lane r
// signals CTA r, so the remote arrivals of a warp go out side by side.
template <int CM>
__device__ __forceinline__ void release_stage(uint64_t* empty_s, int lane) {
    if (CM == 1) mbar_arrive(empty_s);
    else mbar_arrive_cluster(empty_s, lane);
}

// Stream-K fixup (Osama et al. 2023, "Stream-K": partial tiles summed by one CTA). Pieces
// 0 .. pieces - 2 of a tail tile are partials: stored, flagged, done, with no wait. The last
// piece, the tile's latest unit in every cluster's walk (Schedule), adds the partials in piece
// order (the same bits every run) and runs the epilogue. It waits only on units numbered below
// its own, whose CTAs, all resident at once (the host launches one wave), reach them first: by
// induction on the unit number every wait ends. Per consumer warpgroup and slot: 64 x BN f32 in
// register order (thread t's register i at i * 128 + t: 128 consecutive floats a register,
// coalesced), one flag.
__device__ __forceinline__ unsigned ld_acquire_gpu(const unsigned* p) {
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ void st_release_gpu(unsigned* p, unsigned v) {
    asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

template <int REGS>
__device__ __forceinline__ void fixup_store(const Params& p, const float (&acc)[REGS], int tid, int slot) {
    float* ws = p.ws + (long long)slot * (128 * REGS);
#pragma unroll
    for (int i = 0; i < REGS; ++i) __stcg(ws + i * 128 + tid, acc[i]);  // to L2: another SM reads it
    // The warpgroup's stores, then one thread's fence and release (cooperative groups' grid sync
    // and CUTLASS's barrier do the same).
    named_barrier(5 + (slot & 1), 128);  // slot & 1: the consumer warpgroup
    if (tid == 0) {
        __threadfence();
        st_release_gpu(p.flags + slot, p.epoch);
    }
}

template <int REGS>
__device__ __forceinline__ void fixup_add(const Params& p, float (&acc)[REGS], int tid, int slot) {
    if (tid == 0) {
        // No time-out: a trap here (even on a cold path) made ptxas spill the 128-accumulator
        // instances. The wait ends because the grid is one wave of resident CTAs (see above).
        while (ld_acquire_gpu(p.flags + slot) != p.epoch) __nanosleep(64);
        __threadfence();
    }
    named_barrier(5 + (slot & 1), 128);
    const float* ws = p.ws + (long long)slot * (128 * REGS);
#pragma unroll
    for (int i = 0; i < REGS; ++i) acc[i] += __ldcg(ws + i * 128 + tid);  // L2, not a stale L1 line
}

// The fused epilogue's chunk: 64 features (rows m0w ..) x 64 tokens (columns n0c ..) of dA^T in f32
// in the staging buffer become dH = gelu'(X) bf16(dA), written to D (tokens x M), and with
// p.mvue_vals set S(dH^T): bit for bit gelu_backward then mvue24_compress (the same roundings,
// draws and layout). Warp w takes the chunk's 32-token half w >> 1 and rows 32 (w & 1) ..; lane l
// rows 2 (l & 15) and + 1, tokens 16 (l >> 4) .. + 15: a row's 16 tokens are one Philox call of
// mvue24.cu's (lane_rows), the lane writes one metadata word (partner lane ^ 4: rows + 8) and one
// mask word (partner lane ^ 16: the other 16 tokens). X and D are read and written as 4-byte row
// pairs, 64 contiguous bytes a half-warp. The host requires M and N multiples of 64, so a chunk
// is wholly inside D or wholly outside (the caller skips those); all 128 threads call it.
// This thread's X words of a chunk (rows 2 (l & 15) .., 16 tokens; see gelu_mvue_chunk), loaded
// before the chunk is staged so that their latency overlaps the staging.
struct ChunkLanes {
    int rr, tl;  // the thread's first row and first token within the chunk
    __device__ ChunkLanes(int tid) : rr(32 * ((tid >> 5) & 1) + 2 * (tid & 15)), tl(32 * (tid >> 6) + 16 * ((tid >> 4) & 1)) {}
};

__device__ __forceinline__ void gelu_load_x(const Params& p, int m0w, int n0c, int tid, uint32_t (&xv)[16]) {
    const ChunkLanes c(tid);
    const uint16_t* x = p.gelu_x + (long long)(n0c + c.tl) * p.m + m0w + c.rr;
#pragma unroll
    for (int r = 0; r < 16; ++r) xv[r] = __ldg(reinterpret_cast<const unsigned int*>(x + (long long)r * p.m));
}

// Prefetches into L2 the X rows of a 64-row half tile's epilogue (BN tokens x 64 features: one
// 128-byte line a token), at the start of its main loop: the epilogue's loads then hit L2.
template <int BN>
__device__ __forceinline__ void gelu_prefetch_x(const Params& p, int gm0, int n0, int tid) {
    if (gm0 >= p.m) return;
#pragma unroll
    for (int i = 0; i < BN / 128; ++i) {
        const int tok = n0 + i * 128 + tid;
        if (tok < p.n) asm volatile("prefetch.global.L2 [%0];" ::"l"(p.gelu_x + (long long)tok * p.m + gm0));
    }
}

// dA of a chunk as the plain GEMM stores it (bf16): 4 tokens (tok ..) of chunk row `row`, packed
// in pairs (the lower token low). From the cooperative consumers' f32 staging (rounded here) or
// from the hand-off buffer of the epilogue warpgroups (rounded by the consumers, the same way).
struct StagedF32 {
    const float* stage;
    __device__ uint2 operator()(int row, int tok) const {
        const float4 v = *reinterpret_cast<const float4*>(stage + row * EPI_PITCH + tok);
        return make_uint2((uint32_t)twofour::f32_to_bf16(v.x) | (uint32_t)twofour::f32_to_bf16(v.y) << 16,
                          (uint32_t)twofour::f32_to_bf16(v.z) | (uint32_t)twofour::f32_to_bf16(v.w) << 16);
    }
};
struct HandoffBf16 {
    uint32_t buf;  // shared-memory address of the chunk's first element; rows HAND_PITCH halves apart
    __device__ uint2 operator()(int row, int tok) const {
        uint2 v;  // ld.shared (a generic pointer gave generic LDs); "memory": after the hand-off wait
        asm volatile("ld.shared.v2.b32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "r"(buf + 2 * (row * HAND_PITCH + tok)) : "memory");
        return v;
    }
};

// `after_x()` runs once the chunk's X words are no longer needed (the epilogue warpgroups load the
// next chunk's X into them there).
template <class DaChunk, class AfterX>
__device__ __forceinline__ void gelu_mvue_chunk(const Params& p, DaChunk da_at, int m0w, int n0c, int tid, uint32_t (&xv)[16], AfterX after_x) {
    const int lane = tid & 31;
    const ChunkLanes c(tid);
    const int rr = c.rr, tl = c.tl;
    const int row = m0w + rr, tok0 = n0c + tl;
    uint16_t* dh = static_cast<uint16_t*>(p.d) + (long long)tok0 * p.m + row;  // element (token tok0, feature row) of D
    uint32_t w[16];
#pragma unroll
    for (int q = 0; q < 4; ++q) {
        const uint2 lo = da_at(rr, tl + 4 * q), hi = da_at(rr + 1, tl + 4 * q);
        const uint32_t l2[2] = {lo.x, lo.y}, h2[2] = {hi.x, hi.y};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int r = 4 * q + j;
            // dA rounded to bf16 as the plain GEMM stores it (rows rr, rr + 1 of token r as a
            // pair), then gelu_backward's arithmetic
            const uint32_t lo_w = l2[j >> 1], hi_w = h2[j >> 1];
            const uint32_t da = j & 1 ? __byte_perm(lo_w, hi_w, 0x7632) : __byte_perm(lo_w, hi_w, 0x5410);
            const uint32_t out = gated::gelu_backward_pair(xv[r], da);
            w[r] = out;
            *reinterpret_cast<uint32_t*>(dh + (long long)r * p.m) = out;
        }
    }
    after_x();
    if (!p.mvue_vals) return;
    const uint2 key = make_uint2((uint32_t)p.mvue_seed, (uint32_t)(p.mvue_seed >> 32));
    uint32_t nib[2], kept[2];
    mvue::lane_rows<false, 1>([&](int r, int) { return w[r]; }, row, tok0, p.n, key, p.mvue_step, true, p.mvue_vals, nib, kept);
    const uint32_t nib_o = __shfl_xor_sync(0xffffffffu, nib[0], 4);
    const uint32_t kept_o = __shfl_xor_sync(0xffffffffu, kept[0], 16);
    // Metadata word (16-row block, 32-token block, g, t): row g's nibbles low, row g + 8's high
    // (docs/layout.md). Lanes with rows g, g + 1 (g = rr & 7) write word g, their partners (rows
    // g + 8, g + 9) word g + 1.
    const bool high = (lane & 4) != 0;
    const int g = (rr & 7) + high, t = (lane >> 4) & 1;
    const long long blk = (long long)(row / 16) * (p.n / 32) + tok0 / 32;
    p.mvue_meta[blk * 16 + 2 * g + t] = high ? (nib_o >> 16) | (nib[0] & 0xffff0000u) : (nib[0] & 0xffffu) | (nib_o << 16);
    // Mask word (row, 32-token block): tokens 0..15 low. Lanes of the first 16 tokens write row
    // `row`, the others row + 1.
    const int mrow = row - (row & 1) + t;
    p.mvue_mask[(long long)mrow * (p.n / 32) + tok0 / 32] = t ? (kept_o >> 16) | (kept[0] & 0xffff0000u) : (kept[0] & 0xffffu) | (kept_o << 16);
}

// Writes rows gm0 .. gm0 + 64 (one m64 half of the tile) of `acc` (64 x BN) to D: the epilogue of
// a cooperative consumer's half tile and of each half of a ping-pong tile. bf16 without beta: TMA
// stores from the two alternating swizzled buffers; otherwise staged f32 chunks, 16-byte stores.
// FUSE: the fused GELU-backward epilogue; PRELOAD: its X loads issued before the chunk is staged
// (not in ping-pong, whose other accumulators leave no room for them).
template <int BN, int FUSE, bool PRELOAD, int BUFS, int R>
__device__ __forceinline__ void store_half(const Params& p, const float (&acc)[R], uint8_t* tma_buf, float* stage_epi,
                                           int& epi_count, const TensorMap* td, int gm0, int n0, int tid) {
    const int warp = tid >> 5, lane = tid & 31;
    // BUFS == 1 (SLIM): TMA stores only, from one buffer (the host guarantees bf16 without beta).
    if (BUFS == 1 || (!FUSE && p.tma_store)) {
        const int rlo = gm0 + 16 * warp + (lane >> 2), rhi = rlo + 8;
        const float b_lo = p.bias && rlo < p.m ? p.bias[rlo] : 0.f;
        const float b_hi = p.bias && rhi < p.m ? p.bias[rhi] : 0.f;
#pragma unroll
        for (int chunk = 0; chunk < BN / EPI_COLS; ++chunk, ++epi_count) {
            uint8_t* buf = tma_buf + (BUFS == 2 ? (epi_count & 1) * 8192 : 0);
            // A half wholly beyond M (the second of the last M tile when M % 128 is 1..64) is
            // staged but not stored, so it commits no bulk group: wait<1> would then let it
            // overwrite the buffer the previous half's last store still reads (ping-pong on GPT-2
            // XL fc1 dX, M = 1600, lost elements of its last M tile: tests/sparse_gemm.rs). It
            // waits for every store instead. (Returning early for such halves put the cooperative
            // main loops' mbarrier waits on vector registers: scripts/sass.sh.)
            if (tid == 0) {
                if (gm0 < p.m) tma_store_wait_read<BUFS - 1>();
                else tma_store_wait_read<0>();
            }
            named_barrier(1 + (threadIdx.x / 128 - 1), 128);
            stage_bf16(p, acc, buf, chunk, warp, lane, b_lo, b_hi);
            asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
            named_barrier(1 + (threadIdx.x / 128 - 1), 128);
            if (tid == 0 && gm0 < p.m) {
                const int gn = n0 + chunk * EPI_COLS;
                if (p.d_col_major) tma_store_2d(td, buf, gm0, gn);
                else tma_store_2d(td, buf, gn, gm0);
            }
        }
    } else {
        const int g = lane >> 2, t = lane & 3;
#pragma unroll
        for (int chunk = 0; chunk < BN / EPI_COLS; ++chunk) {
            const bool fuse_live = FUSE && gm0 < p.m && n0 + chunk * EPI_COLS < p.n;
            uint32_t xv[16];
            if (PRELOAD && fuse_live) gelu_load_x(p, gm0, n0 + chunk * EPI_COLS, tid, xv);
#pragma unroll
            for (int j = 0; j < EPI_COLS / 8; ++j) {
                const int r = chunk * (EPI_COLS / 8) + j;
                float* row0 = stage_epi + (16 * warp + g) * EPI_PITCH + 8 * j + 2 * t;
                *reinterpret_cast<float2*>(row0) = make_float2(acc[4 * r], acc[4 * r + 1]);
                *reinterpret_cast<float2*>(row0 + 8 * EPI_PITCH) = make_float2(acc[4 * r + 2], acc[4 * r + 3]);
            }
            named_barrier(1 + (threadIdx.x / 128 - 1), 128);
            if (!FUSE) store_chunk(p, stage_epi, gm0, n0 + chunk * EPI_COLS, tid);
            else if (fuse_live) {
                if (!PRELOAD) gelu_load_x(p, gm0, n0 + chunk * EPI_COLS, tid, xv);
                gelu_mvue_chunk(p, StagedF32{stage_epi}, gm0, n0 + chunk * EPI_COLS, tid, xv, [] {});
            }
            named_barrier(1 + (threadIdx.x / 128 - 1), 128);
        }
    }
}

// The bytes a stage of tile column nt brings. N-major B: the 64-column blocks that lie wholly
// beyond N are not loaded (the ragged last N tile: GPT-2 XL's N = 1600 leaves 1 of 4 blocks of
// 128 x 256). Loading them anyway (TMA fills zeros) made those tiles' main loops 1.25-1.6x longer
// than the others' (per-tile %globaltimer trace, docs/bench/notes.md). Their shared memory keeps
// stale data: the MMAs then fill accumulator columns >= N with garbage that no epilogue path
// stores (TMA stores clip at N, store_chunk checks n).
template <int BN, int B_MN>
__device__ __forceinline__ int b_blocks_of(const Params& p, int nt) {
    return B_MN ? min(BN / 64, (p.n - nt * BN + 63) / 64) : BN / 64;
}

// The stage word (E stage: row-block x 32 words) that lane `lane` of the warp on row-block `rb`
// loads once a K block, for both of its k32 wgmmas. A k32 step's metadata is word 2g + t of its
// 16 (g = lane / 4, t = 0, 1), the second step's 16 words later; wgmma.sp takes it from lanes 0-1
// of each quad with sparsity selector 0 and from lanes 2-3 with selector 1 (PTX ISA 9.7.15.6.3,
// sparse matrix metadata): so lanes 0-1 load their first-step word, lanes 2-3 the second-step
// word of t = lane & 1, and one register serves both wgmmas. (Two loads a K block, one a step,
// cost 2.7% of the stage's shared-memory wavefronts on the smem-bound dW main loops: +0.9-1.7%,
// docs/bench/notes.md.)
__device__ __forceinline__ int meta_word(int rb, int lane) {
    static_assert(BK == 64, "two k32 steps a K block: selectors 0 and 1");
    return rb * 32 + 2 * (lane >> 2) + (lane & 1) + (lane & 2 ? 16 : 0);
}

// One stage's loads: waits until stage s is free (its previous use released by every consumer
// warp), then A, B and the metadata of K block kb of tile (m0, nt) into it. `issuer`: whether
// this thread issues them (the epilogue-warpgroup instance's producer warp waits whole).
template <int BN, int STAGES, int B_MN, int CM>
__device__ __forceinline__ void load_stage(uint8_t* smem, uint64_t* full, uint64_t* empty, const TensorMap* ta,
                                           const TensorMap* tb, const TensorMap* te, int rank, int s, uint32_t phase, int kb,
                                           int m0, int nt, int b_blocks, uint32_t tx, bool issuer) {
    using S = Smem<BN, STAGES>;
    mbar_wait(&empty[s], phase ^ 1);  // the first pass through the ring finds every stage free
    if (!issuer) return;
    mbar_expect_tx(&full[s], tx);
    tma_load_2d(smem + S::A_OFF + s * S::A_BYTES, ta, &full[s], kb * (BK / 2), m0);
    uint8_t* b_stage = smem + S::B_OFF + s * S::B_BYTES;
    if (CM == 1) {
        if (B_MN) {
#pragma unroll
            for (int i = 0; i < BN / 64; ++i)
                if (i < b_blocks) tma_load_2d(b_stage + i * 8192, tb, &full[s], nt * BN + 64 * i, kb * BK);
        } else {
            tma_load_2d(b_stage, tb, &full[s], kb * BK, nt * BN);
        }
    } else if (B_MN) {  // the 64-column blocks alternate between the two CTAs
#pragma unroll
        for (int i = 0; i < BN / 64; ++i)
            if (i % 2 == rank && i < b_blocks) tma_load_2d_multicast(b_stage + i * 8192, tb, &full[s], nt * BN + 64 * i, kb * BK, 0x3);
    } else {  // rank r loads B rows r * BN/2 .. (the tensor map's box is BN/2 rows)
        tma_load_2d_multicast(b_stage + rank * (BN / 2) * 128, tb, &full[s], kb * BK, nt * BN + rank * (BN / 2), 0x3);
    }
    tma_load_2d(smem + S::E_OFF + s * S::E_BYTES, te, &full[s], kb * (BK / 32) * 16, m0 / 16);
}

template <int BN, int STAGES, int B_MN, int CM>
__device__ __forceinline__ void producer(const Params& p, uint8_t* smem, uint64_t* full, uint64_t* empty,
                                         const TensorMap* ta, const TensorMap* tb, const TensorMap* te, int rank,
                                         bool issuer = true) {
    int s = 0;
    uint32_t phase = 0;
    Schedule<CM> work(p);
    int tile, kb_begin, kb_end;
    while (work.next(tile, kb_begin, kb_end)) {
        int m0, nt;
        tile_coords<CM>(tile, p, m0, nt);
        const int b_blocks = b_blocks_of<BN, B_MN>(p, nt);
        const uint32_t tx = Smem<BN, STAGES>::TX_BYTES - (uint32_t)(BN / 64 - b_blocks) * 8192u;
        for (int kb = kb_begin; kb < kb_end; ++kb) {
            load_stage<BN, STAGES, B_MN, CM>(smem, full, empty, ta, tb, te, rank, s, phase, kb, m0, nt, b_blocks, tx, issuer);
            if (++s == STAGES) { s = 0; phase ^= 1; }
        }
    }
}

template <int BN, int STAGES, int B_MN, int CM, int FUSE>
__device__ __forceinline__ void consumer(const Params& p, uint8_t* smem, uint64_t* full, uint64_t* empty, int wg,
                                         const TensorMap* td) {
    using S = Smem<BN, STAGES>;
    using Mma = WgmmaSp<BN, B_MN>;
    const int tid = threadIdx.x - 128 * (FUSE >= 2 ? wg : wg + 1);  // 0..127 within the consumer warpgroup
    const int warp = tid >> 5, lane = tid & 31;
    float* stage_epi = reinterpret_cast<float*>(smem + S::EPI_OFF) + wg * 64 * EPI_PITCH;
    uint8_t* tma_buf = smem + S::EPI_OFF + wg * S::TMA_BUFS * 8192;
    int epi_count = 0;  // TMA store buffers alternate
    // This lane's metadata word within a stage (meta_word): one load a K block for both k32 steps.
    const int e_word = meta_word(wg * 4 + warp, lane);
    float acc[Mma::kAccRegs];
    int s = 0;
    uint32_t phase = 0;
    Schedule<CM> work(p);
    int tile, kb_begin, kb_end, piece;
    int handed = 0;  // FUSE >= 2: tiles handed to the epilogue warpgroups so far
    while (work.next(tile, kb_begin, kb_end, piece)) {
        int m0, nt;
        tile_coords<CM>(tile, p, m0, nt);
        const int n0 = nt * BN;
        if (FUSE && kb_end == p.k / BK) gelu_prefetch_x<BN>(p, m0 + 64 * wg, n0, tid);  // this segment runs the epilogue
        for (int kb = kb_begin; kb < kb_end; ++kb) {
            mbar_wait(&full[s], phase);
            const uint32_t a_base = smem_u32(smem + S::A_OFF + s * S::A_BYTES) + wg * 64 * 64;
            const uint32_t b_base = smem_u32(smem + S::B_OFF + s * S::B_BYTES);
            const uint32_t* e = reinterpret_cast<const uint32_t*>(smem + S::E_OFF + s * S::E_BYTES);
            // Every register the wgmmas read (metadata words, descriptors, scale-d) is set before
            // the fence: one written after it makes ptxas fence again before each wgmma (C7519).
            const uint32_t meta = e[e_word];
            uint64_t da[BK / 32], db[BK / 32];
#pragma unroll
            for (int kk = 0; kk < BK / 32; ++kk) {
                da[kk] = smem_desc(a_base + kk * 32, 16, 512, 2);
                db[kk] = B_MN ? smem_desc(b_base + kk * 4096, 8192, 1024, 1) : smem_desc(b_base + kk * 64, 16, 1024, 1);
            }
            const int first = kb == kb_begin;
            fence_acc(acc);
            wgmma_fence();
            Mma::template mma<0>(da[0], db[0], meta, !first, acc);
            Mma::template mma<1>(da[1], db[1], meta, 1, acc);
            wgmma_commit();
            fence_acc(acc);
            // Keep this stage's wgmmas in flight; the previous stage's are done: release it.
            wgmma_wait<1>();
            fence_acc(acc);
            if (kb > kb_begin && lane < CM) release_stage<CM>(&empty[(s + STAGES - 1) % STAGES], lane);
            if (++s == STAGES) { s = 0; phase ^= 1; }
        }
        wgmma_wait<0>();
        fence_acc(acc);
        if (lane < CM) release_stage<CM>(&empty[(s + STAGES - 1) % STAGES], lane);

        // Epilogue. Accumulator fragment (PTX ISA 9.7.15.5.2, m64nNk32 D): register 4j + {0,1} is
        // row 16 warp + g, columns 8j + 2t + {0,1}; 4j + {2,3} is row + 8.
        if (FUSE >= 2) {
            // Hand dA (bf16) to the epilogue warpgroups and go on to the next tile's main loop:
            // buffer b = handed & 1, once it is drained (its first use passes at once).
            const int b = handed & 1;
            uint64_t* hand = empty + STAGES;  // hand_full[2], hand_empty[2]
            mbar_wait(&hand[2 + b], ((handed >> 1) & 1) ^ 1);
            // Row 64 wg + 16 warp + g, tokens 2t, 2t + 1 (+ 8j): one word; row + 8 likewise.
            const int g = lane >> 2, t = lane & 3;
            uint32_t* lo = reinterpret_cast<uint32_t*>(smem + S::EPI_OFF + b * HAND_BYTES + ((64 * wg + 16 * warp + g) * HAND_PITCH + 2 * t) * 2);
#pragma unroll
            for (int j = 0; j < BN / 8; ++j) {
                lo[4 * j] = (uint32_t)twofour::f32_to_bf16(acc[4 * j]) | (uint32_t)twofour::f32_to_bf16(acc[4 * j + 1]) << 16;
                lo[4 * HAND_PITCH + 4 * j] = (uint32_t)twofour::f32_to_bf16(acc[4 * j + 2]) | (uint32_t)twofour::f32_to_bf16(acc[4 * j + 3]) << 16;
            }
            mbar_arrive(&hand[b]);  // release: the epilogue's wait acquires these stores
            ++handed;
            continue;
        }
        const int gm0 = m0 + 64 * wg;
        if (p.stream_k && tile >= p.dp_tiles) {
            // Slot of (tail tile j, piece i, CTA rank, warpgroup): ((j (pieces - 1) + i) CM + rank) 2 + wg.
            const int rank = CM > 1 ? (int)cluster_ctarank() : 0;
            const int first = (tile - p.dp_tiles) * (p.pieces - 1);
            if (piece < p.pieces - 1) {  // a partial: store it, raise its flag, no epilogue
                fixup_store(p, acc, tid, ((first + piece) * CM + rank) * 2 + wg);
                continue;
            }
            for (int i = 0; i < p.pieces - 1; ++i) fixup_add(p, acc, tid, ((first + i) * CM + rank) * 2 + wg);
        }
        store_half<BN, FUSE, true, S::TMA_BUFS>(p, acc, tma_buf, stage_epi, epi_count, td, gm0, n0, tid);
    }
    if (p.tma_store && tid == 0) tma_store_wait_read<0>();  // shared memory must outlive the stores' reads
}

// Advances a ring position by n stages.
template <int STAGES>
__device__ __forceinline__ void ring_advance(int& s, uint32_t& phase, int n) {
    s += n;
    phase ^= (uint32_t)((s / STAGES) & 1);
    s %= STAGES;
}

// Ping-pong consumer: warpgroup wg computes the CTA's tiles wg, wg + 2, ... whole (128 x BN, two
// m64 halves); the stages of the other warpgroup's tiles are skipped in the ring. Data-parallel
// only (the host refuses stream-K here): every tile has all K blocks.
// Main loops take turns (named barriers 3 and 4, 256 threads: warpgroup wg waits on 3 + wg, the
// other arrives on it after its main loop). Besides the ordering, this is what keeps the full
// barriers' parity waits sound: a warpgroup starts waiting on its next tile's stages only after
// the other consumed every stage of the tile in between, so no stage is two phases behind.
template <int BN, int STAGES, int B_MN, int FUSE>
__device__ __forceinline__ void consumer_pingpong(const Params& p, uint8_t* smem, uint64_t* full, uint64_t* empty,
                                                  int wg, const TensorMap* td) {
    using S = Smem<BN, STAGES>;
    using Mma = WgmmaSp<BN, B_MN>;
    const int tid = threadIdx.x - 128 * (wg + 1);
    const int warp = tid >> 5, lane = tid & 31;
    float* stage_epi = reinterpret_cast<float*>(smem + S::EPI_OFF) + wg * 64 * EPI_PITCH;
    uint8_t* tma_buf = smem + S::EPI_OFF + wg * S::TMA_BUFS * 8192;
    int epi_count = 0;
    // Metadata words of this lane for row-blocks warp (half 0) and 4 + warp (half 1) (meta_word).
    const int e_word0 = meta_word(warp, lane), e_word1 = e_word0 + 4 * 32;
    float acc0[Mma::kAccRegs], acc1[Mma::kAccRegs];
    int s = 0;
    uint32_t phase = 0;
    Schedule<1> work(p);
    int tile, kb_begin, kb_end, local = 0;
    while (work.next(tile, kb_begin, kb_end)) {
        const int idx = local++;
        if ((idx & 1) != wg) {  // the other warpgroup's tile: its stages pass by
            ring_advance<STAGES>(s, phase, kb_end - kb_begin);
            continue;
        }
        if (idx > 0) named_barrier(3 + wg, 256);  // the other warpgroup's main loop is done
        int m0, nt;
        tile_coords<1>(tile, p, m0, nt);
        const int n0 = nt * BN;
        if (FUSE) {
            gelu_prefetch_x<BN>(p, m0, n0, tid);
            gelu_prefetch_x<BN>(p, m0 + 64, n0, tid);
        }
        for (int kb = kb_begin; kb < kb_end; ++kb) {
            mbar_wait(&full[s], phase);
            const uint32_t a_base = smem_u32(smem + S::A_OFF + s * S::A_BYTES);
            const uint32_t b_base = smem_u32(smem + S::B_OFF + s * S::B_BYTES);
            const uint32_t* e = reinterpret_cast<const uint32_t*>(smem + S::E_OFF + s * S::E_BYTES);
            // Every register the wgmmas read is set before the fence (C7519, as in `consumer`).
            const uint32_t meta0 = e[e_word0], meta1 = e[e_word1];
            uint64_t da0[BK / 32], da1[BK / 32], db[BK / 32];
#pragma unroll
            for (int kk = 0; kk < BK / 32; ++kk) {
                da0[kk] = smem_desc(a_base + kk * 32, 16, 512, 2);
                da1[kk] = smem_desc(a_base + 64 * 64 + kk * 32, 16, 512, 2);
                db[kk] = B_MN ? smem_desc(b_base + kk * 4096, 8192, 1024, 1) : smem_desc(b_base + kk * 64, 16, 1024, 1);
            }
            const int first = kb == kb_begin;
            fence_acc(acc0);
            fence_acc(acc1);
            wgmma_fence();
            Mma::template mma<0>(da0[0], db[0], meta0, !first, acc0);
            Mma::template mma<0>(da1[0], db[0], meta1, !first, acc1);
            Mma::template mma<1>(da0[1], db[1], meta0, 1, acc0);
            Mma::template mma<1>(da1[1], db[1], meta1, 1, acc1);
            wgmma_commit();
            fence_acc(acc0);
            fence_acc(acc1);
            wgmma_wait<1>();
            fence_acc(acc0);
            fence_acc(acc1);
            if (kb > kb_begin && lane == 0) mbar_arrive(&empty[(s + STAGES - 1) % STAGES]);
            if (++s == STAGES) { s = 0; phase ^= 1; }
        }
        // Every stage of this tile is consumed: the other warpgroup may start its next tile (only
        // if there is one, so no arrival is left pending at exit).
        if (work.more()) named_arrive(4 - wg, 256);
        wgmma_wait<0>();
        fence_acc(acc0);
        fence_acc(acc1);
        if (lane == 0) mbar_arrive(&empty[(s + STAGES - 1) % STAGES]);
        store_half<BN, FUSE, false, S::TMA_BUFS>(p, acc0, tma_buf, stage_epi, epi_count, td, m0, n0, tid);
        store_half<BN, FUSE, false, S::TMA_BUFS>(p, acc1, tma_buf, stage_epi, epi_count, td, m0 + 64, n0, tid);
    }
    if (p.tma_store && tid == 0) tma_store_wait_read<0>();
}

// FUSE >= 2, epilogue warpgroup e of NE = EPI_WGS (the CTA's warpgroups 2 ..): the CTA's tiles (the
// consumers' order) in chunks of 64 rows x 64 tokens, 2 BN / 64 a tile; chunk g of the CTA (tile
// g / (2 BN / 64)) goes to warpgroup g % NE. Each waits for its chunk's tile in hand-off buffer
// (tile & 1), runs the GELU backward + MVUE on it (gelu_mvue_chunk, the cooperative instances'
// arithmetic) and arrives on the buffer's "empty" barrier (2 BN / 64 x 128 arrivals free it). It
// runs while the consumers are in the next tile's main loop: the tensor cores do not wait for the
// epilogue's CUDA-core work (docs/sparse-training.md). Every warpgroup has a chunk in every tile
// (NE <= chunks a tile), so no buffer can be refilled twice while one of them still waits on it.
// Data-parallel only.
template <int BN>
__device__ __forceinline__ void epilogue_warps(const Params& p, const uint8_t* hand_bufs, uint64_t* hand, int e) {
    constexpr int CHUNKS = 2 * (BN / EPI_COLS);  // a tile's chunks: 2 row halves x BN / 64 tokens
    constexpr int NE = EPI_WGS;
    static_assert(NE <= CHUNKS, "every epilogue warpgroup must take a chunk of every tile");
    const int tid = threadIdx.x - 128 * (2 + e);
    const int tiles = p.m_tiles * p.n_tiles;
    // Chunk g's place: tile (the CTA's h-th, Schedule<1>'s order), rows gm0 .., tokens n0c ..
    // The tile's coordinates (m0, nt) are computed once a tile (two divisions), and kept from the
    // previous place for the tile's other chunks.
    struct Place {
        int h, half, cc, gm0, n0c, m0, nt;
        bool valid, live;
    };
    const auto place = [&](int g, const Place* prev) {
        Place q;
        q.h = g / CHUNKS;
        const int c = g % CHUNKS, tile = blockIdx.x + q.h * gridDim.x;
        q.valid = tile < tiles;
        q.m0 = 0;
        q.nt = 0;
        if (prev && prev->h == q.h) {
            q.m0 = prev->m0;
            q.nt = prev->nt;
        } else if (q.valid) {
            tile_coords<1>(tile, p, q.m0, q.nt);
        }
        q.half = c / (BN / EPI_COLS);
        q.cc = c % (BN / EPI_COLS);
        q.gm0 = q.m0 + 64 * q.half;
        q.n0c = q.nt * BN + q.cc * EPI_COLS;
        q.live = q.valid && q.gm0 < p.m && q.n0c < p.n;
        return q;
    };
    // X is loaded a chunk ahead: the next chunk's loads are issued once this chunk's GELU is done
    // with its X (their latency then hides under MVUE); loaded just before each chunk, its
    // first use was the epilogue's top stall (ncu, docs/bench/notes.md).
    uint32_t xv[16];
    Place cur = place(e, nullptr);
    if (cur.live) gelu_load_x(p, cur.gm0, cur.n0c, tid, xv);
    for (int g = e; cur.valid; g += NE) {
        const Place nxt = place(g + NE, &cur);
        const auto load_next = [&] {
            if (nxt.live) gelu_load_x(p, nxt.gm0, nxt.n0c, tid, xv);
        };
        const int b = cur.h & 1;
        mbar_wait(&hand[b], (cur.h >> 1) & 1);
        const uint16_t* buf = reinterpret_cast<const uint16_t*>(hand_bufs + b * HAND_BYTES) + 64 * cur.half * HAND_PITCH + cur.cc * EPI_COLS;
        if (cur.live) gelu_mvue_chunk(p, HandoffBf16{smem_u32(buf)}, cur.gm0, cur.n0c, tid, xv, load_next);
        else load_next();
        mbar_arrive(&hand[2 + b]);  // after this thread's reads of the buffer
        cur = nxt;
    }
}

#endif  // TWOFOUR_SM90A

template <int BN, int STAGES, int B_MN, int CM, int PP = 0, int FUSE = 0>
__device__ __forceinline__ void gemm(const Params& p, const TensorMap* ta, const TensorMap* tb, const TensorMap* te,
                                     const TensorMap* td) {
    static_assert(PP == 0 || (CM == 1 && BN == 128), "ping-pong: single CTAs, 128 x 128 tiles (128 accumulators a thread)");
    static_assert(CM == 1 || CM == 2, "clusters of 1 or 2 CTAs along M");
    static_assert(FUSE == 0 || B_MN == 0, "the fused GELU backward is fc2's dX GEMM: K-major B");
    static_assert(CM == 1 || (BN / 2) % 8 == 0, "each CTA's half of a K-major B stage must be whole 1024-byte swizzle atoms");
    static_assert(FUSE < 2 || (FUSE == 2 && CM == 1 && PP == 0 && BN == 128), "epilogue warpgroups: two, single CTAs, cooperative 128 x 128 tiles");
#ifdef TWOFOUR_SM90A
    constexpr int EW = FUSE >= 2;
    using S = Smem<BN, STAGES, EW>;
    extern __shared__ uint8_t smem_raw[];
    // 128B-swizzled TMA destinations need 1024-byte alignment.
    uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
    uint64_t* full = reinterpret_cast<uint64_t*>(smem + S::BAR_OFF);
    uint64_t* empty = full + STAGES;
    const int wg = threadIdx.x / 128;
    if (threadIdx.x == 0) {
        for (int i = 0; i < STAGES; ++i) {
            mbar_init(&full[i], 1);
            // Lane 0 of each consumer warp that reads the stage: 8 a CTA (4 in ping-pong, where
            // one warpgroup owns a stage), times the CTAs of the cluster that multicast into it.
            mbar_init(&empty[i], (PP ? 4 : 8) * CM);
        }
        // FUSE >= 2: hand_full[2] (every consumer thread arrives), hand_empty[2] (every epilogue
        // thread, once for each of the tile's chunks it ran).
        for (int i = 0; EW && i < 4; ++i) mbar_init(&empty[STAGES + i], i < 2 ? 256 : 128 * 2 * (BN / EPI_COLS));
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    // The peer multicasts into this CTA's stages and arrives on its barriers: both must exist first.
    if (CM > 1) cluster_sync();
    else __syncthreads();
    const int rank = CM > 1 ? (int)cluster_ctarank() : 0;
    if (EW) {
        // Warpgroups 0, 1: consumers; 2, 3: epilogue; the last warp: producer (threads_of). The
        // setmaxnreg to the count every thread already has changes nothing but ptxas's view:
        // without a warpgroup-aligned instruction on the way in, the consumers' main-loop
        // mbarrier waits went to vector registers (scripts/sass.sh; docs/bench/notes.md).
        if (wg < 2) {
            asm volatile("setmaxnreg.inc.sync.aligned.u32 96;");
            consumer<BN, STAGES, B_MN, CM, FUSE>(p, smem, full, empty, wg, td);
        } else if (wg < 2 + EPI_WGS) {
            asm volatile("setmaxnreg.inc.sync.aligned.u32 96;");
            epilogue_warps<BN>(p, smem + S::EPI_OFF, empty + STAGES, wg - 2);
        }
        else producer<BN, STAGES, B_MN, CM>(p, smem, full, empty, ta, tb, te, rank, threadIdx.x == 128 * (2 + EPI_WGS));  // the whole warp waits
    } else if (wg == 0) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
        if (threadIdx.x == 0) producer<BN, STAGES, B_MN, CM>(p, smem, full, empty, ta, tb, te, rank);
    } else {
        asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");
        if (PP) consumer_pingpong<BN, STAGES, B_MN, FUSE>(p, smem, full, empty, wg - 1, td);
        else consumer<BN, STAGES, B_MN, CM, FUSE>(p, smem, full, empty, wg - 1, td);
    }
    // Neither CTA may exit while the peer can still arrive on its barriers.
    if (CM > 1) {
        __syncwarp();
        cluster_sync();
    }
#else
    __trap();  // sm_90a only: the Rust side never launches it elsewhere; if it does, fail loudly
#endif
}

}  // namespace sm90

// One kernel; tile width, pipeline depth, B's storage order, the cluster and the fused epilogue
// are template parameters (TileConfig and the B operand on the Rust side pick the instance by
// name: _k for K-major B, _n for N-major, _c2 for clusters of two CTAs sharing B, _pp for
// ping-pong consumers, _gelu for the fused GELU backward + MVUE epilogue).
#define TWOFOUR_SPARSE_GEMM_SM90_KERNEL(NAME, ATTRS, BN, STAGES, B_MN, CM, PP, FUSE)                  \
    extern "C" __global__ void ATTRS __launch_bounds__(sm90::threads_of(FUSE), 1) NAME( \
        const __grid_constant__ sm90::TensorMap ta, const __grid_constant__ sm90::TensorMap tb,       \
        const __grid_constant__ sm90::TensorMap te, const __grid_constant__ sm90::TensorMap td,       \
        sm90::Params p) {                                                                             \
        sm90::gemm<BN, STAGES, B_MN, CM, PP, FUSE>(p, &ta, &tb, &te, &td);                            \
    }
// The cluster shape is compiled in (so a plain launch runs clusters); only for the sm_90a image,
// the other images' copies of these kernels trap and are never launched.
#ifdef TWOFOUR_SM90A
#define TWOFOUR_CLUSTER_2X1 __cluster_dims__(2, 1, 1)
#else
#define TWOFOUR_CLUSTER_2X1
#endif
#define TWOFOUR_SPARSE_GEMM_SM90(BN, STAGES, B_MN, SUFFIX, FUSE) \
    TWOFOUR_SPARSE_GEMM_SM90_KERNEL(sparse_gemm_sm90_bn##BN##_s##STAGES##_##SUFFIX, , BN, STAGES, B_MN, 1, 0, FUSE)
#define TWOFOUR_SPARSE_GEMM_SM90_PP(BN, STAGES, B_MN, SUFFIX, FUSE) \
    TWOFOUR_SPARSE_GEMM_SM90_KERNEL(sparse_gemm_sm90_bn##BN##_s##STAGES##_pp_##SUFFIX, , BN, STAGES, B_MN, 1, 1, FUSE)
#define TWOFOUR_SPARSE_GEMM_SM90_C2(BN, STAGES, B_MN, SUFFIX, FUSE) \
    TWOFOUR_SPARSE_GEMM_SM90_KERNEL(sparse_gemm_sm90_bn##BN##_s##STAGES##_c2_##SUFFIX, TWOFOUR_CLUSTER_2X1, BN, STAGES, B_MN, 2, 0, FUSE)

TWOFOUR_SPARSE_GEMM_SM90(256, 4, 0, k, 0)
TWOFOUR_SPARSE_GEMM_SM90(256, 5, 0, k, 0)
TWOFOUR_SPARSE_GEMM_SM90(192, 5, 0, k, 0)
TWOFOUR_SPARSE_GEMM_SM90(128, 6, 0, k, 0)
TWOFOUR_SPARSE_GEMM_SM90(256, 4, 1, n, 0)
TWOFOUR_SPARSE_GEMM_SM90(256, 5, 1, n, 0)
TWOFOUR_SPARSE_GEMM_SM90(192, 5, 1, n, 0)
TWOFOUR_SPARSE_GEMM_SM90(128, 6, 1, n, 0)
TWOFOUR_SPARSE_GEMM_SM90_PP(128, 7, 0, k, 0)
TWOFOUR_SPARSE_GEMM_SM90_PP(128, 7, 1, n, 0)
TWOFOUR_SPARSE_GEMM_SM90_C2(256, 4, 0, k, 0)
TWOFOUR_SPARSE_GEMM_SM90_C2(256, 5, 0, k, 0)
TWOFOUR_SPARSE_GEMM_SM90_C2(192, 5, 0, k, 0)
TWOFOUR_SPARSE_GEMM_SM90_C2(256, 4, 1, n, 0)
TWOFOUR_SPARSE_GEMM_SM90_C2(256, 5, 1, n, 0)
TWOFOUR_SPARSE_GEMM_SM90_C2(192, 5, 1, n, 0)
// The fused GELU backward: the K-major instances but the 256-wide ones, whose 128 accumulators a
// thread left MVUE's epilogue 40 registers: 2.2x slower than the 192-wide tiles on the H100
// (docs/bench/kernels-h100.md). The host maps a 256-wide config to the 192-wide instance.
TWOFOUR_SPARSE_GEMM_SM90(192, 5, 0, k_gelu, 1)
TWOFOUR_SPARSE_GEMM_SM90(128, 6, 0, k_gelu, 1)
TWOFOUR_SPARSE_GEMM_SM90_PP(128, 7, 0, k_gelu, 1)
TWOFOUR_SPARSE_GEMM_SM90_C2(192, 5, 0, k_gelu, 1)
// The fused epilogue in two epilogue warpgroups of their own (FUSE 2, 544 threads, 128 x 128
// tiles): `sparse_gemm_gelu_backward` with FusedEpilogue::EpilogueWarpgroups.
TWOFOUR_SPARSE_GEMM_SM90_KERNEL(sparse_gemm_sm90_bn128_s6_ew_k_gelu, , 128, 6, 0, 1, 0, 2)
