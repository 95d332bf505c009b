//! Preprocessing parity with timm's eval transform on PIL, and bad inputs as error values.
//!
//! Fixtures come from ops/reference/gen_preprocess_fixtures.py via ops/fixtures.sh (run by ops/test.sh):
//! real photos re-encoded in every JPEG/PNG flavour at several sizes, with the tensors timm produced.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use tresnet_common::preprocess::{CropMode, PreprocessConfig};
use tresnet_worker::preprocess::{PreprocessError, Preprocessor};

// Issue 3 accepted mean |Δ| <= 0.5/255 and max |Δ| <= 2/255, but the pipeline is bit-exact on every
// case, and the optimised resampler must stay so: a single differing pixel is a failure, so that a
// rounding slip in a fast path cannot hide inside a tolerance.

fn fixtures() -> PathBuf {
    let dir = std::env::var_os("TRESNET_PREPROCESS_FIXTURES")
        .map(PathBuf::from)
        .expect(
            "TRESNET_PREPROCESS_FIXTURES is not set: run the tests through ops/test.sh, which \
             generates the fixtures (ops/fixtures.sh)",
        );
    assert!(
        dir.join("COMPLETE").exists(),
        "preprocess fixtures at {} are incomplete; rerun ops/test.sh",
        dir.display()
    );
    dir
}

fn manifest() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixtures().join("manifest.json")).unwrap()).unwrap()
}

/// Reads the generator's uint8 `.npy` (`|u1`, C order); returns (shape, data).
fn read_npy_u8(path: &Path) -> (Vec<usize>, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(bytes.starts_with(b"\x93NUMPY"), "{}", path.display());
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + len]).unwrap();
    assert!(header.contains("'descr': '|u1'"), "{header}");
    assert!(header.contains("'fortran_order': False"), "{header}");
    let shape_src = header.split("'shape': (").nth(1).unwrap();
    let shape = shape_src[..shape_src.find(')').unwrap()]
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    (shape, bytes[start + len..].to_vec())
}

fn squish448() -> PreprocessConfig {
    PreprocessConfig {
        crop_mode: CropMode::Squish,
        ..PreprocessConfig::tresnet(448)
    }
}

/// Deviation of our `ToTensor` output from timm's tensor (`want / 255`), in units of 1/255.
#[derive(Debug, Default, Clone, Copy)]
struct Diff {
    mean: f64,
    max: f64,
    differing: usize,
}

fn compare(got: &[f32], want_u8: &[u8]) -> Diff {
    assert_eq!(got.len(), want_u8.len());
    let mut d = Diff::default();
    let mut sum = 0.0;
    for (&g, &w) in got.iter().zip(want_u8) {
        let want = f32::from(w) / 255.0;
        let delta = f64::from((g - want).abs()) * 255.0;
        sum += delta;
        d.max = d.max.max(delta);
        d.differing += usize::from(g != want);
    }
    d.mean = sum / got.len() as f64;
    d
}

#[derive(Default)]
struct Tally {
    images: usize,
    exact: usize,
    worst_mean: f64,
    worst_max: f64,
}

#[test]
fn matches_timm_on_every_encoding_and_size() {
    let dir = fixtures();
    let m = manifest();
    let modes = [
        ("center224", PreprocessConfig::tresnet(224)),
        ("squish448", squish448()),
    ];
    let mut preprocessors: Vec<_> = modes
        .iter()
        .map(|(tag, cfg)| (*tag, Preprocessor::new(cfg.clone()).unwrap()))
        .collect();
    let mut failures = Vec::new();
    let mut by_encoding: BTreeMap<(String, &str), Tally> = BTreeMap::new();
    println!(
        "versions: {}",
        serde_json::to_string(&m["versions"]).unwrap()
    );
    println!(
        "{:<52} {:<10} {:>9} {:>9} {:>9}",
        "case", "mode", "mean|Δ|", "max|Δ|", "differ"
    );
    for case in m["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let encoding = case["encoding"].as_str().unwrap().to_string();
        let bytes = std::fs::read(dir.join(case["file"].as_str().unwrap())).unwrap();
        for (tag, p) in &mut preprocessors {
            let (shape, want) = read_npy_u8(&dir.join(format!("cases/{name}.{tag}.npy")));
            let got = match p.run(&bytes) {
                Ok(img) => img,
                Err(e) => {
                    failures.push(format!("{name} {tag}: {e}"));
                    continue;
                }
            };
            assert_eq!(
                shape,
                [3, got.height as usize, got.width as usize],
                "{name} {tag}"
            );
            let d = compare(&got.to_f32(), &want);
            println!(
                "{name:<52} {tag:<10} {:>9.4} {:>9.1} {:>9}",
                d.mean, d.max, d.differing
            );
            let t = by_encoding.entry((encoding.clone(), *tag)).or_default();
            t.images += 1;
            t.exact += usize::from(d.differing == 0);
            t.worst_mean = t.worst_mean.max(d.mean);
            t.worst_max = t.worst_max.max(d.max);
            if d.differing != 0 {
                failures.push(format!(
                    "{name} {tag}: {} values differ, mean |Δ| {:.4}/255, max |Δ| {:.1}/255",
                    d.differing, d.mean, d.max
                ));
            }
        }
    }
    println!("\nper encoding (Δ in units of 1/255):");
    println!(
        "{:<22} {:<10} {:>7} {:>11} {:>10} {:>9}",
        "encoding", "mode", "images", "bit-exact", "worst mean", "worst max"
    );
    for ((enc, tag), t) in &by_encoding {
        println!(
            "{enc:<22} {tag:<10} {:>7} {:>11} {:>10.4} {:>9.1}",
            t.images, t.exact, t.worst_mean, t.worst_max
        );
    }
    assert!(
        by_encoding.values().map(|t| t.images).sum::<usize>() >= 100,
        "too few cases"
    );
    assert!(
        failures.is_empty(),
        "parity failures:\n{}",
        failures.join("\n")
    );
}

/// What each `bad/` fixture must produce; the generator recorded that Pillow refuses it too (except
/// for formats Pillow reads and this pipeline does not).
fn kind_matches(kind: &str, e: &PreprocessError) -> bool {
    match kind {
        "empty" => matches!(e, PreprocessError::Empty),
        "not_an_image" => matches!(e, PreprocessError::NotAnImage { .. }),
        "truncated" => matches!(e, PreprocessError::Truncated { .. }),
        "corrupt_or_truncated" => matches!(
            e,
            PreprocessError::Corrupt { .. } | PreprocessError::Truncated { .. }
        ),
        "unsupported" => matches!(e, PreprocessError::UnsupportedFormat { .. }),
        "too_many_pixels" => matches!(e, PreprocessError::TooManyPixels { .. }),
        other => panic!("unknown kind {other} in the manifest"),
    }
}

#[test]
fn bad_inputs_are_errors_with_reasons() {
    let dir = fixtures();
    let mut p = Preprocessor::new(PreprocessConfig::default()).unwrap();
    let bad = manifest()["bad"].as_array().unwrap().clone();
    assert!(bad.len() >= 14);
    for b in &bad {
        let name = b["name"].as_str().unwrap();
        let kind = b["kind"].as_str().unwrap();
        let bytes = std::fs::read(dir.join(b["file"].as_str().unwrap())).unwrap();
        let err = p
            .run(&bytes)
            .expect_err(&format!("{name} was accepted (Pillow: {})", b["pil_error"]));
        println!("{name:<34} -> {err}");
        assert!(
            kind_matches(kind, &err),
            "{name}: expected {kind}, got {err:?}"
        );
        if kind == "too_many_pixels" {
            assert!(
                err.to_string().contains("50000x50000 = 2500000000 pixels")
                    && err.to_string().contains("178956970"),
                "{err}"
            );
        }
    }
    // The same decoder keeps working after every failure.
    let good = std::fs::read(first_case_file(&dir, "jpeg_420")).unwrap();
    p.run(&good).unwrap();
}

#[test]
fn the_pixel_limit_is_configurable() {
    let dir = fixtures();
    let bytes = std::fs::read(first_case_file(&dir, "jpeg_420")).unwrap();
    let cfg = PreprocessConfig {
        max_pixels: 100,
        ..PreprocessConfig::default()
    };
    let tiny_ok = std::fs::read(first_case_file_of_size(&dir, "png_rgb", "tiny")).unwrap();
    let mut p = Preprocessor::new(cfg).unwrap();
    assert!(matches!(
        p.run(&bytes),
        Err(PreprocessError::TooManyPixels { limit: 100, .. })
    ));
    // 17x23 = 391 pixels.
    assert!(matches!(
        p.run(&tiny_ok),
        Err(PreprocessError::TooManyPixels { pixels: 391, .. })
    ));
}

fn first_case_file(dir: &Path, encoding: &str) -> PathBuf {
    first_case_file_of_size(dir, encoding, "imagenet")
}

fn first_case_file_of_size(dir: &Path, encoding: &str, size: &str) -> PathBuf {
    let m = manifest();
    let case = m["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["encoding"] == encoding && c["size"] == size)
        .unwrap_or_else(|| panic!("no {encoding} {size} case"));
    dir.join(case["file"].as_str().unwrap())
}

/// The opt-in DCT-domain reduced decode changes pixels; this measures by how much (not a parity claim).
#[test]
fn dct_scaling_effect_is_measured() {
    let dir = fixtures();
    let m = manifest();
    let mut exact = Preprocessor::new(PreprocessConfig::default()).unwrap();
    let mut fast = Preprocessor::new(PreprocessConfig {
        dct_scaling: true,
        ..PreprocessConfig::default()
    })
    .unwrap();
    println!("dct_scaling at 224 center vs PIL (units of 1/255):");
    let mut scaled_any = false;
    for case in m["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        if !name.starts_with("jpeg") || case["size"] != "large" {
            continue;
        }
        let bytes = std::fs::read(dir.join(case["file"].as_str().unwrap())).unwrap();
        let (_, want) = read_npy_u8(&dir.join(format!("cases/{name}.center224.npy")));
        let a = exact.run(&bytes).unwrap();
        let b = fast.run(&bytes).unwrap();
        let (da, db) = (compare(&a.to_f32(), &want), compare(&b.to_f32(), &want));
        println!(
            "  {name:<48} exact: mean {:.4} max {:.0}; dct-scaled: mean {:.3} max {:.0}",
            da.mean, da.max, db.mean, db.max
        );
        scaled_any |= db.differing > 0;
        // A reduced decode is a different but close image, never garbage.
        assert!(db.mean < 8.0, "{name}: dct-scaled mean |Δ| {}", db.mean);
    }
    assert!(scaled_any, "no large JPEG was decoded at reduced size");
}

#[test]
fn cli_writes_the_float_tensor_timm_makes() {
    let dir = fixtures();
    let image = first_case_file(&dir, "jpeg_progressive");
    let name = image.file_stem().unwrap().to_str().unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    for (tag, mode, res) in [
        ("center224", "center", "224"),
        ("squish448", "squish", "448"),
    ] {
        let out = tmp.path().join(format!("{tag}.npy"));
        let status = Command::new(env!("CARGO_BIN_EXE_tresnet-worker"))
            .args(["preprocess", "--image"])
            .arg(&image)
            .args(["--resolution", res, "--crop-mode", mode, "--output"])
            .arg(&out)
            .env_remove("LD_LIBRARY_PATH")
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        let got = tresnet_common::npy::read_f32(&out).unwrap();
        let (shape, want) = read_npy_u8(&dir.join(format!("cases/{name}.{tag}.npy")));
        assert_eq!(got.shape[0], 1);
        assert_eq!(got.shape[1..], shape[..]);
        let d = compare(&got.data, &want);
        assert_eq!(d.differing, 0, "{tag}: {d:?}");
    }
}

#[test]
fn cli_names_the_bad_image_and_exits_nonzero() {
    let dir = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let bad = dir.join("bad/truncated_half.jpg");
    let out = Command::new(env!("CARGO_BIN_EXE_tresnet-worker"))
        .args(["preprocess", "--image"])
        .arg(&bad)
        .arg("--output")
        .arg(tmp.path().join("x.npy"))
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("truncated_half.jpg") && stderr.contains("truncated jpeg"),
        "{stderr}"
    );
    assert!(!tmp.path().join("x.npy").exists());
    let bad_flag = Command::new(env!("CARGO_BIN_EXE_tresnet-worker"))
        .args([
            "preprocess",
            "--image",
            "x.jpg",
            "--output",
            "y.npy",
            "--crop-pct",
            "87.5",
        ])
        .output()
        .unwrap();
    assert!(!bad_flag.status.success());
    assert!(String::from_utf8_lossy(&bad_flag.stderr).contains("crop_pct 87.5"));
}

#[test]
fn help_documents_every_preprocess_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_tresnet-worker"))
        .args(["preprocess", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--image",
        "--resolution",
        "--crop-mode",
        "--crop-pct",
        "--dct-scaling",
        "--max-pixels",
        "--output",
        "[default: 224]",
        "[default: center]",
        "[default: 0.875]",
    ] {
        assert!(
            help.contains(flag),
            "{flag} missing from preprocess --help:\n{help}"
        );
    }
}
