//! Failing VMs in the kernel matrix (issue #9): a kernel that panics at
//! boot, one that hangs in boot, a guest that runs out of memory, QEMU
//! killed under a running cell, QEMU missing. Each ends within its limit
//! with a clear cell failure and the console lines that show it, and the
//! cells next to it in the same `run_cells` still pass. (vm_boot.rs covers
//! the guest-side hangs: busy, silent, init exiting, cancel.)
//!
//! Needs the kernels in the cache (`tclab kernels fetch`) and
//! `qemu-system-x86_64`; runs this test binary as the guest's `/init`.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use tclab_lab::guest::{self, HangMode, LockdownMode};
use tclab_lab::kernels::{self, Cache, CachedKernel, Catalog};
use tclab_lab::vm::{self, CellOutcome, CellSpec, FailureKind, InitSpec, Machine, Record, VmError};

/// The guest side: only does something when this binary is the VM's init.
#[test]
fn guest_entry_point() {
    if !guest::is_guest() {
        return;
    }
    guest::main(|_request, sink| {
        sink.result("robust", json!({ "ok": true }));
        Ok(())
    })
}

#[path = "common/cached_kernel.rs"]
mod cached_kernel;
use cached_kernel::cached_kernel;

fn kernel(test: &str, name: &str) -> Option<CachedKernel> {
    cached_kernel(test, name)
}

/// A cell on microvm only (no q35 retry, so its limits are the cell's).
fn spec(k: CachedKernel) -> CellSpec {
    let mut s = CellSpec::new(k, LockdownMode::None);
    s.init = Some(InitSpec {
        exe: std::env::current_exe().expect("test binary path"),
        args: ["guest_entry_point", "--exact", "--nocapture", "--test-threads=1"].map(String::from).to_vec(),
    });
    s.machine = Some(Machine::Microvm);
    s.probe = false;
    s.timeout = Duration::from_secs(90);
    s.silence_timeout = Duration::from_secs(20);
    s
}

fn passed(o: &CellOutcome) {
    assert!(o.ok(), "{}: {}", o.kernel, o.failure.as_ref().map(|f| f.to_string()).unwrap_or_default());
    assert_eq!(o.results().next().map(|(n, _)| n), Some("robust"), "{}: {:?}", o.kernel, o.records);
}

/// The failure, which must show `line` among its console lines.
fn failed_with(o: &CellOutcome, kind: FailureKind, line: &str) -> String {
    let f = o.failure.as_ref().unwrap_or_else(|| panic!("{}: the cell passed: {:?}", o.kernel, o.records));
    assert_eq!(f.kind, kind, "{f}");
    assert!(f.log.iter().any(|l| l.contains(line)), "{f}\nno console line with {line:?} in the failure");
    assert!(!o.records.iter().any(|r| matches!(r, Record::Final { .. })), "{:?}", o.records);
    f.to_string()
}

/// Three broken cells and a good one in one matrix: the kernel panics at
/// boot (no init), the kernel hangs in boot (waits for a root device that
/// never comes), the guest is out of memory; the good cell passes.
#[test]
fn broken_cells_fail_clearly_and_the_matrix_goes_on() {
    let test = "robust_vm_failures::broken_cells_fail_clearly_and_the_matrix_goes_on";
    let (Some(k510), Some(k61), Some(k612)) = (kernel(test, "5.10"), kernel(test, "6.1"), kernel(test, "6.12")) else {
        return;
    };
    let mut panics = spec(k61.clone());
    panics.extra_cmdline = vec!["rdinit=/nonexistent-init".into(), "init=/nonexistent-init".into()];
    let mut hangs = spec(k510);
    // loglevel=7: the lab boots `quiet`, which hides the "Waiting for root device" line
    hangs.extra_cmdline =
        vec!["rdinit=/nonexistent-init".into(), "root=/dev/vdz".into(), "rootwait".into(), "loglevel=7".into()];
    hangs.silence_timeout = Duration::from_secs(15);
    let mut oom = spec(k61);
    // 512 MiB of QEMU memory, 64 of them for the kernel: unpacking the
    // initramfs (this test binary) runs out (80M boots)
    oom.extra_cmdline = vec!["mem=64M".into()];
    let good = spec(k612);
    let specs = vec![panics, hangs, oom, good];
    let started = Instant::now();
    let outcomes: Vec<CellOutcome> =
        vm::run_cells(&specs, 2).into_iter().map(|o| o.expect("every cell is attempted")).collect();
    eprintln!("four cells in {:?}", started.elapsed());
    for (s, o) in specs.iter().zip(&outcomes) {
        eprintln!("{} {:?}: {:?} after {:?}", o.kernel, s.extra_cmdline, o.failure.as_ref().map(|f| &f.message), o.durations.total);
        assert!(o.durations.total < s.timeout + Duration::from_secs(10), "{}: {:?}", o.kernel, o.durations);
    }
    let f = failed_with(&outcomes[0], FailureKind::KernelTrouble, "Kernel panic - not syncing");
    assert!(f.contains("kernel panic"), "{f}");
    let f = failed_with(&outcomes[1], FailureKind::Silent, "Waiting for root device");
    assert!(outcomes[1].durations.total < Duration::from_secs(60), "the silence limit ended it: {f}");
    let o = &outcomes[2];
    let f = o.failure.as_ref().expect("out of memory fails the cell");
    assert_eq!(f.kind, FailureKind::KernelTrouble, "{f}");
    let memory = ["deadlocked on memory", "Out of memory", "oom-kill", "Initramfs unpacking failed"];
    assert!(f.log.iter().any(|l| memory.iter().any(|m| l.contains(m))), "the failure shows the memory lines: {f}");
    passed(&outcomes[3]);
}

/// Children of this process that are QEMU with `marker` in their command
/// line (other tests of this binary boot the same kernels at the same time).
fn qemu_children(marker: &str) -> Vec<i32> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // pid (comm) state ppid …: comm may hold spaces, so split after ')'
        let Some((head, rest)) = stat.rsplit_once(") ") else { continue };
        let ppid = rest.split(' ').nth(1).unwrap_or("");
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if ppid == me && head.contains("(qemu-system") && cmdline.contains(marker) {
            out.push(pid);
        }
    }
    out
}

/// QEMU killed under a running cell: that cell fails at once with the
/// console it had, the other cell of the matrix passes.
#[test]
fn qemu_killed_under_a_cell_fails_it_and_the_other_cell_passes() {
    let test = "robust_vm_failures::qemu_killed_under_a_cell_fails_it_and_the_other_cell_passes";
    let (Some(victim_kernel), Some(k612)) = (kernel(test, "5.10"), kernel(test, "6.12")) else { return };
    // The kernel image alone does not single it out: the broken-cells test
    // boots 5.10 too, and that cell ends at its silence limit (a kill then
    // finds no process). A parameter the kernel ignores does.
    let marker = format!("tclab.test_victim={}", std::process::id());
    let mut victim = spec(victim_kernel);
    victim.extra_cmdline = vec![marker.clone()];
    victim.debug_hang = Some(HangMode::Busy);
    victim.timeout = Duration::from_secs(120);
    let good = spec(k612);
    let killer = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Some(pid) = qemu_children(&marker).first() {
                // let it boot into the busy hang first
                std::thread::sleep(Duration::from_secs(20));
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::Signal::SIGKILL)
                    .expect("kill QEMU");
                return Instant::now();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("QEMU for the victim cell never started");
    });
    let outcomes: Vec<CellOutcome> =
        vm::run_cells(&[victim, good], 2).into_iter().map(|o| o.expect("both cells are attempted")).collect();
    let killed_at = killer.join().expect("killer thread");
    let o = &outcomes[0];
    let f = o.failure.as_ref().expect("a killed QEMU fails the cell");
    assert_eq!(f.kind, FailureKind::NoFinal, "{f}");
    assert!(f.message.to_lowercase().contains("qemu"), "the message says QEMU ended: {f}");
    assert!(f.log.iter().any(|l| l.contains("hanging on request")), "the console it had: {f}");
    assert!(killed_at.elapsed() < Duration::from_secs(60), "the victim cell ended soon after the kill");
    passed(&outcomes[1]);
}

/// Child half of `qemu_missing_is_a_clear_error`: runs with a PATH that has
/// no QEMU (set by the parent, never on its own).
#[test]
fn qemu_missing_child() {
    if std::env::var_os("TCLAB_ROBUST_QEMU_MISSING_CHILD").is_none() {
        return;
    }
    let catalog = Catalog::load(&kernels::default_manifest_dir()).expect("manifests load");
    let cache = Cache::default_location().expect("cache location");
    let k = cache.kernel(catalog.get("6.12").expect("manifest")).expect("verified kernel");
    let outcomes = vm::run_cells(&[spec(k.clone()), spec(k)], 2);
    for o in outcomes {
        match o {
            Err(e @ VmError::Spawn { .. }) => println!("SPAWN-ERROR: {e}"),
            other => panic!("expected a spawn error, got {other:?}"),
        }
    }
}

/// QEMU missing: each cell is an error naming the program and the OS error,
/// not a hang or a panic.
#[test]
fn qemu_missing_is_a_clear_error() {
    let test = "robust_vm_failures::qemu_missing_is_a_clear_error";
    if kernel(test, "6.12").is_none() {
        return;
    }
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args(["qemu_missing_child", "--exact", "--nocapture", "--test-threads=1"])
        .env("TCLAB_ROBUST_QEMU_MISSING_CHILD", "1")
        .env("PATH", "/nonexistent-tclab-bin")
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // the harness may print "test … ..." on the same line as the first one
    let errors: Vec<&str> = stdout.lines().filter_map(|l| l.split_once("SPAWN-ERROR: ").map(|(_, e)| e)).collect();
    assert_eq!(errors.len(), 2, "{stdout}");
    for e in errors {
        assert!(e.contains("failed to start qemu-system-x86_64") && e.contains("No such file or directory"), "{e}");
    }
}
