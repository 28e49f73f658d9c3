//! `cargo xtask prepare-data`: LUNA16 download, phantom dataset, cube packing, target tasks.
//!
//! One command, several modes, chosen by flags:
//!
//! - `--download [--subsets 0-9] --dir data/luna16`: fetch LUNA16 from Zenodo
//!   (resumable, MD5-verified), unzip `subsetK.zip` into `subsetK/`;
//! - `--synthetic [--scans N] [--size paper|small] --dir data/phantom`: write the
//!   offline chest-CT phantom in LUNA16's layout (see `docs/phantom.md`);
//! - default: pack self-supervised cubes from `--dir` into
//!   `--out/bat_{scale}_s_64x64x32_{subset}.npy`, one stack per subset;
//! - `--task ncc|ncs --dir … --out …`: cut labelled cubes for the target tasks;
//! - `--montage OUT.png` and `--compare-real DIR`: pictures and numbers for the docs.
//!
//! `--download` and `--synthetic` pack as well when `--out` is given.

mod download;
mod pack;
mod phantom;
mod report;
mod tasks;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

pub use phantom::PhantomSize;

/// Arguments of `cargo xtask prepare-data`.
#[derive(Debug, clap::Args)]
pub struct PrepareDataArgs {
    /// LUNA16-layout directory (subsetK/*.mhd, annotations.csv, candidates.csv): read,
    /// or written by --download and --synthetic.
    #[arg(long, default_value = "data/luna16")]
    pub dir: PathBuf,
    /// Output directory for packed cubes or a target task [default: data/generated_cubes,
    /// or data/tasks/<task> with --task].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Subsets to download, generate or pack, e.g. `0-9` or `0,2,5-6` [default: all
    /// found; 0-9 for --download and --synthetic].
    #[arg(long)]
    pub subsets: Option<String>,
    /// Seed of everything random (phantom, cube positions, task jitter).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,

    /// Download LUNA16 from Zenodo into --dir.
    #[arg(long)]
    pub download: bool,
    /// Base URL of the Zenodo instance or a mirror (record JSON at URL/api/records/ID).
    #[arg(long, default_value = "https://zenodo.org")]
    pub base_url: String,
    /// Keep subsetK.zip after unzipping.
    #[arg(long)]
    pub keep_zips: bool,
    /// Download attempts per file before giving up.
    #[arg(long, default_value_t = 6)]
    pub retries: u32,

    /// Generate the offline chest-CT phantom into --dir.
    #[arg(long)]
    pub synthetic: bool,
    /// Number of phantom scans (dealt round-robin to the subsets).
    #[arg(long, default_value_t = 10)]
    pub scans: usize,
    /// Phantom scan size.
    #[arg(long, value_enum, default_value_t = PhantomSize::Paper)]
    pub size: PhantomSize,

    /// Cubes per scan (the original's `scale`).
    #[arg(long, default_value_t = 32)]
    pub scale: usize,
    /// Cube size `ROWSxCOLSxDEPS` of packed and task cubes (the paper's 64x64x32); cut at
    /// this size, not resized. Smaller cubes make CPU demos faster.
    #[arg(long, default_value = "64x64x32", value_parser = parse_cube)]
    pub cube: [usize; 3],
    /// Element type of the packed stacks (f64 is the original's).
    #[arg(long, value_enum, default_value_t = pack::StackDtype::F32)]
    pub dtype: pack::StackDtype,

    /// Build a target task instead of packing: ncc (nodule classification) or ncs
    /// (nodule segmentation).
    #[arg(long, value_enum)]
    pub task: Option<tasks::TaskKind>,
    /// Task cubes cut per nodule (ncs) or per positive candidate (ncc), with random shifts.
    #[arg(long, default_value_t = 4)]
    pub per_nodule: usize,
    /// Negative candidates per positive cube (ncc).
    #[arg(long, default_value_t = 3)]
    pub neg_ratio: usize,

    /// Write a PNG montage of phantom slices with nodule outlines (needs --synthetic
    /// data in --dir or generates one scan in memory when --dir has none).
    #[arg(long)]
    pub montage: Option<PathBuf>,
    /// Compare the phantom with the real CTs (*.nrrd) in this directory and print a table.
    #[arg(long)]
    pub compare_real: Option<PathBuf>,
    /// With --compare-real: also write a side-by-side PNG (phantom | real).
    #[arg(long)]
    pub figure: Option<PathBuf>,
}

/// The most threads `--threads` may ask for: more than any machine has cores, few
/// enough that starting them cannot exhaust the system's thread limit.
const MAX_THREADS: usize = 1024;

/// Runs `cargo xtask prepare-data`.
pub fn run(args: &PrepareDataArgs) -> Result<()> {
    if args.threads > MAX_THREADS {
        bail!(
            "--threads must be at most {MAX_THREADS} (0: all cores), got {}",
            args.threads
        );
    }
    if args.scale == 0 {
        bail!("--scale (cubes per scan) must be at least 1");
    }
    if args.synthetic && args.scans == 0 {
        bail!("--scans (phantom scans) must be at least 1");
    }
    if args.task.is_some() && args.per_nodule == 0 {
        bail!("--per-nodule must be at least 1");
    }
    if args.threads > 0 {
        // Only the first call in a process can set the global pool; later ones keep it.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(args.threads)
            .build_global();
    }
    if args.download && args.synthetic {
        bail!("--download and --synthetic both write --dir; choose one");
    }
    if args.compare_real.is_some() || args.montage.is_some() {
        if let Some(real) = &args.compare_real {
            report::compare_real(args, real)?;
        }
        if let Some(out) = &args.montage {
            report::montage(args, out)?;
        }
        return Ok(());
    }
    let subsets = args.subsets.as_deref().map(parse_subsets).transpose()?;
    if args.download {
        let subsets = subsets.clone().unwrap_or_else(|| (0..10).collect());
        let options = download::Options {
            base_url: args.base_url.trim_end_matches('/').to_string(),
            retries: args.retries,
            backoff: std::time::Duration::from_secs(2),
            keep_zips: args.keep_zips,
            progress: true,
        };
        download::download_luna16(&args.dir, &subsets, &options)?;
        if args.out.is_none() {
            return Ok(());
        }
    }
    if args.synthetic {
        let mut config = phantom::PhantomConfig::new(args.scans, args.size, args.seed);
        if let Some(subsets) = &subsets {
            config.subsets = subsets.clone();
        }
        let started = std::time::Instant::now();
        let summary = phantom::write_dataset(&args.dir, &config)?;
        eprintln!(
            "phantom: {} scans, {} nodules, {} candidates in {} ({:.1} s)",
            summary.scans.len(),
            summary.n_nodules,
            summary.n_candidates,
            args.dir.display(),
            started.elapsed().as_secs_f64()
        );
        if args.out.is_none() {
            return Ok(());
        }
    }
    if let Some(task) = args.task {
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("data/tasks/{}", task.name())));
        let options = tasks::TaskOptions {
            kind: task,
            seed: args.seed,
            per_nodule: args.per_nodule,
            neg_ratio: args.neg_ratio,
            cube: args.cube,
        };
        return tasks::build_task(&args.dir, &out, &options);
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("data/generated_cubes"));
    let mut extract = genesis_transforms::ExtractConfig::paper();
    extract.scale = args.scale;
    let [rows, cols, deps] = args.cube;
    (extract.crop_rows, extract.crop_cols) = (rows, cols);
    (extract.input_rows, extract.input_cols, extract.input_deps) = (rows, cols, deps);
    let options = pack::PackOptions {
        extract,
        seed: args.seed,
        dtype: args.dtype,
        subsets,
    };
    let summary = pack::pack(&args.dir, &out, &options)
        .with_context(|| format!("packing {}", args.dir.display()))?;
    eprintln!(
        "packed {} cubes from {} scans into {} ({:.1} s, {:.2} scans/s)",
        summary.n_cubes,
        summary.n_scans,
        out.display(),
        summary.seconds,
        summary.n_scans as f64 / summary.seconds.max(1e-9)
    );
    Ok(())
}

/// Parses a cube size `ROWSxCOLSxDEPS` or `ROWS,COLS,DEPS` (each at least 8).
pub fn parse_cube(text: &str) -> Result<[usize; 3]> {
    let parts: Vec<&str> = text.split(['x', 'X', ',']).collect();
    let sizes = parts
        .iter()
        .map(|p| p.trim().parse::<usize>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .ok()
        .filter(|v| v.len() == 3 && v.iter().all(|&n| n >= 8));
    match sizes {
        Some(v) => Ok([v[0], v[1], v[2]]),
        None => bail!("cube size `{text}` is not ROWSxCOLSxDEPS with each size at least 8"),
    }
}

/// Parses `0-9`, `3`, or `0,2,5-6` into a sorted list without duplicates.
pub fn parse_subsets(text: &str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let parse = |s: &str| -> Result<usize> {
            s.trim()
                .parse()
                .with_context(|| format!("bad subset number {s:?} in --subsets {text:?}"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (parse(a)?, parse(b)?);
                if a > b {
                    bail!("bad range {part:?} in --subsets {text:?}: start after end");
                }
                out.extend(a..=b);
            }
            None => out.push(parse(part)?),
        }
    }
    if out.is_empty() {
        bail!("--subsets {text:?} names no subset");
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_parse() {
        assert_eq!(parse_subsets("0-3").unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(parse_subsets("5, 0-1,1").unwrap(), vec![0, 1, 5]);
        assert!(parse_subsets("3-1").is_err());
        assert!(parse_subsets("x").is_err());
        assert!(parse_subsets("").is_err());
    }

    #[test]
    fn cube_sizes_parse() {
        assert_eq!(parse_cube("64x64x32").unwrap(), [64, 64, 32]);
        assert_eq!(parse_cube("32X32x16").unwrap(), [32, 32, 16]);
        assert_eq!(parse_cube("32,32,16").unwrap(), [32, 32, 16]);
        for bad in ["64x64", "64x64x4", "ax64x32", "64x64x32x1", ""] {
            assert!(parse_cube(bad).is_err(), "{bad}");
        }
    }
}
