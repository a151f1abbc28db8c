//! The agent as a library: probe, load, check the chain rules, attach every
//! device on both hooks, then turn ring-buffer events into spans.
//!
//! The lab embeds this in its own process, on a thread inside a network
//! namespace, so: no global state, no signal handling, and everything
//! namespace-scoped (device lookup, attach, chain queries) happens on the
//! thread that calls [`Agent::start`] / [`Agent::chain`]. Detaching works from
//! any thread (see `attach`). Dropping the agent detaches everything.

use std::sync::Arc;
use std::time::Duration;

use aya::maps::perf::PerfEventArray;
use aya::maps::{MapError, RingBuf};
use tclab_net::tc::Direction;

use crate::attach::{self, Api, AttachError, Attachment, Backend, DeviceState};
use crate::chain::{self, Chain, ChainError, RuleError};
use crate::ct::{self, CtError, CtRecord};
use crate::events::{Event, EventReader};
use crate::loader::{self, Datapath, DatapathConfig, EventTransport, Hook, LoadError};
use crate::metrics::Metrics;
use crate::otlp::{OtlpConfig, OtlpError, OtlpExporter};
use crate::probe::KernelFeatures;
use crate::propagation::{self, Propagation, PropagationConfig, link::Linker};
use crate::span::{RandomIds, Span, SpanBuilder, WallClock};
use crate::types::Counter;

/// What [`Agent::start`] needs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Devices to attach to (both hooks each), in the caller's namespace.
    pub ifaces: Vec<String>,
    /// Attach API choice.
    pub backend: Backend,
    /// Netlink priority (netlink backend only).
    pub priority: u16,
    /// CT size, map kind, lifetimes. `events` is overridden by the probe when
    /// the kernel has no ring buffer.
    pub datapath: DatapathConfig,
    /// Apply the Cilium compatibility rules (refuse/warn). On by default.
    pub enforce_rules: bool,
    /// Service name printed in `svc=[…]`.
    pub service_name: String,
    /// Run each foreign program that runs before ours once on a probe TCP
    /// SYN (BPF_PROG_TEST_RUN) and put its verdict in the warning. Off by
    /// default: the foreign program really runs (its maps see the packet).
    pub dry_run_chain: bool,
    /// Use these probe results instead of probing (the lab probes once per
    /// kernel; tests force a backend).
    pub features: Option<KernelFeatures>,
    /// Export every span over OTLP/HTTP as well (see [`crate::otlp`]).
    pub otlp: Option<OtlpConfig>,
    /// Context propagation (see [`crate::propagation`]); disabled by default.
    pub propagation: PropagationConfig,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            ifaces: Vec::new(),
            backend: Backend::Auto,
            priority: attach::DEFAULT_PRIORITY,
            datapath: DatapathConfig::default(),
            enforce_rules: true,
            service_name: "tclab".to_owned(),
            dry_run_chain: false,
            features: None,
            otlp: None,
            propagation: PropagationConfig::default(),
        }
    }
}

/// Why the agent could not start, or an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No device given.
    #[error("failed to start the agent: no interface given")]
    NoInterface,
    /// Context propagation could not start.
    #[error("failed to start context propagation: {0}")]
    Propagation(#[from] propagation::PropagationError),
    /// TCX asked for on a kernel without it.
    #[error("failed to start the agent: backend tcx requested but this kernel ({kernel}) has no TCX (6.6+); use --backend netlink or auto")]
    NoTcx {
        /// Kernel release.
        kernel: String,
    },
    /// Loading the BPF object failed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A compatibility rule refused the start.
    #[error(transparent)]
    Rule(#[from] RuleError),
    /// Attaching failed (everything attached before is detached again).
    #[error(transparent)]
    Attach(#[from] AttachError),
    /// Reading the chain failed.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// Reading the CT map failed.
    #[error(transparent)]
    Ct(#[from] CtError),
    /// A map of the object is missing or has the wrong type.
    #[error("failed to open map {map} of the datapath: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// aya's error.
        source: MapError,
    },
    /// The object has no events map.
    #[error("failed to open map {0} of the datapath: not in the object")]
    MissingMap(&'static str),
    /// The perf buffers could not be opened.
    #[error(transparent)]
    Events(#[from] crate::events::ReaderError),
    /// The OTLP exporter could not start.
    #[error(transparent)]
    Otlp(#[from] OtlpError),
    /// A device does not exist in the caller's namespace.
    #[error("failed to start the agent: no device {iface:?} in this network namespace")]
    NoDevice {
        /// Device name.
        iface: String,
    },
}

impl From<chain::StartCheckError> for AgentError {
    fn from(e: chain::StartCheckError) -> Self {
        match e {
            chain::StartCheckError::Chain(e) => AgentError::Chain(e),
            chain::StartCheckError::Rule(e) => AgentError::Rule(e),
        }
    }
}

/// A running agent.
pub struct Agent {
    // Declared first: dropped (detached) before the programs are unloaded.
    attachments: Vec<Attachment>,
    _devices: Vec<Arc<DeviceState>>,
    datapath: Datapath,
    events: EventReader,
    spans: SpanBuilder,
    otlp: Option<OtlpExporter>,
    propagation: Option<Propagation>,
    linker: Linker,
    features: KernelFeatures,
    api: Api,
    warnings: Vec<String>,
    metrics: Arc<Metrics>,
    clock: WallClock,
    transport: EventTransport,
    config: AgentConfig,
    stopped: bool,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("api", &self.api)
            .field("attachments", &self.attachments)
            .field("warnings", &self.warnings)
            .finish_non_exhaustive()
    }
}

fn direction(hook: Hook) -> Direction {
    match hook {
        Hook::Ingress => Direction::Ingress,
        Hook::Egress => Direction::Egress,
    }
}

impl Agent {
    /// Probe, load, apply the rules, attach every device on both hooks.
    /// On any error, what was attached is detached before returning.
    ///
    /// # Errors
    /// [`AgentError`], naming the device and the step.
    pub fn start(config: AgentConfig) -> Result<Agent, AgentError> {
        if config.ifaces.is_empty() {
            return Err(AgentError::NoInterface);
        }
        let features = config.features.clone().unwrap_or_else(KernelFeatures::probe);
        let api = config.backend.resolve(features.tcx);
        if api == Api::Tcx && !features.tcx {
            return Err(AgentError::NoTcx { kernel: features.kernel_version.clone() });
        }
        for iface in &config.ifaces {
            let known = std::ffi::CString::new(iface.as_str())
                // SAFETY: valid C string.
                .is_ok_and(|c| unsafe { libc::if_nametoindex(c.as_ptr()) } != 0);
            if !known {
                return Err(AgentError::NoDevice { iface: iface.clone() });
            }
        }
        let mut dp_cfg = config.datapath;
        // Perf buffers when asked for, or when the kernel has no ring buffer.
        if !features.ringbuf {
            dp_cfg.events = EventTransport::PerfBuf;
        }
        let mut datapath = Datapath::load(&dp_cfg)?;
        let mut warnings = Vec::new();
        // Rules first for every device, so a refusal attaches nothing.
        if config.enforce_rules {
            for iface in &config.ifaces {
                warnings.extend(chain::rules_before_attach(iface, api)?);
            }
        }
        let (mut attachments, devices) = attach_all(&mut datapath, &config, api)?;
        let propagation = if config.propagation.mode == propagation::Mode::Disabled {
            None
        } else {
            let mut p = Propagation::start(&config.propagation)?;
            attachments.extend(propagation::attach_classifiers(&mut p, &config.ifaces, api, config.priority, &devices)?);
            Some(p)
        };
        let ours: Vec<u32> = attachments.iter().map(|a| a.prog_id).collect();
        for iface in &config.ifaces {
            warnings.extend(chain::rules_after_attach(iface, &ours, config.dry_run_chain)?);
        }
        for w in &warnings {
            tracing::warn!("{w}");
        }
        let events = open_events(&mut datapath, dp_cfg.events)?;
        let metrics = Arc::new(Metrics::default());
        let clock = WallClock::now();
        let otlp = match &config.otlp {
            Some(cfg) => Some(OtlpExporter::start(cfg.clone(), &config.service_name, clock, metrics.clone())?),
            None => None,
        };
        let agent = Agent {
            attachments,
            _devices: devices,
            datapath,
            events,
            // with propagation most spans take the kernel's ids (linker)
            spans: SpanBuilder::new(Box::new(RandomIds)).deferring_ids(propagation.is_some()),
            otlp,
            propagation,
            linker: Linker::new(),
            features,
            api,
            warnings,
            metrics,
            clock,
            transport: dp_cfg.events,
            config,
            stopped: false,
        };
        agent.refresh_metrics();
        Ok(agent)
    }

    /// Kernel features the agent started with.
    pub fn features(&self) -> &KernelFeatures {
        &self.features
    }

    /// The attach API in use.
    pub fn api(&self) -> Api {
        self.api
    }

    /// Warnings from the rules and the chain (also logged).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// What is attached.
    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// Kernel ids of our programs (as attached).
    pub fn program_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.attachments.iter().map(|a| a.prog_id).collect();
        ids.dedup();
        ids
    }

    /// Clock used for Beyla timestamps.
    pub fn clock(&self) -> &WallClock {
        &self.clock
    }

    /// Service name for `svc=[…]`.
    pub fn service_name(&self) -> &str {
        &self.config.service_name
    }

    /// The loaded datapath (counters, CT GC, maps).
    pub fn datapath(&mut self) -> &mut Datapath {
        &mut self.datapath
    }

    /// CT table capacity.
    pub fn ct_max_entries(&self) -> u32 {
        self.datapath.ct_max_entries()
    }

    /// Shared metrics (serve them with `metrics::MetricsServer`).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Wait up to `timeout` for events; return the spans they completed.
    pub fn poll_spans(&mut self, timeout: Duration) -> Vec<Span> {
        let events = self.events.poll(timeout);
        self.spans_from(&events)
    }

    /// Spans from whatever events are queued now, without waiting.
    pub fn drain(&mut self) -> Vec<Span> {
        let events = self.events.drain();
        self.spans_from(&events)
    }

    /// Wait up to `timeout` for events; return them raw along with the spans
    /// they completed (the lab records both).
    pub fn poll_events(&mut self, timeout: Duration) -> (Vec<Event>, Vec<Span>) {
        let events = self.events.poll(timeout);
        let spans = self.spans_from(&events);
        (events, spans)
    }

    fn spans_from(&mut self, events: &[Event]) -> Vec<Span> {
        // Propagation events are committed before the packets they
        // describe reach TC: drained after those, they are never late.
        if let Some(p) = &mut self.propagation {
            for e in p.drain() {
                self.linker.push(e);
            }
        }
        let mut spans: Vec<Span> = events.iter().flat_map(|e| self.spans.push_all(e)).collect();
        if self.propagation.is_some() {
            for s in &mut spans {
                if !self.linker.apply(s) {
                    self.spans.decide_ids(s);
                }
            }
        }
        // connection-level spans of TLS hops (no HTTP for the datapath to see)
        spans.extend(self.linker.take_connection_spans());
        for s in &spans {
            self.metrics.inc_span(s.kind);
            if let Some(x) = &self.otlp {
                x.export(s);
            }
        }
        spans
    }

    /// Spans that took the kernel's ids (propagation on), and propagation
    /// events dropped unused to keep the linker within its budget.
    pub fn linked(&self) -> (u64, u64) {
        (self.linker.linked(), self.linker.dropped())
    }

    /// Context propagation, when a mode is on.
    pub fn propagation(&self) -> Option<&Propagation> {
        self.propagation.as_ref()
    }

    /// The OTLP exporter, when one is configured.
    pub fn otlp(&self) -> Option<&OtlpExporter> {
        self.otlp.as_ref()
    }

    /// Ring-buffer records that failed to decode.
    pub fn decode_errors(&self) -> u64 {
        self.events.decode_errors()
    }

    /// Events lost: those the kernel could not queue (`CNT_EVENTS_LOST`)
    /// plus, on the perf-buffer path, those perf reported lost.
    ///
    /// # Errors
    /// [`AgentError::Map`] when the counters map cannot be read.
    pub fn events_lost(&self) -> Result<u64, AgentError> {
        Ok(self.counter(Counter::EventsLost)? + self.events.perf_lost())
    }

    /// The event transport in use.
    pub fn event_transport(&self) -> EventTransport {
        self.transport
    }

    fn counter(&self, c: Counter) -> Result<u64, AgentError> {
        let counters = self.datapath.counters().map_err(|source| AgentError::Map { map: loader::MAP_COUNTERS, source })?;
        Ok(counters.get(c))
    }

    /// The CT table, sorted.
    ///
    /// # Errors
    /// [`AgentError::Ct`].
    pub fn ct_table(&self) -> Result<Vec<CtRecord>, AgentError> {
        let map = self.datapath.ebpf().map(loader::MAP_CT).ok_or(AgentError::MissingMap(loader::MAP_CT))?;
        Ok(ct::read_ct(map, loader::MAP_CT)?)
    }

    /// The chain of every device (call on a thread in the devices' namespace).
    ///
    /// # Errors
    /// [`AgentError::Chain`].
    pub fn chain(&self) -> Result<Vec<Chain>, AgentError> {
        let ours = self.program_ids();
        Ok(self.config.ifaces.iter().map(|i| chain::read_chain(i, &ours)).collect::<Result<_, _>>()?)
    }

    /// Update the metrics from the kernel counters and the CT table size.
    pub fn refresh_metrics(&self) {
        match self.datapath.counters() {
            Ok(c) => self.metrics.set_kernel_counters(
                c.get(Counter::Packets),
                c.get(Counter::CtInsertFailed),
                c.get(Counter::EventsLost) + self.events.perf_lost(),
            ),
            Err(e) => tracing::warn!(error = %e, "failed to read the datapath counters"),
        }
        match self.ct_table() {
            Ok(t) => self.metrics.set_ct(t.len() as u64, u64::from(self.datapath.ct_max_entries())),
            Err(e) => tracing::warn!(error = %e, "failed to read the CT table"),
        }
    }

    /// Detach everything, reporting the first failure (drop does the same
    /// and logs).
    ///
    /// # Errors
    /// [`AgentError::Attach`] when a detach failed (the others still ran).
    pub fn stop(mut self) -> Result<(), AgentError> {
        self.stopped = true;
        let mut first = None;
        for a in self.attachments.drain(..) {
            if let Err(e) = a.detach() {
                tracing::warn!(error = %e, "failed to detach");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), |e| Err(AgentError::Attach(e)))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if !self.stopped && !self.attachments.is_empty() {
            tracing::debug!(n = self.attachments.len(), "agent dropped: detaching");
        }
        // Attachments detach in their own Drop, before the programs unload.
        self.attachments.clear();
    }
}

/// Take the events map out of the object and open the reader for it.
fn open_events(datapath: &mut Datapath, transport: EventTransport) -> Result<EventReader, AgentError> {
    let map = datapath.ebpf_mut().take_map(loader::MAP_EVENTS).ok_or(AgentError::MissingMap(loader::MAP_EVENTS))?;
    let wrong = |source| AgentError::Map { map: loader::MAP_EVENTS, source };
    Ok(match transport {
        EventTransport::RingBuf => EventReader::new(RingBuf::try_from(map).map_err(wrong)?),
        EventTransport::PerfBuf => EventReader::new_perf(PerfEventArray::try_from(map).map_err(wrong)?)?,
    })
}

/// Attach both hooks of every device; on failure the ones already made are
/// dropped (detached) with the returned error.
fn attach_all(
    datapath: &mut Datapath,
    config: &AgentConfig,
    api: Api,
) -> Result<(Vec<Attachment>, Vec<Arc<DeviceState>>), AgentError> {
    let mut out = Vec::new();
    let mut devices = Vec::new();
    for iface in &config.ifaces {
        let device = Arc::new(DeviceState::default());
        for hook in [Hook::Ingress, Hook::Egress] {
            let prog = datapath.program_mut(hook);
            out.push(attach::attach(prog, hook.program_name(), iface, direction(hook), api, config.priority, &device)?);
        }
        devices.push(device);
    }
    Ok((out, devices))
}
