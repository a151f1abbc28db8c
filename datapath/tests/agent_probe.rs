//! The kernel probe against independent evidence about this kernel
//! (/proc/kallsyms symbols, the BTF file, the lockdown file read through a
//! private securityfs mount), JSON round-trip, the `bpf_loop` override, and
//! the CLI's `probe` output.
//!
//! One test function: the override is an environment variable, and other
//! probes in the same process must not see it half-set.

use std::collections::HashSet;
use std::process::Command;

use tclab_datapath::probe::{BPF_LOOP_OVERRIDE_ENV, BTF_PATH, KernelFeatures, Lockdown, parse_lockdown};

/// Kernel symbol names (root sees them; the names are what matters).
fn kallsyms() -> HashSet<String> {
    std::fs::read_to_string("/proc/kallsyms")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_owned))
        .collect()
}

/// The lockdown mode from the file, or from a private securityfs mount in a
/// child mount namespace when the file is not there.
fn lockdown_evidence() -> Option<Lockdown> {
    if let Ok(s) = std::fs::read_to_string("/sys/kernel/security/lockdown") {
        return Some(parse_lockdown(&s));
    }
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", "mount -t securityfs none /sys/kernel/security && cat /sys/kernel/security/lockdown"])
        .output()
        .ok()?;
    out.status.success().then(|| parse_lockdown(&String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn probe_matches_independent_evidence() {
    if !tclab_net::require::root("probe_matches_independent_evidence") {
        return;
    }
    // SAFETY: the only test in this binary; nothing else reads the env meanwhile.
    unsafe { std::env::remove_var(BPF_LOOP_OVERRIDE_ENV) };
    let f = KernelFeatures::probe();
    assert!(f.notes.is_empty(), "unexpected probe failures: {:?}", f.notes);
    let syms = kallsyms();
    assert!(!syms.is_empty(), "/proc/kallsyms unreadable");

    assert_eq!(f.btf, std::path::Path::new(BTF_PATH).exists());
    assert_eq!(f.tcx, syms.contains("tcx_prog_attach"), "TCX vs kernel symbol tcx_prog_attach");
    assert_eq!(f.ringbuf, syms.contains("bpf_ringbuf_reserve"), "ringbuf vs bpf_ringbuf_reserve");
    assert_eq!(f.bpf_loop, syms.contains("bpf_loop"), "bpf_loop vs kernel function bpf_loop");
    assert_eq!(f.bpf_loop_probed, f.bpf_loop);
    assert_eq!(f.bpf_loop_override, None);
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(f.kernel_version, release.trim());

    match lockdown_evidence() {
        Some(Lockdown::Integrity | Lockdown::Confidentiality) => {
            assert!(!f.probe_write_user, "bpf_probe_write_user must be refused under lockdown");
        }
        Some(Lockdown::None) if syms.contains("bpf_probe_write_user") => {
            assert!(f.probe_write_user, "no lockdown: bpf_probe_write_user should load");
        }
        other => eprintln!("lockdown evidence {other:?}: probe_write_user={} not cross-checked", f.probe_write_user),
    }
    if std::path::Path::new("/sys/kernel/security/lockdown").exists() {
        assert_eq!(Some(f.lockdown.clone()), lockdown_evidence());
    } else {
        assert_eq!(f.lockdown, Lockdown::Unknown("securityfs not mounted".into()));
        assert!(f.lockdown_source.contains("bpf_probe_write_user"), "{}", f.lockdown_source);
    }

    let json = serde_json::to_string(&f).unwrap();
    let back: KernelFeatures = serde_json::from_str(&json).unwrap();
    assert_eq!(back, f);

    // The override wins over the probe and says so.
    let forced = !f.bpf_loop_probed;
    // SAFETY: as above.
    unsafe { std::env::set_var(BPF_LOOP_OVERRIDE_ENV, if forced { "1" } else { "0" }) };
    let o = KernelFeatures::probe();
    unsafe { std::env::remove_var(BPF_LOOP_OVERRIDE_ENV) };
    assert_eq!((o.bpf_loop, o.bpf_loop_probed, o.bpf_loop_override), (forced, f.bpf_loop_probed, Some(forced)));
    assert!(o.to_table().contains("overridden"), "{}", o.to_table());

    // The CLI prints the same facts.
    let out = Command::new(env!("CARGO_BIN_EXE_tclab-agent")).args(["probe", "--output", "json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cli: KernelFeatures = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((cli.tcx, cli.ringbuf, cli.btf, cli.bpf_loop), (f.tcx, f.ringbuf, f.btf, f.bpf_loop));
    let table = Command::new(env!("CARGO_BIN_EXE_tclab-agent")).arg("probe").output().unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.lines().any(|l| l.starts_with("tcx") && l.contains(if f.tcx { "yes" } else { "no" })), "{table}");
}
