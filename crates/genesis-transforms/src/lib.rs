//! Models Genesis transform kernels and cube extraction (Zhou et al., "Models Genesis:
//! Generic Autodidactic Models for 3D Medical Image Analysis", MICCAI 2019).
//!
//! The self-supervised task of Models Genesis is to restore a cube of CT from a
//! transformed copy. This crate makes the (input, target) pairs, with the semantics of
//! the published NumPy code (`pytorch/utils.py`) but deterministic and about 80 to 160
//! times faster on one core (`docs/benchmarks.md`; on x86_64 with AVX-512 the hot loops
//! use it, with portable paths that give the same bits elsewhere, more slowly):
//!
//! * [`flip`]: up to three flips along random axes, applied to input and target alike;
//! * [`local_pixel_shuffling`]: 10,000 small blocks, each permuted in place;
//! * [`nonlinear_transformation`]: a random monotone Bézier intensity map ([`BezierMap`]);
//! * [`in_painting`] and [`out_painting`]: boxes of noise, or noise around kept boxes;
//! * [`generate_pair`] / [`generate_pairs`]: the paper's pipeline for one cube or, in
//!   parallel with rayon, a batch;
//! * [`extract_cubes`]: cutting lung cubes from a CT scan in HU (the original's
//!   "infinite generator").
//!
//! Every random choice comes from a [`CubeRng`] derived from (seed, epoch, cube index)
//! by [`cube_rng`], so a batch is bit-identical whatever the thread count or batch
//! split. [`generate_pairs`] does not allocate per cube.
//!
//! Not for: reading or writing volumes (see `genesis-io`), models or training (see
//! `genesis-models` and `genesis-train`). This crate never links libtorch.
//!
//! # Example
//!
//! ```
//! use genesis_transforms::{TransformConfig, generate_pairs};
//!
//! # fn main() -> Result<(), genesis_transforms::Error> {
//! let shape = [64, 64, 32];
//! let n_cubes = 2;
//! let cubes = vec![0.5f32; n_cubes * 64 * 64 * 32];
//! let mut inputs = vec![0.0; cubes.len()];
//! let mut targets = vec![0.0; cubes.len()];
//! let config = TransformConfig::paper();
//! generate_pairs(&cubes, shape, &mut inputs, &mut targets, &config, 42, 0, 0)?;
//! assert!(targets.iter().all(|&v| v == 0.5)); // flips of a constant cube
//! # Ok(())
//! # }
//! ```
//!
//! # Differences from the original
//!
//! * Random streams: one xoshiro256++ stream per cube instead of Python's and NumPy's
//!   global generators, so the draws (not their distributions) differ.
//! * Noise is `f32` with 24 random bits; the original uses `f64`.
//! * Out-painting draws its boxes before the noise and fills only the voxels outside
//!   them; the original fills everything, then restores. Same distribution.
//! * The shuffle draws all its blocks first and their permutations then, sixteen blocks
//!   at a time, from vector lanes (the original draws each block's permutation after
//!   it). Same distribution.
//! * A pair draws its painting before the shuffle and the non-linear map. Under
//!   out-painting, everything outside the kept boxes becomes noise, so the shuffle
//!   permutes only the blocks that touch a kept box and the map runs only on rows that
//!   hold kept voxels. Same distribution, computed where it is seen.
//! * The non-linear map is evaluated through a lookup table within 1e-4 of `np.interp`
//!   over the 100,000 sorted samples (see [`BezierMap`]).
//! * Extraction resizes (when crop and input sizes differ) without skimage's
//!   anti-aliasing filter.

mod bezier;
mod config;
mod error;
mod extract;
mod flip;
mod paint;
mod pair;
mod permutations;
mod rng;
mod shuffle;

pub use bezier::{BezierMap, nonlinear_transformation};
pub use config::{
    InPaintConfig, Kernel, LocalShuffleConfig, NonLinearConfig, OutPaintConfig, TransformConfig,
    TransformVariant,
};
pub use error::{Error, Result};
pub use extract::{ExtractConfig, extract_cubes, extract_cubes_par};
pub use flip::{FlipTrace, flip};
pub use paint::{in_painting, out_painting};
pub use pair::{
    PaintTrace, PairScratch, PairTrace, generate_pair, generate_pair_traced, generate_pairs,
};
pub use rng::{CubeRng, cube_rng, scan_rng};
pub use shuffle::local_pixel_shuffling;
