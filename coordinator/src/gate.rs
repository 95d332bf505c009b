//! `gate`: checks a finished run against a checked-in baseline (overall top-1/top-5 drops, per-class
//! top-1 drops, a minimum sample count) so CI can fail on an accuracy regression, and writes baselines.
//!
//! Baseline file (JSON, `format: "tresnet-eval-baseline/1"`), written by `gate --write-baseline`:
//!
//! ```json
//! {
//!   "format": "tresnet-eval-baseline/1",
//!   "model": "tresnet_m",
//!   "weights_sha256": "…",
//!   "dataset": { "url": "file:///data/imagenet/val", "format": "imagenet",
//!                "fingerprint": "…", "size": 50000, "num_classes": 1000 },
//!   "preprocess": { "resolution": 224, "crop_pct": 0.875, "crop_mode": "center", … },
//!   "precision": "fp32",
//!   "top1": 80.79, "top5": 95.24, "top5_k": 5, "samples": 50000,
//!   "classes": [ { "class": 0, "name": "n01440764", "support": 50, "top1": 90.0 }, … ],
//!   "per_sample": { "evaluated": "base64…", "correct1": "base64…", "correct5": "base64…" }
//! }
//! ```
//!
//! `per_sample` (format 2; absent for a `--counts-only` run and in format-1 files, which are still
//! read) holds one bit per dataset sample, bit `i` of byte `i / 8` (least significant first) for
//! sample `i` of the listing: evaluated, right at top-1, right at top-`top5_k`. It is what lets
//! `--significance` pair the run's samples with the baseline's (the dataset fingerprint guarantees
//! that index `i` is the same image in both) and run McNemar's test: a drop beyond the bound fails the
//! gate only when the test says it is real (p < α), so a CI gate on a small set does not fail on noise
//! and a large set cannot hide a real regression below a generous bound. 50,000 samples take 8 KiB a
//! field.
//!
//! Accuracies are percent; `classes` lists the classes with samples. The model name, the dataset
//! fingerprint (hash of the sample keys and labels) and the class count are the baseline's identity: a
//! run that differs in any of them is refused (gating a run against another dataset's or model's
//! numbers would mean nothing). Weights, preprocessing and precision may differ, since checking a new
//! checkpoint or a faster precision against the old numbers is the point of a gate; differences are
//! printed as notes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tresnet_common::preprocess::PreprocessConfig;

use base64::Engine;

use crate::compare::mcnemar_p;
use crate::finished_run::{self, RunDirError, RunSummary, percent};
use crate::table::Table;

pub const BASELINE_FORMAT: &str = "tresnet-eval-baseline/2";
/// Still read: the same fields without `per_sample`.
const BASELINE_FORMAT_1: &str = "tresnet-eval-baseline/1";

/// Drops below this many percentage points are float noise, not violations.
const EPS_PP: f64 = 1e-9;

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    #[error("baseline {path} is missing")]
    BaselineMissing { path: PathBuf },
    #[error("baseline {path} is not a valid baseline file: {reason}")]
    BaselineInvalid { path: PathBuf, reason: String },
    #[error(
        "baseline {path} is for another {what}: baseline {baseline}, run {run}; gating across {what}s means nothing"
    )]
    IdentityMismatch {
        path: PathBuf,
        what: &'static str,
        baseline: String,
        run: String,
    },
    #[error("cannot write baseline {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error(
        "run {run} evaluated no samples ({bad} bad, {failed} in failed shards, of {dataset}): it has no \
         accuracy to gate{as_baseline}"
    )]
    NothingEvaluated {
        run: PathBuf,
        bad: u64,
        failed: u64,
        dataset: u64,
        /// Empty, or why it matters that this run is a baseline.
        as_baseline: &'static str,
    },
}

/// The summary of `run`, refused when it evaluated nothing: its null metrics can be neither a
/// baseline nor a candidate (a drop from or to nothing means nothing).
fn evaluated_summary(run: &Path, as_baseline: &'static str) -> Result<RunSummary, GateError> {
    let s = finished_run::read_summary(run)?;
    match (s.samples, s.top1, s.top5) {
        (1.., Some(_), Some(_)) => Ok(s),
        _ => Err(GateError::NothingEvaluated {
            run: run.to_path_buf(),
            bad: s.bad_samples,
            failed: s.failed_samples,
            dataset: s.dataset_size,
            as_baseline,
        }),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineDataset {
    pub url: String,
    pub format: String,
    pub fingerprint: String,
    pub size: u64,
    pub num_classes: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineClass {
    pub class: u32,
    pub name: String,
    pub support: u64,
    pub top1: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    pub format: String,
    pub model: String,
    pub weights_sha256: String,
    pub dataset: BaselineDataset,
    pub preprocess: PreprocessConfig,
    pub precision: tresnet_common::job::Precision,
    pub top1: f64,
    pub top5: f64,
    pub top5_k: usize,
    pub samples: u64,
    pub classes: Vec<BaselineClass>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_sample: Option<PerSample>,
}

/// Per-sample results of the baseline run as bitsets over the dataset's listing (the module docs give
/// the layout), base64.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerSample {
    pub evaluated: String,
    pub correct1: String,
    pub correct5: String,
}

/// One bit per dataset sample.
#[derive(Debug, Clone, PartialEq)]
struct Bits(Vec<u8>);

impl Bits {
    fn new(len: u64) -> Self {
        Bits(vec![0; len.div_ceil(8) as usize])
    }

    fn set(&mut self, i: u64) {
        self.0[(i / 8) as usize] |= 1 << (i % 8);
    }

    fn get(&self, i: u64) -> bool {
        self.0
            .get((i / 8) as usize)
            .is_some_and(|b| b & (1 << (i % 8)) != 0)
    }

    fn encode(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.0)
    }

    /// Decodes a field of a baseline over `len` samples.
    fn decode(field: &'static str, text: &str, len: u64) -> Result<Self, BitsError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|source| BitsError::Base64 { field, source })?;
        if bytes.len() as u64 != len.div_ceil(8) {
            return Err(BitsError::Length {
                field,
                bytes: bytes.len(),
                expected: len.div_ceil(8),
                samples: len,
            });
        }
        Ok(Bits(bytes))
    }
}

/// Why a baseline's per-sample bitset does not decode.
#[derive(Debug, thiserror::Error)]
enum BitsError {
    #[error("per_sample.{field} is not base64: {source}")]
    Base64 {
        field: &'static str,
        source: base64::DecodeError,
    },
    #[error("per_sample.{field} has {bytes} bytes, expected {expected} for {samples} samples")]
    Length {
        field: &'static str,
        bytes: usize,
        expected: u64,
        samples: u64,
    },
}

/// The per-sample bitsets of a finished run; `None` for a counts-only run, which has no per-sample rows.
fn per_sample_of(run: &Path, s: &RunSummary) -> Result<Option<PerSample>, GateError> {
    if s.job.outputs.counts_only {
        return Ok(None);
    }
    let (mut evaluated, mut c1, mut c5) = (
        Bits::new(s.dataset_size),
        Bits::new(s.dataset_size),
        Bits::new(s.dataset_size),
    );
    for p in finished_run::read_predictions(run)? {
        if p.index >= s.dataset_size {
            return Err(RunDirError::Incomplete {
                path: run.join("predictions.parquet"),
                reason: format!(
                    "sample {} has index {} in a dataset of {}",
                    p.key, p.index, s.dataset_size
                ),
            }
            .into());
        }
        evaluated.set(p.index);
        if p.correct_at(1) {
            c1.set(p.index);
        }
        if p.correct_at(s.top5_k) {
            c5.set(p.index);
        }
    }
    Ok(Some(PerSample {
        evaluated: evaluated.encode(),
        correct1: c1.encode(),
        correct5: c5.encode(),
    }))
}

/// McNemar p-values of the run against the baseline on the samples both evaluated, for
/// `--significance`; `None` per metric where the pairing is impossible (the notes say why).
struct Paired {
    samples: u64,
    top1: f64,
    top5: Option<f64>,
}

fn paired(
    cfg: &GateConfig,
    b: &Baseline,
    s: &RunSummary,
    notes: &mut Vec<String>,
) -> Result<Option<Paired>, GateError> {
    let fallback = "--significance falls back to the plain bounds";
    let Some(ps) = &b.per_sample else {
        notes.push(format!(
            "the baseline has no per-sample results (a --counts-only run, or written before they were recorded); {fallback}"
        ));
        return Ok(None);
    };
    if s.job.outputs.counts_only {
        notes.push(format!(
            "the run is --counts-only: it has no per-sample results to pair; {fallback}"
        ));
        return Ok(None);
    }
    let invalid = |reason| GateError::BaselineInvalid {
        path: cfg.baseline.clone(),
        reason,
    };
    let size = b.dataset.size;
    let bits = |field, text| Bits::decode(field, text, size).map_err(|e| invalid(e.to_string()));
    let evaluated = bits("evaluated", &ps.evaluated)?;
    let c1 = bits("correct1", &ps.correct1)?;
    let c5 = bits("correct5", &ps.correct5)?;
    let (mut n, mut d1, mut d5) = (0u64, (0u64, 0u64), (0u64, 0u64));
    for p in finished_run::read_predictions(&cfg.run)? {
        if !evaluated.get(p.index) {
            continue;
        }
        n += 1;
        // (right in the baseline only, right in the run only)
        let count = |base: bool, run: bool, d: &mut (u64, u64)| match (base, run) {
            (true, false) => d.0 += 1,
            (false, true) => d.1 += 1,
            _ => {}
        };
        count(c1.get(p.index), p.correct_at(1), &mut d1);
        count(c5.get(p.index), p.correct_at(b.top5_k), &mut d5);
    }
    let top5 = if b.top5_k == s.top5_k {
        Some(mcnemar_p(d5.0, d5.1).2)
    } else {
        notes.push(format!(
            "top-5 is top-{} in the baseline and top-{} in the run; the top-5 bound is checked without --significance",
            b.top5_k, s.top5_k
        ));
        None
    };
    Ok(Some(Paired {
        samples: n,
        top1: mcnemar_p(d1.0, d1.1).2,
        top5,
    }))
}

/// Bounds to check; `None` skips a check.
#[derive(Debug, Clone, Default)]
pub struct GateConfig {
    pub run: PathBuf,
    pub baseline: PathBuf,
    /// Percentage points.
    pub max_top1_drop: Option<f64>,
    pub max_top5_drop: Option<f64>,
    pub max_class_drop: Option<f64>,
    /// Classes with fewer samples (in the baseline or the run) are not checked: one image of a
    /// two-image class is a 50-point swing.
    pub min_class_support: u64,
    pub require_samples: Option<u64>,
    /// With a top-1/top-5 bound: a drop beyond it fails only when McNemar's test on the paired samples
    /// gives p below this.
    pub significance: Option<f64>,
}

/// One bound the run broke.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub check: &'static str,
    pub subject: String,
    pub baseline: String,
    pub run: String,
    pub allowed: String,
}

#[derive(Debug, Clone)]
pub struct GateReport {
    pub checked: Vec<String>,
    pub violations: Vec<Violation>,
    pub notes: Vec<String>,
}

impl GateReport {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for n in &self.notes {
            out += &format!("note: {n}\n");
        }
        if self.passed() {
            out += &format!("gate passed: {}\n", self.checked.join("; "));
            return out;
        }
        out += &format!(
            "gate FAILED: {} violation{}\n",
            self.violations.len(),
            if self.violations.len() == 1 { "" } else { "s" }
        );
        let mut t = Table::new(["check", "subject", "baseline", "run", "allowed"]);
        for v in &self.violations {
            t.row([
                v.check.to_string(),
                v.subject.clone(),
                v.baseline.clone(),
                v.run.clone(),
                v.allowed.clone(),
            ]);
        }
        out += &t.render();
        out
    }
}

/// The baseline of a finished run.
pub fn baseline_of(run: &Path) -> Result<Baseline, GateError> {
    let s = evaluated_summary(run, "; it cannot be a baseline")?;
    let names = finished_run::read_class_names(run)?;
    let classes = finished_run::run_class_counts(run, &s)?
        .into_iter()
        .filter_map(|(class, c)| {
            Some(BaselineClass {
                class,
                name: names.get(&class).cloned().unwrap_or_default(),
                support: c.support,
                top1: percent(c.correct1, c.support)?,
            })
        })
        .collect();
    Ok(Baseline {
        format: BASELINE_FORMAT.into(),
        model: s.job.model.model.clone(),
        weights_sha256: s.job.model.weights_sha256.clone(),
        dataset: BaselineDataset {
            url: s.job.data.data_url.clone(),
            format: s.job.data.format.name().to_string(),
            fingerprint: s.job.data.dataset_fingerprint.clone(),
            size: s.dataset_size,
            num_classes: s.job.model.num_classes,
        },
        preprocess: s.job.preprocess.clone(),
        precision: s.job.model.precision,
        top1: s.top1.unwrap_or_default(),
        top5: s.top5.unwrap_or_default(),
        top5_k: s.top5_k,
        samples: s.samples,
        classes,
        per_sample: per_sample_of(run, &s)?,
    })
}

pub fn write_baseline(run: &Path, path: &Path) -> Result<Baseline, GateError> {
    let b = baseline_of(run)?;
    let werr = |e: &dyn std::fmt::Display| GateError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut bytes = serde_json::to_vec_pretty(&b).map_err(|e| werr(&e))?;
    bytes.push(b'\n');
    crate::atomic_file::write_atomic(path, &bytes).map_err(|e| werr(&e.cause))?;
    Ok(b)
}

pub fn read_baseline(path: &Path) -> Result<Baseline, GateError> {
    if !path.is_file() {
        return Err(GateError::BaselineMissing {
            path: path.to_path_buf(),
        });
    }
    let invalid = |reason: String| GateError::BaselineInvalid {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| invalid(e.to_string()))?;
    let b: Baseline = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
    if b.format != BASELINE_FORMAT && b.format != BASELINE_FORMAT_1 {
        return Err(invalid(format!(
            "format is {:?}, expected {BASELINE_FORMAT:?} (or {BASELINE_FORMAT_1:?})",
            b.format
        )));
    }
    let pct_ok = |v: f64| (0.0..=100.0).contains(&v);
    if !pct_ok(b.top1) || !pct_ok(b.top5) || b.classes.iter().any(|c| !pct_ok(c.top1)) {
        return Err(invalid("an accuracy is outside 0..=100 percent".into()));
    }
    if b.samples == 0 {
        return Err(invalid(
            "it evaluated no samples, so it has no accuracy to gate against".into(),
        ));
    }
    Ok(b)
}

fn check_identity(path: &Path, b: &Baseline, s: &RunSummary) -> Result<(), GateError> {
    let mismatch = |what, baseline: String, run: String| {
        Err(GateError::IdentityMismatch {
            path: path.to_path_buf(),
            what,
            baseline,
            run,
        })
    };
    if b.model != s.job.model.model {
        return mismatch("model", b.model.clone(), s.job.model.model.clone());
    }
    if b.dataset.fingerprint != s.job.data.dataset_fingerprint {
        return mismatch(
            "dataset",
            format!("{} (fingerprint {})", b.dataset.url, b.dataset.fingerprint),
            format!(
                "{} (fingerprint {})",
                s.job.data.data_url, s.job.data.dataset_fingerprint
            ),
        );
    }
    if b.dataset.num_classes != s.job.model.num_classes {
        return mismatch(
            "class count",
            b.dataset.num_classes.to_string(),
            s.job.model.num_classes.to_string(),
        );
    }
    Ok(())
}

fn pp(v: f64) -> String {
    format!("{v:.3}")
}

/// Checks the run against the baseline; every violated bound is reported, not only the first.
pub fn gate(cfg: &GateConfig) -> Result<GateReport, GateError> {
    let b = read_baseline(&cfg.baseline)?;
    let s = evaluated_summary(&cfg.run, "")?;
    check_identity(&cfg.baseline, &b, &s)?;
    let mut r = GateReport {
        checked: Vec::new(),
        violations: Vec::new(),
        notes: Vec::new(),
    };
    if b.weights_sha256 != s.job.model.weights_sha256 {
        r.notes.push(format!(
            "weights differ from the baseline's (sha256 {} vs {})",
            short(&b.weights_sha256),
            short(&s.job.model.weights_sha256)
        ));
    }
    if b.preprocess != s.job.preprocess {
        r.notes.push(format!(
            "preprocessing differs from the baseline's ({} px {} vs {} px {})",
            b.preprocess.resolution,
            format!("{:?}", b.preprocess.crop_mode).to_lowercase(),
            s.job.preprocess.resolution,
            format!("{:?}", s.job.preprocess.crop_mode).to_lowercase()
        ));
    }
    if b.precision != s.job.model.precision {
        r.notes.push(format!(
            "precision differs from the baseline's ({} vs {})",
            b.precision, s.job.model.precision
        ));
    }
    let pairs = match cfg.significance {
        Some(_) if cfg.max_top1_drop.is_some() || cfg.max_top5_drop.is_some() => {
            paired(cfg, &b, &s, &mut r.notes)?
        }
        _ => None,
    };
    let mut overall = |name: &'static str,
                       base: f64,
                       run: f64,
                       max: Option<f64>,
                       p: Option<f64>| {
        let Some(max) = max else { return };
        let drop = base - run;
        let test = match (cfg.significance, p, &pairs) {
            (Some(alpha), Some(p), Some(pairs)) => Some((alpha, p, pairs.samples)),
            _ => None,
        };
        r.checked.push(format!(
            "{name} {} (baseline {}, drop {} <= {}{})",
            pp(run),
            pp(base),
            pp(drop),
            pp(max),
            match test {
                Some((alpha, p, n)) => format!(
                    " unless McNemar p < {alpha} over {n} paired samples; p = {}",
                    p_text(p)
                ),
                None => String::new(),
            }
        ));
        if drop <= max + EPS_PP {
            return;
        }
        match test {
            Some((alpha, p, n)) if p >= alpha => r.notes.push(format!(
                "{name} dropped {} pp, beyond {} pp, but not significantly: McNemar p = {} >= {alpha} over {n} paired samples",
                pp(drop),
                pp(max),
                p_text(p)
            )),
            _ => r.violations.push(Violation {
                check: name,
                subject: "overall".into(),
                baseline: pp(base),
                run: pp(run),
                allowed: match test {
                    Some((alpha, p, _)) => format!(
                        "drop <= {} pp (was {}; McNemar p = {} < {alpha})",
                        pp(max),
                        pp(drop),
                        p_text(p)
                    ),
                    None => format!("drop <= {} pp (was {})", pp(max), pp(drop)),
                },
            }),
        }
    };
    let (p1, p5) = match &pairs {
        Some(x) => (Some(x.top1), x.top5),
        None => (None, None),
    };
    overall(
        "top-1",
        b.top1,
        s.top1.unwrap_or_default(),
        cfg.max_top1_drop,
        p1,
    );
    overall(
        "top-5",
        b.top5,
        s.top5.unwrap_or_default(),
        cfg.max_top5_drop,
        p5,
    );
    if let Some(need) = cfg.require_samples {
        r.checked
            .push(format!("samples {} (required {need})", s.samples));
        if s.samples < need {
            r.violations.push(Violation {
                check: "samples",
                subject: "evaluated".into(),
                baseline: b.samples.to_string(),
                run: s.samples.to_string(),
                allowed: format!(">= {need}"),
            });
        }
    }
    if let Some(max) = cfg.max_class_drop {
        let counts = finished_run::run_class_counts(&cfg.run, &s)?;
        let mut checked = 0usize;
        let mut worst = Vec::new();
        for c in &b.classes {
            let run = counts.get(&c.class).cloned().unwrap_or_default();
            if c.support < cfg.min_class_support || run.support < cfg.min_class_support {
                continue;
            }
            let Some(acc) = percent(run.correct1, run.support) else {
                continue;
            };
            checked += 1;
            let drop = c.top1 - acc;
            if drop > max + EPS_PP {
                worst.push((drop, c, acc, run.support));
            }
        }
        // Worst regressions first, so a long table starts with what matters.
        worst.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.class.cmp(&b.1.class)));
        for (drop, c, acc, support) in worst {
            r.violations.push(Violation {
                check: "class top-1",
                subject: if c.name.is_empty() {
                    format!("class {}", c.class)
                } else {
                    format!("class {} ({})", c.class, c.name)
                },
                baseline: format!("{} (n={})", pp(c.top1), c.support),
                run: format!("{} (n={support})", pp(acc)),
                allowed: format!("drop <= {} pp (was {})", pp(max), pp(drop)),
            });
        }
        r.checked.push(format!(
            "{checked} classes with >= {} samples within {} pp",
            cfg.min_class_support,
            pp(max)
        ));
    }
    Ok(r)
}

fn p_text(p: f64) -> String {
    if p >= 1e-3 {
        format!("{p:.4}")
    } else {
        format!("{p:.3e}")
    }
}

fn short(sha: &str) -> &str {
    if sha.is_empty() {
        "none"
    } else {
        &sha[..12.min(sha.len())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run directory holding only the summary.json fields `gate` reads.
    fn run_dir(dir: &Path, samples: u64, top1: Option<f64>) -> PathBuf {
        let run = dir.join(format!("run-{samples}"));
        std::fs::create_dir_all(&run).unwrap();
        let s = serde_json::json!({
            "top1": top1, "top5": top1, "top5_k": 5, "dataset_size": 3, "samples": samples,
            "bad_samples": 3 - samples, "failed_samples": 0,
            "job": tresnet_common::job::example_job(),
        });
        std::fs::write(run.join("summary.json"), s.to_string()).unwrap();
        run
    }

    fn baseline(samples: u64) -> Baseline {
        let job = tresnet_common::job::example_job();
        Baseline {
            format: BASELINE_FORMAT.into(),
            model: job.model.model.clone(),
            weights_sha256: job.model.weights_sha256.clone(),
            dataset: BaselineDataset {
                url: job.data.data_url.clone(),
                format: job.data.format.name().to_string(),
                fingerprint: job.data.dataset_fingerprint.clone(),
                size: 3,
                num_classes: job.model.num_classes,
            },
            preprocess: job.preprocess.clone(),
            precision: job.model.precision,
            top1: 50.0,
            top5: 100.0,
            top5_k: 2,
            samples,
            classes: Vec::new(),
            per_sample: None,
        }
    }

    /// A run that evaluated nothing has null metrics: gating it as a candidate, or against a baseline
    /// that evaluated nothing, is refused naming why, however loose the bounds.
    #[test]
    fn a_run_that_evaluated_nothing_is_neither_candidate_nor_baseline() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("baseline.json");
        std::fs::write(&base, serde_json::to_vec(&baseline(2)).unwrap()).unwrap();
        let cfg = |run: PathBuf| GateConfig {
            run,
            baseline: base.clone(),
            max_top1_drop: Some(100.0),
            ..Default::default()
        };
        assert!(
            gate(&cfg(run_dir(dir.path(), 2, Some(50.0))))
                .unwrap()
                .passed()
        );
        let nothing = run_dir(dir.path(), 0, None);
        let e = gate(&cfg(nothing.clone())).unwrap_err();
        assert!(
            matches!(e, GateError::NothingEvaluated { bad: 3, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("evaluated no samples"), "{e}");
        let e = baseline_of(&nothing).unwrap_err();
        assert!(e.to_string().contains("cannot be a baseline"), "{e}");

        std::fs::write(&base, serde_json::to_vec(&baseline(0)).unwrap()).unwrap();
        let e = gate(&cfg(run_dir(dir.path(), 2, Some(50.0)))).unwrap_err();
        assert!(
            matches!(&e, GateError::BaselineInvalid { reason, .. } if reason.contains("no samples")),
            "{e}"
        );
    }
}
