//! Transform 3: the non-linear intensity transformation (the original's
//! `bernstein_poly`, `bezier_curve` and `nonlinear_transformation`).
//!
//! # How the exact map is computed without sorting 100,000 samples
//!
//! The original samples the cubic Bézier curve with control points P0 = (0, 0), P1, P2,
//! P3 = (1, 1) at 100,000 evenly spaced t (its Bernstein weights put t = 0 at P3), sorts
//! the x samples (and, half of the time, the y samples), and interpolates each voxel
//! through the result with `np.interp`. With `s = 1 - t` the curve is the textbook Bézier
//! `B(s)`, and for control points in `[0, 1]` both coordinates are non-decreasing in `s`
//! (the derivative's Bernstein coefficients `a, c - a, 1 - c` satisfy
//! `a (1 - c) >= (a - c)^2`). So sorting only re-orders the samples by `s`:
//!
//! * increasing map (both sorted): the points `(x(s_j), y(s_j))`;
//! * inverting map (only x sorted): the points `(x(s_j), y(1 - s_j))`;
//!
//! with `s_j = j / (n - 1)`. [`BezierMap::exact`] interpolates through exactly these
//! points with a binary search over `j`. The voxel path is a 4096-cell lookup table over
//! `[0, 1]` whose node values come from a fine march along the curve; cells where the map
//! bends too sharply for linear interpolation (second difference above 1e-4, which only
//! happens next to points where `x'(s)` nearly vanishes) are marked and fall back to
//! [`BezierMap::exact`]. Tests check the table against a literal port of the original
//! (sample, sort, interpolate) within 1e-4.

use ndarray::ArrayViewMut3;

use crate::config::NonLinearConfig;
use crate::rng::CubeRng;
use crate::{Error, Result};

/// Number of lookup-table cells over `[0, 1]`.
const LUT_CELLS: usize = 4096;
/// Steps of the march along the curve that fills the table nodes.
const FINE_STEPS: usize = 2048;
/// Cells whose node second difference exceeds this use the exact path (the chord error
/// of linear interpolation is about an eighth of it).
const BEND_LIMIT: f64 = 1e-4;

/// The non-linear intensity map of one Bézier curve, with its lookup table.
///
/// Build one with [`BezierMap::new`] or [`BezierMap::random`]; apply it with
/// [`BezierMap::apply`] or [`BezierMap::apply_slice`]. Values outside `[0, 1]` map to the
/// end values, as `np.interp` clamps.
#[derive(Clone)]
pub struct BezierMap {
    p1: [f64; 2],
    p2: [f64; 2],
    inverting: bool,
    n_samples: u32,
    /// x(s) = ((x_coef[2] s + x_coef[1]) s + x_coef[0]) s, likewise y.
    x_coef: [f64; 3],
    y_coef: [f64; 3],
    /// Per cell: (value at the left node, rise across the cell); NaN rise = exact path.
    lut: Box<[[f32; 2]; LUT_CELLS]>,
    /// Node values while building (kept to avoid reallocating).
    nodes: Vec<f64>,
    /// Second differences of the nodes while building (likewise).
    bends: Vec<f64>,
    /// Per cell on the exact path: sample indices `[lo, hi]` with x(lo) at or below the
    /// cell's left edge and x(hi) above its right edge, which narrow the exact search.
    brackets: Vec<[u32; 2]>,
}

impl std::fmt::Debug for BezierMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BezierMap")
            .field("p1", &self.p1)
            .field("p2", &self.p2)
            .field("inverting", &self.inverting)
            .field("n_samples", &self.n_samples)
            .field(
                "exact_cells",
                &self.lut.iter().filter(|c| c[1].is_nan()).count(),
            )
            .finish_non_exhaustive()
    }
}

/// The table cell of `value` and the fraction across it; NaN lands in cell 0 with a NaN
/// fraction. Equal to `((t as i32).clamp(0, LUT_CELLS - 1), t - cell)` with
/// `t = value.clamp(0, 1) * LUT_CELLS`, written so that the conversion vectorizes (a
/// saturating `as` cast makes the compiler check every lane one by one).
#[inline(always)]
fn lut_position(value: f32) -> (usize, f32) {
    let t = value.clamp(0.0, 1.0) * LUT_CELLS as f32;
    // NaN fails the comparison and becomes 0, so `bounded` is finite and in [0, 4095].
    let bounded = if t >= 0.0 { t } else { 0.0 }.min((LUT_CELLS - 1) as f32);
    // SAFETY: `bounded` is finite and within i32's range (see above).
    let cell = unsafe { bounded.to_int_unchecked::<i32>() } as usize & (LUT_CELLS - 1);
    (cell, t - cell as f32)
}

fn check_point(field: &'static str, p: [f64; 2]) -> Result<()> {
    if p.iter().all(|v| (0.0..=1.0).contains(v)) {
        Ok(())
    } else {
        Err(Error::InvalidConfig {
            field,
            reason: format!("control point {p:?} must lie in [0, 1] x [0, 1]"),
        })
    }
}

impl BezierMap {
    /// The map of the curve with inner control points `p1`, `p2` (each in `[0, 1]²`),
    /// increasing or inverting, interpolating through `n_samples` samples (at least 2).
    pub fn new(p1: [f64; 2], p2: [f64; 2], inverting: bool, n_samples: u32) -> Result<Self> {
        let mut map = Self::unbuilt();
        map.rebuild(p1, p2, inverting, n_samples)?;
        Ok(map)
    }

    /// The identity map (P1 = (1/3, 1/3), P2 = (2/3, 2/3)); cannot fail.
    pub(crate) fn identity() -> Self {
        let mut map = Self::unbuilt();
        map.build_table();
        map
    }

    /// The identity curve's fields with an empty table: only for maps that are rebuilt
    /// (or dropped) right away.
    fn unbuilt() -> Self {
        let third = 1.0 / 3.0;
        Self {
            p1: [third; 2],
            p2: [2.0 * third; 2],
            inverting: false,
            n_samples: 2,
            x_coef: [1.0, 0.0, 0.0],
            y_coef: [1.0, 0.0, 0.0],
            lut: Box::new([[0.0; 2]; LUT_CELLS]),
            nodes: vec![0.0; LUT_CELLS + 1],
            bends: vec![0.0; LUT_CELLS + 1],
            brackets: vec![[0, 0]; LUT_CELLS],
        }
    }

    /// Draws a curve the way the original does: P1 = (u, u), P2 = (u, u) with `u`
    /// uniform in `[0, 1)`, then inverting when a uniform draw is below
    /// `config.inverting_rate`.
    pub fn random(config: &NonLinearConfig, rng: &mut CubeRng) -> Result<Self> {
        let mut map = Self::unbuilt();
        map.redraw(config, rng)?;
        Ok(map)
    }

    /// [`BezierMap::random`] reusing this map's buffers.
    pub(crate) fn redraw(&mut self, config: &NonLinearConfig, rng: &mut CubeRng) -> Result<()> {
        config.validate()?;
        let p1 = [rng.uniform(), rng.uniform()];
        let p2 = [rng.uniform(), rng.uniform()];
        let inverting = rng.uniform() < config.inverting_rate;
        self.rebuild(p1, p2, inverting, config.n_samples)
    }

    fn rebuild(
        &mut self,
        p1: [f64; 2],
        p2: [f64; 2],
        inverting: bool,
        n_samples: u32,
    ) -> Result<()> {
        check_point("nonlinear.p1", p1)?;
        check_point("nonlinear.p2", p2)?;
        if n_samples < 2 {
            return Err(Error::InvalidConfig {
                field: "nonlinear.n_samples",
                reason: format!("{n_samples} samples cannot define a map; need at least 2"),
            });
        }
        let coef = |a: f64, c: f64| [3.0 * a, 3.0 * c - 6.0 * a, 3.0 * a - 3.0 * c + 1.0];
        self.p1 = p1;
        self.p2 = p2;
        self.inverting = inverting;
        self.n_samples = n_samples;
        self.x_coef = coef(p1[0], p2[0]);
        self.y_coef = coef(p1[1], p2[1]);
        self.build_table();
        Ok(())
    }

    /// The four control points P0..P3.
    pub fn control_points(&self) -> [[f64; 2]; 4] {
        [[0.0, 0.0], self.p1, self.p2, [1.0, 1.0]]
    }

    /// Whether this is the inverting (decreasing) map.
    pub fn is_inverting(&self) -> bool {
        self.inverting
    }

    #[inline]
    fn x_at(&self, s: f64) -> f64 {
        let [c1, c2, c3] = self.x_coef;
        ((c3 * s + c2) * s + c1) * s
    }

    /// The y value paired with the x sample at parameter `s`.
    #[inline]
    fn paired_y(&self, s: f64) -> f64 {
        let s = if self.inverting { 1.0 - s } else { s };
        let [c1, c2, c3] = self.y_coef;
        ((c3 * s + c2) * s + c1) * s
    }

    /// The exact map: piecewise-linear interpolation through the `n_samples` sorted
    /// samples, clamped at the ends (`np.interp`). About 20 cubic evaluations per call.
    pub fn exact(&self, value: f64) -> f64 {
        self.exact_between(value, 0, self.n_samples as usize - 1)
    }

    /// [`BezierMap::exact`] for a value of table cell `cell`, searching only between
    /// that cell's brackets.
    fn exact_in_cell(&self, value: f64, cell: usize) -> f64 {
        let [lo, hi] = self.brackets[cell];
        self.exact_between(value, lo as usize, hi as usize)
    }

    /// The exact map, given sample indices `lo < hi` expected to bracket `value`
    /// (checked; the whole range is searched otherwise).
    fn exact_between(&self, value: f64, lo: usize, hi: usize) -> f64 {
        if value.is_nan() {
            return f64::NAN;
        }
        let last = self.n_samples as usize - 1;
        let sample = |j: usize| j as f64 / last as f64;
        if value <= self.x_at(0.0) {
            return self.paired_y(0.0);
        }
        if value >= self.x_at(sample(last)) {
            return self.paired_y(sample(last));
        }
        let bracketed = lo < hi
            && hi <= last
            && self.x_at(sample(lo)) <= value
            && value < self.x_at(sample(hi));
        let (lo, hi) = if bracketed { (lo, hi) } else { (0, last) };
        let lo = self.search(value, lo, hi);
        let hi = lo + 1;
        let (x_lo, x_hi) = (self.x_at(sample(lo)), self.x_at(sample(hi)));
        let (y_lo, y_hi) = (self.paired_y(sample(lo)), self.paired_y(sample(hi)));
        y_lo + (y_hi - y_lo) * (value - x_lo) / (x_hi - x_lo)
    }

    /// Binary search for `lo` with x(lo) <= value < x(lo + 1), given x(lo) <= value <
    /// x(hi) on entry.
    fn search(&self, value: f64, mut lo: usize, mut hi: usize) -> usize {
        let last = self.n_samples as usize - 1;
        let sample = |j: usize| j as f64 / last as f64;
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.x_at(sample(mid)) <= value {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Sample indices bracketing table cell `cell` for [`BezierMap::exact_in_cell`].
    fn cell_bracket(&self, cell: usize) -> [u32; 2] {
        let last = self.n_samples as usize - 1;
        let (left, right) = (
            cell as f64 / LUT_CELLS as f64,
            (cell + 1) as f64 / LUT_CELLS as f64,
        );
        let x_last = self.x_at(1.0);
        let lo = if left >= x_last {
            last
        } else if left < self.x_at(0.0) {
            0
        } else {
            self.search(left, 0, last)
        };
        let hi = if right >= x_last {
            last
        } else if right < self.x_at(0.0) {
            0
        } else {
            self.search(right, 0, last) + 1
        };
        [lo as u32, hi as u32]
    }

    fn build_table(&mut self) {
        let cells = LUT_CELLS as f64;
        let mut nodes = std::mem::take(&mut self.nodes);
        nodes.resize(LUT_CELLS + 1, 0.0);
        nodes[0] = self.exact(0.0);
        nodes[LUT_CELLS] = self.exact(1.0);
        // March along the curve; each node value interpolates between the two fine
        // samples whose x values bracket it.
        let mut node = 1;
        let (mut prev_x, mut prev_y) = (self.x_at(0.0), self.paired_y(0.0));
        for step in 1..=FINE_STEPS {
            let s = step as f64 / FINE_STEPS as f64;
            let (x, y) = (self.x_at(s), self.paired_y(s));
            while node < LUT_CELLS && node as f64 / cells <= x {
                let v = node as f64 / cells;
                nodes[node] = if x > prev_x {
                    prev_y + (y - prev_y) * (v - prev_x) / (x - prev_x)
                } else {
                    y
                };
                node += 1;
            }
            if node == LUT_CELLS {
                break;
            }
            (prev_x, prev_y) = (x, y);
        }
        // Rounding can leave x(1) a hair below 1.
        for (k, value) in nodes.iter_mut().enumerate().take(LUT_CELLS).skip(node) {
            *value = self.exact(k as f64 / cells);
        }
        // Second difference at each inner node (the ends take their neighbour's); a cell
        // goes to the exact path when either of its nodes bends too much. Written as
        // `||` of plain comparisons (the nodes are finite), which vectorizes, where
        // `f64::max` would add NaN handling to every cell.
        let mut bends = std::mem::take(&mut self.bends);
        bends.resize(LUT_CELLS + 1, 0.0);
        // Inner nodes 1..LUT_CELLS from three shifted slices (no index arithmetic, so the
        // loop vectorizes); the end nodes take their neighbour's bend.
        let inner = &mut bends[1..LUT_CELLS];
        let (left, mid, right) = (
            &nodes[..LUT_CELLS - 1],
            &nodes[1..LUT_CELLS],
            &nodes[2..=LUT_CELLS],
        );
        for (bend, ((&a, &b), &c)) in inner.iter_mut().zip(left.iter().zip(mid).zip(right)) {
            *bend = (a - 2.0 * b + c).abs();
        }
        bends[0] = bends[1];
        bends[LUT_CELLS] = bends[LUT_CELLS - 1];
        let cells = self
            .lut
            .iter_mut()
            .zip(nodes.iter().zip(&nodes[1..]))
            .zip(bends.iter().zip(&bends[1..]));
        let mut exact_cells = 0;
        for ((entry, (&lo, &hi)), (&bend_lo, &bend_hi)) in cells {
            let exact = (bend_lo > BEND_LIMIT) | (bend_hi > BEND_LIMIT);
            let rise = if exact { f32::NAN } else { (hi - lo) as f32 };
            *entry = [lo as f32, rise];
            exact_cells += usize::from(exact);
        }
        self.bends = bends;
        self.nodes = nodes;
        // Most curves (about 92% of random ones) have no exact-path cell: skip the scan.
        if exact_cells > 0 {
            for cell in 0..LUT_CELLS {
                if self.lut[cell][1].is_nan() {
                    self.brackets[cell] = self.cell_bracket(cell);
                }
            }
        }
    }

    /// Maps one value (within 1e-4 of [`BezierMap::exact`]).
    #[inline]
    pub fn apply(&self, value: f32) -> f32 {
        let t = value.clamp(0.0, 1.0) * LUT_CELLS as f32;
        let cell = (t as usize).min(LUT_CELLS - 1);
        let frac = t - cell as f32;
        let [base, rise] = self.lut[cell];
        let out = base + rise * frac;
        if out.is_nan() {
            self.exact(f64::from(value)) as f32
        } else {
            out
        }
    }

    /// Maps every value in place.
    ///
    /// On x86_64 CPUs with AVX-512F an explicit vector loop maps 16 values at a time (two
    /// 8-cell gathers from the table); elsewhere a portable loop that the compiler
    /// vectorizes. The arithmetic is the same (Rust never fuses a multiply and an add on
    /// its own), so results are bit-identical on every CPU; a test compares the paths.
    pub fn apply_slice(&self, values: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            let ptr = values.as_mut_ptr();
            // SAFETY: AVX-512F was detected; source and destination are the same valid
            // buffer of `values.len()` floats.
            unsafe { self.apply_avx512(ptr, ptr, values.len()) };
            return;
        }
        self.apply_slice_portable(values);
    }

    /// `dst[i] = map(src[i])`: [`BezierMap::apply_slice`] without first copying `src`.
    /// `src` and `dst` must have the same length.
    pub(crate) fn apply_from(&self, src: &[f32], dst: &mut [f32]) {
        debug_assert_eq!(src.len(), dst.len());
        let len = src.len().min(dst.len());
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F was detected; both buffers hold `len` floats and, being a
            // shared and a mutable borrow, do not overlap.
            unsafe { self.apply_avx512(src.as_ptr(), dst.as_mut_ptr(), len) };
            return;
        }
        dst[..len].copy_from_slice(&src[..len]);
        self.apply_slice_portable(&mut dst[..len]);
    }

    /// The value of a voxel whose table cell is on the exact path, or NaN.
    #[inline(never)]
    fn exact_voxel(&self, x: f32) -> f32 {
        let exact = if (0.0..1.0).contains(&x) {
            self.exact_in_cell(f64::from(x), lut_position(x).0)
        } else {
            self.exact(f64::from(x))
        };
        exact as f32
    }

    /// [`BezierMap::apply_slice_portable`] in AVX-512F intrinsics, from `src` to `dst`.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `src` and `dst` are valid for `len` floats and are either
    /// the same buffer or do not overlap.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn apply_avx512(&self, src: *const f32, dst: *mut f32, len: usize) {
        use std::arch::x86_64::*;
        let lut = self.lut.as_ptr().cast::<i64>();
        let zero = _mm512_setzero_ps();
        let one = _mm512_set1_ps(1.0);
        let cells = _mm512_set1_ps(LUT_CELLS as f32);
        let last = _mm512_set1_ps((LUT_CELLS - 1) as f32);
        let cell_mask = _mm512_set1_epi32((LUT_CELLS - 1) as i32);
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        let full = len / 16 * 16;
        for start in (0..full).step_by(16) {
            // SAFETY: `start + 16 <= len`; the table has LUT_CELLS cells of two f32 (one
            // i64) and every index is masked below LUT_CELLS.
            unsafe {
                let x = _mm512_loadu_ps(src.add(start));
                // `x.clamp(0, 1)`: MAXPS/MINPS return their second operand when one is
                // NaN, so NaN stays NaN, as in Rust's clamp.
                let t = _mm512_mul_ps(_mm512_min_ps(one, _mm512_max_ps(zero, x)), cells);
                // `lut_position`: negative and NaN t go to cell 0, the rest at most 4095.
                let non_negative = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(t, zero);
                let bounded = _mm512_min_ps(_mm512_maskz_mov_ps(non_negative, t), last);
                let cell = _mm512_and_si512(_mm512_cvttps_epi32(bounded), cell_mask);
                let frac = _mm512_sub_ps(t, _mm512_cvtepi32_ps(cell));
                let low = _mm512_i32gather_epi64::<8>(_mm512_castsi512_si256(cell), lut);
                let high = _mm512_i32gather_epi64::<8>(_mm512_extracti64x4_epi64::<1>(cell), lut);
                let (low, high) = (_mm512_castsi512_ps(low), _mm512_castsi512_ps(high));
                let base = _mm512_permutex2var_ps(low, even, high);
                let rise = _mm512_permutex2var_ps(low, odd, high);
                let out = _mm512_add_ps(base, _mm512_mul_ps(rise, frac));
                let mut nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(out, out);
                if nan == 0 {
                    _mm512_storeu_ps(dst.add(start), out);
                    continue;
                }
                let mut inputs = [0f32; 16];
                _mm512_storeu_ps(inputs.as_mut_ptr(), x);
                _mm512_storeu_ps(dst.add(start), out);
                while nan != 0 {
                    let lane = nan.trailing_zeros() as usize;
                    *dst.add(start + lane) = self.exact_voxel(inputs[lane]);
                    nan &= nan - 1;
                }
            }
        }
        for i in full..len {
            // SAFETY: `i < len`.
            unsafe { *dst.add(i) = self.apply(*src.add(i)) };
        }
    }

    /// One pass over each chunk that the compiler vectorizes (clamp, scale, truncate,
    /// look up, multiply-add; no branch per voxel). Cells marked for the exact path
    /// (NaN rise) and NaN inputs give NaN; those voxels are patched afterwards from a
    /// copy of the chunk's input, which almost every chunk skips.
    #[inline(always)]
    fn apply_slice_portable(&self, values: &mut [f32]) {
        const CHUNK: usize = 64;
        let lut: &[[f32; 2]; LUT_CELLS] = &self.lut;
        let mut input = [0f32; CHUNK];
        for chunk in values.chunks_mut(CHUNK) {
            let input = &mut input[..chunk.len()];
            input.copy_from_slice(chunk);
            let mut any_nan = false;
            for (v, &x) in chunk.iter_mut().zip(input.iter()) {
                let (cell, frac) = lut_position(x);
                let [base, rise] = lut[cell];
                let out = base + rise * frac;
                any_nan |= out.is_nan();
                *v = out;
            }
            if any_nan {
                for (v, &x) in chunk.iter_mut().zip(input.iter()) {
                    if v.is_nan() {
                        *v = self.exact_voxel(x);
                    }
                }
            }
        }
    }

    /// The `(xp, fp)` arrays the original hands to `np.interp`: Bernstein weights with
    /// `t = linspace(0, 1, n)` (t = 0 at P3), x sorted, y sorted too unless inverting.
    /// Slow (it sorts); for verification.
    pub fn original_samples(&self) -> (Vec<f64>, Vec<f64>) {
        let n = self.n_samples as usize;
        let points = self.control_points();
        let step = 1.0 / (n - 1) as f64;
        let mut xs = Vec::with_capacity(n);
        let mut ys = Vec::with_capacity(n);
        for j in 0..n {
            let t = if j == n - 1 { 1.0 } else { j as f64 * step };
            // bernstein_poly(i, 3, t) = comb(3, i) t^(3 - i) (1 - t)^i
            let weights = [
                t.powi(3),
                3.0 * t.powi(2) * (1.0 - t),
                3.0 * t * (1.0 - t).powi(2),
                (1.0 - t).powi(3),
            ];
            xs.push(
                weights
                    .iter()
                    .zip(&points)
                    .map(|(w, p)| w * p[0])
                    .sum::<f64>(),
            );
            ys.push(
                weights
                    .iter()
                    .zip(&points)
                    .map(|(w, p)| w * p[1])
                    .sum::<f64>(),
            );
        }
        xs.sort_by(f64::total_cmp);
        if !self.inverting {
            ys.sort_by(f64::total_cmp);
        }
        (xs, ys)
    }
}

/// The non-linear intensity transformation of one cube in place, with a random curve
/// (always applies; the probability `nonlinear_rate` belongs to
/// [`generate_pair`](crate::generate_pair)). Works for any memory layout. Returns the map
/// that was applied.
pub fn nonlinear_transformation(
    mut cube: ArrayViewMut3<'_, f32>,
    config: &NonLinearConfig,
    rng: &mut CubeRng,
) -> Result<BezierMap> {
    let map = BezierMap::random(config, rng)?;
    match cube.as_slice_memory_order_mut() {
        Some(values) => map.apply_slice(values),
        None => cube.mapv_inplace(|v| map.apply(v)),
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cube_rng;

    /// `np.interp(v, xp, fp)` for sorted `xp`.
    fn np_interp(v: f64, xp: &[f64], fp: &[f64]) -> f64 {
        let n = xp.len();
        if v <= xp[0] {
            return fp[0];
        }
        if v >= xp[n - 1] {
            return fp[n - 1];
        }
        let hi = xp.partition_point(|&x| x <= v);
        let lo = hi - 1;
        fp[lo] + (fp[hi] - fp[lo]) * (v - xp[lo]) / (xp[hi] - xp[lo])
    }

    fn probe_values(rng: &mut CubeRng) -> Vec<f32> {
        let mut values: Vec<f32> = (0..=2000).map(|i| i as f32 / 2000.0).collect();
        values.extend((0..50).map(|i| i as f32 * 1e-6));
        values.extend((0..50).map(|i| 1.0 - i as f32 * 1e-6));
        values.extend([-0.5, -1e-9, 1.0 + 1e-6, 3.0]);
        values.extend((0..3000).map(|_| rng.uniform() as f32));
        values
    }

    fn max_error(map: &BezierMap, values: &[f32]) -> (f64, f64) {
        let (xp, fp) = map.original_samples();
        let mut lut_err = 0f64;
        let mut exact_err = 0f64;
        for &v in values {
            let want = np_interp(f64::from(v), &xp, &fp);
            lut_err = lut_err.max((f64::from(map.apply(v)) - want).abs());
            exact_err = exact_err.max((map.exact(f64::from(v)) - want).abs());
        }
        (lut_err, exact_err)
    }

    #[test]
    fn lut_matches_the_original_sample_sort_interp_in_both_cases() {
        let mut rng = cube_rng(42, 0, 0);
        let values = probe_values(&mut rng);
        let mut worst = (0f64, 0f64);
        let mut fixed = vec![
            ([0.2, 0.7], [0.8, 0.3]),
            ([0.9, 0.1], [0.1, 0.9]),
            ([0.0, 1.0], [0.0, 1.0]),
            ([1e-6, 0.9], [0.999_999, 0.1]),
            ([0.999, 0.999], [0.001, 0.001]),
            ([0.999_9, 0.0], [0.000_1, 1.0]),
            ([0.0, 0.0], [1.0, 1.0]),
            ([1.0, 1.0], [0.0, 0.0]),
            ([0.0, 0.5], [0.0, 0.5]),
            ([1.0, 0.5], [1.0, 0.5]),
        ];
        for _ in 0..60 {
            fixed.push((
                [rng.uniform(), rng.uniform()],
                [rng.uniform(), rng.uniform()],
            ));
        }
        for (p1, p2) in fixed {
            for inverting in [false, true] {
                let map = BezierMap::new(p1, p2, inverting, 100_000).unwrap();
                let (lut, exact) = max_error(&map, &values);
                assert!(
                    lut < 1e-4,
                    "{p1:?} {p2:?} inverting {inverting}: lut error {lut}"
                );
                assert!(
                    exact < 1e-9,
                    "{p1:?} {p2:?} inverting {inverting}: exact error {exact}"
                );
                worst = (worst.0.max(lut), worst.1.max(exact));
            }
        }
        eprintln!(
            "worst lut error {:.3e}, exact error {:.3e}",
            worst.0, worst.1
        );
    }

    #[test]
    fn direct_bernstein_evaluation_agrees() {
        // For given control points, the curve point at any t maps its x to its y
        // (increasing) or to the y at 1 - t (inverting), up to the sampling.
        let (p1, p2) = ([0.3, 0.8], [0.6, 0.1]);
        let bernstein = |t: f64, i: usize| {
            let p = [[0.0, 0.0], p1, p2, [1.0, 1.0]];
            let w = [
                t.powi(3),
                3.0 * t * t * (1.0 - t),
                3.0 * t * (1.0 - t).powi(2),
                (1.0 - t).powi(3),
            ];
            (0..4).map(|k| w[k] * p[k][i]).sum::<f64>()
        };
        let up = BezierMap::new(p1, p2, false, 100_000).unwrap();
        let down = BezierMap::new(p1, p2, true, 100_000).unwrap();
        for k in 0..=100 {
            let t = k as f64 / 100.0;
            let x = bernstein(t, 0);
            assert!(
                (f64::from(up.apply(x as f32)) - bernstein(t, 1)).abs() < 1e-4,
                "t {t}"
            );
            assert!(
                (f64::from(down.apply(x as f32)) - bernstein(1.0 - t, 1)).abs() < 1e-4,
                "t {t}"
            );
        }
        assert!(down.apply(0.0) > 0.999 && down.apply(1.0) < 0.001);
        assert!(up.apply(0.0) < 0.001 && up.apply(1.0) > 0.999);
    }

    #[test]
    fn random_maps_stay_in_unit_interval_and_are_monotone() {
        let mut rng = cube_rng(1, 0, 0);
        let config = NonLinearConfig::default();
        let mut inverting = 0;
        for _ in 0..200 {
            let map = BezierMap::random(&config, &mut rng).unwrap();
            inverting += usize::from(map.is_inverting());
            let mut prev = map.apply(0.0);
            for i in 1..=1000 {
                let v = map.apply(i as f32 / 1000.0);
                assert!((0.0..=1.0).contains(&v));
                if map.is_inverting() {
                    assert!(v <= prev + 1e-6);
                } else {
                    assert!(v >= prev - 1e-6);
                }
                prev = v;
            }
        }
        assert!((60..140).contains(&inverting), "{inverting}");
        assert!(map_nan_passes_through());
    }

    fn map_nan_passes_through() -> bool {
        let map = BezierMap::new([0.2, 0.2], [0.8, 0.8], false, 1000).unwrap();
        map.apply(f32::NAN).is_nan()
    }

    #[test]
    fn rejects_points_outside_the_unit_square() {
        let err = BezierMap::new([1.5, 0.0], [0.5, 0.5], false, 100).unwrap_err();
        assert!(err.to_string().contains("p1"), "{err}");
        assert!(BezierMap::new([0.5, 0.5], [0.5, 0.5], false, 1).is_err());
    }

    #[test]
    fn every_apply_path_gives_the_same_bits_as_the_scalar_map() {
        // The dispatched (possibly AVX-512) slice path, the portable slice path and the
        // per-value `apply` agree bit for bit, including edges, NaN and infinities, and
        // cells on the exact path (whose narrowed search must match the full one).
        let mut rng = cube_rng(3, 0, 0);
        let mut values: Vec<f32> = (0..=4096).map(|k| k as f32 / 4096.0).collect();
        values.extend((0..20_000).map(|_| rng.uniform() as f32));
        values.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, -0.5, 1.5]);
        let mut exact_cells = 0;
        for _ in 0..40 {
            let map = BezierMap::random(&NonLinearConfig::default(), &mut rng).unwrap();
            exact_cells += map.lut.iter().filter(|c| c[1].is_nan()).count();
            let mut dispatched = values.clone();
            map.apply_slice(&mut dispatched);
            let mut portable = values.clone();
            map.apply_slice_portable(&mut portable);
            let mut copied = vec![0.0; values.len()];
            map.apply_from(&values, &mut copied);
            assert_eq!(
                copied.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                dispatched.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
            for ((&v, &d), &p) in values.iter().zip(&dispatched).zip(&portable) {
                let scalar = map.apply(v);
                assert_eq!(d.to_bits(), p.to_bits(), "{v}");
                assert_eq!(d.to_bits(), scalar.to_bits(), "{v}");
                if (0.0..1.0).contains(&v) {
                    let full = map.exact(f64::from(v)) as f32;
                    let cell = lut_position(v).0;
                    if map.lut[cell][1].is_nan() {
                        assert_eq!(d.to_bits(), full.to_bits(), "{v}");
                    }
                }
            }
        }
        assert!(exact_cells > 0, "no map exercised the exact path");
    }
}
