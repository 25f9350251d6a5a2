//! Finding a running gateway's log among the files it has open (/proc/PID/fd), and reading
//! it when a 5xx verdict wants its words.
//!
//! - nginx: its `*.log` files and its stderr (nginx points stderr at its error log); a file
//!   whose last lines are nginx error lines is followed, one whose lines are not (an access
//!   log, a custom format) is not; an empty one is followed unless its name says "access".
//! - HAProxy: its stdout and stderr when they are regular files (`log stdout` with the output
//!   sent to a file, as under systemd's `StandardOutput=append:`), its `*.log` files, and the
//!   files where the syslog daemon listening on its `log` targets (`/dev/log` in its chroot, a
//!   UDP address) writes its lines (`syslog.rs`). journald and a pipe are not read: upstrace
//!   says so at start.
//! - Caddy: its stdout/stderr when they are files, and its `*.log` files (JSON).
use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    io::{Read, Seek, SeekFrom},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use super::{
    GatewayLogStats, GatewaySaid, Pending, Query, about_a_failure, apply,
    follow::Follower,
    parse::{Dialect, haproxy_server, syslog_tag},
    syslog,
};
use crate::engine::verdict::Verdict;

/// At most this many log files followed (reloads and rotations add some).
const MAX_SOURCES: usize = 32;
/// How much of a file's end is looked at to tell what it is.
const SNIFF_BYTES: u64 = 8192;

struct Source {
    /// The path its writer opened it by.
    path: String,
    /// The syslog daemon that writes it for the gateway, and the target it listens on; none
    /// for a file the gateway writes itself.
    via: Option<String>,
    dialect: Dialect,
    /// Gateway names writing it.
    comms: BTreeSet<String>,
    follower: Follower,
    pending: Pending,
    /// HAProxy's servers by `backend/server`, with their addresses (from its configuration):
    /// its lines name no address.
    servers: BTreeMap<String, String>,
}

#[derive(Default)]
pub struct LiveLogs {
    boot_offset_ns: i128,
    sources: Vec<Source>,
    /// Gateway names already told about, and what was said.
    announced: BTreeMap<String, String>,
    lines_read: u64,
    lines_unparsed: u64,
    matched: u64,
    verdicts_unmatched: u64,
    verdicts_shed: u64,
}

/// An open file of a process, as a log to follow for a gateway.
struct Candidate<'a> {
    pid: u32,
    fd: u32,
    path: &'a str,
    via: Option<&'a str>,
}

/// What a file among the gateway's open files is, by its last lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sniffed {
    /// Lines in the gateway's log dialect.
    Its,
    /// Lines, none of them in the dialect.
    Other,
    /// Nothing to tell by.
    Empty,
}

fn sniff(file: &mut File, dialect: Dialect) -> Sniffed {
    let Ok(len) = file.metadata().map(|m| m.len()) else { return Sniffed::Empty };
    let from = len.saturating_sub(SNIFF_BYTES);
    let mut buf = Vec::new();
    if file.seek(SeekFrom::Start(from)).is_err() || file.take(SNIFF_BYTES).read_to_end(&mut buf).is_err() {
        return Sniffed::Empty;
    }
    let text = String::from_utf8_lossy(&buf);
    // The first piece may be the end of a line.
    let mut lines = text.lines().skip(usize::from(from > 0)).filter(|l| !l.trim().is_empty()).peekable();
    if lines.peek().is_none() {
        return Sniffed::Empty;
    }
    if lines.any(|l| dialect.looks_like(l)) { Sniffed::Its } else { Sniffed::Other }
}

/// The local zone's offset from UTC now, in seconds (nginx and HAProxy write local time).
pub fn utc_offset_s() -> i64 {
    // SAFETY: time(NULL) and localtime_r with a valid out-pointer are thread-safe.
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return 0;
        }
        tm.tm_gmtoff
    }
}

/// Regular files among a process's open files: (fd, path as opened).
fn open_files(pid: u32) -> Vec<(u32, String)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return vec![] };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(target) = std::fs::read_link(entry.path()) else { continue };
        let target = target.to_string_lossy().into_owned();
        // Deleted files (rotated away) and pipes, sockets, ttys are not logs to follow.
        if !target.starts_with('/') || target.ends_with(" (deleted)") {
            continue;
        }
        if std::fs::metadata(entry.path()).is_ok_and(|m| m.is_file()) {
            found.push((fd, target));
        }
    }
    found.sort();
    found
}

/// Kernel interfaces are no logs, and reading some (/proc/kmsg) blocks and consumes.
fn kernel_interface(path: &str) -> bool {
    ["/proc/", "/sys/", "/dev/"].iter().any(|p| path.starts_with(p))
}

/// Whether an open file may be this gateway's log, before looking at its lines.
fn may_be_log(dialect: Dialect, fd: u32, path: &str) -> bool {
    if kernel_interface(path) {
        return false;
    }
    let named_log = path.ends_with(".log") || path.contains("/log/");
    match dialect {
        Dialect::NginxError => named_log || fd == 2,
        Dialect::HaproxyHttp | Dialect::CaddyJson => named_log || fd == 1 || fd == 2,
    }
}

impl LiveLogs {
    pub fn new(boot_offset_ns: i128) -> Self {
        Self { boot_offset_ns, ..Self::default() }
    }

    /// Look at a (new) gateway process's open files, and for HAProxy at where its syslog
    /// targets land; returns a line to say on stderr the first time a gateway name is seen, or
    /// when it starts writing another log.
    pub fn adopt(&mut self, pid: u32, comm: &str) -> Option<String> {
        let Some(dialect) = Dialect::of_comm(comm) else {
            return self.announce(comm, format!("{comm}: its log is not read (upstrace reads nginx, HAProxy and Caddy logs)"));
        };
        let mut added = false;
        for (fd, path) in open_files(pid) {
            if !may_be_log(dialect, fd, &path) {
                continue;
            }
            // HAProxy's and Caddy's stdout and stderr are theirs whatever else they hold; a
            // `*.log` file must show lines of the gateway's log (nginx's access log does not).
            let own_output = fd <= 2 && dialect != Dialect::NginxError;
            let wanted = |sniffed: Sniffed| match sniffed {
                Sniffed::Its => true,
                Sniffed::Other => own_output,
                Sniffed::Empty => !Path::new(&path).file_name().is_some_and(|n| n.to_string_lossy().contains("access")),
            };
            added |= self.consider(Candidate { pid, fd, path: &path, via: None }, comm, dialect, wanted);
        }
        let mut notes = Vec::new();
        if dialect == Dialect::HaproxyHttp {
            let config = syslog::haproxy_logging(pid);
            added |= self.adopt_syslog(pid, comm, dialect, &config, &mut notes);
            for source in self.sources.iter_mut().filter(|s| s.comms.contains(comm)) {
                source.servers.extend(config.servers.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
        let files: Vec<String> = self
            .sources
            .iter()
            .filter(|s| s.comms.contains(comm))
            .map(|s| match &s.via {
                Some(via) => format!("{} (via {via})", s.path),
                None => s.path.clone(),
            })
            .collect();
        let mut said = if files.is_empty() {
            format!(
                "{comm}: no readable log among its open files (a log sent to journald, a pipe or a terminal is not read): verdicts come without its words"
            )
        } else {
            format!("{comm}: gateway log {} ({}): its words go into verdicts", files.join(", "), dialect.describe())
        };
        for note in notes {
            said.push_str("; ");
            said.push_str(&note);
        }
        if added || !self.announced.contains_key(comm) { self.announce(comm, said) } else { None }
    }

    /// HAProxy's syslog targets (`log /dev/log`, `log 127.0.0.1:514`): the files of the
    /// process listening there that hold its lines. What cannot be followed is said in `notes`.
    fn adopt_syslog(&mut self, pid: u32, comm: &str, dialect: Dialect, logging: &syslog::HaproxyLogging, notes: &mut Vec<String>) -> bool {
        let mut added = false;
        for target in &logging.targets {
            let Some(receiver) = syslog::receiver(target, logging.chroot.as_deref(), pid) else {
                notes.push(format!("its log sent to {target} reaches no process"));
                continue;
            };
            let receiver_comm = crate::procfs::comm_of(receiver).unwrap_or_default();
            if receiver_comm == "systemd-journal" {
                notes.push(format!("its log sent to {target} goes to journald (pid {receiver}), which is not read"));
                continue;
            }
            let via = format!("{receiver_comm} {receiver} from {target}");
            for (fd, path) in open_files(receiver) {
                // A syslog daemon's files hold every program's lines: one with the gateway's,
                // or an empty one named after it (rsyslog's /var/log/haproxy.log). Only log
                // files: rsyslog holds /proc/kmsg open too, whose reads take the kernel's messages.
                let named = Path::new(&path).file_name().is_some_and(|n| n.to_string_lossy().contains(comm));
                let log_like = may_be_log(dialect, u32::MAX, &path) || (named && !kernel_interface(&path));
                if !log_like {
                    continue;
                }
                let wanted = |sniffed: Sniffed| sniffed == Sniffed::Its || (sniffed == Sniffed::Empty && named);
                added |= self.consider(Candidate { pid: receiver, fd, path: &path, via: Some(&via) }, comm, dialect, wanted);
            }
            if !self.sources.iter().any(|s| s.via.as_deref() == Some(via.as_str())) {
                notes.push(format!(
                    "its log sent to {target} goes to {receiver_comm} (pid {receiver}), none of whose files holds its lines yet"
                ));
            }
        }
        added
    }

    /// Follow one open file of `candidate.pid` as `comm`'s log if `wanted` says so by its last
    /// lines; true when it is a new source.
    fn consider(&mut self, candidate: Candidate, comm: &str, dialect: Dialect, wanted: impl Fn(Sniffed) -> bool) -> bool {
        let Candidate { pid, fd, path, via } = candidate;
        if self.sources.len() >= MAX_SOURCES {
            return false;
        }
        let at = PathBuf::from(format!("/proc/{pid}/fd/{fd}"));
        let Ok(meta) = std::fs::metadata(&at) else { return false };
        if let Some(s) = self.sources.iter_mut().find(|s| s.follower.inode() == (meta.dev(), meta.ino())) {
            s.comms.insert(comm.to_owned());
            s.follower.also_at(PathBuf::from(format!("/proc/{pid}/root{path}")));
            return false;
        }
        // Never blocking the event loop, whatever the file turns out to be.
        let Ok(mut file) = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&at) else { return false };
        if !wanted(sniff(&mut file, dialect)) {
            return false;
        }
        // Found again under its name after a rotation (in the writer's mount namespace).
        let reopen = PathBuf::from(format!("/proc/{pid}/root{path}"));
        let Ok(follower) = Follower::at_end(reopen, file) else { return false };
        self.sources.push(Source {
            path: path.to_owned(),
            via: via.map(str::to_owned),
            dialect,
            comms: BTreeSet::from([comm.to_owned()]),
            follower,
            pending: Pending::default(),
            servers: BTreeMap::new(),
        });
        true
    }

    fn announce(&mut self, comm: &str, said: String) -> Option<String> {
        let before = self.announced.insert(comm.to_owned(), said.clone());
        (before.as_deref() != Some(said.as_str())).then_some(said)
    }

    /// Read what the logs of these verdicts' gateways wrote since the last look (nothing is
    /// read when no verdict asks), then give each verdict its line.
    /// `shed`: upstrace is behind the kernel; the lines are read (the file must not run away)
    /// but not matched, and the verdicts are counted as shed.
    pub fn annotate(&mut self, verdicts: &mut [Verdict], shed: bool) {
        let queries: Vec<(usize, Query)> =
            verdicts.iter().enumerate().filter_map(|(i, v)| Some((i, Query::of(v, self.boot_offset_ns)?))).collect();
        let wanted: BTreeSet<&str> = queries.iter().map(|(i, _)| verdicts[*i].gateway.comm.as_str()).collect();
        let followed: Vec<usize> =
            (0..self.sources.len()).filter(|&s| self.sources[s].comms.iter().any(|c| wanted.contains(c.as_str()))).collect();
        if followed.is_empty() {
            return;
        }
        let offset = utc_offset_s();
        let newest = queries.iter().map(|(_, q)| q.unix_ms).max().unwrap_or(0);
        for &s in &followed {
            let source = &mut self.sources[s];
            for text in source.follower.new_lines() {
                // A syslog daemon's file holds other programs' lines too: only the gateway's
                // (by the header's program name) are read.
                if source.via.is_some() && syslog_tag(&text).is_none_or(|tag| !source.comms.contains(tag)) {
                    continue;
                }
                self.lines_read += 1;
                match source.dialect.parse(&text, offset) {
                    Some(mut line) if about_a_failure(&line) => {
                        if line.upstream.is_none() {
                            line.upstream = haproxy_server(&line.text).and_then(|s| source.servers.get(s)).cloned();
                        }
                        source.pending.push(line)
                    }
                    Some(_) => {}
                    None => self.lines_unparsed += 1,
                }
            }
            source.pending.age(newest);
        }
        if shed {
            self.verdicts_shed += queries.iter().filter(|(i, _)| self.follows(&verdicts[*i].gateway.comm)).count() as u64;
            return;
        }
        for (i, q) in queries {
            let v = &mut verdicts[i];
            let mut found = None;
            for &s in &followed {
                let source = &mut self.sources[s];
                if !source.comms.contains(v.gateway.comm.as_str()) {
                    continue;
                }
                if let Some((line, keys)) = source.pending.take_match(&q, source.dialect) {
                    found = Some(GatewaySaid {
                        source: source.path.clone(),
                        line: line.text,
                        matched_by: keys,
                        says: line.claim,
                        agreement: super::Agreement::Unknown,
                    });
                    break;
                }
            }
            match found {
                Some(said) => {
                    self.matched += 1;
                    apply(v, said);
                }
                None if self.follows(&v.gateway.comm) => self.verdicts_unmatched += 1,
                None => {}
            }
        }
    }

    /// A log of this gateway is followed.
    fn follows(&self, comm: &str) -> bool {
        self.sources.iter().any(|s| s.comms.contains(comm))
    }

    pub fn stats(&self) -> GatewayLogStats {
        let mut s = GatewayLogStats {
            files: self.sources.len(),
            lines_read: self.lines_read,
            lines_unparsed: self.lines_unparsed,
            matched: self.matched,
            verdicts_unmatched: self.verdicts_unmatched,
            verdicts_shed: self.verdicts_shed,
            ..GatewayLogStats::default()
        };
        for source in &self.sources {
            s.lines_unmatched += source.pending.unmatched;
            s.bytes_skipped += source.follower.counts.bytes_skipped;
            s.lines_too_long += source.follower.counts.lines_too_long;
            s.rotations += source.follower.counts.rotations;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// Behind the kernel, the lines are read but not matched, and the verdicts counted as shed;
    /// caught up, the same verdict finds its line.
    #[test]
    fn matching_is_shed_while_behind_and_counted() {
        let dir = std::env::temp_dir().join(format!("upstrace-shed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("error.log");
        let mut log = File::create(&path).unwrap();
        // A verdict at 2026-11-28 16:53:43.200 UTC (monotonic 1 s, booted at that instant - 1 s).
        let boot_offset_ns = (1_795_884_823_200_i128 - 1_000) * 1_000_000;
        let mut logs = LiveLogs::new(boot_offset_ns);
        logs.sources.push(Source {
            path: path.display().to_string(),
            via: None,
            dialect: Dialect::NginxError,
            comms: BTreeSet::from(["nginx".to_owned()]),
            follower: Follower::at_end(path.clone(), File::open(&path).unwrap()).unwrap(),
            pending: Pending::default(),
            servers: BTreeMap::new(),
        });
        let line = "2026/11/28 16:53:43 [error] 7#7: *2 connect() failed (111: Connection refused) while connecting to upstream, client: 127.0.0.1, server: , request: \"GET / HTTP/1.1\", upstream: \"http://10.1.0.2:80/\"\n";
        let mut verdict = Verdict::example();
        (verdict.ts_ns, verdict.gateway.pid, verdict.upstream) = (1_000_000_000, 7, "10.1.0.2:80".into());
        log.write_all(line.as_bytes()).unwrap();
        let mut verdicts = vec![verdict.clone()];
        logs.annotate(&mut verdicts, true);
        assert!(verdicts[0].gateway_said.is_none());
        assert_eq!((logs.stats().lines_read, logs.stats().verdicts_shed, logs.stats().matched), (1, 1, 0));
        log.write_all(line.as_bytes()).unwrap();
        let mut verdicts = vec![verdict];
        logs.annotate(&mut verdicts, false);
        assert!(verdicts[0].gateway_said.is_some(), "caught up: matched");
        assert_eq!((logs.stats().verdicts_shed, logs.stats().matched), (1, 1));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tells_an_error_log_from_an_access_log() {
        let dir = std::env::temp_dir().join(format!("upstrace-sniff-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::File::create(&p).unwrap().write_all(text.as_bytes()).unwrap();
            File::open(p).unwrap()
        };
        let mut notices = write("notices.log", "2026/11/28 16:53:43 [notice] 7#7: signal process started\n");
        assert_eq!(sniff(&mut notices, Dialect::NginxError), Sniffed::Its, "any level of nginx's");
        let mut caddy = write("caddy.log", "{\"level\":\"info\",\"ts\":1795885895.26,\"msg\":\"serving initial configuration\"}\n");
        assert_eq!(sniff(&mut caddy, Dialect::CaddyJson), Sniffed::Its);
        assert_eq!(sniff(&mut caddy, Dialect::NginxError), Sniffed::Other);
        let mut error = write(
            "error.log",
            "2026/11/28 16:53:43 [error] 7#7: *2 connect() failed (111: Connection refused) while connecting to upstream, client: 127.0.0.1, server: , request: \"GET / HTTP/1.1\"\n",
        );
        let mut access = write("access.log", "127.0.0.1 - - [28/Nov/2026:16:53:43 +0000] \"GET / HTTP/1.1\" 502 157 \"-\" \"curl\"\n");
        let mut empty = write("empty.log", "\n\n");
        assert_eq!(sniff(&mut error, Dialect::NginxError), Sniffed::Its);
        assert_eq!(sniff(&mut access, Dialect::NginxError), Sniffed::Other);
        assert_eq!(sniff(&mut empty, Dialect::NginxError), Sniffed::Empty);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_process_without_log_files_is_said_once() {
        let mut logs = LiveLogs::new(0);
        // No such process: no open files.
        let gone = u32::MAX - 1;
        let said = logs.adopt(gone, "nginx").unwrap();
        assert!(said.contains("no readable log"), "{said}");
        assert_eq!(logs.adopt(gone, "nginx"), None);
        assert!(logs.adopt(gone, "envoy").unwrap().contains("not read"));
    }
}
