//! `report.html`: one self-contained page (inline CSS and JS, a
//! Content-Security-Policy that forbids loading anything) so the artifact a
//! nightly uploads is readable offline:
//!
//! - failures first, each linking to its details;
//! - the grid: one row per scenario, one column per kernel × lockdown cell,
//!   coloured by verdict; a grid cell opens that scenario's details (reasons,
//!   snapshot diff, output summary, and the console excerpt when the VM
//!   failed) through the URL fragment, so links to a failure can be shared;
//! - the cross-kernel view: per scenario, the cells that agree with the
//!   common snapshot, that match a declared specific one, that fail or skip;
//! - the cells (boot timings, failures) and the capability table.
//!
//! Run data only ever appears escaped in element content or attributes,
//! never inside the script.

use std::fmt::Write as _;

use super::escape::text;
use super::{Cell, Entry, Report, Verdict};
use crate::matrix::capabilities;

const STYLE: &str = r#"
:root { --pass:#1a7f37; --pass-bg:#dafbe1; --fail:#cf222e; --fail-bg:#ffebe9; --skip:#6e7781; --skip-bg:#eaeef2;
        --div:#9a6700; --div-bg:#fff8c5; --line:#d0d7de; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; padding: 1em 2em; max-width: 110em; color:#1f2328; }
h1 { margin: .2em 0; } h2 { border-bottom: 1px solid var(--line); padding-bottom: .2em; margin-top: 1.6em; }
a { color: #0969da; }
pre { background:#f6f8fa; border:1px solid var(--line); padding:.6em; overflow:auto; font: 12px/1.4 ui-monospace, monospace; white-space: pre; }
table { border-collapse: collapse; }
th, td { border: 1px solid var(--line); padding: .2em .45em; text-align: left; vertical-align: top; }
.summary span { margin-right: 1.2em; }
.v-pass { color: var(--pass); background: var(--pass-bg); }
.v-fail { color: var(--fail); background: var(--fail-bg); font-weight: 600; }
.v-skip { color: var(--skip); background: var(--skip-bg); }
.v-diverged { color: var(--div); background: var(--div-bg); }
.v-none { color: #aaa; }
#grid-wrap { overflow: auto; max-height: 80vh; border: 1px solid var(--line); }
#grid th.name { position: sticky; left: 0; background: #fff; white-space: nowrap; z-index: 1; }
#grid thead th { position: sticky; top: 0; background: #f6f8fa; z-index: 2; text-align: center; }
#grid thead tr:nth-child(2) th { top: 1.9em; }
#grid td.v { text-align: center; padding: 0; }
#grid td.v a { display: block; padding: .2em .45em; color: inherit; text-decoration: none; }
#grid td.v a:hover { outline: 2px solid #0969da; }
#grid th.cell-failed { background: var(--fail-bg); color: var(--fail); }
body.only-bad #grid tbody tr.ok { display: none; }
.chip { display: inline-block; padding: 0 .4em; margin: .1em; border-radius: .6em; text-decoration: none; font-size: 12px; }
tr.regression th { color: var(--fail); }
tr.differs th { color: var(--div); }
section.cell { border-top: 2px solid var(--line); margin-top: 1.5em; }
section.cell.failed > h3 { color: var(--fail); }
details.entry { border: 1px solid var(--line); border-radius: 4px; margin: .3em 0; }
details.entry > summary { padding: .25em .5em; cursor: pointer; }
details.entry > .body { padding: .2em 1em .6em; }
details.entry.v-fail, details.entry.v-pass, details.entry.v-skip, details.entry.v-diverged { font-weight: normal; color: inherit; background: none; }
.badge { display: inline-block; min-width: 4.5em; text-align: center; border-radius: 3px; font-size: 12px; }
.target { outline: 3px solid #0969da; }
.diff .add { color: var(--pass); } .diff .del { color: var(--fail); } .diff .hunk { color: #8250df; }
.muted { color: #6e7781; }
"#;

const SCRIPT: &str = r#"
(function () {
  // Open the details a fragment points at (and every details around it).
  function reveal() {
    var id = decodeURIComponent(location.hash.slice(1));
    if (!id) return;
    var el = document.getElementById(id);
    if (!el) return;
    for (var p = el; p; p = p.parentElement) { if (p.tagName === 'DETAILS') p.open = true; }
    var old = document.querySelectorAll('.target');
    for (var i = 0; i < old.length; i++) old[i].classList.remove('target');
    el.classList.add('target');
    el.scrollIntoView({ block: 'start' });
  }
  window.addEventListener('hashchange', reveal);
  reveal();
  var only = document.getElementById('only-bad');
  if (only) only.addEventListener('change', function () { document.body.classList.toggle('only-bad', only.checked); });
})();
"#;

/// The page.
pub fn render(report: &Report) -> String {
    let mut h = String::with_capacity(64 * 1024);
    let counts = report.counts();
    let title = match &report.shard {
        Some(s) => format!("tclab report (shard {s})"),
        None => "tclab report".to_string(),
    };
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        text(&title)
    );
    let failed_cells = report.cells.iter().filter(|c| c.failed()).count();
    let _ = writeln!(h, "<h1>{}</h1>", text(&title));
    let _ = writeln!(
        h,
        "<p class=\"summary\" id=\"summary\"><span>{}</span><span>{} cell(s), <b>{failed_cells}</b> failed</span>\
         <span class=\"v-pass\">{} passed</span><span class=\"v-diverged\">{} diverged</span>\
         <span class=\"v-skip\">{} skipped</span><span class=\"v-fail\">{} failed</span></p>",
        text(&report.tool),
        report.cells.len(),
        counts.passed,
        counts.diverged,
        counts.skipped,
        counts.failed
    );
    let _ = writeln!(
        h,
        "<p class=\"muted\">Jump to: <a href=\"#grid\">grid</a> · <a href=\"#cross\">cross-kernel view</a> · \
         <a href=\"#cells\">cells</a> · <a href=\"#capabilities\">capabilities</a> · <a href=\"#details\">details</a>. \
         Legend: <span class=\"badge v-pass\">pass</span> <span class=\"badge v-diverged\">diverged</span> (passed against \
         the snapshot declared for this kernel or mode) <span class=\"badge v-skip\">skip</span> <span class=\"badge v-fail\">FAIL</span></p>"
    );
    failures(&mut h, report);
    grid(&mut h, report);
    cross(&mut h, report);
    cells_table(&mut h, report);
    capability_table(&mut h, report);
    details(&mut h, report);
    let _ = write!(h, "<script>{SCRIPT}</script>\n</body>\n</html>\n");
    h
}

fn entry_id(ci: usize, si: usize) -> String {
    format!("e-{ci}-{si}")
}

fn short(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "pass",
        Verdict::Diverged => "div",
        Verdict::Skip => "skip",
        Verdict::Fail => "FAIL",
    }
}

fn failures(h: &mut String, report: &Report) {
    let mut items = String::new();
    for (ci, c) in report.cells.iter().enumerate() {
        if let Some(f) = &c.failure {
            let _ = writeln!(
                items,
                "<li><a href=\"#cell-{ci}\">cell {}</a>: {}</li>",
                text(&c.label()),
                text(f)
            );
        }
        for (si, e) in c.scenarios.iter().enumerate().filter(|(_, e)| e.status == Verdict::Fail) {
            let _ = writeln!(
                items,
                "<li><a href=\"#{}\">{} on {}</a>: {}</li>",
                entry_id(ci, si),
                text(&e.scenario),
                text(&c.label()),
                text(&e.reasons.join("; "))
            );
        }
    }
    if !items.is_empty() {
        let _ = writeln!(h, "<h2 id=\"failures\" class=\"v-fail\">Failures</h2>\n<ol>\n{items}</ol>");
    }
}

fn grid(h: &mut String, report: &Report) {
    let _ = writeln!(
        h,
        "<h2 id=\"grid\">Kernel × lockdown × scenario</h2>\n<p><label><input type=\"checkbox\" id=\"only-bad\"> \
         only scenarios that fail or diverge somewhere</label> <span class=\"muted\">— click a cell for its details</span></p>\n\
         <div id=\"grid-wrap\"><table id=\"grid\">\n<thead>\n<tr><th class=\"name\" rowspan=\"2\">scenario</th>"
    );
    // Consecutive cells of one kernel share a header.
    let mut i = 0;
    while i < report.cells.len() {
        let kernel = &report.cells[i].kernel;
        let span = report.cells[i..].iter().take_while(|c| &c.kernel == kernel).count();
        let _ = write!(h, "<th colspan=\"{span}\">{}</th>", text(kernel));
        i += span;
    }
    h.push_str("</tr>\n<tr>");
    for (ci, c) in report.cells.iter().enumerate() {
        let class = if c.failed() { " class=\"cell-failed\"" } else { "" };
        let _ = write!(
            h,
            "<th{class} title=\"{}\"><a href=\"#cell-{ci}\">{}</a></th>",
            text(&cell_title(c)),
            text(&c.lockdown)
        );
    }
    h.push_str("</tr>\n</thead>\n<tbody>\n");
    for name in report.scenario_names() {
        let found: Vec<Option<(usize, &Entry)>> = report
            .cells
            .iter()
            .map(|c| c.scenarios.iter().enumerate().find(|(_, e)| e.scenario == name))
            .collect();
        let bad = found.iter().flatten().any(|(_, e)| matches!(e.status, Verdict::Fail | Verdict::Diverged));
        let file = found.iter().flatten().map(|(_, e)| e.file.as_str()).next().unwrap_or("");
        let _ = write!(
            h,
            "<tr class=\"{}\"><th class=\"name\" title=\"{}\">{}</th>",
            if bad { "bad" } else { "ok" },
            text(file),
            text(&name)
        );
        for (ci, (c, f)) in report.cells.iter().zip(&found).enumerate() {
            match f {
                Some((si, e)) => {
                    let tip = if e.reasons.is_empty() {
                        format!("{} on {}: {}", e.scenario, c.label(), e.status.as_str())
                    } else {
                        format!("{} on {}: {}", e.scenario, c.label(), e.reasons.join("; "))
                    };
                    let _ = write!(
                        h,
                        "<td class=\"v v-{}\"><a href=\"#{}\" title=\"{}\">{}</a></td>",
                        e.status.as_str(),
                        entry_id(ci, *si),
                        text(&tip),
                        short(e.status)
                    );
                }
                None => h.push_str("<td class=\"v v-none\">·</td>"),
            }
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</tbody>\n</table></div>\n");
}

fn cell_title(c: &Cell) -> String {
    let counts = c.counts();
    let mut t = format!(
        "{}: {} passed, {} diverged, {} skipped, {} failed; total {:.1}s",
        c.label(),
        counts.passed,
        counts.diverged,
        counts.skipped,
        counts.failed,
        c.total_ms as f64 / 1000.0
    );
    if let Some(f) = &c.failure {
        let _ = write!(t, "; cell failed: {f}");
    }
    t
}

fn cross(h: &mut String, report: &Report) {
    let _ = writeln!(
        h,
        "<h2 id=\"cross\">Cross-kernel view</h2>\n<p class=\"muted\">Per scenario: the cells whose result is the \
         common snapshot, the ones matching the snapshot the scenario declares for them, and the ones that fail or \
         skip. A scenario failing on some cells while passing on others is marked as a regression.</p>\n\
         <table id=\"cross-table\">\n<thead><tr><th>scenario</th><th>agree (common snapshot)</th>\
         <th>diverge (declared)</th><th>fail</th><th>skip</th></tr></thead>\n<tbody>"
    );
    for row in report.cross_kernel() {
        let chips = |want: Verdict| {
            let mut s = String::new();
            for (ci, c) in report.cells.iter().enumerate() {
                let Some((si, e)) = c.scenarios.iter().enumerate().find(|(_, e)| e.scenario == row.scenario) else {
                    continue;
                };
                if e.status == want {
                    let tip = e.reasons.join("; ");
                    let _ = write!(
                        s,
                        "<a class=\"chip v-{}\" href=\"#{}\" title=\"{}\">{}</a>",
                        want.as_str(),
                        entry_id(ci, si),
                        text(&tip),
                        text(&c.label())
                    );
                }
            }
            s
        };
        let flag = if row.regression { " <span class=\"badge v-fail\">regression</span>" } else { "" };
        let _ = writeln!(
            h,
            "<tr{}><th>{}{flag}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if row.regression { " class=\"regression\"" } else { "" },
            text(&row.scenario),
            chips(Verdict::Pass),
            chips(Verdict::Diverged),
            chips(Verdict::Fail),
            chips(Verdict::Skip)
        );
    }
    h.push_str("</tbody>\n</table>\n");
}

fn cells_table(h: &mut String, report: &Report) {
    let _ = writeln!(
        h,
        "<h2 id=\"cells\">Cells</h2>\n<table id=\"cells-table\">\n<thead><tr><th>cell</th><th>machine</th>\
         <th>boot</th><th>first scenario</th><th>total</th><th>pass</th><th>diverged</th><th>skip</th><th>fail</th>\
         <th>cell failure</th></tr></thead>\n<tbody>"
    );
    let ms = |v: Option<u64>| v.map(|v| format!("{:.2} s", v as f64 / 1000.0)).unwrap_or_else(|| "–".into());
    for (ci, c) in report.cells.iter().enumerate() {
        let n = c.counts();
        let _ = writeln!(
            h,
            "<tr class=\"{}\"><th><a href=\"#cell-{ci}\">{}</a></th><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if c.failed() { "v-fail" } else { "" },
            text(&c.label()),
            text(c.machine.as_deref().unwrap_or(if c.is_host() { "host kernel" } else { "–" })),
            ms(c.boot_ms),
            ms(c.first_scenario_ms),
            ms(Some(c.total_ms)),
            n.passed,
            n.diverged,
            n.skipped,
            n.failed,
            text(c.failure.as_deref().unwrap_or(""))
        );
    }
    h.push_str("</tbody>\n</table>\n");
}

fn capability_table(h: &mut String, report: &Report) {
    let _ = writeln!(
        h,
        "<h2 id=\"capabilities\">Capabilities</h2>\n<p class=\"muted\">What the agent's probe found in each cell \
         (the reviewed <code>capabilities@&lt;kernel&gt;+&lt;lockdown&gt;.snap</code>). Rows whose value differs \
         between cells are highlighted.</p>\n<table id=\"caps-table\">\n<thead><tr><th>probe</th>"
    );
    for (ci, c) in report.cells.iter().enumerate() {
        let _ = write!(h, "<th><a href=\"#cell-{ci}\">{}</a></th>", text(&c.label()));
    }
    h.push_str("</tr></thead>\n<tbody>\n");
    for (key, values) in report.capability_rows() {
        let mut present = values.iter().flatten();
        let first = present.next();
        let differs = present.any(|v| Some(v) != first);
        let _ = write!(h, "<tr{}><th>{}</th>", if differs { " class=\"differs\"" } else { "" }, text(&key));
        for v in &values {
            match v {
                Some(v) => {
                    let class = match v.as_str() {
                        "true" => " class=\"v-pass\"",
                        "false" => " class=\"v-skip\"",
                        _ => "",
                    };
                    let _ = write!(h, "<td{class}>{}</td>", text(v));
                }
                None => h.push_str("<td class=\"v-none\">no probe</td>"),
            }
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</tbody>\n</table>\n");
}

fn details(h: &mut String, report: &Report) {
    let _ = writeln!(h, "<h2 id=\"details\">Details</h2>");
    for (ci, c) in report.cells.iter().enumerate() {
        let _ = writeln!(
            h,
            "<section class=\"cell{}\" id=\"cell-{ci}\">\n<h3>{}</h3>\n<p class=\"muted\">{}</p>",
            if c.failed() { " failed" } else { "" },
            text(&c.label()),
            text(&cell_title(c))
        );
        if let Some(f) = &c.failure {
            let _ = writeln!(h, "<p class=\"v-fail\">cell failed: {}</p>", text(f));
        }
        if !c.console_excerpt.is_empty() {
            let _ = writeln!(
                h,
                "<details class=\"console\" id=\"console-{ci}\"{}><summary>console excerpt ({} lines)</summary><pre>{}</pre></details>",
                if c.failure.is_some() { " open" } else { "" },
                c.console_excerpt.len(),
                text(&c.console_excerpt.join("\n"))
            );
        }
        if let Some(caps) = &c.capabilities {
            let _ = writeln!(
                h,
                "<details class=\"caps\" id=\"caps-{ci}\"><summary>probe ({})</summary><pre>{}</pre></details>",
                text(capabilities::NAME),
                text(caps)
            );
        }
        for (si, e) in c.scenarios.iter().enumerate() {
            entry(h, c, ci, si, e);
        }
        h.push_str("</section>\n");
    }
}

fn entry(h: &mut String, c: &Cell, ci: usize, si: usize, e: &Entry) {
    let v = e.status.as_str();
    let _ = writeln!(
        h,
        "<details class=\"entry v-{v}\" id=\"{}\"><summary><span class=\"badge v-{v}\">{}</span> {} \
         <span class=\"muted\">on {} · {:.2} s</span></summary>\n<div class=\"body\">",
        entry_id(ci, si),
        short(e.status),
        text(&e.scenario),
        text(&c.label()),
        e.duration_ms as f64 / 1000.0
    );
    let _ = write!(h, "<p class=\"muted\">{}", text(&e.file));
    if let Some(s) = &e.snapshot {
        let _ = write!(h, " · snapshot {}", text(s));
    }
    h.push_str("</p>\n");
    if !e.reasons.is_empty() {
        h.push_str("<ul class=\"reasons\">");
        for r in &e.reasons {
            let _ = write!(h, "<li>{}</li>", text(r));
        }
        h.push_str("</ul>\n");
    }
    if let Some(diff) = &e.diff {
        let _ = write!(h, "<h4>Snapshot diff</h4>\n<pre class=\"diff\">");
        for line in diff.lines() {
            let class = if line.starts_with("@@") {
                "hunk"
            } else if line.starts_with('+') && !line.starts_with("+++") {
                "add"
            } else if line.starts_with('-') && !line.starts_with("---") {
                "del"
            } else {
                "ctx"
            };
            let _ = writeln!(h, "<span class=\"{class}\">{}</span>", text(line));
        }
        h.push_str("</pre>\n");
    }
    if !e.output.is_empty() {
        let _ = write!(
            h,
            "<h4>Output ({} packet(s) left the far side)</h4>\n<pre class=\"output\">{}</pre>\n",
            e.output.len(),
            text(&e.output.join("\n"))
        );
    } else if e.result.is_some() {
        h.push_str("<h4>Output</h4>\n<p class=\"muted output\">no packet left the far side</p>\n");
    }
    if e.status == Verdict::Fail && c.failure.is_some() && !c.console_excerpt.is_empty() {
        let _ = write!(
            h,
            "<h4>Console of {} (the cell failed)</h4>\n<pre class=\"console\">{}</pre>\n",
            text(&c.label()),
            text(&c.console_excerpt.join("\n"))
        );
    } else if !c.console_excerpt.is_empty() {
        let _ = writeln!(h, "<p><a href=\"#console-{ci}\">console excerpt of {}</a></p>", text(&c.label()));
    }
    h.push_str("</div></details>\n");
}
