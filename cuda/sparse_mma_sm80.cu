// The simplest correct 2:4 sparse GEMM on the warp-level sparse tensor-core instruction
// (mma.sp::ordered_metadata m16n8k32, PTX ISA 9.7.14.6): one warp per 16x8 tile of D, operands
// read straight from global memory. It is the executable definition of the Sparse24 layout (the
// metadata register each lane passes is one word of Sparse24::meta, untouched) and the check the
// fast kernels are compared against on the GPU. Not tuned: speed lives in the wgmma.sp kernel.
//
// D (M x N, fp32, row-major) = A (M x K, 2:4 along K, compressed) * B (K x N, stored K-major:
// element (k, n) at b[n * K + k], i.e. the X of a linear layer Y = X W^T).
#include "common.cuh"

__device__ __forceinline__ uint32_t ld32(const uint16_t* p) {
    return *reinterpret_cast<const uint32_t*>(p);
}

// meta_variant 0 is the documented layout. 1 re-reads the same words under the alternative
// reading of the PTX ISA figure (thread 4g holds all 32 columns of row g, thread 4g+1 of row g+8);
// the layout test runs both so that a wrong reading is reported by name, not just as a mismatch.
extern "C" __global__ void sparse_mma_sm80_naive(const uint16_t* __restrict__ a_vals,
                                                 const uint32_t* __restrict__ a_meta,
                                                 const uint16_t* __restrict__ b,
                                                 float* __restrict__ d, int M, int N, int K,
                                                 int meta_variant) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int rb = blockIdx.y, n0 = blockIdx.x * 8;
    const int chunks = K / 32, kh = K / 2;
    const int r0 = rb * 16 + g, r1 = r0 + 8;
    float c[4] = {0.f, 0.f, 0.f, 0.f};
    for (int kc = 0; kc < chunks; ++kc) {
        const uint16_t* a0 = a_vals + (long long)r0 * kh + kc * 16 + 2 * t;
        const uint16_t* a1 = a_vals + (long long)r1 * kh + kc * 16 + 2 * t;
        uint32_t ra[4] = {ld32(a0), ld32(a1), ld32(a0 + 8), ld32(a1 + 8)};
        const uint16_t* bp = b + (long long)(n0 + g) * K + kc * 32 + 2 * t;
        uint32_t rb_[4] = {ld32(bp), ld32(bp + 8), ld32(bp + 16), ld32(bp + 24)};
        const uint32_t* mw = a_meta + ((long long)rb * chunks + kc) * 16 + g * 2;
        uint32_t e = 0;
        if (t < 2) {
            if (meta_variant == 0) {
                e = mw[t];
            } else {
                const uint32_t w0 = mw[0], w1 = mw[1];
                e = t == 0 ? ((w0 & 0xffffu) | (w1 << 16)) : ((w0 >> 16) | (w1 & 0xffff0000u));
            }
        }
        asm volatile(
            "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 "
            "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, 0x0;\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(ra[0]), "r"(ra[1]), "r"(ra[2]), "r"(ra[3]), "r"(rb_[0]), "r"(rb_[1]),
              "r"(rb_[2]), "r"(rb_[3]), "r"(e));
    }
    d[(long long)r0 * N + n0 + 2 * t] = c[0];
    d[(long long)r0 * N + n0 + 2 * t + 1] = c[1];
    d[(long long)r1 * N + n0 + 2 * t] = c[2];
    d[(long long)r1 * N + n0 + 2 * t + 1] = c[3];
#endif
}
