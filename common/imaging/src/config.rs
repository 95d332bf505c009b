//! The preprocessing settings this crate reads, imported in this one place so that moving them to
//! another crate changes one line.

pub use tresnet_formats::preprocess::{CropWindow, PreprocessConfig, PreprocessConfigError};
