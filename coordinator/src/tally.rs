//! Accumulates per-sample results into the counts every report is computed from.
//!
//! Integer counts are order-independent; float sums (loss, calibration) are accumulated by the final
//! replay in shard order, so two runs that evaluated the same samples report identical numbers.
//! Precision, recall and F1 follow scikit-learn's definitions (see docs/run-directory.md).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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

    /// Adds one sample and says whether it was evaluated. A result carrying an error, or one that
    /// contradicts the job (no prediction, a class out of range), becomes a bad sample rather than a
    /// silent miscount.
    pub fn add(&mut self, index: u64, key: &str, label: u32, r: &SampleResult) -> bool {
        let bad = |reason: String| BadSample {
            index: Some(index),
            key: key.to_string(),
            reason,
        };
        if !r.error.is_empty() {
            self.bad.push(bad(r.error.clone()));
            return false;
        }
        let nc = self.num_classes as u32;
        if label >= nc {
            self.bad.push(bad(format!(
                "label {label} outside the model's {nc} classes"
            )));
            return false;
        }
        let Some(&top1) = r.topk_indices.first() else {
            self.bad.push(bad("worker returned no prediction".into()));
            return false;
        };
        if r.topk_indices.iter().any(|&c| c >= nc) {
            self.bad
                .push(bad("worker returned a class index out of range".into()));
            return false;
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
        true
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

/// Precision, recall and F1 of one class (fractions); `None` where the definition divides by zero.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassScores {
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
}

/// An average of precision, recall and F1 over classes (fractions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Averages {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// One bin of the reliability diagram: confidences in `(lower, upper]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    pub lower: f64,
    pub upper: f64,
    pub count: u64,
    /// Mean top-1 confidence and top-1 accuracy of the bin's samples (fractions); null when empty.
    pub confidence: Option<f64>,
    pub accuracy: Option<f64>,
}

impl Tally {
    /// Scores of class `c` with top-1 as the prediction. F1 is `2·tp / (support + predicted)`, the form
    /// scikit-learn evaluates, so the two agree to the last bits rather than only mathematically.
    pub fn class_scores(&self, c: usize) -> ClassScores {
        let t = &self.per_class[c];
        let tp = t.correct1 as f64;
        let div = |n: f64, d: u64| (d > 0).then(|| n / d as f64);
        ClassScores {
            precision: div(tp, t.predicted),
            recall: div(tp, t.support),
            f1: div(2.0 * tp, t.support + t.predicted),
        }
    }

    /// Macro average (unweighted mean over the classes that occur as a label or a prediction, an
    /// undefined score counting as 0: scikit-learn's default label set and `zero_division=0`) and
    /// weighted average (by support).
    pub fn averages(&self) -> (Averages, Averages) {
        let (mut macro_sum, mut weighted_sum) = (Averages::default(), Averages::default());
        let (mut classes, mut support) = (0u64, 0u64);
        for (c, t) in self.per_class.iter().enumerate() {
            if t.support == 0 && t.predicted == 0 {
                continue;
            }
            let s = self.class_scores(c);
            let (p, r, f) = (
                s.precision.unwrap_or(0.0),
                s.recall.unwrap_or(0.0),
                s.f1.unwrap_or(0.0),
            );
            classes += 1;
            support += t.support;
            macro_sum.precision += p;
            macro_sum.recall += r;
            macro_sum.f1 += f;
            let w = t.support as f64;
            weighted_sum.precision += p * w;
            weighted_sum.recall += r * w;
            weighted_sum.f1 += f * w;
        }
        let scale = |a: Averages, d: u64| {
            if d == 0 {
                Averages::default()
            } else {
                Averages {
                    precision: a.precision / d as f64,
                    recall: a.recall / d as f64,
                    f1: a.f1 / d as f64,
                }
            }
        };
        (scale(macro_sum, classes), scale(weighted_sum, support))
    }

    /// For each true class, the other class it is most often predicted as and how often (ties: the
    /// lower class index); `None` when it was never confused.
    pub fn most_confused(&self) -> Vec<Option<(u32, u64)>> {
        let mut out: Vec<Option<(u32, u64)>> = vec![None; self.num_classes];
        for (&(t, p), &n) in &self.confusion {
            if t != p && out[t as usize].is_none_or(|(_, best)| n > best) {
                out[t as usize] = Some((p, n));
            }
        }
        out
    }

    pub fn reliability(&self) -> Vec<ReliabilityBin> {
        self.bins
            .iter()
            .enumerate()
            .map(|(i, b)| ReliabilityBin {
                lower: i as f64 / ECE_BINS as f64,
                upper: (i + 1) as f64 / ECE_BINS as f64,
                count: b.count,
                confidence: (b.count > 0).then(|| b.confidence_sum / b.count as f64),
                accuracy: (b.count > 0).then(|| b.correct as f64 / b.count as f64),
            })
            .collect()
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
    fn precision_recall_f1_follow_sklearn_definitions() {
        // y_true = [0, 0, 1, 2], y_pred = [0, 1, 1, 1]; class 3 never occurs.
        let mut t = Tally::new(4, 1);
        for (i, (y, p)) in [(0, 0), (0, 1), (1, 1), (2, 1)].into_iter().enumerate() {
            assert!(t.add(i as u64, "k", y, &res(&[p], 0.0, 0.5)));
        }
        let s0 = t.class_scores(0);
        assert_eq!((s0.precision, s0.recall), (Some(1.0), Some(0.5)));
        let s1 = t.class_scores(1);
        assert_eq!(s1.precision, Some(1.0 / 3.0));
        assert_eq!(s1.f1, Some(0.5));
        let s2 = t.class_scores(2);
        assert_eq!(
            (s2.precision, s2.recall, s2.f1),
            (None, Some(0.0), Some(0.0))
        );
        assert_eq!(t.class_scores(3).f1, None);
        // sklearn: precision_recall_fscore_support(average='macro', zero_division=0) over {0, 1, 2}.
        let (m, w) = t.averages();
        assert!((m.precision - (1.0 + 1.0 / 3.0) / 3.0).abs() < 1e-15);
        assert!((m.recall - 0.5).abs() < 1e-15);
        assert!((w.recall - (0.5 * 2.0 + 1.0) / 4.0).abs() < 1e-15);
        assert_eq!(t.most_confused()[0], Some((1, 1)));
        assert_eq!(t.most_confused()[1], None);
        let rel = t.reliability();
        assert_eq!(rel.len(), ECE_BINS);
        assert_eq!(rel[7].count, 4);
        assert_eq!(rel[7].accuracy, Some(0.5));
        assert_eq!(rel[0].confidence, None);
    }

    #[test]
    fn top5_degrades_to_available_classes() {
        let t = Tally::new(3, 5);
        assert_eq!(t.k5, 3);
    }
}
