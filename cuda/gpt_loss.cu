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

// Block of 512 threads per row. write_grad = 0 leaves the logits untouched (validation).
extern "C" __global__ void __launch_bounds__(512) gpt_softmax_cross_entropy(__nv_bfloat16* logits, float* __restrict__ losses, const int* __restrict__ targets, int V, int Vp, float dscale, int write_grad) {
    __shared__ float s_m[16], s_s[16];
    const long long row = blockIdx.x;
    __nv_bfloat16* x = logits + row * Vp;
    float m = -INFINITY, s = 0.f;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        const float v = __bfloat162float(x[j]);
        if (v > m) {
            s = s * __expf(m - v) + 1.f;
            m = v;
        } else {
            s += __expf(v - m);
        }
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
    for (int j = threadIdx.x; j < Vp; j += blockDim.x) {
        float d = 0.f;
        if (j < V) d = (__expf(__bfloat162float(x[j]) - lse) - (j == target ? 1.f : 0.f)) * dscale;
        x[j] = __float2bfloat16_rn(d);
    }
}
