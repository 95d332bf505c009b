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

/// The intra-op thread count ops/reference/gen_model_fixtures.py gave torch:
/// `max(1, os.cpu_count())`, which on Linux is the number of online CPUs. Bit-identical logits need the
/// same count here, because libtorch splits a convolution's or matmul's reductions by thread (one
/// thread instead of two moved tresnet_m_224's logits by 6.9e-6).
pub fn generator_threads() -> i32 {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| count_cpu_list(s.trim()));
    online
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
        .max(1) as i32
}

/// The number of CPUs in a kernel CPU list such as `0-3,8,10-11`.
fn count_cpu_list(list: &str) -> Option<usize> {
    list.split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => Some(b.parse::<usize>().ok()? + 1 - a.parse::<usize>().ok()?),
            None => part.parse::<usize>().ok().map(|_| 1),
        })
        .sum()
}
