//! `program = { object = "x.o", … }` in a scenario: the TOML as written,
//! its checks (the object exists, is BPF, has the program, maps and globals
//! named, and every value fits its BTF type), and the validated form the
//! runner loads.
//!
//! Errors come back as (byte span, message) pairs; the scenario module
//! turns them into `file:line:col` errors.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_spanned::Spanned;

use super::btf::Btf;
use super::libbpf::{self, MapFacts, ProgFacts};
use crate::scenario::{ChainEntry, Direction, Program};

type S<T> = Spanned<T>;

/// `program = "name"` or `program = { ingress = "a", egress = "b" }` inside an object table.
#[derive(Debug)]
pub(crate) enum RawProgramSel {
    One(String),
    PerHook { ingress: Option<S<String>>, egress: Option<S<String>> },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPerHook {
    ingress: Option<S<String>>,
    egress: Option<S<String>>,
}

impl<'de> Deserialize<'de> for RawProgramSel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawProgramSel;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a program name or section, or a table like { ingress = \"prog_in\", egress = \"prog_out\" }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawProgramSel, E> {
                Ok(RawProgramSel::One(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawProgramSel, A::Error> {
                let t = RawPerHook::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(RawProgramSel::PerHook { ingress: t.ingress, egress: t.egress })
            }
        }
        d.deserialize_any(V)
    }
}

/// One `fill = [{ map = "m", key = …, value = … }]` item.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFill {
    pub map: S<String>,
    pub key: Option<S<toml::Value>>,
    pub value: Option<S<toml::Value>>,
    pub key_hex: Option<S<String>>,
    pub value_hex: Option<S<String>>,
}

/// One `tail_calls = [{ map = "jmp", index = 0, program = "p" }]` item.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTailCall {
    pub map: S<String>,
    pub index: S<i64>,
    pub program: S<String>,
}

/// `dump = ["m", { map = "ct", hide = ["expires"] }]`.
#[derive(Debug)]
pub(crate) struct RawDump {
    pub map: String,
    pub hide: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDumpTable {
    map: String,
    #[serde(default)]
    hide: Vec<String>,
}

impl<'de> Deserialize<'de> for RawDump {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawDump;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map name, or a table like { map = \"stats\", hide = [\"last_seen\"] }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawDump, E> {
                Ok(RawDump { map: v.to_string(), hide: Vec::new() })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawDump, A::Error> {
                let t = RawDumpTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(RawDump { map: t.map, hide: t.hide })
            }
        }
        d.deserialize_any(V)
    }
}

/// The object keys of a program table, borrowed from the scenario's raw table.
pub(crate) struct RawObject<'a> {
    /// The whole `program = { … }` value.
    pub span: Range<usize>,
    pub object: Option<&'a S<String>>,
    pub program: Option<&'a S<RawProgramSel>>,
    pub constants: &'a BTreeMap<S<String>, S<toml::Value>>,
    pub fill: &'a [RawFill],
    pub pin: &'a [S<String>],
    pub reuse: &'a BTreeMap<S<String>, S<String>>,
    pub tail_calls: &'a [RawTailCall],
    pub dump: &'a [S<RawDump>],
    /// Spans of Cilium-only keys given alongside `object`.
    pub cilium_keys: Vec<(Range<usize>, &'static str)>,
}

impl RawObject<'_> {
    /// Whether any object key is present (the table is an object entry).
    pub fn any(&self) -> bool {
        self.object.is_some()
            || self.program.is_some()
            || !self.constants.is_empty()
            || !self.fill.is_empty()
            || !self.pin.is_empty()
            || !self.reuse.is_empty()
            || !self.tail_calls.is_empty()
            || !self.dump.is_empty()
    }
}

/// A compiled BPF object of the user's, as a chain entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObjectProgram {
    /// Resolved against the scenario file's folder.
    pub path: PathBuf,
    /// As written in the scenario.
    pub written: String,
    /// Program attached on ingress / egress (libbpf program names).
    pub ingress: Option<String>,
    pub egress: Option<String>,
    pub constants: Vec<Constant>,
    pub fill: Vec<Fill>,
    /// Maps shared by name between every entry of the scenario, as if
    /// pinned by name in one bpffs (those the object pins are included).
    pub pin: Vec<String>,
    pub reuse: Vec<Reuse>,
    pub tail_calls: Vec<TailCall>,
    pub dump: Vec<Dump>,
    /// The object's maps, for checks between entries.
    pub maps: Vec<MapFacts>,
}

impl ObjectProgram {
    /// The program attached on `hook` (ingress or egress).
    pub fn program_for(&self, hook: Direction) -> Option<&str> {
        match hook {
            Direction::Egress => self.egress.as_deref(),
            _ => self.ingress.as_deref(),
        }
    }

    /// Distinct programs to load, ingress first.
    pub fn entry_programs(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self.ingress.iter().map(String::as_str).collect();
        if let Some(e) = &self.egress
            && !out.contains(&e.as_str())
        {
            out.push(e);
        }
        out
    }

    pub fn map(&self, name: &str) -> Option<&MapFacts> {
        self.maps.iter().find(|m| m.name == name)
    }
}

/// Bytes written into a data section (`.rodata`, `.data`, `.bss`) before load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Constant {
    pub name: String,
    pub section: String,
    pub offset: u32,
    pub bytes: Vec<u8>,
}

/// One map element written after load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fill {
    pub map: String,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// `reuse = { mine = "entry/theirs" }`: this object's map `map` is the map
/// `from_map` of the earlier entry `entry`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reuse {
    pub map: String,
    pub entry: String,
    pub from_map: String,
    #[serde(skip)]
    pub span: Range<usize>,
}

/// A program of the object put into a program array slot after load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TailCall {
    pub map: String,
    pub index: u32,
    pub program: String,
}

/// A map dumped into the result after the replays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dump {
    pub map: String,
    /// Value fields shown as `_` (timestamps and the like).
    pub hide: Vec<String>,
}

type Errors = Vec<(Range<usize>, String)>;

fn quoted(names: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    let v: Vec<String> = names.into_iter().map(|n| format!("`{}`", n.as_ref())).collect();
    if v.is_empty() { "none".into() } else { v.join(", ") }
}

/// Checks an object table; `base` is the scenario file's folder and
/// `direction` the entry's hooks.
pub(crate) fn validate(raw: &RawObject, base: &Path, direction: Direction) -> Result<ObjectProgram, Errors> {
    let mut errs: Errors = Vec::new();
    for (span, key) in &raw.cilium_keys {
        errs.push((span.clone(), format!("`{key}` is a key of Cilium-like programs, expected it without `object`")));
    }
    let Some(object) = raw.object else {
        errs.push((raw.span.clone(), "a program table with object keys needs `object`, expected e.g. { object = \"../fixtures/byo/port_filter.o\", program = \"byo_port_filter\" }".into()));
        return Err(errs);
    };
    let written = object.get_ref().clone();
    let path = base.join(&written);
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            errs.push((object.span(), format!("object `{written}` not found (looked for {}), expected a path relative to the scenario file", path.display())));
            return Err(errs);
        }
        Err(e) => {
            errs.push((object.span(), format!("object `{written}` cannot be read: {e}")));
            return Err(errs);
        }
    };
    if let Err(why) = super::elf::inspect(&data) {
        errs.push((object.span(), format!("`{written}` is {why}")));
        return Err(errs);
    }
    let open = match libbpf::open(&path) {
        Ok(o) => o,
        Err(why) => {
            errs.push((object.span(), format!("`{written}`: {why}")));
            return Err(errs);
        }
    };
    let btf = libbpf::object_btf(&open);
    let progs = libbpf::programs(&open);
    let maps = libbpf::maps(&open, btf.as_ref());
    drop(open);

    let (ingress, egress) = select_programs(raw, &written, &progs, direction, &mut errs);
    let cx = Cx { written: &written, btf: btf.as_ref(), maps: &maps, progs: &progs };
    let constants = raw.constants.iter().filter_map(|(k, v)| cx.constant(k, v).map_err(|e| errs.push(e)).ok()).collect();
    let fill = raw.fill.iter().filter_map(|f| cx.fill(f).map_err(|e| errs.push(e)).ok()).collect();
    let mut pin: Vec<String> = Vec::new();
    for p in raw.pin {
        match cx.user_map(p) {
            Ok(m) => pin.push(m.name.clone()),
            Err(e) => errs.push(e),
        }
    }
    for m in maps.iter().filter(|m| m.pinned_by_name) {
        if !pin.contains(&m.name) {
            pin.push(m.name.clone());
        }
    }
    let reuse = raw.reuse.iter().filter_map(|(k, v)| cx.reuse(k, v).map_err(|e| errs.push(e)).ok()).collect();
    let tail_calls = raw.tail_calls.iter().filter_map(|t| cx.tail_call(t).map_err(|e| errs.push(e)).ok()).collect();
    let dump = raw.dump.iter().filter_map(|d| cx.dump(d).map_err(|e| errs.push(e)).ok()).collect();
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(ObjectProgram { path, written, ingress, egress, constants, fill, pin, reuse, tail_calls, dump, maps })
}

fn find_program(progs: &[ProgFacts], want: &str) -> Result<String, String> {
    if let Some(p) = progs.iter().find(|p| p.name == want) {
        return Ok(p.name.clone());
    }
    let by_section: Vec<&ProgFacts> = progs.iter().filter(|p| p.section == want).collect();
    match by_section.as_slice() {
        [one] => Ok(one.name.clone()),
        [] => Err(format!(
            "no program or section `{want}`, expected one of {}",
            quoted(progs.iter().map(|p| format!("{} (section {})", p.name, p.section)))
        )),
        many => Err(format!(
            "section `{want}` holds {} programs ({}), expected one of their names",
            many.len(),
            quoted(many.iter().map(|p| &p.name))
        )),
    }
}

/// A program found by name or section, checked to be a TC classifier.
fn checked(name: Result<String, String>, span: Range<usize>, written: &str, progs: &[ProgFacts], errs: &mut Errors) -> Option<String> {
    let name = name.map_err(|e| errs.push((span.clone(), format!("`{written}` has {e}")))).ok()?;
    let facts = progs.iter().find(|p| p.name == name)?;
    if !facts.is_tc {
        errs.push((span, format!(
            "program `{name}` of `{written}` is a {} program (section `{}`), expected a TC classifier (SEC(\"tc\"), SEC(\"classifier\"), SEC(\"tcx/ingress\"), …)",
            facts.prog_type, facts.section
        )));
        return None;
    }
    Some(name)
}

fn select_programs(
    raw: &RawObject,
    written: &str,
    progs: &[ProgFacts],
    direction: Direction,
    errs: &mut Errors,
) -> (Option<String>, Option<String>) {
    let one = match raw.program {
        None => match progs {
            [only] => checked(Ok(only.name.clone()), raw.span.clone(), written, progs, errs),
            _ => {
                errs.push((raw.span.clone(), format!(
                    "`{written}` has {} programs, expected `program = \"…\"` naming one of {}",
                    progs.len(),
                    quoted(progs.iter().map(|p| &p.name))
                )));
                return (None, None);
            }
        },
        Some(sel) => match sel.get_ref() {
            RawProgramSel::One(name) => checked(find_program(progs, name), sel.span(), written, progs, errs),
            RawProgramSel::PerHook { ingress, egress } => {
                let pick = |v: &Option<S<String>>, hook: Direction, key: &str, errs: &mut Errors| match (v, direction.covers(hook)) {
                    (Some(v), true) => checked(find_program(progs, v.get_ref()), v.span(), written, progs, errs),
                    (Some(v), false) => {
                        errs.push((v.span(), format!("`{key}` names a program but the entry's direction leaves out {key}, expected direction = \"both\" or \"{key}\"")));
                        None
                    }
                    (None, true) => {
                        errs.push((sel.span(), format!("the entry runs on {key} but names no `{key}` program, expected {key} = \"…\"")));
                        None
                    }
                    (None, false) => None,
                };
                let i = pick(ingress, Direction::Ingress, "ingress", errs);
                let e = pick(egress, Direction::Egress, "egress", errs);
                return (i, e);
            }
        },
    };
    let on = |hook| direction.covers(hook).then(|| one.clone()).flatten();
    (on(Direction::Ingress), on(Direction::Egress))
}

struct Cx<'a> {
    written: &'a str,
    btf: Option<&'a Btf>,
    maps: &'a [MapFacts],
    progs: &'a [ProgFacts],
}

impl Cx<'_> {
    fn user_map(&self, name: &S<String>) -> Result<&MapFacts, (Range<usize>, String)> {
        self.maps.iter().find(|m| !m.internal && m.name == *name.get_ref()).ok_or_else(|| {
            (name.span(), format!(
                "`{}` has no map `{}`, expected one of {}",
                self.written,
                name.get_ref(),
                quoted(self.maps.iter().filter(|m| !m.internal).map(|m| &m.name))
            ))
        })
    }

    fn constant(&self, k: &S<String>, v: &S<toml::Value>) -> Result<Constant, (Range<usize>, String)> {
        let Some(btf) = self.btf else {
            return Err((k.span(), format!("`{}` has no BTF: constants are found by name through BTF, expected an object built with -g", self.written)));
        };
        let Some(var) = btf.find_var(k.get_ref()) else {
            let names: Vec<String> = btf.globals().into_iter().filter(|(_, g)| !g.section.starts_with(".maps")).map(|(n, _)| n).collect();
            return Err((k.span(), format!("`{}` has no global variable `{}`, expected one of {}", self.written, k.get_ref(), quoted(names))));
        };
        if !self.maps.iter().any(|m| m.internal && m.name == var.section) {
            return Err((k.span(), format!("`{}` lives in section `{}`, which libbpf does not load as a map; expected a variable of .rodata, .data or .bss", k.get_ref(), var.section)));
        }
        let bytes = btf.encode(var.ty, v.get_ref()).map_err(|e| (v.span(), format!("constant `{}`: {e}", k.get_ref())))?;
        if bytes.len() != var.size as usize {
            return Err((v.span(), format!("constant `{}`: {} bytes for a {}-byte variable", k.get_ref(), bytes.len(), var.size)));
        }
        Ok(Constant { name: k.get_ref().clone(), section: var.section, offset: var.offset, bytes })
    }

    #[allow(clippy::too_many_arguments, reason = "one key or value: its typed and hex forms, BTF type and size")]
    fn bytes(
        &self,
        m: &MapFacts,
        what: &str,
        typed: Option<&S<toml::Value>>,
        hex_form: Option<&S<String>>,
        ty: u32,
        size: u32,
        span: Range<usize>,
    ) -> Result<Vec<u8>, (Range<usize>, String)> {
        let (bytes, at) = match (typed, hex_form) {
            (Some(_), Some(h)) => return Err((h.span(), format!("both `{what}` and `{what}_hex`, expected one of them"))),
            (None, None) => return Err((span, format!("`fill` of `{}` needs `{what}` (typed) or `{what}_hex`", m.name))),
            (None, Some(h)) => {
                let clean: String = h.get_ref().trim_start_matches("0x").chars().filter(|c| !c.is_whitespace()).collect();
                let b = hex::decode(&clean).map_err(|e| (h.span(), format!("`{what}_hex` is not hex ({e}), expected e.g. \"0a000001\"")))?;
                (b, h.span())
            }
            (Some(v), None) => {
                let (Some(btf), true) = (self.btf, ty != 0) else {
                    return Err((v.span(), format!("map `{}` has no BTF type for its {what}, expected `{what}_hex`", m.name)));
                };
                (btf.encode(ty, v.get_ref()).map_err(|e| (v.span(), format!("map `{}` {what}: {e}", m.name)))?, v.span())
            }
        };
        if bytes.len() != size as usize {
            return Err((at, format!("map `{}` {what} is {} bytes, expected {size}", m.name, bytes.len())));
        }
        Ok(bytes)
    }

    fn fill(&self, f: &RawFill) -> Result<Fill, (Range<usize>, String)> {
        let m = self.user_map(&f.map)?;
        if m.prog_array {
            return Err((f.map.span(), format!("map `{}` is a program array, expected `tail_calls` to fill it", m.name)));
        }
        let key = self.bytes(m, "key", f.key.as_ref(), f.key_hex.as_ref(), m.key_type, m.key_size, f.map.span())?;
        let value = self.bytes(m, "value", f.value.as_ref(), f.value_hex.as_ref(), m.value_type, m.value_size, f.map.span())?;
        Ok(Fill { map: m.name.clone(), key, value })
    }

    fn reuse(&self, k: &S<String>, v: &S<String>) -> Result<Reuse, (Range<usize>, String)> {
        let m = self.user_map(k)?;
        let (entry, from_map) = match v.get_ref().split_once('/') {
            Some((e, mname)) => (e.to_string(), mname.to_string()),
            None => (v.get_ref().clone(), m.name.clone()),
        };
        if entry.is_empty() || from_map.is_empty() {
            return Err((v.span(), format!("`{}` is not an entry, expected \"entry\" or \"entry/map\"", v.get_ref())));
        }
        Ok(Reuse { map: m.name.clone(), entry, from_map, span: v.span() })
    }

    fn tail_call(&self, t: &RawTailCall) -> Result<TailCall, (Range<usize>, String)> {
        let m = self.user_map(&t.map)?;
        if !m.prog_array {
            return Err((t.map.span(), format!("map `{}` is a {} map, expected a prog_array for `tail_calls`", m.name, m.map_type)));
        }
        let idx = *t.index.get_ref();
        if idx < 0 || idx >= i64::from(m.max_entries) {
            return Err((t.index.span(), format!("index {idx} is outside `{}` (0..{})", m.name, m.max_entries)));
        }
        let program = find_program(self.progs, t.program.get_ref()).map_err(|e| (t.program.span(), format!("`{}` has {e}", self.written)))?;
        Ok(TailCall { map: m.name.clone(), index: idx as u32, program })
    }

    fn dump(&self, d: &S<RawDump>) -> Result<Dump, (Range<usize>, String)> {
        let raw = d.get_ref();
        let m = self.user_map(&Spanned::new(d.span(), raw.map.clone()))?;
        for field in &raw.hide {
            let known = match (self.btf, m.value_type) {
                (Some(btf), ty) if ty != 0 => btf.decode(ty, &vec![0u8; m.value_size as usize]).hide(field),
                _ => false,
            };
            if !known {
                return Err((d.span(), format!("map `{}` has no value field `{field}` to hide (needs BTF for its value)", m.name)));
            }
        }
        Ok(Dump { map: m.name.clone(), hide: raw.hide.clone() })
    }
}

/// Checks between object entries: every `reuse` names an earlier object
/// entry that has the map, with the same key and value sizes.
pub(crate) fn check_reuse(chain: &[ChainEntry]) -> Errors {
    let mut errs = Errors::new();
    for (i, e) in chain.iter().enumerate() {
        let Program::Object(o) = &e.program else { continue };
        for r in &o.reuse {
            let earlier = chain[..i].iter().find(|c| c.name == r.entry);
            let other = match earlier.map(|c| &c.program) {
                Some(Program::Object(other)) => other,
                Some(_) => {
                    errs.push((r.span.clone(), format!("`reuse` names `{}`, which is not an object entry, expected an earlier entry with `object`", r.entry)));
                    continue;
                }
                None => {
                    let later = chain[i..].iter().any(|c| c.name == r.entry);
                    let why = if later { "comes later in the file" } else { "is not a chain entry" };
                    errs.push((r.span.clone(), format!("`reuse` names `{}`, which {why}; expected an earlier object entry (entries load in file order)", r.entry)));
                    continue;
                }
            };
            let (Some(mine), Some(theirs)) = (o.map(&r.map), other.map(&r.from_map)) else {
                errs.push((r.span.clone(), format!("entry `{}` has no map `{}`, expected one of {}", r.entry, r.from_map, quoted(other.maps.iter().filter(|m| !m.internal).map(|m| &m.name)))));
                continue;
            };
            if (mine.map_type.as_str(), mine.key_size, mine.value_size) != (theirs.map_type.as_str(), theirs.key_size, theirs.value_size) {
                errs.push((r.span.clone(), format!(
                    "map `{}` ({} {}/{} bytes) cannot reuse `{}/{}` ({} {}/{} bytes), expected the same type and key/value sizes",
                    mine.name, mine.map_type, mine.key_size, mine.value_size, r.entry, theirs.name, theirs.map_type, theirs.key_size, theirs.value_size
                )));
            }
        }
    }
    errs
}
