//! Span pairing: keep-alive, pipelining, split requests, trace-context
//! decisions, and the Beyla line format. Events are built directly (the
//! kernel side is tested by the classifier tests); ids are sequential so the
//! snapshots are stable.

use tclab_datapath::events::{
    Event, EventMeta, HttpContinuation, HttpRequest, HttpResponse, LineEnd, RequestLine, Traceparent,
};
use tclab_datapath::types::{CtEntry, CtTuple, Dir};
use tclab_datapath::span::{SequentialIds, Span, SpanBuilder, SpanKind, WallClock};

const CLIENT: (&str, u16) = ("10.0.0.1", 40000);
const SERVER: (&str, u16) = ("10.0.0.2", 8080);
const VALID: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn tuple(from: (&str, u16), to: (&str, u16)) -> CtTuple {
    let addr = |(ip, port): (&str, u16)| std::net::SocketAddr::new(ip.parse().unwrap(), port);
    CtTuple::new(addr(from), addr(to), 6)
}

fn meta(ts_ns: u64, t: CtTuple, dir: Dir) -> EventMeta {
    EventMeta { ts_ns, ifindex: 7, tuple: t, dir, ct_status: 1, tcp_flags: 0x18 }
}

fn req(ts: u64, dir: Dir, path: &str, tp: Traceparent) -> Event {
    // Client to server on either hook: ingress on the server, egress on the client.
    let t = tuple(CLIENT, SERVER);
    Event::HttpRequest(HttpRequest {
        meta: meta(ts, t, dir),
        method: "GET".into(),
        path: path.into(),
        host: Some("server:8080".into()),
        content_length: None,
        traceparent: tp,
        tracestate: None,
        size: 80,
        headers_complete: true,
        request_line: RequestLine::Complete,
        pipelined: Vec::new(),
    })
}

fn resp(ts: u64, req_dir: Dir, status: u16, len: u64) -> Event {
    let dir = if req_dir == Dir::Ingress { Dir::Egress } else { Dir::Ingress };
    Event::HttpResponse(HttpResponse {
        meta: meta(ts, tuple(SERVER, CLIENT), dir),
        status,
        content_length: Some(len),
        size: 100,
        pipelined: Vec::new(),
    })
}

fn run(events: &[Event]) -> (Vec<Span>, SpanBuilder) {
    let mut b = SpanBuilder::new(Box::new(SequentialIds::default()));
    let spans = events.iter().filter_map(|e| b.push(e)).collect();
    (spans, b)
}

fn lines(spans: &[Span]) -> String {
    spans.iter().map(|s| s.snapshot_line() + "\n").collect()
}

#[test]
fn keep_alive_pairs_in_order() {
    let d = Dir::Ingress;
    let (spans, b) = run(&[
        req(1_000, d, "/one", Traceparent::Valid(VALID.into())),
        resp(2_000, d, 200, 5),
        req(3_000, d, "/two", Traceparent::Missing),
        resp(4_000, d, 404, 0),
    ]);
    assert_eq!(b.pending(), 0);
    assert_eq!(spans.len(), 2);
    assert_eq!(spans[0].kind, SpanKind::Server);
    insta::assert_snapshot!(lines(&spans));
}

#[test]
fn pipelined_requests_answered_fifo() {
    let d = Dir::Egress;
    let (spans, b) = run(&[
        req(1_000, d, "/a", Traceparent::Missing),
        req(1_100, d, "/b", Traceparent::Missing),
        req(1_200, d, "/c", Traceparent::Valid(VALID.into())),
        resp(2_000, d, 200, 1),
        resp(2_100, d, 201, 2),
        resp(2_200, d, 202, 3),
    ]);
    assert_eq!(b.pending(), 0);
    let paths: Vec<_> = spans.iter().map(|s| (s.path.as_str(), s.status)).collect();
    assert_eq!(paths, [("/a", 200), ("/b", 201), ("/c", 202)]);
    assert!(spans.iter().all(|s| s.kind == SpanKind::Client));
    insta::assert_snapshot!(lines(&spans));
}

#[test]
fn pipelined_responses_in_one_segment_complete_every_request() {
    let d = Dir::Egress;
    let mut one = resp(2_000, d, 200, 1);
    if let Event::HttpResponse(r) = &mut one {
        let Event::HttpResponse(b) = resp(2_000, d, 201, 2) else { unreachable!() };
        let Event::HttpResponse(c) = resp(2_000, d, 202, 3) else { unreachable!() };
        r.pipelined = vec![b, c];
    }
    let events = [
        req(1_000, d, "/a", Traceparent::Missing),
        req(1_100, d, "/b", Traceparent::Missing),
        req(1_200, d, "/c", Traceparent::Missing),
        one,
    ];
    let mut b = SpanBuilder::new(Box::new(SequentialIds::default()));
    let spans: Vec<Span> = events.iter().flat_map(|e| b.push_all(e)).collect();
    let got: Vec<_> = spans.iter().map(|s| (s.path.as_str(), s.status)).collect();
    assert_eq!(got, [("/a", 200), ("/b", 201), ("/c", 202)]);
    assert_eq!(b.pending(), 0);
    // `push` returns the first and keeps the others for take_ready.
    let mut b = SpanBuilder::new(Box::new(SequentialIds::default()));
    let firsts: Vec<Span> = events.iter().filter_map(|e| b.push(e)).collect();
    assert_eq!(firsts.len(), 1);
    assert_eq!(b.take_ready().iter().map(|s| s.status).collect::<Vec<_>>(), [201, 202]);
}

#[test]
fn split_request_takes_traceparent_from_continuation() {
    let d = Dir::Ingress;
    let mut first = req(1_000, d, "/split", Traceparent::Missing);
    if let Event::HttpRequest(r) = &mut first {
        r.host = None;
        r.headers_complete = false;
    }
    let cont = Event::HttpContinuation(HttpContinuation {
        meta: meta(1_500, tuple(CLIENT, SERVER), d),
        host: Some("late-host".into()),
        traceparent: Traceparent::Valid(VALID.into()),
        tracestate: Some("vendor=1".into()),
        size: 120,
        line_rest: "Accept: */*".into(),
        line_rest_end: LineEnd::LineFeed,
    });
    let (spans, _) = run(&[first, cont, resp(3_000, d, 200, 0)]);
    assert_eq!(spans.len(), 1);
    let s = &spans[0];
    assert!(s.propagated);
    assert_eq!(s.host.as_deref(), Some("late-host"));
    assert_eq!(s.tracestate.as_deref(), Some("vendor=1"));
    assert_eq!((s.request_start_ns, s.start_ns, s.end_ns), (1_000, 1_500, 3_000));
    insta::assert_snapshot!(lines(&spans));
}

fn cont(ts: u64, rest: &str, end: LineEnd) -> Event {
    Event::HttpContinuation(HttpContinuation {
        meta: meta(ts, tuple(CLIENT, SERVER), Dir::Ingress),
        host: None,
        traceparent: Traceparent::Missing,
        tracestate: None,
        size: rest.len() as u32,
        line_rest: rest.into(),
        line_rest_end: end,
    })
}

/// A request line cut inside its target is completed by the continuations'
/// first lines, up to the space before the version; a cut after the target
/// keeps it; a line that ends (or whose rest was not captured) stops it.
#[test]
fn split_request_line_is_completed_from_continuations() {
    let d = Dir::Ingress;
    let cut = |path: &str, line: RequestLine| {
        let mut e = req(1, d, path, Traceparent::Missing);
        if let Event::HttpRequest(r) = &mut e {
            r.request_line = line;
            r.headers_complete = false;
        }
        e
    };
    let path = |events: &[Event]| {
        let mut all = events.to_vec();
        all.push(resp(9, d, 200, 0));
        run(&all).0[0].path.clone()
    };
    use LineEnd::*;
    use RequestLine::*;
    assert_eq!(path(&[cut("/a/b", CutInTarget), cont(2, "cd HTTP/1.1", LineFeed)]), "/a/bcd");
    assert_eq!(path(&[cut("/a", CutInTarget), cont(2, "b", Segment), cont(3, "c", Segment), cont(4, " HTTP/1.1", LineFeed)]), "/abc");
    assert_eq!(path(&[cut("", CutInTarget), cont(2, "/x?y=1 HTTP/1.1", LineFeed)]), "/x?y=1");
    assert_eq!(path(&[cut("/a", CutAfterTarget), cont(2, "TTP/1.1", LineFeed), cont(3, "Host: x", LineFeed)]), "/a");
    // once the line has ended, later continuations are headers, not target
    assert_eq!(path(&[cut("/a", CutInTarget), cont(2, "b HTTP/1.1", LineFeed), cont(3, "zzz", LineFeed)]), "/ab");
    // the rest was beyond the capture: what was seen is the target
    assert_eq!(path(&[cut("/a", CutInTarget), cont(2, "bbbb", Capture), cont(3, "cc HTTP/1.1", LineFeed)]), "/abbbb");
    assert_eq!(path(&[cut("/a", Complete), cont(2, "b HTTP/1.1", LineFeed)]), "/a");
}

#[test]
fn invalid_traceparent_starts_a_new_trace() {
    let d = Dir::Ingress;
    let bad = "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01";
    let (spans, _) = run(&[req(1, d, "/x", Traceparent::Invalid(bad.into())), resp(2, d, 200, 0)]);
    let s = &spans[0];
    assert!(!s.propagated);
    assert_ne!(s.trace_id, "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(s.parent_id, None);
    assert_eq!(s.trace_id.len(), 32);
    assert_ne!(s.trace_id, "0".repeat(32));
    insta::assert_snapshot!(lines(&spans));
}

#[test]
fn valid_traceparent_is_continued() {
    let d = Dir::Ingress;
    let (spans, _) = run(&[req(1, d, "/traceme", Traceparent::Valid(VALID.into())), resp(2, d, 200, 0)]);
    let s = &spans[0];
    assert_eq!(s.trace_id, "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(s.parent_id.as_deref(), Some("b7ad6b7169203331"));
    assert_ne!(s.span_id, "b7ad6b7169203331");
    assert_eq!(s.flags, 1);
}

#[test]
fn unmatched_response_and_close_drop_state() {
    let d = Dir::Ingress;
    let close = Event::ConnClose { meta: meta(5, tuple(CLIENT, SERVER), d), entry: CtEntry::default() };
    let (spans, b) = run(&[resp(1, d, 200, 0), req(2, d, "/never", Traceparent::Missing), close]);
    assert!(spans.is_empty());
    assert_eq!(b.unmatched_responses(), 1);
    assert_eq!(b.pending(), 0);
}

#[test]
fn beyla_line_format() {
    let d = Dir::Egress;
    let mut r = req(1_000_000, d, "/tracemetoo", Traceparent::Valid(VALID.into()));
    if let Event::HttpRequest(h) = &mut r {
        h.meta.tuple = tuple(("10.244.1.92", 37450), ("10.96.214.17", 8083));
    }
    let mut p = resp(6_045_099, d, 200, 0);
    if let Event::HttpResponse(h) = &mut p {
        h.meta.tuple = tuple(("10.96.214.17", 8083), ("10.244.1.92", 37450));
    }
    let (spans, _) = run(&[r, p]);
    // Wall clock such that monotonic 1ms is 2025-01-17 21:42:18 UTC.
    let clock = WallClock { offset_ns: 1_737_150_138i128 * 1_000_000_000 - 1_000_000 };
    let line = spans[0].beyla_line(&clock, "frontend");
    assert_eq!(
        line,
        format!(
            "2025-01-17 21:42:18.11794218 (5.045099ms[5.045099ms]) HTTPClient 200 GET /tracemetoo \
             [10.244.1.92:37450]->[10.96.214.17:8083] size:0B svc=[frontend tc] \
             traceparent=[00-0af7651916cd43dd8448eb211c80319c-{}[b7ad6b7169203331]-01]",
            spans[0].span_id
        )
    );
    let json: serde_json::Value = serde_json::from_str(&spans[0].to_json()).unwrap();
    assert_eq!(json["kind"], "client");
    assert_eq!(json["trace_id"], "0af7651916cd43dd8448eb211c80319c");
}

#[test]
fn deferred_ids_are_decided_as_at_completion() {
    let d = Dir::Ingress;
    let events = [
        req(1_000, d, "/one", Traceparent::Valid(VALID.into())),
        resp(2_000, d, 200, 5),
        req(3_000, d, "/two", Traceparent::Missing),
        resp(4_000, d, 200, 0),
    ];
    let (now, _) = run(&events);
    let mut b = SpanBuilder::new(Box::new(SequentialIds::default())).deferring_ids(true);
    let mut later: Vec<Span> = events.iter().flat_map(|e| b.push_all(e)).collect();
    assert!(later.iter().all(|s| s.trace_id.is_empty() && s.span_id.is_empty() && s.parent_id.is_none()), "{later:#?}");
    for s in &mut later {
        b.decide_ids(s);
    }
    assert_eq!(later, now);
    assert_eq!(later[0].trace_id, "0af7651916cd43dd8448eb211c80319c", "a valid header is continued");
    assert!(later[0].propagated && !later[1].propagated);
}
