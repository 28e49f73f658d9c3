//! Raw voxel buffers: size checks, file reads, and the conversion kernels
//! between on-disk element bytes and `f32`.
//!
//! Volumes are stored x-fastest on disk and held `data[[x, y, z]]` in C layout
//! in memory, so reading is a transpose as well as a conversion; see
//! `transpose_kernel` for how it stays cache-friendly.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use ndarray::{Array3, ShapeBuilder};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::volume::ElementType;
use crate::window::HuWindow;

/// Largest number of voxels a header may claim (2³¹, 8 GiB as f32).
///
/// Headers claiming more are rejected before anything is allocated.
pub const MAX_VOXELS: u64 = 1 << 31;

/// Validates dimensions from a header and returns the number of data bytes they imply.
pub(crate) fn checked_data_bytes(
    dims: [u64; 3],
    element_type: ElementType,
) -> Result<usize, String> {
    if dims.contains(&0) {
        return Err(format!(
            "dimensions {}×{}×{} contain a zero",
            dims[0], dims[1], dims[2]
        ));
    }
    let voxels = dims[0]
        .checked_mul(dims[1])
        .and_then(|v| v.checked_mul(dims[2]))
        .filter(|&v| v <= MAX_VOXELS)
        .ok_or_else(|| {
            format!(
                "dimensions {}×{}×{} exceed the limit of {} voxels",
                dims[0], dims[1], dims[2], MAX_VOXELS
            )
        })?;
    usize::try_from(voxels * element_type.size_of() as u64)
        .map_err(|_| "volume does not fit in memory on this platform".to_string())
}

/// Formats a size mismatch the way users can act on.
pub(crate) fn size_mismatch(
    dims: [usize; 3],
    element_type: ElementType,
    data_name: &str,
    found: u64,
) -> String {
    let voxels = dims[0] * dims[1] * dims[2];
    format!(
        "sizes say {}×{}×{} ({} voxels × {} bytes = {} bytes) but {} holds {} bytes",
        dims[0],
        dims[1],
        dims[2],
        voxels,
        element_type.size_of(),
        voxels * element_type.size_of(),
        data_name,
        found
    )
}

/// Largest text header (MetaImage, NRRD) we look at; real ones are a few hundred bytes.
pub(crate) const MAX_HEADER_BYTES: usize = 1 << 20;

/// The first [`MAX_HEADER_BYTES`] of the file at `path`, where a text header sits.
pub(crate) fn read_header_prefix(path: &Path) -> Result<Vec<u8>> {
    let mut prefix = Vec::new();
    File::open(path)
        .and_then(|file| file.take(MAX_HEADER_BYTES as u64).read_to_end(&mut prefix))
        .map_err(|e| Error::io(path, e))?;
    Ok(prefix)
}

/// Reads exactly `len` bytes at `offset` (or, with `offset == None`, the last
/// `len` bytes) of an uncompressed data file, after checking its size: with an
/// offset the data must end the file, since bytes beyond what the header describes
/// mean that the header (element type, sizes or data offset) does not fit the file.
pub(crate) fn read_exact_bytes(
    path: &Path,
    offset: Option<u64>,
    len: usize,
    header_path: &Path,
    dims: [usize; 3],
    element_type: ElementType,
) -> Result<Bytes> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let metadata = file.metadata().map_err(|e| Error::io(path, e))?;
    if metadata.is_dir() {
        return Err(Error::format(
            header_path,
            format!("its data file {} is a directory", path.display()),
        ));
    }
    let file_len = metadata.len();
    let start = match offset {
        Some(o) => o,
        None => file_len.saturating_sub(len as u64),
    };
    let available = file_len.saturating_sub(start);
    let too_long = offset.is_some() && available > len as u64;
    if available < len as u64 || too_long {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let what = if start > 0 {
            format!("{name} after a {start}-byte header")
        } else {
            name
        };
        let mut message = size_mismatch(dims, element_type, &what, available);
        if too_long {
            message.push_str(
                "; the header does not describe this file (check the element type and sizes; \
                 data that ends a longer file needs HeaderSize = -1, or byte skip: -1 in NRRD)",
            );
        }
        return Err(Error::format(header_path, message));
    }
    if len >= MAP_THRESHOLD {
        // SAFETY: see `Bytes::Mapped`; the file is only read, and the length
        // check above makes the mapped range lie inside the file as it is now.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .offset(start)
                .len(len)
                .populate()
                .map(&file)
        };
        if let Ok(map) = map {
            return Ok(Bytes::Mapped(map));
        }
        // Mapping can fail (special files, exotic file systems): fall back to reading.
    }
    file.seek(SeekFrom::Start(start))
        .map_err(|e| Error::io(path, e))?;
    let mut buffer = vec![0u8; len];
    advise_huge_pages(&mut buffer);
    file.read_exact(&mut buffer)
        .map_err(|e| Error::io(path, e))?;
    Ok(Bytes::Owned(buffer))
}

/// Uncompressed data of at least this many bytes is memory-mapped instead of read.
///
/// Copying a 157 MB LUNA16-sized volume out of the page cache into a fresh
/// buffer cost as much as converting it; decoding straight from the mapped
/// page cache skips the copy and the page faults of the buffer.
const MAP_THRESHOLD: usize = 16 << 20;

/// Voxel bytes of a volume: read into memory, or mapped from the file.
pub(crate) enum Bytes {
    /// Decompressed or small data, held in memory.
    Owned(Vec<u8>),
    /// A read-only mapping of the voxels of an uncompressed data file. The
    /// mapping lives only while one volume is decoded. As with any memory map,
    /// another process truncating the file during those milliseconds would
    /// fault the reader; files that are being rewritten must not be read
    /// concurrently.
    Mapped(memmap2::Mmap),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Owned(bytes) => bytes,
            Bytes::Mapped(map) => map,
        }
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(bytes: Vec<u8>) -> Self {
        Bytes::Owned(bytes)
    }
}

/// Decompresses a stream into a buffer of exactly `expected` bytes.
///
/// The buffer grows with the data actually decompressed (capped by what a
/// deflate stream of `compressed_len` bytes can possibly expand to), so a
/// header that lies about the size cannot make us allocate without data.
pub(crate) fn read_decompressed(
    mut reader: impl Read,
    expected: usize,
    compressed_len: u64,
    header_path: &Path,
    data_name: &str,
    dims: [usize; 3],
    element_type: ElementType,
) -> Result<Bytes> {
    // Deflate expands at most about 1032:1.
    let bound = compressed_len.saturating_mul(1032).saturating_add(1 << 16);
    let mut buffer = Vec::with_capacity(expected.min(bound as usize));
    advise_huge_pages(buffer.spare_capacity_mut());
    let read = (&mut reader)
        .take(expected as u64 + 1)
        .read_to_end(&mut buffer)
        .map_err(|e| Error::format(header_path, format!("{data_name}: cannot decompress: {e}")))?;
    if read != expected {
        let found = if read > expected {
            "more than that".to_string()
        } else {
            read.to_string()
        };
        let message = size_mismatch(dims, element_type, &format!("decompressed {data_name}"), 0)
            .replace(" holds 0 bytes", &format!(" holds {found} bytes"));
        return Err(Error::format(header_path, message));
    }
    Ok(Bytes::Owned(buffer))
}

/// An affine intensity rescale `v · slope + inter` applied while decoding (NIfTI's scl_*).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rescale {
    pub slope: f64,
    pub inter: f64,
}

macro_rules! decoders {
    ($raw:expr, $element_type:expr, $big_endian:expr, $rescale:expr, $window:expr, $kernel:ident, $($args:expr),*) => {{
        macro_rules! run {
            ($n:literal, $conv:expr) => {{
                let conv = $conv;
                match ($rescale, $window) {
                    (None, None) => $kernel::<$n, _>($raw, $($args,)* move |b: [u8; $n]| conv(b) as f32),
                    (Some(Rescale { slope, inter }), None) => {
                        $kernel::<$n, _>($raw, $($args,)* move |b: [u8; $n]| (conv(b) as f64 * slope + inter) as f32)
                    }
                    (None, Some(window)) => {
                        let window: HuWindow = window;
                        $kernel::<$n, _>($raw, $($args,)* move |b: [u8; $n]| window.normalize_value(conv(b) as f32))
                    }
                    (Some(Rescale { slope, inter }), Some(window)) => {
                        let window: HuWindow = window;
                        $kernel::<$n, _>($raw, $($args,)* move |b: [u8; $n]| {
                            window.normalize_value((conv(b) as f64 * slope + inter) as f32)
                        })
                    }
                }
            }};
        }
        match ($element_type, $big_endian) {
            (ElementType::U8, _) => run!(1, |b: [u8; 1]| b[0]),
            (ElementType::I8, _) => run!(1, |b: [u8; 1]| b[0] as i8),
            (ElementType::U16, false) => run!(2, u16::from_le_bytes),
            (ElementType::U16, true) => run!(2, u16::from_be_bytes),
            (ElementType::I16, false) => run!(2, i16::from_le_bytes),
            (ElementType::I16, true) => run!(2, i16::from_be_bytes),
            (ElementType::U32, false) => run!(4, u32::from_le_bytes),
            (ElementType::U32, true) => run!(4, u32::from_be_bytes),
            (ElementType::I32, false) => run!(4, i32::from_le_bytes),
            (ElementType::I32, true) => run!(4, i32::from_be_bytes),
            (ElementType::F32, false) => run!(4, f32::from_le_bytes),
            (ElementType::F32, true) => run!(4, f32::from_be_bytes),
            (ElementType::F64, false) => run!(8, f64::from_le_bytes),
            (ElementType::F64, true) => run!(8, f64::from_be_bytes),
        }
    }};
}

/// Decodes an x-fastest buffer of `dims` into a C-layout `data[[x, y, z]]` array.
///
/// `raw` must hold exactly `nx·ny·nz·size_of(element_type)` bytes (checked by the callers;
/// a mismatch yields a zero-filled tail rather than a panic).
pub(crate) fn decode_volume(
    raw: &[u8],
    element_type: ElementType,
    big_endian: bool,
    dims: [usize; 3],
    rescale: Option<Rescale>,
    window: Option<HuWindow>,
) -> Array3<f32> {
    let mut data = Array3::<f32>::zeros((dims[0], dims[1], dims[2]));
    if let Some(out) = data.as_slice_mut() {
        advise_huge_pages(out);
        decoders!(
            raw,
            element_type,
            big_endian,
            rescale,
            window,
            transpose_kernel,
            dims,
            out
        );
    }
    data
}

/// Asks Linux to back a large, freshly allocated buffer with transparent huge
/// pages before it is first written.
///
/// Faulting in 4 KiB pages one by one costs more than converting the voxels
/// (about 150 ms for a 512×512×300 f32 volume on the 2-core test machine);
/// 2 MiB pages cut the number of faults 512-fold. The advice changes no
/// contents, so ignoring its failure (THP disabled, another OS) is correct.
pub(crate) fn advise_huge_pages<T>(buffer: &mut [T]) {
    #[cfg(target_os = "linux")]
    {
        const MADV_HUGEPAGE: std::ffi::c_int = 14;
        const PAGE: usize = 4096;
        unsafe extern "C" {
            fn madvise(
                addr: *mut std::ffi::c_void,
                len: usize,
                advice: std::ffi::c_int,
            ) -> std::ffi::c_int;
        }
        let bytes = std::mem::size_of_val(buffer);
        if bytes < (4 << 20) {
            return;
        }
        let start = buffer.as_mut_ptr() as usize;
        let aligned_start = start.next_multiple_of(PAGE);
        let aligned_end = (start + bytes) & !(PAGE - 1);
        if aligned_end > aligned_start {
            // SAFETY: the range lies inside `buffer`, which we borrow mutably;
            // MADV_HUGEPAGE only changes how the pages are backed, not their contents.
            let _ = unsafe {
                madvise(
                    aligned_start as *mut std::ffi::c_void,
                    aligned_end - aligned_start,
                    MADV_HUGEPAGE,
                )
            };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buffer;
}

/// Decodes a contiguous buffer element by element (no transpose) into `out`.
pub(crate) fn decode_flat(
    raw: &[u8],
    element_type: ElementType,
    big_endian: bool,
    out: &mut [f32],
) {
    decoders!(
        raw,
        element_type,
        big_endian,
        None::<Rescale>,
        None::<HuWindow>,
        flat_kernel,
        out
    );
}

/// x-extent of the slabs the transpose works on in parallel.
const SLAB_X: usize = 256;
/// Tile of the in-cache 2-D transpose (x by z).
const TILE_X: usize = 8;
const TILE_Z: usize = 16;

/// Decodes `raw` (x fastest) into `out` (z fastest), one x-slab per task.
///
/// For each y row of a slab, the `nz × slab` plane is first decoded with
/// sequential reads into a small buffer that stays in cache, then written out
/// as contiguous z runs through a tiled in-cache transpose. Reading the file
/// order directly with large strides was three times slower.
fn transpose_kernel<const N: usize, F>(raw: &[u8], dims: [usize; 3], out: &mut [f32], decode: F)
where
    F: Fn([u8; N]) -> f32 + Sync + Send,
{
    let [nx, ny, nz] = dims;
    if nx == 0 || ny == 0 || nz == 0 || raw.len() < nx * ny * nz * N || out.len() < nx * ny * nz {
        return;
    }
    out.par_chunks_mut(SLAB_X * ny * nz)
        .enumerate()
        .for_each(|(block, chunk)| {
            let x0 = block * SLAB_X;
            let xn = chunk.len() / (ny * nz);
            let mut plane = vec![0f32; nz * xn];
            for y in 0..ny {
                for z in 0..nz {
                    let start = ((z * ny + y) * nx + x0) * N;
                    if z + PREFETCH_Z < nz {
                        prefetch(raw, ((z + PREFETCH_Z) * ny + y) * nx + x0, xn, N);
                    }
                    let row = &raw[start..start + xn * N];
                    let dst = &mut plane[z * xn..(z + 1) * xn];
                    for (d, bytes) in dst.iter_mut().zip(row.chunks_exact(N)) {
                        let mut b = [0u8; N];
                        b.copy_from_slice(bytes);
                        *d = decode(b);
                    }
                }
                for k0 in (0..xn).step_by(TILE_X) {
                    for z0 in (0..nz).step_by(TILE_Z) {
                        let zn = TILE_Z.min(nz - z0);
                        for k in k0..(k0 + TILE_X).min(xn) {
                            let o = (k * ny + y) * nz + z0;
                            for (z, d) in chunk[o..o + zn].iter_mut().enumerate() {
                                *d = plane[(z0 + z) * xn + k];
                            }
                        }
                    }
                }
            }
        });
}

/// How many z planes ahead the transpose prefetches its input rows.
///
/// Consecutive rows of one y lie a whole z plane apart (512 KiB for LUNA16
/// scans), too far for the hardware prefetcher, so without this the decode
/// waited on memory for most of its time.
const PREFETCH_Z: usize = 8;

/// Hints the CPU to load `count` elements of `size` bytes from `raw` at element `index`.
#[inline(always)]
fn prefetch(raw: &[u8], index: usize, count: usize, size: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let start = index * size;
        let end = (start + count * size).min(raw.len());
        let mut at = start;
        while at < end {
            // SAFETY: `at < raw.len()`, so the address lies inside `raw`; a
            // prefetch reads nothing architecturally and cannot fault.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    raw.as_ptr().add(at).cast(),
                )
            };
            at += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (raw, index, count, size);
}

fn flat_kernel<const N: usize, F>(raw: &[u8], out: &mut [f32], decode: F)
where
    F: Fn([u8; N]) -> f32 + Sync + Send,
{
    const CHUNK: usize = 1 << 16;
    out.par_chunks_mut(CHUNK)
        .zip(raw.par_chunks(CHUNK * N))
        .for_each(|(o, r)| {
            for (v, bytes) in o.iter_mut().zip(r.chunks_exact(N)) {
                let mut b = [0u8; N];
                b.copy_from_slice(bytes);
                *v = decode(b);
            }
        });
}

/// Encodes `values` (in the order given) as `element_type`, little-endian;
/// integers are rounded and clamped (NaN becomes 0).
pub(crate) fn encode_values<'a>(
    values: impl Iterator<Item = &'a f32>,
    len: usize,
    element_type: ElementType,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(len * element_type.size_of());
    // `as` from float to integer rounds toward zero, saturates and maps NaN to 0,
    // so rounding first gives round-and-clamp.
    match element_type {
        ElementType::U8 => values.for_each(|v| out.push(v.round() as u8)),
        ElementType::I8 => values.for_each(|v| out.push(v.round() as i8 as u8)),
        ElementType::U16 => {
            values.for_each(|v| out.extend_from_slice(&(v.round() as u16).to_le_bytes()))
        }
        ElementType::I16 => {
            values.for_each(|v| out.extend_from_slice(&(v.round() as i16).to_le_bytes()))
        }
        ElementType::U32 => {
            values.for_each(|v| out.extend_from_slice(&((*v as f64).round() as u32).to_le_bytes()))
        }
        ElementType::I32 => {
            values.for_each(|v| out.extend_from_slice(&((*v as f64).round() as i32).to_le_bytes()))
        }
        ElementType::F32 => values.for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        ElementType::F64 => values.for_each(|v| out.extend_from_slice(&(*v as f64).to_le_bytes())),
    }
    out
}

/// Encodes a volume's data x-fastest (the on-disk order of all volume formats), little-endian.
pub(crate) fn encode_volume(data: &Array3<f32>, element_type: ElementType) -> Vec<u8> {
    // Iterating the reversed-axes view walks x fastest.
    let fortran = data.t();
    encode_values(fortran.iter(), data.len(), element_type)
}

/// Builds a C-layout array from values stored in Fortran (first-axis-fastest) order.
pub(crate) fn fortran_to_c(values: Vec<f32>, shape: &[usize]) -> Option<ndarray::ArrayD<f32>> {
    let array = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(shape).f(), values).ok()?;
    Some(array.as_standard_layout().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fortran_bytes_i16(dims: [usize; 3], f: impl Fn(usize, usize, usize) -> i16) -> Vec<u8> {
        let mut raw = Vec::new();
        for z in 0..dims[2] {
            for y in 0..dims[1] {
                for x in 0..dims[0] {
                    raw.extend_from_slice(&f(x, y, z).to_le_bytes());
                }
            }
        }
        raw
    }

    #[test]
    fn large_uncompressed_data_is_mapped_and_matches_a_read() {
        // Just over the mapping threshold, behind a 100-byte header, with a
        // width over one transpose slab.
        let dims = [300usize, 7, MAP_THRESHOLD / (300 * 7 * 2) + 1];
        let f = |x: usize, y: usize, z: usize| ((x * 7 + y * 13 + z * 31) % 4000) as i16 - 2000;
        let voxels = fortran_bytes_i16(dims, f);
        assert!(voxels.len() >= MAP_THRESHOLD);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.raw");
        let mut file_bytes = vec![b'#'; 100];
        file_bytes.extend_from_slice(&voxels);
        std::fs::write(&path, &file_bytes).unwrap();

        for offset in [Some(100), None] {
            let bytes =
                read_exact_bytes(&path, offset, voxels.len(), &path, dims, ElementType::I16)
                    .unwrap();
            assert!(matches!(bytes, Bytes::Mapped(_)));
            assert!(bytes[..] == voxels[..]);
        }
        let mapped = read_exact_bytes(
            &path,
            Some(100),
            voxels.len(),
            &path,
            dims,
            ElementType::I16,
        )
        .unwrap();
        let data = decode_volume(&mapped, ElementType::I16, false, dims, None, None);
        for ((x, y, z), &v) in data.indexed_iter() {
            assert_eq!(v, f(x, y, z) as f32, "at {x},{y},{z}");
        }
        // One byte short is still the size error, not a mapping past the end.
        let short = read_exact_bytes(
            &path,
            Some(101),
            voxels.len(),
            &path,
            dims,
            ElementType::I16,
        );
        assert!(short.is_err());
        // Bytes beyond the data are refused too (here a header taken for data),
        // naming both sizes and how to say that the data ends the file.
        let Err(long) =
            read_exact_bytes(&path, Some(0), voxels.len(), &path, dims, ElementType::I16)
        else {
            panic!("a file 100 bytes longer than its data was read");
        };
        let long = long.to_string();
        assert!(
            long.contains(&format!("holds {} bytes", voxels.len() + 100)),
            "{long}"
        );
        assert!(long.contains("HeaderSize = -1"), "{long}");
    }

    #[test]
    fn transpose_kernel_matches_naive_on_odd_sizes() {
        for dims in [[1, 1, 1], [37, 5, 19], [64, 3, 33], [5, 4, 3], [300, 2, 11]] {
            let f = |x: usize, y: usize, z: usize| (x * 100 + y * 10 + z) as i16 - 500;
            let raw = fortran_bytes_i16(dims, f);
            let data = decode_volume(&raw, ElementType::I16, false, dims, None, None);
            for ((x, y, z), &v) in data.indexed_iter() {
                assert_eq!(v, f(x, y, z) as f32, "at {x},{y},{z} dims {dims:?}");
            }
            // The fused window gives the same values as windowing afterwards.
            let fused = decode_volume(
                &raw,
                ElementType::I16,
                false,
                dims,
                None,
                Some(HuWindow::CT),
            );
            assert_eq!(fused, data.mapv(|v| HuWindow::CT.normalize_value(v)));
            // And back again.
            assert_eq!(encode_volume(&data, ElementType::I16), raw);
        }
    }

    #[test]
    fn big_endian_and_rescale() {
        let raw: Vec<u8> = [1i16, -2, 300]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        let data = decode_volume(
            &raw,
            ElementType::I16,
            true,
            [3, 1, 1],
            Some(Rescale {
                slope: 2.0,
                inter: -1.0,
            }),
            None,
        );
        assert_eq!(data.as_slice().unwrap(), &[1.0, -5.0, 599.0]);
    }

    #[test]
    fn encode_rounds_and_clamps() {
        let values = [-0.6f32, 0.4, 1.5, 300.0, f32::NAN, -1e9];
        assert_eq!(
            encode_values(values.iter(), 6, ElementType::U8),
            vec![0, 0, 2, 255, 0, 0]
        );
        let i16s = encode_values(values.iter(), 6, ElementType::I16);
        let back: Vec<i16> = i16s
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(back, vec![-1, 0, 2, 300, 0, -32768]);
    }

    #[test]
    fn absurd_and_zero_dims_rejected() {
        assert!(checked_data_bytes([1_000_000, 1_000_000, 1], ElementType::I16).is_err());
        assert!(checked_data_bytes([u64::MAX, u64::MAX, 2], ElementType::I16).is_err());
        assert!(checked_data_bytes([5, 0, 3], ElementType::I16).is_err());
        assert_eq!(checked_data_bytes([5, 4, 3], ElementType::I16), Ok(120));
    }
}
