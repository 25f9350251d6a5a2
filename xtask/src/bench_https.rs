//! `cargo xtask bench --https`: what reading HTTPS answers costs. nginx (2 workers) terminates
//! TLS in the lab's gateway namespace in front of a healthy upstream; keep-alive clients (wrk
//! for HTTP/1.1, h2load for HTTP/2) load it with and without upstrace, alternated; a plaintext
//! row gives the ratio to compare with. A last row traces another process that maps the same
//! libssl, so the uprobe is attached while the loaded nginx is not traced: what the probes cost
//! processes upstrace does not trace. Bounded runs, lab namespaces only.
use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result};
use upstrace_lab::lab::{ClientMode, GatewayKind, Lab};

use crate::measure::{LOOPBACK, cpu_ticks, load, mean, runs_and_bpf_us, series, start_tracer};

/// A process that maps libssl and does nothing: traced, it makes upstrace attach the OpenSSL
/// probe to the library file the loaded (untraced) nginx uses too.
fn idle_libssl_process() -> Result<Child> {
    let child = Command::new("python3")
        .args(["-c", "import ssl, time; time.sleep(600)"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("starting an idle python3 with ssl")?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(child)
}

pub fn run(pairs: usize, secs: u64) -> Result<serde_json::Value> {
    let mut rows = Vec::new();
    for (mode, untraced) in [(ClientMode::Plain, false), (ClientMode::TlsH1, false), (ClientMode::TlsH2, false), (ClientMode::TlsH1, true)]
    {
        let name = format!("{}{}", mode.name(), if untraced { ", nginx not traced" } else { "" });
        eprintln!("bench https: {name}, {pairs} pairs of {secs} s");
        let mut lab = Lab::new()?;
        lab.nginx_workers = 2;
        lab.client = mode;
        lab.start_upstream("ok")?;
        let gw = lab.start_gateway(GatewayKind::Nginx)?;
        load(&lab.gw_ns, LOOPBACK, mode, 4, 32)?; // warm-up
        let mut idle = if untraced { Some(idle_libssl_process()?) } else { None };
        let target = idle.as_ref().map_or(gw, |c| c.id());
        let (mut rps, mut latency, mut user_us) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..pairs {
            let without = load(&lab.gw_ns, LOOPBACK, mode, secs, 32)?;
            let t = start_tracer(target, false)?;
            let ticks = cpu_ticks(t.pid());
            let with = load(&lab.gw_ns, LOOPBACK, mode, secs, 32)?;
            // upstrace's own process: CPU seconds (100 ticks a second) per request served.
            user_us.push(cpu_ticks(t.pid()).saturating_sub(ticks) as f64 / 100.0 / with.requests.max(1.0) * 1e6);
            t.stop()?;
            rps.push(with.rps / without.rps);
            latency.push(with.latency_ms / without.latency_ms);
            eprintln!(
                "bench https: {name}: without {:.0} req/s {:.2} ms, with {:.0} req/s {:.2} ms",
                without.rps, without.latency_ms, with.rps, with.latency_ms
            );
        }
        // The probe's own runs and cost, in a run of its own (the counting costs clock reads).
        let t = start_tracer(target, true)?;
        let counted = load(&lab.gw_ns, LOOPBACK, mode, secs, 32)?;
        let (_, lines) = t.stop()?;
        let stats = lines.last().cloned().unwrap_or_default();
        let programs = stats["programs"].as_array().cloned().unwrap_or_default();
        let per_request: Vec<serde_json::Value> = programs
            .iter()
            .filter(|p| p["runs"].as_f64().unwrap_or(0.0) > 0.0)
            .map(|p| {
                serde_json::json!({"name": p["name"], "runs_per_request": p["runs"].as_f64().unwrap_or(0.0) / counted.requests.max(1.0), "avg_ns": p["avg_ns"]})
            })
            .collect();
        let (runs_per_request, bpf_us) = runs_and_bpf_us(&per_request, "runs_per_request");
        if let Some(mut c) = idle.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        rows.push(serde_json::json!({
            "row": name,
            "client": mode.name(),
            "gateway_traced": !untraced,
            "throughput_ratio": series(&rps),
            "latency_ratio": series(&latency),
            "latency_figure": if mode == ClientMode::TlsH2 { "mean" } else { "p99" },
            "programs_per_request": per_request,
            "runs_per_request": runs_per_request,
            "events_per_request": stats["events"].as_f64().unwrap_or(0.0) / counted.requests.max(1.0),
            "lost": stats["lost_total"],
            "cpu_us_per_request": {"bpf": bpf_us, "userspace": mean(&user_us)},
        }));
    }
    Ok(serde_json::json!({"pairs": pairs, "seconds": secs, "rows": rows}))
}

/// Section 5 of RESULTS.md.
pub fn markdown(h: &serde_json::Value) -> String {
    let mut md = String::from(
        "\n## 6. HTTPS clients (nginx 2 workers terminating TLS; wrk -c32 for HTTP/1.1, h2load -c32 -m4 for HTTP/2; keep-alive clients)\n\n",
    );
    md.push_str("The last row traces an idle process mapping the same libssl: the OpenSSL probe is attached (for every process, filtered in the kernel) while the loaded nginx is not traced.\n\n");
    md.push_str("| row | throughput with / without (min-max) | latency with / without (min-max) | events per request | program runs per request | CPU µs per request: BPF + userspace | lost | programs per request (avg ns) |\n|---|---|---|---:|---:|---:|---:|---|\n");
    for r in h["rows"].as_array().into_iter().flatten() {
        let f = |v: &serde_json::Value| {
            format!(
                "{:.3} ({:.3}-{:.3})",
                v["mean"].as_f64().unwrap_or(0.0),
                v["min"].as_f64().unwrap_or(0.0),
                v["max"].as_f64().unwrap_or(0.0)
            )
        };
        let programs: Vec<String> = r["programs_per_request"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["runs_per_request"].as_f64().unwrap_or(0.0) >= 0.05)
            .map(|p| {
                format!(
                    "{} {:.2} ({:.0})",
                    p["name"].as_str().unwrap_or("?"),
                    p["runs_per_request"].as_f64().unwrap_or(0.0),
                    p["avg_ns"].as_f64().unwrap_or(0.0)
                )
            })
            .collect();
        let _ = std::fmt::Write::write_fmt(
            &mut md,
            format_args!(
                "| {} | {} | {} {} | {:.3} | {:.2} | {:.2} + {:.2} | {} | {} |\n",
                r["row"].as_str().unwrap_or("?"),
                f(&r["throughput_ratio"]),
                f(&r["latency_ratio"]),
                r["latency_figure"].as_str().unwrap_or(""),
                r["events_per_request"].as_f64().unwrap_or(f64::NAN),
                r["runs_per_request"].as_f64().unwrap_or(f64::NAN),
                r["cpu_us_per_request"]["bpf"].as_f64().unwrap_or(f64::NAN),
                r["cpu_us_per_request"]["userspace"].as_f64().unwrap_or(f64::NAN),
                r["lost"],
                programs.join(", ")
            ),
        );
    }
    md
}
