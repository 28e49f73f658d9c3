//! Models Genesis training: self-supervised pretraining (restoration of
//! transformed cubes, Zhou et al., MICCAI 2019), fine-tuning on target tasks,
//! evaluation and whole-scan prediction, and the `genesis-train` binary.
//!
//! - [`pretrain`]: cube stacks → [`genesis_transforms`] pairs built ahead of the
//!   model by a background producer (bounded queue) → U-Net or V-Net → MSE →
//!   SGD or Adam, with the paper's recipe as [`PretrainConfig::paper`].
//! - [`finetune`]: segmentation (Dice, or Dice + BCE) or classification (BCE,
//!   ROC AUC) from scratch or from Genesis weights ([`Init`]). Segmentation
//!   reads `.npy` cube stacks, or folders of image and label volumes (NIfTI,
//!   MetaImage, NRRD) windowed ([`IntensityWindow`]) and tiled into cubes.
//! - [`evaluate`], [`predict`]: metrics of a split; sliding-window masks
//!   written with the scan's geometry.
//!
//! A run directory holds `config.toml` (the resolved configuration),
//! `metrics.csv` and `metrics.jsonl`, `loss_curve.png`, `samples/epoch_XXX.png`
//! (pretraining), `best.safetensors` and `last.safetensors` (weights under the
//! official names) and `best.ckpt.safetensors` / `last.ckpt.safetensors`
//! (weights, optimiser state and loop state in one atomically written file).
//! Resuming from `last` on CPU reproduces an uninterrupted run exactly: the
//! data order and every transform draw derive from `(seed, epoch, position)`,
//! and the optimiser ([`Optimizer`]) keeps its state in the checkpoint.
//!
//! Not here: file formats and the stack reader (`genesis-io`), the transform
//! kernels (`genesis-transforms`), the networks and weight import
//! (`genesis-models`).
//!
//! ```
//! use genesis_train::{OptimizerKind, PretrainConfig};
//!
//! let mut config = PretrainConfig::paper();
//! assert_eq!((config.batch_size, config.patience), (6, 50));
//! assert_eq!(config.optimizer.kind, OptimizerKind::Sgd);
//! // The learning rate halves every int(0.8 × patience) = 40 epochs.
//! assert_eq!(config.optimizer.lr_at(39, config.patience), 1.0);
//! assert_eq!(config.optimizer.lr_at(40, config.patience), 0.5);
//! // Any field can be set by its TOML path, as `--set` does.
//! config = genesis_train::set_field(&config, "model.base_width", "8").unwrap();
//! assert_eq!(config.model.base_width, 8);
//! ```
//!
//! Running it (needs packed cubes in `config.data`):
//!
//! ```no_run
//! # fn main() -> genesis_train::Result<()> {
//! use genesis_train::{pretrain, PretrainConfig, RunOptions};
//!
//! let config = PretrainConfig { epochs: 3, ..PretrainConfig::paper() };
//! let summary = pretrain(&config, &RunOptions::default())?;
//! println!("best validation loss {:?}", summary.best_valid_loss);
//! # Ok(())
//! # }
//! ```

mod checkpoint;
mod cli;
mod config;
mod data;
mod engine;
mod error;
mod finetune;
mod losses;
mod metrics_log;
mod optim;
mod plots;
mod predict;
mod pretrain;
mod volumes;

pub use checkpoint::{LoopState, read_loop_state};
pub use cli::{
    Cli, Command, CommonArgs, EvaluateArgs, FinetuneArgs, PredictArgs, PretrainArgs,
    configure_threads, resolve_finetune, resolve_pretrain, run,
};
pub use config::{
    FinetuneConfig, Init, IntensityWindow, OptimizerConfig, OptimizerKind, PretrainConfig,
    SegmentationLoss, Task, load_toml, parse_folds, set_field, to_toml,
};
pub use engine::{RunOptions, RunSummary, TrainControl};
pub use error::{Error, Result};
pub use finetune::{EvaluateConfig, EvaluationMetrics, evaluate, finetune, model_config_near};
pub use losses::{OverlapCounts, dice_loss, mse_loss, roc_auc};
pub use metrics_log::EpochRecord;
pub use optim::Optimizer;
pub use plots::{write_loss_curve, write_restoration_sample};
pub use predict::{PredictConfig, PredictSummary, predict};
pub use pretrain::pretrain;
