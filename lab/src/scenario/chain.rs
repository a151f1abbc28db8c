//! The chain: validation of `[[chain]]` entries and the order the kernel is
//! expected to run them in.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde_spanned::Spanned;

use super::model::*;
use super::raw::*;
use super::validate::Ctx;

/// The handle the agent uses when it attaches itself with netlink: the
/// real agent's own (`tclab-agent run`), so conflicts behave the same.
pub const AGENT_NETLINK_HANDLE: u32 = tclab_datapath::attach::NETLINK_HANDLE;

/// A `propagation` entry needs `[agent].propagation`; its egress
/// classifier exists only in modes with the IP option.
fn check_propagation(cx: &mut Ctx, raw: &Spanned<RawProgram>, program: &Program, direction: Direction, agent: &AgentSettings) {
    if *program != Program::Builtin(Builtin::Propagation) {
        return;
    }
    match agent.propagation {
        Propagation::Disabled => cx.err(
            raw.span(),
            "program \"propagation\" runs the agent's propagation classifiers, expected `[agent] propagation` to be \"headers\", \"tcp\", \"ip\" or \"all\"",
        ),
        Propagation::Headers | Propagation::Tcp if direction.covers(Direction::Egress) => cx.err(
            raw.span(),
            "program \"propagation\" has an egress classifier only with the IP option, expected direction = \"ingress\" or `[agent] propagation` \"ip\" or \"all\"",
        ),
        _ => {}
    }
}

pub(crate) fn validate_chain(
    cx: &mut Ctx,
    raw: &[RawChainEntry],
    raw_agent: Option<&RawAgent>,
    agent: &AgentSettings,
    topology: &Topology,
) -> Vec<ChainEntry> {
    let mut first_seen: HashMap<&str, usize> = HashMap::new();
    let mut out = Vec::new();
    for e in raw {
        let name = e.name.get_ref();
        if let Some(line) = first_seen.get(name.as_str()) {
            cx.err(
                e.name.span(),
                format!("duplicate chain entry name `{name}` (first defined on line {line}), expected a unique name"),
            );
            continue;
        }
        first_seen.insert(name, super::error::line_col(cx.src, e.name.span().start).0);
        let Some(program) = program(cx, &e.program, e.direction.unwrap_or(Direction::Both)) else {
            continue;
        };
        let direction = e.direction.unwrap_or(Direction::Both);
        check_redirect(cx, &e.program, &program, direction, topology);
        check_propagation(cx, &e.program, &program, direction, agent);
        let is_agent = program == Program::Builtin(Builtin::Agent);
        let Some(attach) = attach(cx, e, is_agent, raw_agent) else {
            continue;
        };
        out.push(ChainEntry {
            name: name.clone(),
            program,
            direction,
            attach,
        });
    }
    check_order_refs(cx, raw, &out, agent);
    check_netlink_clashes(cx, raw, &out);
    for (span, message) in crate::byo::spec::check_reuse(&out) {
        cx.err(span, message);
    }
    out
}

fn program(cx: &mut Ctx, p: &Spanned<RawProgram>, direction: Direction) -> Option<Program> {
    let t = match p.get_ref() {
        RawProgram::Builtin(b) => return Some(Program::Builtin(*b)),
        RawProgram::Table(t) => t,
    };
    if let Some(object) = object_program(cx, p, t, direction) {
        return object;
    }
    let name = match (&t.cilium, &t.foreign) {
        (Some(_), Some(f)) => {
            cx.err(f.span(), "a program table has either `cilium` or `foreign`, expected only one of them");
            return None;
        }
        (None, Some(f)) => return foreign(cx, p, t, f),
        (Some(name), None) => name,
        (None, None) => {
            cx.err(
                p.span(),
                "a program table needs a `cilium` key (or `foreign` for another vendor's program, or `object` for a compiled BPF object), expected e.g. { cilium = \"cil_from_netdev\", behaviour = \"ok\" } or { object = \"my.o\", program = \"my_prog\" }",
            );
            return None;
        }
    };
    if !CILIUM_PROGRAMS.contains(&name.get_ref().as_str()) {
        let names: Vec<_> = CILIUM_PROGRAMS.iter().map(|n| format!("`{n}`")).collect();
        cx.err(
            name.span(),
            format!(
                "unknown Cilium program `{}`, expected one of {}",
                name.get_ref(),
                names.join(", ")
            ),
        );
        return None;
    }
    let kind = t
        .behaviour
        .as_ref()
        .map_or(BehaviourKind::Ok, |b| *b.get_ref());
    let behaviour = behaviour(cx, p, t, kind)?;
    Some(Program::Cilium {
        name: CiliumProgram(name.get_ref().clone()),
        behaviour,
    })
}

fn foreign(
    cx: &mut Ctx,
    p: &Spanned<RawProgram>,
    t: &RawProgramTable,
    name: &Spanned<String>,
) -> Option<Program> {
    if !FOREIGN_PROGRAMS.contains(&name.get_ref().as_str()) {
        let names: Vec<_> = FOREIGN_PROGRAMS.iter().map(|n| format!("`{n}`")).collect();
        cx.err(
            name.span(),
            format!("unknown foreign program `{}`, expected {}", name.get_ref(), names.join(" or ")),
        );
        return None;
    }
    let kind = t.behaviour.as_ref().map_or(BehaviourKind::Ok, |b| *b.get_ref());
    let behaviour = behaviour(cx, p, t, kind)?;
    Some(Program::Foreign { name: name.get_ref().clone(), behaviour })
}

/// A redirect must name a device of the topology, in the one direction
/// where it cannot loop (see `Behaviour::Redirect`).
fn check_redirect(
    cx: &mut Ctx,
    raw: &Spanned<RawProgram>,
    program: &Program,
    direction: Direction,
    topology: &Topology,
) {
    let (
        Program::Cilium { behaviour: Behaviour::Redirect { to }, .. }
        | Program::Foreign { behaviour: Behaviour::Redirect { to }, .. },
        RawProgram::Table(t),
    ) = (program, raw.get_ref())
    else {
        return;
    };
    let span = t.redirect_to.as_ref().map_or(raw.span(), |r| r.span());
    let (dev, peer) = (&topology.device.name, &topology.peer.name);
    let wanted = if *to == *peer {
        Direction::Ingress
    } else if *to == *dev {
        Direction::Egress
    } else {
        cx.err(
            span,
            format!(
                "`redirect_to` = \"{to}\" is not a device of the topology, expected \"{peer}\" (the peer: out through the device, for ingress entries) or \"{dev}\" (the device's own ingress, for egress entries)"
            ),
        );
        return;
    };
    if direction != wanted {
        let why = if wanted == Direction::Ingress {
            "on egress it would send packets back into the egress they came from"
        } else {
            "on ingress it would deliver packets back to the ingress they came from"
        };
        cx.err(
            span,
            format!(
                "a redirect to \"{to}\" loops unless the entry is on {0} only ({why}), expected direction = \"{0}\"",
                format!("{wanted:?}").to_lowercase()
            ),
        );
    }
}

/// `Some` when the table has object keys (`{ object = "x.o", … }`): the
/// checked object entry, or `None` inside after reporting its errors.
fn object_program(cx: &mut Ctx, p: &Spanned<RawProgram>, t: &RawProgramTable, direction: Direction) -> Option<Option<Program>> {
    let mut cilium_keys: Vec<_> = [(&t.cilium, "cilium"), (&t.foreign, "foreign"), (&t.redirect_to, "redirect_to"), (&t.dnat_from, "dnat_from"), (&t.dnat_to, "dnat_to")]
        .into_iter()
        .filter_map(|(v, key)| v.as_ref().map(|v| (v.span(), key)))
        .collect();
    cilium_keys.extend(t.behaviour.as_ref().map(|b| (b.span(), "behaviour")));
    let raw = crate::byo::spec::RawObject {
        span: p.span(),
        object: t.object.as_ref(),
        program: t.program.as_ref(),
        constants: &t.constants,
        fill: &t.fill,
        pin: &t.pin,
        reuse: &t.reuse,
        tail_calls: &t.tail_calls,
        dump: &t.dump,
        cilium_keys,
    };
    if !raw.any() {
        return None;
    }
    let base = cx.file.parent().unwrap_or(std::path::Path::new("."));
    Some(match crate::byo::spec::validate(&raw, base, direction) {
        Ok(o) => Some(Program::Object(Box::new(o))),
        Err(errors) => {
            for (span, message) in errors {
                cx.err(span, message);
            }
            None
        }
    })
}

fn behaviour(
    cx: &mut Ctx,
    p: &Spanned<RawProgram>,
    t: &RawProgramTable,
    kind: BehaviourKind,
) -> Option<Behaviour> {
    let stray = |k: &Option<Spanned<String>>, key: &'static str, wanted: BehaviourKind| {
        k.as_ref()
            .filter(|_| kind != wanted)
            .map(|v| (v.span(), key))
    };
    let strays = [
        stray(&t.redirect_to, "redirect_to", BehaviourKind::Redirect),
        stray(&t.dnat_from, "dnat_from", BehaviourKind::Dnat),
        stray(&t.dnat_to, "dnat_to", BehaviourKind::Dnat),
    ];
    for (span, key) in strays.into_iter().flatten() {
        cx.err(
            span,
            format!(
                "`{key}` does not apply to this behaviour, expected it only with behaviour = \"{}\"",
                key.split('_').next().unwrap_or(key)
            ),
        );
    }
    Some(match kind {
        BehaviourKind::Ok => Behaviour::Ok,
        BehaviourKind::Unspec => Behaviour::Unspec,
        BehaviourKind::Drop => Behaviour::Drop,
        BehaviourKind::Redirect => {
            let Some(to) = &t.redirect_to else {
                cx.err(
                    p.span(),
                    "behaviour = \"redirect\" needs `redirect_to`, expected a device name",
                );
                return None;
            };
            Behaviour::Redirect {
                to: to.get_ref().clone(),
            }
        }
        BehaviourKind::Dnat => {
            let (Some(from), Some(to)) = (&t.dnat_from, &t.dnat_to) else {
                cx.err(
                    p.span(),
                    "behaviour = \"dnat\" needs `dnat_from` and `dnat_to`, expected addresses like \"10.0.0.2:80\"",
                );
                return None;
            };
            let sock = |s: &String| {
                s.parse::<std::net::SocketAddr>().map_err(|_| {
                    format!("invalid address `{s}`, expected IP:port like \"10.0.0.2:80\"")
                })
            };
            let (from, to) = (cx.parse(from, sock)?, cx.parse(to, sock)?);
            if !(from.is_ipv4() && to.is_ipv4()) {
                let v6 = if from.is_ipv4() { to_span(t) } else { from_span(t) };
                cx.err(v6, "the Cilium-like DNAT rewrites IPv4 only, expected IPv4 addresses like \"10.0.0.2:80\"");
                return None;
            }
            Behaviour::Dnat { from, to }
        }
    })
}

fn from_span(t: &RawProgramTable) -> std::ops::Range<usize> {
    t.dnat_from.as_ref().map_or(0..0, |s| s.span())
}

fn to_span(t: &RawProgramTable) -> std::ops::Range<usize> {
    t.dnat_to.as_ref().map_or(0..0, |s| s.span())
}

fn attach(
    cx: &mut Ctx,
    e: &RawChainEntry,
    is_agent: bool,
    agent: Option<&RawAgent>,
) -> Option<Attach> {
    let Some(a) = &e.attach else {
        if is_agent {
            return Some(Attach::AgentDecides);
        }
        cx.err(e.name.span(), format!("chain entry `{}` has no `attach`, expected e.g. attach = {{ mode = \"tcx\", order = \"tail\" }} or {{ mode = \"netlink\", priority = 2 }}", e.name.get_ref()));
        return None;
    };
    let a_ref = a.get_ref();
    let mode = *a_ref.mode.get_ref();
    if is_agent {
        let backend = agent.and_then(|g| g.backend.as_ref());
        if let Some(b) = backend {
            let clash = matches!(
                (mode, b.get_ref()),
                (AttachMode::Tcx, Backend::Netlink) | (AttachMode::Netlink, Backend::Tcx)
            );
            if clash {
                cx.err(
                    b.span(),
                    format!(
                        "`backend` = {:?} contradicts the agent entry's attach mode, expected the same mode or `auto`",
                        b.get_ref()
                    ),
                );
            }
        }
    }
    match mode {
        AttachMode::Tcx => {
            for (v, key) in [(&a_ref.priority, "priority"), (&a_ref.handle, "handle")] {
                if let Some(v) = v {
                    cx.err(
                        v.span(),
                        format!("`{key}` is only valid with mode = \"netlink\", expected `order` for TCX"),
                    );
                }
            }
            let order = a_ref
                .order
                .as_ref()
                .map_or(TcxOrder::Tail, |o| o.get_ref().clone());
            Some(Attach::Tcx { order })
        }
        AttachMode::Netlink => {
            if let Some(o) = &a_ref.order {
                cx.err(
                    o.span(),
                    "`order` is only valid with mode = \"tcx\", expected `priority` and `handle` for netlink",
                );
            }
            let Some(p) = &a_ref.priority else {
                cx.err(
                    a.span(),
                    "netlink attach needs `priority`, expected 1..=65535 (0 would let the kernel pick one)",
                );
                return None;
            };
            let priority = cx.int(p, "priority", 1, 65535)?;
            let handle = match &a_ref.handle {
                Some(h) => cx.int(h, "handle", 1, i64::from(u32::MAX))?,
                None => 1,
            };
            Some(Attach::Netlink { priority, handle })
        }
    }
}

/// Is `e` (possibly) a TCX attachment, given the agent's backend?
fn is_tcx(e: &ChainEntry, agent: &AgentSettings) -> bool {
    match e.attach {
        Attach::Tcx { .. } => true,
        Attach::Netlink { .. } => false,
        Attach::AgentDecides => agent.backend != Backend::Netlink,
    }
}

fn order_ref(a: &Attach) -> Option<&str> {
    match a {
        Attach::Tcx {
            order: TcxOrder::Before(n) | TcxOrder::After(n),
        } => Some(n),
        _ => None,
    }
}

fn order_span(raw: &[RawChainEntry], name: &str) -> std::ops::Range<usize> {
    let e = raw.iter().find(|r| r.name.get_ref() == name);
    e.and_then(|r| {
        r.attach
            .as_ref()
            .and_then(|a| a.get_ref().order.as_ref().map(|o| o.span()))
    })
    .or_else(|| e.map(|r| r.name.span()))
    .unwrap_or(0..0)
}

fn check_order_refs(
    cx: &mut Ctx,
    raw: &[RawChainEntry],
    chain: &[ChainEntry],
    agent: &AgentSettings,
) {
    let names: Vec<_> = chain.iter().map(|e| format!("`{}`", e.name)).collect();
    for e in chain {
        let Some(target) = order_ref(&e.attach) else {
            continue;
        };
        let span = order_span(raw, &e.name);
        let Some(t) = chain.iter().find(|c| c.name == target) else {
            cx.err(
                span,
                format!(
                    "`{}` orders itself relative to `{target}`, which is not a chain entry; expected one of {}",
                    e.name,
                    names.join(", ")
                ),
            );
            continue;
        };
        if t.name == e.name {
            cx.err(
                span,
                format!(
                    "`{}` is ordered relative to itself, expected another TCX entry",
                    e.name
                ),
            );
        } else if !is_tcx(t, agent) {
            cx.err(
                span,
                format!(
                    "`{}` is ordered relative to `{target}`, which is attached with netlink; expected a TCX entry",
                    e.name
                ),
            );
        } else if let Some(h) = e
            .direction
            .hooks()
            .iter()
            .find(|h| !t.direction.covers(**h))
        {
            cx.err(
                span,
                format!(
                    "`{}` is attached on {h:?} but `{target}` is not, expected `{target}` to cover {h:?}",
                    e.name
                )
                .to_lowercase_dir(),
            );
        }
    }
    if let Some(cycle) = find_cycle(chain) {
        let span = order_span(raw, &cycle[0]);
        cx.err(
            span,
            format!(
                "TCX order cycle: {}, expected `before`/`after` references without a loop",
                cycle.join(" -> ")
            ),
        );
    }
}

trait LowerDir {
    fn to_lowercase_dir(self) -> String;
}

impl LowerDir for String {
    /// `{:?}` of Direction prints `Ingress`; the file says `ingress`.
    fn to_lowercase_dir(self) -> String {
        self.replace("Ingress", "ingress")
            .replace("Egress", "egress")
    }
}

/// A loop in the before/after references, as a list of names ending where it began.
fn find_cycle(chain: &[ChainEntry]) -> Option<Vec<String>> {
    let next: HashMap<&str, &str> = chain
        .iter()
        .filter_map(|e| Some((e.name.as_str(), order_ref(&e.attach)?)))
        .collect();
    for start in chain {
        let mut path = vec![start.name.as_str()];
        let mut cur = start.name.as_str();
        while let Some(n) = next.get(cur).copied() {
            if n == cur {
                break; // self-reference: reported on its own
            }
            if n == start.name {
                path.push(n);
                return Some(path.into_iter().map(String::from).collect());
            }
            if path.contains(&n) || path.len() > chain.len() {
                break;
            }
            path.push(n);
            cur = n;
        }
    }
    None
}

fn check_netlink_clashes(cx: &mut Ctx, raw: &[RawChainEntry], chain: &[ChainEntry]) {
    let mut seen: BTreeMap<(u16, u32, Direction), &str> = BTreeMap::new();
    for e in chain {
        // An agent placed by its own rules is not checked here: a second
        // agent meeting the first one's filter is a refusal worth pinning
        // (chain-two-agents-netlink), and the agent reports it.
        let Attach::Netlink { priority, handle } = e.attach else {
            continue;
        };
        // One error per entry, even when it clashes on both hooks.
        for hook in e.direction.hooks() {
            if let Some(first) = seen.insert((priority, handle, *hook), &e.name) {
                let entry = raw.iter().find(|r| *r.name.get_ref() == e.name);
                let span = entry
                    .and_then(|r| r.attach.as_ref().map(|a| a.span()).or_else(|| Some(r.name.span())))
                    .unwrap_or(0..0);
                cx.err(span, format!(
                    "`{}` and `{first}` are both netlink priority {priority} handle {handle:#x} on {hook:?}: the kernel refuses the second (EEXIST); expected a different priority or handle",
                    e.name
                ).to_lowercase_dir());
                break;
            }
        }
    }
}

/// The expected order on one hook: TCX first (head → tail), then netlink
/// filters by priority.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HookChain {
    pub tcx: Vec<String>,
    pub netlink: Vec<NetlinkSlot>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetlinkSlot {
    pub name: String,
    pub priority: u16,
    pub handle: u32,
}

/// What the runner does, in this order, to build the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttachStep {
    pub entry: String,
    pub hook: Direction,
    pub how: ResolvedAttach,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ResolvedAttach {
    Tcx(TcxOrder),
    Netlink { priority: u16, handle: u32 },
}

/// As snapshots show it: `tcx(head)`, `tcx(before=x)`, `netlink(prio=1,handle=0x7c1a)`
/// (the handle in hex, as `tc filter show` prints it).
impl std::fmt::Display for ResolvedAttach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResolvedAttach::Tcx(TcxOrder::Head) => f.write_str("tcx(head)"),
            ResolvedAttach::Tcx(TcxOrder::Tail) => f.write_str("tcx(tail)"),
            ResolvedAttach::Tcx(TcxOrder::Before(x)) => write!(f, "tcx(before={x})"),
            ResolvedAttach::Tcx(TcxOrder::After(x)) => write!(f, "tcx(after={x})"),
            ResolvedAttach::Netlink { priority, handle } => write!(f, "netlink(prio={priority},handle={handle:#x})"),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ResolvedChain {
    pub ingress: HookChain,
    pub egress: HookChain,
    /// Attach operations in an order where every `before`/`after` target
    /// already exists (file order otherwise).
    pub sequence: Vec<AttachStep>,
}

impl ResolvedChain {
    pub fn hook(&self, hook: Direction) -> &HookChain {
        if hook == Direction::Egress {
            &self.egress
        } else {
            &self.ingress
        }
    }
}

/// Computes the expected chain. `kernel_has_tcx` decides where the agent goes
/// under `backend = "auto"` (TCX head, else netlink at `[agent].priority`).
pub fn resolve_chain(s: &Scenario, kernel_has_tcx: bool) -> ResolvedChain {
    let how = |e: &ChainEntry| match &e.attach {
        Attach::Tcx { order } => ResolvedAttach::Tcx(order.clone()),
        Attach::Netlink { priority, handle } => ResolvedAttach::Netlink {
            priority: *priority,
            handle: *handle,
        },
        Attach::AgentDecides => match (s.agent.backend, kernel_has_tcx) {
            (Backend::Tcx, _) | (Backend::Auto, true) => ResolvedAttach::Tcx(TcxOrder::Head),
            _ => ResolvedAttach::Netlink {
                priority: s.agent.priority,
                handle: AGENT_NETLINK_HANDLE,
            },
        },
    };
    let mut out = ResolvedChain::default();
    for idx in attach_sequence(&s.chain) {
        let e = &s.chain[idx];
        for hook in e.direction.hooks() {
            let step = AttachStep {
                entry: e.name.clone(),
                hook: *hook,
                how: how(e),
            };
            let hc = if *hook == Direction::Egress {
                &mut out.egress
            } else {
                &mut out.ingress
            };
            match &step.how {
                ResolvedAttach::Tcx(order) => place_tcx(&mut hc.tcx, &e.name, order),
                ResolvedAttach::Netlink { priority, handle } => hc.netlink.push(NetlinkSlot {
                    name: e.name.clone(),
                    priority: *priority,
                    handle: *handle,
                }),
            }
            out.sequence.push(step);
        }
    }
    // Lower priority runs first; within one priority the kernel puts each
    // new filter at the head, so the newest runs first (stable sort of the
    // reversed attach order).
    for hc in [&mut out.ingress, &mut out.egress] {
        hc.netlink.reverse();
        hc.netlink.sort_by_key(|n| n.priority);
    }
    out
}

fn place_tcx(list: &mut Vec<String>, name: &str, order: &TcxOrder) {
    let pos = |t: &str, list: &Vec<String>| list.iter().position(|n| n == t);
    let at = match order {
        TcxOrder::Head => 0,
        TcxOrder::Tail => list.len(),
        TcxOrder::Before(t) => pos(t, list).unwrap_or(0),
        TcxOrder::After(t) => pos(t, list).map_or(list.len(), |p| p + 1),
    };
    list.insert(at, name.to_string());
}

/// File order, except that an entry naming another in `before`/`after` waits
/// until that one is attached. Validation has ruled out cycles.
fn attach_sequence(chain: &[ChainEntry]) -> Vec<usize> {
    let mut done = vec![false; chain.len()];
    let mut seq = Vec::with_capacity(chain.len());
    while seq.len() < chain.len() {
        let ready = (0..chain.len()).find(|&i| {
            !done[i]
                && order_ref(&chain[i].attach).is_none_or(|t| {
                    chain
                        .iter()
                        .position(|c| c.name == t)
                        .is_none_or(|j| done[j])
                })
        });
        // A cycle cannot happen after validation; fall back to file order if it does.
        let i = ready.unwrap_or_else(|| (0..chain.len()).find(|&i| !done[i]).unwrap_or(0));
        done[i] = true;
        seq.push(i);
    }
    seq
}
