//! Reader for `.safetensors` files (a JSON header of names, dtypes and offsets, then raw tensor bytes).

use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use super::{CheckpointError, DType, RawTensor, StateDict};

/// Sniffs the format: an 8-byte little-endian header length that fits the file, then a JSON object.
pub(super) fn looks_like_safetensors(bytes: &[u8]) -> bool {
    let Some(len) = bytes.get(..8) else {
        return false;
    };
    let len = u64::from_le_bytes(len.try_into().expect("slice of 8 bytes"));
    len > 0 && len <= (bytes.len() - 8) as u64 && bytes[8] == b'{'
}

/// Reads every tensor of a safetensors file; the free-form `__metadata__` header entry is not a
/// tensor and is ignored.
pub(super) fn read(path: &Path, bytes: &[u8]) -> Result<StateDict, CheckpointError> {
    let file = SafeTensors::deserialize(bytes).map_err(|e| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("invalid safetensors data: {e}"),
    })?;
    let mut state_dict = StateDict::new();
    for (name, view) in file.iter() {
        let dtype = dtype(view.dtype()).ok_or_else(|| CheckpointError::BadTensor {
            path: path.to_path_buf(),
            key: name.to_owned(),
            reason: format!("unsupported safetensors dtype {:?}", view.dtype()),
        })?;
        state_dict.insert(
            name.to_owned(),
            RawTensor {
                dtype,
                shape: view.shape().to_vec(),
                data: view.data().to_vec(),
            },
        );
    }
    Ok(state_dict)
}

fn dtype(dtype: Dtype) -> Option<DType> {
    Some(match dtype {
        Dtype::F64 => DType::F64,
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::I64 => DType::I64,
        Dtype::I32 => DType::I32,
        Dtype::I16 => DType::I16,
        Dtype::I8 => DType::I8,
        Dtype::U8 => DType::U8,
        Dtype::BOOL => DType::Bool,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing_needs_a_fitting_header_that_opens_an_object() {
        assert!(looks_like_safetensors(
            b"\x02\x00\x00\x00\x00\x00\x00\x00{}"
        ));
        assert!(!looks_like_safetensors(
            b"\x03\x00\x00\x00\x00\x00\x00\x00{}"
        ));
        assert!(!looks_like_safetensors(
            b"\x02\x00\x00\x00\x00\x00\x00\x00[]"
        ));
        assert!(!looks_like_safetensors(
            b"\x00\x00\x00\x00\x00\x00\x00\x00{"
        ));
        assert!(!looks_like_safetensors(b"\x02\x00\x00"));
        assert!(!looks_like_safetensors(
            b"\xff\xff\xff\xff\xff\xff\xff\xff{}"
        ));
    }
}
