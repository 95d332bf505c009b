//! The shard lease state machine: pure logic with an injected clock, so every interleaving of lease,
//! expiry, duplicate submit and worker loss can be property-tested without a network.
//!
//! Invariants: a shard ends `Done` (exactly one accepted result) or `Failed` (after `max_failures`
//! unsuccessful leases, with every reason kept); a result for a shard that is already done is a counted
//! duplicate, never a second commit.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::time::Duration;

use tresnet_common::ids::{LeaseId, ShardId, WorkerId};

/// Milliseconds on the coordinator's monotonic clock (injected so tests control time).
pub type Millis = u64;

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// A lease not extended by a heartbeat for this long is presumed dead and its shard requeued.
    pub lease_timeout: Duration,
    /// Unsuccessful leases (expiry or error) before a shard is reported failed.
    pub max_failures: u32,
    /// When nothing is pending, idle workers duplicate the oldest in-flight shard; first result wins.
    pub speculative: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardState {
    Pending,
    InFlight,
    Done,
    Failed,
}

#[derive(Debug, Clone)]
struct Shard {
    samples: Range<u64>,
    state: ShardState,
    failures: Vec<String>,
    /// Workers whose lease of it failed: a retry goes to another worker when one asks.
    failed_on: Vec<WorkerId>,
    active: Vec<LeaseId>,
    /// When the shard first went in flight this round; speculation picks the oldest.
    in_flight_since: Millis,
}

#[derive(Debug, Clone)]
struct Lease {
    shard: ShardId,
    worker: WorkerId,
    deadline: Millis,
    attempt: u32,
}

/// A granted lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub lease: LeaseId,
    pub shard: ShardId,
    pub samples: Range<u64>,
    pub attempt: u32,
    pub speculative: bool,
}

/// What happened to a submitted result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// The first complete result for the shard: commit it.
    Accepted,
    /// The shard was already done: drop the result and count it.
    Duplicate,
    /// No such lease was ever granted (or it belongs to another worker): refuse.
    Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    pub leases_granted: u64,
    pub speculative_leases: u64,
    pub expiries: u64,
    pub retries: u64,
    pub duplicates_dropped: u64,
    /// Expired leases named again by their worker's heartbeat (it was alive after all) and cancelled.
    pub late_leases_cancelled: u64,
}

/// Clone: the report is written from a snapshot, so the run's state lock is not held meanwhile.
#[derive(Debug, Clone)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    shards: Vec<Shard>,
    pending: VecDeque<ShardId>,
    /// Live leases.
    leases: HashMap<LeaseId, Lease>,
    /// Every lease ever granted, so a late but complete result from an expired lease still counts.
    granted: HashMap<LeaseId, (ShardId, WorkerId)>,
    /// Leases that expired and whose worker has not been heard from about them since.
    expired: HashSet<LeaseId>,
    next_lease: u64,
    open: usize,
    stats: SchedulerStats,
}

impl Scheduler {
    /// Cuts `total_samples` into shards of `shard_size` (the last one shorter; no padding, ever).
    pub fn new(total_samples: u64, shard_size: u64, cfg: SchedulerConfig) -> Self {
        assert!(shard_size > 0, "shard size must be positive");
        let shards: Vec<Shard> = (0..total_samples.div_ceil(shard_size))
            .map(|i| Shard {
                samples: i * shard_size..((i + 1) * shard_size).min(total_samples),
                state: ShardState::Pending,
                failures: Vec::new(),
                failed_on: Vec::new(),
                active: Vec::new(),
                in_flight_since: 0,
            })
            .collect();
        let pending = (0..shards.len() as u64).map(ShardId).collect();
        Scheduler {
            open: shards.len(),
            cfg,
            shards,
            pending,
            leases: HashMap::new(),
            granted: HashMap::new(),
            expired: HashSet::new(),
            next_lease: 1,
            stats: SchedulerStats::default(),
        }
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    pub fn samples_of(&self, shard: ShardId) -> Range<u64> {
        self.shards[shard.0 as usize].samples.clone()
    }

    pub fn state_of(&self, shard: ShardId) -> ShardState {
        self.shards[shard.0 as usize].state
    }

    pub fn failures_of(&self, shard: ShardId) -> &[String] {
        &self.shards[shard.0 as usize].failures
    }

    pub fn stats(&self) -> &SchedulerStats {
        &self.stats
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    pub fn leases_in_flight(&self) -> usize {
        self.leases.len()
    }

    /// True once every shard is done or failed.
    pub fn is_finished(&self) -> bool {
        self.open == 0
    }

    /// Marks a shard done without a lease: used when resuming from the journal.
    pub fn mark_done(&mut self, shard: ShardId) {
        let s = &mut self.shards[shard.0 as usize];
        if matches!(s.state, ShardState::Pending | ShardState::InFlight) {
            s.state = ShardState::Done;
            self.open -= 1;
            self.pending.retain(|&p| p != shard);
        }
    }

    /// Grants the next shard to `worker`, or `None` when there is nothing it should run now.
    pub fn lease(&mut self, worker: &WorkerId, now: Millis) -> Option<Grant> {
        self.expire(now);
        // A shard that failed on this worker (its store access, its device) is left for another
        // worker when there is other work; with nothing else pending it retries here.
        let pick = self
            .pending
            .iter()
            .position(|p| !self.shards[p.0 as usize].failed_on.contains(worker))
            .unwrap_or(0);
        let (shard, speculative) = match self.pending.remove(pick) {
            Some(s) => (s, false),
            None if self.cfg.speculative => (self.speculation_candidate(worker)?, true),
            None => return None,
        };
        let lease = LeaseId(self.next_lease);
        self.next_lease += 1;
        let s = &mut self.shards[shard.0 as usize];
        if s.state == ShardState::Pending {
            s.state = ShardState::InFlight;
            s.in_flight_since = now;
        }
        s.active.push(lease);
        let attempt = s.failures.len() as u32 + 1;
        self.leases.insert(
            lease,
            Lease {
                shard,
                worker: worker.clone(),
                deadline: now + self.cfg.lease_timeout.as_millis() as u64,
                attempt,
            },
        );
        self.granted.insert(lease, (shard, worker.clone()));
        self.stats.leases_granted += 1;
        if speculative {
            self.stats.speculative_leases += 1;
        }
        Some(Grant {
            lease,
            shard,
            samples: s.samples.clone(),
            attempt,
            speculative,
        })
    }

    /// The oldest in-flight shard that this worker is not already running and that has a single copy.
    fn speculation_candidate(&self, worker: &WorkerId) -> Option<ShardId> {
        self.shards
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state == ShardState::InFlight && s.active.len() == 1)
            .filter(|(_, s)| s.active.iter().all(|l| &self.leases[l].worker != worker))
            .min_by_key(|(i, s)| (s.in_flight_since, *i))
            .map(|(i, _)| ShardId(i as u64))
    }

    /// Extends the worker's live leases; returns those it should abandon (unknown, expired, or the
    /// shard finished elsewhere).
    pub fn heartbeat(
        &mut self,
        worker: &WorkerId,
        leases: &[LeaseId],
        now: Millis,
    ) -> Vec<LeaseId> {
        self.expire(now);
        let deadline = now + self.cfg.lease_timeout.as_millis() as u64;
        let mut cancelled = Vec::new();
        for id in leases {
            match self.leases.get_mut(id) {
                Some(l) if &l.worker == worker => l.deadline = deadline,
                _ => {
                    if self.granted.get(id).is_some_and(|(_, w)| w == worker)
                        && self.expired.remove(id)
                    {
                        self.stats.late_leases_cancelled += 1;
                    }
                    cancelled.push(*id);
                }
            }
        }
        cancelled
    }

    /// Ends every lease whose deadline has passed; a shard left without a live lease goes back to
    /// the queue, or fails once it has used up its attempts.
    pub fn expire(&mut self, now: Millis) {
        let expired: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            let l = &self.leases[&id];
            let reason = format!(
                "{id} on worker {} expired (no heartbeat for {:?}, attempt {})",
                l.worker, self.cfg.lease_timeout, l.attempt
            );
            self.stats.expiries += 1;
            self.expired.insert(id);
            self.end_lease(id, Some(reason));
        }
    }

    /// A worker is known to be gone (its process exited): its leases end now.
    pub fn worker_lost(&mut self, worker: &WorkerId, why: &str) {
        let ids: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, l)| &l.worker == worker)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.end_lease(id, Some(format!("{id}: worker {worker} lost: {why}")));
        }
    }

    /// The worker hands a lease back: `error` is why the shard failed as a whole, `None` a clean
    /// hand-back (draining), which does not count against the shard.
    pub fn release(&mut self, worker: &WorkerId, lease: LeaseId, error: Option<String>) -> bool {
        match self.leases.get(&lease) {
            Some(l) if &l.worker == worker => {
                let reason = error.map(|e| format!("{lease} on worker {worker}: {e}"));
                self.end_lease(lease, reason);
                true
            }
            _ => false,
        }
    }

    fn end_lease(&mut self, id: LeaseId, failure: Option<String>) {
        let Some(l) = self.leases.remove(&id) else {
            return;
        };
        let s = &mut self.shards[l.shard.0 as usize];
        s.active.retain(|&a| a != id);
        if s.state != ShardState::InFlight {
            return;
        }
        if let Some(reason) = failure {
            s.failures.push(reason);
            s.failed_on.push(l.worker.clone());
        }
        if !s.active.is_empty() {
            return; // a speculative copy is still running
        }
        if s.failures.len() as u32 >= self.cfg.max_failures {
            s.state = ShardState::Failed;
            self.open -= 1;
        } else {
            s.state = ShardState::Pending;
            if !s.failures.is_empty() {
                self.stats.retries += 1;
            }
            // Requeued work goes first: it is the oldest and holds up the tail of the job.
            self.pending.push_front(l.shard);
        }
    }

    /// A worker submitted a complete result for `lease`. The first complete result of a shard wins,
    /// even from a lease that already expired; everything after it is a duplicate.
    pub fn complete(&mut self, worker: &WorkerId, lease: LeaseId) -> Completion {
        let Some((shard, owner)) = self.granted.get(&lease).cloned() else {
            return Completion::Unknown;
        };
        if &owner != worker {
            return Completion::Unknown;
        }
        self.expired.remove(&lease);
        self.leases.remove(&lease);
        let s = &mut self.shards[shard.0 as usize];
        s.active.retain(|&a| a != lease);
        match s.state {
            ShardState::Done => {
                self.stats.duplicates_dropped += 1;
                Completion::Duplicate
            }
            ShardState::Pending | ShardState::InFlight | ShardState::Failed => {
                if s.state == ShardState::Pending {
                    self.pending.retain(|&p| p != shard);
                }
                if s.state != ShardState::Failed {
                    self.open -= 1;
                }
                s.state = ShardState::Done;
                // Other copies are told to stop at their next heartbeat.
                for other in std::mem::take(&mut s.active) {
                    self.leases.remove(&other);
                }
                Completion::Accepted
            }
        }
    }

    /// Failed shards with their reasons, in shard order.
    pub fn failed(&self) -> BTreeMap<ShardId, Vec<String>> {
        self.shards
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state == ShardState::Failed)
            .map(|(i, s)| (ShardId(i as u64), s.failures.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg(speculative: bool) -> SchedulerConfig {
        SchedulerConfig {
            lease_timeout: Duration::from_millis(100),
            max_failures: 3,
            speculative,
        }
    }

    fn w(i: usize) -> WorkerId {
        WorkerId(format!("w{i}"))
    }

    #[test]
    fn shards_cover_samples_without_padding() {
        let s = Scheduler::new(10, 4, cfg(false));
        let ranges: Vec<_> = (0..3).map(|i| s.samples_of(ShardId(i))).collect();
        assert_eq!(ranges, vec![0..4, 4..8, 8..10]);
        assert_eq!(Scheduler::new(0, 4, cfg(false)).shard_count(), 0);
        assert!(Scheduler::new(0, 4, cfg(false)).is_finished());
    }

    #[test]
    fn a_failed_shard_goes_to_another_worker_first() {
        let mut s = Scheduler::new(4, 2, cfg(false));
        let (a, b) = (WorkerId("a".into()), WorkerId("b".into()));
        let g = s.lease(&a, 0).unwrap();
        assert_eq!(g.shard, ShardId(0));
        assert!(s.release(&a, g.lease, Some("store refused".into())));
        // Shard 0 is first in line again, but `a` failed it: `a` gets shard 1, `b` gets shard 0.
        assert_eq!(s.lease(&a, 1).unwrap().shard, ShardId(1));
        let g = s.lease(&b, 2).unwrap();
        assert_eq!((g.shard, g.attempt), (ShardId(0), 2));
        // With nothing else pending, the worker that failed a shard may retry it.
        assert!(s.release(&b, g.lease, Some("again".into())));
        assert_eq!(s.lease(&a, 3).unwrap().shard, ShardId(0));
    }

    #[test]
    fn expiry_requeues_then_fails_after_max_failures() {
        let mut s = Scheduler::new(4, 4, cfg(false));
        for attempt in 1..=3u64 {
            let g = s.lease(&w(0), attempt * 1000).unwrap();
            assert_eq!(g.attempt as u64, attempt);
            s.expire(attempt * 1000 + 100);
        }
        assert!(s.is_finished());
        assert_eq!(s.state_of(ShardId(0)), ShardState::Failed);
        assert_eq!(s.failures_of(ShardId(0)).len(), 3);
        assert!(s.failures_of(ShardId(0))[0].contains("expired"));
    }

    #[test]
    fn heartbeats_keep_leases_alive() {
        let mut s = Scheduler::new(4, 4, cfg(false));
        let g = s.lease(&w(0), 0).unwrap();
        for t in (50..1000).step_by(50) {
            assert!(s.heartbeat(&w(0), &[g.lease], t).is_empty());
        }
        assert_eq!(s.complete(&w(0), g.lease), Completion::Accepted);
        assert!(s.is_finished());
    }

    #[test]
    fn late_result_from_expired_lease_wins_and_the_retry_is_a_duplicate() {
        let mut s = Scheduler::new(4, 4, cfg(false));
        let slow = s.lease(&w(0), 0).unwrap();
        s.expire(200);
        let retry = s.lease(&w(1), 200).unwrap();
        assert_eq!(retry.shard, slow.shard);
        assert_eq!(s.complete(&w(0), slow.lease), Completion::Accepted);
        assert_eq!(s.heartbeat(&w(1), &[retry.lease], 250), vec![retry.lease]);
        assert_eq!(s.complete(&w(1), retry.lease), Completion::Duplicate);
        assert_eq!(s.stats().duplicates_dropped, 1);
        assert_eq!(s.complete(&w(2), retry.lease), Completion::Unknown);
    }

    #[test]
    fn a_frozen_worker_heard_again_is_told_to_drop_its_expired_lease_once() {
        let mut s = Scheduler::new(4, 4, cfg(false));
        let frozen = s.lease(&w(0), 0).unwrap();
        s.expire(200);
        let retry = s.lease(&w(1), 200).unwrap();
        assert_eq!(s.complete(&w(1), retry.lease), Completion::Accepted);
        // Another worker naming the lease is not its owner coming back.
        assert_eq!(s.heartbeat(&w(2), &[frozen.lease], 250), vec![frozen.lease]);
        assert_eq!(s.stats().late_leases_cancelled, 0);
        assert_eq!(s.heartbeat(&w(0), &[frozen.lease], 300), vec![frozen.lease]);
        assert_eq!(s.heartbeat(&w(0), &[frozen.lease], 400), vec![frozen.lease]);
        assert_eq!(s.stats().late_leases_cancelled, 1);
        // A lease that ended by its own result is not late.
        let mut s = Scheduler::new(4, 4, cfg(false));
        let g = s.lease(&w(0), 0).unwrap();
        assert_eq!(s.complete(&w(0), g.lease), Completion::Accepted);
        s.heartbeat(&w(0), &[g.lease], 50);
        assert_eq!(s.stats().late_leases_cancelled, 0);
    }

    #[test]
    fn speculation_duplicates_the_oldest_in_flight_shard() {
        let mut s = Scheduler::new(8, 4, cfg(true));
        let a = s.lease(&w(0), 0).unwrap();
        let b = s.lease(&w(1), 10).unwrap();
        assert_eq!(s.complete(&w(1), b.lease), Completion::Accepted);
        let spec = s.lease(&w(1), 20).unwrap();
        assert!(spec.speculative);
        assert_eq!(spec.shard, a.shard);
        // The original owner never gets its own shard twice, and a shard runs at most twice.
        assert!(s.lease(&w(0), 30).is_none());
        assert!(s.lease(&w(2), 30).is_none());
        assert_eq!(s.complete(&w(1), spec.lease), Completion::Accepted);
        assert_eq!(s.complete(&w(0), a.lease), Completion::Duplicate);
    }

    #[test]
    fn clean_release_does_not_count_as_failure() {
        let mut s = Scheduler::new(4, 4, cfg(false));
        for _ in 0..5 {
            let g = s.lease(&w(0), 0).unwrap();
            assert!(s.release(&w(0), g.lease, None));
        }
        assert_eq!(s.state_of(ShardId(0)), ShardState::Pending);
        let g = s.lease(&w(0), 0).unwrap();
        assert!(s.release(&w(0), g.lease, Some("cuda out of memory".into())));
        assert_eq!(s.failures_of(ShardId(0)).len(), 1);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Lease(usize),
        Complete(usize),
        Resubmit(usize),
        Heartbeat(usize),
        Tick(u64),
        Lose(usize),
        Fail(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..4usize).prop_map(Op::Lease),
            (0..4usize).prop_map(Op::Complete),
            (0..4usize).prop_map(Op::Resubmit),
            (0..4usize).prop_map(Op::Heartbeat),
            (1..150u64).prop_map(Op::Tick),
            (0..4usize).prop_map(Op::Lose),
            (0..4usize).prop_map(Op::Fail),
        ]
    }

    proptest! {
        /// Whatever happens, draining with a healthy worker leaves every shard done or failed, each
        /// done shard with exactly one accepted result, and the sample counts adding up.
        #[test]
        fn every_sample_accounted_exactly_once(
            total in 0u64..60,
            shard_size in 1u64..9,
            speculative in any::<bool>(),
            ops in proptest::collection::vec(op(), 0..120),
        ) {
            let mut s = Scheduler::new(total, shard_size, cfg(speculative));
            let mut now = 0;
            let mut held: Vec<Vec<Grant>> = vec![Vec::new(); 4];
            let mut finished: Vec<Vec<Grant>> = vec![Vec::new(); 4];
            let mut accepted = vec![0u32; s.shard_count()];
            for op in ops {
                match op {
                    Op::Lease(i) => if let Some(g) = s.lease(&w(i), now) { held[i].push(g) },
                    Op::Complete(i) => if let Some(g) = held[i].pop() {
                        if s.complete(&w(i), g.lease) == Completion::Accepted {
                            accepted[g.shard.0 as usize] += 1;
                        }
                        finished[i].push(g);
                    },
                    Op::Resubmit(i) => if let Some(g) = finished[i].last() {
                        prop_assert_ne!(s.complete(&w(i), g.lease), Completion::Accepted);
                    },
                    Op::Heartbeat(i) => {
                        let ids: Vec<_> = held[i].iter().map(|g| g.lease).collect();
                        let cancelled = s.heartbeat(&w(i), &ids, now);
                        held[i].retain(|g| !cancelled.contains(&g.lease));
                    }
                    Op::Tick(dt) => { now += dt; s.expire(now); }
                    Op::Lose(i) => { s.worker_lost(&w(i), "killed"); held[i].clear(); }
                    Op::Fail(i) => if let Some(g) = held[i].pop() {
                        s.release(&w(i), g.lease, Some("boom".into()));
                    },
                }
            }
            // Drain: one healthy worker finishes everything that is still open.
            let healthy = w(9);
            let mut guard = 0;
            while !s.is_finished() {
                now += 1000;
                match s.lease(&healthy, now) {
                    Some(g) => if s.complete(&healthy, g.lease) == Completion::Accepted {
                        accepted[g.shard.0 as usize] += 1;
                    },
                    None => s.expire(now + 1000),
                }
                guard += 1;
                prop_assert!(guard < 10_000, "drain did not converge");
            }
            let mut samples = 0;
            for (i, &n) in accepted.iter().enumerate() {
                let id = ShardId(i as u64);
                match s.state_of(id) {
                    ShardState::Done => prop_assert_eq!(n, 1, "shard {} accepted {} times", i, n),
                    ShardState::Failed => {
                        prop_assert_eq!(n, 0);
                        prop_assert!(!s.failures_of(id).is_empty());
                    }
                    other => prop_assert!(false, "shard {} left {:?}", i, other),
                }
                samples += s.samples_of(id).end - s.samples_of(id).start;
            }
            prop_assert_eq!(samples, total);
        }
    }
}
