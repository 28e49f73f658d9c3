//! A procedural chest-CT phantom in LUNA16's layout: `subsetK/<uid>.mhd` + `.raw`
//! (int16 HU), `annotations.csv` and `candidates.csv`.
//!
//! Each scan is built from analytic shapes in world millimetres (LPS: +x patient left,
//! +y posterior, +z superior): a body ellipse with skin, fat and muscle layers; ribs,
//! sternum and spine; two lungs bounded by the chest wall, the mediastinum, the heart
//! and a domed diaphragm, filled with textured parenchyma; a branching vessel tree with
//! paired bronchi and the trachea; nodules (solid and part-solid spheres, 3–30 mm);
//! then scanner-like noise, correlated by a small in-plane blur as a reconstruction
//! kernel would. Everything random comes from the seed and the scan index, so a scan is
//! the same whatever the thread count.

use std::f64::consts::PI;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use genesis_io::{ElementType, Volume};
use ndarray::{Array3, ShapeBuilder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Scan sizes the generator makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum PhantomSize {
    /// LUNA16-like: 512×512×(120–300), 0.6–0.9 mm in-plane, 1.25–2.5 mm slices.
    Paper,
    /// For tests and the quickstart: 288×288×(100–140), about 1 mm in-plane, 2.5 mm
    /// slices, the field of view centred on one lung (a targeted reconstruction), so
    /// the original's 100-voxel border rule still leaves lung windows to cut.
    Small,
}

/// What to generate.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PhantomConfig {
    /// Number of scans.
    pub n_scans: usize,
    /// Scan size preset.
    pub size: PhantomSize,
    /// Seed of the whole dataset.
    pub seed: u64,
    /// Subsets the scans are dealt to, round-robin: scan `i` goes to `subsets[i % len]`.
    pub subsets: Vec<usize>,
    /// Nodules per scan, drawn uniformly from this inclusive range.
    pub nodules_per_scan: (usize, usize),
    /// Non-nodule candidates per scan (vessel points and parenchyma points).
    pub negatives_per_scan: usize,
}

impl PhantomConfig {
    /// Defaults: ten paper-size scans over subsets 0–9, 1–4 nodules each.
    pub fn new(n_scans: usize, size: PhantomSize, seed: u64) -> Self {
        PhantomConfig {
            n_scans,
            size,
            seed,
            subsets: (0..10).collect(),
            nodules_per_scan: (1, 4),
            negatives_per_scan: 24,
        }
    }
}

/// Solid or part-solid (ground-glass halo around a solid core).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum NoduleKind {
    /// Uniformly dense.
    Solid,
    /// Ground-glass halo with a solid core.
    PartSolid,
}

/// A nodule in world coordinates (mm).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Nodule {
    /// Centre, world mm (LPS).
    pub center: [f64; 3],
    /// Diameter in mm (the annotation's `diameter_mm`).
    pub diameter_mm: f64,
    /// Solid or part-solid.
    pub kind: NoduleKind,
}

/// A candidate location with its class (1 = nodule).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Candidate {
    /// World mm (LPS).
    pub center: [f64; 3],
    /// 1 for a nodule, 0 otherwise.
    pub class: u8,
}

/// One generated scan.
#[derive(Debug)]
pub struct PhantomScan {
    /// Series UID, also the file stem.
    pub uid: String,
    /// LUNA16 subset the scan belongs to.
    pub subset: usize,
    /// HU values, element type I16, identity direction.
    pub volume: Volume,
    /// Voxel classes (see [`Tissue`]), indexed like `volume.data`.
    pub labels: Array3<u8>,
    /// Annotated nodules.
    pub nodules: Vec<Nodule>,
    /// Nodule and non-nodule candidates.
    pub candidates: Vec<Candidate>,
}

/// Voxel classes of the label volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Tissue {
    /// Outside the body.
    Air = 0,
    /// Skin, fat, muscle, mediastinum, abdomen.
    Soft = 1,
    /// Lung parenchyma (vessels and airways inside the lungs keep this class).
    Lung = 2,
    /// Bone.
    Bone = 3,
    /// Heart.
    Heart = 4,
    /// Nodule.
    Nodule = 5,
}

/// The series UID of scan `index` for `seed`.
pub fn scan_uid(seed: u64, index: usize) -> String {
    format!("1.3.6.1.4.1.99999.{seed}.{index}")
}

/// Generates scan `index` of the dataset in memory.
pub fn generate_scan(config: &PhantomConfig, index: usize) -> Result<PhantomScan> {
    if config.subsets.is_empty() {
        bail!("the phantom needs at least one subset");
    }
    let mut rng = ChaCha8Rng::seed_from_u64(mix(config.seed ^ mix(index as u64 + 0x5eed)));
    let geometry = Geometry::sample(config.size, &mut rng);
    let anatomy = Anatomy::sample(&geometry, &mut rng);
    let mut segments = Vec::new();
    anatomy.grow_airways(&mut segments);
    for side in [-1.0, 1.0] {
        anatomy.grow_vessel_tree(side, &mut rng, &mut segments);
    }
    let texture = ValueNoise::new(&geometry, 7.0, &mut rng);
    let [nx, ny, nz] = geometry.dims;
    let plane = nx * ny;
    // x fastest (the on-disk order), so z slabs are contiguous and build in parallel.
    let mut values = vec![0.0f32; plane * nz];
    let mut labels = vec![0u8; plane * nz];
    values
        .par_chunks_mut(plane)
        .zip(labels.par_chunks_mut(plane))
        .enumerate()
        .for_each(|(k, (slab_values, slab_labels))| {
            anatomy.fill_slice(&geometry, &texture, k, slab_values, slab_labels);
        });
    let mut grid = Grid {
        geometry: &geometry,
        values: &mut values,
        labels: &mut labels,
    };
    for segment in &segments {
        grid.stamp_segment(segment);
    }
    let n_nodules = rng.gen_range(
        config.nodules_per_scan.0..=config.nodules_per_scan.1.max(config.nodules_per_scan.0),
    );
    let nodules = place_nodules(&grid, &anatomy, n_nodules, &mut rng);
    for nodule in &nodules {
        let hu = rng.gen_range(50.0..100.0);
        let ggo = rng.gen_range(-600.0..-400.0);
        let core = rng.gen_range(0.35..0.6);
        grid.stamp_nodule(nodule, hu, ggo, core);
    }
    let candidates = make_candidates(
        &grid,
        &nodules,
        &segments,
        config.negatives_per_scan,
        &mut rng,
    );
    let noise_seed = rng.r#gen::<u64>();
    let noise_sd = rng.gen_range(35.0..55.0f32);
    add_noise_and_blur(&geometry, &mut values, noise_seed, noise_sd);

    let data = Array3::from_shape_vec((nx, ny, nz).f(), values).context("phantom volume shape")?;
    let labels = Array3::from_shape_vec((nx, ny, nz).f(), labels).context("phantom label shape")?;
    let mut volume = Volume::new(data, geometry.spacing);
    volume.origin = geometry.origin;
    volume.element_type = ElementType::I16;
    Ok(PhantomScan {
        uid: scan_uid(config.seed, index),
        subset: config.subsets[index % config.subsets.len()],
        volume,
        labels,
        nodules,
        candidates,
    })
}

/// Subset, UID, nodules and candidates of one written scan.
type ScanRecord = (usize, String, Vec<Nodule>, Vec<Candidate>);

/// What [`write_dataset`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetSummary {
    /// `(subset, uid)` of every scan, in index order.
    pub scans: Vec<(usize, String)>,
    /// Number of annotated nodules.
    pub n_nodules: usize,
    /// Number of candidates (nodules included).
    pub n_candidates: usize,
}

/// Generates the dataset into `dir` (`subsetK/<uid>.mhd/.raw`, `annotations.csv`,
/// `candidates.csv`, `phantom.json`), in parallel over scans.
pub fn write_dataset(dir: &Path, config: &PhantomConfig) -> Result<DatasetSummary> {
    genesis_io::create_dir_all(dir)?;
    // Two scans per thread in flight at most: a paper-size scan is ~0.4 GB while built.
    let chunk = 2 * rayon::current_num_threads().max(1);
    let mut records = Vec::with_capacity(config.n_scans);
    let indices: Vec<usize> = (0..config.n_scans).collect();
    for block in indices.chunks(chunk) {
        let results: Vec<Result<ScanRecord>> = block
            .par_iter()
            .map(|&index| {
                let scan = generate_scan(config, index)?;
                let subset_dir = dir.join(format!("subset{}", scan.subset));
                genesis_io::create_dir_all(&subset_dir)?;
                let path = subset_dir.join(format!("{}.mhd", scan.uid));
                genesis_io::write_volume(&path, &scan.volume)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                let lung = scan
                    .labels
                    .iter()
                    .filter(|&&l| l == Tissue::Lung as u8)
                    .count();
                eprintln!(
                    "phantom: wrote {} ({} nodules, {:.0}% lung voxels)",
                    path.display(),
                    scan.nodules.len(),
                    100.0 * lung as f64 / scan.labels.len().max(1) as f64
                );
                Ok((scan.subset, scan.uid, scan.nodules, scan.candidates))
            })
            .collect();
        for result in results {
            records.push(result?);
        }
    }
    let mut annotations = String::from("seriesuid,coordX,coordY,coordZ,diameter_mm\n");
    let mut candidates = String::from("seriesuid,coordX,coordY,coordZ,class\n");
    let (mut n_nodules, mut n_candidates) = (0, 0);
    for (_, uid, nodules, cands) in &records {
        for n in nodules {
            let [x, y, z] = n.center;
            let _ = writeln!(
                annotations,
                "{uid},{x:.4},{y:.4},{z:.4},{:.4}",
                n.diameter_mm
            );
        }
        for c in cands {
            let [x, y, z] = c.center;
            let _ = writeln!(candidates, "{uid},{x:.4},{y:.4},{z:.4},{}", c.class);
        }
        n_nodules += nodules.len();
        n_candidates += cands.len();
    }
    write_atomic(&dir.join("annotations.csv"), annotations.as_bytes())?;
    write_atomic(&dir.join("candidates.csv"), candidates.as_bytes())?;
    let info = serde_json::json!({
        "generator": "cargo xtask prepare-data --synthetic",
        "config": config,
        "scans": records.iter().map(|(subset, uid, nodules, _)| serde_json::json!({
            "subset": subset, "uid": uid, "nodules": nodules,
        })).collect::<Vec<_>>(),
    });
    write_atomic(
        &dir.join("phantom.json"),
        serde_json::to_string_pretty(&info)?.as_bytes(),
    )?;
    Ok(DatasetSummary {
        scans: records.iter().map(|(s, u, _, _)| (*s, u.clone())).collect(),
        n_nodules,
        n_candidates,
    })
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut temp = path.as_os_str().to_owned();
    temp.push(".tmp");
    let temp = PathBuf::from(temp);
    std::fs::write(&temp, bytes).with_context(|| format!("cannot write {}", temp.display()))?;
    std::fs::rename(&temp, path)
        .with_context(|| format!("cannot rename {} to {}", temp.display(), path.display()))
}

/// SplitMix64's finaliser.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Scan grid: voxel counts, spacing and origin.
#[derive(Debug, Clone)]
struct Geometry {
    dims: [usize; 3],
    spacing: [f64; 3],
    origin: [f64; 3],
}

impl Geometry {
    fn sample(size: PhantomSize, rng: &mut ChaCha8Rng) -> Geometry {
        let (n_xy, nz, sxy, sz) = match size {
            PhantomSize::Paper => {
                let sz = [1.25, 1.5, 2.0, 2.5][rng.gen_range(0..4)];
                // Keep the covered length at 240–400 mm, within 120–300 slices.
                let nz = ((rng.gen_range(260.0..380.0) / sz) as usize).clamp(120, 300);
                (512, nz, rng.gen_range(0.6..0.9), sz)
            }
            PhantomSize::Small => (288, rng.gen_range(100..=140), rng.gen_range(0.95..1.1), 2.5),
        };
        let dims = [n_xy, n_xy, nz];
        let spacing = [sxy, sxy, sz];
        // The body centre sits near world (0, 0); a small field of view is centred on
        // one lung, as a targeted reconstruction would be.
        let shift_x = match size {
            PhantomSize::Paper => rng.gen_range(-10.0..10.0),
            PhantomSize::Small => {
                (if rng.gen_bool(0.5) { 1.0 } else { -1.0 }) * rng.gen_range(68.0..78.0)
            }
        };
        let shift_y = rng.gen_range(-8.0..8.0)
            + if size == PhantomSize::Small {
                5.0
            } else {
                15.0
            };
        let origin = [
            shift_x - (n_xy - 1) as f64 * sxy / 2.0,
            shift_y - (n_xy - 1) as f64 * sxy / 2.0,
            -rng.gen_range(250.0..420.0),
        ];
        Geometry {
            dims,
            spacing,
            origin,
        }
    }

    fn world(&self, axis: usize, index: usize) -> f64 {
        self.origin[axis] + index as f64 * self.spacing[axis]
    }

    /// Voxel index (rounded, clamped) of a world coordinate along `axis`.
    fn index(&self, axis: usize, world: f64) -> usize {
        let i = ((world - self.origin[axis]) / self.spacing[axis]).round();
        i.clamp(0.0, (self.dims[axis] - 1) as f64) as usize
    }

    fn extent_z(&self) -> f64 {
        (self.dims[2] - 1) as f64 * self.spacing[2]
    }
}

/// A capsule (segment with a radius) stamped with a value into some tissues.
#[derive(Debug, Clone, Copy)]
struct Segment {
    a: [f64; 3],
    b: [f64; 3],
    radius: f64,
    hu: f32,
    /// Stamp into lung voxels only (vessels, small bronchi), or into soft tissue and lung
    /// (trachea and main bronchi).
    lung_only: bool,
    /// A vessel (candidate source), not an airway.
    vessel: bool,
}

/// Per-scan anatomy in world mm.
#[derive(Debug, Clone)]
struct Anatomy {
    /// Body centre (x, y).
    cx: f64,
    cy: f64,
    /// Body half-width (lateral) and half-depth (antero-posterior).
    body_a: f64,
    body_b: f64,
    fat: f64,
    muscle: f64,
    /// Lung base (costophrenic) and apex z, world mm.
    lung_base: f64,
    lung_height: f64,
    lung_cx: f64,
    lung_cy: f64,
    lung_ax: f64,
    lung_ay: f64,
    dome: f64,
    heart_c: [f64; 3],
    heart_r: [f64; 3],
    spine_y: f64,
    spine_r: f64,
    rib_spacing: f64,
    rib_drop: f64,
    rib_top: f64,
    lung_hu: f32,
    soft_hu: f32,
    fat_hu: f32,
}

impl Anatomy {
    fn sample(g: &Geometry, rng: &mut ChaCha8Rng) -> Anatomy {
        let body_a = rng.gen_range(150.0..172.0);
        let body_b = rng.gen_range(102.0..122.0);
        let z0 = g.origin[2];
        let extent = g.extent_z();
        let lung_height = (extent * 0.84).min(rng.gen_range(265.0..295.0));
        let lung_base = z0 + (extent - lung_height) * rng.gen_range(0.4..0.55);
        Anatomy {
            cx: 0.0,
            cy: 0.0,
            body_a,
            body_b,
            fat: rng.gen_range(6.0..16.0),
            muscle: rng.gen_range(7.0..11.0),
            lung_base,
            lung_height,
            lung_cx: body_a * rng.gen_range(0.45..0.48),
            lung_cy: body_b * 0.06,
            lung_ax: body_a * rng.gen_range(0.39..0.42),
            lung_ay: body_b * rng.gen_range(0.8..0.86),
            dome: lung_height * rng.gen_range(0.18..0.24),
            heart_c: [
                body_a * 0.12,
                -body_b * 0.22,
                lung_base + lung_height * 0.27,
            ],
            heart_r: [body_a * 0.36, body_b * 0.42, lung_height * 0.2],
            spine_y: body_b * 0.5,
            spine_r: rng.gen_range(15.0..19.0),
            rib_spacing: lung_height / 10.5,
            rib_drop: rng.gen_range(75.0..100.0),
            rib_top: lung_base + lung_height + 8.0,
            lung_hu: rng.gen_range(-875.0..-840.0),
            soft_hu: rng.gen_range(35.0..50.0),
            fat_hu: rng.gen_range(-110.0..-90.0),
        }
    }

    /// Normalised lung height of world z (0 at the base, 1 at the apex).
    fn lung_t(&self, z: f64) -> f64 {
        (z - self.lung_base) / self.lung_height
    }

    /// Lung cross-section scale at height `t`: full near the bottom, tapering to the apex.
    fn lung_scale(t: f64) -> f64 {
        let u = (t - 0.3) / 0.72;
        (1.0 - u * u).max(0.0).sqrt()
    }

    /// Body-surface depth (mm, positive inside) and the normalised ellipse radius².
    fn body_depth(&self, px: f64, py: f64) -> (f64, f64) {
        let b = if py > 0.0 {
            self.body_b * 0.93
        } else {
            self.body_b
        };
        let (u, v) = (px / self.body_a, py / b);
        let r2 = u * u + v * v;
        let grad =
            2.0 * ((px / (self.body_a * self.body_a)).powi(2) + (py / (b * b)).powi(2)).sqrt();
        let depth = if grad > 1e-9 {
            (1.0 - r2) / grad
        } else {
            self.body_b
        };
        (depth, r2)
    }

    /// Whether a world point (relative to the body centre) lies in a lung, before
    /// vessels and nodules; also used to grow the vessel tree.
    fn in_lung(&self, px: f64, py: f64, z: f64) -> bool {
        let t = self.lung_t(z);
        if !(0.0..=1.0).contains(&t) {
            return false;
        }
        let (depth, r2) = self.body_depth(px, py);
        if r2 >= 1.0 || depth < self.fat + self.muscle + 11.0 {
            return false;
        }
        let side = if px < 0.0 { -1.0 } else { 1.0 };
        let s = Self::lung_scale(t);
        let (ax, ay) = (self.lung_ax * s, self.lung_ay * (0.45 + 0.55 * s));
        let (u, v) = ((px - side * self.lung_cx) / ax, (py - self.lung_cy) / ay);
        let q = u * u + v * v;
        if q >= 1.0 {
            return false;
        }
        // Diaphragm: a dome under each lung, the right (patient right = -x) one higher.
        let dome = self.dome * if side < 0.0 { 1.1 } else { 1.0 };
        if z < self.lung_base + dome * (1.0 - q) - (py / self.body_b).max(0.0) * 12.0 {
            return false;
        }
        // Heart (with a pericardial margin) and spine.
        let [hx, hy, hz] = self.heart_c;
        let [rx, ry, rz] = self.heart_r;
        let hq = ((px - hx) / rx).powi(2) + ((py - hy) / ry).powi(2) + ((z - hz) / rz).powi(2);
        if hq < 1.15 {
            return false;
        }
        let sy = py - self.spine_y;
        if px * px + sy * sy < (self.spine_r + 6.0).powi(2) {
            return false;
        }
        // Mediastinum: keep lungs off the midline, wider anteriorly.
        let half_width = 14.0 + (-py / self.body_b).max(0.0) * 25.0;
        px.abs() > half_width
    }

    /// Fills one axial slice (x fastest) with HU values and tissue labels.
    fn fill_slice(
        &self,
        g: &Geometry,
        texture: &ValueNoise,
        k: usize,
        values: &mut [f32],
        labels: &mut [u8],
    ) {
        let [nx, ny, _] = g.dims;
        let z = g.world(2, k);
        let t = self.lung_t(z);
        let wall = self.fat + self.muscle;
        let rib_phase = (self.rib_top - z) / self.rib_spacing;
        for j in 0..ny {
            let py = g.world(1, j) - self.cy;
            for i in 0..nx {
                let px = g.world(0, i) - self.cx;
                let idx = i + nx * j;
                let (depth, r2) = self.body_depth(px, py);
                let (hu, tissue) = if r2 >= 1.0 {
                    (self.table(px, py), Tissue::Air)
                } else if depth < 1.5 {
                    (20.0, Tissue::Soft)
                } else if depth < self.fat {
                    (self.fat_hu, Tissue::Soft)
                } else if depth < wall {
                    (55.0, Tissue::Soft)
                } else if let Some(hu) = self.bone(px, py, z, depth, rib_phase) {
                    (hu, Tissue::Bone)
                } else if self.in_lung(px, py, z) {
                    let dependent = (py / self.body_b) as f32 * 25.0;
                    let hu = self.lung_hu + dependent + texture.at(g, i, j, k) * 30.0;
                    (hu, Tissue::Lung)
                } else if self.in_heart(px, py, z) {
                    (self.soft_hu + 5.0, Tissue::Heart)
                } else if t < 0.35 && z < self.lung_base + self.dome * 1.2 {
                    (58.0, Tissue::Soft) // liver and spleen under the diaphragm
                } else if py < -0.25 * self.body_b && px.abs() < 0.2 * self.body_a {
                    (self.fat_hu + 10.0, Tissue::Soft) // anterior mediastinal fat
                } else {
                    (self.soft_hu, Tissue::Soft)
                };
                values[idx] = hu;
                labels[idx] = tissue as u8;
            }
        }
    }

    /// Patient table: a thin curved plate under the back; air elsewhere.
    fn table(&self, px: f64, py: f64) -> f32 {
        let u = px / (0.9 * self.body_a);
        let top = self.body_b * 0.93 + 12.0 - 25.0 * u * u;
        if u.abs() < 1.0 && py > top && py < top + 5.0 {
            250.0
        } else {
            -1000.0
        }
    }

    fn in_heart(&self, px: f64, py: f64, z: f64) -> bool {
        let [hx, hy, hz] = self.heart_c;
        let [rx, ry, rz] = self.heart_r;
        ((px - hx) / rx).powi(2) + ((py - hy) / ry).powi(2) + ((z - hz) / rz).powi(2) < 1.0
    }

    /// Spine, ribs and sternum: HU if the point is bone.
    fn bone(&self, px: f64, py: f64, z: f64, depth: f64, rib_phase: f64) -> Option<f32> {
        // Vertebral body with discs every ~26 mm, canal and spinous process.
        let sy = py - self.spine_y;
        let r = (px * px + sy * sy).sqrt();
        if r < self.spine_r {
            let disc = (z / 26.0).rem_euclid(1.0) < 0.2;
            return Some(if disc {
                85.0
            } else if r > self.spine_r - 2.0 {
                850.0
            } else {
                320.0
            });
        }
        let canal_y = self.spine_y + self.spine_r + 9.0;
        let cr = (px * px + (py - canal_y).powi(2)).sqrt();
        if cr < 8.0 {
            return None; // the cord stays soft tissue
        }
        if cr < 13.0
            || (px.abs() < 4.0 && py > canal_y && py < canal_y + 30.0 && depth > self.fat + 4.0)
        {
            return Some(600.0);
        }
        // Ribs: a ring just inside the muscle layer, descending anteriorly.
        let ring = self.fat + self.muscle + 6.0;
        if (depth - ring).abs() < 4.5 {
            let theta = py.atan2(px); // +pi/2 is posterior
            let from_back = (theta - PI / 2.0).abs();
            let from_back = if from_back > PI {
                2.0 * PI - from_back
            } else {
                from_back
            };
            if (0.25..2.5).contains(&from_back) {
                let drop = self.rib_drop * (from_back / 2.5).powf(1.5);
                let phase = rib_phase + drop / self.rib_spacing;
                let rib = phase.round();
                if (0.0..12.0).contains(&rib) {
                    let dz = (phase - rib) * self.rib_spacing;
                    let e = ((depth - ring) / 4.5).powi(2) + (dz / 5.5).powi(2);
                    if e < 1.0 {
                        return Some(if e > 0.45 { 750.0 } else { 260.0 });
                    }
                }
            }
        }
        // Sternum on the anterior midline.
        let t = self.lung_t(z);
        if py < 0.0 && px.abs() < 14.0 && (depth - ring).abs() < 6.0 && (0.3..0.9).contains(&t) {
            return Some(if (depth - ring).abs() > 4.0 {
                700.0
            } else {
                350.0
            });
        }
        None
    }

    /// Trachea from above the apex to the carina, main bronchi to both hila.
    fn grow_airways(&self, out: &mut Vec<Segment>) {
        let top = [
            0.0,
            self.body_b * 0.1,
            self.lung_base + self.lung_height + 60.0,
        ];
        let carina = [
            0.0,
            self.body_b * 0.12,
            self.lung_base + self.lung_height * 0.62,
        ];
        let airway = |a, b, radius, hu| Segment {
            a,
            b,
            radius,
            hu,
            lung_only: false,
            vessel: false,
        };
        out.push(airway(top, carina, 10.5, 40.0));
        out.push(airway(top, carina, 8.5, -1000.0));
        for side in [-1.0, 1.0] {
            let hilum = self.hilum(side);
            out.push(airway(carina, hilum, 7.5, 40.0));
            out.push(airway(carina, hilum, 6.0, -1000.0));
        }
    }

    fn hilum(&self, side: f64) -> [f64; 3] {
        [
            side * (self.lung_cx - self.lung_ax * 0.55),
            self.body_b * 0.08,
            self.lung_base + self.lung_height * 0.55,
        ]
    }

    /// A branching vessel tree from the hilum of one lung, with bronchi beside the larger
    /// branches.
    fn grow_vessel_tree(&self, side: f64, rng: &mut ChaCha8Rng, out: &mut Vec<Segment>) {
        let hilum = self.hilum(side);
        // Upper, middle and lower lobe trunks.
        let trunks = [
            [0.35 * side, -0.15, 0.9],
            [0.8 * side, 0.4, 0.4],
            [0.9 * side, -0.35, -0.1],
            [0.6 * side, -0.6, -0.5],
            [0.45 * side, 0.35, -0.85],
        ];
        let mut stack: Vec<([f64; 3], [f64; 3], f64, u32)> = trunks
            .iter()
            .map(|d| (hilum, normalize(*d), 4.5, 0))
            .collect();
        let mut budget = 8000;
        while let Some((start, dir, radius, depth)) = stack.pop() {
            if radius < 0.45 || budget == 0 || depth > 18 {
                continue;
            }
            budget -= 1;
            let length = radius * rng.gen_range(5.0..9.0);
            let mut end = None;
            // Near the pleura, bend and shorten the branch rather than stop the tree.
            for attempt in 0..10 {
                let d = if attempt == 0 {
                    dir
                } else {
                    perturb(dir, 0.6, rng)
                };
                let e = add(
                    start,
                    scale(d, if attempt < 5 { length } else { length * 0.5 }),
                );
                if self.in_lung(e[0], e[1], e[2]) {
                    end = Some((e, d));
                    break;
                }
            }
            let Some((end, dir)) = end else { continue };
            out.push(Segment {
                a: start,
                b: end,
                radius,
                hu: 40.0,
                lung_only: true,
                vessel: true,
            });
            if radius > 1.1 && radius < 3.5 {
                // A bronchus alongside: wall, then lumen.
                let offset = scale(normalize(cross(dir, [0.0, 0.0, 1.0])), radius * 1.9);
                let (ba, bb) = (add(start, offset), add(end, offset));
                let lumen = radius * 0.7;
                let wall = (radius * 0.22).max(0.5);
                out.push(Segment {
                    a: ba,
                    b: bb,
                    radius: lumen + wall,
                    hu: 30.0,
                    lung_only: true,
                    vessel: false,
                });
                out.push(Segment {
                    a: ba,
                    b: bb,
                    radius: lumen,
                    hu: -990.0,
                    lung_only: true,
                    vessel: false,
                });
            }
            let axis = random_perpendicular(dir, rng);
            for sign in [1.0, -1.0] {
                let angle = sign * rng.gen_range(0.35..0.7);
                let child = rotate(dir, axis, angle);
                let ratio = rng.gen_range(0.7..0.84);
                stack.push((end, child, radius * ratio, depth + 1));
            }
        }
    }
}

/// Smooth random texture: trilinear interpolation of a coarse grid of uniform values.
#[derive(Debug)]
struct ValueNoise {
    dims: [usize; 3],
    cell: f64,
    values: Vec<f32>,
}

impl ValueNoise {
    fn new(g: &Geometry, cell: f64, rng: &mut ChaCha8Rng) -> ValueNoise {
        let dims = [0, 1, 2].map(|a| (g.dims[a] as f64 * g.spacing[a] / cell) as usize + 2);
        let values = (0..dims[0] * dims[1] * dims[2])
            .map(|_| rng.gen_range(-1.0f32..1.0))
            .collect();
        ValueNoise { dims, cell, values }
    }

    /// Value in [-1, 1] at voxel (i, j, k).
    fn at(&self, g: &Geometry, i: usize, j: usize, k: usize) -> f32 {
        let p = [i, j, k];
        let mut base = [0usize; 3];
        let mut frac = [0f32; 3];
        for a in 0..3 {
            let u = p[a] as f64 * g.spacing[a] / self.cell;
            base[a] = (u as usize).min(self.dims[a] - 2);
            frac[a] = (u - base[a] as f64) as f32;
        }
        let at =
            |x: usize, y: usize, z: usize| self.values[x + self.dims[0] * (y + self.dims[1] * z)];
        let [x, y, z] = base;
        let [fx, fy, fz] = frac;
        let lerp = |a: f32, b: f32, f: f32| a + (b - a) * f;
        let c00 = lerp(at(x, y, z), at(x + 1, y, z), fx);
        let c10 = lerp(at(x, y + 1, z), at(x + 1, y + 1, z), fx);
        let c01 = lerp(at(x, y, z + 1), at(x + 1, y, z + 1), fx);
        let c11 = lerp(at(x, y + 1, z + 1), at(x + 1, y + 1, z + 1), fx);
        lerp(lerp(c00, c10, fy), lerp(c01, c11, fy), fz)
    }
}

/// The volume being built, x fastest.
struct Grid<'a> {
    geometry: &'a Geometry,
    values: &'a mut [f32],
    labels: &'a mut [u8],
}

impl Grid<'_> {
    fn offset(&self, i: usize, j: usize, k: usize) -> usize {
        let [nx, ny, _] = self.geometry.dims;
        i + nx * (j + ny * k)
    }

    fn label_at(&self, world: [f64; 3]) -> Option<u8> {
        let g = self.geometry;
        let mut idx = [0usize; 3];
        for a in 0..3 {
            let u = ((world[a] - g.origin[a]) / g.spacing[a]).round();
            if u < 0.0 || u >= g.dims[a] as f64 {
                return None;
            }
            idx[a] = u as usize;
        }
        Some(self.labels[self.offset(idx[0], idx[1], idx[2])])
    }

    /// Voxel index ranges covering a world box.
    fn index_box(&self, lo: [f64; 3], hi: [f64; 3]) -> [(usize, usize); 3] {
        [0, 1, 2].map(|a| (self.geometry.index(a, lo[a]), self.geometry.index(a, hi[a])))
    }

    /// Blends a capsule in with partial-volume coverage.
    fn stamp_segment(&mut self, s: &Segment) {
        let pad = s.radius + 1.0;
        let lo = [0, 1, 2].map(|a| s.a[a].min(s.b[a]) - pad);
        let hi = [0, 1, 2].map(|a| s.a[a].max(s.b[a]) + pad);
        let boxes = self.index_box(lo, hi);
        let ab = sub(s.b, s.a);
        let ab2 = dot(ab, ab).max(1e-12);
        let soft = 0.5 * self.geometry.spacing[0];
        let g = self.geometry;
        for k in boxes[2].0..=boxes[2].1 {
            let z = g.world(2, k);
            for j in boxes[1].0..=boxes[1].1 {
                let y = g.world(1, j);
                for i in boxes[0].0..=boxes[0].1 {
                    let p = [g.world(0, i), y, z];
                    let ap = sub(p, s.a);
                    let t = (dot(ap, ab) / ab2).clamp(0.0, 1.0);
                    let d = norm(sub(ap, scale(ab, t)));
                    let cover = ((s.radius + soft - d) / (2.0 * soft)).clamp(0.0, 1.0) as f32;
                    if cover <= 0.0 {
                        continue;
                    }
                    let o = self.offset(i, j, k);
                    let label = self.labels[o];
                    let allowed = if s.lung_only {
                        label == Tissue::Lung as u8
                    } else {
                        label == Tissue::Lung as u8
                            || label == Tissue::Soft as u8
                            || label == Tissue::Heart as u8
                    };
                    if allowed {
                        self.values[o] += (s.hu - self.values[o]) * cover;
                    }
                }
            }
        }
    }

    /// Stamps a nodule: a solid sphere, or a ground-glass sphere with a solid core.
    fn stamp_nodule(&mut self, n: &Nodule, hu: f32, ggo_hu: f32, core: f64) {
        let r = n.diameter_mm / 2.0;
        let lo = n.center.map(|c| c - r - 1.0);
        let hi = n.center.map(|c| c + r + 1.0);
        let boxes = self.index_box(lo, hi);
        let soft = 0.5 * self.geometry.spacing[0];
        let g = self.geometry;
        for k in boxes[2].0..=boxes[2].1 {
            for j in boxes[1].0..=boxes[1].1 {
                for i in boxes[0].0..=boxes[0].1 {
                    let p = [g.world(0, i), g.world(1, j), g.world(2, k)];
                    let d = norm(sub(p, n.center));
                    let cover = ((r + soft - d) / (2.0 * soft)).clamp(0.0, 1.0) as f32;
                    if cover <= 0.0 {
                        continue;
                    }
                    let target = match n.kind {
                        NoduleKind::Solid => hu,
                        NoduleKind::PartSolid => {
                            let c = ((r * core + soft - d) / (2.0 * soft)).clamp(0.0, 1.0) as f32;
                            ggo_hu + (hu - ggo_hu) * c
                        }
                    };
                    let o = self.offset(i, j, k);
                    self.values[o] += (target - self.values[o]) * cover;
                    if d <= r {
                        self.labels[o] = Tissue::Nodule as u8;
                    }
                }
            }
        }
    }
}

/// Nodule diameters: mostly small, as in LUNA16 (3–30 mm).
fn nodule_diameter(rng: &mut ChaCha8Rng) -> f64 {
    let u: f64 = rng.r#gen();
    if u < 0.65 {
        rng.gen_range(3.0..10.0)
    } else if u < 0.92 {
        rng.gen_range(10.0..20.0)
    } else {
        rng.gen_range(20.0..30.0)
    }
}

fn place_nodules(
    grid: &Grid<'_>,
    anatomy: &Anatomy,
    n: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<Nodule> {
    let g = grid.geometry;
    let mut nodules: Vec<Nodule> = Vec::with_capacity(n);
    let lo = [0, 1, 2].map(|a| g.origin[a]);
    let hi = [0, 1, 2].map(|a| g.world(a, g.dims[a] - 1));
    let lung = Tissue::Lung as u8;
    for _ in 0..n {
        let mut diameter = nodule_diameter(rng);
        for attempt in 0..4000 {
            if attempt % 1000 == 999 {
                diameter = (diameter * 0.7).max(3.0);
            }
            let c = [0, 1, 2].map(|a| rng.gen_range(lo[a]..hi[a]));
            if !anatomy.in_lung(c[0] - anatomy.cx, c[1] - anatomy.cy, c[2])
                || grid.label_at(c) != Some(lung)
            {
                continue;
            }
            let r = diameter / 2.0 + 1.0;
            let probes = [
                [r, 0.0, 0.0],
                [-r, 0.0, 0.0],
                [0.0, r, 0.0],
                [0.0, -r, 0.0],
                [0.0, 0.0, r],
                [0.0, 0.0, -r],
            ];
            if probes
                .iter()
                .any(|d| grid.label_at(add(c, *d)) != Some(lung))
            {
                continue;
            }
            if nodules
                .iter()
                .any(|m| norm(sub(m.center, c)) < (m.diameter_mm + diameter) / 2.0 + 8.0)
            {
                continue;
            }
            let kind = if rng.gen_bool(0.3) {
                NoduleKind::PartSolid
            } else {
                NoduleKind::Solid
            };
            nodules.push(Nodule {
                center: c,
                diameter_mm: diameter,
                kind,
            });
            break;
        }
    }
    nodules
}

fn make_candidates(
    grid: &Grid<'_>,
    nodules: &[Nodule],
    segments: &[Segment],
    n_negatives: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<Candidate> {
    let mut out = Vec::new();
    for n in nodules {
        // Detector-like jitter of a quarter radius at most, as LUNA16's positives have.
        let jitter = n.diameter_mm / 8.0;
        let center = n.center.map(|c| c + rng.gen_range(-jitter..=jitter));
        out.push(Candidate { center, class: 1 });
    }
    let vessels: Vec<&Segment> = segments
        .iter()
        .filter(|s| s.vessel && s.radius > 0.8)
        .collect();
    let g = grid.geometry;
    let lo = [0, 1, 2].map(|a| g.origin[a]);
    let hi = [0, 1, 2].map(|a| g.world(a, g.dims[a] - 1));
    let far_from_nodules = |p: [f64; 3]| {
        nodules
            .iter()
            .all(|n| norm(sub(n.center, p)) > n.diameter_mm + 5.0)
    };
    let mut attempts = 0;
    let mut negatives = 0;
    while negatives < n_negatives && attempts < 200 * (n_negatives + 1) {
        attempts += 1;
        let p = if negatives % 2 == 0 && !vessels.is_empty() {
            let s = vessels[rng.gen_range(0..vessels.len())];
            add(s.a, scale(sub(s.b, s.a), rng.r#gen::<f64>()))
        } else {
            [0, 1, 2].map(|a| rng.gen_range(lo[a]..hi[a]))
        };
        if grid.label_at(p) == Some(Tissue::Lung as u8) && far_from_nodules(p) {
            out.push(Candidate {
                center: p,
                class: 0,
            });
            negatives += 1;
        }
    }
    out
}

/// Adds white Gaussian-like noise of `sd` HU, then a [1 2 1]/4 blur along x and y, which
/// correlates it like a reconstruction kernel (the blur divides the sd by about 2.7).
fn add_noise_and_blur(g: &Geometry, values: &mut [f32], seed: u64, sd: f32) {
    let [nx, ny, _] = g.dims;
    let plane = nx * ny;
    values
        .par_chunks_mut(plane)
        .enumerate()
        .for_each(|(k, slab)| {
            let mut state = mix(seed ^ mix(k as u64));
            for v in slab.iter_mut() {
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let bits = mix(state);
                // Sum of four 16-bit uniforms: mean 2, variance 4/12; close to Gaussian.
                let sum: f32 = (0..4)
                    .map(|q| ((bits >> (16 * q)) & 0xffff) as f32 / 65535.0)
                    .sum();
                *v += (sum - 2.0) * sd * 1.732;
            }
            let mut row = vec![0.0f32; nx.max(ny)];
            for j in 0..ny {
                let line = &mut slab[j * nx..(j + 1) * nx];
                row[..nx].copy_from_slice(line);
                for i in 0..nx {
                    let (l, r) = (row[i.saturating_sub(1)], row[(i + 1).min(nx - 1)]);
                    line[i] = 0.25 * l + 0.5 * row[i] + 0.25 * r;
                }
            }
            for i in 0..nx {
                for j in 0..ny {
                    row[j] = slab[i + nx * j];
                }
                for j in 0..ny {
                    let (u, d) = (row[j.saturating_sub(1)], row[(j + 1).min(ny - 1)]);
                    slab[i + nx * j] = 0.25 * u + 0.5 * row[j] + 0.25 * d;
                }
            }
        });
}

fn add(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}
fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}
fn scale(a: [f64; 3], s: f64) -> [f64; 3] {
    [a[0] * s, a[1] * s, a[2] * s]
}
fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}
fn norm(a: [f64; 3]) -> f64 {
    dot(a, a).sqrt()
}
fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}
fn normalize(a: [f64; 3]) -> [f64; 3] {
    let n = norm(a);
    if n < 1e-12 {
        [1.0, 0.0, 0.0]
    } else {
        scale(a, 1.0 / n)
    }
}
fn random_perpendicular(d: [f64; 3], rng: &mut ChaCha8Rng) -> [f64; 3] {
    let r = [
        rng.gen_range(-1.0..1.0),
        rng.gen_range(-1.0..1.0),
        rng.gen_range(-1.0..1.0),
    ];
    let p = cross(d, r);
    if norm(p) < 1e-6 {
        normalize(cross(d, [0.0, 1.0, 0.0]))
    } else {
        normalize(p)
    }
}
fn perturb(d: [f64; 3], amount: f64, rng: &mut ChaCha8Rng) -> [f64; 3] {
    let r = [
        rng.gen_range(-1.0..1.0),
        rng.gen_range(-1.0..1.0),
        rng.gen_range(-1.0..1.0),
    ];
    normalize(add(d, scale(r, amount)))
}
/// Rodrigues' rotation of `v` about the unit `axis` by `angle` radians.
fn rotate(v: [f64; 3], axis: [f64; 3], angle: f64) -> [f64; 3] {
    let (s, c) = angle.sin_cos();
    let term1 = scale(v, c);
    let term2 = scale(cross(axis, v), s);
    let term3 = scale(axis, dot(axis, v) * (1.0 - c));
    normalize(add(add(term1, term2), term3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(n: usize) -> PhantomConfig {
        PhantomConfig::new(n, PhantomSize::Small, 7)
    }

    #[test]
    fn scans_are_deterministic_and_lung_like() {
        let config = small(1);
        let a = generate_scan(&config, 0).unwrap();
        let b = generate_scan(&config, 0).unwrap();
        assert_eq!(a.volume.data, b.volume.data);
        assert_eq!(a.nodules, b.nodules);
        let [nx, ny, nz] = a.volume.shape();
        assert_eq!((nx, ny), (288, 288));
        assert!((100..=140).contains(&nz));
        let n = a.labels.len() as f64;
        let lung = a
            .labels
            .iter()
            .filter(|&&l| l == Tissue::Lung as u8)
            .count() as f64
            / n;
        let bone = a
            .labels
            .iter()
            .filter(|&&l| l == Tissue::Bone as u8)
            .count() as f64
            / n;
        assert!(lung > 0.08, "lung fraction {lung}");
        assert!(bone > 0.005 && bone < 0.1, "bone fraction {bone}");
        let (lo, hi) = a.volume.value_range().unwrap();
        assert!(lo < -950.0 && hi > 300.0, "{lo} {hi}");
        assert!(!a.nodules.is_empty());
        assert!(a.candidates.iter().any(|c| c.class == 0));
    }

    #[test]
    fn nodules_are_dense_spheres_inside_the_lungs() {
        let scan = generate_scan(&small(2), 1).unwrap();
        for n in &scan.nodules {
            assert!((3.0..=30.0).contains(&n.diameter_mm));
            let v = scan.volume.world_to_voxel(n.center);
            let idx = v.map(|c| c.round() as usize);
            assert_eq!(scan.labels[idx], Tissue::Nodule as u8);
            if n.kind == NoduleKind::Solid && n.diameter_mm > 5.0 {
                assert!(scan.volume.data[idx] > -100.0, "{}", scan.volume.data[idx]);
            }
        }
    }
}
