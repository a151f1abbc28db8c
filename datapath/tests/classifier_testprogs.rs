//! The lab's built-in chain programs under BPF_PROG_TEST_RUN, and the
//! datapath's per-packet cost against the empty classifier.

mod common;

use aya::TestRun;
use aya::programs::{SchedClassifier, TestRunOptions};
use common::*;
use tclab_datapath::loader::{Hook, TestProgram, Verdict, empty_classifier};

fn run(prog: &mut SchedClassifier, frame: &[u8], repeat: u32) -> (u32, std::time::Duration) {
    let res = prog
        .test_run(TestRunOptions { data_in: Some(frame), repeat, ..Default::default() })
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e:?}"));
    (res.return_value, res.duration)
}

#[test]
fn verdict_program_returns_its_verdict_and_counts() {
    if !tclab_net::require::root("classifier_testprogs::verdict_program_returns_its_verdict_and_counts") {
        return;
    }
    let frame = udp(sa("10.0.0.1:1"), sa("10.0.0.2:2"), b"x");
    for (verdict, code) in [(Verdict::Pass, 0u32), (Verdict::Unspec, u32::MAX), (Verdict::Drop, 2)] {
        let mut p = TestProgram::load(verdict).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.verdict(), verdict);
        for _ in 0..3 {
            assert_eq!(run(p.program_mut(), &frame, 1).0, code, "{verdict:?}");
        }
        assert_eq!(p.packets().unwrap(), 3);
        assert_eq!(p.bytes().unwrap(), 3 * frame.len() as u64);
    }
}

#[test]
fn empty_classifier_returns_unspec() {
    if !tclab_net::require::root("classifier_testprogs::empty_classifier_returns_unspec") {
        return;
    }
    let mut e = empty_classifier().unwrap_or_else(|err| panic!("{err}"));
    let frame = udp(sa("10.0.0.1:1"), sa("10.0.0.2:2"), b"x");
    assert_eq!(run(e.program_mut(), &frame, 1).0, u32::MAX);
}

/// Per-packet cost relative to the empty classifier (BPF_PROG_TEST_RUN's
/// own overhead included in both). The brief's targets are 1.5x (non-IP),
/// 3.5x (UDP/TCP without payload) and 8x (HTTP request with traceparent);
/// this test only fails far beyond them (a shared 2-core CI machine is
/// noisy) and prints the measured ratios.
#[test]
fn per_packet_cost_against_the_empty_classifier() {
    if !tclab_net::require::root("classifier_testprogs::per_packet_cost_against_the_empty_classifier") {
        return;
    }
    const REPEAT: u32 = 200_000;
    let mut empty = empty_classifier().unwrap_or_else(|err| panic!("{err}"));
    let mut h = Harness::default_config();
    let (c, s) = (sa("10.0.0.1:40000"), sa("10.0.0.2:80"));
    let mut arp = vec![0xffu8; 6];
    arp.extend_from_slice(&MAC_A);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    let http = request("GET", "/api/v1/items?id=42", &[&format!("traceparent: {TP}"), "Accept: */*"]);
    let cases: [(&str, Vec<u8>, f64); 4] = [
        ("non-IP", arp, 1.5),
        ("UDP", udp(c, s, b""), 3.5),
        ("TCP ACK", tcp(c, s, TCP_ACK, b""), 3.5),
        ("HTTP+traceparent", tcp(c, s, TCP_ACK | TCP_PSH, &http), 8.0),
    ];
    for (name, frame, target) in cases {
        // warm the CT entry so that the steady state (established) is measured
        h.egress(&frame);
        let best = |p: &mut SchedClassifier| (0..5).map(|_| run(p, &frame, REPEAT).1).min().unwrap();
        let base = best(empty.program_mut());
        let dp = best(h.dp.program_mut(Hook::Egress));
        let ratio = dp.as_nanos() as f64 / base.as_nanos().max(1) as f64;
        eprintln!("{name:>18}: empty {base:?}/pkt, datapath {dp:?}/pkt, ratio {ratio:.2} (target {target})");
        assert!(ratio < target * 3.0, "{name}: {ratio:.2}x the empty classifier");
        // the ring buffer fills up with HTTP events: that is counted, not silent
        h.events();
    }
}
