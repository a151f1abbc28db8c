//! BPF_PROG_TEST_RUN of the classifiers on every parse path: the verdict is
//! always TC_ACT_UNSPEC, the packet is unchanged, and the counters and CT
//! entries show what was parsed.

mod common;

use common::*;
use tclab_datapath::types::{Counter, CtStatus, CtTuple};

const T: &str = "classifier_parse";

fn harness(test: &str) -> Option<Harness> {
    tclab_net::require::root(&format!("{T}::{test}")).then(Harness::default_config)
}

#[test]
fn non_ip_frame_is_counted_and_passed() {
    let Some(mut h) = harness("non_ip_frame_is_counted_and_passed") else { return };
    let mut arp = vec![0xffu8; 6];
    arp.extend_from_slice(&MAC_A);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    h.ingress(&arp);
    let c = h.counters();
    assert_eq!(c.get(Counter::Packets), 1);
    assert_eq!(c.get(Counter::NonIp), 1);
    assert_eq!(c.get(Counter::ParseErrors), 0);
    assert_eq!(h.ct_len(), 0);
}

#[test]
fn truncated_frames_are_parse_errors() {
    let Some(mut h) = harness("truncated_frames_are_parse_errors") else { return };
    let full = tcp(sa("10.0.0.1:40000"), sa("10.0.0.2:80"), TCP_SYN, b"");
    // cut inside TCP; cut inside IPv4 behind a VLAN tag (test_run itself
    // refuses an untagged IPv4 frame whose IP header is incomplete)
    h.egress(&full[..40]);
    let tagged = tcp_vlan(sa("10.0.0.1:40000"), sa("10.0.0.2:80"), TCP_SYN, b"", Some(7));
    h.egress(&tagged[..28]);
    let mut lying = full.clone();
    lying[16..18].copy_from_slice(&200u16.to_be_bytes());
    h.egress(&lying);
    let mut bad_ihl = full.clone();
    bad_ihl[14] = 0x43;
    h.egress(&bad_ihl);
    let v6 = tcp(sa("[fd00::1]:40000"), sa("[fd00::2]:80"), TCP_SYN, b"");
    h.egress(&v6[..60]);
    let c = h.counters();
    assert_eq!(c.get(Counter::Packets), 5);
    assert_eq!(c.get(Counter::ParseErrors), 5);
    assert_eq!(h.ct_len(), 0, "nothing tracked from unparseable frames");
}

#[test]
fn ipv4_tcp_and_vlan_tagged_tcp_create_entries() {
    let Some(mut h) = harness("ipv4_tcp_and_vlan_tagged_tcp_create_entries") else { return };
    let (a, b) = (sa("10.0.0.1:40000"), sa("10.0.0.2:80"));
    let plain = tcp(a, b, TCP_SYN, b"");
    h.egress(&plain);
    let (c, d) = (sa("10.1.0.1:40001"), sa("10.1.0.2:443"));
    let tagged = tcp_vlan(c, d, TCP_SYN, b"", Some(42));
    assert_eq!(&tagged[12..14], &[0x81, 0x00], "frame carries an 802.1Q tag");
    h.egress(&tagged);
    for (src, dst, len) in [(a, b, plain.len()), (c, d, tagged.len())] {
        let e = h.ct(&CtTuple::new(src, dst, 6)).unwrap_or_else(|| panic!("CT entry for {src} -> {dst}"));
        assert_eq!((e.tx_packets, e.tx_bytes, e.tx_flags_seen), (1, len as u64, TCP_SYN));
        assert_eq!(e.last_status, CtStatus::New as u8);
    }
    assert_eq!(h.counter(Counter::CtNew), 2);
}

#[test]
fn ipv4_options_are_skipped() {
    let Some(mut h) = harness("ipv4_options_are_skipped") else { return };
    let (a, b) = (sa("10.0.0.1:40000"), sa("10.0.0.2:8080"));
    // NOP NOP NOP EOL, then a 8-byte record-route-like option: 3 words
    let frame = with_ipv4_options(&tcp(a, b, TCP_SYN, b""), &[1, 1, 1, 0, 7, 7, 4, 0, 0, 0, 0, 0]);
    assert_eq!(frame[14], 0x48);
    h.ingress(&frame);
    let e = h.ct(&CtTuple::new(a, b, 6)).expect("ports read after the options");
    assert_eq!(e.tx_flags_seen, TCP_SYN);
    assert_eq!(h.counter(Counter::ParseErrors), 0);
}

#[test]
fn ipv6_extension_headers_are_skipped() {
    let Some(mut h) = harness("ipv6_extension_headers_are_skipped") else { return };
    let (a, b) = (sa("[fd00::1]:40000"), sa("[fd00::2]:80"));
    let base = tcp(a, b, TCP_SYN, b"");
    let frame = with_ipv6_ext(
        &base,
        &[(0, vec![1, 4, 0, 0, 0, 0]), (60, [vec![1, 12], vec![0; 14]].concat()), (43, vec![0, 0, 0, 0, 0, 0]), (44, vec![])],
    );
    h.ingress(&frame);
    let e = h.ct(&CtTuple::new(a, b, 6)).expect("ports read after 4 extension headers");
    assert_eq!(e.tx_bytes, frame.len() as u64);

    // a non-first fragment has no L4 header: passed, not tracked, not an error
    let (c, d) = (sa("[fd00::3]:40000"), sa("[fd00::4]:80"));
    let mut frag = with_ipv6_ext(&tcp(c, d, TCP_SYN, b""), &[(44, vec![])]);
    frag[54 + 2..54 + 4].copy_from_slice(&(8u16 << 3).to_be_bytes());
    h.ingress(&frag);
    assert!(h.ct(&CtTuple::new(c, d, 6)).is_none());

    // more extension headers than the parser walks: a parse error
    let five = with_ipv6_ext(&tcp(c, d, TCP_SYN, b""), &[(0, vec![]), (60, vec![]), (60, vec![]), (60, vec![]), (60, vec![])]);
    h.ingress(&five);
    assert_eq!(h.counter(Counter::ParseErrors), 1);
    assert_eq!(h.counter(Counter::Packets), 3);
}

#[test]
fn udp_and_replies_share_one_entry() {
    let Some(mut h) = harness("udp_and_replies_share_one_entry") else { return };
    let (a, b) = (sa("10.0.0.1:5353"), sa("10.0.0.53:53"));
    let q = udp(a, b, b"query");
    let r = udp(b, a, b"answer!");
    h.egress(&q);
    h.ingress(&r);
    h.ingress(&r);
    let e = h.ct(&CtTuple::new(a, b, 17)).expect("UDP entry");
    assert_eq!((e.tx_packets, e.rx_packets), (1, 2));
    assert_eq!((e.tx_bytes, e.rx_bytes), (q.len() as u64, 2 * r.len() as u64));
    assert_eq!(e.last_status, CtStatus::Reply as u8);
    assert_eq!(h.ct_len(), 1);
    assert_eq!(h.counter(Counter::CtReply), 2);
}

#[test]
fn icmp_echo_request_and_reply_share_one_entry() {
    let Some(mut h) = harness("icmp_echo_request_and_reply_share_one_entry") else { return };
    for (src, dst, proto) in [("10.0.0.1", "10.0.0.2", 1u8), ("fd00::1", "fd00::2", 58u8)] {
        let (src, dst) = (src.parse().unwrap(), dst.parse().unwrap());
        h.egress(&icmp_echo(src, dst, false, 77));
        h.ingress(&icmp_echo(dst, src, true, 77));
        let key = CtTuple { dport: 77u16.to_be(), sport: 0, ..CtTuple::new((src, 0).into(), (dst, 0).into(), proto) };
        let e = h.ct(&key).unwrap_or_else(|| panic!("ICMP entry keyed by echo id, proto {proto}"));
        assert_eq!((e.tx_packets, e.rx_packets), (1, 1), "proto {proto}");
    }
    assert_eq!(h.ct_len(), 2);
}
