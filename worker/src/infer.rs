//! `tresnet-worker infer`: logits for an `.npy` batch, the reference path for parity checks.

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};
use tresnet_common::checkpoint::CheckpointLayout;
use tresnet_common::npy::{self, NpyError};

use crate::cli::{InferArgs, MemoryFormat};
use crate::device::DeviceError;
use crate::model::{BuildOptions, ForwardError, LoadError, LoadedModel, ModelName, load_model};

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Npy(#[from] NpyError),
    #[error("input {path}: {source}")]
    Input {
        path: PathBuf,
        #[source]
        source: ForwardError,
    },
    #[error("input {path}: element {index} is {value} (inputs must be finite)")]
    NotFinite {
        path: PathBuf,
        index: usize,
        value: f32,
    },
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("--leaky-slope {0} is outside [0, 1]")]
    LeakySlope(f64),
}

/// What `infer` did, for the caller to print.
#[derive(Debug)]
pub struct InferSummary {
    pub images: usize,
    pub num_classes: i64,
    pub layout: CheckpointLayout,
    pub device: Device,
}

/// Validated settings of one `infer` invocation.
#[derive(Debug, Clone)]
pub struct InferConfig {
    pub model: ModelName,
    pub weights: PathBuf,
    pub input: PathBuf,
    pub output: PathBuf,
    pub opts: BuildOptions,
    pub batch_size: usize,
    pub leaky_slope: Option<f64>,
}

impl InferConfig {
    pub fn from_args(a: &InferArgs) -> Result<Self, InferError> {
        let device = a.device.resolve()?;
        a.precision.check_device(device)?;
        if let Some(s) = a.leaky_slope
            && !(0.0..=1.0).contains(&s)
        {
            return Err(InferError::LeakySlope(s));
        }
        if let Some(t) = a.threads {
            tch::set_num_threads(t as i32);
        }
        let channels_last = match a.memory_format {
            MemoryFormat::Auto => device != Device::Cpu,
            MemoryFormat::Contiguous => false,
            MemoryFormat::ChannelsLast => true,
        };
        Ok(InferConfig {
            model: a.model,
            weights: a.weights.clone(),
            input: a.input.clone(),
            output: a.output.clone(),
            opts: BuildOptions {
                device,
                kind: a.precision.kind(),
                fold_bn: !a.no_fold_bn,
                channels_last,
            },
            batch_size: a.batch_size as usize,
            leaky_slope: a.leaky_slope,
        })
    }
}

/// Loads the model named by the config.
pub fn load(cfg: &InferConfig) -> Result<LoadedModel, InferError> {
    let mut arch = cfg.model.config();
    if let Some(s) = cfg.leaky_slope {
        arch.stem_slope = s;
        arch.block_slope = s;
    }
    Ok(load_model(cfg.model, &arch, &cfg.weights, &cfg.opts)?)
}

/// Reads an input batch and checks that it is finite.
pub fn read_input(path: &Path) -> Result<Tensor, InferError> {
    let arr = npy::read_f32(path)?;
    if let Some(i) = arr.data.iter().position(|v| !v.is_finite()) {
        return Err(InferError::NotFinite {
            path: path.to_path_buf(),
            index: i,
            value: arr.data[i],
        });
    }
    let shape: Vec<i64> = arr.shape.iter().map(|&d| d as i64).collect();
    Ok(Tensor::from_slice(&arr.data).view(shape.as_slice()))
}

/// Runs the model over `x` in chunks of `batch_size`, returning float32 logits on the CPU.
pub fn logits(
    model: &crate::model::TResNet,
    x: &Tensor,
    batch_size: usize,
) -> Result<Tensor, ForwardError> {
    model.check_input(x)?;
    let n = x.size()[0];
    let mut outs = Vec::new();
    let mut start = 0;
    while start < n {
        let len = (batch_size as i64).min(n - start);
        let y = model.forward(&x.narrow(0, start, len))?;
        outs.push(y.to_kind(Kind::Float).to_device(Device::Cpu));
        start += len;
    }
    Ok(Tensor::cat(&outs, 0))
}

/// The whole command: load, read, forward, write.
pub fn run(cfg: &InferConfig) -> Result<InferSummary, InferError> {
    let loaded = load(cfg)?;
    let x = read_input(&cfg.input)?;
    let y = logits(&loaded.model, &x, cfg.batch_size).map_err(|source| InferError::Input {
        path: cfg.input.clone(),
        source,
    })?;
    let shape: Vec<usize> = y.size().iter().map(|&d| d as usize).collect();
    let data = Vec::<f32>::try_from(y.flatten(0, -1)).expect("logits are float32 on the cpu");
    npy::write_f32(&cfg.output, &shape, &data)?;
    Ok(InferSummary {
        images: shape[0],
        num_classes: loaded.num_classes,
        layout: loaded.layout,
        device: cfg.opts.device,
    })
}
