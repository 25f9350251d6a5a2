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

fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// `roots` and all their living descendants (a gateway's workers were usually forked before
/// upstrace started; later forks are followed in the kernel).
pub fn with_descendants(roots: &BTreeSet<u32>) -> BTreeSet<u32> {
    let parents: Vec<(u32, u32)> = all_pids().filter_map(|p| Some((p, parent_of(p)?))).collect();
    let mut found = roots.clone();
    loop {
        let before = found.len();
        for (pid, ppid) in &parents {
            if found.contains(ppid) {
                found.insert(*pid);
            }
        }
        if found.len() == before {
            return found;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_children_of_this_process() {
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let me = BTreeSet::from([std::process::id()]);
        let all = with_descendants(&me);
        let _ = child.kill();
        let _ = child.wait();
        assert!(all.contains(&child.id()), "{all:?}");
        assert!(all.contains(&std::process::id()));
    }
}
