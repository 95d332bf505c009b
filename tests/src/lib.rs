//! Helpers for the cross-process tests: locating the built binaries and generated fixtures, running
//! the coordinator, and reading its run directory.

pub mod s3;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use polars::prelude::*;

/// A binary of this workspace, built next to the test executable (`cargo test --workspace
/// --all-targets`, as ops/test.sh runs it, builds them all), or in `TRESNET_BIN_DIR` when set (to test
/// release builds, or binaries copied away from a target directory that other checkouts share).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = match std::env::var_os("TRESNET_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => exe
            .parent()
            .and_then(Path::parent)
            .expect("target directory")
            .to_path_buf(),
    };
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is not built; run the tests through ops/test.sh (cargo test --workspace --all-targets)",
        p.display()
    );
    p
}

fn env_dir(var: &str) -> PathBuf {
    let dir = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!("{var} is not set: run the tests through ops/test.sh, which generates the fixtures")
    });
    assert!(
        dir.join("COMPLETE").exists(),
        "{} is incomplete; rerun ops/test.sh",
        dir.display()
    );
    dir
}

/// Seeded model fixtures (ops/reference/gen_model_fixtures.py).
pub fn model_fixtures() -> PathBuf {
    env_dir("TRESNET_FIXTURES")
}

/// The ImageFolder of real photos (ops/reference/make_sample_dataset.py).
pub fn sample_images() -> PathBuf {
    env_dir("TRESNET_SAMPLE_DATA").join("images")
}

pub fn tresnet_m_weights() -> PathBuf {
    model_fixtures().join("tresnet_m_224").join("timm.pth")
}

/// `tresnet-coordinator run` with the sample dataset and seeded TResNet-M at 64 px, plus `extra` args.
pub fn coordinator_run(out: &Path, extra: &[&str]) -> Command {
    coordinator_run_on(&sample_images(), "imagefolder", out, extra)
}

/// Like [`coordinator_run`] on another dataset location and format.
pub fn coordinator_run_on(data: &Path, format: &str, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(bin("tresnet-coordinator"));
    c.arg("run")
        .args(["--model", "tresnet_m", "--weights"])
        .arg(tresnet_m_weights())
        .arg("--data")
        .arg(data)
        .args([
            "--format",
            format,
            "--resolution",
            "64",
            "--worker-threads",
            "1",
        ])
        // The seeded model has a 1000-class head; the sample folders map to its first classes.
        .args(["--num-classes", "1000"])
        .arg("--out")
        .arg(out)
        .args(extra)
        .env("TRESNET_WORKER_BIN", bin("tresnet-worker"))
        .env_remove("TRESNET_TOKEN")
        .stdin(Stdio::null());
    c
}

/// Starts a coordinator with `--listen 127.0.0.1:0` and returns it with the address it bound.
pub fn spawn_listening(mut cmd: Command) -> (Child, String) {
    cmd.args(["--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().expect("start coordinator");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[coordinator] {line}");
            if let Some(rest) = line.strip_prefix("coordinator listening on ") {
                let addr = rest
                    .split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("coordinator did not report its address");
    (child, addr)
}

pub fn summary(run: &Path) -> serde_json::Value {
    let p = run.join("summary.json");
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

/// Per sample key: index, top-k classes and top-k logits from `predictions.parquet`.
pub type Predictions = BTreeMap<String, (u64, Vec<u32>, Vec<f32>)>;

pub fn predictions(run: &Path) -> Predictions {
    let f = std::fs::File::open(run.join("predictions.parquet")).unwrap();
    let df = ParquetReader::new(f).finish().unwrap();
    let index = df.column("index").unwrap().u64().unwrap().clone();
    let key = df.column("key").unwrap().str().unwrap().clone();
    let ti = df.column("topk_indices").unwrap().list().unwrap().clone();
    let tl = df.column("topk_logits").unwrap().list().unwrap().clone();
    let mut out = BTreeMap::new();
    for i in 0..df.height() {
        let classes: Vec<u32> = ti
            .get_as_series(i)
            .unwrap()
            .u32()
            .unwrap()
            .into_no_null_iter()
            .collect();
        let logits: Vec<f32> = tl
            .get_as_series(i)
            .unwrap()
            .f32()
            .unwrap()
            .into_no_null_iter()
            .collect();
        out.insert(
            key.get(i).unwrap().to_string(),
            (index.get(i).unwrap(), classes, logits),
        );
    }
    out
}

/// Everything in the report that must not depend on how the run got there (kills, restarts).
pub fn assert_same_report(clean: &Path, other: &Path, what: &str) {
    let (a, b) = (summary(clean), summary(other));
    for field in [
        "samples",
        "correct1",
        "correct5",
        "bad_samples",
        "failed_samples",
        "top1",
        "top5",
        "nll",
        "ece",
    ] {
        assert_eq!(a[field], b[field], "{what}: {field} differs");
    }
    assert_eq!(
        predictions(clean),
        predictions(other),
        "{what}: predictions differ"
    );
}

pub fn run_ok(mut cmd: Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "coordinator failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn children_of(pid: u32) -> Vec<u32> {
    let out = Command::new("pgrep")
        .args(["-P", &pid.to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}
