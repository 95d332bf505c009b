//! Accumulates per-sample results into the counts every report is computed from.
//!
//! Integer counts are order-independent; float sums (loss, calibration) are accumulated by the final
//! replay in shard order, so two runs that evaluated the same samples report identical numbers.
//! Precision, recall and F1 follow scikit-learn's definitions (see docs/run-directory.md).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tresnet_common::protocol::pb::{ClassCount, ConfusionCell, SampleResult, ShardCounts};

pub use tresnet_common::scoring::ECE_BINS;
use tresnet_common::scoring::{ece_bin, top5_k};

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
            k5: top5_k(top_k as u32, num_classes as u32),
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
        self.add_accepting(index, key, label, std::slice::from_ref(&label), r)
    }

    /// [`Self::add`] for a sample whose correct classes are `accepted` (ImageNet-ReaL's label list; the
    /// single label otherwise): the headline top-1 (and calibration) is a hit when the prediction is
    /// among them, top-5 when any of the first k5 is. The per-class table, the confusion matrix and
    /// precision/recall/F1 stay single-label, against the sample's own `label` (the val label), so
    /// they keep their scikit-learn definitions.
    pub fn add_accepting(
        &mut self,
        index: u64,
        key: &str,
        label: u32,
        accepted: &[u32],
        r: &SampleResult,
    ) -> bool {
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
        let hit1 = accepted.contains(&top1);
        let hit5 = r
            .topk_indices
            .iter()
            .take(self.k5)
            .any(|c| accepted.contains(c));
        let own1 = top1 == label;
        let own5 = r.topk_indices.iter().take(self.k5).any(|&c| c == label);
        self.correct1 += u64::from(hit1);
        self.correct5 += u64::from(hit5);
        self.loss_sum += r.loss;
        let conf = r.confidence.clamp(0.0, 1.0);
        // Bin i holds confidences in (i/B, (i+1)/B]; 0 goes to the first bin.
        let bin = ece_bin(conf);
        let b = &mut self.bins[bin];
        b.count += 1;
        b.confidence_sum += conf;
        b.correct += u64::from(hit1);
        let c = &mut self.per_class[label as usize];
        c.support += 1;
        c.correct1 += u64::from(own1);
        c.correct5 += u64::from(own5);
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

/// Checks a counts-only shard's counts against the job before they are accepted or merged: every
/// class in range, the calibration bins complete, and the totals consistent with one another (a
/// worker bug or a forged message must not skew the report).
pub fn check_counts(c: &ShardCounts, num_classes: usize, k5: usize) -> Result<(), CountsProblem> {
    let nc = num_classes as u32;
    if c.bin_count.len() != ECE_BINS
        || c.bin_confidence_sum.len() != ECE_BINS
        || c.bin_correct.len() != ECE_BINS
    {
        return Err(CountsProblem::Bins);
    }
    let mut confusion_total = 0u64;
    let mut diagonal = 0u64;
    let mut support = vec![0u64; num_classes];
    let mut seen = std::collections::BTreeSet::new();
    for cell in &c.confusion {
        if cell.label >= nc || cell.predicted >= nc {
            return Err(CountsProblem::CellOutside {
                label: cell.label,
                predicted: cell.predicted,
                classes: nc,
            });
        }
        if !seen.insert((cell.label, cell.predicted)) {
            return Err(CountsProblem::CellTwice {
                label: cell.label,
                predicted: cell.predicted,
            });
        }
        confusion_total = confusion_total.saturating_add(cell.count);
        support[cell.label as usize] = support[cell.label as usize].saturating_add(cell.count);
        if cell.label == cell.predicted {
            diagonal += cell.count;
        }
    }
    let mut top5_total = 0u64;
    let mut seen = std::collections::BTreeSet::new();
    for cc in &c.correct5_by_class {
        if cc.class_index >= nc || !seen.insert(cc.class_index) {
            return Err(CountsProblem::Top5Class(cc.class_index));
        }
        if cc.count > support[cc.class_index as usize] {
            return Err(CountsProblem::Top5Hits {
                class: cc.class_index,
                hits: cc.count,
                samples: support[cc.class_index as usize],
            });
        }
        top5_total += cc.count;
    }
    let bins_total: u64 = c.bin_count.iter().sum();
    let bins_correct: u64 = c.bin_correct.iter().sum();
    let checks = [
        ("confusion total", confusion_total, c.evaluated),
        ("confusion diagonal", diagonal, c.correct1),
        ("per-class top-5 hits", top5_total, c.correct5),
        ("calibration bin counts", bins_total, c.evaluated),
        ("calibration bin hits", bins_correct, c.correct1),
    ];
    for (what, got, want) in checks {
        if got != want {
            return Err(CountsProblem::Total { what, got, want });
        }
    }
    if c.correct1 > c.correct5 && k5 >= 1 {
        return Err(CountsProblem::Top1OverTop5 {
            top1: c.correct1,
            top5: c.correct5,
            k5,
        });
    }
    let floats_ok = c.loss_sum.is_finite()
        && c.loss_sum >= 0.0
        && c.bin_confidence_sum
            .iter()
            .zip(&c.bin_count)
            .all(|(s, &n)| s.is_finite() && *s >= 0.0 && *s <= n as f64 * (1.0 + 1e-9));
    if !floats_ok {
        return Err(CountsProblem::Sums);
    }
    Ok(())
}

/// How a counts-only shard's counts contradict the job or themselves.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CountsProblem {
    #[error("calibration bins must number {ECE_BINS}")]
    Bins,
    #[error("confusion cell ({label}, {predicted}) outside {classes} classes")]
    CellOutside {
        label: u32,
        predicted: u32,
        classes: u32,
    },
    #[error("confusion cell ({label}, {predicted}) given twice")]
    CellTwice { label: u32, predicted: u32 },
    #[error("top-5 count for class {0} is out of range or repeated")]
    Top5Class(u32),
    #[error("class {class} has {hits} top-5 hits but {samples} samples")]
    Top5Hits { class: u32, hits: u64, samples: u64 },
    #[error("{what} is {got}, expected {want}")]
    Total {
        what: &'static str,
        got: u64,
        want: u64,
    },
    #[error("{top1} top-1 hits exceed {top5} top-{k5} hits")]
    Top1OverTop5 { top1: u64, top5: u64, k5: usize },
    #[error("loss or confidence sums are not finite and in range")]
    Sums,
}

impl Tally {
    /// Adds a counts-only shard (already checked with [`check_counts`]).
    pub fn add_counts(&mut self, c: &ShardCounts) {
        self.evaluated += c.evaluated;
        self.correct1 += c.correct1;
        self.correct5 += c.correct5;
        self.loss_sum += c.loss_sum;
        for (i, b) in self.bins.iter_mut().enumerate() {
            b.count += c.bin_count[i];
            b.confidence_sum += c.bin_confidence_sum[i];
            b.correct += c.bin_correct[i];
        }
        for cell in &c.confusion {
            let t = &mut self.per_class[cell.label as usize];
            t.support += cell.count;
            if cell.label == cell.predicted {
                t.correct1 += cell.count;
            }
            self.per_class[cell.predicted as usize].predicted += cell.count;
            *self
                .confusion
                .entry((cell.label, cell.predicted))
                .or_default() += cell.count;
        }
        for cc in &c.correct5_by_class {
            self.per_class[cc.class_index as usize].correct5 += cc.count;
        }
    }

    /// Everything but the bad samples, as one [`ShardCounts`]: what a counts-only run stores in
    /// `counts.json` so that `report` can re-render it without per-sample predictions.
    pub fn as_counts(&self) -> ShardCounts {
        ShardCounts {
            evaluated: self.evaluated,
            correct1: self.correct1,
            correct5: self.correct5,
            loss_sum: self.loss_sum,
            bin_count: self.bins.iter().map(|b| b.count).collect(),
            bin_confidence_sum: self.bins.iter().map(|b| b.confidence_sum).collect(),
            bin_correct: self.bins.iter().map(|b| b.correct).collect(),
            confusion: self
                .confusion
                .iter()
                .map(|(&(label, predicted), &count)| ConfusionCell {
                    label,
                    predicted,
                    count,
                })
                .collect(),
            correct5_by_class: self
                .per_class
                .iter()
                .enumerate()
                .filter(|(_, t)| t.correct5 > 0)
                .map(|(c, t)| ClassCount {
                    class_index: c as u32,
                    count: t.correct5,
                })
                .collect(),
        }
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

    /// ReaL: the headline counts accept any class of the list; per-class counts and the confusion
    /// matrix stay against the val label.
    #[test]
    fn label_lists_score_the_headline_and_leave_per_class_single_label() {
        let mut t = Tally::new(10, 5);
        // Predicted 3 with list {3, 7}, val label 7: a ReaL top-1 hit, a per-class miss.
        assert!(t.add_accepting(0, "a", 7, &[3, 7], &res(&[3, 7, 2, 4, 5], 0.5, 0.9)));
        // Predicted 1, list {8}: top-5 only if 8 is in the five; it is not.
        assert!(t.add_accepting(1, "b", 8, &[8], &res(&[1, 2, 3, 4, 5], 0.5, 0.9)));
        // Predicted 6, list {2, 9}, 9 third: a ReaL top-5 hit.
        assert!(t.add_accepting(2, "c", 2, &[2, 9], &res(&[6, 0, 9, 4, 5], 0.5, 0.9)));
        assert_eq!((t.correct1, t.correct5), (1, 2));
        assert_eq!(t.per_class[7].correct1, 0);
        assert_eq!(t.per_class[7].correct5, 1);
        assert_eq!(t.per_class[2].correct5, 0);
        assert_eq!(t.confusion[&(7, 3)], 1);
        assert_eq!(t.bins[ece_bin(0.9)].correct, 1);
    }

    #[test]
    fn top5_degrades_to_available_classes() {
        let t = Tally::new(3, 5);
        assert_eq!(t.k5, 3);
    }

    fn tally_of(rows: &[(u32, &[u32], f64, f64)], classes: usize) -> Tally {
        let mut t = Tally::new(classes, 5);
        for (i, (label, topk, loss, conf)) in rows.iter().enumerate() {
            assert!(t.add(i as u64, "k", *label, &res(topk, *loss, *conf)));
        }
        t
    }

    #[test]
    fn counts_merge_to_the_same_tally_as_the_samples() {
        let rows: [(u32, &[u32], f64, f64); 5] = [
            (1, &[1, 2, 3, 4, 5], 0.5, 0.9),
            (2, &[1, 2, 3, 4, 5], 1.5, 0.6),
            (6, &[1, 2, 3, 4, 5], 2.5, 0.3),
            (6, &[6, 2, 3, 4, 5], 0.1, 1.0),
            (0, &[3, 4, 5, 6, 7], 3.0, 0.0),
        ];
        let per_sample = tally_of(&rows, 8);
        // Two shards' counts merged give the tally of all their samples.
        let a = tally_of(&rows[..2], 8).as_counts();
        let b = tally_of(&rows[2..], 8).as_counts();
        let mut merged = Tally::new(8, 5);
        for c in [&a, &b] {
            check_counts(c, 8, 5).unwrap();
            merged.add_counts(c);
        }
        assert_eq!(merged.as_counts(), per_sample.as_counts());
        assert_eq!(merged.per_class, per_sample.per_class);
        assert_eq!(merged.confusion, per_sample.confusion);
        assert_eq!(merged.bins, per_sample.bins);
        assert_eq!(merged.ece(), per_sample.ece());
    }

    #[test]
    fn inconsistent_counts_are_refused_naming_the_problem() {
        let rows: [(u32, &[u32], f64, f64); 2] =
            [(1, &[1, 2, 3, 4, 5], 0.5, 0.9), (2, &[1, 2], 1.5, 0.6)];
        let good = tally_of(&rows, 8).as_counts();
        let bad = |f: &dyn Fn(&mut ShardCounts), needle: &str| {
            let mut c = good.clone();
            f(&mut c);
            let e = check_counts(&c, 8, 5).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        };
        bad(&|c| c.evaluated += 1, "confusion total");
        bad(&|c| c.correct1 += 1, "confusion diagonal");
        bad(
            &|c| c.bin_count.pop().map(drop).unwrap_or(()),
            "bins must number",
        );
        bad(&|c| c.confusion[0].predicted = 8, "outside 8 classes");
        bad(
            &|c| {
                let dup = c.confusion[0];
                c.confusion.push(dup)
            },
            "given twice",
        );
        bad(&|c| c.correct5_by_class[0].count = 9, "top-5 hits but");
        bad(&|c| c.loss_sum = f64::NAN, "not finite");
        bad(
            &|c| c.bin_confidence_sum[13] = 5.0,
            "not finite and in range",
        );
        check_counts(&good, 8, 5).unwrap();
    }
}
