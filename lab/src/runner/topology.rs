//! The throwaway topology of one scenario: two fd-held network namespaces
//! joined by a veth pair, addressed as the scenario says.
//!
//! Nothing is bind-mounted, so when this value is dropped (or the process dies
//! however it dies) the kernel destroys both namespaces, the veths in them,
//! and every qdisc and filter attached to those veths.

use std::sync::atomic::{AtomicU32, Ordering};

use tclab_net::{Link, NetError, NetNs};

use crate::scenario::Topology;

/// The built topology: the device under test in `dut`, its peer in `peer`.
#[derive(Debug)]
pub struct Built {
    pub dut: NetNs,
    pub peer: NetNs,
    pub device: Link,
    pub peer_link: Link,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Build the topology.
///
/// The scenario's addresses are deliberately *not* configured on the veths:
/// they only decide each replayed packet's direction. Without addresses
/// neither namespace's stack answers a replayed packet (no RST, ICMP or ARP
/// of the kernel's own joins the run at a timing-dependent position), while
/// the chain still sees every frame. Namespace names carry the pid and a sequence number so
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
    Ok(Built { dut, peer, device: pair.a, peer_link: pair.b })
}
