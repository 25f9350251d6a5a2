//! The live source: load the probes, pick the gateway processes, and pump ring-buffer events
//! through the pipeline until the time limit or a signal.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    clock,
    engine::decode::{Decoder, KernelEvent},
    gateway_log::{GatewayWords, live::LiveLogs},
    health::{ProgramCost, Stats},
    pipeline::Pipeline,
    source::{
        discover,
        probes::{
            OnDemand, Probes,
            uprobes::{GoTls, OpenSsl},
        },
        ring_fill::RingFill,
        tls::{self, ClientView},
    },
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
    /// Gateways (by name) whose answers are not read but inferred from upstream failures.
    pub infer: Vec<String>,
    /// Say on stderr when gateway processes come and go (the service's log).
    pub announce: bool,
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
        if self.pids.is_empty() { format!("processes named {}", self.comms.join(", ")) } else { format!("pids {:?}", self.pids) }
    }
}

/// What the live source counts itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub events: u64,
    pub decode_errors: u64,
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
        comms: if opts.comms.is_empty() { discover::DEFAULT_COMMS.iter().map(|s| s.to_string()).collect() } else { opts.comms.clone() },
    }
}

/// The live source's state between its ticks.
struct Live {
    probes: Probes,
    targets: Targets,
    /// Traced gateway processes.
    known: BTreeSet<u32>,
    /// Processes that listen (upstreams on this host), for their accept queues.
    listener_pids: BTreeSet<u32>,
    /// Full accept queues, and when each was last reported (again every second while full).
    overflowing: HashMap<SocketAddr, u64>,
    decoder: Decoder,
    counts: Counts,
    openssl: OpenSsl,
    go_tls: GoTls,
    /// The client-side view of each gateway (by name), as said at start and when it changes.
    views: BTreeMap<String, ClientView>,
    quiet: bool,
    ring_fill: Option<RingFill>,
    infer: Vec<String>,
    announce: bool,
    /// When a traced connection last retransmitted: the per-packet hook stays on until
    /// `PACKET_HOOK_IDLE` after it.
    last_trouble: Option<std::time::Instant>,
}

pub async fn run(opts: Options, pipeline: &mut Pipeline) -> Result<Counts> {
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
    let ring_fill = RingFill::new(std::os::fd::AsFd::as_fd(&ring), u64::from(tracer_common::RING_BYTES));
    if opts.bpf_stats {
        probes.enable_run_time_stats()?;
    }
    pipeline.latency.get_or_insert_with(Default::default);
    pipeline.hold_verdicts();
    pipeline.gateway_words = GatewayWords::Live(LiveLogs::new(clock::boot_offset_ns()));
    if let Some(netns) = discover::host_netns() {
        pipeline.engine.set_host_netns(netns);
    }
    let quiet = pipeline.interactive();
    let refreshing = pipeline.wants_refresh();
    if !quiet {
        eprintln!("upstrace: {}", probes.report);
    }
    let decoder = probes.decoder.clone();
    let mut live = Live {
        probes,
        targets,
        known: BTreeSet::new(),
        listener_pids: BTreeSet::new(),
        overflowing: HashMap::new(),
        decoder,
        counts: Counts::default(),
        openssl: OpenSsl::default(),
        go_tls: GoTls::default(),
        views: BTreeMap::new(),
        quiet,
        ring_fill,
        infer: opts.infer.clone(),
        announce: opts.announce && !quiet,
        last_trouble: None,
    };
    for pid in &initial {
        live.probes.trace_pid(*pid)?;
        live.known.insert(*pid);
        live.adopt_client_view(*pid, pipeline);
    }
    live.adopt_listeners(pipeline)?;
    if !quiet {
        eprintln!("upstrace: tracing {} ({} processes now)", live.targets.describe(), live.known.len());
    }
    let traced: Vec<(u32, String)> = live.known.iter().map(|&p| (p, discover::comm_of(p).unwrap_or_default())).collect();
    pipeline.started(&live.probes.report, &traced);

    // SAFETY: the ring buffer owns its fd and lives inside the AsyncFd until both are dropped.
    let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|e| anyhow::anyhow!("ring buffer fd: {e}"))?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    // A hangup ends a terminal session; a service reloads nothing by surprise, so it says so.
    let mut sighup = signal(SignalKind::hangup())?;
    let mut rescan = tokio::time::interval(Duration::from_secs(1));
    let mut stats_tick = tokio::time::interval(opts.stats_interval);
    stats_tick.tick().await;
    let deadline = tokio::time::sleep(opts.duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
    tokio::pin!(deadline);
    // The kernel wakes upstrace only once 64 KiB of events wait in the ring buffer: this tick
    // reads it the rest of the time. Verdicts wait a few ms for the events that close a story; the
    // tick also releases them when the ring buffer is quiet.
    let mut verdict_tick = tokio::time::interval(Duration::from_millis(10));
    let mut queue_tick = tokio::time::interval(Duration::from_millis(250));
    let mut log_tick = tokio::time::interval(Duration::from_millis(500));
    let mut ui_tick = tokio::time::interval(Duration::from_secs(1));

    let traced_until_stop: Result<()> = async {
        loop {
            tokio::select! {
                guard = ring.readable_mut() => {
                    let mut guard = guard?;
                    live.drain(guard.get_inner_mut(), pipeline)?;
                    guard.clear_ready();
                }
                _ = rescan.tick() => live.rescan(pipeline)?,
                _ = verdict_tick.tick() => {
                    // Judge by wall time only once everything the kernel has sent is processed,
                    // or a verdict could miss the events that close its story.
                    live.drain(ring.get_mut(), pipeline)?;
                    let now = clock::monotonic_ns();
                    pipeline.tick(now)?;
                    if !pipeline.poll(now)? {
                        break;
                    }
                }
                _ = queue_tick.tick() => live.sample_accept_queues(pipeline)?,
                _ = ui_tick.tick(), if refreshing => {
                    let snapshot = live.snapshot();
                    pipeline.refresh(snapshot);
                }
                _ = stats_tick.tick() => {
                    let snapshot = live.snapshot();
                    pipeline.stats(snapshot)?;
                }
                _ = log_tick.tick() => {
                    if let Some(logger) = live.probes.logger.as_mut() {
                        logger.flush();
                    }
                }
                _ = &mut deadline => break,
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
                _ = sighup.recv() => {
                    if !live.announce {
                        break;
                    }
                    eprintln!("upstrace: SIGHUP ignored: settings are read at start only (restart to apply new ones)");
                }
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = traced_until_stop {
        // The verdicts already decided still go out (best effort: an output may be what failed).
        let _ = pipeline.flush();
        return Err(e);
    }
    live.drain(ring.get_mut(), pipeline)?;
    pipeline.finish()?;
    let snapshot = live.snapshot();
    pipeline.stats(snapshot)?;
    pipeline.flush()?;
    Ok(live.counts)
}

impl Live {
    /// Upstreams already listening (in any netns): watch their deaths, and tell the engine
    /// who owns which port, as if their listen() had been seen.
    fn adopt_listeners(&mut self, pipeline: &mut Pipeline) -> Result<()> {
        let now = clock::monotonic_ns();
        for l in discover::listeners() {
            self.probes.watch_listener(l.pid);
            self.listener_pids.insert(l.pid);
            let mut ev = KernelEvent::listen_snapshot(now, l.pid, &l.comm, l.addr);
            ev.line = l.title;
            pipeline.event(&ev)?;
        }
        for l in discover::unix_listeners() {
            self.probes.watch_listener(l.pid);
            pipeline.event(&KernelEvent::unix_listen_snapshot(now, l.pid, &l.comm, &l.path, l.title))?;
        }
        Ok(())
    }

    /// Read what this gateway process answers its clients: at its writes always, and at
    /// OpenSSL's `SSL_write` when it maps a libssl. Said once per gateway name and view.
    /// Its own log is looked for too (its words go into its verdicts).
    fn adopt_client_view(&mut self, pid: u32, pipeline: &mut Pipeline) {
        let comm = discover::comm_of(pid).unwrap_or_default();
        if let GatewayWords::Live(logs) = &mut pipeline.gateway_words
            && let Some(said) = logs.adopt(pid, &comm)
            && !self.quiet
        {
            eprintln!("upstrace: {said}");
        }
        if self.infer.contains(&comm) {
            if self.views.insert(comm.clone(), ClientView::InferredOnly).is_none() {
                pipeline.engine.set_answers_readable(&comm, false);
                if !self.quiet {
                    eprintln!("upstrace: {comm}: client view inferred only (--infer)");
                }
            }
            return;
        }
        let mut via = Vec::new();
        for lib in tls::libssl_of(pid) {
            match self.openssl.attach(&mut self.probes, &lib) {
                Ok(said) => via.push(said),
                Err(e) if !self.quiet => eprintln!("upstrace: {comm} {pid}: TLS plaintext not readable: {e:#}"),
                Err(_) => {}
            }
        }
        let openssl = !via.is_empty();
        let mut go = false;
        if !openssl && let Some(exe) = tls::executable_of(pid) {
            match self.go_tls.read(&mut self.probes, &exe) {
                Ok(Some(said)) => {
                    go = true;
                    via.push(said);
                }
                Ok(None) => {}
                Err(e) if !self.quiet => eprintln!("upstrace: {comm} {pid}: Go TLS plaintext not readable: {e:#}"),
                Err(_) => {}
            }
        }
        let view = tls::view_of(&comm, openssl, go);
        let known = self.views.get(&comm).copied();
        if known.is_none_or(|v| v != ClientView::OpenSsl && view != v) {
            self.views.insert(comm.clone(), view);
            pipeline.engine.set_answers_readable(&comm, view.readable());
            if !self.quiet {
                let via = if via.is_empty() { String::new() } else { format!(" ({})", via.join(", ")) };
                eprintln!("upstrace: {comm}: client view {}{via}", view.as_str());
            }
        }
    }

    /// Everything in the ring buffer, through the pipeline.
    fn drain(&mut self, ring: &mut RingBuf<MapData>, pipeline: &mut Pipeline) -> Result<()> {
        if let Some(fill) = self.ring_fill.as_mut() {
            fill.sample();
        }
        while let Some(item) = ring.next() {
            match self.decoder.decode(&item) {
                Ok(mut ev) => {
                    self.counts.events += 1;
                    // A retransmit on a traced connection: ICMP errors about it may follow.
                    if ev.kind == crate::engine::decode::Kind::Retransmit {
                        self.last_trouble = Some(std::time::Instant::now());
                        self.probes.attach_on_demand(OnDemand::Packets);
                    }
                    // A unix-socket upstream connected: until close(2) is hooked the kernel
                    // ships each one's connect (it holds nothing it could not end), so the
                    // first one seen brings the hook.
                    if ev.kind == crate::engine::decode::Kind::ConnectSyscall && ev.path.is_some() && ev.value == 0 {
                        self.probes.attach_on_demand(OnDemand::UnixClose);
                    }
                    // A unix socket that refused the gateway for permission: the file's owner and
                    // mode, read now (rare: only on such a failure).
                    if ev.kind == crate::engine::decode::Kind::ConnectSyscall
                        && matches!(i32::try_from(-ev.value), Ok(tracer_common::errno::EACCES | tracer_common::errno::EPERM))
                        && let Some(path) = ev.path.as_deref()
                    {
                        ev.socket_file = discover::socket_file(ev.pid, path);
                    }
                    pipeline.event(&ev)?;
                }
                Err(_) => self.counts.decode_errors += 1,
            }
        }
        pipeline.flush().context("writing output")
    }

    /// Gateways restart and reload: pick up new processes, forget dead ones.
    fn rescan(&mut self, pipeline: &mut Pipeline) -> Result<()> {
        if self.last_trouble.is_some_and(|t| t.elapsed() > crate::source::probes::PACKET_HOOK_IDLE) {
            self.last_trouble = None;
            self.probes.detach_on_demand(OnDemand::Packets);
        }
        let mut new = Vec::new();
        for pid in self.targets.scan() {
            if self.known.insert(pid) {
                self.probes.trace_pid(pid)?;
                self.adopt_client_view(pid, pipeline);
                new.push(pid);
            }
        }
        let before = self.known.len();
        self.known.retain(|&pid| discover::pid_exists(pid));
        let gone = before - self.known.len();
        if self.announce && (!new.is_empty() || gone > 0) {
            eprintln!("upstrace: gateway processes: {} new {new:?}, {gone} gone, {} traced now", new.len(), self.known.len());
        }
        Ok(())
    }

    /// Accept-queue overflow drops SYNs without a drop reason on some kernels: while SYNs go
    /// unanswered, sample the listeners' queues (one read per network namespace; reading
    /// /proc/net/tcp walks the whole table, so never while all is well).
    fn sample_accept_queues(&mut self, pipeline: &mut Pipeline) -> Result<()> {
        if !pipeline.engine.tracker.syns_unanswered(clock::monotonic_ns()) {
            return Ok(());
        }
        self.listener_pids.extend(pipeline.engine.tracker.listener_pids());
        self.listener_pids.retain(|&p| discover::pid_exists(p));
        let mut seen_ns = BTreeSet::new();
        let mut now_full = HashMap::new();
        let now = clock::monotonic_ns();
        for &pid in &self.listener_pids {
            let Some(ns) = discover::netns_of(pid) else { continue };
            if !seen_ns.insert(ns) {
                continue;
            }
            for (addr, queued, limit) in discover::full_accept_queues(pid) {
                let last = self.overflowing.get(&addr).copied();
                if last.is_none_or(|t| now.saturating_sub(t) >= 1_000_000_000) {
                    let owner = pipeline.engine.tracker.listener_of(addr).unwrap_or((pid, Default::default()));
                    pipeline.event(&KernelEvent::listen_overflow(now, owner.0, owner.1.as_str(), addr, queued, limit))?;
                    now_full.insert(addr, now);
                } else {
                    now_full.insert(addr, last.unwrap_or(now));
                }
            }
        }
        self.overflowing = now_full;
        Ok(())
    }

    /// The source's part of a stats snapshot (the pipeline adds its own).
    fn snapshot(&self) -> Stats {
        let mut lost = self.probes.counters();
        lost.push(("decode_errors", self.counts.decode_errors));
        let costs = self.probes.program_costs();
        Stats {
            events: self.counts.events,
            traced_processes: self.known.len(),
            lost_total: lost.iter().map(|(_, n)| n).sum(),
            lost,
            exchanges_shipped_early: self.probes.exchanges_shipped_early(),
            status_lines_expired: self.probes.status_lines_expired(),
            evicted: self.probes.lru_evictions(),
            on_demand_attached: OnDemand::ALL.into_iter().filter(|&h| self.probes.is_attached(h)).map(OnDemand::program).collect(),
            ring: self.ring_fill.as_ref().map(RingFill::usage),
            programs: costs
                .into_iter()
                .map(|(name, runs, ns)| ProgramCost { name, runs, avg_ns: if runs > 0 { ns as f64 / runs as f64 } else { 0.0 } })
                .collect(),
            ..Stats::default()
        }
    }
}
