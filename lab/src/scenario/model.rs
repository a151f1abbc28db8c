//! The validated scenario: what the runner consumes. Built only by
//! `scenario::load_scenario`, so every value here has passed validation.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One scenario file, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scenario {
    /// The file it was read from.
    pub path: PathBuf,
    /// Unique across the scenario directory.
    pub name: String,
    pub description: String,
    pub tags: Vec<String>,
    /// Empty: every kernel.
    pub kernels: Vec<KernelSelector>,
    /// Never empty (the default is every mode).
    pub lockdown: Vec<Lockdown>,
    /// Capabilities a kernel must have, or the scenario is skipped ("skipped: needs tcx").
    pub requires: Vec<Capability>,
    pub topology: Topology,
    /// In file order.
    pub chain: Vec<ChainEntry>,
    pub agent: AgentSettings,
    pub replays: Vec<Replay>,
    /// `[services]`: the built-in test services run instead of replays.
    pub services: Option<Services>,
    pub expect: Expect,
}

/// `[services]`: the three-service chain of `tclab testserver` (frontend
/// `/traceme` → backend `/tracemetoo` → worker `/users`), one agent per
/// service under `[agent]` (its `propagation` mode included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Services {
    /// Requests the client sends to the frontend, one after the other.
    pub requests: u32,
    pub ipv6: bool,
    /// A `traceparent` header on the client's requests (sent as is).
    pub traceparent: Option<String>,
    /// Services that copy the incoming traceparent to their downstream call
    /// themselves (an application with an SDK).
    pub forward: Vec<String>,
    /// Services that answer first and call their downstream afterwards, on
    /// the same thread ("frontend", "backend"): work after the response,
    /// outside the request's trace.
    pub after_response: Vec<String>,
    /// Services served over TLS ("backend", "worker"): the hop into each is
    /// encrypted, its caller trusting exactly the certificate it made.
    pub tls: Vec<String>,
}

impl Scenario {
    /// Does the scenario apply to this kernel? `name` is the matrix name
    /// ("6.12", "host"); `version` its (major, minor) when known.
    pub fn applies_to_kernel(&self, name: &str, version: Option<(u32, u32)>) -> bool {
        self.kernels.is_empty() || self.kernels.iter().any(|k| k.matches(name, version))
    }

    pub fn applies_to_lockdown(&self, mode: Lockdown) -> bool {
        self.lockdown.contains(&mode)
    }

    /// Every file the scenario needs besides itself (pcaps, objects): what
    /// the kernel matrix copies into the guest next to the scenario file.
    pub fn referenced_files(&self) -> Vec<PathBuf> {
        let objects = self.chain.iter().filter_map(|e| match &e.program {
            Program::Object(o) => Some(o.path.clone()),
            _ => None,
        });
        self.replays.iter().map(|r| r.pcap.clone()).chain(objects).collect()
    }

    /// The first required capability `has` says is missing, for "skipped: needs tcx".
    pub fn missing_capability(&self, has: impl Fn(Capability) -> bool) -> Option<Capability> {
        self.requires.iter().copied().find(|c| !has(*c))
    }
}

/// An entry of `kernels = [...]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum KernelSelector {
    /// The running kernel, outside QEMU.
    Host,
    /// A matrix kernel by name, e.g. "6.12".
    Named(String),
    /// `>=6.6`: any kernel (host included) whose version is at least this.
    AtLeast(u32, u32),
}

impl KernelSelector {
    pub fn matches(&self, name: &str, version: Option<(u32, u32)>) -> bool {
        match self {
            KernelSelector::Host => name == "host",
            KernelSelector::Named(n) => n == name,
            KernelSelector::AtLeast(maj, min) => version.is_some_and(|v| v >= (*maj, *min)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lockdown {
    None,
    Integrity,
    Confidentiality,
}

impl Lockdown {
    pub const ALL: [Lockdown; 3] = [
        Lockdown::None,
        Lockdown::Integrity,
        Lockdown::Confidentiality,
    ];
}

/// What `requires = [...]` may name; the names match the agent's probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    Tcx,
    BpfLoop,
    Ringbuf,
    Btf,
    ProbeWriteUser,
}

impl Capability {
    pub const ALL: [Capability; 5] = [
        Capability::Tcx,
        Capability::BpfLoop,
        Capability::Ringbuf,
        Capability::Btf,
        Capability::ProbeWriteUser,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Tcx => "tcx",
            Capability::BpfLoop => "bpf_loop",
            Capability::Ringbuf => "ringbuf",
            Capability::Btf => "btf",
            Capability::ProbeWriteUser => "probe_write_user",
        }
    }
}

/// The device under test (a veth end) and its peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Topology {
    pub device: Endpoint,
    pub peer: Endpoint,
    /// Whose addresses are "local": replayed packets whose source (after
    /// rewrite) is a local address are sent through the device's egress,
    /// all others are received on its ingress.
    pub local: Side,
}

impl Topology {
    pub fn endpoint(&self, side: Side) -> &Endpoint {
        match side {
            Side::Device => &self.device,
            Side::Peer => &self.peer,
        }
    }

    pub fn local_endpoint(&self) -> &Endpoint {
        self.endpoint(self.local)
    }

    pub fn remote_endpoint(&self) -> &Endpoint {
        self.endpoint(self.local.other())
    }

    /// Where a packet with this source address goes in.
    pub fn direction_of(&self, src: IpAddr) -> Direction {
        if self.local_endpoint().has_addr(src) {
            Direction::Egress
        } else {
            Direction::Ingress
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Device,
    Peer,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Device => Side::Peer,
            Side::Peer => Side::Device,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// Interface name (at most 15 bytes).
    pub name: String,
    pub mac: [u8; 6],
    pub ipv4: Option<(Ipv4Addr, u8)>,
    pub ipv6: Option<(Ipv6Addr, u8)>,
}

impl Endpoint {
    pub fn has_addr(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.ipv4.is_some_and(|(v, _)| v == a),
            IpAddr::V6(a) => self.ipv6.is_some_and(|(v, _)| v == a),
        }
    }
}

/// One program to attach.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChainEntry {
    /// Unique id within the scenario (counters and `before`/`after` use it).
    pub name: String,
    pub program: Program,
    pub direction: Direction,
    pub attach: Attach,
}

/// What to attach. Tagged so that foreign objects (`{ object = "x.o" }`,
/// a later issue) fit in as a new variant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Program {
    Builtin(Builtin),
    Cilium {
        name: CiliumProgram,
        behaviour: Behaviour,
    },
    /// The neutral program of "another vendor" (one of `FOREIGN_PROGRAMS`):
    /// the Cilium-like behaviours under a name the agent's rules do not take
    /// for Cilium.
    Foreign {
        name: String,
        behaviour: Behaviour,
    },
    /// A compiled BPF object of the user's, loaded with libbpf (`crate::byo`).
    Object(Box<crate::byo::ObjectProgram>),
}

/// Names `{ foreign = "…" }` accepts.
pub const FOREIGN_PROGRAMS: [&str; 1] = ["acme_tc_filter"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Builtin {
    /// The agent's classifiers (tclab_ingress / tclab_egress) under `[agent]` settings.
    Agent,
    /// Returns TC_ACT_OK: ends the chain.
    Pass,
    /// Returns TC_ACT_UNSPEC (TCX_NEXT): the chain goes on.
    Unspec,
    /// Returns TC_ACT_SHOT.
    Drop,
    /// Counts packets, returns TC_ACT_UNSPEC.
    Counter,
    /// The agent's context-propagation classifiers (ebpf/propagation.c) in
    /// the `[agent].propagation` mode: ingress reads (and with the IP option
    /// removes) the context a request brings; egress (modes with the IP
    /// option) writes our IP option. Return TC_ACT_UNSPEC.
    Propagation,
}

impl Builtin {
    pub fn from_name(s: &str) -> Option<Builtin> {
        Some(match s {
            "agent" => Builtin::Agent,
            "pass" => Builtin::Pass,
            "unspec" => Builtin::Unspec,
            "drop" => Builtin::Drop,
            "counter" => Builtin::Counter,
            "propagation" => Builtin::Propagation,
            _ => return None,
        })
    }
}

/// The Cilium program names the test programs mimic (detection is by name).
pub const CILIUM_PROGRAMS: [&str; 8] = [
    "cil_from_netdev",
    "cil_to_netdev",
    "cil_from_host",
    "cil_to_host",
    "cil_from_container",
    "cil_to_container",
    "cil_from_overlay",
    "cil_to_overlay",
];

/// One of `CILIUM_PROGRAMS`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CiliumProgram(pub String);

/// What a Cilium-like test program does with every packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Behaviour {
    /// TC_ACT_OK (ends the chain).
    Ok,
    /// TC_ACT_UNSPEC / TCX_NEXT.
    Unspec,
    /// TC_ACT_SHOT.
    Drop,
    /// bpf_redirect to the named device of the topology: the peer's name
    /// sends packets out through the device to its peer (ingress entries),
    /// the device's own name delivers them to its own ingress (egress entries).
    Redirect { to: String },
    /// Rewrite the service address `from` to the backend `to` (checksums fixed).
    Dnat { from: SocketAddr, to: SocketAddr },
}

/// `behaviour = "..."` as written; parameters come from sibling keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BehaviourKind {
    Ok,
    Unspec,
    Drop,
    Redirect,
    Dnat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
    Both,
}

impl Direction {
    /// Ingress and/or egress (never `Both`).
    pub fn hooks(self) -> &'static [Direction] {
        match self {
            Direction::Ingress => &[Direction::Ingress],
            Direction::Egress => &[Direction::Egress],
            Direction::Both => &[Direction::Ingress, Direction::Egress],
        }
    }

    pub fn covers(self, hook: Direction) -> bool {
        self == Direction::Both || self == hook
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Attach {
    Tcx {
        order: TcxOrder,
    },
    Netlink {
        priority: u16,
        handle: u32,
    },
    /// An agent entry without `attach`: the agent picks by its own rules
    /// (`[agent].backend`; `auto` = TCX head when the kernel has TCX, else netlink).
    AgentDecides,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TcxOrder {
    Head,
    Tail,
    Before(String),
    After(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Auto,
    Tcx,
    Netlink,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CtMapKind {
    Lru,
    Hash,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Propagation {
    Disabled,
    Headers,
    Tcp,
    Ip,
    All,
}

/// `[agent]`; defaults are the agent's own, except the CT map's size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentSettings {
    pub backend: Backend,
    /// Netlink priority when the agent attaches itself through netlink.
    pub priority: u16,
    /// [`LAB_CT_MAX_ENTRIES`] unless the scenario says.
    pub ct_max_entries: u32,
    pub ct_map: CtMapKind,
    pub lifetimes: Lifetimes,
    pub propagation: Propagation,
}

/// The CT map size of a scenario's agents when `[agent]` does not set one.
/// A scenario replays a few connections; the agent's own default (Cilium's
/// 524,288, a preallocated LRU map of ~75 MB) cost 0.27 s to create and
/// ~0.1 s to free for every agent under TCG (6.12, measured), where a
/// matrix cell starts ~75 agents. Behaviour under table pressure has its
/// own scenarios (`ct_max_entries = 4`) and benchmark (`tclab bench ct`).
pub const LAB_CT_MAX_ENTRIES: u32 = 16_384;

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            backend: Backend::Auto,
            priority: 1,
            ct_max_entries: LAB_CT_MAX_ENTRIES,
            ct_map: CtMapKind::Lru,
            lifetimes: Lifetimes::default(),
            propagation: Propagation::Disabled,
        }
    }
}

/// CT lifetimes in seconds (Cilium's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Lifetimes {
    pub syn: u32,
    pub tcp: u32,
    pub close: u32,
    pub non_tcp: u32,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Lifetimes {
            syn: 60,
            tcp: 21_600,
            close: 10,
            non_tcp: 60,
        }
    }
}

/// One `[[replay]]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Replay {
    /// Resolved against the scenario file's folder; checked to exist and parse.
    pub pcap: PathBuf,
    pub rewrite: Rewrite,
    pub pacing: Pacing,
    /// Steps run after this replay, in order.
    pub after: Vec<Step>,
}

/// Address mapping applied to every packet before injection: pcap address → topology address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Rewrite {
    pub ip: BTreeMap<IpAddr, IpAddr>,
    pub mac: BTreeMap<[u8; 6], [u8; 6]>,
}

impl Rewrite {
    pub fn is_empty(&self) -> bool {
        self.ip.is_empty() && self.mac.is_empty()
    }

    pub fn map_ip(&self, ip: IpAddr) -> IpAddr {
        self.ip.get(&ip).copied().unwrap_or(ip)
    }

    pub fn map_mac(&self, mac: [u8; 6]) -> [u8; 6] {
        self.mac.get(&mac).copied().unwrap_or(mac)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pacing {
    /// As fast as possible, in capture order.
    #[default]
    Asap,
    /// The capture's own inter-packet gaps multiplied by this factor.
    Scale(f64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Sleep this many milliseconds.
    WaitMs(u64),
    /// Run the agent's CT garbage collection (`true`; `false` is a no-op).
    CtGc(bool),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Expect {
    pub snapshot: bool,
    pub spans: Option<u64>,
    pub ct: Vec<CtCheck>,
    /// The agent must refuse to start with an error containing this.
    pub agent_error_contains: Option<String>,
    /// Chain entry name → packets it saw (both directions added).
    pub counters: BTreeMap<String, u64>,
    /// Dimensions whose snapshot may differ (a per-kernel snapshot is kept
    /// next to the common one).
    pub varies_by: Vec<Dimension>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dimension {
    Kernel,
    Lockdown,
}

/// An expected CT entry, as `cilium bpf ct list` would print its tuple.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CtCheck {
    pub tuple: CtTuple,
    pub state: Option<CtState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CtState {
    New,
    Established,
    Reply,
    Closing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum L4Proto {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
}

/// `TCP 10.0.0.1:5555 -> 10.0.0.2:80`, `UDP [fd00::1]:53 -> [fd00::2]:53`, `ICMP 10.0.0.1 -> 10.0.0.2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct CtTuple {
    pub proto: L4Proto,
    pub src: IpAddr,
    pub src_port: Option<u16>,
    pub dst: IpAddr,
    pub dst_port: Option<u16>,
}
