//! Converts PyTorch weights to our native safetensors format.
//!
//! ```text
//! cargo run --release -p genesis-models --example convert-weights -- IN OUT.safetensors
//! ```
//!
//! IN is any format `genesis_models::read_state_dict` reads: a torch.save
//! checkpoint in the zip or the legacy format (a state dict, or a training
//! checkpoint holding one under `state_dict`), or safetensors. Names lose
//! DataParallel's `module.` prefix (and the official `TargetNet`'s
//! `base_model.`), so the result loads into `UNet3d` directly and into the
//! official PyTorch network with `load_state_dict(strict=True)`. Every
//! converted name is listed with its shape and element type.

use std::path::PathBuf;

use anyhow::bail;
use clap::Parser;
use genesis_models::{official_name, read_state_dict, write_state_dict};

#[derive(Debug, Parser)]
#[command(about = "Convert a PyTorch checkpoint to safetensors with the official names")]
struct Args {
    /// The checkpoint to read.
    input: PathBuf,
    /// The safetensors file to write.
    output: PathBuf,
}

fn run(args: Args) -> anyhow::Result<()> {
    let tensors = read_state_dict(&args.input)?;
    let mut renamed = Vec::with_capacity(tensors.len());
    let mut n_stripped = 0;
    for (name, tensor) in tensors {
        let official = official_name(&name).to_string();
        if official != name {
            n_stripped += 1;
        }
        println!("{official:<48} {:?} {:?}", tensor.size(), tensor.kind());
        renamed.push((official, tensor));
    }
    let mut names: Vec<&str> = renamed.iter().map(|(name, _)| name.as_str()).collect();
    names.sort_unstable();
    if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
        bail!(
            "{}: two entries become `{}` without their prefix",
            args.input.display(),
            pair[0]
        );
    }
    let n_values: i64 = renamed.iter().map(|(_, t)| t.numel() as i64).sum();
    write_state_dict(&renamed, &args.output)?;
    println!(
        "loaded {} tensors ({n_values} values) from {}; dropped a prefix from {n_stripped} names; wrote {}",
        renamed.len(),
        args.input.display(),
        args.output.display()
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    run(Args::parse())
}
