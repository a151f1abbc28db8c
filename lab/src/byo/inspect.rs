//! `tclab inspect OBJECT`: what a compiled BPF object holds (programs,
//! sections, maps, globals, BTF and CO-RE relocations), and whether each
//! program loads on the running kernel: a load-only dry run, each program
//! alone, nothing attached. [`dry_run`] is that dry run for one object, for
//! a caller inside a guest of the kernel matrix.

use std::fmt::Write as _;
use std::os::fd::AsFd;
use std::path::Path;

use libbpf_rs::ProgramType;
use serde::{Deserialize, Serialize};

use super::btf::Btf;
use super::elf::{self, Section};
use super::libbpf::{self, Diagnosis, MapFacts, ProgFacts};

/// Whether one program loads on this kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum LoadCheck {
    /// The verifier accepted it (`verified_insns`: 5.16+ kernels report it).
    Loads { verified_insns: Option<u32> },
    /// libbpf or the verifier refused it: libbpf's error, its lines, the end of the verifier log.
    Rejected { error: String, libbpf: Vec<String>, verifier: Vec<String> },
    /// Not tried (no privileges to load BPF).
    NotChecked { reason: String },
}

/// The dry run of one program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DryRun {
    pub program: String,
    pub section: String,
    pub prog_type: String,
    pub load: LoadCheck,
}

#[derive(Debug, Clone, Serialize)]
pub struct Global {
    pub name: String,
    pub section: String,
    pub type_name: String,
    pub size: u32,
}

/// Everything `tclab inspect` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub object: String,
    /// `uname -r` of the kernel the dry run ran on.
    pub kernel: String,
    pub btf: bool,
    pub btf_ext: bool,
    /// CO-RE relocation records in `.BTF.ext` (libbpf applies them at load).
    pub core_relocations: usize,
    pub sections: Vec<Section>,
    pub programs: Vec<ProgFacts>,
    pub maps: Vec<MapFacts>,
    pub globals: Vec<Global>,
    /// One per program, in program order.
    pub dry_run: Vec<DryRun>,
}

/// Failure to read the object at all.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {why}")]
pub struct InspectError {
    pub path: String,
    pub why: String,
}

fn err(path: &Path) -> impl Fn(String) -> InspectError + '_ {
    move |why| InspectError { path: path.display().to_string(), why }
}

/// Read `path`, list what it holds, and (when `load` is set) dry-run every program.
pub fn inspect(path: &Path, load: bool) -> Result<Inspection, InspectError> {
    let data = std::fs::read(path).map_err(|e| err(path)(format!("cannot read: {e}")))?;
    let facts = elf::inspect(&data).map_err(|w| err(path)(format!("is {w}")))?;
    let open = libbpf::open(path).map_err(err(path))?;
    let btf = libbpf::object_btf(&open);
    let programs = libbpf::programs(&open);
    let maps = libbpf::maps(&open, btf.as_ref());
    drop(open);
    let globals = btf.as_ref().map_or_else(Vec::new, globals);
    let core_relocations = facts.btf_ext.as_deref().map_or(Ok(0), super::btf::core_relocations).unwrap_or(0);
    let dry_run = if load {
        dry_run(path)?
    } else {
        programs
            .iter()
            .map(|p| DryRun {
                program: p.name.clone(),
                section: p.section.clone(),
                prog_type: p.prog_type.clone(),
                load: LoadCheck::NotChecked { reason: "not asked".into() },
            })
            .collect()
    };
    Ok(Inspection {
        object: path.display().to_string(),
        kernel: kernel_release(),
        btf: facts.btf.is_some(),
        btf_ext: facts.btf_ext.is_some(),
        core_relocations,
        sections: facts.sections,
        programs,
        maps,
        globals,
        dry_run,
    })
}

fn globals(btf: &Btf) -> Vec<Global> {
    btf.globals()
        .into_iter()
        .filter(|(_, g)| g.section != ".maps" && g.section != "license")
        .map(|(name, g)| Global { name, type_name: btf.type_name(g.ty), section: g.section, size: g.size })
        .collect()
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(|_| "unknown".into(), |s| s.trim().to_string())
}

/// Load each program of the object at `path` on the running kernel, alone
/// (the object's maps are created for it), and unload it again. Programs in
/// a section libbpf does not type are loaded as TC classifiers, as the lab
/// would. Needs CAP_BPF (root); without it every program is `NotChecked`.
pub fn dry_run(path: &Path) -> Result<Vec<DryRun>, InspectError> {
    let open = libbpf::open(path).map_err(err(path))?;
    let programs = libbpf::programs(&open);
    drop(open);
    let mut out = Vec::with_capacity(programs.len());
    for p in &programs {
        let load = if !nix::unistd::geteuid().is_root() {
            LoadCheck::NotChecked { reason: "needs root (CAP_BPF) to load programs".into() }
        } else {
            load_one(path, &p.name).map_err(err(path))?
        };
        out.push(DryRun { program: p.name.clone(), section: p.section.clone(), prog_type: p.prog_type.clone(), load });
    }
    Ok(out)
}

fn load_one(path: &Path, program: &str) -> Result<LoadCheck, String> {
    let mut open = libbpf::open(path)?;
    for mut p in open.progs_mut() {
        let this = p.name().to_str() == Some(program);
        p.set_autoload(this);
        if this && p.prog_type() == ProgramType::Unspec {
            p.set_prog_type(ProgramType::SchedCls);
        }
    }
    for m in open.maps_mut() {
        // A dry run never pins (nor reuses a pin).
        // SAFETY: a live map of the open object; NULL clears the pin path.
        unsafe { libbpf_sys::bpf_map__set_pin_path(libbpf_rs::AsRawLibbpf::as_libbpf_object(&m).as_ptr(), std::ptr::null()) };
    }
    let (loaded, messages) = libbpf::capture(|| open.load());
    Ok(match loaded {
        Ok(obj) => {
            let verified = obj
                .progs()
                .find(|p| p.name().to_str() == Some(program))
                .and_then(|p| super::load::prog_info(p.as_fd()).ok())
                .map(|i| i.verified_insns)
                .filter(|n| *n > 0);
            LoadCheck::Loads { verified_insns: verified }
        }
        Err(e) => {
            let d = Diagnosis::from_messages(&messages);
            LoadCheck::Rejected { error: e.to_string(), libbpf: d.libbpf, verifier: d.verifier }
        }
    })
}

impl LoadCheck {
    /// `ok (verified 120 insns)`, `REJECTED: …`, `not checked: …`.
    pub fn text(&self) -> String {
        match self {
            LoadCheck::Loads { verified_insns: Some(n) } => format!("ok (verified {n} insns)"),
            LoadCheck::Loads { verified_insns: None } => "ok".into(),
            LoadCheck::Rejected { error, libbpf, verifier } => {
                let d = Diagnosis { libbpf: libbpf.clone(), verifier: verifier.clone(), program: None };
                let s = d.summary();
                if s.is_empty() { format!("REJECTED: {error}") } else { format!("REJECTED: {error}; {s}") }
            }
            LoadCheck::NotChecked { reason } => format!("not checked: {reason}"),
        }
    }
}

impl Inspection {
    /// The report as a table.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "object   {}", self.object);
        let btf = match (self.btf, self.btf_ext) {
            (false, _) => "no (maps and values are shown as hex; constants cannot be set by name)".to_string(),
            (true, false) => "yes (no .BTF.ext: no CO-RE relocations)".to_string(),
            (true, true) => format!("yes, .BTF.ext with {} CO-RE relocation(s)", self.core_relocations),
        };
        let _ = writeln!(s, "BTF      {btf}");
        let _ = writeln!(s, "kernel   {} (dry run: each program loaded alone, nothing attached)", self.kernel);
        let _ = writeln!(s, "\nprograms:");
        let w = self.programs.iter().map(|p| p.name.len()).max().unwrap_or(4).max(4);
        let ws = self.programs.iter().map(|p| p.section.len()).max().unwrap_or(7).max(7);
        let _ = writeln!(s, "  {:<w$}  {:<ws$}  {:<13}  {:>5}  load", "name", "section", "type", "insns");
        for p in &self.programs {
            let load = self.dry_run.iter().find(|d| d.program == p.name).map_or_else(String::new, |d| d.load.text());
            let _ = writeln!(s, "  {:<w$}  {:<ws$}  {:<13}  {:>5}  {load}", p.name, p.section, p.prog_type, p.insns);
        }
        let _ = writeln!(s, "\nmaps:");
        let w = self.maps.iter().map(|m| m.name.len()).max().unwrap_or(4).max(4);
        let _ = writeln!(s, "  {:<w$}  {:<14}  {:>7}  {:<28}  value", "name", "type", "entries", "key");
        for m in &self.maps {
            let key = m.key_type_name.as_deref().map_or_else(|| format!("{} bytes", m.key_size), |t| format!("{t} ({}B)", m.key_size));
            let value = m.value_type_name.as_deref().map_or_else(|| format!("{} bytes", m.value_size), |t| format!("{t} ({}B)", m.value_size));
            let mut flags = Vec::new();
            if m.internal {
                flags.push("globals");
            }
            if m.pinned_by_name {
                flags.push("pinned by name");
            }
            let flags = if flags.is_empty() { String::new() } else { format!("  [{}]", flags.join(", ")) };
            let _ = writeln!(s, "  {:<w$}  {:<14}  {:>7}  {key:<28}  {value}{flags}", m.name, m.map_type, m.max_entries);
        }
        if !self.globals.is_empty() {
            let _ = writeln!(s, "\nglobals (settable with `constants = {{ … }}`):");
            for g in &self.globals {
                let _ = writeln!(s, "  {:<24}  {:<10}  {} ({}B)", g.name, g.section, g.type_name, g.size);
            }
        }
        let _ = writeln!(s, "\nsections:");
        for sec in &self.sections {
            let _ = writeln!(s, "  {:<28}  {:>7} bytes", sec.name, sec.size);
        }
        s
    }
}
