//! Turns the journal into the run directory's outputs: predictions.parquet (streamed shard by shard),
//! summary.json and per_class.csv. Replays in shard order so a resumed run reports identically.

use std::fs::File;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use serde::Serialize;
use tresnet_common::dataset::DatasetIndex;
use tresnet_common::ids::ShardId;
use tresnet_common::job::JobSpec;

use crate::journal::{Journal, JournalError};
use crate::scheduler::{Scheduler, ShardState};
use crate::tally::{BadSample, Tally};

/// Rows buffered before a parquet row group is written; bounds memory whatever the dataset size.
const ROWS_PER_ROW_GROUP: usize = 65_536;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("writing {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("accounting mismatch: {0}")]
    Accounting(String),
}

fn write_err(path: &Path, e: impl std::fmt::Display) -> ReportError {
    ReportError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// A shard that failed every attempt, with its samples.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FailedShard {
    pub shard: u64,
    pub samples: Vec<String>,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub top1: f64,
    pub top5: f64,
    pub top5_k: usize,
    pub nll: f64,
    pub ece: f64,
    pub dataset_size: u64,
    pub samples: u64,
    pub correct1: u64,
    pub correct5: u64,
    pub bad_samples: u64,
    pub failed_samples: u64,
    pub failed_shards: Vec<FailedShard>,
    pub bad: Vec<BadSample>,
    pub synthetic: bool,
    /// Seconds from the first lease to the last accepted result of this process (0 when resumed
    /// with nothing left), and samples evaluated per second over that window.
    pub eval_seconds: f64,
    pub throughput: f64,
    pub job: JobSpec,
}

#[derive(Default)]
struct PredictionColumns {
    index: Vec<u64>,
    key: Vec<String>,
    label: Vec<u32>,
    topk_indices: Vec<Series>,
    topk_logits: Vec<Series>,
    loss: Vec<f64>,
    correct1: Vec<bool>,
    correct5: Vec<bool>,
}

impl PredictionColumns {
    fn len(&self) -> usize {
        self.index.len()
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
        DataFrame::new_infer_height(vec![
            Column::new("index".into(), c.index),
            Column::new("key".into(), c.key),
            Column::new("label".into(), c.label),
            list("topk_indices", c.topk_indices, DataType::UInt32)?,
            list("topk_logits", c.topk_logits, DataType::Float32)?,
            Column::new("loss".into(), c.loss),
            Column::new("correct1".into(), c.correct1),
            Column::new("correct5".into(), c.correct5),
        ])
    }
}

/// Replays every completed shard and writes the run directory's reports; returns the summary.
pub fn finalize(
    run_dir: &Path,
    job: &JobSpec,
    index: &DatasetIndex,
    sched: &Scheduler,
    journal: &Journal,
    timing: (f64, u64),
) -> Result<Summary, ReportError> {
    let mut tally = Tally::new(job.num_classes as usize, job.top_k as usize);
    let pred_path = run_dir.join("predictions.parquet");
    let mut writer: Option<polars::io::parquet::write::BatchedWriter<File>> = None;
    let mut cols = PredictionColumns::default();
    let flush =
        |cols: &mut PredictionColumns,
         writer: &mut Option<polars::io::parquet::write::BatchedWriter<File>>| {
            let df = cols.take_frame().map_err(|e| write_err(&pred_path, e))?;
            if writer.is_none() {
                let f = File::create(&pred_path).map_err(|e| write_err(&pred_path, e))?;
                *writer = Some(
                    ParquetWriter::new(f)
                        .batched(df.schema())
                        .map_err(|e| write_err(&pred_path, e))?,
                );
            }
            writer
                .as_mut()
                .unwrap()
                .write_batch(&df)
                .map_err(|e| write_err(&pred_path, e))
        };
    let mut logits = LogitsWriter::new(run_dir, job, index.len())?;
    let mut failed_shards = Vec::new();
    let mut failed_samples = 0u64;
    for i in 0..sched.shard_count() as u64 {
        let shard = ShardId(i);
        let range = sched.samples_of(shard);
        match sched.state_of(shard) {
            ShardState::Done => {
                let rec = journal.read(shard)?;
                if rec.results.len() as u64 != range.end - range.start {
                    return Err(ReportError::Accounting(format!(
                        "{shard} has {} results for {} samples",
                        rec.results.len(),
                        range.end - range.start
                    )));
                }
                for r in &rec.results {
                    logits.row(r)?;
                    let sample = &index.samples[r.index as usize];
                    tally.add(r.index, &sample.key.0, sample.label, r);
                    if r.error.is_empty() && !r.topk_indices.is_empty() {
                        let hit1 = r.topk_indices[0] == sample.label;
                        let hit5 = r
                            .topk_indices
                            .iter()
                            .take(tally.k5)
                            .any(|&c| c == sample.label);
                        cols.index.push(r.index);
                        cols.key.push(sample.key.0.clone());
                        cols.label.push(sample.label);
                        cols.topk_indices
                            .push(Series::new("".into(), r.topk_indices.clone()));
                        cols.topk_logits
                            .push(Series::new("".into(), r.topk_logits.clone()));
                        cols.loss.push(r.loss);
                        cols.correct1.push(hit1);
                        cols.correct5.push(hit5);
                    }
                }
                if cols.len() >= ROWS_PER_ROW_GROUP {
                    flush(&mut cols, &mut writer)?;
                }
            }
            _ => {
                for _ in range.clone() {
                    logits.missing_row()?;
                }
                let samples: Vec<String> = range
                    .clone()
                    .map(|s| index.samples[s as usize].key.0.clone())
                    .collect();
                failed_samples += samples.len() as u64;
                failed_shards.push(FailedShard {
                    shard: i,
                    samples,
                    reasons: sched.failures_of(shard).to_vec(),
                });
            }
        }
    }
    if cols.len() > 0 || writer.is_none() {
        flush(&mut cols, &mut writer)?;
    }
    writer
        .unwrap()
        .finish()
        .map_err(|e| write_err(&pred_path, e))?;
    logits.finish()?;
    // Samples the listing itself found unusable are part of the dataset too.
    for b in &index.bad_samples {
        tally.bad.push(BadSample {
            index: None,
            key: b.key.0.clone(),
            reason: b.reason.clone(),
        });
    }
    let dataset_size = (index.samples.len() + index.bad_samples.len()) as u64;
    let bad_samples = tally.bad.len() as u64;
    if tally.evaluated + bad_samples + failed_samples != dataset_size {
        return Err(ReportError::Accounting(format!(
            "{} evaluated + {bad_samples} bad + {failed_samples} failed != {dataset_size} samples",
            tally.evaluated
        )));
    }
    let summary = Summary {
        top1: tally.top1(),
        top5: tally.top5(),
        top5_k: tally.k5,
        nll: tally.nll(),
        ece: tally.ece(),
        dataset_size,
        samples: tally.evaluated,
        correct1: tally.correct1,
        correct5: tally.correct5,
        bad_samples,
        failed_samples,
        failed_shards,
        bad: tally.bad.clone(),
        synthetic: job.synthetic,
        eval_seconds: timing.0,
        throughput: if timing.0 > 0.0 {
            timing.1 as f64 / timing.0
        } else {
            0.0
        },
        job: job.clone(),
    };
    let summary_path = run_dir.join("summary.json");
    std::fs::write(
        &summary_path,
        serde_json::to_vec_pretty(&summary).map_err(|e| write_err(&summary_path, e))?,
    )
    .map_err(|e| write_err(&summary_path, e))?;
    write_per_class(run_dir, &tally, index)?;
    Ok(summary)
}

fn write_per_class(run_dir: &Path, t: &Tally, index: &DatasetIndex) -> Result<(), ReportError> {
    let path = run_dir.join("per_class.csv");
    let n = t.num_classes;
    let name = |c: usize| index.class_names.get(c).cloned().unwrap_or_default();
    let pc = &t.per_class;
    let acc = |num: u64, den: u64| {
        if den == 0 {
            None
        } else {
            Some(100.0 * num as f64 / den as f64)
        }
    };
    let mut df = DataFrame::new_infer_height(vec![
        Column::new("class".into(), (0..n as u32).collect::<Vec<_>>()),
        Column::new("name".into(), (0..n).map(name).collect::<Vec<_>>()),
        Column::new(
            "support".into(),
            pc.iter().map(|c| c.support).collect::<Vec<_>>(),
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
            "predicted".into(),
            pc.iter().map(|c| c.predicted).collect::<Vec<_>>(),
        ),
    ])
    .map_err(|e| write_err(&path, e))?;
    let mut f = File::create(&path).map_err(|e| write_err(&path, e))?;
    CsvWriter::new(&mut f)
        .finish(&mut df)
        .map_err(|e| write_err(&path, e))?;
    Ok(())
}

/// Streams `logits.npy` (float32 `[samples, classes]`, dataset order) when the job saved logits; rows of
/// samples without logits (bad or failed) are NaN so row i is always sample i.
struct LogitsWriter {
    out: Option<(std::io::BufWriter<File>, PathBuf)>,
    classes: usize,
    fp16: bool,
}

impl LogitsWriter {
    fn new(run_dir: &Path, job: &JobSpec, samples: usize) -> Result<Self, ReportError> {
        use std::io::Write;
        let classes = job.num_classes as usize;
        let out = match job.save_logits {
            tresnet_common::job::SaveLogits::None => None,
            _ => {
                let path = run_dir.join("logits.npy");
                let f = File::create(&path).map_err(|e| write_err(&path, e))?;
                let mut w = std::io::BufWriter::new(f);
                w.write_all(&tresnet_common::npy::header_f32(&[samples, classes]))
                    .map_err(|e| write_err(&path, e))?;
                Some((w, path))
            }
        };
        Ok(LogitsWriter {
            out,
            classes,
            fp16: job.save_logits == tresnet_common::job::SaveLogits::Fp16,
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
        if let Some((mut w, path)) = self.out {
            use std::io::Write;
            w.flush().map_err(|e| write_err(&path, e))?;
        }
        Ok(())
    }
}
