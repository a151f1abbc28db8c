//! `junit.xml`: the de facto JUnit format GitHub Actions reporters, GitLab
//! and Jenkins read. One `<testsuite>` per cell, one `<testcase>` per
//! scenario in it (classname = `kernel/lockdown`), plus a `cell` test case
//! per QEMU cell for the VM itself (boot, watchdog, guest errors), so a cell
//! that fails after its scenarios passed still fails the suite.
//!
//! A failure's text holds every reason, the snapshot diff and the output
//! summary; a diverged scenario passes and says so in `<system-out>`.

use std::fmt::Write as _;

use super::escape::{attr, text};
use super::{Cell, Entry, Report, Verdict};

/// The document text.
pub fn render(report: &Report) -> String {
    let mut suites = String::new();
    let (mut tests, mut failures, mut skipped, mut ms) = (0usize, 0usize, 0usize, 0u64);
    for cell in &report.cells {
        let s = suite(cell);
        tests += s.tests;
        failures += s.failures;
        skipped += s.skipped;
        ms += cell.total_ms;
        suites.push_str(&s.xml);
    }
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"{}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{}\">",
        attr(&match &report.shard {
            Some(s) => format!("tclab kernel matrix (shard {s})"),
            None => "tclab kernel matrix".to_string(),
        }),
        secs(ms),
    );
    out.push_str(&suites);
    out.push_str("</testsuites>\n");
    out
}

struct Suite {
    xml: String,
    tests: usize,
    failures: usize,
    skipped: usize,
}

fn suite(cell: &Cell) -> Suite {
    let label = cell.label();
    let class = attr(&label);
    let mut cases = String::new();
    let (mut tests, mut failures, mut skipped) = (0, 0, 0);
    if !cell.is_host() {
        tests += 1;
        let _ = writeln!(cases, "    <testcase classname=\"{class}\" name=\"cell\" time=\"{}\">", secs(cell.total_ms));
        if let Some(f) = &cell.failure {
            failures += 1;
            let body = format!("{f}\n\nconsole:\n{}", cell.console_excerpt.join("\n"));
            let _ = writeln!(cases, "      <failure message=\"{}\" type=\"cell\">{}</failure>", attr(f), text(&body));
        }
        let _ = writeln!(cases, "      <system-out>{}</system-out>", text(&cell_facts(cell)));
        cases.push_str("    </testcase>\n");
    }
    for e in &cell.scenarios {
        tests += 1;
        let _ = write!(
            cases,
            "    <testcase classname=\"{class}\" name=\"{}\" file=\"{}\" time=\"{}\"",
            attr(&e.scenario),
            attr(&e.file),
            secs(e.duration_ms)
        );
        match e.status {
            Verdict::Pass if e.output.is_empty() => cases.push_str("/>\n"),
            Verdict::Pass | Verdict::Diverged => {
                let _ = writeln!(cases, ">\n      <system-out>{}</system-out>\n    </testcase>", text(&passed_text(e)));
            }
            Verdict::Skip => {
                skipped += 1;
                let _ = writeln!(cases, ">\n      <skipped message=\"{}\"/>\n    </testcase>", attr(&e.reasons.join("; ")));
            }
            Verdict::Fail => {
                failures += 1;
                let _ = writeln!(
                    cases,
                    ">\n      <failure message=\"{}\" type=\"{}\">{}</failure>\n    </testcase>",
                    attr(&e.reasons.join("; ")),
                    if e.diff.is_some() { "snapshot" } else { "scenario" },
                    text(&failure_text(e, cell)),
                );
            }
        }
    }
    let mut xml = String::new();
    let _ = writeln!(
        xml,
        "  <testsuite name=\"{class}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{}\">",
        secs(cell.total_ms)
    );
    xml.push_str("    <properties>\n");
    for (k, v) in [
        ("kernel", Some(cell.kernel.clone())),
        ("lockdown", Some(cell.lockdown.clone())),
        ("machine", cell.machine.clone()),
        ("boot_ms", cell.boot_ms.map(|v| v.to_string())),
        ("first_scenario_ms", cell.first_scenario_ms.map(|v| v.to_string())),
    ] {
        if let Some(v) = v {
            let _ = writeln!(xml, "      <property name=\"{k}\" value=\"{}\"/>", attr(&v));
        }
    }
    xml.push_str("    </properties>\n");
    xml.push_str(&cases);
    if !cell.console_excerpt.is_empty() {
        let _ = writeln!(xml, "    <system-err>{}</system-err>", text(&cell.console_excerpt.join("\n")));
    }
    xml.push_str("  </testsuite>\n");
    Suite { xml, tests, failures, skipped }
}

fn cell_facts(cell: &Cell) -> String {
    let ms = |v: Option<u64>| v.map(|v| format!("{v} ms")).unwrap_or_else(|| "-".into());
    format!(
        "machine: {}\nboot: {}\nfirst scenario: {}\ntotal: {} ms",
        cell.machine.as_deref().unwrap_or("-"),
        ms(cell.boot_ms),
        ms(cell.first_scenario_ms),
        cell.total_ms
    )
}

fn passed_text(e: &Entry) -> String {
    let mut s = String::new();
    for r in &e.reasons {
        let _ = writeln!(s, "{}: {r}", e.status.as_str());
    }
    if let Some(snap) = &e.snapshot {
        let _ = writeln!(s, "snapshot: {snap}");
    }
    output_text(&mut s, e);
    s
}

fn failure_text(e: &Entry, cell: &Cell) -> String {
    let mut s = format!("{} on {}\n", e.scenario, cell.label());
    for r in &e.reasons {
        let _ = writeln!(s, "- {r}");
    }
    if let Some(diff) = &e.diff {
        let _ = write!(s, "\nsnapshot diff ({}):\n{diff}", e.snapshot.as_deref().unwrap_or("?"));
        if !diff.ends_with('\n') {
            s.push('\n');
        }
    }
    output_text(&mut s, e);
    if cell.failure.is_some() && !cell.console_excerpt.is_empty() {
        let _ = write!(s, "\nconsole of {}:\n{}\n", cell.label(), cell.console_excerpt.join("\n"));
    }
    s
}

fn output_text(s: &mut String, e: &Entry) {
    if !e.output.is_empty() {
        let _ = write!(s, "\noutput ({} packet(s) left):\n", e.output.len());
        for line in &e.output {
            let _ = writeln!(s, "  {line}");
        }
    }
}

fn secs(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}
