//! Ethernet frames crafted with etherparse, for BPF_PROG_TEST_RUN and
//! injection: the classifier tests and `tclab bench` share them.
//!
//! These builders take fixed, caller-written inputs (addresses, flags,
//! payloads) and panic on inconsistent ones (e.g. mixed address families):
//! they are for tests and benchmarks, not for user data.

use std::net::{IpAddr, SocketAddr};

use etherparse::PacketBuilder;

/// Source MAC of every crafted frame.
pub const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
/// Destination MAC of every crafted frame.
pub const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// A valid W3C traceparent (the spec's example).
pub const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Parse a socket address written in the caller's code.
///
/// # Panics
/// On an invalid address.
pub fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("bad socket address {s}: {e}"))
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

/// [`tcp`] with an optional 802.1Q tag.
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

/// A UDP frame from `src` to `dst`.
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

/// A broadcast ARP request (a non-IP frame): who-has 10.0.0.2 tell 10.0.0.1.
pub fn arp_request() -> Vec<u8> {
    let mut out = vec![0xffu8; 6];
    out.extend_from_slice(&MAC_A);
    out.extend_from_slice(&[0x08, 0x06]);
    // htype 1, ptype IPv4, hlen 6, plen 4, op 1 (request)
    out.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    out.extend_from_slice(&MAC_A);
    out.extend_from_slice(&[10, 0, 0, 1]);
    out.extend_from_slice(&[0; 6]);
    out.extend_from_slice(&[10, 0, 0, 2]);
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

/// An HTTP/1.1 response with a short body.
pub fn response(status: u16, reason: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arp_request_is_a_well_formed_arp_frame() {
        let f = arp_request();
        assert_eq!(f.len(), 42);
        let sliced = etherparse::SlicedPacket::from_ethernet(&f).expect("parses");
        assert!(sliced.net.is_none(), "no IP layer");
        assert_eq!(u16::from_be_bytes([f[12], f[13]]), 0x0806);
        assert_eq!(&f[28..32], &[10, 0, 0, 1]);
    }

    #[test]
    fn response_starts_with_a_status_line() {
        let r = response(200, "OK");
        assert!(r.starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert!(r.ends_with(b"\r\n\r\nok"));
    }
}
