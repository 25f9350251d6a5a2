//! The one-way flow every source feeds: typed events -> track/attribute -> sinks.
//! Live tracing and replay differ only in where events come from and who moves the clock.
use anyhow::Result;

use crate::{attribute::Engine, attribute::Verdict, decode::KernelEvent, sink::Sink};

pub struct Pipeline<W: std::io::Write> {
    pub engine: Engine,
    pub sink: Sink<W>,
    pub verdicts: u64,
}

impl<W: std::io::Write> Pipeline<W> {
    pub fn new(sink: Sink<W>) -> Self {
        Self { engine: Engine::new(), sink, verdicts: 0 }
    }

    pub fn event(&mut self, ev: &KernelEvent) -> Result<()> {
        self.sink.event(ev)?;
        let verdicts = self.engine.handle(ev);
        self.emit(verdicts)
    }

    /// Move the clock (CLOCK_MONOTONIC ns), so verdicts come out even when events stop.
    pub fn tick(&mut self, now_ns: u64) -> Result<()> {
        let verdicts = self.engine.advance(now_ns);
        self.emit(verdicts)
    }

    /// Decide what is still pending (end of input).
    pub fn finish(&mut self) -> Result<()> {
        let verdicts = self.engine.flush();
        self.emit(verdicts)?;
        self.sink.flush()?;
        Ok(())
    }

    fn emit(&mut self, verdicts: Vec<Verdict>) -> Result<()> {
        for v in &verdicts {
            self.verdicts += 1;
            self.sink.verdict(v)?;
        }
        if !verdicts.is_empty() {
            self.sink.flush()?;
        }
        Ok(())
    }
}
