//! Cross-check of the filter dump against an independent writer: programs
//! compiled from C with clang and attached by aya's netlink code.

mod common;

use std::process::Command;

use aya::programs::tc::{NlOptions, TcAttachOptions, TcHandle};
use aya::programs::{SchedClassifier, TcAttachType};
use tclab_net::tc::{self, Direction, ETH_P_ALL};
use tclab_net::{NetNs, create_veth_pair, require};

const SOURCE: &str = r#"
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
__attribute__((section("classifier"), used)) int xcheck_first(struct __sk_buff *skb) { return TC_ACT_UNSPEC; }
__attribute__((section("classifier"), used)) int xcheck_second(struct __sk_buff *skb) { return TC_ACT_UNSPEC; }
char _license[] __attribute__((section("license"), used)) = "GPL";
"#;

fn compile(dir: &std::path::Path) -> Vec<u8> {
    let (src, obj) = (dir.join("xcheck.c"), dir.join("xcheck.o"));
    std::fs::write(&src, SOURCE).unwrap();
    let out = Command::new("clang-14")
        .args(["-O2", "-g", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu", "-c"])
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .output()
        .unwrap();
    assert!(out.status.success(), "clang-14 failed: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::read(&obj).unwrap()
}

#[test]
fn filters_attached_by_aya_are_listed_with_their_names_and_ids() {
    let test = "filters_attached_by_aya_are_listed_with_their_names_and_ids";
    if !require::root(test) || !require::program(test, "clang-14", "apt-get install clang-14 libbpf-dev") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let object = compile(dir.path());
    let guard = common::LeftBehind::start(&["t-aya-a", "t-aya-b"]);
    let a = NetNs::new("t-aya-a").unwrap();
    let b = NetNs::new("t-aya-b").unwrap();
    let pair = create_veth_pair(&a, "t-aya-a", &b, "t-aya-b", None).unwrap();
    let ifindex = pair.a.ifindex;
    // aya resolves the interface and detaches on drop in the calling thread's
    // namespace: everything aya does, including the drop, happens inside.
    a.run(|| {
        let mut ebpf = aya::Ebpf::load(&object).unwrap();
        aya::programs::tc::qdisc_add_clsact("t-aya-a").unwrap();
        let mut ids = Vec::new();
        for (name, priority, handle) in [("xcheck_second", 200, 3), ("xcheck_first", 100, 9)] {
            let prog: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
            prog.load().unwrap();
            let options = NlOptions { priority, handle: TcHandle::new(0, handle), ..Default::default() };
            prog.attach_with_options("t-aya-a", TcAttachType::Egress, TcAttachOptions::Netlink(options)).unwrap();
            ids.push(prog.info().unwrap().id());
        }
        assert!(tc::has_clsact(ifindex).unwrap());
        let filters = tc::list_filters(ifindex, Direction::Egress).unwrap();
        let got: Vec<_> =
            filters.iter().map(|f| (f.priority, f.handle, f.bpf_name.as_deref(), f.bpf_id)).collect();
        assert_eq!(got, [(100, 9, Some("xcheck_first"), Some(ids[1])), (200, 3, Some("xcheck_second"), Some(ids[0]))]);
        assert!(filters.iter().all(|f| f.kind == "bpf" && f.direct_action && f.protocol == ETH_P_ALL));
        assert!(tc::list_filters(ifindex, Direction::Ingress).unwrap().is_empty());
        drop(ebpf);
        assert!(tc::list_filters(ifindex, Direction::Egress).unwrap().is_empty(), "aya detaches on drop");
    });
    drop((a, b));
    guard.check();
}
