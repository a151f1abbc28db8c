//! The scenario file as written: serde types mirroring the TOML, with spans
//! kept wherever a semantic check needs to point at a value.
//! `validate` turns them into the public types of `scenario::model`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_spanned::Spanned;

use super::model::{
    BehaviourKind, Builtin, CtState, Dimension, Direction, Lockdown, Pacing, Side, Step, TcxOrder,
};

pub(crate) type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawScenario {
    pub name: S<String>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub kernels: Vec<S<String>>,
    #[serde(default)]
    pub lockdown: Vec<Lockdown>,
    #[serde(default)]
    pub requires: Vec<S<String>>,
    #[serde(default)]
    pub topology: RawTopology,
    #[serde(default)]
    pub chain: Vec<RawChainEntry>,
    pub agent: Option<RawAgent>,
    #[serde(default)]
    pub replay: Vec<RawReplay>,
    pub services: Option<S<RawServices>>,
    #[serde(default)]
    pub expect: RawExpect,
}

/// `[services]`: run the built-in test services instead of replays.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServices {
    pub chain: S<String>,
    pub requests: Option<S<i64>>,
    #[serde(default)]
    pub ipv6: bool,
    pub traceparent: Option<S<String>>,
    #[serde(default)]
    pub forward: Vec<S<String>>,
    #[serde(default)]
    pub after_response: Vec<S<String>>,
    #[serde(default)]
    pub tls: Vec<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTopology {
    #[serde(default)]
    pub device: RawEndpoint,
    #[serde(default)]
    pub peer: RawEndpoint,
    pub local: Option<Side>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEndpoint {
    pub name: Option<S<String>>,
    pub mac: Option<S<String>>,
    pub ipv4: Option<S<String>>,
    pub ipv6: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawChainEntry {
    pub name: S<String>,
    pub program: S<RawProgram>,
    #[serde(default)]
    pub direction: Option<Direction>,
    pub attach: Option<S<RawAttach>>,
}

/// `program = "pass"` or a table with one tag key: `{ cilium = "cil_from_netdev", … }`.
/// The table form leaves room for `{ object = "x.o", … }` (a later issue).
#[derive(Debug)]
pub(crate) enum RawProgram {
    Builtin(Builtin),
    Table(Box<RawProgramTable>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProgramTable {
    pub cilium: Option<S<String>>,
    pub behaviour: Option<S<BehaviourKind>>,
    /// `redirect`: the device name packets are redirected to.
    pub redirect_to: Option<S<String>>,
    /// `dnat`: service address rewritten ...
    pub dnat_from: Option<S<String>>,
    /// ... to this backend address.
    pub dnat_to: Option<S<String>>,
    /// The neutral program of "another vendor" (instead of `cilium`).
    pub foreign: Option<S<String>>,
    /// `{ object = "x.o", … }`: a compiled BPF object (see `crate::byo::spec`).
    pub object: Option<S<String>>,
    pub program: Option<S<crate::byo::spec::RawProgramSel>>,
    #[serde(default)]
    pub constants: BTreeMap<S<String>, S<toml::Value>>,
    #[serde(default)]
    pub fill: Vec<crate::byo::spec::RawFill>,
    #[serde(default)]
    pub pin: Vec<S<String>>,
    #[serde(default)]
    pub reuse: BTreeMap<S<String>, S<String>>,
    #[serde(default)]
    pub tail_calls: Vec<crate::byo::spec::RawTailCall>,
    #[serde(default)]
    pub dump: Vec<S<crate::byo::spec::RawDump>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAttach {
    pub mode: S<AttachMode>,
    pub order: Option<S<TcxOrder>>,
    pub priority: Option<S<i64>>,
    pub handle: Option<S<i64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum AttachMode {
    Tcx,
    Netlink,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAgent {
    pub backend: Option<S<super::model::Backend>>,
    pub priority: Option<S<i64>>,
    pub ct_max_entries: Option<S<i64>>,
    pub ct_map: Option<super::model::CtMapKind>,
    #[serde(default)]
    pub lifetimes: RawLifetimes,
    pub propagation: Option<super::model::Propagation>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLifetimes {
    pub syn: Option<S<i64>>,
    pub tcp: Option<S<i64>>,
    pub close: Option<S<i64>>,
    pub non_tcp: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawReplay {
    pub pcap: S<String>,
    #[serde(default)]
    pub rewrite: BTreeMap<S<String>, S<String>>,
    #[serde(default)]
    pub pacing: Pacing,
    #[serde(default)]
    pub after: Vec<Step>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExpect {
    #[serde(default = "yes")]
    pub snapshot: bool,
    pub spans: Option<S<i64>>,
    #[serde(default)]
    pub ct: Vec<RawCtCheck>,
    pub agent_error_contains: Option<S<String>>,
    #[serde(default)]
    pub counters: BTreeMap<S<String>, S<i64>>,
    #[serde(default)]
    pub varies_by: Vec<Dimension>,
}

impl Default for RawExpect {
    fn default() -> Self {
        RawExpect {
            snapshot: true,
            spans: None,
            ct: Vec::new(),
            agent_error_contains: None,
            counters: BTreeMap::new(),
            varies_by: Vec::new(),
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCtCheck {
    pub tuple: S<String>,
    pub state: Option<CtState>,
}

impl<'de> Deserialize<'de> for RawProgram {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ProgramVisitor)
    }
}

struct ProgramVisitor;

impl<'de> serde::de::Visitor<'de> for ProgramVisitor {
    type Value = RawProgram;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "one of `agent`, `pass`, `unspec`, `drop`, `counter`, `propagation`, or a table like \
             { cilium = \"cil_from_netdev\", behaviour = \"ok\" }",
        )
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawProgram, E> {
        Builtin::from_name(v)
            .map(RawProgram::Builtin)
            .ok_or_else(|| {
                E::custom(format!(
                    "unknown program `{v}`, expected one of `agent`, `pass`, `unspec`, `drop`, \
                 `counter`, `propagation`, or a table like {{ cilium = \"cil_from_netdev\", behaviour = \"ok\" }}"
                ))
            })
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawProgram, A::Error> {
        // Forwarding the real MapAccess keeps spans and unknown-key positions.
        let table =
            RawProgramTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        Ok(RawProgram::Table(Box::new(table)))
    }
}
