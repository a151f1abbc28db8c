//! Booting the pinned kernels in QEMU with this test binary as `/init`:
//! the guest half is `guest_entry_point` below, selected on the kernel
//! command line (`-- guest_entry_point --exact`), so these tests exercise
//! the real guest mode without depending on the CLI.
//!
//! Needs the kernels in the cache (`tclab kernels fetch`) and
//! `qemu-system-x86_64`.

use std::time::{Duration, Instant};

use serde_json::json;
use tclab_lab::guest::{self, HangMode, LockdownMode};
use tclab_lab::kernels::CachedKernel;
use tclab_lab::vm::{self, CellSpec, FailureKind, InitSpec, PayloadFile, Record};

/// The guest side: only does something when this binary is the VM's init.
/// On the host it returns at once (it is an entry point, not a test).
#[test]
fn guest_entry_point() {
    if !guest::is_guest() {
        return;
    }
    guest::main(|request, sink| {
        let payload = std::fs::read_to_string("/tclab/payload/hello.txt")?;
        sink.result("echo", json!({ "work": request.work, "payload": payload }));
        Ok(())
    })
}

#[path = "common/cached_kernel.rs"]
mod cached_kernel;
use cached_kernel::cached_kernel;

fn kernel(test: &str, name: &str) -> Option<CachedKernel> {
    cached_kernel(test, name)
}

fn spec(k: CachedKernel, lockdown: LockdownMode, payload_dir: &std::path::Path) -> CellSpec {
    let mut s = CellSpec::new(k, lockdown);
    s.init = Some(InitSpec {
        exe: std::env::current_exe().expect("test binary path"),
        args: ["guest_entry_point", "--exact", "--nocapture", "--test-threads=1"].map(String::from).to_vec(),
    });
    s.payload = vec![PayloadFile { host: payload_dir.to_owned(), guest: "/tclab/payload".into() }];
    s.work = json!({ "scenarios": ["a", "b"] });
    s.timeout = Duration::from_secs(90);
    s
}

fn payload() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("hello.txt"), "payload reached the guest\n").expect("write payload");
    dir
}

fn lockdown_record(o: &vm::CellOutcome) -> (String, String) {
    o.records
        .iter()
        .find_map(|r| match r {
            Record::Lockdown { file, actual, .. } => Some((file.clone(), actual.clone())),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{}: no lockdown record in {:?}", o.kernel, o.records))
}

#[test]
fn vm_boot_each_kernel_runs_init_modules_probe_and_work() {
    let names = ["5.10", "6.1", "6.12"];
    let Some(kernels) = names.iter().map(|n| kernel("vm_boot_each_kernel", n)).collect::<Option<Vec<_>>>() else {
        return;
    };
    let dir = payload();
    let specs: Vec<CellSpec> = kernels.into_iter().map(|k| spec(k, LockdownMode::None, dir.path())).collect();
    let outcomes = vm::run_cells(&specs, vm::default_jobs());
    for (spec, outcome) in specs.iter().zip(outcomes) {
        let o = outcome.unwrap_or_else(|e| panic!("{}: {e}", spec.kernel.info.name));
        assert!(o.ok(), "{}: {}", o.kernel, o.failure.as_ref().map(|f| f.to_string()).unwrap_or_default());
        eprintln!(
            "kernel {} on {:?}: first record after {:?}, total {:?}",
            o.kernel, o.machine, o.durations.boot_to_first_record, o.durations.total
        );
        let release = spec.kernel.info.release.clone();
        assert!(matches!(o.records.first(), Some(Record::Hello { release: r }) if *r == release), "{:?}", o.records);
        assert_eq!(lockdown_record(&o).1, "none");
        let probe = o.probe().expect("probe record");
        assert_eq!(probe["kernel_version"], json!(release));
        assert_eq!(probe["tcx"], json!(o.kernel == "6.12"), "{}: TCX exists on 6.12 only: {probe}", o.kernel);
        let (name, data) = o.results().next().expect("a result record");
        assert_eq!(name, "echo");
        assert_eq!(data["payload"], json!("payload reached the guest\n"));
        assert_eq!(data["work"], json!({ "scenarios": ["a", "b"] }));
        assert!(matches!(o.records.last(), Some(Record::Final { ok: true, .. })));
    }
}

#[test]
fn vm_lockdown_modes_are_applied_and_probe_write_user_is_refused_under_lockdown() {
    let Some(k) = kernel("vm_lockdown_modes", "6.1") else { return };
    let dir = payload();
    let specs: Vec<CellSpec> = LockdownMode::ALL.iter().map(|m| spec(k.clone(), *m, dir.path())).collect();
    for (spec, outcome) in specs.iter().zip(vm::run_cells(&specs, vm::default_jobs())) {
        let o = outcome.unwrap_or_else(|e| panic!("{}: {e}", spec.lockdown));
        assert!(o.ok(), "{}: {}", spec.lockdown, o.failure.as_ref().map(|f| f.to_string()).unwrap_or_default());
        let (file, actual) = lockdown_record(&o);
        assert_eq!(actual, spec.lockdown.as_str(), "lockdown file {file:?}");
        assert!(file.contains(&format!("[{}]", spec.lockdown)), "{file:?}");
        let refused = spec.lockdown != LockdownMode::None;
        let probe = o.probe().expect("probe record");
        assert_eq!(probe["probe_write_user"], json!(!refused), "{}: {probe}", spec.lockdown);
    }
}

#[test]
fn vm_watchdog_kills_a_busy_hung_guest_at_the_timeout_with_the_console_tail() {
    let Some(k) = kernel("vm_watchdog_busy", "5.10") else { return };
    let dir = payload();
    let mut s = spec(k, LockdownMode::None, dir.path());
    s.debug_hang = Some(HangMode::Busy);
    s.timeout = Duration::from_secs(15);
    let started = Instant::now();
    let o = vm::run_cell(&s).expect("cell runs");
    let elapsed = started.elapsed();
    let f = o.failure.expect("a hung guest fails");
    assert_eq!(f.kind, FailureKind::Timeout, "{f}");
    assert!(elapsed < s.timeout + Duration::from_secs(5), "killed late: {elapsed:?}");
    assert!(f.log.iter().any(|l| l.contains("hanging on request")), "console tail: {:?}", f.log);
    assert!(!o.records.iter().any(|r| matches!(r, Record::Final { .. })));
}

#[test]
fn vm_cancel_flag_kills_the_vm_promptly() {
    let Some(k) = kernel("vm_cancel", "6.1") else { return };
    let dir = payload();
    let mut s = spec(k, LockdownMode::None, dir.path());
    s.debug_hang = Some(HangMode::Busy);
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    s.cancel = Some(vm::Cancel::flag(flag.clone()));
    let setter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(4));
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let o = vm::run_cell(&s).expect("cell runs");
    setter.join().expect("setter");
    let f = o.failure.expect("cancelled");
    assert_eq!(f.kind, FailureKind::Cancelled, "{f}");
    assert!(o.durations.total < Duration::from_secs(6), "{:?}", o.durations);
}

#[test]
fn vm_watchdog_kills_a_silent_guest_after_the_silence_timeout() {
    let Some(k) = kernel("vm_watchdog_silent", "6.12") else { return };
    let dir = payload();
    let mut s = spec(k, LockdownMode::None, dir.path());
    s.debug_hang = Some(HangMode::Silent);
    s.silence_timeout = Duration::from_secs(6);
    let o = vm::run_cell(&s).expect("cell runs");
    let f = o.failure.expect("a silent guest fails");
    assert_eq!(f.kind, FailureKind::Silent, "{f}");
    assert!(o.durations.total < Duration::from_secs(40), "{:?}", o.durations);
    assert!(f.log.iter().any(|l| l.contains("hanging on request")), "console tail: {:?}", f.log);
}

#[test]
fn vm_kernel_panic_on_the_console_fails_the_cell_with_the_panic_lines() {
    let Some(k) = kernel("vm_kernel_panic", "6.1") else { return };
    let dir = payload();
    let mut s = spec(k, LockdownMode::None, dir.path());
    s.debug_hang = Some(HangMode::ExitInit);
    let o = vm::run_cell(&s).expect("cell runs");
    let f = o.failure.expect("a panicked kernel fails the cell");
    assert_eq!(f.kind, FailureKind::KernelTrouble, "{f}");
    assert!(f.message.contains("kernel panic"), "{f}");
    assert!(f.log.iter().any(|l| l.contains("Kernel panic - not syncing")), "{:?}", f.log);
}

#[test]
fn vm_q35_with_bzimage_boots_too() {
    let Some(k) = kernel("vm_q35", "5.10") else { return };
    let dir = payload();
    let mut s = spec(k, LockdownMode::None, dir.path());
    s.machine = Some(vm::Machine::Q35);
    s.probe = false;
    let o = vm::run_cell(&s).expect("cell runs");
    assert!(o.ok(), "{}", o.failure.as_ref().map(|f| f.to_string()).unwrap_or_default());
    assert_eq!(o.machine, vm::Machine::Q35);
    eprintln!("q35 5.10: first record {:?}, total {:?}", o.durations.boot_to_first_record, o.durations.total);
}

#[test]
fn vm_lockdown_mismatch_fails_the_cell() {
    let Some(k) = kernel("vm_lockdown_mismatch", "6.12") else { return };
    let dir = payload();
    let mut s = spec(k, LockdownMode::Integrity, dir.path());
    // Lockdown only ever tightens: the second parameter wins.
    s.extra_cmdline = vec!["lockdown=confidentiality".into()];
    s.probe = false;
    let o = vm::run_cell(&s).expect("cell runs");
    let f = o.failure.clone().expect("a mismatched lockdown fails the cell");
    assert_eq!(f.kind, FailureKind::Guest, "{f}");
    assert!(f.message.contains("booted with lockdown=integrity") && f.message.contains("[confidentiality]"), "{f}");
    assert_eq!(lockdown_record(&o).1, "confidentiality");
    assert!(o.results().next().is_some(), "the work still ran and reported");
}
