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
    /// Live only: how long after the status write each verdict left (ns), sampled.
    pub latency: Option<Vec<u64>>,
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
                if lat.len() < 1_000_000 {
                    lat.push(late);
                }
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

/// (p50, p99, max) of a sample, in milliseconds.
pub fn percentiles_ms(samples: &[u64]) -> Option<(f64, f64, f64)> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_unstable();
    let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize] as f64 / 1e6;
    Some((at(0.5), at(0.99), *s.last().unwrap() as f64 / 1e6))
}
