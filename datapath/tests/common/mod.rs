//! Shared helpers of the classifier tests: frames crafted with etherparse,
//! BPF_PROG_TEST_RUN of the datapath, ring buffer decoding.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::net::{IpAddr, SocketAddr};

use aya::maps::{MapData, RingBuf};
use aya::TestRun;
use aya::programs::TestRunOptions;
use etherparse::PacketBuilder;
use tclab_datapath::loader::{Datapath, DatapathConfig, Hook, MAP_EVENTS};
use tclab_datapath::types::{ConnEvent, Counter, Counters, CtEntry, CtTuple, EventKind, HttpEvent, read_struct};

pub const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
pub const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
pub const TC_ACT_UNSPEC: u32 = u32::MAX; // -1 as the kernel returns it

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

pub fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("bad socket address {s}: {e}"))
}

/// A decoded ring buffer event.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant, reason = "test helper: events are few and short-lived")]
pub enum Event {
    Http(HttpEvent),
    Conn(ConnEvent),
}

impl Event {
    pub fn kind(&self) -> EventKind {
        let raw = match self {
            Event::Http(h) => h.hdr.kind,
            Event::Conn(c) => c.hdr.kind,
        };
        EventKind::from_raw(raw).unwrap_or_else(|| panic!("unknown event kind {raw}"))
    }
    pub fn http(&self) -> &HttpEvent {
        match self {
            Event::Http(h) => h,
            Event::Conn(c) => panic!("expected an HTTP event, got {c:?}"),
        }
    }
    pub fn conn(&self) -> &ConnEvent {
        match self {
            Event::Conn(c) => c,
            Event::Http(h) => panic!("expected a connection event, got {:?}", h.hdr),
        }
    }
}

pub fn decode(bytes: &[u8]) -> Event {
    let kind = u32::from_ne_bytes(bytes[8..12].try_into().unwrap());
    let kind = EventKind::from_raw(kind).unwrap_or_else(|| panic!("unknown event kind {kind}"));
    if kind.is_http() {
        assert_eq!(bytes.len(), std::mem::size_of::<HttpEvent>(), "HTTP event size");
        Event::Http(read_struct(bytes).unwrap())
    } else {
        assert_eq!(bytes.len(), std::mem::size_of::<ConnEvent>(), "connection event size");
        Event::Conn(read_struct(bytes).unwrap())
    }
}

/// A loaded datapath and its ring buffer, run through BPF_PROG_TEST_RUN.
pub struct Harness {
    pub dp: Datapath,
    events: RingBuf<MapData>,
}

impl Harness {
    pub fn new(cfg: DatapathConfig) -> Harness {
        let mut dp = Datapath::load(&cfg).unwrap_or_else(|e| panic!("load datapath {cfg:?}: {e}"));
        let map = dp.ebpf_mut().take_map(MAP_EVENTS).expect("events map");
        let events = RingBuf::try_from(map).expect("events map is a ring buffer");
        Harness { dp, events }
    }

    pub fn default_config() -> Harness {
        Harness::new(DatapathConfig { ct_max_entries: 4096, ..Default::default() })
    }

    /// Run the frame through a hook: the verdict must be TC_ACT_UNSPEC and
    /// the packet must come out unchanged.
    pub fn run(&mut self, hook: Hook, frame: &[u8]) {
        let mut out = vec![0u8; frame.len() + 256];
        let res = self
            .dp
            .program_mut(hook)
            .test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ..Default::default() })
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN on {hook:?} ({} bytes): {e:?}", frame.len()));
        assert_eq!(res.return_value, TC_ACT_UNSPEC, "verdict on {hook:?} must be TC_ACT_UNSPEC");
        assert_eq!(res.data_size_out as usize, frame.len(), "packet length changed");
        assert_eq!(&out[..frame.len()], frame, "packet bytes changed");
    }

    pub fn egress(&mut self, frame: &[u8]) {
        self.run(Hook::Egress, frame)
    }

    pub fn ingress(&mut self, frame: &[u8]) {
        self.run(Hook::Ingress, frame)
    }

    /// Every event currently in the ring buffer.
    pub fn events(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            out.push(decode(&item));
        }
        out
    }

    /// The HTTP events currently in the ring buffer (connection events dropped).
    pub fn http_events(&mut self) -> Vec<HttpEvent> {
        self.events().into_iter().filter_map(|e| if let Event::Http(h) = e { Some(h) } else { None }).collect()
    }

    pub fn counters(&self) -> Counters {
        self.dp.counters().expect("read counters")
    }

    pub fn counter(&self, c: Counter) -> u64 {
        self.counters().get(c)
    }

    pub fn ct(&self, tuple: &CtTuple) -> Option<CtEntry> {
        self.dp.ct_entries().expect("read CT").into_iter().find(|(t, _)| t == tuple).map(|(_, e)| e)
    }

    pub fn ct_len(&self) -> usize {
        self.dp.ct_entries().expect("read CT").len()
    }
}

fn ip_builder(src: IpAddr, dst: IpAddr, vlan: Option<u16>) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    let eth = PacketBuilder::ethernet2(MAC_A, MAC_B);
    let eth = match vlan {
        // single_vlan changes the builder step type, so build the two arms apart
        Some(id) => {
            let step = eth.single_vlan(etherparse::VlanId::try_new(id).expect("vlan id"));
            return match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => step.ipv4(s.octets(), d.octets(), 64),
                (IpAddr::V6(s), IpAddr::V6(d)) => step.ipv6(s.octets(), d.octets(), 64),
                _ => panic!("mixed address families"),
            };
        }
        None => eth,
    };
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed address families"),
    }
}

/// A TCP frame from `src` to `dst` with `flags` (TCP_* bits) and payload.
pub fn tcp(src: SocketAddr, dst: SocketAddr, flags: u8, payload: &[u8]) -> Vec<u8> {
    tcp_vlan(src, dst, flags, payload, None)
}

pub fn tcp_vlan(src: SocketAddr, dst: SocketAddr, flags: u8, payload: &[u8], vlan: Option<u16>) -> Vec<u8> {
    let mut b = ip_builder(src.ip(), dst.ip(), vlan).tcp(src.port(), dst.port(), 1000, 65535);
    if flags & TCP_SYN != 0 {
        b = b.syn();
    }
    if flags & TCP_ACK != 0 {
        b = b.ack(1);
    }
    if flags & TCP_FIN != 0 {
        b = b.fin();
    }
    if flags & TCP_RST != 0 {
        b = b.rst();
    }
    if flags & TCP_PSH != 0 {
        b = b.psh();
    }
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).expect("write TCP frame");
    out
}

pub fn udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let b = ip_builder(src.ip(), dst.ip(), None).udp(src.port(), dst.port());
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).expect("write UDP frame");
    out
}

/// ICMP (v4 or v6 by address family) echo request or reply.
pub fn icmp_echo(src: IpAddr, dst: IpAddr, reply: bool, id: u16) -> Vec<u8> {
    let step = ip_builder(src, dst, None);
    let mut out = Vec::new();
    match (src, reply) {
        (IpAddr::V4(_), false) => step.icmpv4_echo_request(id, 1).write(&mut out, b"ping"),
        (IpAddr::V4(_), true) => step.icmpv4_echo_reply(id, 1).write(&mut out, b"ping"),
        (IpAddr::V6(_), false) => step.icmpv6_echo_request(id, 1).write(&mut out, b"ping"),
        (IpAddr::V6(_), true) => step.icmpv6_echo_reply(id, 1).write(&mut out, b"ping"),
    }
    .expect("write ICMP frame");
    out
}

/// Insert IPv4 options (a multiple of 4 bytes) into an untagged IPv4 frame.
pub fn with_ipv4_options(frame: &[u8], options: &[u8]) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let mut out = frame[..34].to_vec();
    out.extend_from_slice(options);
    out.extend_from_slice(&frame[34..]);
    let ihl = (out[14] & 0x0f) + (options.len() / 4) as u8;
    out[14] = 0x40 | ihl;
    let tot = u16::from_be_bytes([out[16], out[17]]) + options.len() as u16;
    out[16..18].copy_from_slice(&tot.to_be_bytes());
    // header checksum over the longer header (the L4 pseudo header is unchanged)
    let hdr_len = usize::from(ihl) * 4;
    out[24..26].copy_from_slice(&[0, 0]);
    let mut sum: u32 = out[14..14 + hdr_len].chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    out[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    out
}

/// Insert IPv6 extension headers between the fixed header and L4 of an
/// untagged IPv6 frame. Each entry is (header type, body after the two-byte
/// next-header/length prefix; padded to 8-byte units, fragment headers are
/// 8 bytes exactly).
pub fn with_ipv6_ext(frame: &[u8], headers: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let l4_proto = frame[20];
    let mut ext = Vec::new();
    for (i, (kind, body)) in headers.iter().enumerate() {
        let next = headers.get(i + 1).map_or(l4_proto, |h| h.0);
        let mut h = vec![next, 0];
        h.extend_from_slice(body);
        match *kind {
            44 => h.resize(8, 0),
            51 => {
                h.resize(h.len().div_ceil(4) * 4, 0);
                h[1] = (h.len() / 4 - 2) as u8;
            }
            _ => {
                h.resize(h.len().div_ceil(8).max(1) * 8, 0);
                h[1] = (h.len() / 8 - 1) as u8;
            }
        }
        ext.extend_from_slice(&h);
    }
    let mut out = frame[..54].to_vec();
    out[20] = headers.first().map_or(l4_proto, |h| h.0);
    let plen = u16::from_be_bytes([out[18], out[19]]) + ext.len() as u16;
    out[18..20].copy_from_slice(&plen.to_be_bytes());
    out.extend_from_slice(&ext);
    out.extend_from_slice(&frame[54..]);
    out
}

/// The HTTP request with the given extra header lines.
pub fn request(method: &str, path: &str, headers: &[&str]) -> Vec<u8> {
    let mut s = format!("{method} {path} HTTP/1.1\r\nHost: svc.test:8080\r\nUser-Agent: tclab-test\r\n");
    for h in headers {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

pub const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
