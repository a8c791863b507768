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

/// One AdamW step's constants (the trainer's AdamW: bias corrections as divisors c1 = 1 - beta1^t,
/// c2 = 1 - beta2^t; `gscale` the gradient-clipping scale; `lambda` the masked decay's factor).
/// `repr(C)`: passed by value to cuda/mask24.cu's `adamw_masked_compress_w4`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub c1: f32,
    pub c2: f32,
    pub gscale: f32,
    pub lambda: f32,
}

/// Masked decay then AdamW on f32 master weights, in place: per element, g = grad gscale
/// (+ lambda w where the mask drops it: Hu et al. 2024 eq. 5, before the optimizer so it passes
/// through the moments), m = beta1 m + (1 - beta1) g, v = beta2 v + ((1 - beta2) g) g,
/// w -= lr ((m / c1) / (sqrt(v / c2) + eps) + weight_decay w). Every operation rounds alone (no
/// fused multiply-add), so the GPU kernel can match it bit for bit.
pub fn adamw_masked(w: &mut [f32], m: &mut [f32], v: &mut [f32], grad: &[f32], mask: &BitMask, k: &AdamWStep) -> Result<()> {
    let n = mask.rows() * mask.cols();
    if w.len() != n || m.len() != n || v.len() != n || grad.len() != n {
        return Err(shape("adamw_masked", format!("w {}, m {}, v {}, grad {} elements for a {}x{} mask", w.len(), m.len(), v.len(), grad.len(), mask.rows(), mask.cols())));
    }
    let (one_b1, one_b2) = (1.0 - k.beta1, 1.0 - k.beta2);
    for r in 0..mask.rows() {
        for c in 0..mask.cols() {
            let i = r * mask.cols() + c;
            let mut g = grad[i] * k.gscale;
            if !mask.get(r, c) {
                g += k.lambda * w[i];
            }
            m[i] = k.beta1 * m[i] + one_b1 * g;
            v[i] = k.beta2 * v[i] + one_b2 * g * g;
            let (mh, vh) = (m[i] / k.c1, v[i] / k.c2);
            w[i] -= k.lr * (mh / (vh.sqrt() + k.eps) + k.weight_decay * w[i]);
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
