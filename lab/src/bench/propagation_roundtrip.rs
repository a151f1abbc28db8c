//! Propagation's cost per HTTP round trip, on one CPU: an instrument fine
//! enough to tell the kernel's mechanism from our programs.
//!
//! The chain's figures move by ±10% between runs on a shared two-CPU
//! machine (idle wake-ups, other tenants), more than what is measured.
//! Here client and server threads of this process and the reader of the
//! events are pinned to one CPU, which then never idles between a send and
//! the wake-up it causes: the process's CPU time per round trip is the work
//! of the round trip, and repeats to about 3% between runs. Each round
//! trip is one HTTP/1.1 request and its response over loopback, both
//! sockets in the agent's cgroup, so it runs every hook once per direction:
//! one client request (sk_msg, header or option), one server read (the
//! read tracepoint), one response (sock_ops sees it leave), TC on both
//! sides.
//!
//! The three variants of each mode (propagation off, the hooks only, the
//! programs) are taken in one process, interleaved, and their medians
//! compared: the hooks-only build gives the mechanism's share, the rest is
//! ours. No application work surrounds the round trip, so the ratios are
//! an upper bound of what any service sees.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tclab_datapath::attach::{self, Api, Attachment, DeviceState};
use tclab_datapath::loader::Hook;
use tclab_datapath::propagation::{Mode, Programs, Propagation, PropagationConfig};
use tclab_net::NetNs;

use super::report::Row;
use super::stats::{median, spread};
use crate::testserver::cgroup::{CgroupRoot, find_cgroup2_mount};

/// Client/server pairs at once: enough that the CPU always has a runnable
/// thread, as under load.
const PAIRS: usize = 4;

const REQUEST: &[u8] = b"GET /users HTTP/1.1\r\nHost: worker\r\nUser-Agent: tclab-bench\r\nAccept: */*\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nServer: tclab-bench\r\n\r\n";

/// This process in `dir` until drop, then back in the cgroup it came from
/// (also on an error or panic: the cgroup must be empty to be removed).
struct Inside {
    original: PathBuf,
}

impl Inside {
    fn enter(dir: &Path) -> anyhow::Result<Inside> {
        let mount = find_cgroup2_mount().context("no cgroup2 mount")?;
        let own = std::fs::read_to_string("/proc/self/cgroup").context("read /proc/self/cgroup")?;
        let rel = own.lines().find_map(|l| l.strip_prefix("0::")).context("/proc/self/cgroup has no cgroup v2 line")?;
        let original = mount.join(rel.trim_start_matches('/'));
        std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("failed to move this process into {}", dir.display()))?;
        Ok(Inside { original })
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(self.original.join("cgroup.procs"), std::process::id().to_string()) {
            tracing::warn!("failed to move back to {}: {e}", self.original.display());
        }
    }
}

/// CPU time of the whole process (every thread), ns.
fn process_cpu_ns() -> anyhow::Result<f64> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID).context("CLOCK_PROCESS_CPUTIME_ID")?;
    Ok(t.tv_sec() as f64 * 1e9 + t.tv_nsec() as f64)
}

/// Pin the calling thread (and the threads it spawns from now on) to `cpu`.
fn pin(cpu: usize) -> anyhow::Result<nix::sched::CpuSet> {
    use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
    use nix::unistd::Pid;
    let before = sched_getaffinity(Pid::from_raw(0)).context("sched_getaffinity")?;
    let mut one = CpuSet::new();
    one.set(cpu).context("CpuSet::set")?;
    sched_setaffinity(Pid::from_raw(0), &one).with_context(|| format!("failed to pin to CPU {cpu}"))?;
    Ok(before)
}

/// One pair: a server thread answering every request read, a client
/// sending `n` requests back to back.
fn pair(ns: &NetNs, n: usize) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<()>>> {
    let listener = ns.try_run(|| TcpListener::bind("127.0.0.1:0"))?.context("bind on the namespace's loopback")?;
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || -> anyhow::Result<()> {
        let (mut s, _) = listener.accept().context("accept")?;
        s.set_nodelay(true)?;
        let mut buf = [0u8; 1024];
        while s.read(&mut buf).context("server read")? > 0 {
            s.write_all(RESPONSE).context("server write")?;
        }
        Ok(())
    });
    let mut c = ns.try_run(|| TcpStream::connect(addr))?.context("connect on the namespace's loopback")?;
    c.set_nodelay(true)?;
    Ok(std::thread::spawn(move || -> anyhow::Result<()> {
        let mut buf = [0u8; 1024];
        for _ in 0..n {
            c.write_all(REQUEST).context("client write")?;
            // the response is one segment; a short read would stall the next round trip, not corrupt it
            if c.read(&mut buf).context("client read")? == 0 {
                bail!("the server closed the connection");
            }
        }
        drop(c);
        server.join().map_err(|_| anyhow::anyhow!("a server thread panicked"))?
    }))
}

/// CPU ns per round trip with `variant` (None: propagation off), the
/// events drained meanwhile as an agent would.
fn measure(ns: &NetNs, cgroup: &Path, variant: Option<(Mode, Programs)>, n: usize) -> anyhow::Result<f64> {
    let mut started: Option<(Vec<Attachment>, Propagation)> = match variant {
        None => None,
        Some((mode, programs)) => {
            let cfg = PropagationConfig { mode, cgroup: Some(cgroup.to_path_buf()), programs, ..PropagationConfig::default() };
            let mut p = Propagation::start(&cfg).with_context(|| format!("failed to start propagation={mode} ({programs:?})"))?;
            let device = DeviceState::default();
            let mut links = Vec::new();
            for (hook, dir) in [(Hook::Ingress, tclab_net::tc::Direction::Ingress), (Hook::Egress, tclab_net::tc::Direction::Egress)] {
                if let Some(prog) = p.classifier_mut(hook) {
                    let name = Propagation::classifier_name(hook);
                    links.push(ns.try_run(|| attach::attach(prog, name, "lo", dir, Api::Tcx, 1, &device))?.with_context(|| format!("attach {name} on lo"))?);
                }
            }
            Some((links, p))
        }
    };
    // warm-up: connections, the maps' first entries
    for h in (0..PAIRS).map(|_| pair(ns, 500)).collect::<anyhow::Result<Vec<_>>>()? {
        h.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
    }
    if let Some((_, p)) = started.as_mut() {
        p.drain();
    }
    let before = process_cpu_ns()?;
    let clients = (0..PAIRS).map(|_| pair(ns, n / PAIRS)).collect::<anyhow::Result<Vec<_>>>()?;
    while !clients.iter().all(std::thread::JoinHandle::is_finished) {
        if let Some((_, p)) = started.as_mut() {
            p.drain();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for h in clients {
        h.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
    }
    if let Some((_, p)) = started.as_mut() {
        p.drain();
    }
    let cpu = process_cpu_ns()? - before;
    Ok(cpu / (n / PAIRS * PAIRS) as f64)
}

/// The rows: per mode, ns of CPU per round trip with the hooks only and
/// with the programs, against propagation off; and our programs' share.
///
/// # Errors
/// When the namespace, cgroup or programs cannot be set up, or a round trip fails.
pub fn rows(quick: bool, modes: &[Mode]) -> anyhow::Result<Vec<Row>> {
    let (n, rounds) = if quick { (4_000, 1) } else { (40_000, 5) };
    let cpu = std::thread::available_parallelism().map_or(1, usize::from) - 1;
    let ns = NetNs::new("tclab-bench-rtt").context("failed to create the benchmark's namespace")?;
    let mut root = CgroupRoot::create()?;
    let cgroup = root.child("roundtrip")?;
    let affinity = pin(cpu)?;
    let measured = (|| -> anyhow::Result<_> {
        let _inside = Inside::enter(&cgroup)?;
        let mut off = Vec::new();
        let mut on: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); modes.len()];
        for _ in 0..rounds {
            off.push(measure(&ns, &cgroup, None, n)?);
            for (i, mode) in modes.iter().enumerate() {
                on[i].0.push(measure(&ns, &cgroup, Some((*mode, Programs::HooksOnly)), n)?);
                on[i].1.push(measure(&ns, &cgroup, Some((*mode, Programs::Full)), n)?);
            }
        }
        Ok((off, on))
    })();
    if let Err(e) = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &affinity) {
        tracing::warn!("failed to restore the CPU affinity: {e}");
    }
    let (off, on) = measured?;
    let over_rounds = |v: &[f64]| format!("{rounds} rounds, {} ns", spread(v, 0));
    let off_ns = median(&off);
    let mut rows = vec![Row::value("CPU per HTTP round trip on one CPU, propagation=disabled", off_ns, "ns").note(format!(
        "{PAIRS} loopback client/server pairs in this process, pinned to CPU {cpu} with the events' reader, {n} round trips per run, the process's CPU time; median of {}",
        over_rounds(&off)
    ))];
    for (i, mode) in modes.iter().enumerate() {
        let (hooks, full) = (median(&on[i].0), median(&on[i].1));
        rows.push(
            Row::ratio(format!("CPU per HTTP round trip on one CPU, propagation={mode}, hooks only"), hooks, off_ns, "ns")
                .note(format!("the kernel's mechanism: the same hooks, programs that return at once; median of {}", over_rounds(&on[i].0))),
        );
        rows.push(Row::ratio(format!("CPU per HTTP round trip on one CPU, propagation={mode}"), full, off_ns, "ns").note(format!(
            "median of {}; our programs and the events' reading: {:.0} ns per round trip beyond the hooks only ({:.1}% of a round trip without propagation), the mechanism {:.0} ns ({:.1}%)",
            over_rounds(&on[i].1),
            full - hooks,
            (full - hooks) / off_ns * 100.0,
            hooks - off_ns,
            (hooks - off_ns) / off_ns * 100.0
        )));
    }
    drop(root);
    Ok(rows)
}
