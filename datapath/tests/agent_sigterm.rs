//! `tclab-agent run` as a process: started inside a throwaway namespace (the
//! child inherits the namespace of the thread that spawns it), stopped with
//! SIGTERM or SIGINT: it must exit 0 and leave no netlink filter or clsact
//! behind. Also `ct list` and `chain` against the running process, and its
//! OTLP export (configured by flag or by the standard environment variables)
//! to an in-test collector.

mod otlp_collector;

use std::net::{SocketAddr, TcpListener, TcpStream};
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

/// Kills the agent if the test fails before it is stopped on purpose, so
/// no `tclab-agent` (and the namespace it holds) outlives a failed test.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
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

/// From `ns` (10.79.0.1) to an HTTP server in `peer` (10.79.0.2:8080);
/// returns the client's address.
fn http_exchange(ns: &NetNs, peer: &NetNs) -> SocketAddr {
    use std::io::{Read, Write};
    tclab_net::add_address(ns, "sdut", "10.79.0.1".parse().unwrap(), 24).unwrap();
    tclab_net::add_address(peer, "speer", "10.79.0.2".parse().unwrap(), 24).unwrap();
    let listener = peer.run(|| TcpListener::bind("10.79.0.2:8080").unwrap());
    std::thread::scope(|s| {
        s.spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            let mut buf = [0u8; 512];
            let n = c.read(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"GET /cli HTTP/1.1"));
            c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap();
        });
        let mut c = TcpStream::connect_timeout(&"10.79.0.2:8080".parse().unwrap(), Duration::from_secs(5)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"GET /cli HTTP/1.1\r\nHost: peer\r\n\r\n").unwrap();
        let mut resp = [0u8; 64];
        let n = c.read(&mut resp).unwrap();
        assert!(resp[..n].starts_with(b"HTTP/1.1 200 OK"));
        c.local_addr().unwrap()
    })
}

/// `ct list` (text and JSON) against the running agent by pid.
fn ct_list_shows(pid: u32, client: SocketAddr) {
    let run = |json: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tclab-agent"));
        cmd.args(["ct", "list", "--pid", &pid.to_string()]);
        if json {
            cmd.args(["--output", "json"]);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    // Both sides have closed: wait for both FINs to be tracked.
    let deadline = Instant::now() + Duration::from_secs(5);
    let entry = loop {
        let json: serde_json::Value = serde_json::from_str(&run(true)).unwrap();
        let entry = json.as_array().unwrap().iter().find(|e| e["tuple"]["sport"] == client.port()).cloned();
        match entry {
            Some(e) if e["state"] == "CLOSING" => break e,
            other => assert!(Instant::now() < deadline, "no CLOSING JSON entry for {client}: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(entry["tuple"]["dport"], 8080);
    assert!(entry["entry"]["tx_packets"].as_u64().unwrap() >= 4, "{entry}");
    let text = run(false);
    let head = format!("TCP OUT {client} -> 10.79.0.2:8080 expires=");
    let line = text.lines().find(|l| l.starts_with(&head)).unwrap_or_else(|| panic!("no {head} in:\n{text}"));
    assert!(line.contains(" RxPackets=") && line.contains(" TxFlagsSeen=0x1b"), "{line}");
    assert!(line.ends_with("[ RxClosing TxClosing SeenNonSyn ]"), "{line}");
}

/// How the child is told where to export.
#[derive(Clone, Copy)]
enum OtlpVia {
    /// `--otlp-endpoint BASE`.
    Flag,
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=BASE/v1/traces` and `OTEL_SERVICE_NAME`.
    Env,
}

/// The collector got the span the child printed: same trace and span ids,
/// a client span of the exchange.
fn check_export(collector: &otlp_collector::Collector, line: &str, client: SocketAddr, via: OtlpVia) {
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind as Kind;
    let tp = line.split("traceparent=[00-").nth(1).expect("traceparent in the span line");
    let (trace, rest) = tp.split_once('-').unwrap();
    let span_id = &rest[..16];
    let got = collector.next(Duration::from_secs(10)).expect("an OTLP export from tclab-agent");
    assert_eq!(got.path, "/v1/traces");
    let want_service = match via {
        OtlpVia::Flag => "tclab",
        OtlpVia::Env => "from-env",
    };
    assert_eq!(got.service_name().as_deref(), Some(want_service));
    let spans = got.spans();
    assert_eq!(spans.len(), 1);
    let o = spans[0];
    assert_eq!((hex::encode(&o.trace_id), hex::encode(&o.span_id)), (trace.to_owned(), span_id.to_owned()), "{line}");
    assert!(o.parent_span_id.is_empty(), "a new trace has no parent");
    assert_eq!((o.kind, o.name.as_str()), (Kind::Client as i32, "GET /cli"));
    assert_eq!(otlp_collector::int_attr(o, "client.port"), Some(i64::from(client.port())));
    assert_eq!(otlp_collector::str_attr(o, "url.full").as_deref(), Some("http://peer:8080/cli"));
}

fn stop_with(sig: Signal, tag: &str, via: OtlpVia) {
    let ns = NetNs::new(&format!("sig-{tag}")).unwrap();
    let peer = NetNs::new(&format!("sig-{tag}-p")).unwrap();
    tclab_net::create_veth_pair(&ns, "sdut", &peer, "speer", None).unwrap();
    ns.run(|| {
        let idx = ifindex("sdut");
        let collector = otlp_collector::Collector::start();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tclab-agent"));
        cmd.args(["run", "--iface", "sdut", "--backend", "netlink", "--metrics-addr", "127.0.0.1:0"])
            .args(["--ct-max-entries", "1024"])
            .env("OTEL_BSP_SCHEDULE_DELAY", "50");
        match via {
            OtlpVia::Flag => cmd.args(["--otlp-endpoint", &collector.base_url()]),
            OtlpVia::Env => cmd
                .env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", format!("{}/v1/traces", collector.base_url()))
                .env("OTEL_SERVICE_NAME", "from-env"),
        };
        let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn tclab-agent");
        let mut guard = ChildGuard(child);
        let child = &mut guard.0;
        let stdout = child.stdout.take().unwrap();
        let (tx, stdout_lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while ours_attached(idx) < 2 {
            if let Some(st) = child.try_wait().unwrap() {
                let mut err = String::new();
                let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err);
                panic!("tclab-agent exited early ({st}): {err}");
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
        assert_eq!(chain["ingress"][0]["ours"], true);
        assert_eq!(chain["egress"][0]["name"], "tclab_egress");

        // A real HTTP exchange out of the device: the child prints a client span.
        let client = http_exchange(&ns, &peer);
        let line = stdout_lines.recv_timeout(Duration::from_secs(10)).expect("a span line on stdout");
        let expect = format!(") HTTPClient 200 GET /cli [{client}]->[10.79.0.2:8080] size:0B svc=[tclab tc] traceparent=[00-");
        assert!(line.contains(&expect), "{line}\nexpected: {expect}");
        check_export(&collector, &line, client, via);
        ct_list_shows(child.id(), client);
        kill(Pid::from_raw(child.id() as i32), sig).unwrap();
        let status = wait_exit(child, Duration::from_secs(10));
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
    stop_with(Signal::SIGTERM, "term", OtlpVia::Flag);
}

#[test]
fn sigint_detaches_and_exits_zero() {
    if !tclab_net::require::root("sigint_detaches_and_exits_zero") {
        return;
    }
    stop_with(Signal::SIGINT, "int", OtlpVia::Env);
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

#[test]
fn a_bad_otlp_endpoint_is_a_startup_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_tclab-agent"))
        .args(["run", "--iface", "lo", "--metrics-addr", "127.0.0.1:0"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector.invalid:4318")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("OTEL_EXPORTER_OTLP_ENDPOINT") && err.contains("https"), "{err}");
}
