//! Nothing left behind: after a full `tclab run`, a failed run, runs
//! interrupted by SIGINT or SIGTERM at fixed points, a double Ctrl-C, runs
//! killed with SIGKILL, two runs at once, a `tclab replay`, and kernel-matrix
//! runs stopped or killed while QEMU runs, no network namespace, veth, qdisc,
//! netlink filter, TCX link, BPF program or map, pin, child process (QEMU
//! included) or temporary file of ours remains. One known exception, not
//! asserted: a kernel-matrix run killed with SIGKILL leaves its initramfs
//! folders (`tclab-vm-*`, `tclab-initrd-*`) in TMPDIR; the test prints them.
//!
//! Attribution, so that other tests and tools running on the machine at the
//! same time cannot fail these tests:
//! * the `tclab` child runs with a throwaway network namespace of this test
//!   (the "sandbox") as its host namespace: every link, qdisc, filter or TCX
//!   program that appears there is ours. The test's own namespace is checked
//!   too, for devices named like the lab's and for programs of ours;
//! * while the child runs, a sampler reads `/proc/<child>` every few ms and
//!   records the namespaces its threads and fds hold and the BPF program,
//!   map and link ids in its fdinfo. After it exits, none of those may still
//!   exist or be referenced (BPF ids are allocated cyclically, so they are
//!   not reused within a test; namespace inodes can be, so a namespace
//!   counts only when a process of ours or a new nsfs mount holds it);
//! * this test process is a child subreaper, so any process the child left
//!   behind becomes our child and is found by its parent pid;
//! * pins: new entries on any mounted bpf filesystem (and /sys/fs/bpf).
//!
//! Namespace teardown is asynchronous (the kernel's cleanup_net work), so the
//! final check polls until the state is clean or a deadline passes, and then
//! reports everything still there. The tests in this file are serialized.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tclab_net::{NetNs, require};

/// How long a finished child's namespaces and programs may take to go.
const CLEANUP_DEADLINE: Duration = Duration::from_secs(30);
/// How long a `tclab` child may run before the test gives up on it.
const RUN_DEADLINE: Duration = Duration::from_secs(240);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("lab/ has a parent")
}

// ---------------------------------------------------------------- bpf(2)

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
const BPF_MAP_GET_NEXT_ID: libc::c_long = 12;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;
const BPF_LINK_TYPE_TCX: u32 = 11;

fn sys_bpf(cmd: libc::c_long, attr: &mut [u8]) -> std::io::Result<i64> {
    // SAFETY: attr is a valid, zero-padded bpf_attr of the size passed.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if ret < 0 { Err(std::io::Error::last_os_error()) } else { Ok(ret) }
}

/// Every id the kernel hands out for one object kind (`*_GET_NEXT_ID`).
fn all_ids(cmd: libc::c_long) -> BTreeSet<u32> {
    let mut ids = BTreeSet::new();
    let mut start = 0u32;
    loop {
        let mut attr = [0u8; 16];
        attr[0..4].copy_from_slice(&start.to_ne_bytes());
        if sys_bpf(cmd, &mut attr).is_err() {
            return ids;
        }
        let next = u32::from_ne_bytes([attr[4], attr[5], attr[6], attr[7]]);
        ids.insert(next);
        start = next;
    }
}

/// `(type, id, prog_id)` of a BPF object's info (prog, map and link info all
/// start with type and id; links then have prog_id).
fn obj_info(fd: &OwnedFd) -> Option<(u32, u32, u32)> {
    let mut info = [0u8; 128];
    let mut attr = [0u8; 16];
    attr[0..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(info.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).ok()?;
    let word = |o: usize| u32::from_ne_bytes([info[o], info[o + 1], info[o + 2], info[o + 3]]);
    Some((word(0), word(4), word(8)))
}

/// Link id → (link type, program id), for every BPF link on the system.
fn all_links() -> BTreeMap<u32, (u32, u32)> {
    let mut out = BTreeMap::new();
    for id in all_ids(BPF_LINK_GET_NEXT_ID) {
        let mut attr = [0u8; 16];
        attr[0..4].copy_from_slice(&id.to_ne_bytes());
        let Ok(fd) = sys_bpf(BPF_LINK_GET_FD_BY_ID, &mut attr) else { continue };
        // SAFETY: a fresh fd returned by the kernel.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        if let Some((kind, _, prog)) = obj_info(&fd) {
            out.insert(id, (kind, prog));
        }
    }
    out
}

/// The id of the object pinned at `path`, if it is one.
fn pinned_id(path: &Path) -> Option<u32> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let mut attr = [0u8; 16];
    attr[0..8].copy_from_slice(&(c.as_ptr() as u64).to_ne_bytes());
    let fd = sys_bpf(BPF_OBJ_GET, &mut attr).ok()?;
    // SAFETY: a fresh fd returned by the kernel.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    obj_info(&fd).map(|(_, id, _)| id)
}

// ---------------------------------------------------------------- /proc

fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| d.filter_map(Result::ok).filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

fn netns_inode_of(link: &Path) -> Option<u64> {
    let target = std::fs::read_link(link).ok()?;
    target.to_str()?.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// Namespace inode → who holds it (process threads, fds).
fn netns_holders() -> BTreeMap<u64, Vec<String>> {
    let mut out: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for pid in pids() {
        let base = PathBuf::from(format!("/proc/{pid}"));
        let tasks = std::fs::read_dir(base.join("task")).into_iter().flatten().filter_map(Result::ok);
        for t in tasks {
            if let Some(ino) = netns_inode_of(&t.path().join("ns/net")) {
                out.entry(ino).or_default().push(format!("pid {pid} task {}", t.file_name().to_string_lossy()));
            }
        }
        let fds = std::fs::read_dir(base.join("fd")).into_iter().flatten().filter_map(Result::ok);
        for f in fds {
            if let Some(ino) = netns_inode_of(&f.path()) {
                out.entry(ino).or_default().push(format!("pid {pid} fd {}", f.file_name().to_string_lossy()));
            }
        }
    }
    out
}

/// (mount point, fs type, root) of every mount seen by us and by pid 1.
fn mounts() -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for file in ["/proc/self/mountinfo", "/proc/1/mountinfo"] {
        let Ok(text) = std::fs::read_to_string(file) else { continue };
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else { continue };
            let l: Vec<&str> = left.split(' ').collect();
            let fstype = right.split(' ').next().unwrap_or_default();
            if l.len() >= 5 {
                out.insert((l[4].to_string(), fstype.to_string(), l[3].to_string()));
            }
        }
    }
    out
}

/// Every file under every bpf filesystem (and under /sys/fs/bpf, mounted or not).
fn pins() -> BTreeSet<PathBuf> {
    let mut roots: BTreeSet<PathBuf> = mounts().into_iter().filter(|m| m.1 == "bpf").map(|m| PathBuf::from(m.0)).collect();
    roots.insert(PathBuf::from("/sys/fs/bpf"));
    let mut out = BTreeSet::new();
    let mut stack: Vec<PathBuf> = roots.into_iter().collect();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.filter_map(Result::ok) {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p.clone());
            }
            out.insert(p);
        }
    }
    out
}

/// Live processes whose parent is this test process (with the subreaper
/// bit, the orphans of our children land here too). Orphans that already
/// died are reaped here: a zombie holds nothing.
fn our_children() -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut out = Vec::new();
    for pid in pids() {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
        let Some((head, tail)) = stat.rsplit_once(") ") else { continue };
        let mut fields = tail.split(' ');
        let state = fields.next();
        let ppid: Option<u32> = fields.next().and_then(|p| p.parse().ok());
        if ppid == Some(me) && state == Some("Z") {
            let _ = nix::sys::wait::waitpid(Pid::from_raw(pid as i32), Some(nix::sys::wait::WaitPidFlag::WNOHANG));
            continue;
        }
        if ppid == Some(me) {
            let comm = head.split_once(" (").map_or("?", |c| c.1).to_string();
            out.push((pid, comm));
        }
    }
    out
}

// ---------------------------------------------------------------- what a child held

/// What the sampler saw a `tclab` child hold while it ran.
#[derive(Debug, Default, Clone)]
struct Seen {
    netns: BTreeSet<u64>,
    progs: BTreeSet<u32>,
    maps: BTreeSet<u32>,
    links: BTreeSet<u32>,
    samples: u64,
    /// Samples in which every sampled child held a topology namespace.
    all_busy: u64,
    /// Names (`comm`) of the processes the children started.
    children: BTreeSet<String>,
}

impl Seen {
    /// Record what `pid` holds now; true when it holds a topology namespace.
    fn sample(&mut self, pid: u32, exclude_ns: &BTreeSet<u64>) -> bool {
        let mut busy = false;
        let base = PathBuf::from(format!("/proc/{pid}"));
        let tasks = std::fs::read_dir(base.join("task")).into_iter().flatten().filter_map(Result::ok);
        for t in tasks {
            let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            for kid in kids.split_whitespace() {
                if let Ok(comm) = std::fs::read_to_string(format!("/proc/{kid}/comm")) {
                    self.children.insert(comm.trim().to_string());
                }
            }
            let ns = netns_inode_of(&t.path().join("ns/net")).filter(|i| !exclude_ns.contains(i));
            busy |= ns.is_some();
            self.netns.extend(ns);
        }
        let fds = std::fs::read_dir(base.join("fd")).into_iter().flatten().filter_map(Result::ok);
        for f in fds {
            let Ok(target) = std::fs::read_link(f.path()) else { continue };
            let target = target.to_string_lossy();
            if target.starts_with("net:[") {
                let ns = netns_inode_of(&f.path()).filter(|i| !exclude_ns.contains(i));
                busy |= ns.is_some();
                self.netns.extend(ns);
            } else if target.starts_with("anon_inode:bpf") {
                let Ok(info) = std::fs::read_to_string(base.join("fdinfo").join(f.file_name())) else { continue };
                for line in info.lines() {
                    let mut kv = line.splitn(2, ':');
                    let (Some(k), Some(v)) = (kv.next(), kv.next()) else { continue };
                    let Ok(v) = v.trim().parse::<u32>() else { continue };
                    match k {
                        "prog_id" => self.progs.insert(v),
                        "map_id" => self.maps.insert(v),
                        "link_id" => self.links.insert(v),
                        _ => false,
                    };
                }
            }
        }
        self.samples += 1;
        busy
    }
}

/// Samples the children's /proc entries every few ms until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Seen>>,
}

impl Sampler {
    fn start(pids: Vec<u32>, exclude_ns: BTreeSet<u64>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut seen = Seen::default();
            while !flag.load(Ordering::Relaxed) {
                let mut all = true;
                for pid in &pids {
                    all &= seen.sample(*pid, &exclude_ns);
                }
                seen.all_busy += u64::from(all);
                std::thread::sleep(Duration::from_millis(5));
            }
            seen
        });
        Sampler { stop, thread: Some(thread) }
    }

    fn finish(mut self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map(|t| t.join().expect("sampler panicked")).unwrap_or_default()
    }
}

// ---------------------------------------------------------------- the sandbox's network state

/// Links, qdiscs, netlink filters and TCX programs of one namespace, as text.
fn net_state(ns: &NetNs) -> BTreeSet<String> {
    use aya::programs::{SchedClassifier, TcAttachType};
    use tclab_net::tc::{self, Direction};
    let links = tclab_net::list_links(ns).expect("list links");
    ns.run(move || {
        let mut out = BTreeSet::new();
        for l in &links {
            out.insert(format!("link {} ifindex={}", l.name, l.ifindex));
            for q in tc::list_qdiscs(l.ifindex).expect("list qdiscs") {
                out.insert(format!("qdisc {} on {} handle={:x} parent={:x}", q.kind, l.name, q.handle, q.parent));
            }
            for dir in [Direction::Ingress, Direction::Egress] {
                // No clsact: no filters (the dump fails with EINVAL).
                for f in tc::list_filters(l.ifindex, dir).unwrap_or_default() {
                    out.insert(format!(
                        "filter {dir:?} on {} prio={} handle={} {} {:?} prog={:?}",
                        l.name, f.priority, f.handle, f.kind, f.bpf_name, f.bpf_id
                    ));
                }
            }
            for (hook, t) in [("ingress", TcAttachType::Ingress), ("egress", TcAttachType::Egress)] {
                if let Ok((_, progs)) = SchedClassifier::query_tcx(&l.name, t) {
                    for p in progs {
                        out.insert(format!("tcx {hook} on {} prog {} ({})", l.name, p.id(), p.name_as_str().unwrap_or("?")));
                    }
                }
            }
        }
        out
    })
}

/// Program ids in this namespace's filters and TCX chains.
fn prog_ids_in(state: &BTreeSet<String>) -> BTreeSet<u32> {
    let mut ids = BTreeSet::new();
    for line in state {
        if let Some(rest) = line.split("prog=Some(").nth(1) {
            ids.extend(rest.split(')').next().and_then(|v| v.parse::<u32>().ok()));
        }
        if let Some(rest) = line.strip_prefix("tcx ") {
            ids.extend(rest.split(" prog ").nth(1).and_then(|v| v.split(' ').next()).and_then(|v| v.parse::<u32>().ok()));
        }
    }
    ids
}

// ---------------------------------------------------------------- before / after

/// Interface names the lab's topologies use, to find any in the test's own namespace.
fn lab_interface_names() -> BTreeSet<String> {
    let mut names: BTreeSet<String> = ["dut", "peer"].into_iter().map(String::from).collect();
    if let Ok(scenarios) = tclab_lab::scenario::load_dir(&workspace().join("scenarios")) {
        for s in scenarios {
            names.insert(s.topology.device.name.clone());
            names.insert(s.topology.peer.name.clone());
        }
    }
    names
}

/// System state before a child starts.
struct Before {
    sandbox: BTreeSet<String>,
    host_links: BTreeSet<String>,
    mounts: BTreeSet<(String, String, String)>,
    pins: BTreeSet<PathBuf>,
    exclude_ns: BTreeSet<u64>,
}

/// One throwaway host namespace for the children of a test.
struct Sandbox {
    ns: NetNs,
    host: NetNs,
}

impl Sandbox {
    fn new() -> Sandbox {
        // SAFETY: prctl with plain integer arguments.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(rc, 0, "PR_SET_CHILD_SUBREAPER: {}", std::io::Error::last_os_error());
        Sandbox { ns: NetNs::new("leftovers-sandbox").expect("sandbox namespace"), host: NetNs::current().expect("host ns") }
    }

    fn before(&self) -> Before {
        let host_links = tclab_net::list_links(&self.host).expect("host links").into_iter().map(|l| l.name).collect();
        let exclude_ns = [self.ns.inode().expect("inode"), self.host.inode().expect("inode")].into_iter().collect();
        Before { sandbox: net_state(&self.ns), host_links, mounts: mounts(), pins: pins(), exclude_ns }
    }

    /// Start `tclab args…` with the sandbox as its host namespace.
    /// Its temporary files go to `<out_dir>/<tag>.tmp`, checked by [`tmp_left`].
    fn spawn(&self, args: &[&str], out_dir: &Path, tag: &str) -> Child {
        let fd = self.ns.fd().as_raw_fd();
        let tmp = out_dir.join(format!("{tag}.tmp"));
        std::fs::create_dir_all(&tmp).expect("child TMPDIR");
        let stdout = File::create(out_dir.join(format!("{tag}.stdout"))).expect("stdout file");
        let stderr = File::create(out_dir.join(format!("{tag}.stderr"))).expect("stderr file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tclab"));
        cmd.args(args)
            .current_dir(workspace())
            // Never leave pending snapshots in the repository.
            .env("CI", "true")
            .env("INSTA_UPDATE", "no")
            .env("TMPDIR", &tmp)
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr));
        // SAFETY: setns is a plain syscall, async-signal-safe between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn().expect("failed to start tclab")
    }

    /// Everything of ours still on the system, after waiting for the
    /// kernel's asynchronous teardown; empty when clean.
    fn leftovers(&self, before: &Before, seen: &Seen) -> Vec<String> {
        let deadline = Instant::now() + CLEANUP_DEADLINE;
        loop {
            let found = self.leftovers_now(before, seen);
            if found.is_empty() || Instant::now() >= deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn leftovers_now(&self, before: &Before, seen: &Seen) -> Vec<String> {
        let mut found = Vec::new();
        // Processes.
        for (pid, comm) in our_children() {
            found.push(format!("process {pid} ({comm}) is still running"));
        }
        // Namespaces: held by a process of ours (this test included), or by a
        // new nsfs mount.
        let mut ours: BTreeSet<u32> = our_children().into_iter().map(|c| c.0).collect();
        ours.insert(std::process::id());
        for (ino, holders) in netns_holders() {
            if !seen.netns.contains(&ino) {
                continue;
            }
            let by_us: Vec<&String> = holders
                .iter()
                .filter(|h| h.split(' ').nth(1).and_then(|p| p.parse::<u32>().ok()).is_some_and(|p| ours.contains(&p)))
                .collect();
            if !by_us.is_empty() {
                found.push(format!("network namespace {ino} still held by {by_us:?}"));
            }
        }
        for m in mounts().difference(&before.mounts) {
            let ino = m.2.strip_prefix("net:[").and_then(|r| r.strip_suffix(']')).and_then(|i| i.parse().ok());
            if m.1 == "nsfs" && ino.is_some_and(|i| seen.netns.contains(&i)) {
                found.push(format!("network namespace bind-mounted on {} ({})", m.0, m.2));
            }
        }
        // BPF objects the child held.
        let progs = all_ids(BPF_PROG_GET_NEXT_ID);
        let maps = all_ids(BPF_MAP_GET_NEXT_ID);
        for id in seen.progs.intersection(&progs) {
            found.push(format!("BPF program {id} still loaded"));
        }
        for id in seen.maps.intersection(&maps) {
            found.push(format!("BPF map {id} still exists"));
        }
        for (id, (kind, prog)) in all_links() {
            if seen.links.contains(&id) || seen.progs.contains(&prog) {
                let what = if kind == BPF_LINK_TYPE_TCX { "TCX link" } else { "BPF link" };
                found.push(format!("{what} {id} (program {prog}) still exists"));
            }
        }
        // The sandbox (the child's host namespace): anything new is ours.
        let sandbox = net_state(&self.ns);
        for line in sandbox.difference(&before.sandbox) {
            found.push(format!("in the child's host namespace: {line}"));
        }
        for line in before.sandbox.difference(&sandbox) {
            found.push(format!("in the child's host namespace, gone: {line}"));
        }
        // The test's own namespace: devices named like the lab's, programs of ours.
        let names = lab_interface_names();
        for l in tclab_net::list_links(&self.host).expect("host links") {
            if !before.host_links.contains(&l.name) && names.contains(&l.name) {
                found.push(format!("device {} in the test's namespace", l.name));
            }
        }
        let host = net_state(&self.host);
        for id in prog_ids_in(&host).intersection(&seen.progs) {
            found.push(format!("program {id} of ours attached in the test's namespace"));
        }
        // Pins.
        for p in pins().difference(&before.pins) {
            let ours = pinned_id(p).is_some_and(|id| seen.progs.contains(&id) || seen.maps.contains(&id) || seen.links.contains(&id));
            if ours || p.to_string_lossy().contains("tclab") {
                found.push(format!("pinned object {}", p.display()));
            }
        }
        found
    }
}

// ---------------------------------------------------------------- running tclab

/// One finished child.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    elapsed: Duration,
    /// What the child left in its TMPDIR.
    tmp_left: Vec<PathBuf>,
}

fn wait(mut child: Child, out_dir: &Path, tag: &str, started: Instant) -> Finished {
    let deadline = started + RUN_DEADLINE;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for tclab") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tclab {tag} did not finish within {RUN_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |ext: &str| std::fs::read_to_string(out_dir.join(format!("{tag}.{ext}"))).unwrap_or_default();
    let tmp_left = std::fs::read_dir(out_dir.join(format!("{tag}.tmp")))
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    Finished { status, stdout: read("stdout"), stderr: read("stderr"), elapsed: started.elapsed(), tmp_left }
}

/// What to do to a running child.
#[derive(Debug, Clone, Copy)]
enum Action {
    /// Let it finish.
    None,
    /// One signal after this long.
    Signal(Signal, Duration),
    /// The same signal twice, 50 ms apart (Ctrl-C pressed twice).
    Twice(Signal, Duration),
}

impl Action {
    /// After this, the child can run no cleanup of its own.
    fn is_kill(self) -> bool {
        matches!(self, Action::Signal(Signal::SIGKILL, _))
    }
}

/// Run `tclab args` in the sandbox, act on it, and check that it left nothing.
fn run_and_check(sandbox: &Sandbox, args: &[&str], action: Action) -> (Finished, Seen) {
    let dir = tempfile::tempdir().expect("tempdir");
    let before = sandbox.before();
    let started = Instant::now();
    let child = sandbox.spawn(args, dir.path(), "tclab");
    let sampler = Sampler::start(vec![child.id()], before.exclude_ns.clone());
    match action {
        Action::None => {}
        Action::Signal(sig, after) | Action::Twice(sig, after) => {
            std::thread::sleep(after.saturating_sub(started.elapsed()));
            let _ = kill(Pid::from_raw(child.id() as i32), sig);
            if matches!(action, Action::Twice(..)) {
                std::thread::sleep(Duration::from_millis(50));
                let _ = kill(Pid::from_raw(child.id() as i32), sig);
            }
        }
    }
    let finished = wait(child, dir.path(), "tclab", started);
    let seen = sampler.finish();
    let left = sandbox.leftovers(&before, &seen);
    if !action.is_kill() {
        assert!(finished.tmp_left.is_empty(), "tclab {args:?} ({action:?}) left temporary files: {:?}", finished.tmp_left);
    }
    assert!(
        left.is_empty(),
        "tclab {args:?} ({action:?}, exit {:?}) left behind:\n  {}\nstdout:\n{}\nstderr:\n{}",
        finished.status,
        left.join("\n  "),
        finished.stdout,
        finished.stderr
    );
    (finished, seen)
}

/// The sampler really saw the child's namespaces and BPF objects (otherwise
/// the checks above would pass blind).
fn assert_saw_resources(seen: &Seen, what: &str, tcx: bool) {
    assert!(seen.samples > 10, "{what}: only {} samples", seen.samples);
    assert!(seen.netns.len() >= 2, "{what}: the sampler saw no topology namespaces: {seen:?}");
    assert!(!seen.progs.is_empty() && !seen.maps.is_empty(), "{what}: the sampler saw no BPF programs or maps: {seen:?}");
    if tcx {
        assert!(!seen.links.is_empty(), "{what}: the sampler saw no TCX links: {seen:?}");
    }
}

fn scenario_count() -> usize {
    tclab_lab::scenario::load_dir(&workspace().join("scenarios")).map(|s| s.len()).expect("scenarios load")
}

fn summary_counts(stdout: &str) -> Option<(usize, usize, usize)> {
    let line = stdout.lines().rev().find(|l| l.contains(" passed, "))?;
    let nums: Vec<usize> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect();
    (nums.len() == 3).then(|| (nums[0], nums[1], nums[2]))
}

// ---------------------------------------------------------------- tests

#[test]
fn the_checks_find_a_deliberate_leak() {
    if !require::root("the_checks_find_a_deliberate_leak") {
        return;
    }
    let _serial = serial();
    let sandbox = Sandbox::new();
    let before = sandbox.before();
    // Leak on purpose what the lab could leak: a namespace held by a process
    // of ours, a veth, clsact with a netlink filter and a TCX link on the
    // host side, and a child process.
    let leaked_ns = NetNs::new("leftovers-leak").expect("ns");
    let mut sleeper = Command::new("sleep").arg("60").spawn().expect("sleep");
    tclab_net::create_veth_pair(&sandbox.ns, "dut", &leaked_ns, "peer", None).expect("veth");
    let dut = tclab_net::link_by_name(&sandbox.ns, "dut").expect("dut");
    let mut tcx = tclab_datapath::loader::TestProgram::load(tclab_datapath::loader::Verdict::Unspec).expect("test program");
    let mut netlink = tclab_datapath::loader::TestProgram::load(tclab_datapath::loader::Verdict::Unspec).expect("test program");
    let links = sandbox.ns.run(|| {
        use aya::programs::TcAttachType;
        use aya::programs::tc::{NlOptions, TcAttachOptions};
        tclab_net::tc::add_clsact(dut.ifindex).expect("clsact");
        let a = tcx.program_mut().attach("dut", TcAttachType::Ingress).expect("tcx attach");
        let opts = TcAttachOptions::Netlink(NlOptions { priority: 7, ..NlOptions::default() });
        let b = netlink.program_mut().attach_with_options("dut", TcAttachType::Egress, opts).expect("netlink attach");
        (tcx.program_mut().take_link(a).expect("link"), netlink.program_mut().take_link(b).expect("link"))
    });
    let mut seen = Seen::default();
    seen.sample(std::process::id(), &before.exclude_ns);
    assert!(seen.netns.contains(&leaked_ns.inode().expect("inode")), "the sampler sees a held namespace: {seen:?}");
    let found = sandbox.leftovers_now(&before, &seen).join("\n");
    for needle in [
        "process ",
        "network namespace ",
        "link dut ",
        "qdisc clsact on dut",
        "filter Egress on dut prio=7",
        "tcx ingress on dut",
        "TCX link ",
        "BPF program ",
        "BPF map ",
    ] {
        assert!(found.contains(needle), "the check missed `{needle}` in:\n{found}");
    }
    // Undo it all; then the same checks find nothing.
    sandbox.ns.run(move || drop(links));
    drop((tcx, netlink));
    tclab_net::delete_link(&sandbox.ns, "dut").expect("delete veth");
    drop(leaked_ns);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let left = sandbox.leftovers(&before, &seen);
    assert!(left.is_empty(), "after undoing the leak: {left:?}");
}

#[test]
fn a_full_run_leaves_nothing() {
    if !require::root("a_full_run_leaves_nothing") {
        return;
    }
    let _serial = serial();
    let sandbox = Sandbox::new();
    let (done, seen) = run_and_check(&sandbox, &["run"], Action::None);
    assert!(done.status.success(), "full run failed: {:?}\n{}\n{}", done.status, done.stdout, done.stderr);
    let (passed, failed, _) = summary_counts(&done.stdout).expect("summary line");
    assert!(passed >= 15 && failed == 0, "{}", done.stdout);
    assert_saw_resources(&seen, "full run", true);
}

/// Scenarios that fail in different ways: a wrong inline check, an agent
/// whose CT map the kernel refuses (after the topology is built and the
/// other programs are loaded), and one with no snapshot.
fn failing_scenarios(dir: &Path) -> PathBuf {
    let pcap = workspace().join("fixtures/http-get.pcap");
    let scen = dir.join("scenarios");
    std::fs::create_dir_all(&scen).expect("mkdir");
    let replay = format!("[[replay]]\npcap = {:?}\n", pcap.to_str().expect("utf-8"));
    let files = [
        (
            "fail-check",
            format!("name = \"fail-check\"\n[[chain]]\nname = \"agent\"\nprogram = \"agent\"\n{replay}[expect]\nsnapshot = false\nspans = 7\n"),
        ),
        (
            "fail-agent-refused",
            format!(
                "name = \"fail-agent-refused\"\n[agent]\nct_max_entries = 4294967295\n[[chain]]\nname = \"count\"\nprogram = \"counter\"\nattach = {{ mode = \"netlink\", priority = 3 }}\n[[chain]]\nname = \"agent\"\nprogram = \"agent\"\n{replay}[expect]\nsnapshot = false\nspans = 1\n"
            ),
        ),
        ("fail-no-snapshot", format!("name = \"fail-no-snapshot\"\n[[chain]]\nname = \"agent\"\nprogram = \"agent\"\n{replay}")),
    ];
    for (name, text) in files {
        std::fs::write(scen.join(format!("{name}.toml")), text).expect("write scenario");
    }
    scen
}

#[test]
fn a_failed_run_leaves_nothing() {
    if !require::root("a_failed_run_leaves_nothing") {
        return;
    }
    let _serial = serial();
    let sandbox = Sandbox::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let scen = failing_scenarios(dir.path());
    let snaps = dir.path().join("snapshots");
    let args = ["run", scen.to_str().expect("utf-8"), "--snapshots", snaps.to_str().expect("utf-8")];
    let (done, seen) = run_and_check(&sandbox, &args, Action::None);
    assert_eq!(done.status.code(), Some(1), "a failed run exits 1:\n{}\n{}", done.stdout, done.stderr);
    assert_eq!(summary_counts(&done.stdout), Some((0, 3, 0)), "{}", done.stdout);
    for needle in ["check spans = 7: 1 spans", "check spans = 1: 0 spans", "no snapshot"] {
        assert!(done.stdout.contains(needle), "missing {needle:?}:\n{}", done.stdout);
    }
    assert!(!snaps.exists() || std::fs::read_dir(&snaps).expect("snapshots").next().is_none(), "CI=true wrote a snapshot");
    assert_saw_resources(&seen, "failed run", true);
}

#[test]
fn runs_interrupted_by_sigint_or_sigterm_leave_nothing() {
    if !require::root("runs_interrupted_by_sigint_or_sigterm_leave_nothing") {
        return;
    }
    let _serial = serial();
    let sandbox = Sandbox::new();
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        for ms in [300, 1000, 2000] {
            let action = Action::Signal(sig, Duration::from_millis(ms));
            let (done, seen) = run_and_check(&sandbox, &["run"], action);
            if ms >= 1000 {
                assert!(!seen.netns.is_empty(), "{action:?}: interrupted before any scenario ran: {seen:?}");
            }
            // Either the handler was not installed yet (killed by the
            // signal), or the run stopped after the current scenario and
            // printed its summary.
            let by_signal = std::os::unix::process::ExitStatusExt::signal(&done.status) == Some(sig as i32);
            if !by_signal {
                let (passed, failed, skipped) = summary_counts(&done.stdout)
                    .unwrap_or_else(|| panic!("{action:?}: no summary ({:?}):\n{}\n{}", done.status, done.stdout, done.stderr));
                assert!(passed + failed + skipped < scenario_count(), "{action:?}: the run did not stop early:\n{}", done.stdout);
                // An interrupted run is never reported as a pass: 128 + signal.
                assert_eq!(done.status.code(), Some(128 + sig as i32), "{action:?}: exit code:\n{}", done.stderr);
            }
            eprintln!("{sig:?} after {ms} ms: {:?} after {:?}", done.status, done.elapsed);
        }
    }
}

#[test]
fn a_double_ctrl_c_exits_at_once_and_leaves_nothing() {
    if !require::root("a_double_ctrl_c_exits_at_once_and_leaves_nothing") {
        return;
    }
    let _serial = serial();
    let sandbox = Sandbox::new();
    for ms in [700, 1500] {
        let action = Action::Twice(Signal::SIGINT, Duration::from_millis(ms));
        let (done, seen) = run_and_check(&sandbox, &["run"], action);
        assert_eq!(done.status.code(), Some(130), "{action:?}: the second SIGINT exits 130:\n{}\n{}", done.stdout, done.stderr);
        assert!(!seen.netns.is_empty(), "{action:?}: it was interrupted before building anything: {seen:?}");
    }
}

#[test]
fn two_runs_at_once_both_pass_and_leave_nothing() {
    if !require::root("two_runs_at_once_both_pass_and_leave_nothing") {
        return;
    }
    let _serial = serial();
    let sandbox = Sandbox::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let before = sandbox.before();
    // Both run the same scenarios (same interface names, netlink priorities
    // and TCX positions) at the same time; one of them attaches with TCX.
    let args = ["run", "--filter", "traceparent"];
    let started = Instant::now();
    let a = sandbox.spawn(&args, dir.path(), "a");
    let b = sandbox.spawn(&args, dir.path(), "b");
    let sampler = Sampler::start(vec![a.id(), b.id()], before.exclude_ns.clone());
    let (ra, rb) = (wait(a, dir.path(), "a", started), wait(b, dir.path(), "b", started));
    let seen = sampler.finish();
    for (tag, r) in [("a", &ra), ("b", &rb)] {
        assert!(r.status.success(), "run {tag} failed: {:?}\n{}\n{}", r.status, r.stdout, r.stderr);
        let (passed, failed, _) = summary_counts(&r.stdout).expect("summary");
        assert!(passed >= 5 && failed == 0, "run {tag}:\n{}", r.stdout);
    }
    assert_eq!(summary_counts(&ra.stdout), summary_counts(&rb.stdout));
    let left = sandbox.leftovers(&before, &seen);
    assert!(left.is_empty(), "two runs left behind:\n  {}", left.join("\n  "));
    assert!(ra.tmp_left.is_empty() && rb.tmp_left.is_empty(), "temporary files: {:?} {:?}", ra.tmp_left, rb.tmp_left);
    assert_saw_resources(&seen, "two runs", true);
    // They really ran at the same time: both held topology namespaces at once.
    assert!(seen.all_busy > 10, "the two runs hardly overlapped ({} samples with both busy)", seen.all_busy);
    eprintln!("two runs at once: {:?} and {:?}; both busy in {} samples", ra.elapsed, rb.elapsed, seen.all_busy);
}

#[test]
fn a_replay_finished_or_interrupted_leaves_nothing() {
    if !require::root("a_replay_finished_or_interrupted_leaves_nothing") {
        return;
    }
    let _serial = serial();
    let sandbox = Sandbox::new();
    let pcap = workspace().join("fixtures/recorded-curl-keepalive.pcap");
    let args = ["replay", pcap.to_str().expect("utf-8"), "--local", "192.0.2.2", "--chain", "agent,counter,drop@netlink:10"];
    let (done, seen) = run_and_check(&sandbox, &args, Action::None);
    assert!(done.status.success(), "{:?}\n{}\n{}", done.status, done.stdout, done.stderr);
    assert_saw_resources(&seen, "replay", true);
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        let (done, _) = run_and_check(&sandbox, &args, Action::Signal(sig, Duration::from_millis(150)));
        eprintln!("replay, {sig:?} after 150 ms: {:?} after {:?}", done.status, done.elapsed);
    }
}

#[test]
fn a_killed_run_leaves_nothing() {
    if !require::root("a_killed_run_leaves_nothing") {
        return;
    }
    let _serial = serial();
    let sandbox = Sandbox::new();
    // SIGKILL runs no handler and no destructor: the kernel alone must clean
    // up (fd-held namespaces, fd-owned programs and links).
    for ms in [1000, 2500] {
        let action = Action::Signal(Signal::SIGKILL, Duration::from_millis(ms));
        let (done, seen) = run_and_check(&sandbox, &["run"], action);
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&done.status), Some(9), "{action:?}");
        assert!(!seen.netns.is_empty() && !seen.progs.is_empty(), "{action:?}: killed before any scenario ran: {seen:?}");
        assert!(done.tmp_left.is_empty(), "{action:?}: a host run left temporary files: {:?}", done.tmp_left);
    }
}

/// The matrix kernel used by the QEMU tests, if QEMU and a fetched kernel are there.
fn matrix_kernel(test: &str) -> Option<&'static str> {
    use tclab_lab::kernels::{self, Cache, Catalog};
    const KERNEL: &str = "6.12";
    if !require::program(test, "qemu-system-x86_64", "apt-get install qemu-system-x86 (see .ci/run)") {
        return None;
    }
    let catalog = Catalog::load(&kernels::default_manifest_dir()).expect("manifests load");
    let dir = Cache::default_location().expect("cache location").dir_for(catalog.get(KERNEL).expect("manifest"));
    require::path(test, &dir.join("verified"), "run `tclab kernels fetch` first").then_some(KERNEL)
}

#[test]
fn kernel_matrix_runs_stopped_or_killed_leave_no_qemu() {
    if !require::root("kernel_matrix_runs_stopped_or_killed_leave_no_qemu") {
        return;
    }
    let Some(kernel) = matrix_kernel("kernel_matrix_runs_stopped_or_killed_leave_no_qemu") else { return };
    let _serial = serial();
    let sandbox = Sandbox::new();
    let args = ["run", "--kernel", kernel, "--filter", "traceparent"];
    // A whole cell first: QEMU was really started, and nothing outlives it.
    // (Whether its scenarios pass is scenarios_host's and matrix's business.)
    let (done, seen) = run_and_check(&sandbox, &args, Action::None);
    assert!(matches!(done.status.code(), Some(0 | 1)) && summary_counts(&done.stdout).is_some(), "{:?}\n{}\n{}", done.status, done.stdout, done.stderr);
    assert!(seen.children.iter().any(|c| c.starts_with("qemu-system")), "no QEMU seen: {seen:?}");
    // Stopped while the VM runs: the cell is cancelled and its QEMU killed;
    // SIGKILL: QEMU dies with tclab (PR_SET_PDEATHSIG), else it would be
    // reparented to this test (a subreaper) and found.
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGKILL] {
        let action = Action::Signal(sig, Duration::from_millis(3000));
        let (done, seen) = run_and_check(&sandbox, &args, action);
        assert!(
            seen.children.iter().any(|c| c.starts_with("qemu-system")),
            "{action:?}: QEMU was not running when the signal came: {seen:?}\n{}\n{}",
            done.stdout,
            done.stderr
        );
        if sig != Signal::SIGKILL {
            assert!(!done.status.success(), "{action:?}: a cancelled cell must fail the run:\n{}", done.stdout);
        }
        eprintln!("kernel {kernel}, {sig:?} after 3 s: {:?} after {:?}; temporary files left: {:?}", done.status, done.elapsed, done.tmp_left);
    }
}
