//! Differential fuzzing of the datapath's HTTP recogniser and W3C
//! traceparent validator: the BPF classifiers (BPF_PROG_TEST_RUN) and the
//! Rust reference ([`tclab_datapath::http_ref`]) on the same inputs.
//!
//! Inputs are first data segments of fresh connections: real requests and
//! responses (the TCP payloads of the fixtures, plus built-in ones) mutated
//! with knowledge of their structure (start line, header lines, names, OWS,
//! traceparent values, line ends, the 640/768-byte limits, the 64-line cap),
//! byte-level mutations, and random bytes. Every input runs through one of
//! the two hooks in one of four framings (IPv4, IPv6, 802.1Q, IPv4 options),
//! and the event, the connection's pending state and the counters are
//! compared with the reference. The packet must come out unchanged with
//! TC_ACT_UNSPEC, and the agent's event decoder must accept the event.
//!
//! `tclab fuzz-datapath --count 1000000 --seed N` runs a campaign; a
//! disagreement is saved (`--save DIR`) as a regression input, and
//! [`replay_corpus`] runs every saved input again (a `cargo test` does).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use aya::TestRun;
use aya::maps::{HashMap as BpfHashMap, MapData, RingBuf};
use aya::programs::TestRunOptions;
use etherparse::{SlicedPacket, TransportSlice};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use tclab_datapath::events::Event as Decoded;
use tclab_datapath::frames::{self, TCP_ACK, TCP_PSH};
use tclab_datapath::http_ref::{Conn, Kind, METHODS, Outcome, Tp};
use tclab_datapath::loader::{Datapath, DatapathConfig, Hook, MAP_CT, MAP_EVENTS};
use tclab_datapath::types::{
    Counter, CtEntry, CtTuple, EventKind, HttpEvent, PAYLOAD_CAPTURE, TRACEPARENT_LEN, TraceparentStatus,
    ct_flags,
};
use tclab_datapath::w3c::TraceParent;

/// `tclab fuzz-datapath` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Inputs to run.
    #[arg(long, default_value_t = 1_000_000)]
    pub count: u64,
    /// Seed of the generator (the same seed gives the same inputs).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Captures whose TCP payloads seed the mutations.
    #[arg(long, default_value = "fixtures")]
    pub fixtures: PathBuf,
    /// Folder where inputs the two sides disagree on are written.
    #[arg(long, default_value = "fuzz/regressions/datapath-http")]
    pub save: PathBuf,
    /// Replay the inputs saved in --save instead of generating.
    #[arg(long)]
    pub replay: bool,
}

/// `tclab fuzz-datapath`: exit status 1 on any disagreement.
///
/// # Errors
/// Loading the datapath, reading the fixtures, a failing BPF_PROG_TEST_RUN.
pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    let mut fuzzer = Fuzzer::new()?;
    let summary = if args.replay {
        replay_corpus(&mut fuzzer, &args.save)?
    } else {
        let seeds = seeds_from_fixtures(&args.fixtures)?;
        let started = Instant::now();
        let mut last = Instant::now();
        let summary = fuzzer.campaign(args.seed, args.count, &seeds, |s| {
            if last.elapsed().as_secs() >= 10 {
                last = Instant::now();
                eprintln!("{} inputs, {} disagreements, {:.0}/s", s.inputs, s.disagreements.len(), s.rate(started));
            }
        })?;
        for d in summary.disagreements.iter().filter(|d| !d.payload.is_empty()) {
            save(&args.save, d)?;
        }
        summary
    };
    println!("{}", summary.text());
    if !summary.disagreements.is_empty() {
        for d in summary.disagreements.iter().take(20) {
            println!("  {}", d.detail);
        }
        eprintln!(
            "error: {} disagreements between the BPF classifiers and the Rust reference (inputs saved in {})",
            summary.disagreements.len(),
            args.save.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Write a disagreeing input as `<hash>.bin` in `dir`.
fn save(dir: &Path, d: &Disagreement) -> anyhow::Result<PathBuf> {
    use sha2::Digest as _;
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let name = hex::encode(&sha2::Sha256::digest(&d.payload)[..8]);
    let path = match d.split {
        Some(k) => dir.join(format!("{name}.split{k}.bin")),
        None => dir.join(format!("{name}.bin")),
    };
    std::fs::write(&path, &d.payload).with_context(|| format!("failed to write {}", path.display()))?;
    Ok(path)
}

/// The TCP payloads (non-empty, distinct) of every capture in `dir`.
///
/// # Errors
/// An unreadable folder or capture.
pub fn seeds_from_fixtures(dir: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("failed to list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pcap" || x == "pcapng"))
        .collect();
    files.sort();
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    for f in files {
        for p in crate::pcap::read_file(&f)? {
            if let Ok(s) = SlicedPacket::from_ethernet(&p.data)
                && let Some(TransportSlice::Tcp(t)) = s.transport
                && !t.payload().is_empty()
                && !seeds.iter().any(|x| x == t.payload())
            {
                seeds.push(t.payload().to_vec());
            }
        }
    }
    Ok(seeds)
}

/// Requests and responses that need no capture.
pub fn builtin_seeds() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = METHODS
        .iter()
        .map(|m| frames::request(m, "/api/v1/users?id=42", &[&format!("traceparent: {}", frames::TP)]))
        .collect();
    out.push(frames::request("GET", "/", &["tracestate: rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"]));
    out.push(frames::response(200, "OK"));
    out.push(frames::response(404, "Not Found"));
    out
}

/// One input the two sides disagree on.
#[derive(Debug, Clone)]
pub struct Disagreement {
    pub input: u64,
    pub payload: Vec<u8>,
    /// Where the payload was cut into two segments, if it was.
    pub split: Option<usize>,
    pub detail: String,
}

/// What a campaign saw.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub inputs: u64,
    pub requests: u64,
    pub responses: u64,
    /// Inputs sent as two segments of one connection.
    pub splits: u64,
    pub continuations: u64,
    pub no_event: u64,
    pub tp_valid: u64,
    pub tp_invalid: u64,
    pub tracestates: u64,
    pub pending: u64,
    pub disagreements: Vec<Disagreement>,
    pub seconds: f64,
    /// Kernel events the agent's decoder refused (garbled start lines).
    pub decode_errors: u64,
}

impl Summary {
    fn rate(&self, started: Instant) -> f64 {
        self.inputs as f64 / started.elapsed().as_secs_f64().max(1e-9)
    }

    /// Count one segment's outcome.
    fn count(&mut self, o: &Outcome) {
        self.pending += u64::from(o.pending);
        match &o.event {
            None => self.no_event += 1,
            Some(e) => {
                match e.kind {
                    Kind::Request => self.requests += 1,
                    Kind::Response => self.responses += 1,
                    Kind::Continuation => self.continuations += 1,
                    Kind::None => {}
                }
                match e.traceparent {
                    Tp::Valid(_) => self.tp_valid += 1,
                    Tp::Invalid => self.tp_invalid += 1,
                    Tp::Missing => {}
                }
                self.tracestates += u64::from(!e.tracestate.is_empty());
            }
        }
    }

    /// One line per figure.
    pub fn text(&self) -> String {
        format!(
            "{} inputs ({} split in two segments) in {:.1} s ({:.0}/s): {} requests, {} continuations ({} valid traceparent, {} invalid, {} with tracestate), {} responses, {} segments without event, {} left pending, {} refused by the agent's decoder; {} disagreements",
            self.inputs,
            self.splits,
            self.seconds,
            self.inputs as f64 / self.seconds.max(1e-9),
            self.requests,
            self.continuations,
            self.tp_valid,
            self.tp_invalid,
            self.tracestates,
            self.responses,
            self.no_event,
            self.pending,
            self.decode_errors,
            self.disagreements.len()
        )
    }
}

/// The framing of an input.
#[derive(Debug, Clone, Copy)]
enum Framing {
    V4,
    V6,
    Vlan,
    V4Options,
}

/// The loaded datapath and its ring buffer.
pub struct Fuzzer {
    dp: Datapath,
    ring: RingBuf<MapData>,
    /// Connections used so far: each input gets a fresh one.
    conns: u32,
    out: Vec<u8>,
    /// HTTP events the agent's decoder refused.
    decode_errors: u64,
}

impl Fuzzer {
    /// Load the datapath (LRU CT map: fresh connections evict old ones).
    ///
    /// # Errors
    /// When loading fails (needs root).
    pub fn new() -> anyhow::Result<Fuzzer> {
        let cfg = DatapathConfig { ct_max_entries: 65_536, ..Default::default() };
        let mut dp = Datapath::load(&cfg).context("failed to load the datapath")?;
        let map = dp.ebpf_mut().take_map(MAP_EVENTS).context("the datapath has no events map")?;
        let ring = RingBuf::try_from(map).context("the events map is not a ring buffer")?;
        Ok(Fuzzer { dp, ring, conns: 0, out: vec![0; 4096], decode_errors: 0 })
    }

    fn counters(&self) -> anyhow::Result<[u64; 5]> {
        let c = self.dp.counters().context("failed to read the counters")?;
        Ok([
            c.get(Counter::HttpRequests),
            c.get(Counter::HttpResponses),
            c.get(Counter::TraceparentValid),
            c.get(Counter::TraceparentInvalid),
            c.get(Counter::EventsLost),
        ])
    }

    /// Run `count` generated inputs from `seed`; `progress` sees the summary
    /// after every 10,000.
    ///
    /// # Errors
    /// A failing BPF_PROG_TEST_RUN or map read (not a disagreement: those are
    /// in the summary).
    pub fn campaign(
        &mut self,
        seed: u64,
        count: u64,
        seeds: &[Vec<u8>],
        mut progress: impl FnMut(&Summary),
    ) -> anyhow::Result<Summary> {
        let mut generator = Generator::new(seed, seeds.to_vec());
        let mut summary = Summary::default();
        let started = Instant::now();
        let before = self.counters()?;
        let decode_before = self.decode_errors;
        for i in 0..count {
            let payload = generator.next_input();
            let framing = [Framing::V4, Framing::V4, Framing::V6, Framing::Vlan, Framing::V4Options]
                [generator.rng.gen_range(0..5)];
            let hook = if generator.rng.gen_bool(0.5) { Hook::Egress } else { Hook::Ingress };
            let split = generator.split_point(&payload);
            summary.inputs += 1;
            summary.splits += u64::from(split.is_some());
            match self.check(&payload, split, framing, hook)? {
                Ok(outcomes) => outcomes.iter().for_each(|o| summary.count(o)),
                Err((outcomes, detail)) => {
                    outcomes.iter().for_each(|o| summary.count(o));
                    let at = split.map(|k| format!(" split at {k}")).unwrap_or_default();
                    summary.disagreements.push(Disagreement { input: i, payload: payload.clone(), split, detail: format!("input {i}{at}: {detail}") });
                }
            }
            if i % 10_000 == 9_999 {
                summary.seconds = started.elapsed().as_secs_f64();
                progress(&summary);
            }
        }
        summary.seconds = started.elapsed().as_secs_f64();
        summary.decode_errors = self.decode_errors - decode_before;
        self.check_counters(before, &mut summary)?;
        Ok(summary)
    }

    /// The counters moved as the reference says (and no event was lost).
    fn check_counters(&self, before: [u64; 5], summary: &mut Summary) -> anyhow::Result<()> {
        let after = self.counters()?;
        let delta: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
        let want = [summary.requests, summary.responses, summary.tp_valid, summary.tp_invalid, 0];
        if delta != want {
            summary.disagreements.push(Disagreement {
                input: summary.inputs,
                payload: Vec::new(),
                split: None,
                detail: format!(
                    "counters (requests, responses, traceparent valid, invalid, events lost): kernel {delta:?}, reference {want:?}"
                ),
            });
        }
        Ok(())
    }

    /// Cut `payload` in two segments at every byte, each cut on a fresh
    /// connection, alternating hooks and framings.
    ///
    /// # Errors
    /// A failing BPF_PROG_TEST_RUN or map read.
    pub fn every_split(&mut self, payload: &[u8]) -> anyhow::Result<Summary> {
        let mut summary = Summary::default();
        let started = Instant::now();
        for k in 1..payload.len() {
            let framing = [Framing::V4, Framing::V6, Framing::Vlan, Framing::V4Options][k % 4];
            let hook = if k % 2 == 0 { Hook::Egress } else { Hook::Ingress };
            summary.inputs += 1;
            summary.splits += 1;
            match self.check(payload, Some(k), framing, hook)? {
                Ok(outcomes) => outcomes.iter().for_each(|o| summary.count(o)),
                Err((outcomes, detail)) => {
                    outcomes.iter().for_each(|o| summary.count(o));
                    summary.disagreements.push(Disagreement { input: k as u64, payload: payload.to_vec(), split: Some(k), detail: format!("split at {k}: {detail}") });
                }
            }
        }
        summary.seconds = started.elapsed().as_secs_f64();
        Ok(summary)
    }

    /// Run one payload on a fresh connection, whole or cut in two segments
    /// at `split`, and compare each segment with the reference. Outer
    /// error: a run itself failed; inner: the reference outcomes, and a
    /// disagreement.
    #[allow(clippy::type_complexity, reason = "private: outcomes either way, and what differed")]
    fn check(
        &mut self,
        payload: &[u8],
        split: Option<usize>,
        framing: Framing,
        hook: Hook,
    ) -> anyhow::Result<Result<Vec<Outcome>, (Vec<Outcome>, String)>> {
        self.conns = self.conns.wrapping_add(1);
        let (src, dst) = endpoints(self.conns, matches!(framing, Framing::V6));
        let segments: Vec<&[u8]> = match split {
            Some(k) => vec![&payload[..k], &payload[k..]],
            None => vec![payload],
        };
        let mut conn = Conn::new();
        let mut outcomes = Vec::new();
        for (n, seg) in segments.iter().enumerate() {
            let expected = Outcome { event: conn.segment(seg), pending: conn.pending() };
            let result = self.run_segment(seg, src, dst, framing, hook)?;
            outcomes.push(expected.clone());
            let verdict = result.and_then(|(http, pending)| compare(&expected, &http, pending, u8::from(hook == Hook::Egress)));
            if let Err(d) = verdict {
                let which = if segments.len() > 1 { format!("segment {}: ", n + 1) } else { String::new() };
                return Ok(Err((outcomes, format!("{which}{d}"))));
            }
        }
        Ok(Ok(outcomes))
    }

    /// One segment through one hook: its HTTP events and the connection's
    /// pending flag after it.
    #[allow(clippy::type_complexity, reason = "private")]
    fn run_segment(
        &mut self,
        payload: &[u8],
        src: SocketAddr,
        dst: SocketAddr,
        framing: Framing,
        hook: Hook,
    ) -> anyhow::Result<Result<(Vec<HttpEvent>, bool), String>> {
        let frame = match framing {
            Framing::V4 | Framing::V6 => frames::tcp(src, dst, TCP_ACK | TCP_PSH, payload),
            Framing::Vlan => frames::tcp_vlan(src, dst, TCP_ACK | TCP_PSH, payload, Some(100)),
            Framing::V4Options => {
                frames::with_ipv4_options(&frames::tcp(src, dst, TCP_ACK | TCP_PSH, payload), &[1, 1, 1, 0])
            }
        };
        if self.out.len() < frame.len() + 256 {
            self.out.resize(frame.len() + 256, 0);
        }
        let res = self
            .dp
            .program_mut(hook)
            .test_run(TestRunOptions { data_in: Some(&frame), data_out: Some(&mut self.out), ..Default::default() })
            .with_context(|| format!("BPF_PROG_TEST_RUN on {hook:?} ({} bytes)", frame.len()))?;
        if res.return_value != u32::MAX {
            return Ok(Err(format!("verdict {:#x}, not TC_ACT_UNSPEC", res.return_value)));
        }
        if res.data_size_out as usize != frame.len() || self.out[..frame.len()] != frame[..] {
            return Ok(Err("the packet came out changed".into()));
        }
        let mut http = Vec::new();
        while let Some(item) = self.ring.next() {
            let kind = item.get(8..12).map_or(0, |k| u32::from_ne_bytes([k[0], k[1], k[2], k[3]]));
            if EventKind::from_raw(kind).is_some_and(EventKind::is_http) {
                // the agent may refuse a garbled start line (counted), but must not panic
                self.decode_errors += u64::from(Decoded::decode(&item).is_err());
                let ev = tclab_datapath::events::read_http_record(&item)
                    .map_err(|need| anyhow::anyhow!("short HTTP event: {} bytes, {need} needed", item.len()))?;
                http.push(ev);
            }
        }
        let tuple = CtTuple::new(src, dst, 6);
        let ct = BpfHashMap::<_, CtTuple, CtEntry>::try_from(self.dp.ebpf().map(MAP_CT).context("no CT map")?)?;
        let pending = match ct.get(&tuple, 0) {
            Ok(e) => e.has(ct_flags::HTTP_PENDING),
            Err(e) => return Ok(Err(format!("no CT entry for the connection: {e}"))),
        };
        Ok(Ok((http, pending)))
    }
}

/// A fresh pair of endpoints for connection `n`.
fn endpoints(n: u32, v6: bool) -> (SocketAddr, SocketAddr) {
    if v6 {
        let src = Ipv6Addr::new(0xfd00, 0xf022, 0, 0, 0, 0, (n >> 16) as u16, n as u16);
        (SocketAddr::new(IpAddr::V6(src), 40_000), SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0xfd00, 0xf022, 0, 0, 0, 0, 0, 1)), 80))
    } else {
        let src = Ipv4Addr::from(0x0a40_0000 | (n & 0x003f_ffff));
        (SocketAddr::new(IpAddr::V4(src), 40_000 + (n >> 22) as u16), SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 9, 0, 1)), 80))
    }
}

fn show(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(120)]).into_owned();
    format!("{s:?}{}", if b.len() > 120 { "…" } else { "" })
}

/// Compare the kernel's HTTP events for one input with the reference.
fn compare(expected: &Outcome, got: &[HttpEvent], pending: bool, dir: u8) -> Result<(), String> {
    let mut diffs = Vec::new();
    if pending != expected.pending {
        diffs.push(format!("pending: kernel {pending}, reference {}", expected.pending));
    }
    match (&expected.event, got) {
        (None, []) => {}
        (None, [e, ..]) => diffs.push(format!("kernel emitted kind {} where the reference has no event", e.hdr.kind)),
        (Some(x), []) => diffs.push(format!("no kernel event, reference {:?}", x.kind)),
        (Some(_), [_, _, ..]) => diffs.push(format!("{} kernel events for one segment", got.len())),
        (Some(x), [e]) => {
            let kind = match x.kind {
                Kind::Request => EventKind::HttpRequest,
                Kind::Continuation => EventKind::HttpContinuation,
                _ => EventKind::HttpResponse,
            };
            if e.hdr.kind != kind as u32 {
                diffs.push(format!("kind: kernel {}, reference {kind:?}", e.hdr.kind));
            }
            if e.hdr.dir != dir {
                diffs.push(format!("dir: kernel {}, hook {dir}", e.hdr.dir));
            }
            if e.payload_len as usize != x.payload_len {
                diffs.push(format!("payload_len: kernel {}, reference {}", e.payload_len, x.payload_len));
            }
            if e.payload() != &x.captured[..] {
                diffs.push(format!("captured payload: kernel {}, reference {}", show(e.payload()), show(&x.captured)));
            }
            if e.payload[x.captured.len()..PAYLOAD_CAPTURE].iter().any(|&b| b != 0) {
                diffs.push("bytes after the captured payload are not zero".into());
            }
            if (usize::from(e.carried_len), e.line_start) != (x.carried, u8::from(x.line_start)) {
                diffs.push(format!(
                    "carried_len {} line_start {}, reference {} {}",
                    e.carried_len, e.line_start, x.carried, x.line_start
                ));
            }
            let (status, tp) = match x.traceparent {
                Tp::Missing => (TraceparentStatus::Missing, [0u8; TRACEPARENT_LEN + 1]),
                Tp::Invalid => (TraceparentStatus::Invalid, [0u8; TRACEPARENT_LEN + 1]),
                Tp::Valid(v) => {
                    let mut t = [0u8; TRACEPARENT_LEN + 1];
                    t[..TRACEPARENT_LEN].copy_from_slice(&v);
                    (TraceparentStatus::Valid, t)
                }
            };
            if e.traceparent_status != status as u8 || e.traceparent != tp {
                diffs.push(format!(
                    "traceparent: kernel {:?} {}, reference {status:?} {}",
                    TraceparentStatus::from_raw(e.traceparent_status),
                    show(&e.traceparent),
                    show(&tp)
                ));
            }
            if e.tracestate() != &x.tracestate[..] || e.tracestate[x.tracestate.len()..].iter().any(|&b| b != 0) {
                diffs.push(format!("tracestate: kernel {}, reference {}", show(e.tracestate()), show(&x.tracestate)));
            }
        }
    }
    if diffs.is_empty() { Ok(()) } else { Err(diffs.join("; ")) }
}

/// Run every input saved in `dir` (`*.bin`) through both sides.
///
/// # Errors
/// An unreadable folder or file, or a failing run.
pub fn replay_corpus(fuzzer: &mut Fuzzer, dir: &Path) -> anyhow::Result<Summary> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "bin")).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("failed to list {}", dir.display())),
    };
    files.sort();
    let mut summary = Summary::default();
    let started = Instant::now();
    let before = fuzzer.counters()?;
    for (i, f) in files.iter().enumerate() {
        let payload = std::fs::read(f).with_context(|| format!("failed to read {}", f.display()))?;
        // `<hash>.split<K>.bin`: the payload was cut in two segments at K
        let split = f
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.rsplit_once(".split"))
            .and_then(|(_, k)| k.parse::<usize>().ok())
            .filter(|&k| k > 0 && k < payload.len());
        for (framing, hook) in [(Framing::V4, Hook::Egress), (Framing::V6, Hook::Ingress)] {
            summary.inputs += 1;
            summary.splits += u64::from(split.is_some());
            match fuzzer.check(&payload, split, framing, hook)? {
                Ok(outcomes) => outcomes.iter().for_each(|o| summary.count(o)),
                Err((outcomes, detail)) => {
                    outcomes.iter().for_each(|o| summary.count(o));
                    summary.disagreements.push(Disagreement {
                        input: i as u64,
                        payload: payload.clone(),
                        split,
                        detail: format!("{}: {detail}", f.display()),
                    });
                }
            }
        }
    }
    summary.seconds = started.elapsed().as_secs_f64();
    fuzzer.check_counters(before, &mut summary)?;
    Ok(summary)
}

/// Bytes the byte-level mutations insert: what the recogniser cares about.
const ALPHABET: &[u8] = b"\r\n\r\n \t:-0123456789abcdefABCDEFtTrRaAcCeEpPsSnN/HGETP\x00\x7f\x80\xff";

/// The input generator: mutations of real requests and responses, and random bytes.
pub struct Generator {
    pub rng: StdRng,
    seeds: Vec<Vec<u8>>,
}

impl Generator {
    pub fn new(seed: u64, seeds: Vec<Vec<u8>>) -> Generator {
        let mut all = builtin_seeds();
        all.extend(seeds);
        Generator { rng: StdRng::seed_from_u64(seed), seeds: all }
    }

    /// The next payload.
    pub fn next_input(&mut self) -> Vec<u8> {
        match self.rng.gen_range(0..100) {
            0..=4 => self.random_bytes(),
            5..=7 => self.short_prefix(),
            8..=11 => {
                let mut v = self.start_line();
                let n = self.rng.gen_range(0..1400);
                v.extend((0..n).map(|_| self.rng.r#gen::<u8>()));
                v
            }
            _ => self.structured(),
        }
    }

    /// Where to cut an input into two segments of one connection (a third
    /// of them): inside the start line's first bytes, around a line end or
    /// a trace header name, or anywhere.
    pub fn split_point(&mut self, payload: &[u8]) -> Option<usize> {
        if payload.len() < 2 || !self.rng.gen_bool(0.33) {
            return None;
        }
        let near = |hay: &[u8], needle: &[u8]| -> Vec<usize> {
            hay.windows(needle.len()).enumerate().filter(|(_, w)| w.eq_ignore_ascii_case(needle)).map(|(i, _)| i).collect()
        };
        let anchors: Vec<usize> = match self.rng.gen_range(0..4) {
            0 => vec![0],
            1 => near(payload, b"\n"),
            2 => [near(payload, b"traceparent"), near(payload, b"tracestate")].concat(),
            _ => Vec::new(),
        };
        let k = if anchors.is_empty() {
            self.rng.gen_range(1..payload.len())
        } else {
            let a = anchors[self.rng.gen_range(0..anchors.len())] as i64;
            (a + self.rng.gen_range(-3..=20)).clamp(1, payload.len() as i64 - 1) as usize
        };
        Some(k)
    }

    fn random_bytes(&mut self) -> Vec<u8> {
        let n = self.rng.gen_range(0..1460);
        (0..n).map(|_| self.rng.r#gen::<u8>()).collect()
    }

    /// 1..10 bytes around a method start: split-method handling.
    fn short_prefix(&mut self) -> Vec<u8> {
        let m = METHODS[self.rng.gen_range(0..METHODS.len())];
        let mut v = format!("{m} /").into_bytes();
        v.truncate(self.rng.gen_range(1..=v.len()));
        if self.rng.gen_bool(0.3) {
            let i = self.rng.gen_range(0..v.len());
            v[i] = self.pick();
        }
        v
    }

    fn pick(&mut self) -> u8 {
        ALPHABET[self.rng.gen_range(0..ALPHABET.len())]
    }

    fn eol(&mut self) -> &'static [u8] {
        match self.rng.gen_range(0..20) {
            0 => b"\n",
            1 => b"\r",
            2 => b"",
            _ => b"\r\n",
        }
    }

    fn ows(&mut self) -> Vec<u8> {
        let n = match self.rng.gen_range(0..10) {
            0..=3 => 0,
            4..=6 => 1,
            7 => self.rng.gen_range(2..=8),
            _ => self.rng.gen_range(9..=20),
        };
        (0..n).map(|_| if self.rng.gen_bool(0.7) { b' ' } else { b'\t' }).collect()
    }

    /// A start line: request (mostly valid methods) or status line.
    fn start_line(&mut self) -> Vec<u8> {
        let r = self.rng.gen_range(0..10);
        if r < 7 {
            let m = METHODS[self.rng.gen_range(0..METHODS.len())];
            let m = match self.rng.gen_range(0..12) {
                0 => m.to_lowercase(),
                1 => m[..self.rng.gen_range(1..m.len())].to_string(),
                _ => m.to_string(),
            };
            let sep = if self.rng.gen_range(0..12) == 0 { "\t" } else { " " };
            format!("{m}{sep}/p{} HTTP/1.1", self.rng.gen_range(0..1000)).into_bytes()
        } else {
            let minor = if self.rng.gen_range(0..8) == 0 { 'x' } else { char::from(b'0' + self.rng.gen_range(0..10u8)) };
            let code = match self.rng.gen_range(0..10) {
                0 => format!("{}", self.rng.gen_range(0..100)),
                1 => format!("{}", self.rng.gen_range(1000..10000)),
                2 => "2x0".into(),
                _ => format!("{}", self.rng.gen_range(100..600)),
            };
            let after = ["", " OK", " Not Found", "\t"][self.rng.gen_range(0..4)];
            let major = if self.rng.gen_range(0..10) == 0 { '2' } else { '1' };
            format!("HTTP/{major}.{minor} {code}{after}").into_bytes()
        }
    }

    /// A traceparent value: a valid one of some version, maybe mutated.
    fn traceparent_value(&mut self) -> Vec<u8> {
        let tp = TraceParent::new_root(&mut self.rng);
        let mut s = tp.to_string();
        match self.rng.gen_range(0..8) {
            0 => s.replace_range(0..2, &format!("{:02x}", self.rng.gen_range(1..=0xffu8))),
            1 => {
                s.replace_range(0..2, &format!("{:02x}", self.rng.gen_range(1..=0xfeu8)));
                s.push_str(&format!("-{:x}", self.rng.r#gen::<u32>()));
            }
            2 => s.replace_range(53..55, &format!("{:02x}", self.rng.r#gen::<u8>())),
            _ => {}
        }
        let mut v = s.into_bytes();
        for _ in 0..[0, 0, 0, 1, 1, 2][self.rng.gen_range(0..6)] {
            if v.is_empty() {
                break;
            }
            match self.rng.gen_range(0..9) {
                0 => {
                    let i = self.rng.gen_range(0..v.len());
                    v[i] = self.pick();
                }
                1 => {
                    let i = self.rng.gen_range(0..v.len());
                    v.remove(i);
                }
                2 => {
                    let i = self.rng.gen_range(0..=v.len());
                    let c = self.pick();
                    v.insert(i, c);
                }
                3 => v.truncate(self.rng.gen_range(0..v.len())),
                4 => v.make_ascii_uppercase(),
                5 if v.len() >= 35 => v[3..35].fill(b'0'),
                6 if v.len() >= 52 => v[36..52].fill(b'0'),
                7 if v.len() >= 2 => v[0..2].copy_from_slice(b"ff"),
                _ => {
                    let c = self.pick();
                    v.push(c);
                }
            }
        }
        v
    }

    /// A header name that may or may not match, in random case.
    fn trace_name(&mut self, base: &str) -> Vec<u8> {
        let mut n: Vec<u8> = base.bytes().map(|c| if self.rng.gen_bool(0.2) { c.to_ascii_uppercase() } else { c }).collect();
        match self.rng.gen_range(0..16) {
            0 => n.push(b' '),
            1 => n.insert(0, b' '),
            2 => {
                let i = self.rng.gen_range(0..n.len());
                n.remove(i);
            }
            3 => {
                let i = self.rng.gen_range(0..n.len());
                n[i] ^= 0x01;
            }
            _ => {}
        }
        n.push(b':');
        n
    }

    fn tracestate_value(&mut self) -> Vec<u8> {
        let n = [0, 5, 20, 60, 127, 128, 129, 200][self.rng.gen_range(0..8)];
        let mut v: Vec<u8> = (0..n).map(|_| b"abcxyz0189=,-_*/@ "[self.rng.gen_range(0..18)]).collect();
        if !v.is_empty() && self.rng.gen_range(0..10) == 0 {
            let i = self.rng.gen_range(0..v.len());
            v[i] = [0u8, b'\t', 0x7f, 0xc3][self.rng.gen_range(0..4)];
        }
        v
    }

    /// Split a payload into lines, each with its end (LF included).
    fn lines(payload: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut cur = Vec::new();
        for &c in payload {
            cur.push(c);
            if c == b'\n' {
                out.push(std::mem::take(&mut cur));
            }
        }
        if !cur.is_empty() {
            out.push(cur);
        }
        out
    }

    fn header_line(&mut self, name: Vec<u8>, value: Vec<u8>) -> Vec<u8> {
        let mut l = name;
        l.extend(self.ows());
        l.extend(value);
        l.extend(self.ows());
        l.extend_from_slice(self.eol());
        l
    }

    /// A mutated request or response.
    fn structured(&mut self) -> Vec<u8> {
        let seed = self.seeds[self.rng.gen_range(0..self.seeds.len())].clone();
        let mut lines = Generator::lines(&seed);
        if lines.is_empty() {
            lines.push(b"GET / HTTP/1.1\r\n".to_vec());
        }
        let ops = self.rng.gen_range(1..=5);
        for _ in 0..ops {
            let at = self.rng.gen_range(1..=lines.len());
            match self.rng.gen_range(0..16) {
                0 => {
                    let mut l = self.start_line();
                    l.extend_from_slice(b"\r\n");
                    lines[0] = l;
                }
                1..=4 => {
                    let name = self.trace_name("traceparent");
                    let value = self.traceparent_value();
                    let l = self.header_line(name, value);
                    lines.insert(at, l);
                }
                5 | 6 => {
                    let name = self.trace_name("tracestate");
                    let value = self.tracestate_value();
                    let l = self.header_line(name, value);
                    lines.insert(at, l);
                }
                7 => {
                    // many short lines: the 64-line cap
                    let n = self.rng.gen_range(10..80);
                    for k in 0..n {
                        let l = if self.rng.gen_bool(0.8) { b"a:b\r\n".to_vec() } else { format!("x{k}:\n").into_bytes() };
                        lines.insert(at, l);
                    }
                }
                8 => {
                    // padding: moves later lines around the 640 and 768 limits
                    let n = self.rng.gen_range(0..700);
                    let mut l = b"X-Pad: ".to_vec();
                    l.extend(std::iter::repeat_n(b'p', n));
                    l.extend_from_slice(b"\r\n");
                    lines.insert(at, l);
                }
                9 => {
                    let l = [&b"\r\n"[..], b"\n", b"\r\n\r\n"][self.rng.gen_range(0..3)].to_vec();
                    lines.insert(at, l);
                }
                10 if lines.len() > 1 => {
                    lines.remove(at.min(lines.len() - 1));
                }
                11 => {
                    let l = lines[self.rng.gen_range(0..lines.len())].clone();
                    lines.insert(at, l);
                }
                12 => {
                    for l in &mut lines {
                        if l.ends_with(b"\r\n") && self.rng.gen_bool(0.5) {
                            l.remove(l.len() - 2);
                        }
                    }
                }
                13 => {
                    let k = self.rng.gen_range(0..lines.len());
                    let l = &mut lines[k];
                    for _ in 0..self.rng.gen_range(1..4) {
                        let c = ALPHABET[self.rng.gen_range(0..ALPHABET.len())];
                        match self.rng.gen_range(0..3) {
                            0 if !l.is_empty() => {
                                let i = self.rng.gen_range(0..l.len());
                                l[i] = c;
                            }
                            1 if !l.is_empty() => {
                                let i = self.rng.gen_range(0..l.len());
                                l.remove(i);
                            }
                            _ => {
                                let i = self.rng.gen_range(0..=l.len());
                                l.insert(i, c);
                            }
                        }
                    }
                }
                14 => {
                    // body after the header block, perhaps with a traceparent
                    let name = self.trace_name("traceparent");
                    let value = self.traceparent_value();
                    let l = self.header_line(name, value);
                    lines.push(b"\r\n".to_vec());
                    lines.push(l);
                }
                _ => {
                    let l = [&b"Accept: */*\r\n"[..], b"Host: svc\r\n", b"Connection: keep-alive\r\n", b"\r\n"]
                        [self.rng.gen_range(0..4)]
                    .to_vec();
                    lines.insert(at, l);
                }
            }
        }
        let mut out: Vec<u8> = lines.concat();
        // cut: often near a traceparent, anywhere otherwise
        if self.rng.gen_range(0..6) == 0 && !out.is_empty() {
            let near = out.windows(12).position(|w| w.eq_ignore_ascii_case(b"traceparent:"));
            let cut = match near {
                Some(p) if self.rng.gen_bool(0.7) => (p + self.rng.gen_range(0..90)).min(out.len()),
                _ => self.rng.gen_range(1..=out.len()),
            };
            out.truncate(cut);
        }
        out.truncate(1460);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tclab_datapath::http_ref;

    #[test]
    fn generator_is_deterministic_and_covers_the_outcomes() {
        let mut a = Generator::new(5, Vec::new());
        let mut b = Generator::new(5, Vec::new());
        let mut kinds = [0usize; 3];
        let (mut valid, mut invalid, mut pending) = (0, 0, 0);
        for _ in 0..3000 {
            let x = a.next_input();
            assert_eq!(x, b.next_input());
            let o = http_ref::first_segment(&x);
            pending += usize::from(o.pending);
            match o.event {
                None => kinds[0] += 1,
                Some(e) => {
                    kinds[if e.kind == Kind::Request { 1 } else { 2 }] += 1;
                    valid += usize::from(matches!(e.traceparent, Tp::Valid(_)));
                    invalid += usize::from(e.traceparent == Tp::Invalid);
                }
            }
        }
        assert!(kinds.iter().all(|&k| k > 100), "{kinds:?}");
        assert!(valid > 300 && invalid > 300 && pending > 100, "valid {valid}, invalid {invalid}, pending {pending}");
    }
}
