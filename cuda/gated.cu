// Gated activations of a gated MLP, forward and backward: y = act(gate) * up, SwiGLU (act = SiLU)
// and GEGLU (act = GELU, tanh form), reading the fc1 output H in whichever layout the GEMM wrote:
//   token-major:   H is tokens x 2F row-major, up = H[:, :F], gate = H[:, F:]; y is tokens x F.
//   feature-major: H is 2F x tokens row-major (H^T), up = rows 0..F, gate = rows F..2F; y is F x T.
// Either way every thread walks 8 consecutive elements of the contiguous axis with 16-byte loads
// and stores, and each byte is read or written once (the paper's L2 point: never stride across
// the transposed output). f32 math (SiLU's exp and reciprocal approximate: see act); reference:
// reference::gated.
#include "common.cuh"
#include "mvue24.cuh"
#include "activation.cuh"

using namespace twofour;

namespace gated {

// Offsets of element i (in y's layout) in H: up and gate.
__device__ __forceinline__ void offsets(long long i, int F, long long T, int feature_major, long long& up, long long& gate) {
    if (feature_major) {
        up = i;
        gate = (long long)F * T + i;
    } else {
        const long long t = i / F, f = i % F;
        up = t * 2 * F + f;
        gate = up + F;
    }
}

}  // namespace gated

extern "C" __global__ void gated_forward(const uint16_t* __restrict__ h, uint16_t* __restrict__ y, long long tokens, int F,
                                         int feature_major, int kind) {
    const long long n = tokens * F;
    for (long long i = 8 * ((long long)blockIdx.x * blockDim.x + threadIdx.x); i < n; i += 8LL * gridDim.x * blockDim.x) {
        long long up, gate;
        gated::offsets(i, F, tokens, feature_major, up, gate);
        uint16_t u[8], g[8], o[8];
        *reinterpret_cast<uint4*>(u) = *reinterpret_cast<const uint4*>(h + up);
        *reinterpret_cast<uint4*>(g) = *reinterpret_cast<const uint4*>(h + gate);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            float a, da;
            gated::act(kind, bf16_to_f32(g[j]), a, da);
            o[j] = f32_to_bf16(a * bf16_to_f32(u[j]));
        }
        *reinterpret_cast<uint4*>(y + i) = *reinterpret_cast<uint4*>(o);
    }
}

extern "C" __global__ void gated_backward(const uint16_t* __restrict__ h, const uint16_t* __restrict__ dy,
                                          uint16_t* __restrict__ dh, long long tokens, int F, int feature_major, int kind) {
    const long long n = tokens * F;
    for (long long i = 8 * ((long long)blockIdx.x * blockDim.x + threadIdx.x); i < n; i += 8LL * gridDim.x * blockDim.x) {
        long long up, gate;
        gated::offsets(i, F, tokens, feature_major, up, gate);
        uint16_t u[8], g[8], d[8], du[8], dg[8];
        *reinterpret_cast<uint4*>(u) = *reinterpret_cast<const uint4*>(h + up);
        *reinterpret_cast<uint4*>(g) = *reinterpret_cast<const uint4*>(h + gate);
        *reinterpret_cast<uint4*>(d) = *reinterpret_cast<const uint4*>(dy + i);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            float a, da;
            gated::act(kind, bf16_to_f32(g[j]), a, da);
            const float dyj = bf16_to_f32(d[j]);
            du[j] = f32_to_bf16(dyj * a);
            dg[j] = f32_to_bf16(dyj * bf16_to_f32(u[j]) * da);
        }
        *reinterpret_cast<uint4*>(dh + up) = *reinterpret_cast<uint4*>(du);
        *reinterpret_cast<uint4*>(dh + gate) = *reinterpret_cast<uint4*>(dg);
    }
}

// gated_backward (token-major H) fused with MVUE 2:4 of its output: dH is written as
// gated_backward writes it, and S(dH^T) (2F x tokens, 2:4 along tokens, the A operand of fc1's
// dW GEMM) comes out of the same pass instead of a second read of dH by mvue24_compress. Bit for
// bit the same as gated_backward followed by mvue24_compress(dH) with the same (seed, step).
// One warp per 32 features x 64 tokens of y, in mvue24.cuh's lane layout: each lane computes the
// up and gate gradients of its 4 features x 16 tokens in registers (8-byte stores, a quarter-warp
// covering one token's 64 contiguous bytes) and sparsifies them where they are: rows
// f and F + f of dH^T. H and dY come in by cp.async one tile ahead (mvue::stage_async), so a
// warp's next loads fly during its arithmetic. F and tokens multiples of 32 (checked by the host).
// KIND is a template parameter (the kernel dispatches on it once): each instance's loop then holds
// one activation's code, half the size.
template <int KIND>
__device__ __forceinline__ void gated_backward_mvue_run(const uint16_t* __restrict__ h, const uint16_t* __restrict__ dy, uint16_t* __restrict__ dh,
                                                        int tokens, int F, unsigned long long seed, unsigned int step,
                                                        uint16_t* __restrict__ vals, uint32_t* __restrict__ meta, uint32_t* __restrict__ mask,
                                                        uint8_t (*stage)[mvue::STAGE_BYTES]) {
    const int lane = threadIdx.x;
    const mvue::LaneTile lt = mvue::lane_tile(lane);
    const uint2 key = make_uint2((uint32_t)seed, (uint32_t)(seed >> 32));
    const int tiles_f = F / 32;
    const int total = ((tokens + 63) / 64) * tiles_f, stride = gridDim.x;  // 32-bit: see mvue24.cu
    auto issue = [&](int tile) {  // the tile's up, gate and dy slices, one commit group (none past the end)
        if (tile < total) {
            const int tt = 64 * (tile / tiles_f);
            const long long c = 32 * (tile % tiles_f);
            mvue::stage_async(stage[0], h, 2LL * F, tt, tokens, c, lane);
            mvue::stage_async(stage[1], h, 2LL * F, tt, tokens, F + c, lane);
            mvue::stage_async(stage[2], dy, F, tt, tokens, c, lane);
        }
        sm80ptx::cp_async_commit();
    };
    mvue::staged_tiles(blockIdx.x, stride, total, issue, [&](int id, auto release) {
        const int tile_tok = 64 * (id / tiles_f);
        const long long f0 = 32 * (id % tiles_f) + lt.c0;  // the lane's first feature of y
        const int tok0 = tile_tok + lt.tok;
        const bool live = tok0 < tokens;
        // The backward from the staged slice (dH stored as it goes), then the next tile's copies,
        // then MVUE, the longer part, while they fly. (Reading the whole slice into registers
        // first, to issue the copies earlier, spilled.)
        uint32_t xu[16][2], xg[16][2];  // dH's up and gate gradients, packed pairs
#pragma unroll
        for (int r = 0; r < 16; ++r) {
            const long long t = tok0 + r;
            const long long up = t * 2 * F + f0, gate = up + F;
            const uint2 u = mvue::staged(stage[0], lt.tok + r, lt.c0), g = mvue::staged(stage[1], lt.tok + r, lt.c0),
                        d = mvue::staged(stage[2], lt.tok + r, lt.c0);
            uint32_t du[2], dg[2];
#pragma unroll
            for (int p = 0; p < 2; ++p) {
                const uint32_t uw = p ? u.y : u.x, gw = p ? g.y : g.x, dw = p ? d.y : d.x;
                uint32_t dup = 0, dgp = 0;
#pragma unroll
                for (int j = 0; j < 2; ++j) {  // gated_backward's arithmetic, element for element
                    float a, da;
                    gated::act(KIND, mvue::half_f32(gw, j), a, da);
                    const float dyj = mvue::half_f32(dw, j);
                    dup |= (uint32_t)f32_to_bf16(dyj * a) << (16 * j);
                    dgp |= (uint32_t)f32_to_bf16(dyj * mvue::half_f32(uw, j) * da) << (16 * j);
                }
                du[p] = dup;
                dg[p] = dgp;
            }
            if (live) {
                // As 64-bit words: stored as a uint2, NVVM split each into two 32-bit stores.
                *reinterpret_cast<unsigned long long*>(dh + up) = du[0] | (unsigned long long)du[1] << 32;
                *reinterpret_cast<unsigned long long*>(dh + gate) = dg[0] | (unsigned long long)dg[1] << 32;
            }
            xu[r][0] = du[0];
            xu[r][1] = du[1];
            xg[r][0] = dg[0];
            xg[r][1] = dg[1];
        }
        release();
        // dH^T's rows: up gradients are rows f, gate gradients rows F + f (a rolled loop: one copy
        // of the MVUE code, the part's words picked by selects in lane_rows).
#pragma unroll 1
        for (int part = 0; part < 2; ++part) {
            const long long row0 = (part ? F : 0) + f0;
            uint32_t nib[2], kept[2];
            mvue::lane_rows<true>([&](int r, int p) { return part ? (p ? xg[r][1] : xg[r][0]) : (p ? xu[r][1] : xu[r][0]); }, row0, tok0, tokens, key, step, live, vals, nib, kept);
            mvue::write_words(nib, kept, lane, row0 - lt.c0, tile_tok, tokens, live, meta, mask);
        }
    });
}

// One warp a block, each with its 12 KB staging buffer: its ~165 registers allow 12 warps an SM
// (10 guaranteed by the bounds); 4-warp blocks under the same bound spilled or, given 2 blocks an
// SM, got only 8.
extern "C" __global__ void __launch_bounds__(32, 10) gated_backward_mvue(const uint16_t* __restrict__ h, const uint16_t* __restrict__ dy, uint16_t* __restrict__ dh,
                                                                      int tokens, int F, int kind, unsigned long long seed, unsigned int step,
                                                                      uint16_t* __restrict__ vals, uint32_t* __restrict__ meta, uint32_t* __restrict__ mask) {
    __shared__ __align__(128) uint8_t stage[3][mvue::STAGE_BYTES];  // up, gate, dy
    if (kind == 0) gated_backward_mvue_run<0>(h, dy, dh, tokens, F, seed, step, vals, meta, mask, stage);
    else gated_backward_mvue_run<1>(h, dy, dh, tokens, F, seed, step, vals, meta, mask, stage);
}

// GELU (tanh form) backward of a non-gated MLP (GPT-2's fc1 -> GELU -> fc2), fused with MVUE 2:4
// of its output: dY = gelu'(X) * dA, where X is fc1's output (tokens x F, row-major) and dA the
// gradient of the GELU's output (fc2's dX), written as gelu_backward writes it, and S(dY^T)
// (F x tokens, 2:4 along tokens: the A operand of fc1's dW GEMM) from the same pass. Bit for bit
// gelu_backward followed by mvue24_compress(dY) with the same (seed, step). The layout and pipeline
// of mvue24.cu (one warp per 32 features x 64 tokens, each lane 4 features x 16 tokens in
// registers, both inputs staged by cp.async one tile ahead) with two input streams instead of one
// and one MVUE part (gated_backward_mvue has two, and 3 streams: it ran at 150 registers).
template <int WARPS, bool ROLLED>
__device__ __forceinline__ void gelu_backward_mvue_run(const uint16_t* __restrict__ x, const uint16_t* __restrict__ da, uint16_t* __restrict__ dy,
                                                       int tokens, int F, unsigned long long seed, unsigned int step,
                                                       uint16_t* __restrict__ vals, uint32_t* __restrict__ meta, uint32_t* __restrict__ mask) {
    __shared__ __align__(128) uint8_t stage[WARPS][2][mvue::STAGE_BYTES];  // X, dA
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const mvue::LaneTile lt = mvue::lane_tile(lane);
    const uint2 key = make_uint2((uint32_t)seed, (uint32_t)(seed >> 32));
    const int tiles_f = F / 32;
    const int total = ((tokens + 63) / 64) * tiles_f, stride = gridDim.x * WARPS;  // 32-bit: see mvue24.cu
    uint8_t(*buf)[mvue::STAGE_BYTES] = stage[warp];
    auto issue = [&](int tile) {  // the tile's X and dA slices, one commit group (none past the end)
        if (tile < total) {
            const int tt = 64 * (tile / tiles_f);
            const long long c = 32 * (tile % tiles_f);
            mvue::stage_async(buf[0], x, F, tt, tokens, c, lane);
            mvue::stage_async(buf[1], da, F, tt, tokens, c, lane);
        }
        sm80ptx::cp_async_commit();
    };
    mvue::staged_tiles(blockIdx.x * WARPS + warp, stride, total, issue, [&](int id, auto release) {
        const int tile_tok = 64 * (id / tiles_f);
        const long long f0 = 32 * (id % tiles_f) + lt.c0;  // the lane's first feature
        const int tok0 = tile_tok + lt.tok;
        const bool live = tok0 < tokens;
        uint32_t w[16][2];  // dY, packed pairs: 4 features x 16 tokens
#pragma unroll
        for (int r = 0; r < 16; ++r) {
            const uint2 xv = mvue::staged(buf[0], lt.tok + r, lt.c0), dv = mvue::staged(buf[1], lt.tok + r, lt.c0);
#pragma unroll
            for (int p = 0; p < 2; ++p) {
                w[r][p] = gated::gelu_backward_pair(p ? xv.y : xv.x, p ? dv.y : dv.x);  // gelu_backward's arithmetic
            }
            if (live) *reinterpret_cast<unsigned long long*>(dy + (long long)(tok0 + r) * F + f0) = w[r][0] | (unsigned long long)w[r][1] << 32;
        }
        release();
        uint32_t nib[2], kept[2];
        mvue::lane_rows<ROLLED>([&](int r, int p) { return p ? w[r][1] : w[r][0]; }, f0, tok0, tokens, key, step, live, vals, nib, kept);
        mvue::write_words(nib, kept, lane, f0 - lt.c0, tile_tok, tokens, live, meta, mask);
    });
}

// Two register budgets (which runs faster is measured, docs/bench/kernels-h100.md): MVUE's pair
// loop unrolled at 126 registers (16 warps an SM; 20 spilled), or rolled at <= 85 (24 warps).
#define TWOFOUR_GELU_MVUE(NAME, WARPS, ROLLED, SM_WARPS)                                                              \
    extern "C" __global__ void __launch_bounds__(32 * WARPS, SM_WARPS / WARPS) NAME(                                 \
        const uint16_t* __restrict__ x, const uint16_t* __restrict__ da, uint16_t* __restrict__ dy, int tokens, int F, \
        unsigned long long seed, unsigned int step, uint16_t* __restrict__ vals, uint32_t* __restrict__ meta,        \
        uint32_t* __restrict__ mask) {                                                                                \
        gelu_backward_mvue_run<WARPS, ROLLED>(x, da, dy, tokens, F, seed, step, vals, meta, mask);                    \
    }
TWOFOUR_GELU_MVUE(gelu_backward_mvue_w4, 4, false, 16)
TWOFOUR_GELU_MVUE(gelu_backward_mvue_rolled_w4, 4, true, 24)

// dY = gelu'(X) * dA (tokens x F, any contiguous layout: elementwise), 8 elements a thread with
// 16-byte loads, grid-stride: the plain GELU backward that gelu_backward_mvue fuses MVUE into (the
// trainer's gpt_gelu_backward computes tanh with tanhf: the two differ by bf16 roundings).
extern "C" __global__ void gelu_backward(const uint16_t* __restrict__ x, const uint16_t* __restrict__ da, uint16_t* __restrict__ dy, long long n) {
    for (long long i = 8 * ((long long)blockIdx.x * blockDim.x + threadIdx.x); i < n; i += 8LL * gridDim.x * blockDim.x) {
        const uint4 xv = *reinterpret_cast<const uint4*>(x + i), dv = *reinterpret_cast<const uint4*>(da + i);
        *reinterpret_cast<uint4*>(dy + i) = make_uint4(gated::gelu_backward_pair(xv.x, dv.x), gated::gelu_backward_pair(xv.y, dv.y),
                                                       gated::gelu_backward_pair(xv.z, dv.z), gated::gelu_backward_pair(xv.w, dv.w));
    }
}
