//! The gRPC service workers talk to. All shared state sits behind one mutex that is never held across
//! an await, so every RPC sees the scheduler, journal and live counters consistently; the state itself
//! ([`RunState`]) keeps its invariants, and a submission is checked by the pure
//! [`crate::submission`] rules before the state sees it.
//!
//! The service outlives a job: `sweep` swaps the next cell's [`RunState`] in under the same mutex
//! ([`RunState::succeed`]) and the registered workers carry over. Shard and lease ids restart with every
//! job, so each job-scoped request names its job; one naming a job that is over is answered "job done"
//! (lease, heartbeat), dropped (submit) or ignored (release), and never touches the current job. A
//! worker whose job is over asks `NextJob`, which hands out the current job, "retry" while the
//! coordinator is between jobs, or "finished" after the last one.

use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tresnet_common::ids::{LeaseId, SampleIndex, WorkerId};
use tresnet_common::protocol::convert::sample_to_pb;
use tresnet_common::protocol::pb::{self, coordinator_server::Coordinator};
use tresnet_common::protocol::{MAX_MESSAGE_BYTES, PROTOCOL_VERSION};
use tresnet_common::software::WorkerSoftware;

use crate::run_state::Acceptance;
pub use crate::run_state::{Intake, LiveStats, RunState, Shared, WorkerInfo};
use crate::submission::{HeaderProblem, Rejection, SubmissionCheck, check_header};

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

#[derive(Debug, Clone)]
pub struct CoordinatorService {
    state: Shared,
}

impl CoordinatorService {
    pub fn new(state: Shared) -> Self {
        CoordinatorService { state }
    }

    fn lock(&self) -> MutexGuard<'_, RunState> {
        // A panic while holding the lock is a bug; keep serving the consistent-enough state rather than
        // turning one bug into a dead coordinator.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The opening every worker request shares: a valid worker id, then the state, with the worker
    /// noted as heard from; the flag says whether it is registered.
    fn open(&self, worker: &str) -> Result<(WorkerId, bool, MutexGuard<'_, RunState>), Status> {
        let id = worker_id(worker)?;
        let mut st = self.lock();
        let registered = st.touch(&id);
        Ok((id, registered, st))
    }
}

/// A worker of another protocol version is refused at registration, naming both versions; shared by
/// every service a worker registers with (runs, sweeps, the pool bench).
pub(crate) fn check_protocol(worker: u32) -> Result<(), Status> {
    if worker != PROTOCOL_VERSION {
        return Err(Status::failed_precondition(format!(
            "protocol version mismatch: worker speaks {worker} but this coordinator speaks {PROTOCOL_VERSION}; \
             run matching tresnet-worker and tresnet-coordinator builds"
        )));
    }
    Ok(())
}

pub(crate) fn worker_id(s: &str) -> Result<WorkerId, Status> {
    if s.is_empty() || s.len() > 256 {
        return Err(Status::invalid_argument("worker_id must be 1..=256 bytes"));
    }
    Ok(WorkerId(s.to_string()))
}

fn not_registered(id: &WorkerId) -> Status {
    Status::failed_precondition(format!("worker {id} is not registered"))
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let r = req.into_inner();
        check_protocol(r.protocol_version)?;
        let id = worker_id(&r.worker_id)?;
        let mut st = self.lock();
        let software = r.software.map(WorkerSoftware::from);
        tracing::info!(worker = %id, host = %r.hostname, devices = ?r.devices, ?software, "worker registered");
        st.register(
            id,
            WorkerInfo {
                hostname: r.hostname,
                devices: r.devices,
                pid: r.pid,
                software,
                ..Default::default()
            },
        );
        Ok(Response::new(pb::RegisterResponse {
            job: (!st.done()).then(|| st.pb_job().clone()),
            heartbeat_interval_ms: heartbeat_interval(st.lease_timeout()).as_millis() as u32,
            lease_timeout_ms: st.lease_timeout().as_millis() as u32,
        }))
    }

    async fn lease(
        &self,
        req: Request<pb::LeaseRequest>,
    ) -> Result<Response<pb::LeaseResponse>, Status> {
        let r = req.into_inner();
        let (id, registered, mut st) = self.open(&r.worker_id)?;
        if !registered {
            return Err(not_registered(&id));
        }
        if st.done() || r.job_id != st.job_id() {
            return Ok(Response::new(pb::LeaseResponse {
                job_done: true,
                ..Default::default()
            }));
        }
        // Draining: none, and the worker asks again later (keeping the leases it holds alive).
        let leases: Vec<pb::ShardLease> = st
            .grant(&id, r.max_shards)
            .into_iter()
            .map(|g| {
                // The evidence fault tests wait for before killing a worker that holds a lease.
                tracing::debug!(worker = %id, shard = g.shard.0, lease = g.lease.0, attempt = g.attempt, "lease granted");
                pb::ShardLease {
                    shard_id: g.shard.0,
                    lease_id: g.lease.0,
                    attempt: g.attempt,
                    samples: g
                        .samples
                        .clone()
                        .map(|i| sample_to_pb(SampleIndex(i), &st.index().samples[i as usize]))
                        .collect(),
                }
            })
            .collect();
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
        let (id, _, mut st) = self.open(&r.worker_id)?;
        if r.job_id != st.job_id() {
            // Its lease ids mean nothing to this job's scheduler (they may even collide with live ones).
            return Ok(Response::new(pb::HeartbeatResponse {
                cancelled_lease_ids: r.lease_ids,
                job_done: true,
            }));
        }
        let leases: Vec<LeaseId> = r.lease_ids.iter().map(|&l| LeaseId(l)).collect();
        let cancelled = st.heartbeat(&id, &leases, r.samples_done);
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
        let lease = LeaseId(header.lease_id);
        let (id, mut check) = {
            let (id, _, mut st) = self.open(&header.worker_id)?;
            match check_header(&header, st.job_id(), st.sched().shard_count()) {
                Ok(shard) => (id, SubmissionCheck::new(st.shard_job(shard))),
                // A late result of an earlier job: that job already accounted every shard.
                Err(stale @ HeaderProblem::StaleJob { .. }) => {
                    return Ok(Response::new(pb::SubmitResponse {
                        accepted: false,
                        reason: stale.to_string(),
                    }));
                }
                Err(unknown @ HeaderProblem::UnknownShard { .. }) => {
                    st.count_rejection(&id);
                    return Err(Status::invalid_argument(unknown.to_string()));
                }
            }
        };
        let shard = check.shard();
        // Every message is checked as it arrives, so a stream that breaks the rules is refused at once
        // rather than buffered.
        let mut verdict = Ok(());
        while let Some(item) = stream.next().await {
            let item = match item {
                Ok(i) => i.item,
                // Over the cap: the worker built a message the protocol forbids.
                Err(e) if e.code() == tonic::Code::OutOfRange => {
                    verdict = Err(Rejection::OverMessageCap {
                        shard,
                        limit: MAX_MESSAGE_BYTES,
                    });
                    break;
                }
                // The transport broke: nobody's fault that the worker should pay for; it sends the
                // shard again or hands the lease back.
                Err(e) => return Err(e),
            };
            verdict = check.push(item);
            if verdict.is_err() {
                break;
            }
            // The evidence fault tests wait for before cutting a stream in the middle.
            let (received, expected) = check.progress();
            tracing::debug!(worker = %id, shard = shard.0, received, expected, "submit batch received");
        }
        let checked = match verdict.and_then(|()| check.finish()) {
            Ok(c) => c,
            Err(why) if !why.blames_worker() => return Err(Status::aborted(why.to_string())),
            Err(why) => {
                self.lock().reject_submission(&id, lease, &why);
                return Err(Status::invalid_argument(why.to_string()));
            }
        };
        let accept_start = Instant::now();
        let bad = checked.bad;
        let accepted = self.lock().accept_shard(&id, lease, shard, checked);
        let (record, journal) = match accepted {
            Acceptance::Accepted { record, journal } => (record, journal),
            Acceptance::Closed => {
                return Err(Status::failed_precondition(format!(
                    "the coordinator is shutting down and records nothing more; {shard} was not \
                     recorded (a rerun recomputes it)"
                )));
            }
            Acceptance::BadSampleStops { key } => {
                return Ok(Response::new(pb::SubmitResponse {
                    accepted: false,
                    reason: format!(
                        "{shard} holds bad sample {key}; the run stops (--on-bad-sample=fail)"
                    ),
                }));
            }
            Acceptance::UnknownLease => {
                return Err(Status::failed_precondition(format!(
                    "{lease} of {shard} was not granted to worker {id}"
                )));
            }
            Acceptance::Duplicate => {
                return Ok(Response::new(pb::SubmitResponse {
                    accepted: false,
                    reason: format!("{shard} already has a result; duplicate dropped"),
                }));
            }
        };
        // The write and its bookkeeping run as their own task: if the worker drops the RPC meanwhile
        // (its job ended and it aborted its tasks), this handler is dropped too, and an accepted
        // shard must still be recorded and `journal_pending` brought back down, or the run would
        // wait for it forever.
        let state = self.state.clone();
        let record_it = tokio::spawn(async move {
            let written = journal.write(&record).await;
            let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
            st.recorded(&id, shard, bad, written, accept_start)
                .map_err(|_| Status::internal(format!("coordinator cannot record {shard}")))
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
        let (id, _, mut st) = self.open(&r.worker_id)?;
        if r.job_id == st.job_id() {
            if let Some(e) = &error {
                tracing::warn!(worker = %id, lease = r.lease_id, error = %e, "worker handed a shard back: fault of the environment");
            }
            st.release(&id, LeaseId(r.lease_id), error, r.store_retries);
        }
        Ok(Response::new(pb::ReleaseResponse {}))
    }

    async fn next_job(
        &self,
        req: Request<pb::NextJobRequest>,
    ) -> Result<Response<pb::NextJobResponse>, Status> {
        let r = req.into_inner();
        let (id, registered, mut st) = self.open(&r.worker_id)?;
        if !registered {
            return Err(not_registered(&id));
        }
        let resp = if !st.done() && r.previous_job_id != st.job_id() {
            pb::NextJobResponse {
                job: Some(st.pb_job().clone()),
                ..Default::default()
            }
        } else if st.last_job() && st.done() {
            st.tell_finished(id);
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
        let (id, _, mut st) = self.open(&r.worker_id)?;
        if r.job_id == st.job_id() {
            tracing::warn!(worker = %id, job = %r.job_id, error = %r.error, "worker cannot run the job");
            st.refuse(id, r.error);
        }
        Ok(Response::new(pb::RefuseJobResponse {}))
    }

    async fn bench_ready(
        &self,
        req: Request<pb::BenchReadyRequest>,
    ) -> Result<Response<pb::BenchReadyResponse>, Status> {
        Err(no_bench(&req.into_inner().job_id))
    }

    async fn bench_result(
        &self,
        req: Request<pb::BenchResultRequest>,
    ) -> Result<Response<pb::BenchResultResponse>, Status> {
        Err(no_bench(&req.into_inner().job_id))
    }
}

/// `run` and `sweep` hand out no bench jobs (`bench` serves its own `crate::pool_bench` service).
fn no_bench(job: &str) -> Status {
    Status::failed_precondition(format!("job {job} is no bench on this coordinator"))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::net::TcpListener;
    use tresnet_common::ids::{ShardId, WorkerId};
    use tresnet_common::protocol::pb::coordinator_client::CoordinatorClient;

    use super::*;

    use crate::run_state::testing::state;

    /// Valid rows for samples `range` of [`state`]'s job (2 classes, label `i % 2`).
    fn rows(range: std::ops::Range<u64>) -> Vec<pb::SampleResult> {
        range
            .map(|i| crate::submission::row_from_logits(i, &[1.0, -0.5], (i % 2) as u32, 2))
            .collect()
    }

    fn batch(results: Vec<pb::SampleResult>) -> pb::SubmitRequest {
        pb::SubmitRequest {
            item: Some(pb::submit_request::Item::Batch(pb::ResultBatch { results })),
        }
    }

    fn results(range: std::ops::Range<u64>) -> Vec<pb::SubmitRequest> {
        vec![batch(rows(range))]
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
        serve_as(shared, pid, "w").await
    }

    async fn serve_as(shared: &Shared, pid: u32, worker: &str) -> Served {
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
                worker_id: worker.into(),
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
            let failed = st.sched().failed();
            assert_eq!(failed.len(), 1);
            assert_eq!(failed[&ShardId(0)].len(), 3, "{failed:?}");
            assert!(failed[&ShardId(0)][2].contains("connection refused (2)"));
            assert_eq!(
                (st.live().bad_samples, st.live().samples_done),
                (0, 0),
                "nothing counted"
            );
            assert_eq!(st.live().environment_faults, 3);
            assert_eq!(
                st.live().store_retries,
                4 * 5,
                "the drain's retries count too"
            );
            st.journal().clone()
        };
        assert!(journal.completed().await.unwrap().is_empty());
    }

    /// Every submission check, against the served service: a refused submission answers
    /// InvalidArgument naming the problem, fails the shard's attempt on that worker (the retry goes to
    /// another worker), is counted in total and against the worker, and nothing of it is journaled or
    /// counted; a result for an earlier job is dropped without blame; the retry elsewhere is accepted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn submission_checks_refuse_count_and_retry_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let shared: Shared = Arc::new(Mutex::new(state(dir.path(), "J#1", 2)));
        let Served {
            client: mut c,
            stop: _stop,
            ..
        } = serve_registered(&shared, 0).await;
        let mut nan_loss = rows(0..2);
        nan_loss[1].loss = f64::NAN;
        let mut unsorted = rows(0..2);
        unsorted[0].topk_logits.reverse();
        let mut high_confidence = rows(0..2);
        high_confidence[0].confidence = 1.5;
        let mut short_topk = rows(0..2);
        short_topk[1].topk_indices.pop();
        short_topk[1].topk_logits.pop();
        let mut wrong_label = rows(0..2);
        // Sample 1 has label 1: a loss as if its label were the top-1 class.
        wrong_label[1].loss = wrong_label[0].loss;
        let over_cap = pb::SampleResult {
            logits: vec![0; tresnet_common::protocol::MAX_MESSAGE_BYTES + 1],
            ..rows(0..1).remove(0)
        };
        let cases: Vec<(&str, Vec<pb::SubmitRequest>)> = vec![
            ("sample 2 is not in shard-0", results(1..3)),
            (
                "sample 1 submitted twice",
                vec![batch(rows(0..2)), batch(rows(1..2))],
            ),
            ("1 of 2 samples", {
                let mut short = results(0..1);
                short.push(pb::SubmitRequest {
                    item: Some(pb::submit_request::Item::Trailer(
                        pb::ShardTrailer::default(),
                    )),
                });
                short
            }),
            ("loss NaN", vec![batch(nan_loss)]),
            ("not in descending order", vec![batch(unsorted)]),
            ("confidence 1.5", vec![batch(high_confidence)]),
            ("1 top-k classes, expected 2", vec![batch(short_topk)]),
            ("contradicts label 1", vec![batch(wrong_label)]),
            ("over the 67108864-byte cap", vec![batch(vec![over_cap])]),
        ];
        for (round, (needle, body)) in cases.into_iter().enumerate() {
            // A fresh job each round, so the shard's attempts never run out.
            shared
                .lock()
                .unwrap()
                .succeed(state(&dir.path().join(round.to_string()), "J#1", 2));
            let l = c.lease(lease_req("J#1")).await.unwrap().into_inner().leases;
            let mut submit = vec![header("J#1", 0, l[0].lease_id)];
            submit.extend(body);
            let e = c.submit(futures::stream::iter(submit)).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{needle}: {e:?}");
            assert!(e.message().contains(needle), "{needle}: {}", e.message());
            let journal = {
                let st = shared.lock().unwrap();
                assert_eq!(st.live().submissions_rejected, 1, "{needle}");
                assert_eq!(st.workers()[&WorkerId("w".into())].submissions_rejected, 1);
                let failures = st.sched().failures_of(ShardId(0));
                assert!(
                    failures.len() == 1 && failures[0].contains(needle),
                    "{needle}: {failures:?}"
                );
                assert_eq!(
                    (st.live().samples_done, st.sched().leases_in_flight()),
                    (0, 0)
                );
                assert!(
                    !st.sched().is_finished(),
                    "{needle}: one failure requeues the shard"
                );
                st.journal().clone()
            };
            assert!(
                journal.completed().await.unwrap().is_empty(),
                "{needle}: journaled"
            );
        }

        // The retry goes to another worker, whose valid result is accepted.
        let Served {
            client: mut other,
            stop: _stop_other,
            ..
        } = serve_as(&shared, 0, "v").await;
        let l = other
            .lease(pb::LeaseRequest {
                worker_id: "v".into(),
                max_shards: 1,
                job_id: "J#1".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .leases;
        assert_eq!((l[0].shard_id, l[0].attempt), (0, 2));
        let mut submit = vec![pb::SubmitRequest {
            item: Some(pb::submit_request::Item::Header(pb::SubmitHeader {
                worker_id: "v".into(),
                shard_id: 0,
                lease_id: l[0].lease_id,
                job_id: "J#1".into(),
            })),
        }];
        submit.extend(results(0..2));
        let r = other.submit(futures::stream::iter(submit)).await.unwrap();
        assert!(r.into_inner().accepted);
        // A result naming an earlier job is dropped, not blamed on the worker.
        let mut stale = vec![header("J#0", 0, 1)];
        stale.extend(results(0..2));
        let r = c
            .submit(futures::stream::iter(stale))
            .await
            .unwrap()
            .into_inner();
        assert!(!r.accepted && r.reason.contains("J#0"), "{r:?}");
        let st = shared.lock().unwrap();
        assert_eq!(st.live().samples_done, 2);
        assert_eq!(st.live().submissions_rejected, 1);
        assert_eq!(st.workers()[&WorkerId("v".into())].submissions_rejected, 0);
        drop(st);
        // /metrics says the same, in total and by worker.
        let observed = crate::metrics::Observed::default();
        observed.serving(shared.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &observed.endpoint().registry)
            .unwrap();
        for line in [
            "tresnet_coordinator_submissions_rejected_total 1",
            "tresnet_coordinator_worker_submissions_rejected_total{worker=\"w\"} 1",
            "tresnet_coordinator_worker_submissions_rejected_total{worker=\"v\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    /// A worker that gives a shard up midway (its store failed) ends the stream short, without the
    /// trailer, and hands the lease back with the reason: nothing is recorded, nobody is blamed, and
    /// the shard's failure names the store's error, not a refused submission.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abandoned_stream_is_not_recorded_and_not_blamed() {
        let dir = tempfile::tempdir().unwrap();
        let shared: Shared = Arc::new(Mutex::new(state(dir.path(), "J#1", 2)));
        let Served {
            client: mut c,
            stop: _stop,
            ..
        } = serve_registered(&shared, 0).await;
        let l = c.lease(lease_req("J#1")).await.unwrap().into_inner().leases;
        let mut submit = vec![header("J#1", 0, l[0].lease_id)];
        submit.extend(results(0..1));
        let e = c.submit(futures::stream::iter(submit)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Aborted, "{e:?}");
        {
            let st = shared.lock().unwrap();
            assert_eq!(st.live().submissions_rejected, 0);
            assert!(st.sched().failures_of(ShardId(0)).is_empty());
            assert_eq!(
                st.sched().leases_in_flight(),
                1,
                "the lease is still the worker's"
            );
        }
        c.release(pb::ReleaseRequest {
            worker_id: "w".into(),
            lease_id: l[0].lease_id,
            error: "fetching s0.jpg: connection refused".into(),
            reason: pb::ReleaseReason::Environment.into(),
            store_retries: 0,
            job_id: "J#1".into(),
        })
        .await
        .unwrap();
        let st = shared.lock().unwrap();
        assert!(st.sched().failures_of(ShardId(0))[0].contains("connection refused"));
        assert_eq!(st.live().environment_faults, 1);
    }

    /// Under `--on-bad-sample fail` a shard holding a bad sample is refused before it is journaled, and
    /// the run is told to stop naming the sample.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fail_policy_refuses_the_shard_before_it_is_journaled() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = state(dir.path(), "J#1", 2);
        st.set_fail_on_bad_sample(true);
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
                    rows(0..1).remove(0),
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
            let fatal = st.fatal().unwrap().to_string();
            assert!(
                fatal.contains("bad sample s1.jpg") && fatal.contains("bad huffman"),
                "{fatal}"
            );
            assert_eq!((st.live().samples_done, st.live().bad_samples), (0, 0));
            assert_eq!(st.live().store_retries, 2);
            st.journal().clone()
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
            assert_eq!(st.live().samples_done, 0);
            assert_eq!(st.sched().leases_in_flight(), 1);
            assert!(st.sched().failures_of(ShardId(0)).is_empty());
            // The registry carried over.
            assert_eq!(st.workers()[&WorkerId("w".into())].pid, 7);
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
            assert_eq!(st.refusals()[&WorkerId("w".into())], "no such model");
            st.fail("refused");
            st.set_last_job(true);
        }
        let done = c.next_job(next("B#2")).await.unwrap().into_inner();
        assert!(done.finished && done.job.is_none());
        assert!(
            shared
                .lock()
                .unwrap()
                .told_finished()
                .contains(&WorkerId("w".into()))
        );
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }
}
