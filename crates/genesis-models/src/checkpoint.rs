//! Weight import and export.
//!
//! Import reads, with no Python:
//! - safetensors files (our native format);
//! - `torch.save` zip checkpoints (PyTorch ≥ 1.6): `<archive>/data.pkl`
//!   plus one raw record per storage under `<archive>/data/<key>`;
//! - `torch.save` legacy checkpoints (PyTorch ≤ 1.5, and later versions with
//!   `_use_new_zipfile_serialization=False`; the published
//!   `Genesis_Chest_CT.pt` is one): a magic-number pickle, a protocol pickle,
//!   a system-info pickle, the object pickle, a pickle with the list of
//!   storage keys, then each storage as a little-endian `u64` element count
//!   followed by its raw bytes.
//!
//! The top level may be a state dict or a dict holding one under
//! `state_dict` (or `model_state_dict`, `model`) next to other entries.
//! `tch` reads neither torch.save format into named tensors reliably (its
//! `loadz_multi` goes through TorchScript's unpickler, which rejects the
//! legacy format), hence the reader in [`crate::pickle`].

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use tch::{Device, Tensor, nn};

use crate::pickle::{self, PickleError, StorageRef, TensorRef, Value};
use crate::{Error, Result, unet3d, vnet};

/// The legacy format's first pickle.
const LEGACY_MAGIC: i128 = 0x1950a86a20f9469cfc6c;
/// Keys under which training checkpoints keep the model's state dict.
const NESTED_STATE_DICT_KEYS: [&str; 3] = ["state_dict", "model_state_dict", "model"];
/// Largest element count accepted for a tensor with a zero stride.
const MAX_BROADCAST_NUMEL: i64 = 1 << 28;
/// Prefixes dropped from checkpoint names: `module.` from `DataParallel`,
/// `base_model.` from the official `TargetNet` wrapper.
const DROPPED_PREFIXES: [&str; 2] = ["module.", "base_model."];

/// Which of the network's variables [`load_weights`] initialises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InitScope {
    /// Every variable: segmentation fine-tuning from pretrained weights.
    #[default]
    Whole,
    /// Only the encoder (`down_tr*`, and `in_tr` for the V-Net):
    /// classification fine-tuning; the head keeps its fresh initialisation.
    EncoderOnly,
    /// Everything but the output layer (`out_tr.*`): segmentation from
    /// restoration weights with a freshly initialised output layer (the
    /// restoration head predicts intensities, not masks), or with a different
    /// number of classes.
    AllButOutput,
}

/// Top-level module of the output layer of both networks.
const OUTPUT_MODULE: &str = "out_tr";

/// What [`load_weights`] did, by name (sorted).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadReport {
    /// Variables set from the file.
    pub loaded: Vec<String>,
    /// In-scope variables the file lacks (they keep their values).
    pub missing: Vec<String>,
    /// File entries the network has no variable for.
    pub unexpected: Vec<String>,
    /// File entries outside the scope (the decoder, for
    /// [`InitScope::EncoderOnly`]; the output layer, for
    /// [`InitScope::AllButOutput`]).
    pub skipped: Vec<String>,
    /// The file.
    pub source: PathBuf,
}

impl LoadReport {
    /// Errs on the first unexpected or missing name, like PyTorch's
    /// `load_state_dict(strict=True)`. A missing `num_batches_tracked` is
    /// tolerated, as PyTorch does for checkpoints older than 0.4.1.
    pub fn ensure_complete(&self) -> Result<()> {
        if let Some(name) = self.unexpected.first() {
            return Err(Error::UnknownKey {
                path: self.source.clone(),
                name: name.clone(),
            });
        }
        if let Some(name) = self
            .missing
            .iter()
            .find(|n| !n.ends_with("num_batches_tracked"))
        {
            return Err(Error::MissingKey {
                path: self.source.clone(),
                name: name.clone(),
            });
        }
        Ok(())
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} loaded, {} missing, {} unexpected, {} skipped",
            self.source.display(),
            self.loaded.len(),
            self.missing.len(),
            self.unexpected.len(),
            self.skipped.len()
        )
    }
}

/// The checkpoint name with `module.` (DataParallel) and `base_model.`
/// (the official `TargetNet`) prefixes dropped.
pub fn official_name(name: &str) -> &str {
    let mut name = name;
    while let Some(stripped) = DROPPED_PREFIXES
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
    {
        name = stripped;
    }
    name
}

/// Whether a variable belongs to the U-Net or V-Net encoder.
fn is_encoder_name(name: &str) -> bool {
    let top = name.split('.').next().unwrap_or(name);
    unet3d::ENCODER_MODULES.contains(&top) || vnet::ENCODER_MODULES.contains(&top)
}

/// Loads weights from any supported file into `vs` (on whatever device
/// `vs` lives; values are converted to each variable's kind). Names are
/// matched after [`official_name`]. Nothing is written unless every
/// in-scope name present in both has the same shape; the first mismatch
/// is an [`Error::ShapeMismatch`] naming both shapes. Missing and
/// unexpected names are reported, not errors; call
/// [`LoadReport::ensure_complete`] for strict loading.
pub fn load_weights(
    vs: &mut nn::VarStore,
    path: impl AsRef<Path>,
    scope: InitScope,
) -> Result<LoadReport> {
    let path = path.as_ref();
    let file_tensors = read_state_dict(path)?;
    let mut by_name: HashMap<String, Tensor> = HashMap::with_capacity(file_tensors.len());
    let mut file_names = Vec::with_capacity(file_tensors.len());
    for (raw_name, tensor) in file_tensors {
        let name = official_name(&raw_name).to_string();
        if by_name.insert(name.clone(), tensor).is_some() {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                message: format!("two entries map to `{name}` once prefixes are dropped"),
            });
        }
        file_names.push(name);
    }

    let variables = vs.variables();
    let mut var_names: Vec<&String> = variables.keys().collect();
    var_names.sort();
    let in_scope = |name: &str| match scope {
        InitScope::Whole => true,
        InitScope::EncoderOnly => is_encoder_name(name),
        InitScope::AllButOutput => name.split('.').next() != Some(OUTPUT_MODULE),
    };

    let mut report = LoadReport {
        source: path.to_path_buf(),
        ..LoadReport::default()
    };
    let mut to_copy = Vec::new();
    for name in var_names {
        if !in_scope(name) {
            continue;
        }
        match by_name.get(name.as_str()) {
            Some(source) => {
                let target = &variables[name];
                if source.size() != target.size() {
                    return Err(Error::ShapeMismatch {
                        path: path.to_path_buf(),
                        name: name.clone(),
                        expected: target.size(),
                        found: source.size(),
                    });
                }
                to_copy.push((target, source));
                report.loaded.push(name.clone());
            }
            None => report.missing.push(name.clone()),
        }
    }
    for name in file_names {
        if !in_scope(&name) {
            report.skipped.push(name);
        } else if !variables.contains_key(&name) {
            report.unexpected.push(name);
        }
    }
    report.skipped.sort();
    report.unexpected.sort();

    tch::no_grad(|| -> Result<()> {
        for (target, source) in to_copy {
            let mut target = target.shallow_clone();
            target.f_copy_(source).map_err(|error| Error::TorchFile {
                path: path.to_path_buf(),
                error,
            })?;
        }
        Ok(())
    })?;
    Ok(report)
}

/// Writes every variable of `vs` to a safetensors file under its own
/// (official) name, through a temporary file renamed into place so a crash
/// never leaves a truncated file. `num_batches_tracked` is written as an
/// `int64` scalar, so PyTorch's `load_state_dict(strict=True)` accepts the
/// result.
pub fn save_safetensors(vs: &nn::VarStore, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(name, tensor)| (name, tensor.detach().to_device(Device::Cpu).contiguous()))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    write_safetensors_atomic(&named, path)
}

/// Writes named tensors (any device, any layout) to a safetensors file,
/// atomically like [`save_safetensors`]; for converted state dicts.
pub fn write_state_dict(named: &[(String, Tensor)], path: impl AsRef<Path>) -> Result<()> {
    let named: Vec<(String, Tensor)> = named
        .iter()
        .map(|(name, tensor)| {
            (
                name.clone(),
                tensor.detach().to_device(Device::Cpu).contiguous(),
            )
        })
        .collect();
    write_safetensors_atomic(&named, path.as_ref())
}

/// Writes contiguous CPU tensors to `path` atomically (temporary file +
/// rename).
fn write_safetensors_atomic(named: &[(String, Tensor)], path: &Path) -> Result<()> {
    let file_name = path.file_name().ok_or_else(|| Error::Io {
        path: path.to_path_buf(),
        error: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
    })?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp = path.with_file_name(temp_name);
    let result = Tensor::write_safetensors(named, &temp)
        .map_err(|error| Error::TorchFile {
            path: path.to_path_buf(),
            error,
        })
        .and_then(|()| {
            std::fs::rename(&temp, path).map_err(|error| Error::Io {
                path: path.to_path_buf(),
                error,
            })
        });
    if result.is_err() {
        // Best effort: the error being reported matters more.
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// Reads the state dict of any supported file as it is stored: the names
/// are the file's (prefixes kept; see [`official_name`]), the tensors are
/// contiguous CPU tensors in the file's element type. A training checkpoint
/// is searched for its nested state dict; non-tensor entries are left out.
pub fn read_state_dict(path: impl AsRef<Path>) -> Result<Vec<(String, Tensor)>> {
    let path = path.as_ref();
    let data = std::fs::read(path).map_err(|error| Error::Io {
        path: path.to_path_buf(),
        error,
    })?;
    // Safetensors first: its little-endian header length may start with the
    // byte 0x80 that also starts a pickle.
    if data.starts_with(b"PK\x03\x04") {
        read_zip_checkpoint(path, &data)
    } else if looks_like_safetensors(&data) {
        Tensor::read_safetensors(path).map_err(|error| Error::TorchFile {
            path: path.to_path_buf(),
            error,
        })
    } else if data.first() == Some(&0x80) {
        read_legacy_checkpoint(path, &data)
    } else {
        Err(Error::UnknownFormat {
            path: path.to_path_buf(),
        })
    }
}

/// A safetensors file starts with a little-endian `u64` header length and
/// a JSON object.
fn looks_like_safetensors(data: &[u8]) -> bool {
    let Some(len_bytes) = data.get(..8) else {
        return false;
    };
    let mut len = [0u8; 8];
    len.copy_from_slice(len_bytes);
    let header_len = u64::from_le_bytes(len);
    data.get(8) == Some(&b'{') && header_len.saturating_add(8) <= data.len() as u64
}

fn pickle_error(path: &Path, err: PickleError, base_offset: usize) -> Error {
    match err {
        PickleError::Unsupported {
            opcode,
            byte,
            offset,
        } => Error::UnsupportedOpcode {
            path: path.to_path_buf(),
            opcode,
            byte,
            offset: offset - base_offset,
        },
        PickleError::Malformed { offset, message } => Error::Pickle {
            path: path.to_path_buf(),
            offset: offset - base_offset,
            message,
        },
    }
}

fn checkpoint_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn read_zip_checkpoint(path: &Path, data: &[u8]) -> Result<Vec<(String, Tensor)>> {
    let zip_error = |error| Error::Zip {
        path: path.to_path_buf(),
        error,
    };
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(data)).map_err(zip_error)?;
    // The archive's top folder is named after the file when it was saved.
    let pickle_name = archive
        .file_names()
        .find(|name| name.ends_with("data.pkl") && name.matches('/').count() <= 1)
        .map(str::to_string)
        .ok_or_else(|| {
            checkpoint_error(
                path,
                "zip archive without data.pkl: not a torch.save checkpoint",
            )
        })?;
    let prefix = pickle_name.trim_end_matches("data.pkl").to_string();
    let read_entry =
        |archive: &mut zip::ZipArchive<std::io::Cursor<&[u8]>>, name: &str| -> Result<Vec<u8>> {
            let mut entry = archive.by_name(name).map_err(zip_error)?;
            // The declared size comes from the file: do not trust it for an
            // allocation beyond the archive's own size.
            let mut bytes = Vec::with_capacity((entry.size() as usize).min(data.len()));
            entry.read_to_end(&mut bytes).map_err(|error| Error::Io {
                path: path.to_path_buf(),
                error,
            })?;
            Ok(bytes)
        };
    let byteorder_name = format!("{prefix}byteorder");
    if archive.file_names().any(|name| name == byteorder_name) {
        let byteorder = read_entry(&mut archive, &byteorder_name)?;
        if byteorder.trim_ascii() != b"little" {
            return Err(checkpoint_error(
                path,
                "big-endian checkpoints are not supported",
            ));
        }
    }
    let pickle_bytes = read_entry(&mut archive, &pickle_name)?;
    let (root, _) = pickle::parse(&pickle_bytes, 0).map_err(|err| pickle_error(path, err, 0))?;
    let entries = state_dict_entries(path, root)?;

    let mut storages: HashMap<String, Tensor> = HashMap::new();
    for (_, tensor) in &entries {
        let key = &tensor.storage.key;
        if !storages.contains_key(key) {
            let bytes = read_entry(&mut archive, &format!("{prefix}data/{key}"))?;
            let storage = storage_tensor(path, &tensor.storage, &bytes)?;
            storages.insert(key.clone(), storage);
        }
    }
    materialise(path, entries, &storages)
}

fn read_legacy_checkpoint(path: &Path, data: &[u8]) -> Result<Vec<(String, Tensor)>> {
    let parse_at =
        |offset: usize| pickle::parse(data, offset).map_err(|err| pickle_error(path, err, 0));
    let (magic, offset) = parse_at(0)?;
    if magic != Value::BigInt(LEGACY_MAGIC) {
        return Err(checkpoint_error(
            path,
            "a pickle, but not a torch.save checkpoint (wrong magic number)",
        ));
    }
    let (protocol, offset) = parse_at(offset)?;
    if protocol != Value::Int(1001) {
        return Err(checkpoint_error(
            path,
            format!("unsupported torch.save legacy protocol {protocol:?} (expected 1001)"),
        ));
    }
    let (sys_info, offset) = parse_at(offset)?;
    if let Value::Dict(info) = &sys_info {
        let big_endian = info
            .iter()
            .any(|(k, v)| k == &Value::Str("little_endian".into()) && v == &Value::Bool(false));
        if big_endian {
            return Err(checkpoint_error(
                path,
                "big-endian checkpoints are not supported",
            ));
        }
    }
    let (root, offset) = parse_at(offset)?;
    let (keys, mut offset) = parse_at(offset)?;
    let Value::List(keys) = keys else {
        return Err(checkpoint_error(
            path,
            "storage key list is missing after the object pickle",
        ));
    };

    // Element types of every storage, including those of entries outside
    // the state dict (optimizer buffers): the records are back to back, so
    // skipping one needs its size in bytes.
    let mut kinds: HashMap<String, StorageRef> = HashMap::new();
    collect_storages(&root, &mut kinds);
    let entries = state_dict_entries(path, root)?;
    let needed: HashSet<&str> = entries
        .iter()
        .map(|(_, t)| t.storage.key.as_str())
        .collect();
    let mut storages: HashMap<String, Tensor> = HashMap::new();
    for key in keys {
        let Some(key) = (match &key {
            Value::Str(s) => Some(s.clone()),
            Value::Bytes(b) => String::from_utf8(b.clone()).ok(),
            _ => None,
        }) else {
            return Err(checkpoint_error(
                path,
                format!("storage key {key:?} is not a string"),
            ));
        };
        if storages.len() == needed.len() {
            break;
        }
        let Some(storage) = kinds.get(&key) else {
            return Err(checkpoint_error(
                path,
                format!("storage `{key}` is not referenced by the object pickle"),
            ));
        };
        let header = data
            .get(offset..offset + 8)
            .ok_or_else(|| checkpoint_error(path, format!("truncated before storage `{key}`")))?;
        let mut count = [0u8; 8];
        count.copy_from_slice(header);
        let numel = u64::from_le_bytes(count);
        let n_bytes = usize::try_from(numel)
            .ok()
            .and_then(|n| n.checked_mul(storage.kind.elt_size_in_bytes()))
            .ok_or_else(|| checkpoint_error(path, format!("storage `{key}` is too large")))?;
        let start = offset + 8;
        let bytes = data
            .get(start..start + n_bytes)
            .ok_or_else(|| checkpoint_error(path, format!("truncated inside storage `{key}`")))?;
        if needed.contains(key.as_str()) {
            storages.insert(key, storage_tensor(path, storage, bytes)?);
        }
        offset = start + n_bytes;
    }
    materialise(path, entries, &storages)
}

/// Every storage referenced anywhere in `value`, by key.
fn collect_storages(value: &Value, out: &mut HashMap<String, StorageRef>) {
    match value {
        Value::Storage(storage) => {
            out.entry(storage.key.clone())
                .or_insert_with(|| storage.clone());
        }
        Value::Tensor(tensor) => {
            out.entry(tensor.storage.key.clone())
                .or_insert_with(|| tensor.storage.clone());
        }
        Value::Tuple(items) | Value::List(items) => {
            items.iter().for_each(|v| collect_storages(v, out))
        }
        Value::Dict(entries) => entries.iter().for_each(|(k, v)| {
            collect_storages(k, out);
            collect_storages(v, out);
        }),
        Value::Object { callable, args } => {
            collect_storages(callable, out);
            collect_storages(args, out);
        }
        _ => {}
    }
}

/// Picks the state dict out of the top-level object and returns its tensor
/// entries in file order.
fn state_dict_entries(path: &Path, root: Value) -> Result<Vec<(String, TensorRef)>> {
    let Value::Dict(mut entries) = root else {
        return Err(checkpoint_error(
            path,
            "the top level is not a dict (expected a state dict)",
        ));
    };
    for nested_key in NESTED_STATE_DICT_KEYS {
        let nested = entries
            .iter()
            .position(|(k, v)| k == &Value::Str(nested_key.into()) && matches!(v, Value::Dict(_)));
        if let Some(index) = nested {
            if let (_, Value::Dict(inner)) = entries.swap_remove(index) {
                entries = inner;
            }
            break;
        }
    }
    let mut tensors = Vec::new();
    for (key, value) in entries {
        if let (Value::Str(name), Value::Tensor(tensor)) = (key, value) {
            tensors.push((name, tensor));
        }
    }
    if tensors.is_empty() {
        return Err(checkpoint_error(path, "no tensors found in the state dict"));
    }
    Ok(tensors)
}

/// One storage's raw little-endian bytes as a 1-D tensor.
fn storage_tensor(path: &Path, storage: &StorageRef, bytes: &[u8]) -> Result<Tensor> {
    let element_size = storage.kind.elt_size_in_bytes();
    if !bytes.len().is_multiple_of(element_size) {
        return Err(checkpoint_error(
            path,
            format!(
                "storage `{}` has {} bytes, not a multiple of {element_size}",
                storage.key,
                bytes.len()
            ),
        ));
    }
    let numel = (bytes.len() / element_size) as i64;
    Tensor::f_from_data_size(bytes, &[numel], storage.kind).map_err(|error| Error::TorchFile {
        path: path.to_path_buf(),
        error,
    })
}

/// Cuts each tensor out of its storage (offset, size, stride) and makes it
/// contiguous.
fn materialise(
    path: &Path,
    entries: Vec<(String, TensorRef)>,
    storages: &HashMap<String, Tensor>,
) -> Result<Vec<(String, Tensor)>> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(entries.len());
    for (name, tensor) in entries {
        if !seen.insert(name.clone()) {
            return Err(checkpoint_error(path, format!("duplicate entry `{name}`")));
        }
        let storage = storages.get(&tensor.storage.key).ok_or_else(|| {
            checkpoint_error(
                path,
                format!("`{name}`: storage `{}` is missing", tensor.storage.key),
            )
        })?;
        if storage.kind() != tensor.storage.kind {
            return Err(checkpoint_error(
                path,
                format!(
                    "`{name}`: storage `{}` is used with two element types",
                    tensor.storage.key
                ),
            ));
        }
        let available = storage.size()[0];
        let offset = tensor.offset + tensor.storage.view_offset;
        let bad = || {
            checkpoint_error(
                path,
                format!(
                    "`{name}`: size {:?}, stride {:?} and offset {offset} reach outside its storage of {available} elements",
                    tensor.size, tensor.stride
                ),
            )
        };
        if offset < 0 || tensor.stride.iter().any(|s| *s < 0) || tensor.size.iter().any(|s| *s < 0)
        {
            return Err(bad());
        }
        let numel = tensor
            .size
            .iter()
            .try_fold(1i64, |acc, side| acc.checked_mul(*side));
        // Only broadcast views (a zero stride) hold more elements than their
        // storage; bound those so a damaged file cannot ask for terabytes.
        let limit = if tensor.stride.contains(&0) {
            MAX_BROADCAST_NUMEL
        } else {
            available
        };
        if numel.is_none_or(|numel| numel > limit) {
            return Err(bad());
        }
        let is_empty = tensor.size.contains(&0);
        if !is_empty {
            let last =
                tensor
                    .size
                    .iter()
                    .zip(&tensor.stride)
                    .try_fold(offset, |acc, (size, stride)| {
                        (size - 1)
                            .checked_mul(*stride)
                            .and_then(|d| acc.checked_add(d))
                    });
            if last.is_none_or(|last| last >= available) {
                return Err(bad());
            }
        }
        // A copy, so that tensors cut from one storage do not share memory.
        let view = storage
            .f_as_strided(tensor.size.as_slice(), tensor.stride.as_slice(), offset)
            .and_then(|view| view.f_contiguous())
            .map(|view| view.copy())
            .map_err(|error| Error::TorchFile {
                path: path.to_path_buf(),
                error,
            })?;
        out.push((name, view));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn official_names_drop_wrapper_prefixes() {
        assert_eq!(
            official_name("module.down_tr64.ops.0.conv1.weight"),
            "down_tr64.ops.0.conv1.weight"
        );
        assert_eq!(
            official_name("module.base_model.out_tr.final_conv.bias"),
            "out_tr.final_conv.bias"
        );
        assert_eq!(official_name("dense_1.weight"), "dense_1.weight");
        assert!(is_encoder_name("down_tr512.ops.1.bn1.weight"));
        assert!(is_encoder_name("in_tr.conv1.weight"));
        assert!(!is_encoder_name("up_tr64.up_conv.weight"));
        assert!(!is_encoder_name("dense_1.weight"));
    }

    #[test]
    fn unknown_files_are_rejected_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights.bin");
        std::fs::write(&path, b"hello world, not weights").unwrap();
        let err = read_state_dict(&path).unwrap_err();
        assert!(matches!(err, Error::UnknownFormat { .. }), "{err}");
        assert!(err.to_string().contains("weights.bin"), "{err}");
        let missing = dir.path().join("absent.pt");
        assert!(matches!(read_state_dict(&missing), Err(Error::Io { .. })));
    }

    #[test]
    fn safetensors_round_trip_keeps_names_kinds_and_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let mut vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let weight = (&root / "a").var(
            "weight",
            &[2, 3],
            nn::Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        );
        let _ = (&root / "a").add("count", Tensor::from(7i64), false);
        save_safetensors(&vs, &path).unwrap();
        let back = read_state_dict(&path).unwrap();
        let names: Vec<&str> = back.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.len(), 2);
        let count = &back.iter().find(|(n, _)| n == "a.count").unwrap().1;
        assert_eq!(count.kind(), Kind::Int64);
        assert_eq!(count.size(), Vec::<i64>::new());
        let saved = weight.detach().copy();
        tch::no_grad(|| {
            let _ = weight.shallow_clone().fill_(0.0);
        });
        let report = load_weights(&mut vs, &path, InitScope::Whole).unwrap();
        assert_eq!(report.loaded.len(), 2);
        report.ensure_complete().unwrap();
        assert!(weight.equal(&saved));
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn shape_mismatch_names_both_shapes_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let source = nn::VarStore::new(Device::Cpu);
        let _ = (source.root() / "b").var("weight", &[4], nn::Init::Const(1.0));
        let _ = (source.root() / "a").var("weight", &[2], nn::Init::Const(1.0));
        save_safetensors(&source, &path).unwrap();

        let mut target = nn::VarStore::new(Device::Cpu);
        let a = (target.root() / "a").var("weight", &[2], nn::Init::Const(0.0));
        let _ = (target.root() / "b").var("weight", &[5], nn::Init::Const(0.0));
        let err = load_weights(&mut target, &path, InitScope::Whole).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("[5]") && message.contains("[4]") && message.contains("b.weight"),
            "{message}"
        );
        assert_eq!(a.sum(Kind::Float).double_value(&[]), 0.0);
    }

    #[test]
    fn report_lists_missing_unexpected_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let source = nn::VarStore::new(Device::Cpu);
        let _ = (source.root() / "down_tr64").var("x", &[1], nn::Init::Const(1.0));
        let _ = (source.root() / "up_tr64").var("x", &[1], nn::Init::Const(1.0));
        let _ = source.root().var("extra", &[1], nn::Init::Const(1.0));
        save_safetensors(&source, &path).unwrap();

        let mut target = nn::VarStore::new(Device::Cpu);
        let _ = (target.root() / "down_tr64").var("x", &[1], nn::Init::Const(0.0));
        let _ = (target.root() / "down_tr128").var("y", &[1], nn::Init::Const(0.0));
        let _ = (target.root() / "dense_1").var("weight", &[1], nn::Init::Const(0.0));
        let report = load_weights(&mut target, &path, InitScope::EncoderOnly).unwrap();
        assert_eq!(report.loaded, ["down_tr64.x"]);
        assert_eq!(report.missing, ["down_tr128.y"]);
        assert_eq!(report.skipped, ["extra", "up_tr64.x"]);
        assert!(report.unexpected.is_empty());
        assert!(matches!(
            report.ensure_complete(),
            Err(Error::MissingKey { .. })
        ));

        let _ = (source.root() / "out_tr").var("w", &[1], nn::Init::Const(1.0));
        save_safetensors(&source, &path).unwrap();
        let _ = (target.root() / "out_tr").var("w", &[1], nn::Init::Const(0.0));
        let report = load_weights(&mut target, &path, InitScope::AllButOutput).unwrap();
        assert_eq!(report.loaded, ["down_tr64.x"]);
        assert_eq!(report.skipped, ["out_tr.w"]);
        assert_eq!(report.unexpected, ["extra", "up_tr64.x"]);
        assert_eq!(target.variables()["out_tr.w"].double_value(&[0]), 0.0);

        let report = load_weights(&mut target, &path, InitScope::Whole).unwrap();
        assert_eq!(report.unexpected, ["extra", "up_tr64.x"]);
        assert_eq!(report.missing, ["dense_1.weight", "down_tr128.y"]);
        assert_eq!(target.variables()["out_tr.w"].double_value(&[0]), 1.0);
        let err = report.ensure_complete().unwrap_err();
        assert!(
            err.to_string().contains("unknown parameter `extra`"),
            "{err}"
        );
    }
}
