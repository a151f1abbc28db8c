//! Interoperability with a real OpenTelemetry SDK (Python `opentelemetry-sdk`
//! 1.45.2, its default W3C propagator), installed by `.ci/run` into
//! `target/otel-venv` (or named by `TCLAB_OTEL_PYTHON`):
//!
//! * an SDK-instrumented server behind agent-instrumented services sees our
//!   trace id and our client span as its (remote) parent;
//! * an SDK-instrumented client calling through agent-instrumented services
//!   has its trace continued, not restarted: the first agent span's parent
//!   is the SDK's client span.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tclab_datapath::attach::Backend;
use tclab_datapath::propagation::Mode;
use tclab_lab::testserver::chain::{ChainOptions, run_in};
use tclab_lab::testserver::traced::{self, TracedChain};
use tclab_net::require;

const INSTALL: &str = "bash .ci/run, or: python3 -m venv target/otel-venv && target/otel-venv/bin/pip install opentelemetry-sdk==1.45.2";

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("lab/ has a parent")
}

/// The Python with `opentelemetry-sdk`, if there is one.
fn sdk_python() -> Option<PathBuf> {
    let p = std::env::var_os("TCLAB_OTEL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/otel-venv/bin/python3"));
    let ok = std::process::Command::new(&p)
        .args(["-c", "import opentelemetry.sdk.trace, opentelemetry.propagate"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(p)
}

fn script(name: &str) -> String {
    workspace().join("lab/tests/otel").join(name).display().to_string()
}

#[test]
fn an_sdk_server_sees_our_trace_and_our_client_span_as_parent() {
    const T: &str = "an_sdk_server_sees_our_trace_and_our_client_span_as_parent";
    if !require::root(T) {
        return;
    }
    let Some(python) = sdk_python() else {
        require::skip(T, "Python with opentelemetry-sdk", INSTALL);
        return;
    };
    let mut opts = ChainOptions::new(env!("CARGO_BIN_EXE_tclab"));
    opts.worker_command = Some(vec![python.display().to_string(), script("server.py")]);
    let mut t = TracedChain::start(&opts, Mode::Headers, Backend::Auto).expect("chain and agents start");
    for _ in 0..2 {
        let (status, doc) = t.chain.get(&[]).expect("GET /traceme");
        assert_eq!(status, 200, "{doc}");
        let spans = t.collect(traced::EXPECTED.len(), Duration::from_secs(10));
        traced::check_one_trace(&spans, None).unwrap_or_else(|e| panic!("{e:#}"));
        let ours = &spans[3].span; // the backend's client span, calling the SDK server
        let sdk = &doc["downstream"]["downstream"]["sdk"];
        assert_eq!(sdk["trace_id"], ours.trace_id.as_str(), "the SDK continues our trace: {doc}");
        assert_eq!(sdk["parent_id"], ours.span_id.as_str(), "our client span is the SDK span's parent: {doc}");
        assert_eq!(sdk["parent_remote"], true);
        assert_eq!(sdk["sampled"], true);
        assert_ne!(sdk["span_id"], ours.span_id.as_str(), "the SDK's own span is new");
    }
}

#[test]
fn an_sdk_client_trace_is_continued_through_the_agents() {
    const T: &str = "an_sdk_client_trace_is_continued_through_the_agents";
    if !require::root(T) {
        return;
    }
    let Some(python) = sdk_python() else {
        require::skip(T, "Python with opentelemetry-sdk", INSTALL);
        return;
    };
    // headers, and a mode where only the first hop carries a header (the SDK's)
    for mode in [Mode::Headers, Mode::Tcp] {
        let mut t = TracedChain::start(&ChainOptions::new(env!("CARGO_BIN_EXE_tclab")), mode, Backend::Auto)
            .expect("chain and agents start");
        let url = format!("http://{}{}", t.chain.entry().addr, t.chain.entry().path);
        let out = run_in(&t.chain.client_ns, &python, &[script("client.py"), url]).expect("SDK client runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let sdk: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
        assert_eq!(sdk["status"], 200, "{sdk}");
        let sdk_trace = sdk["trace_id"].as_str().expect("trace id");
        let sdk_span = sdk["span_id"].as_str().expect("span id");
        let sent = sdk["sent"].as_str().expect("the SDK sent a traceparent");
        assert!(sent.starts_with(&format!("00-{sdk_trace}-{sdk_span}-")), "what the SDK sent: {sent}");
        // 1.45 sets the W3C level 2 random bit too (03)
        let sent_flags = u8::from_str_radix(&sent[53..55], 16).expect("flags");
        let spans = t.collect(traced::EXPECTED.len(), Duration::from_secs(10));
        traced::check_one_trace(&spans, Some(sdk_span)).unwrap_or_else(|e| panic!("{mode}: {e:#}"));
        assert_eq!(spans[0].span.trace_id, sdk_trace, "{mode}: continued, not restarted");
        assert!(spans.iter().all(|r| r.span.propagated), "{mode}");
        for r in &spans {
            match mode {
                // the header carries every flag bit
                Mode::Headers => assert_eq!(r.span.flags, sent_flags, "{mode}: {} {}", r.service, r.span.path),
                // the TCP option carries the sampled bit only (docs/propagation.md)
                _ => assert_eq!(r.span.flags & 1, sent_flags & 1, "{mode}: {} {}", r.service, r.span.path),
            }
        }
    }
}
