//! The generated fixtures are deterministic, match the committed files, and
//! are well-formed TCP conversations (checksums, seq/ack).
//!
//! `TCLAB_UPDATE_FIXTURES=1 cargo test -p tclab-lab --test fixtures_generation`
//! rewrites `fixtures/` (the same as `tclab fixtures`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use tclab_lab::{fixtures, frame, pcap};

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

#[test]
fn fixtures_regenerate_byte_identical_to_committed() {
    if std::env::var_os("TCLAB_UPDATE_FIXTURES").is_some() {
        fixtures::generate_all(&fixtures_dir()).expect("write fixtures");
    }
    let tmp = tempfile::tempdir().unwrap();
    let written = fixtures::generate_all(tmp.path()).unwrap();
    assert_eq!(written.len(), fixtures::all().len());
    for path in written {
        let name = path.file_name().unwrap();
        let fresh = std::fs::read(&path).unwrap();
        let committed = std::fs::read(fixtures_dir().join(name)).unwrap_or_else(|e| {
            panic!(
                "fixtures/{} is not committed ({e}); run with TCLAB_UPDATE_FIXTURES=1",
                name.display()
            )
        });
        assert!(
            fresh == committed,
            "fixtures/{} differs from a fresh generation; run with TCLAB_UPDATE_FIXTURES=1",
            name.display()
        );
    }
}

#[test]
fn fixtures_generation_is_deterministic() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    fixtures::generate_all(a.path()).unwrap();
    fixtures::generate_all(b.path()).unwrap();
    for f in fixtures::all() {
        let x = std::fs::read(a.path().join(f.file)).unwrap();
        let y = std::fs::read(b.path().join(f.file)).unwrap();
        assert_eq!(x, y, "{}", f.file);
    }
}

#[test]
fn fixtures_have_valid_checksums_and_increasing_timestamps() {
    for f in fixtures::all() {
        let packets = f.packets().unwrap();
        assert!(!packets.is_empty(), "{}", f.file);
        for w in packets.windows(2) {
            assert!(w[0].ts < w[1].ts, "{}: timestamps must increase", f.file);
        }
        for p in &packets {
            let s = frame::summarize(&p.data);
            if s.proto != "ARP" {
                assert_eq!(
                    s.checksums_ok,
                    Some(true),
                    "{} packet {}: {s}",
                    f.file,
                    p.index
                );
            }
        }
    }
}

/// Next sequence number per direction; every segment must continue it and
/// every ACK must acknowledge exactly what the other side sent.
#[test]
fn fixtures_tcp_sequence_and_ack_numbers_are_consistent() {
    for f in fixtures::all() {
        let mut next: HashMap<(String, String), u32> = HashMap::new();
        for p in f.packets().unwrap() {
            let sliced = SlicedPacket::from_ethernet(&p.data).unwrap();
            let (src, dst) = match &sliced.net {
                Some(NetSlice::Ipv4(v4)) => (
                    v4.header().source_addr().to_string(),
                    v4.header().destination_addr().to_string(),
                ),
                Some(NetSlice::Ipv6(v6)) => (
                    v6.header().source_addr().to_string(),
                    v6.header().destination_addr().to_string(),
                ),
                None => continue,
            };
            let Some(TransportSlice::Tcp(tcp)) = &sliced.transport else {
                continue;
            };
            let fwd = (
                format!("{src}:{}", tcp.source_port()),
                format!("{dst}:{}", tcp.destination_port()),
            );
            let rev = (fwd.1.clone(), fwd.0.clone());
            if let Some(want) = next.get(&fwd) {
                assert_eq!(
                    tcp.sequence_number(),
                    *want,
                    "{} packet {}: seq",
                    f.file,
                    p.index
                );
            }
            if tcp.ack()
                && let Some(want) = next.get(&rev)
            {
                assert_eq!(
                    tcp.acknowledgment_number(),
                    *want,
                    "{} packet {}: ack",
                    f.file,
                    p.index
                );
            }
            let used = tcp.payload().len() as u32 + u32::from(tcp.syn() || tcp.fin());
            next.insert(fwd, tcp.sequence_number().wrapping_add(used));
        }
    }
}

#[test]
fn fixtures_cover_the_required_cases() {
    let req = |name: &str| {
        let f = fixtures::all()
            .into_iter()
            .find(|f| f.file == name)
            .unwrap_or_else(|| panic!("no fixture {name}"));
        f.packets().unwrap()
    };
    let payloads = |ps: &[pcap::Packet]| -> String {
        ps.iter()
            .filter_map(
                |p| match SlicedPacket::from_ethernet(&p.data).ok()?.transport? {
                    TransportSlice::Tcp(t) => {
                        Some(String::from_utf8_lossy(t.payload()).into_owned())
                    }
                    _ => None,
                },
            )
            .collect()
    };
    assert_eq!(
        payloads(&req("http-keepalive.pcap"))
            .matches("GET ")
            .count(),
        3
    );
    let split = req("http-split-request-line.pcap");
    assert!(
        payloads(&split).contains("GET /split"),
        "reassembled request line"
    );
    assert!(!split.iter().any(|p| frame::summarize(&p.data).traceparent
        && payloads(std::slice::from_ref(p)).starts_with("GET")));
    assert!(
        req("http-vlan.pcap")
            .iter()
            .all(|p| frame::summarize(&p.data).vlan == Some(100))
    );
    assert!(
        req("http-ipv6.pcap")
            .iter()
            .all(|p| p.data[12..14] == [0x86, 0xdd])
    );
    assert!(
        req("arp.pcap")
            .iter()
            .all(|p| p.data[12..14] == [0x08, 0x06])
    );
    let refused = req("tcp-syn-closed-port.pcap");
    assert_eq!(
        refused
            .iter()
            .map(|p| frame::summarize(&p.data).tcp_flags)
            .collect::<Vec<_>>(),
        ["S", "R."]
    );
    assert_eq!(
        payloads(&req("traceparent-invalid.pcap"))
            .matches("traceparent: ")
            .count(),
        6
    );
}

#[test]
fn fixtures_readme_lists_every_file_with_its_addresses() {
    let readme = std::fs::read_to_string(fixtures_dir().join("README.md")).unwrap();
    for f in fixtures::all() {
        let line = readme
            .lines()
            .find(|l| l.contains(&format!("`{}`", f.file)));
        assert!(
            line.is_some(),
            "fixtures/README.md does not list {}",
            f.file
        );
    }
    for entry in std::fs::read_dir(fixtures_dir()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".pcap") || name.ends_with(".pcapng") {
            assert!(
                readme.contains(&format!("`{name}`")),
                "fixtures/README.md does not describe {name}"
            );
        }
    }
}
