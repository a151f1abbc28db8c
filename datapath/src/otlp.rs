//! OTLP/HTTP export of the agent's spans: protobuf bodies
//! (`application/x-protobuf`) posted to a collector's `/v1/traces`.
//!
//! The event reader hands each finished span to [`OtlpExporter::export`],
//! which never blocks: the span goes into a bounded queue, and a full queue
//! drops it and counts it (`tclab_otlp_spans_dropped_total{reason="queue_full"}`).
//! The exporter's own thread batches the queue (up to `max_batch` spans or
//! `batch_delay`, the OpenTelemetry batch span processor's settings) and
//! posts each batch with a timeout, retrying a failed post twice. The
//! thread is started on the caller's thread, so it sends from the caller's
//! network namespace (the lab runs agents inside one). Dropping the
//! exporter sends what is queued, once, and joins the thread.
//!
//! Plain HTTP only: the build carries no TLS stack; point the agent at a
//! local collector (`http://localhost:4318`).

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{self as otlp, ResourceSpans, ScopeSpans, span::SpanKind as OtlpKind, status::StatusCode};
use prost::Message as _;

use crate::metrics::Metrics;
use crate::span::{Span, SpanKind, WallClock};

/// The environment variables read by [`OtlpConfig::resolve`] (the
/// OpenTelemetry SDK configuration names).
pub mod env {
    /// Base URL; `v1/traces` is appended.
    pub const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
    /// Traces URL, used as is.
    pub const TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
    /// Must be `http/protobuf` when set.
    pub const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
    /// Must be `http/protobuf` when set.
    pub const TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
    /// `key=value,key2=value2` (values percent-encoded) added to every post.
    pub const HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
    /// As [`HEADERS`], for traces only (wins per key).
    pub const TRACES_HEADERS: &str = "OTEL_EXPORTER_OTLP_TRACES_HEADERS";
    /// Timeout of one post, in milliseconds.
    pub const TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
    /// As [`TIMEOUT`], for traces only.
    pub const TRACES_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT";
    /// `service.name` of the exported resource.
    pub const SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
    /// Queue size (spans).
    pub const BSP_MAX_QUEUE_SIZE: &str = "OTEL_BSP_MAX_QUEUE_SIZE";
    /// Longest wait before a partial batch is sent, in milliseconds.
    pub const BSP_SCHEDULE_DELAY: &str = "OTEL_BSP_SCHEDULE_DELAY";
    /// Spans per post.
    pub const BSP_MAX_EXPORT_BATCH_SIZE: &str = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE";
}

/// Why the OTLP settings are unusable, naming where the value came from.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OtlpError {
    /// An endpoint that is not an `http://` URL.
    #[error("invalid OTLP endpoint {value:?} from {source_name}: {reason}")]
    Endpoint {
        /// `--otlp-endpoint` or the variable's name.
        source_name: String,
        /// The value.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// Another setting with a bad value.
    #[error("invalid {name}={value:?}: {reason}")]
    Setting {
        /// Variable name.
        name: &'static str,
        /// The value.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// The exporter thread could not be started.
    #[error("failed to start the OTLP exporter thread: {0}")]
    Thread(String),
}

/// Where and how to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// The traces URL the batches are posted to (`http://host:4318/v1/traces`).
    pub endpoint: String,
    /// Extra request headers (authentication tokens and the like).
    pub headers: Vec<(String, String)>,
    /// `service.name` of the resource; `None`: the agent's service name.
    pub service_name: Option<String>,
    /// Spans waiting to be sent; more are dropped (and counted).
    pub queue_size: usize,
    /// Spans per post.
    pub max_batch: usize,
    /// Longest time a span waits for its batch to fill.
    pub batch_delay: Duration,
    /// Timeout of one post.
    pub timeout: Duration,
}

impl OtlpConfig {
    /// Defaults of the OpenTelemetry batch span processor, for `endpoint`
    /// (the full traces URL).
    pub fn new(endpoint: impl Into<String>) -> OtlpConfig {
        OtlpConfig {
            endpoint: endpoint.into(),
            headers: Vec::new(),
            service_name: None,
            queue_size: 2048,
            max_batch: 512,
            batch_delay: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
        }
    }

    /// The export settings from `--otlp-endpoint` (a base URL, like
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`) and the standard variables read through
    /// `var`. The flag wins; then `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (as
    /// is); then `OTEL_EXPORTER_OTLP_ENDPOINT` (+ `v1/traces`). `None` when
    /// none is set: no export.
    ///
    /// # Errors
    /// [`OtlpError`] naming the flag or variable whose value is unusable.
    pub fn resolve(flag: Option<&str>, var: impl Fn(&str) -> Option<String>) -> Result<Option<OtlpConfig>, OtlpError> {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let (source_name, value, append) = match (flag, var(env::TRACES_ENDPOINT), var(env::ENDPOINT)) {
            (Some(f), _, _) => ("--otlp-endpoint".to_owned(), f.to_owned(), true),
            (None, Some(t), _) => (env::TRACES_ENDPOINT.to_owned(), t, false),
            (None, None, Some(b)) => (env::ENDPOINT.to_owned(), b, true),
            (None, None, None) => return Ok(None),
        };
        let endpoint = traces_url(&value, append).map_err(|reason| OtlpError::Endpoint { source_name, value: value.clone(), reason })?;
        for name in [env::TRACES_PROTOCOL, env::PROTOCOL] {
            if let Some(p) = var(name) {
                if p.trim() != "http/protobuf" {
                    return Err(OtlpError::Setting { name, value: p, reason: "only http/protobuf is supported".into() });
                }
                break;
            }
        }
        let mut cfg = OtlpConfig::new(endpoint);
        let mut headers = Vec::new();
        for name in [env::HEADERS, env::TRACES_HEADERS] {
            if let Some(v) = var(name) {
                for (k, val) in parse_headers(&v).map_err(|reason| OtlpError::Setting { name, value: v.clone(), reason })? {
                    headers.retain(|(hk, _): &(String, String)| !hk.eq_ignore_ascii_case(&k));
                    headers.push((k, val));
                }
            }
        }
        cfg.headers = headers;
        cfg.service_name = var(env::SERVICE_NAME);
        let ms = |name: &'static str| -> Result<Option<u64>, OtlpError> {
            var(name)
                .map(|v| v.trim().parse::<u64>().map_err(|e| OtlpError::Setting { name, value: v.clone(), reason: e.to_string() }))
                .transpose()
        };
        if let Some(t) = ms(env::TRACES_TIMEOUT)?.or(ms(env::TIMEOUT)?) {
            cfg.timeout = Duration::from_millis(t.max(1));
        }
        if let Some(d) = ms(env::BSP_SCHEDULE_DELAY)? {
            cfg.batch_delay = Duration::from_millis(d);
        }
        if let Some(q) = ms(env::BSP_MAX_QUEUE_SIZE)? {
            cfg.queue_size = usize::try_from(q).unwrap_or(usize::MAX).max(1);
        }
        if let Some(b) = ms(env::BSP_MAX_EXPORT_BATCH_SIZE)? {
            cfg.max_batch = usize::try_from(b).unwrap_or(usize::MAX).max(1);
        }
        cfg.max_batch = cfg.max_batch.min(cfg.queue_size);
        Ok(Some(cfg))
    }
}

/// The traces URL from an endpoint value; `append`: it is a base URL and
/// `v1/traces` goes after it (the OTLP spec's rule for the generic variable).
fn traces_url(value: &str, append: bool) -> Result<String, String> {
    let v = value.trim();
    if v.starts_with("https://") {
        return Err("https needs TLS, which tclab-agent is built without: export to a local collector over http://".into());
    }
    let Some(rest) = v.strip_prefix("http://") else {
        return Err("expected an http:// URL".into());
    };
    if rest.is_empty() || rest.starts_with('/') {
        return Err("no host in the URL".into());
    }
    if !append {
        return Ok(v.to_owned());
    }
    Ok(if v.ends_with('/') { format!("{v}v1/traces") } else { format!("{v}/v1/traces") })
}

/// `k=v,k2=v2` with percent-encoded values (W3C Baggage-like, as the SDKs read it).
fn parse_headers(s: &str) -> Result<Vec<(String, String)>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').ok_or_else(|| format!("{pair:?} has no '='"))?;
            let k = k.trim();
            if k.is_empty() || !k.bytes().all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)) {
                return Err(format!("{k:?} is not a header name"));
            }
            Ok((k.to_owned(), percent_decode(v.trim())?))
        })
        .collect()
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
            out.push(hex.ok_or_else(|| format!("bad percent escape in {s:?}"))?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} decodes to invalid UTF-8"))
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue { key: key.to_owned(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

fn kv_str(key: &str, v: impl Into<String>) -> KeyValue {
    kv(key, any_value::Value::StringValue(v.into()))
}

fn kv_int(key: &str, v: impl Into<i64>) -> KeyValue {
    kv(key, any_value::Value::IntValue(v.into()))
}

/// Host and port of a `Host` header (`svc:8080`, `[fd00::1]:80`, `svc`).
fn host_port(host: &str) -> (String, Option<u16>) {
    if let Some(rest) = host.strip_prefix('[')
        && let Some((h, tail)) = rest.split_once(']')
    {
        return (h.to_owned(), tail.strip_prefix(':').and_then(|p| p.parse().ok()));
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h.to_owned(), p.parse().ok()),
        _ => (host.to_owned(), None),
    }
}

fn hex_bytes(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap_or_default()
}

/// One span in OTLP form (HTTP semantic conventions). Timestamps become
/// Unix time through `clock`; the name is `METHOD path-without-query`.
pub fn to_otlp(span: &Span, clock: &WallClock) -> otlp::Span {
    let (path, query) = match span.path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (span.path.as_str(), None),
    };
    let (server_host, server_port) = match span.host.as_deref().map(host_port) {
        Some((h, p)) if !h.is_empty() => (h, p.unwrap_or(span.server.port())),
        _ => (span.server.ip().to_string(), span.server.port()),
    };
    let mut attributes = vec![
        kv_str("http.request.method", span.method.clone()),
        kv_str("url.path", path),
        kv_int("http.response.status_code", i64::from(span.status)),
        kv_str("server.address", server_host.clone()),
        kv_int("server.port", i64::from(server_port)),
        kv_str("client.address", span.client.ip().to_string()),
        kv_int("client.port", i64::from(span.client.port())),
        kv_str("network.peer.address", match span.kind {
            SpanKind::Server => span.client.ip().to_string(),
            SpanKind::Client => span.server.ip().to_string(),
        }),
        kv_int("network.peer.port", i64::from(match span.kind {
            SpanKind::Server => span.client.port(),
            SpanKind::Client => span.server.port(),
        })),
        kv_str("network.protocol.name", "http"),
    ];
    if let Some(q) = query {
        attributes.push(kv_str("url.query", q));
    }
    if span.kind == SpanKind::Client {
        let authority = if server_host.contains(':') { format!("[{server_host}]:{server_port}") } else { format!("{server_host}:{server_port}") };
        attributes.push(kv_str("url.full", format!("http://{authority}{}", span.path)));
    }
    if span.request_size > 0 {
        attributes.push(kv_int("http.request.body.size", i64::try_from(span.request_size).unwrap_or(i64::MAX)));
    }
    if span.response_size > 0 {
        attributes.push(kv_int("http.response.body.size", i64::try_from(span.response_size).unwrap_or(i64::MAX)));
    }
    // semantic conventions: 5xx is an error on both sides, 4xx only for a client
    let error = span.status >= 500 || (span.kind == SpanKind::Client && span.status >= 400);
    let remote = if span.parent_id.is_some() {
        otlp::SpanFlags::ContextHasIsRemoteMask as u32 | otlp::SpanFlags::ContextIsRemoteMask as u32
    } else {
        otlp::SpanFlags::ContextHasIsRemoteMask as u32
    };
    let start = clock.unix_ns(span.request_start_ns).max(0);
    let end = clock.unix_ns(span.end_ns).max(start);
    otlp::Span {
        trace_id: hex_bytes(&span.trace_id),
        span_id: hex_bytes(&span.span_id),
        trace_state: if span.propagated { span.tracestate.clone().unwrap_or_default() } else { String::new() },
        parent_span_id: span.parent_id.as_deref().map(hex_bytes).unwrap_or_default(),
        flags: u32::from(span.flags) | remote,
        name: format!("{} {path}", span.method),
        kind: match span.kind {
            SpanKind::Server => OtlpKind::Server as i32,
            SpanKind::Client => OtlpKind::Client as i32,
        },
        start_time_unix_nano: u64::try_from(start).unwrap_or(0),
        end_time_unix_nano: u64::try_from(end).unwrap_or(u64::MAX),
        attributes,
        status: Some(otlp::Status {
            code: if error { StatusCode::Error as i32 } else { StatusCode::Unset as i32 },
            message: String::new(),
        }),
        ..Default::default()
    }
}

/// One export request: the resource (service) and the spans.
pub fn export_request(service_name: &str, spans: Vec<otlp::Span>) -> ExportTraceServiceRequest {
    let resource = Resource {
        attributes: vec![
            kv_str("service.name", service_name),
            kv_str("telemetry.sdk.name", "tclab-agent"),
            kv_str("telemetry.sdk.language", "rust"),
            kv_str("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
        ],
        ..Default::default()
    };
    let scope = InstrumentationScope { name: "tclab-agent".into(), version: env!("CARGO_PKG_VERSION").into(), ..Default::default() };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource),
            scope_spans: vec![ScopeSpans { scope: Some(scope), spans, schema_url: String::new() }],
            schema_url: String::new(),
        }],
    }
}

/// Posts batches to the collector; owned by the exporter thread.
struct Sender {
    agent: ureq::Agent,
    cfg: OtlpConfig,
    service_name: String,
    metrics: Arc<Metrics>,
}

impl Sender {
    /// Post one batch; `attempts`: how many tries (a shutdown flush tries once).
    fn send(&self, batch: Vec<otlp::Span>, attempts: u32) {
        let n = batch.len() as u64;
        let body = export_request(&self.service_name, batch).encode_to_vec();
        let mut last = String::new();
        for attempt in 0..attempts {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(200 << attempt));
            }
            match self.post(&body) {
                Ok(rejected) => {
                    self.metrics.add_otlp_exported(n - rejected.min(n));
                    self.metrics.add_otlp_dropped(OtlpDrop::Rejected, rejected.min(n));
                    return;
                }
                Err((retry, e)) => {
                    last = e;
                    if !retry {
                        break;
                    }
                }
            }
        }
        tracing::warn!(spans = n, endpoint = %self.cfg.endpoint, error = %last, "failed to export spans over OTLP");
        self.metrics.add_otlp_dropped(OtlpDrop::ExportFailed, n);
    }

    /// Ok(rejected spans) or Err((worth retrying, why)).
    fn post(&self, body: &[u8]) -> Result<u64, (bool, String)> {
        let mut req = self.agent.post(&self.cfg.endpoint).header("Content-Type", "application/x-protobuf");
        for (k, v) in &self.cfg.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let mut resp = req.send(body).map_err(|e| (true, format!("POST {}: {e}", self.cfg.endpoint)))?;
        let status = resp.status().as_u16();
        let bytes = resp.body_mut().with_config().limit(1 << 20).read_to_vec().unwrap_or_default();
        if !(200..300).contains(&status) {
            // the spec's retryable codes; anything else will not get better
            let retry = matches!(status, 429 | 502 | 503 | 504);
            return Err((retry, format!("POST {}: HTTP {status} {}", self.cfg.endpoint, String::from_utf8_lossy(&bytes[..bytes.len().min(200)]))));
        }
        let partial = ExportTraceServiceResponse::decode(bytes.as_slice()).ok().and_then(|r| r.partial_success);
        Ok(match partial {
            Some(p) if p.rejected_spans > 0 => {
                tracing::warn!(rejected = p.rejected_spans, message = %p.error_message, "the OTLP collector rejected spans");
                u64::try_from(p.rejected_spans).unwrap_or(0)
            }
            _ => 0,
        })
    }
}

/// Why exported spans were lost (a label of the dropped counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpDrop {
    /// The queue was full: the collector is slower than the traffic.
    QueueFull,
    /// The post failed after its retries.
    ExportFailed,
    /// The collector answered with a partial success rejecting them.
    Rejected,
}

impl OtlpDrop {
    /// Label value.
    pub fn label(self) -> &'static str {
        match self {
            OtlpDrop::QueueFull => "queue_full",
            OtlpDrop::ExportFailed => "export_failed",
            OtlpDrop::Rejected => "rejected",
        }
    }
}

/// A running exporter (see the module documentation).
#[derive(Debug)]
pub struct OtlpExporter {
    tx: Option<SyncSender<otlp::Span>>,
    thread: Option<JoinHandle<()>>,
    clock: WallClock,
    metrics: Arc<Metrics>,
    endpoint: String,
}

impl OtlpExporter {
    /// Start the exporter thread (in the caller's network namespace).
    /// `service_name` is used unless the config names one.
    ///
    /// # Errors
    /// [`OtlpError::Thread`] when the thread cannot be spawned.
    pub fn start(cfg: OtlpConfig, service_name: &str, clock: WallClock, metrics: Arc<Metrics>) -> Result<OtlpExporter, OtlpError> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(cfg.timeout))
            .http_status_as_error(false)
            .user_agent(concat!("tclab-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let (tx, rx) = mpsc::sync_channel(cfg.queue_size.max(1));
        let endpoint = cfg.endpoint.clone();
        let sender = Sender {
            agent,
            service_name: cfg.service_name.clone().unwrap_or_else(|| service_name.to_owned()),
            cfg,
            metrics: metrics.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("tclab-otlp".into())
            .spawn(move || batch_loop(&rx, &sender))
            .map_err(|e| OtlpError::Thread(e.to_string()))?;
        tracing::info!(%endpoint, "exporting spans over OTLP/HTTP");
        Ok(OtlpExporter { tx: Some(tx), thread: Some(thread), clock, metrics, endpoint })
    }

    /// The traces URL.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Queue one span; never blocks (a full queue drops it, counted).
    pub fn export(&self, span: &Span) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(to_otlp(span, &self.clock)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.metrics.add_otlp_dropped(OtlpDrop::QueueFull, 1),
            Err(TrySendError::Disconnected(_)) => self.metrics.add_otlp_dropped(OtlpDrop::ExportFailed, 1),
        }
    }
}

impl Drop for OtlpExporter {
    fn drop(&mut self) {
        // closing the queue makes the thread send what is left and end
        self.tx.take();
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::warn!("the OTLP exporter thread panicked");
        }
    }
}

/// Batch the queue until it is closed, then flush once.
fn batch_loop(rx: &Receiver<otlp::Span>, sender: &Sender) {
    let mut batch = Vec::with_capacity(sender.cfg.max_batch);
    let mut deadline: Option<Instant> = None;
    loop {
        let got = match deadline {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
        };
        match got {
            Ok(span) => {
                deadline.get_or_insert_with(|| Instant::now() + sender.cfg.batch_delay);
                batch.push(span);
                if batch.len() >= sender.cfg.max_batch {
                    sender.send(std::mem::take(&mut batch), 3);
                    deadline = None;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                sender.send(std::mem::take(&mut batch), 3);
                deadline = None;
            }
            Err(RecvTimeoutError::Disconnected) => {
                for chunk in batch.chunks(sender.cfg.max_batch.max(1)) {
                    sender.send(chunk.to_vec(), 1);
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Traceparent;
    use crate::w3c::HexId;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn endpoint_precedence_and_paths() {
        let r = |flag: Option<&str>, env: &[(&str, &str)]| OtlpConfig::resolve(flag, vars(env)).map(|c| c.map(|c| c.endpoint));
        assert_eq!(r(None, &[]), Ok(None));
        assert_eq!(r(None, &[(env::ENDPOINT, "http://c:4318")]), Ok(Some("http://c:4318/v1/traces".into())));
        assert_eq!(r(None, &[(env::ENDPOINT, "http://c:4318/base/")]), Ok(Some("http://c:4318/base/v1/traces".into())));
        let both = [(env::ENDPOINT, "http://base:4318"), (env::TRACES_ENDPOINT, "http://t:4318/custom")];
        assert_eq!(r(None, &both), Ok(Some("http://t:4318/custom".into())), "the traces variable is used as is and wins");
        assert_eq!(r(Some("http://flag:1"), &both), Ok(Some("http://flag:1/v1/traces".into())), "the flag wins");
        assert_eq!(r(None, &[(env::ENDPOINT, "  ")]), Ok(None), "empty is unset");
        let err = r(None, &[(env::TRACES_ENDPOINT, "https://secure:4318/v1/traces")]).unwrap_err();
        assert!(err.to_string().contains(env::TRACES_ENDPOINT) && err.to_string().contains("TLS"), "{err}");
        let err = r(Some("collector:4318"), &[]).unwrap_err();
        assert!(err.to_string().contains("--otlp-endpoint") && err.to_string().contains("http://"), "{err}");
        assert!(r(Some("http:///v1/traces"), &[]).is_err());
    }

    #[test]
    fn settings_from_the_environment() {
        let cfg = OtlpConfig::resolve(
            Some("http://c:4318"),
            vars(&[
                (env::HEADERS, "authorization=Bearer%20abc, x-a=1"),
                (env::TRACES_HEADERS, "X-A=2"),
                (env::TRACES_TIMEOUT, "1500"),
                (env::BSP_SCHEDULE_DELAY, "100"),
                (env::BSP_MAX_QUEUE_SIZE, "64"),
                (env::BSP_MAX_EXPORT_BATCH_SIZE, "1000"),
                (env::SERVICE_NAME, "checkout"),
                (env::PROTOCOL, "http/protobuf"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(cfg.headers, [("authorization".to_string(), "Bearer abc".to_string()), ("X-A".into(), "2".into())]);
        assert_eq!((cfg.timeout, cfg.batch_delay), (Duration::from_millis(1500), Duration::from_millis(100)));
        assert_eq!((cfg.queue_size, cfg.max_batch), (64, 64), "a batch is never larger than the queue");
        assert_eq!(cfg.service_name.as_deref(), Some("checkout"));
        let bad = |k: &'static str, v: &str| OtlpConfig::resolve(Some("http://c"), vars(&[(k, v)])).unwrap_err();
        assert!(matches!(bad(env::PROTOCOL, "grpc"), OtlpError::Setting { name: env::PROTOCOL, .. }));
        assert!(matches!(bad(env::HEADERS, "novalue"), OtlpError::Setting { name: env::HEADERS, .. }));
        assert!(matches!(bad(env::TIMEOUT, "10s"), OtlpError::Setting { name: env::TIMEOUT, .. }));
    }

    fn span(kind: SpanKind, status: u16, parent: Option<&str>) -> Span {
        Span {
            kind,
            method: "POST".into(),
            path: "/api/items?id=42".into(),
            host: Some("shop.svc:8080".into()),
            status,
            client: "10.0.0.1:40000".parse().unwrap(),
            server: "10.0.0.2:8080".parse().unwrap(),
            request_size: 12,
            response_size: 0,
            request_start_ns: 1_000,
            start_ns: 1_500,
            end_ns: 3_000,
            traceparent_in: Traceparent::Missing,
            tracestate: Some("a=b".into()),
            trace_id: HexId::parse("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            span_id: HexId::parse("1111111111111111").unwrap(),
            parent_id: parent.map(|p| HexId::parse(p).unwrap()),
            flags: 1,
            propagated: parent.is_some(),
            ifindex: 2,
        }
    }

    fn attr<'a>(s: &'a otlp::Span, key: &str) -> Option<&'a any_value::Value> {
        s.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v| v.value.as_ref())
    }

    #[test]
    fn spans_follow_the_http_conventions() {
        let clock = WallClock { offset_ns: 1_700_000_000_000_000_000 };
        let s = to_otlp(&span(SpanKind::Server, 503, Some("00f067aa0ba902b7")), &clock);
        assert_eq!(s.name, "POST /api/items");
        assert_eq!(s.kind, OtlpKind::Server as i32);
        assert_eq!(hex::encode(&s.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex::encode(&s.parent_span_id), "00f067aa0ba902b7");
        assert_eq!((s.start_time_unix_nano, s.end_time_unix_nano), (1_700_000_000_000_001_000, 1_700_000_000_000_003_000));
        assert_eq!(s.flags, 0x301, "sampled, remote parent");
        assert_eq!(s.trace_state, "a=b");
        assert_eq!(s.status.as_ref().unwrap().code, StatusCode::Error as i32);
        assert_eq!(attr(&s, "url.query"), Some(&any_value::Value::StringValue("id=42".into())));
        assert_eq!(attr(&s, "server.address"), Some(&any_value::Value::StringValue("shop.svc".into())));
        assert_eq!(attr(&s, "server.port"), Some(&any_value::Value::IntValue(8080)));
        assert_eq!(attr(&s, "http.request.body.size"), Some(&any_value::Value::IntValue(12)));
        assert_eq!(attr(&s, "url.full"), None, "server spans carry no url.full");

        let c = to_otlp(&span(SpanKind::Client, 404, None), &clock);
        assert_eq!((c.kind, c.parent_span_id.len(), c.flags), (OtlpKind::Client as i32, 0, 0x101));
        assert_eq!(c.trace_state, "", "tracestate only travels with a continued trace");
        assert_eq!(c.status.as_ref().unwrap().code, StatusCode::Error as i32, "4xx is an error for a client");
        assert_eq!(attr(&c, "url.full"), Some(&any_value::Value::StringValue("http://shop.svc:8080/api/items?id=42".into())));
        assert_eq!(to_otlp(&span(SpanKind::Server, 404, None), &clock).status.unwrap().code, StatusCode::Unset as i32);
        assert_eq!(host_port("[fd00::1]:81"), ("fd00::1".into(), Some(81)));
        assert_eq!(host_port("fd00::1"), ("fd00::1".into(), None));
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        // nothing listens on port 9 of a documentation address: posts fail, slowly
        let mut cfg = OtlpConfig::new("http://192.0.2.1:9/v1/traces");
        cfg.queue_size = 4;
        cfg.max_batch = 4;
        cfg.batch_delay = Duration::from_secs(3600);
        cfg.timeout = Duration::from_millis(50);
        let metrics = Arc::new(Metrics::default());
        let x = OtlpExporter::start(cfg, "t", WallClock { offset_ns: 0 }, metrics.clone()).unwrap();
        let t0 = Instant::now();
        for _ in 0..100 {
            x.export(&span(SpanKind::Server, 200, None));
        }
        assert!(t0.elapsed() < Duration::from_secs(1), "export never waits for the collector");
        let before = metrics.otlp();
        assert_eq!(before.exported, 0);
        assert!(before.queue_full >= 100 - 8, "queue of 4 (+ one batch in flight): {before:?}");
        drop(x);
        let after = metrics.otlp();
        assert_eq!(after.exported, 0);
        assert_eq!(after.queue_full + after.export_failed, 100, "every span is exported or counted lost: {after:?}");
    }
}
