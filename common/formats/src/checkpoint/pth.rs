//! Readers for `torch.save` files: the zip container (torch >= 1.6) and the legacy stream of pickles.
//!
//! Both formats pickle the saved object with tensors replaced by persistent ids that name a storage
//! record; the pickle is read by [`super::pickle`], the state dict is picked out of the result, and
//! each tensor is copied out of its storage as a dense row-major [`RawTensor`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::Path;

use zip::{CompressionMethod, ZipArchive};

use super::pickle::{
    self, OpaquePersistentIds, PersistentLoad, StorageRef, TensorRef, Value, int_value,
};
use super::{CheckpointError, DType, RawTensor, StateDict};

/// `torch.serialization.MAGIC_NUMBER`, the first pickle of a legacy file.
const LEGACY_MAGIC: u128 = 0x1950a86a20f9469cfc6c;
/// `torch.serialization.PROTOCOL_VERSION`, the second pickle of a legacy file.
const LEGACY_PROTOCOL_VERSION: i64 = 1001;

/// Torch never compresses `data.pkl`; should another writer deflate it, this bounds what inflating
/// it may allocate. A pickle describing a million tensors is around 100 MB.
const MAX_INFLATED_PICKLE_BYTES: u64 = 1 << 30;

/// Slack on top of four times the file size for the bytes all tensors may materialise to. Distinct
/// views of one storage never exceed the storage, so real checkpoints stay near 1x; the bound exists
/// because stride-0 (expanded) or repeated views let a tiny hostile file describe terabytes.
const MATERIALISE_SLACK_BYTES: u64 = 256 << 20;

/// Reads a zip-container checkpoint (`torch.save` since torch 1.6).
pub(super) fn read_zip(path: &Path, bytes: &[u8]) -> Result<StateDict, CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let mut archive = ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| corrupt(format!("cannot open the zip archive: {e}")))?;

    // Torch names the single top-level folder after the file it first saved to (`archive/` in recent
    // versions), so the prefix is discovered rather than assumed.
    let names: Vec<String> = archive
        .file_names()
        .filter_map(Result::ok)
        .map(Into::into)
        .collect();
    let Some(prefix) = names.iter().find_map(|name| {
        let prefix = name.strip_suffix("data.pkl")?;
        let top_level = prefix.is_empty()
            || prefix
                .strip_suffix('/')
                .is_some_and(|dir| !dir.is_empty() && !dir.contains('/'));
        top_level.then(|| prefix.to_owned())
    }) else {
        return Err(CheckpointError::UnknownFormat {
            path: path.to_path_buf(),
            reason: format!(
                "the zip archive has no data.pkl entry, so it is not a PyTorch checkpoint (entries: {})",
                list_preview(names.iter().map(String::as_str))
            ),
        });
    };

    let byteorder_name = format!("{prefix}byteorder");
    if names.contains(&byteorder_name) {
        let order = zip_entry(&mut archive, bytes, &byteorder_name, 64).map_err(&corrupt)?;
        let order = String::from_utf8_lossy(&order);
        if order.trim() != "little" {
            return Err(CheckpointError::UnknownFormat {
                path: path.to_path_buf(),
                reason: format!(
                    "{byteorder_name} says {:?}; only little-endian checkpoints are supported",
                    order.trim()
                ),
            });
        }
    }

    let pkl_name = format!("{prefix}data.pkl");
    let pkl =
        zip_entry(&mut archive, bytes, &pkl_name, MAX_INFLATED_PICKLE_BYTES).map_err(&corrupt)?;
    let mut storages = StorageIds::default();
    let (top, _) =
        pickle::unpickle(&pkl, &mut storages).map_err(|e| corrupt(format!("{pkl_name}: {e}")))?;
    let tensors = select_state_dict(&top).map_err(|reason| CheckpointError::NoStateDict {
        path: path.to_path_buf(),
        reason,
    })?;

    let mut records: HashMap<&str, Cow<'_, [u8]>> = HashMap::new();
    let mut out = Materialiser::new(path, bytes.len());
    for (key, tensor) in tensors {
        let storage_key = tensor.storage.key.as_str();
        if !records.contains_key(storage_key) {
            let name = format!("{prefix}data/{storage_key}");
            let limit = storages.declared_bytes(storage_key).unwrap_or(u64::MAX);
            let record = zip_entry(&mut archive, bytes, &name, limit)
                .map_err(|e| corrupt(format!("storage of tensor {key}: {e}")))?;
            storages
                .check_len(storage_key, record.len())
                .map_err(&corrupt)?;
            records.insert(storage_key, record);
        }
        out.add(key, tensor, &records[storage_key])?;
    }
    Ok(out.finish())
}

/// Reads a legacy checkpoint (`torch.save(..., _use_new_zipfile_serialization=False)`): the pickles
/// magic number, protocol version, sys info, the object and its storage keys, then the storages.
pub(super) fn read_legacy(path: &Path, bytes: &[u8]) -> Result<StateDict, CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let not_legacy = |reason: String| CheckpointError::UnknownFormat {
        path: path.to_path_buf(),
        reason,
    };

    let mut pos = 0;
    let mut next = |loader: &mut dyn PersistentLoad, what: &str| {
        let (value, used) = pickle::unpickle(&bytes[pos..], loader)
            .map_err(|e| format!("{what} pickle (starting at file byte {pos}): {e}"))?;
        pos += used;
        Ok::<_, String>(value)
    };

    // A pickle that is not a torch file fails here, so this is a format error rather than corruption.
    let magic = next(&mut OpaquePersistentIds, "magic number")
        .map_err(|e| not_legacy(format!("not a legacy torch checkpoint: {e}")))?;
    if magic != int_value(LEGACY_MAGIC) {
        return Err(not_legacy(format!(
            "a pickle of {} rather than a legacy torch checkpoint (no magic number)",
            magic.describe()
        )));
    }
    let version = next(&mut OpaquePersistentIds, "protocol version").map_err(&corrupt)?;
    if version != Value::Int(LEGACY_PROTOCOL_VERSION) {
        return Err(corrupt(format!(
            "unsupported legacy protocol version {version:?} (expected {LEGACY_PROTOCOL_VERSION})"
        )));
    }
    let sys_info = next(&mut OpaquePersistentIds, "sys info").map_err(&corrupt)?;
    if sys_info.dict_get("little_endian") == Some(&Value::Bool(false)) {
        return Err(not_legacy(
            "saved on a big-endian machine; only little-endian checkpoints are supported".into(),
        ));
    }
    let mut storages = StorageIds::default();
    let top = next(&mut storages, "object").map_err(&corrupt)?;
    let keys = next(&mut OpaquePersistentIds, "storage keys").map_err(&corrupt)?;
    let Value::List(keys) = keys else {
        return Err(corrupt(format!(
            "the storage key list is {}, not a list",
            keys.describe()
        )));
    };

    // Storages follow in key order, each as a little-endian i64 element count and the raw elements.
    let mut records: HashMap<&str, &[u8]> = HashMap::new();
    for key in &keys {
        let Value::Str(key) = key else {
            return Err(corrupt(format!(
                "storage key {} is not a str",
                key.describe()
            )));
        };
        let Some(elem_size) = storages.elem_size(key) else {
            return Err(corrupt(format!(
                "storage {key} is listed but its type is unknown, so its size cannot be read"
            )));
        };
        let header = bytes
            .get(pos..pos + 8)
            .ok_or_else(|| corrupt(format!("truncated before the header of storage {key}")))?;
        let numel = i64::from_le_bytes(header.try_into().expect("slice of 8 bytes"));
        let len = u64::try_from(numel)
            .ok()
            .and_then(|n| n.checked_mul(elem_size as u64))
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| corrupt(format!("storage {key} declares {numel} elements")))?;
        let start = pos + 8;
        let record = bytes
            .get(start..)
            .and_then(|rest| rest.get(..len))
            .ok_or_else(|| {
                corrupt(format!(
                    "storage {key} needs {len} bytes at byte {start} but the file ends at {}",
                    bytes.len()
                ))
            })?;
        storages.check_len(key, record.len()).map_err(&corrupt)?;
        records.insert(key, record);
        pos = start + len;
    }

    let tensors = select_state_dict(&top).map_err(|reason| CheckpointError::NoStateDict {
        path: path.to_path_buf(),
        reason,
    })?;
    let mut out = Materialiser::new(path, bytes.len());
    for (key, tensor) in tensors {
        let record = records.get(tensor.storage.key.as_str()).ok_or_else(|| {
            corrupt(format!(
                "tensor {key} uses storage {} which the file does not contain",
                tensor.storage.key
            ))
        })?;
        out.add(key, tensor, record)?;
    }
    Ok(out.finish())
}

/// The bytes of one zip entry: borrowed from the file when stored uncompressed (torch's choice, so
/// storages are never copied before materialising), else inflated up to `limit` bytes.
fn zip_entry<'a>(
    archive: &mut ZipArchive<Cursor<&'a [u8]>>,
    bytes: &'a [u8],
    name: &str,
    limit: u64,
) -> Result<Cow<'a, [u8]>, String> {
    let mut file = archive
        .by_name(name)
        .map_err(|e| format!("cannot open zip entry {name}: {e}"))?;
    if file.compression() == CompressionMethod::Stored && !file.encrypted() {
        let start = file.data_start();
        let size = file.compressed_size();
        let range = start.and_then(|start| {
            let start = usize::try_from(start).ok()?;
            let end = start.checked_add(usize::try_from(size).ok()?)?;
            bytes.get(start..end)
        });
        return match range {
            Some(data) if file.size() == size => Ok(Cow::Borrowed(data)),
            _ => Err(format!(
                "zip entry {name} ({size} bytes) extends past the end of the file"
            )),
        };
    }
    if file.size() > limit {
        return Err(format!(
            "zip entry {name} inflates to {} bytes, more than the {limit} expected",
            file.size()
        ));
    }
    let mut data = Vec::new();
    (&mut file)
        .take(limit)
        .read_to_end(&mut data)
        .map_err(|e| format!("cannot inflate zip entry {name}: {e}"))?;
    Ok(Cow::Owned(data))
}

/// What the pickle declared about one storage record.
#[derive(Debug)]
struct StorageDecl {
    storage_type: String,
    elem_size: Option<usize>,
    numel: u64,
}

/// Resolves torch's storage persistent ids and remembers what each storage record should hold.
#[derive(Debug, Default)]
struct StorageIds {
    decls: HashMap<String, StorageDecl>,
}

impl StorageIds {
    fn elem_size(&self, key: &str) -> Option<usize> {
        self.decls.get(key).and_then(|d| d.elem_size)
    }

    fn declared_bytes(&self, key: &str) -> Option<u64> {
        let d = self.decls.get(key)?;
        d.numel.checked_mul(d.elem_size? as u64)
    }

    /// A record shorter than its declaration is truncated; longer is tolerated, as torch does.
    fn check_len(&self, key: &str, len: usize) -> Result<(), String> {
        match (self.declared_bytes(key), self.decls.get(key)) {
            (Some(want), Some(d)) if (len as u64) < want => Err(format!(
                "storage {key} holds {len} bytes but is declared as {} elements of {}",
                d.numel, d.storage_type
            )),
            _ => Ok(()),
        }
    }
}

impl PersistentLoad for StorageIds {
    fn persistent_load(&mut self, pid: Value) -> Result<Value, String> {
        let Value::Tuple(items) = &pid else {
            return Err(format!("persistent id is {}, not a tuple", pid.describe()));
        };
        match items.first() {
            Some(Value::Str(tag)) if tag == "storage" => {}
            // Legacy `torch.save(model)` records a module's source this way; the class is what
            // the pickle expects back.
            Some(Value::Str(tag)) if tag == "module" => {
                return Ok(items.get(1).cloned().unwrap_or(Value::None));
            }
            _ => return Err(format!("unsupported persistent id {pid:?}")),
        }
        // Zip: ('storage', type, key, location, numel); legacy adds view_metadata.
        let (storage_type, key, numel, view) = match items.as_slice() {
            [_, ty, key, _location, numel] => (ty, key, numel, &Value::None),
            [_, ty, key, _location, numel, view] => (ty, key, numel, view),
            _ => return Err(format!("malformed storage persistent id {pid:?}")),
        };
        let Value::Global { module, name } = storage_type else {
            return Err(format!(
                "storage type is {}, not a class",
                storage_type.describe()
            ));
        };
        let Value::Str(key) = key else {
            return Err(format!("storage key is {}, not a str", key.describe()));
        };
        let numel = match numel {
            Value::Int(n) => u64::try_from(*n).ok(),
            _ => None,
        }
        .ok_or_else(|| format!("storage {key} has element count {numel:?}"))?;
        let (dtype, elem_size) = if module == "torch" || module == "torch.cuda" {
            storage_element(name)
        } else {
            (None, None)
        };
        let (elem_offset, elem_len) = match view {
            Value::None => (0, None),
            Value::Tuple(v) => match v.as_slice() {
                [_view_key, Value::Int(offset), Value::Int(len)] => {
                    match (usize::try_from(*offset), usize::try_from(*len)) {
                        (Ok(offset), Ok(len)) => (offset, Some(len)),
                        _ => return Err(format!("storage {key} has a negative view")),
                    }
                }
                _ => return Err(format!("storage {key} has malformed view metadata")),
            },
            other => {
                return Err(format!(
                    "storage {key} view metadata is {}",
                    other.describe()
                ));
            }
        };
        self.decls
            .entry(key.clone())
            .or_insert_with(|| StorageDecl {
                storage_type: format!("{module}.{name}"),
                elem_size,
                numel,
            });
        Ok(Value::Storage(StorageRef {
            key: key.clone(),
            storage_type: format!("{module}.{name}"),
            dtype,
            elem_offset,
            elem_len,
        }))
    }
}

/// Element type and size of a `torch.<name>` storage class; types we cannot represent still report
/// their size so that a legacy file's later storages can be located.
fn storage_element(name: &str) -> (Option<DType>, Option<usize>) {
    let dtype = match name {
        "DoubleStorage" => DType::F64,
        "FloatStorage" => DType::F32,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "LongStorage" => DType::I64,
        "IntStorage" => DType::I32,
        "ShortStorage" => DType::I16,
        "CharStorage" => DType::I8,
        "ByteStorage" => DType::U8,
        "BoolStorage" => DType::Bool,
        "ComplexDoubleStorage" => return (None, Some(16)),
        "ComplexFloatStorage" => return (None, Some(8)),
        "QInt32Storage" => return (None, Some(4)),
        "QInt8Storage" | "QUInt8Storage" | "QUInt4x2Storage" | "QUInt2x4Storage"
        | "UntypedStorage" => return (None, Some(1)),
        _ => return (None, None),
    };
    (Some(dtype), Some(dtype.size_bytes()))
}

/// Picks the state dict out of the unpickled object: a `state_dict` or `model` entry holding tensors
/// (training scripts save `{'state_dict': sd, 'best_acc1': tensor(..), ...}`, MIIL releases
/// `{'model': sd, ...}`), else the object itself. The wrapper entries are tried first because such
/// wrappers may carry stray tensors of their own, while a real state dict never maps those names to
/// a dict.
fn select_state_dict(top: &Value) -> Result<Vec<(&str, &TensorRef)>, String> {
    let has_tensors = |v: &Value| matches!(v, Value::Dict(items) if items.iter().any(|(_, v)| matches!(v, Value::Tensor(_))));
    let chosen = ["state_dict", "model"]
        .into_iter()
        .filter_map(|name| top.dict_get(name))
        .find(|v| has_tensors(v))
        .or_else(|| has_tensors(top).then_some(top));
    let Some(Value::Dict(items)) = chosen else {
        return Err(describe_missing_state_dict(top));
    };
    let mut tensors = Vec::new();
    for (key, value) in items {
        let Value::Tensor(tensor) = value else {
            continue;
        };
        let Value::Str(key) = key else {
            return Err(format!(
                "a tensor is stored under {}, not a str key",
                key.describe()
            ));
        };
        tensors.push((key.as_str(), tensor));
    }
    Ok(tensors)
}

fn describe_missing_state_dict(top: &Value) -> String {
    let Value::Dict(items) = top else {
        return format!(
            "the saved object is {}, not a dict of tensors",
            top.describe()
        );
    };
    let keys = list_preview(items.iter().map(|(k, _)| match k {
        Value::Str(s) => s.clone(),
        other => other.describe(),
    }));
    let mut reason = format!(
        "the saved dict holds no tensors and no 'state_dict' or 'model' entry holding tensors (keys: {keys})"
    );
    for name in ["state_dict", "model"] {
        if let Some(v) = top.dict_get(name) {
            reason.push_str(&format!("; '{name}' is {}", v.describe()));
        }
    }
    reason
}

/// `[a, b, c, ...]` with at most a dozen names, for error messages.
fn list_preview<S: AsRef<str>>(names: impl Iterator<Item = S>) -> String {
    const SHOWN: usize = 12;
    let mut names = names.peekable();
    let mut shown = Vec::new();
    while let Some(name) = names.next() {
        if shown.len() == SHOWN {
            shown.push(format!("... {} more", 1 + names.count()));
            break;
        }
        shown.push(format!("'{}'", name.as_ref()));
    }
    format!("[{}]", shown.join(", "))
}

/// Copies tensors out of storage records into the state dict, with bounds and size checks.
struct Materialiser<'p> {
    path: &'p Path,
    state_dict: StateDict,
    budget: u64,
}

impl<'p> Materialiser<'p> {
    fn new(path: &'p Path, file_len: usize) -> Self {
        Materialiser {
            path,
            state_dict: StateDict::new(),
            budget: (file_len as u64)
                .saturating_mul(4)
                .saturating_add(MATERIALISE_SLACK_BYTES),
        }
    }

    fn add(&mut self, key: &str, tensor: &TensorRef, record: &[u8]) -> Result<(), CheckpointError> {
        let storage = &tensor.storage;
        let Some(dtype) = storage.dtype else {
            return Err(CheckpointError::BadTensor {
                path: self.path.to_path_buf(),
                key: key.to_owned(),
                reason: format!("unsupported storage type {}", storage.storage_type),
            });
        };
        let corrupt = |reason: String| CheckpointError::Corrupt {
            path: self.path.to_path_buf(),
            reason: format!("tensor {key}: {reason}"),
        };
        let es = dtype.size_bytes();
        let record_elems = record.len() / es;
        // A legacy storage view narrows the record to [elem_offset, elem_offset + elem_len).
        let available = record_elems
            .checked_sub(storage.elem_offset)
            .map(|rest| storage.elem_len.map_or(rest, |len| len.min(rest)))
            .ok_or_else(|| {
                corrupt(format!(
                    "storage view starts at element {} of a {record_elems}-element storage {}",
                    storage.elem_offset, storage.key
                ))
            })?;
        let view = &record[storage.elem_offset * es..(storage.elem_offset + available) * es];

        let numel = tensor
            .size
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| corrupt(format!("shape {:?} overflows", tensor.size)))?;
        let nbytes = numel
            .checked_mul(es)
            .ok_or_else(|| corrupt(format!("shape {:?} overflows", tensor.size)))?;
        if nbytes as u64 > self.budget {
            return Err(corrupt(format!(
                "tensors materialise to far more bytes than the file holds (shape {:?}, strides {:?})",
                tensor.size, tensor.stride
            )));
        }
        self.budget -= nbytes as u64;

        let data = if numel == 0 {
            Vec::new()
        } else {
            let last = tensor.size.iter().zip(&tensor.stride).try_fold(
                tensor.storage_offset,
                |acc, (&n, &s)| {
                    (n - 1)
                        .checked_mul(s)
                        .and_then(|span| acc.checked_add(span))
                },
            );
            match last {
                Some(last) if last < available => {}
                _ => {
                    return Err(corrupt(format!(
                        "offset {} with shape {:?} and strides {:?} reaches past the {available} \
                         elements of storage {}",
                        tensor.storage_offset, tensor.size, tensor.stride, storage.key
                    )));
                }
            }
            copy_strided(view, es, tensor)
        };
        self.state_dict.insert(
            key.to_owned(),
            RawTensor {
                dtype,
                shape: tensor.size.clone(),
                data,
            },
        );
        Ok(())
    }

    fn finish(self) -> StateDict {
        self.state_dict
    }
}

/// Copies a non-empty tensor whose every element index has been checked to lie inside `view`.
fn copy_strided(view: &[u8], es: usize, tensor: &TensorRef) -> Vec<u8> {
    let (size, stride) = (&tensor.size, &tensor.stride);
    let numel: usize = size.iter().product();
    let offset = tensor.storage_offset;

    // Row-major strides, ignoring size-1 dims whose stride is arbitrary: the common case is one copy.
    let mut expected = 1;
    let contiguous = size.iter().zip(stride).rev().all(|(&n, &s)| {
        let ok = n == 1 || s == expected;
        expected *= n;
        ok
    });
    if contiguous {
        return view[offset * es..(offset + numel) * es].to_vec();
    }

    let mut out = Vec::with_capacity(numel * es);
    let ndim = size.len();
    let (inner_len, inner_stride) = (size[ndim - 1], stride[ndim - 1]);
    let mut index = vec![0usize; ndim - 1];
    loop {
        let start = offset
            + index
                .iter()
                .zip(stride)
                .map(|(&i, &s)| i * s)
                .sum::<usize>();
        if inner_stride == 1 {
            out.extend_from_slice(&view[start * es..(start + inner_len) * es]);
        } else {
            for j in 0..inner_len {
                let e = start + j * inner_stride;
                out.extend_from_slice(&view[e * es..(e + 1) * es]);
            }
        }
        // Advance the odometer over the outer dims, last fastest.
        let mut d = ndim - 1;
        loop {
            if d == 0 {
                return out;
            }
            d -= 1;
            index[d] += 1;
            if index[d] < size[d] {
                break;
            }
            index[d] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_tensor(size: Vec<usize>, stride: Vec<usize>, offset: usize) -> TensorRef {
        TensorRef {
            storage: StorageRef {
                key: "0".into(),
                storage_type: "torch.FloatStorage".into(),
                dtype: Some(DType::F32),
                elem_offset: 0,
                elem_len: None,
            },
            storage_offset: offset,
            size,
            stride,
        }
    }

    fn storage(n: usize) -> Vec<u8> {
        (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect()
    }

    fn materialise(t: &TensorRef, record: &[u8]) -> Result<Vec<f64>, CheckpointError> {
        let mut m = Materialiser::new(Path::new("x.pth"), record.len());
        m.add("t", t, record)?;
        Ok(m.finish()["t"].to_f64_vec())
    }

    #[test]
    fn strided_views_are_gathered_in_row_major_order() {
        let record = storage(12);
        // Transpose of a 3x4 matrix.
        let t = f32_tensor(vec![4, 3], vec![1, 4], 0);
        assert_eq!(
            materialise(&t, &record).unwrap(),
            [0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]
        );
        // Every other column of the 3x4 matrix, starting at an offset.
        let t = f32_tensor(vec![3, 2], vec![4, 2], 1);
        assert_eq!(materialise(&t, &record).unwrap(), [1., 3., 5., 7., 9., 11.]);
        // Broadcast (stride 0) and 0-dim.
        let t = f32_tensor(vec![2, 3], vec![1, 0], 5);
        assert_eq!(materialise(&t, &record).unwrap(), [5., 5., 5., 6., 6., 6.]);
        let t = f32_tensor(vec![], vec![], 7);
        assert_eq!(materialise(&t, &record).unwrap(), [7.]);
        let t = f32_tensor(vec![0, 3], vec![3, 1], 12);
        assert_eq!(materialise(&t, &record).unwrap(), Vec::<f64>::new());
    }

    #[test]
    fn out_of_range_views_name_the_tensor() {
        let record = storage(12);
        for t in [
            f32_tensor(vec![4, 3], vec![3, 1], 1),
            f32_tensor(vec![13], vec![1], 0),
            f32_tensor(vec![], vec![], 12),
            f32_tensor(vec![usize::MAX, 2], vec![1, 1], 0),
            f32_tensor(vec![1 << 40], vec![0], 0),
        ] {
            let err = materialise(&t, &record).unwrap_err();
            assert!(
                matches!(err, CheckpointError::Corrupt { .. })
                    && err.to_string().contains("tensor t"),
                "{t:?}: {err}"
            );
        }
    }

    #[test]
    fn selection_prefers_wrapped_state_dicts() {
        let t = Value::Tensor(f32_tensor(vec![], vec![], 0));
        let sd = Value::Dict(vec![(Value::Str("w".into()), t.clone())]);
        let top = Value::Dict(vec![
            (Value::Str("best_acc1".into()), t.clone()),
            (Value::Str("state_dict".into()), sd.clone()),
        ]);
        let chosen = select_state_dict(&top).unwrap();
        assert_eq!(chosen.len(), 1);
        assert_eq!(chosen[0].0, "w");

        let bad = Value::Dict(vec![(Value::Int(0), t)]);
        assert!(
            select_state_dict(&bad)
                .unwrap_err()
                .contains("not a str key")
        );
        let none = Value::Dict(vec![(Value::Str("epoch".into()), Value::Int(3))]);
        assert!(select_state_dict(&none).unwrap_err().contains("'epoch'"));
    }
}
