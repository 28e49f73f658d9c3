//! Optional: files we write, read back by SimpleITK and NumPy from the project
//! venv. Skips loudly when the venv or a module is absent.

use std::path::PathBuf;
use std::process::Command;

use genesis_io::{NpyDtype, NpyStackWriter, write_volume};

use crate::common::{ALL_TYPES, sample_volume};

const SCRIPT: &str = r#"
import json, sys
import numpy as np
import SimpleITK as sitk
out = {}
for path in sys.argv[1:]:
    if path.endswith(".npy"):
        a = np.load(path)
        out[path] = dict(shape=list(a.shape), sum=float(a.astype(np.float64).sum()), first=float(a[1, 0, 0] if a.ndim == 3 else a.flat[1]))
    else:
        img = sitk.ReadImage(path)
        a = sitk.GetArrayFromImage(img).transpose(2, 1, 0)
        out[path] = dict(shape=list(a.shape), sum=float(a.astype(np.float64).sum()), first=float(a[1, 0, 0]),
                         spacing=list(img.GetSpacing()), origin=list(img.GetOrigin()),
                         direction=np.asarray(img.GetDirection()).reshape(3, 3).T.tolist())
print(json.dumps(out))
"#;

fn python() -> Option<PathBuf> {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    if !python.exists() {
        eprintln!(
            "SKIPPED: {} is absent; run `cargo xtask setup` to create the venv",
            python.display()
        );
        return None;
    }
    let ok = Command::new(&python)
        .args(["-c", "import numpy, SimpleITK"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!(
            "SKIPPED: numpy or SimpleITK missing in the venv (.venv/bin/pip install numpy SimpleITK)"
        );
        return None;
    }
    Some(python)
}

#[test]
fn simpleitk_and_numpy_read_what_we_write() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for element_type in ALL_TYPES {
        let volume = sample_volume(element_type);
        for ext in ["mhd", "mha", "nrrd", "nii.gz", "npy"] {
            let path = dir.path().join(format!("v_{element_type}.{ext}"));
            write_volume(&path, &volume).unwrap();
            paths.push((path, volume.clone()));
        }
    }
    let stack_path = dir.path().join("bat_32_s_4x3x2_0.npy");
    let mut writer = NpyStackWriter::create(&stack_path, &[4, 3, 2], NpyDtype::F64).unwrap();
    for i in 0..5 {
        writer.append(&[i as f32 + 0.5; 24]).unwrap();
    }
    writer.finish().unwrap();

    let mut command = Command::new(&python);
    command.args(["-c", SCRIPT]);
    for (path, _) in &paths {
        command.arg(path);
    }
    command.arg(&stack_path);
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();

    for (path, volume) in &paths {
        let r = &report[path.to_string_lossy().as_ref()];
        let name = path.file_name().unwrap().to_string_lossy();
        let shape: Vec<u64> = r["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(
            shape,
            volume.shape().iter().map(|&v| v as u64).collect::<Vec<_>>(),
            "{name}"
        );
        let sum: f64 = volume.data.iter().map(|&v| v as f64).sum();
        assert!(
            (r["sum"].as_f64().unwrap() - sum).abs() < 1e-6 * (1.0 + sum.abs()),
            "{name}: sum {} vs {sum}",
            r["sum"]
        );
        assert_eq!(
            r["first"].as_f64().unwrap(),
            volume.data[[1, 0, 0]] as f64,
            "{name}: voxel (1,0,0)"
        );
        if let Some(spacing) = r.get("spacing") {
            for a in 0..3 {
                assert!(
                    (spacing[a].as_f64().unwrap() - volume.spacing[a]).abs() < 1e-5,
                    "{name}: spacing"
                );
                assert!(
                    (r["origin"][a].as_f64().unwrap() - volume.origin[a]).abs() < 1e-4,
                    "{name}: origin"
                );
                for b in 0..3 {
                    let got = r["direction"][a][b].as_f64().unwrap();
                    assert!(
                        (got - volume.direction[a][b]).abs() < 1e-5,
                        "{name}: direction {:?}",
                        r["direction"]
                    );
                }
            }
        }
    }
    let r = &report[stack_path.to_string_lossy().as_ref()];
    assert_eq!(r["shape"], serde_json::json!([5, 4, 3, 2]));
    assert_eq!(
        r["sum"].as_f64().unwrap(),
        (0..5).map(|i| (i as f64 + 0.5) * 24.0).sum::<f64>()
    );
}
