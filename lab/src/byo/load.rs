//! Loading a user's object the way libbpf loads it (CO-RE relocation, map
//! creation, data sections), preparing it as the scenario says (constants,
//! shared maps, map contents, tail calls), attaching its programs through
//! TCX or a netlink filter, and reading back what it did.
//!
//! Nothing is pinned in bpffs: maps "pinned by name" are shared between the
//! scenario's entries in memory ([`Pins`]). Everything is fd-owned, except
//! netlink filters, which a guard deletes on drop (inside the namespace the
//! chain is dropped in, like the rest of the chain).

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use libbpf_rs::{AsRawLibbpf, MapCore, MapFlags, Object, ProgramType};
use serde::{Deserialize, Serialize};

use super::btf::{Btf, Value};
use super::libbpf::{self, Diagnosis};
use super::spec::ObjectProgram;
use crate::scenario::{Direction, ResolvedAttach, TcxOrder};

/// Why an object entry could not be loaded or prepared.
#[derive(Debug, thiserror::Error)]
pub enum ByoError {
    /// The kernel (verifier) or libbpf refused the object: a finding about
    /// this kernel, with libbpf's words and the end of the verifier log.
    #[error("chain entry `{entry}`: the kernel rejected {what} of `{object}`: {error}{}", detail(.diagnosis))]
    Rejected { entry: String, object: String, what: String, error: String, diagnosis: Box<Diagnosis> },
    #[error("chain entry `{entry}`: {what}: {error}")]
    Setup { entry: String, what: String, error: String },
}

fn detail(d: &Diagnosis) -> String {
    let s = d.summary();
    if s.is_empty() { String::new() } else { format!("; {s}") }
}

impl ByoError {
    /// The verifier/libbpf diagnosis of a rejection.
    pub fn diagnosis(&self) -> Option<&Diagnosis> {
        match self {
            ByoError::Rejected { diagnosis, .. } => Some(diagnosis),
            ByoError::Setup { .. } => None,
        }
    }
}

/// Maps shared between the entries of one chain: by pin name, and by
/// (entry, map) for `reuse`.
#[derive(Default)]
pub struct Pins {
    by_name: HashMap<String, OwnedFd>,
    by_entry: HashMap<(String, String), OwnedFd>,
}

/// A TCX link (detached when its fd closes) or a netlink filter (deleted on drop).
#[allow(dead_code, reason = "held only: dropping detaches")]
enum Attachment {
    Tcx(OwnedFd),
    Netlink(NetlinkFilter),
}

struct NetlinkFilter {
    ifindex: u32,
    dir: tclab_net::tc::Direction,
    priority: u16,
    handle: u32,
}

impl Drop for NetlinkFilter {
    fn drop(&mut self) {
        if let Err(e) = tclab_net::tc::delete_filter(self.ifindex, self.dir, self.priority, self.handle) {
            // Gone with its device or clsact already: nothing is left behind.
            tracing::debug!("netlink filter prio {} handle {:#x}: {e}", self.priority, self.handle);
        }
    }
}

/// One object entry, loaded (and, once [`LoadedObject::attach`] ran, attached).
pub struct LoadedObject {
    entry: String,
    spec: ObjectProgram,
    /// Dropped after the attachments (field order), so links go first.
    attachments: Vec<Attachment>,
    object: Object,
    btf: Option<Btf>,
    /// Holds the kernel's run statistics on (run_cnt per program).
    _stats: OwnedFd,
}

/// The bytes of one map element; per-CPU maps have one value per CPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawElement {
    pub key: Vec<u8>,
    pub values: Vec<Vec<u8>>,
}

/// A map the scenario asked to see, read after the replays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapDump {
    pub entry: String,
    pub map: String,
    /// `key = value`, typed through BTF where it describes them, hex otherwise;
    /// sorted by key bytes; per-CPU values summed; all-zero array slots left out.
    pub lines: Vec<String>,
    /// The same elements as bytes, for programs that decode them themselves.
    #[serde(skip)]
    pub raw: Vec<RawElement>,
}

fn setup(entry: &str, what: impl Into<String>) -> impl FnOnce(String) -> ByoError {
    let (entry, what) = (entry.to_string(), what.into());
    move |error| ByoError::Setup { entry, what, error }
}

fn map_by_name<'o>(object: &'o Object, name: &str) -> Option<libbpf_rs::Map<'o>> {
    object.maps().find(|m| m.name().to_str() == Some(name))
}

impl LoadedObject {
    /// Open, prepare and load the object of chain entry `entry`.
    pub fn load(entry: &str, spec: &ObjectProgram, pins: &mut Pins) -> Result<LoadedObject, ByoError> {
        let mut open = libbpf::open(&spec.path).map_err(setup(entry, format!("failed to open `{}`", spec.written)))?;
        let mut wanted: Vec<&str> = spec.entry_programs();
        wanted.extend(spec.tail_calls.iter().map(|t| t.program.as_str()));
        for mut p in open.progs_mut() {
            let name = p.name().to_string_lossy().into_owned();
            let load = wanted.contains(&name.as_str());
            p.set_autoload(load);
            if load && p.prog_type() == ProgramType::Unspec {
                // A section libbpf does not type: the scenario says it is a classifier.
                p.set_prog_type(ProgramType::SchedCls);
            }
        }
        let raw_obj = open.as_libbpf_object().as_ptr();
        for c in &spec.constants {
            write_constant(raw_obj, c).map_err(setup(entry, format!("constant `{}`", c.name)))?;
        }
        for m in open.maps_mut() {
            let raw = m.as_libbpf_object().as_ptr();
            let name = m.name().to_string_lossy().into_owned();
            // SAFETY: `raw` is a live map of the open object; NULL clears the pin path.
            let rc = unsafe { libbpf_sys::bpf_map__set_pin_path(raw, std::ptr::null()) };
            if rc != 0 {
                return Err(setup(entry, format!("map `{name}`"))(format!("failed to clear its pin path ({rc})")));
            }
            let shared = if spec.pin.contains(&name) {
                pins.by_name.get(&name)
            } else {
                spec.reuse.iter().find(|r| r.map == name).and_then(|r| pins.by_entry.get(&(r.entry.clone(), r.from_map.clone())))
            };
            if let Some(fd) = shared {
                // SAFETY: `raw` is live; libbpf dups the fd.
                let rc = unsafe { libbpf_sys::bpf_map__reuse_fd(raw, fd.as_raw_fd()) };
                if rc != 0 {
                    return Err(setup(entry, format!("map `{name}`"))(format!("failed to reuse the shared map ({})", std::io::Error::from_raw_os_error(-rc))));
                }
            }
        }
        let (loaded, messages) = libbpf::capture(|| open.load());
        let object = loaded.map_err(|e| {
            let diagnosis = Diagnosis::from_messages(&messages);
            let what = match &diagnosis.program {
                Some(p) => format!("program `{p}`"),
                None => "the object".to_string(),
            };
            ByoError::Rejected { entry: entry.to_string(), object: spec.written.clone(), what, error: e.to_string(), diagnosis: Box::new(diagnosis) }
        })?;
        let btf = object_btf(&object);
        for m in object.maps() {
            let name = m.name().to_string_lossy().into_owned();
            let dup = |m: &libbpf_rs::Map| m.as_fd().try_clone_to_owned().map_err(|e| e.to_string());
            if spec.pin.contains(&name) && !pins.by_name.contains_key(&name) {
                pins.by_name.insert(name.clone(), dup(&m).map_err(setup(entry, format!("map `{name}`")))?);
            }
            pins.by_entry.insert((entry.to_string(), name.clone()), dup(&m).map_err(setup(entry, format!("map `{name}`")))?);
        }
        for f in &spec.fill {
            let m = map_by_name(&object, &f.map).ok_or_else(|| setup(entry, "fill")(format!("map `{}` vanished after load", f.map)))?;
            let r = match spec.map(&f.map) {
                Some(facts) if facts.percpu => m.update_percpu(&f.key, &vec![f.value.clone(); libbpf::possible_cpus()], MapFlags::ANY),
                _ => m.update(&f.key, &f.value, MapFlags::ANY),
            };
            r.map_err(|e| setup(entry, format!("fill map `{}` key 0x{}", f.map, hex::encode(&f.key)))(e.to_string()))?;
        }
        for t in &spec.tail_calls {
            let prog = object
                .progs()
                .find(|p| p.name().to_str() == Some(t.program.as_str()))
                .ok_or_else(|| setup(entry, "tail_calls")(format!("program `{}` was not loaded", t.program)))?;
            let fd = u32::try_from(prog.as_fd().as_raw_fd()).unwrap_or(0);
            let m = map_by_name(&object, &t.map).ok_or_else(|| setup(entry, "tail_calls")(format!("map `{}` vanished", t.map)))?;
            m.update(&t.index.to_le_bytes(), &fd.to_le_bytes(), MapFlags::ANY)
                .map_err(|e| setup(entry, format!("tail call `{}`[{}] = `{}`", t.map, t.index, t.program))(e.to_string()))?;
        }
        let stats = enable_stats().map_err(setup(entry, "packet counting"))?;
        Ok(LoadedObject { entry: entry.to_string(), spec: spec.clone(), attachments: Vec::new(), object, btf, _stats: stats })
    }

    pub fn spec(&self) -> &ObjectProgram {
        &self.spec
    }

    fn prog_fd(&self, name: &str) -> Option<BorrowedFd<'_>> {
        self.object.progs().find(|p| p.name().to_str() == Some(name)).map(|p| {
            let raw = p.as_fd().as_raw_fd();
            // SAFETY: the program lives as long as `self.object`, which the
            // returned borrow is tied to.
            unsafe { BorrowedFd::borrow_raw(raw) }
        })
    }

    /// Kernel id of the program attached on `hook`.
    pub fn program_id(&self, hook: Direction) -> Option<u32> {
        let name = self.spec.program_for(hook)?;
        prog_info(self.prog_fd(name)?).ok().map(|i| i.id)
    }

    /// Attach the program of `hook` on the device `ifindex` (call inside its
    /// namespace); `relative` is the kernel id of the program a
    /// `before`/`after` order names. Returns the attached program's id.
    pub fn attach(&mut self, ifname: &str, ifindex: u32, hook: Direction, how: &ResolvedAttach, relative: Option<u32>) -> anyhow::Result<u32> {
        use anyhow::Context as _;
        let name = self
            .spec
            .program_for(hook)
            .with_context(|| format!("chain entry `{}` has no program for {hook:?}", self.entry))?
            .to_string();
        let fd = self.prog_fd(&name).with_context(|| format!("program `{name}` is not loaded"))?;
        let id = prog_info(fd).map_err(anyhow::Error::msg).with_context(|| format!("failed to query program `{name}`"))?.id;
        let attachment = match how {
            ResolvedAttach::Tcx(order) => Attachment::Tcx(tcx_attach(fd, ifindex, hook, order, relative).with_context(|| {
                format!("failed to attach `{name}` of chain entry `{}` on {ifname} {hook:?} (TCX {order:?})", self.entry)
            })?),
            ResolvedAttach::Netlink { priority, handle } => {
                let dir = match hook {
                    Direction::Egress => tclab_net::tc::Direction::Egress,
                    _ => tclab_net::tc::Direction::Ingress,
                };
                tclab_net::tc::attach_bpf(ifindex, dir, *priority, *handle, fd, &name).with_context(|| {
                    format!("failed to attach `{name}` of chain entry `{}` on {ifname} {hook:?} (netlink prio {priority} handle {handle})", self.entry)
                })?;
                Attachment::Netlink(NetlinkFilter { ifindex, dir, priority: *priority, handle: *handle })
            }
        };
        self.attachments.push(attachment);
        Ok(id)
    }

    /// Times the kernel ran this entry's program(s) (BPF run statistics,
    /// both hooks added; a program on both hooks counts once per packet).
    pub fn packets(&self) -> anyhow::Result<u64> {
        let mut total = 0u64;
        for name in self.spec.entry_programs() {
            let fd = self.prog_fd(name).ok_or_else(|| anyhow::anyhow!("program `{name}` is not loaded"))?;
            total += prog_info(fd).map_err(anyhow::Error::msg)?.run_cnt;
        }
        Ok(total)
    }

    /// The maps the scenario lists under `dump`, read now.
    pub fn dump_maps(&self) -> anyhow::Result<Vec<MapDump>> {
        use anyhow::Context as _;
        let own_ids: HashMap<u32, String> = self
            .object
            .progs()
            .filter_map(|p| Some((prog_info(p.as_fd()).ok()?.id, p.name().to_string_lossy().into_owned())))
            .collect();
        let mut out = Vec::new();
        for d in &self.spec.dump {
            let facts = self.spec.map(&d.map).with_context(|| format!("no map `{}`", d.map))?;
            let map = map_by_name(&self.object, &d.map).with_context(|| format!("map `{}` is not loaded", d.map))?;
            let mut raw = Vec::new();
            for key in map.keys() {
                let values = if facts.percpu {
                    map.lookup_percpu(&key, MapFlags::ANY)
                } else {
                    map.lookup(&key, MapFlags::ANY).map(|v| v.map(|v| vec![v]))
                };
                // A key deleted while iterating (LRU eviction, the program) is skipped.
                let Some(values) = values.with_context(|| format!("failed to read map `{}`", d.map))? else { continue };
                let array_like = facts.map_type.contains("array");
                if array_like && !facts.prog_array && values.iter().all(|v| v.iter().all(|b| *b == 0)) {
                    continue;
                }
                raw.push(RawElement { key, values });
            }
            // Integer keys in numeric order, others by their bytes.
            raw.sort_by_key(|e| (self.int_key(facts.key_type, &e.key), e.key.clone()));
            let lines = raw.iter().map(|e| self.element_line(facts, d, e, &own_ids)).collect();
            out.push(MapDump { entry: self.entry.clone(), map: d.map.clone(), lines, raw });
        }
        Ok(out)
    }

    fn int_key(&self, ty: u32, key: &[u8]) -> Option<i128> {
        match self.btf.as_ref().map(|b| b.decode(ty, key)) {
            Some(Value::Int(n)) if ty != 0 => Some(n),
            _ => None,
        }
    }

    fn element_line(&self, facts: &libbpf::MapFacts, d: &super::spec::Dump, e: &RawElement, own: &HashMap<u32, String>) -> String {
        let decode = |ty: u32, bytes: &[u8]| match (&self.btf, ty) {
            (Some(btf), ty) if ty != 0 => btf.decode(ty, bytes),
            _ => Value::Hex(bytes.to_vec()),
        };
        let key = decode(facts.key_type, &e.key);
        let value = if facts.prog_array {
            let id = e.values.first().and_then(|v| v.get(..4)).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            Value::Str(own.get(&id).map_or_else(|| format!("program id {id}"), |n| format!("program {n}")))
        } else {
            let mut v = Value::sum(&e.values.iter().map(|b| decode(facts.value_type, b)).collect::<Vec<_>>());
            for field in &d.hide {
                v.hide(field);
            }
            v
        };
        let value_text = match value {
            Value::Str(s) if facts.prog_array => s,
            v => v.text(),
        };
        format!("[{}] = {value_text}", key.text())
    }
}

fn write_constant(obj: *mut libbpf_sys::bpf_object, c: &super::spec::Constant) -> Result<(), String> {
    let section = std::ffi::CString::new(c.section.as_str()).map_err(|e| e.to_string())?;
    // SAFETY: `obj` is a live open object; the initial value buffer is owned
    // by libbpf and `size` bytes long; writes stay within it.
    unsafe {
        let map = libbpf_sys::bpf_object__find_map_by_name(obj, section.as_ptr());
        if map.is_null() {
            return Err(format!("no `{}` map in the object", c.section));
        }
        let mut size: libbpf_sys::size_t = 0;
        let data = libbpf_sys::bpf_map__initial_value(map, &mut size).cast::<u8>();
        let end = c.offset as usize + c.bytes.len();
        if data.is_null() || end > size as usize {
            return Err(format!("`{}` ({} bytes) has no room at offset {}", c.section, size, c.offset));
        }
        std::ptr::copy_nonoverlapping(c.bytes.as_ptr(), data.add(c.offset as usize), c.bytes.len());
    }
    Ok(())
}

fn object_btf(object: &Object) -> Option<Btf> {
    let raw = object.as_libbpf_object().as_ptr();
    // SAFETY: `raw` is a live loaded object; the BTF bytes live as long as it
    // and are copied into the parsed form before this returns.
    unsafe {
        let btf = libbpf_sys::bpf_object__btf(raw);
        if btf.is_null() {
            return None;
        }
        let mut size = 0u32;
        let data = libbpf_sys::btf__raw_data(btf, &mut size);
        if data.is_null() {
            return None;
        }
        Btf::parse(std::slice::from_raw_parts(data.cast::<u8>(), size as usize)).ok()
    }
}

/// `bpf_prog_info` of a loaded program.
pub(crate) fn prog_info(fd: BorrowedFd<'_>) -> Result<libbpf_sys::bpf_prog_info, String> {
    let mut info = libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: `info` is a properly sized, zeroed bpf_prog_info.
    let rc = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
    if rc != 0 {
        return Err(format!("bpf_prog_get_info_by_fd: {}", std::io::Error::last_os_error()));
    }
    Ok(info)
}

/// Turn on the kernel's BPF run statistics while the fd is held (5.8+).
fn enable_stats() -> Result<OwnedFd, String> {
    // SAFETY: plain syscall wrapper.
    let fd = unsafe { libbpf_sys::bpf_enable_stats(libbpf_sys::BPF_STATS_RUN_TIME) };
    if fd < 0 {
        return Err(format!("BPF_ENABLE_STATS failed: {}", std::io::Error::from_raw_os_error(-fd)));
    }
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// BPF_LINK_CREATE for TCX at the order given.
fn tcx_attach(prog: BorrowedFd<'_>, ifindex: u32, hook: Direction, order: &TcxOrder, relative: Option<u32>) -> anyhow::Result<OwnedFd> {
    let attach_type = match hook {
        Direction::Egress => libbpf_sys::BPF_TCX_EGRESS,
        _ => libbpf_sys::BPF_TCX_INGRESS,
    };
    let (flags, relative_id) = match (order, relative) {
        (TcxOrder::Head, _) => (libbpf_sys::BPF_F_BEFORE, 0),
        (TcxOrder::Tail, _) => (libbpf_sys::BPF_F_AFTER, 0),
        (TcxOrder::Before(_), Some(id)) => (libbpf_sys::BPF_F_BEFORE | libbpf_sys::BPF_F_ID, id),
        (TcxOrder::After(_), Some(id)) => (libbpf_sys::BPF_F_AFTER | libbpf_sys::BPF_F_ID, id),
        (o, None) => anyhow::bail!("TCX order {o:?} needs the id of the program it names"),
    };
    let mut opts = libbpf_sys::bpf_link_create_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_link_create_opts>() as libbpf_sys::size_t,
        flags,
        ..Default::default()
    };
    opts.__bindgen_anon_1.tcx = libbpf_sys::bpf_link_create_opts__bindgen_ty_1__bindgen_ty_6 { relative_fd: 0, relative_id, expected_revision: 0 };
    let target = i32::try_from(ifindex)?;
    // SAFETY: valid fds and a properly sized opts struct.
    let fd = unsafe { libbpf_sys::bpf_link_create(prog.as_raw_fd(), target, attach_type, &opts) };
    if fd < 0 {
        anyhow::bail!("BPF_LINK_CREATE (TCX): {}", std::io::Error::from_raw_os_error(-fd));
    }
    // SAFETY: a fresh link fd we own; closing it detaches.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
