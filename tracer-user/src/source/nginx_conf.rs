//! Whether a running nginx may speak TLS to an upstream, from its configuration files: its
//! OpenSSL reads those answers with read(2), the one hook nginx needs nothing else from
//! (`probes::OnDemand::Reads`). Read once per new gateway process, never on the request path.
use std::path::{Path, PathBuf};

/// nginx's compiled-in configuration file (Debian's, and upstream's default prefix).
const DEFAULT_CONF: &str = "/etc/nginx/nginx.conf";
/// Bounds on what is read: files (includes, globs) and bytes per file.
const MAX_FILES: usize = 256;
const MAX_FILE_BYTES: u64 = 1 << 20;

/// Words that make an upstream connection TLS: an `https://` (or gRPC/uwsgi TLS) address, any
/// `*_ssl_*` directive of a proxy module, or a `*_pass` whose address is a variable (its
/// scheme is known only at request time).
fn speaks_tls(directive: &str, args: &[&str]) -> bool {
    let tls_address = |a: &&str| ["https://", "grpcs://", "suwsgi://"].iter().any(|s| a.starts_with(s));
    args.iter().any(tls_address)
        || ["proxy_ssl_", "grpc_ssl_", "uwsgi_ssl_"].iter().any(|p| directive.starts_with(p))
        || (matches!(directive, "proxy_pass" | "grpc_pass" | "uwsgi_pass") && args.first().is_some_and(|a| a.starts_with('$')))
}

/// The statements of configuration text (`directive arg ...;`, block openers included), with
/// comments and quotes taken off.
fn statements(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut words: Vec<String> = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        for raw in line.split_ascii_whitespace() {
            let mut word = raw.trim_matches(|c| c == '"' || c == '\'').to_string();
            let ends = word.ends_with(';') || word.ends_with('{') || word.ends_with('}');
            word = word.trim_end_matches([';', '{', '}']).trim_matches(|c| c == '"' || c == '\'').to_string();
            if !word.is_empty() {
                words.push(word);
            }
            if ends && !words.is_empty() {
                out.push(std::mem::take(&mut words));
            }
        }
    }
    out
}

/// The files an `include` names: a path, or a glob whose last part has `*` (relative paths are
/// from the main file's directory, as nginx reads them).
fn included(pattern: &str, conf_dir: &Path, root: &Path) -> Vec<PathBuf> {
    let path = conf_dir.join(pattern);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if !name.contains('*') {
        return vec![path];
    }
    let Some(dir) = path.parent() else { return vec![] };
    let (prefix, suffix) = name.split_once('*').unwrap_or((&name, ""));
    let Ok(entries) = std::fs::read_dir(in_root(root, dir)) else { return vec![] };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            (n.starts_with(prefix) && n.ends_with(suffix) && n.len() >= prefix.len() + suffix.len()).then(|| dir.join(n))
        })
        .collect();
    found.sort();
    found
}

/// A path of the gateway's filesystem, as seen from here.
fn in_root(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// Whether the configuration at `conf` (in the filesystem under `root`) may make upstream TLS
/// connections; None when it cannot be read.
pub fn upstream_tls_in(conf: &Path, root: &Path) -> Option<bool> {
    let conf_dir = conf.parent().unwrap_or(Path::new("/")).to_path_buf();
    let mut queue = vec![conf.to_path_buf()];
    let mut read = 0;
    while let Some(file) = queue.pop() {
        read += 1;
        if read > MAX_FILES {
            return None;
        }
        let seen = in_root(root, &file);
        let too_big = std::fs::metadata(&seen).map(|m| m.len() > MAX_FILE_BYTES).unwrap_or(true);
        // The main file must be readable; an include that is not is skipped, as nginx would
        // have refused to start.
        let text = match (too_big, std::fs::read_to_string(&seen)) {
            (false, Ok(t)) => t,
            _ if file == conf => return None,
            _ => continue,
        };
        for s in statements(&text) {
            let (directive, args) = (s[0].as_str(), s[1..].iter().map(String::as_str).collect::<Vec<_>>());
            if directive == "include"
                && let Some(pattern) = args.first()
            {
                queue.extend(included(pattern, &conf_dir, root));
            } else if speaks_tls(directive, &args) {
                return Some(true);
            }
        }
    }
    Some(false)
}

/// The configuration file of a running nginx process (a worker's is its master's): `-c` in the
/// master's title (`nginx: master process /usr/sbin/nginx -c /etc/nginx/nginx.conf`), else the
/// default; relative to its `-p` prefix.
fn conf_of(pid: u32) -> Option<PathBuf> {
    let title = |pid: u32| std::fs::read(format!("/proc/{pid}/cmdline")).ok().map(|b| String::from_utf8_lossy(&b).replace('\0', " "));
    let mut text = title(pid)?;
    if !text.contains("master process") {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let ppid: u32 = status.lines().find_map(|l| l.strip_prefix("PPid:"))?.trim().parse().ok()?;
        text = title(ppid)?;
        if !text.contains("master process") {
            return None;
        }
    }
    let words: Vec<&str> = text.split_ascii_whitespace().collect();
    let after = |flag: &str| words.windows(2).find(|w| w[0] == flag).map(|w| w[1]);
    let conf = PathBuf::from(after("-c").unwrap_or(DEFAULT_CONF));
    Some(match after("-p") {
        Some(prefix) if conf.is_relative() => Path::new(prefix).join(conf),
        _ => conf,
    })
}

/// Whether a running nginx may make upstream TLS connections; None when its configuration
/// cannot be read (the caller then assumes it may).
pub fn upstream_tls(pid: u32) -> Option<bool> {
    let conf = conf_of(pid)?;
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    upstream_tls_in(&conf, &root).or_else(|| upstream_tls_in(&conf, Path::new("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tls_upstreams_through_includes() {
        let dir = std::env::temp_dir().join(format!("upstrace-nginx-conf-{}", std::process::id()));
        let sites = dir.join("sites-enabled");
        std::fs::create_dir_all(&sites).unwrap();
        let main = dir.join("nginx.conf");
        std::fs::write(&main, "events {}\nhttp {\n  # proxy_pass https://commented.out;\n  include sites-enabled/*.conf;\n}\n").unwrap();
        std::fs::write(sites.join("a.conf"), "server { listen 80; location / { proxy_pass http://10.0.0.2:8080; } }\n").unwrap();
        std::fs::write(sites.join("b.conf.disabled"), "server { location / { proxy_pass https://not.included; } }\n").unwrap();
        let root = Path::new("/");
        assert_eq!(upstream_tls_in(&main, root), Some(false));
        std::fs::write(sites.join("c.conf"), "server {\n location / {\n  proxy_pass \"https://api.internal\";\n }\n}\n").unwrap();
        assert_eq!(upstream_tls_in(&main, root), Some(true));
        std::fs::remove_file(sites.join("c.conf")).unwrap();
        // A variable's scheme is known only at request time; a proxy_ssl_ directive says TLS.
        std::fs::write(sites.join("d.conf"), "server { location / { set $u http://x; proxy_pass $u; } }\n").unwrap();
        assert_eq!(upstream_tls_in(&main, root), Some(true));
        std::fs::write(sites.join("d.conf"), "upstream b { server 10.0.0.2:443; }\nserver { proxy_ssl_verify on; }\n").unwrap();
        assert_eq!(upstream_tls_in(&main, root), Some(true));
        // FastCGI and plain proxying only.
        std::fs::write(sites.join("d.conf"), "server { location ~ \\.php$ { fastcgi_pass unix:/run/php/php8.2-fpm.sock; } }\n").unwrap();
        assert_eq!(upstream_tls_in(&main, root), Some(false));
        assert_eq!(upstream_tls_in(&dir.join("missing.conf"), root), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
