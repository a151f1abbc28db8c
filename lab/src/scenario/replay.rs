//! `[[replay]]` checks: the pcap exists and parses, and every rewrite maps an
//! address the capture contains onto one of the same kind.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use etherparse::{NetSlice, SlicedPacket};
use serde_spanned::Spanned;

use super::model::{Replay, Rewrite, Topology};
use super::raw::RawReplay;
use super::validate::Ctx;
use super::values;

pub(crate) fn validate_replay(
    cx: &mut Ctx,
    base: &Path,
    raw: &RawReplay,
    topo: &Topology,
) -> Option<Replay> {
    let rel = raw.pcap.get_ref();
    let path = super::validate::resolve(base, rel);
    let packets = match crate::pcap::read_file(&path) {
        Ok(p) => p,
        Err(e) => {
            let why = match &e {
                crate::pcap::PcapError::Io { source, .. }
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    format!(
                        "pcap `{rel}` not found (looked for {}), expected a path relative to the scenario file",
                        path.display()
                    )
                }
                _ => format!("pcap `{rel}` cannot be read: {e}"),
            };
            cx.err(raw.pcap.span(), why);
            return None;
        }
    };
    if let crate::scenario::Pacing::Scale(f) = raw.pacing
        && !(f.is_finite() && f >= 0.0)
    {
        cx.err(
            raw.pcap.span(),
            format!("pacing scale {f} is invalid, expected a finite number >= 0"),
        );
    }
    let seen = addresses(&packets);
    let mut rewrite = Rewrite::default();
    for (k, v) in &raw.rewrite {
        rewrite_one(cx, k, v, topo, &seen, rel, &mut rewrite);
    }
    Some(Replay {
        pcap: path,
        rewrite,
        pacing: raw.pacing,
        after: raw.after.clone(),
    })
}

/// IP and MAC addresses appearing (as source or destination) in the capture.
#[derive(Default)]
struct Seen {
    ips: BTreeSet<IpAddr>,
    macs: BTreeSet<[u8; 6]>,
}

fn addresses(packets: &[crate::pcap::Packet]) -> Seen {
    let mut seen = Seen::default();
    for p in packets {
        if let (Some(dst), Some(src)) = (p.data.get(0..6), p.data.get(6..12)) {
            seen.macs
                .extend([dst, src].map(|m| <[u8; 6]>::try_from(m).unwrap_or_default()));
        }
        let Ok(sliced) = SlicedPacket::from_ethernet(&p.data) else {
            continue;
        };
        match sliced.net {
            Some(NetSlice::Ipv4(v4)) => {
                let h = v4.header();
                seen.ips.extend([
                    IpAddr::from(h.source_addr()),
                    IpAddr::from(h.destination_addr()),
                ]);
            }
            Some(NetSlice::Ipv6(v6)) => {
                let h = v6.header();
                seen.ips.extend([
                    IpAddr::from(h.source_addr()),
                    IpAddr::from(h.destination_addr()),
                ]);
            }
            None => {}
        }
    }
    seen
}

enum Addr {
    Ip(IpAddr),
    Mac([u8; 6]),
}

fn parse_addr(s: &str) -> Option<Addr> {
    s.parse()
        .ok()
        .map(Addr::Ip)
        .or_else(|| values::parse_mac(s).ok().map(Addr::Mac))
}

fn rewrite_one(
    cx: &mut Ctx,
    k: &Spanned<String>,
    v: &Spanned<String>,
    topo: &Topology,
    seen: &Seen,
    pcap: &str,
    out: &mut Rewrite,
) {
    let Some(from) = parse_addr(k.get_ref()) else {
        cx.err(k.span(), format!("rewrite key `{}` is not an address, expected an IP (`10.0.0.1`, `fd00::1`) or a MAC (`02:00:00:00:00:01`)", k.get_ref()));
        return;
    };
    let present = match &from {
        Addr::Ip(ip) => seen.ips.contains(ip),
        Addr::Mac(m) => seen.macs.contains(m),
    };
    if !present {
        cx.err(
            k.span(),
            format!(
                "rewrite of unknown address `{}`: it does not occur in `{pcap}`",
                k.get_ref()
            ),
        );
        return;
    }
    let target = match v.get_ref().as_str() {
        "local" => Some(topo.local_endpoint()),
        "peer" => Some(topo.remote_endpoint()),
        _ => None,
    };
    let mapped = match (from, target) {
        (Addr::Ip(ip), Some(ep)) => endpoint_ip(ep, ip)
            .map(|to| {
                out.ip.insert(ip, to);
            })
            .ok_or_else(|| {
                format!(
                    "`{}` maps an IPv{} address to `{}`, which has no IPv{} address",
                    k.get_ref(),
                    fam(ip),
                    v.get_ref(),
                    fam(ip)
                )
            }),
        (Addr::Mac(m), Some(ep)) => {
            out.mac.insert(m, ep.mac);
            Ok(())
        }
        (from, None) => literal(from, v.get_ref(), out),
    };
    if let Err(m) = mapped {
        cx.err(v.span(), m);
    }
}

fn fam(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 4 } else { 6 }
}

fn endpoint_ip(ep: &super::model::Endpoint, like: IpAddr) -> Option<IpAddr> {
    match like {
        IpAddr::V4(_) => ep.ipv4.map(|(a, _)| IpAddr::V4(a)),
        IpAddr::V6(_) => ep.ipv6.map(|(a, _)| IpAddr::V6(a)),
    }
}

fn literal(from: Addr, to: &str, out: &mut Rewrite) -> Result<(), String> {
    let bad = || {
        format!(
            "rewrite target `{to}` is invalid, expected `local`, `peer`, or an address of the same kind as the key"
        )
    };
    match (from, parse_addr(to)) {
        (Addr::Ip(a), Some(Addr::Ip(b))) if a.is_ipv4() == b.is_ipv4() => {
            out.ip.insert(a, b);
        }
        (Addr::Mac(a), Some(Addr::Mac(b))) => {
            out.mac.insert(a, b);
        }
        _ => return Err(bad()),
    }
    Ok(())
}
