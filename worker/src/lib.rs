//! The tresnet-eval worker: the TResNet port on libtorch, device selection and the single-process tools.

pub mod cli;
pub mod device;
pub mod infer;
pub mod model;
