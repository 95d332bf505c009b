//! The run directory's reports, end to end on one small real run (seeded TResNet-M at 64 px, 2 workers,
//! a corrupt image and a class whose name needs HTML escaping): every number agrees with scikit-learn
//! (ops/reference/check_metrics.py), `report RUN` re-renders identical files, report.html renders in
//! headless Chromium, each file's schema matches its snapshot in tests/snapshots/, and the software
//! the workers reported is the libtorch they link (the venv's torch, asked through Python).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use polars::prelude::*;
use tresnet_tests::{bin, coordinator_run_on, copy_dir, sample_images, summary};

/// A class folder whose name is markup: it must come out escaped in report.html.
const MARKUP_CLASS: &str = "tag<b>&amp";

/// The derived files `report` rewrites.
const DERIVED: [&str; 5] = [
    "summary.json",
    "per_class.parquet",
    "per_class.csv",
    "confusion.parquet",
    "report.html",
];

struct Fixture {
    _dir: tempfile::TempDir,
    run: PathBuf,
}

const RUN_ARGS: [&str; 8] = [
    "--local-workers",
    "2",
    "--save-logits",
    "fp32",
    "--shard-size",
    "4",
    "--batch-size",
    "4",
];

/// One run shared by the tests of this file (they only read it or copy it). The seeded model's top-1
/// is never one of the sample folders' classes, which would leave every score 0; so a first run's
/// predictions relabel the images (a CSV manifest): a third get their top-1 class, a third their
/// third-ranked class (a top-5 hit), a third keep their folder's class. One class is named with markup.
fn run_dir() -> &'static Path {
    static RUN: OnceLock<Fixture> = OnceLock::new();
    &RUN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        copy_dir(&sample_images(), &data);
        let probe = dir.path().join("probe");
        let mut cmd = coordinator_run_on(&data, "imagefolder", &probe, &RUN_ARGS[..2]);
        // The probe measures its layouts (the default); the runs compared with each other do not. Its
        // own empty layout cache, so that it measures rather than reusing an earlier test run's choice.
        cmd.env("TRESNET_MEASURE_LAYOUT", "true")
            .env("TRESNET_LAYOUT_CACHE", dir.path().join("layouts"));
        ok(cmd.output().unwrap(), "coordinator run (probe)");
        let df = frame(&probe.join("predictions.parquet"));
        let keys = df.column("key").unwrap().str().unwrap().clone();
        let labels = df.column("label").unwrap().u32().unwrap().clone();
        let topk = df.column("topk_indices").unwrap().list().unwrap().clone();
        let folders: Vec<String> = {
            let mut f: Vec<String> = std::fs::read_dir(&data)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            f.sort();
            f
        };
        let mut names: BTreeMap<u32, String> = BTreeMap::new();
        let mut rows = Vec::new();
        for i in 0..df.height() {
            let ranked: Vec<u32> = topk
                .get_as_series(i)
                .unwrap()
                .u32()
                .unwrap()
                .into_no_null_iter()
                .collect();
            let own = labels.get(i).unwrap();
            let label = match i % 3 {
                0 => ranked[0],
                1 => ranked[2],
                _ => own,
            };
            names
                .entry(own)
                .or_insert_with(|| folders[own as usize].clone());
            rows.push((keys.get(i).unwrap().to_string(), label));
        }
        for (_, label) in &rows {
            let n = names.len();
            names.entry(*label).or_insert_with(|| {
                if n == folders.len() {
                    MARKUP_CLASS.to_string()
                } else {
                    format!("class{label}")
                }
            });
        }
        assert!(names.values().any(|n| n == MARKUP_CLASS));
        std::fs::write(
            data.join("coffee").join("zz_broken.jpg"),
            b"\xff\xd8\xff\xe0 not really a jpeg",
        )
        .unwrap();
        rows.push(("coffee/zz_broken.jpg".into(), 0));
        let mut csv = String::from("path,label,class_name\n");
        for (key, label) in &rows {
            csv.push_str(&format!("{key},{label},{}\n", names[label]));
        }
        std::fs::write(data.join("manifest.csv"), csv).unwrap();
        let run = dir.path().join("run");
        let mut cmd = coordinator_run_on(&data, "manifest", &run, &RUN_ARGS);
        ok(cmd.output().unwrap(), "coordinator run");
        Fixture { _dir: dir, run }
    })
    .run
}

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn check_metrics(run: &Path) -> Output {
    let python = std::env::var_os("TRESNET_VENV")
        .map(|v| PathBuf::from(v).join("bin").join("python"))
        .expect("TRESNET_VENV is not set: run the tests through ops/test.sh");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/reference/check_metrics.py");
    Command::new(python).arg(script).arg(run).output().unwrap()
}

#[test]
fn every_number_agrees_with_scikit_learn() {
    let run = run_dir();
    let s = summary(run);
    assert_eq!(s["bad_samples"], 1, "the corrupt image is a bad sample");
    assert!(s["samples"].as_u64().unwrap() >= 20);
    let out = ok(check_metrics(run), "check_metrics.py");
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));

    // Negative control: the script must catch a number that is off by far less than it prints.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("run");
    copy_dir(run, &bad);
    let mut s = s;
    s["top1"] = (s["top1"].as_f64().unwrap() + 1e-7).into();
    s["macro"]["f1"] = (s["macro"]["f1"].as_f64().unwrap() + 1e-7).into();
    std::fs::write(bad.join("summary.json"), serde_json::to_vec(&s).unwrap()).unwrap();
    let out = check_metrics(&bad);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "tampered summary passed: {err}");
    assert!(err.contains("top1:") && err.contains("macro.f1:"), "{err}");
}

/// Deletes every derived file of `run` and rebuilds them with `tresnet-coordinator report`.
fn rerender_from_scratch(run: &Path) -> Output {
    for f in DERIVED {
        std::fs::remove_file(run.join(f)).unwrap();
    }
    ok(
        Command::new(bin("tresnet-coordinator"))
            .arg("report")
            .arg(run)
            .output()
            .unwrap(),
        "report",
    )
}

fn frame(path: &Path) -> DataFrame {
    ParquetReader::new(std::fs::File::open(path).unwrap())
        .finish()
        .unwrap()
}

#[test]
fn report_rerenders_identical_files() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    copy_dir(run_dir(), &run);
    let before: BTreeMap<&str, Vec<u8>> = DERIVED
        .iter()
        .map(|f| (*f, std::fs::read(run.join(f)).unwrap()))
        .collect();
    let frames: BTreeMap<&str, DataFrame> = DERIVED
        .iter()
        .filter(|f| f.ends_with(".parquet"))
        .map(|f| (*f, frame(&run.join(f))))
        .collect();
    let out = rerender_from_scratch(&run);
    assert!(String::from_utf8_lossy(&out.stdout).contains("top-1"));
    for f in DERIVED {
        let after = std::fs::read(run.join(f)).unwrap();
        if let Some(df) = frames.get(f) {
            assert!(*df == frame(&run.join(f)), "{f} differs after report");
        } else {
            assert!(before[f] == after, "{f} differs after report");
        }
    }

    // A run directory without the stored outcome cannot be re-rendered, and says which file is missing.
    std::fs::remove_file(run.join("outcome.json")).unwrap();
    let out = Command::new(bin("tresnet-coordinator"))
        .arg("report")
        .arg(&run)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("outcome.json"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn chromium() -> PathBuf {
    std::env::var_os("TRESNET_CHROMIUM")
        .map(PathBuf::from)
        .expect(
            "TRESNET_CHROMIUM is not set: run the tests through ops/test.sh (ops/report_tools.sh)",
        )
}

fn headless(args: &[&str], page: &Path) -> Output {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    ok(out, "chromium")
}

#[test]
fn report_html_renders_in_headless_chromium() {
    let run = run_dir();
    let s = summary(run);
    let page = run.join("report.html");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(!html.contains(MARKUP_CLASS), "class name not escaped");
    // Self-contained: nothing to load, nothing to run.
    for needle in ["<script", "<link", "src=", "href=", "url(", "@import"] {
        assert!(!html.contains(needle), "report.html contains {needle}");
    }

    let dom = String::from_utf8(headless(&["--dump-dom"], &page).stdout).unwrap();
    let top1 = format!("id=\"top1\">{:.3}%<", s["top1"].as_f64().unwrap());
    let top5 = format!("id=\"top5\">{:.3}%<", s["top5"].as_f64().unwrap());
    assert!(dom.contains(&top1), "rendered page lacks {top1}");
    assert!(dom.contains(&top5), "rendered page lacks {top5}");
    for chart in ["per-class-chart", "reliability-chart", "throughput-chart"] {
        assert!(dom.contains(&format!("<svg id=\"{chart}\"")), "no {chart}");
    }
    // Both workers drew a line; the markup class name reads literally once the browser parsed it.
    assert!(dom.matches("<polyline").count() >= 2);
    assert!(dom.contains("tag&lt;b&gt;&amp;amp"));
    assert!(dom.contains("zz_broken.jpg"));

    let shot_dir = tempfile::tempdir().unwrap();
    let shot = shot_dir.path().join("report.png");
    headless(
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1000,2600",
            "--hide-scrollbars",
        ],
        &page,
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "screenshot is empty"
    );
}

// ---- schema snapshots ----------------------------------------------------------------------------

/// The workers' libtorch as the torch install itself says (the venv `ops/env.sh` puts on PATH, whose
/// libtorch the workers link), and what it sees of CUDA.
fn python_torch() -> (String, bool, bool) {
    let out = Command::new("python3")
        .args([
            "-c",
            "import torch; print(torch.__version__); print(torch.cuda.is_available()); \
             print(torch.backends.cudnn.is_available() and torch.cuda.is_available())",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&ok(out, "python3 -c 'import torch'").stdout).to_string();
    let mut lines = text.lines();
    let version = lines.next().unwrap().to_string();
    let cuda = lines.next() == Some("True");
    let cudnn = lines.next() == Some("True");
    (version, cuda, cudnn)
}

#[test]
fn workers_report_the_libtorch_they_link() {
    let s = summary(run_dir());
    let (version, cuda, cudnn) = python_torch();
    assert_eq!(
        s["software"]["libtorch"].as_str(),
        Some(version.as_str()),
        "{s}"
    );
    let workers = s["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    for w in workers {
        let sw = &w["software"];
        assert_eq!(sw["libtorch"].as_str(), Some(version.as_str()), "{w}");
        assert_eq!(sw["cuda_available"].as_bool(), Some(cuda), "{w}");
        assert_eq!(sw["cudnn_available"].as_bool(), Some(cudnn), "{w}");
        assert_eq!(sw["device_names"], serde_json::json!(["cpu"]), "{w}");
        assert!(w["pid"].as_u64().unwrap() > 0, "{w}");
    }
}

/// Every run records where each worker's time went: every stage present and non-negative, each
/// device's stages plus its idle wait adding up to about the worker's wall time (they are disjoint
/// stretches of its executor thread; a batch in flight at the last snapshot is the gap), the bounding
/// stage named, end-to-end img/s beside model-only; and how each device's layout was chosen: measured
/// in the probe run (neither --fold-bn nor --memory-format given), the fixed rule where workers were
/// told not to measure. report.html shows the same.
#[test]
fn every_run_records_its_stage_breakdown_and_layout_choice() {
    let probe = run_dir().parent().unwrap().join("probe");
    let p = summary(&probe);
    assert_eq!(p["job"]["measure_fold_bn"], true);
    let mut measured = 0;
    for w in p["workers"].as_array().unwrap() {
        // Layouts travel in shard trailers: a worker that recorded no shard (the other took them all)
        // has none to report.
        if w["accepted_samples"] == 0 {
            continue;
        }
        let layouts = w["layouts"].as_array().unwrap();
        assert_eq!(layouts.len(), 1, "{w}");
        assert_eq!(layouts[0]["measured"], true, "{w}");
        let c = layouts[0]["candidates"].as_array().unwrap();
        assert_eq!(c.len(), 4, "{w}");
        assert!(
            c.iter()
                .all(|c| !c["pass_ms"].as_array().unwrap().is_empty())
        );
        measured += 1;
    }
    assert!(measured >= 1);
    let html = std::fs::read_to_string(probe.join("report.html")).unwrap();
    assert!(html.contains("measured at load"));
    let s = summary(run_dir());
    let mut reported = 0;
    for w in s["workers"].as_array().unwrap() {
        if w["accepted_samples"].as_u64().unwrap() == 0 {
            continue;
        }
        reported += 1;
        let st = &w["stages"];
        let wall = st["wall_seconds"].as_f64().unwrap();
        assert!(wall > 0.0, "{w}");
        for k in ["fetch_seconds", "decode_seconds", "submit_seconds"] {
            assert!(st[k].as_f64().unwrap() >= 0.0, "{k}: {st}");
        }
        assert!(st["decode_seconds"].as_f64().unwrap() > 0.0, "{st}");
        assert!(st["images"].as_u64().unwrap() > 0, "{st}");
        assert!(st["end_to_end_images_per_second"].as_f64().unwrap() > 0.0);
        assert!(st["bound"].as_str().unwrap().contains("-bound: "), "{st}");
        let devices = st["devices"].as_array().unwrap();
        assert_eq!(devices.len(), 1, "{st}");
        for d in devices {
            let parts = [
                "host_to_device_seconds",
                "forward_seconds",
                "device_to_host_seconds",
                "idle_seconds",
            ]
            .map(|k| d[k].as_f64().unwrap());
            assert!(parts.iter().all(|&v| v >= 0.0), "{d}");
            assert!(parts[1] > 0.0, "{d}");
            let sum: f64 = parts.iter().sum();
            assert!(
                sum <= wall * 1.01 + 1e-3 && sum >= 0.5 * wall,
                "stages sum to {sum:.3} s of a {wall:.3} s wall: {d}"
            );
            assert!(d["model_images_per_second"].as_f64().unwrap() > 0.0);
        }
        let layouts = w["layouts"].as_array().unwrap();
        assert_eq!(layouts.len(), 1, "{w}");
        // TRESNET_MEASURE_LAYOUT=false: BN folded (fp32), contiguous on the CPU, nothing timed.
        assert_eq!(layouts[0]["measured"], false, "{w}");
        assert_eq!(layouts[0]["fold_bn"], true, "{w}");
        assert_eq!(layouts[0]["channels_last"], false, "{w}");
    }
    assert!(reported >= 1);
    let html = std::fs::read_to_string(run_dir().join("report.html")).unwrap();
    assert!(html.contains("Where the time went"));
    assert!(html.contains("-bound: "));
}

/// A measured layout is kept in the node's layout cache: the next run with the same key loads only the
/// chosen layout, measures nothing and says so in summary.json and report.html; `off` measures again.
#[test]
fn a_measured_layout_is_reused_from_the_layout_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("layouts");
    let layout = |name: &str, cache_env: &std::ffi::OsStr| {
        let out = dir.path().join(name);
        let mut cmd = coordinator_run_on(
            &sample_images(),
            "imagefolder",
            &out,
            &["--local-workers", "1"],
        );
        cmd.env("TRESNET_MEASURE_LAYOUT", "true")
            .env("TRESNET_LAYOUT_CACHE", cache_env);
        ok(cmd.output().unwrap(), name);
        let s = summary(&out);
        let w = &s["workers"][0];
        let l = w["layouts"][0].clone();
        assert_eq!(l["measured"], true, "{w}");
        (l, std::fs::read_to_string(out.join("report.html")).unwrap())
    };
    let (first, _) = layout("first", cache.as_os_str());
    assert_eq!(first["from_cache"], false, "{first}");
    assert!(first["seconds"].as_f64().unwrap() > 0.0, "{first}");
    let entries: Vec<_> = std::fs::read_dir(&cache).unwrap().collect();
    assert_eq!(entries.len(), 1, "one cache entry per key");
    let (second, html) = layout("second", cache.as_os_str());
    assert_eq!(second["from_cache"], true, "{second}");
    assert_eq!(second["seconds"], 0.0, "nothing measured now: {second}");
    for k in ["fold_bn", "channels_last", "candidates"] {
        assert_eq!(
            second[k], first[k],
            "{k}: the cached measurement is the first run's"
        );
    }
    assert!(
        html.contains("layout cache"),
        "report.html says where the choice came from"
    );
    let (third, _) = layout("third", std::ffi::OsStr::new("off"));
    assert_eq!(third["from_cache"], false, "{third}");
}

/// Synthetic workers score counts-only shards from the same records as per-sample ones (the capacity
/// benchmarks compare the two modes), so the numbers agree.
#[test]
fn synthetic_counts_only_scores_like_per_sample() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut csv = String::from("path,label\n");
    for i in 0..3000 {
        csv.push_str(&format!("img/{i:06}.jpg,{}\n", i % 1000));
    }
    std::fs::write(data.join("manifest.csv"), csv).unwrap();
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let o = Command::new(bin("tresnet-coordinator"))
            .args([
                "run",
                "--synthetic",
                "--model",
                "tresnet_m",
                "--format",
                "manifest",
            ])
            .args([
                "--num-classes",
                "1000",
                "--local-workers",
                "2",
                "--devices",
                "cpu,cpu",
            ])
            .args(["--shard-size", "256", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap();
        ok(o, name);
        summary(&out)
    };
    let (a, b) = (run("per-sample", &[]), run("counts", &["--counts-only"]));
    assert_eq!(b["job"]["counts_only"], true);
    for f in [
        "samples", "correct1", "correct5", "top1", "top5", "macro", "weighted",
    ] {
        assert_eq!(a[f], b[f], "{f}");
    }
    for f in ["nll", "ece"] {
        let (x, y) = (a[f].as_f64().unwrap(), b[f].as_f64().unwrap());
        assert!((x - y).abs() <= 1e-9 * x.abs().max(1.0), "{f}: {x} vs {y}");
    }
}

fn snapshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("snapshots")
}

fn parquet_schema(path: &Path) -> String {
    frame(path)
        .schema()
        .iter()
        .map(|(name, dtype)| format!("{name}: {dtype}\n"))
        .collect()
}

fn csv_schema(path: &Path) -> String {
    let df = CsvReadOptions::default()
        .with_infer_schema_length(None)
        .try_into_reader_with_file_path(Some(path.to_path_buf()))
        .unwrap()
        .finish()
        .unwrap();
    df.schema()
        .iter()
        .map(|(name, dtype)| format!("{name}: {dtype}\n"))
        .collect()
}

/// Every key path with the JSON types seen there (array elements merged under `[]`).
fn json_tree(
    v: &serde_json::Value,
    path: &str,
    out: &mut BTreeMap<String, BTreeSet<&'static str>>,
) {
    use serde_json::Value;
    let ty = match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(a) if a.is_empty() => "array (empty here)",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    out.entry(path.to_string()).or_default().insert(ty);
    match v {
        Value::Array(a) => a
            .iter()
            .for_each(|e| json_tree(e, &format!("{path}[]"), out)),
        Value::Object(m) => m.iter().for_each(|(k, e)| {
            json_tree(
                e,
                &if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                },
                out,
            )
        }),
        _ => {}
    }
}

fn json_schema(path: &Path) -> String {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let mut tree = BTreeMap::new();
    json_tree(&v, "", &mut tree);
    tree.iter()
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, t)| {
            format!(
                "{k}: {}\n",
                t.iter().copied().collect::<Vec<_>>().join(" | ")
            )
        })
        .collect()
}

#[test]
fn file_schemas_match_their_snapshots() {
    let run = run_dir();
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
    let mut diffs = Vec::new();
    for (file, schema) in [
        ("summary.json", json_schema(&run.join("summary.json"))),
        ("outcome.json", json_schema(&run.join("outcome.json"))),
        (
            "predictions.parquet",
            parquet_schema(&run.join("predictions.parquet")),
        ),
        (
            "per_class.parquet",
            parquet_schema(&run.join("per_class.parquet")),
        ),
        (
            "confusion.parquet",
            parquet_schema(&run.join("confusion.parquet")),
        ),
        ("per_class.csv", csv_schema(&run.join("per_class.csv"))),
    ] {
        let snap = snapshot_dir().join(format!("{file}.schema.txt"));
        if update {
            std::fs::create_dir_all(snapshot_dir()).unwrap();
            std::fs::write(&snap, &schema).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&snap)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_SNAPSHOTS=1 writes it)", snap.display()));
        if want != schema {
            diffs.push(format!(
                "{file} schema changed; review, update docs/run-directory.md and rerun with \
                 UPDATE_SNAPSHOTS=1\n--- snapshot\n{want}--- now\n{schema}"
            ));
        }
    }
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

/// `--counts-only` on the same data: two workers of two executors each, so every shard's counts are
/// all-reduced across two ranks before they are shipped. Every number must equal the per-sample run's
/// (floats to rounding), with no per-sample file, and `report`, `gate` and `compare` must handle it.
#[test]
fn counts_only_reports_the_same_numbers_without_per_sample_data() {
    let full = run_dir();
    let data = full.parent().unwrap().join("data");
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("counts");
    let args = [
        "--local-workers",
        "2",
        "--devices",
        "cpu,cpu",
        "--counts-only",
        // The per-sample run's batches: libtorch's CPU kernels round differently for other batch
        // shapes, which would move the loss sum by ~1e-7 and hide what this test is about.
        "--shard-size",
        "4",
        "--batch-size",
        "4",
    ];
    ok(
        coordinator_run_on(&data, "manifest", &run, &args)
            .output()
            .unwrap(),
        "counts-only run",
    );
    let (a, b) = (summary(full), summary(&run));
    assert_eq!(b["job"]["counts_only"], true);
    assert!(a["correct1"].as_u64().unwrap() > 0 && a["bad_samples"] == 1);
    for f in [
        "dataset_size",
        "samples",
        "correct1",
        "correct5",
        "bad_samples",
        "failed_samples",
        "bad",
        "top1",
        "top5",
        "macro",
        "weighted",
    ] {
        assert_eq!(a[f], b[f], "{f}");
    }
    for f in ["nll", "ece"] {
        let (x, y) = (a[f].as_f64().unwrap(), b[f].as_f64().unwrap());
        assert!((x - y).abs() <= 1e-9 * x.abs().max(1.0), "{f}: {x} vs {y}");
    }
    for (x, y) in a["reliability"]
        .as_array()
        .unwrap()
        .iter()
        .zip(b["reliability"].as_array().unwrap())
    {
        assert_eq!(x["count"], y["count"]);
    }
    let text = |p: &Path| std::fs::read_to_string(p).unwrap();
    assert_eq!(
        text(&full.join("per_class.csv")),
        text(&run.join("per_class.csv"))
    );
    assert_eq!(
        frame(&full.join("confusion.parquet")),
        frame(&run.join("confusion.parquet"))
    );
    assert!(!run.join("predictions.parquet").exists());
    assert!(!run.join("logits.npy").exists());
    assert!(run.join("counts.pb").is_file());

    // `report` re-renders a counts-only run from counts.pb.
    let before = text(&run.join("per_class.csv"));
    let top1 = b["top1"].clone();
    rerender_from_scratch(&run);
    assert_eq!(text(&run.join("per_class.csv")), before);
    assert_eq!(summary(&run)["top1"], top1);

    // gate: the per-sample run's baseline holds for the counts-only run, class by class.
    let base = dir.path().join("baseline.json");
    let gate = |args: &[&std::ffi::OsStr]| {
        Command::new(bin("tresnet-coordinator"))
            .arg("gate")
            .args(args)
            .output()
            .unwrap()
    };
    let os = |p: &Path| p.as_os_str().to_owned();
    ok(
        gate(&[
            "--run".as_ref(),
            &os(full),
            "--baseline".as_ref(),
            &os(&base),
            "--write-baseline".as_ref(),
        ]),
        "gate --write-baseline",
    );
    ok(
        gate(&[
            "--run".as_ref(),
            &os(&run),
            "--baseline".as_ref(),
            &os(&base),
            "--max-top1-drop".as_ref(),
            "0".as_ref(),
            "--max-class-drop".as_ref(),
            "0".as_ref(),
        ]),
        "gate of the counts-only run",
    );

    // compare pairs samples, which a counts-only run does not have: a clear refusal naming the flag.
    let o = Command::new(bin("tresnet-coordinator"))
        .arg("compare")
        .arg(full)
        .arg(&run)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("--counts-only"),
        "{err}"
    );

    // Full logits are per-sample data: asking for both is a usage error.
    let o = coordinator_run_on(
        &data,
        "manifest",
        &dir.path().join("both"),
        &["--counts-only", "--save-logits", "fp32"],
    )
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--counts-only"));
}
