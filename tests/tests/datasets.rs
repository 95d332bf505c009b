//! The ImageNet test sets users sweep (ReaL, V2, A, R) and class subsets, end to end with the real
//! binaries on fixtures cut from real photos with timm's own class lists and ReaL labels
//! (ops/reference/make_imagenet_variants.py): each format's trap is shown avoided (V2's numeric folders,
//! A/R's mask applied on the worker, ReaL's label lists and excluded images), and every number is
//! recomputed from the saved logits by ops/reference/check_metrics.py.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use polars::prelude::*;
use tresnet_common::dataset::{ClassSubset, imagenet};
use tresnet_tests::{bin, coordinator_run_on, copy_dir, run_ok, summary};

/// The fixtures of make_imagenet_variants.py.
fn variants() -> PathBuf {
    let dir = std::env::var_os("TRESNET_IMAGENET_VARIANTS")
        .map(PathBuf::from)
        .expect("TRESNET_IMAGENET_VARIANTS is not set: run the tests through ops/test.sh");
    assert!(
        dir.join("COMPLETE").exists(),
        "{} is incomplete",
        dir.display()
    );
    dir
}

fn expected() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(variants().join("expected.json")).unwrap()).unwrap()
}

fn python() -> PathBuf {
    std::env::var_os("TRESNET_VENV")
        .map(|v| PathBuf::from(v).join("bin").join("python"))
        .expect("TRESNET_VENV is not set: run the tests through ops/test.sh")
}

/// timm's `data/_info` folder, where it keeps the class lists and ReaL's labels.
fn timm_info() -> PathBuf {
    let out = Command::new(python())
        .args([
            "-c",
            "import timm, os; print(os.path.join(os.path.dirname(timm.__file__), 'data', '_info'))",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn words(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn check_metrics(run: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/reference/check_metrics.py");
    let out = Command::new(python())
        .arg(script)
        .arg(run)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check_metrics.py failed on {}:\n{}",
        run.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn frame(path: &Path) -> DataFrame {
    match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => CsvReadOptions::default()
            .try_into_reader_with_file_path(Some(path.to_path_buf()))
            .unwrap()
            .finish()
            .unwrap(),
        _ => ParquetReader::new(std::fs::File::open(path).unwrap())
            .finish()
            .unwrap(),
    }
}

/// Per key: label, top-k classes and the accepted label list (ReaL runs only).
struct Row {
    index: u64,
    label: u32,
    topk: Vec<u32>,
}

fn rows(run: &Path) -> BTreeMap<String, Row> {
    let df = frame(&run.join("predictions.parquet"));
    let key = df.column("key").unwrap().str().unwrap().clone();
    let index = df.column("index").unwrap().u64().unwrap().clone();
    let label = df.column("label").unwrap().u32().unwrap().clone();
    let topk = df.column("topk_indices").unwrap().list().unwrap().clone();
    (0..df.height())
        .map(|i| {
            let t = topk.get_as_series(i).unwrap();
            (
                key.get(i).unwrap().to_string(),
                Row {
                    index: index.get(i).unwrap(),
                    label: label.get(i).unwrap(),
                    topk: t.u32().unwrap().into_no_null_iter().collect(),
                },
            )
        })
        .collect()
}

fn rescore(run: &Path, out: &Path, rule: &[&str]) -> std::process::Output {
    Command::new(bin("tresnet-coordinator"))
        .arg("rescore")
        .arg(run)
        .arg("--out")
        .arg(out)
        .args(rule)
        .output()
        .unwrap()
}

/// A rescored run reports what a direct run of the same rule reports: the same samples, counts and
/// per-key top-k.
fn assert_same_scores(direct: &Path, rescored: &Path) {
    let (a, b) = (summary(direct), summary(rescored));
    for field in [
        "samples",
        "excluded_samples",
        "dataset_size",
        "correct1",
        "correct5",
        "top1",
        "top5",
        "top5_k",
    ] {
        assert_eq!(a[field], b[field], "rescore: {field}");
    }
    let close = |f: &str| (a[f].as_f64().unwrap() - b[f].as_f64().unwrap()).abs() < 1e-9;
    assert!(close("nll") && close("ece"), "rescore: nll/ece differ");
    let (ra, rb) = (rows(direct), rows(rescored));
    assert_eq!(ra.keys().collect::<Vec<_>>(), rb.keys().collect::<Vec<_>>());
    for (key, row) in &ra {
        assert_eq!(
            (row.label, &row.topk),
            (rb[key].label, &rb[key].topk),
            "{key}"
        );
    }
}

fn run(data: &Path, format: &str, out: &Path, extra: &[&str]) {
    let mut args = vec!["--save-logits", "fp32", "--batch-size", "8"];
    args.extend_from_slice(extra);
    run_ok(coordinator_run_on(data, format, out, &args));
}

#[test]
fn builtin_subsets_and_the_wnid_map_are_timms() {
    let info = timm_info();
    let synsets = words(&info.join("imagenet_synsets.txt"));
    assert_eq!(imagenet::synsets(), synsets);
    // The WNID <-> index map at known indices (the tench is 0, the stingray 6, toilet tissue 999).
    for (i, wnid) in [
        (0, "n01440764"),
        (6, "n01498041"),
        (10, "n01530575"),
        (999, "n15075141"),
    ] {
        assert_eq!(imagenet::synsets()[i], wnid);
        assert_eq!(imagenet::class_index(wnid), Some(i as u32));
    }
    for name in ["a", "r"] {
        let builtin = ClassSubset::builtin(&format!("imagenet-{name}")).unwrap();
        let indices: Vec<u32> = words(&info.join(format!("imagenet_{name}_indices.txt")))
            .iter()
            .map(|i| i.parse().unwrap())
            .collect();
        assert_eq!(builtin.classes(), indices, "imagenet-{name} indices");
        let wnids: Vec<&str> = builtin
            .classes()
            .iter()
            .map(|&c| imagenet::synsets()[c as usize])
            .collect();
        assert_eq!(
            wnids,
            words(&info.join(format!("imagenet_{name}_synsets.txt"))),
            "imagenet-{name} WNIDs"
        );
        // A file of timm's WNIDs is the same subset as the built-in name.
        let from_file = ClassSubset::resolve(
            info.join(format!("imagenet_{name}_synsets.txt"))
                .to_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(from_file, builtin);
    }
}

/// ImageNet-A: labels are subset positions of the standard indices, the saved (full) logits' argmax
/// falls outside the 200 classes for some image while every prediction is the best of the 200, the
/// subset is recorded, and a counts-only run (the mask applied on the device) counts the same.
#[test]
fn imagenet_a_is_scored_on_its_200_classes_on_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a");
    let data = variants().join("imagenet-a");
    run(
        &data,
        "imagenet-a",
        &out,
        &["--local-workers", "2", "--shard-size", "8"],
    );
    let subset = ClassSubset::builtin("imagenet-a").unwrap();
    let s = summary(&out);
    assert_eq!(
        s["job"]["class_subset"],
        serde_json::to_value(subset.classes()).unwrap()
    );
    assert_eq!(
        (s["samples"].as_u64(), s["excluded_samples"].as_u64()),
        (Some(24), Some(0))
    );
    let expected = expected();
    let rows = rows(&out);
    let logits = tresnet_common::npy::read_f32(&out.join("logits.npy")).unwrap();
    assert_eq!(
        logits.shape,
        [24, 1000],
        "saved logits keep the model's full rows"
    );
    let mut outside = 0;
    for (key, row) in &rows {
        let class = expected["imagenet-a"][key].as_u64().unwrap() as u32;
        assert_eq!(Some(row.label), subset.position(class), "{key}");
        let full = &logits.data[row.index as usize * 1000..][..1000];
        let argmax = |cols: &mut dyn Iterator<Item = u32>| {
            cols.max_by(|&a, &b| {
                full[a as usize]
                    .total_cmp(&full[b as usize])
                    .then(b.cmp(&a))
            })
            .unwrap()
        };
        let best_of_all = argmax(&mut (0..1000));
        let best_of_subset = argmax(&mut subset.classes().iter().copied());
        assert_eq!(subset.position(best_of_subset), Some(row.topk[0]), "{key}");
        assert!(row.topk.iter().all(|&c| c < 200), "{key}: {:?}", row.topk);
        outside += usize::from(subset.position(best_of_all).is_none());
    }
    assert!(
        outside > 0,
        "no image's unmasked argmax falls outside the subset: the fixture proves nothing"
    );
    let per_class = frame(&out.join("per_class.csv"));
    assert_eq!(per_class.height(), 200);
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        html.contains("200 of the model&#39;s 1000 classes (the imagenet-a subset"),
        "report.html does not say the run is scored on the subset"
    );
    let map = frame(&out.join("class_subset.csv"));
    assert_eq!(map.height(), 200);
    assert_eq!(
        map.column("class_index").unwrap().i64().unwrap().get(0),
        Some(6)
    );
    assert_eq!(
        map.column("class_name").unwrap().str().unwrap().get(0),
        Some("n01498041")
    );
    check_metrics(&out);

    let counts = dir.path().join("a-counts");
    run_ok(coordinator_run_on(
        &data,
        "imagenet-a",
        &counts,
        &["--counts-only", "--batch-size", "8"],
    ));
    let c = summary(&counts);
    for field in ["samples", "correct1", "correct5", "top1", "top5"] {
        assert_eq!(c[field], s[field], "counts-only {field}");
    }
    let nll = |v: &serde_json::Value| v["nll"].as_f64().unwrap();
    assert!(
        (nll(&c) - nll(&s)).abs() < 1e-4,
        "{} vs {}",
        nll(&c),
        nll(&s)
    );

    // The same images run unmasked (as ImageNet class folders), then rescored on the subset from
    // their saved logits, give the direct run's numbers.
    let val = dir.path().join("a-as-val");
    run(&data, "imagenet", &val, &[]);
    assert_eq!(summary(&val)["job"].get("class_subset"), None);
    let rescored = dir.path().join("a-rescored");
    let o = rescore(&val, &rescored, &["--class-subset", "imagenet-a"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_scores(&out, &rescored);
    check_metrics(&rescored);

    // Refusals: a counts-only run has no top-k, a run without logits cannot be masked, and the new
    // directory must be new.
    let o = rescore(
        &counts,
        &dir.path().join("x1"),
        &["--class-subset", "imagenet-a"],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("--counts-only run"),
        "{err}"
    );
    let no_logits = dir.path().join("no-logits");
    copy_dir(&val, &no_logits);
    std::fs::remove_file(no_logits.join("logits.npy")).unwrap();
    let o = rescore(
        &no_logits,
        &dir.path().join("x2"),
        &["--class-subset", "imagenet-r"],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("needs the full logits")
            && err.contains("--save-logits"),
        "{err}"
    );
    let o = rescore(&val, &rescored, &["--class-subset", "imagenet-r"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("is not empty"), "{err}");
    let labels = variants().join("imagenet-real").join("real.json");
    let o = rescore(
        &out,
        &dir.path().join("x3"),
        &["--labels", labels.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("class indices are not ReaL's"),
        "{err}"
    );
}

/// A subset from a file of WNIDs on an ImageNet-format dataset: images of other classes are excluded
/// (counted, not evaluated), and a subset that is not the format's own is refused.
#[test]
fn a_class_subset_file_excludes_the_other_classes() {
    let dir = tempfile::tempdir().unwrap();
    let data = variants().join("imagenet-r");
    let mut folders: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    folders.sort();
    let file = dir.path().join("subset.txt");
    // Two of the folders by WNID, one by index, plus a class with no images.
    let third = imagenet::class_index(&folders[4]).unwrap();
    std::fs::write(
        &file,
        format!("# mine\n{}\n{}\n{third}\n0\n", folders[0], folders[2]),
    )
    .unwrap();
    let out = dir.path().join("sub");
    run(
        &data,
        "imagenet",
        &out,
        &["--class-subset", file.to_str().unwrap()],
    );
    let s = summary(&out);
    assert_eq!(s["samples"], 12);
    assert_eq!(s["excluded_samples"], 12);
    assert_eq!(s["dataset_size"], 24);
    let outcome: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("outcome.json")).unwrap()).unwrap();
    let excluded_folders: BTreeSet<&str> = outcome["excluded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap().split('/').next().unwrap())
        .collect();
    assert_eq!(
        excluded_folders,
        [&folders[1], &folders[3], &folders[5]]
            .iter()
            .map(|f| f.as_str())
            .collect()
    );
    assert_eq!(frame(&out.join("per_class.csv")).height(), 4);
    check_metrics(&out);

    // The subset is part of the job's identity: resuming the directory without it is refused.
    let resumed = coordinator_run_on(&data, "imagenet", &out, &["--save-logits", "fp32"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&resumed.stderr);
    assert!(
        !resumed.status.success() && err.contains("different job") && err.contains("class_subset"),
        "{err}"
    );

    // A subset may name model classes past a small dataset's own (the sample ImageFolder's six
    // folders are classes 0 to 5 of the 1000-class model): they get no name and no sample.
    let small = dir.path().join("small.txt");
    std::fs::write(&small, "999\n1\n0\n").unwrap();
    let out = dir.path().join("small");
    run(
        &tresnet_tests::sample_images(),
        "imagefolder",
        &out,
        &["--class-subset", small.to_str().unwrap()],
    );
    let s = summary(&out);
    let per_folder = tresnet_tests::sample_dataset_size() / 6;
    assert_eq!(s["samples"].as_u64(), Some(2 * per_folder));
    assert_eq!(s["excluded_samples"].as_u64(), Some(4 * per_folder));
    let outcome: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("outcome.json")).unwrap()).unwrap();
    assert_eq!(
        outcome["class_names"],
        serde_json::json!(["astronaut", "chelsea", ""])
    );
    check_metrics(&out);

    let refused = Command::new(bin("tresnet-coordinator"))
        .args(["run", "--model", "tresnet_m", "--synthetic", "--data"])
        .arg(&data)
        .args([
            "--format",
            "imagenet-r",
            "--class-subset",
            "imagenet-a",
            "--out",
        ])
        .arg(dir.path().join("refused"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        err.contains("--format imagenet-r is scored on its own 200 classes"),
        "{err}"
    );
}

/// ImageNetV2: the folder `10` is class 10 and `2` is class 2, whatever their string order.
#[test]
fn imagenet_v2_folders_are_class_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("v2");
    run(&variants().join("imagenet-v2"), "imagenet-v2", &out, &[]);
    let rows = rows(&out);
    assert_eq!(rows.len(), 24);
    for (key, row) in &rows {
        let folder: u32 = key.split('/').next().unwrap().parse().unwrap();
        assert_eq!(row.label, folder, "{key}");
    }
    assert!(rows.keys().any(|k| k.starts_with("10/")) && rows.keys().any(|k| k.starts_with("2/")));
    check_metrics(&out);
}

/// ImageNet-ReaL with timm's real.json: images with an empty list are excluded and counted, the
/// others scored against their lists. A second dataset renames half of the images to val numbers whose
/// lists hold their top-1 prediction, so the scoring is seen to count hits (the seeded model's guesses
/// are otherwise never right); `report` re-renders both identically.
#[test]
fn imagenet_real_scores_label_lists_and_excludes_empty_ones() {
    let dir = tempfile::tempdir().unwrap();
    let expected = expected();
    let lists = expected["imagenet-real-lists"].as_object().unwrap();
    let empty = lists
        .values()
        .filter(|l| l.as_array().unwrap().is_empty())
        .count() as u64;
    assert!(empty > 0 && lists.values().any(|l| l.as_array().unwrap().len() > 1));
    let out = dir.path().join("real");
    run(
        &variants().join("imagenet-real"),
        "imagenet-real",
        &out,
        &[],
    );
    let s = summary(&out);
    assert_eq!(s["excluded_samples"].as_u64(), Some(empty));
    assert_eq!(s["samples"].as_u64(), Some(24 - empty));
    assert_eq!(s["dataset_size"], 24);
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        html.contains(&format!("id=\"excluded\">{empty}<"))
            && html.contains("ImageNet-ReaL label lists"),
        "report.html lacks the excluded count or the scoring rule"
    );
    check_metrics(&out);

    // One pass over the images as plain ImageNet-val, rescored with real.json (top-k only: the copy
    // has no logits), gives the direct ReaL run's numbers.
    let val = dir.path().join("val");
    run(&variants().join("imagenet-real"), "imagenet", &val, &[]);
    assert_eq!(summary(&val)["samples"], 24);
    let no_logits = dir.path().join("val-no-logits");
    copy_dir(&val, &no_logits);
    std::fs::remove_file(no_logits.join("logits.npy")).unwrap();
    let rescored = dir.path().join("val-real");
    let labels = variants().join("imagenet-real").join("real.json");
    let o = rescore(
        &no_logits,
        &rescored,
        &["--labels", labels.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same_scores(&out, &rescored);
    // With the logits copied along, check_metrics.py recomputes the rescored run too.
    let rescored_full = dir.path().join("val-real-full");
    let o = rescore(
        &val,
        &rescored_full,
        &["--labels", labels.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    check_metrics(&rescored_full);

    // Rename half of the evaluated images to a val image whose ReaL list holds their top-1.
    let real: Vec<Vec<u32>> = serde_json::from_slice(
        &std::fs::read(timm_info().join("imagenet_real_labels.json")).unwrap(),
    )
    .unwrap();
    let data = dir.path().join("renamed");
    copy_dir(&variants().join("imagenet-real"), &data);
    let number = |key: &str| -> usize { key[key.len() - 13..key.len() - 5].parse().unwrap() };
    let mut taken: BTreeSet<usize> = lists.keys().map(|k| number(k)).collect();
    let mut renamed = 0;
    for (key, row) in rows(&out).iter().step_by(2) {
        let Some(n) =
            (0..real.len()).find(|&n| real[n].contains(&row.topk[0]) && !taken.contains(&(n + 1)))
        else {
            continue;
        };
        taken.insert(n + 1);
        let (folder, _) = key.split_once('/').unwrap();
        std::fs::rename(
            data.join(key),
            data.join(folder)
                .join(format!("ILSVRC2012_val_{:08}.JPEG", n + 1)),
        )
        .unwrap();
        renamed += 1;
    }
    assert!(
        renamed >= 3,
        "only {renamed} images found a list with their prediction"
    );
    let hits = dir.path().join("hits");
    run(&data, "imagenet-real", &hits, &[]);
    let h = summary(&hits);
    assert!(
        h["correct1"].as_u64().unwrap() >= renamed,
        "{renamed} renamed, {} top-1 hits",
        h["correct1"]
    );
    check_metrics(&hits);

    for run in [&out, &hits] {
        let before = summary(run);
        for f in [
            "summary.json",
            "per_class.parquet",
            "per_class.csv",
            "confusion.parquet",
        ] {
            std::fs::remove_file(run.join(f)).unwrap();
        }
        run_ok({
            let mut c = Command::new(bin("tresnet-coordinator"));
            c.arg("report").arg(run);
            c
        });
        let after = summary(run);
        for field in [
            "samples",
            "excluded_samples",
            "correct1",
            "correct5",
            "top1",
            "top5",
        ] {
            assert_eq!(after[field], before[field], "report: {field}");
        }
    }
}
