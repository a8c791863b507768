//! Peers twofour is measured against in its benches: cuSPARSELt (NVIDIA's 2:4 sparse GEMM
//! library), loaded at run time. cuBLASLt dense comes straight from cudarc.

pub mod cusparselt;
#[allow(clippy::all)]
pub mod cusparselt_sys;
