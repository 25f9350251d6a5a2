//! What upstrace knows of itself: which programs attached, and its health at one moment
//! (events, losses, evictions, latency). Sources fill these, the pipeline completes them,
//! outputs show them.
use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize)]
pub struct AttachReport {
    pub attached: Vec<String>,
    /// (program, the kernel's reason)
    pub skipped: Vec<(String, String)>,
    /// Loaded, attached only when wanted: the per-packet hook while a traced connection is in
    /// trouble.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_demand: Vec<String>,
}

impl std::fmt::Display for AttachReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "attached {} programs: {}", self.attached.len(), self.attached.join(", "))?;
        if !self.on_demand.is_empty() {
            write!(f, "; attached when wanted: {}", self.on_demand.join(", "))?;
        }
        for (name, why) in &self.skipped {
            write!(f, "\nskipped {name}: {why}")?;
        }
        Ok(())
    }
}

/// Evictions from the kernel's LRU maps (see `Probes::lru_evictions`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LruEvictions {
    /// Closed upstream sockets (their late events are lost).
    pub closed_sockets: u64,
    /// Upstream endpoints (drops and ICMP errors for them are missed until the next connect).
    pub upstream_endpoints: u64,
    /// Unix-socket upstream connections (closed ones, or long-idle ones whose later events are lost).
    pub unix_sockets: u64,
}

/// What upstrace knows of its own health at one moment. The stats line is this, serialized.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Kernel events handled.
    pub events: u64,
    pub traced_processes: usize,
    pub lost_total: u64,
    /// Losses by cause (the kernel's counters, then decode errors), in a stable order.
    #[serde(serialize_with = "as_map")]
    pub lost: Vec<(&'static str, u64)>,
    pub verdicts: u64,
    /// Healthy keep-alive exchanges stay in the kernel; past its map's capacity they are
    /// shipped like failures would be (more events, nothing lost).
    pub exchanges_shipped_early: u64,
    /// A status line written to something other than a socket (or a thread stalled for a
    /// second between the write and the send): counted, since it may be a 5xx left unexplained.
    pub status_lines_expired: u64,
    /// LRU evictions: old state made room by design, counted so a loss of late events is never silent.
    pub evicted: LruEvictions,
    pub engine: EngineStats,
    /// How full the kernel's ring buffer is (live only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ring: Option<RingUsage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict_latency_ms: Option<LatencyMs>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slowest_verdict: Option<SlowestVerdict>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded_lines: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_error: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub programs: Vec<ProgramCost>,
    /// `--otlp-endpoint`: the exporter's counters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp: Option<OtlpStats>,
    /// The on-demand hooks attached at this moment (`netif_receive_skb` while a traced
    /// connection is in trouble).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub on_demand_attached: Vec<&'static str>,
    /// The gateways' own logs (live only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_log: Option<crate::gateway_log::GatewayLogStats>,
}

impl Stats {
    /// Old state that made room (kernel LRU maps and the engine's cap): not lost events.
    pub fn evicted_total(&self) -> u64 {
        let e = &self.evicted;
        e.closed_sockets + e.upstream_endpoints + e.unix_sockets + self.engine.attempts_evicted
    }
}

fn as_map<S: serde::Serializer>(list: &[(&'static str, u64)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(list.iter().map(|(k, v)| (*k, *v)))
}

/// The engine's own bounds: attempts dropped over its cap are counted, never silent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EngineStats {
    pub attempts: usize,
    pub attempts_evicted: u64,
    pub longest_thread_queue: usize,
}

/// The ring buffer's size, the bytes waiting in it now, and the most that ever waited (a
/// high-water mark near the size means events are about to be lost).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RingUsage {
    pub size_bytes: u64,
    pub used_bytes: u64,
    pub peak_used_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencyMs {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// The slowest verdict since the last stats line, so a latency tail can be traced to what was late.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SlowestVerdict {
    pub latency_ms: f64,
    pub status_time: String,
    /// `class/cause`.
    pub verdict: String,
}

/// One program's run count and average cost (with `--bpf-stats`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProgramCost {
    pub name: String,
    pub runs: u64,
    pub avg_ns: f64,
}

/// The OTLP exporter's counters. A collector that is down or slow never blocks tracing: what
/// could not be sent is dropped and counted here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OtlpStats {
    /// Records the collector accepted.
    pub exported: u64,
    /// `dropped_queue_full + dropped_failed`.
    pub dropped: u64,
    /// New records dropped because the queue was full (collector down or slower than the verdicts).
    pub dropped_queue_full: u64,
    /// Records in batches that failed after their retries, that the collector refused, or that it
    /// rejected in a partial success.
    pub dropped_failed: u64,
    /// Queued or being sent.
    pub pending: u64,
    /// Posts tried again after a retryable failure.
    pub retries: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}
