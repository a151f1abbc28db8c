//! The kernel catalogue's one error type. Every variant names the manifest,
//! file or command it failed on, so a user can act on the message alone.

use std::io;
use std::path::PathBuf;

/// An error from reading manifests, fetching, verifying or extracting a kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// No manifest declares this kernel name.
    #[error("unknown kernel {name:?}: no manifest in {dir} declares it (known: {known})")]
    UnknownKernel {
        /// The name asked for.
        name: String,
        /// The manifest folder searched.
        dir: PathBuf,
        /// The names that do exist, comma separated.
        known: String,
    },
    /// A manifest could not be parsed or is inconsistent.
    #[error("invalid kernel manifest {path}: {reason}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong, with toml's line/column when it has one.
        reason: String,
    },
    /// A file system operation failed.
    #[error("failed to {op} {path}: {source}")]
    Io {
        /// What was being done, e.g. "read", "create folder".
        op: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The downloaded or local file does not have the manifest's sha256.
    #[error("checksum mismatch for {file} (manifest {manifest}): expected sha256 {expected}, got {actual}")]
    Checksum {
        /// The file that was hashed.
        file: PathBuf,
        /// The manifest that pins the checksum.
        manifest: PathBuf,
        /// The pinned sha256.
        expected: String,
        /// What the file hashes to.
        actual: String,
    },
    /// The private apt run failed (update or download).
    #[error("failed to run {command} (for manifest {manifest}): {reason}")]
    Apt {
        /// The whole command line.
        command: String,
        /// The manifest being fetched (or the list of them).
        manifest: String,
        /// Exit status and apt's own error lines.
        reason: String,
    },
    /// The machine's apt sources name no usable mirror.
    #[error("failed to find a Debian mirror in the machine's apt sources ({searched}): {reason}")]
    Mirror {
        /// The files read.
        searched: String,
        /// What was missing.
        reason: String,
    },
    /// The package archive is corrupt or lacks something the lab needs.
    #[error("bad kernel archive {path}: {reason}")]
    Archive {
        /// The `.deb`, image or module file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A module the lab needs (or one of its dependencies) is missing.
    #[error("kernel {kernel}: module {module:?}{} is neither in {source_path} nor built in", needed_by.as_deref().map(|n| format!(" (needed by {n:?})")).unwrap_or_default())]
    MissingModule {
        /// The kernel's manifest name.
        kernel: String,
        /// The module that was not found.
        module: String,
        /// The module that depends on it, if any.
        needed_by: Option<String>,
        /// Where modules were looked for.
        source_path: PathBuf,
    },
    /// The kernel is not in the cache (or not verified).
    #[error("kernel {name} ({version}) is not fetched: {dir} {reason}; run `tclab kernels fetch {name}`")]
    NotCached {
        /// The manifest name.
        name: String,
        /// The pinned version.
        version: String,
        /// Where it should be.
        dir: PathBuf,
        /// Why it does not count as cached.
        reason: String,
    },
}

impl KernelError {
    /// Shorthand for [`KernelError::Io`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> KernelError {
        let path = path.into();
        move |source| KernelError::Io { op, path, source }
    }
}
