//! The coordinator's Prometheus metrics and readiness. Counters and gauges are read from the run state at
//! scrape time, so they can never drift from the accounting the report is made of; only the
//! accept-latency histogram is recorded as it happens (in the service).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tresnet_common::ids::ShardId;
use tresnet_common::observability::{Endpoint, Readiness};

use crate::scheduler::ShardState;
use crate::service::Shared;

/// Prefix of every coordinator metric.
pub const PREFIX: &str = "tresnet_coordinator";

/// Accepting a shard is validation plus one journal write: ~0.1 ms on a local disk, up to seconds on a
/// slow object store; 16 doublings from 0.1 ms reach 3.3 s.
pub fn accept_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1e-4, 2.0, 16))
}

/// What the metrics listener needs to know about the run; cheap to clone.
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

#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Set once the job is loaded and the gRPC server is serving it.
    state: Arc<OnceLock<Shared>>,
    finished: Arc<AtomicBool>,
}

impl Observed {
    pub fn serving(&self, state: Shared) {
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
                let st = s.lock().unwrap_or_else(|p| p.into_inner());
                match st.fatal() {
                    Some(f) => Err(NotReady::Failed(f.to_string())),
                    None => Ok(format!("serving job {}", st.job_id())),
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
        let st = state.lock().unwrap_or_else(|p| p.into_inner());
        let now = st.now();
        let listed_bad = st.index().bad_samples.len() as u64;
        let live = st.live();
        let stats = st.sched().stats();
        counter(
            &mut e,
            "samples_accounted",
            "Samples accounted by this process (evaluated + bad, from accepted shards and listing); \
             rate() is the evaluation throughput",
            live.samples_done + listed_bad,
        )?;
        counter(
            &mut e,
            "samples_evaluated",
            "Samples with a prediction in accepted shards (the report's `samples`)",
            live.samples_done - live.bad_samples,
        )?;
        counter(
            &mut e,
            "bad_samples",
            "Undecodable, missing or unlistable samples (the report's `bad_samples`)",
            live.bad_samples + listed_bad,
        )?;
        counter(
            &mut e,
            "duplicates_dropped",
            "Complete results for shards that already had one (speculation, late leases)",
            live.duplicates_dropped,
        )?;
        counter(
            &mut e,
            "environment_faults",
            "Leases handed back by workers for a fault of the environment (store, network, device)",
            live.environment_faults,
        )?;
        counter(
            &mut e,
            "store_retries",
            "Object-store requests that failed and were retried inside the workers",
            live.store_retries,
        )?;
        counter(
            &mut e,
            "submissions_rejected",
            "Submissions refused as invalid (samples outside the shard, repeated or missing, values \
             no softmax gives, a message over the cap): each failed its shard's attempt",
            live.submissions_rejected,
        )?;
        let rejected = ConstCounter::new(0u64);
        let mut m = e.encode_descriptor(
            "worker_submissions_rejected",
            "Submissions refused as invalid, by the worker that sent them",
            None,
            rejected.metric_type(),
        )?;
        for (id, w) in st.workers() {
            ConstCounter::new(w.submissions_rejected)
                .encode(m.encode_family(&[("worker", id.0.as_str())])?)?;
        }
        counter(
            &mut e,
            "leases_granted",
            "Shard leases granted",
            stats.leases_granted,
        )?;
        counter(
            &mut e,
            "speculative_leases",
            "Leases duplicating an in-flight shard",
            stats.speculative_leases,
        )?;
        counter(
            &mut e,
            "lease_expiries",
            "Leases not renewed by heartbeats in time",
            stats.expiries,
        )?;
        counter(
            &mut e,
            "late_leases_cancelled",
            "Expired leases whose worker was heard from again and told to drop the shard",
            stats.late_leases_cancelled,
        )?;
        counter(
            &mut e,
            "retries",
            "Shards requeued after an unsuccessful lease",
            stats.retries,
        )?;
        gauge(
            &mut e,
            "queue_depth",
            "Shards waiting for a lease",
            st.sched().pending_count() as i64,
        )?;
        gauge(
            &mut e,
            "leases_in_flight",
            "Live leases",
            st.sched().leases_in_flight() as i64,
        )?;
        gauge(
            &mut e,
            "workers_registered",
            "Workers that registered",
            st.workers().len() as i64,
        )?;
        let timeout = st.lease_timeout().as_millis() as u64;
        let alive = st
            .workers()
            .values()
            .filter(|w| now.saturating_sub(w.last_seen) <= timeout)
            .count();
        gauge(
            &mut e,
            "workers_alive",
            "Workers heard from within the lease timeout",
            alive as i64,
        )?;
        gauge(
            &mut e,
            "dataset_samples",
            "Samples in the dataset, bad ones included",
            st.index().len() as i64 + listed_bad as i64,
        )?;
        let mut by_state = [0i64; 4];
        for i in 0..st.sched().shard_count() {
            by_state[match st.sched().state_of(ShardId(i as u64)) {
                ShardState::Pending => 0,
                ShardState::InFlight => 1,
                ShardState::Done => 2,
                ShardState::Failed => 3,
            }] += 1;
        }
        let shards = ConstGauge::new(0i64);
        let mut m = e.encode_descriptor("shards", "Shards by state", None, shards.metric_type())?;
        for (label, n) in ["pending", "in_flight", "done", "failed"]
            .into_iter()
            .zip(by_state)
        {
            ConstGauge::new(n).encode(m.encode_family(&[("state", label)])?)?;
        }
        st.accept_seconds().encode(e.encode_descriptor(
            "accept",
            "Time to validate and journal a complete shard submission",
            Some(&Unit::Seconds),
            st.accept_seconds().metric_type(),
        )?)
    }
}
