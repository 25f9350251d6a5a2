//! The live dashboard (ratatui on crossterm). `state` holds what is shown, `draw` renders it;
//! this module only connects them to a real terminal: keys in, frames out, and the terminal
//! restored on quit, panic, SIGTERM and Ctrl-C.
pub mod draw;
pub mod state;

use std::{
    io::{Stdout, stdout},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use ratatui::{
    Terminal,
    backend::CrosstermBackend,
    crossterm::{
        event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
        execute,
        terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode},
    },
};

use crate::{
    engine::{attribute::Verdict, decode::KernelEvent},
    health::{AttachReport, Stats},
    output::Output,
};
use state::{Header, Key, State};

enum Input {
    Key(Key),
    Redraw,
}

pub struct Dashboard {
    terminal: Terminal<CrosstermBackend<Stdout>>,
    pub state: State,
    inputs: mpsc::Receiver<Input>,
    last_draw: Instant,
    dirty: bool,
}

fn restore_terminal() {
    let _ = disable_raw_mode();
    let _ = execute!(stdout(), LeaveAlternateScreen, ratatui::crossterm::cursor::Show);
}

fn map_key(code: KeyCode, mods: KeyModifiers) -> Option<Key> {
    Some(match code {
        KeyCode::Char('c') if mods.contains(KeyModifiers::CONTROL) => Key::CtrlC,
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::Home => Key::Home,
        KeyCode::End => Key::End,
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Tab => Key::Tab,
        KeyCode::Backspace => Key::Backspace,
        _ => return None,
    })
}

impl Dashboard {
    pub fn start(source: &str, boot_offset_ns: i128) -> Result<Self> {
        // Whatever happens, leave the terminal usable.
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
        enable_raw_mode().context("cannot put the terminal in raw mode (is stdout a terminal?)")?;
        execute!(stdout(), EnterAlternateScreen).context("entering the alternate screen")?;
        let terminal = Terminal::new(CrosstermBackend::new(stdout()))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            loop {
                match event::poll(Duration::from_millis(100)) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(_) => return,
                }
                let input = match event::read() {
                    Ok(Event::Key(k)) if k.kind != KeyEventKind::Release => map_key(k.code, k.modifiers).map(Input::Key),
                    Ok(Event::Resize(..)) => Some(Input::Redraw),
                    Ok(_) => None,
                    Err(_) => return,
                };
                if let Some(input) = input
                    && tx.send(input).is_err()
                {
                    return;
                }
            }
        });
        let mut state = State::new(Header { source: source.to_owned(), ..Default::default() });
        state.boot_offset_ns = boot_offset_ns;
        Ok(Dashboard { terminal, state, inputs: rx, last_draw: Instant::now() - Duration::from_secs(1), dirty: true })
    }

    fn redraw(&mut self) -> Result<()> {
        let state = &self.state;
        self.terminal.draw(|f| draw::draw(f, state))?;
        self.last_draw = Instant::now();
        self.dirty = false;
        Ok(())
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

impl Output for Dashboard {
    fn started(&mut self, report: &AttachReport, traced: &[(u32, String)]) {
        self.state.header.attached = report.attached.clone();
        self.state.header.skipped = report.skipped.clone();
        for (pid, comm) in traced {
            self.state.header.gateways.entry(comm.clone()).or_default().push(*pid);
        }
        self.dirty = true;
    }

    fn event(&mut self, ev: &KernelEvent) -> Result<()> {
        self.state.on_event(ev);
        self.dirty = true;
        Ok(())
    }

    fn verdict(&mut self, v: &Verdict) -> Result<()> {
        self.state.on_verdict(v);
        self.dirty = true;
        Ok(())
    }

    fn stats(&mut self, s: &Stats) -> Result<()> {
        self.state.on_stats(s);
        Ok(())
    }

    fn refresh(&mut self, s: &Stats) {
        self.state.on_stats(s);
    }

    fn owns_terminal(&self) -> bool {
        true
    }

    fn finished(&mut self, what: &str) {
        self.state.finished = Some(what.to_owned());
        self.dirty = true;
    }

    fn poll(&mut self, now_ns: u64) -> Result<bool> {
        let mut force = false;
        while let Ok(input) = self.inputs.try_recv() {
            match input {
                Input::Key(k) => self.state.on_key(k),
                Input::Redraw => {
                    let _ = self.terminal.autoresize();
                }
            }
            force = true;
        }
        if self.state.quit {
            return Ok(false);
        }
        self.state.tick(now_ns);
        // Keys redraw at once; data at most 10 times a second.
        if force
            || (self.dirty && self.last_draw.elapsed() >= Duration::from_millis(100))
            || self.last_draw.elapsed() >= Duration::from_secs(1)
        {
            self.redraw()?;
        }
        Ok(true)
    }
}
