//! Runs against a real S3-compatible server (s3s-fs): evaluating a dataset from `s3://` gives the same
//! predictions as from local files, and a run whose journal lives on S3 resumes after the coordinator
//! and its local disk are lost.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tresnet_tests::s3::{BUCKET, S3Server};
use tresnet_tests::{
    assert_same_report, coordinator_run, coordinator_run_on, files_under, kill_run_midway, run_ok,
    sample_images,
};

/// Uploads the sample ImageFolder to `s3://BUCKET/prefix` through the S3 API (not by copying into the
/// server's folder), so the objects carry whatever metadata a real upload would.
fn upload_samples(server: &S3Server, prefix: &str) {
    let local = sample_images();
    let dest = server.location(&format!("s3://{BUCKET}/{prefix}"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for f in files_under(&local) {
            let rel = f.strip_prefix(&local).unwrap().to_str().unwrap();
            dest.put(&dest.path_of(rel).unwrap(), std::fs::read(&f).unwrap())
                .await
                .unwrap();
        }
    });
}

/// Journal records (`shard-XXXXXXXX.pb`) that s3s-fs holds under `s3://BUCKET/prefix`, with their bytes.
fn s3_records(server: &S3Server, prefix: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = server.root().join(BUCKET).join(prefix);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = rd
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            n.starts_with("shard-") && n.ends_with(".pb")
        })
        .map(|e| (e.path(), std::fs::read(e.path()).unwrap()))
        .collect();
    out.sort();
    out
}

#[test]
fn evaluating_from_s3_gives_the_same_predictions_as_from_files() {
    let server = S3Server::start();
    upload_samples(&server, "photos/v1");
    let dir = tempfile::tempdir().unwrap();
    let from_files = dir.path().join("files");
    run_ok(coordinator_run(&from_files, &["--local-workers", "1"]));
    let from_s3 = dir.path().join("s3");
    let data = format!("s3://{BUCKET}/photos/v1");
    let mut cmd = coordinator_run_on(
        Path::new(&data),
        "imagefolder",
        &from_s3,
        &["--local-workers", "1"],
    );
    cmd.envs(server.env());
    run_ok(cmd);
    assert_same_report(&from_files, &from_s3, "s3:// against file://");
    let job: serde_json::Value =
        serde_json::from_slice(&std::fs::read(from_s3.join("job.json")).unwrap()).unwrap();
    assert_eq!(job["data_url"], data.as_str());
}

#[test]
fn a_run_journaled_on_s3_resumes_after_losing_the_coordinator_and_its_disk() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let clean = dir.path().join("clean");
    let shape = [
        "--local-workers",
        "2",
        "--shard-size",
        "2",
        "--batch-size",
        "2",
    ];
    run_ok(coordinator_run(&clean, &shape));

    let prefix = "runs/r1/journal";
    let journal = format!("s3://{BUCKET}/{prefix}");
    let first = dir.path().join("first");
    let mut cmd = coordinator_run(&first, &shape);
    cmd.args(["--journal", &journal])
        .arg("--worker-arg=--debug-batch-delay-ms=150")
        .envs(server.env())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    kill_run_midway(&mut child, 3, || s3_records(&server, prefix).len());
    let before = s3_records(&server, prefix);
    assert!(before.len() >= 3);
    // The coordinator's disk is gone: a new run directory, the same journal on S3.
    std::fs::remove_dir_all(&first).unwrap();
    let second = dir.path().join("second");
    let mut cmd = coordinator_run(&second, &shape);
    cmd.args(["--journal", &journal]).envs(server.env());
    run_ok(cmd);
    // Records written before the kill were kept, not recomputed.
    let after = s3_records(&server, prefix);
    for (path, bytes) in &before {
        let now = after.iter().find(|(p, _)| p == path).unwrap();
        assert_eq!(&now.1, bytes, "{} was rewritten", path.display());
    }
    assert_same_report(&clean, &second, "resumed from an S3 journal");
    // Another job cannot adopt this journal, even from a fresh run directory.
    let mut cmd = coordinator_run(&dir.path().join("third"), &["--local-workers", "1"]);
    cmd.args(["--journal", &journal, "--top-k", "3"])
        .envs(server.env());
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("different job") && err.contains("top_k") && err.contains(&journal),
        "{err}"
    );
}

#[test]
fn a_journal_in_a_missing_bucket_is_a_clear_error() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = coordinator_run(&dir.path().join("run"), &["--local-workers", "1"]);
    cmd.args(["--journal", "s3://no-such-bucket/j"])
        .envs(server.env());
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-bucket"), "{err}");
}
