//! `tclab`: the conformance lab's command line.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use tclab_lab::guest::LockdownMode;
use tclab_lab::matrix::{self, MatrixOptions};
use tclab_lab::report::progress::Progress;
use tclab_lab::report::{HostRun, Report};
use tclab_lab::runner::{self, KernelContext, RunOptions, ScenarioOutcome, Status};
use tclab_lab::vm::Cancel;
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
    /// Run scenario files on the host kernel (inside throwaway network
    /// namespaces), or with --kernel inside QEMU on pinned distro kernels.
    Run(RunArgs),
    /// Merge the reports of `tclab run --shard` jobs (folders holding a
    /// results.json) into one folder: results.json, junit.xml, report.html.
    /// Exits 1 when any merged cell failed.
    Merge {
        /// Report folders (or results.json files) of the shards.
        #[arg(required = true)]
        reports: Vec<PathBuf>,
        /// Where to write the merged reports.
        #[arg(long, value_name = "DIR")]
        report: PathBuf,
    },
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
    /// Differential fuzzing of the datapath's HTTP recogniser and traceparent
    /// validator: BPF classifiers (BPF_PROG_TEST_RUN) against the Rust
    /// reference on generated inputs. Exits 1 on any disagreement.
    FuzzDatapath(tclab_lab::difffuzz::Args),
    /// The agent under load: a million packets through a running tclab-agent
    /// whose CT table overflows; checks it keeps running, its memory stays
    /// bounded and every lost event is counted. Exits 1 when a check fails.
    Soak(tclab_lab::soak::Args),
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
        /// Also dry-run on these cached kernels in QEMU (`5.10,6.1,6.12` or
        /// `all`): which kernels' verifiers accept each program.
        #[arg(long, value_delimiter = ',')]
        kernel: Vec<String>,
        /// Lockdown modes for --kernel (default: none).
        #[arg(long, value_delimiter = ',')]
        lockdown: Vec<String>,
        /// Kernel manifest folder.
        #[arg(long, default_value = "kernels")]
        manifests: PathBuf,
    },
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
    /// Write the reports here: results.json (schema 3), junit.xml and a
    /// self-contained report.html, plus the host run's output pcaps.
    #[arg(long, visible_alias = "results", value_name = "DIR")]
    report: Option<PathBuf>,
    /// Run only shard I of N of the kernel × lockdown cells (the host
    /// kernel counts as one), e.g. `--shard 2/3`: N jobs given the same
    /// selection run every cell exactly once.
    #[arg(long, value_name = "I/N")]
    shard: Option<tclab_lab::shard::Shard>,
    /// After the run, review the pending snapshots it left.
    #[arg(long)]
    review: bool,
    /// Kernels to run on: `host` (default), manifest names from kernels/
    /// (`5.10,6.1,6.12`), or `all` (every manifest). Non-host kernels boot
    /// in QEMU; fetch them first with `tclab kernels fetch`.
    #[arg(long, value_delimiter = ',', default_value = "host")]
    kernel: Vec<String>,
    /// Lockdown modes for QEMU kernels: none, integrity, confidentiality, or
    /// `all` (default: none).
    #[arg(long, value_delimiter = ',')]
    lockdown: Vec<String>,
    /// Cells (VMs) run at once (default: the number of cores; under TCG,
    /// one and a half per core).
    #[arg(short = 'j', long)]
    jobs: Option<usize>,
    /// Kernel manifest folder.
    #[arg(long, default_value = "kernels")]
    manifests: PathBuf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

fn main() -> ExitCode {
    if tclab_lab::guest::is_guest() {
        // As the VM's /init: set up, probe, run the cell's scenarios, report
        // on the console, reboot.
        tclab_lab::guest::main(tclab_lab::matrix::work::run_in_guest);
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
        Command::Merge { reports, report } => merge(&reports, &report),
        Command::Inspect { object, output, no_load, kernel, lockdown, manifests } => {
            inspect(&object, output, no_load, &kernel, &lockdown, &manifests)
        }
        Command::Replay { pcap, local, chain, output } => replay(&pcap, &local, &chain, output),
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
        Command::Bench(args) => tclab_lab::bench::main(args),
        Command::FuzzDatapath(args) => tclab_lab::difffuzz::main(args),
        Command::Soak(args) => tclab_lab::soak::main(args),
        Command::Testserver(args) => tclab_lab::testserver::main(args),
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
    let mut targets = Targets::resolve(&args.kernel, &args.lockdown, &args.manifests)?;
    let only = targets.shard(args.shard);
    let _signals = tclab_lab::interrupt::install().context("failed to install the SIGINT/SIGTERM handler")?;
    let progress = Progress::new(std::io::stderr().is_terminal());
    let mut outcomes = Vec::new();
    let mut host_run = None;
    if targets.host {
        let kernel = KernelContext::probe_running("host");
        let label = format!("host/{}", runner::lockdown_name(kernel.lockdown));
        progress.plan(&label, scenarios.len());
        let opts = RunOptions {
            kernel,
            snapshots: SnapshotStore::new(&args.snapshots),
            writes: PendingWrites::from_env(),
            results_dir: args.report.clone(),
        };
        outcomes = runner::run_all(&scenarios, &opts, |o| progress.host_outcome(&label, o));
        progress.finish(&label, host_line(&label, &outcomes));
        host_run = Some(HostRun { outcomes: outcomes.clone(), capabilities: host_capabilities() });
    }
    let mut cells = Vec::new();
    if !targets.kernels.is_empty() && !tclab_lab::interrupt::requested() {
        let mut opts = MatrixOptions::new(targets.kernels, targets.lockdowns, SnapshotStore::new(&args.snapshots));
        if let Some(j) = args.jobs {
            opts.jobs = j.max(1);
        }
        opts.cancel = Some(Cancel::when(tclab_lab::interrupt::requested));
        for k in &opts.kernels {
            for &l in &opts.lockdowns {
                if only.as_ref().is_none_or(|o| o.contains(&(k.info.name.clone(), l))) {
                    progress.plan(&format!("{}/{l}", k.info.name), scenarios.len());
                }
            }
        }
        opts.only = only;
        opts.observer = progress.observer();
        cells = matrix::run(&scenarios, &opts, |c| progress.cell_done(c)).context("failed to prepare the kernel matrix")?;
        outcomes.extend(cells.iter().flat_map(|c| c.outcomes.iter().cloned()));
    }
    print!("{}", runner::summary_table(&outcomes));
    for c in cells.iter().filter(|c| c.failure.is_some()) {
        println!("\ncell {} failed: {}", c.label(), c.failure.as_deref().unwrap_or_default());
        for line in &c.console_excerpt {
            println!("  | {line}");
        }
    }
    for o in outcomes.iter().filter(|o| o.failed()) {
        if let Some(diff) = &o.diff {
            println!("\n{} on {}/{} ({}):\n{diff}", o.scenario, o.kernel, runner::lockdown_name(o.lockdown), o.file.display());
        }
    }
    if let Some(dir) = &args.report {
        let report = Report::build(host_run.as_ref(), &cells, args.shard.map(|s| s.to_string()));
        report.write(dir).with_context(|| format!("failed to write the reports in {}", dir.display()))?;
        eprintln!("reports: {}", dir.join(tclab_lab::report::REPORT_HTML).display());
    }
    if args.review {
        review(&args.snapshots, false, false)?;
    }
    // An interrupted run did not run everything: never report it as a pass.
    if let Some(code) = tclab_lab::interrupt::exit_code() {
        return Ok(ExitCode::from(code));
    }
    let failed = outcomes.iter().any(ScenarioOutcome::failed) || cells.iter().any(|c| c.failure.is_some());
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// `tclab inspect`: the object's facts and dry run here, and on each
/// `--kernel` in QEMU. Exits 1 when any kernel rejects a program.
fn inspect(
    object: &Path,
    output: Output,
    no_load: bool,
    kernels: &[String],
    lockdowns: &[String],
    manifests: &Path,
) -> anyhow::Result<ExitCode> {
    let report = tclab_lab::byo::inspect(object, !no_load)?;
    let targets = if kernels.is_empty() {
        None
    } else {
        let t = Targets::resolve(kernels, lockdowns, manifests)?;
        let _signals = tclab_lab::interrupt::install().context("failed to install the SIGINT/SIGTERM handler")?;
        Some(matrix::dry_run::run(object, &t.kernels, &t.lockdowns, tclab_lab::vm::default_jobs(), None))
    };
    match output {
        Output::Table => {
            print!("{}", report.text());
            if let Some(runs) = &targets {
                print!("{}", matrix::dry_run::table(runs));
            }
        }
        Output::Json => {
            let doc = serde_json::json!({ "object": report, "kernels": targets });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
    }
    let rejected = report.dry_run.iter().any(|d| matches!(d.load, tclab_lab::byo::LoadCheck::Rejected { .. }))
        || targets.iter().flatten().any(|r| !r.all_load());
    Ok(if rejected { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Where `tclab run` runs: the host kernel and/or QEMU cells.
struct Targets {
    host: bool,
    kernels: Vec<tclab_lab::kernels::CachedKernel>,
    lockdowns: Vec<LockdownMode>,
}

impl Targets {
    /// Keep only this shard's units; the QEMU cells it keeps, for
    /// [`MatrixOptions::only`] (`None` without `--shard`).
    fn shard(&mut self, shard: Option<tclab_lab::shard::Shard>) -> Option<Vec<(String, LockdownMode)>> {
        use tclab_lab::shard::Unit;
        let shard = shard?;
        let mut units: Vec<Unit> = Vec::new();
        if self.host {
            units.push(Unit::host());
        }
        for k in &self.kernels {
            units.extend(self.lockdowns.iter().map(|&l| Unit::cell(&k.info.name, l)));
        }
        let mine = shard.select(&units);
        let names: Vec<String> = mine.iter().map(ToString::to_string).collect();
        eprintln!("shard {shard}: {} of {} cell(s): {}", mine.len(), units.len(), if names.is_empty() { "none".into() } else { names.join(", ") });
        self.host = mine.iter().any(Unit::is_host);
        let cells: Vec<(String, LockdownMode)> = mine.into_iter().filter_map(|u| Some((u.kernel, u.lockdown?))).collect();
        self.kernels.retain(|k| cells.iter().any(|(name, _)| *name == k.info.name));
        Some(cells)
    }

    fn resolve(kernel_args: &[String], lockdown_args: &[String], manifests: &Path) -> anyhow::Result<Targets> {
        use tclab_lab::kernels::{Cache, Catalog};
        let host = kernel_args.iter().any(|k| k == "host");
        let names: Vec<String> = kernel_args.iter().filter(|k| *k != "host").cloned().collect();
        let lockdowns: Vec<LockdownMode> = if lockdown_args.iter().any(|l| l == "all") {
            LockdownMode::ALL.to_vec()
        } else if lockdown_args.is_empty() {
            vec![LockdownMode::None]
        } else {
            lockdown_args
                .iter()
                .map(|l| l.parse::<LockdownMode>().map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<_>>()?
        };
        if names.is_empty() {
            if !lockdown_args.is_empty() {
                bail!("--lockdown applies to QEMU kernels (--kernel 5.10,6.1,6.12 or all); the host kernel runs in its own mode");
            }
            return Ok(Targets { host, kernels: Vec::new(), lockdowns });
        }
        let catalog = Catalog::load(manifests)
            .with_context(|| format!("failed to load kernel manifests from {}", manifests.display()))?;
        let cache = Cache::default_location()?;
        let mut kernels = Vec::new();
        for m in catalog.select(&names)? {
            kernels.push(cache.kernel(m).with_context(|| format!("kernel {} is not ready: run `tclab kernels fetch {}`", m.name, m.name))?);
        }
        Ok(Targets { host, kernels, lockdowns })
    }
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

fn merge(inputs: &[PathBuf], out: &Path) -> anyhow::Result<ExitCode> {
    let reports = inputs.iter().map(|p| tclab_lab::report::json::read(p)).collect::<Result<Vec<_>, _>>()?;
    let merged = Report::merge(reports);
    merged.write(out).with_context(|| format!("failed to write the reports in {}", out.display()))?;
    print!("{}", merged.summary_text());
    eprintln!("reports: {}", out.join(tclab_lab::report::REPORT_HTML).display());
    Ok(if merged.failed() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// The host run's verdict line, shaped like [`matrix::cell_line`].
fn host_line(label: &str, outcomes: &[ScenarioOutcome]) -> String {
    let count = |f: fn(&Status) -> bool| outcomes.iter().filter(|o| f(&o.status)).count();
    let failed = count(|s| matches!(s, Status::Failed(_)));
    let secs: u128 = outcomes.iter().map(|o| o.duration_ms).sum();
    format!(
        "{} {label:<22} {} passed, {failed} failed, {} skipped ({:.1}s)",
        if failed > 0 { "FAIL" } else { "pass" },
        count(|s| matches!(s, Status::Passed)),
        count(|s| matches!(s, Status::Skipped(_))),
        secs as f64 / 1000.0
    )
}

/// The host kernel's probe, as the capability text the cells have.
fn host_capabilities() -> Option<String> {
    let probe = serde_json::to_value(tclab_datapath::probe::KernelFeatures::probe()).ok()?;
    Some(matrix::capabilities::render(&probe))
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
