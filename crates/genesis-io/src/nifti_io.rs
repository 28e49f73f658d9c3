//! NIfTI-1 (`.nii`, `.nii.gz`) through the `nifti` crate.
//!
//! NIfTI stores voxels x-fastest and geometry as a RAS affine (sform, or the
//! qform quaternion); like ITK we convert it to LPS by negating x and y.

use std::path::Path;

use ndarray::Array3;
use nifti::writer::WriterOptions;
use nifti::{NiftiHeader, NiftiObject, NiftiType, ReaderOptions};

use crate::error::{Error, Result};
use crate::raw::{self, Rescale};
use crate::volume::{ElementType, Volume};

/// The nifti crate's error as ours. Its I/O errors display in Debug form
/// (`Io(Custom { kind: .. })`), so they become plain I/O errors, and a file that ends
/// early (the reader hits end of file, in the header or the data) says so.
fn nifti_err(path: &Path, source: nifti::NiftiError) -> Error {
    match source {
        nifti::NiftiError::Io(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
            Error::format(path, "the file ends early: its header or data is truncated")
        }
        nifti::NiftiError::Io(error) => Error::io(path, error),
        error => Error::Nifti {
            path: path.to_path_buf(),
            error,
        },
    }
}

fn element_type_of(path: &Path, header: &NiftiHeader) -> Result<ElementType> {
    let datatype = header.data_type().map_err(|e| nifti_err(path, e))?;
    Ok(match datatype {
        NiftiType::Uint8 => ElementType::U8,
        NiftiType::Int8 => ElementType::I8,
        NiftiType::Uint16 => ElementType::U16,
        NiftiType::Int16 => ElementType::I16,
        NiftiType::Uint32 => ElementType::U32,
        NiftiType::Int32 => ElementType::I32,
        NiftiType::Float32 => ElementType::F32,
        NiftiType::Float64 => ElementType::F64,
        other => {
            return Err(Error::unsupported(
                path,
                format!(
                    "datatype {other:?} (only 8/16/32-bit integers and 32/64-bit floats are read)"
                ),
            ));
        }
    })
}

/// The (x, y, z) sizes from `dim`, requiring any further dimensions to be 1.
fn volume_dims(path: &Path, header: &NiftiHeader) -> Result<[usize; 3]> {
    let ndim = header.dim[0] as usize;
    if !(1..=7).contains(&ndim) {
        return Err(Error::format(
            path,
            format!("dim[0] = {ndim}: must be 1 to 7"),
        ));
    }
    let dims = &header.dim[1..=ndim];
    if dims.iter().skip(3).any(|&d| d != 1) {
        return Err(Error::unsupported(
            path,
            format!(
                "dim = {dims:?}: only 3-D scalar volumes are read (extra dimensions must be 1)"
            ),
        ));
    }
    let mut out = [1u64; 3];
    for (slot, &d) in out.iter_mut().zip(dims) {
        *slot = d as u64;
    }
    raw::checked_data_bytes(out, element_type_of(path, header)?)
        .map_err(|m| Error::format(path, format!("dim: {m}")))?;
    Ok([out[0] as usize, out[1] as usize, out[2] as usize])
}

/// Rotation matrix (columns = axes) of a unit quaternion with a = sqrt(1 - b² - c² - d²).
fn quaternion_to_rotation(b: f64, c: f64, d: f64) -> [[f64; 3]; 3] {
    let mut a = 1.0 - (b * b + c * c + d * d);
    let (mut b, mut c, mut d) = (b, c, d);
    if a < 1e-7 {
        // Numerically a 180° rotation: renormalise (b, c, d), as nifti1_io does.
        let norm = (b * b + c * c + d * d).sqrt();
        if norm > 0.0 {
            (b, c, d) = (b / norm, c / norm, d / norm);
        }
        a = 0.0;
    } else {
        a = a.sqrt();
    }
    [
        [
            a * a + b * b - c * c - d * d,
            2.0 * (b * c - a * d),
            2.0 * (b * d + a * c),
        ],
        [
            2.0 * (b * c + a * d),
            a * a + c * c - b * b - d * d,
            2.0 * (c * d - a * b),
        ],
        [
            2.0 * (b * d - a * c),
            2.0 * (c * d + a * b),
            a * a + d * d - c * c - b * b,
        ],
    ]
}

/// Quaternion (b, c, d) of a proper rotation matrix `r` (rows i, columns j), as nifti_mat44_to_quatern.
fn rotation_to_quaternion(r: [[f64; 3]; 3]) -> (f64, f64, f64) {
    let (r11, r12, r13) = (r[0][0], r[0][1], r[0][2]);
    let (r21, r22, r23) = (r[1][0], r[1][1], r[1][2]);
    let (r31, r32, r33) = (r[2][0], r[2][1], r[2][2]);
    let trace = r11 + r22 + r33 + 1.0;
    let (a, b, c, d);
    if trace > 0.5 {
        a = 0.5 * trace.sqrt();
        b = 0.25 * (r32 - r23) / a;
        c = 0.25 * (r13 - r31) / a;
        d = 0.25 * (r21 - r12) / a;
    } else {
        let xd = 1.0 + r11 - (r22 + r33);
        let yd = 1.0 + r22 - (r11 + r33);
        let zd = 1.0 + r33 - (r11 + r22);
        if xd > 1.0 {
            b = 0.5 * xd.sqrt();
            c = 0.25 * (r12 + r21) / b;
            d = 0.25 * (r13 + r31) / b;
            a = 0.25 * (r32 - r23) / b;
        } else if yd > 1.0 {
            c = 0.5 * yd.sqrt();
            b = 0.25 * (r12 + r21) / c;
            d = 0.25 * (r23 + r32) / c;
            a = 0.25 * (r13 - r31) / c;
        } else {
            d = 0.5 * zd.sqrt();
            b = 0.25 * (r13 + r31) / d;
            c = 0.25 * (r23 + r32) / d;
            a = 0.25 * (r21 - r12) / d;
        }
    }
    if a < 0.0 { (-b, -c, -d) } else { (b, c, d) }
}

/// The three voxel axes (the affine's columns) of a 3×4 affine, one per row.
fn axes(affine: &[[f64; 4]; 3]) -> [[f64; 3]; 3] {
    std::array::from_fn(|a| [affine[0][a], affine[1][a], affine[2][a]])
}

/// The RAS affine (3 rows × 4 columns) the header describes: sform if set, else qform, else
/// pixdim; with the name of the one it came from.
fn ras_affine(header: &NiftiHeader) -> ([[f64; 4]; 3], &'static str) {
    let pixdim = |i: usize| {
        let p = header.pixdim[i] as f64;
        if p.is_finite() && p != 0.0 {
            p.abs()
        } else {
            1.0
        }
    };
    if header.sform_code > 0 {
        let row = |r: [f32; 4]| [r[0] as f64, r[1] as f64, r[2] as f64, r[3] as f64];
        let sform = [row(header.srow_x), row(header.srow_y), row(header.srow_z)];
        // A degenerate sform gives way to the qform where there is one, as in ITK;
        // without one, `read` reports it.
        if header.qform_code <= 0 || !crate::volume::degenerate_direction(&axes(&sform)) {
            return (sform, "sform");
        }
    }
    if header.qform_code > 0 {
        let rotation = quaternion_to_rotation(
            header.quatern_b as f64,
            header.quatern_c as f64,
            header.quatern_d as f64,
        );
        let qfac = if header.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
        let scale = [pixdim(1), pixdim(2), pixdim(3) * qfac];
        let translation = [
            header.quatern_x as f64,
            header.quatern_y as f64,
            header.quatern_z as f64,
        ];
        let mut affine = [[0.0; 4]; 3];
        for (i, row) in affine.iter_mut().enumerate() {
            for j in 0..3 {
                row[j] = rotation[i][j] * scale[j];
            }
            row[3] = translation[i];
        }
        return (affine, "qform");
    }
    let affine = [
        [pixdim(1), 0.0, 0.0, 0.0],
        [0.0, pixdim(2), 0.0, 0.0],
        [0.0, 0.0, pixdim(3), 0.0],
    ];
    (affine, "pixdim")
}

/// Reads a `.nii` or `.nii.gz` file.
pub(crate) fn read(path: &Path, window: Option<crate::HuWindow>) -> Result<Volume> {
    // Validate the header before the crate allocates the volume.
    let header = NiftiHeader::from_file(path).map_err(|e| nifti_err(path, e))?;
    let dims = volume_dims(path, &header)?;
    let element_type = element_type_of(path, &header)?;
    let object = ReaderOptions::new()
        .read_file(path)
        .map_err(|e| nifti_err(path, e))?;
    let header = object.header().clone();
    let raw_data = object.into_volume().into_raw_data();
    let expected = dims.iter().product::<usize>() * element_type.size_of();
    if raw_data.len() != expected {
        return Err(Error::format(
            path,
            raw::size_mismatch(
                dims,
                element_type,
                "the data section",
                raw_data.len() as u64,
            ),
        ));
    }
    let (slope, inter) = (header.scl_slope as f64, header.scl_inter as f64);
    let rescale =
        (slope != 0.0 && slope.is_finite() && inter.is_finite() && (slope != 1.0 || inter != 0.0))
            .then_some(Rescale { slope, inter });
    let big_endian = header.endianness == nifti::Endianness::Big;
    let data = raw::decode_volume(&raw_data, element_type, big_endian, dims, rescale, window);

    // RAS → LPS, then split into spacing and unit directions.
    let (mut affine, source) = ras_affine(&header);
    let voxel_axes = axes(&affine);
    if crate::volume::degenerate_direction(&voxel_axes) {
        return Err(Error::format(
            path,
            format!(
                "the voxel axes of its {source} ({voxel_axes:?}) do not span space, so the \
                 volume has no orientation"
            ),
        ));
    }
    for row in affine.iter_mut().take(2) {
        for v in row.iter_mut() {
            *v = -*v;
        }
    }
    let mut spacing = [1.0; 3];
    let mut direction = [[0.0; 3]; 3];
    for a in 0..3 {
        let column = [affine[0][a], affine[1][a], affine[2][a]];
        let norm = column.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm > 0.0 && norm.is_finite() {
            spacing[a] = norm;
            direction[a] = [column[0] / norm, column[1] / norm, column[2] / norm];
        } else {
            direction[a][a] = 1.0;
        }
    }
    Ok(Volume {
        data,
        spacing,
        origin: [affine[0][3], affine[1][3], affine[2][3]],
        direction,
        // Rescaled integers are no longer integers; report what we hold.
        element_type: if rescale.is_some() {
            ElementType::F32
        } else {
            element_type
        },
    })
}

fn reference_header(volume: &Volume) -> NiftiHeader {
    let mut header = NiftiHeader::default();
    // LPS → RAS: negate the x and y world components.
    let flip = [-1.0, -1.0, 1.0];
    let mut rotation = [[0.0; 3]; 3]; // rows = world components, columns = axes
    let mut affine = [[0.0f64; 4]; 3];
    for a in 0..3 {
        for i in 0..3 {
            rotation[i][a] = volume.direction[a][i] * flip[i];
            affine[i][a] = rotation[i][a] * volume.spacing[a];
        }
    }
    for i in 0..3 {
        affine[i][3] = volume.origin[i] * flip[i];
    }
    let to_row = |r: [f64; 4]| [r[0] as f32, r[1] as f32, r[2] as f32, r[3] as f32];
    header.srow_x = to_row(affine[0]);
    header.srow_y = to_row(affine[1]);
    header.srow_z = to_row(affine[2]);
    header.sform_code = 1;

    let det = rotation[0][0] * (rotation[1][1] * rotation[2][2] - rotation[1][2] * rotation[2][1])
        - rotation[0][1] * (rotation[1][0] * rotation[2][2] - rotation[1][2] * rotation[2][0])
        + rotation[0][2] * (rotation[1][0] * rotation[2][1] - rotation[1][1] * rotation[2][0]);
    let qfac = if det < 0.0 { -1.0 } else { 1.0 };
    if qfac < 0.0 {
        for row in rotation.iter_mut() {
            row[2] = -row[2];
        }
    }
    let (b, c, d) = rotation_to_quaternion(rotation);
    header.quatern_b = b as f32;
    header.quatern_c = c as f32;
    header.quatern_d = d as f32;
    header.quatern_x = affine[0][3] as f32;
    header.quatern_y = affine[1][3] as f32;
    header.quatern_z = affine[2][3] as f32;
    header.qform_code = 1;
    header.pixdim = [
        qfac as f32,
        volume.spacing[0] as f32,
        volume.spacing[1] as f32,
        volume.spacing[2] as f32,
        1.0,
        1.0,
        1.0,
        1.0,
    ];
    header.xyzt_units = 2; // millimetres
    header
}

fn write_typed<T>(path: &Path, temp: &Path, header: &NiftiHeader, data: Array3<T>) -> Result<()>
where
    T: nifti::DataElement + bytemuck::Pod,
{
    WriterOptions::new(temp)
        .reference_header(header)
        .write_nifti(&data)
        .map_err(|e| nifti_err(path, e))
}

/// Writes a `.nii` or `.nii.gz` file (gzip when the name ends in `.gz`).
pub(crate) fn write(path: &Path, volume: &Volume, gzip: bool) -> Result<()> {
    let header = reference_header(volume);
    let temp = crate::atomic::temp_path(path, if gzip { ".nii.gz" } else { ".nii" });
    let data = &volume.data;
    let result = match volume.element_type {
        ElementType::U8 => write_typed(path, &temp, &header, data.mapv(|v| v.round() as u8)),
        ElementType::I8 => write_typed(path, &temp, &header, data.mapv(|v| v.round() as i8)),
        ElementType::U16 => write_typed(path, &temp, &header, data.mapv(|v| v.round() as u16)),
        ElementType::I16 => write_typed(path, &temp, &header, data.mapv(|v| v.round() as i16)),
        ElementType::U32 => write_typed(
            path,
            &temp,
            &header,
            data.mapv(|v| (v as f64).round() as u32),
        ),
        ElementType::I32 => write_typed(
            path,
            &temp,
            &header,
            data.mapv(|v| (v as f64).round() as i32),
        ),
        ElementType::F32 => write_typed(path, &temp, &header, data.clone()),
        ElementType::F64 => write_typed(path, &temp, &header, data.mapv(|v| v as f64)),
    };
    match result {
        Ok(()) => crate::atomic::commit(&temp, path),
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quaternion_round_trip() {
        let (s, c) = (0.4f64.sin(), 0.4f64.cos());
        for r in [
            [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]],
            [[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]],
            [[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]],
        ] {
            let (b, cc, d) = rotation_to_quaternion(r);
            let back = quaternion_to_rotation(b, cc, d);
            for i in 0..3 {
                for j in 0..3 {
                    assert!((back[i][j] - r[i][j]).abs() < 1e-9, "{r:?} -> {back:?}");
                }
            }
        }
    }
}
