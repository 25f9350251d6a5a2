//! The live source: load the probes, pick the gateway processes, and pump ring-buffer events
//! through the pipeline until the time limit or a signal.
use std::{collections::BTreeSet, time::Duration};

use anyhow::{Context as _, Result, bail};
use serde_json::{Map, json};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    clock,
    engine::decode::KernelEvent,
    source::discover,
    pipeline::Pipeline,
    source::probes::Probes,
};

#[derive(Debug, Clone)]
pub struct Options {
    /// Hold the kernel's BPF run-time statistics and report each program's cost.
    pub bpf_stats: bool,
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    pub wait: bool,
    pub duration: Option<Duration>,
    pub stats_interval: Duration,
}

/// Which processes are gateways: explicit pids, or everything with a gateway's name.
struct Targets {
    pids: Vec<u32>,
    comms: Vec<String>,
}

impl Targets {
    fn scan(&self) -> BTreeSet<u32> {
        if self.pids.is_empty() {
            discover::pids_by_comm(&self.comms)
        } else {
            let roots = self.pids.iter().copied().filter(|&p| discover::pid_exists(p)).collect();
            discover::with_descendants(&roots)
        }
    }

    fn describe(&self) -> String {
        if self.pids.is_empty() {
            format!("processes named {}", self.comms.join(", "))
        } else {
            format!("pids {:?}", self.pids)
        }
    }
}

pub struct Stats {
    pub events: u64,
    pub decode_errors: u64,
    pub kernel: Vec<(&'static str, u64)>,
}

impl Stats {
    pub fn lost(&self) -> u64 {
        self.kernel.iter().map(|(_, v)| v).sum::<u64>() + self.decode_errors
    }
}

/// The checks that give one clear line, without loading anything.
pub fn preflight(opts: &Options) -> Result<()> {
    for &pid in &opts.pids {
        if !discover::pid_exists(pid) {
            bail!("no such process: {pid}");
        }
    }
    crate::source::probes::preflight(&crate::source::probes::btf_path())?;
    if !opts.wait && targets(opts).scan().is_empty() {
        bail!("no gateway process found ({}); start one, pass --pid, or use --wait", targets(opts).describe());
    }
    Ok(())
}

fn targets(opts: &Options) -> Targets {
    Targets {
        pids: opts.pids.clone(),
        comms: if opts.comms.is_empty() {
            discover::DEFAULT_COMMS.iter().map(|s| s.to_string()).collect()
        } else {
            opts.comms.clone()
        },
    }
}

pub async fn run<W: std::io::Write>(opts: Options, pipeline: &mut Pipeline<W>) -> Result<Stats> {
    for &pid in &opts.pids {
        if !discover::pid_exists(pid) {
            bail!("no such process: {pid}");
        }
    }
    let targets = targets(&opts);
    let initial = targets.scan();
    if initial.is_empty() && !opts.wait {
        bail!("no gateway process found ({}); start one, pass --pid, or use --wait", targets.describe());
    }

    let (mut probes, ring) = Probes::load()?;
    if opts.bpf_stats {
        probes.enable_run_time_stats()?;
    }
    pipeline.latency.get_or_insert_with(Default::default);
    if pipeline.observer.is_none() {
        eprintln!("upstrace: {}", probes.report);
    }
    let mut known = BTreeSet::new();
    for pid in &initial {
        probes.trace_pid(*pid)?;
        known.insert(*pid);
    }
    // Upstreams already listening (in any netns): watch their deaths, and tell the engine
    // who owns which port, as if their listen() had been seen.
    let now = clock::monotonic_ns();
    let mut listener_pids = BTreeSet::new();
    for l in discover::listeners() {
        probes.watch_listener(l.pid);
        listener_pids.insert(l.pid);
        pipeline.event(&KernelEvent::listen_snapshot(now, l.pid, &l.comm, l.addr))?;
    }
    let mut queue_tick = tokio::time::interval(Duration::from_millis(250));
    let mut log_tick = tokio::time::interval(Duration::from_millis(500));
    let mut ui_tick = tokio::time::interval(Duration::from_secs(1));
    // Full accept queues, and when each was last reported (again every second while full).
    let mut overflowing: std::collections::HashMap<std::net::SocketAddr, u64> = Default::default();
    if pipeline.observer.is_none() {
        eprintln!("upstrace: tracing {} ({} processes now)", targets.describe(), known.len());
    }
    if let Some(o) = pipeline.observer.as_mut() {
        let traced: Vec<(u32, String)> = known.iter().map(|&p| (p, discover::comm_of(p).unwrap_or_default())).collect();
        o.started(&probes.report, &traced);
    }

    // SAFETY: the ring buffer owns its fd and lives inside the AsyncFd until both are dropped.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("ring buffer fd: {e}"))?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut rescan = tokio::time::interval(Duration::from_secs(1));
    let mut stats_tick = tokio::time::interval(opts.stats_interval);
    stats_tick.tick().await;
    let deadline = tokio::time::sleep(opts.duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
    tokio::pin!(deadline);
    let mut stats = Stats { events: 0, decode_errors: 0, kernel: vec![] };

    let decoder = probes.decoder.clone();
    let drain = |ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
                 pipeline: &mut Pipeline<W>,
                 stats: &mut Stats|
     -> Result<()> {
        while let Some(item) = ring.next() {
            match decoder.decode(&item) {
                Ok(ev) => {
                    stats.events += 1;
                    pipeline.event(&ev)?;
                }
                Err(_) => stats.decode_errors += 1,
            }
        }
        pipeline.flush().context("writing output")?;
        Ok(())
    };
    // Verdicts wait a few ms for the events that close a story; this tick releases them
    // when the ring buffer is quiet.
    let mut verdict_tick = tokio::time::interval(Duration::from_millis(10));

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), pipeline, &mut stats)?;
                guard.clear_ready();
            }
            _ = rescan.tick() => {
                // Gateways restart and reload: pick up new processes, forget dead ones.
                for pid in targets.scan() {
                    if known.insert(pid) {
                        probes.trace_pid(pid)?;
                    }
                }
                known.retain(|&pid| discover::pid_exists(pid));
            }
            _ = verdict_tick.tick() => {
                // Judge by wall time only once everything the kernel has sent is processed,
                // or a verdict could miss the events that close its story.
                drain(ring.get_mut(), pipeline, &mut stats)?;
                let now = clock::monotonic_ns();
                pipeline.tick(now)?;
                if !pipeline.poll(now)? {
                    break;
                }
            }
            _ = queue_tick.tick() => {
                // Accept-queue overflow drops SYNs without a drop reason on some kernels:
                // while SYNs go unanswered, sample the listeners' queues (one read per
                // network namespace; reading /proc/net/tcp walks the whole table, so never
                // while all is well).
                if !pipeline.engine.tracker.syns_unanswered(clock::monotonic_ns()) {
                    continue;
                }
                listener_pids.extend(pipeline.engine.tracker.listener_pids());
                listener_pids.retain(|&p| discover::pid_exists(p));
                let mut seen_ns = BTreeSet::new();
                let mut now_full = std::collections::HashMap::new();
                let now = clock::monotonic_ns();
                for &pid in &listener_pids {
                    let Some(ns) = discover::netns_of(pid) else { continue };
                    if !seen_ns.insert(ns) {
                        continue;
                    }
                    for (addr, queued, limit) in discover::full_accept_queues(pid) {
                        let last = overflowing.get(&addr).copied();
                        if last.is_none_or(|t| now.saturating_sub(t) >= 1_000_000_000) {
                            let owner = pipeline.engine.tracker.listener_of(addr).unwrap_or((pid, String::new()));
                            pipeline.event(&KernelEvent::listen_overflow(now, owner.0, &owner.1, addr, queued, limit))?;
                            now_full.insert(addr, now);
                        } else {
                            now_full.insert(addr, last.unwrap_or(now));
                        }
                    }
                }
                overflowing = now_full;
            }
            _ = ui_tick.tick(), if pipeline.observer.is_some() => {
                if let Some(o) = pipeline.observer.as_mut() {
                    let mut lost: Vec<(String, u64)> = probes.counters().iter().map(|(n, v)| (n.to_string(), *v)).collect();
                    lost.push(("decode_errors".into(), stats.decode_errors));
                    push_evictions(&mut lost, &probes, &pipeline.engine.tracker);
                    o.stats(lost);
                }
            }
            _ = stats_tick.tick() => {
                stats.kernel = probes.counters();
                if let Some(o) = pipeline.observer.as_mut() {
                    let mut lost: Vec<(String, u64)> = stats.kernel.iter().map(|(n, v)| (n.to_string(), *v)).collect();
                    lost.push(("decode_errors".into(), stats.decode_errors));
                    push_evictions(&mut lost, &probes, &pipeline.engine.tracker);
                    o.stats(lost);
                }
                write_stats(pipeline, &stats, known.len(), &probes)?;
            }
            _ = log_tick.tick() => {
                if let Some(logger) = probes.logger.as_mut() {
                    logger.flush();
                }
            }
            _ = &mut deadline => break,
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    drain(ring.get_mut(), pipeline, &mut stats)?;
    pipeline.finish()?;
    stats.kernel = probes.counters();
    write_stats(pipeline, &stats, known.len(), &probes)?;
    pipeline.sink.flush()?;
    Ok(stats)
}

/// Evictions for the dashboard (named `evicted_*`: it shows them apart from losses).
fn push_evictions(list: &mut Vec<(String, u64)>, probes: &Probes, tracker: &crate::engine::track::Tracker) {
    let evicted = probes.lru_evictions();
    list.push(("evicted_closed_sockets".into(), evicted.closed_sockets));
    list.push(("evicted_upstream_endpoints".into(), evicted.upstream_endpoints));
    list.push(("evicted_unix_sockets".into(), evicted.unix_sockets));
    list.push(("evicted_attempts".into(), tracker.evicted));
}

fn write_stats<W: std::io::Write>(pipeline: &mut Pipeline<W>, stats: &Stats, traced: usize, probes: &Probes) -> Result<()> {
    let mut lost = Map::new();
    for (name, v) in &stats.kernel {
        lost.insert(name.to_string(), json!(v));
    }
    lost.insert("decode_errors".into(), json!(stats.decode_errors));
    let mut fields = Map::new();
    fields.insert("time".into(), json!(clock::rfc3339(clock::monotonic_ns() as i128 + clock::boot_offset_ns())));
    fields.insert("events".into(), json!(stats.events));
    fields.insert("traced_processes".into(), json!(traced));
    fields.insert("lost_total".into(), json!(stats.lost()));
    fields.insert("lost".into(), json!(lost));
    fields.insert("verdicts".into(), json!(pipeline.verdicts));
    // Healthy keep-alive exchanges stay in the kernel; past its map's capacity they are
    // shipped like failures would be (more events, nothing lost).
    fields.insert("exchanges_shipped_early".into(), json!(probes.exchanges_shipped_early()));
    // A status line written to something other than a socket (or a thread stalled for a
    // second between the write and the send): counted, since it may be a 5xx left unexplained.
    fields.insert("status_lines_expired".into(), json!(probes.status_lines_expired()));
    // LRU evictions: the oldest closed sockets and upstream endpoints made room (by design;
    // counted so a loss of late events is never silent).
    fields.insert("evicted".into(), json!(probes.lru_evictions()));
    // The engine's own bounds: attempts dropped over its cap are counted, never silent.
    let tracker = &pipeline.engine.tracker;
    fields.insert(
        "engine".into(),
        json!({
            "attempts": tracker.attempts.len(),
            "attempts_evicted": tracker.evicted,
            "longest_thread_queue": tracker.by_tid.values().map(|q| q.len()).max().unwrap_or(0),
        }),
    );
    if let Some((p50, p99, max)) = pipeline.latency.as_ref().and_then(|h| h.percentiles_ms()) {
        fields.insert("verdict_latency_ms".into(), json!({"p50": p50, "p99": p99, "max": max}));
    }
    if let Some((late, ts_ns, what)) = pipeline.slowest.take() {
        let time = clock::rfc3339(ts_ns as i128 + clock::boot_offset_ns());
        fields.insert("slowest_verdict".into(), json!({"latency_ms": late as f64 / 1e6, "status_time": time, "verdict": what}));
    }
    if let Some(r) = &pipeline.recorder {
        fields.insert("recorded_lines".into(), json!(r.written));
        if let Some(f) = &r.failed {
            fields.insert("record_error".into(), json!(f));
        }
    }
    let costs = probes.program_costs();
    if !costs.is_empty() {
        let programs: Vec<_> = costs
            .iter()
            .map(|(name, runs, ns)| json!({"name": name, "runs": runs, "avg_ns": if *runs > 0 { *ns as f64 / *runs as f64 } else { 0.0 }}))
            .collect();
        fields.insert("programs".into(), json!(programs));
    }
    let text = format!(
        "-- stats: {} events, {} traced processes, {} lost{}",
        stats.events,
        traced,
        stats.lost(),
        if stats.lost() > 0 { "  <-- EVENTS WERE LOST" } else { "" }
    );
    pipeline.sink.record("stats", fields, &text)?;
    Ok(())
}
