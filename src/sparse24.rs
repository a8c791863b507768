//! `Sparse24`: a 2:4-compressed matrix on the GPU in the layout the tensor cores consume
//! (crate::layout, docs/layout.md), with the mask it came from. `Sparse24Host` is the same on the
//! host, as the CPU reference produces it.

use crate::bitmask::BitMask;
use crate::device::Device;
use crate::error::shape;
use crate::layout::{check_shape, mask_words, meta_words};
use crate::Result;
use cudarc::driver::CudaSlice;
use half::bf16;

/// A 2:4 matrix on the host: `rows` x `cols` dense, 2:4 along `cols`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sparse24Host {
    pub rows: usize,
    pub cols: usize,
    /// Kept values, row-major, rows x cols/2.
    pub values: Vec<bf16>,
    /// Metadata words in register order (crate::layout).
    pub meta: Vec<u32>,
    /// The mask the matrix was compressed under.
    pub mask: BitMask,
}

/// A 2:4 matrix on the GPU: `rows` x `cols` dense, 2:4 along `cols` (the GEMM's K).
pub struct Sparse24 {
    rows: usize,
    cols: usize,
    pub(crate) values: CudaSlice<bf16>,
    pub(crate) meta: CudaSlice<u32>,
    pub(crate) mask: CudaSlice<u32>,
}

impl Sparse24 {
    /// Storage for a rows x cols 2:4 matrix, every byte 0xFF until a kernel writes it.
    pub fn alloc(dev: &Device, rows: usize, cols: usize) -> Result<Self> {
        check_shape("Sparse24::alloc", rows, cols)?;
        Ok(Self {
            rows,
            cols,
            values: dev.alloc_poisoned(rows * cols / 2)?,
            meta: dev.alloc_poisoned(meta_words(rows, cols))?,
            mask: dev.alloc_poisoned(mask_words(rows, cols))?,
        })
    }

    /// Uploads a host 2:4 matrix.
    pub fn from_host(dev: &Device, h: &Sparse24Host) -> Result<Self> {
        check_shape("Sparse24::from_host", h.rows, h.cols)?;
        if h.values.len() != h.rows * h.cols / 2
            || h.meta.len() != meta_words(h.rows, h.cols)
            || h.mask.words().len() != mask_words(h.rows, h.cols)
        {
            return Err(shape("Sparse24::from_host", format!("buffers do not fit a {} x {} 2:4 matrix", h.rows, h.cols)));
        }
        Ok(Self {
            rows: h.rows,
            cols: h.cols,
            values: dev.upload(&h.values)?,
            meta: dev.upload(&h.meta)?,
            mask: dev.upload(h.mask.words())?,
        })
    }

    /// Downloads values, metadata and mask.
    pub fn to_host(&self, dev: &Device) -> Result<Sparse24Host> {
        let words = dev.download(&self.mask)?;
        let mask = BitMask::from_words(self.rows, self.cols, words)
            .ok_or_else(|| shape("Sparse24::to_host", "mask size"))?;
        Ok(Sparse24Host {
            rows: self.rows,
            cols: self.cols,
            values: dev.download(&self.values)?,
            meta: dev.download(&self.meta)?,
            mask,
        })
    }

    /// Dense rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Dense columns (the 2:4 axis).
    pub fn cols(&self) -> usize {
        self.cols
    }
}
