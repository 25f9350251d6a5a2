//! Offline: recorded traces of every fault-matrix row (tests/fixtures, made by
//! `cargo xtask lab --save-traces tests/fixtures`) replayed through the real `upstrace replay`
//! must give the verdicts the matrix expects. No root, no kernel: the engine on recorded streams.
use std::{path::Path, process::Command};

use serde_json::Value;
use upstrace_lab::{
    lab::GatewayKind,
    matrix::{Expect, SCENARIOS, client_side_mismatch},
    upstrace_binary,
};

fn replay(path: &Path, extra: &[&str]) -> (i32, Vec<Value>, String) {
    let bin = upstrace_binary().expect("upstrace built");
    let out = Command::new(bin).arg("replay").arg(path).arg("--json").args(extra).output().unwrap();
    let lines = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    (out.status.code().unwrap_or(-1), lines, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `upstrace report FILE`: (exit code, Markdown, stderr).
fn report(path: &Path) -> (i32, String, String) {
    let bin = upstrace_binary().expect("upstrace built");
    let out = Command::new(bin).arg("report").arg(path).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

#[test]
fn recorded_faults_replay_to_the_expected_verdicts() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for s in SCENARIOS {
        for gw in GatewayKind::ALL.iter().copied().filter(|&gw| s.runs_on(gw)) {
            let path = fixtures().join(format!("{}-{}.jsonl", s.name, gw.name()));
            assert!(path.exists(), "missing fixture {}", path.display());
            let (code, lines, err) = replay(&path, &[]);
            assert_eq!(code, 0, "{}: {err}", path.display());
            let verdicts: Vec<&Value> = lines.iter().filter(|l| l["type"] == "verdict").collect();
            let ok = match s.expect(gw) {
                Expect::NoVerdict | Expect::NoAnswer => verdicts.is_empty(),
                Expect::MaybeVerdict { .. } if verdicts.is_empty() => true,
                Expect::Verdict { class, causes, delivered } | Expect::MaybeVerdict { class, causes, delivered } => verdicts
                    .last()
                    .is_some_and(|v| v["class"] == class && causes.iter().any(|c| v["cause"] == *c) && v["delivered"] == delivered),
            };
            let summary = verdicts.last().and_then(|v| v["summary"].as_str()).unwrap_or_default();
            if let Some(words) = s.says(gw).filter(|w| !summary.contains(w)) {
                failures.push(format!("{}: summary lacks \"{words}\": {summary}", path.display()));
            }
            if !ok {
                failures.push(format!(
                    "{}: {:?}",
                    path.display(),
                    verdicts.iter().map(|v| format!("{}/{}", v["class"], v["cause"])).collect::<Vec<_>>()
                ));
            }
            // The client side (protocol, TLS, HTTP/2 stream) comes back from the trace too.
            let verdicts: Vec<Value> = verdicts.into_iter().cloned().collect();
            if let Some(why) = client_side_mismatch(s.client(), &verdicts) {
                failures.push(format!("{}: {why}", path.display()));
            }
            checked += 1;
        }
    }
    assert!(checked >= 40);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn replayed_verdicts_equal_the_recorded_live_verdicts() {
    for name in [
        "refused-nginx",
        "crash-before-headers-haproxy",
        "fw-drop-nginx",
        "truncated-body-nginx",
        "refused+tls-h2-haproxy",
        "stall+tls-h1-nginx",
    ] {
        let path = fixtures().join(format!("{name}.jsonl"));
        let recorded: Vec<Value> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["type"] == "verdict")
            .collect();
        let (_, lines, _) = replay(&path, &[]);
        let replayed: Vec<&Value> = lines.iter().filter(|l| l["type"] == "verdict").collect();
        assert!(!recorded.is_empty(), "{name}: the live run recorded verdicts");
        let key = |v: &Value| (v["ts_ns"].clone(), v["class"].clone(), v["cause"].clone(), v["status"].clone());
        assert_eq!(recorded.iter().map(key).collect::<Vec<_>>(), replayed.iter().map(|v| key(v)).collect::<Vec<_>>(), "{name}");
        // The client side (protocol, TLS, HTTP/2 stream), where the live run named it: fixtures
        // recorded before verdicts carried it have none to compare.
        if recorded.iter().any(|v| v.get("protocol").is_some()) {
            let side = |v: &Value| (v["protocol"].clone(), v["tls"].clone(), v["stream"].clone());
            assert_eq!(recorded.iter().map(side).collect::<Vec<_>>(), replayed.iter().map(|v| side(v)).collect::<Vec<_>>(), "{name}");
        }
    }
}

#[test]
fn bad_trace_files_give_one_clear_line() {
    let dir = std::env::temp_dir().join(format!("upstrace-bad-traces-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases: [(&str, &[u8], &str); 4] = [
        ("empty.jsonl", b"", "is empty"),
        ("garbage.jsonl", b"\x00\x01 not json\n{}\n", "not a trace line"),
        ("wrong-header.jsonl", b"{\"type\":\"header\",\"format\":\"pcap\"}\n", "not an upstrace trace"),
        ("bad-event.jsonl", b"{\"type\":\"event\",\"kind\":\"warp_drive\"}\n", "malformed event"),
    ];
    for (name, content, needle) in cases {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        let (code, _, err) = replay(&path, &[]);
        assert_ne!(code, 0, "{name}");
        assert_eq!(err.lines().count(), 1, "{name}: one line: {err:?}");
        assert!(err.contains(needle) && !err.contains("panicked"), "{name}: {err}");
        // The report reads traces with the same reader, and fails the same way.
        let (code, markdown, err) = report(&path);
        assert_ne!(code, 0, "report {name}");
        assert!(markdown.is_empty(), "report {name}: no half report on stdout: {markdown}");
        assert_eq!(err.lines().count(), 1, "report {name}: one line: {err:?}");
        assert!(err.contains(needle) && !err.contains("panicked"), "report {name}: {err}");
    }
    // A cut-short last line (writer killed mid-line) is reported and ignored.
    let good = std::fs::read(fixtures().join("refused-nginx.jsonl")).unwrap();
    let cut = &good[..good.len() - 7];
    let path = dir.join("cut.jsonl");
    std::fs::write(&path, cut).unwrap();
    let (code, lines, err) = replay(&path, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("cut short"), "{err}");
    assert!(lines.iter().any(|l| l["type"] == "verdict"));
    let (code, markdown, err) = report(&path);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("cut short"), "{err}");
    assert!(markdown.contains("refused"), "the report still covers the complete lines: {markdown}");
    assert!(markdown.contains("last line was cut short"), "{markdown}");
    let (code, _, err) = replay(&dir.join("does-not-exist.jsonl"), &[]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot open trace"), "{err}");
    let (code, _, err) = report(&dir.join("does-not-exist.jsonl"));
    assert_ne!(code, 0);
    assert!(err.contains("cannot open trace") && err.lines().count() == 1, "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn huge_traces_stream_and_huge_lines_are_refused() {
    let dir = std::env::temp_dir().join(format!("upstrace-huge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // ~25 MB of real events: the replay streams it (it never loads the file whole).
    let events: String = std::fs::read_to_string(fixtures().join("refused-nginx.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"type\":\"event\""))
        .map(|l| format!("{l}\n"))
        .collect();
    let path = dir.join("huge.jsonl");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        while f.get_ref().metadata().unwrap().len() < 25 << 20 {
            f.write_all(events.as_bytes()).unwrap();
            f.flush().unwrap();
        }
    }
    let started = std::time::Instant::now();
    let bin = upstrace_binary().unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v 1048576; {} replay {} --json > /dev/null", bin.display(), path.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(started.elapsed() < std::time::Duration::from_secs(120));
    let report = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v 1048576; {} report {} > /dev/null", bin.display(), path.display()))
        .output()
        .unwrap();
    assert!(report.status.success(), "{}", String::from_utf8_lossy(&report.stderr));

    // One 20 MB line without a newline: refused with one line, not swallowed.
    let path = dir.join("one-line.jsonl");
    std::fs::write(&path, vec![b'x'; 20 << 20]).unwrap();
    let (code, _, err) = replay(&path, &[]);
    assert_ne!(code, 0);
    assert!(err.contains("longer than 16 MiB"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The gateway's own line recorded in a trace's verdict comes back on replay and in the report,
/// judged again against the re-derived verdict; a trace recorded before has none.
#[test]
fn recorded_gateway_lines_come_back_on_replay() {
    let fixture = fixtures().join("refused-nginx.jsonl");
    let (_, lines, _) = replay(&fixture, &[]);
    let verdict = lines.iter().rev().find(|l| l["type"] == "verdict").expect("a verdict").clone();
    assert!(verdict.get("gateway_said").is_none(), "an old trace has no gateway line");
    let dir = std::env::temp_dir().join(format!("upstrace-said-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let with_line = |says: &str| {
        let mut recorded = verdict.clone();
        recorded["gateway_said"] = serde_json::json!({
            "source": "/var/log/nginx/error.log",
            "line": "2026/11/28 16:53:43 [error] 7#7: *2 connect() failed (111: Connection refused) while connecting to upstream",
            "matched_by": ["time", "pid", "client", "upstream"],
            "says": says,
            "agreement": "agrees",
        });
        let path = dir.join(format!("{says}.jsonl"));
        let mut text = std::fs::read_to_string(&fixture).unwrap();
        text.push_str(&format!("{recorded}\n"));
        std::fs::write(&path, text).unwrap();
        path
    };
    let agreeing = with_line("refused");
    let (code, lines, err) = replay(&agreeing, &[]);
    assert_eq!(code, 0, "{err}");
    let v = lines.iter().rev().find(|l| l["type"] == "verdict").unwrap();
    assert_eq!(v["gateway_said"]["agreement"], "agrees", "{v}");
    assert_eq!(v["gateway_said"]["source"], "/var/log/nginx/error.log");
    let (_, md, _) = report(&agreeing);
    assert!(md.contains("nginx said: `2026/11/28") && md.contains("the kernel saw: upstream/refused (they agree)"), "{md}");
    // The same line naming another cause is a finding, judged against the replayed verdict.
    let (_, lines, _) = replay(&with_line("head-too-large"), &[]);
    let v = lines.iter().rev().find(|l| l["type"] == "verdict").unwrap();
    assert_eq!(v["gateway_said"]["agreement"], "disagrees");
    assert!(v["summary"].as_str().unwrap().contains("nginx's own log disagrees: it says \"upstream sent too big header\""), "{v}");
    std::fs::remove_dir_all(&dir).unwrap();
}
