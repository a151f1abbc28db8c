//! pcap/pcapng reading: link types, several pcapng interfaces, damaged files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tclab_lab::pcap::{self, Packet, PcapError, PcapWriter};

const P: &str = "cap.pcap";

fn path() -> PathBuf {
    PathBuf::from(P)
}

/// An Ethernet/IPv4/UDP frame built with etherparse (used as payload everywhere).
fn udp_frame(payload: &[u8]) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .udp(5000, 53);
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

fn ip_part(frame: &[u8]) -> &[u8] {
    &frame[14..]
}

/// A classic little-endian pcap header with the given magic and link type.
fn classic_header(magic: u32, linktype: u32) -> Vec<u8> {
    let mut h = magic.to_le_bytes().to_vec();
    h.extend_from_slice(&2u16.to_le_bytes());
    h.extend_from_slice(&4u16.to_le_bytes());
    h.extend_from_slice(&[0; 8]);
    h.extend_from_slice(&65535u32.to_le_bytes());
    h.extend_from_slice(&linktype.to_le_bytes());
    h
}

fn classic_record(out: &mut Vec<u8>, sec: u32, frac: u32, data: &[u8], orig: u32) {
    for v in [sec, frac, data.len() as u32, orig] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(data);
}

fn classic(linktype: u32, records: &[&[u8]]) -> Vec<u8> {
    let mut f = classic_header(0xa1b2_c3d4, linktype);
    for (i, r) in records.iter().enumerate() {
        classic_record(&mut f, 100 + i as u32, 5, r, r.len() as u32);
    }
    f
}

#[test]
fn writer_output_reads_back_identically() {
    let frames = [udp_frame(b"one"), udp_frame(b"two")];
    let mut w = PcapWriter::new(Vec::new()).unwrap();
    w.write(
        Duration::new(1_700_000_000, 123_456_000),
        &frames[0],
        frames[0].len() as u32,
    )
    .unwrap();
    w.write(Duration::new(1_700_000_001, 999_000), &frames[1], 1500)
        .unwrap();
    let bytes = w.into_inner();
    assert_eq!(
        &bytes[..4],
        &[0xd4, 0xc3, 0xb2, 0xa1],
        "classic LE microsecond magic"
    );
    assert_eq!(
        u32::from_le_bytes(bytes[20..24].try_into().unwrap()),
        1,
        "LINKTYPE_ETHERNET"
    );
    let got = pcap::read_bytes(&path(), &bytes).unwrap();
    assert_eq!(
        got,
        [
            Packet {
                index: 1,
                ts: Duration::new(1_700_000_000, 123_456_000),
                data: frames[0].clone(),
                orig_len: frames[0].len() as u32,
                truncated: false
            },
            Packet {
                index: 2,
                ts: Duration::new(1_700_000_001, 999_000),
                data: frames[1].clone(),
                orig_len: 1500,
                truncated: true
            },
        ]
    );
}

#[test]
fn write_file_and_read_file_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("out.pcap");
    let frame = udp_frame(b"x");
    let packets = vec![Packet {
        index: 1,
        ts: Duration::from_secs(5),
        data: frame.clone(),
        orig_len: frame.len() as u32,
        truncated: false,
    }];
    pcap::write_file(&p, &packets).unwrap();
    assert_eq!(pcap::read_file(&p).unwrap(), packets);
}

#[test]
fn nanosecond_and_big_endian_classic_files() {
    let frame = udp_frame(b"ns");
    let mut ns = classic_header(0xa1b2_3c4d, 1);
    classic_record(&mut ns, 7, 123_456_789, &frame, frame.len() as u32);
    let got = pcap::read_bytes(&path(), &ns).unwrap();
    assert_eq!(got[0].ts, Duration::new(7, 123_456_789));

    let mut be = 0xa1b2_c3d4u32.to_be_bytes().to_vec();
    be.extend_from_slice(&2u16.to_be_bytes());
    be.extend_from_slice(&4u16.to_be_bytes());
    be.extend_from_slice(&[0; 8]);
    be.extend_from_slice(&65535u32.to_be_bytes());
    be.extend_from_slice(&1u32.to_be_bytes());
    for v in [9u32, 500_000, frame.len() as u32, frame.len() as u32] {
        be.extend_from_slice(&v.to_be_bytes());
    }
    be.extend_from_slice(&frame);
    let got = pcap::read_bytes(&path(), &be).unwrap();
    assert_eq!(
        (got[0].ts, &got[0].data),
        (Duration::new(9, 500_000_000), &frame)
    );
}

/// Linux cooked v1 header: packet type, ARPHRD_ETHER, address length, address, protocol.
fn sll_header(addr: [u8; 6], proto: u16) -> Vec<u8> {
    let mut h = vec![0, 4, 0, 1, 0, 6];
    h.extend_from_slice(&addr);
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(&proto.to_be_bytes());
    h
}

#[test]
fn linux_cooked_sll_becomes_ethernet() {
    let frame = udp_frame(b"sll");
    let mut rec = sll_header([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff], 0x0800);
    rec.extend_from_slice(ip_part(&frame));
    let got = pcap::read_bytes(&path(), &classic(113, &[&rec])).unwrap();
    let d = &got[0].data;
    assert_eq!(&d[0..6], &[0; 6], "destination unknown in cooked captures");
    assert_eq!(
        &d[6..12],
        &[0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff],
        "source from the SLL address"
    );
    assert_eq!(&d[12..14], &[0x08, 0x00]);
    assert_eq!(&d[14..], ip_part(&frame));
    assert_eq!(
        got[0].orig_len,
        rec.len() as u32,
        "orig_len is in the capture's own link type"
    );
}

#[test]
fn linux_cooked_sll2_becomes_ethernet() {
    let frame = udp_frame(b"sll2");
    let mut rec = 0x0800u16.to_be_bytes().to_vec();
    rec.extend_from_slice(&[0, 0]); // reserved
    rec.extend_from_slice(&7u32.to_be_bytes()); // ifindex
    rec.extend_from_slice(&1u16.to_be_bytes()); // ARPHRD_ETHER
    rec.extend_from_slice(&[0, 6]); // packet type, address length
    rec.extend_from_slice(&[1, 2, 3, 4, 5, 6, 0, 0]);
    rec.extend_from_slice(ip_part(&frame));
    let got = pcap::read_bytes(&path(), &classic(276, &[&rec])).unwrap();
    assert_eq!(&got[0].data[6..12], &[1, 2, 3, 4, 5, 6]);
    assert_eq!(
        &got[0].data[12..],
        &frame[12..],
        "ethertype and IP packet kept"
    );
}

#[test]
fn cooked_frames_that_are_not_ethertypes_are_errors() {
    let mut rec = sll_header([0; 6], 0x0004); // 802.2 LLC
    rec.extend_from_slice(&[0; 20]);
    let err = pcap::read_bytes(&path(), &classic(113, &[&rec])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cap.pcap: packet 1: Linux cooked protocol 0x0004 is not an ethertype (802.2/802.3/CAN frames are not supported)"
    );
    let short = pcap::read_bytes(&path(), &classic(113, &[&[0u8; 10]])).unwrap_err();
    assert_eq!(
        short.to_string(),
        "cap.pcap: packet 1: 10 bytes is shorter than a Linux SLL header (16)"
    );
}

#[test]
fn raw_ip_link_types_are_wrapped_in_ethernet() {
    let v4 = udp_frame(b"raw");
    let v6 = {
        let b = etherparse::PacketBuilder::ipv6([0xfd; 16], [0xfe; 16], 64).udp(1, 2);
        let mut out = Vec::new();
        b.write(&mut out, b"v6").unwrap();
        out
    };
    let got = pcap::read_bytes(&path(), &classic(101, &[ip_part(&v4), &v6])).unwrap();
    assert_eq!(&got[0].data[12..14], &[0x08, 0x00]);
    assert_eq!(&got[0].data[14..], ip_part(&v4));
    assert_eq!(&got[1].data[12..14], &[0x86, 0xdd]);
    assert_eq!(&got[1].data[14..], &v6[..]);
    let got = pcap::read_bytes(&path(), &classic(228, &[ip_part(&v4)])).unwrap();
    assert_eq!(&got[0].data[12..14], &[0x08, 0x00]);
    let got = pcap::read_bytes(&path(), &classic(229, &[&v6])).unwrap();
    assert_eq!(&got[0].data[12..14], &[0x86, 0xdd]);
    let err = pcap::read_bytes(&path(), &classic(101, &[&[0x50, 0, 0, 0]])).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("cap.pcap: packet 1: raw IP packet with IP version Some(5)"),
        "{err}"
    );
}

// pcapng blocks, little endian.
fn block(kind: u32, body: &[u8]) -> Vec<u8> {
    let mut body = body.to_vec();
    while !body.len().is_multiple_of(4) {
        body.push(0);
    }
    let len = (body.len() + 12) as u32;
    let mut b = kind.to_le_bytes().to_vec();
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(&body);
    b.extend_from_slice(&len.to_le_bytes());
    b
}

fn shb() -> Vec<u8> {
    let mut body = 0x1a2b_3c4du32.to_le_bytes().to_vec();
    body.extend_from_slice(&1u16.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes());
    body.extend_from_slice(&(-1i64).to_le_bytes());
    block(0x0a0d_0d0a, &body)
}

fn idb(linktype: u16, tsresol: Option<u8>) -> Vec<u8> {
    let mut body = linktype.to_le_bytes().to_vec();
    body.extend_from_slice(&[0, 0]);
    body.extend_from_slice(&0u32.to_le_bytes());
    if let Some(r) = tsresol {
        body.extend_from_slice(&9u16.to_le_bytes()); // if_tsresol
        body.extend_from_slice(&1u16.to_le_bytes());
        body.extend_from_slice(&[r, 0, 0, 0]);
        body.extend_from_slice(&[0, 0, 0, 0]); // opt_endofopt
    }
    block(1, &body)
}

fn epb(if_id: u32, ts: u64, data: &[u8], orig: u32) -> Vec<u8> {
    let mut body = if_id.to_le_bytes().to_vec();
    body.extend_from_slice(&((ts >> 32) as u32).to_le_bytes());
    body.extend_from_slice(&(ts as u32).to_le_bytes());
    body.extend_from_slice(&(data.len() as u32).to_le_bytes());
    body.extend_from_slice(&orig.to_le_bytes());
    body.extend_from_slice(data);
    block(6, &body)
}

#[test]
fn pcapng_with_several_interfaces_link_types_and_resolutions() {
    let eth = udp_frame(b"eth");
    let raw = udp_frame(b"raw");
    let mut f = shb();
    f.extend(idb(1, None)); // Ethernet, default microseconds
    f.extend(idb(228, Some(9))); // raw IPv4, nanoseconds
    f.extend(epb(0, 1_500_000, &eth, eth.len() as u32));
    f.extend(epb(1, 2_000_000_123, ip_part(&raw), 4000));
    let mut isb = 0u32.to_le_bytes().to_vec(); // interface statistics: not a packet
    isb.extend_from_slice(&[0; 8]);
    f.extend(block(5, &isb));
    let got = pcap::read_bytes(Path::new("multi.pcapng"), &f).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(
        (got[0].index, got[0].ts, &got[0].data),
        (1, Duration::from_millis(1500), &eth)
    );
    assert_eq!(got[1].ts, Duration::new(2, 123));
    assert_eq!(&got[1].data[12..], &raw[12..]);
    assert!(got[1].truncated && got[1].orig_len == 4000);
}

#[test]
fn pcapng_simple_packets_and_a_second_section() {
    let frame = udp_frame(b"spb");
    let mut f = shb();
    f.extend(idb(1, None));
    let mut spb = (frame.len() as u32).to_le_bytes().to_vec();
    spb.extend_from_slice(&frame);
    f.extend(block(3, &spb));
    // A new section restarts interface numbering: its interface 0 is raw IP.
    f.extend(shb());
    f.extend(idb(101, None));
    f.extend(epb(0, 10, ip_part(&frame), ip_part(&frame).len() as u32));
    let got = pcap::read_bytes(&path(), &f).unwrap();
    assert_eq!(got[0].data, frame);
    assert_eq!(got[0].ts, Duration::ZERO);
    assert_eq!(&got[1].data[12..], &frame[12..]);
    assert_eq!(got[1].index, 2);
}

#[test]
fn pcapng_packet_on_an_undescribed_interface() {
    let frame = udp_frame(b"x");
    let mut f = shb();
    f.extend(idb(1, None));
    f.extend(epb(0, 1, &frame, frame.len() as u32));
    f.extend(epb(3, 2, &frame, frame.len() as u32));
    let err = pcap::read_bytes(&path(), &f).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cap.pcap: packet 2: corrupt record: interface id 3 was not described (the section has 1 interfaces)"
    );
}

#[test]
fn truncated_files_name_the_packet() {
    let frame = udp_frame(b"abcdef");
    let full = classic(1, &[&frame, &frame, &frame]);
    let cut = &full[..full.len() - frame.len() - 10]; // inside record 3
    let err = pcap::read_bytes(&path(), cut).unwrap_err();
    assert!(
        matches!(err, PcapError::TruncatedFile { packet: 3, .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "cap.pcap: packet 3: the file ends inside the packet record (truncated file)"
    );
    let header_only_cut = &full[..24 + 8]; // inside the first record header
    let err = pcap::read_bytes(&path(), header_only_cut).unwrap_err();
    assert!(
        matches!(err, PcapError::TruncatedFile { packet: 1, .. }),
        "{err:?}"
    );

    let mut ng = shb();
    ng.extend(idb(1, None));
    ng.extend(epb(0, 1, &frame, frame.len() as u32));
    let cut = &ng[..ng.len() - 6];
    let err = pcap::read_bytes(&path(), cut).unwrap_err();
    assert!(
        matches!(err, PcapError::TruncatedFile { packet: 1, .. }),
        "{err:?}"
    );
}

#[test]
fn corrupt_headers_and_non_captures() {
    let err = pcap::read_bytes(&path(), &classic_header(0xa1b2_c3d4, 1)[..10]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cap.pcap: corrupt pcap file header: 10 bytes, expected at least 24"
    );
    let err = pcap::read_bytes(&path(), b"GET / HTTP/1.1\r\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "cap.pcap: not a pcap or pcapng file (starts with 47 45 54 20), expected a capture from tcpdump or Wireshark"
    );
    let err = pcap::read_bytes(&path(), b"").unwrap_err();
    assert!(matches!(err, PcapError::NotPcap { .. }));
    let mut bad_ng = shb();
    bad_ng[8..12].copy_from_slice(&[9, 9, 9, 9]); // byte-order magic
    let err = pcap::read_bytes(&path(), &bad_ng).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("cap.pcap: corrupt pcapng section header: "),
        "{err}"
    );
    let err = pcap::read_file(Path::new("/nonexistent/x.pcap")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("failed to read /nonexistent/x.pcap: "),
        "{err}"
    );
}

#[test]
fn unknown_link_type_names_file_packet_and_type() {
    let err = pcap::read_bytes(&path(), &classic(105, &[&[0u8; 30]])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cap.pcap: packet 1: unsupported link type 105, expected Ethernet (1), raw IP (101, 228, 229), Linux SLL (113) or SLL2 (276)"
    );
    let mut f = shb();
    f.extend(idb(1, None));
    f.extend(idb(147, None)); // LINKTYPE_USER0 on the second interface
    let frame = udp_frame(b"x");
    f.extend(epb(0, 1, &frame, frame.len() as u32));
    f.extend(epb(1, 2, &frame, frame.len() as u32));
    let err = pcap::read_bytes(&path(), &f).unwrap_err();
    assert!(
        matches!(
            err,
            PcapError::UnknownLinktype {
                packet: 2,
                linktype: 147,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn snaplen_truncated_packets_are_flagged_not_dropped() {
    let frame = udp_frame(&[7; 100]);
    let mut f = classic_header(0xa1b2_c3d4, 1);
    classic_record(&mut f, 1, 0, &frame[..60], frame.len() as u32);
    classic_record(&mut f, 2, 0, &frame, frame.len() as u32);
    let got = pcap::read_bytes(&path(), &f).unwrap();
    assert!(got[0].truncated && got[0].data.len() == 60 && got[0].orig_len == frame.len() as u32);
    assert!(!got[1].truncated);
}

#[test]
fn frames_shorter_than_ethernet_are_errors() {
    let err = pcap::read_bytes(&path(), &classic(1, &[&udp_frame(b"ok"), &[1, 2, 3]])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cap.pcap: packet 2: 3 bytes is shorter than an Ethernet header (14)"
    );
}

#[test]
fn tcpdump_recorded_fixture_reads() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/recorded-curl-get.pcap");
    let got = pcap::read_file(&p).unwrap();
    assert_eq!(got.len(), 12);
    assert!(
        got.iter()
            .all(|p| !p.truncated && p.data[12..14] == [0x08, 0x00])
    );
    assert!(got.windows(2).all(|w| w[0].ts <= w[1].ts));
    assert_eq!(
        got.iter().map(|p| p.index).collect::<Vec<_>>(),
        (1..=12).collect::<Vec<_>>()
    );
}
