//! Deterministic mutation fuzzing: thousands of corrupted headers and files
//! from a seeded RNG. Readers must return `Ok` or `Err`, never panic, and never
//! allocate without bound (a panic or abort fails the test).
//!
//! This complements the cargo-fuzz targets in `crates/genesis-io/fuzz`.

use std::path::Path;

use genesis_io::fuzzing;
use genesis_io::{NpyStack, read_npy, read_volume};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::common::fixtures_dir;

const INTERESTING: &[&str] = &[
    "0",
    "-1",
    "1",
    "3",
    "4",
    "65535",
    "4294967296",
    "18446744073709551616",
    "1e308",
    "nan",
    "inf",
    "-0",
    " ",
    "=",
    ":",
    "(",
    ")",
    ",",
    "\n",
    "\n\n",
    "LOCAL",
    "LIST",
    "True",
    "False",
    "gzip",
    "raw",
    "text",
    "big",
    "(1,0,0)",
    "none",
    "'",
    "{",
    "}",
    "L",
];

fn mutate(rng: &mut ChaCha8Rng, input: &[u8]) -> Vec<u8> {
    let mut bytes = input.to_vec();
    for _ in 0..rng.gen_range(1..=4) {
        let len = bytes.len().max(1);
        // Headers are where the parsers live: aim most mutations at the first 400 bytes.
        let at = if rng.gen_bool(0.8) {
            rng.gen_range(0..len.min(400))
        } else {
            rng.gen_range(0..len)
        };
        match rng.gen_range(0..7) {
            0 if !bytes.is_empty() => {
                let i = at.min(bytes.len() - 1);
                bytes[i] ^= 1 << rng.gen_range(0..8);
            }
            1 if !bytes.is_empty() => {
                let i = at.min(bytes.len() - 1);
                bytes[i] = rng.r#gen();
            }
            2 => bytes.truncate(at),
            3 => {
                let token = INTERESTING[rng.gen_range(0..INTERESTING.len())];
                let at = at.min(bytes.len());
                bytes.splice(at..at, token.bytes());
            }
            4 if !bytes.is_empty() => {
                let end = (at + rng.gen_range(1..16)).min(bytes.len());
                let at = at.min(end);
                bytes.drain(at..end);
            }
            5 => {
                // Replace a run of digits with a huge or odd number.
                let token = INTERESTING[rng.gen_range(0..8)];
                if let Some(pos) = bytes.iter().skip(at).position(|b| b.is_ascii_digit()) {
                    let start = at + pos;
                    let end = start
                        + bytes[start..]
                            .iter()
                            .take_while(|b| b.is_ascii_digit())
                            .count();
                    bytes.splice(start..end, token.bytes());
                }
            }
            _ => {
                // Duplicate a line.
                if let Some(end) = bytes.iter().skip(at).position(|&b| b == b'\n') {
                    let line: Vec<u8> = bytes[at..at + end + 1].to_vec();
                    bytes.splice(at..at, line);
                }
            }
        }
    }
    bytes
}

fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(fixtures_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".py")
            || name.ends_with(".json")
            || name.ends_with(".md")
            || name.ends_with("LICENSE")
        {
            continue;
        }
        out.push((name, std::fs::read(&path).unwrap()));
    }
    out.sort();
    out
}

#[test]
fn mutated_headers_never_panic() {
    let mut rng = ChaCha8Rng::seed_from_u64(0x6e6e_6573_6973);
    let seeds = seeds();
    let mut parsed = 0;
    for round in 0..30_000 {
        let (name, bytes) = &seeds[round % seeds.len()];
        let mutated = mutate(&mut rng, bytes);
        // Every parser sees every input; the right one sees mostly near-valid headers.
        fuzzing::metaimage_header(&mutated);
        fuzzing::nrrd_header(&mutated);
        fuzzing::npy_header(&mutated);
        if name.ends_with(".mhd") || name.ends_with(".nrrd") || name.ends_with(".npy") {
            parsed += 1;
        }
    }
    assert!(parsed > 10_000);
}

fn read_all_ways(path: &Path) {
    let _ = read_volume(path);
    if path.extension().is_some_and(|e| e == "npy") {
        let _ = read_npy(path);
        if let Ok(stack) = NpyStack::open(path) {
            let mut out = vec![0f32; stack.item_shape().iter().product::<usize>().min(1 << 20)];
            for i in 0..stack.len().min(4) {
                let _ = stack.read_item_into(i, &mut out);
            }
        }
    }
}

#[test]
fn mutated_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(2019);
    let seeds = seeds();
    // Detached data files must exist next to mutated headers.
    for (name, bytes) in &seeds {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let mut errors = 0;
    let mut oks = 0;
    for round in 0..3_000 {
        let (name, bytes) = &seeds[round % seeds.len()];
        let mutated = mutate(&mut rng, bytes);
        let path = dir.path().join(format!("m_{name}"));
        std::fs::write(&path, &mutated).unwrap();
        match read_volume(&path) {
            Ok(_) => oks += 1,
            Err(e) => {
                errors += 1;
                let message = e.to_string();
                assert!(
                    message.contains(&*dir.path().to_string_lossy()),
                    "error does not name a file: {message}"
                );
            }
        }
        read_all_ways(&path);
        std::fs::remove_file(&path).unwrap();
    }
    assert!(
        errors > 500 && oks > 100,
        "{errors} errors, {oks} successes"
    );
}
