//! Every embedded object loads and passes the verifier on this kernel.

use std::net::SocketAddrV4;

use tclab_datapath::loader::{
    CilAction, CilProgram, CiliumLikeProgram, CtMapKind, Datapath, DatapathConfig, EventTransport, Hook,
    TestProgram, Verdict, empty_classifier,
};

/// The target of the brief: every program under a quarter of the 1M limit.
const VERIFIER_BUDGET: u32 = 250_000;

#[test]
fn every_datapath_variant_loads_within_verifier_budget() {
    if !tclab_net::require::root("every_datapath_variant_loads_within_verifier_budget") {
        return;
    }
    for (ct_map, events) in [
        (CtMapKind::Lru, EventTransport::RingBuf),
        (CtMapKind::Hash, EventTransport::RingBuf),
        (CtMapKind::Lru, EventTransport::PerfBuf),
    ] {
        let cfg = DatapathConfig { ct_map, events, ct_max_entries: 1024, ..Default::default() };
        let dp = Datapath::load(&cfg).unwrap_or_else(|e| panic!("load {ct_map:?}/{events:?}: {e}"));
        assert_eq!(dp.ct_max_entries(), 1024);
        for hook in [Hook::Ingress, Hook::Egress] {
            let insns = dp.verified_insns(hook).expect("program info");
            eprintln!("{} {hook:?}: verifier processed {insns:?} instructions", dp.object_name());
            if let Some(n) = insns {
                assert!(n < VERIFIER_BUDGET, "{} {hook:?}: {n} verifier instructions", dp.object_name());
            }
        }
    }
}

#[test]
fn test_programs_load() {
    if !tclab_net::require::root("test_programs_load") {
        return;
    }
    for v in [Verdict::Pass, Verdict::Unspec, Verdict::Drop] {
        let p = TestProgram::load(v).unwrap_or_else(|e| panic!("load {v:?}: {e}"));
        assert_eq!(p.name(), "tclab_verdict");
        assert_eq!(p.packets().unwrap(), 0);
    }
    let e = empty_classifier().expect("load tclab_empty");
    assert_eq!(e.name(), "tclab_empty");
}

#[test]
fn cilium_like_programs_load_within_verifier_budget() {
    if !tclab_net::require::root("cilium_like_programs_load_within_verifier_budget") {
        return;
    }
    let dnat = CilAction::Dnat {
        service: SocketAddrV4::new([10, 96, 0, 10].into(), 80),
        backend: SocketAddrV4::new([10, 244, 0, 5].into(), 8080),
        then: Verdict::Unspec,
    };
    for prog in CilProgram::ALL {
        let p = CiliumLikeProgram::load(prog, dnat).unwrap_or_else(|e| panic!("load {prog:?}: {e}"));
        let insns = p.program().info().expect("program info").verified_instruction_count();
        eprintln!("ciliumlike.o {}: verifier processed {insns:?} instructions", p.name());
        if let Some(n) = insns {
            assert!(n < VERIFIER_BUDGET, "{}: {n}", p.name());
        }
    }
}
