//! Reading a 512×512×300 int16 CT and windowing it to f32 [0, 1], against
//! the floor of just getting the bytes: reading the `.raw` file into memory
//! (MetaImage), or gunzipping the `.nii.gz` (NIfTI).
//!
//! The test volume is generated in a temporary directory at start. Run:
//! `cargo bench -p genesis-io --bench read_volume -- --measurement-time 5 --warm-up-time 1 --sample-size 10`

use std::hint::black_box;
use std::io::Read;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use genesis_io::{
    ElementType, HuWindow, Volume, read_volume, read_volume_normalized, write_volume,
};
use ndarray::Array3;

const SHAPE: (usize, usize, usize) = (512, 512, 300);

fn make_ct() -> Volume {
    // A smooth phantom with air, soft tissue and bone-like values, int16 HU.
    let data = Array3::from_shape_fn(SHAPE, |(x, y, z)| {
        let r2 = (x as f32 - 256.0).powi(2) + (y as f32 - 256.0).powi(2);
        if r2 > 200.0 * 200.0 {
            -1000.0
        } else {
            ((x * 7 + y * 3 + z * 11) % 2000) as f32 - 900.0
        }
    });
    let mut volume = Volume::new(data, [0.76, 0.76, 1.25]);
    volume.element_type = ElementType::I16;
    volume
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ct = make_ct();
    let mhd = dir.path().join("ct.mhd");
    let nii = dir.path().join("ct.nii.gz");
    write_volume(&mhd, &ct).expect("write mhd");
    write_volume(&nii, &ct).expect("write nii.gz");
    drop(ct);
    let raw = dir.path().join("ct.raw");
    let raw_bytes = std::fs::metadata(&raw).expect("raw").len();

    let mut group = c.benchmark_group("mhd_i16_512x512x300");
    group.throughput(Throughput::Bytes(raw_bytes));
    group.bench_function("read_raw_bytes", |b| {
        b.iter(|| black_box(std::fs::read(&raw).expect("read")))
    });
    group.bench_function("read_volume_then_normalize", |b| {
        b.iter(|| {
            let mut volume = read_volume(&mhd).expect("read");
            volume.normalize(HuWindow::CT);
            black_box(volume)
        })
    });
    group.bench_function("read_volume_normalized", |b| {
        b.iter(|| black_box(read_volume_normalized(&mhd, HuWindow::CT).expect("read")))
    });
    group.finish();

    let mut group = c.benchmark_group("nii_gz_i16_512x512x300");
    group.throughput(Throughput::Bytes(raw_bytes));
    group.bench_function("gunzip_bytes", |b| {
        b.iter(|| {
            let file = std::io::BufReader::new(std::fs::File::open(&nii).expect("open"));
            let mut out = Vec::new();
            flate2::bufread::GzDecoder::new(file)
                .read_to_end(&mut out)
                .expect("gunzip");
            black_box(out)
        })
    });
    group.bench_function("read_volume_then_normalize", |b| {
        b.iter(|| {
            let mut volume = read_volume(&nii).expect("read");
            volume.normalize(HuWindow::CT);
            black_box(volume)
        })
    });
    group.bench_function("read_volume_normalized", |b| {
        b.iter(|| black_box(read_volume_normalized(&nii, HuWindow::CT).expect("read")))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
