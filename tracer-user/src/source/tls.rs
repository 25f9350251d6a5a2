//! Which client-side view upstrace has of each gateway. A gateway that writes its responses
//! in the clear is read at its socket sends; one that encrypts them with a shared OpenSSL is read at
//! `SSL_write`/`SSL_write_ex` in the libssl it maps (one attachment per library file, found
//! through `/proc/PID/maps`, so a reload or an upgrade that maps another libssl is picked up).
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

/// A shared library file as the kernel knows it: the same file mapped by many processes (or
/// reached through several container roots) is one (device, inode).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LibraryFile {
    pub dev: u64,
    pub ino: u64,
    /// The path inside the process's mount namespace, as its maps say.
    pub path: String,
    /// A path upstrace can open for it: through the process's root, so containers work, and
    /// through `map_files` when the file was replaced on disk (an upgrade).
    pub open_path: PathBuf,
}

/// How upstrace reads what a gateway answers its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientView {
    /// Plain writes: HTTP/1.x and cleartext HTTP/2 (h2c).
    Plaintext,
    /// Plain writes, and OpenSSL's plaintext at `SSL_write` (HTTPS, HTTP/1.1 and HTTP/2).
    OpenSsl,
    /// Plain writes, and Go's plaintext at `crypto/tls.(*Conn).Write` (Caddy, Traefik).
    GoTls,
    /// A gateway with TLS built in that upstrace does not read (Envoy's BoringSSL, a Go
    /// binary without its function table): its answers are inferred from upstream failures.
    InferredOnly,
}

impl ClientView {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientView::Plaintext => "plaintext",
            ClientView::OpenSsl => "openssl",
            ClientView::GoTls => "go-tls",
            ClientView::InferredOnly => "inferred only",
        }
    }

    /// Statuses are read (as opposed to inferred).
    pub fn readable(self) -> bool {
        self != ClientView::InferredOnly
    }
}

/// Gateways that carry their own TLS stack instead of a shared libssl.
const BUILT_IN_TLS: [&str; 3] = ["envoy", "caddy", "traefik"];

/// The view of a gateway process, from its name and which TLS probe of it is attached.
pub fn view_of(comm: &str, openssl_attached: bool, go_attached: bool) -> ClientView {
    if openssl_attached {
        ClientView::OpenSsl
    } else if go_attached {
        ClientView::GoTls
    } else if BUILT_IN_TLS.contains(&comm) {
        ClientView::InferredOnly
    } else {
        ClientView::Plaintext
    }
}

/// The libssl files a process maps, from the text of its `/proc/PID/maps`.
pub fn libssl_in_maps(pid: u32, maps: &str) -> Vec<LibraryFile> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode path
        let mut fields = line.split_ascii_whitespace();
        let (Some(range), Some(_perms), Some(_offset), Some(dev), Some(ino)) =
            (fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let path: Vec<&str> = fields.collect();
        let deleted = path.last() == Some(&"(deleted)");
        let path = path.iter().take(path.len() - usize::from(deleted)).copied().collect::<Vec<_>>().join(" ");
        let name = path.rsplit('/').next().unwrap_or("");
        if !name.starts_with("libssl.so") {
            continue;
        }
        let Some((major, minor)) = dev.split_once(':') else { continue };
        let (Ok(major), Ok(minor), Ok(ino)) = (u64::from_str_radix(major, 16), u64::from_str_radix(minor, 16), ino.parse::<u64>()) else {
            continue;
        };
        let dev = major << 8 | minor;
        if ino == 0 || !seen.insert((dev, ino)) {
            continue;
        }
        let open_path = if deleted {
            PathBuf::from(format!("/proc/{pid}/map_files/{range}"))
        } else {
            Path::new(&format!("/proc/{pid}/root")).join(path.trim_start_matches('/'))
        };
        out.push(LibraryFile { dev, ino, path, open_path });
    }
    out
}

/// A process's executable as a file to attach to.
pub fn executable_of(pid: u32) -> Option<LibraryFile> {
    use std::os::unix::fs::MetadataExt;
    let open_path = PathBuf::from(format!("/proc/{pid}/exe"));
    let meta = std::fs::metadata(&open_path).ok()?;
    let path = std::fs::read_link(&open_path).ok()?.display().to_string();
    Some(LibraryFile { dev: meta.dev(), ino: meta.ino(), path, open_path })
}

/// The libssl files a live process maps (none if it is gone or unreadable).
pub fn libssl_of(pid: u32) -> Vec<LibraryFile> {
    std::fs::read_to_string(format!("/proc/{pid}/maps")).map(|m| libssl_in_maps(pid, &m)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a2f000 r--p 00000000 fe:01 1311 /usr/sbin/nginx
7f2b4c200000-7f2b4c21d000 r--p 00000000 fe:01 2622 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f2b4c21d000-7f2b4c27b000 r-xp 0001d000 fe:01 2622 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f2b4c400000-7f2b4c410000 r-xp 00000000 fe:01 2631 /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7f2b4c500000-7f2b4c510000 r-xp 00000000 08:02 77 /opt/app root/lib/libssl.so.1.1 (deleted)
7fff00000000-7fff00021000 rw-p 00000000 00:00 0 [stack]
";

    #[test]
    fn finds_each_libssl_file_once() {
        let libs = libssl_in_maps(42, MAPS);
        assert_eq!(libs.len(), 2, "{libs:#?}");
        assert_eq!((libs[0].dev, libs[0].ino), (0xfe01, 2622));
        assert_eq!(libs[0].path, "/usr/lib/x86_64-linux-gnu/libssl.so.3");
        assert_eq!(libs[0].open_path, PathBuf::from("/proc/42/root/usr/lib/x86_64-linux-gnu/libssl.so.3"));
        // Replaced on disk: reached through map_files, path with a space kept whole.
        assert_eq!(libs[1].path, "/opt/app root/lib/libssl.so.1.1");
        assert_eq!(libs[1].open_path, PathBuf::from("/proc/42/map_files/7f2b4c500000-7f2b4c510000"));
    }

    #[test]
    fn garbage_maps_give_nothing() {
        assert!(libssl_in_maps(1, "").is_empty());
        assert!(libssl_in_maps(1, "x y z\n\u{0}\u{1}\nlibssl.so.3\n").is_empty());
        assert!(libssl_in_maps(1, "a-b r-xp 0 zz:01 12 /lib/libssl.so.3\n").is_empty());
    }
}
