//! tclab's TC datapath and tracing agent.
//!
//! The kernel side is C (`ebpf/`); this crate embeds the built objects, loads
//! and attaches them, and turns their events into spans. The `tclab-agent`
//! binary is a thin CLI over [`agent`]; the lab embeds the same library.

pub mod agent;
pub mod attach;
pub mod chain;
pub mod ct;
pub mod events;
pub mod frames;
pub mod http_ref;
pub mod kernel_btf;
pub mod loader;
pub mod metrics;
pub mod otlp;
pub mod probe;
pub mod propagation;
pub mod span;
pub mod types;
pub mod verifier;
pub mod w3c;
