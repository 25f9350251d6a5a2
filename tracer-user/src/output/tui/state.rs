//! Everything the dashboard shows, updated from events, verdicts, stats, keys and ticks.
//! No terminal here: drawing reads this state only, so all of it is testable as data.
use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::{
    engine::{
        attribute::{Cause, Verdict},
        decode::{KernelEvent, Kind},
    },
    health::Stats,
};

/// Seconds of 5xx history kept for the chart.
pub const HISTORY_SECS: usize = 300;
/// Verdicts kept in the list (the trace file keeps everything).
pub const MAX_VERDICTS: usize = 2000;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpstreamRow {
    pub upstream: String,
    pub attempts: u64,
    pub failures: u64,
    /// By cause name (alphabetical, as shown).
    pub by_cause: BTreeMap<&'static str, u64>,
    pub retransmits: u64,
    pub last_failure_ns: Option<u64>,
    pub last_cause: Option<Cause>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    Verdicts,
    Upstreams,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortBy {
    Failures,
    Attempts,
    Retransmits,
    Recent,
    Name,
}

impl SortBy {
    fn next(self) -> Self {
        match self {
            SortBy::Failures => SortBy::Attempts,
            SortBy::Attempts => SortBy::Retransmits,
            SortBy::Retransmits => SortBy::Recent,
            SortBy::Recent => SortBy::Name,
            SortBy::Name => SortBy::Failures,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SortBy::Failures => "failures",
            SortBy::Attempts => "attempts",
            SortBy::Retransmits => "retransmits",
            SortBy::Recent => "last failure",
            SortBy::Name => "name",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Normal,
    Filter(String),
    Search(String),
}

/// A key, as the dashboard understands it (mapped from the terminal's key events).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Up,
    Down,
    PageUp,
    PageDown,
    Home,
    End,
    Enter,
    Esc,
    Tab,
    Backspace,
    CtrlC,
}

#[derive(Debug, Clone, Default)]
pub struct Header {
    pub source: String,
    /// comm -> pids
    pub gateways: BTreeMap<String, Vec<u32>>,
    pub netns: Vec<u32>,
    pub attached: Vec<String>,
    pub skipped: Vec<(String, String)>,
}

pub struct State {
    pub header: Header,
    /// Added to CLOCK_MONOTONIC stamps to show wall-clock time.
    pub boot_offset_ns: i128,
    pub started_ns: Option<u64>,
    pub now_ns: u64,
    pub events: u64,
    /// (second, events) for the events/s figure.
    rate: VecDeque<(u64, u64)>,
    pub lost: Vec<(&'static str, u64)>,
    pub lost_total: u64,
    /// Entries the kernel's LRU maps and the engine evicted to stay bounded.
    pub evicted_total: u64,
    /// Per second: 5xx count by class.
    pub history: VecDeque<(u64, [u64; 5])>,
    pub causes: BTreeMap<String, u64>,
    pub upstreams: HashMap<String, UpstreamRow>,
    pub verdicts: VecDeque<Verdict>,
    /// The list as shown: frozen while paused.
    frozen: Option<Vec<Verdict>>,
    pub selected: usize,
    pub upstream_selected: usize,
    pub focus: Focus,
    pub sort: SortBy,
    pub detail: bool,
    pub help: bool,
    pub paused: bool,
    pub filter: String,
    pub search: String,
    pub input: Input,
    pub quit: bool,
    pub finished: Option<String>,
}

impl State {
    pub fn new(header: Header) -> Self {
        State {
            header,
            boot_offset_ns: 0,
            started_ns: None,
            now_ns: 0,
            events: 0,
            rate: VecDeque::new(),
            lost: vec![],
            lost_total: 0,
            evicted_total: 0,
            history: VecDeque::new(),
            causes: BTreeMap::new(),
            upstreams: HashMap::new(),
            verdicts: VecDeque::new(),
            frozen: None,
            selected: 0,
            upstream_selected: 0,
            focus: Focus::Verdicts,
            sort: SortBy::Failures,
            detail: false,
            help: false,
            paused: false,
            filter: String::new(),
            search: String::new(),
            input: Input::Normal,
            quit: false,
            finished: None,
        }
    }

    fn second(ts_ns: u64) -> u64 {
        ts_ns / 1_000_000_000
    }

    pub fn tick(&mut self, now_ns: u64) {
        self.now_ns = self.now_ns.max(now_ns);
        self.started_ns.get_or_insert(now_ns);
        let now_s = Self::second(self.now_ns);
        while self.rate.front().is_some_and(|(s, _)| *s + 5 < now_s) {
            self.rate.pop_front();
        }
        while self.history.front().is_some_and(|(s, _)| *s + HISTORY_SECS as u64 <= now_s) {
            self.history.pop_front();
        }
    }

    pub fn on_event(&mut self, ev: &KernelEvent) {
        self.tick(ev.ts_ns);
        self.events += 1;
        let s = Self::second(ev.ts_ns);
        match self.rate.back_mut() {
            Some((sec, n)) if *sec == s => *n += 1,
            _ => self.rate.push_back((s, 1)),
        }
        let upstream = ev.dst.map(|a| a.to_string()).or_else(|| ev.path.clone().map(|p| format!("unix:{p}")));
        match ev.kind {
            Kind::ConnectStart | Kind::ConnectSyscall if !ev.to_resolver() => {
                if let Some(u) = upstream {
                    self.upstreams.entry(u.clone()).or_insert_with(|| UpstreamRow { upstream: u, ..Default::default() }).attempts += 1;
                }
            }
            Kind::Retransmit => {
                if let Some(u) = upstream {
                    self.upstreams.entry(u.clone()).or_insert_with(|| UpstreamRow { upstream: u, ..Default::default() }).retransmits += 1;
                }
            }
            Kind::ProcessFork => {
                let pids = self.header.gateways.entry(ev.comm.to_string()).or_default();
                if !pids.contains(&ev.aux) {
                    pids.push(ev.aux);
                }
            }
            // A replayed trace names its gateways only through their events.
            Kind::HttpStatus if !ev.comm.is_empty() => {
                let pids = self.header.gateways.entry(ev.comm.to_string()).or_default();
                if !pids.contains(&ev.pid) {
                    pids.push(ev.pid);
                }
            }
            _ => {}
        }
        if ev.netns != 0 && matches!(ev.kind, Kind::ConnectStart) && !self.header.netns.contains(&ev.netns) {
            self.header.netns.push(ev.netns);
        }
    }

    pub fn on_verdict(&mut self, v: &Verdict) {
        self.tick(v.ts_ns);
        let s = Self::second(v.ts_ns);
        let i = v.class.index();
        match self.history.iter_mut().find(|(sec, _)| *sec == s) {
            Some((_, counts)) => counts[i] += 1,
            None => {
                let mut counts = [0; 5];
                counts[i] = 1;
                self.history.push_back((s, counts));
                self.history.make_contiguous().sort_by_key(|(sec, _)| *sec);
            }
        }
        *self.causes.entry(v.label()).or_default() += 1;
        let row =
            self.upstreams.entry(v.upstream.clone()).or_insert_with(|| UpstreamRow { upstream: v.upstream.clone(), ..Default::default() });
        row.failures += 1;
        *row.by_cause.entry(v.cause.as_str()).or_default() += 1;
        row.last_failure_ns = Some(v.ts_ns);
        row.last_cause = Some(v.cause);
        self.verdicts.push_front(v.clone());
        if self.verdicts.len() > MAX_VERDICTS {
            self.verdicts.pop_back();
        }
        if !self.paused && self.selected > 0 {
            // Keep the same verdict selected as new ones arrive on top.
            self.selected += 1;
        }
    }

    /// Losses, and apart from them the evictions (old state made room by design).
    pub fn on_stats(&mut self, s: &Stats) {
        self.lost_total = s.lost_total;
        self.lost = s.lost.clone();
        self.evicted_total = s.evicted_total();
    }

    pub fn events_per_sec(&self) -> f64 {
        let now_s = Self::second(self.now_ns);
        let total: u64 = self.rate.iter().filter(|(s, _)| *s < now_s && *s + 5 >= now_s).map(|(_, n)| n).sum();
        total as f64 / 5.0
    }

    pub fn uptime_secs(&self) -> u64 {
        self.started_ns.map(|s| self.now_ns.saturating_sub(s) / 1_000_000_000).unwrap_or(0)
    }

    fn matches(&self, v: &Verdict) -> bool {
        let f = self.filter.to_lowercase();
        let hay_f = format!("{} {} {}", v.class, v.cause, v.upstream).to_lowercase();
        let s = self.search.to_lowercase();
        let hay_s = format!("{} {} {} {} {}", v.summary, v.client, v.upstream, v.cause, v.status_text()).to_lowercase();
        (f.is_empty() || f.split_whitespace().all(|w| hay_f.contains(w))) && (s.is_empty() || hay_s.contains(&s))
    }

    /// The verdicts as listed: newest first, filtered, frozen while paused.
    pub fn visible(&self) -> Vec<&Verdict> {
        match &self.frozen {
            Some(list) => list.iter().filter(|v| self.matches(v)).collect(),
            None => self.verdicts.iter().filter(|v| self.matches(v)).collect(),
        }
    }

    pub fn selected_verdict(&self) -> Option<Verdict> {
        self.visible().get(self.selected).map(|v| (*v).clone())
    }

    pub fn upstream_rows(&self) -> Vec<&UpstreamRow> {
        let mut rows: Vec<&UpstreamRow> = self.upstreams.values().collect();
        rows.sort_by(|a, b| {
            let ord = match self.sort {
                SortBy::Failures => b.failures.cmp(&a.failures),
                SortBy::Attempts => b.attempts.cmp(&a.attempts),
                SortBy::Retransmits => b.retransmits.cmp(&a.retransmits),
                SortBy::Recent => b.last_failure_ns.cmp(&a.last_failure_ns),
                SortBy::Name => a.upstream.cmp(&b.upstream),
            };
            ord.then_with(|| a.upstream.cmp(&b.upstream))
        });
        rows
    }

    fn clamp(&mut self) {
        let n = self.visible().len();
        self.selected = self.selected.min(n.saturating_sub(1));
        let m = self.upstreams.len();
        self.upstream_selected = self.upstream_selected.min(m.saturating_sub(1));
    }

    fn move_by(&mut self, delta: i64) {
        let (cur, n) = match self.focus {
            Focus::Verdicts => (self.selected, self.visible().len()),
            Focus::Upstreams => (self.upstream_selected, self.upstreams.len()),
        };
        let next = (cur as i64 + delta).clamp(0, n.saturating_sub(1) as i64) as usize;
        match self.focus {
            Focus::Verdicts => self.selected = next,
            Focus::Upstreams => self.upstream_selected = next,
        }
    }

    pub fn on_key(&mut self, key: Key) {
        if key == Key::CtrlC {
            self.quit = true;
            return;
        }
        match self.input.clone() {
            Input::Filter(mut text) | Input::Search(mut text) => {
                let is_filter = matches!(self.input, Input::Filter(_));
                match key {
                    Key::Enter | Key::Esc => {
                        if key == Key::Enter {
                            if is_filter {
                                self.filter = text;
                            } else {
                                self.search = text;
                            }
                            self.selected = 0;
                        }
                        self.input = Input::Normal;
                    }
                    Key::Backspace => {
                        text.pop();
                        self.input = if is_filter { Input::Filter(text) } else { Input::Search(text) };
                    }
                    Key::Char(c) => {
                        text.push(c);
                        self.input = if is_filter { Input::Filter(text) } else { Input::Search(text) };
                    }
                    _ => {}
                }
                self.clamp();
                return;
            }
            Input::Normal => {}
        }
        if self.help {
            self.help = false;
            if matches!(key, Key::Char('q')) {
                self.quit = true;
            }
            return;
        }
        match key {
            Key::Char('q') => self.quit = true,
            Key::Esc => {
                if self.detail {
                    self.detail = false;
                } else if !self.filter.is_empty() || !self.search.is_empty() {
                    self.filter.clear();
                    self.search.clear();
                } else {
                    self.quit = true;
                }
            }
            Key::Up | Key::Char('k') => self.move_by(-1),
            Key::Down | Key::Char('j') => self.move_by(1),
            Key::PageUp => self.move_by(-10),
            Key::PageDown => self.move_by(10),
            Key::Home | Key::Char('g') => self.move_by(-(MAX_VERDICTS as i64)),
            Key::End | Key::Char('G') => self.move_by(MAX_VERDICTS as i64),
            Key::Enter => {
                if self.focus == Focus::Verdicts && !self.visible().is_empty() {
                    self.detail = !self.detail;
                } else if self.focus == Focus::Upstreams {
                    // Filter the verdict list to the selected upstream.
                    if let Some(row) = self.upstream_rows().get(self.upstream_selected) {
                        self.filter = row.upstream.clone();
                        self.focus = Focus::Verdicts;
                        self.selected = 0;
                    }
                }
            }
            Key::Tab => {
                self.focus = match self.focus {
                    Focus::Verdicts => Focus::Upstreams,
                    Focus::Upstreams => Focus::Verdicts,
                };
                self.detail = false;
            }
            Key::Char('p') => {
                self.paused = !self.paused;
                self.frozen = self.paused.then(|| self.verdicts.iter().cloned().collect());
            }
            Key::Char('f') => self.input = Input::Filter(self.filter.clone()),
            Key::Char('/') => self.input = Input::Search(self.search.clone()),
            Key::Char('s') => self.sort = self.sort.next(),
            Key::Char('?') => self.help = true,
            _ => {}
        }
        self.clamp();
    }
}
