//! Raw ring-buffer records -> typed `KernelEvent`s. This is the only place that knows the
//! byte layout; everything downstream (tracking, attribution, sinks, replay) uses the type.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};

pub use crate::engine::comm::Comm;
use tracer_common::{
    AF_INET, AF_INET6, AF_UNIX, EVENT_SIZE, Event, EventKind, SEEN_GO_TLS, SEEN_OPENSSL, STATUS_SEEN_AT, STATUS_STREAM_AT,
};

/// A little-endian u32 inside an event's payload.
fn word_at(data: &[u8], at: usize) -> u32 {
    data.get(at..at + 4).and_then(|b| b.try_into().ok()).map_or(0, u32::from_le_bytes)
}

/// The one list of event kinds lives in the ABI crate (numbers, JSON names); this module adds
/// what each carries ([`Carries`]) and its sentence ([`KernelEvent::detail`]).
pub use tracer_common::{EventKind as Kind, TcpState};
use tracer_common::{errno, signal};

use crate::engine::escaped::{escape_bytes, unescape_bytes};

/// Which of the record's fields a kind fills, beyond the common ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Carries {
    /// The socket's own address (src) beside its peer (dst).
    pub tuple: bool,
    /// The peer only (a connect(2) result) or, for unix sockets, the path.
    pub peer: bool,
    pub old_state: bool,
    pub new_state: bool,
}

pub fn carries(kind: Kind) -> Carries {
    use Kind as K;
    let tuple = matches!(
        kind,
        K::ConnectStart
            | K::StateChange
            | K::SockError
            | K::ResetReceived
            | K::ResetSent
            | K::Retransmit
            | K::RequestSent
            | K::ResponseStart
            | K::RecvEnd
            | K::HttpStatus
            | K::Listen
            | K::Drop
            | K::IcmpError
            | K::DnsQuery
            | K::DnsAnswer
    );
    let old_state = matches!(kind, K::ConnectStart | K::StateChange);
    let new_state = old_state || matches!(kind, K::SockError | K::ResetReceived | K::RequestSent | K::ResponseStart | K::RecvEnd);
    Carries { tuple, peer: tuple || kind == K::ConnectSyscall, old_state, new_state }
}

/// A state number as the kernel names it (`UNKNOWN` for a number it does not use).
pub fn tcp_state_name(state: u8) -> &'static str {
    TcpState::from_u8(state).map_or("UNKNOWN", TcpState::name)
}

/// Names of errno values, whichever sign the kernel reported them with.
pub fn errno_name(errno: i64) -> &'static str {
    i32::try_from(errno.unsigned_abs()).map_or("E?", errno::name)
}

pub fn signal_name(sig: i64) -> &'static str {
    i32::try_from(sig).map_or("SIG?", signal::name)
}

/// TCP states in traces are the kernel's names (`"SYN_SENT"`); a name this build does not
/// know reads as no state rather than failing the whole trace.
mod state_name {
    use serde::{Deserialize, Deserializer, Serializer};
    use tracer_common::TcpState;

    pub fn serialize<S: Serializer>(v: &Option<TcpState>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(state) => s.serialize_str(state.name()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<TcpState>, D::Error> {
        let name = Option::<String>::deserialize(d)?;
        Ok(name.and_then(|n| TcpState::ALL.into_iter().find(|s| s.name() == n)))
    }
}

/// ICMP (type << 8 | code) as words.
pub fn icmp_name(type_code: i64) -> String {
    let (t, c) = (type_code >> 8, type_code & 0xff);
    let what = match (t, c) {
        (3, 0) => "net unreachable",
        (3, 1) => "host unreachable",
        (3, 2) => "protocol unreachable",
        (3, 3) => "port unreachable",
        (3, 4) => "fragmentation needed",
        (3, 6) => "destination network unknown",
        (3, 7) => "destination host unknown",
        (3, 9) => "network administratively prohibited",
        (3, 10) => "host administratively prohibited",
        (3, 13) => "communication administratively prohibited",
        (11, _) => "time exceeded",
        _ => "error",
    };
    format!("{what} (type {t} code {c})")
}

/// One kernel observation, typed. Serialized as-is into traces, so replay reads it back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelEvent {
    pub kind: Kind,
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: Comm,
    #[serde(default)]
    pub netns: u32,
    #[serde(default)]
    pub cgroup: u64,
    /// Kernel socket address (hex in JSON): the connection's identity while it lives.
    #[serde(default, with = "hex_u64")]
    pub sock: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "state_name")]
    pub old_state: Option<TcpState>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "state_name")]
    pub new_state: Option<TcpState>,
    /// Kind-specific: return code, errno, status, signal, byte count.
    #[serde(default)]
    pub value: i64,
    #[serde(default)]
    pub bytes_sent: u64,
    #[serde(default)]
    pub bytes_recv: u64,
    /// Kind-specific: fd, child pid, sender pid, port.
    #[serde(default)]
    pub aux: u32,
    /// The head of a status line, for http_status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<String>,
    /// First bytes of the response (up to 128, escaped), for response_start; of a connection's
    /// first request (up to 8, the method kept and the rest masked), for request_sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
    /// Drop reason name (skb_drop_reason without its prefix), for drop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The HTTP/2 stream of a status (http_status written as a HEADERS frame).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<u32>,
    /// The status was read in the plaintext the gateway handed to TLS.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
    /// A unix socket connect refused for permission: the file as the host saw it then
    /// (looked up by the live source, kept in traces for replay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_file: Option<SocketFile>,
    /// A DNS message's header and question, for dns_query and dns_answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<crate::engine::dns_wire::DnsMessage>,
}

/// Who may connect to a unix socket file: its owner, group and mode, and the user the
/// connecting process runs as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketFile {
    pub owner: String,
    pub group: String,
    /// Permission bits (`0o660`).
    pub mode: u32,
    /// The connecting process's effective user.
    pub caller: String,
}

impl std::fmt::Display for SocketFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "owned by {}:{} with mode {:04o}, and the gateway's worker runs as {}", self.owner, self.group, self.mode, self.caller)
    }
}

mod hex_u64 {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:#x}"))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        u64::from_str_radix(s.trim_start_matches("0x"), 16).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    Short(usize),
    UnknownKind(u8),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Short(n) => write!(f, "event record of {n} bytes, expected {EVENT_SIZE}"),
            DecodeError::UnknownKind(k) => write!(f, "unknown event kind {k}"),
        }
    }
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn ip(family: u8, raw: &[u8; 16]) -> Option<IpAddr> {
    match family {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
        AF_INET6 => {
            let v6 = Ipv6Addr::from(*raw);
            Some(v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)))
        }
        _ => None,
    }
}

/// Decoding context taken from the running kernel (drop reason names differ between kernels).
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    pub drop_reasons: std::collections::HashMap<u32, String>,
}

impl Decoder {
    pub fn decode(&self, bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
        let mut ev = decode(bytes)?;
        if ev.kind == Kind::Drop {
            ev.reason = Some(self.drop_reasons.get(&(ev.value as u32)).cloned().unwrap_or_else(|| format!("reason {}", ev.value)));
        }
        Ok(ev)
    }
}

/// Decode one record without kernel context (drop reasons stay numeric).
pub fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    if bytes.len() < EVENT_SIZE {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: length checked; Event is plain old data and read unaligned.
    let raw: Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) };
    let kind = EventKind::from_kernel(raw.kind).ok_or(DecodeError::UnknownKind(raw.kind))?;
    let stream = Some(word_at(&raw.data, STATUS_STREAM_AT)).filter(|&id| kind == Kind::HttpStatus && id != 0);
    let carries = carries(kind);
    let (mut src, mut dst, mut path) = (None, None, None);
    if carries.peer {
        if raw.family == AF_UNIX {
            // Only connect(2) carries the path; a unix socket's I/O events carry other data.
            if kind == Kind::ConnectSyscall {
                path = Some(c_string(&raw.data)).filter(|p| !p.is_empty());
            }
        } else {
            if carries.tuple {
                src = ip(raw.family, &raw.saddr).map(|a| SocketAddr::new(a, raw.sport));
            }
            dst = ip(raw.family, &raw.daddr).map(|a| SocketAddr::new(a, raw.dport));
        }
    }
    Ok(KernelEvent {
        kind,
        ts_ns: raw.ts_ns,
        pid: raw.pid,
        tid: raw.tid,
        comm: Comm::from_kernel(&raw.comm),
        netns: raw.netns,
        cgroup: raw.cgroup,
        sock: raw.sock,
        src,
        dst,
        path,
        old_state: TcpState::from_u8(raw.old_state).filter(|_| carries.old_state),
        new_state: TcpState::from_u8(raw.new_state).filter(|_| carries.new_state),
        value: raw.value,
        bytes_sent: raw.bytes_sent,
        bytes_recv: raw.bytes_recv,
        aux: raw.aux,
        line: (kind == Kind::HttpStatus).then(|| match stream {
            Some(id) => format!("HTTP/2 :status {} (stream {id})", raw.value),
            None => c_string(&raw.data[..32]).split(['\r', '\n']).next().unwrap_or_default().to_owned(),
        }),
        stream,
        tls: kind == Kind::HttpStatus && matches!(word_at(&raw.data, STATUS_SEEN_AT), SEEN_OPENSSL | SEEN_GO_TLS),
        socket_file: None,
        dns: matches!(kind, Kind::DnsQuery | Kind::DnsAnswer)
            .then(|| {
                let bytes = &raw.data[..(raw.aux as usize).min(raw.data.len())];
                let tcp = raw.old_state == tracer_common::IPPROTO_TCP;
                // Over TCP, the message follows its two-byte length.
                let mut m = crate::engine::dns_wire::parse(if tcp { bytes.get(2..)? } else { bytes })?;
                m.tcp = tcp;
                Some(m)
            })
            .flatten(),
        reason: None,
        head: match kind {
            Kind::ResponseStart if raw.aux > 0 => {
                Some(escape_bytes(&crate::engine::http::mask_head(&raw.data[..(raw.aux as usize).min(128)])))
            }
            // A connection's first request: its first bytes, or zeros when they were not read.
            Kind::RequestSent => {
                let head = &raw.data[..tracer_common::REQUEST_HEAD.min(raw.value.max(0) as usize)];
                head.iter().any(|&b| b != 0).then(|| escape_bytes(&crate::engine::http::mask_request_head(head)))
            }
            _ => None,
        },
    })
}

impl KernelEvent {
    /// A connection event toward a resolver's DNS port (TCP 53): a lookup, never counted as an
    /// upstream attempt (the tracker's, the metrics', the dashboard's).
    pub fn to_resolver(&self) -> bool {
        self.path.is_none() && self.dst.is_some_and(|d| d.port() == crate::engine::dns_wire::DNS_PORT)
    }

    /// Hide the header values of a response head read back from a trace (traces written
    /// before heads were masked at decoding still hold them).
    pub fn mask_head(&mut self) {
        let mask = if self.kind == Kind::RequestSent { crate::engine::http::mask_request_head } else { crate::engine::http::mask_head };
        if let Some(h) = self.head.as_mut() {
            *h = escape_bytes(&mask(&unescape_bytes(h)));
        }
    }

    /// A `listen` event for a socket that was already listening when tracing began.
    /// A process found holding a listening unix socket; `title` is its process title (in
    /// `line`) when it says more than its name.
    pub fn unix_listen_snapshot(ts_ns: u64, pid: u32, comm: &str, path: &str, title: Option<String>) -> Self {
        let mut ev = Self::listen_snapshot(ts_ns, pid, comm, SocketAddr::from(([0, 0, 0, 0], 0)));
        ev.src = None;
        ev.path = Some(path.to_owned());
        ev.line = title;
        ev
    }

    pub fn listen_snapshot(ts_ns: u64, pid: u32, comm: &str, addr: SocketAddr) -> Self {
        KernelEvent {
            kind: Kind::Listen,
            ts_ns,
            pid,
            tid: pid,
            comm: Comm::new(comm),
            netns: 0,
            cgroup: 0,
            sock: 0,
            src: Some(addr),
            dst: None,
            path: None,
            old_state: None,
            new_state: None,
            value: 0,
            bytes_sent: 0,
            bytes_recv: 0,
            aux: addr.port() as u32,
            line: None,
            reason: None,
            head: None,
            stream: None,
            tls: false,
            socket_file: None,
            dns: None,
        }
    }

    pub fn listen_overflow(ts_ns: u64, pid: u32, comm: &str, addr: SocketAddr, queued: u32, limit: u32) -> Self {
        let mut ev = Self::listen_snapshot(ts_ns, pid, comm, addr);
        ev.kind = Kind::ListenOverflow;
        ev.value = queued as i64;
        ev.aux = limit;
        ev
    }

    /// One human sentence for logs and the evidence chain.
    pub fn detail(&self) -> String {
        let peer = self.dst.map(|a| a.to_string()).or_else(|| self.path.clone()).unwrap_or_else(|| "?".into());
        self.detail_naming(&peer)
    }

    /// `detail`, naming the peer as given (the I/O events of a unix socket carry no address:
    /// the attempt knows its path).
    pub fn detail_naming(&self, peer: &str) -> String {
        match self.kind {
            Kind::HttpStatus => StatusFacts::of(self).naming(&peer).to_string(),
            Kind::ProcessExit => format!(
                "process {} ({}) exited, exit word {:#x}{}",
                self.pid,
                self.comm,
                self.value,
                match self.value & 0x7f {
                    0 => String::new(),
                    sig => format!(" (killed by {})", signal_name(sig)),
                }
            ),
            Kind::Signal => format!("{} sent to process {} ({}) by pid {}", signal_name(self.value), self.pid, self.comm, self.aux),
            Kind::Drop => format!(
                "packet {} -> {} dropped by the kernel: {} (netns {})",
                self.src.map(|a| a.to_string()).unwrap_or_default(),
                peer,
                self.reason.clone().unwrap_or_else(|| self.value.to_string()),
                self.netns
            ),
            Kind::IcmpError => format!(
                "ICMP {} from {} about {} -> {}",
                icmp_name(self.value),
                std::net::Ipv4Addr::from(self.aux.to_le_bytes()),
                self.src.map(|a| a.to_string()).unwrap_or_default(),
                peer
            ),
            Kind::ListenOverflow => format!(
                "accept queue of {} ({}) on {} is full: {} of {} connections waiting, new SYNs are dropped",
                self.pid,
                self.comm,
                self.src.map(|a| a.to_string()).unwrap_or_default(),
                self.value,
                self.aux
            ),
            Kind::ProcessFork => format!("{} {} forked child {}", self.comm, self.pid, self.aux),
            Kind::DnsQuery => match &self.dns {
                Some(m) => format!(
                    "{} {} asked resolver {peer} for {} {} (id {:#06x})",
                    self.comm,
                    self.pid,
                    crate::engine::dns_wire::qtype_name(m.qtype),
                    m.name,
                    m.id
                ),
                None => format!("{} {} sent {} B to resolver {peer}", self.comm, self.pid, self.value),
            },
            Kind::DnsAnswer => match &self.dns {
                _ if self.value < 0 => {
                    format!("resolver {peer}: read failed: {} ({})", errno_name(self.value), -self.value)
                }
                Some(m) => format!(
                    "resolver {peer} answered {} for {} {}: {} record{} (id {:#06x})",
                    crate::engine::dns_wire::rcode_name(m.rcode),
                    crate::engine::dns_wire::qtype_name(m.qtype),
                    m.name,
                    m.answers,
                    if m.answers == 1 { "" } else { "s" },
                    m.id
                ),
                None => format!("resolver {peer}: {} B that are not a DNS answer", self.value),
            },
            Kind::Listen => format!(
                "{} {} listens on {}",
                self.comm,
                self.pid,
                match (&self.path, self.src) {
                    (Some(path), _) => format!("unix:{path}"),
                    (None, Some(a)) => a.to_string(),
                    (None, None) => format!("port {}", self.aux),
                }
            ),
            // The connection events of `PEER_ONLY_KINDS`, worded by their facts.
            _ => SocketFacts::of(self).map_or_else(|| self.kind.name().to_owned(), |f| f.naming(&peer).to_string()),
        }
    }
}

/// What a connection event says besides its peer: evidence keeps these few numbers and words
/// them only when an output writes the verdict (in a storm, most verdicts are only counted).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SocketFacts {
    kind: Kind,
    value: i64,
    bytes_sent: u64,
    bytes_recv: u64,
    old_state: Option<TcpState>,
    new_state: Option<TcpState>,
}

/// The connection events whose sentence names nothing but their peer (`SocketFacts`).
const PEER_ONLY_KINDS: [Kind; 10] = [
    Kind::ConnectStart,
    Kind::ConnectSyscall,
    Kind::StateChange,
    Kind::SockError,
    Kind::ResetReceived,
    Kind::ResetSent,
    Kind::Retransmit,
    Kind::RequestSent,
    Kind::ResponseStart,
    Kind::RecvEnd,
];

impl SocketFacts {
    /// The facts of an event whose sentence names nothing but its peer; `None` for the others.
    pub fn of(ev: &KernelEvent) -> Option<Self> {
        PEER_ONLY_KINDS.contains(&ev.kind).then_some(SocketFacts {
            kind: ev.kind,
            value: ev.value,
            bytes_sent: ev.bytes_sent,
            bytes_recv: ev.bytes_recv,
            old_state: ev.old_state,
            new_state: ev.new_state,
        })
    }

    /// A connect's first step (the SYN sent), as an attempt keeps it: a routine step.
    pub fn connect_started() -> Self {
        SocketFacts { kind: Kind::ConnectStart, value: 0, bytes_sent: 0, bytes_recv: 0, old_state: None, new_state: None }
    }

    /// The sentence, naming `peer`.
    pub fn naming<'a>(&'a self, peer: &'a dyn std::fmt::Display) -> impl std::fmt::Display + 'a {
        Sentence { facts: self, peer }
    }
}

/// What a status line the gateway wrote says besides its client.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusFacts {
    gateway: Comm,
    pid: u32,
    /// The line's head, or the status alone.
    line: String,
    client: Option<SocketAddr>,
}

impl StatusFacts {
    pub fn of(ev: &KernelEvent) -> Self {
        StatusFacts { gateway: ev.comm, pid: ev.pid, line: ev.line.clone().unwrap_or_else(|| ev.value.to_string()), client: ev.dst }
    }

    /// The sentence, naming the client as given.
    fn naming<'a>(&'a self, client: &'a dyn std::fmt::Display) -> impl std::fmt::Display + 'a {
        struct Said<'a>(&'a StatusFacts, &'a dyn std::fmt::Display);
        impl std::fmt::Display for Said<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{} {} wrote {} to client {}", self.0.gateway, self.0.pid, self.0.line, self.1)
            }
        }
        Said(self, client)
    }
}

impl std::fmt::Display for StatusFacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.client {
            Some(c) => self.naming(&c).fmt(f),
            None => self.naming(&"?").fmt(f),
        }
    }
}

struct Sentence<'a> {
    facts: &'a SocketFacts,
    peer: &'a dyn std::fmt::Display,
}

impl std::fmt::Display for Sentence<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (s, peer) = (self.facts, self.peer);
        let state = |s: &Option<TcpState>| s.map_or("", TcpState::name);
        match s.kind {
            Kind::ConnectStart => write!(f, "connect to {peer} started (SYN sent)"),
            Kind::ConnectSyscall if s.value == 0 => write!(f, "connect to {peer} succeeded"),
            Kind::ConnectSyscall => write!(f, "connect to {peer} failed: {} ({})", errno_name(s.value), -s.value),
            Kind::StateChange => write!(
                f,
                "{peer}: {} -> {} (sent {} B, received {} B)",
                state(&s.old_state),
                state(&s.new_state),
                s.bytes_sent,
                s.bytes_recv
            ),
            Kind::SockError => write!(f, "{peer}: socket error {} ({})", errno_name(s.value), s.value),
            Kind::ResetReceived => write!(f, "{peer}: RST received in {}", state(&s.new_state)),
            Kind::ResetSent => write!(f, "{peer}: RST sent in {}", tcp_state_name(s.value as u8)),
            Kind::Retransmit => write!(f, "{peer}: retransmit in {}", tcp_state_name(s.value as u8)),
            Kind::RequestSent => write!(f, "{peer}: request sent ({} B so far)", s.bytes_sent),
            Kind::ResponseStart => write!(f, "{peer}: first response bytes ({} B)", s.value),
            Kind::RecvEnd if s.value == 0 => write!(f, "{peer}: upstream closed (read returned EOF after {} B)", s.bytes_recv),
            Kind::RecvEnd => write!(f, "{peer}: read failed: {} ({}) after {} B", errno_name(s.value), -s.value, s.bytes_recv),
            // Facts are made for the kinds above only.
            other => write!(f, "{peer}: {}", other.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(kind: EventKind) -> Event {
        let mut e = Event::zeroed();
        e.kind = kind as u8;
        e.ts_ns = 42;
        e.pid = 100;
        e.tid = 101;
        e.comm[..5].copy_from_slice(b"nginx");
        e
    }

    fn bytes(e: &Event) -> Vec<u8> {
        unsafe { std::slice::from_raw_parts((e as *const Event).cast::<u8>(), EVENT_SIZE) }.to_vec()
    }

    #[test]
    fn abi_sizes_match_the_kernel_side() {
        assert_eq!(std::mem::size_of::<Event>(), EVENT_SIZE);
        assert_eq!(std::mem::size_of::<tracer_common::SockOwner>(), 80);
    }

    #[test]
    fn decodes_a_refused_connect() {
        let mut e = raw(EventKind::SockError);
        e.family = AF_INET;
        e.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        e.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        e.sport = 40000;
        e.dport = 8080;
        e.value = 111;
        e.new_state = TcpState::SynSent as u8;
        let ev = decode(&bytes(&e)).unwrap();
        assert_eq!(ev.kind, Kind::SockError);
        assert_eq!(ev.comm, "nginx");
        assert_eq!(ev.dst, Some("10.0.0.2:8080".parse().unwrap()));
        assert_eq!(ev.src, Some("10.0.0.1:40000".parse().unwrap()));
        assert!(ev.detail().contains("ECONNREFUSED"), "{}", ev.detail());
    }

    #[test]
    fn decodes_unix_paths_and_status_lines() {
        let mut e = raw(EventKind::ConnectSyscall);
        e.family = AF_UNIX;
        e.value = -11;
        e.data[..17].copy_from_slice(b"/run/php/fpm.sock");
        let ev = decode(&bytes(&e)).unwrap();
        assert_eq!(ev.path.as_deref(), Some("/run/php/fpm.sock"));
        assert!(ev.detail().contains("EAGAIN"));

        // The response head of a unix-socket upstream is data, not a path.
        let mut e = raw(EventKind::ResponseStart);
        e.family = AF_UNIX;
        e.aux = 15;
        e.data[..15].copy_from_slice(b"HTTP/1.1 200 OK");
        let ev = decode(&bytes(&e)).unwrap();
        assert_eq!((ev.path.as_deref(), ev.dst), (None, None));
        assert_eq!(ev.head.as_deref(), Some("HTTP/1.1 200 OK"));

        // Header values never leave decoding.
        let mut e = raw(EventKind::ResponseStart);
        e.family = AF_INET;
        let head = b"HTTP/1.1 502 Bad Gateway\r\nSet-Cookie: sid=s3cr3t\r\n";
        e.aux = head.len() as u32;
        e.data[..head.len()].copy_from_slice(head);
        let mut ev = decode(&bytes(&e)).unwrap();
        assert_eq!(ev.head.as_deref(), Some("HTTP/1.1 502 Bad Gateway\\r\\nSet-Cookie: **********\\r\\n"));
        // An old trace's unmasked head is masked when read back.
        ev.head = Some("HTTP/1.1 200 OK\\r\\nAuthorization: Basic Zm9v".into());
        ev.mask_head();
        assert_eq!(ev.head.as_deref(), Some("HTTP/1.1 200 OK\\r\\nAuthorization: ***** ****"));

        let mut e = raw(EventKind::HttpStatus);
        e.family = AF_INET6;
        e.daddr = Ipv6Addr::from([0, 0, 0, 0, 0, 0xffff, 0x7f00, 1]).octets();
        e.dport = 5555;
        e.value = 502;
        e.data[..26].copy_from_slice(b"HTTP/1.1 502 Bad Gateway\r\n");
        let ev = decode(&bytes(&e)).unwrap();
        assert_eq!(ev.line.as_deref(), Some("HTTP/1.1 502 Bad Gateway"));
        assert_eq!(ev.dst, Some("127.0.0.1:5555".parse().unwrap()), "v4-mapped shown as v4");
    }

    #[test]
    fn escaping_round_trips_any_bytes() {
        let all: Vec<u8> = (0..=255u8).collect();
        let text = escape_bytes(&all);
        assert!(text.is_ascii());
        assert_eq!(unescape_bytes(&text), all);
        assert_eq!(escape_bytes(b"HTTP/1.1 200\r\n"), "HTTP/1.1 200\\r\\n");
        let _ = unescape_bytes("\\x\u{e9}\u{e9}\\"); // malformed input must not panic
    }

    #[test]
    fn rejects_short_records_and_unknown_kinds() {
        assert_eq!(decode(&[0u8; 10]).unwrap_err(), DecodeError::Short(10));
        let mut e = raw(EventKind::Listen);
        e.kind = 200;
        assert_eq!(decode(&bytes(&e)).unwrap_err(), DecodeError::UnknownKind(200));
    }

    #[test]
    fn kind_names_are_the_json_names() {
        for k in Kind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), k.name());
        }
    }

    #[test]
    fn json_round_trip() {
        let mut e = raw(EventKind::StateChange);
        e.family = AF_INET;
        e.sock = 0xffff_8880_1234_5678;
        e.old_state = TcpState::Established as u8;
        e.new_state = TcpState::CloseWait as u8;
        let ev = decode(&bytes(&e)).unwrap();
        let text = serde_json::to_string(&ev).unwrap();
        assert!(text.contains("\"sock\":\"0xffff888012345678\""), "{text}");
        assert!(text.contains("CLOSE_WAIT"));
        let back: KernelEvent = serde_json::from_str(&text).unwrap();
        assert_eq!(back, ev);
    }
}
