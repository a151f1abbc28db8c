//! Connection tracking through BPF_PROG_TEST_RUN: Cilium's states, flags,
//! lifetimes, closing, reopening, a full table and the events.

mod common;

use std::time::Duration;

use common::*;
use tclab_datapath::loader::{CtLifetimes, CtMapKind, DatapathConfig, monotonic_now_ns};
use tclab_datapath::types::{Counter, CtEntry, CtStatus, CtTuple, EventKind, ct_flags};

const LIFETIMES: CtLifetimes = CtLifetimes {
    syn: Duration::from_secs(11),
    tcp: Duration::from_secs(2222),
    close: Duration::from_secs(3),
    non_tcp: Duration::from_secs(44),
};

fn harness(test: &str) -> Option<Harness> {
    tclab_net::require::root(&format!("classifier_ct::{test}")).then(|| {
        Harness::new(DatapathConfig { ct_max_entries: 1024, lifetimes: LIFETIMES, ..Default::default() })
    })
}

/// The entry's remaining lifetime is `want` (minus the test's own run time).
#[track_caller]
fn assert_lifetime(e: &CtEntry, want: Duration) {
    let left = e.expires_ns.saturating_sub(monotonic_now_ns());
    let want = want.as_nanos() as u64;
    assert!(left <= want && left + 2_000_000_000 > want, "expires in {left} ns, want about {want} ns");
}

struct Conn {
    client: std::net::SocketAddr,
    server: std::net::SocketAddr,
}

impl Conn {
    fn new() -> Conn {
        Conn { client: sa("10.0.0.1:41000"), server: sa("10.0.0.2:80") }
    }
    fn key(&self) -> CtTuple {
        CtTuple::new(self.client, self.server, 6)
    }
    /// Client → server, seen on the client's egress.
    fn out(&self, h: &mut Harness, flags: u8, payload: &[u8]) {
        h.egress(&tcp(self.client, self.server, flags, payload));
    }
    /// Server → client, seen on the client's ingress.
    fn back(&self, h: &mut Harness, flags: u8, payload: &[u8]) {
        h.ingress(&tcp(self.server, self.client, flags, payload));
    }
    fn entry(&self, h: &Harness) -> CtEntry {
        h.ct(&self.key()).expect("CT entry of the connection")
    }
}

#[test]
fn handshake_then_data_is_established() {
    let Some(mut h) = harness("handshake_then_data_is_established") else { return };
    let c = Conn::new();
    c.out(&mut h, TCP_SYN, b"");
    let e = c.entry(&h);
    assert_eq!(e.last_status, CtStatus::New as u8);
    assert_eq!(e.flags & ct_flags::SEEN_NON_SYN, 0, "only a SYN so far");
    assert_lifetime(&e, LIFETIMES.syn);
    assert_eq!(e.created_dir, 1, "created on egress");

    c.back(&mut h, TCP_SYN | TCP_ACK, b"");
    let e = c.entry(&h);
    assert_eq!(e.last_status, CtStatus::Reply as u8);
    assert_lifetime(&e, LIFETIMES.syn);

    c.out(&mut h, TCP_ACK, b"");
    c.out(&mut h, TCP_ACK | TCP_PSH, b"hello");
    let e = c.entry(&h);
    assert_eq!(e.last_status, CtStatus::Established as u8);
    assert!(e.has(ct_flags::SEEN_NON_SYN));
    assert_lifetime(&e, LIFETIMES.tcp);
    assert_eq!((e.tx_packets, e.rx_packets), (3, 1));
    assert_eq!(e.tx_flags_seen, TCP_SYN | TCP_ACK | TCP_PSH);
    assert_eq!(e.rx_flags_seen, TCP_SYN | TCP_ACK);
    let syn_len = tcp(c.client, c.server, TCP_SYN, b"").len() as u64;
    assert_eq!(e.tx_bytes, 3 * syn_len + 5);
    assert_eq!(e.flags & (ct_flags::RX_CLOSING | ct_flags::TX_CLOSING), 0);

    let cnt = h.counters();
    assert_eq!((cnt.get(Counter::CtNew), cnt.get(Counter::CtReply), cnt.get(Counter::CtEstablished)), (1, 1, 2));
    let events = h.events();
    assert_eq!(events.len(), 1, "one EV_CONN_OPEN, nothing else: {events:?}");
    let open = events[0].conn();
    assert_eq!(events[0].kind(), EventKind::ConnOpen);
    assert_eq!(open.hdr.tuple, c.key());
    assert_eq!(open.hdr.ct_status, CtStatus::New as u8);
    assert_eq!(open.entry.tx_packets, 1);
    assert_eq!(open.entry.tx_flags_seen, TCP_SYN);
}

#[test]
fn fin_each_way_sets_closing_bits_then_closes() {
    let Some(mut h) = harness("fin_each_way_sets_closing_bits_then_closes") else { return };
    let c = Conn::new();
    c.out(&mut h, TCP_SYN, b"");
    c.back(&mut h, TCP_SYN | TCP_ACK, b"");
    c.out(&mut h, TCP_ACK, b"");
    c.out(&mut h, TCP_FIN | TCP_ACK, b"");
    let e = c.entry(&h);
    assert_eq!(e.flags & (ct_flags::TX_CLOSING | ct_flags::RX_CLOSING), ct_flags::TX_CLOSING);
    assert_lifetime(&e, LIFETIMES.tcp);

    c.back(&mut h, TCP_FIN | TCP_ACK, b"");
    let e = c.entry(&h);
    assert!(e.has(ct_flags::TX_CLOSING | ct_flags::RX_CLOSING));
    assert_lifetime(&e, LIFETIMES.close);
    let closed_at = e.expires_ns;

    // a closed entry is not refreshed by stragglers
    c.out(&mut h, TCP_ACK, b"");
    assert_eq!(c.entry(&h).expires_ns, closed_at);

    let kinds: Vec<EventKind> = h.events().iter().map(|e| e.kind()).collect();
    assert_eq!(kinds, [EventKind::ConnOpen, EventKind::ConnClose]);
}

#[test]
fn fin_from_the_reply_side_sets_rx_closing() {
    let Some(mut h) = harness("fin_from_the_reply_side_sets_rx_closing") else { return };
    let c = Conn::new();
    c.out(&mut h, TCP_SYN, b"");
    c.back(&mut h, TCP_FIN | TCP_ACK, b"");
    let e = c.entry(&h);
    assert_eq!(e.flags & (ct_flags::TX_CLOSING | ct_flags::RX_CLOSING), ct_flags::RX_CLOSING);
}

#[test]
fn rst_closes_both_sides() {
    let Some(mut h) = harness("rst_closes_both_sides") else { return };
    let c = Conn::new();
    c.out(&mut h, TCP_SYN, b"");
    c.back(&mut h, TCP_RST | TCP_ACK, b"");
    let e = c.entry(&h);
    assert!(e.has(ct_flags::TX_CLOSING | ct_flags::RX_CLOSING));
    assert_eq!(e.rx_flags_seen, TCP_RST | TCP_ACK);
    assert_lifetime(&e, LIFETIMES.close);
    let events = h.events();
    assert_eq!(events.iter().map(|e| e.kind()).collect::<Vec<_>>(), [EventKind::ConnOpen, EventKind::ConnClose]);
    let close = events[1].conn();
    assert_eq!(close.hdr.ct_status, CtStatus::Reply as u8);
    assert_eq!(close.hdr.tcp_flags, TCP_RST | TCP_ACK);
    assert!(close.entry.has(ct_flags::TX_CLOSING | ct_flags::RX_CLOSING));
}

#[test]
fn syn_on_a_closing_entry_reopens_it() {
    let Some(mut h) = harness("syn_on_a_closing_entry_reopens_it") else { return };
    let c = Conn::new();
    c.out(&mut h, TCP_SYN, b"");
    c.back(&mut h, TCP_SYN | TCP_ACK, b"");
    c.out(&mut h, TCP_RST, b"");
    assert!(c.entry(&h).has(ct_flags::TX_CLOSING | ct_flags::RX_CLOSING));
    c.out(&mut h, TCP_SYN, b"");
    let e = c.entry(&h);
    assert_eq!(e.flags & (ct_flags::TX_CLOSING | ct_flags::RX_CLOSING | ct_flags::SEEN_NON_SYN), 0);
    assert_eq!((e.tx_flags_seen, e.rx_flags_seen), (TCP_SYN, 0), "flags seen restart with the new connection");
    assert_lifetime(&e, LIFETIMES.syn);
    assert_eq!(e.tx_packets, 3, "counters keep counting");
    // and it can close again
    c.back(&mut h, TCP_RST, b"");
    assert!(c.entry(&h).has(ct_flags::TX_CLOSING | ct_flags::RX_CLOSING));
    let closes = h.events().iter().filter(|e| e.kind() == EventKind::ConnClose).count();
    assert_eq!(closes, 2);
}

#[test]
fn mid_stream_packet_creates_an_entry_marked_seen_non_syn() {
    let Some(mut h) = harness("mid_stream_packet_creates_an_entry_marked_seen_non_syn") else { return };
    let c = Conn::new();
    c.out(&mut h, TCP_ACK, b"data");
    let e = c.entry(&h);
    assert!(e.has(ct_flags::SEEN_NON_SYN));
    assert_lifetime(&e, LIFETIMES.tcp);
}

#[test]
fn udp_uses_the_non_tcp_lifetime() {
    let Some(mut h) = harness("udp_uses_the_non_tcp_lifetime") else { return };
    let (a, b) = (sa("10.0.0.1:5353"), sa("10.0.0.53:53"));
    h.egress(&udp(a, b, b"q"));
    let e = h.ct(&CtTuple::new(a, b, 17)).expect("UDP entry");
    assert_lifetime(&e, LIFETIMES.non_tcp);
    assert_eq!(e.tx_flags_seen, 0);
    assert_eq!(e.flags, 0);
}

#[test]
fn full_hash_table_counts_failed_inserts_and_passes_packets() {
    if !tclab_net::require::root("classifier_ct::full_hash_table_counts_failed_inserts_and_passes_packets") {
        return;
    }
    let mut h = Harness::new(DatapathConfig { ct_max_entries: 4, ct_map: CtMapKind::Hash, ..Default::default() });
    for port in 0..6u16 {
        // Harness::run asserts TC_ACT_UNSPEC and an unchanged packet
        h.egress(&tcp(sa(&format!("10.0.0.1:{}", 42000 + port)), sa("10.0.0.2:80"), TCP_SYN, b""));
    }
    assert_eq!(h.ct_len(), 4);
    let c = h.counters();
    assert_eq!((c.get(Counter::CtNew), c.get(Counter::CtInsertFailed)), (4, 2));
    let failed: Vec<_> = h.events().into_iter().filter(|e| e.kind() == EventKind::CtInsertFailed).collect();
    assert_eq!(failed.len(), 2);
    let f = failed[0].conn();
    assert_eq!(f.hdr.tuple.src_port(), 42004);
    assert_eq!(f.entry, CtEntry::default(), "no entry in an insert-failed event");
}

#[test]
fn full_lru_table_evicts_instead() {
    if !tclab_net::require::root("classifier_ct::full_lru_table_evicts_instead") {
        return;
    }
    let mut h = Harness::new(DatapathConfig { ct_max_entries: 4, ct_map: CtMapKind::Lru, ..Default::default() });
    for port in 0..64u16 {
        h.egress(&tcp(sa(&format!("10.0.0.1:{}", 42000 + port)), sa("10.0.0.2:80"), TCP_SYN, b""));
    }
    assert!(h.ct_len() <= 64, "LRU never grows past its size by much (per-CPU free lists)");
    assert!(h.ct_len() < 64, "old entries were evicted: {} left", h.ct_len());
    assert_eq!(h.counter(Counter::CtInsertFailed), 0);
    assert_eq!(h.dp.ct_max_entries(), 4);
}

#[test]
fn gc_deletes_expired_entries_only() {
    if !tclab_net::require::root("classifier_ct::gc_deletes_expired_entries_only") {
        return;
    }
    let lifetimes = CtLifetimes { non_tcp: Duration::from_millis(1), ..CtLifetimes::default() };
    let mut h = Harness::new(DatapathConfig { ct_max_entries: 64, lifetimes, ..Default::default() });
    h.egress(&udp(sa("10.0.0.1:1000"), sa("10.0.0.2:53"), b"q"));
    h.egress(&udp(sa("10.0.0.1:1001"), sa("10.0.0.2:53"), b"q"));
    h.egress(&tcp(sa("10.0.0.1:1002"), sa("10.0.0.2:80"), TCP_SYN, b""));
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(h.dp.ct_gc(monotonic_now_ns()).expect("gc"), 2);
    let left = h.dp.ct_entries().expect("CT");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0.nexthdr, 6);
}
