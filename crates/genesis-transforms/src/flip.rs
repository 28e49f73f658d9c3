//! Transform 1: flips along random axes, applied to input and target alike
//! (the original's `data_augmentation`).

use ndarray::{ArrayView3, ArrayViewMut3, Axis};
use serde::{Deserialize, Serialize};

use crate::config::check_rate;
use crate::rng::CubeRng;
use crate::{Error, Result};

/// Which flips were drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FlipTrace {
    /// How many flips were drawn (at most `max_flips`).
    pub n_flips: u32,
    /// Net effect per axis (rows, cols, deps): flipping twice along one axis cancels.
    pub flipped: [bool; 3],
}

/// Draws the flips: while `n < max_flips` and a uniform draw is below `flip_rate`, pick
/// one of the three axes uniformly.
///
/// The original evaluates the draw before the count (`while random() < p and cnt > 0`) and
/// so consumes one extra draw after the third flip; with our own stream that order does
/// not matter and we test the count first.
pub(crate) fn draw_flips(rng: &mut CubeRng, flip_rate: f64, max_flips: u32) -> FlipTrace {
    let mut trace = FlipTrace::default();
    while trace.n_flips < max_flips && rng.uniform() < flip_rate {
        let axis = rng.below(3) as usize;
        trace.flipped[axis] = !trace.flipped[axis];
        trace.n_flips += 1;
    }
    trace
}

/// `cube` with the axes in `flipped` reversed, as a view (no copy).
pub(crate) fn flipped_view<'a>(
    cube: ArrayView3<'a, f32>,
    flipped: [bool; 3],
) -> ArrayView3<'a, f32> {
    let mut view = cube;
    for (axis, &flip) in flipped.iter().enumerate() {
        if flip {
            view.invert_axis(Axis(axis));
        }
    }
    view
}

/// Flips `input` and `target` together: up to `max_flips` times, while a uniform draw is
/// below `flip_rate`, along an axis chosen uniformly from the three. Works for any
/// memory layout; both arrays must have the same shape. Returns what was drawn.
pub fn flip(
    mut input: ArrayViewMut3<'_, f32>,
    mut target: ArrayViewMut3<'_, f32>,
    flip_rate: f64,
    max_flips: u32,
    rng: &mut CubeRng,
) -> Result<FlipTrace> {
    check_rate("flip_rate", flip_rate)?;
    let (shape, target_shape) = (dim3(input.dim()), dim3(target.dim()));
    if shape != target_shape {
        return Err(Error::ShapeMismatch {
            what: "flip target",
            expected: shape,
            found: target_shape,
        });
    }
    let trace = draw_flips(rng, flip_rate, max_flips);
    if trace.flipped.iter().any(|&f| f) {
        for mut array in [input.view_mut(), target.view_mut()] {
            let flipped = flipped_view(array.view(), trace.flipped).to_owned();
            array.assign(&flipped);
        }
    }
    Ok(trace)
}

pub(crate) fn dim3((a, b, c): (usize, usize, usize)) -> [usize; 3] {
    [a, b, c]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cube_rng;
    use ndarray::{Array3, s};

    fn ramp(shape: [usize; 3]) -> Array3<f32> {
        Array3::from_shape_fn((shape[0], shape[1], shape[2]), |(i, j, k)| {
            (i * 10_000 + j * 100 + k) as f32
        })
    }

    #[test]
    fn flips_input_and_target_alike_and_permutes_by_axis() {
        let shape = [6, 5, 4];
        let mut seen_flip = false;
        for seed in 0..50 {
            let mut input = ramp(shape);
            let mut target = ramp(shape);
            target.mapv_inplace(|v| v + 0.5);
            let mut rng = cube_rng(seed, 0, 0);
            let trace = flip(input.view_mut(), target.view_mut(), 0.4, 3, &mut rng).unwrap();
            assert!(trace.n_flips <= 3);
            let mut expected = ramp(shape);
            for (axis, &f) in trace.flipped.iter().enumerate() {
                if f {
                    expected.invert_axis(Axis(axis));
                    seen_flip = true;
                }
            }
            assert_eq!(input, expected);
            assert_eq!(target, expected.mapv(|v| v + 0.5));
        }
        assert!(seen_flip);
    }

    #[test]
    fn works_on_non_contiguous_views_and_rejects_mismatched_shapes() {
        let mut big = ramp([8, 8, 8]);
        let mut other = ramp([8, 8, 8]);
        let mut rng = cube_rng(3, 0, 0);
        let trace = flip(
            big.slice_mut(s![..;2, .., 1..5]),
            other.slice_mut(s![..;2, .., 1..5]),
            1.0,
            1,
            &mut rng,
        )
        .unwrap();
        assert_eq!(trace.n_flips, 1);
        assert_eq!(big, other);
        let mut small = ramp([8, 8, 7]);
        let err = flip(big.view_mut(), small.view_mut(), 0.4, 3, &mut rng).unwrap_err();
        assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    }
}
