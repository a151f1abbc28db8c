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

/// The loader picks the coarse CT clock on 5.11+; this covers the other
/// branch (what 5.10 runs): loaded with the precise clock, entries carry
/// CLOCK_MONOTONIC timestamps.
#[test]
fn precise_ct_clock_variant_loads_and_timestamps() {
    use aya::TestRun;
    use aya::maps::HashMap;
    use aya::programs::{SchedClassifier, TestRunOptions};
    use tclab_datapath::loader::{GLOBAL_CT_COARSE_CLOCK, MAP_CT, PROG_EGRESS, monotonic_now_ns, objects};
    use tclab_datapath::types::{CtEntry, CtTuple};

    if !tclab_net::require::root("precise_ct_clock_variant_loads_and_timestamps") {
        return;
    }
    let mut ebpf = aya::EbpfLoader::new()
        .override_global(GLOBAL_CT_COARSE_CLOCK, &0u8, true)
        .map_max_entries(MAP_CT, 64)
        .load(objects::DATAPATH_LRU)
        .expect("load object");
    let prog: &mut SchedClassifier = ebpf.program_mut(PROG_EGRESS).unwrap().try_into().unwrap();
    prog.load().expect("verifier accepts the precise-clock variant");
    // Ethernet + IPv4 + UDP 10.0.0.1:1000 -> 10.0.0.2:53, no payload
    let mut frame = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    frame.extend_from_slice(&[0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
    frame.extend_from_slice(&[0x03, 0xe8, 0, 53, 0, 8, 0, 0]);
    let before = monotonic_now_ns();
    let res = prog.test_run(TestRunOptions { data_in: Some(&frame), ..Default::default() }).expect("test_run");
    let after = monotonic_now_ns();
    assert_eq!(res.return_value, u32::MAX);
    let ct: HashMap<_, CtTuple, CtEntry> = HashMap::try_from(ebpf.map(MAP_CT).unwrap()).unwrap();
    let key = CtTuple::new("10.0.0.1:1000".parse().unwrap(), "10.0.0.2:53".parse().unwrap(), 17);
    let e = ct.get(&key, 0).expect("CT entry");
    assert!(before <= e.created_ns && e.created_ns <= after, "created_ns {} within [{before}, {after}]", e.created_ns);
}
