//! The sparse GEMM on the warp-level mma.sp (cuda/sparse_mma_sm80.cu), the Ampere (sm_80) path:
//! - `sparse_mma_naive`: reference grade, one warp per 16x8 tile, operands from global memory. It
//!   defines the Sparse24 layout on the GPU; the fast kernels are checked against it.
//! - `sparse_gemm_sm80`: 128x128x64 CTA tiles, a 3-stage cp.async pipeline, ldmatrix fragments.
//!   Its speed was measured on an H100 only (through the same instruction), never on an A100.

use crate::device::Device;
use crate::error::{shape, unsupported, During};
use crate::matrix::DeviceMatrix;
use crate::sparse24::Sparse24;
use crate::sparse_gemm::{BOperand, GemmOptions, GemmOut};
use crate::{MatLayout, Result};
use cudarc::driver::{DevicePtr, LaunchConfig, PushKernelArg};
use half::bf16;

/// How the kernel reads the metadata words: `Documented` is the layout of docs/layout.md;
/// `RowPerThread` is the alternative reading of the PTX ISA figure, kept only so the layout test
/// can say which reading the hardware follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaReading {
    Documented = 0,
    RowPerThread = 1,
}

/// D (M x N, f32, row-major) = A (2:4, M x K) * B, with B given as its transpose `bt` (N x K
/// row-major, e.g. the activations X of Y = X W^T). N must be a multiple of 8.
pub fn sparse_mma_naive(dev: &Device, a: &Sparse24, bt: &DeviceMatrix<bf16>, d: &mut DeviceMatrix<f32>, reading: MetaReading) -> Result<()> {
    let (m, k, n) = (a.rows(), a.cols(), bt.rows());
    if bt.cols() != k || d.rows() != m || d.cols() != n {
        return Err(shape(
            "sparse_mma_naive",
            format!("A {m}x{k}, B^T {}x{}, D {}x{}: need B^T n x {k} and D {m} x n", bt.rows(), bt.cols(), d.rows(), d.cols()),
        ));
    }
    if n % 8 != 0 {
        return Err(unsupported("sparse_mma_naive", format!("N = {n} must be a multiple of 8")));
    }
    let f = dev.function("sparse_mma_sm80_naive")?;
    let cfg = LaunchConfig { grid_dim: ((n / 8) as u32, (m / 16) as u32, 1), block_dim: (32, 1, 1), shared_mem_bytes: 0 };
    let (mi, ni, ki, v) = (m as i32, n as i32, k as i32, reading as i32);
    let mut b = dev.stream().launch_builder(&f);
    b.arg(&a.values).arg(&a.meta).arg(bt.data()).arg(d.data_mut()).arg(&mi).arg(&ni).arg(&ki).arg(&v);
    // SAFETY: shapes checked above against the kernel's indexing (M % 16, K % 32 by Sparse24).
    unsafe { b.launch(cfg) }.during("launching sparse_mma_sm80_naive")?;
    Ok(())
}

/// Bytes of dynamic shared memory of the sparse_gemm_sm80 kernels: 3 stages of (A values 128 x 40,
/// B 128 x 72 (or 64 x 136 N-major, which fits the same space), 256 metadata words).
const SM80_SMEM: usize = 3 * ((128 * 40 + 128 * 72) * 2 + 256 * 4);

/// D (M x N, f32, row-major) = A (2:4, M x K) * B with B given as its transpose `bt` (N x K
/// row-major): the fast mma.sp path (cp.async pipeline, ldmatrix). K must be a multiple of 64
/// and N of 8. Gives the same bits as `sparse_mma_naive` (same fragments, same k order).
/// `sparse_gemm` takes this path with every option when the Ampere image is loaded.
pub fn sparse_gemm_sm80(dev: &Device, a: &Sparse24, bt: &DeviceMatrix<bf16>, d: &mut DeviceMatrix<f32>) -> Result<()> {
    let (m, k, n) = (a.rows(), a.cols(), bt.rows());
    if bt.cols() != k || d.rows() != m || d.cols() != n {
        return Err(shape("sparse_gemm_sm80", format!("A {m}x{k}, B^T {}x{}, D {}x{}: need B^T n x {k} and D {m} x n", bt.rows(), bt.cols(), d.rows(), d.cols())));
    }
    gemm_sm80(dev, a, BOperand::KMajor(bt), d, &GemmOptions::default())
}

/// The sm_80 kernels with `sparse_gemm`'s options (B K- or N-major, D bf16/f32 in either layout,
/// bias, beta); shapes already checked by the caller except the kernel's own rules.
pub(crate) fn gemm_sm80<T: GemmOut>(dev: &Device, a: &Sparse24, b: BOperand, d: &mut DeviceMatrix<T>, opts: &GemmOptions) -> Result<()> {
    let (m, k) = (a.rows(), a.cols());
    let n = match b {
        BOperand::KMajor(bt) => bt.rows(),
        BOperand::NMajor(b) => b.cols(),
    };
    if n % 8 != 0 || k % 64 != 0 {
        return Err(unsupported("sparse_gemm_sm80", format!("N = {n} must be a multiple of 8 and K = {k} of 64 (the pipeline's k tile); pad the operands")));
    }
    let (name, bm) = match b {
        BOperand::KMajor(bt) => ("sparse_gemm_sm80_k", bt),
        BOperand::NMajor(b) => ("sparse_gemm_sm80_n", b),
    };
    let f = dev.function(name)?;
    use cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES as MAXSMEM;
    f.set_attribute(MAXSMEM, SM80_SMEM as i32).during("configuring sparse_gemm_sm80")?;
    let cfg = LaunchConfig { grid_dim: (n.div_ceil(128) as u32, m.div_ceil(128) as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: SM80_SMEM as u32 };
    let (mi, ni, ki) = (m as i32, n as i32, k as i32);
    let col = (opts.d_layout == Some(MatLayout::ColMajor)) as i32;
    let stream = dev.stream();
    let bias_ptr = match opts.bias {
        Some(bias) => bias.device_ptr(stream).0,
        None => 0,
    };
    let mut l = stream.launch_builder(&f);
    l.arg(&a.values).arg(&a.meta).arg(bm.data()).arg(d.data_mut()).arg(&bias_ptr).arg(&opts.beta).arg(&mi).arg(&ni).arg(&ki).arg(&col).arg(&T::IS_F32);
    // SAFETY: shapes checked against the kernel's indexing (M % 16 by Sparse24, N % 8, K % 64;
    // D and bias by sparse_gemm or above); out-of-range rows and columns are zero-filled on load
    // and never stored.
    unsafe { l.launch(cfg) }.during(format!("launching {name}"))?;
    Ok(())
}
