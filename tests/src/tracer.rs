//! The one way the harness runs `upstrace`: start it with `--json`, wait until it says it is
//! tracing, collect its output lines and stderr, stop it. Used by the tests, the fault matrix
//! and `cargo xtask soak` and `bench`.
use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

pub struct Tracer {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Tracer {
    /// Start `upstrace --json <args>` and wait until it says it is tracing.
    pub fn start(args: &[&str]) -> Result<Self> {
        Self::start_keeping(args, |_| true)
    }

    /// As `start`, but only output lines whose raw text `keep` accepts are parsed and kept: in
    /// a storm thousands of lines a second come through, and a harness that parses them all
    /// takes CPU from what it measures.
    pub fn start_keeping(args: &[&str], keep: fn(&str) -> bool) -> Result<Self> {
        let bin = crate::upstrace_binary()?;
        Self::start_via(&[bin.to_str().context("binary path is not UTF-8")?], args, keep)
    }

    /// As `start_keeping`, with the command given whole: a wrapper and the upstrace binary
    /// (`setpriv ... -- /path/upstrace`), e.g. to run it as another user with given capabilities.
    pub fn start_via(program: &[&str], args: &[&str], keep: fn(&str) -> bool) -> Result<Self> {
        let (first, rest) = program.split_first().context("no program")?;
        let mut cmd = Command::new(first);
        cmd.args(rest);
        let mut child = cmd
            .arg("--json")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", program.join(" ")))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let l = lines.clone();
        let r1 = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if !keep(&line) {
                    continue;
                }
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    l.lock().unwrap().push(v);
                }
            }
        });
        let e = stderr.clone();
        let r2 = std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.contains("upstrace: tracing") {
                    let _ = ready_tx.send(());
                }
                let mut e = e.lock().unwrap();
                e.push_str(&line);
                e.push('\n');
            }
        });
        let mut tracer = Tracer { child, lines, stderr, readers: vec![r1, r2] };
        if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = tracer.child.kill();
            let _ = tracer.child.wait();
            bail!("upstrace did not start: {}", tracer.stderr());
        }
        Ok(tracer)
    }

    /// The upstrace process's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Everything printed so far.
    pub fn lines(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    /// Wait until some printed line satisfies `pred`, up to `timeout`.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.lines.lock().unwrap().iter().find(|v| pred(v)) {
                return Some(v.clone());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill without warning (kill -9), as a crash or an OOM kill would.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }

    /// SIGINT, wait for a clean exit, and return (exit code, all lines).
    pub fn stop(mut self) -> Result<(i32, Vec<Value>)> {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(s) = self.child.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("upstrace did not exit within 15 s of SIGINT");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Ok((status.code().unwrap_or(-1), self.lines()))
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Events of one kind from a list of output lines.
pub fn events<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|v| v["type"] == "event" && v["kind"] == kind).collect()
}
