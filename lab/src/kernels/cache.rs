//! The kernel cache: `$XDG_CACHE_HOME/tclab/kernels/<name>-<version>/`.
//!
//! A folder only appears there complete: it is built under a `.tmp-*` name
//! and renamed, and its `verified` stamp (the sha256 of the source file) is
//! the last thing written before the rename.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{KernelError, Manifest};

/// File names inside a cached kernel folder.
pub const VMLINUX: &str = "vmlinux";
/// The original compressed image (for the q35 fallback).
pub const BZIMAGE: &str = "bzImage";
/// Metadata, see [`KernelInfo`].
pub const INFO: &str = "kernel.json";
/// The stamp holding the verified sha256.
pub const VERIFIED: &str = "verified";
/// Modules, one `<name>.ko` each.
pub const MODULES_DIR: &str = "modules";
/// The downloaded package, kept for re-extraction and as a local-source sample.
pub const SOURCE_DEB: &str = "source.deb";

/// What `kernel.json` records about a cached kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelInfo {
    /// Manifest name.
    pub name: String,
    /// Pinned version.
    pub version: String,
    /// Kernel release (`uname -r`), when known.
    pub release: String,
    /// Where it came from (human text).
    pub source: String,
    /// sha256 of the source file.
    pub sha256: String,
    /// Module names in load order (dependencies first).
    pub modules: Vec<String>,
}

/// A kernel that is in the cache and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedKernel {
    /// Its folder.
    pub dir: PathBuf,
    /// Its metadata.
    pub info: KernelInfo,
}

impl CachedKernel {
    /// The ELF vmlinux (PVH entry).
    pub fn vmlinux(&self) -> PathBuf {
        self.dir.join(VMLINUX)
    }
    /// The compressed bzImage.
    pub fn bzimage(&self) -> PathBuf {
        self.dir.join(BZIMAGE)
    }
    /// Module files in load order.
    pub fn module_paths(&self) -> Vec<PathBuf> {
        self.info.modules.iter().map(|m| self.dir.join(MODULES_DIR).join(format!("{m}.ko"))).collect()
    }
    /// The package file, when the kernel came from a Debian download.
    pub fn source_deb(&self) -> Option<PathBuf> {
        Some(self.dir.join(SOURCE_DEB)).filter(|p| p.is_file())
    }
}

/// Whether a manifest's kernel is cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheState {
    /// Complete and its stamp matches the manifest.
    Verified(CachedKernel),
    /// Not there, or not trustworthy (the reason says which).
    Missing(String),
}

/// The cache folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    /// `…/tclab/kernels`.
    pub root: PathBuf,
}

impl Cache {
    /// A cache at `root` (tests use a temporary folder).
    pub fn new(root: impl Into<PathBuf>) -> Cache {
        Cache { root: root.into() }
    }

    /// `$XDG_CACHE_HOME/tclab/kernels`, `$HOME/.cache/tclab/kernels` otherwise.
    pub fn default_location() -> Result<Cache, KernelError> {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .ok_or_else(|| KernelError::Io {
                op: "locate the cache (neither XDG_CACHE_HOME nor HOME is set) at",
                path: PathBuf::from("~/.cache"),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })?;
        Ok(Cache::new(base.join("tclab/kernels")))
    }

    /// Hold the cache's lock: one fetch at a time (apt's lists and our
    /// sources file are shared), across processes and threads.
    pub fn lock(&self) -> Result<nix::fcntl::Flock<std::fs::File>, KernelError> {
        let path = self.root.with_file_name("kernels.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(KernelError::io("open the lock file", &path))?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, errno)| KernelError::Io { op: "lock", path, source: errno.into() })
    }

    /// Private apt state, next to the kernels.
    pub fn apt_dir(&self) -> PathBuf {
        self.root.with_file_name("apt")
    }

    /// The folder a manifest's kernel lives in.
    pub fn dir_for(&self, m: &Manifest) -> PathBuf {
        self.root.join(m.cache_key())
    }

    /// Is the manifest's kernel cached and verified?
    pub fn state(&self, m: &Manifest) -> CacheState {
        let dir = self.dir_for(m);
        let stamp = match std::fs::read_to_string(dir.join(VERIFIED)) {
            Ok(s) => s.trim().to_owned(),
            Err(_) if !dir.exists() => return CacheState::Missing("does not exist".into()),
            Err(e) => return CacheState::Missing(format!("has no readable `verified` stamp ({e})")),
        };
        if let Some(want) = &m.sha256
            && &stamp != want
        {
            return CacheState::Missing(format!("was verified against sha256 {stamp}, the manifest pins {want}"));
        }
        let info_path = dir.join(INFO);
        let info = std::fs::read_to_string(&info_path)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<KernelInfo>(&t).map_err(|e| e.to_string()));
        match info {
            Ok(info) => CacheState::Verified(CachedKernel { dir, info }),
            Err(e) => CacheState::Missing(format!("has an unreadable {INFO} ({e})")),
        }
    }

    /// The cached kernel, or a [`KernelError::NotCached`] saying how to fetch it.
    pub fn kernel(&self, m: &Manifest) -> Result<CachedKernel, KernelError> {
        match self.state(m) {
            CacheState::Verified(k) => Ok(k),
            CacheState::Missing(reason) => Err(KernelError::NotCached {
                name: m.name.clone(),
                version: m.version().to_owned(),
                dir: self.dir_for(m),
                reason,
            }),
        }
    }

    /// Remove `.tmp-<pid>-*` folders whose process is gone (a killed fetch).
    pub fn remove_stale_temps(&self) {
        let Ok(entries) = std::fs::read_dir(&self.root) else { return };
        for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let Some(pid) = name.strip_prefix(".tmp-").and_then(|r| r.split('-').next()) else { continue };
            if !Path::new("/proc").join(pid).exists()
                && let Err(e) = std::fs::remove_dir_all(&path)
            {
                tracing::warn!("failed to remove stale {}: {e}", path.display());
            }
        }
    }
}
