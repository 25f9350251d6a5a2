//! Finding the processes to trace in /proc: gateways by pid or by name, and the processes
//! that hold listening TCP sockets (their deaths explain refusals and resets).
use std::{
    collections::{BTreeSet, HashMap},
    fs,
    net::SocketAddr,
};

pub use crate::procfs::comm_of;
use crate::procfs::{all_pids, proc_net_addr, socket_inodes};

/// Gateways upstrace looks for when no --pid or --comm is given.
pub const DEFAULT_COMMS: &[&str] = &["nginx", "haproxy", "envoy", "caddy", "traefik"];

pub fn pid_exists(pid: u32) -> bool {
    fs::metadata(format!("/proc/{pid}")).is_ok()
}

/// The host's network namespace by inode: PID 1's, or upstrace's own where PID 1's cannot be
/// read (upstrace runs on the host): a gateway in another one has its own loopback.
pub fn host_netns() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    ["/proc/1/ns/net", "/proc/self/ns/net"].iter().find_map(|p| std::fs::metadata(p).ok()).and_then(|m| u32::try_from(m.ino()).ok())
}

/// A unix socket file as process `pid` sees it (through its root: a gateway in a container has
/// its own), with its owner, group and mode, and the user `pid` runs as (names from that root's
/// /etc/passwd and /etc/group, else numbers).
pub fn socket_file(pid: u32, path: &str) -> Option<crate::engine::decode::SocketFile> {
    use std::os::unix::fs::MetadataExt;
    let root = format!("/proc/{pid}/root");
    let meta = fs::metadata(format!("{root}{path}")).or_else(|_| fs::metadata(path)).ok()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let euid: u32 = status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().nth(1)?.parse().ok()?;
    let db = |name: &str| {
        fs::read_to_string(format!("{root}/etc/{name}")).or_else(|_| fs::read_to_string(format!("/etc/{name}"))).unwrap_or_default()
    };
    let (passwd, group) = (db("passwd"), db("group"));
    let named = |text: &str, id: u32| id_name(text, id).unwrap_or_else(|| id.to_string());
    Some(crate::engine::decode::SocketFile {
        owner: named(&passwd, meta.uid()),
        group: named(&group, meta.gid()),
        mode: meta.mode() & 0o7777,
        caller: named(&passwd, euid),
    })
}

/// The name of `id` in a passwd or group file (`name:x:id:...`).
fn id_name(db: &str, id: u32) -> Option<String> {
    db.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        (fields.nth(1)?.parse::<u32>().ok()? == id).then(|| name.to_owned())
    })
}

/// Processes whose comm is one of `comms`.
pub fn pids_by_comm(comms: &[String]) -> BTreeSet<u32> {
    all_pids().filter(|&pid| comm_of(pid).is_some_and(|c| comms.contains(&c))).collect()
}

/// A process holding a listening TCP socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerInfo {
    pub pid: u32,
    pub comm: String,
    pub addr: SocketAddr,
    /// The process title, when it is not just the name (`php-fpm: pool www`).
    pub title: Option<String>,
}

/// A LISTEN row of /proc/<pid>/net/tcp{,6} (the netns `pid` lives in): local address, socket
/// inode, and for a listener the accept queue length (rx_queue) and its limit (tx_queue).
struct ListenRow {
    addr: SocketAddr,
    inode: u64,
    queued: u32,
    limit: u32,
}

fn listen_rows(pid: u32) -> Vec<ListenRow> {
    let mut rows = Vec::new();
    for file in ["tcp", "tcp6"] {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{file}")) else { continue };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // st 0A is TCP_LISTEN.
            if cols.get(3) != Some(&"0A") {
                continue;
            }
            let Some(addr) = cols.get(1).and_then(|a| proc_net_addr(a)) else { continue };
            let (tx, rx) = cols.get(4).and_then(|q| q.split_once(':')).unwrap_or(("0", "0"));
            rows.push(ListenRow {
                addr,
                inode: cols.get(9).and_then(|i| i.parse().ok()).unwrap_or(0),
                queued: u32::from_str_radix(rx, 16).unwrap_or(0),
                limit: u32::from_str_radix(tx, 16).unwrap_or(0),
            });
        }
    }
    rows
}

/// Listening sockets whose accept queue is full, in the netns `pid` lives in:
/// (address, queued, limit).
pub fn full_accept_queues(pid: u32) -> Vec<(SocketAddr, u32, u32)> {
    listen_rows(pid)
        .into_iter()
        // The kernel refuses new connections once the queue holds more than the limit.
        .filter(|r| r.queued > r.limit || (r.limit > 0 && r.queued >= r.limit))
        .map(|r| (r.addr, r.queued, r.limit))
        .collect()
}

/// Network namespace identity of a process (`net:[4026531840]`).
pub fn netns_of(pid: u32) -> Option<String> {
    fs::read_link(format!("/proc/{pid}/ns/net")).ok().map(|p| p.to_string_lossy().into_owned())
}

/// Listening sockets (inode -> address) in the network namespace `pid` lives in.
fn listening_sockets(pid: u32) -> HashMap<u64, SocketAddr> {
    listen_rows(pid).into_iter().filter(|r| r.inode != 0).map(|r| (r.inode, r.addr)).collect()
}

/// A process holding a listening unix stream socket (php-fpm, uwsgi, gunicorn and their
/// workers, which inherit it).
#[derive(Debug, Clone)]
pub struct UnixListenerInfo {
    pub pid: u32,
    pub comm: String,
    pub path: String,
    /// The process title, when it is not just the name (`php-fpm: pool www`).
    pub title: Option<String>,
}

/// Listening unix stream sockets of a network namespace, by inode: the rows of
/// /proc/PID/net/unix with __SO_ACCEPTCON set, type SOCK_STREAM, and a path in the filesystem.
fn unix_listening_sockets(pid: u32) -> HashMap<u64, String> {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/unix")) else { return HashMap::new() };
    parse_unix_listeners(&text)
}

fn parse_unix_listeners(text: &str) -> HashMap<u64, String> {
    const ACCEPTING: u32 = 0x10000;
    const STREAM: u32 = 1;
    text.lines()
        .skip(1)
        .filter_map(|line| {
            // Num RefCount Protocol Flags Type St Inode Path
            let cols: Vec<&str> = line.split_whitespace().collect();
            let flags = u32::from_str_radix(cols.get(3)?, 16).ok()?;
            let kind = u32::from_str_radix(cols.get(4)?, 16).ok()?;
            let path = cols.get(7).filter(|p| p.starts_with('/'))?;
            (flags & ACCEPTING != 0 && kind == STREAM).then(|| Some((cols.get(6)?.parse().ok()?, path.to_string())))?
        })
        .collect()
}

/// Every process holding a listening unix stream socket, in every network namespace.
pub fn unix_listeners() -> Vec<UnixListenerInfo> {
    holders(unix_listening_sockets)
        .into_iter()
        .map(|(pid, path)| {
            let comm = comm_of(pid).unwrap_or_default();
            UnixListenerInfo { pid, title: title_of(pid, &comm), comm, path }
        })
        .collect()
}

/// (pid, socket) for every process holding one of the listening sockets `sockets_of` lists for
/// its network namespace (read once per namespace), each socket once per process.
fn holders<A: Clone + Ord>(sockets_of: fn(u32) -> HashMap<u64, A>) -> Vec<(u32, A)> {
    let mut by_netns: HashMap<String, HashMap<u64, A>> = HashMap::new();
    let mut found = Vec::new();
    for pid in all_pids() {
        let Ok(ns) = fs::read_link(format!("/proc/{pid}/ns/net")) else { continue };
        let sockets = by_netns.entry(ns.to_string_lossy().into_owned()).or_insert_with(|| sockets_of(pid));
        if sockets.is_empty() {
            continue;
        }
        let mut seen = BTreeSet::new();
        for inode in socket_inodes(pid) {
            if let Some(socket) = sockets.get(&inode)
                && seen.insert(socket.clone())
            {
                found.push((pid, socket.clone()));
            }
        }
    }
    found
}

/// The process title when it says more than the name: servers that name their workers
/// (`php-fpm: pool www`, `php-fpm: master process (...)`).
fn title_of(pid: u32, comm: &str) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let title = String::from_utf8_lossy(&raw).split('\0').filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" ");
    let title: String = title.trim().chars().take(80).collect();
    let program = title.split_whitespace().next().unwrap_or("");
    (!title.is_empty() && !program.ends_with(comm) && !program.contains('/')).then_some(title)
}

/// Every process holding a listening TCP socket, in every network namespace: the upstreams
/// whose deaths explain refusals and resets.
pub fn listeners() -> Vec<ListenerInfo> {
    holders(listening_sockets)
        .into_iter()
        .map(|(pid, addr)| {
            let comm = comm_of(pid).unwrap_or_default();
            ListenerInfo { pid, title: title_of(pid, &comm), comm, addr }
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
    fn ids_are_named_from_passwd_and_group_files() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
        assert_eq!(id_name(passwd, 65534).as_deref(), Some("nobody"));
        assert_eq!(id_name(passwd, 0).as_deref(), Some("root"));
        assert_eq!(id_name(passwd, 33), None);
        assert_eq!(id_name("garbage\n::\n", 0), None);
    }

    #[test]
    fn listening_unix_stream_sockets_with_a_path() {
        let text = "Num       RefCount Protocol Flags    Type St Inode Path
ffff0001: 00000002 00000000 00010000 0001 01 4242 /run/php/php8.2-fpm.sock
ffff0002: 00000002 00000000 00000000 0001 03 4243 /run/php/php8.2-fpm.sock
ffff0003: 00000002 00000000 00010000 0002 01 4244 /run/dgram.sock
ffff0004: 00000002 00000000 00010000 0001 01 4245 @abstract
ffff0005: 00000002 00000000 00010000 0001 01 4246
garbage line
";
        let found = parse_unix_listeners(text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found.get(&4242).map(String::as_str), Some("/run/php/php8.2-fpm.sock"));
    }

    #[test]
    fn parses_proc_net_addresses() {
        assert_eq!(proc_net_addr("0100007F:1F90"), Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(proc_net_addr("00000000000000000000000001000000:0050"), Some("[::1]:80".parse().unwrap()));
        assert_eq!(proc_net_addr("zz:1"), None);
        assert_eq!(proc_net_addr("0100007F"), None);
    }

    #[test]
    fn finds_a_listener_of_this_process() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let all = listeners();
        assert!(all.iter().any(|x| x.pid == std::process::id() && x.addr.port() == port), "{all:?}");
    }

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
