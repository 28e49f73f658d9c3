//! NRRD (`.nrrd` with attached data, `.nhdr` with detached data), the format of 3D Slicer.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, ParseError, Result, bad, unsupported};
use crate::raw::{self, MAX_HEADER_BYTES};
use crate::volume::{ElementType, IDENTITY_DIRECTION, Volume};

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Encoding {
    Raw,
    Gzip,
    Text,
}

/// The parsed header of a NRRD file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NrrdHeader {
    pub dims: [usize; 3],
    pub element_type: ElementType,
    pub spacing: [f64; 3],
    pub origin: [f64; 3],
    pub direction: [[f64; 3]; 3],
    pub big_endian: bool,
    pub encoding: Encoding,
    pub line_skip: u64,
    pub byte_skip: i64,
    pub data_file: Option<String>,
    /// Bytes up to and including the blank line that ends an attached header.
    pub header_len: usize,
}

fn parse_type(value: &str) -> Result<ElementType, ParseError> {
    Ok(match value {
        "signed char" | "int8" | "int8_t" => ElementType::I8,
        "uchar" | "unsigned char" | "uint8" | "uint8_t" => ElementType::U8,
        "short" | "short int" | "signed short" | "signed short int" | "int16" | "int16_t" => {
            ElementType::I16
        }
        "ushort" | "unsigned short" | "unsigned short int" | "uint16" | "uint16_t" => {
            ElementType::U16
        }
        "int" | "signed int" | "int32" | "int32_t" => ElementType::I32,
        "uint" | "unsigned int" | "uint32" | "uint32_t" => ElementType::U32,
        "float" => ElementType::F32,
        "double" => ElementType::F64,
        "longlong"
        | "long long"
        | "long long int"
        | "signed long long"
        | "signed long long int"
        | "int64"
        | "int64_t"
        | "ulonglong"
        | "unsigned long long"
        | "unsigned long long int"
        | "uint64"
        | "uint64_t" => {
            return unsupported(format!("type: {value} (64-bit integers) is not read"));
        }
        "block" => return unsupported("type: block is not read"),
        _ => return bad(format!("type: {value:?} is not a NRRD type")),
    })
}

fn type_name(element_type: ElementType) -> &'static str {
    match element_type {
        ElementType::U8 => "uint8",
        ElementType::I8 => "int8",
        ElementType::U16 => "uint16",
        ElementType::I16 => "int16",
        ElementType::U32 => "uint32",
        ElementType::I32 => "int32",
        ElementType::F32 => "float",
        ElementType::F64 => "double",
    }
}

fn parse_number(field: &str, text: &str) -> Result<f64, ParseError> {
    let v: f64 = text
        .trim()
        .parse()
        .map_err(|_| ParseError::Format(format!("{field}: {text:?} is not a number")))?;
    if !v.is_finite() {
        return bad(format!("{field}: {text:?} is not finite"));
    }
    Ok(v)
}

/// Parses a vector `(a,b,c)`.
fn parse_vector(field: &str, text: &str) -> Result<[f64; 3], ParseError> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| {
            ParseError::Format(format!("{field}: {text:?} is not a vector like (1,0,0)"))
        })?;
    let parts: Vec<&str> = inner.split(',').collect();
    if parts.len() != 3 {
        return unsupported(format!(
            "{field}: {text:?} is not a 3-D vector (only 3-D spaces are read)"
        ));
    }
    let mut v = [0.0; 3];
    for (slot, part) in v.iter_mut().zip(parts) {
        *slot = parse_number(field, part)?;
    }
    Ok(v)
}

fn parse_three<T: std::str::FromStr>(field: &str, value: &str) -> Result<[T; 3], ParseError> {
    let parts: Vec<&str> = value.split_whitespace().collect();
    if parts.len() != 3 {
        return unsupported(format!(
            "{field}: {value:?} has {} entries (only 3-D volumes are read)",
            parts.len()
        ));
    }
    let parse = |p: &str| {
        p.parse::<T>()
            .map_err(|_| ParseError::Format(format!("{field}: {p:?} is not valid")))
    };
    Ok([parse(parts[0])?, parse(parts[1])?, parse(parts[2])?])
}

/// Sign flips that take a NRRD `space` to LPS.
fn space_to_lps(space: &str) -> Result<[f64; 3], ParseError> {
    Ok(match space {
        "left-posterior-superior" | "lps" | "LPS" => [1.0, 1.0, 1.0],
        "right-anterior-superior" | "ras" | "RAS" => [-1.0, -1.0, 1.0],
        "left-anterior-superior" | "las" | "LAS" => [1.0, -1.0, 1.0],
        "scanner-xyz" | "3D-right-handed" | "3D-left-handed" => [1.0, 1.0, 1.0],
        _ => {
            return unsupported(format!(
                "space: {space} (only 3-D anatomical spaces are read)"
            ));
        }
    })
}

/// Parses a NRRD header from the start of a file.
pub(crate) fn parse_header(bytes: &[u8]) -> Result<NrrdHeader, ParseError> {
    if !bytes.starts_with(b"NRRD000") {
        return bad("does not start with the NRRD magic (NRRD0001 to NRRD0005)");
    }
    let mut element_type = None;
    let mut dimension = None;
    let mut sizes: Option<[u64; 3]> = None;
    let mut spacings = None;
    let mut directions = None;
    let mut origin = None;
    let mut space_flip = [1.0; 3];
    let mut big_endian = None;
    let mut encoding = None;
    let mut line_skip = 0;
    let mut byte_skip = 0;
    let mut data_file = None;
    let mut header_len = bytes.len().min(MAX_HEADER_BYTES);

    let limit = bytes.len().min(MAX_HEADER_BYTES);
    let mut pos = 0;
    let mut line_no = 0;
    while pos < limit {
        line_no += 1;
        let end = bytes[pos..limit]
            .iter()
            .position(|&b| b == b'\n')
            .map(|i| pos + i);
        let line = &bytes[pos..end.unwrap_or(limit)];
        pos = end.map_or(limit, |e| e + 1);
        let line = std::str::from_utf8(line)
            .map_err(|_| ParseError::Format(format!("header line {line_no} is not text")))?
            .trim_end_matches('\r');
        if line_no == 1 {
            continue;
        }
        if line.is_empty() {
            header_len = pos;
            break;
        }
        if line.starts_with('#') {
            continue;
        }
        let field_split = line.find(": ");
        let kv_split = line.find(":=");
        if let Some(k) = kv_split
            && field_split.is_none_or(|f| k < f)
        {
            continue; // key:=value pairs carry no geometry we use.
        }
        let Some(split) = field_split else {
            return bad(format!(
                "header line {line_no} ({line:?}) is not `field: value`"
            ));
        };
        let field = line[..split].trim();
        let value = line[split + 2..].trim();
        match field {
            "type" => element_type = Some(parse_type(value)?),
            "dimension" => {
                let d: u32 = value.parse().map_err(|_| {
                    ParseError::Format(format!("dimension: {value:?} is not an integer"))
                })?;
                if d != 3 {
                    return unsupported(format!(
                        "dimension: {d} (only 3-D scalar volumes are read)"
                    ));
                }
                dimension = Some(d);
            }
            "sizes" => sizes = Some(parse_three::<u64>(field, value)?),
            "spacings" => {
                let parts: Vec<&str> = value.split_whitespace().collect();
                if parts.len() != 3 {
                    return unsupported(format!("spacings: {value:?} does not have 3 entries"));
                }
                let mut s = [1.0; 3];
                for (slot, p) in s.iter_mut().zip(parts) {
                    if !p.eq_ignore_ascii_case("nan") {
                        *slot = parse_number(field, p)?;
                    }
                }
                spacings = Some(s);
            }
            "space directions" => {
                let parts: Vec<&str> = value.split_whitespace().collect();
                if parts.len() != 3 {
                    return unsupported(format!(
                        "space directions: {value:?} does not have 3 vectors"
                    ));
                }
                let mut d = [[0.0; 3]; 3];
                for (slot, p) in d.iter_mut().zip(parts) {
                    if p == "none" {
                        return unsupported(
                            "space directions: an axis is `none` (a non-spatial axis)",
                        );
                    }
                    *slot = parse_vector(field, p)?;
                }
                directions = Some(d);
            }
            "space origin" => origin = Some(parse_vector(field, value)?),
            "space" => space_flip = space_to_lps(value)?,
            "space dimension" if value != "3" => {
                return unsupported(format!("space dimension: {value} (only 3 is read)"));
            }
            "kinds" => {
                for kind in value.split_whitespace() {
                    match kind {
                        "domain" | "space" | "time" | "none" | "???" | "scalar" => {}
                        other => {
                            return unsupported(format!(
                                "kinds: {other} (only scalar volumes are read)"
                            ));
                        }
                    }
                }
            }
            "endian" => {
                big_endian = Some(match value {
                    "little" => false,
                    "big" => true,
                    _ => return bad(format!("endian: {value:?} is neither little nor big")),
                })
            }
            "encoding" => {
                encoding = Some(match value {
                    "raw" => Encoding::Raw,
                    "gzip" | "gz" => Encoding::Gzip,
                    "text" | "txt" | "ascii" => Encoding::Text,
                    "bzip2" | "bz2" => {
                        return unsupported("encoding: bzip2 is not read; re-save with gzip");
                    }
                    "hex" => return unsupported("encoding: hex is not read"),
                    _ => return bad(format!("encoding: {value:?} is not a NRRD encoding")),
                })
            }
            "line skip" | "lineskip" => {
                line_skip = value.parse().map_err(|_| {
                    ParseError::Format(format!("line skip: {value:?} is not a count"))
                })?
            }
            "byte skip" | "byteskip" => {
                let n: i64 = value.parse().map_err(|_| {
                    ParseError::Format(format!("byte skip: {value:?} is not an integer"))
                })?;
                if n < -1 {
                    return bad(format!("byte skip: {n} must be -1 or at least 0"));
                }
                byte_skip = n;
            }
            "data file" | "datafile" => {
                if value.starts_with("LIST") || value.split_whitespace().count() > 1 {
                    return unsupported(format!(
                        "data file: {value} (multiple data files) is not read"
                    ));
                }
                data_file = Some(value.to_string());
            }
            _ => {}
        }
    }
    let _ = dimension.ok_or_else(|| ParseError::Format("header has no dimension field".into()))?;
    let element_type =
        element_type.ok_or_else(|| ParseError::Format("header has no type field".into()))?;
    let sizes = sizes.ok_or_else(|| ParseError::Format("header has no sizes field".into()))?;
    let encoding =
        encoding.ok_or_else(|| ParseError::Format("header has no encoding field".into()))?;
    raw::checked_data_bytes(sizes, element_type)
        .map_err(|m| ParseError::Format(format!("sizes: {m}")))?;
    if byte_skip == -1 && encoding != Encoding::Raw {
        return bad("byte skip: -1 is only allowed with raw encoding");
    }
    let big_endian = match big_endian {
        Some(b) => b,
        None if element_type.size_of() > 1 && encoding != Encoding::Text => {
            return bad("header has no endian field, needed for multi-byte types");
        }
        None => false,
    };

    let (spacing, direction) = match directions {
        Some(d) => {
            let mut spacing = [0.0; 3];
            let mut direction = [[0.0; 3]; 3];
            for a in 0..3 {
                let norm = d[a].iter().map(|v| v * v).sum::<f64>().sqrt();
                if norm <= 0.0 || !norm.is_finite() {
                    return bad(format!("space directions: axis {a} has zero length"));
                }
                spacing[a] = norm;
                for c in 0..3 {
                    direction[a][c] = d[a][c] / norm * space_flip[c];
                }
            }
            if crate::volume::degenerate_direction(&direction) {
                return bad(format!(
                    "space directions {d:?} do not span space (two axes are parallel or \
                     the three lie in a plane), so the volume has no orientation"
                ));
            }
            (spacing, direction)
        }
        None => (spacings.unwrap_or([1.0; 3]), IDENTITY_DIRECTION),
    };
    if spacing.iter().any(|&s| s <= 0.0) {
        return bad(format!("spacings: {spacing:?} must be positive"));
    }
    let origin = origin.unwrap_or([0.0; 3]);
    let origin = [
        origin[0] * space_flip[0],
        origin[1] * space_flip[1],
        origin[2] * space_flip[2],
    ];
    Ok(NrrdHeader {
        dims: [sizes[0] as usize, sizes[1] as usize, sizes[2] as usize],
        element_type,
        spacing,
        origin,
        direction,
        big_endian,
        encoding,
        line_skip,
        byte_skip,
        data_file,
        header_len,
    })
}

/// The data file the header at `path` names (its `data file` field), or `None`
/// when the data is attached or the header cannot be read.
pub(crate) fn named_data_file(path: &Path) -> Option<PathBuf> {
    let prefix = raw::read_header_prefix(path).ok()?;
    let name = parse_header(&prefix).ok()?.data_file?;
    Some(path.parent().unwrap_or(Path::new("")).join(name))
}

/// Reads a `.nrrd` or `.nhdr` file.
pub(crate) fn read(path: &Path, window: Option<crate::HuWindow>) -> Result<Volume> {
    let prefix = raw::read_header_prefix(path)?;
    let header = parse_header(&prefix).map_err(|e| e.at(path))?;
    let (data_path, start) = match &header.data_file {
        Some(name) => (path.parent().unwrap_or(Path::new("")).join(name), 0u64),
        None => {
            if header.header_len >= prefix.len()
                && !prefix.ends_with(b"\n\n")
                && !prefix.ends_with(b"\r\n\r\n")
            {
                return Err(Error::format(
                    path,
                    "header is not followed by a blank line and data (no `data file` field either)",
                ));
            }
            (path.to_path_buf(), header.header_len as u64)
        }
    };
    let bytes = read_data(path, &data_path, start, &header)?;
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

fn data_name(data_path: &Path) -> String {
    data_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn read_data(
    path: &Path,
    data_path: &Path,
    mut start: u64,
    header: &NrrdHeader,
) -> Result<raw::Bytes> {
    let expected = header.dims.iter().product::<usize>() * header.element_type.size_of();
    if header.line_skip > 0 {
        start = skip_lines(data_path, start, header.line_skip)?;
    }
    match header.encoding {
        Encoding::Raw => {
            let offset = if header.byte_skip == -1 {
                None
            } else {
                Some(start + header.byte_skip as u64)
            };
            raw::read_exact_bytes(
                data_path,
                offset,
                expected,
                path,
                header.dims,
                header.element_type,
            )
        }
        Encoding::Gzip => {
            let file = open_at(data_path, start)?;
            let compressed_len = file
                .metadata()
                .map(|m| m.len())
                .unwrap_or(0)
                .saturating_sub(start);
            let reader = std::io::BufReader::with_capacity(1 << 20, file);
            let mut decoder = flate2::bufread::MultiGzDecoder::new(reader);
            let skip = header.byte_skip as u64;
            let skipped = std::io::copy(&mut (&mut decoder).take(skip), &mut std::io::sink())
                .map_err(|e| {
                    Error::format(
                        path,
                        format!("{}: cannot decompress: {e}", data_name(data_path)),
                    )
                })?;
            if skipped != skip {
                return Err(Error::format(
                    path,
                    format!("byte skip: {skip} exceeds the decompressed data"),
                ));
            }
            raw::read_decompressed(
                decoder,
                expected,
                compressed_len,
                path,
                &data_name(data_path),
                header.dims,
                header.element_type,
            )
        }
        Encoding::Text => {
            let mut file = open_at(data_path, start)?;
            let mut text = String::new();
            file.read_to_string(&mut text).map_err(|e| {
                Error::format(
                    path,
                    format!("{}: text data is not readable: {e}", data_name(data_path)),
                )
            })?;
            let voxels = header.dims.iter().product::<usize>();
            let mut out = Vec::with_capacity(voxels.min(text.len() / 2 + 1) * 4);
            for token in text
                .split(|c: char| c.is_whitespace() || c == ',')
                .filter(|t| !t.is_empty())
                .take(voxels)
            {
                let v: f64 = token.parse().map_err(|_| {
                    Error::format(path, format!("text data: {token:?} is not a number"))
                })?;
                out.extend_from_slice(&(v as f32).to_le_bytes());
            }
            if out.len() != voxels * 4 {
                return Err(Error::format(
                    path,
                    format!(
                        "sizes say {} voxels but the text data holds {}",
                        voxels,
                        out.len() / 4
                    ),
                ));
            }
            // Decoded as f32 below; the element type still reports the stored type.
            Ok(reencode_text(out, header.element_type).into())
        }
    }
}

/// Text data is parsed to f32; re-encode it in the header's type so one decoder serves all encodings.
fn reencode_text(f32_bytes: Vec<u8>, element_type: ElementType) -> Vec<u8> {
    if element_type == ElementType::F32 {
        return f32_bytes;
    }
    let values: Vec<f32> = f32_bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    raw::encode_values(values.iter(), values.len(), element_type)
}

fn open_at(data_path: &Path, start: u64) -> Result<File> {
    use std::io::Seek;
    let mut file = File::open(data_path).map_err(|e| Error::io(data_path, e))?;
    file.seek(std::io::SeekFrom::Start(start))
        .map_err(|e| Error::io(data_path, e))?;
    Ok(file)
}

fn skip_lines(data_path: &Path, start: u64, lines: u64) -> Result<u64> {
    let file = open_at(data_path, start)?;
    let mut reader = std::io::BufReader::new(file);
    let mut offset = start;
    let mut buffer = Vec::new();
    for _ in 0..lines {
        buffer.clear();
        let n = std::io::BufRead::read_until(&mut reader, b'\n', &mut buffer)
            .map_err(|e| Error::io(data_path, e))?;
        if n == 0 {
            return Err(Error::format(
                data_path,
                format!("line skip: file has fewer than {lines} lines"),
            ));
        }
        offset += n as u64;
    }
    Ok(offset)
}

fn header_text(volume: &Volume, data_file: Option<&str>) -> String {
    let [nx, ny, nz] = volume.shape();
    let mut text = String::from(
        "NRRD0004\n# Complete NRRD file format specification at:\n# http://teem.sourceforge.net/nrrd/format.html\n",
    );
    text.push_str(&format!(
        "type: {}\ndimension: 3\nspace: left-posterior-superior\n",
        type_name(volume.element_type)
    ));
    text.push_str(&format!("sizes: {nx} {ny} {nz}\n"));
    let dirs: Vec<String> = (0..3)
        .map(|a| {
            let d = volume.direction[a];
            let s = volume.spacing[a];
            format!("({},{},{})", d[0] * s, d[1] * s, d[2] * s)
        })
        .collect();
    text.push_str(&format!("space directions: {}\n", dirs.join(" ")));
    text.push_str("kinds: domain domain domain\nendian: little\nencoding: raw\n");
    let o = volume.origin;
    text.push_str(&format!("space origin: ({},{},{})\n", o[0], o[1], o[2]));
    if let Some(name) = data_file {
        text.push_str(&format!("data file: {name}\n"));
    }
    text.push('\n');
    text
}

/// Writes `.nrrd` (raw data attached) or `.nhdr` (data in `<stem>.raw`).
pub(crate) fn write(path: &Path, volume: &Volume, attached: bool) -> Result<()> {
    let bytes = raw::encode_volume(&volume.data, volume.element_type);
    if attached {
        let header = header_text(volume, None);
        return crate::atomic::write_atomic(path, |w| {
            w.write_all(header.as_bytes())?;
            w.write_all(&bytes)
        });
    }
    let raw_path: PathBuf = path.with_extension("raw");
    let raw_name = data_name(&raw_path);
    crate::atomic::write_atomic(&raw_path, |w| w.write_all(&bytes))?;
    let header = header_text(volume, Some(&raw_name));
    crate::atomic::write_atomic(path, |w| w.write_all(header.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLICER: &str = "NRRD0004\n# Complete NRRD file format specification at:\n\
type: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 512 512 48\n\
space directions: (0.5703125,0,0) (0,0.5703125,0) (0,0,5)\nkinds: domain domain domain\n\
endian: little\nencoding: gzip\nspace origin: (-146,-325,-777.49999999999977)\n\nDATA";

    #[test]
    fn parses_slicer_header() {
        let h = parse_header(SLICER.as_bytes()).unwrap();
        assert_eq!(h.dims, [512, 512, 48]);
        assert_eq!(h.element_type, ElementType::I16);
        assert_eq!(h.spacing, [0.5703125, 0.5703125, 5.0]);
        assert_eq!(h.origin, [-146.0, -325.0, -777.499_999_999_999_8]);
        assert_eq!(h.direction, IDENTITY_DIRECTION);
        assert_eq!(h.encoding, Encoding::Gzip);
        assert_eq!(&SLICER.as_bytes()[h.header_len..], b"DATA");
    }

    #[test]
    fn ras_space_flips_to_lps_and_aliases_parse() {
        let text = "NRRD0005\ntype: unsigned short int\ndimension: 3\nspace: right-anterior-superior\n\
sizes: 2 3 4\nspace directions: (2,0,0) (0,3,0) (0,0,4)\nendian: big\nencoding: raw\nspace origin: (1,2,3)\nfoo:=bar\n\n";
        let h = parse_header(text.as_bytes()).unwrap();
        assert_eq!(h.element_type, ElementType::U16);
        assert_eq!(h.spacing, [2.0, 3.0, 4.0]);
        assert_eq!(h.origin, [-1.0, -2.0, 3.0]);
        assert_eq!(h.direction[0], [-1.0, 0.0, 0.0]);
        assert!(h.big_endian);
    }

    #[test]
    fn rejections_name_the_field() {
        let base = |extra: &str| format!("NRRD0004\n{extra}\n\n");
        let cases = [
            (
                base("type: short\ndimension: 4\nsizes: 1 2 3 4\nendian: little\nencoding: raw"),
                "dimension",
            ),
            (
                base("type: bogus\ndimension: 3\nsizes: 1 2 3\nendian: little\nencoding: raw"),
                "type",
            ),
            (
                base("type: short\ndimension: 3\nsizes: 1 2 3\nendian: little\nencoding: bzip2"),
                "bzip2",
            ),
            (
                base("type: short\ndimension: 3\nsizes: 1 2 3\nencoding: raw"),
                "endian",
            ),
            (
                base(
                    "type: short\ndimension: 3\nsizes: 100000 100000 1000\nendian: little\nencoding: raw",
                ),
                "limit",
            ),
            (
                base(
                    "type: short\ndimension: 3\nsizes: 1 2 3\nkinds: vector domain domain\nendian: little\nencoding: raw",
                ),
                "kinds",
            ),
            (
                base(
                    "type: short\ndimension: 3\nsizes: 1 2 3\nspace directions: (0,0,0) (0,1,0) (0,0,1)\nendian: little\nencoding: raw",
                ),
                "zero length",
            ),
            ("PNG\n".to_string(), "magic"),
        ];
        for (text, needle) in cases {
            let message = format!("{:?}", parse_header(text.as_bytes()).unwrap_err());
            assert!(message.contains(needle), "{text:?} gave {message}");
        }
    }
}
