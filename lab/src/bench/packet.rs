//! Per-packet cost of the datapath's classifiers under BPF_PROG_TEST_RUN,
//! against the empty classifier (`tclab_empty`) in the same run.
//!
//! Method (BENCHMARKS.md repeats it):
//! * Steady-state classes (non-IP, UDP, TCP ACK): one `test_run` with
//!   `repeat` = 1M (full) per sample; the kernel reports the mean time per
//!   run, measured around its own loop (no syscall cost in it). The CT entry
//!   is created by one warm-up run, so every measured run is a CT hit.
//! * HTTP classes emit a ~520-byte ring-buffer event per run. The ring holds
//!   ~500, so a 1M-repeat run would measure the "ring full, event dropped"
//!   path for 99.95% of its runs. They run as batches of 256 repeats, ≥1M
//!   runs per sample in total, and after each batch exactly as many records
//!   are consumed as it wrote: every event is really written, and the
//!   reader stays one record behind, as a busy reader is, so writes do not
//!   wake it (the wake-up is its own row, under TCP SYN). The ring-full
//!   figure is in the note.
//! * TCP SYN (CT miss → insert): a repeated run of one SYN hits the entry its
//!   first run created, so every SYN gets a fresh tuple and its own
//!   `test_run` with `repeat = 1`. Such a run is cold (caches after a
//!   syscall) and includes one `ktime_get_ns`; an ACK on an established entry
//!   is measured the same way in between, so `SYN r1 − ACK r1` is the
//!   insert's own cost, reported on top of the hot ACK. `CtNew` proves every
//!   SYN inserted. Each insert emits a connection event: when the reader is
//!   caught up, `bpf_ringbuf_output` wakes it (irq_work, a self-IPI: a VM
//!   exit on this machine), which is reported as its own row.
//! * Baseline: `tclab_empty` with the same frame and the same plan,
//!   interleaved with the datapath sample by sample. Ratio = median ÷ median.

use aya::TestRun;
use aya::maps::{MapData, RingBuf};
use aya::programs::{SchedClassifier, TestRunOptions};
use anyhow::{Context as _, bail};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use tclab_datapath::frames::{self, TCP_ACK, TCP_PSH, TCP_SYN, TP};
use tclab_datapath::loader::{self, Datapath, DatapathConfig, Hook, MAP_EVENTS, empty_classifier};
use tclab_datapath::types::Counter;

use super::report::{Row, SectionReport, Target};
use super::stats::{median, spread};
use super::Section;

/// `TC_ACT_UNSPEC` as BPF_PROG_TEST_RUN returns it.
const UNSPEC: u32 = u32::MAX;
/// Repeats per HTTP batch: far fewer events than the ring holds.
const EVENT_BATCH: u32 = 256;
/// SYN runs between ring drains when the reader is "behind": ~1,900
/// connection events of 136 bytes fit the ring.
pub const DRAIN_EVERY: u64 = 1024;

/// Sizes of a run.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Runs per sample (steady state) or total per sample (batched).
    pub repeat: u32,
    /// Samples per class; the median is reported.
    pub samples: usize,
    /// Fresh-tuple SYNs per sample.
    pub syns: usize,
}

impl Plan {
    pub fn new(quick: bool) -> Plan {
        if quick {
            Plan { repeat: 20_000, samples: 3, syns: 300 }
        } else {
            Plan { repeat: 1_000_000, samples: 5, syns: 10_000 }
        }
    }
}

/// One `test_run`: (return value, mean ns per run as the kernel measured it).
pub fn test_run(prog: &SchedClassifier, frame: &[u8], repeat: u32) -> anyhow::Result<(u32, f64)> {
    let res = prog
        .test_run(TestRunOptions { data_in: Some(frame), repeat, ..Default::default() })
        .with_context(|| format!("BPF_PROG_TEST_RUN ({} bytes, repeat {repeat})", frame.len()))?;
    Ok((res.return_value, res.duration.as_nanos() as f64))
}

/// Mean ns per run over `total` runs done as batches of `batch`, calling
/// `between(n)` after each batch of `n` runs (outside the measured time).
pub fn batched(
    prog: &SchedClassifier,
    frame: &[u8],
    total: u32,
    batch: u32,
    expect: Option<u32>,
    mut between: impl FnMut(u32),
) -> anyhow::Result<f64> {
    let (mut done, mut ns) = (0u32, 0.0);
    while done < total {
        let n = batch.min(total - done);
        let (ret, per) = test_run(prog, frame, n)?;
        if let Some(e) = expect
            && ret != e
        {
            bail!("verdict {ret:#x}, expected {e:#x}");
        }
        ns += per * f64::from(n);
        done += n;
        between(n);
    }
    Ok(ns / f64::from(total.max(1)))
}

/// A source address unique for every `i` below 2^22 (10.64.0.0/10).
pub fn fresh_source(i: u32) -> SocketAddr {
    let ip = Ipv4Addr::from(0x0a40_0000 | (i & 0x003f_ffff));
    SocketAddr::V4(SocketAddrV4::new(ip, 40_000))
}

/// Consume `n` records (fewer if the ring holds fewer). Consuming exactly
/// what a batch wrote keeps the one record left before it, so the reader
/// stays one record behind and the next write does not wake it (see the
/// module doc); returns how many were consumed.
pub fn consume(ring: &mut RingBuf<MapData>, n: usize) -> usize {
    let mut got = 0;
    while got < n && ring.next().is_some() {
        got += 1;
    }
    got
}

/// Drain a ring buffer; returns how many records it held.
pub fn drain(ring: &mut RingBuf<MapData>) -> usize {
    let mut n = 0;
    while ring.next().is_some() {
        n += 1;
    }
    n
}

enum Kind {
    /// One warm-up run, then `repeat` runs per sample.
    Steady,
    /// Events each run: batches with the ring drained between.
    Events,
}

struct Class {
    name: &'static str,
    warm: Vec<Vec<u8>>,
    frame: Vec<u8>,
    kind: Kind,
    target: Option<f64>,
}

fn classes() -> Vec<Class> {
    let s = frames::sa("10.0.0.2:80");
    let get = frames::request("GET", "/api/v1/items?id=42", &["Accept: */*"]);
    let get_tp = frames::request("GET", "/api/v1/items?id=42", &[&format!("traceparent: {TP}"), "Accept: */*"]);
    let (c_ack, c_http, c_tp, c_resp) =
        (frames::sa("10.0.0.1:40001"), frames::sa("10.0.0.1:40002"), frames::sa("10.0.0.1:40003"), frames::sa("10.0.0.1:40004"));
    let c_data = frames::sa("10.0.0.1:40005");
    vec![
        Class { name: "non-IP (ARP)", warm: vec![], frame: frames::arp_request(), kind: Kind::Steady, target: Some(1.5) },
        Class {
            name: "UDP, no payload (CT hit)",
            warm: vec![],
            frame: frames::udp(frames::sa("10.0.0.1:40000"), frames::sa("10.0.0.2:53"), b""),
            kind: Kind::Steady,
            target: Some(3.5),
        },
        Class {
            name: "TCP ACK, no payload (CT hit)",
            warm: vec![frames::tcp(c_ack, s, TCP_SYN, b"")],
            frame: frames::tcp(c_ack, s, TCP_ACK, b""),
            kind: Kind::Steady,
            target: Some(3.5),
        },
        Class {
            name: "TCP, 120-byte payload that is not HTTP",
            warm: vec![frames::tcp(c_data, s, TCP_SYN, b"")],
            frame: frames::tcp(c_data, s, TCP_ACK | TCP_PSH, &[0x17u8; 120]),
            kind: Kind::Steady,
            target: None,
        },
        Class {
            name: "HTTP request, no traceparent",
            warm: vec![frames::tcp(c_http, s, TCP_SYN, b"")],
            frame: frames::tcp(c_http, s, TCP_ACK | TCP_PSH, &get),
            kind: Kind::Events,
            target: None,
        },
        Class {
            name: "HTTP request with traceparent",
            warm: vec![frames::tcp(c_tp, s, TCP_SYN, b"")],
            frame: frames::tcp(c_tp, s, TCP_ACK | TCP_PSH, &get_tp),
            kind: Kind::Events,
            target: Some(8.0),
        },
        Class {
            name: "HTTP response",
            warm: vec![frames::tcp(c_resp, s, TCP_SYN, b""), frames::tcp(c_resp, s, TCP_ACK | TCP_PSH, &get_tp)],
            frame: frames::tcp(s, c_resp, TCP_ACK | TCP_PSH, &frames::response(200, "OK")),
            kind: Kind::Events,
            target: None,
        },
    ]
}

/// The datapath with its ring buffer taken out (to drain it).
pub struct Loaded {
    pub dp: Datapath,
    pub ring: RingBuf<MapData>,
}

impl Loaded {
    pub fn new(cfg: &DatapathConfig) -> anyhow::Result<Loaded> {
        let mut dp = Datapath::load(cfg).with_context(|| format!("load the datapath ({cfg:?})"))?;
        let map = dp.ebpf_mut().take_map(MAP_EVENTS).context("the datapath has no events map")?;
        let ring = RingBuf::try_from(map).context("the events map is not a ring buffer")?;
        Ok(Loaded { dp, ring })
    }

    pub fn counter(&self, c: Counter) -> anyhow::Result<u64> {
        Ok(self.dp.counters().context("read the datapath counters")?.get(c))
    }
}

/// Run the section.
///
/// # Errors
/// Loading or running a program failed, or a verdict was not TC_ACT_UNSPEC.
pub fn run(quick: bool) -> anyhow::Result<SectionReport> {
    let plan = Plan::new(quick);
    let mut report = SectionReport::new(
        Section::Packet,
        "Per-packet cost (BPF_PROG_TEST_RUN)",
        "`tclab_empty` (returns TC_ACT_UNSPEC, nothing else), same frame, same plan, interleaved",
    );
    let empty = empty_classifier().context("load the empty classifier")?;
    let mut l = Loaded::new(&DatapathConfig::default())?;
    let mut next_tuple = 0u32;
    for hook in [Hook::Egress, Hook::Ingress] {
        let hook_name = match hook {
            Hook::Egress => "egress",
            Hook::Ingress => "ingress",
        };
        for class in classes() {
            for w in &class.warm {
                let (ret, _) = test_run(l.dp.program(hook), w, 1)?;
                if ret != UNSPEC {
                    bail!("{hook_name} {}: warm-up verdict {ret:#x}", class.name);
                }
            }
            drain(&mut l.ring);
            let lost_before = l.counter(Counter::EventsLost)?;
            let (mut base, mut dp) = (Vec::new(), Vec::new());
            for _ in 0..plan.samples {
                match class.kind {
                    Kind::Steady => {
                        base.push(test_run(empty.program(), &class.frame, plan.repeat)?.1);
                        let (ret, ns) = test_run(l.dp.program(hook), &class.frame, plan.repeat)?;
                        if ret != UNSPEC {
                            bail!("{hook_name} {}: verdict {ret:#x}, expected TC_ACT_UNSPEC", class.name);
                        }
                        dp.push(ns);
                    }
                    Kind::Events => {
                        base.push(batched(empty.program(), &class.frame, plan.repeat, EVENT_BATCH, None, |_| {})?);
                        let ring = &mut l.ring;
                        dp.push(batched(l.dp.program(hook), &class.frame, plan.repeat, EVENT_BATCH, Some(UNSPEC), |n| {
                            consume(ring, n as usize);
                        })?);
                    }
                }
            }
            drain(&mut l.ring);
            let lost = l.counter(Counter::EventsLost)? - lost_before;
            let (b, d) = (median(&base), median(&dp));
            let mut note = format!("{} samples, datapath {} ns, empty {} ns", plan.samples, spread(&dp, 1), spread(&base, 1));
            if matches!(class.kind, Kind::Events) {
                note.push_str(&format!("; events lost: {lost}"));
                if class.target.is_some() {
                    // the same class with one long run: the ring is full after ~500 runs
                    let (_, full) = test_run(l.dp.program(hook), &class.frame, plan.repeat)?;
                    drain(&mut l.ring);
                    note.push_str(&format!("; one {}-repeat run (ring full, events dropped): {full:.1} ns = {:.2}×", plan.repeat, full / b.max(0.001)));
                }
            }
            let mut row = Row::ratio(format!("{hook_name} · {}", class.name), d, b, "ns").note(note);
            if let Some(t) = class.target {
                row = row.target(Target::RatioAtMost(t));
            }
            report.rows.push(row);
        }
        report.rows.push(syn_row(false, &empty, &mut l, hook, hook_name, plan, &mut next_tuple)?);
        report.rows.push(syn_row(true, &empty, &mut l, hook, hook_name, plan, &mut next_tuple)?);
    }
    report.notes.push(format!(
        "steady classes: median of {} samples of one {}-repeat run; HTTP classes: batches of {EVENT_BATCH}, each batch's events consumed after it (every event written, reader one record behind), {} runs per sample",
        plan.samples, plan.repeat, plan.repeat
    ));
    report.notes.push(format!(
        "TCP SYN: one test_run per fresh tuple (a repeated SYN would hit the entry its first run made), interleaved with an r=1 ACK on an established entry: value = SYN r1 − ACK r1 + ACK hot (the insert's cost over a hit, at steady-state warmth). \"Reader behind\": ring drained every {DRAIN_EVERY} runs; \"caught up\": after every run, the case where the kernel's default policy woke the reader for each event (an irq_work self-IPI, a VM exit here: 8.8 µs per SYN before wake-ups were limited to threshold crossings)"
    ));
    report.notes.push(format!("CT map: {} entries (LRU, the default); ring buffer {} MiB, wake-ups past 1/16 of it (the defaults)", loader::DEFAULT_CT_MAX_ENTRIES, loader::DEFAULT_EVENTS_RING_BYTES >> 20));
    Ok(report)
}

/// What fresh-tuple SYNs cost, measured one `test_run` per packet (r=1),
/// with the r=1 references needed to read it.
#[derive(Debug, Clone, Copy)]
pub struct SynCost {
    /// Median ns of a SYN on a fresh tuple (CT miss → insert), r=1.
    pub syn_r1: f64,
    /// Median ns of an ACK on an established tuple (CT hit), r=1: the same
    /// cold start and timer read, without the insert.
    pub ack_r1: f64,
    /// The same ACK, hot (one `repeat` run).
    pub ack_hot: f64,
    /// Empty classifier, r=1 and hot.
    pub empty_r1: f64,
    pub empty_hot: f64,
    /// Slowest single SYN.
    pub worst: f64,
    /// SYNs run, and how many the datapath counted as inserted / failed.
    pub runs: u64,
    pub inserted: u64,
    pub failed: u64,
}

impl SynCost {
    /// The insert's extra cost over a hit, both cold (r=1), added to the hot
    /// hit: what a SYN costs at the steady-state classes' warmth.
    pub fn hot_equivalent(&self) -> f64 {
        (self.syn_r1 - self.ack_r1 + self.ack_hot).max(0.0)
    }

    pub fn describe(&self) -> String {
        format!(
            "{} fresh tuples (CtNew +{}, CtInsertFailed +{}); r=1 medians: SYN {:.0} ns, ACK hit {:.0} ns, empty {:.0} ns; hot: ACK {:.1} ns, empty {:.1} ns; value = SYN r1 − ACK r1 + ACK hot",
            self.runs, self.inserted, self.failed, self.syn_r1, self.ack_r1, self.empty_r1, self.ack_hot, self.empty_hot
        )
    }
}

/// Run `syns` fresh-tuple SYNs per sample through `hook`, interleaved with
/// an established ACK and the empty classifier, each r=1. With `caught_up`
/// the ring is drained after every run (the reader always caught up), else
/// every [`DRAIN_EVERY`] runs.
#[allow(clippy::too_many_arguments, reason = "one measurement, its knobs")]
pub fn syn_cost(
    empty: &loader::EmptyClassifier,
    l: &mut Loaded,
    hook: Hook,
    syns: usize,
    samples: usize,
    hot_repeat: u32,
    caught_up: bool,
    next: &mut u32,
) -> anyhow::Result<SynCost> {
    let s = frames::sa("10.0.0.2:80");
    let c = frames::sa("10.0.0.1:40009");
    let ack = frames::tcp(c, s, TCP_ACK, b"");
    test_run(l.dp.program(hook), &frames::tcp(c, s, TCP_SYN, b""), 1)?;
    test_run(l.dp.program(hook), &ack, 1)?;
    let (new0, failed0) = (l.counter(Counter::CtNew)?, l.counter(Counter::CtInsertFailed)?);
    let (mut syn_r1, mut ack_r1, mut ack_hot, mut empty_r1, mut empty_hot) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut runs, mut worst) = (0u64, 0.0f64);
    for _ in 0..samples {
        let frames_: Vec<Vec<u8>> = (0..syns)
            .map(|_| {
                *next += 1;
                frames::tcp(fresh_source(*next), s, TCP_SYN, b"")
            })
            .collect();
        empty_hot.push(test_run(empty.program(), &ack, hot_repeat)?.1);
        ack_hot.push(test_run(l.dp.program(hook), &ack, hot_repeat)?.1);
        let (mut e, mut a, mut d) = (Vec::with_capacity(syns), Vec::with_capacity(syns), Vec::with_capacity(syns));
        for f in &frames_ {
            e.push(test_run(empty.program(), f, 1)?.1);
            a.push(test_run(l.dp.program(hook), &ack, 1)?.1);
            let (ret, ns) = test_run(l.dp.program(hook), f, 1)?;
            if ret != UNSPEC {
                bail!("TCP SYN: verdict {ret:#x}, expected TC_ACT_UNSPEC");
            }
            worst = worst.max(ns);
            d.push(ns);
            runs += 1;
            if caught_up || runs % DRAIN_EVERY == 0 {
                drain(&mut l.ring);
            }
        }
        drain(&mut l.ring);
        empty_r1.push(median(&e));
        ack_r1.push(median(&a));
        syn_r1.push(median(&d));
    }
    Ok(SynCost {
        syn_r1: median(&syn_r1),
        ack_r1: median(&ack_r1),
        ack_hot: median(&ack_hot),
        empty_r1: median(&empty_r1),
        empty_hot: median(&empty_hot),
        worst,
        runs,
        inserted: l.counter(Counter::CtNew)? - new0,
        failed: l.counter(Counter::CtInsertFailed)? - failed0,
    })
}

/// TCP SYN on fresh tuples: CT miss and insert on every run.
fn syn_row(
    caught_up: bool,
    empty: &loader::EmptyClassifier,
    l: &mut Loaded,
    hook: Hook,
    hook_name: &str,
    plan: Plan,
    next: &mut u32,
) -> anyhow::Result<Row> {
    let c = syn_cost(empty, l, hook, plan.syns, plan.samples, plan.repeat, caught_up, next)?;
    if c.inserted != c.runs {
        bail!("{hook_name} TCP SYN: {} fresh tuples but CtNew +{}: not every run was an insert", c.runs, c.inserted);
    }
    let row = if caught_up {
        Row::ratio(format!("{hook_name} · TCP SYN, reader caught up (ring drained after every run)"), c.hot_equivalent(), c.empty_hot, "ns")
    } else {
        Row::ratio(format!("{hook_name} · TCP SYN (CT miss → insert)"), c.hot_equivalent(), c.empty_hot, "ns")
            .target(Target::RatioAtMost(3.5))
    };
    Ok(row.note(c.describe()))
}
