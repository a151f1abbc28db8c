//! What the host asks the guest to do: written by the host into the
//! per-run initramfs as [`REQUEST_PATH`], read by init.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where the request lives in the guest.
pub const REQUEST_PATH: &str = "/tclab/request.json";
/// Folder of the kernel's modules in the guest.
pub const MODULES_DIR: &str = "/tclab/modules";
/// Folder the payload (scenarios, pcaps, snapshots) is unpacked under.
pub const PAYLOAD_DIR: &str = "/tclab/payload";

/// A kernel lockdown mode, as on the kernel command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockdownMode {
    /// No lockdown.
    None,
    /// Integrity: no writes to kernel memory (bpf_probe_write_user refused).
    Integrity,
    /// Confidentiality: integrity plus no reads of kernel memory.
    Confidentiality,
}

impl LockdownMode {
    /// Every mode, in increasing strictness.
    pub const ALL: [LockdownMode; 3] = [LockdownMode::None, LockdownMode::Integrity, LockdownMode::Confidentiality];

    /// The kernel's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LockdownMode::None => "none",
            LockdownMode::Integrity => "integrity",
            LockdownMode::Confidentiality => "confidentiality",
        }
    }
}

impl fmt::Display for LockdownMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LockdownMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        LockdownMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("unknown lockdown mode {s:?} (none, integrity, confidentiality)"))
    }
}

/// Make the guest misbehave, to test the host's watchdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HangMode {
    /// Sleep forever but keep sending heartbeats: only the wall-clock
    /// timeout can end it.
    Busy,
    /// Stop writing anything: the silence timeout ends it.
    Silent,
    /// Exit init, which panics the kernel: the console marker ends it.
    ExitInit,
}

/// The guest's instructions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestRequest {
    /// Kernel manifest name (for messages).
    pub kernel: String,
    /// The mode the kernel was booted with; the guest checks it.
    pub lockdown: LockdownMode,
    /// Module files to load, in order.
    pub modules: Vec<String>,
    /// Run the feature probe and send it as a `probe` record.
    pub probe: bool,
    /// The caller's work description (e.g. which scenarios), opaque here.
    pub work: serde_json::Value,
    /// Testing the watchdog only.
    #[serde(default)]
    pub debug_hang: Option<HangMode>,
    /// Random bytes (hex) for init to credit to the kernel's pool
    /// ([`super::entropy`]); empty: none.
    #[serde(default)]
    pub rng_seed: String,
}
