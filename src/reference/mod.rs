//! The CPU reference of every twofour kernel: simple, obviously right, f32/f64 math on bf16 data.
//! Each GPU kernel is tested against the function of the same name here.

pub mod compress;
pub mod decay;
pub mod gated;
pub mod gemm;
pub mod mvue;
pub mod philox;
pub mod prune24;
pub mod transposable;

pub use compress::{compress, compress_transposed, decompress};
pub use decay::{flip_rate, masked_decay};
pub use gated::{gated_backward, gated_forward, Gate};
pub use gemm::{linear_forward, linear_grad_input, linear_grad_weight, matmul};
pub use mvue::{mvue24, mvue24_f32, mvue24_with_mask};
pub use prune24::prune24_rows;
pub use transposable::{patterns, transposable_mask};
