//! Network namespaces held only by a file descriptor.
//!
//! A namespace is created by `unshare(CLONE_NEWNET)` on a short-lived thread
//! and kept alive by an fd on its `/proc/thread-self/ns/net` file. It is never
//! bind-mounted under /run/netns, so the kernel destroys it (with its veths,
//! qdiscs and filters) as soon as the last fd closes — on drop, or when the
//! process dies however it dies.
//!
//! Network-namespace membership is per thread: [`NetNs::run`] executes a
//! closure on a fresh OS thread that has `setns()`'d into the namespace, so the
//! caller's threads never change namespace.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use nix::sched::{CloneFlags, setns, unshare};

use crate::NetError;

/// A network namespace, alive as long as this value (or an fd duplicated from
/// it, or a thread inside it) exists.
#[derive(Debug)]
pub struct NetNs {
    fd: OwnedFd,
    name: String,
}

fn io_err(e: nix::Error) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

impl NetNs {
    /// New namespace held only by its fd: created by `unshare(CLONE_NEWNET)` on
    /// a short-lived thread, then `/proc/thread-self/ns/net` opened. Never
    /// bind-mounted, so it dies with the process however it ends. Its `lo` is
    /// brought up (local sockets inside need it; it carries no traffic to the
    /// veths).
    ///
    /// # Errors
    /// [`NetError::Namespace`] when unshare or the open fails (needs
    /// CAP_SYS_ADMIN), [`NetError::Netlink`] when `lo` cannot be set up.
    pub fn new(name: &str) -> Result<NetNs, NetError> {
        let ns_err = |op, source| NetError::Namespace { op, ns: name.to_owned(), source };
        let fd = std::thread::scope(|s| {
            s.spawn(|| -> Result<OwnedFd, NetError> {
                unshare(CloneFlags::CLONE_NEWNET)
                    .map_err(|e| ns_err("unshare(CLONE_NEWNET)", io_err(e)))?;
                let file = File::open("/proc/thread-self/ns/net")
                    .map_err(|e| ns_err("open /proc/thread-self/ns/net", e))?;
                Ok(OwnedFd::from(file))
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })?;
        let ns = NetNs { fd, name: name.to_owned() };
        crate::link::set_link_up(&ns, "lo")?;
        tracing::debug!(ns = name, inode = ns.inode().ok(), "created network namespace");
        Ok(ns)
    }

    /// The namespace this process started in (for "host" side use): the one
    /// of the thread-group leader, which tclab never moves. Named "host".
    ///
    /// # Errors
    /// [`NetError::Namespace`] when /proc/self/ns/net cannot be opened (is
    /// /proc mounted?).
    pub fn current() -> Result<NetNs, NetError> {
        let file = File::open("/proc/self/ns/net").map_err(|source| NetError::Namespace {
            op: "open /proc/self/ns/net",
            ns: "host".to_owned(),
            source,
        })?;
        Ok(NetNs { fd: OwnedFd::from(file), name: "host".to_owned() })
    }

    /// Run `f` on a fresh OS thread that has `setns()`'d into this namespace;
    /// returns f's result. Panics in `f` propagate to the caller.
    ///
    /// Everything namespace-scoped (netlink sockets, `if_nametoindex`, aya
    /// attach, AF_PACKET sockets, /proc/sys/net writes) must be done inside.
    /// Sockets opened inside stay in this namespace after `f` returns.
    /// `/proc/net` is `/proc/self/net`, the *main thread's* view: read
    /// `/proc/thread-self/net/...` inside instead (/proc/sys/net is fine).
    ///
    /// # Panics
    /// When `setns` fails, which needs a process without CAP_SYS_ADMIN; use
    /// [`NetNs::try_run`] to get that as an error instead.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        match self.try_run(f) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`NetNs::run`], but a failing `setns` is returned as an error.
    ///
    /// # Errors
    /// [`NetError::Namespace`] when `setns` fails.
    pub fn try_run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetError> {
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(self.fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| NetError::Namespace {
                    op: "setns(CLONE_NEWNET)",
                    ns: self.name.clone(),
                    source: io_err(e),
                })?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Another handle on the same namespace (a `dup` of the fd), keeping it
    /// alive independently of `self`.
    ///
    /// # Errors
    /// [`NetError::Namespace`] when `dup` fails.
    pub fn try_clone(&self) -> Result<NetNs, NetError> {
        let fd = self.fd.try_clone().map_err(|source| NetError::Namespace {
            op: "dup the namespace fd",
            ns: self.name.clone(),
            source,
        })?;
        Ok(NetNs { fd, name: self.name.clone() })
    }

    /// The human name given at creation ("host" for [`NetNs::current`]).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace fd (for `IFLA_NET_NS_FD`, `setns`, or handing to aya).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The namespace's inode number on nsfs: its identity, as shown in
    /// `/proc/<pid>/ns/net` links (`net:[<inode>]`).
    ///
    /// # Errors
    /// [`NetError::Namespace`] when fstat fails.
    pub fn inode(&self) -> Result<u64, NetError> {
        let file = File::from(self.fd.try_clone().map_err(|source| NetError::Namespace {
            op: "dup the namespace fd",
            ns: self.name.clone(),
            source,
        })?);
        file.metadata().map(|m| m.ino()).map_err(|source| NetError::Namespace {
            op: "fstat the namespace fd",
            ns: self.name.clone(),
            source,
        })
    }
}
