//! Fine-tuning on target tasks (segmentation with Dice, classification with
//! BCE and ROC AUC) from scratch or from Genesis weights, and evaluation of
//! the result.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use genesis_models::{
    ClassificationModel, InitScope, ModelConfig, SegmentationModel, load_weights,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, nn};

use crate::config::{
    FinetuneConfig, Init, IntensityWindow, SegmentationLoss, Task, check_configured_cube_shape,
    to_toml,
};
use crate::data::{BatchSource, EpochPlan, Producer, TaskSource};
use crate::engine::{
    LoopSpec, Net, Objective, RunOptions, RunSummary, batch_tensors, run_loop, save_config, seeded,
};
use crate::losses::{OverlapCounts, roc_auc};
use crate::pretrain::check_cube_shape;
use crate::volumes::VolumeTiling;
use crate::{Error, Result};

/// Builds the network of `task` under the root of `vs`.
pub(crate) fn build_net(vs: &nn::VarStore, task: Task, model: &ModelConfig) -> Result<Net> {
    Ok(match task {
        Task::Segmentation => Net::Segmentation(SegmentationModel::new(&vs.root(), model)?),
        Task::Classification => Net::Classification(ClassificationModel::new(&vs.root(), model)?),
    })
}

/// Fine-tunes on the `train` split of `config.data`, validating on `valid`.
pub fn finetune(config: &FinetuneConfig, options: &RunOptions) -> Result<RunSummary> {
    config.validate()?;
    let device = genesis_models::parse_device(&config.device)?;
    let classification = config.task == Task::Classification;
    let tiling = VolumeTiling {
        cube_shape: config.cube_shape,
        window: config.window.hu_window(),
        seed: config.seed,
    };
    let train = TaskSource::open(&config.data, "train", classification, &tiling)?;
    let valid = TaskSource::open(&config.data, "valid", classification, &tiling)?;
    if train.shape() != valid.shape() {
        return Err(Error::data(
            &config.data,
            format!(
                "train cubes are {:?} but valid cubes are {:?}",
                train.shape(),
                valid.shape()
            ),
        ));
    }
    check_cube_shape(train.shape(), config.model.spatial_multiple())?;
    let train_steps = EpochPlan::steps(train.len(), config.batch_size, false, None);
    let valid_steps = EpochPlan::steps(valid.len(), config.batch_size, false, None);

    let config_toml = to_toml(config)?;
    save_config(&config.run_dir, &config_toml, options)?;
    if !options.quiet {
        println!("resolved configuration:\n{config_toml}");
        println!(
            "fine-tuning ({}, init {}) on {} train and {} valid cubes of {:?}, device {:?}",
            config.task,
            config.init,
            train.len(),
            valid.len(),
            train.shape(),
            device
        );
    }

    let mut vs = nn::VarStore::new(device);
    let net = seeded(config.seed as i64, || {
        build_net(&vs, config.task, &config.model)
    })?;
    if let Init::Genesis(path) = &config.init
        && !options.resume
    {
        let scope = match config.task {
            Task::Segmentation if config.fresh_output => InitScope::AllButOutput,
            Task::Segmentation => InitScope::Whole,
            Task::Classification => InitScope::EncoderOnly,
        };
        let report = load_weights(&mut vs, path, scope)?;
        if !options.quiet {
            println!("initialised from {report}");
            if !report.missing.is_empty() {
                println!("  missing (kept fresh): {}", report.missing.join(", "));
            }
            if !report.unexpected.is_empty() {
                println!("  unexpected (ignored): {}", report.unexpected.join(", "));
            }
        }
        if report.loaded.is_empty() {
            return Err(Error::checkpoint(
                path,
                "no variable of the network was found in the file: is it a weight file of this architecture?",
            ));
        }
        // Segmentation takes the whole network; a gap (say, a classifier's encoder-only
        // file) leaves layers untrained, which a user should hear of even under --quiet.
        let untrained = report
            .missing
            .iter()
            .filter(|name| !name.ends_with("num_batches_tracked"))
            .count();
        if config.task == Task::Segmentation && untrained > 0 {
            eprintln!(
                "warning: {}: {untrained} of the network's parameters are not in the file and \
                 keep their fresh values (an encoder-only file, such as a classifier's, leaves \
                 the decoder untrained)",
                path.display()
            );
        }
    }
    let objective = match config.task {
        Task::Segmentation => Objective::Segmentation {
            loss: config.loss,
            threshold: config.threshold,
        },
        Task::Classification => Objective::Classification,
    };
    let spec = LoopSpec {
        run_dir: config.run_dir.clone(),
        epochs: config.epochs,
        patience: config.patience,
        batch_size: config.batch_size,
        optimizer: config.optimizer.clone(),
        seed: config.seed,
        device,
        queue_depth: config.queue_depth,
        train_steps,
        valid_steps,
        objective,
        sample_every: 0,
        config_toml,
    };
    run_loop(&spec, &vs, &net, Arc::new(train), Arc::new(valid), options)
}

/// What to evaluate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvaluateConfig {
    /// Segmentation or classification.
    pub task: Task,
    /// The task directory (`.npy` stacks or volume folders, as for fine-tuning).
    pub data: PathBuf,
    /// Split: `train`, `valid` or `test`.
    pub split: String,
    /// The weights (safetensors or torch.save).
    pub weights: PathBuf,
    /// The network the weights belong to.
    pub model: ModelConfig,
    /// Cubes per forward pass.
    pub batch_size: usize,
    /// Probability threshold of Dice and IoU.
    pub threshold: f64,
    /// Loss reported for segmentation.
    pub loss: SegmentationLoss,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    pub device: String,
    /// Where to write the metrics JSON (`{split}_metrics.json` next to the weights when unset).
    pub output: Option<PathBuf>,
    /// Cubes volume folders are tiled into (as [`FinetuneConfig::cube_shape`]).
    pub cube_shape: [usize; 3],
    /// Intensity window of volume-folder images (as [`FinetuneConfig::window`]).
    pub window: IntensityWindow,
    /// Seed of the background-cube draw of volume folders.
    pub seed: u64,
}

impl Default for EvaluateConfig {
    fn default() -> Self {
        Self {
            task: Task::Segmentation,
            data: PathBuf::from("data/tasks/ncs"),
            split: "test".into(),
            weights: PathBuf::from("runs/finetune/best.safetensors"),
            model: ModelConfig::default(),
            batch_size: 8,
            threshold: 0.5,
            loss: SegmentationLoss::Dice,
            device: "auto".into(),
            output: None,
            cube_shape: [64, 64, 32],
            window: IntensityWindow::Ct,
            seed: 1,
        }
    }
}

/// Metrics of one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluationMetrics {
    /// The task.
    pub task: Task,
    /// The split.
    pub split: String,
    /// Cubes evaluated.
    pub n_cubes: usize,
    /// Mean loss per batch (Dice loss or BCE).
    pub loss: f64,
    /// Dice over all voxels of the split (segmentation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dice: Option<f64>,
    /// IoU over all voxels of the split (segmentation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iou: Option<f64>,
    /// ROC AUC (classification; absent when the split has one class only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auc: Option<f64>,
    /// Accuracy at probability 0.5 (classification).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// The weights evaluated.
    pub weights: PathBuf,
}

/// Evaluates `config.weights` on a split and writes the metrics JSON.
pub fn evaluate(config: &EvaluateConfig) -> Result<EvaluationMetrics> {
    if config.batch_size == 0 {
        return Err(Error::Config("batch_size must be at least 1".into()));
    }
    crate::config::check_threshold(config.threshold)?;
    let output = config.output.clone().unwrap_or_else(|| {
        config
            .weights
            .parent()
            .unwrap_or(Path::new("."))
            .join(format!("{}_metrics.json", config.split))
    });
    crate::predict::check_not_overwriting(
        &output,
        std::slice::from_ref(&output),
        std::slice::from_ref(&config.weights),
    )?;
    if let (Ok(output_file), Ok(data_dir)) = (output.canonicalize(), config.data.canonicalize())
        && output_file.starts_with(&data_dir)
    {
        return Err(Error::Config(format!(
            "{} would overwrite a file of the data directory {}; choose another output path",
            output.display(),
            config.data.display()
        )));
    }
    let device = genesis_models::parse_device(&config.device)?;
    let classification = config.task == Task::Classification;
    check_configured_cube_shape(config.cube_shape, &config.model)?;
    let tiling = VolumeTiling {
        cube_shape: config.cube_shape,
        window: config.window.hu_window(),
        seed: config.seed,
    };
    let source = TaskSource::open(&config.data, &config.split, classification, &tiling)?;
    check_cube_shape(source.shape(), config.model.spatial_multiple())?;
    let mut vs = nn::VarStore::new(device);
    // Seeded only to keep concurrent runs' draws apart: the weights are loaded next.
    let net = seeded(0, || build_net(&vs, config.task, &config.model))?;
    load_weights(&mut vs, &config.weights, InitScope::Whole)?.ensure_complete()?;

    let shape = source.shape();
    let n_cubes = source.len();
    let steps = EpochPlan::steps(n_cubes, config.batch_size, false, None);
    let plan = EpochPlan {
        order: (0..n_cubes).collect(),
        batch_size: config.batch_size,
        epoch: 0,
        first_step: 0,
        n_steps: steps,
    };
    let mut producer = Producer::spawn(Arc::new(source), plan, 2)?;
    let objective = if classification {
        Objective::Classification
    } else {
        Objective::Segmentation {
            loss: config.loss,
            threshold: config.threshold,
        }
    };
    let mut loss_sum = 0.0;
    let mut overlap = OverlapCounts::default();
    let (mut scores, mut labels) = (Vec::new(), Vec::new());
    for _ in 0..steps {
        let batch = producer.next_batch()?;
        let (x, y) = batch_tensors(&batch.inputs, &batch.targets, batch.n, shape, device)?;
        let output = tch::no_grad(|| net.forward(&x, false))?;
        loss_sum += objective.loss(&output, &y)?.f_double_value(&[])?;
        let out: Vec<f32> = Vec::try_from(
            output
                .f_to_device(Device::Cpu)?
                .f_to_kind(Kind::Float)?
                .f_flatten(0, -1)?,
        )?;
        if classification {
            scores.extend_from_slice(&out);
            labels.extend_from_slice(&batch.targets);
        } else {
            overlap.add(&out, &batch.targets, config.threshold);
        }
    }
    let accuracy = classification.then(|| {
        let correct = scores
            .iter()
            .zip(&labels)
            .filter(|&(&s, &l)| (s > 0.0) == (l > 0.5))
            .count();
        correct as f64 / scores.len().max(1) as f64
    });
    let metrics = EvaluationMetrics {
        task: config.task,
        split: config.split.clone(),
        n_cubes,
        loss: loss_sum / steps.max(1) as f64,
        dice: (!classification).then(|| overlap.dice()),
        iou: (!classification).then(|| overlap.iou()),
        auc: if classification {
            roc_auc(&scores, &labels)
        } else {
            None
        },
        accuracy,
        weights: config.weights.clone(),
    };
    let json = serde_json::to_string_pretty(&metrics)
        .map_err(|e| Error::Config(format!("cannot serialise metrics: {e}")))?;
    if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
        genesis_io::create_dir_all(parent)?;
    }
    crate::checkpoint::write_atomic(&output, format!("{json}\n").as_bytes())?;
    Ok(metrics)
}

/// The `[model]` table of the `config.toml` next to a weight file (written by
/// every run), if there is one.
pub fn model_config_near(weights: &Path) -> Result<Option<ModelConfig>> {
    saved_field(weights, "model")
}

/// Field `key` of the `config.toml` next to a weight file, if the file and
/// the field exist.
pub(crate) fn saved_field<T: DeserializeOwned>(weights: &Path, key: &str) -> Result<Option<T>> {
    let Some(path) = weights.parent().map(|d| d.join("config.toml")) else {
        return Ok(None);
    };
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| Error::ConfigFile {
        path: path.clone(),
        message: e.to_string(),
    })?;
    match table.get(key) {
        Some(value) => value
            .clone()
            .try_into()
            .map(Some)
            .map_err(|e: toml::de::Error| Error::ConfigFile {
                path,
                message: format!("`{key}`: {e}"),
            }),
        None => Ok(None),
    }
}
