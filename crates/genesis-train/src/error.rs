//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can stop a training, evaluation or prediction run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {source}", path = path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying failure.
        source: std::io::Error,
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
    Torch(#[from] tch::TchError),
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

impl Error {
    /// An [`Error::Io`] for `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
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
