//! Which BPF objects are built from which sources, and how.
//!
//! Shared by `datapath/build.rs` (which builds them into OUT_DIR) and the
//! test `prebuilt_objects_are_fresh` (which checks that the committed
//! `ebpf/prebuilt/*.o` are what the sources give). Plain std only: it is
//! compiled into the build script too.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One object file built from one C source with some defines.
pub struct Object {
    /// File name in `ebpf/prebuilt/` and OUT_DIR.
    pub name: &'static str,
    /// C source, relative to `ebpf/`.
    pub source: &'static str,
    /// `-D` defines selecting the variant.
    pub defines: &'static [&'static str],
}

/// Every object the crate embeds.
pub const OBJECTS: &[Object] = &[
    Object { name: "datapath_lru.o", source: "datapath.c", defines: &[] },
    Object { name: "datapath_hash.o", source: "datapath.c", defines: &["TCLAB_CT_HASH"] },
    Object { name: "datapath_perf.o", source: "datapath.c", defines: &["TCLAB_EVENTS_PERF"] },
    Object { name: "testprogs.o", source: "testprogs.c", defines: &[] },
    Object { name: "ciliumlike.o", source: "ciliumlike.c", defines: &[] },
    Object { name: "propagation.o", source: "propagation.c", defines: &[] },
    // the same programs returning at once: the benchmark's floor
    Object { name: "propagation_hooks.o", source: "propagation.c", defines: &["TCLAB_PROP_HOOKS_ONLY"] },
];

/// Environment variable naming the clang to use (default `clang-14`).
pub const CLANG_ENV: &str = "CLANG";

/// The clang to build with: `$CLANG`, else `clang-14` if it is on PATH.
pub fn find_clang() -> Option<PathBuf> {
    if let Some(c) = std::env::var_os(CLANG_ENV).filter(|c| !c.is_empty()) {
        return Some(PathBuf::from(c));
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths).map(|d| d.join("clang-14")).find(|p| p.is_file())
}

/// The compiler arguments for `obj`, run with `ebpf/` as working directory.
///
/// Reproducibility: sources are named relative to `ebpf/`, the debug
/// compilation directory is `.` and any absolute prefix is mapped away, and
/// `-fno-ident` drops the compiler's version string, so the same sources
/// give the same bytes wherever the checkout lives. BTF (needed by the
/// loader) is kept: the object is never stripped.
pub fn clang_args(ebpf_dir: &Path, obj: &Object, out: &Path) -> Vec<String> {
    let mut args: Vec<String> = [
        "-O2",
        "-g",
        "-target",
        "bpf",
        "-I/usr/include/x86_64-linux-gnu",
        "-Iinclude",
        "-Wall",
        "-Werror",
        "-fno-ident",
        "-fdebug-compilation-dir=.",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("-fdebug-prefix-map={}=.", ebpf_dir.display()));
    args.extend(obj.defines.iter().map(|d| format!("-D{d}")));
    args.extend(["-c".into(), obj.source.into(), "-o".into(), out.display().to_string()]);
    args
}

/// Build `obj` into `out`. The error carries the command and its stderr.
pub fn compile(clang: &Path, ebpf_dir: &Path, obj: &Object, out: &Path) -> Result<(), String> {
    let args = clang_args(ebpf_dir, obj, out);
    let output = Command::new(clang)
        .current_dir(ebpf_dir)
        .args(&args)
        .output()
        .map_err(|e| format!("failed to run {} {}: {e}", clang.display(), args.join(" ")))?;
    if !output.status.success() {
        return Err(format!(
            "failed to build {} ({} {}): {}\n{}",
            obj.name,
            clang.display(),
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}

/// Every file the objects depend on: `ebpf/*.c` and `ebpf/include/*.h`.
pub fn sources(ebpf_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for (dir, ext) in [(ebpf_dir.to_path_buf(), "c"), (ebpf_dir.join("include"), "h")] {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == ext) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The files `source` (relative to `ebpf/`) is built from: itself and every
/// `#include "…"` it reaches in `ebpf/include/`, transitively.
#[allow(dead_code, reason = "used by build.rs, not by every file that includes this one")]
pub fn dependencies(ebpf_dir: &Path, source: &str) -> Vec<PathBuf> {
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut todo = vec![ebpf_dir.join(source)];
    while let Some(file) = todo.pop() {
        if seen.contains(&file) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for line in text.lines() {
            let quoted = line.trim_start().strip_prefix("#include").map(str::trim).and_then(|rest| {
                rest.strip_prefix('"').and_then(|r| r.split('"').next())
            });
            if let Some(name) = quoted {
                todo.push(ebpf_dir.join("include").join(name));
            }
        }
        seen.push(file);
    }
    seen.sort();
    seen
}
