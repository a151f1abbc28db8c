//! Scenarios in `scenarios/known-gaps/` describe behaviour the datapath does
//! not have yet. Each must still fail; when one passes, the gap is closed and
//! the scenario belongs back in `scenarios/` (with a reviewed snapshot).

use std::path::Path;

use tclab_lab::runner::{self, KernelContext, RunOptions, Status};
use tclab_lab::snapshot::{PendingWrites, SnapshotStore};

#[test]
fn known_gaps_still_fail_on_the_host_kernel() {
    if !tclab_net::require::root("known_gaps_still_fail_on_the_host_kernel") {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/known-gaps");
    let scenarios = tclab_lab::scenario::load_dir(&dir).unwrap_or_else(|errors| {
        panic!("known-gaps errors: {:?}", errors.iter().map(ToString::to_string).collect::<Vec<_>>())
    });
    assert!(!scenarios.is_empty(), "no known-gap scenarios: remove this test and the folder");
    let store_dir = tempfile::tempdir().expect("tempdir");
    let opts = RunOptions {
        kernel: KernelContext::probe_running("host"),
        snapshots: SnapshotStore::new(store_dir.path()),
        writes: PendingWrites::Never,
        results_dir: None,
    };
    for outcome in runner::run_all(&scenarios, &opts, |_| {}) {
        let Status::Failed(reasons) = &outcome.status else {
            panic!("{} now passes: move it back to scenarios/ and review its snapshot", outcome.scenario)
        };
        // Only the inline checks count: snapshots are not kept for known gaps.
        let check_failures: Vec<&String> = reasons.iter().filter(|r| r.starts_with("check ")).collect();
        assert!(
            !check_failures.is_empty(),
            "{}: expected a failing inline check, got {reasons:?}",
            outcome.scenario
        );
    }
}
