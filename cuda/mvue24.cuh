// MVUE 2:4 of dY along tokens, shared by mvue24.cu and the kernels that produce dY and sparsify it
// in the same pass (gated.cu). See mvue24.cu for the method.
#pragma once
#include "common.cuh"
#include "sm80_ptx.cuh"

namespace mvue {

using namespace twofour;

// host-check begin (scripts/mvue-equiv.sh compiles from here to `host-check end` with g++)
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

// reference::mvue::kept_value: a_i / p_i without dividing.
__device__ __forceinline__ float kept_value(float a, int i, float h, int big) {
    const float scaled = a == 0.f ? 0.f : copysignf(h, a);
    return i == big ? a : scaled;
}

// One group's MVUE 2:4: its kept values as a bf16 pair (lower index low), its metadata nibble
// k0 | k1 << 2 and its mask bits. The common cases are computed here in the reference's
// operations, organised for the ALU pipe (ncu: 83% busy, the bottleneck; no division anywhere):
// - a dominant value is one with 2 m_i > sum; at most one exists and it is then the strictly
//   largest, i.e. the reference's b with 2 m_b > sum (the non-spread case); with none, the
//   reference's spread case (2 m_b <= sum). The weights are the magnitudes with m_b replaced by
//   rest = sum - m_b, so the running sums c_i of the spread case are the additions `sum` did.
// - the picks come from the comparisons c_i <= v themselves: the c_i are non-decreasing, so
//   min(j0, 2), a[k0] and j0 follow from c_0 <= v0 and c_1 <= v0 by selects (pick(): with
//   j0 <= j1, no hit (j0 = 4) or one (j1 = 4 or j1 = j0) keeps min(j0, 2) and 3; two keep j0, j1).
// All-zero groups, a lone non-zero (rest = 0) and non-finite sums take weights_pick_rare (the
// reference's special weights, the interval walk). The same operations on the same values as the
// reference in every case, so the same picks and values bit for bit.
// `code`: the metadata nibble k0 | k1 << 2 in bits 0-3 and the mask bits (1 << k0) | (1 << k1)
// in bits 4-7, so a group's two outputs are one select chain of constants (lane_rows splits the
// four groups of a row into their 16-bit metadata and mask halves once).
struct Kept {
    uint32_t pair, code;
};

// The whole group by the reference's steps (weights(), pick(), kept_value()), out of line: the
// rare groups of group_kept (all zero, a lone non-zero, non-finite sums) come here, so their code
// is not copied into every unrolled group.
__device__ __noinline__ Kept group_kept_rare(float a0, float a1, float a2, float a3, float u) {
    const float a[4] = {a0, a1, a2, a3};
    float w[4], h;
    int big, k0, k1;
    weights(a, w, h, big);
    pick(w, h, u, k0, k1);
    const float x0 = k0 == 0 ? a0 : k0 == 1 ? a1 : a2;  // k0 < k1 <= 3; selects, not a[k] (stack)
    const float x1 = k1 == 1 ? a1 : k1 == 2 ? a2 : a3;
    Kept out;
    out.pair = (uint32_t)f32_to_bf16(kept_value(x0, k0, h, big)) | ((uint32_t)f32_to_bf16(kept_value(x1, k1, h, big)) << 16);
    out.code = (uint32_t)k0 | ((uint32_t)k1 << 2) | ((1u << k0) | (1u << k1)) << 4;
    return out;
}

// The common cases inline; the rare ones (`rare` below) through group_kept_rare, one branch a
// group. (One branch for a row's four groups instead: no fewer instructions on the hot path, and
// the standalone kernel spilled.)
__device__ __forceinline__ Kept group_kept(const float a[4], float u) {
    float m[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) m[i] = fabsf(a[i]);
    // The reference's sum starts 0 + m_0, which is m_0 (m_0 >= +0; a NaN goes to the rare path,
    // which redoes the sum), and c_0 = 0 + w_0 likewise.
    const float sum = __fadd_rn(__fadd_rn(__fadd_rn(m[0], m[1]), m[2]), m[3]);
    // The reference's 2 m_i > sum as m_i > sum / 2: the same for sum in [2^-125, inf), where
    // halving is exact and 2 m_i is exact or overflows (then both are true); smaller, infinite
    // and NaN sums take the rare path. Saves a multiply a value; sum / 2 is the spread case's h.
    const float half = __fmul_rn(0.5f, sum);
    bool d[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) d[i] = m[i] > half;
    const bool spread = !(d[0] || d[1] || d[2] || d[3]);
    // rest = sum - m_b when not spread. When spread it is sum - m_3, which is 0 exactly when sum is
    // (sum = m_3 means m_0..m_2 vanished in it, and then 2 m_3 > sum unless sum = 0): so
    // `rest == 0` is the reference's "sum = 0 (spread) or rest = 0 (not spread)" in one compare.
    const float m_b = d[0] ? m[0] : d[1] ? m[1] : d[2] ? m[2] : m[3];
    const float rest = __fsub_rn(sum, m_b);
    const float h = spread ? half : rest;
    const float c0 = d[0] ? rest : m[0];
    const float c1 = __fadd_rn(c0, d[1] ? rest : m[1]);
    const float c2 = __fadd_rn(c1, d[2] ? rest : m[2]);
    const float v0 = __fmul_rn(u, h), v1 = __fadd_rn(v0, h);
    // The reference's special cases: sum = 0 (spread), rest = 0 (not spread), non-finite sums.
    // Its test is on c_3, the weights' sum: that is `sum` itself when spread, and otherwise the
    // same additions with m_b replaced by rest < m_b, so at most `sum` (rounding is monotonic);
    // when `sum` is not finite, neither is c_3 (rest = inf - m_b is inf or NaN). So c_3 is finite
    // exactly when `sum` is, and then v1 = u h + h <= 2 h <= sum is finite too. Sums below 2^-125
    // (the halving above) go there too: the rare path is the reference's own steps.
    const bool rare = rest == 0.f || !(sum >= 0x1p-125f && sum < INFINITY);
    // pick() from the comparisons, with j0 = #{c_i <= v0} <= j1 = #{c_i <= v1} (the c_i do not
    // decrease): k0 = min(j0, 2), and k1 = 3 except where v1 alone hits interval 2 (j1 = 2 > j0)
    // or 1 (j1 = 1 > j0 = 0). So c_2 <= v0, c_3 <= v0 and c_3 <= v1 are never needed, and the
    // outputs are selects of constants on five compares, not integer indices.
    const bool p0 = c0 <= v0, p1 = c1 <= v0;
    const bool q0 = c0 <= v1, q1 = c1 <= v1, q2 = c2 <= v1;
    const bool r2 = q1 && !q2 && !p1, r1 = q0 && !q1 && !p0;
    const float a0 = p1 ? a[2] : p0 ? a[1] : a[0];
    const float a1 = r2 ? a[2] : r1 ? a[1] : a[3];
    // kept_value without the index: the dominant value is kept as is. It is the only one with
    // magnitude m_b (at most one value has 2 m > sum, and any other m is then below it).
    // (-1 when spread: no magnitude equals it. A `!spread &&` here became a byte-sized bool
    // and branches.)
    const float m_dom = spread ? -1.f : m_b;
    const bool big0 = fabsf(a0) == m_dom, big1 = fabsf(a1) == m_dom;
    const float s0 = a0 == 0.f ? 0.f : copysignf(h, a0), s1 = a1 == 0.f ? 0.f : copysignf(h, a1);
    Kept out;
    out.pair = (uint32_t)f32_to_bf16(big0 ? a0 : s0) | ((uint32_t)f32_to_bf16(big1 ? a1 : s1) << 16);
    out.code = (p1 ? 0x42u : p0 ? 0x21u : 0x10u) | (r2 ? 0x48u : r1 ? 0x24u : 0x8cu);
    return rare ? group_kept_rare(a[0], a[1], a[2], a[3], u) : out;
}

// host-check end

// x holds a nibble in the low half of each byte (the high halves zero): the four nibbles, byte 0's
// lowest, packed into bits 0-15.
__device__ __forceinline__ uint32_t gather_nibbles(uint32_t x) {
    x = (x | (x >> 4)) & 0x00ff00ffu;
    return (x | (x >> 8)) & 0x0000ffffu;
}

// Per-warp staging of a 64-token x 32-column (64-byte) slice of a row-major bf16 matrix in shared
// memory by cp.async: a warp issues the next tile's copies, then does the current tile's
// arithmetic from registers while they fly (with plain loads a warp waited for its loads and then
// computed, and 3-5 warps a scheduler could not cover both). Token t of the slice sits in 64-byte
// slot 4 (t % 16) + t / 16: the four 16-token lane groups then read four adjacent slots, 256
// contiguous bytes (no bank conflicts). Tokens at or past `tokens` are zero-filled, not read.
constexpr int STAGE_BYTES = 64 * 64;

__device__ __forceinline__ void stage_async(uint8_t* buf, const uint16_t* __restrict__ src, long long ld, int tile_tok, int tokens, long long col0, int lane) {
    // Copy i (8 tokens x 4 chunks a warp instruction) moves token lane / 4 + 8 i, chunk lane % 4.
    // With tokens a multiple of 32 a tile has 32 or 64 of them: copies 4..7 exist when it has 64
    // (else they zero-fill, their source address a valid one). Addresses: one base, constant steps.
    const bool full = tile_tok + 64 <= tokens;
    const uint16_t* row = src + (long long)(tile_tok + (lane >> 2)) * ld + col0 + 8 * (lane & 3);
    uint8_t* dst = buf + (lane >> 2) * 256 + 16 * (lane & 3);  // slot 4 (t % 16) + t / 16 of t = lane / 4
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const bool ok = i < 4 || full;
        sm80ptx::cp_async16(dst + (32 * (i & 1) + (i >> 1)) * 64, row + (ok ? i : i - 4) * 8 * ld, ok);
    }
}

// Waits for this thread's copies, then the warp's (every lane reads what others copied).
__device__ __forceinline__ void stage_wait() {
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
    __syncwarp();
}

// A warp's grid-stride walk over warp tiles first, first + stride, ... < total, its inputs staged
// one tile ahead: issue(tile) starts tile's cp.async copies and commits them as one group (an
// empty group for tile >= total); body(tile, release) computes a tile from the staged copies and
// calls release() once every lane has read them, which lets the next tile's copies overwrite
// them while body's remaining arithmetic runs. The loop of mvue24_compress and of both fused
// backward + MVUE kernels (gated.cu).
template <class Issue, class Body>
__device__ __forceinline__ void staged_tiles(int first, int stride, int total, Issue issue, Body body) {
    issue(first);
    for (int id = first; id < total; id += stride) {
        stage_wait();
        body(id, [&] {
            __syncwarp();  // every lane has read the slices
            issue(id + stride);
        });
    }
    sm80ptx::cp_async_wait<0>();  // no copy outlives the block
}

// The 8 bytes (4 columns from c0) of token t of a staged slice.
__device__ __forceinline__ uint2 staged(const uint8_t* buf, int t, int c0) {
    return *reinterpret_cast<const uint2*>(buf + (4 * (t & 15) + (t >> 4)) * 64 + 2 * c0);
}

// The lane-level layout of S(dY^T) shared by mvue24_compress and the kernels that produce dY and
// sparsify it in the same pass (gated_backward_mvue). A warp tile is 32 output rows (features of
// dY) x 64 tokens; lane l holds rows 4 (l & 7) .. + 3 of it and tokens 16 (l >> 3) .. + 15 in
// registers (read from a cp.async-staged copy of the tile, see stage_async). 16 tokens of a row
// are four groups: one Philox call, 16 bytes of kept values, 16 metadata bits and 16 mask bits;
// the lanes holding rows g and g + 8 (lane ^ 2) and tokens 0..15 and 16..31 of a 32-token block
// (lane ^ 8) swap halves to write whole 32-bit words.
struct LaneTile {
    int c0;    // first of the lane's four rows within the warp tile: 4 (lane & 7)
    int tok;   // first of its 16 tokens within the warp tile: 16 (lane >> 3)
};

__device__ __forceinline__ LaneTile lane_tile(int lane) { return LaneTile{4 * (lane & 7), 16 * (lane >> 3)}; }

// bf16 #i (0: low half) of a packed pair as f32.
__device__ __forceinline__ float half_f32(uint32_t w, int i) { return __uint_as_float(i ? (w & 0xffff0000u) : (w << 16)); }

// S(dY^T) of one lane's 4 rows x 16 tokens: words(r, p) (p a run-time 0 or 1) is the packed word
// of token tok0 + r holding rows row0 + 2p (low half) and row0 + 2p + 1 (high). Same arithmetic
// and draws as reference::mvue (group q of a row's 16 tokens takes word q of the Philox call at
// counter row * tokens / 16 + tok0 / 16). Writes the
// kept values (16 bytes a row) when `store`; returns the rows' metadata nibbles and mask bits in
// pairs: nib[p] = row 2p's 16 bits | row 2p + 1's << 16, kept likewise. ROLLED keeps the pair
// loop rolled (half the code, two selects a word more): for the fused gated kernel, whose loop
// also holds the backward's arithmetic. PAIRS = 1: rows row0 and row0 + 1 only (nib[0], kept[0];
// the sparse GEMM's fused epilogue, whose lanes hold one pair).
template <bool ROLLED, int PAIRS = 2, class Words>
__device__ __forceinline__ void lane_rows(Words words, long long row0, int tok0, int tokens, uint2 key, unsigned int step,
                                          bool store, uint16_t* __restrict__ vals, uint32_t (&nib)[2], uint32_t (&kept)[2]) {
#pragma unroll(ROLLED ? 1 : PAIRS)
    for (int p = 0; p < PAIRS; ++p) {
        uint32_t w[16];
#pragma unroll
        for (int r = 0; r < 16; ++r) w[r] = words(r, p);
        uint32_t nib_pair = 0, kept_pair = 0;
#pragma unroll
        for (int hi = 0; hi < 2; ++hi) {
            const long long row = row0 + 2 * p + hi;
            const unsigned long long ctr = (unsigned long long)row * (tokens / 16) + tok0 / 16;
            const uint4 rnd = philox4x32(make_uint4((uint32_t)ctr, (uint32_t)(ctr >> 32), step, 0x6d767565u), key);
            uint32_t packed[4], codes = 0;
#pragma unroll
            for (int q = 0; q < 4; ++q) {  // unrolled: packed[q] stays in registers
                float a[4];
#pragma unroll
                for (int r = 0; r < 4; ++r) a[r] = half_f32(w[4 * q + r], hi);
                const Kept k = group_kept(a, unit_f32(q == 0 ? rnd.x : q == 1 ? rnd.y : q == 2 ? rnd.z : rnd.w));
                packed[q] = k.pair;
                codes |= k.code << (8 * q);
            }
            // Group q's nibble and mask bits sit in byte q's low and high halves: gather each
            // kind's four nibbles into 16 bits.
            const uint32_t nibbles = gather_nibbles(codes & 0x0f0f0f0fu), bits = gather_nibbles((codes >> 4) & 0x0f0f0f0fu);
            if (store) *reinterpret_cast<uint4*>(vals + row * (tokens / 2) + tok0 / 2) = make_uint4(packed[0], packed[1], packed[2], packed[3]);
            nib_pair |= nibbles << (16 * hi);
            kept_pair |= bits << (16 * hi);
        }
        nib[0] = p ? nib[0] : nib_pair;  // selects: with the loop rolled p is a run-time value
        nib[1] = p ? nib_pair : nib[1];
        kept[0] = p ? kept[0] : kept_pair;
        kept[1] = p ? kept_pair : kept[1];
    }
}

// The metadata and mask words of a warp tile whose rows start at row0 (a multiple of 32) and
// tokens at tile_tok (a multiple of 32), from every lane's lane_rows. Metadata (crate::layout):
// the word of 16-row block R, 32-token block C, row g < 8 and token half t sits at
// (R * tokens / 32 + C) * 16 + 2 g + t and holds row g's nibbles low, row g + 8's high. All 32
// lanes must call it (shuffles); `store` is false for lanes past the last token.
__device__ __forceinline__ void write_words(const uint32_t (&nib)[2], const uint32_t (&kept)[2], int lane, long long row0, int tile_tok, int tokens,
                                            bool store, uint32_t* __restrict__ meta, uint32_t* __restrict__ mask) {
    const LaneTile lt = lane_tile(lane);
    const bool high = (lt.c0 & 8) != 0;        // rows g + 8 of the 16-row block
    const bool odd = (lt.tok & 16) != 0;       // tokens 16..31 of the 32-token block
    const uint32_t nib_other = __shfl_xor_sync(0xffffffffu, high ? nib[0] : nib[1], 2);
    const uint32_t kept_other = __shfl_xor_sync(0xffffffffu, odd ? kept[0] : kept[1], 8);
    if (!store) return;
    const int tok0 = tile_tok + lt.tok;
    const long long blk = ((row0 + (lt.c0 & 16)) / 16) * (tokens / 32) + tok0 / 32;
    const int g = lt.c0 & 7, t = odd;
    // Low lanes write rows g, g + 1 of their pair, high lanes g + 2, g + 3.
    if (!high) {
        meta[blk * 16 + 2 * g + t] = (nib[0] & 0xffffu) | (nib_other << 16);
        meta[blk * 16 + 2 * (g + 1) + t] = (nib[0] >> 16) | (nib_other & 0xffff0000u);
    } else {
        meta[blk * 16 + 2 * (g + 2) + t] = (nib_other & 0xffffu) | (nib[1] << 16);
        meta[blk * 16 + 2 * (g + 3) + t] = (nib_other >> 16) | (nib[1] & 0xffff0000u);
    }
    // Even token halves write rows c0, c0 + 1, odd ones c0 + 2, c0 + 3.
    const long long r = row0 + lt.c0, words = tokens / 32, col = tok0 / 32;
    if (!odd) {
        mask[r * words + col] = (kept[0] & 0xffffu) | (kept_other << 16);
        mask[(r + 1) * words + col] = (kept[0] >> 16) | (kept_other & 0xffff0000u);
    } else {
        mask[(r + 2) * words + col] = (kept_other & 0xffffu) | (kept[1] << 16);
        mask[(r + 3) * words + col] = (kept_other >> 16) | (kept[1] & 0xffff0000u);
    }
}

}  // namespace mvue
