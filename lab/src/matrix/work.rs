//! What the host asks a matrix guest to do, and what the guest sends back.
//!
//! The guest runs each scenario with the same [`runner::collect`] as the
//! host and sends one [`SCENARIO_RECORD`] per scenario as it ends; judging
//! (checks, snapshots) happens on the host, where the snapshots live.

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::guest::{GuestRequest, Sink};
use crate::runner::{self, Collected, KernelContext, RunOptions};
use crate::scenario;
use crate::snapshot::{PendingWrites, SnapshotStore};

/// The name of the result record carrying one scenario.
pub const SCENARIO_RECORD: &str = "scenario";

/// The name of the result record carrying an object's load-only dry run.
pub const DRY_RUN_RECORD: &str = "dry_run";

/// The name of the result record carrying the verifier budget of every
/// program tclab loads (`tclab bench verifier` on a QEMU kernel).
pub const VERIFIER_BUDGET_RECORD: &str = "verifier_budget";

/// The `work` of a matrix cell's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GuestWork {
    /// Run these scenario files (guest paths), in order.
    Scenarios {
        /// The matrix name of the kernel ("5.10"), for kernel selectors.
        kernel: String,
        files: Vec<String>,
    },
    /// Load each program of a BPF object alone (nothing attached) and report
    /// what the verifier said (`tclab inspect --kernel`).
    DryRun {
        /// Guest path of the object.
        object: String,
    },
    /// Count the instructions the verifier processes for every program of
    /// the embedded objects ([`tclab_datapath::verifier::budget`]).
    VerifierBudget,
}

/// One scenario's result, as sent by the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScenarioRecord {
    /// Position in the request's `files`.
    pub index: usize,
    pub collected: Collected,
    pub duration_ms: u64,
}

/// The guest side: run every scenario of the request and stream the records.
/// A scenario that cannot even be loaded is reported as an error record; the
/// others still run.
pub fn run_in_guest(request: &GuestRequest, sink: &mut Sink) -> anyhow::Result<()> {
    if request.work.is_null() {
        return Ok(());
    }
    let work: GuestWork = serde_json::from_value(request.work.clone())
        .map_err(|e| anyhow::anyhow!("failed to decode the matrix work: {e}"))?;
    match work {
        GuestWork::Scenarios { kernel, files } => run_scenarios(&kernel, &files, sink),
        GuestWork::DryRun { object } => {
            let checks = crate::byo::dry_run(Path::new(&object)).map_err(|e| e.to_string());
            let data = match &checks {
                Ok(programs) => serde_json::json!({ "programs": programs }),
                Err(error) => serde_json::json!({ "error": error }),
            };
            sink.result(DRY_RUN_RECORD, data);
        }
        GuestWork::VerifierBudget => {
            // A failed count is the record's verdict, not a guest error: the
            // host reports it per kernel.
            let data = match tclab_datapath::verifier::budget() {
                Ok(programs) => serde_json::json!({ "programs": programs }),
                Err(error) => serde_json::json!({ "error": error.to_string() }),
            };
            sink.result(VERIFIER_BUDGET_RECORD, data);
        }
    }
    Ok(())
}

fn run_scenarios(kernel: &str, files: &[String], sink: &mut Sink) {
    let context = match sink.probe() {
        Some(features) => KernelContext::from_features(kernel, features),
        None => KernelContext::probe_running(kernel),
    };
    let opts = RunOptions {
        kernel: context,
        // Unused in the guest: judging happens on the host.
        snapshots: SnapshotStore::new(crate::guest::PAYLOAD_DIR),
        writes: PendingWrites::Never,
        results_dir: None,
    };
    for (index, file) in files.iter().enumerate() {
        let started = Instant::now();
        let collected = match scenario::load_scenario(Path::new(file)) {
            Ok(s) => runner::collect(&s, &opts),
            Err(e) => Collected::Error { error: e.to_string() },
        };
        let record = ScenarioRecord { index, collected, duration_ms: started.elapsed().as_millis() as u64 };
        match serde_json::to_value(&record) {
            Ok(data) => sink.result(SCENARIO_RECORD, data),
            Err(e) => sink.error("encode scenario record", format!("{file}: {e}")),
        }
    }
}
