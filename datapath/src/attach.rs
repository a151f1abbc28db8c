//! Attaching our classifiers to a device, TCX or netlink, with guards that
//! detach exactly what we attached on drop — never anyone else's program.
//!
//! * TCX: at the head of the device's chain (`LinkOrder::first()`); the link
//!   is fd-owned, so dropping it detaches, whatever thread drops it.
//! * netlink: a direct-action "bpf" filter on the clsact hook at an explicit
//!   priority (default [`DEFAULT_PRIORITY`]) and the fixed handle
//!   [`NETLINK_HANDLE`], created with `NLM_F_EXCL`: an existing filter at the
//!   same priority+handle is an error ([`AttachError::Conflict`]), never
//!   replaced. Drop deletes that priority+handle only, inside the network
//!   namespace it was attached in (remembered by fd), even when dropped on a
//!   thread in another namespace. A clsact qdisc we added is removed when our
//!   last filter goes and no one else's filter is on it.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};

use aya::programs::links::LinkOrder;
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{ProgramError, SchedClassifier, TcAttachType};
use serde::{Deserialize, Serialize};
use tclab_net::NetError;
use tclab_net::tc::{self, Direction};

/// Default netlink priority: first among netlink filters, as Beyla does.
pub const DEFAULT_PRIORITY: u16 = 1;

/// Our fixed netlink filter handle (`tc filter show` prints `handle 0x7c1a`):
/// an arbitrary constant, fixed so a left-over filter from a crashed agent is
/// recognisable and removable by priority+handle, and far from the handles
/// the kernel assigns when none is given (1, 2, …).
pub const NETLINK_HANDLE: u32 = 0x7c1a;

/// Which attach API the agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// TCX when the kernel has it, netlink otherwise.
    #[default]
    Auto,
    /// TCX links (6.6+).
    Tcx,
    /// Legacy clsact filters via netlink.
    Netlink,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Backend::Auto),
            "tcx" => Ok(Backend::Tcx),
            "netlink" => Ok(Backend::Netlink),
            other => Err(format!("unknown backend {other:?} (expected auto, tcx or netlink)")),
        }
    }
}

/// The API an attachment was made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// A TCX link.
    Tcx,
    /// A netlink clsact filter.
    Netlink,
}

impl std::fmt::Display for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Api::Tcx => "tcx",
            Api::Netlink => "netlink",
        })
    }
}

impl Backend {
    /// The API this backend uses on a kernel with (`true`) or without TCX.
    pub fn resolve(self, kernel_has_tcx: bool) -> Api {
        match self {
            Backend::Tcx => Api::Tcx,
            Backend::Netlink => Api::Netlink,
            Backend::Auto if kernel_has_tcx => Api::Tcx,
            Backend::Auto => Api::Netlink,
        }
    }
}

/// Attach/detach failures, naming the device, hook and slot.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// Someone already has a netlink filter at our priority+handle.
    #[error(
        "failed to attach to {iface} {hook}: a netlink filter already exists at priority {priority} handle {handle:#x} \
         (another tclab-agent, or a left-over one); refusing to replace it — pick another --priority or remove that filter"
    )]
    Conflict {
        /// Device.
        iface: String,
        /// Hook.
        hook: Direction,
        /// Priority.
        priority: u16,
        /// Handle.
        handle: u32,
    },
    /// A TCX attach failed.
    #[error("failed to attach {prog} to {iface} {hook} with TCX: {source}")]
    Tcx {
        /// Program name.
        prog: String,
        /// Device.
        iface: String,
        /// Hook.
        hook: Direction,
        /// aya's error (boxed: it is large).
        source: Box<ProgramError>,
    },
    /// A netlink request failed.
    #[error("failed to {op} on {iface} {hook}: {source}")]
    Netlink {
        /// What was being done.
        op: &'static str,
        /// Device.
        iface: String,
        /// Hook.
        hook: Direction,
        /// The netlink error (boxed: it is large).
        source: Box<NetError>,
    },
    /// Program or namespace bookkeeping failed.
    #[error("failed to {op} for {iface}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Device.
        iface: String,
        /// OS error.
        source: std::io::Error,
    },
}

/// The network namespace of the calling thread, held by fd, so detaching can
/// happen in it from any thread.
#[derive(Debug)]
struct NsHandle {
    fd: OwnedFd,
    inode: u64,
}

impl NsHandle {
    fn current() -> std::io::Result<NsHandle> {
        let f = File::open("/proc/thread-self/ns/net")?;
        let inode = f.metadata()?.ino();
        Ok(NsHandle { fd: OwnedFd::from(f), inode })
    }

    /// Run `f` in this namespace: directly if the calling thread is in it,
    /// else on a short-lived thread that `setns()`es (threads change
    /// namespace, the caller's never does).
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
        let here = std::fs::metadata("/proc/thread-self/ns/net").map(|m| m.ino()).ok();
        if here == Some(self.inode) {
            return Ok(f());
        }
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(self.fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

/// A clsact qdisc we created on a device: removed when the last of our
/// attachments on it goes, if no foreign filter was added meanwhile.
#[derive(Debug)]
pub struct ClsactGuard {
    iface: String,
    ifindex: u32,
    ns: Arc<NsHandle>,
}

impl Drop for ClsactGuard {
    fn drop(&mut self) {
        let ifindex = self.ifindex;
        let res = self.ns.run(move || -> Result<bool, NetError> {
            let empty = tc::list_filters(ifindex, Direction::Ingress)?.is_empty()
                && tc::list_filters(ifindex, Direction::Egress)?.is_empty();
            // Someone else's filters live on it now: leave it.
            if empty {
                tc::delete_clsact(ifindex)?;
            }
            Ok(empty)
        });
        match res {
            Ok(Ok(true)) => tracing::debug!(iface = %self.iface, "removed the clsact qdisc we added"),
            Ok(Ok(false)) => tracing::info!(iface = %self.iface, "left the clsact qdisc we added: other filters use it"),
            Ok(Err(e)) => tracing::warn!(iface = %self.iface, error = %e, "failed to remove the clsact qdisc we added"),
            Err(e) => tracing::warn!(iface = %self.iface, error = %e, "failed to enter the namespace to remove clsact"),
        }
    }
}

#[derive(Debug)]
enum Inner {
    Tcx(Option<SchedClassifierLink>),
    // `_clsact` is held only for its Drop: the last of our attachments on a
    // device removes the qdisc we added.
    Netlink { ns: Arc<NsHandle>, _clsact: Option<Arc<ClsactGuard>>, attached: bool },
}

/// One program attached on one hook of one device. Detaches on drop.
#[derive(Debug)]
pub struct Attachment {
    /// Device name.
    pub iface: String,
    /// Device index (in the attaching thread's namespace).
    pub ifindex: u32,
    /// Hook.
    pub hook: Direction,
    /// API used.
    pub api: Api,
    /// Netlink priority (netlink only).
    pub priority: Option<u16>,
    /// Netlink handle (netlink only).
    pub handle: Option<u32>,
    /// Kernel program id.
    pub prog_id: u32,
    inner: Inner,
}

/// Per-device state shared by the attachments of one agent (the clsact we
/// may have created). Create one per device and pass it to each [`attach`].
#[derive(Debug, Default)]
pub struct DeviceState {
    clsact: Mutex<Option<Arc<ClsactGuard>>>,
}

fn ifindex_of(iface: &str) -> Result<u32, AttachError> {
    let c = std::ffi::CString::new(iface).map_err(|_| AttachError::Io {
        op: "look up the device (name contains NUL)",
        iface: iface.to_owned(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    // SAFETY: valid C string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(AttachError::Io {
            op: "look up the device",
            iface: iface.to_owned(),
            source: std::io::Error::last_os_error(),
        }),
        i => Ok(i),
    }
}

/// Attach the loaded `prog` (named `name`) on `hook` of `iface` in the calling
/// thread's network namespace.
///
/// # Errors
/// [`AttachError::Conflict`] when our netlink slot is taken; other variants
/// for device lookup, TCX and netlink failures.
pub fn attach(
    prog: &mut SchedClassifier,
    name: &str,
    iface: &str,
    hook: Direction,
    api: Api,
    priority: u16,
    device: &DeviceState,
) -> Result<Attachment, AttachError> {
    let ifindex = ifindex_of(iface)?;
    let io = |op, source| AttachError::Io { op, iface: iface.to_owned(), source };
    let prog_id = prog
        .info()
        .map_err(|e| io("read the program's info", std::io::Error::other(e.to_string())))?
        .id();
    let inner = match api {
        Api::Tcx => attach_tcx(prog, name, iface, hook)?,
        Api::Netlink => {
            let ns = Arc::new(NsHandle::current().map_err(|e| io("open /proc/thread-self/ns/net", e))?);
            let clsact = ensure_clsact(iface, ifindex, hook, &ns, device)?;
            let fd = prog.fd().map_err(|e| io("get the program fd", std::io::Error::other(e.to_string())))?;
            tc::attach_bpf(ifindex, hook, priority, NETLINK_HANDLE, fd.as_fd(), name).map_err(|source| {
                if let NetError::Netlink { source: ref e, .. } = source
                    && e.raw_os_error() == Some(libc::EEXIST)
                {
                    return AttachError::Conflict { iface: iface.to_owned(), hook, priority, handle: NETLINK_HANDLE };
                }
                AttachError::Netlink { op: "attach the netlink filter", iface: iface.to_owned(), hook, source: Box::new(source) }
            })?;
            Inner::Netlink { ns, _clsact: clsact, attached: true }
        }
    };
    let (priority, handle) = match api {
        Api::Tcx => (None, None),
        Api::Netlink => (Some(priority), Some(NETLINK_HANDLE)),
    };
    tracing::info!(iface, %hook, %api, ?priority, prog_id, "attached {name}");
    Ok(Attachment { iface: iface.to_owned(), ifindex, hook, api, priority, handle, prog_id, inner })
}

fn attach_tcx(prog: &mut SchedClassifier, name: &str, iface: &str, hook: Direction) -> Result<Inner, AttachError> {
    let err = |source| AttachError::Tcx { prog: name.to_owned(), iface: iface.to_owned(), hook, source: Box::new(source) };
    let ty = match hook {
        Direction::Ingress => TcAttachType::Ingress,
        Direction::Egress => TcAttachType::Egress,
    };
    let id = prog.attach_with_options(iface, ty, TcAttachOptions::TcxOrder(LinkOrder::first())).map_err(err)?;
    // Own the link: dropping it closes the fd, which detaches.
    let link = prog.take_link(id).map_err(err)?;
    Ok(Inner::Tcx(Some(link)))
}

fn ensure_clsact(
    iface: &str,
    ifindex: u32,
    hook: Direction,
    ns: &Arc<NsHandle>,
    device: &DeviceState,
) -> Result<Option<Arc<ClsactGuard>>, AttachError> {
    let mut slot = device.clsact.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(g) = slot.as_ref() {
        return Ok(Some(g.clone()));
    }
    let nl = |op, source| AttachError::Netlink { op, iface: iface.to_owned(), hook, source: Box::new(source) };
    if tc::has_clsact(ifindex).map_err(|e| nl("list qdiscs", e))? {
        return Ok(None);
    }
    tc::add_clsact(ifindex).map_err(|e| nl("add the clsact qdisc", e))?;
    let g = Arc::new(ClsactGuard { iface: iface.to_owned(), ifindex, ns: ns.clone() });
    *slot = Some(g.clone());
    Ok(Some(g))
}

impl Attachment {
    /// Detach now, reporting failure (drop does the same, logging instead).
    ///
    /// # Errors
    /// [`AttachError`] when the kernel refuses the deletion.
    pub fn detach(mut self) -> Result<(), AttachError> {
        self.detach_inner()
    }

    fn detach_inner(&mut self) -> Result<(), AttachError> {
        match &mut self.inner {
            Inner::Tcx(link) => {
                if let Some(l) = link.take() {
                    use aya::programs::Link as _;
                    l.detach().map_err(|source| AttachError::Tcx {
                        prog: format!("program id {}", self.prog_id),
                        iface: self.iface.clone(),
                        hook: self.hook,
                        source: Box::new(source),
                    })?;
                }
                Ok(())
            }
            Inner::Netlink { ns, attached, .. } if *attached => {
                *attached = false;
                let (ifindex, hook, prio) = (self.ifindex, self.hook, self.priority.unwrap_or(DEFAULT_PRIORITY));
                let res = ns
                    .run(move || tc::delete_filter(ifindex, hook, prio, NETLINK_HANDLE))
                    .map_err(|source| AttachError::Io { op: "enter the attach namespace", iface: self.iface.clone(), source })?;
                res.map_err(|source| AttachError::Netlink {
                    op: "delete our netlink filter",
                    iface: self.iface.clone(),
                    hook: self.hook,
                    source: Box::new(source),
                })
            }
            Inner::Netlink { .. } => Ok(()),
        }
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if let Err(e) = self.detach_inner() {
            tracing::warn!(error = %e, "failed to detach on drop");
        } else {
            tracing::debug!(iface = %self.iface, hook = %self.hook, api = %self.api, "detached");
        }
    }
}
