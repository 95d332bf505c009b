//! A minimal pickle virtual machine that builds plain values from a pickle stream and never runs code.
//!
//! Only the opcodes that `torch.save` and ordinary training scripts emit are understood. Calls to Python
//! callables are not performed: a few well-known ones (`collections.OrderedDict`, torch's tensor rebuild
//! functions, `_codecs.encode`) are interpreted, and every other call is kept as an opaque
//! [`Value::Reduce`] so that checkpoints carrying argparse namespaces or optimizer objects still parse.
//!
//! The reader is meant for untrusted bytes: every length is checked against the bytes that remain,
//! nesting is capped, and the total work done copying memoized values is bounded by the input size, so
//! malformed input yields a [`PickleError`] rather than a panic or an unbounded allocation.

use std::collections::HashMap;
use std::fmt;

use super::DType;

/// Deepest container nesting accepted; real checkpoints nest a dozen levels at most, and the cap keeps
/// the recursive drop and clone of hostile inputs well inside a test thread's stack.
const MAX_DEPTH: u32 = 512;

/// Value nodes that copying memoized objects may create beyond twice the input length. Copies are the
/// only way a pickle can create more values than it has bytes (a memo entry fetched twice doubles), so
/// this budget turns "billion laughs" inputs into an error while leaving real checkpoints (which copy a
/// few nodes per tensor) far below it.
const BASE_CLONE_BUDGET: u64 = 1 << 20;

/// Highest pickle protocol defined by Python (3.8+).
const HIGHEST_PROTOCOL: u8 = 5;

/// A Python object as far as a checkpoint reader needs to know it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer outside `i64`, as minimal little-endian two's-complement bytes (Python's `LONG1`
    /// encoding); nothing we read needs arithmetic on these, only comparison (the legacy magic number).
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// Insertion-ordered items, as Python dicts are; keys may repeat if the stream sets one twice.
    Dict(Vec<(Value, Value)>),
    /// A `set` or `frozenset`, kept only so that the stream parses.
    Set(Vec<Value>),
    Global {
        module: String,
        name: String,
    },
    /// A call to a callable that is not interpreted (also `NEWOBJ`, i.e. `cls.__new__(cls, *args)`).
    Reduce {
        callable: Box<Value>,
        args: Box<Value>,
    },
    /// `obj.__setstate__(state)` on an opaque object.
    Build {
        obj: Box<Value>,
        state: Box<Value>,
    },
    /// A persistent id that the caller's [`PersistentLoad`] chose to keep opaque.
    PersId(Box<Value>),
    /// Tensor bytes stored outside the pickle, as resolved by the caller's [`PersistentLoad`].
    Storage(StorageRef),
    /// A tensor rebuilt by `torch._utils._rebuild_tensor_v2` and friends.
    Tensor(TensorRef),
}

/// Where a storage's bytes live, in the container format's terms.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct StorageRef {
    /// Record name in the container (`data/<key>` in a zip, the storage key in a legacy file).
    pub key: String,
    /// Python class name such as `FloatStorage`, kept for error messages.
    pub storage_type: String,
    /// `None` for storage types we cannot represent (complex, quantized); tensors on them fail to load.
    pub dtype: Option<DType>,
    /// Element offset of a storage view into the record (legacy files from before torch 0.4).
    pub elem_offset: usize,
    /// Element count of a storage view, `None` for the whole record.
    pub elem_len: Option<usize>,
}

/// `storage.as_strided(size, stride, storage_offset)`, with sizes and strides in elements.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct TensorRef {
    pub storage: StorageRef,
    pub storage_offset: usize,
    pub size: Vec<usize>,
    pub stride: Vec<usize>,
}

impl Value {
    /// Short description of what kind of object this is, for error messages.
    pub(super) fn describe(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(_) => "a bool".into(),
            Value::Int(_) | Value::BigInt(_) => "an int".into(),
            Value::Float(_) => "a float".into(),
            Value::Str(_) => "a str".into(),
            Value::Bytes(_) => "bytes".into(),
            Value::Tuple(_) => "a tuple".into(),
            Value::List(_) => "a list".into(),
            Value::Dict(_) => "a dict".into(),
            Value::Set(_) => "a set".into(),
            Value::Global { module, name } => format!("the global {module}.{name}"),
            Value::Reduce { callable, .. } => match callable.as_ref() {
                Value::Global { module, name } => format!("an object built by {module}.{name}"),
                _ => "an opaque object".into(),
            },
            Value::Build { obj, .. } => obj.describe(),
            Value::PersId(_) => "a persistent reference".into(),
            Value::Storage(_) => "a storage".into(),
            Value::Tensor(_) => "a tensor".into(),
        }
    }

    /// The value for `key` in a dict with string keys; the last occurrence wins, as in Python.
    pub(super) fn dict_get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items
                .iter()
                .rev()
                .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }
}

/// A malformed pickle stream; `offset` is the byte at which the offending opcode starts.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct PickleError {
    pub offset: usize,
    pub reason: String,
}

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at pickle byte {}", self.reason, self.offset)
    }
}

impl std::error::Error for PickleError {}

/// Resolves persistent ids (`BINPERSID`), which is how torch refers to tensor storages kept outside the
/// pickle. The returned value replaces the id on the stack; an `Err` aborts unpickling with that reason.
pub(super) trait PersistentLoad {
    fn persistent_load(&mut self, pid: Value) -> Result<Value, String>;
}

/// Keeps every persistent id as an opaque [`Value::PersId`]; for pickles that are not expected to hold
/// any (the legacy format's header pickles).
#[derive(Debug, Default)]
pub(super) struct OpaquePersistentIds;

impl PersistentLoad for OpaquePersistentIds {
    fn persistent_load(&mut self, pid: Value) -> Result<Value, String> {
        Ok(Value::PersId(Box::new(pid)))
    }
}

/// Reads one pickle from the start of `data`; returns the object and the number of bytes consumed
/// (the legacy torch format stores several pickles back to back).
pub(super) fn unpickle(
    data: &[u8],
    loader: &mut dyn PersistentLoad,
) -> Result<(Value, usize), PickleError> {
    let mut machine = Machine {
        data,
        pos: 0,
        op_start: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        pending: Vec::new(),
        clone_budget: BASE_CLONE_BUDGET.saturating_add(2 * data.len() as u64),
        loader,
    };
    let value = machine.run()?;
    Ok((value, machine.pos))
}

/// Size bookkeeping carried next to every stack and memo value, so that nesting and copy costs are
/// known without walking the value.
#[derive(Debug, Clone, Copy)]
struct Meta {
    depth: u32,
    nodes: u64,
}

impl Meta {
    const LEAF: Meta = Meta { depth: 1, nodes: 1 };

    fn parent_of(children: impl IntoIterator<Item = Meta>) -> Meta {
        children.into_iter().fold(Meta::LEAF, |acc, c| Meta {
            depth: acc.depth.max(c.depth.saturating_add(1)),
            nodes: acc.nodes.saturating_add(c.nodes),
        })
    }

    /// `self` after `child` was added to it as one more element.
    fn with_child(self, child: Meta) -> Meta {
        Meta {
            depth: self.depth.max(child.depth.saturating_add(1)),
            nodes: self.nodes.saturating_add(child.nodes),
        }
    }

    /// Walks a value whose size is not tracked (what a [`PersistentLoad`] returned).
    fn of(value: &Value) -> Meta {
        let children: Vec<Meta> = match value {
            Value::Tuple(v) | Value::List(v) | Value::Set(v) => v.iter().map(Meta::of).collect(),
            Value::Dict(items) => items
                .iter()
                .flat_map(|(k, v)| [Meta::of(k), Meta::of(v)])
                .collect(),
            Value::Reduce {
                callable: a,
                args: b,
            }
            | Value::Build { obj: a, state: b } => vec![Meta::of(a), Meta::of(b)],
            Value::PersId(v) => vec![Meta::of(v)],
            _ => Vec::new(),
        };
        Meta::parent_of(children)
    }
}

/// A memoized object: while it is still on the stack, opcodes such as `SETITEMS` may keep mutating it,
/// so the memo refers to its stack slot and takes a copy only once it leaves the stack.
#[derive(Debug)]
enum MemoEntry {
    OnStack(usize),
    Taken(Value, Meta),
}

struct Machine<'a, 'l> {
    data: &'a [u8],
    pos: usize,
    op_start: usize,
    stack: Vec<(Value, Meta)>,
    /// Stack heights at each open `MARK`.
    marks: Vec<usize>,
    memo: HashMap<u32, MemoEntry>,
    /// `(stack slot, memo id)` for `OnStack` entries, in slot order, so that popping finds them.
    pending: Vec<(usize, u32)>,
    clone_budget: u64,
    loader: &'l mut dyn PersistentLoad,
}

impl<'a> Machine<'a, '_> {
    fn err<T>(&self, reason: impl Into<String>) -> Result<T, PickleError> {
        Err(PickleError {
            offset: self.op_start,
            reason: reason.into(),
        })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        if n > self.data.len() - self.pos {
            return self.err(format!(
                "truncated stream: opcode needs {n} bytes but {} remain",
                self.data.len() - self.pos
            ));
        }
        let data: &'a [u8] = self.data;
        let bytes = &data[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let bytes = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn take_u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take_array::<1>()?[0])
    }

    fn take_u32(&mut self) -> Result<u32, PickleError> {
        Ok(u32::from_le_bytes(self.take_array()?))
    }

    /// A length prefix, refused up front if it exceeds what remains (so nothing is allocated for it).
    fn take_len(&mut self, len: u64) -> Result<&'a [u8], PickleError> {
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        self.take(len)
    }

    /// A text-protocol argument: bytes up to the next newline, which is consumed.
    fn take_line(&mut self) -> Result<&'a str, PickleError> {
        let data: &'a [u8] = self.data;
        let rest = &data[self.pos..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return self.err("truncated stream: unterminated text argument");
        };
        self.pos += end + 1;
        match std::str::from_utf8(&rest[..end]) {
            Ok(s) => Ok(s),
            Err(_) => self.err("text argument is not utf-8"),
        }
    }

    fn push(&mut self, value: Value, meta: Meta) -> Result<(), PickleError> {
        if meta.depth > MAX_DEPTH {
            return self.err(format!("objects nested deeper than {MAX_DEPTH} levels"));
        }
        self.stack.push((value, meta));
        Ok(())
    }

    fn push_leaf(&mut self, value: Value) -> Result<(), PickleError> {
        self.push(value, Meta::LEAF)
    }

    /// Charges a copy of `meta.nodes` values against the budget that keeps hostile memo reuse bounded;
    /// called before every copy of a stack or memo value.
    fn charge_copy(&mut self, meta: Meta) -> Result<(), PickleError> {
        if meta.nodes > self.clone_budget {
            return self.err("memoized objects are copied more than the input size can justify");
        }
        self.clone_budget -= meta.nodes;
        Ok(())
    }

    /// Lowest stack slot that the current mark frame may touch.
    fn frame_floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    /// Truncates the stack to `len`, first freezing memo entries that refer to the removed slots.
    fn truncate(&mut self, len: usize) -> Result<Vec<(Value, Meta)>, PickleError> {
        while let Some(&(slot, id)) = self.pending.last() {
            if slot < len {
                break;
            }
            self.pending.pop();
            if matches!(self.memo.get(&id), Some(MemoEntry::OnStack(s)) if *s == slot) {
                let meta = self.stack[slot].1;
                self.charge_copy(meta)?;
                let value = self.stack[slot].0.clone();
                self.memo.insert(id, MemoEntry::Taken(value, meta));
            }
        }
        Ok(self.stack.split_off(len))
    }

    fn pop(&mut self) -> Result<(Value, Meta), PickleError> {
        if self.stack.len() <= self.frame_floor() {
            return self.err("stack underflow");
        }
        let mut top = self.truncate(self.stack.len() - 1)?;
        Ok(top.pop().expect("truncate removed exactly one slot"))
    }

    /// Pops everything above the innermost mark, and the mark.
    fn pop_mark(&mut self) -> Result<Vec<(Value, Meta)>, PickleError> {
        let Some(floor) = self.marks.pop() else {
            return self.err("MARK expected but none is open");
        };
        // Marks are recorded as stack heights; slots below the frame cannot have been popped while the
        // mark was open, so the height is still valid.
        self.truncate(floor)
    }

    fn top_mut(&mut self) -> Result<&mut (Value, Meta), PickleError> {
        if self.stack.len() <= self.frame_floor() {
            return self.err("stack underflow");
        }
        Ok(self.stack.last_mut().expect("checked non-empty"))
    }

    fn memo_put(&mut self, id: u32) -> Result<(), PickleError> {
        if self.stack.len() <= self.frame_floor() {
            return self.err("memo put with an empty stack");
        }
        let slot = self.stack.len() - 1;
        self.memo.insert(id, MemoEntry::OnStack(slot));
        self.pending.push((slot, id));
        Ok(())
    }

    fn memo_get(&mut self, id: u32) -> Result<(), PickleError> {
        let meta = match self.memo.get(&id) {
            Some(MemoEntry::OnStack(slot)) => self.stack[*slot].1,
            Some(MemoEntry::Taken(_, m)) => *m,
            None => return self.err(format!("memo key {id} was never stored")),
        };
        self.charge_copy(meta)?;
        let value = match self.memo.get(&id) {
            Some(MemoEntry::OnStack(slot)) => self.stack[*slot].0.clone(),
            Some(MemoEntry::Taken(v, _)) => v.clone(),
            None => unreachable!("looked up above"),
        };
        self.push(value, meta)
    }

    fn push_tuple(&mut self, items: Vec<(Value, Meta)>) -> Result<(), PickleError> {
        let meta = Meta::parent_of(items.iter().map(|(_, m)| *m));
        let values = items.into_iter().map(|(v, _)| v).collect();
        self.push(Value::Tuple(values), meta)
    }

    fn string(&self, bytes: &[u8]) -> Result<Value, PickleError> {
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(Value::Str(s.to_owned())),
            Err(_) => self.err("string is not valid utf-8"),
        }
    }

    fn run(&mut self) -> Result<Value, PickleError> {
        loop {
            self.op_start = self.pos;
            let op = self.take_u8()?;
            match op {
                // PROTO
                0x80 => {
                    let proto = self.take_u8()?;
                    if proto > HIGHEST_PROTOCOL {
                        return self.err(format!("unsupported pickle protocol {proto}"));
                    }
                }
                // FRAME: only a read-ahead hint; the stream is already in memory.
                0x95 => {
                    let len = u64::from_le_bytes(self.take_array()?);
                    if len > (self.data.len() - self.pos) as u64 {
                        return self.err("truncated stream: frame extends past the end");
                    }
                }
                // STOP
                b'.' => {
                    if !self.marks.is_empty() {
                        return self.err("STOP with an unclosed MARK");
                    }
                    let (value, _) = self.pop()?;
                    return Ok(value);
                }
                // MARK
                b'(' => self.marks.push(self.stack.len()),
                // POP
                b'0' => {
                    if self.stack.len() > self.frame_floor() {
                        self.pop()?;
                    } else {
                        // Python treats POP on an empty frame as POP_MARK.
                        self.pop_mark()?;
                    }
                }
                // POP_MARK
                b'1' => {
                    self.pop_mark()?;
                }
                // DUP
                b'2' => {
                    let meta = self.top_mut()?.1;
                    self.charge_copy(meta)?;
                    let value = self.top_mut()?.0.clone();
                    self.push(value, meta)?;
                }

                // NONE, NEWTRUE, NEWFALSE
                b'N' => self.push_leaf(Value::None)?,
                0x88 => self.push_leaf(Value::Bool(true))?,
                0x89 => self.push_leaf(Value::Bool(false))?,

                // BININT, BININT1, BININT2
                b'J' => {
                    let v = i32::from_le_bytes(self.take_array()?);
                    self.push_leaf(Value::Int(v.into()))?;
                }
                b'K' => {
                    let v = self.take_u8()?;
                    self.push_leaf(Value::Int(v.into()))?;
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take_array()?);
                    self.push_leaf(Value::Int(v.into()))?;
                }
                // LONG1, LONG4
                0x8a => {
                    let n = self.take_u8()?;
                    let v = int_from_le_bytes(self.take_len(n.into())?);
                    self.push_leaf(v)?;
                }
                0x8b => {
                    let n = i32::from_le_bytes(self.take_array()?);
                    if n < 0 {
                        return self.err("LONG4 with a negative length");
                    }
                    let v = int_from_le_bytes(self.take_len(n as u64)?);
                    self.push_leaf(v)?;
                }
                // INT (text): also how protocol 0 spells booleans
                b'I' => {
                    let line = self.take_line()?;
                    let v = match line {
                        "01" => Value::Bool(true),
                        "00" => Value::Bool(false),
                        s => match s.parse::<i64>() {
                            Ok(v) => Value::Int(v),
                            Err(_) => return self.err(format!("bad INT argument {s:?}")),
                        },
                    };
                    self.push_leaf(v)?;
                }
                // LONG (text)
                b'L' => {
                    let line = self.take_line()?;
                    match line.trim_end_matches('L').parse::<i64>() {
                        Ok(v) => self.push_leaf(Value::Int(v))?,
                        Err(_) => return self.err(format!("unsupported LONG argument {line:?}")),
                    }
                }
                // BINFLOAT (big-endian, unlike everything else)
                b'G' => {
                    let v = f64::from_be_bytes(self.take_array()?);
                    self.push_leaf(Value::Float(v))?;
                }
                // FLOAT (text)
                b'F' => {
                    let line = self.take_line()?;
                    match line.parse::<f64>() {
                        Ok(v) => self.push_leaf(Value::Float(v))?,
                        Err(_) => return self.err(format!("bad FLOAT argument {line:?}")),
                    }
                }

                // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
                b'X' => {
                    let n = self.take_u32()?;
                    let bytes = self.take_len(n.into())?;
                    let v = self.string(bytes)?;
                    self.push_leaf(v)?;
                }
                0x8c => {
                    let n = self.take_u8()?;
                    let bytes = self.take_len(n.into())?;
                    let v = self.string(bytes)?;
                    self.push_leaf(v)?;
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.take_array()?);
                    let bytes = self.take_len(n)?;
                    let v = self.string(bytes)?;
                    self.push_leaf(v)?;
                }
                // BINSTRING, SHORT_BINSTRING: Python 2 `str`, text if it decodes
                b'T' | b'U' => {
                    let n = if op == b'T' {
                        let n = i32::from_le_bytes(self.take_array()?);
                        if n < 0 {
                            return self.err("BINSTRING with a negative length");
                        }
                        n as u64
                    } else {
                        self.take_u8()?.into()
                    };
                    let bytes = self.take_len(n)?;
                    let v = match std::str::from_utf8(bytes) {
                        Ok(s) => Value::Str(s.to_owned()),
                        Err(_) => Value::Bytes(bytes.to_vec()),
                    };
                    self.push_leaf(v)?;
                }
                // BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n: u64 = match op {
                        b'B' => self.take_u32()?.into(),
                        b'C' => self.take_u8()?.into(),
                        _ => u64::from_le_bytes(self.take_array()?),
                    };
                    let v = Value::Bytes(self.take_len(n)?.to_vec());
                    self.push_leaf(v)?;
                }

                // EMPTY_TUPLE, TUPLE, TUPLE1, TUPLE2, TUPLE3
                b')' => self.push_leaf(Value::Tuple(Vec::new()))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_tuple(items)?;
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    if self.stack.len() < self.frame_floor() + n {
                        return self.err("stack underflow");
                    }
                    let items = self.truncate(self.stack.len() - n)?;
                    self.push_tuple(items)?;
                }
                // EMPTY_LIST, LIST, APPEND, APPENDS
                b']' => self.push_leaf(Value::List(Vec::new()))?,
                b'l' => {
                    let items = self.pop_mark()?;
                    let meta = Meta::parent_of(items.iter().map(|(_, m)| *m));
                    self.push(
                        Value::List(items.into_iter().map(|(v, _)| v).collect()),
                        meta,
                    )?;
                }
                b'a' => {
                    let item = self.pop()?;
                    self.extend_list(vec![item])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.extend_list(items)?;
                }
                // EMPTY_DICT, DICT, SETITEM, SETITEMS
                b'}' => self.push_leaf(Value::Dict(Vec::new()))?,
                b'd' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return self.err("DICT with an odd number of items");
                    }
                    self.push_leaf(Value::Dict(Vec::new()))?;
                    self.extend_dict(items)?;
                }
                b's' => {
                    if self.stack.len() < self.frame_floor() + 3 {
                        return self.err("stack underflow");
                    }
                    let items = self.truncate(self.stack.len() - 2)?;
                    self.extend_dict(items)?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return self.err("SETITEMS with an odd number of items");
                    }
                    self.extend_dict(items)?;
                }
                // EMPTY_SET, ADDITEMS, FROZENSET
                0x8f => self.push_leaf(Value::Set(Vec::new()))?,
                0x90 => {
                    let items = self.pop_mark()?;
                    let (top, meta) = self.top_mut()?;
                    let Value::Set(set) = top else {
                        return self.err("ADDITEMS on a non-set");
                    };
                    for (v, m) in items {
                        set.push(v);
                        *meta = meta.with_child(m);
                    }
                    let meta = *meta;
                    self.check_depth(meta)?;
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    let meta = Meta::parent_of(items.iter().map(|(_, m)| *m));
                    self.push(
                        Value::Set(items.into_iter().map(|(v, _)| v).collect()),
                        meta,
                    )?;
                }

                // PUT, BINPUT, LONG_BINPUT, MEMOIZE
                b'p' => {
                    let line = self.take_line()?;
                    match line.parse::<u32>() {
                        Ok(id) => self.memo_put(id)?,
                        Err(_) => return self.err(format!("bad PUT argument {line:?}")),
                    }
                }
                b'q' => {
                    let id = self.take_u8()?;
                    self.memo_put(id.into())?;
                }
                b'r' => {
                    let id = self.take_u32()?;
                    self.memo_put(id)?;
                }
                0x94 => {
                    let id = u32::try_from(self.memo.len()).unwrap_or(u32::MAX);
                    self.memo_put(id)?;
                }
                // GET, BINGET, LONG_BINGET
                b'g' => {
                    let line = self.take_line()?;
                    match line.parse::<u32>() {
                        Ok(id) => self.memo_get(id)?,
                        Err(_) => return self.err(format!("bad GET argument {line:?}")),
                    }
                }
                b'h' => {
                    let id = self.take_u8()?;
                    self.memo_get(id.into())?;
                }
                b'j' => {
                    let id = self.take_u32()?;
                    self.memo_get(id)?;
                }

                // GLOBAL, STACK_GLOBAL
                b'c' => {
                    let module = self.take_line()?.to_owned();
                    let name = self.take_line()?.to_owned();
                    self.push_leaf(Value::Global { module, name })?;
                }
                0x93 => {
                    let (name, _) = self.pop()?;
                    let (module, _) = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return self.err("STACK_GLOBAL needs two strings");
                    };
                    self.push_leaf(Value::Global { module, name })?;
                }
                // REDUCE, NEWOBJ, NEWOBJ_EX
                b'R' | 0x81 => {
                    let (args, args_meta) = self.pop()?;
                    let (callable, callable_meta) = self.pop()?;
                    if !matches!(args, Value::Tuple(_)) {
                        return self.err(format!(
                            "call arguments are {}, not a tuple",
                            args.describe()
                        ));
                    }
                    let meta = Meta::parent_of([callable_meta, args_meta]);
                    let value = if op == b'R' {
                        match call(callable, args) {
                            Ok(v) => v,
                            Err(reason) => return self.err(reason),
                        }
                    } else {
                        Value::Reduce {
                            callable: Box::new(callable),
                            args: Box::new(args),
                        }
                    };
                    self.push(value, meta)?;
                }
                0x92 => {
                    let (kwargs, kwargs_meta) = self.pop()?;
                    let (args, args_meta) = self.pop()?;
                    let (cls, cls_meta) = self.pop()?;
                    let meta = Meta::parent_of([cls_meta, args_meta, kwargs_meta]);
                    let args = Value::Tuple(vec![args, kwargs]);
                    self.push(
                        Value::Reduce {
                            callable: Box::new(cls),
                            args: Box::new(args),
                        },
                        meta,
                    )?;
                }
                // BUILD
                b'b' => {
                    let (state, state_meta) = self.pop()?;
                    let (top, meta) = self.top_mut()?;
                    // Torch attaches `_metadata` to state dicts and `__dict__` to parameters through
                    // BUILD; neither matters for the tensors, so such objects keep their identity.
                    if !matches!(top, Value::Dict(_) | Value::Tensor(_)) {
                        let obj = std::mem::replace(top, Value::None);
                        *top = Value::Build {
                            obj: Box::new(obj),
                            state: Box::new(state),
                        };
                        *meta = Meta::parent_of([*meta, state_meta]);
                    }
                    let meta = *meta;
                    self.check_depth(meta)?;
                }
                // PERSID (text), BINPERSID
                b'P' => {
                    let pid = Value::Str(self.take_line()?.to_owned());
                    self.persistent_load(pid)?;
                }
                b'Q' => {
                    let (pid, _) = self.pop()?;
                    self.persistent_load(pid)?;
                }

                _ => {
                    return self.err(format!("unsupported or invalid pickle opcode 0x{op:02x}"));
                }
            }
        }
    }

    fn check_depth(&self, meta: Meta) -> Result<(), PickleError> {
        if meta.depth > MAX_DEPTH {
            return self.err(format!("objects nested deeper than {MAX_DEPTH} levels"));
        }
        Ok(())
    }

    fn extend_list(&mut self, items: Vec<(Value, Meta)>) -> Result<(), PickleError> {
        let (top, meta) = self.top_mut()?;
        match top {
            Value::List(list) => {
                for (v, m) in items {
                    list.push(v);
                    *meta = meta.with_child(m);
                }
            }
            // List subclasses rebuilt by an opaque call receive their items here; nothing we read
            // needs them, and Python would call an arbitrary `append` method anyway.
            Value::Reduce { .. } | Value::Build { .. } => {}
            other => {
                let what = other.describe();
                return self.err(format!("APPEND to {what}"));
            }
        }
        let meta = *meta;
        self.check_depth(meta)
    }

    fn extend_dict(&mut self, items: Vec<(Value, Meta)>) -> Result<(), PickleError> {
        let (top, meta) = self.top_mut()?;
        match top {
            Value::Dict(dict) => {
                let mut it = items.into_iter();
                while let (Some((k, km)), Some((v, vm))) = (it.next(), it.next()) {
                    dict.push((k, v));
                    *meta = meta.with_child(km).with_child(vm);
                }
            }
            // Dict subclasses built by an opaque call (see `extend_list`).
            Value::Reduce { .. } | Value::Build { .. } => {}
            other => {
                let what = other.describe();
                return self.err(format!("SETITEM on {what}"));
            }
        }
        let meta = *meta;
        self.check_depth(meta)
    }

    fn persistent_load(&mut self, pid: Value) -> Result<(), PickleError> {
        match self.loader.persistent_load(pid) {
            Ok(value) => {
                let meta = Meta::of(&value);
                self.push(value, meta)
            }
            Err(reason) => self.err(reason),
        }
    }
}

/// Minimal two's-complement little-endian integer bytes as an `Int` when they fit, else a `BigInt`.
fn int_from_le_bytes(bytes: &[u8]) -> Value {
    let negative = bytes.last().is_some_and(|b| b & 0x80 != 0);
    let fill = if negative { 0xff } else { 0x00 };
    // Redundant sign-extension bytes do not change the value; dropping them makes equal values compare
    // equal however the writer padded them.
    let mut len = bytes.len();
    while len > 1 && bytes[len - 1] == fill && (bytes[len - 2] & 0x80 != 0) == negative {
        len -= 1;
    }
    let bytes = &bytes[..len];
    if bytes.len() <= 8 {
        let mut buf = [fill; 8];
        buf[..bytes.len()].copy_from_slice(bytes);
        Value::Int(i64::from_le_bytes(buf))
    } else {
        Value::BigInt(bytes.to_vec())
    }
}

/// The value of a non-negative `u128` in the form [`int_from_le_bytes`] produces.
pub(super) fn int_value(v: u128) -> Value {
    let mut bytes = v.to_le_bytes().to_vec();
    // A zero sign byte keeps large positive values from reading as negative.
    bytes.push(0);
    int_from_le_bytes(&bytes)
}

/// Interprets the handful of callables whose results we need, keeping every other call opaque.
fn call(callable: Value, args: Value) -> Result<Value, String> {
    let Value::Global { module, name } = &callable else {
        return Ok(opaque_call(callable, args));
    };
    let Value::Tuple(items) = &args else {
        return Ok(opaque_call(callable, args));
    };
    match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") | ("collections", "defaultdict") | ("builtins", "dict") => {
            match items.as_slice() {
                // defaultdict(factory) starts empty too; the factory is irrelevant without code.
                [] => Ok(Value::Dict(Vec::new())),
                [_] if name == "defaultdict" => Ok(Value::Dict(Vec::new())),
                [Value::List(pairs)] if name != "defaultdict" => {
                    let mut dict = Vec::with_capacity(pairs.len());
                    for pair in pairs {
                        match pair {
                            Value::Tuple(kv) | Value::List(kv) if kv.len() == 2 => {
                                dict.push((kv[0].clone(), kv[1].clone()));
                            }
                            _ => return Ok(opaque_call(callable, args)),
                        }
                    }
                    Ok(Value::Dict(dict))
                }
                _ => Ok(opaque_call(callable, args)),
            }
        }
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
            rebuild_tensor(name, items).map(Value::Tensor)
        }
        ("torch._utils", "_rebuild_parameter")
        | ("torch._utils", "_rebuild_parameter_with_state") => match items.first() {
            Some(Value::Tensor(t)) => Ok(Value::Tensor(t.clone())),
            _ => Err(format!("{name} expects a tensor as its first argument")),
        },
        // Tensor subclasses and tensors with Python attributes: `func(*args)` rebuilds the tensor.
        ("torch._tensor", "_rebuild_from_type_v2") => match items.as_slice() {
            [func, _new_type, inner @ Value::Tuple(_), _state] => call(func.clone(), inner.clone()),
            _ => Err("malformed _rebuild_from_type_v2 arguments".into()),
        },
        // How protocol 2 spells Python 3 `bytes`: `_codecs.encode(text, 'latin1')`.
        ("_codecs", "encode") => match items.as_slice() {
            [Value::Str(text), Value::Str(enc)] if enc == "latin1" || enc == "latin-1" => {
                let bytes: Option<Vec<u8>> = text
                    .chars()
                    .map(|c| u8::try_from(u32::from(c)).ok())
                    .collect();
                bytes
                    .map(Value::Bytes)
                    .ok_or_else(|| "_codecs.encode of a non-latin1 string".to_string())
            }
            _ => Ok(opaque_call(callable, args)),
        },
        _ => Ok(opaque_call(callable, args)),
    }
}

fn opaque_call(callable: Value, args: Value) -> Value {
    Value::Reduce {
        callable: Box::new(callable),
        args: Box::new(args),
    }
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])`
/// and its predecessor `_rebuild_tensor(storage, storage_offset, size, stride)`.
fn rebuild_tensor(name: &str, items: &[Value]) -> Result<TensorRef, String> {
    let [storage, offset, size, stride, ..] = items else {
        return Err(format!("{name} called with {} arguments", items.len()));
    };
    let Value::Storage(storage) = storage else {
        return Err(format!(
            "{name} expects a storage but got {}",
            storage.describe()
        ));
    };
    let storage_offset = non_negative(offset)
        .ok_or_else(|| format!("{name}: storage offset is not a non-negative int"))?;
    let size = usize_tuple(size).ok_or_else(|| format!("{name}: size is not a tuple of ints"))?;
    let stride =
        usize_tuple(stride).ok_or_else(|| format!("{name}: stride is not a tuple of ints"))?;
    if size.len() != stride.len() {
        return Err(format!(
            "{name}: size has {} dims but stride has {}",
            size.len(),
            stride.len()
        ));
    }
    Ok(TensorRef {
        storage: storage.clone(),
        storage_offset,
        size,
        stride,
    })
}

fn non_negative(v: &Value) -> Option<usize> {
    match v {
        Value::Int(i) => usize::try_from(*i).ok(),
        _ => None,
    }
}

fn usize_tuple(v: &Value) -> Option<Vec<usize>> {
    match v {
        Value::Tuple(items) | Value::List(items) => items.iter().map(non_negative).collect(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn load(bytes: &[u8]) -> Result<Value, PickleError> {
        unpickle(bytes, &mut OpaquePersistentIds).map(|(v, _)| v)
    }

    fn s(text: &str) -> Value {
        Value::Str(text.into())
    }

    #[test]
    fn reads_scalars_and_containers() {
        // pickle.dumps((None, True, -1, 300, 70000, 1.5, 'hé', b'x', [1], {'a': 2}), protocol=2)
        let bytes = b"\x80\x02(N\x88J\xff\xff\xff\xffM,\x01Jp\x11\x01\x00G?\xf8\x00\x00\x00\x00\x00\x00X\x03\x00\x00\x00h\xc3\xa9q\x00c_codecs\nencode\nq\x01X\x01\x00\x00\x00xq\x02X\x06\x00\x00\x00latin1q\x03\x86q\x04Rq\x05]q\x06K\x01a}q\x07X\x01\x00\x00\x00aq\x08K\x02stq\t.";
        let v = load(bytes).unwrap();
        assert_eq!(
            v,
            Value::Tuple(vec![
                Value::None,
                Value::Bool(true),
                Value::Int(-1),
                Value::Int(300),
                Value::Int(70000),
                Value::Float(1.5),
                s("hé"),
                Value::Bytes(b"x".to_vec()),
                Value::List(vec![Value::Int(1)]),
                Value::Dict(vec![(s("a"), Value::Int(2))]),
            ])
        );
    }

    #[test]
    fn long1_keeps_big_ints_exact() {
        // pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2), the legacy torch magic number
        let magic = int_value(0x1950a86a20f9469cfc6c);
        let mut stream = vec![0x80, 0x02, 0x8a, 0x0a];
        stream.extend_from_slice(&0x1950a86a20f9469cfc6c_u128.to_le_bytes()[..10]);
        stream.push(b'.');
        assert_eq!(load(&stream).unwrap(), magic);
        assert_eq!(load(b"\x8a\x02\xff\x7f.").unwrap(), Value::Int(0x7fff));
        assert_eq!(load(b"\x8a\x01\xff.").unwrap(), Value::Int(-1));
        assert_eq!(load(b"\x8a\x00.").unwrap(), Value::Int(0));
        assert_eq!(
            load(b"\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x00.").unwrap(),
            Value::Int(0)
        );
    }

    #[test]
    fn ordered_dict_is_filled_by_setitems_and_build_state_is_ignored() {
        // OrderedDict([('w', 1)]) with `_metadata` attached, as torch state dicts carry.
        let bytes = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01X\x01\x00\x00\x00wq\x02K\x01s}q\x03X\t\x00\x00\x00_metadataq\x04h\x00)Rq\x05sb.";
        let v = load(bytes).unwrap();
        assert_eq!(v, Value::Dict(vec![(s("w"), Value::Int(1))]));
    }

    #[test]
    fn memo_refers_to_the_object_not_a_snapshot() {
        // d = {'k': 1}; pickle.dumps((d, d), protocol=2): d is memoized before it is filled.
        let bytes = b"\x80\x02}q\x00X\x01\x00\x00\x00kq\x01K\x01sh\x00\x86q\x02.";
        let d = Value::Dict(vec![(s("k"), Value::Int(1))]);
        assert_eq!(
            load(bytes).unwrap(),
            Value::Tuple(vec![d.clone(), d.clone()])
        );
        // pickle.dumps(([d], d), protocol=2): fetched again after d left the stack.
        let bytes = b"\x80\x02]q\x00}q\x01X\x01\x00\x00\x00kq\x02K\x01sah\x01\x86q\x03.";
        assert_eq!(
            load(bytes).unwrap(),
            Value::Tuple(vec![Value::List(vec![d.clone()]), d])
        );
    }

    #[test]
    fn protocol4_stack_global_memoize_and_frames() {
        // pickle.dumps(collections.OrderedDict(a=1), protocol=4)
        let bytes = b"\x80\x04\x95)\x00\x00\x00\x00\x00\x00\x00\x8c\x0bcollections\x94\x8c\x0bOrderedDict\x94\x93\x94)R\x94\x8c\x01a\x94K\x01s.";
        assert_eq!(
            load(bytes).unwrap(),
            Value::Dict(vec![(s("a"), Value::Int(1))])
        );
    }

    #[test]
    fn unknown_calls_stay_opaque() {
        // argparse.Namespace(lr=0.1) at protocol 2: NEWOBJ then BUILD
        let bytes = b"\x80\x02cargparse\nNamespace\nq\x00)\x81q\x01}q\x02X\x02\x00\x00\x00lrq\x03G?\xb9\x99\x99\x99\x99\x99\x9asb.";
        let v = load(bytes).unwrap();
        let Value::Build { obj, state } = v else {
            panic!("expected BUILD, got {v:?}")
        };
        assert!(matches!(*obj, Value::Reduce { .. }));
        assert_eq!(state.dict_get("lr"), Some(&Value::Float(0.1)));
    }

    #[test]
    fn persistent_ids_go_through_the_loader() {
        struct Counting(usize);
        impl PersistentLoad for Counting {
            fn persistent_load(&mut self, pid: Value) -> Result<Value, String> {
                self.0 += 1;
                match pid {
                    Value::Str(s) if s == "bad" => Err("refused pid bad".into()),
                    other => Ok(Value::PersId(Box::new(other))),
                }
            }
        }
        let mut loader = Counting(0);
        let (v, used) = unpickle(b"X\x02\x00\x00\x00okQ.trailing", &mut loader).unwrap();
        assert_eq!(v, Value::PersId(Box::new(s("ok"))));
        assert_eq!(used, 9);
        assert_eq!(loader.0, 1);
        let err = unpickle(b"X\x03\x00\x00\x00badQ.", &mut loader).unwrap_err();
        assert_eq!(err.reason, "refused pid bad");
    }

    #[test]
    fn rebuild_tensor_v2_yields_a_tensor() {
        struct Storages;
        impl PersistentLoad for Storages {
            fn persistent_load(&mut self, _pid: Value) -> Result<Value, String> {
                Ok(Value::Storage(StorageRef {
                    key: "0".into(),
                    storage_type: "FloatStorage".into(),
                    dtype: Some(DType::F32),
                    elem_offset: 0,
                    elem_len: None,
                }))
            }
        }
        // _rebuild_tensor_v2(pid, 2, (2, 3), (3, 1), False, OrderedDict())
        let bytes = b"ctorch._utils\n_rebuild_tensor_v2\n(NQK\x02K\x02K\x03\x86K\x03K\x01\x86\x89ccollections\nOrderedDict\n)Rtq\x00R.";
        let (v, _) = unpickle(bytes, &mut Storages).unwrap();
        let Value::Tensor(t) = v else {
            panic!("expected a tensor, got {v:?}")
        };
        assert_eq!(
            (t.storage_offset, t.size, t.stride),
            (2, vec![2, 3], vec![3, 1])
        );
        assert_eq!(t.storage.key, "0");
    }

    #[test]
    fn malformed_streams_are_errors() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "truncated"),
            (b"\x80", "truncated"),
            (b"\x80\x09.", "unsupported pickle protocol 9"),
            (b"X\xff\xff\xff\x7fabc.", "truncated"),
            (b"\x8d\xff\xff\xff\xff\xff\xff\xff\xff.", "truncated"),
            (b"\x8b\xff\xff\xff\xff.", "negative length"),
            (b"h\x05.", "memo key 5 was never stored"),
            (b"j\x00\x00\x00\x01.", "memo key 16777216 was never stored"),
            (b".", "stack underflow"),
            (b"a.", "stack underflow"),
            (b"(K\x01.", "unclosed MARK"),
            (b"K\x01u.", "MARK expected"),
            (b"\xff.", "invalid pickle opcode 0xff"),
            (b"X\x02\x00\x00\x00\xff\xfe.", "not valid utf-8"),
            (b"K\x01K\x02K\x03\x86q\x00K\x01a.", "APPEND to a tuple"),
            (b"ccollections\nOrderedDict", "unterminated"),
            (b"K\x01K\x02R.", "not a tuple"),
            (b"K\x01", "truncated"),
            (
                b"\x95\xff\x00\x00\x00\x00\x00\x00\x00N.",
                "frame extends past the end",
            ),
        ];
        for (bytes, needle) in cases {
            let err = load(bytes).expect_err(&format!("{bytes:?} should fail"));
            assert!(
                err.reason.contains(needle),
                "{bytes:?}: {err} does not mention {needle:?}"
            );
        }
    }

    #[test]
    fn deep_nesting_is_refused() {
        let mut bytes = vec![b']'; 2000];
        bytes.extend(std::iter::repeat_n(b'a', 1999));
        bytes.push(b'.');
        let err = load(&bytes).unwrap_err();
        assert!(err.reason.contains("nested deeper"), "{err}");
    }

    #[test]
    fn exponential_memo_reuse_is_refused() {
        // l0 = [1]; l(n+1) = [ln, ln] ... each step doubles the copied size.
        let mut bytes = b"]K\x01aq\x00".to_vec();
        for i in 0u8..60 {
            bytes.extend_from_slice(&[b'(', b'h', i, b'h', i, b'l', b'q', i + 1, b'0']);
        }
        bytes.extend_from_slice(b"h\x3c.");
        let err = load(&bytes).unwrap_err();
        assert!(err.reason.contains("copied more"), "{err}");
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = load(&bytes);
        }

        #[test]
        fn random_opcode_soup_never_panics(
            ops in proptest::collection::vec(
                prop::sample::select(b"()0123NKJMXqhrjtlae}du]\x85\x86\x87\x88\x89\x8c\x93\x94RbQ.".to_vec()),
                0..256,
            ),
            args in proptest::collection::vec(any::<u8>(), 256),
        ) {
            // Valid opcodes interleaved with arbitrary argument bytes reach far deeper than pure noise.
            let mut bytes = Vec::new();
            for (op, arg) in ops.iter().zip(args.iter()) {
                bytes.push(*op);
                bytes.push(*arg % 4);
            }
            let _ = load(&bytes);
        }
    }
}
