//! The modules the lab needs plus their dependencies, from `.modinfo`
//! `depends=` (what depmod reads), in an order `finit_module` accepts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::KernelError;
use super::modinfo::{self, parse_modinfo};

/// A module ready to load: decompressed bytes and its direct dependencies.
#[derive(Debug, Clone)]
pub struct Module {
    /// Normalised name (`_`, no suffix).
    pub name: String,
    /// The uncompressed `.ko` (the signature at its end kept intact).
    pub bytes: Vec<u8>,
    /// Direct dependencies from `.modinfo`.
    pub depends: Vec<String>,
}

/// Somewhere modules can be read from by name (a `.deb`, a folder).
pub trait ModuleSource {
    /// Where the modules come from (for messages).
    fn location(&self) -> &Path;
    /// Is a module of this name present?
    fn contains(&self, name: &str) -> bool;
    /// Is it built into the kernel (listed in `modules.builtin`)?
    fn is_builtin(&self, name: &str) -> bool;
    /// Read (and decompress) these modules.
    fn read(&mut self, names: &BTreeSet<String>) -> Result<BTreeMap<String, Vec<u8>>, KernelError>;
}

/// Resolve `wanted` and everything it depends on; returns modules with
/// every dependency before its users. Built-in modules are skipped.
pub fn resolve(kernel: &str, wanted: &[String], src: &mut dyn ModuleSource) -> Result<Vec<Module>, KernelError> {
    let mut have: BTreeMap<String, Module> = BTreeMap::new();
    let mut needed_by: BTreeMap<String, Option<String>> = BTreeMap::new();
    for w in wanted.iter().map(|w| modinfo::normalise(w)) {
        needed_by.entry(w).or_insert(None);
    }
    loop {
        let batch: BTreeSet<String> = needed_by
            .keys()
            .filter(|n| !have.contains_key(*n) && !src.is_builtin(n))
            .cloned()
            .collect();
        if batch.is_empty() {
            break;
        }
        for name in &batch {
            if !src.contains(name) {
                return Err(KernelError::MissingModule {
                    kernel: kernel.to_owned(),
                    module: name.clone(),
                    needed_by: needed_by.get(name).cloned().flatten(),
                    source_path: src.location().to_owned(),
                });
            }
        }
        for (name, bytes) in src.read(&batch)? {
            let info = parse_modinfo(&bytes).map_err(|reason| KernelError::Archive {
                path: src.location().join(format!("{name}.ko")),
                reason,
            })?;
            for dep in &info.depends {
                needed_by.entry(dep.clone()).or_insert_with(|| Some(name.clone()));
            }
            have.insert(name.clone(), Module { name, bytes, depends: info.depends });
        }
    }
    Ok(load_order(wanted, have))
}

/// Depth-first: dependencies first, then the module; each once.
fn load_order(wanted: &[String], mut have: BTreeMap<String, Module>) -> Vec<Module> {
    fn visit(name: &str, have: &mut BTreeMap<String, Module>, out: &mut Vec<Module>) {
        // Removing before recursing also breaks (invalid) dependency cycles.
        let Some(module) = have.remove(name) else { return };
        for dep in &module.depends {
            visit(dep, have, out);
        }
        out.push(module);
    }
    let mut out = Vec::new();
    for w in wanted {
        visit(&modinfo::normalise(w), &mut have, &mut out);
    }
    out
}

/// Module names listed in a `modules.builtin` text (`kernel/net/x/foo.ko` lines).
pub fn parse_builtin(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.trim().rsplit('/').next())
        .filter_map(modinfo::module_name_of_file)
        .collect()
}

/// Modules in a folder tree (a `lib/modules/<release>` or any folder of `.ko` files).
#[derive(Debug)]
pub struct DirModules {
    dir: PathBuf,
    files: BTreeMap<String, PathBuf>,
    builtin: BTreeSet<String>,
}

impl DirModules {
    /// Index every `*.ko[.xz|.zst|.gz]` under `dir` and any `modules.builtin`.
    pub fn scan(dir: &Path) -> Result<DirModules, KernelError> {
        let mut files = BTreeMap::new();
        let mut builtin = BTreeSet::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).map_err(KernelError::io("list modules in", &d))? {
                let path = entry.map_err(KernelError::io("list modules in", &d))?.path();
                let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
                if path.is_dir() {
                    stack.push(path);
                } else if file_name == "modules.builtin" {
                    let text = std::fs::read_to_string(&path).map_err(KernelError::io("read", &path))?;
                    builtin.extend(parse_builtin(&text));
                } else if let Some(name) = modinfo::module_name_of_file(&file_name) {
                    files.insert(name, path);
                }
            }
        }
        Ok(DirModules { dir: dir.to_owned(), files, builtin })
    }
}

impl ModuleSource for DirModules {
    fn location(&self) -> &Path {
        &self.dir
    }
    fn contains(&self, name: &str) -> bool {
        self.files.contains_key(name)
    }
    fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(name)
    }
    fn read(&mut self, names: &BTreeSet<String>) -> Result<BTreeMap<String, Vec<u8>>, KernelError> {
        let mut out = BTreeMap::new();
        for name in names {
            let Some(path) = self.files.get(name) else { continue };
            let raw = std::fs::read(path).map_err(KernelError::io("read", path))?;
            let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let bytes = modinfo::decompress_module(file_name, raw)
                .map_err(|reason| KernelError::Archive { path: path.clone(), reason })?;
            out.insert(name.clone(), bytes);
        }
        Ok(out)
    }
}

impl DirModules {
    /// A source with no modules (everything must be built in).
    pub fn scan_nothing(location: &Path) -> DirModules {
        DirModules { dir: location.to_owned(), files: BTreeMap::new(), builtin: BTreeSet::new() }
    }
}
