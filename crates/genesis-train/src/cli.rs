//! The `genesis-train` command line: clap arguments turned into the config
//! structs once, here, at the edge.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use clap::{Args, Parser, Subcommand};
use genesis_models::{Arch, ModelConfig};
use genesis_transforms::{TransformConfig, TransformVariant};

use crate::config::{
    FinetuneConfig, Init, IntensityWindow, OptimizerConfig, OptimizerKind, PretrainConfig,
    SegmentationLoss, Task, load_toml, parse_cube_shape, parse_folds, set_field,
};
use crate::engine::{RunOptions, TrainControl};
use crate::finetune::{EvaluateConfig, evaluate, finetune, model_config_near, saved_field};
use crate::predict::{PredictConfig, predict};
use crate::pretrain::pretrain;
use crate::{Error, Result};

/// Models Genesis pretraining, fine-tuning, evaluation and prediction.
#[derive(Debug, Parser)]
#[command(name = "genesis-train", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Self-supervised pretraining: restore transformed cubes (MSE).
    Pretrain(PretrainArgs),
    /// Fine-tune on a target task (segmentation or classification).
    ///
    /// The task directory holds each split (train, valid; test for evaluate)
    /// as `.npy` cube stacks: x_{split}_RxCxD.npy with m_{split}_RxCxD.npy
    /// (segmentation) or y_{split}.npy / y_{split}.csv (classification).
    /// Segmentation also reads volume folders when a split has no x_ stack:
    /// {split}/images/ and {split}/labels/ (or nnU-Net's imagesTr/ + labelsTr/
    /// for train, imagesTs/ + labelsTs/ for test), holding .nii, .nii.gz, .mhd,
    /// .mha or .nrrd files paired by name (case.nii.gz, or case_0000.nii.gz,
    /// with labels/case.nii.gz). Images are windowed (--window), labels
    /// binarised (any value > 0 is foreground), and each volume tiled into
    /// --cube-shape cubes: all cubes with foreground, plus as many background
    /// cubes drawn from the seed.
    Finetune(FinetuneArgs),
    /// Evaluate weights on a split of a target task; prints and writes metrics JSON.
    Evaluate(EvaluateArgs),
    /// Segment a whole scan by sliding-window inference; writes a mask with the scan's geometry.
    Predict(PredictArgs),
}

/// Flags shared by the training commands.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// TOML configuration file (missing fields take the paper's defaults); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override any configuration field by its dotted TOML path, e.g. `--set transforms.flip_rate=0.2`
    /// (repeatable; applied before the other flags).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Output directory (config, metrics, samples, checkpoints).
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// Continue the run in RUN_DIR from its last checkpoint (its saved config is the base).
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    /// Cubes per step.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Maximum number of epochs.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Early stopping: epochs without validation improvement.
    #[arg(long)]
    pub patience: Option<usize>,
    /// Seed of every random draw.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Device: cpu, cuda, cuda:N or auto.
    #[arg(long)]
    pub device: Option<String>,
    /// CPU threads for libtorch and the data pipeline (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Batches prepared ahead of the model.
    #[arg(long)]
    pub queue_depth: Option<usize>,
    /// Optimiser: sgd or adam. Another family than the config's starts from that
    /// family's paper settings, before `--set` applies.
    #[arg(long)]
    pub optimizer: Option<OptimizerKind>,
    /// Initial learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// SGD momentum.
    #[arg(long)]
    pub momentum: Option<f64>,
    /// L2 weight decay.
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Multiply the learning rate by this every --lr-step-epochs epochs.
    #[arg(long)]
    pub lr_gamma: Option<f64>,
    /// Epochs between learning-rate steps (default int(0.8 × patience)).
    #[arg(long)]
    pub lr_step_epochs: Option<usize>,
    /// Network: unet3d or vnet.
    #[arg(long)]
    pub arch: Option<Arch>,
    /// First-level channels (32: the paper's U-Net; 16: the paper's V-Net).
    #[arg(long)]
    pub base_width: Option<i64>,
    /// Hide progress bars and per-epoch lines.
    #[arg(long)]
    pub quiet: bool,
    /// Start afresh in a run directory that already holds a run, replacing its
    /// checkpoints and weights (without it, that is an error).
    #[arg(long)]
    pub overwrite: bool,
}

/// `genesis-train pretrain`.
#[derive(Debug, Args)]
pub struct PretrainArgs {
    /// Directory of cube stacks bat_{scale}_s_{rows}x{cols}x{deps}_{fold}.npy.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// The scale in the stack file names.
    #[arg(long)]
    pub scale: Option<usize>,
    /// Training folds, e.g. 0-4.
    #[arg(long, value_name = "LIST")]
    pub train_folds: Option<String>,
    /// Validation folds, e.g. 5-6.
    #[arg(long, value_name = "LIST")]
    pub valid_folds: Option<String>,
    /// Cap on training steps per epoch.
    #[arg(long)]
    pub steps_per_epoch: Option<usize>,
    /// Cap on validation steps per epoch.
    #[arg(long)]
    pub valid_steps: Option<usize>,
    /// Write a restoration sample PNG every N epochs (0: never).
    #[arg(long, value_name = "N")]
    pub sample_every: Option<usize>,
    /// Transform set: all (the paper's), autoencoder, non-linear, local-shuffle, in-paint, out-paint.
    #[arg(long)]
    pub variant: Option<String>,
    /// Flags shared with fine-tuning.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `genesis-train finetune`.
#[derive(Debug, Args)]
pub struct FinetuneArgs {
    /// segmentation or classification.
    #[arg(long)]
    pub task: Option<Task>,
    /// Task directory with x_{split}_*.npy and m_{split}_*.npy (or y_{split}.npy / .csv),
    /// or segmentation volume folders {split}/images/ + {split}/labels/ (see `finetune --help`).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// scratch, or genesis:PATH (whole network for segmentation, encoder for classification).
    #[arg(long)]
    pub init: Option<Init>,
    /// Segmentation from genesis:PATH: leave the output layer freshly initialised
    /// instead of loading the restoration head (default: load the whole network).
    #[arg(long)]
    pub fresh_output: bool,
    /// Segmentation loss: dice or dice_bce.
    #[arg(long)]
    pub loss: Option<SegmentationLoss>,
    /// Probability threshold of the Dice metric.
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Cubes volume folders are tiled into, rows,cols,deps (default 64,64,32; .npy stacks keep theirs).
    #[arg(long, value_name = "R,C,D")]
    pub cube_shape: Option<String>,
    /// Intensity window of volume-folder images: ct ([-1000, 1000] HU, default), mri ([0, 4000]),
    /// none (already in [0, 1]) or LOWER,UPPER.
    #[arg(long, allow_hyphen_values = true, value_name = "WINDOW")]
    pub window: Option<IntensityWindow>,
    /// Flags shared with pretraining.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `genesis-train evaluate`.
#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// segmentation or classification.
    #[arg(long, default_value = "segmentation")]
    pub task: Task,
    /// Task directory: .npy stacks or volume folders, as for `finetune`.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Weights to evaluate.
    #[arg(long, value_name = "FILE")]
    pub weights: PathBuf,
    /// Split: train, valid or test.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Metrics JSON to write (default: {split}_metrics.json next to the weights).
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Network (default: the [model] of the config.toml next to the weights, else unet3d).
    #[arg(long)]
    pub arch: Option<Arch>,
    /// First-level channels (default: from the config.toml next to the weights, else 32).
    #[arg(long)]
    pub base_width: Option<i64>,
    /// Cubes per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Probability threshold of Dice and IoU.
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f64,
    /// Cube shape of volume folders (default: from the config.toml next to the weights, else 64,64,32).
    #[arg(long, value_name = "R,C,D")]
    pub cube_shape: Option<String>,
    /// Window of volume-folder images: ct, mri, none or LOWER,UPPER (default: from the config.toml
    /// next to the weights, else ct).
    #[arg(long, allow_hyphen_values = true, value_name = "WINDOW")]
    pub window: Option<IntensityWindow>,
    /// Seed of the background-cube draw of volume folders (default: from the config.toml next to
    /// the weights, else 1).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Device: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// CPU threads.
    #[arg(long)]
    pub threads: Option<usize>,
}

/// `genesis-train predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// Segmentation weights.
    #[arg(long, value_name = "FILE")]
    pub weights: PathBuf,
    /// Scan to segment (.nii, .nii.gz, .mhd, .mha, .nrrd).
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    /// Mask to write (.nii, .nii.gz, .mhd, .mha, .nrrd).
    #[arg(long, value_name = "FILE")]
    pub output: PathBuf,
    /// Patch size rows,cols,deps.
    #[arg(long, default_value = "64,64,32", value_name = "R,C,D")]
    pub patch: String,
    /// Fraction of a patch overlapping its neighbour, in [0, 1).
    #[arg(long, default_value_t = 0.5)]
    pub overlap: f64,
    /// Probability threshold of the mask.
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f64,
    /// Do not map CT Hounsfield units [-1000, 1000] to [0, 1] (input already normalised).
    #[arg(long)]
    pub no_hu_window: bool,
    /// Network (default: from the config.toml next to the weights, else unet3d).
    #[arg(long)]
    pub arch: Option<Arch>,
    /// First-level channels (default: from the config.toml next to the weights, else 32).
    #[arg(long)]
    pub base_width: Option<i64>,
    /// Device: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// CPU threads.
    #[arg(long)]
    pub threads: Option<usize>,
}

/// The stop flag Ctrl-C sets; one per process.
fn interrupt_flag() -> Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    Arc::clone(FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let handler_flag = Arc::clone(&flag);
        let installed = ctrlc::set_handler(move || {
            if handler_flag.swap(true, Ordering::SeqCst) {
                // A second Ctrl-C: the user does not want to wait for the checkpoint.
                std::process::exit(130);
            }
            eprintln!(
                "\ninterrupt: saving the last checkpoint after this step (Ctrl-C again to quit now)"
            );
        });
        if let Err(e) = installed {
            eprintln!("warning: cannot install the Ctrl-C handler: {e}");
        }
        flag
    }))
}

/// Sets libtorch's and rayon's thread counts (rayon's only once per process), after
/// checking that `threads` is between 1 and 1,024.
pub fn configure_threads(threads: Option<usize>) -> Result<()> {
    crate::config::check_threads(threads)?;
    if let Some(n) = threads {
        tch::set_num_threads(n as i32);
        // Fails if the global pool exists already (a second run in one process): keep it.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
    Ok(())
}

fn apply_sets<T: serde::Serialize + serde::de::DeserializeOwned>(
    mut config: T,
    sets: &[String],
) -> Result<T> {
    for entry in sets {
        let (key, value) = entry
            .split_once('=')
            .ok_or_else(|| Error::Config(format!("--set `{entry}`: expected KEY=VALUE")))?;
        config = set_field(&config, key.trim(), value.trim())?;
    }
    Ok(config)
}

/// `--optimizer` of another family than the base config's starts from that family's
/// paper settings. This runs before `--set`, so `--set optimizer.lr=..` on the same
/// command line applies to the new family rather than being reset by it.
fn switch_optimizer(o: &mut OptimizerConfig, kind: Option<OptimizerKind>) {
    if let Some(kind) = kind
        && kind != o.kind
    {
        *o = match kind {
            OptimizerKind::Sgd => OptimizerConfig::paper_pretrain(),
            OptimizerKind::Adam => OptimizerConfig::paper_finetune(),
        };
    }
}

/// `--resume A --run-dir B` with A and B different directories is ambiguous (the run
/// would continue in B, not A): refuse it.
fn check_resume_dir(c: &CommonArgs) -> Result<()> {
    if let (Some(resume), Some(run_dir)) = (&c.resume, &c.run_dir) {
        let same = resume == run_dir
            || matches!(
                (resume.canonicalize(), run_dir.canonicalize()),
                (Ok(a), Ok(b)) if a == b
            );
        if !same {
            return Err(Error::Config(format!(
                "--resume {} and --run-dir {} name different directories; a resumed run \
                 continues in its own directory, so give only --resume",
                resume.display(),
                run_dir.display()
            )));
        }
    }
    Ok(())
}

fn apply_optimizer(o: &mut OptimizerConfig, c: &CommonArgs) {
    set(&mut o.lr, c.lr);
    set(&mut o.momentum, c.momentum);
    set(&mut o.weight_decay, c.weight_decay);
    set(&mut o.lr_gamma, c.lr_gamma);
    if c.lr_step_epochs.is_some() {
        o.lr_step_epochs = c.lr_step_epochs;
    }
}

fn apply_model(m: &mut ModelConfig, arch: Option<Arch>, base_width: Option<i64>) {
    if let Some(arch) = arch
        && arch != m.arch
    {
        *m = match arch {
            Arch::UNet3d => ModelConfig::default(),
            Arch::VNet => ModelConfig::vnet_paper(),
        };
    }
    set(&mut m.base_width, base_width);
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

/// The base configuration: `--config`, else the saved config of `--resume`, else the paper's.
fn base_config<T: serde::de::DeserializeOwned + Default>(c: &CommonArgs) -> Result<T> {
    if let Some(path) = &c.config {
        return load_toml(path);
    }
    if let Some(dir) = &c.resume {
        let saved = dir.join("config.toml");
        if saved.is_file() {
            return load_toml(&saved);
        }
        return Err(Error::checkpoint(
            &saved,
            "cannot resume: the run directory has no config.toml",
        ));
    }
    Ok(T::default())
}

/// The resolved pretraining configuration and run options of `args`.
pub fn resolve_pretrain(args: &PretrainArgs) -> Result<(PretrainConfig, RunOptions)> {
    let c = &args.common;
    check_resume_dir(c)?;
    let mut base: PretrainConfig = base_config(c)?;
    switch_optimizer(&mut base.optimizer, c.optimizer);
    let mut config: PretrainConfig = apply_sets(base, &c.set)?;
    set(&mut config.data, args.data.clone());
    set(&mut config.scale, args.scale);
    if let Some(folds) = &args.train_folds {
        config.train_folds = parse_folds(folds)?;
    }
    if let Some(folds) = &args.valid_folds {
        config.valid_folds = parse_folds(folds)?;
    }
    if args.steps_per_epoch.is_some() {
        config.steps_per_epoch = args.steps_per_epoch;
    }
    if args.valid_steps.is_some() {
        config.valid_steps = args.valid_steps;
    }
    set(&mut config.sample_every, args.sample_every);
    if let Some(variant) = &args.variant {
        let variant: TransformVariant = serde_json::from_value(serde_json::Value::String(variant.clone()))
            .map_err(|_| {
                Error::Config(format!(
                    "unknown variant `{variant}`: expected all, autoencoder, non-linear, local-shuffle, in-paint or out-paint"
                ))
            })?;
        config.transforms = TransformConfig::variant(variant);
    }
    set(&mut config.run_dir, c.resume.clone());
    set(&mut config.run_dir, c.run_dir.clone());
    set(&mut config.batch_size, c.batch_size);
    set(&mut config.epochs, c.epochs);
    set(&mut config.patience, c.patience);
    set(&mut config.seed, c.seed);
    set(&mut config.device, c.device.clone());
    set(&mut config.queue_depth, c.queue_depth);
    if c.threads.is_some() {
        config.threads = c.threads;
    }
    apply_optimizer(&mut config.optimizer, c);
    apply_model(&mut config.model, c.arch, c.base_width);
    config.validate()?;
    Ok((config, options(c)))
}

/// The resolved fine-tuning configuration and run options of `args`.
pub fn resolve_finetune(args: &FinetuneArgs) -> Result<(FinetuneConfig, RunOptions)> {
    let c = &args.common;
    check_resume_dir(c)?;
    let mut base: FinetuneConfig = base_config(c)?;
    switch_optimizer(&mut base.optimizer, c.optimizer);
    let mut config: FinetuneConfig = apply_sets(base, &c.set)?;
    set(&mut config.task, args.task);
    set(&mut config.data, args.data.clone());
    set(&mut config.init, args.init.clone());
    set(&mut config.loss, args.loss);
    set(&mut config.threshold, args.threshold);
    if args.fresh_output {
        config.fresh_output = true;
    }
    if let Some(shape) = &args.cube_shape {
        config.cube_shape = parse_cube_shape(shape)?;
    }
    set(&mut config.window, args.window);
    set(&mut config.run_dir, c.resume.clone());
    set(&mut config.run_dir, c.run_dir.clone());
    set(&mut config.batch_size, c.batch_size);
    set(&mut config.epochs, c.epochs);
    set(&mut config.patience, c.patience);
    set(&mut config.seed, c.seed);
    set(&mut config.device, c.device.clone());
    set(&mut config.queue_depth, c.queue_depth);
    if c.threads.is_some() {
        config.threads = c.threads;
    }
    apply_optimizer(&mut config.optimizer, c);
    apply_model(&mut config.model, c.arch, c.base_width);
    config.validate()?;
    Ok((config, options(c)))
}

fn options(c: &CommonArgs) -> RunOptions {
    RunOptions {
        resume: c.resume.is_some(),
        overwrite: c.overwrite,
        quiet: c.quiet,
        control: TrainControl::default(),
    }
}

fn model_for(weights: &Path, arch: Option<Arch>, base_width: Option<i64>) -> Result<ModelConfig> {
    let mut model = model_config_near(weights)?.unwrap_or_default();
    apply_model(&mut model, arch, base_width);
    Ok(model)
}

fn parse_patch(s: &str) -> Result<[usize; 3]> {
    let parts: Vec<usize> = s
        .split([',', 'x'])
        .map(|p| p.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|_| Error::Config(format!("bad patch `{s}`: expected e.g. 64,64,32")))?;
    <[usize; 3]>::try_from(parts)
        .map_err(|_| Error::Config(format!("bad patch `{s}`: expected three sizes")))
}

/// Runs a parsed command line. Ctrl-C during training saves `last` and ends
/// with [`Error::Interrupted`].
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Pretrain(args) => {
            let (config, mut options) = resolve_pretrain(&args)?;
            configure_threads(config.threads)?;
            options.control.stop = interrupt_flag();
            let summary = pretrain(&config, &options)?;
            report_summary(&summary);
        }
        Command::Finetune(args) => {
            let (config, mut options) = resolve_finetune(&args)?;
            configure_threads(config.threads)?;
            options.control.stop = interrupt_flag();
            let summary = finetune(&config, &options)?;
            report_summary(&summary);
        }
        Command::Evaluate(args) => {
            configure_threads(args.threads)?;
            let defaults = EvaluateConfig::default();
            let cube_shape = match &args.cube_shape {
                Some(shape) => parse_cube_shape(shape)?,
                None => saved_field(&args.weights, "cube_shape")?.unwrap_or(defaults.cube_shape),
            };
            let window = match args.window {
                Some(window) => window,
                None => saved_field(&args.weights, "window")?.unwrap_or(defaults.window),
            };
            let seed = match args.seed {
                Some(seed) => seed,
                None => saved_field(&args.weights, "seed")?.unwrap_or(defaults.seed),
            };
            let config = EvaluateConfig {
                task: args.task,
                model: model_for(&args.weights, args.arch, args.base_width)?,
                data: args.data,
                split: args.split,
                weights: args.weights,
                batch_size: args.batch_size,
                threshold: args.threshold,
                device: args.device,
                output: args.output,
                cube_shape,
                window,
                seed,
                ..defaults
            };
            let metrics = evaluate(&config)?;
            let json = serde_json::to_string_pretty(&metrics)
                .map_err(|e| Error::Config(format!("cannot serialise metrics: {e}")))?;
            println!("{json}");
        }
        Command::Predict(args) => {
            configure_threads(args.threads)?;
            let config = PredictConfig {
                model: model_for(&args.weights, args.arch, args.base_width)?,
                patch: parse_patch(&args.patch)?,
                weights: args.weights,
                input: args.input,
                output: args.output,
                overlap: args.overlap,
                threshold: args.threshold,
                hu_window: !args.no_hu_window,
                device: args.device,
            };
            let summary = predict(&config)?;
            println!(
                "wrote {} ({:?} voxels, {} patches, {} foreground)",
                config.output.display(),
                summary.shape,
                summary.patches,
                summary.foreground_voxels
            );
        }
    }
    Ok(())
}

fn report_summary(summary: &crate::RunSummary) {
    println!(
        "done: {} epochs, best validation loss {} at epoch {}; weights in {}",
        summary.history.len(),
        summary
            .best_valid_loss
            .map_or("-".into(), |l| format!("{l:.6}")),
        summary.best_epoch.map_or("-".into(), |e| e.to_string()),
        summary.run_dir.join("best.safetensors").display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("genesis-train").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn quickstart_pretrain_line_resolves() {
        let cli = parse(&[
            "pretrain",
            "--data",
            "data/generated_cubes",
            "--run-dir",
            "runs/pretrain",
            "--base-width",
            "8",
            "--batch-size",
            "4",
            "--epochs",
            "3",
            "--train-folds",
            "0-4",
            "--valid-folds",
            "5-6",
            "--scale",
            "8",
            "--seed",
            "1",
            "--device",
            "cpu",
            "--optimizer",
            "adam",
            "--lr",
            "0.01",
            "--arch",
            "unet3d",
            "--threads",
            "2",
            "--sample-every",
            "2",
            "--set",
            "transforms.flip_rate=0.1",
        ]);
        let Command::Pretrain(args) = cli.command else {
            panic!("not pretrain")
        };
        let (c, o) = resolve_pretrain(&args).unwrap();
        assert_eq!(c.model.base_width, 8);
        assert_eq!(c.batch_size, 4);
        assert_eq!(c.epochs, 3);
        assert_eq!(c.scale, 8);
        assert_eq!(c.valid_folds, vec![5, 6]);
        assert_eq!(c.optimizer.kind, OptimizerKind::Adam);
        assert_eq!(c.optimizer.lr, 0.01);
        assert_eq!(c.threads, Some(2));
        assert_eq!(c.sample_every, 2);
        assert_eq!(c.transforms.flip_rate, 0.1);
        assert!(!o.resume);

        // --resume of one run with --run-dir of another is refused.
        let cli = parse(&["pretrain", "--resume", "runs/a", "--run-dir", "runs/b"]);
        let Command::Pretrain(args) = cli.command else {
            panic!("not pretrain")
        };
        let error = resolve_pretrain(&args).unwrap_err().to_string();
        assert!(
            error.contains("--resume runs/a and --run-dir runs/b name different directories"),
            "{error}"
        );

        // --set values of the optimizer survive --optimizer switching the family.
        let cli = parse(&[
            "pretrain",
            "--optimizer",
            "adam",
            "--set",
            "optimizer.lr=0.5",
            "--set",
            "optimizer.weight_decay=0.01",
        ]);
        let Command::Pretrain(args) = cli.command else {
            panic!("not pretrain")
        };
        let (c, _) = resolve_pretrain(&args).unwrap();
        assert_eq!(c.optimizer.kind, OptimizerKind::Adam);
        assert_eq!((c.optimizer.lr, c.optimizer.weight_decay), (0.5, 0.01));
    }

    #[test]
    fn finetune_and_evaluate_lines_parse() {
        let cli = parse(&[
            "finetune",
            "--task",
            "segmentation",
            "--data",
            "data/tasks/ncs",
            "--init",
            "genesis:runs/pretrain/best.safetensors",
            "--run-dir",
            "runs/ncs-genesis",
            "--base-width",
            "8",
            "--epochs",
            "5",
            "--seed",
            "1",
            "--device",
            "cpu",
        ]);
        let Command::Finetune(args) = cli.command else {
            panic!("not finetune")
        };
        let (c, _) = resolve_finetune(&args).unwrap();
        assert_eq!(
            c.init,
            Init::Genesis("runs/pretrain/best.safetensors".into())
        );
        assert_eq!(c.optimizer.kind, OptimizerKind::Adam);
        assert_eq!(c.model.base_width, 8);
        assert_eq!(c.cube_shape, [64, 64, 32]);
        assert_eq!(c.window, IntensityWindow::Ct);
        let cli = parse(&[
            "finetune",
            "--cube-shape",
            "32x32x16",
            "--window",
            "-160,240",
            "--set",
            "seed=3",
        ]);
        let Command::Finetune(args) = cli.command else {
            panic!("not finetune")
        };
        let (c, _) = resolve_finetune(&args).unwrap();
        assert_eq!(c.cube_shape, [32, 32, 16]);
        assert_eq!(
            c.window.hu_window(),
            genesis_io::HuWindow::new(-160.0, 240.0)
        );
        assert_eq!(c.seed, 3);
        let cli = parse(&[
            "finetune",
            "--set",
            "cube_shape=[16, 16, 8]",
            "--set",
            "window=mri",
        ]);
        let Command::Finetune(args) = cli.command else {
            panic!("not finetune")
        };
        let (c, _) = resolve_finetune(&args).unwrap();
        assert_eq!(
            (c.cube_shape, c.window),
            ([16, 16, 8], IntensityWindow::Mri)
        );
        for bad in [["--cube-shape", "64,64"], ["--cube-shape", "60,64,32"]] {
            let cli = parse(&["finetune", bad[0], bad[1]]);
            let Command::Finetune(args) = cli.command else {
                panic!("not finetune")
            };
            assert!(resolve_finetune(&args).is_err(), "{bad:?}");
        }
        assert!(Cli::try_parse_from(["genesis-train", "finetune", "--window", "bone"]).is_err());
        let cli = parse(&[
            "evaluate",
            "--task",
            "segmentation",
            "--data",
            "d",
            "--weights",
            "w.safetensors",
            "--split",
            "test",
        ]);
        assert!(matches!(cli.command, Command::Evaluate(_)));
        let cli = parse(&[
            "predict",
            "--weights",
            "w",
            "--input",
            "a.nii.gz",
            "--output",
            "m.mhd",
            "--patch",
            "64,64,32",
        ]);
        assert!(matches!(cli.command, Command::Predict(_)));
        assert_eq!(parse_patch("64,64,32").unwrap(), [64, 64, 32]);
        assert!(parse_patch("64,64").is_err());
    }

    #[test]
    fn bad_values_are_errors() {
        let cli = parse(&["pretrain", "--train-folds", "4-1"]);
        let Command::Pretrain(args) = cli.command else {
            panic!("not pretrain")
        };
        assert!(resolve_pretrain(&args).is_err());
        let cli = parse(&["pretrain", "--set", "no_such_field=1"]);
        let Command::Pretrain(args) = cli.command else {
            panic!("not pretrain")
        };
        assert!(resolve_pretrain(&args).is_err());
        assert!(Cli::try_parse_from(["genesis-train", "finetune", "--init", "imagenet"]).is_err());
    }
}
