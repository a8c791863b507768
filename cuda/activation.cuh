// The activations of the MLP kernels: SiLU and GELU (tanh form) with their derivatives, shared by
// the gated kernels (gated.cu) and the sparse GEMM's fused GELU-backward epilogue
// (sparse_gemm_sm90.cu), which must compute gelu_backward's arithmetic exactly.
#pragma once

namespace gated {

// SiLU with the hardware's approximate exp and reciprocal (__expf: 2 + 1.17 |x| ulp; __fdividef:
// 2 ulp) instead of expf and IEEE division: a few instructions instead of ~20, which matters where
// MVUE shares the arithmetic pipes (gated_backward_mvue), and inside one bf16 rounding of the
// outputs (tests/gated.rs bounds the error against the f64 reference). GELU's tanh likewise as
// 1 - 2 / (exp(2u) + 1) from __expf and __fdividef (~6 instructions; tanhf is ~20 with a branch,
// which made the fused GELU backward + MVUE issue-bound): its error is a few ulp of 1 absolute,
// far inside bf16. (Not the hardware tanh.approx: its ~2^-11 absolute error would swamp
// 0.5 x (1 + tanh) on the negative tail.) exp overflowing to inf gives tanh = 1 exactly.
__device__ __forceinline__ void act(int kind, float x, float& a, float& da) {
    if (kind == 0) {  // SiLU
        const float s = __fdividef(1.f, 1.f + __expf(-x));
        a = x * s;
        da = s * (1.f + x * (1.f - s));
    } else {  // GELU, tanh approximation
        const float c = 0.7978845608028654f, k = 0.044715f;
        const float th = 1.f - __fdividef(2.f, __expf(2.f * (c * (x + k * x * x * x))) + 1.f);
        a = 0.5f * x * (1.f + th);
        da = 0.5f * (1.f + th) + 0.5f * x * (1.f - th * th) * c * (1.f + 3.f * k * x * x);
    }
}

}  // namespace gated
