//! Encoded image bytes → the exact uint8 pixels timm's eval transform produces on PIL, as CHW RGB.
//!
//! A pure crate (no libtorch, no I/O) so that both the worker, which runs it per leased sample, and the
//! coordinator, which writes decoded packs (`pack --decoded`), produce the same bytes from one code.
//!
//! The pipeline is `Image.open(f).convert("RGB")` ([`decode`]), torchvision `Resize` with Pillow's
//! bilinear filter ([`resize`]) and `CenterCrop` or the squish of the official 448 recipe ([`crop`]).
//! `ToTensor`'s `/255` happens on the device, so the host ships a quarter of the bytes; [`to_f32`] is
//! the same division on the host for tools and tests. Every failure is a [`PreprocessError`] value.

pub mod config;
pub mod crop;
pub mod decode;
pub mod resize;

use config::{PreprocessConfig, PreprocessConfigError};

pub use decode::ImageFormat;

/// One preprocessed image: `3 × height × width` bytes, channel-major (R plane, G plane, B plane).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreprocessedImage {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

impl PreprocessedImage {
    /// torchvision's `ToTensor`: `u8 as f32 / 255` (a division, which rounds differently from
    /// multiplying by `1/255`), CHW.
    pub fn to_f32(&self) -> Vec<f32> {
        to_f32(&self.data)
    }
}

/// `ToTensor`'s scaling of uint8 samples into [0, 1].
pub fn to_f32(data: &[u8]) -> Vec<f32> {
    data.iter().map(|&v| f32::from(v) / 255.0).collect()
}

/// Why an input could not be turned into pixels. Each one is a per-sample outcome, never a panic.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("empty input (0 bytes)")]
    Empty,
    /// Says nothing of the bytes themselves: the reason reaches reports, and a sample may be any file.
    #[error("not an image: its {len} bytes start with no known image signature (jpeg, png)")]
    NotAnImage { len: usize },
    #[error("unsupported image format {format} (supported: jpeg, png)")]
    UnsupportedFormat { format: &'static str },
    #[error(
        "{format} image of {width}x{height} = {pixels} pixels exceeds the limit of {limit} pixels \
         (decompression bomb?)"
    )]
    TooManyPixels {
        format: ImageFormat,
        width: u64,
        height: u64,
        pixels: u64,
        limit: u64,
    },
    #[error("{format} image has zero size ({width}x{height})")]
    ZeroSize {
        format: ImageFormat,
        width: u64,
        height: u64,
    },
    #[error("truncated {format} ({len} bytes): {detail}")]
    Truncated {
        format: ImageFormat,
        len: usize,
        detail: String,
    },
    #[error("corrupt {format}: {detail}")]
    Corrupt { format: ImageFormat, detail: String },
    #[error("unsupported {format} variant: {detail}")]
    UnsupportedVariant { format: ImageFormat, detail: String },
    #[error("cannot start the jpeg decoder: {0}")]
    DecoderInit(String),
    #[error("invalid preprocessing config: {0}")]
    Config(#[from] PreprocessConfigError),
}

/// Reusable per-thread state: the libjpeg-turbo handle and the pixel buffers live across images.
#[derive(Debug)]
pub struct Preprocessor {
    config: PreprocessConfig,
    decoder: decode::Decoder,
    scratch: resize::ResizeScratch,
}

impl Preprocessor {
    pub fn new(config: PreprocessConfig) -> Result<Self, PreprocessError> {
        config.validate()?;
        Ok(Self {
            config,
            decoder: decode::Decoder::default(),
            scratch: resize::ResizeScratch::default(),
        })
    }

    pub fn config(&self) -> &PreprocessConfig {
        &self.config
    }

    /// Decode, resize and crop one encoded image.
    pub fn run(&mut self, bytes: &[u8]) -> Result<PreprocessedImage, PreprocessError> {
        let cfg = &self.config;
        let decoded = self.decoder.decode(
            bytes,
            &decode::DecodeOptions {
                max_pixels: cfg.max_pixels,
                dct_scaling_target: cfg.dct_scaling.then_some(cfg),
            },
        )?;
        // The geometry is always that of the full-size image, as PIL sees it; a DCT-scaled decode only
        // changes where the resampler reads from.
        let (w, h) = decoded.original_size;
        let target = cfg.resize_target(w, h);
        let window = cfg.crop_window(target.0, target.1);
        let out = crop::resize_and_crop_with(&mut self.scratch, &decoded.image, target, window);
        self.decoder.recycle(decoded.image.data);
        Ok(out)
    }
}

/// One-shot convenience around [`Preprocessor`].
pub fn preprocess(
    bytes: &[u8],
    config: &PreprocessConfig,
) -> Result<PreprocessedImage, PreprocessError> {
    Preprocessor::new(config.clone())?.run(bytes)
}
