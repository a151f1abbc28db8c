//! Scenario files (`scenarios/*.toml`): format, validation and errors.
//!
//! The format is documented for contributors in `scenarios/README.md`.
//! Parsing happens in two passes: serde (`raw`) catches unknown keys and
//! wrong types with their position, then `validate` checks meaning (files
//! exist, names are unique, the chain is possible) and builds [`Scenario`].

mod chain;
mod error;
mod model;
mod raw;
mod replay;
mod validate;
pub mod values;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use chain::{
    AGENT_NETLINK_HANDLE, AttachStep, HookChain, NetlinkSlot, ResolvedAttach, ResolvedChain,
    resolve_chain,
};
pub use error::ScenarioError;
pub use model::*;

/// Reads and validates one scenario file; the first error if any.
pub fn load_scenario(path: &Path) -> Result<Scenario, ScenarioError> {
    load_scenario_all(path).map_err(|mut errs| errs.swap_remove(0))
}

/// Reads and validates one scenario file, reporting every error found.
/// The returned error list is never empty.
pub fn load_scenario_all(path: &Path) -> Result<Scenario, Vec<ScenarioError>> {
    let src = std::fs::read_to_string(path).map_err(|e| {
        vec![ScenarioError::file(
            path,
            format!("failed to read scenario file: {e}"),
        )]
    })?;
    parse_scenario(path, &src)
}

/// Validates scenario text; `path` names it in errors and anchors relative pcap paths.
pub fn parse_scenario(path: &Path, src: &str) -> Result<Scenario, Vec<ScenarioError>> {
    let raw: raw::RawScenario =
        toml::from_str(src).map_err(|e| vec![ScenarioError::from_toml(path, src, &e)])?;
    validate::validate(path, src, raw)
}

/// Loads every `*.toml` of `dir` (sorted by file name), collecting all errors
/// of all files, including scenario names used twice.
pub fn load_dir(dir: &Path) -> Result<Vec<Scenario>, Vec<ScenarioError>> {
    let files = toml_files(dir).map_err(|e| vec![e])?;
    let mut scenarios = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        match load_scenario_all(&file) {
            Ok(s) => scenarios.push(s),
            Err(e) => errors.extend(e),
        }
    }
    errors.extend(check_unique_names(&scenarios));
    if errors.is_empty() {
        Ok(scenarios)
    } else {
        Err(errors)
    }
}

/// The `*.toml` files directly in `dir`, sorted.
pub fn toml_files(dir: &Path) -> Result<Vec<PathBuf>, ScenarioError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| ScenarioError::file(dir, format!("failed to list scenario folder: {e}")))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| {
            ScenarioError::file(dir, format!("failed to list scenario folder: {e}"))
        })?;
        let path = entry.path();
        if path.extension().is_some_and(|x| x == "toml") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// One error per scenario whose name an earlier one (in the given order) already uses.
pub fn check_unique_names(scenarios: &[Scenario]) -> Vec<ScenarioError> {
    let mut first: HashMap<&str, &Path> = HashMap::new();
    let mut errors = Vec::new();
    for s in scenarios {
        if let Some(other) = first.get(s.name.as_str()) {
            let (line, col) = name_position(&s.path).unwrap_or((0, 0));
            errors.push(ScenarioError {
                file: s.path.clone(),
                line,
                col,
                message: format!(
                    "duplicate scenario name `{}` (also used by {}), expected a unique name",
                    s.name,
                    other.display()
                ),
            });
        } else {
            first.insert(&s.name, &s.path);
        }
    }
    errors
}

/// Where `name = ...` sits in a file that already parsed once.
fn name_position(path: &Path) -> Option<(usize, usize)> {
    #[derive(serde::Deserialize)]
    struct NameOnly {
        name: serde_spanned::Spanned<String>,
    }
    let src = std::fs::read_to_string(path).ok()?;
    // A table without deny_unknown_fields: only `name` is read.
    let doc: NameOnly = toml::from_str(&src).ok()?;
    Some(error::line_col(&src, doc.name.span().start))
}
