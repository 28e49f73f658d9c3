//! Runs a segmentation network over volumes stored as `.npy`.
//!
//! ```text
//! cargo run --release -p genesis-models --example infer -- \
//!     --weights Genesis_Chest_CT.pt --input IN.npy --output OUT.npy \
//!     [--arch unet3d|vnet] [--n-class K] [--base-width W] [--bn batch|running] [--device auto]
//! ```
//!
//! IN is `(N, 1, D1, D2, D3)` or `(N, D1, D2, D3)`, f32 or f64, C order;
//! each `Di` a multiple of 8 (U-Net) or 16 (V-Net). OUT is f32
//! `(N, K, D1, D2, D3)` probabilities. The weights may be in any format
//! `genesis_models::load_weights` reads; `--n-class` and `--base-width`
//! default to what the weights say.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Parser;
use genesis_models::{
    Arch, BatchNormMode, ModelConfig, official_name, parse_device, read_state_dict,
};
use tch::{Kind, Tensor, nn};

#[derive(Debug, Parser)]
#[command(about = "Segment .npy volumes with a Models Genesis U-Net or a V-Net")]
struct Args {
    /// Weights: .safetensors, or a torch.save checkpoint (zip or legacy).
    #[arg(long)]
    weights: PathBuf,
    /// Input volumes, (N, 1, D1, D2, D3) or (N, D1, D2, D3), f32 or f64.
    #[arg(long)]
    input: PathBuf,
    /// Output probabilities, f32 (N, K, D1, D2, D3).
    #[arg(long)]
    output: PathBuf,
    /// Network: unet3d or vnet.
    #[arg(long, default_value = "unet3d")]
    arch: Arch,
    /// Output channels; default: from the weights.
    #[arg(long)]
    n_class: Option<i64>,
    /// First-level channels; default: from the weights.
    #[arg(long)]
    base_width: Option<i64>,
    /// Batch norm: batch (the original's batch statistics) or running.
    #[arg(long, default_value = "batch", value_parser = parse_bn)]
    bn: BatchNormMode,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
}

fn parse_bn(s: &str) -> Result<BatchNormMode, String> {
    match s {
        "batch" => Ok(BatchNormMode::Batch),
        "running" => Ok(BatchNormMode::Running),
        other => Err(format!(
            "unknown batch norm mode `{other}`: expected batch or running"
        )),
    }
}

/// Reads `n_class` and `base_width` off the weights' first and last convs.
fn widths_from_weights(path: &Path, arch: Arch) -> anyhow::Result<(Option<i64>, Option<i64>)> {
    let first = match arch {
        Arch::UNet3d => "down_tr64.ops.0.conv1.weight",
        Arch::VNet => "in_tr.conv1.weight",
    };
    let mut n_class = None;
    let mut base_width = None;
    for (name, tensor) in read_state_dict(path)? {
        match official_name(&name) {
            "out_tr.final_conv.weight" => n_class = tensor.size().first().copied(),
            n if n == first => base_width = tensor.size().first().copied(),
            _ => {}
        }
    }
    Ok((n_class, base_width))
}

fn run(args: Args) -> anyhow::Result<()> {
    let device = parse_device(&args.device)?;
    let (file_n_class, file_base_width) = widths_from_weights(&args.weights, args.arch)?;
    let default = match args.arch {
        Arch::UNet3d => ModelConfig::default(),
        Arch::VNet => ModelConfig::vnet_paper(),
    };
    let config = ModelConfig {
        arch: args.arch,
        n_class: args.n_class.or(file_n_class).unwrap_or(default.n_class),
        base_width: args
            .base_width
            .or(file_base_width)
            .unwrap_or(default.base_width),
        batch_norm: args.bn,
        ..default
    };

    let mut vs = nn::VarStore::new(device);
    let model = genesis_models::SegmentationModel::new(&vs.root(), &config)?;
    let report =
        genesis_models::load_weights(&mut vs, &args.weights, genesis_models::InitScope::Whole)?;
    report.ensure_complete()?;
    eprintln!("{report}");

    let volumes = Tensor::read_npy(&args.input)
        .with_context(|| format!("reading {}", args.input.display()))?;
    if !matches!(volumes.kind(), Kind::Float | Kind::Double) {
        bail!(
            "{}: expected f32 or f64 data, got {:?}",
            args.input.display(),
            volumes.kind()
        );
    }
    let volumes = match volumes.dim() {
        4 => volumes.unsqueeze(1),
        5 => volumes,
        n => bail!(
            "{}: expected (N, 1, D1, D2, D3) or (N, D1, D2, D3), got {n} axes {:?}",
            args.input.display(),
            volumes.size()
        ),
    };
    let volumes = volumes.to_kind(Kind::Float).to_device(device);
    eprintln!(
        "{} {:?} on {device:?}: {} volume(s) of {:?}",
        config.arch,
        config.batch_norm,
        volumes.size()[0],
        &volumes.size()[2..]
    );
    let started = std::time::Instant::now();
    let probabilities = tch::no_grad(|| model.try_forward_t(&volumes, false))?;
    let probabilities = probabilities
        .to_device(tch::Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous();
    eprintln!("forward pass: {:.2} s", started.elapsed().as_secs_f64());
    probabilities
        .write_npy(&args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;
    eprintln!("wrote {} {:?}", args.output.display(), probabilities.size());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    run(Args::parse())
}
