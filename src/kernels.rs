//! The compiled kernels, embedded at build time (build.rs).

/// Every `cuda/*.cu`, one fatbin: sm_80 and sm_90a cubins plus compute_80 PTX.
pub(crate) static FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/twofour.fatbin"));

/// The same sources as compute_80 PTX alone: loading it forces the Ampere code path on any GPU
/// (the driver JIT-compiles it), so the sm_80 kernels can be tested on a Hopper GPU.
pub(crate) static PTX_SM80: &str = include_str!(concat!(env!("OUT_DIR"), "/twofour_sm80.ptx"));

/// The ptxas resource report (registers, spills, shared memory per kernel and architecture).
pub static PTXAS_REPORT: &str = include_str!(concat!(env!("OUT_DIR"), "/ptxas-report.txt"));
