//! Running scenarios: on the host kernel, or inside a guest of the kernel
//! matrix (the guest calls the same [`run_one`]).
//!
//! One scenario = one throwaway topology ([`topology`]), one chain
//! ([`chain`]), its replays ([`replay`]), and a [`report::ScenarioResult`]
//! compared with its snapshot and inline checks ([`checks`]).

pub mod chain;
pub mod checks;
pub mod execute;
pub mod replay;
pub mod report;
pub mod topology;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::scenario::{Capability, Dimension, Lockdown, Scenario};
use crate::snapshot::{PendingWrites, SnapshotError, SnapshotOutcome, SnapshotStore};
use report::ScenarioResult;

/// The kernel a run happens on.
#[derive(Debug, Clone, Serialize)]
pub struct KernelContext {
    /// "host", or the matrix name ("5.10", "6.12").
    pub name: String,
    /// (major, minor) of the running kernel.
    pub version: Option<(u32, u32)>,
    pub lockdown: Lockdown,
    /// Capabilities the probe found.
    pub capabilities: Vec<Capability>,
}

impl KernelContext {
    /// The running kernel, as the agent's probe sees it.
    pub fn probe_running(name: &str) -> KernelContext {
        Self::from_features(name, &tclab_datapath::probe::KernelFeatures::probe())
    }

    /// The running kernel from a probe already taken (the matrix guest
    /// probes once, for its record and its scenarios).
    pub fn from_features(name: &str, features: &tclab_datapath::probe::KernelFeatures) -> KernelContext {
        let mut capabilities = Vec::new();
        for (has, cap) in [
            (features.tcx, Capability::Tcx),
            (features.bpf_loop, Capability::BpfLoop),
            (features.ringbuf, Capability::Ringbuf),
            (features.btf, Capability::Btf),
            (features.probe_write_user, Capability::ProbeWriteUser),
        ] {
            if has {
                capabilities.push(cap);
            }
        }
        let lockdown = match features.lockdown {
            tclab_datapath::probe::Lockdown::Integrity => Lockdown::Integrity,
            tclab_datapath::probe::Lockdown::Confidentiality => Lockdown::Confidentiality,
            _ => Lockdown::None,
        };
        KernelContext {
            name: name.to_string(),
            version: major_minor(&features.kernel_version),
            lockdown,
            capabilities,
        }
    }

    pub fn has(&self, cap: Capability) -> bool {
        self.capabilities.contains(&cap)
    }
}

/// "6.18.44-fc" → (6, 18).
pub fn major_minor(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// How scenarios are run and judged.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub kernel: KernelContext,
    pub snapshots: SnapshotStore,
    pub writes: PendingWrites,
    /// Where output pcaps go (one per scenario), if anywhere.
    pub results_dir: Option<PathBuf>,
}

/// The verdict on one scenario.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "reasons", rename_all = "snake_case")]
pub enum Status {
    Passed,
    Failed(Vec<String>),
    Skipped(String),
}

/// One scenario's run: verdict, what it collected, and how long it took.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioOutcome {
    pub scenario: String,
    pub file: PathBuf,
    /// "host", or the matrix kernel ("5.10").
    pub kernel: String,
    /// The lockdown mode the kernel ran in.
    pub lockdown: Lockdown,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<ScenarioResult>,
    /// The snapshot diff, when the result differs from the snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    /// The snapshot file the result was compared with (a kernel-specific
    /// one, `<name>@<kernel>.snap`, means the kernel diverges by design).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<PathBuf>,
    pub duration_ms: u128,
}

impl ScenarioOutcome {
    /// A passed outcome with nothing collected yet, for `name` on `kernel`.
    pub fn new(name: &str, file: PathBuf, kernel: &KernelContext) -> ScenarioOutcome {
        ScenarioOutcome {
            scenario: name.to_string(),
            file,
            kernel: kernel.name.clone(),
            lockdown: kernel.lockdown,
            status: Status::Passed,
            result: None,
            diff: None,
            snapshot: None,
            duration_ms: 0,
        }
    }

    pub fn failed(&self) -> bool {
        matches!(self.status, Status::Failed(_))
    }
}

/// What running a scenario produced, before it is judged. The guest of the
/// kernel matrix sends this to the host, which judges it against the
/// snapshots on its own disk (so pending `.snap.new` files land there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Collected {
    /// The scenario does not apply to this kernel or lockdown mode.
    Skipped { reason: String },
    /// It ran; checks and snapshot are still to be judged.
    Executed { result: Box<ScenarioResult> },
    /// The lab could not run it (topology, attach, replay error).
    Error { error: String },
}

/// Why a scenario does not apply to this kernel, if it does not.
pub fn skip_reason(scenario: &Scenario, kernel: &KernelContext) -> Option<String> {
    if !scenario.applies_to_kernel(&kernel.name, kernel.version) {
        return Some(format!("not for kernel {}", kernel.name));
    }
    if !scenario.applies_to_lockdown(kernel.lockdown) {
        return Some(format!("not for lockdown={:?}", kernel.lockdown).to_lowercase());
    }
    scenario
        .missing_capability(|c| kernel.has(c))
        .map(|c| format!("needs {}", c.as_str()))
}

/// Run one scenario on the running kernel, without judging it.
pub fn collect(scenario: &Scenario, opts: &RunOptions) -> Collected {
    if let Some(reason) = skip_reason(scenario, &opts.kernel) {
        return Collected::Skipped { reason };
    }
    match execute::execute(scenario, opts) {
        Ok(result) => Collected::Executed { result: Box::new(result) },
        Err(e) => Collected::Error { error: format!("{e:#}") },
    }
}

/// Judge what a run collected: inline checks, then the snapshot.
pub fn judge(scenario: &Scenario, opts: &RunOptions, collected: Collected, duration: Duration) -> ScenarioOutcome {
    let mut outcome = ScenarioOutcome::new(&scenario.name, scenario.path.clone(), &opts.kernel);
    outcome.duration_ms = duration.as_millis();
    match collected {
        Collected::Skipped { reason } => outcome.status = Status::Skipped(reason),
        Collected::Error { error } => outcome.status = Status::Failed(vec![error]),
        Collected::Executed { result } => judge_result(scenario, opts, *result, &mut outcome),
    }
    outcome
}

/// Run one scenario and judge it.
pub fn run_one(scenario: &Scenario, opts: &RunOptions) -> ScenarioOutcome {
    let started = Instant::now();
    let collected = collect(scenario, opts);
    judge(scenario, opts, collected, started.elapsed())
}

fn judge_result(scenario: &Scenario, opts: &RunOptions, mut result: ScenarioResult, out: &mut ScenarioOutcome) {
    result.checks = checks::evaluate(&scenario.expect, &result);
    let mut reasons: Vec<String> =
        result.failed_checks().map(|c| format!("check {}: {}", c.check, c.detail)).collect();
    // Without a snapshot, only `agent_error_contains` can say a refusal is expected.
    if let report::AgentOutcome::Refused { error } = &result.agent
        && !scenario.expect.snapshot
        && scenario.expect.agent_error_contains.is_none()
    {
        reasons.push(format!(
            "the agent refused to start ({error}) and the scenario expects nothing about it (no snapshot, no agent_error_contains)"
        ));
    }
    if scenario.expect.snapshot {
        match snapshot(scenario, opts, &result) {
            Ok(SnapshotOutcome::Matched { path }) => out.snapshot = Some(path),
            Ok(SnapshotOutcome::Missing { path, pending }) => reasons.push(match pending {
                Some(p) => format!("no snapshot {}: review {} (tclab review)", path.display(), p.display()),
                None => format!("no snapshot {}", path.display()),
            }),
            Ok(SnapshotOutcome::Mismatch { path, diff, pending }) => {
                reasons.push(match pending {
                    Some(p) => format!("differs from {}: review {} (tclab review)", path.display(), p.display()),
                    None => format!("differs from {}", path.display()),
                });
                out.snapshot = Some(path);
                out.diff = Some(diff);
            }
            Err(e) => reasons.push(e.to_string()),
        }
    }
    if !reasons.is_empty() {
        out.status = Status::Failed(reasons);
    }
    out.result = Some(result);
}

/// The suffix of a scenario's specific snapshot (`<name>@<suffix>.snap`),
/// when the scenario declares that its result varies: `5.10`, `integrity`
/// or `5.10+integrity`.
pub fn specific_snapshot_key(varies_by: &[Dimension], kernel: &KernelContext) -> Option<String> {
    let mut parts = Vec::new();
    if varies_by.contains(&Dimension::Kernel) {
        parts.push(kernel.name.clone());
    }
    if varies_by.contains(&Dimension::Lockdown) {
        parts.push(lockdown_name(kernel.lockdown).to_string());
    }
    (!parts.is_empty()).then(|| parts.join("+"))
}

/// The kernel's spelling of a lockdown mode.
pub fn lockdown_name(mode: Lockdown) -> &'static str {
    match mode {
        Lockdown::None => "none",
        Lockdown::Integrity => "integrity",
        Lockdown::Confidentiality => "confidentiality",
    }
}

fn snapshot(
    scenario: &Scenario,
    opts: &RunOptions,
    result: &ScenarioResult,
) -> Result<SnapshotOutcome, SnapshotError> {
    let specific = specific_snapshot_key(&scenario.expect.varies_by, &opts.kernel);
    let source = scenario.path.display().to_string();
    opts.snapshots.check(&scenario.name, &source, specific.as_deref(), &result.snapshot(), opts.writes)
}

/// Run every scenario in order, reporting each as it ends.
pub fn run_all(
    scenarios: &[Scenario],
    opts: &RunOptions,
    mut progress: impl FnMut(&ScenarioOutcome),
) -> Vec<ScenarioOutcome> {
    let mut outcomes = Vec::with_capacity(scenarios.len());
    for s in scenarios {
        if crate::interrupt::requested() {
            tracing::warn!("interrupted: {} scenario(s) not run", scenarios.len() - outcomes.len());
            break;
        }
        let outcome = run_one(s, opts);
        progress(&outcome);
        outcomes.push(outcome);
    }
    outcomes
}

/// The summary table printed at the end of `tclab run`.
pub fn summary_table(outcomes: &[ScenarioOutcome]) -> String {
    let width = outcomes.iter().map(|o| o.scenario.len()).max().unwrap_or(8).max(8);
    let mut out = format!(
        "{:<width$}  {:<6}  {:<15}  {:<6}  {:>7}  detail\n",
        "scenario", "kernel", "lockdown", "status", "time"
    );
    for o in outcomes {
        let (status, detail) = match &o.status {
            Status::Passed => ("pass", String::new()),
            Status::Failed(r) => ("FAIL", r.join("; ")),
            Status::Skipped(r) => ("skip", r.clone()),
        };
        let time = format!("{:.2}s", Duration::from_millis(o.duration_ms as u64).as_secs_f64());
        let lockdown = lockdown_name(o.lockdown);
        out.push_str(&format!(
            "{:<width$}  {:<6}  {:<15}  {:<6}  {:>7}  {detail}\n",
            o.scenario, o.kernel, lockdown, status, time
        ));
    }
    let count = |f: fn(&Status) -> bool| outcomes.iter().filter(|o| f(&o.status)).count();
    out.push_str(&format!(
        "\n{} passed, {} failed, {} skipped\n",
        count(|s| matches!(s, Status::Passed)),
        count(|s| matches!(s, Status::Failed(_))),
        count(|s| matches!(s, Status::Skipped(_))),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_minor_parses_distro_releases() {
        assert_eq!(major_minor("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(major_minor("5.10.0-32-cloud-amd64"), Some((5, 10)));
        assert_eq!(major_minor("garbage"), None);
    }
}
