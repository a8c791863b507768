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
    // Operands widened to f64 once, A as rows and B as columns (both contiguous along K), so the
    // inner loop is a plain dot product; the sum runs over p = 0..k in order, as written.
    let a_rows: Vec<f64> = match a_layout {
        MatLayout::RowMajor => a.iter().map(|v| v.to_f64()).collect(),
        MatLayout::ColMajor => (0..m * k).map(|i| a[(i % k) * m + i / k].to_f64()).collect(),
    };
    let b_cols: Vec<f64> = match b_layout {
        MatLayout::RowMajor => (0..n * k).map(|i| b[(i % k) * n + i / k].to_f64()).collect(),
        MatLayout::ColMajor => b.iter().map(|v| v.to_f64()).collect(),
    };
    let mut d = vec![0f32; m * n];
    for (i, row) in d.chunks_mut(n.max(1)).enumerate().take(m) {
        let ar = &a_rows[i * k..(i + 1) * k];
        for (j, out) in row.iter_mut().enumerate() {
            let bc = &b_cols[j * k..(j + 1) * k];
            let mut s = 0f64;
            for p in 0..k {
                s += ar[p] * bc[p];
            }
            *out = s as f32;
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
