//! Checks a worker's shard submission against its lease and job before anything of it is used: pure and
//! synchronous, so every rule has a unit test of its own; the service only feeds it the stream.
//!
//! A submission is refused whole when it breaks exactly-once accounting (a sample outside the shard,
//! repeated or missing) or when a row's values could not have come from a softmax over the model's
//! classes (a short or repeated top-k, a class out of range, NaN or unsorted logits, a negative loss, a
//! confidence above 1, a loss that contradicts the label's logit). Per-sample rows are held to the same
//! standard as the counts-only path's [`check_counts`]: a worker bug, an fp16 overflow or a forged
//! message fails the submission, never a metric.

use std::ops::Range;

use tresnet_common::ids::ShardId;
use tresnet_common::job::{JobSpec, SaveLogits};
use tresnet_common::protocol::pb::{
    SampleResult, ShardCounts, ShardTrailer, SubmitHeader, submit_request::Item,
};
use tresnet_common::scoring::top5_k;

use crate::tally::check_counts;

/// How far a row's loss may stray from what its confidence and logits imply. The worker computes
/// both in f64 from the same f32 logits (`worker/src/scoring.rs`), so they agree to ~1e-12 relative;
/// the margin only absorbs the f64 rounding of `ln(confidence)` at large logits.
const CONSISTENCY_TOLERANCE: f64 = 1e-6;

/// What one shard's submission is checked against: its samples and the job's output settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardJob {
    pub shard: ShardId,
    pub samples: Range<u64>,
    /// The dataset label of each sample of `samples`, in order.
    pub labels: Vec<u32>,
    pub counts_only: bool,
    /// Classes the job is scored on (a class subset's size, else the model's): what top-k indices and
    /// labels range over.
    pub num_classes: u32,
    /// The model's outputs: the width of saved logits, which stay full rows under a class subset.
    pub model_classes: u32,
    /// The job's `--top-k`; each row carries `min(top_k, num_classes)` predictions.
    pub top_k: u32,
    pub save_logits: SaveLogits,
    /// Synthetic workers rank pseudo-random classes with made-up losses and ship no logits: the
    /// label-consistency and saved-logits rules do not apply (their numbers are never accuracy).
    pub synthetic: bool,
}

impl ShardJob {
    pub fn new(job: &JobSpec, shard: ShardId, samples: Range<u64>, labels: Vec<u32>) -> Self {
        ShardJob {
            shard,
            samples,
            labels,
            counts_only: job.outputs.counts_only,
            num_classes: job.scored_classes(),
            model_classes: job.model.num_classes,
            top_k: job.outputs.top_k,
            save_logits: job.outputs.save_logits,
            synthetic: job.model.synthetic,
        }
    }

    /// Predictions every row carries.
    pub fn k(&self) -> usize {
        self.top_k.min(self.num_classes) as usize
    }

    fn expected(&self) -> usize {
        (self.samples.end - self.samples.start) as usize
    }

    fn label_of(&self, index: u64) -> Option<u32> {
        let i = index.checked_sub(self.samples.start)?;
        self.labels.get(i as usize).copied()
    }
}

/// Why a header is not answered with a check of its shard.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HeaderProblem {
    /// A late result of an earlier job: that job already accounted every shard. Not the worker's
    /// fault (its job ended while it computed).
    #[error("job {job:?} is over; result dropped")]
    StaleJob { job: String },
    #[error("unknown {shard}: the job has {shards} shards")]
    UnknownShard { shard: ShardId, shards: u64 },
}

/// Checks a submission's header against the job being served.
pub fn check_header(
    h: &SubmitHeader,
    job_id: &str,
    shard_count: usize,
) -> Result<ShardId, HeaderProblem> {
    if h.job_id != job_id {
        return Err(HeaderProblem::StaleJob {
            job: h.job_id.clone(),
        });
    }
    let shard = ShardId(h.shard_id);
    if h.shard_id >= shard_count as u64 {
        return Err(HeaderProblem::UnknownShard {
            shard,
            shards: shard_count as u64,
        });
    }
    Ok(shard)
}

/// What is wrong with one row; the sample is named by [`Rejection::Row`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RowProblem {
    #[error("a row with an error carries a prediction or logits")]
    ErrorWithPrediction,
    #[error("{got} top-k classes, expected {want} (min of --top-k and the class count)")]
    TopkLength { got: usize, want: usize },
    #[error("{got} top-k logits for {want} top-k classes")]
    TopkLogitsLength { got: usize, want: usize },
    #[error("class {class} is outside the model's {classes} classes")]
    ClassOutOfRange { class: u32, classes: u32 },
    #[error("class {class} is ranked twice")]
    RepeatedClass { class: u32 },
    #[error("top-k logit {value} at rank {rank} is not finite")]
    NonFiniteLogit { rank: usize, value: f32 },
    #[error(
        "top-k logits are not in descending order at rank {rank} (equal logits rank the lower class first)"
    )]
    Unsorted { rank: usize },
    #[error("loss {loss} is not finite and >= 0")]
    Loss { loss: f64 },
    #[error("confidence {confidence} is not finite and in [0, 1]")]
    Confidence { confidence: f64 },
    #[error("confidence {confidence} is below 1/{classes}, the least a top-1 softmax can be")]
    ConfidenceBelowUniform { confidence: f64, classes: u32 },
    #[error(
        "loss {loss} contradicts label {label}: its top-k logits and confidence imply {implied}"
    )]
    LabelInconsistent {
        label: u32,
        loss: f64,
        implied: String,
    },
    #[error("full logits are {got} bytes; the job's --save-logits {mode:?} needs {want}")]
    SavedLogitsLength {
        got: usize,
        want: usize,
        mode: SaveLogits,
    },
    #[error("full logit of class {class} is not finite")]
    NonFiniteSavedLogit { class: usize },
}

/// Why a submission is refused; nothing of it is journaled or reported. Every variant but
/// [`Rejection::Unfinished`] is the submitting worker's fault: its shard is retried on another worker.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    #[error("nothing may follow the shard trailer of {shard}")]
    AfterTrailer { shard: ShardId },
    #[error("shard counts sent for {shard} of a job that is not counts-only")]
    CountsNotCountsOnly { shard: ShardId },
    #[error(
        "only result batches, then (counts-only jobs) one shard-counts message, may follow the header of {shard}"
    )]
    OutOfOrder { shard: ShardId },
    #[error("sample {index} of counts-only {shard} sent as a result without an error")]
    CountsOnlyResult { shard: ShardId, index: u64 },
    #[error("sample {index} is not in {shard} ({}..{})", range.start, range.end)]
    OutsideShard {
        shard: ShardId,
        index: u64,
        range: Range<u64>,
    },
    #[error("sample {index} submitted twice for {shard}")]
    Repeated { shard: ShardId, index: u64 },
    #[error("sample {index} of {shard}: {problem}")]
    Row {
        shard: ShardId,
        index: u64,
        problem: RowProblem,
    },
    #[error("{shard} counts are inconsistent: {reason}")]
    BadCounts {
        shard: ShardId,
        reason: crate::tally::CountsProblem,
    },
    #[error("counts-only {shard} submission has no shard counts")]
    NoCounts { shard: ShardId },
    #[error("{shard} submission has {got} of {expected} samples")]
    Missing {
        shard: ShardId,
        got: usize,
        expected: usize,
    },
    #[error("a message of the {shard} submission is over the {limit}-byte cap")]
    OverMessageCap { shard: ShardId, limit: usize },
    /// Not the worker's fault: see [`Rejection::blames_worker`].
    #[error(
        "{shard} submission ended without its trailer after {got} of {expected} samples: abandoned, not recorded"
    )]
    Unfinished {
        shard: ShardId,
        got: usize,
        expected: usize,
    },
}

impl Rejection {
    /// Whether the submission broke a rule. A shard the worker abandoned midway (its store failed, it
    /// is draining) ends its stream early without a trailer; the worker hands the lease back with the
    /// reason, and nothing of the stream is recorded, but nobody is blamed.
    pub fn blames_worker(&self) -> bool {
        !matches!(self, Rejection::Unfinished { .. })
    }
}

/// A submission that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// Sorted by sample index.
    pub results: Vec<SampleResult>,
    pub counts: Option<ShardCounts>,
    pub trailer: Option<ShardTrailer>,
    /// Rows carrying an error (bad samples).
    pub bad: u64,
}

/// Checks a submission's messages one at a time (so a stream of repeats is refused at the first,
/// not buffered), then as a whole in [`Self::finish`].
#[derive(Debug)]
pub struct SubmissionCheck {
    job: ShardJob,
    /// Per sample of the shard, whether a row for it arrived.
    seen: Vec<bool>,
    results: Vec<SampleResult>,
    counts: Option<ShardCounts>,
    trailer: Option<ShardTrailer>,
}

impl SubmissionCheck {
    pub fn new(job: ShardJob) -> Self {
        let capacity = if job.counts_only { 0 } else { job.expected() };
        SubmissionCheck {
            seen: vec![false; job.expected()],
            job,
            results: Vec::with_capacity(capacity),
            counts: None,
            trailer: None,
        }
    }

    pub fn shard(&self) -> ShardId {
        self.job.shard
    }

    /// Rows received so far and rows the shard has (for the progress log the fault tests wait on).
    pub fn progress(&self) -> (usize, usize) {
        (self.results.len(), self.job.expected())
    }

    /// Takes the next message after the header.
    pub fn push(&mut self, item: Option<Item>) -> Result<(), Rejection> {
        let shard = self.job.shard;
        if self.trailer.is_some() {
            return Err(Rejection::AfterTrailer { shard });
        }
        let batch = match item {
            Some(Item::Trailer(t)) => {
                self.trailer = Some(t);
                return Ok(());
            }
            Some(Item::Batch(b)) if self.counts.is_none() => b,
            Some(Item::Counts(c)) if self.job.counts_only && self.counts.is_none() => {
                self.counts = Some(c);
                return Ok(());
            }
            Some(Item::Counts(_)) if !self.job.counts_only => {
                return Err(Rejection::CountsNotCountsOnly { shard });
            }
            _ => return Err(Rejection::OutOfOrder { shard }),
        };
        for r in batch.results {
            if !self.job.samples.contains(&r.index) {
                return Err(Rejection::OutsideShard {
                    shard,
                    index: r.index,
                    range: self.job.samples.clone(),
                });
            }
            if self.job.counts_only && r.error.is_empty() {
                return Err(Rejection::CountsOnlyResult {
                    shard,
                    index: r.index,
                });
            }
            let seen = &mut self.seen[(r.index - self.job.samples.start) as usize];
            if std::mem::replace(seen, true) {
                return Err(Rejection::Repeated {
                    shard,
                    index: r.index,
                });
            }
            let label = self.job.label_of(r.index).unwrap_or(u32::MAX);
            check_row(&r, label, &self.job).map_err(|problem| Rejection::Row {
                shard,
                index: r.index,
                problem,
            })?;
            self.results.push(r);
        }
        Ok(())
    }

    /// The whole submission: counts consistent, every sample of the shard present exactly once.
    pub fn finish(mut self) -> Result<Checked, Rejection> {
        let shard = self.job.shard;
        let evaluated = match (&self.counts, self.job.counts_only) {
            (Some(c), _) => {
                let k5 = top5_k(self.job.top_k, self.job.num_classes);
                check_counts(c, self.job.num_classes as usize, k5)
                    .map_err(|reason| Rejection::BadCounts { shard, reason })?;
                usize::try_from(c.evaluated).unwrap_or(usize::MAX)
            }
            (None, true) if self.trailer.is_some() => return Err(Rejection::NoCounts { shard }),
            (None, _) => 0,
        };
        let got = self.results.len().saturating_add(evaluated);
        let incomplete =
            got != self.job.expected() || (self.job.counts_only && self.counts.is_none());
        if incomplete {
            let expected = self.job.expected();
            // The trailer goes last, once the shard is complete: a stream that ends short without it
            // is a shard the worker gave up on (it hands the lease back with its reason).
            return Err(match self.trailer {
                None => Rejection::Unfinished {
                    shard,
                    got,
                    expected,
                },
                Some(_) => Rejection::Missing {
                    shard,
                    got,
                    expected,
                },
            });
        }
        self.results.sort_by_key(|r| r.index);
        let bad = self.results.iter().filter(|r| !r.error.is_empty()).count() as u64;
        Ok(Checked {
            results: self.results,
            counts: self.counts,
            trailer: self.trailer,
            bad,
        })
    }
}

/// Checks a whole submission (every message after the header): [`SubmissionCheck`] in one call.
pub fn check_submission(
    job: ShardJob,
    items: impl IntoIterator<Item = Option<Item>>,
) -> Result<Checked, Rejection> {
    let mut c = SubmissionCheck::new(job);
    for item in items {
        c.push(item)?;
    }
    c.finish()
}

/// Checks one row against the job and the sample's `label`. A row carrying an error is a bad sample
/// and must carry nothing else; any other row must be a prediction a softmax over the model's classes
/// could have produced (see the module docs).
pub fn check_row(r: &SampleResult, label: u32, job: &ShardJob) -> Result<(), RowProblem> {
    if !r.error.is_empty() {
        if !r.topk_indices.is_empty() || !r.topk_logits.is_empty() || !r.logits.is_empty() {
            return Err(RowProblem::ErrorWithPrediction);
        }
        return Ok(());
    }
    let nc = job.num_classes;
    let want = job.k();
    if r.topk_indices.len() != want {
        return Err(RowProblem::TopkLength {
            got: r.topk_indices.len(),
            want,
        });
    }
    if r.topk_logits.len() != want {
        return Err(RowProblem::TopkLogitsLength {
            got: r.topk_logits.len(),
            want,
        });
    }
    if let Some(&c) = r.topk_indices.iter().find(|&&c| c >= nc) {
        return Err(RowProblem::ClassOutOfRange {
            class: c,
            classes: nc,
        });
    }
    if let Some(class) = repeated(&r.topk_indices) {
        return Err(RowProblem::RepeatedClass { class });
    }
    if let Some((rank, &value)) = r
        .topk_logits
        .iter()
        .enumerate()
        .find(|(_, v)| !v.is_finite())
    {
        return Err(RowProblem::NonFiniteLogit { rank, value });
    }
    for rank in 1..want {
        let (a, b) = (r.topk_logits[rank - 1], r.topk_logits[rank]);
        let tie_ok = a == b && r.topk_indices[rank - 1] < r.topk_indices[rank];
        if !(a > b || tie_ok) {
            return Err(RowProblem::Unsorted { rank });
        }
    }
    if !(r.loss.is_finite() && r.loss >= 0.0) {
        return Err(RowProblem::Loss { loss: r.loss });
    }
    if !(r.confidence.is_finite() && (0.0..=1.0).contains(&r.confidence)) {
        return Err(RowProblem::Confidence {
            confidence: r.confidence,
        });
    }
    if job.synthetic {
        return Ok(());
    }
    check_saved_logits(r, job)?;
    if r.confidence < (1.0 - CONSISTENCY_TOLERANCE) / nc as f64 {
        return Err(RowProblem::ConfidenceBelowUniform {
            confidence: r.confidence,
            classes: nc,
        });
    }
    check_label(r, label, nc)
}

/// A class ranked twice, if any. The usual top-5 is compared pairwise: no allocation on the path
/// every row of every shard takes (the coordinator accounts hundreds of thousands of rows a second).
fn repeated(classes: &[u32]) -> Option<u32> {
    const PAIRWISE_UP_TO: usize = 16;
    if classes.len() <= PAIRWISE_UP_TO {
        return classes
            .iter()
            .enumerate()
            .find(|(i, c)| classes[..*i].contains(c))
            .map(|(_, &c)| c);
    }
    let mut sorted = classes.to_vec();
    sorted.sort_unstable();
    sorted.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
}

/// The loss is `lse - logit[label]` and the confidence `exp(logit[top1] - lse)`, so the two and the
/// top-k logits fix each other: with the label ranked, its loss is known; unranked, its logit is at
/// most the last ranked one, so its loss is at least that far below `lse`.
fn check_label(r: &SampleResult, label: u32, nc: u32) -> Result<(), RowProblem> {
    if label >= nc || r.topk_indices.is_empty() {
        // An out-of-range label is a bad sample in the tally; an empty top-k is a job of --top-k 0.
        return Ok(());
    }
    let lse = f64::from(r.topk_logits[0]) - r.confidence.ln();
    let tolerance = CONSISTENCY_TOLERANCE * (1.0 + lse.abs());
    let inconsistent = |implied: String| RowProblem::LabelInconsistent {
        label,
        loss: r.loss,
        implied,
    };
    match r.topk_indices.iter().position(|&c| c == label) {
        Some(rank) => {
            let implied = lse - f64::from(r.topk_logits[rank]);
            if (r.loss - implied).abs() > tolerance {
                return Err(inconsistent(format!("{implied}")));
            }
        }
        None if r.topk_indices.len() == nc as usize => {
            return Err(inconsistent(
                "a rank, but every class is ranked without it".into(),
            ));
        }
        None => {
            let least = lse - f64::from(r.topk_logits[r.topk_logits.len() - 1]);
            if r.loss < least - tolerance {
                return Err(inconsistent(format!("at least {least}")));
            }
        }
    }
    Ok(())
}

fn check_saved_logits(r: &SampleResult, job: &ShardJob) -> Result<(), RowProblem> {
    let width = match job.save_logits {
        SaveLogits::None => 0,
        SaveLogits::Fp16 => 2,
        SaveLogits::Fp32 => 4,
    };
    let want = width * job.model_classes as usize;
    if r.logits.len() != want {
        return Err(RowProblem::SavedLogitsLength {
            got: r.logits.len(),
            want,
            mode: job.save_logits,
        });
    }
    let finite = |(class, ok): (usize, bool)| if ok { Ok(()) } else { Err(class) };
    let result: Result<(), usize> = match job.save_logits {
        SaveLogits::None => Ok(()),
        SaveLogits::Fp16 => r
            .logits
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).is_finite())
            .enumerate()
            .try_for_each(finite),
        SaveLogits::Fp32 => r
            .logits
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite())
            .enumerate()
            .try_for_each(finite),
    };
    result.map_err(|class| RowProblem::NonFiniteSavedLogit { class })
}

/// A valid prediction row for a softmax over `logits` (all classes), ranked as the worker ranks:
/// what a correct worker submits. Tests build rows with it and then break one rule at a time.
#[cfg(test)]
pub fn row_from_logits(index: u64, logits: &[f32], label: u32, top_k: usize) -> SampleResult {
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    idx.sort_by(|&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    idx.truncate(top_k.min(logits.len()));
    let max = f64::from(logits[idx[0] as usize]);
    let lse = max
        + logits
            .iter()
            .map(|&v| (f64::from(v) - max).exp())
            .sum::<f64>()
            .ln();
    SampleResult {
        index,
        topk_logits: idx.iter().map(|&i| logits[i as usize]).collect(),
        topk_indices: idx,
        loss: lse - f64::from(logits[label as usize]),
        confidence: (max - lse).exp(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tresnet_common::protocol::pb::ResultBatch;

    use super::*;

    const CLASSES: u32 = 8;

    fn job() -> ShardJob {
        ShardJob {
            shard: ShardId(3),
            samples: 6..10,
            labels: vec![0, 1, 2, 3],
            counts_only: false,
            num_classes: CLASSES,
            model_classes: CLASSES,
            top_k: 5,
            save_logits: SaveLogits::None,
            synthetic: false,
        }
    }

    fn logits(i: u64) -> Vec<f32> {
        (0..CLASSES)
            .map(|c| ((c as u64 * 7 + i * 3) % 11) as f32 * 0.5 - 1.0)
            .collect()
    }

    /// Sample `i`'s row for label `label`, as a correct worker would send it.
    fn row(i: u64, label: u32) -> SampleResult {
        row_from_logits(i, &logits(i), label, 5)
    }

    fn good_rows() -> Vec<SampleResult> {
        (6..10).map(|i| row(i, (i - 6) as u32)).collect()
    }

    fn batch(results: Vec<SampleResult>) -> Option<Item> {
        Some(Item::Batch(ResultBatch { results }))
    }

    /// Rejection of the good submission with row `at` changed by `f`.
    fn with_row(at: usize, f: impl Fn(&mut SampleResult)) -> Rejection {
        let mut rows = good_rows();
        f(&mut rows[at]);
        check_submission(job(), [batch(rows)]).unwrap_err()
    }

    fn row_problem(at: usize, f: impl Fn(&mut SampleResult)) -> RowProblem {
        match with_row(at, f) {
            Rejection::Row {
                shard,
                index,
                problem,
            } => {
                assert_eq!((shard, index), (ShardId(3), 6 + at as u64));
                problem
            }
            other => panic!("not a row problem: {other}"),
        }
    }

    #[test]
    fn a_correct_submission_passes_sorted_with_its_bad_samples_counted() {
        let mut rows = good_rows();
        rows.reverse();
        rows[0] = SampleResult {
            index: 9,
            error: "corrupt jpeg".into(),
            ..Default::default()
        };
        let (a, b) = rows.split_at(2);
        let c = check_submission(
            job(),
            [
                batch(a.to_vec()),
                batch(b.to_vec()),
                Some(Item::Trailer(ShardTrailer {
                    store_retries: 1,
                    ..Default::default()
                })),
            ],
        )
        .unwrap();
        assert_eq!(
            c.results.iter().map(|r| r.index).collect::<Vec<_>>(),
            [6, 7, 8, 9]
        );
        assert_eq!((c.bad, c.trailer.unwrap().store_retries), (1, 1));
    }

    #[test]
    fn stale_job_and_unknown_shard_headers() {
        let h = |job: &str, shard| SubmitHeader {
            worker_id: "w".into(),
            shard_id: shard,
            lease_id: 1,
            job_id: job.into(),
        };
        assert_eq!(check_header(&h("J#2", 3), "J#2", 4), Ok(ShardId(3)));
        assert_eq!(
            check_header(&h("J#1", 3), "J#2", 4),
            Err(HeaderProblem::StaleJob { job: "J#1".into() })
        );
        assert!(matches!(
            check_header(&h("J#2", 4), "J#2", 4),
            Err(HeaderProblem::UnknownShard { .. })
        ));
    }

    #[test]
    fn samples_outside_the_shard_repeated_or_missing() {
        let mut rows = good_rows();
        rows.push(row(10, 0));
        assert!(matches!(
            check_submission(job(), [batch(rows)]),
            Err(Rejection::OutsideShard { index: 10, .. })
        ));
        let rows = good_rows();
        let again = vec![rows[1].clone()];
        assert_eq!(
            check_submission(job(), [batch(rows), batch(again)]),
            Err(Rejection::Repeated {
                shard: ShardId(3),
                index: 7
            })
        );
        let mut rows = good_rows();
        rows.pop();
        let trailer = Some(Item::Trailer(ShardTrailer::default()));
        let missing = check_submission(job(), [batch(rows.clone()), trailer]).unwrap_err();
        assert_eq!(
            missing,
            Rejection::Missing {
                shard: ShardId(3),
                got: 3,
                expected: 4
            }
        );
        assert!(missing.blames_worker());
        // Ended short without the trailer: abandoned by the worker, not a broken rule.
        let abandoned = check_submission(job(), [batch(rows)]).unwrap_err();
        assert!(
            matches!(abandoned, Rejection::Unfinished { got: 3, .. }) && !abandoned.blames_worker(),
            "{abandoned}"
        );
        // Complete without a trailer (it is optional): accepted.
        check_submission(job(), [batch(good_rows())]).unwrap();
    }

    #[test]
    fn message_order_trailer_last_counts_only_for_counts_only_jobs() {
        let trailer = || Some(Item::Trailer(ShardTrailer::default()));
        assert!(matches!(
            check_submission(job(), [trailer(), batch(good_rows())]),
            Err(Rejection::AfterTrailer { .. })
        ));
        assert!(matches!(
            check_submission(job(), [Some(Item::Counts(ShardCounts::default()))]),
            Err(Rejection::CountsNotCountsOnly { .. })
        ));
        assert!(matches!(
            check_submission(job(), [None]),
            Err(Rejection::OutOfOrder { .. })
        ));
    }

    #[test]
    fn counts_only_submissions_carry_counts_and_only_error_rows() {
        let counts_only = || ShardJob {
            counts_only: true,
            ..job()
        };
        let mut tally = crate::tally::Tally::new(CLASSES as usize, 5);
        for r in &good_rows()[..3] {
            assert!(tally.add(r.index, "k", (r.index - 6) as u32, r));
        }
        let counts = tally.as_counts();
        let error_row = SampleResult {
            index: 9,
            error: "truncated".into(),
            ..Default::default()
        };
        let c = check_submission(
            counts_only(),
            [
                batch(vec![error_row.clone()]),
                Some(Item::Counts(counts.clone())),
            ],
        )
        .unwrap();
        assert_eq!((c.results.len(), c.bad), (1, 1));
        assert!(matches!(
            check_submission(counts_only(), [batch(good_rows())]),
            Err(Rejection::CountsOnlyResult { index: 6, .. })
        ));
        let trailer = || Some(Item::Trailer(ShardTrailer::default()));
        assert!(matches!(
            check_submission(counts_only(), [batch(vec![error_row.clone()]), trailer()]),
            Err(Rejection::NoCounts { .. })
        ));
        assert!(matches!(
            check_submission(counts_only(), [batch(vec![error_row.clone()])]),
            Err(Rejection::Unfinished { .. })
        ));
        let mut skewed = counts.clone();
        skewed.loss_sum = f64::NAN;
        assert!(matches!(
            check_submission(
                counts_only(),
                [batch(vec![error_row.clone()]), Some(Item::Counts(skewed))]
            ),
            Err(Rejection::BadCounts { .. })
        ));
        // Counts covering fewer samples than the shard holds.
        assert!(matches!(
            check_submission(counts_only(), [Some(Item::Counts(counts)), trailer()]),
            Err(Rejection::Missing {
                got: 3,
                expected: 4,
                ..
            })
        ));
    }

    #[test]
    fn topk_length_is_min_of_top_k_and_classes() {
        assert_eq!(
            row_problem(0, |r| {
                r.topk_indices.pop();
                r.topk_logits.pop();
            }),
            RowProblem::TopkLength { got: 4, want: 5 }
        );
        assert_eq!(
            row_problem(1, |r| {
                r.topk_logits.pop();
            }),
            RowProblem::TopkLogitsLength { got: 4, want: 5 }
        );
        // Three classes: three predictions, however large --top-k is.
        let small = ShardJob {
            num_classes: 3,
            model_classes: 3,
            labels: vec![0, 1, 2, 0],
            ..job()
        };
        assert_eq!(small.k(), 3);
        let rows: Vec<_> = (6..10)
            .map(|i| row_from_logits(i, &logits(i)[..3], small.labels[(i - 6) as usize], 5))
            .collect();
        check_submission(small.clone(), [batch(rows.clone())]).unwrap();
        let mut long = rows;
        long[0].topk_indices.push(7);
        long[0].topk_logits.push(-9.0);
        assert!(matches!(
            check_submission(small, [batch(long)]),
            Err(Rejection::Row {
                problem: RowProblem::TopkLength { got: 4, want: 3 },
                ..
            })
        ));
    }

    #[test]
    fn classes_in_range_and_unique() {
        assert_eq!(
            row_problem(0, |r| r.topk_indices[4] = CLASSES),
            RowProblem::ClassOutOfRange {
                class: CLASSES,
                classes: CLASSES
            }
        );
        let p = row_problem(2, |r| r.topk_indices[3] = r.topk_indices[0]);
        assert!(matches!(p, RowProblem::RepeatedClass { .. }), "{p}");
        // Long top-k lists take the sorting path.
        let long: Vec<u32> = (0..40).collect();
        assert_eq!(repeated(&long), None);
        let mut twice = long.clone();
        twice[39] = 7;
        assert_eq!(repeated(&twice), Some(7));
    }

    #[test]
    fn logits_finite_and_sorted_descending_ties_lower_class_first() {
        assert!(matches!(
            row_problem(0, |r| r.topk_logits[0] = f32::NAN),
            RowProblem::NonFiniteLogit { rank: 0, .. }
        ));
        assert!(matches!(
            row_problem(0, |r| r.topk_logits[2] = f32::INFINITY),
            RowProblem::NonFiniteLogit { rank: 2, .. }
        ));
        assert_eq!(
            row_problem(1, |r| r.topk_logits.swap(3, 4)),
            RowProblem::Unsorted { rank: 4 }
        );
        // Equal logits: the lower class first, never the other way round.
        let two = ShardJob {
            num_classes: 2,
            top_k: 2,
            labels: vec![0; 4],
            ..job()
        };
        let tie = |first: u32, second: u32| {
            let mut r = row_from_logits(6, &[1.0, 1.0], 0, 2);
            r.topk_indices = vec![first, second];
            check_row(&r, 0, &two)
        };
        assert_eq!(tie(0, 1), Ok(()));
        assert_eq!(tie(1, 0), Err(RowProblem::Unsorted { rank: 1 }));
    }

    #[test]
    fn loss_finite_and_not_negative() {
        for loss in [f64::NAN, f64::INFINITY, -0.5] {
            let p = row_problem(0, |r| r.loss = loss);
            assert!(matches!(p, RowProblem::Loss { .. }), "{loss}: {p}");
        }
    }

    #[test]
    fn confidence_finite_in_0_1_and_at_least_uniform() {
        for c in [f64::NAN, 1.5, -0.1, f64::INFINITY] {
            let p = row_problem(0, |r| r.confidence = c);
            assert!(matches!(p, RowProblem::Confidence { .. }), "{c}: {p}");
        }
        assert!(matches!(
            row_problem(0, |r| r.confidence = 0.1),
            RowProblem::ConfidenceBelowUniform { classes: 8, .. }
        ));
    }

    #[test]
    fn loss_must_agree_with_the_label_and_the_logits() {
        // Sample 6 has label 0: its loss follows from its top-k logits and confidence.
        let p = row_problem(0, |r| r.loss += 0.25);
        assert!(
            matches!(p, RowProblem::LabelInconsistent { label: 0, .. }),
            "{p}"
        );
        // A label ranked outside the top-k cannot have a smaller loss than the last ranked class.
        let job = ShardJob { top_k: 2, ..job() };
        let l = logits(6);
        let r = row_from_logits(6, &l, 0, 2);
        assert!(!r.topk_indices.contains(&0), "fixture: label 0 unranked");
        check_row(&r, 0, &job).unwrap();
        let mut low = r.clone();
        low.loss = 0.0;
        assert!(matches!(
            check_row(&low, 0, &job),
            Err(RowProblem::LabelInconsistent { .. })
        ));
        // Every class ranked: the label must be among them.
        let all = ShardJob {
            top_k: CLASSES,
            ..job
        };
        let mut r = row_from_logits(6, &l, 0, CLASSES as usize);
        check_row(&r, 0, &all).unwrap();
        let zero = r.topk_indices.iter().position(|&c| c == 0).unwrap();
        r.topk_indices.remove(zero);
        r.topk_logits.remove(zero);
        r.topk_indices.push(CLASSES);
        r.topk_logits.push(-100.0);
        assert!(check_row(&r, 0, &all).is_err());
    }

    #[test]
    fn error_rows_carry_nothing_else() {
        let p = row_problem(3, |r| r.error = "decode failed".into());
        assert_eq!(p, RowProblem::ErrorWithPrediction);
    }

    #[test]
    fn saved_logits_match_the_job_and_are_finite() {
        let fp32 = ShardJob {
            save_logits: SaveLogits::Fp32,
            ..job()
        };
        let l = logits(6);
        let mut r = row_from_logits(6, &l, 0, 5);
        assert!(matches!(
            check_row(&r, 0, &fp32),
            Err(RowProblem::SavedLogitsLength {
                got: 0,
                want: 32,
                ..
            })
        ));
        r.logits = l.iter().flat_map(|v| v.to_le_bytes()).collect();
        check_row(&r, 0, &fp32).unwrap();
        r.logits[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
        assert_eq!(
            check_row(&r, 0, &fp32),
            Err(RowProblem::NonFiniteSavedLogit { class: 1 })
        );
        let fp16 = ShardJob {
            save_logits: SaveLogits::Fp16,
            ..job()
        };
        r.logits = l
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        check_row(&r, 0, &fp16).unwrap();
        r.logits[0..2].copy_from_slice(&half::f16::INFINITY.to_le_bytes());
        assert_eq!(
            check_row(&r, 0, &fp16),
            Err(RowProblem::NonFiniteSavedLogit { class: 0 })
        );
        // Logits the job did not ask for.
        assert!(matches!(
            check_row(&r, 0, &job()),
            Err(RowProblem::SavedLogitsLength { want: 0, .. })
        ));
    }

    proptest! {
        /// No false refusals: whatever the logits (wide ranges, ties, every class ranked or one), the
        /// label and --top-k, the row a correct worker computes passes every rule, and moving its loss
        /// off by more than the tolerance is caught when the label is ranked.
        #[test]
        fn rows_a_correct_worker_computes_always_pass(
            logits in proptest::collection::vec(
                prop_oneof![(-60i32..60).prop_map(|v| v as f32 * 0.5), -1e4f32..1e4],
                1..40,
            ),
            label in 0u32..40,
            top_k in 1u32..45,
        ) {
            let classes = logits.len() as u32;
            let label = label % classes;
            let job = ShardJob {
                samples: 0..1,
                labels: vec![label],
                num_classes: classes,
                top_k,
                ..job()
            };
            let r = row_from_logits(0, &logits, label, job.k());
            prop_assert_eq!(check_row(&r, label, &job), Ok(()));
            if r.topk_indices.contains(&label) {
                let mut off = r.clone();
                off.loss += 1e-3 * (1.0 + off.loss.abs() + f64::from(off.topk_logits[0]).abs());
                prop_assert!(check_row(&off, label, &job).is_err());
            }
        }
    }

    #[test]
    fn synthetic_rows_skip_only_the_label_and_logits_rules() {
        let synthetic = ShardJob {
            synthetic: true,
            ..job()
        };
        let mut r = row(6, 0);
        r.loss += 3.0;
        r.confidence = 0.01;
        check_row(&r, 0, &synthetic).unwrap();
        r.confidence = 1.5;
        assert!(check_row(&r, 0, &synthetic).is_err());
    }
}
