// Gated activations of a gated MLP, forward and backward: y = act(gate) * up, SwiGLU (act = SiLU)
// and GEGLU (act = GELU, tanh form), reading the fc1 output H in whichever layout the GEMM wrote:
//   token-major:   H is tokens x 2F row-major, up = H[:, :F], gate = H[:, F:]; y is tokens x F.
//   feature-major: H is 2F x tokens row-major (H^T), up = rows 0..F, gate = rows F..2F; y is F x T.
// Either way every thread walks 8 consecutive elements of the contiguous axis with 16-byte loads
// and stores, and each byte is read or written once (the paper's L2 point: never stride across
// the transposed output). f32 math; reference: reference::gated.
#include "common.cuh"
#include "mvue24.cuh"

using namespace twofour;

namespace gated {

__device__ __forceinline__ void act(int kind, float x, float& a, float& da) {
    if (kind == 0) {  // SiLU
        const float s = 1.f / (1.f + expf(-x));
        a = x * s;
        da = s * (1.f + x * (1.f - s));
    } else {  // GELU, tanh approximation
        const float c = 0.7978845608028654f, k = 0.044715f;
        const float th = tanhf(c * (x + k * x * x * x));
        a = 0.5f * x * (1.f + th);
        da = 0.5f * (1.f + th) + 0.5f * x * (1.f - th * th) * c * (1.f + 3.f * k * x * x);
    }
}

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
// One warp per 32 tokens x 32 features of y; the up and gate gradients of those 32 features go
// through shared memory as two 32 x 32 tiles of dH (columns f and F + f) and are sparsified by
// mvue::run_tile. Loads and stores: a quarter-warp covers one token's 64 contiguous bytes, so each
// 16-byte access of the warp touches 8 rows (an access per lane per row made it 5x slower).
// F and tokens multiples of 32 (checked by the host).
template <int WARPS>
__device__ __forceinline__ void gated_backward_mvue_run(const uint16_t* __restrict__ h, const uint16_t* __restrict__ dy, uint16_t* __restrict__ dh,
                                                        int tokens, int F, int kind, unsigned long long seed, unsigned int step,
                                                        uint16_t* __restrict__ vals, uint32_t* __restrict__ meta, uint32_t* __restrict__ mask) {
    __shared__ __align__(16) uint16_t tiles[WARPS][2][32][mvue::PITCH];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int tiles_f = F / 32;
    const int c = (lane & 3) * 8;  // this lane's 8 features of a row
    const long long total = (long long)(tokens / 32) * tiles_f;
    for (long long id = (long long)blockIdx.x * WARPS + warp; id < total; id += (long long)gridDim.x * WARPS) {
        const int ti = (int)(id / tiles_f), tj = (int)(id % tiles_f);
#pragma unroll
        for (int it = 0; it < 4; ++it) {
            const int r = it * 8 + (lane >> 2);  // token within the tile
            const long long t = 32LL * ti + r;
            const long long up = t * 2 * F + 32 * tj + c, gate = up + F;
            uint16_t u[8], g[8], d[8], du[8], dg[8];
            *reinterpret_cast<uint4*>(u) = *reinterpret_cast<const uint4*>(h + up);
            *reinterpret_cast<uint4*>(g) = *reinterpret_cast<const uint4*>(h + gate);
            *reinterpret_cast<uint4*>(d) = *reinterpret_cast<const uint4*>(dy + t * F + 32 * tj + c);
#pragma unroll
            for (int j = 0; j < 8; ++j) {  // gated_backward's arithmetic, element for element
                float a, da;
                gated::act(kind, bf16_to_f32(g[j]), a, da);
                const float dyj = bf16_to_f32(d[j]);
                du[j] = f32_to_bf16(dyj * a);
                dg[j] = f32_to_bf16(dyj * bf16_to_f32(u[j]) * da);
            }
            *reinterpret_cast<uint4*>(dh + up) = *reinterpret_cast<uint4*>(du);
            *reinterpret_cast<uint4*>(dh + gate) = *reinterpret_cast<uint4*>(dg);
            *reinterpret_cast<uint4*>(&tiles[warp][0][r][c]) = *reinterpret_cast<uint4*>(du);
            *reinterpret_cast<uint4*>(&tiles[warp][1][r][c]) = *reinterpret_cast<uint4*>(dg);
        }
        __syncwarp();
        // dH has 2F columns: the up tile is column tile tj, the gate tile F/32 + tj.
        const int cols = 2 * F, tiles_c = cols / 32;
        mvue::run_tile((long long)ti * tiles_c + tj, tiles[warp][0], lane, tokens, cols, seed, step, vals, meta, mask);
        mvue::run_tile((long long)ti * tiles_c + tiles_f + tj, tiles[warp][1], lane, tokens, cols, seed, step, vals, meta, mask);
        __syncwarp();
    }
}

extern "C" __global__ void __launch_bounds__(128) gated_backward_mvue(const uint16_t* __restrict__ h, const uint16_t* __restrict__ dy, uint16_t* __restrict__ dh,
                                                                      int tokens, int F, int kind, unsigned long long seed, unsigned int step,
                                                                      uint16_t* __restrict__ vals, uint32_t* __restrict__ meta, uint32_t* __restrict__ mask) {
    gated_backward_mvue_run<4>(h, dy, dh, tokens, F, kind, seed, step, vals, meta, mask);
}
