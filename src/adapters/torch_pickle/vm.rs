//! A pickle virtual machine that never executes code (adapter-formats.md 2.1).
//!
//! It understands the protocol 2–5 opcodes `torch.save` writes (plus a few Python-2-era string
//! opcodes) and builds a [`PickleValue`] tree. `GLOBAL`/`STACK_GLOBAL` are resolved against a
//! whitelist of torch tensor-rebuild helpers, storage types and `collections.OrderedDict`; any
//! other global (`os.system`, `builtins.eval`, ...) is an error naming `module.name`. `REDUCE`,
//! `NEWOBJ` and `BUILD` are interpreted only for the whitelisted callables.
//!
//! Resource bounds: every length operand is checked against the bytes that remain before anything
//! is allocated; the stack, the mark stack and the memo have fixed maximum sizes; values nest at
//! most [`MAX_DEPTH`] deep; the total number of value nodes created (clones through the memo
//! included) is bounded relative to the input length, so a small pickle cannot expand into a
//! huge tree.

use std::collections::HashMap;

use crate::error::{Error, Result};

/// Maximum nesting depth of containers in a pickle.
pub const MAX_DEPTH: usize = 64;
const MAX_STACK: usize = 1 << 20;
const MAX_MARKS: usize = 4096;
const MAX_MEMO: usize = 1 << 20;

/// Element type of a torch storage (`torch.<X>Storage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageDType {
    /// `FloatStorage`.
    F32,
    /// `HalfStorage`.
    F16,
    /// `BFloat16Storage`.
    BF16,
    /// `DoubleStorage`.
    F64,
    /// `LongStorage`.
    I64,
    /// `IntStorage`.
    I32,
    /// `ShortStorage`.
    I16,
    /// `CharStorage`.
    I8,
    /// `ByteStorage`.
    U8,
    /// `BoolStorage`.
    Bool,
}

impl StorageDType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StorageDType::F64 | StorageDType::I64 => 8,
            StorageDType::F32 | StorageDType::I32 => 4,
            StorageDType::F16 | StorageDType::BF16 | StorageDType::I16 => 2,
            StorageDType::I8 | StorageDType::U8 | StorageDType::Bool => 1,
        }
    }
    /// The torch storage class name.
    pub fn torch_name(self) -> &'static str {
        match self {
            StorageDType::F32 => "FloatStorage",
            StorageDType::F16 => "HalfStorage",
            StorageDType::BF16 => "BFloat16Storage",
            StorageDType::F64 => "DoubleStorage",
            StorageDType::I64 => "LongStorage",
            StorageDType::I32 => "IntStorage",
            StorageDType::I16 => "ShortStorage",
            StorageDType::I8 => "CharStorage",
            StorageDType::U8 => "ByteStorage",
            StorageDType::Bool => "BoolStorage",
        }
    }
    fn from_torch_name(name: &str) -> Option<Self> {
        use StorageDType::*;
        [F32, F16, BF16, F64, I64, I32, I16, I8, U8, Bool]
            .into_iter()
            .find(|d| d.torch_name() == name)
    }
}

/// A whitelisted global (`module.name`); nothing else can be named by a pickle we accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Global {
    /// `collections.OrderedDict`.
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2`.
    RebuildTensorV2,
    /// `torch._utils._rebuild_parameter`.
    RebuildParameter,
    /// `torch._tensor._rebuild_from_type_v2`.
    RebuildFromTypeV2,
    /// `torch.Tensor` or `torch.nn.parameter.Parameter` (only as the type argument of
    /// `_rebuild_from_type_v2`).
    TensorType,
    /// `torch.<X>Storage`.
    Storage(StorageDType),
}

impl Global {
    fn resolve(module: &str, name: &str) -> Result<Global> {
        let g = match (module, name) {
            ("collections", "OrderedDict") => Some(Global::OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
            ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
            ("torch._tensor", "_rebuild_from_type_v2") => Some(Global::RebuildFromTypeV2),
            ("torch", "Tensor") | ("torch.nn.parameter", "Parameter") => Some(Global::TensorType),
            ("torch", n) => StorageDType::from_torch_name(n).map(Global::Storage),
            _ => None,
        };
        g.ok_or_else(|| {
            Error::invalid_adapter(format!(
                "pickle references the global '{module}.{name}', which is not on the safe \
                 whitelist (torch tensor rebuild helpers, torch.*Storage, collections.OrderedDict); \
                 refusing to load it"
            ))
        })
    }
}

/// A torch storage reference produced by a persistent id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageRef {
    /// Element type.
    pub dtype: StorageDType,
    /// Record name under `data/`.
    pub key: String,
    /// Elements in the storage.
    pub numel: usize,
}

/// A tensor view of a storage (`_rebuild_tensor_v2` arguments, in elements).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRef {
    /// The storage it views.
    pub storage: StorageRef,
    /// Offset of element 0, in elements.
    pub offset: usize,
    /// Dimensions.
    pub size: Vec<usize>,
    /// Strides in elements.
    pub stride: Vec<usize>,
}

/// A value built by the pickle VM.
#[derive(Debug, Clone, PartialEq)]
pub enum PickleValue {
    /// `None`.
    None,
    /// A bool.
    Bool(bool),
    /// An integer (pickles with integers outside i64 are refused).
    Int(i64),
    /// A float.
    Float(f64),
    /// A str.
    Str(String),
    /// bytes.
    Bytes(Vec<u8>),
    /// A tuple.
    Tuple(Vec<PickleValue>),
    /// A list.
    List(Vec<PickleValue>),
    /// A dict or OrderedDict, entries in insertion order.
    Dict(Vec<(PickleValue, PickleValue)>),
    /// A whitelisted global.
    Global(Global),
    /// A storage (persistent id).
    Storage(StorageRef),
    /// A tensor.
    Tensor(TensorRef),
}

impl PickleValue {
    /// Short type name for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            PickleValue::None => "None",
            PickleValue::Bool(_) => "bool",
            PickleValue::Int(_) => "int",
            PickleValue::Float(_) => "float",
            PickleValue::Str(_) => "str",
            PickleValue::Bytes(_) => "bytes",
            PickleValue::Tuple(_) => "tuple",
            PickleValue::List(_) => "list",
            PickleValue::Dict(_) => "dict",
            PickleValue::Global(_) => "global",
            PickleValue::Storage(_) => "storage",
            PickleValue::Tensor(_) => "tensor",
        }
    }
    /// (cost, depth) of this value's tree: cost is one per node plus the bytes of strings and
    /// tensor shapes, so clones of big strings are accounted for.
    fn measure(&self) -> (usize, usize) {
        let kids: Box<dyn Iterator<Item = &PickleValue>> = match self {
            PickleValue::Tuple(v) | PickleValue::List(v) => Box::new(v.iter()),
            PickleValue::Dict(v) => Box::new(v.iter().flat_map(|(k, x)| [k, x])),
            PickleValue::Str(s) => return (1 + s.len(), 0),
            PickleValue::Bytes(b) => return (1 + b.len(), 0),
            PickleValue::Storage(s) => return (1 + s.key.len(), 0),
            PickleValue::Tensor(t) => return (1 + t.storage.key.len() + 2 * t.size.len(), 0),
            _ => return (1, 0),
        };
        let (mut nodes, mut depth) = (1usize, 1usize);
        for k in kids {
            let (n, d) = k.measure();
            nodes = nodes.saturating_add(n);
            depth = depth.max(d + 1);
        }
        (nodes, depth)
    }
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    what: &'a str,
    stack: Vec<PickleValue>,
    marks: Vec<usize>,
    memo: HashMap<u32, PickleValue>,
    nodes: usize,
    node_budget: usize,
}

/// Runs the pickle in `data` to its `STOP` and returns the value on top of the stack.
/// `what` names the file in errors. Errors are `INVALID_ADAPTER`.
pub fn run(data: &[u8], what: &str) -> Result<PickleValue> {
    let mut vm = Vm {
        data,
        pos: 0,
        what,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        nodes: 0,
        node_budget: data.len().saturating_mul(16).saturating_add(1 << 16),
    };
    vm.run()
}

impl<'a> Vm<'a> {
    fn err(&self, msg: impl std::fmt::Display) -> Error {
        Error::invalid_adapter(format!("{}: pickle at byte {}: {msg}", self.what, self.pos))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(end) => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(self.err(format!(
                "operand declares {n} bytes but only {} remain",
                self.data.len() - self.pos
            ))),
        }
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn len_operand(&mut self, n: u64) -> Result<usize> {
        usize::try_from(n).map_err(|_| self.err(format!("length {n} does not fit in memory")))
    }
    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.err("GLOBAL operand without a newline"))?;
        let s = self.take(n + 1)?;
        std::str::from_utf8(&s[..n]).map_err(|_| self.err("GLOBAL operand is not UTF-8"))
    }
    fn utf8(&mut self, n: usize) -> Result<PickleValue> {
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).map_err(|_| self.err("string is not valid UTF-8"))?;
        Ok(PickleValue::Str(s.to_owned()))
    }

    /// Accounts for a new value, enforcing the node budget and the depth limit.
    fn admit(&mut self, v: &PickleValue) -> Result<()> {
        let (n, d) = v.measure();
        if d > MAX_DEPTH {
            return Err(self.err(format!("values nest deeper than {MAX_DEPTH} levels")));
        }
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > self.node_budget {
            return Err(self.err(format!(
                "pickle builds more than {} values (memo/dup amplification?)",
                self.node_budget
            )));
        }
        Ok(())
    }
    fn push(&mut self, v: PickleValue) -> Result<()> {
        if self.stack.len() >= MAX_STACK {
            return Err(self.err(format!("stack deeper than {MAX_STACK}")));
        }
        self.nodes = self.nodes.saturating_add(match &v {
            PickleValue::Str(s) => 1 + s.len(),
            PickleValue::Bytes(b) => 1 + b.len(),
            _ => 1,
        });
        if self.nodes > self.node_budget {
            return Err(self.err("pickle builds too many values"));
        }
        self.stack.push(v);
        Ok(())
    }
    /// Pushes a freshly built container (measured).
    fn push_built(&mut self, v: PickleValue) -> Result<()> {
        self.admit(&v)?;
        self.push(v)
    }
    fn pop(&mut self) -> Result<PickleValue> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(self.err("pop across a MARK"));
        }
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }
    fn top_mut(&mut self) -> Result<&mut PickleValue> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(self.err("stack top is a MARK"));
        }
        match self.stack.last_mut() {
            Some(v) => Ok(v),
            None => Err(Error::invalid_adapter(format!(
                "{}: pickle at byte {}: stack underflow",
                self.what, self.pos
            ))),
        }
    }
    fn pop_mark(&mut self) -> Result<Vec<PickleValue>> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| self.err("no MARK on the stack"))?;
        if m > self.stack.len() {
            return Err(self.err("MARK above the stack"));
        }
        Ok(self.stack.split_off(m))
    }
    fn memo_put(&mut self, idx: u32) -> Result<()> {
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&idx) {
            return Err(self.err(format!("memo larger than {MAX_MEMO} entries")));
        }
        let v = self.top_mut()?.clone();
        self.admit(&v)?;
        self.memo.insert(idx, v);
        Ok(())
    }
    fn memo_get(&mut self, idx: u32) -> Result<()> {
        let v = self
            .memo
            .get(&idx)
            .cloned()
            .ok_or_else(|| self.err(format!("memo index {idx} was never stored")))?;
        self.admit(&v)?;
        self.push(v)
    }

    fn run(&mut self) -> Result<PickleValue> {
        loop {
            let op_pos = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let p = self.u8()?;
                    if !(2..=5).contains(&p) {
                        return Err(self.err(format!("unsupported pickle protocol {p}")));
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: length hint only
                }
                b'.' => {
                    let v = self.pop()?;
                    return Ok(v);
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = Global::resolve(module, name).map_err(|e| e.context(self.what))?;
                    self.push(PickleValue::Global(g))?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (PickleValue::Str(m), PickleValue::Str(n)) => {
                            let g = Global::resolve(&m, &n).map_err(|e| e.context(self.what))?;
                            self.push(PickleValue::Global(g))?;
                        }
                        _ => return Err(self.err("STACK_GLOBAL operands are not strings")),
                    }
                }
                b'}' => self.push(PickleValue::Dict(Vec::new()))?,
                b')' => self.push(PickleValue::Tuple(Vec::new()))?,
                b']' => self.push(PickleValue::List(Vec::new()))?,
                b'(' => {
                    if self.marks.len() >= MAX_MARKS {
                        return Err(self.err(format!("more than {MAX_MARKS} nested MARKs")));
                    }
                    self.marks.push(self.stack.len());
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_built(PickleValue::Tuple(items))?;
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push_built(PickleValue::Tuple(items))?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push_built(PickleValue::List(items))?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let dict = pairs(items).ok_or_else(|| self.err("DICT with odd items"))?;
                    self.push_built(PickleValue::Dict(dict))?;
                }
                b'q' => {
                    let i = self.u8()?;
                    self.memo_put(u32::from(i))?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = u32::try_from(self.memo.len()).map_err(|_| self.err("memo full"))?;
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.u8()?;
                    self.memo_get(u32::from(i))?;
                }
                b'j' => {
                    let i = self.u32()?;
                    self.memo_get(i)?;
                }
                b'X' => {
                    let n = u64::from(self.u32()?);
                    let n = self.len_operand(n)?;
                    let v = self.utf8(n)?;
                    self.push(v)?;
                }
                0x8c => {
                    let n = usize::from(self.u8()?);
                    let v = self.utf8(n)?;
                    self.push(v)?;
                }
                0x8d => {
                    let n = self.u64()?;
                    let n = self.len_operand(n)?;
                    let v = self.utf8(n)?;
                    self.push(v)?;
                }
                b'B' | b'C' | 0x8e | b'T' | b'U' => {
                    let n = match op {
                        b'B' | b'T' => u64::from(self.u32()?),
                        b'C' | b'U' => u64::from(self.u8()?),
                        _ => self.u64()?,
                    };
                    let n = self.len_operand(n)?;
                    let b = self.take(n)?;
                    let v = if op == b'T' || op == b'U' {
                        // Python 2 str: treat as latin-1 text.
                        PickleValue::Str(b.iter().map(|&c| char::from(c)).collect())
                    } else {
                        PickleValue::Bytes(b.to_vec())
                    };
                    self.push(v)?;
                }
                b'J' => {
                    let b = self.take(4)?;
                    let v = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    self.push(PickleValue::Int(i64::from(v)))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(PickleValue::Int(i64::from(v)))?;
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(PickleValue::Int(i64::from(v)))?;
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        u64::from(self.u8()?)
                    } else {
                        u64::from(self.u32()?)
                    };
                    if n > 8 {
                        return Err(self.err(format!("integer of {n} bytes exceeds 64 bits")));
                    }
                    let b = self.take(n as usize)?;
                    self.push(PickleValue::Int(long_le(b)))?;
                }
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.push(PickleValue::Float(f64::from_be_bytes(a)))?;
                }
                b'N' => self.push(PickleValue::None)?,
                0x88 => self.push(PickleValue::Bool(true))?,
                0x89 => self.push(PickleValue::Bool(false))?,
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top_mut()?.clone();
                    self.admit(&v)?;
                    self.push(v)?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = self.reduce(func, args)?;
                    self.push_built(v)?;
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    match (&cls, &args) {
                        (PickleValue::Global(Global::OrderedDict), PickleValue::Tuple(a))
                            if a.is_empty() =>
                        {
                            self.push(PickleValue::Dict(Vec::new()))?
                        }
                        _ => return Err(self.err(format!("NEWOBJ of a {} refused", cls.kind()))),
                    }
                }
                b'b' => {
                    let _state = self.pop()?;
                    let obj = self.top_mut()?;
                    // OrderedDict `_metadata` and tensor state carry nothing we need.
                    if !matches!(obj, PickleValue::Dict(_) | PickleValue::Tensor(_)) {
                        let k = obj.kind();
                        return Err(self.err(format!("BUILD on a {k} refused")));
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let s = self.persistent_storage(pid)?;
                    self.push(PickleValue::Storage(s))?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.dict_extend(vec![(k, v)])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let kv = pairs(items).ok_or_else(|| self.err("SETITEMS with odd items"))?;
                    self.dict_extend(kv)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.list_extend(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.list_extend(items)?;
                }
                other => {
                    self.pos = op_pos;
                    return Err(self.err(format!("unsupported pickle opcode 0x{other:02x}")));
                }
            }
        }
    }

    fn dict_extend(&mut self, kv: Vec<(PickleValue, PickleValue)>) -> Result<()> {
        let mut depth = 0;
        for (k, v) in &kv {
            depth = depth.max(k.measure().1).max(v.measure().1);
        }
        if depth + 1 > MAX_DEPTH {
            return Err(self.err(format!("values nest deeper than {MAX_DEPTH} levels")));
        }
        match self.top_mut()? {
            PickleValue::Dict(d) => {
                d.extend(kv);
                Ok(())
            }
            other => {
                let k = other.kind();
                Err(self.err(format!("SETITEM(S) on a {k}")))
            }
        }
    }

    fn list_extend(&mut self, items: Vec<PickleValue>) -> Result<()> {
        let depth = items.iter().map(|v| v.measure().1).max().unwrap_or(0);
        if depth + 1 > MAX_DEPTH {
            return Err(self.err(format!("values nest deeper than {MAX_DEPTH} levels")));
        }
        match self.top_mut()? {
            PickleValue::List(l) => {
                l.extend(items);
                Ok(())
            }
            other => {
                let k = other.kind();
                Err(self.err(format!("APPEND(S) on a {k}")))
            }
        }
    }

    fn persistent_storage(&self, pid: PickleValue) -> Result<StorageRef> {
        let bad =
            || self.err("persistent id is not ('storage', torch.<X>Storage, key, location, numel)");
        let PickleValue::Tuple(t) = pid else {
            return Err(bad());
        };
        match t.as_slice() {
            [PickleValue::Str(tag), PickleValue::Global(g), PickleValue::Str(key), PickleValue::Str(_loc), PickleValue::Int(numel)]
                if tag == "storage" =>
            {
                let Global::Storage(dtype) = g else {
                    return Err(self.err(format!("persistent id storage type is {g:?}")));
                };
                let numel = usize::try_from(*numel)
                    .map_err(|_| self.err(format!("storage '{key}' has numel {numel}")))?;
                Ok(StorageRef {
                    dtype: *dtype,
                    key: key.clone(),
                    numel,
                })
            }
            _ => Err(bad()),
        }
    }

    fn reduce(&self, func: PickleValue, args: PickleValue) -> Result<PickleValue> {
        let PickleValue::Global(g) = func else {
            return Err(self.err(format!("REDUCE of a {} refused", func.kind())));
        };
        let PickleValue::Tuple(args) = args else {
            return Err(self.err(format!("REDUCE arguments are a {}", args.kind())));
        };
        self.apply(g, args, 0)
    }

    fn apply(&self, g: Global, args: Vec<PickleValue>, nest: usize) -> Result<PickleValue> {
        match g {
            Global::OrderedDict => {
                if args.is_empty() {
                    Ok(PickleValue::Dict(Vec::new()))
                } else {
                    Err(self.err("OrderedDict(...) with arguments refused"))
                }
            }
            Global::RebuildTensorV2 => self.rebuild_tensor(args),
            Global::RebuildParameter => match args.into_iter().next() {
                Some(t @ PickleValue::Tensor(_)) => Ok(t),
                _ => Err(self.err("_rebuild_parameter without a tensor")),
            },
            Global::RebuildFromTypeV2 => {
                // (func, type, args, state): apply the inner whitelisted func once.
                let mut it = args.into_iter();
                match (it.next(), it.next(), it.next(), nest) {
                    (
                        Some(PickleValue::Global(inner)),
                        Some(PickleValue::Global(Global::TensorType)),
                        Some(PickleValue::Tuple(a)),
                        0,
                    ) => self.apply(inner, a, 1),
                    _ => Err(self.err("_rebuild_from_type_v2 with unexpected arguments")),
                }
            }
            Global::TensorType | Global::Storage(_) => {
                Err(self.err(format!("calling {g:?} is refused")))
            }
        }
    }

    fn rebuild_tensor(&self, args: Vec<PickleValue>) -> Result<PickleValue> {
        let ints = |v: &PickleValue, what: &str| -> Result<Vec<usize>> {
            match v {
                PickleValue::Tuple(t) | PickleValue::List(t) => t
                    .iter()
                    .map(|x| match x {
                        PickleValue::Int(i) => usize::try_from(*i)
                            .map_err(|_| self.err(format!("tensor {what} has negative entry {i}"))),
                        o => Err(self.err(format!("tensor {what} has a {} entry", o.kind()))),
                    })
                    .collect(),
                o => Err(self.err(format!("tensor {what} is a {}", o.kind()))),
            }
        };
        match args.as_slice() {
            [PickleValue::Storage(s), PickleValue::Int(off), size, stride, ..]
                if args.len() >= 4 =>
            {
                let offset = usize::try_from(*off)
                    .map_err(|_| self.err(format!("tensor storage offset {off} is negative")))?;
                let size = ints(size, "size")?;
                let stride = ints(stride, "stride")?;
                if size.len() != stride.len() {
                    return Err(self.err(format!(
                        "tensor has {} sizes but {} strides",
                        size.len(),
                        stride.len()
                    )));
                }
                Ok(PickleValue::Tensor(TensorRef {
                    storage: s.clone(),
                    offset,
                    size,
                    stride,
                }))
            }
            _ => Err(self
                .err("_rebuild_tensor_v2 arguments are not (storage, offset, size, stride, ...)")),
        }
    }
}

fn pairs(items: Vec<PickleValue>) -> Option<Vec<(PickleValue, PickleValue)>> {
    if !items.len().is_multiple_of(2) {
        return None;
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Some(out)
}

/// Two's-complement little-endian integer of at most 8 bytes.
fn long_le(b: &[u8]) -> i64 {
    if b.is_empty() {
        return 0;
    }
    let neg = b.last().is_some_and(|&x| x & 0x80 != 0);
    let mut a = if neg { [0xffu8; 8] } else { [0u8; 8] };
    a[..b.len()].copy_from_slice(b);
    i64::from_le_bytes(a)
}
