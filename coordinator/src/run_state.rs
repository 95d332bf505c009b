//! The state one job's RPC handlers and run loop share, behind one mutex ([`Shared`]). Its fields are
//! private: every change goes through a method that keeps the accounting whole (a shard is accepted
//! once, journaled before it counts, and a refused submission fails its lease and is counted against
//! its worker), and readers (progress, /metrics, the report) see it through accessors.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tresnet_common::dataset::DatasetIndex;
use tresnet_common::ids::{LeaseId, ShardId, WorkerId};
use tresnet_common::job::JobSpec;
use tresnet_common::protocol::pb;
use tresnet_common::software::WorkerSoftware;

use crate::journal::Journal;
use crate::metrics::{self, ShardsByState, Snapshot};
use crate::scheduler::{Completion, Grant, Millis, Scheduler, ShardState};
use crate::submission::{Checked, Rejection, ShardJob};

#[derive(Debug, Clone, Default)]
pub struct WorkerInfo {
    pub hostname: String,
    pub devices: Vec<String>,
    pub last_seen: Millis,
    pub samples_done: u64,
    pub pid: u32,
    /// `None` when the worker did not say (it is not optional in the protocol, but may be empty).
    pub software: Option<WorkerSoftware>,
    /// Its submissions this job refused as invalid (each failed the shard's attempt on it).
    pub submissions_rejected: u64,
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
    /// Submissions refused as invalid ([`Rejection`]): the worker's fault, never counted.
    pub submissions_rejected: u64,
    /// Leases handed back because of a fault of the environment (store, network, device, worker).
    pub environment_faults: u64,
    /// Object-store requests that failed and were retried inside the workers, as they reported.
    pub store_retries: u64,
    /// Every accepted shard (one entry per shard, so bounded by the shard count): the report's
    /// throughput-over-time chart.
    pub timeline: Vec<crate::run_dir::TimelineEvent>,
    /// Each worker's latest stage snapshot and layout choices, from its shard trailers.
    pub stages: BTreeMap<String, crate::stages::LatestStages>,
}

/// Whether the coordinator takes on work: a drain (SIGTERM/SIGINT) first stops leasing while results in
/// flight are still recorded, then stops recording too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Intake {
    Open,
    /// No new leases (workers are told to ask again later, so they keep and finish what they hold);
    /// complete results are still accepted and journaled.
    Draining,
    /// Nothing more is accepted: the journal is final for this process.
    Closed,
}

/// What became of a checked submission ([`RunState::accept_shard`]).
#[derive(Debug)]
pub enum Acceptance {
    /// The shard's first result: write `record` to `journal`, then call [`RunState::recorded`].
    Accepted {
        record: Box<pb::ShardRecord>,
        journal: Journal,
    },
    /// The shard already had a result: dropped and counted.
    Duplicate,
    /// No such lease was granted to this worker.
    UnknownLease,
    /// The drain is over: nothing more is recorded.
    Closed,
    /// `--on-bad-sample fail` and the shard holds bad sample `key`: the run stops, nothing journaled.
    BadSampleStops { key: String },
}

/// Everything the RPC handlers and the run loop share.
#[derive(Debug)]
pub struct RunState {
    /// The job being served, and its wire form (whose job id is unique within this process).
    job: Arc<JobSpec>,
    pb_job: pb::JobSpec,
    index: Arc<DatasetIndex>,
    sched: Scheduler,
    journal: Journal,
    workers: BTreeMap<WorkerId, WorkerInfo>,
    live: LiveStats,
    /// Set when the run must stop (a bad sample under --on-bad-sample=fail, a journal write error).
    fatal: Option<String>,
    fail_on_bad_sample: bool,
    max_shards_per_lease: u32,
    lease_timeout: Duration,
    /// Accepted shards whose journal write is still in flight; the run is not finished until it is 0.
    journal_pending: u32,
    /// Validate + journal time of each accepted submission (exported on /metrics).
    accept_seconds: prometheus_client::metrics::histogram::Histogram,
    /// Workers that cannot run this job at all, with their reasons.
    refusals: BTreeMap<WorkerId, String>,
    /// No job follows this one: `NextJob` answers "finished" once it is done.
    last_job: bool,
    /// Workers that heard "finished": the coordinator keeps serving until each registered one has.
    told_finished: BTreeSet<WorkerId>,
    intake: Intake,
    start: Instant,
}

pub type Shared = Arc<Mutex<RunState>>;

impl metrics::Source for Mutex<RunState> {
    fn snapshot(&self) -> Snapshot {
        self.lock()
            .unwrap_or_else(|p| p.into_inner())
            .metrics_snapshot()
    }
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
            accept_seconds: metrics::accept_histogram(),
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
            w.submissions_rejected = 0;
        }
        next.accept_seconds = self.accept_seconds.clone();
        *self = next;
    }

    // ---- reading ----

    pub fn job(&self) -> &Arc<JobSpec> {
        &self.job
    }

    pub fn pb_job(&self) -> &pb::JobSpec {
        &self.pb_job
    }

    pub fn job_id(&self) -> &str {
        &self.pb_job.job_id
    }

    pub fn index(&self) -> &Arc<DatasetIndex> {
        &self.index
    }

    pub fn sched(&self) -> &Scheduler {
        &self.sched
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    pub fn workers(&self) -> &BTreeMap<WorkerId, WorkerInfo> {
        &self.workers
    }

    pub fn live(&self) -> &LiveStats {
        &self.live
    }

    pub fn fatal(&self) -> Option<&str> {
        self.fatal.as_deref()
    }

    pub fn lease_timeout(&self) -> Duration {
        self.lease_timeout
    }

    pub fn journal_pending(&self) -> u32 {
        self.journal_pending
    }

    pub fn refusals(&self) -> &BTreeMap<WorkerId, String> {
        &self.refusals
    }

    pub fn told_finished(&self) -> &BTreeSet<WorkerId> {
        &self.told_finished
    }

    pub fn intake(&self) -> Intake {
        self.intake
    }

    pub fn last_job(&self) -> bool {
        self.last_job
    }

    pub fn accept_seconds(&self) -> &prometheus_client::metrics::histogram::Histogram {
        &self.accept_seconds
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

    /// What a submission for `shard` is checked against.
    pub fn shard_job(&self, shard: ShardId) -> ShardJob {
        let samples = self.sched.samples_of(shard);
        let labels = samples
            .clone()
            .map(|i| self.index.samples[i as usize].label)
            .collect();
        ShardJob::new(&self.job, shard, samples, labels)
    }

    /// What the report records of this job's run, as of now: the evaluation window, the workers and
    /// what each contributed or had refused, the timeline and the scheduling counts.
    pub fn report_facts(&self, wall_seconds: f64) -> crate::report::RunFacts {
        use crate::report::RunFacts;
        use crate::run_dir::{Scheduling, WorkerSummary};
        let live = &self.live;
        let eval_seconds = match (live.first_lease_ms, live.last_accept_ms) {
            (Some(a), Some(b)) if b > a => (b - a) as f64 / 1000.0,
            _ => 0.0,
        };
        let workers = self
            .workers
            .iter()
            .map(|(id, w)| WorkerSummary {
                id: id.0.clone(),
                hostname: w.hostname.clone(),
                devices: w.devices.clone(),
                accepted_samples: live
                    .timeline
                    .iter()
                    .filter(|e| e.worker == id.0)
                    .map(|e| e.samples)
                    .sum(),
                pid: w.pid,
                software: w.software.clone(),
                submissions_rejected: w.submissions_rejected,
                stages: live
                    .stages
                    .get(&id.0)
                    .and_then(|l| l.stages.as_ref())
                    .map(crate::stages::WorkerStages::from_pb),
                layouts: live.stages.get(&id.0).map_or_else(Vec::new, |l| {
                    l.layouts
                        .iter()
                        .map(crate::stages::LayoutSummary::from_pb)
                        .collect()
                }),
            })
            .collect();
        let stats = self.sched.stats();
        RunFacts {
            eval_seconds,
            samples_timed: live.samples_done,
            wall_seconds,
            workers,
            timeline: live.timeline.clone(),
            scheduling: Scheduling {
                leases_granted: stats.leases_granted,
                speculative_leases: stats.speculative_leases,
                lease_expiries: stats.expiries,
                retries: stats.retries,
                duplicates_dropped: live.duplicates_dropped,
                environment_faults: live.environment_faults,
                store_retries: live.store_retries,
                submissions_rejected: live.submissions_rejected,
                late_leases_cancelled: stats.late_leases_cancelled,
            },
        }
    }

    /// What /metrics and /readyz show of the run, as of now.
    pub fn metrics_snapshot(&self) -> Snapshot {
        let now = self.now();
        let live = &self.live;
        let stats = self.sched.stats();
        let timeout = self.lease_timeout.as_millis() as u64;
        let mut shards = ShardsByState::default();
        for i in 0..self.sched.shard_count() {
            *match self.sched.state_of(ShardId(i as u64)) {
                ShardState::Pending => &mut shards.pending,
                ShardState::InFlight => &mut shards.in_flight,
                ShardState::Done => &mut shards.done,
                ShardState::Failed => &mut shards.failed,
            } += 1;
        }
        Snapshot {
            job_id: self.job_id().to_string(),
            fatal: self.fatal.clone(),
            samples_done: live.samples_done,
            bad_samples: live.bad_samples,
            listed_bad: self.index.bad_samples.len() as u64,
            duplicates_dropped: live.duplicates_dropped,
            environment_faults: live.environment_faults,
            store_retries: live.store_retries,
            submissions_rejected: live.submissions_rejected,
            worker_submissions_rejected: self
                .workers
                .iter()
                .map(|(id, w)| (id.0.clone(), w.submissions_rejected))
                .collect(),
            leases_granted: stats.leases_granted,
            speculative_leases: stats.speculative_leases,
            lease_expiries: stats.expiries,
            late_leases_cancelled: stats.late_leases_cancelled,
            retries: stats.retries,
            queue_depth: self.sched.pending_count() as u64,
            leases_in_flight: self.sched.leases_in_flight() as u64,
            workers_registered: self.workers.len() as u64,
            workers_alive: self
                .workers
                .values()
                .filter(|w| now.saturating_sub(w.last_seen) <= timeout)
                .count() as u64,
            dataset_usable: self.index.len() as u64,
            shards,
            accept_seconds: self.accept_seconds.clone(),
        }
    }

    // ---- the job's life ----

    /// The id this job has on the wire (unique within the process).
    pub fn set_wire_job_id(&mut self, id: String) {
        self.pb_job.job_id = id;
    }

    pub fn set_last_job(&mut self, last: bool) {
        self.last_job = last;
    }

    /// Stops the run with `why`, unless it already failed (the first reason is the one reported).
    pub fn fail(&mut self, why: impl Into<String>) {
        self.fatal.get_or_insert_with(|| why.into());
    }

    /// Moves the intake on (open, draining, closed); it never goes back.
    pub fn narrow_intake(&mut self, to: Intake) {
        self.intake = self.intake.max(to);
    }

    /// Ends the leases whose deadline passed (their shards go back to the queue or fail).
    pub fn expire(&mut self) {
        let now = self.now();
        self.sched.expire(now);
    }

    /// A worker process is gone: its leases end now (unless the job is over anyway).
    pub fn worker_lost(&mut self, worker: &WorkerId, why: &str) {
        if !self.done() {
            self.sched.worker_lost(worker, why);
        }
    }

    // ---- workers ----

    pub fn register(&mut self, id: WorkerId, mut info: WorkerInfo) {
        info.last_seen = self.now();
        self.workers.insert(id, info);
    }

    /// Notes that `worker` was heard from; false when it never registered.
    pub fn touch(&mut self, worker: &WorkerId) -> bool {
        let now = self.now();
        match self.workers.get_mut(worker) {
            Some(w) => {
                w.last_seen = now;
                true
            }
            None => false,
        }
    }

    /// Up to `wanted` grants for `worker` (none while draining).
    pub fn grant(&mut self, worker: &WorkerId, wanted: u32) -> Vec<Grant> {
        let wanted = match self.intake {
            Intake::Open => wanted.clamp(1, self.max_shards_per_lease),
            Intake::Draining | Intake::Closed => 0,
        };
        let now = self.now();
        let mut out = Vec::new();
        for _ in 0..wanted {
            let Some(g) = self.sched.lease(worker, now) else {
                break;
            };
            self.live.first_lease_ms.get_or_insert(now);
            out.push(g);
        }
        out
    }

    /// Extends `worker`'s leases and records the samples it has computed; returns the leases it should
    /// abandon.
    pub fn heartbeat(
        &mut self,
        worker: &WorkerId,
        leases: &[LeaseId],
        samples_done: u64,
    ) -> Vec<LeaseId> {
        let now = self.now();
        let cancelled = self.sched.heartbeat(worker, leases, now);
        if let Some(w) = self.workers.get_mut(worker) {
            w.samples_done = samples_done;
        }
        cancelled
    }

    /// A lease handed back: `error` is a fault of the environment (a failed attempt), `None` a drain.
    /// Only a lease that was still live counts as a fault: a worker also hands back a lease whose
    /// submission was refused, which has already failed ([`Self::reject_submission`]).
    pub fn release(
        &mut self,
        worker: &WorkerId,
        lease: LeaseId,
        error: Option<String>,
        store_retries: u64,
    ) {
        self.live.store_retries += store_retries;
        let fault = error.is_some();
        if self.sched.release(worker, lease, error) && fault {
            self.live.environment_faults += 1;
        }
    }

    pub fn refuse(&mut self, worker: WorkerId, error: String) {
        self.refusals.insert(worker, error);
    }

    pub fn tell_finished(&mut self, worker: WorkerId) {
        self.told_finished.insert(worker);
    }

    // ---- results ----

    /// A submission that failed its checks: the worker is at fault, so its lease fails (the shard is
    /// retried, on another worker first, and fails after `--max-failures`), and the refusal is counted
    /// against it. Nothing of the submission is kept.
    pub fn reject_submission(&mut self, worker: &WorkerId, lease: LeaseId, why: &Rejection) {
        tracing::warn!(%worker, %lease, error = %why, "submission refused");
        self.count_rejection(worker);
        self.sched
            .release(worker, lease, Some(format!("submission refused: {why}")));
    }

    /// Counts a refused submission against `worker` (one naming no shard of the job has no lease to
    /// fail).
    pub fn count_rejection(&mut self, worker: &WorkerId) {
        self.live.submissions_rejected += 1;
        if let Some(w) = self.workers.get_mut(worker) {
            w.submissions_rejected += 1;
        }
    }

    /// Takes a checked submission: the scheduler decides first-wins, and the first result is handed
    /// back to be journaled (outside the lock: it may be a PUT to an object store) while
    /// `journal_pending` keeps the run from finishing before it is written.
    pub fn accept_shard(
        &mut self,
        worker: &WorkerId,
        lease: LeaseId,
        shard: ShardId,
        checked: Checked,
    ) -> Acceptance {
        if self.intake == Intake::Closed {
            return Acceptance::Closed;
        }
        // The store's failures happened whether or not this result is used.
        if let Some(t) = &checked.trailer {
            self.live.store_retries += t.store_retries;
            self.live
                .stages
                .entry(worker.0.clone())
                .or_default()
                .update(t);
        }
        if self.fail_on_bad_sample
            && let Some(b) = checked.results.iter().find(|r| !r.error.is_empty())
        {
            // Stop before anything of this shard is journaled, so that a resume under the same
            // policy meets the bad sample again and fails the same way.
            let key = self.index.samples[b.index as usize].key.to_string();
            self.fail(format!(
                "bad sample {key}: {} (--on-bad-sample=fail)",
                b.error
            ));
            self.sched.release(worker, lease, None);
            return Acceptance::BadSampleStops { key };
        }
        match self.sched.complete(worker, lease) {
            Completion::Unknown => return Acceptance::UnknownLease,
            Completion::Duplicate => {
                self.live.duplicates_dropped += 1;
                return Acceptance::Duplicate;
            }
            Completion::Accepted => {}
        }
        self.journal_pending += 1;
        Acceptance::Accepted {
            record: Box::new(pb::ShardRecord {
                shard_id: shard.0,
                worker_id: worker.0.clone(),
                results: checked.results,
                counts: checked.counts,
            }),
            journal: self.journal.clone(),
        }
    }

    /// The journal write of an accepted shard ended: on success its samples count (throughput,
    /// timeline, bad samples); on failure the run stops, since the shard cannot be recorded.
    pub fn recorded(
        &mut self,
        worker: &WorkerId,
        shard: ShardId,
        bad: u64,
        written: Result<(), crate::journal::JournalError>,
        accept_started: Instant,
    ) -> Result<(), NotRecorded> {
        self.journal_pending -= 1;
        if let Err(e) = written {
            let e = NotRecorded {
                shard,
                reason: tresnet_common::error_text::error_chain(&e),
            };
            self.fail(e.to_string());
            return Err(e);
        }
        let samples = {
            let r = self.sched.samples_of(shard);
            r.end - r.start
        };
        self.live.samples_done += samples;
        let now = self.now();
        self.live.last_accept_ms = Some(now);
        self.live.timeline.push(crate::run_dir::TimelineEvent {
            t_ms: now,
            worker: worker.0.clone(),
            shard: shard.0,
            samples,
        });
        self.live.bad_samples += bad;
        self.accept_seconds
            .observe(accept_started.elapsed().as_secs_f64());
        Ok(())
    }
}

/// One builder of test states for every module's tests.
/// An accepted shard whose journal write failed: the run stops, since the shard cannot be recorded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot record {shard}: {reason}")]
pub struct NotRecorded {
    pub shard: ShardId,
    /// The journal error with its causes, as the run's fatal reason keeps it.
    pub reason: String,
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::scheduler::SchedulerConfig;
    use tresnet_common::dataset::{DatasetFormat, Sample, SampleSource};
    use tresnet_common::storage::{StorageLocation, StorageOptions};

    /// The example job (2 classes, top-k 2) over `n` samples of label `i % 2` in shards of 2, journaled
    /// under `dir`, with wire id `id`; more jobs follow it (`last_job` false).
    pub(crate) fn state(dir: &std::path::Path, id: &str, n: u64) -> RunState {
        let root = StorageLocation::parse("/d", &StorageOptions::default()).unwrap();
        let samples = (0..n)
            .map(|i| Sample {
                key: format!("s{i}.jpg").as_str().into(),
                label: (i % 2) as u32,
                source: SampleSource::Object {
                    path: root.path_of(&format!("s{i}.jpg")).unwrap(),
                    size: Some(10),
                },
            })
            .collect();
        let index = DatasetIndex::new(
            "file:///d",
            DatasetFormat::ImageFolder,
            vec!["a".into(), "b".into()],
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

    /// Test hooks that reach past the invariant-keeping methods.
    impl RunState {
        pub(crate) fn set_fail_on_bad_sample(&mut self, on: bool) {
            self.fail_on_bad_sample = on;
        }

        pub(crate) fn sched_mut(&mut self) -> &mut Scheduler {
            &mut self.sched
        }

        pub(crate) fn live_mut(&mut self) -> &mut LiveStats {
            &mut self.live
        }

        pub(crate) fn workers_mut(&mut self) -> &mut BTreeMap<WorkerId, WorkerInfo> {
            &mut self.workers
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(results: Vec<pb::SampleResult>) -> Checked {
        let bad = results.iter().filter(|r| !r.error.is_empty()).count() as u64;
        Checked {
            results,
            counts: None,
            trailer: None,
            bad,
        }
    }

    /// A shard counts once, only after its journal write; a refused submission fails the attempt
    /// (retried on another worker first) and is counted against its worker.
    #[test]
    fn accept_counts_after_the_write_and_reject_fails_the_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = testing::state(dir.path(), "J#1", 4);
        let (a, b) = (WorkerId("a".into()), WorkerId("b".into()));
        st.register(a.clone(), WorkerInfo::default());
        st.register(b.clone(), WorkerInfo::default());
        let g = st.grant(&a, 2);
        assert_eq!(g.len(), 2);
        let why = Rejection::Missing {
            shard: g[0].shard,
            got: 1,
            expected: 2,
        };
        st.reject_submission(&a, g[0].lease, &why);
        assert_eq!(st.live().submissions_rejected, 1);
        assert_eq!(st.workers()[&a].submissions_rejected, 1);
        assert!(st.sched().failures_of(g[0].shard)[0].contains("1 of 2 samples"));
        // The worker's own hand-back of the refused lease is no environment fault.
        st.release(&a, g[0].lease, Some("submit refused".into()), 0);
        assert_eq!(st.live().environment_faults, 0);
        // Shard 0 goes to b for its second attempt.
        let retry = st.grant(&b, 1);
        assert_eq!((retry[0].shard, retry[0].attempt), (g[0].shard, 2));

        let rows = |r: std::ops::Range<u64>| {
            r.map(|i| crate::submission::row_from_logits(i, &[1.0, 0.0], (i % 2) as u32, 2))
                .collect::<Vec<_>>()
        };
        let Acceptance::Accepted { record, .. } =
            st.accept_shard(&a, g[1].lease, g[1].shard, checked(rows(2..4)))
        else {
            panic!("not accepted")
        };
        assert_eq!((record.results.len(), st.journal_pending()), (2, 1));
        assert_eq!(st.live().samples_done, 0, "nothing counts before the write");
        assert!(!st.finished());
        st.recorded(&a, g[1].shard, 0, Ok(()), Instant::now())
            .unwrap();
        assert_eq!((st.live().samples_done, st.journal_pending()), (2, 0));
        assert!(matches!(
            st.accept_shard(&a, g[1].lease, g[1].shard, checked(rows(2..4))),
            Acceptance::Duplicate
        ));
        assert_eq!(st.live().duplicates_dropped, 1);
        // summary.json reports the refusal in its scheduling counts and against the worker.
        let facts = st.report_facts(1.0);
        assert_eq!(facts.scheduling.submissions_rejected, 1);
        assert_eq!(facts.scheduling.duplicates_dropped, 1);
        let by_id = |id: &str| facts.workers.iter().find(|w| w.id == id).unwrap().clone();
        assert_eq!(
            (by_id("a").submissions_rejected, by_id("a").accepted_samples),
            (1, 2)
        );
        assert_eq!(by_id("b").submissions_rejected, 0);
    }

    #[test]
    fn the_intake_never_reopens_and_the_first_failure_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = testing::state(dir.path(), "J#1", 2);
        st.narrow_intake(Intake::Closed);
        st.narrow_intake(Intake::Draining);
        assert_eq!(st.intake(), Intake::Closed);
        st.fail("first");
        st.fail("second");
        assert_eq!(st.fatal(), Some("first"));
    }
}
