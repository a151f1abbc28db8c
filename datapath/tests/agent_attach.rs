//! The agent attached for real: two namespaces joined by a veth pair, the
//! agent (library) on the server's end with TCX and then netlink, a real
//! HTTP/1.1 exchange with a traceparent, the span, its OTLP export (to an
//! in-test collector) and the CT entry asserted, and nothing of ours left on
//! the device afterwards.

mod otlp_collector;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use aya::programs::{SchedClassifier, TcAttachType};
use tclab_datapath::agent::{Agent, AgentConfig};
use tclab_datapath::attach::{Api, Backend};
use tclab_datapath::ct::{CtRecord, CtState};
use tclab_datapath::events::Traceparent;
use tclab_datapath::loader::{DatapathConfig, EventTransport};
use tclab_datapath::otlp::OtlpConfig;
use tclab_datapath::span::{Span, SpanKind};
use tclab_net::NetNs;
use tclab_net::tc::{self, Direction};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const SERVER_IP: &str = "10.77.0.1";
const CLIENT_IP: &str = "10.77.0.2";
const PORT: u16 = 8080;

struct Topology {
    server: NetNs,
    client: NetNs,
}

fn topology(tag: &str) -> Topology {
    let server = NetNs::new(&format!("{tag}-srv")).expect("server namespace");
    let client = NetNs::new(&format!("{tag}-cli")).expect("client namespace");
    tclab_net::create_veth_pair(&server, "vsrv", &client, "vcli", None).expect("veth pair");
    tclab_net::add_address(&server, "vsrv", SERVER_IP.parse().unwrap(), 24).expect("server address");
    tclab_net::add_address(&client, "vcli", CLIENT_IP.parse().unwrap(), 24).expect("client address");
    Topology { server, client }
}

fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(i, 0, "no device {name}");
    i
}

fn read_head(s: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).expect("read") == 0 {
            break;
        }
        buf.push(byte[0]);
    }
    buf
}

/// Serve one request on `listener`: answer 200 with a 2-byte body, then wait
/// for the client to close.
fn serve_one(listener: TcpListener) {
    listener.set_nonblocking(true).expect("non-blocking listener");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    s.set_nonblocking(false).expect("blocking stream");
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("read timeout");
    let head = read_head(&mut s);
    assert!(head.starts_with(b"GET /traceme HTTP/1.1\r\n"), "{}", String::from_utf8_lossy(&head));
    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").expect("write response");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
}

/// Client: send the request, read the response, then wait for `close` before
/// closing (so the test sees the CT entry established first).
fn client_one(close: mpsc::Receiver<()>, answered: mpsc::Sender<SocketAddr>) {
    let server: SocketAddr = (SERVER_IP.parse::<IpAddr>().unwrap(), PORT).into();
    let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
    let req = format!("GET /traceme HTTP/1.1\r\nHost: {SERVER_IP}:{PORT}\r\ntraceparent: 00-{TRACE}-{PARENT}-01\r\n\r\n");
    s.write_all(req.as_bytes()).expect("send request");
    let head = read_head(&mut s);
    assert!(head.starts_with(b"HTTP/1.1 200 OK"), "{}", String::from_utf8_lossy(&head));
    let mut body = [0u8; 2];
    s.read_exact(&mut body).expect("body");
    answered.send(s.local_addr().expect("local addr")).expect("notify");
    let _ = close.recv();
}

fn wait_span(agent: &mut Agent) -> Span {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Some(s) = agent.poll_spans(Duration::from_millis(100)).into_iter().next() {
            return s;
        }
    }
    panic!("no span within 5 s; warnings: {:?}", agent.warnings());
}

fn find_ct(agent: &Agent, client: SocketAddr) -> CtRecord {
    let table = agent.ct_table().expect("ct table");
    table
        .into_iter()
        .find(|r| r.tuple.src() == client && r.tuple.dst_port() == PORT)
        .unwrap_or_else(|| panic!("no CT entry for {client} -> {SERVER_IP}:{PORT}"))
}

fn check_span(span: &Span, client: SocketAddr, agent: &Agent) {
    assert_eq!(span.kind, SpanKind::Server);
    assert_eq!((span.method.as_str(), span.path.as_str(), span.status), ("GET", "/traceme", 200));
    assert_eq!(span.client, client);
    assert_eq!(span.server, (SERVER_IP.parse::<IpAddr>().unwrap(), PORT).into());
    assert_eq!(span.traceparent_in, Traceparent::Valid(format!("00-{TRACE}-{PARENT}-01")));
    assert_eq!(span.trace_id, TRACE, "trace id kept");
    assert_eq!(span.parent_id.as_deref(), Some(PARENT), "parent = incoming span id");
    assert_ne!(span.span_id, PARENT);
    assert_eq!(span.response_size, 2);
    let line = span.beyla_line(agent.clock(), agent.service_name());
    let expect = format!(
        ") HTTP 200 GET /traceme [{client}]->[{SERVER_IP}:{PORT}] size:0B svc=[tclab tc] traceparent=[00-{TRACE}-{}[{PARENT}]-01]",
        span.span_id
    );
    assert!(line.contains(&expect), "{line}\nexpected to contain {expect}");
}

/// The span as the collector received it: the same ids, the W3C parent,
/// kind, name, times and HTTP attributes.
fn check_otlp(collector: &otlp_collector::Collector, span: &Span, client: SocketAddr, agent: &Agent) {
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind as Kind;
    use otlp_collector::{int_attr, str_attr};
    let got = collector.next(Duration::from_secs(10)).expect("an OTLP export within 10 s");
    assert_eq!(got.path, "/v1/traces");
    assert_eq!(got.header("content-type"), Some("application/x-protobuf"));
    assert_eq!(got.service_name().as_deref(), Some("tclab"));
    let spans = got.spans();
    assert_eq!(spans.len(), 1, "{:?}", got.request);
    let o = spans[0];
    assert_eq!(hex::encode(&o.trace_id), TRACE, "trace id from the traceparent");
    assert_eq!(hex::encode(&o.parent_span_id), PARENT, "parent = the incoming span id");
    assert_eq!(hex::encode(&o.span_id), span.span_id, "the agent's own span id");
    assert_eq!(o.flags & 0xff, 0x01, "sampled, as the traceparent said");
    assert_eq!(o.kind, Kind::Server as i32);
    assert_eq!(o.name, "GET /traceme");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    assert!(o.start_time_unix_nano <= o.end_time_unix_nano, "{o:?}");
    assert!(now - o.start_time_unix_nano < 60_000_000_000, "start is Unix time of the last minute: {}", o.start_time_unix_nano);
    assert_eq!(o.end_time_unix_nano - o.start_time_unix_nano, span.end_ns - span.request_start_ns);
    assert_eq!(str_attr(o, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(str_attr(o, "url.path").as_deref(), Some("/traceme"));
    assert_eq!(int_attr(o, "http.response.status_code"), Some(200));
    assert_eq!(str_attr(o, "server.address").as_deref(), Some(SERVER_IP));
    assert_eq!(int_attr(o, "server.port"), Some(i64::from(PORT)));
    assert_eq!(str_attr(o, "client.address"), Some(client.ip().to_string()));
    assert_eq!(int_attr(o, "client.port"), Some(i64::from(client.port())));
    assert_eq!(int_attr(o, "http.response.body.size"), Some(2));
    // counted once the collector's answer is in
    let deadline = Instant::now() + Duration::from_secs(5);
    while agent.metrics().otlp().exported < 1 {
        assert!(Instant::now() < deadline, "export never counted: {:?}", agent.metrics().otlp());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(agent.metrics().otlp().queue_full + agent.metrics().otlp().export_failed, 0);
}

fn check_ct_established(r: &CtRecord) {
    assert_eq!(r.state(), CtState::Established, "{}", r.normalised_line());
    // Originator (client) sent SYN, ACK, request at least; the server SYN-ACK and response.
    assert!(r.entry.tx_packets >= 3 && r.entry.rx_packets >= 2, "{}", r.normalised_line());
    assert!(r.entry.tx_bytes > r.entry.tx_packets * 40, "{}", r.normalised_line());
    assert_eq!(r.entry.tx_flags_seen & 0x1a, 0x1a, "client SYN|PSH|ACK: {}", r.normalised_line());
    assert_eq!(r.entry.rx_flags_seen & 0x12, 0x12, "server SYN|ACK: {}", r.normalised_line());
    assert_eq!(r.entry.created_dir, 0, "created by the ingress SYN");
}

/// What remains of ours (and anything) on vsrv: netlink filters, TCX programs, clsact.
fn leftovers() -> (usize, usize, bool) {
    let idx = ifindex("vsrv");
    let filters = tc::list_filters(idx, Direction::Ingress).unwrap().len() + tc::list_filters(idx, Direction::Egress).unwrap().len();
    let tcx = [TcAttachType::Ingress, TcAttachType::Egress]
        .into_iter()
        .map(|t| SchedClassifier::query_tcx("vsrv", t).map(|(_, p)| p.len()).unwrap_or(0))
        .sum();
    (filters, tcx, tc::has_clsact(idx).unwrap())
}

/// Nothing of the test outside its namespaces: no bind-mounted namespace and
/// no device of ours in the host namespace.
fn assert_host_clean() {
    let netns: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(!netns.iter().any(|n| n.starts_with("att-")), "bind-mounted namespaces left: {netns:?}");
    let host = NetNs::current().expect("host namespace");
    let links = tclab_net::list_links(&host).expect("host links");
    assert!(!links.iter().any(|l| l.name == "vsrv" || l.name == "vcli"), "veth left in the host namespace");
}

fn exchange(backend: Backend, expect_api: Api, events: EventTransport) {
    let topo = topology(&format!("att-{expect_api}-{events:?}"));
    let client_ns = &topo.client;
    topo.server.run(|| {
        let collector = otlp_collector::Collector::start();
        let otlp = OtlpConfig {
            batch_delay: Duration::from_millis(50),
            ..OtlpConfig::new(format!("{}/v1/traces", collector.base_url()))
        };
        let datapath = DatapathConfig { events, ..DatapathConfig::default() };
        let cfg = AgentConfig { ifaces: vec!["vsrv".into()], backend, datapath, otlp: Some(otlp), ..AgentConfig::default() };
        let mut agent = Agent::start(cfg).expect("agent start");
        assert_eq!(agent.api(), expect_api);
        assert_eq!(agent.event_transport(), events);
        assert_eq!(agent.attachments().len(), 2);
        let listener = TcpListener::bind((SERVER_IP, PORT)).expect("bind");
        std::thread::scope(|s| {
            // Channels live in the scope body so a failed assertion drops them
            // while unwinding and the helper threads end instead of waiting.
            let (close_tx, close_rx) = mpsc::channel();
            let (ans_tx, ans_rx) = mpsc::channel();
            s.spawn(|| serve_one(listener));
            s.spawn(|| client_ns.run(|| client_one(close_rx, ans_tx)));
            let client = ans_rx.recv_timeout(Duration::from_secs(10)).expect("client got its answer");
            let span = wait_span(&mut agent);
            check_span(&span, client, &agent);
            check_otlp(&collector, &span, client, &agent);
            check_ct_established(&find_ct(&agent, client));
            drop(close_tx);
            // FIN both ways: the entry is closing.
            let deadline = Instant::now() + Duration::from_secs(5);
            while find_ct(&agent, client).state() != CtState::Closing {
                assert!(Instant::now() < deadline, "CT entry never closed: {}", find_ct(&agent, client).normalised_line());
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        assert_eq!(agent.events_lost().unwrap(), 0);
        assert_eq!(agent.decode_errors(), 0);
        let (f, t, _) = leftovers();
        assert_eq!(f + t, 2, "two attachments visible while running");
        drop(agent);
        assert_eq!(leftovers(), (0, 0, false), "(netlink filters, tcx programs, clsact) after drop");
    });
    drop(topo);
    assert_host_clean();
}

#[test]
fn agent_spans_and_ct_with_tcx() {
    if !tclab_net::require::root("agent_spans_and_ct_with_tcx") {
        return;
    }
    if !tclab_datapath::probe::KernelFeatures::probe().tcx {
        tclab_net::require::skip("agent_spans_and_ct_with_tcx", "a kernel with TCX (6.6+)", "run on a newer kernel");
        return;
    }
    exchange(Backend::Tcx, Api::Tcx, EventTransport::RingBuf);
}

#[test]
fn agent_spans_and_ct_with_netlink() {
    if !tclab_net::require::root("agent_spans_and_ct_with_netlink") {
        return;
    }
    exchange(Backend::Netlink, Api::Netlink, EventTransport::RingBuf);
}

/// The per-CPU perf-buffer path (kernels without ring buffers), forced here.
#[test]
fn agent_spans_and_ct_with_perf_buffers() {
    if !tclab_net::require::root("agent_spans_and_ct_with_perf_buffers") {
        return;
    }
    exchange(Backend::Netlink, Api::Netlink, EventTransport::PerfBuf);
}
