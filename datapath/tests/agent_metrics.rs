//! The Prometheus endpoint scraped over loopback: the page format, and the
//! agent's real numbers after traffic went through it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use tclab_datapath::agent::{Agent, AgentConfig};
use tclab_datapath::attach::Backend;
use tclab_datapath::metrics::{Metrics, MetricsServer};
use tclab_datapath::span::SpanKind;
use tclab_net::NetNs;

fn scrape(addr: SocketAddr) -> (String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to metrics");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read metrics");
    let (head, body) = resp.split_once("\r\n\r\n").expect("HTTP head");
    (head.to_owned(), body.to_owned())
}

/// The value of an unlabelled (or exactly labelled) sample.
fn sample(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {name} in\n{body}"))
        .parse()
        .unwrap()
}

#[test]
fn metrics_page_over_loopback() {
    let m = Arc::new(Metrics::default());
    m.set_ct(5, 20);
    m.set_kernel_counters(100, 2, 1);
    m.inc_span(SpanKind::Client);
    m.inc_span(SpanKind::Client);
    let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), m.clone()).expect("start");
    let (head, body) = scrape(server.addr());
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert_eq!(sample(&body, "tclab_ct_entries"), 5.0);
    assert_eq!(sample(&body, "tclab_ct_pressure_ratio"), 0.25);
    assert_eq!(sample(&body, "tclab_ct_insert_failures_total"), 2.0);
    assert_eq!(sample(&body, "tclab_events_lost_total"), 1.0);
    assert_eq!(sample(&body, "tclab_packets_total"), 100.0);
    assert_eq!(sample(&body, "tclab_spans_total{kind=\"client\"}"), 2.0);
    assert_eq!(sample(&body, "tclab_spans_total{kind=\"server\"}"), 0.0);
    // Every sample has HELP and TYPE.
    for name in ["tclab_ct_entries", "tclab_spans_total", "tclab_packets_total"] {
        assert!(body.contains(&format!("# TYPE {name} ")), "{body}");
    }
    // Values are read at scrape time.
    m.set_ct(6, 20);
    assert_eq!(sample(&scrape(server.addr()).1, "tclab_ct_entries"), 6.0);
    let addr = server.addr();
    drop(server);
    assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err(), "listener closed on drop");
}

#[test]
fn metrics_reflect_the_running_agent() {
    if !tclab_net::require::root("metrics_reflect_the_running_agent") {
        return;
    }
    let a = NetNs::new("met-a").unwrap();
    let b = NetNs::new("met-b").unwrap();
    tclab_net::create_veth_pair(&a, "ma", &b, "mb", None).unwrap();
    tclab_net::add_address(&a, "ma", "10.78.0.1".parse().unwrap(), 24).unwrap();
    tclab_net::add_address(&b, "mb", "10.78.0.2".parse().unwrap(), 24).unwrap();
    a.run(|| {
        let agent = Agent::start(AgentConfig { ifaces: vec!["ma".into()], backend: Backend::Netlink, ..Default::default() })
            .expect("agent");
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), agent.metrics()).expect("metrics");
        let listener = TcpListener::bind("10.78.0.1:9000").unwrap();
        b.run(|| {
            let mut c = TcpStream::connect("10.78.0.1:9000").expect("connect");
            let (mut s, _) = listener.accept().unwrap();
            c.write_all(b"hello").unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).unwrap();
        });
        agent.refresh_metrics();
        let (_, body) = scrape(server.addr());
        assert!(sample(&body, "tclab_packets_total") >= 3.0, "{body}");
        assert!(sample(&body, "tclab_ct_entries") >= 1.0, "{body}");
        let ratio = sample(&body, "tclab_ct_pressure_ratio");
        let expect = sample(&body, "tclab_ct_entries") / f64::from(agent.ct_max_entries());
        assert!((ratio - expect).abs() < 1e-12, "{ratio} vs {expect}");
        assert_eq!(sample(&body, "tclab_events_lost_total"), 0.0);
    });
}
