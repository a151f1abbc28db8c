//! The capability table of one kernel × lockdown cell: what the agent's
//! probe found, kept as a reviewed snapshot so a kernel or lockdown change
//! in what the datapath may use shows up in review.

use std::path::PathBuf;

use crate::runner::{KernelContext, RunOptions, ScenarioOutcome, Status, lockdown_name};
use crate::scenario::Capability;
use crate::snapshot::SnapshotOutcome;

/// The pseudo-scenario name of the capability snapshot in results.
pub const NAME: &str = "capabilities";

/// Capabilities the scenario format can require, from the probe's JSON.
pub fn of_probe(probe: &serde_json::Value) -> Vec<Capability> {
    let has = |key: &str| probe.get(key).and_then(serde_json::Value::as_bool).unwrap_or(false);
    [
        ("tcx", Capability::Tcx),
        ("bpf_loop", Capability::BpfLoop),
        ("ringbuf", Capability::Ringbuf),
        ("btf", Capability::Btf),
        ("probe_write_user", Capability::ProbeWriteUser),
    ]
    .into_iter()
    .filter(|(key, _)| has(key))
    .map(|(_, cap)| cap)
    .collect()
}

/// The snapshot text: one `key: value` line per probe field, sorted by
/// key; notes (probes that failed unexpectedly) one per line.
pub fn render(probe: &serde_json::Value) -> String {
    let mut out = String::new();
    let Some(fields) = probe.as_object() else {
        return format!("probe: {probe}\n");
    };
    for (key, value) in fields {
        match value {
            serde_json::Value::Array(items) if items.is_empty() => out.push_str(&format!("{key}: []\n")),
            serde_json::Value::Array(items) => {
                out.push_str(&format!("{key}:\n"));
                for item in items {
                    out.push_str(&format!("  - {}\n", plain(item)));
                }
            }
            other => out.push_str(&format!("{key}: {}\n", plain(other))),
        }
    }
    out
}

fn plain(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "none".into(),
        other => other.to_string(),
    }
}

/// The snapshot name for a cell: `capabilities@5.10+integrity`.
pub fn snapshot_name(kernel: &KernelContext) -> String {
    format!("{NAME}@{}+{}", kernel.name, lockdown_name(kernel.lockdown))
}

/// Compare `text` with the cell's capability snapshot.
pub fn judge(text: &str, opts: &RunOptions) -> ScenarioOutcome {
    let name = snapshot_name(&opts.kernel);
    let source = format!("kernels/{}.toml", opts.kernel.name);
    let mut outcome = ScenarioOutcome::new(NAME, PathBuf::from(&source), &opts.kernel);
    match opts.snapshots.check(&name, &source, None, text, opts.writes) {
        Ok(SnapshotOutcome::Matched { path }) => outcome.snapshot = Some(path),
        Ok(SnapshotOutcome::Missing { path, pending }) => {
            let review = pending.map(|p| format!(": review {} (tclab review)", p.display())).unwrap_or_default();
            outcome.status = Status::Failed(vec![format!("no capability snapshot {}{review}", path.display())]);
        }
        Ok(SnapshotOutcome::Mismatch { path, diff, pending }) => {
            let review = pending.map(|p| format!(": review {} (tclab review)", p.display())).unwrap_or_default();
            outcome.status = Status::Failed(vec![format!("capabilities differ from {}{review}", path.display())]);
            outcome.diff = Some(diff);
        }
        Err(e) => outcome.status = Status::Failed(vec![e.to_string()]),
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn render_lists_fields_sorted_and_notes_one_per_line() {
        let probe = json!({
            "kernel_version": "5.10.0-32-cloud-amd64",
            "tcx": false,
            "bpf_loop_override": null,
            "notes": ["tcx probe: EINVAL"],
        });
        assert_eq!(
            render(&probe),
            "bpf_loop_override: none\nkernel_version: 5.10.0-32-cloud-amd64\nnotes:\n  - tcx probe: EINVAL\ntcx: false\n"
        );
    }

    #[test]
    fn of_probe_keeps_only_present_capabilities() {
        let probe = json!({ "tcx": false, "btf": true, "ringbuf": true, "bpf_loop": true, "probe_write_user": false });
        assert_eq!(of_probe(&probe), vec![Capability::BpfLoop, Capability::Ringbuf, Capability::Btf]);
    }
}
