//! MVUE 2:4 sparsification (Chmiel et al. 2023, "Minimum variance unbiased N:M sparsity for the
//! neural gradients"; used on dY^T by Hu et al. 2024, section 5): in each group of four values a
//! keep two, element i with inclusion probability p_i, and rescale it to a_i / p_i, so that
//! E[S(a)] = a and the variance is the smallest any unbiased 2:4 estimator can have.
//!
//! p_i = 2|a_i| / sum|a| when no element exceeds half the sum; otherwise the largest is kept with
//! p = 1 and the remaining one keep is spread over the other three in proportion to |a|. Two
//! distinct indices with exactly these marginals are drawn by systematic sampling: one uniform u,
//! cumulative sums of p over the group, keep the i whose interval contains u or u + 1.
//! The uniform of group `g` (groups numbered row-major over the rows x cols/4 grid) at optimizer
//! step `step` is `unit_f32(philox4x32([g/4 lo, g/4 hi, step, 0x6d767565], seed)[g % 4])`: one
//! Philox call serves four consecutive groups.

use super::philox::{philox4x32, unit_f32};
use crate::error::unsupported;
use crate::Result;
use half::bf16;

/// Inclusion probabilities of one group (they sum to 2; each in [0, 1]).
pub fn inclusion_probabilities(a: [f32; 4]) -> [f32; 4] {
    let m = a.map(f32::abs);
    let sum: f32 = m.iter().sum();
    if sum == 0.0 {
        return [0.5; 4];
    }
    let big = (0..4).fold(0, |b, i| if m[i] > m[b] { i } else { b });
    if 2.0 * m[big] <= sum {
        return m.map(|x| 2.0 * x / sum);
    }
    let rest = sum - m[big];
    let mut p = if rest == 0.0 { [1.0 / 3.0; 4] } else { m.map(|x| x / rest) };
    p[big] = 1.0;
    p
}

/// The two kept indices (ascending) for probabilities `p` and uniform `u` in [0, 1).
pub fn systematic_pick(p: [f32; 4], u: f32) -> (usize, usize) {
    let mut kept = [4usize; 2];
    let mut n = 0;
    let mut lo = 0f32;
    for (i, &pi) in p.iter().enumerate() {
        let hi = lo + pi;
        let hit = (lo <= u && u < hi) || (lo <= u + 1.0 && u + 1.0 < hi);
        if hit && n < 2 {
            kept[n] = i;
            n += 1;
        }
        lo = hi;
    }
    // Rounding can leave the intervals short of 2.0: fill up with the highest indices not yet kept.
    while n < 2 {
        kept[n] = (0..4).rev().find(|i| !kept[..n].contains(i)).unwrap_or(3);
        n += 1;
    }
    if kept[0] > kept[1] {
        kept.swap(0, 1);
    }
    (kept[0], kept[1])
}

fn uniform(seed: u64, step: u32, group: usize) -> f32 {
    let c = group / 4;
    let r = philox4x32([c as u32, (c >> 32) as u32, step, 0x6d76_7565], [seed as u32, (seed >> 32) as u32]);
    unit_f32(r[group % 4])
}

/// MVUE 2:4 along the rows of a row-major rows x cols matrix, in f32 (before rounding to bf16):
/// the unbiased estimate. Dropped elements are 0.
pub fn mvue24_f32(a: &[bf16], rows: usize, cols: usize, seed: u64, step: u32) -> Result<Vec<f32>> {
    Ok(mvue24_with_mask(a, rows, cols, seed, step)?.0)
}

/// MVUE 2:4 in f32 and the mask of the kept positions (kept values can be 0 when the input is).
pub fn mvue24_with_mask(a: &[bf16], rows: usize, cols: usize, seed: u64, step: u32) -> Result<(Vec<f32>, crate::BitMask)> {
    if cols % 4 != 0 || a.len() != rows * cols {
        return Err(unsupported("mvue24", format!("need cols a multiple of 4; got {} elements for {rows} x {cols}", a.len())));
    }
    let mut out = vec![0f32; a.len()];
    let mut mask = crate::BitMask::zeros(rows, cols);
    for (g, (src, dst)) in a.chunks_exact(4).zip(out.chunks_exact_mut(4)).enumerate() {
        let v = [src[0].to_f32(), src[1].to_f32(), src[2].to_f32(), src[3].to_f32()];
        let p = inclusion_probabilities(v);
        let (i0, i1) = systematic_pick(p, uniform(seed, step, g));
        for i in [i0, i1] {
            dst[i] = if p[i] > 0.0 { v[i] / p[i] } else { 0.0 };
            mask.set(g * 4 / cols, (g * 4) % cols + i, true);
        }
    }
    Ok((out, mask))
}

/// MVUE 2:4 rounded to bf16: what the GPU kernel feeds the sparse GEMM.
pub fn mvue24(a: &[bf16], rows: usize, cols: usize, seed: u64, step: u32) -> Result<Vec<bf16>> {
    Ok(mvue24_f32(a, rows, cols, seed, step)?.into_iter().map(bf16::from_f32).collect())
}
