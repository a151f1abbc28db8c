//! Booting a kernel in QEMU with tclab as init, and reading its verdict.
//!
//! [`run_cell`] boots one kernel × lockdown cell: it builds the initramfs,
//! starts QEMU ([`qemu`]), watches the console ([`console`]) with a
//! wall-clock timeout, a silence timeout and kernel-trouble markers, and
//! returns the guest's records. Infrastructure problems (no QEMU, unreadable
//! files) are `Err(VmError)`; a cell that booted but failed is
//! `Ok(CellOutcome { failure: Some(..) })`.

pub mod console;
pub mod cpio;
pub mod elfdeps;
pub mod initramfs;
pub mod qemu;
pub mod strip;
pub mod tempdirs;
mod watch;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use console::Record;
pub use initramfs::PayloadFile;
pub use qemu::{Accel, Machine};
pub use watch::{CellFailure, FailureKind};

use crate::guest::{GuestRequest, HangMode, LockdownMode};
use crate::kernels::CachedKernel;

/// An infrastructure error: the cell could not be attempted.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A file operation failed.
    #[error("failed to {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The initramfs could not be written.
    #[error(transparent)]
    Cpio(#[from] cpio::CpioError),
    /// The init binary's libraries could not be found.
    #[error(transparent)]
    ElfDeps(#[from] elfdeps::ElfDepsError),
    /// QEMU could not be started.
    #[error("failed to start {command}: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The request could not be encoded.
    #[error("failed to encode the guest request: {0}")]
    Request(String),
    /// The kernel has no image usable for the machine.
    #[error("kernel {kernel}: {reason}")]
    Kernel {
        /// Manifest name.
        kernel: String,
        /// What is missing.
        reason: String,
    },
}

/// The program QEMU boots as `/init`, and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitSpec {
    /// The executable (default: the running `tclab`).
    pub exe: PathBuf,
    /// Its argv after argv[0] (passed after `--` on the kernel command line).
    pub args: Vec<String>,
}

/// One kernel × lockdown cell.
#[derive(Debug, Clone)]
pub struct CellSpec {
    /// The cached kernel to boot.
    pub kernel: CachedKernel,
    /// Lockdown mode for the command line (checked in the guest).
    pub lockdown: LockdownMode,
    /// Files to put in the guest.
    pub payload: Vec<PayloadFile>,
    /// The caller's work description, handed to the guest closure.
    pub work: serde_json::Value,
    /// Run the feature probe in the guest.
    pub probe: bool,
    /// Wall-clock limit for the whole cell, output or not.
    pub timeout: Duration,
    /// Limit for the guest saying nothing (it sends heartbeats).
    pub silence_timeout: Duration,
    /// Init program; `None` = the running executable without arguments.
    pub init: Option<InitSpec>,
    /// Force a machine; `None` = microvm, then q35 if microvm never reaches init.
    pub machine: Option<Machine>,
    /// Testing the watchdog only.
    pub debug_hang: Option<HangMode>,
    /// Extra kernel parameters appended to the lab's (e.g. `loglevel=7`).
    pub extra_cmdline: Vec<String>,
    /// Asked every 200 ms; when it says yes (e.g. after Ctrl-C) the VM is
    /// killed and the cell fails as cancelled.
    pub cancel: Option<Cancel>,
    /// Told of every record the guest sends, as it arrives (live progress).
    pub observer: Option<Observer>,
}

/// `(kernel name, lockdown, record)` for each record a cell's guest sends.
pub type ObserveFn = dyn Fn(&str, LockdownMode, &Record) + Send + Sync;

/// Sees each cell's records as they arrive (live progress).
#[derive(Clone)]
pub struct Observer(pub std::sync::Arc<ObserveFn>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

/// A cancellation check shared by cells.
#[derive(Clone)]
pub struct Cancel(std::sync::Arc<dyn Fn() -> bool + Send + Sync>);

impl Cancel {
    /// Cancelled when `flag` is set.
    pub fn flag(flag: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Cancel {
        Cancel(std::sync::Arc::new(move || flag.load(std::sync::atomic::Ordering::Relaxed)))
    }

    /// Cancelled when `check` returns true, e.g. `Cancel::when(tclab_lab::interrupt::requested)`.
    pub fn when(check: fn() -> bool) -> Cancel {
        Cancel(std::sync::Arc::new(check))
    }

    /// Has cancellation been requested?
    pub fn requested(&self) -> bool {
        (self.0)()
    }
}

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cancel(requested: {})", self.requested())
    }
}

impl CellSpec {
    /// A cell with defaults: probe on, 120 s timeout, 30 s silence limit.
    pub fn new(kernel: CachedKernel, lockdown: LockdownMode) -> CellSpec {
        CellSpec {
            kernel,
            lockdown,
            payload: Vec::new(),
            work: serde_json::Value::Null,
            probe: true,
            timeout: Duration::from_secs(120),
            silence_timeout: Duration::from_secs(30),
            init: None,
            machine: None,
            debug_hang: None,
            extra_cmdline: Vec::new(),
            cancel: None,
            observer: None,
        }
    }
}

/// Timings of a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Durations {
    /// QEMU start to the first record (init running), if one came.
    pub boot_to_first_record: Option<Duration>,
    /// QEMU start to the first `result` record (e.g. the first scenario done).
    pub boot_to_first_result: Option<Duration>,
    /// QEMU start to QEMU gone.
    pub total: Duration,
}

/// What a cell produced.
#[derive(Debug, Clone)]
pub struct CellOutcome {
    /// Kernel manifest name.
    pub kernel: String,
    /// Lockdown mode.
    pub lockdown: LockdownMode,
    /// The machine that ran it.
    pub machine: Machine,
    /// Every record but heartbeats, in order (the last is `final` on success).
    pub records: Vec<Record>,
    /// Console lines that were not records.
    pub console: Vec<String>,
    /// The last console lines (for reports).
    pub console_excerpt: Vec<String>,
    /// Timings.
    pub durations: Durations,
    /// Why the cell failed (`None`: the guest's final record said ok).
    pub failure: Option<CellFailure>,
    /// QEMU's stderr.
    pub qemu_stderr: String,
}

impl CellOutcome {
    /// Did the cell pass?
    pub fn ok(&self) -> bool {
        self.failure.is_none()
    }

    /// The `result` records, by name.
    pub fn results(&self) -> impl Iterator<Item = (&str, &serde_json::Value)> {
        self.records.iter().filter_map(|r| match r {
            Record::Result { name, data } => Some((name.as_str(), data)),
            _ => None,
        })
    }

    /// The probe record's features, if any.
    pub fn probe(&self) -> Option<&serde_json::Value> {
        self.records.iter().find_map(|r| match r {
            Record::Probe { features } => Some(features),
            _ => None,
        })
    }
}

fn init_of(spec: &CellSpec) -> Result<InitSpec, VmError> {
    match &spec.init {
        Some(i) => Ok(i.clone()),
        // Not current_exe(): a rebuild while the matrix runs replaces the
        // file, and its path then reads "… (deleted)"; /proc/self/exe still
        // opens the very binary that is running.
        None => Ok(InitSpec { exe: PathBuf::from("/proc/self/exe"), args: Vec::new() }),
    }
}

/// Boot one cell and collect its records.
pub fn run_cell(spec: &CellSpec) -> Result<CellOutcome, VmError> {
    let base = initramfs::write_base(&init_of(spec)?.exe, &spec.kernel)?;
    run_cell_on(spec, &base)
}

/// [`run_cell`] with a base archive already written (shared between cells).
pub fn run_cell_on(spec: &CellSpec, base: &initramfs::BaseImage) -> Result<CellOutcome, VmError> {
    let init = init_of(spec)?;
    let dir = tempfile::Builder::new()
        .prefix(&tempdirs::prefix("tclab-vm-"))
        .tempdir()
        .map_err(|source| VmError::Io { op: "create a temporary folder in", path: std::env::temp_dir(), source })?;
    let initrd = dir.path().join("initrd.cpio");
    write_initrd(spec, base, &initrd)?;
    let accel = qemu::detect_accel();
    let mut extra = Vec::new();
    if accel == Accel::Tcg {
        extra.extend(qemu::tcg_clock_params());
    }
    extra.extend(spec.extra_cmdline.iter().cloned());
    let cmdline = qemu::cmdline(spec.lockdown.as_str(), &extra, &init.args);
    let machines: Vec<Machine> = match spec.machine {
        Some(m) => vec![m],
        None => vec![Machine::Microvm, Machine::Q35],
    };
    let mut last = None;
    for machine in machines {
        let kernel = kernel_for(&spec.kernel, machine)?;
        let config = qemu::QemuConfig {
            kernel,
            initrd: initrd.clone(),
            cmdline: cmdline.clone(),
            machine,
            accel,
            memory_mib: 512,
            cpus: 1,
        };
        let outcome = boot(spec, &config)?;
        // Fall back only when init never ran: anything later is the cell's verdict.
        let never_ran = outcome.durations.boot_to_first_record.is_none();
        if !never_ran || spec.machine.is_some() || !spec.kernel.bzimage().is_file() {
            return Ok(outcome);
        }
        tracing::warn!(kernel = %spec.kernel.info.name, ?machine, "init never ran; trying the next machine");
        last = Some(outcome);
    }
    last.ok_or_else(|| VmError::Kernel { kernel: spec.kernel.info.name.clone(), reason: "no machine to try".into() })
}

fn kernel_for(k: &CachedKernel, machine: Machine) -> Result<PathBuf, VmError> {
    let path = match machine {
        Machine::Microvm => k.vmlinux(),
        Machine::Q35 => k.bzimage(),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(VmError::Kernel { kernel: k.info.name.clone(), reason: format!("{} is missing", path.display()) })
    }
}

fn write_initrd(spec: &CellSpec, base: &initramfs::BaseImage, out: &Path) -> Result<(), VmError> {
    let request = GuestRequest {
        kernel: spec.kernel.info.name.clone(),
        lockdown: spec.lockdown,
        modules: initramfs::guest_module_paths(&spec.kernel),
        probe: spec.probe,
        work: spec.work.clone(),
        debug_hang: spec.debug_hang,
        rng_seed: crate::guest::entropy::new_seed(),
    };
    let run = initramfs::run_archive(&request, &spec.payload)?;
    initramfs::write_cell_initrd(base, &run, out)
}

fn boot(spec: &CellSpec, config: &qemu::QemuConfig) -> Result<CellOutcome, VmError> {
    let started = Instant::now();
    let mut child = qemu::QemuChild::spawn(config)
        .map_err(|source| VmError::Spawn { command: format!("{} {:?}", qemu::QEMU, qemu::argv(config)), source })?;
    tracing::debug!(command = %child.command, "started QEMU");
    let watched = watch::watch(&mut child, spec, started);
    child.kill();
    let w = watched;
    let total = started.elapsed();
    let excerpt = w.console.iter().rev().take(40).rev().cloned().collect();
    Ok(CellOutcome {
        kernel: spec.kernel.info.name.clone(),
        lockdown: spec.lockdown,
        machine: config.machine,
        records: w.records,
        console: w.console,
        console_excerpt: excerpt,
        durations: Durations { boot_to_first_record: w.first_record, boot_to_first_result: w.first_result, total },
        failure: w.failure,
        qemu_stderr: w.stderr,
    })
}

/// Base archives by (init executable, kernel folder), built on first use.
type BaseCache = std::sync::Mutex<std::collections::HashMap<(PathBuf, PathBuf), std::sync::Arc<initramfs::BaseImage>>>;

fn cached_base(cache: &BaseCache, spec: &CellSpec) -> Result<std::sync::Arc<initramfs::BaseImage>, VmError> {
    let exe = init_of(spec)?.exe;
    let key = (exe.clone(), spec.kernel.dir.clone());
    // Held while building: cells of one kernel wait for one build, not N.
    let mut map = cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(base) = map.get(&key) {
        return Ok(base.clone());
    }
    let base = std::sync::Arc::new(initramfs::write_base(&exe, &spec.kernel)?);
    map.insert(key, base.clone());
    Ok(base)
}

/// Run cells, up to `jobs` at a time (each VM takes about one core).
/// Cells sharing a kernel share one base archive. Results come back in the
/// order of `specs`.
pub fn run_cells(specs: &[CellSpec], jobs: usize) -> Vec<Result<CellOutcome, VmError>> {
    run_cells_with(specs, jobs, |_, _| {})
}

/// [`run_cells`], calling `done(index, outcome)` as each cell ends (for live
/// progress), from the thread that ran it.
pub fn run_cells_with(
    specs: &[CellSpec],
    jobs: usize,
    done: impl Fn(usize, &Result<CellOutcome, VmError>) + Sync,
) -> Vec<Result<CellOutcome, VmError>> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    // A run killed with SIGKILL could not remove its folders: do it now.
    for path in tempdirs::remove_stale(&std::env::temp_dir()) {
        tracing::info!(path = %path.display(), "removed a dead run's folder");
    }
    let bases: BaseCache = Mutex::default();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<CellOutcome, VmError>>>> =
        Mutex::new((0..specs.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1).min(specs.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(spec) = specs.get(i) else { break };
                    let r = cached_base(&bases, spec).and_then(|base| run_cell_on(spec, &base));
                    done(i, &r);
                    if let Ok(mut all) = results.lock() {
                        all[i] = Some(r);
                    }
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(VmError::Request("cell was not run".into()))))
        .collect()
}

/// The default `-j`: one cell per core with KVM; under TCG one and a half
/// per core ([`jobs_for`]).
pub fn default_jobs() -> usize {
    jobs_for(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1), qemu::detect_accel())
}

/// Cells to run at once on `cores` cores. A TCG guest leaves its core idle
/// whenever it waits (a capture's quiet period, a service's reply, a span
/// poll): at one cell per core the full matrix used 77% of 2 cores (590
/// CPU-seconds in 381 s); at 3 cells 96%, and it took 317 s.
pub fn jobs_for(cores: usize, accel: Accel) -> usize {
    let cores = cores.max(1);
    match accel {
        Accel::Kvm => cores,
        Accel::Tcg => cores + cores.div_ceil(2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcg_runs_half_again_as_many_cells_as_cores_and_kvm_one_per_core() {
        let tcg: Vec<usize> = [0, 1, 2, 3, 4, 16].iter().map(|&c| jobs_for(c, Accel::Tcg)).collect();
        assert_eq!(tcg, [2, 2, 3, 5, 6, 24]);
        let kvm: Vec<usize> = [0, 1, 2, 16].iter().map(|&c| jobs_for(c, Accel::Kvm)).collect();
        assert_eq!(kvm, [1, 1, 2, 16]);
    }
}
