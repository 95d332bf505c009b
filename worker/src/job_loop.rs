//! The job loop: runs the coordinator's jobs one after another (one for `run`, one per cell for
//! `sweep`), keeping the executors and their loaded model across jobs whose model is the same, and
//! telling the coordinator when this worker cannot run a job.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tresnet_common::job::JobSpec;
use tresnet_common::protocol::pb;
use tresnet_common::storage::StorageLocation;

use crate::agent::{AgentConfig, AgentError, Client, call_error};
use crate::dispatch::Dispatch;
use crate::executor::{self, ExecutorConfig, ModelKey};
use crate::fetch::Fetcher;
use crate::link::Link;
use crate::shard::{self, JobContext};
use crate::stages::StageClock;

/// Runs jobs, starting with `first` (the one handed out at registration, if any), until the
/// coordinator has no further job or the worker drains; returns the samples done. A worker that ends
/// on a job it could not run returns why.
pub(crate) async fn run_jobs(
    cfg: &AgentConfig,
    client: &Client,
    link: &Link,
    first: Option<pb::JobSpec>,
    draining: &Arc<AtomicBool>,
    heartbeat_every: Duration,
) -> Result<u64, AgentError> {
    let url = cfg.coordinator.clone();
    let mut executors: Option<Executors> = None;
    let mut next = first;
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
            None => match next_job(link, client, &cfg.worker_id, &previous, &url).await {
                Ok(Some(j)) => j,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            },
        };
        previous = pb_job.job_id.clone();
        let outcome = if pb_job.bench.is_some() {
            // A pool bench (`tresnet-coordinator bench`) loads its own model per device, timed.
            crate::pool_bench::run(cfg, client, link, pb_job)
                .await
                .map(|()| 0)
        } else {
            run_job(
                cfg,
                client,
                link,
                pb_job,
                &mut executors,
                draining,
                heartbeat_every,
            )
            .await
        };
        match outcome {
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
    if let Some(ex) = executors.take() {
        ex.stop().await;
    }
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
pub(crate) enum JobError {
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
    /// How each device's layout was chosen when this model loaded, for every job's shard trailers.
    layouts: Vec<pb::LayoutChoice>,
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
    draining: &Arc<AtomicBool>,
    heartbeat_every: Duration,
) -> Result<u64, JobError> {
    let url = &cfg.coordinator;
    let job: JobSpec = pb_job
        .try_into()
        .map_err(|e| JobError::Refused(AgentError::Job(e)))?;
    let location = StorageLocation::parse(&job.data.data_url, &cfg.storage).map_err(|source| {
        JobError::Refused(AgentError::Storage {
            url: job.data.data_url.clone(),
            source,
        })
    })?;
    let exec_cfg = ExecutorConfig {
        job: job.clone(),
        debug_batch_delay: cfg.debug_batch_delay,
        measure_layout: cfg.measure_layout,
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
        let started =
            tokio::task::spawn_blocking(move || executor::start(&exec_cfg, &devices, &queues))
                .await
                .map_err(|e| JobError::Refused(AgentError::ExecutorTask(e)))?
                .map_err(|source| {
                    JobError::Refused(AgentError::Executor {
                        model: job.model.model.clone(),
                        weights: job.model.weights.clone(),
                        source,
                    })
                })?;
        *executors = Some(Executors {
            key,
            dispatch: Arc::new(dispatch),
            threads: started.threads,
            layouts: started.layouts.iter().map(|l| l.to_pb()).collect(),
        });
    }
    let (dispatch, layouts) = executors
        .as_ref()
        .map(|e| (e.dispatch.clone(), e.layouts.clone()))
        .expect("executors loaded above");
    let clock = Arc::new(StageClock::new(
        cfg.devices
            .iter()
            .map(|&d| crate::metrics::device_label(d))
            .collect(),
        cfg.decode_threads,
    ));
    let gather_logits = cfg.gather_logits && !job.outputs.counts_only;
    if gather_logits {
        tracing::info!(job = %job.job_id.0, "each shard's logits are gathered to the first executor");
    }
    let fetcher = Fetcher::new(
        location,
        cfg.dataset_cache.clone(),
        &job,
        cfg.metrics.clone(),
    );
    let shared = Arc::new(JobContext {
        client: client.clone(),
        link: link.clone(),
        worker_id: cfg.worker_id.clone(),
        gather_logits,
        job: Arc::new(job),
        fetcher,
        dispatch,
        decode: Arc::new(Semaphore::new(cfg.decode_threads.max(1))),
        samples_done: AtomicU64::new(0),
        draining: draining.clone(),
        active: Mutex::new(HashMap::new()),
        model_fault: Mutex::new(None),
        metrics: cfg.metrics.clone(),
        clock,
        layouts,
    });
    cfg.metrics.set_ready();
    shard::run_leases(shared, cfg.prefetch_shards.max(1), heartbeat_every, url)
        .await
        .map_err(|e| match e {
            // The model itself is broken: every shard would fail alike, so the job is refused.
            AgentError::Model(_) => JobError::Refused(e),
            e => JobError::Agent(e),
        })
}
