//! `upstrace report FILE`: a postmortem from a trace. Verdicts are re-derived from the raw
//! events by the same engine, then summarized as Markdown, and optionally as one
//! self-contained HTML page (inline CSS and SVG; no scripts, no fonts, no network).
use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::Result;

use crate::{
    clock,
    engine::attribute::{Class, Delivered, Engine, Verdict},
    gateway_log::Agreement,
    source::replay::{self, TraceInfo},
};

pub struct Report {
    pub file: String,
    pub info: TraceInfo,
    pub verdicts: Vec<Verdict>,
    pub first_ns: Option<u64>,
    pub last_ns: Option<u64>,
    pub events: u64,
}

impl Report {
    pub fn from_trace(path: &Path) -> Result<Self> {
        let mut engine = Engine::new();
        let mut verdicts = Vec::new();
        let (mut first, mut last) = (None, None);
        let info = replay::read_events(path, |ev| {
            first.get_or_insert(ev.ts_ns);
            last = Some(ev.ts_ns);
            verdicts.extend(engine.advance(ev.ts_ns));
            verdicts.extend(engine.handle(&ev));
            Ok(())
        })?;
        info.warn_if_cut(path);
        verdicts.extend(engine.flush());
        verdicts.sort_by_key(|v| v.ts_ns);
        crate::gateway_log::recorded::RecordedWords::from_trace(path).annotate(&mut verdicts);
        let events = info.events;
        Ok(Report { file: path.display().to_string(), info, verdicts, first_ns: first, last_ns: last, events })
    }

    fn wall(&self, ts_ns: u64) -> String {
        clock::rfc3339(ts_ns as i128 + self.info.boot_offset_ns.unwrap_or(0))
    }

    fn by_class(&self) -> [u64; 5] {
        let mut counts = [0; 5];
        for v in &self.verdicts {
            counts[v.class.index()] += 1;
        }
        counts
    }

    /// class/cause -> verdicts, in order of appearance.
    fn by_cause(&self) -> BTreeMap<String, Vec<&Verdict>> {
        let mut map: BTreeMap<String, Vec<&Verdict>> = BTreeMap::new();
        for v in &self.verdicts {
            map.entry(v.label()).or_default().push(v);
        }
        map
    }

    fn top_upstreams(&self) -> Vec<(String, u64, BTreeMap<String, u64>)> {
        let mut map: BTreeMap<String, (u64, BTreeMap<String, u64>)> = BTreeMap::new();
        for v in &self.verdicts {
            let e = map.entry(v.upstream.clone()).or_default();
            e.0 += 1;
            *e.1.entry(v.cause.as_str().to_owned()).or_default() += 1;
        }
        let mut list: Vec<_> = map.into_iter().map(|(u, (n, c))| (u, n, c)).collect();
        list.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        list
    }

    /// The minute (from the first event) with the most verdicts: (start ns, count, by class).
    fn worst_minute(&self) -> Option<(u64, usize, [u64; 5])> {
        let start = self.first_ns?;
        let mut minutes: BTreeMap<u64, [u64; 5]> = BTreeMap::new();
        for v in &self.verdicts {
            let m = (v.ts_ns.saturating_sub(start)) / 60_000_000_000;
            minutes.entry(m).or_default()[v.class.index()] += 1;
        }
        minutes
            .into_iter()
            .map(|(m, c)| (start + m * 60_000_000_000, c.iter().sum::<u64>() as usize, c))
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# upstrace report: {}\n", self.file);
        if let Some(h) = &self.info.header {
            let _ = writeln!(
                md,
                "Recorded by upstrace {} on host `{}`, kernel {}.\n",
                h["upstrace"].as_str().unwrap_or("?"),
                h["host"].as_str().unwrap_or("?"),
                h["kernel"].as_str().unwrap_or("?")
            );
        }
        let (Some(first), Some(last)) = (self.first_ns, self.last_ns) else {
            md.push_str("The trace holds no events.\n");
            return md;
        };
        let secs = (last - first) as f64 / 1e9;
        let truncated = self.verdicts.iter().filter(|v| v.delivered == Delivered::Truncated).count();
        let _ = writeln!(md, "- Window: {} to {} ({secs:.1} s)", self.wall(first), self.wall(last));
        let _ = writeln!(md, "- Kernel events: {}", self.events);
        if self.info.truncated_tail {
            let _ = writeln!(md, "- Note: the trace's last line was cut short (its writer stopped mid-line) and was left out");
        }
        let _ = writeln!(
            md,
            "- Verdicts: {} ({} 5xx answers explained, {} responses cut short)\n",
            self.verdicts.len(),
            self.verdicts.len() - truncated,
            truncated
        );
        md.push_str("## Totals by class\n\n| class | verdicts | share |\n|---|---:|---:|\n");
        let counts = self.by_class();
        let total = self.verdicts.len().max(1) as f64;
        for (i, c) in Class::ALL.iter().enumerate() {
            if counts[i] > 0 {
                let _ = writeln!(md, "| {} | {} | {:.0}% |", c.as_str(), counts[i], counts[i] as f64 * 100.0 / total);
            }
        }
        md.push_str("\n## Causes\n\n| class/cause | verdicts | first | last |\n|---|---:|---|---|\n");
        let causes = self.by_cause();
        let mut ordered: Vec<_> = causes.iter().collect();
        ordered.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
        for (name, list) in &ordered {
            let _ = writeln!(md, "| {name} | {} | {} | {} |", list.len(), self.wall(list[0].ts_ns), self.wall(list[list.len() - 1].ts_ns));
        }
        md.push_str("\n## Top upstreams\n\n| upstream | failures | causes |\n|---|---:|---|\n");
        for (u, n, c) in self.top_upstreams().iter().take(10) {
            let causes = c.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ");
            let _ = writeln!(md, "| {u} | {n} | {causes} |");
        }
        if let Some((start, n, by)) = self.worst_minute() {
            let classes = Class::ALL
                .iter()
                .enumerate()
                .filter(|(i, _)| by[*i] > 0)
                .map(|(i, c)| format!("{} {}", c.as_str(), by[i]))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(md, "\n## Worst minute\n\nFrom {}: {n} verdicts ({classes}).", self.wall(start));
        }
        md.push_str("\n## Each cause, one example\n");
        for (name, list) in &ordered {
            let v = list[0];
            let _ = writeln!(md, "\n### {name} ({} verdicts)\n", list.len());
            let _ = writeln!(
                md,
                "{} at {}: status {} to client {} via {}{}.\n",
                v.gateway.comm,
                self.wall(v.ts_ns),
                v.status_text(),
                v.client_with_protocol(),
                v.upstream,
                if v.delivered == Delivered::Truncated { " (cut short)" } else { "" }
            );
            let _ = writeln!(md, "> {}\n", v.summary);
            if let Some(said) = &v.gateway_said {
                let _ = writeln!(md, "{} said: `{}` ({})  ", v.gateway.comm, said.line.replace('`', "'"), said.source);
                let _ = writeln!(md, "the kernel saw: {}{}\n", v.label(), agreement_note(said.agreement));
            }
            let _ = writeln!(md, "What to check next: {}\n", v.next_check());
            md.push_str("| t (ms) | event | detail |\n|---:|---|---|\n");
            for e in &v.evidence {
                let _ = writeln!(md, "| {:.1} | {} | {} |", e.t_ms, e.event, e.detail.to_string().replace('|', "\\|"));
            }
        }
        if self.verdicts.is_empty() {
            md.push_str("\nNo 5xx answer and no cut-short response in this trace.\n");
        }
        md
    }

    pub fn html(&self) -> String {
        let mut h = String::new();
        h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n");
        let _ = writeln!(h, "<title>upstrace report: {}</title>", esc(&self.file));
        h.push_str("<style>\nbody{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;font-size:13px}\ntd,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}\nth{background:#eee}");
        for c in Class::ALL {
            let _ = write!(h, ".{}{{color:{}}}", c.as_str(), c.hue().css());
        }
        h.push_str("\n</style>\n</head>\n<body>\n");
        let _ = writeln!(h, "<h1>upstrace report: {}</h1>", esc(&self.file));
        let (first, last) = (self.first_ns.unwrap_or(0), self.last_ns.unwrap_or(0));
        let _ = writeln!(
            h,
            "<p>Window {} to {}: {} kernel events, {} verdicts.</p>",
            esc(&self.wall(first)),
            esc(&self.wall(last)),
            self.events,
            self.verdicts.len()
        );
        h.push_str("<h2>5xx over time, by class</h2>\n");
        h.push_str(&self.svg_timeline(first, last));
        h.push_str("<h2>Verdicts</h2>\n<table>\n<tr><th>time</th><th>status</th><th>client</th><th>upstream</th><th>class/cause</th><th>summary</th></tr>\n");
        for v in &self.verdicts {
            let _ = writeln!(
                h,
                "<tr class=\"verdict\"><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}/{}</td><td>{}</td></tr>",
                esc(&self.wall(v.ts_ns)),
                v.status_text(),
                if v.delivered == Delivered::Truncated { " (cut short)" } else { "" },
                esc(&v.client_with_protocol()),
                esc(&v.upstream),
                v.class.as_str(),
                v.class.as_str(),
                v.cause.as_str(),
                esc(&v.summary) + &gateway_said_html(v)
            );
        }
        h.push_str("</table>\n</body>\n</html>\n");
        h
    }

    fn svg_timeline(&self, first: u64, last: u64) -> String {
        const W: f64 = 800.0;
        const H: f64 = 160.0;
        const BUCKETS: usize = 60;
        let span = (last.saturating_sub(first)).max(1) as f64;
        let mut buckets = vec![[0u64; 5]; BUCKETS];
        for v in &self.verdicts {
            let i = (((v.ts_ns.saturating_sub(first)) as f64 / span) * (BUCKETS as f64 - 1.0)).round() as usize;
            buckets[i.min(BUCKETS - 1)][v.class.index()] += 1;
        }
        let max = buckets.iter().map(|b| b.iter().sum::<u64>()).max().unwrap_or(0).max(1) as f64;
        let bw = W / BUCKETS as f64;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{}\" viewBox=\"0 0 {W} {}\" role=\"img\">",
            H + 40.0,
            H + 40.0
        );
        let _ = writeln!(s, "<rect x=\"0\" y=\"0\" width=\"{W}\" height=\"{H}\" fill=\"#fafafa\" stroke=\"#ccc\"/>");
        for (i, b) in buckets.iter().enumerate() {
            let mut y = H;
            for (c, n) in b.iter().enumerate() {
                if *n == 0 {
                    continue;
                }
                let hh = *n as f64 / max * (H - 10.0);
                y -= hh;
                let _ = writeln!(
                    s,
                    "<rect class=\"bar\" x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{hh:.1}\" fill=\"{}\"><title>{} {}</title></rect>",
                    i as f64 * bw + 1.0,
                    bw - 2.0,
                    Class::ALL[c].hue().css(),
                    n,
                    Class::ALL[c].as_str()
                );
            }
        }
        for (c, class) in Class::ALL.iter().enumerate() {
            let x = 10.0 + c as f64 * 120.0;
            let _ = writeln!(s, "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/>", H + 14.0, class.hue().css());
            let _ = writeln!(s, "<text x=\"{}\" y=\"{}\" font-size=\"12\">{}</text>", x + 16.0, H + 25.0, class.as_str());
        }
        s.push_str("</svg>\n");
        s
    }
}

/// "nginx said: ... / the kernel saw: ..." under a verdict's summary in the HTML table.
fn gateway_said_html(v: &Verdict) -> String {
    let Some(said) = &v.gateway_said else { return String::new() };
    format!(
        "<br><small><b>{} said:</b> <code>{}</code> ({})<br><b>the kernel saw:</b> {}{}</small>",
        esc(&v.gateway.comm),
        esc(&said.line),
        esc(&said.source),
        esc(&v.label()),
        esc(agreement_note(said.agreement))
    )
}

/// How the gateway's words and the kernel's verdict compare, for the report.
fn agreement_note(a: Agreement) -> &'static str {
    match a {
        Agreement::Agrees => " (they agree)",
        Agreement::Disagrees => " (they DISAGREE: the gateway's log names another cause)",
        Agreement::Unknown => "",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
