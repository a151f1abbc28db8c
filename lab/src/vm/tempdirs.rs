//! Temporary folders of cells (initramfs archives, ~45 MB each with a debug
//! binary). They carry the owning process id, so a run killed with SIGKILL,
//! which cannot clean up, has its folders removed by the next run.

use std::path::{Path, PathBuf};

/// Prefixes of the folders the VM code creates in the temporary folder.
pub const PREFIXES: [&str; 2] = ["tclab-vm-", "tclab-initrd-"];

/// `tclab-vm-<pid>-`: the prefix for a new folder of this process.
pub fn prefix(kind: &str) -> String {
    format!("{kind}{}-", std::process::id())
}

/// The owner of a folder named `<prefix><pid>-<random>`.
fn owner(name: &str) -> Option<u32> {
    let rest = PREFIXES.iter().find_map(|p| name.strip_prefix(p))?;
    rest.split('-').next()?.parse().ok()
}

/// Remove the cell folders in `tmp` whose owning process is gone; returns
/// what was removed. Folders of live processes (other runs) are left alone.
pub fn remove_stale(tmp: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(tmp) else { return Vec::new() };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner(&name) else { continue };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_dir_all(&path) {
            Ok(()) => removed.push(path),
            Err(e) => tracing::warn!(path = %path.display(), "failed to remove a dead run's folder: {e}"),
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_of_dead_processes_go_and_live_ones_stay() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut child = std::process::Command::new("true").spawn().expect("spawn true");
        let dead = child.id();
        child.wait().expect("wait");
        let stale = tmp.path().join(format!("tclab-vm-{dead}-abc"));
        let ours = tmp.path().join(format!("{}xyz", prefix("tclab-initrd-")));
        let other = tmp.path().join("tclab-vm-notapid-x");
        for d in [&stale, &ours, &other] {
            std::fs::create_dir_all(d.join("inner")).expect("mkdir");
        }
        assert_eq!(remove_stale(tmp.path()), vec![stale.clone()]);
        assert!(!stale.exists() && ours.exists() && other.exists());
    }
}
