//! Table-driven malformed inputs: each must give an error that names the file and the problem.

use std::path::Path;

use genesis_io::{NpyStack, read_npy, read_volume, write_volume};

use crate::common::sample_volume;

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

const MHD: &str = "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\nCompressedData = False\n\
TransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = 0 0 0\nElementSpacing = 1 1 1\nDimSize = 4 3 2\nElementType = MET_SHORT\nElementDataFile = scan.raw\n";

fn nrrd(fields: &str) -> Vec<u8> {
    format!("NRRD0004\ntype: short\ndimension: 3\n{fields}\n\n").into_bytes()
}

#[test]
fn malformed_inputs_are_errors_that_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "scan.raw", &[0u8; 48]);
    write(d, "short.raw", &[0u8; 47]);
    let npy_header = |dict: &str| {
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        b.extend_from_slice(dict.as_bytes());
        b
    };
    // (file name, contents, words the message must contain)
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        (
            "truncated.mhd",
            MHD.replace("scan.raw", "short.raw").into_bytes(),
            vec![
                "truncated.mhd",
                "4×3×2",
                "48 bytes",
                "short.raw",
                "47 bytes",
            ],
        ),
        (
            // The header says int16 where the file holds more: 4×3×1 of 48 bytes.
            "too_long.mhd",
            MHD.replace("DimSize = 4 3 2", "DimSize = 4 3 1")
                .into_bytes(),
            vec![
                "too_long.mhd",
                "24 bytes",
                "scan.raw holds 48 bytes",
                "HeaderSize = -1",
            ],
        ),
        (
            "missing_data.mhd",
            MHD.replace("scan.raw", "nowhere.raw").into_bytes(),
            vec!["nowhere.raw"],
        ),
        (
            "wrong_size.mhd",
            MHD.replace("DimSize = 4 3 2", "DimSize = 4 3 3")
                .into_bytes(),
            vec!["wrong_size.mhd", "72 bytes", "48 bytes"],
        ),
        (
            "bad_key.mhd",
            MHD.replace("ElementType = MET_SHORT", "ElementType = MET_SHORTISH")
                .into_bytes(),
            vec!["bad_key.mhd", "ElementType"],
        ),
        (
            "bad_number.mhd",
            MHD.replace("ElementSpacing = 1 1 1", "ElementSpacing = 1 x 1")
                .into_bytes(),
            vec!["ElementSpacing", "\"x\""],
        ),
        (
            "zero.mhd",
            MHD.replace("DimSize = 4 3 2", "DimSize = 4 0 2")
                .into_bytes(),
            vec!["zero.mhd", "zero"],
        ),
        (
            "absurd.mhd",
            MHD.replace("DimSize = 4 3 2", "DimSize = 10000 10000 10000")
                .into_bytes(),
            vec!["absurd.mhd", "limit"],
        ),
        (
            "overflow.mhd",
            MHD.replace("DimSize = 4 3 2", "DimSize = 18446744073709551615 2 2")
                .into_bytes(),
            vec!["overflow.mhd", "limit"],
        ),
        (
            "channels.mhd",
            MHD.replace("ElementType", "ElementNumberOfChannels = 3\nElementType")
                .into_bytes(),
            vec!["ElementNumberOfChannels = 3"],
        ),
        (
            "list.mhd",
            MHD.replace("scan.raw", "LIST").into_bytes(),
            vec!["list.mhd", "LIST"],
        ),
        (
            "ndims.mhd",
            MHD.replace("NDims = 3", "NDims = 2").into_bytes(),
            vec!["NDims = 2"],
        ),
        (
            "no_datafile.mha",
            MHD.replace("ElementDataFile = scan.raw\n", "").into_bytes(),
            vec!["no_datafile.mha", "ElementDataFile"],
        ),
        (
            "ascii.mhd",
            MHD.replace("BinaryData = True", "BinaryData = False")
                .into_bytes(),
            vec!["BinaryData"],
        ),
        (
            "bad_zlib.mha",
            [
                MHD.replace("CompressedData = False", "CompressedData = True")
                    .replace("scan.raw", "LOCAL")
                    .as_bytes(),
                b"not zlib at all",
            ]
            .concat(),
            vec!["bad_zlib.mha", "decompress"],
        ),
        (
            "truncated.nrrd",
            [
                nrrd("sizes: 4 3 2\nendian: little\nencoding: raw"),
                vec![0u8; 40],
            ]
            .concat(),
            vec!["truncated.nrrd", "48 bytes", "40 bytes"],
        ),
        (
            // Two axes along x: no orientation; ITK refuses such a direction too.
            "singular.mhd",
            MHD.replace(
                "TransformMatrix = 1 0 0 0 1 0 0 0 1",
                "TransformMatrix = 1 0 0 1 0 0 0 0 1",
            )
            .into_bytes(),
            vec!["singular.mhd", "TransformMatrix", "singular"],
        ),
        (
            "parallel.nrrd",
            [
                nrrd(
                    "sizes: 4 3 2\nspace: left-posterior-superior\n\
                     space directions: (1,0,0) (2,0,0) (0,0,1)\nendian: little\nencoding: raw",
                ),
                vec![0u8; 48],
            ]
            .concat(),
            vec!["parallel.nrrd", "space directions", "do not span space"],
        ),
        (
            "absurd.nrrd",
            nrrd("sizes: 1000000 1000000 1000000\nendian: little\nencoding: raw"),
            vec!["absurd.nrrd", "limit"],
        ),
        (
            "dims.nrrd",
            b"NRRD0004\ntype: short\ndimension: 4\nsizes: 3 4 3 2\nencoding: raw\n\n".to_vec(),
            vec!["dims.nrrd", "dimension: 4"],
        ),
        (
            "bz.nrrd",
            nrrd("sizes: 4 3 2\nendian: little\nencoding: bzip2"),
            vec!["bz.nrrd", "bzip2"],
        ),
        (
            "gzip_short.nrrd",
            [
                nrrd("sizes: 4 3 2\nendian: little\nencoding: gzip"),
                gzip(&[0u8; 30]),
            ]
            .concat(),
            vec!["gzip_short.nrrd", "30 bytes"],
        ),
        (
            "vector.nrrd",
            nrrd("sizes: 3 4 2\nkinds: RGB-color domain domain\nendian: little\nencoding: raw"),
            vec!["kinds: RGB-color"],
        ),
        (
            "magic.nrrd",
            b"NRRX0004\n".to_vec(),
            vec!["magic.nrrd", "magic"],
        ),
        ("empty.nii", Vec::new(), vec!["empty.nii"]),
        (
            "garbage.nii.gz",
            b"this is not gzip".to_vec(),
            vec!["garbage.nii.gz", "invalid gzip header"],
        ),
        (
            "truncated.npy",
            [
                npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (4, 3, 2), }\n"),
                vec![0u8; 20],
            ]
            .concat(),
            vec!["truncated.npy", "96 data bytes", "20"],
        ),
        (
            "absurd.npy",
            npy_header(
                "{'descr': '<f8', 'fortran_order': False, 'shape': (1000000, 1000000, 10), }\n",
            ),
            vec!["absurd.npy", "limit"],
        ),
        (
            "dtype.npy",
            npy_header("{'descr': '<c16', 'fortran_order': False, 'shape': (4, 3, 2), }\n"),
            vec!["dtype.npy", "<c16"],
        ),
        (
            "version.npy",
            b"\x93NUMPY\x09\x00\x10\x00".to_vec(),
            vec!["version.npy", "version 9"],
        ),
        (
            "twod.npy",
            [
                npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (4, 3), }\n"),
                vec![0u8; 48],
            ]
            .concat(),
            vec!["twod.npy", "not a 3-D volume"],
        ),
        (
            "volume.txt",
            b"hello".to_vec(),
            vec!["volume.txt", "extension"],
        ),
    ];
    for (name, bytes, needles) in cases {
        write(d, name, &bytes);
        let err = read_volume(d.join(name)).expect_err(name).to_string();
        // No message shows an error in its Debug form.
        assert!(
            !err.contains("Custom {") && !err.contains("Io("),
            "{name}: {err:?}"
        );
        for needle in needles {
            assert!(
                err.contains(needle),
                "{name}: message {err:?} lacks {needle:?}"
            );
        }
    }
    // The mmap stack reader rejects lying headers before mapping items.
    let err = NpyStack::open(d.join("truncated.npy"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("truncated.npy") && err.contains("96 data bytes"),
        "{err}"
    );
    assert!(read_npy(d.join("absurd.npy")).is_err());
    // Directories where files belong.
    std::fs::create_dir(d.join("dir.npy")).unwrap();
    let err = NpyStack::open(d.join("dir.npy")).unwrap_err().to_string();
    assert!(err.contains("dir.npy: is a directory"), "{err}");
    std::fs::create_dir(d.join("data_dir")).unwrap();
    write(
        d,
        "dir_data.mhd",
        MHD.replace("scan.raw", "data_dir").as_bytes(),
    );
    let err = read_volume(d.join("dir_data.mhd")).unwrap_err().to_string();
    assert!(
        err.contains("dir_data.mhd") && err.contains("data_dir is a directory"),
        "{err}"
    );
    // A missing file names the path.
    let err = read_volume(d.join("absent.nrrd")).unwrap_err().to_string();
    assert!(err.contains("absent.nrrd"), "{err}");
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[test]
fn truncated_nifti_and_absurd_nifti_dims_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.nii");
    write_volume(&path, &sample_volume(genesis_io::ElementType::I16)).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(dir.path().join("cut.nii"), &bytes[..bytes.len() - 10]).unwrap();
    std::fs::write(dir.path().join("cut_header.nii"), &bytes[..200]).unwrap();
    std::fs::write(
        dir.path().join("cut.nii.gz"),
        gzip(&bytes[..bytes.len() - 10]),
    )
    .unwrap();
    for name in ["cut.nii", "cut_header.nii", "cut.nii.gz"] {
        let err = read_volume(dir.path().join(name)).unwrap_err().to_string();
        assert!(err.contains(name), "{err}");
        assert!(
            err.contains("ends early") || err.contains("incompatible"),
            "{name}: {err}"
        );
        assert!(!err.contains("Io("), "{name}: {err}");
    }
    // dim = [3, 65535, 65535, 65535]: 2.8e14 voxels.
    let mut absurd = bytes.clone();
    for i in 0..3 {
        absurd[42 + 2 * i..44 + 2 * i].copy_from_slice(&65535u16.to_le_bytes());
    }
    std::fs::write(dir.path().join("absurd.nii"), &absurd).unwrap();
    let err = read_volume(dir.path().join("absurd.nii"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("absurd.nii") && err.contains("limit"), "{err}");
    // A 4-D time series is refused clearly.
    let mut four_d = bytes;
    four_d[40..42].copy_from_slice(&4u16.to_le_bytes());
    four_d[48..50].copy_from_slice(&2u16.to_le_bytes());
    std::fs::write(dir.path().join("fourd.nii"), &four_d).unwrap();
    let err = read_volume(dir.path().join("fourd.nii"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("fourd.nii") && err.contains("3-D"), "{err}");
}

#[test]
fn a_volume_with_a_singular_direction_is_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut volume = sample_volume(genesis_io::ElementType::I16);
    volume.direction = [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]];
    for name in ["flat.mhd", "flat.nrrd", "flat.nii.gz"] {
        let path = dir.path().join(name);
        let err = write_volume(&path, &volume).unwrap_err().to_string();
        assert!(err.contains(name) && err.contains("singular"), "{err}");
        assert!(!path.exists(), "{name} was written");
    }
    // .npy keeps no geometry, so the direction does not matter there.
    write_volume(dir.path().join("flat.npy"), &volume).unwrap();
}

#[test]
fn a_nifti_sform_whose_axes_do_not_span_space_falls_back_to_the_qform_or_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.nii");
    write_volume(&path, &sample_volume(genesis_io::ElementType::I16)).unwrap();
    let good = read_volume(&path).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    // NIfTI-1: qform_code at byte 252, srow_x at 280, srow_y at 296 (little-endian).
    let srow_x = bytes[280..296].to_vec();
    bytes[296..312].copy_from_slice(&srow_x);
    std::fs::write(dir.path().join("with_qform.nii"), &bytes).unwrap();
    let fallback = read_volume(dir.path().join("with_qform.nii")).unwrap();
    // The same geometry, from the qform (f32 fields, so not to the last bit).
    let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(a, b)| (a - b).abs() < 1e-5);
    assert!(close(&fallback.spacing, &good.spacing));
    assert!(close(&fallback.origin, &good.origin));
    assert!(
        close(
            fallback.direction.as_flattened(),
            good.direction.as_flattened()
        ),
        "{:?} vs {:?}",
        fallback.direction,
        good.direction
    );
    bytes[252..254].copy_from_slice(&0i16.to_le_bytes());
    std::fs::write(dir.path().join("flat.nii"), &bytes).unwrap();
    let err = read_volume(dir.path().join("flat.nii"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("flat.nii") && err.contains("sform"), "{err}");
    assert!(err.contains("do not span space"), "{err}");
}
