//! Ring-buffer events from the classifiers, decoded into [`Event`].
//!
//! A record is read as the `#[repr(C)]` mirror of its C struct
//! ([`EventHeader`], [`HttpEvent`], [`ConnEvent`] in [`crate::types`], whose
//! layout test checks them against the object's BTF): one definition of the
//! wire format. A short or corrupt record is an error, never undefined
//! behaviour. Method, path, host, status and Content-Length are parsed here
//! from the captured payload; the traceparent verdict is the kernel's.

use std::mem::size_of;
use std::os::fd::AsRawFd;
use std::time::Duration;

use aya::maps::perf::{PerfEvent, PerfEventArray, PerfEventArrayBuffer};
use aya::maps::{MapData, RingBuf};
use serde::{Deserialize, Serialize};

use crate::types::{
    ConnEvent, CtEntry, CtTuple, Dir, EventHeader, EventKind, HttpEvent, TraceparentStatus, read_struct,
};

/// A decoding failure: which record, and what was wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    /// The record is shorter than its kind requires.
    #[error("failed to decode event kind {kind}: record is {len} bytes, expected at least {need}")]
    Short {
        /// Event kind (0 when the record is too short to hold one).
        kind: u32,
        /// Record length.
        len: usize,
        /// Bytes required.
        need: usize,
    },
    /// Unknown `kind`.
    #[error("failed to decode event: unknown kind {0}")]
    UnknownKind(u32),
    /// A field holds an impossible value.
    #[error("failed to decode event kind {kind}: {reason}")]
    Invalid {
        /// Event kind.
        kind: u32,
        /// What was wrong.
        reason: String,
    },
}

/// Fields every event carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMeta {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// Device the program is attached to.
    pub ifindex: u32,
    /// The packet's own tuple (not the CT key).
    pub tuple: CtTuple,
    /// Hook that saw it.
    pub dir: Dir,
    /// `enum ct_status` of the lookup.
    pub ct_status: u8,
    /// TCP flags of the packet.
    pub tcp_flags: u8,
}

impl EventMeta {
    /// The common fields of a record's header, checked.
    ///
    /// # Errors
    /// What is wrong (unknown family or direction).
    pub fn from_header(h: &EventHeader) -> Result<EventMeta, String> {
        h.tuple.validate()?;
        let dir = Dir::from_raw(h.dir).ok_or_else(|| format!("unknown direction {}", h.dir))?;
        Ok(EventMeta { ts_ns: h.ts_ns, ifindex: h.ifindex, tuple: h.tuple, dir, ct_status: h.ct_status, tcp_flags: h.tcp_flags })
    }
}

/// The kernel's W3C verdict on the request's traceparent header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", content = "value", rename_all = "snake_case")]
pub enum Traceparent {
    /// No header found.
    Missing,
    /// A valid header (the value, lower-case, 55 chars).
    Valid(String),
    /// A header that failed validation (what the kernel captured, if anything).
    Invalid(String),
}

/// An HTTP request line (and whatever headers fit the capture).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRequest {
    /// Common fields.
    pub meta: EventMeta,
    /// Request method.
    pub method: String,
    /// Request target.
    pub path: String,
    /// `Host` header, when captured.
    pub host: Option<String>,
    /// `Content-Length`, when captured.
    pub content_length: Option<u64>,
    /// Traceparent verdict.
    pub traceparent: Traceparent,
    /// `tracestate` value, when present.
    pub tracestate: Option<String>,
    /// TCP payload length of the segment.
    pub size: u32,
    /// The header block ended inside the captured bytes.
    pub headers_complete: bool,
    /// Whether the request line ended in this segment; when it did not, the
    /// continuation events of the request complete `path`
    /// ([`HttpContinuation::line_rest`]).
    #[serde(default, skip_serializing_if = "RequestLine::is_complete")]
    pub request_line: RequestLine,
    /// Further requests pipelined in the same segment, parsed from the
    /// captured bytes. The kernel judges the first request's traceparent;
    /// these are judged in user space by the same W3C rules ([`crate::w3c`],
    /// differential-tested against the kernel's validator).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pipelined: Vec<HttpRequest>,
}

/// An HTTP status line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpResponse {
    /// Common fields.
    pub meta: EventMeta,
    /// Status code.
    pub status: u16,
    /// `Content-Length`, when captured.
    pub content_length: Option<u64>,
    /// TCP payload length of the segment.
    pub size: u32,
    /// Further responses in the same segment (answers to pipelined
    /// requests written at once), parsed from the captured bytes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pipelined: Vec<HttpResponse>,
}

/// How far the request line of a request event got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestLine {
    /// It ended in the segment (or was cut by the capture limit: what was
    /// captured is all there will be).
    #[default]
    Complete,
    /// The segment ended after the target: only the version goes on.
    CutAfterTarget,
    /// The segment ended inside the target: the next segment continues it.
    CutInTarget,
}

impl RequestLine {
    /// Nothing more to learn from later segments.
    pub fn is_complete(&self) -> bool {
        *self == RequestLine::Complete
    }
}

/// How [`HttpContinuation::line_rest`] ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineEnd {
    /// A line feed: the line is complete.
    #[default]
    LineFeed,
    /// The end of the segment: the line may go on in the next one.
    Segment,
    /// The end of the capture: the rest of the line is unknown.
    Capture,
}

/// A later segment of a request whose head was split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpContinuation {
    /// Common fields.
    pub meta: EventMeta,
    /// `Host` header, when in this segment.
    pub host: Option<String>,
    /// Traceparent verdict for this segment.
    pub traceparent: Traceparent,
    /// `tracestate` value, when present.
    pub tracestate: Option<String>,
    /// TCP payload length of the segment.
    pub size: u32,
    /// The segment's text before its first line feed (CR removed), without
    /// the bytes the kernel carried over from the previous segment: the
    /// rest of a request line that segment cut.
    #[serde(default)]
    pub line_rest: String,
    /// What ends `line_rest`.
    #[serde(default)]
    pub line_rest_end: LineEnd,
}

/// One decoded ring-buffer record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A CT entry was created.
    ConnOpen {
        /// Common fields.
        meta: EventMeta,
        /// The entry.
        entry: CtEntry,
    },
    /// A connection closed.
    ConnClose {
        /// Common fields.
        meta: EventMeta,
        /// The entry at close.
        entry: CtEntry,
    },
    /// Request line.
    HttpRequest(HttpRequest),
    /// Status line.
    HttpResponse(HttpResponse),
    /// Split request's later segment.
    HttpContinuation(HttpContinuation),
    /// The CT table was full.
    CtInsertFailed {
        /// Common fields.
        meta: EventMeta,
    },
}

impl Event {
    /// Common fields of any event.
    pub fn meta(&self) -> &EventMeta {
        match self {
            Event::ConnOpen { meta, .. } | Event::ConnClose { meta, .. } | Event::CtInsertFailed { meta } => meta,
            Event::HttpRequest(r) => &r.meta,
            Event::HttpResponse(r) => &r.meta,
            Event::HttpContinuation(c) => &c.meta,
        }
    }

    /// Decode one ring-buffer record.
    ///
    /// # Errors
    /// [`EventError`] for short records, unknown kinds, bad families.
    pub fn decode(b: &[u8]) -> Result<Event, EventError> {
        let short = |kind: u32, need: usize| EventError::Short { kind, len: b.len(), need };
        let Some(hdr) = read_struct::<EventHeader>(b) else {
            let kind = b.get(8..12).map_or(0, |k| u32::from_ne_bytes([k[0], k[1], k[2], k[3]]));
            return Err(short(kind, size_of::<EventHeader>()));
        };
        let kind = EventKind::from_raw(hdr.kind).ok_or(EventError::UnknownKind(hdr.kind))?;
        let invalid = |reason: String| EventError::Invalid { kind: hdr.kind, reason };
        if kind.is_http() {
            let ev = read_http_record(b).map_err(|need| short(hdr.kind, need))?;
            let meta = EventMeta::from_header(&ev.hdr).map_err(invalid)?;
            return decode_http(kind, meta, &ev);
        }
        let ev = read_struct::<ConnEvent>(b).ok_or_else(|| short(hdr.kind, size_of::<ConnEvent>()))?;
        let meta = EventMeta::from_header(&ev.hdr).map_err(invalid)?;
        let entry = ev.entry;
        Ok(match kind {
            EventKind::ConnOpen => Event::ConnOpen { meta, entry },
            EventKind::ConnClose => Event::ConnClose { meta, entry },
            _ => Event::CtInsertFailed { meta },
        })
    }
}

fn nul_trimmed(b: &[u8]) -> String {
    let b = &b[..memchr::memchr(0, b).unwrap_or(b.len())];
    // the strict check is the fast one; a lossy copy only for bad bytes
    match std::str::from_utf8(b) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(b).into_owned(),
    }
}

fn decode_http(kind: EventKind, meta: EventMeta, ev: &HttpEvent) -> Result<Event, EventError> {
    let invalid = |reason: String| EventError::Invalid { kind: kind as u32, reason };
    let payload = ev.payload();
    let traceparent = match TraceparentStatus::from_raw(ev.traceparent_status) {
        Some(TraceparentStatus::Missing) => Traceparent::Missing,
        Some(TraceparentStatus::Valid) => Traceparent::Valid(nul_trimmed(&ev.traceparent)),
        Some(TraceparentStatus::Invalid) => Traceparent::Invalid(nul_trimmed(&ev.traceparent)),
        None => return Err(invalid(format!("unknown traceparent status {}", ev.traceparent_status))),
    };
    let tracestate = (!ev.tracestate().is_empty()).then(|| String::from_utf8_lossy(ev.tracestate()).into_owned());
    let size = ev.payload_len;
    // everything of the segment was captured (the carried bytes come first)
    let whole = payload.len() >= usize::from(ev.carried_len) + size as usize;
    // a continuation that begins inside a line: its headers start after the first LF
    let lines = match ev.line_start {
        0 => payload.iter().position(|&c| c == b'\n').map_or(&[][..], |lf| &payload[lf + 1..]),
        _ => payload,
    };
    let parsed = parse_http_head(lines);
    Ok(match kind {
        EventKind::HttpRequest => {
            let (method, path, request_line) = match parsed.start {
                Some(StartLine::Request { method, path }) => (method, path, RequestLine::Complete),
                _ => parse_cut_request_line(payload, whole).ok_or_else(|| invalid("payload has no request line".into()))?,
            };
            let pipelined = pipelined_requests(&meta, payload, parsed.content_length);
            Event::HttpRequest(HttpRequest {
                meta,
                method,
                path,
                host: parsed.host,
                content_length: parsed.content_length,
                traceparent,
                tracestate,
                size,
                headers_complete: parsed.complete,
                request_line,
                pipelined,
            })
        }
        EventKind::HttpResponse => {
            let Some(StartLine::Response { status }) = parsed.start else {
                return Err(invalid("payload has no status line".into()));
            };
            let pipelined = pipelined_responses(&meta, payload, parsed.content_length);
            Event::HttpResponse(HttpResponse { meta, status, content_length: parsed.content_length, size, pipelined })
        }
        _ => {
            let own = payload.get(usize::from(ev.carried_len)..).unwrap_or_default();
            let (rest, line_rest_end) = match own.iter().position(|&c| c == b'\n') {
                Some(lf) => (&own[..lf], LineEnd::LineFeed),
                None if whole => (own, LineEnd::Segment),
                None => (own, LineEnd::Capture),
            };
            let rest = rest.strip_suffix(b"\r").unwrap_or(rest);
            Event::HttpContinuation(HttpContinuation {
                meta,
                host: parsed.host,
                traceparent,
                tracestate,
                size,
                line_rest: String::from_utf8_lossy(rest).into_owned(),
                line_rest_end,
            })
        }
    })
}

/// A request line the segment cut before its line feed (the kernel saw the
/// method and its space): the method and as much of the target as there is.
/// `whole`: the capture holds the entire segment, so later segments carry
/// the rest; otherwise the capture limit cut it and the target stays as is.
fn parse_cut_request_line(payload: &[u8], whole: bool) -> Option<(String, String, RequestLine)> {
    if payload.contains(&b'\n') {
        return None; // a complete first line that is not a request line
    }
    let text = String::from_utf8_lossy(payload);
    let text = text.strip_suffix('\r').unwrap_or(&text);
    let (method, rest) = text.split_once(' ')?;
    if method.is_empty() || !method.bytes().all(|c| c.is_ascii_uppercase() || c == b'-' || c == b'_') {
        return None;
    }
    let (path, state) = match rest.split_once(' ') {
        Some((path, _)) => (path, RequestLine::CutAfterTarget),
        None => (rest, RequestLine::CutInTarget),
    };
    Some((method.to_owned(), path.to_owned(), if whole { state } else { RequestLine::Complete }))
}

/// Requests after the first one in a captured segment: each starts where the
/// previous head (and its `Content-Length` body) ends. Stops at the first
/// bytes that are not a complete request head.
fn pipelined_requests(meta: &EventMeta, payload: &[u8], first_body: Option<u64>) -> Vec<HttpRequest> {
    let mut out = Vec::new();
    let mut rest = payload;
    let mut body = first_body.unwrap_or(0);
    while let Some(end) = find(rest, b"\r\n\r\n") {
        let next = (end + 4).saturating_add(usize::try_from(body).unwrap_or(usize::MAX));
        let Some(tail) = rest.get(next..) else { break };
        let head = parse_http_head(tail);
        let (Some(StartLine::Request { method, path }), true) = (head.start, head.complete) else { break };
        let traceparent = match header_value(tail, b"traceparent") {
            None => Traceparent::Missing,
            Some(v) => match crate::w3c::parse_traceparent(v) {
                Ok(_) => Traceparent::Valid(String::from_utf8_lossy(&v[..v.len().min(55)]).into_owned()),
                Err(_) => Traceparent::Invalid(String::new()),
            },
        };
        let tracestate = header_value(tail, b"tracestate").map(|v| String::from_utf8_lossy(v).into_owned());
        out.push(HttpRequest {
            meta: meta.clone(),
            method,
            path,
            host: head.host,
            content_length: head.content_length,
            traceparent,
            tracestate,
            size: 0,
            headers_complete: true,
            request_line: RequestLine::Complete,
            pipelined: Vec::new(),
        });
        body = head.content_length.unwrap_or(0);
        rest = tail;
    }
    out
}

/// Responses after the first one in a captured segment, found the same way
/// as [`pipelined_requests`]: each starts where the previous head and its
/// `Content-Length` body end. A response without Content-Length ends the
/// search (its body length is unknown).
fn pipelined_responses(meta: &EventMeta, payload: &[u8], first_body: Option<u64>) -> Vec<HttpResponse> {
    let mut out = Vec::new();
    let mut rest = payload;
    let mut body = first_body;
    while let (Some(end), Some(len)) = (find(rest, b"\r\n\r\n"), body) {
        let next = (end + 4).saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
        let Some(tail) = rest.get(next..) else { break };
        let head = parse_http_head(tail);
        let (Some(StartLine::Response { status }), true) = (head.start, head.complete) else { break };
        out.push(HttpResponse { meta: meta.clone(), status, content_length: head.content_length, size: 0, pipelined: Vec::new() });
        body = head.content_length;
        rest = tail;
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The value of header `name` (case-insensitive) in the head at the start of
/// `msg`, without surrounding spaces and tabs.
fn header_value<'a>(msg: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let head = &msg[..find(msg, b"\r\n\r\n").unwrap_or(msg.len())];
    head.split(|&b| b == b'\n').skip(1).find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        let (key, value) = (&line[..colon], &line[colon + 1..]);
        if !key.eq_ignore_ascii_case(name) {
            return None;
        }
        let trim = |b: &u8| *b == b' ' || *b == b'\t';
        let start = value.iter().position(|b| !trim(b)).unwrap_or(value.len());
        let end = value.iter().rposition(|b| !trim(b)).map_or(start, |e| e + 1);
        Some(&value[start..end])
    })
}

/// First line of an HTTP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    /// `METHOD target HTTP/1.x`.
    Request {
        /// Method token.
        method: String,
        /// Target.
        path: String,
    },
    /// `HTTP/1.x NNN reason`.
    Response {
        /// Status code.
        status: u16,
    },
}

/// What [`parse_http_head`] found in (the captured start of) a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpHead {
    /// Start line, if the bytes begin with one.
    pub start: Option<StartLine>,
    /// `Host`.
    pub host: Option<String>,
    /// `Content-Length`.
    pub content_length: Option<u64>,
    /// The empty line ending the headers was seen.
    pub complete: bool,
}

/// Parse the start line and the headers we use from a (possibly truncated)
/// HTTP/1.x head. Lines cut by the capture limit are ignored, not guessed.
pub fn parse_http_head(payload: &[u8]) -> HttpHead {
    let mut head = HttpHead::default();
    let mut rest = payload;
    let mut first = true;
    // Line ends found with memchr (SIMD): this parse runs for every
    // request and response an agent sees. What follows the last '\n' was
    // cut by the capture.
    while let Some(nl) = memchr::memchr(b'\n', rest) {
        let raw = &rest[..nl];
        rest = &rest[nl + 1..];
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.is_empty() {
            head.complete = true;
            break;
        }
        if first {
            first = false;
            head.start = parse_start_line(&String::from_utf8_lossy(line));
            if head.start.is_some() {
                continue;
            }
        }
        // Header lines stay bytes: only the values kept become text (a
        // lossy conversion of every line was ~8% of an agent's reader).
        if let Some(colon) = memchr::memchr(b':', line) {
            let (name, value) = (&line[..colon], trim_blanks(&line[colon + 1..]));
            if name.eq_ignore_ascii_case(b"host") {
                head.host = Some(String::from_utf8_lossy(value).into_owned());
            } else if name.eq_ignore_ascii_case(b"content-length") {
                head.content_length = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            }
        }
    }
    head
}

/// `v` without leading and trailing spaces and tabs (HTTP's optional
/// whitespace around a header value).
fn trim_blanks(v: &[u8]) -> &[u8] {
    let blank = |c: &u8| *c == b' ' || *c == b'\t';
    let start = v.iter().position(|c| !blank(c)).unwrap_or(v.len());
    let end = v.iter().rposition(|c| !blank(c)).map_or(start, |i| i + 1);
    &v[start..end]
}

fn parse_start_line(line: &str) -> Option<StartLine> {
    let mut parts = line.splitn(3, ' ');
    let (a, b, c) = (parts.next()?, parts.next()?, parts.next());
    if let Some(version) = a.strip_prefix("HTTP/") {
        let _ = version;
        let status: u16 = b.parse().ok().filter(|s| (100..1000).contains(s))?;
        return Some(StartLine::Response { status });
    }
    let is_token = !a.is_empty() && a.bytes().all(|c| c.is_ascii_uppercase() || c == b'-' || c == b'_');
    (is_token && c.is_some_and(|v| v.starts_with("HTTP/")))
        .then(|| StartLine::Request { method: a.to_owned(), path: b.to_owned() })
}

/// Most ring records one [`EventReader::poll`] returns. A reader that fell
/// behind gets its backlog in batches: each batch's buffers (events, then
/// spans) stay well under the 64 KiB whose free makes glibc consolidate
/// every small free chunk (in the propagation benchmark, a backlog taken
/// in one piece spent ~1 µs per request there).
pub const MAX_BATCH: usize = 128;

/// Longest wait in one `poll(2)` of [`EventReader::poll`]: the latency of
/// an event that did not wake the reader.
pub const POLL_SLICE: Duration = Duration::from_millis(10);

/// An HTTP record: the datapath sends the fixed part and only the captured
/// bytes of `payload` (`captured_len`); the rest reads as zeros. `Err` holds
/// the length the record needed.
///
/// # Errors
/// The record is shorter than its fixed part plus `captured_len`.
pub fn read_http_record(b: &[u8]) -> Result<HttpEvent, usize> {
    let fixed = std::mem::offset_of!(HttpEvent, payload);
    if b.len() < fixed {
        return Err(fixed);
    }
    let mut full = [0u8; size_of::<HttpEvent>()];
    let n = b.len().min(full.len());
    full[..n].copy_from_slice(&b[..n]);
    let ev = read_struct::<HttpEvent>(&full).ok_or(size_of::<HttpEvent>())?;
    let need = fixed + usize::from(ev.captured_len).min(crate::types::PAYLOAD_CAPTURE);
    if b.len() < need {
        return Err(need);
    }
    Ok(ev)
}

enum Source {
    Ring(RingBuf<MapData>),
    /// One buffer per online CPU (the fallback for kernels without ring buffers).
    Perf(Vec<PerfEventArrayBuffer<MapData>>),
}

/// Reads and decodes records from the events map: the ring buffer, or the
/// per-CPU perf buffers on kernels without one. Owned by one thread;
/// [`EventReader::poll`] waits with `poll(2)` on the map fds.
pub struct EventReader {
    source: Source,
    decode_errors: u64,
    perf_lost: u64,
    /// Perf records read but not yet released (see `reorder_perf`).
    held: Vec<Vec<u8>>,
}

impl std::fmt::Debug for EventReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let transport = match self.source {
            Source::Ring(_) => "ringbuf",
            Source::Perf(_) => "perf",
        };
        f.debug_struct("EventReader")
            .field("transport", &transport)
            .field("decode_errors", &self.decode_errors)
            .field("perf_lost", &self.perf_lost)
            .finish()
    }
}

/// Opening the perf buffers failed.
#[derive(Debug, thiserror::Error)]
#[error("failed to {op}: {reason}")]
pub struct ReaderError {
    /// What was being done.
    pub op: String,
    /// Why it failed.
    pub reason: String,
}

impl EventReader {
    /// Wrap a ring buffer taken from the loaded datapath.
    pub fn new(ring: RingBuf<MapData>) -> EventReader {
        EventReader { source: Source::Ring(ring), decode_errors: 0, perf_lost: 0, held: Vec::new() }
    }

    /// Open one perf buffer per online CPU of a `PERF_EVENT_ARRAY` events map.
    ///
    /// # Errors
    /// [`ReaderError`] when the CPU list cannot be read or a buffer not opened.
    pub fn new_perf(mut perf: PerfEventArray<MapData>) -> Result<EventReader, ReaderError> {
        let cpus = aya::util::online_cpus().map_err(|(path, e)| ReaderError { op: format!("read {path}"), reason: e.to_string() })?;
        let buffers = cpus
            .into_iter()
            .map(|cpu| {
                // 16 pages per CPU: room for ~120 HTTP events between polls.
                perf.open(cpu, Some(16))
                    .map_err(|e| ReaderError { op: format!("open the perf buffer of CPU {cpu}"), reason: e.to_string() })
            })
            .collect::<Result<_, _>>()?;
        Ok(EventReader { source: Source::Perf(buffers), decode_errors: 0, perf_lost: 0, held: Vec::new() })
    }

    /// Records that could not be decoded so far (logged and skipped).
    pub fn decode_errors(&self) -> u64 {
        self.decode_errors
    }

    /// Samples the perf buffers reported lost (the ring buffer path counts
    /// losses in the kernel's `CNT_EVENTS_LOST` instead).
    pub fn perf_lost(&self) -> u64 {
        self.perf_lost
    }

    /// Wait up to `timeout` for data, then drain what is available (at most
    /// [`MAX_BATCH`] ring records; the rest is returned by the next call).
    ///
    /// The datapath wakes the reader only once a backlog builds up
    /// (`tclab_events_wakeup_bytes`), so the wait is cut into slices of at
    /// most [`POLL_SLICE`] with a drain after each: a lone event is read
    /// within a slice, not at the end of `timeout`.
    pub fn poll(&mut self, timeout: Duration) -> Vec<Event> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let out = self.poll_once(left.min(POLL_SLICE));
            if !out.is_empty() || left <= POLL_SLICE {
                return out;
            }
        }
    }

    fn poll_once(&mut self, timeout: Duration) -> Vec<Event> {
        let mut out = self.drain_up_to(MAX_BATCH);
        if out.is_empty() {
            let mut fds: Vec<libc::pollfd> = match &self.source {
                Source::Ring(r) => vec![r.as_raw_fd()],
                Source::Perf(bufs) => bufs.iter().map(AsRawFd::as_raw_fd).collect(),
            }
            .into_iter()
            .map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
            .collect();
            // Held perf records are released ~1 ms after they were written.
            let timeout = if self.held.is_empty() { timeout } else { timeout.min(Duration::from_millis(2)) };
            let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
            // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
            out = self.drain_up_to(MAX_BATCH);
        }
        out
    }

    /// Per-CPU buffers are read one after the other, so a response can be
    /// read before its request (on another CPU) or in an earlier drain.
    /// Every record committed before a drain starts is read by the end of
    /// that drain: release, in timestamp order, the records older than this
    /// drain's start (minus a margin for the time between a program taking
    /// its timestamp and committing), and hold the rest for the next drain.
    fn reorder_perf(&mut self, records: Vec<Vec<u8>>, drain_start: u64) -> Vec<Vec<u8>> {
        const COMMIT_MARGIN_NS: u64 = 1_000_000;
        let ts = |r: &Vec<u8>| r.get(..8).map_or(0, |b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])));
        self.held.extend(records);
        self.held.sort_by_key(ts);
        let cut = drain_start.saturating_sub(COMMIT_MARGIN_NS);
        let n = self.held.partition_point(|r| ts(r) < cut);
        self.held.drain(..n).collect()
    }

    /// Drain what is available now, without waiting. On the perf-buffer
    /// path the newest records are held until the next drain (see
    /// `reorder_perf`).
    pub fn drain(&mut self) -> Vec<Event> {
        self.drain_up_to(usize::MAX)
    }

    /// [`EventReader::drain`], at most `max` ring records (the perf-buffer
    /// path is not bounded).
    fn drain_up_to(&mut self, max: usize) -> Vec<Event> {
        let mut out = Vec::new();
        match &mut self.source {
            Source::Ring(ring) => {
                // Decoded in place, without a copy of each record (hundreds
                // of bytes of payload): a ring's records are in order.
                while out.len() < max
                    && let Some(item) = ring.next()
                {
                    decode_record(&item, &mut out, &mut self.decode_errors);
                }
            }
            Source::Perf(bufs) => {
                let drain_start = crate::ct::monotonic_now_ns();
                let mut records: Vec<Vec<u8>> = Vec::new();
                let mut lost = 0;
                for b in bufs.iter_mut() {
                    b.for_each(|ev| match ev {
                        PerfEvent::Sample { head, tail } => records.push([head, tail].concat()),
                        PerfEvent::Lost { count } => lost += count,
                    });
                }
                if lost > 0 {
                    tracing::warn!(lost, "perf buffers lost events");
                }
                self.perf_lost += lost;
                for rec in self.reorder_perf(records, drain_start) {
                    decode_record(&rec, &mut out, &mut self.decode_errors);
                }
            }
        }
        out
    }
}

/// Decode one record into `out`; an undecodable one is counted and logged.
fn decode_record(rec: &[u8], out: &mut Vec<Event>, errors: &mut u64) {
    match Event::decode(rec) {
        Ok(ev) => out.push(ev),
        Err(e) => {
            *errors += 1;
            tracing::warn!(error = %e, "skipping undecodable event record");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_head_parsed() {
        let h = parse_http_head(b"GET /traceme?x=1 HTTP/1.1\r\nHost: svc:8080\r\nContent-Length: 12\r\n\r\nbody");
        assert_eq!(h.start, Some(StartLine::Request { method: "GET".into(), path: "/traceme?x=1".into() }));
        assert_eq!(h.host.as_deref(), Some("svc:8080"));
        assert_eq!(h.content_length, Some(12));
        assert!(h.complete);
    }

    #[test]
    fn header_values_are_trimmed_of_blanks_and_other_bytes_kept() {
        let h = parse_http_head(b"GET / HTTP/1.1\r\nX-Bin: \xff\xfe\r\nHOST:\t h\xc3\xa9:1 \t\r\ncontent-length: \t 7\t\r\n\r\n");
        assert_eq!(h.host.as_deref(), Some("h\u{e9}:1"));
        assert_eq!(h.content_length, Some(7));
        assert!(h.complete);
        // invalid UTF-8 in a kept value is replaced, not dropped
        let h = parse_http_head(b"GET / HTTP/1.1\r\nHost: a\xffb\r\nContent-Length: 1 2\r\n\r\n");
        assert_eq!(h.host.as_deref(), Some("a\u{fffd}b"));
        assert_eq!(h.content_length, None, "not a number");
        // blank values
        let h = parse_http_head(b"GET / HTTP/1.1\r\nHost: \t \r\n\r\n");
        assert_eq!(h.host.as_deref(), Some(""));
    }

    #[test]
    fn truncated_header_is_not_guessed() {
        let h = parse_http_head(b"POST /a HTTP/1.1\r\nhost: abc\r\nContent-Len");
        assert_eq!(h.start, Some(StartLine::Request { method: "POST".into(), path: "/a".into() }));
        assert_eq!(h.host.as_deref(), Some("abc"));
        assert_eq!(h.content_length, None);
        assert!(!h.complete);
    }

    #[test]
    fn pipelined_requests_after_the_first_are_parsed_with_their_traceparent() {
        let meta = EventMeta {
            ts_ns: 0,
            ifindex: 0,
            tuple: CtTuple::new("10.0.0.1:1".parse().unwrap(), "10.0.0.2:80".parse().unwrap(), 6),
            dir: Dir::Egress,
            ct_status: 0,
            tcp_flags: 0,
        };
        let payload = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 2\r\nTraceParent:\t00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 \r\n\r\nxyGET /c HTTP/1.1\r\ntraceparent: 00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01\r\n\r\nGET /d HT";
        let reqs = pipelined_requests(&meta, payload, None);
        let paths: Vec<&str> = reqs.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["/b", "/c"], "the truncated /d head is not guessed");
        assert_eq!(reqs[0].method, "POST");
        assert!(matches!(&reqs[0].traceparent, Traceparent::Valid(v) if v.starts_with("00-4bf9")));
        assert_eq!(reqs[1].traceparent, Traceparent::Invalid(String::new()), "uppercase hex is invalid");
    }

    #[test]
    fn pipelined_responses_in_one_segment() {
        let meta = EventMeta {
            ts_ns: 0,
            ifindex: 0,
            tuple: CtTuple::new("10.0.0.2:80".parse().unwrap(), "10.0.0.1:1".parse().unwrap(), 6),
            dir: Dir::Ingress,
            ct_status: 0,
            tcp_flags: 0,
        };
        let payload = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\nHTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 500 x\r\n\r\n";
        let rs = pipelined_responses(&meta, payload, Some(2));
        let st: Vec<u16> = rs.iter().map(|r| r.status).collect();
        assert_eq!(st, [404, 204], "stops after a response without Content-Length");
        assert!(pipelined_responses(&meta, payload, None).is_empty());
    }

    #[test]
    fn response_status() {
        let h = parse_http_head(b"HTTP/1.1 404 Not Found\r\ncontent-length:  7\r\n\r\n");
        assert_eq!(h.start, Some(StartLine::Response { status: 404 }));
        assert_eq!(h.content_length, Some(7));
        assert_eq!(parse_http_head(b"HTTP/1.1 99 x\r\n").start, None);
        assert_eq!(parse_http_head(b"hello world\r\n").start, None);
    }

    #[test]
    fn records_decode_through_the_mirrors() {
        let tuple = CtTuple::new("10.0.0.1:5555".parse().unwrap(), "10.0.0.2:80".parse().unwrap(), 6);
        let hdr = EventHeader { ts_ns: 7, kind: EventKind::ConnOpen as u32, ifindex: 3, tuple, dir: 1, ct_status: 0, tcp_flags: 2, _pad: [0; 5] };
        let entry = CtEntry { tx_packets: 1, tx_bytes: 60, flags: crate::types::ct_flags::SEEN_NON_SYN, ..CtEntry::default() };
        let ev = ConnEvent { hdr, entry };
        // SAFETY: ConnEvent is Pod (plain integers, explicit padding).
        let bytes = unsafe { std::slice::from_raw_parts((&raw const ev).cast::<u8>(), size_of::<ConnEvent>()) }.to_vec();
        let Ok(Event::ConnOpen { meta, entry: got }) = Event::decode(&bytes) else { panic!("not a ConnOpen") };
        assert_eq!((meta.ts_ns, meta.ifindex, meta.tuple, meta.dir, meta.tcp_flags), (7, 3, tuple, Dir::Egress, 2));
        assert_eq!(got, entry);
        assert_eq!(
            serde_json::to_value(meta.tuple).unwrap(),
            serde_json::json!({"saddr": "10.0.0.1", "daddr": "10.0.0.2", "sport": 5555, "dport": 80, "proto": 6})
        );
        let mut bad = bytes.clone();
        bad[std::mem::offset_of!(EventHeader, tuple) + std::mem::offset_of!(CtTuple, family)] = 9;
        assert!(matches!(Event::decode(&bad), Err(EventError::Invalid { kind: 1, .. })), "unknown family");
        let mut bad = bytes.clone();
        bad[std::mem::offset_of!(EventHeader, dir)] = 2;
        assert!(matches!(Event::decode(&bad), Err(EventError::Invalid { kind: 1, .. })), "unknown direction");
        assert_eq!(Event::decode(&bytes[..70]), Err(EventError::Short { kind: 1, len: 70, need: size_of::<ConnEvent>() }));
        assert!(matches!(Event::decode(&[0u8; 8]), Err(EventError::Short { kind: 0, .. })));
        let mut rec = vec![0u8; 64];
        rec[8] = 99;
        assert_eq!(Event::decode(&rec), Err(EventError::UnknownKind(99)));
    }
}
