//! Strict reader and writer for NumPy `.npy` arrays of float32 (the `infer`/`preprocess` interchange).
//!
//! Every length in the header is checked against the bytes present, so a truncated or hostile file is
//! an error naming it, never an out-of-bounds read inside libtorch.

use std::path::{Path, PathBuf};

const MAGIC: &[u8] = b"\x93NUMPY";

/// A dense row-major float32 array.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyF32 {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid .npy file: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error(
        "{path}: unsupported array ({reason}); expected little-endian float32 ('<f4') in C order"
    )]
    Unsupported { path: PathBuf, reason: String },
}

pub fn read_f32(path: &Path) -> Result<NpyF32, NpyError> {
    let bytes = std::fs::read(path).map_err(|source| NpyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_f32(path, &bytes)
}

/// Parses `.npy` bytes; `path` only labels errors.
pub fn parse_f32(path: &Path, bytes: &[u8]) -> Result<NpyF32, NpyError> {
    let fmt = |reason: &str| NpyError::Format {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if !bytes.starts_with(MAGIC) {
        return Err(fmt("missing the \\x93NUMPY magic"));
    }
    let (header_len, header_start) = match bytes.get(6) {
        Some(1) => (
            u16::from_le_bytes(
                bytes
                    .get(8..10)
                    .ok_or_else(|| fmt("truncated header"))?
                    .try_into()
                    .unwrap(),
            ) as usize,
            10,
        ),
        Some(2) | Some(3) => (
            u32::from_le_bytes(
                bytes
                    .get(8..12)
                    .ok_or_else(|| fmt("truncated header"))?
                    .try_into()
                    .unwrap(),
            ) as usize,
            12,
        ),
        Some(v) => return Err(fmt(&format!("unknown format version {v}"))),
        None => return Err(fmt("truncated header")),
    };
    let header = bytes
        .get(header_start..header_start + header_len)
        .ok_or_else(|| fmt("truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|_| fmt("header is not text"))?;
    let descr = dict_value(header, "descr").ok_or_else(|| fmt("header has no 'descr'"))?;
    let fortran =
        dict_value(header, "fortran_order").ok_or_else(|| fmt("header has no 'fortran_order'"))?;
    let shape_s = dict_value(header, "shape").ok_or_else(|| fmt("header has no 'shape'"))?;
    let unsupported = |reason: String| NpyError::Unsupported {
        path: path.to_path_buf(),
        reason,
    };
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    if descr != "<f4" {
        return Err(unsupported(format!("dtype {descr}")));
    }
    if fortran != "False" {
        return Err(unsupported("Fortran order".into()));
    }
    let shape_s = shape_s
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| fmt("malformed shape"))?;
    let shape: Vec<usize> = shape_s
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| fmt(&format!("malformed shape entry {s:?}")))
        })
        .collect::<Result<_, _>>()?;
    let numel = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| fmt("shape overflows"))?;
    let payload = &bytes[header_start + header_len..];
    let want = numel.checked_mul(4).ok_or_else(|| fmt("shape overflows"))?;
    if payload.len() != want {
        return Err(fmt(&format!(
            "shape {shape:?} needs {want} data bytes, file has {}",
            payload.len()
        )));
    }
    let data = payload
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    Ok(NpyF32 { shape, data })
}

/// Finds `'key': value` in the header's Python dict literal; values are scalars or a shape tuple.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let start = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[start..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}'])?
    };
    Some(rest[..end].trim())
}

/// The `.npy` v1.0 header for a float32 C-order array, padded so the data starts 64-byte aligned as
/// NumPy does; streaming writers emit it first and then the rows.
pub fn header_f32(shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape_s = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_s}, }}");
    let unpadded = MAGIC.len() + 2 + 2 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out
}

/// Serialises a float32 array as `.npy` version 1.0.
pub fn to_bytes_f32(shape: &[usize], data: &[f32]) -> Vec<u8> {
    assert_eq!(
        shape.iter().product::<usize>(),
        data.len(),
        "npy shape/data mismatch"
    );
    let mut out = header_f32(shape);
    out.reserve(data.len() * 4);
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<(), NpyError> {
    std::fs::write(path, to_bytes_f32(shape, data)).map_err(|source| NpyError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_and_aligns() {
        let shape = [2, 3, 4, 4];
        let data: Vec<f32> = (0..96).map(|i| i as f32 * 0.5).collect();
        let bytes = to_bytes_f32(&shape, &data);
        assert_eq!((bytes.len() - 96 * 4) % 64, 0);
        let a = parse_f32(Path::new("x.npy"), &bytes).unwrap();
        assert_eq!(a.shape, shape);
        assert_eq!(a.data, data);
        let one = to_bytes_f32(&[3], &[1.0, 2.0, 3.0]);
        assert_eq!(parse_f32(Path::new("y.npy"), &one).unwrap().shape, vec![3]);
    }

    #[test]
    fn parses_numpy_written_header() {
        // The header NumPy 2.x writes for np.zeros((1, 2), np.float32): padded to 128 bytes in all.
        let dict = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }";
        let mut header = dict.to_vec();
        header.resize(128 - 10 - 1, b' ');
        header.push(b'\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(header.len() as u16).to_le_bytes());
        b.extend_from_slice(&header);
        b.extend_from_slice(&[0u8; 8]);
        let a = parse_f32(Path::new("np.npy"), &b).unwrap();
        assert_eq!(a.shape, vec![1, 2]);
        assert_eq!(a.data, vec![0.0, 0.0]);
    }

    #[test]
    fn rejects_truncated_and_wrong_dtype() {
        let bytes = to_bytes_f32(&[4], &[1.0, 2.0, 3.0, 4.0]);
        let e = parse_f32(Path::new("t.npy"), &bytes[..bytes.len() - 1]).unwrap_err();
        assert!(
            e.to_string().contains("t.npy") && e.to_string().contains("data bytes"),
            "{e}"
        );
        let mut f64s = bytes.clone();
        let at = f64s.windows(3).position(|w| w == b"<f4").unwrap();
        f64s[at + 2] = b'8';
        let e = parse_f32(Path::new("d.npy"), &f64s).unwrap_err();
        assert!(matches!(e, NpyError::Unsupported { .. }), "{e}");
        assert!(parse_f32(Path::new("g.npy"), b"garbage").is_err());
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(tail in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut b = b"\x93NUMPY\x01\x00".to_vec();
            b.extend_from_slice(&tail);
            let _ = parse_f32(Path::new("p.npy"), &b);
        }
    }
}
