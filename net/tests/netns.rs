//! Namespaces: creation, running code inside, and death on drop.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{LeftBehind, wait_until};
use tclab_net::{NetNs, create_veth_pair, link_by_name, list_links, require};

/// Inodes of every network namespace some thread of some process is in, and
/// of every nsfs fd some process holds.
fn referenced_netns_inodes() -> BTreeSet<u64> {
    let mut found = BTreeSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return found };
    for p in procs.filter_map(|e| e.ok()) {
        let pid = p.path();
        let tasks = std::fs::read_dir(pid.join("task")).into_iter().flatten().filter_map(|e| e.ok());
        let ns_links = tasks.map(|t| t.path().join("ns/net"));
        let fds = std::fs::read_dir(pid.join("fd")).into_iter().flatten().filter_map(|e| e.ok()).map(|e| e.path());
        for link in ns_links.chain(fds) {
            if let Ok(target) = std::fs::read_link(&link) {
                let t = target.to_string_lossy();
                if let Some(ino) = t.strip_prefix("net:[").and_then(|r| r.strip_suffix(']')) {
                    found.extend(ino.parse::<u64>().ok());
                }
            }
        }
    }
    found
}

#[test]
fn new_namespace_has_only_lo_and_is_distinct() {
    if !require::root("new_namespace_has_only_lo_and_is_distinct") {
        return;
    }
    let guard = LeftBehind::start(&[]);
    let host = NetNs::current().unwrap();
    let ns = NetNs::new("t-only-lo").unwrap();
    assert_eq!(ns.name(), "t-only-lo");
    assert_ne!(ns.inode().unwrap(), host.inode().unwrap());
    let links = list_links(&ns).unwrap();
    let names: Vec<_> = links.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["lo"]);
    assert!(links[0].up, "lo is brought up by NetNs::new");
    // Code inside really runs in the namespace: its thread's ns is ours.
    let inside = ns.run(|| std::fs::read_link("/proc/thread-self/ns/net").unwrap());
    assert_eq!(inside.to_string_lossy(), format!("net:[{}]", ns.inode().unwrap()));
    // ... and the caller's thread did not move.
    let here = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    assert_eq!(here.to_string_lossy(), format!("net:[{}]", host.inode().unwrap()));
    drop(ns);
    guard.check();
}

#[test]
fn run_propagates_panics_and_results() {
    if !require::root("run_propagates_panics_and_results") {
        return;
    }
    let ns = NetNs::new("t-panic").unwrap();
    assert_eq!(ns.run(|| 6 * 7), 42);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ns.run(|| panic!("boom inside"))));
    let payload = caught.expect_err("panic must propagate");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom inside"));
}

#[test]
fn dropped_namespace_dies_with_its_veths() {
    if !require::root("dropped_namespace_dies_with_its_veths") {
        return;
    }
    let guard = LeftBehind::start(&["t-die-a", "t-die-b"]);
    let a = NetNs::new("t-die-a").unwrap();
    let b = NetNs::new("t-die-b").unwrap();
    create_veth_pair(&a, "t-die-a", &b, "t-die-b", None).unwrap();
    assert!(link_by_name(&b, "t-die-b").is_ok());
    let inode = a.inode().unwrap();
    assert!(referenced_netns_inodes().contains(&inode), "the scan must see a live namespace");
    drop(a);
    assert!(!referenced_netns_inodes().contains(&inode), "namespace {inode} still referenced after drop");
    // Namespace teardown is asynchronous (cleanup_net workqueue): poll.
    let gone = wait_until(Duration::from_secs(10), || {
        !list_links(&b).unwrap().iter().any(|l| l.name == "t-die-b")
    });
    assert!(gone, "peer t-die-b still exists in ns b after ns a was dropped");
    guard.check();
}
