//! A process's resident set size. Standard library only: the tracer-user examples include
//! this file by path (they cannot depend on this crate), so there is one copy.

/// VmRSS of process `pid` in KiB, from /proc/PID/status; 0 when it cannot be read (the
/// process has gone). A process measures itself with `rss_kib(std::process::id())`.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}
