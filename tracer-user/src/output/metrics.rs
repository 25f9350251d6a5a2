//! `--metrics-addr`: Prometheus metrics at `/metrics` (OpenMetrics text), served by a tiny
//! HTTP/1.1 responder on the runtime upstrace already runs. Verdicts by gateway, upstream,
//! status, class and cause; per upstream the attempts, failures, connect and first-byte
//! latencies, retransmits and full accept queues (the early warnings); and upstrace's own
//! health. Label values that come from the network are bounded in length, and the number of
//! upstream (and gateway) values is capped: what is over the cap is counted under `other`.
use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::Result;
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{
    clock,
    engine::{
        attribute::{Cause, Class, Delivered, Verdict},
        decode::{KernelEvent, Kind, TcpState},
    },
    health::{AttachReport, Stats},
    output::Output,
};

/// Distinct upstream label values kept; later ones are counted as `other`.
pub const MAX_UPSTREAMS: usize = 200;
/// Distinct gateway (process name) values kept.
pub const MAX_GATEWAYS: usize = 32;
/// Longest label value taken from the network (a unix socket path can be long).
pub const MAX_LABEL_LEN: usize = 120;
/// The value standing for everything over a cap.
pub const OTHER: &str = "other";
/// Upstream sockets followed for latencies; past this the oldest half is forgotten.
const MAX_CONNS: usize = 65_536;

impl EncodeLabelValue for Class {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

impl EncodeLabelValue for Cause {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

/// When a retransmitted segment was sent: a SYN (the connection was not up yet) or data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    Syn,
    Data,
}

impl EncodeLabelValue for Phase {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(match self {
            Phase::Syn => "syn",
            Phase::Data => "data",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VerdictLabels {
    gateway: String,
    upstream: String,
    /// The status the client got, or `none` when it could not be read (inferred verdicts).
    status: String,
    class: Class,
    cause: Cause,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UpstreamLabels {
    gateway: String,
    upstream: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FailureLabels {
    gateway: String,
    upstream: String,
    cause: Cause,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RetransmitLabels {
    gateway: String,
    upstream: String,
    phase: Phase,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ListenerLabels {
    upstream: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CauseLabel {
    cause: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct MapLabel {
    map: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ProgramLabel {
    program: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FoldedLabel {
    label: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn connect_histogram() -> Histogram {
    Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 3.0, 10.0])
}

fn first_byte_histogram() -> Histogram {
    Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0])
}

fn verdict_latency_histogram() -> Histogram {
    Histogram::new([0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0])
}

/// A label value from the network, bounded: at most [`MAX_LABEL_LEN`] bytes (cut at a char
/// boundary, marked with `...`), control characters as `?`. The crate escapes the rest.
pub fn bounded(value: &str) -> String {
    let clean = |s: &str| s.chars().map(|c| if c.is_control() { '?' } else { c }).collect::<String>();
    if value.len() <= MAX_LABEL_LEN {
        return clean(value);
    }
    let mut end = MAX_LABEL_LEN - 3;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", clean(&value[..end]))
}

/// The values one label has taken, up to a cap; later new values become [`OTHER`] and are
/// counted, so a scan of many upstreams cannot make unbounded series.
struct Capped {
    cap: usize,
    seen: HashSet<String>,
    folded: Counter,
}

impl Capped {
    fn new(label: &'static str, cap: usize, folded: &Family<FoldedLabel, Counter>) -> Self {
        let folded = folded.get_or_create(&FoldedLabel { label: label.into() }).clone();
        Capped { cap, seen: HashSet::new(), folded }
    }

    fn value(&mut self, raw: &str) -> String {
        let v = bounded(raw);
        if self.seen.contains(&v) {
            return v;
        }
        if self.seen.len() < self.cap {
            self.seen.insert(v.clone());
            return v;
        }
        self.folded.inc();
        OTHER.to_owned()
    }
}

/// An upstream connection followed for its latencies.
struct Conn {
    key: UpstreamLabels,
    started_ns: u64,
    request_ns: Option<u64>,
}

/// A connect in progress, and when it ended without a handshake (refused, timed out).
struct Connecting {
    upstream: SocketAddr,
    sock: u64,
    ended_ns: Option<u64>,
}

/// How long after a failed handshake a polled connect(2) error still reports that attempt.
const POLL_GRACE_NS: u64 = 5_000_000;

/// The metric handles; the registry (shared with the HTTP responder) holds the same ones.
pub struct Metrics {
    registry: Arc<Registry>,
    verdicts: Family<VerdictLabels, Counter>,
    attempts: Family<UpstreamLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    connect: Histograms<UpstreamLabels>,
    first_byte: Histograms<UpstreamLabels>,
    retransmits: Family<RetransmitLabels, Counter>,
    overflows: Family<ListenerLabels, Counter>,
    events: Counter,
    lost: Family<CauseLabel, Counter>,
    evicted: Family<MapLabel, Counter>,
    shipped_early: Counter,
    otlp_records: Family<OutcomeLabel, Counter>,
    status_lines_expired: Counter,
    traced: Gauge,
    engine_attempts: Gauge,
    ring_size: Gauge,
    ring_used: Gauge,
    ring_peak: Gauge,
    programs: Family<ProgramLabel, Gauge>,
    verdict_latency: Histogram,
    upstreams: Capped,
    gateways: Capped,
    conns: HashMap<u64, Conn>,
    /// Per thread, the connect still waiting for its handshake: an event loop that polls it
    /// gets a connect(2) error about the same attempt, not a new one.
    connecting: HashMap<u32, Connecting>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let verdicts = Family::<VerdictLabels, Counter>::default();
        r.register(
            "upstrace_verdicts",
            "Verdicts (explained 5xx and cut-short responses) by gateway, upstream, status, class and cause",
            verdicts.clone(),
        );
        let attempts = Family::<UpstreamLabels, Counter>::default();
        r.register("upstrace_upstream_attempts", "New connections the gateways opened to each upstream", attempts.clone());
        let failures = Family::<FailureLabels, Counter>::default();
        r.register("upstrace_upstream_failures", "Upstream failures that reached a client (one per verdict), by cause", failures.clone());
        let connect = Histograms::<UpstreamLabels>::new_with_constructor(connect_histogram as fn() -> Histogram);
        r.register_with_unit("upstrace_upstream_connect_duration", "From SYN to established, per upstream", Unit::Seconds, connect.clone());
        let first_byte = Histograms::<UpstreamLabels>::new_with_constructor(first_byte_histogram as fn() -> Histogram);
        r.register_with_unit(
            "upstrace_upstream_first_byte_duration",
            "From the request sent to the first response byte, per upstream (first exchange of each connection, and failed ones)",
            Unit::Seconds,
            first_byte.clone(),
        );
        let retransmits = Family::<RetransmitLabels, Counter>::default();
        r.register(
            "upstrace_upstream_retransmits",
            "TCP retransmits towards each upstream (phase syn: unanswered connects)",
            retransmits.clone(),
        );
        let overflows = Family::<ListenerLabels, Counter>::default();
        r.register(
            "upstrace_upstream_accept_queue_overflows",
            "Times an upstream's accept queue was seen full (sampled while SYNs go unanswered, at most once a second per listener)",
            overflows.clone(),
        );
        let events = Counter::default();
        r.register("upstrace_events", "Kernel events handled", events.clone());
        let lost = Family::<CauseLabel, Counter>::default();
        r.register("upstrace_events_lost", "Kernel events lost, by cause", lost.clone());
        let evicted = Family::<MapLabel, Counter>::default();
        r.register("upstrace_evictions", "Old state evicted to make room (kernel LRU maps, the engine's attempt cap)", evicted.clone());
        let shipped_early = Counter::default();
        r.register(
            "upstrace_exchanges_shipped_early",
            "Healthy keep-alive exchanges shipped because the kernel's map was full",
            shipped_early.clone(),
        );
        let status_lines_expired = Counter::default();
        r.register(
            "upstrace_status_lines_expired",
            "Status lines written but never seen reaching a socket (a 5xx possibly left unexplained)",
            status_lines_expired.clone(),
        );
        let traced = Gauge::default();
        r.register("upstrace_traced_processes", "Gateway processes traced now", traced.clone());
        let engine_attempts = Gauge::default();
        r.register("upstrace_engine_attempts", "Upstream attempts held in memory by the engine", engine_attempts.clone());
        let ring_size = Gauge::default();
        r.register_with_unit("upstrace_ring_buffer_size", "Size of the kernel's event ring buffer", Unit::Bytes, ring_size.clone());
        let ring_used = Gauge::default();
        r.register_with_unit("upstrace_ring_buffer_used", "Bytes waiting in the ring buffer now", Unit::Bytes, ring_used.clone());
        let ring_peak = Gauge::default();
        r.register_with_unit(
            "upstrace_ring_buffer_peak_used",
            "The most bytes ever waiting in the ring buffer (near its size: events about to be lost)",
            Unit::Bytes,
            ring_peak.clone(),
        );
        let otlp_records = Family::<OutcomeLabel, Counter>::default();
        r.register(
            "upstrace_otlp_records",
            "Verdicts sent to the OpenTelemetry collector, by outcome (exported, dropped_queue_full, dropped_failed)",
            otlp_records.clone(),
        );
        let programs = Family::<ProgramLabel, Gauge>::default();
        r.register("upstrace_ebpf_program_attached", "1 for each eBPF program attached, 0 for each one skipped", programs.clone());
        let verdict_latency = verdict_latency_histogram();
        r.register_with_unit(
            "upstrace_verdict_latency",
            "From the status line write to the verdict leaving upstrace",
            Unit::Seconds,
            verdict_latency.clone(),
        );
        let folded = Family::<FoldedLabel, Counter>::default();
        r.register(
            "upstrace_label_values_folded",
            "Observations counted under label value \"other\" because the label had too many values",
            folded.clone(),
        );
        let build = Family::<VersionLabel, Gauge>::default();
        build.get_or_create(&VersionLabel { version: env!("CARGO_PKG_VERSION").into() }).set(1);
        r.register("upstrace_build_info", "upstrace's version", build);
        let upstreams = Capped::new("upstream", MAX_UPSTREAMS, &folded);
        let gateways = Capped::new("gateway", MAX_GATEWAYS, &folded);
        Metrics {
            registry: Arc::new(r),
            verdicts,
            attempts,
            failures,
            connect,
            first_byte,
            retransmits,
            overflows,
            events,
            lost,
            evicted,
            shipped_early,
            otlp_records,
            status_lines_expired,
            traced,
            engine_attempts,
            ring_size,
            ring_used,
            ring_peak,
            programs,
            verdict_latency,
            upstreams,
            gateways,
            conns: HashMap::new(),
            connecting: HashMap::new(),
        }
    }

    /// The exposition, as a scrape gets it.
    pub fn encode(&self) -> String {
        encode(&self.registry)
    }

    /// Serve `/metrics` on `addr` from the current tokio runtime; returns the bound address.
    /// Fails (address in use, not permitted) without touching tracing.
    pub fn serve(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let bound = std_listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        tokio::spawn(accept_loop(listener, self.registry.clone()));
        Ok(bound)
    }

    fn upstream_labels(&mut self, comm: &str, upstream: &str) -> UpstreamLabels {
        UpstreamLabels { gateway: self.gateways.value(comm), upstream: self.upstreams.value(upstream) }
    }

    fn follow(&mut self, sock: u64, key: UpstreamLabels, started_ns: u64) {
        if sock == 0 {
            return;
        }
        if self.conns.len() >= MAX_CONNS {
            // Sockets whose close was never seen: forget the older half.
            let mut ages: Vec<u64> = self.conns.values().map(|c| c.started_ns).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            self.conns.retain(|_, c| c.started_ns > cut);
        }
        self.conns.insert(sock, Conn { key, started_ns, request_ns: None });
    }

    /// The handshake of the thread's pending connect is over: forgotten when it succeeded, else
    /// kept a moment for the connect(2) error that may report it.
    fn connect_ended(&mut self, ev: &KernelEvent, established: bool) {
        let Some(c) = self.connecting.get_mut(&ev.tid).filter(|c| c.sock == ev.sock) else { return };
        if established {
            self.connecting.remove(&ev.tid);
        } else {
            c.ended_ns = c.ended_ns.or(Some(ev.ts_ns));
        }
    }

    fn on_event(&mut self, ev: &KernelEvent) {
        let secs = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1e9;
        match ev.kind {
            Kind::ConnectStart if !ev.to_resolver() => {
                let Some(dst) = ev.dst else { return };
                let key = self.upstream_labels(&ev.comm, &dst.to_string());
                self.attempts.get_or_create(&key).inc();
                self.follow(ev.sock, key, ev.ts_ns);
                if self.connecting.len() >= MAX_CONNS {
                    self.connecting.clear();
                }
                self.connecting.insert(ev.tid, Connecting { upstream: dst, sock: ev.sock, ended_ns: None });
            }
            // A unix-socket connect is one step: an attempt, with no handshake to time.
            Kind::ConnectSyscall if ev.path.is_some() => {
                let key = self.upstream_labels(&ev.comm, &format!("unix:{}", ev.path.as_deref().unwrap_or_default()));
                self.attempts.get_or_create(&key).inc();
                if ev.value == 0 {
                    self.follow(ev.sock, key, ev.ts_ns);
                }
            }
            // A TCP connect that failed before any SYN left (no route, no local port) is an
            // attempt too, unless it is the polled outcome of the thread's pending connect.
            Kind::ConnectSyscall => {
                let Some(dst) = ev.dst.filter(|_| ev.value < 0) else { return };
                let polled = |c: &Connecting| c.upstream == dst && c.ended_ns.is_none_or(|end| ev.ts_ns <= end + POLL_GRACE_NS);
                if self.connecting.get(&ev.tid).is_some_and(polled) {
                    self.connecting.remove(&ev.tid);
                    return;
                }
                let key = self.upstream_labels(&ev.comm, &dst.to_string());
                self.attempts.get_or_create(&key).inc();
            }
            Kind::StateChange => {
                if ev.old_state == Some(TcpState::SynSent)
                    && ev.new_state == Some(TcpState::Established)
                    && let Some(c) = self.conns.get(&ev.sock)
                {
                    self.connect.get_or_create(&c.key).observe(secs(c.started_ns, ev.ts_ns));
                }
                if ev.old_state == Some(TcpState::SynSent) {
                    self.connect_ended(ev, ev.new_state == Some(TcpState::Established));
                }
                if ev.new_state == Some(TcpState::Close) {
                    self.conns.remove(&ev.sock);
                }
            }
            Kind::ResetReceived if ev.new_state == Some(TcpState::SynSent) => self.connect_ended(ev, false),
            Kind::RequestSent => {
                if let Some(c) = self.conns.get_mut(&ev.sock) {
                    c.request_ns = c.request_ns.or(Some(ev.ts_ns));
                } else if let Some(dst) = ev.dst {
                    // A kept-alive connection opened before tracing began.
                    let key = self.upstream_labels(&ev.comm, &dst.to_string());
                    self.follow(ev.sock, key, ev.ts_ns);
                    if let Some(c) = self.conns.get_mut(&ev.sock) {
                        c.request_ns = Some(ev.ts_ns);
                    }
                }
            }
            Kind::ResponseStart => {
                if let Some(c) = self.conns.get_mut(&ev.sock)
                    && let Some(sent) = c.request_ns.take()
                {
                    self.first_byte.get_or_create(&c.key).observe(secs(sent, ev.ts_ns));
                }
            }
            Kind::Retransmit => {
                let phase = if ev.value == TcpState::SynSent as i64 { Phase::Syn } else { Phase::Data };
                let key = match (self.conns.get(&ev.sock), ev.dst) {
                    (Some(c), _) => c.key.clone(),
                    (None, Some(dst)) => self.upstream_labels(&ev.comm, &dst.to_string()),
                    (None, None) => return,
                };
                self.retransmits.get_or_create(&RetransmitLabels { gateway: key.gateway, upstream: key.upstream, phase }).inc();
            }
            Kind::ListenOverflow => {
                let Some(addr) = ev.src else { return };
                let upstream = self.upstreams.value(&addr.to_string());
                self.overflows.get_or_create(&ListenerLabels { upstream }).inc();
            }
            _ => {}
        }
    }

    fn on_verdict(&mut self, v: &Verdict) {
        let gateway = self.gateways.value(&v.gateway.comm);
        let upstream = self.upstreams.value(&v.upstream);
        let status = v.status.map_or_else(|| "none".to_owned(), |s| s.to_string());
        let labels = VerdictLabels { gateway: gateway.clone(), upstream: upstream.clone(), status, class: v.class, cause: v.cause };
        self.verdicts.get_or_create(&labels).inc();
        if v.cause != Cause::NoUpstreamAttempt {
            self.failures.get_or_create(&FailureLabels { gateway, upstream, cause: v.cause }).inc();
        }
        if v.delivered == Delivered::Status {
            let late = clock::monotonic_ns().saturating_sub(v.ts_ns);
            self.verdict_latency.observe(late as f64 / 1e9);
        }
    }

    fn on_stats(&self, s: &Stats) {
        // The snapshot holds running totals: the counters take them as they are.
        let set = |c: &Counter, v: u64| c.inner().store(v, Ordering::Relaxed);
        set(&self.events, s.events);
        for (cause, n) in &s.lost {
            set(&self.lost.get_or_create(&CauseLabel { cause: (*cause).into() }), *n);
        }
        let e = &s.evicted;
        let maps = [
            ("closed_sockets", e.closed_sockets),
            ("upstream_endpoints", e.upstream_endpoints),
            ("unix_sockets", e.unix_sockets),
            ("engine_attempts", s.engine.attempts_evicted),
        ];
        for (map, n) in maps {
            set(&self.evicted.get_or_create(&MapLabel { map: map.into() }), n);
        }
        set(&self.shipped_early, s.exchanges_shipped_early);
        set(&self.status_lines_expired, s.status_lines_expired);
        self.traced.set(s.traced_processes as i64);
        self.engine_attempts.set(s.engine.attempts as i64);
        if let Some(otlp) = &s.otlp {
            for (outcome, n) in
                [("exported", otlp.exported), ("dropped_queue_full", otlp.dropped_queue_full), ("dropped_failed", otlp.dropped_failed)]
            {
                set(&self.otlp_records.get_or_create(&OutcomeLabel { outcome: outcome.into() }), n);
            }
        }
        if let Some(ring) = s.ring {
            let bytes = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            self.ring_size.set(bytes(ring.size_bytes));
            self.ring_used.set(bytes(ring.used_bytes));
            self.ring_peak.set(bytes(ring.peak_used_bytes));
        }
    }
}

impl Output for Metrics {
    fn started(&mut self, report: &AttachReport, _traced: &[(u32, String)]) {
        for name in &report.attached {
            self.programs.get_or_create(&ProgramLabel { program: name.clone() }).set(1);
        }
        for (name, _) in &report.skipped {
            self.programs.get_or_create(&ProgramLabel { program: name.clone() }).set(0);
        }
    }

    fn event(&mut self, ev: &KernelEvent) -> Result<()> {
        self.on_event(ev);
        Ok(())
    }

    fn verdict(&mut self, v: &Verdict) -> Result<()> {
        self.on_verdict(v);
        Ok(())
    }

    fn stats(&mut self, s: &Stats) -> Result<()> {
        self.on_stats(s);
        Ok(())
    }

    fn refresh(&mut self, s: &Stats) {
        self.on_stats(s);
    }

    fn wants_refresh(&self) -> bool {
        true
    }
}

/// Metrics served at `addr` from the current runtime. When it cannot listen (port in use),
/// one line says so and tracing goes on.
pub fn start(addr: SocketAddr) -> Metrics {
    let m = Metrics::new();
    match m.serve(addr) {
        Ok(bound) => eprintln!("upstrace: metrics at http://{bound}/metrics"),
        Err(e) => eprintln!("upstrace: warning: cannot serve metrics on {addr}: {e}; tracing continues without them"),
    }
    m
}

fn encode(registry: &Registry) -> String {
    let mut text = String::with_capacity(16 * 1024);
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}

/// Scrapes at once; more wait for a free slot (a scraper is one client, a few at most).
const MAX_SCRAPES: usize = 4;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_REQUEST: usize = 8 * 1024;

async fn accept_loop(listener: tokio::net::TcpListener, registry: Arc<Registry>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors and the like: try again a little later.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &registry)).await;
            drop(permit);
        });
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    Index,
    NotFound,
    BadMethod,
}

fn route(head: &[u8]) -> Route {
    let line = head.split(|&c| c == b'\r' || c == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|&c| c == b' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    if method != b"GET" && method != b"HEAD" {
        return Route::BadMethod;
    }
    let path = target.split(|&c| c == b'?').next().unwrap_or_default();
    match path {
        b"/metrics" => Route::Metrics,
        b"/" => Route::Index,
        _ => Route::NotFound,
    }
}

/// One request, one answer, then the connection closes.
async fn answer(mut stream: tokio::net::TcpStream, registry: &Registry) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !crate::engine::http::contains(&head, b"\r\n\r\n") && !crate::engine::http::contains(&head, b"\n\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_REQUEST {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let (status, kind, body) = match route(&head) {
        Route::Metrics => ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", encode(registry)),
        Route::Index => ("200 OK", "text/plain; charset=utf-8", "upstrace: metrics at /metrics\n".to_owned()),
        Route::NotFound => ("404 Not Found", "text/plain; charset=utf-8", "not found: try /metrics\n".to_owned()),
        Route::BadMethod => ("405 Method Not Allowed", "text/plain; charset=utf-8", "only GET\n".to_owned()),
    };
    let head_only = head.starts_with(b"HEAD ");
    let mut out = format!("HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    if !head_only {
        out.push_str(&body);
    }
    stream.write_all(out.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::attribute::{Gateway, Verdict};

    fn verdict(upstream: &str, status: Option<u16>, cause: Cause) -> Verdict {
        Verdict {
            ts_ns: clock::monotonic_ns(),
            gateway: Gateway { pid: 10, comm: "nginx".into() },
            client: "10.0.0.9:5000".into(),
            status,
            delivered: if status.is_some() { Delivered::Status } else { Delivered::Inferred },
            upstream: upstream.into(),
            class: cause.class(),
            cause,
            summary: String::new(),
            ..Verdict::example()
        }
    }

    fn event(kind: Kind, ts_ns: u64, sock: u64) -> KernelEvent {
        let mut ev = KernelEvent::listen_snapshot(ts_ns, 10, "nginx", "10.0.0.1:40000".parse().unwrap());
        ev.kind = kind;
        ev.sock = sock;
        ev.dst = Some("10.0.2.2:8081".parse().unwrap());
        ev
    }

    #[test]
    fn a_verdict_shows_in_the_exposition() {
        let mut m = Metrics::new();
        m.verdict(&verdict("10.0.2.2:8081", Some(502), Cause::Refused)).unwrap();
        m.verdict(&verdict("10.0.2.2:8081", Some(502), Cause::Refused)).unwrap();
        m.verdict(&verdict("10.0.2.2:8081", None, Cause::Timeout)).unwrap();
        let text = m.encode();
        assert!(
            text.contains(
                "upstrace_verdicts_total{gateway=\"nginx\",upstream=\"10.0.2.2:8081\",status=\"502\",class=\"upstream\",cause=\"refused\"} 2\n"
            ),
            "{text}"
        );
        assert!(text.contains("status=\"none\",class=\"network\",cause=\"timeout\"} 1\n"), "{text}");
        assert!(
            text.contains("upstrace_upstream_failures_total{gateway=\"nginx\",upstream=\"10.0.2.2:8081\",cause=\"refused\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE upstrace_verdict_latency_seconds histogram"), "{text}");
        assert!(text.contains("upstrace_verdict_latency_seconds_count 2\n"), "only status verdicts have a latency: {text}");
        assert!(text.contains("upstrace_build_info{version=\""), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn latencies_retransmits_and_overflows_per_upstream() {
        let mut m = Metrics::new();
        let ms = 1_000_000;
        m.event(&event(Kind::ConnectStart, 1000 * ms, 7)).unwrap();
        let mut up = event(Kind::StateChange, 1003 * ms, 7);
        (up.old_state, up.new_state) = (Some(TcpState::SynSent), Some(TcpState::Established));
        m.event(&up).unwrap();
        m.event(&event(Kind::RequestSent, 1004 * ms, 7)).unwrap();
        m.event(&event(Kind::ResponseStart, 1204 * ms, 7)).unwrap();
        let mut rt = event(Kind::Retransmit, 1300 * ms, 7);
        rt.value = TcpState::Established as i64;
        m.event(&rt).unwrap();
        let mut syn = event(Kind::Retransmit, 1300 * ms, 99);
        syn.value = TcpState::SynSent as i64;
        m.event(&syn).unwrap();
        m.event(&KernelEvent::listen_overflow(1400 * ms, 20, "app", "10.0.2.2:8081".parse().unwrap(), 129, 128)).unwrap();
        let text = m.encode();
        let labels = "{gateway=\"nginx\",upstream=\"10.0.2.2:8081\"}";
        assert!(text.contains(&format!("upstrace_upstream_attempts_total{labels} 1\n")), "{text}");
        // 3 ms to connect: in the 5 ms bucket, not the 2.5 ms one.
        let le = |name: &str, le: &str| format!("{name}_bucket{{le=\"{le}\",gateway=\"nginx\",upstream=\"10.0.2.2:8081\"}}");
        assert!(text.contains(&format!("{} 0\n", le("upstrace_upstream_connect_duration_seconds", "0.0025"))), "{text}");
        assert!(text.contains(&format!("{} 1\n", le("upstrace_upstream_connect_duration_seconds", "0.005"))), "{text}");
        // 200 ms to the first byte.
        assert!(text.contains(&format!("{} 0\n", le("upstrace_upstream_first_byte_duration_seconds", "0.1"))), "{text}");
        assert!(text.contains(&format!("{} 1\n", le("upstrace_upstream_first_byte_duration_seconds", "0.25"))), "{text}");
        assert!(
            text.contains("upstrace_upstream_retransmits_total{gateway=\"nginx\",upstream=\"10.0.2.2:8081\",phase=\"data\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("upstrace_upstream_retransmits_total{gateway=\"nginx\",upstream=\"10.0.2.2:8081\",phase=\"syn\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("upstrace_upstream_accept_queue_overflows_total{upstream=\"10.0.2.2:8081\"} 1\n"), "{text}");
    }

    #[test]
    fn connects_that_fail_at_once_are_attempts_and_polled_outcomes_are_not() {
        let mut m = Metrics::new();
        let attempts = |m: &Metrics| {
            let text = m.encode();
            let line = text.lines().find(|l| l.starts_with("upstrace_upstream_attempts_total{")).map(str::to_owned);
            line.and_then(|l| l.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok())).unwrap_or(0)
        };
        // No route: connect(2) fails before any SYN, twice.
        for ts in [1, 2] {
            let mut e = event(Kind::ConnectSyscall, ts, 0);
            e.value = -101;
            m.event(&e).unwrap();
        }
        assert_eq!(attempts(&m), 2);
        // A pending connect whose error an event loop polls (HAProxy): one attempt.
        m.event(&event(Kind::ConnectStart, 3, 7)).unwrap();
        let mut polled = event(Kind::ConnectSyscall, 4, 0);
        polled.value = -111;
        m.event(&polled).unwrap();
        assert_eq!(attempts(&m), 3);
        // A refused connect, polled at once: the same attempt; the same error much later: a new one.
        m.event(&event(Kind::ConnectStart, 10_000_000, 9)).unwrap();
        let mut rst = event(Kind::ResetReceived, 10_000_001, 9);
        rst.new_state = Some(TcpState::SynSent);
        m.event(&rst).unwrap();
        polled.ts_ns = 10_000_002;
        m.event(&polled).unwrap();
        assert_eq!(attempts(&m), 4);
        polled.ts_ns = 50_000_000;
        m.event(&polled).unwrap();
        assert_eq!(attempts(&m), 5);
        // Once the handshake is done, a later immediate failure is a new attempt again.
        m.event(&event(Kind::ConnectStart, 5, 8)).unwrap();
        let mut up = event(Kind::StateChange, 6, 8);
        (up.old_state, up.new_state) = (Some(TcpState::SynSent), Some(TcpState::Established));
        m.event(&up).unwrap();
        m.event(&polled).unwrap();
        assert_eq!(attempts(&m), 7);
    }

    #[test]
    fn upstream_values_are_capped_bounded_and_escaped() {
        let mut m = Metrics::new();
        for i in 0..MAX_UPSTREAMS + 50 {
            m.verdict(&verdict(&format!("10.0.{}.{}:80", i / 250, i % 250), Some(502), Cause::Refused)).unwrap();
        }
        let long = format!("unix:/run/{}\"x\\y\nz.sock", "a".repeat(300));
        m.verdict(&verdict(&long, Some(503), Cause::NoSocketFile)).unwrap();
        let text = m.encode();
        let series = text.lines().filter(|l| l.starts_with("upstrace_verdicts_total{")).count();
        assert_eq!(series, MAX_UPSTREAMS + 2, "the cap, then `other` (for 502 refused, and for the 503)");
        assert!(text.contains("upstream=\"other\",status=\"502\",class=\"upstream\",cause=\"refused\"} 50\n"), "{text}");
        assert!(text.contains("upstream=\"other\",status=\"503\""), "over the cap, whatever its length");
        assert!(text.contains("upstrace_label_values_folded_total{label=\"upstream\"} 51\n"), "{text}");
        assert_eq!(bounded(&long).len(), MAX_LABEL_LEN);
        assert_eq!(bounded("a\"b\\c\nd"), "a\"b\\c?d");
        assert_eq!(bounded("é".repeat(100).as_str()).len(), MAX_LABEL_LEN - 4 + 3, "cut at a char boundary");

        // The crate escapes quotes and backslashes.
        let mut m = Metrics::new();
        m.verdict(&verdict("unix:/run/a\"b\\c.sock", Some(502), Cause::Refused)).unwrap();
        assert!(m.encode().contains("upstream=\"unix:/run/a\\\"b\\\\c.sock\""), "{}", m.encode());
    }

    #[test]
    fn health_comes_from_the_stats_snapshot() {
        let mut m = Metrics::new();
        let report = AttachReport {
            attached: vec!["sock_send_length".into()],
            skipped: vec![("kfree_skb".into(), "EINVAL".into())],
            on_demand: vec![],
        };
        m.started(&report, &[]);
        let mut s = Stats { events: 1234, traced_processes: 3, lost: vec![("ring_full", 5), ("decode_errors", 0)], ..Stats::default() };
        s.evicted.closed_sockets = 7;
        s.engine.attempts = 42;
        s.ring = Some(crate::health::RingUsage { size_bytes: 4 << 20, used_bytes: 512, peak_used_bytes: 8192 });
        s.otlp = Some(crate::health::OtlpStats { exported: 9, dropped: 2, dropped_queue_full: 2, ..Default::default() });
        m.stats(&s).unwrap();
        s.events = 1300;
        m.refresh(&s);
        let text = m.encode();
        for line in [
            "upstrace_events_total 1300\n",
            "upstrace_events_lost_total{cause=\"ring_full\"} 5\n",
            "upstrace_evictions_total{map=\"closed_sockets\"} 7\n",
            "upstrace_traced_processes 3\n",
            "upstrace_engine_attempts 42\n",
            "upstrace_ring_buffer_size_bytes 4194304\n",
            "upstrace_ring_buffer_used_bytes 512\n",
            "upstrace_ring_buffer_peak_used_bytes 8192\n",
            "upstrace_otlp_records_total{outcome=\"exported\"} 9\n",
            "upstrace_otlp_records_total{outcome=\"dropped_queue_full\"} 2\n",
            "upstrace_ebpf_program_attached{program=\"sock_send_length\"} 1\n",
            "upstrace_ebpf_program_attached{program=\"kfree_skb\"} 0\n",
        ] {
            assert!(text.contains(line), "{line:?} missing:\n{text}");
        }
    }

    /// Sample names of the exposition: counters get `_total`, histograms stand for their series.
    fn exposed() -> Vec<String> {
        // A family shows only once it has a series: give every one something.
        let mut m = Metrics::new();
        m.started(&AttachReport { attached: vec!["p".into()], skipped: vec![], on_demand: vec![] }, &[]);
        m.verdict(&verdict("10.0.2.2:8081", Some(502), Cause::Refused)).unwrap();
        m.event(&event(Kind::ConnectStart, 1, 7)).unwrap();
        let mut up = event(Kind::StateChange, 2, 7);
        (up.old_state, up.new_state) = (Some(TcpState::SynSent), Some(TcpState::Established));
        m.event(&up).unwrap();
        m.event(&event(Kind::RequestSent, 3, 7)).unwrap();
        m.event(&event(Kind::ResponseStart, 4, 7)).unwrap();
        m.event(&event(Kind::Retransmit, 5, 7)).unwrap();
        m.event(&KernelEvent::listen_overflow(6, 20, "app", "10.0.2.2:8081".parse().unwrap(), 129, 128)).unwrap();
        let ring = Some(crate::health::RingUsage { size_bytes: 4 << 20, used_bytes: 0, peak_used_bytes: 4096 });
        m.stats(&Stats { lost: vec![("ringbuf_full", 0)], ring, ..Stats::default() }).unwrap();
        let text = m.encode();
        let types = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split_once(' '));
        types.map(|(name, kind)| if kind == "counter" { format!("{name}_total") } else { name.to_owned() }).collect()
    }

    #[test]
    fn the_readme_and_the_dashboard_name_only_real_metrics() {
        let names = exposed();
        assert!(names.len() >= 18, "{names:?}");
        let readme = include_str!("../../../README.md");
        for name in &names {
            assert!(readme.contains(&format!("| `{name}` |")), "README's metric table lacks {name}");
        }
        let dashboard: serde_json::Value = serde_json::from_str(include_str!("../../../deploy/grafana/upstrace.json")).unwrap();
        let mut exprs = Vec::new();
        fn collect(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, v) in m {
                        match (k.as_str(), v.as_str()) {
                            ("expr" | "definition", Some(e)) => out.push(e.to_owned()),
                            _ => collect(v, out),
                        }
                    }
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| collect(v, out)),
                _ => {}
            }
        }
        collect(&dashboard, &mut exprs);
        assert!(exprs.len() >= 15, "{exprs:?}");
        let mut used = HashSet::new();
        for e in &exprs {
            for (i, _) in e.match_indices("upstrace_") {
                let name: String = e[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                let base = ["_bucket", "_count", "_sum"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(&name);
                assert!(names.iter().any(|n| n == base), "the dashboard queries {name}, which upstrace does not expose: {e}");
                used.insert(base.to_owned());
            }
        }
        for early in ["upstrace_verdicts_total", "upstrace_upstream_retransmits_total", "upstrace_upstream_accept_queue_overflows_total"] {
            assert!(used.contains(early), "the dashboard shows {early}");
        }
    }

    #[test]
    fn routes() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"HEAD / HTTP/1.0\r\n\r\n"), Route::Index);
        assert_eq!(route(b"GET /etc/passwd HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"POST /metrics HTTP/1.1\r\n\r\n"), Route::BadMethod);
        assert_eq!(route(b""), Route::BadMethod);
    }

    #[tokio::test]
    async fn serves_a_scrape_and_reports_a_port_in_use() {
        let mut m = Metrics::new();
        m.verdict(&verdict("10.0.2.2:8081", Some(504), Cause::Timeout)).unwrap();
        let addr = m.serve("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(reply.contains("Content-Type: application/openmetrics-text"), "{reply}");
        assert!(reply.contains("status=\"504\",class=\"network\",cause=\"timeout\"} 1\n"), "{reply}");
        let err = m.serve(addr).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    }
}
