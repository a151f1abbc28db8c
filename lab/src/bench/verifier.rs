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

use crate::matrix::verifier_budget::GuestBudget;
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
    compare_text(dir, kernel, &verifier::snapshot_text(budgets), writes)
}

/// [`compare`] for counts a kernel-matrix guest sent
/// ([`crate::matrix::verifier_budget`]).
///
/// # Errors
/// As [`compare`].
pub fn compare_budgets(dir: &Path, kernel: &str, budgets: &[GuestBudget], writes: PendingWrites) -> anyhow::Result<SnapshotOutcome> {
    compare_text(dir, kernel, &guest_snapshot_text(budgets), writes)
}

/// The snapshot text of a guest's counts, line for line as
/// [`verifier::snapshot_text`] writes the host's.
pub fn guest_snapshot_text(budgets: &[GuestBudget]) -> String {
    budgets.iter().map(|b| format!("{} {} {}\n", b.object, b.program, b.insns)).collect()
}

fn compare_text(dir: &Path, kernel: &str, text: &str, writes: PendingWrites) -> anyhow::Result<SnapshotOutcome> {
    let store = SnapshotStore::new(dir);
    store
        .check(&snapshot_name(kernel), "tclab bench verifier", None, text, writes)
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

/// One count, from the host or a guest.
struct Count<'a> {
    object: &'a str,
    program: &'a str,
    insns: u32,
    source: &'a str,
}

/// Run the section: the running kernel, then each QEMU kernel of `kernels`
/// (see [`KernelChoice`]).
///
/// # Errors
/// A program failed to load on the host, or a snapshot could not be read.
pub fn run(snapshots: &Path, kernels: &KernelChoice) -> anyhow::Result<SectionReport> {
    let mut report = SectionReport::new(
        Section::Verifier,
        "Verifier budget",
        &format!("the reviewed snapshot {}/verifier@<kernel>.snap (ratio = now ÷ snapshot)", snapshots.display()),
    );
    if kernels.host {
        let kernel = running_kernel();
        let budgets = verifier::budget().context("count the verifier's instructions")?;
        let counts: Vec<Count> = budgets
            .iter()
            .map(|b| Count {
                object: b.object,
                program: b.program,
                insns: b.insns,
                source: match b.source {
                    Source::VerifiedInsns => "verified_insns",
                    Source::StatsLog => "stats_log",
                },
            })
            .collect();
        let outcome = compare(snapshots, &kernel, &budgets, PendingWrites::from_env())?;
        push_kernel(&mut report, snapshots, &kernel, "", &counts, outcome);
    }
    if !kernels.qemu.is_empty() {
        let cancel = Some(crate::vm::Cancel::when(crate::interrupt::requested));
        let runs = crate::matrix::verifier_budget::run(&kernels.qemu, &[crate::guest::LockdownMode::None], crate::vm::default_jobs(), None, cancel);
        for run in runs {
            let name = &run.kernel;
            match &run.outcome {
                Err(e) => report.notes.push(format!("kernel {name} (QEMU): no counts: {e}")),
                Ok(budgets) => {
                    let counts: Vec<Count> = budgets
                        .iter()
                        .map(|b| Count { object: &b.object, program: &b.program, insns: b.insns, source: &b.source })
                        .collect();
                    let outcome = compare_budgets(snapshots, name, budgets, PendingWrites::from_env())?;
                    let release = run.release.as_deref().unwrap_or("?");
                    push_kernel(&mut report, snapshots, name, &format!("{name} ({release}, QEMU) · "), &counts, outcome);
                }
            }
        }
    }
    report.notes.push(
        "counts are the kernel's `insn_processed`: `verified_insns` (5.16+) or the `processed N insns` line of a BPF_LOG_STATS load (5.10–5.15), which agree on this kernel (datapath/tests/verifier_budget.rs)".into(),
    );
    Ok(report)
}

/// Which kernels the section counts on.
#[derive(Debug, Clone, Default)]
pub struct KernelChoice {
    /// The running kernel.
    pub host: bool,
    /// Cached kernels, each booted once in QEMU (`lockdown=none`).
    pub qemu: Vec<crate::kernels::CachedKernel>,
}

impl KernelChoice {
    /// `--kernel` names (`host`, manifest names, `all` = every cached
    /// kernel); none given: the host and every cached kernel, or only the
    /// host for a quick run.
    ///
    /// # Errors
    /// An unknown manifest name, or a named kernel that is not cached.
    pub fn resolve(names: &[String], manifests: &Path, quick: bool) -> anyhow::Result<KernelChoice> {
        let names: Vec<String> = names.iter().flat_map(|n| n.split(',')).map(str::trim).filter(|n| !n.is_empty()).map(str::to_owned).collect();
        if names.is_empty() {
            let qemu = if quick { Vec::new() } else { super::labspeed::cached_kernels(manifests)? };
            return Ok(KernelChoice { host: true, qemu });
        }
        let host = names.iter().any(|n| n == "host");
        let wanted: Vec<String> = names.into_iter().filter(|n| n != "host").collect();
        if wanted.is_empty() {
            return Ok(KernelChoice { host, qemu: Vec::new() });
        }
        if wanted.iter().any(|n| n == "all") {
            return Ok(KernelChoice { host, qemu: super::labspeed::cached_kernels(manifests)? });
        }
        let catalog = crate::kernels::Catalog::load(manifests)
            .with_context(|| format!("load kernel manifests from {}", manifests.display()))?;
        let cache = crate::kernels::Cache::default_location()?;
        let mut qemu = Vec::new();
        for m in catalog.select(&wanted)? {
            qemu.push(cache.kernel(m).with_context(|| format!("kernel {} is not ready: run `tclab kernels fetch {}`", m.name, m.name))?);
        }
        Ok(KernelChoice { host, qemu })
    }
}

/// Rows for one kernel's counts, against that kernel's snapshot, and the
/// snapshot's verdict as a note.
fn push_kernel(report: &mut SectionReport, snapshots: &Path, kernel: &str, prefix: &str, counts: &[Count], outcome: SnapshotOutcome) {
    let path = SnapshotStore::new(snapshots).path_for(&snapshot_name(kernel), None);
    // After a mismatch the snapshot file still holds the reviewed figures.
    let previous = snapshot_figures(&path);
    for c in counts {
        let name = format!("{prefix}{} · {}", c.object, c.program);
        let value = f64::from(c.insns);
        let row = match previous.get(&(c.object.to_owned(), c.program.to_owned())) {
            Some(&before) => Row::ratio(name, value, before, "insns"),
            None => Row::value(name, value, "insns"),
        };
        let percent = value * 100.0 / f64::from(INSN_LIMIT);
        report.rows.push(
            row.target(Target::ValueBelow(f64::from(INSN_LIMIT) * f64::from(BUDGET_PERCENT) / 100.0))
                .note(format!("{percent:.1}% of the {INSN_LIMIT} limit on {kernel}; from {}", c.source)),
        );
    }
    report.notes.push(match outcome {
        SnapshotOutcome::Matched { path } => format!("kernel {kernel}: snapshot {} matches exactly", path.display()),
        SnapshotOutcome::Missing { path, pending } => format!(
            "kernel {kernel}: no snapshot {} yet{}",
            path.display(),
            pending.map(|p| format!(": review {} (tclab review --snapshots {})", p.display(), snapshots.display())).unwrap_or_default()
        ),
        SnapshotOutcome::Mismatch { path, diff, pending } => format!(
            "kernel {kernel}: CHANGED against {}{}:\n{diff}",
            path.display(),
            pending.map(|p| format!(" (review {} with tclab review --snapshots {})", p.display(), snapshots.display())).unwrap_or_default()
        ),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tclab_datapath::verifier::ProgramBudget;

    #[test]
    fn guest_counts_make_the_same_snapshot_text_as_the_host_counts() {
        let host = [
            ProgramBudget { object: "datapath_lru.o", program: "tclab_ingress", insns: 94336, source: Source::VerifiedInsns },
            ProgramBudget { object: "testprogs.o", program: "tclab_empty", insns: 2, source: Source::StatsLog },
        ];
        let json = serde_json::to_value(&host).expect("serialise");
        let guest: Vec<GuestBudget> = serde_json::from_value(json).expect("the host reads what the guest sends");
        assert_eq!(guest[1].source, "stats_log");
        assert_eq!(guest_snapshot_text(&guest), verifier::snapshot_text(&host));
        assert_eq!(guest_snapshot_text(&guest), "datapath_lru.o tclab_ingress 94336\ntestprogs.o tclab_empty 2\n");
    }
}
