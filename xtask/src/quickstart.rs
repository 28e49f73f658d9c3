//! `cargo xtask quickstart`: the whole pipeline on an offline phantom dataset.
//!
//! libtorch set-up (if absent) → phantom chest CTs in LUNA16 layout → packed
//! cube stacks → pretraining of a small U-Net on CPU → fine-tuning on phantom
//! nodule segmentation from the pretrained weights and from scratch → a short
//! markdown report with the loss curve, restoration samples and both Dice
//! scores. Sized to finish in a few minutes on two cores.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;

use crate::prepare_data::PrepareDataArgs;
use crate::setup::{ensure_libtorch, workspace_root};

/// Arguments of `cargo xtask quickstart`.
#[derive(Debug, clap::Args)]
pub struct QuickstartArgs {
    /// Where the data, runs and report go (relative to the workspace root).
    #[arg(long, default_value = "runs/quickstart")]
    pub out: PathBuf,
    /// Seed of the whole pipeline (data, transforms, initialisation).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Number of phantom scans to generate (dealt to subsets 0–9: 0–4 train, 5–6
    /// validation, 7–9 test).
    #[arg(long, default_value_t = 10)]
    pub scans: usize,
    /// Cube size `ROWSxCOLSxDEPS` (half the paper's 64x64x32 along each axis keeps the
    /// demo within minutes on two cores; a step costs about 8x less).
    #[arg(long, default_value = "32x32x16")]
    pub cube: String,
    /// Cubes per scan packed for pretraining.
    #[arg(long, default_value_t = 32)]
    pub scale: usize,
    /// Pretraining epochs.
    #[arg(long, default_value_t = 12)]
    pub pretrain_epochs: usize,
    /// Fine-tuning epochs for each of the two initialisations.
    #[arg(long, default_value_t = 10)]
    pub finetune_epochs: usize,
    /// U-Net width multiplier (32 is the paper's network; small keeps this a CPU demo).
    #[arg(long, default_value_t = 8)]
    pub base_width: usize,
    /// Device for training: cpu, cuda or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// `PrepareDataArgs` parsed from a command line, as the user would type it.
#[derive(Debug, Parser)]
struct PrepareDataCommand {
    #[command(flatten)]
    args: PrepareDataArgs,
}

/// Runs `cargo xtask quickstart`.
pub fn run(args: &QuickstartArgs) -> Result<()> {
    let started = Instant::now();
    ensure_libtorch()?;
    let root = workspace_root();
    let out = root.join(&args.out);
    genesis_io::create_dir_all(&out)?;
    let seed = args.seed.to_string();
    let scale = args.scale.to_string();
    let phantom = out.join("phantom");
    let cubes = out.join("cubes");
    let ncs = out.join("tasks/ncs");

    step("1/6 phantom chest CTs in LUNA16 layout");
    prepare_data(&[
        "--synthetic",
        "--scans",
        &args.scans.to_string(),
        "--size",
        "small",
        "--seed",
        &seed,
        "--dir",
        path_str(&phantom)?,
    ])?;

    step("2/6 packing self-supervised cubes");
    prepare_data(&[
        "--dir",
        path_str(&phantom)?,
        "--out",
        path_str(&cubes)?,
        "--scale",
        &scale,
        "--cube",
        &args.cube,
        "--seed",
        &seed,
    ])?;

    step("3/6 phantom nodule-segmentation task");
    prepare_data(&[
        "--task",
        "ncs",
        "--dir",
        path_str(&phantom)?,
        "--out",
        path_str(&ncs)?,
        "--cube",
        &args.cube,
        "--per-nodule",
        "6",
        "--seed",
        &seed,
    ])?;

    let width = args.base_width.to_string();
    let pretrain_dir = out.join("pretrain");
    step("4/6 pretraining (restoration of transformed cubes)");
    genesis_train(&[
        "pretrain",
        "--data",
        path_str(&cubes)?,
        "--run-dir",
        path_str(&pretrain_dir)?,
        // The quickstart's own runs: a second quickstart starts them afresh.
        "--overwrite",
        "--base-width",
        &width,
        "--batch-size",
        "6",
        "--epochs",
        &args.pretrain_epochs.to_string(),
        "--scale",
        &scale,
        "--seed",
        &seed,
        "--device",
        &args.device,
    ])?;

    let weights = pretrain_dir.join("best.safetensors");
    // The two fine-tunes are independent: they run side by side, each on half the cores
    // (a width-8 U-Net on 32x32x16 cubes uses two threads poorly: on two cores both
    // together took 34 s where one after the other took 42 s). Each writes its output to
    // OUT/ncs-NAME.log; the epoch summaries are printed when both are done.
    let threads = std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1));
    step(&format!(
        "5/6 fine-tuning on nodule segmentation, init = genesis and init = scratch, side by \
         side ({threads} thread(s) each)"
    ));
    let runs = [
        FineTune {
            name: "genesis",
            init: format!("genesis:{}", path_str(&weights)?),
            // The restoration head predicts intensities: a fine-tune this short starts
            // the Genesis network with a fresh output layer, the rest pretrained.
            extra: Some("--fresh-output"),
        },
        FineTune {
            name: "scratch",
            init: "scratch".to_string(),
            extra: None,
        },
    ];
    let common = FineTuneCommon {
        out: &out,
        ncs: &ncs,
        width: &width,
        epochs: args.finetune_epochs.to_string(),
        seed: &seed,
        device: &args.device,
        threads: threads.to_string(),
    };
    let results: Vec<Result<(f64, f64)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = runs
            .iter()
            .map(|run| scope.spawn(|| fine_tune_and_evaluate(run, &common)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a fine-tuning thread panicked")))
            })
            .collect()
    });
    let mut dice = Vec::new();
    for (run, result) in runs.iter().zip(results) {
        let log = run.log_path(&out);
        println!("-- init = {} (full log: {})", run.name, log.display());
        if let Ok(text) = std::fs::read_to_string(&log) {
            for line in text
                .lines()
                .filter(|l| l.starts_with("epoch") || l.starts_with("done"))
            {
                println!("{line}");
            }
        }
        let (d, iou) = result?;
        println!("test dice {d:.4}, IoU {iou:.4}");
        dice.push((run.name, d, iou));
    }

    step("6/6 report");
    let report = write_report(&out, &pretrain_dir, &dice, started.elapsed().as_secs_f64())?;
    println!(
        "\nquickstart done in {:.0} s; report: {}",
        started.elapsed().as_secs_f64(),
        report.display()
    );
    Ok(())
}

fn step(title: &str) {
    eprintln!("\n== quickstart {title}");
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("path {} is not valid UTF-8", path.display()))
}

fn prepare_data(args: &[&str]) -> Result<()> {
    let command = PrepareDataCommand::try_parse_from(
        std::iter::once("prepare-data").chain(args.iter().copied()),
    )
    .with_context(|| {
        format!(
            "quickstart built a bad prepare-data command line: {}",
            args.join(" ")
        )
    })?;
    crate::prepare_data::run(&command.args)
}

/// Runs the `genesis-train` binary through cargo (dev profile: the heavy work is in libtorch
/// and in genesis-transforms, which is optimised in every profile).
fn genesis_train(args: &[&str]) -> Result<()> {
    run_genesis_train(args, None)
}

/// One of the quickstart's two fine-tunes.
struct FineTune {
    name: &'static str,
    init: String,
    extra: Option<&'static str>,
}

impl FineTune {
    /// Where both of this run's commands write their output: `OUT/ncs-NAME.log`.
    fn log_path(&self, out: &Path) -> PathBuf {
        out.join(format!("ncs-{}.log", self.name))
    }
}

/// What both fine-tunes share.
struct FineTuneCommon<'a> {
    out: &'a Path,
    ncs: &'a Path,
    width: &'a str,
    epochs: String,
    seed: &'a str,
    device: &'a str,
    threads: String,
}

/// Fine-tunes from `run.init`, then evaluates the best weights on the test split, with
/// both commands' output in `OUT/ncs-NAME.log`. Returns the test Dice and IoU.
fn fine_tune_and_evaluate(run: &FineTune, common: &FineTuneCommon<'_>) -> Result<(f64, f64)> {
    let run_dir = common.out.join(format!("ncs-{}", run.name));
    let log = run.log_path(common.out);
    let log_file =
        std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut finetune = vec![
        "finetune",
        "--task",
        "segmentation",
        "--data",
        path_str(common.ncs)?,
        "--init",
        &run.init,
        "--run-dir",
        path_str(&run_dir)?,
        "--overwrite",
        "--base-width",
        common.width,
        "--batch-size",
        "4",
        "--epochs",
        &common.epochs,
        "--seed",
        common.seed,
        "--device",
        common.device,
        "--threads",
        &common.threads,
    ];
    finetune.extend(run.extra);
    run_genesis_train(&finetune, Some((&log_file, &log)))?;
    let metrics = run_dir.join("test_metrics.json");
    run_genesis_train(
        &[
            "evaluate",
            "--task",
            "segmentation",
            "--data",
            path_str(common.ncs)?,
            "--weights",
            path_str(&run_dir.join("best.safetensors"))?,
            "--base-width",
            common.width,
            "--split",
            "test",
            "--output",
            path_str(&metrics)?,
            "--device",
            common.device,
            "--threads",
            &common.threads,
        ],
        Some((&log_file, &log)),
    )?;
    Ok((
        read_metric(&metrics, "dice")?,
        read_metric(&metrics, "iou")?,
    ))
}

/// [`genesis_train`], with stdout and stderr appended to `log`'s file when given; on
/// failure the error then carries the log's last lines.
fn run_genesis_train(args: &[&str], log: Option<(&std::fs::File, &Path)>) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut command = Command::new(&cargo);
    command
        .args(["run", "--quiet", "-p", "genesis-train", "--"])
        .args(args)
        .current_dir(workspace_root());
    if let Some((file, path)) = log {
        let clone = || {
            file.try_clone()
                .with_context(|| format!("cannot write {}", path.display()))
        };
        command.stdout(clone()?).stderr(clone()?);
    }
    let status = command
        .status()
        .with_context(|| format!("cannot run {cargo}"))?;
    if status.success() {
        return Ok(());
    }
    let Some((_, path)) = log else {
        bail!("`genesis-train {}` failed ({status})", args.join(" "));
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    bail!(
        "`genesis-train {}` failed ({status}); last lines of {}:\n{tail}",
        args.join(" "),
        path.display()
    )
}

/// Reads a number field of the JSON object that `genesis-train evaluate` writes.
fn read_metric(path: &Path, key: &str) -> Result<f64> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    value
        .get(key)
        .and_then(serde_json::Value::as_f64)
        .with_context(|| format!("{}: no number field \"{key}\"", path.display()))
}

fn write_report(
    out: &Path,
    pretrain_dir: &Path,
    dice: &[(&str, f64, f64)],
    seconds: f64,
) -> Result<PathBuf> {
    let rel = |p: &Path| p.strip_prefix(out).unwrap_or(p).display().to_string();
    let mut md = String::new();
    let _ = writeln!(md, "# Models Genesis quickstart\n");
    let _ = writeln!(
        md,
        "Offline phantom chest CTs, cube packing, self-supervised pretraining of a small 3D U-Net, and\n\
         fine-tuning on phantom nodule segmentation from the pretrained weights and from scratch.\n\
         Total time: {seconds:.0} s.\n"
    );
    let _ = writeln!(md, "## Pretraining\n");
    let losses = read_losses(&pretrain_dir.join("metrics.csv"))?;
    if let (Some(first), Some(last)) = (losses.first(), losses.last()) {
        let _ = writeln!(
            md,
            "Restoration loss (MSE) over {} epochs: train {:.5} → {:.5}, validation {:.5} → {:.5}.\n",
            losses.len(),
            first.0,
            last.0,
            first.1,
            last.1
        );
    }
    let _ = writeln!(
        md,
        "![loss curve]({})\n",
        rel(&pretrain_dir.join("loss_curve.png"))
    );
    if let Some(sample) = latest_sample(&pretrain_dir.join("samples")) {
        let _ = writeln!(
            md,
            "Restoration samples (input | target | prediction):\n\n![samples]({})\n",
            rel(&sample)
        );
    }
    let _ = writeln!(
        md,
        "Metrics per epoch: `{}`\n",
        rel(&pretrain_dir.join("metrics.csv"))
    );
    let _ = writeln!(md, "## Fine-tuning: nodule segmentation (test split)\n");
    let _ = writeln!(md, "| initialisation | Dice | IoU |\n|---|---|---|");
    for (name, d, iou) in dice {
        let _ = writeln!(md, "| {name} | {d:.4} | {iou:.4} |");
    }
    let _ = writeln!(
        md,
        "\n`genesis` starts from the pretrained weights with a fresh output layer (`--fresh-output`);\n\
         `scratch` from a random initialisation; same seed, data and recipe otherwise. A few\n\
         minutes of pretraining on a handful of phantom scans is a smoke test of the pipeline, not\n\
         the paper's experiment: the gap between the two rows here says little either way."
    );
    let path = out.join("report.md");
    let tmp = out.join("report.md.tmp");
    std::fs::write(&tmp, md).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot rename {}", tmp.display()))?;
    Ok(path)
}

/// (train, valid) loss per epoch from a run's `metrics.csv`.
fn read_losses(path: &Path) -> Result<Vec<(f64, f64)>> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    let header = reader
        .headers()
        .with_context(|| format!("cannot read {}", path.display()))?
        .clone();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("{}: no column {name}", path.display()))
    };
    let (train, valid) = (column("train_loss")?, column("valid_loss")?);
    let mut losses = Vec::new();
    for record in reader.records() {
        let record = record.with_context(|| format!("cannot read {}", path.display()))?;
        let line = record.position().map_or(0, |p| p.line());
        let get = |i: usize| -> Result<f64> {
            record
                .get(i)
                .and_then(|f| f.trim().parse().ok())
                .with_context(|| format!("{}: line {line}: bad loss", path.display()))
        };
        losses.push((get(train)?, get(valid)?));
    }
    Ok(losses)
}

fn latest_sample(dir: &Path) -> Option<PathBuf> {
    let mut pngs: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    pngs.sort();
    pngs.pop()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_read_from_flat_json() {
        let path =
            std::env::temp_dir().join(format!("quickstart-metrics-{}.json", std::process::id()));
        std::fs::write(&path, "{\"dice\": 0.625, \"iou\":0.5}\n").unwrap();
        assert_eq!(read_metric(&path, "dice").unwrap(), 0.625);
        assert_eq!(read_metric(&path, "iou").unwrap(), 0.5);
        assert!(read_metric(&path, "auc").is_err());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn losses_are_read_from_the_metrics_csv() {
        let path =
            std::env::temp_dir().join(format!("quickstart-metrics-{}.csv", std::process::id()));
        std::fs::write(
            &path,
            "epoch,train_loss,valid_loss,lr\n0,0.5,0.4,1e0\n1,0.25,0.2,1e0\n",
        )
        .unwrap();
        assert_eq!(read_losses(&path).unwrap(), vec![(0.5, 0.4), (0.25, 0.2)]);
        std::fs::write(&path, "epoch,train_loss,valid_loss\n0,x,0.4\n").unwrap();
        assert!(read_losses(&path).is_err());
        std::fs::remove_file(&path).unwrap();
    }
}
