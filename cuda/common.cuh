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

}  // namespace twofour
