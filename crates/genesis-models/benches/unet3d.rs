//! Paper-size 3D U-Net on a (2, 1, 64, 64, 32) batch: a forward pass
//! (no gradients) and a training step (forward, MSE loss, backward, SGD
//! update), on `GENESIS_BENCH_THREADS` intra-op threads (default 2), the CPU
//! or the first GPU (`GENESIS_BENCH_DEVICE`, default `cpu`).
//!
//! ```text
//! cargo bench -p genesis-models --bench unet3d -- --warm-up-time 1 --measurement-time 5 --sample-size 10
//! .venv/bin/python crates/genesis-models/scripts/bench_pytorch.py   # the PyTorch eager reference
//! ```

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use genesis_models::{ModelConfig, SegmentationModel, parse_device};
use tch::nn::{self, ModuleT, OptimizerConfig};
use tch::{Device, Kind, Tensor};

const SHAPE: [i64; 5] = [2, 1, 64, 64, 32];

fn synchronize(device: Device) {
    if let Device::Cuda(index) = device {
        tch::Cuda::synchronize(index as i64);
    }
}

fn bench_unet3d(c: &mut Criterion) {
    let threads = std::env::var("GENESIS_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    tch::set_num_threads(threads);
    let device = std::env::var("GENESIS_BENCH_DEVICE")
        .ok()
        .map(|spec| parse_device(&spec))
        .transpose()
        .unwrap_or_else(|err| panic!("GENESIS_BENCH_DEVICE: {err}"))
        .unwrap_or(Device::Cpu);
    tch::manual_seed(0);
    let vs = nn::VarStore::new(device);
    let model =
        SegmentationModel::new(&vs.root(), &ModelConfig::default()).expect("paper config is valid");
    let mut optimizer = nn::Sgd::default().build(&vs, 0.01).expect("SGD builds");
    let input = Tensor::rand(SHAPE, (Kind::Float, device));
    let target = Tensor::rand(SHAPE, (Kind::Float, device));

    let mut group = c.benchmark_group(format!(
        "unet3d_paper_2x1x64x64x32_{threads}threads_{device:?}"
    ));
    group.throughput(Throughput::Elements(SHAPE.iter().product::<i64>() as u64));
    group.bench_function("forward", |b| {
        b.iter(|| {
            let out = tch::no_grad(|| model.forward_t(black_box(&input), false));
            synchronize(device);
            black_box(out)
        })
    });
    group.bench_function("train_step_sgd", |b| {
        b.iter(|| {
            let out = model.forward_t(black_box(&input), true);
            let loss = out.mse_loss(&target, tch::Reduction::Mean);
            optimizer.backward_step(&loss);
            synchronize(device);
            black_box(loss)
        })
    });
    group.finish();
}

criterion_group!(benches, bench_unet3d);
criterion_main!(benches);
