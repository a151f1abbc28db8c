//! The crate's one error type. Every variant names the operation and the
//! object (namespace, device, sysctl path, ifindex) it failed on.

use std::io;

/// An error from `tclab-net`: what was being done, to what, and why it failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A namespace operation (unshare, setns, opening an ns file) failed.
    #[error("failed to {op} for network namespace {ns}: {source}")]
    Namespace {
        /// What was being done, e.g. "unshare(CLONE_NEWNET)".
        op: &'static str,
        /// The namespace's human name.
        ns: String,
        /// The OS error.
        source: io::Error,
    },
    /// The kernel refused a netlink request (or the socket failed).
    #[error("failed to {op} {object}: {source}{}", ext_ack.as_deref().map(|m| format!(" (kernel says: {m})")).unwrap_or_default())]
    Netlink {
        /// The request, e.g. "create veth".
        op: String,
        /// The object, e.g. "veth0 in ns lab-a".
        object: String,
        /// The errno the kernel returned.
        source: io::Error,
        /// The kernel's extended-ack message, when it sent one.
        ext_ack: Option<String>,
    },
    /// A netlink answer could not be decoded.
    #[error("failed to decode the netlink answer to {op} {object}: {reason}")]
    Decode {
        /// The request whose answer was bad.
        op: String,
        /// The object of the request.
        object: String,
        /// What was wrong.
        reason: String,
    },
    /// A device looked up by name does not exist in the namespace.
    #[error("failed to {op}: no device named {ifname:?} in network namespace {ns}")]
    NoSuchDevice {
        /// What was being done.
        op: &'static str,
        /// The name looked up.
        ifname: String,
        /// The namespace searched.
        ns: String,
    },
    /// Writing a sysctl under /proc/sys failed.
    #[error("failed to set sysctl {path} = {value:?} in network namespace {ns}: {source}")]
    Sysctl {
        /// The /proc/sys path.
        path: String,
        /// The value written.
        value: String,
        /// The namespace the write was done in.
        ns: String,
        /// The OS error.
        source: io::Error,
    },
    /// An AF_PACKET socket operation failed.
    #[error("failed to {op} on AF_PACKET socket for ifindex {ifindex}: {source}")]
    Packet {
        /// What was being done, e.g. "send frame".
        op: String,
        /// The device the socket is bound to.
        ifindex: u32,
        /// The OS error.
        source: io::Error,
    },
    /// An argument was unusable (bad name, bad key, wrong length).
    #[error("failed to {op} {object}: {reason}")]
    Invalid {
        /// What was being done.
        op: &'static str,
        /// The offending object.
        object: String,
        /// Why it is unusable.
        reason: String,
    },
}
