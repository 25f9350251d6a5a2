//! The attribution engine: kernel events in, verdicts out. Pure and deterministic: no I/O,
//! and the only clock is the one injected through the events' stamps and `advance`.
//!
//! Each 5xx status line the gateway writes is linked to the upstream attempts made for that
//! request (same gateway thread, nearest end in time, and the retries that came just before
//! it), then the evidence decides a class and cause.
use std::net::SocketAddr;

use serde::Serialize;

use crate::engine::{
    decode::{Kind, KernelEvent, TCP_SYN_SENT, errno_name, icmp_name, signal_name},
    http::{self, ResponseHead, invalid_http},
    track::{Attempt, Death, Evidence, Tracker},
};

/// How long after a status line the engine waits for the events that close the story (the
/// gateway may close the upstream right after writing): well inside the 100 ms budget.
pub const SETTLE_NS: u64 = 30_000_000;
/// Attempts that ended this long before a status can still explain it (gateway timeouts).
const LOOKBACK_NS: u64 = crate::engine::track::KEEP_NS;
/// A gateway writes its 5xx within this long of handling the failure (or later, for its own
/// timeouts, which end the attempt at the status itself).
const FAILURE_TO_STATUS_NS: u64 = 1_000_000_000;
/// A failed attempt ending this close before the next one started was retried.
const RETRY_GAP_NS: u64 = 200_000_000;
/// A process death this close to a connection's end explains it.
const DEATH_WINDOW_NS: u64 = 2_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    Upstream,
    Firewall,
    Network,
    Gateway,
    Unknown,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Gateway {
    pub pid: u32,
    pub comm: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AttemptSummary {
    pub upstream: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src: Option<SocketAddr>,
    pub reused: bool,
    pub outcome: String,
    pub t_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_ms: Option<f64>,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub retransmits: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EvidenceItem {
    pub t_ms: f64,
    pub event: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Verdict {
    /// CLOCK_MONOTONIC stamp of the status line write.
    pub ts_ns: u64,
    pub gateway: Gateway,
    pub client: String,
    pub status: u16,
    /// "status": the client got this status; "truncated": it got a cut-short response.
    pub delivered: String,
    pub upstream: String,
    pub class: Class,
    pub cause: String,
    pub summary: String,
    pub attempts: Vec<AttemptSummary>,
    pub evidence: Vec<EvidenceItem>,
}

struct PendingStatus {
    ev: KernelEvent,
}

/// A response cut short is judged this long after its connection's last event, so a 5xx
/// for the same attempt (which takes precedence) has been judged first.
const TRUNCATION_WAIT_NS: u64 = 200_000_000;

#[derive(Default)]
pub struct Engine {
    pub tracker: Tracker,
    /// Statuses waiting for their settle time, in arrival (= time) order.
    pending: std::collections::VecDeque<PendingStatus>,
    /// Attempts whose response began and whose connection then ended: maybe cut short.
    /// (due time, attempt), in the order they were queued; the set keeps it duplicate-free.
    truncation_checks: std::collections::VecDeque<(u64, u64)>,
    truncation_queued: std::collections::HashSet<u64>,
    now_ns: u64,
    last_expire_ns: u64,
}

impl Engine {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed one event; returns the verdicts that became final.
    pub fn handle(&mut self, ev: &KernelEvent) -> Vec<Verdict> {
        self.tracker.handle(ev);
        if ev.kind == Kind::HttpStatus && ev.value >= 500 {
            self.pending.push_back(PendingStatus { ev: ev.clone() });
        }
        if matches!(ev.kind, Kind::StateChange | Kind::ResetReceived | Kind::RecvEnd) {
            if let Some(a) = self.tracker.current_attempt(ev.sock) {
                if a.response_ns.is_some() && a.end_ns().is_some() && self.truncation_queued.insert(a.id) {
                    self.truncation_checks.push_back((a.last_ns + TRUNCATION_WAIT_NS, a.id));
                }
            }
        }
        self.advance(ev.ts_ns)
    }

    /// Move the clock (CLOCK_MONOTONIC ns); returns verdicts whose settle time has passed.
    pub fn advance(&mut self, now_ns: u64) -> Vec<Verdict> {
        self.now_ns = self.now_ns.max(now_ns);
        let mut out = Vec::new();
        while self.pending.front().is_some_and(|p| p.ev.ts_ns + SETTLE_NS <= self.now_ns) {
            let p = self.pending.pop_front().unwrap();
            out.push(self.judge(&p.ev));
        }
        out.extend(self.check_truncations(false));
        if self.now_ns.saturating_sub(self.last_expire_ns) > 1_000_000_000 {
            self.last_expire_ns = self.now_ns;
            self.tracker.expire(self.now_ns);
        }
        out
    }

    /// Decide every pending status now (end of a replay or of a live run).
    pub fn flush(&mut self) -> Vec<Verdict> {
        let pending = std::mem::take(&mut self.pending);
        let mut out: Vec<Verdict> = pending.iter().map(|p| self.judge(&p.ev)).collect();
        out.extend(self.check_truncations(true));
        out
    }

    /// Responses whose upstream connection ended before the announced length arrived (or
    /// with a reset or a crash): the client got the real status and a short body.
    fn check_truncations(&mut self, all: bool) -> Vec<Verdict> {
        let now = self.now_ns;
        let mut out = Vec::new();
        while let Some(&(due, id)) = self.truncation_checks.front() {
            if !all && due > now {
                break;
            }
            self.truncation_checks.pop_front();
            let Some(a) = self.tracker.attempt(id) else {
                self.truncation_queued.remove(&id);
                continue;
            };
            if a.consumed {
                self.truncation_queued.remove(&id);
                continue;
            }
            // More happened on the connection since it was queued: wait again.
            if !all && a.last_ns + TRUNCATION_WAIT_NS > now {
                self.truncation_checks.push_back((a.last_ns + TRUNCATION_WAIT_NS, id));
                continue;
            }
            self.truncation_queued.remove(&id);
            if let Some(v) = self.judge_truncation(a) {
                out.push(v);
                if let Some(a) = self.tracker.attempts.get_mut(&id) {
                    a.consumed = true;
                }
            }
        }
        out
    }

    fn judge_truncation(&self, a: &Attempt) -> Option<Verdict> {
        let head = a.head.as_deref()?;
        let parsed = ResponseHead::parse(head)?;
        if matches!(parsed.status, 100..=199 | 204 | 304) {
            return None;
        }
        let end = a.end_ns()?;
        let crash = self.dead_listener(a, a.started_ns, end + DEATH_WINDOW_NS / 4).filter(|d| d.crashed());
        let reset = a.rst.is_some() || a.recv_end.is_some_and(|x| x.1 == -104);
        let expected = parsed.header_len.zip(parsed.content_length).map(|(h, c)| h + c);
        let short = expected.is_some_and(|total| a.bytes_recv < total);
        // Without a known length, a FIN is how a response may legitimately end.
        if !short && !(expected.is_none() && (reset || crash.is_some())) {
            return None;
        }
        let up = a.upstream();
        let got = match (parsed.header_len, expected) {
            (Some(h), Some(total)) => format!("{} of {} body bytes", a.bytes_recv.saturating_sub(h), total - h),
            _ => format!("{} bytes", a.bytes_recv),
        };
        let (cause, how, extra) = match crash {
            Some(d) => {
                let sig = d.signal.map(signal_name).unwrap_or("an error exit");
                ("crashed", format!("upstream process {} ({}) died ({sig})", d.pid, d.comm), vec![d.evidence.clone()])
            }
            None if reset => ("reset", format!("{up} reset the connection"), vec![]),
            None => ("closed-early", format!("{up} closed the connection"), vec![]),
        };
        let t = end;
        let ms = |ns: u64| round3((ns as f64 - t as f64) / 1e6);
        let routine = a.routine_evidence();
        let mut evidence: Vec<EvidenceItem> = a
            .evidence
            .iter()
            .chain(routine.iter())
            .chain(extra.iter())
            .map(|e| EvidenceItem { t_ms: ms(e.ts_ns), event: e.event.clone(), detail: e.detail.clone() })
            .collect();
        evidence.sort_by(|x, y| x.t_ms.total_cmp(&y.t_ms));
        Some(Verdict {
            ts_ns: t,
            gateway: Gateway { pid: a.pid, comm: a.comm.clone() },
            client: "?".into(),
            status: parsed.status,
            delivered: "truncated".into(),
            upstream: up.clone(),
            class: Class::Upstream,
            cause: cause.into(),
            summary: format!(
                "a client got {} with a cut-short body: {how} after {got}, once the headers had been passed on",
                parsed.status
            ),
            attempts: vec![summarize(a, t)],
            evidence,
        })
    }

    pub fn expire(&mut self) {
        self.tracker.expire(self.now_ns);
    }

    /// Attempts of the request behind this status. A gateway thread writes a 5xx right after
    /// it handles the failure, and handles failures in the order they happened; so the status
    /// takes the oldest unclaimed failure of that thread that ended shortly before it (or its
    /// own timeout close), then any retries that followed it back to back (the next upstream,
    /// or a fresh connection after a reused keep-alive one failed). Oldest first.
    fn link(&self, status: &KernelEvent) -> Vec<u64> {
        let t = status.ts_ns;
        let by_thread = self.candidates(status, true);
        let ids = if by_thread.is_empty() { self.candidates(status, false) } else { by_thread };
        let attempts: Vec<&Attempt> = ids.iter().filter_map(|id| self.tracker.attempt(*id)).collect();
        let ended_recently = |a: &&Attempt| a.end_ns().is_some_and(|e| e + FAILURE_TO_STATUS_NS >= t);
        let first = attempts
            .iter()
            .copied()
            .filter(ended_recently)
            .min_by_key(|a| (a.end_ns(), a.started_ns))
            // Nothing ended: the oldest request still in flight (a stall the gateway has not
            // closed yet).
            .or_else(|| attempts.iter().copied().filter(|a| a.end_ns().is_none()).min_by_key(|a| a.request_ns.unwrap_or(a.started_ns)));
        let Some(first) = first else { return vec![] };
        let mut chain = vec![first.id];
        let mut last = first;
        while let Some(end) = last.end_ns() {
            let next = attempts
                .iter()
                .copied()
                // A retry goes to the next upstream, or to a fresh connection after a reused
                // one failed; back-to-back fresh attempts to the same upstream are other
                // requests that the thread handled one after another.
                .filter(|a| last.reused || a.dst != last.dst)
                .filter(|a| !chain.contains(&a.id) && a.started_ns >= end && a.started_ns - end <= RETRY_GAP_NS && a.started_ns <= t)
                .min_by_key(|a| a.started_ns);
            match next {
                Some(n) => {
                    chain.push(n.id);
                    last = n;
                }
                None => break,
            }
        }
        chain
    }

    fn candidates(&self, status: &KernelEvent, same_thread: bool) -> Vec<u64> {
        let t = status.ts_ns;
        let ids: Vec<u64> = if same_thread {
            let queue = self.tracker.by_tid.get(&status.tid);
            queue.into_iter().flatten().filter(|&&(started, _)| started <= t).map(|&(_, id)| id).collect()
        } else {
            // Same process, other threads (bounded by the per-thread indexes).
            self.tracker
                .by_tid
                .values()
                // The newest few of each thread: a handoff between threads is immediate.
                .flat_map(|q| q.iter().rev().filter(|&&(started, _)| started <= t).take(64))
                .map(|&(_, id)| id)
                .filter(|id| self.tracker.attempt(*id).is_some_and(|a| a.pid == status.pid))
                .collect()
        };
        ids.into_iter()
            .filter(|id| {
                let Some(a) = self.tracker.attempt(*id) else { return false };
                !a.consumed
                    && a.started_ns <= t
                    && t.saturating_sub(a.last_ns.max(a.started_ns)) <= LOOKBACK_NS
                    && !(a.succeeded() && a.end_ns().is_none_or(|e| e > t))
                    && !(a.succeeded() && a.response_ns.is_some_and(|r| r < t.saturating_sub(LOOKBACK_NS)))
                    && a.end_ns().is_none_or(|e| e <= t + SETTLE_NS)
            })
            .collect()
    }

    fn judge(&mut self, status: &KernelEvent) -> Verdict {
        self.tracker.prune_thread(status.tid, status.ts_ns, FAILURE_TO_STATUS_NS);
        let chain = self.link(status);
        for id in &chain {
            if let Some(a) = self.tracker.attempts.get_mut(id) {
                a.consumed = true;
            }
        }
        self.tracker.forget_explained(status.tid, &chain);
        let attempts: Vec<&Attempt> = chain.iter().filter_map(|id| self.tracker.attempt(*id)).collect();
        let t = status.ts_ns;
        let (class, cause, summary, extra) = match attempts.last() {
            Some(primary) => self.decide(primary, status),
            None => (
                Class::Unknown,
                "no-upstream-attempt".to_string(),
                format!(
                    "{} answered {} without any upstream connection attempt seen on this host (no healthy server, a limit, or a protocol upstrace does not follow)",
                    status.comm, status.value
                ),
                vec![],
            ),
        };
        let ms = |ns: u64| (ns as f64 - t as f64) / 1e6;
        let routine: Vec<Evidence> = attempts.iter().flat_map(|a| a.routine_evidence()).collect();
        let mut evidence: Vec<EvidenceItem> = attempts
            .iter()
            .flat_map(|a| a.evidence.iter())
            .chain(routine.iter())
            .chain(extra.iter())
            .map(|e| EvidenceItem { t_ms: round3(ms(e.ts_ns)), event: e.event.clone(), detail: e.detail.clone() })
            .collect();
        evidence.push(EvidenceItem {
            t_ms: 0.0,
            event: "http_status".into(),
            detail: status.detail(),
        });
        evidence.sort_by(|a, b| a.t_ms.total_cmp(&b.t_ms));
        let verdict = Verdict {
            ts_ns: t,
            gateway: Gateway { pid: status.pid, comm: status.comm.clone() },
            client: status.dst.map(|a| a.to_string()).unwrap_or_else(|| "?".into()),
            status: status.value as u16,
            delivered: "status".into(),
            upstream: attempts.last().map(|a| a.upstream()).unwrap_or_else(|| "?".into()),
            class,
            cause,
            summary,
            attempts: attempts.iter().map(|a| summarize(a, t)).collect(),
            evidence,
        };
        // The verdict carries the evidence now; explained attempts stay only briefly, as
        // markers for late events of their sockets, and should weigh little meanwhile.
        for id in &chain {
            if let Some(a) = self.tracker.attempts.get_mut(id) {
                a.evidence = Vec::new();
            }
        }
        verdict
    }

    /// The listener of the attempt's upstream port that died before `until`, if any, and
    /// no new listener took the port since.
    fn dead_listener(&self, a: &Attempt, from: u64, until: u64) -> Option<&Death> {
        let port = a.dst?.port();
        let listeners = self.tracker.listeners.get(&port)?;
        let ip = a.dst?.ip();
        self.tracker
            .deaths
            .iter()
            .rev()
            .filter(|d| d.ts_ns <= until + 1_000_000 && d.ts_ns + DEATH_WINDOW_NS >= from)
            .find(|d| {
                listeners.iter().any(|l| {
                    l.pid == d.pid
                        && l.addr.is_none_or(|la| la.ip().is_unspecified() || la.ip() == ip)
                        && !listeners.iter().any(|n| n.ts_ns > d.ts_ns && n.pid != d.pid)
                })
            })
    }

    /// An accept-queue overflow of the attempt's upstream port seen around its lifetime.
    fn overflow_for(&self, a: &Attempt, from: u64, until: u64) -> Option<&(u64, SocketAddr, Evidence)> {
        let dst = a.dst?;
        self.tracker.overflows.iter().rev().find(|(ts, addr, _)| {
            addr.port() == dst.port()
                && (addr.ip().is_unspecified() || addr.ip() == dst.ip())
                && *ts + 2_000_000_000 >= from
                && *ts <= until + 1_000_000_000
        })
    }

    fn decide(&self, a: &Attempt, status: &KernelEvent) -> (Class, String, String, Vec<Evidence>) {
        let up = a.upstream();
        let gw = format!("{} answered {}", status.comm, status.value);
        let end = a.end_ns().unwrap_or(status.ts_ns);
        let ms = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1e6;
        let death_note = |d: &Death| {
            let how = match (d.signal, d.exit_code) {
                (Some(sig), _) => format!("killed by {}", signal_name(sig)),
                (None, Some(code)) => format!("exited with code {code}"),
                _ => "exited".into(),
            };
            (format!("upstream process {} ({}) {how}", d.pid, d.comm), vec![d.evidence.clone()])
        };

        // 1. connect(2) failed at once: routing, local resources, unix sockets.
        if let Some((_, ret)) = a.connect_err {
            let errno = -ret;
            let e = format!("{} ({errno})", errno_name(errno));
            return match errno {
                101 => (Class::Network, "no-route".into(), format!("{gw}: no route to {up}: connect failed with {e} (network unreachable from the gateway)"), vec![]),
                113 => (Class::Network, "no-route".into(), format!("{gw}: no route to {up}: connect failed at once with {e} (unreachable route)"), vec![]),
                22 => (Class::Network, "no-route".into(), format!("{gw}: route to {up} is a blackhole: connect failed with {e}"), vec![]),
                13 | 1 => (Class::Network, "no-route".into(), format!("{gw}: route to {up} is prohibited: connect failed with {e}"), vec![]),
                99 | 24 | 23 | 105 => (Class::Gateway, "local-resources".into(), format!("{gw}: the gateway could not open a connection to {up}: {e} (ephemeral ports or file descriptors exhausted)"), vec![]),
                11 => (Class::Upstream, "overloaded".into(), format!("{gw}: {up} is overloaded: its listen backlog is full ({e})"), vec![]),
                111 | 2 => (Class::Upstream, "refused".into(), format!("{gw}: {up} refused the connection: nothing listening ({e})"), vec![]),
                _ => (Class::Unknown, "connect-failed".into(), format!("{gw}: connect to {up} failed with {e}"), vec![]),
            };
        }

        // 2. ICMP errors about this flow say who answered and why.
        if let Some((_, type_code, from)) = a.icmp.first() {
            let (t, c) = (type_code >> 8, type_code & 0xff);
            let what = icmp_name(*type_code);
            let fw_drop = a.drops.iter().find(|d| d.1 == "NETFILTER_DROP");
            if t == 3 && matches!(c, 9 | 10 | 13) {
                return (Class::Firewall, "rejected".into(), format!("{gw}: a firewall rejected the connection to {up}: ICMP {what} from {from}"), vec![]);
            }
            if t == 3 && c == 3 {
                let where_ = fw_drop.map(|d| format!(", netfilter dropped the SYN in netns {}", d.2)).unwrap_or_default();
                return (Class::Firewall, "rejected".into(), format!("{gw}: a firewall rejected the connection to {up}: ICMP {what} from {from} for a TCP port{where_}"), vec![]);
            }
            if t == 3 {
                return (Class::Network, "unreachable".into(), format!("{gw}: {up} is unreachable: ICMP {what} from {from}"), vec![]);
            }
            return (Class::Network, "unreachable".into(), format!("{gw}: {up}: ICMP {what} from {from}"), vec![]);
        }

        // 3. Local packet drops on the flow.
        if let Some((_, reason, netns)) = a.drops.first() {
            match reason.as_str() {
                "NETFILTER_DROP" if a.rst.is_some() => {
                    return (Class::Firewall, "rejected".into(), format!("{gw}: a firewall rejected the connection to {up} with a TCP reset (netfilter dropped the SYN in netns {netns})"), vec![]);
                }
                "NETFILTER_DROP" => {
                    return (Class::Firewall, "dropped".into(), format!("{gw}: a firewall dropped packets to {up} (netfilter drop in netns {netns}; {} SYN retransmits)", a.syn_retransmits), vec![]);
                }
                "NEIGH_FAILED" | "NEIGH_QUEUEFULL" | "NEIGH_DEAD" | "NEIGH_CREATEFAIL" => {
                    return (Class::Network, "unreachable".into(), format!("{gw}: {up} is unreachable: no ARP/neighbour answer ({reason} in netns {netns})"), vec![]);
                }
                "IP_OUTNOROUTES" | "IP_INNOROUTES" | "IP_RPFILTER" => {
                    return (Class::Network, "no-route".into(), format!("{gw}: no route for packets to {up} ({reason} in netns {netns})"), vec![]);
                }
                "TCP_LISTEN_OVERFLOW" => {
                    return (Class::Upstream, "overloaded".into(), format!("{gw}: {up} is overloaded: its listen backlog overflowed and SYNs were dropped"), vec![]);
                }
                "NO_SOCKET" => {}
                _ => {
                    return (Class::Network, "loss".into(), format!("{gw}: packets to or from {up} were lost on the path ({reason} in netns {netns}; {} retransmits)", a.syn_retransmits + a.retransmits), vec![]);
                }
            }
        }

        let never_connected = a.connected_ns.is_none();
        let refused = a.rst.is_some_and(|(_, s)| s == TCP_SYN_SENT) || (never_connected && a.sock_err.is_some_and(|(_, e)| e == 111));

        // 4. Refused: a crashed listener, or nothing listening.
        if refused {
            if let Some(d) = self.dead_listener(a, 0, end) {
                let (who, ev) = death_note(d);
                let ago = ms(d.ts_ns, end);
                if d.crashed() {
                    return (Class::Upstream, "crashed".into(), format!("{gw}: {up} refused the connection because its listener died: {who} {ago:.0} ms earlier"), ev);
                }
                return (Class::Upstream, "refused".into(), format!("{gw}: {up} refused the connection: nothing listening since {who} {ago:.0} ms earlier"), ev);
            }
            return (Class::Upstream, "refused".into(), format!("{gw}: {up} refused the connection (RST to SYN): nothing listening on that port, no firewall drop seen on this host"), vec![]);
        }

        // 5. Never connected, no RST: a full accept queue, unreachable, timed out.
        if never_connected {
            if let Some((_, addr, ev)) = self.overflow_for(a, a.started_ns, end) {
                return (Class::Upstream, "overloaded".into(), format!("{gw}: {up} is overloaded: the accept queue on {addr} was full, so its SYNs were dropped ({} SYN retransmits)", a.syn_retransmits), vec![ev.clone()]);
            }
            let retrans = a.syn_retransmits;
            return match a.sock_err.map(|x| x.1) {
                Some(113) => (Class::Network, "unreachable".into(), format!("{gw}: {up} is unreachable (EHOSTUNREACH after {retrans} SYN retransmits, no ICMP seen: the host does not answer ARP)"), vec![]),
                Some(101) => (Class::Network, "no-route".into(), format!("{gw}: no route to {up} (ENETUNREACH)"), vec![]),
                Some(110) => (Class::Network, "timeout".into(), format!("{gw}: connect to {up} timed out after {retrans} SYN retransmits (no answer, no local drop seen)"), vec![]),
                Some(e) => (Class::Unknown, "connect-failed".into(), format!("{gw}: connect to {up} failed: {} ({e})", errno_name(e)), vec![]),
                None => (Class::Network, "timeout".into(), format!("{gw}: connect to {up} got no answer in {:.0} ms ({retrans} SYN retransmits, no RST, no ICMP, no local drop seen)", ms(a.started_ns, end)), vec![]),
            };
        }

        let got = a.bytes_recv;
        let sent_req = a.request_ns.is_some();

        // 6a. What came back is not HTTP, or breaks the header syntax: the gateway had to
        // reject it, whatever happened to the connection after.
        if let Some(head) = a.head.as_deref() {
            if let Some(why) = invalid_http(head) {
                return (Class::Upstream, "invalid-response".into(), format!("{gw}: {up} answered with {why}: \"{}\"", crate::engine::decode::escape_bytes(&head[..head.len().min(40)])), vec![]);
            }
        }
        let reset = a.rst.map(|x| x.0).or(a.recv_end.filter(|x| x.1 == -104).map(|x| x.0));

        // 6. The upstream ended the connection before a complete response.
        if let Some(rst_ns) = reset {
            if let Some(d) = self.dead_listener(a, a.started_ns, rst_ns) {
                let (who, ev) = death_note(d);
                return (Class::Upstream, "crashed".into(), format!("{gw}: {who} while handling the request; the connection was reset after {got} response bytes"), ev);
            }
            let when = if got == 0 { "before any response byte".to_string() } else { format!("after {got} response bytes") };
            let reuse = if a.reused { " (reused keep-alive connection)" } else { "" };
            return (Class::Upstream, "reset".into(), format!("{gw}: {up} reset the connection{reuse} {when}"), vec![]);
        }
        if let Some(fin_ns) = a.fin_ns.or(a.recv_end.filter(|x| x.1 == 0).map(|x| x.0)) {
            if let Some(d) = self.dead_listener(a, a.started_ns, fin_ns) {
                let (who, ev) = death_note(d);
                return (Class::Upstream, "crashed".into(), format!("{gw}: {who} while handling the request; its connection closed after {got} response bytes"), ev);
            }
            if a.reused && a.fin_ns.is_some_and(|f| f < a.started_ns) {
                return (Class::Upstream, "closed-early".into(), format!("{gw}: {up} had closed the idle keep-alive connection the gateway reused"), vec![]);
            }
            let mid_headers = a.head.as_deref().is_some_and(|h| !http::contains(h, b"\r\n\r\n") && got as usize <= h.len());
            let when = if got == 0 {
                "before sending any response byte".to_string()
            } else if mid_headers {
                format!("in the middle of the response headers (after {got} bytes)")
            } else {
                format!("after {got} response bytes, before a complete response")
            };
            return (Class::Upstream, "closed-early".into(), format!("{gw}: {up} closed the connection {when}"), vec![]);
        }
        if let Some((_, err)) = a.recv_end.filter(|x| x.1 < 0).or(a.sock_err) {
            let e = err.abs();
            return (Class::Unknown, "read-error".into(), format!("{gw}: reading from {up} failed with {} ({e})", errno_name(e)), vec![]);
        }

        // 7. Bytes came back and the connection is fine: the gateway rejected them.
        if a.response_ns.is_some() && got > 0 {
            return (Class::Upstream, "invalid-response".into(), format!("{gw}: {up} answered {got} bytes that the gateway rejected as an invalid HTTP response"), vec![]);
        }

        // 8. Request sent, nothing back before the gateway gave up.
        if sent_req {
            let waited = ms(a.request_ns.unwrap_or(a.started_ns), a.local_close_ns.unwrap_or(status.ts_ns));
            if a.retransmits > 0 {
                return (Class::Network, "loss".into(), format!("{gw}: {} retransmits on the connection to {up} and no response in {waited:.0} ms: packets are lost on the path", a.retransmits), vec![]);
            }
            return (Class::Upstream, "stalled".into(), format!("{gw}: {up} accepted the request but sent no response byte in {waited:.0} ms"), vec![]);
        }
        (Class::Unknown, "undecided".into(), format!("{gw}: the connection to {up} was open but no request was seen on it; evidence does not decide"), vec![])
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn summarize(a: &Attempt, status_ns: u64) -> AttemptSummary {
    let outcome = if let Some((_, e)) = a.connect_err {
        format!("connect failed: {}", errno_name(-e))
    } else if a.rst.is_some_and(|(_, s)| s == TCP_SYN_SENT) {
        "refused (RST to SYN)".into()
    } else if !a.icmp.is_empty() {
        format!("ICMP {}", icmp_name(a.icmp[0].1))
    } else if a.connected_ns.is_none() {
        match a.sock_err {
            Some((_, e)) => format!("connect failed: {}", errno_name(e)),
            None => "no answer to SYN".into(),
        }
    } else if a.rst.is_some() {
        "reset".into()
    } else if a.fin_ns.is_some() || a.recv_end.is_some_and(|x| x.1 == 0) {
        "closed by upstream".into()
    } else if a.response_ns.is_some() {
        "response received".into()
    } else if a.request_ns.is_some() {
        "no response".into()
    } else {
        "open".into()
    };
    AttemptSummary {
        upstream: a.upstream(),
        src: a.src,
        reused: a.reused,
        outcome,
        t_ms: round3((a.started_ns as f64 - status_ns as f64) / 1e6),
        connect_ms: a.connected_ns.filter(|_| !a.reused).map(|c| round3((c - a.started_ns) as f64 / 1e6)),
        bytes_sent: a.bytes_sent,
        bytes_recv: a.bytes_recv,
        retransmits: a.syn_retransmits + a.retransmits,
    }
}

impl Verdict {
    pub fn class_name(&self) -> &'static str {
        match self.class {
            Class::Upstream => "upstream",
            Class::Firewall => "firewall",
            Class::Network => "network",
            Class::Gateway => "gateway",
            Class::Unknown => "unknown",
        }
    }
}
