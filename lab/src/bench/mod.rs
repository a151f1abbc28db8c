//! `tclab bench`: the numbers of issue #8, each as a ratio against a
//! baseline measured in the same run (BENCHMARKS.md explains them).
//!
//! Benchmarks, not tests: nothing here fails because a target is missed. A
//! row carries its target and whether this run met it; `cargo test` only
//! runs `--quick` to check that every section produces plausible rows.
//!
//! Sections (select with `tclab bench SECTION…`):
//! * `packet`: per-packet cost through BPF_PROG_TEST_RUN vs the empty classifier ([`packet`]);
//! * `ct`: new-connection cost with the CT map 0/50/97/100% full, LRU and hash ([`ct`]);
//! * `verifier`: instructions processed per program, vs the reviewed snapshot ([`verifier`]);
//! * `replay`: packets/s through the agent's chain and its event loss ([`replay`]);
//! * `footprint`: RSS and CPU of `tclab-agent run` at ~10k spans/s ([`footprint`]);
//! * `lab`: `tclab run` per scenario and QEMU boots per cached kernel ([`labspeed`]);
//! * `propagation`: requests/s and p99 of the three-service chain with context
//!   propagation on vs off ([`propagation`]).

pub mod ct;
pub mod footprint;
pub mod inject;
pub mod labspeed;
pub mod machine;
pub mod packet;
pub mod propagation;
pub mod propagation_roundtrip;
pub mod replay;
pub mod report;
pub mod stats;
pub mod verifier;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, bail};

pub use report::{Report, Row, SectionReport, Target};

/// One benchmark section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Section {
    Packet,
    Ct,
    Verifier,
    Replay,
    Footprint,
    Lab,
    Propagation,
}

impl Section {
    /// Every section, in report order.
    pub const ALL: [Section; 7] = [
        Section::Packet,
        Section::Ct,
        Section::Verifier,
        Section::Replay,
        Section::Footprint,
        Section::Lab,
        Section::Propagation,
    ];

    /// The name on the command line and in the JSON report.
    pub fn name(self) -> &'static str {
        match self {
            Section::Packet => "packet",
            Section::Ct => "ct",
            Section::Verifier => "verifier",
            Section::Replay => "replay",
            Section::Footprint => "footprint",
            Section::Lab => "lab",
            Section::Propagation => "propagation",
        }
    }

    /// Parse a section name.
    ///
    /// # Errors
    /// An unknown name, with the list of known ones.
    pub fn parse(name: &str) -> anyhow::Result<Section> {
        Section::ALL.into_iter().find(|s| s.name() == name).ok_or_else(|| {
            let known: Vec<&str> = Section::ALL.iter().map(|s| s.name()).collect();
            anyhow::anyhow!("unknown benchmark section {name:?}; sections: {}", known.join(", "))
        })
    }
}

/// What `tclab bench` runs and where it finds things.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Short runs (seconds): checks that every section works, figures are rough.
    pub quick: bool,
    /// Sections to run, in order (empty: all).
    pub sections: Vec<Section>,
    /// Scenario folder for the `lab` section.
    pub scenarios: PathBuf,
    /// Kernel manifest folder for the QEMU part of the `lab` section.
    pub manifests: PathBuf,
    /// Reviewed verifier snapshots (`verifier@<kernel>.snap`).
    pub snapshots: PathBuf,
    /// `--kernel` of the verifier section (`host`, manifest names, `all`);
    /// empty: the host and every cached kernel (only the host with `quick`).
    pub kernels: Vec<String>,
    /// The `tclab-agent` binary (default: next to the running `tclab`).
    pub agent: Option<PathBuf>,
    /// The command line, for the report.
    pub command: String,
}

impl BenchOptions {
    /// The sections to run: the chosen ones, or all.
    pub fn selected(&self) -> Vec<Section> {
        if self.sections.is_empty() { Section::ALL.to_vec() } else { self.sections.clone() }
    }

    /// The agent binary: `--agent`, else `tclab-agent` next to the running executable.
    ///
    /// # Errors
    /// When it does not exist, with how to build it.
    pub fn agent_binary(&self) -> anyhow::Result<PathBuf> {
        let path = match &self.agent {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .context("failed to find the running executable")?
                .with_file_name("tclab-agent"),
        };
        if !path.is_file() {
            bail!(
                "{} does not exist: build it with the same profile as tclab (cargo build [--release] --bin tclab-agent) or pass --agent PATH",
                path.display()
            );
        }
        Ok(path)
    }
}

/// Run the selected sections. A section that fails is reported as failed
/// (with its error) and the others still run.
///
/// # Errors
/// Only when the run cannot start at all (not root).
pub fn run(opts: &BenchOptions, mut progress: impl FnMut(&str)) -> anyhow::Result<Report> {
    if !nix::unistd::geteuid().is_root() {
        bail!("tclab bench needs root (CAP_BPF, CAP_NET_ADMIN): sudo -E cargo run --release --bin tclab -- bench");
    }
    let mut report = Report::new(machine::Machine::describe(), opts.command.clone(), opts.quick);
    for section in opts.selected() {
        if crate::interrupt::requested() {
            break;
        }
        progress(&format!("bench {} …", section.name()));
        let started = Instant::now();
        let result = match section {
            Section::Packet => packet::run(opts.quick),
            Section::Ct => ct::run(opts.quick),
            Section::Verifier => verifier::KernelChoice::resolve(&opts.kernels, &opts.manifests, opts.quick)
                .and_then(|kernels| verifier::run(&opts.snapshots, &kernels)),
            Section::Replay => replay::run(opts.quick),
            Section::Footprint => opts.agent_binary().and_then(|agent| footprint::run(&agent, opts.quick)),
            Section::Lab => labspeed::run(opts),
            Section::Propagation => propagation::run(opts.quick),
        };
        let mut s = result.unwrap_or_else(|e| SectionReport::failed(section, format!("{e:#}")));
        s.seconds = started.elapsed().as_secs_f64();
        progress(&format!("bench {} done in {:.1} s", section.name(), s.seconds));
        report.sections.push(s);
    }
    Ok(report)
}

/// `tclab bench` arguments.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Sections to run (default: all): packet, ct, verifier, replay, footprint, lab, propagation.
    pub sections: Vec<String>,
    /// Print the report as JSON instead of Markdown tables.
    #[arg(long)]
    pub json: bool,
    /// Short runs (seconds per section): checks that everything works; rough figures.
    #[arg(long)]
    pub quick: bool,
    /// Scenario folder (lab section).
    #[arg(long, default_value = "scenarios")]
    pub scenarios: PathBuf,
    /// Kernel manifest folder (lab section, QEMU part).
    #[arg(long, default_value = "kernels")]
    pub manifests: PathBuf,
    /// Verifier snapshot folder.
    #[arg(long, default_value = verifier::SNAPSHOT_DIR)]
    pub snapshots: PathBuf,
    /// Kernels of the verifier section: `host`, cached manifest names
    /// (`5.10,6.1,6.12`, each booted once in QEMU) or `all`. Default: the
    /// host and every cached kernel (`--quick`: the host only).
    #[arg(long, value_delimiter = ',')]
    pub kernel: Vec<String>,
    /// The tclab-agent binary (footprint section; default: next to tclab).
    #[arg(long)]
    pub agent: Option<PathBuf>,
}

/// `tclab bench`: run, print, and exit 1 only if a section could not run
/// (a missed target is a figure, not a failure).
///
/// # Errors
/// Bad section names, not root, or the report could not be printed.
pub fn main(args: BenchArgs) -> anyhow::Result<std::process::ExitCode> {
    let sections = args.sections.iter().map(|s| Section::parse(s)).collect::<anyhow::Result<Vec<_>>>()?;
    let command = std::iter::once("tclab".to_owned()).chain(std::env::args().skip(1)).collect::<Vec<_>>().join(" ");
    let opts = BenchOptions {
        quick: args.quick,
        sections,
        scenarios: args.scenarios,
        manifests: args.manifests,
        snapshots: args.snapshots,
        kernels: args.kernel,
        agent: args.agent,
        command,
    };
    let _signals = crate::interrupt::install().context("failed to install the SIGINT/SIGTERM handler")?;
    let report = run(&opts, |line| eprintln!("{line}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).context("serialise the report")?);
    } else {
        print!("{}", report.to_markdown());
    }
    Ok(if report.any_failed() { std::process::ExitCode::FAILURE } else { std::process::ExitCode::SUCCESS })
}
