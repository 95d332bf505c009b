//! `tresnet-coordinator sweep`: a 2×2 matrix (resolutions × crop modes) of real runs gives one run
//! directory per cell and sweep tables with the runs' own numbers; a rerun does no work, and a cell
//! whose summary is gone is the only one run again. The cells run on one pool of workers spawned once
//! (the same processes in every cell, the model reloaded only when it changes) and give exactly the
//! results of separate `run`s; a cell whose weights no worker can load fails with the workers' reasons
//! and the next cell still runs on the same workers. The timm-shaped `results-*.csv` carry the runs'
//! numbers in timm's format, with parameter counts equal to timm's own count of the model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::SystemTime;

use polars::prelude::*;
use tresnet_tests::{
    SweepToml, Watched, assert_same_report, children_of, coordinator_command, coordinator_run_with,
    model_fixtures, run_ok, sample_images, summary, tresnet_m_weights, worker_command,
};

const CELLS: [&str; 4] = [
    "tresnet_m-seeded-sample-64-center-fp32",
    "tresnet_m-seeded-sample-64-squish-fp32",
    "tresnet_m-seeded-sample-96-center-fp32",
    "tresnet_m-seeded-sample-96-squish-fp32",
];

fn sweep(file: &Path) -> Output {
    let o = coordinator_command("sweep").arg(file).output().unwrap();
    assert!(
        o.status.success(),
        "sweep failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Modification time of every file under the cell run directories.
fn mtimes(out: &Path) -> BTreeMap<PathBuf, SystemTime> {
    let mut m = BTreeMap::new();
    let mut stack: Vec<PathBuf> = CELLS.iter().map(|c| out.join(c)).collect();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                m.insert(p.clone(), e.metadata().unwrap().modified().unwrap());
            }
        }
    }
    m
}

fn table(out: &Path) -> (DataFrame, DataFrame) {
    let csv = CsvReadOptions::default()
        .with_has_header(true)
        .try_into_reader_with_file_path(Some(out.join("sweep.csv")))
        .unwrap()
        .finish()
        .unwrap();
    let pq = ParquetReader::new(std::fs::File::open(out.join("sweep.parquet")).unwrap())
        .finish()
        .unwrap();
    (csv, pq)
}

/// Every row's numbers equal its run's summary.json; returns the status column.
fn check_rows(out: &Path, df: &DataFrame) -> Vec<String> {
    assert_eq!(df.height(), CELLS.len());
    let cell = df.column("cell").unwrap().str().unwrap();
    let status = df.column("status").unwrap().str().unwrap();
    let f64col = |n: &str| {
        df.column(n)
            .unwrap()
            .cast(&DataType::Float64)
            .unwrap()
            .f64()
            .unwrap()
            .clone()
    };
    let (top1, top5, samples) = (f64col("top1"), f64col("top5"), f64col("samples"));
    let res = df
        .column("resolution")
        .unwrap()
        .cast(&DataType::UInt32)
        .unwrap();
    let crop = df.column("crop_mode").unwrap().str().unwrap();
    let mut statuses = Vec::new();
    for (i, name) in CELLS.iter().enumerate() {
        assert_eq!(cell.get(i), Some(*name));
        let s = summary(&out.join(name));
        assert_eq!(top1.get(i), s["top1"].as_f64(), "{name}");
        assert_eq!(top5.get(i), s["top5"].as_f64(), "{name}");
        for metric in ["top1", "top5"] {
            for end in ["low", "high"] {
                let col = format!("{metric}_ci95_{end}");
                assert_eq!(
                    f64col(&col).get(i),
                    s[format!("{metric}_ci95")][end].as_f64(),
                    "{name} {col}"
                );
            }
        }
        assert_eq!(samples.get(i), s["samples"].as_f64(), "{name}");
        assert_eq!(
            Some(u64::from(res.u32().unwrap().get(i).unwrap())),
            s["job"]["preprocess"]["resolution"].as_u64()
        );
        assert_eq!(crop.get(i), s["job"]["preprocess"]["crop_mode"].as_str());
        statuses.push(status.get(i).unwrap().to_string());
    }
    statuses
}

/// `results-sample.csv` has timm's columns and number formats, one row per cell, best top-1 first,
/// each row equal to its cell's summary.json (no diff columns: the sweep has no ImageNet-val dataset).
fn check_timm_results(out: &Path) {
    let text = std::fs::read_to_string(out.join("results-sample.csv")).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "model,top1,top1_err,top5,top5_err,param_count,img_size,crop_pct,interpolation,crop_mode,precision"
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), CELLS.len(), "{text}");
    let top1: Vec<f64> = rows.iter().map(|r| r[1].parse().unwrap()).collect();
    assert!(top1.windows(2).all(|w| w[0] >= w[1]), "{text}");
    for r in &rows {
        assert_eq!(r[0], "tresnet_m.seeded");
        // timm.create_model("tresnet_m").parameters(): 31,389,032.
        assert_eq!(r[5], "31.39");
        assert_eq!((r[7], r[8], r[10]), ("0.875", "bilinear", "fp32"));
        let cell = CELLS
            .iter()
            .find(|c| c.contains(&format!("-{}-{}-", r[6], r[9])))
            .unwrap_or_else(|| panic!("no cell for {r:?}"));
        let s = summary(&out.join(cell));
        assert_eq!(
            r[1],
            format!("{:.3}", s["top1"].as_f64().unwrap()),
            "{cell}"
        );
        assert_eq!(r[2], format!("{:.3}", 100.0 - s["top1"].as_f64().unwrap()));
        assert_eq!(
            r[3],
            format!("{:.3}", s["top5"].as_f64().unwrap()),
            "{cell}"
        );
    }
}

#[test]
fn parameter_counts_of_checkpoints_equal_timms_count_of_the_model() {
    for (case, model) in [
        ("tresnet_m_224", "tresnet_m"),
        ("tresnet_v2_l_224", "tresnet_v2_l"),
        ("tresnet_xl_224", "tresnet_xl"),
    ] {
        let py = Command::new("python3")
            .args([
                "-c",
                "import sys, timm; m = timm.create_model(sys.argv[1], num_classes=1000); \
                 print(sum(p.numel() for p in m.parameters()))",
                model,
            ])
            .output()
            .unwrap();
        assert!(
            py.status.success(),
            "{}",
            String::from_utf8_lossy(&py.stderr)
        );
        let timm: u64 = String::from_utf8_lossy(&py.stdout).trim().parse().unwrap();
        // Both layouts: timm's state dict and the official (MIIL) checkpoint.
        for file in ["timm.pth", "miil.pth"] {
            let path = model_fixtures().join(case).join(file);
            let sd = tresnet_common::checkpoint::load_state_dict(&path).unwrap();
            assert_eq!(
                tresnet_common::checkpoint::parameter_count(&sd),
                timm,
                "{}",
                path.display()
            );
        }
    }
}

#[test]
fn two_by_two_sweep_writes_cells_and_tables_and_a_rerun_skips_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = SweepToml::new("sample", &sample_images().display().to_string())
        .resolutions(&[64, 96])
        .crop_modes(&["center", "squish"])
        .run("batch-size", "8")
        .write(dir.path());
    let out = dir.path().join("runs");

    let o = sweep(&file);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(stderr.matches(": running").count(), 4, "{stderr}");
    for c in CELLS {
        let s = summary(&out.join(c));
        assert_eq!(s["samples"], 24, "{c}");
        assert_eq!(s["failed_samples"], 0, "{c}");
    }
    // The cells are real, different evaluations: resolution and crop change the predictions.
    assert_ne!(
        std::fs::read(out.join(CELLS[0]).join("predictions.parquet")).unwrap(),
        std::fs::read(out.join(CELLS[3]).join("predictions.parquet")).unwrap()
    );
    let (csv, pq) = table(&out);
    assert_eq!(check_rows(&out, &csv), ["ran"; 4]);
    assert_eq!(check_rows(&out, &pq), ["ran"; 4]);
    check_timm_results(&out);
    let md = std::fs::read_to_string(out.join("sweep.md")).unwrap();
    assert_eq!(md.lines().count(), 2 + 4, "{md}");
    assert!(
        md.lines().nth(2).unwrap().contains("| 64 | center |"),
        "{md}"
    );
    assert_eq!(
        md,
        String::from_utf8_lossy(&o.stdout)
            .split("tables:")
            .next()
            .unwrap()
    );

    // Rerun: every cell is finished, nothing in the run directories is touched.
    let before = mtimes(&out);
    let o = sweep(&file);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        stderr.matches("finished earlier, skipping").count(),
        4,
        "{stderr}"
    );
    assert_eq!(stderr.matches(": running").count(), 0, "{stderr}");
    assert_eq!(mtimes(&out), before);
    let (csv, _) = table(&out);
    assert_eq!(check_rows(&out, &csv), ["skipped"; 4]);

    // A cell without its summary is not finished: only that one runs (resumed from its journal).
    std::fs::remove_file(out.join(CELLS[2]).join("summary.json")).unwrap();
    let o = sweep(&file);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(stderr.matches(": running").count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("{}: running", CELLS[2])),
        "{stderr}"
    );
    let (csv, _) = table(&out);
    assert_eq!(
        check_rows(&out, &csv),
        ["skipped", "skipped", "ran", "skipped"]
    );
}

/// Runs `sweep FILE` to its end while watching the coordinator's child processes; returns its output
/// and every child pid seen meanwhile.
fn sweep_watching_children(file: &Path) -> (Output, Vec<u32>) {
    use std::io::Read;
    let mut child = coordinator_command("sweep")
        .arg(file)
        // The workers say when they load a model and when they keep it.
        .env("RUST_LOG", "warn,tresnet_worker::job_loop=info")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        out.read_to_end(&mut v).unwrap();
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        err.read_to_end(&mut v).unwrap();
        v
    });
    let mut seen = std::collections::BTreeSet::new();
    let status = loop {
        seen.extend(children_of(child.id()));
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let o = Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    (o, seen.into_iter().collect())
}

/// Worker (id, pid) pairs recorded in a cell's outcome.json, with the samples each contributed.
fn cell_workers(run: &Path) -> Vec<(String, u64, u64)> {
    let o: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("outcome.json")).unwrap()).unwrap();
    o["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["id"].as_str().unwrap().to_string(),
                w["pid"].as_u64().unwrap(),
                w["accepted_samples"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn pool_sweep_file(dir: &Path, weights: &[(&Path, &str)], crop_modes: &[&str]) -> PathBuf {
    SweepToml::new("sample", &sample_images().display().to_string())
        .weights(weights)
        .crop_modes(crop_modes)
        .run("local-workers", "2")
        .run("batch-size", "4")
        .run("shard-size", "4")
        .write(dir)
}

#[test]
fn cells_run_on_one_pool_of_workers_and_equal_separate_runs() {
    let dir = tempfile::tempdir().unwrap();
    let st = model_fixtures()
        .join("tresnet_m_224")
        .join("timm.safetensors");
    // Two checkpoints of the same network (the second one a different file: the model reloads).
    let file = pool_sweep_file(
        dir.path(),
        &[(&tresnet_m_weights(), "pth"), (&st, "st")],
        &["center", "squish"],
    );
    let out = dir.path().join("runs");
    let (o, children) = sweep_watching_children(&file);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "sweep failed:\n{stderr}");
    assert_eq!(stderr.matches(": running").count(), 4, "{stderr}");
    // Two local workers for the whole sweep, never respawned.
    assert_eq!(children.len(), 2, "children seen: {children:?}\n{stderr}");
    let cells = [
        "tresnet_m-pth-sample-64-center-fp32",
        "tresnet_m-pth-sample-64-squish-fp32",
        "tresnet_m-st-sample-64-center-fp32",
        "tresnet_m-st-sample-64-squish-fp32",
    ];
    for c in cells {
        let run = out.join(c);
        let s = summary(&run);
        assert_eq!(s["samples"], 24, "{c}");
        assert_eq!(s["failed_samples"], 0, "{c}");
        let workers = cell_workers(&run);
        let mut pids: Vec<u32> = workers.iter().map(|w| w.1 as u32).collect();
        pids.sort_unstable();
        assert_eq!(pids, children, "{c}: workers {workers:?}");
        assert_eq!(workers.iter().map(|w| w.2).sum::<u64>(), 24, "{c}");
    }
    // Each worker loads each checkpoint once and keeps it for the cell that shares it.
    assert_eq!(stderr.matches("loading the model").count(), 4, "{stderr}");
    assert_eq!(
        stderr
            .matches("same model as the previous job; keeping it loaded")
            .count(),
        2 * 2,
        "{stderr}"
    );
    // A cell whose model was kept loaded and one that reloaded it each equal a separate `run`.
    for (cell, weights, crop) in [
        (cells[1], tresnet_m_weights(), "squish"),
        (cells[2], st.clone(), "center"),
    ] {
        let alone = dir.path().join(format!("{cell}-alone"));
        let cmd = coordinator_run_with(
            &weights,
            &sample_images(),
            "imagefolder",
            &alone,
            &[
                "--local-workers",
                "2",
                "--batch-size",
                "4",
                "--shard-size",
                "4",
                "--crop-mode",
                crop,
            ],
        );
        run_ok(cmd);
        assert_same_report(&alone, &out.join(cell), cell);
        assert_eq!(
            summary(&alone)["job"],
            summary(&out.join(cell))["job"],
            "{cell}"
        );
    }
}

#[test]
fn a_cell_no_worker_can_load_fails_by_name_and_the_next_cell_runs_on_the_same_workers() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.pth");
    std::fs::write(&bad, b"not a checkpoint").unwrap();
    let file = pool_sweep_file(
        dir.path(),
        &[(&bad, "broken"), (&tresnet_m_weights(), "good")],
        &["center"],
    );
    let out = dir.path().join("runs");
    let (o, children) = sweep_watching_children(&file);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    let failed = stderr
        .lines()
        .find(|l| l.contains("tresnet_m-broken-sample-64-center-fp32: FAILED"))
        .unwrap_or_else(|| panic!("no failure line:\n{stderr}"));
    assert!(
        failed.contains("no worker can run model tresnet_m with weights")
            && failed.contains("broken.pth"),
        "{failed}"
    );
    // Both workers' reasons are there, each naming the checkpoint.
    for w in ["local-0", "local-1"] {
        assert!(
            stderr.contains(&format!(
                "worker {w}: cannot start executors: model tresnet_m with weights"
            )),
            "{stderr}"
        );
    }
    assert_eq!(children.len(), 2, "{children:?}\n{stderr}");
    let good = out.join("tresnet_m-good-sample-64-center-fp32");
    assert_eq!(summary(&good)["samples"], 24);
    let mut pids: Vec<u32> = cell_workers(&good).iter().map(|w| w.1 as u32).collect();
    pids.sort_unstable();
    assert_eq!(pids, children);
    let (csv, _) = table(&out);
    let status = csv.column("status").unwrap().str().unwrap().clone();
    let status: Vec<&str> = (0..status.len()).map(|i| status.get(i).unwrap()).collect();
    assert_eq!(status, ["failed", "ran"]);
}

#[test]
fn a_remote_worker_joins_once_and_runs_every_cell() {
    let dir = tempfile::tempdir().unwrap();
    let file = pool_sweep_file(
        dir.path(),
        &[(&tresnet_m_weights(), "seeded")],
        &["center", "squish"],
    );
    // No local workers: the pool is whatever joins the endpoint.
    let text = std::fs::read_to_string(&file).unwrap().replace(
        "local-workers = 2",
        "local-workers = 0\nlisten = \"127.0.0.1:0\"",
    );
    std::fs::write(&file, text).unwrap();
    let mut cmd = coordinator_command("sweep");
    cmd.arg(&file);
    let mut coord = Watched::spawn(cmd, "sweep");
    let addr = coord.wait_for("coordinator listening on ");
    let addr = addr.split(';').next().unwrap().trim().to_string();
    let mut worker = worker_command(&format!("http://{addr}"))
        .args(["--worker-id", "remote-0", "--no-cache"])
        .spawn()
        .unwrap();
    let pid = worker.id();
    assert!(coord.child.wait().unwrap().success(), "sweep failed");
    // The worker heard that the sweep has no further job and exited by itself, successfully.
    assert!(worker.wait().unwrap().success());
    let out = dir.path().join("runs");
    for c in [
        "tresnet_m-seeded-sample-64-center-fp32",
        "tresnet_m-seeded-sample-64-squish-fp32",
    ] {
        let run = out.join(c);
        assert_eq!(summary(&run)["samples"], 24, "{c}");
        assert_eq!(
            cell_workers(&run),
            [("remote-0".to_string(), u64::from(pid), 24)],
            "{c}"
        );
    }
}
