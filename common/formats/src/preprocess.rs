//! Preprocessing configuration (part of the job spec) and the pure geometry of timm's eval transform.
//!
//! The geometry reproduces torchvision on PIL: `Resize(int(res / crop_pct))` on the shorter side with the
//! long side truncated, then `CenterCrop(res)` with Python's round-half-to-even offsets and zero padding
//! when the crop is larger than the image. The pixel work lives in the worker (`tresnet_worker::preprocess`).

use serde::{Deserialize, Serialize};

/// Pillow's `Image.MAX_IMAGE_PIXELS` (89 478 485). Pillow only warns above it and raises
/// `DecompressionBombError` above twice that, so the error threshold is [`PILLOW_BOMB_PIXELS`].
pub const PILLOW_MAX_IMAGE_PIXELS: u64 = 89_478_485;

/// The pixel count above which Pillow refuses to open an image; our default `max_pixels`.
pub const PILLOW_BOMB_PIXELS: u64 = 2 * PILLOW_MAX_IMAGE_PIXELS;

/// timm's `DEFAULT_CROP_PCT`, and the `val_zoom_factor` of the official TResNet validation.
pub const DEFAULT_CROP_PCT: f64 = 0.875;

/// Largest accepted `resolution`; far above any TResNet recipe, it keeps a typo from allocating GBs.
pub const MAX_RESOLUTION: u32 = 8192;

/// How the resized image becomes a `resolution`×`resolution` square.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum CropMode {
    /// timm/torchvision: shorter side to `int(resolution / crop_pct)`, aspect kept, then a center crop.
    #[default]
    Center,
    /// The official MIIL 448 recipe: `Resize((res, res))`, aspect not kept, no crop; `crop_pct` is unused.
    Squish,
}

/// A crop mode's name that is neither `center` nor `squish`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown crop mode {0:?} (expected center or squish)")]
pub struct UnknownCropMode(pub String);

impl std::str::FromStr for CropMode {
    type Err = UnknownCropMode;
    fn from_str(s: &str) -> Result<Self, UnknownCropMode> {
        match s {
            "center" => Ok(Self::Center),
            "squish" => Ok(Self::Squish),
            other => Err(UnknownCropMode(other.to_string())),
        }
    }
}

/// Everything that decides the pixels a model sees; serialised into the job spec so that every worker
/// preprocesses identically. The fields are also `run` flags (`--resolution`, `--crop-pct`, ...; the
/// normalisation is fixed by the model) and sweep `[run]` keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct PreprocessConfig {
    /// Model input side (TResNet runs at any multiple of 32).
    #[arg(long, default_value_t = DEFAULT_RESOLUTION)]
    pub resolution: u32,
    /// Fraction of the resized shorter side kept by the center crop (timm: 0.875).
    #[arg(long, default_value_t = DEFAULT_CROP_PCT)]
    pub crop_pct: f64,
    /// center (timm) or squish (the official 448 recipe).
    #[arg(long, value_enum, default_value_t = CropMode::Center)]
    pub crop_mode: CropMode,
    /// Per-channel normalisation applied on the device after `/255`; TResNet uses none (0s and 1s).
    #[arg(skip = [0.0; 3])]
    pub mean: [f32; 3],
    #[arg(skip = [1.0; 3])]
    pub std: [f32; 3],
    /// Images with more pixels are refused, as bad samples naming this limit, before any pixel buffer
    /// is allocated (decompression bombs; default: Pillow's limit).
    #[arg(long, default_value_t = PILLOW_BOMB_PIXELS)]
    pub max_pixels: u64,
    /// Let libjpeg-turbo decode large JPEGs at 1/2, 1/4 or 1/8 scale in the DCT domain when the result
    /// still is at least the resize target. Much faster, but the pixels differ from PIL's, so it is off
    /// by default and never part of a parity claim.
    #[arg(long)]
    pub dct_scaling: bool,
}

/// `run --resolution` default: timm's TResNet ImageNet resolution.
pub const DEFAULT_RESOLUTION: u32 = 224;

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self::tresnet(DEFAULT_RESOLUTION)
    }
}

/// A rejected configuration, naming the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PreprocessConfigError {
    #[error("resolution {0} is out of range (1..={MAX_RESOLUTION})")]
    Resolution(u32),
    #[error("crop_pct {0} must be a finite number in (0, 1] or slightly above")]
    CropPct(f64),
    #[error("std[{index}] = {value} must be finite and non-zero")]
    Std { index: usize, value: f32 },
    #[error("mean[{index}] = {value} must be finite")]
    Mean { index: usize, value: f32 },
    #[error("max_pixels must be at least 1")]
    MaxPixels,
    #[error("resize target {0} of resolution {1} at crop_pct {2} is out of range")]
    ScaleSize(f64, u32, f64),
}

impl PreprocessConfig {
    /// timm's eval transform for TResNet (`tresnet_m` pretrained cfg): crop_pct 0.875, bilinear, center
    /// crop, no normalisation (the network was trained on RGB in [0, 1]).
    pub fn tresnet(resolution: u32) -> Self {
        Self {
            resolution,
            crop_pct: DEFAULT_CROP_PCT,
            crop_mode: CropMode::Center,
            mean: [0.0; 3],
            std: [1.0; 3],
            max_pixels: PILLOW_BOMB_PIXELS,
            dct_scaling: false,
        }
    }

    /// The official MIIL validation transform: squish at 448, `Resize(int(res/0.875))` + crop otherwise.
    pub fn tresnet_official(resolution: u32) -> Self {
        let crop_mode = if resolution == 448 {
            CropMode::Squish
        } else {
            CropMode::Center
        };
        Self {
            crop_mode,
            ..Self::tresnet(resolution)
        }
    }

    pub fn validate(&self) -> Result<(), PreprocessConfigError> {
        if self.resolution == 0 || self.resolution > MAX_RESOLUTION {
            return Err(PreprocessConfigError::Resolution(self.resolution));
        }
        // Above 1 torchvision pads with zeros; allowing up to 2 keeps that path usable without letting a
        // typo (87.5 for 0.875) through.
        if !(self.crop_pct.is_finite() && self.crop_pct > 0.0 && self.crop_pct <= 2.0) {
            return Err(PreprocessConfigError::CropPct(self.crop_pct));
        }
        let scale = f64::from(self.resolution) / self.crop_pct;
        if self.crop_mode == CropMode::Center
            && !(1.0..=f64::from(MAX_RESOLUTION) * 8.0).contains(&scale)
        {
            return Err(PreprocessConfigError::ScaleSize(
                scale,
                self.resolution,
                self.crop_pct,
            ));
        }
        for (index, &value) in self.std.iter().enumerate() {
            if !value.is_finite() || value == 0.0 {
                return Err(PreprocessConfigError::Std { index, value });
            }
        }
        for (index, &value) in self.mean.iter().enumerate() {
            if !value.is_finite() {
                return Err(PreprocessConfigError::Mean { index, value });
            }
        }
        if self.max_pixels == 0 {
            return Err(PreprocessConfigError::MaxPixels);
        }
        Ok(())
    }

    /// The shorter-side target of the resize: timm's `math.floor(img_size / crop_pct)`.
    pub fn scale_size(&self) -> u32 {
        (f64::from(self.resolution) / self.crop_pct).floor() as u32
    }

    /// (width, height) the decoded image is resized to before cropping.
    pub fn resize_target(&self, width: u32, height: u32) -> (u32, u32) {
        match self.crop_mode {
            CropMode::Center => shorter_side_resize(width, height, self.scale_size()),
            CropMode::Squish => (self.resolution, self.resolution),
        }
    }

    /// Where the `resolution`² output window sits in the resized image (see [`CropWindow`]).
    pub fn crop_window(&self, resized_width: u32, resized_height: u32) -> CropWindow {
        CropWindow {
            left: center_crop_offset(resized_width, self.resolution),
            top: center_crop_offset(resized_height, self.resolution),
            width: self.resolution,
            height: self.resolution,
        }
    }
}

/// torchvision's `_compute_resized_output_size` for an int `size`: the shorter side becomes `size`, the
/// longer `int(size * long / short)` (a float division, truncated). Returns (width, height).
pub fn shorter_side_resize(width: u32, height: u32, size: u32) -> (u32, u32) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    if short == 0 {
        return (width, height);
    }
    // Python evaluates `size * long` exactly as an int and then divides as a correctly rounded double;
    // both operands are below 2^53, so the f64 division here rounds identically.
    let new_long = ((u64::from(size) * u64::from(long)) as f64 / f64::from(short)) as u32;
    if width <= height {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// torchvision `center_crop` offset along one axis: `int(round((in - crop) / 2))` with Python's
/// round-half-to-even, or, when the image is smaller, minus the left/top zero padding `(crop - in) // 2`.
pub fn center_crop_offset(input: u32, crop: u32) -> i64 {
    if input >= crop {
        (f64::from(input - crop) / 2.0).round_ties_even() as i64
    } else {
        -i64::from((crop - input) / 2)
    }
}

/// A `width`×`height` window whose top-left corner is at (`left`, `top`) in the resized image. Negative
/// offsets mean zero padding (torchvision pads before cropping when the image is smaller than the crop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropWindow {
    pub left: i64,
    pub top: i64,
    pub width: u32,
    pub height: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tresnet_defaults_match_timm() {
        let c = PreprocessConfig::default();
        assert_eq!(c.resolution, 224);
        assert_eq!(c.scale_size(), 256);
        assert_eq!(PreprocessConfig::tresnet(448).scale_size(), 512);
        assert_eq!(c.mean, [0.0; 3]);
        assert_eq!(c.std, [1.0; 3]);
        assert_eq!(c.max_pixels, 178_956_970);
        assert!(!c.dct_scaling);
        assert_eq!(
            PreprocessConfig::tresnet_official(448).crop_mode,
            CropMode::Squish
        );
        assert_eq!(
            PreprocessConfig::tresnet_official(224).crop_mode,
            CropMode::Center
        );
        c.validate().unwrap();
    }

    #[test]
    fn resize_target_truncates_the_long_side() {
        // Values checked against torchvision.transforms.functional._compute_resized_output_size.
        assert_eq!(shorter_side_resize(500, 375, 256), (341, 256));
        assert_eq!(shorter_side_resize(375, 500, 256), (256, 341));
        assert_eq!(shorter_side_resize(1200, 90, 256), (3413, 256));
        assert_eq!(shorter_side_resize(17, 23, 256), (256, 346));
        assert_eq!(shorter_side_resize(256, 256, 256), (256, 256));
        assert_eq!(shorter_side_resize(640, 427, 256), (383, 256));
        let squish = PreprocessConfig {
            crop_mode: CropMode::Squish,
            ..PreprocessConfig::tresnet(448)
        };
        assert_eq!(squish.resize_target(1200, 90), (448, 448));
    }

    #[test]
    fn crop_offsets_round_half_to_even() {
        // (341 - 224) / 2 = 58.5 -> 58; (343 - 224) / 2 = 59.5 -> 60.
        assert_eq!(center_crop_offset(341, 224), 58);
        assert_eq!(center_crop_offset(343, 224), 60);
        assert_eq!(center_crop_offset(256, 224), 16);
        assert_eq!(center_crop_offset(224, 224), 0);
        // Smaller than the crop: padding of (crop - in) // 2 on the leading side.
        assert_eq!(center_crop_offset(200, 224), -12);
        assert_eq!(center_crop_offset(201, 224), -11);
    }

    #[test]
    fn config_round_trips_through_json_and_rejects_bad_values() {
        let c = PreprocessConfig {
            crop_mode: CropMode::Squish,
            dct_scaling: true,
            ..PreprocessConfig::tresnet(448)
        };
        let s = serde_json::to_string(&c).unwrap();
        assert!(s.contains("\"crop_mode\":\"squish\""), "{s}");
        let back: PreprocessConfig = serde_json::from_str(&s).unwrap();
        assert_eq!(back, c);
        let partial: PreprocessConfig = serde_json::from_str(r#"{"resolution": 448}"#).unwrap();
        assert_eq!(partial, PreprocessConfig::tresnet(448));
        assert!(serde_json::from_str::<PreprocessConfig>(r#"{"resolutoin": 448}"#).is_err());

        let bad = |f: fn(&mut PreprocessConfig)| {
            let mut c = PreprocessConfig::default();
            f(&mut c);
            c.validate().unwrap_err().to_string()
        };
        assert!(bad(|c| c.resolution = 0).contains("resolution 0"));
        assert!(bad(|c| c.crop_pct = 87.5).contains("crop_pct 87.5"));
        assert!(bad(|c| c.crop_pct = f64::NAN).contains("crop_pct NaN"));
        assert!(bad(|c| c.std[1] = 0.0).contains("std[1]"));
        assert!(bad(|c| c.max_pixels = 0).contains("max_pixels"));
        assert_eq!("squish".parse::<CropMode>(), Ok(CropMode::Squish));
        assert_eq!(
            "crop".parse::<CropMode>().unwrap_err().to_string(),
            "unknown crop mode \"crop\" (expected center or squish)"
        );
    }

    proptest! {
        #[test]
        fn resize_keeps_the_short_side_and_never_grows_the_aspect(
            w in 1u32..20_000, h in 1u32..20_000, size in 1u32..2048,
        ) {
            let (nw, nh) = shorter_side_resize(w, h, size);
            prop_assert_eq!(nw.min(nh), size);
            // Truncation: the new long side never exceeds the exact ratio.
            let (short, long) = (w.min(h) as f64, w.max(h) as f64);
            prop_assert!(nw.max(nh) as f64 <= size as f64 * long / short);
            prop_assert!(nw.max(nh) as f64 > size as f64 * long / short - 1.0);
        }

        #[test]
        fn crop_window_stays_inside_or_pads_symmetrically(input in 1u32..5000, crop in 1u32..2048) {
            let off = center_crop_offset(input, crop);
            if input >= crop {
                prop_assert!(off >= 0 && off as u64 + crop as u64 <= input as u64);
                // Centered to within half a pixel.
                let slack = (input - crop) as i64 - 2 * off;
                prop_assert!(slack.abs() <= 1);
            } else {
                let pad_left = -off;
                let pad_right = crop as i64 - input as i64 - pad_left;
                prop_assert!(pad_right == pad_left || pad_right == pad_left + 1);
            }
        }
    }
}
