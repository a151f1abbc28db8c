//! Reading pcap and pcapng captures into Ethernet frames, and writing classic
//! pcap files.
//!
//! Link types Ethernet, Linux cooked (SLL, SLL2) and raw IP (RAW, IPV4, IPV6)
//! are accepted; cooked and raw packets are converted into Ethernet frames so
//! the rest of the lab only ever deals with Ethernet. pcapng files with several
//! interfaces (each with its own link type and timestamp resolution) work.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pcap_parser::nom;
use pcap_parser::pcapng::Block;
use pcap_parser::{Linktype, PcapError as RawError};

/// One packet of a capture, as an Ethernet frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// 1-based, as Wireshark numbers frames.
    pub index: usize,
    /// Capture timestamp (absolute, since the epoch).
    pub ts: Duration,
    /// The frame as Ethernet (converted from SLL/SLL2/raw IP where needed).
    pub data: Vec<u8>,
    /// The packet's length on the wire, in the capture's own link type.
    pub orig_len: u32,
    /// The capture kept fewer bytes than were on the wire (snaplen).
    pub truncated: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    #[error("failed to read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: not a pcap or pcapng file (starts with {magic}), expected a capture from tcpdump or Wireshark"
    )]
    NotPcap { path: PathBuf, magic: String },
    #[error("{path}: corrupt {what} header: {detail}")]
    CorruptHeader {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
    #[error("{path}: packet {packet}: the file ends inside the packet record (truncated file)")]
    TruncatedFile { path: PathBuf, packet: usize },
    #[error("{path}: packet {packet}: corrupt record: {detail}")]
    Corrupt {
        path: PathBuf,
        packet: usize,
        detail: String,
    },
    #[error(
        "{path}: packet {packet}: unsupported link type {linktype}, expected Ethernet (1), raw IP (101, 228, 229), Linux SLL (113) or SLL2 (276)"
    )]
    UnknownLinktype {
        path: PathBuf,
        packet: usize,
        linktype: i32,
    },
    #[error("{path}: packet {packet}: {detail}")]
    BadPacket {
        path: PathBuf,
        packet: usize,
        detail: String,
    },
}

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const LINKTYPE_SLL2: i32 = 276;

/// Reads a whole capture. Errors name the file and the packet number.
pub fn read_file(path: &Path) -> Result<Vec<Packet>, PcapError> {
    let bytes = std::fs::read(path).map_err(|source| PcapError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    read_bytes(path, &bytes)
}

/// Reads a capture from memory; `path` only names it in errors.
pub fn read_bytes(path: &Path, bytes: &[u8]) -> Result<Vec<Packet>, PcapError> {
    let magic = bytes
        .get(..4)
        .map(|m| u32::from_le_bytes([m[0], m[1], m[2], m[3]]));
    match magic {
        Some(0xa1b2_c3d4 | 0xa1b2_3c4d | 0xa1b2_cd34 | 0xd4c3_b2a1 | 0x4d3c_b2a1 | 0x34cd_b2a1) => {
            read_legacy(path, bytes)
        }
        Some(0x0a0d_0d0a) => read_pcapng(path, bytes),
        _ => Err(PcapError::NotPcap {
            path: path.to_path_buf(),
            magic: bytes
                .iter()
                .take(4)
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" "),
        }),
    }
}

/// Maps a nom failure on a record to our error.
fn record_error(path: &Path, packet: usize, e: nom::Err<RawError<&[u8]>>) -> PcapError {
    match e {
        nom::Err::Incomplete(_)
        | nom::Err::Error(RawError::Incomplete(_))
        | nom::Err::Error(RawError::UnexpectedEof) => PcapError::TruncatedFile {
            path: path.to_path_buf(),
            packet,
        },
        other => PcapError::Corrupt {
            path: path.to_path_buf(),
            packet,
            detail: raw_detail(&other),
        },
    }
}

fn raw_detail(e: &nom::Err<RawError<&[u8]>>) -> String {
    match e {
        nom::Err::Incomplete(_) => "incomplete".to_string(),
        nom::Err::Error(r) | nom::Err::Failure(r) => match r {
            RawError::NomError(_, kind) => format!("parse error ({kind:?})"),
            RawError::HeaderNotRecognized => "header not recognized".to_string(),
            other => format!("{other:?}"),
        },
    }
}

fn read_legacy(path: &Path, bytes: &[u8]) -> Result<Vec<Packet>, PcapError> {
    let (mut rest, header) =
        pcap_parser::parse_pcap_header(bytes).map_err(|e| PcapError::CorruptHeader {
            path: path.to_path_buf(),
            what: "pcap file",
            detail: if bytes.len() < 24 {
                format!("{} bytes, expected at least 24", bytes.len())
            } else {
                raw_detail(&e)
            },
        })?;
    let nanos = header.is_nanosecond_precision();
    let mut packets = Vec::new();
    while !rest.is_empty() {
        let index = packets.len() + 1;
        let parsed = if header.is_modified_format() {
            pcap_parser::parse_pcap_frame_modified(rest)
        } else if header.is_bigendian() {
            pcap_parser::parse_pcap_frame_be(rest)
        } else {
            pcap_parser::parse_pcap_frame(rest)
        };
        let (next, frame) = parsed.map_err(|e| record_error(path, index, e))?;
        rest = next;
        let sub = if nanos {
            frame.ts_usec
        } else {
            frame.ts_usec.saturating_mul(1000)
        };
        let ts = Duration::new(u64::from(frame.ts_sec), 0) + Duration::from_nanos(u64::from(sub));
        packets.push(packet(
            path,
            index,
            header.network,
            ts,
            frame.data,
            frame.origlen,
            frame.caplen,
        )?);
    }
    Ok(packets)
}

/// One pcapng interface: its link type and timestamp units.
struct Interface {
    linktype: Linktype,
    units_per_sec: u64,
    offset_sec: i64,
    snaplen: u32,
}

fn read_pcapng(path: &Path, bytes: &[u8]) -> Result<Vec<Packet>, PcapError> {
    let mut rest = bytes;
    let mut big_endian = false;
    let mut interfaces: Vec<Interface> = Vec::new();
    let mut packets = Vec::new();
    let mut seen_header = false;
    while !rest.is_empty() {
        let index = packets.len() + 1;
        // pcap-parser 0.16 subtracts 12 from a block's length unchecked for
        // block types with a shorter header (process information: overflow
        // panic in debug builds): refuse such lengths first.
        let shb = rest.get(..4) == Some(&[0x0a, 0x0d, 0x0d, 0x0a]);
        if let Some(l) = rest.get(4..8).filter(|_| !shb)
            && let l = [l[0], l[1], l[2], l[3]]
            && let len = if big_endian { u32::from_be_bytes(l) } else { u32::from_le_bytes(l) }
            && len < 12
        {
            return Err(PcapError::Corrupt {
                path: path.to_path_buf(),
                packet: index,
                detail: format!("pcapng block length {len} is shorter than a block's type, length and trailer (12 bytes)"),
            });
        }
        let parsed = if shb {
            pcap_parser::parse_sectionheaderblock(rest).map(|(r, b)| (r, Block::SectionHeader(b)))
        } else if big_endian {
            pcap_parser::parse_block_be(rest)
        } else {
            pcap_parser::parse_block_le(rest)
        };
        let (next, block) = parsed.map_err(|e| match (seen_header, e) {
            (false, e) => PcapError::CorruptHeader {
                path: path.to_path_buf(),
                what: "pcapng section",
                detail: raw_detail(&e),
            },
            (true, e) => record_error(path, index, e),
        })?;
        rest = next;
        seen_header = true;
        match block {
            Block::SectionHeader(shb) => {
                // Interface ids are per section.
                big_endian = shb.big_endian();
                interfaces.clear();
            }
            Block::InterfaceDescription(idb) => interfaces.push(Interface {
                linktype: idb.linktype,
                units_per_sec: idb.ts_resolution().unwrap_or(0),
                offset_sec: idb.ts_offset(),
                snaplen: idb.snaplen,
            }),
            Block::EnhancedPacket(epb) => {
                let iface = interface(path, index, &interfaces, epb.if_id as usize)?;
                let units = (u64::from(epb.ts_high) << 32) | u64::from(epb.ts_low);
                let ts = ng_timestamp(path, index, iface, units)?;
                packets.push(packet(
                    path,
                    index,
                    iface.linktype,
                    ts,
                    epb.data,
                    epb.origlen,
                    epb.caplen,
                )?);
            }
            Block::SimplePacket(spb) => {
                // Simple packets belong to interface 0 and carry no timestamp.
                let iface = interface(path, index, &interfaces, 0)?;
                let caplen = if iface.snaplen == 0 {
                    spb.origlen
                } else {
                    spb.origlen.min(iface.snaplen)
                };
                let data = spb.data.get(..caplen as usize).unwrap_or(spb.data);
                packets.push(packet(
                    path,
                    index,
                    iface.linktype,
                    Duration::ZERO,
                    data,
                    spb.origlen,
                    caplen,
                )?);
            }
            _ => {} // statistics, name resolution, custom blocks: not packets
        }
    }
    Ok(packets)
}

fn interface<'a>(
    path: &Path,
    index: usize,
    ifaces: &'a [Interface],
    id: usize,
) -> Result<&'a Interface, PcapError> {
    ifaces.get(id).ok_or_else(|| PcapError::Corrupt {
        path: path.to_path_buf(),
        packet: index,
        detail: format!(
            "interface id {id} was not described (the section has {} interfaces)",
            ifaces.len()
        ),
    })
}

fn ng_timestamp(
    path: &Path,
    index: usize,
    iface: &Interface,
    units: u64,
) -> Result<Duration, PcapError> {
    if iface.units_per_sec == 0 {
        return Err(PcapError::Corrupt {
            path: path.to_path_buf(),
            packet: index,
            detail: "interface has an invalid timestamp resolution".into(),
        });
    }
    let res = u128::from(iface.units_per_sec);
    let nanos = u128::from(units) * 1_000_000_000 / res;
    let nanos = u64::try_from(nanos).unwrap_or(u64::MAX);
    let base = Duration::from_nanos(nanos);
    Ok(if iface.offset_sec >= 0 {
        base + Duration::from_secs(iface.offset_sec.unsigned_abs())
    } else {
        base.saturating_sub(Duration::from_secs(iface.offset_sec.unsigned_abs()))
    })
}

fn packet(
    path: &Path,
    index: usize,
    linktype: Linktype,
    ts: Duration,
    data: &[u8],
    orig_len: u32,
    caplen: u32,
) -> Result<Packet, PcapError> {
    let bad = |detail: String| PcapError::BadPacket {
        path: path.to_path_buf(),
        packet: index,
        detail,
    };
    let data = data.get(..caplen as usize).unwrap_or(data);
    let frame = match linktype.0 {
        1 => {
            if data.len() < 14 {
                return Err(bad(format!(
                    "{} bytes is shorter than an Ethernet header (14)",
                    data.len()
                )));
            }
            data.to_vec()
        }
        101 => raw_ip(data, None).map_err(bad)?,
        228 => raw_ip(data, Some(ETHERTYPE_IPV4)).map_err(bad)?,
        229 => raw_ip(data, Some(ETHERTYPE_IPV6)).map_err(bad)?,
        113 => sll(data).map_err(bad)?,
        LINKTYPE_SLL2 => sll2(data).map_err(bad)?,
        other => {
            return Err(PcapError::UnknownLinktype {
                path: path.to_path_buf(),
                packet: index,
                linktype: other,
            });
        }
    };
    Ok(Packet {
        index,
        ts,
        data: frame,
        orig_len,
        truncated: caplen < orig_len,
    })
}

/// An Ethernet frame with the given addresses and ethertype around `payload`.
pub fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn raw_ip(data: &[u8], forced: Option<u16>) -> Result<Vec<u8>, String> {
    let ethertype = match (forced, data.first().map(|b| b >> 4)) {
        (Some(t), _) => t,
        (None, Some(4)) => ETHERTYPE_IPV4,
        (None, Some(6)) => ETHERTYPE_IPV6,
        (None, v) => {
            return Err(format!(
                "raw IP packet with IP version {v:?}, expected 4 or 6"
            ));
        }
    };
    Ok(ethernet([0; 6], [0; 6], ethertype, data))
}

/// Linux cooked v1: type(2) arphrd(2) addr_len(2) addr(8) protocol(2).
fn sll(data: &[u8]) -> Result<Vec<u8>, String> {
    if data.len() < 16 {
        return Err(format!(
            "{} bytes is shorter than a Linux SLL header (16)",
            data.len()
        ));
    }
    let addr_len = u16::from_be_bytes([data[4], data[5]]);
    let proto = u16::from_be_bytes([data[14], data[15]]);
    cooked(&data[6..14], addr_len.into(), proto, &data[16..])
}

/// Linux cooked v2: protocol(2) reserved(2) ifindex(4) arphrd(2) type(1) addr_len(1) addr(8).
fn sll2(data: &[u8]) -> Result<Vec<u8>, String> {
    if data.len() < 20 {
        return Err(format!(
            "{} bytes is shorter than a Linux SLL2 header (20)",
            data.len()
        ));
    }
    let proto = u16::from_be_bytes([data[0], data[1]]);
    cooked(&data[12..20], data[11].into(), proto, &data[20..])
}

/// The source MAC comes from the cooked address when it is a 6-byte one;
/// the destination is unknown in cooked captures (zeros).
fn cooked(addr: &[u8], addr_len: usize, proto: u16, payload: &[u8]) -> Result<Vec<u8>, String> {
    if proto < 0x0600 {
        return Err(format!(
            "Linux cooked protocol 0x{proto:04x} is not an ethertype (802.2/802.3/CAN frames are not supported)"
        ));
    }
    let mut src = [0u8; 6];
    if addr_len == 6 {
        src.copy_from_slice(&addr[..6]);
    }
    Ok(ethernet([0; 6], src, proto, payload))
}

/// Writes classic pcap (microsecond timestamps, Ethernet link type).
pub struct PcapWriter<W: Write> {
    out: W,
}

/// Largest packet a written capture declares it may hold.
const WRITE_SNAPLEN: u32 = 262_144;

impl<W: Write> PcapWriter<W> {
    /// Writes the 24-byte file header.
    pub fn new(mut out: W) -> std::io::Result<Self> {
        let mut h = Vec::with_capacity(24);
        h.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        h.extend_from_slice(&2u16.to_le_bytes());
        h.extend_from_slice(&4u16.to_le_bytes());
        h.extend_from_slice(&0i32.to_le_bytes()); // thiszone
        h.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
        h.extend_from_slice(&WRITE_SNAPLEN.to_le_bytes());
        h.extend_from_slice(&1u32.to_le_bytes()); // LINKTYPE_ETHERNET
        out.write_all(&h)?;
        Ok(PcapWriter { out })
    }

    /// Appends one frame; `orig_len` is its length on the wire (≥ `data.len()`).
    pub fn write(&mut self, ts: Duration, data: &[u8], orig_len: u32) -> std::io::Result<()> {
        let caplen = u32::try_from(data.len())
            .map_err(|_| std::io::Error::other("packet larger than 4 GiB"))?;
        let secs = u32::try_from(ts.as_secs())
            .map_err(|_| std::io::Error::other("timestamp past 2106"))?;
        let mut r = Vec::with_capacity(16 + data.len());
        r.extend_from_slice(&secs.to_le_bytes());
        r.extend_from_slice(&ts.subsec_micros().to_le_bytes());
        r.extend_from_slice(&caplen.to_le_bytes());
        r.extend_from_slice(&orig_len.max(caplen).to_le_bytes());
        r.extend_from_slice(data);
        self.out.write_all(&r)
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Writes `packets` (`data`, `ts`, `orig_len`) to a classic pcap file.
pub fn write_file(path: &Path, packets: &[Packet]) -> Result<(), PcapError> {
    let err = |source| PcapError::Write {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(path).map_err(err)?;
    let mut w = PcapWriter::new(std::io::BufWriter::new(file)).map_err(err)?;
    for p in packets {
        w.write(p.ts, &p.data, p.orig_len).map_err(err)?;
    }
    w.into_inner().flush().map_err(err)
}
