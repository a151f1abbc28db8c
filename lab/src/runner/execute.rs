//! One scenario, end to end: topology, chain, replays, collection.
//!
//! Everything that touches the device runs on one thread inside the device's
//! namespace, so the chain's links are created and dropped there. Sockets on
//! the peer side are opened inside the peer's namespace and then used from
//! here (a socket keeps the namespace it was created in).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tclab_datapath::events::EventReader;
use tclab_datapath::span::{SequentialIds, SpanBuilder};
use tclab_net::packet::{Capture, Injector};

use crate::scenario::{ResolvedChain, resolve_chain};
use crate::scenario::{Capability, Scenario, Step};

use super::chain::LiveChain;
use super::replay::{self, Injectors};
use super::report::ScenarioResult;
use super::{RunOptions, topology};

/// How long captures stay open after the last packet for late frames.
const CAPTURE_DRAIN: Duration = Duration::from_millis(100);

/// Ethertypes captured after the device's ingress (ptype-specific packet
/// sockets see frames only once TC ingress has let them through).
/// A VLAN-tagged frame without a VLAN device is untagged by the stack after
/// TC ingress and delivered under its inner ethertype, so it shows up here
/// untagged (the replay line still shows the tag it was sent with).
const INGRESS_ETHERTYPES: [u16; 3] = [0x0800, 0x86dd, 0x0806];

/// Sees the agent's raw spans and CT records as a run collects them, for
/// callers that print them the way tclab-agent does (`tclab replay`); the
/// result itself keeps only the normalised snapshot lines.
pub trait Observer: Send {
    fn span(&mut self, _span: &tclab_datapath::span::Span) {}
    fn ct(&mut self, _records: &[tclab_datapath::ct::CtRecord]) {}
}

impl Observer for () {}

/// Run `scenario` on the running kernel.
pub fn execute(scenario: &Scenario, opts: &RunOptions) -> anyhow::Result<ScenarioResult> {
    execute_observed(scenario, opts, &mut ())
}

/// [`execute`], showing the raw spans and CT records to `observer`.
pub fn execute_observed(
    scenario: &Scenario,
    opts: &RunOptions,
    observer: &mut dyn Observer,
) -> anyhow::Result<ScenarioResult> {
    if let Some(services) = &scenario.services {
        return crate::testserver::scenario::execute(scenario, services, &opts.kernel);
    }
    let topo = topology::build(&scenario.topology)
        .with_context(|| format!("{}: failed to build the topology", scenario.path.display()))?;
    let resolved = resolve_chain(scenario, opts.kernel.has(Capability::Tcx));
    let peer_ifindex = topo.peer_link.ifindex;
    let (ingress_injector, egress_capture) = topo.peer.try_run(|| -> anyhow::Result<_> {
        let inj = Injector::open(peer_ifindex).context("failed to open the injector on the peer")?;
        let cap = Capture::all(peer_ifindex).context("failed to open the capture on the peer")?;
        Ok((inj, cap))
    })??;
    let device = topo.device.clone();
    topo.dut.try_run(|| {
        inside_device_ns(scenario, opts, &resolved, &device, ingress_injector, egress_capture, observer)
    })?
}

fn inside_device_ns(
    scenario: &Scenario,
    opts: &RunOptions,
    resolved: &ResolvedChain,
    device: &tclab_net::Link,
    ingress_injector: Injector,
    mut egress_capture: Capture,
    observer: &mut dyn Observer,
) -> anyhow::Result<ScenarioResult> {
    let mut result = ScenarioResult::new(&scenario.name, &opts.kernel.name);
    // The agent's start-up rules run inside: a refusal is an outcome, not an error.
    let tcx = opts.kernel.has(Capability::Tcx);
    let mut chain = LiveChain::attach(&device.name, &scenario.chain, resolved, &scenario.agent, tcx)?;
    if let Some(outcome) = chain.agent_outcome() {
        result.agent = outcome;
    }
    result.chain = chain.kernel_view(device.ifindex)?;

    let mut ingress_capture = Capture::after_ingress(device.ifindex, &INGRESS_ETHERTYPES)
        .context("failed to open the capture after ingress")?;
    let injectors = Injectors {
        ingress: ingress_injector,
        egress: Injector::open(device.ifindex).context("failed to open the injector on the device")?,
    };
    let mut reader = match chain.agent_mut() {
        Some(dp) => Some(event_reader(dp)?),
        None => None,
    };
    let mut spans = SpanBuilder::new(Box::new(SequentialIds::default()));
    for replay in &scenario.replays {
        result.packets.extend(replay::replay(replay, &scenario.topology, &injectors, &chain)?);
        for step in &replay.after {
            run_step(step, &mut chain)?;
        }
        collect_spans(&mut reader, &mut spans, &mut result, observer);
    }
    collect_output(&mut result, &mut ingress_capture, &mut egress_capture, opts, scenario)?;
    collect_spans(&mut reader, &mut spans, &mut result, observer);
    collect_agent_state(&mut chain, &mut result, observer)?;
    // Packets seen since the chain was complete (not the agents' dry runs).
    let counts = replay::ChainCounters::read(&chain)?;
    for (entry, n) in chain.entries.iter().zip(counts) {
        result.counters.insert(entry.name.clone(), n);
    }
    result.maps = chain.object_dumps()?;
    result.count_verdicts(&chain.object_entries());
    Ok(result)
}

fn event_reader(dp: &mut tclab_datapath::loader::Datapath) -> anyhow::Result<EventReader> {
    use tclab_datapath::loader::MAP_EVENTS;
    let map = dp.ebpf_mut().take_map(MAP_EVENTS).with_context(|| format!("the datapath has no map {MAP_EVENTS}"))?;
    let ring = aya::maps::RingBuf::try_from(map).with_context(|| format!("failed to open ring buffer {MAP_EVENTS}"))?;
    Ok(EventReader::new(ring))
}

fn run_step(step: &Step, chain: &mut LiveChain) -> anyhow::Result<()> {
    match step {
        Step::WaitMs(ms) => std::thread::sleep(Duration::from_millis(*ms)),
        Step::CtGc(false) => {}
        Step::CtGc(true) => {
            if let Some(dp) = chain.agent_mut() {
                let now = tclab_datapath::ct::monotonic_now_ns();
                dp.ct_gc(now).context("failed to run CT garbage collection")?;
            }
        }
    }
    Ok(())
}

fn collect_spans(
    reader: &mut Option<EventReader>,
    spans: &mut SpanBuilder,
    result: &mut ScenarioResult,
    observer: &mut dyn Observer,
) {
    let Some(reader) = reader else { return };
    for event in reader.drain() {
        // One response segment can complete several pipelined requests.
        for span in spans.push_all(&event) {
            observer.span(&span);
            result.spans.push(span.snapshot_line());
        }
    }
}

fn collect_agent_state(
    chain: &mut LiveChain,
    result: &mut ScenarioResult,
    observer: &mut dyn Observer,
) -> anyhow::Result<()> {
    let Some(dp) = chain.agent_mut() else { return Ok(()) };
    use tclab_datapath::loader::MAP_CT;
    let map = dp.ebpf().map(MAP_CT).with_context(|| format!("the datapath has no map {MAP_CT}"))?;
    let mut records = tclab_datapath::ct::read_ct(map, MAP_CT).context("failed to read the CT table")?;
    tclab_datapath::ct::sort_records(&mut records);
    observer.ct(&records);
    for r in &records {
        result.ct.push(r.normalised_line());
        result.ct_states.push((r.tuple_line(), r.state().name().to_string()));
    }
    let counters = dp.counters().context("failed to read the agent's counters")?;
    result.events_lost = counters.get(tclab_datapath::types::Counter::EventsLost);
    result.agent_counters = counters.iter().filter(|(_, v)| *v > 0).map(|(k, v)| (k.to_string(), v)).collect();
    Ok(())
}

fn collect_output(
    result: &mut ScenarioResult,
    ingress: &mut Capture,
    egress: &mut Capture,
    opts: &RunOptions,
    scenario: &Scenario,
) -> anyhow::Result<()> {
    // Both at once: the quiet period is waited once (100 ms a scenario).
    let mut drained = Capture::drain_together(&mut [ingress, egress], CAPTURE_DRAIN)
        .context("failed to drain the captures (after ingress, at the peer)")?
        .into_iter();
    let (into_stack, at_peer) = (drained.next().unwrap_or_default(), drained.next().unwrap_or_default());
    let mut frames = Vec::new();
    for (label, captured) in [("ingress→stack", &into_stack), ("egress→peer", &at_peer)] {
        for f in captured {
            result.output.push(format!("{label:<13} {}", crate::frame::summarize(&f.data)));
            frames.push(f.data.clone());
        }
    }
    if let Some(dir) = &opts.results_dir {
        write_output_pcap(dir, scenario, &frames)?;
    }
    Ok(())
}

fn write_output_pcap(dir: &Path, scenario: &Scenario, frames: &[Vec<u8>]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let path = dir.join(format!("{}.out.pcap", scenario.name));
    let packets: Vec<crate::pcap::Packet> = frames
        .iter()
        .enumerate()
        .map(|(i, data)| crate::pcap::Packet {
            index: i + 1,
            ts: Duration::from_micros(i as u64),
            data: data.clone(),
            orig_len: data.len() as u32,
            truncated: false,
        })
        .collect();
    crate::pcap::write_file(&path, &packets).with_context(|| format!("failed to write {}", path.display()))
}
