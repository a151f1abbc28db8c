//! `#[repr(C)]` mirrors of `ebpf/include/propagation_types.h`, checked
//! against the object's BTF by `layouts_match_c`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::Serialize;

use crate::types::{AF_INET, AF_INET6};

/// `enum prop_mode_bit`.
pub mod mode_bits {
    pub const HEADERS: u32 = 1 << 0;
    pub const TCP: u32 = 1 << 1;
    pub const IP: u32 = 1 << 2;
    pub const CORRELATE: u32 = 1 << 3;
}

/// `struct prop_key`: a connection as its socket sees it (ports host order).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PropKey {
    pub local: [u8; 16],
    pub remote: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    pub family: u8,
    pub _pad: [u8; 3],
}

fn addr(family: u8, bytes: &[u8; 16], port: u16) -> SocketAddr {
    let ip = if family == AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    } else {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    };
    SocketAddr::new(ip, port)
}

impl PropKey {
    /// This side of the connection.
    pub fn local(&self) -> SocketAddr {
        addr(self.family, &self.local, self.local_port)
    }

    /// The other side.
    pub fn remote(&self) -> SocketAddr {
        addr(self.family, &self.remote, self.remote_port)
    }

    /// The key of `local` talking to `remote`.
    pub fn new(local: SocketAddr, remote: SocketAddr) -> PropKey {
        let mut k = PropKey { local_port: local.port(), remote_port: remote.port(), ..PropKey::default() };
        for (ip, out) in [(local.ip(), &mut k.local), (remote.ip(), &mut k.remote)] {
            match ip {
                IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
                IpAddr::V6(v6) => out.copy_from_slice(&v6.octets()),
            }
        }
        k.family = if local.is_ipv6() { AF_INET6 } else { AF_INET };
        k
    }
}

/// `struct prop_ctx`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PropCtx {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
    pub origin: u8,
    pub tp_status: u8,
    pub _pad: [u8; 5],
}

/// `struct prop_thread`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PropThread {
    pub ctx: PropCtx,
    pub conn: PropKey,
}

/// `enum prop_origin`: where a context came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// A new trace.
    New,
    /// A valid traceparent header of the request.
    Header,
    /// Our TCP option.
    Tcp,
    /// Our IP option.
    Ip,
    /// The server request the thread is serving.
    Thread,
    /// The application's own traceparent.
    App,
}

impl Origin {
    pub fn from_raw(v: u8) -> Option<Origin> {
        Some(match v {
            0 => Origin::New,
            1 => Origin::Header,
            2 => Origin::Tcp,
            3 => Origin::Ip,
            4 => Origin::Thread,
            5 => Origin::App,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Origin::New => "new",
            Origin::Header => "header",
            Origin::Tcp => "tcp",
            Origin::Ip => "ip",
            Origin::Thread => "thread",
            Origin::App => "app",
        }
    }
}

/// `enum prop_event_kind`.
pub const PROP_EV_SERVER: u32 = 1;
pub const PROP_EV_CLIENT: u32 = 2;

/// `struct prop_event`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PropEventRaw {
    pub ts_ns: u64,
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    pub tp_status: u8,
    pub injected: u8,
    pub origin: u8,
    pub flags: u8,
    pub conn: PropKey,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_id: [u8; 8],
}

/// `enum prop_counter`, in order.
pub const COUNTER_NAMES: [&str; 15] = [
    "server_requests",
    "client_requests",
    "linked",
    "injected",
    "inject_failed",
    "existing_valid",
    "existing_invalid",
    "incoming_invalid",
    "ip_added",
    "ip_skipped",
    "ip_stripped",
    "tcp_written",
    "tcp_read",
    "events_lost",
    "tc_packets",
];

// SAFETY: #[repr(C)] structs of integers and byte arrays with explicit
// padding fields: every bit pattern is a valid value.
unsafe impl aya::Pod for PropKey {}
// SAFETY: as above.
unsafe impl aya::Pod for PropCtx {}
// SAFETY: as above.
unsafe impl aya::Pod for PropThread {}
// SAFETY: as above.
unsafe impl aya::Pod for PropEventRaw {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::mem::{offset_of, size_of};

    fn u16_at(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes([b[o], b[o + 1]])
    }
    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }
    fn cstr(b: &[u8], o: usize) -> String {
        let end = b[o..].iter().position(|&c| c == 0).unwrap() + o;
        String::from_utf8_lossy(&b[o..end]).into_owned()
    }

    /// Named structs of the object's `.BTF`: name -> (size, [(member, byte offset)]).
    fn btf_structs(elf: &[u8]) -> HashMap<String, (u32, Vec<(String, u32)>)> {
        let shoff = u64_at(elf, 0x28) as usize;
        let (shentsize, shnum, shstrndx) =
            (usize::from(u16_at(elf, 0x3a)), usize::from(u16_at(elf, 0x3c)), usize::from(u16_at(elf, 0x3e)));
        let sh = |i: usize| shoff + i * shentsize;
        let strtab = u64_at(elf, sh(shstrndx) + 24) as usize;
        let i = (0..shnum).find(|&i| cstr(elf, strtab + u32_at(elf, sh(i)) as usize) == ".BTF").expect(".BTF");
        let off = u64_at(elf, sh(i) + 24) as usize;
        let btf = &elf[off..off + u64_at(elf, sh(i) + 32) as usize];
        assert_eq!(u16_at(btf, 0), 0xeb9f);
        let hdr = u32_at(btf, 4) as usize;
        let strs = hdr + u32_at(btf, 16) as usize;
        let mut at = hdr + u32_at(btf, 8) as usize;
        let end = at + u32_at(btf, 12) as usize;
        let mut out = HashMap::new();
        while at < end {
            let (name_off, info, size) = (u32_at(btf, at), u32_at(btf, at + 4), u32_at(btf, at + 8));
            let (kind, vlen, kflag) = ((info >> 24) & 0x1f, (info & 0xffff) as usize, info >> 31);
            at += 12;
            let extra = match kind {
                1 | 14 | 17 => 4,
                3 => 12,
                4 | 5 | 15 | 19 => vlen * 12,
                6 | 13 => vlen * 8,
                _ => 0,
            };
            if kind == 4 && name_off != 0 {
                let members = (0..vlen)
                    .map(|m| {
                        let bits = u32_at(btf, at + m * 12 + 8);
                        let bits = if kflag == 1 { bits & 0xff_ffff } else { bits };
                        (cstr(btf, strs + u32_at(btf, at + m * 12) as usize), bits / 8)
                    })
                    .collect();
                out.insert(cstr(btf, strs + name_off as usize), (size, members));
            }
            at += extra;
        }
        out
    }

    macro_rules! check {
        ($structs:expr, $c:literal, $t:ty, [$($f:ident),* $(,)?]) => {{
            let (size, members) = $structs.get($c).unwrap_or_else(|| panic!("struct {} not in BTF", $c));
            assert_eq!(*size as usize, size_of::<$t>(), "sizeof(struct {})", $c);
            let rust: Vec<(String, u32)> = vec![$((stringify!($f).to_string(), offset_of!($t, $f) as u32)),*];
            assert_eq!(members, &rust, "members of struct {}", $c);
        }};
    }

    #[test]
    fn layouts_match_c() {
        let s = btf_structs(super::super::OBJECT);
        check!(s, "prop_key", PropKey, [local, remote, local_port, remote_port, family, _pad]);
        check!(s, "prop_ctx", PropCtx, [trace_id, span_id, flags, origin, tp_status, _pad]);
        check!(s, "prop_thread", PropThread, [ctx, conn]);
        check!(s, "prop_event", PropEventRaw, [
            ts_ns, kind, tgid, tid, tp_status, injected, origin, flags, conn, trace_id, span_id, parent_id
        ]);
    }

    #[test]
    fn keys_round_trip() {
        let k = PropKey::new("10.66.1.2:8080".parse().unwrap(), "10.66.1.1:40000".parse().unwrap());
        assert_eq!(k.local().to_string(), "10.66.1.2:8080");
        assert_eq!(k.remote().to_string(), "10.66.1.1:40000");
        let k6 = PropKey::new("[fd66:1::2]:8080".parse().unwrap(), "[fd66:1::1]:1".parse().unwrap());
        assert_eq!(k6.family, AF_INET6);
        assert_eq!(k6.remote().to_string(), "[fd66:1::1]:1");
    }
}
