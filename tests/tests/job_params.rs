//! Job parameters reach the worker and the job identity, with the real binaries: `run --max-pixels`
//! turns the sample photos above the limit into bad samples naming it, `run --dct-scaling` changes the
//! logits of the JPEGs it applies to, and each is recorded in job.json and refuses a resume without it.

use std::path::Path;
use std::process::Output;

use tresnet_tests::{coordinator_run, predictions, run_ok, sample_dataset_size, summary};

/// Below the larger sample photos (up to 619x324) and above the smallest (308x125).
const MAX_PIXELS: u64 = 100_000;

fn job_json(run: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(run.join("job.json")).unwrap()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A resume of `run` with `args` is refused as another job, naming `field`.
fn resume_is_refused(run: &Path, args: &[&str], field: &str) {
    let o = coordinator_run(run, args).output().unwrap();
    let err = stderr(&o);
    assert!(
        !o.status.success() && err.contains("different job") && err.contains(field),
        "resuming without the setting must be refused naming {field}:\n{err}"
    );
}

#[test]
fn max_pixels_makes_larger_photos_bad_samples_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let limit = MAX_PIXELS.to_string();
    run_ok(coordinator_run(&out, &["--max-pixels", &limit]));

    assert_eq!(job_json(&out)["preprocess"]["max_pixels"], MAX_PIXELS);
    let s = summary(&out);
    let bad = s["bad"].as_array().unwrap();
    let total = sample_dataset_size();
    assert!(
        !bad.is_empty() && (bad.len() as u64) < total,
        "some but not all photos exceed {MAX_PIXELS} pixels: {s}"
    );
    assert_eq!(s["bad_samples"], bad.len());
    assert_eq!(s["samples"].as_u64().unwrap() + bad.len() as u64, total);
    for b in bad {
        let reason = b["reason"].as_str().unwrap();
        assert!(
            reason.contains(&format!("exceeds the limit of {MAX_PIXELS} pixels")),
            "{b}"
        );
    }

    resume_is_refused(&out, &[], "preprocess.max_pixels");
}

#[test]
fn dct_scaling_changes_the_logits_of_large_jpegs() {
    let dir = tempfile::tempdir().unwrap();
    let (exact, scaled) = (dir.path().join("exact"), dir.path().join("scaled"));
    run_ok(coordinator_run(&exact, &[]));
    run_ok(coordinator_run(&scaled, &["--dct-scaling"]));

    assert_eq!(job_json(&exact)["preprocess"]["dct_scaling"], false);
    assert_eq!(job_json(&scaled)["preprocess"]["dct_scaling"], true);
    let (a, b) = (predictions(&exact), predictions(&scaled));
    assert_eq!(a.len() as u64, sample_dataset_size());
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    // At 64 px the resize target is 73 px, so every JPEG of the sample photos (shorter sides of 125 px
    // and more) that is at least twice that decodes at a reduced scale; PNGs never do.
    let changed: Vec<&String> = a.keys().filter(|k| a[*k].2 != b[*k].2).collect();
    assert!(
        changed.iter().all(|k| k.ends_with(".jpg")),
        "only JPEGs decode differently: {changed:?}"
    );
    assert!(
        changed.len() >= 10,
        "most large JPEGs change their logits with --dct-scaling: {changed:?}"
    );
    for k in a.keys().filter(|k| k.ends_with(".png")) {
        assert_eq!(a[k], b[k], "{k}: a PNG is decoded the same way");
    }

    resume_is_refused(&scaled, &[], "preprocess.dct_scaling");
}
