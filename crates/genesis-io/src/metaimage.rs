//! MetaImage (`.mhd` + detached data, `.mha` single file), the format of LUNA16.
//!
//! Keys are matched case-insensitively; unknown keys are ignored, as ITK does.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, ParseError, Result, bad, unsupported};
use crate::raw::{self, MAX_HEADER_BYTES};
use crate::volume::{ElementType, IDENTITY_DIRECTION, Volume};

/// Where the voxel data of a MetaImage lives.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum DataFile {
    /// Right after the header, in the same file.
    Local,
    /// A file name relative to the header's directory.
    Detached(String),
}

/// The parsed header of a MetaImage file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MetaHeader {
    pub dims: [usize; 3],
    pub element_type: ElementType,
    pub spacing: [f64; 3],
    pub origin: [f64; 3],
    pub direction: [[f64; 3]; 3],
    pub big_endian: bool,
    pub compressed: bool,
    pub compressed_size: Option<u64>,
    pub header_size: Option<i64>,
    pub data_file: DataFile,
    /// Bytes taken by the header text, up to and including the ElementDataFile line.
    pub header_len: usize,
}

fn parse_bool(key: &str, value: &str) -> Result<bool, ParseError> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => bad(format!("{key} = {value:?}: expected True or False")),
    }
}

fn parse_floats<const N: usize>(key: &str, value: &str) -> Result<[f64; N], ParseError> {
    let mut out = [0.0; N];
    let mut parts = value.split_whitespace();
    for slot in out.iter_mut() {
        let part = parts.next().ok_or_else(|| {
            ParseError::Format(format!("{key} = {value:?}: expected {N} numbers"))
        })?;
        let v: f64 = part.parse().map_err(|_| {
            ParseError::Format(format!("{key} = {value:?}: {part:?} is not a number"))
        })?;
        if !v.is_finite() {
            return bad(format!("{key} = {value:?}: values must be finite"));
        }
        *slot = v;
    }
    if parts.next().is_some() {
        return bad(format!(
            "{key} = {value:?}: expected {N} numbers (only 3-D volumes are supported)"
        ));
    }
    Ok(out)
}

fn parse_int<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, ParseError> {
    value
        .trim()
        .parse()
        .map_err(|_| ParseError::Format(format!("{key} = {value:?}: expected an integer")))
}

fn parse_element_type(value: &str) -> Result<ElementType, ParseError> {
    Ok(match value.to_ascii_uppercase().as_str() {
        "MET_UCHAR" => ElementType::U8,
        "MET_CHAR" => ElementType::I8,
        "MET_USHORT" => ElementType::U16,
        "MET_SHORT" => ElementType::I16,
        "MET_UINT" => ElementType::U32,
        "MET_INT" => ElementType::I32,
        "MET_FLOAT" => ElementType::F32,
        "MET_DOUBLE" => ElementType::F64,
        "MET_LONG" | "MET_ULONG" | "MET_LONG_LONG" | "MET_ULONG_LONG" => {
            return unsupported(format!(
                "ElementType = {value} (64-bit integers) is not supported"
            ));
        }
        _ => {
            return bad(format!(
                "ElementType = {value:?} is not a MetaImage element type"
            ));
        }
    })
}

fn met_name(element_type: ElementType) -> &'static str {
    match element_type {
        ElementType::U8 => "MET_UCHAR",
        ElementType::I8 => "MET_CHAR",
        ElementType::U16 => "MET_USHORT",
        ElementType::I16 => "MET_SHORT",
        ElementType::U32 => "MET_UINT",
        ElementType::I32 => "MET_INT",
        ElementType::F32 => "MET_FLOAT",
        ElementType::F64 => "MET_DOUBLE",
    }
}

/// Parses a MetaImage header from the start of a file.
pub(crate) fn parse_header(bytes: &[u8]) -> Result<MetaHeader, ParseError> {
    let mut ndims: Option<usize> = None;
    let mut dims: Option<[u64; 3]> = None;
    let mut element_type = None;
    let mut spacing = None;
    let mut element_size = None;
    let mut origin = [0.0; 3];
    let mut direction = IDENTITY_DIRECTION;
    let mut big_endian = false;
    let mut compressed = false;
    let mut compressed_size = None;
    let mut header_size = None;
    let mut data_file = None;
    let mut header_len = 0;

    let limit = bytes.len().min(MAX_HEADER_BYTES);
    let mut pos = 0;
    let mut line_no = 0;
    while pos < limit {
        line_no += 1;
        let end = bytes[pos..limit]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| pos + i);
        let line_end = end.unwrap_or(limit);
        let next = end.map_or(limit, |e| e + 1);
        let line = &bytes[pos..line_end];
        pos = next;
        let line = std::str::from_utf8(line)
            .map_err(|_| ParseError::Format(format!("header line {line_no} is not text")))?
            .trim();
        if line.is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return bad(format!(
                "header line {line_no} ({line:?}) is not `Key = Value`"
            ));
        };
        let (key, value) = (key.trim(), value.trim());
        match key.to_ascii_lowercase().as_str() {
            "objecttype" if !value.eq_ignore_ascii_case("image") => {
                return unsupported(format!("ObjectType = {value} (only Image is read)"));
            }
            "ndims" => {
                let n: usize = parse_int(key, value)?;
                if n != 3 {
                    return unsupported(format!("NDims = {n} (only 3-D volumes are read)"));
                }
                ndims = Some(n);
            }
            "dimsize" => {
                let mut d = [0u64; 3];
                let parts: Vec<&str> = value.split_whitespace().collect();
                if parts.len() != 3 {
                    return unsupported(format!(
                        "DimSize = {value:?}: expected 3 sizes (only 3-D volumes are read)"
                    ));
                }
                for (slot, part) in d.iter_mut().zip(&parts) {
                    *slot = parse_int(key, part)?;
                }
                dims = Some(d);
            }
            "elementtype" => element_type = Some(parse_element_type(value)?),
            "elementspacing" => spacing = Some(parse_floats::<3>(key, value)?),
            "elementsize" => element_size = Some(parse_floats::<3>(key, value)?),
            "offset" | "origin" | "position" => origin = parse_floats::<3>(key, value)?,
            "transformmatrix" | "orientation" | "rotation" => {
                let m = parse_floats::<9>(key, value)?;
                direction = [[m[0], m[1], m[2]], [m[3], m[4], m[5]], [m[6], m[7], m[8]]];
            }
            "binarydata" if !parse_bool(key, value)? => {
                return unsupported("BinaryData = False (ASCII voxel data) is not read");
            }
            "binarydatabyteordermsb" | "elementbyteordermsb" => {
                big_endian = parse_bool(key, value)?
            }
            "compresseddata" => compressed = parse_bool(key, value)?,
            "compresseddatasize" => compressed_size = Some(parse_int::<u64>(key, value)?),
            "headersize" => {
                let n: i64 = parse_int(key, value)?;
                if n < -1 {
                    return bad(format!("HeaderSize = {n}: must be -1 or at least 0"));
                }
                header_size = Some(n);
            }
            "elementnumberofchannels" => {
                let n: u64 = parse_int(key, value)?;
                if n != 1 {
                    return unsupported(format!(
                        "ElementNumberOfChannels = {n} (only scalar volumes with 1 channel are read)"
                    ));
                }
            }
            "elementdatafile" => {
                if value.is_empty() {
                    return bad("ElementDataFile is empty");
                }
                if value.eq_ignore_ascii_case("local") {
                    data_file = Some(DataFile::Local);
                } else if value.eq_ignore_ascii_case("list")
                    || value.to_ascii_lowercase().starts_with("list ")
                {
                    return unsupported(
                        "ElementDataFile = LIST (one file per slice) is not read; convert to a single .mha first",
                    );
                } else if value.contains('%') {
                    return unsupported(format!(
                        "ElementDataFile = {value} (a numbered file pattern) is not read"
                    ));
                } else {
                    data_file = Some(DataFile::Detached(value.to_string()));
                }
                header_len = next;
                break;
            }
            _ => {}
        }
    }
    let Some(data_file) = data_file else {
        return bad("header has no ElementDataFile line (it must be the last key)");
    };
    let _ = ndims;
    let dims = dims.ok_or_else(|| ParseError::Format("header has no DimSize".into()))?;
    let element_type =
        element_type.ok_or_else(|| ParseError::Format("header has no ElementType".into()))?;
    raw::checked_data_bytes(dims, element_type)
        .map_err(|m| ParseError::Format(format!("DimSize: {m}")))?;
    let spacing = spacing.or(element_size).unwrap_or([1.0; 3]);
    if spacing.iter().any(|&s| s <= 0.0) {
        return bad(format!("ElementSpacing {spacing:?} must be positive"));
    }
    if crate::volume::degenerate_direction(&direction) {
        return bad(format!(
            "TransformMatrix {direction:?} is singular: its axes do not span space, so the \
             volume has no orientation"
        ));
    }
    Ok(MetaHeader {
        dims: [dims[0] as usize, dims[1] as usize, dims[2] as usize],
        element_type,
        spacing,
        origin,
        direction,
        big_endian,
        compressed,
        compressed_size,
        header_size,
        data_file,
        header_len,
    })
}

/// The data file the header at `path` names, when it is a separate file; `None`
/// when the data is attached or the header cannot be read.
pub(crate) fn named_data_file(path: &Path) -> Option<PathBuf> {
    let prefix = raw::read_header_prefix(path).ok()?;
    match parse_header(&prefix).ok()?.data_file {
        DataFile::Local => None,
        DataFile::Detached(name) => Some(path.parent().unwrap_or(Path::new("")).join(name)),
    }
}

/// Reads a `.mhd` or `.mha` file.
pub(crate) fn read(path: &Path, window: Option<crate::HuWindow>) -> Result<Volume> {
    let prefix = raw::read_header_prefix(path)?;
    let header = parse_header(&prefix).map_err(|e| e.at(path))?;
    let bytes = read_data(path, &header)?;
    Ok(Volume {
        data: raw::decode_volume(
            &bytes,
            header.element_type,
            header.big_endian,
            header.dims,
            None,
            window,
        ),
        spacing: header.spacing,
        origin: header.origin,
        direction: header.direction,
        element_type: header.element_type,
    })
}

fn read_data(path: &Path, header: &MetaHeader) -> Result<raw::Bytes> {
    let expected = header.dims.iter().product::<usize>() * header.element_type.size_of();
    let (data_path, offset): (PathBuf, Option<u64>) = match &header.data_file {
        DataFile::Local => (path.to_path_buf(), Some(header.header_len as u64)),
        DataFile::Detached(name) => {
            let dir = path.parent().unwrap_or(Path::new(""));
            let offset = match header.header_size {
                Some(-1) => None,
                Some(n) => Some(n as u64),
                None => Some(0),
            };
            (dir.join(name), offset)
        }
    };
    if !header.compressed {
        return raw::read_exact_bytes(
            &data_path,
            offset,
            expected,
            path,
            header.dims,
            header.element_type,
        );
    }
    let mut file = File::open(&data_path).map_err(|e| Error::io(&data_path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(&data_path, e))?.len();
    let start = match offset {
        Some(o) => o,
        // HeaderSize = -1 with compressed data: the compressed stream ends the file.
        None => file_len.saturating_sub(header.compressed_size.unwrap_or(file_len)),
    };
    if start > file_len {
        return Err(Error::format(
            path,
            format!(
                "data starts at byte {start} but {} holds {file_len} bytes",
                data_path.display()
            ),
        ));
    }
    file.seek(SeekFrom::Start(start))
        .map_err(|e| Error::io(&data_path, e))?;
    let compressed_len = header
        .compressed_size
        .unwrap_or(file_len - start)
        .min(file_len - start);
    let mut stream = std::io::BufReader::with_capacity(1 << 20, file.take(compressed_len));
    let name = data_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // MetaIO writes zlib streams; accept gzip too, as MetaIO's inflate does.
    let magic = std::io::BufRead::fill_buf(&mut stream).map_err(|e| Error::io(&data_path, e))?;
    let is_gzip = magic.starts_with(&[0x1f, 0x8b]);
    if is_gzip {
        let decoder = flate2::bufread::MultiGzDecoder::new(stream);
        raw::read_decompressed(
            decoder,
            expected,
            compressed_len,
            path,
            &name,
            header.dims,
            header.element_type,
        )
    } else {
        let decoder = flate2::bufread::ZlibDecoder::new(stream);
        raw::read_decompressed(
            decoder,
            expected,
            compressed_len,
            path,
            &name,
            header.dims,
            header.element_type,
        )
    }
}

fn header_text(volume: &Volume, data_file: &str) -> String {
    let [nx, ny, nz] = volume.shape();
    let d = volume.direction;
    let o = volume.origin;
    let s = volume.spacing;
    let mut text = String::new();
    text.push_str("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\nCompressedData = False\n");
    text.push_str(&format!(
        "TransformMatrix = {} {} {} {} {} {} {} {} {}\n",
        d[0][0], d[0][1], d[0][2], d[1][0], d[1][1], d[1][2], d[2][0], d[2][1], d[2][2]
    ));
    text.push_str(&format!("Offset = {} {} {}\n", o[0], o[1], o[2]));
    text.push_str("CenterOfRotation = 0 0 0\n");
    if d == IDENTITY_DIRECTION {
        text.push_str("AnatomicalOrientation = RAI\n");
    }
    text.push_str(&format!("ElementSpacing = {} {} {}\n", s[0], s[1], s[2]));
    text.push_str(&format!("DimSize = {nx} {ny} {nz}\n"));
    text.push_str(&format!(
        "ElementType = {}\n",
        met_name(volume.element_type)
    ));
    text.push_str(&format!("ElementDataFile = {data_file}\n"));
    text
}

/// Writes `.mha` (data attached) or `.mhd` (data in `<stem>.raw` next to it).
pub(crate) fn write(path: &Path, volume: &Volume, attached: bool) -> Result<()> {
    let bytes = raw::encode_volume(&volume.data, volume.element_type);
    if attached {
        let header = header_text(volume, "LOCAL");
        return crate::atomic::write_atomic(path, |w| {
            w.write_all(header.as_bytes())?;
            w.write_all(&bytes)
        });
    }
    let raw_path = path.with_extension("raw");
    let raw_name = raw_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::format(path, "cannot derive a data file name"))?;
    crate::atomic::write_atomic(&raw_path, |w| w.write_all(&bytes))?;
    let header = header_text(volume, &raw_name);
    crate::atomic::write_atomic(path, |w| w.write_all(header.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LUNA: &str = "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n\
CompressedData = False\nTransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = -198.1 -195.0 -335.2\n\
CenterOfRotation = 0 0 0\nAnatomicalOrientation = RAI\nElementSpacing = 0.76 0.76 2.5\n\
DimSize = 512 512 133\nElementType = MET_SHORT\nElementDataFile = 1.3.6.1.4.raw\n";

    #[test]
    fn parses_luna16_header() {
        let h = parse_header(LUNA.as_bytes()).unwrap();
        assert_eq!(h.dims, [512, 512, 133]);
        assert_eq!(h.element_type, ElementType::I16);
        assert_eq!(h.spacing, [0.76, 0.76, 2.5]);
        assert_eq!(h.origin, [-198.1, -195.0, -335.2]);
        assert_eq!(h.data_file, DataFile::Detached("1.3.6.1.4.raw".into()));
        assert_eq!(h.header_len, LUNA.len());
        assert!(!h.big_endian && !h.compressed);
    }

    #[test]
    fn liberal_keys_and_synonyms() {
        let text = "objecttype = image\r\nDimSize = 2 3 4\r\nelementtype = met_float\r\nElementSize = 2 2 2\r\n\
Position = 1 2 3\r\nOrientation = 0 1 0 1 0 0 0 0 1\r\nElementByteOrderMSB = True\r\nHeaderSize = -1\r\n\
ElementDataFile = LOCAL\r\nrest";
        let h = parse_header(text.as_bytes()).unwrap();
        assert_eq!(h.spacing, [2.0; 3]);
        assert_eq!(h.origin, [1.0, 2.0, 3.0]);
        assert_eq!(h.direction[0], [0.0, 1.0, 0.0]);
        assert!(h.big_endian);
        assert_eq!(h.data_file, DataFile::Local);
        assert_eq!(&text.as_bytes()[h.header_len..], b"rest");
    }

    #[test]
    fn rejections_name_the_key() {
        let cases = [
            (
                "DimSize = 2 3\nElementType = MET_SHORT\nElementDataFile = x.raw\n",
                "DimSize",
            ),
            (
                "DimSize = 2 3 4\nElementType = MET_BOGUS\nElementDataFile = x.raw\n",
                "ElementType",
            ),
            (
                "DimSize = 2 3 4\nElementType = MET_SHORT\nElementNumberOfChannels = 3\nElementDataFile = x.raw\n",
                "ElementNumberOfChannels",
            ),
            (
                "DimSize = 2 3 4\nElementType = MET_SHORT\nElementDataFile = LIST\n",
                "LIST",
            ),
            (
                "DimSize = 2 3 4\nElementType = MET_SHORT\n",
                "ElementDataFile",
            ),
            (
                "DimSize = 100000 100000 100\nElementType = MET_SHORT\nElementDataFile = x.raw\n",
                "limit",
            ),
            (
                "DimSize = 2 0 4\nElementType = MET_SHORT\nElementDataFile = x.raw\n",
                "zero",
            ),
            (
                "DimSize = 2 3 4\nElementType = MET_SHORT\nElementSpacing = 1 nan 1\nElementDataFile = x.raw\n",
                "ElementSpacing",
            ),
            (
                "DimSize = 2 3 4\nElementType = MET_SHORT\nElementSpacing = 1 0 1\nElementDataFile = x.raw\n",
                "ElementSpacing",
            ),
            ("NDims = 4\nElementDataFile = x.raw\n", "NDims"),
            ("DimSize 2 3 4\nElementDataFile = x.raw\n", "Key = Value"),
        ];
        for (text, needle) in cases {
            let err = parse_header(text.as_bytes()).unwrap_err();
            let message = format!("{err:?}");
            assert!(message.contains(needle), "{text:?} gave {message}");
        }
    }
}
