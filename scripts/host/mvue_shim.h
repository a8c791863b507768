// Host stand-ins for what cuda/mvue24.cuh's `host-check` region uses from CUDA, with the GPU's
// semantics where they matter (one rounding an operation, canonical NaN results, bf16 rounding),
// and `outputs`, which reads either form of the region's Kept:
// included by scripts/host/mvue_equiv.cpp and by the C++ program tests/mvue_host.rs builds.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#define __device__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
static inline uint32_t __float_as_uint(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
static inline float __uint_as_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
// IEEE single-precision operations, one rounding each (built with -ffp-contract=off, SSE math).
// A NaN result is the GPU's canonical NaN (x86 would pass on an operand's payload, and which one
// depends on the operand order the compiler picks).
static inline float gpu_nan(float x) { return std::isnan(x) ? __uint_as_float(0x7fffffffu) : x; }
static inline float __fadd_rn(float a, float b) { return gpu_nan(a + b); }
static inline float __fsub_rn(float a, float b) { return gpu_nan(a - b); }
static inline float __fmul_rn(float a, float b) { return gpu_nan(a * b); }
struct uint2 { uint32_t x, y; };
static inline uint2 make_uint2(uint32_t x, uint32_t y) { return {x, y}; }
// Round to nearest even, as __float2bfloat16_rn (NaN: quiet, sign kept).
static inline uint16_t f32_to_bf16(float f) {
    const uint32_t u = __float_as_uint(f);
    if (std::isnan(f)) return (uint16_t)((u >> 16) | 0x40);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
using std::isfinite;
using std::max;
using std::min;

// A group's outputs as (kept pair, nibble, mask bits), from either form of Kept: separate `nib`
// and `bits`, or `code` (nibble in bits 0-3, mask bits in 4-7).
template <class K, class = void> struct HasCode : std::false_type {};
template <class K> struct HasCode<K, std::void_t<decltype(K::code)>> : std::true_type {};
template <class K> inline void outputs(const K& k, uint32_t& pair, uint32_t& nib, uint32_t& bits) {
    pair = k.pair;
    if constexpr (HasCode<K>::value) {
        nib = k.code & 15u;
        bits = (k.code >> 4) & 15u;
    } else {
        nib = k.nib;
        bits = k.bits;
    }
}
