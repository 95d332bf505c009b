//! What flows into a run is checked before it can reach a result, with the real binaries: weights that
//! hold NaN are refused at load naming the tensor; a model whose logits overflow fails the run naming
//! the likely cause; manifest rows are confined to the manifest's folder and no error quotes a file's
//! content; labels outside the class count are configuration errors; the class count comes from the
//! checkpoint when the dataset does not fix it; a local file changed after listing is a bad sample.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tresnet_common::checkpoint::{DType, RawTensor, StateDict, load_state_dict};
use tresnet_tests::{
    bin, coordinator_run_on, coordinator_run_unsized, coordinator_run_with, copy_dir, files_under,
    model_fixtures, sample_dataset_size, sample_images, summary, tresnet_m_weights,
};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `sd` as a `.safetensors` file (8-byte header length, JSON header, then the data).
fn write_safetensors(path: &Path, sd: &StateDict) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, t) in sd {
        let dtype = match t.dtype {
            DType::F32 => "F32",
            DType::I64 => "I64",
            other => panic!("{name}: {other:?} not written by this test"),
        };
        let start = data.len();
        data.extend_from_slice(&t.data);
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": t.shape, "data_offsets": [start, data.len()]}),
        );
    }
    let header = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(&data);
    std::fs::write(path, bytes).unwrap();
}

/// The seeded TResNet-M with `edit` applied to one of its tensors, written under `dir`.
fn derived_weights(dir: &Path, name: &str, edit: impl FnOnce(&mut StateDict)) -> PathBuf {
    let mut sd = load_state_dict(&model_fixtures().join("tresnet_m_224/timm.safetensors")).unwrap();
    edit(&mut sd);
    let path = dir.join(name);
    write_safetensors(&path, &sd);
    path
}

fn set_f32(sd: &mut StateDict, key: &str, value: impl Fn(usize) -> f32) {
    let t = sd.get_mut(key).unwrap_or_else(|| panic!("no {key}"));
    assert_eq!(t.dtype, DType::F32);
    let values: Vec<f32> = (0..t.numel()).map(value).collect();
    *t = RawTensor::from_f32(t.shape.clone(), &values);
}

/// No report of any kind: a run that must not produce a top-1 left none behind.
fn assert_no_report(out: &Path) {
    for f in ["summary.json", "outcome.json", "report.html"] {
        assert!(!out.join(f).exists(), "{f} written for a refused run");
    }
}

#[test]
fn weights_holding_nan_are_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let weights = derived_weights(dir.path(), "nan-bias.safetensors", |sd| {
        set_f32(sd, "head.fc.bias", |i| if i == 3 { f32::NAN } else { 0.0 })
    });
    let out = dir.path().join("run");
    let o = coordinator_run_with(&weights, &sample_images(), "imagefolder", &out, &[])
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(!o.status.success(), "exit 0 with NaN weights:\n{err}");
    assert!(
        err.contains("tensor head.fc.bias holds 1 NaN and 0 infinite values among its 1000"),
        "the error names the tensor:\n{err}"
    );
    assert!(!String::from_utf8_lossy(&o.stdout).contains("top-1"));
    assert_no_report(&out);
}

/// Finite weights so large that every logit overflows to inf: the samples are not ranked, and since
/// the whole shard is non-finite the workers refuse the job and the run fails naming the cause.
#[test]
fn a_model_whose_logits_overflow_fails_the_run_naming_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let weights = derived_weights(dir.path(), "huge-head.safetensors", |sd| {
        set_f32(sd, "head.fc.weight", |_| f32::MAX)
    });
    let out = dir.path().join("run");
    let o = coordinator_run_with(
        &weights,
        &sample_images(),
        "imagefolder",
        &out,
        &["--shard-size", "8"],
    )
    .output()
    .unwrap();
    let err = stderr(&o);
    assert!(
        !o.status.success(),
        "exit 0 with overflowing logits:\n{err}"
    );
    assert!(
        err.contains("no worker can run model tresnet_m")
            && err.contains("produced non-finite logits (NaN or inf) for 8 of the 8 samples")
            && err.contains("the weights are likely damaged"),
        "the error names the likely cause:\n{err}"
    );
    assert_no_report(&out);

    // Counts-only workers reduce on the device, and check the rows before they do.
    let out = dir.path().join("counts-run");
    let o = coordinator_run_with(
        &weights,
        &sample_images(),
        "imagefolder",
        &out,
        &["--shard-size", "8", "--counts-only"],
    )
    .output()
    .unwrap();
    let err = stderr(&o);
    assert!(!o.status.success(), "counts-only: exit 0:\n{err}");
    assert!(
        err.contains("produced non-finite logits (NaN or inf) for 8 of the 8 samples"),
        "counts-only:\n{err}"
    );
    assert_no_report(&out);
}

/// A manifest next to a copy of the sample images, one row per image, plus `extra` rows.
fn manifest_dataset(dir: &Path, extra: &[&str]) -> PathBuf {
    let data = dir.join("data");
    copy_dir(&sample_images(), &data);
    let mut text = String::from("path,label\n");
    let mut classes: Vec<String> = Vec::new();
    for f in files_under(&data) {
        let rel = f
            .strip_prefix(&data)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let class = rel.split('/').next().unwrap().to_string();
        if !classes.contains(&class) {
            classes.push(class.clone());
        }
        let label = classes.iter().position(|c| *c == class).unwrap();
        text.push_str(&format!("{rel},{label}\n"));
    }
    for row in extra {
        text.push_str(row);
        text.push('\n');
    }
    std::fs::write(data.join("manifest.csv"), text).unwrap();
    data
}

/// Every file of the run directory and both output streams, as one text.
fn everything_written(out: &Path, o: &Output) -> String {
    let mut all = format!("{}\n{}", String::from_utf8_lossy(&o.stdout), stderr(o));
    if out.exists() {
        for f in files_under(out) {
            all.push_str(&String::from_utf8_lossy(&std::fs::read(f).unwrap()));
        }
    }
    all
}

#[test]
fn manifest_rows_outside_the_dataset_are_refused_and_no_file_content_is_quoted() {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let first_line = passwd.lines().next().unwrap().to_string();
    for (row, what) in [
        ("/etc/passwd,0", "\"/etc/passwd\" is absolute"),
        (
            "file:///etc/hostname,0",
            "\"file:///etc/hostname\" is a URL",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let data = manifest_dataset(dir.path(), &[row]);
        let out = dir.path().join("run");
        let o = coordinator_run_on(&data, "manifest", &out, &[])
            .output()
            .unwrap();
        let err = stderr(&o);
        assert!(!o.status.success(), "{row}: exit 0\n{err}");
        let line = sample_dataset_size() + 2;
        assert!(
            err.contains(&format!("manifest.csv line {line}: path {what}"))
                && err.contains("--allow-absolute-paths"),
            "{row}: the error names the row and the opt-in:\n{err}"
        );
        assert!(!everything_written(&out, &o).contains(&first_line));
        assert_no_report(&out);
    }

    // Opted in, a file that is no image is a bad sample whose reason says so without its bytes.
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret.txt");
    let content = "SECRET-CONTENT-0123456789";
    std::fs::write(&secret, content).unwrap();
    let data = manifest_dataset(dir.path(), &[&format!("{},0", secret.display())]);
    let out = dir.path().join("run");
    let o = coordinator_run_on(&data, "manifest", &out, &["--allow-absolute-paths"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let s = summary(&out);
    assert_eq!(s["bad_samples"], 1, "{s}");
    let reason = s["bad"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("not an image"), "{reason}");
    let written = everything_written(&out, &o);
    let hex: Vec<String> = content
        .bytes()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect();
    for needle in ["SECRET", &hex.join(" ")] {
        assert!(
            !written.contains(needle),
            "{needle:?} leaked into the outputs"
        );
    }
    for f in ["summary.json", "outcome.json", "report.html"] {
        assert!(out.join(f).exists(), "{f}");
    }
}

#[test]
fn a_label_outside_the_class_count_is_a_configuration_error_naming_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let data = manifest_dataset(dir.path(), &[]);
    let text = std::fs::read_to_string(data.join("manifest.csv")).unwrap();
    std::fs::write(
        data.join("manifest.csv"),
        text.replacen(
            "chelsea/chelsea_000.jpg,",
            "chelsea/chelsea_000.jpg,1000",
            1,
        ),
    )
    .unwrap();
    let out = dir.path().join("run");
    // The sample model has 1000 classes; the row now says label 1000x, beyond it.
    let o = coordinator_run_on(&data, "manifest", &out, &[])
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("sample \"chelsea/chelsea_000.jpg\"")
            && err.contains("but the model has 1000 classes (--num-classes)"),
        "{err}"
    );
    assert_no_report(&out);
}

/// `run` on the sample model without `--num-classes`.
fn run_without_num_classes(data: &Path, format: &str, out: &Path) -> Output {
    coordinator_run_unsized(&tresnet_m_weights(), data, format, out, &[])
        .output()
        .unwrap()
}

#[test]
fn the_class_count_comes_from_the_checkpoint_when_the_dataset_does_not_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    // Largest label 92x: the manifest alone would say 92x + 1 classes.
    let data = manifest_dataset(dir.path(), &[]);
    let text = std::fs::read_to_string(data.join("manifest.csv")).unwrap();
    std::fs::write(
        data.join("manifest.csv"),
        text.replacen("chelsea/chelsea_000.jpg,", "chelsea/chelsea_000.jpg,92", 1),
    )
    .unwrap();
    let out = dir.path().join("run");
    let o = run_without_num_classes(&data, "manifest", &out);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(summary(&out)["job"]["num_classes"], 1000);

    // An ImageFolder fixes its class count: a 1000-class head is refused, saying how to insist.
    let out = dir.path().join("folder-run");
    let o = run_without_num_classes(&sample_images(), "imagefolder", &out);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("(imagefolder) has 6 classes but checkpoint")
            && err.contains("has a 1000-class head; pass --num-classes 1000"),
        "{err}"
    );
}

/// One non-UTF-8 file name refuses the dataset once, with every such name (lossily shown), instead of
/// object_store's first error repeated down its chain.
#[test]
fn non_utf8_file_names_refuse_the_dataset_once_naming_each() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    copy_dir(&sample_images(), &data);
    for (class, name) in [("coffee", &b"caf\xe9.jpg"[..]), ("flower", b"\xff.jpg")] {
        std::fs::copy(
            data.join("chelsea/chelsea_000.jpg"),
            data.join(class).join(OsStr::from_bytes(name)),
        )
        .unwrap();
    }
    let out = dir.path().join("run");
    let o = coordinator_run_on(&data, "imagefolder", &out, &[])
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("2 file names under file://")
            && err.contains("coffee/caf\u{fffd}.jpg, flower/\u{fffd}.jpg"),
        "{err}"
    );
    assert_eq!(
        err.matches("caf\u{fffd}.jpg").count(),
        1,
        "said once:\n{err}"
    );
    assert_no_report(&out);
}

/// A local file that grows after the listing (and before its shard is fetched) is a bad sample
/// "changed since listing", not evaluated as if it were the listed file. A manifest's files are not
/// listed, so no size can tell: the file's modification time, later than the listing, does.
#[test]
fn a_local_file_changed_after_listing_is_a_bad_sample() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let data = manifest_dataset(dir.path(), &[]);
    // The last row of the manifest, in the last shard.
    let text = std::fs::read_to_string(data.join("manifest.csv")).unwrap();
    let last = text
        .lines()
        .last()
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_string();
    let out = dir.path().join("run");
    let mut cmd = coordinator_run_on(
        &data,
        "manifest",
        &out,
        &["--shard-size", "2", "--local-workers", "1"],
    );
    // Slow batches: the last shard is fetched seconds after the listing.
    cmd.env(tresnet_tests::BATCH_DELAY_ENV, "200");
    cmd.env("RUST_LOG", "tresnet_coordinator=info");
    let mut run = tresnet_tests::Watched::spawn(cmd, "coordinator");
    // The listing is done once the shards are cut; no worker has started yet.
    run.wait_for_line_containing("cutting the dataset into shards", Duration::from_secs(60));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join(&last))
        .unwrap();
    std::io::Write::write_all(&mut f, b"appended after listing").unwrap();
    drop(f);
    let status = run.wait_exit(Duration::from_secs(180));
    assert!(status.success(), "{}", run.stderr_at_exit());
    let s = summary(&out);
    assert_eq!(s["bad_samples"], 1, "{s}");
    assert_eq!(s["bad"][0]["key"], last.as_str(), "{s}");
    let reason = s["bad"][0]["reason"].as_str().unwrap();
    assert!(reason.ends_with("(changed since listing)"), "{reason}");
}

/// `pack` reads manifests as `run` does: a row outside the manifest's folder needs the same opt-in.
#[test]
fn pack_confines_manifest_rows_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside.jpg");
    std::fs::copy(sample_images().join("chelsea/chelsea_000.jpg"), &outside).unwrap();
    let data = manifest_dataset(dir.path(), &[&format!("{},1", outside.display())]);
    let pack = |out: &str, extra: &[&str]| {
        Command::new(bin("tresnet-coordinator"))
            .args(["pack", "--format", "manifest", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(dir.path().join(out))
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let o = pack("refused", &[]);
    assert!(!o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is absolute, outside the manifest's folder")
            && stderr(&o).contains("--allow-absolute-paths"),
        "{}",
        stderr(&o)
    );
    let o = pack("allowed", &["--allow-absolute-paths"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let packed = String::from_utf8_lossy(&o.stdout).into_owned();
    let n = sample_dataset_size() + 1;
    assert!(
        packed.contains(&format!("packed {n} samples (0 bad)")),
        "{packed}"
    );
    // Any other format has no paths to allow.
    let o = Command::new(bin("tresnet-coordinator"))
        .args(["pack", "--allow-absolute-paths", "--data"])
        .arg(sample_images())
        .arg("--out")
        .arg(dir.path().join("folder"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        stderr(&o).contains("--allow-absolute-paths applies to manifests only"),
        "{}",
        stderr(&o)
    );
}

/// Some samples' logits overflow, most do not (an fp16-like failure confined to a few inputs): those
/// are bad samples with the reason, the rest is scored, and `--on-bad-sample fail` stops on them.
#[test]
fn samples_whose_logits_overflow_are_bad_samples_and_fail_stops_on_them() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--shard-size",
        "64",
        "--batch-size",
        "8",
        "--local-workers",
        "1",
    ];
    // Class 0's logit becomes the sum of the pooled features (all >= 0 after the last ReLU) ...
    let probe = derived_weights(dir.path(), "probe.safetensors", |sd| {
        set_f32(sd, "head.fc.weight", |i| if i < 2048 { 1.0 } else { 0.01 });
        set_f32(sd, "head.fc.bias", |_| 0.0);
    });
    let out = dir.path().join("probe");
    let o = coordinator_run_with(
        &probe,
        &sample_images(),
        "imagefolder",
        &out,
        &[&args[..], &["--save-logits", "fp32"]].concat(),
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let logits = tresnet_common::npy::read_f32(&out.join("logits.npy")).unwrap();
    let classes = logits.shape[1];
    let mut sums: Vec<f32> = logits.data.chunks(classes).map(|row| row[0]).collect();
    sums.sort_by(f32::total_cmp);
    // ... and is scaled so that it overflows for the samples with the largest sums only: a threshold
    // in the widest gap among the top quarter, far from any sample's value.
    let n = sums.len();
    let (at, _) = (n * 3 / 4..n - 1)
        .map(|i| (i, sums[i + 1] / sums[i]))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap();
    assert!(sums[at + 1] / sums[at] > 1.001, "no usable gap: {sums:?}");
    let threshold = (sums[at] + sums[at + 1]) / 2.0;
    let overflowing = n - 1 - at;
    let scale = f32::MAX / threshold;
    let weights = derived_weights(dir.path(), "overflow-some.safetensors", |sd| {
        set_f32(
            sd,
            "head.fc.weight",
            |i| if i < 2048 { scale } else { 0.01 },
        );
        set_f32(sd, "head.fc.bias", |_| 0.0);
    });

    let out = dir.path().join("skip");
    let o = coordinator_run_with(&weights, &sample_images(), "imagefolder", &out, &args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let s = summary(&out);
    assert_eq!(s["bad_samples"], overflowing as u64, "{s}");
    assert_eq!(s["samples"], (n - overflowing) as u64, "{s}");
    for bad in s["bad"].as_array().unwrap() {
        assert_eq!(
            bad["reason"], "logits are not finite (inf in 1 of 1000 classes)",
            "{bad}"
        );
    }
    assert!(
        s["top1"].as_f64().is_some() && s["nll"].as_f64().is_some(),
        "{s}"
    );

    let out = dir.path().join("fail");
    let o = coordinator_run_with(
        &weights,
        &sample_images(),
        "imagefolder",
        &out,
        &[&args[..], &["--on-bad-sample", "fail"]].concat(),
    )
    .output()
    .unwrap();
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("logits are not finite") && err.contains("--on-bad-sample=fail"),
        "{err}"
    );
    assert_no_report(&out);
}
