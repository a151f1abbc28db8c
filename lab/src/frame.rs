//! One Ethernet frame, summarised for a snapshot: 5-tuple, TCP flags, lengths,
//! whether it carries a traceparent header, its IP options (the propagation
//! option decoded, see docs/propagation.md), and whether its checksums are
//! valid.
//!
//! Checksums are verified from first principles (RFC 1071 one's-complement sum
//! over the pseudo-header and segment), independently of the datapath's code,
//! so a program that rewrites a packet cannot be checked by its own arithmetic.

use std::fmt;
use std::net::IpAddr;

use etherparse::{LinkSlice, NetSlice, SlicedPacket, TransportSlice};
use serde::Serialize;

/// What a frame is, in a form that reads well in a diff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FrameSummary {
    /// "TCP", "UDP", "ICMP", "ICMPv6", "IPv4", "IPv6", "ARP" or "ethertype 0x…".
    pub proto: String,
    /// Source and destination, with ports for TCP/UDP.
    pub src: Option<String>,
    pub dst: Option<String>,
    /// TCP flags as letters (tcpdump's: S F R P . U E W), empty otherwise.
    pub tcp_flags: String,
    pub vlan: Option<u16>,
    /// Whole frame length.
    pub len: usize,
    /// L4 payload length (TCP/UDP), 0 otherwise.
    pub payload_len: usize,
    /// The payload holds a `traceparent:` header (case-insensitive).
    pub traceparent: bool,
    /// IPv4 header and TCP/UDP/ICMP checksums; `None` when the frame has none
    /// to check (non-IP) or is truncated.
    pub checksums_ok: Option<bool>,
    /// IPv4 options / IPv6 destination options, in order: tclab's trace
    /// context as `tclab:00-<trace>-<span>-<flags>`, others by type.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ip_options: Vec<String>,
}

impl fmt::Display for FrameSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.proto)?;
        if let Some(vlan) = self.vlan {
            write!(f, " vlan={vlan}")?;
        }
        if let (Some(src), Some(dst)) = (&self.src, &self.dst) {
            write!(f, " {src} -> {dst}")?;
        }
        if !self.tcp_flags.is_empty() {
            write!(f, " [{}]", self.tcp_flags)?;
        }
        write!(f, " len={}", self.len)?;
        if self.payload_len > 0 {
            write!(f, " payload={}", self.payload_len)?;
        }
        if self.traceparent {
            write!(f, " traceparent")?;
        }
        if !self.ip_options.is_empty() {
            write!(f, " ipopt=[{}]", self.ip_options.join(","))?;
        }
        match self.checksums_ok {
            Some(true) => write!(f, " csum=ok"),
            Some(false) => write!(f, " csum=BAD"),
            None => Ok(()),
        }
    }
}

/// Summarise an Ethernet frame. Never fails: what cannot be parsed is
/// described as far as it was understood.
pub fn summarize(frame: &[u8]) -> FrameSummary {
    let mut summary = FrameSummary {
        proto: String::new(),
        src: None,
        dst: None,
        tcp_flags: String::new(),
        vlan: None,
        len: frame.len(),
        payload_len: 0,
        traceparent: false,
        checksums_ok: None,
        ip_options: Vec::new(),
    };
    let packet = match SlicedPacket::from_ethernet(frame) {
        Ok(p) => p,
        Err(e) => {
            summary.proto = format!("malformed ({e})");
            return summary;
        }
    };
    summary.vlan = packet.vlan.as_ref().map(|v| match v {
        etherparse::VlanSlice::SingleVlan(s) => s.vlan_identifier().value(),
        etherparse::VlanSlice::DoubleVlan(d) => d.outer().vlan_identifier().value(),
    });
    let Some(net) = &packet.net else {
        summary.proto = non_ip_name(&packet);
        return summary;
    };
    let (src, dst, ip_ok) = match net {
        NetSlice::Ipv4(v4) => {
            let h = v4.header();
            summary.proto = "IPv4".into();
            summary.ip_options = ipv4_options(h.options());
            (
                IpAddr::from(h.source_addr()),
                IpAddr::from(h.destination_addr()),
                internet_checksum(&[h.slice()]) == 0,
            )
        }
        NetSlice::Ipv6(v6) => {
            let h = v6.header();
            summary.proto = "IPv6".into();
            if u8::from(h.next_header()) == IPPROTO_DSTOPTS {
                summary.ip_options = ipv6_dest_options(v6.extensions().slice());
            }
            (IpAddr::from(h.source_addr()), IpAddr::from(h.destination_addr()), true)
        }
    };
    summary.src = Some(src.to_string());
    summary.dst = Some(dst.to_string());
    summary.checksums_ok = Some(ip_ok);
    if let Some(transport) = &packet.transport {
        describe_transport(&mut summary, transport, net, src, dst, ip_ok);
    }
    summary
}

const IPPROTO_DSTOPTS: u8 = 60;
/// The propagation option's marker byte (docs/propagation.md).
const PROP_MARKER: u8 = 0x7c;

/// tclab's trace context: marker, flags, 16-byte trace id, 8-byte span id.
fn tclab_context(data: &[u8]) -> Option<String> {
    if data.len() != 26 || data[0] != PROP_MARKER {
        return None;
    }
    Some(format!("tclab:00-{}-{}-{:02x}", hex::encode(&data[2..18]), hex::encode(&data[18..26]), data[1]))
}

/// IPv4 options (type, length, data), up to End of Options.
fn ipv4_options(opts: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            0 => break,
            1 => i += 1,
            t => {
                let Some(&len) = opts.get(i + 1) else {
                    out.push(format!("0x{t:02x}:truncated"));
                    break;
                };
                let len = usize::from(len);
                if len < 2 || i + len > opts.len() {
                    out.push(format!("0x{t:02x}:bad-length"));
                    break;
                }
                let data = &opts[i + 2..i + len];
                out.push(match (t, tclab_context(data)) {
                    (0x9e, Some(c)) => c,
                    _ => format!("0x{t:02x}/{len}"),
                });
                i += len;
            }
        }
    }
    out
}

/// The options of the first IPv6 destination options header (at the start
/// of `exts`), padding left out.
fn ipv6_dest_options(exts: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let Some(&hlen) = exts.get(1) else { return out };
    let end = (usize::from(hlen) + 1) * 8;
    let Some(body) = exts.get(2..end) else { return vec!["truncated".into()] };
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            0 => i += 1,
            t => {
                let Some(&len) = body.get(i + 1) else { break };
                let len = usize::from(len);
                let Some(data) = body.get(i + 2..i + 2 + len) else {
                    out.push(format!("0x{t:02x}:bad-length"));
                    break;
                };
                match (t, tclab_context(data)) {
                    (1, _) => {}
                    (0x1e, Some(c)) => out.push(c),
                    _ => out.push(format!("0x{t:02x}/{len}")),
                }
                i += 2 + len;
            }
        }
    }
    out
}

fn non_ip_name(packet: &SlicedPacket<'_>) -> String {
    let ether_type = match &packet.link {
        Some(LinkSlice::Ethernet2(eth)) => Some(eth.ether_type()),
        _ => None,
    };
    let ether_type = packet
        .vlan
        .as_ref()
        .map(|v| v.payload().ether_type)
        .or(ether_type);
    match ether_type {
        Some(t) if t == etherparse::EtherType::ARP => "ARP".into(),
        Some(t) => format!("ethertype 0x{:04x}", t.0),
        None => "unknown link".into(),
    }
}

fn describe_transport(
    summary: &mut FrameSummary,
    transport: &TransportSlice<'_>,
    net: &NetSlice<'_>,
    src: IpAddr,
    dst: IpAddr,
    ip_ok: bool,
) {
    let l4 = net_payload(net);
    let (proto_name, proto_num, ports, payload): (&str, u8, Option<(u16, u16)>, &[u8]) =
        match transport {
            TransportSlice::Tcp(tcp) => {
                summary.tcp_flags = tcp_flags(tcp);
                ("TCP", 6, Some((tcp.source_port(), tcp.destination_port())), tcp.payload())
            }
            TransportSlice::Udp(udp) => (
                "UDP",
                17,
                Some((udp.source_port(), udp.destination_port())),
                udp.payload(),
            ),
            TransportSlice::Icmpv4(_) => ("ICMP", 1, None, &[]),
            TransportSlice::Icmpv6(_) => ("ICMPv6", 58, None, &[]),
        };
    summary.proto = proto_name.into();
    if let Some((sport, dport)) = ports {
        summary.src = Some(socket(src, sport));
        summary.dst = Some(socket(dst, dport));
    }
    summary.payload_len = payload.len();
    summary.traceparent = has_traceparent_header(payload);
    let l4_ok = match (transport, l4) {
        // A zero UDP checksum over IPv4 means "none" (RFC 768).
        (TransportSlice::Udp(udp), Some(_)) if udp.checksum() == 0 && src.is_ipv4() => true,
        (TransportSlice::Icmpv4(_), Some(seg)) => internet_checksum(&[seg]) == 0,
        (_, Some(seg)) => pseudo_header_checksum(src, dst, proto_num, seg) == 0,
        (_, None) => false,
    };
    summary.checksums_ok = Some(ip_ok && l4_ok);
}

/// The L4 segment as the IP header bounds it (strict slicing already refused
/// a frame shorter than its IP header says); `None` for a fragment, whose
/// checksum covers bytes this frame does not hold.
fn net_payload<'a>(net: &NetSlice<'a>) -> Option<&'a [u8]> {
    let payload = match net {
        NetSlice::Ipv4(v4) => v4.payload(),
        NetSlice::Ipv6(v6) => v6.payload(),
    };
    (!payload.fragmented).then_some(payload.payload)
}

fn socket(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

fn tcp_flags(tcp: &etherparse::TcpSlice<'_>) -> String {
    [
        (tcp.syn(), 'S'),
        (tcp.fin(), 'F'),
        (tcp.rst(), 'R'),
        (tcp.psh(), 'P'),
        (tcp.ack(), '.'),
        (tcp.urg(), 'U'),
        (tcp.ece(), 'E'),
        (tcp.cwr(), 'W'),
    ]
    .iter()
    .filter(|(set, _)| *set)
    .map(|(_, c)| *c)
    .collect()
}

/// `traceparent:` at the start of a header line (case-insensitive).
pub fn has_traceparent_header(payload: &[u8]) -> bool {
    const NAME: &[u8] = b"traceparent:";
    payload
        .split(|&b| b == b'\n')
        .skip(1) // the request line is not a header
        .any(|line| line.len() >= NAME.len() && line[..NAME.len()].eq_ignore_ascii_case(NAME))
}

/// RFC 1071 checksum over concatenated parts; 0 means the embedded checksum
/// is valid.
pub fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &byte in *part {
            match odd.take() {
                Some(high) => sum += u32::from(u16::from_be_bytes([high, byte])),
                None => odd = Some(byte),
            }
        }
    }
    if let Some(high) = odd {
        sum += u32::from(u16::from_be_bytes([high, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_header_checksum(src: IpAddr, dst: IpAddr, proto: u8, segment: &[u8]) -> u16 {
    let len = segment.len() as u32;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let pseudo = [[0u8, proto], (len as u16).to_be_bytes()].concat();
            internet_checksum(&[&s.octets(), &d.octets(), &pseudo, segment])
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let pseudo = [len.to_be_bytes(), [0, 0, 0, proto]].concat();
            internet_checksum(&[&s.octets(), &d.octets(), &pseudo, segment])
        }
        _ => 1, // mixed families cannot come from one IP header
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn tcp_frame(payload: &[u8]) -> Vec<u8> {
        let builder = PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(40000, 80, 1, 1024)
            .syn()
            .ack(7);
        let mut out = Vec::new();
        builder.write(&mut out, payload).expect("write frame");
        out
    }

    #[test]
    fn tcp_frame_is_summarised_with_valid_checksums() {
        let frame = tcp_frame(b"GET / HTTP/1.1\r\nTraceParent: 00-x\r\n\r\n");
        let s = summarize(&frame);
        assert_eq!(s.proto, "TCP");
        assert_eq!(s.src.as_deref(), Some("10.0.0.1:40000"));
        assert_eq!(s.dst.as_deref(), Some("10.0.0.2:80"));
        assert_eq!(s.tcp_flags, "S.");
        assert!(s.traceparent);
        assert_eq!(s.checksums_ok, Some(true));
        assert_eq!(
            s.to_string(),
            format!("TCP 10.0.0.1:40000 -> 10.0.0.2:80 [S.] len={} payload=37 traceparent csum=ok", frame.len())
        );
    }

    #[test]
    fn a_flipped_payload_bit_breaks_the_tcp_checksum() {
        let mut frame = tcp_frame(b"hello");
        let last = frame.len() - 1;
        frame[last] ^= 1;
        assert_eq!(summarize(&frame).checksums_ok, Some(false));
    }

    #[test]
    fn a_flipped_ip_header_bit_breaks_the_ip_checksum() {
        let mut frame = tcp_frame(b"");
        frame[14 + 8] ^= 1; // TTL
        assert_eq!(summarize(&frame).checksums_ok, Some(false));
    }

    #[test]
    fn ipv6_udp_checksum_is_checked() {
        let builder = PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv6([0xfd; 16], [0xfe; 16], 64)
            .udp(53, 5353);
        let mut frame = Vec::new();
        builder.write(&mut frame, b"abc").expect("write frame");
        assert_eq!(summarize(&frame).checksums_ok, Some(true));
        let last = frame.len() - 1;
        frame[last] ^= 0x40;
        assert_eq!(summarize(&frame).checksums_ok, Some(false));
    }

    #[test]
    fn request_line_is_not_a_traceparent_header() {
        assert!(!has_traceparent_header(b"traceparent: x\r\n"));
        assert!(has_traceparent_header(b"GET / HTTP/1.1\r\ntraceparent: x\r\n"));
    }

    /// Our 26 bytes of option data: marker, flags, trace id, span id.
    fn context_bytes() -> Vec<u8> {
        let mut d = vec![0x7c, 0x01];
        d.extend_from_slice(&[0xab; 16]);
        d.extend_from_slice(&[0xcd; 8]);
        d
    }

    #[test]
    fn the_ipv4_propagation_option_is_shown_and_checked() {
        let mut frame = tcp_frame(b"GET / HTTP/1.1\r\n\r\n");
        let mut opt = vec![0x9e, 28];
        opt.extend(context_bytes());
        frame.splice(14 + 20..14 + 20, opt);
        frame[14] = 0x4c;
        let tot = u16::from_be_bytes([frame[16], frame[17]]) + 28;
        frame[16..18].copy_from_slice(&tot.to_be_bytes());
        frame[24..26].copy_from_slice(&[0, 0]);
        let c = internet_checksum(&[&frame[14..14 + 48]]);
        frame[24..26].copy_from_slice(&c.to_be_bytes());
        let s = summarize(&frame);
        let ctx = format!("tclab:00-{}-{}-01", "ab".repeat(16), "cd".repeat(8));
        assert_eq!(s.ip_options, vec![ctx.clone()]);
        assert_eq!(s.checksums_ok, Some(true), "the TCP checksum does not cover IP options");
        assert!(s.to_string().ends_with(&format!("ipopt=[{ctx}] csum=ok")), "{s}");
        // an option of someone else is named, not decoded
        frame[14 + 22] = 0x00;
        assert_eq!(summarize(&frame).ip_options, vec!["0x9e/28".to_owned()]);
    }

    #[test]
    fn the_ipv6_destination_option_is_shown() {
        let builder = PacketBuilder::ethernet2([1; 6], [2; 6]).ipv6([0xfd; 16], [0xfe; 16], 64).tcp(1, 2, 3, 4);
        let mut frame = Vec::new();
        builder.write(&mut frame, b"x").expect("write frame");
        let mut d = vec![6, 3, 0x1e, 26];
        d.extend(context_bytes());
        d.extend([1, 0]);
        frame.splice(14 + 40..14 + 40, d);
        frame[14 + 6] = 60;
        let plen = u16::from_be_bytes([frame[18], frame[19]]) + 32;
        frame[18..20].copy_from_slice(&plen.to_be_bytes());
        let s = summarize(&frame);
        assert_eq!(s.ip_options, vec![format!("tclab:00-{}-{}-01", "ab".repeat(16), "cd".repeat(8))]);
        assert_eq!(s.checksums_ok, Some(true), "{s}");
        assert_eq!(s.proto, "TCP");
    }

    #[test]
    fn arp_is_named() {
        let mut frame = vec![0xff; 12];
        frame.extend_from_slice(&[0x08, 0x06]);
        frame.extend_from_slice(&[0; 28]);
        assert_eq!(summarize(&frame).proto, "ARP");
        assert_eq!(summarize(&frame).checksums_ok, None);
    }
}
