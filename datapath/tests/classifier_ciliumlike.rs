//! The Cilium-like chain programs under BPF_PROG_TEST_RUN: verdicts, and
//! DNAT / reverse NAT with valid IPv4, TCP and UDP checksums.

mod common;

use std::net::SocketAddrV4;

use aya::TestRun;
use aya::programs::TestRunOptions;
use common::*;
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use tclab_datapath::loader::{CilAction, CilProgram, CiliumLikeProgram, Verdict};

const TC_ACT_REDIRECT: u32 = 7;

/// Run a frame; returns (verdict, frame after the program).
fn run(p: &mut CiliumLikeProgram, frame: &[u8]) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; frame.len() + 64];
    let res = p
        .program_mut()
        .test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ..Default::default() })
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e:?}"));
    out.truncate(res.data_size_out as usize);
    (res.return_value, out)
}

struct Parsed {
    src: SocketAddrV4,
    dst: SocketAddrV4,
    ip_csum_ok: bool,
    l4_csum_ok: bool,
    udp_csum: Option<u16>,
}

/// Addresses and checksum validity of an IPv4 TCP/UDP frame.
fn parse(frame: &[u8]) -> Parsed {
    let p = SlicedPacket::from_ethernet(frame).expect("parse frame");
    let Some(NetSlice::Ipv4(ip)) = &p.net else { panic!("not IPv4") };
    let h = ip.header().to_header();
    let ip_csum_ok = h.header_checksum == h.calc_header_checksum();
    let payload = ip.payload().payload;
    let (sport, dport, l4_csum_ok, udp_csum) = match &p.transport {
        Some(TransportSlice::Tcp(t)) => {
            let want = t.to_header().calc_checksum_ipv4(&h, t.payload()).expect("tcp checksum");
            (t.source_port(), t.destination_port(), want == t.checksum(), None)
        }
        Some(TransportSlice::Udp(u)) => {
            let got = u.checksum();
            let want = u.to_header().calc_checksum_ipv4(&h, u.payload()).expect("udp checksum");
            (u.source_port(), u.destination_port(), got == 0 || got == want, Some(got))
        }
        other => panic!("unexpected transport {other:?}, payload {payload:?}"),
    };
    Parsed {
        src: SocketAddrV4::new(h.source.into(), sport),
        dst: SocketAddrV4::new(h.destination.into(), dport),
        ip_csum_ok,
        l4_csum_ok,
        udp_csum,
    }
}

#[test]
fn every_program_gives_the_configured_verdict() {
    if !tclab_net::require::root("classifier_ciliumlike::every_program_gives_the_configured_verdict") {
        return;
    }
    let frame = tcp(sa("10.0.0.1:40000"), sa("10.0.0.2:80"), TCP_SYN, b"");
    let actions = [
        (CilAction::Ok, 0u32),
        (CilAction::Unspec, u32::MAX),
        (CilAction::Drop, 2),
        (CilAction::Redirect { ifindex: 1 }, TC_ACT_REDIRECT),
    ];
    for prog in CilProgram::ALL {
        for (action, want) in actions {
            let mut p = CiliumLikeProgram::load(prog, action).unwrap_or_else(|e| panic!("{prog:?} {action:?}: {e}"));
            assert_eq!(p.name(), prog.name());
            let (verdict, out) = run(&mut p, &frame);
            assert_eq!(verdict, want, "{} with {action:?}", prog.name());
            assert_eq!(out, frame, "{} with {action:?} must not alter the packet", prog.name());
            assert_eq!(p.stats().unwrap().packets, 1);
        }
    }
}

#[test]
fn dnat_rewrites_service_to_backend_with_valid_checksums() {
    if !tclab_net::require::root("classifier_ciliumlike::dnat_rewrites_service_to_backend_with_valid_checksums") {
        return;
    }
    let service: SocketAddrV4 = "10.96.0.10:80".parse().unwrap();
    let backend: SocketAddrV4 = "10.244.1.7:8080".parse().unwrap();
    let client: SocketAddrV4 = "10.0.0.1:40000".parse().unwrap();
    let action = CilAction::Dnat { service, backend, then: Verdict::Unspec };
    let mut p = CiliumLikeProgram::load(CilProgram::FromContainer, action).expect("load");

    let frames = [
        tcp(client.into(), service.into(), TCP_ACK | TCP_PSH, b"GET / HTTP/1.1\r\n\r\n"),
        with_ipv4_options(&tcp(client.into(), service.into(), TCP_SYN, b""), &[1, 1, 1, 0]),
        udp(client.into(), service.into(), b"query"),
    ];
    for frame in &frames {
        assert!(parse(frame).ip_csum_ok && parse(frame).l4_csum_ok, "test frames start valid");
        let (verdict, out) = run(&mut p, frame);
        assert_eq!(verdict, u32::MAX);
        let got = parse(&out);
        assert_eq!((got.src, got.dst), (client, backend));
        assert!(got.ip_csum_ok, "IPv4 header checksum after DNAT");
        assert!(got.l4_csum_ok, "L4 checksum after DNAT");
        assert_eq!(out.len(), frame.len());
    }

    // the backend's reply is rewritten back to the service address
    let reply = tcp(backend.into(), client.into(), TCP_ACK, b"HTTP/1.1 200 OK\r\n\r\n");
    let (_, out) = run(&mut p, &reply);
    let got = parse(&out);
    assert_eq!((got.src, got.dst), (service, client));
    assert!(got.ip_csum_ok && got.l4_csum_ok, "checksums after reverse NAT");

    // anything else is untouched
    let other = tcp(client.into(), "10.96.0.11:80".parse().unwrap(), TCP_SYN, b"");
    assert_eq!(run(&mut p, &other), (u32::MAX, other.clone()));

    let stats = p.stats().unwrap();
    assert_eq!((stats.packets, stats.dnat, stats.reverse_nat, stats.rewrite_failed), (5, 3, 1, 0));
}

#[test]
fn dnat_keeps_a_zero_udp_checksum_zero_and_applies_its_verdict() {
    if !tclab_net::require::root("classifier_ciliumlike::dnat_keeps_a_zero_udp_checksum_zero_and_applies_its_verdict") {
        return;
    }
    let service: SocketAddrV4 = "10.96.0.10:53".parse().unwrap();
    let backend: SocketAddrV4 = "10.244.1.7:5353".parse().unwrap();
    let action = CilAction::Dnat { service, backend, then: Verdict::Pass };
    let mut p = CiliumLikeProgram::load(CilProgram::ToNetdev, action).expect("load");
    let mut frame = udp(sa("10.0.0.1:40000"), service.into(), b"query");
    frame[40..42].copy_from_slice(&[0, 0]); // UDP checksum "none"
    let (verdict, out) = run(&mut p, &frame);
    assert_eq!(verdict, 0, "TC_ACT_OK after the rewrite, as configured");
    let got = parse(&out);
    assert_eq!(got.dst, backend);
    assert_eq!(got.udp_csum, Some(0));
    assert!(got.ip_csum_ok);
}
