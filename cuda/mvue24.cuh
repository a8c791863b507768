// MVUE 2:4 of one 32 x 32 tile of dY, shared by mvue24.cu and the kernels that produce dY and
// sparsify it in the same pass (gated.cu). See mvue24.cu for the method.
#pragma once
#include "common.cuh"

namespace mvue {

using namespace twofour;

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

// reference::mvue::systematic_pick, computed by counting instead of walking the intervals:
// with w >= 0 the running sums c_0 <= c_1 <= c_2 <= c_3 split [0, c_3) into the intervals
// [c_{i-1}, c_i), and v >= 0 lies in interval #{i : c_i <= v} when that count is below 4. The
// reference takes the distinct intervals holding u h and u h + h (at most two; u h <= u h + h, so
// the first index is the smaller) and fills up with the highest indices not yet kept when
// rounding left them short. Same sums, same compares: bit for bit the reference's picks.
// Non-finite sums (inf or NaN in dY) take the reference's interval walk itself (scalars, so
// nothing is indexed at run time).
__device__ __forceinline__ void pick_walk(float w0, float w1, float w2, float w3, float v0, float v1, int& k0, int& k1) {
    int a = 4, b = 4, n = 0;
    float lo = 0.f;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float hi = __fadd_rn(lo, i == 0 ? w0 : i == 1 ? w1 : i == 2 ? w2 : w3);
        const bool hit = (lo <= v0 && v0 < hi) || (lo <= v1 && v1 < hi);
        if (hit && n < 2) {
            if (n == 0) a = i; else b = i;
            ++n;
        }
        lo = hi;
    }
    if (n == 0) { a = 3; b = 2; }
    else if (n == 1) { b = a == 3 ? 2 : 3; }
    k0 = min(a, b);
    k1 = max(a, b);
}

__device__ __forceinline__ void pick(const float w[4], float h, float u, int& k0, int& k1) {
    const float v0 = __fmul_rn(u, h), v1 = __fadd_rn(v0, h);
    const float c0 = __fadd_rn(0.f, w[0]), c1 = __fadd_rn(c0, w[1]), c2 = __fadd_rn(c1, w[2]), c3 = __fadd_rn(c2, w[3]);
    if (!isfinite(c3) || !isfinite(v1)) {
        pick_walk(w[0], w[1], w[2], w[3], v0, v1, k0, k1);
        return;
    }
    const int j0 = (c0 <= v0) + (c1 <= v0) + (c2 <= v0) + (c3 <= v0);
    const int j1 = (c0 <= v1) + (c1 <= v1) + (c2 <= v1) + (c3 <= v1);
    if (j0 == 4) {  // neither value inside: keep 2 and 3
        k0 = 2;
        k1 = 3;
    } else if (j1 == 4 || j1 == j0) {  // one interval hit: add 3 (or 2 when it is 3)
        k0 = j0 == 3 ? 2 : j0;
        k1 = 3;
    } else {
        k0 = j0;
        k1 = j1;
    }
}

// weights + pick for one group, with the running sums of the common cases taken from the sum's
// own partial sums: with no dominant value (2 max <= sum) the weights are the magnitudes, so
// c_0..c_3 are exactly 0 + m_0, + m_1, + m_2, + m_3 (the additions `sum` already did); with one
// dominant value b the weights are the magnitudes with m_b replaced by rest = sum - m_b. All-zero
// groups, a lone non-zero (rest = 0) and non-finite sums take weights() + pick() themselves (the
// reference's special weights, the interval walk). Same operations on the same values as the
// reference in every case, so the same picks bit for bit.
__device__ __forceinline__ void weights_pick(const float a[4], float u, float& h, int& big, int& k0, int& k1) {
    float m[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) m[i] = fabsf(a[i]);
    const float s1 = __fadd_rn(0.f, m[0]), s2 = __fadd_rn(s1, m[1]), s3 = __fadd_rn(s2, m[2]), sum = __fadd_rn(s3, m[3]);
    int b = 0;  // first index of the largest magnitude
    float mb = m[0];
#pragma unroll
    for (int i = 1; i < 4; ++i) {
        if (m[i] > mb) {
            b = i;
            mb = m[i];
        }
    }
    const bool spread = __fmul_rn(2.f, mb) <= sum;
    const float rest = __fsub_rn(sum, mb);
    float c0 = s1, c1 = s2, c2 = s3, c3 = sum;
    if (spread) {
        h = __fmul_rn(0.5f, sum);
        big = 4;
    } else {
        h = rest;
        big = b;
        c0 = __fadd_rn(0.f, b == 0 ? rest : m[0]);
        c1 = __fadd_rn(c0, b == 1 ? rest : m[1]);
        c2 = __fadd_rn(c1, b == 2 ? rest : m[2]);
        c3 = __fadd_rn(c2, b == 3 ? rest : m[3]);
    }
    const float v0 = __fmul_rn(u, h), v1 = __fadd_rn(v0, h);
    if (sum == 0.f || (!spread && rest == 0.f) || !isfinite(c3) || !isfinite(v1)) {
        float w[4];
        weights(a, w, h, big);
        pick(w, h, u, k0, k1);
        return;
    }
    const int j0 = (c0 <= v0) + (c1 <= v0) + (c2 <= v0) + (c3 <= v0);
    const int j1 = (c0 <= v1) + (c1 <= v1) + (c2 <= v1) + (c3 <= v1);
    if (j0 == 4) {
        k0 = 2;
        k1 = 3;
    } else if (j1 == 4 || j1 == j0) {
        k0 = j0 == 3 ? 2 : j0;
        k1 = 3;
    } else {
        k0 = j0;
        k1 = j1;
    }
}

// reference::mvue::kept_value: a_i / p_i without dividing.
__device__ __forceinline__ float kept_value(float a, int i, float h, int big) {
    return i == big ? a : a == 0.f ? 0.f : copysignf(h, a);
}


// One warp, one 32 x 32 tile of dY (tokens 32 ti.., features 32 tj..; tile_id = ti * feats/32 + tj),
// already in shared memory (`tile[token][feature]`): S(dY^T)'s values, metadata and mask words of
// those 32 rows x 32 tokens. Used by mvue24_compress and by producers of dY that sparsify in place
// (gated_backward_mvue).
__device__ __forceinline__ void run_tile(long long tile_id, const uint16_t (*tile)[PITCH], int lane, int tokens, int feats,
                                         unsigned long long seed, unsigned int step, uint16_t* __restrict__ vals,
                                         uint32_t* __restrict__ meta, uint32_t* __restrict__ mask) {
    const int ti = (int)(tile_id / (feats / 32)), tj = (int)(tile_id % (feats / 32));

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
            float a[4], hh;
            int big;
#pragma unroll
            for (int r = 0; r < 4; ++r) a[r] = bf16_to_f32(tile[16 * t + 4 * q + r][jl]);
            int k0, k1;
            mvue::weights_pick(a, unit_f32(q == 0 ? rnd.x : q == 1 ? rnd.y : q == 2 ? rnd.z : rnd.w), hh, big, k0, k1);
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


}  // namespace mvue
