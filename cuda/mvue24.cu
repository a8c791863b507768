// MVUE 2:4 sparsification of dY^T along the token axis, fused with its compression (Chmiel et al.
// 2023; Hu et al. 2024, sec. 5): reads dY (tokens x features, row-major, as the backward pass has
// it) and writes S(dY^T) (features x tokens) as a Sparse24, the A operand of dW = S(dY)^T X.
// Every step of reference::mvue (sampling weights, systematic sampling, rescale) is done in the same
// f32 operations in the same order, with the same Philox draw per group, so the output is
// bit-identical to the CPU reference; none of them is a division (a kept value a_i / p_i is
// sign(a_i) h exactly in real arithmetic, see reference::mvue).
//
// One warp per 32 x 32 tile of dY: the tile is one 32-token chunk of 32 output rows, i.e. exactly
// two 16-row metadata blocks of S(dY^T), so each lane writes whole metadata words.
#include "common.cuh"

using namespace twofour;

namespace mvue {

constexpr int PITCH = 40;

// reference::mvue::group_weights: weights w (summing to 2h), half-total h, the index kept for
// sure (4: none). No division anywhere (the reference is written the same way).
__device__ __forceinline__ void weights(const float a[4], float w[4], float& h, int& big) {
    float m[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) m[i] = fabsf(a[i]);
    const float sum = __fadd_rn(__fadd_rn(__fadd_rn(__fadd_rn(0.f, m[0]), m[1]), m[2]), m[3]);
    int b = 0;  // first index of the largest magnitude
    float mb = m[0];
#pragma unroll
    for (int i = 1; i < 4; ++i) {
        if (m[i] > mb) {
            b = i;
            mb = m[i];
        }
    }
    if (sum == 0.f) {
#pragma unroll
        for (int i = 0; i < 4; ++i) w[i] = 1.f;
        h = 2.f;
        big = 4;
    } else if (__fmul_rn(2.f, mb) <= sum) {
#pragma unroll
        for (int i = 0; i < 4; ++i) w[i] = m[i];
        h = __fmul_rn(0.5f, sum);
        big = 4;
    } else {
        const float rest = __fsub_rn(sum, mb);
        h = rest == 0.f ? 1.f : rest;
#pragma unroll
        for (int i = 0; i < 4; ++i) w[i] = i == b ? h : rest == 0.f ? 1.f / 3.f : m[i];
        big = b;
    }
}

// reference::mvue::systematic_pick (the two picks held in scalars, not an array, so nothing is
// indexed at run time): the intervals of the running sums of w holding u h and u h + h.
__device__ __forceinline__ void pick(const float w[4], float h, float u, int& k0, int& k1) {
    int a = 4, b = 4, n = 0;
    float lo = 0.f;
    const float v0 = __fmul_rn(u, h), v1 = __fadd_rn(v0, h);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float hi = __fadd_rn(lo, w[i]);
        const bool hit = (lo <= v0 && v0 < hi) || (lo <= v1 && v1 < hi);
        if (hit && n < 2) {
            if (n == 0) a = i; else b = i;
            ++n;
        }
        lo = hi;
    }
    // Rounding left the intervals short: fill up with the highest indices not yet kept.
    if (n == 0) { a = 3; b = 2; }
    else if (n == 1) { b = a == 3 ? 2 : 3; }
    k0 = min(a, b);
    k1 = max(a, b);
}

// reference::mvue::kept_value: a_i / p_i without dividing.
__device__ __forceinline__ float kept_value(float a, int i, float h, int big) {
    return i == big ? a : a == 0.f ? 0.f : copysignf(h, a);
}

}  // namespace mvue

namespace mvue {

// One warp, one 32 x 32 tile of dY (tokens 32 ti.., features 32 tj..).
__device__ __forceinline__ void run_tile(long long tile_id, uint16_t (*tile)[PITCH], int lane, const uint16_t* __restrict__ dy, int tokens, int feats,
                                         unsigned long long seed, unsigned int step, uint16_t* __restrict__ vals,
                                         uint32_t* __restrict__ meta, uint32_t* __restrict__ mask) {
    const int tiles_c = feats / 32;
    const int ti = (int)(tile_id / tiles_c), tj = (int)(tile_id % tiles_c);
    const uint4* src = reinterpret_cast<const uint4*>(dy + (long long)(32 * ti + lane) * feats + 32 * tj);
#pragma unroll
    for (int v = 0; v < 4; ++v) *reinterpret_cast<uint4*>(&tile[lane][8 * v]) = src[v];
    __syncwarp();

    const int rb = lane >> 4, g = (lane >> 1) & 7, t = lane & 1;
    const uint2 key = make_uint2((uint32_t)seed, (uint32_t)(seed >> 32));
    uint32_t word = 0, kept_bits[2] = {0, 0};
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int jl = 16 * rb + g + 8 * h;  // output row (feature) within the tile
        const long long row = 32LL * tj + jl;
        uint32_t packed[4];  // two bf16 per group; indexed by the unrolled q only
        uint32_t nibbles = 0;
        // Groups base .. base + 3 (q = 0..3) share one Philox call (base is a multiple of 4).
        const unsigned long long base = row * (tokens / 4) + (32LL * ti + 16 * t) / 4;
        const unsigned long long ctr = base / 4;
        const uint4 rnd = philox4x32(make_uint4((uint32_t)ctr, (uint32_t)(ctr >> 32), step, 0x6d767565u), key);
#pragma unroll
        for (int q = 0; q < 4; ++q) {  // unrolled: packed[q] and kept_bits[h] stay in registers
            float a[4], w[4], hh;
            int big;
#pragma unroll
            for (int r = 0; r < 4; ++r) a[r] = bf16_to_f32(tile[16 * t + 4 * q + r][jl]);
            mvue::weights(a, w, hh, big);
            int k0, k1;
            mvue::pick(w, hh, unit_f32(q == 0 ? rnd.x : q == 1 ? rnd.y : q == 2 ? rnd.z : rnd.w), k0, k1);
            const float a0 = k0 == 0 ? a[0] : k0 == 1 ? a[1] : k0 == 2 ? a[2] : a[3];
            const float a1 = k1 == 0 ? a[0] : k1 == 1 ? a[1] : k1 == 2 ? a[2] : a[3];
            packed[q] = (uint32_t)f32_to_bf16(mvue::kept_value(a0, k0, hh, big)) | ((uint32_t)f32_to_bf16(mvue::kept_value(a1, k1, hh, big)) << 16);
            nibbles |= ((uint32_t)k0 | ((uint32_t)k1 << 2)) << (4 * q);
            kept_bits[h] |= ((1u << k0) | (1u << k1)) << (4 * q);
        }
        word |= nibbles << (16 * h);
        *reinterpret_cast<uint4*>(vals + row * (tokens / 2) + 16 * ti + 8 * t) = make_uint4(packed[0], packed[1], packed[2], packed[3]);
    }
    meta[((long long)(2 * tj + rb) * (tokens / 32) + ti) * 16 + 2 * g + t] = word;
    // Mask words (32 tokens of one output row) are split over the lane pair t = 0, 1.
    const uint32_t other0 = __shfl_xor_sync(0xffffffffu, kept_bits[0], 1);
    const uint32_t other1 = __shfl_xor_sync(0xffffffffu, kept_bits[1], 1);
    const long long r0 = 32LL * tj + 16 * rb + g;
    if (t == 0) mask[r0 * (tokens / 32) + ti] = kept_bits[0] | (other0 << 16);
    else mask[(r0 + 8) * (tokens / 32) + ti] = other1 | (kept_bits[1] << 16);
}

// WARPS warps a block walking tiles with a grid stride (the launch shape is a tuning parameter).
template <int WARPS>
__device__ __forceinline__ void run(const uint16_t* __restrict__ dy, int tokens, int feats, unsigned long long seed, unsigned int step,
                                    uint16_t* __restrict__ vals, uint32_t* __restrict__ meta, uint32_t* __restrict__ mask) {
    __shared__ __align__(16) uint16_t tiles[WARPS][32][PITCH];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const long long total = (long long)(tokens / 32) * (feats / 32);
    for (long long id = (long long)blockIdx.x * WARPS + warp; id < total; id += (long long)gridDim.x * WARPS) {
        run_tile(id, tiles[warp], lane, dy, tokens, feats, seed, step, vals, meta, mask);
        __syncwarp();
    }
}

}  // namespace mvue

#define TWOFOUR_MVUE24(WARPS)                                                                                         \
    extern "C" __global__ void __launch_bounds__(32 * WARPS) mvue24_compress_w##WARPS(                                \
        const uint16_t* __restrict__ dy, int tokens, int feats, unsigned long long seed, unsigned int step,           \
        uint16_t* __restrict__ vals, uint32_t* __restrict__ meta, uint32_t* __restrict__ mask) {                      \
        mvue::run<WARPS>(dy, tokens, feats, seed, step, vals, meta, mask);                                            \
    }
TWOFOUR_MVUE24(2)
TWOFOUR_MVUE24(4)
TWOFOUR_MVUE24(8)
