//! The tresnet-eval worker: the TResNet port on libtorch, device selection and the single-process tools.

pub mod agent;
pub mod cli;
pub mod collective;
pub mod device;
pub mod executor;
pub mod infer;
pub mod join;
pub mod metrics;
pub mod model;
pub mod preprocess;
pub mod scoring;
