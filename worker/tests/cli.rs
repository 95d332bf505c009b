//! The real `tresnet-worker` binary: `infer` end to end on fixtures, and its errors and exit codes.

mod common;

use std::process::Command;

fn worker() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tresnet-worker"))
}

#[test]
fn infer_writes_timm_identical_logits() {
    let case = common::case("tresnet_m_64");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("logits.npy");
    let status = worker()
        .args([
            "infer",
            "--model",
            "tresnet_m",
            "--batch-size",
            "4",
            "--weights",
        ])
        .arg(case.weights_dir.join("miil.pth"))
        .arg("--input")
        .arg(case.dir.join("input.npy"))
        .arg("--output")
        .arg(&out)
        // No LD_LIBRARY_PATH: the binary must find libtorch through its rpath.
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let got = common::read(&out);
    let want = common::read(&case.dir.join("logits.npy"));
    let (diff, same_argmax) = common::compare(&got, &want);
    assert!(
        same_argmax && diff / case.sigma <= common::TOLERANCE_IN_SIGMA,
        "{diff}"
    );
}

#[test]
fn infer_errors_name_the_bad_thing_and_exit_nonzero() {
    let case = common::case("tresnet_m_64");
    let dir = tempfile::tempdir().unwrap();
    let weights = case.weights_dir.join("timm.pth");
    let bad_input = dir.path().join("two_channels.npy");
    tresnet_common::npy::write_f32(&bad_input, &[1, 2, 64, 64], &vec![0.5; 2 * 64 * 64]).unwrap();
    let nan_input = dir.path().join("nan.npy");
    let mut v = vec![0.5f32; 3 * 64 * 64];
    v[7] = f32::NAN;
    tresnet_common::npy::write_f32(&nan_input, &[1, 3, 64, 64], &v).unwrap();
    let odd_input = dir.path().join("odd.npy");
    tresnet_common::npy::write_f32(&odd_input, &[1, 3, 66, 64], &vec![0.5; 3 * 66 * 64]).unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--input".into(), bad_input.display().to_string()],
            "3 (RGB) channels",
        ),
        (
            vec!["--input".into(), nan_input.display().to_string()],
            "element 7 is NaN",
        ),
        (
            vec!["--input".into(), odd_input.display().to_string()],
            "multiples of 4",
        ),
        (
            vec![
                "--input".into(),
                dir.path().join("absent.npy").display().to_string(),
            ],
            "absent.npy",
        ),
        (
            vec![
                "--input".into(),
                case.dir.join("input.npy").display().to_string(),
                "--device".into(),
                "cuda:7".into(),
            ],
            "cuda:7",
        ),
        (
            vec![
                "--input".into(),
                case.dir.join("input.npy").display().to_string(),
                "--precision".into(),
                "fp16".into(),
            ],
            "fp16 needs a CUDA device",
        ),
    ];
    for (extra, needle) in cases {
        let out = worker()
            .args(["infer", "--model", "tresnet_m", "--output"])
            .arg(dir.path().join("y.npy"))
            .arg("--weights")
            .arg(&weights)
            .args(&extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{extra:?}: expected {needle:?} in {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{extra:?} panicked: {stderr}");
    }
}

#[test]
fn bad_flags_are_usage_errors() {
    let out = worker()
        .args(["infer", "--model", "resnet50"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("resnet50"));
}

#[test]
fn help_documents_every_infer_flag() {
    let out = worker().args(["infer", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--model",
        "--weights",
        "--input",
        "--output",
        "--device",
        "--precision",
        "--no-fold-bn",
        "--memory-format",
        "--batch-size",
        "--leaky-slope",
        "--threads",
    ] {
        assert!(
            help.contains(flag),
            "{flag} missing from infer --help:\n{help}"
        );
    }
}

fn json_of(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn bench_times_every_device_and_reports_json() {
    let case = common::case("tresnet_m_64");
    let out = worker()
        .args(["bench", "--model", "tresnet_m", "--devices", "cpu,cpu"])
        .args(["--resolution", "64", "--batch-size", "2", "--warmup", "1"])
        .args(["--seconds", "0.2", "--threads", "1", "--weights"])
        .arg(case.weights_dir.join("timm.pth"))
        .output()
        .unwrap();
    let r = json_of(&out);
    assert_eq!(r["model"], "tresnet_m");
    assert_eq!(r["collective"], "local");
    // `auto` and neither BN flag: the layout was measured on each device, and the report says so.
    let layouts = r["layouts"].as_array().unwrap();
    assert_eq!(layouts.len(), 2);
    for l in layouts {
        assert_eq!(l["measured"], true);
        assert_eq!(l["candidates"].as_array().unwrap().len(), 4);
        assert_eq!(l["precision"], "fp32");
    }
    assert_eq!(r["channels_last"], layouts[0]["chosen"]["channels_last"]);
    let devices = r["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2);
    let mut total = 0.0;
    for d in devices {
        let passes = d["passes"].as_u64().unwrap();
        assert!(passes >= 1);
        assert_eq!(d["images"].as_u64().unwrap(), 2 * passes);
        let rate = d["images_per_second"].as_f64().unwrap();
        let secs = d["seconds"].as_f64().unwrap();
        assert!((rate * secs - (2 * passes) as f64).abs() < 1e-6 * rate.max(1.0));
        assert!(d["median_pass_ms"].as_f64().unwrap() > 0.0);
        total += d["images"].as_f64().unwrap();
    }
    let window = devices
        .iter()
        .map(|d| d["seconds"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!((r["images_per_second"].as_f64().unwrap() - total / window).abs() < 1e-6);
}

/// One call sweeps batch sizes and precisions: a cell each, with img/s and p50 <= p90 <= p99 pass
/// latency, as JSON on stdout and a table on stderr; a forced layout measures nothing.
#[test]
fn bench_sweeps_batch_sizes_and_precisions_with_latency_percentiles() {
    let case = common::case("tresnet_m_64");
    let out = worker()
        .args(["bench", "--model", "tresnet_m", "--resolution", "64"])
        .args(["--batch-sizes", "1,2", "--precisions", "fp32,bf16"])
        .args(["--memory-format", "channels-last", "--fold-bn"])
        .args([
            "--warmup",
            "1",
            "--seconds",
            "0.2",
            "--threads",
            "1",
            "--weights",
        ])
        .arg(case.weights_dir.join("timm.pth"))
        .output()
        .unwrap();
    let r = json_of(&out);
    let cells = r["cells"].as_array().unwrap();
    let got: Vec<(String, u64)> = cells
        .iter()
        .map(|c| {
            (
                c["precision"].as_str().unwrap().to_string(),
                c["batch_size"].as_u64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(String, u64)> = [("fp32", 1), ("fp32", 2), ("bf16", 1), ("bf16", 2)]
        .iter()
        .map(|(p, b)| (p.to_string(), *b))
        .collect();
    assert_eq!(got, want);
    for c in cells {
        let (p50, p90, p99) = (
            c["p50_ms"].as_f64().unwrap(),
            c["p90_ms"].as_f64().unwrap(),
            c["p99_ms"].as_f64().unwrap(),
        );
        assert!(0.0 < p50 && p50 <= p90 && p90 <= p99, "{c}");
        assert!(c["images_per_second"].as_f64().unwrap() > 0.0);
        assert_eq!(c["channels_last"], true);
        assert_eq!(c["fold_bn"], true);
        let d = &c["devices"][0];
        assert!(d["p99_ms"].as_f64().unwrap() >= d["p50_ms"].as_f64().unwrap());
    }
    // The top level repeats the first cell, as before the sweep existed.
    assert_eq!(r["batch_size"], 1);
    assert_eq!(r["precision"], "fp32");
    for l in r["layouts"].as_array().unwrap() {
        assert_eq!(l["measured"], false);
    }
    let table = String::from_utf8_lossy(&out.stderr);
    assert!(table.contains("p99 ms"), "{table}");
    assert_eq!(
        table.lines().filter(|l| l.contains("F/NHWC")).count(),
        4,
        "{table}"
    );
}

#[test]
fn bench_and_collective_check_refuse_bad_flags_naming_them() {
    let case = common::case("tresnet_m_64");
    let weights = case.weights_dir.join("timm.pth");
    let cases: [(&[&str], &str); 4] = [
        (&["--resolution", "100"], "multiple of 32"),
        (&["--seconds", "0"], "--seconds"),
        (&["--precision", "fp16"], "fp16 needs a CUDA device"),
        (&["--devices", "cuda:0"], "cuda:0"),
    ];
    for (flags, needle) in cases {
        if flags[1] == "cuda:0" && tch::Cuda::device_count() > 0 {
            continue;
        }
        let out = worker()
            .args(["bench", "--model", "tresnet_m", "--weights"])
            .arg(&weights)
            .args(flags)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flags:?}: {err}");
        assert!(err.contains(needle), "{flags:?}: {err}");
    }
    let missing = worker()
        .args([
            "bench",
            "--model",
            "tresnet_m",
            "--weights",
            "/nonexistent/w.pth",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/w.pth"));
    assert!(!missing.status.success());
}

#[test]
fn collective_check_verifies_every_result_and_names_the_backend() {
    let out = worker()
        .args(["collective-check", "--devices", "cpu,cpu,cpu"])
        .args(["--rounds", "3", "--classes", "50"])
        .output()
        .unwrap();
    let r = json_of(&out);
    assert_eq!(r["backend"], "local");
    assert_eq!(r["world"], 3);
    assert_eq!(r["all_reduce_bytes"], (2 + 50 * 50) * 8);
    // Without NCCL the explicit backend is an error, never a silent fallback.
    let out = worker()
        .args(["collective-check", "--backend", "nccl"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nccl") || err.contains("CUDA"), "{err}");
}
