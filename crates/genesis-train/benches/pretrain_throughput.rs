//! Pretraining throughput with the paper-size U-Net (base width 32, 64×64×32
//! cubes, batch 6, SGD).
//!
//! Two criterion measurements, then the whole loop:
//! - `produce_batch`: read 6 cubes from a memory-mapped stack and make their
//!   Models Genesis pairs (what the background producer does per step);
//! - `train_step`: forward, MSE, backward and SGD update of one batch;
//! - then one short [`genesis_train::pretrain`] epoch (producer thread, model,
//!   validation), whose cubes/s and data-wait share are printed.
//!
//! ```text
//! cargo bench -p genesis-train --bench pretrain_throughput -- --measurement-time 5 --warm-up-time 1 --sample-size 10
//! ```
//! `GENESIS_BENCH_WIDTH` (default 32) and `GENESIS_BENCH_STEPS` (default 4,
//! steps of the whole-loop run) make it shorter; `GENESIS_BENCH_DEVICE`
//! (default cpu) selects the device.

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group};
use genesis_io::{NpyDtype, NpyStack, NpyStackWriter};
use genesis_models::{ModelConfig, SegmentationModel};
use genesis_train::{Optimizer, OptimizerConfig, PretrainConfig, RunOptions, pretrain};
use genesis_transforms::{TransformConfig, generate_pairs};
use tch::{Device, Tensor, nn};

const SHAPE: [usize; 3] = [64, 64, 32];
const BATCH: usize = 6;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn device() -> Device {
    let spec = std::env::var("GENESIS_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into());
    genesis_models::parse_device(&spec).expect("GENESIS_BENCH_DEVICE is cpu, cuda or auto")
}

/// Smooth synthetic "lung" cubes in [0, 1].
fn cube(seed: usize) -> Vec<f32> {
    let [r, c, d] = SHAPE;
    let mut v = Vec::with_capacity(r * c * d);
    for x in 0..r {
        for y in 0..c {
            for z in 0..d {
                let t = (x as f32 * 0.11 + seed as f32).sin() * (y as f32 * 0.07).cos()
                    + (z as f32 * 0.2).sin();
                v.push(0.5 + 0.25 * t);
            }
        }
    }
    v
}

fn write_stack(path: &Path, n: usize) {
    let mut writer = NpyStackWriter::create(path, &SHAPE, NpyDtype::F32).expect("create stack");
    for i in 0..n {
        writer.append(&cube(i)).expect("append cube");
    }
    writer.finish().expect("finish stack");
}

fn benches(c: &mut Criterion) {
    let width = env_usize("GENESIS_BENCH_WIDTH", 32) as i64;
    let device = device();
    let voxels: usize = SHAPE.iter().product();
    let dir = tempfile::tempdir().expect("temp dir");
    let stack_path = dir.path().join("bat_32_s_64x64x32_0.npy");
    write_stack(&stack_path, 4 * BATCH);
    let stack = NpyStack::open(&stack_path).expect("open stack");
    let mut cubes = vec![0f32; BATCH * voxels];
    let transforms = TransformConfig::paper();

    let mut group = c.benchmark_group("pretrain");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut inputs = vec![0f32; BATCH * voxels];
    let mut targets = vec![0f32; BATCH * voxels];
    let mut epoch = 0u64;
    group.bench_function("produce_batch", |b| {
        b.iter(|| {
            epoch += 1;
            // A different batch of the stack each time, as the producer reads them.
            let first = (epoch as usize % 4) * BATCH;
            for (i, chunk) in cubes.chunks_exact_mut(voxels).enumerate() {
                stack.read_item_into(first + i, chunk).expect("read cube");
            }
            generate_pairs(
                &cubes,
                SHAPE,
                &mut inputs,
                &mut targets,
                &transforms,
                1,
                epoch,
                0,
            )
            .expect("pairs");
            black_box(&inputs);
        })
    });

    let vs = nn::VarStore::new(device);
    let config = ModelConfig {
        base_width: width,
        ..ModelConfig::default()
    };
    let model = SegmentationModel::new(&vs.root(), &config).expect("model");
    let mut optimizer = Optimizer::new(&vs, &OptimizerConfig::paper_pretrain()).expect("optimizer");
    let [r, cc, d] = SHAPE.map(|s| s as i64);
    let x = Tensor::from_slice(&inputs)
        .view([BATCH as i64, 1, r, cc, d])
        .to_device(device);
    let y = Tensor::from_slice(&targets)
        .view([BATCH as i64, 1, r, cc, d])
        .to_device(device);
    group.bench_function(format!("train_step_unet3d_width{width}"), |b| {
        b.iter(|| {
            optimizer.zero_grad();
            let out = model.try_forward_t(&x, true).expect("forward");
            let loss = out.mse_loss(&y, tch::Reduction::Mean);
            loss.backward();
            optimizer.step(0.1).expect("step");
            // Synchronises with the device before the clock stops.
            black_box(loss.double_value(&[]));
        })
    });
    group.finish();
}

/// One short epoch of the real loop: throughput and data-wait share.
fn whole_loop() {
    let width = env_usize("GENESIS_BENCH_WIDTH", 32) as i64;
    let steps = env_usize("GENESIS_BENCH_STEPS", 4);
    let dir = tempfile::tempdir().expect("temp dir");
    write_stack(&dir.path().join("bat_32_s_64x64x32_0.npy"), steps * BATCH);
    write_stack(&dir.path().join("bat_32_s_64x64x32_5.npy"), BATCH);
    let mut config = PretrainConfig::paper();
    config.data = dir.path().to_path_buf();
    config.run_dir = dir.path().join("run");
    config.train_folds = vec![0];
    config.valid_folds = vec![5];
    config.epochs = 1;
    config.sample_every = 0;
    config.device = std::env::var("GENESIS_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into());
    config.model.base_width = width;
    let started = Instant::now();
    let summary = pretrain(
        &config,
        &RunOptions {
            quiet: true,
            ..RunOptions::default()
        },
    )
    .expect("pretrain");
    let record = &summary.history[0];
    println!(
        "whole loop (unet3d width {width}, batch {BATCH}, {steps} steps, {} threads): {:.3} cubes/s, data wait {:.3} s = {:.2}% of training time, epoch {:.1} s (wall {:.1} s)",
        rayon::current_num_threads(),
        record.cubes_per_s,
        record.data_wait_s,
        100.0 * record.data_wait_share,
        record.seconds,
        started.elapsed().as_secs_f64()
    );
}

criterion_group!(group, benches);

fn main() {
    group();
    Criterion::default().configure_from_args().final_summary();
    whole_loop();
}
