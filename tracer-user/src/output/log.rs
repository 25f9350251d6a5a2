//! The service's log (`upstrace serve`): one line per notable thing on stderr, which journald
//! keeps with its own time stamp: each verdict and each stats line (a recording that stops
//! says so itself).
use std::io::Write;

use anyhow::Result;

use crate::{engine::attribute::Verdict, health::Stats, output::Output};

pub struct Log<W: Write> {
    out: W,
}

impl<W: Write> Log<W> {
    pub fn new(out: W) -> Self {
        Log { out }
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// One line: newlines inside a value (a summary quoting bytes) must not split it.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

impl<W: Write> Output for Log<W> {
    fn verdict(&mut self, v: &Verdict) -> Result<()> {
        let said = v.gateway_said.as_ref().map(|s| format!(" ({} said: {})", v.gateway.comm, s.line)).unwrap_or_default();
        let line = format!(
            "upstrace: verdict: {} from {} {} for {} via {}: {}: {}{said}",
            v.status_text(),
            v.gateway.comm,
            v.gateway.pid,
            v.client_with_protocol(),
            v.upstream,
            v.label(),
            v.summary
        );
        self.out.write_all(one_line(&line).as_bytes())?;
        self.out.write_all(b"\n")?;
        Ok(())
    }

    fn stats(&mut self, s: &Stats) -> Result<()> {
        let warn = if s.lost_total > 0 { " (EVENTS WERE LOST)" } else { "" };
        let logs = s
            .gateway_log
            .as_ref()
            .filter(|g| g.files > 0)
            .map(|g| format!(", gateway log: {} matched, {} unmatched lines", g.matched, g.lines_unmatched))
            .unwrap_or_default();
        writeln!(
            self.out,
            "upstrace: stats: {} events, {} verdicts, {} traced processes, {} lost{warn}, {} evicted{logs}",
            s.events,
            s.verdicts,
            s.traced_processes,
            s.lost_total,
            s.evicted_total()
        )?;
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.out.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::attribute::Gateway;

    #[test]
    fn a_verdict_is_one_line() {
        let mut log = Log::new(Vec::new());
        let v = Verdict {
            ts_ns: 1,
            gateway: Gateway { pid: 10, comm: "nginx".into() },
            client: "10.0.0.9:5000".into(),
            upstream: "10.0.2.2:8081".into(),
            summary: "refused\nthe connection".into(),
            ..Verdict::example()
        };
        log.verdict(&v).unwrap();
        log.stats(&Stats { events: 5, verdicts: 1, ..Stats::default() }).unwrap();
        let text = String::from_utf8(log.into_inner()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "upstrace: verdict: 502 from nginx 10 for 10.0.0.9:5000 via 10.0.2.2:8081: upstream/refused: refused the connection",
                "upstrace: stats: 5 events, 1 verdicts, 0 traced processes, 0 lost, 0 evicted"
            ]
        );
    }
}
