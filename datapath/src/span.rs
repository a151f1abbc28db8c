//! Request/response pairing into spans, trace-context decisions, and the
//! Beyla-style text and JSON output.
//!
//! Pairing is FIFO per connection and request direction: HTTP/1.1 answers
//! requests in order, so keep-alive and pipelining both reduce to a queue.
//! A request whose headers were split across segments is completed by the
//! continuation events of the same connection before its response arrives.

use std::collections::VecDeque;
use std::net::SocketAddr;

use foldhash::HashMap;

use serde::{Deserialize, Serialize};

use crate::events::{Event, HttpContinuation, HttpRequest, HttpResponse, LineEnd, RequestLine, Traceparent};
use crate::types::{CtTuple, Dir};
use crate::w3c::{SpanIdHex, TraceIdHex};

/// Server: the request came in on ingress. Client: it went out on egress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpanKind {
    /// An HTTP server span (Beyla's `HTTP`).
    Server,
    /// An HTTP client span (Beyla's `HTTPClient`).
    Client,
}

impl SpanKind {
    /// Beyla's span type name.
    pub fn beyla_type(self) -> &'static str {
        match self {
            SpanKind::Server => "HTTP",
            SpanKind::Client => "HTTPClient",
        }
    }

    /// Label value for metrics.
    pub fn label(self) -> &'static str {
        match self {
            SpanKind::Server => "server",
            SpanKind::Client => "client",
        }
    }
}

/// A finished HTTP span.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    /// Server or client.
    pub kind: SpanKind,
    /// Request method.
    pub method: String,
    /// Request target.
    pub path: String,
    /// `Host` header, if seen.
    pub host: Option<String>,
    /// Response status.
    pub status: u16,
    /// HTTP client side of the connection.
    pub client: SocketAddr,
    /// HTTP server side of the connection.
    pub server: SocketAddr,
    /// Request body size (Content-Length, 0 when absent): Beyla's `size`.
    pub request_size: u64,
    /// Response body size (Content-Length, 0 when absent).
    pub response_size: u64,
    /// First request segment (CLOCK_MONOTONIC ns).
    pub request_start_ns: u64,
    /// Last request segment: the request is complete (CLOCK_MONOTONIC ns).
    pub start_ns: u64,
    /// Response seen (CLOCK_MONOTONIC ns).
    pub end_ns: u64,
    /// The traceparent header as received, with the kernel's verdict.
    pub traceparent_in: Traceparent,
    /// `tracestate` as received.
    pub tracestate: Option<String>,
    /// Trace id used (32 lower-case hex).
    pub trace_id: TraceIdHex,
    /// This span's id (16 lower-case hex).
    pub span_id: SpanIdHex,
    /// Parent span id (the incoming parent-id), if the trace was continued.
    pub parent_id: Option<SpanIdHex>,
    /// Trace flags.
    pub flags: u8,
    /// The trace id came from the request (not newly generated).
    pub propagated: bool,
    /// Device the request was seen on.
    pub ifindex: u32,
}

/// Source of new trace and span ids (random in the agent; deterministic in tests).
pub trait IdSource: Send {
    /// A new non-zero 16-byte trace id.
    fn trace_id(&mut self) -> [u8; 16];
    /// A new non-zero 8-byte span id.
    fn span_id(&mut self) -> [u8; 8];
}

/// Random ids from the thread RNG, never all-zero (W3C forbids it).
#[derive(Debug, Default)]
pub struct RandomIds;

impl IdSource for RandomIds {
    fn trace_id(&mut self) -> [u8; 16] {
        loop {
            let id: [u8; 16] = rand::random();
            if id != [0; 16] {
                return id;
            }
        }
    }
    fn span_id(&mut self) -> [u8; 8] {
        loop {
            let id: [u8; 8] = rand::random();
            if id != [0; 8] {
                return id;
            }
        }
    }
}

/// Counting ids (1, 2, 3…) for snapshot tests.
#[derive(Debug, Default)]
pub struct SequentialIds(u64);

impl IdSource for SequentialIds {
    fn trace_id(&mut self) -> [u8; 16] {
        self.0 += 1;
        let mut id = [0u8; 16];
        id[8..].copy_from_slice(&self.0.to_be_bytes());
        id
    }
    fn span_id(&mut self) -> [u8; 8] {
        self.0 += 1;
        self.0.to_be_bytes()
    }
}

/// The trace context a span gets from the request's traceparent verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceDecision {
    /// Trace id (hex).
    pub trace_id: TraceIdHex,
    /// Parent id (hex), when continued.
    pub parent_id: Option<SpanIdHex>,
    /// Flags.
    pub flags: u8,
    /// Whether the incoming trace was continued.
    pub propagated: bool,
}

/// Continue a valid incoming trace; start a new sampled one otherwise.
/// The kernel already validated the header: a `Valid` value that still does
/// not split into version-trace-parent-flags is treated as invalid here.
pub fn decide_trace(tp: &Traceparent, ids: &mut dyn IdSource) -> TraceDecision {
    if let Traceparent::Valid(v) = tp {
        // version-trace-parent-flags at fixed places (W3C); byte slices, not
        // a split: this runs for every span
        let b = v.as_bytes();
        let hex = |r: std::ops::Range<usize>| b.get(r.clone()).filter(|f| f.iter().all(u8::is_ascii_hexdigit)).map(|_| &v[r]);
        let dashes = [2, 35, 52].iter().all(|&i| b.get(i) == Some(&b'-')) && b.get(55).is_none_or(|&c| c == b'-');
        if dashes
            && let (Some(_), Some(flags)) = (hex(0..2), hex(53..55))
            && let Ok(flags) = u8::from_str_radix(flags, 16)
            // the ids' own parse checks their digits
            && let (Some(trace), Some(parent)) = (v.get(3..35).and_then(TraceIdHex::parse), v.get(36..52).and_then(SpanIdHex::parse))
        {
            return TraceDecision {
                trace_id: trace,
                parent_id: Some(parent),
                flags,
                propagated: true,
            };
        }
    }
    TraceDecision { trace_id: TraceIdHex::from_bytes(&ids.trace_id()), parent_id: None, flags: 0x01, propagated: false }
}

#[derive(Debug, Clone)]
struct Pending {
    req: HttpRequest,
    last_segment_ns: u64,
}

/// Key of a connection's request queue: the request's own tuple and the hook
/// that saw it (a response has the reversed tuple on the other hook).
type QueueKey = (CtTuple, Dir);

/// Pairs request and response events into [`Span`]s.
pub struct SpanBuilder {
    // foldhash: SipHash of the tuples was ~8% of the agent's CPU (bench propagation)
    queues: HashMap<QueueKey, VecDeque<Pending>>,
    ready: Vec<Span>,
    ids: Box<dyn IdSource>,
    /// Spans leave without ids; [`SpanBuilder::decide_ids`] gives them
    /// (the agent with propagation: most spans take the kernel's ids).
    defer_ids: bool,
    unmatched_responses: u64,
}

impl std::fmt::Debug for SpanBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanBuilder")
            .field("pending", &self.pending())
            .field("unmatched_responses", &self.unmatched_responses)
            .finish()
    }
}

impl Default for SpanBuilder {
    fn default() -> Self {
        SpanBuilder::new(Box::new(RandomIds))
    }
}

impl SpanBuilder {
    /// A builder drawing new ids from `ids`.
    pub fn new(ids: Box<dyn IdSource>) -> SpanBuilder {
        SpanBuilder { queues: HashMap::default(), ready: Vec::new(), ids, defer_ids: false, unmatched_responses: 0 }
    }

    /// With `defer`, complete spans without trace and span ids (empty), for
    /// a caller that takes them from elsewhere first and calls
    /// [`SpanBuilder::decide_ids`] for the others: no random ids drawn and
    /// formatted to be dropped.
    pub fn deferring_ids(mut self, defer: bool) -> SpanBuilder {
        self.defer_ids = defer;
        self
    }

    /// Ids for `span` from its request's traceparent (continued when
    /// valid, else a new trace) and a new span id.
    pub fn decide_ids(&mut self, span: &mut Span) {
        let decision = decide_trace(&span.traceparent_in, self.ids.as_mut());
        span.trace_id = decision.trace_id;
        span.span_id = SpanIdHex::from_bytes(&self.ids.span_id());
        span.parent_id = decision.parent_id;
        span.flags = decision.flags;
        span.propagated = decision.propagated;
    }

    /// Requests still waiting for their response.
    pub fn pending(&self) -> usize {
        self.queues.values().map(VecDeque::len).sum()
    }

    /// Responses that arrived with no request queued (capture started mid-way).
    pub fn unmatched_responses(&self) -> u64 {
        self.unmatched_responses
    }

    /// Feed one event; returns the first span it completed, if any. One
    /// event can complete several (responses pipelined in one segment): the
    /// others wait in [`SpanBuilder::take_ready`]. Prefer [`SpanBuilder::push_all`].
    pub fn push(&mut self, ev: &Event) -> Option<Span> {
        let mut spans = self.push_all(ev).into_iter();
        let first = spans.next();
        self.ready.extend(spans);
        first
    }

    /// Spans completed by earlier [`SpanBuilder::push`] calls beyond the one
    /// each returned.
    pub fn take_ready(&mut self) -> Vec<Span> {
        std::mem::take(&mut self.ready)
    }

    /// Feed one event; returns every span it completed, in request order.
    pub fn push_all(&mut self, ev: &Event) -> Vec<Span> {
        match ev {
            Event::HttpRequest(req) => {
                let key = (req.meta.tuple, req.meta.dir);
                let last_segment_ns = req.meta.ts_ns;
                let queue = self.queues.entry(key).or_default();
                for r in std::iter::once(req).chain(&req.pipelined) {
                    let mut r = r.clone();
                    r.pipelined.clear();
                    queue.push_back(Pending { req: r, last_segment_ns });
                }
                Vec::new()
            }
            Event::HttpContinuation(c) => {
                self.merge_continuation(c);
                Vec::new()
            }
            Event::HttpResponse(resp) => {
                std::iter::once(resp).chain(&resp.pipelined).filter_map(|r| self.complete(r)).collect()
            }
            Event::ConnClose { meta, .. } => {
                // Requests never answered on a closed connection yield no span.
                for t in [meta.tuple, meta.tuple.reversed()] {
                    for d in [Dir::Ingress, Dir::Egress] {
                        self.queues.remove(&(t, d));
                    }
                }
                Vec::new()
            }
            Event::ConnOpen { .. } | Event::CtInsertFailed { .. } => Vec::new(),
        }
    }

    fn merge_continuation(&mut self, c: &HttpContinuation) {
        let Some(p) = self.queues.get_mut(&(c.meta.tuple, c.meta.dir)).and_then(|q| q.back_mut()) else {
            return;
        };
        p.last_segment_ns = c.meta.ts_ns;
        complete_request_line(&mut p.req, c);
        if p.req.host.is_none() {
            p.req.host.clone_from(&c.host);
        }
        if p.req.traceparent == Traceparent::Missing && c.traceparent != Traceparent::Missing {
            p.req.traceparent = c.traceparent.clone();
        }
        if p.req.tracestate.is_none() {
            p.req.tracestate.clone_from(&c.tracestate);
        }
        p.req.size = p.req.size.saturating_add(c.size);
    }

    fn complete(&mut self, resp: &HttpResponse) -> Option<Span> {
        let key = (resp.meta.tuple.reversed(), resp.meta.dir.opposite());
        let Some(p) = self.queues.get_mut(&key).and_then(VecDeque::pop_front) else {
            self.unmatched_responses += 1;
            return None;
        };
        if self.queues.get(&key).is_some_and(VecDeque::is_empty) {
            self.queues.remove(&key);
        }
        let req = p.req;
        let t = req.meta.tuple;
        let mut span = Span {
            kind: if req.meta.dir == Dir::Ingress { SpanKind::Server } else { SpanKind::Client },
            method: req.method,
            path: req.path,
            host: req.host,
            status: resp.status,
            client: t.src(),
            server: t.dst(),
            request_size: req.content_length.unwrap_or(0),
            response_size: resp.content_length.unwrap_or(0),
            request_start_ns: req.meta.ts_ns,
            start_ns: p.last_segment_ns,
            end_ns: resp.meta.ts_ns.max(p.last_segment_ns),
            traceparent_in: req.traceparent,
            tracestate: req.tracestate,
            trace_id: TraceIdHex::EMPTY,
            span_id: SpanIdHex::EMPTY,
            parent_id: None,
            flags: 0,
            propagated: false,
            ifindex: req.meta.ifindex,
        };
        if !self.defer_ids {
            self.decide_ids(&mut span);
        }
        Some(span)
    }
}

/// Longest target assembled from split segments (a request line is at most
/// a few KiB in practice; this bounds what a never-ending line costs).
const MAX_SPLIT_PATH: usize = 8192;

/// Continue a request line its first segment cut with the next segment's
/// first line: more target up to the space before the version, and the
/// line is complete at its line feed (or when the rest is unknown).
fn complete_request_line(req: &mut HttpRequest, c: &HttpContinuation) {
    if req.request_line == RequestLine::CutInTarget {
        let (more, ended) = match c.line_rest.split_once(' ') {
            Some((more, _)) => (more, true),
            None => (c.line_rest.as_str(), false),
        };
        if req.path.len() + more.len() > MAX_SPLIT_PATH {
            req.request_line = RequestLine::Complete;
            return;
        }
        req.path.push_str(more);
        if ended {
            req.request_line = RequestLine::CutAfterTarget;
        }
    }
    if req.request_line != RequestLine::Complete && c.line_rest_end != LineEnd::Segment {
        req.request_line = RequestLine::Complete;
    }
}

/// Maps CLOCK_MONOTONIC (the kernel's `bpf_ktime_get_ns`) to wall-clock time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WallClock {
    /// realtime − monotonic, in ns.
    pub offset_ns: i128,
}

impl WallClock {
    /// Sample both clocks now.
    pub fn now() -> WallClock {
        let read = |clock| {
            let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: valid out-pointer; both clocks always exist on Linux.
            unsafe { libc::clock_gettime(clock, &mut ts) };
            i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
        };
        WallClock { offset_ns: read(libc::CLOCK_REALTIME) - read(libc::CLOCK_MONOTONIC) }
    }

    /// Unix time in ns for a monotonic timestamp.
    pub fn unix_ns(&self, mono_ns: u64) -> i128 {
        i128::from(mono_ns) + self.offset_ns
    }
}

/// Go's `time.Duration.String()`, which Beyla prints: `5.045099ms`, `1.5µs`,
/// `2m3.5s`, `0s`.
pub fn go_duration(ns: u64) -> String {
    fn frac(v: u64, digits: usize) -> String {
        let s = format!("{v:0digits$}");
        let t = s.trim_end_matches('0');
        if t.is_empty() { String::new() } else { format!(".{t}") }
    }
    match ns {
        0 => "0s".to_owned(),
        n if n < 1_000 => format!("{n}ns"),
        n if n < 1_000_000 => format!("{}{}µs", n / 1_000, frac(n % 1_000, 3)),
        n if n < 1_000_000_000 => format!("{}{}ms", n / 1_000_000, frac(n % 1_000_000, 6)),
        n => {
            let secs = n / 1_000_000_000;
            let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
            let mut out = String::new();
            if h > 0 {
                out.push_str(&format!("{h}h"));
            }
            if h > 0 || m > 0 {
                out.push_str(&format!("{m}m"));
            }
            out.push_str(&format!("{s}{}s", frac(n % 1_000_000_000, 9)));
            out
        }
    }
}

/// Civil (UTC) date from days since 1970-01-01 (H. Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Beyla's start timestamp, UTC. Beyla formats with Go's layout
/// `2006-01-02 15:04:05.12345`, where the digits after the dot are *not*
/// fractional seconds but Go's unpadded month, day, 12-hour hour, minute and
/// second again (`21:42:18.11794218` is Jan 17, 9 pm, 42 min, 18 s).
/// Reproduced as is so tools parsing Beyla's output parse ours.
pub fn beyla_timestamp(unix_ns: i128) -> String {
    let secs = i64::try_from(unix_ns.div_euclid(1_000_000_000)).unwrap_or(0);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let (h, mi, s) = (sod / 3600, (sod / 60) % 60, sod % 60);
    let h12 = if h % 12 == 0 { 12 } else { h % 12 };
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{mo}{d}{h12}{mi}{s}")
}

impl Span {
    /// Beyla's traceparent field: `00-<trace>-<span>[<parent>]-<flags>`;
    /// a root span shows an all-zero parent, as Beyla does.
    pub fn beyla_traceparent(&self) -> String {
        let parent = self.parent_id.as_deref().unwrap_or("0000000000000000");
        format!("00-{}-{}[{}]-{:02x}", self.trace_id, self.span_id, parent, self.flags)
    }

    /// One line in Beyla's text format. `svc` fills `svc=[…]`: Beyla prints
    /// the service and its SDK language there; we print the service name and
    /// `tc` (seen at the TC layer, no SDK).
    pub fn beyla_line(&self, clock: &WallClock, svc: &str) -> String {
        format!(
            "{} ({}[{}]) {} {} {} {} [{}:{}]->[{}:{}] size:{}B svc=[{} tc] traceparent=[{}]",
            beyla_timestamp(clock.unix_ns(self.start_ns)),
            go_duration(self.end_ns.saturating_sub(self.request_start_ns)),
            go_duration(self.end_ns.saturating_sub(self.start_ns)),
            self.kind.beyla_type(),
            self.status,
            self.method,
            self.path,
            self.client.ip(),
            self.client.port(),
            self.server.ip(),
            self.server.port(),
            self.request_size,
            svc,
            self.beyla_traceparent(),
        )
    }

    /// A line without timestamps, durations or fresh random ids, for
    /// snapshots: propagated ids are shown, generated ones as `<new>`.
    pub fn snapshot_line(&self) -> String {
        let tp_in = match &self.traceparent_in {
            Traceparent::Missing => "missing".to_owned(),
            Traceparent::Valid(v) => format!("valid:{v}"),
            Traceparent::Invalid(v) => format!("invalid:{v}"),
        };
        let trace = if self.propagated { self.trace_id.as_str() } else { "<new>" };
        format!(
            "{} {} {} {} [{}]->[{}] size:{}B host={} traceparent_in={} trace={} parent={} flags={:02x}",
            self.kind.beyla_type(),
            self.status,
            self.method,
            self.path,
            self.client,
            self.server,
            self.request_size,
            self.host.as_deref().unwrap_or("-"),
            tp_in,
            trace,
            self.parent_id.as_deref().unwrap_or("none"),
            self.flags,
        )
    }

    /// One JSON object (the `--output json` line).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"failed to serialise span: {e}\"}}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_continued_and_a_misshapen_one_restarts() {
        let mut ids = SequentialIds::default();
        let valid = |v: &str| Traceparent::Valid(v.to_owned());
        let d = decide_trace(&valid("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"), &mut ids);
        assert_eq!(d.trace_id, "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(d.parent_id.as_deref(), Some("b7ad6b7169203331"));
        assert_eq!((d.flags, d.propagated), (1, true));
        // a later version may append fields after a dash
        let d = decide_trace(&valid("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00-x"), &mut ids);
        assert_eq!((d.parent_id.as_deref(), d.flags), (Some("b7ad6b7169203331"), 0));
        // fields out of place, a non-hex digit, a suffix without its dash:
        // a new trace (the sequential source's first ids)
        for bad in [
            "00-0af7651916cd43dd8448eb211c80319-cb7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0g",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x",
            "00-0af7651916cd43dd8448eb211c80319c",
        ] {
            let d = decide_trace(&valid(bad), &mut ids);
            assert!(!d.propagated && d.parent_id.is_none(), "{bad} was continued");
        }
        assert_eq!(decide_trace(&valid("x"), &mut SequentialIds::default()).trace_id, format!("{:032x}", 1));
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(999), "999ns");
        assert_eq!(go_duration(1_500), "1.5µs");
        assert_eq!(go_duration(5_045_099), "5.045099ms");
        assert_eq!(go_duration(2_000_000), "2ms");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
        assert_eq!(go_duration(123_500_000_000), "2m3.5s");
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
    }

    #[test]
    fn beyla_go_layout_quirk() {
        // 2025-01-17 21:42:18 UTC, the example from Beyla's docs.
        let unix = 1_737_150_138i128 * 1_000_000_000;
        assert_eq!(beyla_timestamp(unix), "2025-01-17 21:42:18.11794218");
        assert_eq!(beyla_timestamp(0), "1970-01-01 00:00:00.111200");
    }
}
