// Host check that two versions of MVUE's per-group arithmetic (cuda/mvue24.cuh, between the
// `host-check begin` / `host-check end` lines) give the same kept values, metadata nibble and mask
// bits, bit for bit, on random and hand-picked groups. Built and run by scripts/mvue-equiv.sh:
// old.inc / new.inc are the two extracts. The GPU tests compare the kernel with the Rust reference;
// this lets an arithmetic rewrite be checked against the last GPU-tested version without a GPU.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <type_traits>

#include "mvue_shim.h"

namespace v_old {
#include "old.inc"
}
namespace v_new {
#include "new.inc"
}

static float bf16(uint16_t b) { return __uint_as_float((uint32_t)b << 16); }


int main(int argc, char** argv) {
    const long long n = argc > 1 ? std::atoll(argv[1]) : 20000000;
    std::mt19937_64 rng(0x6d767565);
    // Hand-picked values: zeros of both signs, subnormals, the smallest and largest normals, 1,
    // ties, inf and NaN, as bf16 bit patterns.
    const uint16_t special[] = {0x0000, 0x8000, 0x0001, 0x8001, 0x007f, 0x0080, 0x3f80, 0xbf80, 0x4000, 0x3f00,
                                0x7f7f, 0xff7f, 0x7f80, 0xff80, 0x7fc0, 0x3f81, 0x3f7f, 0x4040, 0x0100, 0x4b00};
    std::normal_distribution<float> normal(0.f, 1.f);
    long long bad = 0, rare = 0;
    for (long long i = 0; i < n; ++i) {
        float a[4];
        const int kind = (int)(i % 4);
        for (int r = 0; r < 4; ++r) {
            const uint64_t x = rng();
            uint16_t b;
            if (kind == 0) b = (uint16_t)x;                                        // any bit pattern
            else if (kind == 1) b = special[x % (sizeof special / sizeof special[0])];
            else if (kind == 2) b = f32_to_bf16(normal(rng) * (x & 1 ? 1e-3f : 1.f));  // dY-like
            else b = (x & 3) == 0 ? 0 : f32_to_bf16(normal(rng));                 // sparse-ish
            a[r] = bf16(b);
        }
        const uint32_t ru = (uint32_t)rng();
        const float u = (i % 97 == 0) ? (float)(ru >> 31 ? 0u : 0xffffffu) * (1.0f / 16777216.0f)  // u = 0, 1 - 2^-24
                                      : (float)(ru >> 8) * (1.0f / 16777216.0f);
        uint32_t op, on, ob, np, nn, nb;
        outputs(v_old::group_kept(a, u), op, on, ob);
        outputs(v_new::group_kept(a, u), np, nn, nb);
        float m = 0.f;
        for (int r = 0; r < 4; ++r) m += std::fabs(a[r]);
        rare += !(std::isfinite(m)) || m == 0.f;
        if (op != np || on != nn || ob != nb) {
            if (++bad <= 10)
                std::printf("differ: a = %a %a %a %a u = %a: old %08x %x %x, new %08x %x %x\n", a[0], a[1], a[2], a[3], u, op, on, ob, np, nn, nb);
        }
    }
    std::printf("%lld groups (%lld with a zero or non-finite sum): %lld differ\n", n, rare, bad);
    return bad != 0;
}
