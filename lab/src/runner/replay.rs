//! Replaying a capture through the device under test, one packet at a time.
//!
//! A packet whose source is a local address is sent on the device itself, so
//! it crosses the device's TC egress; every other packet is sent on the peer,
//! so it arrives at the device's TC ingress. After each packet the runner
//! waits until the first program on that hook has counted it (TC runs the
//! whole chain in one pass), then reads every entry's counter: the entries
//! whose counter moved are the ones that saw the packet.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use etherparse::{NetSlice, SlicedPacket};
use tclab_net::packet::Injector;

use crate::frame;
use crate::rewrite;
use crate::scenario::{Direction, Pacing, Replay, Topology};

use super::report::PacketLine;

/// How long a packet may take to reach the first program of its hook.
const PACKET_SEEN_TIMEOUT: Duration = Duration::from_millis(500);

/// Per-entry packet counters of the chain, in chain order.
pub trait ChainCounters {
    /// Entry names, in chain order.
    fn names(&self) -> Vec<String>;
    /// Current packet count of every entry, same order as `names`.
    fn read(&self) -> anyhow::Result<Vec<u64>>;
    /// Index of the entry that runs first on `hook`, if any runs there.
    fn first_on(&self, hook: Direction) -> Option<usize>;
}

/// The two ways into the device's chain.
pub struct Injectors {
    /// On the peer: frames arrive at the device's ingress.
    pub ingress: Injector,
    /// On the device: frames cross its egress.
    pub egress: Injector,
}

/// Replay one `[[replay]]` entry; returns one line per packet.
pub fn replay(
    replay: &Replay,
    topology: &Topology,
    injectors: &Injectors,
    counters: &dyn ChainCounters,
) -> anyhow::Result<Vec<PacketLine>> {
    use anyhow::Context as _;
    let packets = crate::pcap::read_file(&replay.pcap)
        .with_context(|| format!("failed to read {}", replay.pcap.display()))?;
    let pcap_name = file_name(&replay.pcap);
    let names = counters.names();
    let mut lines = Vec::with_capacity(packets.len());
    let mut previous_ts = None;
    for packet in packets {
        pace(replay.pacing, previous_ts, packet.ts);
        previous_ts = Some(packet.ts);
        let mut data = packet.data.clone();
        rewrite::apply(&replay.rewrite, &mut data)
            .with_context(|| format!("{}: packet {}: rewrite", replay.pcap.display(), packet.index))?;
        let hook = hook_of(&data, topology);
        let before = counters.read()?;
        let injector = match hook {
            Direction::Egress => &injectors.egress,
            _ => &injectors.ingress,
        };
        injector
            .send(&data)
            .with_context(|| format!("{}: packet {}: inject", replay.pcap.display(), packet.index))?;
        let after = wait_until_seen(counters, hook, &before)?;
        let seen_by = names
            .iter()
            .zip(before.iter().zip(&after))
            .filter(|(_, (b, a))| a > b)
            .map(|(n, _)| n.clone())
            .collect();
        lines.push(PacketLine {
            index: packet.index,
            pcap: pcap_name.clone(),
            hook: hook_name(hook).to_string(),
            frame: frame::summarize(&data).to_string(),
            seen_by,
        });
    }
    Ok(lines)
}

fn wait_until_seen(
    counters: &dyn ChainCounters,
    hook: Direction,
    before: &[u64],
) -> anyhow::Result<Vec<u64>> {
    let Some(first) = counters.first_on(hook) else {
        return counters.read();
    };
    let deadline = Instant::now() + PACKET_SEEN_TIMEOUT;
    loop {
        let now = counters.read()?;
        if now[first] > before[first] || Instant::now() >= deadline {
            return Ok(now);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn pace(pacing: Pacing, previous: Option<Duration>, ts: Duration) {
    if let (Pacing::Scale(factor), Some(prev)) = (pacing, previous) {
        let gap = ts.saturating_sub(prev).mul_f64(factor.max(0.0));
        std::thread::sleep(gap.min(Duration::from_secs(10)));
    }
}

/// Egress when the source is one of the local side's addresses; ingress for
/// everything else, non-IP frames included.
fn hook_of(frame: &[u8], topology: &Topology) -> Direction {
    let src = SlicedPacket::from_ethernet(frame).ok().and_then(|p| match p.net {
        Some(NetSlice::Ipv4(v4)) => Some(IpAddr::from(v4.header().source_addr())),
        Some(NetSlice::Ipv6(v6)) => Some(IpAddr::from(v6.header().source_addr())),
        None => None,
    });
    match src {
        Some(ip) => topology.direction_of(ip),
        None => Direction::Ingress,
    }
}

pub fn hook_name(hook: Direction) -> &'static str {
    match hook {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
        Direction::Both => "both",
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}
