//! One test service: an HTTP/1.1 server whose routes may call a
//! downstream service while serving, on the thread that serves the
//! incoming request (what the agent's correlation keys on). It never
//! copies the incoming `traceparent` to its outgoing request unless told to
//! (`forward_traceparent`, an application that propagates by itself): the
//! agent must.
//!
//! Every response is a JSON document naming the service, the path, the
//! trace headers it received and, nested, its downstream's document, so the
//! caller of the first service sees what every hop received.
//!
//! A service may serve over TLS (`tls_cert_out`: a self-signed certificate
//! made at start, written there for its callers) and call `https://`
//! downstreams, trusting exactly the certificates of `downstream_ca`
//! ([`super::tls`]).

use std::io::{self, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::http::{self, Request};
use super::tls::{self, Stream};

/// How long a downstream call may take before the route answers 502.
const DOWNSTREAM_TIMEOUT: Duration = Duration::from_secs(10);

/// `http://IP:PORT/path` or `https://…` (IPv6 in brackets): where a route calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    pub path: String,
    /// `https://`: TLS, the server's certificate naming its IP.
    pub tls: bool,
}

impl FromStr for Target {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Target> {
        let (tls, rest) = match (s.strip_prefix("http://"), s.strip_prefix("https://")) {
            (Some(rest), _) => (false, rest),
            (None, Some(rest)) => (true, rest),
            (None, None) => bail!("{s:?}: only http:// and https:// URLs are supported"),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr: SocketAddr = authority
            .parse()
            .with_context(|| format!("{s:?}: expected an IP literal and a port, like http://10.0.0.2:8080/path"))?;
        Ok(Target { addr, path: path.to_owned(), tls })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}{}", if self.tls { "https" } else { "http" }, self.addr, self.path)
    }
}

/// `PATH` or `PATH=URL`: a route answered locally, or after calling URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub path: String,
    pub downstream: Option<Target>,
}

impl FromStr for Route {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Route> {
        let (path, downstream) = match s.split_once('=') {
            Some((p, url)) => (p, Some(url.parse::<Target>()?)),
            None => (s, None),
        };
        if !path.starts_with('/') {
            bail!("route {s:?}: the path must start with '/'");
        }
        Ok(Route { path: path.to_owned(), downstream })
    }
}

/// What one service does.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// Name, shown in its documents.
    pub name: String,
    pub listen: SocketAddr,
    pub routes: Vec<Route>,
    /// Copy the incoming traceparent/tracestate to the downstream request
    /// (an application that propagates context itself).
    pub forward_traceparent: bool,
    /// Reuse one downstream connection per serving thread (keep-alive);
    /// otherwise one connection per call.
    pub downstream_keepalive: bool,
    /// Answer first, then make the downstream call on the same thread
    /// (work after the response, like a fire-and-forget hook): the call is
    /// outside the request, and so outside its trace.
    pub call_after_response: bool,
    /// Serve over TLS: a self-signed certificate for the listening IP is
    /// made at start and written (PEM) to this path before `ready`.
    pub tls_cert_out: Option<PathBuf>,
    /// The certificates (PEM) trusted for `https://` downstreams: exactly
    /// these (read at each new connection: the downstream may start later).
    pub downstream_ca: Option<PathBuf>,
}

/// Bind, call `ready` with the bound address, then serve forever (one
/// thread per connection).
///
/// # Errors
/// When the address cannot be bound.
pub fn serve(spec: &ServiceSpec, ready: impl FnOnce(SocketAddr)) -> anyhow::Result<()> {
    let listener = TcpListener::bind(spec.listen).with_context(|| format!("{}: failed to bind {}", spec.name, spec.listen))?;
    let local = listener.local_addr().context("failed to read the bound address")?;
    let tls = match &spec.tls_cert_out {
        Some(path) => {
            let id = tls::Identity::self_signed(local.ip()).with_context(|| format!("{}: TLS", spec.name))?;
            id.write_cert(path)?;
            Some(id.server_config()?)
        }
        None => None,
    };
    ready(local);
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let spec = spec.clone();
                let tls = tls.clone();
                std::thread::spawn(move || {
                    if let Err(e) = serve_connection(&spec, stream, tls.as_ref()) {
                        tracing::debug!(service = spec.name, error = %e, "connection ended with an error");
                    }
                });
            }
            Err(e) => tracing::warn!(service = spec.name, error = %e, "accept failed"),
        }
    }
    Ok(())
}

/// Serve one connection: requests in order, each answered after its
/// downstream call (made here, on this thread). With TLS, the handshake
/// happens on this thread too (at the first read).
fn serve_connection(spec: &ServiceSpec, stream: TcpStream, tls: Option<&Arc<rustls::ServerConfig>>) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let stream: Box<dyn Stream> = match tls {
        Some(cfg) => Box::new(tls::accept(cfg, stream)?),
        None => Box::new(stream),
    };
    let mut reader = BufReader::new(stream);
    let mut downstream: Option<Downstream> = None;
    while let Some(req) = http::read_request(&mut reader)? {
        let (status, body) = handle(spec, &req, &mut downstream, !spec.call_after_response);
        let keep = req.keep_alive();
        let w = reader.get_mut();
        http::write_response(w, status, body.to_string().as_bytes(), keep)?;
        w.flush()?;
        if spec.call_after_response {
            // the answer is gone: what the call returns goes nowhere
            let (status, doc) = handle(spec, &req, &mut downstream, true);
            if status != 200 {
                tracing::debug!(service = spec.name, status, %doc, "the call after the response failed");
            }
        }
        if !keep {
            break;
        }
    }
    Ok(())
}

/// The request's document; with `call`, after calling its route's
/// downstream (whose answer it includes).
fn handle(spec: &ServiceSpec, req: &Request, downstream: &mut Option<Downstream>, call: bool) -> (u16, Value) {
    let path = req.path.split('?').next().unwrap_or_default();
    let mut doc = json!({
        "service": spec.name,
        "path": req.path,
        "traceparent": req.header("traceparent"),
        "tracestate": req.header("tracestate"),
    });
    let Some(route) = spec.routes.iter().find(|r| r.path == path) else {
        doc["error"] = json!(format!("no route {path}"));
        return (404, doc);
    };
    let Some(target) = route.downstream.as_ref().filter(|_| call) else { return (200, doc) };
    let mut extra = Vec::new();
    if spec.forward_traceparent {
        for name in ["traceparent", "tracestate"] {
            if let Some(v) = req.header(name) {
                extra.push((name.to_owned(), v.to_owned()));
            }
        }
    }
    match call_downstream(downstream, target, &extra, spec.downstream_keepalive, spec.downstream_ca.as_deref()) {
        Ok((200, body)) => {
            doc["downstream"] = body;
            (200, doc)
        }
        Ok((status, body)) => {
            doc["downstream"] = body;
            doc["error"] = json!(format!("{target} answered {status}"));
            (502, doc)
        }
        Err(e) => {
            doc["error"] = json!(format!("calling {target}: {e:#}"));
            (502, doc)
        }
    }
}

/// A kept-alive connection to one downstream address (TCP or TLS).
struct Downstream {
    addr: SocketAddr,
    tls: bool,
    stream: BufReader<Box<dyn Stream>>,
}

impl Downstream {
    /// `ca`: the certificates trusted for an `https://` target.
    fn connect(target: &Target, ca: Option<&Path>) -> anyhow::Result<Downstream> {
        let addr = target.addr;
        let stream = TcpStream::connect_timeout(&addr, DOWNSTREAM_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(DOWNSTREAM_TIMEOUT))?;
        let stream: Box<dyn Stream> = if target.tls {
            let ca = ca.with_context(|| format!("{target}: https needs the certificates to trust (--downstream-ca)"))?;
            Box::new(tls::connect(&tls::client_config(ca)?, addr.ip(), stream)?)
        } else {
            Box::new(stream)
        };
        Ok(Downstream { addr, tls: target.tls, stream: BufReader::new(stream) })
    }

    fn call(&mut self, target: &Target, extra: &[(String, String)], keepalive: bool) -> io::Result<http::Response> {
        let mut extra = extra.to_vec();
        if !keepalive {
            extra.push(("Connection".to_owned(), "close".to_owned()));
        }
        let bytes = http::encode_request("GET", &target.path, &target.addr.to_string(), &extra, b"");
        // (TLS: the handshake happens here, on the calling thread)
        let w = self.stream.get_mut();
        w.write_all(&bytes)?;
        w.flush()?;
        http::read_response(&mut self.stream)
    }
}

fn call_downstream(
    slot: &mut Option<Downstream>,
    target: &Target,
    extra: &[(String, String)],
    keepalive: bool,
    ca: Option<&Path>,
) -> anyhow::Result<(u16, Value)> {
    let reused = slot.as_ref().is_some_and(|d| d.addr == target.addr && d.tls == target.tls);
    if !reused {
        *slot = Some(Downstream::connect(target, ca).context("connect")?);
    }
    let Some(conn) = slot.as_mut() else { bail!("no downstream connection") };
    let resp = match conn.call(target, extra, keepalive) {
        Ok(r) => r,
        // A kept connection the peer closed meanwhile: once more on a new one.
        Err(_) if reused => {
            *slot = Some(Downstream::connect(target, ca).context("reconnect")?);
            let Some(conn) = slot.as_mut() else { bail!("no downstream connection") };
            conn.call(target, extra, keepalive).context("request")?
        }
        Err(e) => return Err(anyhow::Error::new(e).context("request")),
    };
    if !keepalive {
        *slot = None;
    }
    let body = serde_json::from_slice(&resp.body).unwrap_or_else(|_| json!(String::from_utf8_lossy(&resp.body)));
    Ok((resp.status, body))
}

/// One client call on a fresh or given connection: what `tclab testserver
/// get` and the chain's load generator do.
pub struct Client {
    conn: Option<Downstream>,
    keepalive: bool,
    ca: Option<PathBuf>,
}

impl Client {
    /// `keepalive`: reuse the connection between calls.
    pub fn new(keepalive: bool) -> Client {
        Client { conn: None, keepalive, ca: None }
    }

    /// Trust exactly the certificates (PEM) of `ca` for `https://` targets.
    pub fn with_ca(mut self, ca: impl Into<PathBuf>) -> Client {
        self.ca = Some(ca.into());
        self
    }

    /// GET `target` with `extra` headers; the status and the JSON body.
    ///
    /// # Errors
    /// Connection or protocol errors, naming the target.
    pub fn get(&mut self, target: &Target, extra: &[(String, String)]) -> anyhow::Result<(u16, Value)> {
        call_downstream(&mut self.conn, target, extra, self.keepalive, self.ca.as_deref()).with_context(|| format!("GET {target}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain service on an ephemeral loopback port.
    fn loopback_spec(name: &str, routes: Vec<Route>) -> ServiceSpec {
        ServiceSpec {
            name: name.to_owned(),
            listen: "127.0.0.1:0".parse().unwrap(),
            routes,
            forward_traceparent: false,
            downstream_keepalive: true,
            call_after_response: false,
            tls_cert_out: None,
            downstream_ca: None,
        }
    }

    /// Serve `spec` on a thread; its bound address.
    fn start_on_loopback(spec: ServiceSpec) -> SocketAddr {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || serve(&spec, |a| tx.send(a).unwrap()));
        rx.recv().unwrap()
    }

    #[test]
    fn parses_routes_and_targets() {
        let r: Route = "/traceme=http://10.0.2.2:8081/tracemetoo".parse().unwrap();
        assert_eq!(r.path, "/traceme");
        assert_eq!(r.downstream.unwrap().to_string(), "http://10.0.2.2:8081/tracemetoo");
        let r: Route = "/users".parse().unwrap();
        assert!(r.downstream.is_none());
        let t: Target = "http://[fd00::2]:80".parse().unwrap();
        assert_eq!(t.path, "/");
        assert!("users".parse::<Route>().unwrap_err().to_string().contains("must start with '/'"));
        assert!("/a=ftp://x".parse::<Route>().unwrap_err().to_string().contains("only http:// and https://"));
        let t: Target = "https://10.0.0.2:8443/tracemetoo".parse().unwrap();
        assert!(t.tls);
        assert_eq!(t.to_string(), "https://10.0.0.2:8443/tracemetoo");
        assert!(!"http://10.0.0.2:80/".parse::<Target>().unwrap().tls);
        assert!("/a=http://name:80/".parse::<Route>().unwrap_err().to_string().contains("IP literal"));
    }

    #[test]
    fn a_chain_on_loopback_nests_documents_and_does_not_propagate() {
        let start = |name: &str, routes: Vec<Route>, forward: bool| -> SocketAddr {
            start_on_loopback(ServiceSpec { forward_traceparent: forward, ..loopback_spec(name, routes) })
        };
        let users = start("users", vec!["/users".parse().unwrap()], false);
        let too = start("too", vec![format!("/tracemetoo=http://{users}/users").parse().unwrap()], false);
        let front = start("front", vec![format!("/traceme=http://{too}/tracemetoo").parse().unwrap()], true);
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut client = Client::new(true);
        for _ in 0..2 {
            let target: Target = format!("http://{front}/traceme").parse().unwrap();
            let (status, doc) = client.get(&target, &[("traceparent".into(), tp.into())]).unwrap();
            assert_eq!(status, 200, "{doc}");
            assert_eq!(doc["traceparent"], tp);
            // front forwards (told to), too does not: users sees nothing
            assert_eq!(doc["downstream"]["traceparent"], tp);
            assert_eq!(doc["downstream"]["downstream"]["service"], "users");
            assert!(doc["downstream"]["downstream"]["traceparent"].is_null());
        }
        let (status, doc) = client.get(&format!("http://{front}/nope").parse().unwrap(), &[]).unwrap();
        assert_eq!(status, 404);
        assert_eq!(doc["error"], "no route /nope");
    }

    #[test]
    fn a_service_told_to_call_after_responding_answers_first() {
        // the downstream holds its answer until the test has read front's
        let down = TcpListener::bind("127.0.0.1:0").unwrap();
        let down_addr = down.local_addr().unwrap();
        let (called, calls) = std::sync::mpsc::channel();
        let (answer, go) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let (stream, _) = down.accept().unwrap();
            let mut r = BufReader::new(stream);
            while let Some(req) = http::read_request(&mut r).unwrap() {
                called.send(req.path.clone()).unwrap();
                go.recv().unwrap();
                http::write_response(r.get_mut(), 200, b"{}", true).unwrap();
            }
        });
        let routes = vec![format!("/traceme=http://{down_addr}/users").parse().unwrap()];
        let front = start_on_loopback(ServiceSpec { call_after_response: true, ..loopback_spec("front", routes) });
        let mut client = Client::new(true);
        for _ in 0..2 {
            let (status, doc) = client.get(&format!("http://{front}/traceme").parse().unwrap(), &[]).unwrap();
            assert_eq!(status, 200, "{doc}");
            assert!(doc["downstream"].is_null(), "answered before calling: {doc}");
            let path = calls.recv_timeout(std::time::Duration::from_secs(5)).expect("then it calls its downstream");
            assert_eq!(path, "/users");
            answer.send(()).unwrap();
        }
    }
}
