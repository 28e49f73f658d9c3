//! Target tasks cut from LUNA16-layout data (real or phantom).
//!
//! - NCS (nodule segmentation): 64×64×32 cubes (or `--cube`) around annotated nodules,
//!   `x_{split}_64x64x32.npy` (f32, CT window [-1000, 1000] → [0, 1]) and voxel masks
//!   `m_{split}_64x64x32.npy` (u8; every annotated nodule rasterised as a sphere of
//!   its `diameter_mm` in world space);
//! - NCC (nodule classification): 64×64×32 cubes around candidates, `x_{split}_…npy`
//!   and labels `y_{split}.npy` (u8, 1 = nodule), positives cut `per_nodule` times
//!   with shifts, `neg_ratio` negatives per positive cube.
//!
//! Splits follow LUNA16's folds: subsets 0–4 train, 5–6 validation, 7–9 test. When
//! that leaves a split without scans (a small phantom), the scans that carry items are
//! dealt instead in (subset, uid) order: the last fifth to test, the fifth before it to
//! validation, the rest to training. `index_{split}.csv` lists every cube's source.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use genesis_io::{HuWindow, NpyDtype, NpyStackWriter, Volume};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::pack::{find_scans, find_subsets};
use super::phantom::{mix, write_atomic};

/// Which target task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TaskKind {
    /// Nodule false-positive reduction (classification of candidates).
    Ncc,
    /// Nodule segmentation (cubes with voxel masks).
    Ncs,
}

impl TaskKind {
    /// `ncc` or `ncs`.
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Ncc => "ncc",
            TaskKind::Ncs => "ncs",
        }
    }
}

/// Task-building options.
#[derive(Debug, Clone)]
pub struct TaskOptions {
    /// Which task.
    pub kind: TaskKind,
    /// Seed of shifts and negative sampling.
    pub seed: u64,
    /// Cubes per nodule / positive candidate (the first centred, the rest shifted).
    pub per_nodule: usize,
    /// NCC: negatives per positive cube.
    pub neg_ratio: usize,
    /// Cube size (rows, cols, deps); the paper's is 64×64×32.
    pub cube: [usize; 3],
}

/// The three splits, in writing order.
pub const SPLITS: [&str; 3] = ["train", "valid", "test"];

/// A labelled point: world centre, diameter (0 when unknown) and class.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// World mm.
    pub center: [f64; 3],
    /// Nodule diameter in mm (annotations), 0 for candidates.
    pub diameter_mm: f64,
    /// 1 for a nodule.
    pub class: u8,
}

/// Reads a LUNA16 CSV (`annotations.csv` or `candidates.csv`) into points by series UID.
pub fn read_points(path: &Path, annotations: bool) -> Result<BTreeMap<String, Vec<Point>>> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("cannot open {}", path.display()))?;
    let headers = reader
        .headers()
        .with_context(|| format!("{}: no header", path.display()))?
        .clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .with_context(|| format!("{}: no column {name}", path.display()))
    };
    let uid_col = column("seriesuid")?;
    let xyz = [column("coordX")?, column("coordY")?, column("coordZ")?];
    let last = if annotations {
        column("diameter_mm")?
    } else {
        column("class")?
    };
    let mut out: BTreeMap<String, Vec<Point>> = BTreeMap::new();
    for (line, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("{}: bad row {}", path.display(), line + 2))?;
        let field = |i: usize| -> Result<f64> {
            let text = record.get(i).unwrap_or("").trim();
            text.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .with_context(|| {
                    format!(
                        "{}: row {}: {text:?} is not a number",
                        path.display(),
                        line + 2
                    )
                })
        };
        let center = [field(xyz[0])?, field(xyz[1])?, field(xyz[2])?];
        let value = field(last)?;
        let point = if annotations {
            Point {
                center,
                diameter_mm: value,
                class: 1,
            }
        } else {
            Point {
                center,
                diameter_mm: 0.0,
                class: u8::from(value > 0.5),
            }
        };
        let uid = record.get(uid_col).unwrap_or("").trim().to_string();
        out.entry(uid).or_default().push(point);
    }
    Ok(out)
}

/// Finds a CSV at the root of a LUNA16 tree or in `CSVFILES/`.
fn find_csv(dir: &Path, name: &str) -> Result<PathBuf> {
    for path in [dir.join(name), dir.join("CSVFILES").join(name)] {
        if path.is_file() {
            return Ok(path);
        }
    }
    bail!(
        "{}: no {name} (looked in the directory and in CSVFILES/)",
        dir.display()
    )
}

/// Where a scan lives.
#[derive(Debug, Clone)]
struct ScanRef {
    uid: String,
    subset: usize,
    path: PathBuf,
}

/// Splits scans with items into train/valid/test (see the module docs).
fn split_scans(scans: &[ScanRef]) -> Result<[Vec<ScanRef>; 3]> {
    let by_fold = |s: &ScanRef| match s.subset {
        0..=4 => 0,
        5 | 6 => 1,
        _ => 2,
    };
    let mut splits: [Vec<ScanRef>; 3] = Default::default();
    for s in scans {
        splits[by_fold(s)].push(s.clone());
    }
    if splits.iter().all(|s| !s.is_empty()) {
        return Ok(splits);
    }
    let n = scans.len();
    if n < 3 {
        bail!(
            "only {n} scans with items: need at least 3 to make train, validation and test splits"
        );
    }
    let n_test = ((n as f64) * 0.2).round().max(1.0) as usize;
    let n_valid = ((n as f64) * 0.2).round().max(1.0) as usize;
    let n_train = n - n_test - n_valid;
    eprintln!(
        "task: LUNA16 folds leave a split empty; dealing {n} scans instead: {n_train} train, {n_valid} valid, {n_test} test"
    );
    Ok([
        scans[..n_train].to_vec(),
        scans[n_train..n_train + n_valid].to_vec(),
        scans[n_train + n_valid..].to_vec(),
    ])
}

/// Builds the task from `dir` into `out`.
pub fn build_task(dir: &Path, out: &Path, options: &TaskOptions) -> Result<()> {
    let mut index = BTreeMap::new();
    for (subset, subset_dir) in find_subsets(dir)? {
        for path in find_scans(&subset_dir)? {
            let uid = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            index.insert(uid.clone(), ScanRef { uid, subset, path });
        }
    }
    if index.is_empty() {
        bail!("{}: no subsetK/*.mhd scans", dir.display());
    }
    let annotations = read_points(&find_csv(dir, "annotations.csv")?, true)?;
    let items = match options.kind {
        TaskKind::Ncs => annotations.clone(),
        TaskKind::Ncc => read_points(&find_csv(dir, "candidates.csv")?, false)?,
    };
    let mut scans: Vec<ScanRef> = index
        .values()
        .filter(|s| {
            items
                .get(&s.uid)
                .is_some_and(|points| points.iter().any(|p| p.class == 1))
        })
        .cloned()
        .collect();
    scans.sort_by(|a, b| (a.subset, &a.uid).cmp(&(b.subset, &b.uid)));
    let splits = split_scans(&scans)?;
    genesis_io::create_dir_all(out)?;
    let mut counts = serde_json::Map::new();
    let cube = options.cube;
    let [sx, sy, sz] = cube;
    for (split, split_scans) in SPLITS.iter().zip(&splits) {
        let x_path = out.join(format!("x_{split}_{sx}x{sy}x{sz}.npy"));
        let mut x_writer = NpyStackWriter::create(&x_path, &cube, NpyDtype::F32)?;
        let mut m_writer = match options.kind {
            TaskKind::Ncs => Some(NpyStackWriter::create(
                out.join(format!("m_{split}_{sx}x{sy}x{sz}.npy")),
                &cube,
                NpyDtype::U8,
            )?),
            TaskKind::Ncc => None,
        };
        let mut labels: Vec<f32> = Vec::new();
        let mut listing =
            String::from("seriesuid,coordX,coordY,coordZ,class,corner_x,corner_y,corner_z\n");
        for scan in split_scans {
            let mut volume = genesis_io::read_volume(&scan.path)
                .with_context(|| format!("cannot read {}", scan.path.display()))?;
            let nodules = annotations.get(&scan.uid).cloned().unwrap_or_default();
            let points = items.get(&scan.uid).cloned().unwrap_or_default();
            let mask_nodules = nodules.clone();
            volume.normalize(HuWindow::CT);
            let mut rng = ChaCha8Rng::seed_from_u64(mix(options.seed ^ mix(hash_str(&scan.uid))));
            let mut jobs: Vec<(Point, bool)> = Vec::new();
            let positives: Vec<Point> = points.iter().copied().filter(|p| p.class == 1).collect();
            for p in &positives {
                for copy in 0..options.per_nodule {
                    jobs.push((*p, copy > 0));
                }
            }
            if options.kind == TaskKind::Ncc {
                let mut negatives: Vec<Point> =
                    points.iter().copied().filter(|p| p.class == 0).collect();
                negatives.shuffle(&mut rng);
                negatives.truncate(positives.len() * options.per_nodule * options.neg_ratio);
                jobs.extend(negatives.into_iter().map(|p| (p, false)));
            }
            for (point, shifted) in jobs {
                let corner = cube_corner(&volume, &point, cube, shifted, &mut rng)?;
                let values = cut(&volume, corner, cube);
                x_writer.append(&values)?;
                if let Some(m) = m_writer.as_mut() {
                    m.append(&sphere_mask(&volume, corner, cube, &mask_nodules))?;
                }
                labels.push(f32::from(point.class));
                let [x, y, z] = point.center;
                let _ = writeln!(
                    listing,
                    "{},{x:.4},{y:.4},{z:.4},{},{},{},{}",
                    scan.uid, point.class, corner[0], corner[1], corner[2]
                );
            }
        }
        let n = x_writer.len();
        x_writer.finish()?;
        if let Some(m) = m_writer {
            m.finish()?;
        }
        if options.kind == TaskKind::Ncc {
            let y = ndarray::Array1::from(labels.clone()).into_dyn();
            genesis_io::write_npy(out.join(format!("y_{split}.npy")), y.view(), NpyDtype::U8)?;
        }
        write_atomic(&out.join(format!("index_{split}.csv")), listing.as_bytes())?;
        let positives = labels.iter().filter(|&&l| l > 0.5).count();
        eprintln!(
            "task {}: {split}: {n} cubes ({positives} positive) from {} scans",
            options.kind.name(),
            split_scans.len()
        );
        counts.insert(
            split.to_string(),
            serde_json::json!({"cubes": n, "positive": positives, "scans": split_scans.iter().map(|s| &s.uid).collect::<Vec<_>>()}),
        );
    }
    let info = serde_json::json!({
        "task": options.kind.name(),
        "source": dir.display().to_string(),
        "seed": options.seed,
        "per_nodule": options.per_nodule,
        "neg_ratio": options.neg_ratio,
        "cube": cube,
        "splits": counts,
    });
    write_atomic(
        &out.join("task.json"),
        serde_json::to_string_pretty(&info)?.as_bytes(),
    )
}

fn hash_str(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The corner voxel of a task cube around `point`: centred, or shifted at random so the
/// nodule stays inside; clamped into the volume.
pub fn cube_corner(
    volume: &Volume,
    point: &Point,
    cube: [usize; 3],
    shifted: bool,
    rng: &mut ChaCha8Rng,
) -> Result<[usize; 3]> {
    let shape = volume.shape();
    let centre = volume.world_to_voxel(point.center);
    let mut corner = [0usize; 3];
    for a in 0..3 {
        if shape[a] < cube[a] {
            bail!("scan shape {shape:?} is smaller than the task cube {cube:?}");
        }
        let radius = point.diameter_mm / 2.0 / volume.spacing[a];
        let room = (cube[a] as f64 / 2.0 - radius - 2.0).clamp(0.0, cube[a] as f64 / 4.0);
        let shift = if shifted && room >= 1.0 {
            rng.gen_range(-room..=room)
        } else {
            0.0
        };
        let start = (centre[a] + shift - cube[a] as f64 / 2.0).round();
        corner[a] = start.clamp(0.0, (shape[a] - cube[a]) as f64) as usize;
    }
    Ok(corner)
}

/// The task cube at `corner`, C order (x, y, z).
fn cut(volume: &Volume, corner: [usize; 3], cube: [usize; 3]) -> Vec<f32> {
    let [cx, cy, cz] = corner;
    let [sx, sy, sz] = cube;
    volume
        .data
        .slice(ndarray::s![cx..cx + sx, cy..cy + sy, cz..cz + sz])
        .iter()
        .copied()
        .collect()
}

/// 1 inside any nodule sphere (world space), 0 elsewhere, over the cube at `corner`.
pub fn sphere_mask(
    volume: &Volume,
    corner: [usize; 3],
    cube: [usize; 3],
    nodules: &[Point],
) -> Vec<f32> {
    let [sx, sy, sz] = cube;
    let mut mask = vec![0.0f32; sx * sy * sz];
    for i in 0..sx {
        for j in 0..sy {
            for k in 0..sz {
                let w = volume.voxel_to_world([
                    (corner[0] + i) as f64,
                    (corner[1] + j) as f64,
                    (corner[2] + k) as f64,
                ]);
                let inside = nodules.iter().any(|n| {
                    let d2: f64 = (0..3).map(|a| (w[a] - n.center[a]).powi(2)).sum();
                    d2 <= (n.diameter_mm / 2.0).powi(2)
                });
                if inside {
                    mask[(i * sy + j) * sz + k] = 1.0;
                }
            }
        }
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paper's cube shape of both tasks (x, y, z).
    const TASK_CUBE: [usize; 3] = [64, 64, 32];
    use crate::prepare_data::phantom::{PhantomConfig, PhantomSize, write_dataset};
    use genesis_io::NpyStack;

    #[test]
    fn ncs_and_ncc_from_the_phantom() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("phantom");
        let mut config = PhantomConfig::new(3, PhantomSize::Small, 11);
        config.subsets = vec![0, 1, 2];
        config.nodules_per_scan = (1, 2);
        write_dataset(&data, &config).unwrap();

        let ncs = tmp.path().join("ncs");
        let options = TaskOptions {
            kind: TaskKind::Ncs,
            seed: 1,
            per_nodule: 2,
            neg_ratio: 2,
            cube: TASK_CUBE,
        };
        build_task(&data, &ncs, &options).unwrap();
        let mut total = 0;
        for split in SPLITS {
            let x = NpyStack::open(ncs.join(format!("x_{split}_64x64x32.npy"))).unwrap();
            let m = NpyStack::open(ncs.join(format!("m_{split}_64x64x32.npy"))).unwrap();
            assert_eq!(x.len(), m.len());
            assert!(!x.is_empty(), "{split} is empty");
            assert_eq!(x.item_shape(), &[64, 64, 32]);
            assert_eq!(m.dtype(), NpyDtype::U8);
            let (mut image, mut mask) = (vec![0.0; 64 * 64 * 32], vec![0.0; 64 * 64 * 32]);
            for i in 0..x.len() {
                x.read_item_into(i, &mut image).unwrap();
                m.read_item_into(i, &mut mask).unwrap();
                let inside: Vec<f32> = image
                    .iter()
                    .zip(&mask)
                    .filter(|&(_, &m)| m > 0.5)
                    .map(|(&v, _)| v)
                    .collect();
                assert!(!inside.is_empty(), "{split} cube {i} has an empty mask");
                // Nodules (solid, or ground glass from -600 HU with a solid core) are far
                // denser than lung parenchyma (about -850 HU, 0.075 after windowing).
                let inside_mean = inside.iter().sum::<f32>() / inside.len() as f32;
                assert!(
                    inside_mean > 0.17,
                    "{split} cube {i}: mean inside the mask {inside_mean}"
                );
            }
            total += x.len();
        }
        assert!(total >= 6);

        let ncc = tmp.path().join("ncc");
        let options = TaskOptions {
            kind: TaskKind::Ncc,
            ..options
        };
        build_task(&data, &ncc, &options).unwrap();
        let y = genesis_io::read_npy(ncc.join("y_train.npy")).unwrap();
        let x = NpyStack::open(ncc.join("x_train_64x64x32.npy")).unwrap();
        assert_eq!(y.len(), x.len());
        assert!(y.iter().any(|&v| v == 1.0) && y.iter().any(|&v| v == 0.0));

        // Smaller cubes: named and shaped by --cube, masks still hit the nodules.
        let small = tmp.path().join("ncs-small");
        let options = TaskOptions {
            kind: TaskKind::Ncs,
            cube: [32, 32, 16],
            ..options
        };
        build_task(&data, &small, &options).unwrap();
        let x = NpyStack::open(small.join("x_train_32x32x16.npy")).unwrap();
        let m = NpyStack::open(small.join("m_train_32x32x16.npy")).unwrap();
        assert_eq!(x.item_shape(), &[32, 32, 16]);
        assert_eq!(m.item_shape(), &[32, 32, 16]);
        let mut mask = vec![0.0; 32 * 32 * 16];
        for i in 0..m.len() {
            m.read_item_into(i, &mut mask).unwrap();
            assert!(
                mask.iter().any(|&v| v > 0.5),
                "small cube {i} misses its nodule"
            );
        }
    }

    #[test]
    fn annotations_round_trip_world_and_voxel() {
        let scan = crate::prepare_data::phantom::generate_scan(
            &PhantomConfig::new(1, PhantomSize::Small, 4),
            0,
        )
        .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("scan.mhd");
        genesis_io::write_volume(&path, &scan.volume).unwrap();
        let back = genesis_io::read_volume(&path).unwrap();
        assert_eq!(back.origin, scan.volume.origin);
        assert_eq!(back.spacing, scan.volume.spacing);
        for n in &scan.nodules {
            let v = back.world_to_voxel(n.center);
            let w = back.voxel_to_world(v);
            for a in 0..3 {
                assert!((w[a] - n.center[a]).abs() < 1e-9);
                assert!(v[a] >= 0.0 && v[a] < back.shape()[a] as f64);
            }
            // The voxel the annotation points at is inside the rasterised sphere mask.
            let corner = v.map(|c| (c.round() as usize).saturating_sub(16));
            let corner = [0, 1, 2].map(|a| corner[a].min(back.shape()[a] - TASK_CUBE[a]));
            let p = Point {
                center: n.center,
                diameter_mm: n.diameter_mm,
                class: 1,
            };
            let mask = sphere_mask(&back, corner, TASK_CUBE, &[p]);
            let local = [0, 1, 2].map(|a| v[a].round() as usize - corner[a]);
            assert_eq!(mask[(local[0] * 64 + local[1]) * 32 + local[2]], 1.0);
        }
    }

    #[test]
    fn bad_csv_rows_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("annotations.csv");
        std::fs::write(
            &path,
            "seriesuid,coordX,coordY,coordZ,diameter_mm\na,1,2,x,4\n",
        )
        .unwrap();
        let err = read_points(&path, true).unwrap_err();
        assert!(format!("{err:#}").contains("row 2"), "{err:#}");
    }
}
