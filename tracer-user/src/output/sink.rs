//! Where pipeline output goes: JSON Lines (one object per line, a stable contract) or short
//! human lines. Writes are buffered and flushed per ring-buffer batch.
use std::io::{self, Write};

use serde_json::{Map, Value, json};

use crate::{engine::attribute::Verdict, clock, engine::decode::KernelEvent};

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

/// The JSON object of an event line, for callers that add to it.
pub fn event_json(ev: &KernelEvent, boot_offset_ns: i128) -> io::Result<Map<String, Value>> {
    match serde_json::to_value(EventLine::new(ev, boot_offset_ns)).map_err(io::Error::other)? {
        Value::Object(obj) => Ok(obj),
        _ => Err(io::Error::other("an event is not a JSON object")),
    }
}

/// The JSON object of a verdict line, for callers that add to it.
pub fn verdict_json(v: &Verdict, boot_offset_ns: i128) -> io::Result<Map<String, Value>> {
    match serde_json::to_value(VerdictLine::new(v, boot_offset_ns)).map_err(io::Error::other)? {
        Value::Object(obj) => Ok(obj),
        _ => Err(io::Error::other("a verdict is not a JSON object")),
    }
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

    pub fn event(&mut self, ev: &KernelEvent) -> io::Result<()> {
        if !self.show_events {
            return Ok(());
        }
        match self.format {
            Format::Json => {
                let line = EventLine::new(ev, self.boot_offset_ns);
                self.json_line(&line)
            }
            Format::Text => {
                let time = self.wall_time(ev.ts_ns);
                writeln!(
                    self.out,
                    "{} {:<15} {:<16} {}",
                    &time[11..23],
                    format!("{}[{}]", ev.comm, ev.pid),
                    ev.kind.as_str(),
                    ev.detail()
                )
            }
        }
    }

    pub fn verdict(&mut self, v: &Verdict) -> io::Result<()> {
        match self.format {
            Format::Json => {
                let line = VerdictLine::new(v, self.boot_offset_ns);
                self.json_line(&line)
            }
            Format::Text => {
                let time = self.wall_time(v.ts_ns);
                writeln!(
                    self.out,
                    "{} >>> {} for {} via {}: {}/{}: {}",
                    &time[11..23],
                    v.status,
                    v.client,
                    v.upstream,
                    v.class_name(),
                    v.cause,
                    v.summary
                )
            }
        }
    }

    /// A JSON object of another type (verdict, stats, ...), or its text form.
    pub fn record(&mut self, kind: &str, mut fields: Map<String, Value>, text: &str) -> io::Result<()> {
        match self.format {
            Format::Json => {
                let mut obj = Map::new();
                obj.insert("type".into(), json!(kind));
                obj.append(&mut fields);
                self.json_line(&obj)
            }
            Format::Text => writeln!(self.out, "{text}"),
        }
    }

    fn json_line(&mut self, obj: &impl serde::Serialize) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, obj).map_err(io::Error::other)?;
        self.out.write_all(b"\n")
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
