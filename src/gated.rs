//! Gated activations (SwiGLU, GEGLU), forward and backward, on the fc1 output in either layout
//! (cuda/gated.cu). Reference: `reference::gated_forward`, `reference::gated_backward`.

use crate::device::Device;
use crate::error::{shape, unsupported, During};
use crate::matrix::DeviceMatrix;
use crate::reference::Gate;
use crate::Result;
use crate::launch::{self, Family, LaunchShape};
use cudarc::driver::{LaunchConfig, PushKernelArg};
use half::bf16;

/// Where the fc1 output H keeps its up and gate halves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatedLayout {
    /// H is tokens x 2F row-major: up = columns 0..F, gate = F..2F. y is tokens x F.
    TokenMajor,
    /// H is 2F x tokens row-major (the GEMM wrote fc1's output transposed): up = rows 0..F, gate =
    /// rows F..2F. y is F x tokens.
    FeatureMajor,
}

/// (tokens, F) from H's shape, checked.
fn dims(op: &'static str, layout: GatedLayout, h: &DeviceMatrix<bf16>) -> Result<(usize, usize)> {
    let (t, f) = match layout {
        GatedLayout::TokenMajor => (h.rows(), h.cols() / 2),
        GatedLayout::FeatureMajor => (h.cols(), h.rows() / 2),
    };
    let (two_f, inner) = match layout {
        GatedLayout::TokenMajor => (h.cols(), f),
        GatedLayout::FeatureMajor => (h.rows(), t),
    };
    if two_f % 2 != 0 || inner % 8 != 0 {
        return Err(unsupported(op, format!("H is {} x {} ({layout:?}): it needs an even feature count 2F and the contiguous axis a multiple of 8", h.rows(), h.cols())));
    }
    Ok((t, f))
}

fn out_shape(layout: GatedLayout, t: usize, f: usize) -> (usize, usize) {
    match layout {
        GatedLayout::TokenMajor => (t, f),
        GatedLayout::FeatureMajor => (f, t),
    }
}

/// The launch of `kernel` over y's t x f elements (8 a thread): the given shape, else the shape
/// table's, else the default.
fn grid(dev: &Device, kernel: &str, gate: Gate, layout: GatedLayout, t: usize, f: usize, shape: Option<LaunchShape>) -> LaunchConfig {
    let shape = shape.unwrap_or_else(|| launch::resolve(dev, Family::Gated, kernel, &table_layout(gate, layout), t, f));
    let blocks = shape.grid(t * f / 8, shape.block as usize, launch::sms(dev));
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (shape.block, 1, 1), shared_mem_bytes: 0 }
}

/// The shape-table layout name of a gated kernel: gate and H's layout ("swiglu-token-major", ...).
pub fn table_layout(gate: Gate, layout: GatedLayout) -> String {
    format!("{}-{}", if gate == Gate::GeGlu { "geglu" } else { "swiglu" }, if layout == GatedLayout::TokenMajor { "token-major" } else { "feature-major" })
}

/// y = act(gate) * up.
pub fn gated_forward(dev: &Device, gate: Gate, layout: GatedLayout, h: &DeviceMatrix<bf16>, y: &mut DeviceMatrix<bf16>) -> Result<()> {
    gated_forward_with(dev, gate, layout, h, y, None)
}

/// `gated_forward` with an explicit launch shape (None: the shape table's or the default).
pub fn gated_forward_with(dev: &Device, gate: Gate, layout: GatedLayout, h: &DeviceMatrix<bf16>, y: &mut DeviceMatrix<bf16>, launch_shape: Option<LaunchShape>) -> Result<()> {
    let (t, f) = dims("gated_forward", layout, h)?;
    if (y.rows(), y.cols()) != out_shape(layout, t, f) {
        return Err(shape("gated_forward", format!("y is {} x {}, need {:?}", y.rows(), y.cols(), out_shape(layout, t, f))));
    }
    let func = dev.function("gated_forward")?;
    let (ti, fi, fm, kind) = (t as i64, f as i32, (layout == GatedLayout::FeatureMajor) as i32, (gate == Gate::GeGlu) as i32);
    let mut b = dev.stream().launch_builder(&func);
    b.arg(h.data()).arg(y.data_mut()).arg(&ti).arg(&fi).arg(&fm).arg(&kind);
    // SAFETY: H holds tokens x 2F, y tokens x F elements; the contiguous axis is a multiple of 8.
    unsafe { b.launch(grid(dev, "gated_forward", gate, layout, t, f, launch_shape)) }.during("launching gated_forward")?;
    Ok(())
}

/// dH (H's layout and shape) from H and dy: d_up = dy act(gate), d_gate = dy up act'(gate).
pub fn gated_backward(dev: &Device, gate: Gate, layout: GatedLayout, h: &DeviceMatrix<bf16>, dy: &DeviceMatrix<bf16>, dh: &mut DeviceMatrix<bf16>) -> Result<()> {
    gated_backward_with(dev, gate, layout, h, dy, dh, None)
}

/// `gated_backward` with an explicit launch shape.
pub fn gated_backward_with(dev: &Device, gate: Gate, layout: GatedLayout, h: &DeviceMatrix<bf16>, dy: &DeviceMatrix<bf16>, dh: &mut DeviceMatrix<bf16>, launch_shape: Option<LaunchShape>) -> Result<()> {
    let (t, f) = dims("gated_backward", layout, h)?;
    if (dy.rows(), dy.cols()) != out_shape(layout, t, f) || (dh.rows(), dh.cols()) != (h.rows(), h.cols()) {
        return Err(shape("gated_backward", format!("dy is {} x {} and dH {} x {}, for H {} x {}", dy.rows(), dy.cols(), dh.rows(), dh.cols(), h.rows(), h.cols())));
    }
    let func = dev.function("gated_backward")?;
    let (ti, fi, fm, kind) = (t as i64, f as i32, (layout == GatedLayout::FeatureMajor) as i32, (gate == Gate::GeGlu) as i32);
    let mut b = dev.stream().launch_builder(&func);
    b.arg(h.data()).arg(dy.data()).arg(dh.data_mut()).arg(&ti).arg(&fi).arg(&fm).arg(&kind);
    // SAFETY: as in gated_forward; dH has H's shape.
    unsafe { b.launch(grid(dev, "gated_backward", gate, layout, t, f, launch_shape)) }.during("launching gated_backward")?;
    Ok(())
}

/// `gated_backward` (token-major H) fused with MVUE 2:4 of its output: writes dH as
/// `gated_backward` does and, in the same pass, S(dH^T) (2F x tokens, 2:4 along tokens: the A
/// operand of fc1's dW GEMM) into `s_dht`, bit for bit what `mvue24_compress_into(dH, seed, step)`
/// would write, without reading dH again (docs/sparse-training.md: the issue-5 budget).
/// Tokens and F must be multiples of 32. Speed, measured on the H100 (docs/bench/kernels-h100.md):
/// at H = 16384 x 4096 it adds 0.105 ms to the backward (0.221 vs 0.116 ms), more than a separate
/// MVUE costs (0.092 ms), and at 16384 x 22016 it is slower than the two kernels apart (1.52 vs
/// 1.13 ms): its loads, at ~3 warps a scheduler (150 registers), bound it (docs/sparse-training.md).
#[allow(clippy::too_many_arguments)]
pub fn gated_backward_mvue(dev: &Device, gate: Gate, h: &DeviceMatrix<bf16>, dy: &DeviceMatrix<bf16>, dh: &mut DeviceMatrix<bf16>, seed: u64, step: u32, s_dht: &mut crate::Sparse24) -> Result<()> {
    let op = "gated_backward_mvue";
    let (t, f) = dims(op, GatedLayout::TokenMajor, h)?;
    if t % 32 != 0 || f % 32 != 0 {
        return Err(unsupported(op, format!("H is {t} x {}: tokens and F must be multiples of 32 (MVUE's metadata words cover 32-token blocks of 32 rows)", 2 * f)));
    }
    if (dy.rows(), dy.cols()) != (t, f) || (dh.rows(), dh.cols()) != (t, 2 * f) || (s_dht.rows(), s_dht.cols()) != (2 * f, t) {
        return Err(shape(op, format!("dy is {} x {}, dH {} x {}, S(dH^T) {} x {}; for H {t} x {} they must be {t} x {f}, {t} x {}, {} x {t}", dy.rows(), dy.cols(), dh.rows(), dh.cols(), s_dht.rows(), s_dht.cols(), 2 * f, 2 * f, 2 * f)));
    }
    let func = dev.function(op)?;
    let (ti, fi, kind) = (t as i32, f as i32, (gate == Gate::GeGlu) as i32);
    let tiles = t.div_ceil(64) * (f / 32); // warp tiles of 32 features x 64 tokens
    // One warp a block walking tiles with a grid stride: as many blocks as are resident at once
    // (its registers allow about 12 an SM on the H100; the driver says how many exactly).
    let cfg = launch::resident_grid(dev, op, &func, 32, tiles)?;
    let mut b = dev.stream().launch_builder(&func);
    b.arg(h.data()).arg(dy.data()).arg(dh.data_mut()).arg(&ti).arg(&fi).arg(&kind).arg(&seed).arg(&step);
    b.arg(&mut s_dht.values).arg(&mut s_dht.meta).arg(&mut s_dht.mask);
    // SAFETY: shapes checked above; one warp a block, 32 x 64 tiles of y, grid-stride.
    unsafe { b.launch(cfg) }.during("launching gated_backward_mvue")?;
    Ok(())
}

/// dY = gelu'(X) dA (GELU in GPT-2's tanh form; X, dA and dY of one shape, any layout:
/// elementwise): the backward of a non-gated MLP's activation (tanh from the hardware exp, as in
/// cuda/gated.cu's act). Element count a multiple of 8.
pub fn gelu_backward(dev: &Device, x: &DeviceMatrix<bf16>, da: &DeviceMatrix<bf16>, dy: &mut DeviceMatrix<bf16>) -> Result<()> {
    let op = "gelu_backward";
    let n = x.rows() * x.cols();
    if n % 8 != 0 {
        return Err(unsupported(op, format!("X is {} x {}: the element count must be a multiple of 8 (16-byte accesses)", x.rows(), x.cols())));
    }
    if (da.rows(), da.cols()) != (x.rows(), x.cols()) || (dy.rows(), dy.cols()) != (x.rows(), x.cols()) {
        return Err(shape(op, format!("X is {} x {}, dA {} x {}, dY {} x {}: all three must be the same shape", x.rows(), x.cols(), da.rows(), da.cols(), dy.rows(), dy.cols())));
    }
    let func = dev.function(op)?;
    let nl = n as i64;
    // 256 threads of 8 elements, a few blocks an SM resident (grid-stride): a streaming kernel.
    let cfg = LaunchConfig { grid_dim: ((n / 8).div_ceil(256).min(launch::sms(dev) * 8).max(1) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    let mut b = dev.stream().launch_builder(&func);
    b.arg(x.data()).arg(da.data()).arg(dy.data_mut()).arg(&nl);
    // SAFETY: three buffers of n elements, n a multiple of 8; grid-stride.
    unsafe { b.launch(cfg) }.during("launching gelu_backward")?;
    Ok(())
}

/// `gelu_backward` (X, dA, dY tokens x F, row-major) fused with MVUE 2:4 of its output: writes dY
/// as `gelu_backward` does and, in the same pass, S(dY^T) (F x tokens, 2:4 along tokens: the A
/// operand of fc1's dW GEMM) into `s_dyt`, bit for bit what `mvue24_compress_into(dY, seed,
/// step)` would write, without reading dY again. Tokens and F must be multiples of 32. Speed,
/// measured on the H100 (docs/bench/kernels-h100.md): at 16384 x 4096 (GPT-2 medium fc1) 0.254 ms
/// against 0.234 ms for `gelu_backward` then `mvue24_compress_into`: one call, not yet a saving
/// (MVUE's arithmetic does not hide under the backward's memory time).
#[allow(clippy::too_many_arguments)]
pub fn gelu_backward_mvue(dev: &Device, x: &DeviceMatrix<bf16>, da: &DeviceMatrix<bf16>, dy: &mut DeviceMatrix<bf16>, seed: u64, step: u32, s_dyt: &mut crate::Sparse24) -> Result<()> {
    gelu_backward_mvue_variant(dev, x, da, dy, seed, step, s_dyt, false)
}

/// `gelu_backward_mvue` with MVUE's pair loop rolled (`rolled`: fewer registers, more warps an
/// SM) or not; for the bench and tests, which compare the two builds.
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub fn gelu_backward_mvue_variant(dev: &Device, x: &DeviceMatrix<bf16>, da: &DeviceMatrix<bf16>, dy: &mut DeviceMatrix<bf16>, seed: u64, step: u32, s_dyt: &mut crate::Sparse24, rolled: bool) -> Result<()> {
    let op = "gelu_backward_mvue";
    let (t, f) = (x.rows(), x.cols());
    if t % 32 != 0 || f % 32 != 0 {
        return Err(unsupported(op, format!("X is {t} x {f}: tokens and features must be multiples of 32 (MVUE's metadata words cover 32-token blocks of 32 rows)")));
    }
    if (da.rows(), da.cols()) != (t, f) || (dy.rows(), dy.cols()) != (t, f) || (s_dyt.rows(), s_dyt.cols()) != (f, t) {
        return Err(shape(op, format!("dA is {} x {}, dY {} x {}, S(dY^T) {} x {}; for X {t} x {f} they must be {t} x {f}, {t} x {f}, {f} x {t}", da.rows(), da.cols(), dy.rows(), dy.cols(), s_dyt.rows(), s_dyt.cols())));
    }
    const WARPS: usize = 4;
    let name = if rolled { "gelu_backward_mvue_rolled_w4" } else { "gelu_backward_mvue_w4" };
    let func = dev.function(name)?;
    let tiles = t.div_ceil(64) * (f / 32); // warp tiles of 32 features x 64 tokens
    // Grid-stride: as many blocks as are resident at once (the driver says how many).
    let cfg = launch::resident_grid(dev, name, &func, 32 * WARPS as u32, tiles.div_ceil(WARPS))?;
    let (ti, fi) = (t as i32, f as i32);
    let mut b = dev.stream().launch_builder(&func);
    b.arg(x.data()).arg(da.data()).arg(dy.data_mut()).arg(&ti).arg(&fi).arg(&seed).arg(&step);
    b.arg(&mut s_dyt.values).arg(&mut s_dyt.meta).arg(&mut s_dyt.mask);
    // SAFETY: shapes checked above; one warp per 32 x 64 tile of dY, grid-stride.
    unsafe { b.launch(cfg) }.during("launching gelu_backward_mvue")?;
    Ok(())
}
