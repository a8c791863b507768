// MVUE 2:4 sparsification of dY^T along the token axis, fused with its compression (Chmiel et al.
// 2023; Hu et al. 2024, sec. 5): reads dY (tokens x features, row-major, as the backward pass has
// it) and writes S(dY^T) (features x tokens) as a Sparse24, the A operand of dW = S(dY)^T X.
// Every step of reference::mvue (sampling weights, systematic sampling, rescale) is done in the same
// f32 operations in the same order, with the same Philox draw per group, so the output is
// bit-identical to the CPU reference; none of them is a division (a kept value a_i / p_i is
// sign(a_i) h exactly in real arithmetic, see reference::mvue).
//
// One warp per tile of 32 features x 64 tokens of dY, held in registers (mvue24.cuh: each lane 4
// features x 16 tokens, i.e. whole metadata nibbles and one Philox call a row), copied in by
// cp.async one tile ahead; with tokens a multiple of 32 but not of 64 the last tile row's upper
// lanes compute and store nothing.
#include "mvue24.cuh"

using namespace twofour;

namespace mvue {

// WARPS warps a block walking tiles with a grid stride (the launch shape is a tuning parameter).
template <int WARPS>
__device__ __forceinline__ void run(const uint16_t* __restrict__ dy, int tokens, int feats, unsigned long long seed, unsigned int step,
                                    uint16_t* __restrict__ vals, uint32_t* __restrict__ meta, uint32_t* __restrict__ mask) {
    __shared__ __align__(128) uint8_t stage[WARPS][STAGE_BYTES];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const LaneTile lt = lane_tile(lane);
    const uint2 key = make_uint2((uint32_t)seed, (uint32_t)(seed >> 32));
    // Tile indices in 32 bits (a 64-bit division is a subroutine call): a matrix with 2^31 tiles
    // of 2048 elements would hold 2^42 elements, far beyond any GPU's memory.
    const int tiles_f = feats / 32;
    const int total = ((tokens + 63) / 64) * tiles_f, stride = gridDim.x * WARPS;
    uint8_t* buf = stage[warp];
    auto issue = [&](int tile) {  // the tile's slice of dY, one commit group (none past the end)
        if (tile < total) stage_async(buf, dy, feats, 64 * (tile / tiles_f), tokens, 32 * (tile % tiles_f), lane);
        sm80ptx::cp_async_commit();
    };
    staged_tiles(blockIdx.x * WARPS + warp, stride, total, issue, [&](int id, auto release) {
        const int tile_tok = 64 * (id / tiles_f);
        const long long row0 = 32 * (id % tiles_f);
        const int tok0 = tile_tok + lt.tok;
        const bool live = tok0 < tokens;
        uint32_t x[16][2];
#pragma unroll
        for (int r = 0; r < 16; ++r) {
            const uint2 v = staged(buf, lt.tok + r, lt.c0);
            x[r][0] = v.x;
            x[r][1] = v.y;
        }
        release();  // the next tile's copies fly during the arithmetic
        uint32_t nib[2], kept[2];
        lane_rows<false>([&](int r, int p) { return p ? x[r][1] : x[r][0]; }, row0 + lt.c0, tok0, tokens, key, step, live, vals, nib, kept);
        write_words(nib, kept, lane, row0, tile_tok, tokens, live, meta, mask);
    });
}

}  // namespace mvue

#define TWOFOUR_MVUE24(WARPS)                                                                                         \
    extern "C" __global__ void __launch_bounds__(32 * WARPS, 20 / WARPS) mvue24_compress_w##WARPS(                            \
        const uint16_t* __restrict__ dy, int tokens, int feats, unsigned long long seed, unsigned int step,           \
        uint16_t* __restrict__ vals, uint32_t* __restrict__ meta, uint32_t* __restrict__ mask) {                      \
        mvue::run<WARPS>(dy, tokens, feats, seed, step, vals, meta, mask);                                            \
    }
TWOFOUR_MVUE24(2)
TWOFOUR_MVUE24(4)
TWOFOUR_MVUE24(8)
