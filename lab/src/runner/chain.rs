//! Building a scenario's chain on the device under test, and reading it back
//! the way the kernel reports it.
//!
//! Must run on a thread inside the device's namespace: aya resolves interface
//! names and opens its netlink sockets in the calling thread's namespace, and
//! dropping a netlink link deletes the filter there too.

use std::collections::HashMap;

use anyhow::{Context, bail};
use aya::programs::links::LinkOrder;
use aya::programs::tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle};
use aya::programs::{ProgramId, SchedClassifier, TcAttachType};
use tclab_datapath::loader::{Datapath, DatapathConfig, Hook, TestProgram, Verdict};
use tclab_datapath::types::Counter;
use tclab_net::tc::Direction as NetDirection;

use crate::scenario::{ResolvedAttach, ResolvedChain};
use crate::scenario::{self, AgentSettings, Builtin, ChainEntry, Direction, Program, TcxOrder};

use super::replay::ChainCounters;
use super::report::ChainLine;

/// A chain entry's loaded program(s).
pub enum EntryProgram {
    /// The agent's two classifiers, with their maps (CT, events, counters).
    Agent(Box<Datapath>),
    /// A built-in test program; the same program serves both hooks.
    Test(TestProgram),
}

impl EntryProgram {
    fn load(entry: &ChainEntry, agent: &AgentSettings) -> anyhow::Result<EntryProgram> {
        let verdict = match &entry.program {
            Program::Builtin(Builtin::Agent) => {
                let cfg = datapath_config(agent);
                let dp = Datapath::load(&cfg).context("failed to load the agent's datapath")?;
                return Ok(EntryProgram::Agent(Box::new(dp)));
            }
            Program::Builtin(Builtin::Pass) => Verdict::Pass,
            Program::Builtin(Builtin::Unspec | Builtin::Counter) => Verdict::Unspec,
            Program::Builtin(Builtin::Drop) => Verdict::Drop,
            Program::Cilium { name, .. } => {
                bail!("chain entry `{}`: Cilium-like program {} is not built yet", entry.name, name.0)
            }
        };
        let prog = TestProgram::load(verdict)
            .with_context(|| format!("failed to load test program for chain entry `{}`", entry.name))?;
        Ok(EntryProgram::Test(prog))
    }

    fn classifier_mut(&mut self, hook: Direction) -> &mut SchedClassifier {
        match self {
            EntryProgram::Agent(dp) => dp.program_mut(match hook {
                Direction::Egress => Hook::Egress,
                _ => Hook::Ingress,
            }),
            EntryProgram::Test(t) => t.program_mut(),
        }
    }

    /// Packets this entry's program(s) saw, both hooks added.
    pub fn packets(&self) -> anyhow::Result<u64> {
        Ok(match self {
            EntryProgram::Agent(dp) => dp.counters().context("failed to read the agent's counters")?.get(Counter::Packets),
            EntryProgram::Test(t) => t.packets().context("failed to read a test program's counter")?,
        })
    }
}

/// Scenario `[agent]` settings as the datapath's load configuration.
pub fn datapath_config(agent: &AgentSettings) -> DatapathConfig {
    use std::time::Duration;
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

/// One attached entry.
pub struct LiveEntry {
    pub name: String,
    pub hooks: Vec<Direction>,
    pub program: EntryProgram,
    links: Vec<SchedClassifierLink>,
    /// Program id per hook, to name kernel-reported programs.
    ids: HashMap<Direction, u32>,
}

/// The chain as attached. Dropping it detaches every link it made (and
/// nothing else): it must be dropped inside the device's namespace.
pub struct LiveChain {
    pub entries: Vec<LiveEntry>,
    iface: String,
    /// The first entry on each hook, as resolved.
    first: HashMap<Direction, usize>,
}

impl LiveChain {
    /// Load every entry's program, then attach in the resolved order.
    pub fn attach(
        iface: &str,
        chain: &[ChainEntry],
        resolved: &ResolvedChain,
        agent: &AgentSettings,
    ) -> anyhow::Result<LiveChain> {
        let mut entries = Vec::with_capacity(chain.len());
        for entry in chain {
            entries.push(LiveEntry {
                name: entry.name.clone(),
                hooks: entry.direction.hooks().to_vec(),
                program: EntryProgram::load(entry, agent)?,
                links: Vec::new(),
                ids: HashMap::new(),
            });
        }
        let mut live = LiveChain { entries, iface: iface.to_string(), first: HashMap::new() };
        let needs_clsact = resolved.sequence.iter().any(|s| matches!(s.how, ResolvedAttach::Netlink { .. }));
        if needs_clsact {
            add_clsact(iface)?;
        }
        for step in &resolved.sequence {
            live.attach_step(&step.entry, step.hook, &step.how)?;
        }
        for hook in [Direction::Ingress, Direction::Egress] {
            let h = resolved.hook(hook);
            let first = h.tcx.first().or(h.netlink.first().map(|n| &n.name));
            if let Some(idx) = first.and_then(|n| live.index_of(n)) {
                live.first.insert(hook, idx);
            }
        }
        Ok(live)
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.name == name)
    }

    fn attach_step(&mut self, name: &str, hook: Direction, how: &ResolvedAttach) -> anyhow::Result<()> {
        let options = match how {
            ResolvedAttach::Tcx(order) => TcAttachOptions::TcxOrder(self.link_order(order, hook)?),
            ResolvedAttach::Netlink { priority, handle } => TcAttachOptions::Netlink(NlOptions {
                priority: *priority,
                handle: TcHandle::from(*handle),
                ..NlOptions::default()
            }),
        };
        let idx = self.index_of(name).with_context(|| format!("no chain entry `{name}`"))?;
        let iface = self.iface.clone();
        let entry = &mut self.entries[idx];
        let prog = entry.program.classifier_mut(hook);
        let id = prog.info().map(|i| i.id()).with_context(|| format!("failed to query program of `{name}`"))?;
        let link_id = prog
            .attach_with_options(&iface, attach_type(hook), options)
            .with_context(|| format!("failed to attach chain entry `{name}` on {iface} {hook:?} ({how:?})"))?;
        let link = prog.take_link(link_id).with_context(|| format!("failed to take the link of `{name}`"))?;
        entry.links.push(link);
        entry.ids.insert(hook, id);
        Ok(())
    }

    fn link_order(&self, order: &TcxOrder, hook: Direction) -> anyhow::Result<LinkOrder> {
        let target_id = |name: &str| -> anyhow::Result<ProgramId> {
            let id = self
                .index_of(name)
                .and_then(|i| self.entries[i].ids.get(&hook).copied())
                .with_context(|| format!("`{name}` is not attached on {hook:?} yet"))?;
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

    /// The agent entry's datapath, if the chain has the agent.
    pub fn agent_mut(&mut self) -> Option<&mut Datapath> {
        self.entries.iter_mut().find_map(|e| match &mut e.program {
            EntryProgram::Agent(dp) => Some(dp.as_mut()),
            EntryProgram::Test(_) => None,
        })
    }

    /// Name a program id: the entry that owns it, or "foreign".
    fn owner_of(&self, id: u32) -> String {
        self.entries
            .iter()
            .find(|e| e.ids.values().any(|v| *v == id))
            .map_or_else(|| "foreign".to_string(), |e| e.name.clone())
    }

    /// The chain as the kernel reports it: TCX programs (head first), then
    /// netlink filters (lower priority first).
    pub fn kernel_view(&self, ifindex: u32) -> anyhow::Result<Vec<ChainLine>> {
        let mut lines = Vec::new();
        for hook in [Direction::Ingress, Direction::Egress] {
            let hook_name = super::replay::hook_name(hook).to_string();
            if let Ok((_, progs)) = SchedClassifier::query_tcx(&self.iface, attach_type(hook)) {
                for info in progs {
                    lines.push(ChainLine {
                        hook: hook_name.clone(),
                        api: "tcx".into(),
                        program: info.name_as_str().unwrap_or("?").to_string(),
                        entry: self.owner_of(info.id()),
                    });
                }
            }
            let dir = if hook == Direction::Egress { NetDirection::Egress } else { NetDirection::Ingress };
            let filters = tclab_net::tc::list_filters(ifindex, dir)
                .with_context(|| format!("failed to list netlink filters on {}", self.iface))?;
            for f in filters {
                lines.push(ChainLine {
                    hook: hook_name.clone(),
                    api: format!("netlink prio={} handle=0x{:x}", f.priority, f.handle),
                    program: f.bpf_name.clone().unwrap_or_else(|| f.kind.clone()),
                    entry: f.bpf_id.map_or_else(|| "foreign".to_string(), |id| self.owner_of(id)),
                });
            }
        }
        Ok(lines)
    }
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

    fn read(&self) -> anyhow::Result<Vec<u64>> {
        self.entries.iter().map(|e| e.program.packets()).collect()
    }

    fn first_on(&self, hook: Direction) -> Option<usize> {
        self.first.get(&hook).copied()
    }
}
