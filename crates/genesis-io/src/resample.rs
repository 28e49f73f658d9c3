//! Resampling to a target voxel spacing.

use ndarray::{Array3, ArrayView3};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::volume::Volume;

/// How to interpolate when resampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Interpolation {
    /// Trilinear, for images.
    Linear,
    /// Nearest neighbour, for label masks.
    Nearest,
}

/// Resamples `volume` to `target_spacing` (mm), keeping origin, direction,
/// physical extent and element type.
///
/// The output has `round(n · spacing / target_spacing)` voxels per axis (at
/// least 1); output voxel `i` samples input position `i · target / spacing`,
/// so voxel (0, 0, 0) stays at the origin. Positions past the last input voxel
/// take the edge value.
pub fn resample(
    volume: &Volume,
    target_spacing: [f64; 3],
    interpolation: Interpolation,
) -> Result<Volume> {
    if target_spacing.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(Error::InvalidArgument(format!(
            "target spacing {target_spacing:?} must be finite and positive"
        )));
    }
    if volume.spacing.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(Error::InvalidArgument(format!(
            "volume spacing {:?} must be finite and positive",
            volume.spacing
        )));
    }
    let in_shape = volume.shape();
    let mut out_shape = [0usize; 3];
    let mut step = [0f64; 3];
    for a in 0..3 {
        let n = (in_shape[a] as f64 * volume.spacing[a] / target_spacing[a]).round();
        if n > crate::raw::MAX_VOXELS as f64 {
            return Err(Error::InvalidArgument(format!(
                "resampled axis {a} would have {n} voxels"
            )));
        }
        out_shape[a] = (n as usize).max(1);
        step[a] = target_spacing[a] / volume.spacing[a];
    }
    let voxels = out_shape
        .iter()
        .try_fold(1u64, |acc, &n| acc.checked_mul(n as u64));
    if voxels.is_none_or(|v| v > crate::raw::MAX_VOXELS) || in_shape.contains(&0) {
        return Err(Error::InvalidArgument(format!(
            "cannot resample shape {in_shape:?} to {out_shape:?}"
        )));
    }

    let input = volume.data.view();
    let mut data = Array3::<f32>::zeros(out_shape);
    let plane_len = out_shape[1] * out_shape[2];
    if let Some(out) = data.as_slice_mut() {
        out.par_chunks_mut(plane_len)
            .enumerate()
            .for_each(|(ox, plane)| {
                let (x0, x1, fx) = sample_axis(ox as f64 * step[0], in_shape[0]);
                for oy in 0..out_shape[1] {
                    let (y0, y1, fy) = sample_axis(oy as f64 * step[1], in_shape[1]);
                    for oz in 0..out_shape[2] {
                        let (z0, z1, fz) = sample_axis(oz as f64 * step[2], in_shape[2]);
                        plane[oy * out_shape[2] + oz] = match interpolation {
                            Interpolation::Nearest => {
                                let pick =
                                    |lo: usize, hi: usize, f: f64| if f >= 0.5 { hi } else { lo };
                                input[[pick(x0, x1, fx), pick(y0, y1, fy), pick(z0, z1, fz)]]
                            }
                            Interpolation::Linear => {
                                trilinear(&input, [x0, y0, z0], [x1, y1, z1], [fx, fy, fz])
                            }
                        };
                    }
                }
            });
    }

    Ok(Volume {
        data,
        spacing: target_spacing,
        origin: volume.origin,
        direction: volume.direction,
        element_type: volume.element_type,
    })
}

/// The two neighbouring input indices of a position and the weight of the upper one.
fn sample_axis(position: f64, n: usize) -> (usize, usize, f64) {
    let max = (n - 1) as f64;
    let p = position.clamp(0.0, max);
    let lo = p.floor();
    let hi = (lo + 1.0).min(max);
    (lo as usize, hi as usize, p - lo)
}

fn trilinear(input: &ArrayView3<f32>, lo: [usize; 3], hi: [usize; 3], f: [f64; 3]) -> f32 {
    let v = |x: usize, y: usize, z: usize| input[[x, y, z]] as f64;
    let c00 = v(lo[0], lo[1], lo[2]) * (1.0 - f[0]) + v(hi[0], lo[1], lo[2]) * f[0];
    let c10 = v(lo[0], hi[1], lo[2]) * (1.0 - f[0]) + v(hi[0], hi[1], lo[2]) * f[0];
    let c01 = v(lo[0], lo[1], hi[2]) * (1.0 - f[0]) + v(hi[0], lo[1], hi[2]) * f[0];
    let c11 = v(lo[0], hi[1], hi[2]) * (1.0 - f[0]) + v(hi[0], hi[1], hi[2]) * f[0];
    let c0 = c00 * (1.0 - f[1]) + c10 * f[1];
    let c1 = c01 * (1.0 - f[1]) + c11 * f[1];
    (c0 * (1.0 - f[2]) + c1 * f[2]) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_resample_of_a_ramp_is_exact() {
        // Ramp along z with 2 mm spacing, resampled to 1 mm: values interpolate linearly.
        let data = Array3::from_shape_fn((2, 2, 5), |(_, _, z)| z as f32 * 10.0);
        let v = Volume::new(data, [1.0, 1.0, 2.0]);
        let r = resample(&v, [1.0, 1.0, 1.0], Interpolation::Linear).unwrap();
        assert_eq!(r.shape(), [2, 2, 10]);
        for z in 0..9 {
            assert!((r.data[[1, 1, z]] - z as f32 * 5.0).abs() < 1e-5);
        }
        // Past the last voxel: edge value.
        assert_eq!(r.data[[0, 0, 9]], 40.0);
        assert_eq!(r.spacing, [1.0, 1.0, 1.0]);
    }

    #[test]
    fn nearest_keeps_label_values_and_downsamples() {
        let data = Array3::from_shape_fn((4, 4, 4), |(x, _, _)| if x >= 2 { 1.0 } else { 0.0 });
        let v = Volume::new(data, [1.0; 3]);
        let r = resample(&v, [2.0, 2.0, 2.0], Interpolation::Nearest).unwrap();
        assert_eq!(r.shape(), [2, 2, 2]);
        assert!(r.data.iter().all(|&x| x == 0.0 || x == 1.0));
        assert_eq!(r.data[[1, 0, 0]], 1.0);
        assert_eq!(r.data[[0, 0, 0]], 0.0);
        assert!(resample(&v, [0.0, 1.0, 1.0], Interpolation::Nearest).is_err());
        assert!(resample(&v, [f64::NAN, 1.0, 1.0], Interpolation::Linear).is_err());
    }
}
