//! What the engine concludes: a verdict per 5xx (or cut-short response), its class and cause.
//! Every fact about a cause lives here, once: its JSON name, its class, and what to check
//! next; every output (lines, dashboard, report, metrics) takes them from here.
use std::{net::SocketAddr, sync::Arc};

use serde::{Serialize, Serializer};

use crate::engine::decode::{Comm, SocketFacts, StatusFacts};

/// Who is to blame, broadly. The JSON names are the lowercase variant names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    Upstream,
    Firewall,
    Network,
    Gateway,
    Unknown,
}

/// A colour family per class, for outputs that draw (the dashboard, the HTML report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hue {
    Red,
    Magenta,
    Yellow,
    Cyan,
    Gray,
}

impl Hue {
    /// The same hue for HTML.
    pub fn css(self) -> &'static str {
        match self {
            Hue::Red => "#c0392b",
            Hue::Magenta => "#8e44ad",
            Hue::Yellow => "#b7950b",
            Hue::Cyan => "#16a085",
            Hue::Gray => "#7f8c8d",
        }
    }
}

impl Class {
    /// In display order.
    pub const ALL: [Class; 5] = [Class::Upstream, Class::Firewall, Class::Network, Class::Gateway, Class::Unknown];

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Upstream => "upstream",
            Class::Firewall => "firewall",
            Class::Network => "network",
            Class::Gateway => "gateway",
            Class::Unknown => "unknown",
        }
    }

    /// Position in [`Class::ALL`], for per-class counters.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn hue(self) -> Hue {
        match self {
            Class::Upstream => Hue::Red,
            Class::Firewall => Hue::Magenta,
            Class::Network => Hue::Yellow,
            Class::Gateway => Hue::Cyan,
            Class::Unknown => Hue::Gray,
        }
    }
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why, precisely. Each cause belongs to exactly one class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cause {
    // upstream
    Refused,
    Crashed,
    /// A worker of the upstream killed by its own manager while it handled the request
    /// (php-fpm's `request_terminate_timeout`): a policy, not a crash.
    WorkerKilled,
    Reset,
    ClosedEarly,
    Stalled,
    InvalidResponse,
    Overloaded,
    /// A unix-socket upstream whose socket file is not there.
    NoSocketFile,
    /// The upstream answered the 5xx itself, with a complete response, and the gateway passed
    /// it on: the application's own error, not a failed exchange.
    Upstream5xx,
    /// The gateway gave up the TLS handshake right after the upstream's hello and certificate
    /// (no HTTP request sent): it did not accept the certificate.
    TlsCertRejected,
    /// The upstream answered the gateway's ClientHello with a TLS alert.
    TlsAlert,
    // firewall
    Rejected,
    Dropped,
    // network
    NoRoute,
    Unreachable,
    Timeout,
    Loss,
    // network: the gateway's own DNS lookup of the upstream's name (no attempt followed)
    /// The resolver's DNS port refused the query (ICMP port unreachable).
    DnsUnreachable,
    DnsNxdomain,
    DnsServfail,
    DnsRefused,
    /// Another DNS error code (FORMERR, NOTIMP, ...).
    DnsError,
    /// NOERROR with no address for the name.
    DnsNoAddress,
    /// The resolver did not answer before the gateway gave up.
    DnsTimeout,
    // gateway
    LocalResources,
    /// The gateway may not connect to a unix socket (its owner and mode keep the worker out).
    PermissionDenied,
    /// The upstream's response head did not fit the gateway's header buffer: the gateway
    /// gave up on a valid but large head (gateway class: its setting decides, and the usual fix).
    HeadTooLarge,
    /// The gateway speaks TLS to an upstream that answers in plain HTTP (https:// to an http port).
    PlainHttpBehindHttps,
    /// The gateway speaks plain HTTP to an upstream that answers with TLS (http:// to a TLS port).
    TlsBehindHttp,
    // unknown
    ConnectFailed,
    ReadError,
    Undecided,
    NoUpstreamAttempt,
}

impl Cause {
    pub const ALL: [Cause; 34] = [
        Cause::Refused,
        Cause::Crashed,
        Cause::WorkerKilled,
        Cause::Reset,
        Cause::ClosedEarly,
        Cause::Stalled,
        Cause::InvalidResponse,
        Cause::Overloaded,
        Cause::NoSocketFile,
        Cause::Upstream5xx,
        Cause::TlsCertRejected,
        Cause::TlsAlert,
        Cause::Rejected,
        Cause::Dropped,
        Cause::NoRoute,
        Cause::Unreachable,
        Cause::Timeout,
        Cause::Loss,
        Cause::DnsUnreachable,
        Cause::DnsNxdomain,
        Cause::DnsServfail,
        Cause::DnsRefused,
        Cause::DnsError,
        Cause::DnsNoAddress,
        Cause::DnsTimeout,
        Cause::LocalResources,
        Cause::PermissionDenied,
        Cause::HeadTooLarge,
        Cause::PlainHttpBehindHttps,
        Cause::TlsBehindHttp,
        Cause::ConnectFailed,
        Cause::ReadError,
        Cause::Undecided,
        Cause::NoUpstreamAttempt,
    ];

    /// The JSON name (part of the output contract).
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Refused => "refused",
            Cause::Crashed => "crashed",
            Cause::WorkerKilled => "worker-killed",
            Cause::Reset => "reset",
            Cause::ClosedEarly => "closed-early",
            Cause::Stalled => "stalled",
            Cause::InvalidResponse => "invalid-response",
            Cause::Overloaded => "overloaded",
            Cause::NoSocketFile => "no-socket-file",
            Cause::Upstream5xx => "upstream-5xx",
            Cause::TlsCertRejected => "tls-cert-rejected",
            Cause::TlsAlert => "tls-alert",
            Cause::Rejected => "rejected",
            Cause::Dropped => "dropped",
            Cause::NoRoute => "no-route",
            Cause::Unreachable => "unreachable",
            Cause::Timeout => "timeout",
            Cause::Loss => "loss",
            Cause::DnsUnreachable => "dns-unreachable",
            Cause::DnsNxdomain => "dns-nxdomain",
            Cause::DnsServfail => "dns-servfail",
            Cause::DnsRefused => "dns-refused",
            Cause::DnsError => "dns-error",
            Cause::DnsNoAddress => "dns-no-address",
            Cause::DnsTimeout => "dns-timeout",
            Cause::LocalResources => "local-resources",
            Cause::PermissionDenied => "permission-denied",
            Cause::HeadTooLarge => "head-too-large",
            Cause::PlainHttpBehindHttps => "plain-http-behind-https",
            Cause::TlsBehindHttp => "tls-behind-http",
            Cause::ConnectFailed => "connect-failed",
            Cause::ReadError => "read-error",
            Cause::Undecided => "undecided",
            Cause::NoUpstreamAttempt => "no-upstream-attempt",
        }
    }

    pub fn from_name(name: &str) -> Option<Cause> {
        Cause::ALL.into_iter().find(|c| c.as_str() == name)
    }

    pub fn class(self) -> Class {
        match self {
            Cause::Refused
            | Cause::Crashed
            | Cause::WorkerKilled
            | Cause::Reset
            | Cause::ClosedEarly
            | Cause::Stalled
            | Cause::InvalidResponse
            | Cause::Overloaded
            | Cause::NoSocketFile
            | Cause::Upstream5xx
            | Cause::TlsCertRejected
            | Cause::TlsAlert => Class::Upstream,
            Cause::Rejected | Cause::Dropped => Class::Firewall,
            Cause::NoRoute
            | Cause::Unreachable
            | Cause::Timeout
            | Cause::Loss
            | Cause::DnsUnreachable
            | Cause::DnsNxdomain
            | Cause::DnsServfail
            | Cause::DnsRefused
            | Cause::DnsError
            | Cause::DnsNoAddress
            | Cause::DnsTimeout => Class::Network,
            Cause::LocalResources | Cause::PermissionDenied | Cause::HeadTooLarge | Cause::PlainHttpBehindHttps | Cause::TlsBehindHttp => {
                Class::Gateway
            }
            Cause::ConnectFailed | Cause::ReadError | Cause::Undecided | Cause::NoUpstreamAttempt => Class::Unknown,
        }
    }

    /// What a person should look at next, for this upstream (`ip:port` or `unix:/path`).
    pub fn next_check(self, upstream: &str) -> String {
        let port = upstream.rsplit(':').next().unwrap_or("");
        let ip = upstream.rsplit_once(':').map(|x| x.0).unwrap_or(upstream);
        match self {
            Cause::Refused => format!("Is the upstream service running and listening on port {port}? On its host: ss -ltnp 'sport = :{port}'."),
            Cause::Crashed => "The upstream process died (pid and signal above): check its logs, core dumps, and the kernel log for the OOM killer (dmesg).".into(),
            Cause::WorkerKilled => "The upstream's own manager killed the worker that held the request: a request ran past its limit (php-fpm: request_terminate_timeout, and the slow log to see where it hung).".into(),
            Cause::Reset => "The upstream (or a proxy/load balancer in between) aborted the connection: check its logs at that time and idle/keep-alive timeouts on both sides.".into(),
            Cause::ClosedEarly => "The upstream closed before a complete response: check its logs for errors or worker restarts, and keep-alive timeouts (upstream shorter than gateway?).".into(),
            Cause::Stalled => "The upstream accepted the request but did not answer in time: check its latency, worker pool and dependencies; compare with the gateway's read timeout.".into(),
            Cause::InvalidResponse => format!("The upstream answered something that is not valid HTTP: request it directly (curl -v http://{upstream}/) and check the protocol/port."),
            Cause::Overloaded => "The upstream's accept queue was full: add workers or raise its listen backlog (and net.core.somaxconn).".into(),
            Cause::Upstream5xx => format!(
                "The application at {upstream} answered this 5xx itself: read its own logs (the status line and body above say what it reported), and whether it was in maintenance or failing a dependency."
            ),
            Cause::Dropped => "A firewall dropped the packets: list the rules in the network namespace named in the summary (ip netns exec ... nft list ruleset), look for a drop on the upstream port.".into(),
            Cause::Rejected => "A firewall rejected the connection: check the rules (nft list ruleset / iptables -S) on the host that sent the ICMP or RST named above.".into(),
            Cause::Unreachable => format!("The upstream host does not answer: check it is up, then neighbours and routes from the gateway (ip neigh; ip route get {ip})."),
            Cause::NoRoute => format!("Routing on the gateway refuses this destination: ip route get {ip}; check for blackhole/prohibit/unreachable routes and interfaces that are down."),
            Cause::Timeout => format!("SYNs went unanswered with no local drop: check the path and remote firewalls (a silent drop), and that {ip} is up."),
            Cause::DnsUnreachable => format!(
                "Nothing answers DNS at the gateway's resolver: is the DNS server running there (and is the resolver address in the gateway's config right)? Try dig @RESOLVER {upstream}."
            ),
            Cause::DnsNxdomain => format!(
                "The name {upstream} does not exist for the gateway's resolver: check its spelling in the gateway's config and its DNS record (dig @RESOLVER {upstream}); a search domain does not apply to the gateway's own resolver."
            ),
            Cause::DnsServfail | Cause::DnsError => format!(
                "The gateway's resolver failed to resolve {upstream}: check the resolver's own log and its upstream servers or DNSSEC (dig @RESOLVER {upstream} +dnssec)."
            ),
            Cause::DnsRefused => format!(
                "The resolver refused to answer the gateway: check its access control (allow-query, allow-recursion, or the listen/allow list of dnsmasq/unbound) for the gateway's address, then dig @RESOLVER {upstream}."
            ),
            Cause::DnsNoAddress => format!(
                "{upstream} exists but has no address of the type the gateway asked for: check its A/AAAA records (dig @RESOLVER {upstream} A and AAAA), and nginx's resolver ipv6=off if only A exists."
            ),
            Cause::DnsTimeout => format!(
                "The gateway's resolver did not answer in time: check that it is reachable from the gateway (a firewall on port 53/udp) and responsive (dig @RESOLVER {upstream}); compare with the gateway's resolver timeout (nginx resolver_timeout, HAProxy timeout resolve)."
            ),
            Cause::Loss => "Packets were lost on the path: check interface and qdisc drops (ip -s link; tc -s qdisc) on both ends.".into(),
            Cause::NoSocketFile => format!(
                "The socket file {} is not there: is the upstream (php-fpm, uwsgi, gunicorn) running, and is the path in the gateway's config the one it listens on?",
                upstream.trim_start_matches("unix:")
            ),
            Cause::PermissionDenied => format!(
                "The gateway's workers may not connect to {}: compare the socket's owner and mode (ls -l) with the workers' user (listen.owner/listen.group/listen.mode in php-fpm, the user directive in nginx).",
                upstream.trim_start_matches("unix:")
            ),
            Cause::HeadTooLarge => "The upstream's response head is larger than the gateway's header buffer: raise it (nginx proxy_buffer_size, fastcgi_buffer_size for FastCGI; HAProxy tune.bufsize) or make the upstream's headers smaller (cookies, tokens).".into(),
            Cause::TlsCertRejected => format!(
                "The gateway did not accept the certificate {upstream} presented: its error log says why (nginx: \"upstream SSL certificate verify error\"; HAProxy: \"SSL handshake failure\"). Check the chain, dates and names with openssl s_client -connect {upstream} -servername NAME -CAfile CA.pem (and openssl x509 -noout -dates -ext subjectAltName), and the CA the gateway trusts (proxy_ssl_trusted_certificate, ca-file, tls_trusted_ca_certs)."
            ),
            Cause::TlsAlert => format!(
                "{upstream} refused the gateway's TLS handshake (the alert above): compare the TLS versions and ciphers each side allows (openssl s_client -connect {upstream} -tls1_2, then -tls1_3; nginx proxy_ssl_protocols, HAProxy ssl-min-ver/ssl-max-ver) and the name the gateway sends (SNI)."
            ),
            Cause::PlainHttpBehindHttps => format!(
                "{upstream} speaks plain HTTP but the gateway connects with TLS: use http:// for it in the gateway (nginx proxy_pass, HAProxy without ssl on the server line), or point the gateway at the upstream's TLS port."
            ),
            Cause::TlsBehindHttp => format!(
                "{upstream} speaks TLS but the gateway sends plain HTTP: use https:// for it (nginx proxy_pass https://, HAProxy ssl on the server line, Caddy transport http {{ tls }}), or point the gateway at the upstream's plain HTTP port."
            ),
            Cause::LocalResources => "The gateway ran out of local resources: check the ephemeral port range and TIME_WAIT count (ss -s), and file descriptor limits (ulimit -n).".into(),
            Cause::ConnectFailed | Cause::ReadError | Cause::Undecided | Cause::NoUpstreamAttempt => {
                "The evidence did not decide: read the events above, and the gateway's own error log at that time.".into()
            }
        }
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Cause {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// What the client got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Delivered {
    /// The status line the verdict names.
    Status,
    /// The real status, then a cut-short body.
    Truncated,
    /// The gateway's answer cannot be read here (TLS in a library upstrace does not read,
    /// QUIC): an upstream attempt failed and no successful retry followed.
    Inferred,
}

/// What the client connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    H1,
    H2,
}

/// How the status reached the client: protocol, TLS, and the HTTP/2 stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ClientSide {
    pub protocol: Protocol,
    pub tls: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<u32>,
}

impl ClientSide {
    /// `h1`, `h2`, `h1+tls`, `h2+tls`, for lines and tables.
    pub fn label(&self) -> &'static str {
        match (self.protocol, self.tls) {
            (Protocol::H1, false) => "h1",
            (Protocol::H2, false) => "h2",
            (Protocol::H1, true) => "h1+tls",
            (Protocol::H2, true) => "h2+tls",
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Gateway {
    pub pid: u32,
    pub comm: Comm,
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
    pub event: &'static str,
    pub detail: Detail,
}

/// What one piece of evidence says, kept as facts: worded only when an output writes it (in a
/// storm most verdicts are only counted, by the metrics and the dashboard). The JSON field is
/// the sentence.
#[derive(Debug, Clone, PartialEq)]
pub enum Detail {
    /// A connection event, named by its upstream (`ip:port`, `unix:/path`).
    Socket { peer: Peer, facts: SocketFacts },
    /// A routine step of an exchange, kept as a field of its attempt and told for a verdict.
    Step { peer: Peer, step: Step },
    /// The status line the gateway wrote to its client.
    Status(StatusFacts),
    /// A failure that took the servers out before a status for which no upstream was tried.
    EarlierFailure { upstream: Arc<str>, cause: Cause, pid: u32 },
    /// Worded when it was found (rarer events).
    Text(String),
}

/// How evidence names a peer: an attempt's label (made once, shared) or an address.
#[derive(Debug, Clone, PartialEq)]
pub enum Peer {
    Label(Arc<str>),
    Addr(SocketAddr),
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Label(l) => f.write_str(l),
            Peer::Addr(a) => a.fmt(f),
        }
    }
}

/// The routine steps of an exchange after its connect (`SocketFacts::connect_started`), as
/// evidence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    Established,
    RequestSent,
    RequestSentReused,
}

impl std::fmt::Display for Detail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Detail::Socket { peer, facts } => facts.naming(peer).fmt(f),
            Detail::Step { peer, step } => match step {
                Step::Established => write!(f, "{peer}: SYN_SENT -> ESTABLISHED"),
                Step::RequestSent => write!(f, "{peer}: request sent"),
                Step::RequestSentReused => write!(f, "{peer}: request sent on a reused keep-alive connection"),
            },
            Detail::Status(facts) => facts.fmt(f),
            Detail::EarlierFailure { upstream, cause, pid } => write!(f, "{upstream} {} (pid {pid})", cause.as_str()),
            Detail::Text(t) => f.write_str(t),
        }
    }
}

impl From<String> for Detail {
    fn from(text: String) -> Self {
        Detail::Text(text)
    }
}

impl From<&str> for Detail {
    fn from(text: &str) -> Self {
        Detail::Text(text.to_owned())
    }
}

impl Serialize for Detail {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Verdict {
    /// CLOCK_MONOTONIC stamp of the status line write.
    pub ts_ns: u64,
    pub gateway: Gateway,
    pub client: String,
    /// Protocol, TLS and stream of the client connection (status verdicts).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub client_side: Option<ClientSide>,
    /// The status the client got; null when the answer could not be read (`inferred`).
    pub status: Option<u16>,
    pub delivered: Delivered,
    pub upstream: String,
    pub class: Class,
    pub cause: Cause,
    pub summary: String,
    pub attempts: Vec<AttemptSummary>,
    pub evidence: Vec<EvidenceItem>,
    /// The gateway's own log line for this request, when its log is read (set after the
    /// engine, which does no I/O: see `gateway_log`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_said: Option<crate::gateway_log::said::GatewaySaid>,
}

impl Verdict {
    /// The status as shown: `502`, or `?` when it could not be read.
    pub fn status_text(&self) -> String {
        self.status.map_or_else(|| "?".to_owned(), |s| s.to_string())
    }

    /// `class/cause`, as the dashboard and the report group verdicts.
    pub fn label(&self) -> String {
        format!("{}/{}", self.class, self.cause)
    }

    /// The client and how it spoke: `127.0.0.1:5000 (h2+tls, stream 3)`.
    pub fn client_with_protocol(&self) -> String {
        match self.client_side {
            Some(c) => match c.stream {
                Some(s) => format!("{} ({}, stream {s})", self.client, c.label()),
                None => format!("{} ({})", self.client, c.label()),
            },
            None => self.client.clone(),
        }
    }

    pub fn next_check(&self) -> String {
        self.cause.next_check(&self.upstream)
    }
}

#[cfg(test)]
impl Verdict {
    /// A refused request's verdict (nginx 42, client 127.0.0.1:5000, upstream 10.1.0.2:8081),
    /// for the tests of the outputs to change what they look at.
    pub fn example() -> Verdict {
        Verdict {
            ts_ns: 1_000,
            gateway: Gateway { pid: 42, comm: "nginx".into() },
            client: "127.0.0.1:5000".into(),
            client_side: None,
            status: Some(502),
            delivered: Delivered::Status,
            upstream: "10.1.0.2:8081".into(),
            class: Class::Upstream,
            cause: Cause::Refused,
            summary: "refused".into(),
            attempts: vec![],
            evidence: vec![],
            gateway_said: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_round_trip() {
        for c in Cause::ALL {
            assert_eq!(Cause::from_name(c.as_str()), Some(c));
            assert_eq!(serde_json::to_value(c).unwrap(), serde_json::json!(c.as_str()));
        }
        for (i, c) in Class::ALL.into_iter().enumerate() {
            assert_eq!(c.index(), i);
            assert_eq!(serde_json::to_value(c).unwrap(), serde_json::json!(c.as_str()));
        }
        assert_eq!(serde_json::to_value(Delivered::Truncated).unwrap(), serde_json::json!("truncated"));
    }

    #[test]
    fn every_class_has_a_cause() {
        for class in Class::ALL {
            assert!(Cause::ALL.iter().any(|c| c.class() == class), "{class}");
        }
    }
}
