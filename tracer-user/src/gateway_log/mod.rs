//! The gateway's own account of each 5xx: its log line for the failed request, found without
//! configuration and put beside the kernel's verdict (`gateway_said`), with whether the two
//! agree. nginx's error log, HAProxy's httplog lines and Caddy's JSON log are read from the
//! files the gateway has open (`live`), only when a 5xx verdict is made (nothing on the
//! healthy path); a replay takes the lines its trace recorded (`recorded`).
//!
//! A line is matched to a verdict by what both know (worker pid, time, client address,
//! upstream address, status), never guessed: a verdict without a fitting line, or with two
//! that say different things, gets none, and lines that fit no verdict are counted.
pub mod follow;
pub mod live;
pub mod parse;
pub mod recorded;
pub mod said;
pub mod syslog;

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
};

use serde::Serialize;

pub use self::{
    parse::{Claim, Dialect, LogLine},
    said::{Agreement, GatewaySaid, MatchKey},
};
use crate::engine::verdict::{Cause, Class, Delivered, Verdict};

/// The kernel causes that fit each of the gateway's claims (a gateway sees one side: nginx
/// reads EOF where a FIN came before the RST, HAProxy's `SC` is any connect failure).
fn fits(claim: Claim, cause: Cause) -> bool {
    use Cause as C;
    let fitting: &[Cause] = match claim {
        Claim::Refused => &[C::Refused, C::Crashed, C::Rejected],
        Claim::Reset => &[C::Reset, C::Crashed, C::WorkerKilled, C::Rejected],
        Claim::ClosedEarly => &[C::ClosedEarly, C::Reset, C::Crashed, C::WorkerKilled],
        Claim::ServerAborted => &[C::Reset, C::ClosedEarly, C::Crashed, C::WorkerKilled, C::Rejected],
        Claim::ConnectFailed => &[
            C::Refused,
            C::Crashed,
            C::Rejected,
            C::NoRoute,
            C::Unreachable,
            C::NoSocketFile,
            C::PermissionDenied,
            C::Overloaded,
            C::LocalResources,
            // HAProxy's SC covers a failed handshake with the server too.
            C::TlsCertRejected,
            C::TlsAlert,
            C::PlainHttpBehindHttps,
        ],
        Claim::ConnectTimeout => &[C::Timeout, C::Dropped, C::Unreachable, C::Overloaded, C::Loss],
        Claim::ReadTimeout => &[C::Stalled, C::Loss],
        Claim::HeadTooLarge => &[C::HeadTooLarge],
        Claim::InvalidResponse => &[C::InvalidResponse, C::HeadTooLarge, C::TlsBehindHttp, C::TlsAlert],
        Claim::TlsHandshake => &[C::TlsCertRejected, C::TlsAlert, C::PlainHttpBehindHttps, C::TlsBehindHttp],
        Claim::Unreachable => &[C::Unreachable, C::NoRoute, C::Rejected, C::Timeout],
        Claim::NoRoute => &[C::NoRoute],
        Claim::PermissionDenied => &[C::PermissionDenied, C::NoRoute],
        Claim::NoSocketFile => &[C::NoSocketFile],
        Claim::Overloaded => &[C::Overloaded],
        Claim::LocalResources => &[C::LocalResources],
        Claim::NotResolved => {
            &[C::DnsUnreachable, C::DnsNxdomain, C::DnsServfail, C::DnsRefused, C::DnsError, C::DnsNoAddress, C::DnsTimeout]
        }
        // No server was tried: any cause that took them out fits.
        Claim::NoLiveUpstream => return true,
    };
    fitting.contains(&cause)
}

/// Compare the gateway's words with the kernel's cause.
pub fn agreement(says: Option<Claim>, cause: Cause) -> Agreement {
    match says {
        Some(_) if cause.class() == Class::Unknown => Agreement::Unknown,
        Some(claim) if fits(claim, cause) => Agreement::Agrees,
        Some(_) => Agreement::Disagrees,
        None => Agreement::Unknown,
    }
}

/// Put the gateway's line into the verdict (live or replayed alike), judging the agreement
/// against this verdict's cause; a disagreement is said in the summary.
pub fn apply(v: &mut Verdict, mut said: GatewaySaid) {
    said.agreement = agreement(said.says, v.cause);
    if said.agreement == Agreement::Disagrees
        && let Some(claim) = said.says
    {
        v.summary.push_str(&format!(
            "; {}'s own log disagrees: it says \"{}\" where the kernel saw {}",
            v.gateway.comm,
            claim.words(),
            v.cause
        ));
    } else if v.class == Class::Unknown
        && let Some(claim) = said.says
    {
        v.summary.push_str(&format!("; {}'s own log says \"{}\"", v.gateway.comm, claim.words()));
    }
    v.gateway_said = Some(said);
}

/// Counters for the stats line (`gateway_log`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GatewayLogStats {
    /// Log files followed.
    pub files: usize,
    /// Lines read from them.
    pub lines_read: u64,
    /// Lines in no shape upstrace reads (another format, cut short): skipped.
    pub lines_unparsed: u64,
    /// Verdicts that got their gateway's line.
    pub matched: u64,
    /// 5xx verdicts of a gateway whose log is followed that got no line (none fitted, or two
    /// fitted that say different things).
    pub verdicts_unmatched: u64,
    /// 5xx verdicts sent without looking for their line: upstrace was behind the kernel.
    #[serde(default)]
    pub verdicts_shed: u64,
    /// Lines about a failed request that no verdict took.
    pub lines_unmatched: u64,
    /// Bytes skipped in a flood (more than 1 MiB between two looks), lines dropped for length,
    /// and rotations seen.
    pub bytes_skipped: u64,
    pub lines_too_long: u64,
    pub rotations: u64,
}

/// Where verdicts get their gateway's words: the live logs, a trace's recorded lines, or
/// nowhere.
#[derive(Default)]
pub enum GatewayWords {
    #[default]
    None,
    Live(live::LiveLogs),
    Recorded(recorded::RecordedWords),
}

impl GatewayWords {
    /// Annotate a batch of new verdicts (one look at each log for the whole batch).
    /// `behind`: upstrace is behind the kernel (live only). Matching lines is what costs most
    /// per verdict in a storm, and its cost grows as unmatched lines pile up: it is shed until
    /// upstrace catches up, so that the verdicts themselves are not lost.
    pub fn annotate(&mut self, verdicts: &mut [Verdict], behind: bool) {
        match self {
            GatewayWords::None => {}
            GatewayWords::Live(l) => l.annotate(verdicts, behind),
            GatewayWords::Recorded(r) => r.annotate(verdicts),
        }
    }

    pub fn stats(&self) -> Option<GatewayLogStats> {
        match self {
            GatewayWords::Live(l) => Some(l.stats()),
            _ => None,
        }
    }
}

/// What a verdict offers to match a line by.
#[derive(Debug, Clone)]
pub struct Query {
    pub unix_ms: i64,
    pub pid: u32,
    /// The gateway's client; not known for a response cut short (its status was passed on
    /// before the cut, on a write upstrace did not keep).
    pub client: Option<SocketAddr>,
    pub status: u16,
    /// Every upstream its attempts went to, the last one last.
    pub upstreams: Vec<String>,
}

impl Query {
    /// Status verdicts (a 5xx to a known client) and responses cut short (by the gateway's
    /// process and the upstream: their client is not known); inferred ones name no request
    /// the gateway's log could name.
    pub fn of(v: &Verdict, boot_offset_ns: i128) -> Option<Query> {
        let (client, status) = match v.delivered {
            Delivered::Status => (Some(v.client.parse().ok()?), v.status.filter(|s| *s >= 500)?),
            Delivered::Truncated => (None, v.status?),
            Delivered::Inferred => return None,
        };
        let mut upstreams: Vec<String> = v.attempts.iter().map(|a| a.upstream.clone()).collect();
        upstreams.push(v.upstream.clone());
        Some(Query { unix_ms: ((v.ts_ns as i128 + boot_offset_ns) / 1_000_000) as i64, pid: v.gateway.pid, client, status, upstreams })
    }
}

/// A line kept for matching, until a verdict takes it or it grows old.
#[derive(Debug, Clone)]
pub struct Retained {
    pub line: LogLine,
    pub taken: bool,
    /// The upstream it names, hashed once: a verdict compares it with every line it looks at.
    upstream_hash: u64,
}

/// A hash of an upstream's name (`None`: the line names none).
fn upstream_hash(upstream: Option<&String>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    upstream.hash(&mut h);
    h.finish()
}

/// Lines older than this (by the newest verdict's time) can explain no verdict any more: the
/// longest window (HAProxy's, a request waiting for its timeouts).
pub const RETAIN_MS: i64 = 600_000;
/// At most this many untaken lines kept per log (a flood of errors keeps the newest): the lines a
/// storm of 70,000 failed requests a second writes while upstrace is up to 50 ms behind, and
/// more (a line is a few hundred bytes).
pub const RETAIN_LINES: usize = 8192;
/// Taken lines stay in place until they reach the front (so a line's place follows from its
/// number), or until there are this many places in all: then they go, and lines are numbered
/// again.
const RETAIN_PLACES: usize = 4 * RETAIN_LINES;
/// A verdict looks at most at this many untaken lines that could be its own on each side of its
/// time, the nearest.
const MAX_LOOKED: usize = 256;

/// How well a line fits a verdict, lower first: (names another upstream or none, names no
/// cause, ms away: `Dialect::ms_away`).
type Rank = (bool, bool, i64);

/// What a verdict's lines are looked for by: its process, its status's time, and the stamps
/// its line can have.
#[derive(Clone, Copy)]
struct Window {
    pid: u32,
    at: i64,
    oldest: i64,
    latest: i64,
}

impl Window {
    /// Written by the verdict's process (or by a gateway whose lines name none).
    fn could_be(&self, line: &LogLine) -> bool {
        line.pid.is_none_or(|p| p == self.pid)
    }
}

/// The lines of one log waiting for their verdicts.
#[derive(Debug, Default)]
pub struct Pending {
    /// Every line kept, in the order read; a taken line stays as an empty placeholder until it
    /// reaches the front. Line number `n` is at `n - first`.
    lines: VecDeque<Retained>,
    first: u64,
    /// The untaken lines that name a client, by its address and the process that wrote them
    /// (when the line says), in the order read: a verdict whose client is known looks only at
    /// its client's lines of its own process and of none named. In a storm from many clients,
    /// or from one through many gateway workers, the window holds thousands of lines, and a
    /// verdict's own are a few among them.
    by_client: HashMap<(IpAddr, Option<u32>), VecDeque<u64>>,
    /// Lines that left without a verdict taking them.
    pub unmatched: u64,
    /// Untaken lines in `lines`.
    untaken: usize,
    /// The line numbers a verdict ranks, reused.
    scratch: Vec<u64>,
}

impl Pending {
    pub fn push(&mut self, line: LogLine) {
        if self.lines.len() >= RETAIN_PLACES {
            self.compact();
        }
        while self.untaken >= RETAIN_LINES {
            self.pop_front();
        }
        let number = self.first + self.lines.len() as u64;
        if let Some(ip) = line.client_ip {
            self.by_client.entry((ip, line.pid)).or_default().push_back(number);
        }
        let upstream_hash = upstream_hash(line.upstream.as_ref());
        self.lines.push_back(Retained { line, taken: false, upstream_hash });
        self.untaken += 1;
    }

    /// Untaken lines kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.untaken
    }

    /// Forget lines too old for any verdict still to come.
    pub fn age(&mut self, now_ms: i64) {
        while self.lines.front().is_some_and(|r| r.taken || r.line.unix_ms < now_ms - RETAIN_MS) {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        let Some(r) = self.lines.pop_front() else { return };
        let number = self.first;
        self.first += 1;
        if r.taken {
            return;
        }
        self.unmatched += 1;
        self.untaken -= 1;
        if let Some(ip) = r.line.client_ip {
            self.unindex((ip, r.line.pid), number);
        }
    }

    /// Drop the placeholders of taken lines and number the rest again. An untaken line near
    /// the front (its verdict late, or never coming) would otherwise hold them all, and push
    /// out lines still in their window.
    fn compact(&mut self) {
        self.lines.retain(|r| !r.taken);
        self.by_client.clear();
        let (lines, by_client) = (&self.lines, &mut self.by_client);
        for (i, r) in lines.iter().enumerate() {
            if let Some(ip) = r.line.client_ip {
                by_client.entry((ip, r.line.pid)).or_default().push_back(self.first + i as u64);
            }
        }
    }

    fn unindex(&mut self, key: (IpAddr, Option<u32>), number: u64) {
        let Some(numbers) = self.by_client.get_mut(&key) else { return };
        if let Ok(k) = numbers.binary_search(&number) {
            numbers.remove(k);
        }
        if numbers.is_empty() {
            self.by_client.remove(&key);
        }
    }

    fn place(&self, number: u64) -> usize {
        (number - self.first) as usize
    }

    fn at(&self, number: u64) -> &Retained {
        &self.lines[self.place(number)]
    }

    /// Take line `number`: it leaves the index, and `lines` once it reaches the front.
    fn take(&mut self, number: u64) -> LogLine {
        let i = self.place(number);
        let r = &mut self.lines[i];
        r.taken = true;
        // Moved out: a taken line is never read again but for its time (the window's edge).
        let emptied = LogLine { unix_ms: r.line.unix_ms, ..LogLine::default() };
        let line = std::mem::replace(&mut r.line, emptied);
        self.untaken -= 1;
        if let Some(ip) = line.client_ip {
            self.unindex((ip, line.pid), number);
        }
        while self.lines.front().is_some_and(|r| r.taken) {
            self.pop_front();
        }
        line
    }

    /// The line of this verdict's request, if exactly one story fits; it is taken. A verdict
    /// looks at the untaken lines that could be its own (written by its process, about its
    /// client) nearest its own time: at most `MAX_LOOKED` stamped up to it and as many after
    /// it, within the dialect's window. No allocation per line: in a storm the window holds
    /// thousands of lines, and every verdict looks.
    pub fn take_match(&mut self, q: &Query, dialect: Dialect) -> Option<(LogLine, Vec<MatchKey>)> {
        let window =
            Window { pid: q.pid, at: q.unix_ms, oldest: q.unix_ms - dialect.window_ms(), latest: q.unix_ms + dialect.max_ahead_ms() };
        let mut numbers = std::mem::take(&mut self.scratch);
        numbers.clear();
        // Stamps come nearly in reading order (HAProxy's by accept time, written at the end):
        // one binary search splits the lines at the verdict's time, and a line on the wrong
        // side of the cut is still looked at, from the other side.
        match q.client {
            Some(client) => {
                for writer in [Some(q.pid), None] {
                    if let Some(mine) = self.by_client.get(&(client.ip(), writer)) {
                        let cut = mine.partition_point(|&n| self.at(n).line.unix_ms <= window.at);
                        self.nearest(mine.range(..cut).rev().copied(), mine.range(cut..).copied(), window, &mut numbers);
                    }
                }
                // Both kinds (rare): in reading order again, as `best` takes them.
                numbers.sort_unstable();
            }
            // A response cut short: its client is not known, every kept line is looked at (rare).
            None => {
                let cut = self.lines.partition_point(|r| r.line.unix_ms <= window.at) as u64;
                let (first, end) = (self.first, self.first + self.lines.len() as u64);
                self.nearest((first..first + cut).rev(), first + cut..end, window, &mut numbers);
            }
        }
        let found = self.best(q, dialect, &numbers);
        self.scratch = numbers;
        let (number, keys) = found?;
        Some((self.take(number), keys.list()))
    }

    /// Of the lines `before` (newest first) and `after` (oldest first) the verdict's time, the
    /// untaken ones of its process within its window: at most `MAX_LOOKED` on each side, into
    /// `out` oldest first. Lines read ahead of a lagging verdict (a storm's next hundreds) then
    /// neither hide its own line nor are all it sees.
    fn nearest(&self, before: impl Iterator<Item = u64>, after: impl Iterator<Item = u64>, w: Window, out: &mut Vec<u64>) {
        // The second bound (untaken lines of any process) holds when the lines are another
        // process's: each verdict would read them all.
        let (start, mut untaken) = (out.len(), 0);
        for n in before {
            let r = self.at(n);
            if r.taken {
                continue;
            }
            if r.line.unix_ms < w.oldest || out.len() - start == MAX_LOOKED || untaken == 4 * MAX_LOOKED {
                break;
            }
            untaken += 1;
            if r.line.unix_ms <= w.latest && w.could_be(&r.line) {
                out.push(n);
            }
        }
        out[start..].reverse();
        let (before, mut untaken) = (out.len(), 0);
        for n in after {
            let r = self.at(n);
            // Out of stamp order (HAProxy): a later line may still be in the window.
            if r.taken || r.line.unix_ms > w.latest {
                continue;
            }
            if out.len() - before == MAX_LOOKED || untaken == 4 * MAX_LOOKED {
                break;
            }
            untaken += 1;
            if r.line.unix_ms >= w.oldest && w.could_be(&r.line) {
                out.push(n);
            }
        }
    }

    /// Of these lines (oldest first), the one this verdict's request left, if exactly one
    /// story fits. Rank: names the last attempt's upstream, then says what went wrong (nginx
    /// also logs what a FastCGI application wrote to stderr for the same request), then
    /// nearest in time, then oldest first.
    fn best(&self, q: &Query, dialect: Dialect, numbers: &[u64]) -> Option<(u64, Keys)> {
        let last = upstream_hash(q.upstreams.last());
        let named: Vec<u64> = q.upstreams.iter().map(|u| upstream_hash(Some(u))).collect();
        let no_upstream = upstream_hash(None);
        let mut best: Option<(Rank, u64, Keys)> = None;
        let mut tied_other_story = false;
        // Without the client, any line of another story nearby makes the choice a guess.
        let mut first_story: Option<u64> = None;
        let same_story = |a: &Retained, b: &Retained| a.line.claim == b.line.claim && a.upstream_hash == b.upstream_hash;
        for &n in numbers {
            let r = self.at(n);
            let names_known = r.upstream_hash == no_upstream || named.contains(&r.upstream_hash);
            let Some(keys) = fit(&r.line, names_known, q, dialect) else { continue };
            if q.client.is_none() {
                match first_story {
                    None => first_story = Some(n),
                    Some(f) if !same_story(self.at(f), r) => return None,
                    Some(_) => {}
                }
            }
            let rank = (r.upstream_hash != last || r.upstream_hash == no_upstream, r.line.claim.is_none(), dialect.ms_away(&r.line, q));
            match &best {
                // Two lines fit alike: fine if they tell the same story (the same claim about
                // the same upstream); otherwise which one is this request's is a guess.
                Some((b, j, _)) if *b == rank => tied_other_story |= !same_story(self.at(*j), r),
                Some((b, _, _)) if *b < rank => {}
                _ => {
                    best = Some((rank, n, keys));
                    tied_other_story = false;
                }
            }
        }
        let (_, n, keys) = best?;
        // The names compared by hash: the winner's by its words too.
        let found = &self.at(n).line;
        if tied_other_story || found.upstream.as_ref().is_some_and(|up| !q.upstreams.contains(up)) {
            return None;
        }
        Some((n, keys))
    }
}

/// The keys a line fits a verdict by, one bit per `MatchKey`: no allocation for the many
/// lines a verdict looks at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Keys(u8);

impl Keys {
    /// In the order a verdict shows them.
    const ORDER: [MatchKey; 6] =
        [MatchKey::Time, MatchKey::Pid, MatchKey::Client, MatchKey::ClientPort, MatchKey::Upstream, MatchKey::Status];

    fn with(self, key: MatchKey, set: bool) -> Self {
        if set { Keys(self.0 | 1 << key as u8) } else { self }
    }

    fn has(self, key: MatchKey) -> bool {
        self.0 & 1 << key as u8 != 0
    }

    fn list(self) -> Vec<MatchKey> {
        Self::ORDER.into_iter().filter(|&k| self.has(k)).collect()
    }
}

impl Dialect {
    /// How long before a verdict its line can be stamped.
    fn window_ms(self) -> i64 {
        match self {
            Dialect::NginxError => 3000,
            Dialect::HaproxyHttp => 600_000,
            Dialect::CaddyJson => 2000,
        }
    }

    /// How far a line's stamp is from a verdict's status, in ms. nginx stamps whole seconds:
    /// a line stamped 100 s was written in [100 s, 101 s), so a status at 100.999 s is 0 ms
    /// from it and 1 ms from a line stamped 101 s (which it must not take in a storm: the next
    /// second's verdict would then go without, its own line left behind).
    fn ms_away(self, line: &LogLine, q: &Query) -> i64 {
        let stamp_ms = match self {
            Dialect::NginxError => 1000,
            Dialect::HaproxyHttp | Dialect::CaddyJson => 1,
        };
        if q.unix_ms < line.unix_ms { line.unix_ms - q.unix_ms } else { (q.unix_ms - line.unix_ms - (stamp_ms - 1)).max(0) }
    }

    /// How long after a verdict's status its line can be stamped (a clock's second, and
    /// HAProxy's accept stamp against a status read a moment earlier).
    fn max_ahead_ms(self) -> i64 {
        match self {
            Dialect::NginxError | Dialect::HaproxyHttp => 1000,
            Dialect::CaddyJson => 2000,
        }
    }
}

/// Whether a line can be this verdict's, and by what (`names_known`: the upstream it names, if
/// any, is one of the verdict's). Every field the line has must agree;
/// time and the client's address are needed, and the pid or the client's port besides (for a
/// response cut short, whose client is not known: time, the pid and the upstream).
fn fit(line: &LogLine, names_known: bool, q: &Query, dialect: Dialect) -> Option<Keys> {
    let ahead = q.unix_ms - line.unix_ms;
    let in_time = match dialect {
        // Logged when the failure was handled, to the second, just before the status.
        Dialect::NginxError => (q.unix_ms.div_euclid(1000) - line.unix_ms.div_euclid(1000)) <= 2 && ahead >= -dialect.max_ahead_ms(),
        // Stamped when the request was accepted; a request may wait for its timeouts.
        Dialect::HaproxyHttp => (-dialect.max_ahead_ms()..=600_000).contains(&ahead),
        Dialect::CaddyJson => ahead.abs() <= dialect.max_ahead_ms(),
    };
    if !in_time {
        return None;
    }
    // Numbers only (the upstream's name by its hash, `names_known`): most lines a verdict
    // looks at are rejected.
    if !names_known || line.pid.is_some_and(|pid| pid != q.pid) || line.status.is_some_and(|s| s != q.status) {
        return None;
    }
    let mut client_port = false;
    if let Some(client) = q.client {
        if line.client_ip? != client.ip() || line.client_port.is_some_and(|p| p != client.port()) {
            return None;
        }
        client_port = line.client_port.is_some();
    }
    let keys = Keys::default()
        .with(MatchKey::Time, true)
        .with(MatchKey::Pid, line.pid.is_some())
        .with(MatchKey::Client, q.client.is_some())
        .with(MatchKey::ClientPort, client_port)
        .with(MatchKey::Upstream, line.upstream.is_some())
        .with(MatchKey::Status, line.status.is_some());
    let enough = match q.client {
        Some(_) => keys.has(MatchKey::Pid) || keys.has(MatchKey::ClientPort),
        // Only words a cut mid-response can have.
        None => {
            keys.has(MatchKey::Pid)
                && keys.has(MatchKey::Upstream)
                && matches!(line.claim, Some(Claim::ClosedEarly | Claim::Reset | Claim::ReadTimeout | Claim::ServerAborted))
        }
    };
    enough.then_some(keys)
}

/// Whether a line is about a failed request (worth keeping for a verdict).
pub fn about_a_failure(line: &LogLine) -> bool {
    line.claim.is_some() || line.status.is_some_and(|s| s >= 500) || (line.status.is_none() && line.client_ip.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nginx(at_s: i64, pid: u32, client: &str, upstream: &str, claim: Claim) -> LogLine {
        LogLine {
            unix_ms: at_s * 1000,
            pid: Some(pid),
            client_ip: Some(client.parse().unwrap()),
            client_port: None,
            upstream: Some(upstream.into()),
            status: None,
            claim: Some(claim),
            text: format!("{claim:?}"),
        }
    }

    fn query(at_ms: i64, pid: u32, client: &str, upstream: &str) -> Query {
        Query { unix_ms: at_ms, pid, client: Some(client.parse().unwrap()), status: 502, upstreams: vec![upstream.into()] }
    }

    #[test]
    fn a_cut_short_response_is_matched_by_its_worker_and_upstream() {
        let cut = |pid: u32, upstream: &str| Query { unix_ms: 100_300, pid, client: None, status: 200, upstreams: vec![upstream.into()] };
        let mut p = Pending::default();
        p.push(nginx(100, 7, "10.0.0.1", "10.1.0.2:80", Claim::ClosedEarly));
        assert!(p.take_match(&cut(8, "10.1.0.2:80"), Dialect::NginxError).is_none(), "another worker");
        assert!(p.take_match(&cut(7, "10.1.0.3:80"), Dialect::NginxError).is_none(), "another upstream");
        let (line, keys) = p.take_match(&cut(7, "10.1.0.2:80"), Dialect::NginxError).unwrap();
        assert_eq!((line.claim, keys), (Some(Claim::ClosedEarly), vec![MatchKey::Time, MatchKey::Pid, MatchKey::Upstream]));
        // A line that names neither pid nor upstream (HAProxy's) is no match without a client.
        let mut p = Pending::default();
        let mut l = nginx(100, 7, "10.0.0.1", "10.1.0.2:80", Claim::ServerAborted);
        (l.pid, l.upstream) = (None, None);
        p.push(l);
        assert!(p.take_match(&cut(7, "10.1.0.2:80"), Dialect::NginxError).is_none());
        // Another request's refusal is no cut; and two stories nearby make it a guess.
        let mut p = Pending::default();
        p.push(nginx(100, 7, "10.0.0.1", "10.1.0.2:80", Claim::Refused));
        assert!(p.take_match(&cut(7, "10.1.0.2:80"), Dialect::NginxError).is_none());
        p.push(nginx(101, 7, "10.0.0.1", "10.1.0.2:80", Claim::ClosedEarly));
        p.push(nginx(100, 7, "10.0.0.1", "10.1.0.2:80", Claim::Reset));
        assert!(p.take_match(&cut(7, "10.1.0.2:80"), Dialect::NginxError).is_none());
    }

    #[test]
    fn matches_by_pid_time_client_and_upstream_never_by_guess() {
        let mut p = Pending::default();
        p.push(nginx(100, 7, "10.0.0.1", "10.1.0.2:80", Claim::Refused));
        // Another worker, another client, another upstream, too old: none fits.
        assert!(p.take_match(&query(100_500, 8, "10.0.0.1:5000", "10.1.0.2:80"), Dialect::NginxError).is_none());
        assert!(p.take_match(&query(100_500, 7, "10.0.0.9:5000", "10.1.0.2:80"), Dialect::NginxError).is_none());
        assert!(p.take_match(&query(100_500, 7, "10.0.0.1:5000", "10.1.0.3:80"), Dialect::NginxError).is_none());
        assert!(p.take_match(&query(110_000, 7, "10.0.0.1:5000", "10.1.0.2:80"), Dialect::NginxError).is_none());
        let (line, keys) = p.take_match(&query(100_500, 7, "10.0.0.1:5000", "10.1.0.2:80"), Dialect::NginxError).unwrap();
        assert_eq!(line.claim, Some(Claim::Refused));
        assert_eq!(keys, [MatchKey::Time, MatchKey::Pid, MatchKey::Client, MatchKey::Upstream]);
        // Taken once only.
        assert!(p.take_match(&query(100_500, 7, "10.0.0.1:5000", "10.1.0.2:80"), Dialect::NginxError).is_none());
    }

    #[test]
    fn two_lines_that_fit_alike_but_differ_match_nothing() {
        let mut p = Pending::default();
        p.push(nginx(100, 7, "10.0.0.1", "10.1.0.2:80", Claim::Refused));
        p.push(nginx(100, 7, "10.0.0.1", "10.1.0.2:80", Claim::ReadTimeout));
        assert!(p.take_match(&query(100_200, 7, "10.0.0.1:5000", "10.1.0.2:80"), Dialect::NginxError).is_none());
        // The same story twice (a flood of one failure): the oldest first, then the next.
        let mut p = Pending::default();
        for _ in 0..2 {
            p.push(nginx(100, 7, "10.0.0.1", "10.1.0.2:80", Claim::Refused));
        }
        assert!(p.take_match(&query(100_200, 7, "10.0.0.1:5000", "10.1.0.2:80"), Dialect::NginxError).is_some());
        // The taken line leaves; the other waits for its own verdict.
        assert!(p.len() == 1 && p.lines.len() == 1 && !p.lines[0].taken);
        assert!(p.take_match(&query(100_200, 7, "10.0.0.1:5000", "10.1.0.2:80"), Dialect::NginxError).is_some());
    }

    #[test]
    fn a_line_that_names_a_cause_wins_over_the_applications_words() {
        let mut p = Pending::default();
        let mut stderr = nginx(100, 7, "10.0.0.1", "unix:/run/php.sock", Claim::Reset);
        stderr.claim = None;
        p.push(stderr);
        p.push(nginx(100, 7, "10.0.0.1", "unix:/run/php.sock", Claim::ClosedEarly));
        let (line, _) = p.take_match(&query(100_200, 7, "10.0.0.1:5000", "unix:/run/php.sock"), Dialect::NginxError).unwrap();
        assert_eq!(line.claim, Some(Claim::ClosedEarly));
    }

    #[test]
    fn a_flood_keeps_the_newest_lines_and_counts_the_rest() {
        let mut p = Pending::default();
        for i in 0..(RETAIN_LINES + 10) {
            p.push(nginx(100 + i as i64 / 100, 7, "10.0.0.1", "10.1.0.2:80", Claim::Reset));
        }
        assert_eq!((p.len(), p.unmatched), (RETAIN_LINES, 10));
        p.age(1_000_000);
        assert_eq!((p.len(), p.lines.len(), p.unmatched), (0, 0, RETAIN_LINES as u64 + 10));
        assert!(p.by_client.is_empty());
    }

    /// Verdicts that lag behind a storm's log: the lines stamped after a verdict's own could be
    /// (more than a second later for nginx) are the newest, and many; they do not hide its line.
    #[test]
    fn lines_too_new_for_a_lagging_verdict_do_not_hide_its_own() {
        let line = own_line_behind(nginx(103, 7, "10.0.0.1", "10.1.0.2:80", Claim::Refused));
        assert_eq!(line.unix_ms, 100_000);
    }

    /// The line a verdict (pid 7, client 10.0.0.1, at 100.4 s) takes when its own line (at
    /// 100 s) is followed by more copies of `other` than it looks at.
    fn own_line_behind(other: LogLine) -> LogLine {
        let mut p = Pending::default();
        p.push(nginx(100, 7, "10.0.0.1", "10.1.0.2:80", Claim::Refused));
        for _ in 0..MAX_LOOKED + 10 {
            p.push(other.clone());
        }
        p.take_match(&query(100_400, 7, "10.0.0.1:5000", "10.1.0.2:80"), Dialect::NginxError).expect("its own line").0
    }

    /// Many clients: a burst of another client's lines, newer than this verdict's own and more
    /// than it looks at, does not hide it.
    #[test]
    fn another_clients_burst_does_not_hide_a_verdicts_line() {
        let line = own_line_behind(nginx(100, 7, "10.0.0.9", "10.1.0.2:80", Claim::Refused));
        assert_eq!(line.client_ip, Some("10.0.0.1".parse().unwrap()));
    }

    /// Many gateway workers behind one client address (a load balancer): a verdict looks at its
    /// own process's lines, however many the other workers wrote since.
    #[test]
    fn other_workers_lines_do_not_hide_a_verdicts_own() {
        let mut p = Pending::default();
        p.push(nginx(100, 7, "10.0.0.1", "10.1.0.2:80", Claim::Refused));
        for i in 0..4 * MAX_LOOKED + 10 {
            p.push(nginx(100, 8 + i as u32 % 15, "10.0.0.1", "10.1.0.2:80", Claim::Refused));
        }
        let (line, _) = p.take_match(&query(100_400, 7, "10.0.0.1:5000", "10.1.0.2:80"), Dialect::NginxError).expect("its own line");
        assert_eq!(line.pid, Some(7));
    }

    #[test]
    fn taken_lines_leave_the_index_and_untaken_ones_are_counted_once() {
        let mut p = Pending::default();
        // Two workers' lines, interleaved, more of each than a verdict looks at; verdicts come
        // only for worker 7's.
        let each = MAX_LOOKED + 44;
        for i in 0..2 * each {
            p.push(nginx(100, 7 + i as u32 % 2, "10.0.0.1", "10.1.0.2:80", Claim::Refused));
        }
        for _ in 0..each {
            assert!(p.take_match(&query(100_200, 7, "10.0.0.1:5000", "10.1.0.2:80"), Dialect::NginxError).is_some());
        }
        assert!(p.take_match(&query(100_200, 7, "10.0.0.1:5000", "10.1.0.2:80"), Dialect::NginxError).is_none());
        // The taken ones are out of the index (not stepped over by every later verdict).
        assert_eq!(p.len(), each);
        let indexed: Vec<u64> = p.by_client.values().flatten().copied().collect();
        assert_eq!(indexed.len(), each);
        assert!(indexed.iter().all(|&n| p.at(n).line.pid == Some(8) && !p.at(n).taken));
        p.age(1_000_000);
        assert_eq!((p.len(), p.lines.len(), p.unmatched), (0, 0, each as u64));
    }

    /// Many clients, each with a backlog: a verdict looks only at its own client's lines, so
    /// the others' backlogs, however long, neither hide its line nor make it slower.
    #[test]
    fn a_verdict_looks_only_at_its_clients_lines() {
        let mut p = Pending::default();
        let others = |p: &mut Pending, count: usize| {
            for c in 0..count {
                p.push(nginx(100, 7, &format!("10.0.{}.{}", c / 250, 1 + c % 250), "10.1.0.2:80", Claim::Refused));
            }
        };
        others(&mut p, 100);
        p.push(nginx(100, 7, "10.9.0.1", "10.1.0.2:80", Claim::Reset));
        // More than the 1,024 untaken lines a verdict without an index would step over.
        others(&mut p, RETAIN_LINES - 101);
        let (line, _) = p.take_match(&query(100_200, 7, "10.9.0.1:5000", "10.1.0.2:80"), Dialect::NginxError).expect("its line");
        assert_eq!(line.claim, Some(Claim::Reset));
        // The lines it ranked (kept for the next verdict): its own only.
        assert_eq!(p.scratch.len(), 1);
        // A client whose lines are all another worker's gets none, and ranks none.
        assert!(p.take_match(&query(100_200, 8, "10.0.0.1:5000", "10.1.0.2:80"), Dialect::NginxError).is_none());
        assert!(p.scratch.is_empty());
        assert_eq!(p.len(), RETAIN_LINES - 1);
    }

    /// One line waits at the front (its verdict comes last) while more lines than there are
    /// places are read and taken behind it: the placeholders go, the waiting line stays.
    #[test]
    fn placeholders_go_when_places_fill_and_a_waiting_line_stays() {
        let mut p = Pending::default();
        p.push(nginx(100, 9, "10.0.0.9", "10.1.0.2:80", Claim::Reset));
        for _ in 0..RETAIN_PLACES + 10 {
            p.push(nginx(100, 7, "10.0.0.1", "10.1.0.2:80", Claim::Refused));
            assert!(p.take_match(&query(100_200, 7, "10.0.0.1:5000", "10.1.0.2:80"), Dialect::NginxError).is_some());
        }
        assert!(p.lines.len() < RETAIN_PLACES);
        assert_eq!((p.len(), p.unmatched), (1, 0));
        let (line, _) = p.take_match(&query(100_200, 9, "10.0.0.9:5000", "10.1.0.2:80"), Dialect::NginxError).expect("the waiting line");
        assert_eq!(line.claim, Some(Claim::Reset));
    }

    /// A verdict at a second's end, lagging a storm: the next second's lines are read already,
    /// more than it looks at, and tell another story (a reset). Its own line (stamped in its
    /// own second, nginx's whole seconds) is the one it takes: a next second's line is later
    /// than its status, and would make a false disagreement.
    #[test]
    fn a_verdict_at_a_seconds_end_takes_its_own_seconds_line() {
        let mut p = Pending::default();
        p.push(nginx(100, 7, "10.0.0.1", "10.1.0.2:80", Claim::Refused));
        for _ in 0..MAX_LOOKED + 44 {
            p.push(nginx(101, 7, "10.0.0.1", "10.1.0.2:80", Claim::Reset));
        }
        let (line, _) = p.take_match(&query(100_990, 7, "10.0.0.1:5000", "10.1.0.2:80"), Dialect::NginxError).expect("a line");
        assert_eq!(line.claim, Some(Claim::Refused));
    }

    /// A storm as upstrace lives it: two workers write 30,000 lines a second (stamped to the
    /// second), read every 10 ms; each verdict comes 30 ms after its line (the engine's
    /// settling), when hundreds more are read. Lines of one story are taken out of order, and
    /// the placeholders of taken lines must not push out lines still waiting: every verdict
    /// finds a line.
    #[test]
    fn a_lagging_storm_finds_every_verdict_a_line() {
        let (rate, settle_ms) = (30_000, 30);
        let at = |i: i64| 100_000 + i * 1000 / rate;
        let worker = |i: i64| 7 + (i % 2) as u32;
        let mut p = Pending::default();
        let n = 2 * rate;
        let (mut read, mut judged, mut unmatched) = (0, 0, 0);
        let mut now = at(0);
        while judged < n {
            now += 10;
            while read < n && at(read) <= now {
                p.push(nginx(at(read).div_euclid(1000), worker(read), "10.0.0.1", "10.1.0.2:80", Claim::Refused));
                read += 1;
            }
            while judged < n && at(judged) + settle_ms <= now {
                let q = query(at(judged), worker(judged), "10.0.0.1:5000", "10.1.0.2:80");
                unmatched += usize::from(p.take_match(&q, Dialect::NginxError).is_none());
                judged += 1;
            }
            p.age(now);
        }
        assert_eq!((unmatched, p.unmatched, p.len()), (0, 0, 0));
    }

    #[test]
    fn agreement_is_judged_against_the_kernel_cause() {
        assert_eq!(agreement(Some(Claim::Refused), Cause::Refused), Agreement::Agrees);
        assert_eq!(agreement(Some(Claim::Refused), Cause::Reset), Agreement::Disagrees);
        assert_eq!(agreement(Some(Claim::HeadTooLarge), Cause::ClosedEarly), Agreement::Disagrees);
        assert_eq!(agreement(Some(Claim::ConnectFailed), Cause::Refused), Agreement::Agrees);
        assert_eq!(agreement(Some(Claim::Refused), Cause::Undecided), Agreement::Unknown);
        assert_eq!(agreement(None, Cause::Refused), Agreement::Unknown);
    }
}
