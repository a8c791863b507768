//! The transposable 2:4 mask (Hu et al. 2024, section 4.2): for every 4x4 block, of the 90
//! patterns with exactly two ones in each row and each column, the one that keeps the largest L1.
//! Computed the paper's way: a stride-4 "convolution" of |W| with the 90 pattern masks, i.e. the
//! product P (90 x 16) x B (16 x blocks) of the pattern matrix with the flattened |W| blocks,
//! then an argmax per column.
//!
//! Tie rule (the GPU kernel must match it): the first pattern in `patterns()` order among those
//! with the maximal score. Scores are f32 sums in the fixed order of `score` below: the two kept
//! magnitudes of each row summed first, then the four row sums from row 0 to row 3 (so the GPU can
//! reuse the 6 pair sums of each row across the 90 patterns and still match bit for bit).

use crate::bitmask::BitMask;
use crate::error::{invalid, unsupported};
use crate::Result;
use half::bf16;
use std::sync::OnceLock;

/// The six ways to keep two of four, in lexicographic order.
pub const PAIRS: [(usize, usize); 6] = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)];

/// The 90 transposable patterns as 16-bit masks, bit `4 r + c` = element (r, c) of the block kept.
/// Order: row choices (from `PAIRS`) lexicographic, row 0 most significant, keeping those whose
/// columns also hold exactly two ones.
pub fn patterns() -> &'static [u16; 90] {
    static P: OnceLock<[u16; 90]> = OnceLock::new();
    P.get_or_init(|| {
        let mut out = [0u16; 90];
        let mut n = 0;
        for a in PAIRS {
            for b in PAIRS {
                for c in PAIRS {
                    for d in PAIRS {
                        let rows = [a, b, c, d];
                        let mut bits = 0u16;
                        for (r, (i, j)) in rows.iter().enumerate() {
                            bits |= 1 << (4 * r + i) | 1 << (4 * r + j);
                        }
                        let cols_ok = (0..4).all(|c| (0..4).filter(|r| bits >> (4 * r + c) & 1 == 1).count() == 2);
                        if cols_ok {
                            out[n] = bits;
                            n += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(n, 90, "there are exactly 90 transposable 4x4 patterns");
        out
    })
}

/// Kept L1 of pattern `p` on a block of 16 magnitudes (row-major): the product P[p] . block, summed
/// as ((r0 + r1) + r2) + r3 where r_i = (the kept magnitude of row i with the lower column) + (the
/// other kept one).
pub fn score(p: u16, block: &[f32; 16]) -> f32 {
    let row = |r: usize| {
        let kept: Vec<f32> = (0..4).filter(|c| p >> (4 * r + c) & 1 == 1).map(|c| block[4 * r + c]).collect();
        kept[0] + kept[1]
    };
    ((row(0) + row(1)) + row(2)) + row(3)
}

/// The best pattern for one block: (index into `patterns()`, score).
pub fn best_pattern(block: &[f32; 16]) -> (usize, f32) {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, &p) in patterns().iter().enumerate() {
        let s = score(p, block);
        if s > best.1 {
            best = (i, s);
        }
    }
    best
}

/// The transposable mask of a row-major rows x cols matrix (both multiples of 4), and the chosen
/// pattern index of every block (row-major over blocks).
pub fn transposable_mask(w: &[bf16], rows: usize, cols: usize) -> Result<(BitMask, Vec<u8>)> {
    if rows % 4 != 0 || cols % 4 != 0 || rows == 0 || cols == 0 || w.len() != rows * cols {
        return Err(unsupported(
            "transposable_mask",
            format!("need rows and cols multiples of 4 (4x4 blocks); got {} elements for {rows} x {cols}", w.len()),
        ));
    }
    let mut mask = BitMask::zeros(rows, cols);
    let mut choice = Vec::with_capacity(rows * cols / 16);
    for br in 0..rows / 4 {
        for bc in 0..cols / 4 {
            let mut block = [0f32; 16];
            for r in 0..4 {
                for c in 0..4 {
                    block[4 * r + c] = w[(4 * br + r) * cols + 4 * bc + c].to_f32().abs();
                }
            }
            if block.iter().any(|v| v.is_nan()) {
                return Err(invalid("transposable_mask", format!("NaN in the 4x4 block at ({}, {})", 4 * br, 4 * bc)));
            }
            let (i, _) = best_pattern(&block);
            choice.push(i as u8);
            let p = patterns()[i];
            for k in 0..16 {
                if p >> k & 1 == 1 {
                    mask.set(4 * br + k / 4, 4 * bc + k % 4, true);
                }
            }
        }
    }
    Ok((mask, choice))
}

/// The greedy 4x4 heuristic (Hubara et al. 2021's 2-approximation, also what PyTorch's
/// `_sparse_semi_structured_tile` does): visit a block's entries from the largest magnitude down
/// (ties to the lower index) and keep one while its row and its column each hold fewer than two.
/// It can end with fewer than eight kept (then the block is not 2:4 in every row). For comparison
/// with the optimal mask only.
pub fn greedy_mask(w: &[bf16], rows: usize, cols: usize) -> Result<BitMask> {
    if rows % 4 != 0 || cols % 4 != 0 || w.len() != rows * cols {
        return Err(unsupported("greedy_mask", format!("need rows and cols multiples of 4; got {} elements for {rows} x {cols}", w.len())));
    }
    let mut mask = BitMask::zeros(rows, cols);
    for br in 0..rows / 4 {
        for bc in 0..cols / 4 {
            let mut order: Vec<(f32, usize)> = (0..16).map(|k| (w[(4 * br + k / 4) * cols + 4 * bc + k % 4].to_f32().abs(), k)).collect();
            order.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let (mut rc, mut cc) = ([0; 4], [0; 4]);
            for (_, k) in order {
                let (r, c) = (k / 4, k % 4);
                if rc[r] < 2 && cc[c] < 2 {
                    rc[r] += 1;
                    cc[c] += 1;
                    mask.set(4 * br + r, 4 * bc + c, true);
                }
            }
        }
    }
    Ok(mask)
}

/// Sum of |w| over the kept elements of a mask (f64).
pub fn kept_l1(w: &[bf16], mask: &BitMask) -> f64 {
    let mut s = 0f64;
    for r in 0..mask.rows() {
        for c in 0..mask.cols() {
            if mask.get(r, c) {
                s += w[r * mask.cols() + c].to_f64().abs();
            }
        }
    }
    s
}
