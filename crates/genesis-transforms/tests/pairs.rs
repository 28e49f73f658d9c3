//! Integration tests: determinism across thread counts and batch splits, and the
//! statistics of the paper's pipeline over thousands of seeded draws.

// Helpers outside #[test] functions unwrap too; a panic is a test failure.
#![allow(clippy::unwrap_used)]

use genesis_transforms::{
    InPaintConfig, Kernel, OutPaintConfig, PaintTrace, PairScratch, PairTrace, TransformConfig,
    cube_rng, generate_pair, generate_pair_traced, generate_pairs, in_painting, out_painting,
};
use ndarray::{Array3, ArrayView3, Axis};

const SHAPE: [usize; 3] = [64, 64, 32];
const LEN: usize = 64 * 64 * 32;

fn test_cubes(n: usize) -> Vec<f32> {
    (0..n * LEN)
        .map(|i| ((i * 2_654_435_761) % 1000) as f32 / 1000.0)
        .collect()
}

fn run_batch(
    cubes: &[f32],
    config: &TransformConfig,
    threads: usize,
    first: u64,
) -> (Vec<f32>, Vec<f32>) {
    let mut inputs = vec![0f32; cubes.len()];
    let mut targets = vec![0f32; cubes.len()];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| generate_pairs(cubes, SHAPE, &mut inputs, &mut targets, config, 7, 3, first))
        .unwrap();
    (inputs, targets)
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn batches_are_bit_identical_for_any_thread_count_and_split() {
    let n = 12;
    let cubes = test_cubes(n);
    let config = TransformConfig::paper();
    let (in1, tg1) = run_batch(&cubes, &config, 1, 100);
    let (in2, tg2) = run_batch(&cubes, &config, 2, 100);
    let (in3, tg3) = run_batch(&cubes, &config, 3, 100);
    assert_eq!(bits(&in1), bits(&in2));
    assert_eq!(bits(&tg1), bits(&tg2));
    assert_eq!(bits(&in1), bits(&in3));
    assert_eq!(bits(&tg1), bits(&tg3));

    // Two half batches with the matching first index give the same pairs.
    let half = n / 2 * LEN;
    let (in_a, tg_a) = run_batch(&cubes[..half], &config, 2, 100);
    let (in_b, tg_b) = run_batch(&cubes[half..], &config, 1, 100 + n as u64 / 2);
    assert_eq!(bits(&in1[..half]), bits(&in_a));
    assert_eq!(bits(&in1[half..]), bits(&in_b));
    assert_eq!(bits(&tg1[..half]), bits(&tg_a));
    assert_eq!(bits(&tg1[half..]), bits(&tg_b));

    // The serial single-cube path is the oracle for the parallel one.
    let mut scratch = PairScratch::new(SHAPE);
    for i in 0..n {
        let cube = ArrayView3::from_shape((64, 64, 32), &cubes[i * LEN..(i + 1) * LEN]).unwrap();
        let mut input = Array3::zeros((64, 64, 32));
        let mut target = Array3::zeros((64, 64, 32));
        let mut rng = cube_rng(7, 3, 100 + i as u64);
        generate_pair(
            cube,
            input.view_mut(),
            target.view_mut(),
            &config,
            &mut rng,
            &mut scratch,
        )
        .unwrap();
        assert_eq!(
            bits(input.as_slice().unwrap()),
            bits(&in1[i * LEN..(i + 1) * LEN]),
            "cube {i}"
        );
        assert_eq!(
            bits(target.as_slice().unwrap()),
            bits(&tg1[i * LEN..(i + 1) * LEN])
        );
    }

    // Another epoch or seed gives other pairs.
    let mut other = vec![0f32; cubes.len()];
    let mut other_t = vec![0f32; cubes.len()];
    generate_pairs(&cubes, SHAPE, &mut other, &mut other_t, &config, 7, 4, 100).unwrap();
    assert_ne!(bits(&other), bits(&in1));
}

#[test]
fn flips_apply_to_input_and_target_alike_in_pairs() {
    let cubes = test_cubes(1);
    let cube = ArrayView3::from_shape((64, 64, 32), &cubes[..]).unwrap();
    let config = TransformConfig::only(Kernel::Flip);
    let mut scratch = PairScratch::new(SHAPE);
    for seed in 0..20 {
        let mut input = Array3::zeros((64, 64, 32));
        let mut target = Array3::zeros((64, 64, 32));
        let mut rng = cube_rng(seed, 0, 0);
        let trace = generate_pair_traced(
            cube,
            input.view_mut(),
            target.view_mut(),
            &config,
            &mut rng,
            &mut scratch,
        )
        .unwrap();
        assert_eq!(trace.flip.n_flips, 3);
        let mut expected = cube.to_owned();
        for (axis, &f) in trace.flip.flipped.iter().enumerate() {
            if f {
                expected.invert_axis(Axis(axis));
            }
        }
        assert_eq!(input, expected);
        assert_eq!(target, expected);
    }
}

fn within(name: &str, observed: f64, expected: f64, n: usize, extra: f64) {
    let sd = (expected * (1.0 - expected) / n as f64).sqrt();
    assert!(
        (observed - expected).abs() <= 4.0 * sd + extra,
        "{name}: observed {observed:.4}, expected {expected:.4} (4 sd = {:.4})",
        4.0 * sd
    );
}

#[test]
fn branch_frequencies_match_the_paper_probabilities() {
    let n = 2000;
    let cubes = test_cubes(1);
    let cube = ArrayView3::from_shape((64, 64, 32), &cubes[..]).unwrap();
    let config = TransformConfig::paper();
    let mut scratch = PairScratch::new(SHAPE);
    let mut input = Array3::zeros((64, 64, 32));
    let mut target = Array3::zeros((64, 64, 32));
    let mut traces: Vec<PairTrace> = Vec::with_capacity(n);
    for i in 0..n {
        let mut rng = cube_rng(2024, 0, i as u64);
        let trace = generate_pair_traced(
            cube,
            input.view_mut(),
            target.view_mut(),
            &config,
            &mut rng,
            &mut scratch,
        )
        .unwrap();
        let painted = match trace.paint {
            PaintTrace::None => false,
            PaintTrace::In { boxes } => boxes > 0,
            PaintTrace::Out { .. } => true,
        };
        if !trace.local_shuffle && trace.nonlinear.is_none() && !painted {
            assert_eq!(input, target, "nothing fired, so input must equal target");
        } else {
            assert_ne!(input, target);
        }
        traces.push(trace);
    }
    let frac = |f: &dyn Fn(&PairTrace) -> bool, among: &dyn Fn(&PairTrace) -> bool| {
        let pool: Vec<_> = traces.iter().filter(|t| among(t)).collect();
        (
            pool.iter().filter(|t| f(t)).count() as f64 / pool.len() as f64,
            pool.len(),
        )
    };
    let all = |_: &PairTrace| true;
    let (p, m) = frac(&|t| t.local_shuffle, &all);
    within("local", p, 0.5, m, 0.0);
    let (p, m) = frac(&|t| t.nonlinear.is_some(), &all);
    within("nonlinear", p, 0.9, m, 0.0);
    let (p, m) = frac(&|t| t.nonlinear.is_some_and(|c| c.2), &|t| {
        t.nonlinear.is_some()
    });
    within("inverting | nonlinear", p, 0.5, m, 0.0);
    let (p, m) = frac(&|t| t.paint != PaintTrace::None, &all);
    within("paint", p, 0.9, m, 0.0);
    let (p, m) = frac(&|t| matches!(t.paint, PaintTrace::In { .. }), &|t| {
        t.paint != PaintTrace::None
    });
    within("inpaint | paint", p, 0.2, m, 0.0);
    // Flip count: P(k) = 0.4^k 0.6 for k < 3, P(3) = 0.4^3.
    for (k, expected) in [(0, 0.6), (1, 0.24), (2, 0.096), (3, 0.064)] {
        let (p, m) = frac(&|t| t.flip.n_flips == k, &all);
        within(&format!("{k} flips"), p, expected, m, 0.0);
    }
}

/// P(coordinate i lies in a box) along one axis of length `dim`, for sizes uniform in
/// `lo..=hi` and origins uniform in `margin..=dim - size - margin`.
fn axis_cover(dim: usize, (lo, hi): (usize, usize), margin: usize) -> Vec<f64> {
    let mut p = vec![0.0; dim];
    for size in lo..=hi {
        let origins = margin..=dim - size - margin;
        let n_origins = origins.clone().count() as f64;
        for origin in origins {
            for cell in &mut p[origin..origin + size] {
                *cell += 1.0 / ((hi - lo + 1) as f64 * n_origins);
            }
        }
    }
    p
}

/// Mean over voxels of `sum_k P(boxes = k) (1 - cover)^k`: the expected fraction of
/// voxels in no box.
fn expected_uncovered(cover: [Vec<f64>; 3], box_counts: &[(usize, f64)]) -> f64 {
    let mut total = 0.0;
    for px in &cover[0] {
        for py in &cover[1] {
            for pz in &cover[2] {
                let q = 1.0 - px * py * pz;
                total += box_counts
                    .iter()
                    .map(|&(k, pk)| pk * q.powi(k as i32))
                    .sum::<f64>();
            }
        }
    }
    total / LEN as f64
}

/// P(K = k) for "while k < max and a draw < rate".
fn geometric_counts(max: usize, rate: f64, offset: usize) -> Vec<(usize, f64)> {
    (0..=max)
        .map(|k| {
            (
                k + offset,
                if k < max {
                    rate.powi(k as i32) * (1.0 - rate)
                } else {
                    rate.powi(max as i32)
                },
            )
        })
        .collect()
}

fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

#[test]
fn painted_voxel_fractions_match_the_box_rules() {
    let n = 1000;
    // Values outside [0, 1) so that every noised voxel is seen as changed.
    let original = Array3::from_elem((64, 64, 32), 2.0f32);

    let in_config = InPaintConfig::default();
    let cover = SHAPE.map(|d| axis_cover(d, (d / 6, d / 3), 3));
    let expected_in = 1.0 - expected_uncovered(cover, &geometric_counts(5, 0.95, 0));
    let mut fractions = Vec::with_capacity(n);
    let mut boxes = 0;
    for i in 0..n {
        let mut cube = original.clone();
        boxes += in_painting(cube.view_mut(), &in_config, &mut cube_rng(5, 0, i as u64)).unwrap();
        fractions.push(cube.iter().filter(|&&v| v != 2.0).count() as f64 / LEN as f64);
    }
    let (mean, sd) = mean_sd(&fractions);
    let expected_boxes: f64 = geometric_counts(5, 0.95, 0)
        .iter()
        .map(|&(k, p)| k as f64 * p)
        .sum();
    assert!(
        (boxes as f64 / n as f64 - expected_boxes).abs() < 0.15,
        "{boxes}"
    );
    assert!(
        (mean - expected_in).abs() < 4.0 * sd / (n as f64).sqrt(),
        "in-painting changed {mean:.5} of voxels, rules imply {expected_in:.5} (sd {sd:.4})"
    );

    let out_config = OutPaintConfig::default();
    let cover = SHAPE.map(|d| axis_cover(d, (d - 4 * d / 7, d - 3 * d / 7), 3));
    let expected_out = expected_uncovered(cover, &geometric_counts(4, 0.95, 1));
    let mut fractions = Vec::with_capacity(n);
    for i in 0..n {
        let mut cube = original.clone();
        out_painting(cube.view_mut(), &out_config, &mut cube_rng(6, 0, i as u64)).unwrap();
        fractions.push(cube.iter().filter(|&&v| v != 2.0).count() as f64 / LEN as f64);
    }
    let (mean, sd) = mean_sd(&fractions);
    assert!(
        (mean - expected_out).abs() < 4.0 * sd / (n as f64).sqrt(),
        "out-painting changed {mean:.5} of voxels, rules imply {expected_out:.5} (sd {sd:.4})"
    );
    eprintln!("in-painting changes {expected_in:.4}, out-painting {expected_out:.4} of voxels");
}
