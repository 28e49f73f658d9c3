use std::path::PathBuf;

use genesis_io::{ElementType, Volume};
use ndarray::Array3;

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/fixtures/io")
}

/// A volume with non-trivial geometry whose values fit `element_type`.
pub fn sample_volume(element_type: ElementType) -> Volume {
    let shift = match element_type {
        ElementType::U8 | ElementType::U16 | ElementType::U32 => 50.0,
        _ => 0.0,
    };
    let scale = match element_type {
        ElementType::F32 | ElementType::F64 => 0.25,
        ElementType::U8 | ElementType::I8 => 0.5,
        _ => 7.0,
    };
    let data = Array3::from_shape_fn((7, 5, 3), |(x, y, z)| {
        ((x + 10 * y + 100 * z) as f32 - 50.0 + shift) * scale
    });
    let data = if matches!(element_type, ElementType::U8 | ElementType::I8) {
        data.mapv(|v| v.round().clamp(-128.0, 127.0))
    } else {
        data
    };
    let (s, c) = (0.25f64.sin(), 0.25f64.cos());
    Volume {
        data,
        spacing: [0.75, 1.25, 2.5],
        origin: [-101.5, 20.25, -300.0],
        direction: [[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]],
        element_type,
    }
}

pub const ALL_TYPES: [ElementType; 8] = [
    ElementType::U8,
    ElementType::I8,
    ElementType::U16,
    ElementType::I16,
    ElementType::U32,
    ElementType::I32,
    ElementType::F32,
    ElementType::F64,
];
