//! Just enough HTTP/1.1 for the test services: one request or response at
//! a time on a blocking stream, heads up to 16 KiB, bodies by
//! Content-Length. Each message is written with one `write_all` of the
//! whole head and body, so a small request is one `sendmsg`: what a BPF
//! program at the socket layer (sk_msg) sees as one message.

use std::io::{self, BufRead, BufReader, Read, Write};

/// Longest request or status line plus headers accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest body accepted.
const MAX_BODY: usize = 1024 * 1024;

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Headers in order, names as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A parsed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// First header named `name` (case-insensitive), value trimmed of spaces/tabs.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim_matches([' ', '\t']))
}

impl Request {
    /// The first header of that name.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// HTTP/1.1 keeps the connection unless the client says `close`.
    pub fn keep_alive(&self) -> bool {
        !self.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// A start line and its headers.
type Head = (String, Vec<(String, String)>);

/// Read the head (start line + headers) up to the blank line. `Ok(None)`
/// when the peer closed before sending anything.
fn read_head<R: Read>(r: &mut BufReader<R>) -> io::Result<Option<Head>> {
    let mut start = String::new();
    let mut total = 0usize;
    if r.read_line(&mut start)? == 0 {
        return Ok(None);
    }
    total += start.len();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line)?;
        if n == 0 {
            return Err(bad("connection closed inside the header block".into()));
        }
        total += n;
        if total > MAX_HEAD {
            return Err(bad(format!("header block longer than {MAX_HEAD} bytes")));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let (name, value) =
            line.split_once(':').ok_or_else(|| bad(format!("header line without a colon: {line:?}")))?;
        headers.push((name.to_owned(), value.to_owned()));
    }
    Ok(Some((start.trim_end_matches(['\r', '\n']).to_owned(), headers)))
}

fn read_body<R: Read>(r: &mut BufReader<R>, headers: &[(String, String)]) -> io::Result<Vec<u8>> {
    let len = match header(headers, "content-length") {
        None => 0,
        Some(v) => v.parse::<usize>().map_err(|_| bad(format!("bad Content-Length {v:?}")))?,
    };
    if len > MAX_BODY {
        return Err(bad(format!("body of {len} bytes is larger than {MAX_BODY}")));
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok(body)
}

/// Read one request; `Ok(None)` at a clean end of the connection.
///
/// # Errors
/// I/O errors and malformed requests (`InvalidData`, naming what is wrong).
pub fn read_request<R: Read>(r: &mut BufReader<R>) -> io::Result<Option<Request>> {
    let Some((line, headers)) = read_head(r)? else { return Ok(None) };
    let mut parts = line.split(' ');
    let (Some(method), Some(path), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(format!("bad request line {line:?}")));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(bad(format!("unsupported version in {line:?}")));
    }
    let body = read_body(r, &headers)?;
    Ok(Some(Request { method: method.to_owned(), path: path.to_owned(), headers, body }))
}

/// Read one response.
///
/// # Errors
/// I/O errors, a closed connection, malformed responses.
pub fn read_response<R: Read>(r: &mut BufReader<R>) -> io::Result<Response> {
    let (line, headers) =
        read_head(r)?.ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before the response"))?;
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
    let body = read_body(r, &headers)?;
    Ok(Response { status, headers, body })
}

/// The bytes of a request: request line, `Host`, the extra headers in
/// order, `Content-Length` when there is a body.
pub fn encode_request(method: &str, path: &str, host: &str, extra: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (n, v) in extra {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        502 => "Bad Gateway",
        _ => "Unknown",
    }
}

/// Write a JSON response in one `write_all`.
///
/// # Errors
/// I/O errors.
pub fn write_response<W: Write>(w: &mut W, status: u16, body: &[u8], keep_alive: bool) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        reason(status),
        body.len()
    );
    if !keep_alive {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    w.write_all(&bytes)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip() {
        let extra = vec![("traceparent".to_owned(), "00-abc".to_owned())];
        let bytes = encode_request("GET", "/traceme", "svc:8080", &extra, b"");
        assert_eq!(bytes, b"GET /traceme HTTP/1.1\r\nHost: svc:8080\r\ntraceparent: 00-abc\r\n\r\n");
        let req = read_request(&mut BufReader::new(&bytes[..])).unwrap().unwrap();
        assert_eq!(req.method, "GET");
        assert_eq!(req.path, "/traceme");
        assert_eq!(req.header("TraceParent"), Some("00-abc"));
        assert!(req.keep_alive());
    }

    #[test]
    fn response_round_trip_and_errors() {
        let mut buf = Vec::new();
        write_response(&mut buf, 200, b"{}", false).unwrap();
        let resp = read_response(&mut BufReader::new(&buf[..])).unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, b"{}");
        assert_eq!(header(&resp.headers, "connection"), Some("close"));
        let err = read_request(&mut BufReader::new(&b"GET /\r\n\r\n"[..])).unwrap_err();
        assert!(err.to_string().contains("bad request line"), "{err}");
        assert!(read_request(&mut BufReader::new(&b""[..])).unwrap().is_none());
        let err = read_response(&mut BufReader::new(&b"HTTP/1.1 2x OK\r\n\r\n"[..])).unwrap_err();
        assert!(err.to_string().contains("bad status line"), "{err}");
    }
}
