//! Ring-buffer events from the classifiers, decoded into [`Event`].
//!
//! The wire layout is `ebpf/include/tclab_types.h` (`event_header`,
//! `http_event`, `conn_event`). Decoding is done from bytes at the header's
//! offsets (checked against the `#[repr(C)]` mirrors in `types.rs` by a test),
//! so a short or corrupt record is an error, never undefined behaviour.
//! Method, path, host, status and Content-Length are parsed here from the
//! captured payload; the traceparent verdict is the kernel's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use aya::maps::perf::{PerfEvent, PerfEventArray, PerfEventArrayBuffer};
use aya::maps::{MapData, RingBuf};
use serde::{Deserialize, Serialize};

/// Event kinds (`enum tclab_event_kind`).
pub mod kind {
    /// Connection opened (CT entry created).
    pub const CONN_OPEN: u32 = 1;
    /// Connection closed (FIN/RST on both sides).
    pub const CONN_CLOSE: u32 = 2;
    /// HTTP request line seen.
    pub const HTTP_REQUEST: u32 = 3;
    /// HTTP status line seen.
    pub const HTTP_RESPONSE: u32 = 4;
    /// CT insert failed (table full).
    pub const CT_INSERT_FAILED: u32 = 5;
    /// Later segment of a request whose headers were split.
    pub const HTTP_CONTINUATION: u32 = 6;
}

/// Byte offsets and sizes of tclab_types.h, taken from the `#[repr(C)]`
/// mirrors in [`crate::types`] (whose layout test checks them against the
/// C structs), so the decoder cannot drift from the programs.
pub mod layout {
    use std::mem::{offset_of, size_of};

    use crate::types::{ConnEvent, CtEntry, CtTuple, EventHeader, HttpEvent};

    /// `sizeof(struct ct_tuple)`.
    pub const TUPLE_SIZE: usize = size_of::<CtTuple>();
    /// `sizeof(struct ct_entry)`.
    pub const ENTRY_SIZE: usize = size_of::<CtEntry>();
    /// `sizeof(struct event_header)`.
    pub const HEADER_SIZE: usize = size_of::<EventHeader>();
    /// `offsetof(struct event_header, tuple)`.
    pub const HDR_TUPLE: usize = offset_of!(EventHeader, tuple);
    /// `offsetof(struct event_header, dir)`.
    pub const HDR_DIR: usize = offset_of!(EventHeader, dir);
    /// `offsetof(struct http_event, payload_len)`.
    pub const HTTP_PAYLOAD_LEN: usize = offset_of!(HttpEvent, payload_len);
    /// `offsetof(struct http_event, captured_len)`.
    pub const HTTP_CAPTURED_LEN: usize = offset_of!(HttpEvent, captured_len);
    /// `offsetof(struct http_event, traceparent_status)`.
    pub const HTTP_TP_STATUS: usize = offset_of!(HttpEvent, traceparent_status);
    /// `offsetof(struct http_event, tracestate_len)`.
    pub const HTTP_TS_LEN: usize = offset_of!(HttpEvent, tracestate_len);
    /// `offsetof(struct http_event, traceparent)`.
    pub const HTTP_TRACEPARENT: usize = offset_of!(HttpEvent, traceparent);
    /// `TCLAB_TRACEPARENT_LEN + 1`.
    pub const TRACEPARENT_CAP: usize = HTTP_TRACESTATE_PAD_START - HTTP_TRACEPARENT;
    const HTTP_TRACESTATE_PAD_START: usize = offset_of!(HttpEvent, _pad);
    /// `offsetof(struct http_event, tracestate)`.
    pub const HTTP_TRACESTATE: usize = offset_of!(HttpEvent, tracestate);
    /// `TCLAB_TRACESTATE_MAX`.
    pub const TRACESTATE_CAP: usize = HTTP_PAYLOAD - HTTP_TRACESTATE;
    /// `offsetof(struct http_event, payload)`.
    pub const HTTP_PAYLOAD: usize = offset_of!(HttpEvent, payload);
    /// `TCLAB_PAYLOAD_CAPTURE`.
    pub const PAYLOAD_CAP: usize = size_of::<HttpEvent>() - HTTP_PAYLOAD;
    /// `offsetof(struct conn_event, entry)`.
    pub const CONN_ENTRY: usize = offset_of!(ConnEvent, entry);
}

/// A decoding failure: which record, and what was wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    /// The record is shorter than its kind requires.
    #[error("failed to decode event kind {kind}: record is {len} bytes, expected at least {need}")]
    Short {
        /// Event kind.
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

/// Which TC hook saw the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Received on the device.
    Ingress,
    /// Sent through the device.
    Egress,
}

/// A connection 5-tuple as the packet carried it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Tuple {
    /// Source address.
    pub saddr: IpAddr,
    /// Destination address.
    pub daddr: IpAddr,
    /// Source port (host order).
    pub sport: u16,
    /// Destination port (host order).
    pub dport: u16,
    /// IP protocol number.
    pub proto: u8,
}

impl Tuple {
    /// The same connection seen from the other side.
    pub fn reversed(&self) -> Tuple {
        Tuple { saddr: self.daddr, daddr: self.saddr, sport: self.dport, dport: self.sport, proto: self.proto }
    }

    /// Decode a `struct ct_tuple`.
    pub fn decode(b: &[u8]) -> Result<Tuple, String> {
        if b.len() < layout::TUPLE_SIZE {
            return Err(format!("tuple is {} bytes, expected {}", b.len(), layout::TUPLE_SIZE));
        }
        let addr = |a: &[u8]| -> Result<IpAddr, String> {
            match b[37] {
                4 => Ok(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))),
                6 => Ok(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&a[..16]).unwrap_or([0; 16])))),
                f => Err(format!("unknown address family {f}")),
            }
        };
        Ok(Tuple {
            saddr: addr(&b[0..16])?,
            daddr: addr(&b[16..32])?,
            sport: u16::from_be_bytes([b[32], b[33]]),
            dport: u16::from_be_bytes([b[34], b[35]]),
            proto: b[36],
        })
    }

    /// Encode as a `struct ct_tuple` (for CT map lookups and tests).
    pub fn encode(&self) -> [u8; layout::TUPLE_SIZE] {
        let mut b = [0u8; layout::TUPLE_SIZE];
        let put = |dst: &mut [u8], a: &IpAddr| match a {
            IpAddr::V4(v4) => dst[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => dst[..16].copy_from_slice(&v6.octets()),
        };
        put(&mut b[0..16], &self.saddr);
        put(&mut b[16..32], &self.daddr);
        b[32..34].copy_from_slice(&self.sport.to_be_bytes());
        b[34..36].copy_from_slice(&self.dport.to_be_bytes());
        b[36] = self.proto;
        b[37] = if self.saddr.is_ipv4() { 4 } else { 6 };
        b
    }
}

/// A `struct ct_entry`, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CtEntry {
    /// Originator-direction packets.
    pub tx_packets: u64,
    /// Originator-direction bytes.
    pub tx_bytes: u64,
    /// Reply-direction packets.
    pub rx_packets: u64,
    /// Reply-direction bytes.
    pub rx_bytes: u64,
    /// Insert time (CLOCK_MONOTONIC ns).
    pub created_ns: u64,
    /// Expiry (CLOCK_MONOTONIC ns).
    pub expires_ns: u64,
    /// TCP flags OR-ed, originator.
    pub tx_flags_seen: u8,
    /// TCP flags OR-ed, reply.
    pub rx_flags_seen: u8,
    /// `enum ct_entry_flag` bits.
    pub flags: u8,
    /// Hook of the creating packet (0 ingress, 1 egress).
    pub created_dir: u8,
    /// `enum ct_status` of the last packet.
    pub last_status: u8,
}

impl CtEntry {
    /// Decode a `struct ct_entry`.
    pub fn decode(b: &[u8]) -> Result<CtEntry, String> {
        if b.len() < layout::ENTRY_SIZE {
            return Err(format!("ct entry is {} bytes, expected {}", b.len(), layout::ENTRY_SIZE));
        }
        let u = |i: usize| u64::from_ne_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        Ok(CtEntry {
            tx_packets: u(0),
            tx_bytes: u(1),
            rx_packets: u(2),
            rx_bytes: u(3),
            created_ns: u(4),
            expires_ns: u(5),
            tx_flags_seen: b[48],
            rx_flags_seen: b[49],
            flags: b[50],
            created_dir: b[51],
            last_status: b[52],
        })
    }
}

/// Fields every event carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMeta {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// Device the program is attached to.
    pub ifindex: u32,
    /// The packet's own tuple (not the CT key).
    pub tuple: Tuple,
    /// Hook that saw it.
    pub dir: Direction,
    /// `enum ct_status` of the lookup.
    pub ct_status: u8,
    /// TCP flags of the packet.
    pub tcp_flags: u8,
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

/// A later segment of a request whose headers were split.
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
        if b.len() < 12 {
            return Err(EventError::Short { kind: 0, len: b.len(), need: layout::HEADER_SIZE });
        }
        let kind = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
        let need = match kind {
            kind::CONN_OPEN | kind::CONN_CLOSE | kind::CT_INSERT_FAILED => layout::CONN_ENTRY + layout::ENTRY_SIZE,
            kind::HTTP_REQUEST | kind::HTTP_RESPONSE | kind::HTTP_CONTINUATION => {
                layout::HTTP_PAYLOAD + layout::PAYLOAD_CAP
            }
            k => return Err(EventError::UnknownKind(k)),
        };
        if b.len() < need {
            return Err(EventError::Short { kind, len: b.len(), need });
        }
        let meta = decode_meta(kind, b)?;
        let invalid = |reason: String| EventError::Invalid { kind, reason };
        Ok(match kind {
            kind::CONN_OPEN | kind::CONN_CLOSE => {
                let entry = CtEntry::decode(&b[layout::CONN_ENTRY..]).map_err(invalid)?;
                if kind == kind::CONN_OPEN { Event::ConnOpen { meta, entry } } else { Event::ConnClose { meta, entry } }
            }
            kind::CT_INSERT_FAILED => Event::CtInsertFailed { meta },
            _ => decode_http(kind, meta, b)?,
        })
    }
}

fn decode_meta(kind: u32, b: &[u8]) -> Result<EventMeta, EventError> {
    let tuple = Tuple::decode(&b[layout::HDR_TUPLE..layout::HDR_TUPLE + layout::TUPLE_SIZE])
        .map_err(|reason| EventError::Invalid { kind, reason })?;
    let dir = match b[layout::HDR_DIR] {
        0 => Direction::Ingress,
        1 => Direction::Egress,
        d => return Err(EventError::Invalid { kind, reason: format!("unknown direction {d}") }),
    };
    Ok(EventMeta {
        ts_ns: u64::from_ne_bytes(b[0..8].try_into().unwrap_or([0; 8])),
        ifindex: u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
        tuple,
        dir,
        ct_status: b[layout::HDR_DIR + 1],
        tcp_flags: b[layout::HDR_DIR + 2],
    })
}

fn nul_trimmed(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn decode_http(kind: u32, meta: EventMeta, b: &[u8]) -> Result<Event, EventError> {
    use layout::*;
    let size = u32::from_ne_bytes(b[HTTP_PAYLOAD_LEN..HTTP_PAYLOAD_LEN + 4].try_into().unwrap_or([0; 4]));
    let captured = usize::from(u16::from_ne_bytes([b[HTTP_CAPTURED_LEN], b[HTTP_CAPTURED_LEN + 1]])).min(PAYLOAD_CAP);
    let payload = &b[HTTP_PAYLOAD..HTTP_PAYLOAD + captured];
    let tp_value = nul_trimmed(&b[HTTP_TRACEPARENT..HTTP_TRACEPARENT + TRACEPARENT_CAP]);
    let traceparent = match b[HTTP_TP_STATUS] {
        0 => Traceparent::Missing,
        1 => Traceparent::Valid(tp_value),
        2 => Traceparent::Invalid(tp_value),
        s => return Err(EventError::Invalid { kind, reason: format!("unknown traceparent status {s}") }),
    };
    let ts_len = usize::from(b[HTTP_TS_LEN]).min(TRACESTATE_CAP);
    let tracestate = (ts_len > 0).then(|| String::from_utf8_lossy(&b[HTTP_TRACESTATE..HTTP_TRACESTATE + ts_len]).into_owned());
    let parsed = parse_http_head(payload);
    Ok(match kind {
        kind::HTTP_REQUEST => {
            let Some(StartLine::Request { method, path }) = parsed.start else {
                return Err(EventError::Invalid { kind, reason: "payload has no request line".into() });
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
                pipelined,
            })
        }
        kind::HTTP_RESPONSE => {
            let Some(StartLine::Response { status }) = parsed.start else {
                return Err(EventError::Invalid { kind, reason: "payload has no status line".into() });
            };
            let pipelined = pipelined_responses(&meta, payload, parsed.content_length);
            Event::HttpResponse(HttpResponse { meta, status, content_length: parsed.content_length, size, pipelined })
        }
        _ => Event::HttpContinuation(HttpContinuation { meta, host: parsed.host, traceparent, tracestate, size }),
    })
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
    let mut lines = payload.split(|&c| c == b'\n').peekable();
    let mut first = true;
    while let Some(raw) = lines.next() {
        // The last piece has no '\n': it was cut by the capture.
        let whole = lines.peek().is_some();
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if !whole {
            break;
        }
        if line.is_empty() {
            head.complete = true;
            break;
        }
        let text = String::from_utf8_lossy(line);
        if first {
            first = false;
            head.start = parse_start_line(&text);
            if head.start.is_some() {
                continue;
            }
        }
        if let Some((name, value)) = text.split_once(':') {
            let value = value.trim_matches([' ', '\t']);
            if name.eq_ignore_ascii_case("host") {
                head.host = Some(value.to_owned());
            } else if name.eq_ignore_ascii_case("content-length") {
                head.content_length = value.parse().ok();
            }
        }
    }
    head
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

    /// Wait up to `timeout` for data, then drain everything available.
    pub fn poll(&mut self, timeout: Duration) -> Vec<Event> {
        let mut out = self.drain();
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
            out = self.drain();
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
        let drain_start = crate::ct::monotonic_now_ns();
        let mut records: Vec<Vec<u8>> = Vec::new();
        match &mut self.source {
            Source::Ring(ring) => {
                while let Some(item) = ring.next() {
                    records.push(item.to_vec());
                }
            }
            Source::Perf(bufs) => {
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
                records = self.reorder_perf(records, drain_start);
            }
        }
        let mut out = Vec::with_capacity(records.len());
        for rec in records {
            match Event::decode(&rec) {
                Ok(ev) => out.push(ev),
                Err(e) => {
                    self.decode_errors += 1;
                    tracing::warn!(error = %e, "skipping undecodable event record");
                }
            }
        }
        out
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
            tuple: Tuple { saddr: "10.0.0.1".parse().unwrap(), daddr: "10.0.0.2".parse().unwrap(), sport: 1, dport: 80, proto: 6 },
            dir: Direction::Egress,
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
            tuple: Tuple { saddr: "10.0.0.2".parse().unwrap(), daddr: "10.0.0.1".parse().unwrap(), sport: 80, dport: 1, proto: 6 },
            dir: Direction::Ingress,
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
    fn tuple_round_trip_and_short_record() {
        let t = Tuple { saddr: "10.0.0.1".parse().unwrap(), daddr: "10.0.0.2".parse().unwrap(), sport: 5555, dport: 80, proto: 6 };
        assert_eq!(Tuple::decode(&t.encode()).unwrap(), t);
        assert!(matches!(Event::decode(&[0u8; 8]), Err(EventError::Short { .. })));
        let mut rec = vec![0u8; 64];
        rec[8] = 99;
        assert_eq!(Event::decode(&rec), Err(EventError::UnknownKind(99)));
    }
}
