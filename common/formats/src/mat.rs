//! A reader for MATLAB level-5 `.mat` files (`save -v6`/`-v7`, `scipy.io.savemat`), enough for the
//! dataset metadata that ships in that format: Oxford Flowers `imagelabels.mat`/`setid.mat`, Stanford
//! Cars `cars_test_annos_withlabels.mat`/`cars_meta.mat`, and the ImageNet devkit's `meta.mat`.
//!
//! Supported: little- and big-endian files, `miCOMPRESSED` (zlib) elements, the small-element format,
//! numeric arrays of every class (stored in any numeric data type, as MATLAB narrows them; all read as
//! `f64`, exact for integers below 2^53), char arrays (UTF-8, UTF-16, 8-bit), cell arrays and struct
//! arrays. Complex, sparse, object and function-handle arrays are read as [`MatValue::Unsupported`]
//! so a file that also holds one of those still opens. MATLAB 7.3 files are HDF5 and are rejected with
//! a message saying so.
//!
//! The input is untrusted: every length is checked against the bytes actually present, allocations are
//! bounded by the input (never by a declared dimension), inflation and nesting have limits, and
//! malformed input is a [`MatError`] with the byte offset, never a panic.

use std::io::Read;

/// Total bytes all `miCOMPRESSED` elements of one file may inflate to. Real metadata files inflate to
/// at most a few MB (the ImageNet devkit's `meta.mat`, the largest, is ~1 MB); the limit stops a
/// zlib bomb while leaving two orders of magnitude of headroom.
pub const MAX_INFLATED_BYTES: usize = 64 << 20;
/// Total numeric values one file may hold once widened to `f64` (8 bytes each): 128 MiB of values.
/// Without it, 64 MiB of inflated `uint8` data would widen to 512 MiB.
pub const MAX_VALUES: usize = 16 << 20;
/// Cell/struct nesting depth; metadata files nest two or three levels.
pub const MAX_DEPTH: usize = 32;

const HEADER_LEN: usize = 128;

// Data element types (MATLAB "MAT-File Format", table 1-1).
const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_INT16: u32 = 3;
const MI_UINT16: u32 = 4;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_SINGLE: u32 = 7;
const MI_DOUBLE: u32 = 9;
const MI_INT64: u32 = 12;
const MI_UINT64: u32 = 13;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;
const MI_UTF8: u32 = 16;
const MI_UTF16: u32 = 17;
const MI_UTF32: u32 = 18;

// Array classes (table 1-3).
const MX_CELL: u8 = 1;
const MX_STRUCT: u8 = 2;
const MX_CHAR: u8 = 4;
const MX_DOUBLE: u8 = 6;
const MX_UINT64: u8 = 15;
const FLAG_COMPLEX: u32 = 0x0800;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatError {
    #[error("not a MATLAB level-5 .mat file: {0}")]
    NotMat5(String),
    #[error("truncated {what} at byte {offset}{context}")]
    Truncated {
        what: &'static str,
        offset: usize,
        context: String,
    },
    #[error("malformed {what} at byte {offset}{context}: {reason}")]
    Malformed {
        what: &'static str,
        offset: usize,
        context: String,
        reason: String,
    },
    #[error(
        "compressed element at byte {offset} inflates past the {limit}-byte limit for one file"
    )]
    TooLarge { offset: usize, limit: usize },
    #[error("more than {limit} numeric values in one file")]
    TooManyValues { limit: usize },
    #[error("arrays nested deeper than {MAX_DEPTH} levels at byte {offset}{context}")]
    TooDeep { offset: usize, context: String },
    #[error("variable {name:?}: {reason}")]
    Variable { name: String, reason: String },
}

/// A numeric array's MATLAB class (its declared type; the values are widened to `f64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumericClass {
    Double,
    Single,
    Int8,
    Uint8,
    Int16,
    Uint16,
    Int32,
    Uint32,
    Int64,
    Uint64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MatValue {
    /// Column-major values, widened to `f64`.
    Numeric {
        class: NumericClass,
        dims: Vec<usize>,
        values: Vec<f64>,
    },
    /// One string per row (a `1×N` char array is one row).
    Char { dims: Vec<usize>, rows: Vec<String> },
    /// Column-major cells.
    Cell {
        dims: Vec<usize>,
        items: Vec<MatValue>,
    },
    /// `values[element * fields.len() + field]`, elements in column-major order.
    Struct {
        dims: Vec<usize>,
        fields: Vec<String>,
        values: Vec<MatValue>,
    },
    /// A class this reader skips (complex, sparse, object, function handle, opaque).
    Unsupported { class: u8 },
}

impl MatValue {
    /// Element count (product of the dimensions).
    pub fn numel(&self) -> usize {
        match self {
            Self::Numeric { dims, .. }
            | Self::Char { dims, .. }
            | Self::Cell { dims, .. }
            | Self::Struct { dims, .. } => dims.iter().product(),
            Self::Unsupported { .. } => 0,
        }
    }

    pub fn numbers(&self) -> Option<&[f64]> {
        match self {
            Self::Numeric { values, .. } => Some(values),
            _ => None,
        }
    }

    /// The text of a char array with at most one row.
    pub fn text(&self) -> Option<&str> {
        match self {
            Self::Char { rows, .. } if rows.len() <= 1 => {
                Some(rows.first().map_or("", String::as_str))
            }
            _ => None,
        }
    }

    pub fn cells(&self) -> Option<&[MatValue]> {
        match self {
            Self::Cell { items, .. } => Some(items),
            _ => None,
        }
    }

    /// Field `name` of struct element `element`.
    pub fn field(&self, element: usize, name: &str) -> Option<&MatValue> {
        match self {
            Self::Struct { fields, values, .. } => {
                let f = fields.iter().position(|field| field == name)?;
                values.get(element.checked_mul(fields.len())?.checked_add(f)?)
            }
            _ => None,
        }
    }

    /// A short description for error messages (`double 1×8189`, `cell 1×196`).
    pub fn describe(&self) -> String {
        let dims = |dims: &[usize]| {
            dims.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join("×")
        };
        match self {
            Self::Numeric { class, dims: d, .. } => {
                format!("{} {}", format!("{class:?}").to_lowercase(), dims(d))
            }
            Self::Char { dims: d, .. } => format!("char {}", dims(d)),
            Self::Cell { dims: d, .. } => format!("cell {}", dims(d)),
            Self::Struct { dims: d, .. } => format!("struct {}", dims(d)),
            Self::Unsupported { class } => format!("unsupported array class {class}"),
        }
    }
}

/// The named variables of a `.mat` file, in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct MatFile {
    pub variables: Vec<(String, MatValue)>,
}

impl MatFile {
    pub fn parse(bytes: &[u8]) -> Result<Self, MatError> {
        parse(bytes)
    }

    pub fn get(&self, name: &str) -> Option<&MatValue> {
        self.variables
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// The variable, or an error naming it and the variables the file does have.
    pub fn require(&self, name: &str) -> Result<&MatValue, MatError> {
        self.get(name).ok_or_else(|| MatError::Variable {
            name: name.to_string(),
            reason: format!(
                "missing (the file has: {})",
                self.variables
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
    }

    /// A numeric variable's values as non-negative integers (labels, ids).
    pub fn integers(&self, name: &str) -> Result<Vec<u64>, MatError> {
        let value = self.require(name)?;
        let numbers = value.numbers().ok_or_else(|| MatError::Variable {
            name: name.to_string(),
            reason: format!("expected a numeric array, found {}", value.describe()),
        })?;
        numbers
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                as_index(x).ok_or_else(|| MatError::Variable {
                    name: name.to_string(),
                    reason: format!("element {} is {x}, not a non-negative integer", i + 1),
                })
            })
            .collect()
    }
}

/// `x` as a non-negative integer, when it is one (and exactly representable).
pub fn as_index(x: f64) -> Option<u64> {
    (x.is_finite() && x >= 0.0 && x.fract() == 0.0 && x < 9_007_199_254_740_992.0)
        .then_some(x as u64)
}

fn parse(bytes: &[u8]) -> Result<MatFile, MatError> {
    if bytes.len() < HEADER_LEN {
        if bytes.starts_with(b"\x89HDF") {
            return Err(hdf5_error());
        }
        return Err(MatError::NotMat5(format!(
            "{} bytes, shorter than the 128-byte header",
            bytes.len()
        )));
    }
    if bytes.starts_with(b"MATLAB 7.3") || bytes.get(512..520) == Some(b"\x89HDF\r\n\x1a\n") {
        return Err(hdf5_error());
    }
    let big_endian = match &bytes[126..128] {
        b"IM" => false,
        b"MI" => true,
        _ => {
            return Err(MatError::NotMat5(
                "no level-5 header (endian indicator missing); MATLAB v4 files are not supported"
                    .into(),
            ));
        }
    };
    let mut reader = Reader {
        big_endian,
        inflated: 0,
        values: 0,
    };
    let mut variables = Vec::new();
    reader.read_elements(bytes, HEADER_LEN, "", 0, &mut variables)?;
    Ok(MatFile { variables })
}

fn hdf5_error() -> MatError {
    MatError::NotMat5(
        "this is a MATLAB 7.3 (HDF5) file, which is not supported; re-save it with `save -v7` or \
         scipy.io.savemat"
            .into(),
    )
}

struct Reader {
    big_endian: bool,
    inflated: usize,
    values: usize,
}

/// One data element: its type and the bytes of its data, plus where the next element starts.
struct Element<'a> {
    kind: u32,
    data: &'a [u8],
    offset: usize,
    next: usize,
}

impl Reader {
    fn u32_at(&self, buf: &[u8], at: usize) -> Option<u32> {
        let b: [u8; 4] = buf.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }

    /// The element at `at` of `buf`; `context` locates `buf` in the file for messages.
    fn element<'a>(
        &self,
        buf: &'a [u8],
        at: usize,
        context: &str,
    ) -> Result<Element<'a>, MatError> {
        let truncated = || MatError::Truncated {
            what: "element tag",
            offset: at,
            context: context.to_string(),
        };
        let first = self.u32_at(buf, at).ok_or_else(truncated)?;
        if first >> 16 != 0 {
            // Small data element: type and length share the first word, data fills the second.
            let (kind, len) = (first & 0xffff, (first >> 16) as usize);
            if len > 4 {
                return Err(MatError::Malformed {
                    what: "small data element",
                    offset: at,
                    context: context.to_string(),
                    reason: format!("declares {len} bytes, at most 4 fit"),
                });
            }
            let data = buf.get(at + 4..at + 4 + len).ok_or_else(truncated)?;
            if buf.len() < at + 8 {
                return Err(truncated());
            }
            return Ok(Element {
                kind,
                data,
                offset: at,
                next: at + 8,
            });
        }
        let len = self.u32_at(buf, at + 4).ok_or_else(truncated)? as usize;
        let start = at + 8;
        let end = start
            .checked_add(len)
            .filter(|&end| end <= buf.len())
            .ok_or(MatError::Truncated {
                what: "element data",
                offset: at,
                context: context.to_string(),
            })?;
        // Elements are padded to 8 bytes, except compressed ones; padding may be missing at the end.
        let next = if first == MI_COMPRESSED {
            end
        } else {
            end.next_multiple_of(8).min(buf.len())
        };
        Ok(Element {
            kind: first,
            data: &buf[start..end],
            offset: at,
            next,
        })
    }

    /// The element at `*at` of a matrix's `data` (which starts at `base` of its buffer); advances `at`.
    fn next_in<'a>(
        &self,
        data: &'a [u8],
        at: &mut usize,
        base: usize,
        context: &str,
    ) -> Result<Element<'a>, MatError> {
        let element = self
            .element(data, *at, context)
            .map_err(|e| shift(e, base))?;
        *at = element.next;
        Ok(element)
    }

    /// Top-level elements of `buf` from `at`: variables, possibly compressed.
    fn read_elements(
        &mut self,
        buf: &[u8],
        mut at: usize,
        context: &str,
        depth: usize,
        out: &mut Vec<(String, MatValue)>,
    ) -> Result<(), MatError> {
        // Compressed elements nest only one level in real files; a crafted chain of them must not
        // recurse until the stack runs out.
        if depth > MAX_DEPTH {
            return Err(MatError::TooDeep {
                offset: at,
                context: context.to_string(),
            });
        }
        while at < buf.len() {
            // Some writers pad the file; trailing zero bytes shorter than a tag are not an element.
            if buf.len() - at < 8 && buf[at..].iter().all(|&b| b == 0) {
                break;
            }
            let element = self.element(buf, at, context)?;
            match element.kind {
                MI_COMPRESSED => {
                    let inflated = self.inflate(element.data, element.offset)?;
                    let inner = format!(
                        " of the element compressed at byte {}{context}",
                        element.offset
                    );
                    self.read_elements(&inflated, 0, &inner, depth + 1, out)?;
                }
                MI_MATRIX => {
                    let (name, value) =
                        self.matrix(element.data, element.offset + 8, context, 0)?;
                    out.push((name, value));
                }
                // Anything else at the top level carries no variable.
                _ => {}
            }
            at = element.next;
        }
        Ok(())
    }

    fn inflate(&mut self, data: &[u8], offset: usize) -> Result<Vec<u8>, MatError> {
        let budget = MAX_INFLATED_BYTES - self.inflated;
        let mut out = Vec::new();
        let mut decoder = flate2::read::ZlibDecoder::new(data).take(budget as u64 + 1);
        decoder
            .read_to_end(&mut out)
            .map_err(|e| MatError::Malformed {
                what: "compressed element",
                offset,
                context: String::new(),
                reason: format!("zlib: {e}"),
            })?;
        if out.len() > budget {
            return Err(MatError::TooLarge {
                offset,
                limit: MAX_INFLATED_BYTES,
            });
        }
        self.inflated += out.len();
        Ok(out)
    }

    /// An `miMATRIX` element's contents: `(name, value)`. `base` is where `data` starts in its buffer.
    fn matrix(
        &mut self,
        data: &[u8],
        base: usize,
        context: &str,
        depth: usize,
    ) -> Result<(String, MatValue), MatError> {
        if depth > MAX_DEPTH {
            return Err(MatError::TooDeep {
                offset: base,
                context: context.to_string(),
            });
        }
        if data.is_empty() {
            // MATLAB writes an empty array inside cells and structs as a bare tag.
            return Ok((
                String::new(),
                MatValue::Numeric {
                    class: NumericClass::Double,
                    dims: vec![0, 0],
                    values: vec![],
                },
            ));
        }
        let malformed = |what: &'static str, offset: usize, reason: String| MatError::Malformed {
            what,
            offset: base + offset,
            context: context.to_string(),
            reason,
        };
        let mut at = 0;
        let next = |reader: &Self, at: &mut usize| reader.next_in(data, at, base, context);

        let flags = next(self, &mut at)?;
        if flags.kind != MI_UINT32 || flags.data.len() != 8 {
            return Err(malformed(
                "array flags",
                flags.offset,
                format!("type {} with {} bytes", flags.kind, flags.data.len()),
            ));
        }
        let flag_word = self.u32_at(flags.data, 0).unwrap_or(0);
        let class = (flag_word & 0xff) as u8;

        let dims_el = next(self, &mut at)?;
        if dims_el.kind != MI_INT32 || dims_el.data.len() % 4 != 0 || dims_el.data.len() < 8 {
            return Err(malformed(
                "dimensions",
                dims_el.offset,
                format!("type {} with {} bytes", dims_el.kind, dims_el.data.len()),
            ));
        }
        let mut dims = Vec::with_capacity(dims_el.data.len() / 4);
        for i in 0..dims_el.data.len() / 4 {
            let d = self.u32_at(dims_el.data, i * 4).unwrap_or(0) as i32;
            if d < 0 {
                return Err(malformed(
                    "dimensions",
                    dims_el.offset,
                    format!("negative dimension {d}"),
                ));
            }
            dims.push(d as usize);
        }
        let numel = dims
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| malformed("dimensions", dims_el.offset, format!("{dims:?} overflow")))?;

        let name_el = next(self, &mut at)?;
        if name_el.kind != MI_INT8 && name_el.kind != MI_UINT8 && name_el.kind != MI_UTF8 {
            return Err(malformed(
                "array name",
                name_el.offset,
                format!("type {}", name_el.kind),
            ));
        }
        let name = String::from_utf8_lossy(name_el.data).into_owned();

        let value = match class {
            MX_DOUBLE..=MX_UINT64 => {
                let real = next(self, &mut at)?;
                if flag_word & FLAG_COMPLEX != 0 {
                    return Ok((name, MatValue::Unsupported { class }));
                }
                let values = self
                    .numbers(&real)
                    .map_err(|reason| malformed("numeric data", real.offset, reason))?;
                if values.len() != numel {
                    return Err(malformed(
                        "numeric data",
                        real.offset,
                        format!("{} values for dimensions {dims:?}", values.len()),
                    ));
                }
                MatValue::Numeric {
                    class: numeric_class(class),
                    dims,
                    values,
                }
            }
            MX_CHAR => {
                let rows = if at >= data.len() {
                    Vec::new()
                } else {
                    let chars = next(self, &mut at)?;
                    self.char_rows(&chars, &dims, numel)
                        .map_err(|reason| malformed("char data", chars.offset, reason))?
                };
                MatValue::Char { dims, rows }
            }
            MX_CELL => {
                let items = self.children(data, &mut at, numel, base, context, depth)?;
                MatValue::Cell { dims, items }
            }
            MX_STRUCT => {
                let len_el = next(self, &mut at)?;
                let field_len = match (len_el.kind, len_el.data.len()) {
                    (MI_INT32, 4) => self.u32_at(len_el.data, 0).unwrap_or(0) as usize,
                    _ => {
                        return Err(malformed(
                            "field name length",
                            len_el.offset,
                            format!("type {}", len_el.kind),
                        ));
                    }
                };
                let names_el = next(self, &mut at)?;
                if field_len == 0 || names_el.data.len() % field_len != 0 {
                    return Err(malformed(
                        "field names",
                        names_el.offset,
                        format!(
                            "{} bytes for names of {field_len} bytes",
                            names_el.data.len()
                        ),
                    ));
                }
                let fields: Vec<String> = names_el
                    .data
                    .chunks_exact(field_len)
                    .map(|raw| {
                        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
                        String::from_utf8_lossy(&raw[..end]).into_owned()
                    })
                    .collect();
                let count = numel.checked_mul(fields.len()).ok_or_else(|| {
                    malformed("struct", names_el.offset, "too many fields".into())
                })?;
                let values = self.children(data, &mut at, count, base, context, depth)?;
                MatValue::Struct {
                    dims,
                    fields,
                    values,
                }
            }
            _ => MatValue::Unsupported { class },
        };
        Ok((name, value))
    }

    /// `count` nested `miMATRIX` elements (cells or struct fields).
    fn children(
        &mut self,
        data: &[u8],
        at: &mut usize,
        count: usize,
        base: usize,
        context: &str,
        depth: usize,
    ) -> Result<Vec<MatValue>, MatError> {
        // Each child takes at least an 8-byte tag, so a count beyond that is a lie; checking first keeps
        // the allocation bounded by the input.
        if count > (data.len() - (*at).min(data.len())) / 8 {
            return Err(MatError::Malformed {
                what: "cell or struct",
                offset: base + *at,
                context: context.to_string(),
                reason: format!(
                    "{count} elements declared but only {} bytes remain",
                    data.len() - (*at).min(data.len())
                ),
            });
        }
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            let child = self
                .element(data, *at, context)
                .map_err(|e| shift(e, base))?;
            if child.kind != MI_MATRIX {
                return Err(MatError::Malformed {
                    what: "cell or struct element",
                    offset: base + child.offset,
                    context: context.to_string(),
                    reason: format!("type {}, expected miMATRIX", child.kind),
                });
            }
            *at = child.next;
            let (_, value) =
                self.matrix(child.data, base + child.offset + 8, context, depth + 1)?;
            items.push(value);
        }
        Ok(items)
    }

    fn numbers(&mut self, element: &Element<'_>) -> Result<Vec<f64>, String> {
        let width = match element.kind {
            MI_INT8 | MI_UINT8 | MI_UTF8 => 1,
            MI_INT16 | MI_UINT16 => 2,
            MI_INT32 | MI_UINT32 | MI_SINGLE => 4,
            MI_DOUBLE | MI_INT64 | MI_UINT64 => 8,
            other => return Err(format!("data type {other} is not numeric")),
        };
        if !element.data.len().is_multiple_of(width) {
            return Err(format!(
                "{} bytes is not a multiple of {width}",
                element.data.len()
            ));
        }
        let count = element.data.len() / width;
        self.values += count;
        if self.values > MAX_VALUES {
            return Err(MatError::TooManyValues { limit: MAX_VALUES }.to_string());
        }
        let be = self.big_endian;
        let word = |chunk: &[u8]| -> [u8; 8] {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            if be {
                b[..chunk.len()].reverse();
            }
            b
        };
        Ok(element
            .data
            .chunks_exact(width)
            .map(|c| {
                let b = word(c);
                match element.kind {
                    MI_INT8 => f64::from(b[0] as i8),
                    MI_UINT8 | MI_UTF8 => f64::from(b[0]),
                    MI_INT16 => f64::from(i16::from_le_bytes([b[0], b[1]])),
                    MI_UINT16 => f64::from(u16::from_le_bytes([b[0], b[1]])),
                    MI_INT32 => f64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                    MI_UINT32 => f64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                    MI_SINGLE => f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                    MI_INT64 => i64::from_le_bytes(b) as f64,
                    MI_UINT64 => u64::from_le_bytes(b) as f64,
                    _ => f64::from_le_bytes(b),
                }
            })
            .collect())
    }

    fn char_rows(
        &self,
        element: &Element<'_>,
        dims: &[usize],
        numel: usize,
    ) -> Result<Vec<String>, String> {
        let rows = dims.first().copied().unwrap_or(0);
        if numel == 0 || rows == 0 {
            return Ok(Vec::new());
        }
        let units: Vec<u32> = match element.kind {
            MI_UTF8 => {
                let text = String::from_utf8_lossy(element.data);
                let chars: Vec<u32> = text.chars().map(u32::from).collect();
                if chars.len() != numel {
                    // UTF-8 char data of a multi-byte string: MATLAB counts characters, so only a
                    // single-row array can be recovered unambiguously.
                    if rows == 1 {
                        return Ok(vec![text.into_owned()]);
                    }
                    return Err(format!(
                        "{} characters for dimensions {dims:?}",
                        chars.len()
                    ));
                }
                chars
            }
            MI_UINT16 | MI_UTF16 | MI_INT16 => element
                .data
                .chunks_exact(2)
                .map(|c| {
                    u32::from(if self.big_endian {
                        u16::from_be_bytes([c[0], c[1]])
                    } else {
                        u16::from_le_bytes([c[0], c[1]])
                    })
                })
                .collect(),
            MI_UINT8 | MI_INT8 => element.data.iter().map(|&b| u32::from(b)).collect(),
            MI_UTF32 | MI_UINT32 | MI_INT32 => element
                .data
                .chunks_exact(4)
                .map(|c| {
                    let b = [c[0], c[1], c[2], c[3]];
                    if self.big_endian {
                        u32::from_be_bytes(b)
                    } else {
                        u32::from_le_bytes(b)
                    }
                })
                .collect(),
            other => return Err(format!("data type {other} is not text")),
        };
        if units.len() != numel {
            return Err(format!(
                "{} characters for dimensions {dims:?}",
                units.len()
            ));
        }
        let columns = numel / rows;
        let utf16 = matches!(element.kind, MI_UINT16 | MI_UTF16 | MI_INT16);
        Ok((0..rows)
            .map(|r| {
                let row = (0..columns).map(|c| units[r + rows * c]);
                if utf16 {
                    let code_units: Vec<u16> = row.map(|u| u as u16).collect();
                    String::from_utf16_lossy(&code_units)
                } else {
                    row.map(|u| char::from_u32(u).unwrap_or(char::REPLACEMENT_CHARACTER))
                        .collect()
                }
            })
            .collect())
    }
}

/// Offsets inside a matrix are relative to its data; errors report them relative to the buffer.
fn shift(error: MatError, base: usize) -> MatError {
    match error {
        MatError::Truncated {
            what,
            offset,
            context,
        } => MatError::Truncated {
            what,
            offset: offset + base,
            context,
        },
        MatError::Malformed {
            what,
            offset,
            context,
            reason,
        } => MatError::Malformed {
            what,
            offset: offset + base,
            context,
            reason,
        },
        other => other,
    }
}

fn numeric_class(class: u8) -> NumericClass {
    match class {
        7 => NumericClass::Single,
        8 => NumericClass::Int8,
        9 => NumericClass::Uint8,
        10 => NumericClass::Int16,
        11 => NumericClass::Uint16,
        12 => NumericClass::Int32,
        13 => NumericClass::Uint32,
        14 => NumericClass::Int64,
        15 => NumericClass::Uint64,
        _ => NumericClass::Double,
    }
}

/// A minimal level-5 writer for tests: builds the synthetic files the readers are tested on (both byte
/// orders, compressed or not), so unit tests need no fixture files. The committed fixtures written by
/// scipy (`ops/reference/make_dataset_fixtures.py`) check the reader against a second implementation.
/// Other crates' tests (the Flowers, Cars and ImageNet readers of tresnet-common) turn on the
/// `mat-writer` feature in their dev-dependencies.
#[cfg(any(test, feature = "mat-writer"))]
pub mod writer {
    use std::io::Write;

    use super::*;

    pub struct MatWriter {
        pub big_endian: bool,
        pub compress: bool,
    }

    /// An array ready to be written (an `miMATRIX` body without its name).
    pub enum Array {
        Double(Vec<usize>, Vec<f64>),
        /// Numeric class `class` stored in element type `data_type` (MATLAB narrows storage).
        Stored(u8, Vec<usize>, u32, Vec<u8>),
        Char(String),
        Cell(Vec<usize>, Vec<Array>),
        Struct(Vec<usize>, Vec<&'static str>, Vec<Array>),
    }

    impl MatWriter {
        fn u32(&self, v: u32) -> [u8; 4] {
            if self.big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        }

        /// A data element in the normal format, padded to 8 bytes.
        pub fn element(&self, kind: u32, data: &[u8]) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend(self.u32(kind));
            out.extend(self.u32(data.len() as u32));
            out.extend(data);
            out.resize(out.len().next_multiple_of(8), 0);
            out
        }

        /// A data element in the small format (≤ 4 bytes of data).
        pub fn small(&self, kind: u32, data: &[u8]) -> Vec<u8> {
            assert!(data.len() <= 4);
            let mut out = Vec::new();
            out.extend(self.u32(((data.len() as u32) << 16) | kind));
            let mut padded = data.to_vec();
            padded.resize(4, 0);
            out.extend(padded);
            out
        }

        fn dims(&self, dims: &[usize]) -> Vec<u8> {
            let data: Vec<u8> = dims.iter().flat_map(|&d| self.u32(d as u32)).collect();
            self.element(MI_INT32, &data)
        }

        pub fn matrix(&self, name: &str, array: &Array) -> Vec<u8> {
            let flags = |class: u8| {
                let mut data = self.u32(u32::from(class)).to_vec();
                data.extend([0; 4]);
                self.element(MI_UINT32, &data)
            };
            let name_el = if name.len() <= 4 && !name.is_empty() {
                self.small(MI_INT8, name.as_bytes())
            } else {
                self.element(MI_INT8, name.as_bytes())
            };
            let mut body = Vec::new();
            match array {
                Array::Double(dims, values) => {
                    body.extend(flags(MX_DOUBLE));
                    body.extend(self.dims(dims));
                    body.extend(name_el);
                    let data: Vec<u8> = values
                        .iter()
                        .flat_map(|v| {
                            if self.big_endian {
                                v.to_be_bytes()
                            } else {
                                v.to_le_bytes()
                            }
                        })
                        .collect();
                    body.extend(self.element(MI_DOUBLE, &data));
                }
                Array::Stored(class, dims, kind, data) => {
                    body.extend(flags(*class));
                    body.extend(self.dims(dims));
                    body.extend(name_el);
                    if data.len() <= 4 {
                        body.extend(self.small(*kind, data));
                    } else {
                        body.extend(self.element(*kind, data));
                    }
                }
                Array::Char(text) => {
                    let units: Vec<u16> = text.encode_utf16().collect();
                    body.extend(flags(MX_CHAR));
                    body.extend(self.dims(&[1, units.len()]));
                    body.extend(name_el);
                    let data: Vec<u8> = units
                        .iter()
                        .flat_map(|u| {
                            if self.big_endian {
                                u.to_be_bytes()
                            } else {
                                u.to_le_bytes()
                            }
                        })
                        .collect();
                    body.extend(self.element(MI_UINT16, &data));
                }
                Array::Cell(dims, items) => {
                    body.extend(flags(MX_CELL));
                    body.extend(self.dims(dims));
                    body.extend(name_el);
                    for item in items {
                        body.extend(self.matrix("", item));
                    }
                }
                Array::Struct(dims, fields, values) => {
                    body.extend(flags(MX_STRUCT));
                    body.extend(self.dims(dims));
                    body.extend(name_el);
                    let len = 32usize;
                    body.extend(self.small(MI_INT32, &self.u32(len as u32)));
                    let mut names = Vec::new();
                    for field in fields {
                        let mut raw = field.as_bytes().to_vec();
                        raw.resize(len, 0);
                        names.extend(raw);
                    }
                    body.extend(self.element(MI_INT8, &names));
                    for value in values {
                        body.extend(self.matrix("", value));
                    }
                }
            }
            self.element(MI_MATRIX, &body)
        }

        pub fn file(&self, variables: &[(&str, Array)]) -> Vec<u8> {
            let mut out = b"MATLAB 5.0 MAT-file, written by the tresnet-eval tests".to_vec();
            out.resize(116, b' ');
            out.extend([0u8; 8]);
            if self.big_endian {
                out.extend([0x01, 0x00]);
                out.extend(b"MI");
            } else {
                out.extend([0x00, 0x01]);
                out.extend(b"IM");
            }
            for (name, array) in variables {
                let matrix = self.matrix(name, array);
                if self.compress {
                    let mut encoder =
                        flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
                    encoder.write_all(&matrix).unwrap();
                    let compressed = encoder.finish().unwrap();
                    out.extend(self.u32(MI_COMPRESSED));
                    out.extend(self.u32(compressed.len() as u32));
                    out.extend(compressed);
                } else {
                    out.extend(matrix);
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::writer::{Array, MatWriter};
    use super::*;

    fn sample_file(w: &MatWriter) -> Vec<u8> {
        w.file(&[
            (
                "labels",
                Array::Double(vec![1, 4], vec![77.0, 1.0, 102.0, 5.0]),
            ),
            ("ids", Array::Stored(6, vec![1, 3], MI_UINT8, vec![3, 1, 2])),
            (
                "wide",
                Array::Stored(6, vec![2, 1], MI_UINT16, vec![0, 1, 0xff, 0xff]),
            ),
            (
                "class_names",
                Array::Cell(
                    vec![1, 2],
                    vec![
                        Array::Char("AM General Hummer".into()),
                        Array::Char("Ünïcödé €".into()),
                    ],
                ),
            ),
            (
                "annotations",
                Array::Struct(
                    vec![1, 2],
                    vec!["class", "fname"],
                    vec![
                        Array::Double(vec![1, 1], vec![14.0]),
                        Array::Char("00001.jpg".into()),
                        Array::Double(vec![1, 1], vec![3.0]),
                        Array::Char("00002.jpg".into()),
                    ],
                ),
            ),
            ("e", Array::Double(vec![0, 0], vec![])),
        ])
    }

    #[test]
    fn reads_every_supported_shape_in_both_byte_orders_compressed_or_not() {
        for big_endian in [false, true] {
            for compress in [false, true] {
                let bytes = sample_file(&MatWriter {
                    big_endian,
                    compress,
                });
                let file = MatFile::parse(&bytes)
                    .unwrap_or_else(|e| panic!("be={big_endian} z={compress}: {e}"));
                assert_eq!(file.integers("labels").unwrap(), [77, 1, 102, 5]);
                assert_eq!(file.integers("ids").unwrap(), [3, 1, 2]);
                let wide = file.require("wide").unwrap();
                let expected_wide = if big_endian {
                    [1.0, 65535.0]
                } else {
                    [256.0, 65535.0]
                };
                assert_eq!(wide.numbers().unwrap(), expected_wide);
                let names: Vec<&str> = file
                    .require("class_names")
                    .unwrap()
                    .cells()
                    .unwrap()
                    .iter()
                    .map(|c| c.text().unwrap())
                    .collect();
                assert_eq!(names, ["AM General Hummer", "Ünïcödé €"]);
                let annotations = file.require("annotations").unwrap();
                assert_eq!(annotations.numel(), 2);
                assert_eq!(
                    annotations.field(1, "fname").unwrap().text(),
                    Some("00002.jpg")
                );
                assert_eq!(
                    annotations.field(0, "class").unwrap().numbers(),
                    Some(&[14.0][..])
                );
                assert!(annotations.field(2, "class").is_none());
                assert_eq!(file.require("e").unwrap().numel(), 0);
            }
        }
    }

    #[test]
    fn missing_variables_list_what_the_file_has() {
        let bytes = sample_file(&MatWriter {
            big_endian: false,
            compress: false,
        });
        let err = MatFile::parse(&bytes)
            .unwrap()
            .integers("tstid")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tstid") && err.contains("labels, ids"),
            "{err}"
        );
    }

    #[test]
    fn non_integer_labels_are_reported_with_their_position() {
        let w = MatWriter {
            big_endian: false,
            compress: false,
        };
        let bytes = w.file(&[("labels", Array::Double(vec![1, 2], vec![1.0, 2.5]))]);
        let err = MatFile::parse(&bytes)
            .unwrap()
            .integers("labels")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "variable \"labels\": element 2 is 2.5, not a non-negative integer"
        );
    }

    #[test]
    fn foreign_and_damaged_files_are_errors() {
        let w = MatWriter {
            big_endian: false,
            compress: true,
        };
        let good = sample_file(&w);
        let mut hdf5 = b"MATLAB 7.3 MAT-file, Platform: GLNXA64".to_vec();
        hdf5.resize(600, 0);
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", vec![], "shorter than the 128-byte header"),
            ("hdf5", hdf5, "HDF5"),
            ("v4", vec![0u8; 200], "endian indicator"),
            ("truncated", good[..good.len() - 10].to_vec(), "truncated"),
            (
                "bad zlib",
                {
                    let mut b = good.clone();
                    for byte in &mut b[140..160] {
                        *byte ^= 0x5a;
                    }
                    b
                },
                "zlib",
            ),
        ];
        for (name, bytes, needle) in cases {
            let err = MatFile::parse(&bytes).unwrap_err().to_string();
            assert!(err.contains(needle), "{name}: {err}");
        }
    }

    #[test]
    fn a_zlib_bomb_stops_at_the_limit() {
        let w = MatWriter {
            big_endian: false,
            compress: false,
        };
        let mut out = w.file(&[]);
        let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut encoder, &vec![0u8; MAX_INFLATED_BYTES + 1024]).unwrap();
        let compressed = encoder.finish().unwrap();
        out.extend(MI_COMPRESSED.to_le_bytes());
        out.extend((compressed.len() as u32).to_le_bytes());
        out.extend(compressed);
        assert!(matches!(
            MatFile::parse(&out),
            Err(MatError::TooLarge { .. })
        ));
    }

    #[test]
    fn huge_declared_counts_do_not_allocate() {
        let w = MatWriter {
            big_endian: false,
            compress: false,
        };
        // A cell claiming 2^31 - 1 items with no data behind them.
        let bytes = w.file(&[("c", Array::Cell(vec![1, i32::MAX as usize], vec![]))]);
        let err = MatFile::parse(&bytes).unwrap_err().to_string();
        assert!(err.contains("elements declared"), "{err}");
    }

    #[test]
    fn nested_compression_is_bounded() {
        let w = MatWriter {
            big_endian: false,
            compress: false,
        };
        let mut element = w.matrix("x", &Array::Double(vec![1, 1], vec![1.0]));
        for _ in 0..MAX_DEPTH + 2 {
            let mut encoder =
                flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            std::io::Write::write_all(&mut encoder, &element).unwrap();
            let compressed = encoder.finish().unwrap();
            element = MI_COMPRESSED.to_le_bytes().to_vec();
            element.extend((compressed.len() as u32).to_le_bytes());
            element.extend(compressed);
        }
        let mut file = w.file(&[]);
        file.extend(element);
        assert!(matches!(
            MatFile::parse(&file),
            Err(MatError::TooDeep { .. })
        ));
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let w = MatWriter {
            big_endian: false,
            compress: false,
        };
        let mut array = Array::Double(vec![1, 1], vec![1.0]);
        for _ in 0..MAX_DEPTH + 2 {
            array = Array::Cell(vec![1, 1], vec![array]);
        }
        let bytes = w.file(&[("deep", array)]);
        assert!(matches!(
            MatFile::parse(&bytes),
            Err(MatError::TooDeep { .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = MatFile::parse(&bytes);
        }

        #[test]
        fn mutated_valid_files_never_panic(
            compress in any::<bool>(),
            big_endian in any::<bool>(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = sample_file(&MatWriter { big_endian, compress });
            for (at, value) in edits {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            let len = bytes.len();
            bytes.truncate(HEADER_LEN + cut.index(len - HEADER_LEN + 1));
            let _ = MatFile::parse(&bytes);
        }
    }
}
