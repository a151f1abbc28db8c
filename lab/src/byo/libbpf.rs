//! Thin layer over libbpf: its messages captured per call (so a failed load
//! can show libbpf's own words and the verifier log), opening an object,
//! and the facts about its programs and maps that libbpf-rs does not wrap.

use std::cell::RefCell;
use std::ffi::CStr;
use std::path::Path;
use std::sync::Once;

use libbpf_rs::{AsRawLibbpf, ObjectBuilder, OpenObject, PrintLevel};

use super::btf::Btf;

thread_local! {
    /// Warnings libbpf printed on this thread while a capture is active.
    static CAPTURE: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

fn print(level: PrintLevel, msg: String) {
    let kept = CAPTURE.with(|c| match c.borrow_mut().as_mut() {
        Some(buf) if matches!(level, PrintLevel::Warn) => {
            buf.push(msg.clone());
            true
        }
        _ => false,
    });
    if !kept {
        tracing::debug!(target: "libbpf", "{}", msg.trim_end());
    }
}

/// Runs `f` with libbpf's warnings collected (libbpf prints on the calling
/// thread); returns them with `f`'s result.
pub fn capture<R>(f: impl FnOnce() -> R) -> (R, Vec<String>) {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        libbpf_rs::set_print(Some((PrintLevel::Debug, print)));
    });
    let outer = CAPTURE.with(|c| c.borrow_mut().replace(Vec::new()));
    let r = f();
    let got = CAPTURE.with(|c| std::mem::replace(&mut *c.borrow_mut(), outer)).unwrap_or_default();
    (r, got)
}

/// What libbpf said about a failure: its own lines, and the verifier log
/// (trimmed to the end, where the verifier says why) when it printed one.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Diagnosis {
    pub libbpf: Vec<String>,
    pub verifier: Vec<String>,
    /// The program libbpf named as failing, if it did.
    pub program: Option<String>,
}

/// How many lines of the verifier log are kept: the last instructions and
/// the verifier's reason, which is where a rejection is explained.
pub const VERIFIER_TAIL: usize = 12;

impl Diagnosis {
    pub fn from_messages(messages: &[String]) -> Diagnosis {
        let text = messages.concat();
        let mut d = Diagnosis::default();
        let mut in_log = false;
        let mut log = Vec::new();
        for line in text.lines() {
            if line.contains("-- BEGIN PROG LOAD LOG --") {
                in_log = true;
                continue;
            }
            if line.contains("-- END PROG LOAD LOG --") {
                in_log = false;
                continue;
            }
            if in_log {
                log.push(line.to_string());
                continue;
            }
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if d.program.is_none()
                && let Some(rest) = line.split("prog '").nth(1)
                && let Some(name) = rest.split('\'').next()
            {
                d.program = Some(name.to_string());
            }
            d.libbpf.push(line.strip_prefix("libbpf: ").unwrap_or(line).to_string());
        }
        d.verifier = trim_verifier_log(&log);
        d
    }

    /// One line: `libbpf: a | b; verifier: x | y`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if !self.libbpf.is_empty() {
            parts.push(format!("libbpf: {}", self.libbpf.join(" | ")));
        }
        if !self.verifier.is_empty() {
            parts.push(format!("verifier: {}", self.verifier.join(" | ")));
        }
        parts.join("; ")
    }
}

/// The last [`VERIFIER_TAIL`] meaningful lines of a verifier log.
pub fn trim_verifier_log(lines: &[String]) -> Vec<String> {
    let kept: Vec<&String> = lines.iter().filter(|l| !l.trim().is_empty()).collect();
    let from = kept.len().saturating_sub(VERIFIER_TAIL);
    kept[from..].iter().map(|l| l.trim_end().to_string()).collect()
}

/// Opens `path` with libbpf (no kernel involved); the error carries libbpf's words.
pub fn open(path: &Path) -> Result<OpenObject, String> {
    let (r, msgs) = capture(|| ObjectBuilder::default().open_file(path));
    r.map_err(|e| {
        let d = Diagnosis::from_messages(&msgs);
        let why = d.summary();
        if why.is_empty() { format!("libbpf cannot open it: {e}") } else { format!("libbpf cannot open it: {e} ({why})") }
    })
}

fn c_string(p: *const std::os::raw::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: libbpf returns NUL-terminated strings that live as long as the object.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// libbpf's name of a program type (`sched_cls`, `xdp`, …).
pub fn prog_type_name(t: libbpf_sys::bpf_prog_type) -> String {
    // SAFETY: returns a static string or NULL.
    let s = c_string(unsafe { libbpf_sys::libbpf_bpf_prog_type_str(t) });
    if s.is_empty() { format!("type {t}") } else { s }
}

/// libbpf's name of a map type (`hash`, `prog_array`, …).
pub fn map_type_name(t: libbpf_sys::bpf_map_type) -> String {
    // SAFETY: returns a static string or NULL.
    let s = c_string(unsafe { libbpf_sys::libbpf_bpf_map_type_str(t) });
    if s.is_empty() { format!("type {t}") } else { s }
}

/// A program of an opened object.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProgFacts {
    pub name: String,
    pub section: String,
    pub prog_type: String,
    /// SCHED_CLS, or a section libbpf does not type (the lab loads it as one).
    pub is_tc: bool,
    pub insns: usize,
}

/// A map of an opened object.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MapFacts {
    /// The name the object gives it (`.rodata` for a data section).
    pub name: String,
    pub map_type: String,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    /// BTF type ids of key and value (0: none).
    #[serde(skip)]
    pub key_type: u32,
    #[serde(skip)]
    pub value_type: u32,
    /// C names of the key and value types, when BTF has them.
    pub key_type_name: Option<String>,
    pub value_type_name: Option<String>,
    /// A `.rodata`/`.data`/`.bss` section map libbpf made for globals.
    pub internal: bool,
    /// Declared pinned (`LIBBPF_PIN_BY_NAME`) in the object.
    pub pinned_by_name: bool,
    pub prog_array: bool,
    pub percpu: bool,
}

/// Programs of an opened object, in object order.
pub fn programs(obj: &OpenObject) -> Vec<ProgFacts> {
    obj.progs()
        .map(|p| {
            let t = p.prog_type();
            let raw = t as u32;
            ProgFacts {
                name: p.name().to_string_lossy().into_owned(),
                section: p.section().to_string_lossy().into_owned(),
                prog_type: prog_type_name(raw),
                is_tc: raw == libbpf_sys::BPF_PROG_TYPE_SCHED_CLS || raw == libbpf_sys::BPF_PROG_TYPE_UNSPEC,
                insns: p.insn_cnt(),
            }
        })
        .collect()
}

/// Maps of an opened object, in object order.
pub fn maps(obj: &OpenObject, btf: Option<&Btf>) -> Vec<MapFacts> {
    obj.maps()
        .map(|m| {
            let raw = m.as_libbpf_object().as_ptr();
            // SAFETY: `raw` is a live map of `obj`; these read plain fields.
            let (key_type, value_type, internal, real_name, pin, map_type) = unsafe {
                (
                    libbpf_sys::bpf_map__btf_key_type_id(raw),
                    libbpf_sys::bpf_map__btf_value_type_id(raw),
                    libbpf_sys::bpf_map__is_internal(raw),
                    c_string(libbpf_sys::bpf_map__name(raw)),
                    !libbpf_sys::bpf_map__pin_path(raw).is_null(),
                    libbpf_sys::bpf_map__type(raw),
                )
            };
            let name = if internal { section_of_internal(&real_name) } else { real_name };
            let tname = |id: u32| (id != 0).then(|| btf.map(|b| b.type_name(id))).flatten();
            MapFacts {
                name,
                map_type: map_type_name(map_type),
                key_size: m.key_size(),
                value_size: m.value_size(),
                max_entries: m.max_entries(),
                key_type,
                value_type,
                key_type_name: tname(key_type),
                value_type_name: tname(value_type),
                internal,
                pinned_by_name: pin,
                prog_array: map_type == libbpf_sys::BPF_MAP_TYPE_PROG_ARRAY,
                percpu: matches!(
                    map_type,
                    libbpf_sys::BPF_MAP_TYPE_PERCPU_ARRAY
                        | libbpf_sys::BPF_MAP_TYPE_PERCPU_HASH
                        | libbpf_sys::BPF_MAP_TYPE_LRU_PERCPU_HASH
                ),
            }
        })
        .collect()
}

/// libbpf names the `.rodata`, `.data`, `.bss` and `.kconfig` maps
/// `<object prefix>.rodata` (custom `.rodata.x` ones by their section):
/// the lab calls each by its section.
fn section_of_internal(name: &str) -> String {
    if name.starts_with('.') {
        return name.to_string();
    }
    [".rodata", ".data", ".bss", ".kconfig"]
        .into_iter()
        .find(|s| name.ends_with(s))
        .map_or_else(|| name.to_string(), str::to_string)
}

/// The object's BTF as libbpf holds it (after its fix-ups), if it has any.
pub fn object_btf(obj: &OpenObject) -> Option<Btf> {
    let raw = obj.as_libbpf_object().as_ptr();
    // SAFETY: `raw` is live; btf__raw_data copies nothing and the bytes live
    // as long as the object, which outlives this call.
    unsafe {
        let btf = libbpf_sys::bpf_object__btf(raw);
        if btf.is_null() {
            return None;
        }
        let mut size = 0u32;
        let data = libbpf_sys::btf__raw_data(btf, &mut size);
        if data.is_null() {
            return None;
        }
        let bytes = std::slice::from_raw_parts(data.cast::<u8>(), size as usize);
        Btf::parse(bytes).ok()
    }
}

/// Number of possible CPUs (per-CPU map values come in this many copies).
pub fn possible_cpus() -> usize {
    // SAFETY: reads /sys; no arguments.
    let n = unsafe { libbpf_sys::libbpf_num_possible_cpus() };
    usize::try_from(n).unwrap_or(1).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnosis_splits_libbpf_lines_from_the_verifier_log() {
        let msgs = vec![
            "libbpf: prog 'byo_loop': BPF program load failed: Invalid argument\n".to_string(),
            "libbpf: prog 'byo_loop': -- BEGIN PROG LOAD LOG --\n0: (b7) r1 = 0\n1: (85) call unknown#181\ninvalid func unknown#181\nprocessed 2 insns\n-- END PROG LOAD LOG --\n".to_string(),
            "libbpf: failed to load object 'loop_count'\n".to_string(),
        ];
        let d = Diagnosis::from_messages(&msgs);
        assert_eq!(d.program.as_deref(), Some("byo_loop"));
        assert_eq!(d.libbpf.len(), 2, "{d:?}");
        assert!(d.libbpf[0].starts_with("prog 'byo_loop': BPF program load failed"));
        assert_eq!(d.verifier, vec!["0: (b7) r1 = 0", "1: (85) call unknown#181", "invalid func unknown#181", "processed 2 insns"]);
        assert!(d.summary().contains("verifier: 0: (b7) r1 = 0 | 1: (85)"), "{}", d.summary());
    }

    #[test]
    fn long_verifier_logs_keep_their_end() {
        let log: Vec<String> = (0..100).map(|i| format!("{i}: insn")).chain(["R1 invalid mem access".to_string(), String::new()]).collect();
        let t = trim_verifier_log(&log);
        assert_eq!(t.len(), VERIFIER_TAIL);
        assert_eq!(t.last().map(String::as_str), Some("R1 invalid mem access"));
    }

    #[test]
    fn internal_map_names_keep_the_section() {
        assert_eq!(section_of_internal("port_fil.rodata"), ".rodata");
        assert_eq!(section_of_internal("my.prog.bss"), ".bss");
        assert_eq!(section_of_internal(".data.custom"), ".data.custom");
    }
}
