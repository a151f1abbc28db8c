//! A minimal OTLP/HTTP collector for tests: it accepts `POST /v1/traces`
//! (HTTP/1.1, keep-alive), decodes each body with the same generated
//! protobuf types the agent encodes with, and answers 200 with an empty
//! `ExportTraceServiceResponse`.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// One export as the collector received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Request target.
    pub path: String,
    /// Header names (lower-case) and values.
    pub headers: Vec<(String, String)>,
    /// The decoded body.
    pub request: ExportTraceServiceRequest,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Every span of every resource and scope.
    pub fn spans(&self) -> Vec<&Span> {
        self.request.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans).collect()
    }

    /// `service.name` of the first resource.
    pub fn service_name(&self) -> Option<String> {
        let r = self.request.resource_spans.first()?.resource.as_ref()?;
        match attr(&r.attributes, "service.name")? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            _ => None,
        }
    }
}

/// The value of attribute `key`.
pub fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs.iter().find(|kv| kv.key == key)?.value.as_ref()?.value.as_ref()
}

pub fn str_attr(s: &Span, key: &str) -> Option<String> {
    match attr(&s.attributes, key)? {
        any_value::Value::StringValue(v) => Some(v.clone()),
        other => panic!("{key} is not a string: {other:?}"),
    }
}

pub fn int_attr(s: &Span, key: &str) -> Option<i64> {
    match attr(&s.attributes, key)? {
        any_value::Value::IntValue(v) => Some(*v),
        other => panic!("{key} is not an int: {other:?}"),
    }
}

/// A collector listening on 127.0.0.1 of the caller's network namespace.
pub struct Collector {
    addr: SocketAddr,
    rx: Receiver<Received>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Collector {
    pub fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the test collector");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let tx = tx.clone();
                        std::thread::spawn(move || serve(conn, &tx));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                    Err(e) => panic!("collector accept: {e}"),
                }
            }
        });
        Collector { addr, rx, stop, thread: Some(thread) }
    }

    /// Base URL (`http://127.0.0.1:PORT`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next export received within `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<Received> {
        self.rx.recv_timeout(timeout).ok()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Requests on one connection until the client closes it.
fn serve(conn: TcpStream, tx: &Sender<Received>) {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut out = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let target = line.split(' ').nth(1).unwrap_or_default().to_owned();
        assert!(line.starts_with("POST "), "the exporter only posts: {line:?}");
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            r.read_line(&mut h).expect("header line");
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').expect("header with a colon");
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
        let len: usize = headers.iter().find(|(k, _)| k == "content-length").map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).expect("body");
        let request = ExportTraceServiceRequest::decode(body.as_slice()).expect("a protobuf ExportTraceServiceRequest");
        let answer = ExportTraceServiceResponse::default().encode_to_vec();
        let head = format!("HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n", answer.len());
        out.write_all(head.as_bytes()).unwrap();
        out.write_all(&answer).unwrap();
        let _ = tx.send(Received { path: target, headers, request });
    }
}
