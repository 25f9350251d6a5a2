//! The service and its metrics with the real parts: `upstrace serve` from a config file on a
//! lab gateway (real nginx, a real firewall fault), scraped by a real Prometheus server whose
//! HTTP API must then hold the verdict counter with the right cause. Also: a port in use, and
//! bad config files, each one clear line. Loopback and the lab's own namespaces only.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;
use upstrace_lab::{
    lab::{Fault, GatewayKind, Lab},
    require_root, upstrace_binary,
};

fn setup() {
    // SAFETY: set before any lab or tracer thread starts.
    unsafe { std::env::set_var("UPSTRACE_LAB_UPSTREAM", env!("CARGO_BIN_EXE_upstrace-lab-upstream")) };
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("upstrace-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Two distinct loopback ports nothing listens on right now (both held while picked).
fn free_ports() -> (u16, u16) {
    let (a, b) = (TcpListener::bind("127.0.0.1:0").unwrap(), TcpListener::bind("127.0.0.1:0").unwrap());
    (a.local_addr().unwrap().port(), b.local_addr().unwrap().port())
}

/// One GET on loopback: (status, body). Bounded by timeouts.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").ok()?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).ok()?;
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let status = reply.get(9..12)?.parse().ok()?;
    let (_, body) = reply.split_once("\r\n\r\n")?;
    // Prometheus answers queries with chunked bodies: the JSON is the one line that is.
    let body = if reply.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body.lines().find(|l| l.starts_with('{')).unwrap_or_default().to_owned()
    } else {
        body.to_owned()
    };
    Some((status, body))
}

/// A child killed and reaped on drop, also when the test fails half-way.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `upstrace serve` with its stderr collected.
struct Service {
    child: Killed,
    stderr: Arc<Mutex<String>>,
}

impl Service {
    fn start(args: &[&str]) -> Service {
        let mut child = Command::new(upstrace_binary().unwrap())
            .arg("serve")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let e = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut e = e.lock().unwrap();
                e.push_str(&line);
                e.push('\n');
            }
        });
        let service = Service { child: Killed(child), stderr };
        assert!(service.wait_stderr(Duration::from_secs(30), "upstrace: tracing"), "serve did not start: {}", service.stderr());
        service
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn wait_stderr(&self, timeout: Duration, needle: &str) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.stderr().contains(needle) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// SIGTERM, as systemd stops a service; the exit code.
    fn terminate(mut self) -> i32 {
        unsafe { libc::kill(self.child.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100)); // the stderr reader's last lines
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "serve did not stop within 15 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A Prometheus server (Debian's package) scraping `target` every second, with its data in `dir`.
fn start_prometheus(dir: &Path, target: &str, port: u16) -> Killed {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: upstrace\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting prometheus (installed by cargo xtask setup)");
    let prometheus = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(port, "/-/ready").is_none_or(|(status, _)| status != 200) {
        assert!(
            Instant::now() < deadline,
            "prometheus not ready: {}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    prometheus
}

/// The series of an instant query (`/api/v1/query`), by their labels and value.
fn query(port: u16, promql: &str) -> Vec<(Value, f64)> {
    let Some((200, body)) = get(port, &format!("/api/v1/query?query={promql}")) else { return vec![] };
    let Ok(v) = serde_json::from_str::<Value>(&body) else { return vec![] };
    let series = v["data"]["result"].as_array().cloned().unwrap_or_default();
    series.into_iter().map(|s| (s["metric"].clone(), s["value"][1].as_str().and_then(|x| x.parse().ok()).unwrap_or(f64::NAN))).collect()
}

/// Poll a query until `found` accepts its series (≤ 60 s).
fn wait_query(port: u16, promql: &str, found: impl Fn(&[(Value, f64)]) -> bool) -> Vec<(Value, f64)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let series = query(port, promql);
        if found(&series) || Instant::now() > deadline {
            return series;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
#[cfg_attr(not_root, ignore = "needs root: loads eBPF programs and creates network namespaces")]
fn prometheus_scrapes_the_verdict_of_a_lab_fault_from_serve() {
    require_root();
    setup();
    let dir = tempdir("metrics");
    let (metrics_port, prom_port) = free_ports();
    let mut lab = Lab::new().unwrap();
    lab.start_upstream("ok").unwrap();
    lab.start_gateway(GatewayKind::Nginx).unwrap();
    let traces = dir.join("traces");
    let config = dir.join("upstrace.toml");
    std::fs::write(
        &config,
        format!("comm = [\"nginx\"]\nmetrics_addr = \"{metrics_port}\"\nrecord_dir = \"{}\"\nstats_interval = 1.0\n", traces.display()),
    )
    .unwrap();
    let service = Service::start(&["--config", config.to_str().unwrap()]);
    assert!(service.stderr().contains(&format!("metrics at http://127.0.0.1:{metrics_port}/metrics")), "{}", service.stderr());
    let prometheus = start_prometheus(&dir, &format!("127.0.0.1:{metrics_port}"), prom_port);

    // Healthy traffic first (attempts and latencies), then a firewall that rejects with RSTs.
    for _ in 0..2 {
        assert_eq!(lab.request("/").unwrap().0, 200);
    }
    lab.inject(Fault::FwRejectTcpReset).unwrap();
    for _ in 0..3 {
        assert_eq!(lab.request("/").unwrap().0, 502);
    }
    let upstream = lab.upstream_addr();
    let verdicts = wait_query(prom_port, "upstrace_verdicts_total", |series| {
        series.iter().any(|(m, v)| m["cause"] == "rejected" && m["upstream"] == upstream.as_str() && *v >= 3.0)
    });
    let rejected: Vec<_> = verdicts.iter().filter(|(m, _)| m["cause"] == "rejected").collect();
    assert_eq!(rejected.len(), 1, "one series for the fault: {verdicts:?}\nservice: {}", service.stderr());
    let (labels, value) = rejected[0];
    assert_eq!(*value, 3.0, "one verdict per 502: {labels}");
    assert_eq!(
        (&labels["gateway"], &labels["status"], &labels["class"], &labels["job"]),
        (&Value::from("nginx"), &Value::from("502"), &Value::from("firewall"), &Value::from("upstrace")),
        "{labels}"
    );
    // The upstream table's data came through the same scrape.
    let attempts = wait_query(prom_port, "upstrace_upstream_attempts_total", |s| {
        s.iter().any(|(m, v)| m["upstream"] == upstream.as_str() && *v >= 3.0)
    });
    assert!(attempts.iter().any(|(m, v)| m["upstream"] == upstream.as_str() && *v >= 3.0), "{attempts:?}");
    // Connect durations come from the connections whose story was shipped: healthy ones stay in
    // the kernel (issue 12), and these were rejected. Nothing is asserted on that histogram here.
    let health = query(prom_port, "upstrace_events_total");
    assert!(health.first().is_some_and(|(_, v)| *v > 0.0), "upstrace's own health: {health:?}");
    let ring = query(prom_port, "upstrace_ring_buffer_size_bytes");
    assert_eq!(ring.first().map(|(_, v)| *v), Some(4194304.0), "the ring buffer's fill is read: {ring:?}");
    drop(prometheus);

    // A hangup reloads nothing and stops nothing.
    unsafe { libc::kill(service.child.0.id() as i32, libc::SIGHUP) };
    assert!(service.wait_stderr(Duration::from_secs(5), "upstrace: SIGHUP ignored"), "{}", service.stderr());
    let stderr_before = service.stderr();
    let code = service.terminate();
    assert_eq!(code, 0, "a clean stop on SIGTERM: {stderr_before}");
    let log_verdicts = stderr_before.lines().filter(|l| l.starts_with("upstrace: verdict: 502 from nginx")).count();
    assert_eq!(log_verdicts, 3, "one log line per verdict: {stderr_before}");

    // The recording: private directory and file, verdicts inside, header values masked.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let trace = traces.join("upstrace.jsonl");
    assert_eq!((mode(&traces), mode(&trace)), (0o700, 0o600));
    let text = std::fs::read_to_string(&trace).unwrap();
    assert_eq!(text.lines().filter(|l| l.contains("\"type\":\"verdict\"")).count(), 3);
    drop(lab);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[cfg_attr(not_root, ignore = "needs root: loads eBPF programs")]
fn a_metrics_port_in_use_is_one_line_and_tracing_goes_on() {
    require_root();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(upstrace_binary().unwrap())
        .args(["--comm", "no-such-gateway-x", "--wait", "--for", "2", "--stats-interval", "1", "--json", "--metrics-addr", &addr])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let about: Vec<&str> = stderr.lines().filter(|l| l.contains("metrics")).collect();
    assert_eq!(about.len(), 1, "one line: {stderr}");
    assert!(about[0].starts_with(&format!("upstrace: warning: cannot serve metrics on {addr}: Address already in use")), "{stderr}");
    assert!(about[0].ends_with("tracing continues without them"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.lines().filter(|l| l.contains("\"type\":\"stats\"")).count() >= 2, "tracing went on: {stdout}");
    assert!(!stderr.contains("panicked"));
}

fn serve_error(config: &str) -> (Option<i32>, String) {
    let dir = tempdir("badconf");
    let path = dir.join("upstrace.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(upstrace_binary().unwrap()).args(["serve", "--config"]).arg(&path).output().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_bad_config_file_is_one_clear_line() {
    for (config, needle) in [
        ("comm = [\"nginx\"]\nlisten = \"x\"\n", "line 2: unknown field `listen`, expected one of"),
        ("comm = [\"nginx\"\n", "line 1"),
        ("metrics_addr = \"somewhere\"\n", "invalid listen address \"somewhere\""),
    ] {
        let (code, stderr) = serve_error(config);
        assert_ne!(code, Some(0), "{stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "exactly one line: {stderr:?}");
        assert!(lines[0].starts_with("upstrace: error: config file ") && lines[0].contains(needle), "{needle:?} not in {stderr:?}");
    }
    let out = Command::new(upstrace_binary().unwrap()).args(["serve", "--config", "/nonexistent/upstrace.toml"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("upstrace: error: cannot read config file /nonexistent/upstrace.toml: "), "{stderr}");
}
