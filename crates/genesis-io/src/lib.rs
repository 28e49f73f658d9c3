//! Volume input and output for Models Genesis: read and write CT and MR
//! volumes faithfully, fast and safely.
//!
//! - [`read_volume`] / [`write_volume`] pick the format from the file name:
//!   MetaImage (`.mhd` + data file, `.mha`), NRRD (`.nrrd`, `.nhdr`),
//!   NIfTI-1 (`.nii`, `.nii.gz`) and NumPy (`.npy`, 3-D arrays).
//! - [`Volume`] holds `f32` voxels indexed `data[[x, y, z]]` (see its docs for
//!   the axis and geometry conventions), spacing, origin and direction, and the
//!   element type the file stored.
//! - [`HuWindow`] clips and scales intensities to [0, 1] (the paper's CT
//!   window is [`HuWindow::CT`]); [`resample`] changes voxel spacing.
//! - [`read_npy`], [`write_npy`], [`NpyStackWriter`] and the memory-mapped
//!   [`NpyStack`] handle the `(N, 64, 64, 32)` cube stacks of the original
//!   Models Genesis (`bat_*.npy`, float64), without loading them into RAM.
//!
//! Every error names the file and what is wrong with it; no input makes the
//! reader panic, and headers are checked against the data actually present
//! (and against [`MAX_VOXELS`]) before anything large is allocated.
//!
//! Not for: cube extraction and augmentations (see `genesis-transforms`), or
//! anything touching libtorch (see `genesis-models`). This crate never links tch.
//!
//! ```
//! use genesis_io::{read_volume, write_volume, ElementType, HuWindow, Volume};
//! use ndarray::Array3;
//!
//! # fn main() -> genesis_io::Result<()> {
//! let dir = std::env::temp_dir().join(format!("genesis-io-doc-{}", std::process::id()));
//! genesis_io::create_dir_all(&dir)?;
//! let hu = Array3::from_shape_fn((4, 3, 2), |(x, y, z)| (x * 100 + y * 10 + z) as f32 - 1000.0);
//! let mut scan = Volume::new(hu, [0.76, 0.76, 2.5]);
//! scan.element_type = ElementType::I16;
//! write_volume(dir.join("scan.mhd"), &scan)?;
//!
//! let mut back = read_volume(dir.join("scan.mhd"))?;
//! assert_eq!(back.data, scan.data);
//! assert_eq!(back.spacing, [0.76, 0.76, 2.5]);
//! back.normalize(HuWindow::CT); // clip to [-1000, 1000] HU, scale to [0, 1]
//! assert_eq!(back.data[[0, 0, 0]], 0.0);
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(())
//! # }
//! ```

mod atomic;
mod error;
mod metaimage;
mod nifti_io;
mod npy;
mod nrrd;
mod raw;
mod resample;
mod volume;
mod window;

use std::path::{Path, PathBuf};

pub use atomic::create_dir_all;
pub use error::{Error, Result};
pub use npy::{NpyDtype, NpyStack, NpyStackWriter, read_npy, write_npy};
pub use raw::MAX_VOXELS;
pub use resample::{Interpolation, resample};
pub use volume::{ElementType, IDENTITY_DIRECTION, Volume};
pub use window::HuWindow;

/// The volume file formats, by file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.mhd` header with a detached data file.
    MetaImageDetached,
    /// `.mha`, header and data in one file.
    MetaImageAttached,
    /// `.nrrd`, header and data in one file.
    NrrdAttached,
    /// `.nhdr` header with a detached data file.
    NrrdDetached,
    /// `.nii`
    Nifti,
    /// `.nii.gz`
    NiftiGz,
    /// `.npy` holding a 3-D array indexed (x, y, z).
    Npy,
}

impl Format {
    /// The format implied by a file name (case-insensitive), if any.
    pub fn from_path(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
        let format = if name.ends_with(".nii.gz") {
            Format::NiftiGz
        } else if name.ends_with(".nii") {
            Format::Nifti
        } else if name.ends_with(".mhd") {
            Format::MetaImageDetached
        } else if name.ends_with(".mha") {
            Format::MetaImageAttached
        } else if name.ends_with(".nrrd") {
            Format::NrrdAttached
        } else if name.ends_with(".nhdr") {
            Format::NrrdDetached
        } else if name.ends_with(".npy") {
            Format::Npy
        } else {
            return None;
        };
        Some(format)
    }
}

/// Reads a volume; the format is chosen by extension (`.mhd .mha .nrrd .nhdr .nii .nii.gz .npy`).
///
/// A `.npy` file must hold a 3-D array indexed (x, y, z); it gets unit spacing.
///
/// Uncompressed voxel data of 16 MiB or more (`.mhd`/`.raw`, raw `.nrrd`/`.nhdr`) is
/// memory-mapped while it is decoded rather than copied into memory first. Do not
/// truncate or rewrite a file while it is being read: as with any memory map, that
/// can fault the reading process.
pub fn read_volume(path: impl AsRef<Path>) -> Result<Volume> {
    read_volume_impl(path.as_ref(), None)
}

/// Reads a volume and windows it to [0, 1] in the same pass over the voxels.
///
/// Gives the same values as [`read_volume`] followed by [`Volume::normalize`],
/// but converts, transposes and windows each voxel once, which matters for
/// full-size CTs. `element_type` still reports the stored type.
pub fn read_volume_normalized(path: impl AsRef<Path>, window: HuWindow) -> Result<Volume> {
    read_volume_impl(path.as_ref(), Some(window))
}

fn read_volume_impl(path: &Path, window: Option<HuWindow>) -> Result<Volume> {
    match Format::from_path(path) {
        Some(Format::MetaImageDetached | Format::MetaImageAttached) => {
            metaimage::read(path, window)
        }
        Some(Format::NrrdAttached | Format::NrrdDetached) => nrrd::read(path, window),
        Some(Format::Nifti | Format::NiftiGz) => nifti_io::read(path, window),
        Some(Format::Npy) => {
            let mut volume = read_npy_volume(path)?;
            if let Some(window) = window {
                volume.normalize(window);
            }
            Ok(volume)
        }
        None => Err(Error::UnknownExtension {
            path: path.to_path_buf(),
        }),
    }
}

/// The files of the volume at `path`: `path` itself; the separate data file its
/// header names, if it has one (`.mhd`, `.nhdr`, or `.nrrd` with a `data file` field);
/// and, for `.mhd` and `.nhdr`, the `<stem>.raw` that [`write_volume`] writes.
///
/// For a tool to refuse writing its output over one of its inputs: compare the files
/// of the output path with those of each input. A header that cannot be read adds no
/// data file.
pub fn volume_files(path: impl AsRef<Path>) -> Vec<PathBuf> {
    let path = path.as_ref();
    let mut files = vec![path.to_path_buf()];
    let format = Format::from_path(path);
    let named = match format {
        Some(Format::MetaImageDetached | Format::MetaImageAttached) => {
            metaimage::named_data_file(path)
        }
        Some(Format::NrrdAttached | Format::NrrdDetached) => nrrd::named_data_file(path),
        _ => None,
    };
    files.extend(named);
    if matches!(
        format,
        Some(Format::MetaImageDetached | Format::NrrdDetached)
    ) {
        files.push(path.with_extension("raw"));
    }
    files.dedup();
    files
}

/// Writes a volume as `volume.element_type`, atomically (temporary file in the same directory, then rename).
///
/// Integer types are rounded and clamped (NaN becomes 0). `.mhd` and `.nhdr`
/// write their data to `<stem>.raw` next to the header. `.npy` keeps the
/// (x, y, z) array but no geometry, as the nearest of f32/f64/i16/u8 that
/// holds the element type without loss.
pub fn write_volume(path: impl AsRef<Path>, volume: &Volume) -> Result<()> {
    let path = path.as_ref();
    let format = Format::from_path(path);
    if !matches!(format, Some(Format::Npy) | None)
        && volume::degenerate_direction(&volume.direction)
    {
        return Err(Error::InvalidArgument(format!(
            "{}: direction {:?} is singular (its axes do not span space); no reader \
             could orient the volume",
            path.display(),
            volume.direction
        )));
    }
    match format {
        Some(Format::MetaImageDetached) => metaimage::write(path, volume, false),
        Some(Format::MetaImageAttached) => metaimage::write(path, volume, true),
        Some(Format::NrrdAttached) => nrrd::write(path, volume, true),
        Some(Format::NrrdDetached) => nrrd::write(path, volume, false),
        Some(Format::Nifti) => nifti_io::write(path, volume, false),
        Some(Format::NiftiGz) => nifti_io::write(path, volume, true),
        Some(Format::Npy) => {
            let dtype = NpyDtype::for_element_type(volume.element_type).unwrap_or(
                match volume.element_type {
                    ElementType::U32 | ElementType::I32 => NpyDtype::F64,
                    _ => NpyDtype::F32,
                },
            );
            write_npy(path, volume.data.view().into_dyn(), dtype)
        }
        None => Err(Error::UnknownExtension {
            path: path.to_path_buf(),
        }),
    }
}

fn read_npy_volume(path: &Path) -> Result<Volume> {
    let header = {
        use std::io::Read;
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut prefix = Vec::new();
        file.take(1 << 16)
            .read_to_end(&mut prefix)
            .map_err(|e| Error::io(path, e))?;
        npy::parse_header(&prefix).map_err(|e| e.at(path))?
    };
    if header.shape.len() != 3 {
        return Err(Error::unsupported(
            path,
            format!("shape {:?} is not a 3-D volume", header.shape),
        ));
    }
    let array = read_npy(path)?;
    let data = array
        .into_dimensionality::<ndarray::Ix3>()
        .map_err(|e| Error::format(path, format!("not a 3-D array: {e}")))?;
    if data.is_empty() {
        return Err(Error::format(
            path,
            format!("shape {:?} contains a zero", data.shape()),
        ));
    }
    let mut volume = Volume::new(data, [1.0; 3]);
    volume.element_type = match header.dtype {
        NpyDtype::F32 => ElementType::F32,
        NpyDtype::F64 => ElementType::F64,
        NpyDtype::I16 => ElementType::I16,
        NpyDtype::U8 | NpyDtype::Bool => ElementType::U8,
    };
    Ok(volume)
}

/// Entry points for the fuzz targets in `crates/genesis-io/fuzz`; not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    /// Parses a MetaImage header; on success checks the invariants the reader relies on.
    pub fn metaimage_header(bytes: &[u8]) {
        if let Ok(h) = crate::metaimage::parse_header(bytes) {
            assert!(h.dims.iter().product::<usize>() as u64 <= crate::MAX_VOXELS);
            assert!(h.dims.iter().all(|&d| d > 0));
            assert!(h.spacing.iter().all(|&s| s > 0.0 && s.is_finite()));
            assert!(h.header_len <= bytes.len());
        }
    }

    /// Parses a NRRD header; on success checks the invariants the reader relies on.
    pub fn nrrd_header(bytes: &[u8]) {
        if let Ok(h) = crate::nrrd::parse_header(bytes) {
            assert!(h.dims.iter().product::<usize>() as u64 <= crate::MAX_VOXELS);
            assert!(h.dims.iter().all(|&d| d > 0));
            assert!(h.spacing.iter().all(|&s| s > 0.0 && s.is_finite()));
            assert!(h.header_len <= bytes.len());
        }
    }

    /// Parses a `.npy` header; on success checks the data offset and, for
    /// small arrays, that writing the shape back parses to the same header.
    pub fn npy_header(bytes: &[u8]) {
        if let Ok(h) = crate::npy::parse_header(bytes) {
            assert!(h.data_offset <= bytes.len());
        }
    }
}
