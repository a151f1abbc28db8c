//! Netlink TC queries: clsact detection, filter dumps in run order, deletion.

mod common;

use std::os::fd::AsFd;

use common::LeftBehind;
use common::bpf::{TC_ACT_UNSPEC, load_classifier, prog_id};
use tclab_net::tc::{self, Direction, ETH_P_ALL};
use tclab_net::{NetError, NetNs, create_veth_pair, require};

fn summary(filters: &[tc::NetlinkFilter]) -> Vec<(u16, u32, Option<&str>)> {
    filters.iter().map(|f| (f.priority, f.handle, f.bpf_name.as_deref())).collect()
}

#[test]
fn filters_are_listed_in_run_order_and_deleted() {
    if !require::root("filters_are_listed_in_run_order_and_deleted") {
        return;
    }
    let guard = LeftBehind::start(&["t-tc-a", "t-tc-b"]);
    let a = NetNs::new("t-tc-a").unwrap();
    let b = NetNs::new("t-tc-b").unwrap();
    let pair = create_veth_pair(&a, "t-tc-a", &b, "t-tc-b", None).unwrap();
    let ifindex = pair.a.ifindex;
    a.run(|| {
        assert!(!tc::has_clsact(ifindex).unwrap());
        assert!(tc::list_filters(ifindex, Direction::Ingress).unwrap().is_empty());
        tc::add_clsact(ifindex).unwrap();
        assert!(tc::has_clsact(ifindex).unwrap());
        let clsact = tc::list_qdiscs(ifindex).unwrap().into_iter().find(|q| q.kind == "clsact").unwrap();
        assert_eq!((clsact.handle, clsact.parent), (0xFFFF_0000, 0xFFFF_FFF1));

        let late = load_classifier("t_late", TC_ACT_UNSPEC);
        let early = load_classifier("t_early", TC_ACT_UNSPEC);
        // Attach the later-running one first: the dump must follow priority.
        tc::attach_bpf(ifindex, Direction::Ingress, 20, 1, late.as_fd(), "t_late").unwrap();
        tc::attach_bpf(ifindex, Direction::Ingress, 10, 7, early.as_fd(), "t_early").unwrap();
        let filters = tc::list_filters(ifindex, Direction::Ingress).unwrap();
        assert_eq!(summary(&filters), [(10, 7, Some("t_early")), (20, 1, Some("t_late"))]);
        let first = &filters[0];
        assert_eq!(first.direction, Direction::Ingress);
        assert_eq!((first.kind.as_str(), first.protocol, first.direct_action), ("bpf", ETH_P_ALL, true));
        assert_eq!(first.bpf_id, Some(prog_id(&early)));
        assert_eq!(filters[1].bpf_id, Some(prog_id(&late)));
        assert!(tc::list_filters(ifindex, Direction::Egress).unwrap().is_empty(), "egress must be separate");

        let dup = tc::attach_bpf(ifindex, Direction::Ingress, 10, 7, early.as_fd(), "t_early").unwrap_err();
        assert!(matches!(&dup, NetError::Netlink { source, .. } if source.raw_os_error() == Some(libc::EEXIST)), "{dup}");

        tc::delete_filter(ifindex, Direction::Ingress, 10, 7).unwrap();
        let left = tc::list_filters(ifindex, Direction::Ingress).unwrap();
        assert_eq!(summary(&left), [(20, 1, Some("t_late"))]);
        let missing = tc::delete_filter(ifindex, Direction::Ingress, 10, 7).unwrap_err();
        assert!(missing.to_string().contains("ingress filter pref 10 handle 0x7"), "{missing}");

        tc::delete_clsact(ifindex).unwrap();
        assert!(!tc::has_clsact(ifindex).unwrap());
        assert!(tc::list_filters(ifindex, Direction::Ingress).unwrap().is_empty());
    });
    drop((a, b));
    guard.check();
}

#[test]
fn same_priority_filters_come_back_in_the_order_they_run() {
    if !require::root("same_priority_filters_come_back_in_the_order_they_run") {
        return;
    }
    let guard = LeftBehind::start(&["t-tcp-a", "t-tcp-b"]);
    let a = NetNs::new("t-tcp-a").unwrap();
    let b = NetNs::new("t-tcp-b").unwrap();
    let pair = create_veth_pair(&a, "t-tcp-a", &b, "t-tcp-b", None).unwrap();
    let ifindex = pair.a.ifindex;
    a.run(|| {
        tc::add_clsact(ifindex).unwrap();
        let p1 = load_classifier("t_h1", TC_ACT_UNSPEC);
        let p2 = load_classifier("t_h2", TC_ACT_UNSPEC);
        tc::attach_bpf(ifindex, Direction::Egress, 5, 1, p1.as_fd(), "t_h1").unwrap();
        tc::attach_bpf(ifindex, Direction::Egress, 5, 2, p2.as_fd(), "t_h2").unwrap();
        let filters = tc::list_filters(ifindex, Direction::Egress).unwrap();
        // cls_bpf prepends: the newest filter of a priority is dumped (and
        // runs) first.
        assert_eq!(summary(&filters), [(5, 2, Some("t_h2")), (5, 1, Some("t_h1"))]);
        assert!(filters.iter().all(|f| f.direction == Direction::Egress && f.priority == 5));
    });
    guard.check();
}
