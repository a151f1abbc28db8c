//! The committed objects in `fixtures/byo/` are what their C sources build
//! to (the same reproducible clang-14 invocation as `ebpf/prebuilt/`, from
//! `ebpf/objects.rs`). A fresh machine without clang uses the committed
//! objects; CI has clang, so under TCLAB_REQUIRE_ALL=1 this cannot skip.
//! Refresh: `TCLAB_UPDATE_PREBUILT=1 cargo test -p tclab-lab --test byo_objects`.

#[path = "../../ebpf/objects.rs"]
#[allow(dead_code, reason = "shared with datapath/build.rs: this test uses the compile half")]
mod objects;

use std::path::{Path, PathBuf};

use objects::Object;

/// The example objects of `fixtures/byo/`, each from its own C file.
const BYO_OBJECTS: &[Object] = &[
    Object { name: "port_filter.o", source: "port_filter.c", defines: &[] },
    Object { name: "loop_count.o", source: "loop_count.c", defines: &[] },
    Object { name: "bad_access.o", source: "bad_access.c", defines: &[] },
];

fn byo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/byo").canonicalize().expect("fixtures/byo exists")
}

#[test]
fn byo_fixture_objects_are_fresh() {
    if std::env::var_os(objects::CLANG_ENV).is_none()
        && !tclab_net::require::program("byo_fixture_objects_are_fresh", "clang-14", "apt-get install clang-14 libbpf-dev (or set CLANG)")
    {
        return;
    }
    let clang = objects::find_clang().expect("clang found on PATH or in $CLANG");
    let dir = byo_dir();
    let update = std::env::var("TCLAB_UPDATE_PREBUILT").is_ok_and(|v| v == "1");
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut stale = Vec::new();
    for obj in BYO_OBJECTS {
        let out = tmp.path().join(obj.name);
        objects::compile(&clang, &dir, obj, &out).unwrap_or_else(|e| panic!("{e}"));
        let fresh = std::fs::read(&out).expect("read the fresh object");
        let committed = dir.join(obj.name);
        if std::fs::read(&committed).ok().as_deref() != Some(fresh.as_slice()) {
            if update {
                std::fs::write(&committed, &fresh).unwrap_or_else(|e| panic!("write {}: {e}", committed.display()));
                eprintln!("updated fixtures/byo/{}: commit it with its source", obj.name);
            } else {
                stale.push(obj.name);
            }
        }
    }
    assert!(
        stale.is_empty(),
        "fixtures/byo/{{{}}} differ from a fresh build of their sources: run `TCLAB_UPDATE_PREBUILT=1 cargo test -p tclab-lab --test byo_objects` and commit the objects",
        stale.join(",")
    );
}
