//! Types and pure logic shared by the coordinator and the worker; nothing here links libtorch.

pub mod checkpoint;
pub mod dataset;
pub mod error_text;
pub mod fuzzing;
pub mod ids;
pub mod job;
pub mod logging;
pub mod npy;
pub mod observability;
pub mod preprocess;
pub mod protocol;
pub mod scoring;
pub mod software;
pub mod storage;
