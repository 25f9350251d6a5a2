//! Root tests for traces: a live lab run recorded and replayed gives the same verdicts; a
//! trace survives kill -9 up to the last batch; a full disk stops the recording with one
//! clear line while tracing goes on.
use std::{process::Command, time::Duration};

use serde_json::Value;
use upstrace_lab::{
    lab::{GatewayKind, Lab},
    matrix::{self, SCENARIOS},
    require_root,
    tracer::Tracer,
    upstrace_binary,
};

fn setup() {
    // SAFETY: set before any lab or tracer thread starts.
    unsafe { std::env::set_var("UPSTRACE_LAB_UPSTREAM", env!("CARGO_BIN_EXE_upstrace-lab-upstream")) };
}

fn replay_verdicts(path: &std::path::Path) -> Vec<Value> {
    let out = Command::new(upstrace_binary().unwrap()).arg("replay").arg(path).arg("--json").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "verdict")
        .collect()
}

/// What must survive the recording: the verdict, its client side, and the gateway's own line.
fn key(v: &Value) -> (Value, Value, Value, Value, Value, (Value, Value, Value), Value) {
    let client_side = (v["protocol"].clone(), v["tls"].clone(), v["stream"].clone());
    let said = v["gateway_said"]["line"].clone();
    (v["ts_ns"].clone(), v["class"].clone(), v["cause"].clone(), v["status"].clone(), v["upstream"].clone(), client_side, said)
}

#[test]
#[cfg_attr(not_root, ignore = "needs root: loads eBPF programs and creates network namespaces")]
fn live_verdicts_equal_replayed_verdicts() {
    require_root();
    setup();
    let dir = tempdir("roundtrip");
    let rows = [
        ("refused", GatewayKind::Nginx),
        ("crash-before-headers", GatewayKind::Haproxy),
        ("fw-drop", GatewayKind::Nginx),
        // The client side (HTTPS, HTTP/2 stream) survives the recording too.
        ("refused+tls-h2", GatewayKind::Haproxy),
    ];
    for (name, gw) in rows {
        let scenario = SCENARIOS.iter().find(|s| s.name == name).unwrap();
        let path = dir.join(format!("{name}.jsonl"));
        let row = matrix::run(scenario, gw, Some(&path)).unwrap();
        assert!(!row.verdicts.is_empty(), "{name}: live verdicts");
        if name == "refused" {
            assert!(row.verdicts.iter().all(|v| v["gateway_said"]["line"].is_string()), "{name}: the gateway's line");
        }
        let replayed = replay_verdicts(&path);
        assert_eq!(row.verdicts.iter().map(key).collect::<Vec<_>>(), replayed.iter().map(key).collect::<Vec<_>>(), "{name}");
        let header: Value = serde_json::from_str(std::fs::read_to_string(&path).unwrap().lines().next().unwrap()).unwrap();
        assert_eq!(header["format"], "upstrace-trace");
        assert!(header["boot_offset_ns"].as_str().unwrap().parse::<i128>().is_ok());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("upstrace-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
#[cfg_attr(not_root, ignore = "needs root: loads eBPF programs and creates network namespaces")]
fn a_trace_is_readable_after_kill_9() {
    require_root();
    setup();
    let dir = tempdir("kill9");
    let path = dir.join("t.jsonl");
    let mut lab = Lab::new().unwrap();
    let pid = lab.start_gateway(GatewayKind::Nginx).unwrap();
    let tracer = Tracer::start(&["--pid", &pid.to_string(), "--record", path.to_str().unwrap()]).unwrap();
    for _ in 0..3 {
        assert_eq!(lab.request("/").unwrap().0, 502);
    }
    tracer.wait_for(Duration::from_secs(5), |v| v["type"] == "verdict").expect("a verdict");
    std::thread::sleep(Duration::from_millis(300));
    tracer.kill9();
    let replayed = replay_verdicts(&path);
    assert!(!replayed.is_empty(), "verdicts recoverable from the trace");
    assert!(replayed.iter().all(|v| v["cause"] == "refused"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[cfg_attr(not_root, ignore = "needs root: loads eBPF programs and creates network namespaces")]
fn a_full_disk_stops_recording_not_tracing() {
    require_root();
    setup();
    let dir = tempdir("fulldisk");
    let ok = Command::new("mount").args(["-t", "tmpfs", "-o", "size=12k", "tmpfs"]).arg(&dir).status().unwrap().success();
    assert!(ok, "mounting a tiny tmpfs");
    let path = dir.join("t.jsonl");
    let mut lab = Lab::new().unwrap();
    let pid = lab.start_gateway(GatewayKind::Nginx).unwrap();
    let tracer = Tracer::start(&["--pid", &pid.to_string(), "--record", path.to_str().unwrap()]).unwrap();
    // Each refused request is a handful of events and a verdict: enough to fill 12 KiB.
    for _ in 0..15 {
        assert_eq!(lab.request("/").unwrap().0, 502);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !tracer.stderr().contains("disk full") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Tracing goes on after the disk filled up.
    assert_eq!(lab.request("/").unwrap().0, 502);
    std::thread::sleep(Duration::from_millis(300));
    let stderr = tracer.stderr();
    let (code, lines) = tracer.stop().unwrap();
    let _ = Command::new("umount").arg(&dir).status();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, 0, "upstrace kept running and exited cleanly: {stderr}");
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("disk full")).collect();
    assert_eq!(warnings.len(), 1, "one clear line: {stderr}");
    assert!(warnings[0].contains("recording stopped, tracing continues"));
    assert_eq!(lines.iter().filter(|l| l["type"] == "verdict").count(), 16, "every 502 still explained");
}
