//! The verifier budget on the kernel matrix (issue #8): every program tclab
//! loads, counted by the verifier of 5.10, 6.1 and 6.12 inside QEMU, must
//! match the reviewed `lab/src/bench/snapshots/verifier@<kernel>.snap`
//! exactly (growth shows in review), and stay under 25% of the
//! 1M-instruction limit on 5.10. The counts do not depend on the lockdown
//! mode: 5.10 and 6.12 are counted again under `confidentiality`.
//!
//! Needs the kernels in the cache (`tclab kernels fetch`) and
//! `qemu-system-x86_64`. After a datapath change: `tclab bench verifier`,
//! then review the `.snap.new` files (`tclab review --snapshots
//! lab/src/bench/snapshots`).

use std::path::{Path, PathBuf};

use tclab_lab::bench::verifier::{compare_budgets, guest_snapshot_text};
use tclab_lab::guest::LockdownMode;
use tclab_lab::kernels::CachedKernel;
use tclab_lab::matrix::verifier_budget::{self, GuestBudget, KernelBudget};
use tclab_lab::snapshot::{PendingWrites, SnapshotOutcome};
use tclab_lab::vm::InitSpec;

#[path = "common/cached_kernel.rs"]
mod cached_kernel;
use cached_kernel::cached_kernel;

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("lab/ has a parent")
}

fn kernel(test: &str, name: &str) -> Option<CachedKernel> {
    if !tclab_net::require::root(test) {
        return None;
    }
    cached_kernel(test, name)
}

fn counts<'a>(runs: &'a [KernelBudget], kernel: &str, lockdown: LockdownMode) -> &'a [GuestBudget] {
    let run = runs.iter().find(|r| r.kernel == kernel && r.lockdown == lockdown).expect("cell reported");
    match &run.outcome {
        Ok(b) => b,
        Err(e) => panic!("no verifier counts from {kernel}/{lockdown}: {e}"),
    }
}

#[test]
fn verifier_counts_match_the_reviewed_snapshot_of_each_kernel_and_stay_within_budget_on_5_10() {
    let test = "verifier_counts_match_the_reviewed_snapshot_of_each_kernel";
    let names = ["5.10", "6.1", "6.12"];
    let kernels: Option<Vec<CachedKernel>> = names.iter().map(|n| kernel(test, n)).collect();
    let Some(kernels) = kernels else { return };
    let init = Some(InitSpec { exe: PathBuf::from(env!("CARGO_BIN_EXE_tclab")), args: Vec::new() });
    let jobs = tclab_lab::vm::default_jobs();
    let mut runs = verifier_budget::run(&kernels, &[LockdownMode::None], jobs, init.clone(), None);
    let strict: Vec<CachedKernel> = kernels.iter().filter(|k| ["5.10", "6.12"].contains(&k.info.name.as_str())).cloned().collect();
    runs.extend(verifier_budget::run(&strict, &[LockdownMode::Confidentiality], jobs, init, None));

    let snapshots = workspace().join("lab/src/bench/snapshots");
    let mut changed = String::new();
    for name in names {
        let budgets = counts(&runs, name, LockdownMode::None);
        assert!(budgets.len() >= 20, "{name}: only {} programs counted:\n{}", budgets.len(), guest_snapshot_text(budgets));
        assert!(budgets.iter().all(|b| b.insns > 0), "{name}: a zero count:\n{}", guest_snapshot_text(budgets));
        match compare_budgets(&snapshots, name, budgets, PendingWrites::from_env()).expect("snapshot readable") {
            SnapshotOutcome::Matched { .. } => {}
            SnapshotOutcome::Missing { path, .. } => changed.push_str(&format!("\n{name}: no snapshot {}\n", path.display())),
            SnapshotOutcome::Mismatch { path, diff, .. } => changed.push_str(&format!("\n{name}: differs from {}:\n{diff}", path.display())),
        }
    }
    assert!(
        changed.is_empty(),
        "verifier counts changed; review with `tclab bench verifier` and `tclab review --snapshots lab/src/bench/snapshots`:{changed}"
    );

    // Lockdown restricts helpers at run time, not what the verifier explores.
    for name in ["5.10", "6.12"] {
        assert_eq!(
            guest_snapshot_text(counts(&runs, name, LockdownMode::Confidentiality)),
            guest_snapshot_text(counts(&runs, name, LockdownMode::None)),
            "{name}: the counts depend on the lockdown mode"
        );
    }

    // Issue #8's target: every program under 25% of the limit on 5.10.
    let over: Vec<String> = counts(&runs, "5.10", LockdownMode::None)
        .iter()
        .filter(|b| b.insns >= 250_000)
        .map(|b| format!("{} {}: {} insns ({:.1}%)", b.object, b.program, b.insns, b.percent_of_limit()))
        .collect();
    assert!(over.is_empty(), "over 25% of the 1M-instruction limit on 5.10:\n{}", over.join("\n"));
}
