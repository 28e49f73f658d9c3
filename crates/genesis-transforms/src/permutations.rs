//! Uniform random permutations for many small blocks at once, the local shuffle's
//! Fisher-Yates shuffles computed sixteen blocks at a time.
//!
//! A cube's 10,000 shuffle blocks each need a uniformly random order of their voxels.
//! One Fisher-Yates shuffle per block is a chain of dependent swaps that ends at a
//! random count, which costs about 2.5 ns per voxel on this crate's test machine. The
//! permutations do not depend on each other or on the cube, so here they are drawn
//! first, for blocks grouped by length: sixteen blocks of (nearly) the same length run
//! the "inside-out" Fisher-Yates in the sixteen lanes of AVX-512 registers, with a
//! gather and a scatter per step instead of sixteen swaps. The portable path makes the
//! same draws and runs each lane's steps on its own, so both give the same permutations.

#[cfg(target_arch = "x86_64")]
use crate::rng::below_lanes;
use crate::rng::{CubeRng, NoiseRng, draw_word};

/// Blocks per group: one per 32-bit lane of a 512-bit register.
const GROUP: usize = crate::rng::DRAW_LANES;

/// Rows of a group's working table; a block's permutation plus the entries read past
/// its end (see [`Permutations::of`]) fit in them.
const POOL_ROWS: usize = 128;

/// Distance in the table between consecutive entries of one block's permutation.
pub(crate) const STRIDE: usize = GROUP;

/// Entries read past a block's last index by kernels that move four voxels at a time.
pub(crate) const SLACK_ROWS: usize = 4;

/// The longest block [`Permutations`] takes.
pub(crate) const MAX_LEN: usize = POOL_ROWS - SLACK_ROWS;

/// Permutations of `len` indices for a list of blocks, in one table: entry `k` of block
/// `b`'s permutation is `table[starts[b] + k * STRIDE]`. A group's sixteen blocks are
/// interleaved, each row of sixteen bytes holding entry `k` of every lane: the vector
/// path stores each row of its working registers as it is, with no transpose.
///
/// Use: [`draw`](Self::draw) for the blocks' lengths, then read with
/// [`of`](Self::of). The buffers are kept between cubes, so
/// steady state allocates nothing.
#[derive(Debug, Clone, Default)]
pub(crate) struct Permutations {
    /// Where each block's entries start in `table`.
    starts: Vec<u32>,
    /// Groups of sixteen interleaved permutations, each [`SLACK_ROWS`] rows longer
    /// than the group's longest block; entries past a block's length are 0. The table
    /// has [`GROUP`] bytes of slack at the end.
    table: Vec<u8>,
    /// Block indices in order of length (stable).
    order: Vec<u32>,
    /// One group's rows while it is drawn, as 32-bit lanes (the vector path), or its
    /// draws (the portable one).
    pool: Vec<u32>,
}

impl Permutations {
    /// Entry `k` of block `block`'s permutation: the voxel (in the block's C order)
    /// whose value goes to voxel `k`. Defined, and below [`POOL_ROWS`], for `k` up to
    /// the block's length plus [`SLACK_ROWS`] minus one.
    #[cfg(test)]
    pub(crate) fn index(&self, block: usize, k: usize) -> usize {
        usize::from(self.table[self.starts[block] as usize + k * STRIDE])
    }

    /// Block `block`'s permutation from its first entry on, entry `k` at `k * STRIDE`:
    /// entries `k` below the block's length plus [`SLACK_ROWS`] are its own (0 past its
    /// length), all below [`POOL_ROWS`].
    #[inline]
    pub(crate) fn of(&self, block: usize) -> &[u8] {
        &self.table[self.starts[block] as usize..]
    }

    /// Draws a uniformly random permutation for every block, of `lens[block]` indices
    /// (1 to [`MAX_LEN`]), from lanes seeded by one draw of `rng`. `vector` chooses the
    /// AVX-512 path (the caller checked that the CPU has AVX-512F); both paths give the
    /// same table.
    pub(crate) fn draw(&mut self, lens: &[u8], rng: &mut CubeRng, vector: bool) {
        debug_assert!(
            lens.iter()
                .all(|&len| (1..=MAX_LEN).contains(&usize::from(len)))
        );
        let mut lanes = NoiseRng::new(rng);
        self.sort_by_len(lens);
        self.lay_out(lens);
        if self.pool.len() < POOL_ROWS * GROUP {
            self.pool.resize(POOL_ROWS * GROUP, 0);
        }
        #[cfg(target_arch = "x86_64")]
        if vector && let Some(lanes) = crate::rng::NoiseLanes::load(&lanes) {
            // SAFETY: `NoiseLanes::load` succeeds only on CPUs with AVX-512F; `lay_out`
            // sized the table for every group and `pool` holds POOL_ROWS rows.
            unsafe { self.draw_avx512(lens, lanes) };
            return;
        }
        let _ = vector;
        self.draw_portable(lens, &mut lanes);
    }

    /// Counting sort of the block indices by length, stable.
    fn sort_by_len(&mut self, lens: &[u8]) {
        let mut counts = [0u32; MAX_LEN + 2];
        for &len in lens {
            counts[usize::from(len) + 1] += 1;
        }
        for i in 1..counts.len() {
            counts[i] += counts[i - 1];
        }
        self.order.clear();
        self.order.resize(lens.len(), 0);
        for (block, &len) in lens.iter().enumerate() {
            let slot = &mut counts[usize::from(len)];
            self.order[*slot as usize] = block as u32;
            *slot += 1;
        }
    }

    /// Places each group in the table and records every block's start.
    fn lay_out(&mut self, lens: &[u8]) {
        self.starts.clear();
        self.starts.resize(lens.len(), 0);
        let mut size = 0;
        for group in self.order.chunks(GROUP) {
            let longest = group.last().map_or(0, |&b| usize::from(lens[b as usize]));
            let rows = longest + SLACK_ROWS;
            for (lane, &block) in group.iter().enumerate() {
                self.starts[block as usize] = (size + lane) as u32;
            }
            size += rows * GROUP;
        }
        // Both paths write every byte of every group, so old contents need no clearing.
        if self.table.len() < size + GROUP {
            self.table.resize(size + GROUP, 0);
        }
    }

    /// Lengths of one group's lanes (0 for lanes past a short last group) and its
    /// longest block.
    fn group_lens(lens: &[u8], group: &[u32]) -> ([u32; GROUP], usize) {
        let mut group_lens = [0u32; GROUP];
        for (lane, &block) in group.iter().enumerate() {
            group_lens[lane] = u32::from(lens[block as usize]);
        }
        let longest = group_lens.iter().max().map_or(0, |&l| l as usize);
        (group_lens, longest)
    }

    /// The steps of [`draw_avx512`](Self::draw_avx512), one lane at a time.
    fn draw_portable(&mut self, lens: &[u8], lanes: &mut NoiseRng) {
        let mut start = 0;
        for group in self.order.chunks(GROUP) {
            let (group_lens, longest) = Self::group_lens(lens, group);
            // Every step's draws first, kept in `pool`. A redraw can happen only after
            // a draw lands below its bound (for 16 blocks of 108 voxels, once in about
            // 45,000 groups), so the draws are made in one straight pass, and if any
            // lands that low the group's draws are made again with `below_lanes`,
            // which redraws exactly where the vector path does.
            let saved = lanes.clone();
            let mut near = false;
            for i in 1..longest {
                let words = lanes.step_raw();
                let bound = i as u64 + 1;
                let row = &mut self.pool[i * GROUP..(i + 1) * GROUP];
                for (lane, pick) in row.iter_mut().enumerate() {
                    let word = draw_word(&words, lane);
                    let product = word * bound;
                    *pick = (product >> 32) as u32;
                    near |= (product & 0xffff_ffff) < bound;
                }
            }
            if near {
                *lanes = saved;
                for i in 1..longest {
                    let mut active = 0u16;
                    for (lane, &len) in group_lens.iter().enumerate() {
                        active |= u16::from(len > i as u32) << lane;
                    }
                    let picks = lanes.below_lanes(&[i as u32 + 1; GROUP], active);
                    self.pool[i * GROUP..(i + 1) * GROUP].copy_from_slice(&picks);
                }
            }
            // Then each lane's shuffle on its own, written to its column of the table.
            let rows = longest + SLACK_ROWS;
            let table = &mut self.table[start..start + rows * GROUP];
            table.fill(0);
            let mut order = [0u8; POOL_ROWS];
            for (lane, &len) in group_lens.iter().enumerate() {
                let len = len as usize;
                order[0] = 0;
                for i in 1..len {
                    let j = self.pool[i * GROUP + lane] as usize;
                    order[i] = order[j];
                    order[j] = i as u8;
                }
                for (row, &entry) in table.chunks_exact_mut(GROUP).zip(&order[..len]) {
                    row[lane] = entry;
                }
            }
            start += rows * GROUP;
        }
    }

    /// Inside-out Fisher-Yates for sixteen blocks at once: at step `i` every block
    /// longer than `i` draws `j` uniform in `0..=i` ([`below_lanes`]), then
    /// `a[i] = a[j]`, `a[j] = i`, with one gather, one store and one scatter over the
    /// lanes' columns.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `lay_out` ran and `pool` holds [`POOL_ROWS`] rows.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn draw_avx512(&mut self, lens: &[u8], mut lanes: crate::rng::NoiseLanes) {
        use std::arch::x86_64::*;
        let lane_index = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let pool = self.pool.as_mut_ptr().cast::<i32>();
        let mut start = 0;
        for group in self.order.chunks(GROUP) {
            let (lens_of_lanes, longest) = Self::group_lens(lens, group);
            // SAFETY (this block): `lens_of_lanes` is 16 u32; every gather and scatter
            // index is j * 16 + lane with j <= i < longest <= MAX_LEN, inside the
            // pool's POOL_ROWS * 16 entries; the table holds `longest + SLACK_ROWS <=
            // POOL_ROWS` rows of 16 bytes from `start` (see `lay_out`), one per row of
            // the pool.
            unsafe {
                let group_lens = _mm512_loadu_si512(lens_of_lanes.as_ptr().cast());
                _mm512_storeu_si512(pool.cast(), _mm512_setzero_si512());
                for i in 1..longest {
                    let step = _mm512_set1_epi32(i as i32);
                    let active = _mm512_cmpgt_epu32_mask(group_lens, step);
                    let bound = _mm512_set1_epi32(i as i32 + 1);
                    let picks = below_lanes(&mut lanes, bound, active);
                    let at = _mm512_add_epi32(_mm512_slli_epi32::<4>(picks), lane_index);
                    let moved = _mm512_mask_i32gather_epi32::<4>(
                        _mm512_setzero_si512(),
                        active,
                        at,
                        pool.cast_const().cast(),
                    );
                    _mm512_mask_storeu_epi32(pool.add(i * GROUP).cast(), active, moved);
                    _mm512_mask_i32scatter_epi32::<4>(pool.cast(), active, at, step);
                }
                // The pool's rows become the group's rows of the table, entries past a
                // lane's length set to 0, as in `draw_portable`.
                let table = self.table.as_mut_ptr().add(start);
                let rows = longest + SLACK_ROWS;
                for row in 0..rows {
                    let within = _mm512_cmpgt_epu32_mask(group_lens, _mm512_set1_epi32(row as i32));
                    let values = _mm512_maskz_loadu_epi32(within, pool.add(row * GROUP).cast());
                    _mm_storeu_si128(table.add(row * GROUP).cast(), _mm512_cvtepi32_epi8(values));
                }
                start += rows * GROUP;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cube_rng;

    fn permutation(perms: &Permutations, block: usize, len: usize) -> Vec<usize> {
        (0..len).map(|k| perms.index(block, k)).collect()
    }

    fn has_avx512() -> bool {
        #[cfg(target_arch = "x86_64")]
        return std::arch::is_x86_feature_detected!("avx512f");
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    #[test]
    fn every_block_gets_a_permutation_of_its_indices() {
        let lens: Vec<u8> = (0..500).map(|i| (1 + (i * 37) % MAX_LEN) as u8).collect();
        let mut perms = Permutations::default();
        for vector in [false, has_avx512()] {
            perms.draw(&lens, &mut cube_rng(1, 2, 3), vector);
            for (block, &len) in lens.iter().enumerate() {
                let len = usize::from(len);
                let mut p = permutation(&perms, block, len);
                p.sort_unstable();
                assert_eq!(p, (0..len).collect::<Vec<_>>(), "block {block}");
                for k in len..len + SLACK_ROWS {
                    assert!(perms.index(block, k) < POOL_ROWS);
                }
            }
        }
    }

    #[test]
    fn vector_and_portable_paths_draw_the_same_table() {
        if !has_avx512() {
            return;
        }
        let mut rng = cube_rng(9, 0, 0);
        for round in 0..20 {
            let n = 1 + (rng.next() % 3000) as usize;
            let lens: Vec<u8> = (0..n)
                .map(|_| {
                    let [a, b, c] = rng.below_batch([6, 5, 4]);
                    ((a + 1) * (b + 1) * (c + 1)) as u8
                })
                .collect();
            let draw = |vector: bool| {
                let mut perms = Permutations::default();
                let mut r = cube_rng(round, 5, 6);
                perms.draw(&lens, &mut r, vector);
                (perms.table, perms.starts, r)
            };
            assert!(draw(true) == draw(false), "round {round}");
        }
    }

    #[test]
    fn permutations_are_uniform_over_all_orders() {
        // Blocks of 3 (6 orders) and of 8 (position of index 0), drawn in groups mixed
        // with other lengths, so that lanes are active for different step counts.
        let lens = [3u8, 3, 8, 8, 5, 3, 8, 2, 3, 8];
        let mut counts = std::collections::HashMap::new();
        let mut place = [0usize; 8];
        let mut perms = Permutations::default();
        for round in 0..6_000 {
            perms.draw(
                &lens,
                &mut cube_rng(round, 0, 0),
                has_avx512() && round % 2 == 0,
            );
            for (block, &len) in lens.iter().enumerate() {
                let p = permutation(&perms, block, usize::from(len));
                if len == 3 {
                    *counts.entry(p).or_insert(0usize) += 1;
                } else if len == 8 {
                    place[p.iter().position(|&x| x == 0).unwrap()] += 1;
                }
            }
        }
        // 24,000 draws of 3: 4,000 per order; 24,000 of 8: 3,000 per place.
        assert_eq!(counts.len(), 6);
        for (order, c) in &counts {
            assert!((*c as f64 - 4_000.0).abs() < 300.0, "{order:?}: {c}");
        }
        for c in place {
            assert!((c as f64 - 3_000.0).abs() < 250.0, "{place:?}");
        }
    }
}
