//! `--otlp-endpoint`: an OTLP/HTTP receiver built on the official OpenTelemetry protobuf
//! definitions (`opentelemetry-proto`, decoding `ExportLogsServiceRequest`) listens on
//! 127.0.0.1, and every attribute of a verdict's log record is checked against the verdict
//! upstrace printed. Offline (replayed trace, no root) and live (a lab fault, root). A
//! collector that is down or never answers must not hold upstrace: it keeps printing
//! verdicts, exits on time, and counts what it could not send.
use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse},
    common::v1::{AnyValue, KeyValue, any_value::Value},
    logs::v1::LogRecord,
};
use prost::Message as _;
use serde_json::Value as Json;
use upstrace_lab::{
    lab::{GatewayKind, Lab, UPSTREAM_PORT},
    require_root,
    tracer::Tracer,
    upstrace_binary,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Decode each request and answer 200 with an `ExportLogsServiceResponse`.
    Answer,
    /// Accept and read, never answer (a collector that hangs).
    Silent,
}

/// One POST as the receiver saw it.
#[derive(Debug, Clone)]
struct Post {
    method: String,
    path: String,
    content_type: String,
    request: ExportLogsServiceRequest,
}

struct Receiver {
    addr: SocketAddr,
    posts: Arc<Mutex<Vec<Post>>>,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Read an HTTP/1.1 request (head and a Content-Length body), 5 s at most.
fn read_request(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut data = Vec::new();
    let mut buf = [0u8; 16384];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf).ok()?;
        if n == 0 || data.len() > 1 << 20 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
        .and_then(|v| v.parse().ok())?;
    while data.len() < head_end + len {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    }
    Some((head, data[head_end..head_end + len].to_vec()))
}

fn serve(mut stream: TcpStream, mode: Mode, posts: Arc<Mutex<Vec<Post>>>, stop: Arc<AtomicBool>) {
    let Some((head, body)) = read_request(&mut stream) else { return };
    if mode == Mode::Silent {
        // Hold the connection open and say nothing, until the test ends (30 s at most).
        let until = Instant::now() + Duration::from_secs(30);
        while !stop.load(Ordering::Relaxed) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        return;
    }
    let first = head.lines().next().unwrap_or_default().to_owned();
    let mut words = first.split_whitespace();
    let (method, path) = (words.next().unwrap_or_default().to_owned(), words.next().unwrap_or_default().to_owned());
    let content_type =
        head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type:").map(|v| v.trim().to_owned())).unwrap_or_default();
    let (status, answer) = match ExportLogsServiceRequest::decode(body.as_slice()) {
        Ok(request) => {
            posts.lock().unwrap().push(Post { method, path, content_type, request });
            ("200 OK", ExportLogsServiceResponse::default().encode_to_vec())
        }
        Err(_) => ("400 Bad Request", Vec::new()),
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        answer.len()
    );
    let _ = stream.write_all(&answer);
}

impl Receiver {
    fn start(mode: Mode) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let posts = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, c, s) = (posts.clone(), connections.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: the test stops it, and it never outlives 2 minutes.
            let until = Instant::now() + Duration::from_secs(120);
            while !s.load(Ordering::Relaxed) && Instant::now() < until {
                match listener.accept() {
                    Ok((stream, _)) => {
                        c.fetch_add(1, Ordering::Relaxed);
                        let _ = stream.set_nonblocking(false);
                        let (p, s) = (p.clone(), s.clone());
                        std::thread::spawn(move || serve(stream, mode, p, s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Receiver { addr, posts, connections, stop, thread: Some(thread) }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn records(&self) -> Vec<(Post, LogRecord)> {
        let posts = self.posts.lock().unwrap();
        posts
            .iter()
            .flat_map(|p| {
                p.request
                    .resource_logs
                    .iter()
                    .flat_map(|r| r.scope_logs.iter().flat_map(|s| s.log_records.iter()))
                    .map(|r| (p.clone(), r.clone()))
            })
            .collect()
    }

    /// Wait until `n` records arrived, up to `timeout`.
    fn wait_records(&self, n: usize, timeout: Duration) -> Vec<(Post, LogRecord)> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.records();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn value(kv: &KeyValue) -> &Value {
    kv.value.as_ref().and_then(|v| v.value.as_ref()).unwrap_or_else(|| panic!("{} has no value", kv.key))
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> &'a Value {
    value(attrs.iter().find(|a| a.key == key).unwrap_or_else(|| panic!("no attribute {key} in {attrs:?}")))
}

fn s(v: impl Into<String>) -> Value {
    Value::StringValue(v.into())
}

/// `2026-11-28T13:36:29.881210Z` (what upstrace prints) to Unix nanoseconds.
fn unix_ns(rfc3339: &str) -> i128 {
    let (date, time) = rfc3339.trim_end_matches('Z').split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
    let (y, m) = if d[1] <= 2 { (d[0] - 1, d[1] + 9) } else { (d[0], d[1] - 3) };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let frac_ns: i128 = format!("{frac:0<9}").parse().unwrap();
    (days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2]) as i128 * 1_000_000_000 + frac_ns
}

/// Every attribute of the record against the verdict line upstrace printed, and the resource,
/// the scope and the request that carried it.
fn check_record(post: &Post, r: &LogRecord, v: &Json) {
    assert_eq!((post.method.as_str(), post.path.as_str(), post.content_type.as_str()), ("POST", "/v1/logs", "application/x-protobuf"));
    let rl = &post.request.resource_logs[0];
    let res = &rl.resource.as_ref().expect("a resource").attributes;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_owned();
    assert_eq!(attr(res, "service.name"), &s("upstrace"));
    assert_eq!(attr(res, "service.version"), &s(env!("CARGO_PKG_VERSION")));
    assert_eq!(attr(res, "host.name"), &s(host));
    assert_eq!(attr(res, "os.type"), &s("linux"));
    let scope = rl.scope_logs[0].scope.as_ref().expect("a scope");
    assert_eq!((scope.name.as_str(), scope.version.as_str()), ("upstrace", env!("CARGO_PKG_VERSION")));

    assert_eq!(r.event_name, "upstrace.verdict");
    let class = v["class"].as_str().unwrap();
    let (sev, sev_text) = if class == "unknown" { (13, "WARN") } else { (17, "ERROR") };
    assert_eq!((r.severity_number, r.severity_text.as_str()), (sev, sev_text));
    // The record's time is the status write's, as printed (which keeps microseconds).
    let printed = unix_ns(v["time"].as_str().unwrap());
    assert!((r.time_unix_nano as i128 - printed).abs() < 1_000, "time {} vs printed {printed}", r.time_unix_nano);
    assert!(r.observed_time_unix_nano as i128 >= printed - 1_000);
    let status = v["status"].as_u64().unwrap();
    let body = match r.body.as_ref().and_then(|b| b.value.as_ref()) {
        Some(Value::StringValue(b)) => b.clone(),
        other => panic!("body {other:?}"),
    };
    assert!(body.starts_with(&format!("{status} for ")) && body.contains(v["summary"].as_str().unwrap()), "{body}");

    let a = &r.attributes;
    let upstream: SocketAddr = v["upstream"].as_str().unwrap().parse().unwrap();
    let client: SocketAddr = v["client"].as_str().unwrap().parse().unwrap();
    let protocol = v["protocol"].as_str().unwrap();
    let tls = v["tls"].as_bool().unwrap();
    assert_eq!(attr(a, "http.response.status_code"), &Value::IntValue(status as i64));
    assert_eq!(attr(a, "error.type"), &s(v["cause"].as_str().unwrap()));
    assert_eq!(attr(a, "server.address"), &s(upstream.ip().to_string()));
    assert_eq!(attr(a, "server.port"), &Value::IntValue(upstream.port().into()));
    assert_eq!(attr(a, "network.transport"), &s("tcp"));
    assert_eq!(attr(a, "client.address"), &s(client.ip().to_string()));
    assert_eq!(attr(a, "client.port"), &Value::IntValue(client.port().into()));
    assert_eq!(attr(a, "network.protocol.name"), &s("http"));
    assert_eq!(attr(a, "network.protocol.version"), &s(if protocol == "h2" { "2" } else { "1.1" }));
    assert_eq!(attr(a, "upstrace.client_protocol"), &s(format!("{protocol}{}", if tls { "+tls" } else { "" })));
    assert_eq!(attr(a, "process.pid"), &Value::IntValue(v["gateway"]["pid"].as_i64().unwrap()));
    assert_eq!(attr(a, "process.executable.name"), &s(v["gateway"]["comm"].as_str().unwrap()));
    assert_eq!(attr(a, "upstrace.class"), &s(class));
    assert_eq!(attr(a, "upstrace.cause"), &s(v["cause"].as_str().unwrap()));
    assert_eq!(attr(a, "upstrace.summary"), &s(v["summary"].as_str().unwrap()));
    assert_eq!(attr(a, "upstrace.delivered"), &s(v["delivered"].as_str().unwrap()));
    assert_eq!(attr(a, "upstrace.upstream"), &s(v["upstream"].as_str().unwrap()));
    assert_eq!(attr(a, "upstrace.attempts"), &Value::IntValue(v["attempts"].as_array().unwrap().len() as i64));
    assert!(matches!(attr(a, "upstrace.next_check"), Value::StringValue(n) if n.len() > 20));
    let evidence = v["evidence"].as_array().unwrap();
    assert!(!evidence.is_empty(), "a verdict with no evidence: {v}");
    match attr(a, "upstrace.evidence") {
        Value::ArrayValue(arr) => {
            assert_eq!(arr.values.len(), evidence.len());
            for (got, want) in arr.values.iter().zip(evidence) {
                let AnyValue { value: Some(Value::StringValue(line)) } = got else { panic!("evidence {got:?}") };
                assert!(
                    line.contains(want["event"].as_str().unwrap()) && line.contains(want["detail"].as_str().unwrap()),
                    "{line} vs {want}"
                );
            }
        }
        other => panic!("upstrace.evidence is {other:?}"),
    }
    // Nothing more and nothing less (`upstrace.http2_stream` only for HTTP/2).
    let mut want: BTreeSet<&str> = [
        "http.response.status_code",
        "error.type",
        "server.address",
        "server.port",
        "network.transport",
        "client.address",
        "client.port",
        "network.protocol.name",
        "network.protocol.version",
        "upstrace.client_protocol",
        "process.pid",
        "process.executable.name",
        "upstrace.class",
        "upstrace.cause",
        "upstrace.summary",
        "upstrace.delivered",
        "upstrace.upstream",
        "upstrace.attempts",
        "upstrace.next_check",
        "upstrace.evidence",
    ]
    .into();
    if protocol == "h2" {
        want.insert("upstrace.http2_stream");
    }
    // The gateway's own line, where upstrace matched one.
    let said = &v["gateway_said"];
    if let Some(line) = said["line"].as_str() {
        assert_eq!(attr(a, "upstrace.gateway.said"), &s(line));
        assert_eq!(attr(a, "upstrace.gateway.log"), &s(said["source"].as_str().unwrap()));
        assert_eq!(attr(a, "upstrace.gateway.agreement"), &s(said["agreement"].as_str().unwrap()));
        want.extend(["upstrace.gateway.said", "upstrace.gateway.log", "upstrace.gateway.agreement"]);
        if let Some(claim) = said["says"].as_str() {
            assert_eq!(attr(a, "upstrace.gateway.claim"), &s(claim));
            want.insert("upstrace.gateway.claim");
        }
    }
    let got: BTreeSet<&str> = a.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(got, want);
}

/// `upstrace replay FILE --json --otlp-endpoint URL`: (exit code, verdict lines, stderr, run time).
fn replay_to(url: &str) -> (i32, Vec<Json>, String, Duration) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/refused-nginx.jsonl");
    let started = Instant::now();
    let out = Command::new(upstrace_binary().expect("upstrace built"))
        .arg("replay")
        .arg(&fixture)
        .args(["--json", "--otlp-endpoint", url])
        .output()
        .unwrap();
    let verdicts = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Json>(l).ok())
        .filter(|v| v["type"] == "verdict")
        .collect();
    (out.status.code().unwrap_or(-1), verdicts, String::from_utf8_lossy(&out.stderr).into_owned(), started.elapsed())
}

/// The exporter's last words at exit: (exported, dropped, not sent at exit).
fn exit_counts(stderr: &str) -> (u64, u64, u64) {
    let line = stderr.lines().find(|l| l.contains("OTLP export to")).unwrap_or_else(|| panic!("no exporter line in {stderr}"));
    let n = |after: &str| -> u64 {
        let at = line.find(after).unwrap_or_else(|| panic!("{after:?} not in {line}"));
        line[..at].split_whitespace().last().unwrap().parse().unwrap()
    };
    (n(" verdicts exported"), n(" dropped"), n(" not sent at exit"))
}

#[test]
fn replayed_verdict_arrives_as_a_record_with_every_attribute() {
    let rx = Receiver::start(Mode::Answer);
    let (code, verdicts, stderr, _) = replay_to(&rx.url());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(verdicts.len(), 1, "{stderr}");
    assert!(!stderr.contains("OTLP export to"), "nothing dropped, nothing to say: {stderr}");
    let records = rx.wait_records(1, Duration::from_secs(5));
    assert_eq!(records.len(), 1);
    check_record(&records[0].0, &records[0].1, &verdicts[0]);
}

#[test]
fn a_collector_that_is_down_or_silent_never_holds_upstrace() {
    // Down: a port that was just free (connections are refused).
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (code, verdicts, stderr, took) = replay_to(&format!("http://127.0.0.1:{port}"));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(verdicts.len(), 1, "the verdict is printed all the same");
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("unreachable")).collect();
    assert_eq!(warnings.len(), 1, "one clear line: {stderr}");
    assert!(warnings[0].contains(&format!("127.0.0.1:{port}")) && warnings[0].contains("tracing goes on"), "{}", warnings[0]);
    assert_eq!(exit_counts(&stderr), (0, 1, 0), "{stderr}");
    assert!(took < Duration::from_secs(4), "took {took:?}");

    // Silent: accepts and reads, never answers.
    let rx = Receiver::start(Mode::Silent);
    let (code, verdicts, stderr, took) = replay_to(&rx.url());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(verdicts.len(), 1);
    let (exported, dropped, unsent) = exit_counts(&stderr);
    assert_eq!((exported, dropped + unsent), (0, 1), "{stderr}");
    assert!(rx.connections.load(Ordering::Relaxed) >= 1, "the export was tried");
    // The exit grace is 2 s; a collector that hangs must not stretch it.
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

fn stats_otlp(tracer: &Tracer) -> Option<Json> {
    tracer.lines().iter().rev().find(|l| l["type"] == "stats").map(|l| l["otlp"].clone())
}

#[test]
#[cfg_attr(not_root, ignore = "needs root: loads eBPF programs and builds a network-namespace lab")]
fn live_fault_verdict_is_exported_with_every_attribute() {
    require_root();
    let rx = Receiver::start(Mode::Answer);
    // nginx in front of an upstream that is not running: connects are refused, nginx answers 502.
    let lab = Lab::with_gateway(GatewayKind::Nginx, None).unwrap();
    let pid = lab.gateway.as_ref().unwrap().pid.to_string();
    let tracer = Tracer::start(&["--pid", &pid, "--no-events", "--stats-interval", "1", "--otlp-endpoint", &rx.url()]).unwrap();
    assert!(!tracer.stderr().contains("unreachable"), "{}", tracer.stderr());
    let (status, _) = lab.request("/").unwrap();
    assert_eq!(status, 502);
    let v = tracer.wait_for(Duration::from_secs(5), |l| l["type"] == "verdict").expect("a verdict");
    assert_eq!((v["cause"].as_str(), v["upstream"].as_str()), (Some("refused"), Some(lab.upstream_addr().as_str())));
    // nginx's error line travels too (checked against the record in check_record).
    assert!(v["gateway_said"]["line"].as_str().is_some_and(|l| l.contains("Connection refused")), "{v}");
    let records = rx.wait_records(1, Duration::from_secs(10));
    assert_eq!(records.len(), 1, "one verdict, one record");
    check_record(&records[0].0, &records[0].1, &v);
    assert_eq!(records[0].1.attributes.iter().find(|a| a.key == "server.port").map(value), Some(&Value::IntValue(UPSTREAM_PORT.into())));
    // The stats line counts it.
    let stats = tracer.wait_for(Duration::from_secs(5), |l| l["type"] == "stats" && l["otlp"]["exported"] == 1).expect("otlp in the stats");
    assert_eq!((stats["otlp"]["dropped"].as_u64(), stats["otlp"]["pending"].as_u64()), (Some(0), Some(0)));
    let (code, _) = tracer.stop().unwrap();
    assert_eq!(code, 0);
}

#[test]
#[cfg_attr(not_root, ignore = "needs root: loads eBPF programs and builds a network-namespace lab")]
fn live_tracing_goes_on_while_the_collector_hangs() {
    require_root();
    let rx = Receiver::start(Mode::Silent);
    let lab = Lab::with_gateway(GatewayKind::Nginx, None).unwrap();
    let pid = lab.gateway.as_ref().unwrap().pid.to_string();
    let tracer = Tracer::start(&["--pid", &pid, "--no-events", "--stats-interval", "1", "--otlp-endpoint", &rx.url()]).unwrap();
    // Verdicts keep coming, each within a second or two of its 502, while the exporter waits.
    for n in 1..=3 {
        assert_eq!(lab.request("/").unwrap().0, 502);
        let deadline = Instant::now() + Duration::from_secs(3);
        while tracer_verdicts(&tracer) < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(tracer_verdicts(&tracer), n, "verdict {n} did not come while the collector hangs");
        std::thread::sleep(Duration::from_millis(700));
    }
    // The hanging post timed out and was retried; nothing was exported.
    let deadline = Instant::now() + Duration::from_secs(10);
    let otlp = loop {
        let o = stats_otlp(&tracer).unwrap_or_default();
        if o["retries"].as_u64().unwrap_or(0) >= 1 || Instant::now() > deadline {
            break o;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(otlp["retries"].as_u64().unwrap() >= 1, "{otlp}");
    assert_eq!(otlp["exported"], 0);
    assert!(rx.connections.load(Ordering::Relaxed) >= 2);
    let stopping = Instant::now();
    let stderr_before = tracer.stderr();
    let (code, lines) = tracer.stop().unwrap();
    let took = stopping.elapsed();
    assert_eq!(code, 0);
    assert!(took < Duration::from_secs(5), "exit took {took:?} with a hanging collector");
    assert_eq!(lines.iter().filter(|l| l["type"] == "verdict").count(), 3);
    let last = lines.iter().rev().find(|l| l["type"] == "stats").unwrap();
    let o = &last["otlp"];
    assert_eq!(o["dropped"].as_u64().unwrap() + o["pending"].as_u64().unwrap() + o["exported"].as_u64().unwrap(), 3, "{o}");
    assert!(!stderr_before.contains("unreachable"), "the collector accepts: it is reachable");
}

fn tracer_verdicts(tracer: &Tracer) -> usize {
    tracer.lines().iter().filter(|l| l["type"] == "verdict").count()
}

#[test]
fn a_malformed_endpoint_is_one_line_and_a_non_zero_exit() {
    for (url, why) in [
        ("ftp://127.0.0.1:4318", "not an http:// URL"),
        ("https://127.0.0.1:4318", "https is not supported"),
        ("http://127.0.0.1:99999", "port"),
    ] {
        let out = Command::new(upstrace_binary().expect("upstrace built"))
            .args(["--json", "--for", "1", "--otlp-endpoint", url])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{url}: {err}");
        assert_eq!(err.lines().count(), 1, "{url}: one line: {err}");
        assert!(err.starts_with("upstrace: error: --otlp-endpoint") && err.contains(why) && !err.contains("panicked"), "{url}: {err}");
    }
}
