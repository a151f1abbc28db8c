//! `tclab-agent`: a thin CLI over `tclab_datapath::agent`.
//!
//! SIGINT/SIGTERM only set a flag; the main loop notices within one poll
//! interval, detaches everything and exits 0. Errors exit 1.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};
use tclab_datapath::agent::{Agent, AgentConfig};
use tclab_datapath::attach::{Backend, DEFAULT_PRIORITY};
use tclab_datapath::chain;
use tclab_datapath::ct;
use tclab_datapath::loader::{self, CtMapKind, DatapathConfig};
use tclab_datapath::metrics::{DEFAULT_METRICS_ADDR, MetricsServer};
use tclab_datapath::otlp::OtlpConfig;
use tclab_datapath::probe::KernelFeatures;

/// How often the run loop wakes up to check for signals and refresh metrics.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How often expired CT entries are deleted (the kernel never deletes them).
const GC_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Parser, Debug)]
#[command(name = "tclab-agent", version, about = "Attach tclab's TC datapath and print HTTP spans")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Attach to interfaces and print one line per HTTP span.
    Run(RunArgs),
    /// Show what this kernel offers the datapath.
    Probe {
        #[arg(long, value_enum, default_value_t = TableOrJson::Table)]
        output: TableOrJson,
    },
    /// Connection tracking.
    Ct {
        #[command(subcommand)]
        command: CtCommand,
    },
    /// Show the ordered TC chain of a device (TCX and netlink together).
    Chain {
        #[arg(long)]
        iface: String,
        #[arg(long, value_enum, default_value_t = TextOrJson::Text)]
        output: TextOrJson,
    },
}

#[derive(Subcommand, Debug)]
enum CtCommand {
    /// List the CT table of a running agent, like `cilium bpf ct list global`.
    List {
        #[arg(long, value_enum, default_value_t = TextOrJson::Text)]
        output: TextOrJson,
        /// Pick the CT map by BPF map id when several agents run.
        #[arg(long, conflicts_with = "pid")]
        map_id: Option<u32>,
        /// Pick the CT map of the agent with this process id.
        #[arg(long)]
        pid: Option<u32>,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Interface to attach to (repeatable).
    #[arg(long = "iface", required = true)]
    ifaces: Vec<String>,
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// Netlink filter priority (netlink backend).
    #[arg(long, default_value_t = DEFAULT_PRIORITY)]
    priority: u16,
    #[arg(long, value_enum, default_value_t = TextOrJson::Text)]
    output: TextOrJson,
    /// Prometheus endpoint.
    #[arg(long, default_value = DEFAULT_METRICS_ADDR)]
    metrics_addr: SocketAddr,
    #[arg(long, default_value_t = loader::DEFAULT_CT_MAX_ENTRIES)]
    ct_max_entries: u32,
    #[arg(long, value_enum, default_value_t = CtMapArg::Lru)]
    ct_map: CtMapArg,
    /// Size of the events ring buffer in bytes (a power of two); a reader
    /// that falls behind by more than this loses events (counted).
    #[arg(long, default_value_t = loader::DEFAULT_EVENTS_RING_BYTES)]
    ring_size: u32,
    /// Service name shown in `svc=[…]`.
    #[arg(long, default_value = "tclab")]
    service_name: String,
    /// Run each foreign program that runs before ours once on a probe TCP SYN
    /// and report its verdict (the program really runs: its maps see it).
    #[arg(long)]
    dry_run_chain: bool,
    /// Also export spans over OTLP/HTTP (protobuf) to this collector base URL
    /// (`v1/traces` is appended), e.g. http://localhost:4318. Without it,
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (as is) or OTEL_EXPORTER_OTLP_ENDPOINT
    /// are used when set; OTEL_EXPORTER_OTLP_HEADERS, OTEL_EXPORTER_OTLP_TIMEOUT,
    /// OTEL_SERVICE_NAME and OTEL_BSP_* are honoured.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// Context propagation: disabled, headers, tcp, ip or all (see
    /// docs/propagation.md).
    #[arg(long, env = tclab_datapath::propagation::ENV_MODE, default_value = "disabled")]
    propagation: tclab_datapath::propagation::Mode,
    /// cgroup v2 folder whose sockets and threads propagation covers
    /// (default: the root of the cgroup2 mount, i.e. every process).
    #[arg(long, value_name = "PATH")]
    propagation_cgroup: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum TableOrJson {
    Table,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum TextOrJson {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum BackendArg {
    Auto,
    Tcx,
    Netlink,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CtMapArg {
    Lru,
    Hash,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tclab-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cmd: Command) -> Result<()> {
    match cmd {
        Command::Run(args) => run(args),
        Command::Probe { output } => {
            let f = KernelFeatures::probe();
            match output {
                TableOrJson::Table => print!("{}", f.to_table()),
                TableOrJson::Json => println!("{}", serde_json::to_string_pretty(&f).context("failed to serialise the probe")?),
            }
            Ok(())
        }
        Command::Ct { command: CtCommand::List { output, map_id, pid } } => ct_list(output, map_id, pid),
        Command::Chain { iface, output } => {
            // Ours = any tclab agent's classifiers (we are another process).
            let c = chain::read_chain(&iface, &chain::agent_program_ids())
                .with_context(|| format!("failed to read the chain of {iface}"))?;
            match output {
                TextOrJson::Text => print!("{}", c.to_table()),
                TextOrJson::Json => println!("{}", serde_json::to_string_pretty(&c).context("failed to serialise the chain")?),
            }
            Ok(())
        }
    }
}

fn ct_list(output: TextOrJson, map_id: Option<u32>, pid: Option<u32>) -> Result<()> {
    // Found by name among the kernel's maps: nothing is pinned, nothing to clean up.
    let map = match pid {
        Some(pid) => ct::find_map_of_process(loader::MAP_CT, pid),
        None => ct::find_loaded_map(loader::MAP_CT, map_id),
    }
    .context("failed to open the CT map of a running agent")?;
    let records = ct::read_ct(&map, loader::MAP_CT).context("failed to read the CT map")?;
    let now = ct::monotonic_now_ns();
    match output {
        TextOrJson::Text => {
            for r in &records {
                println!("{}", r.cilium_line(now));
            }
        }
        TextOrJson::Json => {
            println!("{}", serde_json::to_string_pretty(&ct::to_json(&records, now)).context("failed to serialise the CT table")?)
        }
    }
    Ok(())
}

fn install_signal_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).with_context(|| format!("failed to install the handler for signal {sig}"))?;
    }
    Ok(stop)
}

fn run(args: RunArgs) -> Result<()> {
    let stop = install_signal_flag()?;
    let otlp = OtlpConfig::resolve(args.otlp_endpoint.as_deref(), |name| std::env::var(name).ok())
        .context("failed to read the OTLP export settings")?;
    let config = AgentConfig {
        ifaces: args.ifaces.clone(),
        backend: match args.backend {
            BackendArg::Auto => Backend::Auto,
            BackendArg::Tcx => Backend::Tcx,
            BackendArg::Netlink => Backend::Netlink,
        },
        priority: args.priority,
        datapath: DatapathConfig {
            ct_max_entries: args.ct_max_entries,
            events_ring_bytes: args.ring_size,
            ct_map: match args.ct_map {
                CtMapArg::Lru => CtMapKind::Lru,
                CtMapArg::Hash => CtMapKind::Hash,
            },
            ..DatapathConfig::default()
        },
        service_name: args.service_name.clone(),
        dry_run_chain: args.dry_run_chain,
        otlp,
        propagation: tclab_datapath::propagation::PropagationConfig {
            mode: args.propagation,
            cgroup: args.propagation_cgroup.clone(),
            ..Default::default()
        },
        ..AgentConfig::default()
    };
    // A few loads, once: a kept copy of the parsed kernel BTF (13 MB on
    // 6.18) would only raise the agent's peak memory.
    tclab_datapath::kernel_btf::keep_parsed(false);
    let mut agent = Agent::start(config).with_context(|| format!("failed to start the agent on {}", args.ifaces.join(", ")))?;
    let _metrics = MetricsServer::start(args.metrics_addr, agent.metrics())
        .with_context(|| format!("failed to serve metrics on {}", args.metrics_addr))?;
    tracing::info!(api = %agent.api(), ifaces = ?args.ifaces, "attached; printing spans");
    let result = run_loop(&mut agent, &args, &stop);
    let detached = agent.stop().context("failed to detach cleanly");
    result.and(detached)
}

fn run_loop(agent: &mut Agent, args: &RunArgs, stop: &AtomicBool) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    let (mut last_metrics, mut last_gc) = (Instant::now(), Instant::now());
    while !stop.load(Ordering::Relaxed) {
        for span in agent.poll_spans(POLL_INTERVAL) {
            let line = match args.output {
                TextOrJson::Text => span.beyla_line(agent.clock(), agent.service_name()),
                TextOrJson::Json => span.to_json(),
            };
            writeln!(stdout, "{line}").context("failed to write a span to stdout")?;
            stdout.flush().context("failed to flush stdout")?;
        }
        if last_gc.elapsed() >= GC_INTERVAL {
            last_gc = Instant::now();
            match agent.datapath().ct_gc(ct::monotonic_now_ns()) {
                Ok(n) if n > 0 => tracing::debug!(removed = n, "CT garbage collection"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "CT garbage collection failed"),
            }
        }
        if last_metrics.elapsed() >= Duration::from_secs(1) {
            last_metrics = Instant::now();
            agent.refresh_metrics();
        }
    }
    tracing::info!("signal received: detaching");
    Ok(())
}
