//! What one scenario produced, and its snapshot text.
//!
//! The snapshot holds only what must be the same on every run and every
//! kernel (no timestamps, ids, ifindexes or random span ids), ordered as the
//! kernel or the capture ordered it, one fact per line so a diff reads well.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// How the agent's start went, when the chain has the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentOutcome {
    NotInChain,
    Started { attach: String, warnings: Vec<String> },
    Refused { error: String },
}

/// One program on one hook, as the kernel reports the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainLine {
    pub hook: String,
    /// "tcx" or "netlink prio=N handle=0xH".
    pub api: String,
    pub program: String,
    /// The scenario entry it belongs to, or "foreign" when none does.
    pub entry: String,
}

/// One replayed packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PacketLine {
    /// 1-based position in its pcap.
    pub index: usize,
    pub pcap: String,
    pub hook: String,
    pub frame: String,
    /// Chain entries whose program saw the packet, in chain order.
    pub seen_by: Vec<String>,
}

/// An inline check from `[expect]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckOutcome {
    pub check: String,
    pub passed: bool,
    pub detail: String,
}

/// Everything a scenario run collected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScenarioResult {
    pub scenario: String,
    pub kernel: String,
    pub agent: AgentOutcome,
    pub chain: Vec<ChainLine>,
    pub packets: Vec<PacketLine>,
    pub spans: Vec<String>,
    pub ct: Vec<String>,
    /// Each CT entry as (`TCP 10.0.0.1:5555 -> 10.0.0.2:80`, state), for checks.
    pub ct_states: Vec<(String, String)>,
    pub counters: BTreeMap<String, u64>,
    pub events_lost: u64,
    /// The agent's own non-zero counters (packets, CT verdicts, HTTP, traceparent).
    pub agent_counters: BTreeMap<String, u64>,
    /// What left the far side: after the device's ingress (into its stack) or
    /// after its egress (at the peer).
    pub output: Vec<String>,
    pub checks: Vec<CheckOutcome>,
    /// Maps of object entries the scenario lists under `dump`.
    #[serde(default)]
    pub maps: Vec<crate::byo::MapDump>,
    /// What each object entry did with the packets it saw, read from the
    /// chain's counters (see [`ScenarioResult::count_verdicts`]).
    #[serde(default)]
    pub verdicts: Vec<String>,
}

/// Propagation counters that count segments, not requests: they depend on
/// retransmissions (a duplicate is dropped before its options are parsed)
/// and on how writes coalesce, so their exact values change from run to
/// run (a 5.10 guest saw one parse callback fewer, `tcp_read` 5 of 6, in
/// about one cell of four). The snapshot keeps only that the path carried
/// something; results.json keeps the numbers.
const SEGMENT_COUNTERS: [&str; 4] = ["tcp_written", "tcp_read", "ip_added", "ip_stripped"];

/// `service.counter: value`, or `: >0` for a [`SEGMENT_COUNTERS`] one.
fn agent_counter_line(key: &str, value: u64) -> String {
    let name = key.rsplit('.').next().unwrap_or(key);
    if value > 0 && SEGMENT_COUNTERS.contains(&name) {
        format!("{key}: >0")
    } else {
        format!("{key}: {value}")
    }
}

impl ScenarioResult {
    pub fn new(scenario: &str, kernel: &str) -> Self {
        ScenarioResult {
            scenario: scenario.to_string(),
            kernel: kernel.to_string(),
            agent: AgentOutcome::NotInChain,
            chain: Vec::new(),
            packets: Vec::new(),
            spans: Vec::new(),
            ct: Vec::new(),
            ct_states: Vec::new(),
            counters: BTreeMap::new(),
            events_lost: 0,
            agent_counters: BTreeMap::new(),
            output: Vec::new(),
            checks: Vec::new(),
            maps: Vec::new(),
            verdicts: Vec::new(),
        }
    }

    /// For each of `entries`: how many replayed packets it saw, how many of
    /// those a later entry saw too (it returned TC_ACT_UNSPEC/TCX_NEXT or, on
    /// netlink, let the next filter run), and for how many it was the last
    /// (it ended the chain: TC_ACT_OK, a drop, a redirect, or it was last).
    pub fn count_verdicts(&mut self, entries: &[String]) {
        self.verdicts = entries
            .iter()
            .map(|entry| {
                let mut seen = 0;
                let mut last = 0;
                for p in &self.packets {
                    if let Some(at) = p.seen_by.iter().position(|e| e == entry) {
                        seen += 1;
                        if at + 1 == p.seen_by.len() {
                            last += 1;
                        }
                    }
                }
                format!("{entry}: saw {seen}, passed on {}, last for {last}", seen - last)
            })
            .collect();
    }

    /// The snapshot text. The kernel name is deliberately absent: the same
    /// snapshot must hold on every kernel unless the scenario says otherwise.
    pub fn snapshot(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "scenario: {}", self.scenario);
        match &self.agent {
            AgentOutcome::NotInChain => {}
            AgentOutcome::Started { attach, warnings } => {
                let _ = writeln!(s, "agent: started ({attach})");
                for w in warnings {
                    let _ = writeln!(s, "  warning: {w}");
                }
            }
            AgentOutcome::Refused { error } => {
                let _ = writeln!(s, "agent: refused: {error}");
            }
        }
        section(&mut s, "chain", self.chain.iter().map(|c| {
            format!("{:<7} {:<28} {:<22} entry={}", c.hook, c.api, c.program, c.entry)
        }));
        section(&mut s, "packets", self.packets.iter().map(|p| {
            format!("{}#{} {:<7} {} seen_by=[{}]", p.pcap, p.index, p.hook, p.frame, p.seen_by.join(","))
        }));
        section(&mut s, "output", self.output.iter().cloned());
        section(&mut s, "spans", self.spans.iter().cloned());
        section(&mut s, "ct", self.ct.iter().cloned());
        section(&mut s, "counters", self.counters.iter().map(|(k, v)| format!("{k}: {v}")));
        section(&mut s, "agent_counters", self.agent_counters.iter().map(|(k, v)| agent_counter_line(k, *v)));
        // Only scenarios with object entries have it: other snapshots stay as they are.
        if !self.maps.is_empty() {
            section(&mut s, "maps", self.maps.iter().flat_map(|m| {
                let head = if m.lines.is_empty() { format!("{}/{}: []", m.entry, m.map) } else { format!("{}/{}:", m.entry, m.map) };
                std::iter::once(head).chain(m.lines.iter().map(|l| format!("  {l}")))
            }));
        }
        if !self.verdicts.is_empty() {
            section(&mut s, "verdicts", self.verdicts.iter().cloned());
        }
        let _ = writeln!(s, "events_lost: {}", self.events_lost);
        s
    }

    /// The failed inline checks.
    pub fn failed_checks(&self) -> impl Iterator<Item = &CheckOutcome> {
        self.checks.iter().filter(|c| !c.passed)
    }
}

fn section(out: &mut String, name: &str, lines: impl Iterator<Item = String>) {
    let lines: Vec<String> = lines.collect();
    if lines.is_empty() {
        let _ = writeln!(out, "{name}: []");
        return;
    }
    let _ = writeln!(out, "{name}:");
    for line in lines {
        let _ = writeln!(out, "  {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_lists_sections_in_a_fixed_order_without_the_kernel() {
        let mut r = ScenarioResult::new("s", "6.12");
        r.agent = AgentOutcome::Started { attach: "tcx head".into(), warnings: vec!["w".into()] };
        r.chain.push(ChainLine {
            hook: "ingress".into(),
            api: "tcx".into(),
            program: "tclab_ingress".into(),
            entry: "agent".into(),
        });
        r.counters.insert("agent".into(), 3);
        let text = r.snapshot();
        assert!(!text.contains("6.12"), "{text}");
        let order: Vec<usize> = ["agent:", "chain:", "packets:", "output:", "spans:", "ct:", "counters:", "events_lost:"]
            .iter()
            .map(|k| text.find(k).unwrap_or_else(|| panic!("{k} missing in {text}")))
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert!(text.contains("  warning: w"));
    }

    #[test]
    fn segment_counters_show_only_that_they_moved_request_counters_show_their_value() {
        let mut r = ScenarioResult::new("s", "5.10");
        r.agent_counters.insert("backend.tcp_read".into(), 5);
        r.agent_counters.insert("frontend.ip_added".into(), 6);
        r.agent_counters.insert("backend.server_requests".into(), 2);
        r.agent_counters.insert("worker.tcp_read_extra".into(), 7);
        let text = r.snapshot();
        assert!(text.contains("  backend.tcp_read: >0\n"), "{text}");
        assert!(text.contains("  frontend.ip_added: >0\n"), "{text}");
        assert!(text.contains("  backend.server_requests: 2\n"), "{text}");
        assert!(text.contains("  worker.tcp_read_extra: 7\n"), "{text}");
        assert_eq!(agent_counter_line("tcp_read", 0), "tcp_read: 0");
    }

    fn packet(index: usize, seen_by: &[&str]) -> PacketLine {
        PacketLine {
            index,
            pcap: "x.pcap".into(),
            hook: "ingress".into(),
            frame: String::new(),
            seen_by: seen_by.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn verdicts_count_what_each_entry_passed_on_and_where_the_chain_ended() {
        let mut r = ScenarioResult::new("s", "host");
        r.packets = vec![packet(1, &["filter", "sink"]), packet(2, &["filter"]), packet(3, &["other"])];
        r.count_verdicts(&["filter".to_string(), "sink".to_string()]);
        assert_eq!(r.verdicts, ["filter: saw 2, passed on 1, last for 1", "sink: saw 1, passed on 0, last for 1"]);
        assert!(r.snapshot().contains("verdicts:\n  filter: saw 2, passed on 1, last for 1\n"), "{}", r.snapshot());
    }
}
