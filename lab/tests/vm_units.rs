//! Unit tests of the VM plumbing that need no VM: the cpio writer (read
//! back with an independent reader), ELF dependency discovery, the console
//! protocol parser, the QEMU argv and the lockdown file parser.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tclab_lab::guest::selected_lockdown;
use tclab_lab::vm::console::{self, ConsoleParser, Event, Record};
use tclab_lab::vm::cpio::{self, CpioArchiveBuilder, NEWC_MAGIC};
use tclab_lab::vm::{elfdeps, qemu};

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    mode: u32,
    rdev: (u32, u32),
    data: Vec<u8>,
}

fn hex(b: &[u8]) -> u32 {
    u32::from_str_radix(std::str::from_utf8(b).expect("ascii header"), 16).expect("hex field")
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// An independent newc reader: returns entries per archive, in order.
fn read_cpio(mut bytes: &[u8]) -> Vec<Vec<(String, Entry)>> {
    let mut archives = vec![Vec::new()];
    while !bytes.is_empty() {
        if bytes.iter().all(|b| *b == 0) {
            break;
        }
        assert_eq!(&bytes[..6], NEWC_MAGIC, "magic");
        let field = |i: usize| hex(&bytes[6 + 8 * i..14 + 8 * i]);
        let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
        let rdev = (field(9), field(10));
        let name = std::str::from_utf8(&bytes[110..110 + namesize - 1]).expect("utf8 name").to_owned();
        assert_eq!(bytes[110 + namesize - 1], 0, "name NUL");
        let data_at = align4(110 + namesize);
        let data = bytes[data_at..data_at + size].to_vec();
        bytes = &bytes[align4(data_at + size)..];
        if name == "TRAILER!!!" {
            archives.push(Vec::new());
            continue;
        }
        archives.last_mut().expect("archive").push((name, Entry { mode, rdev, data }));
    }
    archives.retain(|a| !a.is_empty());
    archives
}

#[test]
fn cpio_round_trip_files_dirs_symlinks_devices_with_parents() {
    let mut b = CpioArchiveBuilder::new();
    b.append_char_device("/dev/console", 0o600, 5, 1).expect("dev");
    b.append_file("/usr/lib/x/libfoo.so", 0o755, b"ELF!odd").expect("file");
    b.append_symlink("/lib64", "usr/lib").expect("symlink");
    b.append_dir("/empty", 0o700).expect("dir");
    b.append_file("/a", 0o644, b"").expect("empty file");
    let bytes = b.finish().expect("finish");
    assert_eq!(bytes.len() % 4, 0);
    let archives = read_cpio(&bytes);
    assert_eq!(archives.len(), 1);
    let names: Vec<&str> = archives[0].iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["dev", "dev/console", "usr", "usr/lib", "usr/lib/x", "usr/lib/x/libfoo.so", "lib64", "empty", "a"]);
    let map: BTreeMap<&str, &Entry> = archives[0].iter().map(|(n, e)| (n.as_str(), e)).collect();
    assert_eq!(map["dev/console"].mode, 0o020600);
    assert_eq!(map["dev/console"].rdev, (5, 1));
    assert_eq!(map["usr/lib/x/libfoo.so"].data, b"ELF!odd");
    assert_eq!(map["usr/lib/x/libfoo.so"].mode, 0o100755);
    assert_eq!(map["lib64"].mode, 0o120777);
    assert_eq!(map["lib64"].data, b"usr/lib");
    assert_eq!(map["empty"].mode, 0o040700);
    assert_eq!(map["usr"].mode, 0o040755);
}

#[test]
fn cpio_concatenated_archives_stay_aligned_and_parse_in_order() {
    let mut a = CpioArchiveBuilder::new();
    a.append_file("/x", 0o644, b"base").expect("x");
    let mut b = CpioArchiveBuilder::new();
    b.append_file("/x", 0o644, b"override!").expect("x");
    let (a, b) = (a.finish().expect("a"), b.finish().expect("b"));
    // A part whose length is not a multiple of 4 (like a gzip stream) is
    // padded so the next archive starts aligned.
    let odd = b"12345".to_vec();
    let joined = cpio::concat(&[&odd, &b]);
    assert_eq!(&joined[..8], b"12345\0\0\0");
    assert_eq!(&joined[8..], &b[..]);
    let whole = cpio::concat(&[&a, &b]);
    let archives = read_cpio(&whole);
    assert_eq!(archives.len(), 2);
    assert_eq!(archives[1][0].1.data, b"override!");
}

#[test]
fn cpio_rejects_unclean_paths() {
    let mut b = CpioArchiveBuilder::new();
    for bad in ["/", "/a/../b", "/a//b", "/./x", ""] {
        let err = b.append_file(bad, 0o644, b"").expect_err(bad);
        assert!(err.to_string().contains("not a clean absolute path"), "{err}");
    }
}

#[test]
fn elfdeps_of_this_test_binary_are_the_interpreter_and_libc() {
    let exe = std::env::current_exe().expect("exe");
    let libs = elfdeps::shared_libraries(&exe).expect("deps");
    let data = std::fs::read(&exe).expect("read exe");
    let info = elfdeps::link_info(&exe, &data).expect("parse");
    let interp = info.interpreter.expect("a dynamic executable has PT_INTERP");
    assert_eq!(libs.first(), Some(&PathBuf::from(&interp)), "interpreter first: {libs:?}");
    assert!(info.needed.iter().any(|n| n == "libc.so.6"), "{:?}", info.needed);
    assert!(libs.iter().any(|l| l.file_name().is_some_and(|n| n == "libc.so.6")), "{libs:?}");
    for lib in &libs {
        assert!(lib.is_file(), "{} does not exist", lib.display());
    }
    let unique: std::collections::BTreeSet<&PathBuf> = libs.iter().collect();
    assert_eq!(unique.len(), libs.len(), "each library once: {libs:?}");
}

#[test]
fn elfdeps_reads_ld_so_conf_includes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path().join("ld.so.conf.d");
    std::fs::create_dir(&d).expect("mkdir");
    std::fs::write(d.join("b.conf"), "/opt/b # comment\n").expect("b");
    std::fs::write(d.join("a.conf"), "/opt/a\n").expect("a");
    std::fs::write(d.join("ignored.txt"), "/opt/nope\n").expect("c");
    let conf = tmp.path().join("ld.so.conf");
    std::fs::write(&conf, format!("include {}/*.conf\n/usr/local/lib\n", d.display())).expect("conf");
    assert_eq!(elfdeps::ld_so_conf_dirs(&conf), ["/opt/a", "/opt/b", "/usr/local/lib"].map(PathBuf::from));
}

#[test]
fn elfdeps_not_an_elf_is_an_error_naming_the_file() {
    let err = elfdeps::link_info(Path::new("/x/notelf"), b"#!/bin/sh\n").expect_err("not ELF");
    assert!(err.to_string().contains("/x/notelf"), "{err}");
}

fn feed_all(p: &mut ConsoleParser, text: &str) -> Vec<Result<Event, console::ProtocolError>> {
    p.feed(text.as_bytes())
}

#[test]
fn console_records_round_trip_across_chunk_boundaries_and_crlf() {
    let rec = Record::Result { name: "s1".into(), data: serde_json::json!({"ok": true, "n": "ü"}) };
    let line = console::encode(&rec).replace('\n', "\r\n");
    let mut p = ConsoleParser::new();
    let (a, b) = line.split_at(9);
    assert!(p.feed(a.as_bytes()).is_empty());
    let evs = p.feed(b.as_bytes());
    assert_eq!(evs, vec![Ok(Event::Record { record: rec, glued: None })]);
}

#[test]
fn console_garbage_and_glued_escape_sequences_are_log_or_glued_text() {
    let mut p = ConsoleParser::new();
    let hello = console::encode(&Record::Hello { release: "6.1.0".into() });
    let text = format!("[    0.1] random kernel line\n\x1b[?7l\x1bc{hello}@@TCLA incomplete prefix\n");
    let evs: Vec<Event> = feed_all(&mut p, &text).into_iter().map(|e| e.expect("valid")).collect();
    assert_eq!(evs[0], Event::Log("[    0.1] random kernel line".into()));
    assert_eq!(evs[1], Event::Record { record: Record::Hello { release: "6.1.0".into() }, glued: Some("\x1b[?7l\x1bc".into()) });
    assert_eq!(evs[2], Event::Log("@@TCLA incomplete prefix".into()));
}

#[test]
fn console_truncated_bad_length_and_bad_version_are_errors() {
    let good = console::encode(&Record::Heartbeat);
    let cut = format!("{}\n", &good[..good.len() - 4]);
    let cases = [
        (cut, "truncated record"),
        (good.replace("@@TCLAB1", "@@TCLAB2"), "unknown protocol version 2"),
        (good.replace('}', "}xx"), "bytes after the"),
        ("@@TCLAB1 abc {}\n".to_owned(), "is not a number"),
        ("@@TCLAB1 2 {}\n".to_owned(), "bad record JSON"),
        ("@@TCLABx 2 {}\n".to_owned(), "version \"x\""),
    ];
    for (line, want) in cases {
        let mut p = ConsoleParser::new();
        let evs = p.feed(line.as_bytes());
        let err = evs[0].clone().expect_err(&line);
        assert!(err.reason.contains(want), "{line:?}: {err}");
        assert_eq!(err.line, 1);
    }
}

#[test]
fn console_duplicate_final_and_records_after_final_are_errors() {
    let fin = console::encode(&Record::Final { ok: true, errors: vec![] });
    let mut p = ConsoleParser::new();
    assert!(p.feed(fin.as_bytes())[0].is_ok());
    assert!(p.seen_final());
    let err = p.feed(fin.as_bytes())[0].clone().expect_err("second final");
    assert!(err.reason.contains("a second final record"), "{err}");
    // A heartbeat racing the reboot is harmless; any other record is not.
    assert!(p.feed(console::encode(&Record::Heartbeat).as_bytes())[0].is_ok(), "late heartbeat tolerated");
    let err = p.feed(console::encode(&Record::Hello { release: "x".into() }).as_bytes())[0].clone().expect_err("after final");
    assert!(err.reason.contains("after the final record"), "{err}");
}

#[test]
fn console_unterminated_record_at_close_is_truncated() {
    let mut p = ConsoleParser::new();
    let line = console::encode(&Record::Hello { release: "x".into() });
    assert!(p.feed(&line.as_bytes()[..line.len() - 6]).is_empty());
    let err = p.finish().expect("pending line").expect_err("cut off");
    assert!(err.reason.contains("truncated"), "{err}");
}

#[test]
fn console_alarm_markers() {
    assert_eq!(console::alarm("[  3.2] Kernel panic - not syncing: Attempted to kill init!"), Some("kernel panic"));
    assert_eq!(console::alarm("rcu: INFO: rcu_sched self-detected stall on CPU"), Some("RCU stall"));
    assert_eq!(console::alarm("watchdog: BUG: soft lockup - CPU#0 stuck for 22s!"), Some("kernel BUG"));
    assert_eq!(console::alarm("[  1.0] WARNING: CPU: 0 PID: 1 at net/core/dev.c:1"), Some("kernel warning"));
    assert_eq!(console::alarm("loaded veth"), None);
}

#[test]
fn qemu_argv_and_cmdline() {
    let c = qemu::QemuConfig {
        kernel: "/k/vmlinux".into(),
        initrd: "/k/initrd".into(),
        cmdline: qemu::cmdline("integrity", &["loglevel=7".into()], &["t".into(), "--exact".into()]),
        machine: qemu::Machine::Microvm,
        accel: qemu::Accel::Tcg,
        memory_mib: 512,
        cpus: 1,
    };
    let argv: Vec<String> = qemu::argv(&c).iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let joined = argv.join(" ");
    for want in ["-nodefaults", "-machine microvm,acpi=off", "-accel tcg", "-m 512", "-smp 1", "-serial stdio", "-kernel /k/vmlinux", "-no-reboot"] {
        assert!(joined.contains(want), "{want} missing from {joined}");
    }
    assert!(c.cmdline.contains("lockdown=integrity loglevel=7 -- t --exact"), "{}", c.cmdline);
    assert!(c.cmdline.contains("reboot=t") && c.cmdline.contains("panic=-1") && c.cmdline.contains("console=ttyS0"));
    assert!(!qemu::cmdline("none", &[], &[]).contains("lockdown="), "lockdown=none is not a kernel value");
}

/// TCG guests get the host's TSC rate and no clocksource watchdog, so their
/// clock is the TSC, not the jiffies that lose ticks on a busy host.
#[test]
#[cfg(target_arch = "x86_64")]
fn tcg_clock_params_carry_the_host_tsc_rate() {
    let params = qemu::tcg_clock_params();
    assert_eq!(params[0], "tsc=reliable", "{params:?}");
    let khz: u64 = params
        .iter()
        .find_map(|p| p.strip_prefix("tsc_early_khz="))
        .unwrap_or_else(|| panic!("no tsc_early_khz in {params:?}"))
        .parse()
        .expect("a number");
    // An independent, longer measurement of the same rate.
    // SAFETY: rdtsc has no preconditions on x86_64.
    let (c0, t0) = (unsafe { core::arch::x86_64::_rdtsc() }, std::time::Instant::now());
    std::thread::sleep(std::time::Duration::from_millis(200));
    // SAFETY: as above.
    let (c1, t1) = (unsafe { core::arch::x86_64::_rdtsc() }, std::time::Instant::now());
    let measured = (c1 - c0) as f64 / t1.duration_since(t0).as_secs_f64() / 1000.0;
    let off = (khz as f64 - measured).abs() / measured;
    assert!(off < 0.05, "tsc_early_khz={khz} but the TSC ticks at {measured:.0} kHz");
}

#[test]
fn lockdown_file_selected_mode() {
    assert_eq!(selected_lockdown("none [integrity] confidentiality"), Some("integrity"));
    assert_eq!(selected_lockdown("[none] integrity confidentiality"), Some("none"));
    assert_eq!(selected_lockdown("none integrity"), None);
}

#[test]
fn strip_unmapped_keeps_a_runnable_executable() {
    use std::os::unix::fs::PermissionsExt;
    let exe = std::env::current_exe().expect("exe");
    let bytes = std::fs::read(&exe).expect("read exe");
    let Some(stripped) = tclab_lab::vm::strip::strip_unmapped(&bytes) else {
        panic!("a debug test binary has unmapped debug sections to cut");
    };
    assert!(stripped.len() < bytes.len() / 2, "{} -> {}", bytes.len(), stripped.len());
    assert_eq!(&stripped[..0x28], &bytes[..0x28], "header up to e_shoff unchanged");
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("stripped");
    std::fs::write(&path, &stripped).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = std::process::Command::new(&path).args(["--list", "strip_unmapped"]).output().expect("run stripped binary");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("strip_unmapped_keeps_a_runnable_executable: test"));
    assert!(tclab_lab::vm::strip::strip_unmapped(&stripped).is_none(), "nothing left to cut");
    assert!(tclab_lab::vm::strip::strip_unmapped(b"#!/bin/sh\n").is_none());
}
