//! `tclab soak`, small: the agent under load with its CT table pushed past
//! full (the million-packet run is `tclab soak`, a command, not a test).
//! Checks the command's own checks held and that its figures add up; never
//! a speed.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

#[test]
fn agent_survives_a_full_ct_table_and_counts_what_it_loses() {
    const TEST: &str = "robust_load::agent_survives_a_full_ct_table_and_counts_what_it_loses";
    if !tclab_net::require::root(TEST) {
        return;
    }
    let tclab = PathBuf::from(env!("CARGO_BIN_EXE_tclab"));
    let agent = tclab.with_file_name("tclab-agent");
    if !tclab_net::require::path(TEST, &agent, "cargo build --bin tclab-agent (cargo test at the workspace root builds it)") {
        return;
    }
    let out = Command::new(&tclab)
        .args(["soak", "--packets", "24000", "--ct-max-entries", "512", "--json", "--agent"])
        .arg(&agent)
        .output()
        .expect("run tclab soak");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let r: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\n{stderr}"));
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k}: {r:#}"));
    assert!(out.status.success(), "a check failed: {:#}\n{stderr}", r["problems"]);
    assert_eq!(r["problems"], serde_json::json!([]));
    assert_eq!(n("connections"), 3000);
    assert_eq!(n("packets_sent"), 24_000);
    assert!(r["alive_after_load"].as_bool() == Some(true), "{r:#}");
    assert_eq!(r["exit_status"], "exit status: 0");
    // 3000 connections through a 512-entry hash table: full, failures counted
    assert!(n("ct_insert_failures") > 0 && n("ct_entries") <= 512, "{r:#}");
    // every connection without a span is explained by counted losses (or
    // packets the datapath never saw, reported on their own)
    let unseen = n("packets_sent") - n("packets_seen");
    assert!(n("connections") - n("spans").min(n("connections")) <= n("events_lost") + unseen, "{r:#}");
    assert!(n("packets_seen") > 0 && n("packets_seen") <= n("packets_sent"), "{r:#}");
    assert!(n("rss_samples") > 0 && r["rss_max_mib"].as_f64().is_some_and(|m| m > 1.0), "{r:#}");
}
