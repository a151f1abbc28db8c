//! `tclab run --report DIR`: results.json, junit.xml and report.html, from a
//! synthetic run with a failed scenario, a diverged one, a skip and a cell
//! whose kernel panicked (no VM needed), then from one small real run
//! (host + one QEMU cell, sharded). The page is loaded in Debian's
//! headless chromium, driven over the DevTools protocol (`--remote-debugging-pipe`):
//! it loads, shows the grid, and clicking a failed cell reveals its diff.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tclab_lab::guest::LockdownMode;
use tclab_lab::matrix::CellReport;
use tclab_lab::report::{self, HostRun, Report, Verdict};
use tclab_lab::runner::report::ScenarioResult;
use tclab_lab::runner::{ScenarioOutcome, Status};
use tclab_lab::scenario::Lockdown;

const EVIL: &str = "evil <img src=x onerror=\"document.body.dataset.pwned=1\"> & </pre><script>window.pwned=1</script>";
const DIFF: &str = "--- scenarios/snapshots/http-get.snap\n+++ actual\n@@ -3,2 +3,2 @@\n   chain:\n-    ingress netlink prio=1 tclab_ingress\n+    ingress tcx tclab_ingress\n";

fn outcome(scenario: &str, kernel: &str, lockdown: Lockdown, status: Status) -> ScenarioOutcome {
    ScenarioOutcome {
        scenario: scenario.into(),
        file: PathBuf::from(format!("scenarios/{}.toml", scenario.split_whitespace().next().unwrap_or("x"))),
        kernel: kernel.into(),
        lockdown,
        status,
        result: None,
        diff: None,
        snapshot: None,
        duration_ms: 1234,
    }
}

fn with_output(mut o: ScenarioOutcome, lines: &[&str]) -> ScenarioOutcome {
    let mut r = ScenarioResult::new(&o.scenario, &o.kernel);
    r.output = lines.iter().map(|l| l.to_string()).collect();
    o.result = Some(r);
    o
}

fn snap(o: ScenarioOutcome, file: &str) -> ScenarioOutcome {
    ScenarioOutcome { snapshot: Some(PathBuf::from(format!("scenarios/snapshots/{file}"))), ..o }
}

/// host (all pass), 5.10/none (a failure with a diff, a declared divergence,
/// a skip), 6.12/integrity (kernel panic: the cell fails, scenarios unreported).
fn synthetic() -> Report {
    let host = HostRun {
        outcomes: vec![
            with_output(
                snap(outcome("http-get", "host", Lockdown::None, Status::Passed), "http-get.snap"),
                &["10.0.0.1:80 > 10.0.0.2:5555 TCP [ACK,PSH] len=120"],
            ),
            snap(outcome("keepalive", "host", Lockdown::None, Status::Passed), "keepalive.snap"),
            snap(outcome("tcx-only", "host", Lockdown::None, Status::Passed), "tcx-only.snap"),
            snap(outcome(EVIL, "host", Lockdown::None, Status::Passed), "evil.snap"),
        ],
        capabilities: Some("btf: true\ntcx: true\nnotes: []\n".into()),
    };
    // The capability outcome's file is the kernel manifest.
    let caps = |kernel: &str, lockdown: &str| ScenarioOutcome {
        file: PathBuf::from(format!("kernels/{kernel}.toml")),
        ..snap(outcome("capabilities", kernel, Lockdown::None, Status::Passed), &format!("capabilities@{kernel}+{lockdown}.snap"))
    };
    let mut failed = with_output(
        snap(
            outcome(
                "http-get",
                "5.10",
                Lockdown::None,
                Status::Failed(vec![
                    "differs from scenarios/snapshots/http-get.snap".into(),
                    "check spans: expected 1 span, got 0".into(),
                ]),
            ),
            "http-get.snap",
        ),
        &["10.0.0.1:80 > 10.0.0.2:5555 TCP [RST] len=0"],
    );
    failed.diff = Some(DIFF.into());
    let cell_510 = CellReport {
        kernel: "5.10".into(),
        lockdown: LockdownMode::None,
        machine: Some("microvm".into()),
        boot_ms: Some(1100),
        first_scenario_ms: Some(3300),
        total_ms: 9000,
        failure: None,
        console_excerpt: vec!["[    0.000000] Linux version 5.10.0-32-cloud-amd64".into()],
        capabilities: Some("btf: true\ntcx: false\nnotes: []\n".into()),
        outcomes: vec![
            caps("5.10", "none"),
            failed,
            snap(outcome("keepalive", "5.10", Lockdown::None, Status::Passed), "keepalive@5.10.snap"),
            outcome("tcx-only", "5.10", Lockdown::None, Status::Skipped("needs tcx".into())),
            snap(outcome(EVIL, "5.10", Lockdown::None, Status::Passed), "evil.snap"),
        ],
    };
    let why = "not reported: cell 6.12/integrity failed: KernelTrouble: kernel panic on the guest console; VM killed";
    let cell_612 = CellReport {
        kernel: "6.12".into(),
        lockdown: LockdownMode::Integrity,
        machine: Some("microvm".into()),
        boot_ms: Some(1300),
        first_scenario_ms: None,
        total_ms: 4000,
        failure: Some("KernelTrouble: kernel panic on the guest console; VM killed".into()),
        console_excerpt: vec![
            "[    2.1] \u{1b}[31mKernel panic - not syncing: Attempted to kill init!\u{1b}[0m".into(),
            "[    2.2] </pre><b>not bold</b>".into(),
        ],
        capabilities: Some("btf: true\ntcx: true\nnotes:\n  - bpf_loop probe failed\n".into()),
        outcomes: vec![
            caps("6.12", "integrity"),
            outcome("http-get", "6.12", Lockdown::Integrity, Status::Failed(vec![why.into()])),
            outcome("keepalive", "6.12", Lockdown::Integrity, Status::Failed(vec![why.into()])),
            outcome("tcx-only", "6.12", Lockdown::Integrity, Status::Failed(vec![why.into()])),
            outcome(EVIL, "6.12", Lockdown::Integrity, Status::Failed(vec![why.into()])),
        ],
    };
    Report::build(Some(&host), &[cell_510, cell_612], Some("1/1".into()))
}

#[test]
fn verdicts_tell_diverged_from_pass_and_cross_kernel_flags_the_regression() {
    let r = synthetic();
    let labels: Vec<String> = r.cells.iter().map(|c| c.label()).collect();
    assert_eq!(labels, ["host/none", "5.10/none", "6.12/integrity"]);
    let status = |cell: usize, name: &str| r.cells[cell].scenarios.iter().find(|e| e.scenario == name).map(|e| e.status);
    assert_eq!(status(0, "keepalive"), Some(Verdict::Pass));
    assert_eq!(status(1, "keepalive"), Some(Verdict::Diverged), "passed against keepalive@5.10.snap");
    assert_eq!(status(1, "capabilities"), Some(Verdict::Pass), "per-cell capability snapshots are no divergence");
    assert_eq!(status(1, "tcx-only"), Some(Verdict::Skip));
    assert_eq!(status(1, "http-get"), Some(Verdict::Fail));
    let counts = r.counts();
    assert_eq!((counts.passed, counts.diverged, counts.skipped, counts.failed), (7, 1, 1, 5), "{counts:?}");

    let cross: BTreeMap<String, report::CrossRow> = r.cross_kernel().into_iter().map(|c| (c.scenario.clone(), c)).collect();
    assert!(!cross.contains_key("capabilities"));
    let http = &cross["http-get"];
    assert_eq!(http.agree, ["host/none"]);
    assert_eq!(http.fail, ["5.10/none", "6.12/integrity"]);
    assert!(http.regression);
    let keep = &cross["keepalive"];
    assert_eq!((keep.agree.as_slice(), keep.diverge.as_slice()), (&["host/none".to_string()][..], &["5.10/none".to_string()][..]));
    let tcx = &cross["tcx-only"];
    assert_eq!(tcx.skip, ["5.10/none"]);
}

#[test]
fn results_json_is_versioned_complete_and_reads_back() {
    let r = synthetic();
    let text = report::json::render(&r).expect("renders");
    let doc: Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(doc["schema"], report::SCHEMA);
    assert_eq!(doc["shard"], "1/1");
    assert_eq!(doc["summary"], json!({"cells": 3, "failed_cells": 2, "passed": 7, "diverged": 1, "skipped": 1, "failed": 5}));
    let cell = &doc["cells"][1];
    assert_eq!((cell["kernel"].as_str(), cell["lockdown"].as_str(), cell["boot_ms"].as_u64()), (Some("5.10"), Some("none"), Some(1100)));
    let http = cell["scenarios"].as_array().expect("scenarios").iter().find(|s| s["scenario"] == "http-get").expect("http-get");
    assert_eq!(http["status"], "fail");
    assert_eq!(http["reasons"][1], "check spans: expected 1 span, got 0");
    assert_eq!(http["diff"], DIFF);
    assert_eq!(http["duration_ms"], 1234);
    assert_eq!(http["output"][0], "10.0.0.1:80 > 10.0.0.2:5555 TCP [RST] len=0");
    let keep = cell["scenarios"].as_array().expect("scenarios").iter().find(|s| s["scenario"] == "keepalive").expect("keepalive");
    assert_eq!(keep["status"], "diverged");
    assert!(keep["reasons"][0].as_str().is_some_and(|r| r.contains("5.10")), "{keep}");
    let failed_cell = &doc["cells"][2];
    assert!(failed_cell["failure"].as_str().is_some_and(|f| f.contains("KernelTrouble")));
    assert_eq!(doc["cells"][0]["kernel"], "host");
    assert_eq!(doc["cross_kernel"][0]["scenario"], "http-get");

    // Read back (what merging shard reports does), and refuse other schemas.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("results.json");
    std::fs::write(&path, &text).expect("write");
    assert_eq!(report::json::read(dir.path()).expect("reads back"), r);
    let old = text.replacen(&format!("\"schema\": {}", report::SCHEMA), "\"schema\": 2", 1);
    let e = report::json::parse(&path, &old).expect_err("schema 2 refused").to_string();
    assert!(e.contains("schema 2") && e.contains("results.json"), "{e}");
}

#[test]
fn merged_shards_hold_every_cell_once_in_canonical_order() {
    let r = synthetic();
    let mut a = r.clone();
    a.cells.retain(|c| c.kernel == "6.12");
    a.shard = Some("1/2".into());
    let mut b = r.clone();
    b.cells.retain(|c| c.kernel != "6.12");
    b.shard = Some("2/2".into());
    let merged = Report::merge(vec![a, b]);
    assert_eq!(merged.cells, r.cells);
    assert_eq!(merged.shard.as_deref(), Some("1/2,2/2"));
}

/// The JUnit structure CI readers rely on (the common subset of the Jenkins
/// JUnit schema, GitLab's parser and the GitHub Actions reporters).
fn check_junit_structure(xml: &str) -> roxmltree::Document<'_> {
    let doc = roxmltree::Document::parse(xml).unwrap_or_else(|e| panic!("junit.xml is not well-formed XML: {e}\n{xml}"));
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "testsuites");
    let num = |n: roxmltree::Node, a: &str| -> usize {
        n.attribute(a).unwrap_or_else(|| panic!("<{}> lacks {a}", n.tag_name().name())).parse().expect("a count")
    };
    let secs = |n: roxmltree::Node| {
        let t: f64 = n.attribute("time").expect("time").parse().expect("time in seconds");
        assert!(t >= 0.0);
    };
    let (mut tests, mut failures, mut skipped) = (0, 0, 0);
    for suite in root.children().filter(|n| n.is_element()) {
        assert_eq!(suite.tag_name().name(), "testsuite");
        let name = suite.attribute("name").expect("suite name");
        secs(suite);
        let (mut t, mut f, mut s) = (0, 0, 0);
        for child in suite.children().filter(|n| n.is_element()) {
            match child.tag_name().name() {
                "properties" => {
                    for p in child.children().filter(|n| n.is_element()) {
                        assert_eq!(p.tag_name().name(), "property");
                        assert!(p.attribute("name").is_some() && p.attribute("value").is_some());
                    }
                }
                "system-out" | "system-err" => {}
                "testcase" => {
                    t += 1;
                    assert_eq!(child.attribute("classname"), Some(name), "classname is kernel/lockdown");
                    assert!(child.attribute("name").is_some_and(|n| !n.is_empty()));
                    secs(child);
                    let kids: Vec<&str> = child.children().filter(|n| n.is_element()).map(|n| n.tag_name().name()).collect();
                    for k in &kids {
                        assert!(["failure", "skipped", "system-out", "system-err"].contains(k), "unexpected <{k}>");
                    }
                    if kids.contains(&"failure") {
                        f += 1;
                        assert!(!kids.contains(&"skipped"));
                    }
                    if kids.contains(&"skipped") {
                        s += 1;
                    }
                }
                other => panic!("unexpected <{other}> in <testsuite>"),
            }
        }
        assert_eq!((num(suite, "tests"), num(suite, "failures"), num(suite, "skipped"), num(suite, "errors")), (t, f, s, 0), "suite {name}");
        tests += t;
        failures += f;
        skipped += s;
    }
    assert_eq!((num(root, "tests"), num(root, "failures"), num(root, "skipped")), (tests, failures, skipped));
    doc
}

#[test]
fn junit_has_a_case_per_cell_and_scenario_with_reasons_and_diffs() {
    let r = synthetic();
    let xml = report::junit::render(&r);
    let doc = check_junit_structure(&xml);
    let root = doc.root_element();
    // host: 4 scenarios; QEMU cells: the VM's own case, capabilities, 4 scenarios.
    assert_eq!(root.attribute("tests"), Some("16"));
    // 5 failed scenarios + the 6.12/integrity VM itself.
    assert_eq!(root.attribute("failures"), Some("6"));
    assert_eq!(root.attribute("skipped"), Some("1"));
    let case = |class: &str, name: &str| {
        doc.descendants()
            .find(|n| n.has_tag_name("testcase") && n.attribute("classname") == Some(class) && n.attribute("name") == Some(name))
            .unwrap_or_else(|| panic!("no testcase {class} {name}"))
    };
    let http = case("5.10/none", "http-get");
    let failure = http.children().find(|n| n.has_tag_name("failure")).expect("failure");
    assert!(failure.attribute("message").is_some_and(|m| m.contains("check spans: expected 1 span")));
    let body = failure.text().expect("failure text");
    assert!(body.contains("+    ingress tcx tclab_ingress"), "the diff is in the failure: {body}");
    assert!(body.contains("TCP [RST]"), "the output summary too: {body}");
    assert_eq!(http.attribute("time"), Some("1.234"));
    let skip = case("5.10/none", "tcx-only").children().find(|n| n.has_tag_name("skipped")).expect("skipped");
    assert_eq!(skip.attribute("message"), Some("needs tcx"));
    let diverged = case("5.10/none", "keepalive");
    assert!(diverged.children().all(|n| !n.has_tag_name("failure")));
    assert!(diverged.children().find(|n| n.has_tag_name("system-out")).and_then(|n| n.text()).is_some_and(|t| t.contains("diverged")));
    let vm = case("6.12/integrity", "cell").children().find(|n| n.has_tag_name("failure")).expect("cell failure");
    assert!(vm.text().is_some_and(|t| t.contains("Kernel panic - not syncing") && t.contains("\u{241B}[31m")), "console, ESC made visible");
    let evil = case("host/none", EVIL);
    assert_eq!(evil.attribute("name"), Some(EVIL), "names survive escaping");
}

#[test]
fn html_is_self_contained_and_escapes_run_data() {
    let page = report::html::render(&synthetic());
    assert!(page.contains("Content-Security-Policy\" content=\"default-src 'none'"), "no network");
    assert_eq!(page.matches("<script>").count(), 1, "only the page's own script");
    assert!(!page.contains("<img"), "run data is escaped");
    assert!(page.contains("evil &lt;img src=x onerror=&quot;document.body.dataset.pwned=1&quot;&gt; &amp; &lt;/pre&gt;"));
    for needle in ["src=\"", "href=\"http", "@import", "url("] {
        assert!(!page.contains(needle), "{needle} would load something");
    }
    assert!(!page.contains('\u{1b}'), "control characters are shown as pictures");
}

// ---- the page in a real browser -------------------------------------------

/// Headless chromium driven over `--remote-debugging-pipe` (fd 3: commands
/// in, fd 4: replies out, NUL-separated JSON).
struct Browser {
    child: Child,
    to: File,
    from: File,
    buf: Vec<u8>,
    next: u64,
    session: String,
    _profile: tempfile::TempDir,
}

const TIMEOUT: Duration = Duration::from_secs(60);

impl Browser {
    fn open(url: &str) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let (cmd_r, cmd_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
        let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
        let (cmd_fd, out_fd) = (cmd_r.as_raw_fd(), out_w.as_raw_fd());
        let mut cmd = Command::new("chromium");
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-pipe",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Move both ends above 4 first, so neither is clobbered by the other's dup2.
                let a = libc::fcntl(cmd_fd, libc::F_DUPFD, 10);
                let b = libc::fcntl(out_fd, libc::F_DUPFD, 10);
                if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("chromium starts");
        drop((cmd_r, out_w));
        let mut b = Browser {
            child,
            to: File::from(cmd_w),
            from: File::from(out_r),
            buf: Vec::new(),
            next: 0,
            session: String::new(),
            _profile: profile,
        };
        let started = Instant::now();
        let target = loop {
            let targets = b.call("Target.getTargets", json!({}));
            let page = targets["targetInfos"].as_array().and_then(|t| t.iter().find(|t| t["type"] == "page").cloned());
            if let Some(p) = page {
                break p["targetId"].as_str().expect("target id").to_string();
            }
            assert!(started.elapsed() < TIMEOUT, "no page target: {targets}");
            std::thread::sleep(Duration::from_millis(100));
        };
        let attached = b.call("Target.attachToTarget", json!({"targetId": target, "flatten": true}));
        b.session = attached["sessionId"].as_str().expect("session").to_string();
        // The first page may still be about:blank when attached.
        b.wait_for("location.protocol === 'file:' && document.readyState === 'complete'");
        b
    }

    fn read_message(&mut self) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(end) = self.buf.iter().position(|&c| c == 0) {
                let msg: Vec<u8> = self.buf.drain(..=end).collect();
                return serde_json::from_slice(&msg[..end]).expect("DevTools message is JSON");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "chromium did not answer within {TIMEOUT:?}");
            let mut fds = [nix::poll::PollFd::new(std::os::fd::AsFd::as_fd(&self.from), nix::poll::PollFlags::POLLIN)];
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            nix::poll::poll(&mut fds, ms).expect("poll");
            let mut chunk = [0u8; 65536];
            let n = self.from.read(&mut chunk).expect("read from chromium");
            assert!(n > 0, "chromium closed the DevTools pipe");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&msg).expect("encode");
        bytes.push(0);
        self.to.write_all(&bytes).expect("write to chromium");
        loop {
            let reply = self.read_message();
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page.
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({"expression": expr, "returnByValue": true, "awaitPromise": true}));
        assert!(r.get("exceptionDetails").is_none(), "{expr}: {r}");
        r["result"]["value"].clone()
    }

    fn wait_for(&mut self, expr: &str) {
        let started = Instant::now();
        while self.eval(expr) != json!(true) {
            assert!(started.elapsed() < TIMEOUT, "never true: {expr}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromium(test: &str) -> bool {
    tclab_net::require::program(test, "chromium", "apt-get install chromium (see .ci/run)")
}

fn file_url(path: &Path) -> String {
    format!("file://{}", path.canonicalize().expect("report exists").display())
}

/// What the grid shows: (rows, columns, texts of the cells' links).
fn grid(b: &mut Browser) -> (u64, u64) {
    let rows = b.eval("document.querySelectorAll('#grid tbody tr').length").as_u64().expect("rows");
    let cols = b.eval("document.querySelectorAll('#grid thead tr:nth-child(2) th').length").as_u64().expect("columns");
    (rows, cols)
}

#[test]
fn report_page_shows_the_grid_and_a_click_reveals_the_failed_diff() {
    if !chromium("report_page_in_chromium") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let r = synthetic();
    r.write(dir.path()).expect("reports written");
    let mut b = Browser::open(&file_url(&dir.path().join(report::REPORT_HTML)));
    assert_eq!(b.eval("document.title"), "tclab report (shard 1/1)");
    // 5 scenario rows (capabilities first), 3 cells.
    assert_eq!(grid(&mut b), (5, 3));
    assert_eq!(b.eval("document.querySelector('#grid tbody tr th').textContent"), "capabilities");
    assert_eq!(b.eval("document.querySelectorAll('#grid td.v-fail').length"), 5);
    assert_eq!(b.eval("document.querySelectorAll('#grid td.v-diverged').length"), 1);
    let visible = "(function(e){return !!e && e.checkVisibility() && e.getBoundingClientRect().height > 0})";

    // The failed 5.10 http-get: closed at first, its diff not shown.
    let link = "Array.from(document.querySelectorAll('#grid td.v-fail a')).find(a => a.title.startsWith('http-get on 5.10/none'))";
    let id = b.eval(&format!("{link}.getAttribute('href').slice(1)"));
    let id = id.as_str().expect("the failed cell links to its details").to_string();
    let diff = format!("document.getElementById('{id}').querySelector('pre.diff')");
    assert_eq!(b.eval(&format!("document.getElementById('{id}').open")), false);
    assert_eq!(b.eval(&format!("{visible}({diff})")), false, "diff hidden before the click");
    b.eval(&format!("{link}.click()"));
    b.wait_for(&format!("document.getElementById('{id}').open"));
    assert_eq!(b.eval(&format!("{visible}({diff})")), true, "diff visible after the click");
    let text = b.eval(&format!("{diff}.innerText"));
    assert!(text.as_str().is_some_and(|t| t.contains("+    ingress tcx tclab_ingress")), "{text}");
    let shown = b.eval(&format!("(function(r){{return r.top >= 0 && r.top < window.innerHeight}})(document.getElementById('{id}').getBoundingClientRect())"));
    assert_eq!(shown, true, "scrolled into view");
    let output = b.eval(&format!("document.getElementById('{id}').querySelector('pre.output').innerText"));
    assert!(output.as_str().is_some_and(|t| t.contains("TCP [RST]")), "{output}");

    // The panicked cell: its scenario details carry the console excerpt.
    let panic_link = "Array.from(document.querySelectorAll('#grid td.v-fail a')).find(a => a.title.startsWith('http-get on 6.12/integrity'))";
    b.eval(&format!("{panic_link}.click()"));
    let console = format!("document.getElementById({panic_link}.getAttribute('href').slice(1)).querySelector('pre.console')");
    b.wait_for(&format!("{visible}({console})"));
    let text = b.eval(&format!("{console}.innerText"));
    assert!(text.as_str().is_some_and(|t| t.contains("Kernel panic - not syncing") && t.contains("</pre><b>not bold</b>")), "{text}");

    // The cross-kernel view flags http-get; the capability table shows every cell.
    let regression = b.eval("Array.from(document.querySelectorAll('#cross-table tr.regression th')).map(t => t.textContent)");
    assert_eq!(regression, json!(["http-get regression", "keepalive regression", "tcx-only regression", format!("{EVIL} regression")]));
    assert_eq!(b.eval("document.querySelectorAll('#caps-table thead th').length"), 4);
    assert_eq!(b.eval("document.querySelector('#caps-table tr.differs th').textContent"), "tcx");

    // "Only failures" hides the rows that pass everywhere (capabilities).
    b.eval("document.getElementById('only-bad').click()");
    b.wait_for("document.querySelector('#grid tbody tr.ok').checkVisibility() === false");

    // Nothing was loaded and nothing injected ran.
    assert_eq!(b.eval("performance.getEntriesByType('resource').length"), 0);
    assert_eq!(b.eval("document.scripts.length"), 1);
    assert_eq!(b.eval("window.pwned === undefined && document.body.dataset.pwned === undefined"), true);
}

#[test]
fn a_url_fragment_opens_the_details_it_names() {
    if !chromium("report_fragment_in_chromium") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    synthetic().write(dir.path()).expect("reports written");
    let url = format!("{}#console-2", file_url(&dir.path().join(report::REPORT_HTML)));
    let mut b = Browser::open(&url);
    b.wait_for("document.getElementById('console-2').open");
    b.eval("location.hash = '#caps-1'");
    b.wait_for("document.getElementById('caps-1').open && document.getElementById('caps-1').classList.contains('target')");
}

// ---- one small real run -----------------------------------------------------

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("lab/ has a parent")
}

#[test]
fn tclab_run_shard_writes_the_three_reports_of_its_cells() {
    let test = "tclab_run_report";
    if !tclab_net::require::root(test)
        || !tclab_net::require::program(test, "qemu-system-x86_64", "apt-get install qemu-system-x86 (see .ci/run)")
        || !chromium(test)
    {
        return;
    }
    use tclab_lab::kernels::{self, Cache, Catalog};
    let catalog = Catalog::load(&kernels::default_manifest_dir()).expect("manifests");
    let cache = Cache::default_location().expect("cache");
    for k in ["5.10", "6.12"] {
        let dir = cache.dir_for(catalog.get(k).expect("manifest")).join("verified");
        if !tclab_net::require::path(test, &dir, "run `tclab kernels fetch` first") {
            return;
        }
    }
    // host, 5.10/none, 6.12/none in canonical order: shard 1/2 is host and 6.12/none.
    let out_dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_tclab"))
        .current_dir(workspace())
        .env("INSTA_UPDATE", "no")
        .args(["run", "--kernel", "host,5.10,6.12", "--shard", "1/2", "scenarios/chain-agent-netlink-prio1-cilium-prio2.toml", "--report"])
        .arg(out_dir.path())
        .output()
        .expect("tclab runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tclab run failed:\n{stdout}\n{stderr}");
    assert!(stderr.contains("shard 1/2: 2 of 3 cell(s): host, 6.12/none"), "{stderr}");
    assert!(!stderr.contains("queued") && !stderr.contains("scenarios ("), "no live progress when stderr is not a terminal: {stderr}");

    let doc: Value = serde_json::from_str(&std::fs::read_to_string(out_dir.path().join("results.json")).expect("results.json")).expect("JSON");
    assert_eq!(doc["schema"], report::SCHEMA);
    assert_eq!(doc["shard"], "1/2");
    let cells: Vec<String> = doc["cells"].as_array().expect("cells").iter().map(|c| format!("{}/{}", c["kernel"].as_str().unwrap_or("?"), c["lockdown"].as_str().unwrap_or("?"))).collect();
    assert_eq!(cells, ["host/none", "6.12/none"]);
    let qemu = &doc["cells"][1];
    assert!(qemu["boot_ms"].as_u64().is_some_and(|ms| ms > 0), "{qemu}");
    assert!(qemu["capabilities"].as_str().is_some_and(|c| c.contains("tcx: true")), "{qemu}");
    let statuses: Vec<(&str, &str)> = qemu["scenarios"].as_array().expect("scenarios").iter().map(|s| (s["scenario"].as_str().unwrap_or("?"), s["status"].as_str().unwrap_or("?"))).collect();
    assert_eq!(statuses, [("capabilities", "pass"), ("chain-agent-netlink-prio1-cilium-prio2", "pass")]);
    assert!(qemu["scenarios"][1]["output"].as_array().is_some_and(|o| !o.is_empty()), "the output summary is reported: {qemu}");
    assert!(out_dir.path().join("chain-agent-netlink-prio1-cilium-prio2.out.pcap").is_file(), "the host run's output pcap");

    let xml = std::fs::read_to_string(out_dir.path().join("junit.xml")).expect("junit.xml");
    let junit = check_junit_structure(&xml);
    // host: 1 scenario; 6.12/none: the VM, capabilities, 1 scenario.
    assert_eq!(junit.root_element().attribute("tests"), Some("4"));
    assert_eq!(junit.root_element().attribute("failures"), Some("0"));

    let mut b = Browser::open(&file_url(&out_dir.path().join("report.html")));
    assert_eq!(grid(&mut b), (2, 2));
    assert_eq!(b.eval("document.querySelectorAll('#grid td.v-pass').length"), 3);
    assert_eq!(b.eval("document.querySelectorAll('#grid td.v-none').length"), 1, "the host has no capability snapshot");
}

#[test]
fn tclab_merge_joins_shard_reports_and_fails_when_a_cell_failed() {
    let r = synthetic();
    let dirs = tempfile::tempdir().expect("tempdir");
    let (a, b, out) = (dirs.path().join("shard-1"), dirs.path().join("shard-2"), dirs.path().join("merged"));
    let mut first = r.clone();
    first.cells.truncate(2);
    first.shard = Some("1/2".into());
    let mut second = r.clone();
    second.cells.drain(..2);
    second.shard = Some("2/2".into());
    first.write(&a).expect("shard 1 written");
    second.write(&b).expect("shard 2 written");
    let merge = |args: &[&Path]| Command::new(env!("CARGO_BIN_EXE_tclab")).arg("merge").args(args).arg("--report").arg(&out).output().expect("tclab merge runs");
    let run = merge(&[&b, &a]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(run.status.code(), Some(1), "a failed cell fails the merge: {stdout}");
    assert!(stdout.contains("FAIL 6.12/integrity") && stdout.contains("pass host/none"), "{stdout}");
    assert!(stdout.contains("http-get on 5.10/none: differs from"), "failures listed: {stdout}");
    let merged = report::json::read(&out).expect("merged results.json");
    assert_eq!(merged.cells, r.cells, "every cell once, in canonical order");
    assert_eq!(merged.shard.as_deref(), Some("2/2,1/2"));
    check_junit_structure(&std::fs::read_to_string(out.join("junit.xml")).expect("junit.xml"));
    assert!(out.join("report.html").is_file());
    // A folder without results.json is named in the error.
    let empty = dirs.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let bad = merge(&[&empty]);
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("empty/results.json"), "{stderr}");
}
