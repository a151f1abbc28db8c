//! Lab speed: `tclab run` on the host kernel per scenario, and QEMU boots of
//! each cached kernel: a near-bare boot, a boot with the probe, and a lab
//! cell running scenarios.
//!
//! Host: the running `tclab` binary runs `tclab run <scenarios> --results
//! DIR` as a child (CI=true: it never writes a snapshot); its results.json
//! gives each scenario's time. Baseline: building and dropping one scenario
//! topology (two namespaces and a veth pair) in this process.
//!
//! QEMU: [`crate::vm::run_cells`] one cell at a time (so cells do not share
//! the 2 cores), `lockdown=none`, after one uncounted warm-up boot. "Bare" is
//! `probe: false`, `work: Null`: the lab's /init mounts, loads the modules,
//! checks lockdown and powers off. "Probe" adds the feature probe. The lab
//! cell (start → first scenario, whole cell) is the kernel-matrix runner's
//! own figure: `tclab run --kernel NAME -j 1` as a child, read from its
//! results.json (`first_scenario_ms`, `total_ms`); start → first scenario is
//! the median over the whole cell and as many one-scenario cells as there
//! are bare boots. In full mode, the whole matrix (`--kernel all --lockdown
//! all`) is timed too.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::guest::LockdownMode;
use crate::kernels::{Cache, CacheState, CachedKernel, Catalog};
use crate::vm::{self, CellSpec};

use super::report::{Row, SectionReport, Target};
use super::stats::{median, spread};
use super::{BenchOptions, Section};

/// Scenarios of a quick run (cheap ones, each of a different kind).
const QUICK_SCENARIOS: [&str; 3] = ["noise-udp-icmp-arp.toml", "chain-tcx-before-after.toml", "agent-tcx-http-get.toml"];

/// Run the section.
///
/// # Errors
/// The scenario folder cannot be read, or `tclab run` could not start.
pub fn run(opts: &BenchOptions) -> anyhow::Result<SectionReport> {
    let mut report = SectionReport::new(
        Section::Lab,
        "Lab speed",
        "host: one scenario topology built and dropped; QEMU: a near-bare boot of the same kernel",
    );
    let files = scenario_files(&opts.scenarios, opts.quick)?;
    host_rows(&files, &mut report)?;
    qemu_rows(opts, &files, &mut report)?;
    Ok(report)
}

fn scenario_files(dir: &Path, quick: bool) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("list scenarios in {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    if quick {
        let picked: Vec<PathBuf> =
            files.iter().filter(|p| p.file_name().is_some_and(|n| QUICK_SCENARIOS.iter().any(|q| n == *q))).cloned().collect();
        files = if picked.is_empty() { files.into_iter().take(3).collect() } else { picked };
    }
    if files.is_empty() {
        bail!("no scenario files in {}", dir.display());
    }
    Ok(files)
}

/// The running `tclab`, to run as a child: `/proc/self/exe` opens this very
/// binary even after a rebuild replaced the file (whose path then reads
/// "… (deleted)", as a run of this section saw).
fn running_tclab() -> anyhow::Result<PathBuf> {
    let proc = PathBuf::from("/proc/self/exe");
    if proc.exists() { Ok(proc) } else { std::env::current_exe().context("find the running tclab") }
}

fn topology_ms() -> anyhow::Result<f64> {
    let t = Instant::now();
    let dut = tclab_net::NetNs::new("tclab-bench-topo-dut")?;
    let peer = tclab_net::NetNs::new("tclab-bench-topo-peer")?;
    let pair = tclab_net::create_veth_pair(&dut, "tdut", &peer, "tpeer", None)?;
    drop(pair);
    drop((dut, peer));
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

fn host_rows(files: &[PathBuf], report: &mut SectionReport) -> anyhow::Result<()> {
    let topo: Vec<f64> = (0..10).map(|_| topology_ms()).collect::<anyhow::Result<_>>()?;
    let topo_ms = median(&topo);
    let results = tempfile::Builder::new().prefix("tclab-bench-results-").tempdir().context("create a results folder")?;
    let exe = running_tclab()?;
    let t = Instant::now();
    let out = Command::new(&exe)
        .arg("run")
        .args(files)
        .arg("--results")
        .arg(results.path())
        .env("CI", "true")
        .env("INSTA_UPDATE", "no")
        .env_remove("TCLAB_LOG")
        .output()
        .with_context(|| format!("run {} run", exe.display()))?;
    let wall_ms = t.elapsed().as_secs_f64() * 1000.0;
    let doc = read_results(results.path(), &out)?;
    let host: Vec<ScenarioTime> = scenario_times(&doc).into_iter().filter(|s| s.kernel == "host").collect();
    let times: Vec<f64> = host.iter().map(|s| s.ms).filter(|t| *t > 0.0).collect();
    let count = |st: &str| host.iter().filter(|s| s.status == st).count();
    if times.is_empty() {
        bail!("tclab run reported no scenario time (exit {}):\n{}", out.status, String::from_utf8_lossy(&out.stdout));
    }
    let (lo, hi) = super::stats::range(&times);
    report.rows.push(Row::ratio("tclab run: time per scenario (median)", median(&times), topo_ms, "ms").note(format!(
        "{} scenarios: {} passed, {} failed, {} skipped; range {lo:.0}–{hi:.0} ms",
        host.len(),
        count("pass"),
        count("fail"),
        count("skip")
    )));
    report.rows.push(
        Row::ratio("tclab run: whole process per scenario", wall_ms / host.len().max(1) as f64, topo_ms, "ms")
            .note(format!("{wall_ms:.0} ms wall for {} scenarios (probe, load, summary included)", host.len())),
    );
    report.notes.push(format!("host topology baseline: {topo_ms:.1} ms median of 10 (range {} ms)", spread(&topo, 1)));
    Ok(())
}

/// One scenario's time in a results.json.
struct ScenarioTime {
    kernel: String,
    /// "pass", "fail", "skip" or what the file said.
    status: String,
    ms: f64,
}

fn read_results(dir: &Path, out: &std::process::Output) -> anyhow::Result<serde_json::Value> {
    let path = dir.join("results.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("tclab run wrote no {} (exit {}):\n{}", path.display(), out.status, String::from_utf8_lossy(&out.stderr))
    })?;
    serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
}

/// Every scenario's time, from either results.json shape: a flat
/// `scenarios` list (schema 1) or `cells[].scenarios` (kernel matrix).
fn scenario_times(doc: &serde_json::Value) -> Vec<ScenarioTime> {
    let one = |s: &serde_json::Value, cell_kernel: Option<&str>| {
        let status = s["status"].as_str().or_else(|| s["status"]["status"].as_str()).unwrap_or("");
        let status = ["pass", "fail", "skip"].into_iter().find(|p| status.starts_with(p)).unwrap_or(status).to_owned();
        ScenarioTime {
            kernel: s["kernel"].as_str().or(cell_kernel).unwrap_or("").to_owned(),
            status,
            ms: s["duration_ms"].as_f64().unwrap_or(0.0),
        }
    };
    let mut out: Vec<ScenarioTime> = doc["scenarios"].as_array().into_iter().flatten().map(|s| one(s, None)).collect();
    for cell in doc["cells"].as_array().into_iter().flatten() {
        out.extend(cell["scenarios"].as_array().into_iter().flatten().map(|s| one(s, cell["kernel"].as_str())));
    }
    out
}

/// Cached, verified kernels, sorted by name.
pub(super) fn cached_kernels(manifests: &Path) -> anyhow::Result<Vec<CachedKernel>> {
    let catalog = Catalog::load(manifests).with_context(|| format!("load kernel manifests from {}", manifests.display()))?;
    let cache = Cache::default_location()?;
    Ok(catalog
        .manifests
        .values()
        .filter_map(|m| match cache.state(m) {
            CacheState::Verified(k) => Some(k),
            CacheState::Missing(_) => None,
        })
        .collect())
}

fn qemu_on_path() -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(vm::qemu::QEMU).is_file()))
}

fn cell(kernel: &CachedKernel, probe: bool) -> CellSpec {
    let mut spec = CellSpec::new(kernel.clone(), LockdownMode::None);
    spec.probe = probe;
    spec.work = serde_json::Value::Null;
    spec.timeout = Duration::from_secs(180);
    spec.cancel = Some(vm::Cancel::when(crate::interrupt::requested));
    spec
}

fn accel() -> &'static str {
    match vm::qemu::detect_accel() {
        vm::Accel::Kvm => "KVM",
        _ => "TCG",
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn qemu_rows(opts: &BenchOptions, files: &[PathBuf], report: &mut SectionReport) -> anyhow::Result<()> {
    if !qemu_on_path() {
        report.notes.push(format!("QEMU part not run: no {} on PATH (tclab doctor)", vm::qemu::QEMU));
        return Ok(());
    }
    let mut kernels = cached_kernels(&opts.manifests)?;
    if kernels.is_empty() {
        report.notes.push("QEMU part not run: no cached kernel (tclab kernels fetch)".into());
        return Ok(());
    }
    let reps = if opts.quick { 1 } else { 3 };
    if opts.quick {
        kernels.truncate(1);
    }
    for k in &kernels {
        let name = &k.info.name;
        let (mut bare_first, mut bare_total, mut probe_first, mut probe_total) = (vec![], vec![], vec![], vec![]);
        let mut machine = String::new();
        // one boot first, not counted: the kernel image and initramfs come
        // from a cold page cache on the first boot only
        let warm = vm::run_cells(&[cell(k, false)], 1).pop();
        if let Some(Err(e)) = warm {
            return Err(e).with_context(|| format!("boot kernel {name}"));
        }
        for _ in 0..reps {
            // alternate so that drift hits both alike
            for probe in [false, true] {
                let outcome = vm::run_cells(&[cell(k, probe)], 1)
                    .pop()
                    .unwrap_or_else(|| Err(vm::VmError::Request("no outcome".into())))
                    .with_context(|| format!("boot kernel {name}"))?;
                if let Some(f) = &outcome.failure {
                    bail!("kernel {name} (probe: {probe}) failed: {f:?}\n{}", outcome.console_excerpt.join("\n"));
                }
                machine = format!("{:?}", outcome.machine);
                let first = outcome.durations.boot_to_first_record.map(ms).unwrap_or(f64::NAN);
                let (f, t) = if probe { (&mut probe_first, &mut probe_total) } else { (&mut bare_first, &mut bare_total) };
                f.push(first);
                t.push(ms(outcome.durations.total));
            }
        }
        let (bf, bt) = (median(&bare_first), median(&bare_total));
        report.rows.push(
            Row::value(format!("QEMU {name}: bare boot, start → first record"), bf, "ms")
                .note(format!("{machine} machine, {}, {reps} boot(s) after one warm-up, range {} ms", accel(), spread(&bare_first, 0))),
        );
        report.rows.push(Row::value(format!("QEMU {name}: bare boot, whole cell"), bt, "ms").note(format!("range {} ms", spread(&bare_total, 0))));
        report.rows.push(
            Row::ratio(format!("QEMU {name}: cell with the probe, whole"), median(&probe_total), bt, "ms")
                .note(format!("range {} ms; first record {} ms", spread(&probe_total, 0), spread(&probe_first, 0))),
        );
        match qemu_scenario_rows(opts, k, files, reps, bf, bt) {
            Ok(rows) => report.rows.extend(rows),
            Err(e) => report.notes.push(format!("QEMU {name}: scenario cell not measured: {e:#}")),
        }
    }
    if !opts.quick && kernels.len() > 1 {
        match full_matrix_row(opts, files) {
            Ok(row) => report.rows.push(row),
            Err(e) => report.notes.push(format!("full matrix not measured: {e:#}")),
        }
    }
    report.notes.push(
        "QEMU cells run one at a time, lockdown=none, work: none; \"bare\" = the lab's /init without probe or scenarios".into(),
    );
    Ok(())
}

/// Run `tclab run --kernel …` (the kernel-matrix runner) as a child and
/// return its results.json, with the wall time.
fn matrix_run(opts: &BenchOptions, files: &[PathBuf], kernels: &str, lockdowns: &str, jobs: Option<usize>) -> anyhow::Result<(serde_json::Value, f64)> {
    let results = tempfile::Builder::new().prefix("tclab-bench-matrix-").tempdir().context("create a results folder")?;
    let exe = running_tclab()?;
    let mut cmd = Command::new(&exe);
    cmd.arg("run").args(files).args(["--kernel", kernels, "--lockdown", lockdowns]).arg("--manifests").arg(&opts.manifests);
    if let Some(j) = jobs {
        cmd.args(["-j", &j.to_string()]);
    }
    let t = Instant::now();
    let out = cmd
        .arg("--results")
        .arg(results.path())
        .env("CI", "true")
        .env("INSTA_UPDATE", "no")
        .env_remove("TCLAB_LOG")
        .output()
        .with_context(|| format!("run {} run --kernel {kernels}", exe.display()))?;
    let wall = t.elapsed().as_secs_f64() * 1000.0;
    Ok((read_results(results.path(), &out)?, wall))
}

/// The cell of `kernel` in a kernel-matrix results.json.
fn cell_of<'a>(doc: &'a serde_json::Value, kernel: &str) -> anyhow::Result<&'a serde_json::Value> {
    doc["cells"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["kernel"] == kernel)
        .ok_or_else(|| anyhow::anyhow!("results.json has no cell for kernel {kernel}"))
}

/// How one cell's start-up went: QEMU start → its first scenario starts,
/// and → init's first record.
struct StartUp {
    /// First result minus the first scenario's own run time (measured in
    /// the guest): the first result record marks the *end* of that scenario.
    starts: f64,
    boot: Option<f64>,
    first_run: f64,
    first_name: String,
    first_file: Option<PathBuf>,
}

fn start_up(cell: &serde_json::Value) -> anyhow::Result<StartUp> {
    if let Some(f) = cell["failure"].as_str() {
        bail!("the cell failed: {f}");
    }
    let first = cell["first_scenario_ms"].as_f64().ok_or_else(|| anyhow::anyhow!("no first_scenario_ms in the cell"))?;
    // the capability table is listed first but is not a scenario run
    let first_real = cell["scenarios"].as_array().into_iter().flatten().find(|s| s["scenario"] != "capabilities");
    let first_run = first_real.and_then(|s| s["duration_ms"].as_f64()).unwrap_or(0.0);
    Ok(StartUp {
        starts: (first - first_run).max(0.0),
        boot: cell["boot_ms"].as_f64(),
        first_run,
        first_name: first_real.and_then(|s| s["scenario"].as_str()).unwrap_or("?").to_owned(),
        first_file: first_real.and_then(|s| s["file"].as_str()).map(PathBuf::from),
    })
}

/// A cell that runs the scenarios (QEMU start → first scenario, whole cell)
/// against the bare boot of the same kernel, through the kernel-matrix
/// runner (`tclab run --kernel NAME`), lockdown=none. The whole cell runs
/// once; its start-up is sampled like the bare boot: `reps` more cells
/// running only the first scenario, median — one lab boot against the
/// median of three bare ones read the kernel's boot-to-boot spread (±10%)
/// as lab overhead.
fn qemu_scenario_rows(
    opts: &BenchOptions,
    kernel: &CachedKernel,
    files: &[PathBuf],
    reps: usize,
    bare_first: f64,
    bare_total: f64,
) -> anyhow::Result<Vec<Row>> {
    let name = &kernel.info.name;
    let (doc, _) = matrix_run(opts, files, name, "none", Some(1))?;
    let cell = cell_of(&doc, name)?;
    let whole = start_up(cell)?;
    let total = cell["total_ms"].as_f64().unwrap_or(0.0);
    let n = cell["scenarios"].as_array().map_or(0, Vec::len);
    let mut samples = vec![(whole.starts, whole.boot)];
    if let Some(file) = whole.first_file.as_ref().filter(|_| reps > 1) {
        for _ in 0..reps {
            let (doc, _) = matrix_run(opts, std::slice::from_ref(file), name, "none", Some(1))?;
            let one = start_up(cell_of(&doc, name)?)?;
            samples.push((one.starts, one.boot));
        }
    }
    let starts: Vec<f64> = samples.iter().map(|(s, _)| *s).collect();
    let after_init: Vec<f64> = samples.iter().filter_map(|(s, b)| b.map(|b| (s - b).max(0.0))).collect();
    let mut rows = vec![
        Row::ratio(format!("QEMU {name}: lab cell, start → first scenario starts"), median(&starts), bare_first, "ms")
            .target(Target::RatioAtMost(1.2))
            .note(format!(
                "median of {} cells (the whole cell and {} running only {}; range {} ms) against the bare boot's first record; each: first result minus the scenario's own run ({:.0} ms in the whole cell)",
                starts.len(),
                starts.len() - 1,
                whole.first_name,
                spread(&starts, 0),
                whole.first_run
            )),
    ];
    // The same overhead without the kernel's own boot: init's first record
    // → the first scenario starts, as a share of the bare boot.
    if !after_init.is_empty() {
        rows.push(
            Row::ratio(format!("QEMU {name}: lab cell, init → first scenario starts"), median(&after_init), bare_first, "ms")
                .note(format!(
                    "modules, lockdown check, probe, payload and work decoding; median of {} (range {} ms); ratio = share of the bare boot",
                    after_init.len(),
                    spread(&after_init, 0)
                )),
        );
    }
    rows.push(
        Row::ratio(format!("QEMU {name}: lab cell with {n} scenarios, whole"), total, bare_total, "ms")
            .note(format!("{:.0} ms per scenario beyond the bare cell", (total - bare_total).max(0.0) / n.max(1) as f64)),
    );
    Ok(rows)
}

/// Every cached kernel × every lockdown mode × the scenarios, as `tclab run
/// --kernel all --lockdown all` runs them (cells in parallel, -j = cores).
fn full_matrix_row(opts: &BenchOptions, files: &[PathBuf]) -> anyhow::Result<Row> {
    let (doc, wall) = matrix_run(opts, files, "all", "all", None)?;
    let cells = doc["cells"].as_array().map_or(0, Vec::len);
    let failed: Vec<String> = doc["cells"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| !c["failure"].is_null())
        .map(|c| format!("{}/{}: {}", c["kernel"].as_str().unwrap_or("?"), c["lockdown"].as_str().unwrap_or("?"), c["failure"].as_str().unwrap_or("?")))
        .collect();
    let times = scenario_times(&doc);
    Ok(Row::value("full matrix: every kernel × lockdown × scenario, wall time", wall / 1000.0, "s")
        .target(Target::ValueBelow(300.0))
        .note(format!(
            "{cells} cells, {} failed{}; {} scenario runs, -j {}",
            failed.len(),
            if failed.is_empty() { String::new() } else { format!(" ({})", failed.join("; ")) },
            times.len(),
            vm::default_jobs()
        )))
}
