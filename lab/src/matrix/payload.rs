//! The scenario files and what they reference, laid out in the guest as on
//! the host (relative to their common folder), so relative paths inside the
//! scenario files (`pcap = "../fixtures/x.pcap"`) resolve the same way.

use std::path::{Path, PathBuf};

use crate::guest::PAYLOAD_DIR;
use crate::scenario::Scenario;
use crate::vm::PayloadFile;

/// Where the matrix puts the scenario tree in the guest.
pub fn guest_root() -> String {
    format!("{PAYLOAD_DIR}/tree")
}

/// The payload: every scenario file and every file it references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioPayload {
    /// Host file → guest path.
    pub files: Vec<PayloadFile>,
    /// Guest path of each scenario file, in the order of the scenarios.
    pub scenarios: Vec<String>,
}

/// A payload error names the file that could not be placed.
#[derive(Debug, thiserror::Error)]
#[error("failed to resolve {path} for the guest: {source}")]
pub struct PayloadError {
    path: PathBuf,
    source: std::io::Error,
}

/// Build the payload for `scenarios`.
pub fn build(scenarios: &[Scenario]) -> Result<ScenarioPayload, PayloadError> {
    let canonical = |p: &Path| p.canonicalize().map_err(|source| PayloadError { path: p.to_owned(), source });
    let mut scenario_paths = Vec::with_capacity(scenarios.len());
    let mut all = Vec::new();
    for s in scenarios {
        let path = canonical(&s.path)?;
        scenario_paths.push(path.clone());
        all.push(path);
        for f in s.referenced_files() {
            all.push(canonical(&f)?);
        }
    }
    let root = common_ancestor(&all);
    let to_guest = |p: &Path| {
        let rel = p.strip_prefix(&root).unwrap_or(p);
        format!("{}/{}", guest_root(), rel.to_string_lossy().trim_start_matches('/'))
    };
    all.sort();
    all.dedup();
    Ok(ScenarioPayload {
        files: all.iter().map(|p| PayloadFile { host: p.clone(), guest: to_guest(p) }).collect(),
        scenarios: scenario_paths.iter().map(|p| to_guest(p)).collect(),
    })
}

/// The deepest folder containing every path (`/` at worst).
fn common_ancestor(paths: &[PathBuf]) -> PathBuf {
    let mut iter = paths.iter();
    let Some(first) = iter.next() else { return PathBuf::from("/") };
    let mut root: PathBuf = first.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
    for p in iter {
        while !p.starts_with(&root) {
            if !root.pop() {
                return PathBuf::from("/");
            }
        }
    }
    root
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_ancestor_is_the_deepest_shared_folder() {
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(common_ancestor(&[p("/r/scenarios/a.toml"), p("/r/fixtures/x.pcap")]), p("/r"));
        assert_eq!(common_ancestor(&[p("/r/scenarios/a.toml"), p("/r/scenarios/b.toml")]), p("/r/scenarios"));
        assert_eq!(common_ancestor(&[p("/a/x"), p("/b/y")]), p("/"));
    }
}
