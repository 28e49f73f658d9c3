//! Pair generation: the original's `generate_pair`, per cube and for whole batches.

use std::cell::RefCell;
use std::sync::{Mutex, PoisonError};

use ndarray::{ArrayView3, ArrayViewMut3};
use serde::{Deserialize, Serialize};

use crate::bezier::BezierMap;
use crate::config::TransformConfig;
use crate::flip::{FlipTrace, dim3, draw_flips, flipped_view};
use crate::paint::{Painting, for_each_row_run_in};
use crate::rng::{CubeRng, cube_rng};
use crate::shuffle::{ShuffleScratch, shuffle_blocks};
use crate::{Error, Result};

/// Reusable buffers for [`generate_pair`], so that steady-state pair generation does not
/// touch the heap. One per thread.
#[derive(Debug, Clone)]
pub struct PairScratch {
    shuffle: ShuffleScratch,
    bezier: BezierMap,
}

impl PairScratch {
    /// Buffers sized for cubes of `shape` (rows, cols, deps) with block divisors down to
    /// the paper's; other shapes and configs still work, growing the buffers once.
    pub fn new(shape: [usize; 3]) -> Self {
        #[cfg(test)]
        tests::SCRATCHES_MADE.with(|made| made.set(made.get() + 1));
        let paper = TransformConfig::paper();
        let mut shuffle = ShuffleScratch::default();
        shuffle.reserve(shape, &paper.local_shuffle);
        Self {
            shuffle,
            bezier: BezierMap::identity(),
        }
    }
}

/// Which painting a pair received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PaintTrace {
    /// No painting.
    #[default]
    None,
    /// In-painting with this many noise boxes.
    In {
        /// Number of boxes filled with noise (0 when the first box draw failed).
        boxes: u32,
    },
    /// Out-painting with this many kept boxes.
    Out {
        /// Number of boxes that kept their values.
        boxes: u32,
    },
}

/// What [`generate_pair_traced`] drew for one cube: for tests, statistics and debugging.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct PairTrace {
    /// The flips applied to input and target.
    pub flip: FlipTrace,
    /// Whether local pixel shuffling ran.
    pub local_shuffle: bool,
    /// The non-linear curve's control points P1, P2 and whether it was inverting.
    pub nonlinear: Option<([f64; 2], [f64; 2], bool)>,
    /// The painting.
    pub paint: PaintTrace,
}

/// Makes one (input, target) pair from `cube`, in the original's order: target = input =
/// cube; flip both; local shuffle (probability `local_rate`); non-linear map
/// (`nonlinear_rate`); painting (`paint_rate`), in- with probability `inpaint_rate`, else
/// out-painting. (The painting is drawn first, so that out-painted pairs compute the
/// shuffle and the map only where the kept boxes need them; see the crate docs.)
///
/// `cube` may have any layout; `input` and `target` must have its shape and standard (C)
/// layout. Errors only for mismatched shapes or layouts, an invalid config or a shape
/// too small for a kernel that can fire.
pub fn generate_pair(
    cube: ArrayView3<'_, f32>,
    input: ArrayViewMut3<'_, f32>,
    target: ArrayViewMut3<'_, f32>,
    config: &TransformConfig,
    rng: &mut CubeRng,
    scratch: &mut PairScratch,
) -> Result<()> {
    generate_pair_traced(cube, input, target, config, rng, scratch).map(|_| ())
}

/// [`generate_pair`], also returning what was drawn.
pub fn generate_pair_traced(
    cube: ArrayView3<'_, f32>,
    mut input: ArrayViewMut3<'_, f32>,
    mut target: ArrayViewMut3<'_, f32>,
    config: &TransformConfig,
    rng: &mut CubeRng,
    scratch: &mut PairScratch,
) -> Result<PairTrace> {
    let shape = dim3(cube.dim());
    for (what, found) in [("input", dim3(input.dim())), ("target", dim3(target.dim()))] {
        if found != shape {
            return Err(Error::ShapeMismatch {
                what,
                expected: shape,
                found,
            });
        }
    }
    config.validate(shape)?;
    let input = input
        .as_slice_mut()
        .ok_or(Error::NotContiguous { what: "input" })?;
    let target = target
        .as_slice_mut()
        .ok_or(Error::NotContiguous { what: "target" })?;
    let plan = PairPlan::draw(shape, config, rng);
    Ok(pair_into_slices(
        cube, input, target, shape, config, plan, rng, scratch,
    ))
}

/// The draws a pair makes before its kernels write anything, in stream order: the
/// flips, the painting (drawn ahead of the other kernels; see [`pair_into_slices`]) and
/// whether local shuffling runs.
struct PairPlan {
    flip: FlipTrace,
    painting: Option<Painting>,
    local_shuffle: bool,
}

impl PairPlan {
    fn draw(shape: [usize; 3], config: &TransformConfig, rng: &mut CubeRng) -> Self {
        let flip = draw_flips(rng, config.flip_rate, config.max_flips);
        let painting = (rng.uniform() < config.paint_rate).then(|| {
            if rng.uniform() < config.inpaint_rate {
                Painting::draw_in(shape, &config.in_paint, rng)
            } else {
                Painting::draw_out(shape, &config.out_paint, rng)
            }
        });
        let local_shuffle = rng.uniform() < config.local_rate;
        Self {
            flip,
            painting,
            local_shuffle,
        }
    }

    /// A rough relative cost of the pair, for scheduling only: local shuffling costs
    /// about five times the rest of a pair, and under out-painting only the blocks
    /// near the kept boxes are written.
    fn cost(&self, shape: [usize; 3]) -> u32 {
        const REST: u32 = 200;
        const SHUFFLE: u32 = 1000;
        if !self.local_shuffle {
            return REST;
        }
        let Some(boxes) = self.painting.as_ref().and_then(Painting::kept) else {
            return REST + SHUFFLE;
        };
        let volume: usize = shape.iter().product();
        let kept: usize = boxes.iter().map(|b| b.size.iter().product::<usize>()).sum();
        REST + (SHUFFLE as usize * kept.min(volume) / volume.max(1)) as u32
    }
}

/// The pair pipeline on validated buffers, after `plan` was drawn from `rng`.
// Buffers, shape and config as in `generate_pair`, plus the plan and the stream it
// was drawn from.
#[allow(clippy::too_many_arguments)]
fn pair_into_slices(
    cube: ArrayView3<'_, f32>,
    input: &mut [f32],
    target: &mut [f32],
    shape: [usize; 3],
    config: &TransformConfig,
    plan: PairPlan,
    rng: &mut CubeRng,
    scratch: &mut PairScratch,
) -> PairTrace {
    // The painting is drawn before the other kernels (its draws do not depend on
    // theirs), so that out-painting's kept boxes are known: every other voxel of the
    // input becomes noise, so the shuffle and the non-linear map are computed only
    // where those boxes need them. The result has the distribution of the original's
    // order (shuffle, map, then painting over everything).
    let PairPlan {
        flip,
        painting,
        local_shuffle,
    } = plan;
    let mut trace = PairTrace {
        flip,
        ..Default::default()
    };
    // target = flip(cube) in one pass; input = target.
    let flipped = flipped_view(cube, trace.flip.flipped);
    let unflipped = trace.flip.flipped == [false; 3];
    if let (Some(values), true) = (flipped.as_slice(), unflipped) {
        target.copy_from_slice(values);
    } else if let Some(values) = cube.as_slice() {
        flipped_copy(values, target, shape, trace.flip.flipped);
    } else {
        let mut dst = ArrayViewMut3::from_shape(flipped.dim(), &mut *target)
            .unwrap_or_else(|_| unreachable!("target length was checked against the shape"));
        dst.assign(&flipped);
    }
    let kept = painting.as_ref().and_then(Painting::kept);
    // input = target, made by the first kernel that writes it (a copy only when the
    // non-linear map, which can read target directly, does not come first). Under
    // out-painting only the rows that hold kept voxels are made.
    let copy_input = |input: &mut [f32], target: &[f32]| match kept {
        Some(boxes) => for_each_row_run_in(shape, boxes, |run| {
            input[run.clone()].copy_from_slice(&target[run]);
        }),
        None => input.copy_from_slice(target),
    };
    let mut input_ready = false;
    if local_shuffle {
        copy_input(input, target);
        input_ready = true;
        // The un-shuffled input is exactly the target, so no copy is needed.
        shuffle_blocks(
            target,
            input,
            shape,
            &config.local_shuffle,
            rng,
            &mut scratch.shuffle,
            kept,
        );
        trace.local_shuffle = true;
    }

    if rng.uniform() < config.nonlinear_rate {
        // The config was validated, so drawing a map cannot fail.
        if scratch.bezier.redraw(&config.nonlinear, rng).is_ok() {
            let map = &scratch.bezier;
            match (kept, input_ready) {
                (Some(boxes), true) => {
                    for_each_row_run_in(shape, boxes, |run| map.apply_slice(&mut input[run]));
                }
                (Some(boxes), false) => for_each_row_run_in(shape, boxes, |run| {
                    map.apply_from(&target[run.clone()], &mut input[run]);
                }),
                (None, true) => map.apply_slice(input),
                (None, false) => map.apply_from(target, input),
            }
            input_ready = true;
            let [_, p1, p2, _] = map.control_points();
            trace.nonlinear = Some((p1, p2, map.is_inverting()));
        }
    }
    if !input_ready {
        copy_input(input, target);
    }

    if let Some(painting) = painting {
        let inside = painting.inside;
        let boxes = painting.apply(input, shape);
        trace.paint = if inside {
            PaintTrace::In { boxes }
        } else {
            PaintTrace::Out { boxes }
        };
    }
    trace
}

/// `dst` = `src` (C order, `shape`) with the axes in `flipped` reversed, row by row
/// (ndarray's element-wise copy through a reversed view is about twice as slow).
fn flipped_copy(src: &[f32], dst: &mut [f32], shape: [usize; 3], flipped: [bool; 3]) {
    let [rows, cols, deps] = shape;
    debug_assert_eq!(src.len(), rows * cols * deps);
    debug_assert_eq!(dst.len(), src.len());
    for (x, dst_plane) in dst.chunks_exact_mut(cols * deps).enumerate() {
        let sx = if flipped[0] { rows - 1 - x } else { x };
        if !flipped[1] && !flipped[2] {
            dst_plane.copy_from_slice(&src[sx * cols * deps..(sx + 1) * cols * deps]);
            continue;
        }
        for (y, dst_row) in dst_plane.chunks_exact_mut(deps).enumerate() {
            let sy = if flipped[1] { cols - 1 - y } else { y };
            let start = (sx * cols + sy) * deps;
            let src_row = &src[start..start + deps];
            if flipped[2] {
                for (d, &v) in dst_row.iter_mut().zip(src_row.iter().rev()) {
                    *d = v;
                }
            } else {
                copy_row(dst_row, src_row);
            }
        }
    }
}

/// `dst = src` for one row, sixteen values at a time: `copy_from_slice` would call
/// `memmove` for each of a cube's thousands of rows.
#[inline(always)]
fn copy_row(dst: &mut [f32], src: &[f32]) {
    debug_assert_eq!(dst.len(), src.len());
    let mut dst_chunks = dst.chunks_exact_mut(16);
    let mut src_chunks = src.chunks_exact(16);
    for (d, s) in (&mut dst_chunks).zip(&mut src_chunks) {
        let s: &[f32; 16] = s
            .try_into()
            .unwrap_or_else(|_| unreachable!("chunks of 16"));
        let d: &mut [f32; 16] = d
            .try_into()
            .unwrap_or_else(|_| unreachable!("chunks of 16"));
        *d = *s;
    }
    for (d, s) in dst_chunks
        .into_remainder()
        .iter_mut()
        .zip(src_chunks.remainder())
    {
        *d = *s;
    }
}

thread_local! {
    /// The [`PairScratch`] that [`generate_pairs`] keeps on each thread between calls.
    static THREAD_SCRATCH: RefCell<Option<PairScratch>> = const { RefCell::new(None) };
}

/// A rayon work item's [`PairScratch`]: taken from the thread's cache (or made), and put
/// back when the work item ends. Making one means about 0.6 MB of fresh buffers (page
/// faults, zeroing) and a table build, and rayon starts at least two work items per
/// call: at the trainer's batches of six cubes that was about 4% of the time (see
/// docs/benchmarks.md).
struct ThreadScratch {
    shape: [usize; 3],
    scratch: Option<PairScratch>,
}

impl ThreadScratch {
    fn take(shape: [usize; 3]) -> Self {
        // A work item that rayon runs while another waits on the same thread finds the
        // cache empty and makes its own.
        let cached = THREAD_SCRATCH
            .try_with(|slot| slot.try_borrow_mut().ok()?.take())
            .ok()
            .flatten();
        Self {
            shape,
            scratch: cached,
        }
    }

    fn get(&mut self) -> &mut PairScratch {
        let shape = self.shape;
        self.scratch.get_or_insert_with(|| PairScratch::new(shape))
    }
}

impl Drop for ThreadScratch {
    fn drop(&mut self) {
        let Some(scratch) = self.scratch.take() else {
            return;
        };
        // The thread may be exiting (`try_with` fails); the scratch is then dropped.
        let _ = THREAD_SCRATCH.try_with(|slot| {
            if let Ok(mut slot) = slot.try_borrow_mut()
                && slot.is_none()
            {
                *slot = Some(scratch);
            }
        });
    }
}

/// Generates pairs for a whole batch in parallel (rayon over cubes).
///
/// `cubes`, `inputs` and `targets` are contiguous C-order buffers of `n` cubes of
/// `shape` (rows, cols, deps) each. Cube `i` uses
/// `cube_rng(seed, epoch, first_cube_index + i)`, so the result is bit-identical for any
/// thread count and any split of a dataset into batches.
///
/// Pairs are handed to the pool's threads dearest first (a pair with local shuffling
/// costs up to about six times one without), which evens out the threads' loads in small
/// batches. No heap allocation per cube: each thread keeps one [`PairScratch`] (about
/// 0.6 MB for the paper's cubes) from call to call, and each call makes only its work
/// list (about 1 KB per cube: each pair's first draws and its buffers).
// The argument list is the API other crates code against: buffers, shape, config and
// the (seed, epoch, first index) triple that makes every cube's stream.
#[allow(clippy::too_many_arguments)]
pub fn generate_pairs(
    cubes: &[f32],
    shape: [usize; 3],
    inputs: &mut [f32],
    targets: &mut [f32],
    config: &TransformConfig,
    seed: u64,
    epoch: u64,
    first_cube_index: u64,
) -> Result<()> {
    let cube_len: usize = shape.iter().product();
    if cube_len == 0 {
        return Err(Error::ShapeTooSmall {
            kernel: "pair generation",
            shape,
            reason: "every axis must be at least 1".into(),
        });
    }
    if !cubes.len().is_multiple_of(cube_len) {
        return Err(Error::BufferLength {
            what: "cubes (not a whole number of cubes)",
            expected: cubes.len() / cube_len * cube_len,
            found: cubes.len(),
        });
    }
    for (what, found) in [("inputs", inputs.len()), ("targets", targets.len())] {
        if found != cubes.len() {
            return Err(Error::BufferLength {
                what,
                expected: cubes.len(),
                found,
            });
        }
    }
    config.validate(shape)?;
    let [rows, cols, deps] = shape;
    // Pairs differ up to about six-fold in cost (local shuffling or not), so they are
    // handed out dearest first, each to the next free thread: with few cubes per
    // thread, a dear pair started last would leave the other threads idle. A pair's
    // cost comes from its first draws (its plan), which the worker then continues
    // from; the order does not change any output.
    let mut work: Vec<_> = cubes
        .chunks_exact(cube_len)
        .zip(inputs.chunks_exact_mut(cube_len))
        .zip(targets.chunks_exact_mut(cube_len))
        .enumerate()
        .map(|(i, ((cube, input), target))| {
            let index = first_cube_index + i as u64;
            let mut rng = cube_rng(seed, epoch, index);
            let plan = PairPlan::draw(shape, config, &mut rng);
            (plan.cost(shape), index, plan, rng, cube, input, target)
        })
        .collect();
    work.sort_by_key(|&(cost, index, ..)| (std::cmp::Reverse(cost), index));
    let queue = Mutex::new(work.into_iter());
    let next = || queue.lock().unwrap_or_else(PoisonError::into_inner).next();
    let worker = || {
        let mut scratch = ThreadScratch::take(shape);
        while let Some((_, _index, plan, mut rng, cube, input, target)) = next() {
            #[cfg(test)]
            tests::DISPATCHED.with(|order| order.borrow_mut().push(_index));
            let cube = ArrayView3::from_shape((rows, cols, deps), cube)
                .unwrap_or_else(|_| unreachable!("chunk length equals the cube length"));
            let scratch = scratch.get();
            pair_into_slices(cube, input, target, shape, config, plan, &mut rng, scratch);
        }
    };
    // One worker per thread of the current pool; a worker that starts after the
    // queue has run dry returns at once.
    rayon::scope(|scope| {
        for _ in 1..rayon::current_num_threads() {
            scope.spawn(|_| worker());
        }
        worker();
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    thread_local! {
        /// [`PairScratch::new`] calls on this thread.
        pub(super) static SCRATCHES_MADE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
        /// The cube indices [`generate_pairs`] started on this thread, in order.
        pub(super) static DISPATCHED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
    }

    /// A rayon pool of one thread, so that calls run in order on one thread.
    fn one_thread_pool() -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("a one-thread pool")
    }

    /// Each cube's [`PairPlan`] cost, replayed from its stream.
    fn plan_cost(config: &TransformConfig, shape: [usize; 3], epoch: u64, index: u64) -> u32 {
        PairPlan::draw(shape, config, &mut cube_rng(7, epoch, index)).cost(shape)
    }

    #[test]
    fn generate_pairs_starts_the_dearest_pairs_first() {
        let shape = [16, 16, 16];
        let len: usize = shape.iter().product();
        let n = 40;
        let cubes: Vec<f32> = (0..n * len).map(|i| (i % 89) as f32 / 89.0).collect();
        let (mut inputs, mut targets) = (vec![0f32; cubes.len()], vec![0f32; cubes.len()]);
        let config = TransformConfig::paper();
        let pool = one_thread_pool();
        let order = pool.install(|| {
            DISPATCHED.with(|order| order.borrow_mut().clear());
            generate_pairs(&cubes, shape, &mut inputs, &mut targets, &config, 7, 2, 50)
                .expect("valid buffers");
            DISPATCHED.with(|order| order.take())
        });
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (50..50 + n as u64).collect::<Vec<_>>(),
            "each cube once"
        );
        let costs: Vec<u32> = order
            .iter()
            .map(|&index| plan_cost(&config, shape, 2, index))
            .collect();
        assert!(costs.windows(2).all(|pair| pair[0] >= pair[1]), "{costs:?}");
        assert!(
            costs[0] > costs[n - 1],
            "the batch mixes dear and cheap pairs"
        );
    }

    #[test]
    fn plan_costs_rank_full_shuffles_over_out_painted_ones_over_none() {
        let shape = [64, 64, 32];
        let config = TransformConfig::paper();
        let (mut full, mut partial, mut cheap) = (Vec::new(), Vec::new(), Vec::new());
        for index in 0..400 {
            let mut rng = cube_rng(7, 0, index);
            let plan = PairPlan::draw(shape, &config, &mut rng);
            let cost = plan.cost(shape);
            let out_painted = plan.painting.as_ref().is_some_and(|p| !p.inside);
            match (plan.local_shuffle, out_painted) {
                (false, _) => cheap.push(cost),
                (true, false) => full.push(cost),
                (true, true) => partial.push(cost),
            }
        }
        assert!(
            [&full, &partial, &cheap]
                .iter()
                .all(|costs| costs.len() > 20)
        );
        let (max, min) = (
            |c: &[u32]| *c.iter().max().unwrap(),
            |c: &[u32]| *c.iter().min().unwrap(),
        );
        assert_eq!(min(&cheap), max(&cheap), "unshuffled pairs cost the same");
        assert_eq!(min(&full), max(&full), "fully shuffled pairs cost the same");
        assert!(min(&partial) > max(&cheap));
        assert!(max(&partial) < min(&full));
    }

    #[test]
    fn generate_pairs_reuses_each_threads_scratch_from_call_to_call() {
        let shape = [16, 16, 16];
        let len: usize = shape.iter().product();
        let cubes: Vec<f32> = (0..6 * len).map(|i| (i % 97) as f32 / 97.0).collect();
        let (mut inputs, mut targets) = (vec![0f32; cubes.len()], vec![0f32; cubes.len()]);
        let config = TransformConfig::paper();
        let pool = one_thread_pool();
        let made = pool.install(|| {
            let mut made = Vec::new();
            for epoch in 0..3 {
                generate_pairs(
                    &cubes,
                    shape,
                    &mut inputs,
                    &mut targets,
                    &config,
                    5,
                    epoch,
                    0,
                )
                .expect("valid pairs");
                made.push(SCRATCHES_MADE.with(std::cell::Cell::get));
            }
            made
        });
        assert!(made[0] >= 1, "the first call makes a scratch: {made:?}");
        assert_eq!(made[1], made[0], "the second call makes none: {made:?}");
        assert_eq!(made[2], made[0], "the third call makes none: {made:?}");
    }

    /// Each cube's pair from [`generate_pair`] with a scratch of its own.
    fn pairs_with_fresh_scratch(
        cubes: &[f32],
        shape: [usize; 3],
        config: &TransformConfig,
        seed: u64,
        epoch: u64,
    ) -> (Vec<f32>, Vec<f32>) {
        let len: usize = shape.iter().product();
        let (mut inputs, mut targets) = (vec![0f32; cubes.len()], vec![0f32; cubes.len()]);
        let chunks = cubes.chunks_exact(len).zip(
            inputs
                .chunks_exact_mut(len)
                .zip(targets.chunks_exact_mut(len)),
        );
        for (i, (cube, (input, target))) in chunks.enumerate() {
            let cube = ArrayView3::from_shape(shape, cube).expect("cube shape");
            let input = ArrayViewMut3::from_shape(shape, input).expect("input shape");
            let target = ArrayViewMut3::from_shape(shape, target).expect("target shape");
            let mut rng = cube_rng(seed, epoch, i as u64);
            let mut scratch = PairScratch::new(shape);
            generate_pair(cube, input, target, config, &mut rng, &mut scratch).expect("pair");
        }
        (inputs, targets)
    }

    #[test]
    fn a_reused_scratch_gives_the_pairs_of_a_fresh_one_across_shapes() {
        let config = TransformConfig::paper();
        let pool = one_thread_pool();
        // Shapes in turn on one thread, so each call inherits the previous call's scratch.
        for (round, shape) in [[16, 16, 16], [24, 20, 14], [16, 16, 16], [48, 40, 32]]
            .into_iter()
            .enumerate()
        {
            let len: usize = shape.iter().product();
            let cubes: Vec<f32> = (0..4 * len)
                .map(|i| ((i * 7 + round) % 101) as f32 / 101.0)
                .collect();
            let (mut inputs, mut targets) = (vec![0f32; cubes.len()], vec![0f32; cubes.len()]);
            pool.install(|| {
                generate_pairs(&cubes, shape, &mut inputs, &mut targets, &config, 9, 1, 0)
            })
            .expect("valid pairs");
            let (want_inputs, want_targets) =
                pairs_with_fresh_scratch(&cubes, shape, &config, 9, 1);
            assert_eq!(inputs, want_inputs, "inputs, shape {shape:?}");
            assert_eq!(targets, want_targets, "targets, shape {shape:?}");
        }
    }

    /// [`generate_pair_traced`] of `cube` into `input` and `target`, drawing from
    /// `cube_rng(seed, 0, 0)`.
    fn traced_pair(
        cube: &Array3<f32>,
        input: &mut Array3<f32>,
        target: &mut Array3<f32>,
        config: &TransformConfig,
        seed: u64,
        scratch: &mut PairScratch,
    ) -> Result<PairTrace> {
        let mut rng = cube_rng(seed, 0, 0);
        generate_pair_traced(
            cube.view(),
            input.view_mut(),
            target.view_mut(),
            config,
            &mut rng,
            scratch,
        )
    }

    #[test]
    fn flipped_copy_matches_the_flipped_view_for_every_axis_set() {
        // 19 deep: one chunk of sixteen and a remainder in every row copy.
        let shape = [5, 6, 19];
        let cube = Array3::from_shape_fn(shape, |(x, y, z)| (x * 1000 + y * 100 + z) as f32);
        let values = cube.as_slice().expect("standard layout");
        for bits in 0..8u8 {
            let flipped = [bits & 1 != 0, bits & 2 != 0, bits & 4 != 0];
            let mut out = vec![f32::NAN; values.len()];
            flipped_copy(values, &mut out, shape, flipped);
            let expected: Vec<f32> = flipped_view(cube.view(), flipped).iter().copied().collect();
            assert_eq!(out, expected, "flips {flipped:?}");
        }
    }

    #[test]
    fn none_gives_input_equal_target_equal_cube() {
        let cube = Array3::from_shape_fn((16, 16, 16), |(i, j, k)| (i + j + k) as f32 / 48.0);
        let mut input = Array3::zeros((16, 16, 16));
        let mut target = Array3::zeros((16, 16, 16));
        let mut scratch = PairScratch::new([16, 16, 16]);
        let config = TransformConfig::only(crate::Kernel::None);
        traced_pair(&cube, &mut input, &mut target, &config, 0, &mut scratch).unwrap();
        assert_eq!(input, cube);
        assert_eq!(target, cube);
    }

    /// The paper's config without flips, always out-painted, with these two rates.
    fn always_out_painted(local_rate: f64, nonlinear_rate: f64) -> TransformConfig {
        TransformConfig {
            flip_rate: 0.0,
            local_rate,
            nonlinear_rate,
            paint_rate: 1.0,
            inpaint_rate: 0.0,
            ..TransformConfig::paper()
        }
    }

    #[test]
    fn out_painted_pairs_shuffle_kept_voxels_as_a_full_shuffle_would() {
        // Under out-painting the pipeline shuffles only blocks that touch a kept box.
        // Kept voxels (the cube's values are >= 2, noise is < 1) must look exactly
        // like those of a full shuffle: values from within a block's reach, and the
        // same fraction changed on average as a full shuffle gives inside boxes drawn
        // the same way.
        let shape = [64, 64, 32];
        let cube =
            Array3::from_shape_fn((64, 64, 32), |(i, j, k)| (2 + i * 2048 + j * 32 + k) as f32);
        let values = cube.as_slice().unwrap();
        let config = always_out_painted(1.0, 0.0);
        let mut scratch = PairScratch::new(shape);
        let mut input = Array3::zeros((64, 64, 32));
        let mut target = Array3::zeros((64, 64, 32));
        let (mut restricted, mut full) = ((0usize, 0usize), (0usize, 0usize));
        for seed in 0..120 {
            traced_pair(&cube, &mut input, &mut target, &config, seed, &mut scratch).unwrap();
            for (i, (&v, &t)) in input.iter().zip(values).enumerate() {
                if v < 1.0 {
                    continue; // noise
                }
                let s = (v - 2.0) as usize;
                let (p, q) = (
                    [i / 2048, (i / 32) % 64, i % 32],
                    [s / 2048, (s / 32) % 64, s % 32],
                );
                assert!(
                    p[0].abs_diff(q[0]) <= 5
                        && p[1].abs_diff(q[1]) <= 5
                        && p[2].abs_diff(q[2]) <= 2
                );
                restricted.0 += usize::from(v != t);
                restricted.1 += 1;
            }
            // Reference: boxes drawn the same way, every block shuffled.
            let mut rng = cube_rng(seed, 1, 0);
            let painting = Painting::draw_out(shape, &config.out_paint, &mut rng);
            let mut out = values.to_vec();
            shuffle_blocks(
                values,
                &mut out,
                shape,
                &config.local_shuffle,
                &mut rng,
                &mut scratch.shuffle,
                None,
            );
            for_each_row_run_in(shape, painting.boxes.as_slice(), |run| {
                for i in run {
                    let p = [i / 2048, (i / 32) % 64, i % 32];
                    let kept = painting.boxes.as_slice().iter().any(|b| b.contains(p));
                    if kept {
                        full.0 += usize::from(out[i] != values[i]);
                        full.1 += 1;
                    }
                }
            });
        }
        let (a, b) = (
            restricted.0 as f64 / restricted.1 as f64,
            full.0 as f64 / full.1 as f64,
        );
        // About 78% of kept voxels change; 120 cubes of ~50,000 kept voxels each make
        // differences of a percent meaningful, since whole cubes vary together.
        assert!((a - b).abs() < 0.01, "restricted {a:.4} vs full {b:.4}");
    }

    #[test]
    fn out_painted_pairs_map_every_kept_voxel() {
        // The non-linear map runs only on rows with kept voxels; every kept voxel must
        // still be mapped (replaying the draws gives the kept boxes).
        let shape = [64, 64, 32];
        let cube = Array3::from_shape_fn((64, 64, 32), |(i, j, k)| {
            ((i * 7 + j * 3 + k) % 89) as f32 / 89.0
        });
        let config = always_out_painted(0.0, 1.0);
        let mut scratch = PairScratch::new(shape);
        let mut input = Array3::zeros((64, 64, 32));
        let mut target = Array3::zeros((64, 64, 32));
        for seed in 0..20 {
            let trace =
                traced_pair(&cube, &mut input, &mut target, &config, seed, &mut scratch).unwrap();
            let (p1, p2, inverting) = trace.nonlinear.unwrap();
            let map = BezierMap::new(p1, p2, inverting, config.nonlinear.n_samples).unwrap();
            let mut replay = cube_rng(seed, 0, 0);
            draw_flips(&mut replay, config.flip_rate, config.max_flips);
            replay.uniform(); // paint_rate
            replay.uniform(); // inpaint_rate
            let painting = Painting::draw_out(shape, &config.out_paint, &mut replay);
            let mut kept = 0;
            for ((i, j, k), &v) in input.indexed_iter() {
                let inside = painting
                    .boxes
                    .as_slice()
                    .iter()
                    .any(|b| b.contains([i, j, k]));
                if inside {
                    assert_eq!(
                        v.to_bits(),
                        map.apply(cube[(i, j, k)]).to_bits(),
                        "seed {seed}"
                    );
                    kept += 1;
                } else {
                    assert!((0.0..1.0).contains(&v));
                }
            }
            assert!(kept > 0);
        }
    }

    #[test]
    fn checks_shapes_and_lengths() {
        let cube = Array3::<f32>::zeros((64, 64, 32));
        let mut input = Array3::zeros((64, 64, 31));
        let mut target = Array3::zeros((64, 64, 32));
        let mut scratch = PairScratch::new([64, 64, 32]);
        let config = TransformConfig::paper();
        let err =
            traced_pair(&cube, &mut input, &mut target, &config, 0, &mut scratch).unwrap_err();
        assert!(
            matches!(err, Error::ShapeMismatch { what: "input", .. }),
            "{err}"
        );
        let cubes = vec![0f32; 64 * 64 * 32 * 2];
        let mut inputs = vec![0f32; cubes.len()];
        let mut targets = vec![0f32; cubes.len() - 1];
        let err = generate_pairs(
            &cubes,
            [64, 64, 32],
            &mut inputs,
            &mut targets,
            &config,
            0,
            0,
            0,
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                Error::BufferLength {
                    what: "targets",
                    ..
                }
            ),
            "{err}"
        );
        let err = generate_pairs(
            &cubes[1..],
            [64, 64, 32],
            &mut inputs[1..],
            &mut targets,
            &config,
            0,
            0,
            0,
        )
        .unwrap_err();
        assert!(matches!(err, Error::BufferLength { .. }), "{err}");
    }
}
