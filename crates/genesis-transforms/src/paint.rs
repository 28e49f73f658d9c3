//! Transforms 4 and 5: in-painting and out-painting (the original's `image_in_painting`
//! and `image_out_painting`).

use ndarray::ArrayViewMut3;

use crate::config::{InPaintConfig, OutPaintConfig};
use crate::flip::dim3;
use crate::rng::{CubeRng, NoiseFill, NoiseRng};
use crate::{Error, Result};

/// Most boxes any painting can draw without allocating: out-painting's first box plus
/// up to this many minus one extra (the paper uses 1 + 4, in-painting 5).
const MAX_STACK_BOXES: usize = 16;

/// Rows per plane (cube columns) up to which out-painting makes a plane's keep masks
/// on the stack.
const MAX_MASKED_ROWS: usize = 256;

/// An axis-aligned box: origin and size per axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Box3 {
    pub(crate) origin: [usize; 3],
    pub(crate) size: [usize; 3],
}

impl Box3 {
    /// Draws sizes (rows, cols, deps) in `sizes(dim)` then origins in
    /// `margin..=dim - size - margin`, in the original's order.
    fn draw(
        rng: &mut CubeRng,
        shape: [usize; 3],
        margin: usize,
        sizes: impl Fn(usize) -> (usize, usize),
    ) -> Self {
        let size = shape.map(|dim| {
            let (lo, hi) = sizes(dim);
            rng.randint(lo, hi)
        });
        let mut origin = [0; 3];
        for axis in 0..3 {
            origin[axis] = rng.randint(margin, shape[axis] - size[axis] - margin);
        }
        Self { origin, size }
    }

    /// The box's extent along `axis`.
    pub(crate) fn range(&self, axis: usize) -> std::ops::Range<usize> {
        self.origin[axis]..self.origin[axis] + self.size[axis]
    }

    pub(crate) fn contains_row(&self, x: usize, y: usize) -> bool {
        self.range(0).contains(&x) && self.range(1).contains(&y)
    }

    #[cfg(test)]
    pub(crate) fn contains(&self, [x, y, z]: [usize; 3]) -> bool {
        self.contains_row(x, y) && self.range(2).contains(&z)
    }
}

/// Boxes of one painting: on the stack up to [`MAX_STACK_BOXES`], all on the heap past
/// that (configs with many boxes only), so that painting does not allocate per cube.
#[derive(Debug, Clone)]
pub(crate) struct BoxList {
    stack: [Box3; MAX_STACK_BOXES],
    len: usize,
    heap: Vec<Box3>,
}

impl BoxList {
    fn new() -> Self {
        Self {
            stack: [Box3::default(); MAX_STACK_BOXES],
            len: 0,
            heap: Vec::new(),
        }
    }

    fn push(&mut self, b: Box3) {
        if self.len < MAX_STACK_BOXES {
            self.stack[self.len] = b;
        } else {
            if self.heap.is_empty() {
                self.heap.extend_from_slice(&self.stack);
            }
            self.heap.push(b);
        }
        self.len += 1;
    }

    pub(crate) fn as_slice(&self) -> &[Box3] {
        if self.len <= MAX_STACK_BOXES {
            &self.stack[..self.len]
        } else {
            &self.heap
        }
    }
}

/// A painting whose random draws are made and whose voxels are not yet written: the
/// boxes and the noise stream. Drawing first lets the pair pipeline know, before the
/// other kernels run, which voxels out-painting will keep.
#[derive(Debug, Clone)]
pub(crate) struct Painting {
    /// In-painting (noise in the boxes) or out-painting (noise outside them).
    pub(crate) inside: bool,
    pub(crate) boxes: BoxList,
    noise: NoiseRng,
}

impl Painting {
    /// In-painting's draws, in the original's order: up to `max_boxes` times, while a
    /// uniform draw is below `box_rate`, a box.
    pub(crate) fn draw_in(shape: [usize; 3], config: &InPaintConfig, rng: &mut CubeRng) -> Self {
        let noise = NoiseRng::new(rng);
        let mut boxes = BoxList::new();
        while (boxes.len as u32) < config.max_boxes && rng.uniform() < config.box_rate {
            boxes.push(Box3::draw(rng, shape, config.margin as usize, |dim| {
                config.size_range(dim)
            }));
        }
        Self {
            inside: true,
            boxes,
            noise,
        }
    }

    /// Out-painting's draws: one box plus up to `max_extra_boxes` more, each while a
    /// uniform draw is below `box_rate`.
    pub(crate) fn draw_out(shape: [usize; 3], config: &OutPaintConfig, rng: &mut CubeRng) -> Self {
        let margin = config.margin as usize;
        let mut boxes = BoxList::new();
        boxes.push(Box3::draw(rng, shape, margin, |dim| config.size_range(dim)));
        let mut n_extra = 0;
        while n_extra < config.max_extra_boxes && rng.uniform() < config.box_rate {
            boxes.push(Box3::draw(rng, shape, margin, |dim| config.size_range(dim)));
            n_extra += 1;
        }
        let noise = NoiseRng::new(rng);
        Self {
            inside: false,
            boxes,
            noise,
        }
    }

    /// The boxes whose voxels keep their values, when this is out-painting.
    pub(crate) fn kept(&self) -> Option<&[Box3]> {
        (!self.inside).then(|| self.boxes.as_slice())
    }

    /// Writes the noise into a C-order buffer of `shape`; returns the number of boxes.
    pub(crate) fn apply(mut self, data: &mut [f32], shape: [usize; 3]) -> u32 {
        paint(
            data,
            shape,
            self.boxes.as_slice(),
            self.inside,
            &mut self.noise,
        );
        self.boxes.len as u32
    }
}

/// Calls `f` with each run of whole rows (a range of the C-order buffer of `shape`)
/// that holds a voxel of `boxes`: per plane x, the maximal runs of rows y that some box
/// covers, found by merging the y ranges of the boxes that cross the plane.
pub(crate) fn for_each_row_run_in(
    shape: [usize; 3],
    boxes: &[Box3],
    mut f: impl FnMut(std::ops::Range<usize>),
) {
    let [rows, cols, deps] = shape;
    // Each box as (y start, y end clipped to the cube, x start, x end), sorted once by
    // the start of the y range, so that the spans of every plane come in order.
    let mut stack = [(0, 0, 0, 0); MAX_STACK_BOXES];
    let mut heap = Vec::new();
    let spans: &mut [(usize, usize, usize, usize)] = if boxes.len() <= MAX_STACK_BOXES {
        &mut stack[..]
    } else {
        heap.resize(boxes.len(), (0, 0, 0, 0));
        &mut heap
    };
    let mut n = 0;
    for b in boxes {
        let (xs, ys) = (b.range(0), b.range(1));
        if ys.start < ys.end.min(cols) {
            spans[n] = (ys.start, ys.end.min(cols), xs.start, xs.end);
            n += 1;
        }
    }
    let spans = &mut spans[..n];
    spans.sort_unstable_by_key(|&(y_start, ..)| y_start);
    for x in 0..rows {
        let run = |(start, end): (usize, usize)| (x * cols + start) * deps..(x * cols + end) * deps;
        let mut current: Option<(usize, usize)> = None;
        for &(start, end, ..) in spans.iter().filter(|&&(.., x0, x1)| (x0..x1).contains(&x)) {
            current = match current {
                Some((open, close)) if start <= close => Some((open, close.max(end))),
                Some(done) => {
                    f(run(done));
                    Some((start, end))
                }
                None => Some((start, end)),
            };
        }
        if let Some(done) = current {
            f(run(done));
        }
    }
}

/// The boxes that cross plane x, copied into `buf` (all of `boxes` when there are more
/// than it holds; callers test rows against them anyway).
fn boxes_in_plane<'a>(
    boxes: &'a [Box3],
    x: usize,
    buf: &'a mut [Box3; MAX_STACK_BOXES],
) -> &'a [Box3] {
    if boxes.len() > MAX_STACK_BOXES {
        return boxes;
    }
    let mut n = 0;
    for b in boxes.iter().filter(|b| b.range(0).contains(&x)) {
        buf[n] = *b;
        n += 1;
    }
    &buf[..n]
}

/// Whether block `[origin, origin + size)` shares a voxel with any of `boxes`.
#[inline]
pub(crate) fn overlaps_any(origin: [usize; 3], size: [usize; 3], boxes: &[Box3]) -> bool {
    boxes.iter().fold(false, |any, b| {
        let mut overlap = true;
        for axis in 0..3 {
            overlap &=
                origin[axis] < b.range(axis).end && b.origin[axis] < origin[axis] + size[axis];
        }
        any | overlap
    })
}

/// Writes a painting's noise into a C-order buffer of `shape`: inside `boxes`
/// (in-painting) or everywhere outside them (out-painting).
fn paint(data: &mut [f32], shape: [usize; 3], boxes: &[Box3], inside: bool, noise: &mut NoiseRng) {
    #[cfg(target_arch = "x86_64")]
    if let Some(mut lanes) = crate::rng::NoiseLanes::load(noise) {
        // SAFETY: `NoiseLanes::load` succeeds only on CPUs with AVX-512F.
        unsafe { paint_avx512(data, shape, boxes, inside, &mut lanes) };
        lanes.store(noise);
        return;
    }
    paint_with(data, shape, boxes, inside, noise);
}

/// [`paint_with`] compiled for AVX-512F, the noise lanes staying in registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn paint_avx512(
    data: &mut [f32],
    shape: [usize; 3],
    boxes: &[Box3],
    inside: bool,
    lanes: &mut crate::rng::NoiseLanes,
) {
    paint_with(data, shape, boxes, inside, lanes);
}

#[inline(always)]
fn paint_with(
    data: &mut [f32],
    shape: [usize; 3],
    boxes: &[Box3],
    inside: bool,
    noise: &mut impl NoiseFill,
) {
    if inside {
        for b in boxes {
            fill_box(data, shape, b, noise);
        }
    } else {
        out_paint_rows(data, shape, boxes, noise);
    }
}

/// Fills box `b` of a C-order buffer of `shape` with noise.
#[inline(always)]
fn fill_box(data: &mut [f32], shape: [usize; 3], b: &Box3, noise: &mut impl NoiseFill) {
    let [_, cols, deps] = shape;
    for x in b.range(0) {
        for y in b.range(1) {
            let start = (x * cols + y) * deps + b.origin[2];
            noise.fill(&mut data[start..start + b.size[2]]);
        }
    }
}

/// Fills every voxel of a C-order buffer of `shape` outside `boxes` with noise. Per
/// row (x, y) and run of up to 64 voxels along z, a bit mask marks the kept voxels;
/// every run that is not kept entirely takes the same number of noise values, so
/// the stream depends only on the boxes.
#[inline(always)]
fn out_paint_rows(data: &mut [f32], shape: [usize; 3], boxes: &[Box3], noise: &mut impl NoiseFill) {
    let [rows, cols, deps] = shape;
    if (1..=64).contains(&deps) && cols <= MAX_MASKED_ROWS {
        // One run per row: each plane's masks are made box by box first (a short loop
        // over each box's rows), so the row loop has no test per box.
        let mut masks = [0u64; MAX_MASKED_ROWS];
        let masks = &mut masks[..cols];
        let whole_row = low_bits(deps);
        for x in 0..rows {
            masks.fill(0);
            for b in boxes.iter().filter(|b| b.range(0).contains(&x)) {
                let (zs, ys) = (b.range(2), b.range(1));
                let (start, end) = (zs.start.min(deps), zs.end.min(deps));
                if start < end {
                    let kept = low_bits(end - start) << start;
                    for mask in &mut masks[ys.start.min(cols)..ys.end.min(cols)] {
                        *mask |= kept;
                    }
                }
            }
            let plane = &mut data[x * cols * deps..(x + 1) * cols * deps];
            for (row, &keep) in plane.chunks_exact_mut(deps).zip(masks.iter()) {
                if keep != whole_row {
                    noise.fill_except(row, keep);
                }
            }
        }
        return;
    }
    let mut in_plane = [Box3::default(); MAX_STACK_BOXES];
    for x in 0..rows {
        let plane_boxes = boxes_in_plane(boxes, x, &mut in_plane);
        for y in 0..cols {
            let row = &mut data[(x * cols + y) * deps..(x * cols + y + 1) * deps];
            for (run_index, run) in row.chunks_mut(64).enumerate() {
                let run_start = run_index * 64;
                let run_end = run_start + run.len();
                let mut keep = 0u64;
                for b in plane_boxes.iter().filter(|b| b.contains_row(x, y)) {
                    let start = b.origin[2].max(run_start);
                    let end = b.range(2).end.min(run_end);
                    if start < end {
                        keep |= low_bits(end - start) << (start - run_start);
                    }
                }
                if keep == low_bits(run.len()) {
                    continue;
                }
                noise.fill_except(run, keep);
            }
        }
    }
}

/// A mask of the lowest `n` bits, `n <= 64`.
fn low_bits(n: usize) -> u64 {
    if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }
}

/// In-painting of one cube in place: up to `max_boxes` times, while a uniform draw is
/// below `box_rate`, a box of size `dim/6 ..= dim/3` per axis starting at least `margin`
/// voxels inside is filled with uniform noise in `[0, 1)`. Always applies (the
/// probabilities belong to [`generate_pair`](crate::generate_pair)). `cube` must be in
/// standard (C) layout. Returns the number of boxes.
pub fn in_painting(
    mut cube: ArrayViewMut3<'_, f32>,
    config: &InPaintConfig,
    rng: &mut CubeRng,
) -> Result<u32> {
    let shape = dim3(cube.dim());
    config.validate(shape)?;
    let data = cube.as_slice_mut().ok_or(Error::NotContiguous {
        what: "in-painted cube",
    })?;
    Ok(Painting::draw_in(shape, config, rng).apply(data, shape))
}

/// Out-painting of one cube in place: every voxel becomes uniform noise in `[0, 1)`
/// except inside one box of size `dim - U[3 dim/7, 4 dim/7]` per axis and up to
/// `max_extra_boxes` more such boxes (each while a uniform draw is below `box_rate`),
/// which keep their values bit-exact. Always applies. `cube` must be in standard (C)
/// layout. Returns the number of boxes kept.
///
/// The original first fills the whole cube with noise and then restores the boxes from a
/// copy; drawing the boxes first and keeping their voxels while the rest is filled
/// gives the same distribution without the copy.
pub fn out_painting(
    mut cube: ArrayViewMut3<'_, f32>,
    config: &OutPaintConfig,
    rng: &mut CubeRng,
) -> Result<u32> {
    let shape = dim3(cube.dim());
    config.validate(shape)?;
    let data = cube.as_slice_mut().ok_or(Error::NotContiguous {
        what: "out-painted cube",
    })?;
    Ok(Painting::draw_out(shape, config, rng).apply(data, shape))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cube_rng;
    use ndarray::Array3;

    /// Replays the box draws of `out_paint_slice` to know which voxels must be kept.
    fn replay_out_boxes(seed: u64, shape: [usize; 3], config: &OutPaintConfig) -> Vec<Box3> {
        let mut rng = cube_rng(seed, 0, 0);
        let draw = |rng: &mut CubeRng| Box3::draw(rng, shape, 3, |d| config.size_range(d));
        let mut boxes = vec![draw(&mut rng)];
        while boxes.len() < 1 + config.max_extra_boxes as usize && rng.uniform() < config.box_rate {
            boxes.push(draw(&mut rng));
        }
        boxes
    }

    /// Records every `fill_except` call as (offset of the run in the buffer, length,
    /// keep mask), writing nothing.
    struct Recorder<'a> {
        base: *const f32,
        calls: &'a mut Vec<(usize, usize, u64)>,
    }

    impl NoiseFill for Recorder<'_> {
        fn fill_except(&mut self, out: &mut [f32], keep: u64) {
            // SAFETY: `out` is a part of the buffer `base` points to.
            let offset = unsafe { out.as_ptr().offset_from(self.base) } as usize;
            self.calls.push((offset, out.len(), keep));
        }
    }

    #[test]
    fn out_painting_fills_every_run_not_kept_whole_in_row_order() {
        // Against a voxel-by-voxel scan: one run per row up to 64 deep (the per-plane
        // masks), several runs per row past that; boxes overlap, touch the edges, and
        // outnumber the stack's slots in some rounds.
        let mut rng = cube_rng(11, 0, 0);
        for (round, shape) in [[6, 9, 32], [5, 7, 64], [4, 6, 150], [3, 300, 5]]
            .into_iter()
            .cycle()
            .take(80)
            .enumerate()
        {
            let count = 1 + rng.randint(0, if round % 9 == 0 { 20 } else { 4 });
            let boxes: Vec<Box3> = (0..count)
                .map(|_| {
                    let size = shape.map(|dim| rng.randint(1, dim));
                    let origin = [0, 1, 2].map(|axis| rng.randint(0, shape[axis] - size[axis]));
                    Box3 { origin, size }
                })
                .collect();
            let mut data = vec![0f32; shape.iter().product()];
            let mut calls = Vec::new();
            let mut recorder = Recorder {
                base: data.as_ptr(),
                calls: &mut calls,
            };
            out_paint_rows(&mut data, shape, &boxes, &mut recorder);
            let [rows, cols, deps] = shape;
            let mut expected = Vec::new();
            for x in 0..rows {
                for y in 0..cols {
                    for run_start in (0..deps).step_by(64) {
                        let len = (deps - run_start).min(64);
                        let mut keep = 0u64;
                        for z in 0..len {
                            let voxel = [x, y, run_start + z];
                            if boxes.iter().any(|b| b.contains(voxel)) {
                                keep |= 1 << z;
                            }
                        }
                        if keep != low_bits(len) {
                            expected.push(((x * cols + y) * deps + run_start, len, keep));
                        }
                    }
                }
            }
            assert_eq!(calls, expected, "round {round}, {shape:?}: {boxes:?}");
        }
    }

    #[test]
    fn row_runs_are_the_maximal_runs_of_covered_rows() {
        // Against a row-by-row scan, for boxes that overlap, touch end to start, nest
        // and reach the cube's edges; more boxes than fit on the stack too.
        let shape = [20, 24, 3];
        let mut rng = cube_rng(8, 0, 0);
        for round in 0..300 {
            let count = 1 + rng.randint(0, if round % 10 == 0 { 20 } else { 5 });
            let boxes: Vec<Box3> = (0..count)
                .map(|_| {
                    let size = [rng.randint(1, 8), rng.randint(1, 10), 1];
                    let origin = [
                        rng.randint(0, shape[0] - size[0]),
                        rng.randint(0, shape[1] - size[1]),
                        0,
                    ];
                    Box3 { origin, size }
                })
                .collect();
            let mut runs = Vec::new();
            for_each_row_run_in(shape, &boxes, |run| runs.push(run));
            let mut expected = Vec::new();
            for x in 0..shape[0] {
                let mut start = None;
                for y in 0..=shape[1] {
                    let covered = y < shape[1] && boxes.iter().any(|b| b.contains_row(x, y));
                    match (covered, start) {
                        (true, None) => start = Some(y),
                        (false, Some(first)) => {
                            expected.push((x * 24 + first) * 3..(x * 24 + y) * 3);
                            start = None;
                        }
                        _ => {}
                    }
                }
            }
            assert_eq!(runs, expected, "round {round}: {boxes:?}");
        }
    }

    #[test]
    fn out_painting_keeps_its_boxes_bit_exact_and_noises_the_rest() {
        let shape = [64, 64, 32];
        let config = OutPaintConfig::default();
        for seed in 0..30 {
            let original = Array3::from_shape_fn((64, 64, 32), |(i, j, k)| {
                2.0 + (i * 4096 + j * 64 + k) as f32
            });
            let mut cube = original.clone();
            let mut rng = cube_rng(seed, 0, 0);
            let n = out_painting(cube.view_mut(), &config, &mut rng).unwrap();
            let boxes = replay_out_boxes(seed, shape, &config);
            assert_eq!(n as usize, boxes.len());
            for ((i, j, k), &v) in cube.indexed_iter() {
                let kept = boxes.iter().any(|b| b.contains([i, j, k]));
                if kept {
                    assert_eq!(v.to_bits(), original[(i, j, k)].to_bits());
                } else {
                    assert!((0.0..1.0).contains(&v), "({i},{j},{k}) = {v}");
                }
            }
            for b in &boxes {
                for (axis, &dim) in shape.iter().enumerate() {
                    let (lo, hi) = config.size_range(dim);
                    assert!((lo..=hi).contains(&b.size[axis]));
                    assert!(
                        b.origin[axis] >= 3 && b.origin[axis] + b.size[axis] + 3 <= shape[axis]
                    );
                }
            }
        }
    }

    #[test]
    fn vector_and_portable_paintings_write_the_same_values() {
        use crate::rng::PortableNoise;
        let shape = [64, 64, 32];
        let config = OutPaintConfig::default();
        for seed in 0..10 {
            let boxes = replay_out_boxes(seed, shape, &config);
            let mut fast = vec![7.0f32; 64 * 64 * 32];
            let mut portable = fast.clone();
            let mut noise = NoiseRng::new(&mut cube_rng(seed, 1, 0));
            let mut twin = noise.clone();
            paint(&mut fast, shape, &boxes, false, &mut noise);
            paint_with(
                &mut portable,
                shape,
                &boxes,
                false,
                &mut PortableNoise(&mut twin),
            );
            assert!(fast == portable, "seed {seed}");
            paint(&mut fast, shape, &boxes[..1], true, &mut noise);
            paint_with(
                &mut portable,
                shape,
                &boxes[..1],
                true,
                &mut PortableNoise(&mut twin),
            );
            assert!(fast == portable, "seed {seed}");
        }
    }

    #[test]
    fn in_painting_only_touches_boxes_inside_the_margins() {
        let config = InPaintConfig::default();
        let mut total_boxes = 0;
        for seed in 0..50 {
            let mut cube = Array3::from_elem((64, 64, 32), 2.0f32);
            let mut rng = cube_rng(seed, 0, 0);
            total_boxes += in_painting(cube.view_mut(), &config, &mut rng).unwrap();
            for ((i, j, k), &v) in cube.indexed_iter() {
                if v != 2.0 {
                    assert!((0.0..1.0).contains(&v));
                    assert!((3..64 - 3).contains(&i) && (3..64 - 3).contains(&j));
                    assert!((3..32 - 3).contains(&k));
                }
            }
        }
        assert!(total_boxes > 150, "{total_boxes}");
    }

    #[test]
    fn painting_rejects_small_or_non_contiguous_cubes() {
        let mut rng = cube_rng(0, 0, 0);
        let mut small = Array3::<f32>::zeros((64, 64, 12));
        let err = out_painting(small.view_mut(), &OutPaintConfig::default(), &mut rng).unwrap_err();
        assert!(matches!(err, Error::ShapeTooSmall { .. }), "{err}");
        let mut small = Array3::<f32>::zeros((7, 64, 32));
        let err = in_painting(small.view_mut(), &InPaintConfig::default(), &mut rng).unwrap_err();
        assert!(err.to_string().contains("rows = 7"), "{err}");
        let mut cube = Array3::<f32>::zeros((32, 64, 64));
        let err = in_painting(
            cube.view_mut().reversed_axes(),
            &InPaintConfig::default(),
            &mut rng,
        )
        .unwrap_err();
        assert!(matches!(err, Error::NotContiguous { .. }), "{err}");
    }

    #[test]
    fn more_boxes_than_the_stack_holds_are_all_kept() {
        let config = OutPaintConfig {
            max_extra_boxes: 40,
            box_rate: 1.0,
            ..Default::default()
        };
        let mut cube = Array3::from_elem((64, 64, 32), 2.0f32);
        let mut rng = cube_rng(9, 0, 0);
        assert_eq!(
            out_painting(cube.view_mut(), &config, &mut rng).unwrap(),
            41
        );
        assert!(cube.iter().all(|&v| v == 2.0 || (0.0..1.0).contains(&v)));
    }
}
