//! The gRPC service workers talk to. All shared state sits behind one mutex that is never held across
//! an await, so every RPC sees the scheduler, journal and live counters consistently.
//!
//! The service outlives a job: `sweep` swaps the next cell's [`RunState`] in under the same mutex
//! ([`RunState::succeed`]) and the registered workers carry over. Shard and lease ids restart with every
//! job, so each job-scoped request names its job; one naming a job that is over is answered "job done"
//! (lease, heartbeat), dropped (submit) or ignored (release), and never touches the current job. A
//! worker whose job is over asks `NextJob`, which hands out the current job, "retry" while the
//! coordinator is between jobs, or "finished" after the last one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tresnet_common::dataset::DatasetIndex;
use tresnet_common::ids::{LeaseId, SampleIndex, ShardId, WorkerId};
use tresnet_common::job::JobSpec;
use tresnet_common::protocol::PROTOCOL_VERSION;
use tresnet_common::protocol::convert::sample_to_pb;
use tresnet_common::protocol::pb::{self, coordinator_server::Coordinator};
use tresnet_common::software::WorkerSoftware;

use crate::journal::Journal;
use crate::scheduler::{Completion, Millis, Scheduler};

/// How often workers heartbeat: a third of the lease timeout so two lost heartbeats are tolerated, and
/// at most [`PROGRESS_HEARTBEAT`] apart because they also carry the samples each worker has computed.
pub fn heartbeat_interval(lease_timeout: Duration) -> Duration {
    (lease_timeout / 3).min(PROGRESS_HEARTBEAT)
}

/// Heartbeats carry `samples_done`, which moves the progress line between accepted shards (a shard of
/// 256 samples takes minutes on a CPU). One small RPC per worker per second is negligible next to the
/// result traffic (the coordinator accounts over 500k samples/s, see the README's benchmark).
const PROGRESS_HEARTBEAT: Duration = Duration::from_secs(1);

/// When a worker asks for work and none is pending, it waits this long before asking again.
const RETRY_AFTER: Duration = Duration::from_millis(100);
/// Between the jobs of a sweep the coordinator writes one cell's reports and lists the next cell's
/// dataset (seconds); idle workers poll this often, a negligible load that keeps the switch prompt.
const NEXT_JOB_RETRY: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Default)]
pub struct WorkerInfo {
    pub hostname: String,
    pub devices: Vec<String>,
    pub last_seen: Millis,
    pub samples_done: u64,
    pub pid: u32,
    /// `None` when the worker did not say (it is not optional in the protocol, but may be empty).
    pub software: Option<WorkerSoftware>,
}

#[derive(Debug, Clone, Default)]
pub struct LiveStats {
    /// Coordinator-clock times of the first grant and the last accepted result: the steady-state
    /// evaluation window that throughput is measured over (start-up and report writing excluded).
    pub first_lease_ms: Option<Millis>,
    pub last_accept_ms: Option<Millis>,
    pub samples_done: u64,
    pub bad_samples: u64,
    pub duplicates_dropped: u64,
    pub submissions_rejected: u64,
    /// Leases handed back because of a fault of the environment (store, network, device, worker).
    pub environment_faults: u64,
    /// Object-store requests that failed and were retried inside the workers, as they reported.
    pub store_retries: u64,
    /// Every accepted shard (one entry per shard, so bounded by the shard count): the report's
    /// throughput-over-time chart.
    pub timeline: Vec<crate::report::TimelineEvent>,
    /// Each worker's latest stage snapshot and layout choices, from its shard trailers.
    pub stages: BTreeMap<String, crate::stages::LatestStages>,
}

/// Whether the coordinator takes on work: a drain (SIGTERM/SIGINT) first stops leasing while results in
/// flight are still recorded, then stops recording too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intake {
    Open,
    /// No new leases (workers are told to ask again later, so they keep and finish what they hold);
    /// complete results are still accepted and journaled.
    Draining,
    /// Nothing more is accepted: the journal is final for this process.
    Closed,
}

/// Everything the RPC handlers and the run loop share.
#[derive(Debug)]
pub struct RunState {
    /// The job being served, and its wire form (whose job id is unique within this process).
    pub job: Arc<JobSpec>,
    pub pb_job: pb::JobSpec,
    pub index: Arc<DatasetIndex>,
    pub sched: Scheduler,
    pub journal: Journal,
    pub workers: BTreeMap<WorkerId, WorkerInfo>,
    pub live: LiveStats,
    /// Set when the run must stop (a bad sample under --on-bad-sample=fail, a journal write error).
    pub fatal: Option<String>,
    pub fail_on_bad_sample: bool,
    pub max_shards_per_lease: u32,
    pub lease_timeout: Duration,
    /// Accepted shards whose journal write is still in flight; the run is not finished until it is 0.
    pub journal_pending: u32,
    /// Validate + journal time of each accepted submission (exported on /metrics).
    pub accept_seconds: prometheus_client::metrics::histogram::Histogram,
    /// Workers that cannot run this job at all, with their reasons.
    pub refusals: BTreeMap<WorkerId, String>,
    /// No job follows this one: `NextJob` answers "finished" once it is done.
    pub last_job: bool,
    /// Workers that heard "finished": the coordinator keeps serving until each registered one has.
    pub told_finished: BTreeSet<WorkerId>,
    pub intake: Intake,
    start: Instant,
}

impl RunState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        job: &JobSpec,
        index: Arc<DatasetIndex>,
        sched: Scheduler,
        journal: Journal,
        fail_on_bad_sample: bool,
        max_shards_per_lease: u32,
        lease_timeout: Duration,
    ) -> Self {
        RunState {
            job: Arc::new(job.clone()),
            pb_job: job.into(),
            index,
            sched,
            journal,
            workers: BTreeMap::new(),
            live: LiveStats::default(),
            fatal: None,
            fail_on_bad_sample,
            max_shards_per_lease,
            lease_timeout,
            journal_pending: 0,
            accept_seconds: crate::metrics::accept_histogram(),
            refusals: BTreeMap::new(),
            last_job: true,
            told_finished: BTreeSet::new(),
            intake: Intake::Open,
            start: Instant::now(),
        }
    }

    /// Replaces the finished job with `next` (a job id of its own), keeping the registered workers
    /// and the accept histogram, which describe the process rather than one job.
    pub fn succeed(&mut self, mut next: RunState) {
        next.workers = std::mem::take(&mut self.workers);
        for w in next.workers.values_mut() {
            w.last_seen = 0;
            w.samples_done = 0;
        }
        next.accept_seconds = self.accept_seconds.clone();
        *self = next;
    }

    pub fn job_id(&self) -> &str {
        &self.pb_job.job_id
    }

    pub fn now(&self) -> Millis {
        self.start.elapsed().as_millis() as u64
    }

    /// Every shard has a result and every result is durably journaled.
    pub fn finished(&self) -> bool {
        self.sched.is_finished() && self.journal_pending == 0
    }

    pub fn done(&self) -> bool {
        self.finished() || self.fatal.is_some()
    }
}

pub type Shared = Arc<Mutex<RunState>>;

#[derive(Debug, Clone)]
pub struct CoordinatorService {
    state: Shared,
}

impl CoordinatorService {
    pub fn new(state: Shared) -> Self {
        CoordinatorService { state }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RunState> {
        // A panic while holding the lock is a bug; keep serving the consistent-enough state rather than
        // turning one bug into a dead coordinator.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn worker_id(s: &str) -> Result<WorkerId, Status> {
    if s.is_empty() || s.len() > 256 {
        return Err(Status::invalid_argument("worker_id must be 1..=256 bytes"));
    }
    Ok(WorkerId(s.to_string()))
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let r = req.into_inner();
        if r.protocol_version != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "protocol version mismatch: worker speaks {} but this coordinator speaks {}; \
                 run matching tresnet-worker and tresnet-coordinator builds",
                r.protocol_version, PROTOCOL_VERSION
            )));
        }
        let id = worker_id(&r.worker_id)?;
        let mut st = self.lock();
        let now = st.now();
        let software = r.software.map(WorkerSoftware::from);
        tracing::info!(worker = %id, host = %r.hostname, devices = ?r.devices, ?software, "worker registered");
        st.workers.insert(
            id,
            WorkerInfo {
                hostname: r.hostname,
                devices: r.devices,
                last_seen: now,
                samples_done: 0,
                pid: r.pid,
                software,
            },
        );
        Ok(Response::new(pb::RegisterResponse {
            job: (!st.done()).then(|| st.pb_job.clone()),
            heartbeat_interval_ms: heartbeat_interval(st.lease_timeout).as_millis() as u32,
            lease_timeout_ms: st.lease_timeout.as_millis() as u32,
        }))
    }

    async fn lease(
        &self,
        req: Request<pb::LeaseRequest>,
    ) -> Result<Response<pb::LeaseResponse>, Status> {
        let r = req.into_inner();
        let id = worker_id(&r.worker_id)?;
        let mut st = self.lock();
        let now = st.now();
        if !st.workers.contains_key(&id) {
            return Err(Status::failed_precondition(format!(
                "worker {id} is not registered"
            )));
        }
        if let Some(w) = st.workers.get_mut(&id) {
            w.last_seen = now;
        }
        if st.done() || r.job_id != st.job_id() {
            return Ok(Response::new(pb::LeaseResponse {
                job_done: true,
                ..Default::default()
            }));
        }
        let mut leases = Vec::new();
        // Draining: none, and the worker asks again later (keeping the leases it holds alive).
        let wanted = match st.intake {
            Intake::Open => r.max_shards.clamp(1, st.max_shards_per_lease),
            Intake::Draining | Intake::Closed => 0,
        };
        for _ in 0..wanted {
            let Some(g) = st.sched.lease(&id, now) else {
                break;
            };
            st.live.first_lease_ms.get_or_insert(now);
            let samples = g
                .samples
                .clone()
                .map(|i| sample_to_pb(SampleIndex(i), &st.index.samples[i as usize]))
                .collect();
            leases.push(pb::ShardLease {
                shard_id: g.shard.0,
                lease_id: g.lease.0,
                attempt: g.attempt,
                samples,
            });
        }
        let retry_after_ms = if leases.is_empty() {
            RETRY_AFTER.as_millis() as u32
        } else {
            0
        };
        Ok(Response::new(pb::LeaseResponse {
            leases,
            retry_after_ms,
            job_done: false,
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let r = req.into_inner();
        let id = worker_id(&r.worker_id)?;
        let mut st = self.lock();
        let now = st.now();
        if let Some(w) = st.workers.get_mut(&id) {
            w.last_seen = now;
        }
        if r.job_id != st.job_id() {
            // Its lease ids mean nothing to this job's scheduler (they may even collide with live ones).
            return Ok(Response::new(pb::HeartbeatResponse {
                cancelled_lease_ids: r.lease_ids,
                job_done: true,
            }));
        }
        let leases: Vec<LeaseId> = r.lease_ids.iter().map(|&l| LeaseId(l)).collect();
        let cancelled = st.sched.heartbeat(&id, &leases, now);
        if let Some(w) = st.workers.get_mut(&id) {
            w.samples_done = r.samples_done;
        }
        Ok(Response::new(pb::HeartbeatResponse {
            cancelled_lease_ids: cancelled.into_iter().map(|l| l.0).collect(),
            job_done: st.done(),
        }))
    }

    async fn submit(
        &self,
        req: Request<Streaming<pb::SubmitRequest>>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        let mut stream = req.into_inner();
        let header = match stream.next().await {
            Some(Ok(pb::SubmitRequest {
                item: Some(pb::submit_request::Item::Header(h)),
            })) => h,
            Some(Err(e)) => return Err(e),
            _ => {
                return Err(Status::invalid_argument(
                    "submit stream must start with a header",
                ));
            }
        };
        let id = worker_id(&header.worker_id)?;
        let shard = ShardId(header.shard_id);
        let (range, counts_only, num_classes, k5) = {
            let st = self.lock();
            if header.job_id != st.job_id() {
                // A late result of an earlier job: that job already accounted every shard.
                return Ok(Response::new(pb::SubmitResponse {
                    accepted: false,
                    reason: format!("job {:?} is over; result dropped", header.job_id),
                }));
            }
            if header.shard_id >= st.sched.shard_count() as u64 {
                return Err(Status::invalid_argument(format!("unknown {shard}")));
            }
            let j = &st.job;
            (
                st.sched.samples_of(shard),
                j.outputs.counts_only,
                j.model.num_classes as usize,
                j.outputs.k5(j.model.num_classes),
            )
        };
        // Collect the shard's results, refusing anything that would break exactly-once accounting.
        let expected = (range.end - range.start) as usize;
        let mut seen = BTreeSet::new();
        let mut results = Vec::with_capacity(if counts_only { 0 } else { expected });
        let mut counts: Option<pb::ShardCounts> = None;
        let mut trailer: Option<pb::ShardTrailer> = None;
        while let Some(item) = stream.next().await {
            let item = item?.item;
            if trailer.is_some() {
                return Err(Status::invalid_argument(
                    "nothing may follow the shard trailer",
                ));
            }
            let batch = match item {
                Some(pb::submit_request::Item::Trailer(t)) => {
                    trailer = Some(t);
                    continue;
                }
                Some(pb::submit_request::Item::Batch(b)) if counts.is_none() => b,
                Some(pb::submit_request::Item::Counts(c)) if counts_only && counts.is_none() => {
                    counts = Some(c);
                    continue;
                }
                Some(pb::submit_request::Item::Counts(_)) if !counts_only => {
                    return Err(Status::invalid_argument(
                        "shard counts sent for a job that is not counts-only",
                    ));
                }
                _ => {
                    return Err(Status::invalid_argument(
                        "only result batches, then (counts-only jobs) one shard-counts message, \
                         may follow the header",
                    ));
                }
            };
            for r in batch.results {
                if counts_only && r.error.is_empty() {
                    return Err(Status::invalid_argument(format!(
                        "sample {} of counts-only {shard} sent as a result without an error",
                        r.index
                    )));
                }
                if !range.contains(&r.index) {
                    return Err(Status::invalid_argument(format!(
                        "sample {} is not in {shard} ({}..{})",
                        r.index, range.start, range.end
                    )));
                }
                if !seen.insert(r.index) {
                    return Err(Status::invalid_argument(format!(
                        "sample {} submitted twice for {shard}",
                        r.index
                    )));
                }
                results.push(r);
            }
        }
        let evaluated = match (&counts, counts_only) {
            (Some(c), _) => {
                if let Err(e) = crate::tally::check_counts(c, num_classes, k5) {
                    self.lock().live.submissions_rejected += 1;
                    return Err(Status::invalid_argument(format!(
                        "{shard} counts are inconsistent: {e}"
                    )));
                }
                c.evaluated as usize
            }
            (None, true) => {
                self.lock().live.submissions_rejected += 1;
                return Err(Status::invalid_argument(format!(
                    "counts-only {shard} submission has no shard counts"
                )));
            }
            (None, false) => 0,
        };
        if results.len() + evaluated != expected {
            let mut st = self.lock();
            st.live.submissions_rejected += 1;
            return Err(Status::invalid_argument(format!(
                "{shard} submission has {} of {expected} samples",
                results.len() + evaluated
            )));
        }
        let accept_start = Instant::now();
        results.sort_by_key(|r| r.index);
        // The scheduler decides first-wins under the lock; the journal write happens outside it (it may
        // be a PUT to an object store) while `journal_pending` keeps the run from finishing early.
        let (record, journal, n_bad) = {
            let mut st = self.lock();
            if st.intake == Intake::Closed {
                return Err(Status::failed_precondition(format!(
                    "the coordinator is shutting down and records nothing more; {shard} was not \
                     recorded (a rerun recomputes it)"
                )));
            }
            // The store's failures happened whether or not this result is used.
            st.live.store_retries += trailer.as_ref().map_or(0, |t| t.store_retries);
            if let Some(t) = &trailer {
                st.live.stages.entry(id.0.clone()).or_default().update(t);
            }
            let bad = results.iter().find(|r| !r.error.is_empty());
            if st.fail_on_bad_sample
                && let Some(b) = bad
            {
                // Stop before anything of this shard is journaled, so that a resume under the same
                // policy meets the bad sample again and fails the same way.
                let key = st.index.samples[b.index as usize].key.clone();
                if st.fatal.is_none() {
                    st.fatal = Some(format!(
                        "bad sample {key}: {} (--on-bad-sample=fail)",
                        b.error
                    ));
                }
                st.sched.release(&id, LeaseId(header.lease_id), None);
                return Ok(Response::new(pb::SubmitResponse {
                    accepted: false,
                    reason: format!(
                        "{shard} holds bad sample {key}; the run stops (--on-bad-sample=fail)"
                    ),
                }));
            }
            match st.sched.complete(&id, LeaseId(header.lease_id)) {
                Completion::Unknown => {
                    return Err(Status::failed_precondition(format!(
                        "lease {} of {shard} was not granted to worker {id}",
                        header.lease_id
                    )));
                }
                Completion::Duplicate => {
                    st.live.duplicates_dropped += 1;
                    return Ok(Response::new(pb::SubmitResponse {
                        accepted: false,
                        reason: format!("{shard} already has a result; duplicate dropped"),
                    }));
                }
                Completion::Accepted => {}
            }
            let n_bad = results.iter().filter(|r| !r.error.is_empty()).count() as u64;
            st.journal_pending += 1;
            let record = pb::ShardRecord {
                shard_id: shard.0,
                worker_id: id.0.clone(),
                results,
                counts,
            };
            (record, st.journal.clone(), n_bad)
        };
        // The write and its bookkeeping run as their own task: if the worker drops the RPC meanwhile
        // (its job ended and it aborted its tasks), this handler is dropped too, and an accepted
        // shard must still be recorded and `journal_pending` brought back down, or the run would
        // wait for it forever.
        let state = self.state.clone();
        let record_it = tokio::spawn(async move {
            let written = journal.write(&record).await;
            let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
            st.journal_pending -= 1;
            if let Err(e) = written {
                st.fatal = Some(format!(
                    "cannot record {shard}: {}",
                    tresnet_common::error_text::error_chain(&e)
                ));
                return Err(Status::internal(format!(
                    "coordinator cannot record {shard}"
                )));
            }
            st.live.samples_done += expected as u64;
            let now = st.now();
            st.live.last_accept_ms = Some(now);
            st.live.timeline.push(crate::report::TimelineEvent {
                t_ms: now,
                worker: id.0.clone(),
                shard: shard.0,
                samples: expected as u64,
            });
            st.live.bad_samples += n_bad;
            st.accept_seconds
                .observe(accept_start.elapsed().as_secs_f64());
            Ok(())
        });
        record_it
            .await
            .map_err(|e| Status::internal(format!("recording {shard} failed: {e}")))??;
        Ok(Response::new(pb::SubmitResponse {
            accepted: true,
            reason: String::new(),
        }))
    }

    async fn release(
        &self,
        req: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let r = req.into_inner();
        let id = worker_id(&r.worker_id)?;
        let reason = pb::ReleaseReason::try_from(r.reason).map_err(|_| {
            Status::invalid_argument(format!("unknown release reason {}", r.reason))
        })?;
        // A failed attempt always carries a reason, so that a failed shard can say why.
        let error = match reason {
            pb::ReleaseReason::Draining => None,
            pb::ReleaseReason::Environment if r.error.is_empty() => {
                Some("fault of the environment (no reason given)".to_string())
            }
            pb::ReleaseReason::Environment => Some(r.error),
            pb::ReleaseReason::Unspecified => {
                return Err(Status::invalid_argument(
                    "a release must say why: draining or a fault of the environment",
                ));
            }
        };
        let mut st = self.lock();
        if r.job_id == st.job_id() {
            st.live.store_retries += r.store_retries;
            if let Some(e) = &error {
                tracing::warn!(worker = %id, lease = r.lease_id, error = %e, "worker handed a shard back: fault of the environment");
                st.live.environment_faults += 1;
            }
            st.sched.release(&id, LeaseId(r.lease_id), error);
        }
        Ok(Response::new(pb::ReleaseResponse {}))
    }

    async fn next_job(
        &self,
        req: Request<pb::NextJobRequest>,
    ) -> Result<Response<pb::NextJobResponse>, Status> {
        let r = req.into_inner();
        let id = worker_id(&r.worker_id)?;
        let mut st = self.lock();
        let now = st.now();
        let Some(w) = st.workers.get_mut(&id) else {
            return Err(Status::failed_precondition(format!(
                "worker {id} is not registered"
            )));
        };
        w.last_seen = now;
        let resp = if !st.done() && r.previous_job_id != st.job_id() {
            pb::NextJobResponse {
                job: Some(st.pb_job.clone()),
                ..Default::default()
            }
        } else if st.last_job && st.done() {
            st.told_finished.insert(id);
            pb::NextJobResponse {
                finished: true,
                ..Default::default()
            }
        } else {
            // Between jobs, or the worker refused the current one (it must not get it again).
            pb::NextJobResponse {
                retry_after_ms: NEXT_JOB_RETRY.as_millis() as u32,
                ..Default::default()
            }
        };
        Ok(Response::new(resp))
    }

    async fn refuse_job(
        &self,
        req: Request<pb::RefuseJobRequest>,
    ) -> Result<Response<pb::RefuseJobResponse>, Status> {
        let r = req.into_inner();
        let id = worker_id(&r.worker_id)?;
        let mut st = self.lock();
        if r.job_id == st.job_id() {
            tracing::warn!(worker = %id, job = %r.job_id, error = %r.error, "worker cannot run the job");
            st.refusals.insert(id, r.error);
        }
        Ok(Response::new(pb::RefuseJobResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;
    use tresnet_common::dataset::{DatasetFormat, Sample, SampleSource};
    use tresnet_common::protocol::pb::coordinator_client::CoordinatorClient;
    use tresnet_common::storage::{StorageLocation, StorageOptions};

    use super::*;
    use crate::scheduler::SchedulerConfig;

    /// A job over `n` samples in shards of 2, journaled under `dir`, with wire id `id`.
    fn state(dir: &std::path::Path, id: &str, n: u64) -> RunState {
        let root = StorageLocation::parse("/d", &StorageOptions::default()).unwrap();
        let samples = (0..n)
            .map(|i| Sample {
                key: format!("s{i}.jpg").as_str().into(),
                label: 0,
                source: SampleSource::Object {
                    path: root.path_of(&format!("s{i}.jpg")).unwrap(),
                    size: Some(10),
                },
            })
            .collect();
        let index = DatasetIndex::new(
            "file:///d",
            DatasetFormat::ImageFolder,
            vec!["a".into()],
            samples,
            Vec::new(),
        )
        .unwrap();
        let sched = Scheduler::new(
            n,
            2,
            SchedulerConfig {
                lease_timeout: Duration::from_secs(30),
                max_failures: 3,
                speculative: false,
            },
        );
        let mut job = tresnet_common::job::example_job();
        job.job_id = tresnet_common::ids::JobId(id.into());
        let journal = Journal::open(dir, tresnet_common::job::JobIdentity([0; 32])).unwrap();
        let mut st = RunState::new(
            &job,
            Arc::new(index),
            sched,
            journal,
            false,
            4,
            Duration::from_secs(30),
        );
        st.last_job = false;
        st
    }

    fn results(range: std::ops::Range<u64>) -> Vec<pb::SubmitRequest> {
        vec![pb::SubmitRequest {
            item: Some(pb::submit_request::Item::Batch(pb::ResultBatch {
                results: range
                    .map(|index| pb::SampleResult {
                        index,
                        topk_indices: vec![0],
                        topk_logits: vec![1.0],
                        confidence: 1.0,
                        ..Default::default()
                    })
                    .collect(),
            })),
        }]
    }

    fn header(job: &str, shard: u64, lease: u64) -> pb::SubmitRequest {
        pb::SubmitRequest {
            item: Some(pb::submit_request::Item::Header(pb::SubmitHeader {
                worker_id: "w".into(),
                shard_id: shard,
                lease_id: lease,
                job_id: job.into(),
            })),
        }
    }

    /// `shared` served on a loopback port, with a client registered as worker `w`.
    struct Served {
        client: CoordinatorClient<tonic::transport::Channel>,
        registration: pb::RegisterResponse,
        stop: tokio::sync::oneshot::Sender<()>,
        server: tokio::task::JoinHandle<anyhow::Result<()>>,
    }

    async fn serve_registered(shared: &Shared, pid: u32) -> Served {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(crate::run::serve(
            listener,
            shared.clone(),
            None,
            None,
            async {
                let _ = stopped.await;
            },
        ));
        let mut client = CoordinatorClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let registration = client
            .register(pb::RegisterRequest {
                protocol_version: PROTOCOL_VERSION,
                worker_id: "w".into(),
                pid,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        Served {
            client,
            registration,
            stop,
            server,
        }
    }

    fn lease_req(job: &str) -> pb::LeaseRequest {
        pb::LeaseRequest {
            worker_id: "w".into(),
            max_shards: 1,
            job_id: job.into(),
        }
    }

    /// A shard handed back for a fault of the environment is a failed attempt, never bad samples: it is
    /// retried, and fails with the reasons after `max_failures`; its samples stay out of the journal.
    /// A drain hand-back is no attempt at all, and a release that does not say why is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn environment_faults_are_retried_then_fail_the_shard_never_bad_samples() {
        let dir = tempfile::tempdir().unwrap();
        let shared: Shared = Arc::new(Mutex::new(state(dir.path(), "J#1", 2)));
        // The stopper is held: dropping it would stop the server.
        let Served {
            client: mut c,
            stop: _stop,
            ..
        } = serve_registered(&shared, 0).await;
        let release = |lease_id, reason: pb::ReleaseReason, error: &str| pb::ReleaseRequest {
            worker_id: "w".into(),
            lease_id,
            error: error.into(),
            reason: reason.into(),
            store_retries: 5,
            job_id: "J#1".into(),
        };
        let unspecified = c
            .release(release(1, pb::ReleaseReason::Unspecified, ""))
            .await
            .unwrap_err();
        assert_eq!(unspecified.code(), tonic::Code::InvalidArgument);
        let first = c.lease(lease_req("J#1")).await.unwrap().into_inner().leases;
        c.release(release(first[0].lease_id, pb::ReleaseReason::Draining, ""))
            .await
            .unwrap();
        for attempt in 0..3 {
            let l = c.lease(lease_req("J#1")).await.unwrap().into_inner().leases;
            assert_eq!(l.len(), 1, "attempt {attempt}: the shard is leased again");
            let why = format!("fetching s3://b/s0.jpg failed: connection refused ({attempt})");
            c.release(release(l[0].lease_id, pb::ReleaseReason::Environment, &why))
                .await
                .unwrap();
        }
        let journal = {
            let st = shared.lock().unwrap();
            let failed = st.sched.failed();
            assert_eq!(failed.len(), 1);
            assert_eq!(failed[&ShardId(0)].len(), 3, "{failed:?}");
            assert!(failed[&ShardId(0)][2].contains("connection refused (2)"));
            assert_eq!(
                (st.live.bad_samples, st.live.samples_done),
                (0, 0),
                "nothing counted"
            );
            assert_eq!(st.live.environment_faults, 3);
            assert_eq!(
                st.live.store_retries,
                4 * 5,
                "the drain's retries count too"
            );
            st.journal.clone()
        };
        assert!(journal.completed().await.unwrap().is_empty());
    }

    /// Under `--on-bad-sample fail` a shard holding a bad sample is refused before it is journaled, and
    /// the run is told to stop naming the sample.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fail_policy_refuses_the_shard_before_it_is_journaled() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = state(dir.path(), "J#1", 2);
        st.fail_on_bad_sample = true;
        let shared: Shared = Arc::new(Mutex::new(st));
        // The stopper is held: dropping it would stop the server.
        let Served {
            client: mut c,
            stop: _stop,
            ..
        } = serve_registered(&shared, 0).await;
        let l = c.lease(lease_req("J#1")).await.unwrap().into_inner().leases;
        let mut submit = vec![header("J#1", 0, l[0].lease_id)];
        submit.push(pb::SubmitRequest {
            item: Some(pb::submit_request::Item::Batch(pb::ResultBatch {
                results: vec![
                    pb::SampleResult {
                        index: 0,
                        topk_indices: vec![0],
                        topk_logits: vec![1.0],
                        confidence: 1.0,
                        ..Default::default()
                    },
                    pb::SampleResult {
                        index: 1,
                        error: "corrupt jpeg: bad huffman table".into(),
                        ..Default::default()
                    },
                ],
            })),
        });
        submit.push(pb::SubmitRequest {
            item: Some(pb::submit_request::Item::Trailer(pb::ShardTrailer {
                store_retries: 2,
                ..Default::default()
            })),
        });
        let r = c
            .submit(futures::stream::iter(submit))
            .await
            .unwrap()
            .into_inner();
        assert!(!r.accepted && r.reason.contains("s1.jpg"), "{r:?}");
        let journal = {
            let st = shared.lock().unwrap();
            let fatal = st.fatal.clone().unwrap();
            assert!(
                fatal.contains("bad sample s1.jpg") && fatal.contains("bad huffman"),
                "{fatal}"
            );
            assert_eq!((st.live.samples_done, st.live.bad_samples), (0, 0));
            assert_eq!(st.live.store_retries, 2);
            st.journal.clone()
        };
        assert!(
            journal.completed().await.unwrap().is_empty(),
            "nothing journaled"
        );
    }

    /// Shard and lease ids restart with every job: requests naming a job that is over are answered
    /// "job done" or dropped, and never count towards the job that replaced it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_of_a_finished_job_never_touch_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let shared: Shared = Arc::new(Mutex::new(state(&dir.path().join("a"), "A#1", 2)));
        let Served {
            client: mut c,
            registration: reg,
            stop,
            server,
        } = serve_registered(&shared, 7).await;
        assert_eq!(reg.job.unwrap().job_id, "A#1");
        let lease = |job: &str| pb::LeaseRequest {
            worker_id: "w".into(),
            max_shards: 1,
            job_id: job.into(),
        };
        let a = c.lease(lease("A#1")).await.unwrap().into_inner().leases;
        assert_eq!((a[0].shard_id, a[0].lease_id), (0, 1));
        let mut submit = vec![header("A#1", 0, 1)];
        submit.extend(results(0..2));
        let r = c.submit(futures::stream::iter(submit)).await.unwrap();
        assert!(r.into_inner().accepted);
        // Job A is done; another job follows, so the worker is told to wait, not to exit.
        assert!(c.lease(lease("A#1")).await.unwrap().into_inner().job_done);
        let next = |previous: &str| pb::NextJobRequest {
            worker_id: "w".into(),
            previous_job_id: previous.into(),
        };
        let wait = c.next_job(next("A#1")).await.unwrap().into_inner();
        assert!(wait.job.is_none() && !wait.finished && wait.retry_after_ms > 0);

        shared
            .lock()
            .unwrap()
            .succeed(state(&dir.path().join("b"), "B#2", 4));
        let b = c.next_job(next("A#1")).await.unwrap().into_inner();
        assert_eq!(b.job.unwrap().job_id, "B#2");
        // B's first lease has A's ids again.
        let b0 = c.lease(lease("B#2")).await.unwrap().into_inner().leases;
        assert_eq!((b0[0].shard_id, b0[0].lease_id), (0, 1));
        // A late duplicate of A's shard 0 (same shard and lease id as B's live lease) is dropped.
        let mut late = vec![header("A#1", 0, 1)];
        late.extend(results(0..2));
        let r = c
            .submit(futures::stream::iter(late))
            .await
            .unwrap()
            .into_inner();
        assert!(!r.accepted && r.reason.contains("A#1"), "{r:?}");
        // A heartbeat and a release naming A do not extend or free B's lease 1.
        let hb = c
            .heartbeat(pb::HeartbeatRequest {
                worker_id: "w".into(),
                lease_ids: vec![1],
                samples_done: 2,
                job_id: "A#1".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((hb.cancelled_lease_ids, hb.job_done), (vec![1], true));
        c.release(pb::ReleaseRequest {
            worker_id: "w".into(),
            lease_id: 1,
            error: "boom".into(),
            reason: pb::ReleaseReason::Environment.into(),
            store_retries: 0,
            job_id: "A#1".into(),
        })
        .await
        .unwrap();
        {
            let st = shared.lock().unwrap();
            assert_eq!(st.live.samples_done, 0);
            assert_eq!(st.sched.leases_in_flight(), 1);
            assert!(st.sched.failures_of(ShardId(0)).is_empty());
            // The registry carried over.
            assert_eq!(st.workers[&WorkerId("w".into())].pid, 7);
        }
        // A refusal of B is recorded against B; then, with B over and nothing after it, "finished".
        c.refuse_job(pb::RefuseJobRequest {
            worker_id: "w".into(),
            job_id: "B#2".into(),
            error: "no such model".into(),
        })
        .await
        .unwrap();
        {
            let mut st = shared.lock().unwrap();
            assert_eq!(st.refusals[&WorkerId("w".into())], "no such model");
            st.fatal = Some("refused".into());
            st.last_job = true;
        }
        let done = c.next_job(next("B#2")).await.unwrap().into_inner();
        assert!(done.finished && done.job.is_none());
        assert!(
            shared
                .lock()
                .unwrap()
                .told_finished
                .contains(&WorkerId("w".into()))
        );
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }
}
