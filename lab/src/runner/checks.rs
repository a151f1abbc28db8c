//! The inline checks of a scenario's `[expect]` table.

use std::net::IpAddr;

use crate::scenario::{CtTuple, Expect, L4Proto};

use super::report::{AgentOutcome, CheckOutcome, ScenarioResult};

/// `TCP 10.0.0.1:5555 -> 10.0.0.2:80`, the way CT rows name their tuple.
pub fn tuple_text(t: &CtTuple) -> String {
    let proto = match t.proto {
        L4Proto::Tcp => "TCP",
        L4Proto::Udp => "UDP",
        L4Proto::Icmp => "ICMP",
        L4Proto::Icmpv6 => "ICMPv6",
    };
    format!("{proto} {} -> {}", endpoint(t.src, t.src_port), endpoint(t.dst, t.dst_port))
}

fn endpoint(ip: IpAddr, port: Option<u16>) -> String {
    match (ip, port) {
        (IpAddr::V4(v4), Some(p)) => format!("{v4}:{p}"),
        (IpAddr::V6(v6), Some(p)) => format!("[{v6}]:{p}"),
        (ip, None) => ip.to_string(),
    }
}

/// Evaluate every inline check against what the run collected.
pub fn evaluate(expect: &Expect, result: &ScenarioResult) -> Vec<CheckOutcome> {
    let mut out = Vec::new();
    if let Some(want) = expect.spans {
        let got = result.spans.len() as u64;
        out.push(outcome(format!("spans = {want}"), got == want, format!("{got} spans")));
    }
    for ct in &expect.ct {
        let tuple = tuple_text(&ct.tuple);
        let found = result.ct_states.iter().find(|(t, _)| *t == tuple);
        let name = match &ct.state {
            Some(state) => format!("ct {tuple} is {}", format!("{state:?}").to_uppercase()),
            None => format!("ct {tuple} exists"),
        };
        let (passed, detail) = match (found, &ct.state) {
            (None, _) => (false, format!("no entry; table: [{}]", tuples(result))),
            (Some((_, got)), Some(want)) => {
                let want = format!("{want:?}").to_uppercase();
                (got.eq_ignore_ascii_case(&want), format!("state {got}"))
            }
            (Some((_, got)), None) => (true, format!("state {got}")),
        };
        out.push(outcome(name, passed, detail));
    }
    if let Some(needle) = &expect.agent_error_contains {
        let (passed, detail) = match &result.agent {
            AgentOutcome::Refused { error } => (error.contains(needle.as_str()), format!("refused: {error}")),
            AgentOutcome::Started { .. } => (false, "the agent started".to_string()),
            AgentOutcome::NotInChain => (false, "no agent in the chain".to_string()),
        };
        out.push(outcome(format!("agent refuses with {needle:?}"), passed, detail));
    }
    for (entry, want) in &expect.counters {
        let got = result.counters.get(entry).copied();
        let detail = got.map_or_else(|| "no such counter".to_string(), |g| format!("{g} packets"));
        out.push(outcome(format!("counter {entry} = {want}"), got == Some(*want), detail));
    }
    out
}

fn tuples(result: &ScenarioResult) -> String {
    result.ct_states.iter().map(|(t, s)| format!("{t} {s}")).collect::<Vec<_>>().join(", ")
}

fn outcome(check: String, passed: bool, detail: String) -> CheckOutcome {
    CheckOutcome { check, passed, detail }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{CtCheck, CtState};
    use std::collections::BTreeMap;

    fn expect() -> Expect {
        Expect {
            snapshot: true,
            spans: Some(1),
            ct: vec![CtCheck {
                tuple: CtTuple {
                    proto: L4Proto::Tcp,
                    src: "10.0.0.1".parse().expect("ip"),
                    src_port: Some(5555),
                    dst: "10.0.0.2".parse().expect("ip"),
                    dst_port: Some(80),
                },
                state: Some(CtState::Established),
            }],
            agent_error_contains: None,
            counters: BTreeMap::from([("c".to_string(), 3)]),
            varies_by: vec![],
        }
    }

    #[test]
    fn every_check_passes_on_a_matching_result() {
        let mut r = ScenarioResult::new("s", "host");
        r.spans.push("span".into());
        r.ct_states.push(("TCP 10.0.0.1:5555 -> 10.0.0.2:80".into(), "ESTABLISHED".into()));
        r.counters.insert("c".into(), 3);
        let outcomes = evaluate(&expect(), &r);
        assert_eq!(outcomes.len(), 3);
        assert!(outcomes.iter().all(|o| o.passed), "{outcomes:?}");
    }

    #[test]
    fn each_check_fails_with_what_was_found() {
        let mut r = ScenarioResult::new("s", "host");
        r.ct_states.push(("TCP 10.0.0.1:5555 -> 10.0.0.2:80".into(), "CLOSING".into()));
        r.counters.insert("c".into(), 2);
        let outcomes = evaluate(&expect(), &r);
        assert!(outcomes.iter().all(|o| !o.passed), "{outcomes:?}");
        assert_eq!(outcomes[0].detail, "0 spans");
        assert_eq!(outcomes[1].detail, "state CLOSING");
        assert_eq!(outcomes[2].detail, "2 packets");
    }

    #[test]
    fn agent_refusal_is_matched_by_substring() {
        let mut e = expect();
        e.spans = None;
        e.ct.clear();
        e.counters.clear();
        e.agent_error_contains = Some("bpf-filter-priority 2".into());
        let mut r = ScenarioResult::new("s", "host");
        r.agent = AgentOutcome::Refused { error: "run `cilium config set bpf-filter-priority 2`".into() };
        assert!(evaluate(&e, &r)[0].passed);
        r.agent = AgentOutcome::Started { attach: "tcx".into(), warnings: vec![] };
        assert!(!evaluate(&e, &r)[0].passed);
    }
}
