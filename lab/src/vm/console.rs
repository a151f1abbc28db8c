//! The console protocol between guest and host.
//!
//! The guest writes records on the serial console as single lines:
//! `@@TCLAB<version> <length> <json>`, where `<length>` is the byte length
//! of `<json>`. The prefix is searched anywhere in a line, because firmware
//! escape sequences or kernel messages can glue onto it; the length makes a
//! truncated or interleaved record detectable instead of silently wrong.
//! Everything that is not a record is console log. Parsing is strict: an
//! unknown version, a bad length, undecodable JSON, a second `final`
//! record, or a record after `final` is a protocol error.

use serde::{Deserialize, Serialize};

/// Record marker; the protocol version follows it directly.
pub const RECORD_PREFIX: &str = "@@TCLAB";
/// The version this build writes and accepts.
pub const PROTOCOL_VERSION: u32 = 1;

/// One record from the guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// Init started: the kernel release and the lockdown file's content.
    Hello {
        /// `uname -r`.
        release: String,
    },
    /// Still alive (sent every few seconds; not stored).
    Heartbeat,
    /// The lockdown mode check.
    Lockdown {
        /// What the cell asked for.
        expected: String,
        /// `/sys/kernel/security/lockdown` as read.
        file: String,
        /// The selected mode found in it.
        actual: String,
    },
    /// The feature probe's result (the datapath's `KernelFeatures` as JSON).
    Probe {
        /// The probe's fields.
        features: serde_json::Value,
    },
    /// A result of the requested work (e.g. one scenario).
    Result {
        /// What it is the result of.
        name: String,
        /// The result itself.
        data: serde_json::Value,
    },
    /// A failed step in the guest (the cell fails, the guest goes on).
    Error {
        /// What was being done, e.g. `finit_module(/lib/modules/veth.ko)`.
        op: String,
        /// The error.
        message: String,
    },
    /// The last record: overall status and every error seen.
    Final {
        /// No step failed.
        ok: bool,
        /// The errors, in order.
        errors: Vec<String>,
    },
}

/// Encode a record as one console line (with the trailing newline).
pub fn encode(record: &Record) -> String {
    let json = serde_json::to_string(record).unwrap_or_else(|e| {
        format!(r#"{{"type":"error","op":"encode record","message":{:?}}}"#, e.to_string())
    });
    format!("{RECORD_PREFIX}{PROTOCOL_VERSION} {} {json}\n", json.len())
}

/// A violation of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("console protocol error on line {line}: {reason}: {text:?}")]
pub struct ProtocolError {
    /// Console line number (1-based).
    pub line: usize,
    /// What is wrong.
    pub reason: String,
    /// The offending line (shortened).
    pub text: String,
}

/// What one console line turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A record, with any text glued before it on the same line.
    Record {
        /// The record.
        record: Record,
        /// Text before the prefix (escape sequences, a kernel message), if any.
        glued: Option<String>,
    },
    /// A plain console line.
    Log(String),
}

/// Incremental parser: feed it bytes as they arrive.
#[derive(Debug, Default)]
pub struct ConsoleParser {
    pending: Vec<u8>,
    line: usize,
    seen_final: bool,
}

impl ConsoleParser {
    /// A fresh parser.
    pub fn new() -> ConsoleParser {
        ConsoleParser::default()
    }

    /// Has the final record been seen?
    pub fn seen_final(&self) -> bool {
        self.seen_final
    }

    /// Feed bytes; returns the events of every line they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Result<Event, ProtocolError>> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(nl) = self.pending.iter().position(|b| *b == b'\n') {
            let raw: Vec<u8> = self.pending.drain(..=nl).collect();
            out.push(self.line_event(&raw[..raw.len() - 1]));
        }
        out
    }

    /// The unterminated last line, once the console has closed: a record
    /// there was cut off.
    pub fn finish(&mut self) -> Option<Result<Event, ProtocolError>> {
        if self.pending.is_empty() {
            return None;
        }
        let raw = std::mem::take(&mut self.pending);
        Some(self.line_event(&raw))
    }

    fn line_event(&mut self, raw: &[u8]) -> Result<Event, ProtocolError> {
        self.line += 1;
        let text = String::from_utf8_lossy(raw);
        let text = text.trim_end_matches('\r');
        let Some(at) = text.find(RECORD_PREFIX) else {
            return Ok(Event::Log(text.to_owned()));
        };
        let err = |reason: String| ProtocolError { line: self.line, reason, text: shorten(text) };
        let record = parse_record(&text[at + RECORD_PREFIX.len()..]).map_err(err)?;
        // The heartbeat thread may get one line out between the final record
        // and the reboot: harmless, unlike any other record after the end.
        if self.seen_final && record == Record::Heartbeat {
            return Ok(Event::Record { record, glued: None });
        }
        if self.seen_final {
            let reason = if matches!(record, Record::Final { .. }) { "a second final record" } else { "a record after the final record" };
            return Err(ProtocolError { line: self.line, reason: reason.into(), text: shorten(text) });
        }
        self.seen_final = matches!(record, Record::Final { .. });
        let glued = Some(text[..at].to_owned()).filter(|g| !g.trim().is_empty());
        Ok(Event::Record { record, glued })
    }
}

/// Parse `<version> <length> <json>` (the part after the prefix).
fn parse_record(rest: &str) -> Result<Record, String> {
    let (version, rest) = rest.split_once(' ').ok_or("no space after the version")?;
    let version: u32 = version.parse().map_err(|_| format!("version {version:?} is not a number"))?;
    if version != PROTOCOL_VERSION {
        return Err(format!("unknown protocol version {version} (this tclab speaks {PROTOCOL_VERSION})"));
    }
    let (len, json) = rest.split_once(' ').ok_or("no space after the length")?;
    let len: usize = len.parse().map_err(|_| format!("length {len:?} is not a number"))?;
    if json.len() < len {
        return Err(format!("truncated record: {} of {len} bytes", json.len()));
    }
    if json.len() > len {
        return Err(format!("{} bytes after the {len}-byte record", json.len() - len));
    }
    serde_json::from_str(json).map_err(|e| format!("bad record JSON: {e}"))
}

fn shorten(s: &str) -> String {
    if s.chars().count() <= 200 {
        return s.to_owned();
    }
    let head: String = s.chars().take(200).collect();
    format!("{head}…")
}

/// Console lines that mean the guest kernel is broken: the VM is killed at
/// once and the cell fails with the lines around it.
pub const ALARMS: &[(&str, &str)] = &[
    ("Kernel panic", "kernel panic"),
    ("Oops:", "kernel oops"),
    ("BUG:", "kernel BUG"),
    ("WARNING:", "kernel warning"),
    ("rcu_sched self-detected stall", "RCU stall"),
    ("rcu: INFO: rcu_", "RCU stall"),
    ("soft lockup", "soft lockup"),
    ("hard LOCKUP", "hard lockup"),
];

/// The alarm a console line raises, if any.
pub fn alarm(line: &str) -> Option<&'static str> {
    ALARMS.iter().find(|(marker, _)| line.contains(marker)).map(|(_, what)| *what)
}
