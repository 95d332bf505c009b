//! The demo's signal-carrying weights end to end: a distributed run (two local workers, automatic shard
//! size) on the held-out crops must reach exactly the top-1 that ops/reference/make_demo_fixture.py
//! measured with timm on the same files, predict the same class for every sample with logits within a
//! tolerance of timm's, spread its shards over both workers, pass a gate against its own baseline, and
//! refuse a resume that would cut the journal differently.

use std::path::{Path, PathBuf};
use std::process::Command;

use tresnet_common::npy;
use tresnet_tests::{
    bin, coordinator_command, dataset_cache_of, output_text, predictions, run_ok, summary,
};

/// ops/reference/make_demo_fixture.py's output ($TRESNET_DEMO, made by ops/fixtures.sh).
fn demo() -> PathBuf {
    let dir = PathBuf::from(
        std::env::var_os("TRESNET_DEMO")
            .expect("TRESNET_DEMO is not set: run the tests through ops/test.sh"),
    );
    assert!(
        dir.join("COMPLETE").exists(),
        "{} is incomplete",
        dir.display()
    );
    dir
}

fn demo_run(out: &Path, extra: &[&str]) -> Command {
    let d = demo();
    let mut c = coordinator_command("run");
    c.args(["--model", "tresnet_m", "--weights"])
        .arg(d.join("weights/miil.pth"))
        .arg("--data")
        .arg(d.join("val"))
        // The fixture's preprocessing: timm's eval transform at 224 (the defaults), fp32 logits kept.
        .args(["--local-workers", "2", "--worker-threads", "1"])
        .args(["--save-logits", "fp32", "--out"])
        .arg(out)
        .args(extra)
        .env("TRESNET_DATASET_CACHE_DIR", dataset_cache_of(out));
    c
}

#[test]
fn demo_run_matches_timm_top1_on_the_held_out_split() {
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(demo().join("meta.json")).unwrap()).unwrap();
    let n = meta["val_samples"].as_u64().unwrap();
    let want_top1 = meta["val_top1"].as_f64().unwrap();
    // Not a blind fixture: well above chance, and not perfect either (per-class differences show).
    assert!(want_top1 > 3.0 * meta["chance_top1"].as_f64().unwrap() && want_top1 < 100.0);

    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    run_ok(demo_run(&run, &[]));
    let s = summary(&run);
    assert_eq!(s["samples"], n);
    assert_eq!(
        s["correct1"].as_u64().unwrap(),
        (want_top1 * n as f64 / 100.0).round() as u64,
        "top-1 {} vs timm's {want_top1}",
        s["top1"]
    );

    // Per sample: the same class as timm, and logits within a small fraction of their spread (BN is
    // folded in fp32 by default: ~1e-5 of the spread, see the README's Parity).
    let timm = npy::read_f32(&demo().join("val_logits.npy")).unwrap();
    let ours = npy::read_f32(&run.join("logits.npy")).unwrap();
    assert_eq!(ours.shape, timm.shape);
    let classes = timm.shape[1];
    let mean = timm.data.iter().map(|&v| f64::from(v)).sum::<f64>() / timm.data.len() as f64;
    let spread = (timm
        .data
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / timm.data.len() as f64)
        .sqrt();
    let worst = ours
        .data
        .iter()
        .zip(&timm.data)
        .map(|(a, b)| f64::from((a - b).abs()))
        .fold(0.0, f64::max);
    assert!(
        worst < 1e-3 * spread,
        "max |logit - timm| {worst} vs spread {spread}"
    );
    let keys: Vec<&str> = meta["val_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    let preds = predictions(&run);
    for (i, key) in keys.iter().enumerate() {
        let row = &timm.data[i * classes..(i + 1) * classes];
        let argmax = (0..classes)
            .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
            .unwrap() as u32;
        let (index, top, _) = &preds[*key];
        assert_eq!(*index, i as u64, "{key}: dataset order differs from timm's");
        assert_eq!(top[0], argmax, "{key}: top-1 class differs from timm's");
    }

    // Automatic shard size: 60 samples over 2 local workers -> ceil(60 / 8) = 8, recorded in job.json,
    // and both workers had shards accepted.
    let job: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("job.json")).unwrap()).unwrap();
    assert_eq!(job["shard_size"], n.div_ceil(8));
    let outcome: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("outcome.json")).unwrap()).unwrap();
    let workers = outcome["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    for w in workers {
        assert!(w["accepted_samples"].as_u64().unwrap() > 0, "{w}");
    }

    // gate: the run passes a baseline written from itself, and that baseline holds timm's top-1.
    let base = tmp.path().join("baseline.json");
    let gate = |args: &[&str]| {
        Command::new(bin("tresnet-coordinator"))
            .arg("gate")
            .arg("--run")
            .arg(&run)
            .arg("--baseline")
            .arg(&base)
            .args(args)
            .output()
            .unwrap()
    };
    let o = gate(&["--write-baseline"]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));
    let bl: serde_json::Value = serde_json::from_slice(&std::fs::read(&base).unwrap()).unwrap();
    assert!(
        (bl["top1"].as_f64().unwrap() - want_top1).abs() < 1e-9,
        "{bl}"
    );
    let o = gate(&["--max-top1-drop", "0", "--require-samples", &n.to_string()]);
    assert_eq!(o.status.code(), Some(0), "{}", output_text(&o));

    // The same command resumes (every shard is journaled: nothing is computed again, same numbers);
    // another shard size would cut the journal differently and is refused, naming both.
    let again = run_ok(demo_run(&run, &[]));
    assert_eq!(
        summary(&run)["correct1"],
        s["correct1"],
        "{}",
        output_text(&again)
    );
    let o = demo_run(&run, &["--shard-size", "5"]).output().unwrap();
    assert!(!o.status.success());
    let err = output_text(&o);
    assert!(
        err.contains("cut into shards of 8 samples") && err.contains("--shard-size 8"),
        "{err}"
    );
}
