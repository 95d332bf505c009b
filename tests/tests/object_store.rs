//! Runs against a real S3-compatible server (s3s-fs): the workers' dataset cache fetches each object
//! once for all the cells of a sweep, yet fetches again when an object changes. (Evaluating from
//! `s3://`, journals on it and its error messages are cells of the table in `backends.rs`.)

use std::path::Path;

use tresnet_tests::s3::{BUCKET, S3Server};
use tresnet_tests::{
    SweepToml, assert_same_report, coordinator_command, coordinator_run_on, files_under,
    predictions, run_ok, sample_images, summary,
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
    // No speculation: a speculative copy of a shard may fetch its objects while the first copy is
    // still fetching them; without it every object is fetched exactly once, which is what this test
    // counts.
    let file = SweepToml::new("s3", &format!("s3://{BUCKET}/photos/v1"))
        .no_out()
        .crop_modes(&["center", "squish"])
        .run("local-workers", "2")
        .run("batch-size", "4")
        .run("shard-size", "4")
        .run("no-speculation", "true")
        .write(dir.path());
    let cache = dir.path().join("node-cache");
    let sweep = |out: &Path| {
        let mut cmd = coordinator_command("sweep");
        cmd.arg(&file)
            .arg("--out")
            .arg(out)
            // Both local workers share this node's cache folder.
            .env("TRESNET_DATASET_CACHE_DIR", &cache)
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
