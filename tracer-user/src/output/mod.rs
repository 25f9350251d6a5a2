//! Where verdicts, events and stats go. Every output implements [`Output`] and the pipeline
//! feeds them all alike: JSON or text lines (`sink`), the trace file (`record`), the dashboard
//! (`tui`), one line per notable thing on stderr (`log`, for the service), Prometheus metrics
//! (`metrics`), OpenTelemetry log records (`otlp`). Adding one (an exporter) is one more
//! implementation. `report` reads a trace back into a postmortem.
pub mod log;
pub mod metrics;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod record;
pub mod report;
pub mod sink;
pub mod tui;

use anyhow::Result;

use crate::{
    engine::{attribute::Verdict, decode::KernelEvent},
    health::{AttachReport, Stats},
};

/// A consumer of the pipeline. Every method has a do-nothing default.
pub trait Output {
    /// Tracing began: programs attached/skipped, traced (pid, comm).
    fn started(&mut self, _report: &AttachReport, _traced: &[(u32, String)]) {}
    fn event(&mut self, _ev: &KernelEvent) -> Result<()> {
        Ok(())
    }
    fn verdict(&mut self, _v: &Verdict) -> Result<()> {
        Ok(())
    }
    /// The periodic stats line (every `--stats-interval`, and at the end).
    fn stats(&mut self, _s: &Stats) -> Result<()> {
        Ok(())
    }
    /// A fresher snapshot for live views (every second); not a stats line.
    fn refresh(&mut self, _s: &Stats) {}
    /// It wants `refresh` every second (a view that is read at any moment, such as metrics).
    fn wants_refresh(&self) -> bool {
        self.owns_terminal()
    }
    /// Add this output's own health to a snapshot before it is handed out.
    fn contribute(&self, _s: &mut Stats) {}
    /// Called every few ms with the current CLOCK_MONOTONIC time; false asks to stop.
    fn poll(&mut self, _now_ns: u64) -> Result<bool> {
        Ok(true)
    }
    /// End of a batch of events: push what is buffered.
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
    /// The source has no more events (end of a replay).
    fn finished(&mut self, _what: &str) {}
    /// It draws on the terminal: nothing else may print there, and the run lasts until the
    /// person quits.
    fn owns_terminal(&self) -> bool {
        false
    }
}

/// The OpenTelemetry exporter for an OTLP/HTTP endpoint URL (a bad URL is an error; a
/// collector that is down is not).
#[cfg(feature = "otlp")]
pub fn otlp_exporter(url: &str, boot: i128) -> Result<Box<dyn Output>> {
    use otlp::{Endpoint, OtlpExporter};
    Ok(Box::new(OtlpExporter::start(Endpoint::parse(url)?, boot)?))
}

#[cfg(not(feature = "otlp"))]
pub fn otlp_exporter(_url: &str, _boot: i128) -> Result<Box<dyn Output>> {
    anyhow::bail!("--otlp-endpoint: this upstrace was built without the `otlp` feature")
}
