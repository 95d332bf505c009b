//! The worker's image pipeline: the pure pixel code lives in `tresnet-imaging` (shared with the
//! coordinator's decoded packs) and is re-exported here; what needs fetch and metrics stays.

#[cfg(feature = "torch")]
pub mod command;
#[cfg(feature = "torch")]
pub(crate) mod prepare;

pub use tresnet_imaging::{
    ImageFormat, PreprocessError, PreprocessedImage, Preprocessor, crop, decode, preprocess,
    resize, to_f32,
};
