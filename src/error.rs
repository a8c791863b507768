//! The one error type of twofour. Every variant says what went wrong and what to do about it.

use cudarc::driver::DriverError;

/// What can go wrong in twofour's public API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Operand shapes that do not fit together (or do not match the data given).
    #[error("{op}: shape mismatch: {detail}")]
    Shape { op: &'static str, detail: String },

    /// A dimension the kernels cannot take (zero, misaligned, or beyond what the hardware allows).
    #[error("{op}: unsupported dimension: {detail}")]
    Unsupported { op: &'static str, detail: String },

    /// Data that breaks a stated invariant (a matrix that is not 2:4, corrupt metadata, a NaN score).
    #[error("{op}: invalid data: {detail}")]
    InvalidData { op: &'static str, detail: String },

    /// No CUDA driver or no GPU on this machine.
    #[error("no CUDA GPU available: {0}. twofour's GPU functions need an NVIDIA GPU (compute capability 8.0 or newer) and its driver; the CPU reference in twofour::reference works without one")]
    NoGpu(String),

    /// A GPU older than Ampere.
    #[error("GPU {name} has compute capability {major}.{minor}; twofour needs 8.0 or newer (A100, H100 or later): 2:4 sparse tensor-core instructions do not exist before sm_80")]
    GpuTooOld { name: String, major: i32, minor: i32 },

    /// A CUDA driver call that failed, with what twofour was doing at the time.
    #[error("CUDA driver error while {during}: {source}")]
    Driver {
        during: String,
        #[source]
        source: DriverError,
    },
}

/// twofour's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches "what we were doing" to a driver error: `.during("copying W to the GPU")?`.
pub(crate) trait During<T> {
    fn during(self, what: impl Into<String>) -> Result<T>;
}

impl<T> During<T> for std::result::Result<T, DriverError> {
    fn during(self, what: impl Into<String>) -> Result<T> {
        self.map_err(|source| Error::Driver { during: what.into(), source })
    }
}

pub(crate) fn shape(op: &'static str, detail: impl Into<String>) -> Error {
    Error::Shape { op, detail: detail.into() }
}

pub(crate) fn unsupported(op: &'static str, detail: impl Into<String>) -> Error {
    Error::Unsupported { op, detail: detail.into() }
}

pub(crate) fn invalid(op: &'static str, detail: impl Into<String>) -> Error {
    Error::InvalidData { op, detail: detail.into() }
}
