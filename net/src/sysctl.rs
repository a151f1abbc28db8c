//! Per-namespace sysctls, written through /proc/sys from a thread inside the
//! namespace: the kernel resolves /proc/sys/net against the *calling thread's*
//! network namespace (checked by `veth_ipv6_disabled_in_its_own_namespace`,
//! which writes a file that exists only inside the namespace).

use std::path::Path;

use crate::{NetError, NetNs};

/// Set sysctl `key` to `value` inside `ns`. `key` is either dotted
/// (`net.ipv4.ip_forward`) or a path below /proc/sys (`net/ipv6/conf/eth0.5/disable_ipv6`,
/// needed when a component itself contains a dot).
///
/// # Errors
/// [`NetError::Invalid`] for keys that would leave /proc/sys,
/// [`NetError::Sysctl`] when the write fails.
pub fn set_sysctl(ns: &NetNs, key: &str, value: &str) -> Result<(), NetError> {
    let rel = if key.contains('/') { key.to_owned() } else { key.replace('.', "/") };
    if rel.split('/').any(|c| c.is_empty() || c == "..") {
        return Err(NetError::Invalid {
            op: "set sysctl",
            object: format!("key {key:?}"),
            reason: "empty or '..' path component".to_owned(),
        });
    }
    let path = format!("/proc/sys/{rel}");
    ns.try_run(|| write_here(ns, &path, value))?
}

fn write_here(ns: &NetNs, path: &str, value: &str) -> Result<(), NetError> {
    std::fs::write(path, value).map_err(|source| NetError::Sysctl {
        path: path.to_owned(),
        value: value.to_owned(),
        ns: ns.name().to_owned(),
        source,
    })
}

/// Make `ifname` in `ns` send no IPv6 traffic of its own: no link-local
/// address even if IPv6 is re-enabled (`addr_gen_mode=1`), no router
/// solicitations, and IPv6 disabled. A kernel without IPv6 needs nothing.
pub(crate) fn quiet_ipv6(ns: &NetNs, ifname: &str) -> Result<(), NetError> {
    ns.try_run(|| {
        let dir = format!("/proc/sys/net/ipv6/conf/{ifname}");
        if !Path::new(&dir).exists() {
            tracing::debug!(ns = ns.name(), ifname, "no IPv6 sysctls: kernel without IPv6");
            return Ok(());
        }
        for (knob, value) in [("addr_gen_mode", "1"), ("accept_ra", "0"), ("router_solicitations", "0"), ("disable_ipv6", "1")] {
            write_here(ns, &format!("{dir}/{knob}"), value)?;
        }
        Ok(())
    })?
}
