//! Devices: veth pairs across namespaces, link state, addresses, static
//! neighbours. Each public function enters the namespace it is given (via
//! [`NetNs::try_run`]) and speaks rtnetlink there.

use std::net::IpAddr;
use std::os::fd::AsRawFd;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::netlink::{self, Op};
use crate::sysctl;
use crate::{NetError, NetNs};

/// A network device as seen from inside its namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface name.
    pub name: String,
    /// Interface index (only meaningful inside its namespace).
    pub ifindex: u32,
    /// Hardware address (all zero for devices without one, e.g. `lo`).
    pub mac: [u8; 6],
    /// Administratively up (`IFF_UP`).
    pub up: bool,
}

/// The two ends of a veth pair, each as seen from its own namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethPair {
    /// The end created in `ns_a`.
    pub a: Link,
    /// The peer, created directly in `ns_b`.
    pub b: Link,
}

fn check_ifname(op: &'static str, name: &str) -> Result<(), NetError> {
    // IFNAMSIZ is 16 including the NUL; '/' would escape /proc/sys paths.
    let bad = name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) || name == "." || name == "..";
    if bad {
        return Err(NetError::Invalid {
            op,
            object: format!("device name {name:?}"),
            reason: "must be 1-15 bytes without '/', space or NUL".to_owned(),
        });
    }
    Ok(())
}

/// Create veth `a_name` in `ns_a` with peer `b_name` in `ns_b` (the peer is
/// created directly in `ns_b` via `IFLA_NET_NS_FD`), both set up, IPv6
/// disabled on both (`disable_ipv6=1`, and `addr_gen_mode=1` so that enabling
/// it later makes no link-local address) so that no router solicitation, MLD
/// or DAD traffic pollutes replays; optional fixed MACs `(a, b)`.
///
/// On any failure after creation the pair is deleted again.
///
/// # Errors
/// [`NetError::Invalid`] for bad names, [`NetError::Netlink`] when the kernel
/// refuses (e.g. `EEXIST`), [`NetError::Sysctl`] when IPv6 cannot be disabled.
pub fn create_veth_pair(
    ns_a: &NetNs,
    a_name: &str,
    ns_b: &NetNs,
    b_name: &str,
    macs: Option<([u8; 6], [u8; 6])>,
) -> Result<VethPair, NetError> {
    check_ifname("create veth", a_name)?;
    check_ifname("create veth", b_name)?;
    let object = format!("{a_name} in ns {} (peer {b_name} in ns {})", ns_a.name(), ns_b.name());
    let msg = veth_message(a_name, ns_b, b_name, macs);
    ns_a.try_run(|| {
        netlink::execute(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &Op { what: "create veth", object: &object },
        )
    })??;
    let finish = || -> Result<VethPair, NetError> {
        sysctl::quiet_ipv6(ns_a, a_name)?;
        sysctl::quiet_ipv6(ns_b, b_name)?;
        set_link_up(ns_a, a_name)?;
        set_link_up(ns_b, b_name)?;
        Ok(VethPair { a: link_by_name(ns_a, a_name)?, b: link_by_name(ns_b, b_name)? })
    };
    finish().inspect_err(|_| {
        if let Err(e) = delete_link(ns_a, a_name) {
            tracing::warn!("cleanup after failed veth setup: {e}");
        }
    })
}

fn veth_message(a_name: &str, ns_b: &NetNs, b_name: &str, macs: Option<([u8; 6], [u8; 6])>) -> LinkMessage {
    let mut peer = LinkMessage::default();
    peer.attributes.push(LinkAttribute::IfName(b_name.to_owned()));
    peer.attributes.push(LinkAttribute::NetNsFd(ns_b.fd().as_raw_fd()));
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(a_name.to_owned()));
    if let Some((mac_a, mac_b)) = macs {
        msg.attributes.push(LinkAttribute::Address(mac_a.to_vec()));
        peer.attributes.push(LinkAttribute::Address(mac_b.to_vec()));
    }
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
    ]));
    msg
}

/// Delete device `ifname` in `ns` (deleting one end of a veth deletes both).
///
/// # Errors
/// [`NetError::NoSuchDevice`], or [`NetError::Netlink`] when the kernel refuses.
pub fn delete_link(ns: &NetNs, ifname: &str) -> Result<(), NetError> {
    let object = format!("{ifname} in ns {}", ns.name());
    ns.try_run(|| {
        let link = link_here(ns, "delete link", ifname)?;
        let mut msg = LinkMessage::default();
        msg.header.index = link.ifindex;
        netlink::execute(RouteNetlinkMessage::DelLink(msg), 0, &Op { what: "delete link", object: &object })
    })?
}

/// Set device `ifname` in `ns` administratively up.
///
/// # Errors
/// [`NetError::NoSuchDevice`], or [`NetError::Netlink`] when the kernel refuses.
pub fn set_link_up(ns: &NetNs, ifname: &str) -> Result<(), NetError> {
    let object = format!("{ifname} in ns {}", ns.name());
    ns.try_run(|| {
        let link = link_here(ns, "set link up", ifname)?;
        let mut msg = LinkMessage::default();
        msg.header.index = link.ifindex;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        netlink::execute(RouteNetlinkMessage::SetLink(msg), 0, &Op { what: "set link up", object: &object })
    })?
}

/// Add `addr/prefix_len` to `ifname` in `ns`. An IPv6 address first
/// re-enables IPv6 on the device (still without a link-local address) and is
/// added with `IFA_F_NODAD`; joining its solicited-node group may still emit
/// an MLD report, so replay topologies should not carry IPv6 addresses.
///
/// # Errors
/// [`NetError::NoSuchDevice`], [`NetError::Sysctl`], or [`NetError::Netlink`]
/// (e.g. `EEXIST` for a duplicate address).
pub fn add_address(ns: &NetNs, ifname: &str, addr: IpAddr, prefix_len: u8) -> Result<(), NetError> {
    let object = format!("{addr}/{prefix_len} on {ifname} in ns {}", ns.name());
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix_len > max {
        return Err(NetError::Invalid { op: "add address", object, reason: format!("prefix length above {max}") });
    }
    if addr.is_ipv6() {
        sysctl::set_sysctl(ns, &format!("net/ipv6/conf/{ifname}/disable_ipv6"), "0")?;
    }
    ns.try_run(|| {
        let link = link_here(ns, "add address", ifname)?;
        let mut msg = AddressMessage::default();
        msg.header.index = link.ifindex;
        msg.header.prefix_len = prefix_len;
        msg.header.family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        msg.attributes.push(AddressAttribute::Address(addr));
        match addr {
            IpAddr::V4(_) => msg.attributes.push(AddressAttribute::Local(addr)),
            IpAddr::V6(_) => {
                msg.header.flags = AddressHeaderFlags::Nodad;
                msg.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
        }
        netlink::execute(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &Op { what: "add address", object: &object },
        )
    })?
}

/// Add (or replace) a permanent neighbour entry `ip -> mac` on `ifname`, so
/// that traffic to `ip` needs no ARP/NDP exchange.
///
/// # Errors
/// [`NetError::NoSuchDevice`], or [`NetError::Netlink`] when the kernel refuses.
pub fn add_neighbour(ns: &NetNs, ifname: &str, ip: IpAddr, mac: [u8; 6]) -> Result<(), NetError> {
    let object = format!("{ip} on {ifname} in ns {}", ns.name());
    ns.try_run(|| {
        let link = link_here(ns, "add neighbour", ifname)?;
        let mut msg = NeighbourMessage::default();
        msg.header.ifindex = link.ifindex;
        msg.header.state = NeighbourState::Permanent;
        let (family, dest) = match ip {
            IpAddr::V4(v4) => (AddressFamily::Inet, NeighbourAddress::Inet(v4)),
            IpAddr::V6(v6) => (AddressFamily::Inet6, NeighbourAddress::Inet6(v6)),
        };
        msg.header.family = family;
        msg.attributes.push(NeighbourAttribute::Destination(dest));
        msg.attributes.push(NeighbourAttribute::LinkLocalAddress(mac.to_vec()));
        netlink::execute(
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
            &Op { what: "add neighbour", object: &object },
        )
    })?
}

/// The device named `name` in `ns`.
///
/// # Errors
/// [`NetError::NoSuchDevice`] when absent, [`NetError::Netlink`] when the dump fails.
pub fn link_by_name(ns: &NetNs, name: &str) -> Result<Link, NetError> {
    ns.try_run(|| link_here(ns, "look up link", name))?
}

/// Every device in `ns`, in ifindex order.
///
/// # Errors
/// [`NetError::Netlink`] / [`NetError::Decode`] when the dump fails.
pub fn list_links(ns: &NetNs) -> Result<Vec<Link>, NetError> {
    ns.try_run(|| list_links_here(ns.name()))?
}

fn link_here(ns: &NetNs, op: &'static str, name: &str) -> Result<Link, NetError> {
    list_links_here(ns.name())?
        .into_iter()
        .find(|l| l.name == name)
        .ok_or_else(|| NetError::NoSuchDevice { op, ifname: name.to_owned(), ns: ns.name().to_owned() })
}

/// Dump the links of the calling thread's namespace (`ns_name` is for errors).
pub(crate) fn list_links_here(ns_name: &str) -> Result<Vec<Link>, NetError> {
    let object = format!("links of ns {ns_name}");
    let answers = netlink::dump(
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        &Op { what: "list", object: &object },
    )?;
    let mut links: Vec<Link> = answers
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(link_from(l)),
            _ => None,
        })
        .collect();
    links.sort_by_key(|l| l.ifindex);
    Ok(links)
}

fn link_from(msg: LinkMessage) -> Link {
    let up = msg.header.flags.contains(LinkFlags::Up);
    let mut link = Link { name: String::new(), ifindex: msg.header.index, mac: [0; 6], up };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Address(a) if a.len() == 6 => link.mac.copy_from_slice(&a),
            _ => {}
        }
    }
    link
}
