//! `#[repr(C)]` mirrors of `ebpf/include/propagation_types.h`, checked
//! against the object's BTF by `layouts_match_c`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::Serialize;

use crate::types::{AF_INET, AF_INET6};

/// `enum prop_mode_bit`.
pub mod mode_bits {
    pub const HEADERS: u32 = 1 << 0;
    pub const TCP: u32 = 1 << 1;
    pub const IP: u32 = 1 << 2;
    pub const CORRELATE: u32 = 1 << 3;
}

/// `struct prop_key`: a connection as its socket sees it (ports host order).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PropKey {
    pub local: [u8; 16],
    pub remote: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    pub family: u8,
    pub _pad: [u8; 3],
}

fn addr(family: u8, bytes: &[u8; 16], port: u16) -> SocketAddr {
    let ip = if family == AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    } else {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    };
    SocketAddr::new(ip, port)
}

impl PropKey {
    /// This side of the connection.
    pub fn local(&self) -> SocketAddr {
        addr(self.family, &self.local, self.local_port)
    }

    /// The other side.
    pub fn remote(&self) -> SocketAddr {
        addr(self.family, &self.remote, self.remote_port)
    }

    /// The key of `local` talking to `remote`.
    pub fn new(local: SocketAddr, remote: SocketAddr) -> PropKey {
        let mut k = PropKey { local_port: local.port(), remote_port: remote.port(), ..PropKey::default() };
        for (ip, out) in [(local.ip(), &mut k.local), (remote.ip(), &mut k.remote)] {
            match ip {
                IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
                IpAddr::V6(v6) => out.copy_from_slice(&v6.octets()),
            }
        }
        k.family = if local.is_ipv6() { AF_INET6 } else { AF_INET };
        k
    }
}

/// `struct prop_ctx`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PropCtx {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
    pub origin: u8,
    pub tp_status: u8,
    /// The connection's payload is not HTTP (TLS).
    pub opaque: u8,
    /// Taken by a reading thread (`tclab_prop_in`), or its request ended
    /// (`tclab_prop_threads`): entries are marked, not deleted.
    pub spent: u8,
    /// Carriers that took a client context already (`enum prop_carried`).
    pub carried: u8,
    pub _pad: [u8; 2],
}

/// `struct prop_thread`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PropThread {
    pub ctx: PropCtx,
    pub conn: PropKey,
}

/// `enum prop_origin`: where a context came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// A new trace.
    New,
    /// A valid traceparent header of the request.
    Header,
    /// Our TCP option.
    Tcp,
    /// Our IP option.
    Ip,
    /// The server request the thread is serving.
    Thread,
    /// The application's own traceparent.
    App,
}

impl Origin {
    pub fn from_raw(v: u8) -> Option<Origin> {
        Some(match v {
            0 => Origin::New,
            1 => Origin::Header,
            2 => Origin::Tcp,
            3 => Origin::Ip,
            4 => Origin::Thread,
            5 => Origin::App,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Origin::New => "new",
            Origin::Header => "header",
            Origin::Tcp => "tcp",
            Origin::Ip => "ip",
            Origin::Thread => "thread",
            Origin::App => "app",
        }
    }
}

/// `enum prop_event_kind`.
pub const PROP_EV_SERVER: u32 = 1;
pub const PROP_EV_CLIENT: u32 = 2;

/// `struct prop_event`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PropEventRaw {
    pub ts_ns: u64,
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    pub tp_status: u8,
    pub injected: u8,
    pub origin: u8,
    pub flags: u8,
    pub conn: PropKey,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_id: [u8; 8],
    /// A connection-level span (TLS): no HTTP request was seen.
    pub opaque: u8,
    pub _pad: [u8; 7],
}

/// `enum prop_counter`, in order.
pub const COUNTER_NAMES: [&str; 16] = [
    "server_requests",
    "client_requests",
    "linked",
    "injected",
    "inject_failed",
    "existing_valid",
    "existing_invalid",
    "incoming_invalid",
    "ip_added",
    "ip_skipped",
    "ip_stripped",
    "tcp_written",
    "tcp_read",
    "events_lost",
    "tc_packets",
    "tls_clients",
];

// SAFETY: #[repr(C)] structs of integers and byte arrays with explicit
// padding fields: every bit pattern is a valid value.
unsafe impl aya::Pod for PropKey {}
// SAFETY: as above.
unsafe impl aya::Pod for PropCtx {}
// SAFETY: as above.
unsafe impl aya::Pod for PropThread {}
// SAFETY: as above.
unsafe impl aya::Pod for PropEventRaw {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::btf_layout::{btf_section, btf_structs, check_layout as check};

    #[test]
    fn layouts_match_c() {
        let s = btf_structs(btf_section(super::super::OBJECT));
        check!(s, "prop_key", PropKey, [local, remote, local_port, remote_port, family, _pad]);
        check!(s, "prop_ctx", PropCtx, [trace_id, span_id, flags, origin, tp_status, opaque, spent, carried, _pad]);
        check!(s, "prop_thread", PropThread, [ctx, conn]);
        check!(s, "prop_event", PropEventRaw, [
            ts_ns, kind, tgid, tid, tp_status, injected, origin, flags, conn, trace_id, span_id, parent_id, opaque,
            _pad
        ]);
    }

    #[test]
    fn keys_round_trip() {
        let k = PropKey::new("10.66.1.2:8080".parse().unwrap(), "10.66.1.1:40000".parse().unwrap());
        assert_eq!(k.local().to_string(), "10.66.1.2:8080");
        assert_eq!(k.remote().to_string(), "10.66.1.1:40000");
        let k6 = PropKey::new("[fd66:1::2]:8080".parse().unwrap(), "[fd66:1::1]:1".parse().unwrap());
        assert_eq!(k6.family, AF_INET6);
        assert_eq!(k6.remote().to_string(), "[fd66:1::1]:1");
    }
}
