//! The host's watchdog over one running VM: reads the console, parses
//! records, and kills the VM on a kernel-trouble marker, a wall-clock
//! timeout or silence. The guest's verdict comes only from its records
//! (QEMU exits 0 however the guest ends).

use std::io::Read;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::console::{self, ConsoleParser, Event, Record};
use super::qemu::QemuChild;
use super::CellSpec;

/// How a cell failed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The wall-clock timeout passed.
    Timeout,
    /// The guest said nothing for the silence timeout.
    Silent,
    /// A panic/oops/BUG/WARNING/stall/lockup line.
    KernelTrouble,
    /// A malformed record.
    Protocol,
    /// QEMU exited without the final record.
    NoFinal,
    /// The guest reported errors (final record not ok).
    Guest,
    /// The caller cancelled (Ctrl-C).
    Cancelled,
}

/// Why a cell failed, with the console lines that show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, thiserror::Error)]
#[error("{kind:?}: {message}\n--- console ---\n{}", log.join("\n"))]
pub struct CellFailure {
    /// The category.
    pub kind: FailureKind,
    /// One sentence.
    pub message: String,
    /// The relevant console lines (the tail, or around the marker).
    pub log: Vec<String>,
}

/// What watching produced.
#[derive(Debug, Default)]
pub(super) struct Watched {
    pub records: Vec<Record>,
    pub console: Vec<String>,
    pub first_record: Option<Duration>,
    /// When the first `result` record arrived (the guest's work has output).
    pub first_result: Option<Duration>,
    pub failure: Option<CellFailure>,
    pub stderr: String,
}

fn tail(lines: &[String], n: usize) -> Vec<String> {
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// Watch until QEMU closes the console or the watchdog fires.
pub(super) fn watch(child: &mut QemuChild, spec: &CellSpec, started: Instant) -> Watched {
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let stdout = child.child().stdout.take();
    let stderr = child.child().stderr.take();
    if let Some(mut out) = stdout {
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
    }
    let err_thread = stderr.map(|mut e| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = e.read_to_string(&mut s);
            s
        })
    });
    let mut w = Watched::default();
    let mut parser = ConsoleParser::new();
    let mut last_talk = Instant::now();
    loop {
        let now = Instant::now();
        let deadline = started + spec.timeout;
        let quiet_deadline = last_talk + spec.silence_timeout;
        if now >= deadline || now >= quiet_deadline {
            let (kind, what, limit) = if now >= deadline {
                (FailureKind::Timeout, "did not finish within", spec.timeout)
            } else {
                (FailureKind::Silent, "said nothing for", spec.silence_timeout)
            };
            let message = format!("the guest {what} {limit:?}; VM killed");
            w.failure = Some(CellFailure { kind, message, log: tail(&w.console, 30) });
            break;
        }
        if spec.cancel.as_ref().is_some_and(|c| c.requested()) {
            let message = "cancelled; VM killed".to_owned();
            w.failure = Some(CellFailure { kind: FailureKind::Cancelled, message, log: tail(&w.console, 10) });
            break;
        }
        // Wake at least every 200 ms to notice a cancellation.
        let wait = (deadline.min(quiet_deadline) - now).min(Duration::from_millis(200));
        match rx.recv_timeout(wait) {
            Ok(bytes) => {
                last_talk = Instant::now();
                for ev in parser.feed(&bytes) {
                    if handle(ev, &mut w, started, spec) {
                        break;
                    }
                }
                if w.failure.is_some() {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if let Some(ev) = parser.finish() {
                    handle(ev, &mut w, started, spec);
                }
                break;
            }
        }
    }
    child.kill();
    w.stderr = err_thread.and_then(|t| t.join().ok()).unwrap_or_default();
    if w.failure.is_none() {
        w.failure = verdict(&w.records, &w.console, &w.stderr);
    }
    w
}

/// Handle one console event; `true` when it ends the cell.
fn handle(ev: Result<Event, console::ProtocolError>, w: &mut Watched, started: Instant, spec: &CellSpec) -> bool {
    match ev {
        Ok(Event::Record { record, glued }) => {
            if let Some(g) = glued {
                w.console.push(g);
            }
            w.first_record.get_or_insert_with(|| started.elapsed());
            if matches!(record, Record::Result { .. }) {
                w.first_result.get_or_insert_with(|| started.elapsed());
            }
            if let Some(o) = &spec.observer {
                (o.0)(&spec.kernel.info.name, spec.lockdown, &record);
            }
            if record != Record::Heartbeat {
                w.records.push(record);
            }
            false
        }
        Ok(Event::Log(line)) => {
            let alarm = console::alarm(&line);
            w.console.push(line);
            if let Some(what) = alarm {
                let message = format!("{what} on the guest console; VM killed");
                w.failure = Some(CellFailure { kind: FailureKind::KernelTrouble, message, log: tail(&w.console, 30) });
                return true;
            }
            false
        }
        Err(e) => {
            w.failure = Some(CellFailure { kind: FailureKind::Protocol, message: e.to_string(), log: tail(&w.console, 10) });
            true
        }
    }
}

/// After a clean QEMU exit: the final record decides.
fn verdict(records: &[Record], console: &[String], stderr: &str) -> Option<CellFailure> {
    match records.last() {
        Some(Record::Final { ok: true, .. }) => None,
        Some(Record::Final { ok: false, errors }) => Some(CellFailure {
            kind: FailureKind::Guest,
            message: format!("the guest reported {} error(s): {}", errors.len(), errors.join("; ")),
            log: tail(console, 10),
        }),
        _ => {
            let mut log = tail(console, 30);
            if !stderr.trim().is_empty() {
                log.push(format!("qemu stderr: {}", stderr.trim()));
            }
            Some(CellFailure { kind: FailureKind::NoFinal, message: "QEMU exited without the guest's final record".into(), log })
        }
    }
}
