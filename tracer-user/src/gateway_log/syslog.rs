//! A gateway log sent to syslog, as Debian's HAProxy does by default (`log /dev/log local0`
//! with `chroot /var/lib/haproxy`; rsyslog listens in the chroot and writes
//! /var/log/haproxy.log). The lines are read where they land: the process that listens on the
//! log socket (rsyslogd, syslog-ng, busybox syslogd) is found by that socket's inode, and its
//! open files are the candidates, as a gateway's own open files are.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
};

use crate::procfs::{holders_of_socket, proc_net_addr};

/// The port `log 10.0.0.1` means.
const SYSLOG_PORT: u16 = 514;
/// At most this many configuration files read (a directory of them under `-f`).
const MAX_CONFIG_FILES: usize = 64;
const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// Where a gateway sends its log lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// A unix datagram socket (`/dev/log`), as named in the configuration.
    Unix(PathBuf),
    Udp(SocketAddr),
}

impl std::fmt::Display for LogTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogTarget::Unix(path) => write!(f, "{}", path.display()),
            LogTarget::Udp(addr) => write!(f, "udp {addr}"),
        }
    }
}

/// What HAProxy's configuration says of its logging and its servers.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HaproxyLogging {
    pub targets: Vec<LogTarget>,
    /// Its `chroot`: a unix target is opened from inside it.
    pub chroot: Option<PathBuf>,
    /// Its log lines name a server `backend/server`: the address that is, as verdicts name
    /// upstreams (`10.0.0.2:8080`, `unix:/run/app.sock`); servers by name or template are not
    /// known before they resolve.
    pub servers: BTreeMap<String, String>,
}

/// A `server` line's address as verdicts name upstreams, when it is one.
fn server_address(word: &str) -> Option<String> {
    if let Some(path) = word.strip_prefix("unix@").or(word.starts_with('/').then_some(word)) {
        return Some(format!("unix:{path}"));
    }
    let addr = ["ipv4@", "ipv6@", "tcp@", "tcp4@", "tcp6@"].iter().find_map(|p| word.strip_prefix(p)).unwrap_or(word);
    addr.parse::<SocketAddr>().ok().map(|a| a.to_string())
}

/// A target of one `log` line's address word; none for stdout/stderr (read as its own
/// output), a ring buffer, a file descriptor, or `log global`.
fn target_of(word: &str) -> Option<LogTarget> {
    if let Some(path) = word.strip_prefix("unix@") {
        return Some(LogTarget::Unix(path.into()));
    }
    if word.starts_with('/') {
        return Some(LogTarget::Unix(word.into()));
    }
    let addr = ["udp@", "udp4@", "udp6@", "ipv4@", "ipv6@"].iter().find_map(|p| word.strip_prefix(p)).unwrap_or(word);
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Some(LogTarget::Udp(a));
    }
    // HAProxy takes the port after the last colon, IPv6 unbracketed too (`::1:514`).
    if addr.matches(':').count() > 1
        && let Some((ip, port)) = addr.rsplit_once(':')
        && let (Ok(ip), Ok(port)) = (ip.parse::<Ipv6Addr>(), port.parse::<u16>())
    {
        return Some(LogTarget::Udp(SocketAddr::new(IpAddr::V6(ip), port)));
    }
    addr.parse::<IpAddr>().ok().map(|ip| LogTarget::Udp(SocketAddr::new(ip, SYSLOG_PORT)))
}

/// The `log` and `chroot` lines of HAProxy configuration text (any section: `global`,
/// `defaults`, a proxy's own).
pub fn read_haproxy_config(text: &str, into: &mut HaproxyLogging) {
    let mut proxy: Option<String> = None;
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_ascii_whitespace();
        match (words.next(), words.next()) {
            (Some("backend" | "listen"), Some(name)) => proxy = Some(name.to_owned()),
            (
                Some("frontend" | "defaults" | "global" | "resolvers" | "peers" | "userlist" | "fcgi-app" | "cache" | "program" | "ring"),
                _,
            ) => proxy = None,
            (Some("server"), Some(name)) => {
                if let (Some(proxy), Some(addr)) = (&proxy, words.next().and_then(server_address)) {
                    into.servers.insert(format!("{proxy}/{name}"), addr);
                }
            }
            (Some("log"), Some(addr)) => {
                if let Some(t) = target_of(addr)
                    && !into.targets.contains(&t)
                {
                    into.targets.push(t);
                }
            }
            (Some("chroot"), Some(dir)) => into.chroot = Some(dir.into()),
            _ => {}
        }
    }
}

/// The configuration files of a running HAProxy, from its `-f` arguments (a directory stands
/// for its `*.cfg` files), as paths readable from here.
fn haproxy_config_files(pid: u32) -> Vec<PathBuf> {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return vec![] };
    let args: Vec<String> = cmdline.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_else(|_| "/".into());
    let mut files = Vec::new();
    for pair in args.windows(2) {
        if pair[0] != "-f" {
            continue;
        }
        let named = cwd.join(&pair[1]);
        // Seen from its root (a container), or as named when that is not there: a chrooted
        // HAProxy read its configuration before its chroot, which is its root now.
        let in_root = root.join(named.strip_prefix("/").unwrap_or(&named));
        let seen = if in_root.exists() { in_root } else { named };
        // Regular files of sane size only (a FIFO would block, `-f /dev/stdin` is not ours).
        if seen.is_dir() {
            let Ok(dir) = std::fs::read_dir(&seen) else { continue };
            let mut cfgs: Vec<PathBuf> = dir.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "cfg")).collect();
            cfgs.sort();
            files.extend(cfgs);
        } else {
            files.push(seen);
        }
    }
    files.retain(|f| std::fs::metadata(f).is_ok_and(|m| m.is_file() && m.len() <= MAX_CONFIG_BYTES));
    files.truncate(MAX_CONFIG_FILES);
    files
}

/// A running HAProxy's syslog targets and chroot.
pub fn haproxy_logging(pid: u32) -> HaproxyLogging {
    let mut logging = HaproxyLogging::default();
    for file in haproxy_config_files(pid) {
        if let Ok(text) = std::fs::read_to_string(&file) {
            read_haproxy_config(&text, &mut logging);
        }
    }
    logging
}

/// The inode of the socket bound to `path`, from /proc/net/unix text
/// (`Num RefCount Protocol Flags Type St Inode Path`).
fn unix_socket_inode(table: &str, path: &Path) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        (fields.len() == 8 && Path::new(fields[7]) == path).then(|| fields[6].parse().ok()).flatten()
    })
}

/// The inode of the UDP socket that receives datagrams sent to `to`, from /proc/net/udp{,6}
/// text (`sl local_address rem_address st ... inode`): bound to that port, on that address or
/// on any when `to` is loopback (a remote syslog host is not this host's daemon).
fn udp_socket_inode(table: &str, to: SocketAddr) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        let local = proc_net_addr(fields.get(1)?)?;
        let any_here = local.ip().is_unspecified() && (to.ip().is_loopback() || to.ip().is_unspecified());
        let receives = local.port() == to.port() && (local.ip() == to.ip() || any_here);
        receives.then(|| fields.get(9)?.parse().ok()).flatten()
    })
}

/// The process holding socket `inode`, other than `but`: not init when another holds it too
/// (systemd holds the sockets it activates, journald reads them).
fn holder_of(inode: u64, but: u32) -> Option<u32> {
    let holders: Vec<u32> = holders_of_socket(inode).into_iter().filter(|&p| p != but).collect();
    holders.iter().copied().find(|&p| p != 1).or(holders.first().copied())
}

/// The process that receives what `gateway` sends to `target`. A unix path is bound in the
/// gateway's chroot when it has one (Debian's rsyslog listens at /var/lib/haproxy/dev/log), and
/// its receiver may live in the gateway's network namespace or in upstrace's (a host /dev/log
/// mounted into a container); a UDP receiver is in the gateway's.
pub fn receiver(target: &LogTarget, chroot: Option<&Path>, gateway: u32) -> Option<u32> {
    let inode = match target {
        LogTarget::Unix(path) => {
            // The path the gateway reaches (inside its chroot: outside it, it reaches nothing),
            // and where that leads (systemd's /dev/log is /run/systemd/journal/dev-log).
            let reached = match chroot {
                Some(root) => root.join(path.strip_prefix("/").unwrap_or(path)),
                None => path.clone(),
            };
            let mut paths = vec![reached.clone()];
            if let Ok(real) = std::fs::canonicalize(&reached)
                && real != reached
            {
                paths.push(real);
            }
            let tables: Vec<String> = [format!("/proc/{gateway}/net/unix"), "/proc/self/net/unix".to_string()]
                .iter()
                .filter_map(|t| std::fs::read_to_string(t).ok())
                .collect();
            paths.iter().find_map(|p| tables.iter().find_map(|t| unix_socket_inode(t, p)))?
        }
        LogTarget::Udp(to) => ["udp", "udp6"]
            .iter()
            .filter_map(|t| std::fs::read_to_string(format!("/proc/{gateway}/net/{t}")).ok())
            .find_map(|t| udp_socket_inode(&t, *to))?,
    };
    holder_of(inode, gateway)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_haproxy_log_targets() {
        let mut l = HaproxyLogging::default();
        read_haproxy_config(
            "global\n\tlog /dev/log\tlocal0\n\tlog /dev/log\tlocal1 notice\n\tchroot /var/lib/haproxy\n  log 10.0.0.5 local2 # remote\n  \
             log udp@127.0.0.1:5514 local0\n  log stdout format raw local0\n  log ring@buf local0\n\
             defaults\n  log global\n  # log /commented/out local0\nfrontend fe\n  log unix@/run/fe.sock local3\n",
            &mut l,
        );
        assert_eq!(
            l.targets,
            vec![
                LogTarget::Unix("/dev/log".into()),
                LogTarget::Udp("10.0.0.5:514".parse().unwrap()),
                LogTarget::Udp("127.0.0.1:5514".parse().unwrap()),
                LogTarget::Unix("/run/fe.sock".into()),
            ]
        );
        let mut v6 = HaproxyLogging::default();
        read_haproxy_config("global\n  log ipv6@::1:5514 local0\n  log [fd00::5]:514 local0\n  log fd00::6 local0\n", &mut v6);
        assert_eq!(
            v6.targets,
            vec![
                LogTarget::Udp("[::1]:5514".parse().unwrap()),
                LogTarget::Udp("[fd00::5]:514".parse().unwrap()),
                LogTarget::Udp("[fd00::6]:514".parse().unwrap()),
            ]
        );
        assert_eq!(l.chroot, Some(PathBuf::from("/var/lib/haproxy")));
        let mut servers = HaproxyLogging::default();
        read_haproxy_config(
            "backend be\n    server up1 10.0.0.2:8081 check\n    server up2 /run/app.sock proto fcgi\n    server-template up 3 app.lab:80 resolvers r\n    \
             server named app.lab:80\nlisten both\n    bind :80\n    server s1 [fd00::2]:80\nfrontend fe\n    server not-a-proxy 10.9.9.9:1\n",
            &mut servers,
        );
        assert_eq!(
            servers.servers.into_iter().collect::<Vec<_>>(),
            vec![
                ("be/up1".to_string(), "10.0.0.2:8081".to_string()),
                ("be/up2".to_string(), "unix:/run/app.sock".to_string()),
                ("both/s1".to_string(), "[fd00::2]:80".to_string()),
            ]
        );
    }

    #[test]
    fn finds_sockets_in_proc_net_tables() {
        let unix = "Num       RefCount Protocol Flags    Type St Inode Path\n\
                    0000000000000000: 00000002 00000000 00000000 0002 01 41234 /var/lib/haproxy/dev/log\n\
                    0000000000000000: 00000003 00000000 00000000 0001 03 41240\n\
                    0000000000000000: 00000002 00000000 00000000 0002 01 41299 /dev/log\n";
        assert_eq!(unix_socket_inode(unix, Path::new("/var/lib/haproxy/dev/log")), Some(41234));
        assert_eq!(unix_socket_inode(unix, Path::new("/dev/log")), Some(41299));
        assert_eq!(unix_socket_inode(unix, Path::new("/run/none")), None);
        let udp = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n  \
                   120: 0100007F:159A 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 51234 2 0000000000000000 0\n  \
                   121: 00000000:0202 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 51240 2 0000000000000000 0\n";
        assert_eq!(udp_socket_inode(udp, "127.0.0.1:5530".parse().unwrap()), Some(51234));
        assert_eq!(udp_socket_inode(udp, "127.0.0.2:514".parse().unwrap()), Some(51240), "bound to any address");
        assert_eq!(udp_socket_inode(udp, "10.1.2.3:514".parse().unwrap()), None, "a remote syslog host");
        assert_eq!(udp_socket_inode(udp, "127.0.0.1:515".parse().unwrap()), None);
        let udp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n  \
                    5: 00000000000000000000000001000000:0202 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 61234 2\n";
        assert_eq!(udp_socket_inode(udp6, "[::1]:514".parse().unwrap()), Some(61234));
    }

    #[test]
    fn a_missing_process_has_no_logging_and_no_receiver() {
        assert_eq!(haproxy_logging(u32::MAX - 1), HaproxyLogging::default());
        assert_eq!(receiver(&LogTarget::Unix("/nonexistent/upstrace/log".into()), None, u32::MAX - 1), None);
    }
}
