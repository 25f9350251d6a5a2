//! The one-way flow every source feeds: typed events -> track/attribute -> outputs.
//! Live tracing and replay differ only in where events come from and who moves the clock.
use anyhow::Result;

use crate::{
    clock,
    engine::{
        attribute::{Delivered, Engine, Verdict},
        decode::KernelEvent,
    },
    gateway_log::GatewayWords,
    health::{AttachReport, LatencyMs, SlowestVerdict, Stats},
    output::Output,
};

/// The most verdicts held before they are sent (one log look, one write per batch).
const MAX_HELD_VERDICTS: usize = 256;
/// The longest a held verdict waits, in event time, when the ring never runs dry.
const MAX_HELD_NS: u64 = 10_000_000;
/// How long ago the event that decided a batch may have been stamped (CLOCK_MONOTONIC, as the
/// kernel stamps) before upstrace counts as behind the kernel. Reading the ring every 10 ms
/// keeps it near 10 ms; a backlog makes it grow.
const BEHIND_NS: u64 = 25_000_000;

pub struct Pipeline {
    pub engine: Engine,
    pub outputs: Vec<Box<dyn Output>>,
    pub verdicts: u64,
    /// Keep every verdict in memory too (tests, reports).
    pub collected: Option<Vec<Verdict>>,
    /// Live only: how long after the status write each verdict left.
    pub latency: Option<LatencyHistogram>,
    /// Live only: the slowest verdict since the last stats line (latency ns, status time,
    /// "class/cause"), so a latency tail can be traced to what was late.
    slowest: Option<(u64, u64, String)>,
    /// Where verdicts get the gateway's own log line (live logs, or a trace's record).
    pub gateway_words: GatewayWords,
    /// Verdicts decided by `event`, held until the batch ends (`flush`) when the source asks
    /// for batches (live): in a storm, one look at the gateway's log and one write per batch
    /// rather than per verdict.
    held: Option<Vec<Verdict>>,
    /// Event time at which the oldest held verdict was decided.
    held_since_ns: u64,
}

impl Default for Pipeline {
    fn default() -> Self {
        Self::new()
    }
}

impl Pipeline {
    pub fn new() -> Self {
        Self {
            engine: Engine::new(),
            outputs: Vec::new(),
            verdicts: 0,
            collected: None,
            latency: None,
            slowest: None,
            gateway_words: GatewayWords::None,
            held: None,
            held_since_ns: 0,
        }
    }

    /// Hold verdicts until the batch ends (`flush`, `tick`, `finish`) or `MAX_HELD_VERDICTS`
    /// gather, instead of sending each as it is decided.
    pub fn hold_verdicts(&mut self) {
        self.held.get_or_insert_with(Vec::new);
    }

    /// Send the held verdicts: one look at the gateway's log, one flush. `behind`: released by
    /// a bound, not by the end of a drain (the ring did not run dry).
    fn release(&mut self, behind: bool) -> Result<()> {
        match self.held.as_mut() {
            Some(held) if !held.is_empty() => {
                let verdicts = std::mem::take(held);
                self.send(verdicts, behind)
            }
            _ => Ok(()),
        }
    }

    pub fn with(mut self, output: impl Output + 'static) -> Self {
        self.outputs.push(Box::new(output));
        self
    }

    pub fn collecting(mut self) -> Self {
        self.collected = Some(Vec::new());
        self
    }

    /// An output draws on the terminal (the dashboard).
    pub fn interactive(&self) -> bool {
        self.outputs.iter().any(|o| o.owns_terminal())
    }

    /// An output wants a fresh snapshot every second (the dashboard, metrics).
    pub fn wants_refresh(&self) -> bool {
        self.outputs.iter().any(|o| o.wants_refresh())
    }

    pub fn started(&mut self, report: &AttachReport, traced: &[(u32, String)]) {
        for o in &mut self.outputs {
            o.started(report, traced);
        }
    }

    /// End of a batch of events: send the verdicts held, push output and the trace file.
    pub fn flush(&mut self) -> Result<()> {
        self.release(false)?;
        self.flush_outputs()
    }

    fn flush_outputs(&mut self) -> Result<()> {
        for o in &mut self.outputs {
            o.flush()?;
        }
        Ok(())
    }

    pub fn event(&mut self, ev: &KernelEvent) -> Result<()> {
        for o in &mut self.outputs {
            o.event(ev)?;
        }
        let verdicts = self.engine.handle(ev);
        self.emit(verdicts, ev.ts_ns)
    }

    /// Move the clock (CLOCK_MONOTONIC ns), so verdicts come out even when events stop.
    pub fn tick(&mut self, now_ns: u64) -> Result<()> {
        let verdicts = self.engine.advance(now_ns);
        self.emit(verdicts, now_ns)?;
        self.release(false)
    }

    /// Let the outputs run (keys, redraw); false when one asks to stop.
    pub fn poll(&mut self, now_ns: u64) -> Result<bool> {
        let mut go_on = true;
        for o in &mut self.outputs {
            go_on &= o.poll(now_ns)?;
        }
        Ok(go_on)
    }

    /// Decide what is still pending (end of input).
    pub fn finish(&mut self) -> Result<()> {
        let verdicts = self.engine.flush();
        // No event time to weigh: `flush` sends everything held at once.
        self.emit(verdicts, 0)?;
        self.flush()
    }

    pub fn finished(&mut self, what: &str) {
        for o in &mut self.outputs {
            o.finished(what);
        }
    }

    /// Complete a snapshot with what the pipeline and its outputs know. Takes the slowest
    /// verdict of the interval when `line` (a stats line starts a new interval).
    pub fn snapshot(&mut self, mut s: Stats, line: bool) -> Stats {
        s.verdicts = self.verdicts;
        let tracker = &self.engine.tracker;
        s.engine.attempts = tracker.attempts.len();
        s.engine.attempts_evicted = tracker.evicted;
        s.engine.longest_thread_queue = tracker.by_tid.values().map(|q| q.len()).max().unwrap_or(0);
        s.gateway_log = self.gateway_words.stats();
        s.verdict_latency_ms = self.latency.as_ref().and_then(|h| h.percentiles_ms()).map(|(p50, p99, max)| LatencyMs { p50, p99, max });
        if line {
            s.slowest_verdict = self.slowest.take().map(|(late, ts_ns, verdict)| SlowestVerdict {
                latency_ms: late as f64 / 1e6,
                status_time: clock::rfc3339(ts_ns as i128 + clock::boot_offset_ns()),
                verdict,
            });
        }
        for o in &self.outputs {
            o.contribute(&mut s);
        }
        s
    }

    /// A stats line to every output.
    pub fn stats(&mut self, s: Stats) -> Result<()> {
        let s = self.snapshot(s, true);
        for o in &mut self.outputs {
            o.stats(&s)?;
        }
        Ok(())
    }

    /// A fresher snapshot for live views.
    pub fn refresh(&mut self, s: Stats) {
        let s = self.snapshot(s, false);
        for o in &mut self.outputs {
            o.refresh(&s);
        }
    }

    /// `now_ns`: the event time that decided `verdicts`.
    fn emit(&mut self, verdicts: Vec<Verdict>, now_ns: u64) -> Result<()> {
        match self.held.as_mut() {
            Some(held) => {
                if held.is_empty() {
                    self.held_since_ns = now_ns;
                }
                held.extend(verdicts);
                // A storm can keep the ring from ever running dry: batches stay bounded, in
                // number and in time.
                let waited = now_ns.saturating_sub(self.held_since_ns);
                if held.len() >= MAX_HELD_VERDICTS || (!held.is_empty() && waited >= MAX_HELD_NS) {
                    // Behind: the event that decided them is old, the ring holds a backlog. A
                    // full batch alone is not: a storm fills one in every 10 ms read.
                    let behind = clock::monotonic_ns().saturating_sub(now_ns) > BEHIND_NS;
                    self.release(behind)
                } else {
                    Ok(())
                }
            }
            None => self.send(verdicts, false),
        }
    }

    fn send(&mut self, mut verdicts: Vec<Verdict>, behind: bool) -> Result<()> {
        if !verdicts.is_empty() {
            self.gateway_words.annotate(&mut verdicts, behind);
        }
        if let Some(lat) = self.latency.as_mut() {
            let now = clock::monotonic_ns();
            for v in verdicts.iter().filter(|v| v.delivered == Delivered::Status) {
                let late = now.saturating_sub(v.ts_ns);
                lat.record(late);
                if self.slowest.as_ref().is_none_or(|s| late > s.0) {
                    self.slowest = Some((late, v.ts_ns, v.label()));
                }
            }
        }
        for v in &verdicts {
            self.verdicts += 1;
            for o in &mut self.outputs {
                o.verdict(v)?;
            }
        }
        if !verdicts.is_empty() {
            self.flush_outputs()?;
        }
        if let Some(c) = self.collected.as_mut() {
            c.extend(verdicts);
        }
        Ok(())
    }
}

/// Verdict latencies in fixed buckets (0.1 ms wide up to 1 s, 10 ms wide up to 100 s, then one
/// bucket for the rest): constant memory and cheap percentiles however long upstrace runs.
/// (A growing list of samples, sorted at every stats line, made the RSS creep in a long soak.)
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    counts: Vec<u64>,
    total: u64,
    max_ns: u64,
}

const FINE_BUCKETS: usize = 10_000;
const FINE_NS: u64 = 100_000;
const COARSE_BUCKETS: usize = 9_900;
const COARSE_NS: u64 = 10_000_000;

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self { counts: vec![0; FINE_BUCKETS + COARSE_BUCKETS + 1], total: 0, max_ns: 0 }
    }
}

impl LatencyHistogram {
    pub fn record(&mut self, ns: u64) {
        let fine_end = FINE_BUCKETS as u64 * FINE_NS;
        let i = if ns < fine_end {
            (ns / FINE_NS) as usize
        } else {
            (FINE_BUCKETS + ((ns - fine_end) / COARSE_NS) as usize).min(FINE_BUCKETS + COARSE_BUCKETS)
        };
        self.counts[i] += 1;
        self.total += 1;
        self.max_ns = self.max_ns.max(ns);
    }

    fn upper_ns(i: usize) -> u64 {
        if i < FINE_BUCKETS {
            (i as u64 + 1) * FINE_NS
        } else {
            FINE_BUCKETS as u64 * FINE_NS + (i - FINE_BUCKETS) as u64 * COARSE_NS + COARSE_NS
        }
    }

    /// (p50, p99, max) in ms; a percentile is its bucket's upper edge (never above the max).
    pub fn percentiles_ms(&self) -> Option<(f64, f64, f64)> {
        if self.total == 0 {
            return None;
        }
        let at = |q: f64| {
            let rank = ((self.total - 1) as f64 * q).round() as u64 + 1;
            let mut seen = 0;
            for (i, &c) in self.counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return Self::upper_ns(i).min(self.max_ns) as f64 / 1e6;
                }
            }
            self.max_ns as f64 / 1e6
        };
        Some((at(0.5), at(0.99), self.max_ns as f64 / 1e6))
    }
}

#[cfg(test)]
mod tests {
    use super::LatencyHistogram;

    #[test]
    fn latency_percentiles_come_from_fixed_buckets() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.percentiles_ms(), None);
        for i in 0..1000u64 {
            h.record(30_000_000 + i * 10_000); // 30.00 .. 39.99 ms
        }
        h.record(2_500_000_000); // one slow verdict: 2.5 s
        let (p50, p99, max) = h.percentiles_ms().unwrap();
        assert!((34.9..=35.2).contains(&p50), "{p50}");
        assert!((39.7..=40.0).contains(&p99), "{p99}");
        assert_eq!(max, 2500.0);
        let memory = h.counts.len();
        for _ in 0..100_000 {
            h.record(31_000_000);
        }
        assert_eq!(h.counts.len(), memory, "constant memory");
        h.record(u64::MAX / 2);
        assert!(h.percentiles_ms().unwrap().2 > 1e9);
    }
}
