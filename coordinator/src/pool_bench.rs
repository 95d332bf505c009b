//! `tresnet-coordinator bench`: forward-pass throughput of a whole worker pool. The bench is a job
//! handed out like an evaluation (`Register`/`NextJob`, so remote workers attach as for `run`); each
//! worker loads the model on its devices, warms up and reports ready (`BenchReady`); once every expected
//! worker is ready the coordinator opens one timed window for all, every device times forward passes on
//! synthetic batches until its close and reports (`BenchResult`). The tables flag devices more than
//! [`SLOW_BELOW_MEDIAN`] below the median of their kind: one sick GPU is the commonest slow sweep.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::process::Child;
use tonic::{Request, Response, Status, Streaming};
use tresnet_common::ids::WorkerId;
use tresnet_common::protocol::pb::{self, coordinator_server::Coordinator};
use tresnet_common::protocol::tls::ServerTls;
use tresnet_common::storage::StoreArgs;

use crate::atomic_file::write_atomic;
use crate::job_args::ModelArgs;
use crate::run::{LocalWorkers, serve_service, sha256_file, spawn_local_workers};

/// A device is slow when its img/s is more than this fraction below the median of its kind: a sick GPU
/// (throttled, degraded link) loses far more, while healthy devices of one kind measure within a few
/// percent of each other over a window of seconds.
pub const SLOW_BELOW_MEDIAN: f64 = 0.10;
/// Default `--ready-timeout-secs`: workers attach, load a checkpoint and (on GPUs) time layouts and warm
/// up; a few minutes covers that on a loaded node, and a worker that needs longer is named.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(600);
/// Between the last worker's ready and the window's opening: every worker polls `BenchReady` every
/// [`READY_RETRY`], so all of them hear of the window before it opens.
const START_LEAD: Duration = Duration::from_millis(1000);
/// How often a ready worker asks whether the window is set (a small RPC; keeps [`START_LEAD`] short).
const READY_RETRY: Duration = Duration::from_millis(50);
/// After the window closes, how long workers have to report: the pass in flight at the close finishes
/// first (seconds for a large batch on a CPU), then one RPC.
const RESULT_GRACE: Duration = Duration::from_secs(120);
/// How often the coordinator checks the board and its local workers.
const TICK: Duration = Duration::from_millis(50);
/// Time workers get to hear "finished" (they ask `NextJob` every few hundred ms) and exit.
const WORKER_EXIT_GRACE: Duration = Duration::from_secs(10);
/// Idle workers' `NextJob` polls while the bench runs.
const NEXT_JOB_RETRY: Duration = Duration::from_millis(200);
/// The wire id of the bench job.
const BENCH_JOB_ID: &str = "bench#1";

/// Settings of one `bench`, validated from the command line.
#[derive(Debug, Clone)]
pub struct PoolBenchConfig {
    pub model: ModelArgs,
    /// Absolute; the workers read the checkpoint at this path.
    pub weights: PathBuf,
    pub resolution: u32,
    pub batch_size: u32,
    pub duration: Duration,
    pub warmup: u32,
    pub out: PathBuf,
    pub local_workers: u32,
    /// Local plus remote workers the window waits for.
    pub expected_workers: u32,
    pub listen: Option<SocketAddr>,
    pub worker_devices: String,
    pub worker_threads: Option<u32>,
    pub worker_extra_args: Vec<String>,
    pub ready_timeout: Duration,
    pub fail_on_slow: bool,
    pub token: Option<String>,
    pub tls: Option<ServerTls>,
    pub tls_worker_ca: Option<PathBuf>,
}

/// One worker as the bench sees it.
#[derive(Debug, Default)]
struct Entry {
    hostname: String,
    /// Every device loaded and warmed up.
    ready: bool,
    /// Ready when the window was set: it times the window (a later one is turned away).
    in_window: bool,
    result: Option<Vec<pb::BenchDevice>>,
    /// It could not run the bench (refused the job, or failed in the window).
    error: Option<String>,
}

/// What the service shares with the driver.
#[derive(Debug)]
struct Board {
    job: pb::JobSpec,
    workers: BTreeMap<String, Entry>,
    /// Coordinator instants the window opens and closes.
    window: Option<(Instant, Instant)>,
    /// The bench is over (measured or called off, why): `NextJob` answers "finished".
    over: Option<String>,
    told_finished: BTreeSet<String>,
}

/// The coordinator protocol as `bench` serves it.
#[derive(Debug, Clone)]
struct BenchService {
    board: Arc<Mutex<Board>>,
}

fn lock(board: &Mutex<Board>) -> MutexGuard<'_, Board> {
    board.lock().unwrap_or_else(|p| p.into_inner())
}

impl BenchService {
    fn lock(&self) -> MutexGuard<'_, Board> {
        lock(&self.board)
    }
}

fn not_registered(worker: &str) -> Status {
    Status::failed_precondition(format!("worker {worker} is not registered"))
}

fn millis(d: Duration) -> u32 {
    d.as_millis().min(u128::from(u32::MAX)) as u32
}

#[tonic::async_trait]
impl Coordinator for BenchService {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let r = req.into_inner();
        crate::service::check_protocol(r.protocol_version)?;
        crate::service::worker_id(&r.worker_id)?;
        let mut b = self.lock();
        tracing::info!(worker = %r.worker_id, host = %r.hostname, devices = ?r.devices, "worker registered for the bench");
        b.workers.entry(r.worker_id).or_default().hostname = r.hostname;
        Ok(Response::new(pb::RegisterResponse {
            job: b.over.is_none().then(|| b.job.clone()),
            heartbeat_interval_ms: 1000,
            lease_timeout_ms: 30_000,
        }))
    }

    async fn lease(
        &self,
        _req: Request<pb::LeaseRequest>,
    ) -> Result<Response<pb::LeaseResponse>, Status> {
        Ok(Response::new(pb::LeaseResponse {
            job_done: true,
            ..Default::default()
        }))
    }

    async fn heartbeat(
        &self,
        _req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        Ok(Response::new(pb::HeartbeatResponse::default()))
    }

    async fn submit(
        &self,
        _req: Request<Streaming<pb::SubmitRequest>>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        Err(Status::failed_precondition(
            "a bench has no shards to submit",
        ))
    }

    async fn release(
        &self,
        _req: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        Ok(Response::new(pb::ReleaseResponse {}))
    }

    async fn next_job(
        &self,
        req: Request<pb::NextJobRequest>,
    ) -> Result<Response<pb::NextJobResponse>, Status> {
        let r = req.into_inner();
        let mut b = self.lock();
        if !b.workers.contains_key(&r.worker_id) {
            return Err(not_registered(&r.worker_id));
        }
        let resp = if b.over.is_some() {
            b.told_finished.insert(r.worker_id);
            pb::NextJobResponse {
                finished: true,
                ..Default::default()
            }
        } else if r.previous_job_id != b.job.job_id {
            pb::NextJobResponse {
                job: Some(b.job.clone()),
                ..Default::default()
            }
        } else {
            pb::NextJobResponse {
                retry_after_ms: millis(NEXT_JOB_RETRY),
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
        let mut b = self.lock();
        if r.job_id == b.job.job_id
            && let Some(e) = b.workers.get_mut(&r.worker_id)
        {
            tracing::warn!(worker = %r.worker_id, error = %r.error, "worker cannot run the bench");
            e.error = Some(r.error);
        }
        Ok(Response::new(pb::RefuseJobResponse {}))
    }

    async fn bench_ready(
        &self,
        req: Request<pb::BenchReadyRequest>,
    ) -> Result<Response<pb::BenchReadyResponse>, Status> {
        let r = req.into_inner();
        let now = Instant::now();
        let mut b = self.lock();
        let over = b.over.clone();
        let window = b.window;
        let Some(e) = b.workers.get_mut(&r.worker_id) else {
            return Err(not_registered(&r.worker_id));
        };
        let mut resp = pb::BenchReadyResponse::default();
        if let Some(why) = over {
            resp.abandoned = why;
            return Ok(Response::new(resp));
        }
        if !e.ready {
            tracing::info!(worker = %r.worker_id, "worker ready for the bench");
        }
        e.ready = true;
        match window {
            Some((start, stop)) if e.in_window => {
                resp.go = true;
                resp.start_in_ms = millis(start.saturating_duration_since(now));
                resp.stop_in_ms = millis(stop.saturating_duration_since(now));
            }
            Some(_) => {
                resp.abandoned =
                    "this worker became ready after the window opened; it is not measured".into();
            }
            None => resp.retry_after_ms = millis(READY_RETRY),
        }
        Ok(Response::new(resp))
    }

    async fn bench_result(
        &self,
        req: Request<pb::BenchResultRequest>,
    ) -> Result<Response<pb::BenchResultResponse>, Status> {
        let r = req.into_inner();
        let mut b = self.lock();
        let Some(e) = b.workers.get_mut(&r.worker_id) else {
            return Err(not_registered(&r.worker_id));
        };
        if r.error.is_empty() {
            e.result = Some(r.devices);
        } else {
            e.error = Some(r.error);
        }
        Ok(Response::new(pb::BenchResultResponse {}))
    }
}

/// One device's row of the tables.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeviceRow {
    pub worker_id: String,
    pub hostname: String,
    pub device: String,
    pub kind: String,
    pub images_per_second: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub passes: u64,
    pub images: u64,
    pub seconds: f64,
    pub batch_size: u32,
    pub precision: String,
    pub fold_bn: bool,
    pub channels_last: bool,
    /// How far below (positive) or above (negative) the median of its kind, in percent.
    pub below_median_percent: f64,
    /// More than [`SLOW_BELOW_MEDIAN`] below the median of its kind.
    pub slow: bool,
}

/// The median of one kind of device.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KindMedian {
    pub kind: String,
    pub devices: usize,
    pub median_images_per_second: f64,
}

/// bench.json.
#[derive(Debug, Clone, Serialize)]
pub struct PoolBenchReport {
    pub model: String,
    pub weights: String,
    pub precision: String,
    pub resolution: u32,
    pub batch_size: u32,
    pub window_seconds: f64,
    pub warmup_passes: u32,
    pub workers: usize,
    /// Sum over devices of their img/s (all timed the same window).
    pub total_images_per_second: f64,
    /// A device is slow below `(1 - slow_below_median) x` the median of its kind.
    pub slow_below_median: f64,
    pub kinds: Vec<KindMedian>,
    /// Worker, then device order.
    pub devices: Vec<DeviceRow>,
    /// One line per slow device.
    pub slow: Vec<String>,
}

impl PoolBenchReport {
    pub fn any_slow(&self) -> bool {
        !self.slow.is_empty()
    }

    /// bench.md (also printed): the per-device table, the pool's total, the medians and the flags.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "# Pool bench: {} {} @{}, batch {}, {:.1} s window\n\n\
             | worker | host | device | kind | img/s | p50 ms | p90 ms | p99 ms | passes | batch | precision | layout | vs median | slow |\n\
             |---|---|---|---|---:|---:|---:|---:|---:|---:|---|---|---:|---|\n",
            self.model, self.precision, self.resolution, self.batch_size, self.window_seconds
        );
        for d in &self.devices {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {}{} | {:+.1}% | {} |",
                d.worker_id,
                d.hostname,
                d.device,
                d.kind,
                d.images_per_second,
                d.p50_ms,
                d.p90_ms,
                d.p99_ms,
                d.passes,
                d.batch_size,
                d.precision,
                if d.fold_bn { "F" } else { "B" },
                if d.channels_last { "/NHWC" } else { "/NCHW" },
                -d.below_median_percent,
                if d.slow { "**slow**" } else { "" },
            );
        }
        let _ = writeln!(
            out,
            "\npool total: {:.2} img/s over {} devices of {} workers",
            self.total_images_per_second,
            self.devices.len(),
            self.workers
        );
        for k in &self.kinds {
            let _ = writeln!(
                out,
                "median of kind {}: {:.2} img/s ({} devices)",
                k.kind, k.median_images_per_second, k.devices
            );
        }
        if self.slow.is_empty() {
            let _ = writeln!(
                out,
                "no device is more than {:.0}% below the median of its kind",
                self.slow_below_median * 100.0
            );
        } else {
            for s in &self.slow {
                let _ = writeln!(out, "SLOW: {s}");
            }
        }
        out.push_str("layout: F = BatchNorm folded, B = kept; NHWC = channels-last\n");
        out
    }
}

fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Fills each row's distance to the median of its kind and its `slow` flag; returns the medians and
/// one line per slow device.
pub fn flag_slow(rows: &mut [DeviceRow]) -> (Vec<KindMedian>, Vec<String>) {
    let mut by_kind: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in rows.iter() {
        by_kind
            .entry(r.kind.clone())
            .or_default()
            .push(r.images_per_second);
    }
    let medians: BTreeMap<String, f64> = by_kind
        .into_iter()
        .map(|(k, mut v)| {
            v.sort_by(f64::total_cmp);
            (k, median(&v))
        })
        .collect();
    let mut lines = Vec::new();
    for r in rows.iter_mut() {
        let m = medians[&r.kind];
        r.below_median_percent = if m > 0.0 {
            (1.0 - r.images_per_second / m) * 100.0
        } else {
            0.0
        };
        r.slow = r.images_per_second < (1.0 - SLOW_BELOW_MEDIAN) * m;
        if r.slow {
            lines.push(format!(
                "worker {} ({}) device {}: {:.2} img/s, {:.1}% below the {} median of {:.2} img/s",
                r.worker_id,
                r.hostname,
                r.device,
                r.images_per_second,
                r.below_median_percent,
                r.kind,
                m
            ));
        }
    }
    let kinds = medians
        .into_iter()
        .map(|(kind, median_images_per_second)| KindMedian {
            devices: rows.iter().filter(|r| r.kind == kind).count(),
            kind,
            median_images_per_second,
        })
        .collect();
    (kinds, lines)
}

/// The local workers and the server, stopped on every path out of [`bench`].
struct Pool {
    board: Arc<Mutex<Board>>,
    children: Vec<(WorkerId, Child, bool)>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Pool {
    /// A local worker that exited: its id and status.
    fn exited(&mut self) -> Option<String> {
        for (id, child, alive) in &mut self.children {
            if *alive && let Ok(Some(status)) = child.try_wait() {
                *alive = false;
                return Some(format!("local worker {id} exited ({status})"));
            }
        }
        None
    }

    /// Ends the bench for every worker (`reason` for those still waiting on the window), waits a
    /// bounded time for them to hear it, then stops serving.
    async fn close(mut self, reason: &str) {
        lock(&self.board)
            .over
            .get_or_insert_with(|| reason.to_string());
        let deadline = Instant::now() + WORKER_EXIT_GRACE;
        loop {
            let _ = self.exited();
            let waiting = {
                let b = lock(&self.board);
                b.workers
                    .keys()
                    .filter(|w| !b.told_finished.contains(*w))
                    .filter(|w| {
                        !self
                            .children
                            .iter()
                            .any(|(id, _, alive)| !alive && &id.0 == *w)
                    })
                    .count()
            };
            if waiting == 0 || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(TICK).await;
        }
        for (id, child, _) in &mut self.children {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, child.wait()).await.is_err() {
                tracing::warn!(worker = %id, "local worker did not exit; killing it");
                let _ = child.kill().await;
            }
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Local workers are `kill_on_drop`; the server must not outlive the pool either.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The bench job as workers receive it.
fn bench_job(cfg: &PoolBenchConfig, sha256: String) -> pb::JobSpec {
    let m = &cfg.model;
    pb::JobSpec {
        job_id: BENCH_JOB_ID.into(),
        model: Some(pb::ModelSpec {
            model: m.model.clone(),
            weights: cfg.weights.to_string_lossy().into_owned(),
            weights_sha256: sha256,
            precision: pb::Precision::from(m.precision).into(),
            fold_bn: m.folds_bn(),
            leaky_slope: m.leaky_slope,
            num_classes: 0,
            synthetic: false,
            measure_fold_bn: m.measures_fold_bn(),
            memory_format: pb::MemoryFormat::from(m.memory_format).into(),
        }),
        preprocess: Some(pb::PreprocessSpec {
            resolution: cfg.resolution,
            ..Default::default()
        }),
        batching: Some(pb::BatchingSpec {
            batch_size: cfg.batch_size,
            shard_size: 0,
        }),
        bench: Some(pb::BenchSpec {
            warmup_passes: cfg.warmup,
            duration_ms: millis(cfg.duration),
        }),
        ..Default::default()
    }
}

/// Runs the bench on the pool and writes `bench.json` and `bench.md` into `cfg.out`.
pub async fn bench(cfg: &PoolBenchConfig) -> anyhow::Result<PoolBenchReport> {
    let sha = sha256_file(&cfg.weights)?;
    let board = Arc::new(Mutex::new(Board {
        job: bench_job(cfg, sha),
        workers: BTreeMap::new(),
        window: None,
        over: None,
        told_finished: BTreeSet::new(),
    }));
    let bind = cfg
        .listen
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let listener = TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    let addr = listener.local_addr()?;
    if cfg.listen.is_some() {
        let scheme = if cfg.tls.is_some() { "https" } else { "http" };
        eprintln!(
            "coordinator listening on {addr}; start workers with: tresnet-worker --coordinator {scheme}://{addr} --devices ..."
        );
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_service(
        listener,
        BenchService {
            board: board.clone(),
        },
        cfg.token.clone(),
        cfg.tls.as_ref().map(ServerTls::server_config),
        async {
            let _ = stop_rx.await;
        },
    ));
    let mut pool = Pool {
        board: board.clone(),
        children: Vec::new(),
        stop: Some(stop_tx),
        server: Some(server),
    };
    let store = StoreArgs::default();
    pool.children = spawn_local_workers(
        &LocalWorkers {
            count: cfg.local_workers,
            devices: &cfg.worker_devices,
            threads: cfg.worker_threads,
            extra_args: &cfg.worker_extra_args,
            token: cfg.token.as_deref(),
            tls_ca: cfg.tls.as_ref().map(|tls| {
                cfg.tls_worker_ca
                    .as_ref()
                    .unwrap_or(&tls.cert_path)
                    .as_path()
            }),
            store: &store,
        },
        addr,
    )?
    .into_iter()
    .map(|(id, child)| (id, child, true))
    .collect();
    let measured = drive(cfg, &mut pool).await;
    pool.close(match &measured {
        Ok(_) => "the bench is over",
        Err(_) => "the bench failed on another worker",
    })
    .await;
    let rows = measured?;
    let report = report(cfg, rows);
    write_reports(&cfg.out, &report)?;
    Ok(report)
}

/// The barrier, the window and the results; the rows of every measured device.
async fn drive(cfg: &PoolBenchConfig, pool: &mut Pool) -> anyhow::Result<Vec<DeviceRow>> {
    let expected = cfg.expected_workers as usize;
    let ready_deadline = Instant::now() + cfg.ready_timeout;
    tracing::info!(
        workers = expected,
        "waiting for every worker to load the model and warm up"
    );
    loop {
        if let Some(e) = pool.exited() {
            bail!("{e} before the bench window opened");
        }
        {
            let mut b = lock(&pool.board);
            if let Some((id, e)) = b
                .workers
                .iter()
                .find_map(|(id, e)| Some((id, e.error.as_ref()?)))
            {
                bail!("worker {id} cannot run the bench: {e}");
            }
            let ready = b.workers.values().filter(|e| e.ready).count();
            if ready >= expected && ready == b.workers.len() {
                let start = Instant::now() + START_LEAD;
                b.window = Some((start, start + cfg.duration));
                for e in b.workers.values_mut() {
                    e.in_window = true;
                }
                tracing::info!(
                    workers = ready,
                    seconds = cfg.duration.as_secs_f64(),
                    "every worker is ready; the window opens"
                );
                break;
            }
            if Instant::now() >= ready_deadline {
                let loading: Vec<&str> = b
                    .workers
                    .iter()
                    .filter(|(_, e)| !e.ready)
                    .map(|(id, _)| id.as_str())
                    .collect();
                let mut why = format!(
                    "the bench window never opened: {ready} of {expected} workers ready after {}s (--ready-timeout-secs)",
                    cfg.ready_timeout.as_secs()
                );
                if !loading.is_empty() {
                    let _ = write!(why, "; still loading: {}", loading.join(", "));
                }
                let missing: Vec<String> = pool
                    .children
                    .iter()
                    .map(|(id, _, _)| id.0.clone())
                    .filter(|id| !b.workers.contains_key(id))
                    .collect();
                if !missing.is_empty() {
                    let _ = write!(
                        why,
                        "; local workers never attached: {}",
                        missing.join(", ")
                    );
                }
                let remote = b
                    .workers
                    .keys()
                    .filter(|id| !pool.children.iter().any(|(c, _, _)| &c.0 == *id))
                    .count();
                let expected_remote = expected - cfg.local_workers as usize;
                if remote < expected_remote {
                    let _ = write!(
                        why,
                        "; {} of {expected_remote} expected remote workers never attached",
                        expected_remote - remote
                    );
                }
                bail!("{why}");
            }
        }
        tokio::time::sleep(TICK).await;
    }
    let result_deadline = Instant::now() + START_LEAD + cfg.duration + RESULT_GRACE;
    loop {
        if let Some(e) = pool.exited() {
            bail!("{e} during the bench window");
        }
        {
            let b = lock(&pool.board);
            if let Some((id, e)) = b
                .workers
                .iter()
                .filter(|(_, e)| e.in_window)
                .find_map(|(id, e)| Some((id, e.error.as_ref()?)))
            {
                bail!("worker {id} failed in the bench window: {e}");
            }
            let missing: Vec<&str> = b
                .workers
                .iter()
                .filter(|(_, e)| e.in_window && e.result.is_none())
                .map(|(id, _)| id.as_str())
                .collect();
            if missing.is_empty() {
                return Ok(rows(cfg, &b));
            }
            if Instant::now() >= result_deadline {
                bail!(
                    "no bench result from {} within {}s of the window's close",
                    missing.join(", "),
                    RESULT_GRACE.as_secs()
                );
            }
        }
        tokio::time::sleep(TICK).await;
    }
}

fn rows(cfg: &PoolBenchConfig, b: &Board) -> Vec<DeviceRow> {
    let precision = format!("{:?}", cfg.model.precision).to_lowercase();
    b.workers
        .iter()
        .filter_map(|(id, e)| Some((id, e, e.result.as_ref()?)))
        .flat_map(|(id, e, devices)| {
            devices.iter().map(|d| DeviceRow {
                worker_id: id.clone(),
                hostname: e.hostname.clone(),
                device: d.device.clone(),
                kind: d.device_kind.clone(),
                images_per_second: if d.seconds > 0.0 {
                    d.images as f64 / d.seconds
                } else {
                    0.0
                },
                p50_ms: d.p50_ms,
                p90_ms: d.p90_ms,
                p99_ms: d.p99_ms,
                passes: d.passes,
                images: d.images,
                seconds: d.seconds,
                batch_size: cfg.batch_size,
                precision: precision.clone(),
                fold_bn: d.fold_bn,
                channels_last: d.channels_last,
                below_median_percent: 0.0,
                slow: false,
            })
        })
        .collect()
}

fn report(cfg: &PoolBenchConfig, mut devices: Vec<DeviceRow>) -> PoolBenchReport {
    let (kinds, slow) = flag_slow(&mut devices);
    let workers: BTreeSet<&str> = devices.iter().map(|d| d.worker_id.as_str()).collect();
    PoolBenchReport {
        model: cfg.model.model.clone(),
        weights: cfg.weights.display().to_string(),
        precision: format!("{:?}", cfg.model.precision).to_lowercase(),
        resolution: cfg.resolution,
        batch_size: cfg.batch_size,
        window_seconds: cfg.duration.as_secs_f64(),
        warmup_passes: cfg.warmup,
        workers: workers.len(),
        total_images_per_second: devices.iter().map(|d| d.images_per_second).sum(),
        slow_below_median: SLOW_BELOW_MEDIAN,
        kinds,
        slow,
        devices,
    }
}

fn write_reports(out: &Path, report: &PoolBenchReport) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let json = serde_json::to_vec_pretty(report)?;
    write_atomic(&out.join("bench.json"), &json)?;
    write_atomic(&out.join("bench.md"), report.markdown().as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(worker: &str, kind: &str, ips: f64) -> DeviceRow {
        DeviceRow {
            worker_id: worker.into(),
            hostname: "h".into(),
            device: "cpu".into(),
            kind: kind.into(),
            images_per_second: ips,
            p50_ms: 0.0,
            p90_ms: 0.0,
            p99_ms: 0.0,
            passes: 1,
            images: 1,
            seconds: 1.0,
            batch_size: 1,
            precision: "fp32".into(),
            fold_bn: true,
            channels_last: false,
            below_median_percent: 0.0,
            slow: false,
        }
    }

    #[test]
    fn devices_more_than_ten_percent_below_the_median_of_their_kind_are_slow() {
        let mut rows = vec![
            row("a", "cuda", 100.0),
            row("b", "cuda", 91.0),
            row("c", "cuda", 89.0),
            row("d", "cuda", 102.0),
            // Another kind is compared only with itself: far below the GPUs, not slow.
            row("e", "cpu", 10.0),
        ];
        let (kinds, slow) = flag_slow(&mut rows);
        // Median of 89, 91, 100, 102 is 95.5: 85.95 is the bound.
        assert_eq!(kinds[1].kind, "cuda");
        assert_eq!(kinds[1].median_images_per_second, 95.5);
        assert_eq!(
            rows.iter()
                .filter(|r| r.slow)
                .map(|r| r.worker_id.as_str())
                .collect::<Vec<_>>(),
            Vec::<&str>::new()
        );
        rows[2].images_per_second = 85.0;
        let (_, slow2) = flag_slow(&mut rows);
        assert!(slow.is_empty());
        assert_eq!(
            rows.iter()
                .filter(|r| r.slow)
                .map(|r| r.worker_id.as_str())
                .collect::<Vec<_>>(),
            vec!["c"]
        );
        assert_eq!(slow2.len(), 1);
        assert!(slow2[0].contains("worker c"), "{}", slow2[0]);
    }
}
