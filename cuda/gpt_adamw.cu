// The GPT trainer's optimizer: AdamW on f32 master weights (decoupled decay on every parameter,
// as the CPU reference), writing the bf16 copy the GEMMs read, with the gradient-clipping scale
// applied on the fly; and the squared gradient norm for clipping, reduced in a fixed order.
// Reference: trainer/src/reference.rs (AdamW::update), trainer/src/schedule.rs (clip_grad_norm).
#include "common.cuh"

extern "C" __global__ void gpt_adamw(float* __restrict__ master, __nv_bfloat16* __restrict__ shadow, float* __restrict__ m, float* __restrict__ v, const float* __restrict__ grad, long long n, float lr, float beta1, float beta2, float eps, float weight_decay, float c1, float c2, float gscale) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g = grad[i] * gscale;
    const float mi = beta1 * m[i] + (1.f - beta1) * g;
    const float vi = beta2 * v[i] + (1.f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    const float mh = mi / c1, vh = vi / c2;
    const float p = master[i] - lr * (mh / (sqrtf(vh) + eps) + weight_decay * master[i]);
    master[i] = p;
    shadow[i] = __float2bfloat16_rn(p);
}

// partial[block] = sum of g^2 over a fixed grid-stride share (the grid size is part of the
// result's definition: launch it with the same grid every time). 256 threads a block.
extern "C" __global__ void __launch_bounds__(256) gpt_sumsq_partial(float* __restrict__ partial, const float* __restrict__ g, long long n) {
    __shared__ float s[8];
    float acc = 0.f;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) acc += g[i] * g[i];
    for (int o = 16; o > 0; o /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (threadIdx.x % 32 == 0) s[threadIdx.x / 32] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        float t = 0.f;
        for (int w = 0; w < 8; ++w) t += s[w];
        partial[blockIdx.x] = t;
    }
}

// bf16 copy of f32 values (the shadow weights after an upload or a resume).
extern "C" __global__ void gpt_f32_to_bf16(__nv_bfloat16* __restrict__ out, const float* __restrict__ in, long long n) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __float2bfloat16_rn(in[i]);
}
