//! Intensity windowing: clip to a window and scale to [0, 1].

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// An intensity window `[lower, upper]`; values are clipped to it and scaled to [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HuWindow {
    /// Value mapped to 0.
    pub lower: f32,
    /// Value mapped to 1.
    pub upper: f32,
}

impl Default for HuWindow {
    /// The paper's CT window.
    fn default() -> Self {
        HuWindow::CT
    }
}

impl HuWindow {
    /// The paper's CT window, [-1000, 1000] HU (Models Genesis, Zhou et al. 2019).
    pub const CT: HuWindow = HuWindow {
        lower: -1000.0,
        upper: 1000.0,
    };
    /// The MRI window of the original code, [0, 4000].
    pub const MRI: HuWindow = HuWindow {
        lower: 0.0,
        upper: 4000.0,
    };

    /// A custom window; `None` unless `lower < upper` and both are finite.
    pub fn new(lower: f32, upper: f32) -> Option<Self> {
        (lower.is_finite() && upper.is_finite() && lower < upper)
            .then_some(HuWindow { lower, upper })
    }

    /// Maps one value: clip to the window, scale to [0, 1]. NaN maps to 0.
    #[inline]
    pub fn normalize_value(&self, value: f32) -> f32 {
        // `max` returns the non-NaN operand, so NaN becomes `lower`.
        (value.max(self.lower).min(self.upper) - self.lower) / (self.upper - self.lower)
    }

    /// Clips `data` to the window and scales it to [0, 1] in place (NaN → 0, ±inf → 0 or 1).
    pub fn normalize_in_place(&self, data: &mut [f32]) {
        let (lower, upper) = (self.lower, self.upper);
        let width = upper - lower;
        data.par_chunks_mut(1 << 16).for_each(|chunk| {
            for v in chunk {
                // Division (not a reciprocal multiply) keeps exact values exact.
                *v = (v.max(lower).min(upper) - lower) / width;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct_window_clips_and_scales() {
        let mut data = vec![
            -2000.0,
            -1000.0,
            0.0,
            500.0,
            1000.0,
            3000.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        HuWindow::CT.normalize_in_place(&mut data);
        assert_eq!(data, vec![0.0, 0.0, 0.5, 0.75, 1.0, 1.0, 0.0, 1.0, 0.0]);
        assert_eq!(HuWindow::MRI.normalize_value(1000.0), 0.25);
        assert!(HuWindow::new(1.0, 1.0).is_none());
        assert_eq!(
            HuWindow::new(-100.0, 100.0).unwrap().normalize_value(0.0),
            0.5
        );
    }
}
