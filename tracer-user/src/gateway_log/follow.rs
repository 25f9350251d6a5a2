//! Following one log file from an offset: only the bytes written since the last look, read
//! when a verdict wants them, in bounded amounts. Rotation (a new file under the name, or the
//! same file truncated) starts over at the new file's beginning; a line still being written is
//! kept until its end arrives.
use std::{
    fs::File,
    io::{Read, Seek, SeekFrom},
    os::unix::fs::MetadataExt,
    path::PathBuf,
};

/// The most read in one look: a flood of log lines costs this much, and the older bytes are
/// skipped (counted).
pub const MAX_READ: u64 = 1 << 20;
/// A line longer than this is no gateway line (cut off and dropped, counted).
pub const MAX_LINE: usize = 16 * 1024;
/// How many of the last bytes read are checked again at the next look.
const SEEN_TAIL: usize = 1024;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReadCounts {
    /// Bytes skipped because more than `MAX_READ` came between two looks.
    pub bytes_skipped: u64,
    /// Lines dropped for their length.
    pub lines_too_long: u64,
    /// Times the file was found rotated or truncated.
    pub rotations: u64,
}

pub struct Follower {
    /// Where to look for the file under its name (`/proc/PID/root/...` or `/proc/PID/fd/N`):
    /// a rotation shows as another inode there.
    reopen: PathBuf,
    file: File,
    inode: (u64, u64),
    offset: u64,
    /// The start of a line whose end has not been written yet.
    partial: Vec<u8>,
    /// The rest of an over-long line is being dropped.
    dropping: bool,
    /// The last bytes read (up to 1 KiB: a whole line or more), which must still be there at the
    /// next look: a file truncated and written again past the offset in between (copytruncate)
    /// is told by them.
    seen_tail: Vec<u8>,
    pub counts: ReadCounts,
}

impl Follower {
    /// Follow `file` (found at `reopen`) from its current end: what was there before is
    /// history, not this run's.
    pub fn at_end(reopen: PathBuf, file: File) -> std::io::Result<Self> {
        let meta = file.metadata()?;
        Ok(Self {
            reopen,
            inode: (meta.dev(), meta.ino()),
            offset: meta.len(),
            file,
            partial: Vec::new(),
            dropping: false,
            seen_tail: Vec::new(),
            counts: ReadCounts::default(),
        })
    }

    pub fn inode(&self) -> (u64, u64) {
        self.inode
    }

    /// Another process has the file open: look for rotations through it once the process
    /// that showed the way is gone (`/proc/PID/root` of a dead pid shows nothing).
    pub fn also_at(&mut self, reopen: PathBuf) {
        if !self.reopen.exists() {
            self.reopen = reopen;
        }
    }

    /// The complete lines written since the last look (without their newlines).
    pub fn new_lines(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        // Truncated in place (copytruncate): shorter than what was read, or other bytes where
        // the last ones read were.
        if self.file.metadata().is_ok_and(|m| m.len() < self.offset) || !self.tail_still_there() {
            self.restart();
        }
        self.read_tail(&mut lines);
        // Rotated: the name now holds another file (logrotate, then the gateway reopened).
        // The old file's tail was read above.
        let renamed = std::fs::metadata(&self.reopen).ok().filter(|m| (m.dev(), m.ino()) != self.inode);
        if let Some(meta) = renamed
            && let Ok(file) = File::open(&self.reopen)
        {
            self.file = file;
            self.inode = (meta.dev(), meta.ino());
            self.restart();
            self.read_tail(&mut lines);
        }
        lines
    }

    fn tail_still_there(&mut self) -> bool {
        if self.seen_tail.is_empty() {
            return true;
        }
        let mut now = vec![0; self.seen_tail.len()];
        let at = self.offset - self.seen_tail.len() as u64;
        self.file.seek(SeekFrom::Start(at)).is_ok() && self.file.read_exact(&mut now).is_ok() && now == self.seen_tail
    }

    fn restart(&mut self) {
        self.seen_tail.clear();
        self.offset = 0;
        self.partial.clear();
        self.dropping = false;
        self.counts.rotations += 1;
    }

    fn read_tail(&mut self, lines: &mut Vec<String>) {
        let Ok(len) = self.file.metadata().map(|m| m.len()) else { return };
        if len <= self.offset {
            return;
        }
        let mut from = self.offset;
        if len - from > MAX_READ {
            // A flood: only the newest bytes can belong to the verdicts being judged.
            self.counts.bytes_skipped += len - MAX_READ - from;
            from = len - MAX_READ;
            self.partial.clear();
            // The first bytes read are then the rest of a line: not a line.
            self.dropping = true;
        }
        if self.file.seek(SeekFrom::Start(from)).is_err() {
            return;
        }
        let mut buf = Vec::with_capacity((len - from) as usize);
        if (&mut self.file).take(len - from).read_to_end(&mut buf).is_err() {
            return;
        }
        self.offset = from + buf.len() as u64;
        self.seen_tail = buf[buf.len().saturating_sub(SEEN_TAIL)..].to_vec();
        self.split(&buf, lines);
    }

    /// Cut bytes into lines, carrying a line still open to the next look.
    fn split(&mut self, buf: &[u8], lines: &mut Vec<String>) {
        let mut rest = buf;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let (piece, after) = rest.split_at(nl);
            rest = &after[1..];
            if self.dropping {
                self.dropping = false;
                self.partial.clear();
                continue;
            }
            if self.partial.len() + piece.len() > MAX_LINE {
                self.counts.lines_too_long += 1;
                self.partial.clear();
                continue;
            }
            self.partial.extend_from_slice(piece);
            let line = String::from_utf8_lossy(&self.partial).trim_end_matches('\r').to_owned();
            self.partial.clear();
            if !line.is_empty() {
                lines.push(line);
            }
        }
        if self.dropping {
            return;
        }
        if self.partial.len() + rest.len() > MAX_LINE {
            self.counts.lines_too_long += 1;
            self.partial.clear();
            self.dropping = true;
        } else {
            self.partial.extend_from_slice(rest);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("upstrace-follow-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("error.log")
    }

    fn append(path: &PathBuf, text: &[u8]) {
        std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap().write_all(text).unwrap();
    }

    fn follower(path: &PathBuf) -> Follower {
        Follower::at_end(path.clone(), File::open(path).unwrap()).unwrap()
    }

    #[test]
    fn reads_only_new_complete_lines() {
        let path = temp("new");
        append(&path, b"old line before upstrace\n");
        let mut f = follower(&path);
        assert!(f.new_lines().is_empty());
        append(&path, b"one\ntw");
        assert_eq!(f.new_lines(), ["one"]);
        append(&path, b"o\r\n\nthree\n");
        assert_eq!(f.new_lines(), ["two", "three"], "a line cut at a read is whole at the next");
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn rotated_and_truncated_files_start_over() {
        let path = temp("rotate");
        append(&path, b"");
        let mut f = follower(&path);
        append(&path, b"a\nlast of the old file, cut");
        assert_eq!(f.new_lines(), ["a"]);
        // logrotate: rename, and the gateway writes a new file under the name.
        std::fs::rename(&path, path.with_extension("log.1")).unwrap();
        append(&path.with_extension("log.1"), b" short\n");
        append(&path, b"b\n");
        assert_eq!(f.new_lines(), ["last of the old file, cut short", "b"]);
        assert_eq!(f.counts.rotations, 1);
        // copytruncate: the same file, emptied.
        std::fs::OpenOptions::new().write(true).truncate(true).open(&path).unwrap();
        append(&path, b"c\n");
        assert_eq!(f.new_lines(), ["c"]);
        assert_eq!(f.counts.rotations, 2);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_flood_is_read_in_bounded_amounts_and_long_lines_are_dropped() {
        let path = temp("flood");
        append(&path, b"");
        let mut f = follower(&path);
        let line = b"2026/11/28 16:50:08 [error] 1#1: *5 flood\n";
        let n = (2 * MAX_READ as usize) / line.len();
        append(&path, &line.repeat(n));
        let lines = f.new_lines();
        assert!(lines.len() < n && lines.len() as u64 >= MAX_READ / line.len() as u64 - 1, "{}", lines.len());
        assert!(lines.iter().all(|l| l.as_bytes() == &line[..line.len() - 1]), "no piece of a line passes for one");
        assert!(f.counts.bytes_skipped > 0);
        append(&path, &vec![b'x'; MAX_LINE + 10]);
        assert!(f.new_lines().is_empty());
        append(&path, b"rest of the long line\nnext\n");
        assert_eq!(f.new_lines(), ["next"]);
        assert_eq!(f.counts.lines_too_long, 1);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
