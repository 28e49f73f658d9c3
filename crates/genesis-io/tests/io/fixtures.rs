//! Files written by the reference tools (data/fixtures/io/make_fixtures.py), read value for value.

use genesis_io::{ElementType, NpyDtype, NpyStack, read_npy, read_volume};
use serde_json::Value;

use crate::common::fixtures_dir;

fn expected() -> serde_json::Map<String, Value> {
    let text = std::fs::read_to_string(fixtures_dir().join("expected.json")).unwrap();
    serde_json::from_str::<Value>(&text)
        .unwrap()
        .as_object()
        .unwrap()
        .clone()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn element_type(name: &str) -> ElementType {
    match name {
        "U8" => ElementType::U8,
        "I8" => ElementType::I8,
        "U16" => ElementType::U16,
        "I16" => ElementType::I16,
        "U32" => ElementType::U32,
        "I32" => ElementType::I32,
        "F32" => ElementType::F32,
        _ => ElementType::F64,
    }
}

fn assert_close(name: &str, what: &str, got: &[f64], want: &[f64], tolerance: f64) {
    assert_eq!(got.len(), want.len(), "{name}: {what} length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tolerance * (1.0 + w.abs()),
            "{name}: {what}[{i}] = {g}, reference tool says {w}"
        );
    }
}

#[test]
fn every_volume_fixture_matches_the_reference_tool() {
    let mut checked = 0;
    for (name, entry) in expected() {
        let Some(kind) = entry.get("element_type") else {
            continue;
        };
        let volume =
            read_volume(fixtures_dir().join(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let shape: Vec<usize> = floats(&entry["shape"])
            .iter()
            .map(|&v| v as usize)
            .collect();
        assert_eq!(volume.shape().to_vec(), shape, "{name}: shape");
        assert_eq!(
            volume.element_type,
            element_type(kind.as_str().unwrap()),
            "{name}: element type"
        );
        // NIfTI stores geometry as f32; others as text.
        assert_close(
            &name,
            "spacing",
            &volume.spacing,
            &floats(&entry["spacing"]),
            1e-6,
        );
        assert_close(
            &name,
            "origin",
            &volume.origin,
            &floats(&entry["origin"]),
            1e-5,
        );
        let direction: Vec<f64> = volume.direction.iter().flatten().copied().collect();
        let want: Vec<f64> = entry["direction"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(floats)
            .collect();
        assert_close(&name, "direction", &direction, &want, 1e-5);
        let got: Vec<f64> = volume.data.iter().map(|&v| v as f64).collect();
        if let Some(values) = entry.get("values").filter(|v| !v.is_null()) {
            assert_close(&name, "values", &got, &floats(values), 1e-6);
        }
        if let Some(values) = entry.get("nibabel_values") {
            assert_close(&name, "nibabel values", &got, &floats(values), 1e-6);
        }
        let sum: f64 = got.iter().sum();
        assert_close(
            &name,
            "sum",
            &[sum],
            &[entry["sum"].as_f64().unwrap()],
            1e-9,
        );
        if let Some(samples) = entry.get("samples") {
            for s in samples.as_array().unwrap() {
                let s = floats(s);
                let v = volume.data[[s[0] as usize, s[1] as usize, s[2] as usize]];
                assert_eq!(v as f64, s[3], "{name}: sample {s:?}");
            }
        }
        checked += 1;
    }
    assert!(checked >= 18, "only {checked} volume fixtures found");
}

#[test]
fn original_models_genesis_stack_reads_unchanged() {
    let all = expected();
    for name in ["bat_2_s_5x4x3_0.npy", "stack_f32_fortran.npy"] {
        let entry = &all[name];
        let want = floats(&entry["values"]);
        let array = read_npy(fixtures_dir().join(name)).unwrap();
        assert_eq!(array.shape(), &[3, 5, 4, 3]);
        let got: Vec<f64> = array.iter().map(|&v| v as f64).collect();
        assert_close(name, "values", &got, &want, 1e-6);

        let stack = NpyStack::open(fixtures_dir().join(name)).unwrap();
        assert_eq!(stack.len(), 3);
        assert_eq!(stack.item_shape(), &[5, 4, 3]);
        let dtype = if name.starts_with("bat") {
            NpyDtype::F64
        } else {
            NpyDtype::F32
        };
        assert_eq!(stack.dtype(), dtype);
        let mut item = vec![0f32; 60];
        for i in 0..3 {
            stack.read_item_into(i, &mut item).unwrap();
            let got: Vec<f64> = item.iter().map(|&v| v as f64).collect();
            assert_close(
                name,
                &format!("item {i}"),
                &got,
                &want[i * 60..(i + 1) * 60],
                1e-6,
            );
        }
    }
}

#[test]
fn real_chest_ct_crop_has_the_nodule() {
    let label = read_volume(fixtures_dir().join("lung1_label_crop.nrrd")).unwrap();
    let image = read_volume(fixtures_dir().join("lung1_image_crop.nrrd")).unwrap();
    let nodule = label.data.iter().filter(|&&v| v == 1.0).count();
    assert_eq!(nodule, 837, "the whole lung1 nodule lies in the crop");
    let (lo, hi) = image.value_range().unwrap();
    assert!(
        lo >= -1024.0 && hi <= 3071.0 && hi > 0.0,
        "HU range {lo}..{hi}"
    );
    // Nodule voxels are soft tissue, far denser than the surrounding lung.
    let mean_in: f32 = image
        .data
        .iter()
        .zip(label.data.iter())
        .filter(|(_, l)| **l == 1.0)
        .map(|(v, _)| *v)
        .sum::<f32>()
        / nodule as f32;
    assert!(mean_in > -400.0, "mean HU in nodule {mean_in}");
}

/// Optional: the full real chest CTs, when the shared folder is present.
#[test]
fn real_chest_ct_full_files_optional() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/real-chest-ct");
    if !dir.join("lung1_image.nrrd").exists() {
        eprintln!(
            "SKIPPED: {} is absent (the real chest CTs are not shipped)",
            dir.display()
        );
        return;
    }
    let image = read_volume(dir.join("lung1_image.nrrd")).unwrap();
    assert_eq!(image.shape(), [512, 512, 48]);
    assert_eq!(image.spacing, [0.5703125, 0.5703125, 5.0]);
    assert_eq!(image.origin, [-146.0, -325.0, -777.499_999_999_999_8]);
    assert_eq!(image.element_type, ElementType::I16);
    let (lo, hi) = image.value_range().unwrap();
    assert_eq!((lo, hi), (-1024.0, 3071.0));
    // The committed crop is a faithful sub-block of the full file.
    let crop = read_volume(fixtures_dir().join("lung1_image_crop.nrrd")).unwrap();
    for ((x, y, z), &v) in crop.data.indexed_iter() {
        assert_eq!(image.data[[194 + x, 340 + y, 29 + z]], v);
    }
    let label = read_volume(dir.join("lung2_label.nrrd")).unwrap();
    assert_eq!(label.shape(), [512, 512, 61]);
    assert_eq!(label.data.iter().filter(|&&v| v == 1.0).count(), 24_644);
    eprintln!("checked the full real chest CTs in {}", dir.display());
}
