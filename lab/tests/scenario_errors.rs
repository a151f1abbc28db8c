//! Scenario format errors: every one names file:line:col and what was expected.

use std::path::{Path, PathBuf};

use rstest::rstest;
use tclab_lab::scenario::{self, ScenarioError};

/// A folder holding `x.pcap` (a copy of fixtures/http-get.pcap) for scenarios to replay.
struct Dir {
    tmp: tempfile::TempDir,
}

impl Dir {
    fn new() -> Dir {
        let tmp = tempfile::tempdir().unwrap();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/http-get.pcap");
        std::fs::copy(fixture, tmp.path().join("x.pcap")).unwrap();
        Dir { tmp }
    }

    fn write(&self, name: &str, src: &str) -> PathBuf {
        let p = self.tmp.path().join(name);
        std::fs::write(&p, src).unwrap();
        p
    }

    /// Errors of one file, displayed with the folder stripped.
    fn errors(&self, src: &str) -> Vec<String> {
        let p = self.write("s.toml", src);
        match scenario::load_scenario_all(&p) {
            Ok(_) => Vec::new(),
            Err(e) => e.iter().map(|e| self.show(e)).collect(),
        }
    }

    fn show(&self, e: &ScenarioError) -> String {
        e.to_string()
            .replace(&format!("{}/", self.tmp.path().display()), "")
    }
}

/// A valid scenario to which tests append or in which they replace parts.
const BASE: &str = r#"name = "base"

[[chain]]
name = "agent"
program = "agent"
attach = { mode = "tcx", order = "head" }

[[chain]]
name = "count"
program = "counter"
attach = { mode = "netlink", priority = 2 }

[[replay]]
pcap = "x.pcap"
"#;

fn one_error(src: &str) -> String {
    let errs = Dir::new().errors(src);
    assert_eq!(errs.len(), 1, "expected exactly one error, got {errs:#?}");
    errs.into_iter().next().unwrap()
}

#[test]
fn base_scenario_is_valid() {
    assert_eq!(Dir::new().errors(BASE), Vec::<String>::new());
}

#[test]
fn display_is_file_line_col_message() {
    let src = BASE.replace("priority = 2", "prio = 2");
    assert_eq!(
        one_error(&src),
        "s.toml:11:30: unknown key `prio`, expected one of `mode`, `order`, `priority`, `handle`"
    );
}

#[rstest]
#[case::topology(
    "[topology]\nlocl = \"device\"\n",
    16,
    1,
    "unknown key `locl`, expected one of `device`, `peer`, `local`"
)]
#[case::endpoint(
    "[topology.device]\nip = \"10.0.0.1\"\n",
    16,
    1,
    "unknown key `ip`, expected one of `name`, `mac`, `ipv4`, `ipv6`"
)]
#[case::chain(
    "[[chain]]\nname = \"c\"\nprogram = \"pass\"\nattach = { mode = \"tcx\" }\nprio = 1\n",
    19,
    1,
    "unknown key `prio`, expected one of `name`, `program`, `direction`, `attach`"
)]
#[case::program_table(
    "[[chain]]\nname = \"c\"\nprogram = { cilium = \"cil_from_netdev\", behavior = \"ok\" }\nattach = { mode = \"tcx\" }\n",
    17,
    41,
    "unknown key `behavior`, expected one of `cilium`, `behaviour`"
)]
#[case::agent(
    "[agent]\nbackend = \"tcx\"\nct_size = 5\n",
    17,
    1,
    "unknown key `ct_size`, expected one of `backend`, `priority`, `ct_max_entries`"
)]
#[case::lifetimes(
    "[agent.lifetimes]\nsyn_s = 5\n",
    16,
    1,
    "unknown key `syn_s`, expected one of `syn`, `tcp`, `close`, `non_tcp`"
)]
#[case::replay(
    "[[replay]]\npcap = \"x.pcap\"\nspeed = 2\n",
    17,
    1,
    "unknown key `speed`, expected one of `pcap`, `rewrite`, `pacing`, `after`"
)]
#[case::expect(
    "[expect]\nspan = 1\n",
    16,
    1,
    "unknown key `span`, expected one of `snapshot`, `spans`, `ct`"
)]
#[case::expect_ct(
    "[[expect.ct]]\ntuple = \"TCP 10.0.0.1:1 -> 10.0.0.2:2\"\nstat = \"NEW\"\n",
    17,
    1,
    "unknown key `stat`, expected `tuple` or `state`"
)]
fn unknown_key_in_each_table(
    #[case] extra: &str,
    #[case] line: usize,
    #[case] col: usize,
    #[case] msg: &str,
) {
    let err = one_error(&format!("{BASE}{extra}"));
    let want = format!("s.toml:{line}:{col}: {msg}");
    assert!(err.starts_with(&want), "got  {err}\nwant {want}…");
}

#[rstest]
#[case::string_for_int(
    "[expect]\nspans = \"three\"\n",
    "s.toml:16:9: invalid type: string \"three\", expected i64"
)]
#[case::bad_direction(
    "[[chain]]\nname = \"c\"\nprogram = \"pass\"\ndirection = \"sideways\"\nattach = { mode = \"tcx\" }\n",
    "s.toml:18:13: unknown variant `sideways`, expected one of `ingress`, `egress`, `both`"
)]
#[case::bad_mode(
    "[[chain]]\nname = \"c\"\nprogram = \"pass\"\nattach = { mode = \"xdp\" }\n",
    "s.toml:18:19: unknown variant `xdp`, expected `tcx` or `netlink`"
)]
#[case::bad_order(
    "[[chain]]\nname = \"c\"\nprogram = \"pass\"\nattach = { mode = \"tcx\", order = \"middle\" }\n",
    "s.toml:18:34: unknown variant `middle`, expected one of `head`, `tail`, `before`, `after`"
)]
#[case::bad_program(
    "[[chain]]\nname = \"c\"\nprogram = \"accept\"\nattach = { mode = \"tcx\" }\n",
    "s.toml:17:11: unknown program `accept`, expected one of `agent`, `pass`, `unspec`, `drop`, `counter`"
)]
#[case::bad_step(
    "[[replay]]\npcap = \"x.pcap\"\nafter = [{ sleep_ms = 5 }]\n",
    "s.toml:17:12: unknown variant `sleep_ms`, expected `wait_ms` or `ct_gc`"
)]
#[case::bad_state(
    "[[expect.ct]]\ntuple = \"TCP 10.0.0.1:1 -> 10.0.0.2:2\"\nstate = \"OPEN\"\n",
    "s.toml:17:9: unknown variant `OPEN`, expected one of `NEW`, `ESTABLISHED`, `REPLY`, `CLOSING`"
)]
fn wrong_types_and_values(#[case] extra: &str, #[case] want: &str) {
    let err = one_error(&format!("{BASE}{extra}"));
    assert!(err.starts_with(want), "got  {err}\nwant {want}…");
}

#[rstest]
#[case::top_level(
    "nmae = 1",
    "s.toml:2:1: unknown key `nmae`, expected one of `name`, `description`, `tags`"
)]
#[case::int_for_string(
    "description = 5",
    "s.toml:2:15: invalid type: integer `5`, expected a string"
)]
#[case::bad_lockdown(
    "lockdown = [\"paranoid\"]",
    "s.toml:2:13: unknown variant `paranoid`, expected one of `none`, `integrity`, `confidentiality`"
)]
fn top_level_keys(#[case] line: &str, #[case] want: &str) {
    let err = one_error(&BASE.replacen("\n", &format!("\n{line}\n"), 1));
    assert!(err.starts_with(want), "got  {err}\nwant {want}…");
}

#[test]
fn missing_name_is_reported() {
    let err = one_error(&BASE.replace("name = \"base\"\n", "description = \"no name\"\n"));
    assert!(err.contains("missing key `name`"), "{err}");
}

#[test]
fn duplicate_chain_entry_names() {
    let src = format!(
        "{BASE}\n[[chain]]\nname = \"count\"\nprogram = \"drop\"\nattach = {{ mode = \"tcx\" }}\n"
    );
    assert_eq!(
        one_error(&src),
        "s.toml:17:8: duplicate chain entry name `count` (first defined on line 9), expected a unique name"
    );
}

#[test]
fn missing_pcap_names_the_path() {
    let dir = Dir::new();
    let errs = dir.errors(&BASE.replace("x.pcap", "nothere.pcap"));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("s.toml:14:8: pcap `nothere.pcap` not found (looked for "),
        "{}",
        errs[0]
    );
    assert!(
        errs[0].ends_with("nothere.pcap), expected a path relative to the scenario file"),
        "{}",
        errs[0]
    );
}

#[test]
fn corrupt_pcap_is_a_scenario_error() {
    let dir = Dir::new();
    dir.write("bad.pcap", "not a capture at all");
    let errs = dir.errors(&BASE.replace("x.pcap", "bad.pcap"));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("s.toml:14:8: pcap `bad.pcap` cannot be read: "),
        "{}",
        errs[0]
    );
    assert!(errs[0].contains("not a pcap or pcapng file"), "{}", errs[0]);
}

fn entry(name: &str, attach: &str) -> String {
    format!("\n[[chain]]\nname = \"{name}\"\nprogram = \"counter\"\nattach = {attach}\n")
}

#[test]
fn before_naming_a_missing_entry() {
    let src = format!(
        "{BASE}{}",
        entry("c", r#"{ mode = "tcx", order = { before = "ghost" } }"#)
    );
    assert_eq!(
        one_error(&src),
        "s.toml:19:34: `c` orders itself relative to `ghost`, which is not a chain entry; expected one of `agent`, `count`, `c`"
    );
}

#[test]
fn after_naming_itself() {
    let src = format!(
        "{BASE}{}",
        entry("c", r#"{ mode = "tcx", order = { after = "c" } }"#)
    );
    assert_eq!(
        one_error(&src),
        "s.toml:19:34: `c` is ordered relative to itself, expected another TCX entry"
    );
}

#[test]
fn before_naming_a_netlink_entry() {
    let src = format!(
        "{BASE}{}",
        entry("c", r#"{ mode = "tcx", order = { before = "count" } }"#)
    );
    assert_eq!(
        one_error(&src),
        "s.toml:19:34: `c` is ordered relative to `count`, which is attached with netlink; expected a TCX entry"
    );
}

#[test]
fn before_naming_an_entry_on_the_other_hook() {
    let src = format!(
        "{BASE}\n[[chain]]\nname = \"in\"\nprogram = \"pass\"\ndirection = \"ingress\"\nattach = {{ mode = \"tcx\" }}\n{}",
        entry("c", r#"{ mode = "tcx", order = { before = "in" } }"#)
    );
    let err = one_error(&src);
    assert_eq!(
        err,
        "s.toml:25:34: `c` is attached on egress but `in` is not, expected `in` to cover egress"
    );
}

#[test]
fn order_cycles_are_errors() {
    let src = format!(
        "{BASE}{}{}{}",
        entry("a", r#"{ mode = "tcx", order = { before = "b" } }"#),
        entry("b", r#"{ mode = "tcx", order = { after = "c" } }"#),
        entry("c", r#"{ mode = "tcx", order = { before = "a" } }"#),
    );
    assert_eq!(
        one_error(&src),
        "s.toml:19:34: TCX order cycle: a -> b -> c -> a, expected `before`/`after` references without a loop"
    );
}

#[rstest]
#[case::priority_zero(
    r#"{ mode = "netlink", priority = 0 }"#,
    "s.toml:19:41: `priority` = 0 is out of range, expected 1..=65535"
)]
#[case::priority_too_big(
    r#"{ mode = "netlink", priority = 70000 }"#,
    "s.toml:19:41: `priority` = 70000 is out of range, expected 1..=65535"
)]
#[case::priority_missing(
    r#"{ mode = "netlink", handle = 3 }"#,
    "s.toml:19:10: netlink attach needs `priority`, expected 1..=65535 (0 would let the kernel pick one)"
)]
#[case::handle_zero(
    r#"{ mode = "netlink", priority = 3, handle = 0 }"#,
    "s.toml:19:53: `handle` = 0 is out of range, expected 1..=4294967295"
)]
#[case::priority_on_tcx(
    r#"{ mode = "tcx", priority = 3 }"#,
    "s.toml:19:37: `priority` is only valid with mode = \"netlink\", expected `order` for TCX"
)]
#[case::order_on_netlink(
    r#"{ mode = "netlink", priority = 3, order = "head" }"#,
    "s.toml:19:52: `order` is only valid with mode = \"tcx\", expected `priority` and `handle` for netlink"
)]
fn impossible_attachments(#[case] attach: &str, #[case] want: &str) {
    assert_eq!(one_error(&format!("{BASE}{}", entry("c", attach))), want);
}

#[test]
fn attach_is_required_except_for_the_agent() {
    let src = format!("{BASE}\n[[chain]]\nname = \"c\"\nprogram = \"pass\"\n");
    let err = one_error(&src);
    assert!(
        err.starts_with("s.toml:17:8: chain entry `c` has no `attach`, expected e.g. attach = "),
        "{err}"
    );
    let agent_only = "name = \"a\"\n[[chain]]\nname = \"agent\"\nprogram = \"agent\"\n";
    assert_eq!(Dir::new().errors(agent_only), Vec::<String>::new());
}

#[test]
fn same_netlink_priority_handle_and_hook_is_impossible() {
    let src = format!(
        "{BASE}{}",
        entry("c", r#"{ mode = "netlink", priority = 2 }"#)
    );
    assert_eq!(
        one_error(&src),
        "s.toml:19:10: `c` and `count` are both netlink priority 2 handle 0x1 on ingress: the kernel refuses the second (EEXIST); expected a different priority or handle"
    );
}

#[test]
fn same_netlink_priority_with_another_handle_or_hook_is_fine() {
    let other_handle = format!(
        "{BASE}{}",
        entry("c", r#"{ mode = "netlink", priority = 2, handle = 2 }"#)
    );
    assert_eq!(Dir::new().errors(&other_handle), Vec::<String>::new());
    let src = BASE.replace(
        "program = \"counter\"\n",
        "program = \"counter\"\ndirection = \"ingress\"\n",
    );
    let other_hook = format!(
        "{src}\n[[chain]]\nname = \"c\"\nprogram = \"drop\"\ndirection = \"egress\"\nattach = {{ mode = \"netlink\", priority = 2 }}\n"
    );
    assert_eq!(Dir::new().errors(&other_hook), Vec::<String>::new());
}

#[test]
fn tcx_entries_without_requires_tcx_are_allowed() {
    // The runner skips or reports them on kernels without TCX; the file is fine.
    let s = scenario::load_scenario(&Dir::new().write("s.toml", BASE)).unwrap();
    assert!(s.requires.is_empty());
}

#[rstest]
#[case::unknown_address(
    r#"{ "10.9.9.9" = "local" }"#,
    "s.toml:15:13: rewrite of unknown address `10.9.9.9`: it does not occur in `x.pcap`"
)]
#[case::not_an_address(
    r#"{ "client" = "local" }"#,
    "s.toml:15:13: rewrite key `client` is not an address, expected an IP (`10.0.0.1`, `fd00::1`) or a MAC (`02:00:00:00:00:01`)"
)]
#[case::bad_target(
    r#"{ "10.0.0.1" = "remote" }"#,
    "s.toml:15:26: rewrite target `remote` is invalid, expected `local`, `peer`, or an address of the same kind as the key"
)]
#[case::family_mismatch(
    r#"{ "10.0.0.1" = "fd00::9" }"#,
    "s.toml:15:26: rewrite target `fd00::9` is invalid, expected `local`, `peer`, or an address of the same kind as the key"
)]
#[case::unknown_mac(
    r#"{ "02:00:00:00:00:99" = "peer" }"#,
    "s.toml:15:13: rewrite of unknown address `02:00:00:00:00:99`: it does not occur in `x.pcap`"
)]
fn bad_rewrites(#[case] rewrite: &str, #[case] want: &str) {
    let src = BASE.replace(
        "pcap = \"x.pcap\"\n",
        &format!("pcap = \"x.pcap\"\nrewrite = {rewrite}\n"),
    );
    assert_eq!(one_error(&src), want);
}

#[rstest]
#[case::program_unknown_cilium(
    r#"{ cilium = "cil_from_nowhere" }"#,
    "s.toml:18:22: unknown Cilium program `cil_from_nowhere`, expected one of `cil_from_netdev`"
)]
#[case::table_without_tag(
    r#"{ behaviour = "drop" }"#,
    "s.toml:18:11: a program table needs a `cilium` key"
)]
#[case::dnat_without_params(
    r#"{ cilium = "cil_from_netdev", behaviour = "dnat" }"#,
    "s.toml:18:11: behaviour = \"dnat\" needs `dnat_from` and `dnat_to`"
)]
#[case::dnat_bad_address(r#"{ cilium = "cil_from_netdev", behaviour = "dnat", dnat_from = "10.0.0.2", dnat_to = "10.0.0.3:80" }"#, "s.toml:18:73: invalid address `10.0.0.2`, expected IP:port")]
#[case::redirect_without_target(
    r#"{ cilium = "cil_to_netdev", behaviour = "redirect" }"#,
    "s.toml:18:11: behaviour = \"redirect\" needs `redirect_to`"
)]
#[case::stray_param(
    r#"{ cilium = "cil_to_netdev", behaviour = "drop", redirect_to = "eth9" }"#,
    "s.toml:18:73: `redirect_to` does not apply to this behaviour, expected it only with behaviour = \"redirect\""
)]
fn bad_programs(#[case] program: &str, #[case] want: &str) {
    let src = format!(
        "{BASE}\n[[chain]]\nname = \"c\"\nprogram = {program}\nattach = {{ mode = \"tcx\" }}\n"
    );
    let err = one_error(&src);
    assert!(err.starts_with(want), "got  {err}\nwant {want}…");
}

#[rstest]
#[case::kernel(
    r#"kernels = ["6 12"]"#,
    "s.toml:16:12: invalid kernel `6 12`, expected `host`, a kernel name like `6.12`, or `>=6.6`"
)]
#[case::kernel_version(
    r#"kernels = [">=six"]"#,
    "s.toml:16:12: invalid kernel version `>=six`, expected `>=MAJOR.MINOR` like `>=6.6`"
)]
#[case::capability(
    r#"requires = ["xdp"]"#,
    "s.toml:16:13: unknown capability `xdp`, expected one of `tcx`, `bpf_loop`, `ringbuf`, `btf`, `probe_write_user`"
)]
#[case::name(r#"name = "has space""#, "")]
fn bad_top_level_values(#[case] line: &str, #[case] want: &str) {
    if want.is_empty() {
        let err = one_error(&BASE.replace("name = \"base\"", line));
        assert_eq!(
            err,
            "s.toml:1:8: invalid scenario name `has space`, expected letters, digits, `-`, `_` or `.` (it names the snapshot file)"
        );
        return;
    }
    // The key goes on line 16, after BASE's 15 lines, as a top-level key: put it first instead.
    let src = format!("{}{line}\n", "\n".repeat(15)) + BASE;
    assert_eq!(one_error(&src), want);
}

#[rstest]
#[case::mac(
    "[topology.device]\nmac = \"02:00:00:00:00\"\n",
    "s.toml:16:7: invalid MAC `02:00:00:00:00`, expected six hex bytes like `02:00:00:00:00:01`"
)]
#[case::ipv4(
    "[topology.peer]\nipv4 = \"10.0.0.300/24\"\n",
    "s.toml:16:8: invalid IPv4 address `10.0.0.300/24`, expected an IPv4 address like `10.0.0.1/24`"
)]
#[case::same_name(
    "[topology.peer]\nname = \"dut\"\n",
    "s.toml:16:8: the device and its peer have the same `name`, expected different values"
)]
#[case::counters(
    "[expect]\ncounters = { nope = 1 }\n",
    "s.toml:16:14: `counters` names no chain entry `nope`, expected one of `agent`, `count`"
)]
#[case::tuple(
    "[[expect.ct]]\ntuple = \"TCP 10.0.0.1 -> 10.0.0.2\"\n",
    "s.toml:16:9: invalid CT tuple `TCP 10.0.0.1 -> 10.0.0.2`, expected `PROTO SRC -> DST`"
)]
#[case::error_with_spans(
    "[expect]\nspans = 1\nagent_error_contains = \"TCX\"\n",
    "s.toml:17:24: `agent_error_contains` (the agent must not start) cannot be combined with `spans` or `ct`"
)]
#[case::negative_spans("[expect]\nspans = -1\n", "s.toml:16:9: `spans` = -1 is out of range")]
#[case::backend_contradiction(
    "[agent]\nbackend = \"netlink\"\n",
    "s.toml:16:11: `backend` = Netlink contradicts the agent entry's attach mode, expected the same mode or `auto`"
)]
#[case::bad_scale(
    "[[replay]]\npcap = \"x.pcap\"\npacing = { scale = -2.0 }\n",
    "s.toml:16:8: pacing scale -2 is invalid, expected a finite number >= 0"
)]
fn bad_semantic_values(#[case] extra: &str, #[case] want: &str) {
    let err = one_error(&format!("{BASE}{extra}"));
    assert!(err.starts_with(want), "got  {err}\nwant {want}…");
}

#[test]
fn agent_settings_without_an_agent_entry() {
    let src = "name = \"n\"\n\n[agent]\nbackend = \"tcx\"\n";
    assert_eq!(
        one_error(src),
        "s.toml:3:1: `[agent]` settings are given but no chain entry has program = \"agent\""
    );
    let src = "name = \"n\"\n[expect]\nagent_error_contains = \"x\"\n";
    assert_eq!(
        one_error(src),
        "s.toml:3:24: `agent_error_contains` needs a chain entry with program = \"agent\""
    );
}

#[test]
fn a_file_reports_all_its_semantic_errors() {
    let src = format!(
        "{BASE}{}{}\n[expect]\ncounters = {{ ghost = 1 }}\n",
        entry("count", r#"{ mode = "tcx" }"#),
        entry("c", r#"{ mode = "netlink", priority = 0 }"#)
    );
    let errs = Dir::new().errors(&src);
    assert_eq!(errs.len(), 3, "{errs:#?}");
    assert!(errs[0].contains("duplicate chain entry name `count`"));
    assert!(errs[1].contains("`priority` = 0 is out of range"));
    assert!(errs[2].contains("`counters` names no chain entry `ghost`"));
}

#[test]
fn load_dir_returns_every_error_of_every_file_and_duplicate_names() {
    let dir = Dir::new();
    dir.write("a.toml", BASE);
    dir.write("b.toml", BASE);
    dir.write(
        "c.toml",
        &BASE
            .replace("name = \"base\"", "name = \"c\"")
            .replace("priority = 2", "priority = 0"),
    );
    dir.write("d.toml", "name = \"d\"\nbogus = 1\n");
    dir.write("notes.txt", "not a scenario");
    let errs: Vec<String> = scenario::load_dir(dir.tmp.path())
        .unwrap_err()
        .iter()
        .map(|e| dir.show(e))
        .collect();
    assert_eq!(
        errs,
        [
            "c.toml:11:41: `priority` = 0 is out of range, expected 1..=65535".to_string(),
            "d.toml:2:1: unknown key `bogus`, expected one of `name`, `description`, `tags`, `kernels`, `lockdown`, `requires`, `topology`, `chain`, `agent`, `replay`, `services`, `expect`".to_string(),
            "b.toml:1:8: duplicate scenario name `base` (also used by a.toml), expected a unique name".to_string(),
        ]
    );
}

#[test]
fn unreadable_file_is_a_file_level_error() {
    let err = scenario::load_scenario(Path::new("/nonexistent/s.toml")).unwrap_err();
    assert_eq!((err.line, err.col), (0, 0));
    assert!(
        err.to_string()
            .starts_with("/nonexistent/s.toml: failed to read scenario file: "),
        "{err}"
    );
}

/// Names the kernel's dev_valid_name() refuses are refused before running.
#[rstest]
#[case::colon("dut:0")]
#[case::too_long("a-very-long-name0")]
#[case::dot(".")]
#[case::tab("du\tt")]
fn interface_names_the_kernel_refuses_are_errors(#[case] name: &str) {
    let src = format!("{BASE}\n[topology.device]\nname = {}\n", toml_string(name));
    let err = one_error(&src);
    assert!(err.contains("invalid interface name") && err.contains("`:`"), "{err}");
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\t', "\\t"))
}

#[test]
fn tls_services_are_the_backend_or_the_worker() {
    let d = Dir::new();
    let src = "name = \"t\"\n\n[services]\nchain = \"traceme\"\ntls = [\"backend\", \"frontend\", \"db\"]\n";
    let errs = d.errors(src);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs[0].starts_with("s.toml:5:19: ") && errs[0].contains("the frontend is called by the chain's client"), "{errs:?}");
    assert!(errs[1].starts_with("s.toml:5:31: unknown service `db`, expected \"backend\" or \"worker\" to serve TLS"), "{errs:?}");
    let ok = d.write("ok.toml", "name = \"t\"\n\n[services]\nchain = \"traceme\"\ntls = [\"worker\", \"backend\", \"worker\"]\n");
    let s = scenario::load_scenario_all(&ok).expect("valid");
    assert_eq!(s.services.expect("[services]").tls, ["backend", "worker"]);
}

#[test]
fn services_that_call_after_responding_are_the_frontend_or_the_backend() {
    let d = Dir::new();
    let src = "name = \"t\"\n\n[services]\nchain = \"traceme\"\nafter_response = [\"worker\", \"db\"]\n";
    let errs = d.errors(src);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs[0].starts_with("s.toml:5:19: the worker calls nothing"), "{errs:?}");
    assert!(errs[1].starts_with("s.toml:5:29: unknown service `db`, expected \"frontend\" or \"backend\""), "{errs:?}");
    let ok = d.write("ok.toml", "name = \"t\"\n\n[services]\nchain = \"traceme\"\nafter_response = [\"frontend\"]\n");
    let s = scenario::load_scenario_all(&ok).expect("valid");
    assert_eq!(s.services.expect("[services]").after_response, ["frontend"]);
}
