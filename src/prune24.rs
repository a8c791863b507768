//! 2:4 magnitude pruning + compression on the GPU (cuda/prune24.cu); reference:
//! `reference::prune24_rows` followed by `reference::compress`.

use crate::device::Device;
use crate::error::{shape, During};
use crate::layout::{check_shape, meta_words};
use crate::matrix::DeviceMatrix;
use crate::sparse24::Sparse24;
use crate::Result;
use cudarc::driver::{LaunchConfig, PushKernelArg};
use half::bf16;

/// Prunes a dense rows x cols bf16 matrix to 2:4 along its rows (keep the two largest |w| of each
/// four, ties to the lower column) and compresses it. Rows must be a multiple of 16, columns of 32.
pub fn prune24_compress(dev: &Device, w: &DeviceMatrix<bf16>) -> Result<Sparse24> {
    let mut out = Sparse24::alloc(dev, w.rows(), w.cols())?;
    prune24_compress_into(dev, w, &mut out)?;
    Ok(out)
}

/// As `prune24_compress`, writing into existing storage of the same shape.
pub fn prune24_compress_into(dev: &Device, w: &DeviceMatrix<bf16>, out: &mut Sparse24) -> Result<()> {
    let (rows, cols) = (w.rows(), w.cols());
    check_shape("prune24_compress", rows, cols)?;
    if out.rows() != rows || out.cols() != cols {
        return Err(shape("prune24_compress", format!("output is {} x {}, input {rows} x {cols}", out.rows(), out.cols())));
    }
    let words = meta_words(rows, cols);
    let (r, c) = (rows as i32, cols as i32);
    let f = dev.function("prune24_rows_compress")?;
    let threads = 256u32;
    let cfg = LaunchConfig { grid_dim: ((words as u32).div_ceil(threads), 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
    let mut b = dev.stream().launch_builder(&f);
    b.arg(w.data()).arg(&r).arg(&c).arg(&mut out.values).arg(&mut out.meta).arg(&mut out.mask);
    // SAFETY: argument types match the kernel signature; buffer sizes follow check_shape's rule
    // and the Sparse24 layout the kernel indexes (one thread per metadata word).
    unsafe { b.launch(cfg) }.during("launching prune24_rows_compress")?;
    Ok(())
}
