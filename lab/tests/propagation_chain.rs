//! The three-service chain with one agent per service (TC on its devices,
//! socket programs on its cgroup), in every propagation mode: the agents'
//! span lines must form one trace with the right parent links, carried by
//! the mode's own carrier (checked on the wire: what each service received,
//! and the kernel counters), and the W3C rules must decide between
//! continuing and restarting an incoming trace.

use std::time::Duration;

use tclab_datapath::attach::Backend;
use tclab_datapath::propagation::{Correlation, Mode};
use tclab_lab::testserver::chain::ChainOptions;
use tclab_lab::testserver::traced::{self, Reported, TracedChain};
use tclab_net::require;

const WAIT: Duration = Duration::from_secs(10);

fn options(ipv6: bool) -> ChainOptions {
    let mut o = ChainOptions::new(env!("CARGO_BIN_EXE_tclab"));
    o.ipv6 = ipv6;
    o
}

/// The traceparent each service received, frontend first.
fn received(doc: &serde_json::Value) -> Vec<Option<String>> {
    let mut out = Vec::new();
    let mut d = doc;
    while d.is_object() {
        out.push(d["traceparent"].as_str().map(str::to_owned));
        d = &d["downstream"];
    }
    out
}

fn counter(t: &TracedChain, service: &str, name: &str) -> u64 {
    t.counters()
        .into_iter()
        .find(|(s, _)| *s == service)
        .and_then(|(_, c)| c.into_iter().find(|(n, _)| *n == name))
        .map_or(0, |(_, v)| v)
}

fn request(t: &mut TracedChain, extra: &[(String, String)]) -> (Vec<Option<String>>, Vec<Reported>) {
    let (status, doc) = t.chain.get(extra).expect("GET /traceme");
    assert_eq!(status, 200, "{doc}");
    let spans = t.collect(traced::EXPECTED.len(), WAIT);
    (received(&doc), spans)
}

fn run_mode(mode: Mode, ipv6: bool) {
    let mut t = TracedChain::start(&options(ipv6), mode, Backend::Auto).expect("chain and agents start");
    for (svc, c) in t.correlation() {
        assert_eq!(c, Correlation::On, "{svc} correlates on the host kernel");
    }
    for i in 0..3 {
        let (got, spans) = request(&mut t, &[]);
        traced::check_one_trace(&spans, None).unwrap_or_else(|e| panic!("{mode} ipv6={ipv6} request {i}: {e:#}"));
        assert!(!spans[0].span.propagated, "the first span starts the trace");
        assert!(spans[1..].iter().all(|r| r.span.propagated), "the others continue it");
        let tp = |k: usize| format!("00-{}-{}-01", spans[k].span.trace_id, spans[k].span.span_id);
        match mode {
            // the client spans' ids are what the next service received
            Mode::Headers | Mode::All => assert_eq!(got, vec![None, Some(tp(1)), Some(tp(3))], "{mode}"),
            _ => assert_eq!(got, vec![None, None, None], "{mode}: nothing in the payload"),
        }
    }
    let (front, back) = (|n| counter(&t, "frontend", n), |n| counter(&t, "backend", n));
    let injected = front("injected") + back("injected");
    let tcp = (front("tcp_written"), back("tcp_read"));
    let ip = (front("ip_added"), back("ip_stripped"));
    match mode {
        Mode::Headers => assert!(injected == 6 && tcp == (0, 0) && ip == (0, 0), "{:?}", t.counters()),
        Mode::Tcp => assert!(injected == 0 && tcp.0 >= 3 && tcp.1 >= 3 && ip == (0, 0), "{:?}", t.counters()),
        Mode::Ip => assert!(injected == 0 && tcp == (0, 0) && ip.0 >= 3 && ip.1 >= 3, "{:?}", t.counters()),
        // each request is carried once, by the first carrier that can: here
        // the header (the options would only repeat it)
        Mode::All => assert!(injected == 6 && tcp == (0, 0) && ip == (0, 0), "{:?}", t.counters()),
        Mode::Disabled => unreachable!(),
    }
    assert_eq!(front("inject_failed") + front("events_lost") + back("events_lost"), 0, "{:?}", t.counters());
}

#[test]
fn headers_mode_makes_one_trace() {
    if require::root("headers_mode_makes_one_trace") {
        run_mode(Mode::Headers, false);
    }
}

#[test]
fn tcp_option_mode_makes_one_trace() {
    if require::root("tcp_option_mode_makes_one_trace") {
        run_mode(Mode::Tcp, false);
        run_mode(Mode::Tcp, true);
    }
}

#[test]
fn ip_option_mode_makes_one_trace() {
    if require::root("ip_option_mode_makes_one_trace") {
        run_mode(Mode::Ip, false);
        run_mode(Mode::Ip, true);
    }
}

#[test]
fn all_modes_together_make_one_trace() {
    if require::root("all_modes_together_make_one_trace") {
        run_mode(Mode::All, false);
    }
}

#[test]
fn an_incoming_trace_is_continued_and_a_malformed_one_restarted() {
    if !require::root("an_incoming_trace_is_continued_and_a_malformed_one_restarted") {
        return;
    }
    let mut opts = options(false);
    opts.downstream_keepalive = false;
    let mut t = TracedChain::start(&opts, Mode::Headers, Backend::Auto).expect("chain and agents start");
    let valid = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let (got, spans) = request(&mut t, &[("traceparent".into(), valid.into())]);
    traced::check_one_trace(&spans, Some("b7ad6b7169203331")).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(spans[0].span.trace_id, "0af7651916cd43dd8448eb211c80319c");
    assert!(spans.iter().all(|r| r.span.propagated));
    assert_eq!(got[0].as_deref(), Some(valid));
    for bad in [
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",
    ] {
        let (got, spans) = request(&mut t, &[("traceparent".into(), bad.into())]);
        traced::check_one_trace(&spans, None).unwrap_or_else(|e| panic!("{bad}: {e:#}"));
        assert_ne!(spans[0].span.trace_id, "0af7651916cd43dd8448eb211c80319c", "{bad}: restarted");
        assert!(!spans[0].span.propagated);
        assert_eq!(got[0].as_deref(), Some(bad), "the client's header is as sent");
        assert!(got[1].as_deref().is_some_and(|tp| tp.contains(spans[0].span.trace_id.as_str())), "{bad}: {got:?}");
    }
}

#[test]
fn disabled_mode_leaves_three_traces() {
    if !require::root("disabled_mode_leaves_three_traces") {
        return;
    }
    let mut t = TracedChain::start(&options(false), Mode::Disabled, Backend::Auto).expect("chain and agents start");
    let (got, spans) = request(&mut t, &[]);
    assert_eq!(got, vec![None, None, None]);
    assert_eq!(spans.len(), traced::EXPECTED.len(), "the agents still report spans");
    assert!(traced::check_one_trace(&spans, None).is_err(), "no propagation, no single trace");
}

#[test]
fn a_services_scenario_runs_through_the_lab_runner() {
    if !require::root("a_services_scenario_runs_through_the_lab_runner") {
        return;
    }
    // the path `tclab run` and the kernel matrix take (services started from
    // the tclab binary found next to this test binary)
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let scenario = tclab_lab::scenario::load_scenario(&dir.join("propagation-chain-headers.toml")).expect("valid");
    let opts = tclab_lab::runner::RunOptions {
        kernel: tclab_lab::runner::KernelContext::probe_running("host"),
        snapshots: tclab_lab::snapshot::SnapshotStore::new(dir.join("snapshots")),
        writes: tclab_lab::snapshot::PendingWrites::from_env(),
        results_dir: None,
    };
    let outcome = tclab_lab::runner::run_one(&scenario, &opts);
    assert_eq!(outcome.status, tclab_lab::runner::Status::Passed, "{:?}\n{}", outcome.status, outcome.diff.unwrap_or_default());
}
