//! Requests split across TCP segments, at every byte: the classifiers'
//! events (BPF_PROG_TEST_RUN, ring buffer) and what the agent's decoder and
//! span builder make of them.

mod common;

use common::*;
use tclab_datapath::events::{Event as Decoded, EventMeta, HttpResponse, Traceparent};
use tclab_datapath::span::{SequentialIds, Span, SpanBuilder};
use tclab_datapath::types::{Counter, CtTuple, Dir, EventKind, HttpEvent, ct_flags};

fn harness(test: &str) -> Option<Harness> {
    tclab_net::require::root(&format!("classifier_http_split::{test}")).then(Harness::default_config)
}

const SERVER: &str = "10.0.0.2:8080";

fn client(port: u16) -> std::net::SocketAddr {
    sa(&format!("10.0.0.1:{port}"))
}

/// One client → server data segment; the HTTP events it produced.
fn send(h: &mut Harness, port: u16, payload: &[u8]) -> Vec<HttpEvent> {
    h.egress(&tcp(client(port), sa(SERVER), TCP_ACK | TCP_PSH, payload));
    h.http_events()
}

fn pending(h: &Harness, port: u16) -> bool {
    h.ct(&CtTuple::new(client(port), sa(SERVER), 6)).expect("CT entry").has(ct_flags::HTTP_PENDING)
}

fn kind(e: &HttpEvent) -> EventKind {
    EventKind::from_raw(e.hdr.kind).expect("known kind")
}

/// The record as the ring buffer carried it, decoded by the agent's decoder.
fn decode(e: &HttpEvent) -> Decoded {
    // SAFETY: HttpEvent is plain data (integers and byte arrays, no padding holes).
    let bytes = unsafe { std::slice::from_raw_parts((e as *const HttpEvent).cast::<u8>(), size_of::<HttpEvent>()) };
    Decoded::decode(bytes).unwrap_or_else(|err| panic!("decode {:?}: {err}", String::from_utf8_lossy(e.payload())))
}

/// The span the agent builds from these events and a 200 response.
fn span_of(events: &[HttpEvent], port: u16) -> Span {
    let mut b = SpanBuilder::new(Box::new(SequentialIds::default()));
    for e in events {
        assert!(b.push_all(&decode(e)).is_empty());
    }
    let meta = EventMeta {
        ts_ns: u64::MAX / 2,
        ifindex: 1,
        tuple: CtTuple::new(sa(SERVER), client(port), 6),
        dir: Dir::Ingress,
        ct_status: 2,
        tcp_flags: 0x18,
    };
    let resp = Decoded::HttpResponse(HttpResponse { meta, status: 200, content_length: Some(0), size: 38, pipelined: vec![] });
    let spans = b.push_all(&resp);
    assert_eq!(spans.len(), 1, "one span");
    spans.into_iter().next().unwrap()
}

fn find(hay: &[u8], needle: &str) -> usize {
    hay.windows(needle.len()).position(|w| w == needle.as_bytes()).unwrap_or_else(|| panic!("no {needle:?}"))
}

/// Every split of a request head in two segments, from inside the method
/// to inside the final blank line: exactly one request is recognised, its
/// method, target and host come out whole, and the traceparent is found, except
/// when the first segment has the header's name but cuts its value (the
/// documented limit: the value must end inside one segment).
#[test]
fn request_split_at_every_byte_is_recognised_once() {
    let Some(mut h) = harness("request_split_at_every_byte_is_recognised_once") else { return };
    let req = format!("GET /split/path?q=1 HTTP/1.1\r\nHost: svc\r\ntraceparent: {TP}\r\nAccept: */*\r\n\r\n").into_bytes();
    let name = find(&req, "traceparent:");
    let value_end = name + "traceparent: ".len() + TP.len();
    for k in 1..req.len() {
        let port = 20_000 + k as u16;
        let (a, b) = req.split_at(k);
        let mut events = send(&mut h, port, a);
        let after_first = events.len();
        events.extend(send(&mut h, port, b));
        let at = format!("split at {k} ({:?} | {:?})", String::from_utf8_lossy(a), String::from_utf8_lossy(b));

        let kinds: Vec<EventKind> = events.iter().map(kind).collect();
        assert_eq!(kinds.iter().filter(|k| **k == EventKind::HttpRequest).count(), 1, "{at}: {kinds:?}");
        if k < "GET ".len() {
            assert_eq!(after_first, 0, "{at}: a method prefix alone is no request");
            assert_eq!(kinds, [EventKind::HttpRequest], "{at}");
            assert_eq!(events[0].carried_len as usize, k, "{at}");
            assert_eq!(events[0].payload(), &req[..], "{at}: the request event reads as the whole request");
        } else {
            assert_eq!(kinds[0], EventKind::HttpRequest, "{at}");
            assert_eq!(events[0].payload(), a, "{at}");
            assert_eq!(events[0].carried_len, 0, "{at}");
            if let Some(c) = events.get(1) {
                assert_eq!(kinds[1..], [EventKind::HttpContinuation], "{at}");
                let carried = usize::from(c.carried_len);
                assert!(carried <= 16, "{at}: carried {carried}");
                assert_eq!(&c.payload()[carried..], b, "{at}: continuation payload after the carried bytes");
                assert_eq!(&c.payload()[..carried], &a[a.len() - carried..], "{at}: carried = the end of the first segment");
            }
        }
        assert!(!pending(&h, port), "{at}: the header end clears the pending state");

        let span = span_of(&events, port);
        assert_eq!((span.method.as_str(), span.path.as_str()), ("GET", "/split/path?q=1"), "{at}");
        let cut_value = (name + "traceparent:".len()..=value_end).contains(&k);
        if cut_value {
            assert!(matches!(span.traceparent_in, Traceparent::Invalid(_)), "{at}: {:?}", span.traceparent_in);
        } else {
            assert_eq!(span.traceparent_in, Traceparent::Valid(TP.into()), "{at}");
            assert!(span.propagated, "{at}");
        }
        assert_eq!(span.host.as_deref(), Some("svc"), "{at}");
    }
    assert_eq!(h.counter(Counter::HttpRequests), req.len() as u64 - 1);
}

/// A method split over several segments ("G" | "E" | "T …"), and the
/// longest methods split before their space.
#[test]
fn method_split_over_several_segments() {
    let Some(mut h) = harness("method_split_over_several_segments") else { return };
    let mut port = 30_000;
    for parts in [
        &["G", "E", "T /three HTTP/1.1\r\n\r\n"][..],
        &["O", "PTIO", "NS", " * HTTP/1.1\r\n\r\n"][..],
        &["CONNECT", " svc:443 HTTP/1.1\r\n\r\n"][..],
        &["DELET", "E /x HTTP/1.1\r\n\r\n"][..],
    ] {
        port += 1;
        let mut events = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            let got = send(&mut h, port, p.as_bytes());
            if i + 1 < parts.len() {
                assert!(got.is_empty(), "{parts:?}: nothing before the method is complete");
                assert!(pending(&h, port), "{parts:?}: the prefix is kept");
            }
            events.extend(got);
        }
        let whole = parts.concat();
        assert_eq!(events.len(), 1, "{parts:?}");
        assert_eq!(kind(&events[0]), EventKind::HttpRequest);
        assert_eq!(events[0].payload(), whole.as_bytes());
        assert_eq!(usize::from(events[0].carried_len), whole.len() - parts.last().unwrap().len());
        assert!(!pending(&h, port));
        let span = span_of(&events, port);
        let line = whole.lines().next().unwrap();
        assert_eq!(format!("{} {} HTTP/1.1", span.method, span.path), line);
    }
}

/// Short segments that are no method start are not kept, and a kept
/// prefix that the next segment does not continue into a request is
/// dropped: no request, no pending state.
#[test]
fn lookalike_prefixes_are_dropped() {
    let Some(mut h) = harness("lookalike_prefixes_are_dropped") else { return };
    for (port, parts) in [(31_001, &["GX", "T / HTTP/1.1\r\n\r\n"][..]), (31_002, &["GE", "X / HTTP/1.1\r\n\r\n"][..]), (31_003, &["g", "et / HTTP/1.1\r\n\r\n"][..])] {
        for p in parts {
            assert!(send(&mut h, port, p.as_bytes()).is_empty(), "{parts:?}");
        }
        assert!(!pending(&h, port), "{parts:?}");
        // the connection still works for a real request afterwards
        assert_eq!(send(&mut h, port, b"GET / HTTP/1.1\r\n\r\n").len(), 1);
    }
    assert_eq!(h.counter(Counter::HttpRequests), 3);
}

/// While a request is pending, the other direction's data is not taken for
/// its continuation (the carry records the request's direction).
#[test]
fn the_other_direction_is_not_a_continuation() {
    let Some(mut h) = harness("the_other_direction_is_not_a_continuation") else { return };
    let port = 32_000;
    assert_eq!(send(&mut h, port, b"POST /up HTTP/1.1\r\nHost: svc\r\n").len(), 1);
    assert!(pending(&h, port));
    h.ingress(&tcp(sa(SERVER), client(port), TCP_ACK | TCP_PSH, format!("traceparent: {TP}\r\n\r\n").as_bytes()));
    assert!(h.http_events().is_empty(), "server data is no continuation of the client's request");
    assert!(pending(&h, port));
    let c = send(&mut h, port, format!("traceparent: {TP}\r\n\r\n").as_bytes());
    assert_eq!((c.len(), kind(&c[0])), (1, EventKind::HttpContinuation));
    assert_eq!(c[0].traceparent().unwrap(), TP.as_bytes());
    assert!(!pending(&h, port));
}

/// A header line longer than the carry, cut in the middle: the next segment
/// does not start a line, so its leading bytes (here a CR LF) are not taken
/// for the end of the header block.
#[test]
fn a_long_line_cut_in_the_middle_does_not_end_the_headers() {
    let Some(mut h) = harness("a_long_line_cut_in_the_middle_does_not_end_the_headers") else { return };
    let port = 33_000;
    let first = format!("GET / HTTP/1.1\r\nX-Long: {}", "v".repeat(40));
    send(&mut h, port, first.as_bytes());
    assert!(pending(&h, port));
    let c = send(&mut h, port, format!("\r\ntraceparent: {TP}\r\n\r\n").as_bytes());
    assert_eq!(c[0].carried_len, 0, "nothing carried from inside a long line");
    assert_eq!(c[0].traceparent().unwrap(), TP.as_bytes());
    assert!(!pending(&h, port));
}
