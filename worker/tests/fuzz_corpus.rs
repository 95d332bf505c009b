//! Replays the image fuzz targets' bodies (`tresnet_worker::fuzzing`) over their checked-in seeds
//! (`fuzz/seeds/<target>/`, from ops/reference/gen_fuzz_seeds.py) and crash regressions
//! (`fuzz/regressions/<target>/`) on stable, and checks the seeds are images the pipeline decodes.

use std::path::{Path, PathBuf};

use tresnet_common::preprocess::PreprocessConfig;
use tresnet_worker::fuzzing::{DECODE_MAX_PIXELS, DECODE_RESOLUTION, TARGETS};
use tresnet_worker::preprocess::preprocess;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn inputs(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(dir) = std::fs::read_dir(fuzz_dir().join(kind).join(target)) else {
        return vec![];
    };
    let mut files: Vec<PathBuf> = dir.map(|e| e.unwrap().path()).collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

#[test]
fn image_targets_run_over_their_seeds_and_regressions() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    for (target, body) in TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{target}\"")),
            "no [[bin]] {target}"
        );
        let seeds = inputs("seeds", target);
        assert!(!seeds.is_empty(), "fuzz/seeds/{target}/ has no seeds");
        for (path, bytes) in seeds.iter().chain(&inputs("regressions", target)) {
            let outcome = std::panic::catch_unwind(|| body(bytes));
            assert!(outcome.is_ok(), "{target} panicked on {}", path.display());
        }
    }
}

#[test]
fn image_seeds_decode_under_the_fuzz_pixel_limit() {
    let config = PreprocessConfig {
        max_pixels: DECODE_MAX_PIXELS,
        ..PreprocessConfig::tresnet(DECODE_RESOLUTION)
    };
    let seeds = inputs("seeds", "image_decode");
    assert!(seeds.len() >= 10);
    for (path, bytes) in seeds {
        let image =
            preprocess(&bytes, &config).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(image.width, DECODE_RESOLUTION);
    }
}
