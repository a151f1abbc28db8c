//! `results.json`, schema [`SCHEMA`]:
//!
//! ```text
//! { "schema": 3, "tool": "tclab 0.1.0", "shard": "2/3" | null,
//!   "summary": { "cells", "failed_cells", "passed", "diverged", "skipped", "failed" },
//!   "cells": [ { "kernel", "lockdown", "machine", "boot_ms", "first_scenario_ms",
//!                "total_ms", "failure", "console_excerpt", "capabilities",
//!                "scenarios": [ { "scenario", "file", "status": pass|diverged|skip|fail,
//!                                 "reasons", "snapshot", "diff", "duration_ms",
//!                                 "output", "result" } ] } ],
//!   "cross_kernel": [ { "scenario", "agree", "diverge", "fail", "skip", "regression" } ] }
//! ```
//!
//! `summary` and `cross_kernel` are derived from `cells` (ignored when read back).

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Cell, CrossRow, Report, ReportError, SCHEMA};

#[derive(Serialize)]
struct Document<'a> {
    schema: u32,
    tool: &'a str,
    shard: &'a Option<String>,
    summary: Summary,
    cells: &'a [Cell],
    cross_kernel: Vec<CrossRow>,
}

#[derive(Serialize)]
struct Summary {
    cells: usize,
    failed_cells: usize,
    passed: usize,
    diverged: usize,
    skipped: usize,
    failed: usize,
}

/// The document text.
pub fn render(report: &Report) -> Result<String, ReportError> {
    let counts = report.counts();
    let doc = Document {
        schema: SCHEMA,
        tool: &report.tool,
        shard: &report.shard,
        summary: Summary {
            cells: report.cells.len(),
            failed_cells: report.cells.iter().filter(|c| c.failed()).count(),
            passed: counts.passed,
            diverged: counts.diverged,
            skipped: counts.skipped,
            failed: counts.failed,
        },
        cells: &report.cells,
        cross_kernel: report.cross_kernel(),
    };
    serde_json::to_string_pretty(&doc).map_err(|e| ReportError::Encode(e.to_string()))
}

/// Read a `results.json` back (to merge shard reports).
pub fn parse(path: &Path, text: &str) -> Result<Report, ReportError> {
    let err = |why: String| ReportError::Parse { path: path.to_path_buf(), why };
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| err(e.to_string()))?;
    match value.get("schema").and_then(serde_json::Value::as_u64) {
        Some(s) if s == u64::from(SCHEMA) => {}
        Some(s) => return Err(err(format!("schema {s}, this tclab reads schema {SCHEMA}"))),
        None => return Err(err("no \"schema\" number".into())),
    }
    serde_json::from_value(value).map_err(|e| err(e.to_string()))
}

/// Read a `results.json`, or `DIR/results.json` when given a folder.
pub fn read(path: &Path) -> Result<Report, ReportError> {
    let file: PathBuf = if path.is_dir() { path.join(super::RESULTS_JSON) } else { path.to_path_buf() };
    let text = std::fs::read_to_string(&file).map_err(|source| ReportError::Read { path: file.clone(), source })?;
    parse(&file, &text)
}
