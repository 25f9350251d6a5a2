//! `cargo xtask bench`: what upstrace costs the gateway, and how it holds up in a failure
//! storm, measured side by side in one run on this machine (ratios and counts, since absolute
//! timings are noisy here). Results go to bench/RESULTS.md and bench/results.json.
//! All traffic goes to the lab's own namespaces; every load run is bounded in time.
use std::{
    fmt::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use upstrace_lab::{
    lab::{ClientMode, GatewayKind, Lab},
    rss_kib,
};

use crate::measure::{
    LOOPBACK, Load, cpu_ticks, load, load_url, mean, runs_and_bpf_us, series, series_with_median, start_tracer, stop_tracer,
};

/// wrk with plain HTTP on the gateway's loopback: the A/B and healthy rows' load.
fn wrk(lab: &Lab, secs: u64, conns: u32) -> Result<Load> {
    load(&lab.gw_ns, LOOPBACK, ClientMode::Plain, secs, conns)
}

/// Load under an empty program attached to the same hooks (`upstrace floor`): what running
/// any BPF program there costs the gateway on this machine. Returns (wrk, floor line).
fn wrk_at_floor(lab: &Lab, secs: u64, conns: u32, hooks: &str, stats: bool) -> Result<(Load, serde_json::Value)> {
    let bin = upstrace_lab::upstrace_binary()?;
    let mut args = vec!["floor".to_string(), "--seconds".into(), (secs + 1).to_string(), "--hooks".into(), hooks.into()];
    if stats {
        args.push("--stats".into());
    }
    let child = Command::new(bin).args(&args).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().context("upstrace floor")?;
    std::thread::sleep(Duration::from_millis(500));
    let load = wrk(lab, secs, conns)?;
    let out = child.wait_with_output()?;
    let floor = serde_json::from_slice(&out.stdout).context("upstrace floor output")?;
    Ok((load, floor))
}

/// One A/B pair on the same load: without upstrace, with it (and its CPU share, percent of a
/// core, over that run), and with empty programs at the same hooks (the floor). The three run
/// in an order that turns with `round`: whatever drifts over a pair (TIME_WAIT sockets piling
/// up in a row of new connections, a neighbour on the host) must not always weigh on the
/// same one.
struct Pair {
    without: Load,
    with: Load,
    floor: Load,
    tracer_cpu_pct: f64,
}

fn ab_pair(lab: &Lab, gw: u32, secs: u64, round: usize) -> Result<Pair> {
    let (mut without, mut with, mut floor, mut tracer_cpu_pct) = (None, None, None, 0.0);
    for step in 0..3 {
        match (step + round) % 3 {
            0 => without = Some(wrk(lab, secs, 32)?),
            1 => {
                let tracer = start_tracer(gw, false)?;
                let (t0, c0) = (Instant::now(), cpu_ticks(tracer.pid()));
                with = Some(wrk(lab, secs, 32)?);
                tracer_cpu_pct = cpu_ticks(tracer.pid()).saturating_sub(c0) as f64 / 100.0 / t0.elapsed().as_secs_f64() * 100.0;
                stop_tracer(tracer)?;
            }
            _ => floor = Some(wrk_at_floor(lab, secs, 32, "all", false)?.0),
        }
    }
    let all = without.zip(with).zip(floor);
    let ((without, with), floor) = all.context("a pair's runs")?;
    Ok(Pair { without, with, floor, tracer_cpu_pct })
}

fn describe_pair(a: &Load, b: &Load, f: &Load, floor: &str) -> String {
    format!(
        "without {:.0} req/s p99 {:.2} ms, with {:.0} req/s p99 {:.2} ms, {floor} {:.0} req/s",
        a.rps, a.latency_ms, b.rps, b.latency_ms, f.rps
    )
}

pub fn run(pairs: usize, secs: u64) -> Result<()> {
    upstrace_lab::ensure_root("the benchmark")?;
    crate::use_release_build();
    let sh = |cmd: &str| {
        Command::new("sh").args(["-c", cmd]).output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default()
    };
    let cpu = sh("lscpu | sed -n 's/^Model name: *//p' | head -1");
    let kernel = sh("uname -r");
    let nginx = sh("nginx -v 2>&1");
    let cores = sh("nproc");

    // 1. Overhead on a healthy gateway, A/B alternated.
    eprintln!("bench: overhead, {pairs} pairs of {secs} s runs");
    let mut lab = Lab::new()?;
    lab.nginx_workers = 2;
    lab.start_upstream("ok")?;
    let gw = lab.start_gateway(GatewayKind::Nginx)?;
    // Warm-up until the lab reaches its steady state (connection reuse, TIME_WAIT pool).
    wrk(&lab, 8, 32)?;
    let (mut rps_ratio, mut p99_ratio, mut runs) = (Vec::new(), Vec::new(), Vec::new());
    let (mut floor_ratio, mut floor_ns, mut healthy_cpu_per_10k) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..pairs {
        let Pair { without: a, with: b, floor: f, tracer_cpu_pct } = ab_pair(&lab, gw, secs, i)?;
        healthy_cpu_per_10k.push(tracer_cpu_pct * 10_000.0 / b.rps.max(1.0));
        eprintln!("bench: pair {}: {}", i + 1, describe_pair(&a, &b, &f, "empty programs"));
        rps_ratio.push(b.rps / a.rps);
        p99_ratio.push(b.latency_ms / a.latency_ms);
        floor_ratio.push(f.rps / a.rps);
        runs.push(serde_json::json!({
            "without": {"rps": a.rps, "p99_ms": a.latency_ms},
            "with": {"rps": b.rps, "p99_ms": b.latency_ms},
            "empty_programs": {"rps": f.rps, "p99_ms": f.latency_ms},
        }));
    }
    // 2. Cost per run, with the kernel's run-time statistics on (a run of its own: counting
    // costs two clock reads per program run).
    let tracer = start_tracer(gw, true)?;
    wrk(&lab, secs, 32)?;
    let costs = stop_tracer(tracer)?["programs"].clone();
    let (_, floor) = wrk_at_floor(&lab, secs, 32, "all", true)?;
    floor_ns.push(floor["avg_ns"].as_f64().unwrap_or(0.0));

    // The socket and packet hooks as classic tracepoints and as tp_btf, side by side.
    let mut hook_kinds = serde_json::Map::new();
    for set in ["socket-classic", "socket-btf"] {
        let (load, floor) = wrk_at_floor(&lab, secs, 32, set, true)?;
        eprintln!("bench: empty programs at the socket hooks as {set}: {} ns per run, {:.0} req/s", floor["avg_ns"], load.rps);
        hook_kinds.insert(set.into(), serde_json::json!({"avg_ns": floor["avg_ns"], "runs": floor["runs"], "rps": load.rps}));
    }

    let (mut storms, mixed) = storms_and_mixed(&mut lab, gw, secs, None)?;
    drop(lab);
    storms.extend(default_config_storms(secs, None)?);

    // 6. HTTPS clients (its own labs).
    let https = crate::bench_https::run(pairs.min(3), secs)?;

    // 5. Memory with 100k tracked connections (the engine alone, same code as live).
    eprintln!("bench: engine memory with 100k connections");
    let out = Command::new(upstrace_lab::target_dir().join("release/examples/engine_rss")).arg("100000").output().context("engine_rss")?;
    let rss: serde_json::Value = serde_json::from_slice(&out.stdout).context("engine_rss output")?;

    let result = serde_json::json!({
        "machine": {"cpu": cpu, "cores": cores, "kernel": kernel, "nginx": nginx, "upstrace": env!("CARGO_PKG_VERSION")},
        "overhead": {
            "pairs": runs,
            "throughput_ratio": series(&rps_ratio),
            "p99_ratio": series(&p99_ratio),
            "bpf_programs": costs,
            "empty_programs_throughput_ratio": series(&floor_ratio),
            "empty_program_avg_ns": mean(&floor_ns),
            "upstrace_cpu_pct_per_10k_rps_healthy": mean(&healthy_cpu_per_10k),
            "empty_programs_at_socket_hooks": hook_kinds,
        },
        "storms": storms,
        "mixed": mixed,
        "engine_100k_connections": rss,
        "https": https,
    });
    let dir = crate::workspace_root().join("bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(&result)? + "\n")?;
    std::fs::write(dir.join("RESULTS.md"), markdown(&result))?;
    println!("{}", markdown(&result));
    Ok(())
}

/// The healthy rows alone, for each upstream configuration nginx is run with: a keep-alive
/// pool (the lab's), nginx's default (HTTP/1.0, a new upstream connection per request), and
/// PHP-FPM over a unix socket (`fastcgi_pass`, a new FastCGI connection per request).
/// Per row: throughput and p99 with / without (A/B alternated, with the floor), then a run
/// with run-time statistics for events and program runs per proxied request.
pub fn run_healthy(pairs: usize, secs: u64) -> Result<()> {
    upstrace_lab::ensure_root("the benchmark")?;
    crate::use_release_build();
    let mut rows = Vec::new();
    for (name, keepalive, fastcgi) in
        [("keep-alive pool", true, false), ("connection per request", false, false), ("FastCGI (php-fpm, unix socket)", false, true)]
    {
        eprintln!("bench: healthy, {name}: {pairs} pairs of {secs} s runs");
        let mut lab = Lab::new()?;
        lab.nginx_workers = 2;
        lab.upstream_keepalive = keepalive;
        if fastcgi {
            lab.start_php(upstrace_lab::lab::PhpMode::Ok)?;
        } else {
            lab.start_upstream("ok")?;
        }
        let gw = lab.start_gateway(GatewayKind::Nginx)?;
        wrk(&lab, 4, 32)?;
        let (mut rps_ratio, mut p99_ratio, mut floor_ratio) = (Vec::new(), Vec::new(), Vec::new());
        // upstrace's own process: percent of a core per 10k req/s, and microseconds per request.
        let (mut cpu_per_10k, mut user_us) = (Vec::new(), Vec::new());
        for i in 0..pairs {
            let Pair { without: a, with: b, floor: f, tracer_cpu_pct } = ab_pair(&lab, gw, secs, i)?;
            eprintln!("bench: {name} pair {}: {}, upstrace {tracer_cpu_pct:.2}% of a core", i + 1, describe_pair(&a, &b, &f, "floor"));
            rps_ratio.push(b.rps / a.rps);
            p99_ratio.push(b.latency_ms / a.latency_ms);
            floor_ratio.push(f.rps / a.rps);
            if b.rps > 0.0 {
                cpu_per_10k.push(tracer_cpu_pct * 10_000.0 / b.rps);
                user_us.push(tracer_cpu_pct / 100.0 / b.rps * 1e6);
            }
        }
        let tracer = start_tracer(gw, true)?;
        let load = wrk(&lab, secs, 32)?;
        let stats = stop_tracer(tracer)?;
        // The tracer runs a little longer than the load: healthy traffic is the only traffic.
        let per_request = |n: f64| if load.requests > 0.0 { n / load.requests } else { 0.0 };
        let events = stats["events"].as_f64().unwrap_or(0.0);
        let programs: Vec<serde_json::Value> = stats["programs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["runs"].as_u64().unwrap_or(0) > 0)
            .map(|p| {
                let runs = p["runs"].as_f64().unwrap_or(0.0);
                serde_json::json!({"name": p["name"], "per_request": per_request(runs), "avg_ns": p["avg_ns"]})
            })
            .collect();
        let (runs_per_request, bpf_us_per_request) = runs_and_bpf_us(&programs, "per_request");
        // The lab's client and upstream share the host, and the socket hooks run for them too.
        // The same load sent straight to the upstream (keep-alive) counts their part. With a
        // connection per request, the upstream's side of each new connection stays counted.
        let peer_runs = if fastcgi { None } else { Some(peer_runs_per_request(&lab, gw, secs)?) };
        eprintln!(
            "bench: {name}: {:.3} events per request, {runs_per_request:.2} program runs per request ({} of them the lab's client and upstream), lost {}",
            per_request(events),
            peer_runs.map_or("unknown".to_owned(), |p| format!("{p:.2}")),
            stats["lost_total"]
        );
        rows.push(serde_json::json!({
            "row": name,
            "throughput_ratio": series_with_median(&rps_ratio),
            "p99_ratio": series_with_median(&p99_ratio),
            "floor_ratio": series_with_median(&floor_ratio),
            "requests": load.requests,
            "events_per_request": per_request(events),
            "lost": stats["lost_total"],
            "runs_per_request": runs_per_request,
            "lab_peer_runs_per_request": peer_runs,
            "upstrace_cpu_pct_per_10k_rps": mean(&cpu_per_10k),
            "cpu_us_per_request": {"bpf": bpf_us_per_request, "userspace": mean(&user_us)},
            "programs": programs,
        }));
    }
    let dir = crate::workspace_root().join("bench");
    let path = dir.join("results.json");
    let mut r: serde_json::Value = std::fs::read_to_string(&path).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
    r["healthy"] = serde_json::json!({"pairs": pairs, "seconds": secs, "rows": rows});
    std::fs::write(&path, serde_json::to_string_pretty(&r)? + "\n")?;
    std::fs::write(dir.join("RESULTS.md"), markdown(&r))?;
    println!("{}", healthy_markdown(&r["healthy"]));
    Ok(())
}

/// Program runs per request that the lab's own client (wrk) and upstream cause: upstrace
/// traces the gateway, idle, while the same load goes straight to the upstream.
fn peer_runs_per_request(lab: &Lab, gw: u32, secs: u64) -> Result<f64> {
    let tracer = start_tracer(gw, true)?;
    let direct = load_url(&lab.gw_ns, &format!("http://{}/", lab.upstream_addr()), ClientMode::Plain, secs, 32)?;
    let stats = stop_tracer(tracer)?;
    let runs: f64 = stats["programs"].as_array().into_iter().flatten().filter_map(|p| p["runs"].as_f64()).sum();
    if direct.requests <= 0.0 {
        bail!("no request reached the upstream directly ({})", lab.upstream_addr());
    }
    Ok(runs / direct.requests)
}

fn healthy_markdown(h: &serde_json::Value) -> String {
    let mut md = format!(
        "\n## 7. Healthy rows by upstream configuration (nginx 2 workers, wrk -t2 -c32; {} pairs of {} s)\n\n",
        h["pairs"], h["seconds"]
    );
    md.push_str("Ratios: mean, then median and the range over the pairs. Each pair runs without upstrace, with it, and with empty programs at its hooks (the floor), in an order that turns from pair to pair.\n\n");
    md.push_str("Program runs per request: all, then without those of the lab's own client and upstream, which share the host (the same load sent straight to the upstream, keep-alive, counts them; with a connection per request the upstream's side of each new connection stays in, and php-fpm cannot be loaded that way).\n\n");
    md.push_str("| row | throughput with / without (median, min-max) | p99 with / without (median, min-max) | floor (median, min-max) | events per request | program runs per request: all / at the gateway | upstrace CPU % of a core per 10k req/s | CPU µs per request: BPF + userspace | lost |\n|---|---|---|---|---:|---:|---:|---:|---:|\n");
    let ratio = |v: &serde_json::Value| {
        format!(
            "{:.3} ({:.3}, {:.3}-{:.3})",
            v["mean"].as_f64().unwrap_or(0.0),
            v["median"].as_f64().unwrap_or(f64::NAN),
            v["min"].as_f64().unwrap_or(0.0),
            v["max"].as_f64().unwrap_or(0.0)
        )
    };
    for row in h["rows"].as_array().into_iter().flatten() {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.3} | {:.2} / {} | {:.3} | {:.2} + {:.2} | {} |",
            row["row"].as_str().unwrap_or("?"),
            ratio(&row["throughput_ratio"]),
            ratio(&row["p99_ratio"]),
            ratio(&row["floor_ratio"]),
            row["events_per_request"].as_f64().unwrap_or(0.0),
            row["runs_per_request"].as_f64().unwrap_or(0.0),
            row["lab_peer_runs_per_request"]
                .as_f64()
                .map_or("-".to_owned(), |peers| format!("{:.2}", row["runs_per_request"].as_f64().unwrap_or(0.0) - peers)),
            row["upstrace_cpu_pct_per_10k_rps"].as_f64().unwrap_or(0.0),
            row["cpu_us_per_request"]["bpf"].as_f64().unwrap_or(0.0),
            row["cpu_us_per_request"]["userspace"].as_f64().unwrap_or(0.0),
            row["lost"]
        );
    }
    md.push_str("\nProgram runs per proxied request (avg ns per run):\n\n");
    for row in h["rows"].as_array().into_iter().flatten() {
        let list: Vec<String> = row["programs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                format!(
                    "{} {:.2} ({:.0})",
                    p["name"].as_str().unwrap_or("?"),
                    p["per_request"].as_f64().unwrap_or(0.0),
                    p["avg_ns"].as_f64().unwrap_or(0.0)
                )
            })
            .collect();
        let _ = writeln!(md, "- {}: {}", row["row"].as_str().unwrap_or("?"), list.join(", "));
    }
    md
}

/// Where a storm's load comes from.
#[derive(Clone, Copy)]
enum Clients {
    /// One load generator on the gateway's loopback: wrk, over TLS for `TlsH1`, h2load for `TlsH2`.
    Loopback(ClientMode),
    /// One plain wrk per extra gateway address (`Lab::client_addresses`), the connections
    /// shared among them: that many client addresses.
    Addresses(u8),
}

impl Clients {
    /// Requests per second served to all of them in `secs`.
    fn run(self, gw_ns: &str, secs: u64, conns: u32) -> Result<f64> {
        match self {
            Clients::Loopback(mode) => Ok(load(gw_ns, LOOPBACK, mode, secs, conns)?.rps),
            Clients::Addresses(n) => {
                let per = (conns / u32::from(n)).max(2);
                let runs: Vec<_> = (1..=n)
                    .map(|k| {
                        let gw_ns = gw_ns.to_string();
                        std::thread::spawn(move || load(&gw_ns, &Lab::client_address(k), ClientMode::Plain, secs, per))
                    })
                    .collect();
                let mut rps = 0.0;
                for run in runs {
                    rps += run.join().map_err(|_| anyhow::anyhow!("load thread"))??.rps;
                }
                Ok(rps)
            }
        }
    }
}

/// A load against the gateway for `secs` with upstrace attached: its throughput, upstrace's
/// accounting (events, losses, verdicts, latency, engine), CPU and peak RSS.
fn traced_load(lab: &Lab, gw: u32, name: &str, secs: u64, conns: u32, clients: Clients) -> Result<serde_json::Value> {
    let tracer = start_tracer(gw, false)?;
    let (t0, c0) = (Instant::now(), cpu_ticks(tracer.pid()));
    let mut rss_max = 0;
    let load = {
        let gw_ns = lab.gw_ns.clone();
        std::thread::spawn(move || clients.run(&gw_ns, secs, conns))
    };
    while !load.is_finished() {
        rss_max = rss_max.max(rss_kib(tracer.pid()));
        std::thread::sleep(Duration::from_millis(200));
    }
    let rps = load.join().map_err(|_| anyhow::anyhow!("load thread"))??;
    let elapsed = t0.elapsed().as_secs_f64();
    let ticks = cpu_ticks(tracer.pid()).saturating_sub(c0);
    let hz = 100.0; // USER_HZ
    let cpu_pct = ticks as f64 / hz / elapsed * 100.0;
    let (_, lines) = tracer.stop()?;
    let stats = lines.last().cloned().context("upstrace printed no stats line")?;
    // The slowest verdict of the run (each stats line names its interval's slowest): what a
    // latency tail was made of.
    let slowest = lines
        .iter()
        .map(|l| &l["slowest_verdict"])
        .filter(|v| !v.is_null())
        .max_by(|a, b| a["latency_ms"].as_f64().unwrap_or(0.0).total_cmp(&b["latency_ms"].as_f64().unwrap_or(0.0)))
        .cloned()
        .unwrap_or_default();
    let events = stats["events"].as_u64().unwrap_or(0);
    eprintln!(
        "bench: {name}: {rps:.0} req/s, {} events, lost {}, verdicts {}, latency {}, cpu {cpu_pct:.1}%, rss {rss_max} KiB, engine {}, slowest {slowest}, gateway log {}",
        events, stats["lost_total"], stats["verdicts"], stats["verdict_latency_ms"], stats["engine"], stats["gateway_log"]
    );
    Ok(serde_json::json!({
        "storm": name,
        "attempts_per_s": rps,
        "events": events,
        "events_per_s": events as f64 / elapsed,
        "lost": stats["lost_total"],
        "lost_by_cause": stats["lost"],
        "verdicts": stats["verdicts"],
        "verdicts_per_s": stats["verdicts"].as_f64().unwrap_or(0.0) / elapsed,
        "verdict_latency_ms": stats["verdict_latency_ms"],
        "upstrace_cpu_pct_of_one_core": cpu_pct,
        "upstrace_cpu_pct_per_10k_rps": if rps > 0.0 { cpu_pct * 10_000.0 / rps } else { 0.0 },
        "upstrace_rss_kib_max": rss_max,
        "engine": stats["engine"],
        "slowest_verdict": slowest,
    }))
}

/// Re-render bench/RESULTS.md from bench/results.json (after a change to the layout only).
pub fn render() -> Result<()> {
    let dir = crate::workspace_root().join("bench");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("results.json"))?)?;
    std::fs::write(dir.join("RESULTS.md"), markdown(&r))?;
    Ok(())
}

fn markdown(r: &serde_json::Value) -> String {
    let mut md = String::from("# upstrace benchmark results\n\nMade by `sudo -E cargo xtask bench`; raw figures in `results.json`.\n\n");
    let m = &r["machine"];
    let _ = writeln!(
        md,
        "Machine: {} ({} cores), kernel {}, {}, upstrace {}.\n",
        m["cpu"].as_str().unwrap_or("?"),
        m["cores"].as_str().unwrap_or("?"),
        m["kernel"].as_str().unwrap_or("?"),
        m["nginx"].as_str().unwrap_or("?"),
        m["upstrace"].as_str().unwrap_or("?")
    );
    let o = &r["overhead"];
    md.push_str("## 1. Gateway overhead (nginx, 2 workers, wrk -t2 -c32 from the client namespace)\n\n");
    md.push_str("Throughput runs are made without BPF run-time statistics (counting costs two clock reads per program run); the costs per run in section 2 come from runs of their own with them.\n\n");
    let _ = writeln!(md, "| figure | mean | min | max | target |\n|---|---:|---:|---:|---|");
    let _ = writeln!(
        md,
        "| throughput with / without | {:.3} | {:.3} | {:.3} | >= 0.99 |",
        o["throughput_ratio"]["mean"].as_f64().unwrap_or(0.0),
        o["throughput_ratio"]["min"].as_f64().unwrap_or(0.0),
        o["throughput_ratio"]["max"].as_f64().unwrap_or(0.0)
    );
    let _ = writeln!(
        md,
        "| p99 latency with / without | {:.3} | {:.3} | {:.3} | <= 1.01 |",
        o["p99_ratio"]["mean"].as_f64().unwrap_or(0.0),
        o["p99_ratio"]["min"].as_f64().unwrap_or(0.0),
        o["p99_ratio"]["max"].as_f64().unwrap_or(0.0)
    );
    let fr = &o["empty_programs_throughput_ratio"];
    let _ = writeln!(
        md,
        "| throughput with an empty program at the same hooks / without | {:.3} | {:.3} | {:.3} | (the floor) |",
        fr["mean"].as_f64().unwrap_or(0.0),
        fr["min"].as_f64().unwrap_or(0.0),
        fr["max"].as_f64().unwrap_or(0.0)
    );
    let _ = writeln!(
        md,
        "\nupstrace's own CPU under this healthy load: {:.2}% of one core per 10k req/s (target < 2%).\n",
        o["upstrace_cpu_pct_per_10k_rps_healthy"].as_f64().unwrap_or(0.0)
    );
    md.push_str("\n## 2. Cost per BPF program run (kernel run-time stats held by upstrace)\n\n");
    let _ = writeln!(
        md,
        "An empty program attached to the same tracepoints costs {:.0} ns per run here (the floor).\n",
        o["empty_program_avg_ns"].as_f64().unwrap_or(0.0)
    );
    let hk = &o["empty_programs_at_socket_hooks"];
    let _ = writeln!(
        md,
        "At the socket and packet hooks alone (sock_send_length, sock_recv_length, netif_receive_skb, inet_sock_set_state, kfree_skb), an empty program costs {:.0} ns per run as a classic tracepoint and {:.0} ns as tp_btf.\n",
        hk["socket-classic"]["avg_ns"].as_f64().unwrap_or(0.0),
        hk["socket-btf"]["avg_ns"].as_f64().unwrap_or(0.0)
    );
    md.push_str("| program | runs | avg ns |\n|---|---:|---:|\n");
    if let Some(list) = o["bpf_programs"].as_array() {
        for p in list {
            let _ = writeln!(md, "| {} | {} | {:.0} |", p["name"].as_str().unwrap_or("?"), p["runs"], p["avg_ns"].as_f64().unwrap_or(0.0));
        }
    }
    md.push_str("\n## 3. Failure storms (64 connections against a broken upstream: wrk -t2, h2load -m4 for HTTP/2 clients, one wrk per address for many client addresses)\n\n| storm | attempts/s | events/s | lost | verdicts | verdict latency p50 / p99 ms | upstrace CPU % of a core | per 10k req/s | RSS max KiB |\n|---|---:|---:|---:|---:|---|---:|---:|---:|\n");
    if let Some(list) = r["storms"].as_array() {
        for s in list {
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.0} | {} | {} | {:.1} / {:.1} | {:.1} | {:.1} | {} |",
                s["storm"].as_str().unwrap_or("?"),
                s["attempts_per_s"].as_f64().unwrap_or(0.0),
                s["events_per_s"].as_f64().unwrap_or(0.0),
                s["lost"],
                s["verdicts"],
                s["verdict_latency_ms"]["p50"].as_f64().unwrap_or(0.0),
                s["verdict_latency_ms"]["p99"].as_f64().unwrap_or(0.0),
                s["upstrace_cpu_pct_of_one_core"].as_f64().unwrap_or(0.0),
                s["upstrace_cpu_pct_per_10k_rps"].as_f64().unwrap_or(0.0),
                s["upstrace_rss_kib_max"]
            );
        }
    }
    md.push_str("\n## 4. Failures mixed into a healthy load (wrk -t2 -c32; the upstream resets every Nth request it serves)\n\n");
    md.push_str("nginx retries a request whose reused keep-alive connection fails before any response byte, so most upstream resets reach no client; upstrace sees them all the same (events/s).\n\n");
    md.push_str("| load | req/s | upstream resets/s | 5xx to clients/s (verdicts) | events/s | lost | verdict latency p50 / p99 ms | upstrace CPU % of a core | per 10k req/s | RSS max KiB |\n|---|---:|---:|---:|---:|---:|---|---:|---:|---:|\n");
    if let Some(list) = r["mixed"].as_array() {
        for s in list {
            let rps = s["attempts_per_s"].as_f64().unwrap_or(0.0);
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.1} / {:.1} | {:.2} | {:.2} | {} |",
                s["storm"].as_str().unwrap_or("?"),
                rps,
                rps * s["failing_share"].as_f64().unwrap_or(0.0),
                s["verdicts_per_s"].as_f64().unwrap_or(0.0),
                s["events_per_s"].as_f64().unwrap_or(0.0),
                s["lost"],
                s["verdict_latency_ms"]["p50"].as_f64().unwrap_or(0.0),
                s["verdict_latency_ms"]["p99"].as_f64().unwrap_or(0.0),
                s["upstrace_cpu_pct_of_one_core"].as_f64().unwrap_or(0.0),
                s["upstrace_cpu_pct_per_10k_rps"].as_f64().unwrap_or(0.0),
                s["upstrace_rss_kib_max"]
            );
        }
    }
    let e = &r["engine_100k_connections"];
    let _ = writeln!(
        md,
        "\n## 5. Memory with 100k tracked connections\n\nEngine state for {} open connections: RSS {} KiB (from {} KiB empty); target < 64 MiB.",
        e["connections"], e["rss_kib_after"], e["rss_kib_before"]
    );
    if !r["https"].is_null() {
        md.push_str(&crate::bench_https::markdown(&r["https"]));
    }
    if !r["healthy"].is_null() {
        md.push_str(&healthy_markdown(&r["healthy"]));
    }
    md
}

/// The storms behind the lab's keep-alive pool, and the upstream mode of each (none: nothing
/// listens).
const KEEPALIVE_STORMS: [(&str, Option<&str>); 2] =
    [("refused, keep-alive pool", None), ("reset, keep-alive pool", Some("reset-before-headers"))];

/// A storm is run when no `--only` text was given, or its name holds it.
fn picked(only: Option<&str>, name: &str) -> bool {
    only.is_none_or(|o| name.contains(o))
}

/// Sections 3 and 4: failure storms (refused, reset) and failures mixed into a healthy load,
/// each with upstrace's own accounting.
fn storms_and_mixed(lab: &mut Lab, gw: u32, secs: u64, only: Option<&str>) -> Result<(Vec<serde_json::Value>, Vec<serde_json::Value>)> {
    // 3. Failure storms: refused and reset, with upstrace's own accounting.
    let mut storms = Vec::new();
    for (name, mode) in KEEPALIVE_STORMS.into_iter().filter(|(name, _)| picked(only, name)) {
        eprintln!("bench: {name} storm, {secs} s");
        match mode {
            None => lab.stop_upstream(),
            Some(m) => lab.start_upstream(m)?,
        }
        storms.push(traced_load(lab, gw, name, secs, 64, Clients::Loopback(ClientMode::Plain))?);
    }
    // 4. A gateway at full healthy load with a share of failures mixed in: what upstrace
    // costs during an ordinary incident rather than a total outage.
    let mut mixed = Vec::new();
    for every in [100u32, 20].into_iter().filter(|_| only.is_none()) {
        let name = format!("1 in {every} reset");
        eprintln!("bench: {name}, {secs} s");
        lab.start_upstream(&format!("every-{every}:reset-before-headers"))?;
        let mut run = traced_load(lab, gw, &name, secs, 32, Clients::Loopback(ClientMode::Plain))?;
        run["failing_share"] = serde_json::json!(1.0 / every as f64);
        mixed.push(run);
    }
    Ok((storms, mixed))
}

/// Storms in the upstream configurations most gateways run, each in its own lab: nginx's
/// default (a new upstream connection per request, so every failure is a new connection), with
/// plaintext, HTTPS and HTTP/2 clients, and with clients from many addresses (each verdict's
/// line among many clients' lines); PHP-FPM over a unix socket (killed: the socket file stays,
/// connect(2) is refused); and a group of two servers, both down (nginx marks them failed and
/// answers most requests without trying any: "no live upstreams"); and HAProxy and Caddy as
/// their users run them (the nginx-only settings of the lab do not apply to them).
fn default_config_storms(secs: u64, only: Option<&str>) -> Result<Vec<serde_json::Value>> {
    #[derive(PartialEq)]
    enum Shape {
        Reset,
        Refused,
        FastCgiKilled,
        GroupDown,
    }
    const ADDRESSES: u8 = 16;
    let mut storms = Vec::new();
    use ClientMode::{Plain, TlsH1, TlsH2};
    use GatewayKind::{Caddy, Haproxy, Nginx};
    for (name, shape, clients, gateway) in [
        ("reset, connection per request", Shape::Reset, Clients::Loopback(Plain), Nginx),
        ("refused, connection per request", Shape::Refused, Clients::Loopback(Plain), Nginx),
        ("refused, connection per request, HTTPS clients", Shape::Refused, Clients::Loopback(TlsH1), Nginx),
        ("refused, connection per request, HTTP/2 clients", Shape::Refused, Clients::Loopback(TlsH2), Nginx),
        ("refused, connection per request, 16 client addresses", Shape::Refused, Clients::Addresses(ADDRESSES), Nginx),
        ("refused, FastCGI (php-fpm killed)", Shape::FastCgiKilled, Clients::Loopback(Plain), Nginx),
        ("group of two down (no live upstreams)", Shape::GroupDown, Clients::Loopback(Plain), Nginx),
        // The other gateways, each as its users run it: HAProxy's 503 (no retries), its log
        // through syslog; Caddy over HTTPS, read at Go's crypto/tls, its JSON log.
        ("refused, HAProxy", Shape::Refused, Clients::Loopback(Plain), Haproxy),
        ("reset, HAProxy", Shape::Reset, Clients::Loopback(Plain), Haproxy),
        ("refused, Caddy, HTTPS clients", Shape::Refused, Clients::Loopback(TlsH1), Caddy),
    ]
    .into_iter()
    .filter(|(name, ..)| picked(only, name))
    {
        eprintln!("bench: {name} storm, {secs} s");
        let mut lab = Lab::new()?;
        lab.nginx_workers = 2;
        lab.upstream_keepalive = false;
        match clients {
            Clients::Loopback(mode) => lab.client = mode,
            Clients::Addresses(n) => lab.client_addresses = n,
        }
        match shape {
            Shape::Reset => lab.start_upstream("reset-before-headers")?,
            Shape::FastCgiKilled => lab.start_php(upstrace_lab::lab::PhpMode::Ok)?,
            // Nothing listens on either server.
            Shape::GroupDown => lab.upstream_group = true,
            // Nothing listens on the upstream's port.
            Shape::Refused => {}
        }
        let gw = lab.start_gateway(gateway)?;
        if shape == Shape::FastCgiKilled {
            lab.kill_php();
        }
        storms.push(traced_load(&lab, gw, name, secs, 64, clients)?);
    }
    Ok(storms)
}

/// The bench's smoke run for `cargo xtask test`: two short storms through the whole path (lab,
/// load generator, upstrace, its stats), on HAProxy and on Caddy over HTTPS. Nothing is
/// written; each must give verdicts and lose no event.
pub fn smoke() -> Result<()> {
    upstrace_lab::ensure_root("the bench smoke")?;
    crate::use_release_build();
    for name in ["refused, HAProxy", "refused, Caddy, HTTPS clients"] {
        for row in default_config_storms(2, Some(name))? {
            let (verdicts, lost) = (row["verdicts"].as_u64().unwrap_or(0), &row["lost"]);
            eprintln!("bench smoke: {name}: {verdicts} verdicts, {lost} events lost");
            if verdicts == 0 || lost.as_u64() != Some(0) {
                bail!("bench smoke: {name}: {verdicts} verdicts, {lost} events lost (expected verdicts and none lost)");
            }
        }
    }
    Ok(())
}

/// Only the storm and mixed rows: measured, merged into bench/results.json, RESULTS.md
/// re-rendered.
pub fn run_storms(secs: u64, only: Option<&str>) -> Result<()> {
    upstrace_lab::ensure_root("the benchmark")?;
    crate::use_release_build();
    // The keep-alive lab only when one of its rows runs (every row when `--only` is not given).
    let (mut storms, mixed) = if KEEPALIVE_STORMS.iter().any(|(name, _)| picked(only, name)) {
        let mut lab = Lab::new()?;
        lab.nginx_workers = 2;
        lab.start_upstream("ok")?;
        let gw = lab.start_gateway(GatewayKind::Nginx)?;
        wrk(&lab, 4, 32)?;
        storms_and_mixed(&mut lab, gw, secs, only)?
    } else {
        (Vec::new(), Vec::new())
    };
    storms.extend(default_config_storms(secs, only)?);
    if only.is_some() {
        println!("{}", serde_json::to_string_pretty(&storms)?);
        return Ok(());
    }
    let dir = crate::workspace_root().join("bench");
    let path = dir.join("results.json");
    let mut r: serde_json::Value = std::fs::read_to_string(&path).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
    r["storms"] = serde_json::json!(storms);
    r["mixed"] = serde_json::json!(mixed);
    std::fs::write(&path, serde_json::to_string_pretty(&r)? + "\n")?;
    std::fs::write(dir.join("RESULTS.md"), markdown(&r))?;
    Ok(())
}

/// Only the HTTPS rows: measured, merged into bench/results.json, RESULTS.md re-rendered.
pub fn run_https(pairs: usize, secs: u64) -> Result<()> {
    upstrace_lab::ensure_root("the benchmark")?;
    crate::use_release_build();
    let https = crate::bench_https::run(pairs, secs)?;
    let dir = crate::workspace_root().join("bench");
    let path = dir.join("results.json");
    let mut r: serde_json::Value = std::fs::read_to_string(&path).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
    r["https"] = https;
    std::fs::write(&path, serde_json::to_string_pretty(&r)? + "\n")?;
    std::fs::write(dir.join("RESULTS.md"), markdown(&r))?;
    println!("{}", crate::bench_https::markdown(&r["https"]));
    Ok(())
}
