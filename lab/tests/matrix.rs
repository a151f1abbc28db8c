//! The kernel matrix end to end: every scenario in `scenarios/` inside QEMU
//! on 5.10, 6.1 and 6.12 under each lockdown mode (nine cells), with the
//! `tclab` binary as the guest's init, judged against the same reviewed
//! snapshots as the host-kernel run.
//!
//! Needs the kernels in the cache (`tclab kernels fetch`, done by `.ci/run`)
//! and `qemu-system-x86_64`.

use std::path::{Path, PathBuf};
use std::process::Command;

use tclab_lab::guest::LockdownMode;
use tclab_lab::kernels::CachedKernel;
use tclab_lab::matrix::{self, CellReport, MatrixOptions};
use tclab_lab::runner::{self, Status};
use tclab_lab::snapshot::{PendingWrites, SnapshotStore};
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

fn tclab() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tclab"))
}

/// Every failed cell or scenario, with its reasons and diffs.
fn failures(cells: &[CellReport]) -> String {
    let mut out = String::new();
    for c in cells {
        if let Some(f) = &c.failure {
            out.push_str(&format!("\ncell {} failed: {f}\n{}\n", c.label(), c.console_excerpt.join("\n")));
        }
        for o in c.outcomes.iter().filter(|o| o.failed()) {
            let Status::Failed(reasons) = &o.status else { continue };
            out.push_str(&format!("\n{} on {}: {}\n", o.scenario, c.label(), reasons.join("; ")));
            if let Some(diff) = &o.diff {
                out.push_str(diff);
            }
        }
    }
    out
}

#[test]
fn matrix_runs_every_scenario_on_each_kernel_and_lockdown_mode() {
    let test = "matrix_runs_every_scenario";
    let kernels: Option<Vec<CachedKernel>> = ["5.10", "6.1", "6.12"].iter().map(|n| kernel(test, n)).collect();
    let Some(kernels) = kernels else { return };
    let dir = workspace().join("scenarios");
    let scenarios = tclab_lab::scenario::load_dir(&dir).unwrap_or_else(|errors| {
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        panic!("scenario errors:\n{}", text.join("\n"))
    });
    // The whole matrix, as the nightly runs it: 3 kernels × 3 lockdown modes.
    let mut opts = MatrixOptions::new(kernels, LockdownMode::ALL.to_vec(), SnapshotStore::new(dir.join("snapshots")));
    opts.writes = PendingWrites::from_env();
    opts.init = Some(InitSpec { exe: tclab(), args: Vec::new() });
    let cells = matrix::run(&scenarios, &opts, |c| eprintln!("{}", matrix::cell_line(c))).expect("matrix runs");
    let all: Vec<_> = cells.iter().flat_map(|c| c.outcomes.iter().cloned()).collect();
    let table = runner::summary_table(&all);
    eprintln!("{table}");
    let failed = failures(&cells);
    assert!(failed.is_empty(), "{table}{failed}");

    assert_eq!(cells.len(), 9, "{table}");
    for c in &cells {
        // The capability snapshot, then one outcome per scenario.
        assert_eq!(c.outcomes.len(), scenarios.len() + 1, "cell {}:\n{table}", c.label());
        assert_eq!(c.outcomes[0].scenario, matrix::capabilities::NAME);
        assert_eq!(c.outcomes[0].status, Status::Passed, "cell {}", c.label());
        let ran = c.outcomes.iter().filter(|o| o.status == Status::Passed).count();
        assert!(ran >= 10, "only {ran} scenarios passed on {}:\n{table}", c.label());
        for o in &c.outcomes {
            if let Status::Skipped(why) = &o.status {
                // Only a missing capability may skip here: no scenario in
                // scenarios/ names a kernel or lockdown it avoids.
                assert!(why.starts_with("needs "), "{} skipped on {}: {why}", o.scenario, c.label());
            }
        }
    }
    // TCX arrived in 6.6: the TCX scenarios say so on 5.10 and 6.1 and run on 6.12.
    let tcx = scenarios.iter().find(|s| s.name == "agent-tcx-http-get").expect("agent-tcx-http-get exists");
    for c in &cells {
        let o = c.outcomes.iter().find(|o| o.scenario == tcx.name).expect("reported");
        if c.kernel == "6.12" {
            assert_eq!(o.status, Status::Passed, "{}", c.label());
        } else {
            assert_eq!(o.status, Status::Skipped("needs tcx".into()), "{}", c.label());
        }
    }
    // Under lockdown the probe says bpf_probe_write_user is refused.
    for c in &cells {
        let caps = c.capabilities.as_deref().expect("probe reported");
        let expect = if c.lockdown == LockdownMode::None { "probe_write_user: true" } else { "probe_write_user: false" };
        assert!(caps.lines().any(|l| l == expect), "{}:\n{caps}", c.label());
    }
}

#[test]
fn tclab_run_with_kernel_boots_the_cell_and_prints_the_table() {
    let Some(_) = kernel("tclab_run_with_kernel", "5.10") else { return };
    let results = tempfile::tempdir().expect("tempdir");
    let out = Command::new(tclab())
        .current_dir(workspace())
        .env("INSTA_UPDATE", "no")
        .args(["run", "--kernel", "5.10", "--lockdown", "integrity", "scenarios/agent-netlink-http-get.toml"])
        .arg("--results")
        .arg(results.path())
        .output()
        .expect("tclab runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tclab run failed:\n{stdout}\n{stderr}");
    let row = stdout.lines().find(|l| l.starts_with("agent-netlink-http-get")).unwrap_or_else(|| panic!("no row:\n{stdout}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[1..4], ["5.10", "integrity", "pass"], "{row}");
    assert!(stdout.contains("2 passed, 0 failed, 0 skipped"), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(results.path().join("results.json")).expect("results.json")).expect("json");
    let cell = &json["cells"][0];
    assert_eq!(cell["kernel"], "5.10");
    assert_eq!(cell["lockdown"], "integrity");
    assert!(cell["boot_ms"].as_u64().is_some_and(|ms| ms > 0), "{cell}");
}

#[test]
fn tclab_run_rejects_unknown_kernels_and_lockdown_modes_before_booting() {
    let Some(_) = kernel("tclab_run_rejects", "5.10") else { return };
    let run = |args: &[&str]| {
        let out = Command::new(tclab()).current_dir(workspace()).arg("run").args(args).output().expect("tclab runs");
        assert_eq!(out.status.code(), Some(2), "{args:?} should be an infrastructure error");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(&["--kernel", "4.19"]);
    assert!(e.contains("4.19") && e.contains("5.10"), "names the unknown kernel and the known ones: {e}");
    let e = run(&["--kernel", "5.10", "--lockdown", "paranoid"]);
    assert!(e.contains("paranoid") && e.contains("confidentiality"), "{e}");
    let e = run(&["--lockdown", "integrity"]);
    assert!(e.contains("--lockdown applies to QEMU kernels"), "{e}");
}

/// A foreign object that calls `bpf_loop` (5.17+): the 5.10 cell fails with
/// the verifier's reason, the 6.1 cell runs it; the cells are independent.
#[test]
fn an_object_using_a_helper_a_kernel_lacks_fails_only_that_kernel_with_the_verifier_reason() {
    let test = "an_object_using_a_helper_a_kernel_lacks";
    let (Some(k510), Some(k61)) = (kernel(test, "5.10"), kernel(test, "6.1")) else { return };
    let file = workspace().join("fixtures/byo/byo-bpf-loop.toml");
    let scenario = tclab_lab::scenario::load_scenario(&file).expect("fixture scenario loads");
    let snapshots = tempfile::tempdir().expect("tempdir");
    let mut opts = MatrixOptions::new(vec![k510, k61], vec![LockdownMode::None], SnapshotStore::new(snapshots.path()));
    opts.writes = PendingWrites::Never;
    opts.init = Some(InitSpec { exe: tclab(), args: Vec::new() });
    let cells = matrix::run(std::slice::from_ref(&scenario), &opts, |_| {}).expect("matrix runs");
    let verdict = |kernel: &str| {
        let cell = cells.iter().find(|c| c.kernel == kernel).expect("cell reported");
        assert!(cell.failure.is_none(), "cell {} itself failed: {:?}", cell.label(), cell.failure);
        cell.outcomes.iter().find(|o| o.scenario == scenario.name).expect("scenario reported").status.clone()
    };
    let Status::Failed(reasons) = verdict("5.10") else { panic!("5.10 should reject bpf_loop: {:?}", verdict("5.10")) };
    let text = reasons.join("\n");
    assert!(text.contains("looper") && text.contains("verifier"), "names the entry and the verifier's reason:\n{text}");
    assert_eq!(verdict("6.1"), Status::Passed);
}

/// `tclab inspect --kernel`: a load-only dry run of each program per kernel.
#[test]
fn inspect_dry_runs_an_object_on_each_kernel() {
    let Some(_) = kernel("inspect_dry_runs", "5.10") else { return };
    let out = Command::new(tclab())
        .current_dir(workspace())
        .args(["inspect", "fixtures/byo/loop_count.o", "--kernel", "5.10,6.1", "--output", "json"])
        .output()
        .expect("tclab runs");
    assert_eq!(out.status.code(), Some(1), "a kernel rejects a program: exit 1\n{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let load = |kernel: &str| {
        let cell = doc["kernels"].as_array().expect("kernels").iter().find(|k| k["kernel"] == kernel).expect("cell");
        cell["programs"][0]["load"].clone()
    };
    let on_510 = load("5.10");
    assert_eq!(on_510["status"], "rejected", "{on_510}");
    assert!(!on_510["verifier"].as_array().expect("verifier lines").is_empty(), "{on_510}");
    let on_61 = load("6.1");
    assert_eq!(on_61["status"], "loads", "{on_61}");
}
