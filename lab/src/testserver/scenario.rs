//! Scenario files with `[services]`: the three-service chain with one agent
//! per service, in the `[agent].propagation` mode, on the running kernel
//! (host, or a guest of the kernel matrix). The result is what the agents
//! reported, with random ids replaced by labels, so that the snapshot shows
//! the trace's shape: one trace id, each span's parent the span before it.

use std::time::Duration;

use anyhow::Context;
use tclab_datapath::attach::Backend;
use tclab_datapath::propagation::Correlation;

use super::chain::ChainOptions;
use super::traced::{Labels, TracedChain};
use crate::runner::report::{AgentOutcome, ScenarioResult};
use crate::runner::{KernelContext, chain::propagation_mode};
use crate::scenario::{self, Scenario, Services};

/// How long the spans of one request may take to arrive.
const SPANS_WAIT: Duration = Duration::from_secs(10);

/// Counters left out of the snapshot: they depend on timing (ACKs). Those
/// that count segments are kept but shown as `>0`
/// (`runner::report::SEGMENT_COUNTERS`).
const TIMING_COUNTERS: [&str; 1] = ["tc_packets"];

/// The `tclab` binary to run the services with: this one when it is
/// `tclab` (or the guest's /init), else `TCLAB_BIN`, else `tclab` next to
/// the test binary running this (`target/debug/deps/x` -> `target/debug/tclab`).
///
/// # Errors
/// When none of them exists.
pub fn tclab_binary() -> anyhow::Result<std::path::PathBuf> {
    let me = std::env::current_exe().context("failed to find the running binary")?;
    let name = me.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    // A rebuild during the run replaces the file (its path then ends in
    // " (deleted)"); /proc/self/exe still runs the very binary that is running.
    if name.strip_suffix(" (deleted)").unwrap_or(name) == "tclab" || me == std::path::Path::new("/init") {
        return Ok(std::path::PathBuf::from("/proc/self/exe"));
    }
    if let Some(p) = std::env::var_os("TCLAB_BIN") {
        return Ok(p.into());
    }
    let sibling = me.parent().and_then(|d| d.parent()).map(|d| d.join("tclab"));
    match sibling {
        Some(p) if p.is_file() => Ok(p),
        _ => anyhow::bail!("cannot find the tclab binary to run the test services (from {}); set TCLAB_BIN", me.display()),
    }
}

/// Run a `[services]` scenario.
///
/// # Errors
/// When the chain or its agents cannot start, or a request fails.
pub fn execute(scenario: &Scenario, services: &Services, kernel: &KernelContext) -> anyhow::Result<ScenarioResult> {
    let mut result = ScenarioResult::new(&scenario.name, &kernel.name);
    let mut opts = ChainOptions::new(tclab_binary()?);
    opts.ipv6 = services.ipv6;
    opts.forwarding = services.forward.clone();
    opts.call_after_response = services.after_response.clone();
    opts.tls = services.tls.clone();
    let mode = propagation_mode(scenario.agent.propagation);
    let backend = match scenario.agent.backend {
        scenario::Backend::Auto => Backend::Auto,
        scenario::Backend::Tcx => Backend::Tcx,
        scenario::Backend::Netlink => Backend::Netlink,
    };
    let datapath = crate::runner::chain::datapath_config(&scenario.agent);
    let mut t = TracedChain::start_with(&opts, mode, backend, scenario.agent.priority, datapath)
        .with_context(|| format!("{}: failed to start the services and their agents", scenario.path.display()))?;
    let mut warnings = Vec::new();
    for (svc, c) in t.correlation() {
        if let Correlation::Off(why) = c
            && mode != tclab_datapath::propagation::Mode::Disabled
        {
            warnings.push(format!("{svc}: correlation off: {why}"));
        }
    }
    result.agent = AgentOutcome::Started {
        attach: format!("one per service (frontend, backend, worker), propagation={mode}"),
        warnings,
    };
    let extra: Vec<(String, String)> =
        services.traceparent.iter().map(|tp| ("traceparent".to_owned(), tp.clone())).collect();
    let mut known = Vec::new();
    if let Some(tp) = services.traceparent.as_ref().filter(|tp| tclab_datapath::w3c::parse_traceparent(tp.as_bytes()).is_ok()) {
        let parts: Vec<&str> = tp.split('-').collect();
        if let [_, trace, parent, _] = parts.as_slice() {
            known.push(((*trace).to_owned(), "T0".to_owned()));
            known.push(((*parent).to_owned(), "P0".to_owned()));
        }
    }
    let known: Vec<(&str, &str)> = known.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let mut labels = Labels::with(&known);
    for i in 1..=services.requests {
        let (status, doc) = t.chain.get(&extra).with_context(|| format!("request {i} to the frontend"))?;
        let spans = t.collect(t.expected.len(), SPANS_WAIT);
        for r in &spans {
            result.spans.push(labels.span_line(r));
        }
        let mut hops = Vec::new();
        let mut d = &doc;
        while d.is_object() {
            let got = d["traceparent"].as_str().map_or("-".to_owned(), |tp| labels.traceparent(tp));
            hops.push(format!("{}={got}", d["service"].as_str().unwrap_or("?")));
            d = &d["downstream"];
        }
        result.output.push(format!("request {i}: {status}, received {}", hops.join(" ")));
    }
    for (svc, counters) in t.counters() {
        for (name, v) in counters {
            if v > 0 && !TIMING_COUNTERS.contains(&name) {
                result.agent_counters.insert(format!("{svc}.{name}"), v);
            }
            if name == "events_lost" {
                result.events_lost += v;
            }
        }
    }
    Ok(result)
}
