//! A run that evaluated nothing (every image corrupt) with the real binaries: it writes its report but
//! exits non-zero saying "no samples evaluated", its metrics are null in summary.json (never 0.0), the
//! HTML report and the console say so (also when `report` re-renders it), and `gate` refuses it as a
//! baseline (as a candidate: `coordinator/src/gate.rs`).

use std::process::Command;

use std::path::{Path, PathBuf};

use tresnet_tests::{SweepToml, bin, coordinator_command, coordinator_run_on, summary};

const CORRUPT: [&str; 3] = ["cat/a.jpg", "cat/b.jpg", "dog/c.jpg"];

/// An ImageFolder under `dir` whose every file is a corrupt JPEG.
fn corrupt_images(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    for f in CORRUPT {
        let p = data.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"\xff\xd8\xff\xe0 not really a jpeg").unwrap();
    }
    data
}

#[test]
fn a_run_of_only_corrupt_images_fails_with_null_metrics_and_no_gate() {
    let dir = tempfile::tempdir().unwrap();
    let data = corrupt_images(dir.path());
    let out = dir.path().join("run");
    let o = coordinator_run_on(&data, "imagefolder", &out, &["--local-workers", "1"])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(
        !o.status.success(),
        "exit 0 with nothing evaluated\n{stderr}"
    );
    assert!(
        stderr.contains("no samples evaluated") && stdout.contains("no samples evaluated"),
        "the console must say so\nstdout: {stdout}\nstderr: {stderr}"
    );

    let s = summary(&out);
    assert_eq!(
        (s["samples"].as_u64(), s["bad_samples"].as_u64()),
        (Some(0), Some(3))
    );
    for metric in ["top1", "top5", "nll", "ece"] {
        assert!(
            s[metric].is_null(),
            "{metric} must be null, not {}",
            s[metric]
        );
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        html.contains("id=\"nothing-evaluated\""),
        "report.html must say so"
    );
    assert!(
        !html.contains(">0.000%<"),
        "report.html shows a 0% accuracy"
    );

    // `report` re-renders it the same way: null metrics, said on the console.
    std::fs::remove_file(out.join("summary.json")).unwrap();
    let o = Command::new(bin("tresnet-coordinator"))
        .arg("report")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("no samples evaluated"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let again = summary(&out);
    for metric in ["top1", "top5", "nll", "ece"] {
        assert!(
            again[metric].is_null(),
            "rerendered {metric}: {}",
            again[metric]
        );
    }

    let gate = |args: &[&str]| {
        let o = Command::new(bin("tresnet-coordinator"))
            .arg("gate")
            .args(args)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let run = out.to_str().unwrap();
    let base = dir.path().join("baseline.json");
    let (code, err) = gate(&[
        "--run",
        run,
        "--baseline",
        base.to_str().unwrap(),
        "--write-baseline",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("evaluated no samples") && err.contains("cannot be a baseline"),
        "{err}"
    );
    assert!(!base.exists(), "no baseline written");
}

/// A sweep cell that evaluated nothing is a failed cell, and the sweep exits non-zero.
#[test]
fn a_sweep_cell_that_evaluated_nothing_fails() {
    let dir = tempfile::tempdir().unwrap();
    let data = corrupt_images(dir.path());
    let file = SweepToml::new("corrupt", &data.display().to_string()).write(dir.path());
    let o = coordinator_command("sweep").arg(&file).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "sweep exited 0\n{stderr}");
    assert!(
        stderr.contains("FAILED: no samples evaluated") && stderr.contains("1 of 1 cells failed"),
        "{stderr}"
    );
}
