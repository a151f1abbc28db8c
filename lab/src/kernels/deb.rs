//! Reading a kernel `.deb`: an `ar` archive whose `data.tar.{xz,zst,gz}`
//! holds `boot/vmlinuz-<release>`, `config-*`, `System.map-*` and
//! `lib/modules/<release>/…`. The tar is streamed, never unpacked to disk.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use super::KernelError;
use super::modinfo;
use super::modules::{ModuleSource, parse_builtin};

/// What the lab takes from a kernel package.
#[derive(Debug)]
pub struct DebKernel {
    /// The kernel release (`uname -r`), from the vmlinuz file name.
    pub release: String,
    /// The bzImage.
    pub vmlinuz: Vec<u8>,
    /// `boot/config-*`, when present.
    pub config: Option<Vec<u8>>,
    /// `boot/System.map-*`, when present.
    pub system_map: Option<Vec<u8>>,
    /// The package's modules, readable by name.
    pub modules: DebModules,
}

/// The modules inside a `.deb`: an index from the first pass, and the
/// wanted ones already read; others cost one more pass over the tar.
#[derive(Debug)]
pub struct DebModules {
    deb: PathBuf,
    index: BTreeMap<String, String>,
    builtin: BTreeSet<String>,
    prefetched: BTreeMap<String, Vec<u8>>,
}

fn corrupt(deb: &Path) -> impl Fn(String) -> KernelError + '_ {
    move |reason| KernelError::Archive { path: deb.to_owned(), reason }
}

/// Call `f` for each entry of the package's data tarball.
fn for_each_entry(
    deb: &Path,
    mut f: impl FnMut(&str, &mut dyn Read) -> Result<(), KernelError>,
) -> Result<(), KernelError> {
    let file = std::fs::File::open(deb).map_err(KernelError::io("open", deb))?;
    let mut ar = ar::Archive::new(std::io::BufReader::new(file));
    while let Some(member) = ar.next_entry() {
        let member = member.map_err(|e| corrupt(deb)(format!("not a valid ar (.deb) archive: {e}")))?;
        let name = String::from_utf8_lossy(member.header().identifier()).into_owned();
        let tar_reader: Box<dyn Read + '_> = match name.as_str() {
            "data.tar.xz" => Box::new(xz2::read::XzDecoder::new(member)),
            "data.tar.zst" => Box::new(
                zstd::stream::read::Decoder::new(member).map_err(|e| corrupt(deb)(format!("{name}: {e}")))?,
            ),
            "data.tar.gz" => Box::new(flate2::read::GzDecoder::new(member)),
            "data.tar" => Box::new(member),
            _ => continue,
        };
        let mut tar = tar::Archive::new(tar_reader);
        let entries = tar.entries().map_err(|e| corrupt(deb)(format!("{name}: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| corrupt(deb)(format!("{name}: {e}")))?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let path = entry.path().map_err(|e| corrupt(deb)(format!("{name}: {e}")))?;
            let path = path.to_string_lossy().trim_start_matches("./").to_owned();
            f(&path, &mut entry)?;
        }
        return Ok(());
    }
    Err(corrupt(deb)("no data.tar.{xz,zst,gz} member".into()))
}

fn read_all(deb: &Path, path: &str, r: &mut dyn Read) -> Result<Vec<u8>, KernelError> {
    let mut buf = Vec::new();
    r.read_to_end(&mut buf).map_err(|e| corrupt(deb)(format!("failed to read {path}: {e}")))?;
    Ok(buf)
}

/// First pass: boot files, the module index, and the `wanted` modules.
pub fn open(deb: &Path, wanted: &[String]) -> Result<DebKernel, KernelError> {
    let wanted: BTreeSet<String> = wanted.iter().map(|w| modinfo::normalise(w)).collect();
    let mut vmlinuz: Vec<(String, Vec<u8>)> = Vec::new();
    let (mut config, mut system_map) = (None, None);
    let mut modules =
        DebModules { deb: deb.to_owned(), index: BTreeMap::new(), builtin: BTreeSet::new(), prefetched: BTreeMap::new() };
    for_each_entry(deb, |path, r| {
        let file_name = path.rsplit('/').next().unwrap_or(path);
        if let Some(rel) = path.strip_prefix("boot/vmlinuz-") {
            vmlinuz.push((rel.to_owned(), read_all(deb, path, r)?));
        } else if path.starts_with("boot/config-") {
            config = Some(read_all(deb, path, r)?);
        } else if path.starts_with("boot/System.map-") {
            system_map = Some(read_all(deb, path, r)?);
        } else if path.contains("lib/modules/") && file_name == "modules.builtin" {
            let text = read_all(deb, path, r)?;
            modules.builtin.extend(parse_builtin(&String::from_utf8_lossy(&text)));
        } else if let Some(name) = path.contains("lib/modules/").then(|| modinfo::module_name_of_file(file_name)).flatten() {
            if wanted.contains(&name) {
                let bytes = modinfo::decompress_module(file_name, read_all(deb, path, r)?).map_err(corrupt(deb))?;
                modules.prefetched.insert(name.clone(), bytes);
            }
            modules.index.insert(name, path.to_owned());
        }
        Ok(())
    })?;
    let (release, vmlinuz) = match vmlinuz.len() {
        1 => vmlinuz.remove(0),
        0 => return Err(corrupt(deb)("no boot/vmlinuz-* in the package (not a kernel image package?)".into())),
        n => return Err(corrupt(deb)(format!("{n} boot/vmlinuz-* files; expected one"))),
    };
    Ok(DebKernel { release, vmlinuz, config, system_map, modules })
}

impl ModuleSource for DebModules {
    fn location(&self) -> &Path {
        &self.deb
    }
    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
    fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(name)
    }
    fn read(&mut self, names: &BTreeSet<String>) -> Result<BTreeMap<String, Vec<u8>>, KernelError> {
        let mut out = BTreeMap::new();
        let mut missing: BTreeMap<&str, &String> = BTreeMap::new();
        for name in names {
            match self.prefetched.remove(name) {
                Some(bytes) => {
                    out.insert(name.clone(), bytes);
                }
                None => {
                    if let Some(path) = self.index.get(name) {
                        missing.insert(path.as_str(), name);
                    }
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let deb = self.deb.clone();
        for_each_entry(&deb, |path, r| {
            if let Some(name) = missing.get(path) {
                let file_name = path.rsplit('/').next().unwrap_or(path);
                let bytes = modinfo::decompress_module(file_name, read_all(&deb, path, r)?).map_err(corrupt(&deb))?;
                out.insert((*name).clone(), bytes);
            }
            Ok(())
        })?;
        Ok(out)
    }
}
