//! `tclab bench --quick --json`: a smoke run of every benchmark section.
//!
//! Not a timed test: it checks that each section runs and reports
//! well-formed, plausible figures (every section present and without error,
//! values finite, ratios positive, the expected rows there), never that a
//! target is met. The figures are in BENCHMARKS.md, from a full run.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rows(section: &Value) -> &[Value] {
    section["rows"].as_array().map(Vec::as_slice).unwrap_or_default()
}

fn row<'a>(section: &'a Value, name: &str) -> &'a Value {
    rows(section)
        .iter()
        .find(|r| r["name"].as_str().is_some_and(|n| n.contains(name)))
        .unwrap_or_else(|| panic!("no row {name:?} in section {}: {section:#}", section["section"]))
}

#[test]
fn quick_bench_reports_every_section_with_plausible_figures() {
    const TEST: &str = "bench_quick::quick_bench_reports_every_section_with_plausible_figures";
    if !tclab_net::require::root(TEST) {
        return;
    }
    let tclab = PathBuf::from(env!("CARGO_BIN_EXE_tclab"));
    // tclab-agent is built by `cargo test` / `cargo build` of the workspace
    let agent = tclab.with_file_name("tclab-agent");
    if !tclab_net::require::path(TEST, &agent, "cargo build --bin tclab-agent (cargo test at the workspace root builds it)") {
        return;
    }
    let out = Command::new(&tclab)
        .args(["bench", "--quick", "--json"])
        .arg("--scenarios")
        .arg(repo().join("scenarios"))
        .arg("--manifests")
        .arg(repo().join("kernels"))
        .arg("--snapshots")
        .arg(repo().join("lab/src/bench/snapshots"))
        .arg("--agent")
        .arg(&agent)
        // never leave a pending verifier snapshot behind
        .env("INSTA_UPDATE", "no")
        .output()
        .expect("run tclab bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tclab bench --quick failed ({}):\n{stderr}", out.status);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n{stderr}", String::from_utf8_lossy(&out.stdout)));

    assert_eq!(report["quick"], true);
    for field in ["cpu", "kernel", "date", "clocksource"] {
        assert!(report["machine"][field].as_str().is_some_and(|s| !s.is_empty()), "machine.{field}: {}", report["machine"]);
    }
    let sections = report["sections"].as_array().expect("sections");
    let names: Vec<&str> = sections.iter().filter_map(|s| s["section"].as_str()).collect();
    assert_eq!(names, ["packet", "ct", "verifier", "replay", "footprint", "lab", "propagation"]);
    for s in sections {
        assert!(s["error"].is_null(), "section {} failed: {}", s["section"], s["error"]);
        assert!(!rows(s).is_empty(), "section {} has no rows", s["section"]);
        for r in rows(s) {
            let v = r["value"].as_f64().unwrap_or(f64::NAN);
            // A loss compares two noisy sub-second rates: in a quick run on a
            // busy machine it can come out far below zero (the traced run was
            // faster); 100% or more would mean the traced chain answered nothing.
            let is_loss = r["name"].as_str().is_some_and(|n| n.starts_with("throughput loss"));
            let plausible = if is_loss { v < 100.0 } else { v >= 0.0 };
            assert!(v.is_finite() && plausible, "{}: value {}", r["name"], r["value"]);
            if !r["baseline"].is_null() {
                let b = r["baseline"].as_f64().unwrap_or(f64::NAN);
                let ratio = r["ratio"].as_f64().unwrap_or(f64::NAN);
                assert!(b.is_finite() && b > 0.0, "{}: baseline {}", r["name"], r["baseline"]);
                assert!(ratio.is_finite() && ratio > 0.0, "{}: ratio {}", r["name"], r["ratio"]);
            }
            if !r["target"].is_null() {
                assert!(r["met"].is_boolean(), "{}: a target without a verdict", r["name"]);
            }
        }
    }

    // the rows each section must have
    let packet = &sections[0];
    for hook in ["egress", "ingress"] {
        for class in ["non-IP", "UDP", "TCP ACK", "not HTTP", "no traceparent", "with traceparent", "HTTP response", "TCP SYN (CT miss", "reader caught up"] {
            let r = rows(packet)
                .iter()
                .find(|r| r["name"].as_str().is_some_and(|n| n.starts_with(&format!("{hook} · ")) && n.contains(class)))
                .unwrap_or_else(|| panic!("no {hook} row for {class:?}: {packet:#}"));
            assert!(r["value"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
        }
    }
    let ct = &sections[1];
    for kind in ["LRU", "hash", "LRU, 2× buckets"] {
        for level in ["0%", "50%", "97%", "100%"] {
            row(ct, &format!("{kind} · {level} full"));
        }
    }
    assert!(row(ct, "hash · 100% full")["note"].as_str().unwrap_or("").contains("CtNew +0"), "a full hash map inserts nothing");
    let verifier = &sections[2];
    for program in ["datapath_lru.o · tclab_ingress", "datapath_lru.o · tclab_egress", "testprogs.o · tclab_empty", "ciliumlike.o · cil_from_netdev"] {
        assert!(row(verifier, program)["value"].as_f64().unwrap_or(0.0) >= 1.0);
    }
    let replay = &sections[3];
    assert!(row(replay, "through the agent's chain")["value"].as_f64().unwrap_or(0.0) > 0.0);
    row(replay, "events lost");
    let footprint = &sections[4];
    let rss = row(footprint, "RSS under load")["value"].as_f64().unwrap_or(0.0);
    assert!(rss > 1.0, "an agent process has more than 1 MiB resident: {rss}");
    assert!(row(footprint, "spans printed")["value"].as_f64().unwrap_or(0.0) > 0.0, "the agent printed spans");
    let propagation = &sections[6];
    for mode in ["headers", "tcp", "ip", "all"] {
        let r = row(propagation, &format!("requests/s, propagation={mode}"));
        assert!(r["value"].as_f64().unwrap_or(0.0) > 0.0, "{mode}: the chain answered requests: {r:#}");
        row(propagation, &format!("throughput loss, propagation={mode}"));
    }
    let lab = &sections[5];
    row(lab, "tclab run: time per scenario");
    if qemu_and_a_kernel(TEST) {
        assert!(rows(lab).iter().any(|r| r["name"].as_str().is_some_and(|n| n.starts_with("QEMU "))), "a cached kernel was booted: {lab:#}");
    }
}

/// The QEMU part of the lab section runs only with QEMU and a cached kernel.
fn qemu_and_a_kernel(test: &str) -> bool {
    use tclab_lab::kernels::{Cache, CacheState, Catalog};
    if !tclab_net::require::program(test, "qemu-system-x86_64", "apt-get install qemu-system-x86 (see .ci/run)") {
        return false;
    }
    let catalog = Catalog::load(&repo().join("kernels")).expect("the repository's kernel manifests load");
    let cache = Cache::default_location().expect("kernel cache location");
    catalog.manifests.values().any(|m| matches!(cache.state(m), CacheState::Verified(_)))
        || tclab_net::require::skip(test, "a cached kernel", "tclab kernels fetch")
}
