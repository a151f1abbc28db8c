//! The IP-option carrier on captured traffic, byte for byte: the scenarios
//! `propagation-ip-egress` and `propagation-ip-roundtrip` run through the
//! same code as `tclab run` (and must match their snapshots), and their
//! output pcaps are compared with the replayed captures.
//!
//! * egress: every frame comes out identical except a request with a
//!   valid traceparent, which has our option inserted right after the
//!   fixed IP header; removing it (and restoring IHL / total length /
//!   header checksum, or payload length / next header) gives the original;
//! * round trip: what reaches the stack after our ingress removed the
//!   option is the original frame, byte for byte.

use std::path::{Path, PathBuf};

use tclab_lab::frame::internet_checksum;
use tclab_lab::runner::{self, KernelContext, RunOptions, Status};
use tclab_lab::snapshot::{PendingWrites, SnapshotStore};

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("lab/ has a parent")
}

/// Run one scenario (snapshot judged) and return its output frames.
fn run(name: &str) -> Vec<Vec<u8>> {
    let dir = workspace().join("scenarios");
    let scenario = tclab_lab::scenario::load_scenario(&dir.join(format!("{name}.toml"))).expect("valid scenario");
    let out = tempfile::tempdir().expect("tempdir");
    let opts = RunOptions {
        kernel: KernelContext::probe_running("host"),
        snapshots: SnapshotStore::new(dir.join("snapshots")),
        writes: PendingWrites::from_env(),
        results_dir: Some(out.path().to_path_buf()),
    };
    let outcome = runner::run_one(&scenario, &opts);
    assert_eq!(outcome.status, Status::Passed, "{name}: {:?}\n{}", outcome.status, outcome.diff.unwrap_or_default());
    let pcap: PathBuf = out.path().join(format!("{name}.out.pcap"));
    tclab_lab::pcap::read_file(&pcap).expect("output pcap").into_iter().map(|p| p.data).collect()
}

/// The frames of `pcaps` the device (10.0.0.1 / fd00::1, MAC …:01) sends.
fn sent_by_device(pcaps: &[&str]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for p in pcaps {
        for pkt in tclab_lab::pcap::read_file(&workspace().join("fixtures").join(p)).expect("fixture") {
            if pkt.data[6..12] == [2, 0, 0, 0, 0, 1] {
                out.push(pkt.data);
            }
        }
    }
    out
}

/// The frame with our option taken out again, headers restored.
fn without_option(f: &[u8]) -> Vec<u8> {
    let mut g = f.to_vec();
    match u16::from_be_bytes([f[12], f[13]]) {
        0x0800 => {
            assert_eq!(f[14], 0x4c, "IHL 12: 20 bytes + our 28");
            assert_eq!((f[34], f[35], f[36]), (0x9e, 28, 0x7c), "our option first");
            g.drain(34..62);
            g[14] = 0x45;
            let tot = u16::from_be_bytes([g[16], g[17]]) - 28;
            g[16..18].copy_from_slice(&tot.to_be_bytes());
            g[24..26].copy_from_slice(&[0, 0]);
            let c = internet_checksum(&[&g[14..34]]);
            g[24..26].copy_from_slice(&c.to_be_bytes());
        }
        0x86dd => {
            assert_eq!(f[20], 60, "a destination options header");
            assert_eq!((f[54], f[55], f[56], f[57], f[58]), (6, 3, 0x1e, 26, 0x7c), "ours, then TCP");
            g.drain(54..86);
            g[20] = 6;
            let plen = u16::from_be_bytes([g[18], g[19]]) - 32;
            g[18..20].copy_from_slice(&plen.to_be_bytes());
        }
        t => panic!("unexpected ethertype {t:#x}"),
    }
    g
}

fn has_traceparent(f: &[u8]) -> bool {
    String::from_utf8_lossy(f).to_ascii_lowercase().contains("\r\ntraceparent: 00-")
}

#[test]
fn egress_adds_the_option_to_traced_requests_only() {
    if !tclab_net::require::root("egress_adds_the_option_to_traced_requests_only") {
        return;
    }
    let out = run("propagation-ip-egress");
    let sent = sent_by_device(&["traceparent-valid.pcap", "http-get.pcap", "http-ipv6.pcap"]);
    assert_eq!(out.len(), sent.len(), "every frame the device sent came out");
    let mut with_option = 0;
    for (i, (o, s)) in out.iter().zip(&sent).enumerate() {
        if has_traceparent(s) {
            with_option += 1;
            assert_eq!(o.len(), s.len() + if s[12] == 0x08 { 28 } else { 32 }, "frame {i}");
            assert_eq!(&without_option(o), s, "frame {i}: the original once ours is taken out");
        } else {
            assert_eq!(o, s, "frame {i}: untouched, byte for byte");
        }
    }
    assert_eq!(with_option, 2, "the IPv4 and IPv6 requests with a traceparent");
}

#[test]
fn ingress_removes_our_option_and_restores_the_frame() {
    if !tclab_net::require::root("ingress_removes_our_option_and_restores_the_frame") {
        return;
    }
    let out = run("propagation-ip-roundtrip");
    // everything comes in: the device's own frames (redirected) and the peer's
    let mut sent = Vec::new();
    for p in ["traceparent-valid.pcap", "http-ipv6.pcap"] {
        sent.extend(tclab_lab::pcap::read_file(&workspace().join("fixtures").join(p)).expect("fixture").into_iter().map(|p| p.data));
    }
    assert_eq!(out.len(), sent.len());
    for (i, (o, s)) in out.iter().zip(&sent).enumerate() {
        assert_eq!(o, s, "frame {i}: the frame as captured, our option gone");
    }
}
