//! What makes a sample bad, with the real binaries: `--on-bad-sample fail` stops the run before the
//! shard holding the bad sample is journaled, so a resume under the same policy fails the same way;
//! a journal written under `skip` that holds a bad sample is refused by a `fail` resume; and under
//! `skip` the bad sample is counted once, with its reason, and never stops the run.

use std::path::Path;
use std::process::Output;

use tresnet_tests::{coordinator_run_on, copy_dir, sample_dataset_size, sample_images, summary};

const BROKEN: &str = "chelsea/chelsea_zz_broken.jpg";

/// Shards of 4 so that the broken image (index 8 in listing order) sits in a middle shard, with shards
/// on either side that complete and are journaled.
fn run(data: &Path, out: &Path, policy: &str) -> Output {
    coordinator_run_on(
        data,
        "imagefolder",
        out,
        &[
            "--shard-size",
            "4",
            "--local-workers",
            "1",
            "--on-bad-sample",
            policy,
        ],
    )
    .output()
    .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn fail_policy_holds_across_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    copy_dir(&sample_images(), &data);
    std::fs::write(data.join(BROKEN), b"\xff\xd8\xff\xe0 not really a jpeg").unwrap();
    let out = dir.path().join("run");

    for attempt in ["first run", "resume under the same policy"] {
        let o = run(&data, &out, "fail");
        let err = stderr(&o);
        assert!(
            !o.status.success(),
            "{attempt}: exit 0 despite a bad sample\n{err}"
        );
        assert!(
            err.contains(&format!("bad sample {BROKEN}")) && err.contains("--on-bad-sample=fail"),
            "{attempt}: the error must name the sample and the policy\n{err}"
        );
        assert!(
            !out.join("summary.json").exists(),
            "{attempt}: no report for a stopped run"
        );
    }

    let o = run(&data, &out, "skip");
    assert!(o.status.success(), "skip must finish: {}", stderr(&o));
    let s = summary(&out);
    assert_eq!(s["bad_samples"], 1);
    assert_eq!(s["failed_samples"], 0);
    assert_eq!(s["samples"], sample_dataset_size());
    let bad = &s["bad"][0];
    assert_eq!(bad["key"], BROKEN, "{s}");
    assert!(
        bad["reason"].as_str().unwrap().contains("jpeg"),
        "the reason says what is wrong with it: {bad}"
    );

    // The shard with the bad sample is now journaled: a `fail` resume must still refuse it.
    let o = run(&data, &out, "fail");
    let err = stderr(&o);
    assert!(
        !o.status.success(),
        "fail resume over a skip journal exited 0\n{err}"
    );
    assert!(
        err.contains(BROKEN) && err.contains("journaled"),
        "the error names the journaled bad sample\n{err}"
    );
}

/// A sample the listing itself finds bad (a CIFAR record whose label byte is no class) has no sample
/// index: it is reported with its reason, never scheduled, and `logits.npy` has one row per listed
/// sample. (Shards were once cut over listed + bad samples, and the coordinator panicked indexing the
/// last one.)
#[test]
fn samples_the_listing_finds_bad_are_reported_not_scheduled() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cifar");
    std::fs::create_dir_all(&data).unwrap();
    // CIFAR-10's binary layout: a label byte, then 32x32x3 pixel bytes; label 12 is no class.
    let mut bytes = Vec::new();
    for i in 0..10u8 {
        bytes.push(if i == 9 { 12 } else { i });
        bytes.extend((0..3072u32).map(|p| (p as u8).wrapping_mul(i + 1)));
    }
    std::fs::write(data.join("test_batch.bin"), &bytes).unwrap();
    let names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ];
    std::fs::write(data.join("batches.meta.txt"), names.join("\n") + "\n").unwrap();
    let out = dir.path().join("run");
    let o = coordinator_run_on(
        &data,
        "cifar10",
        &out,
        &[
            "--shard-size",
            "4",
            "--local-workers",
            "1",
            "--save-logits",
            "fp32",
        ],
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let s = summary(&out);
    assert_eq!(
        (&s["samples"], &s["bad_samples"], &s["failed_samples"]),
        (&9.into(), &1.into(), &0.into()),
        "{s}"
    );
    assert_eq!(s["bad"][0]["key"], "test_batch.bin:00009", "{s}");
    let npy = std::fs::read(out.join("logits.npy")).unwrap();
    let header = String::from_utf8_lossy(&npy[..128.min(npy.len())]).into_owned();
    assert!(header.contains("'shape': (9, 1000)"), "{header}");
}
