//! Fuzz whole-file reading: the first byte picks the extension, the rest is the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

const EXTENSIONS: [&str; 6] = ["mha", "nrrd", "npy", "nii", "nii.gz", "mhd"];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, contents)) = data.split_first() else { return };
    let dir = std::env::temp_dir().join(format!("genesis-io-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("input.{}", EXTENSIONS[selector as usize % EXTENSIONS.len()]));
    if std::fs::write(&path, contents).is_ok() {
        let _ = genesis_io::read_volume(&path);
        if path.extension().is_some_and(|e| e == "npy") {
            let _ = genesis_io::read_npy(&path);
        }
    }
});
