//! `tclab replay`: one capture through the agent (or a small chain), without
//! a scenario file, for users who just want to see what the datapath makes
//! of it.
//!
//! The arguments become an in-memory [`Scenario`] that runs through the same
//! code path as `tclab run` ([`runner::execute`]): the device under test holds
//! the `--local` addresses, so packets sent *from* them cross its TC egress
//! and every other packet arrives on its TC ingress. IP addresses are kept as
//! captured (spans and CT rows show the capture's own addresses); MACs are
//! mapped onto the device and its peer so frames look like they really travel
//! between the two.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use etherparse::{LinkSlice, NetSlice, SlicedPacket};
use serde::Serialize;
use tclab_datapath::ct::{self, CtRecord};
use tclab_datapath::span::{Span, WallClock};

use crate::pcap::{self, PcapError};
use crate::runner::execute::{self, Observer};
use crate::runner::report::{AgentOutcome, ScenarioResult};
use crate::runner::{KernelContext, RunOptions};
use crate::scenario::{self, AgentSettings, Attach, Builtin, ChainEntry, Direction, Program, ScenarioError};
use crate::scenario::{Capability, Endpoint, Expect, Pacing, Replay, Rewrite, Scenario, Side, TcxOrder, Topology};
use crate::snapshot::{PendingWrites, SnapshotStore};

/// The chain used when `--chain` is not given.
pub const DEFAULT_CHAIN: &str = "agent";

/// Service name in the Beyla lines' `svc=[…]`, as tclab-agent's default.
pub const SERVICE_NAME: &str = "tclab";

/// Why an ad-hoc replay cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum AdhocError {
    /// Its message already names the file and packet (and the OS error).
    #[error("{0}")]
    Pcap(PcapError),
    #[error("{path}: the capture holds no packets, expected at least one")]
    EmptyCapture { path: PathBuf },
    #[error("--local {ip} appears in no packet of {path} (as source or destination); addresses in the capture: {seen}")]
    LocalNotInCapture { ip: IpAddr, path: PathBuf, seen: String },
    #[error("--local {first} and --local {second} are both IPv{family}, expected at most one address per family")]
    TwoLocals { first: IpAddr, second: IpAddr, family: u8 },
    #[error("--local is required: the address of the capture's host whose TC hooks to replay through")]
    NoLocal,
    #[error("--chain `{spec}`: {message}")]
    Chain { spec: String, message: String },
    /// The scenario error names the file, line and column.
    #[error("--chain: {0}")]
    ChainFile(Box<ScenarioError>),
}

/// `--chain`: a comma-separated list, or a scenario file whose `[[chain]]`
/// and `[agent]` are used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainChoice {
    /// `agent,counter,drop@netlink:10`.
    List(String),
    /// `scenarios/x.toml`.
    File(PathBuf),
}

impl ChainChoice {
    /// A value ending in `.toml` names a scenario file; anything else is a list.
    pub fn parse(value: &str) -> ChainChoice {
        if value.ends_with(".toml") {
            ChainChoice::File(PathBuf::from(value))
        } else {
            ChainChoice::List(value.to_string())
        }
    }
}

impl Default for ChainChoice {
    fn default() -> Self {
        ChainChoice::List(DEFAULT_CHAIN.to_string())
    }
}

/// What `tclab replay` will run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub scenario: Scenario,
    pub locals: Vec<IpAddr>,
    /// Packets in the capture, and how many of them leave from a local address.
    pub packets: usize,
    pub egress_packets: usize,
    /// Packets cut short by the capture's snap length.
    pub truncated: usize,
}

/// Read the capture, check the arguments against it, and build the scenario.
/// `kernel_has_tcx` decides where an agent without an explicit attach goes,
/// for the netlink clash check.
pub fn plan(pcap_path: &Path, locals: &[IpAddr], choice: &ChainChoice, kernel_has_tcx: bool) -> Result<Plan, AdhocError> {
    let (v4, v6) = split_locals(locals)?;
    let packets = pcap::read_file(pcap_path).map_err(AdhocError::Pcap)?;
    if packets.is_empty() {
        return Err(AdhocError::EmptyCapture { path: pcap_path.to_path_buf() });
    }
    let census = Census::of(&packets);
    for ip in locals {
        if !census.ips.contains_key(ip) {
            return Err(AdhocError::LocalNotInCapture { ip: *ip, path: pcap_path.to_path_buf(), seen: census.top_ips(6) });
        }
    }
    let device = Endpoint {
        name: "dut".into(),
        mac: [0x02, 0, 0, 0, 0, 1],
        ipv4: v4.map(|a| (a, 32)),
        ipv6: v6.map(|a| (a, 128)),
    };
    let peer = Endpoint {
        name: "peer".into(),
        mac: [0x02, 0, 0, 0, 0, 2],
        ipv4: census.busiest_other(locals, true).and_then(|ip| as_v4(ip).map(|a| (a, 32))),
        ipv6: census.busiest_other(locals, false).and_then(|ip| as_v6(ip).map(|a| (a, 128))),
    };
    let rewrite = Rewrite { ip: BTreeMap::new(), mac: census.mac_map(locals, device.mac, peer.mac) };
    let (chain, agent) = build_chain(choice)?;
    let name = format!("replay-{}", sanitize(pcap_path));
    let scenario = Scenario {
        path: pcap_path.to_path_buf(),
        name,
        description: format!("tclab replay {}", pcap_path.display()),
        tags: Vec::new(),
        kernels: Vec::new(),
        lockdown: scenario::Lockdown::ALL.to_vec(),
        requires: Vec::new(),
        topology: Topology { device, peer, local: Side::Device },
        chain,
        agent,
        replays: vec![Replay { pcap: pcap_path.to_path_buf(), rewrite, pacing: Pacing::Asap, after: Vec::new() }],
        services: None,
        expect: Expect {
            snapshot: false,
            spans: None,
            ct: Vec::new(),
            agent_error_contains: None,
            counters: BTreeMap::new(),
            varies_by: Vec::new(),
        },
    };
    check_netlink_clashes(&scenario, kernel_has_tcx, chain_label(choice))?;
    let egress_packets = packets
        .iter()
        .filter(|p| ip_pair(&p.data).is_some_and(|(src, _)| scenario.topology.device.has_addr(src)))
        .count();
    Ok(Plan {
        locals: locals.to_vec(),
        packets: packets.len(),
        egress_packets,
        truncated: packets.iter().filter(|p| p.truncated).count(),
        scenario,
    })
}

fn split_locals(locals: &[IpAddr]) -> Result<(Option<std::net::Ipv4Addr>, Option<std::net::Ipv6Addr>), AdhocError> {
    let (mut v4, mut v6): (Option<IpAddr>, Option<IpAddr>) = (None, None);
    if locals.is_empty() {
        return Err(AdhocError::NoLocal);
    }
    for ip in locals {
        let (slot, family) = if ip.is_ipv4() { (&mut v4, 4) } else { (&mut v6, 6) };
        if let Some(first) = *slot
            && first != *ip
        {
            return Err(AdhocError::TwoLocals { first, second: *ip, family });
        }
        *slot = Some(*ip);
    }
    Ok((v4.and_then(as_v4), v6.and_then(as_v6)))
}

fn as_v4(ip: IpAddr) -> Option<std::net::Ipv4Addr> {
    match ip {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }
}

fn as_v6(ip: IpAddr) -> Option<std::net::Ipv6Addr> {
    match ip {
        IpAddr::V6(a) => Some(a),
        IpAddr::V4(_) => None,
    }
}

/// `replay-<file stem>`, with only the characters scenario names allow.
fn sanitize(path: &Path) -> String {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let clean: String = stem.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    if clean.is_empty() { "capture".into() } else { clean }
}

/// Source and destination IP of an Ethernet frame (VLAN tags skipped), the
/// same way the replay decides a packet's hook.
fn ip_pair(frame: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match SlicedPacket::from_ethernet(frame).ok()?.net? {
        NetSlice::Ipv4(v4) => Some((v4.header().source_addr().into(), v4.header().destination_addr().into())),
        NetSlice::Ipv6(v6) => Some((v6.header().source_addr().into(), v6.header().destination_addr().into())),
    }
}

fn macs(frame: &[u8]) -> Option<([u8; 6], [u8; 6])> {
    match SlicedPacket::from_ethernet(frame).ok()?.link? {
        LinkSlice::Ethernet2(eth) => Some((eth.source(), eth.destination())),
        _ => None,
    }
}

/// Who is in the capture: packets per IP address, and which MACs stand for
/// which IPs.
#[derive(Debug, Default)]
struct Census {
    ips: BTreeMap<IpAddr, usize>,
    /// MAC → the IPs it carried as source or destination.
    mac_ips: BTreeMap<[u8; 6], Vec<IpAddr>>,
}

impl Census {
    fn of(packets: &[pcap::Packet]) -> Census {
        let mut c = Census::default();
        for p in packets {
            let Some((src, dst)) = ip_pair(&p.data) else { continue };
            *c.ips.entry(src).or_default() += 1;
            if dst != src {
                *c.ips.entry(dst).or_default() += 1;
            }
            if let Some((smac, dmac)) = macs(&p.data) {
                for (mac, ip) in [(smac, src), (dmac, dst)] {
                    let ips = c.mac_ips.entry(mac).or_default();
                    if !ips.contains(&ip) {
                        ips.push(ip);
                    }
                }
            }
        }
        c
    }

    /// `10.0.0.1 (6 packets), 10.0.0.2 (6 packets)`, busiest first.
    fn top_ips(&self, n: usize) -> String {
        if self.ips.is_empty() {
            return "none (no IPv4 or IPv6 packet)".into();
        }
        let mut by_count: Vec<_> = self.ips.iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let mut text: Vec<String> = by_count.iter().take(n).map(|(ip, k)| format!("{ip} ({k} packets)")).collect();
        if by_count.len() > n {
            text.push(format!("and {} more", by_count.len() - n));
        }
        text.join(", ")
    }

    /// The busiest non-local address of one family: the peer's label.
    fn busiest_other(&self, locals: &[IpAddr], v4: bool) -> Option<IpAddr> {
        self.ips
            .iter()
            .filter(|(ip, _)| ip.is_ipv4() == v4 && !locals.contains(ip))
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(ip, _)| *ip)
    }

    /// Unicast MACs that only ever carried local addresses become the
    /// device's, those that only carried other addresses the peer's. A MAC
    /// seen with both (a loopback capture's zero MAC, a router) is left alone,
    /// as are broadcast and multicast MACs.
    fn mac_map(&self, locals: &[IpAddr], device: [u8; 6], peer: [u8; 6]) -> BTreeMap<[u8; 6], [u8; 6]> {
        let mut map = BTreeMap::new();
        for (mac, ips) in &self.mac_ips {
            if mac[0] & 1 == 1 {
                continue;
            }
            let local = ips.iter().filter(|ip| locals.contains(ip)).count();
            match (local, ips.len() - local) {
                (l, 0) if l > 0 => map.insert(*mac, device),
                (0, r) if r > 0 => map.insert(*mac, peer),
                _ => None,
            };
        }
        map.retain(|from, to| from != to);
        map
    }
}

/// `agent,counter,drop@netlink:10` or a scenario file → chain and agent settings.
fn build_chain(choice: &ChainChoice) -> Result<(Vec<ChainEntry>, AgentSettings), AdhocError> {
    match choice {
        ChainChoice::File(path) => {
            let s = scenario::load_scenario(path)
                .map_err(|e| AdhocError::ChainFile(Box::new(e)))?;
            Ok((s.chain, s.agent))
        }
        ChainChoice::List(spec) => parse_chain_list(spec).map(|c| (c, AgentSettings::default())),
    }
}

/// Parse the list form of `--chain`. Each item is `PROGRAM[@ATTACH]`:
/// PROGRAM is agent, pass, unspec, drop or counter; ATTACH is `tcx`
/// (tail), `tcx:head`, `tcx:tail` or `netlink:PRIORITY[:HANDLE]`. Without
/// `@`, the agent attaches by its own rules (TCX head when the kernel has
/// TCX, else netlink priority 1) and other programs go to the TCX tail.
/// Entries are named after their program (`counter`, `counter-2`, …).
pub fn parse_chain_list(spec: &str) -> Result<Vec<ChainEntry>, AdhocError> {
    let err = |message: String| AdhocError::Chain { spec: spec.to_string(), message };
    let mut out: Vec<ChainEntry> = Vec::new();
    for (i, item) in spec.split(',').map(str::trim).enumerate() {
        let n = i + 1;
        if item.is_empty() {
            return Err(err(format!("item {n} is empty, expected a program such as `agent` or `drop@netlink:10`")));
        }
        let (prog, attach) = match item.split_once('@') {
            Some((p, a)) => (p, Some(a)),
            None => (item, None),
        };
        let builtin = Builtin::from_name(prog).ok_or_else(|| {
            err(format!(
                "item {n}: unknown program `{prog}`, expected agent, pass, unspec, drop or counter (Cilium-like programs: give a scenario file, --chain x.toml)"
            ))
        })?;
        if builtin == Builtin::Agent && out.iter().any(|e| e.program == Program::Builtin(Builtin::Agent)) {
            return Err(err(format!("item {n}: a second agent, expected at most one")));
        }
        let attach = match attach {
            None if builtin == Builtin::Agent => Attach::AgentDecides,
            None => Attach::Tcx { order: TcxOrder::Tail },
            Some(a) => parse_attach(a).map_err(|m| err(format!("item {n} (`{item}`): {m}")))?,
        };
        let taken = out.iter().filter(|e| e.program == Program::Builtin(builtin)).count();
        let name = if taken == 0 { prog.to_string() } else { format!("{prog}-{}", taken + 1) };
        out.push(ChainEntry { name, program: Program::Builtin(builtin), direction: Direction::Both, attach });
    }
    Ok(out)
}

fn parse_attach(a: &str) -> Result<Attach, String> {
    let expected = "expected tcx, tcx:head, tcx:tail or netlink:PRIORITY[:HANDLE]";
    let parts: Vec<&str> = a.split(':').collect();
    match parts.as_slice() {
        ["tcx"] | ["tcx", "tail"] => Ok(Attach::Tcx { order: TcxOrder::Tail }),
        ["tcx", "head"] => Ok(Attach::Tcx { order: TcxOrder::Head }),
        ["netlink", prio] | ["netlink", prio, _] => {
            let priority = match prio.parse::<u16>() {
                Ok(p) if p >= 1 => p,
                _ => return Err(format!("netlink priority `{prio}` is not in 1..=65535 (0 would let the kernel pick one)")),
            };
            let handle = match parts.get(2) {
                None => 1,
                Some(h) => match h.parse::<u32>() {
                    Ok(h) if h >= 1 => h,
                    _ => return Err(format!("netlink handle `{h}` is not a number of at least 1")),
                },
            };
            Ok(Attach::Netlink { priority, handle })
        }
        ["netlink"] => Err(format!("netlink needs a priority, {expected}")),
        _ => Err(format!("unknown attach `{a}`, {expected}")),
    }
}

fn chain_label(choice: &ChainChoice) -> String {
    match choice {
        ChainChoice::List(spec) => spec.clone(),
        ChainChoice::File(path) => path.display().to_string(),
    }
}

/// Two netlink filters with the same priority and handle on one hook: the
/// kernel refuses the second one.
fn check_netlink_clashes(s: &Scenario, kernel_has_tcx: bool, spec: String) -> Result<(), AdhocError> {
    let resolved = scenario::resolve_chain(s, kernel_has_tcx);
    for hook in [Direction::Ingress, Direction::Egress] {
        let slots = &resolved.hook(hook).netlink;
        for (i, a) in slots.iter().enumerate() {
            if let Some(b) = slots[..i].iter().find(|b| b.priority == a.priority && b.handle == a.handle) {
                // Named in chain order, whatever order the resolution used.
                let pos = |n: &str| s.chain.iter().position(|e| e.name == n);
                let (b, a) = if pos(&b.name) <= pos(&a.name) { (b, a) } else { (a, b) };
                return Err(AdhocError::Chain {
                    spec,
                    message: format!(
                        "`{}` and `{}` both attach with netlink priority {} handle {} (the agent uses priority {} when it attaches with netlink), expected different priorities",
                        b.name, a.name, a.priority, a.handle, s.agent.priority
                    ),
                });
            }
        }
    }
    Ok(())
}

/// What the replay produced.
#[derive(Debug)]
pub struct Report {
    pub result: ScenarioResult,
    pub spans: Vec<Span>,
    pub ct: Vec<CtRecord>,
    /// CLOCK_MONOTONIC when the CT table was read (for `remaining`).
    pub ct_read_ns: u64,
    pub clock: WallClock,
}

#[derive(Default)]
struct Collector {
    spans: Vec<Span>,
    ct: Vec<CtRecord>,
    ct_read_ns: u64,
}

impl Observer for Collector {
    fn span(&mut self, span: &Span) {
        self.spans.push(span.clone());
    }
    fn ct(&mut self, records: &[CtRecord]) {
        self.ct = records.to_vec();
        self.ct_read_ns = ct::monotonic_now_ns();
    }
}

/// Run the plan on the running kernel (needs root).
pub fn run(plan: &Plan, kernel: KernelContext) -> anyhow::Result<Report> {
    let opts = RunOptions {
        kernel,
        // Never consulted: the scenario has no snapshot.
        snapshots: SnapshotStore::new(std::env::temp_dir()),
        writes: PendingWrites::Never,
        results_dir: None,
    };
    let clock = WallClock::now();
    let mut collector = Collector::default();
    let result = execute::execute_observed(&plan.scenario, &opts, &mut collector)?;
    // A scenario may expect a refusal; an ad-hoc replay without the agent has nothing to show.
    if let AgentOutcome::Refused { error } = &result.agent {
        anyhow::bail!("the agent refused to start: {error}");
    }
    Ok(Report { result, spans: collector.spans, ct: collector.ct, ct_read_ns: collector.ct_read_ns, clock })
}

/// Does the kernel have TCX (for [`plan`])?
pub fn has_tcx(kernel: &KernelContext) -> bool {
    kernel.has(Capability::Tcx)
}

/// The text output: a `#` header line per section, spans as tclab-agent
/// prints them (Beyla's format) and CT rows as `tclab-agent ct list` does
/// (`cilium bpf ct list global`'s shape).
pub fn render_text(plan: &Plan, report: &Report) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let locals: Vec<String> = plan.locals.iter().map(ToString::to_string).collect();
    let _ = write!(
        s,
        "# {}: {} packets, {} through egress (from {}), {} to ingress",
        plan.scenario.replays[0].pcap.display(),
        plan.packets,
        plan.egress_packets,
        locals.join(", "),
        plan.packets - plan.egress_packets,
    );
    if plan.truncated > 0 {
        let _ = write!(s, "; {} cut short by the snap length", plan.truncated);
    }
    s.push('\n');
    let r = &report.result;
    if let AgentOutcome::Started { attach, warnings } = &r.agent {
        let _ = writeln!(s, "# agent: {attach}");
        for w in warnings {
            let _ = writeln!(s, "# warning: {w}");
        }
    }
    let _ = writeln!(s, "# chain, as the kernel reports it (packets: what each entry saw, both hooks added)");
    for c in &r.chain {
        let seen = r.counters.get(&c.entry).map_or_else(String::new, |n| format!(" packets={n}"));
        let _ = writeln!(s, "{:<7} {:<26} {:<22} entry={}{seen}", c.hook, c.api, c.program, c.entry);
    }
    let _ = writeln!(s, "# spans ({})", report.spans.len());
    for span in &report.spans {
        let _ = writeln!(s, "{}", span.beyla_line(&report.clock, SERVICE_NAME));
    }
    let _ = writeln!(s, "# ct ({} entries)", report.ct.len());
    for rec in &report.ct {
        let _ = writeln!(s, "{}", rec.cilium_line(report.ct_read_ns));
    }
    if r.events_lost > 0 {
        let _ = writeln!(s, "# warning: {} events lost (ring buffer full): spans may be missing", r.events_lost);
    }
    s
}

/// The JSON output (one document).
#[derive(Debug, Serialize)]
pub struct JsonReport<'a> {
    pub pcap: &'a Path,
    pub local: &'a [IpAddr],
    pub agent: &'a AgentOutcome,
    pub packets: &'a [crate::runner::report::PacketLine],
    pub chain: &'a [crate::runner::report::ChainLine],
    pub counters: &'a BTreeMap<String, u64>,
    pub spans: &'a [Span],
    pub ct: Vec<ct::CtJson>,
    pub events_lost: u64,
    pub agent_counters: &'a BTreeMap<String, u64>,
}

pub fn render_json(plan: &Plan, report: &Report) -> serde_json::Result<String> {
    let r = &report.result;
    let doc = JsonReport {
        pcap: &plan.scenario.replays[0].pcap,
        local: &plan.locals,
        agent: &r.agent,
        packets: &r.packets,
        chain: &r.chain,
        counters: &r.counters,
        spans: &report.spans,
        ct: ct::to_json(&report.ct, report.ct_read_ns),
        events_lost: r.events_lost,
        agent_counters: &r.agent_counters,
    };
    serde_json::to_string_pretty(&doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures").join(name)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn local_server_gets_the_server_side_and_peer_the_client() {
        let p = plan(&fixture("http-get.pcap"), &[ip("10.0.0.2")], &ChainChoice::default(), true).expect("plan");
        let t = &p.scenario.topology;
        assert_eq!(t.local, Side::Device);
        assert_eq!(t.device.ipv4, Some(("10.0.0.2".parse().expect("v4"), 32)));
        assert_eq!(t.device.ipv6, None);
        assert_eq!(t.peer.ipv4, Some(("10.0.0.1".parse().expect("v4"), 32)));
        // Direction: the server's packets leave through egress, the client's arrive on ingress.
        assert_eq!(t.direction_of(ip("10.0.0.2")), Direction::Egress);
        assert_eq!(t.direction_of(ip("10.0.0.1")), Direction::Ingress);
        assert!(p.egress_packets > 0 && p.egress_packets < p.packets, "{p:?}");
        // IPs are kept as captured; the server's MAC becomes the device's, the client's the peer's.
        let rw = &p.scenario.replays[0].rewrite;
        assert!(rw.ip.is_empty());
        assert_eq!(rw.mac.get(&[2, 0, 0, 0, 0, 2]), Some(&[2, 0, 0, 0, 0, 1]));
        assert_eq!(rw.mac.get(&[2, 0, 0, 0, 0, 1]), Some(&[2, 0, 0, 0, 0, 2]));
        assert_eq!(p.scenario.chain.len(), 1);
        assert_eq!(p.scenario.chain[0].attach, Attach::AgentDecides);
        assert!(!p.scenario.expect.snapshot);
    }

    #[test]
    fn local_client_needs_no_mac_rewrite_on_generated_fixtures() {
        // The generated fixtures already use the topology's MACs with the client as device.
        let p = plan(&fixture("http-get.pcap"), &[ip("10.0.0.1")], &ChainChoice::default(), true).expect("plan");
        assert!(p.scenario.replays[0].rewrite.mac.is_empty(), "{:?}", p.scenario.replays[0].rewrite);
    }

    #[test]
    fn ipv6_local_and_one_address_per_family() {
        let p = plan(&fixture("http-ipv6.pcap"), &[ip("fd00::2")], &ChainChoice::default(), true).expect("plan");
        assert_eq!(p.scenario.topology.device.ipv6.map(|a| a.0), Some("fd00::2".parse().expect("v6")));
        assert_eq!(p.scenario.topology.peer.ipv6.map(|a| a.0), Some("fd00::1".parse().expect("v6")));
        let e = plan(&fixture("http-get.pcap"), &[ip("10.0.0.1"), ip("10.0.0.2")], &ChainChoice::default(), true)
            .expect_err("two IPv4 locals");
        assert_eq!(e.to_string(), "--local 10.0.0.1 and --local 10.0.0.2 are both IPv4, expected at most one address per family");
        assert!(matches!(plan(&fixture("http-get.pcap"), &[], &ChainChoice::default(), true), Err(AdhocError::NoLocal)));
    }

    #[test]
    fn local_absent_from_the_capture_is_named_with_what_is_there() {
        let path = fixture("http-get.pcap");
        let e = plan(&path, &[ip("192.0.2.9")], &ChainChoice::default(), true).expect_err("absent");
        let text = e.to_string();
        assert!(text.starts_with("--local 192.0.2.9 appears in no packet of "), "{text}");
        assert!(text.contains("http-get.pcap"), "{text}");
        assert!(text.contains("10.0.0.1 (") && text.contains("10.0.0.2 ("), "{text}");
        // A capture without IP at all says so.
        let arp_only = plan(&fixture("arp.pcap"), &[ip("10.0.0.1")], &ChainChoice::default(), true).expect_err("arp");
        assert!(arp_only.to_string().contains("none (no IPv4 or IPv6 packet)"), "{arp_only}");
    }

    #[test]
    fn missing_corrupt_and_empty_captures_are_clear_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.pcap");
        let e = plan(&missing, &[ip("10.0.0.1")], &ChainChoice::default(), true).expect_err("missing");
        assert!(e.to_string().contains("nope.pcap") && e.to_string().contains("failed to read"), "{e}");

        let text = dir.path().join("notes.pcap");
        std::fs::write(&text, b"hello, this is not a capture").expect("write");
        let e = plan(&text, &[ip("10.0.0.1")], &ChainChoice::default(), true).expect_err("not pcap");
        assert!(e.to_string().contains("not a pcap or pcapng file"), "{e}");

        // A real capture cut in the middle of its second packet record.
        let bytes = std::fs::read(fixture("http-get.pcap")).expect("fixture");
        let cut = dir.path().join("cut.pcap");
        let first_len = u32::from_le_bytes([bytes[32], bytes[33], bytes[34], bytes[35]]) as usize;
        std::fs::write(&cut, &bytes[..24 + 16 + first_len + 20]).expect("write");
        let e = plan(&cut, &[ip("10.0.0.1")], &ChainChoice::default(), true).expect_err("truncated");
        assert!(e.to_string().contains("packet 2"), "{e}");

        let empty = dir.path().join("empty.pcap");
        std::fs::write(&empty, &bytes[..24]).expect("write");
        let e = plan(&empty, &[ip("10.0.0.1")], &ChainChoice::default(), true).expect_err("empty");
        assert!(e.to_string().contains("holds no packets"), "{e}");
    }

    #[test]
    fn chain_list_syntax() {
        let c = parse_chain_list("agent, counter, counter@tcx:head, drop@netlink:10:3").expect("chain");
        let names: Vec<&str> = c.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["agent", "counter", "counter-2", "drop"]);
        assert_eq!(c[0].attach, Attach::AgentDecides);
        assert_eq!(c[1].attach, Attach::Tcx { order: TcxOrder::Tail });
        assert_eq!(c[2].attach, Attach::Tcx { order: TcxOrder::Head });
        assert_eq!(c[3].attach, Attach::Netlink { priority: 10, handle: 3 });
        assert!(c.iter().all(|e| e.direction == Direction::Both));
        assert_eq!(parse_chain_list("agent@netlink:5").expect("agent")[0].attach, Attach::Netlink { priority: 5, handle: 1 });
        for (bad, needle) in [
            ("agent,,drop", "item 2 is empty"),
            ("agent,cil_from_netdev", "unknown program `cil_from_netdev`"),
            ("agent,agent", "a second agent"),
            ("drop@netlink:0", "not in 1..=65535"),
            ("drop@netlink", "needs a priority"),
            ("drop@netlink:70000", "not in 1..=65535"),
            ("drop@tcx:middle", "unknown attach `tcx:middle`"),
            ("drop@netlink:3:0", "handle `0`"),
        ] {
            let e = parse_chain_list(bad).expect_err(bad).to_string();
            assert!(e.starts_with(&format!("--chain `{bad}`: ")) && e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn netlink_clashes_are_caught_before_the_kernel_refuses() {
        let path = fixture("http-get.pcap");
        let local = [ip("10.0.0.1")];
        let clash = ChainChoice::List("counter@netlink:4,drop@netlink:4".into());
        let e = plan(&path, &local, &clash, true).expect_err("clash").to_string();
        assert!(e.contains("`counter` and `drop` both attach with netlink priority 4 handle 1"), "{e}");
        // The agent takes netlink priority 1 (with its own handle) only on
        // kernels without TCX; the same priority with another handle is fine.
        let handle = scenario::AGENT_NETLINK_HANDLE;
        let agent_and_1 = ChainChoice::List(format!("agent,drop@netlink:1:{handle}"));
        assert!(plan(&path, &local, &agent_and_1, true).is_ok());
        let e = plan(&path, &local, &agent_and_1, false).expect_err("no tcx").to_string();
        assert!(e.contains(&format!("`agent` and `drop` both attach with netlink priority 1 handle {handle}")), "{e}");
        assert!(plan(&path, &local, &ChainChoice::List("agent,drop@netlink:1".into()), false).is_ok());
    }

    #[test]
    fn chain_from_a_scenario_file() {
        let scenarios = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
        let file = scenarios.join("chain-netlink-priorities.toml");
        let choice = ChainChoice::parse(file.to_str().expect("utf-8 path"));
        assert_eq!(choice, ChainChoice::File(file.clone()));
        let p = plan(&fixture("http-get.pcap"), &[ip("10.0.0.2")], &choice, true).expect("plan");
        let want = scenario::load_scenario(&file).expect("scenario");
        assert_eq!(p.scenario.chain, want.chain);
        assert_eq!(p.scenario.agent, want.agent);
        let dir = tempfile::tempdir().expect("tempdir");
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "name = \"bad\"\nbogus = 1\n").expect("write");
        let e = plan(&fixture("http-get.pcap"), &[ip("10.0.0.2")], &ChainChoice::File(bad), true).expect_err("bad");
        assert!(e.to_string().contains("bad.toml:2:1"), "{e}");
    }

    #[test]
    fn mac_map_leaves_shared_and_group_macs_alone() {
        let mut c = Census::default();
        let (l, r) = (ip("10.0.0.2"), ip("10.0.0.1"));
        c.mac_ips.insert([0; 6], vec![l, r]);
        c.mac_ips.insert([0xff; 6], vec![r]);
        c.mac_ips.insert([0x01, 0, 0x5e, 0, 0, 1], vec![r]);
        c.mac_ips.insert([0x0a, 0, 0, 0, 0, 9], vec![l]);
        let m = c.mac_map(&[l], [2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        assert_eq!(m.len(), 1, "{m:?}");
        assert_eq!(m.get(&[0x0a, 0, 0, 0, 0, 9]), Some(&[2, 0, 0, 0, 0, 1]));
    }

    #[test]
    fn sanitized_names() {
        assert_eq!(sanitize(Path::new("/x/my capture (1).pcapng")), "my_capture__1_");
        assert_eq!(sanitize(Path::new("http-get.pcap")), "http-get");
    }
}
