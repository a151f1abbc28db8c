//! The machine a benchmark ran on, and when.

use serde::Serialize;

/// What BENCHMARKS.md states about the machine.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// `current_clocksource` (its cost is in every BPF_PROG_TEST_RUN timing).
    pub clocksource: String,
    /// UTC, `YYYY-MM-DD HH:MM`.
    pub date: String,
    /// /proc/loadavg's 1/5/15-minute load at the start: other work on a
    /// shared machine is in every figure.
    pub load: String,
}

impl Machine {
    /// Read from /proc and /sys; unknown fields say "unknown".
    pub fn describe() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_owned()))
            .unwrap_or_else(|| "unknown".into());
        let mem_kib: f64 = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:").and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok()))
            .unwrap_or(0.0);
        let clocksource = read("/sys/devices/system/clocksource/clocksource0/current_clocksource").trim().to_owned();
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            memory_gib: mem_kib / 1024.0 / 1024.0,
            kernel: nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_else(|_| "unknown".into()),
            clocksource: if clocksource.is_empty() { "unknown".into() } else { clocksource },
            date: utc_now(),
            load: read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        }
    }
}

/// The current UTC time as `YYYY-MM-DD HH:MM`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    utc(secs)
}

fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let (h, m) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    let (y, mo, d) = tclab_datapath::span::civil_from_days(days);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02} UTC")
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc(1_767_225_600 + 3_660), "2026-01-01 01:01 UTC");
    }
}
