//! Compression of a 2:4 matrix into the Sparse24 layout (crate::layout), and back.

use crate::bitmask::BitMask;
use crate::error::{invalid, shape};
use crate::layout::{check_shape, meta_position, meta_words};
use crate::sparse24::Sparse24Host;
use crate::Result;
use half::bf16;

/// Compresses a row-major rows x cols matrix under `mask`, which must keep exactly two of every
/// four along each row. Values at kept positions are stored as they are (zeros included).
pub fn compress(dense: &[bf16], rows: usize, cols: usize, mask: &BitMask) -> Result<Sparse24Host> {
    check_shape("compress", rows, cols)?;
    if dense.len() != rows * cols || mask.rows() != rows || mask.cols() != cols {
        return Err(shape(
            "compress",
            format!("{} elements and a {}x{} mask for a {rows} x {cols} matrix", dense.len(), mask.rows(), mask.cols()),
        ));
    }
    let mut values = Vec::with_capacity(rows * cols / 2);
    let mut meta = vec![0u32; meta_words(rows, cols)];
    for r in 0..rows {
        for c16 in (0..cols).step_by(16) {
            let mut nibbles = 0u32;
            for q in 0..4 {
                let base = c16 + 4 * q;
                let kept: Vec<usize> = (0..4).filter(|&j| mask.get(r, base + j)).collect();
                if kept.len() != 2 {
                    return Err(invalid("compress", format!("row {r}, columns {base}..{}: the mask keeps {} of 4, not 2", base + 4, kept.len())));
                }
                nibbles |= (kept[0] as u32 | (kept[1] as u32) << 2) << (4 * q);
                values.extend(kept.iter().map(|&j| dense[r * cols + base + j]));
            }
            let (word, shift) = meta_position(r, c16, cols);
            meta[word] |= nibbles << shift;
        }
    }
    Ok(Sparse24Host { rows, cols, values, meta, mask: mask.clone() })
}

/// Compresses W^T (cols x rows) of a row-major W under the transpose of a transposable mask: the
/// A operand of dX = dY W. The mask must keep two of four along W's columns.
pub fn compress_transposed(w: &[bf16], rows: usize, cols: usize, mask: &BitMask) -> Result<Sparse24Host> {
    if w.len() != rows * cols {
        return Err(shape("compress_transposed", format!("{} elements for a {rows} x {cols} matrix", w.len())));
    }
    let mut wt = vec![bf16::ZERO; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            wt[c * rows + r] = w[r * cols + c];
        }
    }
    compress(&wt, cols, rows, &mask.transpose())
}

/// The dense matrix a Sparse24 stands for (dropped elements are +0). Checks the metadata.
pub fn decompress(s: &Sparse24Host) -> Result<Vec<bf16>> {
    let (rows, cols) = (s.rows, s.cols);
    check_shape("decompress", rows, cols)?;
    if s.values.len() != rows * cols / 2 || s.meta.len() != meta_words(rows, cols) {
        return Err(shape("decompress", format!("{} values and {} metadata words for {rows} x {cols}", s.values.len(), s.meta.len())));
    }
    let mut out = vec![bf16::ZERO; rows * cols];
    for r in 0..rows {
        for c16 in (0..cols).step_by(16) {
            let (word, shift) = meta_position(r, c16, cols);
            let nibbles = s.meta[word] >> shift;
            for q in 0..4 {
                let nib = nibbles >> (4 * q) & 0xf;
                let (i0, i1) = ((nib & 3) as usize, (nib >> 2) as usize);
                if i0 >= i1 {
                    return Err(invalid("decompress", format!("row {r}, group at column {}: metadata nibble {nib:#06b} is not two ascending indices", c16 + 4 * q)));
                }
                let v = r * cols / 2 + c16 / 2 + 2 * q;
                out[r * cols + c16 + 4 * q + i0] = s.values[v];
                out[r * cols + c16 + 4 * q + i1] = s.values[v + 1];
            }
        }
    }
    Ok(out)
}
