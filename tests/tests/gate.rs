//! `tresnet-coordinator gate` on real runs: a run passes its own baseline, a run with lower top-1 and
//! lower classes fails with every violation listed (exit 1), and bad inputs exit 2 naming the problem.
//! With `--significance` a drop beyond the bound fails only when McNemar's test on the samples paired
//! with the baseline's per-sample bits says it is real; without those bits the plain bound applies.

mod paired_runs;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use paired_runs::{paired_runs, predictions};
use tresnet_tests::{bin, summary};

fn gate(args: &[&str]) -> Output {
    Command::new(bin("tresnet-coordinator"))
        .arg("gate")
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `gate --run RUN --baseline BASELINE --max-top1-drop 1` must be an input error (exit 2) whose
/// message contains every needle.
fn refused(run: &Path, baseline: &Path, needles: &[&str]) {
    let o = gate(&[
        "--run",
        p(run),
        "--baseline",
        p(baseline),
        "--max-top1-drop",
        "1",
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}{err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in: {err}");
    }
}

/// Per class: (samples, top-1 correct), recomputed from predictions.parquet.
fn class_top1(run: &Path) -> std::collections::BTreeMap<u32, (u64, u64)> {
    let mut m = std::collections::BTreeMap::new();
    for (_, label, top) in predictions(run) {
        let e = m.entry(label).or_insert((0, 0));
        e.0 += 1;
        e.1 += u64::from(top[0] == label);
    }
    m
}

#[test]
fn gate_passes_fails_and_refuses_bad_input_with_distinct_exit_codes() {
    let runs = paired_runs();
    let (a, b) = (&runs.a, &runs.b);
    let base = runs.dir.path().join("baseline.json");

    // --write-baseline: the baseline of run A, with its identity and numbers.
    let o = gate(&["--run", p(a), "--baseline", p(&base), "--write-baseline"]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let bl: serde_json::Value = serde_json::from_slice(&std::fs::read(&base).unwrap()).unwrap();
    let sa = summary(a);
    let sb = summary(b);
    assert_eq!(bl["format"], "tresnet-eval-baseline/2");
    assert_eq!(bl["model"], "tresnet_m");
    assert_eq!(
        bl["dataset"]["fingerprint"],
        sa["job"]["dataset_fingerprint"]
    );
    assert_eq!(bl["top1"], sa["top1"]);
    assert_eq!(bl["samples"], sa["samples"]);
    let a_classes = class_top1(a);
    assert_eq!(bl["classes"].as_array().unwrap().len(), a_classes.len());

    // The relabelling makes A better than B overall, so the test below means something.
    let (top1_a, top1_b) = (sa["top1"].as_f64().unwrap(), sb["top1"].as_f64().unwrap());
    assert!(top1_a > top1_b + 5.0, "A {top1_a} B {top1_b}");

    // Pass: A against its own baseline, with every check on and zero tolerance.
    let n = sa["samples"].to_string();
    let o = gate(&[
        "--run",
        p(a),
        "--baseline",
        p(&base),
        "--max-top1-drop",
        "0",
        "--max-top5-drop",
        "0",
        "--max-class-drop",
        "0",
        "--require-samples",
        &n,
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(out.contains("gate passed"), "{out}");

    // Fail on the top-1 drop: B is below A by more than 1 pp.
    let o = gate(&[
        "--run",
        p(b),
        "--baseline",
        p(&base),
        "--max-top1-drop",
        "1",
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(out.contains("gate FAILED: 1 violation\n"), "{out}");
    let line = out.lines().find(|l| l.starts_with("top-1")).expect(&out);
    assert!(line.contains(&format!("{top1_a:.3}")), "{line}");
    assert!(line.contains(&format!("{top1_b:.3}")), "{line}");
    assert!(
        line.contains(&format!("was {:.3}", top1_a - top1_b)),
        "{line}"
    );

    // Fail on class drops: every class where B is below A is listed, and only those.
    let b_classes = class_top1(b);
    let dropped: BTreeSet<u32> = a_classes
        .iter()
        .filter(|(c, (n, hit))| {
            let (nb, hit_b) = b_classes[c];
            assert_eq!(*n, nb);
            hit_b < *hit
        })
        .map(|(c, _)| *c)
        .collect();
    assert!(!dropped.is_empty());
    let o = gate(&[
        "--run",
        p(b),
        "--baseline",
        p(&base),
        "--max-top1-drop",
        "1",
        "--max-class-drop",
        "0",
        "--min-class-support",
        "1",
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(
        out.contains(&format!("gate FAILED: {} violations", dropped.len() + 1)),
        "{out}"
    );
    let listed: BTreeSet<u32> = out
        .lines()
        .filter(|l| l.starts_with("class top-1"))
        .map(|l| {
            let rest = l.split("class ").nth(2).expect(l);
            rest.split_whitespace().next().unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(listed, dropped, "{out}");
    // A support threshold above every class's size checks none of them.
    let o = gate(&[
        "--run",
        p(b),
        "--baseline",
        p(&base),
        "--max-class-drop",
        "0",
        "--min-class-support",
        "1000",
    ]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));

    // Bad baseline files: exit 2, the message names the file and the problem.
    let junk = runs.dir.path().join("junk.json");
    std::fs::write(&junk, "{ not json").unwrap();
    refused(a, &junk, &["junk.json", "not a valid baseline"]);

    let missing = runs.dir.path().join("nope.json");
    refused(a, &missing, &["nope.json", "missing"]);

    for (field, value, what) in [
        ("fingerprint", "0000", "another dataset"),
        ("model", "tresnet_l", "another model"),
    ] {
        let mut edited = bl.clone();
        if field == "model" {
            edited["model"] = value.into();
        } else {
            edited["dataset"]["fingerprint"] = value.into();
        }
        let f = runs.dir.path().join(format!("edited-{field}.json"));
        std::fs::write(&f, serde_json::to_vec(&edited).unwrap()).unwrap();
        refused(a, &f, &[what, value]);
    }

    // The baseline of a real run over another dataset (the folder) is refused the same way.
    let folder_base = runs.dir.path().join("folder-baseline.json");
    let o = gate(&[
        "--run",
        p(&runs.folder_run),
        "--baseline",
        p(&folder_base),
        "--write-baseline",
    ]);
    assert_eq!(o.status.code(), Some(0));
    refused(a, &folder_base, &["another dataset"]);

    // A run directory without its summary, no checks at all, and clap usage errors: exit 2.
    let empty = runs.dir.path().join("empty-run");
    std::fs::create_dir_all(&empty).unwrap();
    refused(&empty, &base, &["summary.json", "missing"]);
    let o = gate(&["--run", p(a), "--baseline", p(&base)]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2));
    assert!(err.contains("nothing to check"), "{err}");
    let o = gate(&[
        "--run",
        p(a),
        "--baseline",
        p(&base),
        "--max-top1-drop",
        "-1",
    ]);
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
    let o = gate(&[
        "--run",
        p(a),
        "--baseline",
        p(&base),
        "--min-class-support",
        "3",
    ]);
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));

    significance(&runs, &bl, &base);
}

/// Popcount of a base64 bitset field of the baseline's `per_sample`.
fn ones(bl: &serde_json::Value, field: &str) -> u64 {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(bl["per_sample"][field].as_str().unwrap())
        .unwrap();
    bytes.iter().map(|b| u64::from(b.count_ones())).sum()
}

fn significance(runs: &paired_runs::Paired, bl: &serde_json::Value, base: &Path) {
    let (a, b) = (&runs.a, &runs.b);
    let sa = summary(a);
    // The bits are A's own results.
    assert_eq!(ones(bl, "evaluated"), sa["samples"].as_u64().unwrap());
    assert_eq!(ones(bl, "correct1"), sa["correct1"].as_u64().unwrap());
    assert_eq!(ones(bl, "correct5"), sa["correct5"].as_u64().unwrap());

    // McNemar's p of B against A, from the two predictions files paired by key.
    let pb: std::collections::HashMap<String, bool> = predictions(b)
        .into_iter()
        .map(|(k, l, t)| (k, t[0] == l))
        .collect();
    let (mut only_a, mut only_b) = (0, 0);
    for (k, l, t) in predictions(a) {
        match (t[0] == l, pb[&k]) {
            (true, false) => only_a += 1,
            (false, true) => only_b += 1,
            _ => {}
        }
    }
    let (_, _, pval) = tresnet_coordinator::compare::mcnemar_p(only_a, only_b);
    assert!(pval > 0.0 && pval < 1.0, "{only_a} {only_b} {pval}");
    let gate_b = |baseline: &Path, alpha: f64| {
        gate(&[
            "--run",
            p(b),
            "--baseline",
            p(baseline),
            "--max-top1-drop",
            "1",
            "--significance",
            &format!("{alpha:.9}"),
        ])
    };
    // α at half of p: the drop (> 5 pp, beyond 1) is not significant, the gate passes and says why.
    let o = gate_b(base, pval / 2.0);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(out.contains("but not significantly: McNemar p ="), "{out}");
    // α between p and 1: significant, so the bound fails, with p in the table.
    let o = gate_b(base, (pval + 1.0) / 2.0);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    let line = out.lines().find(|l| l.starts_with("top-1")).expect(&out);
    assert!(line.contains("McNemar p ="), "{line}");

    // A baseline that was right on every sample B got wrong: every discordant pair is one way, which
    // is significant at 5% once there are six of them (exact p = 2 * 0.5^6).
    let wrong_b = pb.values().filter(|r| !**r).count();
    assert!(wrong_b >= 6, "{wrong_b}");
    let mut perfect = bl.clone();
    perfect["per_sample"]["correct1"] = perfect["per_sample"]["evaluated"].clone();
    perfect["top1"] = 100.0.into();
    let f = runs.dir.path().join("perfect.json");
    std::fs::write(&f, serde_json::to_vec(&perfect).unwrap()).unwrap();
    let o = gate_b(&f, 0.05);
    assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));

    // No per-sample bits (a format-1 baseline): the plain bound, with a note saying so.
    let mut old = bl.clone();
    old.as_object_mut().unwrap().remove("per_sample");
    old["format"] = "tresnet-eval-baseline/1".into();
    let f = runs.dir.path().join("format1.json");
    std::fs::write(&f, serde_json::to_vec(&old).unwrap()).unwrap();
    let o = gate_b(&f, pval / 2.0);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(out.contains("falls back to the plain bounds"), "{out}");

    // Bits of the wrong length are an invalid baseline, naming the field.
    let mut short = bl.clone();
    short["per_sample"]["correct1"] = "AA==".into();
    let f = runs.dir.path().join("short-bits.json");
    std::fs::write(&f, serde_json::to_vec(&short).unwrap()).unwrap();
    let o = gate_b(&f, 0.05);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("per_sample.correct1"), "{err}");

    // --significance qualifies a top-1/top-5 bound.
    let o = gate(&[
        "--run",
        p(b),
        "--baseline",
        p(base),
        "--require-samples",
        "1",
        "--significance",
        "0.05",
    ]);
    assert_eq!(o.status.code(), Some(2), "{:?}", text(&o));
}
