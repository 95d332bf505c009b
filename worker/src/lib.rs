//! The tresnet-eval worker: the TResNet port on libtorch, device selection and the single-process tools.

#[cfg(feature = "torch")]
pub mod agent;
#[cfg(feature = "torch")]
pub mod bench;
#[cfg(feature = "torch")]
pub mod cli;
#[cfg(feature = "torch")]
pub mod collective;
#[cfg(feature = "torch")]
pub mod collective_check;
#[cfg(feature = "torch")]
pub mod counts;
pub mod dataset_cache;
#[cfg(feature = "torch")]
pub mod device;
#[cfg(feature = "torch")]
pub mod dispatch;
#[cfg(feature = "torch")]
pub mod executor;
pub mod fault;
#[cfg(feature = "torch")]
mod fetch;
pub mod fuzzing;
#[cfg(feature = "torch")]
pub mod infer;
#[cfg(feature = "torch")]
mod job_loop;
#[cfg(feature = "torch")]
pub mod join;
#[cfg(feature = "torch")]
pub mod link;
#[cfg(feature = "torch")]
pub mod metrics;
#[cfg(feature = "torch")]
pub mod model;
#[cfg(feature = "torch")]
mod pool_bench;
pub mod preprocess;
pub mod scoring;
#[cfg(feature = "torch")]
mod shard;
#[cfg(feature = "torch")]
pub mod software;
#[cfg(feature = "torch")]
pub mod stages;
pub mod test_hooks;
#[cfg(feature = "torch")]
pub mod tuning;
