//! `DeviceMatrix<T>`: a dense row-major matrix on the GPU that knows its shape.

use crate::device::Device;
use crate::error::shape;
use crate::Result;
use cudarc::driver::{CudaSlice, DeviceRepr};

/// A rows x cols row-major matrix in GPU memory.
pub struct DeviceMatrix<T> {
    rows: usize,
    cols: usize,
    data: CudaSlice<T>,
}

impl<T: DeviceRepr + Default + Clone> DeviceMatrix<T> {
    /// Uploads a row-major host matrix.
    pub fn from_host(dev: &Device, rows: usize, cols: usize, data: &[T]) -> Result<Self> {
        if rows == 0 || cols == 0 || data.len() != rows * cols {
            return Err(shape("DeviceMatrix::from_host", format!("{} elements for a {rows} x {cols} matrix", data.len())));
        }
        Ok(Self { rows, cols, data: dev.upload(data)? })
    }

    /// A matrix whose bytes are all 0xFF (see `Device::alloc_poisoned`).
    pub fn poisoned(dev: &Device, rows: usize, cols: usize) -> Result<Self> {
        if rows == 0 || cols == 0 {
            return Err(shape("DeviceMatrix::poisoned", format!("empty {rows} x {cols} matrix")));
        }
        Ok(Self { rows, cols, data: dev.alloc_poisoned(rows * cols)? })
    }

    /// Downloads to a row-major host vector.
    pub fn to_host(&self, dev: &Device) -> Result<Vec<T>> {
        dev.download(&self.data)
    }

}

impl<T> DeviceMatrix<T> {
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    pub fn data(&self) -> &CudaSlice<T> {
        &self.data
    }
    pub fn data_mut(&mut self) -> &mut CudaSlice<T> {
        &mut self.data
    }
}
