//! A small pickle virtual machine for the subset of Python's pickle that
//! `torch.save` writes for state dicts and training checkpoints (protocol 2,
//! plus the protocol 3–5 opcodes that are simple to support).
//!
//! Torch's own constructs are interpreted on the fly: persistent ids become
//! [`StorageRef`]s, `torch._utils._rebuild_tensor_v2` becomes a
//! [`TensorRef`] (storage, offset, size, stride), and
//! `collections.OrderedDict` becomes a [`Value::Dict`]. Any other callable
//! is kept as an opaque [`Value::Object`] so that unrelated entries of a
//! checkpoint (an epoch counter, an argparse namespace) do not stop the
//! weights from loading. Nothing is ever executed.

use std::collections::HashMap;

use tch::Kind;

/// A decoded pickle value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer that does not fit in `i64` (the legacy format's magic
    /// number is one).
    BigInt(i128),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// A `module.name` reference (`GLOBAL`, `STACK_GLOBAL`).
    Global(String, String),
    /// The result of calling something we do not interpret.
    Object {
        callable: Box<Value>,
        args: Box<Value>,
    },
    Storage(StorageRef),
    Tensor(TensorRef),
}

impl Value {
    fn type_name(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(..) => "global",
            Value::Object { .. } => "object",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }

    fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(v) => Some(*v),
            Value::Bool(v) => Some(i64::from(*v)),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            Value::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    fn as_int_list(&self) -> Option<Vec<i64>> {
        match self {
            Value::Tuple(items) | Value::List(items) => items.iter().map(Value::as_i64).collect(),
            // `torch.Size` pickles as a reduce of `torch.Size((…))`.
            Value::Object { args, .. } => match args.as_ref() {
                Value::Tuple(inner) if inner.len() == 1 => inner[0].as_int_list(),
                _ => None,
            },
            _ => None,
        }
    }
}

/// A storage named by a persistent id: its data lives elsewhere in the
/// checkpoint, under `key`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StorageRef {
    /// Record name: `data/<key>` in the zip format, the storage key in the
    /// legacy format.
    pub(crate) key: String,
    /// Element type, from `torch.FloatStorage` and friends.
    pub(crate) kind: Kind,
    /// Storage size in elements as the id states it.
    pub(crate) numel: i64,
    /// Where it lived when saved (`cpu`, `cuda:0`); data always loads on
    /// the CPU.
    pub(crate) location: String,
    /// Legacy storage views: element offset of this view in `key`.
    pub(crate) view_offset: i64,
}

/// A tensor: a strided view of a storage.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TensorRef {
    pub(crate) storage: StorageRef,
    pub(crate) offset: i64,
    pub(crate) size: Vec<i64>,
    pub(crate) stride: Vec<i64>,
}

/// Why decoding stopped.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PickleError {
    Unsupported {
        opcode: &'static str,
        byte: u8,
        offset: usize,
    },
    Malformed {
        offset: usize,
        message: String,
    },
}

/// Maps a storage class name (`FloatStorage`) to its element type.
pub(crate) fn storage_kind(name: &str) -> Option<Kind> {
    Some(match name {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" | "UntypedStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        _ => return None,
    })
}

/// The name `pickletools` gives an opcode byte.
fn opcode_name(byte: u8) -> &'static str {
    match byte {
        b'(' => "MARK",
        b'.' => "STOP",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'L' => "LONG",
        b'M' => "BININT2",
        b'N' => "NONE",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'R' => "REDUCE",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'X' => "BINUNICODE",
        b'a' => "APPEND",
        b'b' => "BUILD",
        b'c' => "GLOBAL",
        b'd' => "DICT",
        b'}' => "EMPTY_DICT",
        b'e' => "APPENDS",
        b'g' => "GET",
        b'h' => "BINGET",
        b'i' => "INST",
        b'j' => "LONG_BINGET",
        b'l' => "LIST",
        b']' => "EMPTY_LIST",
        b'o' => "OBJ",
        b'p' => "PUT",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        b's' => "SETITEM",
        b't' => "TUPLE",
        b')' => "EMPTY_TUPLE",
        b'u' => "SETITEMS",
        b'G' => "BINFLOAT",
        0x80 => "PROTO",
        0x81 => "NEWOBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        0x8a => "LONG1",
        0x8b => "LONG4",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x93 => "STACK_GLOBAL",
        0x94 => "MEMOIZE",
        0x95 => "FRAME",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "(unknown opcode)",
    }
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    /// Offset of the opcode being executed, for error messages.
    op_start: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
}

/// Decodes one pickle starting at `start`; returns the value and the
/// offset just past its `STOP`.
pub(crate) fn parse(data: &[u8], start: usize) -> Result<(Value, usize), PickleError> {
    let mut machine = Machine {
        data,
        pos: start,
        op_start: start,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    let value = machine.run()?;
    Ok((value, machine.pos))
}

impl Machine<'_> {
    fn malformed(&self, message: impl Into<String>) -> PickleError {
        PickleError::Malformed {
            offset: self.op_start,
            message: message.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&[u8], PickleError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.data.len())
            .ok_or_else(|| {
                self.malformed(format!("unexpected end of data (wanted {n} more bytes)"))
            })?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take_array::<1>()?[0])
    }

    fn u32_len(&mut self) -> Result<usize, PickleError> {
        Ok(u32::from_le_bytes(self.take_array()?) as usize)
    }

    fn u64_len(&mut self) -> Result<usize, PickleError> {
        let n = u64::from_le_bytes(self.take_array()?);
        usize::try_from(n).map_err(|_| self.malformed("length does not fit in memory"))
    }

    /// A newline-terminated text argument.
    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|b| *b == b'\n')
            .ok_or_else(|| self.malformed("unterminated text argument"))?;
        let text = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(text)
    }

    fn utf8(&mut self, n: usize) -> Result<Value, PickleError> {
        let bytes = self.take(n)?.to_vec();
        String::from_utf8(bytes)
            .map(Value::Str)
            .map_err(|_| self.malformed("string is not valid UTF-8"))
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        self.stack
            .pop()
            .ok_or_else(|| self.malformed("stack underflow"))
    }

    fn top(&mut self) -> Result<&mut Value, PickleError> {
        let offset = self.op_start;
        self.stack.last_mut().ok_or(PickleError::Malformed {
            offset,
            message: "stack underflow".into(),
        })
    }

    /// Pops everything down to the last `MARK`.
    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| self.malformed("no MARK on the stack"))?;
        if mark > self.stack.len() {
            return Err(self.malformed("MARK above the stack top"));
        }
        Ok(self.stack.split_off(mark))
    }

    fn memo_get(&mut self, index: u64) -> Result<(), PickleError> {
        let value = self
            .memo
            .get(&index)
            .cloned()
            .ok_or_else(|| self.malformed(format!("memo entry {index} is not set")))?;
        self.stack.push(value);
        Ok(())
    }

    fn memo_put(&mut self, index: u64) -> Result<(), PickleError> {
        let value = self.top()?.clone();
        self.memo.insert(index, value);
        Ok(())
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.malformed("odd number of items for SETITEMS"));
        }
        let offset = self.op_start;
        match self.top()? {
            Value::Dict(entries) => {
                let mut items = items.into_iter();
                while let (Some(key), Some(value)) = (items.next(), items.next()) {
                    entries.push((key, value));
                }
                Ok(())
            }
            other => Err(PickleError::Malformed {
                offset,
                message: format!("SETITEM(S) on a {}", other.type_name()),
            }),
        }
    }

    fn append_items(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        let offset = self.op_start;
        match self.top()? {
            Value::List(list) => {
                list.extend(items);
                Ok(())
            }
            // Subclasses of list we do not interpret: keep going.
            Value::Object { .. } => Ok(()),
            other => Err(PickleError::Malformed {
                offset,
                message: format!("APPEND(S) on a {}", other.type_name()),
            }),
        }
    }

    fn run(&mut self) -> Result<Value, PickleError> {
        loop {
            self.op_start = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let protocol = self.u8()?;
                    if protocol > 5 {
                        return Err(
                            self.malformed(format!("pickle protocol {protocol} is newer than 5"))
                        );
                    }
                }
                0x95 => {
                    // FRAME: a length prefix we do not need.
                    self.take(8)?;
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let top = self.top()?.clone();
                    self.stack.push(top);
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(self.take_array()?);
                    self.stack.push(Value::Int(i64::from(v)));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(i64::from(v)));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take_array()?);
                    self.stack.push(Value::Int(i64::from(v)));
                }
                b'I' => {
                    let text = self.line()?;
                    let value = match text.as_str() {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        t => Value::Int(
                            t.parse()
                                .map_err(|_| self.malformed(format!("bad INT `{t}`")))?,
                        ),
                    };
                    self.stack.push(value);
                }
                b'L' => {
                    let text = self.line()?;
                    let digits = text.trim_end_matches('L');
                    let v: i128 = digits
                        .parse()
                        .map_err(|_| self.malformed(format!("bad LONG `{text}`")))?;
                    self.stack.push(int_value(v));
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        usize::from(self.u8()?)
                    } else {
                        self.u32_len()?
                    };
                    let bytes = self.take(n)?;
                    if n > 16 {
                        return Err(self.malformed(format!("{n}-byte integer is too large")));
                    }
                    let mut v: i128 = 0;
                    for (i, b) in bytes.iter().enumerate() {
                        v |= i128::from(*b) << (8 * i);
                    }
                    // Two's complement sign extension.
                    if n > 0 && n < 16 && bytes[n - 1] & 0x80 != 0 {
                        v -= 1i128 << (8 * n);
                    }
                    self.stack.push(int_value(v));
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take_array()?);
                    self.stack.push(Value::Float(v));
                }
                b'F' => {
                    let text = self.line()?;
                    let v = text
                        .trim()
                        .parse()
                        .map_err(|_| self.malformed(format!("bad FLOAT `{text}`")))?;
                    self.stack.push(Value::Float(v));
                }
                b'X' => {
                    let n = self.u32_len()?;
                    let s = self.utf8(n)?;
                    self.stack.push(s);
                }
                0x8c => {
                    let n = usize::from(self.u8()?);
                    let s = self.utf8(n)?;
                    self.stack.push(s);
                }
                0x8d => {
                    let n = self.u64_len()?;
                    let s = self.utf8(n)?;
                    self.stack.push(s);
                }
                // Python 2 `str` (byte strings); keep the bytes.
                b'T' | b'U' | b'B' | b'C' | 0x8e => {
                    let n = match op {
                        b'U' | b'C' => usize::from(self.u8()?),
                        0x8e => self.u64_len()?,
                        _ => self.u32_len()?,
                    };
                    let bytes = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(bytes));
                }
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    if self.stack.len() < n {
                        return Err(self.malformed("stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items));
                }
                b']' => self.stack.push(Value::List(Vec::new())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(items));
                }
                b'a' => {
                    let item = self.pop()?;
                    self.append_items(vec![item])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append_items(items)?;
                }
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b'd' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Dict(Vec::new()));
                    self.set_items(items)?;
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.set_items(vec![key, value])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                // Sets hold nothing a state dict needs; keep them as lists.
                0x8f => self.stack.push(Value::List(Vec::new())),
                0x90 => {
                    let items = self.pop_mark()?;
                    self.append_items(items)?;
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(items));
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(module, name));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(module), Value::Str(name)) => {
                            self.stack.push(Value::Global(module, name))
                        }
                        _ => return Err(self.malformed("STACK_GLOBAL needs two strings")),
                    }
                }
                b'q' => {
                    let index = u64::from(self.u8()?);
                    self.memo_put(index)?;
                }
                b'r' => {
                    let index = u64::from(u32::from_le_bytes(self.take_array()?));
                    self.memo_put(index)?;
                }
                b'p' => {
                    let text = self.line()?;
                    let index = text
                        .parse()
                        .map_err(|_| self.malformed(format!("bad PUT `{text}`")))?;
                    self.memo_put(index)?;
                }
                0x94 => {
                    let index = self.memo.len() as u64;
                    self.memo_put(index)?;
                }
                b'h' => {
                    let index = u64::from(self.u8()?);
                    self.memo_get(index)?;
                }
                b'j' => {
                    let index = u64::from(u32::from_le_bytes(self.take_array()?));
                    self.memo_get(index)?;
                }
                b'g' => {
                    let text = self.line()?;
                    let index = text
                        .parse()
                        .map_err(|_| self.malformed(format!("bad GET `{text}`")))?;
                    self.memo_get(index)?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let storage = self.persistent_load(pid)?;
                    self.stack.push(storage);
                }
                b'P' => {
                    let pid = Value::Str(self.line()?);
                    let storage = self.persistent_load(pid)?;
                    self.stack.push(storage);
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let value = self.reduce(callable, args)?;
                    self.stack.push(value);
                }
                0x81 => {
                    let args = self.pop()?;
                    let class = self.pop()?;
                    self.stack.push(Value::Object {
                        callable: Box::new(class),
                        args: Box::new(args),
                    });
                }
                b'b' => {
                    // BUILD sets an object's state (`__setstate__` or
                    // `__dict__`); state dicts carry `_metadata` this way,
                    // which loading does not need.
                    self.pop()?;
                    self.top()?;
                }
                other => {
                    return Err(PickleError::Unsupported {
                        opcode: opcode_name(other),
                        byte: other,
                        offset: self.op_start,
                    });
                }
            }
        }
    }

    /// Interprets torch's persistent ids:
    /// zip format `('storage', StorageType, key, location, numel)`;
    /// legacy format `('storage', StorageType, root_key, location, numel,
    /// view_metadata)` with `view_metadata` `None` or `(view_key, offset,
    /// view_numel)`.
    fn persistent_load(&self, pid: Value) -> Result<Value, PickleError> {
        let Value::Tuple(items) = pid else {
            return Err(self.malformed(format!(
                "persistent id is a {}, not a tuple",
                pid.type_name()
            )));
        };
        match items.first().and_then(Value::as_str) {
            Some("storage") => {}
            Some("module") => {
                return Err(self.malformed(
                    "the file pickles a whole nn.Module (torch.save(model)); save model.state_dict() instead",
                ));
            }
            other => return Err(self.malformed(format!("unknown persistent id type {other:?}"))),
        }
        if items.len() < 5 {
            return Err(self.malformed(format!(
                "storage id has {} fields, expected 5 or 6",
                items.len()
            )));
        }
        let kind = match &items[1] {
            Value::Global(module, name) if module == "torch" => storage_kind(name),
            _ => None,
        }
        .ok_or_else(|| self.malformed(format!("unsupported storage type {:?}", items[1])))?;
        let key = items[2]
            .as_str()
            .ok_or_else(|| self.malformed("storage key is not a string"))?
            .to_string();
        let location = items[3].as_str().unwrap_or("cpu").to_string();
        let numel = items[4]
            .as_i64()
            .ok_or_else(|| self.malformed("storage size is not an integer"))?;
        let view_offset = match items.get(5) {
            Some(Value::Tuple(view)) if view.len() == 3 => view[1]
                .as_i64()
                .ok_or_else(|| self.malformed("storage view offset is not an integer"))?,
            _ => 0,
        };
        Ok(Value::Storage(StorageRef {
            key,
            kind,
            numel,
            location,
            view_offset,
        }))
    }

    fn reduce(&self, callable: Value, args: Value) -> Result<Value, PickleError> {
        let Value::Global(module, name) = &callable else {
            return Ok(Value::Object {
                callable: Box::new(callable),
                args: Box::new(args),
            });
        };
        match (module.as_str(), name.as_str()) {
            ("torch._utils", "_rebuild_tensor" | "_rebuild_tensor_v2") => {
                let Value::Tuple(items) = &args else {
                    return Err(self.malformed(format!("{name} arguments are not a tuple")));
                };
                let (Some(Value::Storage(storage)), Some(offset), Some(size), Some(stride)) = (
                    items.first(),
                    items.get(1).and_then(Value::as_i64),
                    items.get(2).and_then(Value::as_int_list),
                    items.get(3).and_then(Value::as_int_list),
                ) else {
                    return Err(self.malformed(format!("unexpected {name} arguments {items:?}")));
                };
                if size.len() != stride.len() {
                    return Err(self.malformed(format!(
                        "tensor size {size:?} and stride {stride:?} differ in rank"
                    )));
                }
                Ok(Value::Tensor(TensorRef {
                    storage: storage.clone(),
                    offset,
                    size,
                    stride,
                }))
            }
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => match &args
            {
                Value::Tuple(items) if matches!(items.first(), Some(Value::Tensor(_))) => {
                    Ok(items[0].clone())
                }
                _ => Err(self.malformed(format!("unexpected {name} arguments"))),
            },
            ("collections", "OrderedDict") | ("builtins" | "__builtin__", "dict") => {
                let mut entries = Vec::new();
                if let Value::Tuple(items) = &args
                    && let Some(Value::List(pairs)) = items.first()
                {
                    for pair in pairs {
                        match pair {
                            Value::Tuple(kv) | Value::List(kv) if kv.len() == 2 => {
                                entries.push((kv[0].clone(), kv[1].clone()));
                            }
                            _ => return Err(self.malformed("OrderedDict items are not pairs")),
                        }
                    }
                }
                Ok(Value::Dict(entries))
            }
            _ => Ok(Value::Object {
                callable: Box::new(callable),
                args: Box::new(args),
            }),
        }
    }
}

fn int_value(v: i128) -> Value {
    i64::try_from(v).map_or(Value::BigInt(v), Value::Int)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_protocol_2_dict() {
        // pickle.dumps({'a': 1, 'b': [2.5, None, True]}, protocol=2)
        let data = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01K\x01X\x01\x00\x00\x00bq\x02]q\x03(G@\x04\x00\x00\x00\x00\x00\x00N\x88eu.";
        let (value, end) = parse(data, 0).unwrap();
        assert_eq!(end, data.len());
        assert_eq!(
            value,
            Value::Dict(vec![
                (Value::Str("a".into()), Value::Int(1)),
                (
                    Value::Str("b".into()),
                    Value::List(vec![Value::Float(2.5), Value::None, Value::Bool(true)])
                ),
            ])
        );
    }

    #[test]
    fn decodes_the_legacy_magic_number() {
        // pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2)
        let data = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19.";
        let (value, _) = parse(data, 0).unwrap();
        assert_eq!(value, Value::BigInt(0x1950a86a20f9469cfc6c));
        // pickle.dumps(-300, protocol=2) uses BININT.
        let (value, _) = parse(b"\x80\x02J\xd4\xfe\xff\xff.", 0).unwrap();
        assert_eq!(value, Value::Int(-300));
        // LONG1 sign extension: pickle.dumps(-(2**40), protocol=2).
        let (value, _) = parse(b"\x80\x02\x8a\x06\x00\x00\x00\x00\x00\xff.", 0).unwrap();
        assert_eq!(value, Value::Int(-(1 << 40)));
    }

    #[test]
    fn memo_and_globals_work() {
        // A tuple of the same global twice through the memo.
        let data = b"\x80\x02ctorch\nFloatStorage\nq\x00h\x00\x86q\x01.";
        let (value, _) = parse(data, 0).unwrap();
        let global = Value::Global("torch".into(), "FloatStorage".into());
        assert_eq!(value, Value::Tuple(vec![global.clone(), global]));
    }

    #[test]
    fn rebuilds_a_tensor_reference() {
        // _rebuild_tensor_v2(storage('0', FloatStorage, 6 elements), 1, (2, 2), (3, 1), False, OrderedDict())
        let data = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x06\x00\x00\x00cuda:0K\x06tQK\x01K\x02K\x02\x86K\x03K\x01\x86\x89ccollections\nOrderedDict\n)RtR.";
        let (value, _) = parse(data, 0).unwrap();
        let Value::Tensor(tensor) = value else {
            panic!("not a tensor: {value:?}")
        };
        assert_eq!(tensor.storage.key, "0");
        assert_eq!(tensor.storage.kind, Kind::Float);
        assert_eq!(tensor.storage.location, "cuda:0");
        assert_eq!(tensor.offset, 1);
        assert_eq!(tensor.size, [2, 2]);
        assert_eq!(tensor.stride, [3, 1]);
    }

    #[test]
    fn unsupported_opcodes_and_truncation_are_errors() {
        let err = parse(b"\x80\x02\x82\x01.", 0).unwrap_err();
        assert_eq!(
            err,
            PickleError::Unsupported {
                opcode: "EXT1",
                byte: 0x82,
                offset: 2
            }
        );
        assert!(matches!(
            parse(b"\x80\x02X\xff\x00\x00\x00ab", 0),
            Err(PickleError::Malformed { .. })
        ));
        assert!(matches!(
            parse(b"\x80\x02u.", 0),
            Err(PickleError::Malformed { .. })
        ));
        assert!(matches!(parse(b"", 0), Err(PickleError::Malformed { .. })));
    }
}
