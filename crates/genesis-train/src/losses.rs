//! Losses (on tensors) and evaluation metrics (on plain slices).

use tch::{Kind, Reduction, Tensor};

use crate::Result;
use crate::config::SegmentationLoss;

/// Mean squared error, the restoration loss of pretraining.
pub fn mse_loss(prediction: &Tensor, target: &Tensor) -> Result<Tensor> {
    Ok(prediction.f_mse_loss(target, Reduction::Mean)?)
}

/// The original's Dice loss over the whole batch, smooth 1:
/// `1 − (2·Σ(p·y) + 1) / (Σy + Σp + 1)`.
pub fn dice_loss(probabilities: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let intersection = probabilities.f_mul(mask)?.f_sum(Kind::Float)?;
    let denominator = mask.f_sum(Kind::Float)? + probabilities.f_sum(Kind::Float)? + 1.0;
    Ok(((intersection * 2.0 + 1.0) / denominator).f_neg()? + 1.0)
}

/// Binary cross-entropy on probabilities (clamped away from 0 and 1).
pub fn bce_loss(probabilities: &Tensor, target: &Tensor) -> Result<Tensor> {
    let p = probabilities.f_clamp(1e-7, 1.0 - 1e-7)?;
    Ok(p.f_binary_cross_entropy::<Tensor>(target, None, Reduction::Mean)?)
}

/// The segmentation loss chosen by the configuration.
pub fn segmentation_loss(
    kind: SegmentationLoss,
    probabilities: &Tensor,
    mask: &Tensor,
) -> Result<Tensor> {
    match kind {
        SegmentationLoss::Dice => dice_loss(probabilities, mask),
        SegmentationLoss::DiceBce => {
            Ok(dice_loss(probabilities, mask)? + bce_loss(probabilities, mask)?)
        }
    }
}

/// Binary cross-entropy on the sigmoid of logits (numerically stable form).
pub fn bce_with_logits_loss(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    Ok(logits.f_binary_cross_entropy_with_logits::<Tensor>(target, None, None, Reduction::Mean)?)
}

/// Voxel counts of a binary segmentation against its reference, summed over cubes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OverlapCounts {
    /// Predicted and true.
    pub true_positive: u64,
    /// Predicted, not true.
    pub false_positive: u64,
    /// True, not predicted.
    pub false_negative: u64,
}

impl OverlapCounts {
    /// Adds the voxels of `probabilities` thresholded at `threshold` against `mask` (> 0.5 is foreground).
    pub fn add(&mut self, probabilities: &[f32], mask: &[f32], threshold: f64) {
        for (&p, &m) in probabilities.iter().zip(mask) {
            let predicted = f64::from(p) > threshold;
            let truth = m > 0.5;
            match (predicted, truth) {
                (true, true) => self.true_positive += 1,
                (true, false) => self.false_positive += 1,
                (false, true) => self.false_negative += 1,
                (false, false) => {}
            }
        }
    }

    /// `2·TP / (2·TP + FP + FN)`; 1 when both are empty.
    pub fn dice(&self) -> f64 {
        let denominator = 2 * self.true_positive + self.false_positive + self.false_negative;
        if denominator == 0 {
            1.0
        } else {
            2.0 * self.true_positive as f64 / denominator as f64
        }
    }

    /// `TP / (TP + FP + FN)`; 1 when both are empty.
    pub fn iou(&self) -> f64 {
        let denominator = self.true_positive + self.false_positive + self.false_negative;
        if denominator == 0 {
            1.0
        } else {
            self.true_positive as f64 / denominator as f64
        }
    }
}

/// Area under the ROC curve (the Mann–Whitney statistic, ties counted half);
/// `None` when `labels` lack either class.
pub fn roc_auc(scores: &[f32], labels: &[f32]) -> Option<f64> {
    let mut pairs: Vec<(f32, bool)> = scores
        .iter()
        .zip(labels)
        .map(|(&s, &l)| (s, l > 0.5))
        .collect();
    let positives = pairs.iter().filter(|p| p.1).count();
    let negatives = pairs.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Sum of the (average, 1-based) ranks of the positives.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < pairs.len() {
        let mut j = i;
        while j + 1 < pairs.len() && pairs[j + 1].0 == pairs[i].0 {
            j += 1;
        }
        let average_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += average_rank * pairs[i..=j].iter().filter(|p| p.1).count() as f64;
        i = j + 1;
    }
    let p = positives as f64;
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * negatives as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v)
    }

    #[test]
    fn dice_loss_is_the_originals_formula() {
        let p = t(&[0.5, 1.0, 0.0, 0.25]);
        let y = t(&[1.0, 1.0, 0.0, 0.0]);
        // 1 − (2·1.5 + 1) / (2 + 1.75 + 1)
        let expected = 1.0 - 4.0 / 4.75;
        assert!((dice_loss(&p, &y).unwrap().double_value(&[]) - expected).abs() < 1e-6);
        // Perfect prediction of an empty mask: loss 0 thanks to the smoothing.
        assert!(
            dice_loss(&t(&[0.0; 4]), &t(&[0.0; 4]))
                .unwrap()
                .double_value(&[])
                .abs()
                < 1e-7
        );
        let both = segmentation_loss(SegmentationLoss::DiceBce, &p, &y)
            .unwrap()
            .double_value(&[]);
        assert!(both > expected);
    }

    #[test]
    fn mse_and_bce() {
        let l = mse_loss(&t(&[1.0, 2.0]), &t(&[0.0, 0.0]))
            .unwrap()
            .double_value(&[]);
        assert!((l - 2.5).abs() < 1e-6);
        let b = bce_with_logits_loss(&t(&[0.0]), &t(&[1.0]))
            .unwrap()
            .double_value(&[]);
        assert!((b - std::f64::consts::LN_2).abs() < 1e-6);
        let c = bce_loss(&t(&[0.5]), &t(&[0.0])).unwrap().double_value(&[]);
        assert!((c - std::f64::consts::LN_2).abs() < 1e-6);
        // Saturated probabilities stay finite.
        assert!(
            bce_loss(&t(&[0.0]), &t(&[1.0]))
                .unwrap()
                .double_value(&[])
                .is_finite()
        );
    }

    #[test]
    fn overlap_metrics() {
        let mut c = OverlapCounts::default();
        c.add(&[0.9, 0.8, 0.1, 0.7], &[1.0, 0.0, 1.0, 1.0], 0.5);
        assert_eq!(
            (c.true_positive, c.false_positive, c.false_negative),
            (2, 1, 1)
        );
        assert!((c.dice() - 4.0 / 6.0).abs() < 1e-12);
        assert!((c.iou() - 0.5).abs() < 1e-12);
        assert_eq!(OverlapCounts::default().dice(), 1.0);
    }

    #[test]
    fn auc_with_ties_and_degenerate_labels() {
        assert_eq!(
            roc_auc(&[0.1, 0.4, 0.35, 0.8], &[0.0, 0.0, 1.0, 1.0]),
            Some(0.75)
        );
        assert_eq!(roc_auc(&[0.1, 0.9], &[0.0, 1.0]), Some(1.0));
        assert_eq!(roc_auc(&[0.9, 0.1], &[0.0, 1.0]), Some(0.0));
        assert_eq!(roc_auc(&[0.5, 0.5], &[0.0, 1.0]), Some(0.5));
        assert_eq!(roc_auc(&[0.5, 0.5], &[1.0, 1.0]), None);
    }
}
