//! The committed `ebpf/prebuilt/*.o` are what the sources build to, and the
//! build is reproducible (the same bytes from any checkout path). CI has
//! clang, so under TCLAB_REQUIRE_ALL=1 these tests cannot skip.

#[path = "../../ebpf/objects.rs"]
mod objects;

use std::path::{Path, PathBuf};

fn ebpf_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("ebpf").canonicalize().expect("ebpf/ exists")
}

fn clang(test: &str) -> Option<PathBuf> {
    if std::env::var_os(objects::CLANG_ENV).is_none()
        && !tclab_net::require::program(test, "clang-14", "apt-get install clang-14 libbpf-dev (or set CLANG)")
    {
        return None;
    }
    Some(objects::find_clang().expect("clang found on PATH or in $CLANG"))
}

/// Copy ebpf/ (sources and headers only) under `root`.
fn copy_sources(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("include")).unwrap();
    for src in objects::sources(from).expect("list ebpf sources") {
        let rel = src.strip_prefix(from).unwrap();
        std::fs::copy(&src, to.join(rel)).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
    }
}

#[test]
fn prebuilt_objects_are_fresh() {
    let Some(clang) = clang("prebuilt_objects_are_fresh") else { return };
    let ebpf = ebpf_dir();
    let tmp = tempfile::tempdir().unwrap();
    let mut stale = Vec::new();
    for obj in objects::OBJECTS {
        let out = tmp.path().join(obj.name);
        objects::compile(&clang, &ebpf, obj, &out).unwrap_or_else(|e| panic!("{e}"));
        let committed = ebpf.join("prebuilt").join(obj.name);
        let fresh = std::fs::read(&out).unwrap();
        let old = std::fs::read(&committed).unwrap_or_else(|e| panic!("read {}: {e}", committed.display()));
        if fresh != old {
            stale.push(obj.name);
        }
    }
    assert!(
        stale.is_empty(),
        "ebpf/prebuilt/{{{}}} differ from a fresh build of ebpf/: run `TCLAB_UPDATE_PREBUILT=1 cargo build -p tclab-datapath` and commit the objects with their sources",
        stale.join(",")
    );
}

#[test]
fn builds_are_reproducible_across_checkout_paths() {
    let Some(clang) = clang("builds_are_reproducible_across_checkout_paths") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a/ebpf"), tmp.path().join("somewhere/else/ebpf"));
    for dir in [&a, &b] {
        copy_sources(&ebpf_dir(), dir);
    }
    for obj in objects::OBJECTS {
        let (oa, ob) = (tmp.path().join(format!("a-{}", obj.name)), tmp.path().join(format!("b-{}", obj.name)));
        objects::compile(&clang, &a, obj, &oa).unwrap_or_else(|e| panic!("{e}"));
        objects::compile(&clang, &b, obj, &ob).unwrap_or_else(|e| panic!("{e}"));
        let (ba, bb) = (std::fs::read(&oa).unwrap(), std::fs::read(&ob).unwrap());
        assert!(ba == bb, "{} differs between two checkout paths", obj.name);
        let path = tmp.path().to_string_lossy();
        assert!(!ba.windows(path.len()).any(|w| w == path.as_bytes()), "{} embeds the build path", obj.name);
    }
}
