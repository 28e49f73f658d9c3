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
//!
//! The stack is memory-mapped and goes through in chunks of at most 64 MiB, so a stack
//! larger than memory works too; every cube's stream still comes from (seed, epoch, cube
//! index), so the pairs are the same as from one call over the whole stack. The outputs
//! are written to temporary files and renamed when complete. A cube with a NaN or an
//! infinite value stops the run with an error naming the cube and the voxel; values
//! outside [0, 1] only draw a warning (the transforms are meant for cubes scaled to
//! [0, 1], and the non-linear map clamps values outside it).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use genesis_io::{NpyDtype, NpyStack, NpyStackWriter};
use genesis_transforms::{Kernel, TransformConfig, generate_pairs};

/// Largest chunk of the stack held in memory at once, per buffer (cubes, inputs,
/// targets).
const CHUNK_BYTES: usize = 64 << 20;

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

/// What a run did, for the summary line.
#[derive(Debug)]
struct Report {
    n_cubes: usize,
    cube_shape: [usize; 3],
    threads: usize,
    /// Time spent in `generate_pairs` alone.
    generating: Duration,
    /// The whole run, reading and writing included.
    total: Duration,
    outputs: [PathBuf; 2],
    values: ValueRange,
}

fn main() -> anyhow::Result<()> {
    let report = run(&Args::parse(), CHUNK_BYTES)?;
    if let Some(warning) = report.values.warning() {
        eprintln!("warning: {warning}");
    }
    for path in &report.outputs {
        println!("wrote {}", path.display());
    }
    let seconds = report.generating.as_secs_f64();
    println!(
        "{} pairs of {:?} in {seconds:.3} s on {} thread{}: {:.0} pairs/s (pair generation \
         alone; the whole run, reading and writing included, took {:.3} s)",
        report.n_cubes,
        report.cube_shape,
        report.threads,
        if report.threads == 1 { "" } else { "s" },
        report.n_cubes as f64 / seconds.max(1e-9),
        report.total.as_secs_f64(),
    );
    Ok(())
}

/// Reads the stack chunk by chunk (at most `chunk_bytes` of f32 cubes at a time), makes
/// the pairs and streams them to the two outputs.
fn run(args: &Args, chunk_bytes: usize) -> anyhow::Result<Report> {
    let started = Instant::now();
    let input = args.input.as_path();
    let stack = NpyStack::open(input).with_context(|| format!("reading {}", input.display()))?;
    check_dtype(input, stack.dtype())?;
    let item_shape = stack.item_shape().to_vec();
    let cube_shape = match item_shape.as_slice() {
        [rows, cols, deps] | [1, rows, cols, deps] => [*rows, *cols, *deps],
        _ => {
            let mut shape = vec![stack.len()];
            shape.extend_from_slice(&item_shape);
            bail!(
                "{}: expected a (N, rows, cols, deps) stack, found shape {shape:?}",
                input.display()
            )
        }
    };
    let cube_len: usize = cube_shape.iter().product();
    if cube_len == 0 {
        bail!(
            "{}: cubes of shape {cube_shape:?} hold no voxels",
            input.display()
        );
    }
    let config = args.only.map_or_else(TransformConfig::paper, |only| {
        TransformConfig::only(only.into())
    });
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads.unwrap_or(0)) // 0 = rayon's default, all cores
        .build()
        .context("building the thread pool")?;
    let outputs =
        ["x", "y"].map(|suffix| PathBuf::from(format!("{}_{suffix}.npy", args.out_prefix)));
    let create = |path: &PathBuf| {
        NpyStackWriter::create(path, &item_shape, NpyDtype::F32)
            .with_context(|| format!("writing {}", path.display()))
    };
    let (mut x_writer, mut y_writer) = (create(&outputs[0])?, create(&outputs[1])?);

    let n_cubes = stack.len();
    let chunk_cubes = (chunk_bytes / (cube_len * size_of::<f32>())).clamp(1, n_cubes.max(1));
    let mut cubes = vec![0f32; chunk_cubes * cube_len];
    let mut inputs = vec![0f32; cubes.len()];
    let mut targets = vec![0f32; cubes.len()];
    let mut values = ValueRange::default();
    let mut generating = Duration::ZERO;
    for first in (0..n_cubes).step_by(chunk_cubes) {
        let count = chunk_cubes.min(n_cubes - first);
        let len = count * cube_len;
        for (offset, cube) in cubes[..len].chunks_exact_mut(cube_len).enumerate() {
            stack
                .read_item_into(first + offset, cube)
                .with_context(|| format!("reading {}", input.display()))?;
            values
                .add(cube, cube_shape)
                .map_err(|voxel| voxel.error(input, first + offset))?;
        }
        let start = Instant::now();
        pool.install(|| {
            generate_pairs(
                &cubes[..len],
                cube_shape,
                &mut inputs[..len],
                &mut targets[..len],
                &config,
                args.seed,
                args.epoch,
                first as u64,
            )
        })
        .with_context(|| format!("generating pairs from {}", input.display()))?;
        generating += start.elapsed();
        for (writer, data, path) in [
            (&mut x_writer, &inputs, &outputs[0]),
            (&mut y_writer, &targets, &outputs[1]),
        ] {
            for pair in data[..len].chunks_exact(cube_len) {
                writer
                    .append(pair)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    for (writer, path) in [(x_writer, &outputs[0]), (y_writer, &outputs[1])] {
        writer
            .finish()
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(Report {
        n_cubes,
        cube_shape,
        threads: pool.current_num_threads(),
        generating,
        total: started.elapsed(),
        outputs,
        values,
    })
}

/// Pairs are made from floating-point cubes scaled to [0, 1]; integer stacks (CT in HU,
/// 8-bit images, masks) would pass through the conversion to f32 unscaled.
fn check_dtype(path: &Path, dtype: NpyDtype) -> anyhow::Result<()> {
    let name = match dtype {
        NpyDtype::F32 | NpyDtype::F64 => return Ok(()),
        NpyDtype::I16 => "int16",
        NpyDtype::U8 => "uint8",
        NpyDtype::Bool => "bool",
    };
    bail!(
        "{}: values are {name}; pairs are made from float32 or float64 cubes scaled to [0, 1] \
         (for CT in HU: clip to [-1000, 1000], then (HU + 1000) / 2000, as \
         genesis_io::HuWindow does)",
        path.display()
    )
}

/// The range of the values seen so far, and how many lie outside [0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
struct ValueRange {
    n_values: usize,
    outside_unit: usize,
    min: f32,
    max: f32,
}

impl Default for ValueRange {
    fn default() -> Self {
        Self {
            n_values: 0,
            outside_unit: 0,
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
        }
    }
}

/// A NaN or infinite voxel of a cube, as (row, col, dep).
#[derive(Debug, Clone, Copy, PartialEq)]
struct NonFinite {
    value: f32,
    voxel: [usize; 3],
}

impl NonFinite {
    fn error(self, path: &Path, cube: usize) -> anyhow::Error {
        let [row, col, dep] = self.voxel;
        anyhow::anyhow!(
            "{}: cube {cube} has a non-finite value ({}) at (row, col, dep) = ({row}, {col}, {dep}); \
             pairs need finite values in [0, 1]",
            path.display(),
            self.value
        )
    }
}

impl ValueRange {
    /// Adds one cube's values, or names its first NaN or infinite voxel.
    fn add(&mut self, cube: &[f32], shape: [usize; 3]) -> Result<(), NonFinite> {
        for (index, &value) in cube.iter().enumerate() {
            if !value.is_finite() {
                let [_, cols, deps] = shape;
                return Err(NonFinite {
                    value,
                    voxel: [index / (cols * deps), index / deps % cols, index % deps],
                });
            }
            self.min = self.min.min(value);
            self.max = self.max.max(value);
            self.outside_unit += usize::from(!(0.0..=1.0).contains(&value));
        }
        self.n_values += cube.len();
        Ok(())
    }

    /// A warning when some values lie outside [0, 1].
    fn warning(&self) -> Option<String> {
        (self.outside_unit > 0).then(|| {
            format!(
                "{} of {} values lie outside [0, 1] (min {}, max {}); the transforms are meant \
                 for cubes scaled to [0, 1], and the non-linear map clamps values outside it",
                self.outside_unit, self.n_values, self.min, self.max
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use genesis_io::{read_npy, write_npy};
    use ndarray::{ArrayD, IxDyn};

    /// Cubes just large enough for every kernel of the paper's configuration.
    const SHAPE: [usize; 3] = [16, 16, 14];
    const LEN: usize = SHAPE[0] * SHAPE[1] * SHAPE[2];

    fn cubes(n: usize) -> Vec<f32> {
        (0..n * LEN)
            .map(|i| ((i * 2_654_435_761) % 1000) as f32 / 1000.0)
            .collect()
    }

    fn args(input: &Path, out_prefix: &Path, seed: u64) -> Args {
        Args {
            input: input.to_path_buf(),
            out_prefix: out_prefix.display().to_string(),
            seed,
            epoch: 3,
            only: None,
            threads: Some(2),
        }
    }

    fn save(path: &Path, shape: &[usize], values: Vec<f32>, dtype: NpyDtype) {
        let array = ArrayD::from_shape_vec(IxDyn(shape), values).unwrap();
        write_npy(path, array.view(), dtype).unwrap();
    }

    #[test]
    fn chunked_pairs_equal_one_call_over_the_stack() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("cubes.npy");
        let n = 5;
        let values = cubes(n);
        save(
            &input,
            &[n, 1, SHAPE[0], SHAPE[1], SHAPE[2]],
            values.clone(),
            NpyDtype::F64,
        );
        // Two cubes per chunk: chunks of 2, 2 and 1.
        let report = run(&args(&input, &dir.path().join("out"), 11), 2 * LEN * 4).unwrap();
        assert_eq!(report.n_cubes, n);
        assert_eq!(report.values.outside_unit, 0);

        // f64 on disk is read as f32, so the expected pairs start from the same values.
        let values: Vec<f32> = values.iter().map(|&v| f64::from(v) as f32).collect();
        let (mut inputs, mut targets) = (vec![0f32; values.len()], vec![0f32; values.len()]);
        let config = TransformConfig::paper();
        generate_pairs(&values, SHAPE, &mut inputs, &mut targets, &config, 11, 3, 0).unwrap();
        for (path, expected) in report.outputs.iter().zip([inputs, targets]) {
            let written = read_npy(path).unwrap();
            assert_eq!(written.shape(), &[n, 1, SHAPE[0], SHAPE[1], SHAPE[2]]);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(
                bits(written.as_slice().unwrap()) == bits(&expected),
                "{}",
                path.display()
            );
        }
    }

    #[test]
    fn a_nan_stops_the_run_naming_the_cube_and_voxel_and_leaves_no_output() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("cubes.npy");
        let mut values = cubes(3);
        // Cube 2, voxel (row, col, dep) = (4, 5, 6).
        values[2 * LEN + (4 * SHAPE[1] + 5) * SHAPE[2] + 6] = f32::NAN;
        save(
            &input,
            &[3, SHAPE[0], SHAPE[1], SHAPE[2]],
            values,
            NpyDtype::F32,
        );
        let out = dir.path().join("out");
        let error = run(&args(&input, &out, 1), LEN * 4)
            .unwrap_err()
            .to_string();
        assert!(error.contains("cubes.npy"), "{error}");
        assert!(
            error.contains("cube 2 has a non-finite value (NaN)"),
            "{error}"
        );
        assert!(error.contains("(row, col, dep) = (4, 5, 6)"), "{error}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "only the input remains: {left:?}");
    }

    #[test]
    fn infinite_values_are_refused_too() {
        let mut range = ValueRange::default();
        let mut cube = vec![0.5f32; LEN];
        cube[LEN - 1] = f32::NEG_INFINITY;
        let found = range.add(&cube, SHAPE).unwrap_err();
        assert_eq!(found.voxel, [15, 15, 13]);
        assert_eq!(found.value, f32::NEG_INFINITY);
    }

    #[test]
    fn integer_stacks_are_refused_with_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("hu.npy");
        save(
            &input,
            &[1, SHAPE[0], SHAPE[1], SHAPE[2]],
            vec![-1000.0; LEN],
            NpyDtype::I16,
        );
        let error = run(&args(&input, &dir.path().join("out"), 1), CHUNK_BYTES)
            .unwrap_err()
            .to_string();
        assert!(error.contains("hu.npy: values are int16"), "{error}");
        assert!(error.contains("HuWindow"), "{error}");
    }

    #[test]
    fn values_outside_the_unit_range_are_counted_for_a_warning() {
        let mut range = ValueRange::default();
        let mut cube = vec![0.25f32; LEN];
        cube[0] = -0.5;
        cube[1] = 2.0;
        cube[2] = 1.0;
        range.add(&cube, SHAPE).unwrap();
        range.add(&vec![0.5f32; LEN], SHAPE).unwrap();
        assert_eq!((range.n_values, range.outside_unit), (2 * LEN, 2));
        assert_eq!((range.min, range.max), (-0.5, 2.0));
        let warning = range.warning().unwrap();
        assert!(
            warning.starts_with(&format!(
                "2 of {} values lie outside [0, 1] (min -0.5, max 2)",
                2 * LEN
            )),
            "{warning}"
        );
        let mut inside = ValueRange::default();
        inside.add(&cube[2..], [1, 1, LEN - 2]).unwrap();
        assert_eq!(inside.warning(), None);
    }

    #[test]
    fn a_stack_of_the_wrong_rank_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("one.npy");
        save(&input, &SHAPE, cubes(1), NpyDtype::F32);
        let error = run(&args(&input, &dir.path().join("out"), 1), CHUNK_BYTES)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("expected a (N, rows, cols, deps) stack, found shape [16, 16, 14]"),
            "{error}"
        );
    }
}
