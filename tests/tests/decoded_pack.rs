//! Decoded packs with the real binaries: `pack --decoded` of the sample JPEGs, then `run` over the pack,
//! gives the JPEG run's logits bit for bit and the same report (the same keys, bad samples with the
//! same reasons), on a local folder and on S3 (s3s-fs); the job records the source it was decoded from
//! and spends no time decoding; a run asking for other pixels than the pack holds is refused before
//! any worker starts, naming both settings.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use tresnet_tests::s3::{BUCKET, S3Server};
use tresnet_tests::{
    assert_same_report, bin, coordinator_run_on, copy_dir, output_text, predictions, run_ok,
    sample_images, summary,
};

/// One run shape for every evaluation here: saved logits to compare bit for bit.
const SHAPE: [&str; 8] = [
    "--local-workers",
    "1",
    "--shard-size",
    "8",
    "--batch-size",
    "4",
    "--save-logits",
    "fp32",
];

/// `run`'s preprocessing in [`coordinator_run_on`] (64 px, timm's defaults otherwise).
const RESOLUTION: &str = "64";

fn pack_decoded(data: &Path, out: &str, env: &[(&'static str, String)]) -> String {
    let mut cmd = Command::new(bin("tresnet-coordinator"));
    cmd.args(["pack", "--decoded", "--resolution", RESOLUTION])
        .args(["--format", "imagefolder", "--shard-size", "40KiB"])
        .arg("--data")
        .arg(data)
        .args(["--out", out])
        .envs(env.iter().cloned());
    let o = run_ok(cmd);
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The JPEG run every comparison is made with (once per test process; leftovers of finished test
/// processes are removed).
fn reference() -> &'static Path {
    static REFERENCE: OnceLock<PathBuf> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let parent = Path::new(env!("CARGO_TARGET_TMPDIR"));
        for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(pid) = name.strip_prefix("decoded-reference-")
                && !Path::new("/proc").join(pid).exists()
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = parent.join(format!("decoded-reference-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let run = dir.join("jpeg");
        run_ok(coordinator_run_on(
            &sample_images(),
            "imagefolder",
            &run,
            &SHAPE,
        ));
        run
    })
}

fn job(run: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(run.join("job.json")).unwrap()).unwrap()
}

fn decode_seconds(run: &Path) -> Vec<f64> {
    summary(run)["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["stages"]["decode_seconds"].as_f64())
        .collect()
}

/// Same logits, same report, and the job says where the pixels came from.
fn assert_same_as_jpeg_run(pack_run: &Path, what: &str) {
    let jpeg = reference();
    assert_eq!(
        std::fs::read(jpeg.join("logits.npy")).unwrap(),
        std::fs::read(pack_run.join("logits.npy")).unwrap(),
        "{what}: logits.npy differs from the JPEG run's"
    );
    assert_same_report(jpeg, pack_run, what);
    let (source, packed) = (job(jpeg), job(pack_run));
    assert_eq!(
        packed["decoded"]["source_fingerprint"], source["dataset_fingerprint"],
        "{what}: the job names the source it was decoded from: {packed}"
    );
    assert_eq!(packed["decoded"]["pixels"]["resolution"], 64, "{packed}");
    assert_eq!(
        packed["decoded"]["pixels"]["crop_mode"], "center",
        "{packed}"
    );
    assert_ne!(
        packed["dataset_fingerprint"], source["dataset_fingerprint"],
        "{what}: the pack is another dataset"
    );
    let decode = decode_seconds(pack_run);
    assert!(
        !decode.is_empty() && decode.iter().all(|&s| s == 0.0),
        "{what}: a run over a decoded pack decodes nothing: {decode:?}"
    );
    assert!(
        decode_seconds(jpeg).iter().sum::<f64>() > 0.0,
        "the JPEG run's stage clock saw its decode"
    );
}

#[test]
fn a_run_over_the_decoded_pack_equals_the_jpeg_run_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let pack = dir.path().join("pack");
    let n = std::fs::read_dir(sample_images())
        .unwrap()
        .flatten()
        .map(|d| std::fs::read_dir(d.path()).unwrap().count())
        .sum::<usize>();
    let stdout = pack_decoded(&sample_images(), pack.to_str().unwrap(), &[]);
    assert!(
        stdout.contains(&format!("packed {n} samples (0 bad)")) && stdout.contains("decoded"),
        "{stdout}"
    );
    let shards = std::fs::read_dir(&pack)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tar"))
        .count();
    assert!(shards > 1, "40KiB shards of 12 KiB samples: several shards");
    let run = dir.path().join("run");
    run_ok(coordinator_run_on(&pack, "tar", &run, &SHAPE));
    assert_same_as_jpeg_run(&run, "file pack");
}

#[test]
fn a_decoded_pack_on_s3_equals_the_jpeg_run() {
    let server = S3Server::start();
    let url = format!("s3://{BUCKET}/decoded");
    pack_decoded(&sample_images(), &url, &server.env());
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut cmd = coordinator_run_on(Path::new(&url), "tar", &run, &SHAPE);
    cmd.envs(server.env());
    run_ok(cmd);
    assert_same_as_jpeg_run(&run, "s3 pack");
}

#[test]
fn other_pixel_settings_than_the_packs_are_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let pack = dir.path().join("pack");
    pack_decoded(&sample_images(), pack.to_str().unwrap(), &[]);
    let run = dir.path().join("run");
    let mut extra = SHAPE.to_vec();
    extra.extend(["--crop-pct", "0.95"]);
    let o = coordinator_run_on(&pack, "tar", &run, &extra)
        .output()
        .unwrap();
    let text = output_text(&o);
    assert!(!o.status.success(), "a mismatch must fail: {text}");
    assert!(
        text.contains("decoded pack")
            && text.contains("crop_pct 0.875")
            && text.contains("crop_pct 0.95"),
        "the error names the pack's and the job's settings: {text}"
    );
    assert!(
        !run.join("summary.json").exists(),
        "refused at listing: {text}"
    );
}

#[test]
fn a_bad_jpeg_is_a_bad_sample_of_both_runs_with_the_same_reason() {
    const BROKEN: &str = "coffee/coffee_zz_broken.jpg";
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    copy_dir(&sample_images(), &data);
    std::fs::write(data.join(BROKEN), b"\xff\xd8\xff\xe0 not really a jpeg").unwrap();
    // Batches of one: the JPEG run batches the bad sample's neighbours differently from the pack run
    // (whose listing leaves it out), and libtorch's CPU kernels round a sample's logits differently
    // in a batch of other size or company; alone, each sample's logits must match bit for bit.
    let one_by_one = [
        "--local-workers",
        "1",
        "--shard-size",
        "8",
        "--batch-size",
        "1",
    ];
    let jpeg = dir.path().join("jpeg");
    run_ok(coordinator_run_on(&data, "imagefolder", &jpeg, &one_by_one));
    let pack = dir.path().join("pack");
    let stdout = pack_decoded(&data, pack.to_str().unwrap(), &[]);
    assert!(stdout.contains("(1 bad)"), "{stdout}");
    let packed = dir.path().join("packed");
    run_ok(coordinator_run_on(&pack, "tar", &packed, &one_by_one));
    let (a, b) = (summary(&jpeg), summary(&packed));
    for field in ["samples", "bad_samples", "correct1", "correct5", "top1"] {
        assert_eq!(a[field], b[field], "{field}");
    }
    assert_eq!(a["bad_samples"], 1);
    // Same key, same reason; the index is the listing's (the pack's listing leaves the sample out).
    for field in ["key", "reason"] {
        assert_eq!(a["bad"][0][field], b["bad"][0][field], "{field}: {a} {b}");
    }
    assert_eq!(a["bad"][0]["key"], BROKEN);
    // The JPEG run's bad sample takes an index that the pack's listing leaves out: compare by key.
    let strip = |run: &Path| {
        predictions(run)
            .into_iter()
            .map(|(k, (_, classes, logits))| {
                (k, classes, logits.iter().map(|x| x.to_bits()).collect())
            })
            .collect::<Vec<(String, Vec<u32>, Vec<u32>)>>()
    };
    assert_eq!(strip(&jpeg), strip(&packed));
}

fn sweep_file(dir: &Path, decode_once: bool) -> PathBuf {
    let file = dir.join("sweep.toml");
    let w = tresnet_tests::tresnet_m_weights().display().to_string();
    std::fs::write(
        &file,
        format!(
            r#"
out = "runs"
resolutions = [64]

[[model]]
name = "tresnet_m"
weights = [{{ path = {w:?}, label = "a" }}, {{ path = {w:?}, label = "b" }}]

[[dataset]]
name = "sample"
data = {d:?}
num_classes = 1000
decode_once = {decode_once}

[run]
local-workers = 1
worker-threads = 1
batch-size = 4
save-logits = "fp32"
"#,
            d = sample_images().display().to_string(),
        ),
    )
    .unwrap();
    file
}

fn sweep(file: &Path) -> String {
    let mut cmd = Command::new(bin("tresnet-coordinator"));
    cmd.arg("sweep")
        .arg(file)
        .env("TRESNET_WORKER_BIN", bin("tresnet-worker"))
        .env("TRESNET_MEASURE_LAYOUT", "false")
        .env_remove("TRESNET_TOKEN");
    let o = run_ok(cmd);
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_decode_once_sweep_builds_one_pack_and_its_cells_equal_the_decoding_sweep() {
    const CELLS: [&str; 2] = [
        "tresnet_m-a-sample-64-center-fp32",
        "tresnet_m-b-sample-64-center-fp32",
    ];
    let plain = tempfile::tempdir().unwrap();
    let once = tempfile::tempdir().unwrap();
    sweep(&sweep_file(plain.path(), false));
    let stderr = sweep(&sweep_file(once.path(), true));
    assert_eq!(
        stderr.matches("sweep: building decoded pack").count(),
        1,
        "one pack for two model cells of one (dataset, resolution, crop): {stderr}"
    );
    let packs: Vec<_> = std::fs::read_dir(once.path().join("runs").join("decoded"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(packs, ["sample-64-center"]);
    for cell in CELLS {
        let (a, b) = (
            plain.path().join("runs").join(cell),
            once.path().join("runs").join(cell),
        );
        assert_eq!(
            std::fs::read(a.join("logits.npy")).unwrap(),
            std::fs::read(b.join("logits.npy")).unwrap(),
            "{cell}: logits differ from the decoding sweep's"
        );
        assert_same_report(&a, &b, cell);
        assert!(job(&b)["decoded"].is_object(), "{cell} ran on the pack");
    }
    // A rerun finds the pack complete: nothing decoded again, nothing run again.
    let stderr = sweep(&sweep_file(once.path(), true));
    assert!(
        !stderr.contains("building decoded pack") && stderr.contains("is complete, reused"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("finished earlier, skipping").count(),
        2,
        "{stderr}"
    );
}
