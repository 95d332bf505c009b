//! The worker's side of the protocol: register, lease shards, fetch and preprocess their samples on a
//! CPU pool, feed the device executors, stream results back, and heartbeat from a task of its own so a
//! long forward never looks like death.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tch::Device;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tresnet_common::dataset::{Sample, SampleSource};
use tresnet_common::error_text::with_causes;
use tresnet_common::ids::SampleIndex;
use tresnet_common::job::JobSpec;
use tresnet_common::preprocess::PreprocessConfig;
use tresnet_common::protocol::auth::AttachToken;
use tresnet_common::protocol::convert::sample_from_pb;
use tresnet_common::protocol::pb::coordinator_client::CoordinatorClient;
use tresnet_common::protocol::pb::{self, SampleResult};
use tresnet_common::protocol::{MAX_MESSAGE_BYTES, PROTOCOL_VERSION};
use tresnet_common::storage::{StorageLocation, StorageOptions, request_failures};

use crate::dataset_cache::{DatasetCache, EntryKey};
use crate::executor::{self, Batch, ExecutorConfig, ModelKey, Work, WorkSender};
use crate::fault::{self, EnvironmentFault, Fault, SampleFault, ShardError};
use crate::link::{CallError, Link, LinkPolicy, Outgoing, Submission, Unreachable};
use crate::metrics::{Stage, WorkerMetrics};
use crate::preprocess::decode::RgbImage;
use crate::preprocess::{PreprocessError, PreprocessedImage, Preprocessor, crop};

/// Objects fetched concurrently per shard; enough to hide object-store latency without flooding it.
const FETCH_CONCURRENCY: usize = 16;
/// Batches queued for the executors beyond the ones running: bounded so memory stays bounded.
const QUEUED_BATCHES_PER_DEVICE: usize = 2;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub coordinator: String,
    pub worker_id: String,
    pub devices: Vec<Device>,
    pub device_names: Vec<String>,
    /// Shards in flight at once.
    pub prefetch_shards: u32,
    pub decode_threads: usize,
    pub fold_bn: Option<bool>,
    pub debug_batch_delay: Duration,
    /// Gather each shard's logits to the first executor (see `--gather-logits`).
    pub gather_logits: bool,
    /// Shared token presented on every RPC.
    pub token: Option<String>,
    /// For `https://` coordinators: the CA to trust (else the system roots) and the name to verify
    /// (else the URL's host).
    pub tls_ca: Option<std::path::PathBuf>,
    pub tls_domain: Option<String>,
    pub metrics: WorkerMetrics,
    /// Where fetched objects of remote stores are kept (`None`: fetch every time).
    pub dataset_cache: Option<Arc<DatasetCache>>,
    /// Timeouts and retries of the object-store client.
    pub storage: StorageOptions,
    /// RPC deadlines and how long a silent coordinator is waited for.
    pub link: LinkPolicy,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot reach coordinator {url}{hint}: {reason}")]
    Connect {
        url: String,
        hint: &'static str,
        /// The transport error's whole source chain (TLS reasons sit at its bottom), repeats removed.
        reason: String,
    },
    #[error("coordinator {url} refused registration{hint}: {status}")]
    Register {
        url: String,
        hint: &'static str,
        status: String,
    },
    #[error(transparent)]
    Tls(#[from] tresnet_common::protocol::tls::TlsError),
    #[error("coordinator sent a malformed job: {0}")]
    Job(String),
    #[error("cannot start executors: {0}")]
    Executor(String),
    #[error("dataset location {url}: {reason}")]
    Storage { url: String, reason: String },
    #[error("coordinator {url}: {status}")]
    Rpc { url: String, status: String },
    /// The coordinator stayed silent for the whole `--coordinator-patience-ms`.
    #[error(transparent)]
    Unreachable(#[from] Unreachable),
}

type Client = crate::link::Client;

/// How work reaches the executors: one shared queue (normal jobs), or one queue per executor with
/// batches dealt round-robin and per-lease reductions broadcast to all (counts-only jobs).
struct Dispatch {
    queues: Vec<WorkSender>,
    next: AtomicU64,
    /// Serializes broadcasts, so every executor sees every lease's reduction in the same order.
    broadcast: Arc<std::sync::Mutex<()>>,
}

impl Dispatch {
    /// The senders and, one per device, the receivers for [`executor::start`]: one shared queue, or
    /// one each for counts-only jobs.
    fn new(devices: usize, counts_only: bool) -> (Self, Vec<Arc<Mutex<Receiver<Work>>>>) {
        let (queues, receivers) = if counts_only {
            (0..devices)
                .map(|_| {
                    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUED_BATCHES_PER_DEVICE);
                    (tx, Arc::new(Mutex::new(rx)))
                })
                .unzip()
        } else {
            let (tx, rx) = std::sync::mpsc::sync_channel(QUEUED_BATCHES_PER_DEVICE * devices);
            // Every executor pulls from the same receiver: one Arc, cloned per device.
            let shared = Arc::new(Mutex::new(rx));
            (vec![tx], (0..devices).map(|_| shared.clone()).collect())
        };
        let dispatch = Dispatch {
            queues,
            next: AtomicU64::new(0),
            broadcast: Arc::new(std::sync::Mutex::new(())),
        };
        (dispatch, receivers)
    }

    async fn send_batch(&self, batch: Batch) -> Result<(), String> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) as usize % self.queues.len();
        let sender = self.queues[i].clone();
        // The queue is bounded: waiting here is the backpressure that keeps host memory bounded.
        tokio::task::spawn_blocking(move || sender.send(Work::Batch(batch)))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|_| "executors stopped".to_string())
    }

    /// Sends one message made by `make` to every executor, all under one lock.
    async fn broadcast(&self, make: impl Fn() -> Work + Send + 'static) -> Result<(), String> {
        let queues = self.queues.clone();
        let lock = self.broadcast.clone();
        tokio::task::spawn_blocking(move || {
            let _order = lock.lock().unwrap_or_else(|p| p.into_inner());
            queues
                .iter()
                .try_for_each(|q| q.send(make()).map_err(|_| "executors stopped".to_string()))
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Sends every executor the message `make` builds around its own reply slot, and returns the one
    /// answer that carries a value (rank 0's; the others answer `None`).
    async fn collect<T: Send + 'static>(
        &self,
        what: &str,
        make: impl Fn(tokio::sync::oneshot::Sender<Result<Option<T>, String>>) -> Work + Send + 'static,
    ) -> Result<T, String> {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..self.queues.len())
            .map(|_| tokio::sync::oneshot::channel())
            .unzip();
        let txs = std::sync::Mutex::new(txs);
        self.broadcast(move || make(txs.lock().unwrap_or_else(|p| p.into_inner()).remove(0)))
            .await?;
        let mut answer = None;
        for rx in rxs {
            if let Some(v) = rx
                .await
                .map_err(|_| format!("an executor dropped the {what}"))??
            {
                answer = Some(v);
            }
        }
        answer.ok_or_else(|| format!("no executor returned the {what}"))
    }

    /// The lease's per-sample results, scored by the first executor from every executor's logits
    /// gathered to its device.
    async fn gather(&self, job: &Arc<JobSpec>, lease: u64) -> Result<Vec<SampleResult>, String> {
        let job = job.clone();
        self.collect("gathered results", move |reply| Work::Gather {
            job: job.clone(),
            lease,
            reply,
        })
        .await
    }

    /// The lease's counts, all-reduced across the executors (each of which has answered every batch
    /// of it already).
    async fn reduce(&self, job: &str, lease: u64, classes: i64) -> Result<pb::ShardCounts, String> {
        let job = job.to_string();
        self.collect("reduced counts", move |reply| Work::Reduce {
            job: job.clone(),
            lease,
            classes,
            reply,
        })
        .await
    }
}

struct Shared {
    client: Client,
    link: Link,
    worker_id: String,
    job: Arc<JobSpec>,
    location: StorageLocation,
    dispatch: Arc<Dispatch>,
    /// Per-sample results come from one gather per shard, not from each batch.
    gather_logits: bool,
    decode: Arc<Semaphore>,
    samples_done: AtomicU64,
    /// Set by SIGTERM: finish the batch in hand, hand every lease back, exit cleanly.
    draining: Arc<std::sync::atomic::AtomicBool>,
    /// Live leases and the tasks running them, so a cancelled lease can be stopped.
    active: Mutex<HashMap<u64, JoinHandle<()>>>,
    metrics: WorkerMetrics,
    /// Set when the job's objects are worth caching (a remote store, a fingerprinted dataset).
    cache: Option<Arc<DatasetCache>>,
}

/// What a failed connection most likely means, given the URL's scheme: a plaintext client talking to a
/// TLS endpoint sees only a closed connection, and a TLS client gets a handshake error.
fn connect_hint(url: &str) -> &'static str {
    if tresnet_common::protocol::tls::is_https(url) {
        " over TLS (check --tls-ca and that the certificate names this host)"
    } else {
        " (if the coordinator serves TLS, use an https:// URL and --tls-ca)"
    }
}

/// Connects, registers, then runs the coordinator's jobs one after another (one for `run`, one per cell
/// for `sweep`) until it has no further job; returns the samples done.
pub async fn run(cfg: AgentConfig) -> Result<u64, AgentError> {
    // The handler goes in first, so a SIGTERM during connection or model loading also drains cleanly.
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let drain = {
        let draining = draining.clone();
        let metrics = cfg.metrics.clone();
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        tokio::spawn(async move {
            if let Ok(mut term) = term {
                term.recv().await;
                tracing::warn!(
                    "SIGTERM: draining (finishing the batch in hand, handing leases back)"
                );
                draining.store(true, Ordering::SeqCst);
                metrics.set_draining();
            }
        })
    };
    let url = cfg.coordinator.clone();
    let link = Link::new(&url, cfg.link, draining.clone());
    let mut endpoint =
        cfg.link.configure(
            Channel::from_shared(url.clone()).map_err(|e| AgentError::Rpc {
                url: url.clone(),
                status: e.to_string(),
            })?,
        );
    if tresnet_common::protocol::tls::is_https(&url) {
        let tls = tresnet_common::protocol::tls::client_config(
            cfg.tls_ca.as_deref(),
            cfg.tls_domain.as_deref(),
        )?;
        endpoint = endpoint.tls_config(tls).map_err(|e| AgentError::Connect {
            url: url.clone(),
            hint: connect_hint(&url),
            reason: with_causes(e.to_string(), std::error::Error::source(&e)),
        })?;
    }
    // Workers may start before their coordinator listens: connecting and registering wait for it, as
    // every later call does, for the patience.
    let channel = link
        .connect(|| endpoint.connect())
        .await
        .map_err(|e| match e {
            CallError::Refused(e) => AgentError::Connect {
                url: url.clone(),
                hint: connect_hint(&url),
                reason: with_causes(e.to_string(), std::error::Error::source(&e)),
            },
            CallError::Unreachable(u) => u.into(),
        })?;
    let attach = AttachToken::new(cfg.token.as_deref()).map_err(|e| AgentError::Rpc {
        url: url.clone(),
        status: e,
    })?;
    let client = CoordinatorClient::with_interceptor(channel, Outgoing::new(attach, &cfg.link))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let software = crate::software::report(&cfg.devices);
    let registration = pb::RegisterRequest {
        protocol_version: PROTOCOL_VERSION,
        worker_id: cfg.worker_id.clone(),
        hostname: hostname(),
        devices: cfg.device_names.clone(),
        capacity: cfg.prefetch_shards,
        software: Some((&software).into()),
        pid: std::process::id(),
    };
    let reg = link
        .call("register", || {
            let mut client = client.clone();
            let req = registration.clone();
            async move { client.register(req).await }
        })
        .await
        .map_err(|e| match e {
            CallError::Refused(s) => AgentError::Register {
                url: url.clone(),
                // Only a transport failure (no gRPC answer at all: the status wraps a transport
                // error) suggests a TLS mismatch; the coordinator's own refusals carry no source.
                hint: if std::error::Error::source(&s).is_some()
                    || matches!(
                        s.code(),
                        tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
                    ) {
                    connect_hint(&url)
                } else {
                    ""
                },
                status: status_text(&s),
            },
            CallError::Unreachable(u) => u.into(),
        })?
        .into_inner();
    let heartbeat_every = Duration::from_millis(u64::from(reg.heartbeat_interval_ms.max(50)));
    let mut executors: Option<Executors> = None;
    let mut next = reg.job;
    let mut previous = String::new();
    // Why this worker could not run the last job it was given, if it could not: a worker that ends on
    // a refused job exits with that error, the reason an operator needs.
    let mut refused: Option<AgentError> = None;
    let mut samples = 0;
    let result = loop {
        if draining.load(Ordering::SeqCst) {
            break Ok(());
        }
        let pb_job = match next.take() {
            Some(j) => j,
            None => match next_job(&link, &client, &cfg.worker_id, &previous, &url).await {
                Ok(Some(j)) => j,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            },
        };
        previous = pb_job.job_id.clone();
        match run_job(
            &cfg,
            &client,
            &link,
            pb_job,
            &mut executors,
            &draining,
            heartbeat_every,
        )
        .await
        {
            Ok(n) => {
                samples += n;
                refused = None;
            }
            Err(JobError::Refused(e)) => {
                tracing::error!(job = %previous, error = %e, "cannot run this job; telling the coordinator");
                let refusal = pb::RefuseJobRequest {
                    worker_id: cfg.worker_id.clone(),
                    job_id: previous.clone(),
                    error: e.to_string(),
                };
                let told = link
                    .call("refuse_job", || {
                        let mut client = client.clone();
                        let req = refusal.clone();
                        async move { client.refuse_job(req).await }
                    })
                    .await;
                if let Err(e) = told {
                    break Err(call_error(&url, e));
                }
                refused = Some(e);
            }
            Err(JobError::Agent(e)) => break Err(e),
        }
    };
    drain.abort();
    if let Some(ex) = executors.take() {
        ex.stop().await;
    }
    cfg.metrics.set_done();
    result?;
    match refused {
        Some(e) => Err(e),
        None => Ok(samples),
    }
}

/// Asks for the job after `previous`, waiting while the coordinator is between jobs; `None` when it has
/// no further job.
async fn next_job(
    link: &Link,
    client: &Client,
    worker_id: &str,
    previous: &str,
    url: &str,
) -> Result<Option<pb::JobSpec>, AgentError> {
    let req = pb::NextJobRequest {
        worker_id: worker_id.to_string(),
        previous_job_id: previous.to_string(),
    };
    loop {
        let r = link
            .call("next_job", || {
                let mut client = client.clone();
                let req = req.clone();
                async move { client.next_job(req).await }
            })
            .await
            .map_err(|e| call_error(url, e))?
            .into_inner();
        if r.finished {
            return Ok(None);
        }
        if let Some(job) = r.job {
            return Ok(Some(job));
        }
        tokio::time::sleep(Duration::from_millis(u64::from(r.retry_after_ms.max(10)))).await;
    }
}

/// Why a job ended early.
enum JobError {
    /// This worker cannot run the job (malformed, model does not load, dataset unreachable); the
    /// coordinator is told and the worker waits for the next job.
    Refused(AgentError),
    /// The coordinator is unreachable or refused the protocol: the worker stops.
    Agent(AgentError),
}

/// Executor threads holding one loaded model, kept across jobs with the same [`ModelKey`].
struct Executors {
    key: ModelKey,
    /// The executors' queues: dropping every holder closes them.
    dispatch: Arc<Dispatch>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// How long stopping executors may take: they finish the batch in hand (a forward pass) and exit.
const EXECUTOR_STOP_GRACE: Duration = Duration::from_secs(60);

impl Executors {
    /// Closes the queue and waits for the threads to exit, so the model's memory is freed before the
    /// next one loads.
    async fn stop(self) {
        drop(self.dispatch);
        let threads = self.threads;
        let join = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        });
        if tokio::time::timeout(EXECUTOR_STOP_GRACE, join)
            .await
            .is_err()
        {
            tracing::warn!("executors did not stop in time; loading the next model anyway");
        }
    }
}

/// Runs one job: (re)loads the model when it differs from the loaded one, then leases shards until the
/// coordinator says the job is done; returns the samples done.
async fn run_job(
    cfg: &AgentConfig,
    client: &Client,
    link: &Link,
    pb_job: pb::JobSpec,
    executors: &mut Option<Executors>,
    draining: &Arc<std::sync::atomic::AtomicBool>,
    heartbeat_every: Duration,
) -> Result<u64, JobError> {
    let url = &cfg.coordinator;
    let job: JobSpec =
        pb_job
            .try_into()
            .map_err(|e: tresnet_common::protocol::convert::ConvertError| {
                JobError::Refused(AgentError::Job(e.to_string()))
            })?;
    let location = StorageLocation::parse(&job.data.data_url, &cfg.storage).map_err(|e| {
        JobError::Refused(AgentError::Storage {
            url: job.data.data_url.clone(),
            reason: e.to_string(),
        })
    })?;
    let exec_cfg = ExecutorConfig {
        job: job.clone(),
        fold_bn: cfg.fold_bn.unwrap_or(job.model.fold_bn),
        channels_last: None,
        debug_batch_delay: cfg.debug_batch_delay,
        gather_logits: cfg.gather_logits && !job.outputs.counts_only,
        metrics: cfg.metrics.clone(),
    };
    let key = ModelKey::of(&exec_cfg);
    if executors.as_ref().is_some_and(|e| e.key == key) {
        tracing::info!(job = %job.job_id.0, model = %job.model.model, "same model as the previous job; keeping it loaded");
    } else {
        if let Some(old) = executors.take() {
            old.stop().await;
        }
        tracing::info!(job = %job.job_id.0, model = %job.model.model, weights = %job.model.weights, "loading the model");
        let per_executor = job.outputs.counts_only || cfg.gather_logits;
        let (dispatch, queues) = Dispatch::new(cfg.devices.len().max(1), per_executor);
        let devices = cfg.devices.clone();
        let threads =
            tokio::task::spawn_blocking(move || executor::start(&exec_cfg, &devices, &queues))
                .await
                .map_err(|e| JobError::Refused(AgentError::Executor(e.to_string())))?
                .map_err(|e| {
                    JobError::Refused(AgentError::Executor(format!(
                        "model {} with weights {}: {e}",
                        job.model.model, job.model.weights
                    )))
                })?;
        *executors = Some(Executors {
            key,
            dispatch: Arc::new(dispatch),
            threads,
        });
    }
    // Local files are already on this node; a job without a fingerprint gives no safe key.
    let remote = !["file://", "memory://"]
        .iter()
        .any(|s| location.root_url().starts_with(s));
    let cache = cfg
        .dataset_cache
        .clone()
        .filter(|_| remote && !job.data.dataset_fingerprint.is_empty() && !job.model.synthetic);
    let dispatch = executors
        .as_ref()
        .map(|e| e.dispatch.clone())
        .expect("executors loaded above");
    let gather_logits = cfg.gather_logits && !job.outputs.counts_only;
    if gather_logits {
        tracing::info!(job = %job.job_id.0, "each shard's logits are gathered to the first executor");
    }
    let shared = Arc::new(Shared {
        client: client.clone(),
        link: link.clone(),
        worker_id: cfg.worker_id.clone(),
        gather_logits,
        job: Arc::new(job),
        location,
        dispatch,
        decode: Arc::new(Semaphore::new(cfg.decode_threads.max(1))),
        samples_done: AtomicU64::new(0),
        draining: draining.clone(),
        active: Mutex::new(HashMap::new()),
        metrics: cfg.metrics.clone(),
        cache,
    });
    cfg.metrics.set_ready();
    let heartbeat = tokio::spawn(heartbeat_loop(shared.clone(), heartbeat_every));
    let result = lease_loop(&shared, cfg.prefetch_shards.max(1), url).await;
    heartbeat.abort();
    let _ = heartbeat.await;
    let tasks: Vec<JoinHandle<()>> = shared
        .active
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain()
        .map(|(_, h)| h)
        .collect();
    // Aborted and awaited, so nothing of this job (a late submit, a sender of the batch queue) outlives
    // it into the next one.
    for h in tasks {
        h.abort();
        let _ = h.await;
    }
    result.map_err(JobError::Agent)?;
    Ok(shared.samples_done.load(Ordering::Relaxed))
}

/// Turns a failed RPC to the coordinator at `url` into the agent's error.
fn rpc_error(url: &str) -> impl Fn(tonic::Status) -> AgentError + '_ {
    move |s| AgentError::Rpc {
        url: url.to_string(),
        status: status_text(&s),
    }
}

/// Turns an RPC that got no answer it could use, after the link's retries, into the agent's error.
fn call_error(url: &str, e: CallError<tonic::Status>) -> AgentError {
    match e {
        CallError::Refused(s) => rpc_error(url)(s),
        CallError::Unreachable(u) => u.into(),
    }
}

/// A status's message, or its code when the message is empty (transport failures often have none).
pub(crate) fn status_text(s: &tonic::Status) -> String {
    let text = if s.message().is_empty() {
        format!("{:?}", s.code())
    } else {
        s.message().to_string()
    };
    with_causes(text, std::error::Error::source(s))
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

async fn lease_loop(shared: &Arc<Shared>, capacity: u32, url: &str) -> Result<(), AgentError> {
    loop {
        // The heartbeat task gave up on the coordinator while every lease slot was busy.
        if let Some(lost) = shared.link.lost() {
            return Err(lost.into());
        }
        let active = {
            let mut a = shared.active.lock().unwrap_or_else(|p| p.into_inner());
            a.retain(|_, h| !h.is_finished());
            a.len() as u32
        };
        shared.metrics.leases_in_flight.set(i64::from(active));
        if shared.draining.load(Ordering::SeqCst) {
            if active == 0 {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        if active >= capacity {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        // Not idempotent: if an answer is lost on the way, its leases are orphaned until they expire
        // on the coordinator and are granted again, which exactly-once accounting absorbs.
        let req = pb::LeaseRequest {
            worker_id: shared.worker_id.clone(),
            max_shards: capacity - active,
            job_id: shared.job.job_id.0.clone(),
        };
        let resp = shared
            .link
            .call("lease", || {
                let mut client = shared.client.clone();
                let req = req.clone();
                async move { client.lease(req).await }
            })
            .await
            .map_err(|e| call_error(url, e))?
            .into_inner();
        if resp.job_done {
            return Ok(());
        }
        if resp.leases.is_empty() {
            tokio::time::sleep(Duration::from_millis(u64::from(
                resp.retry_after_ms.max(10),
            )))
            .await;
            continue;
        }
        for lease in resp.leases {
            let id = lease.lease_id;
            let s = shared.clone();
            let h = tokio::spawn(async move { run_shard(s, lease).await });
            shared
                .active
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, h);
        }
    }
}

/// Keeps this worker's leases alive; when the coordinator stays silent for the patience it gives up on
/// it (the link then fails every call, and the lease loop ends the job with that error).
async fn heartbeat_loop(shared: Arc<Shared>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let beat = shared
            .link
            .call("heartbeat", || {
                // Built per attempt: a retried heartbeat names the leases live now.
                let ids: Vec<u64> = shared
                    .active
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .filter(|(_, h)| !h.is_finished())
                    .map(|(id, _)| *id)
                    .collect();
                let req = pb::HeartbeatRequest {
                    worker_id: shared.worker_id.clone(),
                    lease_ids: ids,
                    samples_done: shared.samples_done.load(Ordering::Relaxed),
                    job_id: shared.job.job_id.0.clone(),
                };
                let mut client = shared.client.clone();
                async move { client.heartbeat(req).await }
            })
            .await;
        match beat {
            Ok(r) => {
                let r = r.into_inner();
                let mut active = shared.active.lock().unwrap_or_else(|p| p.into_inner());
                for id in r.cancelled_lease_ids {
                    if let Some(h) = active.remove(&id) {
                        h.abort();
                    }
                }
            }
            Err(CallError::Refused(e)) => {
                tracing::warn!(error = %status_text(&e), "heartbeat failed")
            }
            Err(CallError::Unreachable(u)) => {
                tracing::error!(error = %u, "giving up on the coordinator");
                return;
            }
        }
    }
}

/// Tries of one sample's fetch, each with object_store's own retries inside: a second try covers what
/// those do not (a transfer that ends short of the listed size, a connection lost between retries).
const FETCH_ATTEMPTS: u32 = 2;
/// Pause before the second try; the store's own backoff has already waited.
const FETCH_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Runs one leased shard. A shard that cannot be finished here is handed back with its reason and
/// never submitted: its samples are not the data's fault.
async fn run_shard(shared: Arc<Shared>, lease: pb::ShardLease) {
    let lease_id = lease.lease_id;
    let store_failures = Arc::new(AtomicU64::new(0));
    let result = request_failures::counted(
        store_failures.clone(),
        process_shard(&shared, lease, &store_failures),
    )
    .await;
    // /metrics reads the process-wide count as the failures happen (worker/src/metrics.rs); this
    // shard's share goes to the coordinator with the hand-back.
    let store_retries = store_failures.load(Ordering::Relaxed);
    let Err(e) = result else {
        return;
    };
    if shared.job.outputs.counts_only || shared.gather_logits {
        // Whatever the executors kept for this lease is void; free it.
        let job = shared.job.job_id.0.clone();
        let _ = shared
            .dispatch
            .broadcast(move || Work::Discard {
                job: job.clone(),
                lease: lease_id,
            })
            .await;
    }
    let (reason, error) = match &e {
        ShardError::Draining => (pb::ReleaseReason::Draining, String::new()),
        ShardError::Environment(fault) => {
            let why = fault::chain(fault);
            tracing::warn!(lease = lease_id, error = %why, "shard handed back: fault of the environment");
            shared.metrics.shards_failed.inc();
            (pb::ReleaseReason::Environment, why)
        }
    };
    let mut client = shared.client.clone();
    let _ = client
        .release(pb::ReleaseRequest {
            worker_id: shared.worker_id.clone(),
            lease_id,
            error,
            reason: reason.into(),
            store_retries,
            job_id: shared.job.job_id.0.clone(),
        })
        .await;
}

/// The submit stream is gone: the coordinator ended the RPC (it answered early or went away).
fn stream_closed<T>(_: T) -> ShardError {
    EnvironmentFault::Coordinator("submit stream closed".into()).into()
}

async fn process_shard(
    shared: &Arc<Shared>,
    lease: pb::ShardLease,
    store_failures: &Arc<AtomicU64>,
) -> Result<(), ShardError> {
    let samples: Vec<(SampleIndex, Sample)> = lease
        .samples
        .into_iter()
        .map(sample_from_pb)
        .collect::<Result<_, _>>()
        .map_err(EnvironmentFault::Lease)?;
    let (tx, rx) = mpsc::channel::<pb::SubmitRequest>(4);
    tx.send(pb::SubmitRequest {
        item: Some(pb::submit_request::Item::Header(pb::SubmitHeader {
            worker_id: shared.worker_id.clone(),
            shard_id: lease.shard_id,
            lease_id: lease.lease_id,
            job_id: shared.job.job_id.0.clone(),
        })),
    })
    .await
    .map_err(stream_closed)?;
    let submit = Submission::start(shared.link.clone(), shared.client.clone(), rx);
    let batch_size = shared.job.batching.batch_size as usize;
    let side = shared.job.preprocess.resolution as i64;
    let prepared = futures::stream::iter(samples)
        .map(|(i, s)| {
            let shared = shared.clone();
            async move {
                let r = prepare(&shared, &s).await;
                (i, s.label, r)
            }
        })
        .buffered(FETCH_CONCURRENCY);
    futures::pin_mut!(prepared);
    let mut pending = Vec::new();
    let mut done = false;
    while !done {
        if shared.draining.load(Ordering::SeqCst) {
            return Err(ShardError::Draining);
        }
        match prepared.next().await {
            Some((i, label, Ok(img))) => pending.push((i, label, Ok(img))),
            Some((i, label, Err(Fault::Sample(f)))) => pending.push((i, label, Err(f))),
            // Nothing of this shard is submitted: the whole shard is retried, elsewhere if need be.
            Some((_, _, Err(Fault::Environment(f)))) => return Err(f.into()),
            None => done = true,
        }
        if pending.len() >= batch_size || (done && !pending.is_empty()) {
            let items = std::mem::take(&mut pending);
            let n = items.len() as u64;
            let results = run_batch(shared, lease.lease_id, items, side).await?;
            shared.samples_done.fetch_add(n, Ordering::Relaxed);
            if results.is_empty() {
                continue;
            }
            tx.send(pb::SubmitRequest {
                item: Some(pb::submit_request::Item::Batch(pb::ResultBatch { results })),
            })
            .await
            .map_err(stream_closed)?;
        }
    }
    if shared.gather_logits {
        let mut results = shared
            .dispatch
            .gather(&shared.job, lease.lease_id)
            .await
            .map_err(EnvironmentFault::Executor)?;
        results.sort_by_key(|r| r.index);
        tx.send(pb::SubmitRequest {
            item: Some(pb::submit_request::Item::Batch(pb::ResultBatch { results })),
        })
        .await
        .map_err(stream_closed)?;
    }
    if shared.job.outputs.counts_only {
        let counts = shared
            .dispatch
            .reduce(
                &shared.job.job_id.0,
                lease.lease_id,
                i64::from(shared.job.model.num_classes),
            )
            .await
            .map_err(EnvironmentFault::Executor)?;
        tx.send(pb::SubmitRequest {
            item: Some(pb::submit_request::Item::Counts(counts)),
        })
        .await
        .map_err(stream_closed)?;
    }
    tx.send(pb::SubmitRequest {
        item: Some(pb::submit_request::Item::Trailer(pb::ShardTrailer {
            store_retries: store_failures.load(Ordering::Relaxed),
        })),
    })
    .await
    .map_err(stream_closed)?;
    drop(tx);
    let submit_start = std::time::Instant::now();
    let resp = submit
        .await
        .map_err(|e| EnvironmentFault::Task(e.to_string()))?
        .map_err(|s| EnvironmentFault::Coordinator(format!("submit refused: {}", status_text(&s))))?
        .into_inner();
    shared
        .metrics
        .observe(Stage::Submit, submit_start.elapsed());
    shared.metrics.shards_submitted.inc();
    if !resp.accepted {
        tracing::debug!(shard = lease.shard_id, reason = %resp.reason, "result not used");
    }
    Ok(())
}

/// Sends the good images of a group to an executor; bad ones become error results right away.
async fn run_batch(
    shared: &Arc<Shared>,
    lease: u64,
    items: Vec<(SampleIndex, u32, Result<PreprocessedImage, SampleFault>)>,
    side: i64,
) -> Result<Vec<SampleResult>, EnvironmentFault> {
    let mut out = Vec::with_capacity(items.len());
    let mut indices = Vec::new();
    let mut labels = Vec::new();
    let mut pixels = Vec::new();
    for (i, label, r) in items {
        match r {
            Ok(img) => {
                indices.push(i.0);
                labels.push(label);
                pixels.extend_from_slice(&img.data);
            }
            Err(e) => {
                shared.metrics.bad_samples.inc();
                out.push(SampleResult {
                    index: i.0,
                    error: fault::chain(&e),
                    ..Default::default()
                })
            }
        }
    }
    if !indices.is_empty() {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let batch = Batch {
            lease,
            indices,
            labels,
            pixels,
            side,
            job: shared.job.clone(),
            reply,
        };
        shared
            .dispatch
            .send_batch(batch)
            .await
            .map_err(EnvironmentFault::Executor)?;
        out.extend(
            rx.await
                .map_err(|_| EnvironmentFault::Executor("executor dropped the batch".into()))?
                .map_err(EnvironmentFault::Executor)?,
        );
    }
    out.sort_by_key(|r| r.index);
    Ok(out)
}

/// Fetches and preprocesses one sample; a failure says whose fault it is, and is never a crash.
async fn prepare(shared: &Arc<Shared>, s: &Sample) -> Result<PreprocessedImage, Fault> {
    let side = shared.job.preprocess.resolution;
    if shared.job.model.synthetic {
        // Benchmark mode: no fetch, no decode; the executor ignores the pixels.
        return Ok(PreprocessedImage {
            width: side,
            height: side,
            data: Vec::new(),
        });
    }
    let fetch_start = std::time::Instant::now();
    let bytes = fetch(shared, s).await?;
    shared.metrics.observe(Stage::Fetch, fetch_start.elapsed());
    let metrics = shared.metrics.clone();
    let permit = shared
        .decode
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| EnvironmentFault::Task(e.to_string()))?;
    let cfg = shared.job.preprocess.clone();
    let cifar = matches!(s.source, SampleSource::CifarRecord { .. });
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let decode_start = std::time::Instant::now();
        let r = if cifar {
            cifar_image(&bytes, &cfg).map_err(Fault::from)
        } else {
            with_preprocessor(&cfg, |p| p.run(&bytes)).map_err(Fault::from)
        };
        metrics.observe(Stage::Decode, decode_start.elapsed());
        r
    })
    .await
    // A panic in the decoder is a bug of ours, not a property of the image to be counted against it.
    .map_err(|e| EnvironmentFault::Task(e.to_string()))?
}

/// The sample's bytes: from the node's dataset cache when it holds them, else from the store (and
/// then into the cache). A missing object is the sample's fault; anything else the store's, tried
/// [`FETCH_ATTEMPTS`] times.
async fn fetch(shared: &Arc<Shared>, s: &Sample) -> Result<bytes::Bytes, Fault> {
    let loc = &shared.location;
    let path = s.source.path();
    let range = s.source.byte_range();
    let url = loc.object_url(path);
    let key = EntryKey {
        dataset_fingerprint: &shared.job.data.dataset_fingerprint,
        object_url: &url,
        range: range.clone(),
        size: s.source.size(),
    };
    if let Some(cache) = &shared.cache
        && let Some(bytes) = cache.get(&key).await
    {
        shared.metrics.dataset_cache_hits.inc();
        return Ok(bytes);
    }
    let mut attempt = 1;
    let bytes = loop {
        let got = match &range {
            None => loc.get(path).await,
            Some(r) => loc.get_range(path, r.clone()).await,
        };
        let again = attempt < FETCH_ATTEMPTS;
        match got {
            Ok(b) => match s.source.size() {
                // A short or long transfer first gets another try; only a size that persists is the
                // object's own (it changed after the dataset was listed).
                Some(listed) if b.len() as u64 != listed && again => {
                    tracing::warn!(%url, got = b.len(), listed, "object size differs from the listing; fetching again");
                }
                Some(listed) if b.len() as u64 != listed => {
                    return Err(SampleFault::SizeChanged {
                        url,
                        got: b.len() as u64,
                        listed,
                    }
                    .into());
                }
                _ => break b,
            },
            Err(e) if e.is_sample_fault() => return Err(SampleFault::Object(Box::new(e)).into()),
            Err(e) if again => {
                tracing::warn!(%url, error = %fault::chain(&e), "fetch failed; trying again");
            }
            Err(source) => {
                return Err(EnvironmentFault::Store {
                    url,
                    attempts: attempt,
                    source: Box::new(source),
                }
                .into());
            }
        }
        tokio::time::sleep(FETCH_RETRY_PAUSE).await;
        attempt += 1;
    };
    if let Some(cache) = &shared.cache {
        cache.put(&key, &bytes).await;
        shared.metrics.dataset_cache_misses.inc();
    }
    Ok(bytes)
}

thread_local! {
    /// One decoder per CPU thread: the libjpeg-turbo handle is reused across images.
    static PREPROCESSOR: std::cell::RefCell<Option<Preprocessor>> = const { std::cell::RefCell::new(None) };
}

fn with_preprocessor<T>(
    cfg: &PreprocessConfig,
    f: impl FnOnce(&mut Preprocessor) -> Result<T, PreprocessError>,
) -> Result<T, PreprocessError> {
    PREPROCESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|p| p.config() != cfg) {
            *slot = Some(Preprocessor::new(cfg.clone())?);
        }
        f(slot.as_mut().expect("set above"))
    })
}

/// A raw CIFAR record (R, G, B planes of 32×32) through the same resize and crop as a decoded image,
/// which is what timm does to the PIL image torchvision's CIFAR dataset yields.
fn cifar_image(bytes: &[u8], cfg: &PreprocessConfig) -> Result<PreprocessedImage, SampleFault> {
    const SIDE: usize = 32;
    if bytes.len() != 3 * SIDE * SIDE {
        return Err(SampleFault::CifarRecord {
            got: bytes.len(),
            expected: 3 * SIDE * SIDE,
        });
    }
    let plane = SIDE * SIDE;
    let data = (0..plane)
        .flat_map(|p| [bytes[p], bytes[plane + p], bytes[2 * plane + p]])
        .collect();
    let img = RgbImage {
        width: SIDE as u32,
        height: SIDE as u32,
        data,
    };
    let target = cfg.resize_target(SIDE as u32, SIDE as u32);
    let window = cfg.crop_window(target.0, target.1);
    Ok(crop::resize_and_crop(&img, target, window))
}
