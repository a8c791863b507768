//! # twofour
//!
//! 2:4 structured sparsity for training transformers on NVIDIA tensor cores: kernels
//! (`cuda/`, compiled by build.rs and embedded), a safe API over `cudarc`, and
//! [`reference`], the CPU definition every kernel is tested against.
//!
//! ```no_run
//! use twofour::{Device, DeviceMatrix, prune24_compress};
//! # fn main() -> twofour::Result<()> {
//! let dev = Device::new(0)?;
//! let w = twofour::reference::philox::normal_bf16(1, 64 * 128);
//! let w = DeviceMatrix::from_host(&dev, 64, 128, &w)?;
//! let sparse = prune24_compress(&dev, &w)?; // values + tensor-core metadata + mask
//! # Ok(()) }
//! ```

pub mod bitmask;
pub mod decay;
pub mod device;
pub mod error;
pub mod gated;
pub mod kernels;
pub mod launch;
pub mod layout;
pub mod mask24;
pub mod matrix;
pub mod mvue24;
pub mod peer;
pub mod plot;
pub mod prune24;
pub mod reference;
pub mod shape_table;
pub mod shapes;
pub mod sparse24;
pub mod sparse_gemm;
pub mod sparse_linear;
pub mod sparse_mma_sm80;
pub mod tensors;
pub mod timing;

pub use bitmask::BitMask;
pub use device::{Device, KernelImage};
pub use error::{Error, Result};
pub use decay::{flip_rate, masked_decay};
pub use gated::{gated_backward, gated_backward_mvue, gated_backward_with, gated_forward, gated_forward_with, gelu_backward, gelu_backward_mvue, gelu_backward_mvue_variant, GatedLayout};
pub use mask24::{adamw_masked_compress_async, apply_mask_compress_async, apply_mask_compress_into, apply_mask_compress_with, transposable_mask_compress, transposable_mask_compress_async, transposable_mask_compress_into, transposable_mask_compress_with, MaskStatus};
pub use launch::LaunchShape;
pub use matrix::DeviceMatrix;
pub use mvue24::{mvue24_compress, mvue24_compress_into, mvue24_compress_with};
pub use prune24::{prune24_compress, prune24_compress_into};
pub use shape_table::ShapeTable;
pub use sparse24::{Sparse24, Sparse24Host};
pub use sparse_gemm::{sparse_gemm, sparse_gemm_gelu_backward, BOperand, FusedEpilogue, GemmOptions, GemmOut, Schedule, TileConfig};
pub use sparse_linear::SparseLinear;
pub use sparse_mma_sm80::{sparse_gemm_sm80, sparse_mma_naive, MetaReading};

/// Storage order of a matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MatLayout {
    RowMajor,
    ColMajor,
}
