//! Types and pure logic shared by the coordinator and the worker; nothing here links libtorch.

pub mod dataset;
pub mod error_text;
pub mod fuzzing;
pub mod ids;
pub mod job;
pub mod logging;
pub mod observability;
pub mod protocol;
pub mod scoring;
pub mod software;
pub mod storage;

// The parsers and the preprocessing config live in `tresnet-formats` (no async runtime, no network);
// re-exported where they always were.
pub use tresnet_formats::{checkpoint, npy, preprocess};
