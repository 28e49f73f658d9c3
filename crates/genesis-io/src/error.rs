//! The crate's single error type.

use std::path::{Path, PathBuf};

/// Everything that can go wrong while reading, writing or processing a volume.
///
/// Every variant that concerns a file carries its path, and the message says
/// what is wrong with it. A variant that wraps another error shows that error's
/// message in its own and does not return it from `source()`, so that printing
/// the chain (`{:#}` of anyhow) shows each message once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The operating system refused an operation on the file.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// The file is not a valid file of its format (bad header, wrong sizes, truncated data).
    #[error("{}: {message}", path.display())]
    Format {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong, naming the offending key or value.
        message: String,
    },
    /// The file is valid but uses a feature this crate does not read or write.
    #[error("{}: unsupported: {message}", path.display())]
    Unsupported {
        /// The file concerned.
        path: PathBuf,
        /// The feature that is not supported.
        message: String,
    },
    /// The file name does not end in an extension this crate knows.
    #[error(
        "{}: unknown file extension (expected .mhd, .mha, .nrrd, .nhdr, .nii, .nii.gz or .npy)",
        path.display()
    )]
    UnknownExtension {
        /// The file concerned.
        path: PathBuf,
    },
    /// An error reported by the `nifti` crate.
    #[error("{}: nifti: {error}", path.display())]
    Nifti {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        error: nifti::NiftiError,
    },
    /// A caller passed an argument that cannot be used (a non-positive spacing, an item of the wrong length).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: &Path, error: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            error,
        }
    }

    pub(crate) fn format(path: &Path, message: impl Into<String>) -> Self {
        Error::Format {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    pub(crate) fn unsupported(path: &Path, message: impl Into<String>) -> Self {
        Error::Unsupported {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// A header-parser failure before the path is known; turned into [`Error`] by the caller.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ParseError {
    Format(String),
    Unsupported(String),
}

impl ParseError {
    pub(crate) fn at(self, path: &Path) -> Error {
        match self {
            ParseError::Format(message) => Error::format(path, message),
            ParseError::Unsupported(message) => Error::unsupported(path, message),
        }
    }
}

/// Shorthand for a format error in the header parsers.
pub(crate) fn bad<T>(message: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError::Format(message.into()))
}

/// Shorthand for an unsupported-feature error in the header parsers.
pub(crate) fn unsupported<T>(message: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError::Unsupported(message.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages of `error` and of every error under it, as a chain printer joins them.
    fn chain(error: &dyn std::error::Error) -> String {
        let mut text = error.to_string();
        let mut next = error.source();
        while let Some(cause) = next {
            text = format!("{text}: {cause}");
            next = cause.source();
        }
        text
    }

    #[test]
    fn a_wrapped_error_is_printed_once_in_the_chain() {
        let gone = std::io::Error::new(std::io::ErrorKind::NotFound, "no such scan");
        let error = Error::io(Path::new("scan.mhd"), gone);
        assert_eq!(chain(&error), "scan.mhd: no such scan");
    }
}
