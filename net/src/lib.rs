//! Throwaway network namespaces, veth pairs, TC filter dumps and AF_PACKET
//! replay/capture, all from Rust (no `ip`, `tc` or shell at run time, so the
//! same code runs inside the lab's minimal VM guest, which needs only /proc
//! mounted).
//!
//! * [`NetNs`]: namespaces held by file descriptors only; everything
//!   namespace-scoped runs on a thread inside one ([`NetNs::run`]).
//! * [`create_veth_pair`], [`add_address`], [`add_neighbour`],
//!   [`set_link_up`], [`set_sysctl`], [`link_by_name`], [`list_links`]:
//!   topology, each entering the namespace it is given.
//! * [`tc`]: clsact qdisc and netlink filter dump/delete (called inside a
//!   namespace).
//! * [`packet`]: AF_PACKET injection and capture around the TC hooks
//!   (opened inside a namespace).
//!
//! Verified on the host kernel by this crate's tests (`cargo test -p tclab-net`, as root):
//! * a dropped [`NetNs`] is referenced by no process and its veth's peer
//!   disappears from the other namespace (`tests/netns.rs`);
//! * /proc/sys/net writes from a thread inside a namespace land in that
//!   namespace (`tests/veth.rs`);
//! * a veth pair made by [`create_veth_pair`] sends nothing while idle, while
//!   the same capture sees DAD/MLD once IPv6 is re-enabled (`tests/packet.rs`);
//! * ethertype-bound AF_PACKET sockets run after TC ingress, `ETH_P_ALL` taps
//!   before it; injection on a device crosses its TC egress; the filter dump
//!   order is the run order (`tests/packet.rs`, `tests/tc.rs`), also for
//!   filters attached by aya (`tests/aya_crosscheck.rs`).

mod error;
mod link;
mod netlink;
mod ns;
pub mod packet;
pub mod require;
mod sysctl;
pub mod tc;

pub use error::NetError;
pub use link::{
    Link, VethPair, add_address, add_neighbour, create_veth_pair, delete_link, link_by_name, list_links,
    set_link_up,
};
pub use ns::NetNs;
pub use sysctl::set_sysctl;
