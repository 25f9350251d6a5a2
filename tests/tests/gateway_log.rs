//! Root tests of the gateway's own account: a real nginx's error log is found among its open
//! files and said at start, each 502 gets its line, and the log stays followed when it is
//! rotated under upstrace (logrotate's rename and USR1, then copytruncate); a real HAProxy's log
//! sent to syslog as Debian's is (chrooted, `log /dev/log`) is read from the file a real
//! rsyslogd writes it to, and a log socket nobody listens on is said at start.
use std::time::{Duration, Instant};

use serde_json::Value;
use upstrace_lab::{
    lab::{GatewayKind, HaproxyLog, Lab},
    require_root,
    tracer::Tracer,
};

fn setup() {
    // SAFETY: set before any lab or tracer thread starts.
    unsafe { std::env::set_var("UPSTRACE_LAB_UPSTREAM", env!("CARGO_BIN_EXE_upstrace-lab-upstream")) };
}

/// A refused request's verdict (the n-th), waited for.
fn nth_verdict(tracer: &Tracer, n: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let verdicts: Vec<Value> = tracer.lines().into_iter().filter(|l| l["type"] == "verdict").collect();
        if verdicts.len() >= n {
            return verdicts[n - 1].clone();
        }
        assert!(Instant::now() < deadline, "verdict {n} did not come");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_refusal_said(v: &Value, source: &str) {
    let said = &v["gateway_said"];
    assert_eq!(said["source"], source, "{v}");
    assert!(said["line"].as_str().unwrap_or("").contains("(111: Connection refused)"), "{v}");
    assert_eq!(said["agreement"], "agrees", "{v}");
}

#[test]
#[cfg_attr(not_root, ignore = "needs root: loads eBPF programs and creates network namespaces")]
fn nginx_error_log_is_followed_through_rotations() {
    require_root();
    setup();
    let mut lab = Lab::new().unwrap();
    let pid = lab.start_gateway(GatewayKind::Nginx).unwrap();
    let log = lab.gateway.as_ref().unwrap().log_path.clone();
    let source = log.display().to_string();
    let tracer = Tracer::start(&["--pid", &pid.to_string()]).unwrap();
    assert!(tracer.stderr().contains(&format!("upstrace: nginx: gateway log {source}")), "{}", tracer.stderr());

    assert_eq!(lab.request("/").unwrap().0, 502);
    assert_refusal_said(&nth_verdict(&tracer, 1), &source);

    // logrotate: the file is renamed, nginx reopens its logs on USR1 and writes a new one.
    std::fs::rename(&log, log.with_extension("log.1")).unwrap();
    unsafe { libc::kill(pid as i32, libc::SIGUSR1) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !log.exists() {
        assert!(Instant::now() < deadline, "nginx did not reopen its error log");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lab.request("/").unwrap().0, 502);
    assert_refusal_said(&nth_verdict(&tracer, 2), &source);

    // copytruncate: the same file emptied in place.
    std::fs::OpenOptions::new().write(true).truncate(true).open(&log).unwrap();
    assert_eq!(lab.request("/").unwrap().0, 502);
    assert_refusal_said(&nth_verdict(&tracer, 3), &source);

    let (_, lines) = tracer.stop().unwrap();
    let stats = lines.iter().rev().find(|l| l["type"] == "stats").expect("a stats line");
    assert_eq!(stats["gateway_log"]["matched"], 3, "{stats}");
    assert!(stats["gateway_log"]["rotations"].as_u64().unwrap_or(0) >= 2, "{stats}");
}

#[test]
#[cfg_attr(not_root, ignore = "needs root: loads eBPF programs and creates network namespaces")]
fn haproxy_log_through_syslog_is_read_where_rsyslogd_writes_it() {
    require_root();
    setup();
    let mut lab = Lab::new().unwrap();
    lab.haproxy_log = HaproxyLog::SyslogUnix;
    let pid = lab.start_gateway(GatewayKind::Haproxy).unwrap();
    let source = lab.gateway.as_ref().unwrap().log_path.display().to_string();
    let tracer = Tracer::start(&["--pid", &pid.to_string()]).unwrap();
    let start = tracer.stderr();
    assert!(start.contains(&format!("upstrace: haproxy: gateway log {source} (via rsyslogd ")), "{start}");
    assert!(start.contains(" from /dev/log)"), "the chrooted HAProxy's own name for its log socket: {start}");

    assert_eq!(lab.request("/").unwrap().0, 503);
    let v = nth_verdict(&tracer, 1);
    let said = &v["gateway_said"];
    assert_eq!(said["source"], source.as_str(), "{v}");
    assert!(said["line"].as_str().unwrap_or("").contains(" SC-- "), "{v}");
    assert!(said["matched_by"].as_array().is_some_and(|m| m.iter().any(|k| k == "pid")), "the syslog header's pid: {v}");
    assert_eq!(said["agreement"], "agrees", "{v}");
    tracer.stop().unwrap();

    // rsyslogd gone: HAProxy's lines reach no process, and upstrace says so at start.
    lab.stop_syslog_daemon();
    let tracer = Tracer::start(&["--pid", &pid.to_string()]).unwrap();
    let start = tracer.stderr();
    assert!(start.contains("no readable log"), "{start}");
    assert!(start.contains("its log sent to /dev/log reaches no process"), "{start}");
    tracer.stop().unwrap();
}
