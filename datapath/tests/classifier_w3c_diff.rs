//! Differential test: the kernel's traceparent decision against the Rust
//! reference (`tclab_datapath::w3c`) on a fixed-seed set of generated and
//! mutated header values. Zero disagreements allowed.

mod common;

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tclab_datapath::types::TraceparentStatus;
use tclab_datapath::w3c::{TraceParent, parse_traceparent};

const SEED: u64 = 0x7c1a_b000_2026;
const CASES: usize = 2500;

/// Bytes a mutation may insert: hex both cases, separators, OWS, and a few
/// bytes that must never pass (NUL, DEL, high bytes). No CR/LF: they end
/// the header line, so the value would be a different one.
const ALPHABET: &[u8] = b"0123456789abcdefABCDEFgxz-_ \t:;,=\x00\x7f\x80\xff";

fn ows(rng: &mut StdRng) -> String {
    // at most 16 on each side: the kernel's documented bound
    let n = if rng.gen_bool(0.5) { 0 } else { rng.gen_range(1..=16) };
    (0..n).map(|_| if rng.gen_bool(0.7) { ' ' } else { '\t' }).collect()
}

fn base_value(rng: &mut StdRng) -> Vec<u8> {
    let tp = TraceParent::new_root(rng);
    let mut s = tp.to_string();
    match rng.gen_range(0..6) {
        0 => s.replace_range(0..2, &format!("{:02x}", rng.gen_range(1..=0xfeu8))),
        1 => {
            s.replace_range(0..2, &format!("{:02x}", rng.gen_range(1..=0xfeu8)));
            s.push_str(&format!("-{:x}", rng.r#gen::<u32>()));
        }
        2 => s.replace_range(53..55, &format!("{:02x}", rng.r#gen::<u8>())),
        _ => {}
    }
    s.into_bytes()
}

fn mutate(rng: &mut StdRng, v: &mut Vec<u8>) {
    let pick = |rng: &mut StdRng| ALPHABET[rng.gen_range(0..ALPHABET.len())];
    match rng.gen_range(0..10) {
        0 => {
            let i = rng.gen_range(0..v.len());
            v[i] = pick(rng);
        }
        1 => {
            let i = rng.gen_range(0..v.len());
            v.remove(i);
        }
        2 => {
            let i = rng.gen_range(0..=v.len());
            v.insert(i, pick(rng));
        }
        3 => v.truncate(rng.gen_range(0..v.len())),
        4 => v.push(pick(rng)),
        5 => v.make_ascii_uppercase(),
        6 if v.len() >= 35 => v[3..35].fill(b'0'),
        7 if v.len() >= 52 => v[36..52].fill(b'0'),
        8 if v.len() >= 2 => v[0..2].copy_from_slice(b"ff"),
        _ => {
            let i = rng.gen_range(0..v.len());
            v[i] = v[i].to_ascii_uppercase();
        }
    }
}

fn generate(rng: &mut StdRng) -> Vec<u8> {
    let mut v = base_value(rng);
    let mutations = [0, 0, 1, 1, 1, 2, 3][rng.gen_range(0..7)];
    for _ in 0..mutations {
        if v.is_empty() {
            break;
        }
        mutate(rng, &mut v);
    }
    let mut out = ows(rng).into_bytes();
    out.extend_from_slice(&v);
    out.extend_from_slice(ows(rng).as_bytes());
    out
}

#[test]
fn kernel_and_rust_agree_on_every_traceparent() {
    if !tclab_net::require::root("classifier_w3c_diff::kernel_and_rust_agree_on_every_traceparent") {
        return;
    }
    let mut h = Harness::default_config();
    let mut rng = StdRng::seed_from_u64(SEED);
    let (client, server) = (sa("10.9.0.1:45000"), sa("10.9.0.2:80"));
    let mut disagreements = Vec::new();
    let (mut valid, mut invalid) = (0usize, 0usize);
    for i in 0..CASES {
        let value = generate(&mut rng);
        let mut req = b"GET /diff HTTP/1.1\r\nHost: diff\r\ntraceparent:".to_vec();
        req.extend_from_slice(&value);
        req.extend_from_slice(b"\r\nAccept: */*\r\n\r\n");
        h.egress(&tcp(client, server, TCP_ACK | TCP_PSH, &req));
        let events = h.http_events();
        assert_eq!(events.len(), 1, "case {i}: one event");
        let kernel = TraceparentStatus::from_raw(events[0].traceparent_status);
        let rust = parse_traceparent(&value);
        let agree = match (&rust, kernel) {
            (Ok(_), Some(TraceparentStatus::Valid)) => {
                let trimmed = String::from_utf8_lossy(&value).trim_matches([' ', '\t']).to_string();
                events[0].traceparent() == Some(&trimmed.as_bytes()[..55])
            }
            (Err(_), Some(TraceparentStatus::Invalid)) => events[0].traceparent == [0u8; 56],
            _ => false,
        };
        match rust {
            Ok(_) => valid += 1,
            Err(_) => invalid += 1,
        }
        if !agree {
            disagreements.push(format!("case {i}: {:?}: rust {rust:?}, kernel {kernel:?}", String::from_utf8_lossy(&value)));
        }
    }
    eprintln!("{CASES} cases: {valid} valid, {invalid} invalid by the reference");
    assert!(valid > CASES / 5 && invalid > CASES / 5, "the generator covers both outcomes: {valid} valid, {invalid} invalid");
    assert!(disagreements.is_empty(), "{} disagreements:\n{}", disagreements.len(), disagreements.join("\n"));
}
