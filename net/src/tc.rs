//! TC (clsact) queries over rtnetlink: the legacy netlink filters on a
//! device's clsact hooks, its qdiscs, and deletion. TCX attachments are not
//! netlink objects and do not appear here (query them with BPF_PROG_QUERY,
//! aya's `SchedClassifier::query_tcx`).
//!
//! Every function here works on the calling thread's namespace: call it
//! inside [`crate::NetNs::run`]. Only chain 0 is dumped (the one clsact
//! users and aya attach to).

use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcMessage, TcOption};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_packet_utils::nla::{DefaultNla, Nla, NlasIterator};

use crate::NetError;
use crate::netlink::{self, Op};

/// `TC_H_CLSACT` major/minor: the clsact qdisc's parent handle.
const CLSACT_PARENT: u32 = 0xFFFF_FFF1;
/// The handle the kernel gives the clsact qdisc (`ffff:`).
const CLSACT_HANDLE: u32 = 0xFFFF_0000;
const TCA_BPF_FD: u16 = 6;
const TCA_BPF_NAME: u16 = 7;
const TCA_BPF_FLAGS: u16 = 8;
const TCA_BPF_ID: u16 = 11;
const TCA_BPF_FLAG_ACT_DIRECT: u32 = 1;
/// `ETH_P_ALL`: the protocol aya and `tc ... protocol all` use.
pub const ETH_P_ALL: u16 = 0x0003;

/// Which clsact hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Packets arriving at the device (`sch_handle_ingress`).
    Ingress,
    /// Packets leaving the device (`sch_handle_egress`).
    Egress,
}

impl Direction {
    /// The filter parent for this hook: `TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_{INGRESS,EGRESS})`.
    pub fn parent(self) -> u32 {
        match self {
            Direction::Ingress => 0xFFFF_FFF2,
            Direction::Egress => 0xFFFF_FFF3,
        }
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// One legacy (netlink) filter on a clsact hook, as the kernel dumps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetlinkFilter {
    /// The hook it is attached to.
    pub direction: Direction,
    /// Priority ("pref"): lower runs first.
    pub priority: u16,
    /// Filter handle within its priority.
    pub handle: u32,
    /// Ethertype matched, host order (`ETH_P_ALL` = 3 for "all").
    pub protocol: u16,
    /// Classifier kind ("bpf", "u32", "matchall", ...).
    pub kind: String,
    /// For "bpf": the name given at attach time (`TCA_BPF_NAME`).
    pub bpf_name: Option<String>,
    /// For "bpf": the kernel program id (`TCA_BPF_ID`).
    pub bpf_id: Option<u32>,
    /// For "bpf": direct-action mode (`TCA_BPF_FLAG_ACT_DIRECT`).
    pub direct_action: bool,
}

/// A qdisc on a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qdisc {
    /// Device it is on.
    pub ifindex: u32,
    /// Kind ("clsact", "noqueue", "fq_codel", ...).
    pub kind: String,
    /// Its handle (`ffff0000` for clsact).
    pub handle: u32,
    /// Its parent (`ffffffff` root, `fffffff1` for clsact/ingress).
    pub parent: u32,
}

fn tc_message(ifindex: u32, parent: u32, handle: u32, info: u32) -> Result<TcMessage, NetError> {
    let index = i32::try_from(ifindex).map_err(|_| NetError::Invalid {
        op: "build tc request",
        object: format!("ifindex {ifindex}"),
        reason: "above i32::MAX".to_owned(),
    })?;
    let mut msg = TcMessage::with_index(index);
    msg.header.family = AddressFamily::Unspec;
    msg.header.parent = TcHandle::from(parent);
    msg.header.handle = TcHandle::from(handle);
    msg.header.info = info;
    Ok(msg)
}

/// `tcm_info` of a filter: priority in the upper half, protocol (network
/// order) in the lower half.
fn filter_info(priority: u16, protocol: u16) -> u32 {
    (u32::from(priority) << 16) | u32::from(protocol.to_be())
}

/// RTM_GETTFILTER dump on the clsact qdisc's ingress/egress parent of
/// `ifindex` (must be called inside the ns). Returned in the order the kernel
/// dumps them, which is the order they run: lower priority first; within one
/// priority in the classifier's own list order, which for "bpf" is newest
/// first (`cls_bpf` prepends; `tests/packet.rs` checks the run order matches).
/// A device without clsact has no filters.
///
/// # Errors
/// [`NetError::Netlink`] (e.g. `ENODEV`), [`NetError::Decode`].
pub fn list_filters(ifindex: u32, dir: Direction) -> Result<Vec<NetlinkFilter>, NetError> {
    if !has_clsact(ifindex)? {
        return Ok(Vec::new());
    }
    let object = format!("{dir} filters of ifindex {ifindex}");
    let msg = tc_message(ifindex, dir.parent(), 0, 0)?;
    let answers = netlink::dump(RouteNetlinkMessage::GetTrafficFilter(msg), &Op { what: "list", object: &object })?;
    Ok(answers
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewTrafficFilter(f) => filter_from(f, dir),
            _ => None,
        })
        .collect())
}

fn filter_from(msg: TcMessage, direction: Direction) -> Option<NetlinkFilter> {
    let handle = u32::from(msg.header.handle);
    // Each priority's classifier is dumped first as a head entry with handle 0
    // and no options; the filters follow.
    if handle == 0 {
        return None;
    }
    let mut filter = NetlinkFilter {
        direction,
        priority: (msg.header.info >> 16) as u16,
        handle,
        protocol: u16::from_be((msg.header.info & 0xFFFF) as u16),
        kind: String::new(),
        bpf_name: None,
        bpf_id: None,
        direct_action: false,
    };
    for attr in msg.attributes {
        match attr {
            TcAttribute::Kind(k) => filter.kind = k,
            TcAttribute::Options(opts) => opts.iter().for_each(|o| read_bpf_options(o, &mut filter)),
            _ => {}
        }
    }
    Some(filter)
}

/// For kinds netlink-packet-route does not know ("bpf"), TCA_OPTIONS comes
/// back as one opaque attribute whose value holds the nested TCA_BPF_* ones.
fn read_bpf_options(opt: &TcOption, filter: &mut NetlinkFilter) {
    let TcOption::Other(nla) = opt else { return };
    let mut nested = vec![0u8; nla.value_len()];
    nla.emit_value(&mut nested);
    for attr in NlasIterator::new(&nested[..]).flatten() {
        let value = attr.value();
        let as_u32 = || value.get(..4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
        match attr.kind() & 0x3FFF {
            TCA_BPF_NAME => {
                let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
                filter.bpf_name = Some(String::from_utf8_lossy(&value[..end]).into_owned());
            }
            TCA_BPF_ID => filter.bpf_id = as_u32(),
            TCA_BPF_FLAGS => filter.direct_action = as_u32().is_some_and(|f| f & TCA_BPF_FLAG_ACT_DIRECT != 0),
            _ => {}
        }
    }
}

/// Every qdisc on `ifindex` (must be called inside the ns).
///
/// # Errors
/// [`NetError::Netlink`], [`NetError::Decode`].
pub fn list_qdiscs(ifindex: u32) -> Result<Vec<Qdisc>, NetError> {
    let object = format!("qdiscs of ifindex {ifindex}");
    let msg = tc_message(ifindex, 0, 0, 0)?;
    let answers = netlink::dump(RouteNetlinkMessage::GetQueueDiscipline(msg), &Op { what: "list", object: &object })?;
    // The kernel dumps every device's qdiscs: keep this one's.
    Ok(answers
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewQueueDiscipline(q) if q.header.index as u32 == ifindex => Some(Qdisc {
                ifindex,
                kind: q.attributes.iter().find_map(|a| match a {
                    TcAttribute::Kind(k) => Some(k.clone()),
                    _ => None,
                })?,
                handle: q.header.handle.into(),
                parent: q.header.parent.into(),
            }),
            _ => None,
        })
        .collect())
}

/// Whether `ifindex` has a clsact qdisc (must be called inside the ns).
///
/// # Errors
/// As [`list_qdiscs`].
pub fn has_clsact(ifindex: u32) -> Result<bool, NetError> {
    Ok(list_qdiscs(ifindex)?.iter().any(|q| q.kind == "clsact"))
}

/// Add a clsact qdisc to `ifindex` (must be called inside the ns).
///
/// # Errors
/// [`NetError::Netlink`]: `EEXIST` when it already has one.
pub fn add_clsact(ifindex: u32) -> Result<(), NetError> {
    let object = format!("clsact qdisc on ifindex {ifindex}");
    let mut msg = tc_message(ifindex, CLSACT_PARENT, CLSACT_HANDLE, 0)?;
    msg.attributes.push(TcAttribute::Kind("clsact".to_owned()));
    netlink::execute(RouteNetlinkMessage::NewQueueDiscipline(msg), NLM_F_CREATE | NLM_F_EXCL, &Op {
        what: "add",
        object: &object,
    })
}

/// Delete the clsact qdisc of `ifindex`, and with it every netlink filter on
/// both hooks (must be called inside the ns).
///
/// # Errors
/// [`NetError::Netlink`]: `EINVAL`/`ENOENT` when there is none.
pub fn delete_clsact(ifindex: u32) -> Result<(), NetError> {
    let object = format!("clsact qdisc on ifindex {ifindex}");
    let msg = tc_message(ifindex, CLSACT_PARENT, CLSACT_HANDLE, 0)?;
    netlink::execute(RouteNetlinkMessage::DelQueueDiscipline(msg), 0, &Op { what: "delete", object: &object })
}

/// Delete the filter `priority`/`handle` on `dir` of `ifindex` (must be
/// called inside the ns). Deleting the last filter of a priority removes it.
///
/// # Errors
/// [`NetError::Netlink`]: `ENOENT` when there is no such filter.
pub fn delete_filter(ifindex: u32, dir: Direction, priority: u16, handle: u32) -> Result<(), NetError> {
    let object = format!("{dir} filter pref {priority} handle {handle:#x} on ifindex {ifindex}");
    // Protocol 0 matches whatever protocol the filter was added with.
    let msg = tc_message(ifindex, dir.parent(), handle, filter_info(priority, 0))?;
    netlink::execute(RouteNetlinkMessage::DelTrafficFilter(msg), 0, &Op { what: "delete", object: &object })
}

/// Attach the loaded `SCHED_CLS` program `prog` as a direct-action "bpf"
/// filter for all protocols on `dir` of `ifindex`, at `priority`/`handle`
/// (must be called inside the ns; the device needs a clsact qdisc). The
/// filter holds its own program reference: it outlives `prog` and goes away
/// with the device, the clsact qdisc, or [`delete_filter`]. This is what
/// `tc filter add ... bpf da` does, for places without `tc` (the VM guest).
///
/// # Errors
/// [`NetError::Netlink`]: `EEXIST` when `priority`/`handle` is taken.
pub fn attach_bpf(
    ifindex: u32,
    dir: Direction,
    priority: u16,
    handle: u32,
    prog: BorrowedFd<'_>,
    name: &str,
) -> Result<(), NetError> {
    let object = format!("{dir} bpf filter {name:?} pref {priority} handle {handle:#x} on ifindex {ifindex}");
    let mut msg = tc_message(ifindex, dir.parent(), handle, filter_info(priority, ETH_P_ALL))?;
    let mut name_z = name.as_bytes().to_vec();
    name_z.push(0);
    msg.attributes.push(TcAttribute::Kind("bpf".to_owned()));
    msg.attributes.push(TcAttribute::Options(vec![
        TcOption::Other(DefaultNla::new(TCA_BPF_FD, prog.as_raw_fd().to_ne_bytes().to_vec())),
        TcOption::Other(DefaultNla::new(TCA_BPF_NAME, name_z)),
        TcOption::Other(DefaultNla::new(TCA_BPF_FLAGS, TCA_BPF_FLAG_ACT_DIRECT.to_ne_bytes().to_vec())),
    ]));
    netlink::execute(RouteNetlinkMessage::NewTrafficFilter(msg), NLM_F_CREATE | NLM_F_EXCL, &Op {
        what: "attach",
        object: &object,
    })
}
