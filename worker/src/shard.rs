//! The shard runner: leases a job's shards while lease slots are free, runs each leased shard (fetch
//! and preprocess its samples on the CPU pool, batch them to the executors, stream the results back)
//! and heartbeats from a task of its own, so a long forward never looks like death.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tresnet_common::dataset::Sample;
use tresnet_common::ids::SampleIndex;
use tresnet_common::job::JobSpec;
use tresnet_common::protocol::convert::sample_from_pb;
use tresnet_common::protocol::pb::{self, SampleResult};
use tresnet_common::storage::request_failures;

use crate::agent::{AgentError, Client, call_error, status_text};
use crate::dispatch::{Dispatch, DispatchError};
use crate::executor::{Batch, Work};
use crate::fault::{
    self, EnvironmentFault, Fault, ModelFault, ModelTally, SampleFault, ShardError,
};
use crate::fetch::Fetcher;
use crate::link::{CallError, Link, Submission};
use crate::metrics::{Stage, WorkerMetrics};
use crate::preprocess::PreprocessedImage;
use crate::preprocess::prepare::prepare;
use crate::stages::StageClock;

/// Objects fetched concurrently per shard; enough to hide object-store latency without flooding it.
const FETCH_CONCURRENCY: usize = 16;

/// What every lease of one job shares.
pub(crate) struct JobContext {
    pub(crate) client: Client,
    pub(crate) link: Link,
    pub(crate) worker_id: String,
    pub(crate) job: Arc<JobSpec>,
    pub(crate) fetcher: Fetcher,
    pub(crate) dispatch: Arc<Dispatch>,
    /// Per-sample results come from one gather per shard, not from each batch.
    pub(crate) gather_logits: bool,
    pub(crate) decode: Arc<Semaphore>,
    pub(crate) samples_done: AtomicU64,
    /// Set by SIGTERM: finish the batch in hand, hand every lease back, exit cleanly.
    pub(crate) draining: Arc<AtomicBool>,
    /// Live leases and the tasks running them, so a cancelled lease can be stopped.
    pub(crate) active: Mutex<HashMap<u64, JoinHandle<()>>>,
    /// Set by a shard whose logits were mostly non-finite: the lease loop then refuses the job.
    pub(crate) model_fault: Mutex<Option<ModelFault>>,
    pub(crate) metrics: WorkerMetrics,
    /// Where this job's time goes on this worker; every shard trailer carries a snapshot.
    pub(crate) clock: Arc<StageClock>,
    /// How each device's model layout was chosen, for the trailers.
    pub(crate) layouts: Vec<pb::LayoutChoice>,
}

/// Leases and runs the job's shards, at most `capacity` at once, until the coordinator says the job is
/// done (or the worker drains); returns the samples done.
pub(crate) async fn run_leases(
    shared: Arc<JobContext>,
    capacity: u32,
    heartbeat_every: Duration,
    url: &str,
) -> Result<u64, AgentError> {
    let heartbeat = tokio::spawn(heartbeat_loop(shared.clone(), heartbeat_every));
    let result = lease_loop(&shared, capacity, url).await;
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
    result?;
    Ok(shared.samples_done.load(Ordering::Relaxed))
}

async fn lease_loop(shared: &Arc<JobContext>, capacity: u32, url: &str) -> Result<(), AgentError> {
    loop {
        // The heartbeat task gave up on the coordinator while every lease slot was busy.
        if let Some(lost) = shared.link.lost() {
            return Err(lost.into());
        }
        let broken = shared
            .model_fault
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(fault) = broken {
            return Err(fault.into());
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
async fn heartbeat_loop(shared: Arc<JobContext>, every: Duration) {
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

/// Runs one leased shard. A shard that cannot be finished here is handed back with its reason and
/// never submitted: its samples are not the data's fault.
async fn run_shard(shared: Arc<JobContext>, lease: pb::ShardLease) {
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
        ShardError::Model(fault) => {
            tracing::error!(lease = lease_id, error = %fault, "shard handed back: the model's logits are not finite");
            shared.metrics.shards_failed.inc();
            *shared.model_fault.lock().unwrap_or_else(|p| p.into_inner()) = Some(fault.clone());
            (pb::ReleaseReason::Environment, fault.to_string())
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
    shared: &Arc<JobContext>,
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
                let r = prepare(
                    &s,
                    &shared.job,
                    &shared.fetcher,
                    &shared.decode,
                    &shared.metrics,
                    &shared.clock,
                )
                .await;
                (i, s.label, r)
            }
        })
        .buffered(FETCH_CONCURRENCY);
    futures::pin_mut!(prepared);
    let mut pending = Vec::new();
    let mut done = false;
    let mut tally = ModelTally::default();
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
            let results = run_batch(shared, lease.lease_id, items, side, &mut tally).await?;
            shared.samples_done.fetch_add(n, Ordering::Relaxed);
            if results.is_empty() {
                continue;
            }
            // A full stream (the coordinator reading slowly) is submit time.
            let send_start = std::time::Instant::now();
            tx.send(pb::SubmitRequest {
                item: Some(pb::submit_request::Item::Batch(pb::ResultBatch { results })),
            })
            .await
            .map_err(stream_closed)?;
            shared.clock.submit(send_start.elapsed());
        }
    }
    if shared.gather_logits {
        let mut results = shared
            .dispatch
            .gather(&shared.job, lease.lease_id)
            .await
            .map_err(EnvironmentFault::Executor)?;
        // Executors' error results are non-finite logits (see `run_batch`).
        tally.non_finite += results.iter().filter(|r| !r.error.is_empty()).count() as u64;
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
                i64::from(shared.job.scored_classes()),
            )
            .await
            .map_err(EnvironmentFault::Executor)?;
        tx.send(pb::SubmitRequest {
            item: Some(pb::submit_request::Item::Counts(counts)),
        })
        .await
        .map_err(stream_closed)?;
    }
    // Before the trailer: a shard whose model output is mostly non-finite is never submitted.
    if let Some(fault) = tally.fault(&shared.job, lease.shard_id) {
        return Err(fault.into());
    }
    tx.send(pb::SubmitRequest {
        item: Some(pb::submit_request::Item::Trailer(pb::ShardTrailer {
            store_retries: store_failures.load(Ordering::Relaxed),
            stages: Some(shared.clock.snapshot()),
            layouts: shared.layouts.clone(),
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
    shared.clock.submit(submit_start.elapsed());
    shared.metrics.shards_submitted.inc();
    if !resp.accepted {
        tracing::debug!(shard = lease.shard_id, reason = %resp.reason, "result not used");
    }
    Ok(())
}

/// Sends the good images of a group to an executor; bad ones become error results right away. `tally`
/// counts the samples the model ran on and those whose logits were not finite (the executor's error
/// results).
async fn run_batch(
    shared: &Arc<JobContext>,
    lease: u64,
    items: Vec<(SampleIndex, u32, Result<PreprocessedImage, SampleFault>)>,
    side: i64,
    tally: &mut ModelTally,
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
        tally.evaluated += indices.len() as u64;
        let (reply, rx) = tokio::sync::oneshot::channel();
        let batch = Batch {
            lease,
            indices,
            labels,
            pixels,
            side,
            job: shared.job.clone(),
            clock: shared.clock.clone(),
            reply,
        };
        shared
            .dispatch
            .send_batch(batch)
            .await
            .map_err(EnvironmentFault::Executor)?;
        let results = rx
            .await
            .map_err(|_| EnvironmentFault::Executor(DispatchError::BatchDropped))?
            .map_err(|e| EnvironmentFault::Executor(e.into()))?;
        let non_finite = results.iter().filter(|r| !r.error.is_empty()).count();
        shared.metrics.bad_samples.inc_by(non_finite as u64);
        tally.non_finite += non_finite as u64;
        out.extend(results);
    }
    out.sort_by_key(|r| r.index);
    Ok(out)
}
