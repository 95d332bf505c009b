//! `tresnet-coordinator rescore RUN --out NEW`: a finished run scored again under another rule, without
//! inference, into a new run directory whose reports come from the stored predictions (one pass over
//! the val images gives val and ReaL numbers, as timm's validate.py `--real-labels` does).
//!
//! - `--labels real.json` (ImageNet-ReaL): needs only the stored top-k. Each image is matched to its
//!   list by the number in its file name (`ILSVRC2012_val_00000293` → entry 292); an empty list
//!   excludes the image; the rest are scored as `run --format imagenet-real` scores them.
//! - `--class-subset NAME|FILE`: needs the full logits of every evaluated sample (`run --save-logits`),
//!   since the top-k of a subset cannot be read off the stored top-k; the rows are masked and top-k,
//!   loss and confidence recomputed with the workers' own rules (`tresnet_common::scoring`). Samples
//!   whose label is outside the subset are excluded.
//!
//! Bad samples and failed shards carry over unchanged, so `evaluated + excluded + bad + failed` is
//! still the dataset's size. The new job.json records the rule (ReaL: format `imagenet_real` with the
//! labels file's path and its SHA-256 folded into the dataset fingerprint; a subset: `class_subset`),
//! so `report`, `compare` and `gate` read the new directory like any other; logits.npy is copied
//! (rows of excluded samples set to NaN), so check_metrics.py can recompute it.

use std::path::{Path, PathBuf};

use polars::prelude::*;
use sha2::{Digest, Sha256};
use tresnet_common::dataset::imagenet::val_image_number;
use tresnet_common::dataset::{ClassSubset, DatasetFormat, ExcludedSample, SampleKey};
use tresnet_common::job::{JobSpec, SaveLogits};
use tresnet_common::protocol::pb::SampleResult;
use tresnet_common::scoring::{loss_and_confidence, top_k};

use crate::report::{self, ReportError, ScoredRow};
use crate::run_dir::{JOB_FILE, OUTCOME_FILE, Outcome, PREDICTIONS_FILE, Summary};

/// The rule a run is rescored under.
#[derive(Debug, Clone)]
pub enum Rescoring {
    /// ImageNet-ReaL label lists (`real.json`), read from the local disk.
    RealLabels(PathBuf),
    /// A class subset: a built-in name or a file (`--class-subset`).
    ClassSubset(String),
}

#[derive(Debug, thiserror::Error)]
pub enum RescoreError {
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error(
        "{run} has no per-sample predictions (a --counts-only run); rescoring needs its stored top-k"
    )]
    CountsOnly { run: PathBuf },
    #[error(
        "--class-subset needs the full logits of every sample, and {run} was run without --save-logits; \
         rerun it with --save-logits fp16 (or fp32), or run with --class-subset directly"
    )]
    NoLogits { run: PathBuf },
    #[error("{run} is already scored on a class subset; rescore the run it came from")]
    AlreadySubset { run: PathBuf },
    #[error(
        "{run} is scored on a class subset, whose class indices are not ReaL's; rescore the run it came from"
    )]
    RealOfSubset { run: PathBuf },
    #[error(
        "{run} is scored against label lists (ImageNet-ReaL); a class subset of it is not defined"
    )]
    MultiLabel { run: PathBuf },
    #[error("ReaL labels {path}: {reason}")]
    Labels { path: PathBuf, reason: String },
    #[error(transparent)]
    Subset(#[from] tresnet_common::dataset::subset::SubsetError),
    #[error("{key}: {reason}")]
    Sample { key: String, reason: String },
    #[error("{path} exists and is not empty; rescore writes a new run directory")]
    OutExists { path: PathBuf },
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> RescoreError {
    RescoreError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// A stored prediction row.
struct Stored {
    index: u64,
    key: String,
    label: u32,
    result: SampleResult,
}

fn read_predictions(run: &Path) -> Result<Vec<Stored>, RescoreError> {
    let path = run.join(PREDICTIONS_FILE);
    let file = std::fs::File::open(&path).map_err(|e| io_err(&path, e))?;
    let df = ParquetReader::new(file)
        .finish()
        .map_err(|e| io_err(&path, e))?;
    let rows = (|| -> PolarsResult<Vec<Stored>> {
        let index = df.column("index")?.u64()?;
        let key = df.column("key")?.str()?;
        let label = df.column("label")?.u32()?;
        let ti = df.column("topk_indices")?.list()?;
        let tl = df.column("topk_logits")?.list()?;
        let loss = df.column("loss")?.f64()?;
        let conf = df.column("confidence")?.f64()?;
        let mut out = Vec::with_capacity(df.height());
        for i in 0..df.height() {
            let missing = || polars_err!(ComputeError: "null in row {i}");
            let list = |l: &ListChunked| l.get_as_series(i).ok_or_else(missing);
            out.push(Stored {
                index: index.get(i).ok_or_else(missing)?,
                key: key.get(i).ok_or_else(missing)?.to_string(),
                label: label.get(i).ok_or_else(missing)?,
                result: SampleResult {
                    index: index.get(i).ok_or_else(missing)?,
                    topk_indices: list(ti)?.u32()?.into_no_null_iter().collect(),
                    topk_logits: list(tl)?.f32()?.into_no_null_iter().collect(),
                    loss: loss.get(i).ok_or_else(missing)?,
                    confidence: conf.get(i).ok_or_else(missing)?,
                    ..Default::default()
                },
            });
        }
        Ok(out)
    })()
    .map_err(|e| io_err(&path, e))?;
    Ok(rows)
}

/// Rescores the run in `run` under `rule` into the new directory `out`.
pub fn rescore(run: &Path, out: &Path, rule: &Rescoring) -> Result<Summary, RescoreError> {
    let job: JobSpec = report::read_json(&run.join(JOB_FILE))?;
    let mut outcome: Outcome = report::read_json(&run.join(OUTCOME_FILE))?;
    if job.outputs.counts_only {
        return Err(RescoreError::CountsOnly {
            run: run.to_path_buf(),
        });
    }
    if out.exists()
        && std::fs::read_dir(out)
            .map_err(|e| io_err(out, e))?
            .next()
            .is_some()
    {
        return Err(RescoreError::OutExists {
            path: out.to_path_buf(),
        });
    }
    let stored = read_predictions(run)?;
    let (job, rows, excluded) = match rule {
        Rescoring::RealLabels(path) => {
            if job.data.class_subset.is_some() {
                return Err(RescoreError::RealOfSubset {
                    run: run.to_path_buf(),
                });
            }
            real(job, stored, path)?
        }
        Rescoring::ClassSubset(arg) => subset(run, job, &mut outcome, stored, arg)?,
    };
    std::fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
    copy_logits(run, out, &job, &rows)?;
    outcome.excluded.extend(excluded);
    Ok(report::write_scored(out, &job, &outcome, &rows)?)
}

type Rescored = (JobSpec, Vec<ScoredRow>, Vec<ExcludedSample>);

/// ReaL: each row's list by its image number; the stored top-k is all that is needed.
fn real(mut job: JobSpec, stored: Vec<Stored>, path: &Path) -> Result<Rescored, RescoreError> {
    let bad = |reason: String| RescoreError::Labels {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let lists: Vec<Vec<u32>> = serde_json::from_slice(&bytes).map_err(|e| {
        bad(format!(
            "not a JSON list of label lists (ReaL's real.json): {e}"
        ))
    })?;
    let mut rows = Vec::with_capacity(stored.len());
    let mut excluded = Vec::new();
    for s in stored {
        let name = s.key.rsplit('/').next().unwrap_or_default();
        let number = val_image_number(name).ok_or_else(|| RescoreError::Sample {
            key: s.key.clone(),
            reason: "not named ILSVRC2012_val_NNNNNNNN, so it has no ReaL label list".into(),
        })?;
        let list = number
            .checked_sub(1)
            .and_then(|i| lists.get(i as usize))
            .ok_or_else(|| {
                bad(format!(
                    "has {} lists, none for image {number}",
                    lists.len()
                ))
            })?;
        if let Some(c) = list.iter().find(|&&c| c >= job.model.num_classes) {
            return Err(bad(format!(
                "image {number} lists class {c}, but the model has {} classes",
                job.model.num_classes
            )));
        }
        if list.is_empty() {
            excluded.push(ExcludedSample {
                key: SampleKey(s.key),
                reason: "empty ReaL label list".into(),
            });
            continue;
        }
        let mut accepted = list.clone();
        accepted.sort_unstable();
        accepted.dedup();
        rows.push(ScoredRow {
            index: s.index,
            key: s.key,
            label: s.label,
            accepted: Some(accepted),
            result: s.result,
        });
    }
    let absolute = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    job.data.format = DatasetFormat::ImageNetReal {
        labels: Some(absolute.display().to_string()),
    };
    // The lists change every number, so they are part of the dataset's identity.
    let mut h = Sha256::new();
    for part in [
        job.data.dataset_fingerprint.as_bytes(),
        b"real-labels",
        &bytes,
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    job.data.dataset_fingerprint = format!("{:x}", h.finalize());
    Ok((job, rows, excluded))
}

/// A class subset: every evaluated row's full logits, masked and scored again.
fn subset(
    run: &Path,
    mut job: JobSpec,
    outcome: &mut Outcome,
    stored: Vec<Stored>,
    arg: &str,
) -> Result<Rescored, RescoreError> {
    let no_logits = || RescoreError::NoLogits {
        run: run.to_path_buf(),
    };
    if job.data.class_subset.is_some() {
        return Err(RescoreError::AlreadySubset {
            run: run.to_path_buf(),
        });
    }
    if matches!(job.data.format, DatasetFormat::ImageNetReal { .. }) {
        return Err(RescoreError::MultiLabel {
            run: run.to_path_buf(),
        });
    }
    let logits_path = run.join("logits.npy");
    if job.outputs.save_logits == SaveLogits::None || !logits_path.is_file() {
        return Err(no_logits());
    }
    let subset = ClassSubset::resolve(arg)?;
    subset.check_within(job.model.num_classes)?;
    let logits =
        tresnet_common::npy::read_f32(&logits_path).map_err(|e| io_err(&logits_path, e))?;
    let classes = job.model.num_classes as usize;
    if logits.shape.len() != 2 || logits.shape[1] != classes {
        return Err(io_err(
            &logits_path,
            format!("shape {:?}, expected [samples, {classes}]", logits.shape),
        ));
    }
    let top = job.outputs.top_k.min(subset.len() as u32);
    let mut rows = Vec::with_capacity(stored.len());
    let mut excluded = Vec::new();
    let mut kept = Vec::with_capacity(subset.len());
    for s in stored {
        let Some(label) = subset.position(s.label) else {
            let name = outcome.class_names.get(s.label as usize);
            excluded.push(ExcludedSample {
                key: SampleKey(s.key),
                reason: format!(
                    "class {} (index {}) is outside the class subset",
                    name.map_or("", String::as_str),
                    s.label
                ),
            });
            continue;
        };
        let row = logits
            .data
            .get(s.index as usize * classes..(s.index as usize + 1) * classes)
            .filter(|r| r.iter().all(|v| !v.is_nan()))
            .ok_or_else(no_logits)?;
        kept.clear();
        kept.extend(subset.classes().iter().map(|&c| row[c as usize]));
        let (topk_indices, topk_logits) = top_k(&kept, top as usize);
        let (loss, confidence) = loss_and_confidence(&kept, label);
        rows.push(ScoredRow {
            index: s.index,
            key: s.key,
            label,
            accepted: None,
            result: SampleResult {
                index: s.index,
                topk_indices,
                topk_logits,
                loss,
                confidence,
                ..Default::default()
            },
        });
    }
    outcome.class_names = subset
        .classes()
        .iter()
        .map(|&c| {
            outcome
                .class_names
                .get(c as usize)
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    job.outputs.top_k = top;
    job.data.class_subset = Some(subset);
    Ok((job, rows, excluded))
}

/// Copies logits.npy when the run has one, with the rows of samples that are no longer evaluated
/// (now excluded) set to NaN: the file's rule, NaN rows for samples without a prediction.
fn copy_logits(
    run: &Path,
    out: &Path,
    job: &JobSpec,
    rows: &[ScoredRow],
) -> Result<(), RescoreError> {
    let from = run.join("logits.npy");
    if job.outputs.save_logits == SaveLogits::None || !from.is_file() {
        return Ok(());
    }
    let to = out.join("logits.npy");
    let mut logits = tresnet_common::npy::read_f32(&from).map_err(|e| io_err(&from, e))?;
    let (samples, classes) = match logits.shape[..] {
        [samples, classes] if classes == job.model.num_classes as usize => (samples, classes),
        _ => {
            return Err(io_err(
                &from,
                format!(
                    "shape {:?}, expected [samples, {}]",
                    logits.shape, job.model.num_classes
                ),
            ));
        }
    };
    let mut keep = vec![false; samples];
    for r in rows {
        if let Some(k) = keep.get_mut(r.index as usize) {
            *k = true;
        }
    }
    for (i, row) in logits.data.chunks_mut(classes).enumerate() {
        if !keep[i] {
            row.fill(f32::NAN);
        }
    }
    tresnet_common::npy::write_f32(&to, &logits.shape, &logits.data).map_err(|e| io_err(&to, e))
}
