//! The only place that starts `qemu-system-x86_64`. The argv is built from
//! small functions, one per concern, each saying why its flags are there.
//! The child is killed when its guard drops, when tclab dies
//! (PR_SET_PDEATHSIG), and by [`kill_all`] from a signal handler.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";

/// Which machine model to boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Machine {
    /// `microvm,acpi=off` with the ELF vmlinux through PVH: fastest (no
    /// firmware, no in-guest decompression) and reliable without ACPI.
    Microvm,
    /// `q35` with the bzImage: the fallback for kernels without PVH support.
    Q35,
}

/// Hardware acceleration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Accel {
    /// /dev/kvm works.
    Kvm,
    /// Pure emulation (machines without VT-x, CI).
    Tcg,
}

/// Forces the accelerator (`kvm` or `tcg`), e.g. when detection is wrong.
pub const ACCEL_ENV: &str = "TCLAB_ACCEL";

/// KVM when the CPU advertises VT-x/AMD-V, /dev/kvm opens and a VM can be
/// created in it; TCG otherwise. [`ACCEL_ENV`] overrides.
pub fn detect_accel() -> Accel {
    match std::env::var(ACCEL_ENV).as_deref() {
        Ok("kvm") => return Accel::Kvm,
        Ok("tcg") => return Accel::Tcg,
        _ => {}
    }
    // Sandboxes can expose a /dev/kvm that creates VMs but cannot run them
    // (seen here: KVM "emulation failure" at the first instruction); the CPU
    // flags tell the truth.
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has_virt = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if has_virt && kvm_creates_vm() { Accel::Kvm } else { Accel::Tcg }
}

fn kvm_creates_vm() -> bool {
    use std::os::fd::AsRawFd;
    const KVM_CREATE_VM: libc::c_ulong = 0xae01;
    let Ok(kvm) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") else {
        return false;
    };
    // SAFETY: KVM_CREATE_VM takes an integer argument and returns a new fd.
    let vm = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_CREATE_VM, 0) };
    if vm < 0 {
        return false;
    }
    // SAFETY: `vm` is a fresh fd we own.
    unsafe { libc::close(vm) };
    true
}

/// Everything one VM needs.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// ELF vmlinux (microvm) or bzImage (q35).
    pub kernel: PathBuf,
    /// The initramfs file.
    pub initrd: PathBuf,
    /// The kernel command line.
    pub cmdline: String,
    /// Machine model.
    pub machine: Machine,
    /// Acceleration.
    pub accel: Accel,
    /// Guest RAM in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub cpus: u32,
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// No default devices, no user config, no display: the guest only gets what
/// we add, and QEMU reads nothing from the host's configuration.
fn base_args() -> Vec<OsString> {
    os(&["-nodefaults", "-no-user-config", "-display", "none"])
}

/// Machine model. microvm: ACPI off because with ACPI 5.10 and 6.1 hang at
/// "ACPI: Core revision"; without ACPI power-off only halts, hence reboot
/// (see [`lifecycle_args`]).
fn machine_args(m: Machine) -> Vec<OsString> {
    match m {
        Machine::Microvm => os(&["-machine", "microvm,acpi=off"]),
        Machine::Q35 => os(&["-machine", "q35"]),
    }
}

/// KVM with the host CPU when available; TCG keeps QEMU's default CPU model
/// (the one the boot times were measured with).
fn accel_args(a: Accel) -> Vec<OsString> {
    match a {
        Accel::Kvm => os(&["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => os(&["-accel", "tcg"]),
    }
}

/// One vCPU: a VM costs one host core under TCG, and cells run in parallel
/// instead. 512 MiB holds the initramfs (the tclab binary) and the scenarios.
fn size_args(memory_mib: u32, cpus: u32) -> Vec<OsString> {
    vec!["-m".into(), memory_mib.to_string().into(), "-smp".into(), cpus.to_string().into()]
}

/// The 8250 UART on stdio: built into every Debian kernel (virtio console
/// is a module on 5.10/6.1), and stdio needs no socket or pty to clean up.
fn serial_args() -> Vec<OsString> {
    os(&["-serial", "stdio"])
}

/// Kernel, initramfs and command line.
fn kernel_args(c: &QemuConfig) -> Vec<OsString> {
    vec![
        "-kernel".into(),
        c.kernel.clone().into(),
        "-initrd".into(),
        c.initrd.clone().into(),
        "-append".into(),
        c.cmdline.clone().into(),
    ]
}

/// A guest reboot (init's `reboot(RB_AUTOBOOT)`, a panic with `panic=-1`, a
/// triple fault) makes QEMU exit instead of booting again.
fn lifecycle_args() -> Vec<OsString> {
    os(&["-no-reboot"])
}

/// The full argv (without the program name).
pub fn argv(c: &QemuConfig) -> Vec<OsString> {
    let mut args = base_args();
    args.extend(machine_args(c.machine));
    args.extend(accel_args(c.accel));
    args.extend(size_args(c.memory_mib, c.cpus));
    args.extend(serial_args());
    args.extend(kernel_args(c));
    args.extend(lifecycle_args());
    args
}

/// The kernel command line for a cell.
pub fn cmdline(lockdown: &str, extra: &[String], init_args: &[String]) -> String {
    let mut parts = vec![
        // The 8250 UART QEMU connects to stdio.
        "console=ttyS0".to_owned(),
        // Keep the console for our records and real trouble.
        "quiet".to_owned(),
        // Crypto self-tests and the jitter entropy source cost seconds under TCG.
        "cryptomgr.notests".to_owned(),
        "initcall_blacklist=jent_mod_init,crypto_kdf108_init".to_owned(),
        // Reboot by triple fault: with -no-reboot QEMU exits at once.
        "reboot=t".to_owned(),
        // A panic reboots immediately (so QEMU exits) instead of hanging.
        "panic=-1".to_owned(),
    ];
    // `lockdown=none` is not a valid value (the kernel logs a malformed
    // option); no lockdown is the default.
    if lockdown != "none" {
        parts.push(format!("lockdown={lockdown}"));
    }
    parts.extend(extra.iter().cloned());
    if !init_args.is_empty() {
        // Everything after `--` goes to init's argv.
        parts.push("--".to_owned());
        parts.extend(init_args.iter().cloned());
    }
    parts.join(" ")
}

/// Kernel parameters that keep a TCG guest's clock right.
///
/// TCG's guest TSC is the host's TSC (QEMU reads it with `rdtsc`), so it
/// keeps real time; the guest's *timer ticks*, though, arrive late whenever
/// the host is busy. Left alone, the kernel calibrates the TSC against those
/// ticks (on a loaded host it fails: "Unable to calibrate against PIT") and
/// its clocksource watchdog marks the TSC unstable, so the guest falls back to
/// `refined-jiffies`: a clock that loses every late tick (a bare boot saw
/// 2.2 s of guest time in 6.9 s of real time) with 4 ms resolution, which
/// stretches every sleep and poll timeout of the lab in the guest and makes
/// its own durations read short. `tsc_early_khz` gives the known rate (no
/// calibration), `tsc=reliable` turns the watchdog off.
pub fn tcg_clock_params() -> Vec<String> {
    static KHZ: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    let mut params = vec!["tsc=reliable".to_owned()];
    if let Some(khz) = *KHZ.get_or_init(host_tsc_khz) {
        params.push(format!("tsc_early_khz={khz}"));
    }
    params
}

/// The host TSC's rate, measured against CLOCK_MONOTONIC (median of three
/// 20 ms windows); `None` off x86_64 or when it makes no sense.
fn host_tsc_khz() -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    {
        let mut rates: Vec<u64> = (0..3)
            .filter_map(|_| {
                // SAFETY: rdtsc has no preconditions on x86_64.
                let (c0, t0) = (unsafe { core::arch::x86_64::_rdtsc() }, std::time::Instant::now());
                std::thread::sleep(std::time::Duration::from_millis(20));
                // SAFETY: as above.
                let (c1, t1) = (unsafe { core::arch::x86_64::_rdtsc() }, std::time::Instant::now());
                let micros = u64::try_from(t1.duration_since(t0).as_micros()).ok().filter(|m| *m > 0)?;
                Some(c1.checked_sub(c0)?.saturating_mul(1000) / micros)
            })
            .collect();
        rates.sort_unstable();
        // 100 MHz – 10 GHz, or something is off (e.g. an emulated host).
        rates.get(rates.len() / 2).copied().filter(|khz| (100_000..10_000_000).contains(khz))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// PIDs of running QEMU children, for [`kill_all`].
static LIVE: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// SIGKILL every QEMU this process started and has not reaped. Safe to
/// call from a Ctrl-C handler thread.
pub fn kill_all() {
    let pids: Vec<u32> = LIVE.lock().map(|l| l.iter().copied().collect()).unwrap_or_default();
    for pid in pids {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// A running QEMU; dropping it kills and reaps the process.
#[derive(Debug)]
pub struct QemuChild {
    child: Child,
    /// The argv, for messages.
    pub command: String,
}

impl QemuChild {
    /// Start QEMU. stdout is the guest's console; stderr is QEMU's own.
    /// PR_SET_PDEATHSIG ties the child to the spawning thread: callers keep
    /// the thread alive until the VM is done (run_cell does).
    pub fn spawn(c: &QemuConfig) -> std::io::Result<QemuChild> {
        let args = argv(c);
        let command = format!(
            "{QEMU} {}",
            args.iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
        );
        let mut cmd = Command::new(QEMU);
        cmd.args(&args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        if let Ok(mut live) = LIVE.lock() {
            live.insert(child.id());
        }
        Ok(QemuChild { child, command })
    }

    /// The child process (to take its pipes, wait for it).
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Kill (if still running) and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(mut live) = LIVE.lock() {
            live.remove(&self.child.id());
        }
    }
}

impl Drop for QemuChild {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Is `path` an ELF file (microvm) rather than a bzImage (q35)?
pub fn is_elf_kernel(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && head == *b"\x7fELF"
}
