//! `tclab-agent run` as a process: started inside a throwaway namespace (the
//! child inherits the namespace of the thread that spawns it), stopped with
//! SIGTERM or SIGINT: it must exit 0 and leave no netlink filter or clsact
//! behind. Also `ct list` and `chain` against the running process.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tclab_datapath::attach::NETLINK_HANDLE;
use tclab_net::NetNs;
use tclab_net::tc::{self, Direction};

fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid C string.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

fn ours_attached(idx: u32) -> usize {
    [Direction::Ingress, Direction::Egress]
        .into_iter()
        .map(|d| tc::list_filters(idx, d).unwrap().iter().filter(|f| f.handle == NETLINK_HANDLE).count())
        .sum()
}

fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tclab-agent did not exit within {timeout:?} of the signal");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stop_with(sig: Signal, tag: &str) {
    let ns = NetNs::new(&format!("sig-{tag}")).unwrap();
    let peer = NetNs::new(&format!("sig-{tag}-p")).unwrap();
    tclab_net::create_veth_pair(&ns, "sdut", &peer, "speer", None).unwrap();
    ns.run(|| {
        let idx = ifindex("sdut");
        let mut child = Command::new(env!("CARGO_BIN_EXE_tclab-agent"))
            .args(["run", "--iface", "sdut", "--backend", "netlink", "--metrics-addr", "127.0.0.1:0"])
            .args(["--ct-max-entries", "1024"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tclab-agent");
        let deadline = Instant::now() + Duration::from_secs(20);
        while ours_attached(idx) < 2 {
            if let Some(st) = child.try_wait().unwrap() {
                let out = child.wait_with_output().unwrap();
                panic!("tclab-agent exited early ({st}): {}", String::from_utf8_lossy(&out.stderr));
            }
            assert!(Instant::now() < deadline, "tclab-agent never attached");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The other subcommands see the running agent.
        let chain = Command::new(env!("CARGO_BIN_EXE_tclab-agent")).args(["chain", "--iface", "sdut", "--output", "json"]).output().unwrap();
        assert!(chain.status.success(), "{}", String::from_utf8_lossy(&chain.stderr));
        let chain: serde_json::Value = serde_json::from_slice(&chain.stdout).unwrap();
        assert_eq!(chain["ingress"][0]["handle"], NETLINK_HANDLE);
        assert_eq!(chain["ingress"][0]["name"], "tclab_ingress");

        // Some traffic for the CT table: one UDP datagram out of the device
        // (a static neighbour, so it leaves at once instead of waiting for ARP).
        tclab_net::add_address(&ns, "sdut", "10.79.0.1".parse().unwrap(), 24).unwrap();
        tclab_net::add_neighbour(&ns, "sdut", "10.79.0.2".parse().unwrap(), [0x02, 0, 0, 0, 0, 0x02]).unwrap();
        let sock = std::net::UdpSocket::bind("10.79.0.1:5555").unwrap();
        sock.send_to(b"x", "10.79.0.2:53").unwrap();
        let ct = Command::new(env!("CARGO_BIN_EXE_tclab-agent"))
            .args(["ct", "list", "--pid", &child.id().to_string()])
            .output()
            .unwrap();
        assert!(ct.status.success(), "{}", String::from_utf8_lossy(&ct.stderr));
        let ct = String::from_utf8_lossy(&ct.stdout);
        assert!(
            ct.lines().any(|l| l.starts_with("UDP OUT 10.79.0.1:5555 -> 10.79.0.2:53 expires=") && l.contains("TxPackets=1 ")),
            "ct list output:\n{ct}"
        );
        kill(Pid::from_raw(child.id() as i32), sig).unwrap();
        let status = wait_exit(&mut child, Duration::from_secs(10));
        let mut stderr = String::new();
        use std::io::Read;
        child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        assert_eq!(status.code(), Some(0), "exit status after {sig}: {status}; stderr:\n{stderr}");
        assert_eq!(ours_attached(idx), 0, "filters left after {sig}");
        assert!(tc::list_filters(idx, Direction::Ingress).unwrap().is_empty());
        assert!(!tc::has_clsact(idx).unwrap(), "the clsact qdisc the agent added is removed");
    });
}

#[test]
fn sigterm_detaches_and_exits_zero() {
    if !tclab_net::require::root("sigterm_detaches_and_exits_zero") {
        return;
    }
    stop_with(Signal::SIGTERM, "term");
}

#[test]
fn sigint_detaches_and_exits_zero() {
    if !tclab_net::require::root("sigint_detaches_and_exits_zero") {
        return;
    }
    stop_with(Signal::SIGINT, "int");
}

#[test]
fn startup_error_exits_one() {
    let out = Command::new(env!("CARGO_BIN_EXE_tclab-agent"))
        .args(["run", "--iface", "no-such-dev0", "--backend", "netlink", "--metrics-addr", "127.0.0.1:0"])
        .args(["--ct-max-entries", "1024"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("failed to start the agent on no-such-dev0"), "{err}");
}
