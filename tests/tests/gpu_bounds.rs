//! ops/gpu/bounds.py, the bound check at the end of ops/gpu/check.sh, on canned figures (no GPU needed):
//! the figures docs/gpu.md recorded pass with each printed beside its bound, and each kind of figure
//! that misses its bound (parity, agreement, throughput ratio) or is missing makes it exit 1 naming it.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

/// The figures of the H200 run in docs/gpu.md (second run), in the files check.sh writes.
fn recorded() -> Vec<(&'static str, Value)> {
    let logits = |sigma: f64, argmax: f64| {
        json!({"max_abs_diff": sigma * 0.91, "mean_abs_diff": 0.001,
               "max_abs_diff_over_sigma": sigma, "argmax_agreement": argmax})
    };
    let bench = |ips: f64| json!({"images_per_second": ips});
    vec![
        (
            "parity",
            json!({"sigma": 0.91, "precisions": {
                "fp32": {"ours_vs_timm_cuda": logits(0.034, 1.0)},
                "fp16": {"ours_vs_timm_cuda": logits(0.045, 1.0)},
                "bf16": {"ours_vs_timm_cuda": logits(0.44, 1.0)},
            }}),
        ),
        (
            "dataset",
            json!({"samples": 24, "top1_agreement_predictions_vs_timm": 1.0,
                   "logits": logits(0.015, 1.0)}),
        ),
        ("bench-ours-nofold-fp16-224", bench(13697.0)),
        ("bench-ours-fp16-224", bench(12904.0)),
        ("bench-ours-bf16-224", bench(12903.0)),
        ("bench-ours-fp32-224", bench(9149.0)),
        ("bench-ours-fp16-448", bench(3100.0)),
        ("bench-timm-fp16-224", bench(13789.0)),
        ("bench-timm-bf16-224", bench(14361.0)),
        ("bench-timm-fp32-224", bench(9198.0)),
        ("bench-timm-fp16-448", bench(3546.0)),
    ]
}

/// Writes `figures` into a fresh folder, runs bounds.py on it: (exit code, stdout).
fn check(figures: &[(&str, Value)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    for (name, v) in figures {
        std::fs::write(dir.path().join(format!("{name}.json")), v.to_string()).unwrap();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/gpu/bounds.py");
    let o = Command::new("python3")
        .arg(script)
        .arg(dir.path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.code().unwrap(), out)
}

/// The recorded figures with `edit` applied to the one named `name`.
fn with(name: &str, edit: impl FnOnce(&mut Value)) -> Vec<(&'static str, Value)> {
    let mut f = recorded();
    edit(&mut f.iter_mut().find(|(n, _)| *n == name).unwrap().1);
    f
}

fn assert_fails(figures: &[(&str, Value)], needles: &[&str]) {
    let (code, out) = check(figures);
    assert_eq!(code, 1, "{out}");
    let fail: Vec<&str> = out.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(fail.len(), 1, "{out}");
    for n in needles {
        assert!(fail[0].contains(n), "{n:?} not in {:?}", fail[0]);
    }
}

#[test]
fn recorded_figures_pass_each_beside_its_bound() {
    let (code, out) = check(&recorded());
    assert_eq!(code, 0, "{out}");
    let ok = out.lines().filter(|l| l.starts_with("ok")).count();
    // 3 precisions x 2 parity figures, 2 end-to-end figures, 5 throughput ratios.
    assert_eq!(ok, 13, "{out}");
    assert!(out.contains("0.045 (bound <= 0.1)"), "{out}");
}

#[test]
fn parity_past_its_bound_fails() {
    let f = with("parity", |v| {
        v["precisions"]["fp16"]["ours_vs_timm_cuda"]["max_abs_diff_over_sigma"] = json!(0.5);
    });
    assert_fails(&f, &["parity fp16", "0.5", "bound <= 0.1"]);
}

#[test]
fn agreement_below_its_bound_fails() {
    let f = with("dataset", |v| {
        v["top1_agreement_predictions_vs_timm"] = json!(23.0 / 24.0);
    });
    assert_fails(&f, &["top-1 agreement", "0.9583", "bound >= 1"]);
    let f = with("parity", |v| {
        v["precisions"]["fp32"]["ours_vs_timm_cuda"]["argmax_agreement"] = json!(0.875);
    });
    assert_fails(&f, &["parity fp32: argmax", "0.875"]);
}

#[test]
fn throughput_ratio_below_its_bound_fails() {
    let f = with("bench-ours-fp32-224", |v| {
        v["images_per_second"] = json!(8000.0);
    });
    assert_fails(&f, &["throughput fp32-224", "0.8698", "bound >= 0.95"]);
}

#[test]
fn a_missing_figure_fails_naming_it() {
    let f: Vec<_> = recorded()
        .into_iter()
        .filter(|(n, _)| *n != "bench-timm-bf16-224")
        .collect();
    assert_fails(&f, &["bench-timm-bf16-224"]);
}
