//! Throwaway network namespaces, veth pairs, TC filter dumps and AF_PACKET
//! replay/capture, all from Rust (no `ip`, `tc` or shell at run time, so the
//! same code runs inside the lab's minimal VM guest).
//!
//! Namespaces are held by file descriptors only ([`NetNs`]); everything
//! namespace-scoped runs on a thread inside the namespace ([`NetNs::run`]).

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
