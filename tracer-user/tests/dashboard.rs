//! The dashboard without a terminal: state driven by a recorded lab trace and by keys, and
//! frames rendered on ratatui's TestBackend compared with snapshots (80x24 and 160x48).
//! Set UPDATE_SNAPSHOTS=1 to rewrite the snapshots after an intended change.
use std::path::{Path, PathBuf};

use ratatui::{Terminal, backend::TestBackend};
use upstrace::{
    engine::attribute::{Class, Engine},
    health::Stats,
    output::tui::{
        draw,
        state::{Focus, Header, Input, Key, State},
    },
    source::replay,
};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/lab-mix.trace.jsonl")
}

/// A dashboard state fed with every event and verdict of the lab trace, clock fixed at the
/// trace's last event.
fn loaded() -> State {
    let mut state = State::new(Header {
        source: "replay lab-mix".into(),
        attached: vec!["inet_sock_set_state".into(), "kfree_skb".into()],
        skipped: vec![("netif_receive_skb".into(), "test".into())],
        ..Default::default()
    });
    let mut engine = Engine::new();
    let mut last = 0;
    replay::read_events(&fixture(), |ev| {
        state.on_event(&ev);
        for v in engine.handle(&ev) {
            state.on_verdict(&v);
        }
        last = ev.ts_ns;
        Ok(())
    })
    .unwrap();
    for v in engine.flush() {
        state.on_verdict(&v);
    }
    state.tick(last);
    state
}

fn render(state: &State, w: u16, h: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
    terminal.draw(|f| draw::draw(f, state)).unwrap();
    let buf = terminal.backend().buffer();
    (0..h)
        .map(|y| (0..w).map(|x| buf[(x, y)].symbol().to_string()).collect::<String>().trim_end().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

fn snapshot(name: &str, text: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots").join(format!("{name}.txt"));
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() || !path.exists() {
        std::fs::write(&path, text).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, want, "snapshot {name} differs (UPDATE_SNAPSHOTS=1 to accept):\n{text}");
}

#[test]
fn main_view_80x24_and_160x48() {
    let state = loaded();
    let small = render(&state, 80, 24);
    assert!(small.contains("upstrace") && small.contains("5xx/s by class") && small.contains("causes"));
    assert!(small.contains("verdicts") && small.contains("upstreams"));
    assert!(small.contains("q quit"), "keys on screen");
    snapshot("main-80x24", &small);
    let big = render(&state, 160, 48);
    assert!(big.contains("firewall/rejected") && big.contains("network/no-route"));
    snapshot("main-160x48", &big);
}

#[test]
fn detail_view_shows_attempts_evidence_and_next_check() {
    let mut state = loaded();
    state.filter = "firewall dropped".into();
    state.on_key(Key::Enter);
    assert!(state.detail);
    let text = render(&state, 160, 48);
    assert!(text.contains("verdict detail"));
    assert!(text.contains("attempts:") && text.contains("evidence:") && text.contains("next check:"));
    assert!(text.contains("NETFILTER_DROP"), "the drop is in the evidence:\n{text}");
    assert!(text.contains("nft list ruleset"), "what to check next for a firewall drop");
    snapshot("detail-160x48", &text);
    let small = render(&state, 80, 24);
    assert!(small.contains("verdict detail"));
}

#[test]
fn keys_move_filter_search_pause_and_quit() {
    let mut state = loaded();
    let total = state.visible().len();
    assert!(total > 20, "{total}");
    state.on_key(Key::Char('j'));
    state.on_key(Key::Down);
    assert_eq!(state.selected, 2);
    state.on_key(Key::Char('k'));
    assert_eq!(state.selected, 1);
    state.on_key(Key::End);
    assert_eq!(state.selected, total - 1);

    // f: type a filter, Enter applies it.
    for c in "f".chars().chain("network".chars()) {
        state.on_key(Key::Char(c));
    }
    assert_eq!(state.input, Input::Filter("network".into()));
    state.on_key(Key::Enter);
    assert!(!state.visible().is_empty());
    assert!(state.visible().iter().all(|v| v.class == Class::Network));
    assert!(render(&state, 80, 24).contains("[filter: network]"));

    // Esc clears the filter, then /search narrows by text.
    state.on_key(Key::Esc);
    assert_eq!(state.visible().len(), total);
    state.on_key(Key::Char('/'));
    for c in "blackhole".chars() {
        state.on_key(Key::Char(c));
    }
    state.on_key(Key::Enter);
    assert!(state.visible().iter().all(|v| v.summary.contains("blackhole")));
    state.on_key(Key::Esc);

    // p freezes the list while verdicts keep coming.
    state.on_key(Key::Char('p'));
    let shown = state.visible().len();
    let mut extra = state.verdicts[0].clone();
    extra.ts_ns += 1;
    state.on_verdict(&extra);
    assert_eq!(state.visible().len(), shown, "paused list does not move");
    assert_eq!(state.verdicts.len(), shown + 1, "but the data is kept");
    assert!(render(&state, 80, 24).contains("PAUSED"));
    state.on_key(Key::Char('p'));
    assert_eq!(state.visible().len(), shown + 1);

    // Tab to the upstream table, s sorts, Enter filters verdicts by that upstream.
    state.on_key(Key::Tab);
    assert_eq!(state.focus, Focus::Upstreams);
    state.on_key(Key::Char('s'));
    state.on_key(Key::Enter);
    assert_eq!(state.focus, Focus::Verdicts);
    assert!(!state.filter.is_empty());

    // ? shows help, any key closes it; q quits.
    state.on_key(Key::Char('?'));
    assert!(render(&state, 80, 24).contains("help"));
    state.on_key(Key::Char('x'));
    assert!(!state.help);
    state.on_key(Key::Char('q'));
    assert!(state.quit);
}

#[test]
fn lost_events_are_impossible_to_miss() {
    let mut state = loaded();
    assert!(render(&state, 80, 24).contains("lost 0"));
    state.on_stats(&Stats { lost_total: 12, lost: vec![("ringbuf_full", 12), ("decode_errors", 0)], ..Stats::default() });
    let text = render(&state, 80, 24);
    assert!(text.contains("LOST 12 events"), "{text}");
    let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
    terminal.draw(|f| draw::draw(f, &state)).unwrap();
    let buf = terminal.backend().buffer();
    let row: Vec<_> = (0..80).map(|x| buf[(x, 1)].clone()).collect();
    assert!(row.iter().any(|c| c.bg == ratatui::style::Color::Red), "shown on red");
}

#[test]
fn evictions_are_shown_apart_from_losses() {
    let mut state = loaded();
    let mut stats = Stats { lost: vec![("ringbuf_full", 0)], ..Stats::default() };
    stats.evicted.closed_sockets = 300;
    stats.engine.attempts_evicted = 20;
    state.on_stats(&stats);
    let text = render(&state, 80, 24);
    assert!(text.contains("lost 0") && !text.contains("LOST"), "evictions are not lost events: {text}");
    assert!(text.contains("evicted 320"), "{text}");
}

#[test]
fn history_counts_5xx_per_second_by_class() {
    let state = loaded();
    let total: u64 = state.history.iter().map(|(_, c)| c.iter().sum::<u64>()).sum();
    assert_eq!(total as usize, state.verdicts.len());
    assert!(state.causes.keys().any(|k| k == "firewall/dropped"));
}

#[test]
fn detail_view_puts_the_gateways_words_beside_the_kernels() {
    use upstrace::gateway_log::{self, Agreement, Claim, GatewaySaid, MatchKey};
    let mut state = State::new(Header::default());
    let mut engine = Engine::new();
    let mut verdicts = Vec::new();
    replay::read_events(&fixture(), |ev| {
        verdicts.extend(engine.handle(&ev));
        Ok(())
    })
    .unwrap();
    verdicts.extend(engine.flush());
    let mut v = verdicts.into_iter().find(|v| v.class == Class::Firewall).expect("a firewall verdict");
    let said = GatewaySaid {
        source: "/var/log/nginx/error.log".into(),
        line: "upstream timed out (110: Connection timed out) while connecting to upstream".into(),
        matched_by: vec![MatchKey::Time, MatchKey::Pid, MatchKey::Client],
        says: Some(Claim::ConnectTimeout),
        agreement: Agreement::Unknown,
    };
    gateway_log::apply(&mut v, said.clone());
    assert_eq!(v.gateway_said.as_ref().map(|s| s.agreement), Some(Agreement::Agrees));
    state.on_verdict(&v);
    state.tick(v.ts_ns);
    state.on_key(Key::Enter);
    let text = render(&state, 160, 48);
    assert!(text.contains(&format!("{} said: upstream timed out", v.gateway.comm)), "{text}");
    assert!(text.contains("the kernel saw: firewall/") && text.contains("agrees"), "{text}");
    // The same words about a refusal disagree with a firewall drop: said in the view too.
    let mut refused = v.clone();
    gateway_log::apply(&mut refused, GatewaySaid { says: Some(Claim::Refused), ..said });
    let mut state = State::new(Header::default());
    state.on_verdict(&refused);
    state.tick(refused.ts_ns);
    state.on_key(Key::Enter);
    assert!(render(&state, 160, 48).contains("DISAGREES"));
}
