//! Kernel manifests, the private-apt fetch, extraction and the cache.
//!
//! `fetch` turns manifests (`kernels/*.toml`) into verified cache folders
//! holding an ELF vmlinux, the bzImage, config, System.map and the modules
//! the lab loads, dependencies resolved from `.modinfo`. `list` reports
//! what is cached.

pub mod apt;
pub mod bzimage;
pub mod cache;
pub mod deb;
mod error;
pub mod manifest;
pub mod modinfo;
pub mod modules;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use cache::{Cache, CacheState, CachedKernel, KernelInfo};
pub use error::KernelError;
pub use manifest::{Catalog, DebianPackage, LAB_MODULES, Manifest, Source, default_manifest_dir};
use modules::{DirModules, Module, ModuleSource};

/// Hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, KernelError> {
    let mut file = std::fs::File::open(path).map_err(KernelError::io("open", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(KernelError::io("read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Check `file` against the manifest's pin (when it has one); returns the hash.
fn verify(file: &Path, m: &Manifest) -> Result<String, KernelError> {
    let actual = sha256_file(file)?;
    match &m.sha256 {
        Some(expected) if *expected != actual => Err(KernelError::Checksum {
            file: file.to_owned(),
            manifest: m.path.clone(),
            expected: expected.clone(),
            actual,
        }),
        _ => Ok(actual),
    }
}

/// Fetch (download or read), verify and extract the named kernels (all when
/// `names` is empty or `all`). Verified cached kernels are kept as they are.
pub fn fetch(catalog: &Catalog, names: &[String], cache: &Cache) -> Result<Vec<CachedKernel>, KernelError> {
    let selected = catalog.select(names)?;
    std::fs::create_dir_all(&cache.root).map_err(KernelError::io("create folder", &cache.root))?;
    let _lock = cache.lock()?;
    cache.remove_stale_temps();
    let todo: Vec<&Manifest> =
        selected.iter().copied().filter(|m| !matches!(cache.state(m), CacheState::Verified(_))).collect();
    let apt = private_apt(&todo, cache)?;
    for m in &todo {
        let started = std::time::Instant::now();
        fetch_one(m, apt.as_ref(), cache)?;
        tracing::info!(kernel = %m.name, elapsed = ?started.elapsed(), "fetched and extracted");
    }
    selected.iter().map(|m| cache.kernel(m)).collect()
}

/// One `apt-get update` for every Debian manifest to fetch, or `None`.
fn private_apt(todo: &[&Manifest], cache: &Cache) -> Result<Option<apt::PrivateApt>, KernelError> {
    let debian: Vec<&&Manifest> = todo.iter().filter(|m| matches!(m.source, Source::Debian(_))).collect();
    if debian.is_empty() {
        return Ok(None);
    }
    let suites: BTreeSet<String> = debian
        .iter()
        .filter_map(|m| match &m.source {
            Source::Debian(d) => Some(d.suite.clone()),
            _ => None,
        })
        .collect();
    let names = debian.iter().map(|m| m.path.display().to_string()).collect::<Vec<_>>().join(", ");
    let mirrors = apt::system_mirrors(Path::new("/etc/apt"))?;
    let apt = apt::PrivateApt::new(&cache.apt_dir(), &mirrors, &suites, names)?;
    apt.update()?;
    Ok(Some(apt))
}

/// Build the kernel's folder under a temporary name, then rename it into place.
fn fetch_one(m: &Manifest, apt: Option<&apt::PrivateApt>, cache: &Cache) -> Result<(), KernelError> {
    let stage = tempfile::Builder::new()
        .prefix(&format!(".tmp-{}-", std::process::id()))
        .tempdir_in(&cache.root)
        .map_err(KernelError::io("create a temporary folder in", &cache.root))?;
    let out = stage.path().join("kernel");
    let modules_dir = out.join(cache::MODULES_DIR);
    std::fs::create_dir_all(&modules_dir).map_err(KernelError::io("create folder", &modules_dir))?;
    let (info, deb) = match &m.source {
        Source::Debian(d) => {
            let apt = apt.ok_or_else(|| KernelError::Manifest { path: m.path.clone(), reason: "internal: no apt".into() })?;
            let download = stage.path().join("download");
            std::fs::create_dir_all(&download).map_err(KernelError::io("create folder", &download))?;
            let deb = apt.download(&d.package, &d.version, &download)?;
            (extract_deb(m, &deb, &out)?, Some(deb))
        }
        Source::LocalDeb { deb, .. } => (extract_deb(m, deb, &out)?, None),
        Source::LocalImage { image, modules, .. } => (extract_image(m, image, modules.as_deref(), &out)?, None),
    };
    if let Some(deb) = deb {
        let kept = out.join(cache::SOURCE_DEB);
        std::fs::rename(&deb, &kept).map_err(KernelError::io("move the package to", &kept))?;
    }
    write(&out.join(cache::INFO), serde_json::to_string_pretty(&info).unwrap_or_default().as_bytes())?;
    write(&out.join(cache::VERIFIED), format!("{}\n", info.sha256).as_bytes())?;
    let target = cache.dir_for(m);
    if target.exists() {
        std::fs::remove_dir_all(&target).map_err(KernelError::io("remove the stale cache folder", &target))?;
    }
    std::fs::rename(&out, &target).map_err(KernelError::io("move the extracted kernel to", &target))?;
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), KernelError> {
    std::fs::write(path, bytes).map_err(KernelError::io("write", path))
}

/// Verify and unpack a `.deb` into `out`.
fn extract_deb(m: &Manifest, deb: &Path, out: &Path) -> Result<KernelInfo, KernelError> {
    let sha256 = verify(deb, m)?;
    let mut k = deb::open(deb, &m.modules)?;
    let vmlinux = bzimage::extract_vmlinux(&k.vmlinuz)
        .map_err(|reason| KernelError::Archive { path: deb.join(format!("boot/vmlinuz-{}", k.release)), reason })?;
    write(&out.join(cache::VMLINUX), &vmlinux)?;
    write(&out.join(cache::BZIMAGE), &k.vmlinuz)?;
    if let Some(config) = &k.config {
        write(&out.join("config"), config)?;
    }
    if let Some(map) = &k.system_map {
        write(&out.join("System.map"), map)?;
    }
    let modules = write_modules(m, &mut k.modules, out)?;
    Ok(KernelInfo {
        name: m.name.clone(),
        version: m.version().to_owned(),
        release: k.release,
        source: m.source.to_string(),
        sha256,
        modules,
    })
}

/// Verify and copy a bzImage/vmlinux and its modules folder into `out`.
fn extract_image(m: &Manifest, image: &Path, modules: Option<&Path>, out: &Path) -> Result<KernelInfo, KernelError> {
    let sha256 = verify(image, m)?;
    let bytes = std::fs::read(image).map_err(KernelError::io("read", image))?;
    let vmlinux = bzimage::extract_vmlinux(&bytes)
        .map_err(|reason| KernelError::Archive { path: image.to_owned(), reason })?;
    write(&out.join(cache::VMLINUX), &vmlinux)?;
    if !bzimage::is_elf(&bytes) {
        write(&out.join(cache::BZIMAGE), &bytes)?;
    }
    let mut source = match modules {
        Some(dir) => DirModules::scan(dir)?,
        None => DirModules::scan_nothing(image),
    };
    let modules = write_modules(m, &mut source, out)?;
    Ok(KernelInfo {
        name: m.name.clone(),
        version: m.version().to_owned(),
        release: String::new(),
        source: m.source.to_string(),
        sha256,
        modules,
    })
}

/// Resolve the manifest's modules and write them as `modules/<name>.ko`.
fn write_modules(m: &Manifest, src: &mut dyn ModuleSource, out: &Path) -> Result<Vec<String>, KernelError> {
    let resolved: Vec<Module> = modules::resolve(&m.name, &m.modules, src)?;
    for module in &resolved {
        write(&out.join(cache::MODULES_DIR).join(format!("{}.ko", module.name)), &module.bytes)?;
    }
    Ok(resolved.into_iter().map(|m| m.name).collect())
}

/// One row of `tclab kernels list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListRow {
    /// Manifest name.
    pub name: String,
    /// Pinned version.
    pub version: String,
    /// Source, human text.
    pub source: String,
    /// `verified`, or why not.
    pub state: String,
    /// The cache folder.
    pub path: PathBuf,
}

/// Every manifest with its cache state.
pub fn list(catalog: &Catalog, cache: &Cache) -> Vec<ListRow> {
    catalog
        .manifests
        .values()
        .map(|m| ListRow {
            name: m.name.clone(),
            version: m.version().to_owned(),
            source: m.source.to_string(),
            state: match cache.state(m) {
                CacheState::Verified(_) => "verified".into(),
                CacheState::Missing(why) => format!("not cached ({why})"),
            },
            path: cache.dir_for(m),
        })
        .collect()
}

/// `list` as an aligned text table.
pub fn list_table(rows: &[ListRow]) -> String {
    let mut cells = vec![["NAME".to_owned(), "VERSION".into(), "SOURCE".into(), "STATE".into(), "PATH".into()]];
    for r in rows {
        cells.push([r.name.clone(), r.version.clone(), r.source.clone(), r.state.clone(), r.path.display().to_string()]);
    }
    let widths: Vec<usize> = (0..5).map(|i| cells.iter().map(|c| c[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in cells {
        let line: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
