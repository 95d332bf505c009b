//! Parsers of untrusted bytes and the pure types around them, with no async runtime and no network
//! stack, so the fuzz targets and anything else that only reads formats builds without tokio, tonic
//! or object_store. `tresnet-common` re-exports these modules where they used to live.
//!
//! | domain | modules |
//! |---|---|
//! | checkpoints | [`checkpoint`] (`.pth` zip, legacy pickle, safetensors, the MIIL → timm remap), [`npy`] |
//! | datasets | [`cifar`] records, [`mat`] (MATLAB v5), [`tar`] (WebDataset shards and their index), [`manifest`] rows, [`image_files`] |
//! | preprocessing | [`preprocess`] (the config in the job spec and timm's eval geometry) |
//! | fuzzing | [`fuzzing`]: one entry point per parser, for `fuzz/` and the stable corpus replay |

pub mod checkpoint;
pub mod cifar;
pub mod fuzzing;
pub mod image_files;
pub mod manifest;
pub mod mat;
pub mod npy;
pub mod preprocess;
pub mod tar;
