//! `compare`: overall and per-class differences between two runs over the same dataset, with McNemar's
//! test on the paired per-sample correctness (top-1 and top-k).
//!
//! Samples are paired by key. Runs over different datasets (fingerprints), or whose evaluated keys or
//! labels differ (a sample bad or failed in one run only), are refused: unpaired accuracies would mix
//! a model difference with a data difference.
//!
//! McNemar's test uses only the discordant pairs: `b` samples right in A and wrong in B, `c` the
//! reverse. With `b + c < 25` it is the exact binomial test, two-sided p = min(1, 2·P[X ≤ min(b, c)])
//! for X ~ Binomial(b + c, ½) (what `scipy.stats.binomtest(min(b, c), b + c).pvalue` and statsmodels'
//! `mcnemar(exact=True)` give); otherwise the chi-square statistic with continuity correction,
//! (|b − c| − 1)² / (b + c), against χ² with one degree of freedom (statsmodels'
//! `mcnemar(exact=False, correction=True)`, including its 1 / (b + c) when b == c). 25 is the usual cut-off below which the chi-square
//! approximation is poor. With no discordant pairs p = 1.
//!
//! Beside the test, the 95% paired-bootstrap interval of each difference (percentage points,
//! [`crate::stats::paired_bootstrap_diff`]): how large the change plausibly is, where McNemar only
//! says whether there is one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::finished_run::{self, Prediction, RunDirError, percent};
use crate::stats::{Interval, paired_bootstrap_diff};
use crate::table::Table;

/// Discordant pairs below this use the exact binomial test.
pub const EXACT_BELOW: u64 = 25;

#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    #[error(
        "{run} was evaluated with --counts-only: it has no per-sample predictions, which McNemar's test pairs; rerun it without --counts-only to compare"
    )]
    CountsOnly { run: PathBuf },
    #[error("{a} and {b} are over different datasets ({datasets}); samples cannot be paired")]
    DifferentDatasets {
        a: PathBuf,
        b: PathBuf,
        /// Both URLs and fingerprints.
        datasets: String,
    },
    #[error(
        "{a} and {b} did not evaluate the same samples: {only_a} only in the first (e.g. {example_a:?}), {only_b} only in the second (e.g. {example_b:?}); compare needs every sample in both"
    )]
    KeysDiffer {
        a: PathBuf,
        b: PathBuf,
        only_a: usize,
        only_b: usize,
        example_a: Option<String>,
        example_b: Option<String>,
    },
    #[error("sample {key} has label {label_a} in {a} but {label_b} in {b}")]
    LabelDiffers {
        key: String,
        a: PathBuf,
        b: PathBuf,
        label_a: u32,
        label_b: u32,
    },
    #[error("{path} lists sample {key} twice")]
    DuplicateKey { path: PathBuf, key: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum McNemarMethod {
    /// Exact two-sided binomial test on the discordant pairs.
    ExactBinomial,
    /// Chi-square, one degree of freedom, with continuity correction.
    ChiSquareCorrected,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct McNemar {
    /// Right in both runs.
    pub both: u64,
    /// Right in A, wrong in B.
    pub only_a: u64,
    /// Wrong in A, right in B.
    pub only_b: u64,
    pub neither: u64,
    pub method: McNemarMethod,
    /// The chi-square statistic; `None` for the exact test.
    pub statistic: Option<f64>,
    pub p_value: f64,
    /// 95% paired-bootstrap interval of B − A, percentage points; `None` with no pairs.
    pub diff_ci95: Option<Interval>,
}

/// McNemar's test of `b` (A right, B wrong) against `c` (A wrong, B right) discordant pairs.
pub fn mcnemar_p(b: u64, c: u64) -> (McNemarMethod, Option<f64>, f64) {
    let n = b + c;
    if n < EXACT_BELOW {
        let k = b.min(c);
        // Σ_{i≤k} C(n, i) / 2^n, each term in log space so large n cannot overflow.
        let ln2n = n as f64 * std::f64::consts::LN_2;
        let mut ln_c = 0.0f64;
        let mut cdf = 0.0f64;
        for i in 0..=k {
            if i > 0 {
                ln_c += ((n - i + 1) as f64).ln() - (i as f64).ln();
            }
            cdf += (ln_c - ln2n).exp();
        }
        (McNemarMethod::ExactBinomial, None, (2.0 * cdf).min(1.0))
    } else {
        // Not clamped at 0: with b == c the statistic is 1 / (b + c), as statsmodels computes it.
        let d = (b as f64 - c as f64).abs() - 1.0;
        let stat = d.powi(2) / n as f64;
        // Survival function of χ²(1): P[Z² > x] = erfc(√(x/2)).
        let p = libm::erfc((stat / 2.0).sqrt());
        (McNemarMethod::ChiSquareCorrected, Some(stat), p)
    }
}

fn mcnemar(pairs: impl Iterator<Item = (bool, bool)>) -> McNemar {
    let (mut both, mut only_a, mut only_b, mut neither) = (0, 0, 0, 0);
    for (a, b) in pairs {
        match (a, b) {
            (true, true) => both += 1,
            (true, false) => only_a += 1,
            (false, true) => only_b += 1,
            (false, false) => neither += 1,
        }
    }
    let (method, statistic, p_value) = mcnemar_p(only_a, only_b);
    McNemar {
        both,
        only_a,
        only_b,
        neither,
        method,
        statistic,
        p_value,
        diff_ci95: paired_bootstrap_diff(only_a, only_b, both + only_a + only_b + neither),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delta {
    pub a: f64,
    pub b: f64,
    /// b − a, percentage points.
    pub delta: f64,
}

impl Delta {
    fn new(a: f64, b: f64) -> Self {
        Delta { a, b, delta: b - a }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassDelta {
    pub class: u32,
    pub name: String,
    pub support: u64,
    pub top1: Delta,
    pub top5: Delta,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub run_a: PathBuf,
    pub run_b: PathBuf,
    /// Paired samples.
    pub samples: u64,
    pub top5_k: usize,
    pub top1: Delta,
    pub top5: Delta,
    pub mcnemar_top1: McNemar,
    pub mcnemar_top5: McNemar,
    /// Every class with samples, the largest top-1 drop (B below A) first.
    pub classes: Vec<ClassDelta>,
}

fn by_key<'a>(
    path: &Path,
    preds: &'a [Prediction],
) -> Result<HashMap<&'a str, &'a Prediction>, CompareError> {
    let mut m = HashMap::with_capacity(preds.len());
    for p in preds {
        if m.insert(p.key.as_str(), p).is_some() {
            return Err(CompareError::DuplicateKey {
                path: path.join("predictions.parquet"),
                key: p.key.clone(),
            });
        }
    }
    Ok(m)
}

pub fn compare(a: &Path, b: &Path) -> Result<Comparison, CompareError> {
    let (sa, sb) = (
        finished_run::read_summary(a)?,
        finished_run::read_summary(b)?,
    );
    if sa.job.data.dataset_fingerprint != sb.job.data.dataset_fingerprint {
        return Err(CompareError::DifferentDatasets {
            a: a.to_path_buf(),
            b: b.to_path_buf(),
            datasets: format!(
                "{}, fingerprint {} vs {}, fingerprint {}",
                sa.job.data.data_url,
                sa.job.data.dataset_fingerprint,
                sb.job.data.data_url,
                sb.job.data.dataset_fingerprint
            ),
        });
    }
    for (run, s) in [(a, &sa), (b, &sb)] {
        if s.job.outputs.counts_only {
            return Err(CompareError::CountsOnly {
                run: run.to_path_buf(),
            });
        }
    }
    let (pa, pb) = (
        finished_run::read_predictions(a)?,
        finished_run::read_predictions(b)?,
    );
    let (ma, mb) = (by_key(a, &pa)?, by_key(b, &pb)?);
    let mut only_a: Vec<&str> = ma
        .keys()
        .filter(|k| !mb.contains_key(*k))
        .copied()
        .collect();
    let mut only_b: Vec<&str> = mb
        .keys()
        .filter(|k| !ma.contains_key(*k))
        .copied()
        .collect();
    if !only_a.is_empty() || !only_b.is_empty() {
        only_a.sort_unstable();
        only_b.sort_unstable();
        return Err(CompareError::KeysDiffer {
            a: a.to_path_buf(),
            b: b.to_path_buf(),
            only_a: only_a.len(),
            only_b: only_b.len(),
            example_a: only_a.first().map(|s| s.to_string()),
            example_b: only_b.first().map(|s| s.to_string()),
        });
    }
    // k for "top-5" is the smaller of the two runs' k, so both sides are measured alike.
    let k5 = sa.top5_k.min(sb.top5_k).max(1);
    let mut pairs = Vec::with_capacity(pa.len());
    for p in &pa {
        let q = mb[p.key.as_str()];
        if p.label != q.label {
            return Err(CompareError::LabelDiffers {
                key: p.key.clone(),
                a: a.to_path_buf(),
                b: b.to_path_buf(),
                label_a: p.label,
                label_b: q.label,
            });
        }
        pairs.push((p, q));
    }
    let n = pairs.len() as u64;
    let count = |f: &dyn Fn(&(&Prediction, &Prediction)) -> bool| {
        pairs.iter().filter(|x| f(x)).count() as u64
    };
    let pct = |num: u64| percent(num, n).unwrap_or(0.0);
    let top1 = Delta::new(
        pct(count(&|(p, _)| p.correct_at(1))),
        pct(count(&|(_, q)| q.correct_at(1))),
    );
    let top5 = Delta::new(
        pct(count(&|(p, _)| p.correct_at(k5))),
        pct(count(&|(_, q)| q.correct_at(k5))),
    );
    let mcnemar_top1 = mcnemar(
        pairs
            .iter()
            .map(|(p, q)| (p.correct_at(1), q.correct_at(1))),
    );
    let mcnemar_top5 = mcnemar(
        pairs
            .iter()
            .map(|(p, q)| (p.correct_at(k5), q.correct_at(k5))),
    );
    let names = finished_run::read_class_names(a)?;
    let (ca, cb) = (
        finished_run::class_counts(&pa, k5),
        finished_run::class_counts(&pb, k5),
    );
    let mut classes: Vec<ClassDelta> = ca
        .iter()
        .map(|(&class, x)| {
            let y = cb.get(&class).cloned().unwrap_or_default();
            let acc = |num, den| percent(num, den).unwrap_or(0.0);
            ClassDelta {
                class,
                name: names.get(&class).cloned().unwrap_or_default(),
                support: x.support,
                top1: Delta::new(acc(x.correct1, x.support), acc(y.correct1, y.support)),
                top5: Delta::new(acc(x.correct5, x.support), acc(y.correct5, y.support)),
            }
        })
        .collect();
    classes.sort_by(|x, y| {
        x.top1
            .delta
            .total_cmp(&y.top1.delta)
            .then(x.top5.delta.total_cmp(&y.top5.delta))
            .then(x.class.cmp(&y.class))
    });
    Ok(Comparison {
        run_a: a.to_path_buf(),
        run_b: b.to_path_buf(),
        samples: n,
        top5_k: k5,
        top1,
        top5,
        mcnemar_top1,
        mcnemar_top5,
        classes,
    })
}

fn p_text(p: f64) -> String {
    if p >= 1e-3 {
        format!("{p:.4}")
    } else {
        format!("{p:.3e}")
    }
}

fn signed(v: f64) -> String {
    format!("{v:+.3}")
}

impl Comparison {
    /// The readable report: overall deltas with McNemar's test, then the per-class table (the `limit`
    /// largest top-1 drops and gains; all classes when `limit` is 0).
    pub fn render(&self, limit: usize) -> String {
        let mut out = format!(
            "A: {}\nB: {}\n{} paired samples\n\n",
            self.run_a.display(),
            self.run_b.display(),
            self.samples
        );
        let mut t = Table::new([
            "metric", "A %", "B %", "B-A pp", "95% CI", "A only", "B only", "test", "p",
        ]);
        for (name, d, m) in [
            ("top-1".to_string(), &self.top1, &self.mcnemar_top1),
            (
                format!("top-{}", self.top5_k),
                &self.top5,
                &self.mcnemar_top5,
            ),
        ] {
            let test = match (m.method, m.statistic) {
                (McNemarMethod::ExactBinomial, _) => "exact binomial".to_string(),
                (McNemarMethod::ChiSquareCorrected, Some(s)) => format!("chi2(cc)={s:.3}"),
                (McNemarMethod::ChiSquareCorrected, None) => "chi2(cc)".to_string(),
            };
            t.row([
                name,
                format!("{:.3}", d.a),
                format!("{:.3}", d.b),
                signed(d.delta),
                m.diff_ci95
                    .map(|i| format!("{} to {}", signed(i.low), signed(i.high)))
                    .unwrap_or_default(),
                m.only_a.to_string(),
                m.only_b.to_string(),
                test,
                p_text(m.p_value),
            ]);
        }
        out += &t.render();
        out += "McNemar on paired correctness: exact binomial when A only + B only < 25, else chi-square with continuity correction; 95% CI of B-A: paired bootstrap\n\n";
        let rows: Vec<&ClassDelta> = if limit == 0 || self.classes.len() <= 2 * limit {
            self.classes.iter().collect()
        } else {
            let n = self.classes.len();
            self.classes[..limit]
                .iter()
                .chain(&self.classes[n - limit..])
                .collect()
        };
        let mut c = Table::new([
            "class".to_string(),
            "name".to_string(),
            "n".to_string(),
            "A top-1".to_string(),
            "B top-1".to_string(),
            "B-A top-1".to_string(),
            format!("B-A top-{}", self.top5_k),
        ]);
        for d in &rows {
            c.row([
                d.class.to_string(),
                d.name.clone(),
                d.support.to_string(),
                format!("{:.3}", d.top1.a),
                format!("{:.3}", d.top1.b),
                signed(d.top1.delta),
                signed(d.top5.delta),
            ]);
        }
        out += &format!(
            "per class, largest top-1 drop first ({} of {} classes):\n",
            rows.len(),
            self.classes.len()
        );
        out += &c.render();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_mcnemar_matches_hand_computed_binomial_tails() {
        // b=1, c=5: 2·(C(6,0)+C(6,1))/64 = 14/64.
        let (m, s, p) = mcnemar_p(1, 5);
        assert_eq!(m, McNemarMethod::ExactBinomial);
        assert!(s.is_none());
        assert!((p - 14.0 / 64.0).abs() < 1e-12, "{p}");
        // Symmetric, and equal counts give 1.
        assert_eq!(mcnemar_p(5, 1).2, p);
        assert_eq!(mcnemar_p(3, 3).2, 1.0);
        assert_eq!(mcnemar_p(0, 0).2, 1.0);
    }

    #[test]
    fn chi_square_mcnemar_uses_continuity_correction() {
        // b=10, c=30: (|10-30|-1)^2/40 = 9.025; sf = erfc(sqrt(4.5125)).
        let (m, s, p) = mcnemar_p(10, 30);
        assert_eq!(m, McNemarMethod::ChiSquareCorrected);
        assert!((s.unwrap() - 9.025).abs() < 1e-12);
        // scipy.stats.chi2.sf(9.025, 1) = 0.002663119259138558
        assert!((p - 0.002_663_119_259).abs() < 1e-10, "{p}");
    }
}
