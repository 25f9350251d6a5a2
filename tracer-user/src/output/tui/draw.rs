//! Drawing: reads `State`, writes a frame. No state changes here.
use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style, Stylize},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Sparkline, Table, Wrap},
};

use super::state::{Focus, Input, State};
use crate::{
    clock,
    engine::verdict::{Cause, Class, Delivered, Hue},
    gateway_log::Agreement,
};

/// The terminal colour of a class's hue.
pub fn class_color(c: Class) -> Color {
    match c.hue() {
        Hue::Red => Color::Red,
        Hue::Magenta => Color::Magenta,
        Hue::Yellow => Color::Yellow,
        Hue::Cyan => Color::Cyan,
        Hue::Gray => Color::Gray,
    }
}

fn hms(state: &State, ts_ns: u64) -> String {
    let t = clock::rfc3339(ts_ns as i128 + state.boot_offset_ns);
    t.get(11..23).unwrap_or("").to_owned()
}

pub fn draw(frame: &mut Frame, state: &State) {
    let area = frame.area();
    let [header, charts, lower, footer] =
        Layout::vertical([Constraint::Length(2), Constraint::Length(7), Constraint::Min(6), Constraint::Length(1)]).areas(area);
    draw_header(frame, state, header);
    let [left, right] = Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(charts);
    draw_history(frame, state, left);
    draw_causes(frame, state, right);
    if state.detail {
        draw_detail(frame, state, lower);
    } else {
        let up_rows = (state.upstreams.len() as u16).clamp(1, 4) + 3;
        let [ups, list] = Layout::vertical([Constraint::Length(up_rows), Constraint::Min(3)]).areas(lower);
        draw_upstreams(frame, state, ups);
        draw_verdicts(frame, state, list);
    }
    draw_footer(frame, state, footer);
    if state.help {
        draw_help(frame, area);
    }
}

fn draw_header(frame: &mut Frame, state: &State, area: Rect) {
    let h = &state.header;
    let gateways = if h.gateways.is_empty() {
        "waiting for a gateway".to_string()
    } else {
        h.gateways.iter().map(|(c, p)| format!("{c} ×{}", p.len())).collect::<Vec<_>>().join(" ")
    };
    let up = state.uptime_secs();
    let mut first = vec![Span::styled(" upstrace ", Style::new().bold().reversed())];
    if state.paused {
        first.push(Span::styled(" PAUSED ", Style::new().bold().fg(Color::Black).bg(Color::Yellow)));
    }
    first.extend([
        Span::raw(format!(" {} ", h.source)),
        Span::raw(format!("│ {gateways} ")),
        Span::raw(format!("│ netns {} ", if h.netns.is_empty() { "-".into() } else { h.netns.len().to_string() })),
        Span::raw(format!("│ up {:02}:{:02}:{:02} ", up / 3600, up / 60 % 60, up % 60)),
    ]);
    let lost = if state.lost_total > 0 {
        Span::styled(format!(" LOST {} events ", state.lost_total), Style::new().bold().fg(Color::White).bg(Color::Red))
    } else {
        Span::styled(" lost 0 ", Style::new().fg(Color::Green))
    };
    let programs = if h.attached.is_empty() && h.skipped.is_empty() {
        "recorded trace".to_string()
    } else {
        format!("programs {} attached, {} skipped", h.attached.len(), h.skipped.len())
    };
    let evicted = match state.evicted_total {
        0 => Span::raw(""),
        n => Span::styled(format!(" evicted {n} "), Style::new().fg(Color::Yellow)),
    };
    // Losses first on the line, so no terminal width can hide them.
    let second = Line::from(vec![
        lost,
        evicted,
        Span::raw(format!(" {} events, {:.0}/s │ {} verdicts │ {programs}", state.events, state.events_per_sec(), state.verdicts.len())),
        Span::raw(state.finished.as_deref().map(|f| format!(" │ {f}")).unwrap_or_default()),
    ]);
    frame.render_widget(Paragraph::new(vec![Line::from(first), second]), area);
}

fn draw_history(frame: &mut Frame, state: &State, area: Rect) {
    let block = Block::bordered().title(" 5xx/s by class ");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let label_w = 13u16;
    let width = inner.width.saturating_sub(label_w) as usize;
    let now_s = state.now_ns / 1_000_000_000;
    let rows = Layout::vertical([Constraint::Length(1); 5]).split(inner);
    for (i, class) in Class::ALL.iter().enumerate() {
        if i >= rows.len() {
            break;
        }
        let data: Vec<u64> = (0..width as u64)
            .rev()
            .map(|ago| {
                let s = now_s.saturating_sub(ago);
                state.history.iter().find(|(sec, _)| *sec == s).map(|(_, c)| c[i]).unwrap_or(0)
            })
            .collect();
        let total: u64 = state.history.iter().map(|(_, c)| c[i]).sum();
        let [l, r] = Layout::horizontal([Constraint::Length(label_w), Constraint::Min(1)]).areas(rows[i]);
        frame.render_widget(Paragraph::new(format!("{:<9}{:>3} ", class.as_str(), short(total))).fg(class_color(*class)), l);
        frame.render_widget(Sparkline::default().data(&data).style(Style::new().fg(class_color(*class))), r);
    }
}

fn short(n: u64) -> String {
    if n >= 100 { "99+".into() } else { n.to_string() }
}

fn draw_causes(frame: &mut Frame, state: &State, area: Rect) {
    let block = Block::bordered().title(" causes ");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let mut causes: Vec<(&String, &u64)> = state.causes.iter().collect();
    causes.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let max = causes.first().map(|c| *c.1).unwrap_or(1).max(1);
    let name_w = 22usize.min(inner.width as usize / 2);
    let bar_w = (inner.width as usize).saturating_sub(name_w + 6);
    let lines: Vec<Line> = causes
        .iter()
        .take(inner.height as usize)
        .map(|(name, n)| {
            let cause = name.split('/').nth(1).and_then(Cause::from_name);
            let color = cause.map_or(Color::Gray, |c| class_color(c.class()));
            let len = ((**n as usize) * bar_w).div_ceil(max as usize).max(1);
            Line::from(vec![
                Span::raw(format!("{:<name_w$.name_w$} ", name)),
                Span::styled("█".repeat(len.min(bar_w)), Style::new().fg(color)),
                Span::raw(format!(" {n}")),
            ])
        })
        .collect();
    let text = if lines.is_empty() { vec![Line::from(" no 5xx yet").dim()] } else { lines };
    frame.render_widget(Paragraph::new(text), inner);
}

fn focus_style(state: &State, focus: Focus) -> Style {
    if state.focus == focus { Style::new().fg(Color::Cyan) } else { Style::new() }
}

fn draw_upstreams(frame: &mut Frame, state: &State, area: Rect) {
    let rows: Vec<Row> = state
        .upstream_rows()
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let causes = u.by_cause.iter().map(|(c, n)| format!("{c} {n}")).collect::<Vec<_>>().join(", ");
            let last = u.last_failure_ns.map(|t| hms(state, t)).unwrap_or_else(|| "-".into());
            let style =
                if state.focus == Focus::Upstreams && i == state.upstream_selected { Style::new().reversed() } else { Style::new() };
            Row::new(vec![
                Cell::from(u.upstream.clone()),
                Cell::from(u.attempts.to_string()),
                Cell::from(u.failures.to_string()),
                Cell::from(u.retransmits.to_string()),
                Cell::from(last),
                Cell::from(causes),
            ])
            .style(style)
        })
        .collect();
    let widths = [
        Constraint::Length(21),
        Constraint::Length(6),
        Constraint::Length(5),
        Constraint::Length(5),
        Constraint::Length(12),
        Constraint::Min(10),
    ];
    let table = Table::new(rows, widths)
        .header(Row::new(vec!["upstream", "tries", "fail", "retx", "last fail", "failures by cause"]).style(Style::new().bold()))
        .block(
            Block::bordered()
                .title(format!(" upstreams (sort: {}) ", state.sort.name()))
                .border_style(focus_style(state, Focus::Upstreams)),
        );
    frame.render_widget(table, area);
}

fn draw_verdicts(frame: &mut Frame, state: &State, area: Rect) {
    let visible = state.visible();
    let height = area.height.saturating_sub(3) as usize;
    let offset = state.selected.saturating_sub(height.saturating_sub(1));
    let rows: Vec<Row> = visible
        .iter()
        .enumerate()
        .skip(offset)
        .take(height)
        .map(|(i, v)| {
            let selected = state.focus == Focus::Verdicts && i == state.selected;
            let style = if selected { Style::new().reversed() } else { Style::new() };
            let status = if v.delivered == Delivered::Truncated { format!("{}✂", v.status_text()) } else { v.status_text() };
            Row::new(vec![
                Cell::from(hms(state, v.ts_ns)),
                Cell::from(status),
                Cell::from(v.client_side.map_or("", |c| c.label())),
                Cell::from(v.client.clone()),
                Cell::from(v.upstream.clone()),
                Cell::from(Span::styled(v.label(), Style::new().fg(class_color(v.class)))),
                Cell::from(v.summary.clone()),
            ])
            .style(style)
        })
        .collect();
    let widths = [
        Constraint::Length(12),
        Constraint::Length(4),
        Constraint::Length(6),
        Constraint::Length(15),
        Constraint::Length(15),
        Constraint::Length(24),
        Constraint::Min(10),
    ];
    let mut title = format!(" verdicts {} ", visible.len());
    if !state.filter.is_empty() {
        title.push_str(&format!("[filter: {}] ", state.filter));
    }
    if !state.search.is_empty() {
        title.push_str(&format!("[search: {}] ", state.search));
    }
    let table = Table::new(rows, widths)
        .header(Row::new(vec!["time", "code", "proto", "client", "upstream", "class/cause", "summary"]).style(Style::new().bold()))
        .block(Block::bordered().title(title).border_style(focus_style(state, Focus::Verdicts)));
    frame.render_widget(table, area);
    if visible.is_empty() && area.height > 3 {
        let msg = if state.verdicts.is_empty() { " no 5xx yet: every request so far was answered" } else { " nothing matches the filter" };
        frame.render_widget(
            Paragraph::new(msg).dim(),
            Rect { x: area.x + 1, y: area.y + 2, width: area.width.saturating_sub(2), height: 1 },
        );
    }
}

fn draw_detail(frame: &mut Frame, state: &State, area: Rect) {
    let Some(v) = state.selected_verdict() else { return };
    let mut lines = vec![
        Line::from(vec![
            Span::styled(format!("{} ", v.status_text()), Style::new().bold()),
            Span::raw(format!("at {} to client {} via {} ", hms(state, v.ts_ns), v.client_with_protocol(), v.upstream)),
            Span::styled(v.label(), Style::new().bold().fg(class_color(v.class))),
            Span::raw(if v.delivered == Delivered::Truncated { "  (client got a cut-short response)" } else { "" }),
        ]),
        Line::from(v.summary.clone()),
        Line::from(""),
    ];
    // The gateway's own account beside the kernel's.
    if let Some(said) = &v.gateway_said {
        let (mark, colour) = match said.agreement {
            Agreement::Agrees => ("agrees", Color::Green),
            Agreement::Disagrees => ("DISAGREES", Color::Red),
            Agreement::Unknown => ("", Color::Gray),
        };
        lines.push(Line::from(vec![
            Span::styled(format!("{} said: ", v.gateway.comm), Style::new().bold()),
            Span::raw(said.line.clone()),
            Span::styled(format!("  ({})", said.source), Style::new().fg(Color::Gray)),
        ]));
        lines.push(Line::from(vec![
            Span::styled("the kernel saw: ", Style::new().bold()),
            Span::raw(format!("{} ", v.label())),
            Span::styled(mark, Style::new().bold().fg(colour)),
        ]));
        lines.push(Line::from(""));
    }
    lines.push(Line::from("attempts:").bold());
    for a in &v.attempts {
        lines.push(Line::from(format!(
            "  {:>9.1} ms  {}{}  {}  sent {} B, got {} B{}",
            a.t_ms,
            a.upstream,
            if a.reused { " (reused)" } else { "" },
            a.outcome,
            a.bytes_sent,
            a.bytes_recv,
            if a.retransmits > 0 { format!(", {} retransmits", a.retransmits) } else { String::new() }
        )));
    }
    lines.push(Line::from("evidence:").bold());
    for e in &v.evidence {
        lines.push(Line::from(vec![
            Span::styled(format!("  {:>9.1} ms ", e.t_ms), Style::new().fg(Color::Cyan)),
            Span::styled(format!("{:<15} ", e.event), Style::new().add_modifier(Modifier::BOLD)),
            Span::raw(e.detail.to_string()),
        ]));
    }
    lines.push(Line::from("next check:").bold());
    lines.push(Line::from(format!("  {}", v.next_check())));
    let block = Block::bordered().title(" verdict detail (Enter/Esc: back) ").border_style(Style::new().fg(Color::Cyan));
    frame.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }).block(block), area);
}

fn draw_footer(frame: &mut Frame, state: &State, area: Rect) {
    let line = match &state.input {
        Input::Filter(t) => Line::from(vec![
            Span::styled(" filter (class cause upstream): ", Style::new().bold()),
            Span::raw(t.clone()),
            Span::raw("█  Enter apply, Esc cancel"),
        ]),
        Input::Search(t) => {
            Line::from(vec![Span::styled(" search: ", Style::new().bold()), Span::raw(t.clone()), Span::raw("█  Enter apply, Esc cancel")])
        }
        Input::Normal => Line::from(" q quit  ↑↓/jk move  Enter detail  Tab focus  p pause  f filter  / search  s sort  ? help").dim(),
    };
    frame.render_widget(Paragraph::new(line), area);
}

fn draw_help(frame: &mut Frame, area: Rect) {
    let w = 60.min(area.width);
    let h = 16.min(area.height);
    let popup = Rect { x: area.x + (area.width - w) / 2, y: area.y + (area.height - h) / 2, width: w, height: h };
    let text = vec![
        Line::from("q, Esc       quit (Esc first closes detail / clears filter)"),
        Line::from("↑ ↓  j k     move the selection"),
        Line::from("PgUp PgDn    move by 10; g G first / last"),
        Line::from("Enter        open / close the verdict detail"),
        Line::from("Tab          switch between verdicts and upstreams"),
        Line::from("             (Enter on an upstream filters verdicts)"),
        Line::from("p            pause the list (recording goes on)"),
        Line::from("f            filter by class, cause or upstream"),
        Line::from("/            search summaries, clients, upstreams"),
        Line::from("s            sort the upstream table"),
        Line::from("?            this help (any key closes it)"),
        Line::from(""),
        Line::from("LOST in red: the kernel or decoder dropped events."),
    ];
    frame.render_widget(Clear, popup);
    frame.render_widget(Paragraph::new(text).block(Block::new().borders(Borders::ALL).title(" help ")), popup);
}
