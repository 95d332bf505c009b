//! Strict, name-addressed weight loading: modules ask for tensors by timm path, the store checks shapes
//! and, at the end, reports every missing, unexpected and mis-shaped key in one error.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::{self, Display, Write as _};
use std::path::PathBuf;

use tch::{Device, Kind, Tensor};
use tresnet_common::checkpoint::{CheckpointError, DType, RawTensor, StateDict};

/// Where and in which form the built model lives.
#[derive(Debug, Clone, Copy)]
pub struct BuildOptions {
    pub device: Device,
    /// Floating kind of weights and activations (Float, Half or BFloat16).
    pub kind: Kind,
    /// Fold each BatchNorm into the preceding conv at load time (not bit-identical: ~1e-7 relative).
    pub fold_bn: bool,
    /// Store conv weights (and expect activations) in NHWC strides, which cuDNN runs fastest.
    pub channels_last: bool,
}

impl BuildOptions {
    pub fn cpu_f32() -> Self {
        BuildOptions {
            device: Device::Cpu,
            kind: Kind::Float,
            fold_bn: false,
            channels_last: false,
        }
    }

    /// Moves a host f32 tensor to the target device and kind; 4-D tensors get channels_last strides
    /// when asked (tch has no memory-format API, so this is the permute–contiguous–permute idiom).
    pub fn place(&self, t: Tensor) -> Tensor {
        let t = t.to_device(self.device).to_kind(self.kind);
        if self.channels_last && t.dim() == 4 {
            to_channels_last(&t)
        } else {
            t
        }
    }
}

/// Same shape, NHWC strides; libtorch's `suggest_memory_format` then picks channels_last kernels.
pub fn to_channels_last(t: &Tensor) -> Tensor {
    t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// Why a checkpoint does not fit the model.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{path}: checkpoint does not match {model}: {summary}\n{details}")]
    Mismatch {
        path: PathBuf,
        model: String,
        summary: String,
        details: String,
    },
    #[error("{path}: cannot infer the number of classes: {reason}")]
    Classes { path: PathBuf, reason: String },
    /// NaN or infinite weights: the logits would be meaningless, so nothing is evaluated.
    #[error("checkpoint {path}: {tensor} (and {more} more such tensors); the weights are damaged")]
    NonFinite {
        path: PathBuf,
        tensor: tresnet_common::checkpoint::NonFiniteTensor,
        more: usize,
    },
}

#[derive(Debug)]
enum Source {
    Checkpoint(BTreeMap<String, RawTensor>),
    /// No weights: tensors are uninitialised; used to count parameters and to build throwaway models.
    ShapesOnly,
}

/// Hands out tensors by name and remembers what was asked for.
#[derive(Debug)]
pub struct WeightStore {
    source: RefCell<Source>,
    missing: RefCell<Vec<String>>,
    mismatched: RefCell<Vec<String>>,
    params: Cell<i64>,
}

impl WeightStore {
    pub fn from_state_dict(sd: StateDict) -> Self {
        Self::with_source(Source::Checkpoint(sd))
    }

    pub fn shapes_only() -> Self {
        Self::with_source(Source::ShapesOnly)
    }

    fn with_source(source: Source) -> Self {
        WeightStore {
            source: RefCell::new(source),
            missing: RefCell::default(),
            mismatched: RefCell::default(),
            params: Cell::new(0),
        }
    }

    pub fn root(&self) -> Params<'_> {
        Params {
            store: self,
            prefix: String::new(),
        }
    }

    /// Number of trainable-parameter elements requested so far (buffers excluded), as timm counts them.
    pub fn param_count(&self) -> i64 {
        self.params.get()
    }

    /// Shape of a stored tensor, for hyper-parameters that the checkpoint decides (the class count).
    pub fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        match &*self.source.borrow() {
            Source::Checkpoint(m) => m.get(name).map(|t| t.shape.clone()),
            Source::ShapesOnly => None,
        }
    }

    fn take(&self, name: String, shape: &[i64], is_param: bool) -> Tensor {
        if is_param {
            self.params
                .set(self.params.get() + shape.iter().product::<i64>());
        }
        let raw = match &mut *self.source.borrow_mut() {
            Source::ShapesOnly => return Tensor::empty(shape, (Kind::Float, Device::Cpu)),
            Source::Checkpoint(m) => m.remove(&name),
        };
        let Some(raw) = raw else {
            self.missing.borrow_mut().push(name);
            return Tensor::zeros(shape, (Kind::Float, Device::Cpu));
        };
        let got: Vec<i64> = raw.shape.iter().map(|&d| d as i64).collect();
        if got != shape || !raw.dtype.is_float() {
            self.mismatched.borrow_mut().push(format!(
                "{name}: checkpoint has {:?} {got:?}, model expects float {shape:?}",
                raw.dtype
            ));
            return Tensor::zeros(shape, (Kind::Float, Device::Cpu));
        }
        raw_to_tensor(&raw).to_kind(Kind::Float)
    }

    /// Succeeds only if every requested key was present with the right shape and nothing is left over
    /// (`num_batches_tracked` aside, which eval never reads).
    pub fn finish(self, path: &std::path::Path, model: &str) -> Result<(), LoadError> {
        let unexpected: Vec<String> = match self.source.into_inner() {
            Source::Checkpoint(m) => m
                .into_keys()
                .filter(|k| !k.ends_with("num_batches_tracked"))
                .collect(),
            Source::ShapesOnly => Vec::new(),
        };
        let missing = self.missing.into_inner();
        let mismatched = self.mismatched.into_inner();
        if missing.is_empty() && unexpected.is_empty() && mismatched.is_empty() {
            return Ok(());
        }
        let mut details = String::new();
        for (title, list) in [
            ("missing", &missing),
            ("unexpected", &unexpected),
            ("wrong shape", &mismatched),
        ] {
            for k in list {
                let _ = writeln!(details, "  {title}: {k}");
            }
        }
        Err(LoadError::Mismatch {
            path: path.to_path_buf(),
            model: model.to_string(),
            summary: format!(
                "{} missing, {} unexpected, {} wrong shape",
                missing.len(),
                unexpected.len(),
                mismatched.len()
            ),
            details: details.trim_end().to_string(),
        })
    }
}

/// Copies a host tensor into libtorch memory.
pub fn raw_to_tensor(raw: &RawTensor) -> Tensor {
    let kind = match raw.dtype {
        DType::F64 => Kind::Double,
        DType::F32 => Kind::Float,
        DType::F16 => Kind::Half,
        DType::BF16 => Kind::BFloat16,
        DType::I64 => Kind::Int64,
        DType::I32 => Kind::Int,
        DType::I16 => Kind::Int16,
        DType::I8 => Kind::Int8,
        DType::U8 => Kind::Uint8,
        DType::Bool => Kind::Bool,
    };
    let shape: Vec<i64> = raw.shape.iter().map(|&d| d as i64).collect();
    Tensor::from_data_size(&raw.data, &shape, kind)
}

/// A position in the module tree (`body.layer1.0.conv1`), like candle's VarBuilder or tch's nn::Path.
#[derive(Debug, Clone)]
pub struct Params<'a> {
    store: &'a WeightStore,
    prefix: String,
}

impl<'a> Params<'a> {
    pub fn sub(&self, name: impl Display) -> Params<'a> {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        Params {
            store: self.store,
            prefix,
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    /// A trainable parameter (counted), as a host f32 tensor.
    pub fn param(&self, name: &str, shape: &[i64]) -> Tensor {
        self.store.take(self.key(name), shape, true)
    }

    /// A persistent buffer (running statistics; not counted), as a host f32 tensor.
    pub fn buffer(&self, name: &str, shape: &[i64]) -> Tensor {
        self.store.take(self.key(name), shape, false)
    }
}

impl fmt::Display for Params<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.prefix)
    }
}
