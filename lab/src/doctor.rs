//! `tclab doctor`: what this machine lacks for each part of the lab, with the
//! exact command that installs it.

use std::path::Path;

use serde::Serialize;

/// One requirement and whether this machine meets it.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub what: &'static str,
    /// Which part of the lab needs it.
    pub needed_for: &'static str,
    pub ok: bool,
    pub detail: String,
    /// The command that fixes it, when it is missing.
    pub fix: Option<String>,
}

fn on_path(program: &str) -> Option<std::path::PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths).map(|d| d.join(program)).find(|p| p.is_file())
}

fn program_check(
    what: &'static str,
    needed_for: &'static str,
    program: &str,
    fix: &str,
) -> Check {
    let found = on_path(program);
    Check {
        what,
        needed_for,
        ok: found.is_some(),
        detail: found.map_or_else(|| format!("`{program}` not on PATH"), |p| p.display().to_string()),
        fix: Some(fix.to_string()),
    }
}

fn file_check(what: &'static str, needed_for: &'static str, path: &str, fix: &str) -> Check {
    let ok = Path::new(path).exists();
    Check {
        what,
        needed_for,
        ok,
        detail: if ok { path.to_string() } else { format!("{path} missing") },
        fix: Some(fix.to_string()),
    }
}

/// Every requirement of the lab, checked on this machine.
pub fn checks() -> Vec<Check> {
    let root = nix::unistd::geteuid().is_root();
    vec![
        Check {
            what: "root (CAP_BPF, CAP_NET_ADMIN)",
            needed_for: "loading programs, namespaces: everything but unit tests",
            ok: root,
            detail: if root { "euid 0".into() } else { "not root".into() },
            fix: Some("sudo -E cargo test   /   sudo -E cargo run --bin tclab -- run".into()),
        },
        file_check(
            "kernel BTF",
            "CO-RE relocations of the datapath",
            "/sys/kernel/btf/vmlinux",
            "boot a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        ),
        program_check(
            "clang 14",
            "rebuilding ebpf/*.c (committed objects are used without it)",
            "clang-14",
            "apt-get install -y clang-14 llvm-14 libbpf-dev",
        ),
        program_check(
            "qemu-system-x86_64",
            "the kernel matrix (tclab run --kernel …)",
            "qemu-system-x86_64",
            "bash .ci/run   (adds bookworm-backports, then apt-get install -t bookworm-backports qemu-system-x86)",
        ),
        program_check(
            "apt-get",
            "tclab kernels fetch",
            "apt-get",
            "a Debian-based machine (or give kernels as local files: kernels/README.md)",
        ),
    ]
}

/// Render the checks as a table.
pub fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let mark = if c.ok { "ok     " } else { "MISSING" };
        out.push_str(&format!("{mark} {:<28} {}\n", c.what, c.detail));
        out.push_str(&format!("        needed for: {}\n", c.needed_for));
        if let (false, Some(fix)) = (c.ok, &c.fix) {
            out.push_str(&format!("        fix: {fix}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_is_reported_with_its_fix() {
        let c = program_check("x", "y", "tclab-surely-not-a-program", "apt-get install z");
        assert!(!c.ok);
        let text = render(&[c]);
        assert!(text.contains("MISSING"), "{text}");
        assert!(text.contains("fix: apt-get install z"), "{text}");
    }

    #[test]
    fn a_present_program_is_ok_and_shows_its_path() {
        let c = program_check("sh", "y", "sh", "never shown");
        assert!(c.ok, "{c:?}");
        assert!(!render(&[c]).contains("never shown"));
    }
}
