//! Context propagation's cost: requests/s and p99 latency of the
//! three-service chain (`tclab testserver`, one agent per service) with
//! propagation on, against the same chain and agents with it off, in one
//! run. Target (issue #6): under 5% throughput loss.
//!
//! The floor: each mode also runs with its programs built to return at once
//! ([`Programs::HooksOnly`]: the same hooks, the sockets still in the
//! sockhash), which splits the loss into what the kernel's mechanism costs
//! by itself and what our programs add to it.
//!
//! Load: a few client threads in the client namespace, each with one
//! kept-alive connection to the frontend, sending GET /traceme back to back
//! for a fixed time; every request crosses three services (two calls). The
//! agents' spans are drained meanwhile, as their run loops would.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tclab_datapath::attach::Backend;
use tclab_datapath::propagation::{Mode, Programs};

use super::Section;
use super::report::{Row, SectionReport, Target};
use crate::testserver::chain::ChainOptions;
use crate::testserver::scenario::tclab_binary;
use crate::testserver::service::Client;
use crate::testserver::traced::TracedChain;

/// Client connections sending at once.
const CLIENTS: usize = 4;

/// What one load run measured.
#[derive(Debug, Clone)]
struct Load {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    spans: usize,
    /// Of those, the spans that took the kernel's ids (propagation on).
    linked: u64,
    /// Propagation events the agents dropped unused (their linkers' budget).
    dropped: u64,
    /// Per request, by program name: nanoseconds our BPF programs ran and
    /// how many times they ran (kernel run-time statistics, summed over the
    /// three agents).
    bpf_ns: BTreeMap<String, (f64, f64)>,
    /// CPU time of the agents' user space (decoding, linking, spans) per request.
    agents_ns: f64,
    /// CPU time of the whole machine (every core, everything on it) per
    /// request, µs: at saturation the rate is cores / this, and it moves
    /// less than the rate with other load.
    machine_us: f64,
}

/// Busy CPU time of the machine so far, in clock ticks (first line of
/// /proc/stat: user nice system idle iowait irq softirq steal …).
fn machine_ticks() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    let line = stat.lines().next().unwrap_or_default();
    let f: Vec<u64> = line.split_whitespace().skip(1).take(8).filter_map(|v| v.parse().ok()).collect();
    anyhow::ensure!(f.len() == 8, "/proc/stat: unexpected first line {line:?}");
    let total: u64 = f.iter().sum();
    // idle, iowait and steal (time the hypervisor gave to others) are not busy
    Ok(total - f[3] - f[4] - f[7])
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| Duration::new(u64::try_from(t.tv_sec()).unwrap_or(0), u32::try_from(t.tv_nsec()).unwrap_or(0)))
        .unwrap_or_default()
}

/// Accumulated run time (ns) and run count of every loaded `tclab_*`
/// program, by id.
fn bpf_run_times() -> HashMap<u32, (String, u64, u64)> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| {
            let name = p.name_as_str()?.to_owned();
            let ns = u64::try_from(p.run_time().as_nanos()).unwrap_or(u64::MAX);
            name.starts_with("tclab_").then(|| (p.id(), (name, ns, p.run_count())))
        })
        .collect()
}

/// Per program name: run time and runs added between two
/// [`bpf_run_times`], per request.
fn bpf_per_request(
    before: &HashMap<u32, (String, u64, u64)>,
    after: &HashMap<u32, (String, u64, u64)>,
    requests: usize,
) -> BTreeMap<String, (f64, f64)> {
    let n = requests.max(1) as f64;
    let mut out: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for (id, (name, ns, runs)) in after {
        let (was_ns, was_runs) = before.get(id).map_or((0, 0), |b| (b.1, b.2));
        let e = out.entry(name.clone()).or_default();
        e.0 += ns.saturating_sub(was_ns) as f64 / n;
        e.1 += runs.saturating_sub(was_runs) as f64 / n;
    }
    out
}

/// USER_HZ: the unit of /proc/stat.
fn clock_ticks_per_s() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().map_or(100.0, |v| v as f64)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)])
}

/// Start the chain with `mode`, load it for `time`, stop it. With
/// `stats`, the kernel's BPF run-time statistics are on during the run
/// (for [`Load::bpf_ns`]); they time every program run (two clock reads
/// each), so throughput is measured with them off.
fn measure(mode: Mode, programs: Programs, time: Duration, stats: bool) -> anyhow::Result<Load> {
    let _stats = stats
        .then(|| aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS (run time)"))
        .transpose()?;
    let opts = ChainOptions::new(tclab_binary()?);
    let mut t = TracedChain::start_programs(&opts, mode, programs, Backend::Auto).with_context(|| format!("failed to start the chain with propagation={mode} ({programs:?})"))?;
    let target = t.chain.entry();
    // warm up: connections, ARP, the agents' maps
    for _ in 0..20 {
        let (status, _) = t.chain.get(&[])?;
        anyhow::ensure!(status == 200, "warm-up request answered {status}");
    }
    t.collect(usize::MAX, Duration::from_millis(100));
    let bpf_before = bpf_run_times();
    let done = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..CLIENTS {
        let ns = t.chain.client_ns.try_clone()?;
        let target = target.clone();
        let done = done.clone();
        workers.push(std::thread::spawn(move || -> anyhow::Result<Vec<u32>> {
            ns.try_run(|| {
                let mut client = Client::new(true);
                let mut lat = Vec::new();
                while !done.load(Ordering::Relaxed) {
                    let start = Instant::now();
                    let (status, _) = client.get(&target, &[])?;
                    anyhow::ensure!(status == 200, "the chain answered {status}");
                    lat.push(u32::try_from(start.elapsed().as_micros()).unwrap_or(u32::MAX));
                }
                Ok(lat)
            })?
        }));
    }
    let ticks_before = machine_ticks()?;
    let started = Instant::now();
    // this thread is the three agents' reader: its CPU time is theirs
    let cpu_before = thread_cpu();
    let mut spans = 0;
    let linked_before = t.linked();
    while started.elapsed() < time {
        spans += t.drain_count(Duration::from_millis(20));
    }
    let agents_cpu = thread_cpu().saturating_sub(cpu_before);
    let ticks_after = machine_ticks()?;
    done.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let mut lat = Vec::new();
    for w in workers {
        lat.extend(w.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??);
    }
    let bpf_ns = bpf_per_request(&bpf_before, &bpf_run_times(), lat.len());
    let agents_ns = agents_cpu.as_nanos() as f64 / lat.len().max(1) as f64;
    spans += t.collect(usize::MAX, Duration::from_millis(200)).len();
    let (linked, dropped) = t.linked();
    lat.sort_unstable();
    Ok(Load {
        rps: lat.len() as f64 / elapsed.as_secs_f64(),
        p50_us: percentile(&lat, 0.50),
        p99_us: percentile(&lat, 0.99),
        spans,
        linked: linked - linked_before.0,
        dropped: dropped - linked_before.1,
        bpf_ns,
        agents_ns,
        machine_us: ticks_after.saturating_sub(ticks_before) as f64 * 1e6 / clock_ticks_per_s() / lat.len().max(1) as f64,
    })
}

/// The section: rounds of short runs, propagation off then each mode, and
/// each mode's ratio taken against the "off" run of its own round; the
/// median over rounds is reported. On a shared machine the throughput
/// drifts by tens of percent over a minute, far more than the effect
/// measured: pairing within a round cancels the drift, the median the
/// outliers.
///
/// # Errors
/// When the chain cannot start or a request fails.
pub fn run(quick: bool) -> anyhow::Result<SectionReport> {
    let time = if quick { Duration::from_millis(800) } else { Duration::from_secs(2) };
    let rounds = if quick { 1 } else { 7 };
    // each carrier alone, then all three: where the cost of `all` comes from
    let modes = [Mode::Headers, Mode::Tcp, Mode::Ip, Mode::All];
    let mut offs: Vec<Load> = Vec::new();
    // per round: requests/s, p99, p50 and machine CPU per request, on / off
    let mut ratios: Vec<Vec<(f64, f64, f64, f64)>> = vec![Vec::new(); modes.len()];
    let mut runs: Vec<Vec<Load>> = vec![Vec::new(); modes.len()];
    // the same with the hooks only (the floor)
    let mut floor_ratios: Vec<Vec<(f64, f64, f64, f64)>> = vec![Vec::new(); modes.len()];
    let mut floors: Vec<Vec<Load>> = vec![Vec::new(); modes.len()];
    let ratio = |on: &Load, off: &Load| {
        (
            on.rps / off.rps,
            on.p99_us / off.p99_us.max(1.0),
            on.p50_us / off.p50_us.max(1.0),
            on.machine_us / off.machine_us.max(f64::MIN_POSITIVE),
        )
    };
    // propagation off at the end of each round too: the modes are taken
    // against both ends (a drift over the round cancels), and the end
    // against the start is the A/A figure, the noise of one ratio
    let mut aa: Vec<(f64, f64, f64, f64)> = Vec::new();
    let mut aa_apart = Duration::ZERO;
    for _ in 0..rounds {
        let round_start = Instant::now();
        let off = measure(Mode::Disabled, Programs::Full, time, false)?;
        let mut on_runs = Vec::new();
        for mode in modes {
            on_runs.push((
                measure(mode, Programs::Full, time, false)?,
                measure(mode, Programs::HooksOnly, time, false)?,
            ));
        }
        aa_apart = round_start.elapsed();
        let off_end = measure(Mode::Disabled, Programs::Full, time, false)?;
        let both = |r: (f64, f64, f64, f64), s: (f64, f64, f64, f64)| {
            ((r.0 * s.0).sqrt(), (r.1 * s.1).sqrt(), (r.2 * s.2).sqrt(), (r.3 * s.3).sqrt())
        };
        for (i, (on, floor)) in on_runs.into_iter().enumerate() {
            ratios[i].push(both(ratio(&on, &off), ratio(&on, &off_end)));
            runs[i].push(on);
            floor_ratios[i].push(both(ratio(&floor, &off), ratio(&floor, &off_end)));
            floors[i].push(floor);
        }
        aa.push(ratio(&off_end, &off));
        offs.push(off);
        offs.push(off_end);
    }
    // where the time goes: one more round with the run-time statistics on
    // (they slow every program run, so no throughput is taken from it);
    // the hooks-only build too, whose programs' time is the statistics' own
    // cost per run plus the datapath: what the full build runs beyond it is
    // our programs' work
    let stats_off = measure(Mode::Disabled, Programs::Full, time, true)?;
    let mut stats_on = Vec::new();
    for mode in modes {
        stats_on.push((measure(mode, Programs::Full, time, true)?, measure(mode, Programs::HooksOnly, time, true)?));
    }
    let med = |mut v: Vec<f64>| -> f64 {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let off_rps = med(offs.iter().map(|l| l.rps).collect());
    let off_p99 = med(offs.iter().map(|l| l.p99_us).collect());
    let off_p50 = med(offs.iter().map(|l| l.p50_us).collect());
    let mut s = SectionReport::new(
        Section::Propagation,
        "Context propagation: the three-service chain",
        "the same chain and agents with propagation disabled, in the same round",
    );
    s.rows.push(Row::value("requests/s, propagation=disabled", off_rps, "req/s").note(format!(
        "median of {rounds} runs ({:.0}–{:.0}); p50 {off_p50:.0} µs, p99 {off_p99:.0} µs; {} spans in all",
        offs.iter().map(|l| l.rps).fold(f64::INFINITY, f64::min),
        offs.iter().map(|l| l.rps).fold(0.0, f64::max),
        offs.iter().map(|l| l.spans).sum::<usize>()
    )));
    // BPF run time per request, median over the runs, per program name
    let bpf = |loads: &[Load]| -> (f64, BTreeMap<String, (f64, f64)>) {
        let names: std::collections::BTreeSet<&String> = loads.iter().flat_map(|l| l.bpf_ns.keys()).collect();
        let per: BTreeMap<String, (f64, f64)> = names
            .into_iter()
            .map(|n| {
                let of = |f: fn(&(f64, f64)) -> f64| med(loads.iter().map(|l| l.bpf_ns.get(n).map_or(0.0, f)).collect());
                (n.clone(), (of(|v| v.0), of(|v| v.1)))
            })
            .collect();
        (per.values().map(|v| v.0).sum(), per)
    };
    // "name ns (runs×)": the runs say which programs fire on every read,
    // send or segment, and which once per request
    let describe = |per: &BTreeMap<String, (f64, f64)>| -> String {
        per.iter()
            .filter(|(_, v)| v.0 >= 1.0)
            .map(|(n, v)| format!("{n} {:.0} ({:.1}×)", v.0, v.1))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (off_bpf, off_per) = bpf(std::slice::from_ref(&stats_off));
    let off_agents = med(offs.iter().map(|l| l.agents_ns).collect());
    let off_machine = med(offs.iter().map(|l| l.machine_us).collect());
    s.rows.push(Row::value("machine CPU per request, propagation=disabled", off_machine, "µs").note(
        "busy time of every core (/proc/stat: the chain, the agents, the client, anything else) per request, median over runs",
    ));
    {
        let range = |f: fn(&(f64, f64, f64, f64)) -> f64| {
            let v: Vec<f64> = aa.iter().map(f).collect();
            (med(v.clone()), v.iter().copied().fold(f64::INFINITY, f64::min), v.iter().copied().fold(0.0, f64::max))
        };
        let (cpu, cpu_lo, cpu_hi) = range(|r| r.3);
        let (p50, p50_lo, p50_hi) = range(|r| r.2);
        let (rps, rps_lo, rps_hi) = range(|r| r.0);
        s.rows.push(Row::value("A/A: machine CPU per request, propagation=disabled, end of a round against its start", cpu, "×").note(format!(
            "the same configuration twice, {:.0} s apart: the noise a ratio below has to stand out of. Per-round ratios {cpu_lo:.3}–{cpu_hi:.3}×; \
             p50 latency {p50:.3}× ({p50_lo:.3}–{p50_hi:.3}); requests/s {rps:.3}× ({rps_lo:.3}–{rps_hi:.3})",
            aa_apart.as_secs_f64()
        )));
    }
    s.rows.push(
        Row::value("agents' user-space CPU per request, propagation=disabled", off_agents, "ns")
            .note("CPU time of the thread that reads the three agents' rings and builds their spans, median over runs"),
    );
    s.rows.push(
        Row::value("BPF run time per request, propagation=disabled", off_bpf, "ns")
            .note(format!("kernel run-time statistics of every tclab_* program of the three agents, from one more run with them on (not a throughput run), ns per request (runs per request): {}", describe(&off_per))),
    );
    // the part of a run's BPF time that is propagation's programs
    let prop_ns = |per: &BTreeMap<String, (f64, f64)>| per.iter().filter(|(n, _)| n.starts_with("tclab_prop_")).map(|(_, v)| v.0).sum::<f64>();
    for (i, mode) in modes.iter().enumerate() {
        let (on_bpf, on_per) = bpf(std::slice::from_ref(&stats_on[i].0));
        let (floor_bpf, floor_per) = bpf(std::slice::from_ref(&stats_on[i].1));
        let on_agents = med(runs[i].iter().map(|l| l.agents_ns).collect());
        s.rows.push(Row::ratio(format!("agents' user-space CPU per request, propagation={mode}"), on_agents, off_agents, "ns"));
        let on_machine = med(runs[i].iter().map(|l| l.machine_us).collect());
        let cpu = med(ratios[i].iter().map(|r| r.3).collect());
        s.rows.push(Row::ratio(format!("machine CPU per request, propagation={mode}"), on_machine, off_machine, "µs").note(format!(
            "median of the per-round ratios {cpu:.3}×: at saturation a throughput loss of {:.1}%",
            (1.0 - 1.0 / cpu) * 100.0
        )));
        s.rows.push(
            Row::ratio(format!("BPF run time per request, propagation={mode}"), on_bpf, off_bpf, "ns")
                .note(format!("ns per request (runs per request): {}", describe(&on_per))),
        );
        s.rows.push(
            Row::ratio(format!("BPF run time per request, propagation={mode}, hooks only"), floor_bpf, off_bpf, "ns")
                .note(format!("the hooks-only build with the statistics on: the datapath and, for ours, the statistics' own cost per run; ns per request (runs per request): {}", describe(&floor_per))),
        );
        // our own work per request: the programs beyond their empty runs, the
        // agents beyond propagation off; taken from run-time statistics and
        // thread CPU, so it moves far less than the loss rows between runs
        let ours_bpf = (prop_ns(&on_per) - prop_ns(&floor_per)).max(0.0);
        // the datapath also parses the traceparent propagation inserts; in
        // the modes that insert none this is the noise between two runs
        let datapath = (on_bpf - prop_ns(&on_per)) - (floor_bpf - prop_ns(&floor_per));
        let ours_agents = (on_agents - off_agents).max(0.0);
        let ours = ours_bpf + ours_agents;
        s.rows.push(Row::value(format!("our code's CPU per request, propagation={mode}"), ours, "ns").note(format!(
            "propagation's programs' work {ours_bpf:.0} ns (full build minus hooks only, statistics on) + the agents' user space {ours_agents:.0} ns (minus propagation off); \
             alone {:.1}% of the machine CPU per request with propagation off ({off_machine:.1} µs), before what it causes around it; \
             the datapath's programs ran {datapath:+.0} ns per request more than with the hooks only",
            ours / 10.0 / (off_machine + ours / 1000.0)
        )));
        let rps = med(runs[i].iter().map(|l| l.rps).collect());
        let ratio = med(ratios[i].iter().map(|r| r.0).collect());
        let p99 = med(ratios[i].iter().map(|r| r.1).collect());
        let lo = ratios[i].iter().map(|r| r.0).fold(f64::INFINITY, f64::min);
        let hi = ratios[i].iter().map(|r| r.0).fold(0.0, f64::max);
        let spans: usize = runs[i].iter().map(|l| l.spans).sum();
        let linked: u64 = runs[i].iter().map(|l| l.linked).sum();
        let dropped: u64 = runs[i].iter().map(|l| l.dropped).sum();
        let note = format!("median of {rounds} per-round ratios ({lo:.2}–{hi:.2}×); {spans} spans in all");
        let p50 = med(ratios[i].iter().map(|r| r.2).collect());
        s.rows.push(Row::ratio(format!("requests/s, propagation={mode}"), rps, off_rps, "req/s").note(note));
        // under load the agents read the datapath's events late; every span
        // should still find the ids its request was sent with
        s.rows.push(Row::value(format!("spans with the kernel's ids, propagation={mode}"), linked as f64 * 100.0 / spans.max(1) as f64, "%").note(format!(
            "{linked} of {spans} spans of the throughput runs were given the ids the kernel propagated (the rest drew their own: a broken link in the trace); {dropped} propagation events dropped unused"
        )));
        s.rows.push(
            Row::value(format!("throughput loss, propagation={mode}"), (1.0 - 1.0 / p50) * 100.0, "%")
                .target(Target::ValueBelow(5.0))
                .note(format!(
                    "from the median latency (closed loop: rate = clients / latency): median of the per-round p50 ratios {p50:.3}×; from requests/s instead: {:.1}%",
                    (1.0 - ratio) * 100.0
                )),
        );
        s.rows.push(Row::value(format!("p99 latency ratio, propagation={mode}"), p99, "×").note("median of the per-round p99 ratios"));
        // the floor: the same hooks, our programs returning at once
        let floor_machine = med(floors[i].iter().map(|l| l.machine_us).collect());
        let floor_cpu = med(floor_ratios[i].iter().map(|r| r.3).collect());
        s.rows.push(
            Row::ratio(format!("machine CPU per request, propagation={mode}, hooks only"), floor_machine, off_machine, "µs").note(format!(
                "the same hooks with programs that return at once (the opened connections still in the sockhash): median of the per-round ratios {floor_cpu:.3}×, \
                 a loss of {:.1}% at saturation from the mechanism alone; our programs' share of the {:.1}% above: {:.1} points",
                (1.0 - 1.0 / floor_cpu) * 100.0,
                (1.0 - 1.0 / cpu) * 100.0,
                (1.0 / floor_cpu - 1.0 / cpu) * 100.0
            )),
        );
        let floor_p50 = med(floor_ratios[i].iter().map(|r| r.2).collect());
        let floor_rps = med(floor_ratios[i].iter().map(|r| r.0).collect());
        s.rows.push(
            Row::value(format!("throughput loss, propagation={mode}, hooks only"), (1.0 - 1.0 / floor_p50) * 100.0, "%").note(format!(
                "the floor, as the row above it is taken: median of the per-round p50 ratios {floor_p50:.3}×; from requests/s instead: {:.1}%",
                (1.0 - floor_rps) * 100.0
            )),
        );
    }
    // the instrument that resolves what the chain's noise hides
    s.rows.extend(super::propagation_roundtrip::rows(quick, &modes).context("round trips on one CPU")?);
    s.notes.push(format!(
        "{CLIENTS} kept-alive client connections back to back for {} s per run; {rounds} rounds of off, then headers, tcp, ip and all each with its programs and with the hooks only, then off again \
         (each ratio is the geometric mean of the ratios to both offs of its round); \
         every request crosses frontend -> backend -> worker, one agent per service (TC + socket programs); \
         the loss is taken from the median latency, the estimate that other load on the machine moves least \
         (a burst of other work stretches a few requests, not the median); requests/s per run moved by up to 2× here; \
         throughput runs have the kernel's BPF run-time statistics off, the BPF rows come from two more runs per mode with them on (its programs and the hooks only)",
        time.as_secs_f64()
    ));
    Ok(s)
}
