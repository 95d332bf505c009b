//! The tresnet-eval coordinator: leases shards to workers, accounts every sample exactly once, reports.

pub mod cli;
pub mod html;
pub mod journal;
pub mod report;
pub mod run;
pub mod scheduler;
pub mod service;
pub mod tally;
