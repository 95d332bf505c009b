//! Accumulates per-sample results into the counts every report is computed from.
//!
//! Integer counts are order-independent; float sums (loss, calibration) are accumulated by the final
//! replay in shard order, so two runs that evaluated the same samples report identical numbers.

use std::collections::BTreeMap;

use serde::Serialize;
use tresnet_common::protocol::pb::SampleResult;

/// Calibration bins for ECE, as torchmetrics and most papers use.
pub const ECE_BINS: usize = 15;

/// Top-k for the headline top-5 metric.
pub const TOP5: usize = 5;

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ClassTally {
    pub support: u64,
    pub correct1: u64,
    pub correct5: u64,
    /// Samples predicted (top-1) as this class.
    pub predicted: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bin {
    pub count: u64,
    pub confidence_sum: f64,
    pub correct: u64,
}

/// A sample that could not be evaluated, with its key and why.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BadSample {
    pub index: Option<u64>,
    pub key: String,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct Tally {
    pub num_classes: usize,
    /// k of the top-5 metric: 5, or fewer when the model has fewer classes or top_k was set lower.
    pub k5: usize,
    pub evaluated: u64,
    pub correct1: u64,
    pub correct5: u64,
    pub loss_sum: f64,
    pub bins: Vec<Bin>,
    pub per_class: Vec<ClassTally>,
    /// Sparse confusion matrix (true, predicted) -> count.
    pub confusion: BTreeMap<(u32, u32), u64>,
    pub bad: Vec<BadSample>,
}

impl Tally {
    pub fn new(num_classes: usize, top_k: usize) -> Self {
        Tally {
            num_classes,
            k5: TOP5.min(top_k).min(num_classes),
            evaluated: 0,
            correct1: 0,
            correct5: 0,
            loss_sum: 0.0,
            bins: vec![Bin::default(); ECE_BINS],
            per_class: vec![ClassTally::default(); num_classes],
            confusion: BTreeMap::new(),
            bad: Vec::new(),
        }
    }

    /// Adds one sample. A result carrying an error, or one that contradicts the job (no prediction,
    /// a class out of range), becomes a bad sample rather than a silent miscount.
    pub fn add(&mut self, index: u64, key: &str, label: u32, r: &SampleResult) {
        let bad = |reason: String| BadSample {
            index: Some(index),
            key: key.to_string(),
            reason,
        };
        if !r.error.is_empty() {
            self.bad.push(bad(r.error.clone()));
            return;
        }
        let nc = self.num_classes as u32;
        if label >= nc {
            self.bad.push(bad(format!(
                "label {label} outside the model's {nc} classes"
            )));
            return;
        }
        let Some(&top1) = r.topk_indices.first() else {
            self.bad.push(bad("worker returned no prediction".into()));
            return;
        };
        if r.topk_indices.iter().any(|&c| c >= nc) {
            self.bad
                .push(bad("worker returned a class index out of range".into()));
            return;
        }
        self.evaluated += 1;
        let hit1 = top1 == label;
        let hit5 = r.topk_indices.iter().take(self.k5).any(|&c| c == label);
        self.correct1 += u64::from(hit1);
        self.correct5 += u64::from(hit5);
        self.loss_sum += r.loss;
        let conf = r.confidence.clamp(0.0, 1.0);
        // Bin i holds confidences in (i/B, (i+1)/B]; 0 goes to the first bin.
        let bin = ((conf * ECE_BINS as f64).ceil() as usize).clamp(1, ECE_BINS) - 1;
        let b = &mut self.bins[bin];
        b.count += 1;
        b.confidence_sum += conf;
        b.correct += u64::from(hit1);
        let c = &mut self.per_class[label as usize];
        c.support += 1;
        c.correct1 += u64::from(hit1);
        c.correct5 += u64::from(hit5);
        self.per_class[top1 as usize].predicted += 1;
        *self.confusion.entry((label, top1)).or_default() += 1;
    }

    pub fn top1(&self) -> f64 {
        percent(self.correct1, self.evaluated)
    }

    pub fn top5(&self) -> f64 {
        percent(self.correct5, self.evaluated)
    }

    /// Mean negative log-likelihood of the true class.
    pub fn nll(&self) -> f64 {
        if self.evaluated == 0 {
            0.0
        } else {
            self.loss_sum / self.evaluated as f64
        }
    }

    /// Expected calibration error (L1, equal-width bins, top-1 confidence), as a fraction.
    pub fn ece(&self) -> f64 {
        if self.evaluated == 0 {
            return 0.0;
        }
        self.bins
            .iter()
            .filter(|b| b.count > 0)
            .map(|b| {
                let acc = b.correct as f64 / b.count as f64;
                let conf = b.confidence_sum / b.count as f64;
                (b.count as f64 / self.evaluated as f64) * (acc - conf).abs()
            })
            .sum()
    }
}

pub fn percent(n: u64, d: u64) -> f64 {
    if d == 0 {
        0.0
    } else {
        100.0 * n as f64 / d as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(topk: &[u32], loss: f64, conf: f64) -> SampleResult {
        SampleResult {
            topk_indices: topk.to_vec(),
            topk_logits: vec![0.0; topk.len()],
            loss,
            confidence: conf,
            ..Default::default()
        }
    }

    #[test]
    fn counts_top1_top5_confusion_and_bad_samples() {
        let mut t = Tally::new(10, 5);
        t.add(0, "a", 1, &res(&[1, 2, 3, 4, 5], 0.5, 0.9));
        t.add(1, "b", 2, &res(&[1, 2, 3, 4, 5], 1.5, 0.6));
        t.add(2, "c", 9, &res(&[1, 2, 3, 4, 5], 2.5, 0.3));
        t.add(
            3,
            "d",
            0,
            &SampleResult {
                error: "truncated jpeg".into(),
                ..Default::default()
            },
        );
        t.add(4, "e", 12, &res(&[1], 0.0, 1.0));
        assert_eq!((t.evaluated, t.correct1, t.correct5), (3, 1, 2));
        assert!((t.top1() - 100.0 / 3.0).abs() < 1e-12);
        assert!((t.nll() - 1.5).abs() < 1e-12);
        assert_eq!(t.bad.len(), 2);
        assert_eq!(t.bad[0].reason, "truncated jpeg");
        assert!(t.bad[1].reason.contains("label 12"));
        assert_eq!(t.confusion[&(2, 1)], 1);
        assert_eq!(t.per_class[1].predicted, 3);
        assert_eq!(t.per_class[9].support, 1);
        // ECE by definition: bins of 0.9 (acc 1), 0.6 (acc 0), 0.3 (acc 0).
        let want = (0.1 + 0.6 + 0.3) / 3.0;
        assert!((t.ece() - want).abs() < 1e-12, "{}", t.ece());
    }

    #[test]
    fn top5_degrades_to_available_classes() {
        let t = Tally::new(3, 5);
        assert_eq!(t.k5, 3);
    }
}
