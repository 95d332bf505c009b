//! A worker's part in `tresnet-coordinator bench`: a job carrying a `BenchSpec` loads the model on
//! every device and warms up (the measuring code of `bench.rs`), reports ready, opens its timed window
//! when the coordinator says so (the same coordinator instant for every worker of the pool), and
//! reports each device's passes and latencies.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tresnet_common::protocol::pb;

use crate::agent::{AgentConfig, AgentError, Client, call_error};
use crate::bench::{BenchConfig, DeviceRun, Window, device_throughput, measure_devices};
use crate::device::Precision;
use crate::job_loop::JobError;
use crate::link::Link;
use crate::model::ModelName;

/// How long a device thread waits for the coordinator's window once warmed up. The coordinator bounds
/// its own barrier (its `--ready-timeout-secs`) and calls the bench off when it expires; this only
/// keeps a thread from waiting forever if the answer never arrives.
const WINDOW_WAIT_LIMIT: Duration = Duration::from_secs(3600);
/// How often the async side looks whether every device has warmed up; a small fraction of a model load.
const READY_POLL: Duration = Duration::from_millis(20);

/// What the coordinator decided about the window.
#[derive(Clone)]
enum Signal {
    /// Open at the first instant, close at the second.
    Go(Instant, Instant),
    Abort(String),
}

/// The window as the coordinator opens it: device threads wait here once warmed up; the job's task
/// counts them and, once all are ready, asks the coordinator for the window.
struct PoolWindow {
    state: Mutex<(usize, Option<Signal>)>,
    changed: Condvar,
}

impl PoolWindow {
    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, Option<Signal>)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ready(&self) -> usize {
        self.lock().0
    }

    fn signal(&self, s: Signal) {
        let mut st = self.lock();
        if st.1.is_none() {
            st.1 = Some(s);
        }
        self.changed.notify_all();
    }

    fn decided(&self) -> Option<Signal> {
        self.lock().1.clone()
    }
}

impl Window for PoolWindow {
    fn open(&self, _rank: usize) -> Result<Instant, String> {
        let mut st = self.lock();
        st.0 += 1;
        let limit = Instant::now() + WINDOW_WAIT_LIMIT;
        let signal = loop {
            if let Some(s) = &st.1 {
                break s.clone();
            }
            let left = limit.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "the coordinator opened no window within {}s",
                    WINDOW_WAIT_LIMIT.as_secs()
                ));
            }
            st = self
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        };
        drop(st);
        match signal {
            Signal::Go(start, stop) => {
                std::thread::sleep(start.saturating_duration_since(Instant::now()));
                Ok(stop)
            }
            Signal::Abort(why) => Err(why),
        }
    }

    fn abort(&self, error: &str) {
        self.signal(Signal::Abort(error.to_string()));
    }
}

/// Why this worker cannot run a bench job.
#[derive(Debug, thiserror::Error)]
pub enum BenchJobError {
    #[error("the job is no bench")]
    NotABench,
    #[error("the bench job has no model part")]
    NoModel,
    #[error("the bench job needs a resolution and a batch size (got {resolution} and {batch})")]
    Shape { resolution: u32, batch: u32 },
    #[error("unknown precision {0}")]
    Precision(i32),
    #[error("unknown memory format {0}")]
    MemoryFormat(i32),
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    #[error(transparent)]
    Model(#[from] crate::model::UnknownModel),
    /// Loading or warming up failed on a device (the reason another device's thread reported).
    #[error("model {model} with weights {weights}: {reason}")]
    Load {
        model: &'static str,
        weights: String,
        reason: String,
    },
}

/// The bench's settings from the job, as `tresnet-worker bench` would take them from flags.
fn bench_config(cfg: &AgentConfig, job: &pb::JobSpec) -> Result<BenchConfig, BenchJobError> {
    let spec = job.bench.as_ref().ok_or(BenchJobError::NotABench)?;
    let model = job.model.as_ref().ok_or(BenchJobError::NoModel)?;
    let resolution = job.preprocess.as_ref().map_or(0, |p| p.resolution);
    let batch = job.batching.as_ref().map_or(0, |b| b.batch_size);
    if resolution == 0 || batch == 0 {
        return Err(BenchJobError::Shape { resolution, batch });
    }
    let precision = match pb::Precision::try_from(model.precision) {
        Ok(pb::Precision::Fp32) => Precision::Fp32,
        Ok(pb::Precision::Fp16) => Precision::Fp16,
        Ok(pb::Precision::Bf16) => Precision::Bf16,
        _ => return Err(BenchJobError::Precision(model.precision)),
    };
    let memory_format = match pb::MemoryFormat::try_from(model.memory_format) {
        Ok(pb::MemoryFormat::Auto) => tresnet_common::job::MemoryFormat::Auto,
        Ok(pb::MemoryFormat::Contiguous) => tresnet_common::job::MemoryFormat::Contiguous,
        Ok(pb::MemoryFormat::ChannelsLast) => tresnet_common::job::MemoryFormat::ChannelsLast,
        Err(_) => return Err(BenchJobError::MemoryFormat(model.memory_format)),
    };
    for &d in &cfg.devices {
        precision.check_device(d)?;
    }
    Ok(BenchConfig {
        model: model.model.parse::<ModelName>()?,
        weights: model.weights.clone().into(),
        devices: cfg.devices.clone(),
        precisions: vec![precision],
        memory_format,
        fold_bn: (!model.measure_fold_bn).then_some(model.fold_bn),
        resolution: i64::from(resolution),
        batch_sizes: vec![i64::from(batch)],
        warmup: spec.warmup_passes as usize,
        duration: Duration::from_millis(u64::from(spec.duration_ms)),
        measure_layout: cfg.measure_layout,
        pass_delay: cfg.debug_batch_delay,
    })
}

/// Runs the bench job: loads and warms up every device, waits for the coordinator's window, times it
/// and reports. A model that cannot load refuses the job (the coordinator names this worker); a
/// failure inside the window is reported as this worker's bench error.
pub(crate) async fn run(
    cfg: &AgentConfig,
    client: &Client,
    link: &Link,
    job: pb::JobSpec,
) -> Result<(), JobError> {
    let url = &cfg.coordinator;
    let bench = bench_config(cfg, &job).map_err(|e| JobError::Refused(AgentError::Bench(e)))?;
    tracing::info!(job = %job.job_id, model = %job.model.as_ref().map_or("", |m| m.model.as_str()), "bench: loading the model and warming up");
    let window = Arc::new(PoolWindow {
        state: Mutex::new((0, None)),
        changed: Condvar::new(),
    });
    let devices = bench.devices.len();
    let measuring = {
        let bench = bench.clone();
        let window: Arc<dyn Window> = window.clone();
        tokio::task::spawn_blocking(move || measure_devices(&bench, window))
    };
    // Every device warmed up, or one failed (it aborted the window).
    loop {
        if window.ready() == devices || window.decided().is_some() || measuring.is_finished() {
            break;
        }
        tokio::time::sleep(READY_POLL).await;
    }
    if let Some(Signal::Abort(e)) = window.decided() {
        // Loading or warming up failed: this worker cannot run the bench.
        let _ = measuring.await;
        return Err(JobError::Refused(AgentError::Bench(BenchJobError::Load {
            model: bench.model.as_str(),
            weights: bench.weights.display().to_string(),
            reason: e,
        })));
    }
    tracing::info!(job = %job.job_id, "bench: every device is warmed up; waiting for the pool's window");
    let ready = pb::BenchReadyRequest {
        worker_id: cfg.worker_id.clone(),
        job_id: job.job_id.clone(),
    };
    let abandoned = loop {
        let asked = Instant::now();
        let answer = link
            .call("bench_ready", || {
                let mut client = client.clone();
                let req = ready.clone();
                async move { client.bench_ready(req).await }
            })
            .await;
        let r = match answer {
            Ok(r) => r.into_inner(),
            Err(e) => {
                window.abort("the coordinator could not be asked for the window");
                let _ = measuring.await;
                return Err(JobError::Agent(call_error(url, e)));
            }
        };
        if !r.abandoned.is_empty() {
            window.abort(&format!(
                "the coordinator called the bench off: {}",
                r.abandoned
            ));
            break Some(r.abandoned);
        }
        if r.go {
            // Offsets count from the answer; taking them from the request's start instead makes this
            // worker's window open early by the round trip at most, never late.
            let at = |ms: u32| asked + Duration::from_millis(u64::from(ms));
            window.signal(Signal::Go(at(r.start_in_ms), at(r.stop_in_ms)));
            break None;
        }
        tokio::time::sleep(Duration::from_millis(u64::from(r.retry_after_ms.max(10)))).await;
    };
    let measured = measuring
        .await
        .map_err(|e| JobError::Agent(AgentError::ExecutorTask(e)))?;
    if let Some(why) = abandoned {
        tracing::warn!(job = %job.job_id, reason = %why, "bench: the coordinator called the bench off");
        return Ok(());
    }
    let batch = bench.batch_sizes[0];
    let result = match measured {
        Ok(runs) => pb::BenchResultRequest {
            worker_id: cfg.worker_id.clone(),
            job_id: job.job_id.clone(),
            devices: runs
                .iter()
                .zip(&bench.devices)
                .map(|(run, &device)| device_result(run, device, batch))
                .collect(),
            error: String::new(),
        },
        Err(e) => pb::BenchResultRequest {
            worker_id: cfg.worker_id.clone(),
            job_id: job.job_id.clone(),
            devices: Vec::new(),
            error: e.to_string(),
        },
    };
    link.call("bench_result", || {
        let mut client = client.clone();
        let req = result.clone();
        async move { client.bench_result(req).await }
    })
    .await
    .map_err(|e| JobError::Agent(call_error(url, e)))?;
    tracing::info!(job = %job.job_id, "bench: results reported");
    Ok(())
}

fn device_result(run: &DeviceRun, device: tch::Device, batch: i64) -> pb::BenchDevice {
    let (times, seconds) = &run.cells[0][0];
    let t = device_throughput(device, batch, times, *seconds);
    let layout = &run.layouts[0].chosen;
    pb::BenchDevice {
        device: t.device,
        device_kind: match device {
            tch::Device::Cuda(_) => "cuda".into(),
            other => format!("{other:?}").to_lowercase(),
        },
        passes: t.passes,
        images: t.images,
        seconds: t.seconds,
        p50_ms: t.p50_ms,
        p90_ms: t.p90_ms,
        p99_ms: t.p99_ms,
        fold_bn: layout.fold_bn,
        channels_last: layout.channels_last,
    }
}
