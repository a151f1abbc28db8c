//! The CT table in the shape of `cilium bpf ct list global`, as JSON, and in
//! a normalised form for snapshots (no timestamps, a state name instead).
//!
//! Cilium prints `TCP OUT 10.0.0.1:5555 -> 10.0.0.2:80 expires=… RxPackets=…
//! RxBytes=… RxFlagsSeen=0x… LastRxReport=… TxPackets=… TxBytes=…
//! TxFlagsSeen=0x… LastTxReport=… Flags=0x… [ RxClosing … ] …`, with
//! Go's `%#02x`/`%#04x` (zero-padded digits after `0x`). We keep that order
//! and spelling; fields Cilium has and we do not track (RevNAT, security
//! identity, report timestamps) are left out rather than printed as zeros,
//! except `LastRxReport`/`LastTxReport`, which keep the column positions and
//! are always 0 here.

use std::fmt::Write as _;

use aya::maps::{HashMap as BpfHashMap, Map, MapData, MapError, loaded_maps};
use serde::{Deserialize, Serialize};

pub use crate::types::ct_flags as flag;
use crate::types::{CtEntry, CtTuple};

/// Errors reading a CT map.
#[derive(Debug, thiserror::Error)]
pub enum CtError {
    /// The map could not be opened or read.
    #[error("failed to {op} CT map {name}: {source}")]
    Map {
        /// What was being done.
        op: &'static str,
        /// Map name or id.
        name: String,
        /// aya's error.
        source: MapError,
    },
    /// No or several maps of that name are loaded.
    #[error("failed to find the CT map: {0}")]
    NotFound(String),
    /// A key holds an impossible value.
    #[error("failed to decode CT key in map {name}: {reason}")]
    Decode {
        /// Map name.
        name: String,
        /// What was wrong.
        reason: String,
    },
}

/// Connection state derived from the entry's flags (Cilium keeps no state
/// field; this is what the flags mean).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CtState {
    /// Only the opening packet(s) seen (TCP: SYN only; others: no reply yet).
    New,
    /// Traffic past the handshake (TCP) or a reply seen (others).
    Established,
    /// FIN or RST seen from either side.
    Closing,
}

impl CtState {
    /// Upper-case name, as in snapshots and JSON.
    pub fn name(self) -> &'static str {
        match self {
            CtState::New => "NEW",
            CtState::Established => "ESTABLISHED",
            CtState::Closing => "CLOSING",
        }
    }
}

/// One CT entry: the key and its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtRecord {
    /// Originator-direction tuple.
    pub tuple: CtTuple,
    /// The value.
    pub entry: CtEntry,
}

fn endpoint(ip: std::net::IpAddr, port: Option<u16>) -> String {
    match (ip, port) {
        (std::net::IpAddr::V4(v4), Some(p)) => format!("{v4}:{p}"),
        (std::net::IpAddr::V6(v6), Some(p)) => format!("[{v6}]:{p}"),
        (ip, None) => ip.to_string(),
    }
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "TCP".into(),
        17 => "UDP".into(),
        1 => "ICMP".into(),
        58 => "ICMPv6".into(),
        other => format!("proto{other}"),
    }
}

/// Cilium's flag list: `[ RxClosing TxClosing SeenNonSyn ]`.
pub fn flags_string(flags: u8) -> String {
    let mut s = String::from("[ ");
    for (bit, name) in flag::NAMES {
        if flags & bit != 0 {
            s.push_str(name);
            s.push(' ');
        }
    }
    let unknown = flags & !(flag::HTTP_PENDING << 1).wrapping_sub(1);
    if unknown != 0 {
        let _ = write!(s, "Unknown=0x{unknown:04x} ");
    }
    s.push(']');
    s
}

impl CtRecord {
    /// State derived from flags.
    pub fn state(&self) -> CtState {
        let f = self.entry.flags;
        if f & (flag::RX_CLOSING | flag::TX_CLOSING) != 0 {
            CtState::Closing
        } else if self.tuple.nexthdr == 6 {
            if f & flag::SEEN_NON_SYN != 0 { CtState::Established } else { CtState::New }
        } else if self.entry.rx_packets > 0 {
            CtState::Established
        } else {
            CtState::New
        }
    }

    fn head(&self) -> String {
        let dir = if self.entry.created_dir == 0 { "IN" } else { "OUT" };
        let t = &self.tuple;
        let (src, dst) = (endpoint(t.src_ip(), Some(t.src_port())), endpoint(t.dst_ip(), Some(t.dst_port())));
        format!("{} {dir} {src} -> {dst}", proto_name(t.nexthdr))
    }

    /// `TCP 10.0.0.1:5555 -> 10.0.0.2:80` (`ICMP 10.0.0.1 -> 10.0.0.2`: no
    /// ports for ICMP): the tuple without the direction, as scenario files
    /// name a CT entry.
    pub fn tuple_line(&self) -> String {
        let t = &self.tuple;
        let port = |p: u16| (!matches!(t.nexthdr, 1 | 58)).then_some(p);
        let (src, dst) = (endpoint(t.src_ip(), port(t.src_port())), endpoint(t.dst_ip(), port(t.dst_port())));
        format!("{} {src} -> {dst}", proto_name(t.nexthdr))
    }

    fn counters(&self) -> String {
        let e = &self.entry;
        format!(
            "RxPackets={} RxBytes={} RxFlagsSeen=0x{:02x} LastRxReport=0 TxPackets={} TxBytes={} TxFlagsSeen=0x{:02x} LastTxReport=0 Flags=0x{:04x} {}",
            e.rx_packets,
            e.rx_bytes,
            e.rx_flags_seen,
            e.tx_packets,
            e.tx_bytes,
            e.tx_flags_seen,
            e.flags,
            flags_string(e.flags)
        )
    }

    /// Cilium's line. `now_ns` (CLOCK_MONOTONIC) gives the remaining time;
    /// `expires` is in seconds of the monotonic clock, like Cilium's.
    pub fn cilium_line(&self, now_ns: u64) -> String {
        let remaining = (self.entry.expires_ns as i128 - now_ns as i128) / 1_000_000_000;
        format!(
            "{} expires={} (remaining: {remaining} sec(s)) {}",
            self.head(),
            self.entry.expires_ns / 1_000_000_000,
            self.counters()
        )
    }

    /// Deterministic line for snapshots: no timestamps, the derived state.
    pub fn normalised_line(&self) -> String {
        format!("{} state={} {}", self.head(), self.state().name(), self.counters())
    }
}

/// JSON shape of one record for `ct list --output json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CtJson {
    /// The record.
    #[serde(flatten)]
    pub record: CtRecord,
    /// Derived state.
    pub state: CtState,
    /// Seconds until expiry (negative: expired, awaiting GC).
    pub remaining_secs: i64,
}

/// Sort records by tuple so listings are stable.
pub fn sort_records(records: &mut [CtRecord]) {
    records.sort_by_key(|r| r.tuple.sort_key());
}

/// Read every entry of a CT map (LRU or plain hash). Keys deleted while
/// iterating (GC, LRU eviction) are skipped.
///
/// # Errors
/// [`CtError`] when the map has the wrong type or sizes, or a key is corrupt.
pub fn read_ct(map: &Map, name: &str) -> Result<Vec<CtRecord>, CtError> {
    let hm: BpfHashMap<&MapData, CtTuple, CtEntry> =
        BpfHashMap::try_from(map).map_err(|source| CtError::Map { op: "open", name: name.to_owned(), source })?;
    collect(&hm, name)
}

fn collect(hm: &BpfHashMap<&MapData, CtTuple, CtEntry>, name: &str) -> Result<Vec<CtRecord>, CtError> {
    let mut out = Vec::new();
    for item in hm.iter() {
        let (tuple, entry) = match item {
            Ok(kv) => kv,
            Err(MapError::KeyNotFound) => continue,
            Err(source) => return Err(CtError::Map { op: "iterate", name: name.to_owned(), source }),
        };
        tuple.validate().map_err(|reason| CtError::Decode { name: name.to_owned(), reason })?;
        out.push(CtRecord { tuple, entry });
    }
    sort_records(&mut out);
    Ok(out)
}

/// Find a loaded map by name among every BPF map on the system (for
/// `tclab-agent ct list` in another process: nothing is pinned).
/// `id` picks one when several agents run.
///
/// # Errors
/// [`CtError::NotFound`] when none, or several without `id`, match.
pub fn find_loaded_map(name: &str, id: Option<u32>) -> Result<Map, CtError> {
    let mut found = Vec::new();
    for info in loaded_maps().flatten() {
        if info.name_as_str() == Some(name) && id.is_none_or(|want| info.id() == want) {
            found.push(info.id());
        }
    }
    match found.as_slice() {
        [] => Err(CtError::NotFound(format!("no loaded BPF map named {name:?}{}; is tclab-agent running?", id.map(|i| format!(" with id {i}")).unwrap_or_default()))),
        [one] => {
            let data = MapData::from_id(*one).map_err(|source| CtError::Map { op: "open by id", name: format!("{name} (id {one})"), source })?;
            Map::from_map_data(data).map_err(|source| CtError::Map { op: "wrap", name: format!("{name} (id {one})"), source })
        }
        many if id.is_none() => {
            // Several (tests or the lab embed agents too): prefer the one held
            // by a running `tclab-agent` process, if exactly one is.
            let agents: Vec<u32> = agent_pids()
                .into_iter()
                .flat_map(|pid| map_ids_of_process(pid).unwrap_or_default())
                .filter(|i| many.contains(i))
                .collect();
            match agents.as_slice() {
                [one] => find_loaded_map(name, Some(*one)),
                _ => Err(CtError::NotFound(format!(
                    "several maps named {name:?} (ids {many:?}; several agents running?): pick one with --pid or --map-id"
                ))),
            }
        }
        many => Err(CtError::NotFound(format!(
            "several maps named {name:?} (ids {many:?}; several agents running?): pick one with --pid or --map-id"
        ))),
    }
}

/// Ids of the BPF maps process `pid` holds open (from the `map_id:` lines
/// of `/proc/<pid>/fdinfo/*`), to find one agent's map among several.
///
/// # Errors
/// [`CtError::NotFound`] when `/proc/<pid>/fdinfo` cannot be read.
pub fn map_ids_of_process(pid: u32) -> Result<Vec<u32>, CtError> {
    let dir = format!("/proc/{pid}/fdinfo");
    let entries = std::fs::read_dir(&dir).map_err(|e| CtError::NotFound(format!("failed to read {dir}: {e}")))?;
    let mut ids: Vec<u32> = entries
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| info.lines().find_map(|l| l.strip_prefix("map_id:").and_then(|v| v.trim().parse().ok())))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Pids of running processes named `tclab-agent` (from `/proc/*/comm`).
fn agent_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "tclab-agent"))
        .collect()
}

/// Find the CT map held by process `pid` (a running `tclab-agent`).
///
/// # Errors
/// [`CtError::NotFound`] when that process holds no map named `name`.
pub fn find_map_of_process(name: &str, pid: u32) -> Result<Map, CtError> {
    let ids = map_ids_of_process(pid)?;
    let id = loaded_maps()
        .flatten()
        .find(|m| ids.contains(&m.id()) && m.name_as_str() == Some(name))
        .map(|m| m.id())
        .ok_or_else(|| CtError::NotFound(format!("process {pid} holds no BPF map named {name:?}")))?;
    find_loaded_map(name, Some(id))
}

/// Current CLOCK_MONOTONIC in ns (the clock of `expires_ns`).
pub fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// `entries / max`, 0 when max is 0.
pub fn pressure(entries: u64, max: u64) -> f64 {
    if max == 0 { 0.0 } else { entries as f64 / max as f64 }
}

/// `ct list --output json` body.
pub fn to_json(records: &[CtRecord], now_ns: u64) -> Vec<CtJson> {
    records
        .iter()
        .map(|r| CtJson {
            record: r.clone(),
            state: r.state(),
            remaining_secs: ((r.entry.expires_ns as i128 - now_ns as i128) / 1_000_000_000) as i64,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(flags: u8) -> CtRecord {
        CtRecord {
            tuple: CtTuple::new("10.0.0.1:5555".parse().unwrap(), "10.0.0.2:80".parse().unwrap(), 6),
            entry: CtEntry {
                tx_packets: 3,
                tx_bytes: 180,
                rx_packets: 2,
                rx_bytes: 120,
                created_ns: 1,
                expires_ns: 21_700_000_000_000,
                tx_flags_seen: 0x12,
                rx_flags_seen: 0x1a,
                flags,
                created_dir: 1,
                last_status: 1,
                _pad: [0; 3],
            },
        }
    }

    #[test]
    fn tuple_line_omits_direction_and_icmp_ports() {
        let mut r = rec(0);
        assert_eq!(r.tuple_line(), "TCP 10.0.0.1:5555 -> 10.0.0.2:80");
        r.tuple.nexthdr = 1;
        assert_eq!(r.tuple_line(), "ICMP 10.0.0.1 -> 10.0.0.2");
        r.tuple = CtTuple::new("[fd00::1]:53".parse().unwrap(), "[fd00::2]:53".parse().unwrap(), 17);
        assert_eq!(r.tuple_line(), "UDP [fd00::1]:53 -> [fd00::2]:53");
    }

    #[test]
    fn cilium_shape() {
        let r = rec(flag::SEEN_NON_SYN | flag::RX_CLOSING | flag::TX_CLOSING);
        assert_eq!(
            r.cilium_line(100_000_000_000),
            "TCP OUT 10.0.0.1:5555 -> 10.0.0.2:80 expires=21700 (remaining: 21600 sec(s)) RxPackets=2 RxBytes=120 RxFlagsSeen=0x1a LastRxReport=0 TxPackets=3 TxBytes=180 TxFlagsSeen=0x12 LastTxReport=0 Flags=0x0007 [ RxClosing TxClosing SeenNonSyn ]"
        );
        assert_eq!(r.state(), CtState::Closing);
        assert_eq!(rec(flag::SEEN_NON_SYN).state(), CtState::Established);
        assert_eq!(rec(0).state(), CtState::New);
        assert!(rec(flag::SEEN_NON_SYN).normalised_line().contains("state=ESTABLISHED"));
        assert_eq!(flags_string(0x30), "[ Unknown=0x0030 ]");
    }
}
