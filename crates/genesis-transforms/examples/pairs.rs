//! Makes Models Genesis (input, target) pairs from a stack of cubes.
//!
//! ```text
//! cargo run --release -p genesis-transforms --example pairs -- IN.npy OUT_PREFIX --seed N \
//!     [--only flip|local-shuffle|nonlinear|inpaint|outpaint|none] [--threads T] [--epoch E]
//! ```
//!
//! Reads a (N, rows, cols, deps) f32 or f64 stack (a singleton channel axis, (N, 1, rows,
//! cols, deps), is accepted too), writes `OUT_PREFIX_x.npy` (inputs) and
//! `OUT_PREFIX_y.npy` (targets) as f32 with the same shape, and prints pairs per second.
//! Without `--only` the paper's configuration is used; `--only X` applies X alone and
//! always (no flips unless X is flip).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use genesis_io::{NpyDtype, read_npy, write_npy};
use genesis_transforms::{Kernel, TransformConfig, generate_pairs};
use ndarray::{ArrayViewD, IxDyn};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Only {
    Flip,
    LocalShuffle,
    Nonlinear,
    Inpaint,
    Outpaint,
    None,
}

impl From<Only> for Kernel {
    fn from(only: Only) -> Self {
        match only {
            Only::Flip => Kernel::Flip,
            Only::LocalShuffle => Kernel::LocalShuffle,
            Only::Nonlinear => Kernel::NonLinear,
            Only::Inpaint => Kernel::InPaint,
            Only::Outpaint => Kernel::OutPaint,
            Only::None => Kernel::None,
        }
    }
}

#[derive(Debug, Parser)]
#[command(about = "Make Models Genesis (input, target) pairs from a .npy stack of cubes")]
struct Args {
    /// Input stack, (N, rows, cols, deps) f32 or f64, values in [0, 1].
    input: PathBuf,
    /// Output prefix: writes PREFIX_x.npy (inputs) and PREFIX_y.npy (targets).
    out_prefix: String,
    /// Seed of the run; every cube's stream derives from (seed, epoch, cube index).
    #[arg(long)]
    seed: u64,
    /// Epoch number in the stream derivation.
    #[arg(long, default_value_t = 0)]
    epoch: u64,
    /// Apply only this transform, always (probability 1).
    #[arg(long, value_enum)]
    only: Option<Only>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    run(Args::parse())
}

fn run(args: Args) -> anyhow::Result<()> {
    let stack =
        read_npy(&args.input).with_context(|| format!("reading {}", args.input.display()))?;
    let shape = stack.shape().to_vec();
    let cube_shape = match shape.as_slice() {
        [_, rows, cols, deps] | [_, 1, rows, cols, deps] => [*rows, *cols, *deps],
        other => bail!(
            "{}: expected a (N, rows, cols, deps) stack, found shape {other:?}",
            args.input.display()
        ),
    };
    let n_cubes = shape[0];
    let cubes = stack.as_standard_layout();
    let cubes = cubes
        .as_slice()
        .with_context(|| format!("{}: stack is not contiguous", args.input.display()))?;
    let config = args.only.map_or_else(TransformConfig::paper, |only| {
        TransformConfig::only(only.into())
    });
    let mut inputs = vec![0f32; cubes.len()];
    let mut targets = vec![0f32; cubes.len()];
    let threads = args.threads.unwrap_or(0); // 0 = rayon's default, all cores
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .context("building the thread pool")?;
    let start = Instant::now();
    pool.install(|| {
        generate_pairs(
            cubes,
            cube_shape,
            &mut inputs,
            &mut targets,
            &config,
            args.seed,
            args.epoch,
            0,
        )
    })
    .context("generating pairs")?;
    let seconds = start.elapsed().as_secs_f64();
    for (suffix, data) in [("x", &inputs), ("y", &targets)] {
        let path = PathBuf::from(format!("{}_{suffix}.npy", args.out_prefix));
        let view = ArrayViewD::from_shape(IxDyn(&shape), data)?;
        write_npy(&path, view, NpyDtype::F32)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    println!(
        "{n_cubes} pairs of {cube_shape:?} in {seconds:.3} s on {} threads: {:.0} pairs/s",
        pool.current_num_threads(),
        n_cubes as f64 / seconds.max(1e-9)
    );
    Ok(())
}
