//! Semantic checks: raw TOML values → the validated `Scenario`. Every check
//! runs even after an earlier one failed, so a file reports all its errors.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde_spanned::Spanned;

use super::ScenarioError;
use super::model::*;
use super::raw::*;
use super::values;

/// Collects errors for one file.
pub(crate) struct Ctx<'a> {
    pub file: &'a Path,
    pub src: &'a str,
    pub errors: Vec<ScenarioError>,
}

impl<'a> Ctx<'a> {
    pub fn err(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.errors
            .push(ScenarioError::at(self.file, self.src, span, message));
    }

    /// Runs a value parser, recording its error at the value's span.
    pub fn parse<T, R>(
        &mut self,
        v: &Spanned<T>,
        f: impl FnOnce(&T) -> Result<R, String>,
    ) -> Option<R> {
        match f(v.get_ref()) {
            Ok(r) => Some(r),
            Err(m) => {
                self.err(v.span(), m);
                None
            }
        }
    }

    /// An integer in `lo..=hi`.
    pub fn int<T: TryFrom<i64>>(
        &mut self,
        v: &Spanned<i64>,
        key: &str,
        lo: i64,
        hi: i64,
    ) -> Option<T> {
        let n = *v.get_ref();
        if n < lo || n > hi {
            self.err(
                v.span(),
                format!("`{key}` = {n} is out of range, expected {lo}..={hi}"),
            );
            return None;
        }
        T::try_from(n).ok()
    }

    /// Byte offset of a `[table]` header, for errors about a whole table.
    pub fn table_span(&self, header: &str) -> Range<usize> {
        let at = self.src.find(header).unwrap_or(0);
        at..at + header.len()
    }
}

pub(crate) fn validate(
    file: &Path,
    src: &str,
    raw: RawScenario,
) -> Result<Scenario, Vec<ScenarioError>> {
    let mut cx = Ctx {
        file,
        src,
        errors: Vec::new(),
    };
    let name = scenario_name(&mut cx, &raw.name);
    let kernels = raw
        .kernels
        .iter()
        .filter_map(|k| cx.parse(k, |s| values::parse_kernel_selector(s)))
        .collect();
    let lockdown = if raw.lockdown.is_empty() {
        Lockdown::ALL.to_vec()
    } else {
        dedup(raw.lockdown)
    };
    let requires = raw
        .requires
        .iter()
        .filter_map(|r| cx.parse(r, |s| capability(s)))
        .collect();
    let topology = topology(&mut cx, &raw.topology);
    let agent = agent_settings(&mut cx, raw.agent.as_ref());
    let chain = super::chain::validate_chain(&mut cx, &raw.chain, raw.agent.as_ref(), &agent, &topology);
    let has_agent = chain
        .iter()
        .any(|e| e.program == Program::Builtin(Builtin::Agent));
    let alone = raw.chain.is_empty() && raw.replay.is_empty();
    let services = raw.services.as_ref().and_then(|sv| services(&mut cx, sv, alone));
    if raw.agent.is_some() && !has_agent && raw.services.is_none() {
        let span = cx.table_span("[agent]");
        cx.err(
            span,
            "`[agent]` settings are given but no chain entry has program = \"agent\"",
        );
    }
    let base = file.parent().unwrap_or(Path::new("."));
    let replays = raw
        .replay
        .iter()
        .filter_map(|r| super::replay::validate_replay(&mut cx, base, r, &topology))
        .collect();
    let expect = expect(&mut cx, &raw.expect, &chain, has_agent);
    if !cx.errors.is_empty() {
        return Err(cx.errors);
    }
    Ok(Scenario {
        path: file.to_path_buf(),
        name,
        description: raw.description,
        tags: raw.tags,
        kernels,
        lockdown,
        requires,
        topology,
        chain,
        agent,
        replays,
        services,
        expect,
    })
}

/// `[services]`: the built-in chain, alone (no `[[chain]]`, no `[[replay]]`).
fn services(cx: &mut Ctx, raw: &Spanned<RawServices>, alone: bool) -> Option<Services> {
    let r = raw.get_ref();
    if r.chain.get_ref() != "traceme" {
        cx.err(r.chain.span(), format!("unknown service chain `{}`, expected \"traceme\" (frontend /traceme -> backend /tracemetoo -> worker /users)", r.chain.get_ref()));
    }
    if !alone {
        cx.err(raw.span(), "`[services]` runs its own topology and agents, expected no `[[chain]]` and no `[[replay]]` next to it");
    }
    let requests = match &r.requests {
        Some(n) => cx.int::<u32>(n, "requests", 1, 100)?,
        None => 1,
    };
    if let Some(tp) = &r.traceparent
        && tp.get_ref().chars().any(|c| c.is_control())
    {
        cx.err(tp.span(), "the traceparent is sent as a header value, expected no control characters");
    }
    for f in &r.forward {
        if !["frontend", "backend", "worker"].contains(&f.get_ref().as_str()) {
            cx.err(f.span(), format!("unknown service `{}`, expected \"frontend\", \"backend\" or \"worker\"", f.get_ref()));
        }
    }
    let frontend_why = "the frontend is called by the chain's client, which runs no agent: that hop could not be traced";
    services_in_role(cx, &r.after_response, ["frontend", "backend"], ("worker", "the worker calls nothing"), "to call after its response");
    services_in_role(cx, &r.tls, ["backend", "worker"], ("frontend", frontend_why), "to serve TLS");
    Some(Services {
        requests,
        ipv6: r.ipv6,
        traceparent: r.traceparent.as_ref().map(|t| t.get_ref().clone()),
        forward: r.forward.iter().map(|f| f.get_ref().clone()).collect(),
        after_response: dedup(r.after_response.iter().map(|a| a.get_ref().clone()).collect()),
        tls: dedup(r.tls.iter().map(|t| t.get_ref().clone()).collect()),
    })
}

/// Each of `names` must be one of the two services that can take the role;
/// the service that cannot gets `refused`'s reason, others are unknown.
fn services_in_role(cx: &mut Ctx, names: &[Spanned<String>], allowed: [&str; 2], refused: (&str, &str), role: &str) {
    for n in names {
        let name = n.get_ref().as_str();
        if allowed.contains(&name) {
            continue;
        }
        let why = if name == refused.0 { refused.1.to_owned() } else { format!("unknown service `{name}`") };
        cx.err(n.span(), format!("{why}, expected \"{}\" or \"{}\" {role}", allowed[0], allowed[1]));
    }
}

fn dedup<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v.dedup();
    v
}

fn scenario_name(cx: &mut Ctx, name: &Spanned<String>) -> String {
    let n = name.get_ref();
    let ok = !n.is_empty()
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !ok {
        cx.err(
            name.span(),
            format!(
                "invalid scenario name `{n}`, expected letters, digits, `-`, `_` or `.` (it names the snapshot file)"
            ),
        );
    }
    n.clone()
}

fn capability(s: &str) -> Result<Capability, String> {
    Capability::ALL
        .into_iter()
        .find(|c| c.as_str() == s)
        .ok_or_else(|| {
            let names: Vec<_> = Capability::ALL
                .iter()
                .map(|c| format!("`{}`", c.as_str()))
                .collect();
            format!(
                "unknown capability `{s}`, expected one of {}",
                names.join(", ")
            )
        })
}

/// Default topology: device `dut` 10.0.0.1 / fd00::1, peer `peer` 10.0.0.2 / fd00::2.
fn topology(cx: &mut Ctx, raw: &RawTopology) -> Topology {
    let device = endpoint(cx, &raw.device, "dut", 1);
    let peer = endpoint(cx, &raw.peer, "peer", 2);
    let clash = |what: &str, a: &Option<Spanned<String>>, b: &Option<Spanned<String>>| {
        (device_field(&device, &peer, what)).then(|| b.as_ref().or(a.as_ref()).map(|v| v.span()))
    };
    for (what, a, b) in [
        ("name", &raw.device.name, &raw.peer.name),
        ("mac", &raw.device.mac, &raw.peer.mac),
        ("ipv4", &raw.device.ipv4, &raw.peer.ipv4),
        ("ipv6", &raw.device.ipv6, &raw.peer.ipv6),
    ] {
        if let Some(span) = clash(what, a, b) {
            let span = span.unwrap_or_else(|| cx.table_span("[topology"));
            cx.err(
                span,
                format!(
                    "the device and its peer have the same `{what}`, expected different values"
                ),
            );
        }
    }
    Topology {
        device,
        peer,
        local: raw.local.unwrap_or(Side::Device),
    }
}

fn device_field(d: &Endpoint, p: &Endpoint, what: &str) -> bool {
    match what {
        "name" => d.name == p.name,
        "mac" => d.mac == p.mac,
        "ipv4" => d.ipv4.is_some() && d.ipv4.map(|a| a.0) == p.ipv4.map(|a| a.0),
        _ => d.ipv6.is_some() && d.ipv6.map(|a| a.0) == p.ipv6.map(|a| a.0),
    }
}

fn endpoint(cx: &mut Ctx, raw: &RawEndpoint, name: &str, host: u8) -> Endpoint {
    let mut ep = Endpoint {
        name: name.to_string(),
        mac: [0x02, 0, 0, 0, 0, host],
        ipv4: Some((std::net::Ipv4Addr::new(10, 0, 0, host), 24)),
        ipv6: Some((
            std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, host.into()),
            64,
        )),
    };
    if let Some(n) = &raw.name {
        // The kernel's dev_valid_name(): 1 to 15 bytes, not `.` or `..`,
        // no `/`, `:` or whitespace.
        let name = n.get_ref();
        let ok = !name.is_empty()
            && name.len() <= 15
            && name != "."
            && name != ".."
            && !name.contains(['/', ':'])
            && !name.chars().any(char::is_whitespace);
        if ok {
            ep.name = n.get_ref().clone();
        } else {
            cx.err(
                n.span(),
                format!(
                    "invalid interface name `{}`, expected 1 to 15 characters without `/`, `:` or spaces (not `.` or `..`)",
                    n.get_ref()
                ),
            );
        }
    }
    if let Some(m) = &raw.mac {
        ep.mac = cx.parse(m, |s| values::parse_mac(s)).unwrap_or(ep.mac);
    }
    if let Some(a) = &raw.ipv4 {
        ep.ipv4 = cx.parse(a, |s| values::parse_ipv4_prefix(s)).or(ep.ipv4);
    }
    if let Some(a) = &raw.ipv6 {
        ep.ipv6 = cx.parse(a, |s| values::parse_ipv6_prefix(s)).or(ep.ipv6);
    }
    ep
}

fn agent_settings(cx: &mut Ctx, raw: Option<&RawAgent>) -> AgentSettings {
    let mut a = AgentSettings::default();
    let Some(raw) = raw else { return a };
    if let Some(b) = &raw.backend {
        a.backend = *b.get_ref();
    }
    if let Some(p) = &raw.priority {
        a.priority = cx.int(p, "priority", 1, 65535).unwrap_or(a.priority);
    }
    if let Some(n) = &raw.ct_max_entries {
        a.ct_max_entries = cx
            .int(n, "ct_max_entries", 1, i64::from(u32::MAX))
            .unwrap_or(a.ct_max_entries);
    }
    a.ct_map = raw.ct_map.unwrap_or(a.ct_map);
    a.propagation = raw.propagation.unwrap_or(a.propagation);
    let l = &raw.lifetimes;
    let max = i64::from(u32::MAX);
    let mut life = |v: &Option<Spanned<i64>>, key: &str, dflt: u32| {
        v.as_ref()
            .and_then(|v| cx.int(v, key, 1, max))
            .unwrap_or(dflt)
    };
    let d = a.lifetimes;
    a.lifetimes = Lifetimes {
        syn: life(&l.syn, "syn", d.syn),
        tcp: life(&l.tcp, "tcp", d.tcp),
        close: life(&l.close, "close", d.close),
        non_tcp: life(&l.non_tcp, "non_tcp", d.non_tcp),
    };
    a
}

fn expect(cx: &mut Ctx, raw: &RawExpect, chain: &[ChainEntry], has_agent: bool) -> Expect {
    let spans = raw
        .spans
        .as_ref()
        .and_then(|s| cx.int(s, "spans", 0, i64::MAX));
    let ct = raw
        .ct
        .iter()
        .filter_map(|c| {
            Some(CtCheck {
                tuple: cx.parse(&c.tuple, |s| values::parse_ct_tuple(s))?,
                state: c.state,
            })
        })
        .collect();
    let mut counters = BTreeMap::new();
    for (k, v) in &raw.counters {
        if !chain.iter().any(|e| &e.name == k.get_ref()) {
            let names: Vec<_> = chain.iter().map(|e| format!("`{}`", e.name)).collect();
            cx.err(
                k.span(),
                format!(
                    "`counters` names no chain entry `{}`, expected one of {}",
                    k.get_ref(),
                    names.join(", ")
                ),
            );
        } else if let Some(n) = cx.int(v, k.get_ref(), 0, i64::MAX) {
            counters.insert(k.get_ref().clone(), n);
        }
    }
    let agent_error_contains = raw.agent_error_contains.as_ref().map(|e| {
        if e.get_ref().trim().is_empty() {
            cx.err(
                e.span(),
                "`agent_error_contains` is empty, expected part of the agent's error message",
            );
        } else if !has_agent {
            cx.err(
                e.span(),
                "`agent_error_contains` needs a chain entry with program = \"agent\"",
            );
        } else if raw.spans.is_some() || !raw.ct.is_empty() {
            cx.err(
                e.span(),
                "`agent_error_contains` (the agent must not start) cannot be combined with `spans` or `ct`",
            );
        }
        e.get_ref().clone()
    });
    Expect {
        snapshot: raw.snapshot,
        spans,
        ct,
        agent_error_contains,
        counters,
        varies_by: dedup_dims(&raw.varies_by),
    }
}

fn dedup_dims(v: &[Dimension]) -> Vec<Dimension> {
    let mut out = Vec::new();
    for d in v {
        if !out.contains(d) {
            out.push(*d);
        }
    }
    out
}

/// Resolves `pcap` against the scenario's folder.
pub(crate) fn resolve(base: &Path, rel: &str) -> PathBuf {
    base.join(rel)
}
