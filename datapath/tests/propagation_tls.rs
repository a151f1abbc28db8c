//! Context propagation across a TLS hop, at the socket layer, in one
//! process (as propagation_headers.rs): a client calls a "front" HTTP
//! server, whose serving thread opens a connection to "down" and sends the
//! first bytes of a TLS client (a ClientHello record) or something else.
//! The payload cannot be changed; the TCP option (`tcp`) or the IP option
//! (`ip`) carries the context. Asserted: the kernel's events — front's
//! connection-level client span in the trace of front's server span, down's
//! server span its child — and that bytes that are not a ClientHello open
//! nothing.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::Duration;

use tclab_datapath::propagation::events::PropKind;
use tclab_datapath::propagation::types::Origin;
use tclab_datapath::propagation::{Mode, PropEvent, tls};
use tclab_net::require;

#[path = "common/own_cgroup.rs"]
mod own_cgroup;
use own_cgroup::{OwnCgroup, Setup, Started, front_and_down, start_propagation};

static SERIAL: Mutex<()> = Mutex::new(());

/// A TLS 1.3 ClientHello's record and handshake header, then filler.
fn client_hello() -> Vec<u8> {
    let mut m = vec![0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0x00, 0x00, 0x3c, 0x03, 0x03];
    m.resize(5 + 0x40, 0xa5);
    assert!(tls::is_client_hello(&m));
    m
}

/// A ServerHello record: TLS, but not what a client sends first.
fn server_hello() -> Vec<u8> {
    let mut m = client_hello();
    m[5] = 0x02;
    assert!(!tls::is_client_hello(&m));
    m
}

/// `down`: reads what comes, answers one byte per read.
fn serve_down(listener: TcpListener) {
    for conn in listener.incoming() {
        let Ok(mut stream) = conn else { return };
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 || stream.write_all(b"k").is_err() {
                    return;
                }
            }
        });
    }
}

/// `front`: for `GET /hello` sends a ClientHello to down on the serving
/// thread (a new connection), for `GET /server` a ServerHello; waits for
/// down's byte, then answers.
fn serve_front(listener: TcpListener, down: SocketAddr) {
    for conn in listener.incoming() {
        let Ok(stream) = conn else { return };
        std::thread::spawn(move || {
            let mut w = stream.try_clone().unwrap();
            let mut r = BufReader::new(stream);
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                    break;
                }
            }
            let bytes = if line.starts_with("GET /hello ") { client_hello() } else { server_hello() };
            let mut d = TcpStream::connect(down).unwrap();
            d.write_all(&bytes).unwrap();
            let mut ack = [0u8; 1];
            d.read_exact(&mut ack).unwrap();
            w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
        });
    }
}

fn setup() -> Setup {
    front_and_down("tclab-proptls", serve_front, serve_down)
}

/// One request to front (a fresh connection), read to the end.
fn get(s: &Setup, path: &str) {
    let mut stream = s.ns.run(|| TcpStream::connect(s.front).unwrap());
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: front\r\n\r\n").as_bytes()).unwrap();
    let mut resp = String::new();
    stream.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp:?}");
}

fn start(mode: Mode, cg: &OwnCgroup, s: &Setup) -> Started {
    start_propagation(mode, cg, &s.ns)
}

fn find<'a>(evs: &'a [PropEvent], what: &str, f: impl Fn(&PropEvent) -> bool) -> &'a PropEvent {
    let found: Vec<&PropEvent> = evs.iter().filter(|e| f(e)).collect();
    assert_eq!(found.len(), 1, "one {what}: {evs:#?}");
    found[0]
}

fn carried_across_a_tls_hop(mode: Mode, origin: Origin) {
    let _g = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let cg = OwnCgroup::enter("proptls");
    let s = setup();
    let mut st = start(mode, &cg, &s);
    let p = &mut st.p;
    for i in 0..2 {
        get(&s, "/hello");
        std::thread::sleep(Duration::from_millis(50));
        let evs = p.drain();
        let front = find(&evs, "front server event", |e| e.kind == PropKind::Server && e.local.port() == s.front.port());
        assert!(!front.opaque, "front's request is HTTP");
        let client = find(&evs, "client event towards down", |e| e.kind == PropKind::Client && e.remote.port() == s.down.port());
        assert!(client.opaque, "a connection-level span: {client:#?}");
        assert!(!client.injected, "nothing is written into TLS");
        assert_eq!(client.origin, Origin::Thread);
        assert_eq!(client.trace_id, front.trace_id, "{mode} #{i}: the serving thread's trace");
        assert_eq!(client.parent_id.as_deref(), Some(front.span_id.as_str()));
        let down = find(&evs, "down server event", |e| e.kind == PropKind::Server && e.local.port() == s.down.port());
        assert!(down.opaque, "no HTTP request at down: {down:#?}");
        assert_eq!(down.origin, origin, "{mode}: carried by its option");
        assert_eq!(down.trace_id, front.trace_id, "{mode} #{i}: one trace across the TLS hop");
        assert_eq!(down.parent_id.as_deref(), Some(client.span_id.as_str()), "down's parent is front's TLS client span");
        assert_ne!(down.span_id, client.span_id);
    }
    assert_eq!(p.counter("tls_clients"), 2, "{:?}", p.counters());

    // TLS that a client does not send first opens nothing
    get(&s, "/server");
    std::thread::sleep(Duration::from_millis(50));
    let evs = p.drain();
    assert!(
        !evs.iter().any(|e| e.remote.port() == s.down.port() || e.local.port() == s.down.port()),
        "a ServerHello is no client: {evs:#?}"
    );
    assert_eq!(p.counter("tls_clients"), 2);
}

#[test]
fn the_tcp_option_carries_the_trace_across_a_tls_hop() {
    if require::root("the_tcp_option_carries_the_trace_across_a_tls_hop") {
        carried_across_a_tls_hop(Mode::Tcp, Origin::Tcp);
    }
}

#[test]
fn the_ip_option_carries_the_trace_across_a_tls_hop() {
    if require::root("the_ip_option_carries_the_trace_across_a_tls_hop") {
        carried_across_a_tls_hop(Mode::Ip, Origin::Ip);
    }
}
