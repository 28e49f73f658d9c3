//! Write then read every format with every element type.

use genesis_io::{
    ElementType, NpyDtype, NpyStack, NpyStackWriter, Volume, read_npy, read_volume, write_npy,
    write_volume,
};
use ndarray::{Array3, ArrayD, IxDyn};

use crate::common::{ALL_TYPES, sample_volume};

fn assert_same_geometry(path: &str, a: &Volume, b: &Volume, tolerance: f64) {
    for i in 0..3 {
        assert!(
            (a.spacing[i] - b.spacing[i]).abs() < tolerance,
            "{path}: spacing {:?} vs {:?}",
            a.spacing,
            b.spacing
        );
        assert!(
            (a.origin[i] - b.origin[i]).abs() < tolerance * 100.0,
            "{path}: origin {:?} vs {:?}",
            a.origin,
            b.origin
        );
        for j in 0..3 {
            assert!(
                (a.direction[i][j] - b.direction[i][j]).abs() < tolerance,
                "{path}: direction {:?} vs {:?}",
                a.direction,
                b.direction
            );
        }
    }
}

#[test]
fn every_format_and_element_type_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    for element_type in ALL_TYPES {
        let volume = sample_volume(element_type);
        for ext in ["mhd", "mha", "nrrd", "nhdr", "nii", "nii.gz", "npy"] {
            let path = dir.path().join(format!("v_{element_type}.{ext}"));
            write_volume(&path, &volume).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let back = read_volume(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let name = format!("{ext}/{element_type}");
            assert_eq!(back.data, volume.data, "{name}: values");
            match ext {
                "npy" => {
                    let widened = match element_type {
                        ElementType::I8 | ElementType::U16 => ElementType::F32,
                        ElementType::I32 | ElementType::U32 => ElementType::F64,
                        t => t,
                    };
                    assert_eq!(back.element_type, widened, "{name}");
                    assert_eq!(back.spacing, [1.0; 3]);
                }
                "nii" | "nii.gz" => {
                    assert_eq!(back.element_type, element_type, "{name}");
                    assert_same_geometry(&name, &volume, &back, 1e-5);
                }
                _ => {
                    assert_eq!(back.element_type, element_type, "{name}");
                    // Text headers keep full precision; NRRD stores spacing × direction, hence the epsilon.
                    assert_same_geometry(&name, &volume, &back, 1e-12);
                }
            }
        }
    }
    // Only the outputs remain: no temporary files left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn integer_writes_round_and_clamp() {
    let dir = tempfile::tempdir().unwrap();
    let mut volume = Volume::new(
        Array3::from_shape_vec(
            (2, 2, 2),
            vec![-1.6, 0.4, 0.5, 254.6, 300.0, f32::NAN, 1e9, -1e9],
        )
        .unwrap(),
        [1.0; 3],
    );
    volume.element_type = ElementType::U8;
    let path = dir.path().join("u8.mha");
    write_volume(&path, &volume).unwrap();
    let back = read_volume(&path).unwrap();
    assert_eq!(
        back.data.iter().copied().collect::<Vec<_>>(),
        vec![0.0, 0.0, 1.0, 255.0, 255.0, 0.0, 255.0, 0.0]
    );
}

#[test]
fn nan_and_inf_voxels_survive_float_formats() {
    let dir = tempfile::tempdir().unwrap();
    let mut data = Array3::<f32>::zeros((3, 2, 2));
    data[[0, 0, 0]] = f32::NAN;
    data[[1, 0, 0]] = f32::INFINITY;
    data[[2, 0, 0]] = f32::NEG_INFINITY;
    let volume = Volume::new(data, [1.0; 3]);
    for ext in ["mhd", "nrrd", "nii.gz", "npy"] {
        let path = dir.path().join(format!("nan.{ext}"));
        write_volume(&path, &volume).unwrap();
        let mut back = read_volume(&path).unwrap();
        assert!(back.data[[0, 0, 0]].is_nan(), "{ext}");
        assert_eq!(back.data[[1, 0, 0]], f32::INFINITY, "{ext}");
        assert_eq!(back.data[[2, 0, 0]], f32::NEG_INFINITY, "{ext}");
        back.normalize(genesis_io::HuWindow::CT);
        assert_eq!(back.data[[0, 0, 0]], 0.0, "{ext}: NaN maps to 0");
        assert_eq!(back.data[[1, 0, 0]], 1.0, "{ext}: +inf maps to 1");
        assert_eq!(back.data[[2, 0, 0]], 0.0, "{ext}: -inf maps to 0");
        assert_eq!(back.data[[0, 0, 1]], 0.5, "{ext}: 0 HU maps to 0.5");
    }
}

#[test]
fn npy_all_dtypes_and_orders() {
    let dir = tempfile::tempdir().unwrap();
    let array = ArrayD::from_shape_fn(IxDyn(&[4, 3, 2]), |i| {
        (i[0] * 6 + i[1] * 2 + i[2]) as f32 - 3.0
    });
    for dtype in [NpyDtype::F32, NpyDtype::F64, NpyDtype::I16] {
        let path = dir.path().join(format!("a_{dtype:?}.npy"));
        write_npy(&path, array.view(), dtype).unwrap();
        assert_eq!(read_npy(&path).unwrap(), array);
        let bytes = std::fs::read(&path).unwrap();
        // Header padded to 64 bytes with a trailing newline, as NumPy writes.
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize + 10;
        assert_eq!(header_len % 64, 0);
        assert_eq!(bytes[header_len - 1], b'\n');
    }
    let path = dir.path().join("u8.npy");
    write_npy(&path, array.view(), NpyDtype::U8).unwrap();
    assert_eq!(read_npy(&path).unwrap(), array.mapv(|v| v.max(0.0)));
    let path = dir.path().join("mask.npy");
    write_npy(&path, array.view(), NpyDtype::Bool).unwrap();
    assert_eq!(
        read_npy(&path).unwrap(),
        array.mapv(|v| if v != 0.0 { 1.0 } else { 0.0 })
    );
    // A transposed (non-standard layout) view is written in logical order.
    let path = dir.path().join("t.npy");
    let transposed = array.view().reversed_axes();
    write_npy(&path, transposed.clone(), NpyDtype::F32).unwrap();
    assert_eq!(read_npy(&path).unwrap(), transposed.to_owned());
}

#[test]
fn stack_writer_streams_and_mmap_reader_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let item_shape = [8, 6, 4];
    let item = |i: usize| {
        (0..192)
            .map(|k| (i * 1000 + k) as f32 * 0.5)
            .collect::<Vec<f32>>()
    };
    for dtype in [NpyDtype::F64, NpyDtype::F32, NpyDtype::I16] {
        let path = dir.path().join(format!("bat_32_s_8x6x4_{dtype:?}.npy"));
        let mut writer = NpyStackWriter::create(&path, &item_shape, dtype).unwrap();
        assert!(!path.exists(), "the final file appears only at finish");
        for i in 0..17 {
            writer.append(&item(i)).unwrap();
        }
        assert_eq!(writer.len(), 17);
        assert!(writer.append(&[1.0; 5]).is_err());
        assert_eq!(writer.finish().unwrap(), path);

        let stack = NpyStack::open(&path).unwrap();
        assert_eq!(
            (stack.len(), stack.item_shape(), stack.dtype()),
            (17, &item_shape[..], dtype)
        );
        let mut out = vec![0f32; 192];
        for i in [0, 5, 16] {
            stack.read_item_into(i, &mut out).unwrap();
            let want: Vec<f32> = if dtype == NpyDtype::I16 {
                item(i).iter().map(|v| v.round()).collect()
            } else {
                item(i)
            };
            assert_eq!(out, want, "{dtype:?} item {i}");
        }
        let err = stack.read_item_into(17, &mut out).unwrap_err().to_string();
        assert!(
            err.contains("bat_32_s_8x6x4_") && err.contains("out of range"),
            "{err}"
        );
        assert!(stack.read_item_into(0, &mut out[..10]).is_err());
        // The whole-file reader agrees.
        assert_eq!(read_npy(&path).unwrap().shape(), &[17, 8, 6, 4]);
    }
    // Dropping an unfinished writer leaves no file behind.
    let other = dir.path().join("unfinished.npy");
    {
        let mut writer = NpyStackWriter::create(&other, &item_shape, NpyDtype::F32).unwrap();
        writer.append(&item(0)).unwrap();
    }
    assert!(!other.exists());
    assert!(
        std::fs::read_dir(dir.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp"))
    );
}

#[test]
fn npy_stack_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<NpyStack>();
}

#[test]
fn volume_files_lists_headers_named_data_files_and_the_raw_a_write_makes() {
    use genesis_io::volume_files;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A detached MetaImage whose data file is not named after it.
    std::fs::write(
        d.join("in.mhd"),
        "NDims = 3\nDimSize = 2 2 2\nElementType = MET_SHORT\nElementDataFile = scan.raw\n",
    )
    .unwrap();
    assert_eq!(
        volume_files(d.join("in.mhd")),
        [d.join("in.mhd"), d.join("scan.raw"), d.join("in.raw")]
    );
    // Paths that do not exist yet: what write_volume would write.
    assert_eq!(
        volume_files(d.join("out.nhdr")),
        [d.join("out.nhdr"), d.join("out.raw")]
    );
    assert_eq!(volume_files(d.join("out.nii.gz")), [d.join("out.nii.gz")]);
    // An attached MetaImage, as write_volume writes it: one file.
    write_volume(
        d.join("a.mha"),
        &sample_volume(genesis_io::ElementType::I16),
    )
    .unwrap();
    assert_eq!(volume_files(d.join("a.mha")), [d.join("a.mha")]);
    // A header that cannot be read names no data file.
    std::fs::write(d.join("bad.mhd"), "not a header").unwrap();
    assert_eq!(
        volume_files(d.join("bad.mhd")),
        [d.join("bad.mhd"), d.join("bad.raw")]
    );
}
