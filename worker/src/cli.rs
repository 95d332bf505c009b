//! Command-line interface of `tresnet-worker`: flags parsed with clap, validated into config structs.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::device::{DeviceSpec, Precision};
use crate::model::ModelName;

#[derive(Debug, Parser)]
#[command(
    name = "tresnet-worker",
    version,
    about = "TResNet worker: runs the model through libtorch",
    long_about = "TResNet worker: runs the TResNet family (M, L, XL, v2-L) through libtorch.\n\
                  The single-process tools below need no coordinator."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compute logits for a float32 NCHW .npy batch (values in [0, 1]) and write them as .npy.
    Infer(InferArgs),
}

/// How conv weights and activations are laid out in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MemoryFormat {
    /// channels-last on CUDA (fastest with cuDNN), contiguous NCHW on CPU.
    Auto,
    Contiguous,
    ChannelsLast,
}

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

fn parse_model(s: &str) -> Result<ModelName, String> {
    s.parse()
}

fn parse_device(s: &str) -> Result<DeviceSpec, String> {
    s.parse()
}
