//! Shared test helpers: the "nothing left behind" check, raw BPF classifiers.

#![allow(dead_code, reason = "each test binary uses a subset")]

pub mod bpf;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tclab_net::NetNs;

/// Entries of /run/netns (bind-mounted namespaces), empty when it does not exist.
pub fn run_netns_entries() -> BTreeSet<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// Snapshot at the start of a test; `check` at the end asserts that no new
/// /run/netns entry appeared and that none of `names` exists in the test
/// process's original namespace.
pub struct LeftBehind {
    netns_before: BTreeSet<String>,
    names: Vec<String>,
}

impl LeftBehind {
    pub fn start(names: &[&str]) -> Self {
        let host = NetNs::current().expect("open host netns");
        let host_links = tclab_net::list_links(&host).expect("list host links");
        for name in names {
            assert!(
                !host_links.iter().any(|l| l.name == *name),
                "device {name} already exists in the host namespace before the test"
            );
        }
        LeftBehind { netns_before: run_netns_entries(), names: names.iter().map(|s| s.to_string()).collect() }
    }

    pub fn check(self) {
        let after = run_netns_entries();
        let new: Vec<_> = after.difference(&self.netns_before).collect();
        assert!(new.is_empty(), "new /run/netns entries left behind: {new:?}");
        let host = NetNs::current().expect("open host netns");
        let host_links = tclab_net::list_links(&host).expect("list host links");
        for name in &self.names {
            assert!(!host_links.iter().any(|l| &l.name == name), "device {name} left in the host namespace");
        }
    }
}

/// Poll `cond` every 10 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
