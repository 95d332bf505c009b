//! One evaluation job end to end: list the dataset, open (or resume) the run directory, serve workers
//! (spawned locally or remote), watch leases and progress, and write the reports.
//!
//! The serving half is a [`WorkerPool`], which outlives a job so that `sweep` runs all its cells on the
//! same endpoint and the same workers; `run` is a pool with a single job.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tresnet_common::dataset::subset::restrict;
use tresnet_common::dataset::{ClassSubset, DatasetIndex, list_dataset};
use tresnet_common::ids::{JobId, ShardId, WorkerId};
use tresnet_common::job::{BatchingSpec, DataSpec, JobSpec, ModelSpec, OutputSpec};
use tresnet_common::preprocess::PreprocessConfig;
use tresnet_common::protocol::MAX_MESSAGE_BYTES;
use tresnet_common::protocol::auth::{CheckToken, TOKEN_ENV};
use tresnet_common::protocol::pb::coordinator_server::{Coordinator, CoordinatorServer};
use tresnet_common::protocol::tls::ServerTls;
use tresnet_common::storage::{StorageLocation, StoreArgs};

use crate::atomic_file::write_atomic;
use crate::job_args::{DataArgs, ModelArgs};
use crate::journal::{Journal, OnBadRecord};
use crate::metrics::Observed;
use crate::progress::Progress;
use crate::report;
use crate::run_dir::Summary;
use crate::scheduler::{Scheduler, SchedulerConfig, ShardState};
use crate::service::{CoordinatorService, Intake, RunState, Shared};
use crate::shard_size::ShardSize;
use crate::shutdown::{Interrupted, Shutdown, Signal};

/// Settings of one `run`, validated from the command line.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The job's parameters, as given: [`plan`] turns them into its [`JobSpec`].
    pub model: ModelArgs,
    pub data: DataArgs,
    pub preprocess: PreprocessConfig,
    pub outputs: OutputSpec,
    pub batching: BatchingSpec,
    pub out: PathBuf,
    /// `--shard-size`: resolved per dataset by [`plan`] into the job's `batching.shard_size`.
    pub shard_size: ShardSize,
    pub local_workers: u32,
    pub listen: Option<SocketAddr>,
    pub worker_devices: String,
    pub worker_threads: Option<u32>,
    pub worker_extra_args: Vec<String>,
    pub lease_timeout: Duration,
    pub max_failures: u32,
    pub speculative: bool,
    pub fail_on_bad_sample: bool,
    /// Shared token every RPC must carry; `None` leaves the endpoint open (loopback default).
    pub token: Option<String>,
    /// Journal location (path or object-store URL); `None` is `out/journal`.
    pub journal: Option<String>,
    /// What resuming does with a journal record that is damaged or another job's.
    pub on_bad_record: OnBadRecord,
    /// Where to serve /healthz, /readyz and /metrics (`None`: nowhere).
    pub metrics_listen: Option<SocketAddr>,
    /// How long /metrics stays up after the reports are written (SIGTERM/SIGINT ends it sooner).
    pub metrics_linger: Duration,
    /// TLS certificate and key of the gRPC endpoint (`None`: plaintext).
    pub tls: Option<ServerTls>,
    /// The CA local workers are told to trust (default: the certificate file itself).
    pub tls_worker_ca: Option<PathBuf>,
    /// Object-store client settings, for this process and its local workers.
    pub store: StoreArgs,
    /// How long a drain (SIGTERM/SIGINT) waits for the results of shards in flight.
    pub drain_timeout: Duration,
}

/// How often the run loop checks leases, child processes and progress.
const TICK: Duration = Duration::from_millis(100);
/// Progress log interval when stderr is not a terminal (CI logs stay readable).
const LOG_EVERY: Duration = Duration::from_secs(5);
/// Time workers get to hear that no job follows (and local ones to exit) before the endpoint stops and
/// local ones are killed; a few of their polls, which come every few hundred milliseconds.
const WORKER_EXIT_GRACE: Duration = Duration::from_secs(10);
/// Default `--drain-timeout-ms`. Kubernetes (and `docker stop`) send SIGKILL 30 s after SIGTERM by
/// default; a 15 s drain plus the journal writes it waits for plus [`WORKER_EXIT_GRACE`] fits in that.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a drain waits, after it stops accepting, for journal writes of accepted shards: one PUT with
/// the object store client's own timeout and retries. Writes are atomic, so one cut by exiting leaves no
/// record and its shard is recomputed on resume; the wait only keeps that from happening needlessly.
const JOURNAL_FLUSH_LIMIT: Duration = Duration::from_secs(60);
/// HTTP/2 PINGs to each worker's connection: one that froze or was partitioned away has its connection
/// (and any half-received Submit stream) dropped within interval + timeout. Its leases expire on their
/// own clock (`--lease-timeout-ms`); this only frees the server's side of the connection.
const WORKER_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const WORKER_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path)
        .with_context(|| format!("cannot open weights {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)
        .with_context(|| format!("cannot read weights {}", path.display()))?;
    Ok(format!("{:x}", h.finalize()))
}

fn worker_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("TRESNET_WORKER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("cannot locate the coordinator executable")?;
    let p = exe.with_file_name("tresnet-worker");
    if p.exists() {
        Ok(p)
    } else {
        bail!(
            "cannot find tresnet-worker next to {} (build it, or set TRESNET_WORKER_BIN)",
            exe.display()
        )
    }
}

/// Opens the run directory: a new one gets `job.json`; an existing one must hold the same job, and
/// its journal's completed shards, once verified, are not run again. The journal lives in
/// `out/journal` unless `journal_url` puts it elsewhere (an object store, so a run survives the
/// coordinator's disk).
async fn open_run_dir(
    cfg: &RunConfig,
    job: &JobSpec,
    index: &DatasetIndex,
) -> anyhow::Result<(Journal, Vec<ShardId>)> {
    let (out, journal_url) = (cfg.out.as_path(), cfg.journal.as_deref());
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create run directory {}", out.display()))?;
    let job_path = out.join("job.json");
    if job_path.exists() {
        let old: JobSpec = serde_json::from_slice(&std::fs::read(&job_path)?)
            .with_context(|| format!("{} is not a job spec", job_path.display()))?;
        let diff = old.differences(job);
        if !diff.is_empty() {
            bail!(
                "run directory {} holds a different job; refusing to mix results:\n  {}",
                out.display(),
                diff.join("\n  ")
            );
        }
        // Not part of the identity (it changes no number), but journal record N holds shard N of
        // this cut: resuming with another one would mix up which samples are done.
        if old.batching.shard_size != job.batching.shard_size {
            bail!(
                "run directory {} was cut into shards of {} samples, this run would cut {}; \
                 rerun with --shard-size {} to resume it",
                out.display(),
                old.batching.shard_size,
                cfg.shard_size
                    .describe(job.data.dataset_samples, cfg.local_workers),
                old.batching.shard_size
            );
        }
    } else {
        write_atomic(&job_path, &serde_json::to_vec_pretty(job)?)?;
    }
    let identity = job.identity_digest();
    let journal = match journal_url {
        Some(url) => Journal::open_url(url, &cfg.store.options(), identity)?,
        None => Journal::open(out, identity)?,
    };
    journal.bind_job(job).await?;
    let done = journal.verified(cfg.on_bad_record).await?;
    if cfg.fail_on_bad_sample {
        refuse_journaled_bad_samples(&journal, &done, index)?;
    }
    Ok((journal, done))
}

/// Under `--on-bad-sample fail`, a resume must fail the way the run would have: shards journaled by an
/// earlier run under `skip` may hold bad samples, which this policy does not accept.
fn refuse_journaled_bad_samples(
    journal: &Journal,
    done: &[ShardId],
    index: &DatasetIndex,
) -> anyhow::Result<()> {
    if let Some(b) = index.bad_samples.first() {
        bail!("bad sample {}: {} (--on-bad-sample=fail)", b.key, b.reason);
    }
    for &shard in done {
        let record = journal.read(shard)?;
        if let Some(r) = record.results.iter().find(|r| !r.error.is_empty()) {
            let key = index
                .samples
                .get(r.index as usize)
                .map_or_else(|| format!("#{}", r.index), |s| s.key.to_string());
            bail!(
                "bad sample {key}: {} (journaled in {shard} by an earlier run; --on-bad-sample=fail)",
                r.error
            );
        }
    }
    Ok(())
}

/// The URL local workers reach the coordinator at: loopback even when it listens on every interface.
fn local_url(addr: SocketAddr, tls: bool) -> String {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("{}://{addr}", if tls { "https" } else { "http" })
}

fn spawn_workers(cfg: &RunConfig, addr: SocketAddr) -> anyhow::Result<Vec<(WorkerId, Child)>> {
    spawn_local_workers(
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
            store: &cfg.store,
        },
        addr,
    )
}

/// How `run` (and `bench`) start their local worker processes: the pool settings of the command line.
pub struct LocalWorkers<'a> {
    pub count: u32,
    /// `--devices` of each worker.
    pub devices: &'a str,
    /// libtorch CPU threads per worker.
    pub threads: Option<u32>,
    /// `--worker-arg`s (test hooks).
    pub extra_args: &'a [String],
    pub token: Option<&'a str>,
    /// Serving TLS: the CA the workers verify the coordinator with.
    pub tls_ca: Option<&'a Path>,
    pub store: &'a StoreArgs,
}

/// Starts `spec.count` local workers (ids `local-0`, `local-1`, ...) attached to `addr`; they die with
/// this process.
pub fn spawn_local_workers(
    spec: &LocalWorkers<'_>,
    addr: SocketAddr,
) -> anyhow::Result<Vec<(WorkerId, Child)>> {
    let bin = worker_binary()?;
    let mut children = Vec::new();
    for i in 0..spec.count {
        let id = WorkerId(format!("local-{i}"));
        let mut cmd = Command::new(&bin);
        // Their own process group, so a terminal's Ctrl-C reaches only the coordinator, which drains
        // them; they die with it all the same.
        cmd.process_group(0);
        crate::parent_death::die_with_parent(&mut cmd);
        cmd.arg("--coordinator")
            .arg(local_url(addr, spec.tls_ca.is_some()))
            .arg("--devices")
            .arg(spec.devices)
            .arg("--worker-id")
            .arg(&id.0)
            .args(spec.store.to_args())
            .args(spec.extra_args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        match spec.token {
            Some(t) => cmd.env(TOKEN_ENV, t),
            None => cmd.env_remove(TOKEN_ENV),
        };
        if let Some(t) = spec.threads {
            cmd.arg("--threads").arg(t.to_string());
        }
        if let Some(ca) = spec.tls_ca {
            cmd.arg("--tls-ca").arg(ca);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start local worker {}", bin.display()))?;
        children.push((id, child));
    }
    Ok(children)
}

/// Runs the job; returns the summary once every shard is accounted for, or [`Interrupted`] after a drain
/// on SIGTERM/SIGINT.
pub async fn run(cfg: RunConfig) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let shutdown = Shutdown::listen().context("cannot listen for SIGTERM and SIGINT")?;
    // Up before the (possibly long) listing so that liveness probes pass while readiness says why not.
    let observed = Observed::default();
    let (metrics_stop, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(addr) = cfg.metrics_listen {
        tresnet_common::observability::start(addr, observed.endpoint(), async {
            let _ = metrics_stopped.await;
        })
        .await?;
    }
    let (job, index) = plan_unless_stopped(&cfg, &shutdown).await?;
    let summary = run_planned(cfg, job, index, &observed, started, shutdown).await;
    let _ = metrics_stop.send(());
    summary
}

/// [`plan`], cut short by SIGTERM/SIGINT: a listing can take minutes, and nothing ran yet.
pub async fn plan_unless_stopped(
    cfg: &RunConfig,
    shutdown: &Shutdown,
) -> anyhow::Result<(JobSpec, DatasetIndex)> {
    tokio::select! {
        planned = plan(cfg) => planned,
        signal = shutdown.wait() => Err(Interrupted {
            signal,
            what: "run".into(),
            progress: "stopped while listing the dataset, before any shard ran".into(),
        }
        .into()),
    }
}

/// Lists the dataset and builds the job spec a run of `cfg` would have (what `sweep` compares with a
/// finished cell's summary to skip it).
pub async fn plan(cfg: &RunConfig) -> anyhow::Result<(JobSpec, DatasetIndex)> {
    let location = StorageLocation::parse(&cfg.data.data, &cfg.store.options())?;
    let format = &cfg.data.dataset_format()?;
    tracing::info!(data = %location.url(), format = format.name(), "listing dataset");
    let listed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64);
    let class_subset = class_subset_of(&cfg.data)?;
    let mut index: DatasetIndex = list_dataset(&location, format).await?;
    if index.is_empty() && index.bad_samples.is_empty() {
        bail!(
            "dataset {} ({}) has no samples",
            location.url(),
            format.name()
        );
    }
    let m = &cfg.model;
    let (weights_sha256, head_classes) = match (&m.weights, m.synthetic) {
        (Some(w), false) => {
            let facts = crate::checkpoint_facts::inspect(w)?;
            (facts.sha256, facts.head_classes)
        }
        (Some(w), true) => (sha256_file(w)?, None),
        (None, true) => (String::new(), None),
        (None, false) => bail!("--weights is required (or --synthetic for benchmarks)"),
    };
    let weights_name = m
        .weights
        .as_ref()
        .map_or_else(String::new, |w| w.display().to_string());
    let num_classes = crate::classes::resolve(
        cfg.data.num_classes,
        &index,
        location.url(),
        &weights_name,
        head_classes,
    )?;
    // The model's outputs are `num_classes` (the dataset's full class list); a subset narrows what is
    // scored, after every label was checked against the full count.
    if let Some(subset) = &class_subset {
        subset
            .check_within(num_classes)
            .context("--class-subset does not fit the model")?;
        index = restrict(index, subset, location.url())?;
        if index.samples.is_empty() && index.bad_samples.is_empty() {
            bail!(
                "no sample of dataset {} is in the class subset ({} excluded)",
                location.url(),
                index.excluded.len()
            );
        }
    }
    if index.label_sets.is_some() && cfg.outputs.counts_only {
        bail!(
            "--format {} scores each image against a list of labels, which counts-only workers do not \
             have; run without --counts-only",
            format.name()
        );
    }
    if let Some(pack) = &index.decoded {
        // Refused here, before any worker starts, rather than by every worker it is sent to.
        pack.check_job(location.url(), &cfg.preprocess)?;
    }
    let scored = class_subset
        .as_ref()
        .map_or(num_classes, |s| s.len() as u32);
    let job = JobSpec {
        job_id: JobId(format!(
            "{}-{}",
            m.model,
            &index.fingerprint[..12.min(index.fingerprint.len())]
        )),
        model: ModelSpec {
            model: m.model.clone(),
            weights: m
                .weights
                .as_ref()
                .map(|w| {
                    std::fs::canonicalize(w)
                        .unwrap_or(w.clone())
                        .display()
                        .to_string()
                })
                .unwrap_or_default(),
            weights_sha256,
            precision: m.precision,
            fold_bn: m.folds_bn(),
            leaky_slope: m.leaky_slope,
            num_classes,
            synthetic: m.synthetic,
            // Synthetic workers load no model: nothing to measure, and no new keys in job.json.
            measure_fold_bn: m.measures_fold_bn() && !m.synthetic,
            memory_format: m.memory_format,
        },
        data: DataSpec {
            data_url: location.url().to_string(),
            format: format.clone(),
            dataset_fingerprint: index.fingerprint.clone(),
            dataset_samples: index.len() as u64,
            listed_at_unix_ms: listed_at,
            class_subset,
            decoded: index.decoded.clone(),
        },
        preprocess: cfg.preprocess.clone(),
        outputs: OutputSpec {
            top_k: cfg.outputs.top_k.min(scored),
            ..cfg.outputs.clone()
        },
        batching: BatchingSpec {
            shard_size: cfg
                .shard_size
                .resolve(index.samples.len() as u64, cfg.local_workers),
            ..cfg.batching.clone()
        },
    };
    Ok((job, index))
}

/// The class subset a run is scored on: `--class-subset`, or the one its format implies (ImageNet-A,
/// -R); naming another subset than the format's own is refused.
fn class_subset_of(data: &DataArgs) -> anyhow::Result<Option<ClassSubset>> {
    let given = data
        .class_subset
        .as_deref()
        .map(ClassSubset::resolve)
        .transpose()?;
    match (data.format.implied_subset(), given) {
        (Some(implied), Some(given)) if implied != given => bail!(
            "--format {} is scored on its own {} classes; --class-subset {} names other classes",
            data.format.name(),
            implied.len(),
            data.class_subset.as_deref().unwrap_or_default()
        ),
        (implied, given) => Ok(given.or(implied)),
    }
}

/// Runs a job made by [`plan`] from the same `cfg`, reporting its state to `observed`.
pub async fn run_planned(
    cfg: RunConfig,
    job: JobSpec,
    index: DatasetIndex,
    observed: &Observed,
    started: Instant,
    shutdown: Shutdown,
) -> anyhow::Result<Summary> {
    let state = job_state(&cfg, &job, index).await?;
    let mut pool = WorkerPool::start(&cfg, state, observed, shutdown.clone()).await?;
    let summary = pool.run_job(&cfg, &job, started).await;
    if summary.is_ok() {
        observed.finished();
        if cfg.metrics_listen.is_some() && !cfg.metrics_linger.is_zero() {
            linger(cfg.metrics_linger, &shutdown).await;
        }
    }
    // gRPC stays up through the report and the linger, so remote workers polling meanwhile hear
    // "job done" instead of finding no server.
    pool.close().await;
    summary
}

/// Opens (or resumes) the run directory of `job` and builds the state its service shares; the job is
/// the last one unless the caller says otherwise.
pub async fn job_state(
    cfg: &RunConfig,
    job: &JobSpec,
    index: DatasetIndex,
) -> anyhow::Result<RunState> {
    let (journal, done) = open_run_dir(cfg, job, &index).await?;
    tracing::info!(
        shard_size = %cfg.shard_size.describe(index.samples.len() as u64, cfg.local_workers),
        "cutting the dataset into shards"
    );
    // Shards cover the listed samples only: those the listing already found bad (a CIFAR record with
    // an impossible label byte) have no sample index and go straight into the report.
    let mut sched = Scheduler::new(
        index.samples.len() as u64,
        job.batching.shard_size,
        SchedulerConfig {
            lease_timeout: cfg.lease_timeout,
            max_failures: cfg.max_failures,
            speculative: cfg.speculative,
        },
    );
    for s in &done {
        if (s.0 as usize) < sched.shard_count() {
            sched.mark_done(*s);
        }
    }
    if !done.is_empty() {
        tracing::info!(
            shards = done.len(),
            "resuming: completed shards found in the journal"
        );
    }
    Ok(RunState::new(
        job,
        Arc::new(index),
        sched,
        journal,
        cfg.fail_on_bad_sample,
        4,
        cfg.lease_timeout,
    ))
}

/// A local worker process and whether it is still running.
struct LocalWorker {
    id: WorkerId,
    child: Child,
    alive: bool,
}

/// The coordinator's gRPC endpoint and the local workers it spawned, kept up across the jobs run on
/// it (one for `run`, one per cell for `sweep`): workers register once, stay attached and are handed
/// each next job through `NextJob`; a worker reloads its model only when the job's model differs.
pub struct WorkerPool {
    state: Shared,
    workers: Vec<LocalWorker>,
    /// Jobs handed out so far; numbers the wire job ids, which must differ even between cells whose
    /// [`JobSpec::job_id`] is the same (same model and dataset, another resolution).
    jobs: u64,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// SIGTERM/SIGINT: the current job drains and ends with [`Interrupted`].
    shutdown: Shutdown,
}

impl WorkerPool {
    /// Binds and serves the protocol with `first` as the current job and spawns the local workers,
    /// with the listener, TLS, token and local-worker settings of `cfg`.
    pub async fn start(
        cfg: &RunConfig,
        first: RunState,
        observed: &Observed,
        shutdown: Shutdown,
    ) -> anyhow::Result<Self> {
        let mut first = first;
        let wire = wire_job_id(first.job_id(), 1);
        first.set_wire_job_id(wire);
        let state: Shared = Arc::new(Mutex::new(first));
        let bind = cfg
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let listener = TcpListener::bind(bind)
            .await
            .with_context(|| format!("cannot listen on {bind}"))?;
        let addr = listener.local_addr()?;
        let scheme = if cfg.tls.is_some() { "https" } else { "http" };
        if cfg.listen.is_some() {
            let ca = if cfg.tls.is_some() {
                " --tls-ca CA.pem"
            } else {
                ""
            };
            eprintln!(
                "coordinator listening on {addr}; start workers with: tresnet-worker --coordinator {scheme}://{addr}{ca} --devices ..."
            );
            if !addr.ip().is_loopback() && cfg.tls.is_none() {
                tracing::warn!(
                    %addr,
                    "gRPC is plaintext on a non-loopback address; use --tls-cert/--tls-key (and --token-file) on untrusted networks"
                );
            }
        } else {
            tracing::info!(
                %addr,
                tls = cfg.tls.is_some(),
                "coordinator listening on loopback only, for local workers (--listen ADDR accepts remote ones)"
            );
        }
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            state.clone(),
            cfg.token.clone(),
            cfg.tls.as_ref().map(ServerTls::server_config),
            async {
                let _ = stop_rx.await;
            },
        ));
        observed.serving(state.clone());
        let mut pool = WorkerPool {
            state,
            workers: Vec::new(),
            jobs: 1,
            stop: Some(stop_tx),
            server: Some(server),
            shutdown,
        };
        // Dropping the pool on this error stops the server and kills any worker already spawned.
        pool.workers = spawn_workers(cfg, addr)?
            .into_iter()
            .map(|(id, child)| LocalWorker {
                id,
                child,
                alive: true,
            })
            .collect();
        Ok(pool)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RunState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `next` the current job once the previous one is over: workers polling `NextJob` get it,
    /// and requests still naming the previous job are answered "job done".
    pub fn install(&mut self, next: RunState) {
        self.jobs += 1;
        let mut next = next;
        let wire = wire_job_id(next.job_id(), self.jobs);
        next.set_wire_job_id(wire);
        self.lock().succeed(next);
    }

    /// Whether more jobs will follow the current one (workers wait for them instead of exiting).
    pub fn set_last_job(&self, last: bool) {
        self.lock().set_last_job(last);
    }

    /// The pids of the local workers still running (in spawn order).
    pub fn local_pids(&self) -> Vec<u32> {
        self.workers
            .iter()
            .filter(|w| w.alive)
            .filter_map(|w| w.child.id())
            .collect()
    }

    /// Watches the current job until every shard is accounted for, then writes its reports into
    /// `cfg.out`; after a drain on SIGTERM/SIGINT, writes nothing and fails with [`Interrupted`].
    pub async fn run_job(
        &mut self,
        cfg: &RunConfig,
        job: &JobSpec,
        started: Instant,
    ) -> anyhow::Result<Summary> {
        let total = self.lock().index().samples.len() as u64;
        let drain = Drain {
            shutdown: &self.shutdown,
            timeout: cfg.drain_timeout,
        };
        watch(&self.state, &mut self.workers, total, &drain).await?;
        let st = self.lock();
        let facts = st.report_facts(started.elapsed().as_secs_f64());
        // Writing the report reads every journal record (GETs on an object store) and takes seconds;
        // holding the state lock meanwhile would block every RPC handler of the still-serving pool
        // on its worker thread, and with them the runtime those GETs need.
        let (index, sched, journal) =
            (st.index().clone(), st.sched().clone(), st.journal().clone());
        drop(st);
        Ok(report::finalize(
            &cfg.out, job, &index, &sched, &journal, facts,
        )?)
    }

    /// Tells the workers there is no further job, gives local ones time to exit on their own, then
    /// stops serving.
    pub async fn close(mut self) {
        self.set_last_job(true);
        // A job that never finished (a failed run) must still end for the workers.
        {
            let mut st = self.lock();
            if !st.done() {
                st.fail("the coordinator is shutting down");
            }
        }
        // Workers learn that the job is done from their next lease or heartbeat, then that nothing
        // follows from `NextJob`, and exit on their own. Serving stops once every registered worker
        // (remote ones included) has heard it, so none finds the endpoint gone instead.
        let deadline = Instant::now() + WORKER_EXIT_GRACE;
        loop {
            for w in &mut self.workers {
                if w.alive && matches!(w.child.try_wait(), Ok(Some(_))) {
                    w.alive = false;
                }
            }
            let waiting: Vec<WorkerId> = {
                let st = self.lock();
                st.workers()
                    .keys()
                    .filter(|id| !st.told_finished().contains(*id))
                    .filter(|id| !self.workers.iter().any(|w| !w.alive && &w.id == *id))
                    .cloned()
                    .collect()
            };
            if waiting.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(workers = ?waiting, "workers did not ask for a next job; stopping anyway");
                break;
            }
            tokio::time::sleep(TICK).await;
        }
        for w in &mut self.workers {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, w.child.wait()).await.is_err() {
                tracing::warn!(worker = %w.id, "local worker did not exit; killing it");
                let _ = w.child.kill().await;
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

impl Drop for WorkerPool {
    fn drop(&mut self) {
        // Local workers are `kill_on_drop`; the server must not outlive the pool either.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The id a job has on the wire: unique within one coordinator process.
fn wire_job_id(job_id: &str, n: u64) -> String {
    format!("{job_id}#{n}")
}

/// Keeps the process (and so /metrics) up after the reports, so a scraper sees the final values; a
/// SIGTERM or SIGINT ends the wait early.
async fn linger(how_long: Duration, shutdown: &Shutdown) {
    tracing::info!(
        seconds = how_long.as_secs_f64(),
        "reports written; serving final metrics (SIGTERM ends this)"
    );
    tokio::select! {
        _ = tokio::time::sleep(how_long) => {}
        _ = shutdown.wait() => {}
    }
}

/// Serves the coordinator protocol on `listener` (over TLS when `tls` is given) until `shutdown`
/// resolves.
pub async fn serve(
    listener: TcpListener,
    state: Shared,
    token: Option<String>,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_service(
        listener,
        CoordinatorService::new(state),
        token,
        tls,
        shutdown,
    )
    .await
}

/// Serves `service` as the coordinator protocol on `listener`, with the token check, TLS and keepalive
/// of [`serve`] (`bench` serves its own implementation this way).
pub async fn serve_service<S: Coordinator>(
    listener: TcpListener,
    service: S,
    token: Option<String>,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let svc = CoordinatorServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let svc =
        tonic::service::interceptor::InterceptedService::new(svc, CheckToken { expected: token });
    let mut server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(WORKER_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(WORKER_KEEPALIVE_TIMEOUT));
    if let Some(tls) = tls {
        server = server
            .tls_config(tls)
            .context("cannot set up TLS on the coordinator endpoint")?;
    }
    server
        .add_service(svc)
        .serve_with_incoming_shutdown(tokio_stream_from(listener), shutdown)
        .await
        .context("coordinator server failed")
}

fn tokio_stream_from(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |l| async move {
        let r = l.accept().await.map(|(s, _)| {
            let _ = s.set_nodelay(true);
            s
        });
        Some((r, l))
    })
}

/// What ends a job early: a drain asked for by a signal, and how long it may take.
struct Drain<'a> {
    shutdown: &'a Shutdown,
    timeout: Duration,
}

/// Shards of the current job with an accepted result.
fn shards_done(st: &RunState) -> usize {
    (0..st.sched().shard_count() as u64)
        .filter(|&i| st.sched().state_of(ShardId(i)) == ShardState::Done)
        .count()
}

/// Drives expiry, notices dead local workers and reports progress until the job is finished, or until
/// a drain asked for by a signal is over.
async fn watch(
    state: &Shared,
    children: &mut [LocalWorker],
    total: u64,
    drain: &Drain<'_>,
) -> anyhow::Result<()> {
    let tty = std::io::stderr().is_terminal();
    let bar = tty.then(|| {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} samples computed  {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let mut progress = {
        let st = state.lock().unwrap_or_else(|p| p.into_inner());
        Progress::new(&st, total)
    };
    let mut last_log = Instant::now();
    // When the drain began, by which signal, and the shards done by then.
    let mut draining: Option<(Instant, Signal, usize)> = None;
    loop {
        tokio::time::sleep(TICK).await;
        for w in children.iter_mut() {
            if w.alive
                && let Ok(Some(status)) = w.child.try_wait()
            {
                w.alive = false;
                let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                if !st.done() {
                    tracing::warn!(worker = %w.id, %status, "local worker exited; requeueing its shards");
                }
                st.worker_lost(&w.id, &format!("process exited with {status}"));
            }
        }
        // Set when the drain is over: (signal, shards done when it began, shards abandoned).
        let drained = {
            let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
            if draining.is_none()
                && let Some(signal) = drain.shutdown.requested()
            {
                st.narrow_intake(Intake::Draining);
                eprintln!(
                    "tresnet-coordinator: {signal}: draining: no new leases; waiting up to {:.1} s for \
                     the {} shards in flight (send {signal} again to exit at once)",
                    drain.timeout.as_secs_f64(),
                    st.sched().leases_in_flight()
                );
                draining = Some((Instant::now(), signal, shards_done(&st)));
            }
            st.expire();
            if st.fatal().is_none()
                && let Some(why) = refused_by_all(&st, children)
            {
                st.fail(why);
            }
            if let Some(f) = st.fatal() {
                bail!("{f}");
            }
            let now = progress.update(&st);
            let msg = format!(
                "{}  accepted {}/{total}  workers {}  bad {}  in flight {}",
                now.rate_and_eta(total),
                now.accepted,
                st.workers().len(),
                st.live().bad_samples,
                st.sched().leases_in_flight()
            );
            if let Some(b) = &bar {
                // Message first: a redraw between the two would pair the new count with the old rate.
                b.set_message(msg);
                b.set_position(now.computed);
            } else if last_log.elapsed() >= LOG_EVERY {
                last_log = Instant::now();
                eprintln!("progress: {}/{total} samples computed  {msg}", now.computed);
            }
            if st.finished() {
                // Also when the last shards landed during a drain: the run is whole, and so is its
                // report.
                if let Some(b) = &bar {
                    b.finish_and_clear();
                }
                return Ok(());
            }
            match draining {
                Some((since, signal, done_before)) => {
                    let in_flight = st.sched().leases_in_flight();
                    (in_flight == 0 || since.elapsed() >= drain.timeout).then(|| {
                        // From here on nothing more is accepted, so the journal writes waited for
                        // below are the last ones.
                        st.narrow_intake(Intake::Closed);
                        (signal, done_before, in_flight)
                    })
                }
                None => {
                    if !children.is_empty() && children.iter().all(|w| !w.alive) {
                        bail!(
                            "every local worker exited before the job finished; see their errors above"
                        );
                    }
                    None
                }
            }
        };
        if let Some((signal, done_before, abandoned)) = drained {
            if let Some(b) = &bar {
                b.abandon();
            }
            return Err(stop_after_drain(state, signal, done_before, abandoned)
                .await
                .into());
        }
    }
}

/// Ends a drain: waits for the journal writes of the shards already accepted, then says where the run
/// stands. `abandoned` shards were still in flight when the drain ran out of time.
async fn stop_after_drain(
    state: &Shared,
    signal: Signal,
    done_before: usize,
    abandoned: usize,
) -> Interrupted {
    let deadline = Instant::now() + JOURNAL_FLUSH_LIMIT;
    loop {
        let pending = state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .journal_pending();
        if pending == 0 || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(TICK).await;
    }
    let st = state.lock().unwrap_or_else(|p| p.into_inner());
    let done = shards_done(&st);
    let mut progress = format!(
        "{} of {} shards are journaled in {}; {} results in flight were taken in while draining, {} \
         shards still in flight were abandoned",
        done - st.journal_pending() as usize,
        st.sched().shard_count(),
        st.journal().url(),
        done.saturating_sub(done_before),
        abandoned
    );
    if st.journal_pending() > 0 {
        progress.push_str(&format!(
            "; {} journal writes did not finish within {:?} (their shards are recomputed on resume)",
            st.journal_pending(), JOURNAL_FLUSH_LIMIT
        ));
    }
    Interrupted {
        signal,
        what: "run".into(),
        progress,
    }
}

/// The job's failure when every worker that could still run it has refused it (its model or weights
/// do not load there, its dataset is unreachable): waiting longer would hang, so the reasons end it.
fn refused_by_all(st: &RunState, local: &[LocalWorker]) -> Option<String> {
    if st.refusals().is_empty() {
        return None;
    }
    // A local worker still starting up may yet load the model: wait until each has registered.
    if local
        .iter()
        .any(|w| w.alive && !st.workers().contains_key(&w.id))
    {
        return None;
    }
    let gone = |id: &WorkerId| local.iter().any(|w| !w.alive && &w.id == id);
    let all = st
        .workers()
        .keys()
        .filter(|id| !gone(id))
        .all(|id| st.refusals().contains_key(id));
    all.then(|| {
        let reasons: Vec<String> = st
            .refusals()
            .iter()
            .map(|(id, e)| format!("worker {id}: {e}"))
            .collect();
        format!(
            "no worker can run model {} with weights {}:\n  {}",
            st.job().model.model,
            st.job().model.weights,
            reasons.join("\n  ")
        )
    })
}
