//! The coordinator's Prometheus metrics and readiness. Counters and gauges are read from the run state at
//! scrape time, so they can never drift from the accounting the report is made of; only the
//! accept-latency histogram is recorded as it happens (in the service). The run state hands them over
//! as a [`Snapshot`] of plain numbers, so this module knows what it exports, not how the run keeps it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tresnet_common::observability::{Endpoint, Readiness};

/// Prefix of every coordinator metric.
pub const PREFIX: &str = "tresnet_coordinator";

/// Accepting a shard is validation plus one journal write: ~0.1 ms on a local disk, up to seconds on a
/// slow object store; 16 doublings from 0.1 ms reach 3.3 s.
pub fn accept_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1e-4, 2.0, 16))
}

/// The run as /metrics and /readyz show it, read at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The job served (its id on the wire).
    pub job_id: String,
    /// Why the run stopped, when it failed.
    pub fatal: Option<String>,
    /// Samples of the shards accepted by this process, bad ones included, and of those the bad ones.
    pub samples_done: u64,
    pub bad_samples: u64,
    /// Samples the dataset listing itself found bad (never leased).
    pub listed_bad: u64,
    pub duplicates_dropped: u64,
    pub environment_faults: u64,
    pub store_retries: u64,
    pub submissions_rejected: u64,
    /// Each registered worker's id with its refused submissions.
    pub worker_submissions_rejected: Vec<(String, u64)>,
    pub leases_granted: u64,
    pub speculative_leases: u64,
    pub lease_expiries: u64,
    pub late_leases_cancelled: u64,
    pub retries: u64,
    pub queue_depth: u64,
    pub leases_in_flight: u64,
    pub workers_registered: u64,
    /// Workers heard from within the lease timeout.
    pub workers_alive: u64,
    /// Samples the dataset listed, usable ones (`listed_bad` excluded).
    pub dataset_usable: u64,
    pub shards: ShardsByState,
    /// Validate + journal time of each accepted submission (shared with the run state, which records
    /// into it).
    pub accept_seconds: Histogram,
}

/// How many shards are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardsByState {
    pub pending: u64,
    pub in_flight: u64,
    pub done: u64,
    pub failed: u64,
}

/// What is observed: the run state, read under its lock at each scrape.
pub trait Source: std::fmt::Debug + Send + Sync {
    fn snapshot(&self) -> Snapshot;
}

/// Why the coordinator is not ready (`/readyz` answers 503 with it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("job finished; reports written")]
    Finished,
    #[error("loading the job (listing the dataset)")]
    Loading,
    /// The run's fatal reason, as the run state keeps it.
    #[error("job failed: {0}")]
    Failed(String),
}

/// What the metrics listener needs to know about the run; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Set once the job is loaded and the gRPC server is serving it.
    state: Arc<OnceLock<Arc<dyn Source>>>,
    finished: Arc<AtomicBool>,
}

impl Observed {
    pub fn serving(&self, state: Arc<dyn Source>) {
        let _ = self.state.set(state);
    }

    /// The reports are written: nothing more to serve.
    pub fn finished(&self) {
        self.finished.store(true, Ordering::SeqCst);
    }

    /// `/readyz`: ready while the job is loaded and served, not while listing nor once finished.
    pub fn readiness(&self) -> Result<String, NotReady> {
        if self.finished.load(Ordering::SeqCst) {
            return Err(NotReady::Finished);
        }
        match self.state.get() {
            None => Err(NotReady::Loading),
            Some(s) => {
                let st = s.snapshot();
                match st.fatal {
                    Some(f) => Err(NotReady::Failed(f)),
                    None => Ok(format!("serving job {}", st.job_id)),
                }
            }
        }
    }

    pub fn endpoint(&self) -> Endpoint {
        let mut registry = Registry::with_prefix(PREFIX);
        registry.register_collector(Box::new(self.clone()));
        let me = self.clone();
        let ready: Readiness = Arc::new(move || me.readiness().map_err(|e| Box::new(e) as _));
        Endpoint { registry, ready }
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for Observed {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let Some(state) = self.state.get() else {
            return Ok(());
        };
        let st = state.snapshot();
        let listed_bad = st.listed_bad;
        counter(
            &mut e,
            "samples_accounted",
            "Samples accounted by this process (evaluated + bad, from accepted shards and listing); \
             rate() is the evaluation throughput",
            st.samples_done + listed_bad,
        )?;
        counter(
            &mut e,
            "samples_evaluated",
            "Samples with a prediction in accepted shards (the report's `samples`)",
            st.samples_done - st.bad_samples,
        )?;
        counter(
            &mut e,
            "bad_samples",
            "Undecodable, missing or unlistable samples (the report's `bad_samples`)",
            st.bad_samples + listed_bad,
        )?;
        counter(
            &mut e,
            "duplicates_dropped",
            "Complete results for shards that already had one (speculation, late leases)",
            st.duplicates_dropped,
        )?;
        counter(
            &mut e,
            "environment_faults",
            "Leases handed back by workers for a fault of the environment (store, network, device)",
            st.environment_faults,
        )?;
        counter(
            &mut e,
            "store_retries",
            "Object-store requests that failed and were retried inside the workers",
            st.store_retries,
        )?;
        counter(
            &mut e,
            "submissions_rejected",
            "Submissions refused as invalid (samples outside the shard, repeated or missing, values \
             no softmax gives, a message over the cap): each failed its shard's attempt",
            st.submissions_rejected,
        )?;
        let rejected = ConstCounter::new(0u64);
        let mut m = e.encode_descriptor(
            "worker_submissions_rejected",
            "Submissions refused as invalid, by the worker that sent them",
            None,
            rejected.metric_type(),
        )?;
        for (id, n) in &st.worker_submissions_rejected {
            ConstCounter::new(*n).encode(m.encode_family(&[("worker", id.as_str())])?)?;
        }
        counter(
            &mut e,
            "leases_granted",
            "Shard leases granted",
            st.leases_granted,
        )?;
        counter(
            &mut e,
            "speculative_leases",
            "Leases duplicating an in-flight shard",
            st.speculative_leases,
        )?;
        counter(
            &mut e,
            "lease_expiries",
            "Leases not renewed by heartbeats in time",
            st.lease_expiries,
        )?;
        counter(
            &mut e,
            "late_leases_cancelled",
            "Expired leases whose worker was heard from again and told to drop the shard",
            st.late_leases_cancelled,
        )?;
        counter(
            &mut e,
            "retries",
            "Shards requeued after an unsuccessful lease",
            st.retries,
        )?;
        gauge(
            &mut e,
            "queue_depth",
            "Shards waiting for a lease",
            st.queue_depth as i64,
        )?;
        gauge(
            &mut e,
            "leases_in_flight",
            "Live leases",
            st.leases_in_flight as i64,
        )?;
        gauge(
            &mut e,
            "workers_registered",
            "Workers that registered",
            st.workers_registered as i64,
        )?;
        gauge(
            &mut e,
            "workers_alive",
            "Workers heard from within the lease timeout",
            st.workers_alive as i64,
        )?;
        gauge(
            &mut e,
            "dataset_samples",
            "Samples in the dataset, bad ones included",
            st.dataset_usable as i64 + listed_bad as i64,
        )?;
        let ShardsByState {
            pending,
            in_flight,
            done,
            failed,
        } = st.shards;
        let shards = ConstGauge::new(0i64);
        let mut m = e.encode_descriptor("shards", "Shards by state", None, shards.metric_type())?;
        for (label, n) in [
            ("pending", pending),
            ("in_flight", in_flight),
            ("done", done),
            ("failed", failed),
        ] {
            ConstGauge::new(n as i64).encode(m.encode_family(&[("state", label)])?)?;
        }
        st.accept_seconds.encode(e.encode_descriptor(
            "accept",
            "Time to validate and journal a complete shard submission",
            Some(&Unit::Seconds),
            st.accept_seconds.metric_type(),
        )?)
    }
}
