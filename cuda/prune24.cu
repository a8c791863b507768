// 2:4 magnitude pruning along rows, fused with compression into the sparse tensor-core operand.
//
// Output layout (docs/layout.md): values are the kept elements, row-major, K/2 a row; metadata is
// in "register order": one 32-bit word per (16-row block, 32-column chunk, group g, half t),
// word = nibbles(row g, 16 columns of half t) | nibbles(row g + 8, same columns) << 16, which is
// exactly the metadata register thread 4g+t of a warp passes to mma.sp m16n8k32 (selector 0) and
// to wgmma.mma_async.sp m64nNk32 for its warp's 16 rows. One thread makes one such word.
#include "common.cuh"

using namespace twofour;

extern "C" __global__ void prune24_rows_compress(const uint16_t* __restrict__ w, int rows, int cols,
                                                 uint16_t* __restrict__ values,
                                                 uint32_t* __restrict__ meta,
                                                 uint32_t* __restrict__ mask) {
    const int chunks = cols / 32;  // 32-column chunks per row
    const long long words = (long long)(rows / 16) * chunks * 16;
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const bool valid = idx < words;
    const int t = (int)(idx & 1), g = (int)((idx >> 1) & 7);
    const long long chunk = idx >> 4;
    const int kc = valid ? (int)(chunk % chunks) : 0;
    const int rb = valid ? (int)(chunk / chunks) : 0;
    const int col0 = kc * 32 + t * 16;

    uint32_t word = 0, kept_bits[2] = {0, 0};
    if (valid) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int r = rb * 16 + g + 8 * h;
            uint16_t in[16];
            const uint4* src = reinterpret_cast<const uint4*>(w + (long long)r * cols + col0);
            *reinterpret_cast<uint4*>(in) = src[0];
            *reinterpret_cast<uint4*>(in + 8) = src[1];
            uint16_t out[8];
            uint32_t nibbles = 0;
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                int i0, i1;
                nibbles |= top2_nibble(in + 4 * q, i0, i1) << (4 * q);
                out[2 * q] = pick4(in + 4 * q, i0);
                out[2 * q + 1] = pick4(in + 4 * q, i1);
                kept_bits[h] |= ((1u << i0) | (1u << i1)) << (4 * q);
            }
            *reinterpret_cast<uint4*>(values + (long long)r * (cols / 2) + col0 / 2) =
                *reinterpret_cast<uint4*>(out);
            word |= nibbles << (16 * h);
        }
        meta[idx] = word;
    }
    // The mask word of a row covers 32 columns: halves t = 0 and t = 1 live in neighbouring lanes.
    // Every lane shuffles (invalid ones too) so the full-warp mask is honest; pairs never straddle
    // the valid/invalid boundary because the word count is a multiple of 16.
    const uint32_t other0 = __shfl_xor_sync(0xffffffffu, kept_bits[0], 1);
    const uint32_t other1 = __shfl_xor_sync(0xffffffffu, kept_bits[1], 1);
    if (valid) {
        if (t == 0) {  // row g: own bits are columns 0-15 of the chunk
            mask[(long long)(rb * 16 + g) * chunks + kc] = kept_bits[0] | (other0 << 16);
        } else {       // row g + 8: own bits are columns 16-31
            mask[(long long)(rb * 16 + g + 8) * chunks + kc] = other1 | (kept_bits[1] << 16);
        }
    }
}
