//! The shared libraries an executable needs, found from its ELF the way
//! ld.so finds them: PT_INTERP, then DT_NEEDED resolved recursively
//! against DT_RPATH/DT_RUNPATH, `/etc/ld.so.conf` and the default paths.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use object::elf;
use object::read::elf::{ElfFile64, ProgramHeader};

/// A library that could not be found or read.
#[derive(Debug, thiserror::Error)]
pub enum ElfDepsError {
    /// The file could not be read.
    #[error("failed to read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not a 64-bit little-endian ELF, or malformed.
    #[error("failed to parse {path} as a 64-bit ELF: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// A DT_NEEDED entry matched no file in the search path.
    #[error("library {name} (needed by {needed_by}) not found in {searched}")]
    NotFound {
        /// The soname.
        name: String,
        /// The object that needs it.
        needed_by: PathBuf,
        /// The folders searched.
        searched: String,
    },
}

/// What one ELF file says about its dependencies.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ElfLinkInfo {
    /// PT_INTERP, e.g. `/lib64/ld-linux-x86-64.so.2`.
    pub interpreter: Option<String>,
    /// DT_NEEDED sonames.
    pub needed: Vec<String>,
    /// DT_RUNPATH (or DT_RPATH) folders, `$ORIGIN` not yet expanded.
    pub runpath: Vec<String>,
}

/// Parse PT_INTERP, DT_NEEDED and DT_RUNPATH/DT_RPATH.
pub fn link_info(path: &Path, data: &[u8]) -> Result<ElfLinkInfo, ElfDepsError> {
    let bad = |reason: String| ElfDepsError::Parse { path: path.to_owned(), reason };
    let file = ElfFile64::<object::Endianness>::parse(data).map_err(|e| bad(e.to_string()))?;
    let endian = file.endian();
    let mut info = ElfLinkInfo::default();
    for ph in file.elf_program_headers() {
        if let Some(interp) = ph.interpreter(endian, data).map_err(|e| bad(e.to_string()))? {
            info.interpreter = Some(String::from_utf8_lossy(interp).into_owned());
        }
    }
    let table = file.elf_section_table().dynamic_table(endian, data).map_err(|e| bad(e.to_string()))?;
    let (mut rpath, mut runpath) = (Vec::new(), Vec::new());
    for d in &table {
        let text = || table.string(d).map(|s| String::from_utf8_lossy(s).into_owned()).map_err(|e| bad(e.to_string()));
        match d.tag {
            elf::DT_NEEDED => info.needed.push(text()?),
            elf::DT_RPATH => rpath.extend(text()?.split(':').map(str::to_owned)),
            elf::DT_RUNPATH => runpath.extend(text()?.split(':').map(str::to_owned)),
            _ => {}
        }
    }
    // ld.so ignores DT_RPATH when DT_RUNPATH is present.
    info.runpath = if runpath.is_empty() { rpath } else { runpath };
    Ok(info)
}

/// Folders listed by an ld.so.conf file, following `include` globs of the
/// form `dir/*.conf` (the only form Debian uses).
pub fn ld_so_conf_dirs(conf: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(text) = std::fs::read_to_string(conf) else { return out };
    for line in text.lines().map(|l| l.split('#').next().unwrap_or("").trim()).filter(|l| !l.is_empty()) {
        if let Some(pattern) = line.strip_prefix("include").map(str::trim) {
            let pattern = if pattern.starts_with('/') { PathBuf::from(pattern) } else { conf.with_file_name(pattern) };
            let (Some(dir), Some(name)) = (pattern.parent(), pattern.file_name().and_then(|n| n.to_str())) else {
                continue;
            };
            let suffix = name.strip_prefix('*').unwrap_or(name).to_owned();
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            files.retain(|f| f.to_str().is_some_and(|s| s.ends_with(&suffix)));
            files.sort();
            for f in files {
                out.extend(ld_so_conf_dirs(&f));
            }
        } else {
            out.push(PathBuf::from(line));
        }
    }
    out
}

/// The host's library search path after the object's own runpath.
fn system_dirs() -> Vec<PathBuf> {
    let mut dirs = ld_so_conf_dirs(Path::new("/etc/ld.so.conf"));
    for d in ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"] {
        dirs.push(PathBuf::from(d));
    }
    dirs
}

fn is_elf64(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 5];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && head == *b"\x7fELF\x02"
}

/// Every file the dynamic loader will open to run `exe`: the interpreter
/// first, then the libraries, each once, as host paths (the guest uses the
/// same paths). A static executable needs nothing.
pub fn shared_libraries(exe: &Path) -> Result<Vec<PathBuf>, ElfDepsError> {
    let system = system_dirs();
    let mut out: Vec<PathBuf> = Vec::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut queue: Vec<PathBuf> = vec![exe.to_owned()];
    while let Some(obj) = queue.pop() {
        let data = std::fs::read(&obj).map_err(|source| ElfDepsError::Read { path: obj.clone(), source })?;
        let info = link_info(&obj, &data)?;
        if let Some(interp) = info.interpreter.filter(|i| seen.insert(i.clone())) {
            out.insert(0, PathBuf::from(interp));
        }
        let origin = obj.parent().unwrap_or(Path::new("/")).to_owned();
        let mut dirs: Vec<PathBuf> = info
            .runpath
            .iter()
            .map(|r| PathBuf::from(r.replace("$ORIGIN", &origin.to_string_lossy()).replace("${ORIGIN}", &origin.to_string_lossy())))
            .collect();
        dirs.extend(system.iter().cloned());
        for name in info.needed {
            if !seen.insert(name.clone()) {
                continue;
            }
            let found = if name.contains('/') {
                Some(PathBuf::from(&name)).filter(|p| is_elf64(p))
            } else {
                dirs.iter().map(|d| d.join(&name)).find(|p| is_elf64(p))
            };
            let path = found.ok_or_else(|| ElfDepsError::NotFound {
                name: name.clone(),
                needed_by: obj.clone(),
                searched: dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":"),
            })?;
            out.push(path.clone());
            queue.push(path);
        }
    }
    Ok(out)
}
