//! NumPy `.npy` files: whole-array read and write, a streaming stack writer,
//! and a memory-mapped stack reader for cube sets larger than RAM.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, ArrayViewD, IxDyn};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ParseError, Result, bad, unsupported};
use crate::raw;
use crate::volume::ElementType;

/// Element types of `.npy` files we read and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NpyDtype {
    /// `<f4`
    F32,
    /// `<f8`, the type of the original Models Genesis cube stacks.
    F64,
    /// `<i2`, CT in Hounsfield units.
    I16,
    /// `|u1`
    U8,
    /// `|b1`, masks; written as 1 for values that are non-zero (NaN counts as false).
    Bool,
}

impl NpyDtype {
    /// Bytes per element.
    pub fn size_of(self) -> usize {
        match self {
            NpyDtype::F32 => 4,
            NpyDtype::F64 => 8,
            NpyDtype::I16 => 2,
            NpyDtype::U8 | NpyDtype::Bool => 1,
        }
    }

    fn descr(self) -> &'static str {
        match self {
            NpyDtype::F32 => "<f4",
            NpyDtype::F64 => "<f8",
            NpyDtype::I16 => "<i2",
            NpyDtype::U8 => "|u1",
            NpyDtype::Bool => "|b1",
        }
    }

    /// The volume element type with the same bytes (booleans are bytes).
    fn element_type(self) -> ElementType {
        match self {
            NpyDtype::F32 => ElementType::F32,
            NpyDtype::F64 => ElementType::F64,
            NpyDtype::I16 => ElementType::I16,
            NpyDtype::U8 | NpyDtype::Bool => ElementType::U8,
        }
    }

    /// The `.npy` type that holds a volume element type without loss, where one exists.
    pub fn for_element_type(element_type: ElementType) -> Option<NpyDtype> {
        match element_type {
            ElementType::F32 => Some(NpyDtype::F32),
            ElementType::F64 => Some(NpyDtype::F64),
            ElementType::I16 => Some(NpyDtype::I16),
            ElementType::U8 => Some(NpyDtype::U8),
            _ => None,
        }
    }
}

/// A parsed `.npy` header.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NpyHeader {
    pub dtype: NpyDtype,
    pub big_endian: bool,
    pub fortran_order: bool,
    pub shape: Vec<usize>,
    /// Byte offset of the data.
    pub data_offset: usize,
}

impl NpyHeader {
    /// Number of elements, or `None` on overflow.
    fn len(&self) -> Option<usize> {
        self.shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }

    fn data_bytes(&self) -> Option<usize> {
        self.len()?.checked_mul(self.dtype.size_of())
    }
}

const MAGIC: &[u8] = b"\x93NUMPY";
const MAX_NDIM: usize = 32;

/// A tiny parser for the Python dict literal of a `.npy` header.
struct DictParser<'a> {
    text: &'a [u8],
    pos: usize,
}

#[derive(Debug)]
enum PyValue {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
}

impl DictParser<'_> {
    fn skip_ws(&mut self) {
        while self.pos < self.text.len() && self.text[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.text.get(self.pos).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), ParseError> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            bad(format!(
                "header dictionary: expected {:?} at byte {}",
                c as char, self.pos
            ))
        }
    }

    fn string(&mut self) -> Result<String, ParseError> {
        let quote = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => {
                return bad(format!(
                    "header dictionary: expected a quoted string at byte {}",
                    self.pos
                ));
            }
        };
        self.pos += 1;
        let start = self.pos;
        while self.pos < self.text.len() && self.text[self.pos] != quote {
            self.pos += 1;
        }
        if self.pos >= self.text.len() {
            return bad("header dictionary: unterminated string");
        }
        let s = String::from_utf8_lossy(&self.text[start..self.pos]).into_owned();
        self.pos += 1;
        Ok(s)
    }

    fn value(&mut self) -> Result<PyValue, ParseError> {
        match self.peek() {
            Some(b'\'' | b'"') => Ok(PyValue::Str(self.string()?)),
            Some(b'(') => {
                self.pos += 1;
                let mut dims = Vec::new();
                loop {
                    match self.peek() {
                        Some(b')') => {
                            self.pos += 1;
                            break;
                        }
                        Some(b'0'..=b'9') => {
                            let start = self.pos;
                            while self.pos < self.text.len() && self.text[self.pos].is_ascii_digit()
                            {
                                self.pos += 1;
                            }
                            let digits =
                                std::str::from_utf8(&self.text[start..self.pos]).unwrap_or("");
                            let d: usize = digits.parse().map_err(|_| {
                                ParseError::Format(format!("shape: {digits} is too large"))
                            })?;
                            if self.text.get(self.pos) == Some(&b'L') {
                                self.pos += 1; // Python 2 long suffix.
                            }
                            dims.push(d);
                            if dims.len() > MAX_NDIM {
                                return bad(format!("shape: more than {MAX_NDIM} dimensions"));
                            }
                            match self.peek() {
                                Some(b',') => self.pos += 1,
                                Some(b')') => {}
                                _ => return bad("shape: expected ',' or ')'"),
                            }
                        }
                        _ => return bad("shape: expected a tuple of non-negative integers"),
                    }
                }
                Ok(PyValue::Tuple(dims))
            }
            Some(b'T') if self.text[self.pos..].starts_with(b"True") => {
                self.pos += 4;
                Ok(PyValue::Bool(true))
            }
            Some(b'F') if self.text[self.pos..].starts_with(b"False") => {
                self.pos += 5;
                Ok(PyValue::Bool(false))
            }
            Some(b'[') => unsupported("descr: structured dtypes are not read"),
            _ => bad(format!(
                "header dictionary: unexpected value at byte {}",
                self.pos
            )),
        }
    }
}

fn parse_descr(descr: &str) -> Result<(NpyDtype, bool), ParseError> {
    let (order, code) = match descr.as_bytes().first() {
        Some(b'<' | b'=' | b'|') => (false, &descr[1..]),
        Some(b'>') => (true, &descr[1..]),
        _ => (false, descr),
    };
    let dtype = match code {
        "f4" => NpyDtype::F32,
        "f8" => NpyDtype::F64,
        "i2" => NpyDtype::I16,
        "u1" => NpyDtype::U8,
        "b1" | "?" => NpyDtype::Bool,
        _ => {
            return unsupported(format!(
                "descr {descr:?} (only float32, float64, int16, uint8 and bool are read)"
            ));
        }
    };
    Ok((dtype, order && dtype.size_of() > 1))
}

/// Parses the header of a `.npy` file (versions 1.0, 2.0 and 3.0).
pub(crate) fn parse_header(bytes: &[u8]) -> Result<NpyHeader, ParseError> {
    if !bytes.starts_with(MAGIC) {
        return bad("does not start with the .npy magic \\x93NUMPY");
    }
    let (major, minor) = match bytes.get(6..8) {
        Some(v) => (v[0], v[1]),
        None => return bad("header is truncated"),
    };
    let (len_bytes, start) = match major {
        1 => (2, 10),
        2 | 3 => (4, 12),
        _ => return unsupported(format!("format version {major}.{minor}")),
    };
    let Some(len_field) = bytes.get(8..8 + len_bytes) else {
        return bad("header is truncated");
    };
    let header_len = if len_bytes == 2 {
        u16::from_le_bytes([len_field[0], len_field[1]]) as usize
    } else {
        u32::from_le_bytes([len_field[0], len_field[1], len_field[2], len_field[3]]) as usize
    };
    let Some(text) = bytes.get(start..start + header_len) else {
        return bad(format!(
            "header claims {header_len} bytes but the file is shorter"
        ));
    };
    let mut parser = DictParser { text, pos: 0 };
    parser.expect(b'{')?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    loop {
        if parser.peek() == Some(b'}') {
            break;
        }
        let key = parser.string()?;
        parser.expect(b':')?;
        let value = parser.value()?;
        match (key.as_str(), value) {
            ("descr", PyValue::Str(s)) => descr = Some(parse_descr(&s)?),
            ("fortran_order", PyValue::Bool(b)) => fortran = Some(b),
            ("shape", PyValue::Tuple(t)) => shape = Some(t),
            (k, v) => return bad(format!("header key {k:?} has an unexpected value {v:?}")),
        }
        match parser.peek() {
            Some(b',') => parser.pos += 1,
            Some(b'}') => {}
            _ => return bad("header dictionary: expected ',' or '}'"),
        }
    }
    let (dtype, big_endian) =
        descr.ok_or_else(|| ParseError::Format("header has no 'descr'".into()))?;
    let header = NpyHeader {
        dtype,
        big_endian,
        fortran_order: fortran
            .ok_or_else(|| ParseError::Format("header has no 'fortran_order'".into()))?,
        shape: shape.ok_or_else(|| ParseError::Format("header has no 'shape'".into()))?,
        data_offset: start + header_len,
    };
    if header.data_bytes().is_none() {
        return bad(format!("shape {:?} overflows", header.shape));
    }
    Ok(header)
}

/// Builds a version 1.0 (2.0 if needed) header padded to at least `min_total`
/// bytes and to a multiple of 64, as NumPy does.
fn header_bytes(dtype: NpyDtype, shape_text: &str, min_total: usize) -> Vec<u8> {
    let dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape_text}, }}",
        dtype.descr()
    );
    let total_for = |preamble: usize| (preamble + dict.len() + 1).max(min_total).div_ceil(64) * 64;
    let mut total = total_for(10);
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(MAGIC);
    if total - 10 <= u16::MAX as usize {
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&((total - 10) as u16).to_le_bytes());
    } else {
        total = total_for(12);
        out.extend_from_slice(&[2, 0]);
        out.extend_from_slice(&((total - 12) as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(total - 1, b' ');
    out.push(b'\n');
    out
}

#[cfg(test)]
fn header_len_of(bytes: &[u8]) -> usize {
    if bytes[6] == 1 {
        u16::from_le_bytes([bytes[8], bytes[9]]) as usize
    } else {
        u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize
    }
}

fn shape_text(shape: &[usize]) -> String {
    match shape {
        [] => "()".to_string(),
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn encode(values: impl Iterator<Item = f32>, len: usize, dtype: NpyDtype) -> Vec<u8> {
    match dtype {
        NpyDtype::Bool => values.map(|v| u8::from(v != 0.0 && !v.is_nan())).collect(),
        _ => {
            let values: Vec<f32> = values.collect();
            raw::encode_values(values.iter(), len, dtype.element_type())
        }
    }
}

fn decode(bytes: &[u8], header: &NpyHeader, out: &mut [f32]) {
    raw::decode_flat(bytes, header.dtype.element_type(), header.big_endian, out);
    if header.dtype == NpyDtype::Bool {
        for v in out.iter_mut() {
            *v = if *v != 0.0 { 1.0 } else { 0.0 };
        }
    }
}

fn read_prefix(path: &Path, file: &mut File) -> Result<Vec<u8>> {
    let mut prefix = Vec::new();
    file.take(1 << 20)
        .read_to_end(&mut prefix)
        .map_err(|e| Error::io(path, e))?;
    Ok(prefix)
}

/// Reads a whole `.npy` array as f32 in logical C order (Fortran-order files are transposed).
pub fn read_npy(path: impl AsRef<Path>) -> Result<ArrayD<f32>> {
    let path = path.as_ref();
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let header = parse_header(&read_prefix(path, &mut file)?).map_err(|e| e.at(path))?;
    let len = header.len().unwrap_or(usize::MAX);
    if len as u64 > raw::MAX_VOXELS {
        return Err(Error::format(
            path,
            format!(
                "shape {:?} has {len} elements, more than the limit of {} for reading into memory (use NpyStack)",
                header.shape,
                raw::MAX_VOXELS
            ),
        ));
    }
    let data_bytes = len * header.dtype.size_of();
    let available = file_len.saturating_sub(header.data_offset as u64);
    if available < data_bytes as u64 {
        return Err(Error::format(
            path,
            format!(
                "shape {:?} of {} needs {data_bytes} data bytes but the file holds {available}",
                header.shape,
                header.dtype.descr()
            ),
        ));
    }
    file.seek(SeekFrom::Start(header.data_offset as u64))
        .map_err(|e| Error::io(path, e))?;
    let mut bytes = vec![0u8; data_bytes];
    file.read_exact(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    let mut values = vec![0f32; len];
    decode(&bytes, &header, &mut values);
    let array = if header.fortran_order {
        raw::fortran_to_c(values, &header.shape)
    } else {
        ArrayD::from_shape_vec(IxDyn(&header.shape), values).ok()
    };
    array.ok_or_else(|| {
        Error::format(
            path,
            format!("shape {:?} does not match the data", header.shape),
        )
    })
}

/// Writes an array as a C-order `.npy` file of `dtype`, atomically.
///
/// Integer types round and clamp; `Bool` writes non-zero (non-NaN) values as true.
pub fn write_npy(path: impl AsRef<Path>, array: ArrayViewD<f32>, dtype: NpyDtype) -> Result<()> {
    let path = path.as_ref();
    let header = header_bytes(dtype, &shape_text(array.shape()), 0);
    let data = encode(array.iter().copied(), array.len(), dtype);
    crate::atomic::write_atomic(path, |w| {
        w.write_all(&header)?;
        w.write_all(&data)
    })
}

/// Streams items of one shape into a `(N, *item_shape)` C-order `.npy` file.
///
/// Items are written as they come (nothing is held in memory); the header,
/// which holds `N`, is rewritten by [`NpyStackWriter::finish`]. The data goes
/// to `<path>.tmp`, renamed to `path` on finish, so readers never see a
/// partial file; dropping the writer unfinished deletes the temporary file.
#[derive(Debug)]
pub struct NpyStackWriter {
    path: PathBuf,
    temp: PathBuf,
    writer: Option<BufWriter<File>>,
    item_shape: Vec<usize>,
    item_len: usize,
    dtype: NpyDtype,
    header_len: usize,
    n_items: usize,
}

impl NpyStackWriter {
    /// Starts a stack at `path` (written to `<path>.tmp` until finished).
    pub fn create(path: impl AsRef<Path>, item_shape: &[usize], dtype: NpyDtype) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let item_len = item_shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{}: item shape {item_shape:?} is empty or too large",
                    path.display()
                ))
            })?;
        let mut temp = path.clone().into_os_string();
        temp.push(".tmp");
        let temp = PathBuf::from(temp);
        let mut shape = vec![usize::MAX];
        shape.extend_from_slice(item_shape);
        // Reserve room for the largest possible N so the final header fits in place.
        let placeholder = header_bytes(dtype, &shape_text(&shape), 0);
        let file = File::create(&temp).map_err(|e| Error::io(&temp, e))?;
        let mut writer = BufWriter::with_capacity(1 << 20, file);
        writer
            .write_all(&placeholder)
            .map_err(|e| Error::io(&temp, e))?;
        Ok(NpyStackWriter {
            path,
            temp,
            writer: Some(writer),
            item_shape: item_shape.to_vec(),
            item_len,
            dtype,
            header_len: placeholder.len(),
            n_items: 0,
        })
    }

    /// Appends one item, given in C order of `item_shape`.
    pub fn append(&mut self, item: &[f32]) -> Result<()> {
        if item.len() != self.item_len {
            return Err(Error::InvalidArgument(format!(
                "{}: item has {} values but item shape {:?} needs {}",
                self.path.display(),
                item.len(),
                self.item_shape,
                self.item_len
            )));
        }
        let bytes = encode(item.iter().copied(), item.len(), self.dtype);
        let writer = self.writer.as_mut().ok_or_else(|| {
            Error::InvalidArgument(format!("{}: writer already failed", self.path.display()))
        })?;
        writer
            .write_all(&bytes)
            .map_err(|e| Error::io(&self.temp, e))?;
        self.n_items += 1;
        Ok(())
    }

    /// Number of items appended so far.
    pub fn len(&self) -> usize {
        self.n_items
    }

    /// Whether no item has been appended.
    pub fn is_empty(&self) -> bool {
        self.n_items == 0
    }

    /// Writes the final header, syncs, and renames the file into place; returns its path.
    pub fn finish(mut self) -> Result<PathBuf> {
        let Some(writer) = self.writer.take() else {
            return Err(Error::InvalidArgument(format!(
                "{}: writer already failed",
                self.path.display()
            )));
        };
        let mut shape = vec![self.n_items];
        shape.extend_from_slice(&self.item_shape);
        let header = header_bytes(self.dtype, &shape_text(&shape), self.header_len);
        let temp = self.temp.clone();
        let result = (|| -> std::io::Result<()> {
            let mut file = writer.into_inner().map_err(|e| e.into_error())?;
            if header.len() != self.header_len {
                return Err(std::io::Error::other(
                    "final header does not fit the reserved space",
                ));
            }
            file.seek(SeekFrom::Start(0))?;
            file.write_all(&header)?;
            file.sync_all()
        })();
        result.map_err(|e| Error::io(&temp, e))?;
        crate::atomic::commit(&temp, &self.path)?;
        self.temp = PathBuf::new();
        Ok(self.path.clone())
    }
}

impl Drop for NpyStackWriter {
    fn drop(&mut self) {
        if !self.temp.as_os_str().is_empty() {
            drop(self.writer.take());
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// A read-only, memory-mapped `.npy` stack: items along axis 0.
///
/// Opening maps the file and reads only its header, so a 14 GB training set
/// costs no RAM until items are read. `Send + Sync`: data loader threads can
/// share one stack. The file must not be modified while it is open.
#[derive(Debug)]
pub struct NpyStack {
    path: PathBuf,
    map: memmap2::Mmap,
    header: NpyHeader,
    item_shape: Vec<usize>,
    item_len: usize,
}

impl NpyStack {
    /// Maps a `.npy` file with at least one dimension.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        if file.metadata().is_ok_and(|m| m.is_dir()) {
            return Err(Error::format(&path, "is a directory, not a .npy file"));
        }
        // SAFETY: the map is read-only; as documented, the file must not be
        // truncated or modified while the stack is open.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let header = parse_header(&map).map_err(|e| e.at(&path))?;
        if header.shape.is_empty() {
            return Err(Error::format(&path, "shape () is a scalar, not a stack"));
        }
        let item_shape = header.shape[1..].to_vec();
        let item_len = item_shape.iter().product::<usize>();
        let needed = header.data_bytes().unwrap_or(usize::MAX);
        let available = map.len().saturating_sub(header.data_offset);
        if available < needed {
            return Err(Error::format(
                &path,
                format!(
                    "shape {:?} of {} needs {needed} data bytes but the file holds {available}",
                    header.shape,
                    header.dtype.descr()
                ),
            ));
        }
        Ok(NpyStack {
            path,
            map,
            header,
            item_shape,
            item_len,
        })
    }

    /// Number of items (the size of axis 0).
    pub fn len(&self) -> usize {
        self.header.shape[0]
    }

    /// Whether the stack holds no items.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Shape of one item (the shape without axis 0).
    pub fn item_shape(&self) -> &[usize] {
        &self.item_shape
    }

    /// Element type on disk.
    pub fn dtype(&self) -> NpyDtype {
        self.header.dtype
    }

    /// The mapped file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Copies item `index` as f32 in C order into `out` (length = product of `item_shape`).
    pub fn read_item_into(&self, index: usize, out: &mut [f32]) -> Result<()> {
        if index >= self.len() {
            return Err(Error::InvalidArgument(format!(
                "{}: item {index} out of range (stack has {})",
                self.path.display(),
                self.len()
            )));
        }
        if out.len() != self.item_len {
            return Err(Error::InvalidArgument(format!(
                "{}: output buffer has {} values but items have {}",
                self.path.display(),
                out.len(),
                self.item_len
            )));
        }
        let size = self.header.dtype.size_of();
        let data = &self.map[self.header.data_offset..];
        if !self.header.fortran_order {
            let start = index * self.item_len * size;
            decode(
                &data[start..start + self.item_len * size],
                &self.header,
                out,
            );
            return Ok(());
        }
        // Fortran order: element (i, j₁, …, j_k) sits at i + N·(j₁ + d₁·(j₂ + …)).
        let n = self.len();
        let ndim = self.item_shape.len();
        let mut strides = vec![0usize; ndim];
        let mut stride = n;
        for (s, &d) in strides.iter_mut().zip(&self.item_shape) {
            *s = stride;
            stride *= d;
        }
        let mut index_nd = vec![0usize; ndim];
        let mut element = [0f32; 1];
        for slot in out.iter_mut() {
            let offset = index
                + index_nd
                    .iter()
                    .zip(&strides)
                    .map(|(j, s)| j * s)
                    .sum::<usize>();
            decode(
                &data[offset * size..(offset + 1) * size],
                &self.header,
                &mut element,
            );
            *slot = element[0];
            // Advance the C-order odometer (last axis fastest).
            for axis in (0..ndim).rev() {
                index_nd[axis] += 1;
                if index_nd[axis] < self.item_shape[axis] {
                    break;
                }
                index_nd[axis] = 0;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_64_aligned_and_parses_back() {
        for shape in [vec![], vec![7], vec![3, 64, 64, 32]] {
            let h = header_bytes(NpyDtype::F64, &shape_text(&shape), 0);
            assert_eq!(h.len() % 64, 0);
            assert_eq!(*h.last().unwrap(), b'\n');
            let parsed = parse_header(&h).unwrap();
            assert_eq!(parsed.shape, shape);
            assert_eq!(parsed.dtype, NpyDtype::F64);
            assert_eq!(parsed.data_offset, h.len());
            assert!(!parsed.fortran_order);
        }
    }

    #[test]
    fn long_header_uses_version_2() {
        let shape = vec![1usize; 30000];
        let h = header_bytes(NpyDtype::U8, &shape_text(&shape), 0);
        assert_eq!(h[6], 2);
        assert_eq!(h.len() % 64, 0);
        // Our parser caps ndim, so check the length field only.
        assert_eq!(header_len_of(&h) + 12, h.len());
    }

    #[test]
    fn parses_numpy_variants() {
        let make = |dict: &str, version: u8| {
            let mut b = MAGIC.to_vec();
            b.extend_from_slice(&[version, 0]);
            if version == 1 {
                b.extend_from_slice(&(dict.len() as u16).to_le_bytes());
            } else {
                b.extend_from_slice(&(dict.len() as u32).to_le_bytes());
            }
            b.extend_from_slice(dict.as_bytes());
            b
        };
        let h = parse_header(&make(
            "{'descr': '>f8', 'fortran_order': True, 'shape': (2L, 3), }",
            1,
        ))
        .unwrap();
        assert!(h.big_endian && h.fortran_order);
        assert_eq!(h.shape, vec![2, 3]);
        let h = parse_header(&make(
            "{\"descr\":\"|b1\",\"fortran_order\":False,\"shape\":()}",
            3,
        ))
        .unwrap();
        assert_eq!(h.dtype, NpyDtype::Bool);
        assert!(h.shape.is_empty());
        for (dict, needle) in [
            (
                "{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }",
                "descr",
            ),
            ("{'descr': '<f4', 'shape': (2,), }", "fortran_order"),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,), }",
                "too large",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }",
                "overflows",
            ),
            (
                "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }",
                "structured",
            ),
            (
                "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,), }",
                "unexpected value",
            ),
        ] {
            let message = format!("{:?}", parse_header(&make(dict, 1)).unwrap_err());
            assert!(message.contains(needle), "{dict} gave {message}");
        }
    }
}
