//! The model and the dataset as the user names them: the job's parameters before planning turns them
//! into a [`tresnet_common::job::JobSpec`]. `run`'s flags flatten them ([`crate::cli`]) and a sweep's
//! `[run]` table deserialises into them, so both are views of the same structs, which
//! [`crate::run`] plans from.

use std::path::PathBuf;

use clap::Args;
use serde::Deserialize;
use tresnet_common::dataset::DatasetFormat;
use tresnet_common::job::Precision;

/// The model as the user names it; planning turns it into the job's [`ModelSpec`]
/// (tresnet_common::job) by hashing the checkpoint and taking the class count from the dataset.
#[derive(Debug, Clone, Default, PartialEq, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelArgs {
    /// Model variant (timm name: tresnet_m, tresnet_l, tresnet_xl, tresnet_v2_l).
    #[arg(long)]
    pub model: String,
    /// Checkpoint (timm .pth/.safetensors or official MIIL .pth), readable by every worker.
    #[arg(long, required_unless_present = "synthetic")]
    pub weights: Option<PathBuf>,
    /// fp32, fp16 or bf16 (fp16 needs CUDA).
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    pub precision: Precision,
    /// Keep BatchNorm unfolded on the workers (the default for fp16/bf16: on GPUs libtorch adds a
    /// folded bias in a separate kernel, measured ~6% slower than cuDNN's fused BatchNorm; docs/gpu.md).
    #[arg(long, conflicts_with = "fold_bn")]
    pub no_fold_bn: bool,
    /// Fold BatchNorm into the convolutions at load time (the default for fp32, where it is faster).
    #[arg(long)]
    pub fold_bn: bool,
    /// Override every LeakyReLU slope (the official v2 Stanford-Cars code uses 1e-6).
    #[arg(long)]
    pub leaky_slope: Option<f64>,
    /// Memory layout on the workers: auto (each worker times contiguous and channels-last at model
    /// load and keeps the faster), contiguous or channels-last (forced, nothing measured).
    #[arg(long, value_enum, default_value_t = tresnet_common::job::MemoryFormat::Auto)]
    pub memory_format: tresnet_common::job::MemoryFormat,
    /// Benchmark mode: workers return synthetic logits without loading data or a model. Never accuracy.
    #[arg(long)]
    pub synthetic: bool,
}

impl ModelArgs {
    /// Whether the workers measure BN folded against kept at load: when neither flag forces it.
    pub fn measures_fold_bn(&self) -> bool {
        !(self.fold_bn || self.no_fold_bn)
    }

    /// Whether BatchNorm is folded: as asked, else only in fp32 (see `--no-fold-bn`); when measured
    /// (neither flag), the candidate a worker tries first.
    pub fn folds_bn(&self) -> bool {
        if self.fold_bn || self.no_fold_bn {
            self.fold_bn
        } else {
            self.precision == Precision::Fp32
        }
    }
}

/// The dataset as the user names it; planning lists it into the job's `DataSpec`.
#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// Dataset location: a path, file://, s3://, gs://, az:// or memory:// URL.
    #[arg(long)]
    pub data: String,
    /// Dataset format: imagefolder, imagenet, imagenet-real, imagenet-v2, imagenet-a, imagenet-r,
    /// imagenet-sketch, cifar10, cifar100, flowers102, cars, manifest, tar.
    #[arg(long, default_value = "imagefolder", value_parser = parse_format)]
    pub format: DatasetFormat,
    /// Number of model outputs (default: the dataset's class count where its format fixes one, else the
    /// checkpoint's head; it must equal the head).
    #[arg(long)]
    pub num_classes: Option<u32>,
    /// Let manifest rows name objects anywhere in the dataset's store (`/x.jpg`, a URL of the same
    /// store); without it a row outside the manifest's folder is refused. Part of the job identity.
    #[arg(long)]
    pub allow_absolute_paths: bool,
    /// Score on these classes only: `imagenet-a`, `imagenet-r`, or a file of class indices or WNIDs
    /// (one per line). Workers drop the other logits before top-k, loss and confidence; reports use
    /// the subset's own indices (class_subset.csv maps them). Implied by --format imagenet-a/-r.
    #[arg(long, value_name = "NAME|FILE")]
    pub class_subset: Option<String>,
}

impl Default for DataArgs {
    fn default() -> Self {
        Self {
            data: String::new(),
            format: DatasetFormat::ImageFolder,
            num_classes: None,
            allow_absolute_paths: false,
            class_subset: None,
        }
    }
}

impl DataArgs {
    /// The format with `--allow-absolute-paths` applied.
    pub fn dataset_format(&self) -> anyhow::Result<DatasetFormat> {
        with_absolute_paths(self.format.clone(), self.allow_absolute_paths)
    }
}

/// `format` with `--allow-absolute-paths` set; only manifests name paths, so any other format refuses it.
pub fn with_absolute_paths(format: DatasetFormat, allow: bool) -> anyhow::Result<DatasetFormat> {
    match format {
        DatasetFormat::Manifest { file, .. } => Ok(DatasetFormat::Manifest {
            file,
            allow_absolute_paths: allow,
        }),
        other if allow => anyhow::bail!(
            "--allow-absolute-paths applies to manifests only (format {} names no paths)",
            other.name()
        ),
        other => Ok(other),
    }
}

/// `--format`'s parser: [`DatasetFormat`]'s own, its error as the message clap shows.
// Whatever error type common's parser has: clap takes any that converts into a boxed error.
pub fn parse_format(s: &str) -> Result<DatasetFormat, <DatasetFormat as std::str::FromStr>::Err> {
    s.parse()
}
