//! The full ordered TC chain on a device, TCX and netlink together, and the
//! agent's compatibility rules that read it.
//!
//! Run order per hook: every TCX program head→tail (BPF_PROG_QUERY order),
//! then the legacy netlink filters by priority then handle (the order the
//! kernel dumps them). A TCX program returning anything but TCX_NEXT, or a
//! direct-action filter returning anything but TC_ACT_UNSPEC, ends the chain.
//!
//! Must be called on a thread inside the device's network namespace.

use std::collections::HashMap;

use aya::programs::{SchedClassifier, TcAttachType, loaded_programs};
use serde::{Deserialize, Serialize};
use tclab_net::tc::{self, Direction};

use crate::attach::Api;

/// Name prefix of Cilium's programs (`cil_from_netdev`, `cil_to_netdev`, …).
pub const CILIUM_PREFIX: &str = "cil_";

/// The Cilium setting that moves its netlink filters after ours.
pub const CILIUM_PRIORITY_FIX: &str = "cilium config set bpf-filter-priority 2";

/// Errors reading the chain.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The device does not exist.
    #[error("failed to read the TC chain of {iface}: no such device in this network namespace")]
    NoDevice {
        /// Device.
        iface: String,
    },
    /// BPF_PROG_QUERY failed for a reason other than "no TCX here".
    #[error("failed to query TCX programs on {iface} {hook}: {source}")]
    Tcx {
        /// Device.
        iface: String,
        /// Hook.
        hook: Direction,
        /// aya's error (boxed: it is large).
        source: Box<aya::programs::ProgramError>,
    },
    /// The netlink dump failed.
    #[error("failed to list netlink filters on {iface} {hook}: {source}")]
    Netlink {
        /// Device.
        iface: String,
        /// Hook.
        hook: Direction,
        /// The error (boxed: it is large).
        source: Box<tclab_net::NetError>,
    },
}

/// Why the agent refuses to start next to what is on the device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    /// netlink backend with Cilium on TCX: TCX programs run before every
    /// netlink filter, and Cilium's usually end the chain (TC_ACT_OK /
    /// redirect), so our filter would never see the traffic.
    #[error(
        "refusing to attach with netlink on {iface}: Cilium programs are attached there with TCX ({programs}), and TCX \
         programs run before every netlink filter; Cilium ends the chain for the traffic it handles, so our filter \
         would see nothing. Use --backend tcx (or auto) on this kernel"
    )]
    CiliumOnTcx {
        /// Device.
        iface: String,
        /// Cilium programs found.
        programs: String,
    },
    /// netlink backend with every Cilium filter at priority 1.
    #[error(
        "refusing to attach with netlink on {iface}: Cilium's filters ({programs}) are at priority 1, where they run \
         first and end the chain; run `{CILIUM_PRIORITY_FIX}` so Cilium moves to priority 2 and ours runs first"
    )]
    CiliumAtPriorityOne {
        /// Device.
        iface: String,
        /// Cilium filters found.
        programs: String,
    },
}

/// Why the agent's start-up check of a device stopped it: the chain could
/// not be read, or a rule refuses the start.
#[derive(Debug, thiserror::Error)]
pub enum StartCheckError {
    /// Reading the chain failed.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// A compatibility rule refuses the start.
    #[error(transparent)]
    Rule(#[from] RuleError),
}

/// One program in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainEntry {
    /// Run position on its hook, from 0.
    pub position: usize,
    /// Hook.
    pub hook: String,
    /// API it is attached with.
    pub api: Api,
    /// Program name (kernel's, or the netlink filter's name when unknown).
    pub name: String,
    /// Kernel program id.
    pub prog_id: Option<u32>,
    /// Netlink priority.
    pub priority: Option<u16>,
    /// Netlink handle.
    pub handle: Option<u32>,
    /// Netlink filter name given at attach time (`TCA_BPF_NAME`), which can
    /// differ from the program's name.
    pub filter_name: Option<String>,
    /// One of the ids passed as ours.
    pub ours: bool,
    /// Runs before our first program on this hook.
    pub runs_before_us: bool,
}

/// The chain of one device, both hooks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    /// Device.
    pub iface: String,
    /// Ingress, in run order.
    pub ingress: Vec<ChainEntry>,
    /// Egress, in run order.
    pub egress: Vec<ChainEntry>,
}

fn tcx_programs(iface: &str, hook: Direction) -> Result<Vec<(u32, String)>, ChainError> {
    let ty = match hook {
        Direction::Ingress => TcAttachType::Ingress,
        Direction::Egress => TcAttachType::Egress,
    };
    match SchedClassifier::query_tcx(iface, ty) {
        Ok((_rev, progs)) => {
            Ok(progs.iter().map(|p| (p.id(), p.name_as_str().unwrap_or("?").to_owned())).collect())
        }
        // A kernel without TCX refuses the query attach type: nothing is
        // attached that way.
        Err(aya::programs::ProgramError::SyscallError(aya::sys::SyscallError { ref io_error, .. }))
            if io_error.raw_os_error() == Some(libc::EINVAL) =>
        {
            Ok(Vec::new())
        }
        Err(source) => Err(ChainError::Tcx { iface: iface.to_owned(), hook, source: Box::new(source) }),
    }
}

/// Ids of every loaded program named `tclab_ingress`/`tclab_egress` (any
/// agent's): what `tclab-agent chain` marks as ours from another process.
pub fn agent_program_ids() -> Vec<u32> {
    let ours = [crate::loader::PROG_INGRESS, crate::loader::PROG_EGRESS];
    loaded_programs()
        .flatten()
        .filter(|p| p.name_as_str().is_some_and(|n| ours.contains(&n)))
        .map(|p| p.id())
        .collect()
}

fn program_names() -> HashMap<u32, String> {
    loaded_programs()
        .flatten()
        .map(|p| (p.id(), p.name_as_str().unwrap_or("?").to_owned()))
        .collect()
}

fn hook_chain(iface: &str, ifindex: u32, hook: Direction, ours: &[u32]) -> Result<Vec<ChainEntry>, ChainError> {
    let mut out = Vec::new();
    let mut push = |api, name: String, prog_id: Option<u32>, priority, handle, filter_name| {
        let is_ours = prog_id.is_some_and(|id| ours.contains(&id));
        out.push(ChainEntry {
            position: out.len(),
            hook: hook.to_string(),
            api,
            name,
            prog_id,
            priority,
            handle,
            filter_name,
            ours: is_ours,
            runs_before_us: false,
        });
    };
    for (id, name) in tcx_programs(iface, hook)? {
        push(Api::Tcx, name, Some(id), None, None, None);
    }
    let filters = tc::list_filters(ifindex, hook)
        .map_err(|source| ChainError::Netlink { iface: iface.to_owned(), hook, source: Box::new(source) })?;
    let names = if filters.is_empty() { HashMap::new() } else { program_names() };
    for f in filters {
        let name = f
            .bpf_id
            .and_then(|id| names.get(&id).cloned())
            .or(f.bpf_name.clone())
            .unwrap_or_else(|| f.kind.clone());
        push(Api::Netlink, name, f.bpf_id, Some(f.priority), Some(f.handle), f.bpf_name.clone());
    }
    if let Some(first_ours) = out.iter().position(|e| e.ours) {
        for e in &mut out[..first_ours] {
            e.runs_before_us = true;
        }
    }
    Ok(out)
}

/// Read the chain of `iface` (in the calling thread's namespace); `ours`
/// are the program ids to mark as ours.
///
/// # Errors
/// [`ChainError`].
pub fn read_chain(iface: &str, ours: &[u32]) -> Result<Chain, ChainError> {
    let c = std::ffi::CString::new(iface).map_err(|_| ChainError::NoDevice { iface: iface.to_owned() })?;
    // SAFETY: valid C string.
    let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if ifindex == 0 {
        return Err(ChainError::NoDevice { iface: iface.to_owned() });
    }
    Ok(Chain {
        iface: iface.to_owned(),
        ingress: hook_chain(iface, ifindex, Direction::Ingress, ours)?,
        egress: hook_chain(iface, ifindex, Direction::Egress, ours)?,
    })
}

impl Chain {
    /// Entries of both hooks.
    pub fn entries(&self) -> impl Iterator<Item = &ChainEntry> {
        self.ingress.iter().chain(self.egress.iter())
    }

    /// The human table of `tclab-agent chain`.
    pub fn to_table(&self) -> String {
        let mut s = format!("{:<8} {:>3}  {:<8} {:<20} {:>7} {:>8} {:>8}  {}\n", "hook", "pos", "api", "name", "prog_id", "priority", "handle", "note");
        for e in self.entries() {
            let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
            let note = if e.ours { "ours" } else if e.runs_before_us { "runs before ours" } else { "" };
            s.push_str(&format!(
                "{:<8} {:>3}  {:<8} {:<20} {:>7} {:>8} {:>8}  {}\n",
                e.hook,
                e.position,
                e.api.to_string(),
                e.name,
                opt(e.prog_id.map(|v| v.to_string())),
                opt(e.priority.map(|v| v.to_string())),
                opt(e.handle.map(|v| format!("{v:#x}"))),
                note
            ));
        }
        s
    }
}

fn is_cilium(e: &ChainEntry) -> bool {
    e.name.starts_with(CILIUM_PREFIX) || e.filter_name.as_deref().is_some_and(|n| n.starts_with(CILIUM_PREFIX))
}

/// The agent's rules before attaching with `api` (issue 5). Returns warnings
/// to print when the agent may start, or the reason it must not.
///
/// # Errors
/// [`RuleError`] when attaching would make our programs blind.
pub fn check_rules(chain: &Chain, api: Api) -> Result<Vec<String>, RuleError> {
    let mut warnings = Vec::new();
    if api == Api::Tcx {
        return Ok(warnings); // At the head: fine next to Cilium in any mode.
    }
    let list = |v: &[&ChainEntry]| v.iter().map(|e| format!("{} {} ({})", e.hook, e.name, id_text(e))).collect::<Vec<_>>().join(", ");
    let cil_tcx: Vec<_> = chain.entries().filter(|e| e.api == Api::Tcx && is_cilium(e)).collect();
    if !cil_tcx.is_empty() {
        return Err(RuleError::CiliumOnTcx { iface: chain.iface.clone(), programs: list(&cil_tcx) });
    }
    let cil_nl: Vec<_> = chain.entries().filter(|e| e.api == Api::Netlink && is_cilium(e) && !e.ours).collect();
    let at_one: Vec<_> = cil_nl.iter().copied().filter(|e| e.priority == Some(1)).collect();
    if !cil_nl.is_empty() && at_one.len() == cil_nl.len() {
        return Err(RuleError::CiliumAtPriorityOne { iface: chain.iface.clone(), programs: list(&at_one) });
    }
    if !at_one.is_empty() {
        warnings.push(format!(
            "{}: Cilium filters at priority 1 next to Cilium filters at a higher priority look like left-overs of an \
             earlier Cilium (before `{CILIUM_PRIORITY_FIX}`): {}; they run before Cilium's current filters and before ours \
             unless ours shares priority 1 (the newest filter of a priority runs first), and can hide traffic from both",
            chain.iface,
            list(&at_one)
        ));
    }
    Ok(warnings)
}

/// `id N` (`id ?` when the kernel did not say): every warning and refusal
/// names programs this way, so callers can map ids to their own names.
fn id_text(e: &ChainEntry) -> String {
    format!("id {}", e.prog_id.map(|i| i.to_string()).unwrap_or_else(|| "?".into()))
}

/// Step one of the agent's rules on `iface`, before it attaches with `api`
/// (what [`crate::agent::Agent::start`] runs for every device before attaching
/// anything, and what the lab runs when a scenario's agent starts): read the
/// chain as it is and apply [`check_rules`].
///
/// # Errors
/// [`StartCheckError::Rule`] when the agent must not start,
/// [`StartCheckError::Chain`] when the chain cannot be read.
pub fn rules_before_attach(iface: &str, api: Api) -> Result<Vec<String>, StartCheckError> {
    Ok(check_rules(&read_chain(iface, &[])?, api)?)
}

/// Step two, once the agent's programs `ours` are attached on `iface`:
/// warnings for every foreign program that runs before ours, each with its
/// verdict on a probe packet when `dry_run` ([`warn_before_us_dry_run`]).
///
/// # Errors
/// [`ChainError`] when the chain cannot be read.
pub fn rules_after_attach(iface: &str, ours: &[u32], dry_run: bool) -> Result<Vec<String>, ChainError> {
    let c = read_chain(iface, ours)?;
    Ok(if dry_run { warn_before_us_dry_run(&c) } else { warn_before_us(&c) })
}

/// Warnings for foreign programs that run before ours (after attaching):
/// any of them can end the chain (TCX: any verdict but TCX_NEXT; netlink
/// direct-action: any verdict but TC_ACT_UNSPEC) or drop.
pub fn warn_before_us(chain: &Chain) -> Vec<String> {
    chain
        .entries()
        .filter(|e| e.runs_before_us && !e.ours)
        .map(|e| {
            format!(
                "{} {}: {} program {:?} ({}) runs before ours and can end the chain or drop packets before we see them",
                chain.iface,
                e.hook,
                e.api,
                e.name,
                id_text(e)
            )
        })
        .collect()
}

// --- Dry run: what a program before ours does to a probe packet. ---

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i64> {
    // SAFETY: attr is a valid, initialised bpf_attr prefix for `cmd` that
    // outlives the call; the kernel zero-extends the rest.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>() as u32) };
    if ret < 0 { Err(std::io::Error::last_os_error()) } else { Ok(ret) }
}

fn checksum(data: &[u8], mut sum: u32) -> u16 {
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A TCP SYN 192.0.2.1:40000 -> 198.51.100.1:80 (documentation addresses)
/// in Ethernet, with valid checksums: what a new HTTP connection starts with.
pub fn probe_frame() -> Vec<u8> {
    let (src, dst) = ([192u8, 0, 2, 1], [198u8, 51, 100, 1]);
    let mut ip = vec![0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = checksum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut tcp = vec![0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0];
    let mut pseudo = Vec::from(src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    let sum = pseudo.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
    let c = checksum(&tcp, sum);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    let mut frame = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00];
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&tcp);
    frame
}

/// Run program `prog_id` once on [`probe_frame`] (BPF_PROG_TEST_RUN) and
/// return its verdict. Note: the program really runs, so maps it updates
/// (a CT entry for the probe flow, counters) see one more packet.
///
/// # Errors
/// The OS error of BPF_PROG_GET_FD_BY_ID or BPF_PROG_TEST_RUN.
pub fn dry_run(prog_id: u32) -> std::io::Result<i32> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mut get = [prog_id, 0, 0];
    let fd = sys_bpf(BPF_PROG_GET_FD_BY_ID, &mut get)?;
    // SAFETY: a successful GET_FD_BY_ID returns a new fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let frame = probe_frame();
    let mut attr = TestRunAttr {
        prog_fd: fd.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat: 1,
        ..TestRunAttr::default()
    };
    sys_bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(attr.retval as i32)
}

/// Name of a TC verdict.
pub fn verdict_name(v: i32) -> String {
    match v {
        -1 => "TC_ACT_UNSPEC/TCX_NEXT (continues)".into(),
        0 => "TC_ACT_OK/TCX_PASS (ends the chain)".into(),
        1 => "TC_ACT_RECLASSIFY".into(),
        2 => "TC_ACT_SHOT/TCX_DROP (drops)".into(),
        3 => "TC_ACT_PIPE".into(),
        4 => "TC_ACT_STOLEN (ends the chain)".into(),
        7 => "TC_ACT_REDIRECT/TCX_REDIRECT (ends the chain)".into(),
        other => format!("verdict {other}"),
    }
}

/// Another tclab agent's classifier (by name): it returns TC_ACT_UNSPEC by
/// design, and a dry run would put the probe flow into its CT table.
fn is_tclab_agent(e: &ChainEntry) -> bool {
    [crate::loader::PROG_INGRESS, crate::loader::PROG_EGRESS].contains(&e.name.as_str())
}

/// [`warn_before_us`], with each foreign program's verdict on a probe TCP
/// SYN from a dry run ([`dry_run`]) when it can be run. Another tclab
/// agent's classifiers are not run (see [`is_tclab_agent`]).
pub fn warn_before_us_dry_run(chain: &Chain) -> Vec<String> {
    chain
        .entries()
        .filter(|e| e.runs_before_us && !e.ours)
        .zip(warn_before_us(chain))
        .map(|(e, w)| match e.prog_id {
            _ if is_tclab_agent(e) => {
                format!("{w}; not dry-run: another tclab agent's classifier, which returns TC_ACT_UNSPEC (continues)")
            }
            Some(id) => match dry_run(id) {
                Ok(v) => format!("{w}; dry run on a probe TCP SYN: {}", verdict_name(v)),
                Err(err) => format!("{w}; dry run failed: {err}"),
            },
            None => w,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(api: Api, name: &str, prio: Option<u16>, ours: bool) -> ChainEntry {
        ChainEntry {
            position: 0,
            hook: "ingress".into(),
            api,
            name: name.into(),
            prog_id: Some(7),
            priority: prio,
            handle: prio.map(|_| 1),
            filter_name: None,
            ours,
            runs_before_us: false,
        }
    }

    fn chain(entries: Vec<ChainEntry>) -> Chain {
        Chain { iface: "eth0".into(), ingress: entries, egress: vec![] }
    }

    #[test]
    fn probe_frame_checksums() {
        let f = probe_frame();
        assert_eq!(f.len(), 14 + 20 + 20);
        assert_eq!(checksum(&f[14..34], 0), 0, "IPv4 header sums to 0xffff");
        let mut pseudo = f[26..34].to_vec();
        pseudo.extend_from_slice(&[0, 6, 0, 20]);
        let sum = pseudo.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
        assert_eq!(checksum(&f[34..], sum), 0, "TCP checksum valid");
    }

    #[test]
    fn rules() {
        let c = chain(vec![entry(Api::Tcx, "cil_from_netdev", None, false)]);
        assert!(matches!(check_rules(&c, Api::Netlink), Err(RuleError::CiliumOnTcx { .. })));
        assert_eq!(check_rules(&c, Api::Tcx), Ok(vec![]));

        let c = chain(vec![entry(Api::Netlink, "cil_from_netdev", Some(1), false)]);
        let e = check_rules(&c, Api::Netlink).unwrap_err();
        assert!(e.to_string().contains(CILIUM_PRIORITY_FIX), "{e}");

        let c = chain(vec![
            entry(Api::Netlink, "cil_from_netdev", Some(1), false),
            entry(Api::Netlink, "cil_from_netdev", Some(2), false),
        ]);
        let w = check_rules(&c, Api::Netlink).unwrap();
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("left-overs"));

        let c = chain(vec![entry(Api::Netlink, "cil_to_netdev", Some(2), false), entry(Api::Netlink, "other", Some(1), false)]);
        assert_eq!(check_rules(&c, Api::Netlink), Ok(vec![]));
    }

    #[test]
    fn refusals_and_warnings_name_programs_by_id() {
        let c = chain(vec![entry(Api::Tcx, "cil_from_netdev", None, false)]);
        let e = check_rules(&c, Api::Netlink).unwrap_err().to_string();
        assert!(e.contains("(ingress cil_from_netdev (id 7))"), "{e}");
        let mut before = entry(Api::Tcx, "acme_tc_filter", None, false);
        before.runs_before_us = true;
        before.prog_id = None;
        let w = warn_before_us(&chain(vec![before]));
        assert_eq!(w, vec!["eth0 ingress: tcx program \"acme_tc_filter\" (id ?) runs before ours and can end the chain or drop packets before we see them"]);
    }

    #[test]
    fn another_agents_classifier_is_not_dry_run() {
        // An id no program has: a dry run would fail and say so.
        let mut other = entry(Api::Tcx, crate::loader::PROG_INGRESS, None, false);
        other.runs_before_us = true;
        other.prog_id = Some(u32::MAX);
        let w = warn_before_us_dry_run(&chain(vec![other]));
        assert_eq!(w.len(), 1);
        assert!(w[0].ends_with("; not dry-run: another tclab agent's classifier, which returns TC_ACT_UNSPEC (continues)"), "{}", w[0]);
    }
}
