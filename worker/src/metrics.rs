//! The worker's Prometheus metrics and readiness: samples per device and their rate, per-stage latency
//! (fetch, decode, forward, submit), bad samples, shards, leases in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use tresnet_common::observability::{Endpoint, Readiness};
use tresnet_common::storage::request_failures;

/// Prefix of every worker metric.
pub const PREFIX: &str = "tresnet_worker";

type Labels = Vec<(&'static str, String)>;

/// A stage of a sample's (or batch's, or shard's) way through the worker.
#[derive(Debug, Clone, Copy)]
pub enum Stage {
    /// One object GET (or ranged GET) from the store.
    Fetch,
    /// Decode + resize + crop of one image.
    Decode,
    /// One batch through the model on a device, scoring included.
    Forward,
    /// Closing a shard's submit stream until the coordinator answers.
    Submit,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Fetch => "fetch",
            Stage::Decode => "decode",
            Stage::Forward => "forward",
            Stage::Submit => "submit",
        }
    }
}

/// Stages span ~0.1 ms (decoding a thumbnail) to tens of seconds (a large batch on a CPU); 18 doublings
/// from 0.25 ms reach 33 s.
fn stage_histogram() -> Histogram {
    Histogram::new(exponential_buckets(2.5e-4, 2.0, 18))
}

/// Why the worker is not ready (`/readyz` answers 503 with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("registering and loading the model")]
    Registering,
    #[error("draining (SIGTERM)")]
    Draining,
    #[error("job done")]
    Done,
}

const CONNECTING: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;
const DONE: u8 = 3;

/// Shared by the agent, the executors and the metrics listener; cheap to clone.
#[derive(Clone, Debug)]
pub struct WorkerMetrics {
    samples: Family<Labels, Counter>,
    images_per_second: Family<Labels, Gauge<f64, AtomicU64>>,
    stage_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    pub bad_samples: Counter,
    pub shards_submitted: Counter,
    pub shards_failed: Counter,
    pub leases_in_flight: Gauge,
    /// Objects served from the node's dataset cache, and objects fetched from the store into it.
    pub dataset_cache_hits: Counter,
    pub dataset_cache_misses: Counter,
    phase: Arc<AtomicU8>,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        WorkerMetrics {
            samples: Family::default(),
            images_per_second: Family::default(),
            stage_seconds: Family::new_with_constructor(stage_histogram),
            bad_samples: Counter::default(),
            shards_submitted: Counter::default(),
            shards_failed: Counter::default(),
            leases_in_flight: Gauge::default(),
            dataset_cache_hits: Counter::default(),
            dataset_cache_misses: Counter::default(),
            phase: Arc::new(AtomicU8::new(CONNECTING)),
        }
    }
}

impl WorkerMetrics {
    pub fn observe(&self, stage: Stage, took: Duration) {
        self.stage_seconds
            .get_or_create(&vec![("stage", stage.name().to_string())])
            .observe(took.as_secs_f64());
    }

    /// A batch of `n` images went through the model on `device` in `took`.
    pub fn batch_done(&self, device: &str, n: usize, took: Duration) {
        let labels = vec![("device", device.to_string())];
        self.samples.get_or_create(&labels).inc_by(n as u64);
        if !took.is_zero() {
            self.images_per_second
                .get_or_create(&labels)
                .set(n as f64 / took.as_secs_f64());
        }
        self.observe(Stage::Forward, took);
    }

    /// Registered and every device's model is loaded.
    pub fn set_ready(&self) {
        let _ = self
            .phase
            .compare_exchange(CONNECTING, READY, Ordering::SeqCst, Ordering::SeqCst);
    }

    pub fn set_draining(&self) {
        self.phase.store(DRAINING, Ordering::SeqCst);
    }

    pub fn set_done(&self) {
        self.phase.store(DONE, Ordering::SeqCst);
    }

    pub fn readiness(&self) -> Result<&'static str, NotReady> {
        match self.phase.load(Ordering::SeqCst) {
            READY => Ok("registered, models loaded, taking shards"),
            CONNECTING => Err(NotReady::Registering),
            DRAINING => Err(NotReady::Draining),
            _ => Err(NotReady::Done),
        }
    }

    pub fn endpoint(&self) -> Endpoint {
        let mut r = Registry::with_prefix(PREFIX);
        r.register(
            "samples",
            "Images run through the model, per device",
            self.samples.clone(),
        );
        r.register(
            "images_per_second",
            "Throughput of the last batch, per device",
            self.images_per_second.clone(),
        );
        r.register_with_unit(
            "stage",
            "Latency per stage: fetch and decode per image, forward per batch, submit per shard",
            Unit::Seconds,
            self.stage_seconds.clone(),
        );
        r.register(
            "bad_samples",
            "Samples at fault themselves: missing object, undecodable or oversized image, malformed record",
            self.bad_samples.clone(),
        );
        r.register(
            "shards_submitted",
            "Shards whose results were sent and answered",
            self.shards_submitted.clone(),
        );
        r.register(
            "shards_failed",
            "Shards handed back because of a fault of the environment (store, network, device)",
            self.shards_failed.clone(),
        );
        r.register_collector(Box::new(StoreRetries));
        r.register(
            "leases_in_flight",
            "Shards being worked on",
            self.leases_in_flight.clone(),
        );
        r.register(
            "dataset_cache_hits",
            "Objects read from the node's dataset cache instead of the store",
            self.dataset_cache_hits.clone(),
        );
        r.register(
            "dataset_cache_misses",
            "Objects fetched from the store and stored in the dataset cache",
            self.dataset_cache_misses.clone(),
        );
        let me = self.clone();
        let ready: Readiness = Arc::new(move || {
            me.readiness()
                .map(str::to_string)
                .map_err(|e| Box::new(e) as _)
        });
        Endpoint { registry: r, ready }
    }
}

/// `store_retries`, read at scrape time from the process-wide count of the object-store client
/// ([`request_failures::total`]), so that the retries of a shard stuck on a failing store show while
/// they happen, not only once the shard ends (a worker's last shard ends just before it exits).
#[derive(Debug)]
struct StoreRetries;

impl Collector for StoreRetries {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let c = ConstCounter::new(request_failures::total());
        c.encode(e.encode_descriptor(
            "store_retries",
            "Object-store requests that failed (5xx, throttling, transport error, timeout, body cut \
             off) and were retried",
            None,
            c.metric_type(),
        )?)
    }
}

/// The label of a device in metrics: `cpu`, `cuda:0`, ...
pub fn device_label(d: tch::Device) -> String {
    match d {
        tch::Device::Cpu => "cpu".into(),
        tch::Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}
