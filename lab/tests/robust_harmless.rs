//! The datapath never harms traffic (issue #9): every fixture, a capture of
//! awkward packets (IPv4 options, IPv4 and IPv6 fragments, zero-length TCP
//! segments, a snaplen-truncated packet) and the fuzz corpus are replayed
//! through the agent's chain (`tclab replay`'s code, egress and ingress)
//! and every frame comes out byte-identical; tshark (checksums checked)
//! finds nothing in the output that was not already in the input. The
//! programs that do alter packets (context propagation's IP option,
//! Cilium-like DNAT) produce frames tshark finds valid, lengths and
//! checksums included.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tclab_datapath::frames::{self, TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN, TP, sa};
use tclab_lab::adhoc::{self, ChainChoice};
use tclab_lab::frame::internet_checksum;
use tclab_lab::pcap::Packet;
use tclab_lab::runner::{self, KernelContext, RunOptions, Status};
use tclab_lab::snapshot::{PendingWrites, SnapshotStore};

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("lab/ has a parent")
}

fn root(test: &str) -> bool {
    tclab_net::require::root(test)
        && tclab_net::require::program(test, "tshark", "apt-get install tshark (see .ci/run)")
}

/// Frames with an error-level tshark finding (malformed, bad checksum,
/// bad length), checksums validated. 1-based frame numbers.
fn tshark_errors(pcap: &Path) -> BTreeSet<usize> {
    let out = Command::new("tshark")
        .args(["-r"])
        .arg(pcap)
        .args(["-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE"])
        .args(["-T", "fields", "-e", "frame.number", "-e", "_ws.expert.severity", "-e", "_ws.malformed"])
        .output()
        .expect("run tshark");
    assert!(out.status.success(), "tshark on {}: {}", pcap.display(), String::from_utf8_lossy(&out.stderr));
    const ERROR: u32 = 0x0080_0000; // PI_ERROR
    let mut bad = BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut f = line.split('\t');
        let n: usize = f.next().and_then(|n| n.parse().ok()).expect("frame number");
        let severities = f.next().unwrap_or("");
        let malformed = f.next().unwrap_or("");
        if !malformed.is_empty() || severities.split(',').filter_map(|s| s.parse::<u32>().ok()).any(|s| s >= ERROR) {
            bad.insert(n);
        }
    }
    bad
}

fn write(path: &Path, frames: &[Vec<u8>]) {
    let packets: Vec<Packet> = frames
        .iter()
        .enumerate()
        .map(|(i, f)| Packet { index: i + 1, ts: Duration::from_millis(i as u64), data: f.clone(), orig_len: f.len() as u32, truncated: false })
        .collect();
    tclab_lab::pcap::write_file(path, &packets).expect("write pcap");
}

/// An untagged IPv4 frame cut into two fragments after `at` bytes of its
/// IP payload (a multiple of 8).
fn ipv4_fragments(frame: &[u8], at: usize) -> [Vec<u8>; 2] {
    assert_eq!(at % 8, 0);
    let (eth, ip, payload) = (&frame[..14], &frame[14..34], &frame[34..]);
    let part = |data: &[u8], offset: usize, more: bool| {
        let mut h = ip.to_vec();
        h[2..4].copy_from_slice(&(20 + data.len() as u16).to_be_bytes());
        h[6..8].copy_from_slice(&((u16::from(more) << 13) | (offset / 8) as u16).to_be_bytes());
        h[10..12].copy_from_slice(&[0, 0]);
        let c = internet_checksum(&[&h]);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        [eth, &h, data].concat()
    };
    [part(&payload[..at], 0, true), part(&payload[at..], at, false)]
}

/// The awkward capture: client 10.0.0.1 / fd00::1, server (local) 10.0.0.2 / fd00::2.
fn awkward_capture(dir: &Path) -> (PathBuf, usize) {
    let (c, s) = (sa("10.0.0.1:40000"), sa("10.0.0.2:80"));
    let (c6, s6) = (sa("[fd00::1]:40001"), sa("[fd00::2]:80"));
    let req = frames::request("GET", "/awkward", &[&format!("traceparent: {TP}")]);
    let mut out = vec![
        frames::tcp(c, s, TCP_SYN, b""),
        frames::tcp(s, c, TCP_SYN | TCP_ACK, b""),
        frames::tcp(c, s, TCP_ACK, b""),
        frames::tcp(c, s, TCP_ACK | TCP_PSH, b""), // zero-length PSH
        // IPv4 options: NOP, NOP, NOP, end; then a record-route option
        frames::with_ipv4_options(&frames::tcp(c, s, TCP_ACK | TCP_PSH, &req), &[1, 1, 1, 0]),
        frames::with_ipv4_options(&frames::tcp(c, s, TCP_ACK | TCP_PSH, &req), &[7, 11, 4, 10, 0, 0, 1, 0, 0, 0, 0, 0]),
    ];
    out.extend(ipv4_fragments(&frames::tcp(c, s, TCP_ACK | TCP_PSH, &req), 40));
    // IPv6 fragment header: first (offset 0, more) and last (offset 5 units)
    let v6 = frames::tcp(c6, s6, TCP_ACK | TCP_PSH, &req);
    out.push(frames::with_ipv6_ext(&v6, &[(44, vec![0, 1, 0, 0, 0, 7])]));
    out.push(frames::with_ipv6_ext(&v6, &[(44, vec![0, 40, 0, 0, 0, 7])]));
    out.push(frames::tcp(s, c, TCP_ACK | TCP_PSH, &frames::response(200, "OK")));
    out.push(frames::tcp(s, c, TCP_ACK | TCP_FIN, b""));
    out.push(frames::tcp(c, s, TCP_ACK | TCP_FIN, b""));
    let mut packets: Vec<Packet> = out
        .iter()
        .enumerate()
        .map(|(i, f)| Packet { index: i + 1, ts: Duration::from_millis(i as u64), data: f.clone(), orig_len: f.len() as u32, truncated: false })
        .collect();
    // snaplen-truncated: a response captured with 64 of its bytes
    let full = frames::tcp(s, c, TCP_ACK | TCP_PSH, &frames::response(404, "Not Found"));
    packets.push(Packet { index: packets.len() + 1, ts: Duration::from_millis(99), data: full[..64].to_vec(), orig_len: full.len() as u32, truncated: true });
    let path = dir.join("awkward.pcap");
    tclab_lab::pcap::write_file(&path, &packets).expect("write pcap");
    (path, packets.len())
}

/// The inputs the differential fuzzer saved, as client requests on their own connections.
fn fuzz_corpus_capture(dir: &Path) -> PathBuf {
    let corpus = workspace().join("fuzz/regressions/datapath-http");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&corpus).expect("corpus").flatten().map(|e| e.path()).collect();
    names.sort();
    let mut out = Vec::new();
    for (i, p) in names.iter().enumerate() {
        let payload = std::fs::read(p).expect("read corpus input");
        let port = 41_000 + i as u16;
        out.push(frames::tcp(sa(&format!("10.0.0.1:{port}")), sa("10.0.0.2:80"), TCP_ACK | TCP_PSH, &payload));
        out.push(frames::tcp(sa("10.0.0.2:80"), sa(&format!("10.0.0.1:{port}")), TCP_ACK | TCP_PSH, &payload));
    }
    let path = dir.join("fuzz-corpus.pcap");
    write(&path, &out);
    path
}

/// The frame as the after-ingress capture sees it: an 802.1Q tag is
/// removed by the stack after TC ingress (see net/src/packet.rs).
fn as_seen_after_ingress(f: &[u8]) -> Option<Vec<u8>> {
    let mut g = f.to_vec();
    if g.len() >= 18 && g[12..14] == [0x81, 0x00] {
        g.drain(12..16);
    }
    matches!(u16::from_be_bytes([g[12], g[13]]), 0x0800 | 0x86dd | 0x0806).then_some(g)
}

fn src_ip(f: &[u8]) -> Option<IpAddr> {
    let p = etherparse::SlicedPacket::from_ethernet(f).ok()?;
    match p.net? {
        etherparse::NetSlice::Ipv4(v4) => Some(v4.header().source_addr().into()),
        etherparse::NetSlice::Ipv6(v6) => Some(v6.header().source_addr().into()),
    }
}

/// Replay `pcap` as `tclab replay --local … --chain agent,counter` does and
/// check every frame came out unchanged; returns (frames, agent counters).
fn replay_unchanged(pcap: &Path, locals: &[IpAddr]) -> (usize, std::collections::BTreeMap<String, u64>) {
    let kernel = KernelContext::probe_running("host");
    let plan = adhoc::plan(pcap, locals, &ChainChoice::parse("agent,counter"), adhoc::has_tcx(&kernel))
        .unwrap_or_else(|e| panic!("{}: {e}", pcap.display()));
    let out = tempfile::tempdir().expect("tempdir");
    let opts = RunOptions {
        kernel,
        snapshots: SnapshotStore::new(out.path().join("unused")),
        writes: PendingWrites::Never,
        results_dir: Some(out.path().to_path_buf()),
    };
    let result = runner::execute::execute(&plan.scenario, &opts).unwrap_or_else(|e| panic!("{}: {e:#}", pcap.display()));
    let name = pcap.display();
    let outputs: Vec<Vec<u8>> = tclab_lab::pcap::read_file(&out.path().join(format!("{}.out.pcap", plan.scenario.name)))
        .expect("output pcap")
        .into_iter()
        .map(|p| p.data)
        .collect();
    let mut left = outputs.clone();
    let mut injected = Vec::new();
    let mut missing = Vec::new();
    for p in tclab_lab::pcap::read_file(pcap).expect("capture") {
        let mut f = p.data.clone();
        tclab_lab::rewrite::apply(&plan.scenario.replays[0].rewrite, &mut f).expect("rewrite");
        injected.push(f.clone());
        let egress = src_ip(&f).is_some_and(|ip| locals.contains(&ip));
        let want = if egress { Some(f) } else { as_seen_after_ingress(&f) };
        if let Some(w) = want {
            match left.iter().position(|o| *o == w) {
                Some(i) => {
                    left.remove(i);
                }
                None => missing.push(format!("packet {} ({}): {}", p.index, if egress { "egress" } else { "ingress" }, hex::encode(&w[..w.len().min(80)]))),
            }
        }
    }
    assert!(missing.is_empty(), "{name}: frames that did not come out unchanged:\n{}", missing.join("\n"));
    // every packet crossed the agent and the counter after it
    assert_eq!(result.packets.len(), injected.len(), "{name}");
    for line in &result.packets {
        assert!(line.seen_by.iter().any(|e| e == "agent") && line.seen_by.iter().any(|e| e == "counter"), "{name}: {line:?}");
    }
    assert_eq!(result.events_lost, 0, "{name}");
    // tshark: nothing wrong in the output that was not in the input already
    let input = out.path().join("injected.pcap");
    write(&input, &injected);
    let bad_in: BTreeSet<&Vec<u8>> = tshark_errors(&input).into_iter().map(|n| &injected[n - 1]).collect();
    let output = out.path().join(format!("{}.out.pcap", plan.scenario.name));
    for n in tshark_errors(&output) {
        let f = &outputs[n - 1];
        let known = bad_in.contains(f) || injected.iter().any(|i| as_seen_after_ingress(i).as_ref() == Some(f) && bad_in.contains(i));
        assert!(known, "{name}: tshark finds output frame {n} broken, which was not so in the input: {}", hex::encode(f));
    }
    (injected.len(), result.agent_counters.clone())
}

/// The local address(es) of a fixture: the destination of its first IPv4
/// and first IPv6 packet (the server side), so both hooks see traffic.
fn locals_of(pcap: &Path) -> Vec<IpAddr> {
    let mut locals: Vec<IpAddr> = Vec::new();
    for p in tclab_lab::pcap::read_file(pcap).expect("capture") {
        let Ok(s) = etherparse::SlicedPacket::from_ethernet(&p.data) else { continue };
        let dst: IpAddr = match s.net {
            Some(etherparse::NetSlice::Ipv4(v4)) => v4.header().destination_addr().into(),
            Some(etherparse::NetSlice::Ipv6(v6)) => v6.header().destination_addr().into(),
            None => continue,
        };
        if !locals.iter().any(|l| l.is_ipv4() == dst.is_ipv4()) {
            locals.push(dst);
        }
    }
    locals
}

#[test]
fn every_fixture_comes_out_of_the_agent_chain_byte_identical() {
    if !root("robust_harmless::every_fixture_comes_out_of_the_agent_chain_byte_identical") {
        return;
    }
    let mut pcaps: Vec<PathBuf> = std::fs::read_dir(workspace().join("fixtures"))
        .expect("fixtures")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pcap" || x == "pcapng"))
        .collect();
    pcaps.sort();
    assert!(pcaps.len() >= 20, "{pcaps:?}");
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut total = 0;
    for pcap in &pcaps {
        let mut locals = locals_of(pcap);
        let mut pcap = pcap.clone();
        if locals.is_empty() {
            // no IP at all (ARP): `tclab replay` needs a local address from
            // the capture, so one UDP datagram from it is added
            let mut frames: Vec<Vec<u8>> = tclab_lab::pcap::read_file(&pcap).expect("capture").into_iter().map(|p| p.data).collect();
            frames.push(frames::udp(sa("10.0.0.2:5353"), sa("10.0.0.1:5353"), b"x"));
            pcap = tmp.path().join(pcap.file_name().expect("file name"));
            write(&pcap, &frames);
            locals.push("10.0.0.2".parse().expect("ip"));
        }
        let (n, _) = replay_unchanged(&pcap, &locals);
        total += n;
    }
    eprintln!("{} fixtures, {total} frames, all unchanged", pcaps.len());
}

#[test]
fn awkward_packets_and_the_fuzz_corpus_pass_untouched_and_are_reported() {
    if !root("robust_harmless::awkward_packets_and_the_fuzz_corpus_pass_untouched_and_are_reported") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (pcap, n) = awkward_capture(dir.path());
    let locals: Vec<IpAddr> = vec!["10.0.0.2".parse().expect("ip"), "fd00::2".parse().expect("ip")];
    let kernel = KernelContext::probe_running("host");
    let plan = adhoc::plan(&pcap, &locals, &ChainChoice::parse("agent,counter"), adhoc::has_tcx(&kernel)).expect("plan");
    assert_eq!(plan.truncated, 1, "the snaplen-truncated packet is counted");
    let (frames, counters) = replay_unchanged(&pcap, &locals);
    assert_eq!(frames, n);
    eprintln!("awkward capture: agent counters {counters:?}");
    // the truncated packet's IP length exceeds the frame: a parse error, passed on
    assert_eq!(counters.get("parse_errors"), Some(&1), "{counters:?}");
    // requests: IPv4 options (2), the first IPv4 and IPv6 fragments (2);
    // the later fragments carry no TCP header. The first IPv4 fragment ends
    // inside the request line: its traceparent is in the second one.
    assert_eq!(counters.get("http_requests"), Some(&4), "{counters:?}");
    assert_eq!(counters.get("traceparent_valid"), Some(&3), "{counters:?}");
    assert_eq!(counters.get("traceparent_invalid"), None, "{counters:?}");
    assert_eq!(counters.get("packets"), Some(&(n as u64)), "{counters:?}");

    let corpus = fuzz_corpus_capture(dir.path());
    let (frames, counters) = replay_unchanged(&corpus, &locals[..1]);
    eprintln!("fuzz corpus: {frames} frames, agent counters {counters:?}");
    assert!(counters.get("http_requests").is_some_and(|&r| r >= frames as u64 / 2), "{counters:?}");
}

/// The programs that alter packets: the output frames that differ from
/// every replayed frame must exist (the alteration happened) and be valid
/// for tshark, checksums included.
#[test]
fn altered_packets_have_valid_lengths_and_checksums() {
    if !root("robust_harmless::altered_packets_have_valid_lengths_and_checksums") {
        return;
    }
    let dir = workspace().join("scenarios");
    for name in ["propagation-ip-egress", "chain-agent-before-cilium-dnat", "chain-cilium-dnat-before-agent"] {
        let scenario = tclab_lab::scenario::load_scenario(&dir.join(format!("{name}.toml"))).expect("valid scenario");
        let out = tempfile::tempdir().expect("tempdir");
        let opts = RunOptions {
            kernel: KernelContext::probe_running("host"),
            snapshots: SnapshotStore::new(dir.join("snapshots")),
            writes: PendingWrites::Never,
            results_dir: Some(out.path().to_path_buf()),
        };
        let outcome = runner::run_one(&scenario, &opts);
        assert_eq!(outcome.status, Status::Passed, "{name}: {:?}\n{}", outcome.status, outcome.diff.unwrap_or_default());
        let mut replayed = Vec::new();
        for r in &scenario.replays {
            for p in tclab_lab::pcap::read_file(&r.pcap).expect("capture") {
                let mut f = p.data;
                tclab_lab::rewrite::apply(&r.rewrite, &mut f).expect("rewrite");
                replayed.push(f);
            }
        }
        let pcap = out.path().join(format!("{name}.out.pcap"));
        let outputs: Vec<Vec<u8>> = tclab_lab::pcap::read_file(&pcap).expect("output").into_iter().map(|p| p.data).collect();
        let altered: Vec<usize> = (0..outputs.len())
            .filter(|&i| !replayed.iter().any(|r| *r == outputs[i] || as_seen_after_ingress(r).as_ref() == Some(&outputs[i])))
            .collect();
        assert!(!altered.is_empty(), "{name}: no frame was altered, nothing to check");
        let bad = tshark_errors(&pcap);
        assert!(bad.is_empty(), "{name}: tshark finds frames {bad:?} broken");
        eprintln!("{name}: {} of {} output frames altered, all valid for tshark", altered.len(), outputs.len());
    }
}

/// A jumbo frame (9000-byte payload) does not fit the lab's veth (MTU
/// 1500): `tclab replay` stops with an error naming the capture, the packet,
/// its size and the reason, and leaves nothing half-done behind it.
#[test]
fn jumbo_frames_are_a_clear_replay_error() {
    if !root("robust_harmless::jumbo_frames_are_a_clear_replay_error") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (c, s) = (sa("10.0.0.1:40000"), sa("10.0.0.2:80"));
    let mut body = frames::request("POST", "/upload", &["Content-Length: 8900"]);
    body.resize(body.len() + 8900, b'x');
    let jumbo = frames::tcp(c, s, TCP_ACK | TCP_PSH, &body);
    let pcap = dir.path().join("jumbo.pcap");
    write(&pcap, &[frames::tcp(c, s, TCP_SYN, b""), jumbo.clone()]);
    let out = Command::new(env!("CARGO_BIN_EXE_tclab"))
        .args(["replay", pcap.to_str().expect("utf-8"), "--local", "10.0.0.2"])
        .output()
        .expect("run tclab replay");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a frame larger than the MTU cannot be replayed: {stderr}");
    for want in ["jumbo.pcap", "packet 2", &format!("{}-byte frame", jumbo.len()), "Message too long"] {
        assert!(stderr.contains(want), "the error names {want:?}: {stderr}");
    }
}
