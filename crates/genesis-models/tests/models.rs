//! Integration tests of genesis-models (one binary: linking libtorch is
//! slow).
//!
//! The parity test needs the project's venv with torch
//! (`cargo xtask setup`); without it, it prints `SKIPPED` and passes. It runs
//! `scripts/parity.py`, which builds the official PyTorch UNet3D, saves its
//! weights with `torch.save` in both formats and several layouts, and
//! records reference outputs and gradients.

// Helpers outside `#[test]` functions panic on failure too; that is the
// point in a test binary.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use genesis_models::{
    BatchNormMode, ClassificationModel, Error, InitScope, ModelConfig, SegmentationModel,
    load_weights, read_state_dict, save_safetensors,
};
use tch::nn::{self, ModuleT, OptimizerConfig};
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;
/// State dict entries of the U-Net: 14 LUConvs × 7, 3 transposed convs ×
/// 2, the output conv × 2.
const UNET_VARIABLES: usize = 14 * 7 + 3 * 2 + 2;
/// Entries of the encoder: 8 LUConvs × 7.
const ENCODER_VARIABLES: usize = 8 * 7;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's python when it exists and imports torch.
fn venv_python() -> Option<PathBuf> {
    let python = crate_dir().join("../../.venv/bin/python");
    if !python.exists() {
        eprintln!(
            "SKIPPED: {} does not exist (run `cargo xtask setup`)",
            python.display()
        );
        return None;
    }
    let imports_torch = Command::new(&python)
        .args(["-c", "import torch"])
        .output()
        .map(|out| out.status.success())
        .unwrap_or(false);
    if !imports_torch {
        eprintln!("SKIPPED: {} cannot import torch", python.display());
        return None;
    }
    Some(python)
}

fn run_script(python: &Path, args: &[&str]) -> String {
    let out = Command::new(python)
        .arg(crate_dir().join("scripts/parity.py"))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "parity.py {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

fn paper_model(batch_norm: BatchNormMode) -> (nn::VarStore, SegmentationModel) {
    let vs = nn::VarStore::new(Device::Cpu);
    let config = ModelConfig {
        batch_norm,
        ..ModelConfig::default()
    };
    let model = SegmentationModel::new(&vs.root(), &config).unwrap();
    (vs, model)
}

fn load_complete(vs: &mut nn::VarStore, path: &Path) {
    let report = load_weights(vs, path, InitScope::Whole).unwrap();
    report.ensure_complete().unwrap();
    assert_eq!(report.loaded.len(), UNET_VARIABLES, "{report}");
}

#[test]
fn unet_matches_pytorch_and_imports_every_checkpoint_layout() {
    let Some(python) = venv_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let dir_str = dir.path().to_str().unwrap();
    run_script(&python, &["gen", dir_str]);
    let expected: HashMap<String, Tensor> =
        read_state_dict(dir.path().join("expected.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let input = &expected["input"];

    // Standard eval-mode batch norm with the (randomised) running statistics.
    let (mut vs, model) = paper_model(BatchNormMode::Running);
    load_complete(&mut vs, &dir.path().join("zip_flat.pt"));
    let out = tch::no_grad(|| model.try_forward_t(input, false)).unwrap();
    let diff = max_abs_diff(&out, &expected["out_eval_running"]);
    assert!(
        diff <= TOLERANCE,
        "eval, running statistics: max abs diff {diff}"
    );

    // The original batch norm: batch statistics in eval and training.
    let (mut vs, model) = paper_model(BatchNormMode::Batch);
    load_complete(&mut vs, &dir.path().join("zip_flat.pt"));
    let out = tch::no_grad(|| model.try_forward_t(input, false)).unwrap();
    let diff = max_abs_diff(&out, &expected["out_eval_batch"]);
    assert!(
        diff <= TOLERANCE,
        "eval, batch statistics: max abs diff {diff}"
    );
    let out = model.try_forward_t(input, true).unwrap();
    let diff = max_abs_diff(&out, &expected["out_train_batch"]);
    assert!(
        diff <= TOLERANCE,
        "train, batch statistics: max abs diff {diff}"
    );
    let loss = (out - 0.5).square().mean(Kind::Float);
    loss.backward();
    let variables = vs.variables();
    for name in [
        "down_tr64.ops.0.bn1.running_mean",
        "up_tr64.ops.1.bn1.running_var",
    ] {
        let diff = max_abs_diff(&variables[name], &expected[&format!("after.{name}")]);
        assert!(
            diff <= TOLERANCE,
            "{name} after two forward passes: max abs diff {diff}"
        );
    }
    for name in ["down_tr64.ops.0.conv1.weight", "out_tr.final_conv.weight"] {
        let reference = &expected[&format!("grad.{name}")];
        let scale = reference.abs().max().double_value(&[]);
        let diff = max_abs_diff(&variables[name].grad(), reference);
        assert!(
            diff <= 1e-3 * scale + 1e-7,
            "gradient of {name}: max abs diff {diff} (scale {scale})"
        );
    }

    // Every layout loads to exactly the same values.
    let (mut reference_vs, _) = paper_model(BatchNormMode::Batch);
    load_complete(&mut reference_vs, &dir.path().join("zip_flat.pt"));
    let reference = reference_vs.variables();
    assert_eq!(
        reference["down_tr64.ops.0.bn1.num_batches_tracked"].int64_value(&[]),
        7
    );
    for file in [
        "legacy_flat.pt",
        "zip_nested_module.pt",
        "legacy_nested_module.pt",
    ] {
        let (mut vs, _) = paper_model(BatchNormMode::Batch);
        load_complete(&mut vs, &dir.path().join(file));
        for (name, tensor) in vs.variables() {
            assert!(
                tensor.equal(&reference[&name]),
                "{file}: {name} differs from zip_flat.pt"
            );
        }
    }
    // The raw import keeps the file's names.
    let raw = read_state_dict(dir.path().join("legacy_nested_module.pt")).unwrap();
    assert_eq!(raw.len(), UNET_VARIABLES);
    assert!(raw.iter().all(|(name, _)| name.starts_with("module.")));

    // Our export loads into the official network with strict=True.
    let exported = dir.path().join("ours.safetensors");
    save_safetensors(&reference_vs, &exported).unwrap();
    let stdout = run_script(&python, &["check", exported.to_str().unwrap(), dir_str]);
    assert!(stdout.contains("OK"), "{stdout}");

    // Encoder-only initialisation of the classification head.
    let vs = nn::VarStore::new(Device::Cpu);
    let _classifier = ClassificationModel::new(&vs.root(), &ModelConfig::default()).unwrap();
    let mut vs = vs;
    let report = load_weights(
        &mut vs,
        dir.path().join("zip_nested_module.pt"),
        InitScope::EncoderOnly,
    )
    .unwrap();
    assert_eq!(report.loaded.len(), ENCODER_VARIABLES, "{report}");
    assert_eq!(
        report.skipped.len(),
        UNET_VARIABLES - ENCODER_VARIABLES,
        "{report}"
    );
    assert!(
        report.missing.is_empty() && report.unexpected.is_empty(),
        "{report}"
    );
    let encoder_weight = &vs.variables()["down_tr512.ops.1.conv1.weight"];
    assert!(encoder_weight.equal(&reference["down_tr512.ops.1.conv1.weight"]));

    // Damaged files fail with the path in the message.
    for file in ["zip_flat.pt", "legacy_flat.pt"] {
        let bytes = std::fs::read(dir.path().join(file)).unwrap();
        let truncated = dir.path().join(format!("truncated_{file}"));
        std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
        let err = read_state_dict(&truncated).unwrap_err();
        assert!(err.to_string().contains("truncated_"), "{err}");
    }
}

fn fixture(name: &str) -> PathBuf {
    crate_dir().join("tests/fixtures").join(name)
}

fn values(tensor: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(tensor.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

/// `tests/fixtures/*.pt` come from `scripts/make_fixtures.py`, which
/// documents the values checked here.
#[test]
fn committed_fixtures_load_in_both_formats() {
    for (file, prefix) in [("tiny_zip.pt", ""), ("tiny_legacy.pt", "module.")] {
        let tensors: HashMap<String, Tensor> = read_state_dict(fixture(file))
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(tensors.len(), 5, "{file}");
        let get = |name: &str| &tensors[&format!("{prefix}{name}")];
        let weight = get("a.weight");
        assert_eq!(
            (weight.kind(), weight.size()),
            (Kind::Float, vec![2, 3]),
            "{file}"
        );
        assert_eq!(values(weight), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "{file}");
        let bias = get("a.bias");
        assert_eq!(bias.kind(), Kind::Double, "{file}");
        assert_eq!(values(bias), [1.5, -2.0], "{file}");
        let count = get("a.count");
        assert_eq!(
            (count.kind(), count.size()),
            (Kind::Int64, vec![]),
            "{file}"
        );
        assert_eq!(count.int64_value(&[]), 7, "{file}");
        assert_eq!(values(get("b.view")), [1.0, 3.0, 5.0], "{file}");
        let transposed = get("b.t");
        assert_eq!(transposed.size(), [3, 2], "{file}");
        assert_eq!(values(transposed), [0.0, 3.0, 1.0, 4.0, 2.0, 5.0], "{file}");
    }
}

/// Single-byte corruptions anywhere in the fixtures give an error or a
/// (possibly wrong) state dict, never a panic or an abort.
#[test]
fn corrupted_checkpoints_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corrupt.pt");
    let mut n_errors = 0;
    for file in ["tiny_zip.pt", "tiny_legacy.pt"] {
        let original = std::fs::read(fixture(file)).unwrap();
        for index in 0..original.len() {
            let mut bytes = original.clone();
            // Alternate a large and a small change.
            bytes[index] ^= if index % 2 == 0 { 0xff } else { 0x01 };
            std::fs::write(&path, &bytes).unwrap();
            if let Err(err) = read_state_dict(&path) {
                assert!(err.to_string().contains("corrupt.pt"), "{err}");
                n_errors += 1;
            }
        }
    }
    eprintln!("{n_errors} corruptions detected");
    assert!(n_errors > 300, "only {n_errors} corruptions were detected");
}

#[test]
fn unsupported_pickle_opcode_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.pt");
    // A legacy-looking file whose first pickle uses EXT1.
    std::fs::write(&path, b"\x80\x02\x82\x01.").unwrap();
    let err = read_state_dict(&path).unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedOpcode { opcode: "EXT1", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("odd.pt"), "{err}");
}

#[test]
fn small_models_train_on_cpu() {
    // A training step changes the weights and the loss is finite, for both
    // networks and both heads.
    for arch in [genesis_models::Arch::UNet3d, genesis_models::Arch::VNet] {
        let config = ModelConfig {
            arch,
            base_width: 4,
            ..ModelConfig::default()
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let model = SegmentationModel::new(&vs.root(), &config).unwrap();
        let mut optimizer = nn::Sgd::default().build(&vs, 0.1).unwrap();
        let xs = Tensor::rand([2, 1, 16, 16, 16], (Kind::Float, Device::Cpu));
        let before = model.forward_t(&xs, true).detach();
        let loss = (model.forward_t(&xs, true) - &xs)
            .square()
            .mean(Kind::Float);
        assert!(loss.double_value(&[]).is_finite());
        optimizer.backward_step(&loss);
        let after = model.forward_t(&xs, true).detach();
        assert!(max_abs_diff(&before, &after) > 0.0, "{arch:?}");
    }
}
