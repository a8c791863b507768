//! Masked decay on gradients (Hu et al. 2024, eq. 5, the modified SR-STE) and mask flip rate.

use crate::bitmask::BitMask;
use crate::error::shape;
use crate::Result;

/// grad += lambda * (1 - mask) * w, applied before the optimizer (so it passes through Adam's
/// moments). `grad` and `w` are row-major with the mask's shape.
pub fn masked_decay(grad: &mut [f32], w: &[f32], mask: &BitMask, lambda: f32) -> Result<()> {
    let n = mask.rows() * mask.cols();
    if grad.len() != n || w.len() != n {
        return Err(shape("masked_decay", format!("grad {} and w {} elements for a {}x{} mask", grad.len(), w.len(), mask.rows(), mask.cols())));
    }
    for r in 0..mask.rows() {
        for c in 0..mask.cols() {
            if !mask.get(r, c) {
                let i = r * mask.cols() + c;
                grad[i] += lambda * w[i];
            }
        }
    }
    Ok(())
}

/// Fraction of mask bits that differ between two masks of the same shape.
pub fn flip_rate(a: &BitMask, b: &BitMask) -> Result<f64> {
    if a.rows() != b.rows() || a.cols() != b.cols() {
        return Err(shape("flip_rate", format!("masks of {}x{} and {}x{}", a.rows(), a.cols(), b.rows(), b.cols())));
    }
    let mut flips = 0usize;
    for r in 0..a.rows() {
        for c in 0..a.cols() {
            flips += (a.get(r, c) != b.get(r, c)) as usize;
        }
    }
    Ok(flips as f64 / (a.rows() * a.cols()).max(1) as f64)
}
