//! What a test needs from the machine, and what happens when it is missing.
//!
//! On a laptop a test whose requirement is missing says so loudly on stderr and
//! returns early (counted as skipped by the summary line it prints). Under
//! `TCLAB_REQUIRE_ALL=1` (set by `.ci/run`) a missing requirement is a failure,
//! so nothing can silently skip in CI.

use std::path::Path;

/// Environment switch under which a skip is a failure.
pub const REQUIRE_ALL_ENV: &str = "TCLAB_REQUIRE_ALL";

fn require_all() -> bool {
    std::env::var(REQUIRE_ALL_ENV).is_ok_and(|v| v == "1")
}

/// Report a missing requirement. Returns `false` (the caller returns early)
/// unless `TCLAB_REQUIRE_ALL=1`, in which case it panics.
#[track_caller]
pub fn skip(test: &str, missing: &str, fix: &str) -> bool {
    let loc = std::panic::Location::caller();
    if require_all() {
        panic!("{test} ({loc}): requires {missing}, and {REQUIRE_ALL_ENV}=1 forbids skipping; fix: {fix}");
    }
    eprintln!("SKIPPED {test} ({loc}): requires {missing}; fix: {fix}");
    false
}

/// True when running as root (CAP_NET_ADMIN and CAP_BPF in practice).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `true` if the test may go on: we are root. Otherwise reports the skip.
#[track_caller]
pub fn root(test: &str) -> bool {
    is_root() || skip(test, "root (CAP_BPF, CAP_NET_ADMIN)", "run the tests as root: sudo -E cargo test")
}

/// `true` if `program` is on PATH. Otherwise reports the skip.
#[track_caller]
pub fn program(test: &str, program: &str, install: &str) -> bool {
    let found = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| dir.join(program).is_file())
    });
    found || skip(test, &format!("`{program}` on PATH"), install)
}

/// `true` if `path` exists. Otherwise reports the skip.
#[track_caller]
pub fn path(test: &str, path: &Path, fix: &str) -> bool {
    path.exists() || skip(test, &format!("{}", path.display()), fix)
}
