//! Reads a finished run directory back (summary.json, predictions.parquet, per_class.csv) for `gate`,
//! `compare` and `sweep`. Only the fields these commands need are read and unknown ones are ignored,
//! so the report files can grow without breaking them; per-sample correctness is recomputed from
//! `label` and `topk_indices` rather than taken from derived columns.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use serde::Deserialize;
use tresnet_common::job::JobSpec;

#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error(
        "{path} is missing: not a finished run directory (run `tresnet-coordinator run` first)"
    )]
    Missing { path: PathBuf },
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} is incomplete: {reason}")]
    Incomplete { path: PathBuf, reason: String },
}

fn read_err(path: &Path, e: impl std::fmt::Display) -> RunDirError {
    RunDirError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// The part of `summary.json` these commands use.
#[derive(Debug, Clone, Deserialize)]
pub struct RunSummary {
    /// Percent; null when no sample was evaluated.
    pub top1: Option<f64>,
    /// Percent, at `top5_k`; null when no sample was evaluated.
    pub top5: Option<f64>,
    #[serde(default = "default_k5")]
    pub top5_k: usize,
    pub dataset_size: u64,
    pub samples: u64,
    pub bad_samples: u64,
    pub failed_samples: u64,
    /// Left out by the scoring rule (ImageNet-ReaL's empty lists, classes outside the class subset).
    #[serde(default)]
    pub excluded_samples: u64,
    #[serde(default)]
    pub throughput: f64,
    pub job: JobSpec,
    /// 95% Wilson interval of `top1`; absent in run directories written before it was reported.
    #[serde(default)]
    pub top1_ci95: Option<crate::stats::Interval>,
    /// 95% Wilson interval of `top5`, likewise.
    #[serde(default)]
    pub top5_ci95: Option<crate::stats::Interval>,
}

fn default_k5() -> usize {
    tresnet_common::scoring::TOP5 as usize
}

impl RunSummary {
    /// Every sample of the dataset evaluated, excluded by rule or reported bad: nothing left to retry.
    pub fn is_complete(&self) -> bool {
        self.failed_samples == 0
            && self.samples + self.excluded_samples + self.bad_samples == self.dataset_size
    }
}

fn existing(run: &Path, file: &str) -> Result<PathBuf, RunDirError> {
    let p = run.join(file);
    if p.is_file() {
        Ok(p)
    } else {
        Err(RunDirError::Missing { path: p })
    }
}

pub fn read_summary(run: &Path) -> Result<RunSummary, RunDirError> {
    let path = existing(run, crate::run_dir::SUMMARY_FILE)?;
    let bytes = std::fs::read(&path).map_err(|e| read_err(&path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| read_err(&path, e))
}

/// One evaluated sample: its key, label and ranked classes.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Position in the dataset's listing (the same sample in every run with the same fingerprint).
    pub index: u64,
    pub key: String,
    pub label: u32,
    pub topk: Vec<u32>,
}

impl Prediction {
    pub fn correct_at(&self, k: usize) -> bool {
        self.topk.iter().take(k).any(|&c| c == self.label)
    }
}

/// Every row of `predictions.parquet`, in file (dataset) order.
pub fn read_predictions(run: &Path) -> Result<Vec<Prediction>, RunDirError> {
    let path = existing(run, crate::run_dir::PREDICTIONS_FILE)?;
    let f = File::open(&path).map_err(|e| read_err(&path, e))?;
    let df = ParquetReader::new(f)
        .with_columns(Some(vec![
            "index".into(),
            "key".into(),
            "label".into(),
            "topk_indices".into(),
        ]))
        .finish()
        .map_err(|e| read_err(&path, e))?;
    let col = |name: &str| df.column(name).map_err(|e| read_err(&path, e));
    let indices = col("index")?
        .cast(&DataType::UInt64)
        .map_err(|e| read_err(&path, e))?;
    let indices = indices.u64().map_err(|e| read_err(&path, e))?.clone();
    let keys = col("key")?.str().map_err(|e| read_err(&path, e))?.clone();
    let labels = col("label")?
        .cast(&DataType::UInt32)
        .map_err(|e| read_err(&path, e))?;
    let labels = labels.u32().map_err(|e| read_err(&path, e))?.clone();
    let topk = col("topk_indices")?
        .list()
        .map_err(|e| read_err(&path, e))?
        .clone();
    let mut out = Vec::with_capacity(df.height());
    for i in 0..df.height() {
        let (Some(index), Some(key), Some(label), Some(top)) = (
            indices.get(i),
            keys.get(i),
            labels.get(i),
            topk.get_as_series(i),
        ) else {
            return Err(read_err(
                &path,
                "a row has a null index, key, label or topk_indices",
            ));
        };
        let top = top
            .cast(&DataType::UInt32)
            .map_err(|e| read_err(&path, e))?;
        let top: Vec<u32> = top
            .u32()
            .map_err(|e| read_err(&path, e))?
            .into_no_null_iter()
            .collect();
        out.push(Prediction {
            index,
            key: key.to_string(),
            label,
            topk: top,
        });
    }
    Ok(out)
}

/// Class names from `per_class.csv` (class index → name); empty when the file is absent, since names
/// only label the tables.
pub fn read_class_names(run: &Path) -> Result<BTreeMap<u32, String>, RunDirError> {
    let path = run.join(crate::run_dir::PER_CLASS_CSV);
    if !path.is_file() {
        return Ok(BTreeMap::new());
    }
    let df = CsvReadOptions::default()
        .with_has_header(true)
        .try_into_reader_with_file_path(Some(path.clone()))
        .and_then(|r| r.finish())
        .map_err(|e| read_err(&path, e))?;
    let class = df
        .column("class")
        .and_then(|c| c.cast(&DataType::UInt32))
        .map_err(|e| read_err(&path, e))?;
    // Numeric-looking names ("0", "1") are inferred as integers; they are names all the same.
    let name = df
        .column("name")
        .and_then(|c| c.cast(&DataType::String))
        .map_err(|e| read_err(&path, e))?;
    let class = class.u32().map_err(|e| read_err(&path, e))?;
    let name = name.str().map_err(|e| read_err(&path, e))?;
    let mut out = BTreeMap::new();
    for i in 0..class.len() {
        if let Some(c) = class.get(i) {
            out.insert(c, name.get(i).unwrap_or_default().to_string());
        }
    }
    Ok(out)
}

/// Per-class counts over a set of predictions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClassCounts {
    pub support: u64,
    pub correct1: u64,
    pub correct5: u64,
}

/// Percent, or `None` without samples.
pub fn percent(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| 100.0 * num as f64 / den as f64)
}

pub fn class_counts(preds: &[Prediction], k5: usize) -> BTreeMap<u32, ClassCounts> {
    let mut out: BTreeMap<u32, ClassCounts> = BTreeMap::new();
    for p in preds {
        let c = out.entry(p.label).or_default();
        c.support += 1;
        c.correct1 += u64::from(p.correct_at(1));
        c.correct5 += u64::from(p.correct_at(k5));
    }
    out
}

/// Per-class counts of a finished run: from predictions.parquet, or for a counts-only run (no
/// per-sample rows) from its stored counts, which hold the same numbers.
pub fn run_class_counts(
    run: &Path,
    summary: &RunSummary,
) -> Result<BTreeMap<u32, ClassCounts>, RunDirError> {
    if !summary.job.outputs.counts_only {
        return Ok(class_counts(&read_predictions(run)?, summary.top5_k));
    }
    use prost::Message;
    let path = existing(run, crate::run_dir::COUNTS_FILE)?;
    let bytes = std::fs::read(&path).map_err(|e| read_err(&path, e))?;
    let c = tresnet_common::protocol::pb::ShardCounts::decode(bytes.as_slice())
        .map_err(|e| read_err(&path, e))?;
    let mut out: BTreeMap<u32, ClassCounts> = BTreeMap::new();
    for cell in &c.confusion {
        let e = out.entry(cell.label).or_default();
        e.support += cell.count;
        if cell.label == cell.predicted {
            e.correct1 += cell.count;
        }
    }
    for cc in &c.correct5_by_class {
        out.entry(cc.class_index).or_default().correct5 += cc.count;
    }
    Ok(out)
}
