//! The agent's start-up rules and the Cilium-like programs as the lab applies
//! them, checked on the structured result (not the snapshot text): refusals,
//! warnings with dry runs, redirect and DNAT outputs with valid checksums,
//! and the validation of Cilium-like entries.

use std::path::{Path, PathBuf};

use tclab_lab::runner::report::{AgentOutcome, ScenarioResult};
use tclab_lab::runner::{KernelContext, RunOptions, execute};
use tclab_lab::scenario::{self, Capability};
use tclab_lab::snapshot::{PendingWrites, SnapshotStore};

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("lab/ has a parent")
}

fn opts() -> RunOptions {
    RunOptions {
        kernel: KernelContext::probe_running("host"),
        snapshots: SnapshotStore::new(workspace().join("scenarios/snapshots")),
        writes: PendingWrites::Never,
        results_dir: None,
    }
}

/// Run one scenario of `scenarios/` (no snapshot comparison).
fn run(name: &str) -> ScenarioResult {
    run_file(&workspace().join(format!("scenarios/{name}.toml")))
}

fn run_file(path: &Path) -> ScenarioResult {
    let s = scenario::load_scenario(path).unwrap_or_else(|e| panic!("{e}"));
    execute::execute(&s, &opts()).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()))
}

/// Root and TCX, or a loud skip (a failure under TCLAB_REQUIRE_ALL=1).
fn ready(test: &str, needs_tcx: bool) -> bool {
    if !tclab_net::require::root(test) {
        return false;
    }
    if needs_tcx && !KernelContext::probe_running("host").has(Capability::Tcx) {
        tclab_net::require::skip(test, "a kernel with TCX", "6.6+");
        return false;
    }
    true
}

fn refusal(r: &ScenarioResult) -> &str {
    match &r.agent {
        AgentOutcome::Refused { error } => error,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn warnings(r: &ScenarioResult) -> &[String] {
    match &r.agent {
        AgentOutcome::Started { warnings, .. } => warnings,
        other => panic!("expected the agent to start, got {other:?}"),
    }
}

fn ours_attached(r: &ScenarioResult) -> usize {
    r.chain.iter().filter(|c| c.program.starts_with("tclab_ingress") || c.program.starts_with("tclab_egress")).count()
}

#[test]
fn cilium_at_priority_one_refuses_and_attaches_nothing() {
    if !ready("chain_rules::cilium_at_priority_one_refuses_and_attaches_nothing", false) {
        return;
    }
    let r = run("chain-cilium-prio1-agent-refused");
    let e = refusal(&r);
    assert!(e.contains(tclab_datapath::chain::CILIUM_PRIORITY_FIX), "{e}");
    assert!(e.contains("(entry cil_in)") && e.contains("(entry cil_out)") && !e.contains("(id "), "ids named: {e}");
    assert_eq!(ours_attached(&r), 0, "{:?}", r.chain);
    assert_eq!(r.counters["agent"], 0);
    assert_eq!((r.counters["cil_in"], r.counters["cil_out"]), (4, 6), "the rest of the chain still runs");
    assert!(r.spans.is_empty() && r.ct.is_empty());
}

#[test]
fn cilium_on_tcx_refuses_a_netlink_agent() {
    if !ready("chain_rules::cilium_on_tcx_refuses_a_netlink_agent", true) {
        return;
    }
    let r = run("chain-cilium-tcx-agent-netlink-refused");
    let e = refusal(&r);
    assert!(e.contains("Cilium programs are attached there with TCX") && e.contains("--backend tcx"), "{e}");
    assert_eq!(ours_attached(&r), 0, "{:?}", r.chain);
}

#[test]
fn leftover_filters_start_the_agent_with_a_warning() {
    if !ready("chain_rules::leftover_filters_start_the_agent_with_a_warning", false) {
        return;
    }
    let r = run("chain-cilium-leftover-prio1-warning");
    let w = warnings(&r);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("left-overs") && w[0].contains("(entry old_cil_in)") && w[0].contains("(entry old_cil_out)"), "{}", w[0]);
    assert!(!w[0].contains("(entry cil_in)"), "the current Cilium is not a left-over: {}", w[0]);
    assert_eq!(r.spans.len(), 1);
}

#[test]
fn a_foreign_program_before_the_agent_warns_with_its_dry_run_verdict() {
    if !ready("chain_rules::a_foreign_program_before_the_agent_warns_with_its_dry_run_verdict", true) {
        return;
    }
    let r = run("chain-foreign-tcx-head-ok-warning");
    let w = warnings(&r);
    assert_eq!(w.len(), 2, "one per hook: {w:?}");
    for (w, hook) in w.iter().zip(["ingress", "egress"]) {
        assert!(w.starts_with(&format!("dut {hook}: tcx program \"acme_tc_filter\" (entry acme)")), "{w}");
        assert!(w.ends_with("dry run on a probe TCP SYN: TC_ACT_OK/TCX_PASS (ends the chain)"), "{w}");
    }
    // The two dry runs really ran the program, but are not replayed packets.
    assert_eq!((r.counters["acme"], r.counters["agent"]), (10, 0));
}

#[test]
fn a_dropping_cilium_before_the_agent_shows_in_the_warning_and_the_ct() {
    if !ready("chain_rules::a_dropping_cilium_before_the_agent_shows_in_the_warning_and_the_ct", true) {
        return;
    }
    let r = run("chain-cilium-drop-before-agent");
    let w = warnings(&r);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("(entry cil_in)") && w[0].contains("TC_ACT_SHOT"), "{}", w[0]);
    assert!(r.spans.is_empty());
    assert!(r.output.iter().all(|o| o.starts_with("egress→peer")), "nothing gets in: {:?}", r.output);
    assert_eq!(r.ct_states.len(), 1, "{:?}", r.ct_states);
}

#[test]
fn second_netlink_agent_refuses_to_replace_the_first() {
    if !ready("chain_rules::second_netlink_agent_refuses_to_replace_the_first", false) {
        return;
    }
    let r = run("chain-two-agents-netlink");
    let e = refusal(&r);
    assert!(e.starts_with("agent_b: ") && e.contains("refusing to replace it"), "{e}");
    assert_eq!(ours_attached(&r), 2, "agent_a stays attached on both hooks: {:?}", r.chain);
    assert!(r.chain.iter().filter(|c| c.program == "tclab_ingress" || c.program == "tclab_egress").all(|c| c.entry == "agent_a"));
    assert_eq!((r.counters["agent_a"], r.counters["agent_b"]), (10, 0));
    assert_eq!(r.spans.len(), 1, "the running agent's span");
}

#[test]
fn redirect_to_the_peer_sends_ingress_packets_back_out_unchanged() {
    if !ready("chain_rules::redirect_to_the_peer_sends_ingress_packets_back_out_unchanged", true) {
        return;
    }
    let r = run("chain-cilium-redirect-before-agent");
    let back: Vec<_> = r.output.iter().filter(|o| o.contains("TCP 10.0.0.2:80 -> 10.0.0.1:40000")).collect();
    assert_eq!(back.len(), 4, "{:?}", r.output);
    assert!(back.iter().all(|o| o.starts_with("egress→peer") && o.ends_with("csum=ok")), "{back:?}");
    assert!(!r.output.iter().any(|o| o.starts_with("ingress→stack")), "{:?}", r.output);
    // Every server packet: Cilium's ingress, then the agent's egress.
    for p in r.packets.iter().filter(|p| p.hook == "ingress") {
        assert_eq!(p.seen_by, ["cil_in", "agent"], "{p:?}");
    }
}

#[test]
fn dnat_rewrites_what_leaves_with_valid_checksums() {
    if !ready("chain_rules::dnat_rewrites_what_leaves_with_valid_checksums", true) {
        return;
    }
    for (name, agent_sees) in
        [("chain-cilium-dnat-before-agent", "10.0.0.3:8080"), ("chain-agent-before-cilium-dnat", "10.0.0.2:80")]
    {
        let r = run(name);
        let out: Vec<_> = r.output.iter().filter(|o| o.starts_with("egress→peer")).collect();
        assert_eq!(out.len(), 6, "{name}: {:?}", r.output);
        for o in &out {
            assert!(o.contains("TCP 10.0.0.1:40000 -> 10.0.0.3:8080") && o.ends_with("csum=ok"), "{name}: {o}");
        }
        let tuple = format!("TCP 10.0.0.1:40000 -> {agent_sees}");
        assert!(r.ct_states.iter().any(|(t, _)| *t == tuple), "{name}: the agent's CT has {tuple}: {:?}", r.ct_states);
    }
}

/// A scenario file next to a copy of http-get.pcap.
fn scenario_file(dir: &tempfile::TempDir, src: &str) -> PathBuf {
    std::fs::copy(workspace().join("fixtures/http-get.pcap"), dir.path().join("x.pcap")).unwrap();
    let p = dir.path().join("s.toml");
    std::fs::write(&p, src).unwrap();
    p
}

#[test]
fn redirect_to_the_device_delivers_egress_packets_to_its_own_ingress() {
    if !ready("chain_rules::redirect_to_the_device_delivers_egress_packets_to_its_own_ingress", true) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = scenario_file(
        &dir,
        r#"name = "s"
[[chain]]
name = "loop_back"
program = { cilium = "cil_to_host", behaviour = "redirect", redirect_to = "dut" }
direction = "egress"
attach = { mode = "tcx", order = "head" }

[[chain]]
name = "in_count"
program = "counter"
direction = "ingress"
attach = { mode = "tcx", order = "head" }

[[replay]]
pcap = "x.pcap"
"#,
    );
    let r = run_file(&p);
    // The 6 client packets turn around into the device's own ingress (and
    // its stack); the 4 server packets arrive there the normal way.
    assert_eq!((r.counters["loop_back"], r.counters["in_count"]), (6, 10), "{:?}", r.counters);
    assert!(!r.output.iter().any(|o| o.starts_with("egress→peer")), "nothing reaches the peer: {:?}", r.output);
    let looped = r.output.iter().filter(|o| o.starts_with("ingress→stack") && o.contains("10.0.0.1:40000 -> 10.0.0.2:80"));
    assert_eq!(looped.clone().count(), 6, "{:?}", r.output);
    assert!(looped.into_iter().all(|o| o.ends_with("csum=ok")));
}

fn errors(src: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let p = scenario_file(&dir, src);
    match scenario::load_scenario_all(&p) {
        Ok(_) => Vec::new(),
        Err(e) => e.iter().map(|e| e.to_string().replace(&format!("{}/", dir.path().display()), "")).collect(),
    }
}

fn with_program(program: &str, direction: &str) -> String {
    format!(
        "name = \"s\"\n[[chain]]\nname = \"c\"\nprogram = {program}\ndirection = \"{direction}\"\nattach = {{ mode = \"tcx\" }}\n[[replay]]\npcap = \"x.pcap\"\n"
    )
}

#[test]
fn cilium_like_entries_are_validated_with_file_line_and_column() {
    let cases = [
        (
            with_program(r#"{ cilium = "cil_from_netdev", behaviour = "redirect", redirect_to = "eth9" }"#, "ingress"),
            "s.toml:4:79: `redirect_to` = \"eth9\" is not a device of the topology, expected \"peer\"",
        ),
        (
            with_program(r#"{ cilium = "cil_to_netdev", behaviour = "redirect", redirect_to = "peer" }"#, "egress"),
            "s.toml:4:77: a redirect to \"peer\" loops unless the entry is on ingress only",
        ),
        (
            with_program(r#"{ cilium = "cil_from_netdev", behaviour = "redirect", redirect_to = "dut" }"#, "both"),
            "s.toml:4:79: a redirect to \"dut\" loops unless the entry is on egress only",
        ),
        (
            with_program(r#"{ cilium = "cil_to_netdev", behaviour = "dnat", dnat_from = "[fd00::2]:80", dnat_to = "10.0.0.3:80" }"#, "egress"),
            "s.toml:4:71: the Cilium-like DNAT rewrites IPv4 only",
        ),
        (
            with_program(r#"{ foreign = "other_tc_filter" }"#, "both"),
            "s.toml:4:23: unknown foreign program `other_tc_filter`, expected `acme_tc_filter`",
        ),
        (
            with_program(r#"{ cilium = "cil_to_netdev", foreign = "acme_tc_filter" }"#, "both"),
            "s.toml:4:49: a program table has either `cilium` or `foreign`",
        ),
    ];
    for (src, want) in cases {
        let errs = errors(&src);
        assert_eq!(errs.len(), 1, "{src}\n{errs:?}");
        assert!(errs[0].starts_with(want), "{src}\ngot:  {}\nwant: {want}", errs[0]);
    }
    assert!(errors(&with_program(r#"{ foreign = "acme_tc_filter", behaviour = "drop" }"#, "both")).is_empty());
}

/// A refusal nobody asked about must not pass: with the snapshot off and no
/// `agent_error_contains`, the scenario fails and says why.
#[test]
fn an_unexpected_refusal_without_snapshot_or_check_fails_the_scenario() {
    if !ready("chain_rules::an_unexpected_refusal_without_snapshot_or_check", false) {
        return;
    }
    let src = std::fs::read_to_string(workspace().join("scenarios/chain-cilium-prio1-agent-refused.toml")).expect("read");
    let (head, _) = src.split_once("[expect]").expect("the scenario has an [expect] table");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("refused-unchecked.toml");
    let fixtures = workspace().join("fixtures");
    let text = format!("{head}[expect]\nsnapshot = false\n").replace("../fixtures", &fixtures.display().to_string());
    std::fs::write(&path, text).expect("write");
    let s = scenario::load_scenario(&path).unwrap_or_else(|e| panic!("{e}"));
    let outcome = tclab_lab::runner::run_one(&s, &opts());
    let tclab_lab::runner::Status::Failed(reasons) = &outcome.status else { panic!("{:?}", outcome.status) };
    assert!(reasons.iter().any(|r| r.contains("the agent refused to start") && r.contains("expects nothing")), "{reasons:?}");
}
