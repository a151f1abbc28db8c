//! New connections with the CT map 0%, 50%, 97% and 100% full, LRU and hash
//! (the field report: "a CT table at 97% slowed new connections").
//!
//! The map is pre-filled from user space with established TCP entries (far
//! future expiry), then fresh-tuple SYNs go through `tclab_egress` one
//! `test_run` each (see `packet.rs` for why a SYN cannot be repeated), with
//! the timer overhead (empty classifier r=1 − hot) subtracted. Occupancy is
//! counted from the map itself before each level's SYNs. On a full hash map
//! every insert must fail, be counted (`CtInsertFailed`) and the packet
//! still pass (TC_ACT_UNSPEC).

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use aya::maps::{HashMap, MapData, MapError};
use tclab_datapath::frames;
use tclab_datapath::loader::{CtMapKind, DatapathConfig, DEFAULT_CT_MAX_ENTRIES, Hook, MAP_CT, empty_classifier, monotonic_now_ns};
use tclab_datapath::types::{CtEntry, CtStatus, CtTuple, ct_flags};

use super::packet::{Loaded, syn_cost};
use super::report::{Row, SectionReport, Target};
use super::Section;

const LEVELS: [u32; 4] = [0, 50, 97, 100];

/// Run the section.
///
/// # Errors
/// Loading, filling or running failed, a verdict was not TC_ACT_UNSPEC, or
/// the full hash map did not count its failed inserts.
pub fn run(quick: bool) -> anyhow::Result<SectionReport> {
    let (size, syns, samples) = if quick { (16_384u32, 100usize, 3usize) } else { (DEFAULT_CT_MAX_ENTRIES, 4_000, 3) };
    let mut report = SectionReport::new(
        Section::Ct,
        "CT under pressure: new connections (TCP SYN, CT miss)",
        "the same map kind at 0% full, same run",
    );
    let empty = empty_classifier().context("load the empty classifier")?;
    let mut next_syn = 0u32;
    // The kernel gives a hash map roundup_pow_of_two(max_entries) buckets:
    // at Cilium's 2^19 a full map has one entry per bucket on average, and
    // every lookup of a new tuple walks that chain (cache misses). One entry
    // more doubles the buckets (+8 MiB of bucket heads): the third variant
    // measures what that headroom buys.
    let variants = [(CtMapKind::Lru, size, "LRU"), (CtMapKind::Hash, size, "hash"), (CtMapKind::Lru, size + 1, "LRU, 2× buckets")];
    for (kind, size, kind_name) in variants {
        let mut l = Loaded::new(&DatapathConfig { ct_max_entries: size, ct_map: kind, ..DatapathConfig::default() })?;
        let mut next_fill = 0u32;
        let mut zero = 0.0;
        for level in LEVELS {
            let target = u64::from(size) * u64::from(level) / 100;
            let occupancy = fill(&mut l, target, &mut next_fill).with_context(|| format!("fill the {kind_name} map to {level}%"))?;
            let c = syn_cost(&empty, &mut l, Hook::Egress, syns, samples, 100_000, false, &mut next_syn)
                .with_context(|| format!("{kind_name} {level}%"))?;
            let (failed, inserted, runs) = (c.failed, c.inserted, c.runs);
            if kind == CtMapKind::Hash && level == 100 && failed != runs {
                bail!("full hash map: {runs} SYNs but CtInsertFailed +{failed}: a failed insert went uncounted");
            }
            let value = c.hot_equivalent();
            if level == 0 {
                zero = value;
            }
            let note = format!(
                "{occupancy} of {size} entries ({:.1}%) before; {runs} SYNs: CtNew +{inserted}, CtInsertFailed +{failed}; r=1: SYN {:.0} ns, ACK hit {:.0} ns; slowest SYN {:.0} ns",
                occupancy as f64 * 100.0 / f64::from(size),
                c.syn_r1,
                c.ack_r1,
                c.worst
            );
            let mut row = Row::ratio(format!("{kind_name} · {level}% full"), value, zero, "ns").note(note);
            if level == 97 {
                row = row.target(Target::RatioAtMost(1.3));
            }
            report.rows.push(row);
        }
    }
    report.notes.push(format!(
        "CT map of {size} entries (Cilium's default size in full mode; \"2× buckets\": {} entries, for which the kernel allocates {} buckets instead of {size}); {samples} samples × {syns} fresh-tuple SYNs per level, one test_run each (r=1), value = SYN r1 − ACK r1 + ACK hot (see the per-packet section); ring drained every 1024 runs",
        size + 1,
        (size + 1).next_power_of_two()
    ));
    report.notes.push("pre-filled from user space with established TCP entries expiring in 1 h; occupancy counted by iterating the map".into());
    Ok(report)
}

/// A pre-filled entry: established TCP with a far expiry.
fn entry(now: u64) -> CtEntry {
    CtEntry {
        tx_packets: 3,
        tx_bytes: 180,
        rx_packets: 2,
        rx_bytes: 120,
        created_ns: now,
        expires_ns: now + 3_600_000_000_000,
        tx_flags_seen: 0x12,
        rx_flags_seen: 0x12,
        flags: ct_flags::SEEN_NON_SYN,
        created_dir: 1,
        last_status: CtStatus::Established as u8,
        _pad: [0; 3],
    }
}

/// Fill the CT map until it holds `target` entries (or is full); returns
/// the occupancy counted from the map.
fn fill(l: &mut Loaded, target: u64, next: &mut u32) -> anyhow::Result<u64> {
    let server: SocketAddr = frames::sa("10.0.0.3:443");
    let now = monotonic_now_ns();
    let map = l.dp.ebpf_mut().map_mut(MAP_CT).context("the datapath has no CT map")?;
    let mut ct: HashMap<&mut MapData, CtTuple, CtEntry> = HashMap::try_from(map).context("the CT map is not a hash map")?;
    let mut count = ct.keys().count() as u64;
    // An LRU map evicts a little before max_entries (per-CPU free lists), so
    // its "full" is where it plateaus: a few passes, not a loop until exact.
    for _pass in 0..3 {
        if count >= target {
            break;
        }
        let want = target - count;
        for _ in 0..want {
            *next += 1;
            // 10.128.0.0/9 for pre-filled clients: never a SYN's tuple
            let ip = std::net::Ipv4Addr::from(0x0a80_0000 | (*next & 0x007f_ffff));
            let tuple = CtTuple::new(SocketAddr::new(ip.into(), 50_000), server, 6);
            match ct.insert(tuple, entry(now), 0) {
                Ok(()) => {}
                Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::E2BIG) => {
                    // a full plain hash map: that is 100%
                    return Ok(ct.keys().count() as u64);
                }
                Err(e) => return Err(e).context("insert a CT entry"),
            }
        }
        count = ct.keys().count() as u64;
    }
    Ok(count)
}
