//! Builds the BPF objects the crate embeds.
//!
//! With clang (`$CLANG`, else `clang-14` on PATH) every object in
//! `ebpf/objects.rs` is compiled into OUT_DIR and embedded from there; a
//! difference with the committed `ebpf/prebuilt/` copy is reported as a
//! warning (CI fails on it through the test `prebuilt_objects_are_fresh`),
//! and `TCLAB_UPDATE_PREBUILT=1` refreshes the committed copy. Without clang,
//! or if clang fails (a half-edited source must not break every other
//! crate's build), the committed objects are embedded, with a warning if a
//! source is newer than its object.

#[path = "../ebpf/objects.rs"]
mod objects;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

const UPDATE_ENV: &str = "TCLAB_UPDATE_PREBUILT";

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let ebpf = manifest.join("..").join("ebpf");
    let ebpf = ebpf.canonicalize().unwrap_or(ebpf);
    let prebuilt = ebpf.join("prebuilt");

    println!("cargo:rerun-if-changed={}", ebpf.display());
    println!("cargo:rerun-if-changed={}", ebpf.join("include").display());
    println!("cargo:rerun-if-changed={}", ebpf.join("objects.rs").display());
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed={}", objects::CLANG_ENV);
    println!("cargo:rerun-if-env-changed={UPDATE_ENV}");
    println!("cargo:rerun-if-env-changed=PATH");
    let sources = objects::sources(&ebpf).unwrap_or_default();
    for s in &sources {
        println!("cargo:rerun-if-changed={}", s.display());
    }
    for obj in objects::OBJECTS {
        println!("cargo:rerun-if-changed={}", prebuilt.join(obj.name).display());
    }

    let clang = objects::find_clang();
    let update = std::env::var(UPDATE_ENV).is_ok_and(|v| v == "1");
    for obj in objects::OBJECTS {
        let committed = prebuilt.join(obj.name);
        let out = out_dir.join(obj.name);
        let built = match &clang {
            Some(clang) => match objects::compile(clang, &ebpf, obj, &out) {
                Ok(()) => true,
                Err(e) => {
                    println!("cargo:warning=using the committed {}: {}", obj.name, first_line(&e));
                    false
                }
            },
            None => false,
        };
        if built {
            report_difference(&out, &committed, obj.name, update);
        } else {
            warn_if_stale(&committed, &objects::dependencies(&ebpf, obj.source), obj.name);
            if let Err(e) = std::fs::copy(&committed, &out) {
                panic!("failed to copy {} to {}: {e}", committed.display(), out.display());
            }
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines().filter(|l| l.contains("error")).take(3).collect::<Vec<_>>().join(" | ")
}

fn report_difference(fresh: &Path, committed: &Path, name: &str, update: bool) {
    let same = matches!((std::fs::read(fresh), std::fs::read(committed)), (Ok(a), Ok(b)) if a == b);
    if same {
        return;
    }
    if update {
        if let Err(e) = std::fs::copy(fresh, committed) {
            panic!("failed to update {}: {e}", committed.display());
        }
        println!("cargo:warning=updated ebpf/prebuilt/{name}: commit it with its sources");
    } else {
        println!(
            "cargo:warning=ebpf/prebuilt/{name} is missing or differs from a fresh build; refresh it with {UPDATE_ENV}=1 cargo build -p tclab-datapath"
        );
    }
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn warn_if_stale(object: &Path, sources: &[PathBuf], name: &str) {
    let Some(obj_time) = mtime(object) else {
        panic!("{} is missing and no clang is available to build it (install clang-14 or set CLANG)", object.display());
    };
    if let Some(newer) = sources.iter().find(|s| mtime(s).is_some_and(|t| t > obj_time)) {
        println!(
            "cargo:warning=ebpf/prebuilt/{name} is older than {}; install clang-14 (or set CLANG) to rebuild it",
            newer.display()
        );
    }
}
