//! Masked decay on gradients and flip rate (cuda/decay.cu). Reference: `reference::masked_decay`,
//! `reference::flip_rate`.

use crate::device::Device;
use crate::error::{shape, During};
use crate::matrix::DeviceMatrix;
use crate::sparse24::Sparse24;
use crate::Result;
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// grad += lambda * (1 - mask) * w, with the mask of `masked` (same shape as grad and w).
pub fn masked_decay(dev: &Device, grad: &mut DeviceMatrix<f32>, w: &DeviceMatrix<f32>, masked: &Sparse24, lambda: f32) -> Result<()> {
    let (r, c) = (grad.rows(), grad.cols());
    if (w.rows(), w.cols()) != (r, c) || (masked.rows(), masked.cols()) != (r, c) {
        return Err(shape("masked_decay", format!("grad {r}x{c}, w {}x{}, mask {}x{}", w.rows(), w.cols(), masked.rows(), masked.cols())));
    }
    let n = (r * c) as i64;
    let ci = c as i32;
    let func = dev.function("masked_decay")?;
    let blocks = ((r * c) / 4).div_ceil(256).clamp(1, 132 * 16) as u32;
    let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    let mut b = dev.stream().launch_builder(&func);
    b.arg(grad.data_mut()).arg(w.data()).arg(&masked.mask).arg(&n).arg(&ci).arg(&lambda);
    // SAFETY: shapes equal; Sparse24 guarantees cols % 32 == 0, so 4-element vectors never straddle rows.
    unsafe { b.launch(cfg) }.during("launching masked_decay")?;
    Ok(())
}

/// Fraction of mask bits that differ between the masks of `a` and `b`.
pub fn flip_rate(dev: &Device, a: &Sparse24, b: &Sparse24) -> Result<f64> {
    if (a.rows(), a.cols()) != (b.rows(), b.cols()) {
        return Err(shape("flip_rate", format!("masks of {}x{} and {}x{}", a.rows(), a.cols(), b.rows(), b.cols())));
    }
    let words = a.mask.len() as i64;
    let mut count = dev.stream().alloc_zeros::<u64>(1).during("allocating the flip counter")?;
    let func = dev.function("flip_count")?;
    let blocks = (words as usize).div_ceil(256).clamp(1, 132 * 8) as u32;
    let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    let mut l = dev.stream().launch_builder(&func);
    l.arg(&a.mask).arg(&b.mask).arg(&words).arg(&mut count);
    // SAFETY: both masks have `words` words.
    unsafe { l.launch(cfg) }.during("launching flip_count")?;
    let flips = dev.download(&count)?[0];
    Ok(flips as f64 / (a.rows() * a.cols()) as f64)
}
