//! Scenario snapshots: `scenarios/snapshots/<scenario>.snap`, and
//! `<scenario>@<kernel>.snap` where a scenario declares that its result varies
//! by kernel.
//!
//! The files use insta's format (a `---` metadata header, then the content),
//! and a changed result is written next to the snapshot as `.snap.new`, so
//! `cargo insta review` and `tclab review` both accept or reject it. Nothing is
//! ever accepted automatically: in CI (`CI` set, or `INSTA_UPDATE=no`) not even
//! a pending file is written.

use std::fs;
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};

use similar::TextDiff;

/// Failure to read or write a snapshot file.
#[derive(Debug, thiserror::Error)]
#[error("failed to {op} {path}: {source}")]
pub struct SnapshotError {
    op: &'static str,
    path: PathBuf,
    source: io::Error,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + use<> {
    let path = path.to_path_buf();
    move |source| SnapshotError { op, path, source }
}

/// Whether a mismatch may leave a pending `.snap.new` for review.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingWrites {
    /// Write `.snap.new` files (a developer's machine).
    Write,
    /// Never write anything (CI).
    Never,
}

impl PendingWrites {
    /// `Never` under CI or `INSTA_UPDATE=no`, as insta itself behaves.
    pub fn from_env() -> Self {
        let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
        let no = std::env::var("INSTA_UPDATE").is_ok_and(|v| v == "no");
        if ci || no { Self::Never } else { Self::Write }
    }
}

/// The result of comparing one scenario's output with its snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotOutcome {
    Matched { path: PathBuf },
    /// No snapshot exists yet.
    Missing { path: PathBuf, pending: Option<PathBuf> },
    Mismatch { path: PathBuf, diff: String, pending: Option<PathBuf> },
}

impl SnapshotOutcome {
    pub fn passed(&self) -> bool {
        matches!(self, Self::Matched { .. })
    }
}

/// A folder of scenario snapshots.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    dir: PathBuf,
}

impl SnapshotStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The snapshot file for a scenario, kernel-specific when `kernel` is set.
    pub fn path_for(&self, scenario: &str, kernel: Option<&str>) -> PathBuf {
        match kernel {
            Some(k) => self.dir.join(format!("{scenario}@{k}.snap")),
            None => self.dir.join(format!("{scenario}.snap")),
        }
    }

    /// Compare `content` with the snapshot of `scenario`. When the scenario
    /// varies by kernel and a kernel-specific snapshot exists, that one is the
    /// reference; otherwise the common one is.
    pub fn check(
        &self,
        scenario: &str,
        source: &str,
        kernel_specific: Option<&str>,
        content: &str,
        writes: PendingWrites,
    ) -> Result<SnapshotOutcome, SnapshotError> {
        let specific = kernel_specific.map(|k| self.path_for(scenario, Some(k)));
        let path = match &specific {
            Some(p) if p.exists() => p.clone(),
            _ => self.path_for(scenario, None),
        };
        // A varying scenario that differs from the common snapshot gets its
        // own pending file: the common one stays as other kernels need it.
        let pending_target = specific.unwrap_or_else(|| path.clone());
        let expected = match fs::read_to_string(&path) {
            Ok(text) => Some(strip_header(&text).to_string()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err("read snapshot", &path)(e)),
        };
        let actual = normalise(content);
        let pending = match (&expected, writes) {
            (Some(e), _) if *e == actual => return Ok(SnapshotOutcome::Matched { path }),
            (_, PendingWrites::Never) => None,
            (_, PendingWrites::Write) => Some(self.write_pending(&pending_target, scenario, source, &actual)?),
        };
        Ok(match expected {
            None => SnapshotOutcome::Missing { path, pending },
            Some(expected) => {
                let diff = unified_diff(&expected, &actual, &path);
                SnapshotOutcome::Mismatch { path, diff, pending }
            }
        })
    }

    fn write_pending(
        &self,
        path: &Path,
        scenario: &str,
        source: &str,
        content: &str,
    ) -> Result<PathBuf, SnapshotError> {
        fs::create_dir_all(&self.dir).map_err(io_err("create snapshot folder", &self.dir))?;
        let pending = pending_path(path);
        let text = format!("---\nsource: {source}\nexpression: {scenario}\n---\n{content}");
        fs::write(&pending, text).map_err(io_err("write pending snapshot", &pending))?;
        Ok(pending)
    }

    /// Every pending `.snap.new` in the store, sorted.
    pub fn pending(&self) -> Result<Vec<PathBuf>, SnapshotError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("list snapshots in", &self.dir)(e)),
        };
        let mut out: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with(".snap.new"))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Walk the pending snapshots: show each diff and accept, reject or skip
    /// it. `decide` is asked for each (the CLI reads the answer from the
    /// terminal, `--accept`/`--reject` answer for all).
    pub fn review(
        &self,
        out: &mut dyn Write,
        mut decide: impl FnMut(&Path) -> io::Result<ReviewDecision>,
    ) -> Result<ReviewSummary, SnapshotError> {
        let mut summary = ReviewSummary::default();
        for pending in self.pending()? {
            let target = pending.with_extension("");
            let new = fs::read_to_string(&pending).map_err(io_err("read", &pending))?;
            let old = fs::read_to_string(&target).unwrap_or_default();
            let diff = unified_diff(strip_header(&old), strip_header(&new), &target);
            let mut show = || -> io::Result<()> { writeln!(out, "{}\n{diff}", target.display()) };
            show().map_err(io_err("print diff of", &target))?;
            match decide(&target).map_err(io_err("ask about", &target))? {
                ReviewDecision::Accept => {
                    fs::rename(&pending, &target).map_err(io_err("accept", &pending))?;
                    summary.accepted += 1;
                }
                ReviewDecision::Reject => {
                    fs::remove_file(&pending).map_err(io_err("reject", &pending))?;
                    summary.rejected += 1;
                }
                ReviewDecision::Skip => summary.skipped += 1,
            }
        }
        Ok(summary)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewDecision {
    Accept,
    Reject,
    Skip,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReviewSummary {
    pub accepted: usize,
    pub rejected: usize,
    pub skipped: usize,
}

/// Ask on a terminal: `a`ccept, `r`eject or `s`kip.
pub fn ask_terminal(input: &mut dyn BufRead, out: &mut dyn Write) -> io::Result<ReviewDecision> {
    loop {
        write!(out, "accept (a), reject (r), skip (s)? ")?;
        out.flush()?;
        let mut line = String::new();
        if input.read_line(&mut line)? == 0 {
            return Ok(ReviewDecision::Skip);
        }
        match line.trim() {
            "a" => return Ok(ReviewDecision::Accept),
            "r" => return Ok(ReviewDecision::Reject),
            "s" => return Ok(ReviewDecision::Skip),
            _ => continue,
        }
    }
}

fn pending_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".new");
    PathBuf::from(p)
}

/// The content after insta's `---` metadata header.
fn strip_header(text: &str) -> &str {
    let Some(rest) = text.strip_prefix("---\n") else { return text };
    match rest.find("\n---\n") {
        Some(end) => &rest[end + 5..],
        None => text,
    }
}

/// One trailing newline, no trailing spaces: what is stored and compared.
fn normalise(content: &str) -> String {
    let mut out: String = content.lines().map(|l| format!("{}\n", l.trim_end())).collect();
    if out.is_empty() {
        out.push('\n');
    }
    out
}

fn unified_diff(expected: &str, actual: &str, path: &Path) -> String {
    TextDiff::from_lines(expected, actual)
        .unified_diff()
        .context_radius(3)
        .header(&format!("{} (snapshot)", path.display()), "actual")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, SnapshotStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SnapshotStore::new(dir.path().join("snapshots"));
        (dir, store)
    }

    #[test]
    fn missing_then_accepted_then_matched() {
        let (_dir, store) = store();
        let out = store.check("s1", "s1.toml", None, "a: 1\n", PendingWrites::Write).expect("check");
        let SnapshotOutcome::Missing { pending: Some(pending), .. } = out else { panic!("{out:?}") };
        assert!(pending.ends_with("s1.snap.new"));
        let mut sink = Vec::new();
        let summary = store.review(&mut sink, |_| Ok(ReviewDecision::Accept)).expect("review");
        assert_eq!(summary.accepted, 1);
        let out = store.check("s1", "s1.toml", None, "a: 1", PendingWrites::Write).expect("check");
        assert!(out.passed(), "{out:?}");
    }

    #[test]
    fn mismatch_shows_a_diff_and_never_writes_in_ci_mode() {
        let (_dir, store) = store();
        fs::create_dir_all(store.dir()).expect("mkdir");
        fs::write(store.path_for("s", None), "---\nsource: x\nexpression: s\n---\nold line\n").expect("write");
        let out = store.check("s", "s.toml", None, "new line\n", PendingWrites::Never).expect("check");
        let SnapshotOutcome::Mismatch { diff, pending, .. } = out else { panic!("{out:?}") };
        assert!(diff.contains("-old line") && diff.contains("+new line"), "{diff}");
        assert_eq!(pending, None);
        assert!(store.pending().expect("pending").is_empty());
    }

    #[test]
    fn kernel_specific_snapshot_wins_when_present() {
        let (_dir, store) = store();
        fs::create_dir_all(store.dir()).expect("mkdir");
        fs::write(store.path_for("s", None), "common\n").expect("write");
        fs::write(store.path_for("s", Some("5.10")), "---\nsource: x\nexpression: s\n---\nold kernel\n")
            .expect("write");
        let on_510 = store.check("s", "s.toml", Some("5.10"), "old kernel", PendingWrites::Never);
        assert!(on_510.expect("check").passed());
        let on_612 = store.check("s", "s.toml", Some("6.12"), "common", PendingWrites::Never);
        assert!(on_612.expect("check").passed());
    }

    #[test]
    fn a_varying_scenario_that_differs_gets_its_own_pending_snapshot() {
        let (_dir, store) = store();
        fs::create_dir_all(store.dir()).expect("mkdir");
        fs::write(store.path_for("s", None), "---\nsource: x\nexpression: s\n---\ncommon\n").expect("write");
        let out = store.check("s", "s.toml", Some("5.10"), "on 5.10\n", PendingWrites::Write).expect("check");
        let SnapshotOutcome::Mismatch { pending: Some(pending), .. } = out else { panic!("{out:?}") };
        assert_eq!(pending, store.dir().join("s@5.10.snap.new"));
        assert!(!store.dir().join("s.snap.new").exists(), "the common snapshot is left alone");
    }

    #[test]
    fn rejected_pending_is_removed() {
        let (_dir, store) = store();
        store.check("s", "s.toml", None, "x", PendingWrites::Write).expect("check");
        let summary = store.review(&mut Vec::new(), |_| Ok(ReviewDecision::Reject)).expect("review");
        assert_eq!(summary.rejected, 1);
        assert!(store.pending().expect("pending").is_empty());
        assert!(!store.path_for("s", None).exists());
    }
}
