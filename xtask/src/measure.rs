//! The measuring shared by the benchmarks: load runs from the gateway's namespace, upstrace
//! started and stopped around them, CPU time of a process, and the statistics of a series.
use std::{process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};
use upstrace_lab::{
    lab::{ClientMode, GATEWAY_PORT},
    tracer::Tracer,
};

pub(crate) fn parse_ms(v: &str) -> Option<f64> {
    let v = v.trim();
    let (num, mult) = if let Some(x) = v.strip_suffix("us") {
        (x, 0.001)
    } else if let Some(x) = v.strip_suffix("ms") {
        (x, 1.0)
    } else if let Some(x) = v.strip_suffix('s') {
        (x, 1000.0)
    } else {
        (v, 1.0)
    };
    num.parse::<f64>().ok().map(|n| n * mult)
}

/// The gateway's usual client-facing address (in its namespace).
pub(crate) const LOOPBACK: &str = "127.0.0.1";

/// One load run: requests per second and a latency figure (wrk's p99; h2load gives no
/// percentiles, so its mean).
#[derive(Clone, Copy)]
pub(crate) struct Load {
    pub rps: f64,
    pub latency_ms: f64,
    /// Requests completed in the run.
    pub requests: f64,
}

/// A load run from inside the gateway's namespace: `conns` connections to `addr` (on the
/// gateway's port) for `secs`.
pub(crate) fn load(gw_ns: &str, addr: &str, mode: ClientMode, secs: u64, conns: u32) -> Result<Load> {
    let url = format!("{}://{addr}:{GATEWAY_PORT}/", if mode.tls() { "https" } else { "http" });
    load_url(gw_ns, &url, mode, secs, conns)
}

/// The same, to any URL reachable from the gateway's namespace.
pub(crate) fn load_url(gw_ns: &str, url: &str, mode: ClientMode, secs: u64, conns: u32) -> Result<Load> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", gw_ns]);
    if mode == ClientMode::TlsH2 {
        cmd.args(["h2load", &format!("-c{conns}"), "-m4", "-t2", "-D", &secs.to_string(), url]);
    } else {
        cmd.args(["wrk", "-t2", &format!("-c{conns}"), &format!("-d{secs}s"), "--latency", url]);
    }
    let out = cmd.output().context("running the load generator")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let number = |s: &str| s.trim().trim_end_matches(|c: char| c.is_alphabetic()).parse::<f64>().ok();
    let parsed = if mode == ClientMode::TlsH2 {
        // "finished in 5.00s, 12345.67 req/s, ..." and "time for request: min max mean sd".
        let rps = text.lines().find_map(|l| l.split(", ").find_map(|p| p.strip_suffix(" req/s")).and_then(number));
        let mean =
            text.lines().find_map(|l| l.strip_prefix("time for request:")).and_then(|l| l.split_whitespace().nth(2)).and_then(parse_ms);
        let done = text
            .lines()
            .find_map(|l| l.strip_prefix("requests:"))
            .and_then(|l| l.split(',').find_map(|p| p.trim().strip_suffix(" succeeded")))
            .and_then(number);
        rps.zip(mean).map(|(rps, latency_ms)| Load { rps, latency_ms, requests: done.unwrap_or(rps * secs as f64) })
    } else {
        let rps = text.lines().find_map(|l| l.strip_prefix("Requests/sec:")).and_then(number);
        let p99 = text.lines().find_map(|l| l.trim().strip_prefix("99%")).and_then(parse_ms);
        let done = text.lines().find_map(|l| l.trim().split_once(" requests in ").map(|x| x.0)).and_then(number);
        rps.zip(p99).map(|(rps, latency_ms)| Load { rps, latency_ms, requests: done.unwrap_or(rps * secs as f64) })
    };
    match parsed {
        Some(l) => Ok(l),
        None => bail!("cannot read the load generator's output:\n{text}"),
    }
}

/// upstrace on the gateway, keeping only its stats lines (one a second); `bpf_stats` also
/// counts each program's runs and run time, which costs two clock reads per run: throughput
/// is measured without it.
pub(crate) fn start_tracer(pid: u32, bpf_stats: bool) -> Result<Tracer> {
    let pid = pid.to_string();
    let mut args = vec!["--pid", &pid, "--no-events", "--stats-interval", "1"];
    if bpf_stats {
        args.push("--bpf-stats");
    }
    let tracer = Tracer::start_keeping(&args, |line| line.starts_with("{\"type\":\"stats\""))?;
    std::thread::sleep(Duration::from_millis(500));
    Ok(tracer)
}

/// Stop upstrace cleanly; returns its final stats line.
pub(crate) fn stop_tracer(tracer: Tracer) -> Result<serde_json::Value> {
    let (_, lines) = tracer.stop()?;
    lines.last().cloned().context("upstrace printed no stats line")
}

/// CPU time of a process so far, in clock ticks (user + system, from /proc/PID/stat).
pub(crate) fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|x| x.1).unwrap_or("").split_whitespace().collect();
    fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

pub(crate) fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Program runs per request, summed over `programs` (each with its runs per request under
/// `key` and its `avg_ns`), and the kernel's CPU µs per request: runs times average run time.
pub(crate) fn runs_and_bpf_us(programs: &[serde_json::Value], key: &str) -> (f64, f64) {
    programs.iter().fold((0.0, 0.0), |(runs, us), p| {
        let r = p[key].as_f64().unwrap_or(0.0);
        (runs + r, us + r * p["avg_ns"].as_f64().unwrap_or(0.0) / 1000.0)
    })
}

/// The middle value (the mean of the middle two for an even count): one disturbed run moves
/// it less than it moves the mean.
pub(crate) fn median(v: &[f64]) -> f64 {
    let mut sorted = v.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

pub(crate) fn spread(v: &[f64]) -> (f64, f64) {
    (v.iter().cloned().fold(f64::INFINITY, f64::min), v.iter().cloned().fold(f64::NEG_INFINITY, f64::max))
}

/// A series of ratios as results.json keeps them: mean, min and max.
pub(crate) fn series(v: &[f64]) -> serde_json::Value {
    let (min, max) = spread(v);
    serde_json::json!({"mean": mean(v), "min": min, "max": max})
}

/// The same with the median, for series of many pairs.
pub(crate) fn series_with_median(v: &[f64]) -> serde_json::Value {
    let mut s = series(v);
    s["median"] = median(v).into();
    s
}
