//! Helpers for the cross-process tests: locating the built binaries and generated fixtures, running
//! the coordinator, and reading its run directory.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A binary of this workspace, built next to the test executable (`cargo test --workspace
/// --all-targets`, as ops/test.sh runs it, builds them all).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
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
