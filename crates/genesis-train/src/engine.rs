//! The training loop shared by pretraining and fine-tuning: epochs of
//! optimiser steps on batches from the background producer, validation,
//! checkpoints, early stopping, metrics and pictures, exact resume.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use genesis_models::{ClassificationModel, SegmentationModel};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tch::{Device, Kind, Tensor, nn};

use crate::checkpoint::{LoopState, load_checkpoint, save_checkpoint};
use crate::config::{OptimizerConfig, SegmentationLoss};
use crate::data::{BatchSource, EpochPlan, Producer};
use crate::losses::{OverlapCounts, bce_with_logits_loss, mse_loss, roc_auc, segmentation_loss};
use crate::metrics_log::{EpochRecord, write_metrics};
use crate::optim::Optimizer;
use crate::plots::{write_loss_curve, write_restoration_sample};
use crate::{Error, Result};

/// libtorch's random generator is process-wide: without this lock, runs in
/// one process (tests, a library user's threads) would interleave their
/// draws and lose reproducibility. Every seeding and every draw of this
/// crate (initialisation, the training forward pass) holds it.
static TORCH_RNG: Mutex<()> = Mutex::new(());

/// Seeds libtorch's generator with `seed` and runs `f`, holding [`TORCH_RNG`].
pub(crate) fn seeded<T>(seed: i64, f: impl FnOnce() -> T) -> T {
    let _guard = TORCH_RNG
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    tch::manual_seed(seed);
    f()
}

/// File names inside a run directory.
pub(crate) const LAST_CHECKPOINT: &str = "last.ckpt.safetensors";
pub(crate) const BEST_CHECKPOINT: &str = "best.ckpt.safetensors";
pub(crate) const LAST_WEIGHTS: &str = "last.safetensors";
pub(crate) const BEST_WEIGHTS: &str = "best.safetensors";

/// Ways to stop a run from outside: Ctrl-C (the binary sets `stop`), or a
/// step budget (tests simulate an interruption with it). Either way `last`
/// is saved first and the run ends with [`Error::Interrupted`].
#[derive(Debug, Clone, Default)]
pub struct TrainControl {
    /// Set to stop after the current step.
    pub stop: Arc<AtomicBool>,
    /// Stop after this many optimiser steps in this process.
    pub stop_after_steps: Option<u64>,
}

/// Refuses to start a run afresh (neither resuming nor overwriting) in a directory that
/// holds an earlier run's checkpoints or weights: they, and its `config.toml`, would be
/// replaced. [`save_config`] calls it before anything is written to the run directory.
fn check_fresh_run_dir(run_dir: &Path, options: &RunOptions) -> Result<()> {
    if options.resume || options.overwrite {
        return Ok(());
    }
    let earlier = [LAST_CHECKPOINT, BEST_CHECKPOINT, LAST_WEIGHTS, BEST_WEIGHTS]
        .iter()
        .map(|name| run_dir.join(name))
        .find(|path| path.exists());
    match earlier {
        None => Ok(()),
        Some(earlier) => Err(Error::checkpoint(
            &earlier,
            format!(
                "the run directory holds an earlier run; continue it with --resume {}, start \
                 afresh over it with --overwrite, or choose another --run-dir",
                run_dir.display()
            ),
        )),
    }
}

/// How a run is started.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue from `last.ckpt.safetensors` in the run directory.
    pub resume: bool,
    /// Start afresh in a run directory that holds an earlier run, replacing its
    /// checkpoints and weights (without it, that is an error).
    pub overwrite: bool,
    /// Hide progress bars and the epoch lines.
    pub quiet: bool,
    /// Outside stop requests.
    pub control: TrainControl,
}

/// What a finished run did.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// The run directory.
    pub run_dir: PathBuf,
    /// One record per epoch, including those of earlier (resumed) sessions.
    pub history: Vec<EpochRecord>,
    /// Best validation loss.
    pub best_valid_loss: Option<f64>,
    /// Its epoch.
    pub best_epoch: Option<usize>,
    /// Whether early stopping ended the run before `epochs`.
    pub stopped_early: bool,
}

/// The network being trained.
#[derive(Debug)]
pub(crate) enum Net {
    /// Voxel outputs (probabilities).
    Segmentation(SegmentationModel),
    /// One logit per cube.
    Classification(ClassificationModel),
}

impl Net {
    pub(crate) fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        Ok(match self {
            Net::Segmentation(m) => m.try_forward_t(xs, train)?,
            Net::Classification(m) => m.try_forward_t(xs, train)?,
        })
    }
}

/// What is predicted and how it is scored.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Objective {
    /// Pretraining: MSE between restoration and original cube.
    Restoration,
    /// Segmentation loss; Dice at `threshold` as the validation metric.
    Segmentation {
        loss: SegmentationLoss,
        threshold: f64,
    },
    /// BCE on logits; ROC AUC as the validation metric.
    Classification,
}

impl Objective {
    pub(crate) fn loss(&self, output: &Tensor, target: &Tensor) -> Result<Tensor> {
        match self {
            Objective::Restoration => mse_loss(output, target),
            Objective::Segmentation { loss, .. } => segmentation_loss(*loss, output, target),
            Objective::Classification => bce_with_logits_loss(output, target),
        }
    }
}

/// Everything the loop needs besides the model and data.
#[derive(Debug, Clone)]
pub(crate) struct LoopSpec {
    pub(crate) run_dir: PathBuf,
    pub(crate) epochs: usize,
    pub(crate) patience: usize,
    pub(crate) batch_size: usize,
    pub(crate) optimizer: OptimizerConfig,
    pub(crate) seed: u64,
    pub(crate) device: Device,
    pub(crate) queue_depth: usize,
    pub(crate) train_steps: usize,
    pub(crate) valid_steps: usize,
    pub(crate) objective: Objective,
    /// Restoration sample every this many epochs (0: never).
    pub(crate) sample_every: usize,
    pub(crate) config_toml: String,
}

/// Turns a batch's values into `(N, 1, rows, cols, deps)` inputs and targets
/// of the objective's shape, on `device`.
pub(crate) fn batch_tensors(
    inputs: &[f32],
    targets: &[f32],
    n: usize,
    shape: [usize; 3],
    device: Device,
) -> Result<(Tensor, Tensor)> {
    let [r, c, d] = shape.map(|s| s as i64);
    let n = n as i64;
    let x = Tensor::from_slice(inputs)
        .f_view([n, 1, r, c, d])?
        .f_to_device(device)?;
    let per_item = (targets.len() as i64) / n.max(1);
    let y = if per_item == 1 {
        Tensor::from_slice(targets).f_view([n, 1])?
    } else {
        Tensor::from_slice(targets).f_view([n, 1, r, c, d])?
    };
    Ok((x, y.f_to_device(device)?))
}

fn progress_bar(len: usize, quiet: bool, prefix: String) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    if quiet || !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    if let Ok(style) =
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} {per_sec} eta {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(prefix);
    bar
}

/// The seed of libtorch's generator at a step, so that anything random in
/// the network (dropout) is also reproduced on resume.
fn step_seed(seed: u64, epoch: usize, step: usize) -> i64 {
    let mixed = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add((epoch as u64) << 32)
        .wrapping_add(step as u64);
    (mixed >> 1) as i64
}

/// Runs the loop; `train` and `valid` produce the batches. The run directory exists
/// ([`save_config`] made it).
pub(crate) fn run_loop(
    spec: &LoopSpec,
    vs: &nn::VarStore,
    net: &Net,
    train: Arc<dyn BatchSource>,
    valid: Arc<dyn BatchSource>,
    options: &RunOptions,
) -> Result<RunSummary> {
    let run_dir = &spec.run_dir;
    let mut optimizer = Optimizer::new(vs, &spec.optimizer)?;
    let last_path = run_dir.join(LAST_CHECKPOINT);
    let mut state = if options.resume {
        if !last_path.is_file() {
            return Err(Error::checkpoint(
                &last_path,
                "cannot resume: no checkpoint in the run directory",
            ));
        }
        let state = load_checkpoint(&last_path, vs, &mut optimizer)?;
        if state.seed != spec.seed {
            return Err(Error::checkpoint(
                &last_path,
                format!(
                    "written with seed {}, the configuration says {}",
                    state.seed, spec.seed
                ),
            ));
        }
        if !options.quiet {
            println!(
                "resuming {} at epoch {}, step {}",
                run_dir.display(),
                state.epoch,
                state.step
            );
        }
        state
    } else {
        LoopState {
            epoch: 0,
            step: 0,
            optimizer_steps: 0,
            seed: spec.seed,
            best_valid_loss: None,
            best_epoch: None,
            epochs_without_improvement: 0,
            partial_loss_sum: 0.0,
            partial_wait_s: 0.0,
            partial_seconds: 0.0,
            history: Vec::new(),
            config_toml: spec.config_toml.clone(),
        }
    };
    state.config_toml = spec.config_toml.clone();
    let shape = train.shape();
    let mut steps_this_session = 0u64;
    let mut stopped_early = false;

    while state.epoch < spec.epochs {
        if state.epochs_without_improvement >= spec.patience {
            stopped_early = true;
            break;
        }
        let epoch = state.epoch;
        let lr = spec.optimizer.lr_at(epoch, spec.patience);
        let plan = EpochPlan {
            order: EpochPlan::shuffled(train.len(), spec.seed, epoch as u64),
            batch_size: spec.batch_size,
            epoch: epoch as u64,
            first_step: state.step,
            n_steps: spec.train_steps,
        };
        let mut producer = Producer::spawn(Arc::clone(&train), plan, spec.queue_depth)?;
        let bar = progress_bar(spec.train_steps, options.quiet, format!("epoch {epoch}"));
        bar.set_position(state.step as u64);
        let started = Instant::now();
        let mut loss_sum = state.partial_loss_sum;
        let mut wait_s = state.partial_wait_s;
        let mut cubes = 0usize;
        for step in state.step..spec.train_steps {
            let waiting = Instant::now();
            let batch = producer.next_batch()?;
            wait_s += waiting.elapsed().as_secs_f64();
            cubes += batch.n;
            let (x, y) = batch_tensors(&batch.inputs, &batch.targets, batch.n, shape, spec.device)?;
            producer.recycle(batch);
            optimizer.zero_grad();
            let output = seeded(step_seed(spec.seed, epoch, step), || net.forward(&x, true))?;
            let loss = spec.objective.loss(&output, &y)?;
            let value = loss.f_double_value(&[])?;
            if !value.is_finite() {
                bar.abandon();
                return Err(Error::NonFiniteLoss {
                    value,
                    epoch,
                    step,
                    run_dir: run_dir.clone(),
                });
            }
            loss.f_backward()?;
            optimizer.step(lr)?;
            loss_sum += value;
            steps_this_session += 1;
            bar.inc(1);
            bar.set_message(format!("loss {:.5}", loss_sum / (step + 1) as f64));
            let budget_spent = options
                .control
                .stop_after_steps
                .is_some_and(|n| steps_this_session >= n);
            if (options.control.stop.load(Ordering::Relaxed) || budget_spent)
                && step + 1 < spec.train_steps
            {
                bar.abandon();
                state.step = step + 1;
                state.optimizer_steps = optimizer.steps();
                state.partial_loss_sum = loss_sum;
                state.partial_wait_s = wait_s;
                state.partial_seconds += started.elapsed().as_secs_f64();
                save_checkpoint(&last_path, vs, &optimizer, &state)?;
                genesis_models::save_safetensors(vs, run_dir.join(LAST_WEIGHTS))?;
                return Err(Error::Interrupted {
                    epoch,
                    step: step + 1,
                    run_dir: run_dir.clone(),
                });
            }
        }
        drop(producer);
        bar.finish_and_clear();
        let session_train_s = started.elapsed().as_secs_f64();
        let train_seconds = session_train_s + state.partial_seconds;
        let train_loss = loss_sum / spec.train_steps.max(1) as f64;

        let validation = validate(spec, net, Arc::clone(&valid), epoch, options.quiet)?;
        let seconds = started.elapsed().as_secs_f64() + state.partial_seconds;
        let improved = state.best_valid_loss.is_none_or(|b| validation.loss < b);
        let record = EpochRecord {
            epoch,
            train_loss,
            valid_loss: validation.loss,
            valid_metric: validation.metric,
            lr,
            data_wait_s: wait_s,
            data_wait_share: if train_seconds > 0.0 {
                wait_s / train_seconds
            } else {
                0.0
            },
            seconds,
            cubes_per_s: if session_train_s > 0.0 {
                cubes as f64 / session_train_s
            } else {
                0.0
            },
            best: improved,
        };
        state.history.push(record.clone());
        if improved {
            state.best_valid_loss = Some(validation.loss);
            state.best_epoch = Some(epoch);
            state.epochs_without_improvement = 0;
        } else {
            state.epochs_without_improvement += 1;
        }
        state.epoch = epoch + 1;
        state.step = 0;
        state.optimizer_steps = optimizer.steps();
        state.partial_loss_sum = 0.0;
        state.partial_wait_s = 0.0;
        state.partial_seconds = 0.0;

        if improved {
            save_checkpoint(&run_dir.join(BEST_CHECKPOINT), vs, &optimizer, &state)?;
            genesis_models::save_safetensors(vs, run_dir.join(BEST_WEIGHTS))?;
        }
        save_checkpoint(&last_path, vs, &optimizer, &state)?;
        genesis_models::save_safetensors(vs, run_dir.join(LAST_WEIGHTS))?;
        write_metrics(run_dir, &state.history)?;
        let train_curve: Vec<f64> = state.history.iter().map(|r| r.train_loss).collect();
        let valid_curve: Vec<f64> = state.history.iter().map(|r| r.valid_loss).collect();
        write_loss_curve(
            &run_dir.join("loss_curve.png"),
            &train_curve,
            &valid_curve,
            state.best_epoch,
        )?;
        if let Some(sample) = &validation.sample
            && spec.sample_every > 0
            && (epoch % spec.sample_every == 0 || epoch + 1 == spec.epochs)
        {
            let dir = run_dir.join("samples");
            genesis_io::create_dir_all(&dir)?;
            write_restoration_sample(
                &dir.join(format!("epoch_{epoch:03}.png")),
                shape,
                &sample.0,
                &sample.1,
                &sample.2,
            )?;
        }
        if !options.quiet {
            let metric = match (spec.objective, record.valid_metric) {
                (Objective::Segmentation { .. }, Some(m)) => format!(" valid dice {m:.4}"),
                (Objective::Classification, Some(m)) => format!(" valid auc {m:.4}"),
                _ => String::new(),
            };
            println!(
                "epoch {epoch:>4}: train {:.6} valid {:.6}{metric} lr {:.3e} {:.1} cubes/s data-wait {:.1}% {:.1} s{}",
                record.train_loss,
                record.valid_loss,
                record.lr,
                record.cubes_per_s,
                100.0 * record.data_wait_share,
                record.seconds,
                if improved { " *best" } else { "" }
            );
        }
    }
    if state.epochs_without_improvement >= spec.patience && state.epoch < spec.epochs {
        stopped_early = true;
    }
    if stopped_early && !options.quiet {
        println!(
            "early stopping: no validation improvement for {} epochs (best epoch {:?})",
            spec.patience, state.best_epoch
        );
    }
    Ok(RunSummary {
        run_dir: run_dir.clone(),
        history: state.history,
        best_valid_loss: state.best_valid_loss,
        best_epoch: state.best_epoch,
        stopped_early,
    })
}

/// Validation results of one epoch.
#[derive(Debug)]
struct Validation {
    loss: f64,
    metric: Option<f64>,
    /// Input, target and prediction of the first validation cube.
    sample: Option<(Vec<f32>, Vec<f32>, Vec<f32>)>,
}

fn validate(
    spec: &LoopSpec,
    net: &Net,
    valid: Arc<dyn BatchSource>,
    epoch: usize,
    quiet: bool,
) -> Result<Validation> {
    let shape = valid.shape();
    let voxels: usize = shape.iter().product();
    let plan = EpochPlan {
        order: (0..valid.len()).collect(),
        batch_size: spec.batch_size,
        // The same pairs every epoch: validation losses are comparable.
        epoch: 0,
        first_step: 0,
        n_steps: spec.valid_steps,
    };
    let mut producer = Producer::spawn(valid, plan, spec.queue_depth)?;
    let bar = progress_bar(spec.valid_steps, quiet, format!("valid {epoch}"));
    let mut loss_sum = 0.0;
    let mut overlap = OverlapCounts::default();
    let mut scores = Vec::new();
    let mut labels = Vec::new();
    let mut sample = None;
    for _ in 0..spec.valid_steps {
        let batch = producer.next_batch()?;
        let (x, y) = batch_tensors(&batch.inputs, &batch.targets, batch.n, shape, spec.device)?;
        let output = tch::no_grad(|| net.forward(&x, false))?;
        let loss = spec.objective.loss(&output, &y)?.f_double_value(&[])?;
        loss_sum += loss;
        let out: Vec<f32> = Vec::try_from(
            output
                .f_to_device(Device::Cpu)?
                .f_to_kind(Kind::Float)?
                .f_flatten(0, -1)?,
        )?;
        match spec.objective {
            Objective::Restoration => {
                if sample.is_none() {
                    sample = Some((
                        batch.inputs[..voxels].to_vec(),
                        batch.targets[..voxels].to_vec(),
                        out[..voxels].to_vec(),
                    ));
                }
            }
            Objective::Segmentation { threshold, .. } => {
                overlap.add(&out, &batch.targets, threshold)
            }
            Objective::Classification => {
                scores.extend_from_slice(&out);
                labels.extend_from_slice(&batch.targets);
            }
        }
        producer.recycle(batch);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let loss = loss_sum / spec.valid_steps.max(1) as f64;
    if !loss.is_finite() {
        return Err(Error::NonFiniteLoss {
            value: loss,
            epoch,
            step: spec.valid_steps,
            run_dir: spec.run_dir.clone(),
        });
    }
    let metric = match spec.objective {
        Objective::Restoration => None,
        Objective::Segmentation { .. } => Some(overlap.dice()),
        Objective::Classification => roc_auc(&scores, &labels),
    };
    Ok(Validation {
        loss,
        metric,
        sample,
    })
}

/// Starts the run directory: refuses one that holds an earlier run unless `options`
/// resume or overwrite it, creates it, and saves the resolved configuration there as
/// `config.toml`.
pub(crate) fn save_config(run_dir: &Path, toml_text: &str, options: &RunOptions) -> Result<()> {
    check_fresh_run_dir(run_dir, options)?;
    genesis_io::create_dir_all(run_dir)?;
    crate::checkpoint::write_atomic(&run_dir.join("config.toml"), toml_text.as_bytes())
}
