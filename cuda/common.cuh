// Shared helpers for twofour's kernel families. Every kernel is `extern "C"` so the Rust side
// loads it by its plain name from the one embedded module.
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

namespace twofour {

// |x| ordering key of a bf16: the bits without the sign. For non-NaN values the integer order of
// the keys is the order of the magnitudes, so a selection made on keys is exact and identical to
// the CPU reference (src/reference/prune.rs); NaNs sort above every number.
__device__ __forceinline__ uint32_t abs_key(uint16_t bits) { return bits & 0x7fffu; }

// The 2:4 choice of one group of four: keep the two largest keys, ties to the lower index.
// Returns the nibble `i0 | i1 << 2` with i0 < i1 (PTX ISA 9.7.14.6.1: two 2-bit indices per
// group, lower one first; ::ordered_metadata requires the ascending order).
__device__ __forceinline__ uint32_t top2_nibble(const uint16_t k[4], int& i0, int& i1) {
    i0 = -1;
    i1 = -1;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        int rank = 0;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            uint32_t kj = abs_key(k[j]), ki = abs_key(k[i]);
            rank += (kj > ki) || (kj == ki && j < i);
        }
        if (rank < 2) {
            if (i0 < 0) i0 = i; else i1 = i;
        }
    }
    return (uint32_t)i0 | ((uint32_t)i1 << 2);
}

// v[i] for a run-time i in 0..3 without indexing a register array at run time (which would move
// the array to local memory: the "stack frame" line of the ptxas report).
__device__ __forceinline__ uint16_t pick4(const uint16_t v[4], int i) {
    return i == 0 ? v[0] : i == 1 ? v[1] : i == 2 ? v[2] : v[3];
}

// Philox4x32-10 (Salmon et al. 2011), identical to src/reference/philox.rs: the same (counter, key)
// gives the same four words on the CPU and on every GPU thread.
__device__ __forceinline__ uint4 philox4x32(uint4 c, uint2 k) {
#pragma unroll
    for (int i = 0; i < 10; ++i) {
        const uint32_t hi0 = __umulhi(0xD2511F53u, c.x), lo0 = 0xD2511F53u * c.x;
        const uint32_t hi1 = __umulhi(0xCD9E8D57u, c.z), lo1 = 0xCD9E8D57u * c.z;
        c = make_uint4(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
        k.x += 0x9E3779B9u;
        k.y += 0xBB67AE85u;
    }
    return c;
}

// Uniform in [0, 1) from the top 24 bits (exact in f32).
__device__ __forceinline__ float unit_f32(uint32_t x) { return (float)(x >> 8) * (1.0f / 16777216.0f); }

__device__ __forceinline__ float bf16_to_f32(uint16_t b) { return __uint_as_float((uint32_t)b << 16); }
__device__ __forceinline__ uint16_t f32_to_bf16(float f) { return __bfloat16_as_ushort(__float2bfloat16_rn(f)); }

}  // namespace twofour
