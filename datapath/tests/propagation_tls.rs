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
    serve_front_with(listener, down, |down| TcpStream::connect(down).unwrap());
}

fn serve_front_with(listener: TcpListener, down: SocketAddr, connect: fn(SocketAddr) -> TcpStream) {
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
            let mut d = connect(down);
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

/// `struct tcp_md5sig` (linux/tcp.h), for TCP_MD5SIG.
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: i32,
    key: [u8; 80],
}

/// TCP MD5 signatures (RFC 2385) with peer 127.0.0.1 on `fd`: they and the
/// timestamps take 32 of a segment's 40 bytes of options, which leaves no
/// room for ours (28).
fn md5_with_localhost(fd: std::os::fd::BorrowedFd<'_>) {
    use std::os::fd::AsRawFd;
    // SAFETY: all-zero is a valid sockaddr_storage and byte array.
    let mut sig: TcpMd5Sig = unsafe { std::mem::zeroed() };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes([127, 0, 0, 1]) },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in fits in sockaddr_storage; both are plain data.
    unsafe { std::ptr::copy_nonoverlapping(&sin, (&raw mut sig.addr).cast::<libc::sockaddr_in>(), 1) };
    sig.keylen = 8;
    sig.key[..8].copy_from_slice(b"tclab-md");
    // SAFETY: a valid fd and a struct of the size the option takes.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            (&raw const sig).cast(),
            std::mem::size_of::<TcpMd5Sig>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "TCP_MD5SIG: {}", std::io::Error::last_os_error());
}

/// `down` whose connections sign with TCP MD5 (the listener's key is
/// inherited by the connections it accepts).
fn serve_down_md5(listener: TcpListener) {
    use std::os::fd::AsFd;
    md5_with_localhost(listener.as_fd());
    serve_down(listener);
}

/// `front` as [`serve_front`], its connections to down signed with TCP MD5.
fn serve_front_md5(listener: TcpListener, down: SocketAddr) {
    serve_front_with(listener, down, |down| {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, connect, socket};
        use std::os::fd::{AsFd, AsRawFd};
        let SocketAddr::V4(v4) = down else { panic!("down is IPv4: {down}") };
        let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::empty(), None).unwrap();
        md5_with_localhost(fd.as_fd());
        connect(fd.as_raw_fd(), &SockaddrIn::from(v4)).unwrap();
        TcpStream::from(fd)
    });
}

fn setup_md5() -> Setup {
    front_and_down("tclab-proptlsmd5", serve_front_md5, serve_down_md5)
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

/// Returns the counters of the run.
fn carried_across_a_tls_hop(mode: Mode, origin: Origin, setup: fn() -> Setup) -> Vec<(&'static str, u64)> {
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
    p.counters().expect("counters")
}

#[test]
fn the_tcp_option_carries_the_trace_across_a_tls_hop() {
    if require::root("the_tcp_option_carries_the_trace_across_a_tls_hop") {
        carried_across_a_tls_hop(Mode::Tcp, Origin::Tcp, setup);
    }
}

#[test]
fn the_ip_option_carries_the_trace_across_a_tls_hop() {
    if require::root("the_ip_option_carries_the_trace_across_a_tls_hop") {
        carried_across_a_tls_hop(Mode::Ip, Origin::Ip, setup);
    }
}

/// With every carrier on, a request is carried once, by the first that
/// can (docs/propagation.md): a TLS hop by the TCP option, and by the IP
/// option only where the TCP option does not fit.
#[test]
fn all_modes_carry_a_tls_hop_once_the_ip_option_where_the_tcp_option_does_not_fit() {
    if !require::root("all_modes_carry_a_tls_hop_once_the_ip_option_where_the_tcp_option_does_not_fit") {
        return;
    }
    let count = |c: &[(&str, u64)], name: &str| c.iter().find(|(n, _)| *n == name).map_or(0, |(_, v)| *v);
    let c = carried_across_a_tls_hop(Mode::All, Origin::Tcp, setup);
    assert!(count(&c, "tcp_written") >= 2 && count(&c, "ip_added") == 0, "the TCP option alone: {c:?}");
    let c = carried_across_a_tls_hop(Mode::All, Origin::Ip, setup_md5);
    assert!(count(&c, "tcp_written") == 0 && count(&c, "ip_added") >= 2, "no room for the TCP option: the IP option: {c:?}");
}
