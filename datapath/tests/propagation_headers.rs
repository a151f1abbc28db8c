//! Context propagation in `headers` mode, at the socket layer, in one
//! process: a client, a "front" server that calls a "down" server while
//! serving (same thread), all on loopback inside a throwaway namespace.
//! The test process moves itself into a cgroup of its own, which the
//! programs attach to (nothing else on the machine is touched).
//!
//! Every request the test process sends is covered, its own first request
//! included (it gets a new trace). Asserted: what each server really
//! received on the wire, and the kernel's events (ids and parent links).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Mutex, MutexGuard};

use tclab_datapath::propagation::events::PropKind;
use tclab_datapath::propagation::types::Origin;
use tclab_datapath::propagation::{Mode, Programs, PropEvent, Propagation};
use tclab_datapath::w3c;
use tclab_net::require;

#[path = "common/own_cgroup.rs"]
mod own_cgroup;
use own_cgroup::{OwnCgroup, Setup, Started, front_and_down, start_programs, start_propagation};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Read one request or response head (and nothing else: no bodies here).
fn read_head(r: &mut BufReader<TcpStream>) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).unwrap() == 0 {
            break;
        }
        let l = l.trim_end().to_owned();
        if l.is_empty() {
            break;
        }
        lines.push(l);
    }
    lines
}

fn header(head: &[String], name: &str) -> Option<String> {
    head.iter().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}

/// The traceparent each of front and down received, for one client request.
#[derive(Debug)]
struct Received {
    front: Option<String>,
    down: Option<String>,
    /// How many Traceparent lines front got (never two).
    front_count: usize,
}

/// Accept connections, each on its own thread, and call `answer` with each
/// request head read on it and the connection to write to.
fn serve_heads(listener: TcpListener, answer: impl Fn(&[String], &mut TcpStream) + Clone + Send + 'static) {
    for conn in listener.incoming() {
        let Ok(stream) = conn else { return };
        let answer = answer.clone();
        std::thread::spawn(move || {
            let mut w = stream.try_clone().unwrap();
            let mut r = BufReader::new(stream);
            loop {
                let head = read_head(&mut r);
                if head.is_empty() {
                    return;
                }
                answer(&head, &mut w);
            }
        });
    }
}

/// `down`: answers each request with the traceparent it got in a header.
fn serve_down(listener: TcpListener) {
    serve_heads(listener, |head, w| {
        let tp = header(head, "traceparent").unwrap_or_default();
        w.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Got: {tp}\r\n\r\n").as_bytes()).unwrap();
    });
}

/// `front`: for each request, calls `down` on the serving thread (a new
/// connection each time), then answers with both traceparents.
fn serve_front(listener: TcpListener, down: SocketAddr) {
    serve_heads(listener, move |head, w| {
        let tp = header(head, "traceparent").unwrap_or_default();
        let count = head.iter().filter(|l| l.to_ascii_lowercase().starts_with("traceparent:")).count();
        let mut d = TcpStream::connect(down).unwrap();
        d.write_all(b"GET /down HTTP/1.1\r\nHost: down\r\nUser-Agent: t\r\n\r\n").unwrap();
        let got = header(&read_head(&mut BufReader::new(d)), "x-got").unwrap_or_default();
        let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Front: {tp}\r\nX-Down: {got}\r\nX-Count: {count}\r\n\r\n");
        w.write_all(resp.as_bytes()).unwrap();
    });
}

fn setup() -> Setup {
    front_and_down("tclab-proptest", serve_front, serve_down)
}

fn get(s: &Setup, extra: &str) -> Received {
    let stream = s.ns.run(|| TcpStream::connect(s.front).unwrap());
    let mut w = stream.try_clone().unwrap();
    w.write_all(format!("GET /front HTTP/1.1\r\nHost: front\r\n{extra}Accept: */*\r\n\r\n").as_bytes()).unwrap();
    let mut r = BufReader::new(stream);
    let head = read_head(&mut r);
    let non_empty = |v: Option<String>| v.filter(|s| !s.is_empty());
    Received {
        front: non_empty(header(&head, "x-front")),
        down: non_empty(header(&head, "x-down")),
        front_count: header(&head, "x-count").and_then(|c| c.parse().ok()).unwrap_or(0),
    }
}

fn parts(tp: &str) -> (String, String) {
    assert!(w3c::parse_traceparent(tp.as_bytes()).is_ok(), "{tp:?} is a valid traceparent");
    let p: Vec<&str> = tp.split('-').collect();
    (p[1].to_owned(), p[2].to_owned())
}

fn start(mode: Mode, cg: &OwnCgroup, s: &Setup) -> Started {
    start_propagation(mode, cg, &s.ns)
}

fn events_of(p: &mut Propagation, kind: PropKind, remote_port: Option<u16>, local_port: Option<u16>) -> Vec<PropEvent> {
    p.drain()
        .into_iter()
        .filter(|e| e.kind == kind)
        .filter(|e| remote_port.is_none_or(|port| e.remote.port() == port))
        .filter(|e| local_port.is_none_or(|port| e.local.port() == port))
        .collect()
}

#[test]
fn headers_are_injected_and_linked_through_a_serving_thread() {
    if !require::root("headers_are_injected_and_linked_through_a_serving_thread") {
        return;
    }
    let _g = serial();
    let cg = OwnCgroup::enter("proptest");
    let s = setup();
    let mut st = start(Mode::Headers, &cg, &s);
    let p = &mut st.p;
    for _ in 0..3 {
        let mut cap = s.ns.run(|| tclab_net::packet::Capture::all(1).expect("capture on lo"));
        let got = get(&s, "");
        // the insertion does not split the request into two segments
        let frames = cap.drain(std::time::Duration::from_millis(100)).expect("drain");
        let heads: Vec<String> = frames
            .iter()
            .map(|f| String::from_utf8_lossy(&f.data).into_owned())
            .filter(|t| t.contains("GET /down") || t.contains("GET /front"))
            .collect();
        assert_eq!(heads.len(), 2, "two requests on lo");
        for h in &heads {
            assert!(h.contains(" HTTP/1.1\r\nTraceparent: 00-") && h.contains("\r\n\r\n"), "one segment: {h:?}");
        }
        let front = got.front.clone().expect("front received an injected traceparent");
        let down = got.down.clone().expect("down received an injected traceparent");
        assert_eq!(got.front_count, 1, "one header: {got:?}");
        let ((t1, c0), (t2, c1)) = (parts(&front), parts(&down));
        assert_eq!(t1, t2, "one trace through front: {got:?}");
        assert_ne!(c0, c1, "a new span id per hop");
        // the kernel's view: front's server span has the client's span as
        // parent, and front's client span has front's server span as parent
        std::thread::sleep(std::time::Duration::from_millis(50));
        let evs = p.drain();
        let server = evs
            .iter()
            .find(|e| e.kind == PropKind::Server && e.local.port() == s.front.port())
            .unwrap_or_else(|| panic!("a server event for front: {evs:#?}"));
        assert_eq!((server.trace_id.as_str(), server.parent_id.as_deref()), (t1.as_str(), Some(c0.as_str())));
        assert_eq!(server.origin, Origin::Header);
        let client = evs
            .iter()
            .find(|e| e.kind == PropKind::Client && e.remote.port() == s.down.port())
            .unwrap_or_else(|| panic!("a client event towards down: {evs:#?}"));
        assert!(client.injected);
        assert_eq!(client.origin, Origin::Thread);
        assert_eq!(client.span_id, c1);
        assert_eq!(client.parent_id.as_deref(), Some(server.span_id.as_str()), "{evs:#?}");
    }
    assert_eq!(p.counter("inject_failed"), 0);
    assert!(p.counter("injected") >= 6, "{:?}", p.counters());
}

#[test]
fn an_existing_header_is_left_alone_and_continued() {
    if !require::root("an_existing_header_is_left_alone_and_continued") {
        return;
    }
    let _g = serial();
    let cg = OwnCgroup::enter("proptest");
    let s = setup();
    let mut st = start(Mode::Headers, &cg, &s);
    let p = &mut st.p;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let got = get(&s, &format!("traceparent: {tp}\r\n"));
    assert_eq!(got.front.as_deref(), Some(tp), "left exactly as sent: {got:?}");
    assert_eq!(got.front_count, 1);
    let (t, c) = parts(got.down.as_deref().expect("down got one"));
    assert_eq!(t, "4bf92f3577b34da6a3ce929d0e0e4736", "the trace is continued");
    assert_ne!(c, "00f067aa0ba902b7");
    std::thread::sleep(std::time::Duration::from_millis(50));
    let sent = events_of(p, PropKind::Client, Some(s.front.port()), None);
    assert_eq!(sent.len(), 1, "{sent:#?}");
    assert_eq!((sent[0].origin, sent[0].injected), (Origin::App, false));
    assert_eq!(sent[0].span_id, "00f067aa0ba902b7", "its value is used");
}

#[test]
fn malformed_incoming_headers_never_propagate() {
    if !require::root("malformed_incoming_headers_never_propagate") {
        return;
    }
    let _g = serial();
    let cg = OwnCgroup::enter("proptest");
    let s = setup();
    let _p = start(Mode::Headers, &cg, &s);
    for bad in [
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // upper case
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // version ff
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", // 00 with more
    ] {
        let got = get(&s, &format!("traceparent: {bad}\r\n"));
        assert_eq!(got.front.as_deref(), Some(bad), "the bad header is not touched");
        let (t, _) = parts(got.down.as_deref().expect("down gets a header"));
        assert_ne!(t.to_lowercase(), "4bf92f3577b34da6a3ce929d0e0e4736", "{bad}: restarted, not continued");
        assert_ne!(t, "00000000000000000000000000000000");
    }
}

#[test]
fn disabled_ip_and_tcp_modes_insert_no_header() {
    if !require::root("disabled_ip_and_tcp_modes_insert_no_header") {
        return;
    }
    let _g = serial();
    let cg = OwnCgroup::enter("proptest");
    let s = setup();
    let got = get(&s, "");
    assert_eq!((got.front, got.down), (None, None), "nothing without propagation");
    for mode in [Mode::Tcp, Mode::Ip] {
        let mut st = start(mode, &cg, &s);
        let p = &mut st.p;
        let got = get(&s, "");
        assert_eq!((got.front.as_deref(), got.down.as_deref()), (None, None), "{mode}: no header");
        std::thread::sleep(std::time::Duration::from_millis(50));
        let sent = events_of(p, PropKind::Client, Some(s.down.port()), None);
        assert!(!sent.is_empty() && sent.iter().all(|e| !e.injected), "{mode}: {sent:#?}");
        drop(st);
    }
}

/// `front`, answering first and calling `down` afterwards on the same
/// thread (work after the response, outside any request).
fn serve_front_then_call(listener: TcpListener, down: SocketAddr) {
    serve_heads(listener, move |head, w| {
        let tp = header(head, "traceparent").unwrap_or_default();
        w.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Front: {tp}\r\n\r\n").as_bytes()).unwrap();
        let mut d = TcpStream::connect(down).unwrap();
        d.write_all(b"GET /after HTTP/1.1\r\nHost: down\r\n\r\n").unwrap();
        read_head(&mut BufReader::new(d));
    });
}

#[test]
fn a_response_ends_the_threads_request() {
    if !require::root("a_response_ends_the_threads_request") {
        return;
    }
    let _g = serial();
    let cg = OwnCgroup::enter("proptest");
    let s = front_and_down("tclab-propafter", serve_front_then_call, serve_down);
    let mut st = start(Mode::Headers, &cg, &s);
    let p = &mut st.p;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for _ in 0..2 {
        let got = get(&s, &format!("traceparent: {tp}\r\n"));
        assert_eq!(got.front.as_deref(), Some(tp));
        std::thread::sleep(std::time::Duration::from_millis(50));
        let after = events_of(p, PropKind::Client, Some(s.down.port()), None);
        assert_eq!(after.len(), 1, "{after:#?}");
        // the thread answered its request before calling: a new trace
        assert_eq!((after[0].origin, after[0].parent_id.as_deref()), (Origin::New, None), "{after:#?}");
        assert_ne!(after[0].trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    }
}

/// `down`, reading each request in reads of at most 7 bytes (each read
/// runs the read tracepoint), answering with the traceparent it got.
fn serve_down_in_pieces(listener: TcpListener) {
    for conn in listener.incoming() {
        let Ok(stream) = conn else { return };
        std::thread::spawn(move || {
            let mut w = stream.try_clone().unwrap();
            let mut r = BufReader::with_capacity(7, stream);
            loop {
                let head = read_head(&mut r);
                if head.is_empty() {
                    return;
                }
                let tp = header(&head, "traceparent").unwrap_or_default();
                w.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Got: {tp}\r\n\r\n").as_bytes()).unwrap();
            }
        });
    }
}

/// The first read after a request arrives makes the thread its server;
/// the later reads of the same request do not start another one (the
/// connection's context is marked taken, not deleted), and the next
/// request on the kept-alive connection starts its own.
#[test]
fn a_request_read_in_pieces_starts_one_server_request() {
    if !require::root("a_request_read_in_pieces_starts_one_server_request") {
        return;
    }
    let _g = serial();
    let cg = OwnCgroup::enter("proptest");
    let s = front_and_down("tclab-proppieces", serve_front, serve_down_in_pieces);
    let mut st = start(Mode::Headers, &cg, &s);
    let stream = s.ns.run(|| TcpStream::connect(s.down).unwrap());
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let mut spans = std::collections::HashSet::new();
    for i in 0..3 {
        w.write_all(format!("GET /piece/{i} HTTP/1.1\r\nHost: down\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n").as_bytes()).unwrap();
        let head = read_head(&mut r);
        let got = header(&head, "x-got").unwrap_or_default();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let servers = events_of(&mut st.p, PropKind::Server, None, Some(s.down.port()));
        assert_eq!(servers.len(), 1, "request {i}, read in pieces of 7 bytes: one server request: {servers:#?}");
        // down's server span continues the header our client request got
        let (trace, parent) = parts(&got);
        assert_eq!((servers[0].trace_id.as_str(), servers[0].parent_id.as_deref()), (trace.as_str(), Some(parent.as_str())));
        assert!(spans.insert(servers[0].span_id), "request {i}: a span of its own: {servers:#?}");
    }
}

/// Run counts of the propagation programs, by name (run-time statistics
/// must be on).
fn run_counts(p: &Propagation) -> std::collections::HashMap<String, u64> {
    let ids: std::collections::HashMap<u32, String> = p.program_ids().into_iter().map(|(n, id)| (id, n)).collect();
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|info| Some((ids.get(&info.id())?.clone(), info.run_count())))
        .collect()
}

/// The benchmark's floor (`Programs::HooksOnly`): the same hooks run (the
/// connections the cgroup opens are in the sockhash, so the message program
/// runs on every send on them), and nothing is propagated.
#[test]
fn the_hooks_only_build_runs_on_every_hook_and_propagates_nothing() {
    if !require::root("the_hooks_only_build_runs_on_every_hook_and_propagates_nothing") {
        return;
    }
    let _g = serial();
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
    let cg = OwnCgroup::enter("proptest");
    let s = setup();
    let mut st = start_programs(Mode::Headers, Programs::HooksOnly, &cg, &s.ns);
    let before = run_counts(&st.p);
    for _ in 0..3 {
        let got = get(&s, "");
        assert_eq!((got.front.as_deref(), got.down.as_deref()), (None, None), "no header: {got:?}");
    }
    std::thread::sleep(std::time::Duration::from_millis(50));
    let after = run_counts(&st.p);
    // per request: front's request to down leaves on a connection it
    // opened (the message program), the two responses on accepted ones
    // (sock_ops, for each segment); front and down read a request each
    for (name, at_least) in [("tclab_prop_msg", 3), ("tclab_prop_sockops", 6), ("tclab_prop_read", 6), ("tclab_prop_ingress", 6)] {
        let ran = after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0);
        assert!(ran >= at_least, "{name} ran {ran} times for 3 requests: {before:?} -> {after:?}");
    }
    assert_eq!(st.p.drain(), Vec::<PropEvent>::new(), "no events");
    assert!(st.p.counters().expect("counters").iter().all(|(_, v)| *v == 0), "{:?}", st.p.counters());
}

/// Our TCP option on the wire (docs/propagation.md): RFC 6994 experimental
/// kind 253, 28 bytes, ExID 0x7c1a (sampled) or 0x7c1b.
fn carries_our_tcp_option(tcp: &etherparse::TcpSlice<'_>) -> bool {
    let mut o = tcp.options();
    while let [kind, rest @ ..] = o {
        match *kind {
            0 => return false,
            1 => o = rest,
            _ => {
                let Some(&len) = rest.first() else { return false };
                let len = usize::from(len);
                if len < 2 || len > o.len() {
                    return false;
                }
                if *kind == 253 && len == 28 && matches!(o[2..4], [0x7c, 0x1a | 0x1b]) {
                    return true;
                }
                o = &o[len..];
            }
        }
    }
    false
}

/// `tcp` mode: the option rides on the request segments of the connections
/// a service opened (the client's to front, front's to down), and on
/// nothing the servers send (responses, ACKs): the connections they
/// accepted only read it.
#[test]
fn the_tcp_option_rides_on_the_requests_only() {
    if !require::root("the_tcp_option_rides_on_the_requests_only") {
        return;
    }
    let _g = serial();
    let cg = OwnCgroup::enter("proptest");
    let s = setup();
    let st = start(Mode::Tcp, &cg, &s);
    let mut cap = s.ns.run(|| tclab_net::packet::Capture::all(1).expect("capture on lo"));
    for _ in 0..3 {
        get(&s, "");
    }
    let frames = cap.drain(std::time::Duration::from_millis(100)).expect("drain");
    let servers = [s.front.port(), s.down.port()];
    let mut requests_with_option = 0;
    for (i, f) in frames.iter().enumerate() {
        let Ok(pkt) = etherparse::SlicedPacket::from_ethernet(&f.data) else { continue };
        let Some(etherparse::TransportSlice::Tcp(tcp)) = pkt.transport else { continue };
        let request = tcp.payload().starts_with(b"GET ");
        if servers.contains(&tcp.source_port()) {
            assert!(!carries_our_tcp_option(&tcp), "frame {i}: a server's segment carries the option: {tcp:?}");
        } else if request && servers.contains(&tcp.destination_port()) {
            assert!(carries_our_tcp_option(&tcp), "frame {i}: a request without the option: {tcp:?}");
            requests_with_option += 1;
        }
    }
    assert_eq!(requests_with_option, 6, "two requests per call (to front, to down), 3 calls");
    assert!(st.p.counter("tcp_written") >= 6 && st.p.counter("tcp_read") >= 6, "{:?}", st.p.counters());
}
