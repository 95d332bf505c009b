//! Uncertainty of the reported accuracies: Wilson score intervals for a run's own top-1/top-5 (overall
//! and per class) and a paired bootstrap interval for the difference between two runs.
//!
//! Wilson rather than the normal (Wald) interval because per-class counts are small (50 images a class
//! on ImageNet-val, 10 on a quick check) and accuracies sit near 0 or 100%, where Wald's interval
//! collapses to a point or leaves [0, 100]; rather than a bootstrap because it is a closed form: the
//! same counts give the same interval in every report, rerender and sweep table, at no cost. It is what
//! `scipy.stats.binomtest(k, n).proportion_ci(method="wilson")` and statsmodels'
//! `proportion_confint(method="wilson")` give (tests/tests/stats_reference.py checks both numbers).
//!
//! The difference of two runs' accuracies on the *same* samples is paired: most samples are right (or
//! wrong) in both, and only the discordant ones move the difference. Resampling the n pairs with
//! replacement is the same as drawing the counts of the pair kinds from a multinomial with the observed
//! frequencies, and the difference only depends on two of those counts (`only_a`, `only_b`), so each
//! bootstrap round is two binomial draws instead of n: the interval costs the same for 50,000 samples
//! as for 10 million. The generator is seeded, so a report is reproducible.

use rand::SeedableRng;
use rand_distr::{Binomial, Distribution};
use serde::{Deserialize, Serialize};

/// Two-sided 95%: the standard normal quantile at 0.975.
pub const Z95: f64 = 1.959_963_984_540_054;

/// Bootstrap rounds: percentile endpoints move by well under 0.05 percentage points between seeds at
/// this count (their Monte Carlo error shrinks as 1/√rounds), and the rounds take microseconds.
pub const BOOTSTRAP_ROUNDS: usize = 10_000;

/// Fixed so that a report (and a rerender of it) gives the same interval every time.
const BOOTSTRAP_SEED: u64 = 0x7e5e_7e5e_2026_1207;

/// A confidence interval, in percent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
}

/// The 95% Wilson score interval of `k` successes in `n` trials, in percent; `None` when `n` is 0.
pub fn wilson(k: u64, n: u64) -> Option<Interval> {
    if n == 0 {
        return None;
    }
    let (k, n) = (k.min(n) as f64, n as f64);
    let p = k / n;
    let z2 = Z95 * Z95;
    let denom = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denom;
    let half = Z95 / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Some(Interval {
        low: 100.0 * (center - half).max(0.0),
        high: 100.0 * (center + half).min(1.0),
    })
}

/// The `q` quantile of sorted `x` with linear interpolation between order statistics (numpy's default
/// `percentile` method, so the reference computation can use it as is).
fn quantile(x: &[f64], q: f64) -> f64 {
    let h = (x.len() - 1) as f64 * q;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(x.len() - 1);
    x[lo] + (h - lo as f64) * (x[hi] - x[lo])
}

/// The 95% percentile-bootstrap interval of `acc(B) − acc(A)` in percentage points, over `n` paired
/// samples of which `only_a` were right in A only and `only_b` right in B only; `None` when `n` is 0.
pub fn paired_bootstrap_diff(only_a: u64, only_b: u64, n: u64) -> Option<Interval> {
    paired_bootstrap_diff_with(only_a, only_b, n, BOOTSTRAP_ROUNDS, BOOTSTRAP_SEED)
}

fn paired_bootstrap_diff_with(
    only_a: u64,
    only_b: u64,
    n: u64,
    rounds: usize,
    seed: u64,
) -> Option<Interval> {
    if n == 0 || only_a + only_b > n {
        return None;
    }
    let pa = only_a as f64 / n as f64;
    // B's share among the pairs that are not "A only", so that the two draws are one multinomial draw.
    let pb_rest = if only_a == n {
        0.0
    } else {
        only_b as f64 / (n - only_a) as f64
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let draw_a = Binomial::new(n, pa).ok()?;
    let mut diffs: Vec<f64> = (0..rounds)
        .map(|_| {
            let xa = draw_a.sample(&mut rng);
            let xb = match Binomial::new(n - xa, pb_rest) {
                Ok(d) => d.sample(&mut rng),
                Err(_) => 0,
            };
            100.0 * (xb as f64 - xa as f64) / n as f64
        })
        .collect();
    diffs.sort_by(f64::total_cmp);
    Some(Interval {
        low: quantile(&diffs, 0.025),
        high: quantile(&diffs, 0.975),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_scipy_at_fixed_points() {
        // scipy.stats.binomtest(k, n).proportion_ci(method="wilson"), times 100.
        let cases = [
            (8, 10, 49.016_247_153_664_175, 94.331_784_854_562_49),
            (0, 10, 0.0, 27.753_279_986_288_927),
            (10, 10, 72.246_720_013_711_08, 100.0),
            (40_000, 50_000, 79.647_092_178_193_02, 80.348_298_425_358_3),
        ];
        for (k, n, lo, hi) in cases {
            let i = wilson(k, n).unwrap();
            assert!((i.low - lo).abs() < 1e-9, "{k}/{n}: low {} vs {lo}", i.low);
            assert!(
                (i.high - hi).abs() < 1e-9,
                "{k}/{n}: high {} vs {hi}",
                i.high
            );
        }
        assert_eq!(wilson(0, 0), None);
    }

    #[test]
    fn bootstrap_is_reproducible_centered_and_as_wide_as_the_normal_approximation() {
        let (a, b, n) = (30, 18, 400);
        let i = paired_bootstrap_diff(a, b, n).unwrap();
        assert_eq!(Some(i), paired_bootstrap_diff(a, b, n), "seeded");
        // Mean difference −3 pp; its standard error sqrt((pa + pb − (pb − pa)²) / n).
        let (pa, pb) = (a as f64 / n as f64, b as f64 / n as f64);
        let se = 100.0 * ((pa + pb - (pb - pa).powi(2)) / n as f64).sqrt();
        let mid = 100.0 * (pb - pa);
        assert!(i.low < mid && mid < i.high, "{i:?}");
        assert!((i.low - (mid - Z95 * se)).abs() < 0.35, "{i:?} se {se}");
        assert!((i.high - (mid + Z95 * se)).abs() < 0.35, "{i:?} se {se}");
        // No discordant pairs: the difference is exactly 0 in every round.
        assert_eq!(
            paired_bootstrap_diff(0, 0, 100),
            Some(Interval {
                low: 0.0,
                high: 0.0
            })
        );
        assert_eq!(paired_bootstrap_diff(0, 0, 0), None);
        // Every pair discordant one way: the interval is the single point −100.
        let all_a = paired_bootstrap_diff(7, 0, 7).unwrap();
        assert_eq!((all_a.low, all_a.high), (-100.0, -100.0));
    }

    #[test]
    fn quantile_interpolates_like_numpy() {
        // numpy.percentile([1, 2, 3, 4], [2.5, 97.5]) = [1.075, 3.925]
        let x = [1.0, 2.0, 3.0, 4.0];
        assert!((quantile(&x, 0.025) - 1.075).abs() < 1e-12);
        assert!((quantile(&x, 0.975) - 3.925).abs() < 1e-12);
    }
}
