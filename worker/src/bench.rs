//! `tresnet-worker bench`: forward-pass throughput of a TResNet on one or more devices, the number a
//! node contributes to a multi-GPU throughput measurement, without data loading in the way. One call
//! sweeps batch sizes and precisions; each cell reports img/s and p50/p90/p99 pass latency.
//!
//! One thread per device loads the model once per precision (in the fastest layout the flags leave
//! open, measured as a worker does: `tuning.rs`), warms up (cuDNN picks its algorithms on the first
//! passes), then for every batch size all devices start timing together at the node-local barrier and
//! stop at the same deadline. Each pass ends with a device synchronize so a pass is counted only once
//! its kernels have finished.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tch::{Device, Tensor};

use crate::cli::{BenchArgs, MemoryFormat};
use crate::collective::{Collective, CollectiveError};
use crate::device::{DeviceError, Precision};
use crate::model::{BuildOptions, ForwardError, LoadedModel, ModelName};
use crate::tuning::{LayoutChoice, LayoutSpace, TuneError, TuneShape, load_fastest};

/// Why a measurement could not be set up or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("--devices names {0:?} twice")]
    DuplicateDevice(Device),
    #[error("--resolution {0} is not a multiple of 32 (TResNet's total stride)")]
    Resolution(u32),
    #[error("--seconds {0} must be a positive number of seconds (at most a day)")]
    Seconds(f64),
    #[error("--batch-sizes and --precisions need at least one value each")]
    NothingToMeasure,
    #[error("{device:?}: {source}")]
    Load {
        device: Device,
        #[source]
        source: TuneError,
    },
    #[error("{device:?}: {source}")]
    Forward {
        device: Device,
        #[source]
        source: ForwardError,
    },
    #[error("{device:?}: {source}")]
    Collective {
        device: Device,
        #[source]
        source: CollectiveError,
    },
    /// A pool bench's window (the coordinator's signal) did not open.
    #[error("{device:?}: {reason}")]
    Window { device: Device, reason: String },
    #[error("{device:?}: libtorch failed: {panic}")]
    Panicked { device: Device, panic: String },
    #[error("cannot start a bench thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("a bench thread died")]
    ThreadDied,
}

/// Validated settings of one `bench` invocation.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub model: ModelName,
    pub weights: PathBuf,
    pub devices: Vec<Device>,
    pub precisions: Vec<Precision>,
    pub memory_format: MemoryFormat,
    /// Forced BN folding; `None`: measured at load like a worker's `auto`.
    pub fold_bn: Option<bool>,
    pub resolution: i64,
    pub batch_sizes: Vec<i64>,
    pub warmup: usize,
    pub duration: Duration,
    /// Time the layouts the flags leave open at load; else the worker's fixed rule
    /// (`LayoutSpace::fixed_rule`, what a worker does under `--measure-layout false`).
    pub measure_layout: bool,
    /// Test hook (`--debug-batch-delay-ms` of a pool bench's worker): sleep this long inside every
    /// pass, so a slowed worker is slow here as it is in a job.
    pub pass_delay: Duration,
}

impl BenchConfig {
    pub fn from_args(a: &BenchArgs) -> Result<Self, BenchError> {
        let devices = a
            .devices
            .iter()
            .map(|d| d.resolve())
            .collect::<Result<Vec<_>, _>>()?;
        let mut seen = std::collections::HashSet::new();
        for d in &devices {
            for p in &a.precisions {
                p.check_device(*d)?;
            }
            if *d != Device::Cpu && !seen.insert(*d) {
                return Err(BenchError::DuplicateDevice(*d));
            }
        }
        if !a.resolution.is_multiple_of(32) {
            return Err(BenchError::Resolution(a.resolution));
        }
        if !(a.seconds.is_finite() && a.seconds > 0.0 && a.seconds <= 86_400.0) {
            return Err(BenchError::Seconds(a.seconds));
        }
        if a.batch_sizes.is_empty() || a.precisions.is_empty() {
            return Err(BenchError::NothingToMeasure);
        }
        if let Some(t) = a.threads {
            tch::set_num_threads(t as i32);
        }
        let mut precisions = a.precisions.clone();
        precisions.dedup();
        Ok(BenchConfig {
            model: a.model,
            weights: a.weights.clone(),
            devices,
            precisions,
            memory_format: a.memory_format,
            fold_bn: match (a.fold_bn, a.no_fold_bn) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
            resolution: i64::from(a.resolution),
            batch_sizes: a.batch_sizes.iter().map(|&b| i64::from(b)).collect(),
            warmup: a.warmup as usize,
            duration: Duration::from_secs_f64(a.seconds),
            measure_layout: true,
            pass_delay: Duration::ZERO,
        })
    }
}

/// One device's measurement of one cell.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceThroughput {
    pub device: String,
    pub passes: u64,
    pub images: u64,
    pub seconds: f64,
    pub images_per_second: f64,
    /// Median wall time of one synchronized forward pass (the same as `p50_ms`).
    pub median_pass_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
}

/// One (precision, batch size) of the sweep, all devices.
#[derive(Debug, Clone, Serialize)]
pub struct BenchCell {
    pub precision: String,
    pub batch_size: i64,
    /// The first device's layout (the others measured their own; see `layouts`).
    pub fold_bn: bool,
    pub channels_last: bool,
    /// Sum over devices of images, over the longest device's timed window.
    pub images_per_second: f64,
    /// Pass latency over every device's passes.
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub devices: Vec<DeviceThroughput>,
}

/// The whole measurement, printed as JSON. The top-level `batch_size` … `images_per_second` repeat
/// the first cell, as the report had them before the sweep existed.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub model: &'static str,
    pub resolution: i64,
    pub batch_size: i64,
    pub precision: String,
    pub channels_last: bool,
    pub fold_bn: bool,
    pub collective: &'static str,
    pub devices: Vec<DeviceThroughput>,
    pub images_per_second: f64,
    pub cudnn: bool,
    pub cells: Vec<BenchCell>,
    /// How each device's layout was chosen, per precision (in sweep order).
    pub layouts: Vec<PrecisionLayout>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PrecisionLayout {
    pub precision: String,
    #[serde(flatten)]
    pub choice: LayoutChoice,
}

fn precision_name(p: Precision) -> String {
    format!("{p:?}").to_lowercase()
}

/// The `p`-quantile (0..1) of sorted `v`, nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn synchronize(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// What one device thread measured: per precision its layout choice and, per batch size, its timings
/// (pass seconds, unsorted) and window.
pub(crate) struct DeviceRun {
    pub layouts: Vec<LayoutChoice>,
    /// (precision index, batch index) -> (pass seconds, window seconds)
    pub cells: Vec<Vec<(Vec<f64>, f64)>>,
}

/// When the devices' timed windows open and close: a node-local barrier for `tresnet-worker bench`,
/// the coordinator's signal for a pool bench (`pool_bench.rs`).
pub(crate) trait Window: Send + Sync {
    /// Called by device `rank` once warmed up for a cell; blocks until the window opens and returns
    /// when it closes.
    fn open(&self, rank: usize) -> Result<Instant, String>;
    /// Device `rank` failed: no window opens for the others.
    fn abort(&self, error: &str);
}

/// `tresnet-worker bench`'s window: the devices meet at the collective's barrier and time for the
/// configured duration from there.
struct NodeWindow {
    collective: Arc<Collective>,
    duration: Duration,
}

impl Window for NodeWindow {
    fn open(&self, rank: usize) -> Result<Instant, String> {
        self.collective.barrier(rank).map_err(|e| e.to_string())?;
        Ok(Instant::now() + self.duration)
    }

    fn abort(&self, error: &str) {
        self.collective.abort(error);
    }
}

fn load(
    cfg: &BenchConfig,
    device: Device,
    p: Precision,
) -> Result<(LoadedModel, LayoutChoice), BenchError> {
    let fold_bn = cfg.fold_bn.unwrap_or(p == Precision::Fp32);
    let space = if cfg.measure_layout {
        LayoutSpace::new(fold_bn, cfg.fold_bn.is_none(), cfg.memory_format)
    } else {
        LayoutSpace::fixed_rule(fold_bn, cfg.memory_format, device)
    };
    let shape = TuneShape {
        device,
        kind: p.kind(),
        batch_size: cfg.batch_sizes[0],
        resolution: cfg.resolution,
    };
    // A bench always measures afresh: its point is what this device does now.
    load_fastest(
        cfg.model,
        &cfg.model.config(),
        &cfg.weights,
        &space,
        shape,
        None,
    )
    .map_err(|source| BenchError::Load { device, source })
}

/// Loads, warms up and times one device over the sweep; `window` lines the devices up before each
/// timed window and closes it.
fn measure(cfg: &BenchConfig, rank: usize, window: &dyn Window) -> Result<DeviceRun, BenchError> {
    let device = cfg.devices[rank];
    let fail = |e: BenchError| {
        window.abort(&e.to_string());
        e
    };
    let mut run = DeviceRun {
        layouts: Vec::new(),
        cells: Vec::new(),
    };
    for &p in &cfg.precisions {
        let (loaded, choice) = load(cfg, device, p).map_err(fail)?;
        let opts = BuildOptions {
            device,
            kind: p.kind(),
            fold_bn: choice.chosen.fold_bn,
            channels_last: false,
        };
        run.layouts.push(choice);
        let mut per_batch = Vec::new();
        for &b in &cfg.batch_sizes {
            let r = cfg.resolution;
            // Pixels in [0, 1] like real inputs, contiguous as the pipeline hands them over.
            let x = opts.place(Tensor::rand([b, 3, r, r], (tch::Kind::Float, Device::Cpu)));
            let pass = || -> Result<(), BenchError> {
                let y = loaded
                    .model
                    .forward(&x)
                    .map_err(|source| BenchError::Forward { device, source })?;
                synchronize(device);
                drop(y);
                if !cfg.pass_delay.is_zero() {
                    std::thread::sleep(cfg.pass_delay);
                }
                Ok(())
            };
            for _ in 0..cfg.warmup {
                pass().map_err(fail)?;
            }
            let deadline = window
                .open(rank)
                .map_err(|reason| BenchError::Window { device, reason })?;
            let start = Instant::now();
            let mut times = Vec::new();
            // At least one pass, however short the window: a report of zero passes would say nothing.
            while times.is_empty() || Instant::now() < deadline {
                let t = Instant::now();
                pass()?;
                times.push(t.elapsed().as_secs_f64());
            }
            per_batch.push((times, start.elapsed().as_secs_f64()));
        }
        run.cells.push(per_batch);
    }
    Ok(run)
}

pub(crate) fn device_throughput(
    device: Device,
    batch: i64,
    times: &[f64],
    seconds: f64,
) -> DeviceThroughput {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    let passes = sorted.len() as u64;
    let images = passes * batch as u64;
    let ms = |p: f64| percentile(&sorted, p) * 1e3;
    DeviceThroughput {
        device: crate::metrics::device_label(device),
        passes,
        images,
        seconds,
        images_per_second: images as f64 / seconds,
        median_pass_ms: ms(0.5),
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
    }
}

/// Runs the measurement on every device at once (one thread each), each cell's timed window opened
/// and closed by `window`; the devices' runs in rank order, or the first error.
pub(crate) fn measure_devices(
    cfg: &BenchConfig,
    window: Arc<dyn Window>,
) -> Result<Vec<DeviceRun>, BenchError> {
    let cfg = Arc::new(cfg.clone());
    let handles: Vec<_> = (0..cfg.devices.len())
        .map(|rank| {
            let cfg = cfg.clone();
            let window = window.clone();
            std::thread::Builder::new()
                .name(format!("bench-{rank}"))
                .spawn(move || {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        measure(&cfg, rank, window.as_ref())
                    }))
                    .unwrap_or_else(|p| {
                        let e = BenchError::Panicked {
                            device: cfg.devices[rank],
                            panic: crate::executor::panic_text(p),
                        };
                        window.abort(&e.to_string());
                        Err(e)
                    })
                })
                .map_err(BenchError::Thread)
        })
        .collect::<Result<_, _>>()?;
    let mut runs = Vec::new();
    let mut first_error = None;
    for h in handles {
        match h.join().map_err(|_| BenchError::ThreadDied)? {
            Ok(d) => runs.push(d),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(runs),
    }
}

/// Runs the measurement on every device at once.
pub fn run(cfg: &BenchConfig) -> Result<BenchReport, BenchError> {
    let collective = Arc::new(Collective::for_devices(&cfg.devices));
    let window = Arc::new(NodeWindow {
        collective: collective.clone(),
        duration: cfg.duration,
    });
    let runs = measure_devices(cfg, window)?;
    let mut cells = Vec::new();
    let mut layouts = Vec::new();
    for (pi, &p) in cfg.precisions.iter().enumerate() {
        for run in &runs {
            layouts.push(PrecisionLayout {
                precision: precision_name(p),
                choice: run.layouts[pi].clone(),
            });
        }
        for (bi, &b) in cfg.batch_sizes.iter().enumerate() {
            let devices: Vec<DeviceThroughput> = runs
                .iter()
                .enumerate()
                .map(|(rank, run)| {
                    let (times, secs) = &run.cells[pi][bi];
                    device_throughput(cfg.devices[rank], b, times, *secs)
                })
                .collect();
            let mut all: Vec<f64> = runs
                .iter()
                .flat_map(|run| run.cells[pi][bi].0.iter().copied())
                .collect();
            all.sort_by(f64::total_cmp);
            let window = devices.iter().map(|d| d.seconds).fold(0.0, f64::max);
            let images: u64 = devices.iter().map(|d| d.images).sum();
            let first = &runs[0].layouts[pi].chosen;
            cells.push(BenchCell {
                precision: precision_name(p),
                batch_size: b,
                fold_bn: first.fold_bn,
                channels_last: first.channels_last,
                images_per_second: images as f64 / window,
                p50_ms: percentile(&all, 0.5) * 1e3,
                p90_ms: percentile(&all, 0.9) * 1e3,
                p99_ms: percentile(&all, 0.99) * 1e3,
                devices,
            });
        }
    }
    let first = cells[0].clone();
    Ok(BenchReport {
        model: cfg.model.as_str(),
        resolution: cfg.resolution,
        batch_size: first.batch_size,
        precision: first.precision,
        channels_last: first.channels_last,
        fold_bn: first.fold_bn,
        collective: collective.backend(),
        images_per_second: first.images_per_second,
        devices: first.devices,
        cudnn: tch::Cuda::cudnn_is_available(),
        cells,
        layouts,
    })
}

impl BenchReport {
    /// The sweep as a fixed-width table, one row per cell.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{} @{} ({} device{})\n{:>9} {:>6} {:>8} {:>13} {:>10} {:>10} {:>10} {:>10}\n",
            self.model,
            self.resolution,
            self.devices.len(),
            if self.devices.len() == 1 { "" } else { "s" },
            "precision",
            "batch",
            "layout",
            "img/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "passes",
        );
        for c in &self.cells {
            let layout = format!(
                "{}{}",
                if c.fold_bn { "F" } else { "B" },
                if c.channels_last { "/NHWC" } else { "/NCHW" }
            );
            let passes: u64 = c.devices.iter().map(|d| d.passes).sum();
            let _ = writeln!(
                out,
                "{:>9} {:>6} {:>8} {:>13.1} {:>10.2} {:>10.2} {:>10.2} {:>10}",
                c.precision,
                c.batch_size,
                layout,
                c.images_per_second,
                c.p50_ms,
                c.p90_ms,
                c.p99_ms,
                passes
            );
        }
        out.push_str("layout: F = BatchNorm folded, B = kept; NHWC = channels-last\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.9), 90.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
