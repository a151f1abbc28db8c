//! The three-service chain with the hop into the backend over TLS (rustls):
//! the agents can neither read nor change that hop's payload, so only the
//! TCP option (`tcp`), the IP option (`ip`) or both (`all`) carry the trace
//! across it. Asserted: one trace with the right parent links, the hop as
//! two connection-level spans; a kept-alive TLS connection used for two
//! served requests gives each its own client span; `headers` alone cannot
//! cross it (the trace breaks there).

use std::time::Duration;

use tclab_datapath::attach::Backend;
use tclab_datapath::propagation::{Correlation, Mode};
use tclab_datapath::span::SpanKind;
use tclab_lab::testserver::chain::ChainOptions;
use tclab_lab::testserver::service::Client;
use tclab_lab::testserver::traced::{self, TracedChain};
use tclab_net::require;

const WAIT: Duration = Duration::from_secs(10);

fn options() -> ChainOptions {
    let mut o = ChainOptions::new(env!("CARGO_BIN_EXE_tclab"));
    o.tls = vec!["backend".to_owned()];
    o
}

fn counter(t: &TracedChain, service: &str, name: &str) -> u64 {
    t.counters()
        .into_iter()
        .find(|(s, _)| *s == service)
        .and_then(|(_, c)| c.into_iter().find(|(n, _)| *n == name))
        .map_or(0, |(_, v)| v)
}

fn one_trace_across_tls(mode: Mode) {
    let mut t = TracedChain::start(&options(), mode, Backend::Auto).expect("chain and agents start");
    for (svc, c) in t.correlation() {
        assert_eq!(c, Correlation::On, "{svc} correlates on the host kernel");
    }
    assert_eq!(t.expected[1], ("frontend", SpanKind::Client, "-"));
    assert_eq!(t.expected[2], ("backend", SpanKind::Server, "-"));
    for i in 0..3 {
        let (status, doc) = t.chain.get(&[]).expect("GET /traceme");
        assert_eq!(status, 200, "{doc}");
        assert_eq!(doc["downstream"]["downstream"]["service"], "worker", "the TLS hop answered: {doc}");
        let spans = t.collect(t.expected.len(), WAIT);
        traced::check_trace(&spans, None, &t.expected).unwrap_or_else(|e| panic!("{mode} request {i}: {e:#}"));
        for k in [1, 2] {
            let s = &spans[k].span;
            assert_eq!((s.method.as_str(), s.status, s.server.port()), ("TLS", 0, 8081), "{mode}: {s:?}");
        }
        assert!(spans[1..].iter().all(|r| r.span.propagated), "{mode}: continued past the TLS hop");
        // the backend received nothing in its payload but the worker got
        // the header in modes with it, naming the backend's client span
        assert!(doc["downstream"]["traceparent"].is_null(), "{doc}");
        let worker = doc["downstream"]["downstream"]["traceparent"].as_str();
        let expect = format!("00-{}-{}-01", spans[3].span.trace_id, spans[3].span.span_id);
        match mode {
            Mode::All => assert_eq!(worker, Some(expect.as_str())),
            _ => assert_eq!(worker, None),
        }
    }
    assert_eq!(counter(&t, "frontend", "tls_clients"), 3, "{:?}", t.counters());
    let tcp = counter(&t, "backend", "tcp_read");
    let ip = counter(&t, "backend", "ip_stripped");
    match mode {
        Mode::Tcp => assert!(tcp >= 3 && ip == 0, "{:?}", t.counters()),
        Mode::Ip => assert!(tcp == 0 && ip >= 3, "{:?}", t.counters()),
        // the TCP option carries the TLS hop; the IP option only where it
        // could not be written (none here)
        _ => assert!(tcp >= 3 && ip == 0, "{:?}", t.counters()),
    }
}

#[test]
fn the_tcp_option_carries_one_trace_across_a_tls_hop() {
    if require::root("the_tcp_option_carries_one_trace_across_a_tls_hop") {
        one_trace_across_tls(Mode::Tcp);
    }
}

#[test]
fn the_ip_option_carries_one_trace_across_a_tls_hop() {
    if require::root("the_ip_option_carries_one_trace_across_a_tls_hop") {
        one_trace_across_tls(Mode::Ip);
    }
}

#[test]
fn all_modes_carry_one_trace_across_a_tls_hop() {
    if require::root("all_modes_carry_one_trace_across_a_tls_hop") {
        one_trace_across_tls(Mode::All);
    }
}

#[test]
fn a_kept_alive_tls_connection_gives_each_served_request_its_client_span() {
    if !require::root("a_kept_alive_tls_connection_gives_each_served_request_its_client_span") {
        return;
    }
    let mut t = TracedChain::start(&options(), Mode::Tcp, Backend::Auto).expect("chain and agents start");
    // one client connection to the frontend: one serving thread, which keeps
    // its TLS connection to the backend between the requests
    let target = t.chain.entry();
    let mut client = Client::new(true);
    let mut traces = Vec::new();
    for i in 0..2 {
        let (status, doc) = t.chain.client_ns.try_run(|| client.get(&target, &[])).expect("namespace").expect("GET");
        assert_eq!(status, 200, "{doc}");
        let spans = t.collect(t.expected.len(), WAIT);
        traced::check_trace(&spans, None, &t.expected).unwrap_or_else(|e| panic!("request {i}: {e:#}"));
        traces.push((spans[0].span.trace_id, spans[1].span.client));
    }
    assert_ne!(traces[0].0, traces[1].0, "two requests, two traces");
    assert_eq!(traces[0].1, traces[1].1, "over one TLS connection");
    assert_eq!(counter(&t, "frontend", "tls_clients"), 2, "{:?}", t.counters());
}

#[test]
fn headers_alone_cannot_cross_a_tls_hop() {
    if !require::root("headers_alone_cannot_cross_a_tls_hop") {
        return;
    }
    let mut t = TracedChain::start(&options(), Mode::Headers, Backend::Auto).expect("chain and agents start");
    let (status, doc) = t.chain.get(&[]).expect("GET /traceme");
    assert_eq!(status, 200, "{doc}");
    let spans = t.collect(t.expected.len(), Duration::from_secs(3));
    let show = || spans.iter().map(|r| format!("{} {}", r.service, r.span.snapshot_line())).collect::<Vec<_>>().join("\n");
    // the frontend's TLS client span is there, the backend never learns of it
    assert!(traced::check_trace(&spans, None, &t.expected).is_err(), "{}", show());
    let front = spans.iter().find(|r| r.service == "frontend" && r.span.kind == SpanKind::Server).expect("frontend server span");
    let users = spans.iter().find(|r| r.service == "backend" && r.span.path == "/users").expect("backend /users span");
    assert_ne!(users.span.trace_id, front.span.trace_id, "{}", show());
    assert!(!spans.iter().any(|r| r.service == "backend" && r.span.kind == SpanKind::Server), "{}", show());
}
