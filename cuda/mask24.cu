// Transposable 2:4 mask search and double compression, one pass over W (Hu et al. 2024, sec. 4.2).
//
// For each 4x4 block of W the kernel scores the 90 patterns with two ones in every row and column
// (the paper's "convolution" of |W| with the pattern masks; here 90 x 8 f32 adds per block on the
// CUDA cores, in the reference's order so the argmax and its tie rule are bit-identical to
// reference::transposable_mask), keeps the best, and in the same pass writes:
//   the bit mask of W, W compressed (Sparse24, 2:4 along rows) and W^T compressed (2:4 along W's
//   columns) with W^T's mask: the A operands of the forward and input-gradient GEMMs.
// `apply` mode takes the mask from a stored bit mask instead of searching (the paper recomputes the
// mask every few dozen steps and recompresses from the dense weights every step). `adamw` mode is
// apply mode whose tile comes out of the optimizer step on the f32 master weights: masked decay
// (grad += lambda (1 - mask) W, Hu et al. 2024 eq. 5), AdamW, then W and W^T recompressed from the
// updated weights, in the optimizer's own pass over W (reference::adamw_masked, every operation
// rounded alone: bit for bit).
//
// Work split: one warp per 32 x 32 tile of W (64 blocks). A tile of W holds exactly two 16-row
// metadata blocks x one 32-column chunk of W, and the same of W^T, so each lane writes whole
// metadata words (layout: docs/layout.md) with no atomics.
#include "common.cuh"

using namespace twofour;

namespace mask24 {

// The 90 patterns in reference order (src/reference/transposable.rs); bit 4r + c = (r, c) kept.
// (generated from the same enumeration; tests/mask24.rs checks it against reference::patterns().)
__constant__ uint16_t PATTERNS[90] = {
    0xcc33, 0xca53, 0xac53, 0xc693, 0x6c93, 0xc963, 0x9c63, 0xc5a3, 0x5ca3, 0xc3c3,
    0xa5c3, 0x69c3, 0x96c3, 0x5ac3, 0x3cc3, 0xca35, 0xac35, 0xaa55, 0xa695, 0x6a95,
    0xa965, 0x9a65, 0xc3a5, 0xa5a5, 0x69a5, 0x96a5, 0x5aa5, 0x3ca5, 0xa3c5, 0x3ac5,
    0xc639, 0x6c39, 0xa659, 0x6a59, 0x6699, 0xc369, 0xa569, 0x6969, 0x9669, 0x5a69,
    0x3c69, 0x65a9, 0x56a9, 0x63c9, 0x36c9, 0xc936, 0x9c36, 0xa956, 0x9a56, 0xc396,
    0xa596, 0x6996, 0x9696, 0x5a96, 0x3c96, 0x9966, 0x95a6, 0x59a6, 0x93c6, 0x39c6,
    0xc53a, 0x5c3a, 0xc35a, 0xa55a, 0x695a, 0x965a, 0x5a5a, 0x3c5a, 0x659a, 0x569a,
    0x956a, 0x596a, 0x55aa, 0x53ca, 0x35ca, 0xc33c, 0xa53c, 0x693c, 0x963c, 0x5a3c,
    0x3c3c, 0xa35c, 0x3a5c, 0x639c, 0x369c, 0x936c, 0x396c, 0x53ac, 0x35ac, 0x33cc};

// The six ways to keep two of four, in reference::transposable::PAIRS order:
// (0,1) (0,2) (0,3) (1,2) (1,3) (2,3).
__host__ __device__ constexpr int pair_lo(int p) { return p < 3 ? 0 : p < 5 ? 1 : 2; }
__host__ __device__ constexpr int pair_hi(int p) { return p == 0 ? 1 : (p == 1 || p == 3) ? 2 : 3; }

// Given the pairs of rows 0-2, the pair row 3 must take so that every column keeps two (the
// columns kept once so far), or -1. Enumerating rows 0-2 lexicographically with row 3 forced
// visits the 90 patterns in PATTERNS order.
__host__ __device__ constexpr int row3_pair(int a, int b, int c) {
    int cnt[4] = {0, 0, 0, 0};
    cnt[pair_lo(a)]++; cnt[pair_hi(a)]++;
    cnt[pair_lo(b)]++; cnt[pair_hi(b)]++;
    cnt[pair_lo(c)]++; cnt[pair_hi(c)]++;
    int lo = -1, hi = -1;
    for (int k = 0; k < 4; ++k) {
        if (cnt[k] > 2 || cnt[k] == 0) return -1;
        if (cnt[k] == 1) { if (lo < 0) lo = k; else hi = k; }
    }
    for (int p = 0; p < 6; ++p)
        if (pair_lo(p) == lo && pair_hi(p) == hi) return p;
    return -1;
}

constexpr int PITCH = 40;  // u16 a staged row: 80 bytes keeps 16-byte stores aligned

__device__ __forceinline__ uint32_t nibble_of(uint32_t four_bits) {
    // Two set bits among four -> i0 | i1 << 2 (i0 < i1).
    const uint32_t i0 = __ffs(four_bits) - 1, i1 = 31 - __clz(four_bits);
    return i0 | (i1 << 2);
}

__device__ __forceinline__ uint32_t col_bits(uint32_t pattern, int c) {
    // Column c of a 4x4 pattern as 4 bits (bit r = row r kept).
    return ((pattern >> c) & 1) | ((pattern >> (c + 3)) & 2) | ((pattern >> (c + 6)) & 4) | ((pattern >> (c + 9)) & 8);
}

__device__ __forceinline__ bool valid_pattern(uint32_t p) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        if (__popc((p >> (4 * i)) & 0xf) != 2 || __popc(col_bits(p, i)) != 2) return false;
    }
    return true;
}

// The tile's 64 block patterns are in `blk`; the tile of W in `tile`. Writes everything but the
// mask of W.
__device__ __forceinline__ void write_outputs(const uint16_t (*tile)[PITCH], const uint16_t* blk, int lane, int ti,
                                              int tj, int rows, int cols, uint16_t* w_vals, uint32_t* w_meta,
                                              uint16_t* wt_vals, uint32_t* wt_meta, uint32_t* wt_mask) {
    const int rb = lane >> 4, g = (lane >> 1) & 7, t = lane & 1;
    uint32_t w_word = 0, wt_word = 0;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int rl = 16 * rb + g + 8 * h;  // local row of W (W side) / of W^T (W^T side)
        uint16_t wv[8], tv[8];
        uint32_t wn = 0, tn = 0;
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            // W: row rl, columns 16t + 4q .. +4 = block (rl / 4, 4t + q), its row rl % 4.
            const uint32_t pw = blk[(rl >> 2) * 8 + 4 * t + q];
            const uint32_t rbits = (pw >> (4 * (rl & 3))) & 0xf;
            const uint32_t nw = nibble_of(rbits);
            wn |= nw << (4 * q);
            wv[2 * q] = tile[rl][16 * t + 4 * q + (nw & 3)];
            wv[2 * q + 1] = tile[rl][16 * t + 4 * q + (nw >> 2)];
            // W^T: row rl = W column rl, columns 16t + 4q .. = W rows: block (4t + q, rl / 4), column rl % 4.
            const uint32_t pt = blk[(4 * t + q) * 8 + (rl >> 2)];
            const uint32_t nt = nibble_of(col_bits(pt, rl & 3));
            tn |= nt << (4 * q);
            tv[2 * q] = tile[16 * t + 4 * q + (nt & 3)][rl];
            tv[2 * q + 1] = tile[16 * t + 4 * q + (nt >> 2)][rl];
        }
        w_word |= wn << (16 * h);
        wt_word |= tn << (16 * h);
        *reinterpret_cast<uint4*>(w_vals + (long long)(32 * ti + rl) * (cols / 2) + 16 * tj + 8 * t) = *reinterpret_cast<uint4*>(wv);
        *reinterpret_cast<uint4*>(wt_vals + (long long)(32 * tj + rl) * (rows / 2) + 16 * ti + 8 * t) = *reinterpret_cast<uint4*>(tv);
    }
    w_meta[((long long)(2 * ti + rb) * (cols / 32) + tj) * 16 + 2 * g + t] = w_word;
    wt_meta[((long long)(2 * tj + rb) * (rows / 32) + ti) * 16 + 2 * g + t] = wt_word;
    // W^T's mask row `lane` (= W column 32 tj + lane), word ti: column lane % 4 of blocks (br, lane / 4).
    uint32_t m = 0;
#pragma unroll
    for (int br = 0; br < 8; ++br) m |= col_bits(blk[br * 8 + (lane >> 2)], lane & 3) << (4 * br);
    wt_mask[(long long)(32 * tj + lane) * (rows / 32) + ti] = m;
}

// The optimizer step of adamw mode, field for field reference::AdamWStep.
struct AdamWStep {
    float lr, beta1, beta2, eps, weight_decay, c1, c2, gscale, lambda;
};

// The f32 state adamw mode updates: master weights, Adam's moments, the gradient (read only).
struct AdamWState {
    float* w;
    float* m;
    float* v;
    const float* grad;
    AdamWStep step;
};

// The tile's optimizer step (32 x 32 from row 32 ti, column 32 tj): masked decay and AdamW on the
// f32 state, as reference::adamw_masked does it (no contraction into FMAs: every operation rounds
// alone), the updated weights written back and their bf16 copy staged in `tile` for the
// compression. Eight lanes cover a row's 128 bytes with 16-byte accesses, four rows an
// instruction: whole lines. (A lane a row, as the bf16 tile is loaded, wrote 16-byte pieces of
// 32 lines an instruction: 6x slower on the H100.) `mask`: the stored mask of W (1 = kept).
__device__ __forceinline__ void adamw_tile(const AdamWState& st, int ti, int tj, int cols, const uint32_t* __restrict__ mask,
                                           uint16_t (*tile)[PITCH], int lane) {
    const AdamWStep& k = st.step;
    const float one_b1 = __fsub_rn(1.f, k.beta1), one_b2 = __fsub_rn(1.f, k.beta2);
    const int c4 = lane & 7;  // this lane's four columns: 4 c4 .. + 3
#pragma unroll 2
    for (int it = 0; it < 8; ++it) {
        const int rl = 4 * it + (lane >> 3);
        const long long row = 32LL * ti + rl;
        const long long at = row * cols + 32 * tj + 4 * c4;
        const uint32_t bits = mask[row * (cols / 32) + tj] >> (4 * c4);
        const float4 g4 = *reinterpret_cast<const float4*>(st.grad + at);
        float4 w4 = *reinterpret_cast<const float4*>(st.w + at), m4 = *reinterpret_cast<const float4*>(st.m + at),
               v4 = *reinterpret_cast<const float4*>(st.v + at);
        float* wv = &w4.x;
        float* mv = &m4.x;
        float* vv = &v4.x;
        const float* gv = &g4.x;
        uint16_t out[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const float w = wv[j];
            float g = __fmul_rn(gv[j], k.gscale);
            if (!((bits >> j) & 1)) g = __fadd_rn(g, __fmul_rn(k.lambda, w));
            const float m = __fadd_rn(__fmul_rn(k.beta1, mv[j]), __fmul_rn(one_b1, g));
            const float v = __fadd_rn(__fmul_rn(k.beta2, vv[j]), __fmul_rn(__fmul_rn(one_b2, g), g));
            const float mh = __fdiv_rn(m, k.c1), vh = __fdiv_rn(v, k.c2);
            const float upd = __fadd_rn(__fdiv_rn(mh, __fadd_rn(__fsqrt_rn(vh), k.eps)), __fmul_rn(k.weight_decay, w));
            const float p = __fsub_rn(w, __fmul_rn(k.lr, upd));
            wv[j] = p;
            mv[j] = m;
            vv[j] = v;
            out[j] = f32_to_bf16(p);
        }
        *reinterpret_cast<float4*>(st.w + at) = w4;
        *reinterpret_cast<float4*>(st.m + at) = m4;
        *reinterpret_cast<float4*>(st.v + at) = v4;
        *reinterpret_cast<uint2*>(&tile[rl][4 * c4]) = *reinterpret_cast<const uint2*>(out);
    }
}

// One warp, one 32 x 32 tile of W. MODE 0: search; 1: apply the stored mask; 2: the AdamW step,
// then apply the stored mask.
template <int MODE>
__device__ __forceinline__ void run_tile(long long tile_id, uint16_t (*tile)[PITCH], uint16_t* blk, int lane,
                                         const uint16_t* __restrict__ w, const AdamWState& st, int rows, int cols, uint32_t* __restrict__ mask,
                                         uint16_t* __restrict__ w_vals, uint32_t* __restrict__ w_meta,
                                         uint16_t* __restrict__ wt_vals, uint32_t* __restrict__ wt_meta,
                                         uint32_t* __restrict__ wt_mask, uint32_t* __restrict__ error) {
    const int tiles_c = cols / 32;
    const int ti = (int)(tile_id / tiles_c), tj = (int)(tile_id % tiles_c);

    constexpr bool APPLY = MODE != 0;
    if (MODE == 2) {
        adamw_tile(st, ti, tj, cols, mask, tile, lane);
    } else {
        const uint4* src = reinterpret_cast<const uint4*>(w + (long long)(32 * ti + lane) * cols + 32 * tj);
#pragma unroll
        for (int v = 0; v < 4; ++v) *reinterpret_cast<uint4*>(&tile[lane][8 * v]) = src[v];
    }
    __syncwarp();

#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int b = lane + 32 * half, br = b >> 3, bc = b & 7;
        uint32_t best;
        if (APPLY) {
            best = 0;
#pragma unroll
            for (int r = 0; r < 4; ++r)
                best |= ((mask[(long long)(32 * ti + 4 * br + r) * tiles_c + tj] >> (4 * bc)) & 0xf) << (4 * r);
            if (!valid_pattern(best)) {
                atomicOr(error, 1u);
                // Continue with a valid pattern so every index below stays in range (the caller
                // gets Error::InvalidData and must not use the outputs).
                best = PATTERNS[0];
            }
        } else {
            // The 6 pair sums of each row, shared by all 90 patterns; a pattern's score is
            // ((row0 + row1) + row2) + row3 of its pairs (reference::transposable::score).
            float ps[4][6];
            bool nan = false;
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                float a[4];
#pragma unroll
                for (int c = 0; c < 4; ++c) {
                    a[c] = fabsf(bf16_to_f32(tile[4 * br + r][4 * bc + c]));
                    nan |= a[c] != a[c];
                }
                ps[r][0] = a[0] + a[1]; ps[r][1] = a[0] + a[2]; ps[r][2] = a[0] + a[3];
                ps[r][3] = a[1] + a[2]; ps[r][4] = a[1] + a[3]; ps[r][5] = a[2] + a[3];
            }
            if (nan) atomicOr(error, 2u);
            // 216 row-0..2 choices, fully unrolled: the valid ones and their row-3 pair fold to
            // constants, leaving 90 x (3 adds + 1 compare) on registers.
            float best_score = -INFINITY;
            int best_i = 0, i = 0;
#pragma unroll
            for (int a = 0; a < 6; ++a) {
#pragma unroll
                for (int b = 0; b < 6; ++b) {
#pragma unroll
                    for (int c = 0; c < 6; ++c) {
                        const int d = row3_pair(a, b, c);
                        if (d >= 0) {
                            const float sc = ((ps[0][a] + ps[1][b]) + ps[2][c]) + ps[3][d];
                            if (sc > best_score) {
                                best_score = sc;
                                best_i = i;
                            }
                            ++i;
                        }
                    }
                }
            }
            best = PATTERNS[best_i];
        }
        blk[b] = (uint16_t)best;
    }
    __syncwarp();

    if (!APPLY) {
        // Mask of W: row `lane` of the tile, one 32-bit word, 4 bits from each of its 8 blocks.
        uint32_t m = 0;
#pragma unroll
        for (int bc = 0; bc < 8; ++bc) m |= ((blk[(lane >> 2) * 8 + bc] >> (4 * (lane & 3))) & 0xf) << (4 * bc);
        mask[(long long)(32 * ti + lane) * tiles_c + tj] = m;
    }
    write_outputs(tile, blk, lane, ti, tj, rows, cols, w_vals, w_meta, wt_vals, wt_meta, wt_mask);
}

// WARPS warps a block, each walking tiles with a grid stride: the launch shape (warps a block,
// blocks in the grid) is a tuning parameter (twofour::launch) and never changes a result.
template <int MODE, int WARPS>
__device__ __forceinline__ void run(const uint16_t* __restrict__ w, const AdamWState& st, int rows, int cols, uint32_t* __restrict__ mask,
                                    uint16_t* __restrict__ w_vals, uint32_t* __restrict__ w_meta,
                                    uint16_t* __restrict__ wt_vals, uint32_t* __restrict__ wt_meta,
                                    uint32_t* __restrict__ wt_mask, uint32_t* __restrict__ error) {
    __shared__ __align__(16) uint16_t tiles[WARPS][32][PITCH];
    __shared__ uint16_t blks[WARPS][64];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const long long total = (long long)(rows / 32) * (cols / 32);
    // Whole warps only: no barrier in a tile is CTA-wide.
    for (long long id = (long long)blockIdx.x * WARPS + warp; id < total; id += (long long)gridDim.x * WARPS) {
        run_tile<MODE>(id, tiles[warp], blks[warp], lane, w, st, rows, cols, mask, w_vals, w_meta, wt_vals, wt_meta, wt_mask, error);
        __syncwarp();  // the warp's smem tile is reused by its next tile
    }
}

}  // namespace mask24

#define TWOFOUR_MASK24(NAME, MODE, WARPS)                                                                             \
    extern "C" __global__ void __launch_bounds__(32 * WARPS) NAME(                                                    \
        const uint16_t* w, int rows, int cols, uint32_t* mask, uint16_t* w_vals, uint32_t* w_meta, uint16_t* wt_vals, \
        uint32_t* wt_meta, uint32_t* wt_mask, uint32_t* error) {                                                      \
        mask24::run<MODE, WARPS>(w, mask24::AdamWState{}, rows, cols, mask, w_vals, w_meta, wt_vals, wt_meta, wt_mask, error); \
    }
TWOFOUR_MASK24(transposable_mask_compress_w2, 0, 2)
TWOFOUR_MASK24(transposable_mask_compress_w4, 0, 4)
TWOFOUR_MASK24(transposable_mask_compress_w8, 0, 8)
TWOFOUR_MASK24(apply_mask_compress_w2, 1, 2)
TWOFOUR_MASK24(apply_mask_compress_w4, 1, 4)
TWOFOUR_MASK24(apply_mask_compress_w8, 1, 8)

// The AdamW step with recompression (adamw mode): the f32 state in place, the stored mask in
// out_w's mask (`mask`), W and W^T recompressed; 4 warps a block, grid-stride.
extern "C" __global__ void __launch_bounds__(128) adamw_masked_compress_w4(
    float* w, float* m, float* v, const float* grad, mask24::AdamWStep step, int rows, int cols, uint32_t* mask,
    uint16_t* w_vals, uint32_t* w_meta, uint16_t* wt_vals, uint32_t* wt_meta, uint32_t* wt_mask, uint32_t* error) {
    mask24::run<2, 4>(nullptr, mask24::AdamWState{w, m, v, grad, step}, rows, cols, mask, w_vals, w_meta, wt_vals, wt_meta, wt_mask, error);
}
