//! Replay throughput through the agent's chain on the host kernel, and the
//! agent's event rate with ring-buffer loss counted.
//!
//! Topology as `tclab run` builds it (runner/topology.rs): two fd-held
//! namespaces and a veth pair without addresses. The device under test is an
//! HTTP server: client packets are sent on the peer and reach the device's
//! TC ingress, server packets are sent on the device and cross its TC egress,
//! where the agent (the library the `tclab-agent` binary wraps, started on a
//! thread inside the namespace) is attached to both hooks; a thread consumes
//! its ring buffer into spans meanwhile, as the agent's run loop does.
//!
//! Traffic: HTTP/1.1 connections of 8 packets each (SYN, SYN-ACK, ACK,
//! request with traceparent, response, ACK, FIN, FIN), every one on a fresh
//! tuple: 4 events per connection (open, request, response, close) and one
//! server span.
//!
//! Two runs, each with a fresh agent: as fast as the sender goes (the
//! throughput), and paced at the 200k packets/s target (the loss at that
//! rate).
//!
//! Baseline: the same frames sent with no program attached, by the lab's
//! per-frame injector (one `sendto` each) and by a batched `sendmmsg`
//! injector, with and without `PACKET_QDISC_BYPASS` on the peer (on the
//! device it would skip TC egress).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use tclab_datapath::agent::{Agent, AgentConfig};
use tclab_datapath::frames::{self, MAC_A, MAC_B, TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN, TP};
use tclab_datapath::types::Counter;
use tclab_net::NetNs;

use super::inject::{BatchInjector, MAX_BATCH};
use super::packet::fresh_source;
use super::report::{Row, SectionReport, Target};
use super::Section;

/// The replay target: packets/s through the chain with no event lost.
const TARGET_PPS: f64 = 200_000.0;
/// Packets per connection.
const PER_CONN: usize = 8;
/// Events per connection: open, request, response, close.
const EVENTS_PER_CONN: u64 = 4;
/// The agent's consumer stops after this long without events once the sender is done.
const QUIET: Duration = Duration::from_millis(500);

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Where a frame is sent from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// On the peer: the frame arrives at the device's TC ingress (client → server).
    Peer,
    /// On the device: it crosses the device's TC egress (server → client).
    Device,
}

/// Connections laid out in groups of [`GROUP`]: each packet of the
/// exchange for the whole group, then the next, so each connection keeps its
/// order and every run of one direction is a full batch.
const GROUP: usize = 64;

/// The frames, in one buffer, as runs of one direction.
struct Frames {
    bytes: Vec<u8>,
    /// (side, byte ranges of its frames)
    runs: Vec<(Side, Vec<(usize, usize)>)>,
}

impl Frames {
    fn build(connections: usize) -> Frames {
        let server = frames::sa("10.0.0.2:80");
        let req = frames::request("GET", "/api/v1/items?id=42", &[&format!("traceparent: {TP}"), "Accept: */*"]);
        let resp = frames::response(200, "OK");
        let mut f = Frames { bytes: Vec::with_capacity(connections * PER_CONN * 130), runs: Vec::new() };
        let ids: Vec<u32> = (1..=connections as u32).collect();
        for group in ids.chunks(GROUP) {
            for phase in 0..PER_CONN {
                let mut ranges = Vec::with_capacity(group.len());
                let mut side = Side::Peer;
                for &i in group {
                    let c = fresh_source(i);
                    let (sd, frame) = match phase {
                        0 => (Side::Peer, frames::tcp(c, server, TCP_SYN, b"")),
                        1 => (Side::Device, frames::tcp(server, c, TCP_SYN | TCP_ACK, b"")),
                        2 => (Side::Peer, frames::tcp(c, server, TCP_ACK, b"")),
                        3 => (Side::Peer, frames::tcp(c, server, TCP_ACK | TCP_PSH, &req)),
                        4 => (Side::Device, frames::tcp(server, c, TCP_ACK | TCP_PSH, &resp)),
                        5 => (Side::Peer, frames::tcp(c, server, TCP_ACK, b"")),
                        6 => (Side::Peer, frames::tcp(c, server, TCP_FIN | TCP_ACK, b"")),
                        _ => (Side::Device, frames::tcp(server, c, TCP_FIN | TCP_ACK, b"")),
                    };
                    side = sd;
                    let start = f.bytes.len();
                    f.bytes.extend_from_slice(&frame);
                    ranges.push((start, f.bytes.len()));
                }
                f.runs.push((side, ranges));
            }
        }
        f
    }

    fn len(&self) -> usize {
        self.runs.iter().map(|(_, r)| r.len()).sum()
    }

    /// The runs as slices.
    fn slices(&self) -> Vec<(Side, Vec<&[u8]>)> {
        self.runs.iter().map(|(side, r)| (*side, r.iter().map(|&(a, b)| &self.bytes[a..b]).collect())).collect()
    }
}

/// One injector per side.
struct Senders<T> {
    peer: T,
    device: T,
}

impl Senders<BatchInjector> {
    /// Send every run in order; with `rate` (packets/s), each batch waits
    /// for its due time.
    fn send(&self, runs: &[(Side, Vec<&[u8]>)], rate: Option<f64>) -> std::io::Result<u64> {
        let start = Instant::now();
        let mut sent = 0;
        for (side, frames) in runs {
            if let Some(rate) = rate {
                let due = start + Duration::from_secs_f64(sent as f64 / rate);
                while let Some(wait) = due.checked_duration_since(Instant::now()) {
                    if wait > Duration::from_micros(100) {
                        std::thread::sleep(wait - Duration::from_micros(50));
                    } else {
                        std::hint::spin_loop();
                    }
                }
            }
            let inj = if *side == Side::Peer { &self.peer } else { &self.device };
            sent += inj.send_all(frames, MAX_BATCH)?;
        }
        Ok(sent)
    }
}

/// What one run through the agent measured.
struct AgentRun {
    sent: u64,
    send_time: Duration,
    seen: u64,
    events: u64,
    spans: u64,
    events_time: Duration,
    lost: u64,
    decode_errors: u64,
    /// CPU time of the consuming thread (poll, decode, spans).
    consumer_cpu: Duration,
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| Duration::new(t.tv_sec().max(0) as u64, t.tv_nsec().clamp(0, 999_999_999) as u32))
        .unwrap_or_default()
}

/// Batched injectors on both ends (the peer's optionally bypassing its qdisc).
fn open_senders(dut: &NetNs, peer: &NetNs, dev_idx: u32, peer_idx: u32, bypass: bool) -> anyhow::Result<Senders<BatchInjector>> {
    Ok(Senders {
        peer: peer.run(|| BatchInjector::open(peer_idx, bypass)).context("open the peer's injector")?,
        device: dut.run(|| BatchInjector::open(dev_idx, false)).context("open the device's injector")?,
    })
}

/// Run the section.
///
/// # Errors
/// The topology, the agent or a send failed.
pub fn run(quick: bool) -> anyhow::Result<SectionReport> {
    let connections = if quick { 2_500 } else { 125_000 };
    let frames = Frames::build(connections);
    let runs = frames.slices();
    let total = frames.len();
    let mut report = SectionReport::new(
        Section::Replay,
        "Replay throughput through the agent's chain (host kernel)",
        "the same frames sent with no program attached (injector alone)",
    );
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let tag = format!("tclab-bench-{}-{seq}", std::process::id());
    let dut = NetNs::new(&format!("{tag}-dut"))?;
    let peer = NetNs::new(&format!("{tag}-peer"))?;
    let pair = tclab_net::create_veth_pair(&dut, "bdut", &peer, "bpeer", Some((MAC_B, MAC_A)))?;
    let (peer_idx, dev_idx) = (pair.b.ifindex, pair.a.ifindex);

    // Baselines: the injectors alone.
    let single = Senders {
        peer: peer.run(|| tclab_net::packet::Injector::open(peer_idx)).context("open the per-frame injector")?,
        device: dut.run(|| tclab_net::packet::Injector::open(dev_idx)).context("open the per-frame injector")?,
    };
    let t = Instant::now();
    for (side, frames) in &runs {
        let inj = if *side == Side::Peer { &single.peer } else { &single.device };
        for f in frames {
            inj.send(f).context("send a frame")?;
        }
    }
    let single_pps = total as f64 / t.elapsed().as_secs_f64();
    report.rows.push(Row::value("injector alone: sendto per frame (the lab's Injector)", single_pps, "pkt/s").note(format!("{total} frames")));
    let mut best = (0.0f64, false);
    for bypass in [false, true] {
        let inj = open_senders(&dut, &peer, dev_idx, peer_idx, bypass)?;
        let t = Instant::now();
        let sent = inj.send(&runs, None).context("send frames")?;
        let pps = sent as f64 / t.elapsed().as_secs_f64();
        if pps > best.0 {
            best = (pps, bypass);
        }
        let name = if bypass { "injector alone: sendmmsg ×64, peer with PACKET_QDISC_BYPASS" } else { "injector alone: sendmmsg ×64" };
        report.rows.push(Row::value(name, pps, "pkt/s").note(format!("{sent} of {total} frames taken")));
    }

    // Through the agent, with the faster batched injector.
    let (baseline_pps, bypass) = best;
    let inj = open_senders(&dut, &peer, dev_idx, peer_idx, bypass)?;
    let how = if bypass { "sendmmsg ×64, peer with PACKET_QDISC_BYPASS" } else { "sendmmsg ×64" };
    let expected_events = connections as u64 * EVENTS_PER_CONN;
    for rate in [None, Some(TARGET_PPS)] {
        // a fresh agent each time: empty CT, empty ring
        let r = dut.run(|| agent_run(&inj, &runs, rate))?;
        let label = match rate {
            None => "as fast as possible".to_owned(),
            Some(p) => format!("paced at {} pkt/s", super::report::human(p)),
        };
        let pps = r.seen as f64 / r.send_time.as_secs_f64();
        let mut through = Row::ratio(format!("{label}: packets through the agent's chain"), pps, baseline_pps, "pkt/s")
            .note(format!("{} sent in {:.2} s with {how}; the datapath counted {}", r.sent, r.send_time.as_secs_f64(), r.seen));
        if rate.is_none() {
            through = through.target(Target::ValueAtLeast(TARGET_PPS));
        }
        report.rows.push(through);
        report.rows.push(
            Row::value(format!("{label}: events consumed by the agent"), r.events as f64 / r.events_time.as_secs_f64().max(1e-9), "events/s")
                .note(format!(
                    "{} of {expected_events} expected events, {} spans, {} decode errors, in {:.2} s",
                    r.events,
                    r.spans,
                    r.decode_errors,
                    r.events_time.as_secs_f64()
                )),
        );
        report.rows.push(
            Row::ratio(
                format!("{label}: agent consumer capacity (events per CPU-second)"),
                r.events as f64 / r.consumer_cpu.as_secs_f64().max(1e-9),
                r.events as f64 / r.events_time.as_secs_f64().max(1e-9),
                "events/s",
            )
            .note(format!(
                "consuming thread: {:.2} s CPU over {:.2} s; baseline: the event rate it consumed; a ratio well above 1 means it waited for CPU or events, not that it could not decode fast enough",
                r.consumer_cpu.as_secs_f64(),
                r.events_time.as_secs_f64()
            )),
        );
        let mut lost = Row::value(format!("{label}: events lost (ring buffer full)"), r.lost as f64, "events")
            .note("CNT_EVENTS_LOST: bpf_ringbuf_output failed");
        if rate.is_some() {
            lost = lost.target(Target::Zero);
        }
        report.rows.push(lost);
        report.rows.push(
            Row::value(format!("{label}: packets sent but not seen by the datapath"), r.sent.saturating_sub(r.seen) as f64, "packets")
                .target(Target::Zero),
        );
    }
    report.notes.push(format!(
        "{connections} HTTP connections × {PER_CONN} packets, each on a fresh tuple, the device as the server: client packets sent on the peer reach its TC ingress, server packets sent on it cross its TC egress (groups of {GROUP} connections, one direction per batch); agent: default configuration (TCX on this kernel, LRU CT of 524,288, {} MiB ring buffer)",
        tclab_datapath::loader::DEFAULT_EVENTS_RING_BYTES >> 20
    ));
    drop(pair);
    Ok(report)
}

/// On a thread inside the device's namespace: start the agent, send every
/// frame from another thread while this one consumes events, then read the
/// counters. The agent detaches when it is dropped here.
fn agent_run(inj: &Senders<BatchInjector>, runs: &[(Side, Vec<&[u8]>)], rate: Option<f64>) -> anyhow::Result<AgentRun> {
    let config = AgentConfig { ifaces: vec!["bdut".into()], ..AgentConfig::default() };
    let mut agent = Agent::start(config).context("start the agent on bdut")?;
    let (mut events, mut spans) = (0u64, 0u64);
    let started = Instant::now();
    let cpu0 = thread_cpu();
    let mut last_event = Instant::now();
    let (sent, send_time) = std::thread::scope(|s| -> anyhow::Result<(u64, Duration)> {
        let sender = s.spawn(move || {
            let t = Instant::now();
            inj.send(runs, rate).map(|n| (n, t.elapsed()))
        });
        loop {
            let (ev, sp) = agent.poll_events(Duration::from_millis(20));
            if !ev.is_empty() {
                last_event = Instant::now();
            }
            events += ev.len() as u64;
            spans += sp.len() as u64;
            if sender.is_finished() && last_event.elapsed() > QUIET {
                break;
            }
        }
        sender.join().map_err(|_| anyhow!("the sender thread panicked"))?.context("send frames")
    })?;
    let events_time = last_event.duration_since(started);
    let consumer_cpu = thread_cpu().saturating_sub(cpu0);
    let lost = agent.events_lost().context("read the events-lost counter")?;
    let counters = agent.datapath().counters().context("read the datapath counters")?;
    let decode_errors = agent.decode_errors();
    agent.stop().context("detach the agent")?;
    Ok(AgentRun { sent, send_time, seen: counters.get(Counter::Packets), events, spans, events_time, lost, decode_errors, consumer_cpu })
}
