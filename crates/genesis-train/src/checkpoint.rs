//! Training checkpoints: one safetensors file holding the model variables
//! (official names), the optimiser state (`optimizer.*`) and, in the
//! header's metadata, a JSON record of the loop state (epoch, step, seed,
//! best validation loss, history, resolved configuration). One file, written
//! to a temporary name and renamed, so a checkpoint is always whole.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn};

use crate::metrics_log::EpochRecord;
use crate::optim::Optimizer;
use crate::{Error, Result};

/// Metadata key holding the JSON [`LoopState`].
const STATE_KEY: &str = "genesis_train_state";

/// Where the loop stands: everything besides tensors that an exact resume needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopState {
    /// The epoch to run next (0-based), or the epoch in progress when `step > 0`.
    pub epoch: usize,
    /// Training steps already done in `epoch`.
    pub step: usize,
    /// Optimiser updates done in total.
    pub optimizer_steps: u64,
    /// The run's seed (data order, transforms and initialisation derive from it).
    pub seed: u64,
    /// Best validation loss so far.
    pub best_valid_loss: Option<f64>,
    /// Epoch of the best validation loss.
    pub best_epoch: Option<usize>,
    /// Epochs since the last improvement (early stopping).
    pub epochs_without_improvement: usize,
    /// Sum of the training losses of the steps done in `epoch`.
    pub partial_loss_sum: f64,
    /// Data-wait seconds of the steps done in `epoch`.
    pub partial_wait_s: f64,
    /// Wall seconds of the steps done in `epoch`.
    pub partial_seconds: f64,
    /// One record per finished epoch.
    pub history: Vec<EpochRecord>,
    /// The resolved configuration (TOML).
    pub config_toml: String,
}

/// Writes the checkpoint of `vs`, `optimizer` and `state` to `path` atomically.
pub fn save_checkpoint(
    path: &Path,
    vs: &nn::VarStore,
    optimizer: &Optimizer,
    state: &LoopState,
) -> Result<()> {
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.extend(optimizer.state_tensors());
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let mut buffers = Vec::with_capacity(named.len());
    for (name, tensor) in &named {
        buffers.push((name.clone(), to_bytes(tensor)?));
    }
    let views = buffers
        .iter()
        .map(|(name, (dtype, shape, bytes))| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
                .map_err(|e| Error::checkpoint(path, format!("cannot lay out `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let json = serde_json::to_string(state).map_err(|e| Error::checkpoint(path, e.to_string()))?;
    let metadata = HashMap::from([(STATE_KEY.to_string(), json)]);
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| Error::checkpoint(path, e.to_string()))?;
    write_atomic(path, &bytes)
}

/// Reads a checkpoint into `vs` and `optimizer` (which must have been built
/// with the same configuration) and returns the loop state.
pub fn load_checkpoint(
    path: &Path,
    vs: &nn::VarStore,
    optimizer: &mut Optimizer,
) -> Result<LoopState> {
    let (state, tensors) = read_checkpoint(path, vs.device())?;
    let variables = vs.variables();
    tch::no_grad(|| -> Result<()> {
        for (name, var) in &variables {
            let saved = tensors.get(name).ok_or_else(|| {
                Error::checkpoint(
                    path,
                    format!(
                        "no variable `{name}`: was it written with another model configuration?"
                    ),
                )
            })?;
            if saved.size() != var.size() {
                return Err(Error::checkpoint(
                    path,
                    format!(
                        "`{name}` has shape {:?}, the model needs {:?}",
                        saved.size(),
                        var.size()
                    ),
                ));
            }
            var.shallow_clone().f_copy_(saved)?;
        }
        Ok(())
    })?;
    let lookup = |key: &str| tensors.get(key).map(Tensor::shallow_clone);
    optimizer
        .load_state(&lookup, state.optimizer_steps)
        .map_err(|e| Error::checkpoint(path, e.to_string()))?;
    Ok(state)
}

/// Reads only the loop state of a checkpoint.
pub fn read_loop_state(path: &Path) -> Result<LoopState> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::checkpoint(path, e.to_string()))?;
    parse_state(path, metadata.metadata())
}

fn parse_state(path: &Path, metadata: &Option<HashMap<String, String>>) -> Result<LoopState> {
    let json = metadata
        .as_ref()
        .and_then(|m| m.get(STATE_KEY))
        .ok_or_else(|| {
            Error::checkpoint(
                path,
                "not a genesis-train checkpoint (no loop state in the header)",
            )
        })?;
    serde_json::from_str(json).map_err(|e| Error::checkpoint(path, format!("bad loop state: {e}")))
}

fn read_checkpoint(path: &Path, device: Device) -> Result<(LoopState, HashMap<String, Tensor>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::checkpoint(path, e.to_string()))?;
    let state = parse_state(path, metadata.metadata())?;
    let file = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::checkpoint(path, e.to_string()))?;
    let mut tensors = HashMap::new();
    for (name, view) in file.tensors() {
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let data = view.data();
        let tensor = match view.dtype() {
            Dtype::F32 => Tensor::from_slice(&decode::<4, f32>(data, f32::from_le_bytes)),
            Dtype::F64 => Tensor::from_slice(&decode::<8, f64>(data, f64::from_le_bytes)),
            Dtype::I64 => Tensor::from_slice(&decode::<8, i64>(data, i64::from_le_bytes)),
            other => {
                return Err(Error::checkpoint(
                    path,
                    format!("`{name}` has unsupported type {other:?}"),
                ));
            }
        };
        tensors.insert(name, tensor.f_view(shape.as_slice())?.f_to_device(device)?);
    }
    Ok((state, tensors))
}

fn decode<const N: usize, T>(bytes: &[u8], from: fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            from(a)
        })
        .collect()
}

fn to_bytes(tensor: &Tensor) -> Result<(Dtype, Vec<usize>, Vec<u8>)> {
    let shape: Vec<usize> = tensor.size().iter().map(|&d| d as usize).collect();
    let flat = tensor
        .detach()
        .f_to_device(Device::Cpu)?
        .f_contiguous()?
        .f_flatten(0, -1)?;
    Ok(match tensor.kind() {
        Kind::Double => (
            Dtype::F64,
            shape,
            Vec::<f64>::try_from(&flat)?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        Kind::Int64 => (
            Dtype::I64,
            shape,
            Vec::<i64>::try_from(&flat)?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        _ => {
            let flat = flat.f_to_kind(Kind::Float)?;
            (
                Dtype::F32,
                shape,
                Vec::<f32>::try_from(&flat)?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            )
        }
    })
}

/// A temporary sibling of `path` (hidden, with the process id).
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let temp = temp_path(path);
    let result = std::fs::write(&temp, bytes)
        .and_then(|()| std::fs::rename(&temp, path))
        .map_err(|e| Error::io(path, e));
    if result.is_err() {
        // Best effort: the error being reported matters more.
        let _ = std::fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OptimizerConfig;

    #[test]
    fn checkpoint_round_trips_bit_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("last.ckpt.safetensors");
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().randn("w", &[2, 3], 0.0, 1.0);
        let _running = vs.root().zeros_no_train("running", &[1]);
        let mut opt = Optimizer::new(&vs, &OptimizerConfig::paper_pretrain()).unwrap();
        opt.zero_grad();
        (&w * &w).sum(Kind::Float).backward();
        opt.step(0.1).unwrap();
        let state = LoopState {
            epoch: 2,
            step: 1,
            optimizer_steps: opt.steps(),
            seed: 9,
            best_valid_loss: Some(0.5),
            best_epoch: Some(1),
            epochs_without_improvement: 0,
            partial_loss_sum: 0.25,
            partial_wait_s: 0.0,
            partial_seconds: 1.0,
            history: Vec::new(),
            config_toml: "seed = 9\n".into(),
        };
        save_checkpoint(&path, &vs, &opt, &state).unwrap();
        assert_eq!(read_loop_state(&path).unwrap(), state);

        let vs2 = nn::VarStore::new(Device::Cpu);
        let w2 = vs2.root().zeros("w", &[2, 3]);
        let mut opt2 = Optimizer::new(&vs2, &OptimizerConfig::paper_pretrain()).unwrap();
        let back = load_checkpoint(&path, &vs2, &mut opt2).unwrap();
        assert_eq!(back, state);
        assert_eq!(opt2.steps(), 1);
        assert!(w2.equal(&w));
        let (a, b) = (&opt.state_tensors()[0].1, &opt2.state_tensors()[0].1);
        assert!(a.equal(b));

        // A model of another shape is refused, naming the variable.
        let vs3 = nn::VarStore::new(Device::Cpu);
        let _ = vs3.root().zeros("w", &[3, 3]);
        let mut opt3 = Optimizer::new(&vs3, &OptimizerConfig::paper_pretrain()).unwrap();
        let err = load_checkpoint(&path, &vs3, &mut opt3)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`w`"), "{err}");

        // Garbage is an error, not a panic.
        std::fs::write(&path, b"not a checkpoint").unwrap();
        assert!(read_loop_state(&path).is_err());
        assert!(
            !dir.path().read_dir().unwrap().any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp"))
        );
    }
}
