//! Replay: a recorded trace (or any `--json` output) as a source for the same pipeline.
//! Verdicts are re-derived from the raw events, so an improved engine re-judges old
//! incidents. No root needed.
use std::{
    io::{BufRead, BufReader},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{engine::decode::KernelEvent, pipeline::Pipeline};

/// No trace line comes near this; longer ones mean the file is not a trace.
const MAX_LINE: usize = 16 << 20;

/// What the file said about itself.
#[derive(Debug, Default, Clone)]
pub struct TraceInfo {
    pub header: Option<Value>,
    pub boot_offset_ns: Option<i128>,
    pub events: u64,
    /// Lines that were not events (verdicts, stats) and were skipped.
    pub skipped: u64,
    /// The last line was cut short (writer killed mid-line) and was ignored.
    pub truncated_tail: bool,
}

impl TraceInfo {
    /// Say on stderr that the last line was cut short and ignored, if it was.
    pub fn warn_if_cut(&self, path: &Path) {
        if self.truncated_tail {
            eprintln!("upstrace: warning: {}: the last line was cut short (writer stopped mid-line) and was ignored", path.display());
        }
    }
}

/// Read every event of a trace, in file order. A malformed line is an error naming the
/// line, except a cut-short last line, which is reported and ignored.
pub fn read_events(path: &Path, each: impl FnMut(KernelEvent) -> Result<()>) -> Result<TraceInfo> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open trace {}", path.display()))?;
    let meta = file.metadata()?;
    if meta.is_dir() {
        bail!("{} is a directory, not a trace file", path.display());
    }
    read_events_from(BufReader::with_capacity(1 << 20, file), path, each)
}

/// The same, from any reader (`path` only names it in errors).
pub fn read_events_from(mut reader: impl BufRead, path: &Path, mut each: impl FnMut(KernelEvent) -> Result<()>) -> Result<TraceInfo> {
    let mut info = TraceInfo::default();
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    loop {
        buf.clear();
        // Bounded line length: a huge garbage file must not eat memory.
        let n = std::io::Read::take(&mut reader, MAX_LINE as u64).read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let complete = buf.last() == Some(&b'\n');
        if !complete && n == MAX_LINE {
            bail!("{}:{line_no}: line longer than {} MiB: not a trace", path.display(), MAX_LINE >> 20);
        }
        let text = String::from_utf8_lossy(&buf);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let value: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(_) if !complete => {
                info.truncated_tail = true;
                break;
            }
            Err(e) => bail!("{}:{line_no}: not a trace line ({e})", path.display()),
        };
        match value.get("type").and_then(Value::as_str) {
            Some("header") => {
                if line_no == 1 {
                    if value.get("format").and_then(Value::as_str) != Some(crate::trace_format::FORMAT_NAME) {
                        bail!("{}:1: not an upstrace trace (format {:?})", path.display(), value.get("format"));
                    }
                    info.boot_offset_ns = value.get("boot_offset_ns").and_then(Value::as_str).and_then(|s| s.parse().ok());
                    info.header = Some(value);
                }
            }
            Some("event") => {
                // Without a header, the first event's wall-clock time gives the offset.
                if info.boot_offset_ns.is_none() {
                    let time = value.get("time").and_then(Value::as_str).and_then(crate::clock::parse_rfc3339);
                    let ts = value.get("ts_ns").and_then(Value::as_u64);
                    if let (Some(time), Some(ts)) = (time, ts) {
                        info.boot_offset_ns = Some(time - ts as i128);
                    }
                }
                let mut ev: KernelEvent =
                    serde_json::from_value(value).with_context(|| format!("{}:{line_no}: malformed event", path.display()))?;
                ev.mask_head();
                info.events += 1;
                each(ev)?;
            }
            Some(_) => info.skipped += 1,
            None => bail!("{}:{line_no}: not a trace line (no \"type\")", path.display()),
        }
    }
    if line_no == 0 {
        bail!("{} is empty: no trace in it", path.display());
    }
    Ok(info)
}

pub enum Pace {
    Fast,
    Speed(f64),
}

/// The host's network namespace as the recorder saw it (header line), if it said.
fn recorded_host_netns(path: &Path) -> Option<u32> {
    use std::io::{BufRead, Read};
    let mut first = String::new();
    std::io::BufReader::new(std::fs::File::open(path).ok()?.take(64 * 1024)).read_line(&mut first).ok()?;
    let header: Value = serde_json::from_str(&first).ok()?;
    header.get("host_netns")?.as_u64().and_then(|n| u32::try_from(n).ok())
}

/// Feed a trace through the pipeline, moving the engine's clock with the events. The file is
/// streamed, never loaded whole, so a huge trace costs time, not memory.
pub async fn run(path: &Path, pace: Pace, pipeline: &mut Pipeline) -> Result<TraceInfo> {
    if let Some(netns) = recorded_host_netns(path) {
        pipeline.engine.set_host_netns(netns);
    }
    let words = crate::gateway_log::recorded::RecordedWords::from_trace(path);
    if !words.is_empty() {
        pipeline.gateway_words = crate::gateway_log::GatewayWords::Recorded(words);
    }
    let mut last_ts: Option<u64> = None;
    let mut stopped = false;
    let result = read_events(path, |ev| {
        if stopped {
            return Ok(());
        }
        if let (Pace::Speed(speed), Some(prev)) = (&pace, last_ts) {
            // Sleep in small steps so keys stay responsive during long gaps.
            let mut gap = (ev.ts_ns.saturating_sub(prev) as f64 / speed).min(5e9);
            while gap > 1e5 {
                let step = gap.min(5e7);
                std::thread::sleep(Duration::from_nanos(step as u64));
                gap -= step;
                if !pipeline.poll(prev)? {
                    stopped = true;
                    return Ok(());
                }
            }
        }
        last_ts = Some(ev.ts_ns);
        pipeline.tick(ev.ts_ns)?;
        pipeline.event(&ev)?;
        if !pipeline.poll(ev.ts_ns)? {
            stopped = true;
        }
        Ok(())
    });
    let info = result?;
    pipeline.finish()?;
    pipeline.finished(&format!("replay done: {} events", info.events));
    // With a dashboard, stay until the person quits (or SIGTERM).
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    while !stopped && pipeline.interactive() {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(30)) => {
                if !pipeline.poll(last_ts.unwrap_or(0))? {
                    break;
                }
            }
            _ = sigterm.recv() => break,
        }
    }
    info.warn_if_cut(path);
    Ok(info)
}
