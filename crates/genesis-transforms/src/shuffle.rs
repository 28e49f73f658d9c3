//! Transform 2: local pixel shuffling (the original's `local_pixel_shuffling`).

use ndarray::ArrayViewMut3;

use crate::config::LocalShuffleConfig;
use crate::flip::dim3;
use crate::paint::{Box3, overlaps_any};
use crate::permutations::{MAX_LEN, Permutations, SLACK_ROWS, STRIDE};
use crate::rng::{CubeRng, DRAW_LANES, NoiseRng};
#[cfg(target_arch = "x86_64")]
use crate::rng::{NoiseLanes, below_lanes};
use crate::{Error, Result};

/// Reusable buffers for [`shuffle_blocks`]: no allocation per cube in steady state.
#[derive(Debug, Clone, Default)]
pub(crate) struct ShuffleScratch {
    /// One block's values and their permuted order (portable kernels), or its gathered
    /// rows (the AVX-512 one).
    block: Vec<f32>,
    /// This cube's blocks in draw order, `count` of them: first voxel's index in the
    /// cube, size packed as `bx | by << 8 | bz << 16`, and voxel count. Each is
    /// [`DRAW_LANES`] longer than the blocks, for the vector stores.
    starts: Vec<u32>,
    sizes: Vec<u32>,
    lens: Vec<u8>,
    count: usize,
    /// The blocks' permutations.
    perms: Permutations,
    /// The AVX-512 kernel's row offsets per block height, and the (shape, largest block)
    /// they were made for.
    rows: Vec<u32>,
    rows_key: Option<([usize; 3], [usize; 3])>,
}

/// A block's size (bx, by, bz) from its packed form in [`ShuffleScratch`].
#[inline(always)]
fn unpack(size: u32) -> [usize; 3] {
    [size & 0xff, (size >> 8) & 0xff, (size >> 16) & 0xff].map(|s| s as usize)
}

/// Shuffles `n_blocks` random blocks: each block is read from `original`, its voxels are
/// permuted uniformly at random and written to the same place in `out`. Blocks overlap;
/// later blocks overwrite earlier ones, and every block reads the un-shuffled original.
///
/// `original` and `out` are C-order buffers of `shape`; the caller has validated the
/// config for `shape`.
///
/// Every block's sizes (bx, by, bz) and origin (x, y, z) are drawn in the original's
/// ranges. When blocks hold at most [`MAX_LEN`] voxels (the paper's hold at most 108),
/// all blocks are drawn first, sixteen at a time from vector lanes, and their
/// permutations then come sixteen at a time too ([`Permutations`]); larger blocks draw
/// sizes, origin and permutation one block after the other from `rng`. On x86_64 CPUs
/// with AVX-512F and AVX-512VL, blocks of at most 4 voxels deep are also moved by a
/// kernel with no branch per row. Every path
/// for a given config makes the same draws and writes the same values (a test compares
/// them).
///
/// With `needed`, only blocks that share a voxel with one of those boxes are permuted
/// and written (the others still draw their size and place, not their permutation):
/// the pair pipeline passes the boxes out-painting will keep, since every other voxel
/// becomes noise. Inside the boxes the result has the same distribution as shuffling
/// every block.
pub(crate) fn shuffle_blocks(
    original: &[f32],
    out: &mut [f32],
    shape: [usize; 3],
    config: &LocalShuffleConfig,
    rng: &mut CubeRng,
    scratch: &mut ShuffleScratch,
    needed: Option<&[Box3]>,
) {
    let vector = has_avx512_vl();
    shuffle_blocks_with(original, out, shape, config, rng, scratch, needed, vector);
}

/// Whether the CPU has AVX-512F and AVX-512VL, which the shuffle's vector paths use.
fn has_avx512_vl() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vl");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// [`shuffle_blocks`] with the choice of AVX-512 paths made by the caller (`vector`:
/// the CPU has AVX-512F and AVX-512VL).
#[allow(clippy::too_many_arguments)]
fn shuffle_blocks_with(
    original: &[f32],
    out: &mut [f32],
    shape: [usize; 3],
    config: &LocalShuffleConfig,
    rng: &mut CubeRng,
    scratch: &mut ShuffleScratch,
    needed: Option<&[Box3]>,
    vector: bool,
) {
    scratch.reserve_block(shape, config);
    if !lanes_fit(shape, config) {
        shuffle_blocks_in_order(
            original,
            out,
            shape,
            config,
            rng,
            &mut scratch.block,
            needed,
        );
        return;
    }
    scratch.draw_blocks(shape, config, rng, needed, vector);
    #[cfg(target_arch = "x86_64")]
    if vector && scratch.prepare_rows(shape, config) {
        // SAFETY: the CPU has AVX-512F and AVX-512VL (the caller's `vector`);
        // `prepare_rows` made the row table for this shape and config, and
        // `draw_blocks` the blocks and their permutations.
        unsafe { write_blocks_avx512(original, out, shape, config, scratch) };
        return;
    }
    write_blocks_portable(original, out, shape, scratch);
}

/// The largest block per axis: `dim / block_divisor` (at least 1 once the config is
/// validated for the shape).
fn max_block_size(shape: [usize; 3], config: &LocalShuffleConfig) -> [usize; 3] {
    let divisor = config.block_divisor as usize;
    shape.map(|dim| dim / divisor)
}

/// Whether blocks are small enough for [`Permutations`] and the cube for 32-bit
/// voxel indices.
fn lanes_fit(shape: [usize; 3], config: &LocalShuffleConfig) -> bool {
    max_block_size(shape, config).iter().product::<usize>() <= MAX_LEN
        && u32::try_from(shape.iter().product::<usize>()).is_ok()
}

/// Draws the next block, in the original's order: sizes (bx, by, bz) in `1..=max_size`,
/// then its origin. `None` when `needed` is given and the block misses every box (its
/// permutation is then not drawn; see [`shuffle_blocks`]). The draws of the in-order
/// kernel, for blocks larger than [`MAX_LEN`] voxels.
#[inline(always)]
fn next_block(
    rng: &mut CubeRng,
    shape: [usize; 3],
    max_size: [usize; 3],
    needed: Option<&[Box3]>,
) -> Option<([usize; 3], [usize; 3])> {
    let size = rng
        .below_batch(max_size.map(|m| m as u64))
        .map(|v| v as usize + 1);
    let origin = rng
        .below_batch([0, 1, 2].map(|axis| (shape[axis] - size[axis] + 1) as u64))
        .map(|v| v as usize);
    let skipped = needed.is_some_and(|boxes| !overlaps_any(origin, size, boxes));
    (!skipped).then_some((origin, size))
}

/// Largest block depth of the AVX-512 kernel: a block row is one 4-lane vector.
const VECTOR_MAX_DEPTH: usize = 4;

impl ShuffleScratch {
    /// Sizes the buffers for `shape` and `config` ahead of the first cube.
    pub(crate) fn reserve(&mut self, shape: [usize; 3], config: &LocalShuffleConfig) {
        if config.block_divisor == 0 {
            return;
        }
        self.prepare_rows(shape, config);
        self.reserve_block(shape, config);
    }

    /// Sizes the block buffer: the largest block (the in-order kernel), and at least
    /// a gathered and a permuted block of [`MAX_LEN`] + [`SLACK_ROWS`] values.
    fn reserve_block(&mut self, shape: [usize; 3], config: &LocalShuffleConfig) {
        let needed = config.max_block_len(shape).max(2 * (MAX_LEN + SLACK_ROWS));
        if self.block.len() < needed {
            self.block.resize(needed, 0.0);
        }
    }

    /// Draws every block of the cube (keeping those `needed` asks for), then their
    /// permutations; `lanes_fit(shape, config)` holds. The sizes and places come
    /// sixteen blocks at a time from vector lanes seeded by one draw of `rng` (the
    /// sizes of sixteen blocks, then their origins); `vector` chooses the AVX-512 path,
    /// and both paths draw the same blocks.
    fn draw_blocks(
        &mut self,
        shape: [usize; 3],
        config: &LocalShuffleConfig,
        rng: &mut CubeRng,
        needed: Option<&[Box3]>,
        vector: bool,
    ) {
        let n_blocks = config.n_blocks as usize;
        for buf in [&mut self.starts, &mut self.sizes] {
            if buf.len() < n_blocks + DRAW_LANES {
                buf.resize(n_blocks + DRAW_LANES, 0);
            }
        }
        if self.lens.len() < n_blocks + DRAW_LANES {
            self.lens.resize(n_blocks + DRAW_LANES, 0);
        }
        let mut lanes = NoiseRng::new(rng);
        self.count = 'drawn: {
            #[cfg(target_arch = "x86_64")]
            if vector && let Some(lanes) = NoiseLanes::load(&lanes) {
                // SAFETY: `NoiseLanes::load` succeeds only on CPUs with AVX-512F; the
                // buffers hold `n_blocks + DRAW_LANES` entries.
                break 'drawn unsafe { self.draw_geometry_avx512(shape, config, needed, lanes) };
            }
            self.draw_geometry_portable(shape, config, needed, &mut lanes)
        };
        self.perms.draw(&self.lens[..self.count], rng, vector);
    }

    /// The draws of [`draw_geometry_avx512`](Self::draw_geometry_avx512), one lane at
    /// a time; returns the number of blocks kept.
    fn draw_geometry_portable(
        &mut self,
        shape: [usize; 3],
        config: &LocalShuffleConfig,
        needed: Option<&[Box3]>,
        lanes: &mut NoiseRng,
    ) -> usize {
        let [_, cols, deps] = shape;
        let max_size = max_block_size(shape, config);
        let n_blocks = config.n_blocks as usize;
        let mut count = 0;
        for first in (0..n_blocks).step_by(DRAW_LANES) {
            let sizes = [0, 1, 2].map(|axis| {
                lanes
                    .below_lanes(&[max_size[axis] as u32; DRAW_LANES], u16::MAX)
                    .map(|s| s + 1)
            });
            let origins = [0, 1, 2].map(|axis| {
                let bounds = sizes[axis].map(|s| shape[axis] as u32 + 1 - s);
                lanes.below_lanes(&bounds, u16::MAX)
            });
            for lane in 0..(n_blocks - first).min(DRAW_LANES) {
                let size = [0, 1, 2].map(|axis| sizes[axis][lane] as usize);
                let [x, y, z] = [0, 1, 2].map(|axis| origins[axis][lane] as usize);
                if needed.is_some_and(|boxes| !overlaps_any([x, y, z], size, boxes)) {
                    continue;
                }
                // Below the cube's length, which fits 32 bits (`lanes_fit`); the sizes
                // are at most MAX_LEN.
                self.starts[count] = ((x * cols + y) * deps + z) as u32;
                self.sizes[count] = (size[0] | size[1] << 8 | size[2] << 16) as u32;
                self.lens[count] = size.iter().product::<usize>() as u8;
                count += 1;
            }
        }
        count
    }

    /// Draws the blocks sixteen at a time: sizes along x, y and z, then origins along
    /// x, y and z, each one step of [`below_lanes`] for the sixteen blocks; blocks that
    /// miss every box of `needed` are dropped by compressing the lanes. Returns the
    /// number of blocks kept.
    ///
    /// # Safety
    /// The CPU has AVX-512F; the buffers hold `config.n_blocks + DRAW_LANES` entries.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn draw_geometry_avx512(
        &mut self,
        shape: [usize; 3],
        config: &LocalShuffleConfig,
        needed: Option<&[Box3]>,
        mut lanes: NoiseLanes,
    ) -> usize {
        use std::arch::x86_64::*;
        let [_, cols, deps] = shape;
        let max_size = max_block_size(shape, config);
        let n_blocks = config.n_blocks as usize;
        let one = _mm512_set1_epi32(1);
        let mut count = 0;
        for first in (0..n_blocks).step_by(DRAW_LANES) {
            let left = n_blocks - first;
            let valid = if left >= DRAW_LANES {
                u16::MAX
            } else {
                (1u16 << left) - 1
            };
            let size = [0, 1, 2].map(|axis| {
                let bound = _mm512_set1_epi32(max_size[axis] as i32);
                _mm512_add_epi32(below_lanes(&mut lanes, bound, u16::MAX), one)
            });
            let origin = [0, 1, 2].map(|axis| {
                let bound = _mm512_sub_epi32(_mm512_set1_epi32(shape[axis] as i32 + 1), size[axis]);
                below_lanes(&mut lanes, bound, u16::MAX)
            });
            let mut keep = valid;
            if let Some(boxes) = needed {
                let mut touching = 0u16;
                for b in boxes {
                    let mut overlap = u16::MAX;
                    for axis in 0..3 {
                        let end = _mm512_set1_epi32(b.range(axis).end as i32);
                        let start = _mm512_set1_epi32(b.origin[axis] as i32);
                        let block_end = _mm512_add_epi32(origin[axis], size[axis]);
                        overlap &= _mm512_cmplt_epu32_mask(origin[axis], end)
                            & _mm512_cmplt_epu32_mask(start, block_end);
                    }
                    touching |= overlap;
                }
                keep &= touching;
            }
            let [x, y, z] = origin;
            let start = _mm512_add_epi32(
                _mm512_mullo_epi32(
                    _mm512_add_epi32(_mm512_mullo_epi32(x, _mm512_set1_epi32(cols as i32)), y),
                    _mm512_set1_epi32(deps as i32),
                ),
                z,
            );
            let packed = _mm512_or_si512(
                size[0],
                _mm512_or_si512(
                    _mm512_slli_epi32::<8>(size[1]),
                    _mm512_slli_epi32::<16>(size[2]),
                ),
            );
            let len = _mm512_mullo_epi32(_mm512_mullo_epi32(size[0], size[1]), size[2]);
            // SAFETY: `count <= first <= n_blocks - 1`, and the buffers hold
            // `n_blocks + DRAW_LANES` entries, so sixteen entries from `count` fit.
            unsafe {
                _mm512_storeu_si512(
                    self.starts.as_mut_ptr().add(count).cast(),
                    _mm512_maskz_compress_epi32(keep, start),
                );
                _mm512_storeu_si512(
                    self.sizes.as_mut_ptr().add(count).cast(),
                    _mm512_maskz_compress_epi32(keep, packed),
                );
                _mm_storeu_si128(
                    self.lens.as_mut_ptr().add(count).cast(),
                    _mm512_cvtepi32_epi8(_mm512_maskz_compress_epi32(keep, len)),
                );
            }
            count += keep.count_ones() as usize;
        }
        count
    }

    /// Readies the AVX-512 kernel's row table for `shape` and `config`; false when its
    /// blocks are too deep for that kernel (or its row offsets for 32 bits).
    fn prepare_rows(&mut self, shape: [usize; 3], config: &LocalShuffleConfig) -> bool {
        let [_, cols, deps] = shape;
        let max_size = max_block_size(shape, config);
        let fits = lanes_fit(shape, config)
            && max_size[2] <= VECTOR_MAX_DEPTH
            && u32::try_from(max_size[0] * cols * deps).is_ok();
        if !fits {
            return false;
        }
        if self.rows_key != Some((shape, max_size)) {
            let max_rows = max_size[0] * max_size[1];
            self.rows.clear();
            for by in 1..=max_size[1] {
                self.rows.extend(
                    (0..max_rows).map(|r| ((r / by) * cols * deps + (r % by) * deps) as u32),
                );
            }
            self.rows_key = Some((shape, max_size));
        }
        true
    }
}

/// Writes the drawn blocks in draw order: each block's values are read from `original`
/// and written to `out` in the order of its permutation.
fn write_blocks_portable(
    original: &[f32],
    out: &mut [f32],
    shape: [usize; 3],
    scratch: &mut ShuffleScratch,
) {
    let [_, cols, deps] = shape;
    let row_stride = cols * deps;
    let ShuffleScratch {
        block: buf,
        starts,
        sizes,
        count,
        perms,
        ..
    } = scratch;
    // The first half of `buf` takes a block's values, the second half the same values
    // in the permutation's order. Permutation entries are below MAX_LEN < 128, so
    // masking them with 127 keeps them as they are and drops the bounds checks.
    let (gathered, permuted) = buf[..2 * 128].split_at_mut(128);
    let gathered: &mut [f32; 128] = gathered
        .try_into()
        .unwrap_or_else(|_| unreachable!("split at 128"));
    for (b, (&start, &size)) in starts.iter().zip(sizes.iter()).take(*count).enumerate() {
        let [bx, by, bz] = unpack(size);
        let start = start as usize;
        let extent = (bx - 1) * row_stride + (by - 1) * deps + bz;
        let (src, dst) = (
            &original[start..start + extent],
            &mut out[start..start + extent],
        );
        let size = [bx, by, bz];
        for_each_block_row(size, row_stride, deps, |row, k| {
            copy_short(&mut gathered[k..k + bz], &src[row..row + bz]);
        });
        let entries = perms.of(b).iter().step_by(STRIDE);
        for (value, &index) in permuted.iter_mut().zip(entries).take(bx * by * bz) {
            *value = gathered[usize::from(index) & 127];
        }
        for_each_block_row(size, row_stride, deps, |row, k| {
            copy_short(&mut dst[row..row + bz], &permuted[k..k + bz]);
        });
    }
}

/// [`write_blocks_portable`] with each block's rows moved by masked 4-lane loads and
/// stores, one flat loop per block over a table of row offsets instead of loops over x,
/// y and the depth. When no block is deeper than 3 (the paper's cubes), a row's values
/// are three loads, not four (chosen once per cube, not per block).
///
/// # Safety
/// The CPU has AVX-512F and AVX-512VL, `scratch.prepare_rows(shape, config)` returned
/// true, and `scratch.draw_blocks` drew the blocks for this shape and config.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn write_blocks_avx512(
    original: &[f32],
    out: &mut [f32],
    shape: [usize; 3],
    config: &LocalShuffleConfig,
    scratch: &mut ShuffleScratch,
) {
    use std::arch::x86_64::*;
    let max_size = max_block_size(shape, config);
    let max_rows = max_size[0] * max_size[1];
    debug_assert_eq!(original.len(), shape.iter().product::<usize>());
    debug_assert_eq!(out.len(), original.len());
    let ShuffleScratch {
        block,
        starts,
        sizes,
        count,
        perms,
        rows: row_offsets,
        ..
    } = scratch;
    debug_assert!(block.len() >= MAX_LEN + SLACK_ROWS);
    let gathered = block.as_mut_ptr();
    let shallow = max_size[2] <= 3;
    for (b, (&start, &size)) in starts.iter().zip(sizes.iter()).take(*count).enumerate() {
        let [bx, by, bz] = unpack(size);
        let offsets = &row_offsets[(by - 1) * max_rows..][..bx * by];
        let perm = perms.of(b).as_ptr();
        // SAFETY: the block lies inside the cube, so lanes below `bz` of every row (the
        // only lanes the masks let through) are in bounds of `original` and `out`;
        // `gathered` holds MAX_LEN + SLACK_ROWS = 128 values and takes rows of 4 from
        // `k < n <= MAX_LEN`; the permutation's entries for `k + lane < n + SLACK_ROWS`
        // are in the table, `(k + lane) * STRIDE` from `perm`, and below 128 (see
        // `Permutations::of`).
        unsafe {
            let lanes: __mmask8 = (1u8 << bz) - 1;
            let src = original.as_ptr().add(start as usize);
            let dst = out.as_mut_ptr().add(start as usize);
            let mut k = 0;
            for &offset in offsets {
                _mm_storeu_ps(
                    gathered.add(k),
                    _mm_maskz_loadu_ps(lanes, src.add(offset as usize)),
                );
                k += bz;
            }
            // Called with a constant, so each call is its own loop.
            let write_rows = |fourth: bool| {
                // Entry k + lane of the permutation is at (k + lane) * STRIDE.
                let mut entry = perm;
                for &offset in offsets {
                    let value = |lane: usize| *gathered.add(usize::from(*entry.add(lane * STRIDE)));
                    let last = if fourth { value(3) } else { 0.0 };
                    let row = _mm_setr_ps(value(0), value(1), value(2), last);
                    _mm_mask_storeu_ps(dst.add(offset as usize), lanes, row);
                    entry = entry.add(bz * STRIDE);
                }
            };
            if shallow {
                write_rows(false)
            } else {
                write_rows(true)
            }
        }
    }
}

/// The kernel for blocks larger than [`MAX_LEN`] voxels: draw each block, gather it
/// into `buf`, permute it, scatter it back. `buf` is at least
/// `config.max_block_len(shape)` long.
fn shuffle_blocks_in_order(
    original: &[f32],
    out: &mut [f32],
    shape: [usize; 3],
    config: &LocalShuffleConfig,
    rng: &mut CubeRng,
    buf: &mut [f32],
    needed: Option<&[Box3]>,
) {
    let [rows, cols, deps] = shape;
    let max_size = max_block_size(shape, config);
    debug_assert!(max_size.iter().all(|&m| m >= 1));
    debug_assert_eq!(original.len(), rows * cols * deps);
    debug_assert_eq!(out.len(), original.len());
    let row_stride = cols * deps;
    for _ in 0..config.n_blocks {
        let Some(([x, y, z], [bx, by, bz])) = next_block(rng, shape, max_size, needed) else {
            continue;
        };
        let block = &mut buf[..bx * by * bz];
        let first = (x * cols + y) * deps + z;
        for_each_block_row([bx, by, bz], row_stride, deps, |row, k| {
            let at = first + row;
            copy_short(&mut block[k..k + bz], &original[at..at + bz]);
        });
        permute(block, rng);
        for_each_block_row([bx, by, bz], row_stride, deps, |row, k| {
            let at = first + row;
            copy_short(&mut out[at..at + bz], &block[k..k + bz]);
        });
    }
}

/// Calls `f(row, k)` for each row of a block of `size` (bx, by, bz) in C order: `row`
/// is the offset of the row's first voxel from the block's first voxel, `k` its index
/// in the block's own C order. Plain nested loops: the kernels call this per block.
#[inline(always)]
fn for_each_block_row(
    [bx, by, bz]: [usize; 3],
    row_stride: usize,
    deps: usize,
    mut f: impl FnMut(usize, usize),
) {
    let mut k = 0;
    for ix in 0..bx {
        let mut row = ix * row_stride;
        for _ in 0..by {
            f(row, k);
            k += bz;
            row += deps;
        }
    }
}

/// Copies a short run (blocks are at most a few voxels deep); a plain `copy_from_slice`
/// would call `memmove` for each of the ~100,000 runs of a cube.
#[inline(always)]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    match (dst, src) {
        ([d0], [s0]) => *d0 = *s0,
        ([d0, d1], [s0, s1]) => (*d0, *d1) = (*s0, *s1),
        ([d0, d1, d2], [s0, s1, s2]) => (*d0, *d1, *d2) = (*s0, *s1, *s2),
        (dst, src) => dst.copy_from_slice(src),
    }
}

/// Uniform random permutation in place (Fisher-Yates), drawing up to six swap partners
/// from one 64-bit draw for small buffers.
#[inline(always)]
fn permute<T>(values: &mut [T], rng: &mut CubeRng) {
    let n = values.len();
    if n < 2 {
        return;
    }
    let mut top = n - 1;
    if n <= 256 {
        // Six bounds of at most 256 multiply to at most 2^48.
        while top >= 6 {
            let t = top as u64;
            let partners = rng.below_batch([t + 1, t, t - 1, t - 2, t - 3, t - 4]);
            for (offset, &partner) in partners.iter().enumerate() {
                values.swap(top - offset, partner as usize);
            }
            top -= 6;
        }
    }
    while top >= 1 {
        let partner = rng.below(top as u64 + 1) as usize;
        values.swap(top, partner);
        top -= 1;
    }
}

/// Local pixel shuffling of one cube in place: `config.n_blocks` blocks of size up to
/// `dim / config.block_divisor` per axis, each taken from the un-shuffled cube, permuted
/// uniformly and written back at its place. Always applies (the probability
/// `local_rate` belongs to [`generate_pair`](crate::generate_pair)).
///
/// `cube` must be in standard (C) layout; this function copies it once to keep the
/// original, so prefer [`generate_pair`](crate::generate_pair) in loops.
pub fn local_pixel_shuffling(
    mut cube: ArrayViewMut3<'_, f32>,
    config: &LocalShuffleConfig,
    rng: &mut CubeRng,
) -> Result<()> {
    let shape = dim3(cube.dim());
    config.validate(shape)?;
    let out = cube.as_slice_mut().ok_or(Error::NotContiguous {
        what: "shuffled cube",
    })?;
    let original = out.to_vec();
    shuffle_blocks(
        &original,
        out,
        shape,
        config,
        rng,
        &mut ShuffleScratch::default(),
        None,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cube_rng;
    use ndarray::Array3;

    #[test]
    fn permute_is_uniform_over_all_orders() {
        // Three elements: 6 orders; seven elements exercise the batched path.
        let mut rng = cube_rng(11, 0, 0);
        let mut counts = std::collections::HashMap::new();
        for _ in 0..60_000 {
            let mut v = [0.0f32, 1.0, 2.0];
            permute(&mut v, &mut rng);
            *counts.entry(v.map(|x| x as u8)).or_insert(0usize) += 1;
        }
        assert_eq!(counts.len(), 6);
        for (order, c) in &counts {
            assert!((*c as f64 - 10_000.0).abs() < 450.0, "{order:?}: {c}");
        }
        // Position of element 0 after permuting 8 values is uniform over 8 places.
        let mut place = [0usize; 8];
        for _ in 0..80_000 {
            let mut v = [0.0f32, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0];
            permute(&mut v, &mut rng);
            let mut sorted = v;
            sorted.sort_by(f32::total_cmp);
            assert_eq!(sorted, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
            place[v.iter().position(|&x| x == 0.0).unwrap()] += 1;
        }
        for c in place {
            assert!((c as f64 - 10_000.0).abs() < 450.0, "{place:?}");
        }
    }

    #[test]
    fn vector_and_portable_kernels_write_the_same_values() {
        // The AVX-512 paths (where the CPU has them) against the portable ones: same
        // output and same stream position, for the paper's blocks, blocks four deep,
        // blocks too deep for the vector row kernel, and blocks too large for the lane
        // permutations, on the whole cube and restricted to two boxes.
        let vector = has_avx512_vl();
        for (shape, divisor) in [
            ([64, 64, 32], 10),
            ([40, 40, 40], 10),
            ([30, 20, 50], 10),
            ([40, 40, 30], 5),
        ] {
            // Not a multiple of 16: the last group of draws is partial.
            let config = LocalShuffleConfig {
                n_blocks: 2_003,
                block_divisor: divisor,
            };
            let len = shape.iter().product::<usize>();
            let original: Vec<f32> = (0..len).map(|v| v as f32).collect();
            let boxes = [
                Box3 {
                    origin: [3, 4, 5],
                    size: [10, 8, 6],
                },
                Box3 {
                    origin: [12, 2, 1],
                    size: [5, 12, 9],
                },
            ];
            let mut scratch = ShuffleScratch::default();
            for (seed, needed) in [
                (0, None),
                (1, None),
                (2, Some(&boxes[..])),
                (3, Some(&boxes[..1])),
            ] {
                let run = |vector: bool, scratch: &mut ShuffleScratch| {
                    let mut out = original.clone();
                    let mut rng = cube_rng(seed, 1, 2);
                    shuffle_blocks_with(
                        &original, &mut out, shape, &config, &mut rng, scratch, needed, vector,
                    );
                    (out, rng)
                };
                let (fast, rng_fast) = run(vector, &mut scratch);
                let (portable, rng_portable) = run(false, &mut ShuffleScratch::default());
                assert!(fast == portable, "{shape:?} seed {seed}");
                assert_eq!(rng_fast, rng_portable);
                // Every voxel still holds a value of the original.
                assert!(fast.iter().all(|&v| v >= 0.0 && (v as usize) < len));
            }
        }
    }

    /// [`shuffle_blocks`] of `original` with a fresh scratch and `cube_rng(seed, 0, 0)`.
    fn shuffled(
        original: &[f32],
        shape: [usize; 3],
        config: &LocalShuffleConfig,
        seed: u64,
        needed: Option<&[Box3]>,
    ) -> Vec<f32> {
        let mut out = original.to_vec();
        let mut scratch = ShuffleScratch::default();
        shuffle_blocks(
            original,
            &mut out,
            shape,
            config,
            &mut cube_rng(seed, 0, 0),
            &mut scratch,
            needed,
        );
        out
    }

    #[test]
    fn restricted_shuffle_writes_only_blocks_that_touch_the_boxes() {
        // With `needed`, a block that misses every box is skipped whole (nothing
        // outside the union of the touching blocks changes), and every changed voxel
        // still comes from within five voxels along x and y and two along z.
        let shape = [64, 64, 32];
        let config = LocalShuffleConfig::default();
        let original: Vec<f32> = (0..64 * 64 * 32).map(|v| v as f32).collect();
        let boxes = [Box3 {
            origin: [20, 30, 10],
            size: [12, 9, 7],
        }];
        for seed in 0..5 {
            let out = shuffled(&original, shape, &config, seed, Some(&boxes));
            let mut changed_inside = 0;
            for (i, (&o, &v)) in original.iter().zip(&out).enumerate() {
                if o == v {
                    continue;
                }
                let p = [i / 2048, (i / 32) % 64, i % 32];
                // A block touching the box reaches at most (6-1, 6-1, 3-1) beyond it.
                for (axis, reach) in [5, 5, 2].into_iter().enumerate() {
                    let (lo, hi) = (
                        boxes[0].origin[axis],
                        boxes[0].origin[axis] + boxes[0].size[axis],
                    );
                    assert!(
                        p[axis] + reach >= lo && p[axis] < hi + reach,
                        "seed {seed} {p:?}"
                    );
                }
                let s = v as usize;
                let q = [s / 2048, (s / 32) % 64, s % 32];
                for (axis, reach) in [5, 5, 2].into_iter().enumerate() {
                    assert!(p[axis].abs_diff(q[axis]) <= reach);
                }
                changed_inside +=
                    usize::from(boxes[0].contains_row(p[0], p[1]) && (10..17).contains(&p[2]));
            }
            // Most of the box's 756 voxels are covered and changed.
            assert!(changed_inside > 400, "seed {seed}: {changed_inside}");
        }
    }

    #[test]
    fn single_block_only_permutes_values_inside_the_block() {
        // One block at a time: everything outside is untouched, inside is a permutation.
        let shape = [20, 30, 10];
        let config = LocalShuffleConfig {
            n_blocks: 1,
            block_divisor: 5,
        };
        let original: Vec<f32> = (0..6000).map(|v| v as f32).collect();
        for seed in 0..200 {
            let out = shuffled(&original, shape, &config, seed, None);
            let changed: Vec<usize> = (0..6000).filter(|&i| out[i] != original[i]).collect();
            let mut before: Vec<f32> = changed.iter().map(|&i| original[i]).collect();
            let mut after: Vec<f32> = changed.iter().map(|&i| out[i]).collect();
            before.sort_by(f32::total_cmp);
            after.sort_by(f32::total_cmp);
            assert_eq!(before, after);
            // The changed voxels fit in one block of at most 4 x 6 x 2.
            let coords = |i: usize| [i / 300, (i / 10) % 30, i % 10];
            for axis in 0..3 {
                let lo = changed.iter().map(|&i| coords(i)[axis]).min().unwrap_or(0);
                let hi = changed.iter().map(|&i| coords(i)[axis]).max().unwrap_or(0);
                assert!(hi - lo < [4, 6, 2][axis], "seed {seed} axis {axis}");
            }
        }
    }

    #[test]
    fn every_output_value_comes_from_its_neighbourhood_in_the_original() {
        // Paper config on a 64x64x32 cube: a voxel can only receive a value from the same
        // block, at most (6-1, 6-1, 3-1) voxels away along each axis.
        let shape = (64, 64, 32);
        let cube = Array3::from_shape_fn(shape, |(i, j, k)| (i * 4096 + j * 64 + k) as f32);
        let mut out = cube.clone();
        let mut rng = cube_rng(5, 0, 0);
        local_pixel_shuffling(out.view_mut(), &LocalShuffleConfig::default(), &mut rng).unwrap();
        let mut changed = 0;
        for ((i, j, k), &v) in out.indexed_iter() {
            let v = v as usize;
            let (si, sj, sk) = (v / 4096, (v / 64) % 64, v % 64);
            assert!(si.abs_diff(i) <= 5 && sj.abs_diff(j) <= 5 && sk.abs_diff(k) <= 2);
            changed += usize::from(v != i * 4096 + j * 64 + k);
        }
        // 10,000 blocks of about 24.5 voxels cover most of the 131,072 voxels.
        assert!(changed > 60_000, "{changed}");
    }

    #[test]
    fn rejects_small_and_non_contiguous_cubes() {
        let mut rng = cube_rng(0, 0, 0);
        let mut small = Array3::<f32>::zeros((64, 64, 9));
        let err = local_pixel_shuffling(small.view_mut(), &LocalShuffleConfig::default(), &mut rng)
            .unwrap_err();
        assert!(err.to_string().contains("deps = 9"), "{err}");
        let mut t = Array3::<f32>::zeros((20, 20, 20));
        let err = local_pixel_shuffling(
            t.view_mut().reversed_axes(),
            &LocalShuffleConfig::default(),
            &mut rng,
        )
        .unwrap_err();
        assert!(matches!(err, Error::NotContiguous { .. }), "{err}");
    }
}
