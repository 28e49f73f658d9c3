//! Integration tests of genesis-io: fixtures written by SimpleITK, nibabel,
//! pynrrd and NumPy; round trips of every format and element type; malformed
//! inputs; seeded mutation fuzzing; optional checks against the real tools and
//! the real chest CTs.

// Helpers outside #[test] functions unwrap too: a panic there is a test failure.
#![allow(clippy::unwrap_used)]

mod common;
mod fixtures;
mod interop;
mod malformed;
mod mutation;
mod roundtrip;
