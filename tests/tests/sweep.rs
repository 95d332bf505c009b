//! `tresnet-coordinator sweep`: a 2×2 matrix (resolutions × crop modes) of real runs gives one run
//! directory per cell and sweep tables with the runs' own numbers; a rerun does no work, and a cell
//! whose summary is gone is the only one run again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::SystemTime;

use polars::prelude::*;
use tresnet_tests::{bin, sample_images, summary, tresnet_m_weights};

const CELLS: [&str; 4] = [
    "tresnet_m-seeded-sample-64-center-fp32",
    "tresnet_m-seeded-sample-64-squish-fp32",
    "tresnet_m-seeded-sample-96-center-fp32",
    "tresnet_m-seeded-sample-96-squish-fp32",
];

fn sweep(file: &Path) -> Output {
    let o = Command::new(bin("tresnet-coordinator"))
        .arg("sweep")
        .arg(file)
        .env("TRESNET_WORKER_BIN", bin("tresnet-worker"))
        .env_remove("TRESNET_TOKEN")
        .output()
        .unwrap();
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

#[test]
fn two_by_two_sweep_writes_cells_and_tables_and_a_rerun_skips_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sweep.toml");
    std::fs::write(
        &file,
        format!(
            r#"
out = "runs"
resolutions = [64, 96]
crop_modes = ["center", "squish"]

[[model]]
name = "tresnet_m"
weights = [{{ path = {w:?}, label = "seeded" }}]

[[dataset]]
name = "sample"
data = {d:?}
num_classes = 1000

[run]
local-workers = 1
worker-threads = 1
batch-size = 8
"#,
            w = tresnet_m_weights().display().to_string(),
            d = sample_images().display().to_string(),
        ),
    )
    .unwrap();
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
