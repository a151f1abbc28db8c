//! Differential fuzzing of the datapath's HTTP recogniser and traceparent
//! validator, the fixed-seed part (`tclab fuzz-datapath` runs the long
//! campaigns): the BPF classifiers under BPF_PROG_TEST_RUN against the Rust
//! reference `tclab_datapath::http_ref`, zero disagreements allowed. Also
//! replays every input a campaign ever disagreed on (fuzz/regressions/).

use std::path::{Path, PathBuf};

use tclab_lab::difffuzz::{Fuzzer, replay_corpus, seeds_from_fixtures};

const SEED: u64 = 0x7c1a_f022_0009;
const INPUTS: u64 = 10_000;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn kernel_and_reference_agree_on_generated_segments() {
    if !tclab_net::require::root("robust_datapath_diff::kernel_and_reference_agree_on_generated_segments") {
        return;
    }
    let seeds = seeds_from_fixtures(&root().join("fixtures")).expect("fixture payloads");
    assert!(seeds.len() >= 20, "the fixtures give real requests and responses: {}", seeds.len());
    let mut fuzzer = Fuzzer::new().expect("load the datapath");
    let s = fuzzer.campaign(SEED, INPUTS, &seeds, |_| {}).expect("campaign");
    eprintln!("{}", s.text());
    let details: Vec<&str> = s.disagreements.iter().take(20).map(|d| d.detail.as_str()).collect();
    assert!(s.disagreements.is_empty(), "{} disagreements:\n{}", s.disagreements.len(), details.join("\n"));
    // the inputs reach every outcome, in numbers
    assert_eq!(s.inputs, INPUTS);
    let n = INPUTS / 100;
    for (what, got) in [
        ("requests", s.requests),
        ("responses", s.responses),
        ("inputs without event", s.no_event),
        ("valid traceparents", s.tp_valid),
        ("invalid traceparents", s.tp_invalid),
        ("tracestates", s.tracestates),
        ("pending requests", s.pending),
    ] {
        assert!(got >= 3 * n, "{what}: only {got} of {INPUTS}");
    }
}

#[test]
fn saved_disagreements_stay_fixed() {
    if !tclab_net::require::root("robust_datapath_diff::saved_disagreements_stay_fixed") {
        return;
    }
    let dir = root().join("fuzz/regressions/datapath-http");
    let files = std::fs::read_dir(&dir).expect("regression folder").count();
    assert!(files >= 35, "{}: {files} inputs", dir.display());
    let mut fuzzer = Fuzzer::new().expect("load the datapath");
    let s = replay_corpus(&mut fuzzer, &dir).expect("replay");
    eprintln!("{}", s.text());
    assert_eq!(s.inputs as usize, 2 * files, "each input in two framings");
    let details: Vec<&str> = s.disagreements.iter().map(|d| d.detail.as_str()).collect();
    assert!(s.disagreements.is_empty(), "{} disagreements:\n{}", s.disagreements.len(), details.join("\n"));
}

/// Requests cut in two segments at every byte (split method, request line,
/// header names and values, CR|LF, the blank line): each segment's event
/// and the pending state agree with the reference's split-request rules.
#[test]
fn kernel_and_reference_agree_on_every_split() {
    if !tclab_net::require::root("robust_datapath_diff::kernel_and_reference_agree_on_every_split") {
        return;
    }
    let mut fuzzer = Fuzzer::new().expect("load the datapath");
    let tp = tclab_datapath::frames::TP;
    let requests = [
        tclab_datapath::frames::request("OPTIONS", "/a/rather/long/path?q=1", &[&format!("traceparent: {tp}"), "tracestate: a=1,b=2"]),
        tclab_datapath::frames::request("GET", "/", &["X: 1", &format!("TraceParent:  {}", tp.replacen("00-", "01-", 1)), "tracestate:x"]),
        format!("POST /p HTTP/1.1\na:\nb:\ntracestate: q=1\ntraceparent:{tp}\n\nbody").into_bytes(),
    ];
    let mut continuations = 0;
    for r in &requests {
        let s = fuzzer.every_split(r).expect("splits");
        eprintln!("{}", s.text());
        let details: Vec<&str> = s.disagreements.iter().take(20).map(|d| d.detail.as_str()).collect();
        assert!(s.disagreements.is_empty(), "{:?}: {} disagreements:\n{}", String::from_utf8_lossy(r), s.disagreements.len(), details.join("\n"));
        assert_eq!(s.inputs as usize, r.len() - 1);
        continuations += s.continuations;
    }
    assert!(continuations > 100, "the splits exercise continuations: {continuations}");
}
