// The activations of the MLP kernels: SiLU and GELU (tanh form) with their derivatives, shared by
// the gated kernels (gated.cu) and the sparse GEMM's fused GELU-backward epilogue
// (sparse_gemm_sm90.cu), which must compute gelu_backward's arithmetic exactly.
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

namespace gated {

// The hardware's approximate 2^x and 1/x without the denormal fix-ups the non-ftz forms add
// (__expf and __fdividef compile to MUFU plus a compare and two multiplies each): a denormal
// result flushes to 0, which the callers below tolerate by construction.
__device__ __forceinline__ float ex2_ftz(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
__device__ __forceinline__ float rcp_ftz(float x) {
    float y;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// GELU (tanh form) and its derivative in 12 FMA-pipe instructions and 2 MUFU (the older
// 1 - 2 / (exp(2u) + 1) form took 22 and 2 MUFU with fix-ups: in the sparse GEMM's fused epilogue
// it was more instructions than MVUE, docs/sparse-training.md). With u = c (x + k x^3),
// e = exp(2u) and r = 1 / (1 + e): 0.5 (1 + tanh u) = e r =: s and 1 - tanh^2 u = 4 r s, so
// gelu = x s and gelu' = s + 2 x r s (c + 3 c k x^2) = s (1 + x r (2c + 6ck x^2)). s = e r has no
// cancellation on the negative tail (1 - 2r had); 2u log2(e) is clamped at 126 so e stays finite
// (e = inf gave s = inf * 0), and e flushing to 0 gives s = 0, gelu = -0, gelu' = 0.
// Errors: a few ulp of s, far inside bf16 (tests/gated.rs bounds it against the f64 reference).
__device__ __forceinline__ void gelu_and_grad(float x, float& a, float& da) {
    constexpr float c = 0.7978845608028654f, k = 0.044715f, log2e = 1.4426950408889634f;
    constexpr float t1 = 2.f * c * log2e, t3 = t1 * k;  // 2u log2(e) = x (t1 + t3 x^2)
    constexpr float d0 = 2.f * c, d2 = 6.f * c * k;
    const float x2 = x * x;
    const float e = ex2_ftz(fminf(x * fmaf(t3, x2, t1), 126.f));
    const float r = rcp_ftz(1.f + e);
    const float s = e * r;
    a = x * s;
    da = s * fmaf(x * r, fmaf(d2, x2, d0), 1.f);
}

// Two bf16 elements of GELU's backward, dY = gelu'(X) dA, packed as in memory (the lower address
// low): the arithmetic every GELU-backward path shares (gelu_backward, gelu_backward_mvue, the
// sparse GEMM's fused epilogue), so their outputs agree bit for bit by construction.
__device__ __forceinline__ uint32_t gelu_backward_pair(uint32_t x, uint32_t da) {
    float a0, g0, a1, g1;
    gelu_and_grad(__uint_as_float(x << 16), a0, g0);
    gelu_and_grad(__uint_as_float(x & 0xffff0000u), a1, g1);
    const __nv_bfloat162 y = __floats2bfloat162_rn(g0 * __uint_as_float(da << 16), g1 * __uint_as_float(da & 0xffff0000u));
    return *reinterpret_cast<const uint32_t*>(&y);
}

// SiLU with the hardware's approximate exp and reciprocal (__expf: 2 + 1.17 |x| ulp; __fdividef:
// 2 ulp) instead of expf and IEEE division: a few instructions instead of ~20, which matters where
// MVUE shares the arithmetic pipes (gated_backward_mvue), and inside one bf16 rounding of the
// outputs (tests/gated.rs bounds the error against the f64 reference). GELU: gelu_and_grad. (Not
// the hardware tanh.approx: its ~2^-11 absolute error would swamp 0.5 x (1 + tanh) on the
// negative tail.)
__device__ __forceinline__ void act(int kind, float x, float& a, float& da) {
    if (kind == 0) {  // SiLU
        const float s = __fdividef(1.f, 1.f + __expf(-x));
        a = x * s;
        da = s * (1.f + x * (1.f - s));
    } else {  // GELU, tanh approximation
        gelu_and_grad(x, a, da);
    }
}

}  // namespace gated
