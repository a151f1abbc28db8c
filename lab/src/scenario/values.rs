//! Parsers for the string values of scenario files (MACs, prefixes, CT
//! tuples, kernel selectors). Errors are plain messages; the caller adds the position.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::model::{CtTuple, KernelSelector, L4Proto};

pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let expected = || format!("invalid MAC `{s}`, expected six hex bytes like `02:00:00:00:00:01`");
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(expected)?;
        if part.len() != 2 {
            return Err(expected());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| expected())?;
    }
    if parts.next().is_some() {
        return Err(expected());
    }
    Ok(mac)
}

pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `10.0.0.1/24` or `10.0.0.1` (prefix 24).
pub fn parse_ipv4_prefix(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (addr, len) = split_prefix(s, 24, 32, "an IPv4 address like `10.0.0.1/24`")?;
    let addr = addr.parse().map_err(|_| {
        format!("invalid IPv4 address `{s}`, expected an IPv4 address like `10.0.0.1/24`")
    })?;
    Ok((addr, len))
}

/// `fd00::1/64` or `fd00::1` (prefix 64).
pub fn parse_ipv6_prefix(s: &str) -> Result<(Ipv6Addr, u8), String> {
    let (addr, len) = split_prefix(s, 64, 128, "an IPv6 address like `fd00::1/64`")?;
    let addr = addr.parse().map_err(|_| {
        format!("invalid IPv6 address `{s}`, expected an IPv6 address like `fd00::1/64`")
    })?;
    Ok((addr, len))
}

fn split_prefix<'a>(s: &'a str, default: u8, max: u8, what: &str) -> Result<(&'a str, u8), String> {
    match s.split_once('/') {
        None => Ok((s, default)),
        Some((addr, len)) => match len.parse::<u8>() {
            Ok(n) if n <= max => Ok((addr, n)),
            _ => Err(format!(
                "invalid prefix length in `{s}`, expected {what} (0..={max})"
            )),
        },
    }
}

/// `host`, `>=6.6`, or a matrix kernel name such as `6.12`.
pub fn parse_kernel_selector(s: &str) -> Result<KernelSelector, String> {
    if s == "host" {
        return Ok(KernelSelector::Host);
    }
    if let Some(v) = s.strip_prefix(">=") {
        return parse_version(v.trim())
            .map(|(a, b)| KernelSelector::AtLeast(a, b))
            .ok_or_else(|| {
                format!("invalid kernel version `{s}`, expected `>=MAJOR.MINOR` like `>=6.6`")
            });
    }
    let ok = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(KernelSelector::Named(s.to_string()))
    } else {
        Err(format!(
            "invalid kernel `{s}`, expected `host`, a kernel name like `6.12`, or `>=6.6`"
        ))
    }
}

fn parse_version(v: &str) -> Option<(u32, u32)> {
    let (a, b) = v.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// `TCP 10.0.0.1:5555 -> 10.0.0.2:80`; IPv6 in brackets; ICMP without ports.
pub fn parse_ct_tuple(s: &str) -> Result<CtTuple, String> {
    let expected = || {
        format!(
            "invalid CT tuple `{s}`, expected `PROTO SRC -> DST` like `TCP 10.0.0.1:5555 -> 10.0.0.2:80` \
             (PROTO one of TCP, UDP, ICMP, ICMPv6; IPv6 as `[fd00::1]:80`; ICMP without ports)"
        )
    };
    let (proto, rest) = s.trim().split_once(' ').ok_or_else(expected)?;
    let proto = match proto {
        "TCP" => L4Proto::Tcp,
        "UDP" => L4Proto::Udp,
        "ICMP" => L4Proto::Icmp,
        "ICMPv6" => L4Proto::Icmpv6,
        _ => return Err(expected()),
    };
    let (src, dst) = rest.split_once("->").ok_or_else(expected)?;
    let ported = matches!(proto, L4Proto::Tcp | L4Proto::Udp);
    let (src, src_port) = parse_endpoint(src.trim(), ported).ok_or_else(expected)?;
    let (dst, dst_port) = parse_endpoint(dst.trim(), ported).ok_or_else(expected)?;
    if src.is_ipv4() != dst.is_ipv4() {
        return Err(format!(
            "invalid CT tuple `{s}`: source and destination are different IP versions"
        ));
    }
    Ok(CtTuple {
        proto,
        src,
        src_port,
        dst,
        dst_port,
    })
}

fn parse_endpoint(s: &str, ported: bool) -> Option<(IpAddr, Option<u16>)> {
    if ported {
        let sa: SocketAddr = s.parse().ok()?;
        Some((sa.ip(), Some(sa.port())))
    } else {
        Some((s.parse().ok()?, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(parse_mac("02:00:00:00:00:0a"), Ok([2, 0, 0, 0, 0, 10]));
        assert!(parse_mac("02:00:00:00:00").is_err());
        assert!(parse_mac("02:00:00:00:00:00:00").is_err());
        assert!(parse_mac("2:00:00:00:00:00").is_err());
        assert_eq!(format_mac([2, 0, 0, 0, 0, 10]), "02:00:00:00:00:0a");
    }

    #[test]
    fn prefixes() {
        assert_eq!(
            parse_ipv4_prefix("10.0.0.1"),
            Ok(("10.0.0.1".parse().unwrap(), 24))
        );
        assert_eq!(
            parse_ipv4_prefix("10.0.0.1/30"),
            Ok(("10.0.0.1".parse().unwrap(), 30))
        );
        assert!(parse_ipv4_prefix("10.0.0.1/33").is_err());
        assert!(parse_ipv4_prefix("fd00::1").is_err());
        assert_eq!(
            parse_ipv6_prefix("fd00::1"),
            Ok(("fd00::1".parse().unwrap(), 64))
        );
    }

    #[test]
    fn kernels() {
        assert_eq!(parse_kernel_selector("host"), Ok(KernelSelector::Host));
        assert_eq!(
            parse_kernel_selector(">=6.6"),
            Ok(KernelSelector::AtLeast(6, 6))
        );
        assert_eq!(
            parse_kernel_selector("6.12"),
            Ok(KernelSelector::Named("6.12".into()))
        );
        assert!(parse_kernel_selector(">=6").is_err());
        assert!(parse_kernel_selector("6 12").is_err());
    }

    #[test]
    fn tuples() {
        let t = parse_ct_tuple("TCP 10.0.0.1:5555 -> 10.0.0.2:80").unwrap();
        assert_eq!(
            (t.proto, t.src_port, t.dst_port),
            (L4Proto::Tcp, Some(5555), Some(80))
        );
        let t = parse_ct_tuple("UDP [fd00::1]:53 -> [fd00::2]:5353").unwrap();
        assert_eq!(t.dst, "fd00::2".parse::<IpAddr>().unwrap());
        let t = parse_ct_tuple("ICMP 10.0.0.1 -> 10.0.0.2").unwrap();
        assert_eq!(t.src_port, None);
        assert!(parse_ct_tuple("TCP 10.0.0.1 -> 10.0.0.2").is_err());
        assert!(parse_ct_tuple("SCTP 10.0.0.1:1 -> 10.0.0.2:2").is_err());
        assert!(parse_ct_tuple("TCP 10.0.0.1:1 -> [fd00::2]:2").is_err());
    }
}
