//! Philox4x32-10 (Salmon et al., SC'11 "Parallel random numbers: as easy as 1, 2, 3"): a
//! counter-based generator, so a (seed, counter) pair gives the same numbers on the CPU and on
//! every GPU thread without state. The GPU kernels implement the same function.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Ten rounds of Philox4x32 on `counter` with `key`.
pub fn philox4x32(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (counter, key);
    for _ in 0..10 {
        let p0 = (M0 as u64) * (c[0] as u64);
        let p1 = (M1 as u64) * (c[2] as u64);
        c = [((p1 >> 32) as u32) ^ c[1] ^ k[0], p1 as u32, ((p0 >> 32) as u32) ^ c[3] ^ k[1], p0 as u32];
        k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
    }
    c
}

/// A uniform f32 in [0, 1) from the top 24 bits of a word (exact on CPU and GPU).
pub fn unit_f32(x: u32) -> f32 {
    (x >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// `n` standard-normal-ish bf16 values (Box-Muller on Philox), for tests and demos.
pub fn normal_bf16(seed: u64, n: usize) -> Vec<half::bf16> {
    let key = [seed as u32, (seed >> 32) as u32];
    (0..n)
        .map(|i| {
            let r = philox4x32([i as u32, (i >> 32) as u32, 0x6e6f_726d, 0], key);
            let u1 = 1.0 - unit_f32(r[0]) as f64; // (0, 1]
            let u2 = unit_f32(r[1]) as f64;
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            half::bf16::from_f64(z)
        })
        .collect()
}
