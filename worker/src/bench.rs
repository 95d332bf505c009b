//! `tresnet-worker bench`: forward-pass throughput of a TResNet on one or more devices, the number a
//! node contributes to a multi-GPU throughput measurement, without data loading in the way.
//!
//! One thread per device loads the model, warms up (cuDNN picks its algorithms on the first passes),
//! then every device starts timing together at the node-local barrier and stops at the same deadline.
//! Each pass ends with a device synchronize so a pass is counted only once its kernels have finished.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tch::{Device, Tensor};

use crate::cli::{BenchArgs, MemoryFormat};
use crate::collective::Collective;
use crate::model::{BuildOptions, ModelName, load_model};

/// Validated settings of one `bench` invocation.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub model: ModelName,
    pub weights: PathBuf,
    pub devices: Vec<Device>,
    pub precision: crate::device::Precision,
    pub memory_format: MemoryFormat,
    pub fold_bn: bool,
    pub resolution: i64,
    pub batch_size: i64,
    pub warmup: usize,
    pub duration: Duration,
}

impl BenchConfig {
    pub fn from_args(a: &BenchArgs) -> Result<Self, String> {
        let devices = a
            .devices
            .iter()
            .map(|d| d.resolve())
            .collect::<Result<Vec<_>, _>>()?;
        let mut seen = std::collections::HashSet::new();
        for d in &devices {
            a.precision.check_device(*d)?;
            if *d != Device::Cpu && !seen.insert(*d) {
                return Err(format!("--devices names {d:?} twice"));
            }
        }
        if !a.resolution.is_multiple_of(32) {
            return Err(format!(
                "--resolution {} is not a multiple of 32 (TResNet's total stride)",
                a.resolution
            ));
        }
        if !(a.seconds.is_finite() && a.seconds > 0.0 && a.seconds <= 86_400.0) {
            return Err(format!(
                "--seconds {} must be a positive number of seconds (at most a day)",
                a.seconds
            ));
        }
        if let Some(t) = a.threads {
            tch::set_num_threads(t as i32);
        }
        Ok(BenchConfig {
            model: a.model,
            weights: a.weights.clone(),
            devices,
            precision: a.precision,
            memory_format: a.memory_format,
            fold_bn: !a.no_fold_bn,
            resolution: i64::from(a.resolution),
            batch_size: i64::from(a.batch_size),
            warmup: a.warmup as usize,
            duration: Duration::from_secs_f64(a.seconds),
        })
    }
}

/// One device's measurement.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceThroughput {
    pub device: String,
    pub passes: u64,
    pub images: u64,
    pub seconds: f64,
    pub images_per_second: f64,
    /// Median wall time of one synchronized forward pass.
    pub median_pass_ms: f64,
}

/// The whole measurement, printed as JSON.
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
    /// Sum over devices of images, over the longest device's timed window.
    pub images_per_second: f64,
    pub cudnn: bool,
}

fn options(cfg: &BenchConfig, device: Device) -> BuildOptions {
    BuildOptions {
        device,
        kind: cfg.precision.kind(),
        fold_bn: cfg.fold_bn,
        channels_last: match cfg.memory_format {
            MemoryFormat::Auto => device != Device::Cpu,
            MemoryFormat::Contiguous => false,
            MemoryFormat::ChannelsLast => true,
        },
    }
}

fn synchronize(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Loads, warms up and times one device; `collective` lines the devices up before timing.
fn measure(
    cfg: &BenchConfig,
    rank: usize,
    collective: &Collective,
) -> Result<DeviceThroughput, String> {
    let device = cfg.devices[rank];
    let opts = options(cfg, device);
    let loaded = match load_model(cfg.model, &cfg.model.config(), &cfg.weights, &opts) {
        Ok(l) => l,
        Err(e) => {
            let e = format!("{device:?}: {e}");
            collective.abort(&e);
            return Err(e);
        }
    };
    let r = cfg.resolution;
    // Pixels in [0, 1] like real inputs, so activations (and any data-dependent kernel) look real.
    let x = opts.place(Tensor::rand(
        [cfg.batch_size, 3, r, r],
        (tch::Kind::Float, Device::Cpu),
    ));
    let pass = || -> Result<(), String> {
        let y = loaded
            .model
            .forward(&x)
            .map_err(|e| format!("{device:?}: {e}"))?;
        synchronize(device);
        drop(y);
        Ok(())
    };
    for _ in 0..cfg.warmup {
        if let Err(e) = pass() {
            collective.abort(&e);
            return Err(e);
        }
    }
    collective
        .barrier(rank)
        .map_err(|e| format!("{device:?}: {e}"))?;
    let start = Instant::now();
    let deadline = start + cfg.duration;
    let mut times = Vec::new();
    // At least one pass, however short the window: a report of zero passes would say nothing.
    while times.is_empty() || Instant::now() < deadline {
        let t = Instant::now();
        pass()?;
        times.push(t.elapsed().as_secs_f64());
    }
    let seconds = start.elapsed().as_secs_f64();
    times.sort_by(f64::total_cmp);
    let passes = times.len() as u64;
    let images = passes * cfg.batch_size as u64;
    Ok(DeviceThroughput {
        device: crate::metrics::device_label(device),
        passes,
        images,
        seconds,
        images_per_second: images as f64 / seconds,
        median_pass_ms: times[times.len() / 2] * 1e3,
    })
}

/// Runs the measurement on every device at once.
pub fn run(cfg: &BenchConfig) -> Result<BenchReport, String> {
    let collective = Arc::new(Collective::for_devices(&cfg.devices));
    let cfg = Arc::new(cfg.clone());
    let handles: Vec<_> = (0..cfg.devices.len())
        .map(|rank| {
            let cfg = cfg.clone();
            let collective = collective.clone();
            std::thread::Builder::new()
                .name(format!("bench-{rank}"))
                .spawn(move || {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        measure(&cfg, rank, &collective)
                    }))
                    .unwrap_or_else(|p| {
                        let e = format!(
                            "{:?}: libtorch failed: {}",
                            cfg.devices[rank],
                            crate::executor::panic_text(p)
                        );
                        collective.abort(&e);
                        Err(e)
                    })
                })
                .map_err(|e| format!("cannot start a bench thread: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let mut devices = Vec::new();
    let mut first_error = None;
    for h in handles {
        match h.join().map_err(|_| "a bench thread died".to_string())? {
            Ok(d) => devices.push(d),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let window = devices.iter().map(|d| d.seconds).fold(0.0, f64::max);
    let images: u64 = devices.iter().map(|d| d.images).sum();
    let first = options(&cfg, cfg.devices[0]);
    Ok(BenchReport {
        model: cfg.model.as_str(),
        resolution: cfg.resolution,
        batch_size: cfg.batch_size,
        precision: format!("{:?}", cfg.precision).to_lowercase(),
        channels_last: first.channels_last,
        fold_bn: cfg.fold_bn,
        collective: collective.backend(),
        images_per_second: images as f64 / window,
        devices,
        cudnn: tch::Cuda::cudnn_is_available(),
    })
}
