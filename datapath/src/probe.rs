//! What this kernel offers the datapath, each feature actually probed.
//!
//! Nothing here is guessed from the version string: ring buffers and helpers
//! are probed by creating a map / loading a tiny program (aya's feature
//! probes), TCX by creating a real TCX link on `lo` inside a throwaway network
//! namespace, and lockdown is read from securityfs (and, when securityfs is not
//! mounted, inferred from whether `bpf_probe_write_user` was refused).

use std::fmt;
use std::os::fd::{FromRawFd, OwnedFd};

use aya::maps::MapType;
use aya::programs::ProgramType;
use aya::sys::{BpfHelper, is_helper_supported, is_map_supported};
use serde::{Deserialize, Serialize};

/// Env switch forcing the `bpf_loop` answer on backported kernels, where the
/// helper exists but the probe's program type disagrees, or to test both paths.
pub const BPF_LOOP_OVERRIDE_ENV: &str = "TCLAB_OVERRIDE_BPF_LOOP_ENABLED";

/// Where the kernel publishes the lockdown mode (`none [integrity] confidentiality`).
pub const LOCKDOWN_PATH: &str = "/sys/kernel/security/lockdown";

/// The kernel's BTF, needed for CO-RE.
pub const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

/// Kernel lockdown mode (security/lockdown LSM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lockdown {
    /// No restriction.
    None,
    /// Writes to kernel/user memory from BPF are refused.
    Integrity,
    /// Integrity plus reads of kernel memory are refused.
    Confidentiality,
    /// The mode could not be read; the string says why.
    Unknown(String),
}

impl fmt::Display for Lockdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lockdown::None => f.write_str("none"),
            Lockdown::Integrity => f.write_str("integrity"),
            Lockdown::Confidentiality => f.write_str("confidentiality"),
            Lockdown::Unknown(why) => write!(f, "unknown ({why})"),
        }
    }
}

/// What the running kernel offers, as probed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelFeatures {
    /// `/proc/sys/kernel/osrelease`.
    pub kernel_version: String,
    /// `/sys/kernel/btf/vmlinux` exists.
    pub btf: bool,
    /// A TCX link could be created (CONFIG_NET_XGRESS, 6.6+).
    pub tcx: bool,
    /// `bpf_loop` usable from a classifier (after the override, if any).
    pub bpf_loop: bool,
    /// What the `bpf_loop` probe itself said.
    pub bpf_loop_probed: bool,
    /// `Some(v)` when [`BPF_LOOP_OVERRIDE_ENV`] forced the answer.
    pub bpf_loop_override: Option<bool>,
    /// A BPF_MAP_TYPE_RINGBUF could be created.
    pub ringbuf: bool,
    /// `bpf_probe_write_user` accepted by the verifier in a kprobe program
    /// (refused under lockdown integrity and confidentiality).
    pub probe_write_user: bool,
    /// Lockdown mode.
    pub lockdown: Lockdown,
    /// How `lockdown` was found (the file, or an inference).
    pub lockdown_source: String,
    /// Probes that failed unexpectedly (the feature is then reported absent).
    pub notes: Vec<String>,
}

impl KernelFeatures {
    /// Probe the running kernel. Needs CAP_BPF/CAP_SYS_ADMIN for meaningful
    /// answers; a probe that fails for another reason reports the feature as
    /// absent and explains why in `notes`.
    pub fn probe() -> KernelFeatures {
        let mut notes = Vec::new();
        let kernel_version = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|e| {
                notes.push(format!("failed to read /proc/sys/kernel/osrelease: {e}"));
                "unknown".to_owned()
            });
        let btf = std::path::Path::new(BTF_PATH).exists();
        let ringbuf = is_map_supported(MapType::RingBuf).unwrap_or_else(|e| {
            notes.push(format!("ringbuf probe failed: {e}"));
            false
        });
        let mut helper = |ty, h, what: &str| {
            is_helper_supported(ty, h).unwrap_or_else(|e| {
                notes.push(format!("{what} probe failed: {e}"));
                false
            })
        };
        let bpf_loop_probed = helper(ProgramType::SchedClassifier, BpfHelper::BPF_FUNC_loop, "bpf_loop");
        let probe_write_user =
            helper(ProgramType::KProbe, BpfHelper::BPF_FUNC_probe_write_user, "bpf_probe_write_user");
        let bpf_loop_override = parse_override(std::env::var(BPF_LOOP_OVERRIDE_ENV).ok().as_deref(), &mut notes);
        let tcx = probe_tcx().unwrap_or_else(|e| {
            notes.push(format!("tcx probe failed: {e}"));
            false
        });
        let (lockdown, lockdown_source) = read_lockdown(probe_write_user);
        KernelFeatures {
            kernel_version,
            btf,
            tcx,
            bpf_loop: bpf_loop_override.unwrap_or(bpf_loop_probed),
            bpf_loop_probed,
            bpf_loop_override,
            ringbuf,
            probe_write_user,
            lockdown,
            lockdown_source,
            notes,
        }
    }

    /// The human table printed by `tclab-agent probe`.
    pub fn to_table(&self) -> String {
        let yn = |b: bool| if b { "yes" } else { "no" };
        let bpf_loop = match self.bpf_loop_override {
            Some(v) => format!("{} (overridden by {BPF_LOOP_OVERRIDE_ENV}; probe said {})", yn(v), yn(self.bpf_loop_probed)),
            None => yn(self.bpf_loop).to_owned(),
        };
        let rows = [
            ("kernel", self.kernel_version.clone()),
            ("btf", format!("{} ({BTF_PATH})", yn(self.btf))),
            ("tcx", yn(self.tcx).to_owned()),
            ("bpf_loop", bpf_loop),
            ("ringbuf", yn(self.ringbuf).to_owned()),
            ("probe_write_user", yn(self.probe_write_user).to_owned()),
            ("lockdown", format!("{} (from {})", self.lockdown, self.lockdown_source)),
        ];
        let mut out = String::new();
        for (k, v) in rows {
            out.push_str(&format!("{k:<18} {v}\n"));
        }
        for n in &self.notes {
            out.push_str(&format!("{:<18} {n}\n", "note"));
        }
        out
    }
}

fn parse_override(value: Option<&str>, notes: &mut Vec<String>) -> Option<bool> {
    match value {
        Some("1") => Some(true),
        Some("0") => Some(false),
        Some(other) => {
            notes.push(format!("ignored {BPF_LOOP_OVERRIDE_ENV}={other:?} (expected 1 or 0)"));
            None
        }
        None => None,
    }
}

/// Parse the lockdown file's content: the active mode is the bracketed word.
pub fn parse_lockdown(content: &str) -> Lockdown {
    let active = content
        .split_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')));
    match active {
        Some("none") => Lockdown::None,
        Some("integrity") => Lockdown::Integrity,
        Some("confidentiality") => Lockdown::Confidentiality,
        Some(other) => Lockdown::Unknown(format!("unrecognised mode {other:?}")),
        None => Lockdown::Unknown(format!("no bracketed mode in {content:?}")),
    }
}

fn read_lockdown(probe_write_user: bool) -> (Lockdown, String) {
    match std::fs::read_to_string(LOCKDOWN_PATH) {
        Ok(content) => (parse_lockdown(&content), LOCKDOWN_PATH.to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let inferred = if probe_write_user {
                "bpf_probe_write_user accepted: lockdown is none or not built in"
            } else {
                "bpf_probe_write_user refused: lockdown integrity or stronger (or no kprobe support)"
            };
            (Lockdown::Unknown("securityfs not mounted".to_owned()), format!("probe: {inferred}"))
        }
        Err(e) => (Lockdown::Unknown(format!("failed to read {LOCKDOWN_PATH}: {e}")), LOCKDOWN_PATH.to_owned()),
    }
}

// --- TCX probe: raw bpf(2), because aya needs an ELF object to build a
// SchedClassifier and the probe must work before ours is loaded. ---

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;

#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

#[repr(C)]
struct LinkCreateTcxAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    relative_fd: u32,
    _pad: u32,
    expected_revision: u64,
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &T) -> std::io::Result<OwnedFd> {
    // SAFETY: attr is a properly sized, initialised bpf_attr prefix that
    // outlives the call; the kernel zero-extends the rest.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const T, size_of::<T>() as u32) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a non-negative return of these commands is a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as i32) })
}

/// Load `r0 = -1 (TC_ACT_UNSPEC); exit` as a classifier.
fn load_trivial_classifier() -> std::io::Result<OwnedFd> {
    // bpf_insn: code, dst|src<<4, off, imm.
    let insns: [[u8; 8]; 2] = [
        [0xb7, 0x00, 0, 0, 0xff, 0xff, 0xff, 0xff], // BPF_ALU64|BPF_MOV|BPF_K r0 = -1
        [0x95, 0x00, 0, 0, 0, 0, 0, 0],             // BPF_JMP|BPF_EXIT
    ];
    let license = c"GPL";
    let mut name = [0u8; 16];
    name[..11].copy_from_slice(b"tclab_probe");
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SCHED_CLS,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
    };
    sys_bpf(BPF_PROG_LOAD, &attr)
}

/// Create (and at once drop) a TCX ingress link on `lo` in a throwaway
/// namespace: the only answer that cannot be fooled by backports.
fn probe_tcx() -> std::io::Result<bool> {
    let prog = load_trivial_classifier()?;
    std::thread::scope(|s| {
        s.spawn(|| -> std::io::Result<bool> {
            // Namespaces are per thread: this one dies with the thread.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
            use std::os::fd::AsRawFd;
            let attr = LinkCreateTcxAttr {
                prog_fd: prog.as_raw_fd() as u32,
                target_ifindex: 1, // lo is always ifindex 1 in a new namespace
                attach_type: BPF_TCX_INGRESS,
                flags: 0,
                relative_fd: 0,
                _pad: 0,
                expected_revision: 0,
            };
            match sys_bpf(BPF_LINK_CREATE, &attr) {
                Ok(_link) => Ok(true),
                // Unknown attach type on kernels without TCX.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) => Ok(false),
                Err(e) => Err(e),
            }
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockdown_bracketed_word() {
        assert_eq!(parse_lockdown("none [integrity] confidentiality\n"), Lockdown::Integrity);
        assert_eq!(parse_lockdown("[none] integrity confidentiality\n"), Lockdown::None);
        assert_eq!(parse_lockdown("none integrity [confidentiality]"), Lockdown::Confidentiality);
        assert!(matches!(parse_lockdown("none integrity"), Lockdown::Unknown(_)));
    }

    #[test]
    fn override_values() {
        let mut notes = Vec::new();
        assert_eq!(parse_override(Some("1"), &mut notes), Some(true));
        assert_eq!(parse_override(Some("0"), &mut notes), Some(false));
        assert_eq!(parse_override(None, &mut notes), None);
        assert!(notes.is_empty());
        assert_eq!(parse_override(Some("yes"), &mut notes), None);
        assert_eq!(notes.len(), 1);
    }
}
