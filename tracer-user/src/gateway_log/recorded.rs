//! Replay: the gateway lines a trace recorded (in its verdict lines' `gateway_said`), given to
//! the verdicts re-derived from its events. The agreement is judged again against the new
//! verdict. Traces recorded before this field simply have none.
use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read},
    path::Path,
};

use serde::Deserialize;

use super::{GatewaySaid, apply};
use crate::engine::verdict::Verdict;

/// At most this many recorded lines are kept for a replay (a trace of a long storm).
const MAX_RECORDED: usize = 200_000;
/// Trace lines longer than this are not verdicts worth reading here.
const MAX_LINE: u64 = 1 << 20;

#[derive(Deserialize)]
struct RecordedVerdict {
    ts_ns: u64,
    gateway: RecordedGateway,
    client: String,
    gateway_said: GatewaySaid,
}

#[derive(Deserialize)]
struct RecordedGateway {
    pid: u32,
}

/// Recorded lines by the verdict they belonged to: its status time, gateway pid and client.
#[derive(Default)]
pub struct RecordedWords {
    by_verdict: HashMap<(u64, u32, String), GatewaySaid>,
}

impl RecordedWords {
    /// Collect them from a trace file, in one pass that keeps only them.
    pub fn from_trace(path: &Path) -> RecordedWords {
        let mut words = RecordedWords::default();
        let Ok(file) = std::fs::File::open(path) else { return words };
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match (&mut reader).take(MAX_LINE).read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            // Cheap test first: most lines are events.
            if !buf.windows(14).any(|w| w == b"\"gateway_said\"") {
                continue;
            }
            let Ok(v) = serde_json::from_slice::<RecordedVerdict>(&buf) else { continue };
            if words.by_verdict.len() < MAX_RECORDED {
                words.by_verdict.insert((v.ts_ns, v.gateway.pid, v.client), v.gateway_said);
            }
        }
        words
    }

    pub fn len(&self) -> usize {
        self.by_verdict.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_verdict.is_empty()
    }

    pub fn annotate(&mut self, verdicts: &mut [Verdict]) {
        for v in verdicts {
            if let Some(said) = self.by_verdict.get(&(v.ts_ns, v.gateway.pid, v.client.clone())) {
                apply(v, said.clone());
            }
        }
    }
}
