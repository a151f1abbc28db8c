//! Context propagation (issue #6): the kernel side is `ebpf/propagation.c`;
//! this module loads and attaches it, reads its events and links them to
//! the datapath's spans ([`link::Linker`]).
//!
//! Modes, as Beyla's `BEYLA_BPF_CONTEXT_PROPAGATION` (default `disabled`):
//! * `headers`: a `Traceparent` header inserted into outgoing HTTP/1.1
//!   requests that have none (sk_msg + bpf_msg_push_data);
//! * `tcp`: our TCP header option on the requests' segments (sockops);
//! * `ip`: our IPv4 option / IPv6 destination options header (TC);
//! * `all`: each request by the first carrier that can (the header, else
//!   the TCP option, else the IP option), as OBI does.
//!
//! Every mode but `disabled` also correlates a server request with the
//! client requests its thread makes while serving it: TC ingress notes the
//! context a request brings on its connection, a BTF tracepoint in
//! `tcp_recvmsg` (`tcp_rcv_space_adjust`) binds it to the thread that reads
//! it, the socket message program of that thread's next request uses it,
//! and sock_ops ends it when the response leaves on the served connection. Kernel memory is read through BTF-typed pointers only (no
//! `bpf_probe_read_kernel`) and nothing writes user memory (no
//! `bpf_probe_write_user`), so no lockdown mode refuses a part. Should the
//! tracepoint still fail to load, correlation is off (every client request
//! starts a trace, see [`Propagation::correlation`]) and the rest stays on.
//!
//! Scope: the socket programs attach to one cgroup v2 (sockets created by
//! its processes, and its descendants'), and the tracepoint acts only for
//! threads under it (`bpf_current_task_under_cgroup`). The TC classifiers
//! go on the devices the agent attaches to ([`Propagation::classifier_mut`]):
//! ingress in every mode, egress with the IP option.

pub mod events;
pub mod link;
pub mod tls;
pub mod types;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use aya::maps::{CgroupArray, MapData, RingBuf, SockHash};
use aya::programs::{BtfTracePoint, CgroupAttachMode, ProgramError, SchedClassifier, SkMsg, SockOps};
use aya::Ebpf;
use serde::{Deserialize, Serialize};

use crate::loader::Hook;
pub use events::PropEvent;
use types::{COUNTER_NAMES, PropKey, mode_bits};

/// The object built from `ebpf/propagation.c`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/propagation.o"));
/// The same source built with `TCLAB_PROP_HOOKS_ONLY` ([`Programs::HooksOnly`]).
pub static OBJECT_HOOKS_ONLY: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/propagation_hooks.o"));

/// Environment variable with the mode (as Beyla's `BEYLA_BPF_CONTEXT_PROPAGATION`).
pub const ENV_MODE: &str = "TCLAB_CONTEXT_PROPAGATION";

const MAP_EVENTS: &str = "tclab_prop_events";
const MAP_COUNTERS: &str = "tclab_prop_counters";
const MAP_SOCKHASH: &str = "tclab_prop_sockhash";
const MAP_CGROUP: &str = "tclab_prop_cgroup";
const PROG_SOCKOPS: &str = "tclab_prop_sockops";
const PROG_MSG: &str = "tclab_prop_msg";
/// TC classifiers: ingress (every mode), egress (the IP option).
pub const PROG_EGRESS: &str = "tclab_prop_egress";
pub const PROG_INGRESS: &str = "tclab_prop_ingress";
/// The read tracepoint (correlation).
const PROG_READ: &str = "tclab_prop_read";
const TRACEPOINT_READ: &str = "tcp_rcv_space_adjust";

/// Propagation mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Disabled,
    Headers,
    Tcp,
    Ip,
    All,
}

impl Mode {
    /// Every mode, in the order of the docs.
    pub const ALL: [Mode; 5] = [Mode::Disabled, Mode::Headers, Mode::Tcp, Mode::Ip, Mode::All];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Disabled => "disabled",
            Mode::Headers => "headers",
            Mode::Tcp => "tcp",
            Mode::Ip => "ip",
            Mode::All => "all",
        }
    }

    /// The kernel's `tclab_prop_mode` bits (correlation included).
    pub fn bits(self) -> u32 {
        let carriers = match self {
            Mode::Disabled => return 0,
            Mode::Headers => mode_bits::HEADERS,
            Mode::Tcp => mode_bits::TCP,
            Mode::Ip => mode_bits::IP,
            Mode::All => mode_bits::HEADERS | mode_bits::TCP | mode_bits::IP,
        };
        carriers | mode_bits::CORRELATE
    }

    /// The IP option needs the egress classifier too.
    pub fn uses_egress(self) -> bool {
        self.bits() & mode_bits::IP != 0
    }

    /// `TCLAB_CONTEXT_PROPAGATION`, if set.
    ///
    /// # Errors
    /// A value that is not a mode, naming the variable.
    pub fn from_env() -> Result<Option<Mode>, PropagationError> {
        match std::env::var(ENV_MODE) {
            Ok(v) if !v.is_empty() => v.parse().map(Some),
            _ => Ok(None),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mode {
    type Err = PropagationError;

    fn from_str(s: &str) -> Result<Mode, PropagationError> {
        Mode::ALL.into_iter().find(|m| m.name() == s.trim()).ok_or_else(|| PropagationError::BadMode(s.to_owned()))
    }
}

/// What [`Propagation::start`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropagationConfig {
    pub mode: Mode,
    /// cgroup v2 folder whose sockets and threads are covered (default:
    /// the root of the cgroup2 mount: everything).
    pub cgroup: Option<PathBuf>,
    /// Trace flags of new traces: sampled (01) or not (00).
    pub sampled: bool,
    /// Which build of the programs to load.
    pub programs: Programs,
}

impl Default for PropagationConfig {
    fn default() -> Self {
        PropagationConfig { mode: Mode::Disabled, cgroup: None, sampled: true, programs: Programs::Full }
    }
}

/// Which build of the propagation programs [`Propagation::start`] loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Programs {
    /// The propagation programs.
    #[default]
    Full,
    /// The same programs on the same hooks, returning at once (sockops
    /// still puts the opened connections in the sockhash, and asks for the
    /// header-option callbacks: on accepted connections in every mode, on
    /// opened ones with the TCP option). Propagates nothing: what
    /// the kernel's hooks cost by themselves, the floor the propagation
    /// benchmark measures the programs against.
    HooksOnly,
}

/// Why propagation could not start.
#[derive(Debug, thiserror::Error)]
pub enum PropagationError {
    #[error("unknown context propagation mode {0:?}: expected disabled, headers, tcp, ip or all")]
    BadMode(String),
    #[error("context propagation needs a cgroup v2 mount, and none was found in /proc/self/mountinfo (mount one: mount -t cgroup2 none /sys/fs/cgroup)")]
    NoCgroup2,
    #[error("failed to open cgroup {path}: {source}")]
    Cgroup { path: PathBuf, source: std::io::Error },
    #[error("failed to load the propagation object: {0}")]
    Object(#[source] Box<aya::EbpfError>),
    #[error("propagation program {program}: {what}: {source}")]
    Program { program: &'static str, what: &'static str, source: ProgramError },
    #[error("propagation map {map}: {reason}")]
    Map { map: &'static str, reason: String },
}

/// Whether server requests are linked to the client requests of their thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum Correlation {
    On,
    /// The read tracepoint could not be loaded or attached.
    Off(String),
}

/// The cgroup2 mount point, from /proc/self/mountinfo.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split(' ').nth(4)?;
        (right.split(' ').next()? == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

/// The loaded and attached propagation programs. Dropping it detaches them
/// (every link is fd-owned).
pub struct Propagation {
    ebpf: Ebpf,
    mode: Mode,
    cgroup: Option<PathBuf>,
    correlation: Correlation,
    events: RingBuf<MapData>,
    decode_errors: u64,
}

impl std::fmt::Debug for Propagation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Propagation")
            .field("mode", &self.mode)
            .field("cgroup", &self.cgroup)
            .field("correlation", &self.correlation)
            .finish_non_exhaustive()
    }
}

fn prog_err(program: &'static str, what: &'static str) -> impl FnOnce(ProgramError) -> PropagationError {
    move |source| PropagationError::Program { program, what, source }
}

impl Propagation {
    /// Load the object for `cfg.mode`, attach the socket programs to the
    /// cgroup and the read tracepoint (or record why it is off), and load
    /// (not attach) the TC classifiers.
    ///
    /// # Errors
    /// A disabled mode, no cgroup v2, or a program/map the kernel refuses
    /// (other than the correlation probes).
    pub fn start(cfg: &PropagationConfig) -> Result<Propagation, PropagationError> {
        let cgroup = match &cfg.cgroup {
            Some(p) => p.clone(),
            None => cgroup2_mount().ok_or(PropagationError::NoCgroup2)?,
        };
        let cgroup_file =
            File::open(&cgroup).map_err(|source| PropagationError::Cgroup { path: cgroup.clone(), source })?;
        let mut p = Propagation::load(cfg)?;
        let map = |name: &'static str, reason: String| PropagationError::Map { map: name, reason };
        let ebpf = &mut p.ebpf;
        {
            let m = ebpf.map_mut(MAP_CGROUP).ok_or_else(|| map(MAP_CGROUP, "not in the object".into()))?;
            let mut cg = CgroupArray::try_from(m).map_err(|e| map(MAP_CGROUP, e.to_string()))?;
            let fd = cgroup_file.try_clone().map_err(|source| PropagationError::Cgroup { path: cgroup.clone(), source })?;
            cg.set(0, fd, 0).map_err(|e| map(MAP_CGROUP, format!("set slot 0 to {}: {e}", cgroup.display())))?;
        }
        let sockhash_fd = {
            let m = ebpf.map(MAP_SOCKHASH).ok_or_else(|| map(MAP_SOCKHASH, "not in the object".into()))?;
            let hash = SockHash::<_, PropKey>::try_from(m).map_err(|e| map(MAP_SOCKHASH, e.to_string()))?;
            hash.fd().try_clone().map_err(|e| map(MAP_SOCKHASH, e.to_string()))?
        };
        let msg: &mut SkMsg = program(ebpf, PROG_MSG)?;
        msg.load().map_err(prog_err(PROG_MSG, "load"))?;
        msg.attach(&sockhash_fd).map_err(prog_err(PROG_MSG, "attach to the sockhash"))?;
        let ops: &mut SockOps = program(ebpf, PROG_SOCKOPS)?;
        ops.load().map_err(prog_err(PROG_SOCKOPS, "load"))?;
        // A cgroup BPF link (5.7+) always coexists with other programs;
        // link_create refuses the ALLOW_MULTI flag.
        ops.attach(&cgroup_file, CgroupAttachMode::Single).map_err(prog_err(PROG_SOCKOPS, "attach to the cgroup"))?;
        p.correlation = match attach_correlation(ebpf) {
            Ok(()) => Correlation::On,
            Err(e) => {
                tracing::warn!("context propagation: correlation of server and client requests is off: {e}");
                Correlation::Off(e.to_string())
            }
        };
        p.cgroup = Some(cgroup);
        tracing::debug!(mode = %cfg.mode, programs = ?cfg.programs, cgroup = ?p.cgroup, correlation = ?p.correlation, "context propagation started");
        Ok(p)
    }

    /// Only the TC classifiers, loaded (not attached): what a capture
    /// replayed without its sockets can exercise (the IP option written
    /// from a request's own traceparent, read and removed on ingress).
    ///
    /// # Errors
    /// A disabled mode, or a program the kernel refuses.
    pub fn start_tc_only(mode: Mode) -> Result<Propagation, PropagationError> {
        Propagation::load(&PropagationConfig { mode, cgroup: None, ..PropagationConfig::default() })
    }

    /// The object with its constants, the classifiers loaded.
    fn load(cfg: &PropagationConfig) -> Result<Propagation, PropagationError> {
        if cfg.mode == Mode::Disabled {
            return Err(PropagationError::BadMode("disabled (nothing to start)".into()));
        }
        let bits = cfg.mode.bits();
        let flags = u32::from(cfg.sampled);
        let btf = crate::kernel_btf::get();
        let mut ebpf = crate::kernel_btf::loader(btf.as_deref())
            .override_global("tclab_prop_mode", &bits, true)
            .override_global("tclab_prop_new_flags", &flags, true)
            .load(match cfg.programs {
                Programs::Full => OBJECT,
                Programs::HooksOnly => OBJECT_HOOKS_ONLY,
            })
            .map_err(|e| PropagationError::Object(Box::new(e)))?;
        let mut classifiers = vec![PROG_INGRESS];
        if cfg.mode.uses_egress() {
            classifiers.push(PROG_EGRESS);
        }
        for name in classifiers {
            let p: &mut SchedClassifier = program(&mut ebpf, name)?;
            p.load().map_err(prog_err(name, "load"))?;
        }
        let map = |name: &'static str, reason: String| PropagationError::Map { map: name, reason };
        let events = ebpf.take_map(MAP_EVENTS).ok_or_else(|| map(MAP_EVENTS, "not in the object".into()))?;
        let events = RingBuf::try_from(events).map_err(|e| map(MAP_EVENTS, e.to_string()))?;
        Ok(Propagation {
            ebpf,
            mode: cfg.mode,
            cgroup: None,
            correlation: Correlation::Off("socket programs not started".into()),
            events,
            decode_errors: 0,
        })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The cgroup the socket programs are attached to (`None`: TC only).
    pub fn cgroup(&self) -> Option<&Path> {
        self.cgroup.as_deref()
    }

    pub fn correlation(&self) -> &Correlation {
        &self.correlation
    }

    /// The classifier for a hook: ingress always, egress in modes with
    /// the IP option (`None` otherwise).
    pub fn classifier_mut(&mut self, hook: Hook) -> Option<&mut SchedClassifier> {
        let name = match hook {
            Hook::Ingress => PROG_INGRESS,
            Hook::Egress if self.mode.uses_egress() => PROG_EGRESS,
            Hook::Egress => return None,
        };
        self.ebpf.program_mut(name).and_then(|p| p.try_into().ok())
    }

    /// Every event queued now, in order.
    pub fn drain(&mut self) -> Vec<PropEvent> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            match PropEvent::decode(&item) {
                Some(e) => out.push(e),
                None => self.decode_errors += 1,
            }
        }
        out
    }

    /// Records that did not decode.
    pub fn decode_errors(&self) -> u64 {
        self.decode_errors
    }

    /// The kernel counters (summed over CPUs), by name.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn counters(&self) -> Result<Vec<(&'static str, u64)>, PropagationError> {
        let m = self.ebpf.map(MAP_COUNTERS).ok_or_else(|| PropagationError::Map {
            map: MAP_COUNTERS,
            reason: "not in the object".into(),
        })?;
        let arr = aya::maps::PerCpuArray::<_, u64>::try_from(m)
            .map_err(|e| PropagationError::Map { map: MAP_COUNTERS, reason: e.to_string() })?;
        let mut out = Vec::new();
        for (i, name) in COUNTER_NAMES.iter().enumerate() {
            let v = arr
                .get(&(i as u32), 0)
                .map_err(|e| PropagationError::Map { map: MAP_COUNTERS, reason: e.to_string() })?
                .iter()
                .fold(0u64, |a, v| a.wrapping_add(*v));
            out.push((*name, v));
        }
        Ok(out)
    }

    /// One counter by name (0 when unknown).
    pub fn counter(&self, name: &str) -> u64 {
        self.counters().ok().and_then(|c| c.into_iter().find(|(n, _)| *n == name)).map_or(0, |(_, v)| v)
    }

    /// Name and kernel id of every loaded program (the run-time statistics
    /// of a program are read by its id).
    pub fn program_ids(&self) -> Vec<(String, u32)> {
        self.ebpf.programs().filter_map(|(name, p)| Some((name.to_owned(), p.info().ok()?.id()))).collect()
    }

    /// Kernel ids of the loaded TC classifiers (for the chain rules: ours).
    pub fn classifier_ids(&self) -> Vec<u32> {
        [PROG_EGRESS, PROG_INGRESS]
            .iter()
            .filter_map(|n| self.ebpf.program(n))
            .filter_map(|p| p.info().ok())
            .map(|i| i.id())
            .collect()
    }

    /// Kernel name of a hook's classifier (for attach messages).
    pub fn classifier_name(hook: Hook) -> &'static str {
        match hook {
            Hook::Ingress => PROG_INGRESS,
            Hook::Egress => PROG_EGRESS,
        }
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, PropagationError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let p = ebpf
        .program_mut(name)
        .ok_or(PropagationError::Program { program: name, what: "find", source: ProgramError::NotLoaded })?;
    p.try_into().map_err(prog_err(name, "type"))
}

/// Load and attach the read tracepoint.
fn attach_correlation(ebpf: &mut Ebpf) -> Result<(), PropagationError> {
    let btf = crate::kernel_btf::get()
        .ok_or_else(|| PropagationError::Map { map: "vmlinux BTF", reason: "/sys/kernel/btf/vmlinux is missing or does not parse".into() })?;
    let p: &mut BtfTracePoint = program(ebpf, PROG_READ)?;
    p.load(TRACEPOINT_READ, &btf).map_err(prog_err(PROG_READ, "load"))?;
    p.attach().map_err(prog_err(PROG_READ, "attach"))?;
    Ok(())
}

/// Attach the classifiers of `p` to both hooks of every device (the
/// devices' states from the agent's own attach, so the clsact qdisc is
/// shared): TCX at the head, in front of the agent's classifiers (ingress
/// removes our IP option before anything else sees the packet); netlink at
/// `priority + 1`, after them, with the agent's handle.
///
/// # Errors
/// The first attach error (the attachments made before it are dropped,
/// which detaches them).
pub fn attach_classifiers(
    p: &mut Propagation,
    ifaces: &[String],
    api: crate::attach::Api,
    priority: u16,
    devices: &[std::sync::Arc<crate::attach::DeviceState>],
) -> Result<Vec<crate::attach::Attachment>, crate::attach::AttachError> {
    use tclab_net::tc::Direction;
    let mut out = Vec::new();
    let priority = priority.saturating_add(1);
    for (iface, device) in ifaces.iter().zip(devices) {
        for (hook, dir) in [(Hook::Ingress, Direction::Ingress), (Hook::Egress, Direction::Egress)] {
            if let Some(prog) = p.classifier_mut(hook) {
                out.push(crate::attach::attach(prog, Propagation::classifier_name(hook), iface, dir, api, priority, device)?);
            }
        }
    }
    Ok(out)
}
