//! PyTorch checkpoints (`torch.save`: `pytorch_model.bin`, `model.pt`) read without
//! running anything from the file.
//!
//! A `torch.save` file is a pickle: a small program for Python's stack machine whose
//! GLOBAL opcodes import any function and whose REDUCE opcodes call it, which is how a
//! malicious `.bin` runs `os.system`. Here the opcodes are interpreted in Rust
//! (protocols 0 to 5) and never call anything: GLOBAL / STACK_GLOBAL resolve only the
//! names a state dict needs (`collections.OrderedDict`, `torch._utils._rebuild_tensor`,
//! `_v2`, `_v3`, `_rebuild_parameter`, `_rebuild_parameter_with_state`, the storage
//! types `torch.FloatStorage` ... and `torch.storage.UntypedStorage`, the dtypes
//! `torch.float16` ... of `_rebuild_tensor_v3`), each of which this module implements as
//! data. Any other name is refused at once, with one error naming the file and the global;
//! REDUCE, BUILD, NEWOBJ, INST and OBJ on anything else are errors, never ignored values.
//!
//! Containers: the zip format (torch >= 1.6: `<archive>/data.pkl`, `<archive>/data/<key>`,
//! `<archive>/byteorder`; zip64 too) and the legacy format (magic number, protocol,
//! system info, the state dict, its storage keys, then each storage as a little-endian
//! element count and the bytes). Storages are not copied: [`index`] returns, for each
//! tensor, the byte range of its storage in the file (the caller memory-maps it) with
//! the tensor's offset, shape and strides; [`TensorInfo::bytes`] slices a contiguous
//! tensor in place and gathers a strided one (a transposed weight, a slice) into
//! row-major order. Storages shared by several tensors (tied weights, views) are read
//! once per tensor from the same bytes.
//!
//! Bounded: every length and count read from the file is checked against the bytes
//! that remain before anything is allocated; the pickle stack, the mark stack and the
//! memo are capped; containers live in one arena and are referred to by index, so no
//! input makes the reader recurse or copy a value more than once; a tensor must lie
//! inside its storage and hold no more elements than it (no expanded views), so a tensor
//! never allocates more than its storage's bytes, converted.
//!
//! Not candle's reader (`candle_core::pickle`): checked on the fixtures of
//! `scripts/make_pickle_fixtures.py`, it accepts any global (a state dict holding an
//! `os.system` call loads, the call silently skipped), refuses tensors that are neither
//! C- nor Fortran-contiguous (slices, step slices, permutations), reads no legacy file,
//! copies each tensor through a zip reader it re-opens per tensor, and has unbounded
//! inputs (BINUNICODE allocates its 32-bit length before reading; every memo GET deep-copies
//! the value, so a 174-byte pickle that doubles a tuple 24 times took 17 s and grows 4x per
//! 14 bytes; LONG1 over 8 bytes overflows a shift).

use crate::error::{Error, Result};
use safetensors::Dtype;
use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::rc::Rc;

/// Caps on the interpreter's state (a state dict's pickle needs a few thousand entries
/// at most; the memo one entry per tensor part).
const MAX_STACK: usize = 1 << 20;
const MAX_MARKS: usize = 1 << 12;
const MAX_MEMO: usize = 1 << 22;
/// torch's own limit on a tensor's dimensions.
const MAX_DIMS: usize = 64;
/// `torch.serialization`'s magic number, first pickle of the legacy format.
const LEGACY_MAGIC: u128 = 0x1950a86a20f9469cfc6c;
const LEGACY_PROTOCOL: i64 = 1001;

/// One tensor of a checkpoint: where its storage lies in the file and how the tensor
/// views it (offset, shape and strides in elements of `dtype`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
    /// Elements from the start of the storage to the tensor's first element.
    pub offset: usize,
    /// The storage's bytes in the file.
    pub storage: Range<usize>,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Bytes of one element.
    pub fn elem_size(&self) -> usize {
        self.dtype.bitsize() / 8
    }

    /// Row-major with no gaps (dimensions of size 1 may have any stride).
    pub fn is_contiguous(&self) -> bool {
        if self.numel() == 0 {
            return true;
        }
        let mut expect = 1usize;
        for (&d, &s) in self.shape.iter().zip(&self.strides).rev() {
            if d != 1 && s != expect {
                return false;
            }
            expect *= d;
        }
        true
    }

    /// The tensor's bytes in row-major order: a slice of `file` when contiguous, a copy
    /// gathered along the strides otherwise. `file` is the whole file `index` read.
    pub fn bytes<'a>(&self, file: &'a [u8]) -> Cow<'a, [u8]> {
        let (n, es) = (self.numel(), self.elem_size());
        if n == 0 {
            return Cow::Borrowed(&[]);
        }
        let first = self.storage.start + self.offset * es;
        if self.is_contiguous() {
            return Cow::Borrowed(&file[first..first + n * es]);
        }
        Cow::Owned(gather(&file[first..self.storage.end], &self.shape, &self.strides, es))
    }
}

/// Copy the elements of a strided view (starting at `base[0]`) in row-major order.
/// The view was checked to lie inside `base` and to have at least one element.
pub(crate) fn gather(base: &[u8], shape: &[usize], strides: &[usize], es: usize) -> Vec<u8> {
    let n: usize = shape.iter().product();
    let mut out = Vec::with_capacity(n * es);
    let last = shape.len() - 1;
    let (inner, istride) = (shape[last], strides[last]);
    let mut idx = vec![0usize; last];
    let mut off = 0usize;
    loop {
        if istride == 1 {
            out.extend_from_slice(&base[off * es..(off + inner) * es]);
        } else {
            for i in 0..inner {
                let o = (off + i * istride) * es;
                out.extend_from_slice(&base[o..o + es]);
            }
        }
        // The outer dimensions as an odometer.
        let mut d = last;
        loop {
            if d == 0 {
                return out;
            }
            d -= 1;
            idx[d] += 1;
            off += strides[d];
            if idx[d] < shape[d] {
                break;
            }
            off -= strides[d] * shape[d];
            idx[d] = 0;
        }
    }
}

/// Read a `torch.save` file held in memory (zip or legacy format): the state dict's
/// tensors, in the file's order, with the byte ranges of their storages in `bytes`.
/// Nothing is copied and nothing from the file is run. `path` names the file in errors.
pub fn index(bytes: &[u8], path: &Path) -> Result<Vec<(String, TensorInfo)>> {
    if bytes.is_empty() {
        return Err(Error::file(path, "empty file: not a PyTorch checkpoint"));
    }
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        return zip_index(bytes, path);
    }
    if bytes.len() >= 262 && &bytes[257..262] == b"ustar" {
        return Err(Error::file(path, "a tar archive (torch.save's format before torch 0.4): not supported; re-save it with a recent torch"));
    }
    legacy_index(bytes, path)
}

// ---------------------------------------------------------------------------------------
// The pickle interpreter

/// A pickled value. Containers live in the interpreter's arena and are referred to by
/// index, so copies (memo GETs) are cheap and nothing is recursive.
#[derive(Debug, Clone)]
enum V {
    None,
    Bool(bool),
    Int(i64),
    /// An integer that does not fit in i64: its little-endian two's complement bytes.
    Big(Rc<[u8]>),
    Float,
    Str(Rc<str>),
    Bytes,
    Global(G),
    Obj(u32),
    Storage(u32),
    Tensor(u32),
}

#[derive(Debug)]
enum Obj {
    Tuple(Vec<V>),
    List(Vec<V>),
    Dict(Vec<(V, V)>),
    Set(Vec<V>),
}

/// The globals a state dict needs; everything else is refused.
#[derive(Debug, Clone, Copy, PartialEq)]
enum G {
    OrderedDict,
    Rebuild(Rebuild),
    StorageType(Kind),
    Dtype(Dtype),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Rebuild {
    V1,
    V2,
    V3,
    Parameter,
    ParameterWithState,
}

/// A storage's element type: typed (legacy storage classes) or raw bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Typed(Dtype),
    Untyped,
}

impl Kind {
    fn elem_size(self) -> usize {
        match self {
            Kind::Typed(d) => d.bitsize() / 8,
            Kind::Untyped => 1,
        }
    }
}

fn storage_dtype(name: &str) -> Option<Dtype> {
    Some(match name {
        "DoubleStorage" => Dtype::F64,
        "FloatStorage" => Dtype::F32,
        "HalfStorage" => Dtype::F16,
        "BFloat16Storage" => Dtype::BF16,
        "LongStorage" => Dtype::I64,
        "IntStorage" => Dtype::I32,
        "ShortStorage" => Dtype::I16,
        "CharStorage" => Dtype::I8,
        "ByteStorage" => Dtype::U8,
        "BoolStorage" => Dtype::BOOL,
        _ => return None,
    })
}

fn torch_dtype(name: &str) -> Option<Dtype> {
    Some(match name {
        "float64" | "double" => Dtype::F64,
        "float32" | "float" => Dtype::F32,
        "float16" | "half" => Dtype::F16,
        "bfloat16" => Dtype::BF16,
        "int64" | "long" => Dtype::I64,
        "int32" | "int" => Dtype::I32,
        "int16" | "short" => Dtype::I16,
        "int8" => Dtype::I8,
        "uint8" => Dtype::U8,
        "bool" => Dtype::BOOL,
        "uint16" => Dtype::U16,
        "uint32" => Dtype::U32,
        "uint64" => Dtype::U64,
        "float8_e4m3fn" => Dtype::F8_E4M3,
        "float8_e5m2" => Dtype::F8_E5M2,
        _ => return None,
    })
}

/// The allowlist. `Err` carries the message for a name that is not on it.
fn resolve(module: &str, name: &str) -> std::result::Result<G, String> {
    let g = match (module, name) {
        ("collections", "OrderedDict") => G::OrderedDict,
        ("torch._utils", "_rebuild_tensor") => G::Rebuild(Rebuild::V1),
        ("torch._utils", "_rebuild_tensor_v2") => G::Rebuild(Rebuild::V2),
        ("torch._utils", "_rebuild_tensor_v3") => G::Rebuild(Rebuild::V3),
        ("torch._utils", "_rebuild_parameter") => G::Rebuild(Rebuild::Parameter),
        ("torch._utils", "_rebuild_parameter_with_state") => G::Rebuild(Rebuild::ParameterWithState),
        ("torch" | "torch.storage", "UntypedStorage") => G::StorageType(Kind::Untyped),
        ("torch", n) if storage_dtype(n).is_some() => G::StorageType(Kind::Typed(storage_dtype(n).unwrap())),
        ("torch", n) if torch_dtype(n).is_some() => G::Dtype(torch_dtype(n).unwrap()),
        ("torch", n) if n.ends_with("Storage") => {
            return Err(format!("the tensor storage type `torch.{n}` is not supported (f32, f16, bf16 and integer types are)"))
        }
        _ => {
            return Err(format!(
                "refuses to load: the pickle calls `{module}.{name}`, which a state dict never needs; nothing from the file was run"
            ))
        }
    };
    Ok(g)
}

/// A storage the pickle refers to by persistent id.
#[derive(Debug)]
struct StorageRef {
    key: String,
    kind: Kind,
    /// Elements of `kind` (bytes for untyped storages).
    numel: usize,
}

impl StorageRef {
    fn nbytes(&self) -> usize {
        self.numel * self.kind.elem_size()
    }
}

#[derive(Debug, Clone)]
struct TensorRec {
    storage: u32,
    dtype: Dtype,
    offset: usize,
    shape: Vec<usize>,
    strides: Vec<usize>,
}

/// A failure inside a pickle: a refused global (reported as is) or malformed input.
enum Fail {
    Refused(String),
    Bad(String),
}

type R<T> = std::result::Result<T, Fail>;

fn bad<T>(msg: impl Into<String>) -> R<T> {
    Err(Fail::Bad(msg.into()))
}

struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<V>,
    marks: Vec<usize>,
    memo: HashMap<u64, V>,
    objs: Vec<Obj>,
    storages: Vec<StorageRef>,
    storage_keys: HashMap<String, u32>,
    tensors: Vec<TensorRec>,
}

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8]) -> Self {
        Unpickler {
            data,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            objs: Vec::new(),
            storages: Vec::new(),
            storage_keys: HashMap::new(),
            tensors: Vec::new(),
        }
    }

    // -- reading the opcode stream --

    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        if n > self.data.len() - self.pos {
            return bad(format!("truncated: {n} bytes needed, {} left", self.data.len() - self.pos));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> R<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }

    fn u32(&mut self) -> R<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn i32(&mut self) -> R<i32> {
        Ok(i32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn u64(&mut self) -> R<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    /// A length read from the file, checked against the bytes that remain.
    fn len_ok(&self, n: u64) -> R<usize> {
        let left = (self.data.len() - self.pos) as u64;
        if n > left {
            return bad(format!("truncated: a length of {n} bytes, {left} left"));
        }
        Ok(n as usize)
    }

    /// A text line (protocol 0), without its newline.
    fn line(&mut self) -> R<&'a str> {
        let rest = &self.data[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return bad("truncated: a text argument without its newline");
        };
        self.pos += n + 1;
        let l = &rest[..n];
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        std::str::from_utf8(l).or_else(|_| bad("a text argument is not UTF-8"))
    }

    fn utf8(&mut self, n: usize) -> R<V> {
        let b = self.take(n)?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(V::Str(s.into())),
            Err(_) => bad("a string is not valid UTF-8"),
        }
    }

    // -- the stack --

    fn push(&mut self, v: V) -> R<()> {
        if self.stack.len() >= MAX_STACK {
            return bad(format!("the pickle stack grows past {MAX_STACK} values"));
        }
        self.stack.push(v);
        Ok(())
    }

    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> R<V> {
        if self.stack.len() <= self.floor() {
            return bad("stack underflow");
        }
        Ok(self.stack.pop().unwrap())
    }

    fn top(&self) -> R<&V> {
        if self.stack.len() <= self.floor() {
            return bad("stack underflow");
        }
        Ok(self.stack.last().unwrap())
    }

    fn pop_mark(&mut self) -> R<Vec<V>> {
        let Some(m) = self.marks.pop() else {
            return bad("no MARK on the stack");
        };
        Ok(self.stack.split_off(m))
    }

    fn new_obj(&mut self, o: Obj) -> R<V> {
        if self.objs.len() >= u32::MAX as usize {
            return bad("too many objects");
        }
        self.objs.push(o);
        Ok(V::Obj((self.objs.len() - 1) as u32))
    }

    fn kind(&self, v: &V) -> String {
        match v {
            V::None => "None".into(),
            V::Bool(_) => "bool".into(),
            V::Int(_) | V::Big(_) => "int".into(),
            V::Float => "float".into(),
            V::Str(_) => "str".into(),
            V::Bytes => "bytes".into(),
            V::Global(g) => format!("{g:?}"),
            V::Obj(i) => match &self.objs[*i as usize] {
                Obj::Tuple(_) => "tuple",
                Obj::List(_) => "list",
                Obj::Dict(_) => "dict",
                Obj::Set(_) => "set",
            }
            .into(),
            V::Storage(_) => "storage".into(),
            V::Tensor(_) => "tensor".into(),
        }
    }

    fn tuple(&self, v: &V, what: &str) -> R<Vec<V>> {
        if let V::Obj(i) = v {
            if let Obj::Tuple(t) = &self.objs[*i as usize] {
                return Ok(t.clone());
            }
        }
        bad(format!("{what} is a {}, not a tuple", self.kind(v)))
    }

    fn dict_items(&self, v: &V) -> Option<&[(V, V)]> {
        match v {
            V::Obj(i) => match &self.objs[*i as usize] {
                Obj::Dict(d) => Some(d),
                _ => None,
            },
            _ => None,
        }
    }

    fn int(&self, v: &V, what: &str) -> R<usize> {
        match v {
            V::Int(i) if *i >= 0 => usize::try_from(*i).or_else(|_| bad(format!("{what} {i} is too large"))),
            V::Int(i) => bad(format!("{what} is negative ({i})")),
            other => bad(format!("{what} is a {}, not an int", self.kind(other))),
        }
    }

    fn ints(&self, v: &V, what: &str) -> R<Vec<usize>> {
        let t = self.tuple(v, what)?;
        if t.len() > MAX_DIMS {
            return bad(format!("{what} has {} dimensions (at most {MAX_DIMS})", t.len()));
        }
        t.iter().map(|x| self.int(x, what)).collect()
    }

    // -- the interpreter --

    /// Run the pickle from the start of `data` to its STOP; return the value.
    fn run(&mut self) -> R<V> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    let p = self.u8()?;
                    if p > 5 {
                        return bad(format!("unsupported pickle protocol {p}"));
                    }
                }
                0x95 => {
                    // FRAME: a hint of the next frame's length; the opcodes follow as usual.
                    let n = self.u64()?;
                    self.len_ok(n)?;
                }
                b'.' => return self.pop(),
                b'(' => {
                    if self.marks.len() >= MAX_MARKS {
                        return bad(format!("more than {MAX_MARKS} nested MARKs"));
                    }
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v)?;
                }
                b'N' => self.push(V::None)?,
                0x88 => self.push(V::Bool(true))?,
                0x89 => self.push(V::Bool(false))?,
                b'I' => {
                    let l = self.line()?;
                    let v = match l {
                        "01" => V::Bool(true),
                        "00" => V::Bool(false),
                        _ => V::Int(l.parse().or_else(|_| bad(format!("INT argument `{l}` is not an integer")))?),
                    };
                    self.push(v)?;
                }
                b'J' => {
                    let v = self.i32()?;
                    self.push(V::Int(v as i64))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(V::Int(v as i64))?;
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(V::Int(v as i64))?;
                }
                b'L' => {
                    let l = self.line()?;
                    let l = l.strip_suffix('L').unwrap_or(l);
                    let v = l.parse().or_else(|_| bad(format!("LONG argument `{l}` is not an integer of 64 bits")))?;
                    self.push(V::Int(v))?;
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    self.push(int_le(b))?;
                }
                0x8b => {
                    let n = self.i32()?;
                    if n < 0 {
                        return bad("LONG4 with a negative length");
                    }
                    let n = self.len_ok(n as u64)?;
                    let b = self.take(n)?;
                    self.push(int_le(b))?;
                }
                b'F' => {
                    let l = self.line()?;
                    l.parse::<f64>().or_else(|_| bad(format!("FLOAT argument `{l}` is not a number")))?;
                    self.push(V::Float)?;
                }
                b'G' => {
                    self.take(8)?;
                    self.push(V::Float)?;
                }
                b'S' => {
                    // Protocol 0 byte string: a quoted repr; only the escape-free ones.
                    let l = self.line()?;
                    let q = l.as_bytes().first().copied();
                    let inner = match q {
                        Some(c @ (b'\'' | b'"')) if l.len() >= 2 && l.as_bytes()[l.len() - 1] == c => &l[1..l.len() - 1],
                        _ => return bad("STRING argument is not quoted"),
                    };
                    if inner.contains('\\') {
                        return bad("STRING with escapes (protocol 0) is not supported");
                    }
                    let v = V::Str(inner.into());
                    self.push(v)?;
                }
                b'T' => {
                    let n = self.i32()?;
                    if n < 0 {
                        return bad("BINSTRING with a negative length");
                    }
                    let n = self.len_ok(n as u64)?;
                    let v = self.py2_str(n)?;
                    self.push(v)?;
                }
                b'U' => {
                    let n = self.u8()? as usize;
                    let v = self.py2_str(n)?;
                    self.push(v)?;
                }
                b'V' => {
                    let l = self.line()?;
                    let v = V::Str(raw_unicode_escape(l).or_else(bad)?.into());
                    self.push(v)?;
                }
                b'X' => {
                    let n = self.u32()?;
                    let n = self.len_ok(n as u64)?;
                    let v = self.utf8(n)?;
                    self.push(v)?;
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.utf8(n)?;
                    self.push(v)?;
                }
                0x8d => {
                    let n = self.u64()?;
                    let n = self.len_ok(n)?;
                    let v = self.utf8(n)?;
                    self.push(v)?;
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => self.u32()? as u64,
                        b'C' => self.u8()? as u64,
                        _ => self.u64()?,
                    };
                    let n = self.len_ok(n)?;
                    self.take(n)?;
                    self.push(V::Bytes)?;
                }
                b')' => {
                    let v = self.new_obj(Obj::Tuple(Vec::new()))?;
                    self.push(v)?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    let v = self.new_obj(Obj::Tuple(items))?;
                    self.push(v)?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    let v = self.new_obj(Obj::Tuple(items))?;
                    self.push(v)?;
                }
                b']' => {
                    let v = self.new_obj(Obj::List(Vec::new()))?;
                    self.push(v)?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    let v = self.new_obj(Obj::List(items))?;
                    self.push(v)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.extend_list(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.extend_list(items)?;
                }
                b'}' => {
                    let v = self.new_obj(Obj::Dict(Vec::new()))?;
                    self.push(v)?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = pairs(items)?;
                    let v = self.new_obj(Obj::Dict(pairs))?;
                    self.push(v)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.extend_dict(vec![(k, v)])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs = pairs(items)?;
                    self.extend_dict(pairs)?;
                }
                0x8f => {
                    let v = self.new_obj(Obj::Set(Vec::new()))?;
                    self.push(v)?;
                }
                0x90 => {
                    let items = self.pop_mark()?;
                    let t = self.top()?.clone();
                    match t {
                        V::Obj(i) if matches!(self.objs[i as usize], Obj::Set(_)) => {
                            if let Obj::Set(s) = &mut self.objs[i as usize] {
                                s.extend(items);
                            }
                        }
                        other => return bad(format!("ADDITEMS to a {}, not a set", self.kind(&other))),
                    }
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    let v = self.new_obj(Obj::Set(items))?;
                    self.push(v)?;
                }
                b'p' => {
                    let l = self.line()?;
                    let i = l.parse().or_else(|_| bad(format!("PUT argument `{l}` is not an index")))?;
                    self.memo_put(i)?;
                }
                b'q' => {
                    let i = self.u8()?;
                    self.memo_put(i as u64)?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i as u64)?;
                }
                0x94 => {
                    let i = self.memo.len() as u64;
                    self.memo_put(i)?;
                }
                b'g' => {
                    let l = self.line()?;
                    let i = l.parse().or_else(|_| bad(format!("GET argument `{l}` is not an index")))?;
                    self.memo_get(i)?;
                }
                b'h' => {
                    let i = self.u8()?;
                    self.memo_get(i as u64)?;
                }
                b'j' => {
                    let i = self.u32()?;
                    self.memo_get(i as u64)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = resolve(module, name).map_err(Fail::Refused)?;
                    self.push(V::Global(g))?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let g = match (&module, &name) {
                        (V::Str(m), V::Str(n)) => resolve(m, n).map_err(Fail::Refused)?,
                        _ => return bad("STACK_GLOBAL on values that are not strings"),
                    };
                    self.push(V::Global(g))?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let v = self.call(f, args)?;
                    self.push(v)?;
                }
                0x81 | 0x92 => {
                    let kwargs = if op == 0x92 { Some(self.pop()?) } else { None };
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    if let Some(k) = kwargs {
                        if self.dict_items(&k).map(|d| !d.is_empty()).unwrap_or(true) {
                            return bad("NEWOBJ_EX with keyword arguments");
                        }
                    }
                    let v = self.instantiate(cls, args)?;
                    self.push(v)?;
                }
                b'i' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = resolve(module, name).map_err(Fail::Refused)?;
                    let args = self.pop_mark()?;
                    let args = self.new_obj(Obj::Tuple(args))?;
                    let v = self.instantiate(V::Global(g), args)?;
                    self.push(v)?;
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return bad("OBJ without a class");
                    }
                    let cls = items.remove(0);
                    let args = self.new_obj(Obj::Tuple(items))?;
                    let v = self.instantiate(cls, args)?;
                    self.push(v)?;
                }
                b'b' => {
                    let state = self.pop()?;
                    let obj = self.top()?.clone();
                    self.build(&obj, &state)?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(&pid)?;
                    self.push(v)?;
                }
                b'P' => return bad("PERSID (a text persistent id) is not how torch.save refers to storages"),
                0x82..=0x84 => return bad("EXT opcodes (the copyreg extension registry) are not supported"),
                0x97 | 0x98 => return bad("out-of-band buffers (pickle protocol 5) are not supported"),
                other => return bad(format!("unknown opcode 0x{other:02x}")),
            }
        }
    }

    /// A Python 2 `str` (BINSTRING): text when UTF-8 (torch.load decodes it so), else bytes.
    fn py2_str(&mut self, n: usize) -> R<V> {
        let b = self.take(n)?;
        Ok(match std::str::from_utf8(b) {
            Ok(s) => V::Str(s.into()),
            Err(_) => V::Bytes,
        })
    }

    fn memo_put(&mut self, i: u64) -> R<()> {
        let v = self.top()?.clone();
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&i) {
            return bad(format!("the memo grows past {MAX_MEMO} entries"));
        }
        self.memo.insert(i, v);
        Ok(())
    }

    fn memo_get(&mut self, i: u64) -> R<()> {
        let Some(v) = self.memo.get(&i).cloned() else {
            return bad(format!("memo entry {i} is read before it is written"));
        };
        self.push(v)
    }

    fn extend_list(&mut self, items: Vec<V>) -> R<()> {
        let t = self.top()?.clone();
        if let V::Obj(i) = t {
            if let Obj::List(l) = &mut self.objs[i as usize] {
                l.extend(items);
                return Ok(());
            }
        }
        bad(format!("APPEND to a {}, not a list", self.kind(&t)))
    }

    fn extend_dict(&mut self, new: Vec<(V, V)>) -> R<()> {
        let t = self.top()?.clone();
        if let V::Obj(i) = t {
            if let Obj::Dict(d) = &mut self.objs[i as usize] {
                d.extend(new);
                return Ok(());
            }
        }
        bad(format!("SETITEM on a {}, not a dict", self.kind(&t)))
    }

    /// NEWOBJ / INST / OBJ: only `OrderedDict()`.
    fn instantiate(&mut self, cls: V, args: V) -> R<V> {
        let args = self.tuple(&args, "the arguments")?;
        match cls {
            V::Global(G::OrderedDict) if args.is_empty() => self.new_obj(Obj::Dict(Vec::new())),
            V::Global(G::OrderedDict) => bad("OrderedDict created with arguments"),
            other => bad(format!("cannot create an object of {}", self.kind(&other))),
        }
    }

    /// REDUCE: a call of an allowlisted function, done here as data.
    fn call(&mut self, f: V, args: V) -> R<V> {
        let g = match f {
            V::Global(g) => g,
            other => return bad(format!("REDUCE calls a {}, not a function", self.kind(&other))),
        };
        let a = self.tuple(&args, "the arguments")?;
        match g {
            G::OrderedDict if a.is_empty() => self.new_obj(Obj::Dict(Vec::new())),
            G::OrderedDict => bad("OrderedDict called with arguments"),
            G::Rebuild(r) => self.rebuild(r, a),
            G::StorageType(_) | G::Dtype(_) => bad(format!("REDUCE calls {g:?}, which is not a function")),
        }
    }

    fn rebuild(&mut self, r: Rebuild, a: Vec<V>) -> R<V> {
        let n = a.len();
        let arity = |ok: bool, name: &str| if ok { Ok(()) } else { bad(format!("{name} called with {n} arguments")) };
        match r {
            Rebuild::V1 => {
                arity(n == 4, "_rebuild_tensor")?;
                self.tensor(&a[0], &a[1], &a[2], &a[3], None)
            }
            Rebuild::V2 => {
                arity(n == 6 || n == 7, "_rebuild_tensor_v2")?;
                self.check_flags(&a[4], &a[5], a.get(6))?;
                self.tensor(&a[0], &a[1], &a[2], &a[3], None)
            }
            Rebuild::V3 => {
                arity(n == 7 || n == 8, "_rebuild_tensor_v3")?;
                self.check_flags(&a[4], &a[5], a.get(7))?;
                let d = match &a[6] {
                    V::Global(G::Dtype(d)) => *d,
                    other => return bad(format!("_rebuild_tensor_v3's dtype is a {}", self.kind(other))),
                };
                self.tensor(&a[0], &a[1], &a[2], &a[3], Some(d))
            }
            Rebuild::Parameter | Rebuild::ParameterWithState => {
                let with_state = r == Rebuild::ParameterWithState;
                arity(n == if with_state { 4 } else { 3 }, "_rebuild_parameter")?;
                if !matches!(a[0], V::Tensor(_)) {
                    return bad(format!("_rebuild_parameter of a {}, not a tensor", self.kind(&a[0])));
                }
                self.check_flags(&a[1], &a[2], None)?;
                // The state (Python attributes set on the Parameter) holds only values that
                // passed the allowlist; it does not change the tensor's values.
                Ok(a[0].clone())
            }
        }
    }

    /// `requires_grad`, `backward_hooks` and the optional metadata of a rebuild call.
    fn check_flags(&self, requires_grad: &V, hooks: &V, metadata: Option<&V>) -> R<()> {
        if !matches!(requires_grad, V::Bool(_)) {
            return bad(format!("requires_grad is a {}, not a bool", self.kind(requires_grad)));
        }
        if self.dict_items(hooks).is_none() {
            return bad(format!("backward_hooks is a {}, not a dict", self.kind(hooks)));
        }
        match metadata {
            None | Some(V::None) => Ok(()),
            Some(m) => match self.dict_items(m) {
                // The conj / neg bits change the values: refuse rather than read them wrong.
                // (A few bits at most: a cap keeps a memo'd huge dict from being scanned per call.)
                Some(items) if items.len() <= 16 && items.iter().all(|(_, v)| matches!(v, V::Bool(false))) => Ok(()),
                Some(_) => bad("a tensor with its conj or neg bit set is not supported"),
                None => bad(format!("tensor metadata is a {}, not a dict", self.kind(m))),
            },
        }
    }

    fn tensor(&mut self, storage: &V, offset: &V, size: &V, stride: &V, dtype: Option<Dtype>) -> R<V> {
        let sid = match storage {
            V::Storage(i) => *i,
            other => return bad(format!("a tensor's storage is a {}, not a storage", self.kind(other))),
        };
        let st = &self.storages[sid as usize];
        let dtype = match (st.kind, dtype) {
            (Kind::Typed(d), None) => d,
            (Kind::Typed(d), Some(d2)) if d == d2 => d,
            (Kind::Typed(d), Some(d2)) => return bad(format!("a {d2} tensor on a {d} storage")),
            (Kind::Untyped, Some(d)) => d,
            (Kind::Untyped, None) => return bad("a tensor on an untyped storage without a dtype"),
        };
        let es = dtype.bitsize() / 8;
        if es == 0 || dtype.bitsize() % 8 != 0 {
            return bad(format!("dtype {dtype} is not supported"));
        }
        let avail = st.nbytes() / es;
        let offset = self.int(offset, "the storage offset")?;
        let shape = self.ints(size, "the size")?;
        let strides = self.ints(stride, "the stride")?;
        if shape.len() != strides.len() {
            return bad(format!("a size of {} dimensions with a stride of {}", shape.len(), strides.len()));
        }
        let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        let Some(numel) = numel else {
            return bad(format!("the size {shape:?} overflows"));
        };
        if numel > 0 {
            let mut last = Some(offset);
            for (&d, &s) in shape.iter().zip(&strides) {
                last = last.and_then(|l| (d - 1).checked_mul(s).and_then(|x| l.checked_add(x)));
            }
            match last {
                Some(l) if l < avail => {}
                _ => {
                    return bad(format!(
                        "a tensor of size {shape:?}, stride {strides:?} at offset {offset} reaches past its storage `{}` of {avail} elements",
                        st.key
                    ))
                }
            }
            if numel > avail {
                return bad(format!(
                    "a tensor of {numel} elements on a storage of {avail} (an expanded view) is not supported"
                ));
            }
        }
        if self.tensors.len() >= u32::MAX as usize {
            return bad("too many tensors");
        }
        self.tensors.push(TensorRec { storage: sid, dtype, offset, shape, strides });
        Ok(V::Tensor((self.tensors.len() - 1) as u32))
    }

    /// BUILD: setting attributes. Only an OrderedDict's (`_metadata` of a state dict).
    fn build(&self, obj: &V, state: &V) -> R<()> {
        if self.dict_items(obj).is_none() {
            return bad(format!("BUILD on a {}: only a state dict's attributes can be set", self.kind(obj)));
        }
        let ok = match state {
            V::None => true,
            s if self.dict_items(s).is_some() => true,
            // (dict state, slots state)
            V::Obj(i) => match &self.objs[*i as usize] {
                Obj::Tuple(t) if t.len() == 2 => {
                    t.iter().all(|x| matches!(x, V::None) || self.dict_items(x).is_some())
                }
                _ => false,
            },
            _ => false,
        };
        if !ok {
            return bad(format!("BUILD with a {} state", self.kind(state)));
        }
        Ok(())
    }

    /// BINPERSID: `('storage', storage_type, key, location, numel[, view_metadata])`.
    fn persistent_load(&mut self, pid: &V) -> R<V> {
        let t = self.tuple(pid, "a persistent id")?;
        if !(t.len() == 5 || t.len() == 6) || !matches!(&t[0], V::Str(s) if &**s == "storage") {
            return bad("a persistent id that is not `('storage', type, key, location, size)`");
        }
        let kind = match &t[1] {
            V::Global(G::StorageType(k)) => *k,
            other => return bad(format!("a storage whose type is a {}", self.kind(other))),
        };
        let key = match &t[2] {
            V::Str(s) => s.to_string(),
            other => return bad(format!("a storage key that is a {}", self.kind(other))),
        };
        if !matches!(t[3], V::Str(_)) {
            return bad("a storage location that is not a string");
        }
        let numel = self.int(&t[4], "a storage size")?;
        if numel.checked_mul(kind.elem_size()).is_none() {
            return bad(format!("a storage of {numel} elements overflows"));
        }
        if t.len() == 6 && !matches!(t[5], V::None) {
            return bad("storage views (torch < 1.0's format) are not supported");
        }
        if let Some(&i) = self.storage_keys.get(&key) {
            let s = &self.storages[i as usize];
            if s.kind != kind || s.numel != numel {
                return bad(format!("storage `{key}` is given two types or sizes"));
            }
            return Ok(V::Storage(i));
        }
        if self.storages.len() >= u32::MAX as usize {
            return bad("too many storages");
        }
        self.storages.push(StorageRef { key: key.clone(), kind, numel });
        let i = (self.storages.len() - 1) as u32;
        self.storage_keys.insert(key, i);
        Ok(V::Storage(i))
    }

    /// The state dict the pickle returned: `(name, tensor)` in the file's order.
    fn state_dict(&self, top: &V) -> R<Vec<(String, u32)>> {
        let Some(items) = self.dict_items(top) else {
            return bad(format!("the pickle holds a {}, not a state dict (a dict of tensors)", self.kind(top)));
        };
        let mut out = Vec::with_capacity(items.len());
        let mut seen = std::collections::HashSet::new();
        for (k, v) in items {
            let V::Str(k) = k else {
                return bad(format!("a state dict key that is a {}, not a string", self.kind(k)));
            };
            let V::Tensor(t) = v else {
                return bad(format!(
                    "entry `{k}` is a {}, not a tensor: not a state dict (a training checkpoint? save its model state dict alone)",
                    self.kind(v)
                ));
            };
            if !seen.insert(k.clone()) {
                return bad(format!("tensor `{k}` appears twice"));
            }
            out.push((k.to_string(), *t));
        }
        Ok(out)
    }
}

/// A little-endian two's complement integer (LONG1 / LONG4).
fn int_le(b: &[u8]) -> V {
    if b.is_empty() {
        return V::Int(0);
    }
    let neg = b[b.len() - 1] & 0x80 != 0;
    let fill = if neg { 0xff } else { 0 };
    if b.len() <= 8 || b[8..].iter().all(|&x| x == fill) && (b[7] & 0x80 != 0) == neg {
        let mut a = [fill; 8];
        let n = b.len().min(8);
        a[..n].copy_from_slice(&b[..n]);
        return V::Int(i64::from_le_bytes(a));
    }
    V::Big(b.into())
}

fn pairs(items: Vec<V>) -> R<Vec<(V, V)>> {
    if !items.len().is_multiple_of(2) {
        return bad("an odd number of items for a dict");
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

/// Python's raw-unicode-escape (protocol 0 UNICODE): latin-1 bytes with `\uXXXX` and `\UXXXXXXXX`.
fn raw_unicode_escape(s: &str) -> std::result::Result<String, String> {
    let b = s.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() && (b[i + 1] == b'u' || b[i + 1] == b'U') {
            let n = if b[i + 1] == b'u' { 4 } else { 8 };
            let hex = s.get(i + 2..i + 2 + n).ok_or("a truncated \\u escape")?;
            let c = u32::from_str_radix(hex, 16).ok().and_then(char::from_u32).ok_or("an invalid \\u escape")?;
            out.push(c);
            i += 2 + n;
        } else {
            // `s` is UTF-8 here (from `line`): copy the character.
            let c = s[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    Ok(out)
}

/// A parsed state dict pickle.
struct Parsed {
    entries: Vec<(String, TensorRec)>,
    storages: Vec<StorageRef>,
}

/// Run one pickle found at `base` in the file; `what` names it in errors.
fn run_pickle<'a>(bytes: &'a [u8], base: usize, path: &Path, what: &str) -> Result<(Unpickler<'a>, V)> {
    let mut u = Unpickler::new(&bytes[base..]);
    match u.run() {
        Ok(v) => Ok((u, v)),
        Err(e) => Err(fail(e, path, what, base + u.pos)),
    }
}

fn fail(e: Fail, path: &Path, what: &str, at: usize) -> Error {
    match e {
        Fail::Refused(m) => Error::file(path, m),
        Fail::Bad(m) => Error::file(path, format!("not a valid PyTorch checkpoint: {what}, at byte {at} of the file: {m}")),
    }
}

fn parse_state_dict(bytes: &[u8], base: usize, path: &Path, what: &str) -> Result<(Parsed, usize)> {
    let (mut u, top) = run_pickle(bytes, base, path, what)?;
    let end = base + u.pos;
    let names = u.state_dict(&top).map_err(|e| fail(e, path, what, end))?;
    // Several names may hold the same tensor (tied weights): each gets its own record.
    let entries = names.into_iter().map(|(n, t)| (n, u.tensors[t as usize].clone())).collect();
    Ok((Parsed { entries, storages: std::mem::take(&mut u.storages) }, end))
}

/// Join the parsed tensors with their storages' byte ranges (`ranges[i]` for storage `i`).
fn infos(p: Parsed, ranges: &[Range<usize>]) -> Vec<(String, TensorInfo)> {
    p.entries
        .into_iter()
        .map(|(n, r)| {
            let info = TensorInfo {
                dtype: r.dtype,
                shape: r.shape,
                strides: r.strides,
                offset: r.offset,
                storage: ranges[r.storage as usize].clone(),
            };
            (n, info)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The legacy format

fn legacy_index(bytes: &[u8], path: &Path) -> Result<Vec<(String, TensorInfo)>> {
    let not_torch = |m: &str| Error::file(path, format!("not a PyTorch checkpoint: {m}"));
    if bytes.starts_with(b"version https://git-lfs") {
        return Err(Error::file(path, "a Git LFS pointer, not the weights: fetch them (`git lfs pull`)"));
    }
    if !is_opcode(bytes[0]) {
        return Err(not_torch("neither a zip archive (torch.save) nor a pickle (torch.save's legacy format)"));
    }
    let (u, magic) = run_pickle(bytes, 0, path, "the first pickle")?;
    let magic_ok = match &magic {
        V::Big(b) => b.len() <= 16 && {
            let mut a = [0u8; 16];
            a[..b.len()].copy_from_slice(b);
            u128::from_le_bytes(a) == LEGACY_MAGIC
        },
        _ => false,
    };
    if !magic_ok {
        return Err(not_torch("a pickle, but not one torch.save wrote (no magic number)"));
    }
    let mut pos = u.pos;
    let (u, proto) = run_pickle(bytes, pos, path, "the legacy format's protocol version")?;
    if !matches!(proto, V::Int(LEGACY_PROTOCOL)) {
        return Err(not_torch(&format!("legacy protocol version {proto:?} (torch writes {LEGACY_PROTOCOL})")));
    }
    pos += u.pos;
    let (u, info) = run_pickle(bytes, pos, path, "the legacy format's system info")?;
    let little = u.dict_items(&info).and_then(|d| {
        d.iter().find_map(|(k, v)| match (k, v) {
            (V::Str(k), V::Bool(b)) if &**k == "little_endian" => Some(*b),
            _ => None,
        })
    });
    match little {
        Some(true) => {}
        Some(false) => return Err(Error::file(path, "a big-endian checkpoint: not supported")),
        None => return Err(not_torch("the legacy format's system info has no `little_endian`")),
    }
    pos += u.pos;
    let what = format!("the state dict pickle at byte {pos}");
    let (parsed, end) = parse_state_dict(bytes, pos, path, &what)?;
    pos = end;
    let (u, keys) = run_pickle(bytes, pos, path, "the legacy format's storage keys")?;
    let keys: Vec<String> = match &keys {
        V::Obj(i) => match &u.objs[*i as usize] {
            Obj::List(l) => l
                .iter()
                .map(|k| match k {
                    V::Str(s) => Ok(s.to_string()),
                    _ => Err(not_torch("a storage key that is not a string")),
                })
                .collect::<Result<_>>()?,
            _ => return Err(not_torch("the storage keys are not a list")),
        },
        _ => return Err(not_torch("the storage keys are not a list")),
    };
    pos += u.pos;
    let by_key: HashMap<&str, usize> = parsed.storages.iter().enumerate().map(|(i, s)| (s.key.as_str(), i)).collect();
    let mut ranges: Vec<Option<Range<usize>>> = vec![None; parsed.storages.len()];
    for k in &keys {
        let Some(&i) = by_key.get(k.as_str()) else {
            return Err(not_torch(&format!("storage `{k}` is listed but no tensor uses it")));
        };
        if ranges[i].is_some() {
            return Err(not_torch(&format!("storage `{k}` is listed twice")));
        }
        let s = &parsed.storages[i];
        let head = bytes.get(pos..pos + 8).ok_or_else(|| truncated(path, k, pos))?;
        let n = u64::from_le_bytes(head.try_into().unwrap());
        if n != s.numel as u64 {
            return Err(not_torch(&format!("storage `{k}` holds {n} elements but the state dict says {}", s.numel)));
        }
        let start = pos + 8;
        let end = start.checked_add(s.nbytes()).filter(|&e| e <= bytes.len()).ok_or_else(|| truncated(path, k, start))?;
        ranges[i] = Some(start..end);
        pos = end;
    }
    let mut out = Vec::with_capacity(ranges.len());
    for (i, r) in ranges.into_iter().enumerate() {
        match r {
            Some(r) => out.push(r),
            None => return Err(not_torch(&format!("storage `{}` is used but not in the file", parsed.storages[i].key))),
        }
    }
    Ok(infos(parsed, &out))
}

fn truncated(path: &Path, key: &str, at: usize) -> Error {
    Error::file(path, format!("truncated: storage `{key}` at byte {at} runs past the end of the file"))
}

/// Whether `b` is a pickle opcode (to tell a pickle from other files by its first byte).
fn is_opcode(b: u8) -> bool {
    b"(.012BCFGIJKLMNPQRSTUVXabcdeghijlopqrstu}])".contains(&b) || (0x80..=0x98).contains(&b)
}

// ---------------------------------------------------------------------------------------
// The zip format

struct ZipEntry<'a> {
    name: &'a [u8],
    flags: u16,
    method: u16,
    size: u64,
    usize_: u64,
    header: u64,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The central directory of a zip archive (zip64 included), every length checked.
fn zip_entries(b: &[u8]) -> std::result::Result<Vec<ZipEntry<'_>>, String> {
    const EOCD: u32 = 0x06054b50;
    if b.len() < 22 {
        return Err("shorter than a zip end record".into());
    }
    let lowest = b.len().saturating_sub(22 + 0xffff);
    let mut eocd = None;
    let mut at = b.len() - 22;
    loop {
        if le32(b, at) == EOCD && at + 22 + le16(b, at + 20) as usize <= b.len() {
            eocd = Some(at);
            break;
        }
        if at == lowest {
            break;
        }
        at -= 1;
    }
    let e = eocd.ok_or("no end of central directory record (truncated?)")?;
    if le16(b, e + 4) != 0 || le16(b, e + 6) != 0 {
        return Err("a multi-disk archive".into());
    }
    let (mut count, mut cd_size, mut cd_off) = (le16(b, e + 10) as u64, le32(b, e + 12) as u64, le32(b, e + 16) as u64);
    if count == 0xffff || cd_size == 0xffff_ffff || cd_off == 0xffff_ffff {
        // zip64: a locator just before the end record points to the zip64 end record.
        let loc = e.checked_sub(20).ok_or("a zip64 archive without its locator")?;
        if le32(b, loc) != 0x07064b50 {
            return Err("a zip64 archive without its locator".into());
        }
        let off = le64(b, loc + 8);
        let off = usize::try_from(off).ok().filter(|&o| o.checked_add(56).is_some_and(|x| x <= loc)).ok_or("the zip64 end record lies outside the file")?;
        if le32(b, off) != 0x06064b50 {
            return Err("no zip64 end record where the locator points".into());
        }
        count = le64(b, off + 32);
        cd_size = le64(b, off + 40);
        cd_off = le64(b, off + 48);
    }
    let cd_end = cd_off.checked_add(cd_size).filter(|&x| x <= e as u64).ok_or("the central directory lies outside the file")?;
    if count > cd_size / 46 {
        return Err(format!("{count} entries cannot fit in a central directory of {cd_size} bytes"));
    }
    let (mut p, cd_end) = (cd_off as usize, cd_end as usize);
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        if p + 46 > cd_end || le32(b, p) != 0x02014b50 {
            return Err("a corrupt central directory entry".into());
        }
        let (nlen, xlen, clen) = (le16(b, p + 28) as usize, le16(b, p + 30) as usize, le16(b, p + 32) as usize);
        let name_end = p + 46 + nlen;
        let next = name_end + xlen + clen;
        if next > cd_end {
            return Err("a central directory entry runs past the directory".into());
        }
        let mut ent = ZipEntry {
            name: &b[p + 46..name_end],
            flags: le16(b, p + 8),
            method: le16(b, p + 10),
            size: le32(b, p + 20) as u64,
            usize_: le32(b, p + 24) as u64,
            header: le32(b, p + 42) as u64,
        };
        // zip64 extra field: the 64-bit values of the fields set to 0xffffffff, in order.
        let mut x = name_end;
        let x_end = name_end + xlen;
        while x + 4 <= x_end {
            let (id, len) = (le16(b, x), le16(b, x + 2) as usize);
            let body = x + 4;
            if body + len > x_end {
                return Err("a corrupt extra field".into());
            }
            if id == 1 {
                let mut q = body;
                for field in [&mut ent.usize_, &mut ent.size, &mut ent.header] {
                    if *field == 0xffff_ffff {
                        if q + 8 > body + len {
                            return Err("a truncated zip64 extra field".into());
                        }
                        *field = le64(b, q);
                        q += 8;
                    }
                }
            }
            x = body + len;
        }
        out.push(ent);
        p = next;
    }
    Ok(out)
}

/// The bytes of a stored entry, through its local header.
fn zip_data(b: &[u8], e: &ZipEntry) -> std::result::Result<Range<usize>, String> {
    let name = String::from_utf8_lossy(e.name);
    if e.flags & 1 != 0 {
        return Err(format!("entry `{name}` is encrypted"));
    }
    if e.method != 0 {
        return Err(format!(
            "entry `{name}` is compressed (method {}); torch.save stores entries uncompressed: re-save the file with torch.save",
            e.method
        ));
    }
    if e.size != e.usize_ {
        return Err(format!("stored entry `{name}` has two sizes"));
    }
    let h = usize::try_from(e.header).ok().filter(|&h| h.checked_add(30).is_some_and(|x| x <= b.len()));
    let h = h.ok_or_else(|| format!("entry `{name}`'s header lies outside the file"))?;
    if le32(b, h) != 0x04034b50 {
        return Err(format!("entry `{name}` has no local header"));
    }
    let (nlen, xlen) = (le16(b, h + 26) as usize, le16(b, h + 28) as usize);
    let start = h + 30 + nlen + xlen;
    if b.get(h + 30..h + 30 + nlen) != Some(e.name) {
        return Err(format!("entry `{name}`'s local header names another file"));
    }
    let end = usize::try_from(e.size).ok().and_then(|s| start.checked_add(s)).filter(|&x| x <= b.len());
    let end = end.ok_or_else(|| format!("entry `{name}` runs past the end of the file (truncated?)"))?;
    Ok(start..end)
}

fn zip_index(bytes: &[u8], path: &Path) -> Result<Vec<(String, TensorInfo)>> {
    let zerr = |m: String| Error::file(path, format!("not a valid PyTorch zip checkpoint (corrupt or truncated?): {m}"));
    let entries = zip_entries(bytes).map_err(zerr)?;
    let mut by_name: HashMap<&[u8], &ZipEntry> = HashMap::with_capacity(entries.len());
    for e in &entries {
        if by_name.insert(e.name, e).is_some() {
            return Err(zerr(format!("entry `{}` appears twice", String::from_utf8_lossy(e.name))));
        }
    }
    let pkls: Vec<&ZipEntry> = entries
        .iter()
        .filter(|e| e.name.ends_with(b"/data.pkl") && e.name.iter().filter(|&&c| c == b'/').count() == 1)
        .collect();
    let pkl = match pkls.as_slice() {
        [one] => *one,
        [] => return Err(zerr("no `<archive>/data.pkl` entry: not a torch.save archive".into())),
        _ => return Err(zerr("several `<archive>/data.pkl` entries".into())),
    };
    let prefix = &pkl.name[..pkl.name.len() - "data.pkl".len()];
    let prefix_s = String::from_utf8_lossy(prefix).into_owned();
    if let Some(e) = by_name.get([prefix, b"byteorder"].concat().as_slice()) {
        let r = zip_data(bytes, e).map_err(zerr)?;
        match &bytes[r] {
            b"little" => {}
            b"big" => return Err(Error::file(path, "a big-endian checkpoint (`byteorder` says big): not supported")),
            other => return Err(zerr(format!("`{prefix_s}byteorder` says `{}`", String::from_utf8_lossy(other)))),
        }
    }
    let r = zip_data(bytes, pkl).map_err(zerr)?;
    let what = format!("`{prefix_s}data.pkl`");
    let (parsed, _) = parse_state_dict(&bytes[..r.end], r.start, path, &what)?;
    let mut ranges = Vec::with_capacity(parsed.storages.len());
    for s in &parsed.storages {
        let name = [prefix, b"data/", s.key.as_bytes()].concat();
        let e = by_name
            .get(name.as_slice())
            .ok_or_else(|| zerr(format!("storage `{}` is used but the archive has no `{prefix_s}data/{}`", s.key, s.key)))?;
        let d = zip_data(bytes, e).map_err(zerr)?;
        if d.len() != s.nbytes() {
            return Err(zerr(format!(
                "storage `{prefix_s}data/{}` holds {} bytes but the state dict says {} ({} elements of {} bytes)",
                s.key,
                d.len(),
                s.nbytes(),
                s.numel,
                s.kind.elem_size()
            )));
        }
        ranges.push(d);
    }
    Ok(infos(parsed, &ranges))
}

#[cfg(test)]
mod tests {
    //! Hand-made pickles: the allowlist, the calls that are refused, the bounds and
    //! the caps. The files torch writes are tested in tests/pickle.rs.
    use super::*;

    const P: &str = "ckpt/pytorch_model.bin";

    fn s(x: &str) -> Vec<u8> {
        let mut b = vec![b'X'];
        b.extend_from_slice(&(x.len() as u32).to_le_bytes());
        b.extend_from_slice(x.as_bytes());
        b
    }

    fn glob(m: &str, n: &str) -> Vec<u8> {
        format!("c{m}\n{n}\n").into_bytes()
    }

    fn int(n: i32) -> Vec<u8> {
        let mut b = vec![b'J'];
        b.extend_from_slice(&n.to_le_bytes());
        b
    }

    fn ints(v: &[i32]) -> Vec<u8> {
        let mut b = vec![b'('];
        for &x in v {
            b.extend(int(x));
        }
        b.push(b't');
        b
    }

    /// The persistent id of a storage: `('storage', torch.<cls>, key, 'cpu', numel)`.
    fn storage(cls: &str, key: &str, numel: i32) -> Vec<u8> {
        let mut b = vec![b'('];
        b.extend(s("storage"));
        b.extend(if cls == "UntypedStorage" { glob("torch.storage", cls) } else { glob("torch", cls) });
        b.extend(s(key));
        b.extend(s("cpu"));
        b.extend(int(numel));
        b.extend(b"tQ");
        b
    }

    /// `_rebuild_tensor_v2(storage, offset, size, stride, False, {})`.
    fn v2(storage: Vec<u8>, offset: i32, size: &[i32], stride: &[i32]) -> Vec<u8> {
        let mut b = glob("torch._utils", "_rebuild_tensor_v2");
        b.push(b'(');
        b.extend(storage);
        b.extend(int(offset));
        b.extend(ints(size));
        b.extend(ints(stride));
        b.extend(b"\x89}tR");
        b
    }

    /// `OrderedDict(name=tensor, ...)` as torch writes it, then STOP.
    fn sd(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut b = b"\x80\x02".to_vec();
        b.extend(glob("collections", "OrderedDict"));
        b.extend(b")R(");
        for (k, v) in entries {
            b.extend(s(k));
            b.extend_from_slice(v);
        }
        b.extend(b"u.");
        b
    }

    /// A legacy-format file around a state dict pickle, with `storages` (key, numel, bytes).
    fn legacy(main: &[u8], storages: &[(&str, u64, &[u8])]) -> Vec<u8> {
        let mut b = b"\x80\x02\x8a\x0a".to_vec();
        b.extend_from_slice(&LEGACY_MAGIC.to_le_bytes()[..10]);
        b.push(b'.');
        b.extend(b"\x80\x02M\xe9\x03.");
        b.extend(b"\x80\x02}");
        b.extend(s("little_endian"));
        b.extend(b"\x88s.");
        b.extend_from_slice(main);
        b.extend(b"\x80\x02](");
        for (k, _, _) in storages {
            b.extend(s(k));
        }
        b.extend(b"e.");
        for (_, n, data) in storages {
            b.extend_from_slice(&n.to_le_bytes());
            b.extend_from_slice(data);
        }
        b
    }

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn read(b: &[u8]) -> Result<Vec<(String, TensorInfo)>> {
        index(b, Path::new(P))
    }

    fn err(b: &[u8]) -> String {
        let e = read(b).expect_err("expected an error").to_string();
        assert!(e.starts_with(&format!("{P}: ")), "error does not name the file: {e}");
        e
    }

    fn values(b: &[u8], t: &TensorInfo) -> Vec<f32> {
        t.bytes(b).chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    }

    const DATA: [f32; 6] = [0., 1., 2., 3., 4., 5.];

    #[test]
    fn a_hand_made_legacy_file_reads_with_views_and_strides() {
        let data = f32s(&DATA);
        let main = sd(&[
            ("w", v2(storage("FloatStorage", "k", 6), 0, &[2, 3], &[3, 1])),
            ("t", v2(storage("FloatStorage", "k", 6), 0, &[3, 2], &[1, 3])),
            ("v", v2(storage("FloatStorage", "k", 6), 4, &[2], &[1])),
            ("z", v2(storage("FloatStorage", "k", 6), 6, &[0], &[1])),
        ]);
        let b = legacy(&main, &[("k", 6, &data)]);
        let ts = read(&b).unwrap();
        let names: Vec<&str> = ts.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["w", "t", "v", "z"]);
        assert_eq!(values(&b, &ts[0].1), DATA);
        assert_eq!(values(&b, &ts[1].1), [0., 3., 1., 4., 2., 5.]);
        assert_eq!(values(&b, &ts[2].1), [4., 5.]);
        assert!(values(&b, &ts[3].1).is_empty());
        assert_eq!(ts[0].1.storage, ts[1].1.storage);
    }

    /// `_rebuild_tensor` (v1), `_rebuild_tensor_v3` on an untyped storage with a dtype
    /// global, and `_rebuild_parameter` around a v2 tensor.
    #[test]
    fn v1_v3_and_parameter_rebuilds() {
        let data = f32s(&DATA);
        let mut t1 = glob("torch._utils", "_rebuild_tensor");
        t1.push(b'(');
        t1.extend(storage("FloatStorage", "a", 6));
        t1.extend(int(1));
        t1.extend(ints(&[2]));
        t1.extend(ints(&[2]));
        t1.extend(b"tR");
        let mut t3 = glob("torch._utils", "_rebuild_tensor_v3");
        t3.push(b'(');
        t3.extend(storage("UntypedStorage", "b", 12));
        t3.extend(int(2));
        t3.extend(ints(&[2]));
        t3.extend(ints(&[1]));
        t3.extend(b"\x89}");
        t3.extend(glob("torch", "float16"));
        t3.extend(b"tR");
        let mut p = glob("torch._utils", "_rebuild_parameter");
        p.push(b'(');
        p.extend(v2(storage("FloatStorage", "a", 6), 0, &[3], &[1]));
        p.extend(b"\x88}tR");
        let main = sd(&[("v1", t1), ("v3", t3), ("p", p)]);
        let halfs: Vec<u8> = [1.0f32, 2., 3., 4., 5., 6.].iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
        let b = legacy(&main, &[("a", 6, &data), ("b", 12, &halfs)]);
        let ts = read(&b).unwrap();
        assert_eq!(values(&b, &ts[0].1), [1., 3.]);
        assert_eq!(ts[1].1.dtype, Dtype::F16);
        let h: Vec<f32> = ts[1].1.bytes(&b).chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect();
        assert_eq!(h, [3., 4.]);
        assert_eq!(values(&b, &ts[2].1), [0., 1., 2.]);
    }

    fn refusal(m: &str, n: &str) -> String {
        format!("{P}: refuses to load: the pickle calls `{m}.{n}`, which a state dict never needs; nothing from the file was run")
    }

    /// Every global off the allowlist is refused when it is named, whether or not it is
    /// called, by GLOBAL, STACK_GLOBAL (protocol 4) or INST, at the top or nested in a
    /// tensor rebuild's arguments.
    #[test]
    fn globals_off_the_allowlist_are_refused_when_named() {
        let bad = [
            ("os", "system"),
            ("posix", "system"),
            ("builtins", "eval"),
            ("builtins", "exec"),
            ("builtins", "getattr"),
            ("__builtin__", "eval"),
            ("subprocess", "Popen"),
            ("torch", "load"),
            ("torch.storage", "_load_from_bytes"),
            ("torch._utils", "_rebuild_device_tensor_from_numpy"),
            ("torch.nn.modules.linear", "Linear"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("collections", "defaultdict"),
            ("_codecs", "encode"),
        ];
        for (m, n) in bad {
            let want = refusal(m, n);
            // Named and dropped, never called.
            let mut b = b"\x80\x02".to_vec();
            b.extend(glob(m, n));
            b.extend(b"0}.");
            assert_eq!(read(&b).unwrap_err().to_string(), want);
            // STACK_GLOBAL, called through REDUCE.
            let mut b = b"\x80\x04".to_vec();
            b.extend([0x8c, m.len() as u8]);
            b.extend(m.as_bytes());
            b.extend([0x8c, n.len() as u8]);
            b.extend(n.as_bytes());
            b.extend(b"\x93");
            b.extend(s("touch /tmp/x"));
            b.extend(b"\x85R.");
            assert_eq!(read(&b).unwrap_err().to_string(), want);
            // INST (protocol 0).
            let b = format!("(S'x'\ni{m}\n{n}\n.").into_bytes();
            assert_eq!(read(&b).unwrap_err().to_string(), want);
            // Nested in the size argument of a tensor rebuild inside a state dict.
            let mut t = glob("torch._utils", "_rebuild_tensor_v2");
            t.push(b'(');
            t.extend(storage("FloatStorage", "k", 6));
            t.extend(int(0));
            t.push(b'(');
            t.extend(glob(m, n));
            t.extend(s("x"));
            t.extend(b"\x85Rt");
            t.extend(ints(&[1]));
            t.extend(b"\x89}tR");
            let b = legacy(&sd(&[("w", t)]), &[("k", 6, &f32s(&DATA))]);
            assert_eq!(read(&b).unwrap_err().to_string(), want);
        }
        // Unsupported torch storage types get their own message.
        let mut b = b"\x80\x02".to_vec();
        b.extend(glob("torch", "ComplexFloatStorage"));
        b.extend(b".");
        assert!(err(&b).contains("storage type `torch.ComplexFloatStorage` is not supported"));
    }

    /// REDUCE, NEWOBJ, OBJ and BUILD on anything but the allowlisted functions are errors,
    /// never values that are silently dropped.
    #[test]
    fn calls_on_values_off_the_allowlist_are_errors() {
        let wrap = |body: &[u8]| {
            let mut b = b"\x80\x02".to_vec();
            b.extend_from_slice(body);
            b.push(b'.');
            b
        };
        // REDUCE of a string, of a storage type, of a dtype.
        let e = err(&wrap(&[s("os.system"), b")R".to_vec()].concat()));
        assert!(e.contains("REDUCE calls a str, not a function"), "{e}");
        let e = err(&wrap(&[glob("torch", "FloatStorage"), b")R".to_vec()].concat()));
        assert!(e.contains("not a function"), "{e}");
        let e = err(&wrap(&[glob("torch", "float16"), b")R".to_vec()].concat()));
        assert!(e.contains("not a function"), "{e}");
        // NEWOBJ of a storage type; OBJ of a dtype; OrderedDict with arguments.
        let e = err(&wrap(&[glob("torch", "FloatStorage"), b")\x81".to_vec()].concat()));
        assert!(e.contains("cannot create an object"), "{e}");
        let e = err(&wrap(&[b"(".to_vec(), glob("torch", "float32"), b"o".to_vec()].concat()));
        assert!(e.contains("cannot create an object"), "{e}");
        let e = err(&wrap(&[glob("collections", "OrderedDict"), s("a"), b"\x85R".to_vec()].concat()));
        assert!(e.contains("OrderedDict called with arguments"), "{e}");
        // BUILD on a list, and on a tensor.
        let e = err(&wrap(b"]}b"));
        assert!(e.contains("BUILD on a list"), "{e}");
        let t = v2(storage("FloatStorage", "k", 6), 0, &[6], &[1]);
        let b = legacy(&sd(&[("w", [t, b"}b".to_vec()].concat())]), &[("k", 6, &f32s(&DATA))]);
        assert!(err(&b).contains("BUILD on a tensor"));
        // A state dict's `_metadata` (BUILD on the OrderedDict) is fine.
        let mut m = sd(&[("w", v2(storage("FloatStorage", "k", 6), 0, &[6], &[1]))]);
        m.pop();
        m.extend(b"}");
        m.extend(s("_metadata"));
        m.extend(b"}sb.");
        let b = legacy(&m, &[("k", 6, &f32s(&DATA))]);
        assert_eq!(read(&b).unwrap().len(), 1);
        // Persistent ids that are not storages; text persistent ids; extensions.
        assert!(err(&wrap(&[s("x"), b"Q".to_vec()].concat())).contains("persistent id"));
        assert!(err(&wrap(b"P0\n")).contains("PERSID"));
        assert!(err(&wrap(b"\x82\x01")).contains("EXT"));
    }

    #[test]
    fn tensors_must_lie_inside_their_storage() {
        let data = f32s(&DATA);
        let one = |t: Vec<u8>| legacy(&sd(&[("w", t)]), &[("k", 6, &data)]);
        let st = || storage("FloatStorage", "k", 6);
        for (t, msg) in [
            (v2(st(), 4, &[3], &[1]), "reaches past its storage"),
            (v2(st(), 0, &[2, 3], &[3, 2]), "reaches past its storage"),
            (v2(st(), 0, &[100], &[0]), "expanded view"),
            (v2(st(), -1, &[1], &[1]), "negative"),
            (v2(st(), 0, &[-2], &[1]), "negative"),
            (v2(st(), 0, &[2, 3], &[1]), "a size of 2 dimensions with a stride of 1"),
            (v2(st(), 0, &[65536, 65536, 65536, 65536], &[0, 0, 0, 0]), "overflows"),
            (v2(st(), 0, &[1; 65], &[1; 65]), "at most 64"),
        ] {
            let e = err(&one(t));
            assert!(e.contains(msg), "want `{msg}`: {e}");
        }
        // A stride that overflows usize when multiplied.
        let mut t = v2(st(), 0, &[2], &[1]);
        let at = t.len() - 10; // the stride's BININT
        let mut b = vec![0x8a, 8];
        b.extend_from_slice(&(i64::MAX).to_le_bytes());
        t.splice(at..at + 5, b);
        assert!(err(&one(t)).contains("reaches past"));
        // Storage headers and lists that disagree with the pickle.
        let t = || v2(st(), 0, &[6], &[1]);
        assert!(err(&legacy(&sd(&[("w", t())]), &[("k", 5, &data[..20])])).contains("holds 5 elements"));
        assert!(err(&legacy(&sd(&[("w", t())]), &[])).contains("used but not in the file"));
        assert!(err(&legacy(&sd(&[("w", t())]), &[("k", 6, &data), ("k", 6, &data)])).contains("listed twice"));
        assert!(err(&legacy(&sd(&[("w", t())]), &[("k", 6, &data), ("q", 6, &data)])).contains("no tensor uses it"));
        assert!(err(&legacy(&sd(&[("w", t())]), &[("k", 6, &data[..23])])).contains("truncated"));
        let two = sd(&[("w", t()), ("v", v2(storage("HalfStorage", "k", 6), 0, &[6], &[1]))]);
        assert!(err(&legacy(&two, &[("k", 6, &data)])).contains("two types or sizes"));
        // Entries that are not tensors, twice the same name, a top that is not a dict.
        let e = err(&legacy(&sd(&[("step", int(3))]), &[]));
        assert!(e.contains("entry `step` is a int, not a tensor"), "{e}");
        let e = err(&legacy(&sd(&[("w", t()), ("w", t())]), &[("k", 6, &data)]));
        assert!(e.contains("`w` appears twice"), "{e}");
        let e = err(&legacy(b"\x80\x02]q\x00.", &[]));
        assert!(e.contains("holds a list, not a state dict"), "{e}");
        // The conj / neg bits would change the values.
        let mut t = v2(st(), 0, &[6], &[1]);
        t.truncate(t.len() - 2);
        t.extend(b"}");
        t.extend(s("neg"));
        t.extend(b"\x88stR");
        assert!(err(&one(t)).contains("neg bit"));
    }

    /// Lengths are checked before anything is allocated; the stack, the marks and the memo
    /// are capped; a memo GET copies no container (a doubling bomb is linear).
    #[test]
    fn lengths_are_checked_and_the_state_is_capped() {
        let wrap = |body: &[u8]| [b"\x80\x02".as_slice(), body].concat();
        for big in [
            [b'X'].iter().chain(&0xffff_fff0u32.to_le_bytes()).copied().collect::<Vec<u8>>(),
            [0x8d].iter().chain(&u64::MAX.to_le_bytes()).copied().collect(),
            [0x8e].iter().chain(&(1u64 << 40).to_le_bytes()).copied().collect(),
            [0x8b].iter().chain(&i32::MAX.to_le_bytes()).copied().collect(),
            [0x95].iter().chain(&u64::MAX.to_le_bytes()).copied().collect(),
            [b'T'].iter().chain(&(-5i32).to_le_bytes()).copied().collect(),
        ] {
            let e = err(&wrap(&big));
            assert!(e.contains("truncated") || e.contains("negative length"), "{e}");
        }
        let e = err(&wrap(&vec![b'('; MAX_MARKS + 1]));
        assert!(e.contains("nested MARKs"), "{e}");
        let e = err(&wrap(&[b'K', 1].repeat(MAX_STACK + 1)));
        assert!(e.contains("stack grows past"), "{e}");
        // 200 doublings: 2^200 leaves if GETs copied.
        let mut b = b"\x80\x02]q\x00".to_vec();
        for _ in 0..200 {
            b.extend(b"h\x00h\x00\x86q\x000");
        }
        b.extend(b"h\x00.");
        let t = std::time::Instant::now();
        let e = err(&b);
        assert!(e.contains("magic number"), "{e}");
        assert!(t.elapsed().as_secs_f64() < 1.0);
        let e = err(&wrap(b"h\x05."));
        assert!(e.contains("memo entry 5 is read before it is written"), "{e}");
        // Stack underflow inside a MARK, a STOP on an empty stack, a list op on a dict.
        assert!(err(&wrap(b"K\x01(0.")).contains("stack underflow"));
        assert!(err(&wrap(b".")).contains("stack underflow"));
        assert!(err(&wrap(b"}K\x01a.")).contains("APPEND to a dict"));
        assert!(err(&wrap(b"\xff")).contains("unknown opcode 0xff"));
        assert!(err(&b"\x80\x07."[..]).contains("protocol 7"));
    }

    #[test]
    fn long_integers() {
        assert!(matches!(int_le(&[0xff]), V::Int(-1)));
        assert!(matches!(int_le(&[0x00, 0x80]), V::Int(-32768)));
        assert!(matches!(int_le(&[]), V::Int(0)));
        let mut b = u64::MAX.to_le_bytes().to_vec();
        b.push(0);
        assert!(matches!(int_le(&b), V::Big(_)), "2^64-1 does not fit in i64");
        let mut b = (-2i64).to_le_bytes().to_vec();
        b.extend([0xff; 4]);
        assert!(matches!(int_le(&b), V::Int(-2)));
        assert!(matches!(int_le(&[0u8; 40]), V::Int(0)));
    }

    #[test]
    fn protocol_0_text_opcodes() {
        // {'a': 1, u'b\u00e9': 2L, 'c': 1.5, 'd': True} read, then refused as not a state dict.
        let b = b"(dp0\nS'a'\np1\nI1\nsVb\\u00e9\np2\nL2L\nsS'c'\nF1.5\nsS'd'\nI01\ns.";
        let mut u = Unpickler::new(b);
        let top = u.run().ok().unwrap();
        let items = u.dict_items(&top).unwrap();
        assert_eq!(items.len(), 4);
        assert!(matches!(&items[1].0, V::Str(s) if &**s == "b\u{e9}"));
        assert!(matches!(items[1].1, V::Int(2)));
        assert!(matches!(items[3].1, V::Bool(true)));
        assert!(raw_unicode_escape("\\u12").is_err());
    }
}
