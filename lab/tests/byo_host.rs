//! Bring-your-own objects on the host kernel, through the same runner as
//! `tclab run`: the CO-RE example object (scenario `byo-port-filter`),
//! constants applied before load, netlink attach with a program chosen by
//! section, the bpf_loop object (accepted where the kernel has the helper,
//! a verifier finding where it does not), and `tclab inspect`'s dry run.

use std::path::{Path, PathBuf};

use tclab_lab::byo::LoadCheck;
use tclab_lab::runner::report::ScenarioResult;
use tclab_lab::runner::{self, KernelContext, RunOptions, Status};
use tclab_lab::scenario::{self, Capability};
use tclab_lab::snapshot::{PendingWrites, SnapshotStore};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("lab/ has a parent").to_path_buf()
}

fn opts() -> RunOptions {
    RunOptions {
        kernel: KernelContext::probe_running("host"),
        snapshots: SnapshotStore::new(workspace().join("scenarios/snapshots")),
        writes: PendingWrites::Never,
        results_dir: None,
    }
}

fn run(path: &Path) -> (Status, Option<ScenarioResult>) {
    let s = scenario::load_scenario(path).unwrap_or_else(|e| panic!("{e}"));
    let o = runner::run_one(&s, &opts());
    (o.status, o.result)
}

fn dump<'a>(r: &'a ScenarioResult, map: &str) -> &'a [String] {
    &r.maps.iter().find(|m| m.map == map).unwrap_or_else(|| panic!("no dump of {map}: {:?}", r.maps)).lines
}

#[test]
fn core_object_with_filled_maps_and_tail_calls_runs_on_the_host() {
    if !tclab_net::require::root("core_object_with_filled_maps_and_tail_calls_runs_on_the_host") {
        return;
    }
    let (status, result) = run(&workspace().join("scenarios/byo-port-filter.toml"));
    assert_eq!(status, Status::Passed, "{result:#?}");
    let r = result.expect("a result");
    // The DNS query hit the drop rule the scenario filled: nothing after the filter saw it.
    let query = r.packets.iter().find(|p| p.frame.contains("-> 10.0.0.2:53 ")).expect("the DNS query");
    assert_eq!(query.seen_by, vec!["filter"]);
    // CO-RE: skb->protocol and skb->len were read at the kernel's offsets
    // (the mirror struct orders them differently), so ports and lengths are right.
    assert!(dump(&r, "byo_stats").contains(&"[53] = { packets: 1, bytes: 72 }".to_string()), "{:?}", r.maps);
    assert!(dump(&r, "byo_rules").contains(&"[53] = { action: 2, hits: 1 }".to_string()));
    // Tail calls: 10 TCP packets through slot 0, the DNS answer through slot 1.
    assert_eq!(dump(&r, "byo_proto_hits"), ["[0] = 10", "[1] = 1"]);
}

fn temp_scenario(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("byo-test.toml");
    std::fs::write(&path, body).expect("write scenario");
    path
}

#[test]
fn constants_are_set_before_load() {
    if !tclab_net::require::root("constants_are_set_before_load") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let object = workspace().join("fixtures/byo/port_filter.o");
    // byo_default_action = 2 (TC_ACT_SHOT): every packet without a rule ends at the filter.
    let body = format!(
        r#"name = "byo-test"
[[chain]]
name = "filter"
attach = {{ mode = "tcx", order = "head" }}
program = {{ object = "{}", program = "byo_port_filter", constants = {{ byo_default_action = 2 }} }}
[[chain]]
name = "after"
program = "counter"
attach = {{ mode = "tcx", order = "tail" }}
[[replay]]
pcap = "{}"
[expect]
snapshot = false
counters = {{ filter = 10, after = 0 }}
"#,
        object.display(),
        workspace().join("fixtures/http-get.pcap").display()
    );
    let (status, result) = run(&temp_scenario(tmp.path(), &body));
    assert_eq!(status, Status::Passed, "{result:#?}");
}

#[test]
fn bpf_loop_object_loads_where_the_kernel_has_the_helper_and_is_a_finding_elsewhere() {
    if !tclab_net::require::root("bpf_loop_object_loads_where_the_kernel_has_the_helper_and_is_a_finding_elsewhere") {
        return;
    }
    let kernel = KernelContext::probe_running("host");
    let (status, result) = run(&workspace().join("fixtures/byo/byo-bpf-loop.toml"));
    if kernel.has(Capability::BpfLoop) {
        assert_eq!(status, Status::Passed, "{result:#?}");
        let r = result.expect("a result");
        // Netlink at priority 1, chosen by its section `tc` (the object's only program).
        assert!(r.chain.iter().any(|c| c.api == "netlink prio=1 handle=0x1" && c.program == "byo_loop" && c.entry == "looper"), "{:?}", r.chain);
        // 4 packets × byo_loop_rounds (4) callback runs.
        assert_eq!(dump(&r, "byo_loop_total"), ["[0] = 16"]);
    } else {
        let Status::Failed(reasons) = status else { panic!("expected the kernel to reject byo_loop, got {status:?}") };
        let text = reasons.join("; ");
        assert!(text.contains("the kernel rejected program `byo_loop`"), "{text}");
        assert!(text.contains("verifier:"), "no verifier log in: {text}");
    }
}

#[test]
fn dry_run_reports_each_program_of_an_object() {
    if !tclab_net::require::root("dry_run_reports_each_program_of_an_object") {
        return;
    }
    let kernel = KernelContext::probe_running("host");
    let runs = tclab_lab::byo::dry_run(&workspace().join("fixtures/byo/loop_count.o")).expect("dry run");
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].program, "byo_loop");
    match (&runs[0].load, kernel.has(Capability::BpfLoop)) {
        (LoadCheck::Loads { .. }, true) => {}
        (LoadCheck::Rejected { verifier, .. }, false) => assert!(!verifier.is_empty(), "{runs:?}"),
        (other, has) => panic!("bpf_loop on this kernel: {has}, dry run said {other:?}"),
    }
    let all = tclab_lab::byo::inspect(&workspace().join("fixtures/byo/port_filter.o"), true).expect("inspect");
    assert_eq!(all.dry_run.len(), 4);
    assert!(all.dry_run.iter().all(|d| matches!(d.load, LoadCheck::Loads { .. })), "{:?}", all.dry_run);
    assert!(all.btf && all.core_relocations > 0, "the example must carry CO-RE relocations");
    let rules = all.maps.iter().find(|m| m.name == "byo_rules").expect("byo_rules");
    assert_eq!(rules.value_type_name.as_deref(), Some("struct byo_rule"));
    assert!(all.globals.iter().any(|g| g.name == "byo_default_action" && g.section == ".rodata"));
}

#[test]
fn a_verifier_rejection_is_the_scenarios_result_with_the_verifiers_reason() {
    if !tclab_net::require::root("a_verifier_rejection_is_the_scenarios_result_with_the_verifiers_reason") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let body = format!(
        r#"name = "byo-test"
[[chain]]
name = "bad"
attach = {{ mode = "tcx", order = "head" }}
program = {{ object = "{}" }}
[[replay]]
pcap = "{}"
"#,
        workspace().join("fixtures/byo/bad_access.o").display(),
        workspace().join("fixtures/http-get.pcap").display()
    );
    let (status, result) = run(&temp_scenario(tmp.path(), &body));
    assert!(result.is_none());
    let Status::Failed(reasons) = status else { panic!("expected a rejection, got {status:?}") };
    let text = reasons.join("; ");
    assert!(text.contains("chain entry `bad`: the kernel rejected program `byo_unchecked_read`"), "{text}");
    assert!(text.contains("libbpf: prog 'byo_unchecked_read': BPF program load failed"), "{text}");
    assert!(text.contains("verifier:") && text.contains("invalid access to packet"), "{text}");
}
