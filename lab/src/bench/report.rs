//! The benchmark report: rows with a measured value, the baseline it is
//! compared with, the ratio and the target; rendered as Markdown tables or
//! JSON.

use serde::Serialize;

use super::Section;
use super::machine::Machine;

/// A target for one row.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Target {
    /// ratio ≤ x
    RatioAtMost(f64),
    /// value ≥ x (in the row's unit)
    ValueAtLeast(f64),
    /// value < x (in the row's unit)
    ValueBelow(f64),
    /// value == 0
    Zero,
}

impl Target {
    fn met(self, row: &Row) -> bool {
        match self {
            Target::RatioAtMost(x) => row.ratio.is_some_and(|r| r <= x),
            Target::ValueAtLeast(x) => row.value >= x,
            Target::ValueBelow(x) => row.value < x,
            Target::Zero => row.value == 0.0,
        }
    }

    fn text(self, unit: &str) -> String {
        match self {
            Target::RatioAtMost(x) => format!("≤ {x}×"),
            Target::ValueAtLeast(x) => format!("≥ {} {unit}", human(x)),
            Target::ValueBelow(x) => format!("< {} {unit}", human(x)),
            Target::Zero => "0".into(),
        }
    }
}

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub name: String,
    /// The measured value, in `unit`.
    pub value: f64,
    pub unit: String,
    /// The same-run baseline, in `unit`, when the row has one.
    pub baseline: Option<f64>,
    /// value / baseline.
    pub ratio: Option<f64>,
    pub target: Option<Target>,
    /// Whether this run met the target.
    pub met: Option<bool>,
    /// How it was measured, or why a target is missed.
    pub note: String,
}

impl Row {
    /// A row compared with a baseline.
    pub fn ratio(name: impl Into<String>, value: f64, baseline: f64, unit: &str) -> Row {
        let ratio = (baseline > 0.0).then(|| value / baseline);
        Row { name: name.into(), value, unit: unit.into(), baseline: Some(baseline), ratio, target: None, met: None, note: String::new() }
    }

    /// A row without a baseline (a count, a size).
    pub fn value(name: impl Into<String>, value: f64, unit: &str) -> Row {
        Row { name: name.into(), value, unit: unit.into(), baseline: None, ratio: None, target: None, met: None, note: String::new() }
    }

    pub fn target(mut self, target: Target) -> Row {
        self.met = Some(target.met(&self));
        self.target = Some(target);
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Row {
        self.note = note.into();
        self
    }
}

/// One section's rows.
#[derive(Debug, Clone, Serialize)]
pub struct SectionReport {
    pub section: Section,
    pub title: String,
    /// What the baseline is.
    pub baseline: String,
    pub rows: Vec<Row>,
    /// Method and caveats.
    pub notes: Vec<String>,
    /// Why the section could not run, if it could not.
    pub error: Option<String>,
    /// Wall time of the section.
    pub seconds: f64,
}

impl SectionReport {
    pub fn new(section: Section, title: &str, baseline: &str) -> SectionReport {
        SectionReport {
            section,
            title: title.into(),
            baseline: baseline.into(),
            rows: Vec::new(),
            notes: Vec::new(),
            error: None,
            seconds: 0.0,
        }
    }

    pub fn failed(section: Section, error: String) -> SectionReport {
        let mut s = SectionReport::new(section, section.name(), "");
        s.error = Some(error);
        s
    }
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: u32,
    pub machine: Machine,
    pub command: String,
    pub quick: bool,
    pub sections: Vec<SectionReport>,
}

impl Report {
    pub fn new(machine: Machine, command: String, quick: bool) -> Report {
        Report { schema: 1, machine, command, quick, sections: Vec::new() }
    }

    /// Did a section fail to run?
    pub fn any_failed(&self) -> bool {
        self.sections.iter().any(|s| s.error.is_some())
    }

    /// Markdown: the machine, then one table per section.
    pub fn to_markdown(&self) -> String {
        let m = &self.machine;
        let mut out = format!(
            "Machine: {} ({} cores, {:.0} GiB), kernel {}, clocksource {}, load average {} at the start\nDate: {}\nCommand: `{}`{}\n",
            m.cpu,
            m.cores,
            m.memory_gib,
            m.kernel,
            m.clocksource,
            m.load,
            m.date,
            self.command,
            if self.quick { " (quick: rough figures)" } else { "" }
        );
        for s in &self.sections {
            out.push_str(&format!("\n### {}\n\n", s.title));
            if let Some(e) = &s.error {
                out.push_str(&format!("FAILED: {e}\n"));
                continue;
            }
            if !s.baseline.is_empty() {
                out.push_str(&format!("Baseline: {}\n\n", s.baseline));
            }
            out.push_str("| | value | baseline | ratio | target | met | note |\n|---|---:|---:|---:|---|---|---|\n");
            for r in &s.rows {
                out.push_str(&format!(
                    "| {} | {} {} | {} | {} | {} | {} | {} |\n",
                    r.name,
                    human(r.value),
                    r.unit,
                    r.baseline.map(|b| format!("{} {}", human(b), r.unit)).unwrap_or_default(),
                    r.ratio.map(|x| format!("{x:.2}×")).unwrap_or_default(),
                    r.target.map(|t| t.text(&r.unit)).unwrap_or_default(),
                    match r.met {
                        Some(true) => "yes",
                        Some(false) => "**no**",
                        None => "",
                    },
                    r.note.replace('|', "/"),
                ));
            }
            for n in &s.notes {
                out.push_str(&format!("\n- {n}"));
            }
            out.push_str(&format!("\n\n({:.1} s)\n", s.seconds));
        }
        out
    }
}

/// A short human rendering of a figure (3 significant digits, thousands separated).
pub fn human(x: f64) -> String {
    if !x.is_finite() {
        return format!("{x}");
    }
    let a = x.abs();
    if a >= 1000.0 {
        let n = x.round() as i64;
        let s = n.unsigned_abs().to_string();
        let mut grouped = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(c);
        }
        if n < 0 { format!("-{grouped}") } else { grouped }
    } else if a >= 100.0 || x == x.trunc() {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_groups_thousands_and_keeps_three_digits() {
        assert_eq!(human(1_234_567.4), "1,234,567");
        assert_eq!(human(250.4), "250");
        assert_eq!(human(14.56), "14.6");
        assert_eq!(human(1.234), "1.23");
        assert_eq!(human(0.0), "0");
    }

    #[test]
    fn targets_judge_ratio_and_value() {
        let r = Row::ratio("x", 30.0, 10.0, "ns").target(Target::RatioAtMost(3.5));
        assert_eq!(r.ratio, Some(3.0));
        assert_eq!(r.met, Some(true));
        let r = Row::ratio("x", 40.0, 10.0, "ns").target(Target::RatioAtMost(3.5));
        assert_eq!(r.met, Some(false));
        assert_eq!(Row::value("lost", 0.0, "events").target(Target::Zero).met, Some(true));
        assert_eq!(Row::value("rss", 31.0, "MiB").target(Target::ValueBelow(30.0)).met, Some(false));
        assert_eq!(Row::value("pps", 2e5, "pkt/s").target(Target::ValueAtLeast(2e5)).met, Some(true));
    }
}
