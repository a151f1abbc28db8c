//! cgroup v2 directories for the test services: the agent's socket
//! programs attach to a cgroup and its probes filter on one, so each
//! service runs in its own.
//!
//! Layout: `<cgroup2 mount>/tclab-<pid>-<seq>/<service>`. The directories
//! are removed on drop (after the processes in them are gone). When the
//! machine has no cgroup2 mount (a bare VM guest), one is mounted on a
//! temporary directory for as long as the [`CgroupRoot`] lives.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The cgroup2 mount point of this process, from /proc/self/mountinfo.
pub fn find_cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        // "36 25 0:30 / /sys/fs/cgroup/unified rw,… - cgroup2 cgroup2 rw"
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split(' ').next()?;
        let mount_point = left.split(' ').nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

/// A private folder of cgroups, removed (with what is under it) on drop.
#[derive(Debug)]
pub struct CgroupRoot {
    dir: PathBuf,
    children: Vec<PathBuf>,
    /// Mounted by us because there was no cgroup2 mount: unmounted on drop.
    mounted: Option<tempfile::TempDir>,
}

impl CgroupRoot {
    /// Create `tclab-<pid>-<seq>` under the cgroup2 mount (mounting one if
    /// the machine has none).
    ///
    /// # Errors
    /// When no cgroup2 can be found or mounted, or the folder not created.
    pub fn create() -> anyhow::Result<CgroupRoot> {
        let (base, mounted) = match find_cgroup2_mount() {
            Some(p) => (p, None),
            None => {
                let tmp = tempfile::Builder::new().prefix("tclab-cgroup2-").tempdir().context("failed to create a mount point for cgroup2")?;
                nix::mount::mount(Some("cgroup2"), tmp.path(), Some("cgroup2"), nix::mount::MsFlags::empty(), None::<&str>)
                    .with_context(|| format!("no cgroup2 mounted, and mounting one on {} failed", tmp.path().display()))?;
                (tmp.path().to_path_buf(), Some(tmp))
            }
        };
        remove_stale(&base);
        let dir = base.join(format!("tclab-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir(&dir).with_context(|| format!("failed to create cgroup {}", dir.display()))?;
        Ok(CgroupRoot { dir, children: Vec::new(), mounted })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// A child cgroup `name` (removed with the root).
    ///
    /// # Errors
    /// When the folder cannot be created.
    pub fn child(&mut self, name: &str) -> anyhow::Result<PathBuf> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            bail!("bad cgroup name {name:?}");
        }
        let p = self.dir.join(name);
        std::fs::create_dir(&p).with_context(|| format!("failed to create cgroup {}", p.display()))?;
        self.children.push(p.clone());
        Ok(p)
    }
}

/// The cgroup v2 id of a cgroup folder (what `bpf_get_current_cgroup_id`
/// returns for its processes): the inode number of the folder.
///
/// # Errors
/// When the folder cannot be read.
pub fn cgroup_id(path: &Path) -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path).with_context(|| format!("failed to stat cgroup {}", path.display()))?.ino())
}

/// Folders of runs that were killed before they could remove theirs
/// (`tclab-<pid>-<seq>` whose pid is gone): empty, so rmdir takes them.
fn remove_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("tclab-")).and_then(|r| r.split('-').next()) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = e.path();
        if let Ok(children) = std::fs::read_dir(&dir) {
            for c in children.flatten().filter(|c| c.path().is_dir()) {
                let _ = std::fs::remove_dir(c.path());
            }
        }
        match std::fs::remove_dir(&dir) {
            Ok(()) => tracing::info!("removed the cgroup {} of a run that was killed", dir.display()),
            Err(e) => tracing::debug!(error = %e, "left {}", dir.display()),
        }
    }
}

/// rmdir, retrying while the kernel still counts exiting processes in it.
fn remove(dir: &Path) {
    for attempt in 0..50 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if attempt == 49 => tracing::warn!(error = %e, "failed to remove cgroup {}", dir.display()),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

impl Drop for CgroupRoot {
    fn drop(&mut self) {
        for c in self.children.iter().rev() {
            remove(c);
        }
        remove(&self.dir);
        if let Some(tmp) = &self.mounted
            && let Err(e) = nix::mount::umount2(tmp.path(), nix::mount::MntFlags::MNT_DETACH)
        {
            tracing::warn!(error = %e, "failed to unmount {}", tmp.path().display());
        }
    }
}
