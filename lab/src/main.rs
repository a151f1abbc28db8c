//! `tclab`: the conformance lab's command line.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use tclab_lab::runner::{self, KernelContext, RunOptions, ScenarioOutcome, Status};
use tclab_lab::snapshot::{self, PendingWrites, ReviewDecision, SnapshotStore};
use tclab_lab::{doctor, scenario};

/// Exit code when the lab itself could not run (as opposed to a failed scenario).
const EXIT_INFRA: u8 = 2;

#[derive(Parser)]
#[command(name = "tclab", version, about = "Prove that TC programs behave the same on every kernel, attach mode and lockdown mode")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run scenario files on the host kernel (inside throwaway network namespaces).
    Run(RunArgs),
    /// Replay one capture through the agent (or a small chain) and print the
    /// spans and the CT table it produced.
    ///
    /// The device under test holds the --local addresses: packets sent from
    /// them cross its TC egress, every other packet (non-IP included)
    /// arrives on its TC ingress, in capture order, inside throwaway network
    /// namespaces. IP addresses are kept as captured. Spans are printed the
    /// way tclab-agent prints them (Beyla's text format; the ids the
    /// datapath generates are sequential, so runs are reproducible), the CT
    /// table the way `tclab-agent ct list` does (the shape of `cilium bpf ct
    /// list global`). Example:
    /// tclab replay fixtures/traceparent-valid.pcap --local 10.0.0.2
    Replay {
        /// The capture: pcap or pcapng; Ethernet, Linux cooked (SLL, SLL2) or raw IP.
        pcap: PathBuf,
        /// Address of the capture's host whose TC hooks to replay through
        /// (one IPv4 and/or one IPv6 address: repeat the flag).
        #[arg(long, required = true)]
        local: Vec<std::net::IpAddr>,
        /// Comma-separated PROGRAM[@ATTACH], in order. PROGRAM: agent, pass,
        /// unspec, drop, counter. ATTACH: tcx (tail), tcx:head, tcx:tail or
        /// netlink:PRIORITY[:HANDLE]; without it the agent attaches by its own
        /// rules (TCX head, else netlink priority 1) and others at the TCX
        /// tail. E.g. `agent,counter,drop@netlink:10`. Or a scenario file
        /// (x.toml) whose [[chain]] and [agent] to use.
        #[arg(long, default_value = tclab_lab::adhoc::DEFAULT_CHAIN)]
        chain: String,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Accept or reject pending snapshots (`.snap.new`) left by failed runs.
    Review {
        /// Snapshot folder.
        #[arg(long, default_value = "scenarios/snapshots")]
        snapshots: PathBuf,
        /// Accept every pending snapshot without asking.
        #[arg(long, conflicts_with = "reject")]
        accept: bool,
        /// Reject every pending snapshot without asking.
        #[arg(long)]
        reject: bool,
    },
    /// Check scenario files without running them.
    Check {
        /// Scenario files or folders.
        #[arg(default_value = "scenarios")]
        paths: Vec<PathBuf>,
    },
    /// Pinned distro kernels for the kernel matrix (manifests in kernels/).
    Kernels {
        #[command(subcommand)]
        command: KernelsCommand,
        /// Manifest folder.
        #[arg(long, global = true, default_value = "kernels")]
        manifests: PathBuf,
    },
    /// Regenerate the deterministic fixtures (pcaps made with etherparse).
    Fixtures {
        #[arg(long, default_value = "fixtures")]
        dir: PathBuf,
    },
    /// List what this machine lacks, with the command that installs it.
    Doctor {
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Benchmarks (issue #8): per-packet cost, CT pressure, verifier budget,
    /// replay throughput, agent footprint, lab speed; ratios to same-run baselines.
    Bench(tclab_lab::bench::BenchArgs),
    /// Test services for context propagation: HTTP servers that call each
    /// other in a chain, each in its own network namespace.
    Testserver(tclab_lab::testserver::TestserverArgs),
    /// What a compiled BPF object holds (programs, sections, maps, globals,
    /// BTF, CO-RE relocations) and whether each program loads on this kernel.
    Inspect {
        object: PathBuf,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
        /// Skip the load-only dry run.
        #[arg(long)]
        no_load: bool,
    },
}
}

#[derive(Subcommand)]
enum KernelsCommand {
    /// Download (private apt configuration), verify and extract kernels into the cache.
    Fetch {
        /// Kernel names (default: every manifest).
        names: Vec<String>,
    },
    /// What is cached and verified.
    List,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Scenario files or folders.
    #[arg(default_value = "scenarios")]
    paths: Vec<PathBuf>,
    /// Only scenarios whose name or tags contain this.
    #[arg(long)]
    filter: Option<String>,
    /// Snapshot folder.
    #[arg(long, default_value = "scenarios/snapshots")]
    snapshots: PathBuf,
    /// Write results.json and output pcaps here.
    #[arg(long)]
    results: Option<PathBuf>,
    /// After the run, review the pending snapshots it left.
    #[arg(long)]
    review: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

fn main() -> ExitCode {
    if tclab_lab::guest::is_guest() {
        // As the VM's /init: set up, probe, report on the console, reboot.
        tclab_lab::guest::main(|_request, _sink| Ok(()));
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("TCLAB_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_INFRA)
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => run(args),
        Command::Replay { pcap, local, chain, output } => replay(&pcap, &local, &chain, output),
        Command::Inspect { object, output, no_load } => {
            let report = tclab_lab::byo::inspect(&object, !no_load)?;
            match output {
                Output::Table => print!("{}", report.text()),
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
            }
            let rejected = report.dry_run.iter().any(|d| matches!(d.load, tclab_lab::byo::LoadCheck::Rejected { .. }));
            Ok(if rejected { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        Command::Review { snapshots, accept, reject } => review(&snapshots, accept, reject),
        Command::Check { paths } => check(&paths),
        Command::Kernels { command, manifests } => kernels(command, &manifests),
        Command::Fixtures { dir } => {
            let written = tclab_lab::fixtures::generate_all(&dir)
                .with_context(|| format!("failed to generate fixtures in {}", dir.display()))?;
            for path in &written {
                println!("{}", path.display());
            }
            println!("{} fixture(s) written", written.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Testserver(args) => tclab_lab::testserver::main(args),
        Command::Bench(args) => tclab_lab::bench::main(args),
        Command::Doctor { output } => {
            let checks = doctor::checks();
            match output {
                Output::Table => print!("{}", doctor::render(&checks)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&checks)?),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Load every scenario under `paths`, reporting every error (not just the first).
fn load(paths: &[PathBuf]) -> anyhow::Result<Vec<scenario::Scenario>> {
    let mut scenarios = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        if path.is_dir() {
            match scenario::load_dir(path) {
                Ok(mut s) => scenarios.append(&mut s),
                Err(mut e) => errors.append(&mut e),
            }
        } else {
            match scenario::load_scenario(path) {
                Ok(s) => scenarios.push(s),
                Err(e) => errors.push(e),
            }
        }
    }
    if !errors.is_empty() {
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        bail!("{} scenario error(s):\n{}", errors.len(), text.join("\n"));
    }
    Ok(scenarios)
}

fn check(paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let scenarios = load(paths)?;
    println!("{} scenario(s) valid", scenarios.len());
    Ok(ExitCode::SUCCESS)
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        bail!("tclab run needs root (CAP_BPF, CAP_NET_ADMIN): sudo -E cargo run --bin tclab -- run");
    }
    let mut scenarios = load(&args.paths)?;
    if let Some(f) = &args.filter {
        scenarios.retain(|s| s.name.contains(f.as_str()) || s.tags.iter().any(|t| t.contains(f.as_str())));
    }
    let _signals = tclab_lab::interrupt::install().context("failed to install the SIGINT/SIGTERM handler")?;
    let opts = RunOptions {
        kernel: KernelContext::probe_running("host"),
        snapshots: SnapshotStore::new(&args.snapshots),
        writes: PendingWrites::from_env(),
        results_dir: args.results.clone(),
    };
    let live = std::io::stderr().is_terminal();
    let outcomes = runner::run_all(&scenarios, &opts, |o| progress_line(o, live));
    print!("{}", runner::summary_table(&outcomes));
    for o in outcomes.iter().filter(|o| o.failed()) {
        if let Some(diff) = &o.diff {
            println!("\n{} ({}):\n{diff}", o.scenario, o.file.display());
        }
    }
    if let Some(dir) = &args.results {
        write_results(dir, &outcomes)?;
    }
    if args.review {
        review(&args.snapshots, false, false)?;
    }
    let failed = outcomes.iter().any(ScenarioOutcome::failed);
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn replay(pcap: &Path, local: &[std::net::IpAddr], chain: &str, output: Output) -> anyhow::Result<ExitCode> {
    use tclab_lab::adhoc;
    let kernel = KernelContext::probe_running("host");
    // Bad input is reported before the root check: it needs no privileges.
    let plan = adhoc::plan(pcap, local, &adhoc::ChainChoice::parse(chain), adhoc::has_tcx(&kernel))?;
    if !nix::unistd::geteuid().is_root() {
        bail!("tclab replay needs root (CAP_BPF, CAP_NET_ADMIN): sudo -E cargo run --bin tclab -- replay …");
    }
    let report = adhoc::run(&plan, kernel).with_context(|| format!("failed to replay {}", pcap.display()))?;
    match output {
        Output::Table => print!("{}", adhoc::render_text(&plan, &report)),
        Output::Json => println!("{}", adhoc::render_json(&plan, &report)?),
    }
    Ok(ExitCode::SUCCESS)
}

fn progress_line(o: &ScenarioOutcome, live: bool) {
    if !live {
        return;
    }
    let status = match &o.status {
        Status::Passed => "pass",
        Status::Failed(_) => "FAIL",
        Status::Skipped(_) => "skip",
    };
    eprintln!("{status} {} ({} ms)", o.scenario, o.duration_ms);
}

fn write_results(dir: &Path, outcomes: &[ScenarioOutcome]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let path = dir.join("results.json");
    let doc = serde_json::json!({ "schema": 1, "scenarios": outcomes });
    let text = serde_json::to_string_pretty(&doc)?;
    std::fs::write(&path, text).with_context(|| format!("failed to write {}", path.display()))?;
    Ok(())
}

fn review(snapshots: &Path, accept: bool, reject: bool) -> anyhow::Result<ExitCode> {
    let store = SnapshotStore::new(snapshots);
    let mut stdout = std::io::stdout();
    let summary = if accept || reject {
        let decision = if accept { ReviewDecision::Accept } else { ReviewDecision::Reject };
        store.review(&mut stdout, |_| Ok(decision))?
    } else {
        if !std::io::stdin().is_terminal() {
            bail!("tclab review asks on a terminal; use --accept or --reject otherwise");
        }
        let stdin = std::io::stdin();
        store.review(&mut std::io::stdout(), |_| {
            snapshot::ask_terminal(&mut stdin.lock(), &mut std::io::stderr())
        })?
    };
    println!("{} accepted, {} rejected, {} skipped", summary.accepted, summary.rejected, summary.skipped);
    Ok(ExitCode::SUCCESS)
}

fn kernels(command: KernelsCommand, manifests: &Path) -> anyhow::Result<ExitCode> {
    use tclab_lab::kernels::{self, Cache, Catalog};
    let catalog = Catalog::load(manifests).with_context(|| format!("failed to load manifests from {}", manifests.display()))?;
    let cache = Cache::default_location()?;
    match command {
        KernelsCommand::Fetch { names } => {
            let fetched = kernels::fetch(&catalog, &names, &cache)?;
            println!("{} kernel(s) ready in {}", fetched.len(), cache.root.display());
        }
        KernelsCommand::List => print!("{}", kernels::list_table(&kernels::list(&catalog, &cache))),
    }
    Ok(ExitCode::SUCCESS)
}
