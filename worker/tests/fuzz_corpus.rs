//! Replays the image fuzz targets' bodies (`tresnet_worker::fuzzing`) over their checked-in seeds
//! (`fuzz/seeds/<target>/`, from ops/reference/gen_fuzz_seeds.py) and crash regressions
//! (`fuzz/regressions/<target>/`) on stable, and checks the seeds are images the pipeline decodes.

use tresnet_common::fuzzing::{corpus as inputs, fuzz_dir, replay};
use tresnet_common::preprocess::PreprocessConfig;
use tresnet_worker::fuzzing::{DECODE_MAX_PIXELS, DECODE_RESOLUTION, TARGETS};
use tresnet_worker::preprocess::preprocess;

#[test]
fn image_targets_run_over_their_seeds_and_regressions() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    for (target, body) in TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{target}\"")),
            "no [[bin]] {target}"
        );
        replay(target, *body);
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
