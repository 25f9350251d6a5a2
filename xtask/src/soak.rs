//! `cargo xtask soak --minutes N`: the lab at steady load with rolling faults. Checks that
//! every 5xx in the gateway's access log has exactly one verdict, that no event was lost, and
//! that upstrace's memory stays flat (< 10% growth after warm-up). Bounded in time and count;
//! traffic stays inside the lab's namespaces.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use upstrace_lab::{
    lab::{Fault, GATEWAY_PORT, GatewayKind, Lab, Step},
    rss_kib,
    tracer::Tracer,
};

const ROLL: &[Step] = &[
    Step::Healthy,
    Step::NoUpstream,
    Step::Mode("reset-before-headers"),
    Step::Healthy,
    Step::Mode("close-before-headers"),
    Step::Fault(Fault::FwRejectTcpReset),
    Step::Mode("crash-before-headers"),
    Step::Fault(Fault::RouteBlackhole),
    Step::Mode("bad-header"),
    Step::Fault(Fault::FwRejectAdminProhibited),
];

pub fn run(minutes: u64, keepalive: bool) -> Result<()> {
    upstrace_lab::ensure_root("the soak")?;
    crate::use_release_build();
    let total = Duration::from_secs(minutes.max(1) * 60);
    let step_len = Duration::from_secs(6);

    let mut lab = Lab::new()?;
    lab.upstream_keepalive = keepalive;
    lab.start_upstream("ok")?;
    let gw = lab.start_gateway(GatewayKind::Nginx)?;
    let tracer = Tracer::start(&["--pid", &gw.to_string(), "--no-events", "--stats-interval", "5"])?;

    let started = Instant::now();
    let mut rss: Vec<(f64, u64)> = Vec::new();
    let mut step = 0usize;
    while started.elapsed() < total {
        lab.apply(ROLL[step % ROLL.len()])?;
        // Steady load for this step: a bounded curl loop (count and time) in the client netns.
        let secs = step_len.as_secs().min((total.saturating_sub(started.elapsed())).as_secs().max(1));
        // Its exit status is timeout's, telling only which bound ended the loop.
        Command::new("ip")
            .args(["netns", "exec", &lab.gw_ns, "timeout", &secs.to_string(), "bash", "-c"])
            .arg(format!("for i in $(seq 1 2000); do curl -s -o /dev/null --max-time 3 http://127.0.0.1:{GATEWAY_PORT}/; done"))
            .status()?;
        rss.push((started.elapsed().as_secs_f64(), rss_kib(tracer.pid())));
        step += 1;
    }
    lab.clear_faults();
    // Let the last verdicts out, then stop cleanly.
    std::thread::sleep(Duration::from_millis(500));
    let (_, lines) = tracer.stop()?;
    let log = std::fs::read_to_string(lab.dir.join("access.log")).unwrap_or_default();
    drop(lab);

    let statuses: Vec<u16> = log.lines().filter_map(logged_status).collect();
    let fives = statuses.iter().filter(|s| **s >= 500).count();
    let verdicts = lines.iter().filter(|v| v["type"] == "verdict" && v["delivered"] == "status").count();
    let stats = lines.iter().rev().find(|v| v["type"] == "stats").cloned().unwrap_or_default();
    let lost = stats["lost_total"].as_u64().unwrap_or(u64::MAX);
    // Warm-up: the engine keeps finished attempts ~10 s and unexplained ones up to 75 s, so
    // memory settles after the first of those windows; measure growth after it.
    let warm_s = (total.as_secs_f64() * 0.2).max(85.0).min(total.as_secs_f64() * 0.7);
    let warm = rss.iter().find(|(t, _)| *t >= warm_s).map(|x| x.1).unwrap_or(0).max(1);
    let peak = rss.iter().filter(|(t, _)| *t >= warm_s).map(|x| x.1).max().unwrap_or(0);
    let growth = peak as f64 / warm as f64 - 1.0;
    let summary = format!(
        "soak {minutes} min: {} requests, {fives} 5xx in nginx's access log, {verdicts} status verdicts, lost {lost}, \
         RSS {warm} KiB after warm-up, peak {peak} KiB ({:+.1}%), verdict latency {}",
        statuses.len(),
        growth * 100.0,
        stats["verdict_latency_ms"]
    );
    println!("{summary}");
    // Where a latency tail comes from: the slowest verdict of each stats interval.
    let mut slowest: Vec<&serde_json::Value> = lines.iter().filter_map(|v| v.get("slowest_verdict")).collect();
    slowest.sort_by(|a, b| b["latency_ms"].as_f64().unwrap_or(0.0).total_cmp(&a["latency_ms"].as_f64().unwrap_or(0.0)));
    let slowest: Vec<String> = slowest
        .iter()
        .take(5)
        .map(|v| {
            format!(
                "{:.0} ms {} (status at {})",
                v["latency_ms"].as_f64().unwrap_or(0.0),
                v["verdict"].as_str().unwrap_or("?"),
                v["status_time"].as_str().unwrap_or("?")
            )
        })
        .collect();
    println!("slowest verdicts: {}", slowest.join("; "));
    let dir = crate::workspace_root().join("bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join(format!("SOAK-{minutes}min.txt")),
        format!(
            "{summary}\nSlowest verdicts (one per 5 s stats interval, worst first): {}\nRSS samples (s, KiB): {rss:?}\n",
            slowest.join("; ")
        ),
    )?;
    let mut problems = Vec::new();
    if fives == 0 {
        problems.push("no 5xx at all: the faults did not bite".to_string());
    }
    if fives != verdicts {
        problems.push(format!("{fives} 5xx answers but {verdicts} verdicts"));
        println!("soak: where the counts differ (second, status: 5xx logged / verdicts): {}", mismatched_seconds(&log, &lines));
    }
    if lost != 0 {
        problems.push(format!("{lost} events lost"));
    }
    // Flat memory can only be judged once the engine's retention window (75 s) has passed
    // well inside the run; shorter runs (the CI smoke) report the figure without judging it.
    if minutes >= 5 && growth > 0.10 {
        problems.push(format!("RSS grew {:.1}% after warm-up", growth * 100.0));
    } else if minutes < 5 {
        println!("soak: RSS growth is judged on runs of 5 minutes or more (here informational)");
    }
    if !problems.is_empty() {
        bail!("soak failed: {}", problems.join("; "));
    }
    Ok(())
}

/// The status of a request in nginx's combined log (the 9th field).
fn logged_status(line: &str) -> Option<u16> {
    line.split_whitespace().nth(8)?.parse().ok()
}

/// Seconds (HH:MM:SS, UTC) in which nginx logged a different number of 5xx of a status than
/// upstrace gave verdicts for: where to look when the totals differ. nginx stamps the end of
/// the request and upstrace the status write, so a pair of neighbouring seconds that cancel
/// out is a boundary effect, not a miss.
fn mismatched_seconds(log: &str, lines: &[serde_json::Value]) -> String {
    use std::collections::BTreeMap;
    let mut counts: BTreeMap<(String, u16), (i64, i64)> = BTreeMap::new();
    for l in log.lines() {
        // ... [25/Nov/2026:00:30:43 +0000] "GET / HTTP/1.1" 502 ...
        let second = l.split_once('[').and_then(|(_, r)| r.get(12..20)).unwrap_or("?").to_owned();
        if let Some(status) = logged_status(l).filter(|s| *s >= 500) {
            counts.entry((second, status)).or_default().0 += 1;
        }
    }
    for v in lines.iter().filter(|v| v["type"] == "verdict" && v["delivered"] == "status") {
        let second = v["time"].as_str().and_then(|t| t.get(11..19)).unwrap_or("?").to_owned();
        let status = v["status"].as_u64().unwrap_or(0) as u16;
        counts.entry((second, status)).or_default().1 += 1;
    }
    let differing: Vec<String> = counts
        .iter()
        .filter(|(_, (logged, judged))| logged != judged)
        .take(20)
        .map(|((second, status), (logged, judged))| format!("{second} {status}: {logged}/{judged}"))
        .collect();
    if differing.is_empty() { "none by second".into() } else { differing.join(", ") }
}

#[cfg(test)]
mod tests {
    use super::mismatched_seconds;

    #[test]
    fn seconds_where_logged_5xx_and_verdicts_differ_are_named() {
        let log = "\
127.0.0.1 - - [25/Nov/2026:00:30:43 +0000] \"GET / HTTP/1.1\" 502 157 \"-\" \"curl/7.88.1\"
127.0.0.1 - - [25/Nov/2026:00:30:43 +0000] \"GET / HTTP/1.1\" 502 157 \"-\" \"curl/7.88.1\"
127.0.0.1 - - [25/Nov/2026:00:30:44 +0000] \"GET / HTTP/1.1\" 200 2 \"-\" \"curl/7.88.1\"
127.0.0.1 - - [25/Nov/2026:00:30:44 +0000] \"GET / HTTP/1.1\" 504 167 \"-\" \"curl/7.88.1\"
";
        let verdict =
            |time: &str, status: u16| serde_json::json!({"type": "verdict", "delivered": "status", "time": time, "status": status});
        let mut lines = vec![verdict("2026-11-25T00:30:43.100Z", 502), verdict("2026-11-25T00:30:43.900Z", 502)];
        assert_eq!(mismatched_seconds(log, &lines), "00:30:44 504: 1/0");
        lines.push(verdict("2026-11-25T00:30:44.500Z", 504));
        assert_eq!(mismatched_seconds(log, &lines), "none by second");
    }
}
