//! Every scenario in `scenarios/` on the host kernel, through the same code
//! path as `tclab run`, judged against the reviewed snapshots.

use std::path::Path;

use tclab_lab::runner::{self, KernelContext, RunOptions, Status};
use tclab_lab::snapshot::{PendingWrites, SnapshotStore};

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("lab/ has a parent")
}

#[test]
fn every_scenario_passes_on_the_host_kernel() {
    if !tclab_net::require::root("every_scenario_passes_on_the_host_kernel") {
        return;
    }
    let dir = workspace().join("scenarios");
    let scenarios = tclab_lab::scenario::load_dir(&dir).unwrap_or_else(|errors| {
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        panic!("scenario errors:\n{}", text.join("\n"))
    });
    assert!(scenarios.len() >= 15, "expected at least 15 scenarios, found {}", scenarios.len());
    let opts = RunOptions {
        kernel: KernelContext::probe_running("host"),
        snapshots: SnapshotStore::new(dir.join("snapshots")),
        writes: PendingWrites::from_env(),
        results_dir: None,
    };
    let outcomes = runner::run_all(&scenarios, &opts, |_| {});
    let table = runner::summary_table(&outcomes);
    let mut failures = String::new();
    for o in &outcomes {
        if let Status::Failed(reasons) = &o.status {
            failures.push_str(&format!("\n{} ({}): {}\n", o.scenario, o.file.display(), reasons.join("; ")));
            if let Some(diff) = &o.diff {
                failures.push_str(diff);
            }
        }
    }
    eprintln!("{table}");
    assert!(failures.is_empty(), "{table}{failures}");
    let ran = outcomes.iter().filter(|o| o.status == Status::Passed).count();
    assert!(ran >= 15, "only {ran} scenarios ran on the host kernel:\n{table}");
}
