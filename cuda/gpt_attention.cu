// Causal self-attention of the GPT trainer, fused flash-style (Dao 2023, FlashAttention-2): the
// T x T score matrix never reaches global memory. Head size 64 (every GPT-2 preset). Tensor cores
// through WMMA (bf16 in, f32 accumulate: HMMA on sm_80 and sm_90).
//
// Layouts (llm.c's): qkv is (B, T, 3C) row-major with q | k | v side by side and head h at columns
// h*64..h*64+63 of each third; out is (B, T, C); lse (log-sum-exp of each query's scaled scores)
// is (B, NH, T) f32, written by the forward pass for the backward pass.
//
// Tiles: a CTA of 4 warps owns 64 queries (forward, dQ) or 64 keys (dK/dV); each warp owns 16 of
// them and the whole 64-wide head. The loop walks 64-wide tiles of the other side; a block-sparse
// variant (Mixed Sparsity Training) only has to skip tiles in that loop. The backward pass is two
// kernels (dK/dV over query tiles, dQ over key tiles) instead of one with atomics, so every result
// is written once, in a fixed order: training is bit-for-bit reproducible.
#include "common.cuh"
#include <mma.h>

namespace attn {

using namespace nvcuda;
typedef __nv_bfloat16 bf16;

constexpr int HD = 64;   // head size
constexpr int BT = 64;   // tile of queries / keys
constexpr int LDH = 72;  // bf16 smem row stride: +16 bytes against ldmatrix bank conflicts
constexpr int LDS = 68;  // f32 smem row stride
constexpr int TILE_H = BT * LDH;  // bf16 elements per tile
constexpr int TILE_S = BT * LDS;  // f32 elements per tile

typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> FragA;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> FragBRow;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> FragBCol;
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> FragC;

// Rows row0..row0+63 of a 64-wide slice of a (rows x stride) bf16 matrix into smem; rows at or past
// `rows` become zeros. 128 threads, 16-byte accesses.
__device__ __forceinline__ void load_tile(bf16* dst, const bf16* src, long long stride, int row0, int rows) {
    for (int i = threadIdx.x; i < BT * HD / 8; i += blockDim.x) {
        const int r = i / 8, c = (i % 8) * 8;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (row0 + r < rows) v = *reinterpret_cast<const uint4*>(src + (long long)(row0 + r) * stride + c);
        *reinterpret_cast<uint4*>(dst + r * LDH + c) = v;
    }
}

// acc[n] (16 x 16, n = 0..3 across 64 columns) = A (16 x 64, row-major at a) * B, where B is
// 64 x 64: `b` holds B^T row-major (col_major view) when TRANS, else B row-major.
template <bool TRANS>
__device__ __forceinline__ void mma_16x64(FragC acc[4], const bf16* a, const bf16* b, bool zero) {
    if (zero) {
#pragma unroll
        for (int n = 0; n < 4; ++n) wmma::fill_fragment(acc[n], 0.f);
    }
    // k outer: one A fragment live at a time (the dK/dV kernel holds two 16 x 64 accumulators).
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        FragA fa;
        wmma::load_matrix_sync(fa, a + k * 16, LDH);
#pragma unroll
        for (int n = 0; n < 4; ++n) {
            if constexpr (TRANS) {
                FragBCol fb;
                wmma::load_matrix_sync(fb, b + n * 16 * LDH + k * 16, LDH);
                wmma::mma_sync(acc[n], fa, fb, acc[n]);
            } else {
                FragBRow fb;
                wmma::load_matrix_sync(fb, b + k * 16 * LDH + n * 16, LDH);
                wmma::mma_sync(acc[n], fa, fb, acc[n]);
            }
        }
    }
}

__device__ __forceinline__ void store_16x64(float* s, FragC acc[4]) {
#pragma unroll
    for (int n = 0; n < 4; ++n) wmma::store_matrix_sync(s + n * 16, acc[n], LDS, wmma::mem_row_major);
}

// Writes the warp's 16 x 64 f32 rows (through smem) as bf16 to global rows row0.., if < rows.
__device__ __forceinline__ void write_rows(bf16* dst, long long stride, const float* s, int row0, int rows, int lane) {
    const int r = lane / 2, c0 = (lane & 1) * 32;
    if (row0 + r >= rows) return;
    bf16* d = dst + (long long)(row0 + r) * stride + c0;
#pragma unroll
    for (int j = 0; j < 32; j += 8) {
        uint4 v;
        uint32_t* w = reinterpret_cast<uint32_t*>(&v);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const uint32_t lo = twofour::f32_to_bf16(s[r * LDS + c0 + j + 2 * e]);
            const uint32_t hi = twofour::f32_to_bf16(s[r * LDS + c0 + j + 2 * e + 1]);
            w[e] = lo | (hi << 16);
        }
        *reinterpret_cast<uint4*>(d + j) = v;
    }
}

}  // namespace attn

using namespace attn;

// grid (ceil(T/64), B*NH), 128 threads, dynamic smem: Q, K, V, P (bf16 tiles) + S, O (f32 tiles).
extern "C" __global__ void __launch_bounds__(128) gpt_attention_forward(bf16* __restrict__ out, float* __restrict__ lse, const bf16* __restrict__ qkv, int T, int NH, float scale) {
    extern __shared__ __align__(128) unsigned char attn_smem[];
    bf16* sQ = reinterpret_cast<bf16*>(attn_smem);
    bf16* sK = sQ + TILE_H;
    bf16* sV = sK + TILE_H;
    bf16* sP = sV + TILE_H;
    float* sS = reinterpret_cast<float*>(sP + TILE_H);
    float* sO = sS + TILE_S;

    const int qb = blockIdx.x, bh = blockIdx.y, b = bh / NH, h = bh % NH;
    const int C = NH * HD, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const long long stride = 3LL * C;
    const bf16* base = qkv + (long long)b * T * stride + h * HD;
    const int q0 = qb * BT;

    load_tile(sQ, base, stride, q0, T);
    for (int i = threadIdx.x; i < TILE_S; i += blockDim.x) sO[i] = 0.f;

    // Each query row is shared by a lane pair: lane r/2 of the warp's 16 rows, 32 columns each.
    const int r = warp * 16 + lane / 2, c0 = (lane & 1) * 32, q = q0 + r;
    float m = -INFINITY, l = 0.f;
    FragC acc[4];
    for (int kb = 0; kb <= qb; ++kb) {
        const int k0 = kb * BT;
        __syncthreads();  // the previous tiles are consumed
        load_tile(sK, base + C, stride, k0, T);
        load_tile(sV, base + 2 * C, stride, k0, T);
        __syncthreads();

        // S = Q K^T for the warp's 16 rows.
        mma_16x64<true>(acc, sQ + warp * 16 * LDH, sK, true);
        store_16x64(sS + warp * 16 * LDS, acc);
        __syncwarp();

        // Online softmax (FlashAttention-2, Alg. 1): new running max, rescale O and l.
        float p[32], mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < 32; ++j) {
            const int key = k0 + c0 + j;
            p[j] = key <= q ? sS[r * LDS + c0 + j] * scale : -INFINITY;
            mx = fmaxf(mx, p[j]);
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        const float m_new = fmaxf(m, mx);  // finite: key k0 <= q is always present
        const float alpha = __expf(m - m_new);
        float sum = 0.f;
#pragma unroll
        for (int j = 0; j < 32; ++j) {
            p[j] = __expf(p[j] - m_new);
            sum += p[j];
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        l = l * alpha + sum;
        m = m_new;
#pragma unroll
        for (int j = 0; j < 32; ++j) {
            sP[r * LDH + c0 + j] = __float2bfloat16_rn(p[j]);
            sO[r * LDS + c0 + j] *= alpha;
        }
        __syncwarp();

        // O += P V.
#pragma unroll
        for (int n = 0; n < 4; ++n) wmma::load_matrix_sync(acc[n], sO + warp * 16 * LDS + n * 16, LDS, wmma::mem_row_major);
        mma_16x64<false>(acc, sP + warp * 16 * LDH, sV, false);
        store_16x64(sO + warp * 16 * LDS, acc);
        __syncwarp();
    }
    const float inv = 1.f / l;
#pragma unroll
    for (int j = 0; j < 32; ++j) sO[r * LDS + c0 + j] *= inv;
    __syncwarp();
    write_rows(out + (long long)b * T * C + h * HD, C, sO + warp * 16 * LDS, q0 + warp * 16, T, lane);
    if ((lane & 1) == 0 && q < T) lse[(long long)bh * T + q] = m + __logf(l);
}

// D[b, h, t] = sum_d dout[b, t, h, d] * out[b, t, h, d] (FlashAttention-2's D_i). One warp each.
extern "C" __global__ void gpt_attention_backward_dot(float* __restrict__ D, const bf16* __restrict__ dout, const bf16* __restrict__ out, int B, int T, int NH) {
    const long long w = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (w >= (long long)B * T * NH) return;
    const int h = (int)(w % NH);
    const long long bt = w / NH;  // b * T + t
    const int C = NH * HD;
    const long long off = bt * C + h * HD + lane * 2;
    const float s = __bfloat162float(dout[off]) * __bfloat162float(out[off]) + __bfloat162float(dout[off + 1]) * __bfloat162float(out[off + 1]);
    float v = s;
#pragma unroll
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    const long long b = bt / T, t = bt % T;
    if (lane == 0) D[(b * NH + h) * T + t] = v;
}

// dK and dV of 64 keys: walk every query tile at or after them. grid (ceil(T/64), B*NH).
// smem: K, V, Q, dO, P (bf16 tiles), S and P (f32 tiles: P in f32 for dS, which holding it in
// registers next to the dK and dV accumulators would spill), lse and D of the query tile.
extern "C" __global__ void __launch_bounds__(128) gpt_attention_backward_dkdv(bf16* __restrict__ dqkv, const bf16* __restrict__ qkv, const bf16* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ D, int T, int NH, float scale) {
    extern __shared__ __align__(128) unsigned char attn_smem[];
    bf16* sK = reinterpret_cast<bf16*>(attn_smem);
    bf16* sV = sK + TILE_H;
    bf16* sQ = sV + TILE_H;
    bf16* sdO = sQ + TILE_H;
    bf16* sP = sdO + TILE_H;
    float* sS = reinterpret_cast<float*>(sP + TILE_H);
    float* sPf = sS + TILE_S;
    float* sL = sPf + TILE_S;
    float* sD = sL + BT;

    const int kb = blockIdx.x, bh = blockIdx.y, b = bh / NH, h = bh % NH;
    const int C = NH * HD, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const long long stride = 3LL * C;
    const bf16* base = qkv + (long long)b * T * stride + h * HD;
    const bf16* dbase = dout + (long long)b * T * C + h * HD;
    const int k0 = kb * BT, tiles = (T + BT - 1) / BT;
    load_tile(sK, base + C, stride, k0, T);
    load_tile(sV, base + 2 * C, stride, k0, T);

    const int r = warp * 16 + lane / 2, c0 = (lane & 1) * 32, key = k0 + r;
    FragC dK[4], dV[4], acc[4];
#pragma unroll
    for (int n = 0; n < 4; ++n) {
        wmma::fill_fragment(dK[n], 0.f);
        wmma::fill_fragment(dV[n], 0.f);
    }
    for (int qb = kb; qb < tiles; ++qb) {
        const int q0 = qb * BT;
        __syncthreads();
        load_tile(sQ, base, stride, q0, T);
        load_tile(sdO, dbase, C, q0, T);
        for (int i = threadIdx.x; i < BT; i += blockDim.x) {
            const bool ok = q0 + i < T;
            sL[i] = ok ? lse[(long long)bh * T + q0 + i] : INFINITY;
            sD[i] = ok ? D[(long long)bh * T + q0 + i] : 0.f;
        }
        __syncthreads();

        // S^T = K Q^T (16 keys x 64 queries), P^T = exp(scale S^T - lse), causal: query >= key.
        mma_16x64<true>(acc, sK + warp * 16 * LDH, sQ, true);
        store_16x64(sS + warp * 16 * LDS, acc);
        __syncwarp();
#pragma unroll 8  // fully unrolled, sm_80 spills next to the two accumulators
        for (int j = 0; j < 32; ++j) {
            const int q = q0 + c0 + j;
            const float p = (q >= key && q < T) ? __expf(sS[r * LDS + c0 + j] * scale - sL[c0 + j]) : 0.f;
            sPf[r * LDS + c0 + j] = p;
            sP[r * LDH + c0 + j] = __float2bfloat16_rn(p);
        }
        __syncwarp();
        // dV += P^T dO.
        mma_16x64<false>(dV, sP + warp * 16 * LDH, sdO, false);
        // dP^T = V dO^T.
        mma_16x64<true>(acc, sV + warp * 16 * LDH, sdO, true);
        store_16x64(sS + warp * 16 * LDS, acc);
        __syncwarp();
        // dS^T = P^T (dP^T - D); dK += dS^T Q (scaled at the end).
#pragma unroll 8  // fully unrolled, sm_80 spills next to the two accumulators
        for (int j = 0; j < 32; ++j) sP[r * LDH + c0 + j] = __float2bfloat16_rn(sPf[r * LDS + c0 + j] * (sS[r * LDS + c0 + j] - sD[c0 + j]));
        __syncwarp();
        mma_16x64<false>(dK, sP + warp * 16 * LDH, sQ, false);
        __syncwarp();
    }
#pragma unroll
    for (int n = 0; n < 4; ++n)
        for (int i = 0; i < dK[n].num_elements; ++i) dK[n].x[i] *= scale;
    bf16* dbase_qkv = dqkv + (long long)b * T * stride + h * HD;
    store_16x64(sS + warp * 16 * LDS, dK);
    __syncwarp();
    write_rows(dbase_qkv + C, stride, sS + warp * 16 * LDS, k0 + warp * 16, T, lane);
    __syncwarp();
    store_16x64(sS + warp * 16 * LDS, dV);
    __syncwarp();
    write_rows(dbase_qkv + 2 * C, stride, sS + warp * 16 * LDS, k0 + warp * 16, T, lane);
}

// dQ of 64 queries: walk every key tile at or before them. grid (ceil(T/64), B*NH).
// smem: Q, dO, K, V, P (bf16 tiles), S (f32 tile), lse and D of the query tile.
extern "C" __global__ void __launch_bounds__(128) gpt_attention_backward_dq(bf16* __restrict__ dqkv, const bf16* __restrict__ qkv, const bf16* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ D, int T, int NH, float scale) {
    extern __shared__ __align__(128) unsigned char attn_smem[];
    bf16* sQ = reinterpret_cast<bf16*>(attn_smem);
    bf16* sdO = sQ + TILE_H;
    bf16* sK = sdO + TILE_H;
    bf16* sV = sK + TILE_H;
    bf16* sP = sV + TILE_H;
    float* sS = reinterpret_cast<float*>(sP + TILE_H);
    float* sL = sS + TILE_S;
    float* sD = sL + BT;

    const int qb = blockIdx.x, bh = blockIdx.y, b = bh / NH, h = bh % NH;
    const int C = NH * HD, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const long long stride = 3LL * C;
    const bf16* base = qkv + (long long)b * T * stride + h * HD;
    const int q0 = qb * BT;
    load_tile(sQ, base, stride, q0, T);
    load_tile(sdO, dout + (long long)b * T * C + h * HD, C, q0, T);
    for (int i = threadIdx.x; i < BT; i += blockDim.x) {
        const bool ok = q0 + i < T;
        sL[i] = ok ? lse[(long long)bh * T + q0 + i] : INFINITY;
        sD[i] = ok ? D[(long long)bh * T + q0 + i] : 0.f;
    }

    const int r = warp * 16 + lane / 2, c0 = (lane & 1) * 32, q = q0 + r;
    FragC dQ[4], acc[4];
#pragma unroll
    for (int n = 0; n < 4; ++n) wmma::fill_fragment(dQ[n], 0.f);
    for (int kb = 0; kb <= qb; ++kb) {
        const int k0 = kb * BT;
        __syncthreads();
        load_tile(sK, base + C, stride, k0, T);
        load_tile(sV, base + 2 * C, stride, k0, T);
        __syncthreads();

        // S = Q K^T, P = exp(scale S - lse), causal: key <= query.
        mma_16x64<true>(acc, sQ + warp * 16 * LDH, sK, true);
        store_16x64(sS + warp * 16 * LDS, acc);
        __syncwarp();
        float p[32];
        const float lq = sL[r];
#pragma unroll
        for (int j = 0; j < 32; ++j) {
            const int key = k0 + c0 + j;
            p[j] = key <= q ? __expf(sS[r * LDS + c0 + j] * scale - lq) : 0.f;
        }
        __syncwarp();
        // dP = dO V^T; dS = P (dP - D); dQ += dS K (scaled at the end).
        mma_16x64<true>(acc, sdO + warp * 16 * LDH, sV, true);
        store_16x64(sS + warp * 16 * LDS, acc);
        __syncwarp();
        const float dq = sD[r];
#pragma unroll
        for (int j = 0; j < 32; ++j) sP[r * LDH + c0 + j] = __float2bfloat16_rn(p[j] * (sS[r * LDS + c0 + j] - dq));
        __syncwarp();
        mma_16x64<false>(dQ, sP + warp * 16 * LDH, sK, false);
    }
#pragma unroll
    for (int n = 0; n < 4; ++n)
        for (int i = 0; i < dQ[n].num_elements; ++i) dQ[n].x[i] *= scale;
    __syncwarp();
    store_16x64(sS + warp * 16 * LDS, dQ);
    __syncwarp();
    write_rows(dqkv + (long long)b * T * stride + h * HD, stride, sS + warp * 16 * LDS, q0 + warp * 16, T, lane);
}
