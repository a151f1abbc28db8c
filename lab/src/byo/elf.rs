//! What an object file is before libbpf looks at it: ELF or not, BPF or
//! not, its sections and its BTF. Gives the clear "not a BPF object" errors
//! libbpf itself does not.

use object::{Architecture, Object, ObjectSection};

/// A section of the object.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Section {
    pub name: String,
    pub size: u64,
}

/// The facts `tclab inspect` and the scenario checks need from the ELF.
#[derive(Debug, Clone)]
pub struct ElfFacts {
    pub sections: Vec<Section>,
    /// Raw `.BTF`, when present.
    pub btf: Option<Vec<u8>>,
    /// Raw `.BTF.ext`, when present.
    pub btf_ext: Option<Vec<u8>>,
}

/// Reads `data` as a BPF ELF object; the error says what it is instead.
pub fn inspect(data: &[u8]) -> Result<ElfFacts, String> {
    if !data.starts_with(b"\x7fELF") {
        return Err("not an ELF object file, expected a BPF object built with clang -target bpf".into());
    }
    let file = object::File::parse(data).map_err(|e| format!("damaged ELF file ({e})"))?;
    if file.architecture() != Architecture::Bpf {
        return Err(format!(
            "an ELF object for {:?}, not BPF; expected an object built with clang -target bpf",
            file.architecture()
        ));
    }
    let mut facts = ElfFacts { sections: Vec::new(), btf: None, btf_ext: None };
    for s in file.sections() {
        let name = s.name().unwrap_or("?").to_string();
        if name.is_empty() {
            continue;
        }
        match name.as_str() {
            ".BTF" => facts.btf = s.data().ok().map(<[u8]>::to_vec),
            ".BTF.ext" => facts.btf_ext = s.data().ok().map(<[u8]>::to_vec),
            _ => {}
        }
        facts.sections.push(Section { name, size: s.size() });
    }
    Ok(facts)
}
