//! Two real runs over one dataset whose per-sample correctness differs, for the gate and compare tests.
//!
//! Seeded weights score nothing on the sample photos, so the dataset is relabelled: a first pair of runs
//! (center crop and squish, which rank classes differently) over the sample ImageFolder gives each
//! image's top-1 class; a CSV manifest over copies of the same images then labels three of every four
//! images with the center run's top-1 and the fourth with the squish run's. Over that manifest the
//! center run is right on most images and the squish run on fewer, with discordant pairs both ways.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Output};

use polars::prelude::*;
use tresnet_tests::{coordinator_run, coordinator_run_on, sample_images};

/// One row of predictions.parquet: key, label, ranked classes.
pub type Row = (String, u32, Vec<u32>);

pub struct Paired {
    pub dir: tempfile::TempDir,
    /// Center crop over the sample ImageFolder (another dataset than `a` and `b`).
    pub folder_run: PathBuf,
    /// Center crop over the relabelled manifest.
    pub a: PathBuf,
    /// Squish over the relabelled manifest.
    pub b: PathBuf,
}

pub fn predictions(run: &Path) -> Vec<Row> {
    let f = std::fs::File::open(run.join("predictions.parquet")).unwrap();
    let df = ParquetReader::new(f).finish().unwrap();
    let key = df.column("key").unwrap().str().unwrap().clone();
    let label = df.column("label").unwrap().u32().unwrap().clone();
    let ti = df.column("topk_indices").unwrap().list().unwrap().clone();
    (0..df.height())
        .map(|i| {
            let top = ti
                .get_as_series(i)
                .unwrap()
                .u32()
                .unwrap()
                .into_no_null_iter()
                .collect();
            (key.get(i).unwrap().to_string(), label.get(i).unwrap(), top)
        })
        .collect()
}

/// The rows as JSON (`[{key, label, topk}]`) for the Python reference.
pub fn predictions_json(run: &Path, out: &Path) {
    let rows: Vec<serde_json::Value> = predictions(run)
        .into_iter()
        .map(|(k, l, t)| serde_json::json!({"key": k, "label": l, "topk": t}))
        .collect();
    std::fs::write(out, serde_json::to_vec(&rows).unwrap()).unwrap();
}

fn wait_ok(child: Child, what: &str) {
    let out: Output = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{what} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn spawn(mut cmd: std::process::Command) -> Child {
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_tree(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

pub fn paired_runs() -> Paired {
    let dir = tempfile::tempdir().unwrap();
    let folder_run = dir.path().join("folder-center");
    let folder_squish = dir.path().join("folder-squish");
    let c = spawn(coordinator_run(&folder_run, &[]));
    let s = spawn(coordinator_run(&folder_squish, &["--crop-mode", "squish"]));
    wait_ok(c, "center run over the folder");
    wait_ok(s, "squish run over the folder");
    let center = predictions(&folder_run);
    let squish: std::collections::HashMap<String, u32> = predictions(&folder_squish)
        .into_iter()
        .map(|(k, _, t)| (k, t[0]))
        .collect();
    let data = dir.path().join("data");
    copy_tree(&sample_images(), &data);
    let mut manifest = String::from("path,label\n");
    for (i, (key, _, top)) in center.iter().enumerate() {
        let label = if i % 4 == 3 { squish[key] } else { top[0] };
        manifest += &format!("{key},{label}\n");
    }
    std::fs::write(data.join("manifest.csv"), manifest).unwrap();
    let a = dir.path().join("manifest-center");
    let b = dir.path().join("manifest-squish");
    let ca = spawn(coordinator_run_on(&data, "manifest", &a, &[]));
    let cb = spawn(coordinator_run_on(
        &data,
        "manifest",
        &b,
        &["--crop-mode", "squish"],
    ));
    wait_ok(ca, "center run over the manifest");
    wait_ok(cb, "squish run over the manifest");
    Paired {
        dir,
        folder_run,
        a,
        b,
    }
}
