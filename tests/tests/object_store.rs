//! Runs against a real S3-compatible server (s3s-fs): evaluating a dataset from `s3://` gives the same
//! predictions as from local files, a run whose journal lives on S3 resumes after the coordinator
//! and its local disk are lost, and the workers' dataset cache fetches each object once for all the
//! cells of a sweep, yet fetches again when an object changes.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tresnet_tests::s3::{BUCKET, S3Server};
use tresnet_tests::{
    assert_same_report, bin, coordinator_run, coordinator_run_on, files_under, kill_run_midway,
    predictions, run_ok, sample_images, summary, tresnet_m_weights,
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

/// GETs of the dataset's objects under `s3://BUCKET/prefix` (listings are not object GETs).
fn object_gets(server: &S3Server, prefix: &str) -> Vec<String> {
    let objects = format!("/{BUCKET}/{prefix}/");
    server
        .requests("GET")
        .into_iter()
        .filter(|uri| uri.starts_with(&objects))
        .collect()
}

#[test]
fn a_sweep_fetches_each_object_once_and_refetches_a_changed_one() {
    let server = S3Server::start();
    upload_samples(&server, "photos/v1");
    let n = files_under(&sample_images()).len();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sweep.toml");
    std::fs::write(
        &file,
        format!(
            r#"
resolutions = [64]
crop_modes = ["center", "squish"]
[[model]]
name = "tresnet_m"
weights = [{{ path = {w:?}, label = "seeded" }}]
[[dataset]]
name = "s3"
data = "s3://{BUCKET}/photos/v1"
num_classes = 1000
[run]
local-workers = 2
worker-threads = 1
batch-size = 4
shard-size = 4
# A speculative copy of a shard may fetch its objects while the first copy is still fetching them;
# without it every object is fetched exactly once, which is what this test counts.
no-speculation = true
"#,
            w = tresnet_m_weights().display().to_string(),
        ),
    )
    .unwrap();
    let cache = dir.path().join("node-cache");
    let sweep = |out: &Path| {
        let mut cmd = std::process::Command::new(bin("tresnet-coordinator"));
        cmd.arg("sweep")
            .arg(&file)
            .arg("--out")
            .arg(out)
            .env("TRESNET_WORKER_BIN", bin("tresnet-worker"))
            // Both local workers share this node's cache folder.
            .env("TRESNET_DATASET_CACHE_DIR", &cache)
            .env_remove("TRESNET_TOKEN")
            .envs(server.env());
        run_ok(cmd);
    };
    let cells = [
        "tresnet_m-seeded-s3-64-center-fp32",
        "tresnet_m-seeded-s3-64-squish-fp32",
    ];
    let first = dir.path().join("first");
    sweep(&first);
    for c in cells {
        let s = summary(&first.join(c));
        assert_eq!(s["samples"].as_u64(), Some(n as u64), "{c}");
        assert_eq!(s["bad_samples"], 0, "{c}");
    }
    // Two cells over the same objects, but every object was fetched exactly once.
    let gets = object_gets(&server, "photos/v1");
    let mut distinct = gets.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), n, "{gets:?}");
    assert_eq!(gets.len(), n, "an object was fetched twice: {gets:?}");
    // The cached cells equal a run that fetched everything itself (own cache folder).
    let alone = dir.path().join("alone-squish");
    let mut cmd = coordinator_run_on(
        Path::new(&format!("s3://{BUCKET}/photos/v1")),
        "imagefolder",
        &alone,
        &[
            "--local-workers",
            "1",
            "--crop-mode",
            "squish",
            "--batch-size",
            "4",
            "--shard-size",
            "4",
        ],
    );
    cmd.envs(server.env());
    run_ok(cmd);
    assert_same_report(&alone, &first.join(cells[1]), "cell served from the cache");
    let before = object_gets(&server, "photos/v1").len();

    // One object changes (it now holds another, differently sized image): the dataset's fingerprint
    // changes, so nothing of the old version is served and the new bytes are what gets evaluated.
    let keys: Vec<String> = predictions(&first.join(cells[0])).into_keys().collect();
    let sizes: Vec<u64> = keys
        .iter()
        .map(|k| std::fs::metadata(sample_images().join(k)).unwrap().len())
        .collect();
    let (a, b) = (0..keys.len())
        .flat_map(|i| (0..keys.len()).map(move |j| (i, j)))
        .find(|&(i, j)| i != j && sizes[i] != sizes[j])
        .expect("two samples of different sizes");
    let loc = server.location(&format!("s3://{BUCKET}/photos/v1"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let bytes = std::fs::read(sample_images().join(&keys[b])).unwrap();
        loc.put(&loc.path_of(&keys[a]).unwrap(), bytes)
            .await
            .unwrap();
    });
    let second = dir.path().join("second");
    sweep(&second);
    assert_eq!(
        object_gets(&server, "photos/v1").len() - before,
        n,
        "the changed dataset was not fetched again (once)"
    );
    let p = predictions(&second.join(cells[0]));
    // Same bytes, same pixels: the same top-k (logits up to the batch they were computed in).
    assert_eq!(
        p[&keys[a]].1, p[&keys[b]].1,
        "{} was not re-fetched",
        keys[a]
    );
    for (x, y) in p[&keys[a]].2.iter().zip(&p[&keys[b]].2) {
        assert!((x - y).abs() < 1e-4, "{} was not re-fetched", keys[a]);
    }
    assert_ne!(
        predictions(&first.join(cells[0]))[&keys[a]].2,
        p[&keys[a]].2
    );
}
