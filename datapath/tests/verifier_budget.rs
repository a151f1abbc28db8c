//! The verifier budget on the running kernel: every program tclab loads stays
//! under a quarter of the 1M-instruction limit (a correctness budget: a
//! program near the limit fails on a kernel whose verifier explores more
//! states). The figures themselves are a reviewed snapshot compared by
//! `tclab bench verifier`, not here.

use tclab_datapath::loader::CilProgram;
use tclab_datapath::verifier::{self, BUDGET_PERCENT, INSN_LIMIT, Method, Source};

#[test]
fn every_program_is_under_a_quarter_of_the_verifier_limit() {
    if !tclab_net::require::root("verifier_budget::every_program_is_under_a_quarter_of_the_verifier_limit") {
        return;
    }
    let budgets = verifier::budget().unwrap_or_else(|e| panic!("{e}"));
    // 3 datapath objects x (2 hooks + the tail-called HTTP program), 2 test
    // programs, every Cilium-like program, and propagation.o's 5 (its
    // tracepoint loads on this kernel)
    assert_eq!(budgets.len(), 9 + 2 + CilProgram::ALL.len() + 5, "{budgets:#?}");
    for object in ["datapath_lru.o", "datapath_hash.o", "datapath_perf.o"] {
        for program in ["tclab_ingress", "tclab_egress", "tclab_http"] {
            assert!(budgets.iter().any(|b| b.object == object && b.program == program), "{object} {program} missing: {budgets:#?}");
        }
    }
    for program in ["tclab_prop_msg", "tclab_prop_sockops", "tclab_prop_read", "tclab_prop_ingress", "tclab_prop_egress"] {
        assert!(budgets.iter().any(|b| b.object == "propagation.o" && b.program == program), "{program} missing: {budgets:#?}");
    }
    for b in &budgets {
        eprintln!("{:>16} {:<20} {:>7} insns ({:.1}% of {INSN_LIMIT})", b.object, b.program, b.insns, b.percent_of_limit());
        assert!(b.insns > 0, "{b:?}");
        assert!(b.within_budget(), "{} {}: {} insns is over {BUDGET_PERCENT}% of {INSN_LIMIT}", b.object, b.program, b.insns);
    }
}

/// The statistics-log path (what 5.10 … 5.15 use) reads the same kernel
/// counter as `verified_insns` (5.16+): on this kernel both exist and must
/// be equal, program by program.
#[test]
fn statistics_log_agrees_with_verified_insns() {
    if !tclab_net::require::root("verifier_budget::statistics_log_agrees_with_verified_insns") {
        return;
    }
    let auto = verifier::budget().unwrap_or_else(|e| panic!("{e}"));
    let log = verifier::budget_with(Method::StatsLog).unwrap_or_else(|e| panic!("{e}"));
    assert!(auto.iter().all(|b| b.source == Source::VerifiedInsns), "host kernel reports verified_insns: {auto:#?}");
    assert!(log.iter().all(|b| b.source == Source::StatsLog));
    let pairs: Vec<_> = auto.iter().map(|b| (b.object, b.program, b.insns)).collect();
    let from_log: Vec<_> = log.iter().map(|b| (b.object, b.program, b.insns)).collect();
    assert_eq!(pairs, from_log);
}
