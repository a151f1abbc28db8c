//! Fetching and extracting the pinned kernels, and every way it can fail
//! leaving nothing behind. Needs network access to a Debian mirror (through
//! the machine's apt sources) for the Debian tests; the local-source tests
//! reuse the package a previous fetch cached.

use std::path::{Path, PathBuf};

use tclab_lab::kernels::{self, Cache, CacheState, Catalog, KernelError, Manifest};

fn catalog() -> Catalog {
    Catalog::load(&kernels::default_manifest_dir()).expect("the repository's kernel manifests load")
}

fn default_cache() -> Cache {
    Cache::default_location().expect("a cache location")
}

/// The pinned kernels in the user's cache, fetching them when missing.
fn fetched(name: &str) -> Option<kernels::CachedKernel> {
    let cat = catalog();
    let cache = default_cache();
    let m = cat.get(name).expect("manifest exists");
    if let CacheState::Verified(k) = cache.state(m) {
        return Some(k);
    }
    if !tclab_net::require::program("kernels_fetch", "apt-get", "run on Debian/Ubuntu") {
        return None;
    }
    Some(kernels::fetch(&cat, &[name.to_owned()], &cache).unwrap_or_else(|e| panic!("fetch {name}: {e}")).remove(0))
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default()
}

fn write_manifest(dir: &Path, text: &str) -> Catalog {
    std::fs::write(dir.join("k.toml"), text).expect("write manifest");
    Catalog::load(dir).expect("manifest parses")
}

#[test]
fn kernels_fetch_pinned_extracts_vmlinux_and_modules_in_dependency_order() {
    for name in ["5.10", "6.1", "6.12"] {
        let Some(k) = fetched(name) else { return };
        let vmlinux = std::fs::read(k.vmlinux()).expect("vmlinux readable");
        assert!(vmlinux.starts_with(b"\x7fELF"), "{name}: vmlinux is not ELF");
        assert!(k.bzimage().is_file(), "{name}: bzImage kept");
        assert!(k.dir.join("config").is_file() && k.dir.join("System.map").is_file(), "{name}: config/System.map");
        for m in ["veth", "sch_ingress", "cls_bpf", "act_bpf"] {
            assert!(k.info.modules.iter().any(|x| x == m), "{name}: module {m} missing from {:?}", k.info.modules);
        }
        for path in k.module_paths() {
            let ko = std::fs::read(&path).expect("module readable");
            let info = kernels::modinfo::parse_modinfo(&ko).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let pos = |n: &str| k.info.modules.iter().position(|x| x == n);
            let me = pos(path.file_stem().and_then(|s| s.to_str()).unwrap_or_default());
            for dep in &info.depends {
                assert!(pos(dep) < me, "{name}: dependency {dep} must load before {}", path.display());
            }
            // The signature survives decompression: modules end with the marker.
            assert!(ko.ends_with(b"~Module signature appended~\n"), "{}: unsigned", path.display());
        }
        let stamp = std::fs::read_to_string(k.dir.join("verified")).expect("stamp");
        assert_eq!(Some(stamp.trim()), catalog().get(name).expect("manifest").sha256.as_deref());
    }
}

fn local_deb_manifest(tmp: &Path, deb: &Path, sha256: &str) -> String {
    format!(
        "name = \"local-6.1\"\n[source]\nlocal = {{ deb = \"{}\", version = \"6.1-local\" }}\nsha256 = \"{sha256}\"\n",
        deb.strip_prefix(tmp).unwrap_or(deb).display()
    )
}

#[test]
fn kernels_local_deb_loads_like_a_download() {
    let Some(k) = fetched("6.1") else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let deb = tmp.path().join("my-kernel.deb");
    std::fs::copy(k.source_deb().expect("source.deb kept"), &deb).expect("copy deb");
    let cat = write_manifest(tmp.path(), &local_deb_manifest(tmp.path(), &deb, &k.info.sha256));
    let cache = Cache::new(tmp.path().join("cache"));
    let local = kernels::fetch(&cat, &[], &cache).expect("local deb fetch").remove(0);
    assert_eq!(local.info.modules, k.info.modules);
    assert_eq!(local.info.release, k.info.release);
    assert_eq!(std::fs::read(local.vmlinux()).ok(), std::fs::read(k.vmlinux()).ok(), "same vmlinux");
    assert!(local.source_deb().is_none(), "a local .deb is not copied into the cache");
}

#[test]
fn kernels_local_bzimage_and_modules_folder() {
    let Some(k) = fetched("6.12") else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let mods = tmp.path().join("lib/modules/6.12-local/kernel");
    std::fs::create_dir_all(&mods).expect("mkdir");
    for path in k.module_paths() {
        std::fs::copy(&path, mods.join(path.file_name().expect("name"))).expect("copy module");
    }
    std::fs::copy(k.bzimage(), tmp.path().join("bzImage")).expect("copy bzImage");
    let text = "name = \"6.12-local\"\n[source]\nlocal = { image = \"bzImage\", modules = \"lib/modules\", version = \"6.12-local\" }\n";
    let cat = write_manifest(tmp.path(), text);
    let cache = Cache::new(tmp.path().join("cache"));
    let local = kernels::fetch(&cat, &[], &cache).expect("local image fetch").remove(0);
    assert_eq!(local.info.modules, k.info.modules);
    assert_eq!(std::fs::read(local.vmlinux()).ok(), std::fs::read(k.vmlinux()).ok(), "same vmlinux");
    let missing = "name = \"no-mods\"\n[source]\nlocal = { image = \"bzImage\", version = \"1\" }\n";
    let cat = write_manifest(tmp.path(), missing);
    let cache = Cache::new(tmp.path().join("cache2"));
    let err = kernels::fetch(&cat, &[], &cache).expect_err("no modules folder");
    assert!(matches!(err, KernelError::MissingModule { .. }), "{err}");
    assert_eq!(entries(&cache.root), Vec::<PathBuf>::new());
}

#[test]
fn kernels_wrong_checksum_leaves_nothing_in_the_cache() {
    let Some(k) = fetched("6.1") else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let deb = tmp.path().join("k.deb");
    std::fs::copy(k.source_deb().expect("source.deb kept"), &deb).expect("copy deb");
    let wrong = "0".repeat(64);
    let cat = write_manifest(tmp.path(), &local_deb_manifest(tmp.path(), &deb, &wrong));
    let cache = Cache::new(tmp.path().join("cache"));
    let err = kernels::fetch(&cat, &[], &cache).expect_err("wrong checksum must fail");
    assert!(matches!(err, KernelError::Checksum { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("k.toml") && msg.contains(&wrong) && msg.contains(&k.info.sha256), "{msg}");
    assert_eq!(entries(&cache.root), Vec::<PathBuf>::new(), "cache must be empty");
}

#[test]
fn kernels_corrupt_archive_is_an_error_naming_the_file_and_leaves_nothing() {
    let Some(k) = fetched("5.10") else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let deb = tmp.path().join("cut.deb");
    let bytes = std::fs::read(k.source_deb().expect("source.deb kept")).expect("read deb");
    std::fs::write(&deb, &bytes[..bytes.len() / 2]).expect("write truncated deb");
    let text = "name = \"cut\"\n[source]\nlocal = { deb = \"cut.deb\", version = \"1\" }\n";
    let cat = write_manifest(tmp.path(), text);
    let cache = Cache::new(tmp.path().join("cache"));
    let err = kernels::fetch(&cat, &[], &cache).expect_err("truncated deb must fail");
    assert!(matches!(err, KernelError::Archive { .. }), "{err}");
    assert!(err.to_string().contains("cut.deb"), "{err}");
    assert_eq!(entries(&cache.root), Vec::<PathBuf>::new());
}

#[test]
fn kernels_missing_package_is_an_apt_error_and_leaves_nothing() {
    if !tclab_net::require::program("kernels_missing_package", "apt-get", "run on Debian/Ubuntu") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "name = \"ghost\"\n[source]\ndebian = {{ package = \"linux-image-0.0.0-tclab-ghost\", version = \"0.0-1\", suite = \"bookworm\" }}\nsha256 = \"{}\"\n",
        "a".repeat(64)
    );
    let cat = write_manifest(tmp.path(), &text);
    let cache = Cache::new(tmp.path().join("cache").join("kernels"));
    let err = kernels::fetch(&cat, &["ghost".into()], &cache).expect_err("no such package");
    assert!(matches!(err, KernelError::Apt { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("linux-image-0.0.0-tclab-ghost=0.0-1") && msg.contains("k.toml"), "{msg}");
    assert_eq!(entries(&cache.root), Vec::<PathBuf>::new());
}

#[test]
fn kernels_unknown_name_lists_the_known_ones() {
    let err = kernels::fetch(&catalog(), &["4.19".into()], &Cache::new("/nonexistent")).expect_err("unknown");
    let msg = err.to_string();
    assert!(msg.contains("\"4.19\"") && msg.contains("5.10, 6.1, 6.12"), "{msg}");
}

#[test]
fn kernels_list_shows_cache_state() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let rows = kernels::list(&catalog(), &Cache::new(tmp.path()));
    let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["5.10", "6.1", "6.12"]);
    assert!(rows.iter().all(|r| r.state.starts_with("not cached")));
    let table = kernels::list_table(&rows);
    assert!(table.starts_with("NAME") && table.contains("bookworm-security"), "{table}");
    let _: &Manifest = catalog().get("6.12").expect("6.12");
}
