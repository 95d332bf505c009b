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
