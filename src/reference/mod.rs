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
pub use decay::{adamw_masked, flip_rate, masked_decay, AdamWStep};
pub use gated::{gated_backward, gated_forward, gelu_backward, Gate};
pub use gemm::{linear_forward, linear_grad_input, linear_grad_weight, matmul};
pub use mvue::{mvue24, mvue24_f32, mvue24_with_mask};
pub use prune24::prune24_rows;
pub use transposable::{patterns, transposable_mask};

/// ||got - want|| / ||want|| (f64): the error measure every GPU-vs-reference check states its
/// bound in. NaN anywhere (an unwritten, poisoned output) makes it NaN, which fails any bound.
pub fn rel_error(got: impl IntoIterator<Item = f64>, want: impl IntoIterator<Item = f64>) -> f64 {
    let (mut e, mut r) = (0f64, 0f64);
    for (g, w) in got.into_iter().zip(want) {
        e += (g - w) * (g - w);
        r += w * w;
    }
    (e / r).sqrt()
}
