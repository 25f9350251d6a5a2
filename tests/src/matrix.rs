//! The fault matrix: every scenario against every gateway, with the verdict upstrace should
//! give. Shared by `cargo xtask lab` (prints the table) and the root integration tests
//! (assert it). Each row runs in a fresh lab and stops by itself.
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::{
    lab::{Fault, GatewayKind, Lab, UPSTREAM_PORT},
    tracer::Tracer,
};

#[derive(Debug, Clone, Copy)]
pub enum Setup {
    /// Nothing listens on the upstream port.
    NoUpstream,
    /// The lab upstream in this mode.
    Mode(&'static str),
    /// A healthy upstream and this fault.
    Fault(Fault),
    /// Upstream answers once on a keep-alive connection, then dies; a second request follows.
    KeepaliveCrash,
    /// The upstream never accepts and its tiny backlog is already full.
    BacklogFull,
    /// The upstream is a unix socket, in this mode; `None`: the socket file does not exist.
    Unix(Option<&'static str>),
    /// A unix socket whose server has gone: the file is there, nothing listens.
    UnixAbandoned,
}

#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub name: &'static str,
    pub setup: Setup,
}

/// What upstrace should say about a scenario on a gateway.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// One verdict for the last request with this class and one of these causes.
    Verdict { class: &'static str, causes: &'static [&'static str], delivered: &'static str },
    /// The gateway answers no 5xx and nothing is cut short: no verdict at all.
    NoVerdict,
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario { name: "refused", setup: Setup::NoUpstream },
    Scenario { name: "crash-before-headers", setup: Setup::Mode("crash-before-headers") },
    Scenario { name: "crash-mid-body", setup: Setup::Mode("crash-mid-body") },
    Scenario { name: "crash-keepalive", setup: Setup::KeepaliveCrash },
    Scenario { name: "reset-before-headers", setup: Setup::Mode("reset-before-headers") },
    Scenario { name: "reset-partial-headers", setup: Setup::Mode("reset-partial-headers") },
    Scenario { name: "truncated-headers", setup: Setup::Mode("truncated-headers") },
    Scenario { name: "truncated-body", setup: Setup::Mode("truncated-body") },
    Scenario { name: "garbage", setup: Setup::Mode("garbage") },
    Scenario { name: "bad-header", setup: Setup::Mode("bad-header") },
    Scenario { name: "stall", setup: Setup::Mode("stall") },
    Scenario { name: "overloaded", setup: Setup::BacklogFull },
    Scenario { name: "fw-drop", setup: Setup::Fault(Fault::FwDropSyn) },
    Scenario { name: "fw-reject-port-unreach", setup: Setup::Fault(Fault::FwRejectPortUnreachable) },
    Scenario { name: "fw-reject-admin-prohib", setup: Setup::Fault(Fault::FwRejectAdminProhibited) },
    Scenario { name: "fw-reject-tcp-reset", setup: Setup::Fault(Fault::FwRejectTcpReset) },
    Scenario { name: "link-down-upstream", setup: Setup::Fault(Fault::LinkDownUpstream) },
    Scenario { name: "link-down-gateway", setup: Setup::Fault(Fault::LinkDownGateway) },
    Scenario { name: "route-blackhole", setup: Setup::Fault(Fault::RouteBlackhole) },
    Scenario { name: "route-unreachable", setup: Setup::Fault(Fault::RouteUnreachable) },
    Scenario { name: "route-prohibit", setup: Setup::Fault(Fault::RouteProhibit) },
    Scenario { name: "unreachable-host", setup: Setup::Fault(Fault::UnreachableHost) },
    Scenario { name: "loss", setup: Setup::Fault(Fault::Loss) },
    Scenario { name: "loss-stall", setup: Setup::Fault(Fault::LossStall) },
    Scenario { name: "unix-missing", setup: Setup::Unix(None) },
    Scenario { name: "unix-refused", setup: Setup::UnixAbandoned },
    Scenario { name: "unix-crash-before-headers", setup: Setup::Unix(Some("crash-before-headers")) },
    Scenario { name: "unix-truncated-body", setup: Setup::Unix(Some("truncated-body")) },
    Scenario { name: "unix-bad-header", setup: Setup::Unix(Some("bad-header")) },
    Scenario { name: "unix-stall", setup: Setup::Unix(Some("stall")) },
];

const fn v(class: &'static str, causes: &'static [&'static str]) -> Expect {
    Expect::Verdict { class, causes, delivered: "status" }
}

const fn cut(causes: &'static [&'static str]) -> Expect {
    Expect::Verdict { class: "upstream", causes, delivered: "truncated" }
}

impl Scenario {
    pub fn expect(&self, gw: GatewayKind) -> Expect {
        match self.name {
            "refused" => v("upstream", &["refused"]),
            "crash-before-headers" => v("upstream", &["crashed"]),
            "crash-mid-body" => cut(&["crashed"]),
            "crash-keepalive" => v("upstream", &["crashed"]),
            "reset-before-headers" | "reset-partial-headers" => v("upstream", &["reset"]),
            "truncated-headers" => v("upstream", &["closed-early"]),
            "truncated-body" => cut(&["closed-early"]),
            // nginx passes garbage on as HTTP/0.9: the client gets no 5xx.
            "garbage" if gw == GatewayKind::Nginx => Expect::NoVerdict,
            "garbage" | "bad-header" => v("upstream", &["invalid-response"]),
            "stall" => v("upstream", &["stalled"]),
            "overloaded" => v("upstream", &["overloaded"]),
            "fw-drop" => v("firewall", &["dropped"]),
            "fw-reject-port-unreach" | "fw-reject-admin-prohib" | "fw-reject-tcp-reset" => v("firewall", &["rejected"]),
            // ARP gives up after ~3 s, later than the gateway's 2 s connect timeout.
            "link-down-upstream" | "unreachable-host" => v("network", &["unreachable", "timeout"]),
            "link-down-gateway" | "route-blackhole" | "route-unreachable" | "route-prohibit" => v("network", &["no-route"]),
            // TCP recovers from this loss: slow 200s, nothing to explain.
            "loss" => Expect::NoVerdict,
            "loss-stall" => v("network", &["loss"]),
            "unix-missing" => v("upstream", &["no-socket-file"]),
            "unix-refused" => v("upstream", &["refused"]),
            // No listener is known for a unix socket, so its server's death is not named.
            "unix-crash-before-headers" => v("upstream", &["closed-early", "crashed"]),
            // A known gap: when the server's close arrives with the data, HAProxy learns it
            // from epoll (EPOLLRDHUP) without reading the EOF, and a unix socket has no state
            // change to show it, so no hook sees the connection end (README, unix sockets).
            "unix-truncated-body" if gw == GatewayKind::Haproxy => Expect::NoVerdict,
            "unix-truncated-body" => cut(&["closed-early"]),
            "unix-bad-header" => v("upstream", &["invalid-response"]),
            "unix-stall" => v("upstream", &["stalled"]),
            other => unreachable!("scenario {other} has no expectation"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RowResult {
    pub scenario: &'static str,
    pub gateway: GatewayKind,
    pub statuses: Vec<u16>,
    pub expect: Expect,
    pub verdicts: Vec<Value>,
    pub pass: bool,
    pub why: String,
    pub gateway_log: String,
    pub lost: u64,
}

impl RowResult {
    /// "class/cause" of the verdict that decides the row.
    pub fn got(&self) -> String {
        match self.verdicts.last() {
            Some(v) => format!(
                "{}/{}{}",
                v["class"].as_str().unwrap_or("?"),
                v["cause"].as_str().unwrap_or("?"),
                if v["delivered"] == "truncated" { " (truncated)" } else { "" }
            ),
            None => "no verdict".into(),
        }
    }

    pub fn expected(&self) -> String {
        match &self.expect {
            Expect::Verdict { class, causes, delivered } => {
                format!("{class}/{}{}", causes.join("|"), if *delivered == "truncated" { " (truncated)" } else { "" })
            }
            Expect::NoVerdict => "no verdict".into(),
        }
    }
}

/// Run one row: fresh lab, gateway, tracer; inject; request; compare. `record` keeps the
/// trace (a fixture for offline tests).
pub fn run(scenario: &Scenario, gw: GatewayKind, record: Option<&Path>) -> Result<RowResult> {
    let mut lab = Lab::new()?;
    lab.unix_upstream = matches!(scenario.setup, Setup::Unix(_) | Setup::UnixAbandoned);
    let mut holders: Vec<Child> = Vec::new();
    match scenario.setup {
        Setup::Unix(None) => {}
        Setup::Unix(Some(mode)) => lab.start_upstream(mode)?,
        Setup::UnixAbandoned => {
            lab.start_upstream("ok")?;
            lab.stop_upstream();
        }
        Setup::NoUpstream => {}
        Setup::Mode(mode) => lab.start_upstream(mode)?,
        Setup::Fault(_) => lab.start_upstream("ok")?,
        Setup::KeepaliveCrash => lab.start_upstream("ok-then-crash")?,
        Setup::BacklogFull => lab.start_upstream("no-accept")?,
    }
    let pid = lab.start_gateway(gw)?;
    let mut args = vec!["--pid".to_string(), pid.to_string()];
    if let Some(path) = record {
        args.push("--record".into());
        args.push(path.display().to_string());
    }
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let tracer = Tracer::start(&arg_refs)?;
    match scenario.setup {
        Setup::Fault(fault) => lab.inject(fault)?,
        Setup::BacklogFull => {
            // Fill the never-accepted backlog from the gateway's side (bounded: 15 s each).
            for _ in 0..3 {
                holders.push(
                    Command::new("ip")
                        .args(["netns", "exec", &lab.gw_ns, "timeout", "15", "bash", "-c"])
                        .arg(format!("exec 3<>/dev/tcp/{}/{UPSTREAM_PORT}; sleep 14", lab.up_ip))
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .context("starting a backlog holder")?,
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        _ => {}
    }
    let mut statuses = Vec::new();
    let requests = if matches!(scenario.setup, Setup::KeepaliveCrash) { 2 } else { 1 };
    for i in 0..requests {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(300));
        }
        statuses.push(lab.request("/")?.0);
    }
    let expect = scenario.expect(gw);
    // Verdicts come within ~30 ms of a status and ~200 ms after a cut-short response.
    let deadline = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < deadline {
        if !matches!(expect, Expect::NoVerdict)
            && count_verdicts(&tracer.lines()) >= 1
            && Instant::now() + Duration::from_millis(1100) > deadline
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, lines) = tracer.stop()?;
    for mut h in holders {
        let _ = h.kill();
        let _ = h.wait();
    }
    let verdicts: Vec<Value> = lines.iter().filter(|l| l["type"] == "verdict").cloned().collect();
    let lost = lines.iter().rev().find(|l| l["type"] == "stats").and_then(|s| s["lost_total"].as_u64()).unwrap_or(0);
    let (pass, why) = judge_row(&expect, &statuses, &verdicts);
    let gateway_log = lab.gateway.as_ref().map(|g| g.log()).unwrap_or_default();
    Ok(RowResult { scenario: scenario.name, gateway: gw, statuses, expect, verdicts, pass, why, gateway_log, lost })
}

fn count_verdicts(lines: &[Value]) -> usize {
    lines.iter().filter(|l| l["type"] == "verdict").count()
}

fn judge_row(expect: &Expect, statuses: &[u16], verdicts: &[Value]) -> (bool, String) {
    let fives = statuses.iter().filter(|s| **s >= 500).count();
    match expect {
        Expect::NoVerdict => {
            if verdicts.is_empty() {
                (true, String::new())
            } else {
                (false, format!("expected no verdict, got {}", verdicts.len()))
            }
        }
        Expect::Verdict { class, causes, delivered } => {
            let status_verdicts = verdicts.iter().filter(|v| v["delivered"] == "status").count();
            if status_verdicts != fives {
                return (false, format!("{fives} 5xx answers but {status_verdicts} status verdicts"));
            }
            let Some(last) = verdicts.last() else { return (false, "no verdict".into()) };
            let ok = last["class"] == *class && causes.iter().any(|c| last["cause"] == *c) && last["delivered"] == *delivered;
            if ok { (true, String::new()) } else { (false, format!("summary: {}", last["summary"].as_str().unwrap_or(""))) }
        }
    }
}

/// One line of the matrix table.
pub fn table_line(r: &RowResult) -> String {
    format!(
        "{:<24} {:<8} {:<10} {:<38} {:<38} {}",
        r.scenario,
        r.gateway.name(),
        r.statuses.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(","),
        r.expected(),
        r.got(),
        if r.pass { "pass".to_string() } else { format!("FAIL {}", r.why) }
    )
}

pub fn table_header() -> String {
    format!("{:<24} {:<8} {:<10} {:<38} {:<38} {}", "scenario", "gateway", "status", "expected", "upstrace", "result")
}
