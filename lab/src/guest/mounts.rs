//! The file systems init mounts, as a table.

use nix::mount::{MsFlags, mount};

/// One mount.
#[derive(Debug, Clone, Copy)]
pub struct Mount {
    /// Source (the fs name for virtual file systems).
    pub source: &'static str,
    /// Mount point; created when missing (outside sysfs).
    pub target: &'static str,
    /// File system type.
    pub fstype: &'static str,
    /// Flags.
    pub flags: MsFlags,
}

const NOSUID_NODEV_NOEXEC: MsFlags =
    MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV).union(MsFlags::MS_NOEXEC);

/// In order: later mount points live in earlier file systems.
pub const MOUNTS: &[Mount] = &[
    Mount { source: "proc", target: "/proc", fstype: "proc", flags: NOSUID_NODEV_NOEXEC },
    Mount { source: "sysfs", target: "/sys", fstype: "sysfs", flags: NOSUID_NODEV_NOEXEC },
    // Built in but not auto-mounted on the Debian kernels.
    Mount { source: "devtmpfs", target: "/dev", fstype: "devtmpfs", flags: MsFlags::MS_NOSUID },
    Mount { source: "tmpfs", target: "/run", fstype: "tmpfs", flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV) },
    Mount { source: "tmpfs", target: "/tmp", fstype: "tmpfs", flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV) },
    Mount { source: "bpf", target: "/sys/fs/bpf", fstype: "bpf", flags: NOSUID_NODEV_NOEXEC },
    Mount { source: "cgroup2", target: "/sys/fs/cgroup", fstype: "cgroup2", flags: NOSUID_NODEV_NOEXEC },
    // The lockdown file lives here.
    Mount { source: "securityfs", target: "/sys/kernel/security", fstype: "securityfs", flags: NOSUID_NODEV_NOEXEC },
    Mount { source: "tracefs", target: "/sys/kernel/tracing", fstype: "tracefs", flags: NOSUID_NODEV_NOEXEC },
];

/// Mount everything; returns one message per failure (init goes on).
pub fn mount_all() -> Vec<String> {
    let mut errors = Vec::new();
    for m in MOUNTS {
        if !m.target.starts_with("/sys/")
            && let Err(e) = std::fs::create_dir_all(m.target)
        {
            errors.push(format!("mkdir({}) failed: {e}", m.target));
            continue;
        }
        if let Err(e) = mount(Some(m.source), m.target, Some(m.fstype), m.flags, None::<&str>) {
            errors.push(format!("mount({}, {}, {}, {:?}) failed: {e}", m.source, m.target, m.fstype, m.flags));
        }
    }
    errors
}
