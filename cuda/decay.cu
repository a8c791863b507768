// Masked decay on gradients (Hu et al. 2024, eq. 5: grad += lambda (1 - mask) W, before the
// optimizer) and the flip rate between two packed masks. Reference: reference::decay.
#include "common.cuh"

// grad and w: rows x cols f32 row-major; mask: rows x cols/32 words. 4 elements a thread.
extern "C" __global__ void masked_decay(float* __restrict__ grad, const float* __restrict__ w,
                                        const uint32_t* __restrict__ mask, long long n, int cols, float lambda) {
    for (long long i = 4 * ((long long)blockIdx.x * blockDim.x + threadIdx.x); i < n; i += 4LL * gridDim.x * blockDim.x) {
        const long long r = i / cols;
        const int c = (int)(i % cols);
        const uint32_t bits = mask[r * (cols / 32) + c / 32] >> (c % 32);
        float4 gv = *reinterpret_cast<float4*>(grad + i);
        const float4 wv = *reinterpret_cast<const float4*>(w + i);
        // Separate multiply and add (no FMA): the same rounding as the CPU reference.
        if (!(bits & 1)) gv.x = __fadd_rn(gv.x, __fmul_rn(lambda, wv.x));
        if (!(bits & 2)) gv.y = __fadd_rn(gv.y, __fmul_rn(lambda, wv.y));
        if (!(bits & 4)) gv.z = __fadd_rn(gv.z, __fmul_rn(lambda, wv.z));
        if (!(bits & 8)) gv.w = __fadd_rn(gv.w, __fmul_rn(lambda, wv.w));
        *reinterpret_cast<float4*>(grad + i) = gv;
    }
}

// Number of differing bits between two packed masks, added into *count.
extern "C" __global__ void flip_count(const uint32_t* __restrict__ a, const uint32_t* __restrict__ b, long long words,
                                      unsigned long long* count) {
    unsigned long long local = 0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < words; i += (long long)gridDim.x * blockDim.x)
        local += __popc(a[i] ^ b[i]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) local += __shfl_xor_sync(0xffffffffu, local, o);
    if ((threadIdx.x & 31) == 0 && local) atomicAdd(count, local);
}
