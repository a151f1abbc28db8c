//! `tclab soak`: the agent under load (issue #9). A real `tclab-agent run`
//! process, attached (TCX or netlink, its own choice) to one end of a veth
//! pair in throwaway namespaces, with a plain hash CT table far smaller than
//! the traffic, takes `--packets` packets (HTTP/1.1 connections of 8
//! packets on fresh tuples, requests with a traceparent) as fast as a
//! batched AF_PACKET sender goes: the table is pushed past full and the
//! ring buffer overflows.
//!
//! Checked, each a line of the report and a reason to exit 1:
//! * the agent is still running afterwards, answers its metrics endpoint,
//!   and exits 0 on SIGTERM;
//! * the datapath's packet count (`tclab_packets_total`) is reported next
//!   to what was sent and the veths' drop counters (a figure, not a check:
//!   on the development host whole 64-frame sendmmsg batches sent on the
//!   device are now and then never seen by its TC egress -- the program's
//!   own run_cnt agrees with the counter -- with no drop counter moving;
//!   cause not found);
//! * the CT table was pushed past full, and its failed inserts counted
//!   (`tclab_ct_insert_failures_total`);
//! * no loss goes uncounted: the connections without a span are at most the
//!   events counted lost (`tclab_events_lost_total`) plus the packets the
//!   datapath never saw (a connection's span needs its request and its
//!   response event);
//! * memory is bounded: RSS, sampled every 100 ms, grows by at most
//!   `--max-rss-growth-mib` from the end of the first quarter of the run to
//!   its end.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use tclab_datapath::frames::{self, MAC_A, MAC_B, TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN, TP};
use tclab_net::NetNs;

use crate::bench::inject::{BatchInjector, MAX_BATCH};
use crate::bench::packet::fresh_source;

/// Packets per connection.
const PER_CONN: u64 = 8;
/// Connections sent phase by phase, so each batch is one direction.
const GROUP: u32 = 64;
/// The agent's metrics endpoint, inside the device's namespace.
const METRICS: &str = "127.0.0.1:9464";

/// `tclab soak` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Packets to send (rounded down to whole 8-packet connections).
    #[arg(long, default_value_t = 1_000_000)]
    pub packets: u64,
    /// Size of the agent's (hash) CT table: far below the connections, so it fills.
    #[arg(long, default_value_t = 16_384)]
    pub ct_max_entries: u32,
    /// RSS growth allowed from the end of the run's first quarter to its end.
    #[arg(long, default_value_t = 16.0)]
    pub max_rss_growth_mib: f64,
    /// The tclab-agent binary (default: next to tclab).
    #[arg(long)]
    pub agent: Option<PathBuf>,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What a soak run measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Outcome {
    pub connections: u64,
    pub packets_sent: u64,
    pub send_seconds: f64,
    /// From the end of sending to the agent's metrics showing every packet.
    pub settle_seconds: f64,
    pub packets_seen: u64,
    /// Frames the kernel dropped between the veth ends before TC ran
    /// (receive backlog full): the device's rx_dropped, the peer's tx_dropped.
    pub kernel_drops: u64,
    pub drop_counters: Vec<(String, u64)>,
    pub spans: u64,
    pub events_lost: u64,
    pub ct_insert_failures: u64,
    pub ct_entries: u64,
    pub ct_max_entries: u32,
    pub rss_start_mib: f64,
    pub rss_quarter_mib: f64,
    pub rss_max_mib: f64,
    pub rss_end_mib: f64,
    pub rss_hwm_mib: f64,
    pub rss_samples: usize,
    pub alive_after_load: bool,
    pub exit_status: String,
    /// Checks that failed (empty: all held).
    pub problems: Vec<String>,
}

/// Kills the agent if the run ends early, so it never outlives us.
struct AgentProcess(Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn status_mib(pid: u32, field: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// rx_dropped and tx_dropped of `dev` in the namespace (/proc/thread-self/net/dev:
/// /proc/self/net is the main thread's namespace).
fn dev_drops(ns: &NetNs, dev: &str) -> (u64, u64) {
    let text = ns.run(|| std::fs::read_to_string("/proc/thread-self/net/dev")).unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.trim_start().starts_with(&format!("{dev}:"))) else {
        tracing::warn!("no {dev} in /proc/thread-self/net/dev: {text}");
        return (0, 0);
    };
    let f: Vec<u64> = line.split_once(':').map(|(_, r)| r.split_whitespace().filter_map(|x| x.parse().ok()).collect()).unwrap_or_default();
    (f.get(3).copied().unwrap_or(0), f.get(11).copied().unwrap_or(0))
}

/// One scrape of the agent's metrics, as `name{labels}` → value.
fn scrape(dut: &NetNs) -> anyhow::Result<Vec<(String, f64)>> {
    let text = dut
        .run(|| -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(&METRICS.parse().expect("constant address"), Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })
        .with_context(|| format!("scrape the agent's metrics on {METRICS}"))?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("tclab_"))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| Some((k.to_owned(), v.parse().ok()?))))
        .collect())
}

fn metric(m: &[(String, f64)], name: &str) -> u64 {
    m.iter().filter(|(k, _)| k == name || k.starts_with(&format!("{name}{{"))).map(|(_, v)| *v as u64).sum()
}

/// The frames of phase `phase` for connections `ids`, and whether they go
/// from the device (egress) rather than the peer (ingress).
fn phase_frames(ids: std::ops::Range<u32>, phase: u64, req: &[u8], resp: &[u8]) -> (bool, Vec<Vec<u8>>) {
    let server = frames::sa("10.0.0.2:80");
    let mut device = false;
    let out = ids
        .map(|i| {
            let c = fresh_source(i);
            let (from_device, f) = match phase {
                0 => (false, frames::tcp(c, server, TCP_SYN, b"")),
                1 => (true, frames::tcp(server, c, TCP_SYN | TCP_ACK, b"")),
                2 => (false, frames::tcp(c, server, TCP_ACK, b"")),
                3 => (false, frames::tcp(c, server, TCP_ACK | TCP_PSH, req)),
                4 => (true, frames::tcp(server, c, TCP_ACK | TCP_PSH, resp)),
                5 => (false, frames::tcp(c, server, TCP_ACK, b"")),
                6 => (false, frames::tcp(c, server, TCP_FIN | TCP_ACK, b"")),
                _ => (true, frames::tcp(server, c, TCP_FIN | TCP_ACK, b"")),
            };
            device = from_device;
            f
        })
        .collect();
    (device, out)
}

/// Run the soak.
///
/// # Errors
/// The topology, the agent or the sender could not be set up (a failed
/// check is not an error: it is in [`Outcome::problems`]).
pub fn run(args: &Args) -> anyhow::Result<Outcome> {
    if !nix::unistd::geteuid().is_root() {
        bail!("tclab soak needs root (CAP_BPF, CAP_NET_ADMIN)");
    }
    let agent_bin = match &args.agent {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("failed to find the running executable")?.with_file_name("tclab-agent"),
    };
    if !agent_bin.is_file() {
        bail!("{} does not exist: build it (cargo build --bin tclab-agent) or pass --agent PATH", agent_bin.display());
    }
    let connections = args.packets / PER_CONN;
    if connections == 0 || connections >= 1 << 22 {
        bail!("--packets {}: between {PER_CONN} and {} (fresh 10.64.0.0/10 sources)", args.packets, (1u64 << 22) * PER_CONN);
    }
    let mut out = Outcome { connections, ct_max_entries: args.ct_max_entries, ..Outcome::default() };
    let tag = format!("tclab-soak-{}", std::process::id());
    let dut = NetNs::new(&format!("{tag}-dut"))?;
    let peer = NetNs::new(&format!("{tag}-peer"))?;
    let pair = tclab_net::create_veth_pair(&dut, "sdut", &peer, "speer", Some((MAC_B, MAC_A)))?;
    let (dev_idx, peer_idx) = (pair.a.ifindex, pair.b.ifindex);

    let ct_max = args.ct_max_entries.to_string();
    let child = dut
        .run(|| {
            Command::new(&agent_bin)
                .args(["run", "--iface", "sdut", "--ct-map", "hash", "--ct-max-entries", &ct_max])
                .args(["--output", "json", "--metrics-addr", METRICS])
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
        })
        .with_context(|| format!("start {}", agent_bin.display()))?;
    let mut proc = AgentProcess(child);
    let pid = proc.0.id();
    let spans = Arc::new(AtomicU64::new(0));
    let stdout = proc.0.stdout.take().ok_or_else(|| anyhow!("no agent stdout"))?;
    let stderr = proc.0.stderr.take().ok_or_else(|| anyhow!("no agent stderr"))?;
    let counter = spans.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with('{') {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("attached") {
                let _ = tx.send(());
            }
            if let Ok(mut l) = sink.lock() {
                l.push(line);
            }
        }
    });
    if rx.recv_timeout(Duration::from_secs(30)).is_err() {
        let log = log.lock().map(|l| l.join("\n")).unwrap_or_default();
        bail!("the agent did not attach within 30 s:\n{log}");
    }
    out.rss_start_mib = status_mib(pid, "VmRSS").unwrap_or(0.0);

    // RSS sampler
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::<f64>::new()));
    let sampler = {
        let (stop, samples) = (stop.clone(), samples.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let (Some(r), Ok(mut s)) = (status_mib(pid, "VmRSS"), samples.lock()) {
                    s.push(r);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    // the load
    let peer_inj = peer.run(|| BatchInjector::open(peer_idx, false)).context("open the peer's injector")?;
    let dev_inj = dut.run(|| BatchInjector::open(dev_idx, false)).context("open the device's injector")?;
    let req = frames::request("GET", "/api/v1/items?id=42", &[&format!("traceparent: {TP}"), "Accept: */*"]);
    let resp = frames::response(200, "OK");
    let started = Instant::now();
    let mut first = 1u32;
    let last = connections as u32;
    while first <= last {
        let end = (first + GROUP).min(last + 1);
        for phase in 0..PER_CONN {
            let (from_device, batch) = phase_frames(first..end, phase, &req, &resp);
            let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
            let inj = if from_device { &dev_inj } else { &peer_inj };
            out.packets_sent += inj.send_all(&refs, MAX_BATCH).context("send frames")?;
        }
        first = end;
    }
    out.send_seconds = started.elapsed().as_secs_f64();

    // let the agent drain its ring buffer: spans stop moving for a second
    let mut last_spans = u64::MAX;
    let drain_deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < drain_deadline {
        std::thread::sleep(Duration::from_secs(1));
        let now = spans.load(Ordering::Relaxed);
        if now == last_spans {
            break;
        }
        last_spans = now;
    }
    // the agent refreshes its metrics about every second, when its loop
    // gets there: scrape until the packet count stops moving
    let mut m = scrape(&dut);
    let settle = Instant::now() + Duration::from_secs(30);
    let (mut last_seen, mut since) = (None, Instant::now());
    while Instant::now() < settle {
        let seen = m.as_ref().ok().map(|m| metric(m, "tclab_packets_total"));
        if seen == Some(out.packets_sent) || (seen.is_some() && since.elapsed() > Duration::from_secs(4)) {
            break;
        }
        if seen != last_seen {
            (last_seen, since) = (seen, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(500));
        m = scrape(&dut);
    }
    out.settle_seconds = started.elapsed().as_secs_f64() - out.send_seconds;
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    out.alive_after_load = proc.0.try_wait()?.is_none();
    out.rss_hwm_mib = status_mib(pid, "VmHWM").unwrap_or(0.0);
    let (dev_rx, dev_tx) = dev_drops(&dut, "sdut");
    let (peer_rx, peer_tx) = dev_drops(&peer, "speer");
    out.drop_counters = vec![
        ("sdut rx_dropped".into(), dev_rx),
        ("sdut tx_dropped".into(), dev_tx),
        ("speer rx_dropped".into(), peer_rx),
        ("speer tx_dropped".into(), peer_tx),
    ];
    out.spans = spans.load(Ordering::Relaxed);

    let s = samples.lock().map(|s| s.clone()).unwrap_or_default();
    out.rss_samples = s.len();
    let quarter = s.len() / 4;
    out.rss_quarter_mib = s[..quarter.max(1).min(s.len())].iter().copied().fold(0.0, f64::max);
    out.rss_max_mib = s.iter().copied().fold(0.0, f64::max);
    out.rss_end_mib = s.last().copied().unwrap_or(0.0);

    match &m {
        Ok(m) => {
            out.packets_seen = metric(m, "tclab_packets_total");
            out.events_lost = metric(m, "tclab_events_lost_total");
            out.ct_insert_failures = metric(m, "tclab_ct_insert_failures_total");
            out.ct_entries = metric(m, "tclab_ct_entries");
        }
        Err(e) => out.problems.push(format!("the agent's metrics endpoint did not answer after the load: {e:#}")),
    }
    if !out.alive_after_load {
        out.problems.push("the agent was not running after the load".into());
    }
    // SIGTERM: the agent detaches and exits 0
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = proc.0.try_wait()? {
            break Some(st);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    out.exit_status = status.map_or_else(|| "still running 10 s after SIGTERM".into(), |s| s.to_string());
    if !status.is_some_and(|s| s.success()) {
        out.problems.push(format!("the agent did not exit cleanly on SIGTERM: {}", out.exit_status));
    }
    if m.is_ok() {
        // A figure, not a check: on this host whole 64-frame batches are now
        // and then sent but never counted, with no drop counter moving on
        // either veth (cause not found yet; see the report).
        if out.packets_seen > out.packets_sent {
            out.problems.push(format!("{} packets sent, the datapath counted {}", out.packets_sent, out.packets_seen));
        }
        if connections > u64::from(args.ct_max_entries) && out.ct_insert_failures == 0 {
            out.problems.push("the CT table was never full (no failed insert counted)".into());
        }
        // a span needs its request and response events: each lost event or
        // packet the datapath never saw costs at most one span
        let missing = connections.saturating_sub(out.spans);
        let unseen = out.packets_sent.saturating_sub(out.packets_seen);
        if missing > out.events_lost + unseen {
            out.problems.push(format!(
                "{missing} connections without a span but only {} events counted lost and {unseen} packets unseen: a loss went uncounted",
                out.events_lost
            ));
        }
    }
    let growth = out.rss_max_mib - out.rss_quarter_mib;
    if growth > args.max_rss_growth_mib {
        out.problems.push(format!(
            "RSS grew by {growth:.1} MiB after the first quarter of the run ({:.1} → {:.1} MiB; allowed {:.1})",
            out.rss_quarter_mib, out.rss_max_mib, args.max_rss_growth_mib
        ));
    }
    drop(pair);
    Ok(out)
}

impl Outcome {
    /// The report, one figure a line.
    pub fn text(&self) -> String {
        let mut s = format!(
            "tclab soak: {} packets ({} connections) sent in {:.1} s ({:.0} pkt/s)\n",
            self.packets_sent,
            self.connections,
            self.send_seconds,
            self.packets_sent as f64 / self.send_seconds.max(1e-9)
        );
        s += &format!("  packets seen by the datapath   {} ({:.1} s after the last was sent)\n", self.packets_seen, self.settle_seconds);
        s += &format!(
            "  sent but not counted           {} (veth drop counters: {:?})\n",
            self.packets_sent.saturating_sub(self.packets_seen),
            self.drop_counters
        );
        s += &format!("  spans printed                  {} of {} connections\n", self.spans, self.connections);
        s += &format!("  events lost (counted)          {}\n", self.events_lost);
        s += &format!(
            "  CT: {} of {} entries, {} failed inserts (counted)\n",
            self.ct_entries, self.ct_max_entries, self.ct_insert_failures
        );
        s += &format!(
            "  RSS: {:.1} MiB attached, {:.1} after the first quarter, {:.1} max, {:.1} at the end, {:.1} peak (VmHWM); {} samples\n",
            self.rss_start_mib, self.rss_quarter_mib, self.rss_max_mib, self.rss_end_mib, self.rss_hwm_mib, self.rss_samples
        );
        s += &format!("  agent after the load: {}, on SIGTERM: {}\n", if self.alive_after_load { "running" } else { "gone" }, self.exit_status);
        if self.problems.is_empty() {
            s += "  every check held\n";
        }
        for p in &self.problems {
            s += &format!("  FAILED: {p}\n");
        }
        s
    }
}

/// `tclab soak`: exit 1 when a check failed.
///
/// # Errors
/// The run could not be set up.
pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    let out = run(&args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", out.text());
    }
    Ok(if out.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
