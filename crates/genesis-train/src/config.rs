//! Run configurations: serde structs whose defaults are the paper's recipe,
//! read from TOML and overridden field by field from the command line.

use std::path::{Path, PathBuf};

use genesis_io::HuWindow;
use genesis_models::ModelConfig;
use genesis_transforms::TransformConfig;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The optimiser family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Stochastic gradient descent with (optional Nesterov) momentum, as PyTorch's `SGD`.
    Sgd,
    /// Adam (Kingma and Ba, 2015), as PyTorch's `Adam` (L2 weight decay, not AdamW).
    Adam,
}

impl std::str::FromStr for OptimizerKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "sgd" => Ok(Self::Sgd),
            "adam" => Ok(Self::Adam),
            other => Err(Error::Config(format!(
                "unknown optimizer `{other}`: expected sgd or adam"
            ))),
        }
    }
}

/// Optimiser and learning-rate schedule.
///
/// The schedule is PyTorch's `StepLR` as the official pretraining script
/// uses it: the rate is multiplied by `lr_gamma` every `lr_step_epochs`
/// epochs, `int(0.8 × patience)` when unset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerConfig {
    /// `sgd` or `adam`.
    pub kind: OptimizerKind,
    /// Initial learning rate.
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// SGD Nesterov momentum.
    pub nesterov: bool,
    /// L2 weight decay added to the gradient.
    pub weight_decay: f64,
    /// Adam β₁.
    pub beta1: f64,
    /// Adam β₂.
    pub beta2: f64,
    /// Adam ε.
    pub eps: f64,
    /// Factor applied to the rate at each schedule step.
    pub lr_gamma: f64,
    /// Epochs between schedule steps; `int(0.8 × patience)` when unset.
    pub lr_step_epochs: Option<usize>,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self::paper_pretrain()
    }
}

impl OptimizerConfig {
    /// The paper's pretraining optimiser: SGD, lr 1.0, momentum 0.9, no
    /// Nesterov, no weight decay, halved every `int(0.8 × patience)` epochs.
    pub fn paper_pretrain() -> Self {
        Self {
            kind: OptimizerKind::Sgd,
            lr: 1.0,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            lr_gamma: 0.5,
            lr_step_epochs: None,
        }
    }

    /// The target tasks' optimiser: Adam, lr 1e-3.
    pub fn paper_finetune() -> Self {
        Self {
            kind: OptimizerKind::Adam,
            lr: 1e-3,
            momentum: 0.0,
            ..Self::paper_pretrain()
        }
    }

    /// The learning rate of `epoch` (0-based) under the step schedule.
    pub fn lr_at(&self, epoch: usize, patience: usize) -> f64 {
        let step = self
            .lr_step_epochs
            .unwrap_or((0.8 * patience as f64) as usize)
            .max(1);
        self.lr * self.lr_gamma.powi((epoch / step) as i32)
    }

    /// Checks the values are usable.
    pub fn validate(&self) -> Result<()> {
        let finite_positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(Error::Config(format!(
                    "optimizer.{name} must be a positive number, got {v}"
                )))
            }
        };
        finite_positive("lr", self.lr)?;
        finite_positive("lr_gamma", self.lr_gamma)?;
        finite_positive("eps", self.eps)?;
        for (name, v) in [
            ("momentum", self.momentum),
            ("beta1", self.beta1),
            ("beta2", self.beta2),
        ] {
            if !(0.0..1.0).contains(&v) {
                return Err(Error::Config(format!(
                    "optimizer.{name} must be in [0, 1), got {v}"
                )));
            }
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::Config(format!(
                "optimizer.weight_decay must be non-negative, got {}",
                self.weight_decay
            )));
        }
        if self.nesterov && self.momentum == 0.0 {
            return Err(Error::Config(
                "optimizer.nesterov needs a non-zero momentum".into(),
            ));
        }
        if self.lr_step_epochs == Some(0) {
            return Err(Error::Config(
                "optimizer.lr_step_epochs must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Self-supervised pretraining (restoration of transformed cubes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PretrainConfig {
    /// Directory of packed cube stacks `bat_{scale}_s_{rows}x{cols}x{deps}_{fold}.npy`.
    pub data: PathBuf,
    /// Output directory: config, metrics, samples, checkpoints.
    pub run_dir: PathBuf,
    /// The `scale` of the stack file names (cubes per scan).
    pub scale: usize,
    /// Folds used for training.
    pub train_folds: Vec<usize>,
    /// Folds used for validation.
    pub valid_folds: Vec<usize>,
    /// Cubes per step.
    pub batch_size: usize,
    /// Maximum number of epochs.
    pub epochs: usize,
    /// Early stopping: epochs without validation improvement before stopping.
    pub patience: usize,
    /// Caps the training steps per epoch (all of `train cubes // batch` when unset).
    pub steps_per_epoch: Option<usize>,
    /// Caps the validation steps per epoch (all of `valid cubes // batch` when unset).
    pub valid_steps: Option<usize>,
    /// Seed of every random draw (initialisation, data order, transforms).
    pub seed: u64,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    pub device: String,
    /// CPU threads for libtorch and the transforms (all cores when unset).
    pub threads: Option<usize>,
    /// Batches prepared ahead of the model by the background producer.
    pub queue_depth: usize,
    /// Write a restoration sample PNG every this many epochs (0: never).
    pub sample_every: usize,
    /// The network.
    pub model: ModelConfig,
    /// Optimiser and schedule.
    pub optimizer: OptimizerConfig,
    /// The transformations and their probabilities (ablations by config).
    pub transforms: TransformConfig,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        Self::paper()
    }
}

impl PretrainConfig {
    /// The paper's recipe: batch 6, SGD lr 1.0 momentum 0.9, patience 50, U-Net,
    /// train folds 0–4, validation folds 5–6, scale 32.
    pub fn paper() -> Self {
        Self {
            data: PathBuf::from("data/generated_cubes"),
            run_dir: PathBuf::from("runs/pretrain"),
            scale: 32,
            train_folds: (0..=4).collect(),
            valid_folds: vec![5, 6],
            batch_size: 6,
            epochs: 10_000,
            patience: 50,
            steps_per_epoch: None,
            valid_steps: None,
            seed: 1,
            device: "auto".into(),
            threads: None,
            queue_depth: 4,
            sample_every: 1,
            model: ModelConfig::default(),
            optimizer: OptimizerConfig::paper_pretrain(),
            transforms: TransformConfig::paper(),
        }
    }

    /// Checks the values are usable.
    pub fn validate(&self) -> Result<()> {
        common_checks(
            self.batch_size,
            self.epochs,
            self.patience,
            self.queue_depth,
            self.threads,
        )?;
        if self.train_folds.is_empty() || self.valid_folds.is_empty() {
            return Err(Error::Config(
                "train_folds and valid_folds must not be empty".into(),
            ));
        }
        if self.steps_per_epoch == Some(0) || self.valid_steps == Some(0) {
            return Err(Error::Config(
                "steps_per_epoch and valid_steps must be at least 1".into(),
            ));
        }
        self.model.validate()?;
        self.optimizer.validate()
    }
}

/// The target task of fine-tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Voxel-wise binary segmentation (e.g. NCS, lung nodule segmentation).
    Segmentation,
    /// Cube-wise binary classification (e.g. NCC, nodule false-positive reduction).
    Classification,
}

impl std::str::FromStr for Task {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "segmentation" | "seg" => Ok(Self::Segmentation),
            "classification" | "cls" => Ok(Self::Classification),
            other => Err(Error::Config(format!(
                "unknown task `{other}`: expected segmentation or classification"
            ))),
        }
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Task::Segmentation => "segmentation",
            Task::Classification => "classification",
        })
    }
}

/// Segmentation loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SegmentationLoss {
    /// `1 − (2·Σ(p·y) + 1) / (Σy + Σp + 1)`, the original's (smooth 1).
    Dice,
    /// Dice loss plus binary cross-entropy.
    DiceBce,
}

impl std::str::FromStr for SegmentationLoss {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "dice" => Ok(Self::Dice),
            "dice_bce" | "dice+bce" => Ok(Self::DiceBce),
            other => Err(Error::Config(format!(
                "unknown loss `{other}`: expected dice or dice_bce"
            ))),
        }
    }
}

/// Initial weights of a fine-tuning run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Init {
    /// Random initialisation.
    Scratch,
    /// Models Genesis (or any compatible) weights: the whole network for
    /// segmentation, the encoder for classification.
    Genesis(PathBuf),
}

impl std::str::FromStr for Init {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if s == "scratch" {
            return Ok(Self::Scratch);
        }
        match s.strip_prefix("genesis:") {
            Some(path) if !path.is_empty() => Ok(Self::Genesis(PathBuf::from(path))),
            _ => Err(Error::Config(format!(
                "unknown init `{s}`: expected scratch or genesis:PATH"
            ))),
        }
    }
}

impl TryFrom<String> for Init {
    type Error = Error;

    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Init> for String {
    fn from(init: Init) -> String {
        init.to_string()
    }
}

impl std::fmt::Display for Init {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Init::Scratch => f.write_str("scratch"),
            Init::Genesis(path) => write!(f, "genesis:{}", path.display()),
        }
    }
}

/// How the images of volume folders are mapped to [0, 1] before tiling.
///
/// Written in TOML and on the command line as `ct`, `mri`, `none` or
/// `LOWER,UPPER`. `.npy` stacks are taken as they are (already normalised).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum IntensityWindow {
    /// The paper's CT window, [-1000, 1000] HU ([`HuWindow::CT`]).
    Ct,
    /// The original code's MRI window, [0, 4000] ([`HuWindow::MRI`]).
    Mri,
    /// No windowing: the images must already hold values in [0, 1].
    None,
    /// Any other window.
    Custom(HuWindow),
}

impl IntensityWindow {
    /// The window to apply, `None` for [`IntensityWindow::None`].
    pub fn hu_window(self) -> Option<HuWindow> {
        match self {
            IntensityWindow::Ct => Some(HuWindow::CT),
            IntensityWindow::Mri => Some(HuWindow::MRI),
            IntensityWindow::None => None,
            IntensityWindow::Custom(window) => Some(window),
        }
    }
}

impl std::str::FromStr for IntensityWindow {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Config(format!(
                "unknown window `{s}`: expected ct, mri, none or LOWER,UPPER (e.g. -160,240)"
            ))
        };
        match s.trim().to_ascii_lowercase().as_str() {
            "ct" => Ok(Self::Ct),
            "mri" => Ok(Self::Mri),
            "none" => Ok(Self::None),
            other => {
                let (lower, upper) = other.split_once(',').ok_or_else(bad)?;
                let lower: f32 = lower.trim().parse().map_err(|_| bad())?;
                let upper: f32 = upper.trim().parse().map_err(|_| bad())?;
                HuWindow::new(lower, upper)
                    .map(Self::Custom)
                    .ok_or_else(|| {
                        Error::Config(format!(
                            "window `{s}`: the lower bound must be below the upper one"
                        ))
                    })
            }
        }
    }
}

impl TryFrom<String> for IntensityWindow {
    type Error = Error;

    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<IntensityWindow> for String {
    fn from(window: IntensityWindow) -> String {
        window.to_string()
    }
}

impl std::fmt::Display for IntensityWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IntensityWindow::Ct => f.write_str("ct"),
            IntensityWindow::Mri => f.write_str("mri"),
            IntensityWindow::None => f.write_str("none"),
            IntensityWindow::Custom(w) => write!(f, "{},{}", w.lower, w.upper),
        }
    }
}

/// Parses a cube shape such as `64,64,32` or `64x64x32`.
pub(crate) fn parse_cube_shape(s: &str) -> Result<[usize; 3]> {
    let bad = || Error::Config(format!("bad cube shape `{s}`: expected e.g. 64,64,32"));
    let sides: Vec<usize> = s
        .split([',', 'x'])
        .map(|p| p.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let shape = <[usize; 3]>::try_from(sides).map_err(|_| bad())?;
    if shape.contains(&0) {
        return Err(bad());
    }
    Ok(shape)
}

/// Checks a configured cube shape fits the network (each side a positive
/// multiple of its spatial multiple).
pub(crate) fn check_configured_cube_shape(shape: [usize; 3], model: &ModelConfig) -> Result<()> {
    let multiple = model.spatial_multiple() as usize;
    if shape.iter().any(|&side| side == 0 || side % multiple != 0) {
        return Err(Error::Config(format!(
            "cube_shape {shape:?} does not fit the network: each side must be a positive multiple of {multiple}"
        )));
    }
    Ok(())
}

/// Fine-tuning on a target task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FinetuneConfig {
    /// Segmentation or classification.
    pub task: Task,
    /// Directory with `x_{split}_{r}x{c}x{d}.npy` and `m_{split}_…npy` (segmentation) or
    /// `y_{split}.npy` / `y_{split}.csv` (classification). Segmentation also
    /// reads volume folders `{split}/images/` + `{split}/labels/` (or nnU-Net's
    /// `imagesTr`/`labelsTr`, `imagesTs`/`labelsTs`) when there is no `x_{split}` stack.
    pub data: PathBuf,
    /// Output directory.
    pub run_dir: PathBuf,
    /// `scratch` or `genesis:PATH`.
    pub init: Init,
    /// Segmentation from `genesis:PATH`: keep the output layer freshly
    /// initialised instead of loading it (default false: the whole network is
    /// loaded, as the original does). The restoration head predicts
    /// intensities, so a short fine-tune converges faster without it.
    pub fresh_output: bool,
    /// Cubes per step.
    pub batch_size: usize,
    /// Maximum number of epochs.
    pub epochs: usize,
    /// Early stopping patience in epochs.
    pub patience: usize,
    /// Segmentation loss.
    pub loss: SegmentationLoss,
    /// Probability threshold of the Dice and IoU metrics.
    pub threshold: f64,
    /// Seed of every random draw.
    pub seed: u64,
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    pub device: String,
    /// CPU threads (all cores when unset).
    pub threads: Option<usize>,
    /// Batches prepared ahead of the model.
    pub queue_depth: usize,
    /// The network (`n_class` 1: one sigmoid output).
    pub model: ModelConfig,
    /// Optimiser and schedule.
    pub optimizer: OptimizerConfig,
    /// Cubes (rows, cols, deps along the volume's x, y, z) that volume folders
    /// are tiled into; `.npy` stacks keep their own shape. Each side must be a
    /// multiple of the network's (8 for the U-Net, 16 for the V-Net).
    pub cube_shape: [usize; 3],
    /// Intensity window of volume-folder images: `ct` (default), `mri`,
    /// `none` or `LOWER,UPPER`.
    pub window: IntensityWindow,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self::paper()
    }
}

impl FinetuneConfig {
    /// The paper's target-task recipe: Adam lr 1e-3, batch 16, patience 20, Dice loss.
    pub fn paper() -> Self {
        Self {
            task: Task::Segmentation,
            data: PathBuf::from("data/tasks/ncs"),
            run_dir: PathBuf::from("runs/finetune"),
            init: Init::Scratch,
            fresh_output: false,
            batch_size: 16,
            epochs: 10_000,
            patience: 20,
            loss: SegmentationLoss::Dice,
            threshold: 0.5,
            seed: 1,
            device: "auto".into(),
            threads: None,
            queue_depth: 4,
            model: ModelConfig::default(),
            optimizer: OptimizerConfig::paper_finetune(),
            cube_shape: [64, 64, 32],
            window: IntensityWindow::Ct,
        }
    }

    /// Checks the values are usable.
    pub fn validate(&self) -> Result<()> {
        common_checks(
            self.batch_size,
            self.epochs,
            self.patience,
            self.queue_depth,
            self.threads,
        )?;
        check_threshold(self.threshold)?;
        if self.model.n_class != 1 {
            return Err(Error::Config(format!(
                "model.n_class must be 1 (binary tasks), got {}",
                self.model.n_class
            )));
        }
        self.model.validate()?;
        check_configured_cube_shape(self.cube_shape, &self.model)?;
        self.optimizer.validate()
    }
}

/// The most threads a run may ask for: more than any machine has cores, few enough
/// that starting them cannot exhaust the system's thread limit.
pub(crate) const MAX_THREADS: usize = 1024;

/// `threads`, when given, must be in `1..=MAX_THREADS`.
pub(crate) fn check_threads(threads: Option<usize>) -> Result<()> {
    match threads {
        Some(0) => Err(Error::Config("threads must be at least 1".into())),
        Some(n) if n > MAX_THREADS => Err(Error::Config(format!(
            "threads must be at most {MAX_THREADS}, got {n}"
        ))),
        _ => Ok(()),
    }
}

/// A probability threshold must lie in [0, 1] (NaN does not).
pub(crate) fn check_threshold(threshold: f64) -> Result<()> {
    if (0.0..=1.0).contains(&threshold) {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "threshold must be in [0, 1], got {threshold}"
        )))
    }
}

fn common_checks(
    batch_size: usize,
    epochs: usize,
    patience: usize,
    queue_depth: usize,
    threads: Option<usize>,
) -> Result<()> {
    if batch_size == 0 {
        return Err(Error::Config("batch_size must be at least 1".into()));
    }
    if epochs == 0 {
        return Err(Error::Config("epochs must be at least 1".into()));
    }
    if queue_depth == 0 {
        return Err(Error::Config("queue_depth must be at least 1".into()));
    }
    if patience == 0 {
        return Err(Error::Config(
            "patience must be at least 1 (epochs without improvement before stopping)".into(),
        ));
    }
    check_threads(threads)
}

/// Parses a fold list such as `0-4`, `5,6` or `0-2,7`.
pub fn parse_folds(s: &str) -> Result<Vec<usize>> {
    let bad = || Error::Config(format!("bad fold list `{s}`: expected e.g. 0-4 or 5,6"));
    let mut folds = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.trim().parse().map_err(|_| bad())?;
                let b: usize = b.trim().parse().map_err(|_| bad())?;
                if a > b {
                    return Err(bad());
                }
                folds.extend(a..=b);
            }
            None => folds.push(part.parse().map_err(|_| bad())?),
        }
    }
    if folds.is_empty() {
        return Err(bad());
    }
    Ok(folds)
}

/// Reads a configuration from a TOML file; missing fields take the defaults.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    toml::from_str(&text).map_err(|e| Error::ConfigFile {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    })
}

/// Renders a configuration as TOML.
pub fn to_toml<T: Serialize>(config: &T) -> Result<String> {
    toml::to_string_pretty(config)
        .map_err(|e| Error::Config(format!("cannot render configuration: {e}")))
}

/// Sets the field at a dotted `path` (`optimizer.lr`, `transforms.flip_rate`)
/// from a TOML value literal (`0.5`, `true`, `"sgd"`, `[0, 1]`; a bare word is
/// taken as a string). Unknown fields and wrongly typed values are errors.
pub fn set_field<T: Serialize + DeserializeOwned>(
    config: &T,
    path: &str,
    literal: &str,
) -> Result<T> {
    let mut root = toml::Value::try_from(config)
        .map_err(|e| Error::Config(format!("cannot represent the configuration: {e}")))?;
    let value = parse_literal(literal);
    let mut node = &mut root;
    let keys: Vec<&str> = path.split('.').collect();
    for (i, key) in keys.iter().enumerate() {
        let table = node.as_table_mut().ok_or_else(|| {
            Error::Config(format!(
                "`{path}`: `{}` is not a table",
                keys[..i].join(".")
            ))
        })?;
        if i + 1 == keys.len() {
            table.insert((*key).to_string(), value.clone());
            break;
        }
        node = table
            .entry((*key).to_string())
            .or_insert_with(|| toml::Value::Table(toml::map::Map::new()));
    }
    root.try_into().map_err(|e: toml::de::Error| {
        Error::Config(format!(
            "`{path} = {literal}`: {}",
            e.to_string().trim_end()
        ))
    })
}

fn parse_literal(literal: &str) -> toml::Value {
    let wrapped = format!("v = {literal}");
    match toml::from_str::<toml::Table>(&wrapped) {
        Ok(mut table) => table
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(literal.to_string())),
        Err(_) => toml::Value::String(literal.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_defaults() {
        let c = PretrainConfig::paper();
        assert_eq!(c.batch_size, 6);
        assert_eq!(c.patience, 50);
        assert_eq!(c.optimizer.kind, OptimizerKind::Sgd);
        assert_eq!(c.optimizer.lr, 1.0);
        assert_eq!(c.optimizer.momentum, 0.9);
        assert!(!c.optimizer.nesterov);
        assert_eq!(c.optimizer.weight_decay, 0.0);
        assert_eq!(c.train_folds, vec![0, 1, 2, 3, 4]);
        assert_eq!(c.valid_folds, vec![5, 6]);
        assert_eq!(c.model.base_width, 32);
        let f = FinetuneConfig::paper();
        assert_eq!(f.optimizer.kind, OptimizerKind::Adam);
        assert_eq!(f.optimizer.lr, 1e-3);
        c.validate().unwrap();
        f.validate().unwrap();
    }

    #[test]
    fn lr_halves_every_int_0_8_patience_epochs() {
        let o = OptimizerConfig::paper_pretrain();
        // patience 50 → step 40.
        assert_eq!(o.lr_at(0, 50), 1.0);
        assert_eq!(o.lr_at(39, 50), 1.0);
        assert_eq!(o.lr_at(40, 50), 0.5);
        assert_eq!(o.lr_at(80, 50), 0.25);
        // patience 3 → int(2.4) = 2.
        assert_eq!(o.lr_at(1, 3), 1.0);
        assert_eq!(o.lr_at(2, 3), 0.5);
        // patience 1 → int(0.8) = 0, clamped to 1.
        assert_eq!(o.lr_at(1, 1), 0.5);
        let explicit = OptimizerConfig {
            lr_step_epochs: Some(3),
            ..o
        };
        assert_eq!(explicit.lr_at(3, 50), 0.5);
    }

    #[test]
    fn thread_counts_and_patience_are_bounded() {
        let mut c = PretrainConfig::paper();
        for (threads, expected) in [
            (Some(0), Some("threads must be at least 1")),
            (Some(1), None),
            (Some(MAX_THREADS), None),
            (Some(MAX_THREADS + 1), Some("threads must be at most 1024")),
        ] {
            c.threads = threads;
            match (c.validate(), expected) {
                (Ok(()), None) => {}
                (Err(e), Some(text)) => assert!(e.to_string().contains(text), "{e}"),
                (result, _) => panic!("{threads:?}: {result:?}"),
            }
        }
        c.threads = None;
        c.patience = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("patience must be at least 1")
        );
        let mut f = FinetuneConfig::paper();
        f.threshold = f64::NAN;
        assert!(
            f.validate()
                .unwrap_err()
                .to_string()
                .contains("threshold must be in [0, 1]")
        );
    }

    #[test]
    fn folds_parse() {
        assert_eq!(parse_folds("0-4").unwrap(), vec![0, 1, 2, 3, 4]);
        assert_eq!(parse_folds("5,6").unwrap(), vec![5, 6]);
        assert_eq!(parse_folds("0-1, 7").unwrap(), vec![0, 1, 7]);
        for bad in ["", "a", "4-1", "1-", ","] {
            assert!(parse_folds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn toml_round_trip_and_partial_files() {
        let c = PretrainConfig::paper();
        let text = to_toml(&c).unwrap();
        let back: PretrainConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
        let partial: PretrainConfig =
            toml::from_str("batch_size = 2\n[optimizer]\nkind = \"adam\"\n").unwrap();
        assert_eq!(partial.batch_size, 2);
        assert_eq!(partial.optimizer.kind, OptimizerKind::Adam);
        assert_eq!(partial.optimizer.momentum, 0.9);
        assert!(toml::from_str::<PretrainConfig>("batch_sise = 2").is_err());
    }

    #[test]
    fn dotted_overrides() {
        let c = PretrainConfig::paper();
        let c = set_field(&c, "optimizer.lr", "0.1").unwrap();
        assert_eq!(c.optimizer.lr, 0.1);
        let c = set_field(&c, "optimizer.kind", "adam").unwrap();
        assert_eq!(c.optimizer.kind, OptimizerKind::Adam);
        let c = set_field(&c, "model.base_width", "4").unwrap();
        assert_eq!(c.model.base_width, 4);
        let c = set_field(&c, "train_folds", "[1, 2]").unwrap();
        assert_eq!(c.train_folds, vec![1, 2]);
        let c = set_field(&c, "steps_per_epoch", "3").unwrap();
        assert_eq!(c.steps_per_epoch, Some(3));
        assert!(set_field(&c, "optimizer.lrr", "0.1").is_err());
        assert!(set_field(&c, "batch_size", "many").is_err());
    }

    #[test]
    fn init_parses() {
        assert_eq!("scratch".parse::<Init>().unwrap(), Init::Scratch);
        assert_eq!(
            "genesis:runs/p/best.safetensors".parse::<Init>().unwrap(),
            Init::Genesis(PathBuf::from("runs/p/best.safetensors"))
        );
        assert!("genesis:".parse::<Init>().is_err());
        assert!("imagenet".parse::<Init>().is_err());
        let f = FinetuneConfig {
            init: Init::Genesis("w.safetensors".into()),
            ..FinetuneConfig::paper()
        };
        let back: FinetuneConfig = toml::from_str(&to_toml(&f).unwrap()).unwrap();
        assert_eq!(back.init, f.init);
    }

    #[test]
    fn windows_and_cube_shapes_parse() {
        assert_eq!(
            "CT".parse::<IntensityWindow>().unwrap(),
            IntensityWindow::Ct
        );
        assert_eq!(IntensityWindow::Mri.hu_window(), Some(HuWindow::MRI));
        assert_eq!(IntensityWindow::None.hu_window(), None);
        let custom: IntensityWindow = " -160, 240 ".parse().unwrap();
        assert_eq!(custom.hu_window(), HuWindow::new(-160.0, 240.0));
        for bad in ["bone", "240,-160", "1,x", "1"] {
            assert!(bad.parse::<IntensityWindow>().is_err(), "{bad}");
        }
        assert_eq!(parse_cube_shape("64x64x32").unwrap(), [64, 64, 32]);
        assert!(parse_cube_shape("64,0,32").is_err());
        let f = FinetuneConfig {
            window: custom,
            cube_shape: [32, 32, 16],
            ..FinetuneConfig::paper()
        };
        let back: FinetuneConfig = toml::from_str(&to_toml(&f).unwrap()).unwrap();
        assert_eq!(back, f);
        let odd = FinetuneConfig {
            cube_shape: [64, 64, 20],
            ..FinetuneConfig::paper()
        };
        assert!(odd.validate().is_err());
    }

    #[test]
    fn shipped_configs_parse_and_validate() {
        let paper: PretrainConfig =
            toml::from_str(include_str!("../configs/pretrain_paper.toml")).unwrap();
        assert_eq!(
            paper,
            PretrainConfig {
                run_dir: "runs/pretrain_paper".into(),
                ..PretrainConfig::paper()
            }
        );
        let small: PretrainConfig =
            toml::from_str(include_str!("../configs/pretrain_cpu_small.toml")).unwrap();
        small.validate().unwrap();
        for text in [
            include_str!("../configs/finetune_ncs.toml"),
            include_str!("../configs/finetune_ncc.toml"),
        ] {
            let f: FinetuneConfig = toml::from_str(text).unwrap();
            f.validate().unwrap();
            assert_eq!(f.optimizer.kind, OptimizerKind::Adam);
        }
    }
}
