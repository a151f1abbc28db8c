//! The properties of the `cargo fuzz` targets (fuzz/, checked by
//! `tclab_lab::fuzz_targets`) in `cargo test`, without cargo-fuzz:
//! fixed-seed mutations of real inputs (the scenario files, fixtures,
//! kernel manifests, console streams) and every input a fuzzer ever
//! crashed on (fuzz/regressions/<target>/). No panic, no hang, and errors
//! that name the input.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tclab_lab::fuzz_targets;

const SEED: u64 = 0x7c1a_f022_0900;
const ROUNDS: usize = 4000;
/// A hang detector, not a speed target: a parser taking this long on a
/// few-KiB input is stuck.
const HANG: Duration = Duration::from_secs(10);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Files of `dir` whose name ends with one of `exts` (sorted).
fn files(dir: &str, exts: &[&str]) -> Vec<Vec<u8>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && exts.iter().any(|x| p.to_string_lossy().ends_with(x)))
        .collect();
    paths.sort();
    paths.iter().map(|p| std::fs::read(p).expect("read seed")).collect()
}

const INTERESTING: [u8; 12] = [0, 1, 0x7f, 0x80, 0xff, b'\n', b'"', b'=', b'[', b']', b' ', b'@'];

/// One mutation: bytes, lines, lengths, splices with another seed.
fn mutate(rng: &mut StdRng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut v = seeds[rng.gen_range(0..seeds.len())].clone();
    for _ in 0..rng.gen_range(1..=4) {
        let len = v.len();
        match rng.gen_range(0..9) {
            0 if len > 0 => {
                let i = rng.gen_range(0..len);
                v[i] = INTERESTING[rng.gen_range(0..INTERESTING.len())];
            }
            1 if len > 0 => {
                let i = rng.gen_range(0..len);
                v[i] ^= 1 << rng.gen_range(0..8);
            }
            2 => {
                let i = rng.gen_range(0..=len);
                let n = rng.gen_range(1..16);
                v.splice(i..i, (0..n).map(|_| rng.r#gen::<u8>()));
            }
            3 if len > 0 => {
                let i = rng.gen_range(0..len);
                let j = rng.gen_range(i..=len.min(i + 64));
                v.drain(i..j);
            }
            4 if len > 0 => v.truncate(rng.gen_range(0..len)),
            5 if len >= 4 => {
                // a 32-bit field (pcap lengths, counts) set to an extreme
                let i = rng.gen_range(0..len - 3);
                let x: u32 = [0, 1, 0xffff, 0x7fff_ffff, 0xffff_ffff, 65_536][rng.gen_range(0..6)];
                v[i..i + 4].copy_from_slice(&x.to_le_bytes());
            }
            6 => {
                // lines: drop, duplicate or swap one
                let mut lines: Vec<Vec<u8>> = v.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
                let i = rng.gen_range(0..lines.len());
                match rng.gen_range(0..3) {
                    0 => {
                        lines.remove(i);
                    }
                    1 => {
                        let l = lines[i].clone();
                        lines.insert(i, l);
                    }
                    _ => {
                        let j = rng.gen_range(0..lines.len());
                        lines.swap(i, j);
                    }
                }
                v = lines.join(&b'\n');
            }
            7 => {
                let other = &seeds[rng.gen_range(0..seeds.len())];
                let a = rng.gen_range(0..=v.len());
                let b = rng.gen_range(0..=other.len());
                v.truncate(a);
                v.extend_from_slice(&other[b..]);
            }
            _ if len > 0 => {
                let i = rng.gen_range(0..len);
                let j = rng.gen_range(i..=len.min(i + 32));
                let chunk = v[i..j].to_vec();
                v.splice(i..i, chunk);
            }
            _ => v.push(rng.r#gen()),
        }
    }
    v
}

/// Run `target` on the seeds, the saved regressions and ROUNDS mutations;
/// every panic or hang is reported with the input.
fn check(name: &str, target: fn(&[u8]), seeds: Vec<Vec<u8>>) {
    assert!(!seeds.is_empty(), "{name}: no seeds");
    let regressions = root().join("fuzz/regressions").join(name);
    let mut inputs: Vec<Vec<u8>> = seeds.clone();
    if regressions.is_dir() {
        for e in std::fs::read_dir(&regressions).expect("regressions").flatten() {
            inputs.push(std::fs::read(e.path()).expect("read regression"));
        }
    }
    let mut rng = StdRng::seed_from_u64(SEED ^ name.len() as u64);
    inputs.extend((0..ROUNDS).map(|_| mutate(&mut rng, &seeds)));
    let mut failures = Vec::new();
    let started = Instant::now();
    for (i, input) in inputs.iter().enumerate() {
        let t = Instant::now();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| target(input)));
        let took = t.elapsed();
        if let Err(p) = outcome {
            let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            failures.push(format!("input {i}: panic {msg:?}: {:?}", String::from_utf8_lossy(&input[..input.len().min(300)])));
        } else if took > HANG {
            failures.push(format!("input {i}: took {took:?}: {:?}", String::from_utf8_lossy(&input[..input.len().min(300)])));
        }
    }
    eprintln!("{name}: {} inputs in {:?}", inputs.len(), started.elapsed());
    assert!(failures.is_empty(), "{name}: {} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn scenario_files_never_panic_and_errors_name_the_file() {
    check("scenario", fuzz_targets::scenario, files("scenarios", &[".toml"]));
}

#[test]
fn captures_never_panic_and_errors_name_the_file() {
    check("pcap", fuzz_targets::pcap, files("fixtures", &[".pcap", ".pcapng"]));
}

#[test]
fn kernel_manifests_never_panic_and_errors_name_the_file() {
    check("manifest", fuzz_targets::manifest, files("kernels", &[".toml"]));
}

#[test]
fn console_streams_parse_the_same_in_any_chunks() {
    check("console", fuzz_targets::console, files("fuzz/seeds/console", &[""]));
}

/// Hand-written streams for the console property: records glued to log
/// text, a second final record (refused, not counted twice).
#[test]
fn console_known_streams_hold_the_property() {
    let fin = "{\"type\":\"final\",\"ok\":true,\"errors\":[]}";
    let stream = format!("\x01log\x1b[0m@@TCLAB1 {} {fin}\n@@TCLAB1 {} {fin}\n", fin.len(), fin.len());
    fuzz_targets::console(stream.as_bytes());
    let mut p = tclab_lab::vm::console::ConsoleParser::new();
    let events = p.feed(&stream.as_bytes()[1..]);
    assert!(events[0].is_ok() && events[1].is_err(), "{events:?}");
}
