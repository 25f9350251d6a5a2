//! The dashboard in a real terminal: `upstrace replay` inside tmux at 80x24, driven with keys
//! as a person would, the screen read back, and the terminal checked sane after it quits.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use upstrace_lab::upstrace_binary;

struct Tmux {
    session: String,
}

impl Tmux {
    fn start(cmd: &str) -> Option<Tmux> {
        if Command::new("tmux").arg("-V").output().is_err() {
            assert!(std::env::var_os("CI").is_none(), "tmux must be installed in CI (cargo xtask setup installs it)");
            eprintln!("skipped: tmux is not installed");
            return None;
        }
        let session = format!("upstrace-test-{}", std::process::id());
        let ok = Command::new("tmux")
            .args(["new-session", "-d", "-s", &session, "-x", "80", "-y", "24", "bash", "--norc", "--noprofile"])
            .env("TERM", "xterm-256color")
            .status()
            .unwrap()
            .success();
        assert!(ok, "tmux new-session failed");
        let t = Tmux { session };
        t.keys(&[cmd, "Enter"]);
        Some(t)
    }

    fn keys(&self, keys: &[&str]) {
        let ok = Command::new("tmux").args(["send-keys", "-t", &self.session]).args(keys).status().unwrap().success();
        assert!(ok);
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux").args(["capture-pane", "-p", "-t", &self.session]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.screen();
            if s.contains(needle) {
                return s;
            }
            assert!(Instant::now() < deadline, "{needle:?} never appeared; screen:\n{s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["kill-session", "-t", &self.session]).status();
    }
}

#[test]
fn replay_dashboard_in_a_real_terminal() {
    let bin = upstrace_binary().expect("upstrace built");
    let trace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/lab-mix.trace.jsonl");
    let cmd =
        format!("clear; {} replay {}; echo EXIT=$?; stty -a | tr ' ' '\\n' | grep -x -- '-\\?icanon'", bin.display(), trace.display());
    let Some(t) = Tmux::start(&cmd) else { return };

    let main = t.wait_for("replay done");
    assert!(main.contains("5xx/s by class") && main.contains("causes") && main.contains("upstreams"), "{main}");
    assert!(main.contains("verdicts 45"), "{main}");
    assert!(main.contains("q quit"), "keys are shown: {main}");

    // Select the second verdict and open it.
    t.keys(&["j", "Enter"]);
    let detail = t.wait_for("verdict detail");
    assert!(detail.contains("attempts:") && detail.contains("evidence:"), "{detail}");

    // Back, then filter by class.
    t.keys(&["Escape"]);
    t.wait_for("verdicts 45");
    t.keys(&["f"]);
    t.wait_for("filter (class cause upstream)");
    t.keys(&["firewall", "Enter"]);
    let filtered = t.wait_for("[filter: firewall]");
    assert!(filtered.contains("firewall/"), "{filtered}");
    assert!(!filtered.contains("network/no-route   "), "only firewall verdicts listed: {filtered}");

    // Help, then quit.
    t.keys(&["?"]);
    t.wait_for("this help");
    t.keys(&["Escape"]);
    t.keys(&["q"]);
    // Wait for stty's line, not just the exit status printed before it.
    let after = t.wait_for("icanon");
    assert!(after.contains("EXIT=0"), "{after}");
    // Raw mode was undone: canonical input is back on.
    assert!(after.lines().any(|l| l.trim() == "icanon"), "terminal left in raw mode:\n{after}");
    assert!(!after.contains("panicked"));
}
