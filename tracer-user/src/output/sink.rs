//! Where pipeline output goes: JSON Lines (one object per line, a stable contract) or short
//! human lines. Writes are buffered and flushed per ring-buffer batch.
use std::io::{self, Write};

use anyhow::Result;

use crate::{
    clock,
    engine::{attribute::Verdict, decode::KernelEvent},
    health::Stats,
    output::Output,
};

/// An event line (`"type":"event"`), as printed and recorded: type, time, the event's own
/// fields, then a human detail. Serialized straight to the writer (no intermediate map: a
/// failure storm makes tens of thousands of lines a second).
#[derive(serde::Serialize)]
pub struct EventLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    #[serde(flatten)]
    event: &'a KernelEvent,
    detail: String,
}

impl<'a> EventLine<'a> {
    pub fn new(ev: &'a KernelEvent, boot_offset_ns: i128) -> Self {
        Self { kind: "event", time: clock::rfc3339(ev.ts_ns as i128 + boot_offset_ns), event: ev, detail: ev.detail() }
    }
}

/// A verdict line (`"type":"verdict"`): type, time, then the verdict's fields.
#[derive(serde::Serialize)]
pub struct VerdictLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    #[serde(flatten)]
    verdict: &'a Verdict,
}

impl<'a> VerdictLine<'a> {
    pub fn new(v: &'a Verdict, boot_offset_ns: i128) -> Self {
        Self { kind: "verdict", time: clock::rfc3339(v.ts_ns as i128 + boot_offset_ns), verdict: v }
    }
}

/// A stats line (`"type":"stats"`): type, time, then the snapshot's fields.
#[derive(serde::Serialize)]
pub struct StatsLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    time: String,
    #[serde(flatten)]
    stats: &'a Stats,
}

pub enum Format {
    Json,
    Text,
}

pub struct Sink<W: Write> {
    out: io::BufWriter<W>,
    format: Format,
    pub show_events: bool,
    boot_offset_ns: i128,
}

impl<W: Write> Sink<W> {
    pub fn new(out: W, format: Format, show_events: bool, boot_offset_ns: i128) -> Self {
        Self { out: io::BufWriter::with_capacity(64 * 1024, out), format, show_events, boot_offset_ns }
    }

    pub fn wall_time(&self, ts_ns: u64) -> String {
        clock::rfc3339(ts_ns as i128 + self.boot_offset_ns)
    }

    fn json_line(&mut self, obj: &impl serde::Serialize) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, obj).map_err(io::Error::other)?;
        self.out.write_all(b"\n")
    }
}

impl<W: Write> Output for Sink<W> {
    fn event(&mut self, ev: &KernelEvent) -> Result<()> {
        if !self.show_events {
            return Ok(());
        }
        match self.format {
            Format::Json => {
                let line = EventLine::new(ev, self.boot_offset_ns);
                self.json_line(&line)?;
            }
            Format::Text => {
                let time = self.wall_time(ev.ts_ns);
                writeln!(self.out, "{} {:<15} {:<16} {}", &time[11..23], format!("{}[{}]", ev.comm, ev.pid), ev.kind.name(), ev.detail())?;
            }
        }
        Ok(())
    }

    fn verdict(&mut self, v: &Verdict) -> Result<()> {
        match self.format {
            Format::Json => {
                let line = VerdictLine::new(v, self.boot_offset_ns);
                self.json_line(&line)?;
            }
            Format::Text => {
                let time = self.wall_time(v.ts_ns);
                let client = v.client_with_protocol();
                writeln!(
                    self.out,
                    "{} >>> {} for {client} via {}: {}: {}",
                    &time[11..23],
                    v.status_text(),
                    v.upstream,
                    v.label(),
                    v.summary
                )?;
            }
        }
        Ok(())
    }

    fn stats(&mut self, s: &Stats) -> Result<()> {
        match self.format {
            Format::Json => {
                let time = clock::rfc3339(clock::monotonic_ns() as i128 + self.boot_offset_ns);
                self.json_line(&StatsLine { kind: "stats", time, stats: s })?;
            }
            Format::Text => {
                let warn = if s.lost_total > 0 { "  <-- EVENTS WERE LOST" } else { "" };
                let otlp = s.otlp.as_ref().map(|o| format!(", otlp: {} exported, {} dropped", o.exported, o.dropped)).unwrap_or_default();
                let logs = s
                    .gateway_log
                    .as_ref()
                    .filter(|g| g.files > 0)
                    .map(|g| {
                        format!(
                            ", gateway log: {} matched, {} verdicts without a line, {} shed while behind, {} lines unmatched, {} unparsed",
                            g.matched, g.verdicts_unmatched, g.verdicts_shed, g.lines_unmatched, g.lines_unparsed
                        )
                    })
                    .unwrap_or_default();
                writeln!(
                    self.out,
                    "-- stats: {} events, {} traced processes, {} lost{otlp}{logs}{warn}",
                    s.events, s.traced_processes, s.lost_total
                )?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.out.flush()?;
        Ok(())
    }
}
