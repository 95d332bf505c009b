//! Command-line interface of `tresnet-worker`: flags parsed with clap, validated into config structs.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use tresnet_common::preprocess::{CropMode, DEFAULT_CROP_PCT};

use crate::device::{DeviceError, DeviceSpec, Precision};
use crate::model::{ModelName, UnknownModel};

#[derive(Debug, Parser)]
#[command(
    name = "tresnet-worker",
    version,
    about = "TResNet worker: runs the model through libtorch",
    long_about = "TResNet worker: runs the TResNet family (M, L, XL, v2-L) through libtorch.\n\
                  Without a subcommand it joins a coordinator (--coordinator URL --devices ...);\n\
                  the single-process tools below need no coordinator.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub join: JoinArgs,
}

/// Flags of the default mode: join a coordinator and evaluate the shards it leases.
#[derive(Debug, clap::Args)]
pub struct JoinArgs {
    /// Coordinator URL, e.g. http://10.0.0.5:7000.
    #[arg(long, env = "TRESNET_COORDINATOR")]
    pub coordinator: Option<String>,
    /// Devices to run on, one executor each: cpu, or cuda:0,cuda:1,...
    #[arg(long, default_value = "cpu", value_delimiter = ',', value_parser = parse_device)]
    pub devices: Vec<DeviceSpec>,
    /// Name reported to the coordinator (default: hostname-pid).
    #[arg(long)]
    pub worker_id: Option<String>,
    /// Shards in flight at once (prefetch: the next shard is fetched while one computes).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub prefetch_shards: u32,
    /// Threads decoding and resizing images (default: the number of CPUs).
    #[arg(long)]
    pub decode_threads: Option<usize>,
    /// libtorch CPU threads for the forward pass (default: libtorch's choice).
    #[arg(long)]
    pub threads: Option<u32>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,
    /// File holding the coordinator's shared token (else $TRESNET_TOKEN).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// PEM CA certificate that the coordinator's TLS certificate must chain to (https:// URLs; default:
    /// the system's roots).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Name to verify the coordinator's certificate against (default: the URL's host).
    #[arg(long)]
    pub tls_domain: Option<String>,
    /// Serve /healthz, /readyz and Prometheus /metrics on this address (port 0: any free port; the bound
    /// address is printed).
    #[arg(long)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Folder of the node's dataset cache: objects fetched from object stores (s3://, gs://, az://) are
    /// kept here, keyed by dataset fingerprint, object URL, range and size, so the next job on the
    /// same dataset reads them from disk. Workers of one node may share it. Default:
    /// $XDG_CACHE_HOME/tresnet-eval/datasets (else ~/.cache/tresnet-eval/datasets).
    #[arg(long, env = "TRESNET_DATASET_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Bound the dataset cache's size; the least recently used entries are evicted beyond it
    /// (default: unbounded).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub cache_max_mb: Option<u64>,
    /// Fetch every object from its store; no dataset cache.
    #[arg(long, conflicts_with_all = ["cache_dir", "cache_max_mb"])]
    pub no_cache: bool,
    #[command(flatten)]
    pub store: tresnet_common::storage::StoreArgs,
    /// Per-sample jobs: keep each shard's logits on the devices and gather them to the first device
    /// (NCCL on GPUs) for one device-to-host copy and one scoring pass per shard, instead of a copy
    /// per batch from every device.
    #[arg(long)]
    pub gather_logits: bool,
    /// Deadline of each RPC to the coordinator, in milliseconds. The HTTP/2 keepalive notices a frozen or
    /// partitioned coordinator within about as long, also while a shard's results stream to it.
    #[arg(long, default_value_t = crate::link::DEFAULT_RPC_TIMEOUT.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub rpc_timeout_ms: u64,
    /// How long to keep retrying, with backoff, a coordinator that does not answer (not listening yet,
    /// frozen, partitioned), in milliseconds; then the worker exits with an error naming it.
    #[arg(long, default_value_t = crate::link::DEFAULT_COORDINATOR_PATIENCE.as_millis() as u64)]
    pub coordinator_patience_ms: u64,
    /// When a job leaves the model layout open (`--memory-format auto`, no BN flag), time the
    /// candidates at model load and keep the fastest (true), or take the fixed rule without measuring
    /// (false: BN as the precision suggests, channels-last on CUDA, contiguous on CPU), which makes
    /// reruns bit-identical; the test suite sets TRESNET_MEASURE_LAYOUT=false for its exact
    /// comparisons across runs.
    #[arg(long, env = "TRESNET_MEASURE_LAYOUT", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub measure_layout: bool,
    /// Parse the flags, print the settings and exit 0 without joining: tests/tests/k8s.rs runs the
    /// manifests' command lines through it, so a renamed flag fails a test instead of a deployment.
    #[arg(long, hide = true)]
    pub check_args: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compute logits for a float32 NCHW .npy batch (values in [0, 1]) and write them as .npy.
    Infer(InferArgs),
    /// Decode and preprocess one image as timm's eval transform does; write float32 [1, 3, H, W] .npy.
    Preprocess(PreprocessArgs),
    /// Forward-pass throughput on one or more devices (synthetic input, no data loading), as JSON.
    Bench(BenchArgs),
    /// Run the node-local collectives (barrier, all-reduce, gather) on the devices and check every
    /// result exactly; prints which backend ran (nccl or local) and its timings as JSON.
    CollectiveCheck(CollectiveCheckArgs),
}

/// How conv weights and activations are laid out in memory. `auto`: `bench` and the join mode measure
/// the layouts at model load and keep the fastest (`tuning.rs`); `infer`, the parity reference, takes
/// channels-last on CUDA and contiguous on CPU without measuring.
pub use tresnet_common::job::MemoryFormat;

#[derive(Debug, clap::Args)]
pub struct InferArgs {
    /// Model variant (timm name; a pretrained tag such as `.miil_in1k_448` is accepted and ignored).
    #[arg(long, value_parser = parse_model)]
    pub model: ModelName,
    /// Checkpoint: timm `.pth`/`.safetensors` or an official MIIL `.pth` (layout detected by key names).
    #[arg(long)]
    pub weights: PathBuf,
    /// Input batch: float32 `.npy` of shape [N, 3, H, W], RGB in [0, 1], H and W multiples of 4 (>= 32).
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write float32 logits [N, classes] as `.npy`.
    #[arg(long)]
    pub output: PathBuf,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: DeviceSpec,
    /// Precision of weights and activations (fp16 needs CUDA); logits are always written as float32.
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: Precision,
    /// Keep BatchNorm separate instead of folding it into the convolutions at load time.
    #[arg(long)]
    pub no_fold_bn: bool,
    /// Memory layout of activations and conv weights.
    #[arg(long, value_enum, default_value = "auto")]
    pub memory_format: MemoryFormat,
    /// Images per forward pass; bounds memory for large inputs.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// Override every LeakyReLU slope (the official TResNet-v2 Stanford-Cars code uses 1e-6).
    #[arg(long)]
    pub leaky_slope: Option<f64>,
    /// CPU threads for libtorch's intra-op pool (default: libtorch's choice).
    #[arg(long)]
    pub threads: Option<u32>,
}

#[derive(Debug, clap::Args)]
pub struct PreprocessArgs {
    /// Encoded image (JPEG or PNG).
    #[arg(long)]
    pub image: PathBuf,
    /// Side of the square output.
    #[arg(long, default_value_t = 224, value_parser = clap::value_parser!(u32).range(1..=8192))]
    pub resolution: u32,
    /// center: shorter side to int(resolution / crop_pct), then a center crop (timm);
    /// squish: resize to resolution x resolution, no crop (the official TResNet 448 recipe).
    #[arg(long, default_value = "center", value_parser = parse_crop_mode)]
    pub crop_mode: CropMode,
    /// Fraction of the resized shorter side kept by the center crop.
    #[arg(long, default_value_t = DEFAULT_CROP_PCT)]
    pub crop_pct: f64,
    /// Decode large JPEGs at reduced size in the DCT domain (faster; pixels differ from PIL's).
    #[arg(long)]
    pub dct_scaling: bool,
    /// Refuse images with more pixels (default: Pillow's decompression-bomb limit, 178956970).
    #[arg(long)]
    pub max_pixels: Option<u64>,
    /// Where to write float32 [1, 3, H, W] in [0, 1] as `.npy`.
    #[arg(long)]
    pub output: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Model variant (timm name).
    #[arg(long, value_parser = parse_model)]
    pub model: ModelName,
    /// Checkpoint to load (any layout `infer` reads); its class count sets the head.
    #[arg(long)]
    pub weights: PathBuf,
    /// Devices measured together, one thread each: cpu, or cuda:0,cuda:1,...
    #[arg(long, default_value = "cpu", value_delimiter = ',', value_parser = parse_device)]
    pub devices: Vec<DeviceSpec>,
    /// Input side (a multiple of 32).
    #[arg(long, default_value_t = 224, value_parser = clap::value_parser!(u32).range(32..=4096))]
    pub resolution: u32,
    /// Images per forward pass; several (comma-separated) are measured in turn, one timed window each.
    #[arg(long = "batch-sizes", visible_alias = "batch-size", default_value = "64",
          value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_sizes: Vec<u32>,
    /// Precisions of weights and activations (comma-separated; fp16 needs CUDA); the model is loaded
    /// (and its layout measured) once per precision.
    #[arg(
        long = "precisions",
        visible_alias = "precision",
        value_enum,
        default_value = "fp32",
        value_delimiter = ','
    )]
    pub precisions: Vec<Precision>,
    /// Memory layout of activations and conv weights (auto: measured at load, the fastest kept).
    #[arg(long, value_enum, default_value = "auto")]
    pub memory_format: MemoryFormat,
    /// Keep BatchNorm separate instead of folding it into the convolutions (default: measured).
    #[arg(long, conflicts_with = "fold_bn")]
    pub no_fold_bn: bool,
    /// Fold BatchNorm into the convolutions (default: measured).
    #[arg(long)]
    pub fold_bn: bool,
    /// Untimed passes first (cuDNN autotuning, allocator warm-up).
    #[arg(long, default_value_t = 3)]
    pub warmup: u32,
    /// Length of the timed window.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// CPU threads for libtorch's intra-op pool (default: libtorch's choice).
    #[arg(long)]
    pub threads: Option<u32>,
}

#[derive(Debug, clap::Args)]
pub struct CollectiveCheckArgs {
    /// Devices, one rank each: cpu, or cuda:0,cuda:1,...
    #[arg(long, default_value = "cpu", value_delimiter = ',', value_parser = parse_device)]
    pub devices: Vec<DeviceSpec>,
    /// auto (NCCL where possible), local, or nccl (an error, not a fallback, when NCCL is unavailable).
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: crate::collective::Backend,
    /// Rounds of all-reduce and gather.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Classes of the confusion matrix all-reduced each round.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..=4096))]
    pub classes: i64,
}

// Whatever error type common's parser has: clap takes any that converts into a boxed error.
fn parse_crop_mode(s: &str) -> Result<CropMode, <CropMode as std::str::FromStr>::Err> {
    s.parse()
}

fn parse_model(s: &str) -> Result<ModelName, UnknownModel> {
    s.parse()
}

fn parse_device(s: &str) -> Result<DeviceSpec, DeviceError> {
    s.parse()
}
