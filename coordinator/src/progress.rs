//! The run's progress line: samples computed (moving with every batch, from the workers' heartbeats)
//! and samples accepted (whole journaled shards, the exactly-once count), with a rate and an ETA.

use crate::run_state::RunState;
use crate::scheduler::{Millis, ShardState};
use tresnet_common::ids::ShardId;

/// The progress line's figures. Accepted samples (whole shards, journaled) are the exactly-once count
/// but move a shard at a time; computed samples add what each live worker reports in its heartbeats
/// beyond what it has had accepted, so the line moves with every batch. The computed figure is an
/// estimate: a speculative copy of a shard counts twice while both run, so it is capped at the total
/// and never goes back.
pub struct Progress {
    /// Samples of shards already done when the watch began (a resume).
    resumed: u64,
    /// Accepted samples per worker, summed from the timeline up to `seen` entries.
    accepted_by: std::collections::HashMap<String, u64>,
    seen: usize,
    shown: u64,
}

/// One reading of [`Progress`].
pub struct ProgressNow {
    pub computed: u64,
    pub accepted: u64,
    /// Samples per second computed since the first lease; `None` before anything was computed.
    pub rate: Option<f64>,
}

impl Progress {
    pub fn new(st: &RunState, total: u64) -> Self {
        let sched = st.sched();
        let done: u64 = (0..sched.shard_count() as u64)
            .map(ShardId)
            .filter(|&s| sched.state_of(s) == ShardState::Done)
            .map(|s| {
                let r = sched.samples_of(s);
                r.end - r.start
            })
            .sum();
        let resumed = done.saturating_sub(st.live().samples_done).min(total);
        Progress {
            resumed,
            accepted_by: Default::default(),
            seen: 0,
            shown: resumed,
        }
    }

    pub fn update(&mut self, st: &RunState) -> ProgressNow {
        self.update_at(st, st.now())
    }

    /// [`Self::update`] as if the coordinator's clock read `now`.
    fn update_at(&mut self, st: &RunState, now: Millis) -> ProgressNow {
        let live = st.live();
        for e in &live.timeline[self.seen.min(live.timeline.len())..] {
            *self.accepted_by.entry(e.worker.clone()).or_default() += e.samples;
        }
        self.seen = live.timeline.len();
        let live_within = st.lease_timeout().as_millis() as u64;
        // A worker not heard from within a lease timeout has lost its leases; its work is redone.
        let in_flight: u64 = st
            .workers()
            .iter()
            .filter(|(_, w)| now.saturating_sub(w.last_seen) <= live_within)
            .map(|(id, w)| {
                let accepted = self.accepted_by.get(&id.0).copied().unwrap_or(0);
                w.samples_done.saturating_sub(accepted)
            })
            .sum();
        let total = st.index().len() as u64;
        let accepted = self.resumed + live.samples_done;
        let computed = (accepted + in_flight).min(total).max(self.shown);
        self.shown = computed;
        let rate = match live.first_lease_ms {
            Some(t0) if computed > self.resumed && now > t0 => {
                Some((computed - self.resumed) as f64 * 1000.0 / (now - t0) as f64)
            }
            _ => None,
        };
        ProgressNow {
            computed,
            accepted: accepted.min(total),
            rate,
        }
    }
}

impl ProgressNow {
    /// `12.3/s  eta 1m05s`, or `eta unknown` while nothing has been computed yet.
    pub fn rate_and_eta(&self, total: u64) -> String {
        match self.rate {
            Some(rate) if rate > 0.0 => {
                let left = total.saturating_sub(self.computed) as f64 / rate;
                format!("{rate:.1}/s  eta {}", human_duration(left))
            }
            _ => "-/s  eta unknown".into(),
        }
    }
}

/// `45s`, `3m05s`, `2h07m`.
fn human_duration(secs: f64) -> String {
    let s = secs.ceil().max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use tresnet_common::ids::{ShardId, WorkerId};

    use super::{Progress, ProgressNow, human_duration};
    use crate::run_dir::TimelineEvent;
    use crate::run_state::{RunState, WorkerInfo};

    /// A job over 10 samples in shards of 2 with workers `a` and `b`, last heard from at 0 ms.
    fn state(dir: &std::path::Path) -> RunState {
        let mut st = crate::run_state::testing::state(dir, "J#1", 10);
        for id in ["a", "b"] {
            st.workers_mut()
                .insert(WorkerId(id.into()), WorkerInfo::default());
        }
        st
    }

    fn heartbeat(st: &mut RunState, id: &str, samples_done: u64, at: u64) {
        let w = st.workers_mut().get_mut(&WorkerId(id.into())).unwrap();
        w.samples_done = samples_done;
        w.last_seen = at;
    }

    fn accept(st: &mut RunState, id: &str, samples: u64) {
        st.live_mut().samples_done += samples;
        st.live_mut().timeline.push(TimelineEvent {
            t_ms: 0,
            worker: id.into(),
            shard: 0,
            samples,
        });
    }

    #[test]
    fn computed_moves_with_heartbeats_and_accepted_with_shards() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = state(dir.path());
        let mut p = Progress::new(&st, 10);
        let now = p.update_at(&st, 1000);
        assert_eq!((now.computed, now.accepted, now.rate), (0, 0, None));
        assert_eq!(now.rate_and_eta(10), "-/s  eta unknown");

        st.live_mut().first_lease_ms = Some(0);
        heartbeat(&mut st, "a", 3, 2000);
        heartbeat(&mut st, "b", 1, 2000);
        let now = p.update_at(&st, 2000);
        assert_eq!((now.computed, now.accepted), (4, 0));
        assert_eq!(now.rate, Some(2.0));
        assert_eq!(now.rate_and_eta(10), "2.0/s  eta 3s");

        // a's shard of 2 is accepted before its next heartbeat: not counted twice.
        accept(&mut st, "a", 2);
        let now = p.update_at(&st, 2500);
        assert_eq!((now.computed, now.accepted), (4, 2));

        // b is not heard from for longer than a lease timeout: its work will be redone elsewhere,
        // but the line does not go back.
        heartbeat(&mut st, "a", 4, 40_000);
        let now = p.update_at(&st, 40_000);
        assert_eq!((now.computed, now.accepted), (4, 2));
        heartbeat(&mut st, "a", 7, 41_000);
        assert_eq!(p.update_at(&st, 41_000).computed, 7);

        // Capped at the dataset size (speculative copies count twice while both run).
        heartbeat(&mut st, "b", 9, 41_000);
        assert_eq!(p.update_at(&st, 41_000).computed, 10);
    }

    #[test]
    fn a_resume_starts_from_the_journaled_shards() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = state(dir.path());
        st.sched_mut().mark_done(ShardId(0));
        st.sched_mut().mark_done(ShardId(4));
        let mut p = Progress::new(&st, 10);
        let now = p.update_at(&st, 1000);
        assert_eq!((now.computed, now.accepted, now.rate), (4, 4, None));
    }

    #[test]
    fn durations_read_as_seconds_minutes_hours() {
        assert_eq!(human_duration(0.2), "1s");
        assert_eq!(human_duration(59.0), "59s");
        assert_eq!(human_duration(185.0), "3m05s");
        assert_eq!(human_duration(7620.0), "2h07m");
        let now = ProgressNow {
            computed: 5,
            accepted: 0,
            rate: Some(0.0),
        };
        assert_eq!(now.rate_and_eta(10), "-/s  eta unknown");
    }
}
