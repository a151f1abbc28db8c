//! Lint of `ci/nightly.yml`: it parses, runs nightly and on demand, shards
//! consistently, caches kernels by manifest hash, uses KVM when present,
//! installs what `.ci/run` installs, uploads reports always, and every
//! `tclab …` command it runs names subcommands and flags that the built
//! `tclab` accepts (read from its `--help`).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_norway::Value;

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("lab/ has a parent")
}

fn workflow() -> Value {
    let path = workspace().join("ci/nightly.yml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
}

fn jobs(wf: &Value) -> Vec<(String, &Value)> {
    wf["jobs"]
        .as_mapping()
        .expect("jobs")
        .iter()
        .map(|(k, v)| (k.as_str().expect("job id").to_string(), v))
        .collect()
}

fn steps(job: &Value) -> &[Value] {
    job["steps"].as_sequence().map(Vec::as_slice).expect("steps")
}

/// Every `run:` script of the workflow, with its job.
fn scripts(wf: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (id, job) in jobs(wf) {
        for step in steps(job) {
            if let Some(run) = step["run"].as_str() {
                out.push((id.clone(), run.to_string()));
            }
        }
    }
    out
}

/// `tclab …` invocations in a script: the arguments after the program, up
/// to a shell operator. Continuation lines are joined first.
fn tclab_commands(script: &str) -> Vec<Vec<String>> {
    let joined = script.replace("\\\n", " ");
    let mut out = Vec::new();
    for line in joined.lines() {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        for (i, t) in tokens.iter().enumerate() {
            let program = t.trim_matches(|c| c == '"' || c == '\'');
            if program == "tclab" || program.ends_with("/tclab") {
                let is_command = i == 0 || ["{", ";", "&&", "||", "|", "then", "do", "(", "!"].contains(&tokens[i - 1]);
                if !is_command {
                    continue;
                }
                let args = tokens[i + 1..]
                    .iter()
                    .take_while(|a| !matches!(**a, ";" | "&&" | "||" | "|" | "}" | ")") && !a.starts_with('>') && !a.starts_with("2>"))
                    .map(|a| a.to_string())
                    .collect();
                out.push(args);
            }
        }
    }
    out
}

/// What `tclab [path…] --help` lists: (subcommands, flags).
fn help(path: &[&str]) -> (BTreeSet<String>, BTreeSet<String>) {
    let out = Command::new(env!("CARGO_BIN_EXE_tclab")).args(path).arg("--help").output().expect("tclab --help runs");
    assert!(out.status.success(), "tclab {path:?} --help failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let (mut commands, mut flags) = (BTreeSet::new(), BTreeSet::new());
    let mut section = "";
    for line in text.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            section = line.trim_end_matches(':');
            continue;
        }
        let trimmed = line.trim_start();
        match section {
            "Commands" if line.starts_with("  ") && !line.starts_with("   ") => {
                if let Some(name) = trimmed.split_whitespace().next() {
                    commands.insert(name.to_string());
                }
            }
            "Options" if trimmed.starts_with('-') => {
                for t in trimmed.split(|c: char| c.is_whitespace() || c == ',').filter(|t| !t.is_empty()) {
                    if !t.starts_with('-') {
                        break;
                    }
                    flags.insert(t.to_string());
                }
            }
            _ => {}
        }
        // clap prints `[aliases: --results]` on the option's lines.
        for marker in ["[aliases: ", "[alias: "] {
            if let Some(rest) = line.split(marker).nth(1) {
                for a in rest.trim_end_matches(']').split(", ") {
                    flags.insert(a.trim_end_matches(']').to_string());
                }
            }
        }
    }
    (commands, flags)
}

/// Check one invocation against the binary's help; returns the subcommand path.
fn check_invocation(args: &[String]) -> Vec<String> {
    let (top, _) = help(&[]);
    let mut path: Vec<String> = Vec::new();
    let mut commands = top;
    let mut flags = BTreeSet::new();
    let mut i = 0;
    // Subcommands: leading words that name one, as deep as the help goes.
    while let Some(word) = args.get(i) {
        if word.starts_with('-') || commands.is_empty() {
            break;
        }
        assert!(commands.contains(word), "`tclab {}`: no subcommand {word:?} (tclab {} knows {commands:?})", args.join(" "), path.join(" "));
        path.push(word.clone());
        let refs: Vec<&str> = path.iter().map(String::as_str).collect();
        let (sub, f) = help(&refs);
        commands = sub.into_iter().filter(|c| c != "help").collect();
        flags = f;
        i += 1;
    }
    assert!(!path.is_empty(), "`tclab {}` names no subcommand", args.join(" "));
    for a in &args[i..] {
        if a.starts_with('-') {
            let flag = a.split('=').next().unwrap_or(a);
            assert!(flags.contains(flag), "`tclab {}`: `tclab {}` has no flag {flag} (it has {flags:?})", args.join(" "), path.join(" "));
        }
    }
    path
}

#[test]
fn help_parsing_finds_what_clap_prints() {
    // The parser itself, against the real binary: a check that cannot find
    // anything would pass every workflow.
    let (top, _) = help(&[]);
    for c in ["run", "kernels", "merge"] {
        assert!(top.contains(c), "{top:?}");
    }
    let (_, run) = help(&["run"]);
    for f in ["--kernel", "--lockdown", "--shard", "--report", "--results", "-j", "--jobs", "--filter", "-h", "--help"] {
        assert!(run.contains(f), "{f} in {run:?}");
    }
    assert!(!run.contains("--no-such-flag"));
    let (kernels, _) = help(&["kernels"]);
    assert!(kernels.contains("fetch") && kernels.contains("list"), "{kernels:?}");
    assert_eq!(
        tclab_commands("a && target/release/tclab run --kernel all --report r/ > x.txt || s=$?\necho tclab run --bogus"),
        [vec!["run", "--kernel", "all", "--report", "r/"]]
    );
    assert_eq!(check_invocation(&["kernels".into(), "fetch".into()]), ["kernels", "fetch"]);
    let bad = std::panic::catch_unwind(|| check_invocation(&["run".into(), "--kernels".into(), "all".into()]));
    assert!(bad.is_err(), "a misspelt flag is caught");
}

#[test]
fn every_tclab_command_in_the_workflow_exists() {
    let wf = workflow();
    let mut seen: Vec<Vec<String>> = Vec::new();
    for (job, script) in scripts(&wf) {
        for args in tclab_commands(&script) {
            let path = check_invocation(&args);
            eprintln!("{job}: tclab {}", args.join(" "));
            seen.push(path);
        }
    }
    for want in [&["kernels", "fetch"][..], &["run"], &["merge"]] {
        assert!(seen.iter().any(|p| p == want), "the workflow runs no `tclab {}`: {seen:?}", want.join(" "));
    }
}

#[test]
fn the_matrix_runs_nightly_and_on_demand_sharded_over_every_kernel_and_mode() {
    let wf = workflow();
    assert!(wf["on"]["schedule"][0]["cron"].as_str().is_some_and(|c| c.split_whitespace().count() == 5), "nightly cron");
    assert!(wf["on"].get("workflow_dispatch").is_some(), "on demand");
    let shard_jobs: Vec<(String, &Value)> = jobs(&wf).into_iter().filter(|(_, j)| !j["strategy"]["matrix"]["shard"].is_null()).collect();
    assert_eq!(shard_jobs.len(), 1, "one sharded job");
    let (_, job) = &shard_jobs[0];
    let shards: Vec<u64> = job["strategy"]["matrix"]["shard"].as_sequence().expect("list").iter().map(|v| v.as_u64().expect("number")).collect();
    let n = shards.len() as u64;
    assert!(n >= 2, "{shards:?}");
    assert_eq!(shards, (1..=n).collect::<Vec<_>>(), "shards are 1..=N so --shard i/N covers every cell");
    assert_eq!(job["strategy"]["fail-fast"].as_bool(), Some(false), "one failing shard must not cancel the others' reports");
    assert!(job["container"]["options"].as_str().is_some_and(|o| o.contains("--privileged")), "BPF, netns and /dev/kvm");

    let run = steps(job).iter().filter_map(|s| s["run"].as_str()).flat_map(tclab_commands).find(|a| a.first().is_some_and(|c| c == "run")).expect("tclab run");
    let value = |flag: &str| run.iter().position(|a| a == flag).and_then(|i| run.get(i + 1)).cloned();
    assert_eq!(value("--kernel").as_deref(), Some("all"));
    assert_eq!(value("--lockdown").as_deref(), Some("all"));
    assert!(value("--report").is_some());
    let shard = run.iter().skip_while(|a| *a != "--shard").skip(1).take_while(|a| !a.starts_with("--")).cloned().collect::<Vec<_>>().join(" ");
    assert_eq!(shard, "${{ matrix.shard }}/${{ strategy.job-total }}", "shard i of the job count");
    // What that expands to is a valid --shard for every job.
    for i in &shards {
        assert!(format!("{i}/{n}").parse::<tclab_lab::shard::Shard>().is_ok());
    }
}

#[test]
fn kernels_are_cached_by_manifest_hash_kvm_is_used_and_reports_always_uploaded() {
    let wf = workflow();
    let (_, job) = jobs(&wf).into_iter().find(|(_, j)| !j["strategy"]["matrix"]["shard"].is_null()).expect("shard job");
    let all = steps(job);
    let uses = |prefix: &'static str| all.iter().filter(move |s| s["uses"].as_str().is_some_and(|u| u.starts_with(prefix)));
    let cache = uses("actions/cache@").next().expect("a cache step");
    assert_eq!(cache["with"]["path"].as_str(), Some("~/.cache/tclab/kernels"));
    assert!(cache["with"]["key"].as_str().is_some_and(|k| k.contains("hashFiles('kernels/*.toml')")), "keyed by the manifests");
    let pos = |pred: &dyn Fn(&Value) -> bool| all.iter().position(pred).expect("step");
    let fetch = pos(&|s| s["run"].as_str().is_some_and(|r| r.contains("kernels fetch")));
    assert!(all.iter().position(|s| s["uses"].as_str().is_some_and(|u| u.starts_with("actions/cache@"))).expect("cache") < fetch, "restored before fetching");
    assert!(all.iter().any(|s| s["run"].as_str().is_some_and(|r| r.contains("/dev/kvm"))), "KVM enabled when present");
    let upload = uses("actions/upload-artifact@").find(|s| s["with"]["path"].as_str().is_some_and(|p| p.starts_with("report"))).expect("report upload");
    assert!(upload["if"].as_str().is_some_and(|c| c.contains("always()")), "reports uploaded even when the run fails");
    // The binary the steps call is the one the build step builds.
    let scripts: Vec<&str> = all.iter().filter_map(|s| s["run"].as_str()).collect();
    if scripts.iter().any(|s| s.contains("target/release/tclab")) {
        assert!(scripts.iter().any(|s| s.contains("cargo build") && s.contains("--release")), "target/release/tclab is built");
    }
}

#[test]
fn the_workflow_installs_what_ci_run_installs() {
    let ci_run = std::fs::read_to_string(workspace().join(".ci/run")).expect(".ci/run");
    let line = ci_run.lines().find(|l| l.trim_start().starts_with("for p in") && l.contains("want")).expect("the package line of .ci/run");
    let list = line.split(" in ").nth(1).and_then(|r| r.split(';').next()).expect("for p in LIST;");
    let wf = workflow();
    let installed: BTreeSet<String> = scripts(&wf).iter().flat_map(|(_, s)| s.split_whitespace().map(String::from).collect::<Vec<_>>()).collect();
    // chromium (the report page's browser test) and tshark (output pcap
    // validation in robust_harmless) serve cargo tests, which the nightly does not run.
    let missing: Vec<&str> =
        list.split_whitespace().filter(|p| !["chromium", "tshark"].contains(p) && !installed.contains(*p)).collect();
    assert!(missing.is_empty(), "ci/nightly.yml does not install {missing:?} (.ci/run does)");
    assert!(installed.contains("qemu-system-x86"));
}
