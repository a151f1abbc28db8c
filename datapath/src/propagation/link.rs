//! Give the datapath's spans the ids the kernel propagated.
//!
//! The TC datapath sees a request and its response and makes a span; the
//! propagation programs saw the same request at the socket and chose its
//! ids (server: trace, new span id, the caller as parent; client: the
//! trace of the thread's server request, the span id it sent, that server
//! span as parent). Both carry CLOCK_MONOTONIC timestamps and the
//! connection, which is how they are matched:
//!
//! * a server request is read by the application after TC ingress saw it
//!   and before its response leaves: the last event of the connection at
//!   or before the response (and at or after the request) is its own;
//! * a client request is sent through the socket before TC egress sees it:
//!   the last event of the connection at or before the request is its own.
//!
//! Requests on one connection are sequential in HTTP/1.1 (pipelined
//! requests are matched in order, as long as the server reads them one at
//! a time). Events are drained before the spans they complete are built
//! (see the agent), so an event is never late for its span.
//!
//! A connection whose payload is not HTTP (TLS) gives the datapath no
//! request to make a span of: its events (`opaque`) become
//! connection-level spans of their own ([`connection_span`]), so that the
//! trace keeps its links across the hop.

use std::collections::VecDeque;
use std::net::SocketAddr;

use foldhash::HashMap;

use super::events::{PropEvent, PropKind};
use super::types::Origin;
use crate::span::{Span, SpanKind};

/// Events kept, all connections together, before the oldest of a
/// connection are dropped (connections the TC hooks do not see never
/// consume theirs). Propagation events are drained as they come while the
/// spans they belong to wait for the datapath's events, which lag behind
/// when the agent is busy: the budget has to cover that lag on each
/// connection (a cap of 256 per connection left 40% of a loaded chain's
/// spans without their ids). ~10 MB at most.
pub const MAX_QUEUED: usize = 65_536;

/// (client address, server address) of a request.
type ConnKey = (SocketAddr, SocketAddr);

/// Matches propagation events to spans.
#[derive(Debug, Default)]
pub struct Linker {
    server: HashMap<ConnKey, VecDeque<PropEvent>>,
    client: HashMap<ConnKey, VecDeque<PropEvent>>,
    linked: u64,
    /// Events queued now, all queues together.
    queued: usize,
    /// Events dropped unused to keep within [`MAX_QUEUED`].
    dropped: u64,
    /// Connection-level spans made from opaque events, until taken.
    connections: Vec<Span>,
}

fn unmap(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        SocketAddr::V4(_) => a,
    }
}

impl Linker {
    pub fn new() -> Linker {
        Linker::default()
    }

    /// Queue an event (an opaque one becomes a connection-level span).
    pub fn push(&mut self, ev: PropEvent) {
        if ev.opaque {
            if ev.has_context() {
                self.connections.push(connection_span(&ev));
            }
            return;
        }
        let key = match ev.kind {
            PropKind::Server => (unmap(ev.remote), unmap(ev.local)),
            PropKind::Client => (unmap(ev.local), unmap(ev.remote)),
        };
        if self.queued >= MAX_QUEUED {
            // over budget: this connection's oldest event goes (a
            // connection whose spans never come is the one that grows),
            // else, for a connection with none queued, another's oldest
            if self.queues(ev.kind).get_mut(&key).and_then(VecDeque::pop_front).is_none() {
                drop_oldest_elsewhere(&mut self.server, &mut self.client);
            }
            self.queued -= 1;
            self.dropped += 1;
        }
        self.queues(ev.kind).entry(key).or_default().push_back(ev);
        self.queued += 1;
    }

    fn queues(&mut self, kind: PropKind) -> &mut HashMap<ConnKey, VecDeque<PropEvent>> {
        match kind {
            PropKind::Server => &mut self.server,
            PropKind::Client => &mut self.client,
        }
    }

    /// Events dropped unused to keep within [`MAX_QUEUED`].
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The connection-level spans made since the last call.
    pub fn take_connection_spans(&mut self) -> Vec<Span> {
        std::mem::take(&mut self.connections)
    }

    /// Spans given kernel ids so far.
    pub fn linked(&self) -> u64 {
        self.linked
    }

    /// Events waiting for a span.
    pub fn pending(&self) -> usize {
        self.queued
    }

    /// Give `span` the ids of its event; whether it had an event with ids
    /// (an event without, an outgoing header that was invalid, is spent
    /// and leaves the span's ids to be decided from its own header).
    pub fn apply(&mut self, span: &mut Span) -> bool {
        let key = (unmap(span.client), unmap(span.server));
        let (map, until) = match span.kind {
            SpanKind::Server => (&mut self.server, span.end_ns),
            SpanKind::Client => (&mut self.client, span.request_start_ns),
        };
        let Some(q) = map.get_mut(&key) else { return false };
        let (ev, taken) = take_last(q, until);
        self.queued -= taken;
        if q.is_empty() {
            // closed connections must not leave their queues behind
            map.remove(&key);
        }
        let ev = ev.filter(|e| span.kind == SpanKind::Client || e.ts_ns >= span.request_start_ns);
        let Some(ev) = ev else { return false };
        if !ev.has_context() {
            return false;
        }
        // the event is spent: its ids move into the span
        span.trace_id = ev.trace_id;
        span.span_id = ev.span_id;
        span.parent_id = ev.parent_id;
        span.flags = ev.flags;
        span.propagated = match span.kind {
            SpanKind::Server => ev.origin != Origin::New,
            SpanKind::Client => matches!(ev.origin, Origin::Thread | Origin::App),
        };
        self.linked += 1;
        true
    }
}

/// Method and path of a connection-level span: the payload was encrypted,
/// no request was seen.
pub const TLS_METHOD: &str = "TLS";
pub const TLS_PATH: &str = "-";

/// The span of an opaque event: the side of a TLS connection that sent
/// (client) or read (server) its first bytes of a served request, with the
/// ids the kernel gave it. Its status is 0 (no response seen) and it lasts
/// no time (start and end are the event's time): the agent cannot see the
/// exchange inside, only that the hop took place and its place in the trace.
pub fn connection_span(ev: &PropEvent) -> Span {
    let (kind, client, server) = match ev.kind {
        PropKind::Client => (SpanKind::Client, unmap(ev.local), unmap(ev.remote)),
        PropKind::Server => (SpanKind::Server, unmap(ev.remote), unmap(ev.local)),
    };
    Span {
        kind,
        method: TLS_METHOD.into(),
        path: TLS_PATH.into(),
        host: None,
        status: 0,
        client,
        server,
        request_size: 0,
        response_size: 0,
        request_start_ns: ev.ts_ns,
        start_ns: ev.ts_ns,
        end_ns: ev.ts_ns,
        traceparent_in: crate::events::Traceparent::Missing,
        tracestate: None,
        trace_id: ev.trace_id,
        span_id: ev.span_id,
        parent_id: ev.parent_id,
        flags: ev.flags,
        propagated: match kind {
            SpanKind::Server => ev.origin != Origin::New,
            SpanKind::Client => matches!(ev.origin, Origin::Thread | Origin::App),
        },
        ifindex: 0,
    }
}

/// Over budget with nothing queued for the connection pushed to: drop the
/// oldest event of the first queue that has one (its queue goes with it
/// when emptied). Called only when `queued` is at the budget: one exists.
fn drop_oldest_elsewhere(server: &mut HashMap<ConnKey, VecDeque<PropEvent>>, client: &mut HashMap<ConnKey, VecDeque<PropEvent>>) {
    for map in [server, client] {
        if let Some((&key, q)) = map.iter_mut().find(|(_, q)| !q.is_empty()) {
            q.pop_front();
            if q.is_empty() {
                map.remove(&key);
            }
            return;
        }
    }
}

/// Remove the events at or before `until`: the last of them, and how many.
fn take_last(q: &mut VecDeque<PropEvent>, until: u64) -> (Option<PropEvent>, usize) {
    let mut last = None;
    let mut taken = 0;
    while q.front().is_some_and(|e| e.ts_ns <= until) {
        last = q.pop_front();
        taken += 1;
    }
    (last, taken)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Traceparent;
    use crate::types::TraceparentStatus;

    fn hx<const N: usize>(s: &str) -> crate::w3c::HexId<N> {
        if s.is_empty() {
            return crate::w3c::HexId::EMPTY;
        }
        crate::w3c::HexId::parse(s).unwrap_or_else(|| panic!("{s:?}: {N} hex digits"))
    }

    fn ev(kind: PropKind, ts: u64, local: &str, remote: &str, span: &str, parent: Option<&str>) -> PropEvent {
        PropEvent {
            ts_ns: ts,
            kind,
            tgid: 1,
            tid: 1,
            tp_status: TraceparentStatus::Missing,
            injected: kind == PropKind::Client,
            origin: if parent.is_some() { Origin::Thread } else { Origin::New },
            flags: 1,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            trace_id: hx(&"ab".repeat(16)),
            span_id: hx(span),
            parent_id: parent.map(hx),
            opaque: false,
        }
    }

    fn span(kind: SpanKind, client: &str, server: &str, start: u64, end: u64) -> Span {
        Span {
            kind,
            method: "GET".into(),
            path: "/".into(),
            host: None,
            status: 200,
            client: client.parse().unwrap(),
            server: server.parse().unwrap(),
            request_size: 0,
            response_size: 0,
            request_start_ns: start,
            start_ns: start,
            end_ns: end,
            traceparent_in: Traceparent::Missing,
            tracestate: None,
            trace_id: hx(&"00".repeat(16)),
            span_id: hx(&"00".repeat(8)),
            parent_id: None,
            flags: 1,
            propagated: false,
            ifindex: 1,
        }
    }

    /// The agent behind: a connection's events arrive far ahead of the
    /// spans they belong to (the datapath's events are read later), and
    /// every span still gets its own; queues of finished connections go.
    #[test]
    fn spans_far_behind_their_events_still_take_their_own() {
        let mut l = Linker::new();
        let n = 2_000u64;
        for i in 0..n {
            l.push(ev(PropKind::Client, 10 * i + 5, "10.0.0.2:6000", "10.0.0.3:80", &format!("{:016x}", i + 1), Some("5555555555555555")));
        }
        assert_eq!(l.pending(), 2_000);
        for i in 0..n {
            let mut s = span(SpanKind::Client, "10.0.0.2:6000", "10.0.0.3:80", 10 * i + 7, 10 * i + 9);
            assert!(l.apply(&mut s), "span {i}");
            assert_eq!(s.span_id, format!("{:016x}", i + 1));
        }
        assert_eq!((l.pending(), l.dropped(), l.client.len()), (0, 0, 0), "nothing left, no queue kept");
    }

    /// A new connection's event past the budget takes the place of another
    /// connection's oldest: the budget holds however many connections come.
    #[test]
    fn the_queue_budget_holds_for_new_connections_too() {
        let mut l = Linker::new();
        for i in 0..MAX_QUEUED as u64 {
            l.push(ev(PropKind::Server, i + 1, "10.0.0.2:80", "10.0.0.1:5000", "1111111111111111", None));
        }
        for port in 6000..6010 {
            l.push(ev(PropKind::Client, 1, "10.0.0.2:6000", &format!("10.0.0.3:{port}"), "2222222222222222", None));
        }
        assert_eq!((l.pending(), l.dropped(), l.client.len()), (MAX_QUEUED, 10, 10));
        // the server connection lost its ten oldest, and its later ones stay
        let mut s = span(SpanKind::Server, "10.0.0.1:5000", "10.0.0.2:80", 1, 10);
        assert!(!l.apply(&mut s));
        let mut s = span(SpanKind::Server, "10.0.0.1:5000", "10.0.0.2:80", 11, 11);
        assert!(l.apply(&mut s));
    }

    /// The budget holds over all connections: past it, the connection
    /// being pushed to loses its oldest event, and the count says so.
    #[test]
    fn the_queue_budget_drops_the_oldest_of_the_connection_that_grows() {
        let mut l = Linker::new();
        for i in 0..MAX_QUEUED as u64 + 3 {
            l.push(ev(PropKind::Server, i + 1, "10.0.0.2:80", "10.0.0.1:5000", "1111111111111111", None));
        }
        assert_eq!((l.pending(), l.dropped()), (MAX_QUEUED, 3));
        // the oldest three are gone: a span that needed them finds none
        let mut s = span(SpanKind::Server, "10.0.0.1:5000", "10.0.0.2:80", 1, 3);
        assert!(!l.apply(&mut s));
        assert_eq!(l.pending(), MAX_QUEUED, "nothing taken");
    }

    #[test]
    fn server_spans_take_the_read_between_request_and_response() {
        let mut l = Linker::new();
        // keep-alive: two requests on one connection
        l.push(ev(PropKind::Server, 15, "10.0.0.2:80", "10.0.0.1:5000", "1111111111111111", None));
        l.push(ev(PropKind::Server, 35, "10.0.0.2:80", "10.0.0.1:5000", "2222222222222222", None));
        let mut a = span(SpanKind::Server, "10.0.0.1:5000", "10.0.0.2:80", 10, 20);
        let mut b = span(SpanKind::Server, "10.0.0.1:5000", "10.0.0.2:80", 30, 40);
        assert!(l.apply(&mut a));
        assert!(l.apply(&mut b));
        assert_eq!((a.span_id.as_str(), b.span_id.as_str()), ("1111111111111111", "2222222222222222"));
        assert!(!a.propagated, "a new trace");
        assert_eq!(l.pending(), 0);
        // another connection's event is not taken
        l.push(ev(PropKind::Server, 50, "10.0.0.2:80", "10.0.0.1:5001", "3333333333333333", None));
        let mut c = span(SpanKind::Server, "10.0.0.1:5000", "10.0.0.2:80", 45, 60);
        assert!(!l.apply(&mut c));
        // an event before the request (a read the TC hooks did not see) is not taken
        let mut d = span(SpanKind::Server, "10.0.0.1:5001", "10.0.0.2:80", 55, 60);
        assert!(!l.apply(&mut d));
    }

    #[test]
    fn client_spans_take_the_send_before_the_request() {
        let mut l = Linker::new();
        l.push(ev(PropKind::Client, 5, "10.0.0.2:6000", "10.0.0.3:80", "cccccccccccccccc", Some("5555555555555555")));
        let mut s = span(SpanKind::Client, "10.0.0.2:6000", "10.0.0.3:80", 6, 9);
        assert!(l.apply(&mut s));
        assert_eq!(s.span_id, "cccccccccccccccc");
        assert_eq!(s.parent_id.as_deref(), Some("5555555555555555"));
        assert_eq!(s.trace_id, "ab".repeat(16));
        assert!(s.propagated);
        assert_eq!(l.linked(), 1);
    }

    #[test]
    fn opaque_events_become_connection_spans_not_queued() {
        let mut l = Linker::new();
        let mut c = ev(PropKind::Client, 5, "10.0.0.2:6000", "10.0.0.3:443", "cccccccccccccccc", Some("5555555555555555"));
        c.opaque = true;
        let mut s = ev(PropKind::Server, 7, "10.0.0.3:443", "10.0.0.2:6000", "dddddddddddddddd", Some("cccccccccccccccc"));
        s.opaque = true;
        s.origin = Origin::Tcp;
        l.push(c);
        l.push(s);
        assert_eq!(l.pending(), 0, "nothing waits for a datapath span");
        let spans = l.take_connection_spans();
        assert_eq!(spans.len(), 2);
        let (client, server) = (&spans[0], &spans[1]);
        assert_eq!((client.kind, client.method.as_str(), client.path.as_str(), client.status), (SpanKind::Client, "TLS", "-", 0));
        assert_eq!((client.client.to_string(), client.server.to_string()), ("10.0.0.2:6000".into(), "10.0.0.3:443".into()));
        assert_eq!((client.span_id.as_str(), client.parent_id.as_deref()), ("cccccccccccccccc", Some("5555555555555555")));
        assert!(client.propagated, "the thread's trace");
        assert_eq!(server.kind, SpanKind::Server);
        assert_eq!((server.client, server.server), (client.client, client.server), "the same connection, seen from the other side");
        assert_eq!(server.parent_id.as_deref(), Some("cccccccccccccccc"));
        assert_eq!((server.start_ns, server.end_ns), (7, 7), "no duration: nothing inside is seen");
        assert!(server.propagated);
        assert!(l.take_connection_spans().is_empty(), "taken once");
        // an opaque client event without usable ids makes no span
        let mut bad = ev(PropKind::Client, 9, "10.0.0.2:6001", "10.0.0.3:443", "", None);
        bad.opaque = true;
        bad.trace_id.clear();
        l.push(bad);
        assert!(l.take_connection_spans().is_empty());
    }

    #[test]
    fn an_invalid_outgoing_header_leaves_the_span_alone() {
        let mut l = Linker::new();
        let mut e = ev(PropKind::Client, 5, "10.0.0.2:6000", "10.0.0.3:80", "", None);
        e.trace_id.clear();
        e.tp_status = TraceparentStatus::Invalid;
        l.push(e);
        let mut s = span(SpanKind::Client, "10.0.0.2:6000", "10.0.0.3:80", 6, 9);
        let before = s.clone();
        assert!(!l.apply(&mut s));
        assert_eq!(s, before);
        assert_eq!(l.pending(), 0, "the event is spent");
    }
}
