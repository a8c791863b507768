// Fused softmax + cross-entropy of the GPT trainer's head (llm.c's fused_classifier): one block
// per row of logits (N x V, row stride Vp >= V, bf16), the loss of the row in f32 and, in place of
// the logits, d loss / d logits = (softmax - onehot(target)) * dscale, with the padding columns
// V..Vp zeroed. Online max + sum (Milakov & Gimelshein 2018), f32 math.
// Reference: trainer/src/reference.rs (forward: probs and loss; backward: dlogits).
#include "common.cuh"

namespace gptloss {

// (max, sum of exp(x - max)) pairs, merged.
__device__ __forceinline__ void merge(float& m, float& s, float m2, float s2) {
    const float mn = fmaxf(m, m2);
    if (mn == -INFINITY) return;
    s = s * __expf(m - mn) + s2 * __expf(m2 - mn);
    m = mn;
}

}  // namespace gptloss

// Block of 512 threads per row, 16-byte accesses (Vp % 8 == 0). write_grad = 0 leaves the logits
// untouched (validation).
extern "C" __global__ void __launch_bounds__(512) gpt_softmax_cross_entropy(__nv_bfloat16* logits, float* __restrict__ losses, const int* __restrict__ targets, int V, int Vp, float dscale, int write_grad) {
    __shared__ float s_m[16], s_s[16];
    const long long row = blockIdx.x;
    __nv_bfloat16* x = logits + row * Vp;
    float m = -INFINITY, s = 0.f;
    for (int j = threadIdx.x * 8; j < V; j += blockDim.x * 8) {
        const uint4 v = *reinterpret_cast<const uint4*>(x + j);
        const uint32_t* w = reinterpret_cast<const uint32_t*>(&v);
        float f[8], mx = -INFINITY;
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            f[e] = j + e < V ? __uint_as_float(e & 1 ? w[e / 2] & 0xffff0000u : w[e / 2] << 16) : -INFINITY;
            mx = fmaxf(mx, f[e]);
        }
        const float mn = fmaxf(m, mx);
        float add = 0.f;
#pragma unroll
        for (int e = 0; e < 8; ++e) add += __expf(f[e] - mn);
        s = s * __expf(m - mn) + add;
        m = mn;
    }
    for (int o = 16; o > 0; o /= 2) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        gptloss::merge(m, s, m2, s2);
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) {
        s_m[warp] = m;
        s_s[warp] = s;
    }
    __syncthreads();
    m = s_m[0];
    s = s_s[0];
    for (int w = 1; w < (int)blockDim.x / 32; ++w) gptloss::merge(m, s, s_m[w], s_s[w]);
    const int target = targets[row];
    const float lse = m + __logf(s);
    if (threadIdx.x == 0) losses[row] = lse - __bfloat162float(x[target]);
    if (!write_grad) return;
    __syncthreads();  // every thread has read x[target] before it may be overwritten
    for (int j = threadIdx.x * 8; j < Vp; j += blockDim.x * 8) {
        uint4 v = *reinterpret_cast<const uint4*>(x + j);
        uint32_t* w = reinterpret_cast<uint32_t*>(&v);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            float d[2];
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int jj = j + 2 * e + h;
                const float f = __uint_as_float(h ? w[e] & 0xffff0000u : w[e] << 16);
                d[h] = jj < V ? (__expf(f - lse) - (jj == target ? 1.f : 0.f)) * dscale : 0.f;
            }
            w[e] = (uint32_t)twofour::f32_to_bf16(d[0]) | ((uint32_t)twofour::f32_to_bf16(d[1]) << 16);
        }
        *reinterpret_cast<uint4*>(x + j) = v;
    }
}
