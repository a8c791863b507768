//! MVUE 2:4 sparsification (Chmiel et al. 2023, "Minimum variance unbiased N:M sparsity for the
//! neural gradients"; used on dY^T by Hu et al. 2024, section 5): in each group of four values a
//! keep two, element i with inclusion probability p_i, and rescale it to a_i / p_i, so that
//! E[S(a)] = a and the variance is the smallest any unbiased 2:4 estimator can have.
//!
//! p_i = 2|a_i| / sum|a| when no element exceeds half the sum; otherwise the largest is kept with
//! p = 1 and the remaining one keep is spread over the other three in proportion to |a|. Two
//! distinct indices with exactly these marginals are drawn by systematic sampling: one uniform u,
//! cumulative sums of p over the group, keep the i whose interval contains u or u + 1.
//!
//! Everything is computed without a division, in an order the GPU kernel repeats bit for bit: the
//! probabilities are weights w_i over a half-total H (p_i = w_i / H, the weights sum to 2H), the
//! systematic draw compares u H and u H + H with the running sums of w, and a kept element's
//! a_i / p_i is, exactly in real arithmetic, sign(a_i) H (or a_i itself for the element kept
//! with p = 1).
//! The uniform of group `g` (groups numbered row-major over the rows x cols/4 grid) at optimizer
//! step `step` is `unit_f32(philox4x32([g/4 lo, g/4 hi, step, 0x6d767565], seed)[g % 4])`: one
//! Philox call serves four consecutive groups.

use super::philox::{philox4x32, unit_f32};
use crate::error::unsupported;
use crate::Result;
use half::bf16;

/// The sampling weights of one group: weights w (summing to 2h), the half-total h, and the index
/// kept with probability 1 (4 when there is none). Inclusion probability p_i = w_i / h.
pub fn group_weights(a: [f32; 4]) -> ([f32; 4], f32, usize) {
    let m = a.map(f32::abs);
    let sum: f32 = m.iter().sum();
    if sum == 0.0 {
        return ([1.0; 4], 2.0, 4);
    }
    let big = (0..4).fold(0, |b, i| if m[i] > m[b] { i } else { b });
    if 2.0 * m[big] <= sum {
        return (m, 0.5 * sum, 4);
    }
    // The largest is kept for sure (weight h of a total 2h); the second keep is spread over the
    // other three in proportion to |a| (evenly when they are all zero).
    let rest = sum - m[big];
    let (mut w, h) = if rest == 0.0 { ([1.0 / 3.0; 4], 1.0) } else { (m, rest) };
    w[big] = h;
    (w, h, big)
}

/// Inclusion probabilities of one group (they sum to 2; each in [0, 1]): w_i / h.
pub fn inclusion_probabilities(a: [f32; 4]) -> [f32; 4] {
    let (w, h, _) = group_weights(a);
    w.map(|x| x / h)
}

/// The two kept indices (ascending) for weights `w` with half-total `h` and uniform `u` in [0, 1):
/// the intervals of the running sums of w that contain u h and u h + h.
pub fn systematic_pick(w: [f32; 4], h: f32, u: f32) -> (usize, usize) {
    let (v0, v1) = (u * h, u * h + h);
    let mut kept = [4usize; 2];
    let mut n = 0;
    let mut lo = 0f32;
    for (i, &wi) in w.iter().enumerate() {
        let hi = lo + wi;
        let hit = (lo <= v0 && v0 < hi) || (lo <= v1 && v1 < hi);
        if hit && n < 2 {
            kept[n] = i;
            n += 1;
        }
        lo = hi;
    }
    // Rounding can leave the intervals short of 2h: fill up with the highest indices not yet kept.
    while n < 2 {
        kept[n] = (0..4).rev().find(|i| !kept[..n].contains(i)).unwrap_or(3);
        n += 1;
    }
    if kept[0] > kept[1] {
        kept.swap(0, 1);
    }
    (kept[0], kept[1])
}

/// `systematic_pick` as the GPU computes it (cuda/mvue24.cuh, `mvue::pick`): with w >= 0 the
/// running sums c_0 <= .. <= c_3 split [0, c_3) into intervals, and v lies in interval
/// #{i : c_i <= v} when that count is below 4, so the picks come from two counts instead of a
/// walk. Non-finite sums fall back to the walk. Equal to `systematic_pick` for every input (the
/// test `pick_by_counting_is_the_walk` checks it); kept here so that claim is tested on the CPU.
pub fn systematic_pick_counting(w: [f32; 4], h: f32, u: f32) -> (usize, usize) {
    let (v0, v1) = (u * h, u * h + h);
    let c0 = 0.0 + w[0];
    let c1 = c0 + w[1];
    let c2 = c1 + w[2];
    let c3 = c2 + w[3];
    if !c3.is_finite() || !v1.is_finite() {
        return systematic_pick(w, h, u);
    }
    let count = |v: f32| [c0, c1, c2, c3].iter().filter(|&&c| c <= v).count();
    let (j0, j1) = (count(v0), count(v1));
    if j0 == 4 {
        (2, 3)
    } else if j1 == 4 || j1 == j0 {
        (if j0 == 3 { 2 } else { j0 }, 3)
    } else {
        (j0, j1)
    }
}

/// The unbiased value of kept element i: a_i / p_i, which is a_i for the element kept for sure
/// and sign(a_i) h for the others (0 where a_i is).
pub fn kept_value(a: f32, i: usize, h: f32, big: usize) -> f32 {
    if i == big {
        a
    } else if a == 0.0 {
        0.0
    } else {
        h.copysign(a)
    }
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
        let (w, h, big) = group_weights(v);
        let (i0, i1) = systematic_pick(w, h, uniform(seed, step, g));
        for i in [i0, i1] {
            dst[i] = kept_value(v[i], i, h, big);
            mask.set(g * 4 / cols, (g * 4) % cols + i, true);
        }
    }
    Ok((out, mask))
}

/// MVUE 2:4 rounded to bf16: what the GPU kernel feeds the sparse GEMM.
pub fn mvue24(a: &[bf16], rows: usize, cols: usize, seed: u64, step: u32) -> Result<Vec<bf16>> {
    Ok(mvue24_f32(a, rows, cols, seed, step)?.into_iter().map(bf16::from_f32).collect())
}
