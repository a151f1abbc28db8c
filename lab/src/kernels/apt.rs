//! A private apt run: `apt-get update` and `apt-get download` with their own
//! state, cache and sources, so the machine's apt setup is neither read for
//! package lists nor changed. Only the mirror URIs come from the machine's own
//! sources, so no host name is ever written in the repository.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::KernelError;

/// The keyring that signs every Debian suite the manifests use (bullseye too).
pub const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// The Debian mirrors this machine's apt sources name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirrors {
    /// Archive URI serving the release suites (`bookworm`, `bullseye`, `*-backports`).
    pub archive: String,
    /// Archive URI serving `*-security` suites, when the machine names one.
    pub security: Option<String>,
}

/// One `deb` entry of an apt sources file: its URI and suites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceEntry {
    /// The mirror URI.
    pub uri: String,
    /// The suites it is used for.
    pub suites: Vec<String>,
}

/// Parse a deb822 `.sources` file (stanzas separated by blank lines).
pub fn parse_deb822(text: &str) -> Vec<SourceEntry> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
        };
        let is_deb = field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
        let enabled = field("Enabled").is_none_or(|e| e != "no");
        if let (true, true, Some(uris), Some(suites)) = (is_deb, enabled, field("URIs"), field("Suites")) {
            let suites: Vec<String> = suites.split_whitespace().map(str::to_owned).collect();
            for uri in uris.split_whitespace() {
                out.push(SourceEntry { uri: uri.to_owned(), suites: suites.clone() });
            }
        }
    }
    out
}

/// Parse a one-line-style `sources.list` (`deb [opts] URI suite comps…`).
pub fn parse_one_line(text: &str) -> Vec<SourceEntry> {
    let mut out = Vec::new();
    for line in text.lines().map(|l| l.split('#').next().unwrap_or("").trim()) {
        let mut words = line.split_whitespace().peekable();
        if words.next() != Some("deb") {
            continue;
        }
        if words.peek().is_some_and(|w| w.starts_with('[')) {
            // Skip the `[opt=val …]` block, which may span several words.
            for w in words.by_ref() {
                if w.ends_with(']') {
                    break;
                }
            }
        }
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            out.push(SourceEntry { uri: uri.to_owned(), suites: vec![suite.to_owned()] });
        }
    }
    out
}

/// Pick the archive and security mirrors from parsed entries.
pub fn pick_mirrors(entries: &[SourceEntry]) -> Option<Mirrors> {
    let is_security = |s: &String| s.ends_with("-security") || s.ends_with("/updates");
    let archive = entries.iter().find(|e| e.suites.iter().any(|s| !is_security(s)))?.uri.clone();
    let security = entries.iter().find(|e| e.suites.iter().any(is_security)).map(|e| e.uri.clone());
    Some(Mirrors { archive, security })
}

/// The mirrors named by `<etc_apt>/sources.list` and `<etc_apt>/sources.list.d/*`.
pub fn system_mirrors(etc_apt: &Path) -> Result<Mirrors, KernelError> {
    let mut entries = Vec::new();
    let mut searched = Vec::new();
    let list = etc_apt.join("sources.list");
    if let Ok(text) = std::fs::read_to_string(&list) {
        entries.extend(parse_one_line(&text));
    }
    searched.push(list.display().to_string());
    let parts = etc_apt.join("sources.list.d");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&parts)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        match file.extension().and_then(|e| e.to_str()) {
            Some("sources") => entries.extend(parse_deb822(&text)),
            Some("list") => entries.extend(parse_one_line(&text)),
            _ => continue,
        }
        searched.push(file.display().to_string());
    }
    // Other repositories (vendors, PPAs) have no Debian kernels: prefer
    // Debian's when they can be told apart by URI.
    if entries.iter().any(|e| e.uri.contains("debian")) {
        entries.retain(|e| e.uri.contains("debian"));
    }
    pick_mirrors(&entries).ok_or_else(|| KernelError::Mirror {
        searched: searched.join(", "),
        reason: "no `deb` entry whose URI looks like a Debian archive".into(),
    })
}

/// The private `.sources` text for `suites`, security suites on the security mirror.
pub fn private_sources(mirrors: &Mirrors, suites: &BTreeSet<String>) -> Result<String, String> {
    let (security, archive): (Vec<&String>, Vec<&String>) = suites.iter().partition(|s| s.ends_with("-security"));
    let stanza = |uri: &str, suites: &[&String]| {
        let suites: Vec<&str> = suites.iter().map(|s| s.as_str()).collect();
        format!(
            "Types: deb\nURIs: {uri}\nSuites: {}\nComponents: main\nSigned-By: {DEBIAN_KEYRING}\n",
            suites.join(" ")
        )
    };
    let mut text = String::new();
    if !archive.is_empty() {
        text.push_str(&stanza(&mirrors.archive, &archive));
    }
    if !security.is_empty() {
        let uri = mirrors.security.as_deref().ok_or("the machine's apt sources name no security mirror")?;
        text.push('\n');
        text.push_str(&stanza(uri, &security));
    }
    Ok(text)
}

/// apt state under one folder: `lists/`, `cache/`, `sources/tclab.sources`.
#[derive(Debug)]
pub struct PrivateApt {
    root: PathBuf,
    /// Manifest paths, for error messages.
    for_manifests: String,
}

impl PrivateApt {
    /// Prepare `root` and write the sources for `suites`.
    pub fn new(root: &Path, mirrors: &Mirrors, suites: &BTreeSet<String>, for_manifests: String) -> Result<Self, KernelError> {
        for sub in ["lists/partial", "cache/archives/partial", "sources"] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir).map_err(KernelError::io("create folder", &dir))?;
        }
        let text = private_sources(mirrors, suites)
            .map_err(|reason| KernelError::Mirror { searched: "/etc/apt".into(), reason })?;
        let file = root.join("sources/tclab.sources");
        std::fs::write(&file, text).map_err(KernelError::io("write", &file))?;
        Ok(PrivateApt { root: root.to_owned(), for_manifests })
    }

    /// The `-o` options that make apt use only this folder.
    fn options(&self) -> Vec<String> {
        let r = self.root.display();
        vec![
            "-q".into(),
            "-o".into(),
            "Dir::Etc::SourceList=/dev/null".into(),
            "-o".into(),
            format!("Dir::Etc::SourceParts={r}/sources"),
            "-o".into(),
            format!("Dir::State::Lists={r}/lists"),
            "-o".into(),
            format!("Dir::Cache={r}/cache"),
            // No installed-package database: nothing is installed, and the
            // system's dpkg status must not influence the download.
            "-o".into(),
            "Dir::State::status=/dev/null".into(),
            // Downloading as root into our own folder: no `_apt` sandbox
            // (it would need the folder to be writable by `_apt`).
            "-o".into(),
            "APT::Sandbox::User=root".into(),
        ]
    }

    fn run(&self, args: &[&str], cwd: &Path) -> Result<(), KernelError> {
        let mut cmd = Command::new("apt-get");
        cmd.args(self.options()).args(args).current_dir(cwd);
        let command = format!("apt-get {}", args.join(" "));
        tracing::info!(%command, "private apt run");
        let out = cmd.output().map_err(|e| KernelError::Apt {
            command: command.clone(),
            manifest: self.for_manifests.clone(),
            reason: format!("could not start apt-get: {e}"),
        })?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("E:") || l.starts_with("W:")).collect();
        let detail = if errors.is_empty() { stderr.trim().to_owned() } else { errors.join("; ") };
        Err(KernelError::Apt { command, manifest: self.for_manifests.clone(), reason: format!("{}: {detail}", out.status) })
    }

    /// `apt-get update` against the private sources.
    pub fn update(&self) -> Result<(), KernelError> {
        self.run(&["update"], &self.root)
    }

    /// `apt-get download PKG=VER` into `into`; returns the `.deb` path.
    pub fn download(&self, package: &str, version: &str, into: &Path) -> Result<PathBuf, KernelError> {
        let spec = format!("{package}={version}");
        self.run(&["download", &spec], into)?;
        let found = std::fs::read_dir(into)
            .map_err(KernelError::io("list", into))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "deb"));
        found.ok_or_else(|| KernelError::Apt {
            command: format!("apt-get download {spec}"),
            manifest: self.for_manifests.clone(),
            reason: format!("apt-get succeeded but left no .deb in {}", into.display()),
        })
    }
}
