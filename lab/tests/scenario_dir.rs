//! The shipped scenarios: all load without errors, and together they replay
//! every fixture.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use tclab_lab::scenario::{self, Direction, Lockdown, ResolvedAttach, TcxOrder};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn load_all() -> Vec<scenario::Scenario> {
    match scenario::load_dir(&root().join("scenarios")) {
        Ok(s) => s,
        Err(errors) => {
            let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
            panic!("scenarios/ has errors:\n{}", text.join("\n"));
        }
    }
}

#[test]
fn scenario_dir_loads_with_zero_errors() {
    let all = load_all();
    assert!(all.len() >= 15, "only {} scenarios", all.len());
    let names: BTreeSet<_> = all.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names.len(), all.len(), "names are unique");
    for s in &all {
        let stem = s.path.file_stem().unwrap().to_string_lossy();
        assert_eq!(stem, s.name, "file name matches the scenario name");
        assert!(!s.description.is_empty(), "{}: description", s.name);
    }
}

#[test]
fn scenario_dir_references_every_fixture() {
    let used: BTreeSet<PathBuf> = load_all()
        .iter()
        .flat_map(|s| s.replays.iter().map(|r| r.pcap.canonicalize().unwrap()))
        .collect();
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(root().join("fixtures")).unwrap() {
        let path = entry.unwrap().path();
        if path
            .extension()
            .is_some_and(|x| x == "pcap" || x == "pcapng")
            && !used.contains(&path.canonicalize().unwrap())
        {
            missing.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    assert!(
        missing.is_empty(),
        "fixtures no scenario replays: {missing:?}"
    );
}

#[test]
fn scenario_dir_covers_tcx_and_netlink_agents_and_test_programs() {
    let all = load_all();
    let agent_on = |tcx: bool| {
        all.iter().any(|s| {
            let chain = scenario::resolve_chain(s, true);
            chain
                .sequence
                .iter()
                .any(|st| st.entry == "agent" && matches!(st.how, ResolvedAttach::Tcx(_)) == tcx)
        })
    };
    assert!(agent_on(true) && agent_on(false));
    for program in ["pass", "unspec", "drop", "counter"] {
        let p = scenario::Builtin::from_name(program).unwrap();
        assert!(
            all.iter().any(|s| s
                .chain
                .iter()
                .any(|e| e.program == scenario::Program::Builtin(p))),
            "no scenario uses {program}"
        );
    }
}

#[test]
fn scenario_before_after_resolves_to_the_documented_order() {
    let s = scenario::load_scenario(&root().join("scenarios/chain-tcx-before-after.toml")).unwrap();
    let chain = scenario::resolve_chain(&s, true);
    for hook in [Direction::Ingress, Direction::Egress] {
        assert_eq!(
            chain.hook(hook).tcx,
            ["first_counter", "middle", "last_counter", "sink"]
        );
    }
    assert_eq!(s.lockdown, Lockdown::ALL);
    assert!(
        matches!(&s.chain[3].attach, scenario::Attach::Tcx { order: TcxOrder::After(t) } if t == "first_counter")
    );
}
