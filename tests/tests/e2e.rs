//! End to end with a tiny U-Net and tiny data made here: pretraining for two
//! epochs, an interrupted and resumed run that must reach the same weights,
//! fine-tuning from the pretrained weights (segmentation) and from scratch
//! (classification), evaluation through the command line, and whole-scan
//! prediction.
//!
//! One test function: libtorch's thread count is process-wide and the exact
//! resume check wants a single thread.

// The helpers below are test code too: a failed unwrap there is a test failure.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use clap::Parser;
use genesis_io::{NpyDtype, NpyStackWriter, Volume};
use genesis_train::{
    Cli, Error, EvaluateConfig, FinetuneConfig, Init, OptimizerConfig, PretrainConfig, RunOptions,
    Task, TrainControl, evaluate, finetune, pretrain,
};

const SHAPE: [usize; 3] = [32, 32, 16];

/// A deterministic pseudo-random generator (no test dependency on rand).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// A smooth cube with a bright ball of radius `radius` at `centre`, and its mask.
fn cube_with_ball(rng: &mut Lcg, centre: [f32; 3], radius: f32) -> (Vec<f32>, Vec<f32>) {
    let [r, c, d] = SHAPE;
    let phase = rng.next() * 6.0;
    let mut image = Vec::with_capacity(r * c * d);
    let mut mask = Vec::with_capacity(r * c * d);
    for x in 0..r {
        for y in 0..c {
            for z in 0..d {
                let dist = ((x as f32 - centre[0]).powi(2)
                    + (y as f32 - centre[1]).powi(2)
                    + (2.0 * (z as f32 - centre[2])).powi(2))
                .sqrt();
                let inside = dist < radius;
                let background =
                    0.3 + 0.1 * ((x as f32 * 0.3 + phase).sin() * (y as f32 * 0.2).cos());
                image.push(if inside { 0.85 } else { background } + 0.02 * rng.next());
                mask.push(if inside { 1.0 } else { 0.0 });
            }
        }
    }
    (image, mask)
}

fn random_centre(rng: &mut Lcg) -> [f32; 3] {
    [
        8.0 + 16.0 * rng.next(),
        8.0 + 16.0 * rng.next(),
        4.0 + 8.0 * rng.next(),
    ]
}

fn write_stack(path: &Path, items: &[Vec<f32>]) {
    let mut writer = NpyStackWriter::create(path, &SHAPE, NpyDtype::F32).unwrap();
    for item in items {
        writer.append(item).unwrap();
    }
    writer.finish().unwrap();
}

/// Cube stacks for pretraining: folds 0 and 1 (training), 2 (validation).
fn make_cubes(dir: &Path) {
    let mut rng = Lcg(7);
    for (fold, n) in [(0, 8), (1, 8), (2, 4)] {
        let cubes: Vec<Vec<f32>> = (0..n)
            .map(|_| {
                let centre = random_centre(&mut rng);
                cube_with_ball(&mut rng, centre, 5.0).0
            })
            .collect();
        write_stack(&dir.join(format!("bat_4_s_32x32x16_{fold}.npy")), &cubes);
    }
}

/// A segmentation task (x/m stacks) and a classification task (x stacks, y CSV).
fn make_tasks(ncs: &Path, ncc: &Path) {
    std::fs::create_dir_all(ncs).unwrap();
    std::fs::create_dir_all(ncc).unwrap();
    let mut rng = Lcg(11);
    for (split, n) in [("train", 12), ("valid", 4), ("test", 4)] {
        let (mut images, mut masks) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let centre = random_centre(&mut rng);
            let radius = 4.0 + 3.0 * rng.next();
            let (image, mask) = cube_with_ball(&mut rng, centre, radius);
            images.push(image);
            masks.push(mask);
        }
        write_stack(&ncs.join(format!("x_{split}_32x32x16.npy")), &images);
        write_stack(&ncs.join(format!("m_{split}_32x32x16.npy")), &masks);
        // Classification: a ball (label 1) or none (label 0), alternating.
        let mut labels = String::from("label\n");
        let mut cubes = Vec::new();
        for i in 0..n {
            let radius = if i % 2 == 0 { 5.0 } else { 0.0 };
            let centre = random_centre(&mut rng);
            cubes.push(cube_with_ball(&mut rng, centre, radius).0);
            labels.push_str(if i % 2 == 0 { "1\n" } else { "0\n" });
        }
        write_stack(&ncc.join(format!("x_{split}_32x32x16.npy")), &cubes);
        std::fs::write(ncc.join(format!("y_{split}.csv")), labels).unwrap();
    }
}

fn tiny_pretrain(data: &Path, run_dir: PathBuf) -> PretrainConfig {
    let mut config = PretrainConfig::paper();
    config.data = data.to_path_buf();
    config.run_dir = run_dir;
    config.scale = 4;
    config.train_folds = vec![0, 1];
    config.valid_folds = vec![2];
    config.batch_size = 4;
    config.epochs = 2;
    config.device = "cpu".into();
    config.queue_depth = 2;
    config.model.base_width = 4;
    config.optimizer = OptimizerConfig {
        lr: 0.01,
        ..OptimizerConfig::paper_finetune()
    };
    config
}

fn quiet() -> RunOptions {
    RunOptions {
        quiet: true,
        ..RunOptions::default()
    }
}

fn weights(path: &Path) -> Vec<(String, tch::Tensor)> {
    let mut named = genesis_models::read_state_dict(path).unwrap();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

fn max_abs_diff(a: &[(String, tch::Tensor)], b: &[(String, tch::Tensor)]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            let diff = (ta.to_kind(tch::Kind::Double) - tb.to_kind(tch::Kind::Double))
                .abs()
                .max();
            diff.double_value(&[])
        })
        .fold(0.0, f64::max)
}

#[test]
fn pretrain_resume_finetune_evaluate_predict() {
    genesis_train::configure_threads(Some(1)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cubes = dir.path().join("cubes");
    std::fs::create_dir_all(&cubes).unwrap();
    make_cubes(&cubes);

    // 1. Two epochs uninterrupted.
    let run_a = dir.path().join("pretrain-a");
    let summary = pretrain(&tiny_pretrain(&cubes, run_a.clone()), &quiet()).unwrap();
    assert_eq!(summary.history.len(), 2);
    let (first, second) = (&summary.history[0], &summary.history[1]);
    assert!(
        second.train_loss < first.train_loss,
        "train loss did not fall: {first:?} → {second:?}"
    );
    assert!(
        second.valid_loss < first.valid_loss,
        "valid loss did not fall: {first:?} → {second:?}"
    );
    for file in [
        "config.toml",
        "metrics.csv",
        "metrics.jsonl",
        "loss_curve.png",
        "samples/epoch_000.png",
        "samples/epoch_001.png",
        "best.safetensors",
        "last.safetensors",
        "best.ckpt.safetensors",
        "last.ckpt.safetensors",
    ] {
        assert!(run_a.join(file).is_file(), "{file} missing");
    }
    assert_eq!(
        std::fs::read_to_string(run_a.join("metrics.csv"))
            .unwrap()
            .lines()
            .count(),
        3
    );
    let sample = image::open(run_a.join("samples/epoch_001.png")).unwrap();
    assert!(
        sample.width() > sample.height(),
        "4 depths across, 3 images down"
    );
    let saved: PretrainConfig = genesis_train::load_toml(&run_a.join("config.toml")).unwrap();
    assert_eq!(saved, tiny_pretrain(&cubes, run_a.clone()));
    let final_a = weights(&run_a.join("last.safetensors"));
    assert!(
        final_a
            .iter()
            .any(|(n, _)| n == "down_tr64.ops.0.conv1.weight"),
        "official names"
    );
    assert!(
        final_a.iter().any(|(n, _)| n == "out_tr.final_conv.weight"),
        "official names"
    );

    // A fresh run into the same directory would replace its weights: refused unless
    // asked for.
    let last_a = std::fs::read(run_a.join("last.safetensors")).unwrap();
    let config_a = std::fs::read(run_a.join("config.toml")).unwrap();
    let error = pretrain(&tiny_pretrain(&cubes, run_a.clone()), &quiet())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("the run directory holds an earlier run") && error.contains("--overwrite"),
        "{error}"
    );
    assert_eq!(
        std::fs::read(run_a.join("last.safetensors")).unwrap(),
        last_a
    );
    assert_eq!(std::fs::read(run_a.join("config.toml")).unwrap(), config_a);

    // 2. The same run interrupted in the middle of epoch 0, then resumed.
    let run_b = dir.path().join("pretrain-b");
    let config_b = tiny_pretrain(&cubes, run_b.clone());
    let interrupted = RunOptions {
        quiet: true,
        control: TrainControl {
            stop_after_steps: Some(3),
            ..TrainControl::default()
        },
        ..RunOptions::default()
    };
    match pretrain(&config_b, &interrupted) {
        Err(Error::Interrupted {
            epoch: 0, step: 3, ..
        }) => {}
        other => panic!("expected an interruption at epoch 0, step 3, got {other:?}"),
    }
    let state = genesis_train::read_loop_state(&run_b.join("last.ckpt.safetensors")).unwrap();
    assert_eq!((state.epoch, state.step), (0, 3));
    // A second interruption at the end of epoch 0 (after one more step), then to the end.
    let resumed_once = RunOptions {
        resume: true,
        control: TrainControl {
            stop_after_steps: Some(2),
            ..TrainControl::default()
        },
        ..quiet()
    };
    match pretrain(&config_b, &resumed_once) {
        Err(Error::Interrupted {
            epoch: 1, step: 1, ..
        }) => {}
        other => panic!("expected an interruption at epoch 1, step 1, got {other:?}"),
    }
    let resumed = pretrain(
        &config_b,
        &RunOptions {
            resume: true,
            ..quiet()
        },
    )
    .unwrap();
    let final_b = weights(&run_b.join("last.safetensors"));
    let diff = max_abs_diff(&final_a, &final_b);
    assert!(
        diff < 1e-6,
        "resumed run differs from the uninterrupted one by {diff}"
    );
    let losses = |h: &[genesis_train::EpochRecord]| {
        h.iter()
            .map(|r| (r.train_loss, r.valid_loss))
            .collect::<Vec<_>>()
    };
    assert_eq!(losses(&resumed.history), losses(&summary.history));

    // 3. Fine-tuning on segmentation from the pretrained weights.
    let ncs = dir.path().join("tasks/ncs");
    let ncc = dir.path().join("tasks/ncc");
    make_tasks(&ncs, &ncc);
    let mut seg = FinetuneConfig::paper();
    seg.task = Task::Segmentation;
    seg.data = ncs.clone();
    seg.run_dir = dir.path().join("ncs-genesis");
    seg.init = Init::Genesis(run_a.join("best.safetensors"));
    seg.batch_size = 4;
    seg.epochs = 3;
    seg.device = "cpu".into();
    seg.model.base_width = 4;
    seg.optimizer.lr = 0.01;
    let seg_summary = finetune(&seg, &quiet()).unwrap();
    assert_eq!(seg_summary.history.len(), 3);
    assert!(
        seg_summary
            .history
            .iter()
            .all(|r| r.valid_metric.is_some_and(|d| (0.0..=1.0).contains(&d)))
    );
    assert!(
        seg_summary.history[2].train_loss < seg_summary.history[0].train_loss,
        "segmentation loss did not fall: {:?}",
        seg_summary.history
    );
    assert!(seg.run_dir.join("best.safetensors").is_file());

    // 4. Evaluation through the command line, as the quickstart calls it.
    let metrics_path = dir.path().join("ncs-genesis/test_metrics.json");
    let seg_weights = seg.run_dir.join("best.safetensors");
    let args = [
        "genesis-train",
        "evaluate",
        "--task",
        "segmentation",
        "--data",
        ncs.to_str().unwrap(),
        "--weights",
        seg_weights.to_str().unwrap(),
        "--base-width",
        "4",
        "--split",
        "test",
        "--output",
        metrics_path.to_str().unwrap(),
        "--device",
        "cpu",
    ];
    genesis_train::run(Cli::try_parse_from(args).unwrap()).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&metrics_path).unwrap()).unwrap();
    let dice = json["dice"].as_f64().unwrap();
    let iou = json["iou"].as_f64().unwrap();
    assert!(
        (0.0..=1.0).contains(&dice) && (0.0..=1.0).contains(&iou) && iou <= dice,
        "{json}"
    );
    assert_eq!(json["n_cubes"], 4);

    // 5. Classification from scratch (encoder-only init is covered by genesis-models).
    let mut cls = FinetuneConfig::paper();
    cls.task = Task::Classification;
    cls.data = ncc.clone();
    cls.run_dir = dir.path().join("ncc-scratch");
    cls.init = Init::Genesis(run_a.join("best.safetensors"));
    cls.batch_size = 4;
    cls.epochs = 1;
    cls.device = "cpu".into();
    cls.model.base_width = 4;
    let cls_summary = finetune(&cls, &quiet()).unwrap();
    assert!(cls_summary.history[0].valid_metric.is_some(), "valid AUC");
    let metrics = evaluate(&EvaluateConfig {
        task: Task::Classification,
        data: ncc,
        split: "test".into(),
        weights: cls.run_dir.join("best.safetensors"),
        model: cls.model,
        device: "cpu".into(),
        ..EvaluateConfig::default()
    })
    .unwrap();
    assert!(
        metrics.auc.is_some_and(|a| (0.0..=1.0).contains(&a)),
        "{metrics:?}"
    );
    assert!(cls.run_dir.join("test_metrics.json").is_file());
    // Metrics are never written over the weights they evaluate.
    let weights = cls.run_dir.join("best.safetensors");
    let weights_bytes = std::fs::read(&weights).unwrap();
    let error = evaluate(&EvaluateConfig {
        task: Task::Classification,
        data: cls.data.clone(),
        split: "test".into(),
        weights: weights.clone(),
        output: Some(weights.clone()),
        model: cls.model,
        device: "cpu".into(),
        ..EvaluateConfig::default()
    })
    .unwrap_err()
    .to_string();
    assert!(error.contains("would overwrite the input"), "{error}");
    assert_eq!(std::fs::read(&weights).unwrap(), weights_bytes);

    // 6. Whole-scan prediction keeps the scan's geometry.
    let mut rng = Lcg(3);
    let (scan, _) = cube_with_ball(&mut rng, [16.0, 16.0, 8.0], 6.0);
    // Back to Hounsfield units: [0, 1] → [-1000, 1000].
    let hu: Vec<f32> = scan.iter().map(|v| v * 2000.0 - 1000.0).collect();
    let mut volume = Volume::new(
        ndarray::Array3::from_shape_vec((32, 32, 16), hu).unwrap(),
        [0.7, 0.7, 1.25],
    );
    volume.origin = [-10.0, 5.0, 100.0];
    let scan_path = dir.path().join("scan.nii.gz");
    genesis_io::write_volume(&scan_path, &volume).unwrap();
    let mask_path = dir.path().join("mask.mhd");
    let args = [
        "genesis-train",
        "predict",
        "--weights",
        seg_weights.to_str().unwrap(),
        "--input",
        scan_path.to_str().unwrap(),
        "--output",
        mask_path.to_str().unwrap(),
        "--patch",
        "16,16,16",
        "--overlap",
        "0.5",
        "--device",
        "cpu",
    ];
    genesis_train::run(Cli::try_parse_from(args).unwrap()).unwrap();
    let mask = genesis_io::read_volume(&mask_path).unwrap();
    assert_eq!(mask.shape(), [32, 32, 16]);
    for axis in 0..3 {
        // NIfTI keeps spacing as f32.
        assert!(
            (mask.spacing[axis] - volume.spacing[axis]).abs() < 1e-6,
            "{:?}",
            mask.spacing
        );
        assert!(
            (mask.origin[axis] - volume.origin[axis]).abs() < 1e-4,
            "{:?}",
            mask.origin
        );
    }
    assert!(mask.data.iter().all(|&v| v == 0.0 || v == 1.0));

    // 7. Bad predictions are refused before anything is written.
    let mut nan_volume = volume.clone();
    nan_volume.data[[3, 4, 5]] = f32::NAN;
    let nan_scan = dir.path().join("nan_scan.nii.gz");
    genesis_io::write_volume(&nan_scan, &nan_volume).unwrap();
    let scan_bytes = std::fs::read(&scan_path).unwrap();
    let predict_error = |input: &std::path::Path, output: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            "genesis-train",
            "predict",
            "--weights",
            seg_weights.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--device",
            "cpu",
        ];
        if !extra.contains(&"--patch") {
            args.extend(["--patch", "16,16,16"]);
        }
        args.extend_from_slice(extra);
        genesis_train::run(Cli::try_parse_from(args).unwrap())
            .unwrap_err()
            .to_string()
    };
    let fresh = dir.path().join("fresh.nii.gz");
    for (input, output, extra, expected) in [
        (&scan_path, &scan_path, &[][..], "would overwrite the input"),
        (
            &scan_path,
            &seg_weights,
            &[][..],
            "would overwrite the input",
        ),
        (
            &nan_scan,
            &fresh,
            &[][..],
            "voxel (x, y, z) = (3, 4, 5) is NaN",
        ),
        (
            &scan_path,
            &fresh,
            &["--threshold", "NaN"][..],
            "threshold must be in [0, 1]",
        ),
        (
            &scan_path,
            &fresh,
            &["--threads", "0"][..],
            "threads must be at least 1",
        ),
        (
            &scan_path,
            &fresh,
            &["--threads", "100000"][..],
            "threads must be at most 1024",
        ),
    ] {
        let error = predict_error(input, output, extra);
        assert!(error.contains(expected), "{extra:?}: {error}");
    }
    let error = predict_error(&scan_path, &fresh, &["--patch", "1024,1024,1024"]);
    assert!(error.contains("patch sides must be at most 512"), "{error}");
    assert!(!fresh.exists());
    assert_eq!(
        std::fs::read(&scan_path).unwrap(),
        scan_bytes,
        "the scan is intact"
    );
}

#[test]
fn diverging_training_stops_with_a_clear_error_and_keeps_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let cubes = dir.path().join("cubes");
    std::fs::create_dir_all(&cubes).unwrap();
    make_cubes(&cubes);
    let run_dir = dir.path().join("run");
    let mut config = tiny_pretrain(&cubes, run_dir.clone());
    config.epochs = 1;
    pretrain(&config, &quiet()).unwrap();
    let before = std::fs::read(run_dir.join("last.ckpt.safetensors")).unwrap();
    // Continue with an absurd SGD rate: the weights overflow within a few steps.
    config.epochs = 3;
    let mut diverging = config.clone();
    diverging.optimizer.lr = 1e30;
    let error = pretrain(
        &diverging,
        &RunOptions {
            resume: true,
            ..quiet()
        },
    );
    match error {
        Err(Error::NonFiniteLoss { ref run_dir, .. }) => {
            assert!(
                error
                    .as_ref()
                    .unwrap_err()
                    .to_string()
                    .contains("last good checkpoint")
            );
            assert_eq!(
                std::fs::read(run_dir.join("last.ckpt.safetensors")).unwrap(),
                before
            );
        }
        other => panic!("expected a non-finite loss, got {other:?}"),
    }
}

#[test]
fn a_run_dir_below_a_file_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cubes = dir.path().join("cubes");
    std::fs::create_dir_all(&cubes).unwrap();
    make_cubes(&cubes);
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, b"keep me").unwrap();
    let config = tiny_pretrain(&cubes, file.join("run"));
    let message = pretrain(&config, &quiet()).unwrap_err().to_string();
    assert!(
        message.contains(&format!("{} is a file, not a directory", file.display())),
        "{message}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}

#[test]
fn missing_data_is_an_error_naming_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_pretrain(&dir.path().join("nowhere"), dir.path().join("run"));
    let message = pretrain(&config, &quiet()).unwrap_err().to_string();
    assert!(message.contains("nowhere"), "{message}");
    let config = tiny_pretrain(dir.path(), dir.path().join("run"));
    let message = pretrain(&config, &quiet()).unwrap_err().to_string();
    assert!(message.contains("bat_4_s_"), "{message}");
}
