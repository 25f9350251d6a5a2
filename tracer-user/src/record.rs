//! `--record FILE`: a trace for postmortems, JSON Lines. First a header line, then every raw
//! event and verdict. Written in batches (one per ring-buffer drain), so after a kill -9 the
//! file is readable up to the last batch. A write failure (full disk) is reported once and
//! recording stops; tracing goes on.
use std::{
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use serde_json::json;

use crate::{
    attribute::Verdict,
    clock,
    decode::KernelEvent,
    sink::{event_json, verdict_json},
};

pub const FORMAT_NAME: &str = "upstrace-trace";
pub const FORMAT_VERSION: u32 = 1;

pub struct Recorder {
    path: PathBuf,
    out: Option<BufWriter<File>>,
    boot_offset_ns: i128,
    pub failed: Option<String>,
    pub written: u64,
}

fn uname() -> (String, String) {
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_owned()).unwrap_or_default();
    (read("/proc/sys/kernel/hostname"), read("/proc/sys/kernel/osrelease"))
}

impl Recorder {
    pub fn create(path: &Path, boot_offset_ns: i128) -> Result<Self> {
        let file = File::create(path).with_context(|| format!("cannot create trace file {}", path.display()))?;
        let mut rec = Recorder {
            path: path.to_owned(),
            out: Some(BufWriter::with_capacity(256 * 1024, file)),
            boot_offset_ns,
            failed: None,
            written: 0,
        };
        let (host, kernel) = uname();
        let header = json!({
            "type": "header",
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "upstrace": env!("CARGO_PKG_VERSION"),
            "host": host,
            "kernel": kernel,
            "boot_offset_ns": boot_offset_ns.to_string(),
            "started": clock::rfc3339(clock::monotonic_ns() as i128 + boot_offset_ns),
        });
        rec.line(&header);
        rec.flush();
        if let Some(e) = &rec.failed {
            anyhow::bail!("cannot write trace file {}: {e}", path.display());
        }
        Ok(rec)
    }

    fn line(&mut self, value: &impl serde::Serialize) {
        let Some(out) = self.out.as_mut() else { return };
        let result = serde_json::to_writer(&mut *out, value)
            .map_err(std::io::Error::other)
            .and_then(|_| out.write_all(b"\n"));
        match result {
            Ok(()) => self.written += 1,
            Err(e) => self.fail(e),
        }
    }

    fn fail(&mut self, e: std::io::Error) {
        let msg = if e.raw_os_error() == Some(libc::ENOSPC) {
            format!("disk full writing {}: recording stopped, tracing continues", self.path.display())
        } else {
            format!("writing {} failed: {e}: recording stopped, tracing continues", self.path.display())
        };
        eprintln!("upstrace: warning: {msg}");
        self.failed = Some(msg);
        self.out = None;
    }

    pub fn event(&mut self, ev: &KernelEvent) {
        if self.out.is_some() {
            match event_json(ev, self.boot_offset_ns) {
                Ok(obj) => self.line(&obj),
                Err(e) => self.fail(e),
            }
        }
    }

    pub fn verdict(&mut self, v: &Verdict) {
        if self.out.is_some() {
            match verdict_json(v, self.boot_offset_ns) {
                Ok(obj) => self.line(&obj),
                Err(e) => self.fail(e),
            }
        }
    }

    /// End of a batch: push it to the file.
    pub fn flush(&mut self) {
        if let Some(out) = self.out.as_mut() {
            if let Err(e) = out.flush() {
                self.fail(e);
            }
        }
    }
}
