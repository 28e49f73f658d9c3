//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can stop a training, evaluation or prediction run.
///
/// A variant that wraps another error shows that error's message in its own and does
/// not return it from `source()` (the transparent ones pass on the inner error's), so
/// that the binary's chain printing (`{:#}` of anyhow) shows each message once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {error}", path = path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying failure.
        error: std::io::Error,
    },
    /// A configuration value (from TOML or a flag) is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A TOML configuration file does not parse.
    #[error("{path}: {message}", path = path.display())]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The data directory does not hold what the task needs.
    #[error("{path}: {message}", path = path.display())]
    Data {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A training checkpoint is missing, truncated or inconsistent.
    #[error("{path}: {message}", path = path.display())]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The loss became NaN or infinite; the last good checkpoint is kept.
    #[error(
        "loss is {value} at epoch {epoch}, step {step}: training diverged (try a lower learning rate); \
         the last good checkpoint is kept in {run_dir}",
        run_dir = run_dir.display()
    )]
    NonFiniteLoss {
        /// The offending value.
        value: f64,
        /// Epoch (0-based).
        epoch: usize,
        /// Step within the epoch (0-based).
        step: usize,
        /// The run directory.
        run_dir: PathBuf,
    },
    /// The run was interrupted (Ctrl-C or a requested stop) after `last` was saved.
    #[error("interrupted at epoch {epoch}, step {step}; resume with --resume {run_dir}", run_dir = run_dir.display())]
    Interrupted {
        /// Epoch (0-based).
        epoch: usize,
        /// Steps done in that epoch.
        step: usize,
        /// The run directory.
        run_dir: PathBuf,
    },
    /// The background data producer stopped unexpectedly.
    #[error("data producer stopped: {0}")]
    Producer(String),
    /// A libtorch operation failed.
    #[error("libtorch: {0}")]
    Torch(tch::TchError),
    /// Building or loading a model failed.
    #[error(transparent)]
    Model(#[from] genesis_models::Error),
    /// Reading or writing arrays and volumes failed.
    #[error(transparent)]
    Volume(#[from] genesis_io::Error),
    /// Generating training pairs failed.
    #[error(transparent)]
    Transform(#[from] genesis_transforms::Error),
    /// Writing a picture failed.
    #[error("{path}: cannot write image: {message}", path = path.display())]
    Image {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

// By hand rather than `#[from]`, which would also return the libtorch error from
// `source()` and so print its message twice in a chain.
impl From<tch::TchError> for Error {
    fn from(error: tch::TchError) -> Self {
        Error::Torch(error)
    }
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            error,
        }
    }

    /// An [`Error::Data`] for `path`.
    pub(crate) fn data(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Data {
            path: path.into(),
            message: message.into(),
        }
    }

    /// An [`Error::Checkpoint`] for `path`.
    pub(crate) fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.into(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_errors_print_once_in_the_chain() {
        let gone = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let own = Error::io("run/config.toml", gone());
        // A genesis-io error passes through transparently.
        let volume = Error::from(genesis_io::read_volume("absent.nii.gz").unwrap_err());
        for (error, expected) in [
            (own, "run/config.toml: no such file"),
            (
                volume,
                "absent.nii.gz: No such file or directory (os error 2)",
            ),
        ] {
            assert_eq!(format!("{:#}", anyhow::Error::from(error)), expected);
        }
    }
}
