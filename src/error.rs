//! The crate's error type. Every failure a user can cause (bad shapes, bad
//! options, unreadable data, a missing GPU) is a value of [`Error`] that names
//! what was wrong; nothing in the library panics on user input.

use std::path::PathBuf;

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a call into the crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor's element count does not match the shape it was given with.
    #[error("{tensor} has {got} elements, expected {expected} for shape {shape}")]
    ShapeMismatch { tensor: &'static str, got: usize, expected: usize, shape: String },

    /// A dimension that must be positive is zero.
    #[error("dimension {dim} must be positive, got 0")]
    ZeroDim { dim: &'static str },

    /// A tensor holds NaN or an infinity.
    #[error("{tensor} holds a non-finite value ({value}) at flat index {index}")]
    NonFinite { tensor: &'static str, index: usize, value: f32 },

    /// A tensor holds a value that the call's precision cannot hold.
    #[error("{tensor} holds {value} at flat index {index}, beyond the range of {precision}")]
    OutOfRange { tensor: &'static str, index: usize, value: f32, precision: &'static str },

    /// An option is outside its allowed range.
    #[error("invalid {name}: {value} ({reason})")]
    InvalidOption { name: &'static str, value: String, reason: &'static str },

    /// The requested backend cannot run here.
    #[error("backend {backend} unavailable: {reason}")]
    BackendUnavailable { backend: &'static str, reason: String },

    /// Two tensors given to an autograd op do not fit together.
    #[error("{op}: {what}")]
    OpShape { op: &'static str, what: String },

    /// A model or training configuration is inconsistent.
    #[error("invalid configuration: {what}")]
    InvalidConfig { what: String },

    /// One record of a data file is malformed.
    #[error("{path}: record {record}: {what}")]
    DataRecord { path: PathBuf, record: usize, what: String },

    /// Training cannot go on (the loss stopped being finite).
    #[error("training failed at step {step}: {what}")]
    Training { step: u64, what: String },

    /// A data file is malformed.
    #[error("{path}: {what}")]
    Data { path: PathBuf, what: String },

    /// An I/O failure, with the path it concerned.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A checkpoint could not be encoded or decoded.
    #[error("checkpoint {path}: {what}")]
    Checkpoint { path: PathBuf, what: String },
}

impl Error {
    /// Wraps an I/O error with the path it concerned.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
