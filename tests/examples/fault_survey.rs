//! Survey: what the kernel shows (through upstrace) for every lab fault, per gateway.
//!
//! For each gateway (nginx, HAProxy) and each scenario: a fresh lab, the upstream in the
//! scenario's mode (none for "refused"), the gateway, upstrace on the gateway pid, the fault,
//! two requests, one second of grace, then upstrace is stopped. Its output goes to
//! /tmp/survey/<scenario>-<gateway>.jsonl (stderr to .stderr), and one summary line per run is
//! printed. Runs as root:
//!
//!     CARGO_TARGET_DIR=/tmp/helper-target cargo run -p upstrace-tests --example fault_survey [FILTER...]
//!
//! FILTER words keep only scenarios whose name contains one of them. UPSTRACE_BIN and
//! UPSTRACE_LAB_UPSTREAM default to the snapshots in /tmp.
use std::{
    fmt::Write as _,
    io::Write as _,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde_json::Value;
use upstrace_lab::{
    lab::{Fault, GatewayKind, Lab},
    tracer::Tracer,
};

/// A scenario is skipped past (its remaining steps left out) once it has run this long.
const SCENARIO_BUDGET: Duration = Duration::from_secs(40);
const OUT_DIR: &str = "/tmp/survey";

#[derive(Clone, Copy)]
enum Setup {
    /// Upstream in this mode, nothing else.
    Mode(&'static str),
    /// No upstream at all: connects are refused.
    Refused,
    /// Upstream "ok" and this network fault.
    Fault(Fault),
    /// Upstream "no-accept" (backlog 1) with its accept queue filled first by idle
    /// connections from the gateway namespace, so the gateway's SYNs overflow it.
    OverloadedFull,
}

struct Scenario {
    name: &'static str,
    setup: Setup,
}

fn scenarios() -> Vec<Scenario> {
    let mut all = vec![Scenario { name: "baseline", setup: Setup::Mode("ok") }, Scenario { name: "refused", setup: Setup::Refused }];
    all.extend(Fault::ALL.iter().map(|&f| Scenario { name: f.name(), setup: Setup::Fault(f) }));
    for (name, mode) in [
        ("close-before-headers", "close-before-headers"),
        ("reset-before-headers", "reset-before-headers"),
        ("reset-partial-headers", "reset-partial-headers"),
        ("truncated-headers", "truncated-headers"),
        ("truncated-body", "truncated-body"),
        ("garbage", "garbage"),
        ("bad-header", "bad-header"),
        ("stall", "stall"),
        ("crash-before-headers", "crash-before-headers"),
        ("crash-mid-body", "crash-mid-body"),
        ("overloaded", "no-accept"),
        ("crash-keepalive", "ok-then-crash"),
    ] {
        all.push(Scenario { name, setup: Setup::Mode(mode) });
    }
    all.push(Scenario { name: "overloaded-full", setup: Setup::OverloadedFull });
    all
}

struct Outcome {
    statuses: Vec<String>,
    lines: Vec<Value>,
    stderr: String,
    gateway_log: String,
    note: String,
    elapsed: Duration,
}

fn run(scenario: &Scenario, kind: GatewayKind) -> Result<Outcome> {
    let started = Instant::now();
    let over = || started.elapsed() > SCENARIO_BUDGET;
    let mut lab = Lab::new()?;
    let mut holders: Vec<Child> = Vec::new();
    match scenario.setup {
        Setup::Mode(mode) => drop(lab.start_upstream(mode)?),
        Setup::Fault(_) => drop(lab.start_upstream("ok")?),
        Setup::OverloadedFull => drop(lab.start_upstream("no-accept")?),
        Setup::Refused => {}
    }
    let gw_pid = lab.start_gateway(kind)?;
    let tracer = Tracer::start(&["--pid", &gw_pid.to_string()])?;
    match scenario.setup {
        Setup::Fault(fault) => lab.inject(fault)?,
        Setup::OverloadedFull => {
            // Bounded idle holders: each keeps one connection open for at most 15 s.
            for _ in 0..3 {
                holders.push(
                    Command::new("ip")
                        .args(["netns", "exec", &lab.gw_ns, "timeout", "15", "bash", "-c"])
                        .arg(format!("exec 3<>/dev/tcp/{}/{}; sleep 14", lab.up_ip, upstrace_lab::lab::UPSTREAM_PORT))
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .context("starting a connection holder")?,
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        _ => {}
    }
    let mut statuses = Vec::new();
    let mut note = String::new();
    for i in 0..2 {
        if over() {
            note = format!("budget spent after {i} requests");
            break;
        }
        if i > 0 {
            // Lets ok-then-crash die between the requests.
            std::thread::sleep(Duration::from_millis(300));
        }
        let t = Instant::now();
        let (status, curl_exit) = lab.request("/")?;
        let ms = t.elapsed().as_millis();
        statuses.push(if curl_exit == 0 { format!("{status}({ms}ms)") } else { format!("{status}/curl{curl_exit}({ms}ms)") });
    }
    std::thread::sleep(Duration::from_secs(1));
    let stderr = tracer.stderr();
    let (_code, lines) = tracer.stop()?;
    let gateway_log = lab.gateway.as_ref().map(|g| g.log()).unwrap_or_default();
    for mut h in holders {
        let _ = h.kill();
        let _ = h.wait();
    }
    lab.clear_faults();
    Ok(Outcome { statuses, lines, stderr, gateway_log, note, elapsed: started.elapsed() })
}

/// One token per event: its kind and what tells faults apart.
fn token(ev: &Value) -> String {
    let kind = ev["kind"].as_str().unwrap_or("?");
    let value = ev["value"].as_i64().unwrap_or(0);
    let port = |key: &str| ev[key].as_str().and_then(|a| a.rsplit(':').next()).and_then(|p| p.parse::<u16>().ok()).unwrap_or(0);
    // Mark the client side (curl <-> gateway on 8080) so the upstream side stands out.
    let side = if port("dst") == 8080 || port("src") == 8080 { "c:" } else { "" };
    let states = || format!("{}->{}", ev["old_state"].as_str().unwrap_or("?"), ev["new_state"].as_str().unwrap_or("?"));
    let detail = match kind {
        "state_change" => states(),
        "connect_start" => String::new(),
        "drop" => ev["reason"].as_str().unwrap_or("?").to_owned(),
        "icmp_error" => format!("{}/{}", value >> 8, value & 0xff),
        "http_status" => format!("{value}"),
        _ if value != 0 => format!("{value}"),
        _ => String::new(),
    };
    if detail.is_empty() { format!("{side}{kind}") } else { format!("{side}{kind}({detail})") }
}

/// Runs of the same token as "token*n".
fn compress(tokens: &[String]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < tokens.len() {
        let mut j = i + 1;
        while j < tokens.len() && tokens[j] == tokens[i] {
            j += 1;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&tokens[i]);
        if j - i > 1 {
            let _ = write!(out, "*{}", j - i);
        }
        i = j;
    }
    out
}

fn main() -> Result<()> {
    if !upstrace_lab::require_root("fault_survey") {
        return Ok(());
    }
    for (var, default) in [("UPSTRACE_BIN", "/tmp/upstrace-snap"), ("UPSTRACE_LAB_UPSTREAM", "/tmp/upstrace-lab-upstream-snap")] {
        if std::env::var_os(var).is_none() {
            // SAFETY: still single-threaded here.
            unsafe { std::env::set_var(var, default) };
        }
    }
    std::fs::create_dir_all(OUT_DIR)?;
    let filters: Vec<String> = std::env::args().skip(1).collect();
    let mut summary = Vec::new();
    for scenario in scenarios() {
        if !filters.is_empty() && !filters.iter().any(|f| scenario.name.contains(f.as_str())) {
            continue;
        }
        for &kind in GatewayKind::ALL {
            let base = format!("{OUT_DIR}/{}-{}", scenario.name, kind.name());
            let line = match run(&scenario, kind) {
                Ok(o) => {
                    let mut jsonl = String::new();
                    for l in &o.lines {
                        jsonl.push_str(&l.to_string());
                        jsonl.push('\n');
                    }
                    std::fs::write(format!("{base}.jsonl"), jsonl)?;
                    std::fs::write(format!("{base}.stderr"), &o.stderr)?;
                    std::fs::write(format!("{base}.gwlog"), &o.gateway_log)?;
                    let tokens: Vec<String> = o.lines.iter().filter(|l| l["type"] == "event").map(token).collect();
                    let others: Vec<&str> = o.lines.iter().filter_map(|l| l["type"].as_str()).filter(|t| *t != "event").collect();
                    let mut other_counts: Vec<(String, usize)> = Vec::new();
                    for t in others {
                        match other_counts.iter_mut().find(|(n, _)| n == t) {
                            Some((_, c)) => *c += 1,
                            None => other_counts.push((t.to_owned(), 1)),
                        }
                    }
                    let others = other_counts.iter().map(|(n, c)| format!("{n}={c}")).collect::<Vec<_>>().join(",");
                    format!(
                        "{:<24} {:<8} [{}] {:.1}s {}{} | {}",
                        scenario.name,
                        kind.name(),
                        o.statuses.join(" "),
                        o.elapsed.as_secs_f64(),
                        others,
                        if o.note.is_empty() { String::new() } else { format!(" NOTE {}", o.note) },
                        compress(&tokens)
                    )
                }
                Err(e) => format!("{:<24} {:<8} ERROR {e:#}", scenario.name, kind.name()),
            };
            println!("{line}");
            let _ = std::io::stdout().flush();
            summary.push(line);
        }
    }
    std::fs::write(format!("{OUT_DIR}/summary.txt"), summary.join("\n") + "\n")?;
    Ok(())
}
