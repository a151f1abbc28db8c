//! Context propagation's cost: requests/s and p99 latency of the
//! three-service chain (`tclab testserver`, one agent per service) with
//! propagation on, against the same chain and agents with it off, in one
//! run. Target (issue #6): under 5% throughput loss.
//!
//! Load: a few client threads in the client namespace, each with one
//! kept-alive connection to the frontend, sending GET /traceme back to back
//! for a fixed time; every request crosses three services (two calls). The
//! agents' spans are drained meanwhile, as their run loops would.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tclab_datapath::attach::Backend;
use tclab_datapath::propagation::Mode;

use super::Section;
use super::report::{Row, SectionReport, Target};
use crate::testserver::chain::ChainOptions;
use crate::testserver::scenario::tclab_binary;
use crate::testserver::service::Client;
use crate::testserver::traced::TracedChain;

/// Client connections sending at once.
const CLIENTS: usize = 4;

/// What one load run measured.
#[derive(Debug, Clone, Copy)]
struct Load {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    spans: usize,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)])
}

/// Start the chain with `mode`, load it for `time`, stop it.
fn measure(mode: Mode, time: Duration) -> anyhow::Result<Load> {
    let opts = ChainOptions::new(tclab_binary()?);
    let mut t = TracedChain::start(&opts, mode, Backend::Auto)
        .with_context(|| format!("failed to start the chain with propagation={mode}"))?;
    let target = t.chain.entry();
    // warm up: connections, ARP, the agents' maps
    for _ in 0..20 {
        let (status, _) = t.chain.get(&[])?;
        anyhow::ensure!(status == 200, "warm-up request answered {status}");
    }
    t.collect(usize::MAX, Duration::from_millis(100));
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
    let started = Instant::now();
    let mut spans = 0;
    while started.elapsed() < time {
        spans += t.collect(usize::MAX, Duration::from_millis(50)).len();
    }
    done.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let mut lat = Vec::new();
    for w in workers {
        lat.extend(w.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??);
    }
    spans += t.collect(usize::MAX, Duration::from_millis(200)).len();
    lat.sort_unstable();
    Ok(Load {
        rps: lat.len() as f64 / elapsed.as_secs_f64(),
        p50_us: percentile(&lat, 0.50),
        p99_us: percentile(&lat, 0.99),
        spans,
    })
}

/// The section: off, then each mode, alternated twice so that drift (other
/// load on the machine) hits both sides alike; best run of each kept.
///
/// # Errors
/// When the chain cannot start or a request fails.
pub fn run(quick: bool) -> anyhow::Result<SectionReport> {
    let time = if quick { Duration::from_millis(800) } else { Duration::from_secs(5) };
    let rounds = if quick { 1 } else { 2 };
    let modes = [Mode::Headers, Mode::All];
    let mut best: Vec<Option<Load>> = vec![None; modes.len() + 1];
    for _ in 0..rounds {
        for (i, mode) in std::iter::once(Mode::Disabled).chain(modes).enumerate() {
            let l = measure(mode, time)?;
            if best[i].is_none_or(|b| l.rps > b.rps) {
                best[i] = Some(l);
            }
        }
    }
    let off = best[0].context("no baseline run")?;
    let mut s = SectionReport::new(
        Section::Propagation,
        "Context propagation: the three-service chain",
        "the same chain and agents with propagation disabled, same run",
    );
    s.rows.push(Row::value("requests/s, propagation=disabled", off.rps, "req/s").note(format!(
        "p50 {:.0} µs, p99 {:.0} µs, {} spans",
        off.p50_us, off.p99_us, off.spans
    )));
    for (mode, on) in modes.iter().zip(&best[1..]) {
        let on = on.context("no run")?;
        let loss = (1.0 - on.rps / off.rps) * 100.0;
        s.rows.push(
            Row::ratio(format!("requests/s, propagation={mode}"), on.rps, off.rps, "req/s")
                .note(format!("{} spans", on.spans)),
        );
        s.rows.push(Row::value(format!("throughput loss, propagation={mode}"), loss, "%").target(Target::ValueBelow(5.0)));
        s.rows.push(Row::ratio(format!("p99 latency, propagation={mode}"), on.p99_us, off.p99_us, "µs"));
    }
    s.notes.push(format!(
        "{CLIENTS} kept-alive client connections back to back for {} s per run, best of {rounds} alternated rounds; \
         every request crosses frontend -> backend -> worker, one agent per service (TC + socket programs); \
         on a shared 2-core machine the spread between runs is several percent",
        time.as_secs_f64()
    ));
    Ok(s)
}
