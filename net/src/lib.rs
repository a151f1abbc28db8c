//! Throwaway network namespaces, veth pairs, TC filter dumps and AF_PACKET
//! replay/capture, all from Rust (no `ip`, `tc` or shell at run time, so the
//! same code runs inside the lab's minimal VM guest).

pub mod require;
