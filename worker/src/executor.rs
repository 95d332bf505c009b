//! Device executors: one thread per device owns a model copy and turns uint8 batches into per-sample
//! results (or, in counts-only jobs, per-lease counts kept on the device). Batches arrive through one
//! shared queue, so a faster device simply takes more of them; counts-only jobs use one queue each.
//!
//! Executors outlive a job: each batch carries the job it belongs to (top-k, logits, normalisation),
//! and the loaded model is described by a [`ModelKey`]; the agent keeps the executors for the next job
//! of a sweep when its key is the same, and stops them (freeing the model) before loading another.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tch::{Device, Kind, Tensor};
use tresnet_common::job::JobSpec;
use tresnet_common::job::{ModelSpec, Precision, SaveLogits};
use tresnet_common::protocol::pb::{SampleResult, ShardCounts};

use crate::collective::{Collective, CollectiveError};
use crate::counts::DeviceCounts;
use crate::model::{ForwardError, ModelName, TResNet, UnknownModel};
use crate::scoring::{loss_and_confidence, non_finite_reason, top_k};
use crate::stages::{BatchTimes, StageClock};
use crate::tuning::{LayoutChoice, LayoutSpace, TuneError, TuneShape, load_fastest};

/// One batch of preprocessed images of one shard.
#[derive(Debug)]
pub struct Batch {
    /// The lease the batch belongs to: counts-only executors accumulate per lease.
    pub lease: u64,
    pub indices: Vec<u64>,
    pub labels: Vec<u32>,
    /// `n × 3 × side × side` bytes, CHW per image.
    pub pixels: Vec<u8>,
    pub side: i64,
    /// The job the batch belongs to: how to score it and what to send back.
    pub job: Arc<JobSpec>,
    /// The job's stage clock: the executor adds its host→device, forward, device→host and idle time.
    pub clock: Arc<StageClock>,
    pub reply: tokio::sync::oneshot::Sender<Result<Vec<SampleResult>, ExecutorError>>,
}

/// Why an executor could not answer a batch, gather or reduce; its shard is handed back and retried.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// libtorch reported a failure by panicking inside tch; the executor itself lives on.
    #[error("{device}: libtorch failed: {panic}")]
    Panicked { device: String, panic: String },
    #[error("label {label} outside the model's {classes} classes")]
    LabelOutOfRange { label: u32, classes: i64 },
    #[error(transparent)]
    Collective(#[from] CollectiveError),
    #[error(transparent)]
    Forward(#[from] ForwardError),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// Why the executors did not start: the first failure of any of them.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{queues} queues for {devices} devices")]
    Queues { queues: usize, devices: usize },
    #[error("{device:?}: {source}")]
    Engine {
        device: Device,
        #[source]
        source: EngineError,
    },
    #[error("{device:?}: {source}")]
    Barrier {
        device: Device,
        #[source]
        source: CollectiveError,
    },
    #[error("cannot start executor thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("an executor thread died while loading the model")]
    ThreadDied,
}

/// Why one executor could not load the job's model.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] UnknownModel),
    #[error("precision fp16 needs a CUDA device")]
    Fp16OnCpu,
    #[error(transparent)]
    Load(#[from] TuneError),
    #[error(
        "checkpoint {weights} has {found} classes but the job expects {expected} (its class count)"
    )]
    Classes {
        weights: String,
        found: i64,
        expected: u32,
    },
    /// Several candidate models at once may exhaust a GPU's memory: libtorch panics then.
    #[error("libtorch failed: {0}")]
    Panicked(String),
}

impl ExecutorError {
    fn panicked(device: Device, p: Box<dyn std::any::Any + Send>) -> Self {
        ExecutorError::Panicked {
            device: format!("{device:?}"),
            panic: panic_text(p),
        }
    }
}

/// Reply to a [`Work::Reduce`]: the lease's counts summed over every executor (rank 0), or `None`
/// (the other ranks).
pub type ReduceReply = tokio::sync::oneshot::Sender<Result<Option<ShardCounts>, ExecutorError>>;

/// Reply to a [`Work::Gather`]: every executor's results of the lease (rank 0), or `None`.
pub type GatherReply =
    tokio::sync::oneshot::Sender<Result<Option<Vec<SampleResult>>, ExecutorError>>;

/// A lease's batches kept on one device for a gather: logits and, per row, index and label.
#[derive(Debug, Default)]
struct Kept {
    logits: Vec<Tensor>,
    indices: Vec<i64>,
    labels: Vec<i64>,
}

/// What an executor's queue carries. Normal jobs share one queue of batches among the executors (a
/// faster device takes more); counts-only jobs give each executor its own queue, so that `Reduce` and
/// `Discard`, sent to every executor in the same order, meet in the collective in that order.
#[derive(Debug)]
pub enum Work {
    Batch(Batch),
    /// All-reduce the lease's counts across executors (its batches have all been answered).
    Reduce {
        job: String,
        lease: u64,
        /// The job's class count, for an executor that got no batch of the lease.
        classes: i64,
        reply: ReduceReply,
    },
    /// Gather the lease's logits (kept on each device) to the first executor, which scores them and
    /// replies with the per-sample results; the others reply `None`.
    Gather {
        job: Arc<JobSpec>,
        lease: u64,
        reply: GatherReply,
    },
    /// Forget the lease's counts or logits (the shard failed or was handed back).
    Discard {
        job: String,
        lease: u64,
    },
}

/// What an executor runs: the real network, or the benchmark's stand-in.
enum Engine {
    Model(Box<TResNet>),
    /// Deterministic pseudo-logits from the sample index; never usable for accuracy.
    Synthetic {
        classes: usize,
    },
}

#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    pub job: JobSpec,
    /// Test hook (`TRESNET_DEBUG_BATCH_DELAY_MS`, feature `test-hooks`): sleep this long per batch to
    /// simulate a slow node.
    pub debug_batch_delay: Duration,
    /// Measure the layouts the job leaves open; else take the fixed rule (`--measure-layout`).
    pub measure_layout: bool,
    /// Keep per-sample jobs' logits on the device until the lease's gather (`--gather-logits`).
    pub gather_logits: bool,
    pub metrics: crate::metrics::WorkerMetrics,
}

/// Everything that decides which network the executors hold; two jobs with equal keys run on the
/// same loaded model. Derived from the job's model part as a whole, so a new model parameter reloads
/// the model without anyone adding it here.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelKey {
    /// The job's model part.
    model: ModelSpec,
    /// Counts-only jobs give each executor its own queue (see [`Work`]), so a change restarts them.
    counts_only: bool,
}

impl ModelKey {
    pub fn of(cfg: &ExecutorConfig) -> Self {
        ModelKey {
            model: cfg.job.model.clone(),
            counts_only: cfg.job.outputs.counts_only,
        }
    }
}

/// Loads the job's model on `device` in the fastest layout the job leaves open (or nothing, in
/// synthetic mode), and says how the layout was chosen.
fn engine(
    cfg: &ExecutorConfig,
    device: Device,
) -> Result<(Engine, Option<LayoutChoice>), EngineError> {
    let job = &cfg.job;
    if job.model.synthetic {
        return Ok((
            Engine::Synthetic {
                classes: job.model.num_classes as usize,
            },
            None,
        ));
    }
    let name: ModelName = job.model.model.parse()?;
    let mut arch = name.config();
    if let Some(s) = job.model.leaky_slope {
        arch.stem_slope = s;
        arch.block_slope = s;
    }
    let kind = match job.model.precision {
        Precision::Fp32 => Kind::Float,
        Precision::Fp16 => Kind::Half,
        Precision::Bf16 => Kind::BFloat16,
    };
    if kind == Kind::Half && device == Device::Cpu {
        return Err(EngineError::Fp16OnCpu);
    }
    let space = if cfg.measure_layout {
        LayoutSpace::new(
            job.model.fold_bn,
            job.model.measure_fold_bn,
            job.model.memory_format,
        )
    } else {
        LayoutSpace::fixed_rule(job.model.fold_bn, job.model.memory_format, device)
    };
    let shape = TuneShape {
        device,
        kind,
        batch_size: i64::from(job.batching.batch_size),
        resolution: i64::from(job.preprocess.resolution),
    };
    let (loaded, choice) = load_fastest(
        name,
        &arch,
        std::path::Path::new(&job.model.weights),
        &space,
        shape,
        crate::tuning::LayoutCache::from_env().as_ref(),
    )?;
    if choice.from_cache {
        tracing::info!(
            device = %choice.device,
            fold_bn = choice.chosen.fold_bn,
            channels_last = choice.chosen.channels_last,
            "model layout from this node's layout cache (measured by an earlier job)"
        );
    } else if choice.measured {
        tracing::info!(
            device = %choice.device,
            fold_bn = choice.chosen.fold_bn,
            channels_last = choice.chosen.channels_last,
            seconds = choice.seconds,
            "measured the model layouts; keeping the fastest"
        );
    }
    if loaded.num_classes != i64::from(job.model.num_classes) {
        return Err(EngineError::Classes {
            weights: job.model.weights.clone(),
            found: loaded.num_classes,
            expected: job.model.num_classes,
        });
    }
    Ok((Engine::Model(Box::new(loaded.model)), Some(choice)))
}

/// Started executors: their threads, and how each device's model layout was chosen (rank order; empty
/// in synthetic mode).
pub struct Started {
    pub threads: Vec<std::thread::JoinHandle<()>>,
    pub layouts: Vec<LayoutChoice>,
}

/// Starts one executor thread per device; returns once every model is loaded and the executors have
/// met at a barrier (NCCL across GPUs when available), so they start work together; or the first error.
pub fn start(
    cfg: &ExecutorConfig,
    devices: &[Device],
    queues: &[Arc<Mutex<Receiver<Work>>>],
) -> Result<Started, StartError> {
    if queues.len() != devices.len() {
        return Err(StartError::Queues {
            queues: queues.len(),
            devices: devices.len(),
        });
    }
    let mut handles = Vec::new();
    type Ready = Result<(usize, Option<LayoutChoice>), StartError>;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Ready>();
    let collective = Arc::new(Collective::for_devices(devices));
    tracing::debug!(
        backend = collective.backend(),
        world = collective.world_size(),
        "node-local collective"
    );
    for (rank, &device) in devices.iter().enumerate() {
        let cfg = cfg.clone();
        let queue = queues[rank].clone();
        let ready = ready_tx.clone();
        let collective = collective.clone();
        let h = std::thread::Builder::new()
            .name(format!("executor-{device:?}"))
            .spawn(move || {
                // Several candidate models at once may exhaust a GPU's memory: libtorch panics then.
                let loaded =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine(&cfg, device)))
                        .unwrap_or_else(|p| Err(EngineError::Panicked(panic_text(p))));
                let (engine, layout) = match loaded {
                    Ok(e) => e,
                    Err(source) => {
                        let e = StartError::Engine { device, source };
                        collective.abort(&e.to_string());
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                if let Err(source) = collective.barrier(rank) {
                    let _ = ready.send(Err(StartError::Barrier { device, source }));
                    return;
                }
                let _ = ready.send(Ok((rank, layout)));
                let label = crate::metrics::device_label(device);
                // Keyed by job as well: lease ids restart with each job of a sweep, and a lease
                // aborted at a job's end leaves its counts behind.
                let mut counts: HashMap<(String, u64), DeviceCounts> = HashMap::new();
                let mut kept: HashMap<(String, u64), Kept> = HashMap::new();
                loop {
                    let waiting_since = std::time::Instant::now();
                    let next = queue.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let batch = match next {
                        Err(_) => return,
                        Ok(Work::Batch(b)) => {
                            // Idle from the job's start at the earliest: a wait that began in the
                            // previous job of a sweep is not this job's.
                            if let Some(d) = b.clock.device(rank) {
                                let from = waiting_since.max(b.clock.started());
                                d.idle(std::time::Instant::now().saturating_duration_since(from));
                            }
                            b
                        }
                        Ok(Work::Discard { job, lease }) => {
                            kept.remove(&(job.clone(), lease));
                            counts.remove(&(job, lease));
                            continue;
                        }
                        Ok(Work::Gather { job, lease, reply }) => {
                            // Leftovers of a finished job can never be gathered now.
                            kept.retain(|(j, _), _| *j == job.job_id.0);
                            let mine = kept
                                .remove(&(job.job_id.0.clone(), lease))
                                .unwrap_or_default();
                            let out =
                                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                    gather(&collective, rank, device, mine, &job)
                                }))
                                .unwrap_or_else(|p| Err(ExecutorError::panicked(device, p)));
                            if let Err(e) = &out {
                                // The other ranks must not wait out the timeout for this one.
                                collective.abort(&e.to_string());
                            }
                            let _ = reply.send(out);
                            continue;
                        }
                        Ok(Work::Reduce {
                            job,
                            lease,
                            classes,
                            reply,
                        }) => {
                            // Leftovers of a finished job can never be reduced now.
                            counts.retain(|(j, _), _| *j == job);
                            let mine = counts
                                .remove(&(job, lease))
                                .unwrap_or_else(|| DeviceCounts::zeros(classes, device));
                            let _ = reply.send(reduce(&collective, rank, mine));
                            continue;
                        }
                    };
                    // The simulated slowness counts as device time: it stands for a slow device.
                    let start = std::time::Instant::now();
                    let mut times = BatchTimes::default();
                    if !cfg.debug_batch_delay.is_zero() {
                        std::thread::sleep(cfg.debug_batch_delay);
                        times.forward += cfg.debug_batch_delay;
                    }
                    // libtorch reports some failures by panicking inside tch; one bad batch must fail
                    // its shard (which is then retried) rather than kill this device's executor.
                    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let acc = batch.job.outputs.counts_only.then(|| {
                            counts
                                .entry((batch.job.job_id.0.clone(), batch.lease))
                                .or_insert_with(|| {
                                    DeviceCounts::zeros(
                                        i64::from(batch.job.scored_classes()),
                                        device,
                                    )
                                })
                        });
                        if acc.is_none() && cfg.gather_logits {
                            let y = device_logits(&engine, &batch.job, device, &batch, &mut times)?;
                            let k = kept
                                .entry((batch.job.job_id.0.clone(), batch.lease))
                                .or_default();
                            k.logits.push(y.to_kind(Kind::Float));
                            k.indices.extend(batch.indices.iter().map(|&i| i as i64));
                            k.labels.extend(batch.labels.iter().map(|&l| i64::from(l)));
                            return Ok(Vec::new());
                        }
                        run_batch(&engine, &batch.job, device, &batch, acc, &mut times)
                    }))
                    .unwrap_or_else(|p| Err(ExecutorError::panicked(device, p)));
                    if out.is_ok() {
                        let took = start.elapsed();
                        cfg.metrics.batch_done(&label, batch.indices.len(), took);
                        if let Some(d) = batch.clock.device(rank) {
                            d.batch(batch.indices.len(), took, times);
                        }
                    }
                    let _ = batch.reply.send(out);
                }
            })
            .map_err(StartError::Thread)?;
        handles.push(h);
    }
    drop(ready_tx);
    let mut layouts = Vec::new();
    for _ in devices {
        layouts.push(ready_rx.recv().map_err(|_| StartError::ThreadDied)??);
    }
    layouts.sort_by_key(|(rank, _)| *rank);
    Ok(Started {
        threads: handles,
        layouts: layouts.into_iter().filter_map(|(_, l)| l).collect(),
    })
}

pub type WorkSender = SyncSender<Work>;

/// Rank 0 gets every rank's kept logits, indices and labels (gathered to its device), copies them to
/// the host once and scores them; the other ranks contribute theirs and get `None`.
fn gather(
    collective: &Collective,
    rank: usize,
    device: Device,
    mine: Kept,
    job: &JobSpec,
) -> Result<Option<Vec<SampleResult>>, ExecutorError> {
    let classes = i64::from(job.model.num_classes);
    let logits = if mine.logits.is_empty() {
        Tensor::zeros([0, classes], (Kind::Float, device))
    } else {
        Tensor::cat(&mine.logits, 0)
    };
    let indices = Tensor::from_slice(&mine.indices).to_device(device);
    let labels = Tensor::from_slice(&mine.labels).to_device(device);
    let all_logits = collective.gather(rank, &logits)?;
    let all_indices = collective.gather(rank, &indices)?;
    let all_labels = collective.gather(rank, &labels)?;
    let (Some(y), Some(i), Some(l)) = (all_logits, all_indices, all_labels) else {
        return Ok(None);
    };
    let y = y.to_device(Device::Cpu).contiguous();
    let flat = Vec::<f32>::try_from(y.flatten(0, -1))?;
    let indices = Vec::<i64>::try_from(i.to_device(Device::Cpu))?;
    let labels = Vec::<i64>::try_from(l.to_device(Device::Cpu))?;
    let indices: Vec<u64> = indices.iter().map(|&v| v as u64).collect();
    let labels: Vec<u32> = labels.iter().map(|&v| v as u32).collect();
    Ok(Some(score_rows(
        job,
        &flat,
        classes as usize,
        &indices,
        &labels,
    )))
}

/// Sums this executor's counts of a lease with every other executor's; rank 0 gets the message.
fn reduce(
    collective: &Collective,
    rank: usize,
    mut c: DeviceCounts,
) -> Result<Option<ShardCounts>, ExecutorError> {
    collective.all_reduce_sum(rank, &mut c.ints)?;
    collective.all_reduce_sum(rank, &mut c.floats)?;
    // Confusion cells travel as one code per sample: gathered, not summed (a dense C×C matrix was
    // most of a counts-only shard's cost).
    match collective.gather(rank, &c.confusion_codes())? {
        Some(all) => {
            c.set_confusion_codes(all);
            Ok(Some(c.to_pb()?))
        }
        None => Ok(None),
    }
}

/// The first line of a panic's message. Takes the payload box itself: a `&Box<dyn Any>` would coerce to
/// a `&dyn Any` whose concrete type is the box, and no message would ever be found in it.
pub(crate) fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    let p: &(dyn std::any::Any + Send) = &*payload;
    p.downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| p.downcast_ref::<&str>().copied())
        .map(|s| s.lines().next().unwrap_or_default().to_string())
        .unwrap_or_else(|| "panic".to_string())
}

/// A deterministic top-k record for sample `index` without materialising its logits: `k` distinct
/// pseudo-random classes with descending pseudo-logits. Benchmarks only; never accuracy.
fn synthetic_record(index: u64, classes: usize, k: usize) -> SampleResult {
    let mut s = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let k = k.min(classes);
    let mut topk_indices: Vec<u32> = Vec::with_capacity(k);
    while topk_indices.len() < k {
        let c = (next() % classes as u64) as u32;
        if !topk_indices.contains(&c) {
            topk_indices.push(c);
        }
    }
    let top = 8.0 + (next() >> 40) as f32 / (1u64 << 24) as f32;
    let topk_logits = (0..k).map(|j| top - j as f32 * 0.5).collect();
    let confidence = 0.2 + 0.6 * ((next() >> 11) as f64 / (1u64 << 53) as f64);
    SampleResult {
        index,
        topk_indices,
        topk_logits,
        loss: -confidence.ln(),
        confidence,
        logits: Vec::new(),
        error: String::new(),
    }
}

/// The batch's logits `[n, classes]` on `device`, in the model's kind (synthetic: deterministic
/// pseudo-logits from the sample indices).
fn device_logits(
    engine: &Engine,
    job: &JobSpec,
    device: Device,
    b: &Batch,
    times: &mut BatchTimes,
) -> Result<Tensor, ExecutorError> {
    let n = b.indices.len();
    match engine {
        Engine::Synthetic { classes } => {
            let mut v = Vec::with_capacity(n * classes);
            for &i in &b.indices {
                let mut s = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                for _ in 0..*classes {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    v.push((s >> 40) as f32 / (1u64 << 24) as f32 * 8.0);
                }
            }
            Ok(Tensor::from_slice(&v)
                .view([n as i64, *classes as i64])
                .to_device(device))
        }
        Engine::Model(model) => {
            let _guard = tch::no_grad_guard();
            let h2d_start = std::time::Instant::now();
            let side = b.side;
            let x = Tensor::from_slice(&b.pixels)
                .view([n as i64, 3, side, side])
                .to_device(device);
            // ToTensor's division, on the device in f32; then the model's own normalisation.
            let mut x = x.to_kind(Kind::Float) / 255.0;
            let p = &job.preprocess;
            if p.mean != [0.0; 3] || p.std != [1.0; 3] {
                let mean = Tensor::from_slice(&p.mean)
                    .view([1, 3, 1, 1])
                    .to_device(device);
                let std = Tensor::from_slice(&p.std)
                    .view([1, 3, 1, 1])
                    .to_device(device);
                x = (x - mean) / std;
            }
            // Synchronised so that each stage is charged its own kernels (CUDA runs them
            // asynchronously); the next step waits for them anyway.
            synchronize(device);
            times.host_to_device += h2d_start.elapsed();
            let forward_start = std::time::Instant::now();
            let y = model.forward(&x)?;
            synchronize(device);
            times.forward += forward_start.elapsed();
            Ok(y)
        }
    }
}

fn synchronize(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Per-sample results of a batch; or, with `counts` (counts-only jobs), the batch added to them on the
/// device and per-sample results only for its rows of non-finite logits. A result with an `error` from
/// an executor always means non-finite logits (the shard runner counts them as the model's).
fn run_batch(
    engine: &Engine,
    job: &JobSpec,
    device: Device,
    b: &Batch,
    counts: Option<&mut DeviceCounts>,
    times: &mut BatchTimes,
) -> Result<Vec<SampleResult>, ExecutorError> {
    if let Some(acc) = counts {
        if let Engine::Synthetic { classes } = engine {
            // The same O(k) records as the per-sample path: simulated workers must not be the
            // bottleneck of a coordinator benchmark, nor score differently from per-sample mode.
            if let Some(bad) = b.labels.iter().find(|&&l| l as usize >= *classes) {
                return Err(ExecutorError::LabelOutOfRange {
                    label: *bad,
                    classes: *classes as i64,
                });
            }
            let records: Vec<SampleResult> = b
                .indices
                .iter()
                .map(|&i| synthetic_record(i, *classes, job.outputs.top_k as usize))
                .collect();
            let k = tresnet_common::scoring::top5_k(job.outputs.top_k, *classes as u32);
            acc.add_records(
                records
                    .iter()
                    .zip(&b.labels)
                    .map(|(r, &l)| (l, r.topk_indices.as_slice(), r.loss, r.confidence)),
                k,
            );
            return Ok(Vec::new());
        }
        let y = device_logits(engine, job, device, b, times)?;
        // A class subset keeps only its columns, in its order, before anything is counted.
        let y = match &job.data.class_subset {
            Some(subset) => {
                let keep: Vec<i64> = subset.classes().iter().map(|&c| i64::from(c)).collect();
                y.index_select(1, &Tensor::from_slice(&keep).to_device(y.device()))
            }
            None => y,
        };
        let labels =
            Tensor::from_slice(&b.labels.iter().map(|&l| i64::from(l)).collect::<Vec<_>>())
                .to_device(y.device());
        let classes = y.size()[1];
        if let Some(bad) = b.labels.iter().find(|&&l| i64::from(l) >= classes) {
            return Err(ExecutorError::LabelOutOfRange {
                label: *bad,
                classes,
            });
        }
        let k = tresnet_common::scoring::top5_k(job.outputs.top_k, classes as u32) as i64;
        // Rows with NaN or infinite logits are bad samples, sent one by one; the counts cover the rest.
        let split = split_non_finite(&y, &labels, &b.indices)?;
        if let Some((y, labels)) = split.finite {
            acc.add_batch(&y, &labels, k);
        }
        return Ok(split.errors);
    }
    if let (Engine::Synthetic { classes }, SaveLogits::None) = (engine, job.outputs.save_logits) {
        // Capacity benchmarks measure the coordinator: O(k) work per sample keeps the simulated
        // workers from being the bottleneck on the same few cores.
        return Ok(b
            .indices
            .iter()
            .map(|&i| {
                let scored = (*classes).min(job.scored_classes() as usize);
                synthetic_record(i, scored, job.outputs.top_k as usize)
            })
            .collect());
    }
    let y = device_logits(engine, job, device, b, times)?;
    let y = y.to_kind(Kind::Float).to_device(Device::Cpu).contiguous();
    let classes = y.size()[1] as usize;
    let logits = Vec::<f32>::try_from(y.flatten(0, -1))?;
    Ok(score_rows(job, &logits, classes, &b.indices, &b.labels))
}

/// A counts-only batch split by its logits (see [`split_non_finite`]).
struct FiniteSplit {
    /// The finite rows and their labels; `None` when no row is finite.
    finite: Option<(Tensor, Tensor)>,
    /// An error result for each row that is not.
    errors: Vec<SampleResult>,
}

/// Splits a counts-only batch into its finite rows and error results for the others. Only a batch
/// with a non-finite row is copied to the host.
fn split_non_finite(
    y: &Tensor,
    labels: &Tensor,
    indices: &[u64],
) -> Result<FiniteSplit, ExecutorError> {
    let finite = y.isfinite().all_dim(1, false);
    if finite.all().int64_value(&[]) != 0 {
        return Ok(FiniteSplit {
            finite: Some((y.shallow_clone(), labels.shallow_clone())),
            errors: Vec::new(),
        });
    }
    let classes = y.size()[1] as usize;
    let host = y
        .to_kind(Kind::Float)
        .to_device(Device::Cpu)
        .contiguous()
        .flatten(0, -1);
    let host = Vec::<f32>::try_from(host)?;
    let errors = host
        .chunks(classes)
        .zip(indices)
        .filter_map(|(row, &index)| {
            non_finite_reason(row).map(|error| SampleResult {
                index,
                error,
                ..Default::default()
            })
        })
        .collect();
    let keep = finite.nonzero().squeeze_dim(1);
    let finite =
        (keep.size()[0] > 0).then(|| (y.index_select(0, &keep), labels.index_select(0, &keep)));
    Ok(FiniteSplit { finite, errors })
}

/// Per-sample results (top-k, loss, confidence, optional logits) of host logits `[n, classes]`. With a
/// class subset, top-k, loss and confidence see only the subset's logits (classes and labels are
/// subset positions); saved logits stay the model's full row, so they can be rescored.
fn score_rows(
    job: &JobSpec,
    logits: &[f32],
    classes: usize,
    indices: &[u64],
    labels: &[u32],
) -> Vec<SampleResult> {
    let mut out = Vec::with_capacity(indices.len());
    let subset = job.data.class_subset.as_ref().map(|s| s.classes());
    let mut kept = Vec::with_capacity(subset.map_or(0, <[u32]>::len));
    for (j, row) in logits.chunks(classes).enumerate() {
        if let Some(error) = non_finite_reason(row) {
            out.push(SampleResult {
                index: indices[j],
                error,
                ..Default::default()
            });
            continue;
        }
        let scored: &[f32] = match subset {
            Some(subset) => {
                kept.clear();
                kept.extend(subset.iter().map(|&c| row[c as usize]));
                &kept
            }
            None => row,
        };
        let (topk_indices, topk_logits) = top_k(scored, job.outputs.top_k as usize);
        let (loss, confidence) = loss_and_confidence(scored, labels[j]);
        let logits = match job.outputs.save_logits {
            SaveLogits::None => Vec::new(),
            SaveLogits::Fp32 => row.iter().flat_map(|v| v.to_le_bytes()).collect(),
            SaveLogits::Fp16 => row
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
        };
        out.push(SampleResult {
            index: indices[j],
            topk_indices,
            topk_logits,
            loss,
            confidence,
            logits,
            error: String::new(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{panic_text, score_rows, split_non_finite, synthetic_record};
    use tch::Tensor;

    /// Counts-only batches: the finite rows go on to the counts with their own labels; the others
    /// come back as bad samples.
    #[test]
    fn counts_only_batches_keep_finite_rows_and_report_the_rest() {
        let y = Tensor::from_slice(&[1.0f32, 2.0, f32::NAN, 0.0, 3.0, 4.0, 5.0, f32::INFINITY])
            .view([4, 2]);
        let labels = Tensor::from_slice(&[0i64, 1, 0, 1]);
        let split = split_non_finite(&y, &labels, &[10, 11, 12, 13]).unwrap();
        let (ky, kl) = split.finite.unwrap();
        assert_eq!(
            Vec::<f32>::try_from(ky.flatten(0, -1)).unwrap(),
            [1.0, 2.0, 3.0, 4.0]
        );
        assert_eq!(Vec::<i64>::try_from(kl).unwrap(), [0, 0]);
        let errs: Vec<(u64, &str)> = split
            .errors
            .iter()
            .map(|e| (e.index, e.error.as_str()))
            .collect();
        assert_eq!(
            errs,
            [
                (11, "logits are not finite (NaN in 1 of 2 classes)"),
                (13, "logits are not finite (inf in 1 of 2 classes)")
            ]
        );
        let all_bad = Tensor::from_slice(&[f32::NAN, 0.0]).view([1, 2]);
        let split = split_non_finite(&all_bad, &Tensor::from_slice(&[0i64]), &[3]).unwrap();
        assert!(split.finite.is_none());
        assert_eq!(split.errors.len(), 1);
        let fine = Tensor::from_slice(&[0.5f32, 0.0]).view([1, 2]);
        let split = split_non_finite(&fine, &Tensor::from_slice(&[1i64]), &[3]).unwrap();
        assert!(split.finite.is_some() && split.errors.is_empty());
    }

    /// NaN ranks above every number, so a NaN row would "predict" its NaN classes: it must be a bad
    /// sample with its reason, never a ranking.
    #[test]
    fn rows_of_non_finite_logits_are_bad_samples_not_rankings() {
        let job = tresnet_common::job::example_job();
        let logits = [f32::NAN, 1.0, 0.5, 2.0];
        let r = score_rows(&job, &logits, 2, &[7, 8], &[0, 1]);
        assert_eq!(r[0].index, 7);
        assert_eq!(r[0].error, "logits are not finite (NaN in 1 of 2 classes)");
        assert!(r[0].topk_indices.is_empty());
        assert_eq!((r[1].index, r[1].error.as_str()), (8, ""));
        assert_eq!(r[1].topk_indices, [1, 0]);
    }

    /// A libtorch failure must reach the shard's reason with its message, not as a bare "panic".
    #[test]
    fn panic_messages_are_read_from_the_payload() {
        let quiet = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let formatted =
            std::panic::catch_unwind(|| panic!("CUDA out of memory ({} MiB)\nmore", 512));
        let literal = std::panic::catch_unwind(|| panic!("static message"));
        let other = std::panic::catch_unwind(|| std::panic::panic_any(7u32));
        std::panic::set_hook(quiet);
        assert_eq!(
            panic_text(formatted.unwrap_err()),
            "CUDA out of memory (512 MiB)"
        );
        assert_eq!(panic_text(literal.unwrap_err()), "static message");
        assert_eq!(panic_text(other.unwrap_err()), "panic");
    }

    /// The subset is applied before top-k, loss and confidence: a row whose unmasked argmax lies
    /// outside the subset is scored on the subset's columns alone, in subset positions, while the saved
    /// logits keep the model's full row.
    #[test]
    fn a_class_subset_masks_before_top_k_loss_and_confidence() {
        use tresnet_common::dataset::ClassSubset;
        use tresnet_common::job::{SaveLogits, example_job};
        let mut job = example_job();
        job.model.num_classes = 4;
        job.outputs.top_k = 2;
        job.outputs.save_logits = SaveLogits::Fp32;
        job.data.class_subset = Some(ClassSubset::try_from(vec![3, 1]).unwrap());
        let row = [10.0f32, 1.0, 0.0, 2.0];
        let r = &super::score_rows(&job, &row, 4, &[7], &[0])[0];
        assert_eq!(
            r.topk_indices,
            [1, 0],
            "class 3 is position 1, class 1 position 0"
        );
        assert_eq!(r.topk_logits, [2.0, 1.0]);
        let lse = (1f64.exp() + 2f64.exp()).ln();
        assert!((r.loss - (lse - 1.0)).abs() < 1e-12, "{}", r.loss);
        assert!((r.confidence - (2.0 - lse).exp()).abs() < 1e-12);
        let saved: Vec<f32> = r
            .logits
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(saved, row);
    }

    #[test]
    fn synthetic_records_are_deterministic_distinct_and_descending() {
        for index in 0..500u64 {
            let r = synthetic_record(index, 10, 5);
            assert_eq!(r, synthetic_record(index, 10, 5));
            let mut seen = r.topk_indices.clone();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), 5, "{:?}", r.topk_indices);
            assert!(r.topk_indices.iter().all(|&c| c < 10));
            assert!(r.topk_logits.windows(2).all(|w| w[0] > w[1]));
            assert!(r.loss.is_finite() && (0.0..=1.0).contains(&r.confidence));
        }
        // k is capped by the class count.
        assert_eq!(synthetic_record(3, 2, 5).topk_indices.len(), 2);
    }
}
