//! This test process in a cgroup v2 of its own, for the propagation tests:
//! the socket programs attach to that cgroup, so only this process's
//! sockets are in scope. Included with `#[path]` by the tests that need it.

use std::path::PathBuf;

use tclab_datapath::propagation::cgroup2_mount;

/// This process in a cgroup of its own until drop (then back where it was).
pub struct OwnCgroup {
    pub dir: PathBuf,
    original: PathBuf,
}

impl OwnCgroup {
    /// `tag` names the folder (`tclab-<tag>-<pid>`), so that a leftover
    /// says which test made it.
    pub fn enter(tag: &str) -> OwnCgroup {
        let mount = cgroup2_mount().expect("a cgroup2 mount");
        let own = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
        let rel = own.lines().find_map(|l| l.strip_prefix("0::")).expect("a cgroup v2 line");
        let original = mount.join(rel.trim_start_matches('/'));
        let dir = mount.join(format!("tclab-{tag}-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
            .unwrap_or_else(|e| panic!("move this process into {}: {e}", dir.display()));
        OwnCgroup { dir, original }
    }
}

impl Drop for OwnCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.original.join("cgroup.procs"), std::process::id().to_string());
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Propagation started for the cgroup, its classifiers on `lo` of the
/// test's namespace (dropped before the programs: declared first).
pub struct Started {
    _links: Vec<tclab_datapath::attach::Attachment>,
    pub p: tclab_datapath::propagation::Propagation,
}

/// Start propagation in `mode` for `cg`, with its classifiers (TCX) on `lo` of `ns`.
pub fn start_propagation(mode: tclab_datapath::propagation::Mode, cg: &OwnCgroup, ns: &tclab_net::NetNs) -> Started {
    start_programs(mode, tclab_datapath::propagation::Programs::Full, cg, ns)
}

/// [`start_propagation`] with a choice of build of the programs.
pub fn start_programs(
    mode: tclab_datapath::propagation::Mode,
    programs: tclab_datapath::propagation::Programs,
    cg: &OwnCgroup,
    ns: &tclab_net::NetNs,
) -> Started {
    use tclab_datapath::attach::{self, Api, DeviceState};
    use tclab_datapath::loader::Hook;
    use tclab_datapath::propagation::{Correlation, Propagation, PropagationConfig};

    let cfg = PropagationConfig { mode, cgroup: Some(cg.dir.clone()), programs, ..PropagationConfig::default() };
    let mut p = Propagation::start(&cfg).expect("propagation starts");
    assert_eq!(p.correlation(), &Correlation::On, "the host kernel correlates");
    let device = DeviceState::default();
    let links = ns.run(|| {
        let mut links = Vec::new();
        for (hook, dir) in [(Hook::Ingress, tclab_net::tc::Direction::Ingress), (Hook::Egress, tclab_net::tc::Direction::Egress)] {
            if let Some(prog) = p.classifier_mut(hook) {
                let name = Propagation::classifier_name(hook);
                links.push(attach::attach(prog, name, "lo", dir, Api::Tcx, 1, &device).expect("attach on lo"));
            }
        }
        links
    });
    Started { _links: links, p }
}

/// Two services in a fresh namespace: `front` (whose serving thread calls
/// `down`) and `down`, each on its own loopback port.
pub struct Setup {
    pub ns: tclab_net::NetNs,
    pub front: std::net::SocketAddr,
    pub down: std::net::SocketAddr,
}

/// Start `serve_down` and `serve_front` (given down's address) on
/// threads spawned from inside the namespace `ns_name`, so the threads and
/// their connections live there.
pub fn front_and_down(
    ns_name: &str,
    serve_front: fn(std::net::TcpListener, std::net::SocketAddr),
    serve_down: fn(std::net::TcpListener),
) -> Setup {
    use std::net::TcpListener;
    let ns = tclab_net::NetNs::new(ns_name).expect("create the test namespace");
    let (front_l, down_l) = ns.run(|| (TcpListener::bind("127.0.0.1:0").unwrap(), TcpListener::bind("127.0.0.1:0").unwrap()));
    let (front, down) = (front_l.local_addr().unwrap(), down_l.local_addr().unwrap());
    ns.run(move || {
        std::thread::spawn(move || serve_down(down_l));
        std::thread::spawn(move || serve_front(front_l, down));
    });
    Setup { ns, front, down }
}
