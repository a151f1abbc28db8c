//! Resident memory and CPU of a `tclab-agent run` process while it handles
//! ~10k spans/s from a real HTTP client and server.
//!
//! The agent is started on a thread inside a throwaway namespace (the child
//! inherits it) and attached to one end of a veth pair; the client runs in
//! that namespace, the server in the peer's, over keep-alive connections,
//! every request with a traceparent. Memory from /proc/PID/status (VmRSS
//! sampled, VmHWM at the end), CPU from /proc/PID/stat (utime + stime).
//! Baseline: the same process idle (attached, no traffic) just before.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use tclab_datapath::frames::TP;
use tclab_net::NetNs;

use super::report::{Row, SectionReport, Target};
use super::Section;

const CLIENTS: usize = 4;
const SERVER: &str = "10.82.0.2:8080";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// Kills the agent if the benchmark ends early, so it never outlives us.
struct AgentProcess(Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("read /proc/{pid}/stat"))?;
    // fields after the command name, which may contain spaces: ") S ppid …"
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or_else(|| anyhow!("malformed /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3
    let ticks = |i: usize| -> anyhow::Result<f64> {
        fields.get(i - 3).and_then(|f| f.parse::<f64>().ok()).ok_or_else(|| anyhow!("no field {i} in /proc/{pid}/stat"))
    };
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ticks(14)? + ticks(15)?) / hz)
}

/// A `/proc/PID/status` field in MiB (`VmRSS`, `VmHWM`).
fn status_mib(pid: u32, field: &str) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("read /proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .ok_or_else(|| anyhow!("no {field} in /proc/{pid}/status"))
}

/// One server connection: answer every request until the client closes.
fn serve(mut c: TcpStream) {
    let mut buf = vec![0u8; 4096];
    let mut have = 0;
    loop {
        match c.read(&mut buf[have..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => have += n,
        }
        while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
            if c.write_all(RESPONSE).is_err() {
                return;
            }
            buf.copy_within(end + 4..have, 0);
            have -= end + 4;
        }
        if have == buf.len() {
            return;
        }
    }
}

/// One client connection at `rate` requests/s until `stop`; counts answers.
fn client(mut c: TcpStream, rate: f64, stop: &AtomicBool, done: &AtomicU64) -> anyhow::Result<()> {
    let req = format!("GET /items HTTP/1.1\r\nHost: svc\r\ntraceparent: {TP}\r\n\r\n").into_bytes();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut buf = [0u8; 256];
    let mut k = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let due = start + interval * k;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        c.write_all(&req).context("send a request")?;
        let mut got = 0;
        while got < RESPONSE.len() {
            let n = c.read(&mut buf[got..]).context("read a response")?;
            if n == 0 {
                bail!("the server closed the connection");
            }
            got += n;
        }
        done.fetch_add(1, Ordering::Relaxed);
        k += 1;
    }
    Ok(())
}

/// Run the section with the agent binary `agent`.
///
/// # Errors
/// The topology, the agent or the traffic failed.
pub fn run(agent: &std::path::Path, quick: bool) -> anyhow::Result<SectionReport> {
    let (rate, seconds) = if quick { (2_000.0, 2.0) } else { (10_000.0, 10.0) };
    let mut report = SectionReport::new(
        Section::Footprint,
        "Agent footprint (`tclab-agent run`)",
        "the same process attached and idle, just before the load",
    );
    let tag = format!("tclab-bench-fp-{}", std::process::id());
    let dut = NetNs::new(&format!("{tag}-dut"))?;
    let peer = NetNs::new(&format!("{tag}-peer"))?;
    let _pair = tclab_net::create_veth_pair(&dut, "fdut", &peer, "fpeer", None)?;
    tclab_net::add_address(&dut, "fdut", "10.82.0.1".parse()?, 24)?;
    tclab_net::add_address(&peer, "fpeer", "10.82.0.2".parse()?, 24)?;

    let child = dut
        .run(|| {
            Command::new(agent)
                .args(["run", "--iface", "fdut", "--metrics-addr", "127.0.0.1:0"])
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
        })
        .with_context(|| format!("start {}", agent.display()))?;
    let mut proc = AgentProcess(child);
    let pid = proc.0.id();
    let spans = Arc::new(AtomicU64::new(0));
    let stdout = proc.0.stdout.take().ok_or_else(|| anyhow!("no agent stdout"))?;
    let stderr = proc.0.stderr.take().ok_or_else(|| anyhow!("no agent stderr"))?;
    let counter = spans.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if line.is_err() {
                break;
            }
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut log = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                let attached = line.contains("attached");
                log.push(line);
                if attached {
                    break;
                }
            }
            Err(_) if Instant::now() > deadline => bail!("the agent did not attach within 20 s:\n{}", log.join("\n")),
            Err(_) => {
                if let Some(st) = proc.0.try_wait()? {
                    bail!("the agent exited ({st}) before attaching:\n{}", log.join("\n"));
                }
            }
        }
    }

    // idle
    std::thread::sleep(Duration::from_millis(500));
    let (cpu0, t0) = (cpu_seconds(pid)?, Instant::now());
    std::thread::sleep(Duration::from_secs(1));
    let idle_cpu = (cpu_seconds(pid)? - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
    let idle_rss = status_mib(pid, "VmRSS")?;

    // load
    let listener = peer.run(|| TcpListener::bind(SERVER)).with_context(|| format!("listen on {SERVER}"))?;
    let conns: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| dut.run(|| TcpStream::connect_timeout(&SERVER.parse().expect("constant address"), Duration::from_secs(5))))
        .collect::<Result<_, _>>()
        .context("connect to the server")?;
    let stop = AtomicBool::new(false);
    let answered = AtomicU64::new(0);
    let (spans0, cpu0) = (spans.load(Ordering::Relaxed), cpu_seconds(pid)?);
    let t0 = Instant::now();
    let mut rss = Vec::new();
    let results = std::thread::scope(|s| {
        for _ in 0..CLIENTS {
            if let Ok((c, _)) = listener.accept() {
                s.spawn(move || serve(c));
            }
        }
        let clients: Vec<_> = conns.into_iter().map(|c| {
            let (stop, answered) = (&stop, &answered);
            s.spawn(move || {
                let r = client(c, rate / CLIENTS as f64, stop, answered);
                // closing ends the server thread
                r
            })
        }).collect();
        while t0.elapsed().as_secs_f64() < seconds {
            std::thread::sleep(Duration::from_millis(200));
            if let Ok(r) = status_mib(pid, "VmRSS") {
                rss.push(r);
            }
        }
        stop.store(true, Ordering::Relaxed);
        clients.into_iter().map(|h| h.join().map_err(|_| anyhow!("a client thread panicked")).and_then(|r| r)).collect::<Vec<_>>()
    });
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = (cpu_seconds(pid)? - cpu0) / elapsed * 100.0;
    // the last spans are printed within one poll interval (200 ms)
    std::thread::sleep(Duration::from_millis(400));
    let span_rate = (spans.load(Ordering::Relaxed) - spans0) as f64 / elapsed;
    let hwm = status_mib(pid, "VmHWM")?;
    for r in results {
        r?;
    }
    let requests = answered.load(Ordering::Relaxed) as f64 / elapsed;
    let max_rss = rss.iter().copied().fold(0.0f64, f64::max);
    // SIGTERM: the agent detaches and exits 0
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM)?;
    let exit = wait_exit(&mut proc.0, Duration::from_secs(10))?;

    report.rows.push(
        Row::ratio("RSS under load (max of samples)", max_rss, idle_rss, "MiB")
            .target(Target::ValueBelow(30.0))
            .note(format!("{} samples every 200 ms", rss.len())),
    );
    report.rows.push(
        Row::value("peak RSS (VmHWM, whole life)", hwm, "MiB")
            .target(Target::ValueBelow(30.0))
            .note("includes start-up: parsing the object and the kernel's BTF"),
    );
    report.rows.push(Row::value("CPU under load", cpu, "% of a core").note(format!("idle {idle_cpu:.2}%; utime+stime over {elapsed:.1} s")));
    report.rows.push(
        Row::ratio("spans printed", span_rate, requests, "spans/s")
            .note(format!("baseline: requests answered/s ({CLIENTS} keep-alive connections, target rate {rate} req/s)")),
    );
    report.notes.push(format!(
        "agent: {} (`run --iface fdut`, defaults: LRU CT of 524,288 entries, {} MiB ring buffer), {exit} after SIGTERM",
        agent.display(),
        tclab_datapath::loader::DEFAULT_EVENTS_RING_BYTES >> 20
    ));
    Ok(report)
}

fn wait_exit(child: &mut Child, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        if Instant::now() > deadline {
            bail!("the agent did not exit within {timeout:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
