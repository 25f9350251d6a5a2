//! Namespaces, veth, upstream, gateways, faults and the client. Everything is torn down on
//! drop, also when a test fails half-way.
use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// Port the upstream listens on, and the gateway's client-facing port (on its loopback).
pub const UPSTREAM_PORT: u16 = 8081;
pub const GATEWAY_PORT: u16 = 8080;

fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}

fn sh(args: &[&str]) -> Result<Output> {
    run(Command::new(args[0]).args(&args[1..]))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayKind {
    Nginx,
    Haproxy,
    /// Caddy 2 from Debian: a Go gateway (crypto/tls, Go's HTTP/2), one process.
    Caddy,
}

impl GatewayKind {
    pub const ALL: &[GatewayKind] = &[GatewayKind::Nginx, GatewayKind::Haproxy, GatewayKind::Caddy];

    pub fn name(self) -> &'static str {
        match self {
            GatewayKind::Nginx => "nginx",
            GatewayKind::Haproxy => "haproxy",
            GatewayKind::Caddy => "caddy",
        }
    }

    /// Gateways that fork workers after they listen (the lab waits for one).
    fn has_workers(self) -> bool {
        self == GatewayKind::Nginx
    }
}

/// What the gateway's client side speaks: plain HTTP/1.1 (the default), or HTTPS with a
/// self-signed certificate the lab makes, the client asking for HTTP/1.1 or HTTP/2 (ALPN).
/// The gateway listens the same way for both HTTPS modes and offers both protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientMode {
    #[default]
    Plain,
    TlsH1,
    TlsH2,
}

impl ClientMode {
    pub const ALL: &[ClientMode] = &[ClientMode::Plain, ClientMode::TlsH1, ClientMode::TlsH2];

    /// The suffix of a matrix row in this mode (`refused+tls-h2`); plain rows have none.
    pub fn name(self) -> &'static str {
        match self {
            ClientMode::Plain => "plain",
            ClientMode::TlsH1 => "tls-h1",
            ClientMode::TlsH2 => "tls-h2",
        }
    }

    pub fn tls(self) -> bool {
        self != ClientMode::Plain
    }

    /// The `protocol` a status verdict should carry for this client: `h1` or `h2`.
    pub fn protocol(self) -> &'static str {
        match self {
            ClientMode::Plain | ClientMode::TlsH1 => "h1",
            ClientMode::TlsH2 => "h2",
        }
    }

    /// curl's protocol choice and the URL scheme.
    fn curl_args(self) -> (&'static [&'static str], &'static str) {
        match self {
            ClientMode::Plain => (&["-s"], "http"),
            // -k: the lab's certificate is self-signed.
            ClientMode::TlsH1 => (&["-sk", "--http1.1"], "https"),
            ClientMode::TlsH2 => (&["-sk", "--http2"], "https"),
        }
    }
}

/// A network or firewall fault on the path between the gateway and its upstream, injected with
/// the real tools (nft, ip link, ip route, ip addr, tc). Upstream *behaviour* faults (resets,
/// crashes, garbage, stalls) are modes of the lab upstream instead, see `Lab::start_upstream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// nft in the upstream namespace silently drops SYNs to the upstream port.
    FwDropSyn,
    /// nft in the upstream namespace answers with ICMP port unreachable (type 3 code 3).
    FwRejectPortUnreachable,
    /// nft in the upstream namespace answers with ICMP communication administratively
    /// prohibited (type 3 code 13).
    FwRejectAdminProhibited,
    /// nft in the upstream namespace answers with a TCP RST.
    FwRejectTcpReset,
    /// The upstream's end of the veth is down (the gateway's end loses carrier).
    LinkDownUpstream,
    /// The gateway's end of the veth is down (its connected route disappears).
    LinkDownGateway,
    /// `ip route add blackhole <up_ip>/32` in the gateway namespace.
    RouteBlackhole,
    /// `ip route add unreachable <up_ip>/32` in the gateway namespace.
    RouteUnreachable,
    /// `ip route add prohibit <up_ip>/32` in the gateway namespace.
    RouteProhibit,
    /// The upstream's address is removed, so ARP for it is never answered; the gateway still
    /// routes to it on the link.
    UnreachableHost,
    /// Packet loss without netem (not in this kernel) and without nft (which would read as a
    /// firewall): on the upstream's veth egress, an HTB qdisc whose u32 filter sends every
    /// packet with an odd IP ID to a `pfifo limit 0` leaf, which drops it (a qdisc drop). Linux
    /// counts IP IDs per connection from a random start, so about every other reply packet is
    /// lost and its retransmission (next ID) goes through: TCP recovers after an RTO. SYN-ACKs
    /// from the listener carry ID 0 and always pass.
    Loss,
    /// Loss that stalls an established connection: the same HTB/pfifo-0 trap, but for every
    /// upstream packet with the PSH flag (all response data, and its retransmissions); SYN-ACKs
    /// and pure ACKs pass, so the connection opens and the request is acknowledged.
    LossStall,
}

impl Fault {
    pub const ALL: &[Fault] = &[
        Fault::FwDropSyn,
        Fault::FwRejectPortUnreachable,
        Fault::FwRejectAdminProhibited,
        Fault::FwRejectTcpReset,
        Fault::LinkDownUpstream,
        Fault::LinkDownGateway,
        Fault::RouteBlackhole,
        Fault::RouteUnreachable,
        Fault::RouteProhibit,
        Fault::UnreachableHost,
        Fault::Loss,
        Fault::LossStall,
    ];

    /// Scenario name, as in FAULTS.md.
    pub fn name(self) -> &'static str {
        match self {
            Fault::FwDropSyn => "fw-drop",
            Fault::FwRejectPortUnreachable => "fw-reject-port-unreach",
            Fault::FwRejectAdminProhibited => "fw-reject-admin-prohib",
            Fault::FwRejectTcpReset => "fw-reject-tcp-reset",
            Fault::LinkDownUpstream => "link-down-upstream",
            Fault::LinkDownGateway => "link-down-gateway",
            Fault::RouteBlackhole => "route-blackhole",
            Fault::RouteUnreachable => "route-unreachable",
            Fault::RouteProhibit => "route-prohibit",
            Fault::UnreachableHost => "unreachable-host",
            Fault::Loss => "loss",
            Fault::LossStall => "loss-stall",
        }
    }

    /// The nft rule for the firewall faults.
    fn nft_rule(self) -> Option<&'static str> {
        Some(match self {
            Fault::FwDropSyn => "tcp flags & (syn | ack) == syn drop",
            Fault::FwRejectPortUnreachable => "reject with icmp type port-unreachable",
            Fault::FwRejectAdminProhibited => "reject with icmp type admin-prohibited",
            Fault::FwRejectTcpReset => "reject with tcp reset",
            _ => return None,
        })
    }

    /// The route type for the routing faults.
    fn route_type(self) -> Option<&'static str> {
        Some(match self {
            Fault::RouteBlackhole => "blackhole",
            Fault::RouteUnreachable => "unreachable",
            Fault::RouteProhibit => "prohibit",
            _ => return None,
        })
    }
}

/// An HTTPS upstream (the gateway connects with TLS and verifies the server's certificate
/// against the lab's own CA, for the name `upstream.lab`) and what is wrong with it; or, the
/// other way round, a TLS server behind a plain `http://` upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamTls {
    /// The server's certificate is self-signed: no CA the gateway trusts signed it.
    SelfSigned,
    /// Signed by the lab CA for the right name, but expired (its notAfter is yesterday).
    Expired,
    /// Signed by the lab CA, valid, for another name (`other.lab`).
    WrongName,
    /// A plain HTTP server behind `https://` (the lab upstream, answering the ClientHello with
    /// 400 as real servers do).
    PlainHttp,
    /// The server speaks TLS 1.3 only, the gateway TLS 1.2 at most: no shared version.
    NoSharedVersion,
    /// The gateway speaks plain HTTP to a server that answers with a TLS alert record (the lab
    /// upstream's `tls-alert` mode, as a TLS server answers bytes that are no ClientHello).
    TlsBehindHttp,
}

impl UpstreamTls {
    /// Whether the gateway is told to speak TLS to its upstream.
    pub fn gateway_speaks_tls(self) -> bool {
        self != UpstreamTls::TlsBehindHttp
    }
}

/// The name the gateway expects in the upstream's certificate (and sends as SNI).
pub const UPSTREAM_TLS_NAME: &str = "upstream.lab";

/// The name the gateway resolves for its upstream when the lab runs a resolver.
pub const UPSTREAM_NAME: &str = "app.lab";

/// The lab's resolver (in the upstream namespace, port 53) and what it does with every query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolver {
    /// Answers with the upstream's address.
    Ok,
    /// Nothing listens on port 53: the query gets ICMP port unreachable.
    Down,
    Nxdomain,
    Servfail,
    Refused,
    /// Takes the queries and never answers.
    Silent,
    /// Over TCP, with nothing listening there: its UDP answers are truncated (TC) so that
    /// nginx and Go ask again over TCP; HAProxy's nameserver is `tcp@` (the RST to its SYN).
    TcpDown,
    /// Over TCP (as above), answering NXDOMAIN there.
    TcpNxdomain,
}

impl Resolver {
    /// The lab upstream's DNS mode, or None when no server runs.
    fn mode(self) -> Option<&'static str> {
        match self {
            Resolver::Ok => Some("dns-ok"),
            Resolver::Down => None,
            Resolver::Nxdomain => Some("dns-nxdomain"),
            Resolver::Servfail => Some("dns-servfail"),
            Resolver::Refused => Some("dns-refused"),
            Resolver::Silent => Some("dns-silent"),
            Resolver::TcpDown => Some("dns-tcp-down"),
            Resolver::TcpNxdomain => Some("dns-tcp-nxdomain"),
        }
    }

    /// The gateway reaches it over TCP.
    pub fn over_tcp(self) -> bool {
        matches!(self, Resolver::TcpDown | Resolver::TcpNxdomain)
    }
}

/// The nft table the firewall faults live in (in the upstream namespace).
const NFT_TABLE: &str = "upstrace_lab";

/// One state of the lab's upstream side, for runs that roll through faults (demo, soak).
#[derive(Debug, Clone, Copy)]
pub enum Step {
    Healthy,
    /// The lab upstream in this misbehaving mode.
    Mode(&'static str),
    /// Nothing listens on the upstream port.
    NoUpstream,
    /// A healthy upstream behind this fault.
    Fault(Fault),
}

/// What the lab's PHP script does, and how php-fpm's socket is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhpMode {
    /// Answers 200.
    Ok,
    /// The worker kills itself with SIGSEGV mid-request (a crashing extension).
    Segfault,
    /// The request runs past `request_terminate_timeout` (1 s): the master kills the worker.
    Hang,
    /// The socket is root's with mode 0600: the gateway's workers (nobody) may not connect.
    RootOnlySocket,
    /// The application answers 500 itself (`http_response_code(500)`), a whole response.
    AppError,
    /// One worker (`pm.max_children = 1`) and `listen.backlog = 1`: while the worker runs a
    /// slow request and two more wait in the socket's queue, a connect finds the queue full.
    Saturated,
}

impl PhpMode {
    /// The pool's workers.
    fn workers(self) -> usize {
        if self == PhpMode::Saturated { 1 } else { 2 }
    }
}

/// Real php-fpm (Debian's php8.2-fpm) started by the lab: master and two static workers
/// (user nobody), its socket and script in the lab's directory.
pub struct PhpFpm {
    child: Child,
    pub master: u32,
}

impl PhpFpm {
    pub fn workers(&self) -> Vec<u32> {
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.master))
            .map(|t| t.split_whitespace().filter_map(|p| p.parse().ok()).collect())
            .unwrap_or_default()
    }
}

pub struct Gateway {
    /// The master process; workers are its children.
    pub pid: u32,
    child: Child,
    pub log_path: PathBuf,
}

impl Gateway {
    /// The gateway's own error log (nginx error_log / HAProxy log), for comparison.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Worker pids (children of the master).
    pub fn workers(&self) -> Vec<u32> {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.pid)) else {
            return vec![];
        };
        text.split_whitespace().filter_map(|p| p.parse().ok()).collect()
    }
}

pub struct Lab {
    pub id: String,
    pub gw_ns: String,
    pub up_ns: String,
    pub gw_ip: String,
    pub up_ip: String,
    pub dir: PathBuf,
    /// The lab upstream process (`start_upstream`).
    upstream: Option<Child>,
    pub gateway: Option<Gateway>,
    /// nginx worker processes (1 by default; benchmarks use more).
    pub nginx_workers: u32,
    /// The upstream listens on a unix socket (`unix_socket_path`) instead of its TCP port.
    pub unix_upstream: bool,
    /// The gateway's upstream is a group of two servers (the lab upstream's port and the next
    /// one); HAProxy health-checks them.
    pub upstream_group: bool,
    /// nginx shares the group's state between its workers (`zone`): a server marked failed by
    /// one worker is failed for all.
    pub upstream_zone: bool,
    /// The gateway is told its upstream is on 127.0.0.1 (its own namespace's loopback, where
    /// nothing listens): the "localhost inside a container" mistake.
    pub upstream_loopback: bool,
    /// The upstream is real php-fpm on a unix socket (`start_php`); nginx speaks FastCGI.
    pub php: Option<PhpFpm>,
    /// php-fpm listens on TCP (the upstream's address and port) instead of a unix socket.
    pub php_over_tcp: bool,
    /// The lab upstream speaks FastCGI (modes `fcgi-*`) on php-fpm's socket path, for the
    /// faults php-fpm cannot be made to commit; nginx speaks FastCGI.
    pub fastcgi_upstream: bool,
    /// What the gateway's client side speaks (set before `start_gateway`) and `request` uses.
    pub client: ClientMode,
    /// nginx keeps a pool of idle upstream connections (the lab's default). Off: nginx's own
    /// default, HTTP/1.0 and a new upstream connection per request.
    pub upstream_keepalive: bool,
    /// nginx also listens on this many more addresses of its namespace (`client_address`),
    /// plain HTTP: load aimed at each comes from that address, as from that many clients.
    pub client_addresses: u8,
    /// The gateway's upstream is HTTPS (or a TLS server behind http://): set before
    /// `start_gateway`; `start_tls_upstream` starts the server.
    pub upstream_tls: Option<UpstreamTls>,
    /// The gateway finds its upstream by name (`UPSTREAM_NAME`) through this resolver, at the
    /// upstream's address: set before `start_gateway`, then `start_resolver`.
    pub resolver: Option<Resolver>,
    resolver_process: Option<Child>,
    /// Where HAProxy sends its log (set before `start_gateway`).
    pub haproxy_log: HaproxyLog,
    /// HAProxy drops root for this user after reading its configuration (`user`, as
    /// Debian's runs as haproxy); none: it stays root.
    pub haproxy_user: Option<&'static str>,
    /// The lab's rsyslogd, for `HaproxyLog::SyslogUnix` and `SyslogUdp`.
    syslog_daemon: Option<Child>,
}

/// Where the lab's HAProxy sends its `option httplog` lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaproxyLog {
    /// `log stdout format raw`, its stdout a file (systemd's `StandardOutput=append:`).
    Stdout,
    /// `log <lab>/dev/log local0`: a unix datagram socket where the lab's rsyslogd listens
    /// and writes the lines to `syslog/haproxy.log`, as Debian's rsyslog does for its HAProxy.
    SyslogUnix,
    /// `log 127.0.0.1:5514 local0`: the same rsyslogd's UDP input.
    SyslogUdp,
}

/// The UDP port of the lab's rsyslogd (in the gateway's namespace).
pub const SYSLOG_UDP_PORT: u16 = 5514;

impl Lab {
    /// Two namespaces (gateway, upstream) joined by a veth pair on a /24 of their own.
    pub fn new() -> Result<Self> {
        let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        let id = format!("ut{}x{n}", std::process::id() % 100_000);
        let subnet = 100 + (std::process::id() as u32 * 7 + n) % 150;
        let dir = std::env::temp_dir().join(format!("upstrace-lab-{id}"));
        std::fs::create_dir_all(&dir)?;
        // World-readable so nginx workers (user nobody) can use it.
        let _ = sh(&["chmod", "755", dir.to_str().unwrap()]);
        let lab = Lab {
            gw_ns: format!("{id}gw"),
            up_ns: format!("{id}up"),
            gw_ip: format!("10.{subnet}.0.1"),
            up_ip: format!("10.{subnet}.0.2"),
            id,
            dir,
            upstream: None,
            gateway: None,
            nginx_workers: 1,
            unix_upstream: false,
            upstream_group: false,
            upstream_zone: false,
            upstream_loopback: false,
            php: None,
            fastcgi_upstream: false,
            php_over_tcp: false,
            client: ClientMode::Plain,
            upstream_keepalive: true,
            client_addresses: 0,
            upstream_tls: None,
            resolver: None,
            resolver_process: None,
            haproxy_log: HaproxyLog::Stdout,
            haproxy_user: None,
            syslog_daemon: None,
        };
        lab.setup_network()?;
        Ok(lab)
    }

    fn setup_network(&self) -> Result<()> {
        let (gw, up) = (&self.gw_ns, &self.up_ns);
        let (veth_gw, veth_up) = (format!("{}g", self.id), format!("{}u", self.id));
        sh(&["ip", "netns", "add", gw])?;
        sh(&["ip", "netns", "add", up])?;
        sh(&["ip", "link", "add", &veth_gw, "netns", gw, "type", "veth", "peer", "name", &veth_up, "netns", up])?;
        for (ns, dev, ip) in [(gw, &veth_gw, &self.gw_ip), (up, &veth_up, &self.up_ip)] {
            sh(&["ip", "-n", ns, "addr", "add", &format!("{ip}/24"), "dev", dev])?;
            sh(&["ip", "-n", ns, "link", "set", dev, "up"])?;
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
            // Load runs open many short connections: let TIME_WAIT ports be reused.
            let _ = sh(&["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"]);
        }
        Ok(())
    }

    /// The gateway's `k`-th extra client-facing address (1-based, `client_addresses`). It is
    /// on the namespace's loopback, so a connection to it also comes from it.
    pub fn client_address(k: u8) -> String {
        format!("10.250.0.{k}")
    }

    pub fn veth_gw(&self) -> String {
        format!("{}g", self.id)
    }

    pub fn veth_up(&self) -> String {
        format!("{}u", self.id)
    }

    pub fn upstream_addr(&self) -> String {
        format!("{}:{UPSTREAM_PORT}", self.up_ip)
    }

    /// The unix socket a unix upstream listens on. Stopping the upstream leaves the file, as a
    /// crashed server does: connects to it are refused, while a missing file is ENOENT.
    pub fn unix_socket_path(&self) -> PathBuf {
        self.dir.join("upstream.sock")
    }

    /// The second server of an upstream group: the next port of the upstream's address.
    fn second_server(&self) -> String {
        format!("{}:{}", self.up_ip, UPSTREAM_PORT + 1)
    }

    /// Where the upstream listens, in `upstrace-lab-upstream --listen` form.
    fn upstream_listen(&self) -> String {
        if self.fastcgi_upstream {
            format!("unix:{}", self.php_socket_path().display())
        } else if self.unix_upstream {
            format!("unix:{}", self.unix_socket_path().display())
        } else {
            self.gateways_upstream()
        }
    }

    /// The TCP address the gateway is told its upstream has.
    fn gateways_upstream(&self) -> String {
        if self.upstream_loopback { format!("127.0.0.1:{UPSTREAM_PORT}") } else { self.upstream_addr() }
    }

    /// A lab with the upstream started in `upstream_mode` (none when `None`, so connects are
    /// refused) and the gateway of `kind` in front of it.
    pub fn with_gateway(kind: GatewayKind, upstream_mode: Option<&str>) -> Result<Self> {
        let mut lab = Lab::new()?;
        if let Some(mode) = upstream_mode {
            lab.start_upstream(mode)?;
        }
        lab.start_gateway(kind)?;
        Ok(lab)
    }

    /// Inject one network or firewall fault. Faults add up; `clear_faults` undoes them all.
    pub fn inject(&mut self, fault: Fault) -> Result<()> {
        let (gw, up) = (self.gw_ns.clone(), self.up_ns.clone());
        let (veth_gw, veth_up) = (self.veth_gw(), self.veth_up());
        let host = format!("{}/32", self.up_ip);
        let result = if let Some(rule) = fault.nft_rule() {
            // One nft transaction: table, input chain, rule (the chain may exist already).
            let script = format!(
                "add table inet {NFT_TABLE}; \
                 add chain inet {NFT_TABLE} input {{ type filter hook input priority 0; policy accept; }}; \
                 add rule inet {NFT_TABLE} input tcp dport {UPSTREAM_PORT} {rule}"
            );
            self.exec(&up, &["nft", &script]).map(drop)
        } else if let Some(kind) = fault.route_type() {
            sh(&["ip", "-n", &gw, "route", "add", kind, &host]).map(drop)
        } else {
            match fault {
                Fault::LinkDownUpstream => sh(&["ip", "-n", &up, "link", "set", &veth_up, "down"]).map(drop),
                Fault::LinkDownGateway => sh(&["ip", "-n", &gw, "link", "set", &veth_gw, "down"]).map(drop),
                Fault::UnreachableHost => sh(&["ip", "-n", &up, "addr", "flush", "dev", &veth_up]).map(drop),
                Fault::Loss => self.inject_loss(&["u16", "0x0001", "0x0001", "at", "4"]),
                // TCP flags are byte 13 of the TCP header: 33 without IP options; 0x08 = PSH.
                Fault::LossStall => self.inject_loss(&["u8", "0x08", "0x08", "at", "33"]),
                _ => unreachable!("{fault:?} is an nft or route fault"),
            }
        };
        result.with_context(|| format!("injecting {}", fault.name()))
    }

    /// See `Fault::Loss`: packets matching the u32 `selector` are dropped by a qdisc.
    fn inject_loss(&self, selector: &[&str]) -> Result<()> {
        let (up, dev) = (self.up_ns.as_str(), self.veth_up());
        let tc = |args: &[&str]| {
            let mut all = vec!["tc", "-n", up];
            all.extend_from_slice(args);
            sh(&all).map(drop)
        };
        tc(&["qdisc", "add", "dev", &dev, "root", "handle", "1:", "htb", "default", "10"])?;
        tc(&["class", "add", "dev", &dev, "parent", "1:", "classid", "1:10", "htb", "rate", "1gbit"])?;
        tc(&["class", "add", "dev", &dev, "parent", "1:", "classid", "1:20", "htb", "rate", "1gbit"])?;
        tc(&["qdisc", "add", "dev", &dev, "parent", "1:20", "handle", "20:", "pfifo", "limit", "0"])?;
        let mut filter = vec!["filter", "add", "dev", &dev, "parent", "1:", "protocol", "ip", "prio", "1", "u32", "match"];
        filter.extend_from_slice(selector);
        filter.extend_from_slice(&["flowid", "1:20"]);
        tc(&filter)
    }

    /// Clear the previous step's faults and put the lab in `step`.
    pub fn apply(&mut self, step: Step) -> Result<()> {
        self.clear_faults();
        match step {
            Step::Healthy => self.start_upstream("ok")?,
            Step::Mode(m) => self.start_upstream(m)?,
            Step::NoUpstream => self.stop_upstream(),
            Step::Fault(f) => {
                self.start_upstream("ok")?;
                self.inject(f)?;
            }
        }
        Ok(())
    }

    /// Undo every fault `inject` can add, ignoring what was not there.
    pub fn clear_faults(&mut self) {
        let (gw, up) = (self.gw_ns.as_str(), self.up_ns.as_str());
        let (veth_gw, veth_up) = (self.veth_gw(), self.veth_up());
        let host = format!("{}/32", self.up_ip);
        let _ = self.exec(up, &["nft", "delete", "table", "inet", NFT_TABLE]);
        let _ = sh(&["ip", "-n", up, "link", "set", &veth_up, "up"]);
        let _ = sh(&["ip", "-n", gw, "link", "set", &veth_gw, "up"]);
        for kind in ["blackhole", "unreachable", "prohibit"] {
            let _ = sh(&["ip", "-n", gw, "route", "del", kind, &host]);
        }
        let _ = sh(&["tc", "-n", up, "qdisc", "del", "dev", &veth_up, "root"]);
        // `replace` so an address that is still there is no error.
        let _ = sh(&["ip", "-n", up, "addr", "replace", &format!("{}/24", self.up_ip), "dev", &veth_up]);
        // Forget failed ARP lookups, so the next connect does not wait for a stale entry.
        let _ = sh(&["ip", "-n", gw, "neigh", "flush", "dev", &veth_gw]);
    }

    /// Run a command inside a namespace of this lab and wait for it.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Result<Output> {
        run(Command::new("ip").args(["netns", "exec", ns]).args(args))
    }

    /// Start the misbehaving upstream in the upstream namespace and wait until it listens.
    pub fn start_upstream(&mut self, mode: &str) -> Result<()> {
        self.stop_upstream();
        let backlog = if mode == "no-accept" { "1" } else { "128" };
        self.upstream = Some(self.spawn_lab_upstream(&["--listen", &self.upstream_listen(), "--mode", mode, "--backlog", backlog])?);
        Ok(())
    }

    /// Start the lab's resolver on the upstream's address, port 53/udp (as `self.resolver`
    /// says; nothing for `Resolver::Down`).
    pub fn start_resolver(&mut self) -> Result<()> {
        let Some(mode) = self.resolver.and_then(Resolver::mode) else { return Ok(()) };
        self.resolver_process = Some(self.spawn_lab_upstream(&["--listen", &format!("udp:{}:53", self.up_ip), "--mode", mode])?);
        Ok(())
    }

    /// `upstrace-lab-upstream ARGS` in the upstream namespace, once it says it is ready.
    fn spawn_lab_upstream(&self, args: &[&str]) -> Result<Child> {
        let bin = crate::find_binary("upstrace-lab-upstream", "UPSTRACE_LAB_UPSTREAM")?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.up_ns])
            .arg(&bin)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
        if line.trim() != "ready" {
            let _ = child.kill();
            bail!("lab upstream did not start ({})", args.join(" "));
        }
        Ok(child)
    }

    /// Make the lab's upstream certificates with openssl in its directory: a CA the gateways
    /// trust, and the server certificate `kind` calls for (self-signed, expired, for another
    /// name, or a good one). EC keys: fast to make. Returns (ca, cert, key).
    fn upstream_certificates(&self, kind: UpstreamTls) -> Result<(PathBuf, PathBuf, PathBuf)> {
        let dir = &self.dir;
        let path = |name: &str| dir.join(name);
        let openssl = |args: &[&str]| -> Result<()> {
            let out =
                Command::new("openssl").args(args).current_dir(dir).output().context("the HTTPS upstream needs the openssl command")?;
            if !out.status.success() {
                bail!("openssl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
            }
            Ok(())
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let (ca, cert, key) = (path("upstream-ca.pem"), path("upstream-cert.pem"), path("upstream-key.pem"));
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &["-days", "2", "-subj", "/CN=upstrace lab CA", "-keyout", "upstream-ca.key", "-out", "upstream-ca.pem"],
            ]
            .concat(),
        )?;
        let name = if kind == UpstreamTls::WrongName { "other.lab" } else { UPSTREAM_TLS_NAME };
        std::fs::write(path("upstream.ext"), format!("subjectAltName=DNS:{name}\n"))?;
        let subject = format!("/CN={name}");
        if kind == UpstreamTls::SelfSigned {
            let san = format!("subjectAltName=DNS:{name}");
            openssl(
                &[
                    &["req", "-x509"][..],
                    &ec,
                    &["-days", "2", "-subj", &subject, "-addext", &san, "-keyout", "upstream-key.pem", "-out", "upstream-cert.pem"],
                ]
                .concat(),
            )?;
        } else {
            openssl(&[&["req"][..], &ec, &["-subj", &subject, "-keyout", "upstream-key.pem", "-out", "upstream.csr"]].concat())?;
            // openssl 3.0 has no -not_after; a negative -days puts notAfter in the past.
            let days = if kind == UpstreamTls::Expired { "-1" } else { "2" };
            openssl(&[
                "x509",
                "-req",
                "-in",
                "upstream.csr",
                "-CA",
                "upstream-ca.pem",
                "-CAkey",
                "upstream-ca.key",
                "-set_serial",
                "2",
                "-days",
                days,
                "-extfile",
                "upstream.ext",
                "-out",
                "upstream-cert.pem",
            ])?;
        }
        Ok((ca, cert, key))
    }

    /// The CA the gateway trusts for its HTTPS upstream.
    fn upstream_ca(&self) -> PathBuf {
        self.dir.join("upstream-ca.pem")
    }

    fn gateway_speaks_tls(&self) -> bool {
        self.upstream_tls.is_some_and(|t| t.gateway_speaks_tls())
    }

    /// Start the HTTPS upstream for `kind` in the upstream namespace: `openssl s_server` with
    /// its certificate (answering HTTP requests with its status page), or the lab upstream
    /// (plain HTTP behind https://, a TLS alert behind http://).
    pub fn start_tls_upstream(&mut self, kind: UpstreamTls) -> Result<()> {
        if kind == UpstreamTls::TlsBehindHttp {
            return self.start_upstream("tls-alert");
        }
        // The gateway's configuration names the CA file, whatever the server speaks.
        let (_, cert, key) = self.upstream_certificates(kind)?;
        if kind == UpstreamTls::PlainHttp {
            return self.start_upstream("plain-http");
        }
        self.stop_upstream();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.up_ns, "openssl", "s_server", "-www", "-accept", &self.upstream_addr(), "-cert"])
            .arg(&cert)
            .arg("-key")
            .arg(&key);
        if kind == UpstreamTls::NoSharedVersion {
            cmd.arg("-tls1_3");
        }
        let mut child =
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().context("starting openssl s_server")?;
        // s_server says ACCEPT once it listens (after a line or two about its parameters).
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        for _ in 0..10 {
            line.clear();
            if out.read_line(&mut line)? == 0 || line.trim() == "ACCEPT" {
                break;
            }
        }
        if line.trim() != "ACCEPT" {
            let _ = child.kill();
            let _ = child.wait();
            bail!("openssl s_server did not start ({kind:?})");
        }
        // Keep its stdout open (it logs there) without blocking it: a thread drains it.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        self.upstream = Some(child);
        Ok(())
    }

    /// The socket php-fpm listens on.
    pub fn php_socket_path(&self) -> PathBuf {
        self.dir.join("php.sock")
    }

    /// Where php-fpm listens, as php-fpm and HAProxy write it: a socket path, or `ip:port`.
    fn php_listen(&self) -> String {
        if self.php_over_tcp { self.upstream_addr() } else { self.php_socket_path().display().to_string() }
    }

    /// The gateway speaks FastCGI to its upstream (php-fpm, or the lab's FastCGI server).
    fn speaks_fastcgi(&self) -> bool {
        self.php.is_some() || self.fastcgi_upstream
    }

    /// Start php-fpm in the upstream namespace (unix sockets do not care) with its script in
    /// `mode`, and wait until its workers are up.
    pub fn start_php(&mut self, mode: PhpMode) -> Result<()> {
        let d = self.dir.display();
        let www = self.dir.join("www");
        std::fs::create_dir_all(&www)?;
        let script = match mode {
            PhpMode::Segfault => "<?php posix_kill(getmypid(), 11); sleep(5); echo \"unreachable\";\n",
            PhpMode::Hang => "<?php sleep(10); echo \"late\";\n",
            PhpMode::Ok | PhpMode::RootOnlySocket => "<?php echo \"ok\";\n",
            PhpMode::AppError => "<?php http_response_code(500); echo \"app error\";\n",
            PhpMode::Saturated => "<?php sleep(3); echo \"slow\";\n",
        };
        std::fs::write(www.join("app.php"), script)?;
        let (owner, socket_mode) = if mode == PhpMode::RootOnlySocket { ("root", "0600") } else { ("nobody", "0666") };
        let conf = format!(
            "[global]\npid = {d}/php-fpm.pid\nerror_log = {d}/php-fpm.log\ndaemonize = no\n\
             [www]\nuser = nobody\ngroup = nogroup\nlisten = {sock}\nlisten.owner = {owner}\nlisten.mode = {socket_mode}\n\
             pm = static\npm.max_children = {workers}\nrequest_terminate_timeout = {terminate}\ncatch_workers_output = yes\n{backlog}",
            sock = self.php_listen(),
            workers = mode.workers(),
            terminate = if mode == PhpMode::Saturated { "0" } else { "1s" },
            backlog = if mode == PhpMode::Saturated { "listen.backlog = 1\n" } else { "" },
        );
        let path = self.dir.join("php-fpm.conf");
        std::fs::write(&path, conf)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.up_ns, "php-fpm8.2", "--nodaemonize", "--fpm-config"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting php-fpm8.2 (Debian package php8.2-fpm, installed by cargo xtask setup)")?;
        // `ip netns exec` execs php-fpm: the child is the master.
        let php = PhpFpm { master: child.id(), child };
        let deadline = Instant::now() + Duration::from_secs(10);
        // The master listens before it forks its workers.
        while !((self.php_over_tcp || self.php_socket_path().exists()) && php.workers().len() >= mode.workers()) {
            if Instant::now() > deadline {
                bail!("php-fpm did not start: {}", std::fs::read_to_string(self.dir.join("php-fpm.log")).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.php = Some(php);
        Ok(())
    }

    /// Kill php-fpm at once (master and workers, SIGKILL): the socket file stays behind.
    pub fn kill_php(&mut self) {
        if let Some(mut php) = self.php.take() {
            // The master first, so it respawns no worker; then the workers it had.
            let workers = php.workers();
            let _ = php.child.kill();
            let _ = php.child.wait();
            for pid in workers {
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }

    /// Stop the upstream the way an operator would (SIGTERM), so it reads as a clean stop,
    /// not a crash; SIGKILL only if it does not go.
    pub fn stop_upstream(&mut self) {
        if let Some(mut up) = self.upstream.take() {
            unsafe { libc::kill(up.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = up.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = up.kill();
            let _ = up.wait();
        }
    }

    /// The lab's self-signed certificate for `localhost`, in its directory: the certificate,
    /// its key, and both in one PEM file (as HAProxy wants them). The first lab of a process
    /// makes it with openssl (a few hundred ms for the RSA key); later labs write the same.
    fn certificate(&self) -> Result<(PathBuf, PathBuf, PathBuf)> {
        static MADE: Mutex<Option<(Vec<u8>, Vec<u8>)>> = Mutex::new(None);
        let (cert, key, both) = (self.dir.join("cert.pem"), self.dir.join("key.pem"), self.dir.join("cert+key.pem"));
        let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
        if made.is_none() {
            let out = Command::new("openssl")
                .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .output()
                .context("the HTTPS lab needs the openssl command (Debian package openssl)")?;
            if !out.status.success() {
                bail!("openssl req failed: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
            *made = Some((std::fs::read(&cert)?, std::fs::read(&key)?));
        }
        let (cert_pem, key_pem) = made.as_ref().unwrap();
        std::fs::write(&cert, cert_pem)?;
        std::fs::write(&key, key_pem)?;
        std::fs::write(&both, [cert_pem.as_slice(), key_pem.as_slice()].concat())?;
        Ok((cert, key, both))
    }

    /// Start a gateway in the gateway namespace, proxying to the lab upstream, with short
    /// timeouts (connect 2 s, read 2 s) and no retries to other servers. Its client side is
    /// `self.client`.
    pub fn start_gateway(&mut self, kind: GatewayKind) -> Result<u32> {
        let (conf, log_path) = match kind {
            GatewayKind::Nginx => self.nginx_conf()?,
            GatewayKind::Haproxy => self.haproxy_conf()?,
            GatewayKind::Caddy => self.caddy_conf()?,
        };
        for k in 1..=self.client_addresses {
            sh(&["ip", "-n", &self.gw_ns, "addr", "replace", &format!("{}/32", Lab::client_address(k)), "dev", "lo"])?;
        }
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.gw_ns]);
        match kind {
            GatewayKind::Nginx => cmd.args(["nginx", "-c", conf.to_str().unwrap(), "-p", self.dir.to_str().unwrap()]),
            GatewayKind::Haproxy => cmd.args(["haproxy", "-db", "-f", conf.to_str().unwrap()]),
            // Caddy keeps its state under HOME/XDG dirs: the lab's, not root's.
            GatewayKind::Caddy => cmd
                .args(["caddy", "run", "--adapter", "caddyfile", "--config", conf.to_str().unwrap()])
                .env("HOME", &self.dir)
                .env("XDG_DATA_HOME", self.dir.join("xdg"))
                .env("XDG_CONFIG_HOME", self.dir.join("xdg")),
        };
        // HAProxy logs to stdout (`log stdout format raw local0` with `option httplog`, see its
        // config) sent to a file, as systemd's `StandardOutput=append:` does; Caddy logs JSON to
        // stderr, also a file; nginx writes its own error_log. upstrace finds all three among
        // the gateway's open files and puts their lines into its verdicts (`gateway_said`).
        let log_file = || -> Result<Stdio> {
            Ok(std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?.into())
        };
        let by_syslog = kind == GatewayKind::Haproxy && self.haproxy_log != HaproxyLog::Stdout;
        if by_syslog {
            self.start_syslog_daemon()?;
        }
        let (stdout, stderr) = match kind {
            GatewayKind::Nginx => (Stdio::null(), Stdio::null()),
            GatewayKind::Haproxy if by_syslog => (Stdio::null(), Stdio::null()),
            GatewayKind::Haproxy => (log_file()?, Stdio::null()),
            GatewayKind::Caddy => (Stdio::null(), log_file()?),
        };
        let child = cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr).spawn().with_context(|| format!("starting {}", kind.name()))?;
        let pid = child.id();
        self.gateway = Some(Gateway { pid, child, log_path: log_path.clone() });
        // Ready when its port accepts connections (checked from inside its namespace).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let probe = Command::new("ip")
                .args(["netns", "exec", &self.gw_ns, "bash", "-c"])
                .arg(format!("exec 3<>/dev/tcp/127.0.0.1/{GATEWAY_PORT}"))
                .stderr(Stdio::null())
                .status()?;
            let workers = self.gateway.as_ref().map(|g| g.workers().len()).unwrap_or(0);
            // Through syslog, ready when rsyslogd has written HAProxy's first line (its
            // "Proxy fe started." notice): the file upstrace finds among rsyslogd's.
            let logged = !by_syslog || std::fs::metadata(&log_path).is_ok_and(|m| m.len() > 0);
            if probe.success() && (!kind.has_workers() || workers > 0) && logged {
                return Ok(pid);
            }
            let exited = self.gateway.as_mut().is_some_and(|g| matches!(g.child.try_wait(), Ok(Some(_))));
            if exited || Instant::now() > deadline {
                bail!("{} did not start listening; log: {}", kind.name(), self.gateway.as_ref().unwrap().log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn nginx_conf(&self) -> Result<(PathBuf, PathBuf)> {
        let d = self.dir.display();
        let log = self.dir.join("error.log");
        // nginx 1.22 (Debian 12) turns HTTP/2 on with the `http2` listen parameter.
        let mut listen = if self.client.tls() {
            let (cert, key, _) = self.certificate()?;
            format!(
                "listen 127.0.0.1:{GATEWAY_PORT} ssl http2;\n        ssl_certificate {};\n        ssl_certificate_key {};",
                cert.display(),
                key.display()
            )
        } else {
            format!("listen 127.0.0.1:{GATEWAY_PORT};")
        };
        for k in 1..=self.client_addresses {
            listen += &format!("\n        listen {}:{GATEWAY_PORT};", Lab::client_address(k));
        }
        let (pool, reuse) = if self.upstream_keepalive {
            ("\n        keepalive 64;", "\n            proxy_http_version 1.1;\n            proxy_set_header Connection \"\";")
        } else {
            ("", "")
        };
        let conf = format!(
            r#"daemon off;
master_process on;
worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log error;
events {{ worker_connections 1024; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream backend {{
        server {up};{second}{pool}
    }}
    server {{
        {listen}
        # Benchmarks hold HTTP/2 connections for many requests (the default 1000 ends them,
        # and h2load does not reconnect).
        keepalive_requests 1000000;
        location / {{{fastcgi}{by_name}
            proxy_pass {scheme}://{target};{reuse}{upstream_tls}
            proxy_connect_timeout 2s;
            proxy_read_timeout 2s;
            proxy_send_timeout 2s;
        }}
    }}
}}
"#,
            // nginx names unix sockets "unix:/path", like the lab upstream's --listen.
            up = self.upstream_listen(),
            fastcgi = if self.speaks_fastcgi() {
                format!(
                    "\n            fastcgi_pass {};\n            fastcgi_param SCRIPT_FILENAME {}/www/app.php;\n            \
                     fastcgi_param REQUEST_METHOD $request_method;\n            fastcgi_connect_timeout 2s;\n            fastcgi_read_timeout 5s;\n        }}\n        location /unused {{",
                    // nginx names a unix socket "unix:/path".
                    if self.php_over_tcp { self.php_listen() } else { format!("unix:{}", self.php_listen()) },
                    self.dir.display()
                )
            } else {
                String::new()
            },
            second = if self.upstream_group {
                let zone = if self.upstream_zone { "\n        zone backend 64k;" } else { "" };
                format!("\n        server {};{zone}", self.second_server())
            } else {
                String::new()
            },
            workers = self.nginx_workers,
            // Resolved at request time (a variable in proxy_pass), by nginx's own resolver.
            by_name = if self.resolver.is_some() {
                format!(
                    "\n            resolver {} valid=1s ipv6=off;\n            resolver_timeout 2s;\n            set $upstream_name {UPSTREAM_NAME};",
                    self.up_ip
                )
            } else {
                String::new()
            },
            target = if self.resolver.is_some() { format!("$upstream_name:{UPSTREAM_PORT}") } else { "backend".to_string() },
            scheme = if self.gateway_speaks_tls() { "https" } else { "http" },
            upstream_tls = match self.upstream_tls.filter(|t| t.gateway_speaks_tls()) {
                Some(kind) => format!(
                    "\n            proxy_ssl_verify on;\n            proxy_ssl_trusted_certificate {};\n            \
                     proxy_ssl_name {UPSTREAM_TLS_NAME};\n            proxy_ssl_server_name on;{}",
                    self.upstream_ca().display(),
                    if kind == UpstreamTls::NoSharedVersion { "\n            proxy_ssl_protocols TLSv1.2;" } else { "" }
                ),
                None => String::new(),
            },
        );
        let path = self.dir.join("nginx.conf");
        std::fs::write(&path, conf)?;
        Ok((path, log))
    }

    /// The lab's rsyslogd in the gateway's namespace, configured as Debian's rsyslog is for
    /// HAProxy (a listening socket of its own, HAProxy's lines to their own file), plus a UDP
    /// input. Ready when its socket exists.
    fn start_syslog_daemon(&mut self) -> Result<()> {
        let d = self.dir.display();
        std::fs::create_dir_all(self.dir.join("dev"))?;
        std::fs::create_dir_all(self.dir.join("syslog"))?;
        let conf = format!(
            r#"global(workDirectory="{d}/syslog")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{d}/dev/log")
module(load="imudp")
input(type="imudp" address="127.0.0.1" port="{SYSLOG_UDP_PORT}")
:programname, startswith, "haproxy" {{
  {d}/syslog/haproxy.log
  stop
}}
"#
        );
        let path = self.dir.join("rsyslog.conf");
        std::fs::write(&path, conf)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.gw_ns, "rsyslogd", "-n", "-f"])
            .arg(&path)
            .arg("-i")
            .arg(self.dir.join("syslog/rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting rsyslogd (Debian package rsyslog)")?;
        self.syslog_daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.dir.join("dev/log").exists() {
            if Instant::now() > deadline {
                bail!("rsyslogd did not create {d}/dev/log within 5 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Kill the lab's rsyslogd: HAProxy's log lines then reach no process.
    pub fn stop_syslog_daemon(&mut self) {
        if let Some(mut child) = self.syslog_daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn haproxy_conf(&self) -> Result<(PathBuf, PathBuf)> {
        let log = match self.haproxy_log {
            HaproxyLog::Stdout => self.dir.join("haproxy.log"),
            HaproxyLog::SyslogUnix | HaproxyLog::SyslogUdp => self.dir.join("syslog/haproxy.log"),
        };
        // Debian's shape: chrooted, logging to /dev/log, which is the lab's <dir>/dev/log
        // inside the chroot. Not when its upstream is a unix socket (outside the chroot).
        let unix_upstream = self.unix_upstream || (self.speaks_fastcgi() && !self.php_over_tcp);
        let chroot = self.haproxy_log != HaproxyLog::Stdout && !unix_upstream;
        let log_target = match self.haproxy_log {
            HaproxyLog::Stdout => "stdout format raw".to_string(),
            HaproxyLog::SyslogUnix if chroot => "/dev/log".to_string(),
            HaproxyLog::SyslogUnix => format!("{}/dev/log", self.dir.display()),
            HaproxyLog::SyslogUdp => format!("127.0.0.1:{SYSLOG_UDP_PORT}"),
        };
        let mut chroot = if chroot { format!("\n    chroot {}", self.dir.display()) } else { String::new() };
        if let Some(user) = self.haproxy_user {
            chroot.push_str(&format!("\n    user {user}\n    group nogroup"));
        }
        let bind = if self.client.tls() {
            let (_, _, both) = self.certificate()?;
            format!("bind 127.0.0.1:{GATEWAY_PORT} ssl crt {} alpn h2,http/1.1", both.display())
        } else {
            format!("bind 127.0.0.1:{GATEWAY_PORT}")
        };
        // php-fpm or the lab's FastCGI server: HAProxy's own FastCGI application (2.1+).
        let fastcgi = self.speaks_fastcgi();
        // A name resolved at run time takes a `server-template` (the servers a DNS answer
        // fills, here one: `up1` as the plain line names it).
        let (server, one) = if self.resolver.is_some() { ("server-template", " 1") } else { ("server", "1") };
        let conf = format!(
            r#"global
    maxconn 1024
    log {log_target} local0 info{chroot}
defaults
    mode http
    log global
    option httplog
    timeout connect 2s
    timeout client 5s
    timeout server 2s
    retries 0
frontend fe
    {bind}
    default_backend be
backend be
    http-reuse safe{fcgi_app}
    {server} up{one} {up}{upstream_tls}{second}
{fcgi_section}{resolvers}"#,
            // The server's address from the lab's resolver, every second; none until it answers.
            resolvers = if self.resolver.is_some() {
                format!(
                    "resolvers lab\n    nameserver ns1 {}{}:53\n    resolve_retries 2\n    timeout resolve 1s\n    timeout retry 500ms\n    hold valid 1s\n    hold nx 1s\n    hold other 1s\n    hold refused 1s\n    hold timeout 1s\n",
                    if self.resolver.is_some_and(Resolver::over_tcp) { "tcp@" } else { "" },
                    self.up_ip
                )
            } else {
                String::new()
            },
            fcgi_app = if fastcgi { "\n    use-fcgi-app php" } else { "" },
            fcgi_section =
                if fastcgi { format!("fcgi-app php\n    docroot {}/www\n    index app.php\n", self.dir.display()) } else { String::new() },
            second = if fastcgi {
                " proto fcgi".to_string()
            } else if self.resolver.is_some() {
                " resolvers lab init-addr none".to_string()
            } else if self.upstream_group {
                format!(" check inter 300ms fall 1 rise 1\n    server up2 {} check inter 300ms fall 1 rise 1", self.second_server())
            } else {
                String::new()
            },
            upstream_tls = match self.upstream_tls.filter(|t| t.gateway_speaks_tls()) {
                Some(kind) => format!(
                    " ssl verify required ca-file {} sni str({UPSTREAM_TLS_NAME}) verifyhost {UPSTREAM_TLS_NAME}{}",
                    self.upstream_ca().display(),
                    if kind == UpstreamTls::NoSharedVersion { " ssl-max-ver TLSv1.2" } else { "" }
                ),
                None => String::new(),
            },
            // HAProxy takes a unix socket as its absolute path.
            up = if fastcgi {
                self.php_listen()
            } else if self.unix_upstream {
                self.unix_socket_path().display().to_string()
            } else if self.resolver.is_some() {
                format!("{UPSTREAM_NAME}:{UPSTREAM_PORT}")
            } else {
                self.gateways_upstream()
            },
        );
        let path = self.dir.join("haproxy.cfg");
        std::fs::write(&path, conf)?;
        Ok((path, log))
    }

    /// Caddy with the same timeouts as the others (connect 2 s, response head 2 s) and no
    /// retries (its default). HTTPS with the lab's certificate, served whatever the SNI (curl
    /// sends none for an IP address).
    fn caddy_conf(&self) -> Result<(PathBuf, PathBuf)> {
        let log = self.dir.join("caddy.log");
        let site = if self.client.tls() {
            let (cert, key, _) = self.certificate()?;
            format!("https://127.0.0.1:{GATEWAY_PORT} {{\n    tls {} {}", cert.display(), key.display())
        } else {
            format!("http://127.0.0.1:{GATEWAY_PORT} {{")
        };
        // Caddy names a unix upstream "unix//path".
        let up = if self.unix_upstream {
            format!("unix/{}", self.unix_socket_path().display())
        } else if self.resolver.is_some() {
            format!("{UPSTREAM_NAME}:{UPSTREAM_PORT}")
        } else {
            self.gateways_upstream()
        };
        let conf = format!(
            r#"{{
    admin off
    auto_https off
    default_sni localhost
    storage file_system {data}
}}
{site}
    reverse_proxy {up} {{
        transport http {{
            dial_timeout 2s
            response_header_timeout 2s{upstream_tls}{resolvers}
        }}
    }}
}}
"#,
            data = self.dir.join("caddy-data").display(),
            // Go's resolver, asked at each dial (no cache).
            resolvers = match self.resolver {
                // Caddy 2.6 takes a bare address for TCP (and port 0).
                Some(_) => format!("\n            resolvers udp/{}:53", self.up_ip),
                None => String::new(),
            },
            upstream_tls = match self.upstream_tls.filter(|t| t.gateway_speaks_tls()) {
                Some(_) => format!(
                    "\n            tls\n            tls_trusted_ca_certs {}\n            tls_server_name {UPSTREAM_TLS_NAME}",
                    self.upstream_ca().display()
                ),
                None => String::new(),
            },
        );
        let path = self.dir.join("Caddyfile");
        std::fs::write(&path, conf)?;
        Ok((path, log))
    }

    pub fn stop_gateway(&mut self) {
        if let Some(mut gw) = self.gateway.take() {
            unsafe { libc::kill(gw.pid as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = gw.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = gw.child.kill();
            let _ = gw.child.wait();
        }
    }

    /// One HTTP request from a client inside the gateway namespace, speaking `self.client`.
    /// Returns the status (0 when no valid status line came back) and curl's exit code.
    /// A request in the background (curl, 12 s at most), for faults that need the upstream
    /// busy; the caller kills it when done.
    pub fn background_request(&self, path: &str) -> Result<Child> {
        let (protocol, scheme) = self.client.curl_args();
        Command::new("ip")
            .args(["netns", "exec", &self.gw_ns, "curl", "-s"])
            .args(protocol)
            .args(["-o", "/dev/null", "--max-time", "12"])
            .arg(format!("{scheme}://127.0.0.1:{GATEWAY_PORT}{path}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("running curl")
    }

    pub fn request(&self, path: &str) -> Result<(u16, i32)> {
        let (protocol, scheme) = self.client.curl_args();
        let out = Command::new("ip")
            .args(["netns", "exec", &self.gw_ns, "curl"])
            .args(protocol)
            .args(["-o", "/dev/null", "--max-time", "10", "-w", "%{http_code}"])
            .arg(format!("{scheme}://127.0.0.1:{GATEWAY_PORT}{path}"))
            .output()
            .context("running curl")?;
        let status = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
        Ok((status, out.status.code().unwrap_or(-1)))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_gateway();
        self.kill_php();
        self.stop_upstream();
        for mut child in [self.resolver_process.take(), self.syslog_daemon.take()].into_iter().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = sh(&["ip", "netns", "del", &self.gw_ns]);
        let _ = sh(&["ip", "netns", "del", &self.up_ns]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
