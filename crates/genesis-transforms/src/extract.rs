//! Cube extraction from CT scans (the original's `infinite_generator_from_one_volume` in
//! `infinite_generator_3D.py`).

use ndarray::{Array3, ArrayView3, ArrayViewMut3, s};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::flip::dim3;
use crate::rng::{CubeRng, scan_rng};
use crate::{Error, Result};

/// How cubes are cut from a scan. `Default` and [`ExtractConfig::paper`] are the
/// original's LUNA16 settings.
///
/// The original's `lung_min` (0.7) is never used by its code and has no field here.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExtractConfig {
    /// Lower end of the HU window (-1000); maps to 0.
    pub hu_min: f32,
    /// Upper end of the HU window (1000); maps to 1.
    pub hu_max: f32,
    /// Crop size along x before resizing (64).
    pub crop_rows: usize,
    /// Crop size along y before resizing (64).
    pub crop_cols: usize,
    /// Cube size along x (64).
    pub input_rows: usize,
    /// Cube size along y (64).
    pub input_cols: usize,
    /// Cube size along z (32); the crop is `input_deps + len_depth` deep.
    pub input_deps: usize,
    /// Extra depth looked at by the lung score (3); at least 2.
    pub len_depth: usize,
    /// Margin kept from the x and y faces of the scan (100).
    pub border: usize,
    /// Margin kept from the z faces of the scan (30).
    pub border_z: usize,
    /// A window is rejected when its score exceeds `lung_max * rows * cols * deps`
    /// (0.15): it keeps cubes that are mostly lung.
    pub lung_max: f64,
    /// At most this many cubes per scan (32).
    pub scale: usize,
    /// At most `max_draws_factor * scale` windows are drawn per scan (50).
    pub max_draws_factor: usize,
    /// The HU value from which a voxel counts as tissue in the score (-150).
    pub threshold_hu: f32,
}

impl Default for ExtractConfig {
    fn default() -> Self {
        Self::paper()
    }
}

impl ExtractConfig {
    /// The original's settings for LUNA16.
    pub fn paper() -> Self {
        Self {
            hu_min: -1000.0,
            hu_max: 1000.0,
            crop_rows: 64,
            crop_cols: 64,
            input_rows: 64,
            input_cols: 64,
            input_deps: 32,
            len_depth: 3,
            border: 100,
            border_z: 30,
            lung_max: 0.15,
            scale: 32,
            max_draws_factor: 50,
            threshold_hu: -150.0,
        }
    }

    /// Checks the values that would make extraction meaningless.
    pub fn validate(&self) -> Result<()> {
        let invalid = |field: &'static str, reason: &str| {
            Err(Error::InvalidConfig {
                field,
                reason: reason.to_string(),
            })
        };
        if !(self.hu_min.is_finite() && self.hu_max.is_finite() && self.hu_min < self.hu_max) {
            return invalid("hu_min", "the HU window needs finite hu_min < hu_max");
        }
        if self.len_depth < 2 {
            return invalid(
                "len_depth",
                "must be at least 2 (the score divides by len_depth - 1)",
            );
        }
        for (field, value) in [
            ("crop_rows", self.crop_rows),
            ("crop_cols", self.crop_cols),
            ("input_rows", self.input_rows),
            ("input_cols", self.input_cols),
            ("input_deps", self.input_deps),
            ("scale", self.scale),
            ("max_draws_factor", self.max_draws_factor),
        ] {
            if value == 0 {
                return invalid(field, "must be at least 1");
            }
        }
        if self.lung_max.is_nan() {
            return invalid("lung_max", "must be a number");
        }
        if self.threshold_hu.is_nan() {
            return invalid("threshold_hu", "must be a number");
        }
        Ok(())
    }

    /// `hu` clipped to the window and scaled to `[0, 1]`.
    #[inline]
    fn scale_hu(&self, hu: f32) -> f32 {
        (hu.clamp(self.hu_min, self.hu_max) - self.hu_min) / (self.hu_max - self.hu_min)
    }
}

/// Cuts up to `config.scale` cubes from one scan in HU, indexed (x, y, z), in any memory
/// layout.
///
/// Returns cubes of shape (input_rows, input_cols, input_deps) with values in `[0, 1]`;
/// an empty list when the scan is too shallow in z (the original's skip rule
/// `size_z - deps - len_depth - 1 - border_z < border_z`) or no window passed the lung
/// score within `max_draws_factor * scale` draws. Errors for an invalid config, a scan
/// too small in x or y for crop and border (where the original raises), or a drawn
/// window containing NaN.
///
/// When the crop size differs from the input size each depth slice is resized with
/// bilinear interpolation (pixel centres aligned, edges clamped), which is
/// `skimage.transform.resize` with `order=1` minus its anti-aliasing filter.
pub fn extract_cubes(
    scan_hu: ArrayView3<'_, f32>,
    config: &ExtractConfig,
    rng: &mut CubeRng,
) -> Result<Vec<Array3<f32>>> {
    config.validate()?;
    let shape = dim3(scan_hu.dim());
    let [size_x, size_y, size_z] = shape;
    let c = config;
    let window_deps = c.input_deps + c.len_depth;
    // Skip rule, written without underflow: size_z - deps - len_depth - 1 - border_z < border_z.
    if size_z < window_deps + 1 + 2 * c.border_z {
        return Ok(Vec::new());
    }
    for (axis, size, crop) in [("x", size_x, c.crop_rows), ("y", size_y, c.crop_cols)] {
        if size < crop + 1 + 2 * c.border {
            return Err(Error::ScanTooSmall {
                shape,
                reason: format!(
                    "size_{axis} = {size} is below crop {crop} + 1 + 2 * border {}",
                    c.border
                ),
            });
        }
    }
    let x_max = size_x - c.crop_rows - 1 - c.border;
    let y_max = size_y - c.crop_cols - 1 - c.border;
    let z_max = size_z - window_deps - 1 - c.border_z;

    let threshold = c.scale_hu(c.threshold_hu);
    let n_cube = c.input_rows * c.input_cols * c.input_deps;
    // Score in whole steps: sum of (len_depth - 1 - k), compared without rounding.
    let steps = (c.len_depth - 1) as f64;
    let limit = c.lung_max * n_cube as f64 * steps;

    let mut crop = Array3::<f32>::zeros((c.crop_rows, c.crop_cols, window_deps));
    let needs_resize = c.crop_rows != c.input_rows || c.crop_cols != c.input_cols;
    let mut resized = Array3::<f32>::zeros(if needs_resize {
        (c.input_rows, c.input_cols, window_deps)
    } else {
        (0, 0, 0)
    });
    let mut cubes = Vec::new();
    for _ in 0..c.max_draws_factor * c.scale {
        if cubes.len() == c.scale {
            break;
        }
        let x = rng.randint(c.border, x_max);
        let y = rng.randint(c.border, y_max);
        let z = rng.randint(c.border_z, z_max);
        let source = scan_hu.slice(s![
            x..x + c.crop_rows,
            y..y + c.crop_cols,
            z..z + window_deps
        ]);
        crop.assign(&source);
        if let Some(flat) = crop.iter().position(|v| v.is_nan()) {
            let (i, rest) = (
                flat / (c.crop_cols * window_deps),
                flat % (c.crop_cols * window_deps),
            );
            let (j, k) = (rest / window_deps, rest % window_deps);
            return Err(Error::NanInScan {
                index: [x + i, y + j, z + k],
            });
        }
        crop.mapv_inplace(|hu| c.scale_hu(hu));
        let window = if needs_resize {
            resize_bilinear(crop.view(), resized.view_mut());
            resized.view()
        } else {
            crop.view()
        };
        if lung_score_exceeds(window, c.input_deps, c.len_depth, threshold, limit) {
            continue;
        }
        cubes.push(window.slice(s![.., .., ..c.input_deps]).to_owned());
    }
    Ok(cubes)
}

/// Whether `sum over (i, j, d < deps) of (len_depth - 1 - k)` exceeds `limit`, where `k`
/// is the first offset in `0..len_depth` with `window[i, j, d + k] >= threshold`, or
/// `len_depth - 1` if none. (The original's score is this sum over `len_depth - 1`.)
/// Stops as soon as the limit is passed.
pub(crate) fn lung_score_exceeds(
    window: ArrayView3<'_, f32>,
    deps: usize,
    len_depth: usize,
    threshold: f32,
    limit: f64,
) -> bool {
    let mut sum = 0u64;
    let limit_steps = if limit < 0.0 { -1.0 } else { limit };
    for row in window.rows() {
        let mut row_sum = 0u64;
        for d in 0..deps {
            let k = (0..len_depth)
                .find(|&k| row[d + k] >= threshold)
                .unwrap_or(len_depth - 1);
            row_sum += (len_depth - 1 - k) as u64;
        }
        sum += row_sum;
        if sum as f64 > limit_steps {
            return true;
        }
    }
    false
}

/// Bilinear resize of each depth slice from `src`'s (rows, cols) to `dst`'s, with pixel
/// centres aligned and coordinates clamped at the edges.
fn resize_bilinear(src: ArrayView3<'_, f32>, mut dst: ArrayViewMut3<'_, f32>) {
    let (src_rows, src_cols, deps) = src.dim();
    let (dst_rows, dst_cols, _) = dst.dim();
    let coordinate = |out: usize, n_src: usize, n_dst: usize| {
        let pos =
            ((out as f64 + 0.5) * n_src as f64 / n_dst as f64 - 0.5).clamp(0.0, (n_src - 1) as f64);
        let lo = pos.floor() as usize;
        (lo, (lo + 1).min(n_src - 1), (pos - lo as f64) as f32)
    };
    for i in 0..dst_rows {
        let (x0, x1, fx) = coordinate(i, src_rows, dst_rows);
        for j in 0..dst_cols {
            let (y0, y1, fy) = coordinate(j, src_cols, dst_cols);
            for k in 0..deps {
                let top = src[(x0, y0, k)] * (1.0 - fy) + src[(x0, y1, k)] * fy;
                let bottom = src[(x1, y0, k)] * (1.0 - fy) + src[(x1, y1, k)] * fy;
                dst[(i, j, k)] = top * (1.0 - fx) + bottom * fx;
            }
        }
    }
}

/// [`extract_cubes`] over many scans in parallel (rayon over scans); scan `i` uses
/// [`scan_rng`]`(seed, i)`, so the result does not depend on the thread count. Returns
/// one list of cubes per scan, in order; fails on the first scan that errors.
pub fn extract_cubes_par(
    scans: &[ArrayView3<'_, f32>],
    config: &ExtractConfig,
    seed: u64,
) -> Result<Vec<Vec<Array3<f32>>>> {
    scans
        .par_iter()
        .enumerate()
        .map(|(i, scan)| extract_cubes(scan.view(), config, &mut scan_rng(seed, i as u64)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cube_rng;
    use ndarray::Array3;

    /// A scan of air-filled "lung" (-850 HU) with a tissue block (40 HU) in one corner.
    fn synthetic_scan(shape: (usize, usize, usize)) -> Array3<f32> {
        Array3::from_shape_fn(
            shape,
            |(x, y, _)| if x >= 160 && y >= 160 { 40.0 } else { -850.0 },
        )
    }

    /// The original's loop-based score, for comparison.
    fn reference_score(
        window: ArrayView3<'_, f32>,
        deps: usize,
        len_depth: usize,
        thr: f32,
    ) -> f64 {
        let (rows, cols, _) = window.dim();
        let mut total = 0.0;
        for d in 0..deps {
            for i in 0..rows {
                for j in 0..cols {
                    let mut depth = len_depth - 1;
                    for k in 0..len_depth {
                        if window[(i, j, d + k)] >= thr {
                            depth = k;
                            break;
                        }
                    }
                    total += 1.0 - depth as f64 / (len_depth - 1) as f64;
                }
            }
        }
        total
    }

    #[test]
    fn accepted_cubes_pass_the_score_and_are_scaled() {
        let scan = synthetic_scan((300, 300, 120));
        let config = ExtractConfig::paper();
        let mut rng = cube_rng(0, 0, 0);
        let cubes = extract_cubes(scan.view(), &config, &mut rng).unwrap();
        assert_eq!(cubes.len(), 32);
        for cube in &cubes {
            assert_eq!(cube.dim(), (64, 64, 32));
            assert!(cube.iter().all(|v| (0.0..=1.0).contains(v)));
            // The cube itself is its window's first 32 slices; the scan is constant in z,
            // so the score of the cube's own rows plus 3 repeated slices is the window's.
            let mut window = Array3::zeros((64, 64, 35));
            window.slice_mut(s![.., .., ..32]).assign(cube);
            window
                .slice_mut(s![.., .., 32..])
                .assign(&cube.slice(s![.., .., ..3]));
            let score = reference_score(window.view(), 32, 3, config.scale_hu(-150.0));
            assert!(score <= 0.15 * 64.0 * 64.0 * 32.0, "{score}");
        }
        assert!((cubes[0][(0, 0, 0)] - 0.075).abs() < 1e-6);
    }

    #[test]
    fn score_matches_the_original_loops_and_rejects_tissue() {
        let mut rng = cube_rng(3, 0, 0);
        let thr = ExtractConfig::paper().scale_hu(-150.0);
        for _ in 0..20 {
            let tissue = rng.uniform();
            let window = Array3::from_shape_fn((16, 16, 11), |_| {
                if rng.uniform() < tissue { 0.6 } else { 0.05 }
            });
            let score = reference_score(window.view(), 8, 3, thr);
            for limit in [score - 0.5, score, score + 0.5] {
                let exceeds = lung_score_exceeds(window.view(), 8, 3, thr, limit * 2.0);
                assert_eq!(exceeds, score > limit, "score {score} limit {limit}");
            }
        }
        // A scan that is all tissue yields no cubes.
        let scan = Array3::from_elem((300, 300, 120), 40.0f32);
        let cubes = extract_cubes(scan.view(), &ExtractConfig::paper(), &mut rng).unwrap();
        assert!(cubes.is_empty());
    }

    #[test]
    fn skip_rule_and_errors() {
        let config = ExtractConfig::paper();
        let mut rng = cube_rng(0, 0, 0);
        // Skip when size_z - 32 - 3 - 1 - 30 < 30, i.e. size_z < 96.
        let shallow = Array3::from_elem((300, 300, 95), -850.0f32);
        assert!(
            extract_cubes(shallow.view(), &config, &mut rng)
                .unwrap()
                .is_empty()
        );
        let just_deep = Array3::from_elem((300, 300, 96), -850.0f32);
        assert_eq!(
            extract_cubes(just_deep.view(), &config, &mut rng)
                .unwrap()
                .len(),
            32
        );
        let narrow = Array3::from_elem((264, 300, 120), -850.0f32);
        let err = extract_cubes(narrow.view(), &config, &mut rng).unwrap_err();
        assert!(err.to_string().contains("size_x = 264"), "{err}");
        let mut nan = Array3::from_elem((265, 265, 96), -850.0f32);
        nan.slice_mut(s![100..165, 100..165, 30..65]).fill(f32::NAN);
        let err = extract_cubes(nan.view(), &config, &mut rng).unwrap_err();
        assert!(matches!(err, Error::NanInScan { .. }), "{err}");
        let bad = ExtractConfig {
            len_depth: 1,
            ..config
        };
        assert!(extract_cubes(just_deep.view(), &bad, &mut rng).is_err());
    }

    #[test]
    fn resizes_when_crop_differs_and_works_on_any_layout() {
        let config = ExtractConfig {
            crop_rows: 48,
            crop_cols: 80,
            ..ExtractConfig::paper()
        };
        let scan = Array3::from_shape_fn((300, 300, 100), |(x, y, z)| {
            -900.0 + ((x + y + z) % 7) as f32
        });
        let mut rng = cube_rng(1, 0, 0);
        let cubes = extract_cubes(scan.view(), &config, &mut rng).unwrap();
        assert_eq!(cubes.len(), 32);
        assert!(cubes.iter().all(|c| c.dim() == (64, 64, 32)));
        // Fortran-order scan gives the same cubes for the same stream.
        let fortran = scan.t().as_standard_layout().into_owned();
        let fortran = fortran.t();
        let again = extract_cubes(fortran, &config, &mut cube_rng(1, 0, 0)).unwrap();
        assert_eq!(cubes, again);
    }

    #[test]
    fn parallel_extraction_is_deterministic() {
        let scans: Vec<Array3<f32>> = (0..3).map(|_| synthetic_scan((280, 280, 100))).collect();
        let views: Vec<_> = scans.iter().map(|s| s.view()).collect();
        let config = ExtractConfig {
            scale: 4,
            ..ExtractConfig::paper()
        };
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let two = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let a = one
            .install(|| extract_cubes_par(&views, &config, 9))
            .unwrap();
        let b = two
            .install(|| extract_cubes_par(&views, &config, 9))
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 3);
        assert_ne!(a[0], a[1]);
    }
}
