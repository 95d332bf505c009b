//! `tresnet-coordinator compare` on two real runs whose predictions differ: the paired counts and
//! McNemar p-values equal statsmodels' `mcnemar` (tests/tests/mcnemar_reference.py) on the two
//! predictions.parquet files, and `mcnemar_p` equals it in every mode; runs over different datasets or
//! samples are refused. The paired bootstrap interval of the difference agrees with resampling the
//! pairs themselves in numpy, and the Wilson interval with scipy (tests/tests/stats_reference.py).

mod paired_runs;

use std::path::Path;
use std::process::{Command, Output};

use paired_runs::{paired_runs, predictions_json};
use polars::prelude::*;
use tresnet_tests::{bin, summary};

fn compare(args: &[&Path], extra: &[&str]) -> Output {
    Command::new(bin("tresnet-coordinator"))
        .arg("compare")
        .args(args)
        .args(extra)
        .output()
        .unwrap()
}

fn close(a: &serde_json::Value, b: &serde_json::Value, what: &str) {
    let (x, y) = (a.as_f64().unwrap(), b.as_f64().unwrap());
    assert!(
        (x - y).abs() <= 1e-12 * x.abs().max(1e-300) + 1e-15,
        "{what}: {x} vs {y}"
    );
}

/// Runs the reference script `tests/NAME` with `args` and reads the JSON it prints (statsmodels comes
/// from ops/stats_tools.sh, numpy and scipy from the venv; ops/test.sh sources both).
fn reference(name: &str, args: &[&std::ffi::OsStr]) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(name);
    let py = Command::new("python3")
        .arg(&script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&py.stderr)
    );
    serde_json::from_slice(&py.stdout).unwrap()
}

/// tests/tests/mcnemar_reference.py: statsmodels' `mcnemar` on `args`.
fn statsmodels(args: &[&std::ffi::OsStr]) -> serde_json::Value {
    reference("mcnemar_reference.py", args)
}

#[test]
fn bootstrap_and_wilson_intervals_match_numpy_and_scipy() {
    // (only_a, only_b, both, neither)
    let cases = [
        (30u64, 18u64, 300u64, 52u64),
        (5, 40, 700, 255),
        (120, 80, 1500, 300),
        (0, 3, 40, 7),
    ];
    let json: Vec<serde_json::Value> = cases
        .iter()
        .map(|&(a, b, both, neither)| {
            serde_json::json!({"only_a": a, "only_b": b, "both": both, "neither": neither})
        })
        .collect();
    let cases_json = serde_json::Value::Array(json).to_string();
    let r = reference("stats_reference.py", &[cases_json.as_ref()]);
    let r = r.as_array().unwrap();
    for (&(a, b, both, neither), x) in cases.iter().zip(r) {
        let n = a + b + both + neither;
        let ours = tresnet_coordinator::stats::paired_bootstrap_diff(a, b, n).unwrap();
        // Both sides are Monte Carlo: allow a fraction of the difference's standard error and one
        // step of the discrete distribution (100/n pp). An unpaired bootstrap would be ~1.6x as wide
        // here and fail this.
        let (pa, pb) = (a as f64 / n as f64, b as f64 / n as f64);
        let se = 100.0 * ((pa + pb - (pb - pa).powi(2)) / n as f64).sqrt();
        let tol = 0.15 * se + 100.0 / n as f64;
        for (got, want) in [(ours.low, &x["low"]), (ours.high, &x["high"])] {
            let want = want.as_f64().unwrap();
            assert!(
                (got - want).abs() <= tol,
                "{a},{b},{n}: {ours:?} vs {x} (tol {tol})"
            );
        }
        let w = tresnet_coordinator::stats::wilson(a + both, n).unwrap();
        assert!(
            (w.low - x["wilson_low"].as_f64().unwrap()).abs() < 1e-9,
            "{w:?} vs {x}"
        );
        assert!(
            (w.high - x["wilson_high"].as_f64().unwrap()).abs() < 1e-9,
            "{w:?} vs {x}"
        );
    }
}

/// `mcnemar_p` against statsmodels' `mcnemar` itself in every mode, on discordant counts that reach
/// each branch: none, one-sided, b == c below and above the cut-off, either side of n = 25, large n.
/// Below 25 ours is statsmodels' exact test; from 25 its chi-square with continuity correction (and
/// not the uncorrected one, which the reference also computes to show the two apart).
#[test]
fn mcnemar_p_equals_statsmodels_in_every_mode() {
    use tresnet_coordinator::compare::{EXACT_BELOW, McNemarMethod, mcnemar_p};
    let pairs: [(u64, u64); 17] = [
        (0, 0),
        (1, 0),
        (0, 1),
        (3, 3),
        (5, 12),
        (12, 12),
        (24, 0),
        (12, 13),
        (13, 12),
        (13, 13),
        (40, 40),
        (30, 70),
        (70, 30),
        (26, 25),
        (100, 100),
        (500, 430),
        (1000, 1),
    ];
    let args: Vec<std::ffi::OsString> = std::iter::once("counts".into())
        .chain(pairs.iter().map(|(b, c)| format!("{b}:{c}").into()))
        .collect();
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let reference = statsmodels(&args);
    for ((b, c), r) in pairs.iter().zip(reference.as_array().unwrap()) {
        let what = format!("b={b} c={c}");
        let (method, stat, p) = mcnemar_p(*b, *c);
        if b + c < EXACT_BELOW {
            assert_eq!(method, McNemarMethod::ExactBinomial, "{what}");
            close(&p.into(), &r["exact_p"], &format!("{what}: exact p"));
            continue;
        }
        assert_eq!(method, McNemarMethod::ChiSquareCorrected, "{what}");
        let stat = stat.unwrap();
        close(&stat.into(), &r["chi2_stat"], &format!("{what}: statistic"));
        close(&p.into(), &r["chi2_p"], &format!("{what}: p"));
        let uncorrected = r["chi2_uncorrected_stat"].as_f64().unwrap();
        assert!(
            (stat - uncorrected).abs() > 1e-9,
            "{what}: the statistic {stat} is the uncorrected one"
        );
    }
}

#[test]
fn compare_matches_statsmodels_mcnemar_and_refuses_unpaired_runs() {
    let runs = paired_runs();
    let (a, b) = (runs.a.as_path(), runs.b.as_path());

    let o = compare(&[a, b], &["--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();

    let (ja, jb) = (
        runs.dir.path().join("a.json"),
        runs.dir.path().join("b.json"),
    );
    predictions_json(a, &ja);
    predictions_json(b, &jb);
    let k5 = c["top5_k"].as_u64().unwrap();
    let k5 = k5.to_string();
    let r = statsmodels(&[ja.as_os_str(), jb.as_os_str(), k5.as_ref()]);

    for (ours, theirs) in [("mcnemar_top1", "top1"), ("mcnemar_top5", "top5")] {
        let (m, x) = (&c[ours], &r[theirs]);
        for f in ["both", "only_a", "only_b", "neither"] {
            assert_eq!(m[f], x[f], "{ours}.{f}");
        }
        let n = x["only_a"].as_u64().unwrap() + x["only_b"].as_u64().unwrap();
        if n < 25 {
            assert_eq!(m["method"], "exact_binomial");
            close(&m["p_value"], &x["exact_p"], ours);
        } else {
            assert_eq!(m["method"], "chi_square_corrected");
            close(&m["statistic"], &x["chi2_stat"], ours);
            close(&m["p_value"], &x["chi2_p"], ours);
        }
    }
    // The bootstrap interval brackets the observed difference.
    for (ours, delta) in [("mcnemar_top1", "top1"), ("mcnemar_top5", "top5")] {
        let (ci, d) = (&c[ours]["diff_ci95"], c[delta]["delta"].as_f64().unwrap());
        let (lo, hi) = (ci["low"].as_f64().unwrap(), ci["high"].as_f64().unwrap());
        assert!(lo <= d + 1e-9 && d <= hi + 1e-9, "{ours}: {d} not in {ci}");
    }
    // Discordant pairs both ways, so the test is not the trivial p = 1.
    let m1 = &c["mcnemar_top1"];
    assert!(m1["only_a"].as_u64().unwrap() > m1["only_b"].as_u64().unwrap());
    assert!(m1["only_b"].as_u64().unwrap() > 0, "{m1}");
    assert!(m1["p_value"].as_f64().unwrap() < 1.0);

    // Overall accuracies are the runs' own summaries and the reference's.
    close(&c["top1"]["a"], &summary(a)["top1"], "top1 a");
    close(&c["top1"]["b"], &summary(b)["top1"], "top1 b");
    close(&c["top1"]["a"], &r["top1"]["acc_a"], "top1 a (python)");
    close(&c["top5"]["b"], &r["top5"]["acc_b"], "top5 b (python)");
    // Classes come sorted by top-1 delta, largest drop first.
    let deltas: Vec<f64> = c["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["top1"]["delta"].as_f64().unwrap())
        .collect();
    assert!(deltas.windows(2).all(|w| w[0] <= w[1]), "{deltas:?}");
    assert!(deltas[0] < 0.0);

    // The readable form carries the same counts and names the test.
    let o = compare(&[a, b], &[]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    let line = text.lines().find(|l| l.starts_with("top-1")).expect(&text);
    assert!(line.contains("exact binomial"), "{line}");
    assert!(
        line.split_whitespace()
            .any(|w| w.parse::<u64>().ok() == m1["only_a"].as_u64()),
        "{line}"
    );
    assert!(
        text.contains("per class, largest top-1 drop first"),
        "{text}"
    );

    // Another dataset: refused, naming both.
    let o = compare(&[&runs.folder_run, a], &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let manifest_dir = runs.dir.path().join("data");
    for named in [manifest_dir, tresnet_tests::sample_images()] {
        let named = named.display().to_string();
        assert!(
            err.contains("different datasets") && err.contains(&named),
            "{err}"
        );
    }

    // Same dataset but a sample missing from one run: refused, naming the sample.
    let cut = runs.dir.path().join("cut");
    std::fs::create_dir_all(&cut).unwrap();
    for f in ["summary.json", "per_class.csv"] {
        std::fs::copy(b.join(f), cut.join(f)).unwrap();
    }
    let df = ParquetReader::new(std::fs::File::open(b.join("predictions.parquet")).unwrap())
        .finish()
        .unwrap();
    let dropped = df
        .column("key")
        .unwrap()
        .str()
        .unwrap()
        .get(0)
        .unwrap()
        .to_string();
    let mut df = df.slice(1, df.height() - 1);
    ParquetWriter::new(std::fs::File::create(cut.join("predictions.parquet")).unwrap())
        .finish(&mut df)
        .unwrap();
    let o = compare(&[a, &cut], &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("did not evaluate the same samples") && err.contains(&dropped),
        "{err}"
    );
}
