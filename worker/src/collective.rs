//! Node-local collectives across one worker's device executors: a barrier (so a throughput
//! measurement starts on every device together), a sum all-reduce of on-device counts, and a gather of
//! tensors (logits) to the leading executor.
//!
//! Every executor owns its device from its own thread, so a collective is a rendezvous: each rank
//! deposits a shallow clone of its tensor (same storage) and the last rank to arrive runs the operation
//! for all of them at once. The operation is NCCL (feature `nccl`: cudarc, libnccl loaded at run time)
//! when every device is CUDA and the library loads, else [`LocalOps`], which does the same arithmetic
//! through host memory. Both change the callers' tensors in place, so the results are identical.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tch::{Device, Kind, Tensor};

#[cfg(feature = "nccl")]
pub mod nccl;

/// How long a rank waits for the others before giving up: long enough for any model load or forward,
/// short enough that a dead executor turns into an error rather than a hang.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, thiserror::Error)]
pub enum CollectiveError {
    #[error("rank {rank} is outside a world of {world}")]
    BadRank { rank: usize, world: usize },
    #[error("collective {op}: ranks {missing:?} did not arrive within {timeout:?}")]
    Timeout {
        op: &'static str,
        missing: Vec<usize>,
        timeout: Duration,
    },
    #[error("collective {op}: rank {rank} called it while the others are in {other}")]
    Mismatch {
        op: &'static str,
        rank: usize,
        other: &'static str,
    },
    /// Another rank failed (its own error says why) or a rank timed out: the collective is over.
    #[error("collective aborted: {0}")]
    Aborted(String),
    #[error("collective {op}: rank {rank} arrived twice in one round")]
    Twice { op: &'static str, rank: usize },
    #[error("collective {op}: round ended without an outcome")]
    NoOutcome { op: &'static str },
    #[error("collective {op} failed: {source}")]
    Failed {
        op: &'static str,
        #[source]
        source: OpsError,
    },
}

/// Why a backend could not run an operation over the ranks' tensors.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpsError {
    #[error("rank {rank} has {kind:?} {size:?}, rank 0 has {first_kind:?} {first_size:?}")]
    Mismatch {
        rank: usize,
        kind: Kind,
        size: Vec<i64>,
        first_kind: Kind,
        first_size: Vec<i64>,
    },
    #[error("no tensors")]
    NoTensors,
    /// Shared: every rank gets the round's error.
    #[error(transparent)]
    Torch(Arc<tch::TchError>),
    #[cfg(feature = "nccl")]
    #[error(transparent)]
    Nccl(#[from] nccl::NcclError),
    #[cfg(test)]
    #[error("refused")]
    Refused,
}

impl From<tch::TchError> for OpsError {
    fn from(e: tch::TchError) -> Self {
        OpsError::Torch(Arc::new(e))
    }
}

/// Why a collective of the asked-for backend cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("this tresnet-worker was built without the `nccl` cargo feature")]
    NcclNotBuilt,
    #[cfg(feature = "nccl")]
    #[error(transparent)]
    Nccl(#[from] nccl::NcclError),
}

/// Which implementation runs the collectives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// NCCL when built in, every device is CUDA and libnccl loads; otherwise local.
    Auto,
    /// Host memory, on any devices.
    Local,
    /// NCCL or an error saying why not.
    Nccl,
}

/// The arithmetic of each collective over all ranks' tensors at once (index = rank).
pub trait Ops: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &'static str;
    /// Replaces every tensor by the elementwise sum of all of them.
    fn all_reduce_sum(&self, tensors: &mut [Tensor]) -> Result<(), OpsError>;
    /// Rank 0's device gets every tensor concatenated along dim 0, in rank order.
    fn gather(&self, tensors: &[Tensor]) -> Result<Tensor, OpsError>;
}

/// Host-memory implementation: correct on any devices, and the reference the NCCL path must match.
#[derive(Debug, Default)]
pub struct LocalOps;

impl Ops for LocalOps {
    fn name(&self) -> &'static str {
        "local"
    }

    fn all_reduce_sum(&self, tensors: &mut [Tensor]) -> Result<(), OpsError> {
        check_same_shape(tensors)?;
        let Some(first) = tensors.first() else {
            return Ok(());
        };
        // Integer counts stay integers; sums are done in the tensors' own kind on the host.
        let mut sum = first.to_device(Device::Cpu);
        for t in &tensors[1..] {
            sum += t.to_device(Device::Cpu);
        }
        for t in tensors.iter_mut() {
            t.copy_(&sum);
        }
        Ok(())
    }

    fn gather(&self, tensors: &[Tensor]) -> Result<Tensor, OpsError> {
        let Some(first) = tensors.first() else {
            return Err(OpsError::NoTensors);
        };
        let dev = first.device();
        let parts: Vec<Tensor> = tensors.iter().map(|t| t.to_device(dev)).collect();
        Ok(Tensor::f_cat(&parts, 0)?)
    }
}

pub(crate) fn check_same_shape(tensors: &[Tensor]) -> Result<(), OpsError> {
    if let Some(first) = tensors.first() {
        for (rank, t) in tensors.iter().enumerate() {
            if t.size() != first.size() || t.kind() != first.kind() {
                return Err(OpsError::Mismatch {
                    rank,
                    kind: t.kind(),
                    size: t.size(),
                    first_kind: first.kind(),
                    first_size: first.size(),
                });
            }
        }
    }
    Ok(())
}

#[derive(Debug)]
enum Outcome {
    Pending,
    Done(Result<Option<Tensor>, CollectiveError>),
}

#[derive(Debug)]
struct Round {
    op: Option<&'static str>,
    slots: Vec<Option<Tensor>>,
    /// Bumped when a round completes, so waiters know their round is over.
    generation: u64,
    outcome: Outcome,
    /// Ranks that have not yet collected the finished round's outcome.
    to_collect: usize,
    aborted: Option<String>,
}

/// The rendezvous every rank calls into. Cheap to share: `Arc<Collective>`.
#[derive(Debug)]
pub struct Collective {
    world: usize,
    ops: Box<dyn Ops>,
    timeout: Duration,
    round: Mutex<Round>,
    changed: Condvar,
}

impl Collective {
    pub fn new(world: usize, ops: Box<dyn Ops>, timeout: Duration) -> Self {
        Collective {
            world,
            ops,
            timeout,
            round: Mutex::new(Round {
                op: None,
                slots: (0..world).map(|_| None).collect(),
                generation: 0,
                outcome: Outcome::Pending,
                to_collect: 0,
                aborted: None,
            }),
            changed: Condvar::new(),
        }
    }

    /// NCCL across `devices` when they are all CUDA, the `nccl` feature is built and libnccl loads;
    /// otherwise the local implementation, with the reason logged.
    pub fn for_devices(devices: &[Device]) -> Self {
        let world = devices.len();
        #[cfg(feature = "nccl")]
        {
            match nccl::NcclOps::new(devices) {
                Ok(ops) => return Collective::new(world, Box::new(ops), DEFAULT_TIMEOUT),
                Err(why) => {
                    tracing::info!(reason = %why, "NCCL not used; node-local collectives run through host memory")
                }
            }
        }
        let _ = devices;
        Collective::new(world, Box::new(LocalOps), DEFAULT_TIMEOUT)
    }

    /// A collective over `devices` with the backend asked for: `Nccl` fails (with the reason) where
    /// NCCL cannot be had instead of falling back, so a check can prove which one ran.
    pub fn with_backend(devices: &[Device], backend: Backend) -> Result<Self, BackendError> {
        let world = devices.len();
        match backend {
            Backend::Auto => Ok(Collective::for_devices(devices)),
            Backend::Local => Ok(Collective::new(world, Box::new(LocalOps), DEFAULT_TIMEOUT)),
            Backend::Nccl => {
                #[cfg(feature = "nccl")]
                {
                    Ok(nccl::NcclOps::new(devices)
                        .map(|ops| Collective::new(world, Box::new(ops), DEFAULT_TIMEOUT))?)
                }
                #[cfg(not(feature = "nccl"))]
                {
                    Err(BackendError::NcclNotBuilt)
                }
            }
        }
    }

    pub fn world_size(&self) -> usize {
        self.world
    }

    pub fn backend(&self) -> &'static str {
        self.ops.name()
    }

    /// Makes every current and future call fail with `why`: an executor that cannot take part (its
    /// model failed to load) must not leave the others waiting.
    pub fn abort(&self, why: &str) {
        let mut r = self.round.lock().unwrap_or_else(|p| p.into_inner());
        r.aborted.get_or_insert_with(|| why.to_string());
        self.changed.notify_all();
    }

    /// Returns when every rank has called it; touches no device.
    pub fn barrier(&self, rank: usize) -> Result<(), CollectiveError> {
        let t = Tensor::zeros([1], (Kind::Int64, Device::Cpu));
        self.run("barrier", rank, t).map(drop)
    }

    /// Sums `t` across ranks in place (every rank ends with the total).
    pub fn all_reduce_sum(&self, rank: usize, t: &mut Tensor) -> Result<(), CollectiveError> {
        self.run("all_reduce_sum", rank, t.shallow_clone())
            .map(drop)
    }

    /// Rank 0 gets every rank's `t` concatenated along dim 0 in rank order (on its device); the
    /// others get `None`.
    pub fn gather(&self, rank: usize, t: &Tensor) -> Result<Option<Tensor>, CollectiveError> {
        self.run("gather", rank, t.shallow_clone())
    }

    fn run(
        &self,
        op: &'static str,
        rank: usize,
        t: Tensor,
    ) -> Result<Option<Tensor>, CollectiveError> {
        if rank >= self.world {
            return Err(CollectiveError::BadRank {
                rank,
                world: self.world,
            });
        }
        let mut r = self.round.lock().unwrap_or_else(|p| p.into_inner());
        // A finished round whose results are still being collected blocks the next one.
        while r.to_collect > 0 && r.aborted.is_none() {
            r = self.changed.wait(r).unwrap_or_else(|p| p.into_inner());
        }
        if let Some(why) = &r.aborted {
            return Err(CollectiveError::Aborted(why.clone()));
        }
        match r.op {
            Some(other) if other != op => {
                return Err(CollectiveError::Mismatch { op, rank, other });
            }
            _ => r.op = Some(op),
        }
        if r.slots[rank].is_some() {
            return Err(CollectiveError::Twice { op, rank });
        }
        r.slots[rank] = Some(t);
        let generation = r.generation;
        if r.slots.iter().all(Option::is_some) {
            let mut tensors: Vec<Tensor> = r.slots.iter_mut().filter_map(Option::take).collect();
            let result = match op {
                // All ranks are threads of this process, so the rendezvous itself is the barrier;
                // sending its token through the device backend would only add a placement rule
                // (NCCL needs CUDA tensors) and a launch.
                "barrier" => Ok(None),
                "gather" => self.ops.gather(&tensors).map(Some),
                _ => self.ops.all_reduce_sum(&mut tensors).map(|()| None),
            }
            .map_err(|source| CollectiveError::Failed { op, source });
            r.outcome = Outcome::Done(result);
            r.to_collect = self.world;
            r.generation += 1;
            r.op = None;
            self.changed.notify_all();
        } else {
            let deadline = std::time::Instant::now() + self.timeout;
            while r.generation == generation && r.aborted.is_none() {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    let missing = (0..self.world).filter(|&i| r.slots[i].is_none()).collect();
                    let why = CollectiveError::Timeout {
                        op,
                        missing,
                        timeout: self.timeout,
                    };
                    r.aborted = Some(why.to_string());
                    self.changed.notify_all();
                    return Err(why);
                }
                r = self
                    .changed
                    .wait_timeout(r, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            if r.generation == generation {
                let why = r.aborted.clone().unwrap_or_default();
                return Err(CollectiveError::Aborted(why));
            }
        }
        let outcome = match &r.outcome {
            Outcome::Done(Ok(t)) => Ok(if rank == 0 {
                t.as_ref().map(Tensor::shallow_clone)
            } else {
                None
            }),
            Outcome::Done(Err(e)) => Err(e.clone()),
            Outcome::Pending => Err(CollectiveError::NoOutcome { op }),
        };
        r.to_collect -= 1;
        if r.to_collect == 0 {
            r.outcome = Outcome::Pending;
            self.changed.notify_all();
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn local(world: usize, timeout: Duration) -> Arc<Collective> {
        Arc::new(Collective::new(world, Box::new(LocalOps), timeout))
    }

    /// Runs `f(rank)` on one thread per rank, like executors do.
    fn on_ranks<T: Send + 'static>(
        world: usize,
        f: impl Fn(usize) -> T + Send + Sync + 'static,
    ) -> Vec<T> {
        let f = Arc::new(f);
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let f = f.clone();
                std::thread::spawn(move || f(rank))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn all_reduce_sums_counts_in_place_on_every_rank_over_many_rounds() {
        let c = local(3, DEFAULT_TIMEOUT);
        let cc = c.clone();
        let out = on_ranks(3, move |rank| {
            let mut seen = Vec::new();
            for round in 0..20i64 {
                // correct@1, correct@5 and a 2x2 confusion matrix, as an executor would hold them.
                let mut counts = Tensor::from_slice(&[
                    rank as i64 + round,
                    2 * rank as i64,
                    1,
                    0,
                    0,
                    rank as i64,
                ]);
                cc.all_reduce_sum(rank, &mut counts).unwrap();
                seen.push(Vec::<i64>::try_from(&counts).unwrap());
            }
            seen
        });
        for (round, expect) in (0..20i64).map(|r| (r, vec![3 + 3 * r, 6, 3, 0, 0, 3])) {
            for ranks in &out {
                assert_eq!(ranks[round as usize], expect, "round {round}");
            }
        }
        assert_eq!(c.backend(), "local");
    }

    #[test]
    fn gather_puts_every_rank_in_order_on_rank_zero_only() {
        let c = local(4, DEFAULT_TIMEOUT);
        let out = on_ranks(4, move |rank| {
            // Ranks hold different batch sizes: gather must not assume equal shapes.
            let rows = rank as i64 + 1;
            let logits = Tensor::full([rows, 3], rank as f64, (Kind::Float, Device::Cpu));
            c.gather(rank, &logits).unwrap()
        });
        let all = out[0].as_ref().unwrap();
        assert_eq!(all.size(), [10, 3]);
        let col: Vec<f32> = Vec::try_from(&all.select(1, 0)).unwrap();
        assert_eq!(col, [0., 1., 1., 2., 2., 2., 3., 3., 3., 3.]);
        assert!(out[1..].iter().all(Option::is_none));
    }

    #[test]
    fn barrier_releases_everyone_together() {
        let c = local(3, DEFAULT_TIMEOUT);
        let arrived = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let out = on_ranks(3, move |rank| {
            std::thread::sleep(Duration::from_millis(20 * rank as u64));
            arrived.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            c.barrier(rank).unwrap();
            // Nobody passes the barrier before the last rank has arrived.
            arrived.load(std::sync::atomic::Ordering::SeqCst)
        });
        assert_eq!(out, [3, 3, 3]);
    }

    /// A backend that refuses every operation, as NCCL refuses the host tensors a barrier carries.
    #[derive(Debug)]
    struct RefusingOps;

    impl Ops for RefusingOps {
        fn name(&self) -> &'static str {
            "refusing"
        }
        fn all_reduce_sum(&self, _: &mut [Tensor]) -> Result<(), OpsError> {
            Err(OpsError::Refused)
        }
        fn gather(&self, _: &[Tensor]) -> Result<Tensor, OpsError> {
            Err(OpsError::Refused)
        }
    }

    #[test]
    fn barrier_never_reaches_the_device_backend() {
        let c = Arc::new(Collective::new(2, Box::new(RefusingOps), DEFAULT_TIMEOUT));
        let cc = c.clone();
        let out = on_ranks(2, move |rank| cc.barrier(rank));
        assert!(out.iter().all(Result::is_ok), "{out:?}");
        // The backend is still consulted for real collectives.
        let out = on_ranks(2, move |rank| {
            let mut t = Tensor::zeros([1], (Kind::Int64, Device::Cpu));
            c.all_reduce_sum(rank, &mut t)
        });
        assert!(
            out.iter()
                .all(|r| r.as_ref().unwrap_err().to_string().contains("refused"))
        );
    }

    #[test]
    fn a_missing_rank_times_out_naming_it_and_abort_wakes_waiters() {
        let c = local(3, Duration::from_millis(200));
        let cc = c.clone();
        let out = on_ranks(2, move |rank| cc.barrier(rank));
        for r in &out {
            let e = r.clone().unwrap_err();
            assert!(e.to_string().contains("[2]"), "{e}");
        }
        // Once timed out, the collective stays failed rather than pairing later calls wrongly.
        assert!(matches!(c.barrier(2), Err(CollectiveError::Aborted(_))));

        let c = local(2, DEFAULT_TIMEOUT);
        let cc = c.clone();
        let waiter = std::thread::spawn(move || cc.barrier(0));
        std::thread::sleep(Duration::from_millis(50));
        c.abort("executor 1 could not load the model");
        let e = waiter.join().unwrap().unwrap_err();
        assert!(e.to_string().contains("could not load"), "{e}");
    }

    #[test]
    fn mismatched_shapes_and_bad_ranks_are_errors_on_every_rank() {
        let c = local(2, DEFAULT_TIMEOUT);
        assert!(matches!(
            c.barrier(2),
            Err(CollectiveError::BadRank { rank: 2, world: 2 })
        ));
        let out = on_ranks(2, move |rank| {
            let mut t = Tensor::zeros([rank as i64 + 1], (Kind::Int64, Device::Cpu));
            c.all_reduce_sum(rank, &mut t)
        });
        for r in out {
            let e = r.unwrap_err().to_string();
            assert!(e.contains("rank 1 has"), "{e}");
        }
    }

    #[test]
    fn for_devices_on_cpu_is_the_local_backend() {
        let c = Collective::for_devices(&[Device::Cpu, Device::Cpu]);
        assert_eq!((c.backend(), c.world_size()), ("local", 2));
    }
}
