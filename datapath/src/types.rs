//! `#[repr(C)]` mirrors of `ebpf/include/tclab_types.h`, the contract between
//! the eBPF programs and user space.
//!
//! Field order, widths and padding follow the C header exactly; the test
//! `layouts_match_c` compares every size and field offset here with the BTF
//! of the built object, so a change on one side only fails `cargo test`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};

/// `TCLAB_TRACEPARENT_LEN`: characters of a version-00 traceparent.
pub const TRACEPARENT_LEN: usize = 55;
/// `TCLAB_TRACESTATE_MAX`: bytes of tracestate copied by the kernel.
pub const TRACESTATE_MAX: usize = 128;
/// `TCLAB_PAYLOAD_CAPTURE`: first payload bytes carried by an HTTP event.
pub const PAYLOAD_CAPTURE: usize = 256;

/// `enum tclab_family`.
pub const AF_INET: u8 = 4;
/// `enum tclab_family`.
pub const AF_INET6: u8 = 6;

/// `enum tclab_dir`: the hook that saw a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Dir {
    Ingress = 0,
    Egress = 1,
}

impl Dir {
    pub fn from_raw(v: u8) -> Option<Dir> {
        match v {
            0 => Some(Dir::Ingress),
            1 => Some(Dir::Egress),
            _ => None,
        }
    }
    /// The other hook.
    pub fn opposite(self) -> Dir {
        match self {
            Dir::Ingress => Dir::Egress,
            Dir::Egress => Dir::Ingress,
        }
    }
}

/// `enum ct_status`: the CT verdict for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CtStatus {
    New = 0,
    Established = 1,
    Reply = 2,
}

impl CtStatus {
    pub fn from_raw(v: u8) -> Option<CtStatus> {
        match v {
            0 => Some(CtStatus::New),
            1 => Some(CtStatus::Established),
            2 => Some(CtStatus::Reply),
            _ => None,
        }
    }
}

/// `enum ct_entry_flag` bits of [`CtEntry::flags`].
pub mod ct_flags {
    pub const RX_CLOSING: u8 = 1 << 0;
    pub const TX_CLOSING: u8 = 1 << 1;
    pub const SEEN_NON_SYN: u8 = 1 << 2;
    pub const HTTP_PENDING: u8 = 1 << 3;
    /// Bit and Cilium-style name, in bit order.
    pub const NAMES: [(u8, &str); 4] = [
        (RX_CLOSING, "RxClosing"),
        (TX_CLOSING, "TxClosing"),
        (SEEN_NON_SYN, "SeenNonSyn"),
        (HTTP_PENDING, "HttpPending"),
    ];
}

/// Names of the set bits of a [`CtEntry::flags`] value (Cilium's spelling).
pub fn ct_flag_names(flags: u8) -> Vec<&'static str> {
    ct_flags::NAMES.iter().filter(|(bit, _)| flags & bit != 0).map(|(_, n)| *n).collect()
}

/// Names of TCP flag bits (`FIN`, `SYN`, …) set in `flags`.
pub fn tcp_flag_names(flags: u8) -> Vec<&'static str> {
    const NAMES: [&str; 8] = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];
    (0..8).filter(|i| flags & (1 << i) != 0).map(|i| NAMES[i]).collect()
}

/// `struct ct_tuple`: the CT key (originator direction). Ports are in
/// network byte order, as on the wire. In JSON: addresses as text and
/// host-order ports (`{"saddr":"10.0.0.1","daddr":…,"sport":5555,"dport":80,"proto":6}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(into = "TupleJson", from = "TupleJson")]
#[repr(C)]
pub struct CtTuple {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub nexthdr: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

fn addr(family: u8, raw: &[u8; 16]) -> IpAddr {
    if family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*raw))
    }
}

fn raw_addr(ip: IpAddr) -> ([u8; 16], u8) {
    let mut raw = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => {
            raw[..4].copy_from_slice(&v4.octets());
            (raw, AF_INET)
        }
        IpAddr::V6(v6) => (v6.octets(), AF_INET6),
    }
}

/// The JSON shape of [`CtTuple`].
#[derive(Serialize, Deserialize)]
struct TupleJson {
    saddr: IpAddr,
    daddr: IpAddr,
    sport: u16,
    dport: u16,
    proto: u8,
}

impl From<CtTuple> for TupleJson {
    fn from(t: CtTuple) -> TupleJson {
        TupleJson { saddr: t.src_ip(), daddr: t.dst_ip(), sport: t.src_port(), dport: t.dst_port(), proto: t.nexthdr }
    }
}

impl From<TupleJson> for CtTuple {
    fn from(j: TupleJson) -> CtTuple {
        CtTuple::new(SocketAddr::new(j.saddr, j.sport), SocketAddr::new(j.daddr, j.dport), j.proto)
    }
}

impl CtTuple {
    /// A tuple from addresses and host-order ports. Both addresses must be
    /// of the same family (the source's family is used).
    pub fn new(src: SocketAddr, dst: SocketAddr, nexthdr: u8) -> CtTuple {
        let (saddr, family) = raw_addr(src.ip());
        let (daddr, _) = raw_addr(dst.ip());
        CtTuple {
            saddr,
            daddr,
            sport: src.port().to_be(),
            dport: dst.port().to_be(),
            nexthdr,
            family,
            _pad: [0; 2],
        }
    }
    pub fn src_ip(&self) -> IpAddr {
        addr(self.family, &self.saddr)
    }
    pub fn dst_ip(&self) -> IpAddr {
        addr(self.family, &self.daddr)
    }
    /// Source port in host byte order.
    pub fn src_port(&self) -> u16 {
        u16::from_be(self.sport)
    }
    /// Destination port in host byte order.
    pub fn dst_port(&self) -> u16 {
        u16::from_be(self.dport)
    }
    pub fn src(&self) -> SocketAddr {
        SocketAddr::new(self.src_ip(), self.src_port())
    }
    pub fn dst(&self) -> SocketAddr {
        SocketAddr::new(self.dst_ip(), self.dst_port())
    }
    /// The tuple of the other direction.
    pub fn reversed(&self) -> CtTuple {
        CtTuple {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            ..*self
        }
    }
    /// `TCP`, `UDP`, `ICMP`, `ICMPv6` or the protocol number.
    pub fn proto_name(&self) -> String {
        match self.nexthdr {
            6 => "TCP".into(),
            17 => "UDP".into(),
            1 => "ICMP".into(),
            58 => "ICMPv6".into(),
            n => format!("proto-{n}"),
        }
    }
    /// Check the family the kernel wrote, so a corrupt record is an error
    /// rather than a wrong address.
    ///
    /// # Errors
    /// What is wrong, for the caller's error message.
    pub fn validate(&self) -> Result<(), String> {
        match self.family {
            AF_INET | AF_INET6 => Ok(()),
            f => Err(format!("unknown address family {f}")),
        }
    }
    /// Sort key: source address and port, destination address and port, protocol.
    pub fn sort_key(&self) -> (IpAddr, u16, IpAddr, u16, u8) {
        (self.src_ip(), self.src_port(), self.dst_ip(), self.dst_port(), self.nexthdr)
    }
}

impl fmt::Display for CtTuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {}", self.proto_name(), self.src(), self.dst())
    }
}

/// `struct ct_entry`: the CT value. tx = originator, rx = reply direction.
/// Times are CLOCK_MONOTONIC ns; `created_dir` is a [`Dir`], `last_status`
/// a [`CtStatus`], `flags` [`ct_flags`] bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[repr(C)]
pub struct CtEntry {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub created_ns: u64,
    pub expires_ns: u64,
    pub tx_flags_seen: u8,
    pub rx_flags_seen: u8,
    pub flags: u8,
    pub created_dir: u8,
    pub last_status: u8,
    #[serde(skip)]
    pub _pad: [u8; 3],
}

impl CtEntry {
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag == flag
    }
}

/// `enum tclab_counter`: indexes of the global counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Counter {
    Packets = 0,
    NonIp,
    ParseErrors,
    CtNew,
    CtEstablished,
    CtReply,
    CtInsertFailed,
    HttpRequests,
    HttpResponses,
    TraceparentValid,
    TraceparentInvalid,
    EventsLost,
}

/// `CNT_MAX`.
pub const COUNTER_MAX: usize = 12;

impl Counter {
    pub const ALL: [Counter; COUNTER_MAX] = [
        Counter::Packets,
        Counter::NonIp,
        Counter::ParseErrors,
        Counter::CtNew,
        Counter::CtEstablished,
        Counter::CtReply,
        Counter::CtInsertFailed,
        Counter::HttpRequests,
        Counter::HttpResponses,
        Counter::TraceparentValid,
        Counter::TraceparentInvalid,
        Counter::EventsLost,
    ];
    /// snake_case name, for metrics and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Counter::Packets => "packets",
            Counter::NonIp => "non_ip",
            Counter::ParseErrors => "parse_errors",
            Counter::CtNew => "ct_new",
            Counter::CtEstablished => "ct_established",
            Counter::CtReply => "ct_reply",
            Counter::CtInsertFailed => "ct_insert_failed",
            Counter::HttpRequests => "http_requests",
            Counter::HttpResponses => "http_responses",
            Counter::TraceparentValid => "traceparent_valid",
            Counter::TraceparentInvalid => "traceparent_invalid",
            Counter::EventsLost => "events_lost",
        }
    }
}

/// The global counters, summed over CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters(pub [u64; COUNTER_MAX]);

impl Counters {
    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }
    /// `(name, value)` for every counter, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Counter::ALL.iter().map(|c| (c.name(), self.get(*c)))
    }
}

/// `enum tclab_event_kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum EventKind {
    ConnOpen = 1,
    ConnClose = 2,
    HttpRequest = 3,
    HttpResponse = 4,
    CtInsertFailed = 5,
    HttpContinuation = 6,
}

impl EventKind {
    pub fn from_raw(v: u32) -> Option<EventKind> {
        Some(match v {
            1 => EventKind::ConnOpen,
            2 => EventKind::ConnClose,
            3 => EventKind::HttpRequest,
            4 => EventKind::HttpResponse,
            5 => EventKind::CtInsertFailed,
            6 => EventKind::HttpContinuation,
            _ => return None,
        })
    }
    /// Whether the event is a [`HttpEvent`] (else a [`ConnEvent`]).
    pub fn is_http(self) -> bool {
        matches!(self, EventKind::HttpRequest | EventKind::HttpResponse | EventKind::HttpContinuation)
    }
}

/// `enum traceparent_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TraceparentStatus {
    Missing = 0,
    Valid = 1,
    Invalid = 2,
}

impl TraceparentStatus {
    pub fn from_raw(v: u8) -> Option<TraceparentStatus> {
        match v {
            0 => Some(TraceparentStatus::Missing),
            1 => Some(TraceparentStatus::Valid),
            2 => Some(TraceparentStatus::Invalid),
            _ => None,
        }
    }
}

/// `struct event_header`: the common head of every event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct EventHeader {
    pub ts_ns: u64,
    pub kind: u32,
    pub ifindex: u32,
    pub tuple: CtTuple,
    pub dir: u8,
    pub ct_status: u8,
    pub tcp_flags: u8,
    pub _pad: [u8; 5],
}

/// `struct http_event`: EV_HTTP_REQUEST / RESPONSE / CONTINUATION.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct HttpEvent {
    pub hdr: EventHeader,
    pub payload_len: u32,
    pub captured_len: u16,
    pub traceparent_status: u8,
    pub tracestate_len: u8,
    pub traceparent: [u8; TRACEPARENT_LEN + 1],
    /// Leading bytes of `payload` kept from earlier segments of the request
    /// (the start of a split method, or the previous segment's unfinished line).
    pub carried_len: u8,
    /// 1: `payload[0]` starts a line (0: a continuation beginning inside a
    /// line its previous segment cut).
    pub line_start: u8,
    pub _pad: [u8; 6],
    pub tracestate: [u8; TRACESTATE_MAX],
    pub payload: [u8; PAYLOAD_CAPTURE],
}

impl HttpEvent {
    /// The validated traceparent (only when the status is Valid).
    pub fn traceparent(&self) -> Option<&[u8]> {
        (self.traceparent_status == TraceparentStatus::Valid as u8).then_some(&self.traceparent[..TRACEPARENT_LEN])
    }
    pub fn tracestate(&self) -> &[u8] {
        &self.tracestate[..usize::from(self.tracestate_len).min(TRACESTATE_MAX)]
    }
    /// The captured first bytes of the segment's payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload[..usize::from(self.captured_len).min(PAYLOAD_CAPTURE)]
    }
}

/// `struct conn_event`: EV_CONN_OPEN / EV_CONN_CLOSE / EV_CT_INSERT_FAILED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct ConnEvent {
    pub hdr: EventHeader,
    pub entry: CtEntry,
}

/// Read a `#[repr(C)]` plain-data struct from the start of `bytes`.
/// Returns `None` when `bytes` is too short.
pub fn read_struct<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: T is Pod (any bit pattern is valid), the length was checked,
    // and read_unaligned makes no alignment assumption.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

// SAFETY: these are #[repr(C)] structs of integers and byte arrays with
// explicit padding fields: every bit pattern is a valid value.
unsafe impl aya::Pod for CtTuple {}
// SAFETY: as above.
unsafe impl aya::Pod for CtEntry {}
// SAFETY: as above.
unsafe impl aya::Pod for EventHeader {}
// SAFETY: as above.
unsafe impl aya::Pod for HttpEvent {}
// SAFETY: as above.
unsafe impl aya::Pod for ConnEvent {}

/// Reading struct layouts from an object's BTF, for the tests that check the
/// Rust mirrors (here and in `propagation::types`) against the C structs.
#[cfg(test)]
pub(crate) mod btf_layout {
    use std::collections::HashMap;

    /// A struct as the object's BTF describes it.
    pub(crate) struct BtfStruct {
        pub size: u32,
        /// (member name, byte offset)
        pub members: Vec<(String, u32)>,
    }

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

    /// The `.BTF` section of a little-endian ELF64 object.
    pub(crate) fn btf_section(elf: &[u8]) -> &[u8] {
        let shoff = u64_at(elf, 0x28) as usize;
        let shentsize = usize::from(u16_at(elf, 0x3a));
        let shnum = usize::from(u16_at(elf, 0x3c));
        let shstrndx = usize::from(u16_at(elf, 0x3e));
        let sh = |i: usize| shoff + i * shentsize;
        let strtab = u64_at(elf, sh(shstrndx) + 24) as usize;
        (0..shnum)
            .find(|&i| cstr(elf, strtab + u32_at(elf, sh(i)) as usize) == ".BTF")
            .map(|i| {
                let off = u64_at(elf, sh(i) + 24) as usize;
                &elf[off..off + u64_at(elf, sh(i) + 32) as usize]
            })
            .expect("object has a .BTF section")
    }

    /// Every named struct in the BTF (kinds per linux/btf.h).
    pub(crate) fn btf_structs(btf: &[u8]) -> HashMap<String, BtfStruct> {
        assert_eq!(u16_at(btf, 0), 0xeb9f, "BTF magic");
        let hdr_len = u32_at(btf, 4) as usize;
        let (type_off, type_len) = (u32_at(btf, 8) as usize, u32_at(btf, 12) as usize);
        let str_off = u32_at(btf, 16) as usize;
        let strs = hdr_len + str_off;
        let mut at = hdr_len + type_off;
        let end = at + type_len;
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
                        let mo = at + m * 12;
                        let bits = u32_at(btf, mo + 8);
                        let bits = if kflag == 1 { bits & 0xff_ffff } else { bits };
                        (cstr(btf, strs + u32_at(btf, mo) as usize), bits / 8)
                    })
                    .collect();
                out.insert(cstr(btf, strs + name_off as usize), BtfStruct { size, members });
            }
            at += extra;
        }
        out
    }

    /// Size and (field, offset) list of a Rust mirror against the C struct in the BTF.
    macro_rules! check_layout {
        ($structs:expr, $c:literal, $t:ty, [$($f:ident),* $(,)?]) => {{
            let s = $structs.get($c).unwrap_or_else(|| panic!("struct {} not in the object's BTF", $c));
            assert_eq!(s.size as usize, std::mem::size_of::<$t>(), "sizeof(struct {}) vs {}", $c, stringify!($t));
            let rust: Vec<(String, u32)> = vec![$((stringify!($f).to_string(), std::mem::offset_of!($t, $f) as u32)),*];
            assert_eq!(s.members, rust, "fields (name, offset) of struct {} vs {}", $c, stringify!($t));
        }};
    }
    pub(crate) use check_layout;

}

#[cfg(test)]
mod tests {
    use super::*;
    use btf_layout::{btf_section, btf_structs, check_layout};

    #[test]
    fn layouts_match_c() {
        for (name, object) in [
            ("datapath_lru.o", crate::loader::objects::DATAPATH_LRU),
            ("datapath_hash.o", crate::loader::objects::DATAPATH_HASH),
            ("datapath_perf.o", crate::loader::objects::DATAPATH_PERF),
        ] {
            eprintln!("checking {name}");
            let structs = btf_structs(btf_section(object));
            check_layout!(structs, "ct_tuple", CtTuple, [saddr, daddr, sport, dport, nexthdr, family, _pad]);
            check_layout!(structs, "ct_entry", CtEntry, [
                tx_packets, tx_bytes, rx_packets, rx_bytes, created_ns, expires_ns,
                tx_flags_seen, rx_flags_seen, flags, created_dir, last_status, _pad
            ]);
            check_layout!(structs, "event_header", EventHeader, [ts_ns, kind, ifindex, tuple, dir, ct_status, tcp_flags, _pad]);
            check_layout!(structs, "http_event", HttpEvent, [
                hdr, payload_len, captured_len, traceparent_status, tracestate_len,
                traceparent, carried_len, line_start, _pad, tracestate, payload
            ]);
            check_layout!(structs, "conn_event", ConnEvent, [hdr, entry]);
        }
    }

    #[test]
    fn tuple_helpers_round_trip() {
        let t = CtTuple::new("10.0.0.1:5555".parse().unwrap(), "10.0.0.2:80".parse().unwrap(), 6);
        assert_eq!(t.sport, 5555u16.to_be());
        assert_eq!(t.src().to_string(), "10.0.0.1:5555");
        assert_eq!(t.dst().to_string(), "10.0.0.2:80");
        assert_eq!(t.to_string(), "TCP 10.0.0.1:5555 -> 10.0.0.2:80");
        assert_eq!(t.reversed().src(), t.dst());
        let t6 = CtTuple::new("[fd00::1]:1".parse().unwrap(), "[fd00::2]:2".parse().unwrap(), 17);
        assert_eq!(t6.family, AF_INET6);
        assert_eq!(t6.to_string(), "UDP [fd00::1]:1 -> [fd00::2]:2");
        assert_eq!(ct_flag_names(ct_flags::RX_CLOSING | ct_flags::SEEN_NON_SYN), ["RxClosing", "SeenNonSyn"]);
        assert_eq!(tcp_flag_names(0x12), ["SYN", "ACK"]);
    }
}
