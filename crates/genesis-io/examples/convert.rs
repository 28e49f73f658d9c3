//! Convert a volume between formats, chosen by extension.
//!
//! ```sh
//! cargo run --release -p genesis-io --example convert -- IN OUT [--type i16|f32|...]
//! ```
//!
//! Supported: `.mhd` (+ `.raw`), `.mha`, `.nrrd`, `.nhdr` (+ `.raw`), `.nii`,
//! `.nii.gz`, `.npy`. Geometry is kept where the target format holds it
//! (`.npy` holds only the (x, y, z) array). Prints shape, spacing, origin,
//! element type and value range of what was read.

use std::time::Instant;

use anyhow::{Context, bail};
use genesis_io::{ElementType, read_volume, write_volume};

fn parse_type(name: &str) -> anyhow::Result<ElementType> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "u8" | "uint8" => ElementType::U8,
        "i8" | "int8" => ElementType::I8,
        "u16" | "uint16" => ElementType::U16,
        "i16" | "int16" => ElementType::I16,
        "u32" | "uint32" => ElementType::U32,
        "i32" | "int32" => ElementType::I32,
        "f32" | "float32" | "float" => ElementType::F32,
        "f64" | "float64" | "double" => ElementType::F64,
        other => {
            bail!("unknown element type {other:?} (use u8, i8, u16, i16, u32, i32, f32 or f64)")
        }
    })
}

fn run(args: Vec<String>) -> anyhow::Result<()> {
    let mut positional = Vec::new();
    let mut element_type = None;
    let mut iter = args.into_iter();
    while let Some(arg) = iter.next() {
        if arg == "--type" {
            element_type = Some(parse_type(&iter.next().context("--type needs a value")?)?);
        } else if arg == "-h" || arg == "--help" {
            println!("usage: convert IN OUT [--type u8|i8|u16|i16|u32|i32|f32|f64]");
            return Ok(());
        } else {
            positional.push(arg);
        }
    }
    let [input, output] = positional.as_slice() else {
        bail!("usage: convert IN OUT [--type u8|i8|u16|i16|u32|i32|f32|f64]");
    };
    let start = Instant::now();
    let mut volume = read_volume(input)?;
    let read_time = start.elapsed();
    let [nx, ny, nz] = volume.shape();
    println!("read    {input} in {:.3} s", read_time.as_secs_f64());
    println!("shape   {nx} × {ny} × {nz} (x, y, z)");
    println!("spacing {:?} mm", volume.spacing);
    println!("origin  {:?} mm (LPS)", volume.origin);
    println!("direction {:?}", volume.direction);
    println!("type    {}", volume.element_type);
    match volume.value_range() {
        Some((lo, hi)) => println!("range   {lo} … {hi}"),
        None => println!("range   (no finite values)"),
    }
    if let Some(t) = element_type {
        volume.element_type = t;
    }
    let start = Instant::now();
    write_volume(output, &volume)?;
    println!(
        "wrote   {output} as {} in {:.3} s",
        volume.element_type,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() {
    if let Err(e) = run(std::env::args().skip(1).collect()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
