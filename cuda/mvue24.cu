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
#include "mvue24.cuh"

using namespace twofour;

namespace mvue {

// WARPS warps a block walking tiles with a grid stride (the launch shape is a tuning parameter).
template <int WARPS>
__device__ __forceinline__ void run(const uint16_t* __restrict__ dy, int tokens, int feats, unsigned long long seed, unsigned int step,
                                    uint16_t* __restrict__ vals, uint32_t* __restrict__ meta, uint32_t* __restrict__ mask) {
    __shared__ __align__(16) uint16_t tiles[WARPS][32][PITCH];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const long long total = (long long)(tokens / 32) * (feats / 32);
    for (long long id = (long long)blockIdx.x * WARPS + warp; id < total; id += (long long)gridDim.x * WARPS) {
        const int ti = (int)(id / (feats / 32)), tj = (int)(id % (feats / 32));
        // A quarter-warp reads one token's 64 contiguous bytes, so each 16-byte load of the warp
        // touches 8 rows, not 32 (the fused gated kernel got 2x faster from the same change).
#pragma unroll
        for (int it = 0; it < 4; ++it) {
            const int r = it * 8 + (lane >> 2), c = (lane & 3) * 8;
            *reinterpret_cast<uint4*>(&tiles[warp][r][c]) = *reinterpret_cast<const uint4*>(dy + (long long)(32 * ti + r) * feats + 32 * tj + c);
        }
        __syncwarp();
        run_tile(id, tiles[warp], lane, tokens, feats, seed, step, vals, meta, mask);
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
