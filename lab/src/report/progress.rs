//! Live progress of `tclab run` on a terminal: one line per cell, redrawn
//! while it runs (queued → scenarios done so far, skips and errors, elapsed),
//! then replaced by the cell's verdict line ([`crate::matrix::cell_line`]).
//! When stderr is not a terminal nothing is drawn at all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::guest::LockdownMode;
use crate::matrix::work::{SCENARIO_RECORD, ScenarioRecord};
use crate::matrix::{self, CellReport};
use crate::runner::{Collected, ScenarioOutcome, Status};
use crate::vm::{Observer, Record};

/// The live view; cheap to clone, a no-op when not live.
#[derive(Clone, Default)]
pub struct Progress {
    live: Option<Arc<Live>>,
}

struct Live {
    multi: MultiProgress,
    cells: Mutex<HashMap<String, CellLine>>,
}

struct CellLine {
    bar: ProgressBar,
    total: usize,
    done: usize,
    skipped: usize,
    failed: usize,
    running: bool,
}

/// What one line of a running cell says.
pub fn running_text(done: usize, total: usize, skipped: usize, failed: usize) -> String {
    let mut s = format!("{done}/{total} scenarios");
    if skipped > 0 {
        s.push_str(&format!(", {skipped} skipped"));
    }
    if failed > 0 {
        s.push_str(&format!(", {failed} failed"));
    }
    s
}

impl Progress {
    /// Draws on stderr when `live`, else does nothing.
    pub fn new(live: bool) -> Progress {
        let live = live.then(|| {
            Arc::new(Live { multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()), cells: Mutex::default() })
        });
        Progress { live }
    }

    pub fn is_live(&self) -> bool {
        self.live.is_some()
    }

    /// Add a queued line for a cell that will run `scenarios` scenarios.
    pub fn plan(&self, label: &str, scenarios: usize) {
        let Some(live) = &self.live else { return };
        let bar = live.multi.add(ProgressBar::new_spinner());
        bar.set_style(style("  {prefix:<24} {msg}"));
        bar.set_prefix(label.to_string());
        bar.set_message("queued");
        if let Ok(mut cells) = live.cells.lock() {
            cells.insert(label.to_string(), CellLine { bar, total: scenarios, done: 0, skipped: 0, failed: 0, running: false });
        }
    }

    fn update(&self, label: &str, f: impl FnOnce(&mut CellLine)) {
        let Some(live) = &self.live else { return };
        let Ok(mut cells) = live.cells.lock() else { return };
        let Some(line) = cells.get_mut(label) else { return };
        if !line.running {
            line.running = true;
            line.bar.reset_elapsed();
            line.bar.set_style(style("{spinner} {prefix:<24} {msg} ({elapsed})"));
            line.bar.enable_steady_tick(Duration::from_millis(200));
        }
        f(line);
        line.bar.set_message(running_text(line.done, line.total, line.skipped, line.failed));
    }

    /// A host-kernel scenario ended.
    pub fn host_outcome(&self, label: &str, o: &ScenarioOutcome) {
        self.update(label, |l| {
            l.done += 1;
            match o.status {
                Status::Skipped(_) => l.skipped += 1,
                Status::Failed(_) => l.failed += 1,
                Status::Passed => {}
            }
        });
    }

    /// A QEMU cell sent a record: the first one means it runs; a scenario
    /// record counts (its verdict comes when the cell is judged; a skip or an
    /// error in the guest is known now).
    pub fn record(&self, label: &str, record: &Record) {
        self.update(label, |l| {
            if let Record::Result { name, data } = record
                && name == SCENARIO_RECORD
            {
                l.done += 1;
                match serde_json::from_value::<ScenarioRecord>(data.clone()).map(|r| r.collected) {
                    Ok(Collected::Skipped { .. }) => l.skipped += 1,
                    Ok(Collected::Error { .. }) => l.failed += 1,
                    _ => {}
                }
            }
        });
    }

    /// The observer to hand the matrix.
    pub fn observer(&self) -> Option<Observer> {
        let me = self.clone();
        self.live.as_ref().map(|_| {
            Observer(Arc::new(move |kernel: &str, lockdown: LockdownMode, record: &Record| {
                me.record(&format!("{kernel}/{lockdown}"), record);
            }))
        })
    }

    /// Replace a cell's line with its verdict.
    pub fn finish(&self, label: &str, line: String) {
        let Some(live) = &self.live else { return };
        let Ok(mut cells) = live.cells.lock() else { return };
        if let Some(l) = cells.remove(label) {
            l.bar.set_style(style("{msg}"));
            l.bar.finish_with_message(line);
        } else {
            let _ = live.multi.println(line);
        }
    }

    /// A QEMU cell ended.
    pub fn cell_done(&self, c: &CellReport) {
        self.finish(&c.label(), matrix::cell_line(c));
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_text_names_only_what_happened() {
        assert_eq!(running_text(3, 46, 0, 0), "3/46 scenarios");
        assert_eq!(running_text(3, 46, 2, 1), "3/46 scenarios, 2 skipped, 1 failed");
    }

    #[test]
    fn not_live_draws_nothing_and_hands_no_observer() {
        let p = Progress::new(false);
        p.plan("5.10/none", 3);
        p.record("5.10/none", &Record::Heartbeat);
        p.finish("5.10/none", "done".into());
        assert!(!p.is_live());
        assert!(p.observer().is_none());
    }
}
