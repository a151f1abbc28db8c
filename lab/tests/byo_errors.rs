//! Mistakes in object entries are scenario errors that name the file, the
//! line and column, and what is wrong: a missing object, a wrong program
//! name, a file that is not a BPF object, and values that do not fit the
//! object's maps and globals. No kernel needed: validation opens objects
//! with libbpf without loading them.

use std::path::{Path, PathBuf};

fn byo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/byo").canonicalize().expect("fixtures/byo")
}

/// Validates a scenario placed in fixtures/byo/ (objects by bare name);
/// returns every error as text.
fn errors(chain_program: &str) -> Vec<String> {
    let src = format!(
        "name = \"t\"\n\n[[chain]]\nname = \"mine\"\nattach = {{ mode = \"tcx\" }}\nprogram = {chain_program}\n"
    );
    let path = byo().join("t.toml");
    match tclab_lab::scenario::parse_scenario(&path, &src) {
        Ok(_) => Vec::new(),
        Err(errs) => errs.iter().map(|e| e.to_string().replace(&format!("{}/", byo().display()), "")).collect(),
    }
}

fn one(chain_program: &str) -> String {
    let e = errors(chain_program);
    assert_eq!(e.len(), 1, "{e:#?}");
    e[0].clone()
}

#[test]
fn a_valid_object_entry_has_no_error() {
    let e = errors(r#"{ object = "port_filter.o", program = "byo_port_filter", constants = { byo_default_action = -1 }, fill = [{ map = "byo_rules", key = 53, value = { action = 2 } }, { map = "byo_stats", key_hex = "5000", value_hex = "00000000000000000000000000000000" }], tail_calls = [{ map = "byo_jmp", index = 2, program = "byo_on_other" }], dump = ["byo_stats"] }"#);
    assert!(e.is_empty(), "{e:#?}");
}

#[test]
fn missing_object() {
    assert_eq!(
        one(r#"{ object = "nope.o" }"#).split(" (looked for").next(),
        Some("t.toml:6:22: object `nope.o` not found")
    );
}

#[test]
fn wrong_program_name() {
    let e = one(r#"{ object = "port_filter.o", program = "byo_missing" }"#);
    assert!(e.starts_with("t.toml:6:49: `port_filter.o` has no program or section `byo_missing`, expected one of `byo_on_tcp (section tc)`"), "{e}");
}

#[test]
fn a_section_with_several_programs_is_ambiguous_and_several_programs_need_a_name() {
    let e = one(r#"{ object = "port_filter.o", program = "tc" }"#);
    assert!(e.contains("section `tc` holds 4 programs"), "{e}");
    let e = one(r#"{ object = "port_filter.o" }"#);
    assert!(e.starts_with("t.toml:6:11: `port_filter.o` has 4 programs, expected `program = \"…\"`"), "{e}");
}

#[test]
fn non_bpf_files() {
    let text = one(r#"{ object = "port_filter.c" }"#);
    assert_eq!(text, "t.toml:6:22: `port_filter.c` is not an ELF object file, expected a BPF object built with clang -target bpf");
    // An ELF file of another machine: the test binary itself.
    let exe = std::env::current_exe().expect("current exe");
    let e = one(&format!("{{ object = \"{}\" }}", exe.display()));
    assert!(e.contains("is an ELF object for X86_64, not BPF") || e.contains("is an ELF object for Aarch64, not BPF"), "{e}");
}

#[test]
fn values_must_fit_the_btf_types() {
    let e = one(r#"{ object = "port_filter.o", program = "byo_port_filter", fill = [{ map = "byo_rules", key = 70000, value = { action = 1 } }] }"#);
    assert!(e.contains("map `byo_rules` key: 70000 is out of range 0..=65535, expected __u16"), "{e}");
    let e = one(r#"{ object = "port_filter.o", program = "byo_port_filter", fill = [{ map = "byo_rules", key = 1, value = { verdict = 1 } }] }"#);
    assert!(e.contains("struct byo_rule has no member `verdict`, expected one of `action`, `hits`"), "{e}");
    let e = one(r#"{ object = "port_filter.o", program = "byo_port_filter", constants = { byo_missing = 1 } }"#);
    assert!(e.contains("has no global variable `byo_missing`, expected one of `byo_default_action`"), "{e}");
    let e = one(r#"{ object = "port_filter.o", program = "byo_port_filter", fill = [{ map = "byo_rules", key_hex = "50", value = { action = 1 } }] }"#);
    assert!(e.contains("map `byo_rules` key is 1 bytes, expected 2"), "{e}");
}

#[test]
fn maps_and_tail_calls_must_exist_and_fit() {
    let e = one(r#"{ object = "port_filter.o", program = "byo_port_filter", dump = ["nope"] }"#);
    assert!(e.contains("`port_filter.o` has no map `nope`, expected one of `byo_stats`, `byo_rules`, `byo_jmp`, `byo_proto_hits`"), "{e}");
    let e = one(r#"{ object = "port_filter.o", program = "byo_port_filter", tail_calls = [{ map = "byo_rules", index = 0, program = "byo_on_tcp" }] }"#);
    assert!(e.contains("map `byo_rules` is a hash map, expected a prog_array"), "{e}");
    let e = one(r#"{ object = "port_filter.o", program = "byo_port_filter", tail_calls = [{ map = "byo_jmp", index = 3, program = "byo_on_tcp" }] }"#);
    assert!(e.contains("index 3 is outside `byo_jmp` (0..3)"), "{e}");
}

#[test]
fn reuse_names_an_earlier_object_entry_with_a_matching_map() {
    let src = r#"name = "t"

[[chain]]
name = "first"
attach = { mode = "tcx" }
program = { object = "port_filter.o", program = "byo_port_filter", reuse = { byo_stats = "second" } }

[[chain]]
name = "second"
attach = { mode = "tcx" }
program = { object = "port_filter.o", program = "byo_port_filter", reuse = { byo_rules = "first/byo_stats" } }
"#;
    let errs = tclab_lab::scenario::parse_scenario(&byo().join("t.toml"), src).expect_err("two errors");
    let text: Vec<String> = errs.iter().map(|e| e.to_string().replace(&format!("{}/", byo().display()), "")).collect();
    assert_eq!(text.len(), 2, "{text:#?}");
    assert!(text[0].starts_with("t.toml:6:90: `reuse` names `second`, which comes later in the file"), "{text:#?}");
    assert!(text[1].starts_with("t.toml:11:90: map `byo_rules` (hash 2/8 bytes) cannot reuse `first/byo_stats` (hash 2/16 bytes)"), "{text:#?}");
}

#[test]
fn object_and_cilium_keys_do_not_mix_and_direction_must_match_per_hook_programs() {
    let e = one(r#"{ object = "port_filter.o", program = "byo_port_filter", behaviour = "drop" }"#);
    assert!(e.contains("`behaviour` is a key of Cilium-like programs, expected it without `object`"), "{e}");
    let src = "name = \"t\"\n[[chain]]\nname = \"m\"\ndirection = \"ingress\"\nattach = { mode = \"tcx\" }\nprogram = { object = \"port_filter.o\", program = { ingress = \"byo_on_tcp\", egress = \"byo_on_udp\" } }\n";
    let errs = tclab_lab::scenario::parse_scenario(&byo().join("t.toml"), src).expect_err("an error");
    assert!(errs[0].message.contains("`egress` names a program but the entry's direction leaves out egress"), "{errs:?}");
}
