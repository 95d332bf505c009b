//! The files of a run directory and what is stored in them (docs/run-directory.md is the schema):
//! their names, summary.json's [`Summary`], outcome.json's [`Outcome`] and the parts they hold.
//! [`crate::report`] writes them, [`crate::html`] renders them, [`crate::rescore`] and
//! [`crate::finished_run`] read them back; this module depends on none of those, so none of them
//! depends on another to know what a run directory holds.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tresnet_common::dataset::ExcludedSample;
use tresnet_common::job::JobSpec;
use tresnet_common::preprocess::PreprocessConfig;
use tresnet_common::software::WorkerSoftware;

use crate::stages::{LayoutSummary, WorkerStages};
use crate::stats::Interval;
use crate::tally::{Averages, BadSample, ReliabilityBin};

/// The job as it was run (a [`JobSpec`]); with [`OUTCOME_FILE`] and [`PREDICTIONS_FILE`] all
/// `report` needs to rebuild the rest.
pub const JOB_FILE: &str = "job.json";
/// [`Outcome`].
pub const OUTCOME_FILE: &str = "outcome.json";
/// [`Summary`].
pub const SUMMARY_FILE: &str = "summary.json";
/// One row per evaluated sample (absent in counts-only runs, which store [`COUNTS_FILE`] instead).
pub const PREDICTIONS_FILE: &str = "predictions.parquet";
/// One row per class, in parquet and in CSV.
pub const PER_CLASS_PARQUET: &str = "per_class.parquet";
pub const PER_CLASS_CSV: &str = "per_class.csv";
/// The sparse confusion matrix.
pub const CONFUSION_FILE: &str = "confusion.parquet";
/// The page [`crate::html`] draws.
pub const REPORT_FILE: &str = "report.html";
/// Every sample's logits, when the job saved them.
pub const LOGITS_FILE: &str = "logits.npy";
/// Where a counts-only run stores its summed counts (protobuf `ShardCounts`, the message workers send).
pub const COUNTS_FILE: &str = "counts.pb";

/// Where a run scored on a class subset records it: one row per subset class, `subset_index` (the
/// index every report uses) → `class_index` (the model's output) and `class_name`.
pub const CLASS_SUBSET_FILE: &str = "class_subset.csv";

/// A shard that failed every attempt, with its samples.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FailedShard {
    pub shard: u64,
    pub samples: Vec<String>,
    pub reasons: Vec<String>,
}

/// One accepted shard result: when (coordinator clock, ms since the coordinator started), from which
/// worker, how many samples. The report's throughput-over-time chart is drawn from these.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TimelineEvent {
    pub t_ms: u64,
    pub worker: String,
    pub shard: u64,
    pub samples: u64,
}

/// A worker that contributed results in this coordinator process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerSummary {
    pub id: String,
    pub hostname: String,
    pub devices: Vec<String>,
    /// Samples of the shards accepted from it (first complete result wins; duplicates not counted).
    pub accepted_samples: u64,
    /// Process id on its host (0 in run directories written before it was recorded).
    #[serde(default)]
    pub pid: u32,
    /// What it computed with, as it reported at registration.
    #[serde(default)]
    pub software: Option<WorkerSoftware>,
    /// Its submissions refused as invalid (each failed its shard's attempt; none is in the numbers).
    #[serde(default)]
    pub submissions_rejected: u64,
    /// Where its time went in this job, from its last shard trailer (absent for synthetic-only or
    /// older workers and in run directories written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages: Option<WorkerStages>,
    /// How each of its devices' model layout was chosen (measured at load or forced).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layouts: Vec<LayoutSummary>,
}

/// Versions of the software that produced the numbers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Software {
    pub tresnet_eval: String,
    pub protocol_version: u32,
    /// The libtorch versions the workers reported (distinct, sorted, comma-separated; one when the
    /// fleet is uniform); null when none reported one.
    pub libtorch: Option<String>,
}

impl Software {
    /// This coordinator's versions, with the libtorch versions of `workers`.
    pub fn current(workers: &[WorkerSummary]) -> Self {
        let versions: std::collections::BTreeSet<&str> = workers
            .iter()
            .filter_map(|w| w.software.as_ref()?.libtorch.as_deref())
            .collect();
        Software {
            tresnet_eval: env!("CARGO_PKG_VERSION").to_string(),
            protocol_version: tresnet_common::protocol::PROTOCOL_VERSION,
            libtorch: (!versions.is_empty())
                .then(|| versions.into_iter().collect::<Vec<_>>().join(", ")),
        }
    }
}

/// How the exactly-once accounting got there: leases, speculation, expiries, retries and the duplicate
/// results that were dropped (counted, never added to the numbers). This coordinator process only.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Scheduling {
    pub leases_granted: u64,
    pub speculative_leases: u64,
    pub lease_expiries: u64,
    pub retries: u64,
    pub duplicates_dropped: u64,
    /// Leases handed back by workers because of a fault of the environment (each a failed attempt
    /// of its shard; a shard fails after `--max-failures` of them).
    #[serde(default)]
    pub environment_faults: u64,
    /// Object-store requests that failed for a reason of the environment (5xx, throttling, transport
    /// error, timeout, body cut off) and were retried inside the workers.
    #[serde(default)]
    pub store_retries: u64,
    /// Leases that expired while their worker was alive but silent (frozen, partitioned): when it
    /// was heard from again it was told to drop the shard, whose result had gone elsewhere. A late
    /// result that does arrive is a counted duplicate instead.
    #[serde(default)]
    pub late_leases_cancelled: u64,
    /// Submissions refused as invalid (samples outside the shard, repeated or missing; values no
    /// softmax gives; a message over the cap): the worker's fault, each a failed attempt of its shard.
    #[serde(default)]
    pub submissions_rejected: u64,
}

/// `outcome.json`: everything a run recorded besides its predictions. With job.json and
/// predictions.parquet it is all [`rerender`] needs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Outcome {
    pub dataset_size: u64,
    pub class_names: Vec<String>,
    pub bad: Vec<BadSample>,
    pub failed_shards: Vec<FailedShard>,
    pub eval_seconds: f64,
    pub samples_timed: u64,
    pub wall_seconds: f64,
    pub software: Software,
    pub workers: Vec<WorkerSummary>,
    pub timeline: Vec<TimelineEvent>,
    /// Absent in run directories written before it existed.
    #[serde(default)]
    pub scheduling: Scheduling,
    /// Samples the scoring rule leaves out (an empty ReaL label list, a class outside the class
    /// subset): part of `dataset_size`, never evaluated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<ExcludedSample>,
}

/// `top1`, `top5`, `nll` and `ece` are null when no sample was evaluated (every one bad or failed):
/// a mean over nothing is no number, and 0.0 would read as a result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub top1: Option<f64>,
    pub top5: Option<f64>,
    pub top5_k: usize,
    pub nll: Option<f64>,
    pub ece: Option<f64>,
    pub ece_bins: usize,
    pub reliability: Vec<ReliabilityBin>,
    #[serde(rename = "macro")]
    pub macro_avg: Averages,
    #[serde(rename = "weighted")]
    pub weighted_avg: Averages,
    pub dataset_size: u64,
    pub samples: u64,
    pub correct1: u64,
    pub correct5: u64,
    pub bad_samples: u64,
    pub failed_samples: u64,
    pub failed_shards: Vec<FailedShard>,
    pub bad: Vec<BadSample>,
    /// Samples left out by the scoring rule (listed in outcome.json with their reasons):
    /// `samples + excluded_samples + bad_samples + failed_samples == dataset_size`.
    #[serde(default)]
    pub excluded_samples: u64,
    pub synthetic: bool,
    /// Seconds from the first lease to the last accepted result of this process (0 when resumed
    /// with nothing left), and samples evaluated per second over that window.
    pub eval_seconds: f64,
    pub throughput: f64,
    pub wall_seconds: f64,
    pub model: String,
    pub weights_sha256: String,
    pub dataset_fingerprint: String,
    pub preprocess: PreprocessConfig,
    pub software: Software,
    pub workers: Vec<WorkerSummary>,
    pub scheduling: Scheduling,
    pub job: JobSpec,
    /// 95% Wilson intervals of `top1` and `top5`, in percent (stats.rs says why Wilson); null when
    /// nothing was evaluated, absent in run directories written before they were reported.
    #[serde(default)]
    pub top1_ci95: Option<Interval>,
    #[serde(default)]
    pub top5_ci95: Option<Interval>,
}

impl Summary {
    /// Why a run with this summary must not exit 0 although its report is written, if it must not:
    /// it evaluated nothing (its metrics are null), or shards failed (it does not cover the dataset;
    /// the journal keeps every accepted shard, so a rerun does only the rest). `summary` is where it
    /// was written, for the message.
    pub fn shortfall(&self, summary: &Path) -> Option<String> {
        if self.samples == 0 {
            return Some(format!(
                "no samples evaluated: of {} samples {} were bad and {} in failed shards (reasons in \
                 {}); the metrics are null",
                self.dataset_size,
                self.bad_samples,
                self.failed_samples,
                summary.display()
            ));
        }
        (self.failed_samples > 0).then(|| {
            format!(
                "{} of {} samples were not evaluated: their shards failed on faults of the \
                 environment (reasons in {}); rerun the same command to retry only them",
                self.failed_samples,
                self.dataset_size,
                summary.display()
            )
        })
    }
}
