//! The Sparse24 storage layout, named once and used by the CPU reference, the GPU wrappers and
//! the tests. docs/layout.md has the diagram; the kernels in cuda/ write exactly this.
//!
//! A dense M x K matrix, 2:4 along K (each run of four columns of a row keeps two), is stored as:
//! - **values**: the kept elements, row-major, M x K/2, in column order within each group;
//! - **metadata** ("register order"): one u32 per (16-row block `rb`, 32-column chunk `kc`,
//!   row-in-block `g` in 0..8, half `t` in 0..2), at index `((rb * K/32 + kc) * 16 + g * 2 + t)`.
//!   Bits 0..16 hold the four 4-bit group nibbles of row `16 rb + g`, columns `32 kc + 16 t ..+16`;
//!   bits 16..32 the same for row `16 rb + g + 8`. A nibble is `i0 | i1 << 2` with `i0 < i1` the
//!   positions kept within the group (PTX ISA 9.7.14.6.1, `::ordered_metadata`).
//!   This word is the metadata register that lane `4g + t` of a warp passes to
//!   `mma.sp::ordered_metadata .m16n8k32` with sparsity selector 0 (PTX ISA 9.7.14.6.2), and that
//!   each warp of a warpgroup passes to `wgmma.mma_async.sp .m64nNk32` for its 16 rows
//!   (PTX ISA 9.7.15.6.1), so a kernel loads it and hands it to the tensor core untouched.
//! - **mask**: one bit per dense element, row-major, K/32 u32 words a row, bit `j` of word `w`
//!   = column `32 w + j` kept.

/// Rows of a metadata block (one mma.sp m16 tile).
pub const META_ROWS: usize = 16;
/// Columns (dense K) covered by one metadata word pair (one mma.sp k32 step).
pub const META_COLS: usize = 32;

/// Number of u32 metadata words of an M x K 2:4 matrix.
pub fn meta_words(rows: usize, cols: usize) -> usize {
    (rows / META_ROWS) * (cols / META_COLS) * 16
}

/// Number of u32 mask words of an M x K matrix.
pub fn mask_words(rows: usize, cols: usize) -> usize {
    rows * (cols / 32)
}

/// Where the nibbles of dense row `r`, 16-column half starting at column `c16` (a multiple of
/// 16) live: (word index, bit shift of the 16 nibble bits inside the word).
pub fn meta_position(r: usize, c16: usize, cols: usize) -> (usize, u32) {
    let (rb, g, h) = (r / 16, r % 8, (r % 16) / 8);
    let (kc, t) = (c16 / 32, (c16 % 32) / 16);
    (((rb * (cols / 32) + kc) * 16) + g * 2 + t, 16 * h as u32)
}

/// The shape rule of Sparse24: rows a multiple of 16, columns a multiple of 32, both non-zero.
pub fn check_shape(op: &'static str, rows: usize, cols: usize) -> crate::Result<()> {
    if rows == 0 || cols == 0 || rows % META_ROWS != 0 || cols % META_COLS != 0 {
        return Err(crate::error::unsupported(
            op,
            format!(
                "a 2:4 matrix must have rows a multiple of 16 and columns (the 2:4 axis) a multiple of 32, got {rows} x {cols}; pad the matrix to the next multiple"
            ),
        ));
    }
    Ok(())
}
