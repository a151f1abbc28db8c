//! Scenario errors: every one names the file, the line and the column.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A scenario file error, displayed as `scenarios/x.toml:12:5: message`.
///
/// `line` and `col` are 1-based; both are 0 when the error concerns the whole
/// file (it cannot be read, or two files share a name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ScenarioError {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.col,
                self.message
            )
        }
    }
}

impl ScenarioError {
    /// An error about the whole file (no position).
    pub fn file(file: &Path, message: impl Into<String>) -> Self {
        ScenarioError {
            file: file.to_path_buf(),
            line: 0,
            col: 0,
            message: message.into(),
        }
    }

    /// An error at a byte span of `source`.
    pub fn at(file: &Path, source: &str, span: Range<usize>, message: impl Into<String>) -> Self {
        let (line, col) = line_col(source, span.start);
        ScenarioError {
            file: file.to_path_buf(),
            line,
            col,
            message: message.into(),
        }
    }

    /// Converts a TOML syntax or type error, rewording serde's vocabulary
    /// ("field") into the file's ("key").
    pub(crate) fn from_toml(file: &Path, source: &str, err: &toml::de::Error) -> Self {
        let message = err.message().trim().replace("unknown field", "unknown key");
        let message = message.replace("missing field", "missing key");
        match err.span() {
            Some(span) => Self::at(file, source, span, message),
            None => Self::file(file, message),
        }
    }
}

/// 1-based line and column (in characters) of byte offset `offset`.
pub(crate) fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let src = "a = 1\nbb = 2\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        assert_eq!(line_col(src, 9), (2, 4));
    }

    #[test]
    fn display_with_and_without_position() {
        let e = ScenarioError::at(Path::new("scenarios/x.toml"), "x\n  y", 4..5, "boom");
        assert_eq!(e.to_string(), "scenarios/x.toml:2:3: boom");
        let e = ScenarioError::file(Path::new("scenarios/x.toml"), "gone");
        assert_eq!(e.to_string(), "scenarios/x.toml: gone");
    }
}
