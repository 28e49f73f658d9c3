//! Criterion benches on 64x64x32 f32 cubes: each kernel on one cube, full pair generation
//! and each kernel alone over batches (one thread and all threads), and extraction from a
//! synthetic 512x512x200 CT scan.
//!
//! Run: `cargo bench -p genesis-transforms --bench transforms -- --measurement-time 5
//! --warm-up-time 1 --sample-size 10`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use genesis_transforms::{
    BezierMap, ExtractConfig, Kernel, NonLinearConfig, PairScratch, TransformConfig, cube_rng,
    extract_cubes, generate_pair, generate_pairs,
};
use ndarray::Array3;

const SHAPE: [usize; 3] = [64, 64, 32];

/// Every kernel, named as the benches report it.
const KERNELS: [(&str, Kernel); 6] = [
    ("none", Kernel::None),
    ("flip", Kernel::Flip),
    ("local_shuffle", Kernel::LocalShuffle),
    ("nonlinear", Kernel::NonLinear),
    ("inpaint", Kernel::InPaint),
    ("outpaint", Kernel::OutPaint),
];

/// A smooth cube with values in [0, 1], like a windowed CT cube.
fn test_cube(offset: usize) -> Array3<f32> {
    Array3::from_shape_fn((64, 64, 32), |(i, j, k)| {
        let v = ((i * 7 + j * 3 + k * 5 + offset) % 97) as f32 / 97.0;
        0.1 + 0.8 * v
    })
}

fn kernels(c: &mut Criterion) {
    let mut group = c.benchmark_group("kernel_64x64x32");
    group.throughput(Throughput::Elements(1));
    let cube = test_cube(0);
    let mut input = Array3::zeros((64, 64, 32));
    let mut target = Array3::zeros((64, 64, 32));
    let mut scratch = PairScratch::new(SHAPE);
    // Each kernel alone with probability 1, through the allocation-free pair path; the
    // "none" line is the two cube copies every pair pays.
    for (name, kernel) in KERNELS {
        let name = if name == "none" {
            "none (copies only)"
        } else {
            name
        };
        let config = TransformConfig::only(kernel);
        let mut index = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut rng = cube_rng(0, 0, index);
                index += 1;
                generate_pair(
                    cube.view(),
                    input.view_mut(),
                    target.view_mut(),
                    &config,
                    &mut rng,
                    &mut scratch,
                )
                .unwrap_or_else(|e| panic!("{e}"));
                black_box(&input);
            })
        });
    }
    let mut rng = cube_rng(0, 0, 0);
    group.bench_function("bezier_map_build", |b| {
        b.iter(|| black_box(BezierMap::random(&NonLinearConfig::default(), &mut rng)))
    });
    let map =
        BezierMap::new([0.3, 0.8], [0.6, 0.1], false, 100_000).unwrap_or_else(|e| panic!("{e}"));
    let mut values = cube.clone().into_raw_vec_and_offset().0;
    group.bench_function("bezier_map_apply_131072_voxels", |b| {
        b.iter(|| map.apply_slice(black_box(&mut values)))
    });
    group.finish();
}

/// `n_cubes` test cubes one after the other in one buffer.
fn test_cubes(n_cubes: usize) -> Vec<f32> {
    let mut cubes = Vec::with_capacity(n_cubes * SHAPE.iter().product::<usize>());
    for i in 0..n_cubes {
        cubes.extend(test_cube(i).iter());
    }
    cubes
}

/// Benches `generate_pairs` with `config` on the first `batch` of `cubes`, on one thread
/// and on all of them, as `{prefix}_threads{n}`.
fn bench_batches(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    prefix: &str,
    config: &TransformConfig,
    cubes: &[f32],
    batch: usize,
) {
    let n = batch * SHAPE.iter().product::<usize>();
    let mut inputs = vec![0f32; n];
    let mut targets = vec![0f32; n];
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    group.throughput(Throughput::Elements(batch as u64));
    for threads in [1, all] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let mut epoch = 0;
        group.bench_function(format!("{prefix}_threads{threads}"), |b| {
            b.iter(|| {
                epoch += 1;
                pool.install(|| {
                    generate_pairs(
                        &cubes[..n],
                        SHAPE,
                        &mut inputs,
                        &mut targets,
                        config,
                        1,
                        epoch,
                        0,
                    )
                })
                .unwrap_or_else(|e| panic!("{e}"));
            })
        });
    }
}

fn pairs(c: &mut Criterion) {
    let cubes = test_cubes(64);
    let mut group = c.benchmark_group("pairs_paper_64x64x32");
    // 64 cubes per call, and 6: the batch genesis-train asks for (its default batch size).
    for batch in [64, 6] {
        bench_batches(
            &mut group,
            &format!("batch{batch}"),
            &TransformConfig::paper(),
            &cubes,
            batch,
        );
    }
    group.finish();
}

/// Each kernel alone (probability 1) over batches of 64 cubes, on one thread and on all:
/// how each kernel scales with cores.
fn kernel_batches(c: &mut Criterion) {
    let cubes = test_cubes(64);
    let mut group = c.benchmark_group("kernel_batch64_64x64x32");
    for (name, kernel) in KERNELS {
        bench_batches(&mut group, name, &TransformConfig::only(kernel), &cubes, 64);
    }
    group.finish();
}

fn extraction(c: &mut Criterion) {
    // Lung-like: mostly -850 HU with a little structure, so most windows are accepted.
    let scan = Array3::from_shape_fn((512, 512, 200), |(x, y, z)| {
        if (x / 16 + y / 16 + z / 8) % 11 == 0 {
            40.0
        } else {
            -850.0 + ((x ^ y ^ z) % 50) as f32
        }
    });
    let config = ExtractConfig::paper();
    let mut group = c.benchmark_group("extract_512x512x200");
    group.throughput(Throughput::Elements(config.scale as u64));
    let mut index = 0;
    group.bench_function("32_cubes_one_thread", |b| {
        b.iter(|| {
            index += 1;
            let cubes = extract_cubes(scan.view(), &config, &mut cube_rng(0, 0, index))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(cubes.len(), config.scale);
            black_box(cubes)
        })
    });
    group.finish();
}

criterion_group!(benches, kernels, pairs, kernel_batches, extraction);
criterion_main!(benches);
