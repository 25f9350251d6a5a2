//! `--otlp-endpoint URL`: every verdict as an OpenTelemetry log record, sent as OTLP/HTTP
//! protobuf (`POST <URL>/v1/logs`) to a collector. Encoded with the official protobuf
//! definitions (`opentelemetry-proto`).
//!
//! Tracing never waits for the collector: verdicts go into a bounded queue (`try_send`), and a
//! thread of its own batches them (up to `BATCH` records or `LINGER`), posts each batch, and
//! retries a failed post with backoff. A queue that is full drops the new record; a batch that
//! still fails after its retries is dropped. Both are counted and shown in the stats line
//! (`otlp` in JSON). Only `http://` endpoints: the collector is expected on the host or a
//! trusted network (a local OpenTelemetry Collector agent forwards with TLS if needed).
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
    },
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use opentelemetry_proto::tonic::{
    collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse},
    common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value::Value},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber},
    resource::v1::Resource,
};
use prost::Message as _;

use crate::{
    clock,
    engine::verdict::{Class, Delivered, Protocol, Verdict},
    health::{OtlpStats, Stats},
    output::Output,
};

/// Records waiting to be sent, at most. Past this, new verdicts are dropped (and counted).
pub const QUEUE: usize = 4096;
/// Records per POST, at most.
pub const BATCH: usize = 512;
/// How long a record may wait for its batch to fill.
const LINGER: Duration = Duration::from_secs(1);
/// Tries per batch (one post and its retries), with doubling backoff from `BACKOFF`.
const TRIES: u32 = 4;
const BACKOFF: Duration = Duration::from_millis(250);
/// A collector's Retry-After is honoured up to this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A collector that accepts and does not answer within this is treated as failed.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);
/// At exit, how long the last records may take to leave.
const EXIT_GRACE: Duration = Duration::from_secs(2);

pub const EVENT_NAME: &str = "upstrace.verdict";

/// Where the collector listens: `http://host[:port][/prefix]`; records go to `<prefix>/v1/logs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// The request path, ending in `/v1/logs`.
    pub path: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint> {
        let bad =
            |why: &str| anyhow::anyhow!("--otlp-endpoint {url:?}: {why} (expected http://HOST[:PORT][/PATH], e.g. http://127.0.0.1:4318)");
        let Some(rest) = url.strip_prefix("http://") else {
            if url.starts_with("https://") {
                return Err(bad("https is not supported: send to a local collector over http"));
            }
            return Err(bad("not an http:// URL"));
        };
        let (authority, prefix) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, tail) = v6.split_once(']').ok_or_else(|| bad("unclosed [ in the host"))?;
            (h, tail.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() || host.contains(['@', ' ', '?', '#']) {
            return Err(bad("no valid host"));
        }
        let port = match port {
            Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| bad("the port is not a number in 1-65535"))?,
            None => 4318,
        };
        if prefix.contains(['?', '#', ' ']) {
            return Err(bad("queries and fragments are not supported"));
        }
        let prefix = prefix.trim_end_matches('/');
        // Like OTEL_EXPORTER_OTLP_ENDPOINT: the signal's path is appended to a base URL; a URL
        // that already names it is taken as is.
        let path = if prefix.ends_with("v1/logs") {
            format!("/{prefix}")
        } else if prefix.is_empty() {
            "/v1/logs".into()
        } else {
            format!("/{prefix}/v1/logs")
        };
        Ok(Endpoint { host: host.to_owned(), port, path })
    }

    /// `host:port` as the Host header and for resolving (IPv6 in brackets).
    fn authority(&self) -> String {
        if self.host.contains(':') { format!("[{}]:{}", self.host, self.port) } else { format!("{}:{}", self.host, self.port) }
    }

    pub fn url(&self) -> String {
        format!("http://{}{}", self.authority(), self.path)
    }

    fn addrs(&self) -> std::io::Result<Vec<SocketAddr>> {
        Ok((self.host.as_str(), self.port).to_socket_addrs()?.collect())
    }
}

/// One side of a connection as a verdict names it, typed for the semantic-convention attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Peer {
    Inet(SocketAddr),
    /// A unix socket, by path.
    Unix(String),
    /// A host name (the name a DNS verdict says did not resolve).
    Name(String),
    /// Not known (`?`).
    Unknown,
}

impl Peer {
    fn parse(s: &str) -> Peer {
        if let Some(path) = s.strip_prefix("unix:") {
            return Peer::Unix(path.to_owned());
        }
        match s.parse() {
            Ok(a) => Peer::Inet(a),
            Err(_) if s != "?" && !s.is_empty() => Peer::Name(s.to_owned()),
            Err(_) => Peer::Unknown,
        }
    }
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue { key: key.to_owned(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

fn text(key: &str, v: impl Into<String>) -> KeyValue {
    kv(key, Value::StringValue(v.into()))
}

fn int(key: &str, v: i64) -> KeyValue {
    kv(key, Value::IntValue(v))
}

/// Severity by class: a verdict that names who failed is an error; one the evidence did not
/// decide (class `unknown`) is a warning, so alerting on ERROR stays on explained failures.
pub fn severity(class: Class) -> SeverityNumber {
    match class {
        Class::Upstream | Class::Firewall | Class::Network | Class::Gateway => SeverityNumber::Error,
        Class::Unknown => SeverityNumber::Warn,
    }
}

/// The log record for one verdict. `boot_offset_ns` turns its CLOCK_MONOTONIC stamp into Unix
/// time; `observed_unix_ns` is when upstrace emitted it.
pub fn log_record(v: &Verdict, boot_offset_ns: i128, observed_unix_ns: u64) -> LogRecord {
    let mut attrs = Vec::with_capacity(24);
    if let Some(status) = v.status {
        attrs.push(int("http.response.status_code", status.into()));
    }
    attrs.push(text("error.type", v.cause.as_str()));
    // server.* is the upstream the gateway called (semconv's reverse-proxy reading).
    match Peer::parse(&v.upstream) {
        Peer::Inet(a) => {
            attrs.push(text("server.address", a.ip().to_string()));
            attrs.push(int("server.port", a.port().into()));
            attrs.push(text("network.transport", "tcp"));
        }
        Peer::Unix(path) => {
            attrs.push(text("server.address", path));
            attrs.push(text("network.transport", "unix"));
        }
        Peer::Name(name) => attrs.push(text("server.address", name)),
        Peer::Unknown => {}
    }
    if let Peer::Inet(a) = Peer::parse(&v.client) {
        attrs.push(text("client.address", a.ip().to_string()));
        attrs.push(int("client.port", a.port().into()));
    }
    if let Some(side) = v.client_side {
        attrs.push(text("network.protocol.name", "http"));
        attrs.push(text(
            "network.protocol.version",
            match side.protocol {
                Protocol::H1 => "1.1",
                Protocol::H2 => "2",
            },
        ));
        attrs.push(text("upstrace.client_protocol", side.label()));
        if let Some(stream) = side.stream {
            attrs.push(int("upstrace.http2_stream", stream.into()));
        }
    }
    // The gateway process the verdict is about (upstrace itself is the resource).
    attrs.push(int("process.pid", v.gateway.pid.into()));
    attrs.push(text("process.executable.name", v.gateway.comm.to_string()));
    attrs.push(text("upstrace.class", v.class.as_str()));
    attrs.push(text("upstrace.cause", v.cause.as_str()));
    attrs.push(text("upstrace.summary", v.summary.clone()));
    attrs.push(text(
        "upstrace.delivered",
        match v.delivered {
            Delivered::Status => "status",
            Delivered::Truncated => "truncated",
            Delivered::Inferred => "inferred",
        },
    ));
    attrs.push(text("upstrace.upstream", v.upstream.clone()));
    attrs.push(int("upstrace.attempts", v.attempts.len() as i64));
    attrs.push(text("upstrace.next_check", v.next_check()));
    let evidence = v
        .evidence
        .iter()
        .map(|e| AnyValue { value: Some(Value::StringValue(format!("+{:.1} ms {} {}", e.t_ms, e.event, e.detail))) })
        .collect();
    attrs.push(kv("upstrace.evidence", Value::ArrayValue(ArrayValue { values: evidence })));
    if let Some(said) = &v.gateway_said {
        attrs.push(text("upstrace.gateway.said", said.line.clone()));
        attrs.push(text("upstrace.gateway.log", said.source.clone()));
        attrs.push(text("upstrace.gateway.agreement", serde_name(&said.agreement)));
        if let Some(claim) = said.says {
            attrs.push(text("upstrace.gateway.claim", serde_name(&claim)));
        }
    }
    let severity = severity(v.class);
    LogRecord {
        time_unix_nano: (v.ts_ns as i128 + boot_offset_ns).max(0) as u64,
        observed_time_unix_nano: observed_unix_ns,
        severity_number: severity as i32,
        severity_text: match severity {
            SeverityNumber::Error => "ERROR",
            _ => "WARN",
        }
        .into(),
        body: Some(AnyValue {
            value: Some(Value::StringValue(format!(
                "{} for {} via {}: {}: {}",
                v.status_text(),
                v.client_with_protocol(),
                v.upstream,
                v.label(),
                v.summary
            ))),
        }),
        attributes: attrs,
        event_name: EVENT_NAME.into(),
        ..Default::default()
    }
}

/// A unit enum's JSON name (`agrees`, `head-too-large`): one spelling for JSON and OTLP.
fn serde_name<T: serde::Serialize>(t: &T) -> String {
    serde_json::to_value(t).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// The host's resource attributes, sent with every batch.
pub fn resource() -> Resource {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_owned()).unwrap_or_default();
    Resource {
        attributes: vec![
            text("service.name", "upstrace"),
            text("service.version", env!("CARGO_PKG_VERSION")),
            text("host.name", host),
            text("os.type", "linux"),
        ],
        ..Default::default()
    }
}

/// One export request: the resource, upstrace as the scope, the records.
pub fn request(resource: &Resource, records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource.clone()),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "upstrace".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[derive(Default)]
struct Counters {
    exported: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_failed: AtomicU64,
    /// In the queue or in a batch being sent.
    pending: AtomicU64,
    retries: AtomicU64,
    last_error: Mutex<Option<String>>,
    stopping: AtomicBool,
}

impl Counters {
    fn set_error(&self, e: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }
}

/// Why a post failed, and whether another try may succeed (OTLP/HTTP: 429, 502, 503, 504 and
/// transport errors are retryable; other answers are final).
#[derive(Debug)]
enum PostError {
    /// With the collector's Retry-After, when it gave one.
    Retryable(String, Option<Duration>),
    Final(String),
}

/// POST one body; on a 2xx answer, `Ok` with the number of records the collector rejected. A fresh connection per batch (`Connection: close`):
/// at most one batch a second leaves in steady state, so keep-alive would buy nothing.
fn post(endpoint: &Endpoint, body: &[u8], answer_timeout: Duration) -> Result<u64, PostError> {
    let transport = |what: &str, e: std::io::Error| PostError::Retryable(format!("{what} {}: {e}", endpoint.authority()), None);
    let addrs = endpoint.addrs().map_err(|e| transport("resolving", e))?;
    let mut last = None;
    let mut stream = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let Some(mut stream) = stream else {
        return Err(transport("connecting to", last.unwrap_or_else(|| std::io::Error::other("no address"))));
    };
    stream.set_write_timeout(Some(answer_timeout)).map_err(|e| transport("configuring", e))?;
    stream.set_read_timeout(Some(answer_timeout)).map_err(|e| transport("configuring", e))?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nUser-Agent: upstrace/{}\r\nConnection: close\r\n\r\n",
        endpoint.path,
        endpoint.authority(),
        body.len(),
        env!("CARGO_PKG_VERSION")
    );
    stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(body)).map_err(|e| transport("sending to", e))?;
    // The head (status, Content-Length, Retry-After), then a 2xx's body: a partial success
    // names records the collector rejected. All bounded in size and time.
    let deadline = Instant::now() + answer_timeout;
    let timeout = || PostError::Retryable(format!("{} did not answer within {} s", endpoint.authority(), answer_timeout.as_secs()), None);
    let mut answer = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let mut read_more = |answer: &mut Vec<u8>| -> Result<bool, PostError> {
        if Instant::now() > deadline {
            return Err(timeout());
        }
        match stream.read(&mut buf) {
            Ok(0) => Ok(false),
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                Ok(true)
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => Err(timeout()),
            Err(e) => Err(transport("reading from", e)),
        }
    };
    let head_end = loop {
        if let Some(i) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if answer.len() > 16 * 1024 || !read_more(&mut answer)? {
            return Err(PostError::Retryable(format!("{} sent no valid HTTP answer", endpoint.authority()), None));
        }
    };
    let head = String::from_utf8_lossy(&answer[..head_end]).into_owned();
    let code: u16 = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    match code {
        200..=299 => {
            let len = header("content-length").and_then(|v| v.parse::<usize>().ok()).unwrap_or(0).min(64 * 1024);
            // A body that does not come whole is no reason to send the batch again.
            while answer.len() < head_end + len && matches!(read_more(&mut answer), Ok(true)) {}
            let body = &answer[head_end..(head_end + len).min(answer.len())];
            let rejected =
                ExportLogsServiceResponse::decode(body).ok().and_then(|r| r.partial_success).map_or(0, |p| p.rejected_log_records);
            Ok(rejected.max(0) as u64)
        }
        // Retry-After in seconds (the HTTP-date form is taken as no hint), capped.
        429 | 502 | 503 | 504 => Err(PostError::Retryable(
            format!("{} answered {code}", endpoint.url()),
            header("retry-after").and_then(|v| v.parse::<u64>().ok()).map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER)),
        )),
        _ => Err(PostError::Final(format!("{} answered {code}", endpoint.url()))),
    }
}

/// The sending thread: batch, post, retry with backoff; count what could not be sent.
fn sender(endpoint: Endpoint, rx: Receiver<LogRecord>, counters: Arc<Counters>, done: mpsc::Sender<()>) {
    let resource = resource();
    let mut batch: Vec<LogRecord> = Vec::with_capacity(BATCH);
    let mut open = true;
    while open || !batch.is_empty() {
        // Fill a batch: wait for its first record, then up to LINGER for more.
        let mut first_at = None;
        while open && batch.len() < BATCH {
            let wait = first_at.map_or(LINGER, |t: Instant| LINGER.saturating_sub(t.elapsed()));
            match rx.recv_timeout(wait) {
                Ok(r) => {
                    first_at.get_or_insert_with(Instant::now);
                    batch.push(r)
                }
                Err(RecvTimeoutError::Timeout) if batch.is_empty() => continue,
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => open = false,
            }
            if counters.stopping.load(Ordering::Relaxed) {
                // At exit, take what is queued without waiting.
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
                break;
            }
        }
        if batch.is_empty() {
            continue;
        }
        let n = batch.len() as u64;
        let body = request(&resource, std::mem::take(&mut batch)).encode_to_vec();
        let mut backoff = BACKOFF;
        let mut rejected = n;
        for attempt in 1..=TRIES {
            let stopping = counters.stopping.load(Ordering::Relaxed);
            match post(&endpoint, &body, if stopping { Duration::from_secs(1) } else { ANSWER_TIMEOUT }) {
                Ok(r) => {
                    rejected = r.min(n);
                    if r > 0 {
                        counters.set_error(format!("{} rejected {r} of {n} records", endpoint.url()));
                    }
                    break;
                }
                Err(PostError::Final(e)) => {
                    counters.set_error(e);
                    break;
                }
                Err(PostError::Retryable(e, retry_after)) => {
                    counters.set_error(e);
                    // At exit there is no time for another try.
                    if attempt == TRIES || counters.stopping.load(Ordering::Relaxed) {
                        break;
                    }
                    counters.retries.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(retry_after.unwrap_or(backoff));
                    backoff *= 2;
                }
            }
        }
        counters.exported.fetch_add(n - rejected, Ordering::Relaxed);
        counters.dropped_failed.fetch_add(rejected, Ordering::Relaxed);
        counters.pending.fetch_sub(n, Ordering::Relaxed);
    }
    let _ = done.send(());
}

/// The exporter: an [`Output`] that hands each verdict to the sending thread.
pub struct OtlpExporter {
    endpoint: Endpoint,
    tx: Option<SyncSender<LogRecord>>,
    counters: Arc<Counters>,
    done: Receiver<()>,
    boot_offset_ns: i128,
}

impl OtlpExporter {
    /// Start the sending thread. A collector that cannot be reached now is one line on stderr:
    /// tracing goes on, and records are sent once it answers (or dropped past the queue).
    pub fn start(endpoint: Endpoint, boot_offset_ns: i128) -> Result<Self> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let (done_tx, done) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let (e, c) = (endpoint.clone(), counters.clone());
        if let Err(err) = std::thread::Builder::new().name("otlp".into()).spawn(move || sender(e, rx, c, done_tx)) {
            bail!("cannot start the OTLP export thread: {err}");
        }
        if let Err(why) = reachable(&endpoint) {
            eprintln!(
                "upstrace: warning: OTLP collector {} is unreachable ({why}): tracing goes on; verdicts are queued (up to {QUEUE}) and sent when it answers",
                endpoint.url()
            );
            counters.set_error(why);
        }
        Ok(OtlpExporter { endpoint, tx: Some(tx), counters, done, boot_offset_ns })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn counters(&self) -> OtlpStats {
        let c = &self.counters;
        let (queue_full, failed) = (c.dropped_queue_full.load(Ordering::Relaxed), c.dropped_failed.load(Ordering::Relaxed));
        OtlpStats {
            exported: c.exported.load(Ordering::Relaxed),
            dropped: queue_full + failed,
            dropped_queue_full: queue_full,
            dropped_failed: failed,
            pending: c.pending.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            last_error: c.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }

    /// Queue one record; never waits.
    fn offer(&self, record: LogRecord) {
        let Some(tx) = &self.tx else { return };
        self.counters.pending.fetch_add(1, Ordering::Relaxed);
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send(record) {
            self.counters.pending.fetch_sub(1, Ordering::Relaxed);
            self.counters.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A TCP connect to the collector, with a short timeout (the start-up check).
fn reachable(endpoint: &Endpoint) -> Result<(), String> {
    let addrs = endpoint.addrs().map_err(|e| format!("cannot resolve {}: {e}", endpoint.host))?;
    let mut why = format!("{} resolves to no address", endpoint.host);
    for a in addrs {
        match TcpStream::connect_timeout(&a, Duration::from_secs(1)) {
            Ok(_) => return Ok(()),
            Err(e) => why = format!("{a}: {e}"),
        }
    }
    Err(why)
}

impl Output for OtlpExporter {
    fn verdict(&mut self, v: &Verdict) -> Result<()> {
        let observed = (clock::monotonic_ns() as i128 + self.boot_offset_ns).max(0) as u64;
        self.offer(log_record(v, self.boot_offset_ns, observed));
        Ok(())
    }

    fn contribute(&self, s: &mut Stats) {
        s.otlp = Some(self.counters());
    }
}

/// At exit: let the queued records leave, for `EXIT_GRACE` at most; say what did not.
impl Drop for OtlpExporter {
    fn drop(&mut self) {
        self.counters.stopping.store(true, Ordering::Relaxed);
        self.tx = None;
        let _ = self.done.recv_timeout(EXIT_GRACE);
        let s = self.counters();
        if s.pending > 0 || s.dropped > 0 {
            eprintln!(
                "upstrace: OTLP export to {}: {} verdicts exported, {} dropped, {} not sent at exit{}",
                self.endpoint.url(),
                s.exported,
                s.dropped,
                s.pending,
                s.last_error.map(|e| format!(" (last error: {e})")).unwrap_or_default()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::verdict::{Cause, ClientSide, EvidenceItem};

    #[test]
    fn endpoints_parse_or_say_why() {
        let e = Endpoint::parse("http://127.0.0.1:4318").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.path.as_str()), ("127.0.0.1", 4318, "/v1/logs"));
        assert_eq!(Endpoint::parse("http://collector/").unwrap().path, "/v1/logs");
        assert_eq!(Endpoint::parse("http://collector").unwrap().port, 4318);
        assert_eq!(Endpoint::parse("http://c:9/otlp/").unwrap().path, "/otlp/v1/logs");
        assert_eq!(Endpoint::parse("http://c:9/v1/logs").unwrap().path, "/v1/logs");
        let v6 = Endpoint::parse("http://[::1]:4318").unwrap();
        assert_eq!((v6.host.as_str(), v6.url().as_str()), ("::1", "http://[::1]:4318/v1/logs"));
        for bad in ["127.0.0.1:4318", "https://c:4318", "http://:80", "http://c:0", "http://c:99999", "http://c:x", "http://c/?a=1"] {
            let e = Endpoint::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("--otlp-endpoint") && !e.contains('\n'), "{bad}: {e}");
        }
    }

    fn verdict() -> Verdict {
        Verdict {
            client_side: Some(ClientSide { protocol: Protocol::H2, tls: true, stream: Some(3) }),
            evidence: vec![EvidenceItem { t_ms: 0.2, event: "rst", detail: "RST to SYN".into() }],
            ..Verdict::example()
        }
    }

    fn attr<'a>(r: &'a LogRecord, key: &str) -> Option<&'a Value> {
        r.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.as_ref()?.value.as_ref())
    }

    #[test]
    fn a_verdict_becomes_a_record_with_semantic_attributes() {
        let r = log_record(&verdict(), 5_000, 9);
        assert_eq!((r.time_unix_nano, r.observed_time_unix_nano, r.severity_number), (6_000, 9, SeverityNumber::Error as i32));
        assert_eq!(attr(&r, "http.response.status_code"), Some(&Value::IntValue(502)));
        assert_eq!(attr(&r, "server.port"), Some(&Value::IntValue(8081)));
        assert_eq!(attr(&r, "client.address"), Some(&Value::StringValue("127.0.0.1".into())));
        assert_eq!(attr(&r, "network.protocol.version"), Some(&Value::StringValue("2".into())));
        assert_eq!(attr(&r, "upstrace.http2_stream"), Some(&Value::IntValue(3)));
        let mut v = verdict();
        (v.upstream, v.client, v.status, v.class, v.client_side) = ("unix:/run/app.sock".into(), "?".into(), None, Class::Unknown, None);
        let r = log_record(&v, 0, 0);
        assert_eq!(attr(&r, "server.address"), Some(&Value::StringValue("/run/app.sock".into())));
        assert_eq!(attr(&r, "network.transport"), Some(&Value::StringValue("unix".into())));
        assert_eq!((attr(&r, "server.port"), attr(&r, "client.address"), attr(&r, "http.response.status_code")), (None, None, None));
        assert_eq!(r.severity_number, SeverityNumber::Warn as i32);
        assert_eq!(attr(&r, "upstrace.gateway.said"), None, "no line, no attribute");
        // A name that did not resolve is the server's address.
        let mut v = verdict();
        (v.upstream, v.cause) = ("app.lab".into(), Cause::DnsNxdomain);
        let r = log_record(&v, 0, 0);
        assert_eq!((attr(&r, "server.address"), attr(&r, "server.port")), (Some(&Value::StringValue("app.lab".into())), None));
    }

    #[test]
    fn the_gateways_line_travels_with_its_agreement() {
        use crate::gateway_log::{Agreement, Claim, GatewaySaid, MatchKey};
        let mut v = verdict();
        v.gateway_said = Some(GatewaySaid {
            source: "/var/log/nginx/error.log".into(),
            line: "connect() failed (111: Connection refused)".into(),
            matched_by: vec![MatchKey::Pid, MatchKey::Time],
            says: Some(Claim::HeadTooLarge),
            agreement: Agreement::Disagrees,
        });
        let r = log_record(&v, 0, 0);
        let s = |x: &str| Some(Value::StringValue(x.into()));
        assert_eq!(attr(&r, "upstrace.gateway.said").cloned(), s("connect() failed (111: Connection refused)"));
        assert_eq!(attr(&r, "upstrace.gateway.log").cloned(), s("/var/log/nginx/error.log"));
        assert_eq!(attr(&r, "upstrace.gateway.agreement").cloned(), s("disagrees"));
        assert_eq!(attr(&r, "upstrace.gateway.claim").cloned(), s("head-too-large"));
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        // Port 9 on loopback: nothing listens, so nothing is ever exported.
        let mut x = OtlpExporter::start(Endpoint::parse("http://127.0.0.1:9").unwrap(), 0).unwrap();
        let started = Instant::now();
        for _ in 0..QUEUE + BATCH + 100 {
            x.verdict(&verdict()).unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(2), "queueing must not wait for the collector");
        let s = x.counters();
        assert!(s.dropped_queue_full >= 100, "{s:?}");
        assert_eq!(s.exported, 0);
        let started = Instant::now();
        drop(x);
        assert!(started.elapsed() < EXIT_GRACE + Duration::from_millis(500));
    }

    /// Read the head, then Content-Length bytes of body; false if the peer closed first.
    fn read_request(stream: &mut TcpStream) -> bool {
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        let mut total = usize::MAX;
        while req.len() < total {
            match stream.read(&mut buf) {
                Ok(n) if n > 0 => req.extend_from_slice(&buf[..n]),
                _ => return false,
            }
            if total == usize::MAX
                && let Some(i) = req.windows(4).position(|w| w == b"\r\n\r\n")
            {
                let head = String::from_utf8_lossy(&req[..i]).to_ascii_lowercase();
                total = i + 4 + head.lines().find_map(|l| l.strip_prefix("content-length: ")?.parse::<usize>().ok()).unwrap_or(0);
            }
        }
        true
    }

    /// A collector on 127.0.0.1 that answers each connection with the next canned answer, and
    /// says when each request came (bounded: 10 s, then it gives up).
    fn fake_collector(answers: Vec<Vec<u8>>) -> (Endpoint, std::thread::JoinHandle<Vec<Instant>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut times = Vec::new();
            for answer in answers {
                // Connections that close without a request (the start-up check) get no answer.
                let mut stream = loop {
                    let mut stream = match listener.accept() {
                        Ok((s, _)) => s,
                        Err(_) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                        Err(_) => return times,
                    };
                    stream.set_nonblocking(false).unwrap();
                    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    if read_request(&mut stream) {
                        break stream;
                    }
                };
                times.push(Instant::now());
                stream.write_all(&answer).unwrap();
            }
            times
        });
        (Endpoint::parse(&format!("http://127.0.0.1:{port}")).unwrap(), thread)
    }

    #[test]
    fn honours_retry_after_and_counts_what_a_partial_success_rejected() {
        use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsPartialSuccess;
        let partial = ExportLogsServiceResponse {
            partial_success: Some(ExportLogsPartialSuccess { rejected_log_records: 1, error_message: "too old".into() }),
        }
        .encode_to_vec();
        let mut ok =
            format!("HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n", partial.len()).into_bytes();
        ok.extend_from_slice(&partial);
        let busy = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n".to_vec();
        let (endpoint, collector) = fake_collector(vec![busy, ok]);
        let mut x = OtlpExporter::start(endpoint, 0).unwrap();
        for _ in 0..3 {
            x.verdict(&verdict()).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while x.counters().pending > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let s = x.counters();
        assert_eq!((s.exported, s.dropped_failed, s.dropped_queue_full, s.retries, s.pending), (2, 1, 0, 1, 0), "{s:?}");
        assert!(s.last_error.unwrap().contains("rejected 1 of 3"));
        let times = collector.join().unwrap();
        assert_eq!(times.len(), 2);
        // The collector's 1 s, not the 250 ms first backoff.
        assert!(times[1] - times[0] >= Duration::from_millis(950), "{:?}", times[1] - times[0]);
    }
}
