//! A small reader of BTF (the BPF Type Format) as an object carries it:
//! enough to turn a scenario's typed value into the bytes of a map key,
//! map value or global variable, and map bytes back into readable values.
//!
//! It reads raw BTF (libbpf's copy of the object's `.BTF`, or the ELF
//! section itself), so it works without a kernel and without libbpf's
//! lifetimes.

use std::fmt::Write as _;

const BTF_MAGIC: u16 = 0xeb9f;

/// Type id 0 is `void`.
pub type TypeId = u32;

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Void,
    Int { size: u32, signed: bool, char: bool, bool: bool, bits: u32 },
    Ptr(TypeId),
    Array { elem: TypeId, len: u32 },
    Struct { size: u32, members: Vec<Member> },
    Union { size: u32, members: Vec<Member> },
    Enum { size: u32, signed: bool, values: Vec<(String, i64)> },
    Fwd,
    /// Typedef, volatile, const, restrict, type tag: the type they name.
    Alias(TypeId),
    Func(TypeId),
    FuncProto,
    Var(TypeId),
    DataSec { size: u32, vars: Vec<SecVar> },
    Float { size: u32 },
    DeclTag,
    /// A kind this reader does not know (newer BTF); sized types stay hex.
    Unknown,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub name: String,
    pub ty: TypeId,
    pub bit_offset: u32,
    /// Non-zero for a bitfield.
    pub bitfield_size: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SecVar {
    pub ty: TypeId,
    pub offset: u32,
    pub size: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Type {
    pub name: String,
    pub kind: Kind,
}

/// Parsed BTF: every type, indexed by its id.
#[derive(Debug, Clone)]
pub struct Btf {
    types: Vec<Type>,
}

/// A global variable found in a data section (`.rodata`, `.data`, `.bss`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalVar {
    pub section: String,
    pub offset: u32,
    pub size: u32,
    pub ty: TypeId,
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| format!("BTF is cut short at byte {at}"))
}

fn cstr(strings: &[u8], off: u32) -> String {
    let start = off as usize;
    let Some(rest) = strings.get(start..) else { return String::new() };
    let end = rest.iter().position(|c| *c == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end]).into_owned()
}

impl Btf {
    /// Parse raw little-endian BTF (header, types, strings).
    pub fn parse(raw: &[u8]) -> Result<Btf, String> {
        let magic = raw.get(0..2).map(|m| u16::from_le_bytes([m[0], m[1]]));
        if magic != Some(BTF_MAGIC) {
            return Err("not BTF (bad magic)".into());
        }
        let hdr_len = u32_at(raw, 4)? as usize;
        let (type_off, type_len) = (u32_at(raw, 8)? as usize, u32_at(raw, 12)? as usize);
        let (str_off, str_len) = (u32_at(raw, 16)? as usize, u32_at(raw, 20)? as usize);
        let types_raw = raw
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or("BTF type section out of bounds")?;
        let strings = raw.get(hdr_len + str_off..hdr_len + str_off + str_len).ok_or("BTF string section out of bounds")?;
        let mut types = vec![Type { name: String::new(), kind: Kind::Void }];
        let mut at = 0;
        while at < types_raw.len() {
            let (t, next) = parse_type(types_raw, at, strings)?;
            types.push(t);
            at = next;
        }
        Ok(Btf { types })
    }

    pub fn get(&self, id: TypeId) -> Option<&Type> {
        self.types.get(id as usize)
    }

    /// Follow typedefs and qualifiers to the type that has a shape.
    pub fn resolve(&self, mut id: TypeId) -> TypeId {
        for _ in 0..32 {
            match self.get(id).map(|t| &t.kind) {
                Some(Kind::Alias(next)) => id = *next,
                _ => break,
            }
        }
        id
    }

    pub fn size_of(&self, id: TypeId) -> Option<u32> {
        let id = self.resolve(id);
        match &self.get(id)?.kind {
            Kind::Int { size, .. }
            | Kind::Struct { size, .. }
            | Kind::Union { size, .. }
            | Kind::Enum { size, .. }
            | Kind::DataSec { size, .. }
            | Kind::Float { size } => Some(*size),
            Kind::Ptr(_) => Some(8),
            Kind::Array { elem, len } => self.size_of(*elem).map(|s| s * len),
            Kind::Var(t) => self.size_of(*t),
            _ => None,
        }
    }

    /// C-like name: `__u16`, `struct byo_rule`, `__u8[16]`.
    pub fn type_name(&self, id: TypeId) -> String {
        let Some(t) = self.get(id) else { return format!("<type {id}>") };
        let named = |prefix: &str| if t.name.is_empty() { format!("{prefix}<anon>") } else { format!("{prefix}{}", t.name) };
        match &t.kind {
            Kind::Void => "void".into(),
            Kind::Struct { .. } => named("struct "),
            Kind::Union { .. } => named("union "),
            Kind::Enum { .. } => named("enum "),
            Kind::Ptr(to) => format!("{} *", self.type_name(*to)),
            Kind::Array { elem, len } => format!("{}[{len}]", self.type_name(*elem)),
            Kind::Alias(to) if t.name.is_empty() => self.type_name(*to),
            _ => named(""),
        }
    }

    /// A global variable by name, in whichever data section holds it.
    pub fn find_var(&self, name: &str) -> Option<GlobalVar> {
        for t in &self.types {
            let Kind::DataSec { vars, .. } = &t.kind else { continue };
            for v in vars {
                let Some(var) = self.get(v.ty) else { continue };
                if let Kind::Var(ty) = var.kind
                    && var.name == name
                {
                    return Some(GlobalVar { section: t.name.clone(), offset: v.offset, size: v.size, ty });
                }
            }
        }
        None
    }

    /// Every global variable: (name, where).
    pub fn globals(&self) -> Vec<(String, GlobalVar)> {
        let mut out = Vec::new();
        for t in &self.types {
            let Kind::DataSec { vars, .. } = &t.kind else { continue };
            for v in vars {
                if let Some(Type { name, kind: Kind::Var(ty) }) = self.get(v.ty) {
                    out.push((name.clone(), GlobalVar { section: t.name.clone(), offset: v.offset, size: v.size, ty: *ty }));
                }
            }
        }
        out
    }

    /// The bytes of `value` (a scenario's TOML value) as type `id`.
    pub fn encode(&self, id: TypeId, value: &toml::Value) -> Result<Vec<u8>, String> {
        let size = self.size_of(id).ok_or_else(|| format!("type {} has no size", self.type_name(id)))?;
        let mut buf = vec![0u8; size as usize];
        self.encode_into(id, value, &mut buf, 0, 0, "")?;
        Ok(buf)
    }

    fn encode_into(&self, id: TypeId, v: &toml::Value, buf: &mut [u8], bit_off: u32, bitfield: u32, path: &str) -> Result<(), String> {
        if let Some(size) = self.big_endian(id).filter(|_| bitfield == 0 && bit_off.is_multiple_of(8)) {
            // Network order: the scenario writes the number (port 80), the map holds it big-endian.
            let n = int_value(v, false, size * 8).map_err(|e| format!("{}{e}, expected {}", at(path), self.type_name(id)))?;
            let be = n.to_be_bytes();
            return put(buf, (bit_off / 8) as usize, &be[8 - size as usize..]);
        }
        let rid = self.resolve(id);
        let t = self.get(rid).ok_or_else(|| format!("{}unknown type id {rid}", at(path)))?;
        let byte_off = (bit_off / 8) as usize;
        match &t.kind {
            Kind::Int { size, signed, bits, .. } => {
                let width = if bitfield > 0 { bitfield } else { (*bits).min(size * 8) };
                let n = int_value(v, *signed, width).map_err(|e| format!("{}{e}, expected {}", at(path), self.type_name(id)))?;
                write_bits(buf, bit_off, width, n)
            }
            Kind::Enum { size, signed, values } => {
                let n = match v {
                    toml::Value::String(s) => values
                        .iter()
                        .find(|(name, _)| name == s)
                        .map(|(_, n)| *n as u64)
                        .ok_or_else(|| {
                            let names: Vec<_> = values.iter().map(|(n, _)| format!("`{n}`")).collect();
                            format!("{}unknown enumerator `{s}` of {}, expected one of {}", at(path), self.type_name(id), names.join(", "))
                        })?,
                    _ => int_value(v, *signed, size * 8).map_err(|e| format!("{}{e}, expected {}", at(path), self.type_name(id)))?,
                };
                let width = if bitfield > 0 { bitfield } else { size * 8 };
                write_bits(buf, bit_off, width, n)
            }
            Kind::Float { size } => {
                let f = match v {
                    toml::Value::Float(f) => *f,
                    toml::Value::Integer(i) => *i as f64,
                    _ => return Err(format!("{}expected a number for {}", at(path), self.type_name(id))),
                };
                let bytes = if *size == 4 { (f as f32).to_le_bytes().to_vec() } else { f.to_le_bytes().to_vec() };
                put(buf, byte_off, &bytes)
            }
            Kind::Array { elem, len } => {
                let esize = self.size_of(*elem).unwrap_or(0);
                if let toml::Value::String(s) = v {
                    if !self.is_byte(*elem) {
                        return Err(format!("{}a string fits only a char array, expected a list for {}", at(path), self.type_name(id)));
                    }
                    if s.len() > *len as usize {
                        return Err(format!("{}string of {} bytes does not fit {}", at(path), s.len(), self.type_name(id)));
                    }
                    return put(buf, byte_off, s.as_bytes());
                }
                let toml::Value::Array(items) = v else {
                    return Err(format!("{}expected a list for {}", at(path), self.type_name(id)));
                };
                if items.len() > *len as usize {
                    return Err(format!("{}{} items do not fit {}", at(path), items.len(), self.type_name(id)));
                }
                for (i, item) in items.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    self.encode_into(*elem, item, buf, bit_off + (i as u32) * esize * 8, 0, &p)?;
                }
                Ok(())
            }
            Kind::Struct { members, .. } | Kind::Union { members, .. } => {
                let is_union = matches!(t.kind, Kind::Union { .. });
                let toml::Value::Table(table) = v else {
                    return Err(format!("{}expected a table like {{ {} }} for {}", at(path), self.example(members), self.type_name(id)));
                };
                let known = self.member_names(members);
                for key in table.keys() {
                    if !known.contains(key) {
                        let names: Vec<_> = known.iter().map(|n| format!("`{n}`")).collect();
                        return Err(format!("{}{} has no member `{key}`, expected one of {}", at(path), self.type_name(id), names.join(", ")));
                    }
                }
                if is_union && table.len() > 1 {
                    return Err(format!("{}a union takes one member, got {}", at(path), table.len()));
                }
                for m in members {
                    let p = if path.is_empty() { m.name.clone() } else { format!("{path}.{}", m.name) };
                    if m.name.is_empty() {
                        // Anonymous struct/union: its members are named at this level.
                        self.encode_into(m.ty, v, buf, bit_off + m.bit_offset, 0, path)?;
                    } else if let Some(mv) = table.get(&m.name) {
                        self.encode_into(m.ty, mv, buf, bit_off + m.bit_offset, m.bitfield_size, &p)?;
                    }
                }
                Ok(())
            }
            Kind::Ptr(_) => Err(format!("{}{} is a pointer: it cannot be set from a scenario", at(path), self.type_name(id))),
            _ => Err(format!("{}type {} cannot be set from a scenario", at(path), self.type_name(id))),
        }
    }

    fn is_byte(&self, id: TypeId) -> bool {
        matches!(self.get(self.resolve(id)).map(|t| &t.kind), Some(Kind::Int { size: 1, .. }))
    }

    fn is_char(&self, id: TypeId) -> bool {
        matches!(self.get(self.resolve(id)).map(|t| &t.kind), Some(Kind::Int { size: 1, char: true, .. }))
    }

    fn member_names(&self, members: &[Member]) -> Vec<String> {
        let mut out = Vec::new();
        for m in members {
            if m.name.is_empty() {
                if let Some(Kind::Struct { members: inner, .. } | Kind::Union { members: inner, .. }) =
                    self.get(self.resolve(m.ty)).map(|t| &t.kind)
                {
                    out.extend(self.member_names(inner));
                }
            } else {
                out.push(m.name.clone());
            }
        }
        out
    }

    fn example(&self, members: &[Member]) -> String {
        self.member_names(members).iter().take(3).map(|n| format!("{n} = …")).collect::<Vec<_>>().join(", ")
    }

    /// A readable value of `bytes` as type `id` (hex where BTF says too little).
    pub fn decode(&self, id: TypeId, bytes: &[u8]) -> Value {
        self.decode_at(id, bytes, 0, 0)
    }

    /// Size of a network-order integer typedef (`__be16`, `__be32`, `__be64`) on the way to `id`.
    fn big_endian(&self, mut id: TypeId) -> Option<u32> {
        for _ in 0..32 {
            let t = self.get(id)?;
            let Kind::Alias(next) = t.kind else { return None };
            if let Some(bits) = t.name.strip_prefix("__be").and_then(|b| b.parse::<u32>().ok()) {
                return Some(bits / 8);
            }
            id = next;
        }
        None
    }

    fn decode_at(&self, id: TypeId, bytes: &[u8], bit_off: u32, bitfield: u32) -> Value {
        if let Some(size) = self.big_endian(id).filter(|_| bitfield == 0 && bit_off.is_multiple_of(8)) {
            let s = slice(bytes, (bit_off / 8) as usize, size as usize);
            return Value::Int(s.iter().fold(0i128, |n, b| (n << 8) | i128::from(*b)));
        }
        let rid = self.resolve(id);
        let Some(t) = self.get(rid) else { return Value::Hex(bytes.to_vec()) };
        let byte_off = (bit_off / 8) as usize;
        match &t.kind {
            Kind::Int { size, signed, bool, bits, .. } => {
                let width = if bitfield > 0 { bitfield } else { (*bits).min(size * 8) };
                let raw = read_bits(bytes, bit_off, width);
                if *bool {
                    Value::Bool(raw != 0)
                } else if *signed {
                    Value::Int(sign_extend(raw, width))
                } else {
                    Value::Int(i128::from(raw))
                }
            }
            Kind::Enum { size, signed, values } => {
                let width = if bitfield > 0 { bitfield } else { size * 8 };
                let raw = read_bits(bytes, bit_off, width);
                let n = if *signed { sign_extend(raw, width) } else { i128::from(raw) };
                match values.iter().find(|(_, v)| i128::from(*v) == n || (*v as u64 as i128) == n) {
                    Some((name, _)) => Value::Enum(name.clone()),
                    None => Value::Int(n),
                }
            }
            Kind::Float { size } => {
                let s = slice(bytes, byte_off, *size as usize);
                match s.len() {
                    4 => Value::Float(f64::from(f32::from_le_bytes([s[0], s[1], s[2], s[3]]))),
                    8 => Value::Float(f64::from_le_bytes(s.try_into().unwrap_or([0; 8]))),
                    _ => Value::Hex(s.to_vec()),
                }
            }
            Kind::Array { elem, len } => {
                let esize = self.size_of(*elem).unwrap_or(0);
                let whole = slice(bytes, byte_off, (esize * len) as usize);
                if self.is_char(*elem) {
                    let end = whole.iter().position(|c| *c == 0).unwrap_or(whole.len());
                    let text = &whole[..end];
                    if text.iter().all(|c| c.is_ascii_graphic() || *c == b' ') && whole[end..].iter().all(|c| *c == 0) {
                        return Value::Str(String::from_utf8_lossy(text).into_owned());
                    }
                }
                if self.is_byte(*elem) {
                    return Value::Hex(whole.to_vec());
                }
                Value::List((0..*len).map(|i| self.decode_at(*elem, bytes, bit_off + i * esize * 8, 0)).collect())
            }
            Kind::Struct { members, .. } | Kind::Union { members, .. } => {
                let mut fields = Vec::new();
                for m in members {
                    let v = self.decode_at(m.ty, bytes, bit_off + m.bit_offset, m.bitfield_size);
                    match (m.name.is_empty(), v) {
                        (true, Value::Struct(inner)) => fields.extend(inner),
                        (_, v) => fields.push((m.name.clone(), v)),
                    }
                }
                Value::Struct(fields)
            }
            _ => {
                let size = self.size_of(rid).unwrap_or(bytes.len() as u32);
                Value::Hex(slice(bytes, byte_off, size as usize).to_vec())
            }
        }
    }
}

fn at(path: &str) -> String {
    if path.is_empty() { String::new() } else { format!("`{path}`: ") }
}

fn slice(bytes: &[u8], off: usize, len: usize) -> &[u8] {
    let end = (off + len).min(bytes.len());
    bytes.get(off.min(end)..end).unwrap_or(&[])
}

fn put(buf: &mut [u8], off: usize, bytes: &[u8]) -> Result<(), String> {
    let dst = buf.get_mut(off..off + bytes.len()).ok_or("value runs past the end of its type")?;
    dst.copy_from_slice(bytes);
    Ok(())
}

/// A TOML integer (or bool, or `"0x…"` string for values past i64) checked
/// against a `width`-bit signed or unsigned integer.
fn int_value(v: &toml::Value, signed: bool, width: u32) -> Result<u64, String> {
    let n: i128 = match v {
        toml::Value::Integer(i) => i128::from(*i),
        toml::Value::Boolean(b) => i128::from(*b),
        toml::Value::String(s) => {
            let parsed = match s.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16).ok(),
                None => s.parse::<u64>().ok(),
            };
            i128::from(parsed.ok_or_else(|| format!("`{s}` is not a number"))?)
        }
        other => return Err(format!("{} is not an integer", other.type_str())),
    };
    let width = width.clamp(1, 64);
    let (lo, hi) = if signed {
        (-(1i128 << (width - 1)), (1i128 << (width - 1)) - 1)
    } else {
        (0, (1i128 << width) - 1)
    };
    if n < lo || n > hi {
        return Err(format!("{n} is out of range {lo}..={hi}"));
    }
    Ok((n as u64) & mask(width))
}

fn mask(width: u32) -> u64 {
    if width >= 64 { u64::MAX } else { (1u64 << width) - 1 }
}

fn write_bits(buf: &mut [u8], bit_off: u32, width: u32, n: u64) -> Result<(), String> {
    if bit_off.is_multiple_of(8) && width.is_multiple_of(8) {
        let bytes = n.to_le_bytes();
        return put(buf, (bit_off / 8) as usize, &bytes[..(width / 8) as usize]);
    }
    for i in 0..width {
        let bit = bit_off + i;
        let byte = buf.get_mut((bit / 8) as usize).ok_or("bitfield runs past the end of its type")?;
        if (n >> i) & 1 == 1 {
            *byte |= 1 << (bit % 8);
        } else {
            *byte &= !(1 << (bit % 8));
        }
    }
    Ok(())
}

fn read_bits(bytes: &[u8], bit_off: u32, width: u32) -> u64 {
    let width = width.min(64);
    let mut n = 0u64;
    for i in 0..width {
        let bit = bit_off + i;
        let b = bytes.get((bit / 8) as usize).copied().unwrap_or(0);
        if (b >> (bit % 8)) & 1 == 1 {
            n |= 1 << i;
        }
    }
    n
}

fn sign_extend(raw: u64, width: u32) -> i128 {
    let width = width.clamp(1, 64);
    let shift = 64 - width;
    i128::from(((raw << shift) as i64) >> shift)
}

fn parse_type(b: &[u8], at: usize, strings: &[u8]) -> Result<(Type, usize), String> {
    let name = cstr(strings, u32_at(b, at)?);
    let info = u32_at(b, at + 4)?;
    let size_or_type = u32_at(b, at + 8)?;
    let vlen = (info & 0xffff) as usize;
    let kind_flag = info >> 31 == 1;
    let mut next = at + 12;
    let kind = match (info >> 24) & 0x1f {
        1 => {
            let enc = u32_at(b, next)?;
            next += 4;
            let e = (enc >> 24) & 0xf;
            Kind::Int { size: size_or_type, signed: e & 1 != 0, char: e & 2 != 0, bool: e & 4 != 0, bits: enc & 0xff }
        }
        2 => Kind::Ptr(size_or_type),
        3 => {
            let elem = u32_at(b, next)?;
            let len = u32_at(b, next + 8)?;
            next += 12;
            Kind::Array { elem, len }
        }
        k @ (4 | 5) => {
            let mut members = Vec::with_capacity(vlen);
            for i in 0..vlen {
                let m = next + i * 12;
                let off = u32_at(b, m + 8)?;
                let (bit_offset, bitfield_size) = if kind_flag { (off & 0xff_ffff, off >> 24) } else { (off, 0) };
                members.push(Member { name: cstr(strings, u32_at(b, m)?), ty: u32_at(b, m + 4)?, bit_offset, bitfield_size });
            }
            next += vlen * 12;
            if k == 4 { Kind::Struct { size: size_or_type, members } } else { Kind::Union { size: size_or_type, members } }
        }
        6 => {
            let mut values = Vec::with_capacity(vlen);
            for i in 0..vlen {
                let m = next + i * 8;
                let raw = u32_at(b, m + 4)?;
                let v = if kind_flag { i64::from(raw as i32) } else { i64::from(raw) };
                values.push((cstr(strings, u32_at(b, m)?), v));
            }
            next += vlen * 8;
            Kind::Enum { size: size_or_type, signed: kind_flag, values }
        }
        7 => Kind::Fwd,
        8..=11 | 18 => Kind::Alias(size_or_type),
        12 => Kind::Func(size_or_type),
        13 => {
            next += vlen * 8;
            Kind::FuncProto
        }
        14 => {
            next += 4;
            Kind::Var(size_or_type)
        }
        15 => {
            let mut vars = Vec::with_capacity(vlen);
            for i in 0..vlen {
                let m = next + i * 12;
                vars.push(SecVar { ty: u32_at(b, m)?, offset: u32_at(b, m + 4)?, size: u32_at(b, m + 8)? });
            }
            next += vlen * 12;
            Kind::DataSec { size: size_or_type, vars }
        }
        16 => Kind::Float { size: size_or_type },
        17 => {
            next += 4;
            Kind::DeclTag
        }
        19 => {
            let mut values = Vec::with_capacity(vlen);
            for i in 0..vlen {
                let m = next + i * 12;
                let lo = u64::from(u32_at(b, m + 4)?);
                let hi = u64::from(u32_at(b, m + 8)?);
                values.push((cstr(strings, u32_at(b, m)?), ((hi << 32) | lo) as i64));
            }
            next += vlen * 12;
            Kind::Enum { size: size_or_type, signed: kind_flag, values }
        }
        k => return Err(format!("unknown BTF kind {k}: cannot read past it")),
    };
    Ok((Type { name, kind }, next))
}

/// A decoded value, in declaration order.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i128),
    Bool(bool),
    Float(f64),
    Str(String),
    Enum(String),
    Hex(Vec<u8>),
    List(Vec<Value>),
    Struct(Vec<(String, Value)>),
    /// A field the scenario asked to hide (timestamps and the like).
    Hidden,
}

impl Value {
    /// `{ packets: 3, bytes: 180 }`, `[1, 2]`, `0a000001`, `"text"`.
    pub fn text(&self) -> String {
        let mut s = String::new();
        self.write_text(&mut s);
        s
    }

    fn write_text(&self, s: &mut String) {
        match self {
            Value::Int(n) => {
                let _ = write!(s, "{n}");
            }
            Value::Bool(b) => {
                let _ = write!(s, "{b}");
            }
            Value::Float(f) => {
                let _ = write!(s, "{f}");
            }
            Value::Str(t) => {
                let _ = write!(s, "{t:?}");
            }
            Value::Enum(e) => s.push_str(e),
            Value::Hex(b) => {
                s.push_str("0x");
                s.push_str(&hex::encode(b));
            }
            Value::Hidden => s.push('_'),
            Value::List(items) => {
                s.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        s.push_str(", ");
                    }
                    v.write_text(s);
                }
                s.push(']');
            }
            Value::Struct(fields) => {
                s.push_str("{ ");
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        s.push_str(", ");
                    }
                    let _ = write!(s, "{k}: ");
                    v.write_text(s);
                }
                s.push_str(" }");
            }
        }
    }

    pub fn json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Int(n) => i64::try_from(*n)
                .map(J::from)
                .or_else(|_| u64::try_from(*n).map(J::from))
                .unwrap_or_else(|_| J::String(n.to_string())),
            Value::Bool(b) => J::Bool(*b),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(t) | Value::Enum(t) => J::String(t.clone()),
            Value::Hex(b) => J::String(format!("0x{}", hex::encode(b))),
            Value::Hidden => J::Null,
            Value::List(items) => J::Array(items.iter().map(Value::json).collect()),
            Value::Struct(fields) => J::Object(fields.iter().map(|(k, v)| (k.clone(), v.json())).collect()),
        }
    }

    /// Replace the field at `path` (`a` or `a.b`) with [`Value::Hidden`];
    /// false when there is no such field.
    pub fn hide(&mut self, path: &str) -> bool {
        let (head, rest) = match path.split_once('.') {
            Some((h, r)) => (h, Some(r)),
            None => (path, None),
        };
        match self {
            Value::Struct(fields) => fields.iter_mut().filter(|(k, _)| k == head).fold(false, |found, (_, v)| {
                let hit = match rest {
                    Some(r) => v.hide(r),
                    None => {
                        *v = Value::Hidden;
                        true
                    }
                };
                found | hit
            }),
            Value::List(items) => items.iter_mut().fold(false, |f, v| v.hide(path) | f),
            _ => false,
        }
    }

    /// Field-wise sum of per-CPU copies of one value (integers add; other
    /// fields must agree, else the first CPU's is kept).
    pub fn sum(values: &[Value]) -> Value {
        let Some(first) = values.first() else { return Value::Hex(Vec::new()) };
        values[1..].iter().fold(first.clone(), |acc, v| acc.add(v))
    }

    fn add(&self, other: &Value) -> Value {
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => Value::Int(a.wrapping_add(*b)),
            (Value::Float(a), Value::Float(b)) => Value::Float(a + b),
            (Value::List(a), Value::List(b)) if a.len() == b.len() => {
                Value::List(a.iter().zip(b).map(|(x, y)| x.add(y)).collect())
            }
            (Value::Struct(a), Value::Struct(b)) if a.len() == b.len() => {
                Value::Struct(a.iter().zip(b).map(|((k, x), (_, y))| (k.clone(), x.add(y))).collect())
            }
            _ => self.clone(),
        }
    }
}

/// Number of CO-RE relocation records in raw `.BTF.ext` (0 when it has none).
pub fn core_relocations(btf_ext: &[u8]) -> Result<usize, String> {
    let magic = btf_ext.get(0..2).map(|m| u16::from_le_bytes([m[0], m[1]]));
    if magic != Some(BTF_MAGIC) {
        return Err("not BTF.ext (bad magic)".into());
    }
    let hdr_len = u32_at(btf_ext, 4)? as usize;
    if hdr_len < 32 {
        return Ok(0);
    }
    let (off, len) = (u32_at(btf_ext, 24)? as usize, u32_at(btf_ext, 28)? as usize);
    if len == 0 {
        return Ok(0);
    }
    let base = hdr_len + off;
    let rec_size = u32_at(btf_ext, base)? as usize;
    let mut at = base + 4;
    let mut count = 0;
    while at + 8 <= base + len {
        let n = u32_at(btf_ext, at + 4)? as usize;
        count += n;
        at += 8 + n * rec_size.max(1);
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-built BTF: int `__u16` (1), struct s { __u16 a; __u16 b:4; __u16 c:12; } (2).
    fn sample() -> Btf {
        let strings = b"\0__u16\0s\0a\0b\0c\0".to_vec();
        let mut types = Vec::new();
        let push = |v: &mut Vec<u8>, x: u32| v.extend_from_slice(&x.to_le_bytes());
        // [1] INT __u16 size 2, 16 bits unsigned
        push(&mut types, 1);
        push(&mut types, 1 << 24);
        push(&mut types, 2);
        push(&mut types, 16);
        // [2] STRUCT s size 4, kind_flag (bitfields), 3 members
        push(&mut types, 7);
        push(&mut types, (1 << 31) | (4 << 24) | 3);
        push(&mut types, 4);
        for (name, off) in [(9u32, 0u32), (11, (4 << 24) | 16), (13, (12 << 24) | 20)] {
            push(&mut types, name);
            push(&mut types, 1);
            push(&mut types, off);
        }
        let mut raw = Vec::new();
        raw.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        raw.extend_from_slice(&[1, 0]);
        for x in [24u32, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
            raw.extend_from_slice(&x.to_le_bytes());
        }
        raw.extend_from_slice(&types);
        raw.extend_from_slice(&strings);
        Btf::parse(&raw).expect("sample BTF parses")
    }

    #[test]
    fn encodes_and_decodes_structs_with_bitfields() {
        let btf = sample();
        let v: toml::Value = toml::from_str::<toml::Table>("x = { a = 80, b = 3, c = 4095 }").expect("toml")["x"].clone();
        let bytes = btf.encode(2, &v).expect("encodes");
        assert_eq!(bytes, vec![80, 0, 0x03 | 0xf0, 0xff]);
        assert_eq!(btf.decode(2, &bytes).text(), "{ a: 80, b: 3, c: 4095 }");
    }

    #[test]
    fn rejects_out_of_range_and_unknown_members() {
        let btf = sample();
        let big = toml::Value::Integer(70000);
        assert!(btf.encode(1, &big).unwrap_err().contains("out of range 0..=65535"));
        let t: toml::Value = toml::from_str::<toml::Table>("x = { z = 1 }").expect("toml")["x"].clone();
        let e = btf.encode(2, &t).unwrap_err();
        assert!(e.contains("has no member `z`") && e.contains("`a`, `b`, `c`"), "{e}");
        let bf: toml::Value = toml::from_str::<toml::Table>("x = { b = 16 }").expect("toml")["x"].clone();
        assert!(btf.encode(2, &bf).unwrap_err().contains("`b`: 16 is out of range 0..=15"));
    }

    #[test]
    fn hides_and_sums() {
        let mut v = Value::Struct(vec![("n".into(), Value::Int(2)), ("t".into(), Value::Int(99))]);
        assert!(v.hide("t"));
        assert!(!v.hide("missing"));
        assert_eq!(v.text(), "{ n: 2, t: _ }");
        let s = Value::sum(&[Value::Int(1), Value::Int(2), Value::Int(3)]);
        assert_eq!(s, Value::Int(6));
    }
}
