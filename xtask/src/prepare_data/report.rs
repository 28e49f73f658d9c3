//! Pictures and numbers for the docs: a montage of phantom slices with nodule outlines,
//! and the phantom-versus-real comparison (HU histogram, tissue fractions, share of
//! random 64×64×32 windows passing the original's lung test, a side-by-side PNG).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use genesis_io::{Interpolation, Volume};
use genesis_transforms::{ExtractConfig, extract_cubes, scan_rng};
use image::{Rgb, RgbImage};

use super::PrepareDataArgs;
use super::pack::{find_scans, find_subsets};
use super::phantom::{PhantomConfig, generate_scan};
use super::tasks::{Point, read_points};

/// Display window for pictures (lung window, HU).
const DISPLAY: (f32, f32) = (-1200.0, 300.0);
/// Panel size of the pictures, pixels.
const PANEL: usize = 240;

/// HU classes of the comparison table: upper bounds, names.
const CLASSES: [(f32, &str); 6] = [
    (-950.0, "air (< -950)"),
    (-500.0, "lung (-950..-500)"),
    (-200.0, "mixed (-500..-200)"),
    (-30.0, "fat (-200..-30)"),
    (150.0, "soft tissue (-30..150)"),
    (f32::INFINITY, "bone (>= 150)"),
];

/// Statistics of one volume.
#[derive(Debug, Clone)]
pub struct VolumeStats {
    /// Name for the table.
    pub name: String,
    /// Shape and spacing, for the table.
    pub shape: [usize; 3],
    /// Spacing in mm.
    pub spacing: [f64; 3],
    /// Fraction of voxels per entry of [`CLASSES`].
    pub classes: [f64; 6],
    /// Fraction of voxels per 100-HU bin from -1000 to 500 (15 bins; the ends are open).
    pub histogram: [f64; 15],
    /// Share of random windows passing the lung test, and the number drawn.
    pub window_pass: (f64, usize),
}

/// Computes [`VolumeStats`]; the window test runs on a copy resampled to 2 mm slices when
/// the slices are thicker than 2.5 mm (the real CTs have 5 mm slices).
pub fn volume_stats(name: &str, volume: &Volume, seed: u64) -> Result<VolumeStats> {
    let n = volume.data.len().max(1) as f64;
    let mut classes = [0usize; 6];
    let mut histogram = [0usize; 15];
    for &v in &volume.data {
        let class = CLASSES
            .iter()
            .position(|(upper, _)| v < *upper)
            .unwrap_or(5);
        classes[class] += 1;
        let bin = ((v + 1000.0) / 100.0).floor().clamp(0.0, 14.0) as usize;
        histogram[bin] += 1;
    }
    let resampled;
    let for_windows = if volume.spacing[2] > 2.5 {
        let target = [volume.spacing[0], volume.spacing[1], 2.0];
        resampled = genesis_io::resample(volume, target, Interpolation::Linear)
            .context("resampling for the window test")?;
        &resampled
    } else {
        volume
    };
    let draws = 300;
    let mut config = ExtractConfig::paper();
    config.scale = draws;
    config.max_draws_factor = 1;
    let accepted = extract_cubes(for_windows.data.view(), &config, &mut scan_rng(seed, 0))
        .with_context(|| format!("{name}: window test"))?
        .len();
    Ok(VolumeStats {
        name: name.to_string(),
        shape: volume.shape(),
        spacing: volume.spacing,
        classes: classes.map(|c| c as f64 / n),
        histogram: histogram.map(|c| c as f64 / n),
        window_pass: (accepted as f64 / draws as f64, draws),
    })
}

/// Markdown tables of the statistics.
pub fn stats_table(stats: &[VolumeStats]) -> String {
    let mut md = String::new();
    md.push_str("| volume | shape | spacing (mm) |");
    for (_, name) in CLASSES {
        md.push_str(&format!(" {name} |"));
    }
    md.push_str(" windows passing the lung test |\n|---|---|---|");
    md.push_str(&"---|".repeat(CLASSES.len() + 1));
    md.push('\n');
    for s in stats {
        md.push_str(&format!(
            "| {} | {}×{}×{} | {:.2}×{:.2}×{:.2} |",
            s.name, s.shape[0], s.shape[1], s.shape[2], s.spacing[0], s.spacing[1], s.spacing[2]
        ));
        for c in s.classes {
            md.push_str(&format!(" {:.1}% |", 100.0 * c));
        }
        md.push_str(&format!(
            " {:.1}% of {} |\n",
            100.0 * s.window_pass.0,
            s.window_pass.1
        ));
    }
    md.push_str("\nHU histogram (share of voxels per 100-HU bin; first and last bins open):\n\n| bin (HU) |");
    for s in stats {
        md.push_str(&format!(" {} |", s.name));
    }
    md.push_str("\n|---|");
    md.push_str(&"---|".repeat(stats.len()));
    md.push('\n');
    for bin in 0..15 {
        let lo = -1000 + 100 * bin as i32;
        let label = match bin {
            0 => "< -900".to_string(),
            14 => ">= 400".to_string(),
            _ => format!("{lo}..{}", lo + 100),
        };
        md.push_str(&format!("| {label} |"));
        for s in stats {
            md.push_str(&format!(" {:.1}% |", 100.0 * s.histogram[bin]));
        }
        md.push('\n');
    }
    md
}

/// `--compare-real DIR`: phantom scans against the real CTs in `DIR`.
pub fn compare_real(args: &PrepareDataArgs, real_dir: &Path) -> Result<()> {
    let mut real_paths: Vec<PathBuf> = std::fs::read_dir(real_dir)
        .with_context(|| format!("cannot read {}", real_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_ascii_lowercase())
                .unwrap_or_default();
            (name.ends_with(".nrrd") || name.ends_with(".mhd") || name.ends_with(".nii.gz"))
                && !name.contains("label")
        })
        .collect();
    real_paths.sort();
    if real_paths.is_empty() {
        bail!(
            "{}: no real CT volumes (*.nrrd, *.mhd, *.nii.gz without \"label\" in the name)",
            real_dir.display()
        );
    }
    let config = PhantomConfig::new(args.scans.clamp(1, 3), args.size, args.seed);
    let mut stats = Vec::new();
    let mut phantom_slice = None;
    for index in 0..config.n_scans {
        let scan = generate_scan(&config, index)?;
        stats.push(volume_stats(
            &format!("phantom {index}"),
            &scan.volume,
            args.seed,
        )?);
        if phantom_slice.is_none() {
            phantom_slice = Some(render_axial(
                &scan.volume,
                lungiest_slice(&scan.volume),
                &[],
            ));
        }
    }
    let mut real_slice = None;
    for path in &real_paths {
        let volume = genesis_io::read_volume(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        stats.push(volume_stats(&name, &volume, args.seed)?);
        if real_slice.is_none() {
            real_slice = Some(render_axial(&volume, lungiest_slice(&volume), &[]));
        }
    }
    println!("{}", stats_table(&stats));
    if let (Some(out), Some(left), Some(right)) = (&args.figure, phantom_slice, real_slice) {
        let gap = 4;
        let mut image =
            RgbImage::from_pixel((2 * PANEL + gap) as u32, PANEL as u32, Rgb([255, 255, 255]));
        image::imageops::replace(&mut image, &left, 0, 0);
        image::imageops::replace(&mut image, &right, (PANEL + gap) as i64, 0);
        save_png(&image, out)?;
    }
    Ok(())
}

/// The axial slice with the most lung-range voxels.
fn lungiest_slice(volume: &Volume) -> usize {
    let nz = volume.shape()[2];
    (0..nz)
        .max_by_key(|&k| {
            volume
                .data
                .index_axis(ndarray::Axis(2), k)
                .iter()
                .filter(|&&v| (-950.0..-500.0).contains(&v))
                .count()
        })
        .unwrap_or(0)
}

/// An axial slice as a `PANEL`² RGB image (x to the right, y down: the radiological
/// view), with red circles where the given nodules cut the slice.
fn render_axial(volume: &Volume, k: usize, nodules: &[Point]) -> RgbImage {
    let [nx, ny, _] = volume.shape();
    let side = nx.max(ny) as f64;
    let mut image = RgbImage::new(PANEL as u32, PANEL as u32);
    let step = side / PANEL as f64;
    for (px, py, pixel) in image.enumerate_pixels_mut() {
        // Average the source pixels this output pixel covers.
        let (x0, y0) = ((px as f64 * step) as usize, (py as f64 * step) as usize);
        let (x1, y1) = (
            (((px + 1) as f64 * step) as usize).max(x0 + 1),
            (((py + 1) as f64 * step) as usize).max(y0 + 1),
        );
        let (mut sum, mut count) = (0.0f32, 0usize);
        for x in x0..x1.min(nx) {
            for y in y0..y1.min(ny) {
                sum += volume.data[[x, y, k]];
                count += 1;
            }
        }
        let hu = if count > 0 {
            sum / count as f32
        } else {
            DISPLAY.0
        };
        // 32 grey levels: enough for the eye, and noisy pictures compress several times better.
        let g =
            (((hu - DISPLAY.0) / (DISPLAY.1 - DISPLAY.0)).clamp(0.0, 1.0) * 31.0).round() as u8 * 8;
        *pixel = Rgb([g, g, g]);
    }
    for n in nodules {
        let v = volume.world_to_voxel(n.center);
        let dz = (k as f64 - v[2]) * volume.spacing[2];
        let r = (n.diameter_mm / 2.0).powi(2) - dz * dz;
        if r <= 0.0 {
            continue;
        }
        // Outline a little outside the nodule so it stays visible.
        let radius_px = (r.sqrt() / volume.spacing[0] + 3.0) / step;
        let (cx, cy) = (v[0] / step, v[1] / step);
        for t in 0..720 {
            let a = t as f64 * std::f64::consts::PI / 360.0;
            let (x, y) = (cx + radius_px * a.cos(), cy + radius_px * a.sin());
            if x >= 0.0 && y >= 0.0 && (x as usize) < PANEL && (y as usize) < PANEL {
                image.put_pixel(x as u32, y as u32, Rgb([230, 30, 30]));
            }
        }
    }
    image
}

/// `--montage OUT.png`: six axial slices of one phantom scan (through its nodules first),
/// nodules outlined in red. Reads the first scan with nodules from `--dir` when it holds
/// a phantom (or any LUNA16 tree), else generates one in memory.
pub fn montage(args: &PrepareDataArgs, out: &Path) -> Result<()> {
    let (volume, nodules) = match first_annotated_scan(&args.dir)? {
        Some(found) => found,
        None => {
            let config = PhantomConfig::new(1, args.size, args.seed);
            let scan = generate_scan(&config, 0)?;
            let nodules = scan
                .nodules
                .iter()
                .map(|n| Point {
                    center: n.center,
                    diameter_mm: n.diameter_mm,
                    class: 1,
                })
                .collect();
            (scan.volume, nodules)
        }
    };
    let nz = volume.shape()[2];
    let mut slices: Vec<usize> = nodules
        .iter()
        .map(|n| {
            volume.world_to_voxel(n.center)[2]
                .round()
                .clamp(0.0, (nz - 1) as f64) as usize
        })
        .collect();
    slices.sort_unstable();
    slices.dedup();
    slices.truncate(6);
    let mut k = 1;
    while slices.len() < 6 && k < 7 {
        let z = nz * k / 7;
        if !slices.contains(&z) {
            slices.push(z);
        }
        k += 1;
    }
    slices.sort_unstable();
    let (cols, rows, gap) = (3usize, slices.len().div_ceil(3), 4usize);
    let mut image = RgbImage::from_pixel(
        (cols * PANEL + (cols - 1) * gap) as u32,
        (rows * PANEL + (rows - 1) * gap) as u32,
        Rgb([255, 255, 255]),
    );
    for (i, &k) in slices.iter().enumerate() {
        let panel = render_axial(&volume, k, &nodules);
        let (c, r) = (i % cols, i / cols);
        image::imageops::replace(
            &mut image,
            &panel,
            (c * (PANEL + gap)) as i64,
            (r * (PANEL + gap)) as i64,
        );
    }
    save_png(&image, out)?;
    eprintln!(
        "montage: {} (slices {slices:?}, {} nodules)",
        out.display(),
        nodules.len()
    );
    Ok(())
}

fn first_annotated_scan(dir: &Path) -> Result<Option<(Volume, Vec<Point>)>> {
    let annotations = dir.join("annotations.csv");
    if !annotations.is_file() {
        return Ok(None);
    }
    let points = read_points(&annotations, true)?;
    for subset_dir in find_subsets(dir)?.values() {
        for path in find_scans(subset_dir)? {
            let uid = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Some(nodules) = points.get(&uid).filter(|n| !n.is_empty()) {
                let volume = genesis_io::read_volume(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                return Ok(Some((volume, nodules.clone())));
            }
        }
    }
    Ok(None)
}

fn save_png(image: &RgbImage, out: &Path) -> Result<()> {
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        genesis_io::create_dir_all(parent)?;
    }
    let file =
        std::fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let encoder = image::codecs::png::PngEncoder::new_with_quality(
        std::io::BufWriter::new(file),
        image::codecs::png::CompressionType::Best,
        image::codecs::png::FilterType::Adaptive,
    );
    image
        .write_with_encoder(encoder)
        .with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prepare_data::phantom::PhantomSize;

    #[test]
    fn small_phantom_windows_pass_the_lung_test() {
        let scan = generate_scan(&PhantomConfig::new(1, PhantomSize::Small, 2), 0).unwrap();
        let stats = volume_stats("p", &scan.volume, 1).unwrap();
        assert!(
            stats.window_pass.0 > 0.05,
            "pass share {}",
            stats.window_pass.0
        );
        assert!((stats.classes.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert!(stats.classes[1] > 0.1, "lung share {}", stats.classes[1]);
        let table = stats_table(&[stats]);
        assert!(table.contains("| p |"));
        let panel = render_axial(&scan.volume, lungiest_slice(&scan.volume), &[]);
        assert_eq!(panel.dimensions(), (PANEL as u32, PANEL as u32));
    }
}
