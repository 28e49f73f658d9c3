//! Uniform random permutations for many small blocks at once, the local shuffle's
//! Fisher-Yates shuffles computed sixteen blocks at a time.
//!
//! A cube's 10,000 shuffle blocks each need a uniformly random order of their voxels.
//! One Fisher-Yates shuffle per block is a chain of dependent swaps that ends at a
//! random count, which costs about 2.5 ns per voxel on this crate's test machine. The
//! permutations do not depend on each other or on the cube, so here they are drawn
//! first, for blocks grouped by length: sixteen blocks of (nearly) the same length run
//! the "inside-out" Fisher-Yates in the sixteen lanes of AVX-512 registers, with a
//! gather and a scatter per step instead of sixteen swaps. The portable path runs the
//! same steps lane by lane with the same draws, so both give the same permutations.

use crate::rng::{CubeRng, NoiseRng};

/// Blocks per group: one per 32-bit lane of a 512-bit register.
const GROUP: usize = 16;

/// Rows of a group's working table; a block's permutation plus the rows read past its
/// end (see [`Permutations::index`]) fit in them.
const POOL_ROWS: usize = 128;

/// Rows read past a block's last index by kernels that move four voxels at a time.
pub(crate) const SLACK_ROWS: usize = 4;

/// The longest block [`Permutations`] takes.
pub(crate) const MAX_LEN: usize = POOL_ROWS - SLACK_ROWS;

/// `2^32 mod b` for every bound `b` up to [`POOL_ROWS`]: Lemire's rejection threshold
/// for a uniform draw below `b` from 32 random bits.
const THRESHOLDS: [u32; POOL_ROWS + 1] = {
    let mut table = [0u32; POOL_ROWS + 1];
    let mut b = 1;
    while b <= POOL_ROWS {
        table[b] = ((1u64 << 32) % b as u64) as u32;
        b += 1;
    }
    table
};

/// Permutations of `len` indices for a list of blocks, in an interleaved table: entry
/// `k` of block `b`'s permutation is `table[starts[b] + 16 * k]`.
///
/// Use: [`clear`](Self::clear), [`push`](Self::push) every block's length in order,
/// [`draw`](Self::draw), then read with [`index`](Self::index). The buffers are kept
/// between cubes, so steady state allocates nothing.
#[derive(Debug, Clone, Default)]
pub(crate) struct Permutations {
    /// Each block's length, in push order.
    lens: Vec<u8>,
    /// Where each block's entries start in `table`.
    starts: Vec<u32>,
    /// Groups of sixteen permutations, row by row, each group [`SLACK_ROWS`] rows longer
    /// than its longest block; every entry is below [`POOL_ROWS`].
    table: Vec<u8>,
    /// Block indices in order of length (stable).
    order: Vec<u32>,
    /// One group's rows while it is drawn, as 32-bit lanes.
    pool: Vec<u32>,
}

impl Permutations {
    /// Forgets the blocks of the last cube.
    pub(crate) fn clear(&mut self) {
        self.lens.clear();
    }

    /// Adds a block of `len` voxels (1 to [`MAX_LEN`]).
    #[inline]
    pub(crate) fn push(&mut self, len: usize) {
        debug_assert!((1..=MAX_LEN).contains(&len));
        self.lens.push(len as u8);
    }

    /// Entry `k` of block `block`'s permutation: the voxel (in the block's C order)
    /// whose value goes to voxel `k`. Defined, and below [`POOL_ROWS`], for `k` up to
    /// the block's length plus [`SLACK_ROWS`] minus one.
    #[inline]
    pub(crate) fn index(&self, block: usize, k: usize) -> usize {
        usize::from(self.table[self.starts[block] as usize + GROUP * k])
    }

    /// The table and the start of block `block` in it, for kernels that read entries
    /// through a pointer: entry `k` is at `start + 16 * k`, within the table for `k`
    /// below the block's length plus [`SLACK_ROWS`].
    #[inline]
    pub(crate) fn raw(&self, block: usize) -> (&[u8], usize) {
        (&self.table, self.starts[block] as usize)
    }

    /// Draws a uniformly random permutation for every pushed block from lanes seeded
    /// by one draw of `rng`. `vector` chooses the AVX-512 path (the caller checked that
    /// the CPU has AVX-512F); both paths give the same table.
    pub(crate) fn draw(&mut self, rng: &mut CubeRng, vector: bool) {
        let mut lanes = NoiseRng::new(rng);
        self.sort_by_len();
        self.lay_out();
        if self.pool.len() < POOL_ROWS * GROUP {
            self.pool.resize(POOL_ROWS * GROUP, 0);
        }
        #[cfg(target_arch = "x86_64")]
        if vector && let Some(lanes) = crate::rng::NoiseLanes::load(&lanes) {
            // SAFETY: `NoiseLanes::load` succeeds only on CPUs with AVX-512F; `lay_out`
            // sized the table for every group and `pool` holds POOL_ROWS rows.
            unsafe { self.draw_avx512(lanes) };
            return;
        }
        let _ = vector;
        self.draw_portable(&mut lanes);
    }

    /// Counting sort of the block indices by length, stable.
    fn sort_by_len(&mut self) {
        let mut counts = [0u32; MAX_LEN + 2];
        for &len in &self.lens {
            counts[usize::from(len) + 1] += 1;
        }
        for i in 1..counts.len() {
            counts[i] += counts[i - 1];
        }
        self.order.clear();
        self.order.resize(self.lens.len(), 0);
        for (block, &len) in self.lens.iter().enumerate() {
            let slot = &mut counts[usize::from(len)];
            self.order[*slot as usize] = block as u32;
            *slot += 1;
        }
    }

    /// Places each group in the table and records every block's start.
    fn lay_out(&mut self) {
        self.starts.clear();
        self.starts.resize(self.lens.len(), 0);
        let mut size = 0;
        for group in self.order.chunks(GROUP) {
            let longest = group
                .last()
                .map_or(0, |&b| usize::from(self.lens[b as usize]));
            for (lane, &block) in group.iter().enumerate() {
                self.starts[block as usize] = (size + lane) as u32;
            }
            size += (longest + SLACK_ROWS) * GROUP;
        }
        self.table.clear();
        self.table.resize(size, 0);
    }

    /// Lengths of one group's lanes (0 for lanes past a short last group) and its
    /// longest block.
    fn group_lens(&self, group: &[u32]) -> ([u32; GROUP], usize) {
        let mut lens = [0u32; GROUP];
        for (lane, &block) in group.iter().enumerate() {
            lens[lane] = u32::from(self.lens[block as usize]);
        }
        (lens, lens.iter().max().map_or(0, |&l| l as usize))
    }

    /// The steps of [`draw_avx512`](Self::draw_avx512), one lane at a time.
    fn draw_portable(&mut self, lanes: &mut NoiseRng) {
        let mut start = 0;
        for g in 0..self.order.len().div_ceil(GROUP) {
            let group = &self.order[g * GROUP..((g + 1) * GROUP).min(self.order.len())];
            let (lens, longest) = self.group_lens(group);
            let pool = &mut self.pool;
            pool[..GROUP].fill(0);
            for i in 1..longest {
                let bound = i as u32 + 1;
                let active = |lane: usize| lens[lane] > i as u32;
                let picks = loop {
                    let words = lanes.step_raw();
                    let mut picks = [0usize; GROUP];
                    let mut rejected = false;
                    for (lane, pick) in picks.iter_mut().enumerate() {
                        let word = words[lane / 2] >> (32 * (lane % 2));
                        let product = (word & 0xffff_ffff) * u64::from(bound);
                        *pick = (product >> 32) as usize;
                        rejected |= active(lane) && (product as u32) < THRESHOLDS[i + 1];
                    }
                    if !rejected {
                        break picks;
                    }
                };
                for (lane, &j) in picks.iter().enumerate() {
                    if active(lane) {
                        pool[i * GROUP + lane] = pool[j * GROUP + lane];
                        pool[j * GROUP + lane] = i as u32;
                    }
                }
            }
            let rows = longest + SLACK_ROWS;
            for (entry, &value) in self.table[start..start + rows * GROUP]
                .iter_mut()
                .zip(&pool[..rows * GROUP])
            {
                *entry = value as u8;
            }
            start += rows * GROUP;
        }
    }

    /// Inside-out Fisher-Yates for sixteen blocks at once: at step `i` every block
    /// longer than `i` draws `j` uniform in `0..=i` (Lemire's multiply and reject on 32
    /// bits, redrawing all lanes if an active one is rejected), then `a[i] = a[j]`,
    /// `a[j] = i`, with one gather, one store and one scatter over the lanes' columns.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `lay_out` ran and `pool` holds [`POOL_ROWS`] rows.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn draw_avx512(&mut self, mut lanes: crate::rng::NoiseLanes) {
        use std::arch::x86_64::*;
        let lane_index = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let pool = self.pool.as_mut_ptr().cast::<i32>();
        let mut start = 0;
        for g in 0..self.order.len().div_ceil(GROUP) {
            let group = &self.order[g * GROUP..((g + 1) * GROUP).min(self.order.len())];
            let (lens, longest) = self.group_lens(group);
            // SAFETY (this block): `lens` is 16 u32; every gather and scatter index is
            // j * 16 + lane with j <= i < longest <= MAX_LEN, inside the pool's
            // POOL_ROWS * 16 entries; the table holds `longest + SLACK_ROWS` rows of 16
            // bytes from `start` (see `lay_out`), and those rows are below POOL_ROWS.
            unsafe {
                let lens = _mm512_loadu_si512(lens.as_ptr().cast());
                _mm512_storeu_si512(pool.cast(), _mm512_setzero_si512());
                for i in 1..longest {
                    let step = _mm512_set1_epi32(i as i32);
                    let active = _mm512_cmpgt_epu32_mask(lens, step);
                    let bound = _mm512_set1_epi32(i as i32 + 1);
                    let threshold = _mm512_set1_epi32(THRESHOLDS[i + 1] as i32);
                    let picks = loop {
                        let words = crate::rng::step_lanes(&mut lanes.state);
                        // Even 32-bit lanes take each word's low half, odd lanes its
                        // high half, as `draw_portable` does.
                        let even = _mm512_mul_epu32(words, bound);
                        let odd = _mm512_mul_epu32(_mm512_srli_epi64::<32>(words), bound);
                        let picks =
                            _mm512_mask_blend_epi32(0xaaaa, _mm512_srli_epi64::<32>(even), odd);
                        let low =
                            _mm512_mask_blend_epi32(0xaaaa, even, _mm512_slli_epi64::<32>(odd));
                        if _mm512_mask_cmplt_epu32_mask(active, low, threshold) == 0 {
                            break picks;
                        }
                    };
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
                let table = self.table.as_mut_ptr().add(start);
                let rows = longest + SLACK_ROWS;
                for row in 0..rows {
                    let values = _mm512_loadu_si512(pool.add(row * GROUP).cast());
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
        let lens: Vec<usize> = (0..500).map(|i| 1 + (i * 37) % MAX_LEN).collect();
        let mut perms = Permutations::default();
        for vector in [false, has_avx512()] {
            perms.clear();
            for &len in &lens {
                perms.push(len);
            }
            perms.draw(&mut cube_rng(1, 2, 3), vector);
            for (block, &len) in lens.iter().enumerate() {
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
            let lens: Vec<usize> = (0..n)
                .map(|_| {
                    let [a, b, c] = rng.below_batch([6, 5, 4]);
                    ((a + 1) * (b + 1) * (c + 1)) as usize
                })
                .collect();
            let draw = |vector: bool| {
                let mut perms = Permutations::default();
                for &len in &lens {
                    perms.push(len);
                }
                let mut r = cube_rng(round, 5, 6);
                perms.draw(&mut r, vector);
                (perms.table, perms.starts, r)
            };
            assert!(draw(true) == draw(false), "round {round}");
        }
    }

    #[test]
    fn permutations_are_uniform_over_all_orders() {
        // Blocks of 3 (6 orders) and of 8 (position of index 0), drawn in groups mixed
        // with other lengths, so that lanes are active for different step counts.
        let mut counts = std::collections::HashMap::new();
        let mut place = [0usize; 8];
        let mut perms = Permutations::default();
        for round in 0..6_000 {
            perms.clear();
            for len in [3, 3, 8, 8, 5, 3, 8, 2, 3, 8] {
                perms.push(len);
            }
            perms.draw(&mut cube_rng(round, 0, 0), has_avx512() && round % 2 == 0);
            for (block, len) in [3, 3, 8, 8, 5, 3, 8, 2, 3, 8].into_iter().enumerate() {
                let p = permutation(&perms, block, len);
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

    #[test]
    fn thresholds_are_two_to_the_32_mod_bound() {
        assert_eq!(THRESHOLDS[1], 0);
        assert_eq!(THRESHOLDS[3], 1);
        assert_eq!(THRESHOLDS[7], 4);
        assert_eq!(THRESHOLDS[100], 96);
    }
}
