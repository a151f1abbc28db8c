//! The tclab conformance lab: scenario files replayed through TC chains on the
//! host kernel or inside QEMU on pinned distro kernels.
pub mod frame;
pub mod snapshot;
pub mod rewrite;
pub mod kernels;
pub mod doctor;
pub mod interrupt;
pub mod scenario;
pub mod pcap;
pub mod fixtures;
pub mod vm;
pub mod guest;
pub mod runner;
pub mod bench;
pub mod adhoc;
pub mod byo;
pub mod matrix;
pub mod testserver;
pub mod report;
pub mod shard;
pub mod difffuzz;
pub mod fuzz_targets;
pub mod soak;
