//! Whole-volume segmentation by sliding-window inference over overlapping
//! patches, written with the input's geometry.

use std::path::{Path, PathBuf};

use genesis_io::{ElementType, HuWindow, Volume, read_volume, write_volume};
use genesis_models::{InitScope, ModelConfig, SegmentationModel, load_weights};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn};

use crate::pretrain::check_cube_shape;
use crate::{Error, Result};

/// What to predict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PredictConfig {
    /// Segmentation weights.
    pub weights: PathBuf,
    /// The scan (NIfTI, MetaImage or NRRD).
    pub input: PathBuf,
    /// The mask to write (`.nii`, `.nii.gz`, `.mhd`, `.mha`, `.nrrd`).
    pub output: PathBuf,
    /// Patch size (rows, cols, deps); each a multiple of the network's downsampling.
    pub patch: [usize; 3],
    /// Fraction of a patch shared with its neighbour, in [0, 1).
    pub overlap: f64,
    /// Probability threshold of the mask.
    pub threshold: f64,
    /// Map CT Hounsfield units from [-1000, 1000] to [0, 1] first, as the training cubes were.
    pub hu_window: bool,
    /// The network the weights belong to.
    pub model: ModelConfig,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    pub device: String,
}

impl Default for PredictConfig {
    fn default() -> Self {
        Self {
            weights: PathBuf::from("runs/finetune/best.safetensors"),
            input: PathBuf::new(),
            output: PathBuf::new(),
            patch: [64, 64, 32],
            overlap: 0.5,
            threshold: 0.5,
            hu_window: true,
            model: ModelConfig::default(),
            device: "auto".into(),
        }
    }
}

/// Largest patch side [`predict`] accepts: well above any network input used in
/// practice (the paper's is 64), small enough that one patch fits in memory.
const MAX_PATCH_SIDE: usize = 512;

/// Refuses to write `output` (the files `written`) when one of them is the same file
/// as one of `inputs`: a mask or metrics written over a scan or the weights would
/// destroy them.
pub(crate) fn check_not_overwriting(
    output: &Path,
    written: &[PathBuf],
    inputs: &[PathBuf],
) -> Result<()> {
    for file in written {
        let Ok(file) = std::fs::canonicalize(file) else {
            continue; // nothing there yet to overwrite
        };
        for input in inputs {
            if std::fs::canonicalize(input).is_ok_and(|input_file| input_file == file) {
                return Err(Error::Config(format!(
                    "writing {} would overwrite the input {}; choose another output path",
                    output.display(),
                    input.display()
                )));
            }
        }
    }
    Ok(())
}

/// What [`predict`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictSummary {
    /// Volume shape.
    pub shape: [usize; 3],
    /// Patches run through the network.
    pub patches: usize,
    /// Voxels in the mask.
    pub foreground_voxels: usize,
}

/// Segments `config.input` and writes a 0/1 `u8` mask with its geometry.
pub fn predict(config: &PredictConfig) -> Result<PredictSummary> {
    if !(0.0..1.0).contains(&config.overlap) {
        return Err(Error::Config(format!(
            "overlap must be in [0, 1), got {}",
            config.overlap
        )));
    }
    crate::config::check_threshold(config.threshold)?;
    check_cube_shape(config.patch, config.model.spatial_multiple())?;
    if let Some(&side) = config.patch.iter().find(|&&side| side > MAX_PATCH_SIDE) {
        return Err(Error::Config(format!(
            "patch sides must be at most {MAX_PATCH_SIDE}, got {side}"
        )));
    }
    let mut inputs = genesis_io::volume_files(&config.input);
    inputs.push(config.weights.clone());
    let written = genesis_io::volume_files(&config.output);
    check_not_overwriting(&config.output, &written, &inputs)?;
    let device = genesis_models::parse_device(&config.device)?;
    let mut vs = nn::VarStore::new(device);
    // Seeded only to keep concurrent runs' draws apart: the weights are loaded next.
    let model = crate::engine::seeded(0, || SegmentationModel::new(&vs.root(), &config.model))?;
    load_weights(&mut vs, &config.weights, InitScope::Whole)?.ensure_complete()?;

    let volume = read_volume(&config.input)?;
    let shape = volume.shape();
    crate::volumes::check_finite(&config.input, &volume)?;
    let mut values: Vec<f32> = volume.data.iter().copied().collect();
    if config.hu_window {
        HuWindow::CT.normalize_in_place(&mut values);
    }
    let mut patches = 0;
    let probabilities = sliding_window(&values, shape, config.patch, config.overlap, |patch| {
        patches += 1;
        let [r, c, d] = config.patch.map(|s| s as i64);
        let x = Tensor::from_slice(patch)
            .f_view([1, 1, r, c, d])?
            .f_to_device(device)?;
        let y = tch::no_grad(|| model.try_forward_t(&x, false))?;
        Ok(Vec::<f32>::try_from(
            y.f_to_device(Device::Cpu)?
                .f_to_kind(Kind::Float)?
                .f_flatten(0, -1)?,
        )?)
    })?;
    let mask: Vec<f32> = probabilities
        .iter()
        .map(|&p| {
            if f64::from(p) > config.threshold {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    let foreground_voxels = mask.iter().filter(|&&v| v > 0.0).count();
    let data = ndarray::Array3::from_shape_vec(shape, mask)
        .map_err(|e| Error::Config(format!("mask does not fit the volume shape {shape:?}: {e}")))?;
    let out = Volume {
        data,
        spacing: volume.spacing,
        origin: volume.origin,
        direction: volume.direction,
        element_type: ElementType::U8,
    };
    if let Some(parent) = config.output.parent().filter(|p| !p.as_os_str().is_empty()) {
        genesis_io::create_dir_all(parent)?;
    }
    write_volume(&config.output, &out)?;
    Ok(PredictSummary {
        shape,
        patches,
        foreground_voxels,
    })
}

/// Patch origins along one axis: every `stride`, the last flush with the end.
fn window_starts(dim: usize, patch: usize, stride: usize) -> Vec<usize> {
    if dim <= patch {
        return vec![0];
    }
    let mut starts: Vec<usize> = (0..)
        .map(|k| k * stride)
        .take_while(|&s| s + patch < dim)
        .collect();
    starts.push(dim - patch);
    starts
}

/// Runs `infer` on overlapping patches of a C-order volume (zero-padded to
/// at least one patch) and averages the overlapping outputs.
pub(crate) fn sliding_window(
    volume: &[f32],
    shape: [usize; 3],
    patch: [usize; 3],
    overlap: f64,
    mut infer: impl FnMut(&[f32]) -> Result<Vec<f32>>,
) -> Result<Vec<f32>> {
    let padded = [0, 1, 2].map(|a| shape[a].max(patch[a]));
    let [pr, pc, pd] = padded;
    let mut source = vec![0f32; pr * pc * pd];
    for x in 0..shape[0] {
        for y in 0..shape[1] {
            let from = (x * shape[1] + y) * shape[2];
            let to = (x * pc + y) * pd;
            source[to..to + shape[2]].copy_from_slice(&volume[from..from + shape[2]]);
        }
    }
    let stride = [0, 1, 2].map(|a| ((patch[a] as f64 * (1.0 - overlap)).round() as usize).max(1));
    let mut sum = vec![0f32; source.len()];
    let mut count = vec![0u16; source.len()];
    let mut buffer = vec![0f32; patch.iter().product()];
    let [sr, sc, sd] = patch;
    for &x0 in &window_starts(pr, sr, stride[0]) {
        for &y0 in &window_starts(pc, sc, stride[1]) {
            for &z0 in &window_starts(pd, sd, stride[2]) {
                for x in 0..sr {
                    for y in 0..sc {
                        let from = ((x0 + x) * pc + y0 + y) * pd + z0;
                        let to = (x * sc + y) * sd;
                        buffer[to..to + sd].copy_from_slice(&source[from..from + sd]);
                    }
                }
                let out = infer(&buffer)?;
                if out.len() != buffer.len() {
                    return Err(Error::Config(format!(
                        "the network returned {} values for a patch of {}",
                        out.len(),
                        buffer.len()
                    )));
                }
                for x in 0..sr {
                    for y in 0..sc {
                        let to = ((x0 + x) * pc + y0 + y) * pd + z0;
                        let from = (x * sc + y) * sd;
                        for z in 0..sd {
                            sum[to + z] += out[from + z];
                            count[to + z] = count[to + z].saturating_add(1);
                        }
                    }
                }
            }
        }
    }
    let mut result = Vec::with_capacity(volume.len());
    for x in 0..shape[0] {
        for y in 0..shape[1] {
            let at = (x * pc + y) * pd;
            result.extend((0..shape[2]).map(|z| sum[at + z] / f32::from(count[at + z].max(1))));
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_cover_the_axis() {
        assert_eq!(window_starts(10, 4, 2), vec![0, 2, 4, 6]);
        assert_eq!(window_starts(9, 4, 2), vec![0, 2, 4, 5]);
        assert_eq!(window_starts(4, 4, 2), vec![0]);
        assert_eq!(window_starts(3, 4, 2), vec![0]);
    }

    #[test]
    fn identity_network_returns_the_volume() {
        let shape = [7, 9, 5];
        let volume: Vec<f32> = (0..7 * 9 * 5).map(|i| i as f32).collect();
        let mut calls = 0;
        let out = sliding_window(&volume, shape, [4, 4, 8], 0.5, |p| {
            calls += 1;
            Ok(p.to_vec())
        })
        .unwrap();
        assert_eq!(out, volume);
        // x: 0,2,3; y: 0,2,4,5; z: padded to 8, one patch.
        assert_eq!(calls, 3 * 4);
        // Overlapping outputs are averaged: a constant network gives the constant.
        let out =
            sliding_window(&volume, shape, [4, 4, 8], 0.5, |p| Ok(vec![0.25; p.len()])).unwrap();
        assert!(out.iter().all(|&v| (v - 0.25).abs() < 1e-6));
        assert!(sliding_window(&volume, shape, [4, 4, 8], 0.5, |_| Ok(vec![0.0; 3])).is_err());
    }
}
