//! The crate's single error type.

/// Everything that can go wrong in this crate.
///
/// Kernels only fail on input they cannot work with (shapes too small for their boxes,
/// buffers of the wrong length, memory layouts they do not accept, invalid configs or
/// NaN in a scan); given valid input they never fail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The cube is too small for the boxes a kernel draws.
    #[error("cube shape {shape:?} is too small for {kernel}: {reason}")]
    ShapeTooSmall {
        /// The kernel that cannot run.
        kernel: &'static str,
        /// The cube's (rows, cols, deps).
        shape: [usize; 3],
        /// Which bound is violated.
        reason: String,
    },
    /// Two arrays that must have the same shape do not.
    #[error("shape mismatch for {what}: expected {expected:?}, found {found:?}")]
    ShapeMismatch {
        /// Which array is wrong.
        what: &'static str,
        /// The shape it must have.
        expected: [usize; 3],
        /// The shape it has.
        found: [usize; 3],
    },
    /// A flat buffer does not hold the number of values its shape implies.
    #[error("buffer length mismatch for {what}: expected {expected} values, found {found}")]
    BufferLength {
        /// Which buffer is wrong.
        what: &'static str,
        /// The length it must have.
        expected: usize,
        /// The length it has.
        found: usize,
    },
    /// An output view is not contiguous in C (row-major) order.
    #[error("{what} must be a contiguous C-order (standard layout) array")]
    NotContiguous {
        /// Which array is wrong.
        what: &'static str,
    },
    /// A configuration value is out of its valid range.
    #[error("invalid config field {field}: {reason}")]
    InvalidConfig {
        /// The offending field, as named in the serde form.
        field: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// A scan is too small in x or y for the crop and the border.
    #[error("scan shape {shape:?} is too small for extraction: {reason}")]
    ScanTooSmall {
        /// The scan's (x, y, z) size.
        shape: [usize; 3],
        /// Which bound is violated.
        reason: String,
    },
    /// A drawn window of a scan contains NaN.
    #[error("scan contains NaN at (x, y, z) = {index:?}")]
    NanInScan {
        /// The first NaN voxel found, as (x, y, z).
        index: [usize; 3],
    },
}

/// Result with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
