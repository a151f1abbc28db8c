//! Cross-loader conformance: the agent's own committed object
//! (`ebpf/prebuilt/datapath_lru.o`, `tclab_ingress`/`tclab_egress`) loaded
//! through the bring-your-own path (libbpf) behaves exactly as when the
//! built-in path (aya) loads it, on the same chain and capture.
//!
//! Compared, field by field, between `scenarios/agent-tcx-http-get.toml`
//! (aya) and `scenarios/byo-agent-libbpf-http-get.toml` (libbpf):
//! - the chain as the kernel reports it (hook, API, program name, entry);
//! - every replayed packet: hook, frame, and which entries saw it;
//! - what came out of the far side (output);
//! - per-entry packet counts (aya: the agent's counter map; libbpf: the
//!   kernel's run count of the two programs);
//! - the CT table: the libbpf run's dumped `tclab_ct` bytes decoded with the
//!   agent's own types into the same normalised lines as the aya run's `ct`;
//! - the agent's counters: the libbpf run's dumped per-CPU `tclab_counters`
//!   summed and named like the aya run's `agent_counters`.
//!
//! Not compared: spans (nothing reads the libbpf run's ring buffer; the
//! `http_requests`/`http_responses` counters stand for them) and the agent's
//! start-up outcome (the object path has no agent rules).

use std::path::{Path, PathBuf};

use tclab_datapath::ct::CtRecord;
use tclab_datapath::types::{COUNTER_MAX, Counters, CtEntry, CtTuple, read_struct};
use tclab_lab::runner::report::ScenarioResult;
use tclab_lab::runner::{KernelContext, RunOptions, execute};
use tclab_lab::snapshot::{PendingWrites, SnapshotStore};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("lab/ has a parent").to_path_buf()
}

fn run(name: &str) -> ScenarioResult {
    let path = workspace().join("scenarios").join(format!("{name}.toml"));
    let s = tclab_lab::scenario::load_scenario(&path).unwrap_or_else(|e| panic!("{e}"));
    let opts = RunOptions {
        kernel: KernelContext::probe_running("host"),
        snapshots: SnapshotStore::new(workspace().join("scenarios/snapshots")),
        writes: PendingWrites::Never,
        results_dir: None,
    };
    execute::execute(&s, &opts).unwrap_or_else(|e| panic!("{name}: {e:#}"))
}

#[test]
fn aya_and_libbpf_loads_of_the_agent_agree() {
    if !tclab_net::require::root("aya_and_libbpf_loads_of_the_agent_agree") {
        return;
    }
    let aya = run("agent-tcx-http-get");
    let libbpf = run("byo-agent-libbpf-http-get");

    assert_eq!(aya.chain, libbpf.chain, "chain as the kernel reports it");
    assert_eq!(aya.packets, libbpf.packets, "per-packet hook, frame and seen_by");
    assert_eq!(aya.output, libbpf.output, "output");
    assert_eq!(aya.counters, libbpf.counters, "per-entry packet counts");
    assert_eq!(aya.packets.len(), 10, "the capture was replayed");

    let dump = |map: &str| libbpf.maps.iter().find(|m| m.map == map).unwrap_or_else(|| panic!("no dump of {map}"));
    let mut ct: Vec<CtRecord> = dump("tclab_ct")
        .raw
        .iter()
        .map(|e| CtRecord {
            tuple: read_struct::<CtTuple>(&e.key).expect("CT key decodes"),
            entry: read_struct::<CtEntry>(&e.values[0]).expect("CT value decodes"),
        })
        .collect();
    tclab_datapath::ct::sort_records(&mut ct);
    let ct_lines: Vec<String> = ct.iter().map(CtRecord::normalised_line).collect();
    assert!(!aya.ct.is_empty(), "the aya run has a CT table");
    assert_eq!(aya.ct, ct_lines, "CT table");

    let mut counters = Counters([0; COUNTER_MAX]);
    for e in &dump("tclab_counters").raw {
        let slot = u32::from_le_bytes(e.key[..4].try_into().expect("u32 key")) as usize;
        let sum = e.values.iter().map(|v| u64::from_le_bytes(v[..8].try_into().expect("u64 value"))).sum();
        if slot < COUNTER_MAX {
            counters.0[slot] = sum;
        }
    }
    let named: std::collections::BTreeMap<String, u64> =
        counters.iter().filter(|(_, v)| *v > 0).map(|(k, v)| (k.to_string(), v)).collect();
    assert!(!named.is_empty(), "the libbpf run counted");
    assert_eq!(aya.agent_counters, named, "agent counters");
}
