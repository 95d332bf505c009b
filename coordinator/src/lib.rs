//! The tresnet-eval coordinator: leases shards to workers, accounts every sample exactly once, reports.

pub mod atomic_file;
pub mod cli;
pub mod compare;
pub mod finished_run;
pub mod gate;
pub mod html;
pub mod journal;
pub mod metrics;
pub mod parent_death;
pub mod progress;
pub mod report;
pub mod run;
pub mod scheduler;
pub mod service;
pub mod shard_size;
pub mod shutdown;
pub mod stages;
pub mod sweep;
pub mod table;
pub mod tally;
