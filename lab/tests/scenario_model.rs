//! What a valid scenario file turns into, and the expected chain order.

use std::net::IpAddr;
use std::path::Path;

use tclab_lab::scenario::*;

const FULL: &str = r#"
name = "full"
description = "every key"
tags = ["a", "b"]
kernels = ["host", "6.12", ">=6.6"]
lockdown = ["integrity", "none", "integrity"]
requires = ["tcx", "bpf_loop"]

[topology]
local = "peer"
device = { name = "d0", mac = "02:aa:00:00:00:01", ipv4 = "10.1.0.1/30" }
peer = { ipv6 = "fd01::2" }

[agent]
backend = "auto"
priority = 7
ct_max_entries = 1024
ct_map = "hash"
propagation = "headers"
lifetimes = { syn = 5, close = 2 }

[[chain]]
name = "agent"
program = "agent"

[[chain]]
name = "cil"
program = { cilium = "cil_to_netdev", behaviour = "dnat", dnat_from = "10.0.0.2:80", dnat_to = "10.0.0.3:8080" }
direction = "egress"
attach = { mode = "tcx", order = { before = "agent" } }

[[chain]]
name = "redir"
program = { cilium = "cil_from_netdev", behaviour = "redirect", redirect_to = "peer" }
direction = "ingress"
attach = { mode = "netlink", priority = 3, handle = 9 }

[[chain]]
name = "low"
program = "counter"
attach = { mode = "netlink", priority = 2 }

[[replay]]
pcap = "x.pcap"
rewrite = { "10.0.0.1" = "local", "10.0.0.2" = "10.1.0.9", "02:00:00:00:00:02" = "peer" }
pacing = { scale = 0.5 }
after = [{ wait_ms = 20 }, { ct_gc = true }]

[expect]
snapshot = false
spans = 2
counters = { low = 10 }
varies_by = ["kernel", "lockdown"]

[[expect.ct]]
tuple = "TCP 10.0.0.1:40000 -> 10.0.0.2:80"
state = "CLOSING"

[[expect.ct]]
tuple = "ICMP 10.0.0.1 -> 10.0.0.2"
"#;

fn load(src: &str) -> Scenario {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/http-get.pcap");
    std::fs::copy(fixture, tmp.path().join("x.pcap")).unwrap();
    let p = tmp.path().join("s.toml");
    std::fs::write(&p, src).unwrap();
    match load_scenario_all(&p) {
        Ok(s) => s,
        Err(e) => panic!("{e:#?}"),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn every_key_lands_in_the_model() {
    let s = load(FULL);
    assert_eq!(s.name, "full");
    assert_eq!(s.tags, ["a", "b"]);
    assert_eq!(
        s.kernels,
        [
            KernelSelector::Host,
            KernelSelector::Named("6.12".into()),
            KernelSelector::AtLeast(6, 6)
        ]
    );
    assert_eq!(s.lockdown, [Lockdown::None, Lockdown::Integrity]);
    assert_eq!(s.requires, [Capability::Tcx, Capability::BpfLoop]);
    assert_eq!(s.topology.local, Side::Peer);
    assert_eq!(s.topology.device.name, "d0");
    assert_eq!(s.topology.device.mac, [2, 0xaa, 0, 0, 0, 1]);
    assert_eq!(
        s.topology.device.ipv4,
        Some(("10.1.0.1".parse().unwrap(), 30))
    );
    assert_eq!(s.topology.peer.ipv6, Some(("fd01::2".parse().unwrap(), 64)));
    assert_eq!(
        s.topology.peer.name, "peer",
        "unset keys keep their defaults"
    );
    let a = &s.agent;
    assert_eq!(
        (
            a.backend,
            a.priority,
            a.ct_max_entries,
            a.ct_map,
            a.propagation
        ),
        (
            Backend::Auto,
            7,
            1024,
            CtMapKind::Hash,
            Propagation::Headers
        )
    );
    assert_eq!(
        a.lifetimes,
        Lifetimes {
            syn: 5,
            tcp: 21_600,
            close: 2,
            non_tcp: 60
        }
    );
    assert_eq!(s.chain[0].attach, Attach::AgentDecides);
    assert_eq!(s.chain[0].direction, Direction::Both);
    assert_eq!(
        s.chain[1].program,
        Program::Cilium {
            name: CiliumProgram("cil_to_netdev".into()),
            behaviour: Behaviour::Dnat {
                from: "10.0.0.2:80".parse().unwrap(),
                to: "10.0.0.3:8080".parse().unwrap()
            },
        }
    );
    assert_eq!(
        s.chain[2].attach,
        Attach::Netlink {
            priority: 3,
            handle: 9
        }
    );
    assert_eq!(
        s.chain[3].attach,
        Attach::Netlink {
            priority: 2,
            handle: 1
        }
    );
    let r = &s.replays[0];
    assert!(r.pcap.ends_with("x.pcap") && r.pcap.is_absolute());
    // local = peer: "local" is the peer's address, "peer" the device's MAC.
    assert_eq!(r.rewrite.ip.get(&ip("10.0.0.1")), Some(&ip("10.0.0.2")));
    assert_eq!(r.rewrite.ip.get(&ip("10.0.0.2")), Some(&ip("10.1.0.9")));
    assert_eq!(
        r.rewrite.mac.get(&[2, 0, 0, 0, 0, 2]),
        Some(&[2, 0xaa, 0, 0, 0, 1])
    );
    assert_eq!(r.pacing, Pacing::Scale(0.5));
    assert_eq!(r.after, [Step::WaitMs(20), Step::CtGc(true)]);
    let e = &s.expect;
    assert!(!e.snapshot);
    assert_eq!(e.spans, Some(2));
    assert_eq!(e.counters.get("low"), Some(&10));
    assert_eq!(e.varies_by, [Dimension::Kernel, Dimension::Lockdown]);
    assert_eq!(e.ct[0].state, Some(CtState::Closing));
    assert_eq!(e.ct[1].tuple.proto, L4Proto::Icmp);
    assert_eq!(e.ct[1].state, None);
}

#[test]
fn minimal_file_gets_documented_defaults() {
    let s = load("name = \"m\"\n");
    assert!(
        s.kernels.is_empty() && s.requires.is_empty() && s.chain.is_empty() && s.replays.is_empty()
    );
    assert_eq!(s.lockdown, Lockdown::ALL);
    assert_eq!(s.topology.local, Side::Device);
    assert_eq!(
        s.topology.device.ipv4,
        Some(("10.0.0.1".parse().unwrap(), 24))
    );
    assert_eq!(s.topology.peer.ipv6, Some(("fd00::2".parse().unwrap(), 64)));
    assert_eq!(s.topology.device.mac, [2, 0, 0, 0, 0, 1]);
    assert_eq!(s.agent, AgentSettings::default());
    assert!(s.expect.snapshot);
}

#[test]
fn kernel_lockdown_and_capability_selection() {
    let s = load(FULL);
    assert!(s.applies_to_kernel("host", Some((6, 18))));
    assert!(s.applies_to_kernel("6.12", None));
    assert!(
        s.applies_to_kernel("local-6.6", Some((6, 6))),
        ">=6.6 matches by version"
    );
    assert!(!s.applies_to_kernel("5.10", Some((5, 10))));
    assert!(!s.applies_to_kernel("6.1", Some((6, 1))));
    assert!(s.applies_to_lockdown(Lockdown::Integrity));
    assert!(!s.applies_to_lockdown(Lockdown::Confidentiality));
    assert_eq!(
        s.missing_capability(|c| c == Capability::Tcx),
        Some(Capability::BpfLoop)
    );
    assert_eq!(s.missing_capability(|_| true), None);
    let any = load("name = \"m\"\n");
    assert!(any.applies_to_kernel("5.10", None));
}

#[test]
fn direction_follows_the_local_side() {
    let s = load(FULL);
    // local = peer: the peer's addresses go out through the device's egress.
    assert_eq!(s.topology.direction_of(ip("10.0.0.2")), Direction::Egress);
    assert_eq!(s.topology.direction_of(ip("fd01::2")), Direction::Egress);
    assert_eq!(s.topology.direction_of(ip("10.1.0.1")), Direction::Ingress);
    assert_eq!(s.topology.direction_of(ip("192.0.2.1")), Direction::Ingress);
}

fn names(h: &HookChain) -> Vec<(&str, u16, u32)> {
    h.netlink
        .iter()
        .map(|n| (n.name.as_str(), n.priority, n.handle))
        .collect()
}

#[test]
fn resolved_chain_with_and_without_tcx() {
    let s = load(FULL);
    let with = resolve_chain(&s, true);
    assert_eq!(with.ingress.tcx, ["agent"]);
    assert_eq!(
        with.egress.tcx,
        ["cil", "agent"],
        "before = agent puts cil first"
    );
    assert_eq!(
        names(&with.ingress),
        [("low", 2, 1), ("redir", 3, 9)],
        "netlink by priority, not file order"
    );
    assert_eq!(names(&with.egress), [("low", 2, 1)]);
    // cil waits for agent: the attach sequence puts agent first.
    let seq: Vec<_> = with
        .sequence
        .iter()
        .map(|s| (s.entry.as_str(), s.hook))
        .collect();
    assert_eq!(
        seq,
        [
            ("agent", Direction::Ingress),
            ("agent", Direction::Egress),
            ("cil", Direction::Egress),
            ("redir", Direction::Ingress),
            ("low", Direction::Ingress),
            ("low", Direction::Egress)
        ]
    );
    let without = resolve_chain(&s, false);
    assert!(
        without.ingress.tcx.is_empty(),
        "auto without TCX goes to netlink"
    );
    assert_eq!(
        names(&without.ingress),
        [
            ("low", 2, 1),
            ("redir", 3, 9),
            ("agent", 7, AGENT_NETLINK_HANDLE)
        ]
    );
    assert_eq!(
        names(&without.egress),
        [("low", 2, 1), ("agent", 7, AGENT_NETLINK_HANDLE)]
    );
    assert!(
        without.egress.tcx == ["cil"],
        "cil stays on TCX: {:?}",
        without.egress.tcx
    );
}

#[test]
fn tcx_head_tail_before_after_in_file_order() {
    let src = r#"
name = "o"
[[chain]]
name = "a"
program = "counter"
attach = { mode = "tcx", order = "head" }
[[chain]]
name = "b"
program = "counter"
attach = { mode = "tcx", order = "head" }
[[chain]]
name = "c"
program = "counter"
attach = { mode = "tcx", order = "tail" }
[[chain]]
name = "d"
program = "counter"
attach = { mode = "tcx", order = { after = "b" } }
[[chain]]
name = "e"
program = "counter"
attach = { mode = "tcx", order = { before = "c" } }
"#;
    let s = load(src);
    let chain = resolve_chain(&s, true);
    assert_eq!(chain.ingress.tcx, ["b", "d", "a", "e", "c"]);
    assert_eq!(chain.egress.tcx, chain.ingress.tcx);
}
