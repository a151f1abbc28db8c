//! Building a scenario's chain on the device under test, and reading it back
//! the way the kernel reports it.
//!
//! Entries are attached in the resolved sequence (file order, `before`/`after`
//! targets first). When an agent entry's turn comes, the agent's own start-up
//! rules run exactly as `tclab-agent run` runs them (the same functions of
//! `tclab_datapath::chain`): on what is attached at that moment, before the
//! agent attaches (a refusal attaches nothing of that agent), then the
//! warnings for whatever runs before it, with a dry run of each foreign
//! program on a probe packet (as `tclab-agent run --dry-run-chain`).
//!
//! Must run on a thread inside the device's namespace: aya resolves interface
//! names and opens its netlink sockets in the calling thread's namespace, and
//! dropping a netlink link deletes the filter there too.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use aya::programs::links::LinkOrder;
use aya::programs::tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle};
use aya::programs::{ProgramId, SchedClassifier, TcAttachType};
use tclab_datapath::agent::AgentError;
use tclab_datapath::attach::{self, Api, Attachment, DeviceState};
use tclab_datapath::chain::{self as rules, StartCheckError};
use tclab_datapath::loader::{
    CilAction, CilProgram, CiliumLikeProgram, Datapath, DatapathConfig, Hook, TestProgram, Verdict,
};
use tclab_datapath::types::Counter;
use tclab_net::tc::Direction as NetDirection;

use crate::scenario::{Attach, ResolvedAttach, ResolvedChain};
use crate::scenario::{self, AgentSettings, Behaviour, Builtin, ChainEntry, Direction, Program, TcxOrder};

use super::replay::ChainCounters;
use super::report::{AgentOutcome, ChainLine};

/// A chain entry's loaded program(s).
pub enum EntryProgram {
    /// The agent's two classifiers, with their maps (CT, events, counters).
    Agent(Box<Datapath>),
    /// A built-in test program; the same program serves both hooks.
    Test(TestProgram),
    /// A Cilium-like program (or the other vendor's); serves both hooks.
    Cilium(Box<CiliumLikeProgram>),
    /// An agent whose datapath failed to load: it refused to start.
    NotLoaded,
    /// A compiled BPF object of the user's, loaded with libbpf (`crate::byo`).
    Object(Box<crate::byo::LoadedObject>),
    /// The agent's propagation classifiers (TC only: a replay has no sockets).
    Propagation(Box<tclab_datapath::propagation::Propagation>),
}

impl EntryProgram {
    fn load(entry: &ChainEntry, agent: &AgentSettings, iface: &str, pins: &mut crate::byo::Pins) -> anyhow::Result<EntryProgram> {
        let verdict = match &entry.program {
            Program::Builtin(Builtin::Agent) => {
                let cfg = datapath_config(agent);
                let dp = Datapath::load(&cfg).context("failed to load the agent's datapath")?;
                return Ok(EntryProgram::Agent(Box::new(dp)));
            }
            Program::Builtin(Builtin::Pass) => Verdict::Pass,
            Program::Builtin(Builtin::Unspec | Builtin::Counter) => Verdict::Unspec,
            Program::Builtin(Builtin::Drop) => Verdict::Drop,
            Program::Builtin(Builtin::Propagation) => {
                let mode = propagation_mode(agent.propagation);
                let p = tclab_datapath::propagation::Propagation::start_tc_only(mode)
                    .context("failed to load the agent's propagation classifiers")?;
                return Ok(EntryProgram::Propagation(Box::new(p)));
            }
            Program::Cilium { name, behaviour } => return load_cilium(entry, &name.0, behaviour, iface),
            Program::Foreign { name, behaviour } => return load_cilium(entry, name, behaviour, iface),
            Program::Object(o) => return Ok(EntryProgram::Object(Box::new(crate::byo::LoadedObject::load(&entry.name, o, pins)?))),
        };
        let prog = TestProgram::load(verdict)
            .with_context(|| format!("failed to load test program for chain entry `{}`", entry.name))?;
        Ok(EntryProgram::Test(prog))
    }

    fn classifier_mut(&mut self, hook: Direction) -> Option<&mut SchedClassifier> {
        Some(match self {
            EntryProgram::Agent(dp) => dp.program_mut(hook_of(hook)),
            EntryProgram::Test(t) => t.program_mut(),
            EntryProgram::Cilium(c) => c.program_mut(),
            EntryProgram::Propagation(p) => return p.classifier_mut(hook_of(hook)),
            EntryProgram::NotLoaded | EntryProgram::Object(_) => return None,
        })
    }

    /// Packets this entry's program(s) saw, both hooks added.
    pub fn packets(&self) -> anyhow::Result<u64> {
        Ok(match self {
            EntryProgram::Agent(dp) => dp.counters().context("failed to read the agent's counters")?.get(Counter::Packets),
            EntryProgram::Test(t) => t.packets().context("failed to read a test program's counter")?,
            EntryProgram::Cilium(c) => c.stats().context("failed to read a Cilium-like program's counters")?.packets,
            EntryProgram::Propagation(p) => p.counter("tc_packets"),
            EntryProgram::NotLoaded => 0,
            EntryProgram::Object(o) => o.packets()?,
        })
    }
}

fn hook_of(hook: Direction) -> Hook {
    match hook {
        Direction::Egress => Hook::Egress,
        _ => Hook::Ingress,
    }
}

/// Load a Cilium-like program. A redirect names a device of the topology
/// (validated): the device itself means its own ingress, the peer means out
/// through the device (the only way to reach the peer's namespace).
fn load_cilium(entry: &ChainEntry, name: &str, behaviour: &Behaviour, iface: &str) -> anyhow::Result<EntryProgram> {
    let program = CilProgram::from_name(name)
        .with_context(|| format!("chain entry `{}`: no program {name} in ciliumlike.o", entry.name))?;
    let action = match behaviour {
        Behaviour::Ok => CilAction::Ok,
        Behaviour::Unspec => CilAction::Unspec,
        Behaviour::Drop => CilAction::Drop,
        Behaviour::Redirect { to } => {
            let ifindex = ifindex_of(iface)?;
            if to == iface { CilAction::RedirectIngress { ifindex } } else { CilAction::Redirect { ifindex } }
        }
        Behaviour::Dnat { from, to } => match (from, to) {
            // The rewrite lets the chain go on, so what runs after it sees the new addresses.
            (SocketAddr::V4(service), SocketAddr::V4(backend)) => {
                CilAction::Dnat { service: *service, backend: *backend, then: Verdict::Unspec }
            }
            _ => bail!("chain entry `{}`: the Cilium-like DNAT rewrites IPv4 only", entry.name),
        },
    };
    let prog = CiliumLikeProgram::load(program, action)
        .with_context(|| format!("failed to load {name} for chain entry `{}`", entry.name))?;
    Ok(EntryProgram::Cilium(Box::new(prog)))
}

fn ifindex_of(iface: &str) -> anyhow::Result<u32> {
    let c = std::ffi::CString::new(iface).with_context(|| format!("device name {iface:?} contains NUL"))?;
    // SAFETY: valid C string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(std::io::Error::last_os_error()).with_context(|| format!("no device {iface} in this namespace")),
        i => Ok(i),
    }
}

/// Scenario `[agent].propagation` as the datapath's mode.
pub fn propagation_mode(p: scenario::Propagation) -> tclab_datapath::propagation::Mode {
    use tclab_datapath::propagation::Mode;
    match p {
        scenario::Propagation::Disabled => Mode::Disabled,
        scenario::Propagation::Headers => Mode::Headers,
        scenario::Propagation::Tcp => Mode::Tcp,
        scenario::Propagation::Ip => Mode::Ip,
        scenario::Propagation::All => Mode::All,
    }
}

/// Scenario `[agent]` settings as the datapath's load configuration.
pub fn datapath_config(agent: &AgentSettings) -> DatapathConfig {
    let secs = |s: u32| Duration::from_secs(u64::from(s));
    DatapathConfig {
        ct_max_entries: agent.ct_max_entries,
        ct_map: match agent.ct_map {
            scenario::CtMapKind::Lru => tclab_datapath::loader::CtMapKind::Lru,
            scenario::CtMapKind::Hash => tclab_datapath::loader::CtMapKind::Hash,
        },
        lifetimes: tclab_datapath::loader::CtLifetimes {
            syn: secs(agent.lifetimes.syn),
            tcp: secs(agent.lifetimes.tcp),
            close: secs(agent.lifetimes.close),
            non_tcp: secs(agent.lifetimes.non_tcp),
        },
        ..DatapathConfig::default()
    }
}

/// What holds one attachment; dropping it detaches.
enum Held {
    /// Attached by the lab through aya (TCX link or netlink filter).
    Aya(#[allow(dead_code)] SchedClassifierLink),
    /// Attached by the agent's own attach code (`[agent]` placement).
    Agent(#[allow(dead_code)] Attachment),
}

/// How an agent entry's start went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentStart {
    /// Not its turn yet.
    Pending,
    /// Rules passed; attaching (warnings of the rules so far).
    Attaching { warnings: Vec<String> },
    /// Attached on every hook.
    Started { warnings: Vec<String> },
    /// The agent refused to start (rules, attach conflict, load, no TCX).
    Refused { error: String },
}

/// One attached entry.
pub struct LiveEntry {
    pub name: String,
    pub hooks: Vec<Direction>,
    pub program: EntryProgram,
    links: Vec<Held>,
    /// Program id per hook, to name kernel-reported programs.
    ids: HashMap<Direction, u32>,
    /// For agent entries: how its start went; `None` for other programs.
    pub agent: Option<AgentStart>,
    /// For agent entries: the attach steps, as `ingress tcx(head)`.
    attach_text: Vec<String>,
}

/// The chain as attached. Dropping it detaches every link it made (and
/// nothing else): it must be dropped inside the device's namespace.
pub struct LiveChain {
    pub entries: Vec<LiveEntry>,
    iface: String,
    /// The entry whose program runs first on each hook, as the kernel reports it.
    first: HashMap<Direction, usize>,
    /// Counters once everything was attached: the agents' dry runs of
    /// foreign programs count as packets, and are not what a scenario replays.
    baseline: Vec<u64>,
}

impl LiveChain {
    /// Load every entry's program, then attach in the resolved order,
    /// applying the agent's start-up rules when an agent entry's turn comes.
    /// `kernel_has_tcx` as the lab's probe found it (an agent asked for TCX
    /// on a kernel without it refuses, as `tclab-agent run` does).
    pub fn attach(
        iface: &str,
        chain: &[ChainEntry],
        resolved: &ResolvedChain,
        agent: &AgentSettings,
        kernel_has_tcx: bool,
    ) -> anyhow::Result<LiveChain> {
        let mut entries = Vec::with_capacity(chain.len());
        // Maps object entries share (pinned by name, `reuse`), in memory.
        let mut pins = crate::byo::Pins::default();
        for entry in chain {
            let is_agent = entry.program == Program::Builtin(Builtin::Agent);
            let (program, state) = match EntryProgram::load(entry, agent, iface, &mut pins) {
                Ok(p) => (p, is_agent.then_some(AgentStart::Pending)),
                // The agent's own load failing is the agent refusing to start.
                Err(e) if is_agent => (EntryProgram::NotLoaded, Some(AgentStart::Refused { error: format!("{e:#}") })),
                Err(e) => return Err(e),
            };
            entries.push(LiveEntry {
                name: entry.name.clone(),
                hooks: entry.direction.hooks().to_vec(),
                program,
                links: Vec::new(),
                ids: HashMap::new(),
                agent: state,
                attach_text: Vec::new(),
            });
        }
        let mut live = LiveChain { entries, iface: iface.to_string(), first: HashMap::new(), baseline: Vec::new() };
        let needs_clsact = resolved.sequence.iter().any(|s| matches!(s.how, ResolvedAttach::Netlink { .. }));
        if needs_clsact {
            add_clsact(iface)?;
        }
        let agent_decides: Vec<&str> =
            chain.iter().filter(|e| e.attach == Attach::AgentDecides).map(|e| e.name.as_str()).collect();
        let devices: HashMap<&str, DeviceState> = agent_decides.iter().map(|n| (*n, DeviceState::default())).collect();
        for (i, step) in resolved.sequence.iter().enumerate() {
            let idx = live.index_of(&step.entry).with_context(|| format!("no chain entry `{}`", step.entry))?;
            let last_step = !resolved.sequence[i + 1..].iter().any(|s| s.entry == step.entry);
            if live.entries[idx].agent.is_none() {
                live.attach_step(idx, step.hook, &step.how)?;
                continue;
            }
            let device = devices.get(step.entry.as_str());
            live.agent_step(idx, step.hook, &step.how, device, agent.priority, kernel_has_tcx, last_step)?;
        }
        live.first = live.first_in_kernel_order()?;
        live.baseline = live.raw_counts()?;
        Ok(live)
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.name == name)
    }

    /// One attach step of an agent entry: its rules on the first step, the
    /// warnings after the last; any refusal detaches what it attached.
    #[allow(clippy::too_many_arguments)]
    fn agent_step(
        &mut self,
        idx: usize,
        hook: Direction,
        how: &ResolvedAttach,
        device: Option<&DeviceState>,
        priority: u16,
        kernel_has_tcx: bool,
        last_step: bool,
    ) -> anyhow::Result<()> {
        let api = match how {
            ResolvedAttach::Tcx(_) => Api::Tcx,
            ResolvedAttach::Netlink { .. } => Api::Netlink,
        };
        let iface = self.iface.clone();
        if self.entries[idx].agent == Some(AgentStart::Pending) {
            let state = if api == Api::Tcx && !kernel_has_tcx {
                AgentStart::Refused { error: AgentError::NoTcx { kernel: kernel_release() }.to_string() }
            } else {
                match rules::rules_before_attach(&iface, api) {
                    Ok(warnings) => AgentStart::Attaching { warnings },
                    Err(StartCheckError::Rule(e)) => AgentStart::Refused { error: AgentError::Rule(e).to_string() },
                    Err(StartCheckError::Chain(e)) => {
                        return Err(e).with_context(|| format!("agent `{}`: failed to read the chain", self.entries[idx].name));
                    }
                }
            };
            self.entries[idx].agent = Some(state);
        }
        if !matches!(self.entries[idx].agent, Some(AgentStart::Attaching { .. })) {
            return Ok(()); // refused: nothing of it is attached
        }
        let attached = match device {
            // `[agent]` placement: the agent's own attach code (TCX head, or
            // netlink at its priority and handle, never replacing a filter).
            Some(device) => self.agent_attach(idx, hook, api, priority, device),
            None => self.attach_step(idx, hook, how).map_err(|e| format!("{e:#}")),
        };
        let entry = &mut self.entries[idx];
        entry.attach_text.push(format!("{} {how}", super::replay::hook_name(hook)));
        if let Err(error) = attached {
            entry.links.clear(); // detach whatever of it was attached
            entry.ids.clear();
            entry.agent = Some(AgentStart::Refused { error });
            return Ok(());
        }
        if last_step {
            let mut ours: Vec<u32> = entry.ids.values().copied().collect();
            ours.sort_unstable();
            let after = rules::rules_after_attach(&iface, &ours, true)
                .with_context(|| format!("agent `{}`: failed to read the chain", entry.name))?;
            if let Some(AgentStart::Attaching { warnings }) = entry.agent.take() {
                let mut warnings = warnings;
                warnings.extend(after);
                entry.agent = Some(AgentStart::Started { warnings });
            }
        }
        Ok(())
    }

    fn agent_attach(&mut self, idx: usize, hook: Direction, api: Api, priority: u16, device: &DeviceState) -> Result<(), String> {
        let iface = self.iface.clone();
        let entry = &mut self.entries[idx];
        let EntryProgram::Agent(dp) = &mut entry.program else {
            return Err(format!("chain entry `{}` is not the agent", entry.name));
        };
        let h = hook_of(hook);
        let dir = if h == Hook::Egress { NetDirection::Egress } else { NetDirection::Ingress };
        let a = attach::attach(dp.program_mut(h), h.program_name(), &iface, dir, api, priority, device)
            .map_err(|e| AgentError::Attach(e).to_string())?;
        entry.ids.insert(hook, a.prog_id);
        entry.links.push(Held::Agent(a));
        Ok(())
    }

    fn attach_step(&mut self, idx: usize, hook: Direction, how: &ResolvedAttach) -> anyhow::Result<()> {
        if matches!(self.entries[idx].program, EntryProgram::Object(_)) {
            return self.attach_object(idx, hook, how);
        }
        let options = match how {
            ResolvedAttach::Tcx(order) => TcAttachOptions::TcxOrder(self.link_order(order, hook)?),
            ResolvedAttach::Netlink { priority, handle } => TcAttachOptions::Netlink(NlOptions {
                priority: *priority,
                handle: TcHandle::from(*handle),
                ..NlOptions::default()
            }),
        };
        let iface = self.iface.clone();
        let entry = &mut self.entries[idx];
        let name = entry.name.clone();
        let prog = entry.program.classifier_mut(hook).with_context(|| format!("chain entry `{name}` has no program"))?;
        let id = prog.info().map(|i| i.id()).with_context(|| format!("failed to query program of `{name}`"))?;
        let link_id = prog
            .attach_with_options(&iface, attach_type(hook), options)
            .with_context(|| format!("failed to attach chain entry `{name}` on {iface} {hook:?} ({how:?})"))?;
        let link = prog.take_link(link_id).with_context(|| format!("failed to take the link of `{name}`"))?;
        entry.links.push(Held::Aya(link));
        entry.ids.insert(hook, id);
        Ok(())
    }

    /// An object entry attaches through libbpf's fd, with the same TCX order
    /// (by the kernel id of the program it names) or netlink slot.
    fn attach_object(&mut self, idx: usize, hook: Direction, how: &ResolvedAttach) -> anyhow::Result<()> {
        let relative = match how {
            ResolvedAttach::Tcx(TcxOrder::Before(n) | TcxOrder::After(n)) => {
                let target = self.index_of(n).and_then(|i| self.entries[i].ids.get(&hook).copied());
                Some(target.with_context(|| format!("`{n}` is not attached on {hook:?} yet"))?)
            }
            _ => None,
        };
        let iface = self.iface.clone();
        let ifindex = ifindex_of(&iface)?;
        let entry = &mut self.entries[idx];
        let EntryProgram::Object(o) = &mut entry.program else { bail!("chain entry `{}` is not an object", entry.name) };
        let id = o.attach(&iface, ifindex, hook, how, relative)?;
        entry.ids.insert(hook, id);
        Ok(())
    }

    /// The maps object entries list under `dump`, read now.
    /// Names of the entries that are user-supplied objects.
    pub fn object_entries(&self) -> Vec<String> {
        self.entries.iter().filter(|e| matches!(e.program, EntryProgram::Object(_))).map(|e| e.name.clone()).collect()
    }

    pub fn object_dumps(&self) -> anyhow::Result<Vec<crate::byo::MapDump>> {
        let mut out = Vec::new();
        for e in &self.entries {
            if let EntryProgram::Object(o) = &e.program {
                out.extend(o.dump_maps().with_context(|| format!("chain entry `{}`: failed to dump its maps", e.name))?);
            }
        }
        Ok(out)
    }

    fn link_order(&self, order: &TcxOrder, hook: Direction) -> anyhow::Result<LinkOrder> {
        let target_id = |name: &str| -> anyhow::Result<ProgramId> {
            let entry = self.index_of(name).map(|i| &self.entries[i]);
            let id = entry.and_then(|e| e.ids.get(&hook).copied()).with_context(|| match entry.and_then(|e| e.agent.as_ref()) {
                Some(AgentStart::Refused { .. }) => format!("`{name}` refused to start, so nothing can be ordered relative to it"),
                _ => format!("`{name}` is not attached on {hook:?} yet"),
            })?;
            // SAFETY: the id comes from the kernel for a program we hold loaded.
            Ok(unsafe { ProgramId::new(id) })
        };
        Ok(match order {
            TcxOrder::Head => LinkOrder::first(),
            TcxOrder::Tail => LinkOrder::last(),
            TcxOrder::Before(name) => LinkOrder::before_program_id(target_id(name)?),
            TcxOrder::After(name) => LinkOrder::after_program_id(target_id(name)?),
        })
    }

    /// The datapath of the first agent entry that started, if any.
    pub fn agent_mut(&mut self) -> Option<&mut Datapath> {
        self.entries.iter_mut().find_map(|e| match (&mut e.program, &e.agent) {
            (EntryProgram::Agent(dp), Some(AgentStart::Started { .. })) => Some(dp.as_mut()),
            _ => None,
        })
    }

    /// How the agent(s) started, for the report; `None` without an agent.
    /// With several agent entries each part is prefixed with the entry's
    /// name, and a refusal of any of them is the outcome.
    pub fn agent_outcome(&self) -> Option<AgentOutcome> {
        let agents: Vec<&LiveEntry> = self.entries.iter().filter(|e| e.agent.is_some()).collect();
        if agents.is_empty() {
            return None;
        }
        let several = agents.len() > 1;
        let prefix = |e: &LiveEntry, s: &str| if several { format!("{}: {s}", e.name) } else { s.to_string() };
        let refusals: Vec<String> = agents
            .iter()
            .filter_map(|e| match &e.agent {
                Some(AgentStart::Refused { error }) => Some(prefix(e, &self.named(error))),
                _ => None,
            })
            .collect();
        if !refusals.is_empty() {
            return Some(AgentOutcome::Refused { error: refusals.join("; ") });
        }
        let attach: Vec<String> = agents
            .iter()
            .map(|e| prefix(e, &if e.attach_text.is_empty() { "attached".to_string() } else { e.attach_text.join(", ") }))
            .collect();
        let warnings = agents
            .iter()
            .flat_map(|e| match &e.agent {
                Some(AgentStart::Started { warnings }) => warnings.iter().map(|w| prefix(e, &self.named(w))).collect(),
                _ => Vec::new(),
            })
            .collect();
        Some(AgentOutcome::Started { attach: attach.join("; "), warnings })
    }

    /// `text` with every `(id N)` of one of our programs replaced by
    /// `(entry NAME)`: ids differ on every run, entry names do not.
    fn named(&self, text: &str) -> String {
        let mut out = text.to_string();
        for e in &self.entries {
            for id in e.ids.values() {
                out = out.replace(&format!("(id {id})"), &format!("(entry {})", e.name));
            }
        }
        out
    }

    /// Name a program id: the entry that owns it, or "foreign".
    fn owner_of(&self, id: u32) -> String {
        self.owner_index(id).map_or_else(|| "foreign".to_string(), |i| self.entries[i].name.clone())
    }

    fn owner_index(&self, id: u32) -> Option<usize> {
        self.entries.iter().position(|e| e.ids.values().any(|v| *v == id))
    }

    /// Program ids on `hook` in run order: TCX head→tail, then netlink
    /// filters as the kernel dumps them (priority, then its order within one).
    fn run_order(&self, ifindex: u32, hook: Direction) -> anyhow::Result<Vec<(ChainLine, Option<u32>)>> {
        let hook_name = super::replay::hook_name(hook).to_string();
        let mut lines = Vec::new();
        if let Ok((_, progs)) = SchedClassifier::query_tcx(&self.iface, attach_type(hook)) {
            for info in progs {
                let line = ChainLine {
                    hook: hook_name.clone(),
                    api: "tcx".into(),
                    program: info.name_as_str().unwrap_or("?").to_string(),
                    entry: self.owner_of(info.id()),
                };
                lines.push((line, Some(info.id())));
            }
        }
        let dir = if hook == Direction::Egress { NetDirection::Egress } else { NetDirection::Ingress };
        let filters = tclab_net::tc::list_filters(ifindex, dir)
            .with_context(|| format!("failed to list netlink filters on {}", self.iface))?;
        for f in filters {
            let line = ChainLine {
                hook: hook_name.clone(),
                api: format!("netlink prio={} handle=0x{:x}", f.priority, f.handle),
                program: f.bpf_name.clone().unwrap_or_else(|| f.kind.clone()),
                entry: f.bpf_id.map_or_else(|| "foreign".to_string(), |id| self.owner_of(id)),
            };
            lines.push((line, f.bpf_id));
        }
        Ok(lines)
    }

    fn first_in_kernel_order(&self) -> anyhow::Result<HashMap<Direction, usize>> {
        let ifindex = ifindex_of(&self.iface)?;
        let mut first = HashMap::new();
        for hook in [Direction::Ingress, Direction::Egress] {
            let order = self.run_order(ifindex, hook)?;
            if let Some(idx) = order.iter().find_map(|(_, id)| id.and_then(|id| self.owner_index(id))) {
                first.insert(hook, idx);
            }
        }
        Ok(first)
    }

    /// The chain as the kernel reports it: TCX programs (head first), then
    /// netlink filters (lower priority first).
    pub fn kernel_view(&self, ifindex: u32) -> anyhow::Result<Vec<ChainLine>> {
        let mut lines = Vec::new();
        for hook in [Direction::Ingress, Direction::Egress] {
            lines.extend(self.run_order(ifindex, hook)?.into_iter().map(|(l, _)| l));
        }
        Ok(lines)
    }

    fn raw_counts(&self) -> anyhow::Result<Vec<u64>> {
        self.entries.iter().map(|e| e.program.packets()).collect()
    }

    /// Counters once they stop moving: a packet crosses several programs
    /// (and, redirected, a second hook) one after the other, so a single
    /// read can land in the middle.
    fn settled_counts(&self) -> anyhow::Result<Vec<u64>> {
        let mut last = self.raw_counts()?;
        for _ in 0..50 {
            std::thread::sleep(Duration::from_micros(50));
            let now = self.raw_counts()?;
            if now == last {
                break;
            }
            last = now;
        }
        Ok(last)
    }
}

/// The running kernel's release, for the agent's "no TCX" refusal.
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(|_| "unknown".to_string(), |s| s.trim().to_string())
}

fn attach_type(hook: Direction) -> TcAttachType {
    match hook {
        Direction::Egress => TcAttachType::Egress,
        _ => TcAttachType::Ingress,
    }
}

/// Add the clsact qdisc; an existing one is fine (another entry, or a
/// pre-existing set-up, made it).
fn add_clsact(iface: &str) -> anyhow::Result<()> {
    match aya::programs::tc::qdisc_add_clsact(iface) {
        Ok(()) => Ok(()),
        Err(aya::programs::tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("failed to add clsact on {iface}"))),
    }
}

impl ChainCounters for LiveChain {
    fn names(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.name.clone()).collect()
    }

    /// Packets each entry saw since the chain was complete.
    fn read(&self) -> anyhow::Result<Vec<u64>> {
        let now = self.settled_counts()?;
        Ok(now.iter().zip(self.baseline.iter().chain(std::iter::repeat(&0))).map(|(n, b)| n.saturating_sub(*b)).collect())
    }

    fn first_on(&self, hook: Direction) -> Option<usize> {
        self.first.get(&hook).copied()
    }
}
