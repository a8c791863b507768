// The GPT trainer's small ops: token + position embedding (forward, and a backward that sums in a
// fixed order), GELU (tanh form) forward and backward, and column sums (bias and LayerNorm weight
// gradients) done in two fixed-order stages so that training is reproducible bit for bit; no
// floating-point atomics anywhere. Reference: trainer/src/reference.rs.
#include "common.cuh"

namespace gptew {

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float gelu(float x) {
    const float c = 0.7978845608028654f;
    return 0.5f * x * (1.f + tanhf(c * (x + 0.044715f * x * x * x)));
}

__device__ __forceinline__ float gelu_grad(float x) {
    const float c = 0.7978845608028654f;
    const float th = tanhf(c * (x + 0.044715f * x * x * x));
    return 0.5f * (1.f + th) + 0.5f * x * (1.f - th * th) * c * (1.f + 3.f * 0.044715f * x * x);
}

}  // namespace gptew

using namespace gptew;

// out[b, t, :] = wte[token] + wpe[t] (f32 master weights, bf16 out). One thread per element.
extern "C" __global__ void gpt_encoder_forward(bf16* __restrict__ out, const int* __restrict__ tokens, const float* __restrict__ wte, const float* __restrict__ wpe, int N, int T, int C) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * C) return;
    const long long n = i / C;
    const int c = (int)(i % C), t = (int)(n % T);
    out[i] = __float2bfloat16_rn(wte[(long long)tokens[n] * C + c] + wpe[(long long)t * C + c]);
}

// dwpe[t, c] += sum over b of dout[b, t, c], b in order. One thread per (t, c).
extern "C" __global__ void gpt_encoder_backward_wpe(float* __restrict__ dwpe, const bf16* __restrict__ dout, int B, int T, int C) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)T * C) return;
    float s = 0.f;
    for (int b = 0; b < B; ++b) s += __bfloat162float(dout[(long long)b * T * C + i]);
    dwpe[i] += s;
}

// dwte[token] += sum of dout over the positions holding that token, in ascending position order.
// The host groups positions by token (CSR: tokens[u], positions[offsets[u]..offsets[u+1]]): one
// block per distinct token, no atomics.
extern "C" __global__ void gpt_encoder_backward_wte(float* __restrict__ dwte, const bf16* __restrict__ dout, const int* __restrict__ tokens, const int* __restrict__ offsets, const int* __restrict__ positions, int C) {
    const int u = blockIdx.x;
    const int tok = tokens[u], p0 = offsets[u], p1 = offsets[u + 1];
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float s = 0.f;
        for (int p = p0; p < p1; ++p) s += __bfloat162float(dout[(long long)positions[p] * C + c]);
        dwte[(long long)tok * C + c] += s;
    }
}

// out = gelu(inp), 8 elements a thread (n % 8 == 0).
extern "C" __global__ void gpt_gelu_forward(bf16* __restrict__ out, const bf16* __restrict__ inp, long long n) {
    const long long i = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    uint4 v = *reinterpret_cast<const uint4*>(inp + i);
    uint32_t* w = reinterpret_cast<uint32_t*>(&v);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
        const float lo = gelu(__uint_as_float(w[e] << 16)), hi = gelu(__uint_as_float(w[e] & 0xffff0000u));
        w[e] = (uint32_t)twofour::f32_to_bf16(lo) | ((uint32_t)twofour::f32_to_bf16(hi) << 16);
    }
    *reinterpret_cast<uint4*>(out + i) = v;
}

// dinp = gelu'(inp) * dout (dinp may alias dout).
extern "C" __global__ void gpt_gelu_backward(bf16* dinp, const bf16* __restrict__ inp, const bf16* dout, long long n) {
    const long long i = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (i >= n) return;
    const uint4 x = *reinterpret_cast<const uint4*>(inp + i);
    uint4 d = *reinterpret_cast<const uint4*>(dout + i);
    const uint32_t* wx = reinterpret_cast<const uint32_t*>(&x);
    uint32_t* wd = reinterpret_cast<uint32_t*>(&d);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
        const float lo = gelu_grad(__uint_as_float(wx[e] << 16)) * __uint_as_float(wd[e] << 16);
        const float hi = gelu_grad(__uint_as_float(wx[e] & 0xffff0000u)) * __uint_as_float(wd[e] & 0xffff0000u);
        wd[e] = (uint32_t)twofour::f32_to_bf16(lo) | ((uint32_t)twofour::f32_to_bf16(hi) << 16);
    }
    *reinterpret_cast<uint4*>(dinp + i) = d;
}

// Stage 1 of a column sum over N rows of dout (N x C bf16, C % 8 == 0): partial[chunk][c] = sum
// of the chunk's rows in order. With x != null (LayerNorm), also partial[chunks + chunk][c] = sum
// of dout * (x - mean) * rstd. Block (8, 32): 64 columns (8 a thread, 16-byte loads) x 32 row
// lanes; grid (ceil(C / 64), chunks).
extern "C" __global__ void __launch_bounds__(256) gpt_colsum_partial(float* __restrict__ partial, const bf16* __restrict__ dout, const bf16* __restrict__ x, const float* __restrict__ mean, const float* __restrict__ rstd, int N, int C, int rows_per_chunk) {
    __shared__ float s_db[32][65], s_dw[32][65];
    const int c = blockIdx.x * 64 + threadIdx.x * 8;
    const int chunk = blockIdx.y, chunks = gridDim.y;
    const int r0 = chunk * rows_per_chunk, r1 = min(N, r0 + rows_per_chunk);
    float db[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f}, dw[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    if (c < C) {
        for (int r = r0 + threadIdx.y; r < r1; r += 32) {
            const uint4 dv = *reinterpret_cast<const uint4*>(dout + (long long)r * C + c);
            const uint32_t* wd = reinterpret_cast<const uint32_t*>(&dv);
            float d[8];
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                d[e] = __uint_as_float(e & 1 ? wd[e / 2] & 0xffff0000u : wd[e / 2] << 16);
                db[e] += d[e];
            }
            if (x) {
                const uint4 xv = *reinterpret_cast<const uint4*>(x + (long long)r * C + c);
                const uint32_t* wx = reinterpret_cast<const uint32_t*>(&xv);
                const float m = mean[r], rs = rstd[r];
#pragma unroll
                for (int e = 0; e < 8; ++e) dw[e] += d[e] * (__uint_as_float(e & 1 ? wx[e / 2] & 0xffff0000u : wx[e / 2] << 16) - m) * rs;
            }
        }
    }
#pragma unroll
    for (int e = 0; e < 8; ++e) {
        s_db[threadIdx.y][threadIdx.x * 8 + e] = db[e];
        s_dw[threadIdx.y][threadIdx.x * 8 + e] = dw[e];
    }
    __syncthreads();
    const int tid = threadIdx.y * 8 + threadIdx.x;
    if (tid < 64 && blockIdx.x * 64 + tid < C) {
        float sb = 0.f, sw = 0.f;
        for (int y = 0; y < 32; ++y) {
            sb += s_db[y][tid];
            sw += s_dw[y][tid];
        }
        partial[(long long)chunk * C + blockIdx.x * 64 + tid] = sb;
        if (x) partial[(long long)(chunks + chunk) * C + blockIdx.x * 64 + tid] = sw;
    }
}

// Stage 2: db[c] += sum over chunks in order (and dw[c] likewise when dw != null).
extern "C" __global__ void gpt_colsum_finalize(float* __restrict__ db, float* __restrict__ dw, const float* __restrict__ partial, int chunks, int C) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float sb = 0.f, sw = 0.f;
    for (int k = 0; k < chunks; ++k) sb += partial[(long long)k * C + c];
    db[c] += sb;
    if (dw) {
        for (int k = 0; k < chunks; ++k) sw += partial[(long long)(chunks + k) * C + c];
        dw[c] += sw;
    }
}

// Stage 2 for many chunks (the fused LayerNorm backward writes one per block, a few hundred): a
// 32 x 32 block sums 32 columns, thread row y the chunks y, y + 32, ... in order, then row 0 adds
// the 32 partial sums in order: a fixed order (reproducible) with 32x more loads in flight than
// gpt_colsum_finalize's one thread per column.
extern "C" __global__ void __launch_bounds__(1024) gpt_colsum_finalize_wide(float* __restrict__ db, float* __restrict__ dw, const float* __restrict__ partial, int chunks, int C) {
    __shared__ float s[2][32][33];
    const int c = blockIdx.x * 32 + threadIdx.x;
    float sb = 0.f, sw = 0.f;
    if (c < C)
        for (int k = threadIdx.y; k < chunks; k += 32) {
            sb += partial[(long long)k * C + c];
            if (dw) sw += partial[(long long)(chunks + k) * C + c];
        }
    s[0][threadIdx.y][threadIdx.x] = sb;
    s[1][threadIdx.y][threadIdx.x] = sw;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        float tb = 0.f, tw = 0.f;
        for (int y = 0; y < 32; ++y) {
            tb += s[0][y][threadIdx.x];
            tw += s[1][y][threadIdx.x];
        }
        db[c] += tb;
        if (dw) dw[c] += tw;
    }
}
