//! The reports of a `tclab run --report DIR`: one model of every cell (the
//! host-kernel run is a cell too, kernel "host") written three ways:
//! `results.json` ([`json`], versioned, read back by `--merge`), `junit.xml`
//! ([`junit`], for CI test tabs) and a self-contained `report.html`
//! ([`html`]). [`progress`] is the live view of the same run on a terminal.
//!
//! A scenario's verdict in a report is one of pass, fail, skip, or diverged:
//! passed against a snapshot the scenario declares specific to a kernel or
//! lockdown mode (`<name>@<kernel>.snap`) rather than the common one.

pub mod escape;
pub mod html;
pub mod json;
pub mod junit;
pub mod progress;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::matrix::{CellReport, capabilities};
use crate::runner::{ScenarioOutcome, Status, lockdown_name, report::ScenarioResult};

/// Version of `results.json`; bumped when a field changes meaning or goes.
/// 2 was `{schema, scenarios, cells}` with the runner's own types.
pub const SCHEMA: u32 = 3;

/// File names inside the report folder.
pub const RESULTS_JSON: &str = "results.json";
pub const JUNIT_XML: &str = "junit.xml";
pub const REPORT_HTML: &str = "report.html";

/// A scenario's verdict in one cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    /// Passed against the scenario's declared kernel/lockdown-specific snapshot.
    Diverged,
    Skip,
    Fail,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Diverged => "diverged",
            Verdict::Skip => "skip",
            Verdict::Fail => "fail",
        }
    }
}

/// One scenario in one cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub scenario: String,
    pub file: String,
    pub status: Verdict,
    /// Why it failed or was skipped, or which declared snapshot it matched.
    #[serde(default)]
    pub reasons: Vec<String>,
    /// The snapshot compared, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// The snapshot diff, when the result differs from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    pub duration_ms: u64,
    /// One line per packet that left the far side (the output pcap).
    #[serde(default)]
    pub output: Vec<String>,
    /// Everything the run collected (chain, packets, spans, CT, counters…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<ScenarioResult>>,
}

/// One kernel × lockdown cell (or the host kernel).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// "host", or the matrix name ("5.10").
    pub kernel: String,
    /// none, integrity or confidentiality.
    pub lockdown: String,
    /// "microvm"/"q35"; `None` on the host or when QEMU did not start.
    #[serde(default)]
    pub machine: Option<String>,
    /// QEMU start → init running.
    #[serde(default)]
    pub boot_ms: Option<u64>,
    /// QEMU start → first scenario result.
    #[serde(default)]
    pub first_scenario_ms: Option<u64>,
    /// The whole cell (QEMU start → gone; on the host, the scenarios' sum).
    pub total_ms: u64,
    /// Why the cell itself failed (panic, watchdog, guest error…).
    #[serde(default)]
    pub failure: Option<String>,
    /// The last console lines (the relevant ones when the cell failed).
    #[serde(default)]
    pub console_excerpt: Vec<String>,
    /// The probe as its snapshot text (`key: value` lines).
    #[serde(default)]
    pub capabilities: Option<String>,
    pub scenarios: Vec<Entry>,
}

impl Cell {
    /// "5.10/integrity", "host/none".
    pub fn label(&self) -> String {
        format!("{}/{}", self.kernel, self.lockdown)
    }

    pub fn is_host(&self) -> bool {
        self.kernel == "host" && self.machine.is_none()
    }

    pub fn failed(&self) -> bool {
        self.failure.is_some() || self.scenarios.iter().any(|e| e.status == Verdict::Fail)
    }

    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for e in &self.scenarios {
            c.add(e.status);
        }
        c
    }
}

/// Scenario verdicts counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub passed: usize,
    pub diverged: usize,
    pub skipped: usize,
    pub failed: usize,
}

impl Counts {
    pub fn add(&mut self, v: Verdict) {
        match v {
            Verdict::Pass => self.passed += 1,
            Verdict::Diverged => self.diverged += 1,
            Verdict::Skip => self.skipped += 1,
            Verdict::Fail => self.failed += 1,
        }
    }

    pub fn total(&self) -> usize {
        self.passed + self.diverged + self.skipped + self.failed
    }
}

/// Everything a run's reports show.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// "tclab 0.1.0".
    pub tool: String,
    /// "2/3" when the run was one shard of a sharded run; when merged, the
    /// shards merged ("1/3,2/3").
    #[serde(default)]
    pub shard: Option<String>,
    pub cells: Vec<Cell>,
}

/// What the host-kernel part of a run produced.
#[derive(Debug, Clone)]
pub struct HostRun {
    pub outcomes: Vec<ScenarioOutcome>,
    /// The host probe as capability text ([`capabilities::render`]).
    pub capabilities: Option<String>,
}

impl Report {
    /// The report of a run: the host run (if any) first, then the cells.
    pub fn build(host: Option<&HostRun>, cells: &[CellReport], shard: Option<String>) -> Report {
        let mut out = Vec::new();
        if let Some(h) = host {
            let lockdown = h.outcomes.first().map(|o| lockdown_name(o.lockdown)).unwrap_or("none");
            out.push(Cell {
                kernel: "host".into(),
                lockdown: lockdown.into(),
                machine: None,
                boot_ms: None,
                first_scenario_ms: None,
                total_ms: h.outcomes.iter().map(|o| o.duration_ms as u64).sum(),
                failure: None,
                console_excerpt: Vec::new(),
                capabilities: h.capabilities.clone(),
                scenarios: h.outcomes.iter().map(entry).collect(),
            });
        }
        for c in cells {
            out.push(Cell {
                kernel: c.kernel.clone(),
                lockdown: c.lockdown.as_str().into(),
                machine: c.machine.clone(),
                boot_ms: c.boot_ms,
                first_scenario_ms: c.first_scenario_ms,
                total_ms: c.total_ms,
                failure: c.failure.clone(),
                console_excerpt: c.console_excerpt.clone(),
                capabilities: c.capabilities.clone(),
                scenarios: c.outcomes.iter().map(entry).collect(),
            });
        }
        Report { tool: format!("tclab {}", env!("CARGO_PKG_VERSION")), shard, cells: out }
    }

    /// Shard reports put together (cells in canonical order), for one page
    /// over a whole sharded nightly.
    pub fn merge(reports: Vec<Report>) -> Report {
        let tool = reports.first().map(|r| r.tool.clone()).unwrap_or_else(|| format!("tclab {}", env!("CARGO_PKG_VERSION")));
        let shards: Vec<String> = reports.iter().filter_map(|r| r.shard.clone()).collect();
        let mut cells: Vec<Cell> = reports.into_iter().flat_map(|r| r.cells).collect();
        cells.sort_by(|a, b| crate::shard::canonical_order(&unit_of(a), &unit_of(b)));
        Report { tool, shard: (!shards.is_empty()).then(|| shards.join(",")), cells }
    }

    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for cell in &self.cells {
            for e in &cell.scenarios {
                c.add(e.status);
            }
        }
        c
    }

    /// Any failed scenario or cell.
    pub fn failed(&self) -> bool {
        self.cells.iter().any(Cell::failed)
    }

    /// Scenario names in first-seen order (the capability snapshot first).
    pub fn scenario_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        if self.cells.iter().any(|c| c.scenarios.iter().any(|e| e.scenario == capabilities::NAME)) {
            names.push(capabilities::NAME.to_string());
        }
        for c in &self.cells {
            for e in &c.scenarios {
                if !names.contains(&e.scenario) {
                    names.push(e.scenario.clone());
                }
            }
        }
        names
    }

    /// For each scenario: which cells agree with the common snapshot,
    /// which match a declared specific one, which fail or skip.
    pub fn cross_kernel(&self) -> Vec<CrossRow> {
        let mut rows = Vec::new();
        for name in self.scenario_names() {
            // Every cell has its own capability snapshot: nothing to agree on.
            if name == capabilities::NAME {
                continue;
            }
            let mut row = CrossRow { scenario: name.clone(), ..CrossRow::default() };
            for c in &self.cells {
                let Some(e) = c.scenarios.iter().find(|e| e.scenario == name) else { continue };
                let label = c.label();
                match e.status {
                    Verdict::Pass => row.agree.push(label),
                    Verdict::Diverged => row.diverge.push(label),
                    Verdict::Skip => row.skip.push(label),
                    Verdict::Fail => row.fail.push(label),
                }
            }
            let passes_somewhere = !row.agree.is_empty() || !row.diverge.is_empty();
            row.regression = !row.fail.is_empty() && passes_somewhere;
            rows.push(row);
        }
        rows
    }

    /// The capability table: one row per probe key, one value per cell
    /// (`None` where the cell has no probe).
    pub fn capability_rows(&self) -> Vec<(String, Vec<Option<String>>)> {
        let parsed: Vec<Option<Vec<(String, String)>>> =
            self.cells.iter().map(|c| c.capabilities.as_deref().map(parse_capabilities)).collect();
        let mut keys: Vec<String> = Vec::new();
        for p in parsed.iter().flatten() {
            for (k, _) in p {
                if !keys.contains(k) {
                    keys.push(k.clone());
                }
            }
        }
        keys.into_iter()
            .map(|k| {
                let values = parsed
                    .iter()
                    .map(|p| p.as_ref().map(|p| p.iter().find(|(key, _)| *key == k).map(|(_, v)| v.clone()).unwrap_or_default()))
                    .collect();
                (k, values)
            })
            .collect()
    }

    /// A plain-text summary: one line per cell, then every failure.
    pub fn summary_text(&self) -> String {
        let mut out = String::new();
        for c in &self.cells {
            let n = c.counts();
            out.push_str(&format!(
                "{} {:<22} {} passed, {} diverged, {} skipped, {} failed ({:.1}s)\n",
                if c.failed() { "FAIL" } else { "pass" },
                c.label(),
                n.passed,
                n.diverged,
                n.skipped,
                n.failed,
                c.total_ms as f64 / 1000.0
            ));
        }
        for c in &self.cells {
            if let Some(f) = &c.failure {
                out.push_str(&format!("\ncell {} failed: {f}\n", c.label()));
            }
            for e in c.scenarios.iter().filter(|e| e.status == Verdict::Fail) {
                out.push_str(&format!("\n{} on {}: {}\n", e.scenario, c.label(), e.reasons.join("; ")));
            }
        }
        let n = self.counts();
        out.push_str(&format!(
            "\n{} cell(s): {} passed, {} failed, {} skipped, {} diverged\n",
            self.cells.len(),
            n.passed,
            n.failed,
            n.skipped,
            n.diverged
        ));
        out
    }

    /// Write results.json, junit.xml and report.html into `dir`.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, ReportError> {
        std::fs::create_dir_all(dir).map_err(|source| ReportError::Io { path: dir.to_path_buf(), source })?;
        let files = [
            (RESULTS_JSON, json::render(self)?),
            (JUNIT_XML, junit::render(self)),
            (REPORT_HTML, html::render(self)),
        ];
        let mut written = Vec::new();
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|source| ReportError::Io { path: path.clone(), source })?;
            written.push(path);
        }
        Ok(written)
    }
}

/// One row of the cross-kernel view.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrossRow {
    pub scenario: String,
    /// Cells that passed against the common snapshot.
    pub agree: Vec<String>,
    /// Cells that passed against their declared specific snapshot.
    pub diverge: Vec<String>,
    pub fail: Vec<String>,
    pub skip: Vec<String>,
    /// Fails somewhere while passing elsewhere: a kernel (or mode) regressed.
    pub regression: bool,
}

/// Writing or reading a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("failed to write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("failed to read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a tclab results.json: {why}")]
    Parse { path: PathBuf, why: String },
    #[error("failed to encode results.json: {0}")]
    Encode(String),
}

fn unit_of(c: &Cell) -> crate::shard::Unit {
    match c.lockdown.parse() {
        Ok(l) if !c.is_host() => crate::shard::Unit::cell(&c.kernel, l),
        _ => crate::shard::Unit::host(),
    }
}

/// A runner outcome as a report entry.
pub fn entry(o: &ScenarioOutcome) -> Entry {
    let snapshot = o.snapshot.as_ref().map(|p| p.display().to_string());
    let (status, reasons) = match &o.status {
        Status::Passed => match declared_snapshot(&o.scenario, o.snapshot.as_deref()) {
            Some(key) => (Verdict::Diverged, vec![format!("matches the snapshot declared for {key}, not the common one")]),
            None => (Verdict::Pass, Vec::new()),
        },
        Status::Failed(r) => (Verdict::Fail, r.clone()),
        Status::Skipped(r) => (Verdict::Skip, vec![r.clone()]),
    };
    Entry {
        scenario: o.scenario.clone(),
        file: o.file.display().to_string(),
        status,
        reasons,
        snapshot,
        diff: o.diff.clone(),
        duration_ms: u64::try_from(o.duration_ms).unwrap_or(u64::MAX),
        output: o.result.as_ref().map(|r| r.output.clone()).unwrap_or_default(),
        result: o.result.clone().map(Box::new),
    }
}

/// `<scenario>@<key>.snap` → `key`: the scenario's declared specific
/// snapshot. The capability snapshot is per cell by design, never a divergence.
pub fn declared_snapshot(scenario: &str, snapshot: Option<&Path>) -> Option<String> {
    if scenario == capabilities::NAME {
        return None;
    }
    let name = snapshot?.file_name()?.to_str()?;
    let key = name.strip_prefix(scenario)?.strip_prefix('@')?;
    Some(key.strip_suffix(".snap").unwrap_or(key).to_string())
}

/// `key: value` lines, with `key:` followed by `  - item` lines as a list.
fn parse_capabilities(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut lists: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(item) = line.strip_prefix("  - ") {
            if let Some(last) = out.len().checked_sub(1) {
                lists.entry(last).or_default().push(item.to_string());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    for (i, items) in lists {
        out[i].1 = items.join("; ");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_snapshots_are_the_scenarios_own_at_files() {
        let p = |s: &str| PathBuf::from(format!("scenarios/snapshots/{s}"));
        assert_eq!(declared_snapshot("a", Some(&p("a@5.10.snap"))), Some("5.10".into()));
        assert_eq!(declared_snapshot("a", Some(&p("a@6.1+integrity.snap"))), Some("6.1+integrity".into()));
        assert_eq!(declared_snapshot("a", Some(&p("a.snap"))), None);
        // Another scenario whose name starts the same is not a declaration of "a".
        assert_eq!(declared_snapshot("a", Some(&p("ab@5.10.snap"))), None);
        assert_eq!(declared_snapshot("capabilities", Some(&p("capabilities@5.10+none.snap"))), None);
        assert_eq!(declared_snapshot("a", None), None);
    }

    #[test]
    fn capability_text_parses_scalars_and_lists() {
        let text = "btf: true\nnotes:\n  - one\n  - two\ntcx: false\nempty: []\n";
        assert_eq!(
            parse_capabilities(text),
            [("btf", "true"), ("notes", "one; two"), ("tcx", "false"), ("empty", "[]")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }
}
