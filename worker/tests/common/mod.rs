//! Shared by the worker's test binaries: where the generated fixtures are and how logits are compared.
//! Fixtures come from ops/reference/gen_model_fixtures.py via ops/fixtures.sh (run by ops/test.sh).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use tresnet_common::npy;

pub fn fixtures() -> PathBuf {
    let dir = std::env::var_os("TRESNET_FIXTURES").map(PathBuf::from).expect(
        "TRESNET_FIXTURES is not set: run the tests through ops/test.sh, which generates the fixtures",
    );
    assert!(
        dir.join("COMPLETE").exists(),
        "fixtures at {} are incomplete; rerun ops/test.sh",
        dir.display()
    );
    dir
}

pub struct Case {
    pub dir: PathBuf,
    pub model: String,
    pub weights_dir: PathBuf,
    pub sigma: f64,
}

pub fn case(name: &str) -> Case {
    let dir = fixtures().join(name);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap();
    Case {
        weights_dir: fixtures().join(meta["weights_from"].as_str().unwrap()),
        model: meta["model"].as_str().unwrap().to_string(),
        sigma: meta["sigma"].as_f64().unwrap(),
        dir,
    }
}

pub fn read(path: &Path) -> npy::NpyF32 {
    npy::read_f32(path).unwrap_or_else(|e| panic!("{e}"))
}

/// Largest |Δ| between two logit matrices and whether every row's argmax agrees.
pub fn compare(got: &npy::NpyF32, want: &npy::NpyF32) -> (f64, bool) {
    assert_eq!(got.shape, want.shape, "logit shapes differ");
    let classes = want.shape[1];
    let max_diff = got
        .data
        .iter()
        .zip(&want.data)
        .map(|(a, b)| f64::from((a - b).abs()))
        .fold(0.0, f64::max);
    let argmax = |row: &[f32]| {
        row.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0
    };
    let same_argmax = got
        .data
        .chunks(classes)
        .zip(want.data.chunks(classes))
        .all(|(g, w)| argmax(g) == argmax(w));
    (max_diff, same_argmax)
}

/// The parity bar from the foundation issue: equivalent fp32 algorithms differ by ~0.2% of the
/// between-image spread, real bugs by ~100%.
pub const TOLERANCE_IN_SIGMA: f64 = 0.01;
