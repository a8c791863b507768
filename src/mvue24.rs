//! MVUE 2:4 of dY^T along tokens, fused with compression (cuda/mvue24.cu). Reference:
//! `reference::mvue24` on dY^T, then `reference::compress`.

use crate::device::Device;
use crate::error::{shape, unsupported, During};
use crate::matrix::DeviceMatrix;
use crate::sparse24::Sparse24;
use crate::Result;
use crate::launch::{self, Family, LaunchShape};
use cudarc::driver::{LaunchConfig, PushKernelArg};
use half::bf16;

/// S(dY^T) into `out` (features x tokens), from dY (tokens x features, row-major). `(seed, step)`
/// fixes the random draws: the same pair gives the same result, bit for bit, here and on the CPU.
pub fn mvue24_compress_into(dev: &Device, dy: &DeviceMatrix<bf16>, seed: u64, step: u32, out: &mut Sparse24) -> Result<()> {
    mvue24_compress_with(dev, dy, seed, step, out, None)
}

/// `mvue24_compress_into` with an explicit launch shape (None: the shape table's or the default).
pub fn mvue24_compress_with(dev: &Device, dy: &DeviceMatrix<bf16>, seed: u64, step: u32, out: &mut Sparse24, launch_shape: Option<LaunchShape>) -> Result<()> {
    let (t, f) = (dy.rows(), dy.cols());
    if t % 32 != 0 || f % 32 != 0 {
        return Err(unsupported("mvue24_compress", format!("dY is {t} x {f}: tokens and features must be multiples of 32")));
    }
    if (out.rows(), out.cols()) != (f, t) {
        return Err(shape("mvue24_compress", format!("output is {} x {}, S(dY^T) is {f} x {t}", out.rows(), out.cols())));
    }
    let tiles = t.div_ceil(64) * (f / 32); // warp tiles of 32 features x 64 tokens
    let (ti, fi) = (t as i32, f as i32);
    let shape = launch_shape.unwrap_or_else(|| launch::resolve(dev, Family::Mvue24, "mvue24", "row-major", t, f));
    let func = dev.function(&format!("mvue24_compress{}", shape.warps_suffix()))?;
    let block = shape.tile_block();
    let cfg = LaunchConfig { grid_dim: (shape.grid(tiles, block as usize / 32, launch::sms(dev)), 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 };
    let mut b = dev.stream().launch_builder(&func);
    b.arg(dy.data()).arg(&ti).arg(&fi).arg(&seed).arg(&step).arg(&mut out.values).arg(&mut out.meta).arg(&mut out.mask);
    // SAFETY: shapes checked; one warp per 32 x 64 tile of dY, grid-stride.
    unsafe { b.launch(cfg) }.during("launching mvue24_compress")?;
    Ok(())
}

/// Allocating form of `mvue24_compress_into`.
pub fn mvue24_compress(dev: &Device, dy: &DeviceMatrix<bf16>, seed: u64, step: u32) -> Result<Sparse24> {
    let mut out = Sparse24::alloc(dev, dy.cols(), dy.rows())?;
    mvue24_compress_into(dev, dy, seed, step, &mut out)?;
    Ok(out)
}
