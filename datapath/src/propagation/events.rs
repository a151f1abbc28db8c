//! Events of the propagation object: the ids the kernel gave a server
//! request (read on a socket) or a client request (sent on one).

use std::net::SocketAddr;

use serde::Serialize;

use super::types::{Origin, PROP_EV_CLIENT, PROP_EV_SERVER, PropEventRaw};
use crate::types::{TraceparentStatus, read_struct};
use crate::w3c::{SpanIdHex, TraceIdHex};

/// Server: a request read; client: a request sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PropKind {
    Server,
    Client,
}

/// One decoded `struct prop_event`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PropEvent {
    /// CLOCK_MONOTONIC ns (the datapath's clock too).
    pub ts_ns: u64,
    pub kind: PropKind,
    /// Process and thread (0 for client events: sk_msg has no task helpers on 5.10).
    pub tgid: u32,
    pub tid: u32,
    /// The request's own traceparent, as the W3C rules judged it.
    #[serde(skip)]
    pub tp_status: TraceparentStatus,
    /// Client: we inserted the header.
    pub injected: bool,
    pub origin: Origin,
    pub flags: u8,
    /// This side of the connection.
    pub local: SocketAddr,
    /// The other side.
    pub remote: SocketAddr,
    /// Empty for a client request whose own traceparent was invalid (not used).
    pub trace_id: TraceIdHex,
    /// Server: the server span; client: the client span.
    pub span_id: SpanIdHex,
    /// Server: the caller's span; client: the server span of its thread.
    pub parent_id: Option<SpanIdHex>,
    /// A connection whose payload is not HTTP (TLS): no request was seen,
    /// the ids belong to a connection-level span ([`super::link`]).
    pub opaque: bool,
}

impl PropEvent {
    /// Decode one ring-buffer record (`None` when malformed).
    pub fn decode(bytes: &[u8]) -> Option<PropEvent> {
        let raw: PropEventRaw = read_struct(bytes)?;
        let kind = match raw.kind {
            PROP_EV_SERVER => PropKind::Server,
            PROP_EV_CLIENT => PropKind::Client,
            _ => return None,
        };
        let tp_status = TraceparentStatus::from_raw(raw.tp_status)?;
        let unused = raw.trace_id == [0; 16];
        Some(PropEvent {
            ts_ns: raw.ts_ns,
            kind,
            tgid: raw.tgid,
            tid: raw.tid,
            tp_status,
            injected: raw.injected != 0,
            origin: Origin::from_raw(raw.origin)?,
            flags: raw.flags,
            local: raw.conn.local(),
            remote: raw.conn.remote(),
            trace_id: if unused { TraceIdHex::EMPTY } else { TraceIdHex::from_bytes(&raw.trace_id) },
            span_id: if unused { SpanIdHex::EMPTY } else { SpanIdHex::from_bytes(&raw.span_id) },
            parent_id: (raw.parent_id != [0; 8]).then(|| SpanIdHex::from_bytes(&raw.parent_id)),
            opaque: raw.opaque != 0,
        })
    }

    /// The traceparent this event's ids make (`00-trace-span-flags`).
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", self.trace_id, self.span_id, self.flags)
    }

    /// The ids are usable (not a client request with an invalid header).
    pub fn has_context(&self) -> bool {
        !self.trace_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::propagation::types::PropKey;

    fn bytes<T: aya::Pod>(v: &T) -> Vec<u8> {
        // SAFETY: T is plain data; the slice covers exactly one value.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()).to_vec() }
    }

    #[test]
    fn decodes_a_server_event() {
        let raw = PropEventRaw {
            ts_ns: 7,
            kind: PROP_EV_SERVER,
            tgid: 10,
            tid: 11,
            tp_status: 1,
            origin: 1,
            flags: 1,
            conn: PropKey::new("10.66.1.2:8080".parse().unwrap(), "10.66.1.1:40000".parse().unwrap()),
            trace_id: [0xab; 16],
            span_id: [1; 8],
            parent_id: [2; 8],
            ..PropEventRaw::default()
        };
        let e = PropEvent::decode(&bytes(&raw)).unwrap();
        assert_eq!(e.kind, PropKind::Server);
        assert_eq!(e.origin, Origin::Header);
        assert_eq!(e.local.to_string(), "10.66.1.2:8080");
        assert_eq!(e.traceparent(), format!("00-{}-0101010101010101-01", "ab".repeat(16)));
        assert_eq!(e.parent_id.as_deref(), Some("0202020202020202"));
        assert!(!e.opaque);
        assert!(PropEvent::decode(&bytes(&PropEventRaw { opaque: 1, ..raw })).unwrap().opaque);
        assert!(PropEvent::decode(&bytes(&raw)[..20]).is_none());
        let bad = PropEventRaw { kind: 9, ..raw };
        assert!(PropEvent::decode(&bytes(&bad)).is_none());
    }
}
