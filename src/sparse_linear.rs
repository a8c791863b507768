//! `SparseLinear`: the three GEMMs of a 2:4 sparse linear layer (Hu et al. 2024, section 3), each
//! one `sparse_gemm` call with no transpose copy:
//! - forward    Y  = X W^T          A = W (d_out x d_in),        B = X^T (K-major: X as stored),  Y = D^T
//! - grad_input dX = dY W           A = W^T (d_in x d_out),      B = dY^T (K-major: dY as stored), dX = D^T
//! - grad_weight dW = S(dY)^T X     A = S(dY)^T (d_out x tokens), B = X (N-major: X as stored),  dW = D

use crate::device::Device;
use crate::error::shape;
use crate::matrix::DeviceMatrix;
use crate::sparse24::Sparse24;
use crate::sparse_gemm::{sparse_gemm, BOperand, GemmOptions, GemmOut};
use crate::{MatLayout, Result};
use cudarc::driver::CudaSlice;
use half::bf16;

/// The shape of a linear layer; its methods run the layer's three sparse GEMMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SparseLinear {
    pub d_in: usize,
    pub d_out: usize,
}

impl SparseLinear {
    pub fn new(d_in: usize, d_out: usize) -> Self {
        Self { d_in, d_out }
    }

    fn check(&self, op: &'static str, what: &str, got: (usize, usize), want: (usize, usize)) -> Result<()> {
        if got != want {
            return Err(shape(op, format!("{what} is {} x {}, the layer ({} -> {}) needs {} x {}", got.0, got.1, self.d_in, self.d_out, want.0, want.1)));
        }
        Ok(())
    }

    /// Y (tokens x d_out, bf16) = X (tokens x d_in) W^T + bias, W given compressed (d_out x d_in).
    pub fn forward(&self, dev: &Device, w: &Sparse24, x: &DeviceMatrix<bf16>, bias: Option<&CudaSlice<f32>>, y: &mut DeviceMatrix<bf16>) -> Result<()> {
        let t = x.rows();
        self.check("SparseLinear::forward", "W", (w.rows(), w.cols()), (self.d_out, self.d_in))?;
        self.check("SparseLinear::forward", "Y", (y.rows(), y.cols()), (t, self.d_out))?;
        let opts = GemmOptions { d_layout: Some(MatLayout::ColMajor), bias, ..Default::default() };
        sparse_gemm(dev, w, BOperand::KMajor(x), y, &opts)
    }

    /// dX (tokens x d_in, bf16) = dY (tokens x d_out) W, given W^T compressed (d_in x d_out) under
    /// the transposable mask.
    pub fn grad_input(&self, dev: &Device, wt: &Sparse24, dy: &DeviceMatrix<bf16>, dx: &mut DeviceMatrix<bf16>) -> Result<()> {
        let t = dy.rows();
        self.check("SparseLinear::grad_input", "W^T", (wt.rows(), wt.cols()), (self.d_in, self.d_out))?;
        self.check("SparseLinear::grad_input", "dX", (dx.rows(), dx.cols()), (t, self.d_in))?;
        let opts = GemmOptions { d_layout: Some(MatLayout::ColMajor), ..Default::default() };
        sparse_gemm(dev, wt, BOperand::KMajor(dy), dx, &opts)
    }

    /// dW (d_out x d_in) = S(dY)^T X, given S(dY)^T compressed (d_out x tokens, 2:4 along tokens).
    /// `accumulate` adds to dW (gradient accumulation; use an f32 dW for that).
    pub fn grad_weight<T: GemmOut>(&self, dev: &Device, dyt: &Sparse24, x: &DeviceMatrix<bf16>, dw: &mut DeviceMatrix<T>, accumulate: bool) -> Result<()> {
        self.check("SparseLinear::grad_weight", "S(dY)^T", (dyt.rows(), dyt.cols()), (self.d_out, x.rows()))?;
        self.check("SparseLinear::grad_weight", "dW", (dw.rows(), dw.cols()), (self.d_out, self.d_in))?;
        let opts = GemmOptions { beta: if accumulate { 1.0 } else { 0.0 }, ..Default::default() };
        sparse_gemm(dev, dyt, BOperand::NMajor(x), dw, &opts)
    }
}
