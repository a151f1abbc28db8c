//! `tclab-agent chain --iface IF`: the whole chain of a device, TCX and
//! netlink together, in run order, with names, ids, priorities, handles and
//! who runs before the agent, as a table and as JSON.

use std::os::fd::AsFd;
use std::process::Command;

use aya::programs::TcAttachType;
use aya::programs::links::LinkOrder;
use aya::programs::tc::TcAttachOptions;
use tclab_datapath::agent::{Agent, AgentConfig};
use tclab_datapath::attach::Backend;
use tclab_datapath::loader::{CilAction, CilProgram, CiliumLikeProgram, TestProgram, Verdict};
use tclab_net::NetNs;
use tclab_net::tc::{self, Direction};

fn ifindex() -> u32 {
    // SAFETY: valid C string literal.
    unsafe { libc::if_nametoindex(c"dut".as_ptr()) }
}

fn id_of(p: &aya::programs::SchedClassifier) -> u32 {
    p.info().expect("program info").id()
}

fn chain_cli(output: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tclab-agent"))
        .args(["chain", "--iface", "dut", "--output", output])
        .output()
        .expect("run tclab-agent chain");
    assert!(out.status.success(), "tclab-agent chain failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// One row the way the table prints it, split on whitespace.
/// `slot` is the netlink (priority, handle).
fn row(hook: &str, pos: usize, api: &str, name: &str, id: u32, slot: Option<(u16, u32)>, note: &str) -> Vec<String> {
    let mut r = vec![
        hook.to_string(),
        pos.to_string(),
        api.to_string(),
        name.to_string(),
        id.to_string(),
        slot.map_or("-".into(), |(p, _)| p.to_string()),
        slot.map_or("-".into(), |(_, h)| format!("{h:#x}")),
    ];
    r.extend(note.split_whitespace().map(String::from));
    r
}

#[test]
fn chain_command_prints_tcx_and_netlink_in_run_order() {
    if !tclab_net::require::root("chain_command_prints_tcx_and_netlink_in_run_order") {
        return;
    }
    if !tclab_datapath::probe::KernelFeatures::probe().tcx {
        tclab_net::require::skip("chain_command_prints_tcx_and_netlink_in_run_order", "a kernel with TCX", "6.6+");
        return;
    }
    let ns = NetNs::new("chaincli-a").expect("namespace");
    let peer = NetNs::new("chaincli-b").expect("namespace");
    tclab_net::create_veth_pair(&ns, "dut", &peer, "peer", None).expect("veth");
    ns.run(|| {
        let ing = TcAttachType::Ingress;
        // Cilium on TCX first, then the agent takes the TCX head, then another
        // vendor's program takes the head before it.
        let mut cil = CiliumLikeProgram::load(CilProgram::FromNetdev, CilAction::Unspec).expect("load cil");
        cil.program_mut().attach_with_options("dut", ing, TcAttachOptions::TcxOrder(LinkOrder::last())).expect("attach cil");
        let agent = Agent::start(AgentConfig { ifaces: vec!["dut".into()], backend: Backend::Tcx, ..AgentConfig::default() })
            .expect("agent");
        let mut acme = CiliumLikeProgram::load(CilProgram::OtherVendor, CilAction::Ok).expect("load acme");
        acme.program_mut().attach_with_options("dut", ing, TcAttachOptions::TcxOrder(LinkOrder::first())).expect("attach acme");
        // Legacy filters, attached higher priority first.
        tc::add_clsact(ifindex()).expect("clsact");
        let late = TestProgram::load(Verdict::Unspec).expect("load");
        let early = TestProgram::load(Verdict::Drop).expect("load");
        tc::attach_bpf(ifindex(), Direction::Ingress, 5, 3, late.program().fd().unwrap().as_fd(), "late_filter").expect("filter");
        tc::attach_bpf(ifindex(), Direction::Ingress, 2, 7, early.program().fd().unwrap().as_fd(), "early_filter").expect("filter");

        let (cil_id, acme_id, late_id, early_id) =
            (id_of(cil.program()), id_of(acme.program()), id_of(late.program()), id_of(early.program()));
        let ours_in = agent.attachments().iter().find(|a| a.hook == Direction::Ingress).expect("ingress").prog_id;
        let ours_out = agent.attachments().iter().find(|a| a.hook == Direction::Egress).expect("egress").prog_id;

        let table = chain_cli("text");
        let rows: Vec<Vec<String>> =
            table.lines().skip(1).map(|l| l.split_whitespace().map(String::from).collect()).collect();
        assert_eq!(
            rows,
            vec![
                row("ingress", 0, "tcx", "acme_tc_filter", acme_id, None, "runs before ours"),
                row("ingress", 1, "tcx", "tclab_ingress", ours_in, None, "ours"),
                row("ingress", 2, "tcx", "cil_from_netdev", cil_id, None, ""),
                row("ingress", 3, "netlink", "tclab_verdict", early_id, Some((2, 7)), ""),
                row("ingress", 4, "netlink", "tclab_verdict", late_id, Some((5, 3)), ""),
                row("egress", 0, "tcx", "tclab_egress", ours_out, None, "ours"),
            ],
            "table:\n{table}"
        );
        assert!(table.lines().next().unwrap_or("").split_whitespace().eq(
            ["hook", "pos", "api", "name", "prog_id", "priority", "handle", "note"]
        ), "header:\n{table}");

        let json: serde_json::Value = serde_json::from_str(&chain_cli("json")).expect("JSON");
        assert_eq!(json["iface"], "dut");
        let ingress = json["ingress"].as_array().expect("ingress array");
        let got: Vec<_> = ingress
            .iter()
            .map(|e| {
                (
                    e["position"].as_u64().unwrap(),
                    e["api"].as_str().unwrap().to_string(),
                    e["name"].as_str().unwrap().to_string(),
                    e["prog_id"].as_u64().unwrap() as u32,
                    e["priority"].as_u64(),
                    e["handle"].as_u64(),
                    e["filter_name"].as_str().map(String::from),
                    e["ours"].as_bool().unwrap(),
                    e["runs_before_us"].as_bool().unwrap(),
                )
            })
            .collect();
        let s = |v: &str| v.to_string();
        assert_eq!(got, vec![
            (0, s("tcx"), s("acme_tc_filter"), acme_id, None, None, None, false, true),
            (1, s("tcx"), s("tclab_ingress"), ours_in, None, None, None, true, false),
            (2, s("tcx"), s("cil_from_netdev"), cil_id, None, None, None, false, false),
            (3, s("netlink"), s("tclab_verdict"), early_id, Some(2), Some(7), Some(s("early_filter")), false, false),
            (4, s("netlink"), s("tclab_verdict"), late_id, Some(5), Some(3), Some(s("late_filter")), false, false),
        ]);
        assert_eq!(json["egress"].as_array().map(Vec::len), Some(1));
        assert_eq!(json["egress"][0]["name"], "tclab_egress");
        assert_eq!(json["egress"][0]["ours"], true);
        drop(agent);
    });
}
