//! The worker's test hooks (feature `test-hooks`, worker/src/test_hooks.rs) are in the binaries the
//! tests run and in no production build: feature unification puts them into `cargo build --workspace
//! --bins` (what ops/test.sh builds), while the packages the Dockerfile builds leave them out; and the
//! hook is no command-line flag of any build.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tresnet_tests::{BATCH_DELAY_ENV, Watched, bin};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The features cargo resolves for tresnet-worker when it builds `selection` (no compiling).
fn worker_features(selection: &[&str]) -> Vec<String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root())
        .args([
            "tree",
            "--offline",
            "--locked",
            "-e",
            "features",
            "--prefix",
            "none",
        ])
        .args(["-i", "tresnet-worker"])
        .args(selection)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo tree {selection:?} failed");
    let mut features: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("tresnet-worker feature \""))
        .filter_map(|l| l.split('"').next())
        .map(str::to_string)
        .collect();
    features.sort();
    features.dedup();
    features
}

/// The `-p` packages of the Dockerfile's `cargo build`.
fn dockerfile_packages() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("ops/docker/Dockerfile")).unwrap();
    let build = text
        .split("cargo build")
        .nth(1)
        .expect("a cargo build in the Dockerfile");
    let command: String = build
        .lines()
        .take_while(|l| !l.trim_start().starts_with("&&"))
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        !command.contains("--workspace") && !command.contains("--all"),
        "the Dockerfile builds the whole workspace, test hooks included: {command}"
    );
    let words: Vec<&str> = command.split_whitespace().collect();
    let packages: Vec<String> = words
        .windows(2)
        .filter(|w| w[0] == "-p" || w[0] == "--package")
        .map(|w| w[1].to_string())
        .collect();
    assert!(
        packages.contains(&"tresnet-worker".to_string()),
        "{command}"
    );
    packages
}

#[test]
fn the_workspace_build_has_the_hooks_and_the_production_builds_do_not() {
    assert!(
        worker_features(&["--workspace"]).contains(&"test-hooks".to_string()),
        "cargo build --workspace --bins (ops/test.sh) would build workers without the test hooks"
    );
    let mut docker: Vec<String> = Vec::new();
    for p in dockerfile_packages() {
        docker.extend(["-p".to_string(), p]);
    }
    let docker: Vec<&str> = docker.iter().map(String::as_str).collect();
    for selection in [&["-p", "tresnet-worker"][..], &docker] {
        let features = worker_features(selection);
        assert!(
            features.contains(&"torch".to_string()),
            "{selection:?}: {features:?}"
        );
        assert!(
            !features.contains(&"test-hooks".to_string()),
            "building {selection:?} turns the test hooks on: {features:?}"
        );
    }
}

#[test]
fn the_batch_delay_is_no_flag_and_its_variable_is_announced() {
    let out = Command::new(bin("tresnet-worker"))
        .args(["--debug-batch-delay-ms", "5", "--check-args"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the old flag is still accepted");
    let help = Command::new(bin("tresnet-worker"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        !help.contains("batch-delay") && !help.contains(BATCH_DELAY_ENV),
        "{help}"
    );

    // Nothing listens on the discard port: the worker gives up at once, after the warning.
    let mut cmd = Command::new(bin("tresnet-worker"));
    cmd.args(["--coordinator", "http://127.0.0.1:9", "--threads", "1"])
        .args(["--coordinator-patience-ms", "0", "--no-cache"])
        .env(BATCH_DELAY_ENV, "150")
        .env_remove("TRESNET_TOKEN")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    let mut w = Watched::spawn(cmd, "hooked");
    let status = w.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "{status}");
    let err = w.stderr_at_exit();
    assert!(
        err.contains(&format!("test hook {BATCH_DELAY_ENV}")) && err.contains("150"),
        "{err}"
    );
}
