//! Verifier budget: how many instructions the kernel's verifier processed for
//! each BPF program tclab loads, on the running kernel.
//!
//! [`budget`] loads every program of the embedded objects as the lab loads
//! them and reads the count two ways:
//!
//! * `verified_insns` from `BPF_OBJ_GET_INFO_BY_FD` (kernel 5.16+), when the
//!   kernel reports it;
//! * otherwise (5.10 … 5.15) the program is loaded a second time with the
//!   same instructions, maps, BTF, func/line info, and `log_level =
//!   BPF_LOG_STATS`, and the count is parsed from the log's
//!   `processed N insns` line. aya discards the log of a successful load, so
//!   this second load is a raw `bpf(BPF_PROG_LOAD)` on the program aya-obj
//!   relocated against the first load's maps. Both readings are the same
//!   kernel counter (`env->insn_processed`); the test `verifier_budget`
//!   checks that they agree where both exist.
//!
//! The figures are not timings: they are the same on every run of a kernel,
//! and `tclab bench` compares them with a reviewed snapshot.

use std::collections::HashSet;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use aya::maps::{Map, MapData};
use aya::programs::{BtfTracePoint, ProgramError, SchedClassifier, SkMsg, SockOps};
use aya::Ebpf;
use aya_obj::btf::BtfKind;
use aya_obj::generated::{bpf_attach_type, bpf_attr, bpf_cmd, bpf_prog_type};
use serde::Serialize;

use crate::loader::{
    self, CilProgram, CtMapKind, Datapath, DatapathConfig, EventTransport, LoadError, objects,
};

/// The kernel's limit on processed instructions per program
/// (`BPF_COMPLEXITY_LIMIT_INSNS`, 5.2+).
pub const INSN_LIMIT: u32 = 1_000_000;
/// tclab's budget: every program under this share of [`INSN_LIMIT`], so a
/// kernel whose verifier explores more states still accepts it.
pub const BUDGET_PERCENT: u32 = 25;
/// `BPF_LOG_STATS` (5.2+): only the summary lines.
const BPF_LOG_STATS: u32 = 4;
/// Room for the statistics lines (a few hundred bytes in practice).
const LOG_SIZE: usize = 64 * 1024;

/// Where a count came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// `bpf_prog_info.verified_insns` (5.16+).
    VerifiedInsns,
    /// `processed N insns` in a `BPF_LOG_STATS` verifier log.
    StatsLog,
}

/// How to read the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Method {
    /// `verified_insns` when the kernel reports it, else the statistics log.
    #[default]
    Auto,
    /// Always the statistics log (to compare the two on 5.16+).
    StatsLog,
}

/// How a program is loaded (its type, attach type and BTF target).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Classifier,
    SkMsg,
    SockOps,
    /// `tp_btf/<tracepoint>`
    TpBtf(&'static str),
}

impl Kind {
    fn prog_type(self) -> bpf_prog_type {
        match self {
            Kind::Classifier => bpf_prog_type::BPF_PROG_TYPE_SCHED_CLS,
            Kind::SkMsg => bpf_prog_type::BPF_PROG_TYPE_SK_MSG,
            Kind::SockOps => bpf_prog_type::BPF_PROG_TYPE_SOCK_OPS,
            Kind::TpBtf(_) => bpf_prog_type::BPF_PROG_TYPE_TRACING,
        }
    }

    /// As aya's `load` for the type passes it.
    fn expected_attach_type(self) -> Option<bpf_attach_type> {
        match self {
            Kind::Classifier => None,
            Kind::SkMsg => Some(bpf_attach_type::BPF_SK_MSG_VERDICT),
            Kind::SockOps => Some(bpf_attach_type::BPF_CGROUP_SOCK_OPS),
            Kind::TpBtf(_) => Some(bpf_attach_type::BPF_TRACE_RAW_TP),
        }
    }
}

/// The programs of `propagation.o` (context propagation, issue #6): socket
/// programs, the read tracepoint, and its classifiers. The tracepoint is
/// optional as in the agent (correlation is off without it).
const PROPAGATION: [(&str, Kind, bool); 5] = [
    ("tclab_prop_msg", Kind::SkMsg, false),
    ("tclab_prop_sockops", Kind::SockOps, false),
    ("tclab_prop_read", Kind::TpBtf("tcp_rcv_space_adjust"), true),
    (crate::propagation::PROG_INGRESS, Kind::Classifier, false),
    (crate::propagation::PROG_EGRESS, Kind::Classifier, false),
];

/// One program's count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProgramBudget {
    /// Embedded object (`datapath_lru.o`, …).
    pub object: &'static str,
    /// Program name.
    pub program: &'static str,
    /// Instructions the verifier processed.
    pub insns: u32,
    pub source: Source,
}

impl ProgramBudget {
    /// Share of [`INSN_LIMIT`], in percent.
    pub fn percent_of_limit(&self) -> f64 {
        f64::from(self.insns) * 100.0 / f64::from(INSN_LIMIT)
    }

    /// Under [`BUDGET_PERCENT`] of the limit?
    pub fn within_budget(&self) -> bool {
        u64::from(self.insns) * 100 < u64::from(INSN_LIMIT) * u64::from(BUDGET_PERCENT)
    }
}

/// Why a count could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum VerifierError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("failed to load BPF object {object}: {source}")]
    Object {
        object: &'static str,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("program {program} of {object}: {source}")]
    Program {
        object: &'static str,
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("program {program} of {object}: not found or not a TC classifier")]
    Missing { object: &'static str, program: &'static str },
    #[error("program {program} of {object}: failed to prepare the statistics load: {reason}")]
    Relocate { object: &'static str, program: &'static str, reason: String },
    #[error("program {program} of {object}: {op} failed: {source}")]
    Syscall {
        object: &'static str,
        program: &'static str,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("program {program} of {object}: no `processed N insns` line in the verifier log:\n{log}")]
    NoCount { object: &'static str, program: &'static str, log: String },
}

/// Every program of every embedded object the lab loads, counted on the
/// running kernel with [`Method::Auto`]. Needs CAP_BPF (root).
///
/// This is the function to call inside a kernel-matrix guest: it needs only
/// the embedded objects, bpf(2) and, for CO-RE, `/sys/kernel/btf/vmlinux`.
///
/// # Errors
/// [`VerifierError`] naming the object and program.
pub fn budget() -> Result<Vec<ProgramBudget>, VerifierError> {
    budget_with(Method::Auto)
}

/// [`budget`] with a chosen method.
///
/// # Errors
/// As [`budget`].
pub fn budget_with(method: Method) -> Result<Vec<ProgramBudget>, VerifierError> {
    let mut out = Vec::new();
    for (ct_map, events) in [
        (CtMapKind::Lru, EventTransport::RingBuf),
        (CtMapKind::Hash, EventTransport::RingBuf),
        (CtMapKind::Lru, EventTransport::PerfBuf),
    ] {
        // The loader picks the object and the CT clock for this kernel, as the agent does.
        let cfg = DatapathConfig { ct_map, events, ct_max_entries: 1024, ..DatapathConfig::default() };
        let dp = Datapath::load(&cfg)?;
        let (object, bytes) = object_bytes(dp.object_name());
        for program in loader::DATAPATH_PROGRAMS {
            out.push(count(dp.ebpf(), object, bytes, program, Kind::Classifier, method)?);
        }
    }
    let testprogs = load_testprogs()?;
    for program in [loader::PROG_TEST_VERDICT, loader::PROG_EMPTY] {
        out.push(count(&testprogs, "testprogs.o", objects::TESTPROGS, program, Kind::Classifier, method)?);
    }
    let cil = load_ciliumlike()?;
    for program in CilProgram::ALL.map(CilProgram::name) {
        out.push(count(&cil, "ciliumlike.o", objects::CILIUMLIKE, program, Kind::Classifier, method)?);
    }
    let (prop, loaded) = load_propagation()?;
    for (program, kind, _) in PROPAGATION {
        if loaded.contains(&program) {
            out.push(count(&prop, "propagation.o", crate::propagation::OBJECT, program, kind, method)?);
        }
    }
    Ok(out)
}

/// The snapshot text of a set of counts: one `object program insns` line each.
pub fn snapshot_text(budgets: &[ProgramBudget]) -> String {
    let mut out = String::new();
    for b in budgets {
        out.push_str(&format!("{} {} {}\n", b.object, b.program, b.insns));
    }
    out
}

/// The count in a verifier log: the last `processed N insns` line.
pub fn parse_processed_insns(log: &str) -> Option<u32> {
    log.lines().rev().find_map(|line| {
        let rest = line.trim_start().strip_prefix("processed ")?;
        let (n, tail) = rest.split_once(' ')?;
        tail.starts_with("insns").then(|| n.parse().ok()).flatten()
    })
}

fn object_bytes(name: &'static str) -> (&'static str, &'static [u8]) {
    match name {
        "datapath_hash.o" => ("datapath_hash.o", objects::DATAPATH_HASH),
        "datapath_perf.o" => ("datapath_perf.o", objects::DATAPATH_PERF),
        _ => ("datapath_lru.o", objects::DATAPATH_LRU),
    }
}

fn load_classifiers(ebpf: &mut Ebpf, object: &'static str, programs: &[&'static str]) -> Result<(), VerifierError> {
    for &program in programs {
        load_one(ebpf, object, program, Kind::Classifier)?;
    }
    Ok(())
}

/// Load one program of a parsed object as its kind (not attached).
fn load_one(ebpf: &mut Ebpf, object: &'static str, program: &'static str, kind: Kind) -> Result<(), VerifierError> {
    let missing = VerifierError::Missing { object, program };
    let failed = |source| VerifierError::Program { object, program, source };
    let prog = ebpf.program_mut(program).ok_or(missing)?;
    let missing = || VerifierError::Missing { object, program };
    match kind {
        Kind::Classifier => <&mut SchedClassifier>::try_from(prog).map_err(|_| missing())?.load().map_err(failed),
        Kind::SkMsg => <&mut SkMsg>::try_from(prog).map_err(|_| missing())?.load().map_err(failed),
        Kind::SockOps => <&mut SockOps>::try_from(prog).map_err(|_| missing())?.load().map_err(failed),
        Kind::TpBtf(tracepoint) => {
            let btf = crate::kernel_btf::get().ok_or_else(|| VerifierError::Relocate {
                object,
                program,
                reason: "kernel BTF: /sys/kernel/btf/vmlinux is missing or does not parse".into(),
            })?;
            <&mut BtfTracePoint>::try_from(prog).map_err(|_| missing())?.load(tracepoint, &btf).map_err(failed)
        }
    }
}

/// `propagation.o` in its fullest mode (every carrier and correlation), as
/// the agent loads it; returns the programs that loaded (an optional one
/// the kernel refuses is left out, as the agent leaves correlation off).
fn load_propagation() -> Result<(Ebpf, Vec<&'static str>), VerifierError> {
    const OBJECT: &str = "propagation.o";
    let bits = crate::propagation::Mode::All.bits();
    let btf = crate::kernel_btf::get();
    let mut ebpf = crate::kernel_btf::loader(btf.as_deref())
        .override_global("tclab_prop_mode", &bits, true)
        .override_global("tclab_prop_new_flags", &1u32, true)
        .load(crate::propagation::OBJECT)
        .map_err(|source| VerifierError::Object { object: OBJECT, source: Box::new(source) })?;
    let mut loaded = Vec::new();
    for (program, kind, optional) in PROPAGATION {
        match load_one(&mut ebpf, OBJECT, program, kind) {
            Ok(()) => loaded.push(program),
            Err(e) if optional => tracing::warn!("verifier budget: {e} (optional, left out)"),
            Err(e) => return Err(e),
        }
    }
    Ok((ebpf, loaded))
}

/// `testprogs.o` with `tclab_verdict` returning TC_ACT_UNSPEC, as the lab's chains use it.
fn load_testprogs() -> Result<Ebpf, VerifierError> {
    const OBJECT: &str = "testprogs.o";
    let btf = crate::kernel_btf::get();
    let mut ebpf = crate::kernel_btf::loader(btf.as_deref())
        .override_global(loader::GLOBAL_TEST_VERDICT, &loader::TC_ACT_UNSPEC, true)
        .load(objects::TESTPROGS)
        .map_err(|source| VerifierError::Object { object: OBJECT, source: Box::new(source) })?;
    load_classifiers(&mut ebpf, OBJECT, &[loader::PROG_TEST_VERDICT, loader::PROG_EMPTY])?;
    Ok(ebpf)
}

/// `ciliumlike.o` set to DNAT, its largest path (the action is a load-time
/// constant, so the verifier prunes the others).
fn load_ciliumlike() -> Result<Ebpf, VerifierError> {
    const OBJECT: &str = "ciliumlike.o";
    let (svc, svc_port) = (u32::from_ne_bytes([10, 96, 0, 10]), 80u16.to_be());
    let (backend, backend_port) = (u32::from_ne_bytes([10, 0, 1, 2]), 8080u16.to_be());
    let btf = crate::kernel_btf::get();
    let mut ebpf = crate::kernel_btf::loader(btf.as_deref())
        .override_global(loader::GLOBAL_CIL_ACTION, &4u32, true)
        .override_global(loader::GLOBAL_CIL_IFINDEX, &0u32, true)
        .override_global(loader::GLOBAL_CIL_NAT_VERDICT, &loader::TC_ACT_UNSPEC, true)
        .override_global(loader::GLOBAL_CIL_SVC_ADDR, &svc, true)
        .override_global(loader::GLOBAL_CIL_SVC_PORT, &svc_port, true)
        .override_global(loader::GLOBAL_CIL_BACKEND_ADDR, &backend, true)
        .override_global(loader::GLOBAL_CIL_BACKEND_PORT, &backend_port, true)
        .load(objects::CILIUMLIKE)
        .map_err(|source| VerifierError::Object { object: OBJECT, source: Box::new(source) })?;
    load_classifiers(&mut ebpf, OBJECT, &CilProgram::ALL.map(CilProgram::name))?;
    Ok(ebpf)
}

fn count(
    ebpf: &Ebpf,
    object: &'static str,
    bytes: &[u8],
    program: &'static str,
    kind: Kind,
    method: Method,
) -> Result<ProgramBudget, VerifierError> {
    if method == Method::Auto {
        let prog = ebpf.program(program).ok_or(VerifierError::Missing { object, program })?;
        let info = prog.info().map_err(|source| VerifierError::Program { object, program, source })?;
        if let Some(insns) = info.verified_instruction_count() {
            return Ok(ProgramBudget { object, program, insns, source: Source::VerifiedInsns });
        }
    }
    let log = stats_log(ebpf, object, bytes, program, kind)?;
    let insns = parse_processed_insns(&log).ok_or_else(|| VerifierError::NoCount { object, program, log: log.clone() })?;
    Ok(ProgramBudget { object, program, insns, source: Source::StatsLog })
}

/// The MapData behind an aya map, whatever its type.
fn map_data(map: &Map) -> &MapData {
    macro_rules! data {
        ($($v:ident),* $(,)?) => {
            match map { $(Map::$v(d) => d,)* }
        };
    }
    data!(
        Array, ArrayOfMaps, BloomFilter, CgroupArray, CgroupStorage, CgrpStorage, CpuMap, DevMap, DevMapHash,
        HashMap, HashOfMaps, InodeStorage, LpmTrie, LruHashMap, PerCpuArray, PerCpuCgroupStorage, PerCpuHashMap,
        PerCpuLruHashMap, PerfEventArray, ProgramArray, Queue, ReusePortSockArray, RingBuf, SockHash, SockMap,
        SkStorage, Stack, StackTraceMap, Unsupported, XskMap,
    )
}

/// Load `program` again, relocated against the maps of the already loaded
/// `ebpf` (same values, same frozen read-only data), with BPF_LOG_STATS, and
/// return the verifier's log. The second program is closed at once.
fn stats_log(ebpf: &Ebpf, object: &'static str, bytes: &[u8], program: &'static str, kind: Kind) -> Result<String, VerifierError> {
    let relocate = |reason: String| VerifierError::Relocate { object, program, reason };
    let mut obj = aya_obj::Object::parse(bytes).map_err(|e| relocate(format!("parse: {e}")))?;
    let features = aya::features();
    // Program BTF (func/line info), sanitized for this kernel as aya does.
    let btf_fd = match features.btf() {
        Some(btf_features) => match obj.fixup_and_sanitize_btf(btf_features).map_err(|e| relocate(format!("BTF: {e}")))? {
            Some(btf) => Some(btf_load(&btf.to_bytes()).map_err(|source| VerifierError::Syscall {
                object,
                program,
                op: "BPF_BTF_LOAD",
                source,
            })?),
            None => None,
        },
        None => None,
    };
    if let Some(kernel_btf) = crate::kernel_btf::get() {
        obj.relocate_btf(&kernel_btf).map_err(|e| relocate(format!("CO-RE: {e}")))?;
    }
    let mut fds: Vec<(String, RawFd)> = Vec::new();
    for name in obj.maps.keys() {
        let map = ebpf.map(name).ok_or_else(|| relocate(format!("map {name} is not in the loaded object")))?;
        fds.push((name.clone(), map_data(map).fd().as_fd().as_raw_fd()));
    }
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
    let maps: Vec<(&str, RawFd, &aya_obj::Map)> =
        fds.iter().filter_map(|(n, fd)| obj.maps.get(n).map(|m| (n.as_str(), *fd, m))).collect();
    // relocate_maps needs `&mut obj` while `maps` borrows it: relocate a clone.
    let maps: Vec<(String, RawFd, aya_obj::Map)> = maps.into_iter().map(|(n, fd, m)| (n.to_owned(), fd, m.clone())).collect();
    obj.relocate_maps(maps.iter().map(|(n, fd, m)| (n.as_str(), *fd, m)), &text_sections)
        .map_err(|e| relocate(format!("maps: {e}")))?;
    obj.relocate_calls(&text_sections).map_err(|e| relocate(format!("calls: {e}")))?;
    obj.sanitize_functions(features);
    let prog = obj.programs.get(program).ok_or(VerifierError::Missing { object, program })?;
    let function = obj.functions.get(&prog.function_key()).ok_or(VerifierError::Missing { object, program })?;
    let name = features.bpf_name().then(|| CString::new(program)).transpose().map_err(|e| relocate(e.to_string()))?;
    let attach_btf_id = match kind {
        Kind::TpBtf(tracepoint) => Some(
            crate::kernel_btf::get()
                .ok_or_else(|| relocate(format!("BTF id of {tracepoint}: the kernel has no BTF")))?
                .id_by_type_name_kind(&format!("btf_trace_{tracepoint}"), BtfKind::Typedef)
                .map_err(|e| relocate(format!("BTF id of {tracepoint}: {e}")))?,
        ),
        _ => None,
    };
    let mut log = vec![0u8; LOG_SIZE];
    let loaded = prog_load(&ProgLoad {
        kind,
        attach_btf_id,
        name: name.as_ref(),
        insns: &function.instructions,
        license: &prog.license,
        btf_fd: btf_fd.as_ref(),
        func_info: (function.func_info_rec_size, function.func_info.func_info_bytes(), function.func_info.len()),
        line_info: (function.line_info_rec_size, function.line_info.line_info_bytes(), function.line_info.len()),
        log: &mut log,
    });
    let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..end]).into_owned();
    match loaded {
        Ok(_fd) => Ok(text),
        Err(source) => Err(VerifierError::Syscall {
            object,
            program,
            op: "BPF_PROG_LOAD with BPF_LOG_STATS",
            source: io::Error::new(source.kind(), format!("{source}; verifier log:\n{text}")),
        }),
    }
}

struct ProgLoad<'a> {
    kind: Kind,
    attach_btf_id: Option<u32>,
    name: Option<&'a CString>,
    insns: &'a [aya_obj::generated::bpf_insn],
    license: &'a CString,
    btf_fd: Option<&'a OwnedFd>,
    /// (record size, bytes, count)
    func_info: (usize, Vec<u8>, usize),
    line_info: (usize, Vec<u8>, usize),
    log: &'a mut [u8],
}

fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a fully initialised bpf_attr whose pointers refer to
    // buffers the caller keeps alive for the call; both commands used here
    // return a new file descriptor on success.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd as libc::c_long, attr as *mut bpf_attr, size_of::<bpf_attr>()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(ret).map_err(|_| io::Error::other(format!("bpf returned {ret}")))?;
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn btf_load(raw: &[u8]) -> io::Result<OwnedFd> {
    // SAFETY: bpf_attr is plain data; all-zero is its documented initial state.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the BPF_BTF_LOAD member of the union.
    let u = unsafe { &mut attr.__bindgen_anon_7 };
    u.btf = raw.as_ptr() as u64;
    u.btf_size = u32::try_from(raw.len()).map_err(|_| io::Error::other("BTF larger than 4 GiB"))?;
    sys_bpf(bpf_cmd::BPF_BTF_LOAD, &mut attr)
}

fn prog_load(p: &ProgLoad<'_>) -> io::Result<OwnedFd> {
    // SAFETY: as in btf_load.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the BPF_PROG_LOAD member of the union.
    let u = unsafe { &mut attr.__bindgen_anon_3 };
    if let Some(name) = p.name {
        for (dst, src) in u.prog_name.iter_mut().zip(name.as_bytes().iter().take(15)) {
            *dst = *src as libc::c_char;
        }
    }
    u.prog_type = p.kind.prog_type() as u32;
    if let Some(t) = p.kind.expected_attach_type() {
        u.expected_attach_type = t as u32;
    }
    if let Some(id) = p.attach_btf_id {
        u.attach_btf_id = id;
    }
    u.insns = p.insns.as_ptr() as u64;
    u.insn_cnt = u32::try_from(p.insns.len()).map_err(|_| io::Error::other("too many instructions"))?;
    u.license = p.license.as_ptr() as u64;
    u.kern_version = aya::util::KernelVersion::current().map_or(0, |v| v.code());
    if let Some(btf) = p.btf_fd {
        u.prog_btf_fd = btf.as_raw_fd() as u32;
        let (rec, bytes, n) = &p.func_info;
        if *rec > 0 {
            u.func_info = bytes.as_ptr() as u64;
            u.func_info_cnt = *n as u32;
            u.func_info_rec_size = *rec as u32;
        }
        let (rec, bytes, n) = &p.line_info;
        if *rec > 0 {
            u.line_info = bytes.as_ptr() as u64;
            u.line_info_cnt = *n as u32;
            u.line_info_rec_size = *rec as u32;
        }
    }
    u.log_level = BPF_LOG_STATS;
    u.log_buf = p.log.as_ptr() as u64;
    u.log_size = p.log.len() as u32;
    sys_bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_statistics_line_of_old_and_new_kernels() {
        // 5.10
        let old = "processed 70117 insns (limit 1000000) max_states_per_insn 12 total_states 3127 peak_states 1412 mark_read 301\n";
        assert_eq!(parse_processed_insns(old), Some(70117));
        // 6.x adds the verification time line first
        let new = "verification time 41233 usec\nstack depth 256+0\nprocessed 448 insns (limit 1000000) max_states_per_insn 0 total_states 30 peak_states 30 mark_read 8\n";
        assert_eq!(parse_processed_insns(new), Some(448));
        assert_eq!(parse_processed_insns("processed 12 bytes\n"), None);
        assert_eq!(parse_processed_insns(""), None);
    }

    #[test]
    fn budget_is_a_quarter_of_the_limit() {
        let at = |insns| ProgramBudget { object: "o", program: "p", insns, source: Source::StatsLog };
        assert!(at(249_999).within_budget());
        assert!(!at(250_000).within_budget());
        assert!((at(70_000).percent_of_limit() - 7.0).abs() < 1e-9);
        assert_eq!(snapshot_text(&[at(5)]), "o p 5\n");
    }
}
