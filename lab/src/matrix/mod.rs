//! The kernel matrix: the same scenarios, run inside QEMU on each pinned
//! kernel × lockdown mode, judged against the same snapshots.
//!
//! One boot per cell runs every selected scenario ([`work`] is the guest's
//! half). The host builds the payload ([`payload`]), boots the cells up to
//! `jobs` at a time ([`crate::vm::run_cells_with`]), and judges each
//! scenario's collected result with [`runner::judge`], so a kernel's result
//! is compared with the very snapshot the host-kernel run uses (or with the
//! scenario's declared per-kernel one). The probe of each cell is itself a
//! snapshot (`capabilities@<kernel>+<lockdown>.snap`).

pub mod capabilities;
pub mod dry_run;
pub mod payload;
pub mod verifier_budget;
pub mod work;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::guest::LockdownMode;
use crate::kernels::CachedKernel;
use crate::runner::{self, Collected, KernelContext, RunOptions, ScenarioOutcome, Status};
use crate::scenario::{Lockdown, Scenario};
use crate::snapshot::{PendingWrites, SnapshotStore};
use crate::vm::{self, Cancel, CellOutcome, CellSpec, InitSpec, VmError};
use work::{GuestWork, SCENARIO_RECORD, ScenarioRecord};

/// How a matrix is run.
#[derive(Debug, Clone)]
pub struct MatrixOptions {
    pub kernels: Vec<CachedKernel>,
    pub lockdowns: Vec<LockdownMode>,
    /// Cells booted at once.
    pub jobs: usize,
    pub snapshots: SnapshotStore,
    pub writes: PendingWrites,
    /// Checked while cells run (Ctrl-C).
    pub cancel: Option<Cancel>,
    /// Time allowed for boot and probe, before any scenario.
    pub boot_budget: Duration,
    /// Time allowed per scenario, added to the boot budget.
    pub per_scenario_budget: Duration,
    /// The init program; `None` = the running `tclab`.
    pub init: Option<InitSpec>,
    /// Only these (kernel name, lockdown) cells of kernels × lockdowns
    /// (`tclab run --shard`); `None` = all of them.
    pub only: Option<Vec<(String, LockdownMode)>>,
    /// Sees each cell's guest records as they arrive (live progress).
    pub observer: Option<vm::Observer>,
}

impl MatrixOptions {
    pub fn new(kernels: Vec<CachedKernel>, lockdowns: Vec<LockdownMode>, snapshots: SnapshotStore) -> Self {
        MatrixOptions {
            kernels,
            lockdowns,
            jobs: vm::default_jobs(),
            snapshots,
            writes: PendingWrites::from_env(),
            cancel: None,
            boot_budget: Duration::from_secs(60),
            per_scenario_budget: Duration::from_secs(30),
            init: None,
            only: None,
            observer: None,
        }
    }
}

/// One kernel × lockdown cell: how the boot went and every scenario's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct CellReport {
    pub kernel: String,
    pub lockdown: LockdownMode,
    /// "microvm" or "q35"; `None` when QEMU could not be started.
    pub machine: Option<String>,
    /// QEMU start → the guest's first record (init running).
    pub boot_ms: Option<u64>,
    /// QEMU start → the first scenario's result.
    pub first_scenario_ms: Option<u64>,
    /// QEMU start → QEMU gone.
    pub total_ms: u64,
    /// Why the cell itself failed (infrastructure, watchdog, guest errors).
    pub failure: Option<String>,
    /// The last console lines, for reports.
    pub console_excerpt: Vec<String>,
    /// The probe, rendered as its snapshot (`None` if the guest sent none).
    pub capabilities: Option<String>,
    /// The capability snapshot's verdict, then one per scenario.
    pub outcomes: Vec<ScenarioOutcome>,
}

impl CellReport {
    pub fn failed(&self) -> bool {
        self.failure.is_some() || self.outcomes.iter().any(ScenarioOutcome::failed)
    }

    /// "5.10/integrity".
    pub fn label(&self) -> String {
        format!("{}/{}", self.kernel, self.lockdown)
    }
}

/// The scenario-lab spelling of a guest lockdown mode.
pub fn lockdown_of(mode: LockdownMode) -> Lockdown {
    match mode {
        LockdownMode::None => Lockdown::None,
        LockdownMode::Integrity => Lockdown::Integrity,
        LockdownMode::Confidentiality => Lockdown::Confidentiality,
    }
}

/// Run `scenarios` on every kernel × lockdown cell; `done` sees each cell as
/// it ends. Cells come back in kernel-major order.
pub fn run(
    scenarios: &[Scenario],
    opts: &MatrixOptions,
    done: impl Fn(&CellReport) + Sync,
) -> Result<Vec<CellReport>, MatrixError> {
    let payload = payload::build(scenarios)?;
    let mut specs = Vec::new();
    for kernel in &opts.kernels {
        for &lockdown in &opts.lockdowns {
            if opts.only.as_ref().is_some_and(|only| !only.iter().any(|(k, l)| *k == kernel.info.name && *l == lockdown)) {
                continue;
            }
            let mut spec = CellSpec::new(kernel.clone(), lockdown);
            spec.observer = opts.observer.clone();
            spec.payload = payload.files.clone();
            let work = GuestWork::Scenarios { kernel: kernel.info.name.clone(), files: payload.scenarios.clone() };
            spec.work = serde_json::to_value(&work).map_err(|e| MatrixError::Encode(e.to_string()))?;
            let per = opts.per_scenario_budget.saturating_mul(u32::try_from(scenarios.len()).unwrap_or(u32::MAX));
            spec.timeout = opts.boot_budget.saturating_add(per);
            spec.cancel = opts.cancel.clone();
            spec.init = opts.init.clone();
            specs.push(spec);
        }
    }
    // Newest kernels boot first: they run the most scenarios (TCX ones skip
    // before 6.6) and boot slowest, and the longest cells started first
    // leave the shortest ones for the end, when the other workers go idle.
    let mut order: Vec<usize> = (0..specs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(runner::major_minor(&specs[i].kernel.info.name)));
    let started: Vec<CellSpec> = order.iter().map(|&i| specs[i].clone()).collect();
    // Judged as each cell ends, so progress shows verdicts, not just boots.
    let reports: std::sync::Mutex<Vec<Option<CellReport>>> = std::sync::Mutex::new(vec![None; specs.len()]);
    let results = vm::run_cells_with(&started, opts.jobs, |j, outcome| {
        let report = judge_cell(scenarios, opts, &started[j], outcome);
        done(&report);
        if let Ok(mut all) = reports.lock() {
            all[order[j]] = Some(report);
        }
    });
    let mut outcomes: Vec<Option<Result<CellOutcome, VmError>>> = (0..specs.len()).map(|_| None).collect();
    for (j, outcome) in results.into_iter().enumerate() {
        outcomes[order[j]] = Some(outcome);
    }
    let reports = reports.into_inner().unwrap_or_default();
    // Reported in kernel-major order, as requested.
    Ok(specs
        .iter()
        .zip(outcomes.into_iter().zip(reports))
        .map(|(spec, (outcome, report))| {
            report.unwrap_or_else(|| {
                let outcome = outcome.unwrap_or_else(|| Err(VmError::Request("cell was not run".into())));
                judge_cell(scenarios, opts, spec, &outcome)
            })
        })
        .collect())
}

/// Errors before any cell boots.
#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    #[error(transparent)]
    Payload(#[from] payload::PayloadError),
    #[error("failed to encode the guest's work: {0}")]
    Encode(String),
}

fn cell_context(spec: &CellSpec, probe: Option<&serde_json::Value>) -> KernelContext {
    let version = probe
        .and_then(|p| p.get("kernel_version"))
        .and_then(serde_json::Value::as_str)
        .and_then(runner::major_minor);
    KernelContext {
        name: spec.kernel.info.name.clone(),
        version,
        lockdown: lockdown_of(spec.lockdown),
        capabilities: probe.map(capabilities::of_probe).unwrap_or_default(),
    }
}

fn judge_cell(
    scenarios: &[Scenario],
    opts: &MatrixOptions,
    spec: &CellSpec,
    outcome: &Result<CellOutcome, VmError>,
) -> CellReport {
    let mut report = CellReport {
        kernel: spec.kernel.info.name.clone(),
        lockdown: spec.lockdown,
        machine: None,
        boot_ms: None,
        first_scenario_ms: None,
        total_ms: 0,
        failure: None,
        console_excerpt: Vec::new(),
        capabilities: None,
        outcomes: Vec::new(),
    };
    let cell = match outcome {
        Ok(cell) => cell,
        Err(e) => {
            report.failure = Some(format!("{e}"));
            let ctx = cell_context(spec, None);
            report.outcomes = not_run(scenarios, &ctx, &format!("cell {} did not run: {e}", report.label()));
            return report;
        }
    };
    report.machine = Some(format!("{:?}", cell.machine).to_lowercase());
    report.boot_ms = cell.durations.boot_to_first_record.map(|d| d.as_millis() as u64);
    report.first_scenario_ms = cell.durations.boot_to_first_result.map(|d| d.as_millis() as u64);
    report.total_ms = cell.durations.total.as_millis() as u64;
    report.failure = cell.failure.as_ref().map(|f| format!("{:?}: {}", f.kind, f.message));
    report.console_excerpt = match &cell.failure {
        Some(f) if !f.log.is_empty() => f.log.clone(),
        _ => cell.console_excerpt.clone(),
    };
    let ctx = cell_context(spec, cell.probe());
    let run_opts = RunOptions { kernel: ctx.clone(), snapshots: opts.snapshots.clone(), writes: opts.writes, results_dir: None };
    if let Some(probe) = cell.probe() {
        let text = capabilities::render(probe);
        report.outcomes.push(capabilities::judge(&text, &run_opts));
        report.capabilities = Some(text);
    }
    let mut received: BTreeMap<usize, ScenarioRecord> = BTreeMap::new();
    for (name, data) in cell.results() {
        if name != SCENARIO_RECORD {
            continue;
        }
        match serde_json::from_value::<ScenarioRecord>(data.clone()) {
            Ok(r) => {
                received.insert(r.index, r);
            }
            Err(e) => tracing::warn!(cell = %report.label(), "undecodable scenario record: {e}"),
        }
    }
    for (index, scenario) in scenarios.iter().enumerate() {
        let outcome = match received.remove(&index) {
            Some(r) => runner::judge(scenario, &run_opts, r.collected, Duration::from_millis(r.duration_ms)),
            None => {
                let why = match &report.failure {
                    Some(f) => format!("not reported: cell {} failed: {f}", report.label()),
                    None => format!("not reported by the guest of cell {}", report.label()),
                };
                runner::judge(scenario, &run_opts, Collected::Error { error: why }, Duration::ZERO)
            }
        };
        report.outcomes.push(outcome);
    }
    report
}

fn not_run(scenarios: &[Scenario], ctx: &KernelContext, why: &str) -> Vec<ScenarioOutcome> {
    scenarios
        .iter()
        .map(|s| ScenarioOutcome {
            status: Status::Failed(vec![why.to_string()]),
            ..ScenarioOutcome::new(&s.name, s.path.clone(), ctx)
        })
        .collect()
}

/// One line per cell for the live progress.
pub fn cell_line(c: &CellReport) -> String {
    let count = |f: fn(&Status) -> bool| c.outcomes.iter().filter(|o| f(&o.status)).count();
    let secs = c.total_ms as f64 / 1000.0;
    let boot = c.boot_ms.map(|b| format!("boot {:.1}s, ", b as f64 / 1000.0)).unwrap_or_default();
    let verdict = if c.failed() { "FAIL" } else { "pass" };
    let mut line = format!(
        "{verdict} {:<22} {} passed, {} failed, {} skipped ({boot}{secs:.1}s)",
        c.label(),
        count(|s| matches!(s, Status::Passed)),
        count(|s| matches!(s, Status::Failed(_))),
        count(|s| matches!(s, Status::Skipped(_))),
    );
    if let Some(f) = &c.failure {
        line.push_str(&format!("\n     cell failure: {f}"));
    }
    line
}
