//! The example CI gate (ops/ci-example/gate.sh) as CI runs it: with no environment it evaluates the
//! demo's signal-carrying checkpoint (top-1 83.3%) and passes against ops/ci-example/baseline-demo.json;
//! a degraded candidate of the same model (tests/tests/ci_gate_degrade.py swaps two classes of the
//! head) makes it exit 1 with the regression listed. So the gate can fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tresnet_tests::{bin, output_text};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `bash ops/ci-example/gate.sh` with this build's binaries, writing its run to `out`, plus `env`.
fn gate_sh(out: &Path, env: &[(&str, &Path)]) -> Output {
    let bin_dir = bin("tresnet-coordinator").parent().unwrap().to_path_buf();
    let mut c = Command::new("bash");
    c.arg(repo().join("ops/ci-example/gate.sh"))
        .env("BIN", &bin_dir)
        .env("OUT", out)
        .env("TRESNET_WORKER_BIN", bin("tresnet-worker"))
        // As [`tresnet_tests::coordinator_command`] sets it: the workers the script's runs start
        // take the fixed layout rule, whatever the environment exports.
        .env("TRESNET_MEASURE_LAYOUT", "false")
        .env_remove("TRESNET_TOKEN")
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

#[test]
fn the_example_gate_passes_the_demo_and_fails_a_degraded_candidate() {
    let demo = PathBuf::from(
        std::env::var_os("TRESNET_DEMO")
            .expect("TRESNET_DEMO is not set: run the tests through ops/test.sh"),
    );
    let tmp = tempfile::tempdir().unwrap();

    let o = gate_sh(&tmp.path().join("demo"), &[]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    // It gated real numbers, not an empty baseline.
    let s = tresnet_tests::summary(&tmp.path().join("demo"));
    assert!(s["top1"].as_f64().unwrap() > 80.0, "{s}");

    let degraded = tmp.path().join("degraded.pth");
    let py = Command::new("python3")
        .arg(repo().join("tests/tests/ci_gate_degrade.py"))
        .arg(demo.join("weights/miil.pth"))
        .arg(&degraded)
        .output()
        .unwrap();
    assert!(py.status.success(), "{}", output_text(&py));
    let baseline = repo().join("ops/ci-example/baseline-demo.json");
    let o = gate_sh(
        &tmp.path().join("degraded"),
        &[
            ("WEIGHTS", &degraded),
            ("DATA", &demo.join("val")),
            ("BASELINE", &baseline),
        ],
    );
    let t = output_text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("top-1") && t.contains("astronaut"), "{t}");
}
