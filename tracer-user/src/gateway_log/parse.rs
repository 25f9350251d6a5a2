//! Reading one gateway log line: nginx's error log, HAProxy's `option httplog` line (raw or
//! behind a syslog header), Caddy's JSON log. A line in any other shape (a custom
//! `log_format`, an access log, a JSON layout of nginx's) is `None`: counted, never guessed at.
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// Which gateway wrote the log, hence how its lines read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dialect {
    NginxError,
    HaproxyHttp,
    CaddyJson,
}

impl Dialect {
    /// The dialect of a gateway by its process name (those whose logs upstrace reads).
    pub fn of_comm(comm: &str) -> Option<Dialect> {
        match comm {
            "nginx" => Some(Dialect::NginxError),
            "haproxy" => Some(Dialect::HaproxyHttp),
            "caddy" => Some(Dialect::CaddyJson),
            _ => None,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Dialect::NginxError => "nginx error log",
            Dialect::HaproxyHttp => "HAProxy httplog lines",
            Dialect::CaddyJson => "Caddy JSON log",
        }
    }

    /// Whether a line is of this gateway's log at all (any level, any status, its own notices):
    /// how a file among its open files is told to be its log.
    pub fn looks_like(self, line: &str) -> bool {
        match self {
            Dialect::NginxError => {
                let b = line.as_bytes();
                b.len() > 24
                    && b[4] == b'/'
                    && b[7] == b'/'
                    && b[10] == b' '
                    && b[13] == b':'
                    && b[16] == b':'
                    && line[..4].bytes().all(|c| c.is_ascii_digit())
                    && line.get(19..).is_some_and(|rest| {
                        rest.starts_with(" [")
                            && rest
                                .split_once("] ")
                                .is_some_and(|(_, r)| r.split_once('#').is_some_and(|(pid, _)| num::<u32>(pid).is_some()))
                    })
            }
            // Its request lines and connection errors (`127.0.0.1:47604 [28/Nov/2026:...] fe/1:
            // Connection closed during SSL handshake`) start with the client and the date.
            Dialect::HaproxyHttp => {
                let (_, line) = behind_syslog_header(line);
                let mut words = line.split_ascii_whitespace();
                (words.next().is_some_and(|w| w.parse::<SocketAddr>().is_ok()) && words.next().is_some_and(|w| w.starts_with('[')))
                    || ["[NOTICE]", "[WARNING]", "[ALERT]"].iter().any(|tag| line.starts_with(tag))
            }
            Dialect::CaddyJson => line.starts_with('{') && line.contains("\"level\":") && line.contains("\"ts\":"),
        }
    }

    /// Read one line (without its newline); `utc_offset_s` turns the local times nginx and
    /// HAProxy write into Unix time.
    pub fn parse(self, line: &str, utc_offset_s: i64) -> Option<LogLine> {
        match self {
            Dialect::NginxError => nginx_error(line, utc_offset_s),
            Dialect::HaproxyHttp => haproxy_http(line, utc_offset_s),
            Dialect::CaddyJson => caddy_json(line),
        }
    }
}

/// What the gateway's words say went wrong with the upstream, as far as they say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Claim {
    /// "Connection refused" (ECONNREFUSED).
    Refused,
    /// "Connection reset by peer".
    Reset,
    /// nginx "upstream prematurely closed connection", Go's EOF.
    ClosedEarly,
    /// The upstream aborted (HAProxy `SH`/`SD`/`SL`: reset or close, it does not say which).
    ServerAborted,
    /// The connect failed (HAProxy `SC`: refused or another connect error).
    ConnectFailed,
    /// Timed out while connecting.
    ConnectTimeout,
    /// Timed out waiting for the response (head or body).
    ReadTimeout,
    /// nginx "upstream sent too big header".
    HeadTooLarge,
    /// The response was not valid HTTP (nginx "upstream sent invalid header", HAProxy `PH`,
    /// which also covers a head too large for its buffer).
    InvalidResponse,
    /// EHOSTUNREACH.
    Unreachable,
    /// ENETUNREACH, or EINVAL from a blackhole route.
    NoRoute,
    /// EACCES/EPERM.
    PermissionDenied,
    /// ENOENT on a unix socket.
    NoSocketFile,
    /// EAGAIN on a unix socket.
    Overloaded,
    /// EADDRNOTAVAIL, EMFILE.
    LocalResources,
    /// nginx "no live upstreams", HAProxy `<NOSRV>`, Caddy "no upstreams available": no
    /// server was tried.
    NoLiveUpstream,
    /// The TLS handshake with the upstream failed (nginx "SSL certificate verify error",
    /// "SSL_do_handshake() failed"; Go's "tls: ..." and "x509: ...", "server gave HTTP response
    /// to HTTPS client").
    TlsHandshake,
    /// The upstream's name did not resolve (nginx "could not be resolved", Go's "lookup NAME
    /// on RESOLVER: ...").
    NotResolved,
}

impl Claim {
    /// In words, for summaries.
    pub fn words(self) -> &'static str {
        match self {
            Claim::Refused => "connection refused",
            Claim::Reset => "connection reset",
            Claim::ClosedEarly => "upstream closed the connection early",
            Claim::ServerAborted => "the server aborted",
            Claim::ConnectFailed => "connect failed",
            Claim::ConnectTimeout => "connect timed out",
            Claim::ReadTimeout => "upstream timed out",
            Claim::HeadTooLarge => "upstream sent too big header",
            Claim::InvalidResponse => "invalid response",
            Claim::Unreachable => "host unreachable",
            Claim::NoRoute => "no route",
            Claim::PermissionDenied => "permission denied",
            Claim::NoSocketFile => "no such socket file",
            Claim::Overloaded => "resource temporarily unavailable",
            Claim::LocalResources => "local resources exhausted",
            Claim::NoLiveUpstream => "no live upstream",
            Claim::TlsHandshake => "TLS handshake with the upstream failed",
            Claim::NotResolved => "the upstream's name could not be resolved",
        }
    }
}

/// One line the gateway wrote about a request, with what it can be matched by.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogLine {
    /// Unix time in ms of the line (nginx: when it logged, to the second; HAProxy: when the
    /// request was accepted, to the ms; Caddy: when it logged).
    pub unix_ms: i64,
    /// The process that wrote it, when the line says (nginx's `pid#tid`, a syslog `[pid]`).
    pub pid: Option<u32>,
    pub client_ip: Option<IpAddr>,
    pub client_port: Option<u16>,
    /// The upstream it names as `ip:port` or `unix:/path` (a group name is not kept: it
    /// cannot be compared with what the kernel saw).
    pub upstream: Option<String>,
    pub status: Option<u16>,
    pub claim: Option<Claim>,
    /// The words kept for the verdict: bounded, control characters escaped, query strings
    /// masked.
    pub text: String,
}

/// Longest line text kept in a verdict.
pub const MAX_KEPT: usize = 600;

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A local civil time as a log writes it.
#[derive(Clone, Copy)]
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    milli: u32,
}

impl Civil {
    /// Unix ms, with the local zone's offset from UTC.
    fn unix_ms(&self, utc_offset_s: i64) -> Option<i64> {
        let Civil { year, month, day, hour, minute, second, milli } = *self;
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 || milli > 999 {
            return None;
        }
        let secs = days_from_civil(year, month, day) * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - utc_offset_s;
        Some(secs * 1000 + i64::from(milli))
    }
}

fn num<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Escape control characters, mask query strings (they may hold tokens), and bound the text.
pub fn keep(text: &str) -> String {
    // Most lines have nothing to escape or mask: copied whole (each line of a storm's log
    // passes here). 0xC2 leads the C1 controls U+0080..U+009F.
    if text.len() <= MAX_KEPT && !text.bytes().any(|b| b < 0x20 || b == 0x7f || b == 0xc2 || b == b'?') {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len().min(MAX_KEPT));
    let mut in_query = false;
    for c in text.chars() {
        if out.len() >= MAX_KEPT {
            out.push_str("...");
            break;
        }
        if in_query {
            // A query ends where the request line or the quoted value does.
            if c == ' ' || c == '"' {
                in_query = false;
            } else {
                continue;
            }
        }
        match c {
            '?' => {
                out.push_str("?*");
                in_query = true;
            }
            c if c.is_control() => out.push_str(&c.escape_default().to_string()),
            c => out.push(c),
        }
    }
    out
}

/// `http://10.1.0.2:8080/x`, `http://[::1]:80/`, `http://unix:/run/a.sock:/`,
/// `fastcgi://unix:/run/php.sock:` -> `10.1.0.2:8080`, `[::1]:80`, `unix:/run/a.sock`; a group
/// name (`http://backend/`) is no address: None.
fn upstream_of_url(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    if let Some(path) = rest.strip_prefix("unix:") {
        // nginx sometimes leaves out the colon before the URI (`unix:/run/a.sock/` in a read
        // timeout's line): a socket path does not end with a slash.
        let path = path.split(':').next().unwrap_or("").trim_end_matches('/');
        return path.starts_with('/').then(|| format!("unix:{path}"));
    }
    let authority = rest.split('/').next().unwrap_or("");
    authority.parse::<SocketAddr>().ok().map(|a| a.to_string())
}

/// The value of `, name: ` in an nginx error line: quoted (`"..."`) or up to the next `, `.
fn nginx_field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(", {name}: ");
    let at = line.find(&key)? + key.len();
    let rest = &line[at..];
    if let Some(quoted) = rest.strip_prefix('"') {
        return quoted.find('"').map(|end| &quoted[..end]);
    }
    Some(rest.split(", ").next().unwrap_or(rest))
}

/// `2026/11/28 16:50:08 [error] 1234#1234: *5 connect() failed (111: Connection refused) while
/// connecting to upstream, client: 10.0.0.1, server: _, request: "GET / HTTP/1.1", upstream:
/// "http://10.1.0.2:8080/", host: "..."`
fn nginx_error(line: &str, utc_offset_s: i64) -> Option<LogLine> {
    let date = line.get(..19)?;
    let b = date.as_bytes();
    if b[4] != b'/' || b[7] != b'/' || b[10] != b' ' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let unix_ms = Civil {
        year: num(&date[..4])?,
        month: num(&date[5..7])?,
        day: num(&date[8..10])?,
        hour: num(&date[11..13])?,
        minute: num(&date[14..16])?,
        second: num(&date[17..19])?,
        milli: 0,
    }
    .unix_ms(utc_offset_s)?;
    let rest = line.get(19..)?.strip_prefix(" [")?;
    let (level, rest) = rest.split_once("] ")?;
    if !matches!(level, "warn" | "error" | "crit" | "alert" | "emerg") {
        return None;
    }
    let (pid_tid, rest) = rest.split_once(": ")?;
    let (pid, tid) = pid_tid.split_once('#')?;
    let (pid, _tid): (u32, u64) = (num(pid)?, num(tid)?);
    // The connection number, when the line is about a connection.
    let message = match rest.strip_prefix('*') {
        Some(r) => r.split_once(' ').and_then(|(n, m)| num::<u64>(n).map(|_| m))?,
        None => rest,
    };
    let message = message.split(", client: ").next().unwrap_or(message);
    let client_ip = nginx_field(line, "client").and_then(|c| c.parse::<IpAddr>().ok());
    let upstream = nginx_field(line, "upstream").and_then(upstream_of_url);
    Some(LogLine {
        unix_ms,
        pid: Some(pid),
        client_ip,
        client_port: None,
        upstream,
        status: None,
        claim: nginx_claim(message),
        text: keep(line),
    })
}

/// What nginx's message says (its own wording, and the errno it quotes).
fn nginx_claim(message: &str) -> Option<Claim> {
    // The application's own words (PHP's errors), which may say anything.
    if message.starts_with("FastCGI sent in stderr") {
        return None;
    }
    let has = |s: &str| message.contains(s);
    Some(if has("could not be resolved") || has("while resolving") {
        Claim::NotResolved
    } else if has("upstream timed out") || has("(110: ") {
        if has("while connecting to upstream") { Claim::ConnectTimeout } else { Claim::ReadTimeout }
    } else if has("SSL certificate verify error") || has("SSL_do_handshake() failed") || has("while SSL handshaking to upstream") {
        Claim::TlsHandshake
    } else if has("too big header") {
        Claim::HeadTooLarge
    } else if has("upstream sent invalid")
        || has("upstream sent no valid")
        || has("upstream sent unexpected")
        || has("upstream sent duplicate")
    {
        Claim::InvalidResponse
    } else if has("prematurely closed") {
        Claim::ClosedEarly
    } else if has("no live upstreams") {
        Claim::NoLiveUpstream
    } else if has("(111: ") {
        Claim::Refused
    } else if has("(104: ") {
        Claim::Reset
    } else if has("(113: ") {
        Claim::Unreachable
    } else if has("(101: ") || (has("connect() ") && has("(22: ")) {
        Claim::NoRoute
    } else if has("(13: ") || has("(1: Operation not permitted)") {
        Claim::PermissionDenied
    } else if has("(2: No such file") {
        Claim::NoSocketFile
    } else if has("(11: ") {
        Claim::Overloaded
    } else if has("(99: ") || has("(24: ") || has("(23: ") {
        Claim::LocalResources
    } else {
        return None;
    })
}

const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// `[28/Nov/2026:16:53:46.571]` -> Unix ms.
fn haproxy_date(field: &str, utc_offset_s: i64) -> Option<i64> {
    let inner = field.strip_prefix('[')?.strip_suffix(']')?;
    let (day, rest) = inner.split_once('/')?;
    let (month, rest) = rest.split_once('/')?;
    let (year, rest) = rest.split_once(':')?;
    let mut hms = rest.splitn(3, ':');
    let (h, m, s) = (hms.next()?, hms.next()?, hms.next()?);
    let (s, ms) = s.split_once('.').unwrap_or((s, "0"));
    let mo = MONTHS.iter().position(|&x| x == month)? as u32 + 1;
    Civil { year: num(year)?, month: mo, day: num(day)?, hour: num(h)?, minute: num(m)?, second: num(s)?, milli: num(ms)? }
        .unix_ms(utc_offset_s)
}

/// HAProxy's `option httplog` line, raw (`log ... format raw`) or after a syslog header that
/// names the pid (`<134>Nov 28 16:53:46 haproxy[123]: ...`, `... haproxy 123 - - ...`):
/// `127.0.0.1:45420 [28/Nov/2026:16:53:46.571] fe be/up1 0/0/-1/-1/0 503 217 - - SC--
/// 1/1/0/0/0 0/0 "GET / HTTP/1.1"`.
fn haproxy_http(line: &str, utc_offset_s: i64) -> Option<LogLine> {
    let (pid, body) = behind_syslog_header(line);
    let tokens: Vec<&str> = body.split_ascii_whitespace().take(12).collect();
    if tokens.len() < 11 {
        return None;
    }
    let client: SocketAddr = tokens[0].parse().ok()?;
    let unix_ms = haproxy_date(tokens[1], utc_offset_s)?;
    let (_backend, server) = tokens[3].split_once('/')?;
    if tokens[4].split('/').count() != 5 {
        return None;
    }
    let status: u16 = num(tokens[5])?;
    let state = tokens[9];
    if state.len() != 4 || !state.is_ascii() {
        return None;
    }
    let claim = if server == "<NOSRV>" {
        Some(Claim::NoLiveUpstream)
    } else {
        match &state[..2] {
            "SC" => Some(Claim::ConnectFailed),
            "sC" => Some(Claim::ConnectTimeout),
            "SH" | "SD" | "SL" => Some(Claim::ServerAborted),
            "sH" | "sD" => Some(Claim::ReadTimeout),
            "PH" => Some(Claim::InvalidResponse),
            _ => None,
        }
    };
    Some(LogLine {
        unix_ms,
        pid,
        client_ip: Some(client.ip()),
        client_port: Some(client.port()),
        upstream: None,
        status: (100..600).contains(&status).then_some(status),
        claim,
        text: keep(body),
    })
}

fn starts_with_address(line: &str) -> bool {
    line.split_ascii_whitespace().next().is_some_and(|w| w.parse::<SocketAddr>().is_ok())
}

/// A line's message behind the syslog header a sender or a syslog daemon put before it, and
/// the pid that header names: what HAProxy sends (`<134>Nov 28 16:53:46 haproxy[123]: `),
/// and what rsyslog writes to a file, traditional (`Nov 28 16:53:46 host haproxy[123]: `) or
/// Debian's default (`2026-11-28T16:53:46.571234+00:00 host haproxy[123]: `). A line that
/// starts with the client's address is HAProxy's raw format, kept whole.
pub fn behind_syslog_header(line: &str) -> (Option<u32>, &str) {
    match syslog_header(line) {
        Some((_, pid, body)) => (Some(pid), body),
        None => (None, line),
    }
}

/// The program name a syslog header gives its line (`haproxy` in `... haproxy[123]: `).
pub fn syslog_tag(line: &str) -> Option<&str> {
    syslog_header(line).map(|(tag, _, _)| tag)
}

/// (tag, pid, message) of a line behind a syslog header.
fn syslog_header(line: &str) -> Option<(&str, u32, &str)> {
    if starts_with_address(line) || line.starts_with('[') {
        return None;
    }
    let at = line.find("]: ")?;
    let open = line[..at].rfind('[')?;
    // The tag is one word right before the pid: `haproxy[123]`.
    if line[..open].ends_with(' ') || line[open + 1..at].contains(' ') {
        return None;
    }
    let tag = line[..open].rsplit([' ', '>']).next().filter(|t| !t.is_empty())?;
    Some((tag, num::<u32>(&line[open + 1..at])?, &line[at + 3..]))
}

/// HAProxy's termination state in a kept line (`SC--`), for outputs that name it.
pub fn haproxy_state(text: &str) -> Option<&str> {
    text.split_ascii_whitespace().nth(9).filter(|s| s.len() == 4)
}

/// HAProxy's `backend/server` in a kept line (`be/up1`; `<NOSRV>` is none).
pub fn haproxy_server(text: &str) -> Option<&str> {
    text.split_ascii_whitespace().nth(3).filter(|s| s.contains('/') && !s.ends_with("/<NOSRV>"))
}

#[derive(Deserialize)]
struct CaddyRequest {
    remote_ip: Option<String>,
    remote_port: Option<String>,
    method: Option<String>,
    uri: Option<String>,
}

#[derive(Deserialize)]
struct CaddyEntry {
    level: String,
    ts: f64,
    logger: Option<String>,
    msg: Option<String>,
    error: Option<String>,
    status: Option<u16>,
    upstream: Option<String>,
    request: Option<CaddyRequest>,
}

/// Caddy's JSON log (its default on stderr, or a `log` file): the `error` entries of the
/// server (`http.log.error`) and of the reverse_proxy handler, with the request's remote
/// address. The kept text is `level logger: msg: error (status)`, not the whole entry (which
/// holds request headers).
fn caddy_json(line: &str) -> Option<LogLine> {
    if !line.starts_with('{') {
        return None;
    }
    let entry: CaddyEntry = serde_json::from_str(line).ok()?;
    if entry.level != "error" || !entry.ts.is_finite() {
        return None;
    }
    let logger = entry.logger.unwrap_or_default();
    if !logger.starts_with("http") {
        return None;
    }
    let request = entry.request?;
    let client_ip = request.remote_ip.as_deref().and_then(|ip| ip.parse().ok());
    let client_port = request.remote_port.as_deref().and_then(num);
    let msg = entry.msg.unwrap_or_default();
    let error = entry.error.unwrap_or_default();
    let words = if error.is_empty() || msg.contains(&error) { msg.clone() } else { format!("{msg}: {error}") };
    let claim = caddy_claim(&words);
    let mut text = format!("error {logger}: {words}");
    if let Some(s) = entry.status {
        text.push_str(&format!(" (status {s})"));
    }
    if let (Some(m), Some(u)) = (request.method, request.uri) {
        text.push_str(&format!(" \"{m} {u}\""));
    }
    Some(LogLine {
        unix_ms: (entry.ts * 1000.0) as i64,
        pid: None,
        client_ip,
        client_port,
        upstream: entry.upstream.as_deref().and_then(|u| u.parse::<SocketAddr>().ok()).map(|a| a.to_string()),
        status: entry.status,
        claim,
        text: keep(&text),
    })
}

/// What Go's error text says.
fn caddy_claim(words: &str) -> Option<Claim> {
    let has = |s: &str| words.contains(s);
    // The resolver's failures come first: their words quote the read's error too.
    Some(if has("lookup ") {
        Claim::NotResolved
    } else if has("tls: ") || has("x509: ") || has("server gave HTTP response to HTTPS client") {
        Claim::TlsHandshake
    } else if has("connection refused") {
        Claim::Refused
    } else if has("connection reset by peer") {
        Claim::Reset
    } else if has("no upstreams available") {
        Claim::NoLiveUpstream
    } else if has("dial ") && (has("i/o timeout") || has("timeout")) {
        Claim::ConnectTimeout
    } else if has("timeout awaiting response headers") || has("i/o timeout") || has("deadline exceeded") {
        Claim::ReadTimeout
    } else if has("malformed HTTP") || has("invalid header") {
        Claim::InvalidResponse
    } else if has("EOF") {
        Claim::ClosedEarly
    } else if has("no route to host") {
        Claim::Unreachable
    } else if has("network is unreachable") {
        Claim::NoRoute
    } else if has("permission denied") {
        Claim::PermissionDenied
    } else if has("no such file or directory") {
        Claim::NoSocketFile
    } else {
        return None;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFUSED: &str = r#"2026/11/28 16:53:43 [error] 12339#12339: *2 connect() failed (111: Connection refused) while connecting to upstream, client: 127.0.0.1, server: , request: "GET /a?token=secret HTTP/1.1", upstream: "http://10.107.0.2:8081/a?token=secret", host: "127.0.0.1:8080""#;

    #[test]
    fn reads_an_nginx_error_line() {
        let l = Dialect::NginxError.parse(REFUSED, 0).unwrap();
        assert_eq!(l.pid, Some(12339));
        assert_eq!(l.client_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(l.upstream.as_deref(), Some("10.107.0.2:8081"));
        assert_eq!(l.claim, Some(Claim::Refused));
        assert_eq!(l.unix_ms, Civil { year: 2026, month: 11, day: 28, hour: 16, minute: 53, second: 43, milli: 0 }.unix_ms(0).unwrap());
        assert!(!l.text.contains("secret"), "query strings are masked: {}", l.text);
        // Local time: one hour east of UTC is an hour earlier in Unix time.
        assert_eq!(Dialect::NginxError.parse(REFUSED, 3600).unwrap().unix_ms, l.unix_ms - 3_600_000);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn nginx_words_name_their_cause() {
        let line = |msg: &str| {
            format!(
                "2026/11/28 16:53:43 [error] 7#7: *9 {msg}, client: 10.0.0.1, server: _, request: \"GET / HTTP/1.1\", upstream: \"http://unix:/run/a.sock:/\", host: \"x\""
            )
        };
        let claim = |msg: &str| Dialect::NginxError.parse(&line(msg), 0).and_then(|l| l.claim);
        assert_eq!(claim("upstream sent too big header while reading response header from upstream"), Some(Claim::HeadTooLarge));
        assert_eq!(claim("app.lab could not be resolved (110: Operation timed out)"), Some(Claim::NotResolved));
        assert_eq!(claim("recv() failed (111: Connection refused) while resolving, resolver: 10.0.0.2:53"), Some(Claim::NotResolved));
        assert_eq!(
            claim("upstream SSL certificate verify error: (18:self-signed certificate) while SSL handshaking to upstream"),
            Some(Claim::TlsHandshake)
        );
        assert_eq!(
            claim("upstream timed out (110: Connection timed out) while reading response header from upstream"),
            Some(Claim::ReadTimeout)
        );
        assert_eq!(claim("upstream timed out (110: Connection timed out) while connecting to upstream"), Some(Claim::ConnectTimeout));
        assert_eq!(claim("recv() failed (104: Connection reset by peer) while reading response header from upstream"), Some(Claim::Reset));
        assert_eq!(claim("upstream prematurely closed connection while reading response header from upstream"), Some(Claim::ClosedEarly));
        assert_eq!(
            claim("upstream sent invalid header: \"X\\x01\" while reading response header from upstream"),
            Some(Claim::InvalidResponse)
        );
        assert_eq!(
            claim("connect() to unix:/run/a.sock failed (2: No such file or directory) while connecting to upstream"),
            Some(Claim::NoSocketFile)
        );
        assert_eq!(claim("no live upstreams while connecting to upstream"), Some(Claim::NoLiveUpstream));
        assert_eq!(claim("something new"), None);
        assert_eq!(
            claim(
                "FastCGI sent in stderr: \"PHP message: upstream timed out (111: Connection refused)\" while reading response header from upstream"
            ),
            None,
            "the application's words"
        );
        assert_eq!(Dialect::NginxError.parse(&line("x"), 0).unwrap().upstream.as_deref(), Some("unix:/run/a.sock"));
        assert_eq!(upstream_of_url("http://backend/"), None, "a group name is no address");
        assert_eq!(upstream_of_url("http://[::1]:8080/"), Some("[::1]:8080".into()));
        assert_eq!(upstream_of_url("http://unix:/run/a.sock/"), Some("unix:/run/a.sock".into()), "no colon before the URI");
    }

    #[test]
    fn bad_nginx_lines_are_not_read() {
        for bad in [
            "",
            "2026/11/28",
            &REFUSED[..40],
            "2026/11/28 16:53:43 [notice] 1#1: signal process started",
            "2026/13/28 16:53:43 [error] 1#1: *1 x, client: 1.2.3.4",
            "2026/11/28 16:53:43 [error] x#1: *1 x",
            // An access log line and a JSON log_format.
            r#"127.0.0.1 - - [28/Nov/2026:16:53:43 +0000] "GET / HTTP/1.1" 502 157 "-" "curl/7.88.1""#,
            r#"{"time":"2026-11-28T16:53:43+00:00","status":502,"upstream":"10.0.0.2:8081"}"#,
            "\u{0}\u{1}garbage\u{ff}",
        ] {
            assert_eq!(Dialect::NginxError.parse(bad, 0), None, "{bad:?}");
        }
        // A line cut short after its head still reads (the words it has), without the fields
        // it lost.
        let cut = Dialect::NginxError.parse(&REFUSED[..120], 0).unwrap();
        assert_eq!((cut.client_ip, cut.upstream), (None, None));
    }

    #[test]
    fn reads_haproxy_lines_raw_and_behind_syslog() {
        let raw = r#"127.0.0.1:45420 [28/Nov/2026:16:53:46.571] fe be/up1 0/0/-1/-1/0 503 217 - - SC-- 1/1/0/0/0 0/0 "GET /?q=1 HTTP/1.1""#;
        let l = Dialect::HaproxyHttp.parse(raw, 0).unwrap();
        assert_eq!((l.client_port, l.status, l.claim, l.pid), (Some(45420), Some(503), Some(Claim::ConnectFailed), None));
        assert_eq!(l.unix_ms, Civil { year: 2026, month: 11, day: 28, hour: 16, minute: 53, second: 46, milli: 571 }.unix_ms(0).unwrap());
        assert_eq!(haproxy_state(&l.text), Some("SC--"));
        let syslog = format!("<134>Nov 28 16:53:46 haproxy[4242]: {}", raw.replace("SC--", "SH--"));
        let l = Dialect::HaproxyHttp.parse(&syslog, 0).unwrap();
        assert_eq!((l.pid, l.claim), (Some(4242), Some(Claim::ServerAborted)));
        // As rsyslog writes them to a file: Debian's default format, and the traditional one.
        for header in ["2026-11-28T16:53:46.571234+00:00 gw1 haproxy[4243]: ", "Nov 28 16:53:46 gw1 haproxy[4243]: "] {
            let line = format!("{header}{raw}");
            assert!(Dialect::HaproxyHttp.looks_like(&line), "{line}");
            let l = Dialect::HaproxyHttp.parse(&line, 0).unwrap();
            assert_eq!((l.pid, l.status, l.client_port), (Some(4243), Some(503), Some(45420)), "{line}");
        }
        assert_eq!(syslog_tag("Nov 28 16:53:46 gw1 haproxy[4243]: x"), Some("haproxy"));
        assert_eq!(syslog_tag("<134>Nov 28 16:53:46 haproxy[4242]: x"), Some("haproxy"));
        assert_eq!(syslog_tag(raw), None);
        // Another program's line in the same file is none of HAProxy's.
        let other = "2026-11-28T16:53:46.571234+00:00 gw1 sshd[77]: Accepted publickey for root from 10.0.0.9 port 5 ssh2";
        assert!(!Dialect::HaproxyHttp.looks_like(other));
        assert_eq!(Dialect::HaproxyHttp.parse(other, 0), None);
        assert!(Dialect::HaproxyHttp.looks_like("127.0.0.1:47604 [28/Nov/2026:17:20:26.597] fe/1: Connection closed during SSL handshake"));
        assert!(!Dialect::HaproxyHttp.looks_like("GET / HTTP/1.1"));
        let nosrv = raw.replace("be/up1", "be/<NOSRV>");
        assert_eq!(Dialect::HaproxyHttp.parse(&nosrv, 0).unwrap().claim, Some(Claim::NoLiveUpstream));
        for bad in [
            "[NOTICE]   (1) : haproxy version is 2.6.12",
            &raw[..60],
            "127.0.0.1:1 [28/Nov/2026:16:53:46.571] fe be/up1 0/0 503 217 - - SC-- 1/1/0/0/0 0/0 \"GET /\"",
            "127.0.0.1:45420 [28/Foo/2026:16:53:46.571] fe be/up1 0/0/-1/-1/0 503 217 - - SC-- 1/1/0/0/0 0/0 \"x\"",
        ] {
            assert_eq!(Dialect::HaproxyHttp.parse(bad, 0), None, "{bad:?}");
        }
    }

    #[test]
    fn reads_caddy_json_error_entries() {
        let line = r#"{"level":"error","ts":1795884826.5,"logger":"http.log.error","msg":"dial tcp 10.0.0.2:8081: connect: connection refused","request":{"remote_ip":"127.0.0.1","remote_port":"5000","client_ip":"127.0.0.1","proto":"HTTP/2.0","method":"GET","host":"x","uri":"/?k=v","headers":{"Authorization":["secret"]}},"duration":0.001,"status":502,"err_id":"x","err_trace":"reverseproxy.statusError (reverseproxy.go:1269)"}"#;
        let l = Dialect::CaddyJson.parse(line, 0).unwrap();
        assert_eq!((l.client_port, l.status, l.claim, l.unix_ms), (Some(5000), Some(502), Some(Claim::Refused), 1_795_884_826_500));
        assert!(!l.text.contains("secret") && !l.text.contains("k=v"), "{}", l.text);
        // Go's resolver errors quote the read's error too: the lookup is what failed.
        for words in [
            "dial tcp: lookup app.lab on 10.0.0.2:53: no such host",
            "dial tcp: lookup app.lab on 10.0.0.2:53: read udp 10.0.0.1:4000->10.0.0.2:53: read: connection refused",
            "dial tcp: lookup app.lab: i/o timeout",
        ] {
            assert_eq!(caddy_claim(words), Some(Claim::NotResolved), "{words}");
        }
        for bad in [
            r#"{"level":"info","ts":1.0,"logger":"http","msg":"x","request":{}}"#,
            r#"{"level":"error","ts":"2026-11-28","logger":"http.log.error","msg":"x","request":{}}"#,
            r#"{"level":"error","ts":1.0,"logger":"tls","msg":"x"}"#,
            r#"{"level":"error","ts":1.0,"logger":"http.log.error","msg":"x","req"#,
            "not json",
        ] {
            assert_eq!(Dialect::CaddyJson.parse(bad, 0), None, "{bad:?}");
        }
    }

    /// Every cut of every sample line, and the samples with a multibyte character or a control
    /// byte put at every position: no panic, and no cut line reads as another request's.
    #[test]
    fn no_line_makes_a_parser_panic() {
        let haproxy = r#"127.0.0.1:45420 [28/Nov/2026:16:53:46.571] fe be/up1 0/0/-1/-1/0 503 217 - - SC-- 1/1/0/0/0 0/0 "GET / HTTP/1.1""#;
        let caddy = r#"{"level":"error","ts":1795884826.5,"logger":"http.log.error","msg":"dial tcp 10.0.0.2:8081: connect: connection refused","request":{"remote_ip":"127.0.0.1","remote_port":"5000","method":"GET","uri":"/"},"status":502}"#;
        let dialects = [Dialect::NginxError, Dialect::HaproxyHttp, Dialect::CaddyJson];
        for sample in [REFUSED, haproxy, caddy] {
            let mut variants: Vec<String> =
                (0..=sample.len()).filter(|&i| sample.is_char_boundary(i)).map(|i| sample[..i].to_owned()).collect();
            for i in (0..=sample.len()).filter(|&i| sample.is_char_boundary(i)) {
                for odd in ["é", "€", "\u{10348}", "\u{0}", "\n"] {
                    variants.push(format!("{}{odd}{}", &sample[..i], &sample[i..]));
                }
            }
            for line in &variants {
                for d in dialects {
                    let _ = d.looks_like(line);
                    if let Some(l) = d.parse(line, 0) {
                        assert!(l.text.len() <= MAX_KEPT + 3, "bounded");
                    }
                }
            }
        }
    }

    #[test]
    fn kept_text_is_bounded_and_escaped() {
        let long = format!("a\u{1b}[31m{}", "x".repeat(5000));
        let kept = keep(&long);
        assert!(kept.len() <= MAX_KEPT + 3 + 8 && !kept.contains('\u{1b}'), "{}", kept.len());
        // Plain lines are kept as they are; a C1 control and a query string are not.
        let plain = "2026/11/28 16:50:08 [error] 12#12: *5 no live upstreams, client: 10.0.0.1, request: \"GET /é HTTP/1.1\"";
        assert_eq!(keep(plain), plain);
        assert_eq!(keep("a\u{85}b GET /x?token=1 HTTP"), "a\\u{85}b GET /x?* HTTP");
    }
}
