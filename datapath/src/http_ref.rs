//! Rust reference of the kernel's HTTP/1.1 recogniser (`ebpf/include/http.h`
//! with `traceparent.h`), for differential tests: what the classifiers report
//! for the first TCP data segment of a connection (no carried state).
//!
//! Written from the rules the headers and `ebpf/README.md` state, not from
//! the code's tricks (words, masks, sinks):
//! * a request starts with one of the nine methods (case-sensitive) and a
//!   space; a response with `HTTP/1.<digit> <3 digits>` and a space or CR;
//! * the first [`COPY`] bytes of the segment are looked at; header lines must
//!   start in the first [`SCAN`] bytes, at most [`MAX_LINES`] line starts are
//!   recorded; the header block ends at the first empty line (`\n`, `\r\n`);
//! * `traceparent:` / `tracestate:` are matched case-insensitively at a line
//!   start (first occurrence each), requests only;
//! * at most [`MAX_OWS`] spaces/tabs are skipped around a traceparent value;
//!   the value ends at CR or LF, which must be inside the copied bytes,
//!   except that a later version may go on with `-` after the flags (W3C);
//!   the fields themselves are checked by [`crate::w3c::parse_traceparent`];
//! * the tracestate value (leading OWS skipped, at most [`MAX_OWS`]) runs to
//!   the first CR, LF or NUL, at most [`TRACESTATE_MAX`] bytes;
//! * a request that reaches neither its header end nor a traceparent leaves
//!   the connection "pending" (split request); so does a segment of 1..7
//!   bytes that is the start of a method and its space (no event then).
//!
//! [`Conn`] follows one connection's direction over several segments, as
//! `README.md` describes split requests: the next segment of a pending
//! request is a continuation scanned with the unfinished last line (at most
//! [`CARRY`] bytes) in front, or without a line start when that line was
//! longer; a method prefix is completed by the next segment; a segment
//! copied or scanned only in part leaves "a line starts next".

use crate::types::{PAYLOAD_CAPTURE, TRACEPARENT_LEN, TRACESTATE_MAX};
use crate::w3c::parse_traceparent;

/// Bytes of a segment copied for the scan (`TCLAB_HTTP_COPY`).
pub const COPY: usize = 768;
/// Header lines must start before this payload offset (`TCLAB_HTTP_SCAN`).
pub const SCAN: usize = 640;
/// Line starts recorded per segment (`TCLAB_HTTP_MAX_LINES`).
pub const MAX_LINES: usize = 64;
/// Spaces/tabs skipped on each side of a traceparent value (`TP_MAX_OWS`).
pub const MAX_OWS: usize = 16;
/// Longest unfinished line carried to the next segment (`TCLAB_HTTP_CARRY`).
pub const CARRY: usize = 16;

/// The request methods, each followed by a space on the wire.
pub const METHODS: [&str; 9] = ["GET", "PUT", "HEAD", "POST", "TRACE", "PATCH", "DELETE", "CONNECT", "OPTIONS"];

/// What a segment starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    None,
    Request,
    Response,
    /// A later segment of a request whose head was split.
    Continuation,
}

/// The traceparent outcome of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tp {
    Missing,
    Valid([u8; TRACEPARENT_LEN]),
    Invalid,
}

/// The event the classifiers emit for a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub kind: Kind,
    /// The segment's TCP payload length.
    pub payload_len: usize,
    /// The first [`PAYLOAD_CAPTURE`] bytes of the copied payload.
    pub captured: Vec<u8>,
    pub traceparent: Tp,
    /// Empty when there is no tracestate header.
    pub tracestate: Vec<u8>,
    /// Leading bytes of `captured` kept from the previous segment.
    pub carried: usize,
    /// `captured[0]` starts a line.
    pub line_start: bool,
}

/// What the classifiers do with the first data segment of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The HTTP event, if any.
    pub event: Option<Expected>,
    /// Whether the connection is left waiting for the rest of a request.
    pub pending: bool,
}

fn is_digit(c: u8) -> bool {
    c.is_ascii_digit()
}

/// Classify a segment by its start.
pub fn classify(payload: &[u8]) -> Kind {
    if METHODS.iter().any(|m| payload.len() > m.len() && payload.starts_with(m.as_bytes()) && payload[m.len()] == b' ') {
        return Kind::Request;
    }
    let p = |i: usize| payload.get(i).copied().unwrap_or(0);
    if payload.starts_with(b"HTTP/1.")
        && is_digit(p(7))
        && p(8) == b' '
        && is_digit(p(9))
        && is_digit(p(10))
        && is_digit(p(11))
        && (p(12) == b' ' || p(12) == b'\r')
    {
        return Kind::Response;
    }
    Kind::None
}

/// Whether 1..7 bytes are the start of a method and its space, but not all of it.
pub fn is_method_prefix(payload: &[u8]) -> bool {
    (1..8).contains(&payload.len())
        && METHODS.iter().any(|m| {
            let full = [m.as_bytes(), b" "].concat();
            payload.len() < full.len() && full.starts_with(payload)
        })
}

fn is_ows(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

fn starts_with_ci(hay: &[u8], name: &[u8]) -> bool {
    hay.len() >= name.len() && hay[..name.len()].eq_ignore_ascii_case(name)
}

/// Offsets of `data` where a line starts, as the scan records them: 0
/// when the data starts a line, then after every LF, before [`SCAN`], at
/// most [`MAX_LINES`].
fn line_starts(data: &[u8], starts_line: bool) -> Vec<usize> {
    let after_lf = data.iter().enumerate().filter(|&(i, &c)| c == b'\n' && i + 1 < SCAN).map(|(i, _)| i + 1);
    starts_line.then_some(0).into_iter().chain(after_lf).take(MAX_LINES).collect()
}

/// The traceparent decision for the value after `traceparent:` at `at`.
fn traceparent_at(data: &[u8], at: usize) -> Tp {
    let rest = &data[at.min(data.len())..];
    let eol = rest.iter().position(|&c| c == b'\r' || c == b'\n');
    let value = &rest[..eol.unwrap_or(rest.len())];
    let lead = value.iter().take_while(|&&c| is_ows(c)).count();
    if lead > MAX_OWS || value.len() < lead + TRACEPARENT_LEN {
        return Tp::Invalid;
    }
    let v = &value[lead..];
    let (fields, after) = v.split_at(TRACEPARENT_LEN);
    let Ok(tp) = parse_traceparent(fields) else { return Tp::Invalid };
    let later_version_goes_on = tp.version != 0 && after.first() == Some(&b'-');
    let ends_here = eol.is_some() && after.len() <= MAX_OWS && after.iter().all(|&c| is_ows(c));
    if later_version_goes_on || ends_here {
        let mut out = [0u8; TRACEPARENT_LEN];
        out.copy_from_slice(fields);
        Tp::Valid(out)
    } else {
        Tp::Invalid
    }
}

/// The tracestate value after `tracestate:` at `at`.
fn tracestate_at(data: &[u8], at: usize) -> Vec<u8> {
    let rest = &data[at.min(data.len())..];
    let lead = rest.iter().take(MAX_OWS).take_while(|&&c| is_ows(c)).count();
    rest[lead..].iter().take_while(|&&c| c != b'\r' && c != b'\n' && c != 0).take(TRACESTATE_MAX).copied().collect()
}

/// What the scan of one segment's data found.
struct Scan {
    traceparent: Tp,
    tracestate: Vec<u8>,
    end: bool,
    starts: Vec<usize>,
}

fn scan(data: &[u8], starts_line: bool) -> Scan {
    let starts = line_starts(data, starts_line);
    let (mut tp_at, mut ts_at, mut end) = (None, None, false);
    for &p in &starts {
        let line = &data[p..];
        if starts_with_ci(line, b"traceparent:") {
            tp_at.get_or_insert(p + "traceparent:".len());
        } else if starts_with_ci(line, b"tracestate:") {
            ts_at.get_or_insert(p + "tracestate:".len());
        } else if line.starts_with(b"\n") || line.starts_with(b"\r\n") {
            end = true;
            break;
        }
    }
    Scan {
        traceparent: tp_at.map_or(Tp::Missing, |at| traceparent_at(data, at)),
        tracestate: ts_at.map(|at| tracestate_at(data, at)).unwrap_or_default(),
        end,
        starts,
    }
}

/// What a pending request leaves for the next segment of its direction.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Carry {
    /// 1..7 bytes that may start a method.
    Prefix(Vec<u8>),
    /// The unfinished last line (empty: the next segment starts a line).
    Line(Vec<u8>),
    /// Inside a line longer than [`CARRY`]: no line starts the next segment.
    MidLine,
}

/// One direction of one connection, segment by segment.
#[derive(Debug, Clone, Default)]
pub struct Conn {
    carry: Option<Carry>,
}

impl Conn {
    /// A fresh connection.
    pub fn new() -> Conn {
        Conn::default()
    }

    /// Whether a request head is pending (the CT entry's `HTTP_PENDING`).
    pub fn pending(&self) -> bool {
        self.carry.is_some()
    }

    /// The next data segment of this direction: the event it produces, if any.
    pub fn segment(&mut self, payload: &[u8]) -> Option<Expected> {
        let kind = classify(payload);
        let seg = &payload[..payload.len().min(COPY)];
        let (kind, carried, starts_line) = match (kind, self.carry.clone()) {
            (Kind::None, Some(Carry::Prefix(p))) => {
                let both = [&p[..], seg].concat();
                if classify(&both) == Kind::Request {
                    (Kind::Request, p, false)
                } else {
                    self.carry = (both.len() < 8 && is_method_prefix(&both)).then_some(Carry::Prefix(both));
                    return None;
                }
            }
            (Kind::None, Some(Carry::Line(c))) => (Kind::Continuation, c, true),
            (Kind::None, Some(Carry::MidLine)) => (Kind::Continuation, Vec::new(), false),
            (Kind::None, None) => {
                if is_method_prefix(payload) {
                    self.carry = Some(Carry::Prefix(payload.to_vec()));
                }
                return None;
            }
            (k, _) => (k, Vec::new(), false),
        };
        let data = [&carried[..], seg].concat();
        let mut ev = Expected {
            kind,
            payload_len: payload.len(),
            captured: data[..data.len().min(PAYLOAD_CAPTURE)].to_vec(),
            traceparent: Tp::Missing,
            tracestate: Vec::new(),
            carried: carried.len(),
            line_start: kind != Kind::Continuation || starts_line,
        };
        if kind == Kind::Response {
            // responses leave a pending request alone
            return Some(ev);
        }
        let sc = scan(&data, starts_line);
        ev.traceparent = sc.traceparent;
        ev.tracestate = sc.tracestate;
        self.carry = if sc.end || ev.traceparent != Tp::Missing {
            None
        } else if seg.len() < payload.len() || data.len() + 1 > SCAN || sc.starts.len() >= MAX_LINES {
            // only what the scan saw is trusted: a line starts next
            Some(Carry::Line(Vec::new()))
        } else {
            let start = match sc.starts.last() {
                Some(&p) => Some(p),
                None => (kind == Kind::Request || starts_line).then_some(0),
            };
            match start {
                Some(p) if data.len() - p <= CARRY => Some(Carry::Line(data[p..].to_vec())),
                _ => Some(Carry::MidLine),
            }
        };
        Some(ev)
    }
}

/// The reference outcome for `payload`, the first data segment of a connection.
pub fn first_segment(payload: &[u8]) -> Outcome {
    let mut c = Conn::new();
    let event = c.segment(payload);
    Outcome { event, pending: c.pending() }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn req(headers: &str) -> Vec<u8> {
        format!("GET /x HTTP/1.1\r\nHost: a\r\n{headers}\r\n").into_bytes()
    }

    #[test]
    fn start_lines() {
        for m in METHODS {
            assert_eq!(classify(format!("{m} / HTTP/1.1\r\n").as_bytes()), Kind::Request, "{m}");
            assert_eq!(classify(format!("{m}/ HTTP/1.1\r\n").as_bytes()), Kind::None, "{m} without space");
            assert_eq!(classify(format!("{} / HTTP/1.1\r\n", m.to_lowercase()).as_bytes()), Kind::None, "{m} lower");
        }
        assert_eq!(classify(b"HTTP/1.1 200 OK\r\n"), Kind::Response);
        assert_eq!(classify(b"HTTP/1.0 404\r\n"), Kind::Response);
        assert_eq!(classify(b"HTTP/1.1 20 OK\r\n"), Kind::None);
        assert_eq!(classify(b"HTTP/2.0 200 OK\r\n"), Kind::None);
        assert_eq!(classify(b"HTTP/1.1 2000 OK"), Kind::None);
        assert!(is_method_prefix(b"GE") && is_method_prefix(b"OPTIONS") && is_method_prefix(b"GET"));
        assert!(!is_method_prefix(b"GET ") && !is_method_prefix(b"GX") && !is_method_prefix(b""));
    }

    #[test]
    fn traceparent_found_case_insensitively_with_ows() {
        let o = first_segment(&req(&format!("TraceParent: \t{TP}  \r\ntracestate: a=1\r\n")));
        let ev = o.event.unwrap();
        assert_eq!(ev.traceparent, Tp::Valid(TP.as_bytes().try_into().unwrap()));
        assert_eq!(ev.tracestate, b"a=1");
        assert!(!o.pending);
    }

    #[test]
    fn limits() {
        let many = " ".repeat(MAX_OWS + 1);
        let ev = first_segment(&req(&format!("traceparent:{many}{TP}\r\n"))).event.unwrap();
        assert_eq!(ev.traceparent, Tp::Invalid, "17 leading spaces");
        let ev = first_segment(&req(&format!("traceparent:{TP}{many}\r\n"))).event.unwrap();
        assert_eq!(ev.traceparent, Tp::Invalid, "17 trailing spaces");
        // after the header end: body
        let mut r = req("");
        r.extend_from_slice(format!("traceparent: {TP}\r\n").as_bytes());
        assert_eq!(first_segment(&r).event.unwrap().traceparent, Tp::Missing);
        // a value cut by the end of the segment
        let r = format!("GET / HTTP/1.1\r\ntraceparent: {TP}");
        let o = first_segment(r.as_bytes());
        assert_eq!(o.event.unwrap().traceparent, Tp::Invalid);
        assert!(!o.pending, "a traceparent ends the pending state");
        // a later version going on with a dash may be cut
        let r = format!("GET / HTTP/1.1\r\ntraceparent: {}-x", TP.replacen("00-", "01-", 1));
        assert!(matches!(first_segment(r.as_bytes()).event.unwrap().traceparent, Tp::Valid(_)));
        // no header end, no traceparent: pending
        assert!(first_segment(b"GET / HTTP/1.1\r\nHost: a\r\n").pending);
        assert!(first_segment(b"GE").pending && first_segment(b"GE").event.is_none());
    }
}
