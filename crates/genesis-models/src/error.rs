//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong while building a network, running it on a
/// badly shaped input, or moving weights in and out of files.
///
/// A variant that wraps another error shows that error's message in its own and
/// does not return it from `source()`, so that printing the chain (`{:#}` of
/// anyhow) shows each message once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {error}", path = path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying failure.
        error: std::io::Error,
    },
    /// The zip container of a `torch.save` checkpoint could not be read.
    #[error("{path}: cannot read the torch.save zip archive: {error}", path = path.display())]
    Zip {
        /// The file.
        path: PathBuf,
        /// The underlying failure.
        error: zip::result::ZipError,
    },
    /// The file is neither safetensors nor a `torch.save` checkpoint.
    #[error(
        "{path}: unrecognised weight file (expected .safetensors, or a torch.save checkpoint in the zip or legacy format)",
        path = path.display()
    )]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },
    /// The pickle stream uses an opcode this reader does not implement.
    #[error(
        "{path}: unsupported pickle opcode {opcode} (0x{byte:02x}) at byte {offset}",
        path = path.display()
    )]
    UnsupportedOpcode {
        /// The file.
        path: PathBuf,
        /// The opcode's name in Python's `pickletools`.
        opcode: &'static str,
        /// The opcode byte.
        byte: u8,
        /// Offset of the opcode in the pickle stream.
        offset: usize,
    },
    /// The pickle stream is truncated or inconsistent.
    #[error("{path}: malformed pickle at byte {offset}: {message}", path = path.display())]
    Pickle {
        /// The file.
        path: PathBuf,
        /// Offset in the pickle stream where the problem was found.
        offset: usize,
        /// What is wrong.
        message: String,
    },
    /// The checkpoint decodes but does not hold what a state dict should.
    #[error("{path}: {message}", path = path.display())]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The checkpoint has a parameter the network does not.
    #[error("{path}: unknown parameter `{name}` (not in the network)", path = path.display())]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The parameter name, after prefix stripping.
        name: String,
    },
    /// The network has a parameter the checkpoint does not.
    #[error("{path}: missing parameter `{name}` (the network has it, the file does not)", path = path.display())]
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The parameter name.
        name: String,
    },
    /// A parameter's shape in the file differs from the network's.
    #[error(
        "{path}: shape mismatch for `{name}`: the network expects {expected:?}, the file has {found:?}",
        path = path.display()
    )]
    ShapeMismatch {
        /// The file.
        path: PathBuf,
        /// The parameter name.
        name: String,
        /// Shape in the network.
        expected: Vec<i64>,
        /// Shape in the file.
        found: Vec<i64>,
    },
    /// A libtorch call on a file's content failed.
    #[error("{path}: {error}", path = path.display())]
    TorchFile {
        /// The file.
        path: PathBuf,
        /// The libtorch failure.
        error: tch::TchError,
    },
    /// A configuration value is out of range.
    #[error("invalid model config: {0}")]
    InvalidConfig(String),
    /// The input tensor cannot go through the network.
    #[error("input of shape {shape:?} cannot go through the {arch}: {reason}")]
    InputShape {
        /// The network (`3D U-Net` or `V-Net`).
        arch: &'static str,
        /// The input's shape.
        shape: Vec<i64>,
        /// Why not.
        reason: String,
    },
    /// A device string is not one of `cpu`, `cuda`, `cuda:N`, `auto`.
    #[error("invalid device `{0}`: expected cpu, cuda, cuda:N or auto")]
    InvalidDevice(String),
    /// A CUDA device was asked for but libtorch sees fewer devices.
    #[error("device `{requested}` is not available: libtorch sees {available} CUDA device(s)")]
    DeviceUnavailable {
        /// The device string as given.
        requested: String,
        /// How many CUDA devices libtorch reports.
        available: i64,
    },
    /// A libtorch call failed.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
