//! Per-connection and per-exchange state, built from typed kernel events. One `Attempt` is
//! one try to get a response from an upstream: a fresh connection, or one exchange on a
//! reused keep-alive connection. Host-wide context (process deaths, listeners, packet drops,
//! ICMP errors) is kept here too, so `attribute` can explain an attempt's end.
//! Pure: no I/O, no clock but the events' own stamps.
use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::Arc,
};

use serde::Serialize;

use tracer_common::{errno, signal};

use crate::engine::{
    decode::{Comm, KernelEvent, Kind, SocketFacts, TcpState, icmp_name},
    tls,
    verdict::{Detail, Peer, Step},
};

/// Keys here are ids, socket addresses and pids: spread already, attacker-free (they come
/// from the kernel), so a multiply is hash enough and much cheaper than SipHash.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    /// A multiply mixes upwards only: a product's low bits depend on the key's low bits alone,
    /// and socket addresses are slab-aligned (their low 6-11 bits are zero). The table picks
    /// buckets by the low bits, so the well-mixed high half is rotated down.
    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(v as u64);
    }
}

pub type IdMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;

/// How long unexplained attempts and host context are kept (longer than nginx's default 60 s
/// timeouts).
pub const KEEP_NS: u64 = 75_000_000_000;
/// Attempts that succeeded or were already explained can explain nothing more: they go soon
/// (a failure storm makes tens of thousands a second).
const DONE_KEEP_NS: u64 = 1_000_000_000;
/// Bounds, so a flood cannot grow memory without limit (oldest dropped first, counted).
pub const MAX_ATTEMPTS: usize = 200_000;
const MAX_HOST_FACTS: usize = 4096;
/// Packets not yet matched to an attempt (kept briefly; the newest win).
const MAX_LOOSE: usize = 512;
/// Attempts remembered per gateway thread for linking (newest kept): a busy worker makes
/// thousands per second, and only recent ones can explain a status it writes now.
const PER_THREAD: usize = 1024;
/// Ended, unexplained attempts a thread's status may still claim. Without losses only the few
/// that ended while the previous status was being written are waiting; after a ring-buffer
/// overflow (statuses lost) this bounds the work per status instead of the whole queue.
const ENDED_PER_THREAD: usize = 128;
/// Attempts remembered per upstream endpoint for matching packet drops and ICMP errors.
const PER_ENDPOINT: usize = 64;

/// The most a TLS client sends when it gives up a handshake: a ChangeCipherSpec (6 bytes, TLS
/// 1.3's middlebox compatibility) and an alert, plain (7) or encrypted (24). A handshake's next
/// flight (Finished, at least 64 bytes in TLS 1.3) or any HTTP request is longer.
pub const MAX_ALERT_FLIGHT: u64 = 40;
/// A gateway that rejects the upstream's certificate gives up at once, when it has checked the
/// hello; one that waits longer is waiting for the rest (a stalled handshake).
pub const HANDSHAKE_GIVE_UP_NS: u64 = 1_000_000_000;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Evidence {
    #[serde(skip)]
    pub ts_ns: u64,
    pub event: &'static str,
    pub detail: Detail,
}

impl Evidence {
    pub fn from_event(ev: &KernelEvent) -> Self {
        Self { ts_ns: ev.ts_ns, event: ev.kind.name(), detail: ev.detail().into() }
    }
}

/// An RST that arrived, and the state the connection was in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResetSeen {
    pub ts_ns: u64,
    pub state: Option<TcpState>,
}

impl ResetSeen {
    /// An RST answering the SYN: the connection was refused.
    pub fn refused(&self) -> bool {
        self.state == Some(TcpState::SynSent)
    }
}

/// An error the kernel reported (positive errno), and when.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Failure {
    pub ts_ns: u64,
    pub errno: i32,
}

/// How the gateway's read of the upstream ended: end of stream, or an error.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReadEnd {
    pub ts_ns: u64,
    /// None: the read returned 0 (the upstream's FIN).
    pub errno: Option<i32>,
    /// The read before it ended with a FastCGI `FCGI_END_REQUEST` record (the kernel looks
    /// at the last bytes of each read on a unix-socket upstream): the response was whole.
    pub after_fastcgi_end: bool,
}

impl ReadEnd {
    fn from_event(ev: &KernelEvent) -> Self {
        let errno = (ev.value < 0).then(|| i32::try_from(-ev.value).unwrap_or(i32::MAX));
        Self { ts_ns: ev.ts_ns, errno, after_fastcgi_end: ev.aux & tracer_common::RECV_END_AFTER_FCGI_END != 0 }
    }

    pub fn eof(&self) -> bool {
        self.errno.is_none()
    }

    pub fn reset(&self) -> bool {
        self.errno == Some(errno::ECONNRESET)
    }
}

/// A packet of the flow that the kernel dropped, why (the kernel's drop reason name) and where.
#[derive(Debug, Clone, PartialEq)]
pub struct PacketDrop {
    pub ts_ns: u64,
    pub reason: String,
    pub netns: u32,
}

impl PacketDrop {
    pub fn by_netfilter(&self) -> bool {
        self.reason == "NETFILTER_DROP"
    }
}

/// An ICMP error's type and code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Icmp {
    pub kind: u8,
    pub code: u8,
}

impl Icmp {
    const DEST_UNREACHABLE: u8 = 3;
    const PORT_UNREACHABLE: u8 = 3;

    /// From an event's `value` (type << 8 | code).
    pub fn from_value(v: i64) -> Self {
        Self { kind: (v >> 8) as u8, code: (v & 0xff) as u8 }
    }

    pub fn value(self) -> i64 {
        (self.kind as i64) << 8 | self.code as i64
    }

    pub fn name(self) -> String {
        icmp_name(self.value())
    }

    pub fn destination_unreachable(self) -> bool {
        self.kind == Self::DEST_UNREACHABLE
    }

    /// Network, host or communication administratively prohibited: a firewall's answer.
    pub fn prohibited(self) -> bool {
        self.destination_unreachable() && matches!(self.code, 9 | 10 | 13)
    }

    pub fn port_unreachable(self) -> bool {
        self.destination_unreachable() && self.code == Self::PORT_UNREACHABLE
    }
}

/// An ICMP error about the flow, and who sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct IcmpSeen {
    pub ts_ns: u64,
    pub icmp: Icmp,
    pub from: String,
}

/// The upstream's first answer on a connection when it was a TLS record (its hello, or an
/// alert), and when it came. Kept across the exchanges the kernel splits a handshake into
/// (the gateway's ClientHello, then its next flight), so a later one knows the connection
/// never got past the handshake's start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TlsAnswer {
    pub ts_ns: u64,
    pub record: tls::Record,
    /// The gateway's read held the record header alone (5 bytes): how an OpenSSL client reads.
    pub header_only: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub id: u64,
    pub sock: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: Comm,
    pub netns: u32,
    pub dst: Option<SocketAddr>,
    pub src: Option<SocketAddr>,
    pub path: Option<String>,
    /// `dst` or `path` as text (`upstream()`), made once: a verdict names its upstream many
    /// times, and in a storm formatting it again was a tenth of the engine's time.
    label: Arc<str>,
    /// A unix socket file that refused the connect for permission, as the host saw it.
    pub socket_file: Option<crate::engine::decode::SocketFile>,
    pub started_ns: u64,
    /// An exchange on a connection that already carried one (keep-alive reuse).
    pub reused: bool,
    pub connected_ns: Option<u64>,
    pub request_ns: Option<u64>,
    pub response_ns: Option<u64>,
    /// Byte counters of the connection when this exchange began (keep-alive reuse).
    pub base_sent: u64,
    pub base_recv: u64,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub syn_retransmits: u32,
    pub retransmits: u32,
    /// First time the peer's FIN was seen (ESTABLISHED -> CLOSE_WAIT).
    pub fin_ns: Option<u64>,
    pub rst: Option<ResetSeen>,
    pub rst_sent_ns: Option<u64>,
    pub sock_err: Option<Failure>,
    /// The socket reported an error while connecting, but the gateway, woken first, took it
    /// (the report reads 0): a fatal ICMP error when no reset came.
    pub error_taken_ns: Option<u64>,
    /// connect(2) failed at once.
    pub connect_err: Option<Failure>,
    pub recv_end: Option<ReadEnd>,
    /// The gateway closed the connection first (timeout or giving up): ESTABLISHED ->
    /// FIN_WAIT1 or SYN_SENT -> CLOSE with no error.
    pub local_close_ns: Option<u64>,
    pub closed_ns: Option<u64>,
    /// Packet drops and ICMP errors matched to this flow.
    pub drops: Vec<PacketDrop>,
    pub icmp: Vec<IcmpSeen>,
    /// First bytes of the response, as the gateway read them.
    pub head: Option<Vec<u8>>,
    /// Bytes in the first read of the response.
    pub first_read: Option<u64>,
    /// First bytes of the connection's first request (a TLS ClientHello or a request line).
    pub request_head: Option<Vec<u8>>,
    /// The upstream answered the connection's first request with a TLS record.
    pub tls_answer: Option<TlsAnswer>,
    pub last_state: TcpState,
    pub last_ns: u64,
    /// Claimed by a verdict already.
    pub consumed: bool,
    pub evidence: Vec<Evidence>,
    /// A TCP connection to a resolver's DNS port: a lookup (`dns.rs`), not an upstream attempt.
    pub dns: bool,
}

/// An upstream as verdicts name it: `ip:port`, `unix:/path`, or `?`.
fn upstream_label(dst: Option<SocketAddr>, path: Option<&str>) -> Arc<str> {
    match (dst, path) {
        (Some(a), _) => a.to_string().into(),
        (None, Some(p)) => format!("unix:{p}").into(),
        (None, None) => "?".into(),
    }
}

impl Attempt {
    fn new(id: u64, ev: &KernelEvent, reused: bool) -> Self {
        Attempt {
            id,
            sock: ev.sock,
            pid: ev.pid,
            tid: ev.tid,
            comm: ev.comm,
            netns: ev.netns,
            dst: ev.dst,
            src: ev.src.filter(|a| a.port() != 0),
            path: ev.path.clone(),
            label: upstream_label(ev.dst, ev.path.as_deref()),
            socket_file: ev.socket_file.clone(),
            started_ns: ev.ts_ns,
            reused,
            connected_ns: None,
            request_ns: None,
            response_ns: None,
            base_sent: 0,
            base_recv: 0,
            bytes_sent: 0,
            bytes_recv: 0,
            syn_retransmits: 0,
            retransmits: 0,
            fin_ns: None,
            rst: None,
            rst_sent_ns: None,
            sock_err: None,
            error_taken_ns: None,
            connect_err: None,
            recv_end: None,
            local_close_ns: None,
            closed_ns: None,
            drops: vec![],
            icmp: vec![],
            head: None,
            first_read: None,
            request_head: None,
            tls_answer: None,
            last_state: TcpState::SynSent,
            last_ns: ev.ts_ns,
            consumed: false,
            evidence: vec![],
            dns: ev.to_resolver(),
        }
    }

    pub fn upstream(&self) -> String {
        self.label.to_string()
    }

    /// The upstream's text, shared (`upstream` copies it).
    pub fn label(&self) -> Arc<str> {
        self.label.clone()
    }

    /// The upstream as evidence names it (shared, not copied).
    pub fn peer(&self) -> Peer {
        Peer::Label(self.label.clone())
    }

    /// A connection to a resolver's DNS port, as a lookup: its answer, or how it ended
    /// without one (refused, reset, closed; the gateway giving up is no end of the resolver's).
    pub fn as_tcp_lookup(&self) -> crate::engine::dns::TcpLookup<'_> {
        let answer = self.response_ns.zip(self.head.as_deref().and_then(|h| h.get(2..)));
        let failed = if answer.is_some() {
            None
        } else if let Some(f) = self.connect_err.or(self.sock_err) {
            Some((f.ts_ns, f.errno))
        } else if let Some(r) = self.rst {
            Some((r.ts_ns, if r.refused() { errno::ECONNREFUSED } else { errno::ECONNRESET }))
        } else if let Some(r) = self.recv_end {
            Some((r.ts_ns, r.errno.unwrap_or(0)))
        } else {
            self.fin_ns.map(|at| (at, 0))
        };
        crate::engine::dns::TcpLookup { sock: self.sock, pid: self.pid, resolver: self.dst, started_ns: self.started_ns, answer, failed }
    }

    /// When the attempt visibly ended (or None while it is still open and quiet).
    pub fn end_ns(&self) -> Option<u64> {
        [
            self.connect_err.map(|x| x.ts_ns),
            self.rst.map(|x| x.ts_ns),
            self.sock_err.map(|x| x.ts_ns),
            self.fin_ns,
            self.recv_end.map(|x| x.ts_ns),
            self.local_close_ns,
            self.closed_ns,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Did it deliver a response and end normally? Then it cannot explain an error.
    pub fn succeeded(&self) -> bool {
        self.response_ns.is_some()
            && self.rst.is_none()
            && self.sock_err.is_none()
            && self.recv_end.is_none_or(|r| r.eof())
            // An upstream's TLS hello is no HTTP, and no failure either.
            && (self.head.as_deref().is_none_or(|h| crate::engine::http::invalid_http(h).is_none()) || self.tls_hello())
            && !self.http_answered_tls()
            && !self.handshake_abandoned()
            && !self.tls_refused()
            || self.tls_goodbye()
    }

    /// The connection carries TLS: the gateway opened it with a ClientHello, or the upstream
    /// answered with its hello.
    pub fn speaks_tls(&self) -> bool {
        self.sent_client_hello() || self.tls_hello()
    }

    /// The upstream answered the connection's first request with a TLS handshake record.
    pub fn tls_hello(&self) -> bool {
        self.tls_answer.is_some_and(|t| t.record.content == tls::ContentType::Handshake)
    }

    /// The upstream's first TLS record was no hello (an alert), or came in answer to plain HTTP.
    pub fn tls_refused(&self) -> bool {
        self.tls_answer.is_some_and(|t| {
            t.record.content != tls::ContentType::Handshake
                || self.request_head.as_deref().is_some_and(crate::engine::http::request_line_start)
        })
    }

    /// The close_notify a gateway sends when it closes an idle kept-alive TLS connection: an
    /// exchange of one short write (no request fits), long after the handshake, answered by
    /// nothing, ended by the gateway's own close. Not a request: nothing that can fail.
    pub fn tls_goodbye(&self) -> bool {
        self.reused
            && self.tls_answer.is_some_and(|t| t.record.content == tls::ContentType::Handshake)
            && !self.handshake_abandoned()
            && self.bytes_sent <= MAX_ALERT_FLIGHT
            && self.response_ns.is_none()
            && self.local_close_ns.is_some()
            && self.rst.is_none()
            && self.sock_err.is_none()
    }

    /// An exchange after the upstream's TLS hello in which the gateway sent no more than an
    /// alert (and a ChangeCipherSpec): no handshake's next flight, no HTTP request. Within a
    /// second of the hello: later, a short write is the close_notify a gateway sends when it
    /// closes an idle kept-alive connection.
    pub fn handshake_abandoned(&self) -> bool {
        self.reused
            && self
                .tls_answer
                .is_some_and(|t| t.record.content == tls::ContentType::Handshake && self.started_ns <= t.ts_ns + HANDSHAKE_GIVE_UP_NS)
            && self.bytes_sent <= MAX_ALERT_FLIGHT
    }

    /// The gateway opened the connection with a TLS ClientHello record.
    pub fn sent_client_hello(&self) -> bool {
        self.request_head.as_deref().and_then(tls::Record::parse).is_some_and(|r| r.content == tls::ContentType::Handshake)
    }

    /// The gateway spoke TLS (its ClientHello, or an OpenSSL-style 5-byte record-header
    /// read) and the upstream answered in plain HTTP: a plain HTTP server behind https://.
    pub fn http_answered_tls(&self) -> bool {
        let http = self.head.as_deref().is_some_and(|h| h.starts_with(b"HTTP/"));
        !self.reused && http && (self.sent_client_hello() || (self.request_head.is_none() && self.first_read == Some(5)))
    }

    /// The response began with a 5xx status line: it may be the one the gateway passes on,
    /// on a connection that stays open.
    pub fn answered_5xx(&self) -> bool {
        self.head.as_deref().and_then(crate::engine::http::ResponseHead::parse).is_some_and(|p| p.status >= 500)
    }

    fn touch(&mut self, ev: &KernelEvent) {
        self.last_ns = self.last_ns.max(ev.ts_ns);
        if self.src.is_none() {
            self.src = ev.src.filter(|a| a.port() != 0);
        }
        // The routine steps of every exchange are kept as fields and written out only for a
        // verdict (`routine_evidence`): most attempts succeed, so they must cost little.
        let routine = matches!(ev.kind, Kind::ConnectStart | Kind::RequestSent | Kind::ResponseStart)
            || (ev.kind == Kind::StateChange && ev.old_state == Some(TcpState::SynSent) && ev.new_state == Some(TcpState::Established));
        if !routine && self.evidence.len() < 64 {
            // Socket events of a unix-socket upstream carry no address: name it by its path.
            // Named by the attempt's own label when the event names the same peer (no new
            // formatting of the address).
            let peer = match (ev.dst, &ev.path, &self.path) {
                (None, None, Some(_)) => Some(self.peer()),
                (Some(dst), _, _) if self.dst == Some(dst) => Some(self.peer()),
                (Some(dst), _, _) => Some(Peer::Addr(dst)),
                _ => None,
            };
            let detail = match (peer, SocketFacts::of(ev)) {
                (Some(peer), Some(facts)) => Detail::Socket { peer, facts },
                _ => ev.detail().into(),
            };
            self.evidence.push(Evidence { ts_ns: ev.ts_ns, event: ev.kind.name(), detail });
        }
    }

    /// The routine steps (connect, established, request, first response byte) as evidence.
    pub fn routine_evidence(&self) -> Vec<Evidence> {
        let up = &self.label;
        let mut out = Vec::with_capacity(4);
        let step = |ts_ns, event: &'static str, step: Step| Evidence { ts_ns, event, detail: Detail::Step { peer: self.peer(), step } };
        let item = |ts_ns, event: &'static str, detail: String| Evidence { ts_ns, event, detail: detail.into() };
        if self.reused {
            out.push(step(self.started_ns, "request_sent", Step::RequestSentReused));
        } else {
            // A unix-socket connect is one step, already in the evidence as `connect_syscall`.
            let tcp = self.path.is_none();
            if tcp && (self.sock != 0 || self.connect_err.is_none()) {
                let detail = Detail::Socket { peer: self.peer(), facts: SocketFacts::connect_started() };
                out.push(Evidence { ts_ns: self.started_ns, event: "connect_start", detail });
            }
            if let Some(c) = self.connected_ns.filter(|_| tcp) {
                out.push(step(c, "state_change", Step::Established));
            }
            if let Some(r) = self.request_ns {
                out.push(step(r, "request_sent", Step::RequestSent));
            }
        }
        if let Some(r) = self.response_ns {
            let head = self.head.as_deref().map(|h| {
                let line = h.split(|&c| c == b'\r' || c == b'\n').next().unwrap_or_default();
                format!(": \"{}\"", crate::engine::escaped::escape_bytes(&line[..line.len().min(60)]))
            });
            let head = head.or_else(|| self.tls_answer.filter(|_| !self.reused).map(|t| format!(": {}", t.record.describe())));
            out.push(item(r, "response_start", format!("{up}: first response bytes{}", head.unwrap_or_default())));
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Death {
    pub ts_ns: u64,
    pub pid: u32,
    pub comm: Comm,
    /// Killing signal, if it died of one.
    pub signal: Option<i32>,
    pub exit_code: Option<i64>,
    /// The other process that sent the killing signal, when it was seen.
    pub killed_by: Option<u32>,
    pub evidence: Evidence,
}

impl Death {
    /// Killed by a fault signal or SIGKILL (OOM killer included), or exited with an error:
    /// not a clean stop (exit 0, SIGTERM, SIGINT, SIGHUP).
    pub fn crashed(&self) -> bool {
        match (self.signal, self.exit_code) {
            (Some(sig), _) => signal::is_fatal(sig),
            (None, Some(code)) => code != 0,
            _ => false,
        }
    }
}

/// A listening socket's accept queue seen full.
#[derive(Debug, Clone, PartialEq)]
pub struct Overflow {
    pub ts_ns: u64,
    pub addr: SocketAddr,
    pub evidence: Evidence,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub ts_ns: u64,
    pub pid: u32,
    pub comm: Comm,
    pub addr: Option<SocketAddr>,
    /// Its process title where it says more than the name (`php-fpm: pool www`).
    pub title: Option<String>,
}

/// Everything the tracker knows, fed one event at a time.
#[derive(Debug, Default)]
pub struct Tracker {
    next_id: u64,
    /// Boxed: a hash table's empty slots then cost a pointer, not a whole attempt.
    pub attempts: IdMap<u64, Box<Attempt>>,
    /// Current attempt per live socket.
    by_sock: IdMap<u64, u64>,
    /// (start time, attempt id) per gateway thread, in arrival order (bounded; may name
    /// removed attempts, which readers skip and `expire` sweeps). The start time lets a status
    /// pass over the attempts begun after it without looking them up.
    pub by_tid: IdMap<u32, VecDeque<(u64, u64)>>,
    /// Attempt ids per upstream endpoint, oldest first (bounded, swept like `by_tid`).
    by_dst: HashMap<SocketAddr, VecDeque<u64>>,
    pub deaths: VecDeque<Death>,
    /// Signals seen, by target pid (the exit that follows names the death).
    /// The last fatal signal generated for a pid, and when (its exit names the death).
    signals: HashMap<u32, (u64, i32, u32)>,
    pub listeners: HashMap<u16, Vec<Listener>>,
    /// Listening unix sockets by path: the processes holding them (a server and its workers).
    pub unix_listeners: HashMap<String, Vec<Listener>>,
    /// Drops and ICMP errors that matched no attempt (other processes' flows to the same
    /// upstream, or attempts whose events were lost): kept briefly, bounded, for inspection.
    pub loose_packets: VecDeque<KernelEvent>,
    pub overflows: VecDeque<Overflow>,
    pub evicted: u64,
    /// The gateways' own DNS lookups.
    pub dns: crate::engine::dns::Lookups,
}

impl Tracker {
    /// Are SYNs of some recent attempt going unanswered? Only then is a full accept queue a
    /// question worth the cost of reading the listeners' queues.
    pub fn syns_unanswered(&self, now_ns: u64) -> bool {
        self.by_tid
            .values()
            .flat_map(|q| q.iter().rev().take(16))
            .filter_map(|&(_, id)| self.attempt(id))
            .any(|a| a.syn_retransmits > 0 && a.connected_ns.is_none() && a.end_ns().is_none_or(|e| e + 3_000_000_000 >= now_ns))
    }

    /// Take explained attempts out of a thread's linking queue: in a failure storm a worker
    /// makes thousands a second, and every status would otherwise walk past all of them.
    pub fn forget_explained(&mut self, tid: u32, ids: &[u64]) {
        if let Some(q) = self.by_tid.get_mut(&tid) {
            // The explained ones are usually the oldest: search from the front.
            for id in ids {
                if let Some(i) = q.iter().position(|(_, x)| x == id) {
                    q.remove(i);
                }
            }
        }
    }

    /// Before a status of this thread at `t` is linked: drop from the thread's queue what can
    /// no longer explain it (gone, explained, ended more than `horizon_ns` before `t`, or
    /// beyond the newest `ENDED_PER_THREAD` ended ones).
    /// Attempts begun after `t` are passed over without a lookup. Keeps the queue short when
    /// statuses were lost (a ring-buffer overflow) and their attempts would linger.
    /// Returns the failed attempts it dropped that nothing had claimed (a gateway's health
    /// checks, or requests whose status was lost): they may still explain a later answer.
    pub fn prune_thread(&mut self, tid: u32, t: u64, horizon_ns: u64) -> Vec<u64> {
        let attempts = &self.attempts;
        let mut unclaimed = Vec::new();
        let Some(q) = self.by_tid.get_mut(&tid) else { return unclaimed };
        // The queue is in start order, nearly: only its part begun by `t` can go. The newer rest
        // (in a storm, every attempt begun while this status settled) is not looked at. An
        // exchange shipped late (held in the kernel) can break the order: what lies past the
        // cut then waits for a later status.
        let begun = q.partition_point(|&(started, _)| started <= t);
        // Open ones always stay, and those begun after `t` (shipped late, out of order).
        let claimable = |&(started, id): &(u64, u64)| -> Option<bool> {
            if started > t {
                return Some(false);
            }
            let a = attempts.get(&id).filter(|a| !a.consumed)?;
            match a.end_ns() {
                None => Some(false),
                Some(e) if e + horizon_ns >= t => Some(true),
                Some(_) => None,
            }
        };
        // Past the bound, the oldest ended ones go (fewer begun than the bound: no count).
        let ended = if begun > ENDED_PER_THREAD { q.range(..begun).filter(|entry| claimable(entry) == Some(true)).count() } else { 0 };
        let mut surplus = ended.saturating_sub(ENDED_PER_THREAD);
        let mut going = Vec::new();
        for (i, entry) in q.range(..begun).enumerate() {
            let go = match claimable(entry) {
                None => true,
                Some(false) => false,
                Some(true) if surplus > 0 => {
                    surplus -= 1;
                    true
                }
                Some(true) => false,
            };
            if go {
                going.push(i);
                if attempts.get(&entry.1).is_some_and(|a| !a.consumed && !a.succeeded() && a.end_ns().is_some()) {
                    unclaimed.push(entry.1);
                }
            }
        }
        if !going.is_empty() {
            // Rebuild the front: what stays of the begun part, in order, before the newer rest.
            let front: Vec<(u64, u64)> = q.drain(..begun).collect();
            for (i, entry) in front.into_iter().enumerate().rev() {
                if going.binary_search(&i).is_err() {
                    q.push_front(entry);
                }
            }
        }
        unclaimed
    }

    /// Pids known to listen (for sampling their accept queues).
    pub fn listener_pids(&self) -> Vec<u32> {
        self.listeners.values().flatten().map(|l| l.pid).collect()
    }

    /// The latest known owner of a listening address.
    pub fn listener_of(&self, addr: SocketAddr) -> Option<(u32, Comm)> {
        self.listeners.get(&addr.port())?.iter().rev().find(|l| l.addr.is_none_or(|a| a.ip() == addr.ip())).map(|l| (l.pid, l.comm))
    }

    pub fn attempt(&self, id: u64) -> Option<&Attempt> {
        self.attempts.get(&id).map(|a| &**a)
    }

    fn add_attempt(&mut self, attempt: Attempt) -> u64 {
        let id = attempt.id;
        // A lookup over TCP is no request's upstream attempt: not queued with its thread's.
        if !attempt.dns {
            let q = self.by_tid.entry(attempt.tid).or_default();
            q.push_back((attempt.started_ns, id));
            if q.len() > PER_THREAD {
                q.pop_front();
            }
        }
        if let Some(dst) = attempt.dst {
            let q = self.by_dst.entry(dst).or_default();
            q.push_back(id);
            if q.len() > PER_ENDPOINT {
                q.pop_front();
            }
        }
        if attempt.sock != 0 {
            self.by_sock.insert(attempt.sock, id);
        }
        self.attempts.insert(id, Box::new(attempt));
        if self.attempts.len() > MAX_ATTEMPTS {
            self.evict_oldest();
        }
        id
    }

    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Over the bound: drop the least recently active tenth at once (amortized cost).
    fn evict_oldest(&mut self) {
        let mut by_age: Vec<(u64, u64)> = self.attempts.values().map(|a| (a.last_ns, a.id)).collect();
        by_age.sort_unstable();
        for (_, id) in by_age.into_iter().take(MAX_ATTEMPTS / 10) {
            self.remove(id);
            self.evicted += 1;
        }
    }

    fn remove(&mut self, id: u64) {
        if let Some(a) = self.attempts.remove(&id)
            && self.by_sock.get(&a.sock) == Some(&id)
        {
            self.by_sock.remove(&a.sock);
        }
    }

    /// Drop index entries that name removed attempts.
    fn sweep_indexes(&mut self) {
        let attempts = &self.attempts;
        self.by_tid.retain(|_, q| {
            q.retain(|(_, id)| attempts.contains_key(id));
            !q.is_empty()
        });
        self.by_dst.retain(|_, q| {
            q.retain(|id| attempts.contains_key(id));
            !q.is_empty()
        });
    }

    /// Forget what is older than `KEEP_NS` before `now_ns`.
    pub fn expire(&mut self, now_ns: u64) {
        let horizon = now_ns.saturating_sub(KEEP_NS);
        let done_horizon = now_ns.saturating_sub(DONE_KEEP_NS);
        let old: Vec<u64> = self
            .attempts
            .values()
            .filter(|a| a.last_ns < horizon || ((a.consumed || a.succeeded()) && a.last_ns < done_horizon))
            .map(|a| a.id)
            .collect();
        for id in old {
            self.remove(id);
        }
        self.sweep_indexes();
        while self.deaths.front().is_some_and(|d| d.ts_ns < horizon) {
            self.deaths.pop_front();
        }
        while self.overflows.front().is_some_and(|o| o.ts_ns < horizon) {
            self.overflows.pop_front();
        }
        while self.loose_packets.front().is_some_and(|p| p.ts_ns < horizon) {
            self.loose_packets.pop_front();
        }
        self.signals.retain(|_, (ts, _, _)| *ts >= horizon);
    }

    /// The attempt currently on a socket.
    pub fn current_attempt(&self, sock: u64) -> Option<&Attempt> {
        self.attempts.get(self.by_sock.get(&sock)?).map(|a| &**a)
    }

    fn current(&mut self, sock: u64) -> Option<&mut Attempt> {
        let id = *self.by_sock.get(&sock)?;
        self.attempts.get_mut(&id).map(|a| &mut **a)
    }

    pub fn handle(&mut self, ev: &KernelEvent) {
        match ev.kind {
            Kind::ConnectStart => self.on_connect_start(ev),
            Kind::ConnectSyscall => self.on_connect_syscall(ev),
            Kind::StateChange => self.on_state_change(ev),
            Kind::SockError => self.on_sock_error(ev),
            Kind::ResetReceived => self.on_reset_received(ev),
            Kind::ResetSent => self.on_reset_sent(ev),
            Kind::Retransmit => self.on_retransmit(ev),
            Kind::RequestSent => self.on_request(ev),
            Kind::ResponseStart => self.on_response_start(ev),
            Kind::RecvEnd => self.on_recv_end(ev),
            Kind::ProcessExit => self.on_process_exit(ev),
            Kind::Signal => self.on_signal(ev),
            Kind::Listen => self.on_listen(ev),
            Kind::Drop | Kind::IcmpError => self.on_packet(ev),
            Kind::ListenOverflow => self.on_listen_overflow(ev),
            Kind::DnsQuery | Kind::DnsAnswer => self.dns.on_event(ev),
            Kind::HttpStatus | Kind::ProcessFork => {}
        }
        if ev.sock != 0
            && let Some(a) = self.by_sock.get(&ev.sock).and_then(|id| self.attempts.get(id))
            && a.dns
        {
            self.dns.on_tcp(&a.as_tcp_lookup());
        }
    }

    fn on_connect_start(&mut self, ev: &KernelEvent) {
        let id = self.new_id();
        let mut a = Attempt::new(id, ev, false);
        a.touch(ev);
        self.add_attempt(a);
        self.claim_loose_packets();
    }

    /// The kernel ships a connection's opening only once something went wrong, so the drops
    /// and ICMP errors of its first packets (sent at once) may have come before it: match the
    /// packets that found no attempt again.
    fn claim_loose_packets(&mut self) {
        if self.loose_packets.is_empty() {
            return;
        }
        for p in std::mem::take(&mut self.loose_packets) {
            if !self.match_packet(&p) {
                self.loose_packets.push_back(p);
            }
        }
    }

    fn on_state_change(&mut self, ev: &KernelEvent) {
        use TcpState::{Close, CloseWait, Established, FinWait1, SynSent};
        let Some(a) = self.current(ev.sock) else { return };
        a.touch(ev);
        let Some(new) = ev.new_state else { return };
        a.last_state = new;
        a.bytes_sent = ev.bytes_sent.saturating_sub(a.base_sent);
        a.bytes_recv = ev.bytes_recv.saturating_sub(a.base_recv);
        match (ev.old_state, new) {
            (Some(SynSent), Established) => a.connected_ns = Some(ev.ts_ns),
            (Some(Established), CloseWait) => a.fin_ns = a.fin_ns.or(Some(ev.ts_ns)),
            // The gateway closed first.
            (Some(Established), FinWait1) => a.local_close_ns = a.local_close_ns.or(Some(ev.ts_ns)),
            (Some(SynSent), Close) if a.rst.is_none() && a.sock_err.is_none() && a.error_taken_ns.is_none() => {
                match i32::try_from(ev.value) {
                    // The error that ended the connect, read as the socket closed (its error report
                    // comes after the wake-up, when the gateway may already have taken it). The
                    // gateway aborting its own connect reports ECONNRESET: a local give-up.
                    Ok(err) if err > 0 && err != errno::ECONNRESET => a.sock_err = Some(Failure { ts_ns: ev.ts_ns, errno: err }),
                    _ => a.local_close_ns = a.local_close_ns.or(Some(ev.ts_ns)),
                }
            }
            _ => {}
        }
        if new == Close {
            a.closed_ns = Some(ev.ts_ns);
        }
    }

    fn on_sock_error(&mut self, ev: &KernelEvent) {
        let Some(a) = self.current(ev.sock) else { return };
        a.touch(ev);
        let Ok(err) = i32::try_from(ev.value) else { return };
        if err == 0 {
            if ev.new_state == Some(TcpState::SynSent) && a.connected_ns.is_none() {
                a.error_taken_ns = a.error_taken_ns.or(Some(ev.ts_ns));
                // Not a local give-up either: the close that follows is the error's.
                if a.local_close_ns.is_some_and(|t| ev.ts_ns.saturating_sub(t) < 1_000_000) {
                    a.local_close_ns = None;
                }
            }
            return;
        }
        // The gateway aborting its own pending connect (close with linger 0) reports
        // ECONNRESET with no RST from the peer: that is a local give-up.
        if err == errno::ECONNRESET && a.rst.is_none() && (a.connected_ns.is_none() || a.rst_sent_ns.is_some()) {
            a.local_close_ns = a.local_close_ns.or(Some(ev.ts_ns));
            return;
        }
        a.sock_err = a.sock_err.or(Some(Failure { ts_ns: ev.ts_ns, errno: err }));
        // An error that arrives with the CLOSE is not a local give-up.
        if a.local_close_ns.is_some_and(|t| ev.ts_ns.saturating_sub(t) < 1_000_000) && a.connected_ns.is_none() {
            a.local_close_ns = None;
        }
    }

    fn on_reset_received(&mut self, ev: &KernelEvent) {
        let Some(a) = self.current(ev.sock) else { return };
        a.touch(ev);
        let rst = ResetSeen { ts_ns: ev.ts_ns, state: ev.new_state };
        a.rst = a.rst.or(Some(rst));
        if rst.refused() {
            // A refused connect: the kernel sends no separate CLOSE for it.
            a.closed_ns = a.closed_ns.or(Some(ev.ts_ns));
        }
        if a.local_close_ns.is_some_and(|t| ev.ts_ns.saturating_sub(t) < 1_000_000) && a.connected_ns.is_none() {
            a.local_close_ns = None;
        }
    }

    fn on_reset_sent(&mut self, ev: &KernelEvent) {
        let Some(a) = self.current(ev.sock) else { return };
        a.touch(ev);
        a.rst_sent_ns = a.rst_sent_ns.or(Some(ev.ts_ns));
    }

    fn on_retransmit(&mut self, ev: &KernelEvent) {
        let Some(a) = self.current(ev.sock) else { return };
        a.touch(ev);
        // `value` is the TCP state the segment was retransmitted in.
        if ev.value == TcpState::SynSent as i64 {
            a.syn_retransmits += 1;
        } else {
            a.retransmits += 1;
        }
    }

    fn on_response_start(&mut self, ev: &KernelEvent) {
        let Some(a) = self.current(ev.sock) else { return };
        a.touch(ev);
        a.response_ns = a.response_ns.or(Some(ev.ts_ns));
        if a.first_read.is_none() {
            a.first_read = Some(ev.value.max(0) as u64);
            let head = ev.head.as_deref().map(crate::engine::escaped::unescape_bytes);
            // Only a connection's first answer can be a handshake's start. A TLS connection's
            // later answers are ciphertext and say nothing about HTTP: not kept as a head.
            if !a.reused && a.tls_answer.is_none() {
                a.tls_answer = head.as_deref().and_then(tls::Record::parse).map(|record| TlsAnswer {
                    ts_ns: ev.ts_ns,
                    record,
                    header_only: head.as_deref().is_some_and(tls::Record::header_only),
                });
            }
            if !(a.reused && a.speaks_tls()) {
                a.head = head;
            }
        }
        a.bytes_sent = ev.bytes_sent.saturating_sub(a.base_sent);
        a.bytes_recv = ev.bytes_recv.saturating_sub(a.base_recv);
    }

    fn on_recv_end(&mut self, ev: &KernelEvent) {
        let Some(a) = self.current(ev.sock) else { return };
        a.touch(ev);
        a.recv_end = a.recv_end.or(Some(ReadEnd::from_event(ev)));
        a.bytes_sent = ev.bytes_sent.saturating_sub(a.base_sent);
        a.bytes_recv = ev.bytes_recv.saturating_sub(a.base_recv);
    }

    fn on_process_exit(&mut self, ev: &KernelEvent) {
        let signal = self.signals.remove(&ev.pid);
        // The exit word: the killing signal in the low 7 bits, else the exit code above.
        let killed_by = (ev.value & 0x7f) as i32;
        let death_signal = if killed_by != 0 { Some(killed_by) } else { signal.map(|(_, sig, _)| sig) };
        let death = Death {
            ts_ns: ev.ts_ns,
            pid: ev.pid,
            comm: ev.comm,
            signal: death_signal,
            exit_code: (killed_by == 0).then_some((ev.value >> 8) & 0xff),
            killed_by: signal.filter(|&(_, sig, sender)| Some(sig) == death_signal && sender != ev.pid && sender != 0).map(|s| s.2),
            evidence: Evidence::from_event(ev),
        };
        self.deaths.push_back(death);
        if self.deaths.len() > MAX_HOST_FACTS {
            self.deaths.pop_front();
        }
    }

    fn on_signal(&mut self, ev: &KernelEvent) {
        if let Ok(sig) = i32::try_from(ev.value) {
            // The sender rides in `aux`. A process that re-raises a signal it was sent (PHP's
            // handler does) is not its sender: the first sender of that signal is kept.
            let resent = self.signals.get(&ev.pid).is_some_and(|&(_, known, sender)| known == sig && sender != ev.pid && ev.aux == ev.pid);
            if !resent {
                self.signals.insert(ev.pid, (ev.ts_ns, sig, ev.aux));
            }
        }
    }

    fn on_listen(&mut self, ev: &KernelEvent) {
        let listener = Listener { ts_ns: ev.ts_ns, pid: ev.pid, comm: ev.comm, addr: ev.src, title: ev.line.clone() };
        let list = match &ev.path {
            Some(path) => self.unix_listeners.entry(path.clone()).or_default(),
            None => self.listeners.entry(ev.src.map(|a| a.port()).unwrap_or(ev.aux as u16)).or_default(),
        };
        list.push(listener);
        // A server and its workers (php-fpm's pool can be large); the oldest go first.
        if list.len() > 64 {
            list.remove(0);
        }
    }

    fn on_packet(&mut self, ev: &KernelEvent) {
        if !self.match_packet(ev) {
            self.loose_packets.push_back(ev.clone());
            if self.loose_packets.len() > MAX_LOOSE {
                self.loose_packets.pop_front();
            }
        }
    }

    fn on_listen_overflow(&mut self, ev: &KernelEvent) {
        if let Some(addr) = ev.src {
            self.overflows.push_back(Overflow { ts_ns: ev.ts_ns, addr, evidence: Evidence::from_event(ev) });
            if self.overflows.len() > MAX_HOST_FACTS {
                self.overflows.pop_front();
            }
        }
    }

    fn on_connect_syscall(&mut self, ev: &KernelEvent) {
        if ev.value >= 0 && ev.path.is_none() {
            return; // a TCP connect that succeeded at once: the TCP hooks tell the rest
        }
        // A lookup over TCP: its connection's TCP events tell its end (a polled connect's
        // error repeats them).
        if ev.to_resolver() {
            return;
        }
        // An immediate failure right after a SYN_SENT on the same thread (e.g. no free
        // ephemeral port) belongs to that attempt. TCP only (it carries an address): a unix
        // socket's connect(2) fails or succeeds at once, so each failure is an attempt of its
        // own (a killed PHP-FPM refuses every request in turn; an abstract socket has no path).
        if ev.value < 0 && ev.dst.is_some() {
            let recent = self.by_tid.get(&ev.tid).and_then(|q| q.back()).map(|&(_, id)| id);
            if let Some(a) = recent.and_then(|id| self.attempts.get_mut(&id)) {
                let polled =
                    a.dst == ev.dst && a.connected_ns.is_none() && a.sock != 0 && a.closed_ns.is_none_or(|c| ev.ts_ns <= c + 5_000_000);
                if polled {
                    a.touch(ev);
                    let failure = Failure { ts_ns: ev.ts_ns, errno: i32::try_from(-ev.value).unwrap_or(i32::MAX) };
                    if matches!(failure.errno, errno::EADDRNOTAVAIL | errno::EMFILE | errno::ENFILE) {
                        // The SYN never left: no local port or descriptor.
                        a.connect_err = Some(failure);
                        a.local_close_ns = None;
                    } else {
                        // An event loop polling its pending connect (HAProxy) learns the
                        // outcome the TCP hooks already saw: the same fact as a socket error.
                        a.sock_err = a.sock_err.or(Some(failure));
                    }
                    return;
                }
            }
        }
        let id = self.new_id();
        // A connected unix socket carries its kernel socket (its I/O events follow on it).
        let mut a = Attempt::new(id, ev, false);
        a.touch(ev);
        if ev.value < 0 {
            a.connect_err = Some(Failure { ts_ns: ev.ts_ns, errno: i32::try_from(-ev.value).unwrap_or(i32::MAX) });
            a.closed_ns = Some(ev.ts_ns);
        } else {
            a.connected_ns = Some(ev.ts_ns);
        }
        self.add_attempt(a);
    }

    fn on_request(&mut self, ev: &KernelEvent) {
        let known = self.by_sock.get(&ev.sock).copied().filter(|id| self.attempts.contains_key(id));
        let Some(id) = known else {
            // A kept-alive connection whose earlier exchanges were already forgotten (or
            // that was open before tracing began): this exchange starts the story.
            let new_id = self.new_id();
            let mut b = Attempt::new(new_id, ev, true);
            b.connected_ns = Some(ev.ts_ns);
            b.request_ns = Some(ev.ts_ns);
            b.last_state = TcpState::Established;
            b.base_sent = ev.bytes_sent.saturating_sub(ev.value.max(0) as u64);
            b.base_recv = ev.bytes_recv;
            b.touch(ev);
            b.bytes_sent = ev.bytes_sent.saturating_sub(b.base_sent);
            self.add_attempt(b);
            return;
        };
        let Some(a) = self.attempts.get_mut(&id) else { return };
        if a.request_ns.is_none() {
            a.touch(ev);
            a.request_ns = Some(ev.ts_ns);
            if !a.reused {
                a.request_head = ev.head.as_deref().map(crate::engine::escaped::unescape_bytes);
            }
            a.bytes_sent = ev.bytes_sent.saturating_sub(a.base_sent);
            return;
        }
        // A new exchange on a kept-alive connection: a new attempt that inherits the socket.
        let prev_bytes = (ev.bytes_sent.saturating_sub(ev.value.max(0) as u64), ev.bytes_recv);
        let new_id = self.new_id();
        let prev = self.attempts.get(&id).cloned().unwrap();
        let mut b = Attempt::new(new_id, ev, true);
        b.started_ns = ev.ts_ns;
        b.connected_ns = prev.connected_ns;
        b.dst = prev.dst.or(ev.dst);
        b.dns = prev.dns;
        b.path = prev.path.clone().or(b.path);
        b.label = upstream_label(b.dst, b.path.as_deref());
        b.src = prev.src.or(b.src);
        b.fin_ns = prev.fin_ns; // a FIN that came while idle explains a failed reuse
        b.last_state = prev.last_state;
        b.base_sent = prev_bytes.0;
        b.base_recv = prev_bytes.1;
        b.request_ns = Some(ev.ts_ns);
        // What the connection began with stays its own: a TLS handshake spans exchanges.
        b.request_head = prev.request_head.clone();
        b.tls_answer = prev.tls_answer;
        if let Some(fin) = prev.fin_ns {
            b.evidence.push(Evidence {
                ts_ns: fin,
                event: "state_change",
                detail: format!("{}: upstream had closed the idle keep-alive connection", b.label).into(),
            });
        }
        b.touch(ev);
        b.bytes_sent = ev.bytes_sent.saturating_sub(b.base_sent);
        // The kernel ships a kept-alive exchange only once something went wrong, so packets
        // of this exchange may already sit on the previous one: they belong here.
        if let Some(p) = self.attempts.get_mut(&id) {
            let t = ev.ts_ns;
            b.drops.extend(p.drops.iter().filter(|d| d.ts_ns >= t).cloned());
            p.drops.retain(|d| d.ts_ns < t);
            b.icmp.extend(p.icmp.iter().filter(|i| i.ts_ns >= t).cloned());
            p.icmp.retain(|i| i.ts_ns < t);
        }
        self.add_attempt(b);
    }

    /// Attach a drop or ICMP error to the attempt whose flow it belongs to.
    fn match_packet(&mut self, ev: &KernelEvent) -> bool {
        let (Some(src), Some(dst)) = (ev.src, ev.dst) else { return false };
        // Outbound packets are addressed to the upstream, replies come from it.
        let candidates = self.by_dst.get(&dst).into_iter().chain(self.by_dst.get(&src)).flatten();
        let found = candidates
            .filter_map(|id| self.attempts.get(id))
            .filter(|a| a.closed_ns.is_none_or(|c| ev.ts_ns <= c + 1_000_000_000))
            .filter(|a| {
                let outbound = a.dst == Some(dst) && a.src.is_none_or(|s| s.port() == src.port());
                let inbound = a.dst == Some(src) && a.src.is_some_and(|s| s.port() == dst.port());
                (outbound || inbound) && a.started_ns <= ev.ts_ns + 1_000_000
            })
            .max_by_key(|a| a.started_ns)
            .map(|a| a.id);
        let Some(a) = found.and_then(|id| self.attempts.get_mut(&id)) else { return false };
        a.touch(ev);
        match ev.kind {
            Kind::Drop => a.drops.push(PacketDrop { ts_ns: ev.ts_ns, reason: ev.reason.clone().unwrap_or_default(), netns: ev.netns }),
            _ => a.icmp.push(IcmpSeen { ts_ns: ev.ts_ns, icmp: Icmp::from_value(ev.value), from: ev.aux_ip() }),
        }
        true
    }
}

impl KernelEvent {
    /// The IPv4 address carried in `aux` (ICMP sender).
    pub fn aux_ip(&self) -> String {
        std::net::Ipv4Addr::from(self.aux.to_le_bytes()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::hash::{BuildHasher, BuildHasherDefault};

    use super::IdHasher;

    /// Slab-aligned socket addresses must not share the low bits a table picks buckets by: with
    /// the product's low bits alone, 1,024 sockets 2 KiB apart fell into 1 of 1,024 buckets.
    #[test]
    fn aligned_socket_addresses_spread_over_buckets() {
        let build = BuildHasherDefault::<IdHasher>::default();
        let mut buckets = std::collections::HashSet::new();
        for i in 0..1024u64 {
            buckets.insert(build.hash_one(0xffff_8880_0000_0000u64 + i * 0x800) & 1023);
        }
        assert!(buckets.len() > 500, "{} buckets of 1024 used", buckets.len());
        let ids: std::collections::HashSet<u64> = (0..1024u64).map(|id| build.hash_one(id) & 1023).collect();
        assert!(ids.len() > 500, "{} buckets of 1024 used by sequential ids", ids.len());
    }
}
