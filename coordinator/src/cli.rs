//! Command-line interface of `tresnet-coordinator`, validated into config structs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tresnet_common::storage::StoreArgs;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use tresnet_common::dataset::DatasetFormat;
use tresnet_common::job::{BatchingSpec, OutputSpec, SaveLogits};
use tresnet_common::preprocess::PreprocessConfig;

use crate::job_args::{DataArgs, ModelArgs, parse_format};
use crate::journal::OnBadRecord;
use crate::run::RunConfig;
use crate::shard_size::ShardSize;

#[derive(Debug, Parser)]
#[command(
    name = "tresnet-coordinator",
    version,
    about = "Distributed TResNet evaluation: shards a dataset to workers and reports"
)]
pub struct Cli {
    /// Log as JSON lines (for log collectors) instead of text.
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one evaluation job and write its run directory.
    Run(Box<RunArgs>),
    /// Rewrite a dataset as WebDataset-style tar shards with member indexes (few large ranged reads
    /// instead of one GET per image on object stores).
    Pack(PackArgs),
    /// Check a finished run against a baseline: exit 0 within bounds, 1 with a table of every
    /// violation, 2 on bad input. `--write-baseline` writes the baseline from the run instead.
    Gate(GateArgs),
    /// Overall and per-class differences between two runs over the same dataset, with McNemar's test
    /// on the paired per-sample correctness.
    Compare(CompareArgs),
    /// Run a matrix of evaluations from a TOML file, one run directory per cell, and tabulate them
    /// (sweep.parquet, sweep.csv, sweep.md); finished cells are skipped on a rerun.
    Sweep(SweepArgs),
    /// Re-render a finished run's derived files (summary.json, per_class.{parquet,csv},
    /// confusion.parquet, report.html) from its predictions.parquet, job.json and outcome.json.
    Report(ReportArgs),
    /// Score a finished run again without inference, into a new run directory: against ImageNet-ReaL
    /// label lists (`--labels real.json`, from the stored top-k) or on a class subset
    /// (`--class-subset`, from the stored full logits of `run --save-logits`).
    Rescore(RescoreArgs),
    /// Forward-pass throughput of a whole worker pool: every device of every worker (local, or
    /// remote ones attached as for `run`) times synthetic batches in one window the coordinator opens
    /// for all; writes bench.json and bench.md with a row per node and device, the pool's total, and
    /// the devices more than 10% below the median of their kind.
    Bench(Box<BenchArgs>),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("rule").required(true).args(["labels", "class_subset"])))]
pub struct RescoreArgs {
    /// The finished run directory to rescore (read only).
    pub run: PathBuf,
    /// The new run directory (created; must not hold files).
    #[arg(long)]
    pub out: PathBuf,
    /// ImageNet-ReaL's real.json: top-1 is correct when the prediction is in the image's list, top-5
    /// when any of the five is; images with an empty list are excluded.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// `imagenet-a`, `imagenet-r` or a file of class indices or WNIDs: needs the run's logits.npy.
    #[arg(long, value_name = "NAME|FILE")]
    pub class_subset: Option<String>,
}

impl RescoreArgs {
    pub fn rule(&self) -> crate::rescore::Rescoring {
        match (&self.labels, &self.class_subset) {
            (Some(labels), _) => crate::rescore::Rescoring::RealLabels(labels.clone()),
            (None, Some(subset)) => crate::rescore::Rescoring::ClassSubset(subset.clone()),
            (None, None) => unreachable!("clap requires --labels or --class-subset"),
        }
    }
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("checks").multiple(true).args(
    ["max_top1_drop", "max_top5_drop", "max_class_drop", "require_samples"]
)))]
pub struct GateArgs {
    /// Run directory to check (summary.json, predictions.parquet, per_class.csv).
    #[arg(long)]
    pub run: PathBuf,
    /// Baseline JSON file (format in the README, written by --write-baseline).
    #[arg(long)]
    pub baseline: PathBuf,
    /// Write --baseline from --run (overwriting it) instead of checking.
    #[arg(long, conflicts_with = "checks")]
    pub write_baseline: bool,
    /// Largest allowed overall top-1 drop, in percentage points.
    #[arg(long, value_parser = parse_pp)]
    pub max_top1_drop: Option<f64>,
    /// Largest allowed overall top-5 drop, in percentage points.
    #[arg(long, value_parser = parse_pp)]
    pub max_top5_drop: Option<f64>,
    /// Largest allowed top-1 drop of any class, in percentage points.
    #[arg(long, value_parser = parse_pp)]
    pub max_class_drop: Option<f64>,
    /// Classes with fewer samples (in the baseline or the run) are not checked by --max-class-drop.
    #[arg(long, default_value_t = 1, requires = "max_class_drop")]
    pub min_class_support: u64,
    /// Fail unless at least this many samples were evaluated.
    #[arg(long)]
    pub require_samples: Option<u64>,
    /// Significance level α: a top-1/top-5 drop beyond its bound fails only when McNemar's test on the
    /// samples paired with the baseline's gives p < α (needs per-sample results on both sides; falls
    /// back to the plain bound with a note otherwise).
    #[arg(long, value_parser = parse_alpha)]
    pub significance: Option<f64>,
}

/// A flag value that its parser refuses; clap prints the message after the flag's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlagValueError {
    #[error("{0:?} is not a significance level between 0 and 1 (exclusive)")]
    Alpha(String),
    #[error("{0:?} is not a non-negative number of percentage points")]
    PercentagePoints(String),
    #[error("invalid size {0:?}")]
    Size(String),
    #[error("unknown size unit {unit:?} in {value:?}")]
    SizeUnit { unit: String, value: String },
    #[error("size {0:?} must be positive and fit in 64 bits")]
    SizeRange(String),
    #[error(
        "{0} is over 4GiB: shards are held in memory while packed and stored with one PUT, which S3 \
         limits to 5 GB"
    )]
    ShardTooLarge(String),
}

fn parse_alpha(s: &str) -> Result<f64, FlagValueError> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v < 1.0 => Ok(v),
        _ => Err(FlagValueError::Alpha(s.to_string())),
    }
}

fn parse_pp(s: &str) -> Result<f64, FlagValueError> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(FlagValueError::PercentagePoints(s.to_string())),
    }
}

impl GateArgs {
    pub fn into_config(self) -> anyhow::Result<crate::gate::GateConfig> {
        if !self.write_baseline
            && self.max_top1_drop.is_none()
            && self.max_top5_drop.is_none()
            && self.max_class_drop.is_none()
            && self.require_samples.is_none()
        {
            anyhow::bail!(
                "nothing to check: give --max-top1-drop, --max-top5-drop, --max-class-drop or --require-samples (or --write-baseline)"
            );
        }
        if self.significance.is_some()
            && self.max_top1_drop.is_none()
            && self.max_top5_drop.is_none()
        {
            anyhow::bail!(
                "--significance qualifies --max-top1-drop or --max-top5-drop; give one of them"
            );
        }
        Ok(crate::gate::GateConfig {
            run: self.run,
            baseline: self.baseline,
            max_top1_drop: self.max_top1_drop,
            max_top5_drop: self.max_top5_drop,
            max_class_drop: self.max_class_drop,
            min_class_support: self.min_class_support,
            require_samples: self.require_samples,
            significance: self.significance,
        })
    }
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Run directory A (the reference).
    pub run_a: PathBuf,
    /// Run directory B (deltas are B - A).
    pub run_b: PathBuf,
    /// Print the comparison as JSON (every class) instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Classes shown at each end of the per-class table (largest drops and gains); 0 shows all.
    #[arg(long, default_value_t = 15)]
    pub classes: usize,
}

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// Sweep file (TOML; format in the README and ops/sweeps/).
    pub file: PathBuf,
    /// Folder for the cell run directories and sweep tables (default: the file's `out`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The run directory.
    pub run: PathBuf,
}

#[derive(Debug, Args)]
pub struct PackArgs {
    /// Source dataset location (path or URL).
    #[arg(long)]
    pub data: String,
    /// Source dataset format.
    #[arg(long, default_value = "imagefolder", value_parser = parse_format)]
    pub format: DatasetFormat,
    /// As `run --allow-absolute-paths`: manifest rows may name objects anywhere in the source's store.
    #[arg(long)]
    pub allow_absolute_paths: bool,
    /// Destination location (path or URL) for the shards, their indexes and dataset.json.
    #[arg(long)]
    pub out: String,
    /// Target shard size, e.g. 256MiB, 1GiB, 500MB or plain bytes (at most 4GiB).
    #[arg(long, default_value = "256MiB", value_parser = parse_shard_size)]
    pub shard_size: u64,
    /// Objects read concurrently from the source.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Write a decoded pack: each sample preprocessed once (with the `run` flags --resolution,
    /// --crop-pct, --crop-mode, --max-pixels, --dct-scaling below) into uint8 CHW pixels, which runs
    /// with the same settings use without decoding.
    #[arg(long)]
    pub decoded: bool,
    /// Images decoded at once by `--decoded` (default: the machine's cores).
    #[arg(long, requires = "decoded")]
    pub decode_threads: Option<usize>,
    #[command(flatten)]
    pub preprocess: PreprocessConfig,
}

/// `pack --shard-size` default, also the shard size of the decoded packs a sweep builds.
pub const DEFAULT_PACK_SHARD_BYTES: u64 = 256 << 20;

/// Parses sizes such as `256MiB`, `1GiB`, `500MB`, `4096`.
/// Largest `pack --shard-size`: a shard is built in memory and stored with one PUT, and S3 refuses
/// single PUTs over 5 GB; 4 GiB leaves room for the largest sample that may overshoot the target.
pub const MAX_SHARD_BYTES: u64 = 4 << 30;

fn parse_shard_size(s: &str) -> Result<u64, FlagValueError> {
    let n = parse_size(s)?;
    if n > MAX_SHARD_BYTES {
        return Err(FlagValueError::ShardTooLarge(s.to_string()));
    }
    Ok(n)
}

pub fn parse_size(s: &str) -> Result<u64, FlagValueError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| FlagValueError::Size(s.to_string()))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "kib" | "k" => 1 << 10,
        "mb" => 1_000_000,
        "mib" | "m" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" | "g" => 1 << 30,
        other => {
            return Err(FlagValueError::SizeUnit {
                unit: other.to_string(),
                value: s.to_string(),
            });
        }
    };
    match n.checked_mul(mult) {
        Some(0) | None => Err(FlagValueError::SizeRange(s.to_string())),
        Some(v) => Ok(v),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBadSample {
    /// Count it in `bad_samples` with its reason and go on.
    Skip,
    /// Stop the run with an error naming the sample (completed shards stay in the journal).
    Fail,
}

/// `run --local-workers` default.
pub const DEFAULT_LOCAL_WORKERS: u32 = 1;
/// `run --devices` default.
pub const DEFAULT_DEVICES: &str = "cpu";
/// `run --lease-timeout-ms` default: a forward pass of a whole shard on a slow CPU fits many times
/// over, while a dead worker's shards are back in the queue within half a minute.
pub const DEFAULT_LEASE_TIMEOUT_MS: u64 = 30_000;
/// `run --max-failures` default: a shard failing three times on different workers is its own fault.
pub const DEFAULT_MAX_FAILURES: u32 = 3;

/// `run`'s command line, and (deserialised with serde from a sweep's `[run]` table, keys by their
/// flag names) the settings every sweep cell shares. The job's parameters are the flattened parts;
/// the rest sets up the worker pool and the scheduling.
#[derive(Debug, Clone, Args, Deserialize)]
pub struct RunArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    #[serde(skip)]
    pub data: DataArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub preprocess: PreprocessConfig,
    #[command(flatten)]
    #[serde(flatten)]
    pub outputs: OutputSpec,
    #[command(flatten)]
    #[serde(flatten)]
    pub batching: BatchingSpec,
    /// Samples per shard (the unit of leasing, retry and journaling; never split across workers), or
    /// auto: ceil(samples / (4 x local workers)), at most 256, recorded in job.json.
    #[arg(long, default_value = "auto")]
    #[serde(default)]
    pub shard_size: ShardSize,
    /// Run directory (created; an existing one with the same job is resumed).
    #[arg(long)]
    #[serde(skip)]
    pub out: PathBuf,
    /// Spawn this many local tresnet-worker processes on loopback.
    #[arg(long, default_value_t = DEFAULT_LOCAL_WORKERS)]
    #[serde(default = "default_local_workers")]
    pub local_workers: u32,
    /// Wait for remote workers on this address instead of (or besides) local ones; binds 127.0.0.1
    /// unless an address is given.
    #[arg(long)]
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Devices of each local worker: cpu, or cuda:0,cuda:1,...
    #[arg(long, default_value = DEFAULT_DEVICES)]
    #[serde(default = "default_devices")]
    pub devices: String,
    /// libtorch CPU threads per local worker.
    #[arg(long)]
    #[serde(default)]
    pub worker_threads: Option<u32>,
    /// A lease not renewed by heartbeats for this long is requeued (milliseconds).
    #[arg(long, default_value_t = DEFAULT_LEASE_TIMEOUT_MS)]
    #[serde(default = "default_lease_timeout_ms")]
    pub lease_timeout_ms: u64,
    /// Unsuccessful attempts before a shard is reported failed.
    #[arg(long, default_value_t = DEFAULT_MAX_FAILURES)]
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    /// Do not duplicate the oldest in-flight shards when the queue is empty.
    #[arg(long)]
    #[serde(default)]
    pub no_speculation: bool,
    /// What a bad sample (undecodable, missing, too large) does to the run.
    #[arg(long, value_enum, default_value = "skip")]
    #[serde(default = "default_on_bad_sample")]
    pub on_bad_sample: OnBadSample,
    /// File holding the shared token every worker must present (else $TRESNET_TOKEN; none = open).
    #[arg(long)]
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Where completed shards are journaled: a path or an object-store URL (s3://bucket/runs/x/journal),
    /// so a run can resume on another machine after losing the coordinator's disk. Default OUT/journal.
    #[arg(long, value_name = "URL")]
    #[serde(default)]
    pub journal: Option<String>,
    /// On resume, move a journal record that fails verification (damaged, truncated, or another
    /// job's) into the journal's quarantine/ with a warning and compute its shard again, instead of
    /// stopping with an error naming it.
    #[arg(long)]
    #[serde(default)]
    pub quarantine_corrupt_journal: bool,
    /// Serve /healthz, /readyz and Prometheus /metrics on this address (port 0: any free port; the bound
    /// address is printed).
    #[arg(long)]
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Keep serving /metrics this many seconds after the reports are written, so that the final values
    /// get scraped (SIGTERM or Ctrl-C ends the wait).
    #[arg(long, default_value_t = 0, requires = "metrics_listen")]
    #[serde(default)]
    pub metrics_linger_secs: u64,
    /// Serve gRPC over TLS with this PEM certificate chain (workers then use https:// URLs).
    #[arg(long, requires = "tls_key")]
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// CA certificate (PEM) handed to local workers to verify --tls-cert (default: --tls-cert itself,
    /// which works for a self-signed certificate or a chain that includes its CA).
    #[arg(long, requires = "tls_cert")]
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// On SIGTERM or SIGINT the run stops leasing and waits this long (milliseconds) for the results of
    /// shards in flight, journals them, and exits non-zero without a report; a rerun of the same command
    /// resumes. A second signal exits at once.
    #[arg(long, default_value_t = crate::run::DEFAULT_DRAIN_TIMEOUT.as_millis() as u64)]
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// Extra arguments passed to each local worker (e.g. --coordinator-patience-ms=600000).
    #[arg(long, allow_hyphen_values = true, num_args = 1)]
    #[serde(default)]
    pub worker_arg: Vec<String>,
    /// Object-store client settings: for the listing and the journal, and handed to local workers.
    #[command(flatten)]
    #[serde(flatten, with = "StoreArgsDef")]
    pub store: StoreArgs,
    /// Sweep `[run]` keys that are no `run` flag (refused by name; never set from the command line).
    #[arg(skip)]
    #[serde(flatten)]
    pub unknown: std::collections::BTreeMap<String, toml::Value>,
}

fn default_drain_timeout_ms() -> u64 {
    crate::run::DEFAULT_DRAIN_TIMEOUT.as_millis() as u64
}

fn default_local_workers() -> u32 {
    DEFAULT_LOCAL_WORKERS
}

fn default_devices() -> String {
    DEFAULT_DEVICES.into()
}

fn default_lease_timeout_ms() -> u64 {
    DEFAULT_LEASE_TIMEOUT_MS
}

fn default_max_failures() -> u32 {
    DEFAULT_MAX_FAILURES
}

fn default_on_bad_sample() -> OnBadSample {
    OnBadSample::Skip
}

/// Serde's view of [`StoreArgs`] (tresnet_common::storage, which does not derive `Deserialize`):
/// a remote derive, so a field added there fails to compile here instead of being silently ignored.
#[derive(Deserialize)]
#[serde(remote = "StoreArgs")]
struct StoreArgsDef {
    #[serde(default = "default_store_timeout_ms")]
    store_timeout_ms: u64,
    #[serde(default = "default_store_retries")]
    store_retries: usize,
    #[serde(default = "default_store_retry_timeout_ms")]
    store_retry_timeout_ms: u64,
}

fn default_store_timeout_ms() -> u64 {
    StoreArgs::default().store_timeout_ms
}

fn default_store_retries() -> usize {
    StoreArgs::default().store_retries
}

fn default_store_retry_timeout_ms() -> u64 {
    StoreArgs::default().store_retry_timeout_ms
}

/// The server's TLS from `--tls-cert`/`--tls-key` (both or neither, clap enforces), and `--tls-ca`
/// checked now so a bad CA file fails before any worker starts; shared by `run` and `bench`.
fn server_tls(
    cert: &Option<std::path::PathBuf>,
    key: &Option<std::path::PathBuf>,
    ca: &Option<std::path::PathBuf>,
) -> anyhow::Result<Option<tresnet_common::protocol::tls::ServerTls>> {
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some(
            tresnet_common::protocol::tls::ServerTls::load(cert, key)
                .map_err(anyhow::Error::new)?,
        ),
        _ => None,
    };
    if let Some(ca) = ca {
        tresnet_common::protocol::tls::client_config(Some(ca), None)?;
    }
    Ok(tls)
}

impl RunArgs {
    pub fn into_config(self) -> anyhow::Result<RunConfig> {
        self.preprocess.validate()?;
        if self.batching.batch_size == 0 || self.outputs.top_k == 0 {
            anyhow::bail!("--batch-size and --top-k must be positive");
        }
        if self.model.fold_bn && self.model.no_fold_bn {
            anyhow::bail!("--fold-bn and --no-fold-bn contradict each other");
        }
        if self.outputs.counts_only && self.outputs.save_logits != SaveLogits::None {
            anyhow::bail!("--counts-only ships no per-sample data, so it cannot --save-logits");
        }
        if self.local_workers == 0 && self.listen.is_none() {
            anyhow::bail!("no workers: give --local-workers N or --listen ADDR");
        }
        if let Some(key) = self.unknown.keys().next() {
            anyhow::bail!("unknown run setting {key:?}");
        }
        let tls = server_tls(&self.tls_cert, &self.tls_key, &self.tls_ca)?;
        Ok(RunConfig {
            model: self.model,
            data: self.data,
            preprocess: self.preprocess,
            outputs: self.outputs,
            batching: self.batching,
            shard_size: self.shard_size,
            out: self.out,
            local_workers: self.local_workers,
            listen: self.listen,
            worker_devices: self.devices,
            worker_threads: self.worker_threads,
            worker_extra_args: self.worker_arg,
            lease_timeout: Duration::from_millis(self.lease_timeout_ms),
            max_failures: self.max_failures,
            speculative: !self.no_speculation,
            fail_on_bad_sample: self.on_bad_sample == OnBadSample::Fail,
            token: tresnet_common::protocol::auth::load_token(self.token_file.as_deref())
                .map_err(anyhow::Error::msg)?,
            journal: self.journal,
            on_bad_record: if self.quarantine_corrupt_journal {
                OnBadRecord::Quarantine
            } else {
                OnBadRecord::Refuse
            },
            metrics_listen: self.metrics_listen,
            metrics_linger: Duration::from_secs(self.metrics_linger_secs),
            tls,
            tls_worker_ca: self.tls_ca,
            store: self.store,
            drain_timeout: Duration::from_millis(self.drain_timeout_ms),
        })
    }
}

/// `tresnet-coordinator bench`: the model as for `run`, the pool flags of `run` (same names and
/// meaning), and the measurement's shape.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Input side (a multiple of 32).
    #[arg(long, default_value_t = 224, value_parser = clap::value_parser!(u32).range(32..=4096))]
    pub resolution: u32,
    /// Images per forward pass on every device.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// Length of the timed window every device shares.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Untimed passes per device before it reports ready.
    #[arg(long, default_value_t = 3)]
    pub warmup: u32,
    /// Output directory for bench.json and bench.md (created).
    #[arg(long)]
    pub out: PathBuf,
    /// Spawn this many local tresnet-worker processes on loopback.
    #[arg(long, default_value_t = DEFAULT_LOCAL_WORKERS)]
    pub local_workers: u32,
    /// Remote workers to wait for besides the local ones (they attach to --listen as for `run`).
    #[arg(long, default_value_t = 0)]
    pub expect_workers: u32,
    /// Wait for remote workers on this address (see `run --listen`).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Devices of each local worker: cpu, or cuda:0,cuda:1,...
    #[arg(long, default_value = DEFAULT_DEVICES)]
    pub devices: String,
    /// libtorch CPU threads per local worker.
    #[arg(long)]
    pub worker_threads: Option<u32>,
    /// How long every expected worker has to attach, load the model and warm up (seconds); one that
    /// has not is named in the error.
    #[arg(long, default_value_t = crate::pool_bench::DEFAULT_READY_TIMEOUT.as_secs())]
    pub ready_timeout_secs: u64,
    /// Exit with status 3 when a device is flagged slow (default: flagged in the tables, exit 0).
    #[arg(long)]
    pub fail_on_slow: bool,
    /// File holding the shared token every worker must present (else $TRESNET_TOKEN; none = open).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Serve gRPC over TLS with this PEM certificate chain (workers then use https:// URLs).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA certificate (PEM) handed to local workers to verify --tls-cert (default: --tls-cert itself).
    #[arg(long, requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,
    /// Extra arguments passed to each local worker (test hooks such as --debug-batch-delay-ms).
    #[arg(long, allow_hyphen_values = true, num_args = 1)]
    pub worker_arg: Vec<String>,
}

impl BenchArgs {
    pub fn into_config(self) -> anyhow::Result<crate::pool_bench::PoolBenchConfig> {
        if self.model.synthetic {
            anyhow::bail!("bench times the network, and --synthetic has none: give --weights");
        }
        let Some(weights) = self.model.weights.clone() else {
            anyhow::bail!("bench needs --weights");
        };
        if !self.resolution.is_multiple_of(32) {
            anyhow::bail!(
                "--resolution {} is not a multiple of 32 (TResNet's total stride)",
                self.resolution
            );
        }
        if !(self.seconds.is_finite() && self.seconds > 0.0 && self.seconds <= 3600.0) {
            anyhow::bail!(
                "--seconds {} must be a positive number of seconds (at most an hour)",
                self.seconds
            );
        }
        let workers = self.local_workers + self.expect_workers;
        if workers == 0 {
            anyhow::bail!("no workers: give --local-workers N or --listen ADDR --expect-workers N");
        }
        if self.expect_workers > 0 && self.listen.is_none() {
            anyhow::bail!(
                "--expect-workers needs --listen ADDR for the remote workers to attach to"
            );
        }
        if self.ready_timeout_secs == 0 {
            anyhow::bail!("--ready-timeout-secs must be positive");
        }
        let tls = server_tls(&self.tls_cert, &self.tls_key, &self.tls_ca)?;
        let weights = std::path::absolute(&weights)
            .map_err(|e| anyhow::anyhow!("weights {}: {e}", weights.display()))?;
        Ok(crate::pool_bench::PoolBenchConfig {
            model: self.model,
            weights,
            resolution: self.resolution,
            batch_size: self.batch_size,
            duration: Duration::from_secs_f64(self.seconds),
            warmup: self.warmup,
            out: self.out,
            local_workers: self.local_workers,
            expected_workers: workers,
            listen: self.listen,
            worker_devices: self.devices,
            worker_threads: self.worker_threads,
            worker_extra_args: self.worker_arg,
            ready_timeout: Duration::from_secs(self.ready_timeout_secs),
            fail_on_slow: self.fail_on_slow,
            token: tresnet_common::protocol::auth::load_token(self.token_file.as_deref())
                .map_err(anyhow::Error::msg)?,
            tls,
            tls_worker_ca: self.tls_ca,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{Cli, Command, parse_shard_size, parse_size};
    use clap::Parser;

    fn fold_bn_of(extra: &[&str]) -> bool {
        let mut argv = vec!["tresnet-coordinator", "run", "--model", "tresnet_m"];
        argv.extend(["--weights", "w.pth", "--data", "d", "--out", "o"]);
        argv.extend(extra);
        let Command::Run(args) = Cli::try_parse_from(argv).unwrap().command else {
            panic!("not a run");
        };
        args.into_config().unwrap().model.folds_bn()
    }

    #[test]
    fn batchnorm_is_folded_by_default_only_in_fp32() {
        assert!(fold_bn_of(&[]));
        assert!(!fold_bn_of(&["--precision", "fp16"]));
        assert!(!fold_bn_of(&["--precision", "bf16"]));
        assert!(fold_bn_of(&["--precision", "bf16", "--fold-bn"]));
        assert!(!fold_bn_of(&["--no-fold-bn"]));
        let both = [
            "x",
            "run",
            "--model",
            "m",
            "--data",
            "d",
            "--out",
            "o",
            "--fold-bn",
        ];
        assert!(Cli::try_parse_from(both.iter().chain(&["--no-fold-bn"])).is_err());
    }

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12XB").unwrap_err().to_string().contains("XB"));
        assert!(parse_size("99999999999999GiB").is_err());
        assert_eq!(parse_shard_size("4GiB"), Ok(4 << 30));
        assert!(
            parse_shard_size("5GiB")
                .unwrap_err()
                .to_string()
                .contains("5 GB")
        );
    }
}
