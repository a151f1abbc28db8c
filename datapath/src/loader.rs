//! The embedded BPF objects and loading them into the kernel.
//!
//! [`Datapath`] is the agent's pair of classifiers (`tclab_ingress`,
//! `tclab_egress`, which tail-call `tclab_http` for TCP payload) with their
//! CT, counter and event maps. [`TestProgram`] and
//! [`EmptyClassifier`] are the lab's built-in chain programs. Loading puts the
//! programs into the kernel (the verifier runs); attaching is `attach.rs`.

use std::time::Duration;

use aya::maps::{HashMap, MapError, PerCpuArray, ProgramArray};
use aya::programs::{ProgramError, SchedClassifier};
use aya::Ebpf;

use crate::types::{COUNTER_MAX, Counter, Counters, CtEntry, CtTuple};

/// The objects built from `ebpf/` (see `ebpf/objects.rs`), embedded aligned.
pub mod objects {
    /// Datapath with an LRU CT map and a ring buffer.
    pub static DATAPATH_LRU: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/datapath_lru.o"));
    /// Datapath with a plain hash CT map (inserts fail when it is full).
    pub static DATAPATH_HASH: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/datapath_hash.o"));
    /// Datapath with an LRU CT map and a perf event array (pre-5.8 kernels).
    pub static DATAPATH_PERF: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/datapath_perf.o"));
    /// The lab's chain programs: `tclab_verdict`, `tclab_empty`.
    pub static TESTPROGS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/testprogs.o"));
    /// Cilium-like chain programs (`cil_from_netdev`, …, `acme_tc_filter`).
    pub static CILIUMLIKE: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ciliumlike.o"));
}

/// Ingress classifier name (also its name in the kernel).
pub const PROG_INGRESS: &str = "tclab_ingress";
/// Egress classifier name.
pub const PROG_EGRESS: &str = "tclab_egress";
/// The HTTP part of both classifiers, reached by tail call (never attached).
pub const PROG_HTTP: &str = "tclab_http";
/// Program array whose slot 0 holds [`PROG_HTTP`].
pub const MAP_HTTP_PROG: &str = "tclab_http_prog";
/// Every program [`Datapath::load`] loads.
pub const DATAPATH_PROGRAMS: [&str; 3] = [PROG_INGRESS, PROG_EGRESS, PROG_HTTP];
/// CT map (`struct ct_tuple` → `struct ct_entry`).
pub const MAP_CT: &str = "tclab_ct";
/// Events: ring buffer, or perf event array with [`EventTransport::PerfBuf`].
pub const MAP_EVENTS: &str = "tclab_events";
/// Per-CPU counters indexed by [`Counter`].
pub const MAP_COUNTERS: &str = "tclab_counters";
/// Per-CPU scratch space of the classifiers (not for user space).
pub const MAP_SCRATCH: &str = "tclab_scratch";
/// Load-time constants: CT lifetimes in nanoseconds.
pub const GLOBAL_LIFETIME_SYN: &str = "tclab_ct_lifetime_syn_ns";
pub const GLOBAL_LIFETIME_TCP: &str = "tclab_ct_lifetime_tcp_ns";
pub const GLOBAL_LIFETIME_CLOSE: &str = "tclab_ct_lifetime_close_ns";
pub const GLOBAL_LIFETIME_NON_TCP: &str = "tclab_ct_lifetime_non_tcp_ns";
/// Load-time constant: 1 = CT timestamps from `bpf_ktime_get_coarse_ns`.
pub const GLOBAL_CT_COARSE_CLOCK: &str = "tclab_ct_coarse_clock";
/// Load-time constant: unread bytes in the ring that force a wake-up
/// (0: the kernel's default, a wake-up whenever the reader is caught up).
pub const GLOBAL_EVENTS_WAKEUP_BYTES: &str = "tclab_events_wakeup_bytes";
/// Test program returning the verdict set at load.
pub const PROG_TEST_VERDICT: &str = "tclab_verdict";
/// Test program returning TC_ACT_UNSPEC and nothing else.
pub const PROG_EMPTY: &str = "tclab_empty";
/// Per-CPU array of `tclab_verdict`: slot 0 packets, slot 1 bytes.
pub const MAP_TEST_STATS: &str = "tclab_test_stats";
/// Load-time constant of `tclab_verdict`.
pub const GLOBAL_TEST_VERDICT: &str = "tclab_test_verdict";

/// Cilium's default CT table size (`bpf-ct-global-tcp-max`).
pub const DEFAULT_CT_MAX_ENTRIES: u32 = 524_288;
/// Default ring buffer size. 256 KiB (~500 HTTP events, 7 ms of a 200k
/// packets/s replay) lost a third of the events whenever the reader was not
/// scheduled for a few milliseconds. 4 MiB lost none at 200k packets/s on a
/// quiet machine but 14% with the machine loaded (the reader starved for
/// more than its ~140 ms); 8 MiB doubles that margin. The reader maps the
/// ring, so it shows in the agent's RSS: 17 MiB under load with 4 MiB,
/// 25 MiB with 8 MiB (BENCHMARKS.md §4-5; `--ring-size` to trade).
pub const DEFAULT_EVENTS_RING_BYTES: u32 = 8 << 20;

/// `TC_ACT_UNSPEC`: continue with the next program (TCX_NEXT).
pub const TC_ACT_UNSPEC: i32 = -1;
/// `TC_ACT_OK`: accept, end the chain.
pub const TC_ACT_OK: i32 = 0;
/// `TC_ACT_SHOT`: drop.
pub const TC_ACT_SHOT: i32 = 2;

/// Which hook a classifier is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    Ingress,
    Egress,
}

impl Hook {
    pub fn program_name(self) -> &'static str {
        match self {
            Hook::Ingress => PROG_INGRESS,
            Hook::Egress => PROG_EGRESS,
        }
    }
}

/// CT map type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CtMapKind {
    /// LRU hash: the oldest entries are evicted when full (Cilium's default).
    #[default]
    Lru,
    /// Plain hash: inserts fail when full ("CT: Map insertion failed").
    Hash,
}

/// CT lifetimes; the default is Cilium's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtLifetimes {
    /// TCP entry that has seen only SYNs (`CT_SYN_TIMEOUT`).
    pub syn: Duration,
    /// Established TCP (`CT_CONNECTION_LIFETIME_TCP`).
    pub tcp: Duration,
    /// TCP with both sides closing (`CT_CLOSE_TIMEOUT`).
    pub close: Duration,
    /// UDP, ICMP (`CT_CONNECTION_LIFETIME_NONTCP`).
    pub non_tcp: Duration,
}

impl Default for CtLifetimes {
    fn default() -> Self {
        CtLifetimes {
            syn: Duration::from_secs(60),
            tcp: Duration::from_secs(21_600),
            close: Duration::from_secs(10),
            non_tcp: Duration::from_secs(60),
        }
    }
}

/// How events reach user space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EventTransport {
    /// BPF_MAP_TYPE_RINGBUF (5.8+).
    #[default]
    RingBuf,
    /// Per-CPU BPF_MAP_TYPE_PERF_EVENT_ARRAY, for kernels without ring buffers.
    PerfBuf,
}

/// Everything [`Datapath::load`] needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatapathConfig {
    pub ct_max_entries: u32,
    pub ct_map: CtMapKind,
    pub lifetimes: CtLifetimes,
    pub events: EventTransport,
    /// Ring buffer size in bytes: a power of two, at least one page
    /// (ignored by the perf-buffer transport).
    pub events_ring_bytes: u32,
}

impl Default for DatapathConfig {
    fn default() -> Self {
        DatapathConfig {
            ct_max_entries: DEFAULT_CT_MAX_ENTRIES,
            ct_map: CtMapKind::default(),
            lifetimes: CtLifetimes::default(),
            events: EventTransport::default(),
            events_ring_bytes: DEFAULT_EVENTS_RING_BYTES,
        }
    }
}

/// Errors of loading an object or one of its programs.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("invalid datapath configuration: {0}")]
    Config(String),
    #[error("failed to load BPF object {object}: {source}")]
    Object {
        object: &'static str,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("program {program} not found in BPF object {object}")]
    MissingProgram { object: &'static str, program: &'static str },
    #[error("program {program} of {object} is not a TC classifier: {source}")]
    NotClassifier {
        object: &'static str,
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("map {map} not found in BPF object {object}")]
    MissingMap { object: &'static str, map: &'static str },
    #[error("map {map} of {object}: {source}")]
    Map {
        object: &'static str,
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("failed to load program {program} of {object} into the kernel: {source}")]
    Program {
        object: &'static str,
        program: &'static str,
        #[source]
        source: ProgramError,
    },
}

/// Load the classifier `program` of an already parsed object.
fn load_classifier(ebpf: &mut Ebpf, object: &'static str, program: &'static str) -> Result<(), LoadError> {
    let prog = ebpf.program_mut(program).ok_or(LoadError::MissingProgram { object, program })?;
    let prog: &mut SchedClassifier =
        prog.try_into().map_err(|source| LoadError::NotClassifier { object, program, source })?;
    prog.load().map_err(|source| LoadError::Program { object, program, source })
}

/// Put the loaded [`PROG_HTTP`] in slot 0 of [`MAP_HTTP_PROG`], where both
/// classifiers tail-call it: before anything is attached, so no packet is
/// seen without its HTTP part.
fn link_http_program(ebpf: &mut Ebpf, object: &'static str) -> Result<(), LoadError> {
    let fd = classifier(ebpf, PROG_HTTP)
        .fd()
        .and_then(|fd| fd.try_clone().map_err(ProgramError::from))
        .map_err(|source| LoadError::Program { object, program: PROG_HTTP, source })?;
    let map = ebpf
        .map_mut(MAP_HTTP_PROG)
        .ok_or(LoadError::MissingMap { object, map: MAP_HTTP_PROG })?;
    let mut slots = ProgramArray::try_from(map).map_err(|source| LoadError::Map { object, map: MAP_HTTP_PROG, source })?;
    slots.set(0, &fd, 0).map_err(|source| LoadError::Map { object, map: MAP_HTTP_PROG, source })
}

fn classifier_mut<'a>(ebpf: &'a mut Ebpf, program: &'static str) -> &'a mut SchedClassifier {
    let prog = ebpf.program_mut(program).unwrap_or_else(|| panic!("program {program} disappeared after load"));
    prog.try_into().unwrap_or_else(|_| panic!("program {program} was loaded as a classifier"))
}

fn classifier<'a>(ebpf: &'a Ebpf, program: &'static str) -> &'a SchedClassifier {
    let prog = ebpf.program(program).unwrap_or_else(|| panic!("program {program} disappeared after load"));
    prog.try_into().unwrap_or_else(|_| panic!("program {program} was loaded as a classifier"))
}

/// Whether the kernel has `bpf_ktime_get_coarse_ns` (5.11+). The CT clock
/// uses it when it can: on some machines `bpf_ktime_get_ns` is a third of
/// the per-packet cost. Unknown versions get the precise clock (always there).
fn kernel_has_coarse_clock() -> bool {
    aya::util::KernelVersion::current().is_ok_and(|v| v >= aya::util::KernelVersion::new(5, 11, 0))
}

/// Unread bytes that force a wake-up: 1/16 of the ring, so the reader is
/// woken well before it overflows, and not at all under light load (the
/// reader's poll slices, [`crate::events::EventReader::poll`], collect those
/// records within milliseconds).
pub fn events_wakeup_bytes(ring_bytes: u32) -> u32 {
    ring_bytes / 16
}

fn page_size() -> u32 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u32::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Sum a per-CPU u64 array slot.
fn percpu_sum(ebpf: &Ebpf, map: &'static str, idx: u32) -> Result<u64, MapError> {
    let map = ebpf.map(map).ok_or_else(|| MapError::InvalidName { name: map.to_string() })?;
    let array = PerCpuArray::<_, u64>::try_from(map)?;
    Ok(array.get(&idx, 0)?.iter().fold(0u64, |a, v| a.wrapping_add(*v)))
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`, hence of
/// [`CtEntry::created_ns`] and [`CtEntry::expires_ns`].
pub fn monotonic_now_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available on Linux");
    u64::try_from(ts.tv_sec()).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec()).unwrap_or(0)
}

/// The agent's classifiers and maps, loaded into the kernel (not attached).
pub struct Datapath {
    ebpf: Ebpf,
    object: &'static str,
    ct_max_entries: u32,
}

impl Datapath {
    /// Load the object the configuration selects and both classifiers.
    ///
    /// # Errors
    /// [`LoadError::Config`] for a zero CT size or a CT map kind / transport
    /// combination that has no object; otherwise the verifier's or loader's
    /// error with the object and program named.
    pub fn load(cfg: &DatapathConfig) -> Result<Datapath, LoadError> {
        if cfg.ct_max_entries == 0 {
            return Err(LoadError::Config("ct_max_entries must be at least 1".into()));
        }
        let page = page_size();
        if !cfg.events_ring_bytes.is_power_of_two() || cfg.events_ring_bytes < page {
            return Err(LoadError::Config(format!(
                "events_ring_bytes must be a power of two of at least the page size ({page}), not {}",
                cfg.events_ring_bytes
            )));
        }
        let (object, bytes) = match (cfg.ct_map, cfg.events) {
            (CtMapKind::Lru, EventTransport::RingBuf) => ("datapath_lru.o", objects::DATAPATH_LRU),
            (CtMapKind::Hash, EventTransport::RingBuf) => ("datapath_hash.o", objects::DATAPATH_HASH),
            (CtMapKind::Lru, EventTransport::PerfBuf) => ("datapath_perf.o", objects::DATAPATH_PERF),
            (CtMapKind::Hash, EventTransport::PerfBuf) => {
                return Err(LoadError::Config(
                    "a hash CT map with perf-buffer events is not built; use the LRU map or the ring buffer".into(),
                ));
            }
        };
        let lt = &cfg.lifetimes;
        let (syn, tcp, close, non_tcp) = (nanos(lt.syn), nanos(lt.tcp), nanos(lt.close), nanos(lt.non_tcp));
        let coarse = u8::from(kernel_has_coarse_clock());
        let wakeup = events_wakeup_bytes(cfg.events_ring_bytes);
        let btf = crate::kernel_btf::get();
        let mut loader = crate::kernel_btf::loader(btf.as_deref());
        if cfg.events == EventTransport::RingBuf {
            loader.map_max_entries(MAP_EVENTS, cfg.events_ring_bytes);
        }
        let mut ebpf = loader
            .map_max_entries(MAP_CT, cfg.ct_max_entries)
            .override_global(GLOBAL_LIFETIME_SYN, &syn, true)
            .override_global(GLOBAL_LIFETIME_TCP, &tcp, true)
            .override_global(GLOBAL_LIFETIME_CLOSE, &close, true)
            .override_global(GLOBAL_LIFETIME_NON_TCP, &non_tcp, true)
            .override_global(GLOBAL_CT_COARSE_CLOCK, &coarse, true)
            .override_global(GLOBAL_EVENTS_WAKEUP_BYTES, &wakeup, true)
            .load(bytes)
            .map_err(|source| LoadError::Object { object, source: Box::new(source) })?;
        for program in DATAPATH_PROGRAMS {
            load_classifier(&mut ebpf, object, program)?;
        }
        link_http_program(&mut ebpf, object)?;
        tracing::debug!(object, ct_max_entries = cfg.ct_max_entries, "datapath loaded");
        Ok(Datapath { ebpf, object, ct_max_entries: cfg.ct_max_entries })
    }

    /// File name of the embedded object in use (`datapath_lru.o`, …).
    pub fn object_name(&self) -> &'static str {
        self.object
    }

    pub fn program_mut(&mut self, hook: Hook) -> &mut SchedClassifier {
        classifier_mut(&mut self.ebpf, hook.program_name())
    }

    pub fn program(&self, hook: Hook) -> &SchedClassifier {
        classifier(&self.ebpf, hook.program_name())
    }

    /// The loaded object, for map access by other modules (events).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// Instructions the verifier processed for a program (kernel 5.16+
    /// reports it; `None` before).
    pub fn verified_insns(&self, hook: Hook) -> Result<Option<u32>, ProgramError> {
        Ok(self.program(hook).info()?.verified_instruction_count())
    }

    fn ct_map(&self) -> Result<HashMap<&aya::maps::MapData, CtTuple, CtEntry>, MapError> {
        let map = self.ebpf.map(MAP_CT).ok_or_else(|| MapError::InvalidName { name: MAP_CT.to_string() })?;
        HashMap::try_from(map)
    }

    /// Every CT entry (a snapshot; entries may change while it is taken).
    pub fn ct_entries(&self) -> Result<Vec<(CtTuple, CtEntry)>, MapError> {
        self.ct_map()?.iter().collect()
    }

    /// Delete the entries whose `expires_ns` is at or before `now_ns`
    /// (CLOCK_MONOTONIC, see [`monotonic_now_ns`]). Returns how many.
    pub fn ct_gc(&mut self, now_ns: u64) -> Result<usize, MapError> {
        let expired: Vec<CtTuple> = self
            .ct_entries()?
            .into_iter()
            .filter(|(_, e)| e.expires_ns <= now_ns)
            .map(|(t, _)| t)
            .collect();
        let map = self.ebpf.map_mut(MAP_CT).ok_or_else(|| MapError::InvalidName { name: MAP_CT.to_string() })?;
        let mut ct = HashMap::<_, CtTuple, CtEntry>::try_from(map)?;
        let mut removed = 0;
        for tuple in &expired {
            match ct.remove(tuple) {
                Ok(()) => removed += 1,
                // gone meanwhile (LRU eviction, another GC): not an error
                Err(MapError::KeyNotFound) => {}
                Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }

    /// The global counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, MapError> {
        let mut out = [0u64; COUNTER_MAX];
        for c in Counter::ALL {
            out[c as usize] = percpu_sum(&self.ebpf, MAP_COUNTERS, c as u32)?;
        }
        Ok(Counters(out))
    }

    pub fn ct_max_entries(&self) -> u32 {
        self.ct_max_entries
    }
}

/// Verdict of the built-in test program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// TC_ACT_OK: accept and end the chain.
    Pass,
    /// TC_ACT_UNSPEC / TCX_NEXT: let the next program run.
    Unspec,
    /// TC_ACT_SHOT: drop.
    Drop,
}

impl Verdict {
    /// The TC return code.
    pub fn tc_action(self) -> i32 {
        match self {
            Verdict::Pass => TC_ACT_OK,
            Verdict::Unspec => TC_ACT_UNSPEC,
            Verdict::Drop => TC_ACT_SHOT,
        }
    }
}

/// `tclab_verdict` from `testprogs.o`: returns a fixed verdict and counts
/// what it saw. Each instance has its own counters.
pub struct TestProgram {
    ebpf: Ebpf,
    verdict: Verdict,
}

impl TestProgram {
    pub fn load(verdict: Verdict) -> Result<TestProgram, LoadError> {
        const OBJECT: &str = "testprogs.o";
        let code = verdict.tc_action();
        let btf = crate::kernel_btf::get();
        let mut ebpf = crate::kernel_btf::loader(btf.as_deref())
            .override_global(GLOBAL_TEST_VERDICT, &code, true)
            .load(objects::TESTPROGS)
            .map_err(|source| LoadError::Object { object: OBJECT, source: Box::new(source) })?;
        load_classifier(&mut ebpf, OBJECT, PROG_TEST_VERDICT)?;
        Ok(TestProgram { ebpf, verdict })
    }

    pub fn name(&self) -> &'static str {
        PROG_TEST_VERDICT
    }

    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    pub fn program_mut(&mut self) -> &mut SchedClassifier {
        classifier_mut(&mut self.ebpf, PROG_TEST_VERDICT)
    }

    pub fn program(&self) -> &SchedClassifier {
        classifier(&self.ebpf, PROG_TEST_VERDICT)
    }

    /// Packets the program saw (all CPUs).
    pub fn packets(&self) -> Result<u64, MapError> {
        percpu_sum(&self.ebpf, MAP_TEST_STATS, 0)
    }

    /// Bytes (skb->len) the program saw (all CPUs).
    pub fn bytes(&self) -> Result<u64, MapError> {
        percpu_sum(&self.ebpf, MAP_TEST_STATS, 1)
    }
}

/// `tclab_empty` from `testprogs.o`: returns TC_ACT_UNSPEC, nothing else.
pub struct EmptyClassifier {
    ebpf: Ebpf,
}

impl EmptyClassifier {
    pub fn name(&self) -> &'static str {
        PROG_EMPTY
    }

    pub fn program_mut(&mut self) -> &mut SchedClassifier {
        classifier_mut(&mut self.ebpf, PROG_EMPTY)
    }

    pub fn program(&self) -> &SchedClassifier {
        classifier(&self.ebpf, PROG_EMPTY)
    }
}

/// Load the empty classifier: the baseline of the per-packet benchmarks.
pub fn empty_classifier() -> Result<EmptyClassifier, LoadError> {
    const OBJECT: &str = "testprogs.o";
    let btf = crate::kernel_btf::get();
    let mut ebpf = crate::kernel_btf::loader(btf.as_deref())
        .load(objects::TESTPROGS)
        .map_err(|source| LoadError::Object { object: OBJECT, source: Box::new(source) })?;
    load_classifier(&mut ebpf, OBJECT, PROG_EMPTY)?;
    Ok(EmptyClassifier { ebpf })
}

/// The programs of `ciliumlike.o`: Cilium's TC program names, and one from
/// "another vendor".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CilProgram {
    FromNetdev,
    ToNetdev,
    FromHost,
    ToHost,
    FromContainer,
    ToContainer,
    FromOverlay,
    ToOverlay,
    OtherVendor,
}

impl CilProgram {
    pub const ALL: [CilProgram; 9] = [
        CilProgram::FromNetdev,
        CilProgram::ToNetdev,
        CilProgram::FromHost,
        CilProgram::ToHost,
        CilProgram::FromContainer,
        CilProgram::ToContainer,
        CilProgram::FromOverlay,
        CilProgram::ToOverlay,
        CilProgram::OtherVendor,
    ];

    /// The program with this name in the object (`cil_from_netdev`, …, `acme_tc_filter`).
    pub fn from_name(name: &str) -> Option<CilProgram> {
        CilProgram::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The program's name in the object and in the kernel.
    pub fn name(self) -> &'static str {
        match self {
            CilProgram::FromNetdev => "cil_from_netdev",
            CilProgram::ToNetdev => "cil_to_netdev",
            CilProgram::FromHost => "cil_from_host",
            CilProgram::ToHost => "cil_to_host",
            CilProgram::FromContainer => "cil_from_container",
            CilProgram::ToContainer => "cil_to_container",
            CilProgram::FromOverlay => "cil_from_overlay",
            CilProgram::ToOverlay => "cil_to_overlay",
            CilProgram::OtherVendor => "acme_tc_filter",
        }
    }
}

/// What a Cilium-like program does with every packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CilAction {
    /// TC_ACT_OK: accept, end the chain.
    Ok,
    /// TC_ACT_UNSPEC / TCX_NEXT.
    Unspec,
    /// TC_ACT_SHOT.
    Drop,
    /// `bpf_redirect(ifindex, 0)` (TC_ACT_REDIRECT): out of that device's egress.
    Redirect { ifindex: u32 },
    /// `bpf_redirect(ifindex, BPF_F_INGRESS)` (TC_ACT_REDIRECT): into that
    /// device's ingress, as if it had just been received there.
    RedirectIngress { ifindex: u32 },
    /// IPv4 TCP/UDP to `service` is rewritten to `backend` (and the backend's
    /// replies back to `service`), checksums updated; other packets are
    /// untouched and get TC_ACT_UNSPEC. `then` is the verdict after a rewrite.
    Dnat { service: std::net::SocketAddrV4, backend: std::net::SocketAddrV4, then: Verdict },
}

/// Load-time constants of `ciliumlike.o`.
pub const GLOBAL_CIL_ACTION: &str = "tclab_cil_action";
pub const GLOBAL_CIL_IFINDEX: &str = "tclab_cil_ifindex";
pub const GLOBAL_CIL_REDIRECT_FLAGS: &str = "tclab_cil_redirect_flags";
pub const GLOBAL_CIL_NAT_VERDICT: &str = "tclab_cil_nat_verdict";
pub const GLOBAL_CIL_SVC_ADDR: &str = "tclab_cil_svc_addr";
pub const GLOBAL_CIL_SVC_PORT: &str = "tclab_cil_svc_port";
pub const GLOBAL_CIL_BACKEND_ADDR: &str = "tclab_cil_backend_addr";
pub const GLOBAL_CIL_BACKEND_PORT: &str = "tclab_cil_backend_port";
/// Per-CPU counters of `ciliumlike.o`.
pub const MAP_CIL_STATS: &str = "tclab_cil_stats";

/// Counters of a [`CiliumLikeProgram`], summed over CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CilStats {
    pub packets: u64,
    pub dnat: u64,
    pub reverse_nat: u64,
    pub rewrite_failed: u64,
}

/// One program of `ciliumlike.o` loaded with one behaviour.
pub struct CiliumLikeProgram {
    ebpf: Ebpf,
    program: CilProgram,
    action: CilAction,
}

impl CiliumLikeProgram {
    pub fn load(program: CilProgram, action: CilAction) -> Result<CiliumLikeProgram, LoadError> {
        const OBJECT: &str = "ciliumlike.o";
        let (code, ifindex, nat_verdict): (u32, u32, i32) = match action {
            CilAction::Ok => (0, 0, TC_ACT_UNSPEC),
            CilAction::Unspec => (1, 0, TC_ACT_UNSPEC),
            CilAction::Drop => (2, 0, TC_ACT_UNSPEC),
            CilAction::Redirect { ifindex } | CilAction::RedirectIngress { ifindex } => (3, ifindex, TC_ACT_UNSPEC),
            CilAction::Dnat { then, .. } => (4, 0, then.tc_action()),
        };
        // BPF_F_INGRESS
        let redirect_flags: u32 = u32::from(matches!(action, CilAction::RedirectIngress { .. }));
        let (svc, backend) = match action {
            CilAction::Dnat { service, backend, .. } => (service, backend),
            _ => (std::net::SocketAddrV4::new(0.into(), 0), std::net::SocketAddrV4::new(0.into(), 0)),
        };
        // network byte order in memory, as the program compares with the wire
        let svc_addr = u32::from_ne_bytes(svc.ip().octets());
        let svc_port = svc.port().to_be();
        let be_addr = u32::from_ne_bytes(backend.ip().octets());
        let be_port = backend.port().to_be();
        let btf = crate::kernel_btf::get();
        let mut ebpf = crate::kernel_btf::loader(btf.as_deref())
            .override_global(GLOBAL_CIL_ACTION, &code, true)
            .override_global(GLOBAL_CIL_IFINDEX, &ifindex, true)
            .override_global(GLOBAL_CIL_REDIRECT_FLAGS, &redirect_flags, true)
            .override_global(GLOBAL_CIL_NAT_VERDICT, &nat_verdict, true)
            .override_global(GLOBAL_CIL_SVC_ADDR, &svc_addr, true)
            .override_global(GLOBAL_CIL_SVC_PORT, &svc_port, true)
            .override_global(GLOBAL_CIL_BACKEND_ADDR, &be_addr, true)
            .override_global(GLOBAL_CIL_BACKEND_PORT, &be_port, true)
            .load(objects::CILIUMLIKE)
            .map_err(|source| LoadError::Object { object: OBJECT, source: Box::new(source) })?;
        load_classifier(&mut ebpf, OBJECT, program.name())?;
        Ok(CiliumLikeProgram { ebpf, program, action })
    }

    pub fn name(&self) -> &'static str {
        self.program.name()
    }

    pub fn action(&self) -> CilAction {
        self.action
    }

    pub fn program_mut(&mut self) -> &mut SchedClassifier {
        classifier_mut(&mut self.ebpf, self.program.name())
    }

    pub fn program(&self) -> &SchedClassifier {
        classifier(&self.ebpf, self.program.name())
    }

    pub fn stats(&self) -> Result<CilStats, MapError> {
        Ok(CilStats {
            packets: percpu_sum(&self.ebpf, MAP_CIL_STATS, 0)?,
            dnat: percpu_sum(&self.ebpf, MAP_CIL_STATS, 1)?,
            reverse_nat: percpu_sum(&self.ebpf, MAP_CIL_STATS, 2)?,
            rewrite_failed: percpu_sum(&self.ebpf, MAP_CIL_STATS, 3)?,
        })
    }
}
