//! Transform 2: local pixel shuffling (the original's `local_pixel_shuffling`).

use ndarray::ArrayViewMut3;

use crate::config::LocalShuffleConfig;
use crate::flip::dim3;
use crate::rng::CubeRng;
use crate::{Error, Result};

/// Shuffles `n_blocks` random blocks: each block is read from `original`, its voxels are
/// permuted uniformly at random and written to the same place in `out`. Blocks overlap;
/// later blocks overwrite earlier ones, and every block reads the un-shuffled original.
///
/// `original` and `out` are C-order buffers of `shape`; the caller has validated the
/// config for `shape` and made `buf` at least `config.max_block_len(shape)` long.
///
/// Per block the draws are the original's: sizes (bx, by, bz), then origin (x, y, z);
/// the permutation then comes from the same stream (the original uses `np.random`).
pub(crate) fn shuffle_blocks(
    original: &[f32],
    out: &mut [f32],
    shape: [usize; 3],
    config: &LocalShuffleConfig,
    rng: &mut CubeRng,
    buf: &mut [f32],
) {
    let [rows, cols, deps] = shape;
    let divisor = config.block_divisor as usize;
    let max_size = [rows / divisor, cols / divisor, deps / divisor].map(|m| m as u64);
    debug_assert!(max_size.iter().all(|&m| m >= 1));
    debug_assert_eq!(original.len(), rows * cols * deps);
    debug_assert_eq!(out.len(), original.len());
    let row_stride = cols * deps;
    for _ in 0..config.n_blocks {
        let [bx, by, bz] = rng.below_batch(max_size).map(|v| v as usize + 1);
        let [x, y, z] = rng
            .below_batch([
                (rows - bx + 1) as u64,
                (cols - by + 1) as u64,
                (deps - bz + 1) as u64,
            ])
            .map(|v| v as usize);
        let n = bx * by * bz;
        let block = &mut buf[..n];
        // Gather.
        let mut k = 0;
        for ix in x..x + bx {
            let mut start = ix * row_stride + y * deps + z;
            for _ in 0..by {
                copy_short(&mut block[k..k + bz], &original[start..start + bz]);
                k += bz;
                start += deps;
            }
        }
        permute(block, rng);
        // Scatter.
        let mut k = 0;
        for ix in x..x + bx {
            let mut start = ix * row_stride + y * deps + z;
            for _ in 0..by {
                copy_short(&mut out[start..start + bz], &block[k..k + bz]);
                k += bz;
                start += deps;
            }
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
#[inline]
pub(crate) fn permute(values: &mut [f32], rng: &mut CubeRng) {
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
    let mut buf = vec![0f32; config.max_block_len(shape)];
    shuffle_blocks(&original, out, shape, config, rng, &mut buf);
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
    fn single_block_only_permutes_values_inside_the_block() {
        // One block at a time: everything outside is untouched, inside is a permutation.
        let shape = [20, 30, 10];
        let config = LocalShuffleConfig {
            n_blocks: 1,
            block_divisor: 5,
        };
        let original: Vec<f32> = (0..6000).map(|v| v as f32).collect();
        for seed in 0..200 {
            let mut out = original.clone();
            let mut buf = vec![0f32; config.max_block_len(shape)];
            let mut rng = cube_rng(seed, 0, 0);
            shuffle_blocks(&original, &mut out, shape, &config, &mut rng, &mut buf);
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
