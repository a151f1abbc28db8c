//! Verifier budget per program, compared with the reviewed snapshot of the
//! same kernel (`lab/src/bench/snapshots/verifier@<major.minor>.snap`).
//!
//! The comparison is exact (the count is deterministic for a kernel and an
//! object): any change, up or down, leaves a `.snap.new` for review with
//! `tclab review --snapshots lab/src/bench/snapshots` and is reported, but is
//! not an error. The only limit is the 25% budget, which
//! `datapath/tests/verifier_budget.rs` also asserts on the host kernel.
//!
//! Kernel-matrix figures: call [`tclab_datapath::verifier::budget`] in the
//! guest, send the result to the host, and pass it to [`compare`] with the
//! manifest name (`5.10`, `6.1`, `6.12`).

use std::path::Path;

use anyhow::Context as _;
use tclab_datapath::verifier::{self, BUDGET_PERCENT, INSN_LIMIT, ProgramBudget, Source};

use crate::snapshot::{PendingWrites, SnapshotOutcome, SnapshotStore};

use super::report::{Row, SectionReport, Target};
use super::Section;

/// Default snapshot folder, relative to the repository root.
pub const SNAPSHOT_DIR: &str = "lab/src/bench/snapshots";

/// The snapshot name of a kernel's figures.
pub fn snapshot_name(kernel: &str) -> String {
    format!("verifier@{kernel}")
}

/// Compare `budgets` (taken on `kernel`) with its snapshot in `dir`.
///
/// # Errors
/// The snapshot could not be read or the pending file written.
pub fn compare(dir: &Path, kernel: &str, budgets: &[ProgramBudget], writes: PendingWrites) -> anyhow::Result<SnapshotOutcome> {
    let store = SnapshotStore::new(dir);
    let text = verifier::snapshot_text(budgets);
    store
        .check(&snapshot_name(kernel), "tclab bench verifier", None, &text, writes)
        .with_context(|| format!("compare with the verifier snapshot in {}", dir.display()))
}

/// `major.minor` of the running kernel ("6.18").
pub fn running_kernel() -> String {
    let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    match crate::runner::major_minor(&release) {
        Some((a, b)) => format!("{a}.{b}"),
        None => "unknown".into(),
    }
}

/// Read the figures of a snapshot file (`object program insns` lines after the header).
fn snapshot_figures(path: &Path) -> std::collections::HashMap<(String, String), f64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let body = text.splitn(3, "---\n").nth(2).unwrap_or("");
    body.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some(((it.next()?.to_owned(), it.next()?.to_owned()), it.next()?.parse().ok()?))
        })
        .collect()
}

/// Run the section on the running kernel.
///
/// # Errors
/// A program failed to load, or the snapshot could not be read.
pub fn run(snapshots: &Path) -> anyhow::Result<SectionReport> {
    let kernel = running_kernel();
    let budgets = verifier::budget().context("count the verifier's instructions")?;
    let mut report = SectionReport::new(
        Section::Verifier,
        &format!("Verifier budget (kernel {kernel})"),
        &format!("the reviewed snapshot {}/{}.snap (ratio = now ÷ snapshot)", snapshots.display(), snapshot_name(&kernel)),
    );
    let path = SnapshotStore::new(snapshots).path_for(&snapshot_name(&kernel), None);
    let previous = snapshot_figures(&path);
    for b in &budgets {
        let name = format!("{} · {}", b.object, b.program);
        let value = f64::from(b.insns);
        let row = match previous.get(&(b.object.to_owned(), b.program.to_owned())) {
            Some(&before) => Row::ratio(name, value, before, "insns"),
            None => Row::value(name, value, "insns"),
        };
        let source = match b.source {
            Source::VerifiedInsns => "verified_insns",
            Source::StatsLog => "BPF_LOG_STATS log",
        };
        report.rows.push(
            row.target(Target::ValueBelow(f64::from(INSN_LIMIT) * f64::from(BUDGET_PERCENT) / 100.0))
                .note(format!("{:.1}% of the {INSN_LIMIT} limit; from {source}", b.percent_of_limit())),
        );
    }
    let outcome = compare(snapshots, &kernel, &budgets, PendingWrites::from_env())?;
    report.notes.push(match outcome {
        SnapshotOutcome::Matched { path } => format!("snapshot {} matches exactly", path.display()),
        SnapshotOutcome::Missing { path, pending } => format!(
            "no snapshot {} yet{}",
            path.display(),
            pending.map(|p| format!(": review {} (tclab review --snapshots {})", p.display(), snapshots.display())).unwrap_or_default()
        ),
        SnapshotOutcome::Mismatch { path, diff, pending } => format!(
            "CHANGED against {}{}:\n{diff}",
            path.display(),
            pending.map(|p| format!(" (review {} with tclab review --snapshots {})", p.display(), snapshots.display())).unwrap_or_default()
        ),
    });
    report.notes.push(
        "counts are the kernel's `insn_processed`: `verified_insns` (5.16+) or the `processed N insns` line of a BPF_LOG_STATS load (5.10–5.15), which agree on this kernel (datapath/tests/verifier_budget.rs)".into(),
    );
    Ok(report)
}
