//! The one-way flow every source feeds: typed events -> track/attribute -> sinks.
//! Live tracing and replay differ only in where events come from and who moves the clock.
use anyhow::Result;

use crate::{attribute::Engine, attribute::Verdict, decode::KernelEvent, record::Recorder, sink::Sink};

/// A live view of the pipeline (the dashboard). Every method has a do-nothing default.
pub trait Observer {
    /// Tracing began: programs attached/skipped, traced (pid, comm).
    fn started(&mut self, _report: &crate::probes::AttachReport, _traced: &[(u32, String)]) {}
    fn event(&mut self, _ev: &KernelEvent) {}
    fn verdict(&mut self, _v: &Verdict) {}
    fn stats(&mut self, _lost: Vec<(String, u64)>) {}
    /// Called every few ms with the current CLOCK_MONOTONIC time; false asks to stop.
    fn poll(&mut self, _now_ns: u64) -> Result<bool> {
        Ok(true)
    }
    /// The source has no more events (end of a replay).
    fn finished(&mut self, _what: &str) {}
}

pub struct Pipeline<W: std::io::Write> {
    pub engine: Engine,
    pub sink: Sink<W>,
    pub recorder: Option<Recorder>,
    pub verdicts: u64,
    pub collected: Option<Vec<Verdict>>,
    pub observer: Option<Box<dyn Observer>>,
    /// Live only: how long after the status write each verdict left.
    pub latency: Option<LatencyHistogram>,
    /// Live only: the slowest verdict since the last stats line (latency ns, status time,
    /// "class/cause"), so a latency tail can be traced to what was late.
    pub slowest: Option<(u64, u64, String)>,
}

impl<W: std::io::Write> Pipeline<W> {
    pub fn new(sink: Sink<W>) -> Self {
        Self { engine: Engine::new(), sink, recorder: None, verdicts: 0, collected: None, observer: None, latency: None, slowest: None }
    }

    /// Keep every verdict in memory too (tests, reports).
    pub fn collecting(mut self) -> Self {
        self.collected = Some(Vec::new());
        self
    }

    /// End of a batch of events: push output and the trace file.
    pub fn flush(&mut self) -> Result<()> {
        self.sink.flush()?;
        if let Some(r) = self.recorder.as_mut() {
            r.flush();
        }
        Ok(())
    }

    pub fn event(&mut self, ev: &KernelEvent) -> Result<()> {
        if let Some(r) = self.recorder.as_mut() {
            r.event(ev);
        }
        self.sink.event(ev)?;
        if let Some(o) = self.observer.as_mut() {
            o.event(ev);
        }
        let verdicts = self.engine.handle(ev);
        self.emit(verdicts)
    }

    /// Move the clock (CLOCK_MONOTONIC ns), so verdicts come out even when events stop.
    pub fn tick(&mut self, now_ns: u64) -> Result<()> {
        let verdicts = self.engine.advance(now_ns);
        self.emit(verdicts)
    }

    /// Let the observer run (keys, redraw); false when it asks to stop.
    pub fn poll(&mut self, now_ns: u64) -> Result<bool> {
        match self.observer.as_mut() {
            Some(o) => o.poll(now_ns),
            None => Ok(true),
        }
    }

    /// Decide what is still pending (end of input).
    pub fn finish(&mut self) -> Result<()> {
        let verdicts = self.engine.flush();
        self.emit(verdicts)?;
        self.flush()
    }

    fn emit(&mut self, verdicts: Vec<Verdict>) -> Result<()> {
        if let Some(lat) = self.latency.as_mut() {
            let now = crate::clock::monotonic_ns();
            for v in verdicts.iter().filter(|v| v.delivered == "status") {
                let late = now.saturating_sub(v.ts_ns);
                lat.record(late);
                if self.slowest.as_ref().is_none_or(|s| late > s.0) {
                    self.slowest = Some((late, v.ts_ns, format!("{}/{}", v.class_name(), v.cause)));
                }
            }
        }
        for v in &verdicts {
            self.verdicts += 1;
            self.sink.verdict(v)?;
            if let Some(r) = self.recorder.as_mut() {
                r.verdict(v);
            }
            if let Some(o) = self.observer.as_mut() {
                o.verdict(v);
            }
        }
        if !verdicts.is_empty() {
            self.flush()?;
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
