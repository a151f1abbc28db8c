//! The chain listing (TCX and netlink together, in run order) with foreign
//! programs around the agent, the agent's rules, and the promise that our
//! attach/detach never touches anyone else's program.

use std::os::fd::AsFd;

use aya::programs::links::LinkOrder;
use aya::programs::tc::TcAttachOptions;
use aya::programs::{SchedClassifier, TcAttachType};
use tclab_datapath::agent::{Agent, AgentConfig, AgentError};
use tclab_datapath::attach::{Api, AttachError, Backend, NETLINK_HANDLE};
use tclab_datapath::chain::{CILIUM_PRIORITY_FIX, RuleError};
use tclab_datapath::loader::{TestProgram, Verdict};
use tclab_net::NetNs;
use tclab_net::tc::{self, Direction};

fn device(tag: &str) -> (NetNs, NetNs) {
    let a = NetNs::new(&format!("{tag}-a")).expect("namespace");
    let b = NetNs::new(&format!("{tag}-b")).expect("namespace");
    tclab_net::create_veth_pair(&a, "dut", &b, "peer", None).expect("veth");
    (a, b)
}

fn ifindex() -> u32 {
    // SAFETY: valid C string literal.
    unsafe { libc::if_nametoindex(c"dut".as_ptr()) }
}

fn foreign(verdict: Verdict) -> (TestProgram, u32) {
    let p = TestProgram::load(verdict).expect("load test program");
    let id = p.program().info().expect("info").id();
    (p, id)
}

fn tcx_ids(t: TcAttachType) -> Vec<u32> {
    SchedClassifier::query_tcx("dut", t).expect("query tcx").1.iter().map(|p| p.id()).collect()
}

fn netlink_foreign(prog: &TestProgram, dir: Direction, prio: u16, handle: u32, name: &str) {
    if !tc::has_clsact(ifindex()).unwrap() {
        tc::add_clsact(ifindex()).expect("clsact");
    }
    let fd = prog.program().fd().expect("fd");
    tc::attach_bpf(ifindex(), dir, prio, handle, fd.as_fd(), name).expect("foreign netlink filter");
}

fn start(backend: Backend) -> Result<Agent, Box<AgentError>> {
    Agent::start(AgentConfig { ifaces: vec!["dut".into()], backend, ..AgentConfig::default() }).map_err(Box::new)
}

#[test]
fn chain_lists_tcx_and_netlink_in_run_order() {
    if !tclab_net::require::root("chain_lists_tcx_and_netlink_in_run_order") {
        return;
    }
    if !tclab_datapath::probe::KernelFeatures::probe().tcx {
        tclab_net::require::skip("chain_lists_tcx_and_netlink_in_run_order", "a kernel with TCX", "6.6+");
        return;
    }
    let (ns, _peer) = device("chain");
    ns.run(|| {
        let ing = TcAttachType::Ingress;
        let (mut a, a_id) = foreign(Verdict::Unspec);
        a.program_mut().attach_with_options("dut", ing, TcAttachOptions::TcxOrder(LinkOrder::first())).expect("attach A");
        let agent = start(Backend::Tcx).expect("agent");
        assert_eq!(agent.api(), Api::Tcx);
        assert!(agent.warnings().is_empty(), "{:?}", agent.warnings());
        let (mut b, b_id) = foreign(Verdict::Pass);
        b.program_mut().attach_with_options("dut", ing, TcAttachOptions::TcxOrder(LinkOrder::first())).expect("attach B");
        let (c, c_id) = foreign(Verdict::Unspec);
        netlink_foreign(&c, Direction::Ingress, 5, 1, "foreign_c");

        let chains = agent.chain().expect("chain");
        let ours = agent.program_ids();
        let ingress: Vec<_> = chains[0]
            .ingress
            .iter()
            .map(|e| (e.position, e.api, e.prog_id.unwrap(), e.priority, e.handle, e.ours, e.runs_before_us))
            .collect();
        let our_in = chains[0].ingress.iter().find(|e| e.ours).expect("ours listed").prog_id.unwrap();
        assert!(ours.contains(&our_in));
        assert_eq!(ingress, vec![
            (0, Api::Tcx, b_id, None, None, false, true),
            (1, Api::Tcx, our_in, None, None, true, false),
            (2, Api::Tcx, a_id, None, None, false, false),
            (3, Api::Netlink, c_id, Some(5), Some(1), false, false),
        ]);
        assert_eq!(chains[0].ingress[3].filter_name.as_deref(), Some("foreign_c"));
        assert_eq!(chains[0].egress.len(), 1);
        assert!(chains[0].egress[0].ours);
        let warnings = tclab_datapath::chain::warn_before_us(&chains[0]);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains(&format!("id {b_id}")), "{}", warnings[0]);
        let table = chains[0].to_table();
        assert!(table.contains("runs before ours") && table.contains("netlink"), "{table}");

        drop(agent);
        assert_eq!(tcx_ids(ing), vec![b_id, a_id], "foreign TCX programs untouched, in order");
        assert!(tcx_ids(TcAttachType::Egress).is_empty());
        let left = tc::list_filters(ifindex(), Direction::Ingress).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!((left[0].priority, left[0].handle, left[0].bpf_id), (5, 1, Some(c_id)));
        assert!(tc::has_clsact(ifindex()).unwrap(), "foreign clsact kept");
    });
}

#[test]
fn dry_run_reports_the_verdict_of_a_program_before_ours() {
    if !tclab_net::require::root("dry_run_reports_the_verdict_of_a_program_before_ours") {
        return;
    }
    let (ns, _peer) = device("dry");
    ns.run(|| {
        let (drop_prog, drop_id) = foreign(Verdict::Drop);
        let (pass_prog, _) = foreign(Verdict::Pass);
        netlink_foreign(&drop_prog, Direction::Ingress, 1, 1, "dropper");
        netlink_foreign(&pass_prog, Direction::Egress, 1, 1, "passer");
        let cfg = AgentConfig {
            ifaces: vec!["dut".into()],
            backend: Backend::Netlink,
            priority: 2,
            dry_run_chain: true,
            ..AgentConfig::default()
        };
        let agent = Agent::start(cfg).expect("agent");
        let w = agent.warnings();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains(&format!("id {drop_id}")) && w[0].contains("TC_ACT_SHOT"), "{}", w[0]);
        assert!(w[1].contains("egress") && w[1].contains("TC_ACT_OK"), "{}", w[1]);
        // The dry run is a real run: the foreign program counted it.
        assert_eq!(drop_prog.packets().unwrap(), 1);
        assert_eq!(pass_prog.packets().unwrap(), 1);
    });
}

#[test]
fn netlink_agent_coexists_with_foreign_filter_at_same_priority() {
    if !tclab_net::require::root("netlink_agent_coexists_with_foreign_filter_at_same_priority") {
        return;
    }
    let (ns, _peer) = device("coex");
    ns.run(|| {
        let (f, f_id) = foreign(Verdict::Unspec);
        netlink_foreign(&f, Direction::Ingress, 1, 1, "foreign");
        let agent = start(Backend::Netlink).expect("agent");
        let chain = &agent.chain().expect("chain")[0];
        let prios: Vec<_> = chain.ingress.iter().map(|e| (e.priority, e.handle, e.ours)).collect();
        // Within one priority cls_bpf runs (and dumps) the newest filter
        // first: ours, added after the foreign one, runs before it.
        assert_eq!(prios, vec![(Some(1), Some(NETLINK_HANDLE), true), (Some(1), Some(1), false)]);
        assert!(agent.warnings().is_empty(), "{:?}", agent.warnings());
        agent.stop().expect("stop");
        let left = tc::list_filters(ifindex(), Direction::Ingress).unwrap();
        assert_eq!(left.iter().map(|f| (f.priority, f.handle, f.bpf_id)).collect::<Vec<_>>(), vec![(1, 1, Some(f_id))]);
        assert!(tc::list_filters(ifindex(), Direction::Egress).unwrap().is_empty());
    });
}

/// The agent is Send: the lab may start it on a thread inside the namespace
/// and drop it elsewhere. Netlink detach must still happen in the namespace
/// it was attached in (not the dropping thread's).
#[test]
fn netlink_agent_dropped_on_another_thread_detaches_in_its_namespace() {
    if !tclab_net::require::root("netlink_agent_dropped_on_another_thread_detaches_in_its_namespace") {
        return;
    }
    let (ns, _peer) = device("xthr");
    let agent = ns.run(|| start(Backend::Netlink).expect("agent"));
    assert_eq!(ns.run(|| tc::list_filters(ifindex(), Direction::Ingress).unwrap().len()), 1);
    drop(agent); // on the test thread, in the host namespace
    ns.run(|| {
        assert!(tc::list_filters(ifindex(), Direction::Ingress).unwrap().is_empty());
        assert!(tc::list_filters(ifindex(), Direction::Egress).unwrap().is_empty());
        assert!(!tc::has_clsact(ifindex()).unwrap(), "our clsact removed too");
    });
}

#[test]
fn netlink_conflict_is_an_error_and_rolls_back() {
    if !tclab_net::require::root("netlink_conflict_is_an_error_and_rolls_back") {
        return;
    }
    let (ns, _peer) = device("confl");
    ns.run(|| {
        let (f, f_id) = foreign(Verdict::Unspec);
        // Our exact slot, on egress only: ingress attaches first, then egress fails.
        netlink_foreign(&f, Direction::Egress, 1, NETLINK_HANDLE, "squatter");
        let err = start(Backend::Netlink).expect_err("conflict");
        assert!(
            matches!(*err, AgentError::Attach(AttachError::Conflict { priority: 1, handle: NETLINK_HANDLE, .. })),
            "{err}"
        );
        assert!(err.to_string().contains("refusing to replace"), "{err}");
        assert!(tc::list_filters(ifindex(), Direction::Ingress).unwrap().is_empty(), "our ingress filter rolled back");
        let egress = tc::list_filters(ifindex(), Direction::Egress).unwrap();
        assert_eq!(egress.iter().map(|f| f.bpf_id).collect::<Vec<_>>(), vec![Some(f_id)], "foreign filter untouched");
    });
}

#[test]
fn cilium_rules_on_netlink() {
    if !tclab_net::require::root("cilium_rules_on_netlink") {
        return;
    }
    let (ns, _peer) = device("cil");
    ns.run(|| {
        let (f, _) = foreign(Verdict::Pass);
        netlink_foreign(&f, Direction::Ingress, 1, 1, "cil_from_netdev-dut");
        netlink_foreign(&f, Direction::Egress, 1, 1, "cil_to_netdev-dut");
        let err = start(Backend::Netlink).expect_err("refused");
        assert!(matches!(*err, AgentError::Rule(RuleError::CiliumAtPriorityOne { .. })), "{err}");
        assert!(err.to_string().contains(CILIUM_PRIORITY_FIX), "{err}");
        let ours = |d| tc::list_filters(ifindex(), d).unwrap().iter().filter(|f| f.handle == NETLINK_HANDLE).count();
        assert_eq!(ours(Direction::Ingress) + ours(Direction::Egress), 0, "nothing attached on refusal");

        // After `bpf-filter-priority 2` a fresh Cilium is at 2; the 1s are left-overs.
        netlink_foreign(&f, Direction::Ingress, 2, 1, "cil_from_netdev-dut");
        let agent = start(Backend::Netlink).expect("starts with a warning");
        assert!(agent.warnings().iter().any(|w| w.contains("left-overs")), "{:?}", agent.warnings());
    });
}
