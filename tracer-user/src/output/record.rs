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
    clock,
    engine::{attribute::Verdict, decode::KernelEvent},
    health::Stats,
    output::{
        Output,
        sink::{EventLine, VerdictLine},
    },
    trace_format::{FORMAT_NAME, FORMAT_VERSION},
};

pub struct Recorder {
    path: PathBuf,
    out: Option<BufWriter<File>>,
    boot_offset_ns: i128,
    pub failed: Option<String>,
    pub written: u64,
    /// Rotate when the file grows past this many bytes: FILE becomes FILE.1 (the previous
    /// FILE.1 is dropped) and a fresh FILE starts with its own header.
    pub max_bytes: Option<u64>,
    bytes: u64,
    pub rotations: u64,
}

/// The trace's name inside a `record_dir`.
pub const DIR_TRACE_NAME: &str = "upstrace.jsonl";

/// Where a trace goes when it is rotated: FILE.1.
fn rotated(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.1", path.display()))
}

fn uname() -> (String, String) {
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_owned()).unwrap_or_default();
    (read("/proc/sys/kernel/hostname"), read("/proc/sys/kernel/osrelease"))
}

/// A trace holds client addresses and upstream response heads: only its owner may read it,
/// whatever the umask, also when an older file of that name was readable by others.
fn create_private(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    // Only a regular file: `--record /dev/null` must not change /dev/null for everyone.
    if file.metadata()?.is_file() {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

/// A directory for traces: what is missing of it is made private (0700) whatever the umask.
/// One that exists keeps its mode (`record_dir = "/tmp"` must not lock everyone out of /tmp);
/// if others may look into it, one line says so (the traces in it are 0600 all the same).
pub fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    let missing: Vec<PathBuf> = dir.ancestors().take_while(|d| !d.as_os_str().is_empty() && !d.exists()).map(Path::to_owned).collect();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create trace directory {}", dir.display()))?;
    for d in &missing {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make trace directory {} private", d.display()))?;
    }
    let mode = std::fs::metadata(dir).with_context(|| format!("trace directory {}", dir.display()))?.permissions().mode();
    if missing.is_empty() && mode & 0o077 != 0 {
        eprintln!(
            "upstrace: warning: trace directory {} is open to others (mode {:o}); the traces in it are 0600",
            dir.display(),
            mode & 0o777
        );
    }
    Ok(())
}

impl Recorder {
    /// Record into `dir/upstrace.jsonl`, rotating past `max_bytes`. The trace of a previous run
    /// (the service restarted) is rotated to `.1` first instead of being overwritten.
    pub fn create_in_dir(dir: &Path, boot_offset_ns: i128, max_bytes: u64) -> Result<Self> {
        create_private_dir(dir)?;
        let path = dir.join(DIR_TRACE_NAME);
        if path.exists() {
            let _ = std::fs::rename(&path, rotated(&path));
        }
        let mut rec = Self::create(&path, boot_offset_ns)?;
        rec.max_bytes = Some(max_bytes);
        Ok(rec)
    }

    pub fn create(path: &Path, boot_offset_ns: i128) -> Result<Self> {
        let mut rec = Recorder {
            path: path.to_owned(),
            out: None,
            boot_offset_ns,
            failed: None,
            written: 0,
            max_bytes: None,
            bytes: 0,
            rotations: 0,
        };
        rec.open()?;
        Ok(rec)
    }

    fn open(&mut self) -> Result<()> {
        let path = self.path.clone();
        let file = create_private(&path).with_context(|| format!("cannot create trace file {}", path.display()))?;
        self.out = Some(BufWriter::with_capacity(256 * 1024, file));
        self.bytes = 0;
        let boot_offset_ns = self.boot_offset_ns;
        let rec = self;
        let (host, kernel) = uname();
        let header = json!({
            "type": "header",
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "upstrace": env!("CARGO_PKG_VERSION"),
            "host": host,
            "kernel": kernel,
            "host_netns": crate::source::discover::host_netns(),
            "boot_offset_ns": boot_offset_ns.to_string(),
            "started": clock::rfc3339(clock::monotonic_ns() as i128 + boot_offset_ns),
        });
        rec.line(&header);
        rec.push();
        if let Some(e) = &rec.failed {
            anyhow::bail!("cannot write trace file {}: {e}", path.display());
        }
        Ok(())
    }

    fn rotate(&mut self) {
        if let Some(mut out) = self.out.take() {
            let _ = out.flush();
        }
        let _ = std::fs::rename(&self.path, rotated(&self.path));
        self.rotations += 1;
        if let Err(e) = self.open() {
            self.fail(std::io::Error::other(format!("{e:#}")));
        }
    }

    fn line(&mut self, value: &impl serde::Serialize) {
        let Some(out) = self.out.as_mut() else { return };
        let text = match serde_json::to_vec(value) {
            Ok(t) => t,
            Err(e) => return self.fail(std::io::Error::other(e)),
        };
        self.bytes += text.len() as u64 + 1;
        let result = out.write_all(&text).and_then(|_| out.write_all(b"\n"));
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

    fn write_event(&mut self, ev: &KernelEvent) {
        if self.out.is_some() {
            self.line(&EventLine::new(ev, self.boot_offset_ns));
        }
    }

    fn write_verdict(&mut self, v: &Verdict) {
        if self.out.is_some() {
            self.line(&VerdictLine::new(v, self.boot_offset_ns));
        }
    }

    /// End of a batch: push it to the file (and rotate if it grew past the cap).
    fn push(&mut self) {
        if let Some(out) = self.out.as_mut()
            && let Err(e) = out.flush()
        {
            self.fail(e);
            return;
        }
        if self.max_bytes.is_some_and(|m| self.bytes > m) && self.out.is_some() {
            self.rotate();
        }
    }
}

/// A failing disk stops the recording, never the tracing: write errors are kept and shown in
/// the stats, not returned.
impl Output for Recorder {
    fn event(&mut self, ev: &KernelEvent) -> Result<()> {
        self.write_event(ev);
        Ok(())
    }

    fn verdict(&mut self, v: &Verdict) -> Result<()> {
        self.write_verdict(v);
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.push();
        Ok(())
    }

    fn contribute(&self, s: &mut Stats) {
        s.recorded_lines = Some(self.written);
        s.record_error = self.failed.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_past_the_size_cap_and_each_file_has_a_header() {
        let dir = std::env::temp_dir().join(format!("upstrace-rotate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.jsonl");
        let mut rec = Recorder::create(&path, 0).unwrap();
        rec.max_bytes = Some(4096);
        let ev = KernelEvent::listen_snapshot(1, 2, "x", "127.0.0.1:80".parse().unwrap());
        for _ in 0..200 {
            rec.write_event(&ev);
            rec.push();
        }
        assert!(rec.rotations >= 1);
        for p in [path.clone(), dir.join("t.jsonl.1")] {
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(text.lines().next().unwrap().contains("\"upstrace-trace\""), "{}", p.display());
            assert!(text.len() < 4096 + 1024);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn traces_and_their_directory_are_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let base = std::env::temp_dir().join(format!("upstrace-private-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        // SAFETY: umask is process-wide; this test sets a permissive one and puts it back, and
        // no other test here creates files with a mode that depends on it.
        let old = unsafe { libc::umask(0) };
        std::fs::create_dir_all(&base).unwrap();
        // A readable file of that name already there stays no readable file.
        let file = base.join("t.jsonl");
        std::fs::write(&file, "old").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let rec = Recorder::create(&file, 0).unwrap();
        let dir = base.join("a/b");
        let mut in_dir = Recorder::create_in_dir(&dir, 0, 4096).unwrap();
        let ev = KernelEvent::listen_snapshot(1, 2, "x", "127.0.0.1:80".parse().unwrap());
        for _ in 0..200 {
            in_dir.write_event(&ev);
            in_dir.push();
        }
        // A restart keeps the previous run's trace as .1.
        drop(in_dir);
        let again = Recorder::create_in_dir(&dir, 0, 1 << 20).unwrap();
        unsafe { libc::umask(old) };
        assert_eq!(mode(&file), 0o600);
        assert_eq!((mode(&dir), mode(&base.join("a"))), (0o700, 0o700), "every directory made");
        // A directory that was there keeps its mode.
        let shared = base.join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
        drop(Recorder::create_in_dir(&shared, 0, 4096).unwrap());
        assert_eq!((mode(&shared), mode(&shared.join("upstrace.jsonl"))), (0o755, 0o600));
        assert!(again.rotations == 0 && dir.join("upstrace.jsonl.1").exists());
        for p in [dir.join("upstrace.jsonl"), dir.join("upstrace.jsonl.1")] {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
        drop(rec);
        // What is not a regular file keeps its mode (`--record /dev/null`): shown on a private
        // null device node, so a regression cannot change the system's /dev/null.
        let null = base.join("null");
        let c_null = std::ffi::CString::new(null.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string; makes a character device node (1, 3) in our own directory.
        let made = unsafe { libc::mknod(c_null.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) } == 0;
        if made {
            std::fs::set_permissions(&null, std::fs::Permissions::from_mode(0o666)).unwrap();
            drop(Recorder::create(&null, 0).unwrap());
            assert_eq!(mode(&null), 0o666);
        } else {
            println!("not checked for device files: mknod needs root");
        }
        std::fs::remove_dir_all(&base).unwrap();
    }
}
