//! Module metadata from a `.ko`'s `.modinfo` section: what depmod reads to
//! build modules.dep, which the Debian packages do not ship.

use object::{Object, ObjectSection};

/// The fields of `.modinfo` the lab uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    /// `name=` (normalised with `_`), when present (4.x+ kernels write it).
    pub name: Option<String>,
    /// `depends=`, normalised, empty entries dropped.
    pub depends: Vec<String>,
    /// `vermagic=`, e.g. `6.1.0-56-cloud-amd64 SMP preempt mod_unload modversions`.
    pub vermagic: Option<String>,
}

/// Module names treat `-` and `_` alike (the kernel does): use `_`.
pub fn normalise(name: &str) -> String {
    name.replace('-', "_")
}

/// The module name of a file such as `nf_conntrack.ko.xz`.
pub fn module_name_of_file(file_name: &str) -> Option<String> {
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|suffix| file_name.strip_suffix(suffix))?;
    Some(normalise(stem))
}

/// Parse the raw `.modinfo` bytes: NUL-separated `key=value` strings.
pub fn parse_modinfo_section(bytes: &[u8]) -> ModInfo {
    let mut info = ModInfo::default();
    for field in bytes.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        let text = String::from_utf8_lossy(field);
        let Some((key, value)) = text.split_once('=') else { continue };
        match key {
            "name" => info.name = Some(normalise(value)),
            "depends" => {
                info.depends = value.split(',').map(str::trim).filter(|d| !d.is_empty()).map(normalise).collect();
            }
            "vermagic" => info.vermagic = Some(value.to_owned()),
            _ => {}
        }
    }
    info
}

/// Parse the `.modinfo` section of an (uncompressed) module ELF.
pub fn parse_modinfo(ko: &[u8]) -> Result<ModInfo, String> {
    let file = object::File::parse(ko).map_err(|e| format!("not an ELF module: {e}"))?;
    let section = file.section_by_name(".modinfo").ok_or("no .modinfo section")?;
    let data = section.data().map_err(|e| format!("unreadable .modinfo section: {e}"))?;
    Ok(parse_modinfo_section(data))
}

/// Decompress a module file by its suffix (`.ko` is returned as is).
pub fn decompress_module(file_name: &str, bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut out = Vec::new();
    let result = if file_name.ends_with(".ko.xz") {
        xz2::read::XzDecoder::new(&bytes[..]).read_to_end(&mut out)
    } else if file_name.ends_with(".ko.zst") {
        zstd::stream::read::Decoder::new(&bytes[..]).and_then(|mut d| d.read_to_end(&mut out))
    } else if file_name.ends_with(".ko.gz") {
        flate2::read::GzDecoder::new(&bytes[..]).read_to_end(&mut out)
    } else {
        return Ok(bytes);
    };
    result.map_err(|e| format!("failed to decompress {file_name}: {e}"))?;
    Ok(out)
}
