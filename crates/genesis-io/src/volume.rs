//! The in-memory volume and its geometry.

use ndarray::Array3;
use serde::{Deserialize, Serialize};

/// The element type a volume is stored with on disk.
///
/// When reading, [`Volume::element_type`] holds the file's type; when writing,
/// the type the voxels are converted to (integers are rounded and clamped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ElementType {
    /// Unsigned 8-bit integer (MET_UCHAR, NRRD `uchar`, NIfTI UINT8).
    U8,
    /// Signed 8-bit integer.
    I8,
    /// Unsigned 16-bit integer.
    U16,
    /// Signed 16-bit integer; CT scans in Hounsfield units.
    I16,
    /// Unsigned 32-bit integer.
    U32,
    /// Signed 32-bit integer.
    I32,
    /// 32-bit float.
    F32,
    /// 64-bit float.
    F64,
}

impl ElementType {
    /// Size of one element in bytes.
    pub fn size_of(self) -> usize {
        match self {
            ElementType::U8 | ElementType::I8 => 1,
            ElementType::U16 | ElementType::I16 => 2,
            ElementType::U32 | ElementType::I32 | ElementType::F32 => 4,
            ElementType::F64 => 8,
        }
    }

    /// The lowest and highest value the type can hold, as f64.
    pub fn range(self) -> (f64, f64) {
        match self {
            ElementType::U8 => (0.0, 255.0),
            ElementType::I8 => (-128.0, 127.0),
            ElementType::U16 => (0.0, 65535.0),
            ElementType::I16 => (-32768.0, 32767.0),
            ElementType::U32 => (0.0, u32::MAX as f64),
            ElementType::I32 => (i32::MIN as f64, i32::MAX as f64),
            ElementType::F32 => (f32::MIN as f64, f32::MAX as f64),
            ElementType::F64 => (f64::MIN, f64::MAX),
        }
    }

    /// Whether the type is an integer type (values are rounded and clamped when written).
    pub fn is_integer(self) -> bool {
        !matches!(self, ElementType::F32 | ElementType::F64)
    }
}

impl std::fmt::Display for ElementType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            ElementType::U8 => "u8",
            ElementType::I8 => "i8",
            ElementType::U16 => "u16",
            ElementType::I16 => "i16",
            ElementType::U32 => "u32",
            ElementType::I32 => "i32",
            ElementType::F32 => "f32",
            ElementType::F64 => "f64",
        };
        f.write_str(name)
    }
}

/// A 3-D scalar volume with its geometry.
///
/// # Axis convention
///
/// `data` is indexed `data[[x, y, z]]`, with `x` the fastest-varying axis *on
/// disk* (as in MetaImage, NRRD and NIfTI files) and the array in standard (C)
/// layout in memory, so `z` is contiguous. This is the layout of the original
/// Models Genesis pipeline, which reads with SimpleITK (an array indexed
/// `(z, y, x)`) and transposes it.
///
/// # Geometry
///
/// World coordinates are in millimetres in the LPS (DICOM/ITK) frame; NIfTI's
/// RAS affines are converted on reading and writing the way ITK does.
/// `direction[a]` is the world-space unit vector of voxel axis `a` (rows are
/// axes, as in MetaImage's `TransformMatrix` and NRRD's `space directions`;
/// ITK's direction matrix is its transpose):
///
/// `world = origin + Σ_a ijk[a] · spacing[a] · direction[a]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    /// Voxel values, `data[[x, y, z]]`.
    pub data: Array3<f32>,
    /// Voxel size along x, y and z in mm.
    pub spacing: [f64; 3],
    /// World coordinates (mm, LPS) of the centre of voxel (0, 0, 0).
    pub origin: [f64; 3],
    /// `direction[a]` is the unit vector of voxel axis `a` in world space.
    pub direction: [[f64; 3]; 3],
    /// Stored element type when read; the type to write when writing.
    pub element_type: ElementType,
}

/// The identity direction matrix.
pub const IDENTITY_DIRECTION: [[f64; 3]; 3] = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];

/// Whether three axis directions fail to span space (one is zero, or they lie in a
/// plane), judged on the determinant scaled by the axes' lengths: below 1e-6 the
/// volume has no orientation, and ITK refuses such a direction as well.
pub(crate) fn degenerate_direction(d: &[[f64; 3]; 3]) -> bool {
    let det = d[0][0] * (d[1][1] * d[2][2] - d[1][2] * d[2][1])
        - d[0][1] * (d[1][0] * d[2][2] - d[1][2] * d[2][0])
        + d[0][2] * (d[1][0] * d[2][1] - d[1][1] * d[2][0]);
    let lengths: f64 = d
        .iter()
        .map(|row| row.iter().map(|v| v * v).sum::<f64>().sqrt())
        .product();
    !(lengths > 0.0 && (det / lengths).abs() >= 1e-6)
}

impl Volume {
    /// A volume with identity direction, zero origin and element type F32.
    pub fn new(data: Array3<f32>, spacing: [f64; 3]) -> Self {
        Volume {
            data,
            spacing,
            origin: [0.0; 3],
            direction: IDENTITY_DIRECTION,
            element_type: ElementType::F32,
        }
    }

    /// `[nx, ny, nz]`.
    pub fn shape(&self) -> [usize; 3] {
        let s = self.data.shape();
        [s[0], s[1], s[2]]
    }

    /// World coordinates (mm) of a (possibly fractional) voxel index.
    pub fn voxel_to_world(&self, ijk: [f64; 3]) -> [f64; 3] {
        let mut world = self.origin;
        for (axis, &index) in ijk.iter().enumerate() {
            let step = index * self.spacing[axis];
            for (w, d) in world.iter_mut().zip(self.direction[axis]) {
                *w += step * d;
            }
        }
        world
    }

    /// Fractional voxel index of a world point; the inverse of [`Volume::voxel_to_world`].
    ///
    /// Uses the inverse of the direction matrix, so it is exact for
    /// non-orthogonal directions too (NaN if the matrix is singular).
    pub fn world_to_voxel(&self, xyz: [f64; 3]) -> [f64; 3] {
        let rel = [
            xyz[0] - self.origin[0],
            xyz[1] - self.origin[1],
            xyz[2] - self.origin[2],
        ];
        // Solve rel = Σ_a c[a] · direction[a], i.e. rel = Dᵀ c.
        let m = transpose(self.direction);
        let c = solve3(m, rel);
        [
            c[0] / self.spacing[0],
            c[1] / self.spacing[1],
            c[2] / self.spacing[2],
        ]
    }

    /// Smallest and largest voxel value, ignoring NaN; `None` when empty or all NaN.
    pub fn value_range(&self) -> Option<(f32, f32)> {
        let mut range: Option<(f32, f32)> = None;
        for &v in self.data.iter() {
            if v.is_nan() {
                continue;
            }
            range = Some(match range {
                None => (v, v),
                Some((lo, hi)) => (lo.min(v), hi.max(v)),
            });
        }
        range
    }

    /// Clip to `window` and scale to [0, 1] in place; see [`crate::HuWindow::normalize_in_place`].
    pub fn normalize(&mut self, window: crate::HuWindow) {
        match self.data.as_slice_memory_order_mut() {
            Some(slice) => window.normalize_in_place(slice),
            None => self.data.mapv_inplace(|v| window.normalize_value(v)),
        }
    }
}

pub(crate) fn transpose(m: [[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut t = [[0.0; 3]; 3];
    for (r, row) in m.iter().enumerate() {
        for (c, &v) in row.iter().enumerate() {
            t[c][r] = v;
        }
    }
    t
}

fn det3(m: [[f64; 3]; 3]) -> f64 {
    m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
}

/// Solves `m · x = b` by Cramer's rule.
fn solve3(m: [[f64; 3]; 3], b: [f64; 3]) -> [f64; 3] {
    let det = det3(m);
    let mut x = [0.0; 3];
    for (col, out) in x.iter_mut().enumerate() {
        let mut mc = m;
        for row in 0..3 {
            mc[row][col] = b[row];
        }
        *out = det3(mc) / det;
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn world_voxel_round_trip_with_rotation() {
        let mut v = Volume::new(Array3::zeros((2, 3, 4)), [0.7, 0.8, 2.5]);
        v.origin = [-10.0, 5.0, 100.0];
        let (s, c) = (0.3f64.sin(), 0.3f64.cos());
        v.direction = [[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]];
        let ijk = [1.5, -2.0, 3.25];
        let world = v.voxel_to_world(ijk);
        let back = v.world_to_voxel(world);
        for a in 0..3 {
            assert!((back[a] - ijk[a]).abs() < 1e-9);
        }
        assert_eq!(v.shape(), [2, 3, 4]);
        // Voxel (0,0,0) is at the origin; one step in z moves 2.5 mm along z.
        assert_eq!(v.voxel_to_world([0.0; 3]), v.origin);
        assert!((v.voxel_to_world([0.0, 0.0, 1.0])[2] - 102.5).abs() < 1e-12);
    }

    #[test]
    fn value_range_ignores_nan() {
        let mut v = Volume::new(Array3::zeros((1, 1, 3)), [1.0; 3]);
        v.data[[0, 0, 0]] = f32::NAN;
        v.data[[0, 0, 1]] = -3.0;
        v.data[[0, 0, 2]] = 7.0;
        assert_eq!(v.value_range(), Some((-3.0, 7.0)));
    }
}
