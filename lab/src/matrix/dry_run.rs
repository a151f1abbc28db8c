//! `tclab inspect OBJECT --kernel …`: would each program of a BPF object
//! load on each cached kernel? One short boot per kernel × lockdown cell,
//! no probe, no scenario: the guest loads each program alone and reports
//! what libbpf and the verifier said.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::byo::{DryRun, LoadCheck};
use crate::guest::{LockdownMode, PAYLOAD_DIR};
use crate::kernels::CachedKernel;
use crate::vm::{self, CellOutcome, CellSpec, InitSpec, PayloadFile, VmError};

use super::work::{DRY_RUN_RECORD, GuestWork};

/// One cell's verdict on the object.
#[derive(Debug, Clone, Serialize)]
pub struct KernelDryRun {
    pub kernel: String,
    pub lockdown: LockdownMode,
    /// One per program, or why the cell gave none.
    #[serde(flatten)]
    pub outcome: DryRunOutcome,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DryRunOutcome {
    Programs(Vec<DryRun>),
    Error(String),
}

impl KernelDryRun {
    /// Did every program load?
    pub fn all_load(&self) -> bool {
        matches!(&self.outcome, DryRunOutcome::Programs(p) if p.iter().all(|d| matches!(d.load, LoadCheck::Loads { .. })))
    }
}

/// Boot one cell per kernel × lockdown and dry-run `object` in each.
pub fn run(
    object: &Path,
    kernels: &[CachedKernel],
    lockdowns: &[LockdownMode],
    jobs: usize,
    init: Option<InitSpec>,
) -> Vec<KernelDryRun> {
    let name = object.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "object.o".into());
    let guest = format!("{PAYLOAD_DIR}/{name}");
    let mut specs = Vec::new();
    for kernel in kernels {
        for &lockdown in lockdowns {
            let mut spec = CellSpec::new(kernel.clone(), lockdown);
            spec.probe = false;
            spec.payload = vec![PayloadFile { host: object.to_path_buf(), guest: guest.clone() }];
            spec.work = serde_json::to_value(GuestWork::DryRun { object: guest.clone() }).unwrap_or_default();
            spec.timeout = Duration::from_secs(90);
            spec.init = init.clone();
            specs.push(spec);
        }
    }
    let outcomes = vm::run_cells(&specs, jobs);
    specs.iter().zip(outcomes).map(|(spec, o)| verdict(spec, o)).collect()
}

fn verdict(spec: &CellSpec, outcome: Result<CellOutcome, VmError>) -> KernelDryRun {
    let outcome = match outcome {
        Err(e) => DryRunOutcome::Error(e.to_string()),
        Ok(cell) => match cell.results().find(|(n, _)| *n == DRY_RUN_RECORD).map(|(_, d)| d.clone()) {
            Some(data) => match (data.get("programs"), data.get("error")) {
                (Some(p), _) => serde_json::from_value(p.clone())
                    .map(DryRunOutcome::Programs)
                    .unwrap_or_else(|e| DryRunOutcome::Error(format!("undecodable dry-run record: {e}"))),
                (None, Some(e)) => DryRunOutcome::Error(e.as_str().unwrap_or_default().to_string()),
                (None, None) => DryRunOutcome::Error("empty dry-run record".into()),
            },
            None => DryRunOutcome::Error(match &cell.failure {
                Some(f) => format!("cell failed: {:?}: {}", f.kind, f.message),
                None => "the guest sent no dry-run record".into(),
            }),
        },
    };
    KernelDryRun { kernel: spec.kernel.info.name.clone(), lockdown: spec.lockdown, outcome }
}

/// One line per program and cell.
pub fn table(runs: &[KernelDryRun]) -> String {
    let mut out = String::from("\nload-only dry run per kernel:\n");
    for r in runs {
        let cell = format!("{}/{}", r.kernel, r.lockdown);
        match &r.outcome {
            DryRunOutcome::Error(e) => out.push_str(&format!("  {cell:<22} ERROR: {e}\n")),
            DryRunOutcome::Programs(programs) => {
                for d in programs {
                    out.push_str(&format!("  {cell:<22} {:<24} {}\n", d.program, d.load.text()));
                }
            }
        }
    }
    out
}
