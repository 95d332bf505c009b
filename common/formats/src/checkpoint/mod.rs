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

/// A float tensor holding NaN or infinite values: every logit computed through it is suspect, so a
/// checkpoint with one is refused at load rather than evaluated into made-up accuracy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tensor {key} holds {nan} NaN and {inf} infinite values among its {numel}")]
pub struct NonFiniteTensor {
    pub key: String,
    pub nan: usize,
    pub inf: usize,
    pub numel: usize,
}

/// The float tensors of `sd` that hold NaN or infinite values, in key order.
pub fn non_finite_tensors(sd: &StateDict) -> Vec<NonFiniteTensor> {
    sd.iter()
        .filter_map(|(key, t)| {
            let (nan, inf) = count_non_finite(t);
            (nan + inf > 0).then(|| NonFiniteTensor {
                key: key.clone(),
                nan,
                inf,
                numel: t.numel(),
            })
        })
        .collect()
}

/// (NaN, infinite) value counts of a float tensor; integers are always finite.
fn count_non_finite(t: &RawTensor) -> (usize, usize) {
    fn tally(values: impl Iterator<Item = f64>) -> (usize, usize) {
        values.fold((0, 0), |(nan, inf), v| {
            (
                nan + usize::from(v.is_nan()),
                inf + usize::from(v.is_infinite()),
            )
        })
    }
    let es = t.dtype.size_bytes();
    let raw = t.data.chunks_exact(es);
    match t.dtype {
        DType::F64 => tally(raw.map(|b| f64::from_le_bytes(b.try_into().unwrap()))),
        DType::F32 => tally(raw.map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)),
        DType::F16 => tally(raw.map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f64())),
        DType::BF16 => tally(raw.map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f64())),
        _ => (0, 0),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_tensors_are_named_with_their_counts() {
        let mut sd = StateDict::new();
        sd.insert("a.weight".into(), RawTensor::from_f32(vec![2], &[1.0, 2.0]));
        sd.insert(
            "head.fc.bias".into(),
            RawTensor::from_f32(vec![3], &[f32::NAN, f32::INFINITY, f32::NAN]),
        );
        let half_inf = RawTensor {
            dtype: DType::F16,
            shape: vec![2],
            data: [half::f16::NEG_INFINITY, half::f16::ONE]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        };
        sd.insert("b.h".into(), half_inf);
        let bad = non_finite_tensors(&sd);
        assert_eq!(
            bad.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                "tensor b.h holds 0 NaN and 1 infinite values among its 2",
                "tensor head.fc.bias holds 2 NaN and 1 infinite values among its 3",
            ]
        );
        sd.retain(|k, _| k == "a.weight");
        assert!(non_finite_tensors(&sd).is_empty());
    }
}
