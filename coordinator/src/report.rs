//! Turns the journal into the run directory: the stored files (predictions.parquet, streamed shard by
//! shard, outcome.json, logits.npy) and the derived ones (summary.json, per_class.{parquet,csv},
//! confusion.parquet, report.html). Replays in shard order so a resumed run reports identically, and
//! [`rerender`] rebuilds every derived file from the stored ones with the same code path.
//! docs/run-directory.md is the schema.

use std::fs::File;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use tresnet_common::dataset::DatasetIndex;
use tresnet_common::ids::ShardId;
use tresnet_common::job::JobSpec;
use tresnet_common::protocol::pb::SampleResult;

use crate::atomic_file::{AtomicFile, AtomicWriteError, write_atomic, write_atomic_with};
use crate::journal::{Journal, JournalError};
use crate::run_dir::{
    CLASS_SUBSET_FILE, CONFUSION_FILE, COUNTS_FILE, FailedShard, JOB_FILE, LOGITS_FILE,
    OUTCOME_FILE, Outcome, PER_CLASS_CSV, PER_CLASS_PARQUET, PREDICTIONS_FILE, REPORT_FILE,
    SUMMARY_FILE, Scheduling, Software, Summary, TimelineEvent, WorkerSummary,
};
use crate::scheduler::{Scheduler, ShardState};
use crate::stats::{Interval, wilson};
use crate::tally::{BadSample, ECE_BINS, Tally};

/// Rows buffered before a parquet row group is written (and read back by [`rerender`]); bounds memory
/// whatever the dataset size.
const ROWS_PER_ROW_GROUP: usize = 65_536;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Atomic(#[from] AtomicWriteError),
    #[error("writing {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("reading {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("accounting mismatch: {0}")]
    Accounting(String),
}

fn write_err(path: &Path, e: impl std::fmt::Display) -> ReportError {
    ReportError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn read_err(path: &Path, e: impl std::fmt::Display) -> ReportError {
    ReportError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// What the coordinator observed while running, handed to [`finalize`].
#[derive(Debug, Clone, Default)]
pub struct RunFacts {
    /// Seconds from the first lease to the last accepted result of this process, and the samples
    /// accepted in that window.
    pub eval_seconds: f64,
    pub samples_timed: u64,
    /// Seconds from the coordinator's start to the final report.
    pub wall_seconds: f64,
    pub workers: Vec<WorkerSummary>,
    pub timeline: Vec<TimelineEvent>,
    pub scheduling: Scheduling,
}

#[derive(Default)]
struct PredictionColumns {
    index: Vec<u64>,
    key: Vec<String>,
    label: Vec<u32>,
    topk_indices: Vec<Series>,
    topk_logits: Vec<Series>,
    loss: Vec<f64>,
    confidence: Vec<f64>,
    correct1: Vec<bool>,
    correct5: Vec<bool>,
    /// Multi-label jobs (ImageNet-ReaL): each row's accepted classes; empty otherwise, and then the
    /// file has no `labels` column.
    labels: Vec<Series>,
}

impl PredictionColumns {
    fn len(&self) -> usize {
        self.index.len()
    }

    /// One evaluated row; `accepted` is `Some` in multi-label jobs (the classes counted correct).
    fn push(
        &mut self,
        index: u64,
        key: &str,
        label: u32,
        accepted: Option<&[u32]>,
        r: &SampleResult,
        k5: usize,
    ) {
        let correct = accepted.unwrap_or(std::slice::from_ref(&label));
        if let Some(a) = accepted {
            self.labels.push(Series::new("".into(), a.to_vec()));
        }
        self.index.push(index);
        self.key.push(key.to_string());
        self.label.push(label);
        self.topk_indices
            .push(Series::new("".into(), r.topk_indices.clone()));
        self.topk_logits
            .push(Series::new("".into(), r.topk_logits.clone()));
        self.loss.push(r.loss);
        self.confidence.push(r.confidence);
        self.correct1
            .push(r.topk_indices.first().is_some_and(|c| correct.contains(c)));
        self.correct5
            .push(r.topk_indices.iter().take(k5).any(|c| correct.contains(c)));
    }

    fn take_frame(&mut self) -> PolarsResult<DataFrame> {
        let c = std::mem::take(self);
        let list = |name: &str, v: Vec<Series>, inner: DataType| -> PolarsResult<Column> {
            if v.is_empty() {
                Ok(Column::new_empty(
                    name.into(),
                    &DataType::List(Box::new(inner)),
                ))
            } else {
                Ok(Series::new(name.into(), v).into_column())
            }
        };
        let multi_label = !c.labels.is_empty();
        let labels = list("labels", c.labels, DataType::UInt32)?;
        let mut columns = vec![
            Column::new("index".into(), c.index),
            Column::new("key".into(), c.key),
            Column::new("label".into(), c.label),
            list("topk_indices", c.topk_indices, DataType::UInt32)?,
            list("topk_logits", c.topk_logits, DataType::Float32)?,
            Column::new("loss".into(), c.loss),
            Column::new("confidence".into(), c.confidence),
            Column::new("correct1".into(), c.correct1),
            Column::new("correct5".into(), c.correct5),
        ];
        if multi_label {
            columns.push(labels);
        }
        DataFrame::new_infer_height(columns)
    }
}

/// Writes predictions.parquet a row group at a time (into a temporary file, put in place by
/// [`Self::finish`]).
struct PredictionWriter {
    path: PathBuf,
    cols: PredictionColumns,
    file: AtomicFile,
    writer: Option<polars::io::parquet::write::BatchedWriter<File>>,
}

impl PredictionWriter {
    fn new(run_dir: &Path) -> Result<Self, ReportError> {
        let path = run_dir.join(PREDICTIONS_FILE);
        Ok(PredictionWriter {
            file: AtomicFile::create(&path)?,
            path,
            cols: PredictionColumns::default(),
            writer: None,
        })
    }

    fn flush(&mut self) -> Result<(), ReportError> {
        let path = &self.path;
        let df = self.cols.take_frame().map_err(|e| write_err(path, e))?;
        let w = match &mut self.writer {
            Some(w) => w,
            None => self.writer.insert(
                ParquetWriter::new(self.file.handle()?)
                    .batched(df.schema())
                    .map_err(|e| write_err(path, e))?,
            ),
        };
        w.write_batch(&df).map_err(|e| write_err(path, e))
    }

    fn maybe_flush(&mut self) -> Result<(), ReportError> {
        if self.cols.len() >= ROWS_PER_ROW_GROUP {
            self.flush()?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), ReportError> {
        if self.cols.len() > 0 || self.writer.is_none() {
            self.flush()?;
        }
        if let Some(w) = self.writer.take() {
            w.finish().map_err(|e| write_err(&self.path, e))?;
        }
        Ok(self.file.commit()?)
    }
}

/// Replays every completed shard, writes the stored files and then every derived one; returns the
/// summary.
pub fn finalize(
    run_dir: &Path,
    job: &JobSpec,
    index: &DatasetIndex,
    sched: &Scheduler,
    journal: &Journal,
    facts: RunFacts,
) -> Result<Summary, ReportError> {
    let mut tally = Tally::new(job.scored_classes() as usize, job.outputs.top_k as usize);
    // Counts-only runs have no per-sample rows to store: no predictions.parquet at all (an empty
    // one would read as "zero predictions"), their counts go to counts.pb instead.
    let mut preds = match job.outputs.counts_only {
        true => None,
        false => Some(PredictionWriter::new(run_dir)?),
    };
    // Row i = sample i; samples the listing found bad have no index, hence no row.
    let mut logits = LogitsWriter::new(run_dir, job, index.samples.len())?;
    let mut failed_shards = Vec::new();
    for i in 0..sched.shard_count() as u64 {
        let shard = ShardId(i);
        let range = sched.samples_of(shard);
        match sched.state_of(shard) {
            ShardState::Done => {
                let rec = journal.read(shard)?;
                let counted = match (&rec.counts, job.outputs.counts_only) {
                    (Some(c), true) => {
                        crate::tally::check_counts(c, tally.num_classes, tally.k5)
                            .map_err(|e| ReportError::Accounting(format!("{shard} counts: {e}")))?;
                        tally.add_counts(c);
                        c.evaluated
                    }
                    (None, false) => 0,
                    _ => {
                        return Err(ReportError::Accounting(format!(
                            "{shard}'s journal record does not match the job's counts-only setting"
                        )));
                    }
                };
                if rec.results.len() as u64 + counted != range.end - range.start {
                    return Err(ReportError::Accounting(format!(
                        "{shard} has {} results for {} samples",
                        rec.results.len() as u64 + counted,
                        range.end - range.start
                    )));
                }
                for r in &rec.results {
                    logits.row(r)?;
                    let sample = &index.samples[r.index as usize];
                    let accepted = index.accepted(r.index as usize);
                    if tally.add_accepting(r.index, &sample.key.0, sample.label, accepted, r)
                        && let Some(p) = &mut preds
                    {
                        let multi = index.label_sets.is_some().then_some(accepted);
                        p.cols
                            .push(r.index, &sample.key.0, sample.label, multi, r, tally.k5);
                    }
                }
                if let Some(p) = &mut preds {
                    p.maybe_flush()?;
                }
            }
            _ => {
                for _ in range.clone() {
                    logits.missing_row()?;
                }
                failed_shards.push(FailedShard {
                    shard: i,
                    samples: range
                        .clone()
                        .map(|s| index.samples[s as usize].key.0.clone())
                        .collect(),
                    reasons: sched.failures_of(shard).to_vec(),
                });
            }
        }
    }
    match preds {
        Some(p) => p.finish()?,
        None => write_counts(run_dir, &tally)?,
    }
    logits.finish()?;
    // Samples the listing itself found unusable are part of the dataset too.
    for b in &index.bad_samples {
        tally.bad.push(BadSample {
            index: None,
            key: b.key.0.clone(),
            reason: b.reason.clone(),
        });
    }
    let outcome = Outcome {
        dataset_size: (index.samples.len() + index.bad_samples.len() + index.excluded.len()) as u64,
        class_names: index.class_names.clone(),
        bad: tally.bad.clone(),
        failed_shards,
        eval_seconds: facts.eval_seconds,
        samples_timed: facts.samples_timed,
        wall_seconds: facts.wall_seconds,
        software: Software::current(&facts.workers),
        workers: facts.workers,
        timeline: facts.timeline,
        scheduling: facts.scheduling,
        excluded: index.excluded.clone(),
    };
    check_accounting(&tally, &outcome)?;
    let path = run_dir.join(OUTCOME_FILE);
    write_atomic(
        &path,
        &serde_json::to_vec_pretty(&outcome).map_err(|e| write_err(&path, e))?,
    )?;
    write_derived(run_dir, job, &tally, &outcome)
}

fn check_accounting(tally: &Tally, outcome: &Outcome) -> Result<(), ReportError> {
    let bad = tally.bad.len() as u64;
    let failed: u64 = outcome
        .failed_shards
        .iter()
        .map(|f| f.samples.len() as u64)
        .sum();
    let excluded = outcome.excluded.len() as u64;
    if tally.evaluated + excluded + bad + failed != outcome.dataset_size {
        return Err(ReportError::Accounting(format!(
            "{} evaluated + {excluded} excluded + {bad} bad + {failed} failed != {} samples",
            tally.evaluated, outcome.dataset_size
        )));
    }
    Ok(())
}

/// One sample's result as `rescore` recomputed it, for [`write_scored`].
pub(crate) struct ScoredRow {
    pub index: u64,
    pub key: String,
    pub label: u32,
    /// Multi-label jobs: the classes counted correct.
    pub accepted: Option<Vec<u32>>,
    pub result: SampleResult,
}

/// Writes a run directory from results scored outside a run (`rescore`): predictions.parquet,
/// outcome.json and every derived file, through the same tally and writers as [`finalize`], with the
/// same accounting check.
pub(crate) fn write_scored(
    run_dir: &Path,
    job: &JobSpec,
    outcome: &Outcome,
    rows: &[ScoredRow],
) -> Result<Summary, ReportError> {
    let mut tally = Tally::new(job.scored_classes() as usize, job.outputs.top_k as usize);
    let mut preds = PredictionWriter::new(run_dir)?;
    for row in rows {
        let single = [row.label];
        let accepted = row.accepted.as_deref().unwrap_or(&single);
        if !tally.add_accepting(row.index, &row.key, row.label, accepted, &row.result) {
            let reason = tally.bad.last().map_or("", |b| b.reason.as_str());
            return Err(ReportError::Accounting(format!(
                "{} is not a valid prediction for the rescored job: {reason}",
                row.key
            )));
        }
        preds.cols.push(
            row.index,
            &row.key,
            row.label,
            row.accepted.as_deref(),
            &row.result,
            tally.k5,
        );
        preds.maybe_flush()?;
    }
    preds.finish()?;
    tally.bad = outcome.bad.clone();
    check_accounting(&tally, outcome)?;
    let path = run_dir.join(OUTCOME_FILE);
    write_atomic(
        &path,
        &serde_json::to_vec_pretty(outcome).map_err(|e| write_err(&path, e))?,
    )?;
    let path = run_dir.join(JOB_FILE);
    write_atomic(
        &path,
        &serde_json::to_vec_pretty(job).map_err(|e| write_err(&path, e))?,
    )?;
    write_derived(run_dir, job, &tally, outcome)
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ReportError> {
    let bytes = std::fs::read(path).map_err(|e| read_err(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| read_err(path, e))
}

/// `tresnet-coordinator report RUN`: rebuilds every derived file of a finished run from job.json,
/// outcome.json and predictions.parquet (read a row group's worth at a time), through the same tally
/// and writers as [`finalize`], so the numbers are identical.
pub fn rerender(run_dir: &Path) -> Result<Summary, ReportError> {
    let job: JobSpec = read_json(&run_dir.join(JOB_FILE))?;
    let outcome: Outcome = read_json(&run_dir.join(OUTCOME_FILE))?;
    let mut tally = Tally::new(job.scored_classes() as usize, job.outputs.top_k as usize);
    if job.outputs.counts_only {
        let counts = read_counts(run_dir)?;
        crate::tally::check_counts(&counts, tally.num_classes, tally.k5)
            .map_err(|e| read_err(&run_dir.join(COUNTS_FILE), e))?;
        tally.add_counts(&counts);
        tally.bad = outcome.bad.clone();
        check_accounting(&tally, &outcome)?;
        return write_derived(run_dir, &job, &tally, &outcome);
    }
    let path = run_dir.join(PREDICTIONS_FILE);
    let open = || File::open(&path).map_err(|e| read_err(&path, e));
    let rows = ParquetReader::new(open()?)
        .num_rows()
        .map_err(|e| read_err(&path, e))?;
    let mut offset = 0;
    while offset < rows {
        let df = ParquetReader::new(open()?)
            .with_slice(Some((offset, ROWS_PER_ROW_GROUP)))
            .finish()
            .map_err(|e| read_err(&path, e))?;
        offset += df.height();
        replay_rows(&df, &mut tally).map_err(|e| read_err(&path, e))?;
        if df.height() == 0 {
            break;
        }
    }
    tally.bad = outcome.bad.clone();
    check_accounting(&tally, &outcome)?;
    write_derived(run_dir, &job, &tally, &outcome)
}

fn write_counts(run_dir: &Path, tally: &Tally) -> Result<(), ReportError> {
    use prost::Message;
    let path = run_dir.join(COUNTS_FILE);
    Ok(write_atomic(&path, &tally.as_counts().encode_to_vec())?)
}

fn read_counts(run_dir: &Path) -> Result<tresnet_common::protocol::pb::ShardCounts, ReportError> {
    use prost::Message;
    let path = run_dir.join(COUNTS_FILE);
    let bytes = std::fs::read(&path).map_err(|e| read_err(&path, e))?;
    tresnet_common::protocol::pb::ShardCounts::decode(bytes.as_slice())
        .map_err(|e| read_err(&path, e))
}

/// Feeds stored prediction rows back through [`Tally::add`].
fn replay_rows(df: &DataFrame, tally: &mut Tally) -> PolarsResult<()> {
    let index = df.column("index")?.u64()?;
    let key = df.column("key")?.str()?;
    let label = df.column("label")?.u32()?;
    let ti = df.column("topk_indices")?.list()?;
    let loss = df.column("loss")?.f64()?;
    let conf = df.column("confidence")?.f64()?;
    // Multi-label runs store each row's accepted classes; single-label runs have no such column.
    let accepted = match df.column("labels") {
        Ok(c) => Some(c.list()?.clone()),
        Err(_) => None,
    };
    for i in 0..df.height() {
        let missing = || polars_err!(ComputeError: "null in row {i}");
        let topk: Vec<u32> = ti
            .get_as_series(i)
            .ok_or_else(missing)?
            .u32()?
            .into_no_null_iter()
            .collect();
        let r = SampleResult {
            index: index.get(i).ok_or_else(missing)?,
            topk_indices: topk,
            loss: loss.get(i).ok_or_else(missing)?,
            confidence: conf.get(i).ok_or_else(missing)?,
            ..Default::default()
        };
        let key = key.get(i).ok_or_else(missing)?;
        let label = label.get(i).ok_or_else(missing)?;
        let set: Vec<u32> = match &accepted {
            Some(lists) => lists
                .get_as_series(i)
                .ok_or_else(missing)?
                .u32()?
                .into_no_null_iter()
                .collect(),
            None => vec![label],
        };
        if !tally.add_accepting(r.index, key, label, &set, &r) {
            polars_bail!(ComputeError: "row {i} ({key}) is not a valid prediction for this job");
        }
    }
    Ok(())
}

/// Writes summary.json, per_class.{parquet,csv}, confusion.parquet and report.html.
fn write_derived(
    run_dir: &Path,
    job: &JobSpec,
    tally: &Tally,
    outcome: &Outcome,
) -> Result<Summary, ReportError> {
    let (macro_avg, weighted_avg) = tally.averages();
    let evaluated = tally.evaluated > 0;
    if evaluated && !(tally.nll().is_finite() && tally.ece().is_finite()) {
        // Every row was checked finite when it was submitted (coordinator/src/submission.rs); a
        // non-finite mean here would otherwise reach summary.json as a silent null.
        return Err(ReportError::Accounting(format!(
            "NLL {} or ECE {} is not finite: a row with a non-finite loss or confidence was recorded",
            tally.nll(),
            tally.ece()
        )));
    }
    let failed_samples = outcome
        .failed_shards
        .iter()
        .map(|f| f.samples.len() as u64)
        .sum();
    let summary = Summary {
        top1: evaluated.then(|| tally.top1()),
        top5: evaluated.then(|| tally.top5()),
        top5_k: tally.k5,
        nll: evaluated.then(|| tally.nll()),
        ece: evaluated.then(|| tally.ece()),
        ece_bins: ECE_BINS,
        reliability: tally.reliability(),
        macro_avg,
        weighted_avg,
        dataset_size: outcome.dataset_size,
        samples: tally.evaluated,
        correct1: tally.correct1,
        correct5: tally.correct5,
        bad_samples: tally.bad.len() as u64,
        failed_samples,
        failed_shards: outcome.failed_shards.clone(),
        bad: tally.bad.clone(),
        excluded_samples: outcome.excluded.len() as u64,
        synthetic: job.model.synthetic,
        eval_seconds: outcome.eval_seconds,
        throughput: if outcome.eval_seconds > 0.0 {
            outcome.samples_timed as f64 / outcome.eval_seconds
        } else {
            0.0
        },
        wall_seconds: outcome.wall_seconds,
        model: job.model.model.clone(),
        weights_sha256: job.model.weights_sha256.clone(),
        dataset_fingerprint: job.data.dataset_fingerprint.clone(),
        preprocess: job.preprocess.clone(),
        software: outcome.software.clone(),
        workers: outcome.workers.clone(),
        scheduling: outcome.scheduling.clone(),
        job: job.clone(),
        top1_ci95: wilson(tally.correct1, tally.evaluated),
        top5_ci95: wilson(tally.correct5, tally.evaluated),
    };
    let summary_path = run_dir.join(SUMMARY_FILE);
    write_atomic(
        &summary_path,
        &serde_json::to_vec_pretty(&summary).map_err(|e| write_err(&summary_path, e))?,
    )?;
    if let Some(subset) = &job.data.class_subset {
        write_class_subset(run_dir, subset, &outcome.class_names)?;
    }
    let per_class = per_class_frame(tally, &outcome.class_names)
        .map_err(|e| write_err(&run_dir.join(PER_CLASS_PARQUET), e))?;
    write_parquet(&run_dir.join(PER_CLASS_PARQUET), per_class.clone())?;
    write_csv(&run_dir.join(PER_CLASS_CSV), per_class)?;
    let confusion =
        confusion_frame(tally).map_err(|e| write_err(&run_dir.join(CONFUSION_FILE), e))?;
    write_parquet(&run_dir.join(CONFUSION_FILE), confusion)?;
    let html_path = run_dir.join(REPORT_FILE);
    let html = crate::html::render(&summary, tally, outcome);
    write_atomic(&html_path, html.as_bytes())?;
    Ok(summary)
}

fn write_class_subset(
    run_dir: &Path,
    subset: &tresnet_common::dataset::ClassSubset,
    names: &[String],
) -> Result<(), ReportError> {
    let path = run_dir.join(CLASS_SUBSET_FILE);
    let df = df!(
        "subset_index" => (0..subset.len() as u32).collect::<Vec<u32>>(),
        "class_index" => subset.classes().to_vec(),
        "class_name" => names.to_vec(),
    )
    .map_err(|e| write_err(&path, e))?;
    write_csv(&path, df)
}

fn write_parquet(path: &Path, mut df: DataFrame) -> Result<(), ReportError> {
    write_atomic_with(path, |f| {
        ParquetWriter::new(f)
            .finish(&mut df)
            .map(drop)
            .map_err(|e| write_err(path, e))
    })
}

fn write_csv(path: &Path, mut df: DataFrame) -> Result<(), ReportError> {
    write_atomic_with(path, |f| {
        CsvWriter::new(f)
            .finish(&mut df)
            .map_err(|e| write_err(path, e))
    })
}

/// One row per class of the model: support, top-1/top-5 accuracy (percent; null without support), the
/// 95% Wilson interval of top-1, precision/recall/F1 (fractions; null where undefined) and the class it is most confused with.
fn per_class_frame(t: &Tally, names: &[String]) -> PolarsResult<DataFrame> {
    let n = t.num_classes;
    let name = |c: usize| names.get(c).cloned().unwrap_or_default();
    let pc = &t.per_class;
    let acc = |num: u64, den: u64| (den > 0).then(|| 100.0 * num as f64 / den as f64);
    let scores: Vec<_> = (0..n).map(|c| t.class_scores(c)).collect();
    let confused = t.most_confused();
    let ci: Vec<Option<Interval>> = pc.iter().map(|c| wilson(c.correct1, c.support)).collect();
    DataFrame::new_infer_height(vec![
        Column::new("class".into(), (0..n as u32).collect::<Vec<_>>()),
        Column::new("name".into(), (0..n).map(name).collect::<Vec<_>>()),
        Column::new(
            "support".into(),
            pc.iter().map(|c| c.support).collect::<Vec<_>>(),
        ),
        Column::new(
            "predicted".into(),
            pc.iter().map(|c| c.predicted).collect::<Vec<_>>(),
        ),
        Column::new(
            "top1".into(),
            pc.iter()
                .map(|c| acc(c.correct1, c.support))
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "top5".into(),
            pc.iter()
                .map(|c| acc(c.correct5, c.support))
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "top1_ci95_low".into(),
            ci.iter().map(|i| i.map(|i| i.low)).collect::<Vec<_>>(),
        ),
        Column::new(
            "top1_ci95_high".into(),
            ci.iter().map(|i| i.map(|i| i.high)).collect::<Vec<_>>(),
        ),
        Column::new(
            "precision".into(),
            scores.iter().map(|s| s.precision).collect::<Vec<_>>(),
        ),
        Column::new(
            "recall".into(),
            scores.iter().map(|s| s.recall).collect::<Vec<_>>(),
        ),
        Column::new("f1".into(), scores.iter().map(|s| s.f1).collect::<Vec<_>>()),
        Column::new(
            "most_confused_with".into(),
            confused
                .iter()
                .map(|m| m.map(|(c, _)| c))
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "most_confused_name".into(),
            confused
                .iter()
                .map(|m| m.map(|(c, _)| name(c as usize)))
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "most_confused_count".into(),
            confused
                .iter()
                .map(|m| m.map_or(0, |(_, k)| k))
                .collect::<Vec<_>>(),
        ),
    ])
}

/// The sparse confusion matrix: one row per (true, predicted top-1) pair that occurred.
fn confusion_frame(t: &Tally) -> PolarsResult<DataFrame> {
    let (mut tr, mut pr, mut n) = (Vec::new(), Vec::new(), Vec::new());
    for (&(a, b), &c) in &t.confusion {
        tr.push(a);
        pr.push(b);
        n.push(c);
    }
    DataFrame::new_infer_height(vec![
        Column::new("true".into(), tr),
        Column::new("predicted".into(), pr),
        Column::new("count".into(), n),
    ])
}

/// Streams `logits.npy` (float32 `[samples, classes]`, dataset order) when the job saved logits; rows of
/// samples without logits (bad or failed) are NaN so row i is always sample i.
struct LogitsWriter {
    out: Option<(std::io::BufWriter<AtomicFile>, PathBuf)>,
    classes: usize,
    fp16: bool,
}

impl LogitsWriter {
    fn new(run_dir: &Path, job: &JobSpec, samples: usize) -> Result<Self, ReportError> {
        use std::io::Write;
        let classes = job.model.num_classes as usize;
        let out = match job.outputs.save_logits {
            tresnet_common::job::SaveLogits::None => None,
            _ => {
                let path = run_dir.join(LOGITS_FILE);
                let mut w = std::io::BufWriter::new(AtomicFile::create(&path)?);
                w.write_all(&tresnet_common::npy::header_f32(&[samples, classes]))
                    .map_err(|e| write_err(&path, e))?;
                Some((w, path))
            }
        };
        Ok(LogitsWriter {
            out,
            classes,
            fp16: job.outputs.save_logits == tresnet_common::job::SaveLogits::Fp16,
        })
    }

    fn row(&mut self, r: &tresnet_common::protocol::pb::SampleResult) -> Result<(), ReportError> {
        let width = if self.fp16 { 2 } else { 4 };
        if r.logits.len() != self.classes * width {
            return self.missing_row();
        }
        let Some((w, path)) = &mut self.out else {
            return Ok(());
        };
        use std::io::Write;
        let bytes: Vec<u8> = if self.fp16 {
            r.logits
                .chunks_exact(2)
                .flat_map(|b| {
                    half::f16::from_le_bytes([b[0], b[1]])
                        .to_f32()
                        .to_le_bytes()
                })
                .collect()
        } else {
            r.logits.clone()
        };
        w.write_all(&bytes).map_err(|e| write_err(path, e))
    }

    fn missing_row(&mut self) -> Result<(), ReportError> {
        let Some((w, path)) = &mut self.out else {
            return Ok(());
        };
        use std::io::Write;
        let nan = f32::NAN.to_le_bytes();
        for _ in 0..self.classes {
            w.write_all(&nan).map_err(|e| write_err(path, e))?;
        }
        Ok(())
    }

    fn finish(self) -> Result<(), ReportError> {
        if let Some((w, path)) = self.out {
            // `into_inner` flushes the buffer and reports what a full disk does to that last write.
            let f = w.into_inner().map_err(|e| write_err(&path, e.error()))?;
            f.commit()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod nothing_evaluated_tests {
    use tresnet_common::protocol::pb;

    use super::*;
    use crate::run_state::testing::state;

    /// Finalizes a 2-sample run whose one shard holds `results`.
    async fn finalize_one_shard(results: Vec<pb::SampleResult>) -> Result<Summary, ReportError> {
        finalize_with(results, RunFacts::default())
            .await
            .map(|(s, _)| s)
    }

    /// [`finalize_one_shard`] with `facts`, also returning report.html.
    async fn finalize_with(
        results: Vec<pb::SampleResult>,
        facts: RunFacts,
    ) -> Result<(Summary, String), ReportError> {
        let dir = tempfile::tempdir().unwrap();
        let mut st = state(&dir.path().join("journal"), "J#1", 2);
        let journal = st.journal().clone();
        journal
            .write(&pb::ShardRecord {
                shard_id: 0,
                worker_id: "w".into(),
                results,
                counts: None,
            })
            .await
            .unwrap();
        st.sched_mut().mark_done(ShardId(0));
        let out = dir.path().join("run");
        std::fs::create_dir_all(&out).unwrap();
        let (job, index, sched) = (st.job().clone(), st.index().clone(), st.sched().clone());
        let s = finalize(&out, &job, &index, &sched, &journal, facts)?;
        let html = std::fs::read_to_string(out.join(REPORT_FILE)).unwrap();
        assert_eq!(
            html.contains(crate::html::NOTHING_EVALUATED),
            s.samples == 0,
            "report.html says \"no samples evaluated\" exactly when none was"
        );
        Ok((s, html))
    }

    /// A worker's refused submissions are reported with it, in summary.json and report.html.
    #[tokio::test]
    async fn refused_submissions_are_reported_per_worker() {
        let rows = (0..2)
            .map(|i| crate::submission::row_from_logits(i, &[1.0, -0.5], (i % 2) as u32, 2))
            .collect();
        let worker = WorkerSummary {
            id: "w1".into(),
            hostname: "h".into(),
            devices: vec!["cpu".into()],
            accepted_samples: 2,
            pid: 1,
            software: None,
            submissions_rejected: 3,
            stages: None,
            layouts: Vec::new(),
        };
        let facts = RunFacts {
            workers: vec![worker],
            scheduling: Scheduling {
                submissions_rejected: 3,
                ..Default::default()
            },
            ..Default::default()
        };
        let (s, html) = finalize_with(rows, facts).await.unwrap();
        assert_eq!(s.scheduling.submissions_rejected, 3);
        assert_eq!(s.workers[0].submissions_rejected, 3);
        assert!(html.contains("w1 (h, cpu): 2 samples, 3 submissions refused as invalid"));
    }

    /// Every sample bad: the metrics are null (not 0.0), in summary.json too.
    #[tokio::test]
    async fn metrics_of_nothing_are_null() {
        let bad = |index| pb::SampleResult {
            index,
            error: "corrupt jpeg".into(),
            ..Default::default()
        };
        let s = finalize_one_shard(vec![bad(0), bad(1)]).await.unwrap();
        assert_eq!((s.samples, s.bad_samples), (0, 2));
        assert_eq!((s.top1, s.top5, s.nll, s.ece), (None, None, None, None));
        let json = serde_json::to_value(&s).unwrap();
        for m in ["top1", "top5", "nll", "ece"] {
            assert!(json[m].is_null(), "{m}: {}", json[m]);
        }
        let rows = |range: std::ops::Range<u64>| -> Vec<pb::SampleResult> {
            range
                .map(|i| crate::submission::row_from_logits(i, &[1.0, -0.5], (i % 2) as u32, 2))
                .collect()
        };
        let s = finalize_one_shard(rows(0..2)).await.unwrap();
        assert_eq!(s.top1, Some(50.0));
        assert!(s.nll.is_some_and(f64::is_finite) && s.ece.is_some_and(f64::is_finite));
    }

    /// Every shard failed: nothing evaluated either, null metrics, and the run may not exit 0 (as
    /// with every sample bad); a run with some failed shards may not either, for another reason.
    #[tokio::test]
    async fn every_shard_failed_is_nothing_evaluated_and_no_exit_0() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = state(&dir.path().join("journal"), "J#1", 2);
        let w = tresnet_common::ids::WorkerId("w".into());
        for attempt in 0..3 {
            let g = st.sched_mut().lease(&w, attempt).unwrap();
            assert!(
                st.sched_mut()
                    .release(&w, g.lease, Some("store gone".into()))
            );
        }
        let out = dir.path().join("run");
        std::fs::create_dir_all(&out).unwrap();
        let (job, index, sched, journal) = (
            st.job().clone(),
            st.index().clone(),
            st.sched().clone(),
            st.journal().clone(),
        );
        let s = finalize(&out, &job, &index, &sched, &journal, RunFacts::default()).unwrap();
        assert_eq!((s.samples, s.failed_samples), (0, 2));
        assert_eq!((s.top1, s.nll), (None, None));
        let why = s.shortfall(Path::new("S")).unwrap();
        assert!(
            why.starts_with("no samples evaluated") && why.contains("2 in failed"),
            "{why}"
        );

        let bad = |index| pb::SampleResult {
            index,
            error: "corrupt jpeg".into(),
            ..Default::default()
        };
        let all_bad = finalize_one_shard(vec![bad(0), bad(1)]).await.unwrap();
        assert!(
            all_bad
                .shortfall(Path::new("S"))
                .unwrap()
                .starts_with("no samples evaluated")
        );
        let mut partial = all_bad.clone();
        (partial.samples, partial.failed_samples) = (1, 1);
        assert!(
            partial
                .shortfall(Path::new("S"))
                .unwrap()
                .contains("were not evaluated")
        );
        partial.failed_samples = 0;
        assert_eq!(partial.shortfall(Path::new("S")), None);
    }

    /// A non-finite loss that got into a journal (an older coordinator, a hand-edited record) fails the
    /// report instead of becoming a silent null NLL.
    #[tokio::test]
    async fn a_recorded_nan_fails_the_report_rather_than_nulling_nll() {
        let mut rows: Vec<pb::SampleResult> = (0..2)
            .map(|i| crate::submission::row_from_logits(i, &[1.0, -0.5], (i % 2) as u32, 2))
            .collect();
        rows[1].loss = f64::NAN;
        let e = finalize_one_shard(rows).await.unwrap_err();
        assert!(
            matches!(&e, ReportError::Accounting(m) if m.contains("not finite")),
            "{e}"
        );
    }
}
