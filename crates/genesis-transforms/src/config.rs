//! Serde configuration for pair generation, with the paper's values as defaults.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Local pixel shuffling parameters (transform 2 of the issue).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalShuffleConfig {
    /// How many blocks are shuffled (10,000 in the paper).
    pub n_blocks: u32,
    /// Block sizes run over `1..=dim / block_divisor` per axis (10 in the paper).
    pub block_divisor: u32,
}

impl Default for LocalShuffleConfig {
    fn default() -> Self {
        Self {
            n_blocks: 10_000,
            block_divisor: 10,
        }
    }
}

/// Non-linear intensity transformation parameters (transform 3).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NonLinearConfig {
    /// Number of evenly spaced Bézier samples the map interpolates through (100,000).
    pub n_samples: u32,
    /// Probability of the inverting (decreasing) map, where only the x samples are
    /// sorted (0.5).
    pub inverting_rate: f64,
}

impl Default for NonLinearConfig {
    fn default() -> Self {
        Self {
            n_samples: 100_000,
            inverting_rate: 0.5,
        }
    }
}

/// In-painting parameters (transform 4).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InPaintConfig {
    /// At most this many boxes (5).
    pub max_boxes: u32,
    /// Each box is drawn while a uniform draw is below this rate (0.95).
    pub box_rate: f64,
    /// Box sizes run from `dim / min_size_divisor` ... (6)
    pub min_size_divisor: u32,
    /// ... to `dim / max_size_divisor` (3).
    pub max_size_divisor: u32,
    /// Boxes start at least this far from the faces of the cube (3).
    pub margin: u32,
}

impl Default for InPaintConfig {
    fn default() -> Self {
        Self {
            max_boxes: 5,
            box_rate: 0.95,
            min_size_divisor: 6,
            max_size_divisor: 3,
            margin: 3,
        }
    }
}

/// Out-painting parameters (transform 5).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutPaintConfig {
    /// At most this many boxes after the first, which is always restored (4).
    pub max_extra_boxes: u32,
    /// Each extra box is restored while a uniform draw is below this rate (0.95).
    pub box_rate: f64,
    /// Box size is `dim - U[num_lo * dim / den, num_hi * dim / den]`; `[num_lo, num_hi,
    /// den]` = `[3, 4, 7]` in the paper.
    pub removed_fraction: [u32; 3],
    /// Boxes start at least this far from the faces of the cube (3).
    pub margin: u32,
}

impl Default for OutPaintConfig {
    fn default() -> Self {
        Self {
            max_extra_boxes: 4,
            box_rate: 0.95,
            removed_fraction: [3, 4, 7],
            margin: 3,
        }
    }
}

/// Everything that decides how an (input, target) pair is made from a cube.
///
/// `Default` and [`TransformConfig::paper`] are the published settings (the original's
/// `config.py`): flip 0.4 (at most 3 flips), local shuffle 0.5, non-linear 0.9, paint
/// 0.9 of which in-painting 0.2 and out-painting 0.8.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransformConfig {
    /// Each flip happens while a uniform draw is below this rate (0.4).
    pub flip_rate: f64,
    /// At most this many flips (3).
    pub max_flips: u32,
    /// Probability of local pixel shuffling (0.5).
    pub local_rate: f64,
    /// Probability of the non-linear intensity transformation (0.9).
    pub nonlinear_rate: f64,
    /// Probability of painting, in- or out- (0.9).
    pub paint_rate: f64,
    /// Probability of in-painting given painting (0.2); out-painting otherwise.
    pub inpaint_rate: f64,
    /// Local shuffling details.
    pub local_shuffle: LocalShuffleConfig,
    /// Non-linear map details.
    pub nonlinear: NonLinearConfig,
    /// In-painting details.
    pub in_paint: InPaintConfig,
    /// Out-painting details.
    pub out_paint: OutPaintConfig,
}

impl Default for TransformConfig {
    fn default() -> Self {
        Self::paper()
    }
}

/// The paper's ablation variants (Zhou et al. 2019, "each transform alone, all
/// combined", plus the plain autoencoder).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransformVariant {
    /// No self-supervised transform: the input equals the target.
    Autoencoder,
    /// Non-linear intensity transformation only.
    NonLinear,
    /// Local pixel shuffling only.
    LocalShuffle,
    /// Out-painting only.
    OutPaint,
    /// In-painting only.
    InPaint,
    /// All transforms combined: the paper's Models Genesis.
    All,
}

/// One kernel, for [`TransformConfig::only`]: that kernel alone, always.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kernel {
    /// Flips only (every flip draw succeeds, so three flips along random axes).
    Flip,
    /// Local pixel shuffling only.
    LocalShuffle,
    /// Non-linear intensity transformation only.
    #[serde(alias = "nonlinear")]
    NonLinear,
    /// In-painting only.
    #[serde(alias = "inpaint")]
    InPaint,
    /// Out-painting only.
    #[serde(alias = "outpaint")]
    OutPaint,
    /// Nothing at all: input = target = cube.
    None,
}

impl TransformConfig {
    /// The published settings.
    pub fn paper() -> Self {
        Self {
            flip_rate: 0.4,
            max_flips: 3,
            local_rate: 0.5,
            nonlinear_rate: 0.9,
            paint_rate: 0.9,
            inpaint_rate: 0.2,
            local_shuffle: LocalShuffleConfig::default(),
            nonlinear: NonLinearConfig::default(),
            in_paint: InPaintConfig::default(),
            out_paint: OutPaintConfig::default(),
        }
    }

    /// An ablation variant: the chosen transform keeps its paper probability, the others
    /// are switched off. Flips stay on in every variant: they are augmentation applied to
    /// input and target alike, not a self-supervised task.
    pub fn variant(variant: TransformVariant) -> Self {
        let paper = Self::paper();
        let none = Self {
            local_rate: 0.0,
            nonlinear_rate: 0.0,
            paint_rate: 0.0,
            ..paper
        };
        match variant {
            TransformVariant::All => paper,
            TransformVariant::Autoencoder => none,
            TransformVariant::NonLinear => Self {
                nonlinear_rate: paper.nonlinear_rate,
                ..none
            },
            TransformVariant::LocalShuffle => Self {
                local_rate: paper.local_rate,
                ..none
            },
            TransformVariant::InPaint => Self {
                paint_rate: paper.paint_rate,
                inpaint_rate: 1.0,
                ..none
            },
            TransformVariant::OutPaint => Self {
                paint_rate: paper.paint_rate,
                inpaint_rate: 0.0,
                ..none
            },
        }
    }

    /// `kernel` alone with probability 1, no flips unless `kernel` is [`Kernel::Flip`];
    /// for inspecting one kernel at a time.
    pub fn only(kernel: Kernel) -> Self {
        let none = Self {
            flip_rate: 0.0,
            local_rate: 0.0,
            nonlinear_rate: 0.0,
            paint_rate: 0.0,
            ..Self::paper()
        };
        match kernel {
            Kernel::None => none,
            Kernel::Flip => Self {
                flip_rate: 1.0,
                ..none
            },
            Kernel::LocalShuffle => Self {
                local_rate: 1.0,
                ..none
            },
            Kernel::NonLinear => Self {
                nonlinear_rate: 1.0,
                ..none
            },
            Kernel::InPaint => Self {
                paint_rate: 1.0,
                inpaint_rate: 1.0,
                ..none
            },
            Kernel::OutPaint => Self {
                paint_rate: 1.0,
                inpaint_rate: 0.0,
                ..none
            },
        }
    }

    /// Checks every rate and count, and that `shape` is large enough for every kernel
    /// that can fire (rate > 0).
    pub fn validate(&self, shape: [usize; 3]) -> Result<()> {
        for (field, rate) in [
            ("flip_rate", self.flip_rate),
            ("local_rate", self.local_rate),
            ("nonlinear_rate", self.nonlinear_rate),
            ("paint_rate", self.paint_rate),
            ("inpaint_rate", self.inpaint_rate),
        ] {
            check_rate(field, rate)?;
        }
        if self.local_rate > 0.0 {
            self.local_shuffle.validate(shape)?;
        }
        if self.nonlinear_rate > 0.0 {
            self.nonlinear.validate()?;
        }
        if self.paint_rate > 0.0 && self.inpaint_rate > 0.0 {
            self.in_paint.validate(shape)?;
        }
        if self.paint_rate > 0.0 && self.inpaint_rate < 1.0 {
            self.out_paint.validate(shape)?;
        }
        Ok(())
    }
}

pub(crate) fn check_rate(field: &'static str, rate: f64) -> Result<()> {
    if (0.0..=1.0).contains(&rate) {
        Ok(())
    } else {
        Err(Error::InvalidConfig {
            field,
            reason: format!("rate {rate} is not in [0, 1]"),
        })
    }
}

fn too_small(kernel: &'static str, shape: [usize; 3], reason: String) -> Error {
    Error::ShapeTooSmall {
        kernel,
        shape,
        reason,
    }
}

const AXES: [&str; 3] = ["rows", "cols", "deps"];

impl LocalShuffleConfig {
    /// Checks the divisor and that every axis allows blocks of at least one voxel.
    pub fn validate(&self, shape: [usize; 3]) -> Result<()> {
        if self.block_divisor == 0 {
            return Err(Error::InvalidConfig {
                field: "local_shuffle.block_divisor",
                reason: "must be at least 1".into(),
            });
        }
        let divisor = self.block_divisor as usize;
        for (axis, &dim) in AXES.iter().zip(&shape) {
            if dim / divisor < 1 {
                return Err(too_small(
                    "local pixel shuffling",
                    shape,
                    format!("{axis} = {dim} must be at least block_divisor = {divisor}"),
                ));
            }
        }
        Ok(())
    }

    /// Largest number of voxels in one block for `shape`.
    pub(crate) fn max_block_len(&self, shape: [usize; 3]) -> usize {
        let divisor = self.block_divisor.max(1) as usize;
        shape.iter().map(|&d| (d / divisor).max(1)).product()
    }
}

impl NonLinearConfig {
    /// Checks the sample count and the inverting rate.
    pub fn validate(&self) -> Result<()> {
        check_rate("nonlinear.inverting_rate", self.inverting_rate)?;
        if self.n_samples < 2 {
            return Err(Error::InvalidConfig {
                field: "nonlinear.n_samples",
                reason: format!(
                    "{} samples cannot define a map; need at least 2",
                    self.n_samples
                ),
            });
        }
        Ok(())
    }
}

impl InPaintConfig {
    /// Checks the divisors, the rate, and that the largest box fits inside the margins.
    pub fn validate(&self, shape: [usize; 3]) -> Result<()> {
        check_rate("in_paint.box_rate", self.box_rate)?;
        for (field, divisor) in [
            ("in_paint.min_size_divisor", self.min_size_divisor),
            ("in_paint.max_size_divisor", self.max_size_divisor),
        ] {
            if divisor == 0 {
                return Err(Error::InvalidConfig {
                    field,
                    reason: "size divisors must be at least 1".into(),
                });
            }
        }
        if self.min_size_divisor < self.max_size_divisor {
            return Err(Error::InvalidConfig {
                field: "in_paint.min_size_divisor",
                reason: "must be at least max_size_divisor (smallest box <= largest box)".into(),
            });
        }
        let margin = self.margin as usize;
        for (axis, &dim) in AXES.iter().zip(&shape) {
            let largest = dim / self.max_size_divisor as usize;
            if dim < largest + 2 * margin {
                return Err(too_small(
                    "in-painting",
                    shape,
                    format!(
                        "{axis} = {dim} cannot hold a box of {largest} voxels with a margin of {margin} on both sides"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Inclusive box size range along an axis of length `dim`.
    pub(crate) fn size_range(&self, dim: usize) -> (usize, usize) {
        (
            dim / self.min_size_divisor as usize,
            dim / self.max_size_divisor as usize,
        )
    }
}

impl OutPaintConfig {
    /// Checks the fraction, the rate, and that the largest box fits inside the margins.
    pub fn validate(&self, shape: [usize; 3]) -> Result<()> {
        check_rate("out_paint.box_rate", self.box_rate)?;
        let [lo, hi, den] = self.removed_fraction;
        if den == 0 || lo > hi || hi > den {
            return Err(Error::InvalidConfig {
                field: "out_paint.removed_fraction",
                reason: format!("[{lo}, {hi}, {den}] must satisfy lo <= hi <= den and den >= 1"),
            });
        }
        let margin = self.margin as usize;
        for (axis, &dim) in AXES.iter().zip(&shape) {
            let (_, largest) = self.size_range(dim);
            if dim < largest + 2 * margin {
                return Err(too_small(
                    "out-painting",
                    shape,
                    format!(
                        "{axis} = {dim} cannot hold a box of {largest} voxels with a margin of {margin} on both sides"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Inclusive box size range along an axis of length `dim`: `dim - hi*dim/den ..=
    /// dim - lo*dim/den`.
    pub(crate) fn size_range(&self, dim: usize) -> (usize, usize) {
        let [lo, hi, den] = self.removed_fraction.map(|v| v as usize);
        let den = den.max(1);
        (
            dim.saturating_sub(hi * dim / den),
            dim.saturating_sub(lo * dim / den),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_defaults_round_trip_through_toml_and_json() {
        let paper = TransformConfig::paper();
        assert_eq!(paper, TransformConfig::default());
        let text = toml::to_string(&paper).unwrap();
        let back: TransformConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, paper);
        let partial: TransformConfig = toml::from_str("local_rate = 0.25\n").unwrap();
        assert_eq!(
            partial,
            TransformConfig {
                local_rate: 0.25,
                ..paper
            }
        );
        assert!(toml::from_str::<TransformConfig>("locl_rate = 0.25\n").is_err());
        let variant: TransformVariant = serde_json::from_str("\"local-shuffle\"").unwrap();
        assert_eq!(variant, TransformVariant::LocalShuffle);
        let kernel: Kernel = serde_json::from_str("\"outpaint\"").unwrap();
        assert_eq!(kernel, Kernel::OutPaint);
    }

    #[test]
    fn variants_and_only_switch_the_right_rates() {
        let ae = TransformConfig::variant(TransformVariant::Autoencoder);
        assert_eq!(
            (ae.local_rate, ae.nonlinear_rate, ae.paint_rate),
            (0.0, 0.0, 0.0)
        );
        let inpaint = TransformConfig::variant(TransformVariant::InPaint);
        assert_eq!((inpaint.paint_rate, inpaint.inpaint_rate), (0.9, 1.0));
        assert_eq!(
            TransformConfig::variant(TransformVariant::All),
            TransformConfig::paper()
        );
        let only = TransformConfig::only(Kernel::NonLinear);
        assert_eq!(
            (only.flip_rate, only.nonlinear_rate, only.paint_rate),
            (0.0, 1.0, 0.0)
        );
        assert_eq!(TransformConfig::only(Kernel::Flip).flip_rate, 1.0);
    }

    #[test]
    fn validation_names_the_problem() {
        let paper = TransformConfig::paper();
        paper.validate([64, 64, 32]).unwrap();
        let err = paper.validate([64, 64, 8]).unwrap_err();
        assert!(
            matches!(
                err,
                Error::ShapeTooSmall {
                    kernel: "local pixel shuffling",
                    ..
                }
            ),
            "{err}"
        );
        let err = TransformConfig {
            paint_rate: 1.5,
            ..paper
        }
        .validate([64, 64, 32])
        .unwrap_err();
        assert!(err.to_string().contains("paint_rate"), "{err}");
        // Each zero divisor is named as itself.
        for (min, max, field) in [(0, 3, "min_size_divisor"), (6, 0, "max_size_divisor")] {
            let mut config = paper;
            config.in_paint.min_size_divisor = min;
            config.in_paint.max_size_divisor = max;
            let err = config.validate([64, 64, 32]).unwrap_err().to_string();
            assert!(err.contains(&format!("in_paint.{field}")), "{err}");
        }
        // Out-painting on deps = 13: largest box 13 - 3*13/7 = 8 plus 2 * 3 margin > 13.
        let err = TransformConfig::only(Kernel::OutPaint)
            .validate([64, 64, 13])
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::ShapeTooSmall {
                    kernel: "out-painting",
                    ..
                }
            ),
            "{err}"
        );
        TransformConfig::only(Kernel::NonLinear)
            .validate([1, 1, 1])
            .unwrap();
    }

    #[test]
    fn paper_box_ranges() {
        let out = OutPaintConfig::default();
        // 64 - U[27, 36] and 32 - U[13, 18].
        assert_eq!(out.size_range(64), (28, 37));
        assert_eq!(out.size_range(32), (14, 19));
        let inp = InPaintConfig::default();
        assert_eq!(inp.size_range(64), (10, 21));
        assert_eq!(inp.size_range(32), (5, 10));
    }
}
