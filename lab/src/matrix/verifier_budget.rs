//! The verifier budget on the kernel matrix (`tclab bench verifier`): one
//! short boot per kernel × lockdown cell, no probe, no scenario; the guest
//! loads every program of the embedded objects and counts the instructions
//! its verifier processed ([`tclab_datapath::verifier::budget`]). The host
//! compares the counts with the reviewed `verifier@<kernel>.snap`
//! ([`crate::bench::verifier::compare_budgets`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::guest::LockdownMode;
use crate::kernels::CachedKernel;
use crate::vm::{self, Cancel, CellOutcome, CellSpec, InitSpec, Record, VmError};

use super::work::{GuestWork, VERIFIER_BUDGET_RECORD};

/// One program's count as the guest sent it (a
/// [`tclab_datapath::verifier::ProgramBudget`] read back on the host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestBudget {
    pub object: String,
    pub program: String,
    /// Instructions the verifier processed.
    pub insns: u32,
    /// `verified_insns` or `stats_log`.
    pub source: String,
}

impl GuestBudget {
    /// Share of the verifier's 1M-instruction limit, in percent.
    pub fn percent_of_limit(&self) -> f64 {
        f64::from(self.insns) * 100.0 / f64::from(tclab_datapath::verifier::INSN_LIMIT)
    }
}

/// One cell's counts, or why it gave none.
#[derive(Debug, Clone, Serialize)]
pub struct KernelBudget {
    /// Manifest name ("5.10").
    pub kernel: String,
    pub lockdown: LockdownMode,
    /// `uname -r` in the guest, when it said hello.
    pub release: Option<String>,
    pub outcome: Result<Vec<GuestBudget>, String>,
}

/// Boot one cell per kernel × lockdown and count there. `init`: `None` = the
/// running `tclab` (its embedded objects are the ones counted).
pub fn run(
    kernels: &[CachedKernel],
    lockdowns: &[LockdownMode],
    jobs: usize,
    init: Option<InitSpec>,
    cancel: Option<Cancel>,
) -> Vec<KernelBudget> {
    let mut specs = Vec::new();
    for kernel in kernels {
        for &lockdown in lockdowns {
            let mut spec = CellSpec::new(kernel.clone(), lockdown);
            spec.probe = false;
            spec.work = serde_json::to_value(GuestWork::VerifierBudget).unwrap_or_default();
            // ~20 programs, the largest ~100k insns, loaded twice on 5.10
            // (the statistics log): tens of seconds under TCG.
            spec.timeout = Duration::from_secs(300);
            spec.silence_timeout = Duration::from_secs(60);
            spec.init = init.clone();
            spec.cancel = cancel.clone();
            specs.push(spec);
        }
    }
    let outcomes = vm::run_cells(&specs, jobs);
    specs.iter().zip(outcomes).map(|(spec, o)| verdict(spec, o)).collect()
}

fn verdict(spec: &CellSpec, outcome: Result<CellOutcome, VmError>) -> KernelBudget {
    let mut release = None;
    let outcome = match outcome {
        Err(e) => Err(e.to_string()),
        Ok(cell) => {
            release = cell.records.iter().find_map(|r| match r {
                Record::Hello { release } => Some(release.clone()),
                _ => None,
            });
            decode(&cell)
        }
    };
    KernelBudget { kernel: spec.kernel.info.name.clone(), lockdown: spec.lockdown, release, outcome }
}

fn decode(cell: &CellOutcome) -> Result<Vec<GuestBudget>, String> {
    let Some(data) = cell.results().find(|(n, _)| *n == VERIFIER_BUDGET_RECORD).map(|(_, d)| d) else {
        return Err(match &cell.failure {
            Some(f) => format!("cell failed: {:?}: {}\n{}", f.kind, f.message, f.log.join("\n")),
            None => "the guest sent no verifier_budget record".into(),
        });
    };
    if let Some(e) = data.get("error") {
        return Err(format!("counting failed in the guest: {}", e.as_str().unwrap_or_default()));
    }
    let programs = data.get("programs").ok_or("verifier_budget record without programs")?;
    let budgets: Vec<GuestBudget> =
        serde_json::from_value(programs.clone()).map_err(|e| format!("undecodable verifier_budget record: {e}"))?;
    // The counts arrived, but a cell that failed otherwise (guest errors,
    // kernel warnings) is not a clean measurement.
    if let Some(f) = &cell.failure {
        return Err(format!("cell failed after counting: {:?}: {}", f.kind, f.message));
    }
    Ok(budgets)
}
