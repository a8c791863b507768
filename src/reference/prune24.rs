//! 2:4 magnitude pruning along rows: in each run of four columns keep the two largest |w|.

use crate::bitmask::BitMask;
use crate::error::unsupported;
use crate::Result;
use half::bf16;

/// Ordering key of |x| for a bf16: its bits without the sign. Integer order of keys is the order
/// of magnitudes for numbers; NaNs sort above all. Exact, so the GPU makes the same choice.
pub fn abs_key(x: bf16) -> u16 {
    x.to_bits() & 0x7fff
}

/// The two positions kept in a group of four: the two largest keys, ties to the lower index.
/// Returned ascending.
pub fn top2(group: &[bf16]) -> (usize, usize) {
    let keys: Vec<u16> = group.iter().map(|&x| abs_key(x)).collect();
    let rank = |i: usize| (0..4).filter(|&j| keys[j] > keys[i] || (keys[j] == keys[i] && j < i)).count();
    let kept: Vec<usize> = (0..4).filter(|&i| rank(i) < 2).collect();
    (kept[0], kept[1])
}

/// Prunes a row-major rows x cols matrix to 2:4 along its rows. Returns the pruned dense matrix
/// (dropped elements are +0) and its mask.
pub fn prune24_rows(w: &[bf16], rows: usize, cols: usize) -> Result<(Vec<bf16>, BitMask)> {
    if cols % 4 != 0 || w.len() != rows * cols {
        return Err(unsupported(
            "prune24_rows",
            format!("need a rows x cols matrix with cols a multiple of 4; got {} elements for {rows} x {cols}", w.len()),
        ));
    }
    let mut out = vec![bf16::ZERO; w.len()];
    let mut mask = BitMask::zeros(rows, cols);
    for r in 0..rows {
        for q in 0..cols / 4 {
            let base = r * cols + 4 * q;
            let (i0, i1) = top2(&w[base..base + 4]);
            for i in [i0, i1] {
                out[base + i] = w[base + i];
                mask.set(r, 4 * q + i, true);
            }
        }
    }
    Ok((out, mask))
}
