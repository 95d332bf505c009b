//! `tresnet-worker collective-check`: runs the node-local collectives on the given devices with known
//! inputs and checks every element of every result, so an operator sees NCCL (or the host fallback)
//! work on a node before a long run depends on it.
//!
//! The inputs are integers (also the float32 ones, exactly representable), so sums do not depend on
//! reduction order and a result is either exactly right or wrong.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::collective::{Backend, BackendError, Collective, CollectiveError};

/// Why the check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("no devices")]
    NoDevices,
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("round {round}, rank {rank} ({device:?}), {what}: {source}")]
    Round {
        round: usize,
        rank: usize,
        device: Device,
        what: &'static str,
        #[source]
        source: Box<RoundError>,
    },
    #[error("rank {rank}: libtorch failed: {panic}")]
    Panicked { rank: usize, panic: String },
    #[error("a check thread died")]
    ThreadDied,
}

impl CheckError {
    /// Only says that another rank failed first: that rank's own error is the one to report.
    fn is_abort(&self) -> bool {
        match self {
            CheckError::Round { source, .. } => {
                matches!(
                    **source,
                    RoundError::Collective(CollectiveError::Aborted(_))
                )
            }
            _ => false,
        }
    }
}

/// What went wrong in one step of a round.
#[derive(Debug, thiserror::Error)]
pub enum RoundError {
    #[error(transparent)]
    Collective(#[from] CollectiveError),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    #[error(transparent)]
    Wrong(#[from] Difference),
    #[error("landed on {0:?}")]
    LandedOn(Device),
    #[error("rank 0 got nothing")]
    NothingOnRankZero,
    #[error("a rank other than 0 got the result")]
    NotOnRankZero,
}

/// The first way a result differs from the expected values.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum Difference {
    #[error("{got} elements, expected {want}")]
    Length { got: usize, want: usize },
    #[error("element {index} is {got}, expected {want}")]
    Element {
        index: usize,
        got: String,
        want: String,
    },
}

#[derive(Debug, Clone)]
pub struct CheckConfig {
    pub devices: Vec<Device>,
    pub backend: Backend,
    pub rounds: usize,
    /// The confusion matrix reduced each round is classes x classes int64, like a real job's.
    pub classes: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub backend: &'static str,
    pub world: usize,
    pub devices: Vec<String>,
    pub rounds: usize,
    pub classes: i64,
    /// Bytes each rank contributes to one round's count all-reduce.
    pub all_reduce_bytes: usize,
    /// Median time of one count all-reduce as rank 0 saw it (rendezvous included).
    pub all_reduce_median_ms: f64,
    /// Median time of one logits gather as rank 0 saw it.
    pub gather_median_ms: f64,
}

/// Rank `rank`'s counts in `round`: correct@1, correct@5, then the flattened confusion matrix.
fn counts(rank: usize, round: usize, classes: i64) -> Vec<i64> {
    (0..2 + classes * classes)
        .map(|i| (rank as i64 + 1) * (i % 7 + 1) + round as i64)
        .collect()
}

/// Rank `rank`'s logits in `round`: a batch size that differs by rank and round, as real batches do.
fn logits(rank: usize, round: usize, classes: i64) -> Vec<f32> {
    let rows = rows_of(rank, round);
    (0..rows * classes)
        .map(|i| (rank * 1000) as f32 + (i / classes) as f32 + (i % classes % 13) as f32 * 0.5)
        .collect()
}

/// Float32 values to all-reduce: the same shape on every rank (two rows of logits), as it must be.
fn float_block(rank: usize, classes: i64) -> Vec<f32> {
    let mut v = logits(rank, 1, classes);
    v.truncate(2 * classes as usize);
    v
}

fn rows_of(rank: usize, round: usize) -> i64 {
    (rank + 1 + round % 3) as i64
}

fn first_difference<T: PartialEq + Copy + std::fmt::Debug>(
    got: &[T],
    want: &[T],
) -> Option<Difference> {
    if got.len() != want.len() {
        return Some(Difference::Length {
            got: got.len(),
            want: want.len(),
        });
    }
    got.iter()
        .zip(want)
        .position(|(g, w)| g != w)
        .map(|i| Difference::Element {
            index: i,
            got: format!("{:?}", got[i]),
            want: format!("{:?}", want[i]),
        })
}

struct RankTimes {
    all_reduce: Vec<f64>,
    gather: Vec<f64>,
}

fn check_rank(cfg: &CheckConfig, rank: usize, c: &Collective) -> Result<RankTimes, CheckError> {
    let device = cfg.devices[rank];
    let world = cfg.devices.len();
    let fail = |round: usize, what: &'static str, why: RoundError| CheckError::Round {
        round,
        rank,
        device,
        what,
        source: Box::new(why),
    };
    c.barrier(rank).map_err(|e| fail(0, "barrier", e.into()))?;
    let mut times = RankTimes {
        all_reduce: Vec::new(),
        gather: Vec::new(),
    };
    for round in 0..cfg.rounds {
        let mut t = Tensor::from_slice(&counts(rank, round, cfg.classes)).to_device(device);
        let start = Instant::now();
        c.all_reduce_sum(rank, &mut t)
            .map_err(|e| fail(round, "all-reduce of counts", e.into()))?;
        times.all_reduce.push(start.elapsed().as_secs_f64());
        let want: Vec<i64> = (0..world)
            .map(|r| counts(r, round, cfg.classes))
            .reduce(|a, b| a.iter().zip(&b).map(|(x, y)| x + y).collect())
            .unwrap_or_default();
        let got = Vec::<i64>::try_from(&t.to_device(Device::Cpu))
            .map_err(|e| fail(round, "all-reduce of counts", e.into()))?;
        if let Some(d) = first_difference(&got, &want) {
            return Err(fail(round, "all-reduce of counts", d.into()));
        }

        let mut f = Tensor::from_slice(&float_block(rank, cfg.classes)).to_device(device);
        c.all_reduce_sum(rank, &mut f)
            .map_err(|e| fail(round, "all-reduce of float32", e.into()))?;
        let want: Vec<f32> = (0..world)
            .map(|r| float_block(r, cfg.classes))
            .reduce(|a, b| a.iter().zip(&b).map(|(x, y)| x + y).collect())
            .unwrap_or_default();
        let got = Vec::<f32>::try_from(&f.to_device(Device::Cpu).to_kind(Kind::Float))
            .map_err(|e| fail(round, "all-reduce of float32", e.into()))?;
        if let Some(d) = first_difference(&got, &want) {
            return Err(fail(round, "all-reduce of float32", d.into()));
        }

        let mine = Tensor::from_slice(&logits(rank, round, cfg.classes))
            .view([rows_of(rank, round), cfg.classes])
            .to_device(device);
        let start = Instant::now();
        let gathered = c
            .gather(rank, &mine)
            .map_err(|e| fail(round, "gather of logits", e.into()))?;
        times.gather.push(start.elapsed().as_secs_f64());
        match (rank, gathered) {
            (0, Some(all)) => {
                if all.device() != device {
                    return Err(fail(
                        round,
                        "gather of logits",
                        RoundError::LandedOn(all.device()),
                    ));
                }
                let want: Vec<f32> = (0..world)
                    .flat_map(|r| logits(r, round, cfg.classes))
                    .collect();
                let got = Vec::<f32>::try_from(&all.to_device(Device::Cpu).flatten(0, -1))
                    .map_err(|e| fail(round, "gather of logits", e.into()))?;
                if let Some(d) = first_difference(&got, &want) {
                    return Err(fail(round, "gather of logits", d.into()));
                }
            }
            (0, None) => {
                return Err(fail(
                    round,
                    "gather of logits",
                    RoundError::NothingOnRankZero,
                ));
            }
            (_, Some(_)) => {
                return Err(fail(round, "gather of logits", RoundError::NotOnRankZero));
            }
            (_, None) => {}
        }
    }
    Ok(times)
}

fn median_ms(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2] * 1e3
}

/// Runs every round on one thread per device (as executors do) and checks every result.
pub fn run(cfg: &CheckConfig) -> Result<CheckReport, CheckError> {
    if cfg.devices.is_empty() {
        return Err(CheckError::NoDevices);
    }
    let collective = Arc::new(Collective::with_backend(&cfg.devices, cfg.backend)?);
    let shared = Arc::new(cfg.clone());
    let handles: Vec<_> = (0..cfg.devices.len())
        .map(|rank| {
            let cfg = shared.clone();
            let c = collective.clone();
            std::thread::spawn(move || {
                let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    check_rank(&cfg, rank, &c)
                }))
                .unwrap_or_else(|p| {
                    Err(CheckError::Panicked {
                        rank,
                        panic: crate::executor::panic_text(p),
                    })
                });
                if let Err(e) = &out {
                    // The other ranks must not wait out the timeout for this one.
                    c.abort(&e.to_string());
                }
                out
            })
        })
        .collect();
    let mut results = Vec::new();
    for h in handles {
        results.push(h.join().map_err(|_| CheckError::ThreadDied)?);
    }
    // The first rank's own error says what went wrong; the others only say they were aborted.
    let first = results
        .iter()
        .position(|r| r.as_ref().is_err_and(|e| !e.is_abort()))
        .or_else(|| results.iter().position(Result::is_err));
    if let Some(Err(e)) = first.map(|i| results.swap_remove(i)) {
        return Err(e);
    }
    let rank0 = results.swap_remove(0)?;
    Ok(CheckReport {
        backend: collective.backend(),
        world: cfg.devices.len(),
        devices: cfg
            .devices
            .iter()
            .map(|&d| crate::metrics::device_label(d))
            .collect(),
        rounds: cfg.rounds,
        classes: cfg.classes,
        all_reduce_bytes: (2 + cfg.classes * cfg.classes) as usize * 8,
        all_reduce_median_ms: median_ms(rank0.all_reduce),
        gather_median_ms: median_ms(rank0.gather),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(world: usize) -> CheckConfig {
        CheckConfig {
            devices: vec![Device::Cpu; world],
            backend: Backend::Local,
            rounds: 4,
            classes: 10,
        }
    }

    #[test]
    fn every_result_checks_out_on_the_host_backend() {
        for world in [1, 3] {
            let r = run(&cfg(world)).unwrap();
            assert_eq!((r.backend, r.world, r.rounds), ("local", world, 4));
            assert_eq!(r.all_reduce_bytes, 102 * 8);
        }
    }

    #[test]
    fn expected_values_are_exact_in_float32() {
        // The float checks compare exactly; that is only sound while every value and sum is an
        // exactly representable float32, which this bounds for 8 ranks and 1000 classes.
        let max = (7 * 1000 + 8 + 12) as f32 * 0.5 * 8.0;
        assert!(max < (1u32 << 24) as f32);
        assert_eq!(rows_of(2, 4), 4);
    }

    #[test]
    fn a_wrong_result_names_round_rank_and_element() {
        assert_eq!(
            first_difference(&[1, 2, 3], &[1, 5, 3])
                .unwrap()
                .to_string(),
            "element 1 is 2, expected 5"
        );
        assert!(
            first_difference(&[1], &[1, 2])
                .unwrap()
                .to_string()
                .contains("1 elements")
        );
        assert!(first_difference(&[1.0f32], &[1.0]).is_none());
    }

    #[test]
    fn nccl_without_the_feature_or_a_gpu_is_an_error_not_a_fallback() {
        let e = Collective::with_backend(&[Device::Cpu], Backend::Nccl)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nccl") || e.contains("CUDA"), "{e}");
    }
}
