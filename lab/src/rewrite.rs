//! Address rewriting for replays: map a capture's MAC and IP addresses onto
//! the topology's.
//!
//! Checksums are updated incrementally (RFC 1624) rather than recomputed, so a
//! frame whose checksum was wrong in the capture is still wrong after the
//! rewrite: a replay never repairs what it was given.

use std::net::IpAddr;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};

/// The address mappings of a `[[replay]]` (pcap address → topology address).
pub use crate::scenario::Rewrite;

/// Why a frame could not be rewritten.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    #[error("cannot map {from} to {to}: the address families differ")]
    FamilyMismatch { from: IpAddr, to: IpAddr },
}

/// Rewrite `frame` in place. Frames that do not parse as far as the
/// addresses are left as they are (a replay passes them through).
pub fn apply(rw: &Rewrite, frame: &mut [u8]) -> Result<(), RewriteError> {
    for (from, to) in &rw.ip {
        if from.is_ipv4() != to.is_ipv4() {
            return Err(RewriteError::FamilyMismatch { from: *from, to: *to });
        }
    }
    rewrite_macs(rw, frame);
    if let Some(layout) = Layout::of(frame) {
        rewrite_ips(rw, frame, &layout);
    }
    Ok(())
}

fn rewrite_macs(rw: &Rewrite, frame: &mut [u8]) {
    if frame.len() < 12 {
        return;
    }
    for range in [0..6, 6..12] {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&frame[range.clone()]);
        if let Some(new) = rw.mac.get(&mac) {
            frame[range].copy_from_slice(new);
        }
    }
}

fn rewrite_ips(rw: &Rewrite, frame: &mut [u8], l: &Layout) {
    let addr_len = if l.v4 { 4 } else { 16 };
    for addr_off in [l.src, l.dst] {
        let old = read_ip(&frame[addr_off..addr_off + addr_len]);
        let Some(new) = rw.ip.get(&old) else { continue };
        let new_bytes = ip_bytes(new);
        let old_bytes = frame[addr_off..addr_off + addr_len].to_vec();
        frame[addr_off..addr_off + addr_len].copy_from_slice(&new_bytes);
        // The IPv4 header checksum covers the addresses; TCP, UDP and
        // ICMPv6 checksums cover them through the pseudo-header.
        if let Some(ip_csum) = l.ip_csum {
            update_checksum(frame, ip_csum, &old_bytes, &new_bytes, false);
        }
        if let Some((l4_csum, zero_means_none)) = l.l4_csum {
            update_checksum(frame, l4_csum, &old_bytes, &new_bytes, zero_means_none);
        }
    }
}

/// Byte offsets of what a rewrite touches.
struct Layout {
    v4: bool,
    src: usize,
    dst: usize,
    ip_csum: Option<usize>,
    /// Offset of the L4 checksum, and whether 0 means "no checksum" (UDP/IPv4).
    l4_csum: Option<(usize, bool)>,
}

impl Layout {
    fn of(frame: &[u8]) -> Option<Layout> {
        let packet = SlicedPacket::from_ethernet(frame).ok()?;
        let base = frame.as_ptr() as usize;
        let offset = |s: &[u8]| s.as_ptr() as usize - base;
        let (v4, ip_off) = match packet.net.as_ref()? {
            NetSlice::Ipv4(v4) => (true, offset(v4.header().slice())),
            NetSlice::Ipv6(v6) => (false, offset(v6.header().slice())),
        };
        let (src, dst, ip_csum) = if v4 {
            (ip_off + 12, ip_off + 16, Some(ip_off + 10))
        } else {
            (ip_off + 8, ip_off + 24, None)
        };
        let l4_csum = match packet.transport.as_ref() {
            Some(TransportSlice::Tcp(t)) => Some((offset(t.slice()) + 16, false)),
            Some(TransportSlice::Udp(u)) => Some((offset(u.slice()) + 6, v4)),
            Some(TransportSlice::Icmpv6(i)) => Some((offset(i.slice()) + 2, false)),
            _ => None,
        };
        Some(Layout { v4, src, dst, ip_csum, l4_csum })
    }
}

fn read_ip(bytes: &[u8]) -> IpAddr {
    match bytes.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes).unwrap_or_default()),
        _ => IpAddr::from(<[u8; 16]>::try_from(bytes).unwrap_or_default()),
    }
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m') for every 16-bit word changed.
fn update_checksum(frame: &mut [u8], at: usize, old: &[u8], new: &[u8], zero_means_none: bool) {
    let Some(field) = frame.get(at..at + 2) else { return };
    let current = u16::from_be_bytes([field[0], field[1]]);
    if zero_means_none && current == 0 {
        return;
    }
    let mut sum = u32::from(!current);
    for (o, n) in old.chunks(2).zip(new.chunks(2)) {
        sum += u32::from(!u16::from_be_bytes([o[0], o[1]]));
        sum += u32::from(u16::from_be_bytes([n[0], n[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let mut updated = !(sum as u16);
    if zero_means_none && updated == 0 {
        updated = 0xffff; // UDP transmits a computed 0 as all ones
    }
    frame[at..at + 2].copy_from_slice(&updated.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::summarize;
    use etherparse::PacketBuilder;

    fn v4_tcp() -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(1000, 80, 5, 100)
            .write(&mut out, b"GET / HTTP/1.1\r\n\r\n")
            .expect("frame");
        out
    }

    fn rewrite(pairs: &[(&str, &str)]) -> Rewrite {
        let ip = pairs
            .iter()
            .map(|(a, b)| (a.parse().expect("ip"), b.parse().expect("ip")))
            .collect();
        Rewrite { mac: std::collections::BTreeMap::from([([1; 6], [0xaa; 6])]), ip }
    }

    #[test]
    fn ipv4_tcp_rewrite_keeps_checksums_valid() {
        let mut frame = v4_tcp();
        apply(&rewrite(&[("10.0.0.1", "192.0.2.7"), ("10.0.0.2", "198.51.100.9")]), &mut frame)
            .expect("apply");
        let s = summarize(&frame);
        assert_eq!(s.src.as_deref(), Some("192.0.2.7:1000"));
        assert_eq!(s.dst.as_deref(), Some("198.51.100.9:80"));
        assert_eq!(s.checksums_ok, Some(true));
        assert_eq!(&frame[6..12], &[0xaa; 6], "source MAC mapped");
        assert_eq!(&frame[0..6], &[2; 6], "unmapped destination MAC kept");
    }

    #[test]
    fn a_bad_checksum_stays_bad() {
        let mut frame = v4_tcp();
        let last = frame.len() - 1;
        frame[last] ^= 1;
        apply(&rewrite(&[("10.0.0.1", "192.0.2.7")]), &mut frame).expect("apply");
        assert_eq!(summarize(&frame).checksums_ok, Some(false));
    }

    #[test]
    fn ipv6_udp_rewrite_keeps_checksums_valid() {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv6("fd00::1".parse::<std::net::Ipv6Addr>().expect("ip").octets(), [0xfd; 16], 64)
            .udp(53, 53)
            .write(&mut frame, b"payload")
            .expect("frame");
        apply(&rewrite(&[("fd00::1", "2001:db8::5")]), &mut frame).expect("apply");
        let s = summarize(&frame);
        assert_eq!(s.src.as_deref(), Some("[2001:db8::5]:53"));
        assert_eq!(s.checksums_ok, Some(true));
    }

    #[test]
    fn family_mismatch_is_an_error() {
        let mut frame = v4_tcp();
        let err = apply(&rewrite(&[("10.0.0.1", "fd00::1")]), &mut frame).expect_err("mismatch");
        assert!(err.to_string().contains("address families differ"), "{err}");
    }
}
