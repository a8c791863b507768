// LayerNorm of the GPT trainer (eps 1e-5), alone and fused with the residual add that precedes it
// (llm.c's fused_residual_forward). One warp per row, 16-byte accesses (C % 8 == 0, C <= 2048), each row read once and held in
// registers, f32 math;
// mean and 1/std are kept for the backward pass. The weight gradients are column sums over rows:
// gpt_colsum_partial (gpt_elementwise.cu) computes them in a fixed order, so they are reproducible.
// Reference: trainer/src/reference.rs (layernorm_forward / layernorm_backward).
#include "common.cuh"

namespace gptln {

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ void unpack8(uint4 v, float f[8]) {
    const uint32_t* w = reinterpret_cast<const uint32_t*>(&v);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        f[2 * i] = __uint_as_float(w[i] << 16);
        f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
}

__device__ __forceinline__ uint4 pack8(const float f[8]) {
    uint4 v;
    uint32_t* w = reinterpret_cast<uint32_t*>(&v);
#pragma unroll
    for (int i = 0; i < 4; ++i) w[i] = (uint32_t)twofour::f32_to_bf16(f[2 * i]) | ((uint32_t)twofour::f32_to_bf16(f[2 * i + 1]) << 16);
    return v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// The row is held in registers between the passes: lane-chunk k covers columns lane*8 + 256k,
// up to MAXK chunks (C <= 2048, checked by the host).
constexpr int MAXK = 8;

// Normalizes a row held in registers (f[k][e] = column lane*8 + 256k + e) into out.
__device__ __forceinline__ void normalize_cached(bf16* out, float* mean, float* rstd, float f[MAXK][8], const float* w, const float* b, int C, long long row) {
    const int lane = threadIdx.x % 32;
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < MAXK; ++k)
        if (lane * 8 + 256 * k < C)
#pragma unroll
            for (int e = 0; e < 8; ++e) s += f[k][e];
    const float m = warp_sum(s) / C;
    float v = 0.f;
#pragma unroll
    for (int k = 0; k < MAXK; ++k)
        if (lane * 8 + 256 * k < C)
#pragma unroll
            for (int e = 0; e < 8; ++e) v += (f[k][e] - m) * (f[k][e] - m);
    const float rs = rsqrtf(warp_sum(v) / C + 1e-5f);
#pragma unroll
    for (int k = 0; k < MAXK; ++k) {
        const int c = lane * 8 + 256 * k;
        if (c < C) {
            float o[8];
#pragma unroll
            for (int e = 0; e < 8; ++e) o[e] = (f[k][e] - m) * rs * w[c + e] + b[c + e];
            *reinterpret_cast<uint4*>(out + c) = pack8(o);
        }
    }
    if (lane == 0) {
        mean[row] = m;
        rstd[row] = rs;
    }
}

}  // namespace gptln

using namespace gptln;

// out = LN(inp) per row of C. Grid: ceil(N / 8) blocks of 256 threads (a warp per row).
extern "C" __global__ void __launch_bounds__(256) gpt_layernorm_forward(bf16* __restrict__ out, float* __restrict__ mean, float* __restrict__ rstd, const bf16* __restrict__ inp, const float* __restrict__ w, const float* __restrict__ b, int N, int C) {
    const long long row = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    if (row >= N) return;
    const int lane = threadIdx.x % 32;
    float f[MAXK][8];
#pragma unroll
    for (int k = 0; k < MAXK; ++k)
        if (lane * 8 + 256 * k < C) unpack8(*reinterpret_cast<const uint4*>(inp + row * C + lane * 8 + 256 * k), f[k]);
    normalize_cached(out + row * C, mean, rstd, f, w, b, C, row);
}

// res = a + b (rounded to bf16 and stored: it is the next block's residual), out = LN(res).
extern "C" __global__ void __launch_bounds__(256) gpt_residual_layernorm_forward(bf16* __restrict__ res, bf16* __restrict__ out, float* __restrict__ mean, float* __restrict__ rstd, const bf16* __restrict__ a, const bf16* __restrict__ b, const float* __restrict__ w, const float* __restrict__ bias, int N, int C) {
    const long long row = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    if (row >= N) return;
    const int lane = threadIdx.x % 32;
    float f[MAXK][8];
#pragma unroll
    for (int k = 0; k < MAXK; ++k) {
        const int c = lane * 8 + 256 * k;
        if (c < C) {
            float fb[8];
            unpack8(*reinterpret_cast<const uint4*>(a + row * C + c), f[k]);
            unpack8(*reinterpret_cast<const uint4*>(b + row * C + c), fb);
#pragma unroll
            for (int i = 0; i < 8; ++i) f[k][i] += fb[i];
            const uint4 r = pack8(f[k]);
            *reinterpret_cast<uint4*>(res + row * C + c) = r;
            unpack8(r, f[k]);  // normalize the stored (bf16-rounded) residual, as the next layer sees it
        }
    }
    normalize_cached(out + row * C, mean, rstd, f, w, bias, C, row);
}

// dinp += LN backward of dout (the input gradient only; see the file comment for dw, db).
extern "C" __global__ void __launch_bounds__(256) gpt_layernorm_backward(bf16* __restrict__ dinp, const bf16* __restrict__ dout, const bf16* __restrict__ inp, const float* __restrict__ mean, const float* __restrict__ rstd, const float* __restrict__ w, int N, int C) {
    const long long row = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    if (row >= N) return;
    const int lane = threadIdx.x % 32;
    const float m = mean[row], rs = rstd[row];
    const bf16* x = inp + row * C;
    const bf16* d = dout + row * C;
    float s1 = 0.f, s2 = 0.f;
    for (int c = lane * 8; c < C; c += 256) {
        float fx[8], fd[8];
        unpack8(*reinterpret_cast<const uint4*>(x + c), fx);
        unpack8(*reinterpret_cast<const uint4*>(d + c), fd);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const float dn = w[c + i] * fd[i];
            s1 += dn;
            s2 += dn * (fx[i] - m) * rs;
        }
    }
    s1 = warp_sum(s1) / C;
    s2 = warp_sum(s2) / C;
    for (int c = lane * 8; c < C; c += 256) {
        float fx[8], fd[8], fo[8];
        unpack8(*reinterpret_cast<const uint4*>(x + c), fx);
        unpack8(*reinterpret_cast<const uint4*>(d + c), fd);
        unpack8(*reinterpret_cast<const uint4*>(dinp + row * C + c), fo);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const float norm = (fx[i] - m) * rs;
            fo[i] += rs * (w[c + i] * fd[i] - s1 - norm * s2);
        }
        *reinterpret_cast<uint4*>(dinp + row * C + c) = pack8(fo);
    }
}

// LayerNorm backward with its weight gradients in the same pass (`fused_ln_grad`): a block of 8
// warps owns rows_per_chunk consecutive rows (a multiple of 8); warp w walks rows w, w + 8, ... in
// order, adds each row's input gradient into dinp as gpt_layernorm_backward does, and keeps the
// running sums of dout and dout * xhat for its columns in registers (K8 chunks of 8 columns a lane:
// C <= 256 K8; instances up to 1280 channels, wider models use the separate sums). The 8 warps'
// sums are then added in warp order through shared memory and written as partial[chunk][c] (db)
// and partial[chunks + chunk][c] (dw), which gpt_colsum_finalize_wide sums in a fixed order:
// reproducible, and dout and x are read once instead of twice.
template <int K8>
__device__ __forceinline__ void ln_backward_fused(bf16* __restrict__ dinp, float* __restrict__ partial, const bf16* __restrict__ dout, const bf16* __restrict__ inp, const float* __restrict__ mean, const float* __restrict__ rstd, const float* __restrict__ w, int N, int C, int rows_per_chunk) {
    __shared__ float red[8][K8 * 256];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, chunk = blockIdx.x, chunks = gridDim.x;
    float db[K8][8], dw[K8][8];
#pragma unroll
    for (int k = 0; k < K8; ++k)
#pragma unroll
        for (int e = 0; e < 8; ++e) db[k][e] = dw[k][e] = 0.f;
    const long long r_end = min((long long)N, (long long)(chunk + 1) * rows_per_chunk);
    for (long long row = (long long)chunk * rows_per_chunk + warp; row < r_end; row += 8) {
        const float m = mean[row], rs = rstd[row];
        float fx[K8][8], fd[K8][8];
        float s1 = 0.f, s2 = 0.f;
#pragma unroll
        for (int k = 0; k < K8; ++k) {
            const int c = lane * 8 + 256 * k;
            if (c < C) {
                unpack8(*reinterpret_cast<const uint4*>(inp + row * C + c), fx[k]);
                unpack8(*reinterpret_cast<const uint4*>(dout + row * C + c), fd[k]);
#pragma unroll
                for (int e = 0; e < 8; ++e) {
                    const float xhat = (fx[k][e] - m) * rs, dn = w[c + e] * fd[k][e];
                    s1 += dn;
                    s2 += dn * xhat;
                    db[k][e] += fd[k][e];
                    dw[k][e] += fd[k][e] * xhat;
                }
            }
        }
        s1 = warp_sum(s1) / C;
        s2 = warp_sum(s2) / C;
#pragma unroll
        for (int k = 0; k < K8; ++k) {
            const int c = lane * 8 + 256 * k;
            if (c < C) {
                float fo[8];
                unpack8(*reinterpret_cast<const uint4*>(dinp + row * C + c), fo);
#pragma unroll
                for (int e = 0; e < 8; ++e) fo[e] += rs * (w[c + e] * fd[k][e] - s1 - (fx[k][e] - m) * rs * s2);
                *reinterpret_cast<uint4*>(dinp + row * C + c) = pack8(fo);
            }
        }
    }
    // db then dw through the same shared buffer; warps added in order 0..7.
#pragma unroll
    for (int pass = 0; pass < 2; ++pass) {
#pragma unroll
        for (int k = 0; k < K8; ++k)
#pragma unroll
            for (int e = 0; e < 8; ++e) red[warp][lane * 8 + 256 * k + e] = pass == 0 ? db[k][e] : dw[k][e];
        __syncthreads();
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            float s = 0.f;
#pragma unroll
            for (int v = 0; v < 8; ++v) s += red[v][c];
            partial[(long long)(pass * chunks + chunk) * C + c] = s;
        }
        __syncthreads();
    }
}

#define TWOFOUR_LN_BWD_FUSED(K8)                                                                                   \
    extern "C" __global__ void __launch_bounds__(256) gpt_layernorm_backward_fused_k##K8(                            \
        bf16* __restrict__ dinp, float* __restrict__ partial, const bf16* __restrict__ dout, const bf16* __restrict__ inp, \
        const float* __restrict__ mean, const float* __restrict__ rstd, const float* __restrict__ w, int N, int C,  \
        int rows_per_chunk) {                                                                                       \
        ln_backward_fused<K8>(dinp, partial, dout, inp, mean, rstd, w, N, C, rows_per_chunk);                       \
    }
TWOFOUR_LN_BWD_FUSED(3)
TWOFOUR_LN_BWD_FUSED(4)
TWOFOUR_LN_BWD_FUSED(5)
