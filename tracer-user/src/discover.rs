//! Finding the processes to trace in /proc: gateways by pid or by name, and the processes
//! that hold listening TCP sockets (their deaths explain refusals and resets).
use std::{collections::BTreeSet, fs};

/// Gateways upstrace looks for when no --pid or --comm is given.
pub const DEFAULT_COMMS: &[&str] = &["nginx", "haproxy", "envoy", "caddy", "traefik"];

pub fn pid_exists(pid: u32) -> bool {
    fs::metadata(format!("/proc/{pid}")).is_ok()
}

pub fn comm_of(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim_end().to_owned())
}

fn all_pids() -> impl Iterator<Item = u32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
}

/// Processes whose comm is one of `comms`.
pub fn pids_by_comm(comms: &[String]) -> BTreeSet<u32> {
    all_pids()
        .filter(|&pid| comm_of(pid).is_some_and(|c| comms.iter().any(|w| *w == c)))
        .collect()
}

/// Socket inodes of listening TCP sockets (v4 and v6), from /proc/net/tcp*.
fn listening_inodes() -> BTreeSet<u64> {
    let mut inodes = BTreeSet::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(file) else { continue };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // st == 0A is TCP_LISTEN; column 9 is the inode.
            if cols.get(3) == Some(&"0A") {
                if let Some(inode) = cols.get(9).and_then(|i| i.parse().ok()) {
                    inodes.insert(inode);
                }
            }
        }
    }
    inodes
}

/// Processes (in this netns' view of /proc/net) that hold a listening TCP socket.
pub fn listener_pids() -> BTreeSet<u32> {
    let inodes = listening_inodes();
    if inodes.is_empty() {
        return BTreeSet::new();
    }
    all_pids()
        .filter(|pid| {
            let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
            fds.flatten().any(|fd| {
                fs::read_link(fd.path()).ok().and_then(|t| {
                    let t = t.to_str()?.to_owned();
                    t.strip_prefix("socket:[")?.strip_suffix(']')?.parse::<u64>().ok()
                }).is_some_and(|i| inodes.contains(&i))
            })
        })
        .collect()
}
