//! Packing self-supervised cubes: every scan of a LUNA16-layout subset through
//! genesis-transforms' extraction, streamed into `bat_{scale}_s_{r}x{c}x{d}_{subset}.npy`.
//!
//! Scans are processed in blocks of two per thread (rayon within a block), and each
//! block's cubes are written in scan order before the next block starts, so memory is
//! bounded by the block (one volume per thread plus `2 · threads · scale` cubes) and
//! the output does not depend on the thread count. Scan `i` (in file-name order) of
//! subset `s` draws its windows from `scan_rng(seed, s << 32 | i)`.
//!
//! `manifest.json` in the output directory records, per subset, the parameters, the
//! source scans (name and size), cube counts and the SHA-256 of the stack; a subset whose
//! stack exists and matches its manifest entry is skipped, so an interrupted run resumes.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use genesis_io::{NpyDtype, NpyStackWriter};
use genesis_transforms::{ExtractConfig, extract_cubes, scan_rng};
use ndarray::ShapeBuilder;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::phantom::write_atomic;

/// Element type of the packed stacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StackDtype {
    /// 32-bit floats (half the size; what the training crate reads fastest).
    F32,
    /// 64-bit floats, the original's element type.
    F64,
}

impl StackDtype {
    fn npy(self) -> NpyDtype {
        match self {
            StackDtype::F32 => NpyDtype::F32,
            StackDtype::F64 => NpyDtype::F64,
        }
    }
}

/// What to pack and how.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// Extraction settings (the paper's by default; `scale` from `--scale`).
    pub extract: ExtractConfig,
    /// Seed of the window positions.
    pub seed: u64,
    /// Element type of the stacks.
    pub dtype: StackDtype,
    /// Subsets to pack; `None` packs every `subsetK` directory found.
    pub subsets: Option<Vec<usize>>,
}

/// The parameters a stack depends on (compared on resume).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackParameters {
    /// Seed of the window positions.
    pub seed: u64,
    /// Element type.
    pub dtype: StackDtype,
    /// Extraction settings.
    pub extract: ExtractConfig,
}

/// One source scan in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceScan {
    /// Path relative to the input directory.
    pub name: String,
    /// Size of the header plus the data file, bytes.
    pub bytes: u64,
    /// Cubes the scan gave.
    pub n_cubes: usize,
}

/// The manifest entry of one subset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubsetEntry {
    /// Parameters used.
    pub parameters: PackParameters,
    /// Stack file name, relative to the output directory.
    pub file: String,
    /// Number of cubes in the stack.
    pub n_cubes: usize,
    /// SHA-256 of the stack file, hex.
    pub sha256: String,
    /// Source scans in processing order.
    pub scans: Vec<SourceScan>,
}

/// `manifest.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// What wrote it.
    pub tool: String,
    /// Input directory as given.
    pub source: String,
    /// Entries by subset number.
    pub subsets: BTreeMap<usize, SubsetEntry>,
}

/// What [`pack`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct PackSummary {
    /// Cubes written in this run (skipped subsets not counted).
    pub n_cubes: usize,
    /// Scans processed in this run.
    pub n_scans: usize,
    /// Subsets skipped because their stack matched the manifest.
    pub skipped: Vec<usize>,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// The stack file name for a subset, as the original loaders expect it.
pub fn stack_name(extract: &ExtractConfig, subset: usize) -> String {
    format!(
        "bat_{}_s_{}x{}x{}_{subset}.npy",
        extract.scale, extract.input_rows, extract.input_cols, extract.input_deps
    )
}

/// `subsetK` directories under `dir`, by K.
pub fn find_subsets(dir: &Path) -> Result<BTreeMap<usize, PathBuf>> {
    let mut out = BTreeMap::new();
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read directory {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read directory {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(k) = name
            .strip_prefix("subset")
            .and_then(|k| k.parse::<usize>().ok())
            && entry.path().is_dir()
        {
            out.insert(k, entry.path());
        }
    }
    Ok(out)
}

/// The `.mhd` scans of a subset directory, sorted; also one level down, as unzipping
/// `subsetK.zip` inside `subsetK/` leaves them.
pub fn find_scans(subset_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut scans = Vec::new();
    let mut dirs = vec![(subset_dir.to_path_buf(), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        let entries = std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read directory {}", dir.display()))?;
        for entry in entries {
            let path = entry
                .with_context(|| format!("cannot read directory {}", dir.display()))?
                .path();
            if path.is_dir() && depth < 2 {
                dirs.push((path, depth + 1));
            } else if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("mhd"))
            {
                scans.push(path);
            }
        }
    }
    scans.sort();
    Ok(scans)
}

/// Packs every selected subset of `dir` into `out`.
pub fn pack(dir: &Path, out: &Path, options: &PackOptions) -> Result<PackSummary> {
    let started = Instant::now();
    options
        .extract
        .validate()
        .context("invalid extraction settings")?;
    let found = find_subsets(dir)?;
    let selected: Vec<(usize, PathBuf)> = match &options.subsets {
        None => found.into_iter().collect(),
        Some(wanted) => {
            let mut selected = Vec::new();
            for k in wanted {
                match found.get(k) {
                    Some(path) => selected.push((*k, path.clone())),
                    None => bail!("{}: no subset{k} directory", dir.display()),
                }
            }
            selected
        }
    };
    if selected.is_empty() {
        bail!(
            "{}: no subsetK directories with .mhd scans (run --download or --synthetic first)",
            dir.display()
        );
    }
    genesis_io::create_dir_all(out)?;
    let manifest_path = out.join("manifest.json");
    let mut manifest = read_manifest(&manifest_path)?;
    manifest.tool = "cargo xtask prepare-data".into();
    manifest.source = dir.display().to_string();
    let parameters = PackParameters {
        seed: options.seed,
        dtype: options.dtype,
        extract: options.extract,
    };
    let mut summary = PackSummary {
        n_cubes: 0,
        n_scans: 0,
        skipped: Vec::new(),
        seconds: 0.0,
    };
    for (subset, subset_dir) in selected {
        let scans = find_scans(&subset_dir)?;
        let sources: Vec<(String, u64)> = scans
            .iter()
            .map(|p| (relative_name(dir, p), scan_bytes(p)))
            .collect();
        let file = stack_name(&options.extract, subset);
        let stack_path = out.join(&file);
        if let Some(entry) = manifest.subsets.get(&subset)
            && entry.parameters == parameters
            && entry.file == file
            && entry
                .scans
                .iter()
                .map(|s| (s.name.clone(), s.bytes))
                .eq(sources.iter().cloned())
            && stack_path.is_file()
            && sha256_file(&stack_path)? == entry.sha256
        {
            eprintln!(
                "pack: subset{subset}: {} is up to date ({} cubes), skipped",
                file, entry.n_cubes
            );
            summary.skipped.push(subset);
            continue;
        }
        let t0 = Instant::now();
        let (n_cubes, per_scan) = pack_subset(&scans, subset, &stack_path, options)?;
        let entry = SubsetEntry {
            parameters: parameters.clone(),
            file: file.clone(),
            n_cubes,
            sha256: sha256_file(&stack_path)?,
            scans: sources
                .into_iter()
                .zip(per_scan)
                .map(|((name, bytes), n_cubes)| SourceScan {
                    name,
                    bytes,
                    n_cubes,
                })
                .collect(),
        };
        manifest.subsets.insert(subset, entry);
        write_atomic(
            &manifest_path,
            serde_json::to_string_pretty(&manifest)?.as_bytes(),
        )?;
        let seconds = t0.elapsed().as_secs_f64();
        eprintln!(
            "pack: subset{subset}: {n_cubes} cubes from {} scans -> {} ({seconds:.1} s, {:.2} scans/s)",
            scans.len(),
            stack_path.display(),
            scans.len() as f64 / seconds.max(1e-9)
        );
        summary.n_cubes += n_cubes;
        summary.n_scans += scans.len();
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Extracts and writes one subset; returns the cube count and the count per scan.
fn pack_subset(
    scans: &[PathBuf],
    subset: usize,
    stack_path: &Path,
    options: &PackOptions,
) -> Result<(usize, Vec<usize>)> {
    let c = &options.extract;
    let item_shape = [c.input_rows, c.input_cols, c.input_deps];
    let mut writer = NpyStackWriter::create(stack_path, &item_shape, options.dtype.npy())
        .with_context(|| format!("cannot create {}", stack_path.display()))?;
    let block = 2 * rayon::current_num_threads().max(1);
    let mut per_scan = Vec::with_capacity(scans.len());
    let indexed: Vec<(usize, &PathBuf)> = scans.iter().enumerate().collect();
    for chunk in indexed.chunks(block) {
        let results: Vec<Result<Vec<ndarray::Array3<f32>>>> = chunk
            .par_iter()
            .map(|&(index, path)| {
                let mut rng = scan_rng(options.seed, ((subset as u64) << 32) | index as u64);
                let mut extract = |scan: ndarray::ArrayView3<'_, f32>| {
                    extract_cubes(scan, c, &mut rng)
                        .with_context(|| format!("cube extraction failed for {}", path.display()))
                };
                // Plain int16 MetaImage (all of LUNA16) takes the fast path; anything else
                // goes through genesis-io.
                SCAN_BUFFERS.with(|buffers| {
                    let (bytes, values) = &mut *buffers.borrow_mut();
                    match read_plain_i16_mhd(path, bytes, values)? {
                        Some(dims) => {
                            let view = ndarray::ArrayView3::from_shape(
                                (dims[0], dims[1], dims[2]).f(),
                                &values[..],
                            )
                            .context("scan shape")?;
                            extract(view)
                        }
                        None => {
                            let volume = genesis_io::read_volume(path)
                                .with_context(|| format!("cannot read {}", path.display()))?;
                            extract(volume.data.view())
                        }
                    }
                })
            })
            .collect();
        for result in results {
            let cubes = result?;
            for cube in &cubes {
                let standard = cube.as_standard_layout();
                let values = standard.as_slice().context("cube is not contiguous")?;
                writer
                    .append(values)
                    .with_context(|| format!("cannot write {}", stack_path.display()))?;
            }
            per_scan.push(cubes.len());
        }
    }
    let n = writer.len();
    if n == 0 {
        // Dropping the writer removes its temporary file: a stack packed earlier stays.
        let [rows, cols, deps] = item_shape;
        bail!(
            "subset{subset}: none of its {} scans gave a {rows}x{cols}x{deps} cube: each \
             scan must exceed the cube by the borders ({} voxels in x and y, {} in z) and \
             hold windows that are mostly lung; nothing was written to {}",
            scans.len(),
            c.border,
            c.border_z,
            stack_path.display()
        );
    }
    writer
        .finish()
        .with_context(|| format!("cannot finish {}", stack_path.display()))?;
    Ok((n, per_scan))
}

thread_local! {
    /// Per-thread buffers reused from scan to scan: the raw bytes and the HU values of
    /// the scan being cut. Reuse avoids faulting in ~0.3 GB of fresh pages per scan.
    static SCAN_BUFFERS: std::cell::RefCell<(Vec<u8>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Reads an uncompressed little-endian int16 MetaImage (`.mhd` + detached data file) into
/// `values` in file order (x fastest) and returns its dimensions; `Ok(None)` for anything
/// else (other types, compression, attached data, size mismatch), which the caller reads
/// with genesis-io instead. The values equal `genesis_io::read_volume`'s, seen through a
/// Fortran-order view instead of a transposed copy.
pub fn read_plain_i16_mhd(
    path: &Path,
    bytes: &mut Vec<u8>,
    values: &mut Vec<f32>,
) -> Result<Option<[usize; 3]>> {
    let header = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let Ok(text) = std::str::from_utf8(&header) else {
        return Ok(None);
    };
    let mut fields = BTreeMap::new();
    for line in text.lines() {
        if let Some((key, value)) = line.split_once('=') {
            fields.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let get = |key: &str| fields.get(key).map(String::as_str);
    let false_or_absent = |key: &str| get(key).is_none_or(|v| v.eq_ignore_ascii_case("false"));
    if get("ndims") != Some("3")
        || get("elementtype") != Some("MET_SHORT")
        || !false_or_absent("compresseddata")
        || !false_or_absent("binarydatabyteordermsb")
        || !false_or_absent("elementbyteordermsb")
        || get("headersize").is_some_and(|v| v != "0")
        || get("elementnumberofchannels").is_some_and(|v| v != "1")
    {
        return Ok(None);
    }
    let Some(data_file) =
        get("elementdatafile").filter(|f| !f.eq_ignore_ascii_case("local") && !f.contains(' '))
    else {
        return Ok(None);
    };
    let dims: Vec<usize> = get("dimsize")
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|d| d.parse().ok())
        .collect();
    let [nx, ny, nz] = dims[..] else {
        return Ok(None);
    };
    let n = nx
        .checked_mul(ny)
        .and_then(|v| v.checked_mul(nz))
        .filter(|&n| n > 0 && n as u64 <= genesis_io::MAX_VOXELS);
    let Some(n) = n else { return Ok(None) };
    let raw_path = path.parent().unwrap_or(Path::new(".")).join(data_file);
    let Ok(mut file) = std::fs::File::open(&raw_path) else {
        return Ok(None);
    };
    if file.metadata().map(|m| m.len()).ok() != Some(2 * n as u64) {
        return Ok(None);
    }
    bytes.resize(2 * n, 0);
    file.read_exact(bytes)
        .with_context(|| format!("cannot read {}", raw_path.display()))?;
    values.resize(n, 0.0);
    for (v, pair) in values.iter_mut().zip(bytes.chunks_exact(2)) {
        *v = f32::from(i16::from_le_bytes([pair[0], pair[1]]));
    }
    Ok(Some([nx, ny, nz]))
}

fn read_manifest(path: &Path) -> Result<Manifest> {
    match std::fs::read_to_string(path) {
        Ok(text) => match serde_json::from_str(&text) {
            Ok(manifest) => Ok(manifest),
            Err(err) => {
                eprintln!(
                    "warning: {}: unreadable manifest ({err}), rebuilding every subset",
                    path.display()
                );
                Ok(Manifest::default())
            }
        },
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Manifest::default()),
        Err(err) => Err(err).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn relative_name(dir: &Path, path: &Path) -> String {
    path.strip_prefix(dir)
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/")
}

/// Header size plus data size (`.raw` or `.zraw` next to it), 0 when unreadable.
fn scan_bytes(mhd: &Path) -> u64 {
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    size(mhd) + size(&mhd.with_extension("raw")) + size(&mhd.with_extension("zraw"))
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buffer)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prepare_data::phantom::{PhantomConfig, PhantomSize, write_dataset};
    use genesis_io::NpyStack;

    #[test]
    fn packs_phantom_subsets_deterministically_and_resumes() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("phantom");
        let mut config = PhantomConfig::new(2, PhantomSize::Small, 3);
        config.subsets = vec![0, 1];
        write_dataset(&data, &config).unwrap();
        let mut extract = ExtractConfig::paper();
        extract.scale = 4;
        let options = PackOptions {
            extract,
            seed: 5,
            dtype: StackDtype::F32,
            subsets: None,
        };
        let out = tmp.path().join("cubes");
        let first = pack(&data, &out, &options).unwrap();
        assert_eq!(first.n_scans, 2);
        assert!(
            first.n_cubes >= 6,
            "only {} cubes passed the lung test",
            first.n_cubes
        );
        let stack = NpyStack::open(out.join("bat_4_s_64x64x32_0.npy")).unwrap();
        assert_eq!(stack.item_shape(), &[64, 64, 32]);
        assert_eq!(stack.dtype(), NpyDtype::F32);
        let mut cube = vec![0.0; 64 * 64 * 32];
        stack.read_item_into(0, &mut cube).unwrap();
        assert!(cube.iter().all(|v| (0.0..=1.0).contains(v)));
        // Mostly lung: the windowed mean of a lung cube is far below soft tissue (0.52).
        let mean = cube.iter().sum::<f32>() / cube.len() as f32;
        assert!(mean < 0.3, "mean {mean}");
        let hash = sha256_file(&out.join("bat_4_s_64x64x32_0.npy")).unwrap();

        // A second run skips both subsets; a changed seed repacks them, identically to a
        // fresh run with that seed.
        let again = pack(&data, &out, &options).unwrap();
        assert_eq!(again.skipped, vec![0, 1]);
        let manifest: Manifest =
            serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap())
                .unwrap();
        assert_eq!(manifest.subsets[&0].sha256, hash);
        assert_eq!(manifest.subsets[&0].scans.len(), 1);

        // Settings that let no window through are an error, and the stack packed
        // before stays as it was.
        let strict = PackOptions {
            extract: ExtractConfig {
                lung_max: -1.0,
                ..options.extract
            },
            subsets: Some(vec![0]),
            ..options.clone()
        };
        let err = format!("{:#}", pack(&data, &out, &strict).unwrap_err());
        assert!(
            err.contains("subset0: none of its 1 scans gave a 64x64x32 cube"),
            "{err}"
        );
        assert_eq!(
            sha256_file(&out.join("bat_4_s_64x64x32_0.npy")).unwrap(),
            hash
        );

        let f64_options = PackOptions {
            dtype: StackDtype::F64,
            subsets: Some(vec![1]),
            ..options.clone()
        };
        let out64 = tmp.path().join("cubes64");
        pack(&data, &out64, &f64_options).unwrap();
        let stack64 = NpyStack::open(out64.join("bat_4_s_64x64x32_1.npy")).unwrap();
        assert_eq!(stack64.dtype(), NpyDtype::F64);
        let stack32 = NpyStack::open(out.join("bat_4_s_64x64x32_1.npy")).unwrap();
        assert_eq!(stack64.len(), stack32.len());
        let (mut a, mut b) = (vec![0.0; cube.len()], vec![0.0; cube.len()]);
        stack64.read_item_into(0, &mut a).unwrap();
        stack32.read_item_into(0, &mut b).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn fast_reader_matches_genesis_io() {
        let tmp = tempfile::tempdir().unwrap();
        let scan = crate::prepare_data::phantom::generate_scan(
            &PhantomConfig::new(1, PhantomSize::Small, 9),
            0,
        )
        .unwrap();
        let path = tmp.path().join("scan.mhd");
        genesis_io::write_volume(&path, &scan.volume).unwrap();
        let (mut bytes, mut values) = (Vec::new(), Vec::new());
        let dims = read_plain_i16_mhd(&path, &mut bytes, &mut values)
            .unwrap()
            .unwrap();
        let fast =
            ndarray::ArrayView3::from_shape((dims[0], dims[1], dims[2]).f(), &values[..]).unwrap();
        let reference = genesis_io::read_volume(&path).unwrap();
        assert_eq!(fast, reference.data.view());
        let config = ExtractConfig {
            scale: 4,
            ..ExtractConfig::paper()
        };
        let a = extract_cubes(fast, &config, &mut scan_rng(1, 2)).unwrap();
        let b = extract_cubes(reference.data.view(), &config, &mut scan_rng(1, 2)).unwrap();
        assert_eq!(a, b);
        // Not plain int16: the caller falls back to genesis-io.
        let mut float = scan.volume.clone();
        float.element_type = genesis_io::ElementType::F32;
        genesis_io::write_volume(tmp.path().join("f.mhd"), &float).unwrap();
        assert!(
            read_plain_i16_mhd(&tmp.path().join("f.mhd"), &mut bytes, &mut values)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn missing_input_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let options = PackOptions {
            extract: ExtractConfig::paper(),
            seed: 1,
            dtype: StackDtype::F32,
            subsets: None,
        };
        let err = pack(tmp.path(), &tmp.path().join("out"), &options).unwrap_err();
        assert!(format!("{err:#}").contains("no subsetK"), "{err:#}");
    }
}
