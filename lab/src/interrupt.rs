//! SIGINT/SIGTERM: stop between scenarios, leave nothing behind.
//!
//! Nothing the lab creates needs user-space cleanup to disappear: namespaces
//! are fd-held (the kernel destroys them, their veths, qdiscs and filters with
//! the last fd), programs and TCX links are fd-owned, QEMU children die with us
//! (PR_SET_PDEATHSIG). So the first signal only asks the run to stop after the
//! current scenario and print what it has; a second one exits at once, which
//! is just as clean. `lab/tests/leftovers.rs` checks both, with SIGINT and
//! SIGTERM at several points of a run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use signal_hook::consts::{SIGINT, SIGTERM};

static STOP: AtomicBool = AtomicBool::new(false);
/// The first signal received (0: none).
static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Has a stop been requested?
pub fn requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// The conventional exit code of a process stopped by the signal that
/// requested the stop (130 for SIGINT, 143 for SIGTERM), if one did: an
/// interrupted run did not run everything, so it must not exit 0.
pub fn exit_code() -> Option<u8> {
    match SIGNAL.load(Ordering::Relaxed) {
        0 => None,
        sig => u8::try_from(128 + sig).ok(),
    }
}

/// Keeps the handlers installed while alive.
pub struct Handlers {
    ids: Vec<signal_hook::SigId>,
}

impl Drop for Handlers {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

/// Install the handlers: first signal sets the stop flag, the second one
/// terminates the process with the conventional 128+signal code.
pub fn install() -> std::io::Result<Handlers> {
    let flag = Arc::new(AtomicBool::new(false));
    let mut ids = Vec::new();
    for sig in [SIGINT, SIGTERM] {
        // Registered first, so on the second signal it exits before the flag
        // handler below runs again.
        ids.push(signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, Arc::clone(&flag))?);
        ids.push(signal_hook::flag::register(sig, Arc::clone(&flag))?);
        // SAFETY: the handler only stores to atomics, which is async-signal-safe.
        ids.push(unsafe {
            signal_hook::low_level::register(sig, move || {
                let _ = SIGNAL.compare_exchange(0, sig, Ordering::Relaxed, Ordering::Relaxed);
                STOP.store(true, Ordering::Relaxed);
            })?
        });
    }
    Ok(Handlers { ids })
}
