//! Decoded packs: tar shards ([`super::tar`]) whose image members are already-preprocessed pixels,
//! `3 × R × R` uint8 bytes in CHW order (member extension [`DECODED_EXTENSION`]), written by
//! `tresnet-coordinator pack --decoded` with the exact pipeline the workers run. `dataset.json`
//! names the dataset they were decoded from ([`DecodedPack`]), so a job over a pack records which
//! source and which preprocessing its pixels came from, and a job asking for other pixels is refused.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::DatasetFormat;
use crate::preprocess::{CropMode, PreprocessConfig};

/// Extension of a decoded member: raw RGB, 8 bits per channel, channel-major.
#[doc(inline)]
pub use tresnet_formats::tar::DECODED_EXTENSION;

/// The settings that decide the pixels of a decoded pack. The normalisation (`mean`, `std`) is not one
/// of them: it is applied on the device after `/255`, so jobs with any normalisation share a pack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodedPixels {
    pub resolution: u32,
    pub crop_pct: f64,
    pub crop_mode: CropMode,
    pub max_pixels: u64,
    pub dct_scaling: bool,
}

// `crop_pct` comes from a validated config (finite), so equality is reflexive.
impl Eq for DecodedPixels {}

impl DecodedPixels {
    pub fn of(config: &PreprocessConfig) -> Self {
        Self {
            resolution: config.resolution,
            crop_pct: config.crop_pct,
            crop_mode: config.crop_mode,
            max_pixels: config.max_pixels,
            dct_scaling: config.dct_scaling,
        }
    }

    /// Bytes of one decoded sample.
    pub fn sample_bytes(&self) -> u64 {
        3 * u64::from(self.resolution) * u64::from(self.resolution)
    }
}

impl fmt::Display for DecodedPixels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let crop = match self.crop_mode {
            CropMode::Center => "center",
            CropMode::Squish => "squish",
        };
        write!(
            f,
            "resolution {}, crop_mode {crop}, crop_pct {}, max_pixels {}, dct_scaling {}",
            self.resolution, self.crop_pct, self.max_pixels, self.dct_scaling
        )
    }
}

/// What a decoded pack was made from: recorded in its `dataset.json`, its listing, and the job spec
/// (so in the job identity) of every run over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodedPack {
    /// The source dataset's fingerprint ([`super::DatasetIndex::fingerprint`]).
    pub source_fingerprint: String,
    pub source_format: DatasetFormat,
    pub pixels: DecodedPixels,
}

/// A job asks for other pixels than a decoded pack holds.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "decoded pack {url} holds pixels preprocessed with {pack}, but the job asks for {job}; pack the \
     source again with the job's settings or run with the pack's"
)]
pub struct DecodedMismatch {
    pub url: String,
    pub pack: DecodedPixels,
    pub job: DecodedPixels,
}

impl DecodedPack {
    /// Refuses a job whose pixel settings differ from the pack's (`url` names the pack).
    pub fn check_job(&self, url: &str, job: &PreprocessConfig) -> Result<(), DecodedMismatch> {
        let wanted = DecodedPixels::of(job);
        if wanted == self.pixels {
            return Ok(());
        }
        Err(DecodedMismatch {
            url: url.to_string(),
            pack: self.pixels.clone(),
            job: wanted,
        })
    }

    /// The bytes folded into the pack's listing fingerprint, so two packs of the same source at
    /// different settings never share one.
    pub fn fingerprint_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack() -> DecodedPack {
        DecodedPack {
            source_fingerprint: "f".into(),
            source_format: DatasetFormat::ImageFolder,
            pixels: DecodedPixels::of(&PreprocessConfig::tresnet(64)),
        }
    }

    #[test]
    fn normalisation_is_not_a_pixel_setting() {
        let mut job = PreprocessConfig::tresnet(64);
        job.mean = [0.5; 3];
        job.std = [0.25; 3];
        assert_eq!(pack().check_job("file:///p", &job), Ok(()));
    }

    #[test]
    fn a_mismatch_names_both_settings() {
        let mut job = PreprocessConfig::tresnet(96);
        job.crop_mode = CropMode::Squish;
        let err = pack().check_job("file:///p", &job).unwrap_err().to_string();
        assert!(err.contains("file:///p"), "{err}");
        assert!(err.contains("resolution 64, crop_mode center"), "{err}");
        assert!(err.contains("resolution 96, crop_mode squish"), "{err}");
    }
}
