//! Fuzz entry points for the image pipeline, shared by the libFuzzer targets in `fuzz/` and by
//! `worker/tests/fuzz_corpus.rs`, which replays the checked-in corpora on stable (see
//! `tresnet_common::fuzzing` for the parsers in common). They need no libtorch, so `fuzz/` builds this
//! crate without its `torch` feature.

use tresnet_common::preprocess::{CropMode, PreprocessConfig};

use crate::preprocess::Preprocessor;
use crate::preprocess::decode::{DecodeOptions, Decoder};

/// Pixel limit of the full-decode target: large enough for the seed images, small enough that a
/// fuzzed header claiming a big image stops at the size check instead of making each run slow.
pub const DECODE_MAX_PIXELS: u64 = 1 << 16;
/// Output side of the full-decode target; small, because resize cost is not what is being fuzzed.
pub const DECODE_RESOLUTION: u32 = 24;

/// Signature sniffing and header parsing: a pixel limit of 1 refuses every image but 1×1 right
/// after its header has been read, so the fuzzer spends its time in JPEG/PNG headers.
pub fn image_header(data: &[u8]) {
    let _ = Decoder::default().decode(
        data,
        &DecodeOptions {
            max_pixels: 1,
            dct_scaling_target: None,
        },
    );
}

/// The whole per-sample path of the worker — decode, resize, crop — under a small pixel limit, with
/// timm's center crop and with the DCT-scaled squish; the output must have the configured size.
pub fn image_decode(data: &[u8]) {
    let center = PreprocessConfig {
        max_pixels: DECODE_MAX_PIXELS,
        ..PreprocessConfig::tresnet(DECODE_RESOLUTION)
    };
    let squish = PreprocessConfig {
        crop_mode: CropMode::Squish,
        dct_scaling: true,
        ..center.clone()
    };
    for config in [center, squish] {
        let mut pre = Preprocessor::new(config).expect("a valid fixed config");
        if let Ok(image) = pre.run(data) {
            assert_eq!(
                (image.width, image.height),
                (DECODE_RESOLUTION, DECODE_RESOLUTION)
            );
            assert_eq!(image.data.len(), 3 * (DECODE_RESOLUTION as usize).pow(2));
        }
    }
}

/// Every entry point by target name, for the corpus replay test.
pub const TARGETS: &[(&str, tresnet_common::fuzzing::Target)] = &[
    ("image_header", image_header),
    ("image_decode", image_decode),
];
