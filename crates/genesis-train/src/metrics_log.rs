//! Per-epoch records, written as `metrics.csv` and `metrics.jsonl`.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::checkpoint::write_atomic;
use crate::{Error, Result};

/// What one epoch did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Mean training loss.
    pub train_loss: f64,
    /// Mean validation loss.
    pub valid_loss: f64,
    /// Task metric on the validation split (Dice for segmentation, ROC AUC for
    /// classification; absent for pretraining).
    pub valid_metric: Option<f64>,
    /// Learning rate of the epoch.
    pub lr: f64,
    /// Seconds the training loop waited for batches.
    pub data_wait_s: f64,
    /// `data_wait_s` as a share of the training time.
    pub data_wait_share: f64,
    /// Wall seconds of training and validation.
    pub seconds: f64,
    /// Training cubes per second.
    pub cubes_per_s: f64,
    /// Whether this epoch's validation loss was the best so far.
    pub best: bool,
}

const CSV_HEADER: &str = "epoch,train_loss,valid_loss,valid_metric,lr,data_wait_s,data_wait_share,seconds,cubes_per_s,best";

/// Rewrites `metrics.csv` and `metrics.jsonl` in `run_dir` from `history`
/// (whole files, atomically, so a resumed run never duplicates a row).
pub fn write_metrics(run_dir: &Path, history: &[EpochRecord]) -> Result<()> {
    let mut csv = String::from(CSV_HEADER);
    csv.push('\n');
    let mut jsonl = String::new();
    for r in history {
        let metric = r
            .valid_metric
            .map(|m| format!("{m:.6}"))
            .unwrap_or_default();
        let _ = writeln!(
            csv,
            "{},{:.8},{:.8},{},{:e},{:.4},{:.5},{:.3},{:.3},{}",
            r.epoch,
            r.train_loss,
            r.valid_loss,
            metric,
            r.lr,
            r.data_wait_s,
            r.data_wait_share,
            r.seconds,
            r.cubes_per_s,
            r.best
        );
        let line = serde_json::to_string(r)
            .map_err(|e| Error::Config(format!("cannot serialise metrics: {e}")))?;
        jsonl.push_str(&line);
        jsonl.push('\n');
    }
    write_atomic(&run_dir.join("metrics.csv"), csv.as_bytes())?;
    write_atomic(&run_dir.join("metrics.jsonl"), jsonl.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_one_row_per_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let record = |epoch| EpochRecord {
            epoch,
            train_loss: 0.5,
            valid_loss: 0.25,
            valid_metric: None,
            lr: 1.0,
            data_wait_s: 0.01,
            data_wait_share: 0.001,
            seconds: 10.0,
            cubes_per_s: 3.0,
            best: true,
        };
        write_metrics(dir.path(), &[record(0), record(1)]).unwrap();
        let csv = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
        assert_eq!(csv.lines().count(), 3);
        assert!(csv.starts_with("epoch,train_loss,valid_loss"));
        let jsonl = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
        let back: Vec<EpochRecord> = jsonl
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(back, vec![record(0), record(1)]);
    }
}
