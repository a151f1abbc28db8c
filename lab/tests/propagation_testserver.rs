//! The built-in test services (`tclab testserver`): the three-service chain
//! in its namespaces and cgroups, without any agent. It must work (so that
//! the propagation tests measure the agent, not the services), must not
//! propagate anything by itself, and must leave nothing behind.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tclab_lab::testserver::chain::{Chain, ChainOptions};
use tclab_net::require;

const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn options() -> ChainOptions {
    ChainOptions::new(env!("CARGO_BIN_EXE_tclab"))
}

fn tp_header() -> Vec<(String, String)> {
    vec![("traceparent".to_owned(), TP.to_owned())]
}

/// The traceparent each hop received, frontend first.
fn received(doc: &serde_json::Value) -> Vec<Option<String>> {
    let mut out = Vec::new();
    let mut d = doc;
    while d.is_object() {
        out.push(d["traceparent"].as_str().map(str::to_owned));
        d = &d["downstream"];
    }
    out
}

fn wait_gone(what: &str, gone: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gone() {
        assert!(Instant::now() < deadline, "{what} still there after 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn chain_answers_through_three_services_without_propagating() {
    if !require::root("chain_answers_through_three_services_without_propagating") {
        return;
    }
    for ipv6 in [false, true] {
        let mut opts = options();
        opts.ipv6 = ipv6;
        let chain = Chain::start(&opts).expect("chain starts");
        for _ in 0..3 {
            let (status, doc) = chain.get(&tp_header()).expect("GET /traceme");
            assert_eq!(status, 200, "{doc}");
            assert_eq!(doc["service"], "frontend");
            assert_eq!(doc["downstream"]["service"], "backend");
            assert_eq!(doc["downstream"]["downstream"]["service"], "worker");
            assert_eq!(doc["downstream"]["downstream"]["path"], "/users");
            assert_eq!(received(&doc), vec![Some(TP.to_owned()), None, None], "ipv6={ipv6}: {doc}");
        }
    }
}

#[test]
fn a_forwarding_service_passes_its_header_on() {
    if !require::root("a_forwarding_service_passes_its_header_on") {
        return;
    }
    let mut opts = options();
    opts.forwarding = vec!["frontend".into()];
    let chain = Chain::start(&opts).expect("chain starts");
    let (_, doc) = chain.get(&tp_header()).expect("GET /traceme");
    assert_eq!(received(&doc), vec![Some(TP.to_owned()), Some(TP.to_owned()), None], "{doc}");
}

#[test]
fn services_live_in_their_cgroups_and_nothing_is_left_behind() {
    if !require::root("services_live_in_their_cgroups_and_nothing_is_left_behind") {
        return;
    }
    // what a SIGKILLed run (pid gone) left behind is removed by the next one
    let mount = tclab_lab::testserver::cgroup::find_cgroup2_mount().expect("cgroup2");
    let stale = mount.join("tclab-4194303-0");
    std::fs::create_dir_all(stale.join("frontend")).expect("stale cgroup");
    let mut opts = options();
    opts.cgroups = true;
    opts.downstream_keepalive = false;
    let chain = Chain::start(&opts).expect("chain starts");
    assert!(!stale.exists(), "the stale cgroup of a dead run is gone");
    let (status, doc) = chain.get(&[]).expect("GET /traceme");
    assert_eq!(status, 200, "{doc}");
    let mut pids = Vec::new();
    let mut cgroups: Vec<PathBuf> = Vec::new();
    for s in &chain.services {
        let cg = s.cgroup.clone().expect("cgroup requested");
        let procs = std::fs::read_to_string(cg.join("cgroup.procs")).expect("cgroup.procs");
        assert_eq!(procs.trim(), s.pid.to_string(), "{} runs alone in {}", s.name, cg.display());
        let netns = std::fs::read_link(format!("/proc/{}/ns/net", s.pid)).expect("ns link");
        assert_eq!(netns.to_string_lossy(), format!("net:[{}]", s.ns.inode().unwrap()), "{} in its namespace", s.name);
        pids.push(s.pid);
        cgroups.push(cg);
    }
    let parent = cgroups[0].parent().expect("parent cgroup").to_path_buf();
    drop(chain);
    for pid in pids {
        wait_gone(&format!("process {pid}"), || !PathBuf::from(format!("/proc/{pid}")).exists());
    }
    for cg in cgroups.iter().chain([&parent]) {
        wait_gone(&cg.display().to_string(), || !cg.exists());
    }
}
