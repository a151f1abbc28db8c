//! The three-service chain: a client namespace and one namespace per
//! service, joined by veth pairs in a line, each service a child process
//! (`tclab testserver serve`) inside its namespace and, when asked, its
//! own cgroup:
//!
//! ```text
//! client ──eth0 10.66.1.1 ─ 10.66.1.2 eth0── frontend :8080 /traceme
//!                                           frontend eth1 10.66.2.1 ─ 10.66.2.2 eth0── backend :8081 /tracemetoo
//!                                                                      backend eth1 10.66.3.1 ─ 10.66.3.2 eth0── worker :8082 /users
//! ```
//!
//! (`fd66:N::1/2` with `ipv6`.) A service named in `tls` serves over TLS
//! with a certificate it makes at start, written to a throwaway folder of
//! the chain; its caller calls it with `https://`, trusting exactly that
//! certificate. Children get PR_SET_PDEATHSIG(SIGKILL) and
//! are killed on drop, namespaces are fd-held, cgroups removed on drop: a
//! chain leaves nothing behind however the process ends (cgroup folders
//! excepted when it is SIGKILLed).

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use tclab_net::NetNs;

use super::cgroup::CgroupRoot;
use super::service::{Client, Target};

/// How long a service may take to bind and say so.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// How to build the chain.
#[derive(Debug, Clone)]
pub struct ChainOptions {
    /// The `tclab` binary to run the services with (`std::env::current_exe()`
    /// in `tclab` itself; tests pass `CARGO_BIN_EXE_tclab`).
    pub exe: PathBuf,
    /// Address the services over IPv6 instead of IPv4.
    pub ipv6: bool,
    /// Run each service in its own cgroup v2 (what the agent attaches to).
    pub cgroups: bool,
    /// Services (by name) that copy the incoming traceparent to their
    /// downstream request themselves, like an application with an SDK.
    pub forwarding: Vec<String>,
    /// Services keep their downstream connection between requests.
    pub downstream_keepalive: bool,
    /// Services (by name) that answer first and call their downstream
    /// afterwards, on the same thread.
    pub call_after_response: Vec<String>,
    /// Run this instead of `tclab testserver serve` as the worker (the
    /// last service): program and arguments, to which `--listen IP:PORT`
    /// is appended; it must print `ready …` once listening (e.g. a server
    /// instrumented with an OpenTelemetry SDK).
    pub worker_command: Option<Vec<String>>,
    /// Services (by name: backend, worker) served over TLS: the hop into
    /// each is encrypted.
    pub tls: Vec<String>,
}

impl ChainOptions {
    /// IPv4, no cgroups, nobody forwards, keep-alive downstream.
    pub fn new(exe: impl Into<PathBuf>) -> ChainOptions {
        ChainOptions {
            exe: exe.into(),
            ipv6: false,
            cgroups: false,
            forwarding: Vec::new(),
            call_after_response: Vec::new(),
            downstream_keepalive: true,
            worker_command: None,
            tls: Vec::new(),
        }
    }
}

/// One service of the chain.
#[derive(Debug)]
pub struct Service {
    pub name: &'static str,
    /// The route it serves.
    pub path: &'static str,
    pub listen: SocketAddr,
    /// Its namespace (its devices are `eth0`, and `eth1` towards the next).
    pub ns: NetNs,
    /// Devices in `ns`.
    pub ifaces: Vec<String>,
    /// Its cgroup folder, with [`ChainOptions::cgroups`].
    pub cgroup: Option<PathBuf>,
    pub pid: u32,
    child: Child,
}

/// The running chain. Dropping it kills the services and removes the
/// namespaces and cgroups.
#[derive(Debug)]
pub struct Chain {
    /// Where requests to the first service come from.
    pub client_ns: NetNs,
    /// frontend, backend, worker.
    pub services: Vec<Service>,
    // After the services: their cgroups can only go once they are dead.
    cgroups: Option<CgroupRoot>,
    /// The TLS services' certificates (removed on drop).
    _certs: Option<tempfile::TempDir>,
}

/// (name, path, port) of each service, in call order.
pub const SERVICES: [(&str, &str, u16); 3] =
    [("frontend", "/traceme", 8080), ("backend", "/tracemetoo", 8081), ("worker", "/users", 8082)];

fn addr(ipv6: bool, link: u8, host: u8) -> IpAddr {
    if ipv6 {
        IpAddr::V6(std::net::Ipv6Addr::new(0xfd66, u16::from(link), 0, 0, 0, 0, 0, u16::from(host)))
    } else {
        IpAddr::V4(std::net::Ipv4Addr::new(10, 66, link, host))
    }
}

impl Chain {
    /// Build the namespaces and links, start the services, wait until each
    /// listens.
    ///
    /// # Errors
    /// Namespace, link, cgroup or process errors, naming the service.
    pub fn start(opts: &ChainOptions) -> anyhow::Result<Chain> {
        if !opts.exe.is_file() {
            // (the worker may be another program, but the others are tclab)
            bail!("the tclab binary {} does not exist", opts.exe.display());
        }
        for t in &opts.tls {
            match SERVICES.iter().position(|(n, _, _)| n == t) {
                // the client that calls the frontend runs no agent: its hop could not be traced
                Some(0) => bail!("the frontend cannot serve TLS: the chain's client has no agent to carry the trace"),
                Some(k) if k + 1 == SERVICES.len() && opts.worker_command.is_some() => {
                    bail!("the worker cannot serve TLS when it is another program")
                }
                Some(_) => {}
                None => bail!("unknown service `{t}` to serve TLS, expected backend or worker"),
            }
        }
        let certs = if opts.tls.is_empty() {
            None
        } else {
            Some(tempfile::Builder::new().prefix("tclab-certs-").tempdir().context("failed to make a folder for the certificates")?)
        };
        let cert_of = |name: &str| certs.as_ref().map(|d| d.path().join(format!("{name}.pem")));
        let is_tls = |name: &str| opts.tls.iter().any(|t| t == name);
        let seq = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("tclab-{}-{seq}", std::process::id());
        let client_ns = NetNs::new(&format!("{tag}-client"))?;
        let mut namespaces = Vec::new();
        for (name, _, _) in SERVICES {
            namespaces.push(NetNs::new(&format!("{tag}-{name}"))?);
        }
        let prefix = if opts.ipv6 { 64 } else { 24 };
        // link k joins (client or service k-1).eth1/eth0 to service k's eth0
        for k in 0..SERVICES.len() {
            let (left, left_if) = if k == 0 { (&client_ns, "eth0") } else { (&namespaces[k - 1], "eth1") };
            let right = &namespaces[k];
            tclab_net::create_veth_pair(left, left_if, right, "eth0", None)
                .with_context(|| format!("failed to link to {}", SERVICES[k].0))?;
            let link = k as u8 + 1;
            tclab_net::add_address(left, left_if, addr(opts.ipv6, link, 1), prefix)?;
            tclab_net::add_address(right, "eth0", addr(opts.ipv6, link, 2), prefix)?;
        }
        let mut cgroups = if opts.cgroups { Some(CgroupRoot::create()?) } else { None };
        let mut chain = Chain { client_ns, services: Vec::new(), cgroups: None, _certs: None };
        for (k, ns) in namespaces.into_iter().enumerate() {
            let (name, path, port) = SERVICES[k];
            let listen = SocketAddr::new(addr(opts.ipv6, k as u8 + 1, 2), port);
            let mut tls_args = Vec::new();
            let route = match SERVICES.get(k + 1) {
                Some((next_name, next_path, next_port)) => {
                    let next = SocketAddr::new(addr(opts.ipv6, k as u8 + 2, 2), *next_port);
                    match cert_of(next_name).filter(|_| is_tls(next_name)) {
                        Some(ca) => {
                            tls_args.extend(["--downstream-ca".to_owned(), ca.display().to_string()]);
                            format!("{path}=https://{next}{next_path}")
                        }
                        None => format!("{path}=http://{next}{next_path}"),
                    }
                }
                None => path.to_owned(),
            };
            if let Some(cert) = cert_of(name).filter(|_| is_tls(name)) {
                tls_args.extend(["--tls-cert-out".to_owned(), cert.display().to_string()]);
            }
            let cgroup = match cgroups.as_mut() {
                Some(root) => Some(root.child(name)?),
                None => None,
            };
            let mut args = vec!["testserver".to_owned(), "serve".into(), "--name".into(), name.into()];
            args.extend(["--listen".into(), listen.to_string(), "--route".into(), route]);
            if opts.forwarding.iter().any(|f| f == name) {
                args.push("--forward-traceparent".into());
            }
            if !opts.downstream_keepalive {
                args.push("--no-downstream-keepalive".into());
            }
            if opts.call_after_response.iter().any(|f| f == name) {
                args.push("--call-after-response".into());
            }
            args.extend(tls_args);
            let (program, args) = match (&opts.worker_command, k + 1 == SERVICES.len()) {
                (Some(cmd), true) if !cmd.is_empty() => {
                    let mut a = cmd[1..].to_vec();
                    a.extend(["--listen".to_owned(), listen.to_string()]);
                    (PathBuf::from(&cmd[0]), a)
                }
                _ => (opts.exe.clone(), args),
            };
            let (child, _) = spawn_in(&program, &args, &ns, cgroup.as_deref())
                .with_context(|| format!("failed to start service {name}"))?;
            let ifaces = if k + 1 < SERVICES.len() { vec!["eth0".into(), "eth1".into()] } else { vec!["eth0".into()] };
            let pid = child.id();
            chain.services.push(Service { name, path, listen, ns, ifaces, cgroup, pid, child });
        }
        chain.cgroups = cgroups.take();
        chain._certs = certs;
        Ok(chain)
    }

    /// The URL of the first service's route.
    pub fn entry(&self) -> Target {
        let s = &self.services[0];
        Target { addr: s.listen, path: s.path.to_owned(), tls: false }
    }

    /// One GET of the entry route from the client namespace (a fresh
    /// connection), with `extra` headers.
    ///
    /// # Errors
    /// Connection or protocol errors.
    pub fn get(&self, extra: &[(String, String)]) -> anyhow::Result<(u16, serde_json::Value)> {
        let target = self.entry();
        self.client_ns.try_run(|| Client::new(false).get(&target, extra))?
    }

    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        for s in &mut self.services {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
        self.services.clear();
        // cgroups (now empty) go with self.cgroups
    }
}

/// Run `program args` to completion inside `ns`; its output.
///
/// # Errors
/// When it cannot be started.
pub fn run_in(ns: &NetNs, program: &Path, args: &[String]) -> anyhow::Result<std::process::Output> {
    let ns_fd = ns.fd().as_raw_fd();
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).env_remove(crate::guest::GUEST_ENV);
    // SAFETY: only async-signal-safe system calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().with_context(|| format!("failed to run {} {}", program.display(), args.join(" ")))
}

/// Spawn `exe args` inside `ns` (and `cgroup`), dying with this thread's
/// process (PR_SET_PDEATHSIG), and wait for its `ready ADDR` line.
///
/// # Errors
/// When it cannot be spawned or does not get ready in time (its exit status
/// is in the message when it died).
pub fn spawn_in(exe: &Path, args: &[String], ns: &NetNs, cgroup: Option<&Path>) -> anyhow::Result<(Child, String)> {
    let procs = match cgroup {
        Some(c) => {
            let p = c.join("cgroup.procs");
            Some(std::fs::OpenOptions::new().write(true).open(&p).with_context(|| format!("failed to open {}", p.display()))?)
        }
        None => None,
    };
    let ns_fd = ns.fd().as_raw_fd();
    let procs_fd = procs.as_ref().map(AsRawFd::as_raw_fd);
    let mut cmd = Command::new(exe);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).env_remove(crate::guest::GUEST_ENV);
    // SAFETY: only async-signal-safe system calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(fd) = procs_fd
                && libc::write(fd, b"0".as_ptr().cast(), 1) != 1
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().with_context(|| format!("failed to run {} {}", exe.display(), args.join(" ")))?;
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(READY_TIMEOUT) {
        Ok(line) if line.starts_with("ready ") => Ok((child, line.trim_end().to_owned())),
        other => {
            let _ = child.kill();
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            bail!("{} {} did not get ready ({status}; said {other:?})", exe.display(), args.join(" "))
        }
    }
}
