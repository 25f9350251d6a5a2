//! The gateway's own DNS lookups (nginx's `resolver`, HAProxy's `resolvers`, Go's resolver in
//! Caddy): the messages the kernel ships (`dns_query`, `dns_answer`) read as RFC 1035 headers
//! and questions, paired into lookups, so that a 5xx answered without any upstream attempt
//! can be put down to a name that did not resolve, with the resolver and the time spent.
use std::{collections::VecDeque, net::SocketAddr};

use tracer_common::errno;

use crate::engine::dns_wire::{DnsMessage, parse, qtype_name, rcode_name};
use crate::engine::{
    decode::{KernelEvent, Kind, errno_name},
    verdict::Cause,
};

/// How a lookup ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Answered {
        rcode: u8,
        answers: u16,
    },
    /// The read on the resolver's socket failed (ECONNREFUSED: its port answered with ICMP),
    /// or the send did (a connected socket reports an earlier ICMP error there too).
    ReadFailed(i32),
    /// Something came back that is not read here (bytes not kept): not taken for a failure.
    Unknown,
    /// The answer did not fit a datagram (TC): the gateway asks again over TCP, which decides.
    Truncated,
    /// The resolver closed its TCP connection without answering.
    Closed,
}

/// A lookup over TCP (a truncated answer asked again, HAProxy's `tcp@` nameservers), as its
/// connection's story stands: the tracker follows it like any connection.
#[derive(Debug, Clone, Copy)]
pub struct TcpLookup<'a> {
    pub sock: u64,
    pub pid: u32,
    pub resolver: Option<SocketAddr>,
    pub started_ns: u64,
    /// The first answer's first bytes, behind its two-byte length.
    pub answer: Option<(u64, &'a [u8])>,
    /// The connection ended before an answer: when, and the error (0: closed by the resolver).
    pub failed: Option<(u64, i32)>,
}

/// One query and what came of it.
#[derive(Debug, Clone)]
pub struct Lookup {
    pub ts_ns: u64,
    pub pid: u32,
    pub sock: u64,
    pub resolver: Option<SocketAddr>,
    pub id: u16,
    pub name: String,
    pub qtype: u16,
    /// The same query sent again (resolvers resend an unanswered one).
    pub resent: u32,
    pub ended: Option<(u64, Outcome)>,
    /// Over TCP (`sock` is the connection's).
    pub tcp: bool,
}

impl Lookup {
    /// The lookup a shipped message starts: its query, or an answer whose query was not seen.
    fn of(ev: &KernelEvent, m: &DnsMessage, ended: Option<(u64, Outcome)>) -> Self {
        Lookup {
            ts_ns: ev.ts_ns,
            pid: ev.pid,
            sock: ev.sock,
            resolver: ev.dst,
            id: m.id,
            name: m.name.clone(),
            qtype: m.qtype,
            resent: 0,
            ended,
            tcp: m.tcp,
        }
    }
}

/// A name that did not resolve, as a verdict tells it.
#[derive(Debug, Clone)]
pub struct Unresolved {
    pub cause: Cause,
    pub name: String,
    pub resolver: String,
    /// The first query of the last round, and how it ended (None: no answer yet).
    pub asked_ns: u64,
    pub ended_ns: Option<u64>,
    pub queries: usize,
    /// What the resolver did, in words ("answered NXDOMAIN (the name does not exist)").
    pub what: String,
}

/// Lookups remembered (a resolver storm is bounded like everything else).
const MAX_LOOKUPS: usize = 256;
/// A 5xx this long after a lookup may be its consequence: nginx's `resolver_timeout` is 30 s
/// by default, HAProxy keeps a server out until a lookup succeeds.
pub const LOOKUP_RELEVANT_NS: u64 = 65_000_000_000;
/// Queries for one name sent this close to its latest are one round (A and AAAA, resends).
const ROUND_NS: u64 = 5_000_000_000;
/// A query unanswered for this long when the gateway gave up was not going to be answered.
const UNANSWERED_NS: u64 = 200_000_000;

#[derive(Debug, Default)]
pub struct Lookups {
    recent: VecDeque<Lookup>,
}

impl Lookups {
    fn remember(&mut self, lookup: Lookup) {
        if self.recent.len() == MAX_LOOKUPS {
            self.recent.pop_front();
        }
        self.recent.push_back(lookup);
    }

    pub fn on_event(&mut self, ev: &KernelEvent) {
        match ev.kind {
            Kind::DnsQuery => {
                let Some(m) = ev.dns.as_ref().filter(|m| !m.response && ev.value != 0) else { return };
                // A send that failed ended its lookup at once.
                let failed = (ev.value < 0).then(|| (ev.ts_ns, Outcome::ReadFailed(i32::try_from(-ev.value).unwrap_or(i32::MAX))));
                if let Some(l) = self.recent.iter_mut().rev().find(|l| l.sock == ev.sock && l.id == m.id && l.ended.is_none()) {
                    l.resent += 1;
                    l.ended = failed;
                    return;
                }
                self.remember(Lookup::of(ev, m, failed));
            }
            Kind::DnsAnswer => {
                let outcome = match &ev.dns {
                    Some(m) if m.response && m.truncated => Outcome::Truncated,
                    Some(m) if m.response && ev.value > 0 => Outcome::Answered { rcode: m.rcode, answers: m.answers },
                    _ if ev.value < 0 => Outcome::ReadFailed(i32::try_from(-ev.value).unwrap_or(i32::MAX)),
                    _ if ev.value > 0 => Outcome::Unknown,
                    _ => return,
                };
                let id = ev.dns.as_ref().filter(|m| m.response).map(|m| m.id);
                let open = self
                    .recent
                    .iter_mut()
                    .rev()
                    .find(|l| l.sock == ev.sock && l.ended.is_none() && id.is_none_or(|id| id == l.id) && l.ts_ns <= ev.ts_ns);
                match open {
                    Some(l) => l.ended = Some((ev.ts_ns, outcome)),
                    // Its query was not seen (a TCP connection's sends are not looked at): the
                    // answer's question names the lookup.
                    None => {
                        if let Some(m) = ev.dns.as_ref().filter(|m| m.tcp && m.response) {
                            self.remember(Lookup::of(ev, m, Some((ev.ts_ns, outcome))));
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Follow a lookup over TCP. Its name is in the answer's question; before an answer (a
    /// refused connection) it is the name whose UDP answer came back truncated just before,
    /// or none (HAProxy's `tcp@` nameservers ask over TCP from the start).
    pub fn on_tcp(&mut self, t: &TcpLookup) {
        let answer = t.answer.map(|(at, bytes)| (at, parse(bytes).filter(|m| m.response)));
        // The kernel reuses a closed socket's address: a lookup is its connection's (or kept-alive
        // exchange's) by its start too.
        let idx = match self.recent.iter().rposition(|l| l.tcp && l.sock == t.sock && l.ts_ns == t.started_ns) {
            Some(i) => i,
            None => {
                let asked_again = self.recent.iter().rev().find(|l| {
                    l.pid == t.pid
                        && !l.tcp
                        && l.resolver.map(|r| r.ip()) == t.resolver.map(|r| r.ip())
                        && matches!(l.ended, Some((at, Outcome::Truncated)) if at <= t.started_ns && at + ROUND_NS >= t.started_ns)
                });
                let (name, qtype, id) = asked_again.map(|l| (l.name.clone(), l.qtype, l.id)).unwrap_or_default();
                self.remember(Lookup {
                    ts_ns: t.started_ns,
                    pid: t.pid,
                    sock: t.sock,
                    resolver: t.resolver,
                    id,
                    name,
                    qtype,
                    resent: 0,
                    ended: None,
                    tcp: true,
                });
                self.recent.len() - 1
            }
        };
        let l = &mut self.recent[idx];
        if l.ended.is_some() {
            return;
        }
        if let Some((_, Some(m))) = &answer
            && l.name.is_empty()
        {
            (l.name, l.qtype, l.id) = (m.name.clone(), m.qtype, m.id);
        }
        l.ended = match (answer, t.failed) {
            (Some((at, Some(m))), _) => Some((at, Outcome::Answered { rcode: m.rcode, answers: m.answers })),
            (Some((at, None)), _) => Some((at, Outcome::Unknown)),
            (None, Some((at, 0))) => Some((at, Outcome::Closed)),
            (None, Some((at, err))) => Some((at, Outcome::ReadFailed(err))),
            (None, None) => None,
        };
    }

    /// The name process `pid` failed to resolve last, if its latest round of lookups before
    /// `t` got no address: the cause the gateway's 5xx without an upstream attempt points to.
    pub fn unresolved(&self, pid: u32, t: u64) -> Option<Unresolved> {
        let mine = || self.recent.iter().filter(move |l| l.pid == pid && l.ts_ns <= t && l.ts_ns + LOOKUP_RELEVANT_NS >= t);
        let latest = mine().next_back()?;
        // The round: this name's queries since the last lookup of it that had ended when the
        // latest was sent (an earlier round's answer, even a good one, says nothing of this one).
        let earlier_end = mine()
            .filter(|l| l.name == latest.name)
            .filter_map(|l| l.ended.map(|(at, _)| at))
            .filter(|&at| at < latest.ts_ns)
            .max()
            .unwrap_or(0);
        let round: Vec<&Lookup> =
            mine().filter(|l| l.name == latest.name && l.ts_ns + ROUND_NS >= latest.ts_ns && l.ts_ns > earlier_end).collect();
        let ended_by_t = |l: &&Lookup| l.ended.filter(|(at, _)| *at <= t);
        if round
            .iter()
            .filter_map(ended_by_t)
            .any(|(_, o)| matches!(o, Outcome::Answered { rcode: 0, answers } if answers > 0) || o == Outcome::Unknown)
        {
            return None;
        }
        // A truncated answer is decided by the lookup over TCP that follows it. None followed
        // (Caddy's transport `resolvers` dial UDP whatever Go asks for): the truncation is
        // the end.
        let over_tcp = round.iter().any(|l| l.tcp);
        let truncated = |l: &&Lookup| over_tcp && matches!(ended_by_t(l), Some((_, Outcome::Truncated)));
        // The most telling end of the round: a refusal of the port or an error code, then an
        // empty answer, then silence.
        let rank = |o: &Outcome| match o {
            Outcome::ReadFailed(_) | Outcome::Closed => 0,
            Outcome::Answered { rcode, .. } if *rcode != 0 => 1,
            Outcome::Answered { .. } | Outcome::Unknown | Outcome::Truncated => 2,
        };
        let ended = round.iter().filter(|l| !truncated(l)).filter_map(|l| ended_by_t(l).map(|e| (*l, e))).min_by_key(|(_, (_, o))| rank(o));
        let first = round[0];
        let resolver = first.resolver.map_or_else(|| "?".to_string(), |r| r.to_string());
        let (cause, what, ended_ns) = match ended {
            Some((l, (at, Outcome::ReadFailed(e)))) => (
                Cause::DnsUnreachable,
                match (l.tcp, e) {
                    (false, errno::ECONNREFUSED) => {
                        "refused the query: its DNS port answered with ICMP port unreachable (ECONNREFUSED on the read)".to_string()
                    }
                    (true, errno::ECONNREFUSED) => "refused the TCP connection to its DNS port (RST to SYN)".to_string(),
                    (true, errno::ECONNRESET) => "reset the TCP connection before answering".to_string(),
                    (true, e) => format!("could not be reached over TCP: {} ({e})", errno_name(-(e as i64))),
                    (false, e) => format!("could not be read from: {} ({e})", errno_name(-(e as i64))),
                },
                Some(at.max(l.ts_ns)),
            ),
            Some((_, (at, Outcome::Closed))) => (Cause::DnsError, "closed the TCP connection without answering".to_string(), Some(at)),
            Some((_, (at, Outcome::Truncated))) => (
                Cause::DnsError,
                "answered with truncated (TC) replies only, and the gateway asked no further over TCP".to_string(),
                Some(at),
            ),
            Some((l, (at, Outcome::Answered { rcode, .. }))) if rcode != 0 => (
                match rcode {
                    3 => Cause::DnsNxdomain,
                    2 => Cause::DnsServfail,
                    5 => Cause::DnsRefused,
                    _ => Cause::DnsError,
                },
                format!(
                    "answered {} ({}) {:.0} ms after the {} query{}",
                    rcode_name(rcode),
                    match rcode {
                        3 => "the name does not exist",
                        2 => "the resolver failed to get an answer",
                        5 => "the resolver will not answer this client",
                        _ => "an error",
                    },
                    (at - l.ts_ns) as f64 / 1e6,
                    qtype_name(l.qtype),
                    if l.tcp { " over TCP" } else { "" }
                ),
                Some(at),
            ),
            Some((_, (at, _))) => (Cause::DnsNoAddress, "answered with no address for it (NOERROR, no records)".to_string(), Some(at)),
            None if t.saturating_sub(first.ts_ns) >= UNANSWERED_NS => (
                Cause::DnsTimeout,
                format!(
                    "sent no answer in {:.0} ms ({} quer{} sent{})",
                    (t - first.ts_ns) as f64 / 1e6,
                    round.len(),
                    if round.len() == 1 { "y" } else { "ies" },
                    match round.iter().map(|l| l.resent).sum::<u32>() {
                        0 => String::new(),
                        n => format!(", {n} resent"),
                    }
                ),
                None,
            ),
            None => return None,
        };
        Some(Unresolved { cause, name: latest.name.clone(), resolver, asked_ns: first.ts_ns, ended_ns, queries: round.len(), what })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `name` (type A) with id 0x1234, or its answer with `rcode` and `answers`.
    fn message(name: &str, answer: Option<(u8, u16)>) -> Vec<u8> {
        let flags: u16 = match answer {
            Some((rcode, _)) => 0x8180 | rcode as u16,
            None => 0x0100,
        };
        let mut m = vec![0x12, 0x34];
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m.extend_from_slice(&answer.map_or(0, |a| a.1).to_be_bytes());
        m.extend_from_slice(&[0, 0, 0, 0]);
        for label in name.split('.') {
            m.push(label.len() as u8);
            m.extend_from_slice(label.as_bytes());
        }
        m.extend_from_slice(&[0, 0, 1, 0, 1]);
        m
    }

    #[test]
    fn reads_header_and_question() {
        let q = parse(&message("app.lab", None)).unwrap();
        assert_eq!(
            q,
            DnsMessage {
                id: 0x1234,
                response: false,
                rcode: 0,
                answers: 0,
                name: "app.lab".into(),
                qtype: 1,
                truncated: false,
                tcp: false
            }
        );
        let a = parse(&message("app.lab", Some((3, 0)))).unwrap();
        assert!(a.response && a.rcode == 3 && a.name == "app.lab");
        // Cut by the kernel's copy: the name so far, said to be cut.
        let m = message("averyveryverylongname.example.org", None);
        assert_eq!(parse(&m[..20]).unwrap().name, "averyve...");
        // Not DNS.
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(parse(&[0; 5]), None);
        // Bytes outside a name's set cannot forge anything in a summary.
        assert_eq!(parse(&message("a\nb.lab", None)).unwrap().name, "a\\nb.lab");
    }

    fn event(kind: Kind, ts_ms: u64, bytes: Option<Vec<u8>>, value: i64) -> KernelEvent {
        let mut ev = KernelEvent::listen_snapshot(ts_ms * 1_000_000, 7, "nginx", "10.0.0.1:40000".parse().unwrap());
        ev.kind = kind;
        ev.sock = 0xabc;
        ev.src = Some("10.0.0.1:40000".parse().unwrap());
        ev.dst = Some("10.0.0.53:53".parse().unwrap());
        ev.dns = bytes.as_deref().and_then(parse);
        ev.value = value;
        ev
    }

    fn ms(t: u64) -> u64 {
        t * 1_000_000
    }

    #[test]
    fn a_name_that_did_not_resolve_is_told_by_its_last_round() {
        let mut l = Lookups::default();
        l.on_event(&event(Kind::DnsQuery, 1000, Some(message("app.lab", None)), 30));
        assert!(l.unresolved(7, ms(1100)).is_none(), "asked 100 ms ago: not yet a silence");
        l.on_event(&event(Kind::DnsAnswer, 1002, Some(message("app.lab", Some((3, 0)))), 30));
        let u = l.unresolved(7, ms(1010)).unwrap();
        assert_eq!((u.cause, u.name.as_str(), u.resolver.as_str()), (Cause::DnsNxdomain, "app.lab", "10.0.0.53:53"));
        assert!(u.what.contains("NXDOMAIN") && u.what.contains("2 ms"), "{}", u.what);
        assert!(l.unresolved(8, ms(1010)).is_none(), "another process asked nothing");

        // Later the name resolves: a later 5xx is not put down to it.
        l.on_event(&event(Kind::DnsQuery, 5000, Some(message("app.lab", None)), 30));
        l.on_event(&event(Kind::DnsAnswer, 5001, Some(message("app.lab", Some((0, 1)))), 46));
        assert!(l.unresolved(7, ms(5010)).is_none());

        // The resolver's port refuses (ICMP): the read fails.
        let mut l = Lookups::default();
        l.on_event(&event(Kind::DnsQuery, 1000, Some(message("app.lab", None)), 30));
        l.on_event(&event(Kind::DnsAnswer, 1001, None, -(errno::ECONNREFUSED as i64)));
        assert_eq!(l.unresolved(7, ms(1500)).unwrap().cause, Cause::DnsUnreachable);

        // Silence, with the query resent.
        let mut l = Lookups::default();
        for t in [1000, 2000, 3000] {
            l.on_event(&event(Kind::DnsQuery, t, Some(message("app.lab", None)), 30));
        }
        let u = l.unresolved(7, ms(4000)).unwrap();
        assert_eq!((u.cause, u.queries), (Cause::DnsTimeout, 1));
        assert!(u.what.contains("3000 ms") && u.what.contains("2 resent"), "{}", u.what);
        assert!(l.unresolved(7, ms(1000 + LOOKUP_RELEVANT_NS / 1_000_000 + 3000)).is_none(), "too old to explain");
    }

    #[test]
    fn what_cannot_be_read_is_no_failure_and_each_round_stands_alone() {
        // An answer whose bytes were not kept closes its lookup: no silence to blame later.
        let mut l = Lookups::default();
        l.on_event(&event(Kind::DnsQuery, 1000, Some(message("app.lab", None)), 30));
        l.on_event(&event(Kind::DnsAnswer, 1001, None, 46));
        assert!(l.unresolved(7, ms(2000)).is_none());
        // Truncated answers and no lookup over TCP after them: the gateway never got a
        // whole answer.
        let mut l = Lookups::default();
        l.on_event(&event(Kind::DnsQuery, 1000, Some(message("app.lab", None)), 30));
        let mut tc = message("app.lab", Some((0, 0)));
        tc[2] |= 0x02;
        l.on_event(&event(Kind::DnsAnswer, 1001, Some(tc), 30));
        let u = l.unresolved(7, ms(2000)).unwrap();
        assert_eq!(u.cause, Cause::DnsError);
        assert!(u.what.contains("truncated (TC) replies only"), "{}", u.what);
        // A send refused (an earlier ICMP error reported on the connected socket).
        let mut l = Lookups::default();
        l.on_event(&event(Kind::DnsQuery, 1000, Some(message("app.lab", None)), -(errno::ECONNREFUSED as i64)));
        assert_eq!(l.unresolved(7, ms(1010)).unwrap().cause, Cause::DnsUnreachable);
        // A good answer a second ago does not hide the failure of the round after it.
        let mut l = Lookups::default();
        l.on_event(&event(Kind::DnsQuery, 1000, Some(message("app.lab", None)), 30));
        l.on_event(&event(Kind::DnsAnswer, 1001, Some(message("app.lab", Some((0, 1)))), 46));
        let mut again = message("app.lab", None);
        again[1] = 0x35;
        l.on_event(&event(Kind::DnsQuery, 2000, Some(again.clone()), 30));
        again[2] = 0x81;
        again[3] = 0x82;
        l.on_event(&event(Kind::DnsAnswer, 2001, Some(again), 30));
        assert_eq!(l.unresolved(7, ms(2010)).unwrap().cause, Cause::DnsServfail);
        // An error answer without its question still ends its lookup.
        assert!(parse(&[0x12, 0x34, 0x81, 0x85, 0, 0, 0, 0, 0, 0, 0, 0]).is_some_and(|m| m.rcode == 5 && m.name.is_empty()));
    }

    #[test]
    fn lookups_over_tcp_end_as_their_connection_does() {
        let resolver = Some("10.0.0.53:53".parse().unwrap());
        let feed = |l: &mut Lookups, sock: u64, started_ms: u64, answer: Option<(u64, &[u8])>, failed: Option<(u64, i32)>| {
            let answer = answer.map(|(at, b)| (ms(at), b));
            let failed = failed.map(|(at, e)| (ms(at), e));
            l.on_tcp(&TcpLookup { sock, pid: 7, resolver, started_ns: ms(started_ms), answer, failed });
        };
        // nginx: the UDP answer is truncated, the TCP connection to the same resolver is
        // refused. The name comes from the truncated lookup.
        let mut l = Lookups::default();
        l.on_event(&event(Kind::DnsQuery, 1000, Some(message("app.lab", None)), 30));
        let mut tc = message("app.lab", Some((0, 0)));
        tc[2] |= 0x02;
        l.on_event(&event(Kind::DnsAnswer, 1001, Some(tc), 30));
        feed(&mut l, 0xdef, 1002, None, None);
        assert!(l.unresolved(7, ms(1002)).is_none(), "connecting, 0 ms: not yet a silence");
        feed(&mut l, 0xdef, 1002, None, Some((1003, errno::ECONNREFUSED)));
        let u = l.unresolved(7, ms(1010)).unwrap();
        assert_eq!((u.cause, u.name.as_str()), (Cause::DnsUnreachable, "app.lab"));
        assert!(u.what.contains("refused the TCP connection"), "{}", u.what);

        // Over TCP from the start (HAProxy's `tcp@`): refused before any query, no name.
        let mut l = Lookups::default();
        feed(&mut l, 0xdef, 1000, None, Some((1001, errno::ECONNREFUSED)));
        let u = l.unresolved(7, ms(1010)).unwrap();
        assert_eq!((u.cause, u.name.as_str()), (Cause::DnsUnreachable, ""));

        // An answer over TCP (two-byte length stripped by the caller): its code and name.
        let mut l = Lookups::default();
        let nx = message("app.lab", Some((3, 0)));
        feed(&mut l, 0xdef, 1000, Some((1004, &nx)), None);
        let u = l.unresolved(7, ms(1010)).unwrap();
        assert_eq!((u.cause, u.name.as_str()), (Cause::DnsNxdomain, "app.lab"));
        assert!(u.what.contains("over TCP"), "{}", u.what);
        // A later event of the same connection changes nothing.
        feed(&mut l, 0xdef, 1000, Some((1004, &nx)), Some((1005, 0)));
        assert_eq!(l.unresolved(7, ms(1010)).unwrap().cause, Cause::DnsNxdomain);

        // An answer read on a TCP connection older than the trace (its query unseen).
        let mut l = Lookups::default();
        let mut ev = event(Kind::DnsAnswer, 1000, Some(message("app.lab", Some((3, 0)))), 40);
        ev.dns.as_mut().unwrap().tcp = true;
        l.on_event(&ev);
        let u = l.unresolved(7, ms(1010)).unwrap();
        assert_eq!((u.cause, u.name.as_str()), (Cause::DnsNxdomain, "app.lab"));

        // Closed without an answer; and a good answer over TCP is no failure.
        let mut l = Lookups::default();
        feed(&mut l, 0xdef, 1000, None, Some((1001, 0)));
        assert_eq!(l.unresolved(7, ms(1010)).unwrap().cause, Cause::DnsError);
        let ok = message("app.lab", Some((0, 1)));
        feed(&mut l, 0xabc, 2000, Some((2001, &ok)), None);
        assert!(l.unresolved(7, ms(2010)).is_none());
    }
}
