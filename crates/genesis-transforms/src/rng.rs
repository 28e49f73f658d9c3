//! The per-cube random stream: xoshiro256++ seeded from (seed, epoch, cube index).
//!
//! The NumPy original draws from two global generators (`random` and `np.random`); one
//! seed there does not make runs reproducible across processes or workers. Here every
//! cube owns an independent stream derived from `(seed, epoch, cube_index)`, so a batch
//! is bit-identical whatever the thread count, batch size or order of work.

use rand::{RngCore, SeedableRng};

/// Domain tags keep the pair streams and the extraction streams apart for one seed.
const DOMAIN_PAIRS: u64 = 0x6765_6e65_7369_7331; // "genesis1"
const DOMAIN_SCANS: u64 = 0x6765_6e65_7369_7332; // "genesis2"

/// The random stream every kernel draws from: xoshiro256++ (Blackman and Vigna).
///
/// Fast (about a nanosecond per 64-bit draw), `Clone + Send`, and implementing
/// [`rand::RngCore`] and [`rand::SeedableRng`], so `rand::Rng` methods work on it.
/// Build one per cube with [`cube_rng`] (pair generation) or [`scan_rng`] (extraction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CubeRng {
    state: [u64; 4],
}

/// The stream of cube `cube_index` in epoch `epoch` of a run seeded with `seed`.
///
/// Streams for different triples are independent for all practical purposes (their
/// 256-bit states come from a 64-bit hash of the triple, expanded with SplitMix64).
pub fn cube_rng(seed: u64, epoch: u64, cube_index: u64) -> CubeRng {
    CubeRng::from_key(hash3(DOMAIN_PAIRS, seed, epoch, cube_index))
}

/// The stream for extracting cubes from scan `scan_index` of a run seeded with `seed`.
///
/// Separate from [`cube_rng`] so that extraction and pair generation with the same seed
/// never share draws.
pub fn scan_rng(seed: u64, scan_index: u64) -> CubeRng {
    CubeRng::from_key(hash3(DOMAIN_SCANS, seed, 0, scan_index))
}

/// One xoshiro256++ step of the state words `s0..s3`: the output, and the words
/// advanced. Shared by [`CubeRng`] and the lanes of [`NoiseRng`].
#[inline(always)]
fn xoshiro_step([s0, s1, s2, s3]: [&mut u64; 4]) -> u64 {
    let result = s0.wrapping_add(*s3).rotate_left(23).wrapping_add(*s0);
    let t = *s1 << 17;
    *s2 ^= *s0;
    *s3 ^= *s1;
    *s1 ^= *s2;
    *s0 ^= *s3;
    *s2 ^= t;
    *s3 = s3.rotate_left(45);
    result
}

/// Whether the low half `low` of a 32-bit Lemire product with `bound` falls in the
/// rejection zone, `low < 2^32 mod bound`.
#[inline]
fn in_rejection_zone(low: u32, bound: u32) -> bool {
    u64::from(low) < (1u64 << 32) % u64::from(bound)
}

/// SplitMix64's output function: a bijection on u64 with good avalanche.
#[inline]
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn hash3(domain: u64, a: u64, b: u64, c: u64) -> u64 {
    let h = mix64(domain ^ mix64(a));
    let h = mix64(h ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    mix64(h ^ c.wrapping_mul(0xd1b5_4a32_d192_ed03))
}

impl CubeRng {
    /// Expands a 64-bit key into a full state with SplitMix64, as the xoshiro authors
    /// recommend.
    fn from_key(key: u64) -> Self {
        let mut x = key;
        let mut state = [0u64; 4];
        for word in &mut state {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            *word = mix64(x);
        }
        Self::from_state(state)
    }

    fn from_state(state: [u64; 4]) -> Self {
        if state == [0; 4] {
            // The all-zero state is the one fixed point of xoshiro; any other will do.
            return Self::from_key(0x853c_49e6_748f_ea9b);
        }
        Self { state }
    }

    /// The next 64 random bits.
    #[inline(always)]
    pub(crate) fn next(&mut self) -> u64 {
        let [s0, s1, s2, s3] = &mut self.state;
        xoshiro_step([s0, s1, s2, s3])
    }

    /// Uniform in `[0, 1)` with 53 random bits, like Python's `random.random()`.
    #[inline]
    pub(crate) fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in `[0, bound)`, exactly unbiased (Lemire's multiply-and-reject).
    /// `bound` must be at least 1.
    #[inline]
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        debug_assert!(bound > 0);
        loop {
            let m = u128::from(self.next()) * u128::from(bound);
            let low = m as u64;
            if low >= bound || low >= bound.wrapping_neg() % bound {
                return (m >> 64) as u64;
            }
        }
    }

    /// Uniform integer in `lo..=hi` (Python's `random.randint(lo, hi)`); `lo <= hi`.
    #[inline]
    pub(crate) fn randint(&mut self, lo: usize, hi: usize) -> usize {
        debug_assert!(lo <= hi);
        lo + self.below((hi - lo + 1) as u64) as usize
    }

    /// `K` independent uniform integers, the `i`-th in `[0, bounds[i])`, from one 64-bit
    /// draw (Brackett-Rozinsky and Lemire, "Batched ranged random integer generation",
    /// 2024). Exactly unbiased. The product of the bounds must be at least 1 and fit in
    /// 64 bits; keep it below 2^48 so that rejections stay negligible.
    #[inline(always)]
    pub(crate) fn below_batch<const K: usize>(&mut self, bounds: [u64; K]) -> [u64; K] {
        let product: u64 = bounds.iter().product();
        debug_assert!(product > 0);
        loop {
            let mut leftover = self.next();
            let mut out = [0u64; K];
            for (digit, &bound) in out.iter_mut().zip(&bounds) {
                let m = u128::from(leftover) * u128::from(bound);
                *digit = (m >> 64) as u64;
                leftover = m as u64;
            }
            // `leftover` is (draw * product) mod 2^64, so this is Lemire's test for the
            // single range `product`, whose mixed-radix digits `out` holds.
            if leftover >= product || leftover >= product.wrapping_neg() % product {
                return out;
            }
        }
    }
}

/// Lanes of [`NoiseRng`]: eight xoshiro256++ streams stepped together.
const NOISE_LANES: usize = 8;
/// Noise values per step of [`NoiseRng`]: two 24-bit values per 64-bit lane output.
const NOISE_BLOCK: usize = 2 * NOISE_LANES;
/// 2^-24: the 24-bit integers become floats in `[0, 1)`.
const NOISE_SCALE: f32 = 1.0 / (1u32 << 24) as f32;

/// Uniform noise in `[0, 1)` for in- and out-painting, the counterpart of
/// `np.random.rand`: eight xoshiro256++ streams stepped in lock step, which AVX-512 does
/// in a few instructions per 16 values (one scalar 64-bit draw per two values before).
///
/// The local shuffle draws its blocks and their permutations from the same kind of
/// lanes ([`NoiseRng::below_lanes`]).
///
/// Each value has 24 random bits (f32's precision). The lanes are seeded from one draw
/// of the cube's [`CubeRng`], so the noise is as deterministic as every other draw. The
/// AVX-512 path and the portable path compute the same integers and the same exact
/// conversions, so the values are bit-identical whatever the CPU (a test checks).
#[derive(Debug, Clone)]
pub(crate) struct NoiseRng {
    state: [[u64; NOISE_LANES]; 4],
}

impl NoiseRng {
    /// Lanes seeded from one draw of `rng`, expanded with SplitMix64 (no lane can start
    /// all-zero: its four words are images of four distinct inputs under a bijection
    /// that maps only 0 to 0).
    pub(crate) fn new(rng: &mut CubeRng) -> Self {
        let mut x = rng.next();
        let mut state = [[0u64; NOISE_LANES]; 4];
        for lane in 0..NOISE_LANES {
            for word in &mut state {
                x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
                word[lane] = mix64(x);
            }
        }
        Self { state }
    }

    /// Fills `out` (at most 64 values) with uniform noise in `[0, 1)`, except the values
    /// whose bit is set in `keep`, which stay as they are. Takes one step per
    /// [`NOISE_BLOCK`] values or part of it, whatever `keep` says, so the stream depends
    /// only on the lengths filled.
    pub(crate) fn fill_except(&mut self, out: &mut [f32], keep: u64) {
        debug_assert!(out.len() <= 64);
        #[cfg(target_arch = "x86_64")]
        if let Some(mut lanes) = NoiseLanes::load(self) {
            lanes.fill_except(out, keep);
            lanes.store(self);
            return;
        }
        self.fill_except_portable(out, keep);
    }

    fn fill_except_portable(&mut self, out: &mut [f32], keep: u64) {
        for (block_index, block) in out.chunks_mut(NOISE_BLOCK).enumerate() {
            let noise = self.step();
            let bits = keep >> (block_index * NOISE_BLOCK);
            for (lane, (v, &n)) in block.iter_mut().zip(&noise).enumerate() {
                if (bits >> lane) & 1 == 0 {
                    *v = n;
                }
            }
        }
    }

    /// One xoshiro256++ step of every lane, as [`NOISE_BLOCK`] values: the top 24 bits
    /// of each lane's output, then bits 8 to 31.
    fn step(&mut self) -> [f32; NOISE_BLOCK] {
        let results = self.step_raw();
        let mut values = [0f32; NOISE_BLOCK];
        for (lane, result) in results.into_iter().enumerate() {
            values[lane] = (result >> 40) as i32 as f32 * NOISE_SCALE;
            values[NOISE_LANES + lane] = ((result >> 8) & 0xff_ffff) as i32 as f32 * NOISE_SCALE;
        }
        values
    }

    /// One xoshiro256++ step of every lane: the lanes' 64-bit outputs, the portable
    /// counterpart of [`step_lanes`].
    #[inline(always)]
    pub(crate) fn step_raw(&mut self) -> [u64; NOISE_LANES] {
        let [s0, s1, s2, s3] = &mut self.state;
        std::array::from_fn(|lane| {
            xoshiro_step([&mut s0[lane], &mut s1[lane], &mut s2[lane], &mut s3[lane]])
        })
    }
}

/// Draw `lane`'s 32 bits of one step's outputs: the low half of lane `lane / 2`'s word
/// for even `lane`, the high half for odd.
#[inline(always)]
pub(crate) fn draw_word(words: &[u64; NOISE_LANES], lane: usize) -> u64 {
    (words[lane / 2] >> (32 * (lane % 2))) & 0xffff_ffff
}

/// Draws per step of [`NoiseRng::below_lanes`]: one per 32-bit half of a lane's output.
pub(crate) const DRAW_LANES: usize = 2 * NOISE_LANES;

impl NoiseRng {
    /// Sixteen independent uniform integers, the `i`-th in `[0, bounds[i])`, from one
    /// step of the lanes: draw `i` takes the low (even `i`) or high (odd `i`) half of
    /// lane `i / 2`'s output, multiplied by its bound (Lemire). If any draw whose bit is
    /// set in `active` falls in its rejection zone, all sixteen are drawn again, so the
    /// active draws are exactly uniform and independent. Bounds are at least 1.
    /// [`below_lanes`] is the AVX-512 counterpart, with the same results.
    #[inline(always)]
    pub(crate) fn below_lanes(
        &mut self,
        bounds: &[u32; DRAW_LANES],
        active: u16,
    ) -> [u32; DRAW_LANES] {
        loop {
            let words = self.step_raw();
            let mut picks = [0u32; DRAW_LANES];
            let mut near = 0u16;
            for (lane, (pick, &bound)) in picks.iter_mut().zip(bounds).enumerate() {
                let word = draw_word(&words, lane);
                let product = word * u64::from(bound);
                *pick = (product >> 32) as u32;
                near |= u16::from((product as u32) < bound) << lane;
            }
            // As in the vector path: the exact rejection zone only when a draw is near.
            if near & active == 0 || !Self::rejects(&words, bounds, near & active) {
                return picks;
            }
        }
    }

    /// Whether a draw flagged in `near` (from `words`) falls in its exact rejection
    /// zone.
    #[cold]
    fn rejects(words: &[u64; NOISE_LANES], bounds: &[u32; DRAW_LANES], near: u16) -> bool {
        (0..DRAW_LANES).any(|lane| {
            let word = draw_word(words, lane);
            let low = (word * u64::from(bounds[lane])) as u32;
            (near >> lane) & 1 == 1 && in_rejection_zone(low, bounds[lane])
        })
    }
}

/// [`NoiseRng::below_lanes`] on lanes held in AVX-512 registers, with `bounds` as
/// sixteen 32-bit lanes: the same draws and the same redraws.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) fn below_lanes(
    lanes: &mut NoiseLanes,
    bounds: std::arch::x86_64::__m512i,
    active: u16,
) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    let odd_bounds = _mm512_srli_epi64::<32>(bounds);
    loop {
        let words = step_lanes(&mut lanes.state);
        let even = _mm512_mul_epu32(words, bounds);
        let odd = _mm512_mul_epu32(_mm512_srli_epi64::<32>(words), odd_bounds);
        let picks = _mm512_mask_blend_epi32(0xaaaa, _mm512_srli_epi64::<32>(even), odd);
        let low = _mm512_mask_blend_epi32(0xaaaa, even, _mm512_slli_epi64::<32>(odd));
        // The rejection zone of bound b is low < 2^32 mod b, inside low < b: only when
        // some draw lands below its bound (about b / 2^32 of the time) is the exact
        // zone computed.
        let near = _mm512_mask_cmplt_epu32_mask(active, low, bounds);
        if near == 0 || !rejects(near, low, bounds) {
            return picks;
        }
    }
}

/// Whether a draw flagged in `near` falls in its exact rejection zone.
#[cfg(target_arch = "x86_64")]
#[cold]
#[target_feature(enable = "avx512f")]
fn rejects(near: u16, low: std::arch::x86_64::__m512i, bounds: std::arch::x86_64::__m512i) -> bool {
    use std::arch::x86_64::*;
    let (mut lows, mut bs) = ([0u32; DRAW_LANES], [0u32; DRAW_LANES]);
    // SAFETY: two arrays of sixteen u32 (unaligned stores).
    unsafe {
        _mm512_storeu_si512(lows.as_mut_ptr().cast(), low);
        _mm512_storeu_si512(bs.as_mut_ptr().cast(), bounds);
    }
    (0..DRAW_LANES).any(|lane| (near >> lane) & 1 == 1 && in_rejection_zone(lows[lane], bs[lane]))
}

/// One xoshiro256++ step of eight lanes held in AVX-512 registers (words `s0..s3` of
/// every lane): the lanes' outputs, as [`NoiseRng::step_raw`] computes them.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) fn step_lanes(
    state: &mut [std::arch::x86_64::__m512i; 4],
) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    let [s0, s1, s2, s3] = state;
    let result = _mm512_add_epi64(_mm512_rol_epi64::<23>(_mm512_add_epi64(*s0, *s3)), *s0);
    let t = _mm512_slli_epi64::<17>(*s1);
    *s2 = _mm512_xor_si512(*s2, *s0);
    *s3 = _mm512_xor_si512(*s3, *s1);
    *s1 = _mm512_xor_si512(*s1, *s2);
    *s0 = _mm512_xor_si512(*s0, *s3);
    *s2 = _mm512_xor_si512(*s2, t);
    *s3 = _mm512_rol_epi64::<45>(*s3);
    result
}

/// Fills runs of noise: [`NoiseRng`] itself, or its lanes held in AVX-512 registers
/// ([`NoiseLanes`]) inside a loop compiled for AVX-512.
pub(crate) trait NoiseFill {
    /// Fills `out` (at most 64 values) with uniform noise in `[0, 1)`, except the values
    /// whose bit is set in `keep`; see [`NoiseRng::fill_except`].
    fn fill_except(&mut self, out: &mut [f32], keep: u64);

    /// Fills `out` with uniform noise in `[0, 1)`.
    fn fill(&mut self, out: &mut [f32]) {
        for run in out.chunks_mut(64) {
            self.fill_except(run, 0);
        }
    }
}

impl NoiseFill for NoiseRng {
    fn fill_except(&mut self, out: &mut [f32], keep: u64) {
        NoiseRng::fill_except(self, out, keep);
    }
}

/// [`NoiseRng`]'s eight lanes in AVX-512 registers, so that a loop compiled for AVX-512
/// (see `paint.rs`) keeps them there across runs instead of loading and storing the
/// state for every row. Only exists on CPUs with AVX-512F.
#[cfg(target_arch = "x86_64")]
pub(crate) struct NoiseLanes {
    pub(crate) state: [std::arch::x86_64::__m512i; 4],
}

#[cfg(target_arch = "x86_64")]
impl NoiseLanes {
    /// `rng`'s lanes, or `None` when the CPU lacks AVX-512F.
    #[inline]
    pub(crate) fn load(rng: &NoiseRng) -> Option<Self> {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return None;
        }
        // SAFETY: the CPU has AVX-512F, checked just above.
        Some(unsafe { Self::load_avx512(rng) })
    }

    #[target_feature(enable = "avx512f")]
    fn load_avx512(rng: &NoiseRng) -> Self {
        use std::arch::x86_64::*;
        let words = rng.state.as_ptr().cast::<__m512i>();
        // SAFETY: `state` is four arrays of eight u64, i.e. four 64-byte vectors
        // (unaligned loads).
        Self {
            state: [0, 1, 2, 3].map(|w| unsafe { _mm512_loadu_si512(words.add(w)) }),
        }
    }

    /// Writes the lanes back to `rng`.
    #[inline]
    pub(crate) fn store(self, rng: &mut NoiseRng) {
        // SAFETY: a `NoiseLanes` exists only on CPUs with AVX-512F (see `load`).
        unsafe { self.store_avx512(rng) }
    }

    #[target_feature(enable = "avx512f")]
    fn store_avx512(self, rng: &mut NoiseRng) {
        use std::arch::x86_64::*;
        let words = rng.state.as_mut_ptr().cast::<__m512i>();
        for (w, v) in self.state.into_iter().enumerate() {
            // SAFETY: as in `load_avx512` (unaligned stores).
            unsafe { _mm512_storeu_si512(words.add(w), v) };
        }
    }

    /// [`NoiseRng::fill_except_portable`] in AVX-512F: one step of the eight lanes per 16
    /// values, and masked stores write only the voxels that take noise.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn fill_except_avx512(&mut self, out: &mut [f32], keep: u64) {
        use std::arch::x86_64::*;
        let low24 = _mm512_set1_epi64(0xff_ffff);
        let scale = _mm512_set1_ps(NOISE_SCALE);
        for start in (0..out.len()).step_by(NOISE_BLOCK) {
            let result = step_lanes(&mut self.state);
            let high = _mm512_cvtepi64_epi32(_mm512_srli_epi64::<40>(result));
            let low =
                _mm512_cvtepi64_epi32(_mm512_and_si512(_mm512_srli_epi64::<8>(result), low24));
            let ints = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(high), low);
            let values = _mm512_mul_ps(_mm512_cvtepi32_ps(ints), scale);
            let len = (out.len() - start).min(NOISE_BLOCK);
            let in_range = (1u32 << len) - 1;
            let mask = (in_range & !((keep >> start) as u32)) as __mmask16;
            // SAFETY: `start < out.len()` and the mask lets through only lanes below
            // `len`, so every store is inside `out`.
            unsafe { _mm512_mask_storeu_ps(out.as_mut_ptr().add(start), mask, values) };
        }
    }
}

/// [`NoiseRng`] held to its portable path, for tests of the vector paths on CPUs that
/// have them.
#[cfg(test)]
pub(crate) struct PortableNoise<'a>(pub(crate) &'a mut NoiseRng);

#[cfg(test)]
impl NoiseFill for PortableNoise<'_> {
    fn fill_except(&mut self, out: &mut [f32], keep: u64) {
        self.0.fill_except_portable(out, keep);
    }
}

#[cfg(target_arch = "x86_64")]
impl NoiseFill for NoiseLanes {
    #[inline(always)]
    fn fill_except(&mut self, out: &mut [f32], keep: u64) {
        debug_assert!(out.len() <= 64);
        // SAFETY: a `NoiseLanes` exists only on CPUs with AVX-512F (see `load`).
        unsafe { self.fill_except_avx512(out, keep) }
    }
}

impl RngCore for CubeRng {
    fn next_u32(&mut self) -> u32 {
        (self.next() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.next()
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        let mut chunks = dest.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let bytes = self.next().to_le_bytes();
            rest.copy_from_slice(&bytes[..rest.len()]);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl SeedableRng for CubeRng {
    type Seed = [u8; 32];

    fn from_seed(seed: Self::Seed) -> Self {
        let mut state = [0u64; 4];
        for (word, bytes) in state.iter_mut().zip(seed.chunks_exact(8)) {
            let mut le = [0u8; 8];
            le.copy_from_slice(bytes);
            *word = u64::from_le_bytes(le);
        }
        Self::from_state(state)
    }

    fn seed_from_u64(seed: u64) -> Self {
        Self::from_key(seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_words(words: [u64; 4]) -> CubeRng {
        let mut seed = [0u8; 32];
        for (chunk, word) in seed.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        CubeRng::from_seed(seed)
    }

    #[test]
    fn matches_xoshiro256plusplus_reference_vectors() {
        // First outputs of the reference C implementation from state {1, 2, 3, 4}
        // (the same vectors the rand_xoshiro crate tests against).
        let mut rng = from_words([1, 2, 3, 4]);
        let expected: [u64; 10] = [
            41943041,
            58720359,
            3588806011781223,
            3591011842654386,
            9228616714210784205,
            9973669472204895162,
            14011001112246962877,
            12406186145184390807,
            15849039046786891736,
            10450023813501588000,
        ];
        for want in expected {
            assert_eq!(rng.next_u64(), want);
        }
    }

    #[test]
    fn streams_differ_per_triple_and_repeat_per_triple() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = cube_rng(1, 2, 3);
                move |_| r.next()
            })
            .collect();
        let mut again = cube_rng(1, 2, 3);
        for &v in &a {
            assert_eq!(again.next(), v);
        }
        for (s, e, c) in [(1, 2, 4), (1, 3, 3), (2, 2, 3), (1, 3, 2)] {
            assert_ne!(cube_rng(s, e, c).next(), a[0], "({s},{e},{c})");
        }
        assert_ne!(scan_rng(1, 3).next(), cube_rng(1, 0, 3).next());
    }

    #[test]
    fn below_and_batches_are_uniform() {
        let mut rng = cube_rng(7, 0, 0);
        let mut counts = [0usize; 6];
        let n = 60_000;
        for _ in 0..n {
            counts[rng.below(6) as usize] += 1;
        }
        for c in counts {
            assert!((c as f64 - 10_000.0).abs() < 500.0, "{counts:?}");
        }
        let mut joint = [[0usize; 3]; 5];
        for _ in 0..n {
            let [a, b] = rng.below_batch([5, 3]);
            joint[a as usize][b as usize] += 1;
        }
        for row in joint {
            for c in row {
                assert!((c as f64 - 4_000.0).abs() < 300.0, "{joint:?}");
            }
        }
        for _ in 0..1000 {
            let v = rng.randint(3, 5);
            assert!((3..=5).contains(&v));
            let u = rng.uniform();
            assert!((0.0..1.0).contains(&u));
        }
    }

    #[test]
    fn lane_draws_are_uniform_and_the_same_on_every_code_path() {
        // Small bounds: uniform. Bounds near 2^32 reject often (2^32 mod 3e9 is 30% of
        // the range), so the redraws are exercised too; the AVX-512 path must make the
        // same draws and redraws as the portable one.
        let mut rng = cube_rng(4, 0, 0);
        let mut noise = NoiseRng::new(&mut rng);
        let mut counts = [0usize; 5];
        for _ in 0..2_000 {
            for pick in noise.below_lanes(&[5; DRAW_LANES], u16::MAX) {
                counts[pick as usize] += 1;
            }
        }
        for c in counts {
            assert!((c as f64 - 6_400.0).abs() < 400.0, "{counts:?}");
        }
        let bounds: [u32; DRAW_LANES] = std::array::from_fn(|lane| {
            if lane % 3 == 0 {
                3_000_000_000
            } else {
                lane as u32 + 1
            }
        });
        let portable: Vec<_> = {
            let mut noise = NoiseRng::new(&mut cube_rng(5, 0, 0));
            (0..300u16)
                .map(|i| noise.below_lanes(&bounds, i.wrapping_mul(2_654)))
                .collect()
        };
        for (draw, picks) in portable.iter().enumerate() {
            for (lane, &pick) in picks.iter().enumerate() {
                assert!(pick < bounds[lane], "draw {draw} lane {lane}");
            }
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            #[target_feature(enable = "avx512f")]
            fn vector_draws(bounds: &[u32; DRAW_LANES]) -> Vec<[u32; DRAW_LANES]> {
                use std::arch::x86_64::*;
                let mut noise = NoiseRng::new(&mut cube_rng(5, 0, 0));
                let Some(mut lanes) = NoiseLanes::load(&noise) else {
                    unreachable!("the CPU has AVX-512F")
                };
                // SAFETY: sixteen u32 (unaligned load and stores).
                let bounds = unsafe { _mm512_loadu_si512(bounds.as_ptr().cast()) };
                let draws = (0..300u16)
                    .map(|i| {
                        let picks = below_lanes(&mut lanes, bounds, i.wrapping_mul(2_654));
                        let mut out = [0u32; DRAW_LANES];
                        unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), picks) };
                        out
                    })
                    .collect();
                lanes.store(&mut noise);
                draws
            }
            // SAFETY: the CPU has AVX-512F (checked above).
            assert_eq!(unsafe { vector_draws(&bounds) }, portable);
        }
    }

    #[test]
    fn noise_is_in_unit_interval_with_mean_one_half() {
        let mut noise = NoiseRng::new(&mut cube_rng(0, 0, 0));
        let mut buf = vec![0f32; 100_001];
        noise.fill(&mut buf);
        assert!(buf.iter().all(|v| (0.0..1.0).contains(v)));
        let mean = buf.iter().map(|&v| f64::from(v)).sum::<f64>() / buf.len() as f64;
        assert!((mean - 0.5).abs() < 0.005, "{mean}");
        // Uniform over 10 bins, and neighbours uncorrelated.
        let mut bins = [0usize; 10];
        for &v in &buf {
            bins[(v * 10.0) as usize] += 1;
        }
        for c in bins {
            assert!((c as f64 - 10_000.0).abs() < 500.0, "{bins:?}");
        }
        let lag: f64 = buf
            .windows(2)
            .map(|w| f64::from(w[0] - 0.5) * f64::from(w[1] - 0.5))
            .sum::<f64>()
            / (buf.len() - 1) as f64;
        assert!(lag.abs() < 0.001, "{lag}");
    }

    #[test]
    fn noise_is_the_same_on_every_code_path_and_per_seed() {
        let mut a = NoiseRng::new(&mut cube_rng(3, 0, 1));
        let mut b = a.clone();
        let mut fast = vec![0f32; 1000];
        let mut portable = vec![0f32; 1000];
        a.fill(&mut fast[..37]);
        a.fill(&mut fast[37..]);
        b.fill_except_portable(&mut portable[..37], 0);
        for run in portable[37..].chunks_mut(64) {
            b.fill_except_portable(run, 0);
        }
        assert_eq!(fast, portable);
        assert_eq!(a.state, b.state);
        let mut again = vec![0f32; 1000];
        let mut c = NoiseRng::new(&mut cube_rng(3, 0, 1));
        c.fill(&mut again[..37]);
        c.fill(&mut again[37..]);
        assert_eq!(fast, again);
        let mut other = vec![0f32; 1000];
        NoiseRng::new(&mut cube_rng(3, 0, 2)).fill(&mut other);
        assert_ne!(fast[..16], other[..16]);
        // Kept values stay; the others are what a plain fill gives, on both paths.
        for len in [1, 15, 16, 17, 50, 64] {
            let keep = 0xf0f0_03f0_00ff_0f0f_u64;
            let mut d = NoiseRng::new(&mut cube_rng(4, 0, len as u64));
            let mut e = d.clone();
            let mut f = d.clone();
            let mut kept = vec![5.0f32; len];
            d.fill_except(&mut kept, keep);
            let mut kept_portable = vec![5.0f32; len];
            f.fill_except_portable(&mut kept_portable, keep);
            assert_eq!(kept, kept_portable, "{len}");
            let mut plain = vec![0f32; len];
            e.fill(&mut plain);
            for (i, (&k, &p)) in kept.iter().zip(&plain).enumerate() {
                assert_eq!(k, if (keep >> i) & 1 == 1 { 5.0 } else { p }, "{len} {i}");
            }
        }
    }
}
