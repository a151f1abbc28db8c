//! `tclab bench propagation --quick --json`: the propagation benchmark
//! section runs and reports plausible figures. Not a timed test: the 5%
//! target is a figure of the report, never asserted here.

use serde_json::Value;

#[test]
fn the_propagation_section_reports_both_sides_of_the_ratio() {
    if !tclab_net::require::root("the_propagation_section_reports_both_sides_of_the_ratio") {
        return;
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tclab"))
        .args(["bench", "propagation", "--quick", "--json"])
        .output()
        .expect("run tclab bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tclab bench propagation failed ({}):\n{stderr}", out.status);
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let s = &report["sections"][0];
    assert_eq!(s["section"], "propagation");
    assert!(s["error"].is_null(), "{}", s["error"]);
    let row = |name: &str| -> &Value {
        s["rows"].as_array().and_then(|r| r.iter().find(|r| r["name"] == name)).unwrap_or_else(|| panic!("no row {name}: {s:#}"))
    };
    let off = row("requests/s, propagation=disabled")["value"].as_f64().expect("a number");
    assert!(off > 10.0, "the chain answers requests: {off} req/s");
    let bpf_off = row("BPF run time per request, propagation=disabled")["value"].as_f64().expect("a number");
    assert!(bpf_off > 0.0, "the TC datapath ran: {bpf_off} ns per request");
    let cpu_off = row("machine CPU per request, propagation=disabled")["value"].as_f64().expect("a number");
    // at least the chain's three services and the client ran for each request
    assert!(cpu_off > 1.0, "machine CPU per request: {cpu_off} µs");
    // the A/A figure: the same configuration at both ends of a round
    let aa = row("A/A: machine CPU per request, propagation=disabled, end of a round against its start")["value"].as_f64();
    assert!(aa.is_some_and(|r| r > 0.0 && r.is_finite()), "{aa:?}");
    let rtt_off = row("CPU per HTTP round trip on one CPU, propagation=disabled")["value"].as_f64().expect("a number");
    // two syscalls and a loopback segment each way at the least
    assert!(rtt_off > 500.0, "CPU per round trip without propagation: {rtt_off} ns");
    for mode in ["headers", "tcp", "ip", "all"] {
        let cpu = row(&format!("machine CPU per request, propagation={mode}"));
        assert_eq!(cpu["baseline"].as_f64(), Some(cpu_off), "{mode}: {cpu}");
        assert!(cpu["value"].as_f64().is_some_and(|v| v > 1.0), "{mode}: {cpu}");
        let on = row(&format!("requests/s, propagation={mode}"));
        assert_eq!(on["baseline"].as_f64(), Some(off), "{mode}: compared with the same run's baseline");
        assert!(on["value"].as_f64().is_some_and(|v| v > 10.0), "{mode}: {on}");
        // every span of the chain should take the kernel's ids, also when
        // the agents read the datapath's events late
        let linked = row(&format!("spans with the kernel's ids, propagation={mode}"))["value"].as_f64().unwrap_or(0.0);
        assert!(linked >= 95.0, "{mode}: {linked}% of the spans took the kernel's ids");
        let loss = row(&format!("throughput loss, propagation={mode}"));
        assert!(loss["met"].is_boolean() && loss["target"].is_object(), "{mode}: the target is reported: {loss}");
        assert!(row(&format!("p99 latency ratio, propagation={mode}"))["value"].as_f64().is_some_and(|r| r > 0.0));
        // the socket programs of every mode run on top of the TC datapath
        let bpf = row(&format!("BPF run time per request, propagation={mode}"));
        assert!(bpf["value"].as_f64().is_some_and(|v| v > bpf_off), "{mode}: propagation's programs ran: {bpf}");
        let note = bpf["note"].as_str().unwrap_or("");
        assert!(note.contains("tclab_prop_read"), "{mode}: the per-program split names the read tracepoint: {note}");
        // the hooks only, statistics on: the same programs run as often
        // (every hook still fires), each returning at once
        let bpf_floor = row(&format!("BPF run time per request, propagation={mode}, hooks only"));
        assert!(bpf_floor["value"].as_f64().is_some_and(|v| v > 0.0), "{mode}: {bpf_floor}");
        assert!(bpf_floor["note"].as_str().is_some_and(|n| n.contains("tclab_prop_read")), "{mode}: the hooks fired: {bpf_floor}");
        let ours = row(&format!("our code's CPU per request, propagation={mode}"));
        assert!(ours["value"].as_f64().is_some_and(|v| v > 0.0 && v.is_finite()), "{mode}: our programs do work: {ours}");
        assert!(ours["target"].is_null(), "{mode}: an estimate, not the target: {ours}");
        // the floor: the same hooks with programs that return at once
        let floor = row(&format!("machine CPU per request, propagation={mode}, hooks only"));
        assert_eq!(floor["baseline"].as_f64(), Some(cpu_off), "{mode}: {floor}");
        assert!(floor["value"].as_f64().is_some_and(|v| v > 1.0), "{mode}: {floor}");
        let floor_loss = row(&format!("throughput loss, propagation={mode}, hooks only"));
        assert!(floor_loss["value"].as_f64().is_some_and(f64::is_finite), "{mode}: {floor_loss}");
        assert!(floor_loss["target"].is_null(), "{mode}: the floor is a figure, not a target: {floor_loss}");
        // round trips on one CPU: taken against the same run's round trips
        // without propagation; the programs do work beyond the bare hooks
        // (1.4–1.7× a bare round trip here, so no noise reaches that order)
        let hooks = row(&format!("CPU per HTTP round trip on one CPU, propagation={mode}, hooks only"));
        assert_eq!(hooks["baseline"].as_f64(), Some(rtt_off), "{mode}: {hooks}");
        let full = row(&format!("CPU per HTTP round trip on one CPU, propagation={mode}"));
        assert_eq!(full["baseline"].as_f64(), Some(rtt_off), "{mode}: {full}");
        let (h, f) = (hooks["value"].as_f64().unwrap_or(0.0), full["value"].as_f64().unwrap_or(0.0));
        assert!(h > 0.0 && f > rtt_off && f > h, "{mode}: off {rtt_off} ns, hooks only {h} ns, programs {f} ns per round trip");
    }
}
