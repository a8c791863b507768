//! Dense GEMM in the three layouts of a linear layer, f64 accumulation of bf16 operands.

use crate::error::shape;
use crate::{MatLayout, Result};
use half::bf16;

fn check_len(op: &'static str, what: &str, got: usize, rows: usize, cols: usize) -> Result<()> {
    if got != rows * cols {
        return Err(shape(op, format!("{what} has {got} elements, expected {rows} x {cols} = {}", rows * cols)));
    }
    Ok(())
}

/// D (m x n, row-major) = A (m x k) * B (k x n), each operand in the stated storage layout.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    a: &[bf16],
    a_layout: MatLayout,
    b: &[bf16],
    b_layout: MatLayout,
    m: usize,
    n: usize,
    k: usize,
) -> Result<Vec<f32>> {
    check_len("matmul", "A", a.len(), m, k)?;
    check_len("matmul", "B", b.len(), k, n)?;
    let at = |i: usize, p: usize| match a_layout {
        MatLayout::RowMajor => a[i * k + p],
        MatLayout::ColMajor => a[p * m + i],
    };
    let bt = |p: usize, j: usize| match b_layout {
        MatLayout::RowMajor => b[p * n + j],
        MatLayout::ColMajor => b[j * k + p],
    };
    let mut d = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f64;
            for p in 0..k {
                s += at(i, p).to_f64() * bt(p, j).to_f64();
            }
            d[i * n + j] = s as f32;
        }
    }
    Ok(d)
}

/// Forward of a linear layer: Y (tokens x d_out) = X (tokens x d_in) W^T, W is d_out x d_in.
pub fn linear_forward(x: &[bf16], w: &[bf16], tokens: usize, d_in: usize, d_out: usize) -> Result<Vec<f32>> {
    check_len("linear_forward", "X", x.len(), tokens, d_in)?;
    check_len("linear_forward", "W", w.len(), d_out, d_in)?;
    // W^T (d_in x d_out) is W read column-major.
    matmul(x, MatLayout::RowMajor, w, MatLayout::ColMajor, tokens, d_out, d_in)
}

/// Input gradient: dX (tokens x d_in) = dY (tokens x d_out) W (d_out x d_in).
pub fn linear_grad_input(dy: &[bf16], w: &[bf16], tokens: usize, d_in: usize, d_out: usize) -> Result<Vec<f32>> {
    check_len("linear_grad_input", "dY", dy.len(), tokens, d_out)?;
    check_len("linear_grad_input", "W", w.len(), d_out, d_in)?;
    matmul(dy, MatLayout::RowMajor, w, MatLayout::RowMajor, tokens, d_in, d_out)
}

/// Weight gradient: dW (d_out x d_in) = dY^T (d_out x tokens) X (tokens x d_in).
pub fn linear_grad_weight(dy: &[bf16], x: &[bf16], tokens: usize, d_in: usize, d_out: usize) -> Result<Vec<f32>> {
    check_len("linear_grad_weight", "dY", dy.len(), tokens, d_out)?;
    check_len("linear_grad_weight", "X", x.len(), tokens, d_in)?;
    matmul(dy, MatLayout::ColMajor, x, MatLayout::RowMajor, d_out, d_in, tokens)
}
