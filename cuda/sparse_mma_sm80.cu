// The simplest correct 2:4 sparse GEMM on the warp-level sparse tensor-core instruction
// (mma.sp::ordered_metadata m16n8k32, PTX ISA 9.7.14.6): one warp per 16x8 tile of D, operands
// read straight from global memory. It is the executable definition of the Sparse24 layout (the
// metadata register each lane passes is one word of Sparse24::meta, untouched) and the check the
// fast kernels are compared against on the GPU. Not tuned: speed lives in the wgmma.sp kernel.
//
// D (M x N, fp32, row-major) = A (M x K, 2:4 along K, compressed) * B (K x N, stored K-major:
// element (k, n) at b[n * K + k], i.e. the X of a linear layer Y = X W^T).
#include "common.cuh"
#include "sm80_ptx.cuh"

__device__ __forceinline__ uint32_t ld32(const uint16_t* p) {
    return *reinterpret_cast<const uint32_t*>(p);
}

// meta_variant 0 is the documented layout. 1 re-reads the same words under the alternative
// reading of the PTX ISA figure (thread 4g holds all 32 columns of row g, thread 4g+1 of row g+8);
// the layout test runs both so that a wrong reading is reported by name, not just as a mismatch.
extern "C" __global__ void sparse_mma_sm80_naive(const uint16_t* __restrict__ a_vals,
                                                 const uint32_t* __restrict__ a_meta,
                                                 const uint16_t* __restrict__ b,
                                                 float* __restrict__ d, int M, int N, int K,
                                                 int meta_variant) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int rb = blockIdx.y, n0 = blockIdx.x * 8;
    const int chunks = K / 32, kh = K / 2;
    const int r0 = rb * 16 + g, r1 = r0 + 8;
    float c[4] = {0.f, 0.f, 0.f, 0.f};
    for (int kc = 0; kc < chunks; ++kc) {
        const uint16_t* a0 = a_vals + (long long)r0 * kh + kc * 16 + 2 * t;
        const uint16_t* a1 = a_vals + (long long)r1 * kh + kc * 16 + 2 * t;
        uint32_t ra[4] = {ld32(a0), ld32(a1), ld32(a0 + 8), ld32(a1 + 8)};
        const uint16_t* bp = b + (long long)(n0 + g) * K + kc * 32 + 2 * t;
        uint32_t rb_[4] = {ld32(bp), ld32(bp + 8), ld32(bp + 16), ld32(bp + 24)};
        const uint32_t* mw = a_meta + ((long long)rb * chunks + kc) * 16 + g * 2;
        uint32_t e = 0;
        if (t < 2) {
            if (meta_variant == 0) {
                e = mw[t];
            } else {
                const uint32_t w0 = mw[0], w1 = mw[1];
                e = t == 0 ? ((w0 & 0xffffu) | (w1 << 16)) : ((w0 >> 16) | (w1 & 0xffff0000u));
            }
        }
        asm volatile(
            "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 "
            "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, 0x0;\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(ra[0]), "r"(ra[1]), "r"(ra[2]), "r"(ra[3]), "r"(rb_[0]), "r"(rb_[1]),
              "r"(rb_[2]), "r"(rb_[3]), "r"(e));
    }
    d[(long long)r0 * N + n0 + 2 * t] = c[0];
    d[(long long)r0 * N + n0 + 2 * t + 1] = c[1];
    d[(long long)r1 * N + n0 + 2 * t] = c[2];
    d[(long long)r1 * N + n0 + 2 * t + 1] = c[3];
#endif
}

// ---------------------------------------------------------------------------------------------
// The fast sm_80 path: the same mma.sp m16n8k32 fed from shared memory by ldmatrix, through a
// 3-stage cp.async pipeline (CUTLASS's sm80 multistage structure, written small), with the
// options of the Hopper kernel: B K-major or N-major, D bf16 or f32, row- or column-major,
// bias[m] and beta * D.
//
// CTA tile 128 (M) x 128 (N) x 64 (dense K), 8 warps as 2 (M) x 4 (N), each warp 64 x 32:
// 4 m16 tiles x 4 n8 tiles, 16 mma.sp per k32 step. Per stage in shared memory:
//   A values: 128 rows x 32 kept values (bf16), rows padded to 40 (80 bytes: ldmatrix's 8 rows
//             land in 8 distinct bank groups);
//   A metadata: the 2 (k32 chunks) x 8 (m16 blocks) x 16 words of the tile, in Sparse24's
//             register order, so lane 4g + t (t < 2) reads its word at [chunk][block][2g + t];
//   B, K-major (B^T's rows, the X of Y = X W^T): 128 (n) rows x 64 (k), rows padded to 72;
//   B, N-major (B's rows, the X of dW = S(dY)^T X): 64 (k) rows x 128 (n), rows padded to 136.
// Fragments (PTX ISA 9.7.14.6.1, .m16n8k32 with bf16): A is the 16 x 16 block of kept values,
// laid out as the dense m16n8k16 A fragment (one ldmatrix.x4); B (k32 x n8) is four 8 x 8 blocks
// along k: from K-major rows with ldmatrix.x4, from N-major rows with ldmatrix.x4.trans (the
// transpose of an 8 k x 8 n block is the n-row fragment the instruction wants).
namespace sm80 {

constexpr int BM = 128, BN = 128, BK = 64, STAGES = 3;
constexpr int LDA = 40, LDB = 72, LDBN = 136;
constexpr int A_ELEMS = BM * LDA, B_ELEMS = BN * LDB, META_WORDS = (BK / 32) * (BM / 16) * 16;
static_assert(BK * LDBN <= B_ELEMS, "the N-major B stage fits the K-major one's space");
constexpr int STAGE_BYTES = (A_ELEMS + B_ELEMS) * 2 + META_WORDS * 4;

using sm80ptx::cp_async16;
using sm80ptx::cp_async_commit;
using sm80ptx::cp_async_wait;
using sm80ptx::ldsm_x4;
using sm80ptx::ldsm_x4_t;

struct Epilogue {
    const float* bias;  // M entries or null
    float beta;         // D = acc (+ bias) + beta * D_old when beta != 0
    int d_col_major;    // 0: D[m * N + n], 1: D[n * M + m]
    int d_f32;          // 0: bf16, 1: f32
};

// D[r][c] = v (+ bias[r]) (+ beta * D[r][c]) in D's layout and type.
__device__ __forceinline__ void store_d(void* d, const Epilogue& e, int M, int N, int r, int c, float v) {
    if (e.bias) v += e.bias[r];
    const long long off = e.d_col_major ? (long long)c * M + r : (long long)r * N + c;
    if (e.d_f32) {
        float* p = static_cast<float*>(d) + off;
        *p = e.beta != 0.f ? v + e.beta * *p : v;
    } else {
        __nv_bfloat16* p = static_cast<__nv_bfloat16*>(d) + off;
        *p = __float2bfloat16_rn(e.beta != 0.f ? v + e.beta * __bfloat162float(*p) : v);
    }
}

// grid (ceil(N / 128), ceil(M / 128)), 256 threads, dynamic smem STAGES * STAGE_BYTES.
// Requires K % 64 == 0 and N % 8 == 0 (checked by the host); rows past M and columns past N are
// zero-filled on load and not stored.
template <int B_MN>
__device__ __forceinline__ void gemm(const uint16_t* __restrict__ a_vals, const uint32_t* __restrict__ a_meta,
                                     const uint16_t* __restrict__ b, void* __restrict__ d, const Epilogue& epi, int M,
                                     int N, int K) {
    extern __shared__ __align__(128) unsigned char sm80_smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const int wm = warp >> 2, wn = warp & 3;  // warp tile: rows 64 wm.., columns 32 wn..
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int kh = K / 2, chunks = K / 32, ktiles = K / BK;

    auto stage_a = [&](int s) { return reinterpret_cast<uint16_t*>(sm80_smem + s * STAGE_BYTES); };
    auto stage_b = [&](int s) { return stage_a(s) + A_ELEMS; };
    auto stage_m = [&](int s) { return reinterpret_cast<uint32_t*>(stage_b(s) + B_ELEMS); };

    // One k tile (64 dense K = 32 kept values) into stage s: A 128 x 32 values (512 x 16 B),
    // B 128 x 64 either way (1024 x 16 B), metadata 256 words (64 x 16 B).
    auto load = [&](int kt, int s) {
        uint16_t* sa = stage_a(s);
        uint16_t* sb = stage_b(s);
        uint32_t* sm = stage_m(s);
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int idx = tid + i * 256, r = idx >> 2, c = (idx & 3) * 8;
            const bool ok = m0 + r < M;
            cp_async16(sa + r * LDA + c, a_vals + (long long)(ok ? m0 + r : 0) * kh + kt * 32 + c, ok);
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int idx = tid + i * 256;
            if (B_MN) {  // k row r (of 64), n columns c .. c + 8 (N % 8 == 0: a chunk is wholly in or out)
                const int r = idx >> 4, c = (idx & 15) * 8;
                const bool ok = n0 + c < N;
                cp_async16(sb + r * LDBN + c, b + (long long)(kt * BK + r) * N + (ok ? n0 + c : 0), ok);
            } else {     // n row r (of 128), k columns c .. c + 8
                const int r = idx >> 3, c = (idx & 7) * 8;
                const bool ok = n0 + r < N;
                cp_async16(sb + r * LDB + c, b + (long long)(ok ? n0 + r : 0) * K + kt * BK + c, ok);
            }
        }
        if (tid < 64) {
            // word block (chunk cc, m16 block bb) of the tile: 16 words = 4 x 16 B.
            const int cc = tid >> 5, bb = (tid >> 2) & 7, q = tid & 3;
            const int rb = m0 / 16 + bb;
            const bool ok = rb * 16 < M;
            cp_async16(sm + (cc * 8 + bb) * 16 + q * 4, a_meta + ((long long)(ok ? rb : 0) * chunks + kt * 2 + cc) * 16 + q * 4, ok);
        }
    };

    float acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.f;

#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < ktiles) load(s, s);
        cp_async_commit();
    }
    for (int kt = 0; kt < ktiles; ++kt) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // stage kt % STAGES is in; every warp is done with the stage refilled next
        if (kt + STAGES - 1 < ktiles) load(kt + STAGES - 1, (kt + STAGES - 1) % STAGES);
        cp_async_commit();
        const int s = kt % STAGES;
        const uint16_t* sa = stage_a(s);
        const uint16_t* sb = stage_b(s);
        const uint32_t* sm = stage_m(s);
#pragma unroll
        for (int cc = 0; cc < 2; ++cc) {  // two k32 steps per tile
            uint32_t bf[4][4];
#pragma unroll
            for (int j = 0; j < 4; ++j) {  // n8 tile j: columns wn*32 + 8j.., k 32cc + 8q (q = lane / 8)
                if (B_MN)
                    ldsm_x4_t(bf[j], sb + (cc * 32 + (lane >> 3) * 8 + (lane & 7)) * LDBN + wn * 32 + j * 8);
                else
                    ldsm_x4(bf[j], sb + (wn * 32 + j * 8 + (lane & 7)) * LDB + cc * 32 + (lane >> 3) * 8);
            }
#pragma unroll
            for (int i = 0; i < 4; ++i) {  // m16 tile i: rows wm*64 + 16i..
                uint32_t a[4];
                const int mi = lane >> 3;
                ldsm_x4(a, sa + (wm * 64 + i * 16 + (lane & 7) + (mi & 1) * 8) * LDA + cc * 16 + (mi >> 1) * 8);
                const uint32_t e = t < 2 ? sm[(cc * 8 + wm * 4 + i) * 16 + 2 * g + t] : 0u;
#pragma unroll
                for (int j = 0; j < 4; ++j)
                    asm volatile(
                        "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 "
                        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, 0x0;\n"
                        : "+f"(acc[i][j][0]), "+f"(acc[i][j][1]), "+f"(acc[i][j][2]), "+f"(acc[i][j][3])
                        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(bf[j][0]), "r"(bf[j][1]), "r"(bf[j][2]), "r"(bf[j][3]), "r"(e));
            }
        }
    }
    cp_async_wait<0>();
    // Accumulator fragment: acc[i][j] = rows r, r + 8, columns c, c + 1 of the warp's (i, j) tile.
    const bool plain = epi.d_f32 && !epi.d_col_major && !epi.bias && epi.beta == 0.f;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int r = m0 + wm * 64 + i * 16 + g, c = n0 + wn * 32 + j * 8 + 2 * t;
            if (c >= N) continue;  // N % 8 == 0 (host check): c + 1 < N too
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int rr = r + 8 * h;
                if (rr >= M) continue;
                if (plain) {  // the common f32 row-major case: one 8-byte store
                    *reinterpret_cast<float2*>(static_cast<float*>(d) + (long long)rr * N + c) = make_float2(acc[i][j][2 * h], acc[i][j][2 * h + 1]);
                } else {
                    store_d(d, epi, M, N, rr, c, acc[i][j][2 * h]);
                    store_d(d, epi, M, N, rr, c + 1, acc[i][j][2 * h + 1]);
                }
            }
        }
}

}  // namespace sm80

#define TWOFOUR_SPARSE_GEMM_SM80(B_MN, SUFFIX)                                                                     \
    extern "C" __global__ void __launch_bounds__(256) sparse_gemm_sm80_##SUFFIX(                                   \
        const uint16_t* __restrict__ a_vals, const uint32_t* __restrict__ a_meta, const uint16_t* __restrict__ b,   \
        void* __restrict__ d, const float* __restrict__ bias, float beta, int M, int N, int K, int d_col_major,     \
        int d_f32) {                                                                                               \
        TWOFOUR_SM80_BODY(sm80::gemm<B_MN>(a_vals, a_meta, b, d, sm80::Epilogue{bias, beta, d_col_major, d_f32}, M, N, K)); \
    }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define TWOFOUR_SM80_BODY(x) x
#else
#define TWOFOUR_SM80_BODY(x)
#endif
TWOFOUR_SPARSE_GEMM_SM80(0, k)
TWOFOUR_SPARSE_GEMM_SM80(1, n)
