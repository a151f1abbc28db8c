//! The throwaway topology of one scenario: two fd-held network namespaces
//! joined by a veth pair, addressed as the scenario says.
//!
//! Nothing is bind-mounted, so when this value is dropped (or the process dies
//! however it dies) the kernel destroys both namespaces, the veths in them,
//! and every qdisc and filter attached to those veths.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};

use tclab_net::{Link, NetError, NetNs};

use crate::scenario::{Endpoint, Topology};

/// The built topology: the device under test in `dut`, its peer in `peer`.
#[derive(Debug)]
pub struct Built {
    pub dut: NetNs,
    pub peer: NetNs,
    pub device: Link,
    pub peer_link: Link,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Build the topology. Namespace names carry the pid and a sequence number so
/// that two `tclab run` at once, or scenarios in parallel, never collide (and
/// the names are only labels: nothing global is created under them).
pub fn build(topology: &Topology) -> Result<Built, NetError> {
    let seq = NEXT.fetch_add(1, Ordering::Relaxed);
    let tag = format!("tclab-{}-{seq}", std::process::id());
    let dut = NetNs::new(&format!("{tag}-dut"))?;
    let peer = NetNs::new(&format!("{tag}-peer"))?;
    let (dev, peer_ep) = (&topology.device, &topology.peer);
    let pair = tclab_net::create_veth_pair(
        &dut,
        &dev.name,
        &peer,
        &peer_ep.name,
        Some((dev.mac, peer_ep.mac)),
    )?;
    configure(&dut, dev, peer_ep)?;
    configure(&peer, peer_ep, dev)?;
    Ok(Built { dut, peer, device: pair.a, peer_link: pair.b })
}

/// Addresses on `me`, and static neighbour entries for `other` so that no ARP
/// or neighbour discovery traffic crosses the chain during a replay.
fn configure(ns: &NetNs, me: &Endpoint, other: &Endpoint) -> Result<(), NetError> {
    if let Some((ip, prefix)) = me.ipv4 {
        tclab_net::add_address(ns, &me.name, IpAddr::V4(ip), prefix)?;
    }
    // IPv6 addresses are not configured: joining their solicited-node group
    // sends an MLD report through the device's egress, which would show up in
    // the chain's counters and CT. Replays only need the addresses to decide
    // each packet's direction, which the scenario itself answers.
    let _ = me.ipv6;
    if let Some((ip, _)) = other.ipv4 {
        tclab_net::add_neighbour(ns, &me.name, IpAddr::V4(ip), other.mac)?;
    }
    Ok(())
}
