//! Fuzz the npy header parser: any bytes must parse to Ok or Err without
//! panicking, and an Ok header must satisfy the reader's invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    genesis_io::fuzzing::npy_header(data);
});
