//! Guest mode: `tclab` running as `/init` inside the VM.
//!
//! `main` mounts the file systems, loads the kernel's modules, checks the
//! lockdown mode, runs the probe and the caller's work, streams records on
//! the console (see [`crate::vm::console`]) and reboots, which makes QEMU
//! exit. Every failure becomes an `error` record; init never exits (that
//! would panic the kernel) and never panics out.

pub mod entropy;
mod mounts;
mod request;

use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use mounts::{MOUNTS, Mount, mount_all};
pub use request::{GuestRequest, HangMode, LockdownMode, MODULES_DIR, PAYLOAD_DIR, REQUEST_PATH};

use crate::vm::console::{self, Record};

/// Set to `1` to force guest mode when not pid 1 (debugging in a container).
pub const GUEST_ENV: &str = "TCLAB_GUEST";

/// How often the guest says it is alive.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);

/// True when this process is the VM's init (pid 1) or [`GUEST_ENV`]`=1`.
pub fn is_guest() -> bool {
    std::process::id() == 1 || std::env::var(GUEST_ENV).is_ok_and(|v| v == "1")
}

/// Where records go: the console (stdout, which the kernel opened on
/// /dev/console for init), and the errors seen so far.
#[derive(Debug, Default)]
pub struct Sink {
    errors: Vec<String>,
    probe: Option<tclab_datapath::probe::KernelFeatures>,
}

impl Sink {
    /// Send a record as one write, so lines from other threads cannot split it.
    pub fn emit(&mut self, record: &Record) {
        write_record(record);
    }

    /// Send a `result` record.
    pub fn result(&mut self, name: &str, data: serde_json::Value) {
        self.emit(&Record::Result { name: name.to_owned(), data });
    }

    /// Record a failed step: an `error` record now, and in the final record.
    pub fn error(&mut self, op: &str, message: impl std::fmt::Display) {
        let message = message.to_string();
        self.errors.push(format!("{op}: {message}"));
        write_record(&Record::Error { op: op.to_owned(), message });
    }

    /// Errors so far.
    pub fn errors(&self) -> &[String] {
        &self.errors
    }

    /// The probe init took (when the request asked for one), so the work
    /// does not probe again (tens of ms of BPF loads under TCG).
    pub fn probe(&self) -> Option<&tclab_datapath::probe::KernelFeatures> {
        self.probe.as_ref()
    }
}

fn write_record(record: &Record) {
    let line = console::encode(record);
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}

/// Run as init: set up, call `run` with the request, report, reboot.
/// `run` returning `Err` or panicking fails the cell; it never kills init.
pub fn main<F>(run: F) -> !
where
    F: FnOnce(&GuestRequest, &mut Sink) -> anyhow::Result<()>,
{
    let mut sink = Sink::default();
    let quiet = Arc::new(AtomicBool::new(false));
    start_heartbeat(quiet.clone());
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| setup_and_run(run, &mut sink, &quiet)));
    if let Err(panic) = outcome {
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "non-string panic".into());
        sink.error("guest work", format!("panicked: {what}"));
    }
    let errors = sink.errors().to_vec();
    // No heartbeat after the final record (the host checks the stream ends there).
    quiet.store(true, Ordering::Relaxed);
    write_record(&Record::Final { ok: errors.is_empty(), errors });
    power_off()
}

fn setup_and_run<F>(run: F, sink: &mut Sink, quiet: &AtomicBool)
where
    F: FnOnce(&GuestRequest, &mut Sink) -> anyhow::Result<()>,
{
    for e in mount_all() {
        sink.error("mount", e);
    }
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"));
    sink.emit(&Record::Hello { release });
    let request = match read_request() {
        Ok(r) => r,
        Err(e) => return sink.error("read request", e),
    };
    seed_rng(&request.rng_seed, sink);
    load_modules(&request.modules, sink);
    check_lockdown(request.lockdown, sink);
    if request.probe {
        run_probe(sink);
    }
    if let Some(mode) = request.debug_hang {
        hang(mode, quiet);
    }
    if let Err(e) = run(&request, sink) {
        sink.error("guest work", format!("{e:#}"));
    }
}

fn read_request() -> Result<GuestRequest, String> {
    let text = std::fs::read_to_string(REQUEST_PATH).map_err(|e| format!("failed to read {REQUEST_PATH}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("failed to parse {REQUEST_PATH}: {e}"))
}

/// Credit the host's seed, so that nothing in the guest waits for its CRNG.
fn seed_rng(seed: &str, sink: &mut Sink) {
    if seed.is_empty() {
        return;
    }
    match entropy::credit(seed) {
        Err(e) => sink.error("seed the RNG", e),
        Ok(()) if !entropy::crng_ready() => {
            sink.error("seed the RNG", "credited 512 bits, but getrandom(2) would still block");
        }
        Ok(()) => {}
    }
}

/// `finit_module` each file in order; an already loaded module is fine.
fn load_modules(modules: &[String], sink: &mut Sink) {
    for path in modules {
        let op = format!("finit_module({path})");
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) => {
                sink.error(&op, format!("open failed: {e}"));
                continue;
            }
        };
        match nix::kmod::finit_module(&file, c"", nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => sink.error(&op, e),
        }
    }
}

/// The selected mode in `none [integrity] confidentiality`.
pub fn selected_lockdown(file: &str) -> Option<&str> {
    let start = file.find('[')? + 1;
    let end = start + file[start..].find(']')?;
    Some(&file[start..end])
}

fn check_lockdown(expected: LockdownMode, sink: &mut Sink) {
    const PATH: &str = "/sys/kernel/security/lockdown";
    let file = match std::fs::read_to_string(PATH) {
        Ok(f) => f.trim().to_owned(),
        Err(e) => return sink.error("check lockdown", format!("failed to read {PATH}: {e}")),
    };
    let actual = selected_lockdown(&file).unwrap_or("").to_owned();
    sink.emit(&Record::Lockdown { expected: expected.to_string(), file: file.clone(), actual: actual.clone() });
    if actual != expected.as_str() {
        sink.error("check lockdown", format!("booted with lockdown={expected} but {PATH} reads {file:?}"));
    }
}

fn run_probe(sink: &mut Sink) {
    let features = tclab_datapath::probe::KernelFeatures::probe();
    match serde_json::to_value(&features) {
        Ok(json) => sink.emit(&Record::Probe { features: json }),
        Err(e) => sink.error("probe", format!("failed to encode the probe result: {e}")),
    }
    sink.probe = Some(features);
}

fn start_heartbeat(quiet: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new().name("heartbeat".into()).spawn(move || {
        loop {
            std::thread::sleep(HEARTBEAT_EVERY);
            if !quiet.load(Ordering::Relaxed) {
                write_record(&Record::Heartbeat);
            }
        }
    });
    if let Err(e) = spawned {
        eprintln!("tclab init: failed to start the heartbeat thread: {e}");
    }
}

fn hang(mode: HangMode, quiet: &AtomicBool) -> ! {
    if mode == HangMode::ExitInit {
        eprintln!("tclab init: exiting on request; the kernel will panic");
        std::process::exit(1);
    }
    if mode == HangMode::Silent {
        quiet.store(true, Ordering::Relaxed);
    }
    eprintln!("tclab init: hanging on request ({mode:?})");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Flush and reboot: with `reboot=t` and QEMU's `-no-reboot`, QEMU exits.
fn power_off() -> ! {
    nix::unistd::sync();
    let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    eprintln!("tclab init: reboot failed: {err:?}; halting here");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
