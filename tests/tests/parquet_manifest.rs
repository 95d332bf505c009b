//! `tresnet-coordinator run --format manifest` on a Parquet manifest (written here with polars) gives
//! the same evaluation as the ImageFolder it lists.

use std::path::Path;

use polars::prelude::*;
use tresnet_tests::{coordinator_run, coordinator_run_on, summary};

fn run_ok(mut cmd: std::process::Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "coordinator failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (top-k classes, top-k logit bits) of every prediction, sorted: key names differ between formats.
fn sorted_predictions(run: &Path) -> Vec<(Vec<u32>, Vec<u32>)> {
    let f = std::fs::File::open(run.join("predictions.parquet")).unwrap();
    let df = ParquetReader::new(f).finish().unwrap();
    let ti = df.column("topk_indices").unwrap().list().unwrap().clone();
    let tl = df.column("topk_logits").unwrap().list().unwrap().clone();
    let mut out: Vec<(Vec<u32>, Vec<u32>)> = (0..df.height())
        .map(|i| {
            let c = ti.get_as_series(i).unwrap();
            let l = tl.get_as_series(i).unwrap();
            (
                c.u32().unwrap().into_no_null_iter().collect(),
                l.f32()
                    .unwrap()
                    .into_no_null_iter()
                    .map(f32::to_bits)
                    .collect(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn parquet_manifest_equals_the_image_folder() {
    let images = tresnet_tests::sample_images();
    // ImageFolder's labels: the class folders in sorted order.
    let mut classes: Vec<_> = std::fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    classes.sort();
    let (mut paths, mut labels, mut names) = (Vec::new(), Vec::new(), Vec::new());
    for (label, class) in classes.iter().enumerate() {
        let mut files: Vec<_> = std::fs::read_dir(class)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files {
            // Absolute paths (hence --allow-absolute-paths): the manifest lives elsewhere on the
            // same (file://) store.
            paths.push(f.to_str().unwrap().to_string());
            labels.push(label as i64);
            names.push(class.file_name().unwrap().to_str().unwrap().to_string());
        }
    }
    let n = paths.len() as u64;
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("manifest.parquet");
    let mut df = DataFrame::new_infer_height(vec![
        Column::new("path".into(), paths),
        Column::new("label".into(), labels),
        Column::new("class_name".into(), names),
    ])
    .unwrap();
    ParquetWriter::new(std::fs::File::create(&manifest).unwrap())
        .finish(&mut df)
        .unwrap();

    let args = ["--local-workers", "1", "--shard-size", "8"];
    let folder = dir.path().join("folder");
    run_ok(coordinator_run(&folder, &args));
    let from_parquet = dir.path().join("parquet");
    run_ok(coordinator_run_on(
        &manifest,
        "manifest",
        &from_parquet,
        &[&args[..], &["--allow-absolute-paths"]].concat(),
    ));

    let (a, b) = (summary(&folder), summary(&from_parquet));
    assert_eq!(b["samples"], n, "{b}");
    for field in [
        "samples",
        "correct1",
        "correct5",
        "bad_samples",
        "top1",
        "top5",
        "nll",
    ] {
        assert_eq!(a[field], b[field], "{field} differs");
    }
    assert_eq!(
        sorted_predictions(&folder),
        sorted_predictions(&from_parquet)
    );
}
