//! Transposable 2:4 mask search with double compression, and recompression under a stored mask
//! (cuda/mask24.cu). Reference: `reference::transposable_mask`, `reference::compress`,
//! `reference::compress_transposed`.

use crate::device::Device;
use crate::error::{invalid, shape, unsupported, During};
use crate::matrix::DeviceMatrix;
use crate::sparse24::Sparse24;
use crate::Result;
use crate::launch::{self, Family, LaunchShape};
use crate::reference::AdamWStep;
use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use half::bf16;

fn check(op: &'static str, w: &DeviceMatrix<bf16>, out_w: &Sparse24, out_wt: &Sparse24) -> Result<()> {
    check_dims(op, w.rows(), w.cols(), out_w, out_wt)
}

/// The rules for an r x c W (bf16, or the f32 master weights) and its two compressed outputs.
fn check_dims(op: &'static str, r: usize, c: usize, out_w: &Sparse24, out_wt: &Sparse24) -> Result<()> {
    if r % 32 != 0 || c % 32 != 0 {
        return Err(unsupported(op, format!("W is {r} x {c}: both dimensions must be multiples of 32 (W and W^T are both compressed); pad the weight")));
    }
    if (out_w.rows(), out_w.cols()) != (r, c) || (out_wt.rows(), out_wt.cols()) != (c, r) {
        return Err(shape(op, format!("outputs are {}x{} and {}x{}, need {r}x{c} (W) and {c}x{r} (W^T)", out_w.rows(), out_w.cols(), out_wt.rows(), out_wt.cols())));
    }
    Ok(())
}

/// The error word of a queued mask kernel (bit 0: a stored mask is not transposable 2:4; bit 1: W
/// holds NaN). Checking it waits for the kernel; until then the GPU runs ahead, so a training
/// step can queue the mask work and check once at its end (the asynchronous error flag).
#[must_use = "a mask kernel's errors are only seen by checking its status"]
pub struct MaskStatus {
    op: &'static str,
    flag: cudarc::driver::CudaSlice<u32>,
}

impl MaskStatus {
    /// Waits for the kernel and turns its error word into a typed error.
    pub fn check(self, dev: &Device) -> Result<()> {
        let e = dev.download(&self.flag)?[0];
        if e & 2 != 0 {
            return Err(invalid(self.op, "W contains NaN: no mask is defined; check the weights"));
        }
        if e & 1 != 0 {
            return Err(invalid(self.op, "the stored mask is not transposable 2:4 (a 4x4 block keeps other than two per row and column)"));
        }
        Ok(())
    }
}

fn launch(dev: &Device, kernel: &'static str, w: &DeviceMatrix<bf16>, out_w: &mut Sparse24, out_wt: &mut Sparse24, shape: Option<LaunchShape>) -> Result<MaskStatus> {
    let (r, c) = (w.rows() as i32, w.cols() as i32);
    let tiles = (w.rows() / 32) * (w.cols() / 32);
    let table_name = if kernel == "apply_mask_compress" { "mask24_apply" } else { "mask24_search" };
    let shape = shape.unwrap_or_else(|| launch::resolve(dev, Family::Mask24, table_name, "row-major", w.rows(), w.cols()));
    let mut err = dev.stream().alloc_zeros::<u32>(1).during("allocating the error flag")?;
    let f = dev.function(&format!("{kernel}{}", shape.warps_suffix()))?;
    let block = shape.tile_block();
    let cfg = LaunchConfig { grid_dim: (shape.grid(tiles, block as usize / 32, launch::sms(dev)), 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 };
    let mut b = dev.stream().launch_builder(&f);
    b.arg(w.data()).arg(&r).arg(&c).arg(&mut out_w.mask).arg(&mut out_w.values).arg(&mut out_w.meta);
    b.arg(&mut out_wt.values).arg(&mut out_wt.meta).arg(&mut out_wt.mask).arg(&mut err);
    // SAFETY: shapes checked (multiples of 32, outputs sized for W and W^T); one warp per 32x32 tile.
    unsafe { b.launch(cfg) }.during(format!("launching {kernel}"))?;
    Ok(MaskStatus { op: kernel, flag: err })
}

/// Searches the transposable 2:4 mask of W (best of the 90 patterns per 4x4 block by kept L1, ties
/// to the first pattern in `reference::patterns()` order) and writes W compressed (with the mask)
/// into `out_w` and W^T compressed into `out_wt`, in one pass over W.
pub fn transposable_mask_compress_into(dev: &Device, w: &DeviceMatrix<bf16>, out_w: &mut Sparse24, out_wt: &mut Sparse24) -> Result<()> {
    transposable_mask_compress_with(dev, w, out_w, out_wt, None)
}

/// `transposable_mask_compress_into` with an explicit launch shape (None: the shape table's or
/// the default; the tuner and the launch-shape tests name one).
pub fn transposable_mask_compress_with(dev: &Device, w: &DeviceMatrix<bf16>, out_w: &mut Sparse24, out_wt: &mut Sparse24, shape: Option<LaunchShape>) -> Result<()> {
    transposable_mask_compress_async(dev, w, out_w, out_wt, shape)?.check(dev)
}

/// Queues the mask search without waiting: shape errors come back now, NaN in W through the
/// returned status.
pub fn transposable_mask_compress_async(dev: &Device, w: &DeviceMatrix<bf16>, out_w: &mut Sparse24, out_wt: &mut Sparse24, shape: Option<LaunchShape>) -> Result<MaskStatus> {
    check("transposable_mask_compress", w, out_w, out_wt)?;
    launch(dev, "transposable_mask_compress", w, out_w, out_wt, shape)
}

/// Allocating form of `transposable_mask_compress_into`: returns (W compressed, W^T compressed).
pub fn transposable_mask_compress(dev: &Device, w: &DeviceMatrix<bf16>) -> Result<(Sparse24, Sparse24)> {
    let mut out_w = Sparse24::alloc(dev, w.rows(), w.cols())?;
    let mut out_wt = Sparse24::alloc(dev, w.cols(), w.rows())?;
    transposable_mask_compress_into(dev, w, &mut out_w, &mut out_wt)?;
    Ok((out_w, out_wt))
}

/// Recompresses W and W^T from dense weights under the mask already stored in `out_w` (from an
/// earlier search): the step the recipe runs after every optimizer update. The mask must be
/// transposable (two of every four along rows and columns of each 4x4 block).
pub fn apply_mask_compress_into(dev: &Device, w: &DeviceMatrix<bf16>, out_w: &mut Sparse24, out_wt: &mut Sparse24) -> Result<()> {
    apply_mask_compress_with(dev, w, out_w, out_wt, None)
}

/// `apply_mask_compress_into` with an explicit launch shape.
pub fn apply_mask_compress_with(dev: &Device, w: &DeviceMatrix<bf16>, out_w: &mut Sparse24, out_wt: &mut Sparse24, shape: Option<LaunchShape>) -> Result<()> {
    apply_mask_compress_async(dev, w, out_w, out_wt, shape)?.check(dev)
}

/// Queues the recompression without waiting: an invalid stored mask comes back through the status.
pub fn apply_mask_compress_async(dev: &Device, w: &DeviceMatrix<bf16>, out_w: &mut Sparse24, out_wt: &mut Sparse24, shape: Option<LaunchShape>) -> Result<MaskStatus> {
    check("apply_mask_compress", w, out_w, out_wt)?;
    launch(dev, "apply_mask_compress", w, out_w, out_wt, shape)
}

// SAFETY: repr(C), nine f32: the layout of mask24::AdamWStep in cuda/mask24.cu.
unsafe impl DeviceRepr for AdamWStep {}

/// One optimizer step of a sparse layer's weights with their recompression, in one pass over W:
/// masked decay (grad + lambda (1 - mask) W, under the mask stored in `out_w`) and AdamW on the
/// f32 master weights `w` and moments `m`, `v` (in place; `grad` read only), then W and W^T
/// recompressed from the updated weights under the same mask into `out_w` and `out_wt` (what
/// `apply_mask_compress_into` would write from their bf16 copy). Bit for bit
/// `reference::adamw_masked` then `reference::compress` / `compress_transposed`. The recipe's
/// per-step recompression then costs ~1.5 bytes a weight on top of the optimizer's ~28 instead of
/// a pass of its own. Queued: an invalid stored mask comes back through the returned status.
/// Shapes: W rows x cols, both multiples of 32; m, v, grad the same.
#[allow(clippy::too_many_arguments)]
pub fn adamw_masked_compress_async(
    dev: &Device,
    w: &mut DeviceMatrix<f32>,
    m: &mut DeviceMatrix<f32>,
    v: &mut DeviceMatrix<f32>,
    grad: &DeviceMatrix<f32>,
    step: &AdamWStep,
    out_w: &mut Sparse24,
    out_wt: &mut Sparse24,
) -> Result<MaskStatus> {
    let op = "adamw_masked_compress";
    let (r, c) = (w.rows(), w.cols());
    check_dims(op, r, c, out_w, out_wt)?;
    for (name, x) in [("m", (m.rows(), m.cols())), ("v", (v.rows(), v.cols())), ("grad", (grad.rows(), grad.cols()))] {
        if x != (r, c) {
            return Err(shape(op, format!("{name} is {} x {}, W is {r} x {c}: the optimizer state must have W's shape", x.0, x.1)));
        }
    }
    let name = "adamw_masked_compress_w4";
    let f = dev.function(name)?;
    let tiles = (r / 32) * (c / 32);
    // 4 warps a block, one 32 x 32 tile a warp, grid-stride over as many blocks as are resident.
    let cfg = launch::resident_grid(dev, name, &f, 128, tiles.div_ceil(4))?;
    let mut err = dev.stream().alloc_zeros::<u32>(1).during("allocating the error flag")?;
    let (ri, ci) = (r as i32, c as i32);
    let mut b = dev.stream().launch_builder(&f);
    b.arg(w.data_mut()).arg(m.data_mut()).arg(v.data_mut()).arg(grad.data()).arg(step).arg(&ri).arg(&ci);
    b.arg(&mut out_w.mask).arg(&mut out_w.values).arg(&mut out_w.meta);
    b.arg(&mut out_wt.values).arg(&mut out_wt.meta).arg(&mut out_wt.mask).arg(&mut err);
    // SAFETY: shapes checked (multiples of 32; state, gradient and outputs sized for W); one warp
    // per 32 x 32 tile, grid-stride; AdamWStep matches the kernel's struct.
    unsafe { b.launch(cfg) }.during(format!("launching {name}"))?;
    Ok(MaskStatus { op, flag: err })
}
