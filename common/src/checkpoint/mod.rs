//! Native checkpoint readers (PyTorch `.pth` zip and legacy, `.safetensors`) producing host tensors.
//!
//! Nothing here links libtorch: the worker turns [`RawTensor`]s into `tch` tensors. Readers never execute
//! pickled code; unknown Python objects are kept as opaque values so that checkpoints carrying optimizer
//! state, argparse namespaces and the like still load as long as the requested state dict is plain tensors.

mod miil;
mod pickle;
mod pth;
mod safetensors_file;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use miil::{CheckpointLayout, to_timm_layout};

/// Element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F64 | DType::F32 | DType::F16 | DType::BF16)
    }
}

/// A dense, row-major, little-endian tensor held on the host.
#[derive(Clone, PartialEq)]
pub struct RawTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// `numel * dtype.size_bytes()` bytes, row-major, little-endian.
    pub data: Vec<u8>,
}

impl std::fmt::Debug for RawTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawTensor")
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("bytes", &self.data.len())
            .finish()
    }
}

impl RawTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Values widened to f64 (floats and integers); used by remapping and tests, not on hot paths.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        let es = self.dtype.size_bytes();
        self.data
            .chunks_exact(es)
            .map(|b| match self.dtype {
                DType::F64 => f64::from_le_bytes(b.try_into().unwrap()),
                DType::F32 => f32::from_le_bytes(b.try_into().unwrap()) as f64,
                DType::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f64(),
                DType::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f64(),
                DType::I64 => i64::from_le_bytes(b.try_into().unwrap()) as f64,
                DType::I32 => i32::from_le_bytes(b.try_into().unwrap()) as f64,
                DType::I16 => i16::from_le_bytes([b[0], b[1]]) as f64,
                DType::I8 => b[0] as i8 as f64,
                DType::U8 | DType::Bool => b[0] as f64,
            })
            .collect()
    }

    /// Builds an f32 tensor from values (used by remapping and tests).
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Self {
        assert_eq!(shape.iter().product::<usize>(), values.len());
        RawTensor {
            dtype: DType::F32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

/// Tensors by dotted PyTorch name, sorted for stable error messages.
pub type StateDict = BTreeMap<String, RawTensor>;

/// Suffixes of the tensors a checkpoint stores that are not parameters: BatchNorm's running statistics
/// and step count, and the official code's fixed anti-aliasing filter.
const BUFFER_SUFFIXES: [&str; 4] = [
    "running_mean",
    "running_var",
    "num_batches_tracked",
    ".filt",
];

/// The model's parameter count as timm reports it (`sum(p.numel() for p in model.parameters())`):
/// every tensor of the state dict except the buffers.
pub fn parameter_count(sd: &StateDict) -> u64 {
    sd.iter()
        .filter(|(name, _)| !BUFFER_SUFFIXES.iter().any(|s| name.ends_with(s)))
        .map(|(_, t)| t.numel() as u64)
        .sum()
}

/// Errors from reading a checkpoint file; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read checkpoint {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not a checkpoint (expected a PyTorch zip or legacy pickle, or safetensors): {reason}"
    )]
    UnknownFormat { path: PathBuf, reason: String },
    #[error("corrupt or truncated checkpoint {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("checkpoint {path} has no state dict: {reason}")]
    NoStateDict { path: PathBuf, reason: String },
    #[error("checkpoint {path}: tensor {key}: {reason}")]
    BadTensor {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

/// Reads a checkpoint by sniffing its bytes (not its extension) and returns its state dict.
///
/// For pickled checkpoints the state dict is the `state_dict` entry if present, else the `model` entry
/// (the ImageNet-21K and MIIL release conventions), else the top-level dict itself; the wrappers come
/// first because training scripts also keep stray tensors (such as `best_acc1`) at the top level.
/// Non-tensor entries in the selected dict (such as a Python-int `num_batches_tracked`) are skipped.
pub fn load_state_dict(path: &Path) -> Result<StateDict, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    load_state_dict_from_bytes(path, &bytes)
}

/// Like [`load_state_dict`] for bytes already in memory; `path` only labels errors.
pub fn load_state_dict_from_bytes(path: &Path, bytes: &[u8]) -> Result<StateDict, CheckpointError> {
    if bytes.starts_with(b"PK\x03\x04") {
        pth::read_zip(path, bytes)
    } else if bytes.first() == Some(&0x80) {
        pth::read_legacy(path, bytes)
    } else if safetensors_file::looks_like_safetensors(bytes) {
        safetensors_file::read(path, bytes)
    } else if bytes.is_empty() {
        Err(CheckpointError::UnknownFormat {
            path: path.to_path_buf(),
            reason: "the file is empty".into(),
        })
    } else {
        Err(CheckpointError::UnknownFormat {
            path: path.to_path_buf(),
            reason: format!(
                "unrecognised leading bytes {:02x?}",
                &bytes[..bytes.len().min(8)]
            ),
        })
    }
}

/// [`crate::fuzzing`]'s way into the pickle VM: one pickle with opaque persistent ids; the bytes consumed.
pub(crate) fn fuzz_unpickle(bytes: &[u8]) -> Result<usize, String> {
    let (value, consumed) =
        pickle::unpickle(bytes, &mut pickle::OpaquePersistentIds).map_err(|e| e.to_string())?;
    let _ = (value.describe(), value.dict_get("state_dict"));
    Ok(consumed)
}

/// [`crate::fuzzing`]'s way into the safetensors reader without the sniffing.
pub(crate) fn fuzz_safetensors(bytes: &[u8]) -> Result<StateDict, CheckpointError> {
    safetensors_file::read(Path::new("fuzz.safetensors"), bytes)
}
