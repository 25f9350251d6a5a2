//! The attribution engine: kernel events in, verdicts out. Pure and deterministic: no I/O,
//! and the only clock is the one injected through the events' stamps and `advance`.
//!
//! Each 5xx status line the gateway writes is linked to the upstream attempts made for that
//! request (same gateway thread, nearest end in time, and the retries that came just before
//! it), then the evidence decides a class and cause.
use tracer_common::errno::{
    EACCES, EADDRNOTAVAIL, EAGAIN, ECONNREFUSED, EHOSTUNREACH, EINVAL, EMFILE, ENETUNREACH, ENFILE, ENOBUFS, ENOENT, EPERM, ETIMEDOUT,
};

pub use crate::engine::verdict::{AttemptSummary, Cause, Class, ClientSide, Delivered, Detail, EvidenceItem, Gateway, Protocol, Verdict};
use crate::engine::{
    decode::{Comm, KernelEvent, Kind, StatusFacts, errno_name, signal_name},
    fastcgi,
    http::{self, Completeness, Framing, ResponseHead, invalid_http},
    tls::ContentType,
    track::{Attempt, Death, Evidence, HANDSHAKE_GIVE_UP_NS, Overflow, Tracker},
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
/// A failed attempt of a gateway whose answers cannot be read is judged this long after it
/// ended, once a retry would have begun.
const INFERENCE_WAIT_NS: u64 = RETRY_GAP_NS + SETTLE_NS;
/// A process death this close to a connection's end explains it.
const DEATH_WINDOW_NS: u64 = 2_000_000_000;
/// A gateway that answers without trying any upstream has usually marked its servers failed
/// (nginx's `fail_timeout`, 10 s by default; HAProxy's servers stay DOWN while checks fail,
/// every `inter`, 2 s by default): failures this recent explain it.
const MARKED_FAILED_NS: u64 = 30_000_000_000;
/// Failures remembered for that, newest last (bounded: a storm makes thousands a second).
const MAX_RECENT_FAILURES: usize = 256;

/// A failure that may have taken an upstream out of a gateway's rotation.
#[derive(Debug, Clone)]
struct PastFailure {
    ts_ns: u64,
    pid: u32,
    comm: Comm,
    /// The attempt's label, shared: a storm remembers hundreds and each status looks at them.
    upstream: std::sync::Arc<str>,
    cause: Cause,
}

struct PendingStatus {
    ev: KernelEvent,
}

/// A response cut short is judged this long after its connection's last event, so a 5xx
/// for the same attempt (which takes precedence) has been judged first.
const TRUNCATION_WAIT_NS: u64 = 200_000_000;

/// An attempt that may explain a status, and when it ended (`Attempt::end_ns`).
type Candidate<'a> = (&'a Attempt, Option<u64>);

/// The attempt with its end, if it may explain a status written at `t`.
fn candidate(a: &Attempt, t: u64) -> Option<Candidate<'_>> {
    let end = a.end_ns();
    let may = !a.consumed
        && !a.tls_goodbye()
        && a.started_ns <= t
        && t.saturating_sub(a.last_ns.max(a.started_ns)) <= LOOKBACK_NS
        // A gateway that resets its upstream connection (closing it with bytes unread) gave
        // up on it: not a success, even right after its status.
        && !(a.succeeded() && end.is_none_or(|e| e > t) && !a.answered_5xx() && a.rst_sent_ns.is_none())
        && !(a.succeeded() && a.response_ns.is_some_and(|r| r < t.saturating_sub(LOOKBACK_NS)))
        && end.is_none_or(|e| e <= t + SETTLE_NS);
    may.then_some((a, end))
}

#[derive(Default)]
pub struct Engine {
    pub tracker: Tracker,
    /// Statuses waiting for their settle time, in arrival (= time) order.
    pending: std::collections::VecDeque<PendingStatus>,
    /// Attempts whose response began and whose connection then ended: maybe cut short.
    /// (due time, attempt), in the order they were queued; the set keeps it duplicate-free.
    truncation_checks: std::collections::VecDeque<(u64, u64)>,
    truncation_queued: std::collections::HashSet<u64>,
    /// Gateways (by process name) whose answers to clients cannot be read here: their failed
    /// attempts are judged without a status (`inferred`) once no retry followed.
    unreadable: std::collections::HashSet<String>,
    /// (due time, attempt) of their failed attempts, in the order they ended.
    inference_checks: std::collections::VecDeque<(u64, u64)>,
    inference_queued: std::collections::HashSet<u64>,
    /// The host's network namespace (inode), when known: a gateway in another one that is
    /// refused on loopback reached its own loopback, not the host's.
    host_netns: Option<u32>,
    /// Recent failures by gateway process, for requests answered without an attempt.
    recent_failures: std::collections::VecDeque<PastFailure>,
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
        if matches!(ev.kind, Kind::StateChange | Kind::ResetReceived | Kind::RecvEnd)
            && let Some(a) = self.tracker.current_attempt(ev.sock)
            && !a.dns
            && a.response_ns.is_some()
            && a.end_ns().is_some()
            && self.truncation_queued.insert(a.id)
        {
            self.truncation_checks.push_back((a.last_ns + TRUNCATION_WAIT_NS, a.id));
        }
        if !self.unreadable.is_empty() {
            self.queue_inference(ev);
        }
        self.advance(ev.ts_ns)
    }

    /// Say whether this gateway's answers to its clients can be read (plain writes, OpenSSL);
    /// when not, its failed attempts get `inferred` verdicts.
    pub fn set_answers_readable(&mut self, comm: &str, readable: bool) {
        if readable {
            self.unreadable.remove(comm);
        } else {
            self.unreadable.insert(comm.to_owned());
        }
    }

    pub fn set_host_netns(&mut self, netns: u32) {
        self.host_netns = Some(netns);
    }

    /// A failed attempt of a gateway whose answers cannot be read waits for a retry.
    fn queue_inference(&mut self, ev: &KernelEvent) {
        let attempt = if ev.sock != 0 {
            self.tracker.current_attempt(ev.sock)
        } else if ev.kind == Kind::ConnectSyscall {
            let newest = self.tracker.by_tid.get(&ev.tid).and_then(|q| q.back()).map(|&(_, id)| id);
            newest.and_then(|id| self.tracker.attempt(id))
        } else {
            None
        };
        let Some(a) = attempt else { return };
        let Some(end) = a.end_ns() else { return };
        if self.unreadable.contains(a.comm.as_str()) && !a.dns && !a.succeeded() && !a.consumed && self.inference_queued.insert(a.id) {
            self.inference_checks.push_back((end + INFERENCE_WAIT_NS, a.id));
        }
    }

    /// Failed attempts of unreadable gateways that no retry followed: one verdict each chain.
    fn check_inferences(&mut self, all: bool) -> Vec<Verdict> {
        let mut out = Vec::new();
        while let Some(&(due, id)) = self.inference_checks.front() {
            if !all && due > self.now_ns {
                break;
            }
            self.inference_checks.pop_front();
            self.inference_queued.remove(&id);
            let Some(a) = self.tracker.attempt(id) else { continue };
            if a.consumed || a.succeeded() || self.retried(a) {
                continue;
            }
            let chain = self.retried_chain(a);
            out.push(self.infer(chain));
        }
        out
    }

    /// Another attempt of the same thread began right after this one failed: a retry, which
    /// decides instead (if it fails too, it is checked itself).
    fn retried(&self, a: &Attempt) -> bool {
        let Some(end) = a.end_ns() else { return false };
        let queue = self.tracker.by_tid.get(&a.tid).into_iter().flatten();
        queue
            .filter_map(|&(_, id)| self.tracker.attempt(id))
            .any(|b| b.id != a.id && b.started_ns >= end && b.started_ns - end <= RETRY_GAP_NS && (a.reused || b.dst != a.dst))
    }

    /// The failed attempts that led to this one (retries back to back), oldest first.
    fn retried_chain(&self, last: &Attempt) -> Vec<u64> {
        let mut chain = vec![last.id];
        let mut current = last;
        while chain.len() < 8 {
            let queue = self.tracker.by_tid.get(&current.tid).into_iter().flatten();
            let before = queue.filter_map(|&(_, id)| self.tracker.attempt(id)).find(|p| {
                !p.consumed
                    && !chain.contains(&p.id)
                    && (p.reused || p.dst != current.dst)
                    && p.end_ns().is_some_and(|e| e <= current.started_ns && current.started_ns - e <= RETRY_GAP_NS)
            });
            match before {
                Some(p) => {
                    chain.insert(0, p.id);
                    current = p;
                }
                None => break,
            }
        }
        chain
    }

    /// A verdict without a status: the gateway's answer to its client could not be read.
    fn infer(&mut self, chain: Vec<u64>) -> Verdict {
        let last = chain.last().and_then(|id| self.tracker.attempt(*id));
        let (t, gateway) = match last {
            Some(a) => (a.end_ns().unwrap_or(a.last_ns), Gateway { pid: a.pid, comm: a.comm }),
            None => (self.now_ns, Gateway { pid: 0, comm: Comm::EMPTY }),
        };
        let finding = match last {
            Some(a) => self.decide(a, t, None, format!("{} (its answer to the client is not readable here)", a.comm)),
            None => Finding::new(Cause::Undecided, "no attempt".into()),
        };
        let answer = Answer { gateway, client: "?".into(), client_side: None, status: None, delivered: Delivered::Inferred };
        self.verdict(&chain, t, answer, finding)
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
        out.extend(self.check_inferences(false));
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
        out.extend(self.check_inferences(true));
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
        let reset = a.rst.is_some() || a.recv_end.is_some_and(|r| r.reset());
        let expected = parsed.header_len.zip(parsed.content_length).map(|(h, c)| h + c).filter(|_| parsed.fastcgi.is_none());
        // FastCGI says where a response ends in its own framing: a stream that ended before
        // FCGI_END_REQUEST was cut short, whoever closed it.
        let short = match parsed.fastcgi {
            Some(_) => match parsed.completeness(head, a.bytes_recv, false) {
                Completeness::Complete => false,
                Completeness::Short => !a.recv_end.is_some_and(|r| r.after_fastcgi_end),
                // Past the captured head: on a unix socket the kernel looks at the end of
                // every read, and says whether the stream ended with FCGI_END_REQUEST (at the
                // end of stream; a close by the gateway is shipped only when it had not).
                Completeness::Unseen => a.path.is_some() && !a.recv_end.is_some_and(|r| r.after_fastcgi_end),
            },
            None => expected.is_some_and(|total| a.bytes_recv < total),
        };
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
                let sig = d.signal.map_or("an error exit", |s| signal_name(s.into()));
                (Cause::Crashed, format!("upstream process {} ({}) died ({sig})", d.pid, d.comm), vec![d.evidence.clone()])
            }
            None if reset => (Cause::Reset, format!("{up} reset the connection"), vec![]),
            None => (Cause::ClosedEarly, format!("{up} closed the connection"), vec![]),
        };
        let t = end;
        let ms = |ns: u64| round3((ns as f64 - t as f64) / 1e6);
        let routine = a.routine_evidence();
        let mut evidence: Vec<EvidenceItem> = a
            .evidence
            .iter()
            .chain(routine.iter())
            .chain(extra.iter())
            .map(|e| EvidenceItem { t_ms: ms(e.ts_ns), event: e.event, detail: e.detail.clone() })
            .collect();
        evidence.sort_by(|x, y| x.t_ms.total_cmp(&y.t_ms));
        Some(Verdict {
            ts_ns: t,
            gateway: Gateway { pid: a.pid, comm: a.comm },
            client: "?".into(),
            client_side: None,
            status: Some(parsed.status),
            delivered: Delivered::Truncated,
            upstream: up.clone(),
            class: cause.class(),
            cause,
            summary: format!(
                "a client got {} with a cut-short body: {how} after {got}, once the headers had been passed on",
                parsed.status
            ),
            attempts: vec![summarize(a, t)],
            evidence,
            gateway_said: None,
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
        let attempts = if by_thread.is_empty() { self.candidates(status, false) } else { by_thread };
        let ended_recently = |&(_, end): &Candidate| end.is_some_and(|e| e + FAILURE_TO_STATUS_NS >= t);
        let first = attempts
            .iter()
            .copied()
            .filter(ended_recently)
            // A failed attempt before one whose answer came whole and whose connection then
            // ended (an idle keep-alive connection its server closed).
            .min_by_key(|&(a, end)| (a.succeeded(), end, a.started_ns))
            // Nothing ended: the oldest request still in flight (a stall the gateway has not
            // closed yet).
            .or_else(|| {
                attempts.iter().copied().filter(|(_, end)| end.is_none()).min_by_key(|(a, _)| a.request_ns.unwrap_or(a.started_ns))
            });
        let Some(mut last) = first else { return vec![] };
        let mut chain = vec![last.0.id];
        while let (previous, Some(end)) = last {
            let next = attempts
                .iter()
                .copied()
                // A retry goes to the next upstream, or to a fresh connection after a reused
                // one failed; back-to-back fresh attempts to the same upstream are other
                // requests that the thread handled one after another.
                .filter(|(a, _)| previous.reused || a.dst != previous.dst)
                .filter(|(a, _)| !chain.contains(&a.id) && a.started_ns >= end && a.started_ns - end <= RETRY_GAP_NS && a.started_ns <= t)
                .min_by_key(|(a, _)| a.started_ns);
            match next {
                Some(n) => {
                    chain.push(n.0.id);
                    last = n;
                }
                None => break,
            }
        }
        chain
    }

    /// The attempts that may explain this status, each with its end, worked out once: in a
    /// storm a status weighs every attempt its thread began meanwhile, several times.
    fn candidates(&self, status: &KernelEvent, same_thread: bool) -> Vec<Candidate<'_>> {
        let t = status.ts_ns;
        if same_thread {
            let Some(queue) = self.tracker.by_tid.get(&status.tid) else { return Vec::new() };
            // The queue is in start order, nearly (as `Tracker::prune_thread` takes it): the
            // newer rest, every attempt begun while this status settled, is not looked at.
            let begun = queue.partition_point(|&(started, _)| started <= t);
            queue
                .range(..begun)
                .filter(|&&(started, _)| started <= t)
                .filter_map(|&(_, id)| self.tracker.attempt(id))
                .filter_map(|a| candidate(a, t))
                .collect()
        } else {
            // Same process, other threads (bounded by the per-thread indexes).
            self.tracker
                .by_tid
                .values()
                // The newest few of each thread: a handoff between threads is immediate.
                .flat_map(|q| q.iter().rev().filter(|&&(started, _)| started <= t).take(64))
                .filter_map(|&(_, id)| self.tracker.attempt(id))
                .filter(|a| a.pid == status.pid)
                .filter_map(|a| candidate(a, t))
                .collect()
        }
    }

    fn judge(&mut self, status: &KernelEvent) -> Verdict {
        for id in self.tracker.prune_thread(status.tid, status.ts_ns, FAILURE_TO_STATUS_NS) {
            self.remember_unclaimed(id);
        }
        let chain = self.link(status);
        let t = status.ts_ns;
        let mut marked_upstream = None;
        let finding = match chain.last().and_then(|id| self.tracker.attempt(*id)) {
            Some(primary) => {
                self.decide(primary, t, u16::try_from(status.value).ok(), format!("{} answered {}", status.comm, status.value))
            }
            // Failed connections that took the servers out come first: a name that did not
            // resolve makes none, and the name looked up last need not be this request's.
            None => match self.marked_failed(status).or_else(|| self.unresolved(status)) {
                Some((finding, upstream)) => {
                    marked_upstream = Some(upstream);
                    finding
                }
                None => Finding::new(
                    Cause::NoUpstreamAttempt,
                    format!(
                        "{} answered {} without any upstream connection attempt seen on this host (no healthy server, a limit, or a protocol upstrace does not follow)",
                        status.comm, status.value
                    ),
                ),
            },
        };
        let client_side = ClientSide {
            protocol: if status.stream.is_some() { Protocol::H2 } else { Protocol::H1 },
            tls: status.tls,
            stream: status.stream,
        };
        let answer = Answer {
            gateway: Gateway { pid: status.pid, comm: status.comm },
            client: status.dst.map(|a| a.to_string()).unwrap_or_else(|| "?".into()),
            client_side: Some(client_side),
            status: u16::try_from(status.value).ok(),
            delivered: Delivered::Status,
        };
        let mut v = self.verdict(&chain, t, answer, finding);
        if let Some(upstream) = marked_upstream {
            v.upstream = upstream;
        }
        v.evidence.push(EvidenceItem { t_ms: 0.0, event: "http_status", detail: Detail::Status(StatusFacts::of(status)) });
        v.evidence.sort_by(|a, b| a.t_ms.total_cmp(&b.t_ms));
        v
    }

    /// The verdict for a chain of attempts (oldest first), which it claims: they explain
    /// nothing else, and their evidence moves into it.
    fn verdict(&mut self, chain: &[u64], t: u64, answer: Answer, finding: Finding) -> Verdict {
        let Finding { cause, summary, extra } = finding;
        let Answer { gateway, client, client_side, status, delivered } = answer;
        for id in chain {
            if let Some(a) = self.tracker.attempts.get_mut(id) {
                a.consumed = true;
            }
        }
        if let Some(tid) = chain.first().and_then(|id| self.tracker.attempt(*id)).map(|a| a.tid) {
            self.tracker.forget_explained(tid, chain);
        }
        let attempts: Vec<&Attempt> = chain.iter().filter_map(|id| self.tracker.attempt(*id)).collect();
        // An upstream's own 5xx is a working exchange: it takes no server out.
        if cause.class() != Class::Unknown && cause != Cause::Upstream5xx {
            let failures: Vec<PastFailure> = attempts
                .iter()
                .map(|a| PastFailure { ts_ns: a.end_ns().unwrap_or(t), pid: a.pid, comm: a.comm, upstream: a.label(), cause })
                .collect();
            failures.into_iter().for_each(|f| remember(&mut self.recent_failures, f));
        }
        let ms = |ns: u64| (ns as f64 - t as f64) / 1e6;
        let item = |e: Evidence| EvidenceItem { t_ms: round3(ms(e.ts_ns)), event: e.event, detail: e.detail };
        let routine: Vec<Evidence> = attempts.iter().flat_map(|a| a.routine_evidence()).collect();
        let summaries: Vec<AttemptSummary> = attempts.iter().map(|a| summarize(a, t)).collect();
        let upstream = attempts.last().map(|a| a.upstream()).unwrap_or_else(|| "?".into());
        // The verdict carries the evidence now (moved, not copied); explained attempts stay
        // only briefly, as markers for late events of their sockets, and weigh little meanwhile.
        let mut evidence: Vec<EvidenceItem> = Vec::new();
        for id in chain {
            if let Some(a) = self.tracker.attempts.get_mut(id) {
                evidence.extend(std::mem::take(&mut a.evidence).into_iter().map(item));
            }
        }
        evidence.extend(routine.into_iter().chain(extra).map(item));
        evidence.sort_by(|a, b| a.t_ms.total_cmp(&b.t_ms));
        Verdict {
            ts_ns: t,
            gateway,
            client,
            client_side,
            status,
            delivered,
            upstream,
            class: cause.class(),
            cause,
            summary,
            attempts: summaries,
            evidence,
            gateway_said: None,
        }
    }

    /// A failed attempt no request claimed, as a past failure, when its cause is known.
    fn unclaimed_failure(&self, a: &Attempt) -> Option<PastFailure> {
        let end = a.end_ns()?;
        if a.consumed || a.dns || a.succeeded() {
            return None;
        }
        let cause = self.decide(a, end, None, String::new()).cause;
        (cause.class() != Class::Unknown).then(|| PastFailure { ts_ns: end, pid: a.pid, comm: a.comm, upstream: a.label(), cause })
    }

    fn remember_unclaimed(&mut self, id: u64) {
        if let Some(f) = self.tracker.attempt(id).and_then(|a| self.unclaimed_failure(a)) {
            remember(&mut self.recent_failures, f);
        }
    }

    /// A 5xx for which the gateway tried no upstream because the name it looked up last did
    /// not resolve (its own DNS exchanges, seen in the kernel). The verdict's upstream is the name.
    fn unresolved(&self, status: &KernelEvent) -> Option<(Finding, String)> {
        let u = self.tracker.dns.unresolved(status.pid, status.ts_ns)?;
        // A lookup over TCP refused before its query went out names no name.
        let name = if u.name.is_empty() { "it looks up".to_string() } else { u.name.clone() };
        let summary = format!(
            "{} answered {} without trying any upstream for this request: the name {} did not resolve; resolver {} {}{}",
            status.comm,
            status.value,
            name,
            u.resolver,
            u.what,
            match u.ended_ns {
                Some(at) => format!(" ({:.0} ms before the {})", ms_between(at, status.ts_ns), status.value),
                None => String::new(),
            },
        );
        let mut finding = Finding::new(u.cause, summary);
        finding = finding.with(Evidence {
            ts_ns: u.asked_ns,
            event: "dns_query",
            detail: if u.name.is_empty() {
                format!("{} {} connected to resolver {} over TCP", status.comm, status.pid, u.resolver).into()
            } else {
                format!("{} {} asked resolver {} for {}", status.comm, status.pid, u.resolver, u.name).into()
            },
        });
        if let Some(at) = u.ended_ns {
            finding =
                finding.with(Evidence { ts_ns: at, event: "dns_answer", detail: format!("resolver {} {}", u.resolver, u.what).into() });
        }
        Some((finding, if u.name.is_empty() { u.resolver } else { u.name }))
    }

    /// A 5xx for which the gateway tried no upstream, explained by the failures that took its
    /// servers out shortly before: those already judged for other requests, and failed
    /// connections no request claimed (health checks). The same process first (nginx keeps
    /// failures per worker unless the group has a `zone`), else any process of that name.
    /// Class and cause are the latest failure's; the summary says no attempt was made.
    fn marked_failed(&self, status: &KernelEvent) -> Option<(Finding, String)> {
        let t = status.ts_ns;
        let recent = |f: &PastFailure| f.ts_ns <= t && f.ts_ns + MARKED_FAILED_NS >= t && f.comm == status.comm;
        // Unclaimed failed connections of this gateway still queued (the newest few of each
        // thread); older ones were remembered when their thread's queue was pruned.
        let unclaimed: Vec<PastFailure> = self
            .tracker
            .by_tid
            .values()
            .flat_map(|q| q.iter().rev().take(16))
            .filter_map(|&(_, id)| self.tracker.attempt(id).and_then(|a| self.unclaimed_failure(a)))
            .filter(recent)
            .collect();
        // Borrowed, not copied: in a storm of statuses without attempts, every one looks at
        // all the failures remembered.
        let mut failures: Vec<&PastFailure> = self.recent_failures.iter().filter(|f| recent(f)).chain(unclaimed.iter()).collect();
        failures.sort_by_key(|f| (f.ts_ns, f.pid));
        failures.dedup_by_key(|f| (f.ts_ns, f.pid));
        let same_process = failures.iter().any(|f| f.pid == status.pid);
        failures.retain(|f| !same_process || f.pid == status.pid);
        let latest = *failures.last()?;
        let mut upstreams: Vec<(&str, Cause)> = Vec::new();
        for f in failures.iter().rev() {
            let named = (&*f.upstream, f.cause);
            if !upstreams.contains(&named) {
                upstreams.push(named);
            }
        }
        let upstreams: Vec<String> = upstreams.iter().map(|(up, cause)| format!("{up} {}", cause.as_str())).collect();
        let who = if same_process { "this process".to_string() } else { format!("other {} processes", status.comm) };
        let summary = format!(
            "{} answered {} without trying any upstream for this request: its servers were marked failed after {} failure{} seen by {who} in the last {:.1} s ({}); the latest, {:.0} ms before: {} {}",
            status.comm,
            status.value,
            failures.len(),
            if failures.len() == 1 { "" } else { "s" },
            ms_between(failures[0].ts_ns, t) / 1e3,
            upstreams.join(", "),
            ms_between(latest.ts_ns, t),
            latest.upstream,
            latest.cause.as_str(),
        );
        let mut finding = Finding::new(latest.cause, summary);
        for f in failures.iter().rev().take(8) {
            finding = finding.with(Evidence {
                ts_ns: f.ts_ns,
                event: "earlier_failure",
                detail: Detail::EarlierFailure { upstream: f.upstream.clone(), cause: f.cause, pid: f.pid },
            });
        }
        Some((finding, latest.upstream.to_string()))
    }

    /// The listener of the attempt's upstream port that died before `until`, if any, and
    /// no new listener took the port since.
    fn dead_listener(&self, a: &Attempt, from: u64, until: u64) -> Option<&Death> {
        let (listeners, ip) = match (&a.path, a.dst) {
            (Some(path), _) => (self.tracker.unix_listeners.get(path)?, None),
            (None, Some(dst)) => (self.tracker.listeners.get(&dst.port())?, Some(dst.ip())),
            (None, None) => return None,
        };
        // A unix server's replacement is not seen listening (no hook), so for a request it
        // held (`from` > 0) only a death after the request began explains it.
        let earliest = if ip.is_none() && from > 0 { from } else { from.saturating_sub(DEATH_WINDOW_NS) };
        self.tracker.deaths.iter().rev().filter(|d| d.ts_ns <= until + 1_000_000 && d.ts_ns >= earliest).find(|d| {
            listeners.iter().any(|l| {
                // A unix server's workers forked after upstrace looked are followed by the
                // kernel (their exits are reported) but not listed: the name tells the family.
                let same = l.pid == d.pid || (ip.is_none() && l.comm == d.comm);
                same && l.addr.is_none_or(|la| la.ip().is_unspecified() || Some(la.ip()) == ip)
                    && !listeners.iter().any(|n| n.ts_ns > d.ts_ns && n.pid != d.pid && (ip.is_some() || n.comm != d.comm))
            })
        })
    }

    /// The death, told by what upstrace knows of the process: its title when it listened
    /// (`php-fpm: pool www`), and whether a manager of the same server killed it.
    fn death_of(&self, a: &Attempt, d: &Death) -> (String, Evidence, bool) {
        let listeners = match (&a.path, a.dst) {
            (Some(path), _) => self.tracker.unix_listeners.get(path),
            (None, Some(dst)) => self.tracker.listeners.get(&dst.port()),
            (None, None) => None,
        };
        let title = listeners.and_then(|ls| ls.iter().find(|l| l.pid == d.pid)).and_then(|l| l.title.as_deref());
        let manager = d.killed_by.and_then(|k| listeners.and_then(|ls| ls.iter().find(|l| l.pid == k)));
        let (mut who, ev) = death_note_named(d, title.unwrap_or(&d.comm));
        if let Some(m) = manager {
            who.push_str(&format!(" sent by its manager {} ({})", m.pid, m.title.as_deref().unwrap_or(&m.comm)));
        }
        (who, ev, manager.is_some())
    }

    /// An accept-queue overflow of the attempt's upstream port seen around its lifetime.
    fn overflow_for(&self, a: &Attempt, from: u64, until: u64) -> Option<&Overflow> {
        let dst = a.dst?;
        self.tracker.overflows.iter().rev().find(|o| {
            o.addr.port() == dst.port()
                && (o.addr.ip().is_unspecified() || o.addr.ip() == dst.ip())
                && o.ts_ns + 2_000_000_000 >= from
                && o.ts_ns <= until + 1_000_000_000
        })
    }

    /// The cause of a failed request, from its last attempt: the first rule that decides.
    /// `gw` opens the summary ("nginx answered 502"); `status_ns` is when the gateway answered.
    fn decide(&self, a: &Attempt, status_ns: u64, status: Option<u16>, gw: String) -> Finding {
        let case = Case { engine: self, a, status_ns, status, up: a.upstream(), gw, end: a.end_ns().unwrap_or(status_ns) };
        RULES.iter().find_map(|rule| rule(&case)).unwrap_or_else(|| {
            Finding::new(
                Cause::Undecided,
                format!("{}: the connection to {} was open but no request was seen on it; evidence does not decide", case.gw, case.up),
            )
        })
    }
}

/// What the client got, as far as it is known, and from which gateway process.
struct Answer {
    gateway: Gateway,
    client: String,
    client_side: Option<ClientSide>,
    status: Option<u16>,
    delivered: Delivered,
}

/// What a rule concluded: the cause, one sentence, and evidence beyond the attempt's own.
pub struct Finding {
    pub cause: Cause,
    pub summary: String,
    pub extra: Vec<Evidence>,
}

impl Finding {
    fn new(cause: Cause, summary: String) -> Self {
        Self { cause, summary, extra: vec![] }
    }

    fn with(mut self, evidence: Evidence) -> Self {
        self.extra.push(evidence);
        self
    }
}

/// One failed attempt being judged, with what every rule names.
struct Case<'a> {
    engine: &'a Engine,
    a: &'a Attempt,
    status_ns: u64,
    /// The status the gateway answered, when it could be read.
    status: Option<u16>,
    /// The upstream (`ip:port` or `unix:/path`).
    up: String,
    /// "nginx answered 502".
    gw: String,
    /// When the attempt ended (or the status time, if it had not).
    end: u64,
}

type Rule = fn(&Case) -> Option<Finding>;

/// The rules, in the order they are asked: what fails earliest in a connection's life and
/// says the most decides first.
const RULES: [Rule; 12] = [
    upstream_answered,
    connect_failed,
    icmp_error,
    icmp_error_on_the_socket,
    packet_dropped,
    refused,
    never_connected,
    tls_handshake,
    invalid_bytes,
    head_too_large,
    ended_by_upstream,
    no_valid_answer,
];

fn remember(recent: &mut std::collections::VecDeque<PastFailure>, failure: PastFailure) {
    if recent.len() == MAX_RECENT_FAILURES {
        recent.pop_front();
    }
    recent.push_back(failure);
}

fn ms_between(from: u64, to: u64) -> f64 {
    to.saturating_sub(from) as f64 / 1e6
}

/// "upstream process 1234 (app) killed by SIGKILL", and the death as evidence.
fn death_note(d: &Death) -> (String, Evidence) {
    death_note_named(d, &d.comm)
}

/// As `death_note`, naming the process by `name` (its title, when it listened under one).
fn death_note_named(d: &Death, name: &str) -> (String, Evidence) {
    let how = match (d.signal, d.exit_code) {
        (Some(sig), _) => format!("killed by {}", signal_name(sig.into())),
        (None, Some(code)) => format!("exited with code {code}"),
        _ => "exited".into(),
    };
    (format!("upstream process {} ({name}) {how}", d.pid), d.evidence.clone())
}

/// The upstream process died while it held the request: a crash, or its own manager killed it
/// (a different cause: the worker ran past a limit).
fn died_handling(c: &Case, d: &Death, then: String) -> Finding {
    let (who, ev, by_manager) = c.engine.death_of(c.a, d);
    let gw = &c.gw;
    let finding = if by_manager {
        Finding::new(
            Cause::WorkerKilled,
            format!(
                "{gw}: {who} while handling the request (a request past the server's time limit, e.g. php-fpm's request_terminate_timeout); {then}"
            ),
        )
    } else {
        Finding::new(Cause::Crashed, format!("{gw}: {who} while handling the request; {then}"))
    };
    finding.with(ev)
}

/// 0. The upstream answered this very 5xx itself, whole, and the gateway passed it on.
///
/// The exchange worked, the application failed. Whole is decided by the framing, not by who closed.
fn upstream_answered(c: &Case) -> Option<Finding> {
    let a = c.a;
    let status = c.status?;
    let head = a.head.as_deref()?;
    let parsed = ResponseHead::parse(head).filter(|p| p.status >= 500 && p.status == status)?;
    let reset = a.rst.is_some() || a.recv_end.is_some_and(|r| !r.eof()) || a.sock_err.is_some();
    let crash = c.engine.dead_listener(a, a.started_ns, c.end).filter(|d| d.crashed());
    let closed_cleanly = !reset && crash.is_none() && (a.fin_ns.is_some() || a.recv_end.is_some_and(|r| r.eof()));
    let mut whole = parsed.completeness(head, a.bytes_recv, closed_cleanly);
    // Byte counts are refreshed when a connection ends: on one still open (kept alive) the
    // rest of a body may have come since.
    let open = a.end_ns().is_none() && parsed.header_len.is_some();
    if whole == Completeness::Short && open && parsed.framing() != Framing::UntilClose {
        whole = Completeness::Unseen;
    }
    let framing = match (whole, parsed.framing()) {
        (Completeness::Short, _) => return None,
        // A reset or crash in the middle: the earlier rules' story, not the application's.
        (Completeness::Unseen, _) if reset || crash.is_some() => return None,
        (Completeness::Unseen, _) => "its end past the bytes seen, on a connection with no reset or crash".to_string(),
        (Completeness::Complete, Framing::Length(n)) => format!("all {n} body bytes of its Content-Length"),
        (Completeness::Complete, Framing::Chunked) => "chunked, through its last chunk".to_string(),
        (Completeness::Complete, Framing::UntilClose) => "its body ended by the upstream's close".to_string(),
        (Completeness::Complete, Framing::NoBody) => "no body".to_string(),
        (Completeness::Complete, Framing::Records) => "FastCGI, through its FCGI_END_REQUEST".to_string(),
    };
    // FastCGI: the CGI head's first line (its `Status:`), past the record header.
    let from = parsed.fastcgi.map_or(0, |f| f.stdout_start);
    let line = head[from..].split(|&b| b == b'\r' || b == b'\n').next().unwrap_or_default();
    let line = crate::engine::escaped::escape_bytes(&line[..line.len().min(80)]);
    let body = parsed.body(head).filter(|b| !b.is_empty()).map(|b| {
        let more = if b.len() > 60 || a.bytes_recv > head.len() as u64 { "..." } else { "" };
        format!("; its body begins \"{}{more}\"", crate::engine::escaped::escape_bytes(&b[..b.len().min(60)]))
    });
    Some(Finding::new(
        Cause::Upstream5xx,
        format!(
            "{}: {} answered \"{line}\" itself, a complete response ({framing}), and the gateway passed it on{}",
            c.gw,
            c.up,
            body.unwrap_or_default()
        ),
    ))
}

/// 1. connect(2) failed at once: routing, local resources, unix sockets.
fn connect_failed(c: &Case) -> Option<Finding> {
    let errno = c.a.connect_err?.errno;
    let (gw, up) = (&c.gw, &c.up);
    let e = format!("{} ({errno})", errno_name(errno.into()));
    // A unix socket's errors speak of the file, not of routes.
    if c.a.path.is_some() {
        return Some(match errno {
            EACCES | EPERM => Finding::new(
                Cause::PermissionDenied,
                match &c.a.socket_file {
                    Some(file) => format!("{gw}: the gateway may not connect to {up}: {e}: the socket file is {file}"),
                    None => format!("{gw}: the gateway may not connect to {up}: {e}: the socket file's owner and mode keep its worker out"),
                },
            ),
            ENOENT => Finding::new(
                Cause::NoSocketFile,
                format!("{gw}: {up} does not exist ({e}): the upstream is not running, or the gateway's path is wrong"),
            ),
            ECONNREFUSED => match c.engine.dead_listener(c.a, 0, c.end) {
                // The processes that held the socket are known: say how they went.
                Some(d) => {
                    let (who, ev, _) = c.engine.death_of(c.a, d);
                    let cause = if d.crashed() { Cause::Crashed } else { Cause::Refused };
                    Finding::new(cause, format!("{gw}: {up} refused the connection ({e}): nothing listens on it since {who}")).with(ev)
                }
                None => Finding::new(
                    Cause::Refused,
                    format!(
                        "{gw}: {up} refused the connection ({e}): the socket file is there, but nothing listens on it (its server stopped or died)"
                    ),
                ),
            },
            _ => connect_errno(c, errno, &e),
        });
    }
    Some(connect_errno(c, errno, &e))
}

/// A connect(2) that failed at once, by its errno.
fn connect_errno(c: &Case, errno: i32, e: &str) -> Finding {
    let (gw, up) = (&c.gw, &c.up);
    match errno {
        ENETUNREACH => {
            Finding::new(Cause::NoRoute, format!("{gw}: no route to {up}: connect failed with {e} (network unreachable from the gateway)"))
        }
        EHOSTUNREACH => {
            Finding::new(Cause::NoRoute, format!("{gw}: no route to {up}: connect failed at once with {e} (unreachable route)"))
        }
        EINVAL => Finding::new(Cause::NoRoute, format!("{gw}: route to {up} is a blackhole: connect failed with {e}")),
        EACCES | EPERM => Finding::new(Cause::NoRoute, format!("{gw}: route to {up} is prohibited: connect failed with {e}")),
        EADDRNOTAVAIL | EMFILE | ENFILE | ENOBUFS => Finding::new(
            Cause::LocalResources,
            format!("{gw}: the gateway could not open a connection to {up}: {e} (ephemeral ports or file descriptors exhausted)"),
        ),
        EAGAIN => Finding::new(Cause::Overloaded, format!("{gw}: {up} is overloaded: its listen backlog is full ({e})")),
        ECONNREFUSED | ENOENT => Finding::new(Cause::Refused, format!("{gw}: {up} refused the connection: nothing listening ({e})")),
        _ => Finding::new(Cause::ConnectFailed, format!("{gw}: connect to {up} failed with {e}")),
    }
}

/// 2. ICMP errors about this flow say who answered and why.
fn icmp_error(c: &Case) -> Option<Finding> {
    let seen = c.a.icmp.first()?;
    let (gw, up, from) = (&c.gw, &c.up, &seen.from);
    let (icmp, what) = (seen.icmp, seen.icmp.name());
    Some(if icmp.prohibited() {
        Finding::new(Cause::Rejected, format!("{gw}: a firewall rejected the connection to {up}: ICMP {what} from {from}"))
    } else if icmp.port_unreachable() {
        let fw_drop = c.a.drops.iter().find(|d| d.by_netfilter());
        let where_ = fw_drop.map(|d| format!(", netfilter dropped the SYN in netns {}", d.netns)).unwrap_or_default();
        Finding::new(
            Cause::Rejected,
            format!("{gw}: a firewall rejected the connection to {up}: ICMP {what} from {from} for a TCP port{where_}"),
        )
    } else if icmp.destination_unreachable() {
        Finding::new(Cause::Unreachable, format!("{gw}: {up} is unreachable: ICMP {what} from {from}"))
    } else {
        Finding::new(Cause::Unreachable, format!("{gw}: {up}: ICMP {what} from {from}"))
    })
}

/// 2b. An ICMP error that ended the connect, told by the socket's own error where the packet
/// was not seen (the per-packet hook is attached only once a connection retransmits). The
/// kernel reports no ECONNREFUSED after a reset in SYN_SENT, so a refusal without one is an
/// ICMP port unreachable; and of the unreachable codes only the administratively prohibited
/// ones are reported while connecting (the others wait, as soft errors, for the kernel's own
/// connect timeout, minutes after the retries that turn the hook on).
fn icmp_error_on_the_socket(c: &Case) -> Option<Finding> {
    let a = c.a;
    if !a.icmp.is_empty() || a.connected_ns.is_some() || a.rst.is_some() {
        return None;
    }
    let (gw, up) = (&c.gw, &c.up);
    let fw_drop =
        a.drops.iter().find(|d| d.by_netfilter()).map(|d| format!(", netfilter dropped the SYN in netns {}", d.netns)).unwrap_or_default();
    let Some(errno) = a.sock_err.map(|f| f.errno) else {
        // The error the gateway took before its report could read it.
        return a.error_taken_ns.is_some().then(|| {
            Finding::new(
                Cause::Rejected,
                format!(
                    "{gw}: a firewall rejected the connection to {up}: the connect ended with a socket error and no TCP reset, which an ICMP port unreachable or administratively prohibited does{fw_drop}"
                ),
            )
        });
    };
    let e = errno_name(errno.into());
    match errno {
        ECONNREFUSED => Some(Finding::new(
            Cause::Rejected,
            format!(
                "{gw}: a firewall rejected the connection to {up}: refused ({e}) without a TCP reset, which an ICMP port unreachable does{fw_drop}"
            ),
        )),
        EHOSTUNREACH | ENETUNREACH => Some(Finding::new(
            Cause::Rejected,
            format!(
                "{gw}: a firewall rejected the connection to {up}: {e} while connecting, which only an ICMP administratively prohibited does{fw_drop}"
            ),
        )),
        _ => None,
    }
}

/// 3. Local packet drops on the flow.
fn packet_dropped(c: &Case) -> Option<Finding> {
    let drop = c.a.drops.first()?;
    let (gw, up, reason, netns) = (&c.gw, &c.up, drop.reason.as_str(), drop.netns);
    Some(match reason {
        "NETFILTER_DROP" if c.a.rst.is_some() => Finding::new(
            Cause::Rejected,
            format!("{gw}: a firewall rejected the connection to {up} with a TCP reset (netfilter dropped the SYN in netns {netns})"),
        ),
        "NETFILTER_DROP" => Finding::new(
            Cause::Dropped,
            format!("{gw}: a firewall dropped packets to {up} (netfilter drop in netns {netns}; {} SYN retransmits)", c.a.syn_retransmits),
        ),
        "NEIGH_FAILED" | "NEIGH_QUEUEFULL" | "NEIGH_DEAD" | "NEIGH_CREATEFAIL" => {
            Finding::new(Cause::Unreachable, format!("{gw}: {up} is unreachable: no ARP/neighbour answer ({reason} in netns {netns})"))
        }
        "IP_OUTNOROUTES" | "IP_INNOROUTES" | "IP_RPFILTER" => {
            Finding::new(Cause::NoRoute, format!("{gw}: no route for packets to {up} ({reason} in netns {netns})"))
        }
        "TCP_LISTEN_OVERFLOW" => {
            Finding::new(Cause::Overloaded, format!("{gw}: {up} is overloaded: its listen backlog overflowed and SYNs were dropped"))
        }
        // An RST to a socket that is gone says nothing the RST itself does not.
        "NO_SOCKET" => return None,
        _ => Finding::new(
            Cause::Loss,
            format!(
                "{gw}: packets to or from {up} were lost on the path ({reason} in netns {netns}; {} retransmits)",
                c.a.syn_retransmits + c.a.retransmits
            ),
        ),
    })
}

/// 4. Refused: a crashed listener, or nothing listening.
fn refused(c: &Case) -> Option<Finding> {
    let a = c.a;
    let never_connected = a.connected_ns.is_none();
    let refused = a.rst.is_some_and(|r| r.refused()) || (never_connected && a.sock_err.is_some_and(|f| f.errno == ECONNREFUSED));
    if !refused {
        return None;
    }
    let (gw, up) = (&c.gw, &c.up);
    if let Some(d) = c.engine.dead_listener(a, 0, c.end) {
        let (who, ev) = death_note(d);
        let ago = ms_between(d.ts_ns, c.end);
        let finding = if d.crashed() {
            Finding::new(Cause::Crashed, format!("{gw}: {up} refused the connection because its listener died: {who} {ago:.0} ms earlier"))
        } else {
            Finding::new(Cause::Refused, format!("{gw}: {up} refused the connection: nothing listening since {who} {ago:.0} ms earlier"))
        };
        return Some(finding.with(ev));
    }
    let mut summary =
        format!("{gw}: {up} refused the connection (RST to SYN): nothing listening on that port, no firewall drop seen on this host");
    if a.dst.is_some_and(|d| d.ip().is_loopback()) && c.engine.host_netns.is_some_and(|host| host != a.netns) {
        summary.push_str(&format!(
            "; the gateway runs in network namespace {} (not the host's), so {} is that namespace's own loopback, not the host's: \
             a service on the host's localhost is not reachable there (the \"localhost inside a container\" mistake)",
            a.netns,
            a.dst.map(|d| d.ip().to_string()).unwrap_or_default()
        ));
    }
    Some(Finding::new(Cause::Refused, summary))
}

/// 5. Never connected, no RST: a full accept queue, unreachable, timed out.
fn never_connected(c: &Case) -> Option<Finding> {
    let a = c.a;
    if a.connected_ns.is_some() {
        return None;
    }
    let (gw, up, retrans) = (&c.gw, &c.up, a.syn_retransmits);
    if let Some(o) = c.engine.overflow_for(a, a.started_ns, c.end) {
        return Some(
            Finding::new(
                Cause::Overloaded,
                format!(
                    "{gw}: {up} is overloaded: the accept queue on {} was full, so its SYNs were dropped ({retrans} SYN retransmits)",
                    o.addr
                ),
            )
            .with(o.evidence.clone()),
        );
    }
    Some(match a.sock_err.map(|f| f.errno) {
        Some(EHOSTUNREACH) => Finding::new(
            Cause::Unreachable,
            format!("{gw}: {up} is unreachable (EHOSTUNREACH after {retrans} SYN retransmits, no ICMP seen: the host does not answer ARP)"),
        ),
        Some(ENETUNREACH) => Finding::new(Cause::NoRoute, format!("{gw}: no route to {up} (ENETUNREACH)")),
        Some(ETIMEDOUT) => Finding::new(
            Cause::Timeout,
            format!("{gw}: connect to {up} timed out after {retrans} SYN retransmits (no answer, no local drop seen)"),
        ),
        Some(e) => Finding::new(Cause::ConnectFailed, format!("{gw}: connect to {up} failed: {} ({e})", errno_name(e.into()))),
        None => Finding::new(
            Cause::Timeout,
            format!(
                "{gw}: connect to {up} got no answer in {:.0} ms ({retrans} SYN retransmits, no RST, no ICMP, no local drop seen)",
                ms_between(a.started_ns, c.end)
            ),
        ),
    })
}

/// 5b. TLS between the gateway and its upstream, read in the clear: the gateway's ClientHello
/// (or its OpenSSL-style 5-byte reads of record headers), the upstream's first record, and how
/// little the gateway sent after the upstream's hello.
fn tls_handshake(c: &Case) -> Option<Finding> {
    let a = c.a;
    let (gw, up) = (&c.gw, &c.up);
    let head = a.head.as_deref().unwrap_or_default();
    if a.http_answered_tls() {
        let line = head.split(|&b| b == b'\r' || b == b'\n').next().unwrap_or_default();
        let line = crate::engine::escaped::escape_bytes(&line[..line.len().min(60)]);
        let hello = if a.sent_client_hello() {
            "the gateway's TLS ClientHello"
        } else {
            "the gateway's TLS handshake (the gateway read a 5-byte TLS record header)"
        };
        return Some(Finding::new(
            Cause::PlainHttpBehindHttps,
            format!("{gw}: {up} answered {hello} in plain HTTP (\"{line}\"): a plain HTTP server behind https://"),
        ));
    }
    let answer = a.tls_answer?;
    let record = answer.record.describe();
    if a.request_head.as_deref().is_some_and(http::request_line_start) {
        return Some(Finding::new(
            Cause::TlsBehindHttp,
            format!(
                "{gw}: the gateway sent {up} a plain HTTP request and the upstream answered with {record}: a TLS server behind http://"
            ),
        ));
    }
    match answer.record.content {
        ContentType::Alert if a.sent_client_hello() || answer.header_only => {
            let what = match answer.record.alert {
                Some(alert) => format!("{record}: {}", alert.meaning()),
                None => format!("{record} (the gateway read its header; the alert's description came in its next read)"),
            };
            Some(Finding::new(Cause::TlsAlert, format!("{gw}: {up} answered the gateway's TLS ClientHello with {what}")))
        }
        ContentType::Handshake => {
            let hello_ms = ms_between(answer.ts_ns, c.end);
            // After the hello the gateway sent only an alert (and maybe the rest of a TLS 1.2
            // handshake), or closed without a word, at once: never an HTTP request.
            let gave_up = if a.handshake_abandoned() {
                format!("its last write was {} bytes (a TLS alert, no HTTP request), then the connection ended", a.bytes_sent)
            } else if !a.reused && a.local_close_ns.or(a.rst_sent_ns).is_some_and(|t| a.fin_ns.is_none_or(|f| f >= t)) {
                "it closed the connection without sending anything more".to_string()
            } else {
                return None;
            };
            if c.end.saturating_sub(answer.ts_ns) > HANDSHAKE_GIVE_UP_NS {
                return None;
            }
            Some(Finding::new(
                Cause::TlsCertRejected,
                format!(
                    "{gw}: the gateway closed the TLS connection to {up} {hello_ms:.1} ms after the upstream's hello ({record}) without sending \
                     an HTTP request: {gave_up}; it rejected the upstream's certificate (self-signed or from a CA it does not trust, expired, \
                     or for another name: the gateway's error log says which)"
                ),
            ))
        }
        _ => None,
    }
}

/// 6. What came back is not HTTP, or breaks the header syntax: the gateway had to reject it.
fn invalid_bytes(c: &Case) -> Option<Finding> {
    // A TLS hello is a handshake going on, not a broken HTTP answer.
    if c.a.tls_hello() {
        return None;
    }
    let head = c.a.head.as_deref()?;
    let why = invalid_http(head)?;
    let shown = crate::engine::escaped::escape_bytes(&head[..head.len().min(40)]);
    Some(Finding::new(Cause::InvalidResponse, format!("{}: {} answered with {why}: \"{shown}\"", c.gw, c.up)))
}

/// No gateway's header buffer is smaller (nginx: one page, 4 or 8 KB; HAProxy: tune.bufsize
/// less tune.maxrewrite, 15 KB, then up to 16 KB).
const MIN_HEAD_BUFFER: u64 = 1024;
/// A gateway gives up on a full header buffer as soon as it is full; a read timeout comes at
/// least its timeout after the last read, so later than this after the first byte.
const HEAD_GIVE_UP_NS: u64 = 1_000_000_000;

/// 6b. A valid response head that did not fit the gateway's buffer: the gateway read at least
/// a buffer's worth with no end of head, never read on to the upstream's end (no EOF), and
/// closed the connection itself at once. An upstream that closed early is read to its EOF.
fn head_too_large(c: &Case) -> Option<Finding> {
    let a = c.a;
    let head = a.head.as_deref()?;
    ResponseHead::parse(head).filter(|p| p.header_len.is_none())?;
    let got = a.bytes_recv;
    if got < MIN_HEAD_BUFFER || a.recv_end.is_some() || a.rst.is_some() {
        return None;
    }
    let closed = a.rst_sent_ns.or(a.local_close_ns)?;
    if closed.saturating_sub(a.response_ns?) > HEAD_GIVE_UP_NS {
        return None;
    }
    let how = if a.rst_sent_ns.is_some() { "reset the connection with response bytes unread" } else { "closed the connection first" };
    let upstream_fin =
        if a.fin_ns.is_some_and(|f| f <= closed) { " (the upstream's own close came later in its stream, unread)" } else { "" };
    let line = head.split(|&b| b == b'\r' || b == b'\n').next().unwrap_or_default();
    let line = crate::engine::escaped::escape_bytes(&line[..line.len().min(80)]);
    let setting = match c.a.comm.as_str() {
        "nginx" => "nginx's proxy_buffer_size (fastcgi_buffer_size for FastCGI; 4k or 8k by default)".to_string(),
        "haproxy" => "HAProxy's tune.bufsize (16384 by default, less tune.maxrewrite)".to_string(),
        other => format!("{other}'s response header buffer"),
    };
    Some(Finding::new(
        Cause::HeadTooLarge,
        format!(
            "{}: {} sent a response head (\"{line}\"...) larger than the gateway's header buffer: the gateway read {got} bytes with no end of the head among them, stopped reading and {how}{upstream_fin}; {setting} is smaller than the head",
            c.gw, c.up
        ),
    ))
}

/// 7. The upstream ended the connection before a complete response: reset, crash, close.
fn ended_by_upstream(c: &Case) -> Option<Finding> {
    let a = c.a;
    let (gw, up, got) = (&c.gw, &c.up, a.bytes_recv);
    let reset = a.rst.map(|r| r.ts_ns).or(a.recv_end.filter(|r| r.reset()).map(|r| r.ts_ns));
    if let Some(rst_ns) = reset {
        if let Some(d) = c.engine.dead_listener(a, a.started_ns, rst_ns) {
            return Some(died_handling(c, d, format!("the connection was reset after {got} response bytes")));
        }
        let when = if got == 0 { "before any response byte".to_string() } else { format!("after {got} response bytes") };
        let reuse = if a.reused { " (reused keep-alive connection)" } else { "" };
        return Some(Finding::new(Cause::Reset, format!("{gw}: {up} reset the connection{reuse} {when}")));
    }
    let fin_ns = a.fin_ns.or(a.recv_end.filter(|r| r.eof()).map(|r| r.ts_ns))?;
    if let Some(d) = c.engine.dead_listener(a, a.started_ns, fin_ns) {
        return Some(died_handling(c, d, format!("its connection closed after {got} response bytes")));
    }
    if a.reused && a.fin_ns.is_some_and(|f| f < a.started_ns) {
        return Some(Finding::new(Cause::ClosedEarly, format!("{gw}: {up} had closed the idle keep-alive connection the gateway reused")));
    }
    let mid_headers = a.head.as_deref().is_some_and(|h| {
        // An HTTP head, or a FastCGI stream's CGI head; not a TLS record.
        (h.starts_with(b"HTTP/") || fastcgi::is_records(h)) && !http::contains(h, b"\r\n\r\n") && got as usize <= h.len()
    });
    let when = if got == 0 {
        "before sending any response byte".to_string()
    } else if mid_headers {
        format!("in the middle of the response headers (after {got} bytes)")
    } else {
        format!("after {got} response bytes, before a complete response")
    };
    Some(Finding::new(Cause::ClosedEarly, format!("{gw}: {up} closed the connection {when}")))
}

/// 8. No valid answer came on an open connection: a read error, rejected bytes, or silence.
fn no_valid_answer(c: &Case) -> Option<Finding> {
    let a = c.a;
    let (gw, up, got) = (&c.gw, &c.up, a.bytes_recv);
    if let Some(e) = a.recv_end.and_then(|r| r.errno).or(a.sock_err.map(|f| f.errno)) {
        return Some(Finding::new(Cause::ReadError, format!("{gw}: reading from {up} failed with {} ({e})", errno_name(e.into()))));
    }
    // Bytes came back and the connection is fine: the gateway rejected them.
    if a.response_ns.is_some() && got > 0 {
        return Some(Finding::new(
            Cause::InvalidResponse,
            format!("{gw}: {up} answered {got} bytes that the gateway rejected as an invalid HTTP response"),
        ));
    }
    // Request sent, nothing back before the gateway gave up.
    let request_ns = a.request_ns?;
    let waited = ms_between(request_ns, a.local_close_ns.unwrap_or(c.status_ns));
    if a.retransmits > 0 {
        return Some(Finding::new(
            Cause::Loss,
            format!(
                "{gw}: {} retransmits on the connection to {up} and no response in {waited:.0} ms: packets are lost on the path",
                a.retransmits
            ),
        ));
    }
    Some(Finding::new(Cause::Stalled, format!("{gw}: {up} accepted the request but sent no response byte in {waited:.0} ms")))
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn summarize(a: &Attempt, status_ns: u64) -> AttemptSummary {
    let outcome = if let Some(f) = a.connect_err {
        format!("connect failed: {}", errno_name(f.errno.into()))
    } else if a.rst.is_some_and(|r| r.refused()) {
        "refused (RST to SYN)".into()
    } else if let Some(i) = a.icmp.first() {
        format!("ICMP {}", i.icmp.name())
    } else if a.connected_ns.is_none() {
        match a.sock_err {
            Some(f) => format!("connect failed: {}", errno_name(f.errno.into())),
            None => "no answer to SYN".into(),
        }
    } else if a.rst.is_some() {
        "reset".into()
    } else if a.fin_ns.is_some() || a.recv_end.is_some_and(|r| r.eof()) {
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
