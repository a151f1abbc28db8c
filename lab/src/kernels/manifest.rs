//! Kernel manifests (`kernels/<name>.toml`): which kernel, from where, pinned
//! by checksum. See `kernels/README.md` for the format and worked examples.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::KernelError;

/// The modules the lab loads in every guest: veth pairs, the clsact qdisc
/// (provided by sch_ingress), and BPF classifiers/actions for netlink TC.
pub const LAB_MODULES: &[&str] = &["veth", "sch_ingress", "cls_bpf", "act_bpf"];

/// A Debian package pinned to one version in one suite.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebianPackage {
    /// Binary package name, e.g. `linux-image-6.1.0-56-cloud-amd64-unsigned`.
    pub package: String,
    /// Exact package version, e.g. `6.1.192-2`.
    pub version: String,
    /// The suite that publishes that version, e.g. `bookworm-security`.
    pub suite: String,
}

/// Where a kernel comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Downloaded with a private `apt-get download`.
    Debian(DebianPackage),
    /// A `.deb` file on this machine (e.g. an Ubuntu mainline build).
    LocalDeb {
        /// Absolute path (relative paths in the manifest are resolved against its folder).
        deb: PathBuf,
        /// A label for the cache folder, e.g. `6.6.30-mainline`.
        version: String,
    },
    /// A kernel image (bzImage or ELF vmlinux) plus a folder of modules.
    LocalImage {
        /// bzImage or ELF vmlinux.
        image: PathBuf,
        /// Folder searched recursively for `*.ko[.xz|.zst|.gz]`; `None` when
        /// everything the lab needs is built in.
        modules: Option<PathBuf>,
        /// A label for the cache folder.
        version: String,
    },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Debian(d) => write!(f, "debian {}={} ({})", d.package, d.version, d.suite),
            Source::LocalDeb { deb, .. } => write!(f, "local deb {}", deb.display()),
            Source::LocalImage { image, .. } => write!(f, "local image {}", image.display()),
        }
    }
}

/// One parsed manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Short name used on the command line (`5.10`, `6.1`, `6.12`).
    pub name: String,
    /// Free text shown by `tclab kernels list`.
    pub notes: String,
    /// Where the kernel comes from.
    pub source: Source,
    /// Lowercase hex sha256 of the downloaded `.deb` (required for Debian
    /// sources) or of the local file (optional).
    pub sha256: Option<String>,
    /// Modules to extract and load, dependencies added automatically.
    pub modules: Vec<String>,
    /// The manifest file itself (for messages).
    pub path: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    #[serde(default)]
    notes: String,
    source: RawSource,
    modules: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    debian: Option<DebianPackage>,
    local: Option<RawLocal>,
    sha256: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLocal {
    deb: Option<PathBuf>,
    image: Option<PathBuf>,
    modules: Option<PathBuf>,
    version: String,
}

impl Manifest {
    /// Parse manifest text; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, KernelError> {
        let bad = |reason: String| KernelError::Manifest { path: path.to_owned(), reason };
        let raw: RawManifest = toml::from_str(text).map_err(|e| bad(e.to_string().trim_end().to_owned()))?;
        check_name(&raw.name).map_err(bad)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let source = match (raw.source.debian, raw.source.local) {
            (Some(d), None) => Source::Debian(d),
            (None, Some(l)) => local_source(l, base).map_err(bad)?,
            (Some(_), Some(_)) => return Err(bad("[source] has both `debian` and `local`; pick one".into())),
            (None, None) => return Err(bad("[source] needs `debian = {..}` or `local = {..}`".into())),
        };
        if let Some(sum) = &raw.source.sha256 {
            check_sha256(sum).map_err(bad)?;
        } else if matches!(source, Source::Debian(_)) {
            return Err(bad("a Debian source needs `sha256` (of the .deb) in [source]".into()));
        }
        let version = match &source {
            Source::Debian(d) => &d.version,
            Source::LocalDeb { version, .. } | Source::LocalImage { version, .. } => version,
        };
        check_label(version).map_err(|e| bad(format!("version: {e}")))?;
        let modules = raw.modules.unwrap_or_else(|| LAB_MODULES.iter().map(|m| m.to_string()).collect());
        Ok(Manifest {
            name: raw.name,
            notes: raw.notes,
            source,
            sha256: raw.source.sha256,
            modules,
            path: path.to_owned(),
        })
    }

    /// Read and parse one manifest file.
    pub fn load(path: &Path) -> Result<Manifest, KernelError> {
        let text = std::fs::read_to_string(path).map_err(KernelError::io("read", path))?;
        Manifest::parse(&text, path)
    }

    /// The pinned version (the package version, or the local label).
    pub fn version(&self) -> &str {
        match &self.source {
            Source::Debian(d) => &d.version,
            Source::LocalDeb { version, .. } | Source::LocalImage { version, .. } => version,
        }
    }

    /// Folder name in the cache: `<name>-<version>`.
    pub fn cache_key(&self) -> String {
        format!("{}-{}", self.name, self.version())
    }
}

fn local_source(l: RawLocal, base: &Path) -> Result<Source, String> {
    let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
    match (l.deb, l.image) {
        (Some(deb), None) if l.modules.is_none() => Ok(Source::LocalDeb { deb: abs(deb), version: l.version }),
        (Some(_), None) => Err("`local.modules` goes with `local.image`, not `local.deb`".into()),
        (None, Some(image)) => {
            Ok(Source::LocalImage { image: abs(image), modules: l.modules.map(abs), version: l.version })
        }
        (Some(_), Some(_)) => Err("`local` has both `deb` and `image`; pick one".into()),
        (None, None) => Err("`local` needs `deb = \"file.deb\"` or `image = \"bzImage\"`".into()),
    }
}

fn check_name(name: &str) -> Result<(), String> {
    check_label(name).map_err(|e| format!("name: {e}"))
}

/// Names and versions become folder names: keep them to a safe alphabet.
fn check_label(s: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || "._+~-".contains(c);
    if s.is_empty() || s.starts_with('.') || !s.chars().all(ok) {
        return Err(format!("{s:?} must be non-empty, not start with '.', and use only letters, digits and . _ + ~ -"));
    }
    Ok(())
}

fn check_sha256(s: &str) -> Result<(), String> {
    if s.len() != 64 || !s.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)) {
        return Err(format!("sha256 {s:?} is not 64 lowercase hex digits"));
    }
    Ok(())
}

/// All manifests of a folder, by name.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// The folder read.
    pub dir: PathBuf,
    /// Manifests by name (sorted).
    pub manifests: BTreeMap<String, Manifest>,
}

impl Catalog {
    /// Load every `*.toml` in `dir`; two manifests with one name is an error.
    pub fn load(dir: &Path) -> Result<Catalog, KernelError> {
        let entries = std::fs::read_dir(dir).map_err(KernelError::io("list manifests in", dir))?;
        let mut manifests = BTreeMap::new();
        for entry in entries {
            let path = entry.map_err(KernelError::io("list manifests in", dir))?.path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let m = Manifest::load(&path)?;
            if let Some(prev) = manifests.get(&m.name).map(|p: &Manifest| p.path.clone()) {
                let reason = format!("name {:?} is also declared by {}", m.name, prev.display());
                return Err(KernelError::Manifest { path, reason });
            }
            manifests.insert(m.name.clone(), m);
        }
        Ok(Catalog { dir: dir.to_owned(), manifests })
    }

    /// The manifest called `name`.
    pub fn get(&self, name: &str) -> Result<&Manifest, KernelError> {
        self.manifests.get(name).ok_or_else(|| KernelError::UnknownKernel {
            name: name.to_owned(),
            dir: self.dir.clone(),
            known: self.manifests.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    /// The manifests named, or all of them when `names` is empty (or is `all`).
    pub fn select(&self, names: &[String]) -> Result<Vec<&Manifest>, KernelError> {
        if names.is_empty() || names.iter().any(|n| n == "all") {
            return Ok(self.manifests.values().collect());
        }
        names.iter().map(|n| self.get(n)).collect()
    }
}

/// Where manifests live: `$TCLAB_KERNELS_DIR`, else the repository's
/// `kernels/` (when running from a checkout), else `./kernels`.
pub fn default_manifest_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TCLAB_KERNELS_DIR") {
        return PathBuf::from(dir);
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels");
    if repo.is_dir() {
        return repo;
    }
    PathBuf::from("kernels")
}
