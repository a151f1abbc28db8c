//! The chain with one agent per service, as on three nodes each running
//! the agent: each agent attaches to its service's devices (TC) and cgroup
//! (socket programs), with a context propagation mode. What they report
//! is checked as one trace ([`TraceCheck`]) and rendered with stable labels
//! for snapshots ([`labelled`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tclab_datapath::agent::{Agent, AgentConfig};
use tclab_datapath::attach::Backend;
use tclab_datapath::loader::DatapathConfig;
use tclab_datapath::probe::KernelFeatures;
use tclab_datapath::propagation::{Correlation, Mode, Programs, PropagationConfig};
use tclab_datapath::span::{Span, SpanKind};

use super::chain::{Chain, ChainOptions};

/// A span and the service whose agent reported it.
#[derive(Debug, Clone)]
pub struct Reported {
    pub service: &'static str,
    pub span: Span,
}

/// The chain and its agents. Agents are dropped (detached) before the
/// chain's namespaces and cgroups go.
pub struct TracedChain {
    agents: Vec<(&'static str, Agent)>,
    pub chain: Chain,
    pub mode: Mode,
    /// The spans one request should give, in order ([`expected_spans`]).
    pub expected: Vec<Expected>,
}

impl TracedChain {
    /// Start the chain (with cgroups) and one agent per service.
    ///
    /// # Errors
    /// Chain or agent start errors, naming the service.
    pub fn start(opts: &ChainOptions, mode: Mode, backend: Backend) -> anyhow::Result<TracedChain> {
        TracedChain::start_with(opts, mode, backend, tclab_datapath::attach::DEFAULT_PRIORITY, DatapathConfig::default())
    }

    /// [`TracedChain::start`] with the agents' netlink priority and
    /// datapath configuration.
    ///
    /// # Errors
    /// Chain or agent start errors, naming the service.
    pub fn start_with(
        opts: &ChainOptions,
        mode: Mode,
        backend: Backend,
        priority: u16,
        datapath: DatapathConfig,
    ) -> anyhow::Result<TracedChain> {
        TracedChain::start_agents(opts, mode, Programs::Full, backend, priority, datapath)
    }

    /// [`TracedChain::start`] with a choice of build of the agents'
    /// propagation programs ([`Programs::HooksOnly`]: the same hooks,
    /// nothing propagated; the benchmark's floor).
    ///
    /// # Errors
    /// Chain or agent start errors, naming the service.
    pub fn start_programs(opts: &ChainOptions, mode: Mode, programs: Programs, backend: Backend) -> anyhow::Result<TracedChain> {
        let priority = tclab_datapath::attach::DEFAULT_PRIORITY;
        TracedChain::start_agents(opts, mode, programs, backend, priority, DatapathConfig::default())
    }

    fn start_agents(
        opts: &ChainOptions,
        mode: Mode,
        programs: Programs,
        backend: Backend,
        priority: u16,
        datapath: DatapathConfig,
    ) -> anyhow::Result<TracedChain> {
        let mut opts = opts.clone();
        opts.cgroups = true;
        let chain = Chain::start(&opts)?;
        let features = KernelFeatures::probe();
        let mut agents = Vec::new();
        for svc in &chain.services {
            let cfg = AgentConfig {
                ifaces: svc.ifaces.clone(),
                backend,
                priority,
                service_name: svc.name.to_owned(),
                features: Some(features.clone()),
                propagation: PropagationConfig { mode, cgroup: svc.cgroup.clone(), sampled: true, programs },
                datapath,
                ..AgentConfig::default()
            };
            let agent = svc
                .ns
                .try_run(|| Agent::start(cfg).map_err(anyhow::Error::from))?
                .with_context(|| format!("failed to start the agent of {}", svc.name))?;
            agents.push((svc.name, agent));
        }
        Ok(TracedChain { agents, chain, mode, expected: expected_spans(&opts.tls) })
    }

    /// Whether each agent correlates (a kernel or lockdown may refuse it).
    pub fn correlation(&self) -> Vec<(&'static str, Correlation)> {
        self.agents
            .iter()
            .map(|(n, a)| (*n, a.propagation().map_or(Correlation::Off("disabled".into()), |p| p.correlation().clone())))
            .collect()
    }

    /// Poll every agent until `want` spans arrived or `timeout` passed.
    pub fn collect(&mut self, want: usize, timeout: Duration) -> Vec<Reported> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < want && Instant::now() < deadline {
            for (name, agent) in &mut self.agents {
                for span in agent.poll_spans(Duration::from_millis(20)) {
                    out.push(Reported { service: name, span });
                }
            }
        }
        // Call order, not timestamps: the hooks of different devices stamp
        // with the CPU that ran them, and a span's first segment is not
        // always seen before the request it makes (keep-alive, TCG).
        out.sort_by_key(|r| (expected_position(&self.expected, r), r.span.request_start_ns));
        out
    }

    /// Poll every agent once (up to `timeout` each) and count the spans,
    /// as an agent's run loop would take them: no ordering, nothing kept
    /// (what a load generator needs; [`TracedChain::collect`] is for checks).
    pub fn drain_count(&mut self, timeout: Duration) -> usize {
        self.agents.iter_mut().map(|(_, agent)| agent.poll_spans(timeout).len()).sum()
    }

    /// Beyla lines, as each agent prints them.
    pub fn beyla_lines(&self, spans: &[Reported]) -> Vec<String> {
        let clock = self.agents.first().map(|(_, a)| *a.clock());
        spans
            .iter()
            .map(|r| match &clock {
                Some(c) => r.span.beyla_line(c, r.service),
                None => String::new(),
            })
            .collect()
    }

    /// Spans that took the kernel's ids, and propagation events dropped
    /// unused, summed over the agents.
    pub fn linked(&self) -> (u64, u64) {
        self.agents.iter().map(|(_, a)| a.linked()).fold((0, 0), |s, l| (s.0 + l.0, s.1 + l.1))
    }

    /// Kernel counters of each agent's propagation programs.
    pub fn counters(&self) -> Vec<(&'static str, Vec<(&'static str, u64)>)> {
        self.agents
            .iter()
            .filter_map(|(n, a)| Some((*n, a.propagation()?.counters().ok()?)))
            .collect()
    }
}

/// (service, kind, path) of a span.
pub type Expected = (&'static str, SpanKind, &'static str);

/// The five spans one request through the chain should give, in order:
/// (service, kind, path).
pub const EXPECTED: [Expected; 5] = [
    ("frontend", SpanKind::Server, "/traceme"),
    ("frontend", SpanKind::Client, "/tracemetoo"),
    ("backend", SpanKind::Server, "/tracemetoo"),
    ("backend", SpanKind::Client, "/users"),
    ("worker", SpanKind::Server, "/users"),
];

/// [`EXPECTED`] when the hops into the services named in `tls` are TLS:
/// the caller's client span and the callee's server span of such a hop are
/// connection-level spans (path `-`: the agent cannot see the request).
pub fn expected_spans(tls: &[String]) -> Vec<Expected> {
    EXPECTED
        .iter()
        .map(|&(svc, kind, path)| {
            // the hop's callee: the server itself, or the client's downstream
            let callee = match kind {
                SpanKind::Server => svc,
                SpanKind::Client => {
                    let k = super::chain::SERVICES.iter().position(|(n, _, _)| *n == svc).unwrap_or(0);
                    super::chain::SERVICES.get(k + 1).map_or("", |(n, _, _)| *n)
                }
            };
            let opaque = tls.iter().any(|t| t == callee);
            (svc, kind, if opaque { tclab_datapath::propagation::link::TLS_PATH } else { path })
        })
        .collect()
}

/// Where a span sits in `expected` (unknown ones last).
fn expected_position(expected: &[Expected], r: &Reported) -> usize {
    expected
        .iter()
        .position(|(svc, kind, path)| (r.service, r.span.kind, r.span.path.as_str()) == (*svc, *kind, *path))
        .unwrap_or(expected.len())
}

/// Check that the spans of one request form one trace with the right
/// parent links: each span's parent is the span before it (the first one's
/// is `root_parent`: the caller's span, or none).
///
/// # Errors
/// What is wrong, with the spans.
pub fn check_one_trace(spans: &[Reported], root_parent: Option<&str>) -> anyhow::Result<()> {
    check_trace(spans, root_parent, &EXPECTED)
}

/// [`check_one_trace`] against the spans `expected` (see [`expected_spans`]).
///
/// # Errors
/// What is wrong, with the spans.
pub fn check_trace(spans: &[Reported], root_parent: Option<&str>, expected: &[Expected]) -> anyhow::Result<()> {
    let show = || spans.iter().map(|r| format!("{} {}", r.service, r.span.snapshot_line())).collect::<Vec<_>>().join("\n");
    if spans.len() != expected.len() {
        bail!("expected {} spans, got {}:\n{}", expected.len(), spans.len(), show());
    }
    let trace = &spans[0].span.trace_id;
    let mut parent = root_parent;
    for (r, &(svc, kind, path)) in spans.iter().zip(expected) {
        if (r.service, r.span.kind, r.span.path.as_str()) != (svc, kind, path) {
            bail!("expected {svc} {kind:?} {path}, got {} {:?} {}:\n{}", r.service, r.span.kind, r.span.path, show());
        }
        if &r.span.trace_id != trace {
            bail!("{svc} {path}: trace {} is not {trace}:\n{}", r.span.trace_id, show());
        }
        if r.span.parent_id.as_deref() != parent {
            bail!("{svc} {kind:?} {path}: parent {:?}, expected {parent:?}:\n{}", r.span.parent_id, show());
        }
        parent = Some(r.span.span_id.as_str());
    }
    Ok(())
}

/// Stable names for random ids, in order of first appearance: traces
/// `T1`, `T2`…, spans `S1`, `S2`…; ids given up front keep their names.
#[derive(Debug, Default)]
pub struct Labels {
    map: HashMap<String, String>,
    traces: usize,
    spans: usize,
}

impl Labels {
    /// Labels with some ids named already (e.g. the client's own).
    pub fn with(known: &[(&str, &str)]) -> Labels {
        Labels { map: known.iter().map(|(id, l)| ((*id).to_owned(), (*l).to_owned())).collect(), ..Labels::default() }
    }

    fn name(&mut self, id: &str, trace: bool) -> String {
        if let Some(l) = self.map.get(id) {
            return l.clone();
        }
        let l = if trace {
            self.traces += 1;
            format!("T{}", self.traces)
        } else {
            self.spans += 1;
            format!("S{}", self.spans)
        };
        self.map.insert(id.to_owned(), l.clone());
        l
    }

    /// A span without timestamps, client port or random ids.
    pub fn span_line(&mut self, r: &Reported) -> String {
        let s = &r.span;
        let trace = self.name(&s.trace_id, true);
        let span = self.name(&s.span_id, false);
        let parent = s.parent_id.as_deref().map_or("-".to_owned(), |p| self.name(p, false));
        format!(
            "{:<8} {:<10} {} {} {} [{}]->[{}] traceparent=[00-{trace}-{span}[{parent}]-{:02x}]",
            r.service,
            s.kind.beyla_type(),
            s.status,
            s.method,
            s.path,
            // the client's port is the kernel's choice
            match s.client.ip() {
                std::net::IpAddr::V4(ip) => format!("{ip}:*"),
                std::net::IpAddr::V6(ip) => format!("[{ip}]:*"),
            },
            s.server,
            s.flags
        )
    }

    /// A received traceparent with its ids named (`00-T1-S2-01`) when it is
    /// valid (W3C); an invalid one is shown as is, quoted.
    pub fn traceparent(&mut self, tp: &str) -> String {
        match tclab_datapath::w3c::parse_traceparent(tp.as_bytes()) {
            Ok(_) => {
                let parts: Vec<&str> = tp.split('-').collect();
                format!("{}-{}-{}-{}", parts[0], self.name(parts[1], true), self.name(parts[2], false), parts[3])
            }
            Err(_) => format!("{tp:?}"),
        }
    }
}

/// [`Labels::span_line`] for every span, with fresh labels.
pub fn labelled(spans: &[Reported], known: &[(&str, &str)]) -> Vec<String> {
    let mut l = Labels::with(known);
    spans.iter().map(|r| l.span_line(r)).collect()
}
