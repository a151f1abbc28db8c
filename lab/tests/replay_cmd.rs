//! `tclab replay`: the built binary on real fixtures, as a user runs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tclab_net::require;

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("lab/ has a parent")
}

fn fixture(name: &str) -> PathBuf {
    workspace().join("fixtures").join(name)
}

fn tclab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tclab"))
        .args(args)
        .current_dir(workspace())
        .output()
        .expect("failed to start tclab")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Lines of stdout that are not `#` headers, per section.
fn section(stdout: &str, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in stdout.lines() {
        if let Some(h) = line.strip_prefix("# ") {
            inside = h.starts_with(name);
            continue;
        }
        if inside {
            out.push(line.to_string());
        }
    }
    out
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

#[test]
fn server_side_replay_prints_the_beyla_span_and_the_cilium_ct_row() {
    if !require::root("server_side_replay_prints_the_beyla_span_and_the_cilium_ct_row") {
        return;
    }
    let pcap = fixture("traceparent-valid.pcap");
    let out = tclab(&["replay", pcap.to_str().expect("utf-8"), "--local", "10.0.0.2"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "tclab replay failed: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    assert!(
        stdout.lines().next().is_some_and(|l| l.ends_with("traceparent-valid.pcap: 10 packets, 4 through egress (from 10.0.0.2), 6 to ingress")),
        "{stdout}"
    );

    let spans = section(&stdout, "spans");
    assert_eq!(spans.len(), 1, "{stdout}");
    // `2025-01-17 21:42:18.11794218 (1.2ms[1.1ms]) HTTP 200 GET /traced [client]->[server] size:0B svc=[tclab tc] traceparent=[00-trace-span[parent]-01]`
    let span = &spans[0];
    let (head, rest) = span.split_once(" (").expect("timestamp then durations");
    assert!(head.len() >= 19 && head.as_bytes()[4] == b'-' && head.as_bytes()[13] == b':', "timestamp: {span}");
    let rest = rest.split_once(") ").expect("durations").1;
    let prefix = "HTTP 200 GET /traced [10.0.0.1:40005]->[10.0.0.2:80] size:0B svc=[tclab tc] traceparent=[00-";
    let tp = rest.strip_prefix(prefix).unwrap_or_else(|| panic!("server span line: {span}"));
    let (trace, tp) = tp.split_once('-').expect("trace id");
    assert_eq!(trace, TRACE, "the incoming trace is continued: {span}");
    let (span_id, tp) = tp.split_once('[').expect("span id");
    assert!(span_id.len() == 16 && span_id.chars().all(|c| c.is_ascii_hexdigit()) && span_id != "0".repeat(16), "{span}");
    assert_eq!(tp, format!("{PARENT}]-01]"), "{span}");

    let ct = section(&stdout, "ct");
    assert_eq!(ct.len(), 1, "{stdout}");
    let row = &ct[0];
    let (head, counters) = row.split_once(" (remaining: ").expect("cilium row");
    let expires = head.strip_prefix("TCP IN 10.0.0.1:40005 -> 10.0.0.2:80 expires=").unwrap_or_else(|| panic!("{row}"));
    assert!(expires.parse::<u64>().is_ok(), "{row}");
    let (remaining, counters) = counters.split_once(" sec(s)) ").expect("remaining");
    let remaining: i64 = remaining.parse().expect("remaining seconds");
    // Closed both ways: the close lifetime (10 s) applies.
    assert!((0..=10).contains(&remaining), "{row}");
    assert_eq!(
        counters,
        "RxPackets=4 RxBytes=290 RxFlagsSeen=0x1b LastRxReport=0 TxPackets=6 TxBytes=481 TxFlagsSeen=0x1b LastTxReport=0 Flags=0x0007 [ RxClosing TxClosing SeenNonSyn ]"
    );
}

#[test]
fn client_side_json_parses_and_matches_the_capture() {
    if !require::root("client_side_json_parses_and_matches_the_capture") {
        return;
    }
    let pcap = fixture("traceparent-valid.pcap");
    let out = tclab(&["replay", pcap.to_str().expect("utf-8"), "--local", "10.0.0.1", "--output", "json"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{:?}\n{stdout}\n{}", out.status, text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"));

    let packets = doc["packets"].as_array().expect("packets");
    assert_eq!(packets.len(), 10);
    for p in packets {
        let frame = p["frame"].as_str().expect("frame");
        let want = if frame.starts_with("TCP 10.0.0.1:") { "egress" } else { "ingress" };
        assert_eq!(p["hook"], want, "{p}");
        assert_eq!(p["seen_by"], serde_json::json!(["agent"]), "{p}");
    }

    let spans = doc["spans"].as_array().expect("spans");
    assert_eq!(spans.len(), 1, "{doc}");
    let s = &spans[0];
    assert_eq!(s["kind"], "client");
    assert_eq!(s["method"], "GET");
    assert_eq!(s["path"], "/traced");
    assert_eq!(s["status"], 200);
    assert_eq!(s["client"], "10.0.0.1:40005");
    assert_eq!(s["server"], "10.0.0.2:80");
    assert_eq!(s["trace_id"], TRACE);
    assert_eq!(s["parent_id"], PARENT);
    assert_eq!(s["propagated"], true);

    let ct = doc["ct"].as_array().expect("ct");
    assert_eq!(ct.len(), 1, "{doc}");
    assert_eq!(ct[0]["state"], "CLOSING");
    assert_eq!(ct[0]["tuple"]["sport"], 40005);
    assert_eq!(ct[0]["tuple"]["dport"], 80);
    assert_eq!(doc["events_lost"], 0);
    assert_eq!(doc["counters"]["agent"], 10);
    assert_eq!(doc["local"], serde_json::json!(["10.0.0.1"]));
}

#[test]
fn a_small_chain_shows_who_saw_what() {
    if !require::root("a_small_chain_shows_who_saw_what") {
        return;
    }
    let pcap = fixture("http-keepalive.pcap");
    let out = tclab(&[
        "replay",
        pcap.to_str().expect("utf-8"),
        "--local",
        "10.0.0.2",
        "--chain",
        "agent,counter@tcx:head,drop@netlink:10",
        "--output",
        "json",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{:?}\n{stdout}\n{}", out.status, text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let n = doc["packets"].as_array().expect("packets").len() as u64;
    assert!(n > 0);
    for entry in ["counter", "agent", "drop"] {
        assert_eq!(doc["counters"][entry], n, "{entry} sees every packet: {}", doc["counters"]);
    }
    // The kernel's order: TCX (counter attached at the head after the agent took it), then netlink.
    let ingress: Vec<&str> = doc["chain"]
        .as_array()
        .expect("chain")
        .iter()
        .filter(|c| c["hook"] == "ingress")
        .map(|c| c["entry"].as_str().expect("entry"))
        .collect();
    assert_eq!(ingress, ["counter", "agent", "drop"]);
    assert_eq!(doc["spans"].as_array().expect("spans").len(), 3, "three keep-alive requests");
}

#[test]
fn bad_arguments_are_clear_errors() {
    // None of these needs root: they fail before anything is created.
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.pcap");
    let corrupt = dir.path().join("corrupt.pcap");
    std::fs::write(&corrupt, b"\xd4\xc3\xb2\xa1 this is no capture").expect("write");
    let good = fixture("http-get.pcap");
    let cases: [(Vec<&str>, &str); 5] = [
        (vec!["replay", missing.to_str().expect("utf-8"), "--local", "10.0.0.1"], "missing.pcap"),
        (vec!["replay", corrupt.to_str().expect("utf-8"), "--local", "10.0.0.1"], "corrupt.pcap"),
        (vec!["replay", good.to_str().expect("utf-8"), "--local", "192.0.2.77"], "--local 192.0.2.77 appears in no packet of"),
        (vec!["replay", good.to_str().expect("utf-8"), "--local", "10.0.0.1", "--chain", "agent,bogus"], "unknown program `bogus`"),
        (vec!["replay", good.to_str().expect("utf-8"), "--local", "not-an-ip"], "not-an-ip"),
    ];
    for (args, needle) in cases {
        let out = tclab(&args);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(needle), "{args:?}: stderr lacks {needle:?}:\n{stderr}");
        assert!(out.stdout.is_empty(), "{args:?} printed to stdout: {}", text(&out.stdout));
    }
}

#[test]
fn help_documents_the_command() {
    let out = tclab(&["replay", "--help"]);
    let help = text(&out.stdout);
    assert!(out.status.success(), "{help}");
    for needle in ["--local", "--chain", "--output", "egress", "netlink:"] {
        assert!(help.contains(needle), "help lacks {needle}:\n{help}");
    }
    let top = text(&tclab(&["--help"]).stdout);
    assert!(top.contains("replay"), "{top}");
}
