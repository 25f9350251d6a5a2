//! The fault lab's upstream: a tiny HTTP/1.1 server that misbehaves on command.
//! `upstrace-lab-upstream --listen ADDR --mode MODE`; prints "ready" once listening. ADDR is
//! `ip:port`, or `unix:/path` for a unix-socket upstream (left behind on exit, like a crashed
//! server's).
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::{
        fd::AsRawFd,
        unix::{fs::PermissionsExt, net::UnixListener},
    },
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

const USAGE: &str = "usage: upstrace-lab-upstream --listen ADDR --mode MODE [--backlog N]";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let (Some(listen), Some(mode)) = (get("--listen"), get("--mode")) else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    let backlog: i32 = get("--backlog").and_then(|b| b.parse().ok()).unwrap_or(128);
    if let Some(addr) = listen.strip_prefix("udp:") {
        return resolver(addr, &mode);
    }
    let listener = match bind(&listen, backlog) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("upstrace-lab-upstream: cannot listen on {listen}: {e}");
            std::process::exit(1);
        }
    };
    println!("ready");
    let _ = std::io::stdout().flush();
    if mode == "no-accept" {
        // Overloaded: never accept, so the tiny backlog fills up.
        std::thread::sleep(Duration::from_secs(3600));
    }
    match listener {
        Listener::Tcp(l) => accept_loop(l.incoming(), &mode, reset),
        Listener::Unix(l) => accept_loop(l.incoming(), &mode, drop),
    }
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

fn bind(addr: &str, backlog: i32) -> std::io::Result<Listener> {
    // std listens with a fixed backlog; re-listen with the requested one.
    let relisten = |fd| unsafe { libc::listen(fd, backlog) };
    Ok(match addr.strip_prefix("unix:") {
        Some(path) => {
            let _ = std::fs::remove_file(path);
            let l = UnixListener::bind(path)?;
            // The gateway's workers run unprivileged.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
            relisten(l.as_raw_fd());
            Listener::Unix(l)
        }
        None => {
            let l = TcpListener::bind(addr)?;
            relisten(l.as_raw_fd());
            Listener::Tcp(l)
        }
    })
}

/// Serve each connection on its own thread; `abort` ends a connection abruptly (an RST for
/// TCP; unix sockets have none, so there it is a plain close).
fn accept_loop<S, I>(incoming: I, mode: &str, abort: fn(S))
where
    S: Read + Write + Send + 'static,
    I: Iterator<Item = std::io::Result<S>>,
{
    for stream in incoming.flatten() {
        let mode = mode.to_owned();
        std::thread::spawn(move || serve(stream, &mode, abort));
    }
}

/// Read one request head (up to the blank line). Returns false on EOF.
fn read_request(stream: &mut impl Read) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 1 << 20 {
            return false;
        }
    }
    true
}

fn reset(stream: TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
    drop(stream);
}

fn die() -> ! {
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    unreachable!()
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok";
const LONG_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nContent-Type: text/plain\r\n\r\n";

/// Requests served by the whole process, for `every-N:MODE`.
static SERVED: AtomicU64 = AtomicU64::new(0);

/// When a mode misbehaves. `after-N:MODE` answers the first N requests of each connection
/// well, then misbehaves (a fault on a kept-alive connection, after healthy exchanges);
/// `every-N:MODE` misbehaves on every Nth request the process serves and answers the rest
/// well (a gateway under load with a share of failures).
enum Schedule<'a> {
    Always(&'a str),
    AfterPerConnection(u64, &'a str),
    EveryNth(u64, &'a str),
}

impl<'a> Schedule<'a> {
    fn parse(mode: &'a str) -> Self {
        let counted = |prefix: &str| {
            mode.strip_prefix(prefix).and_then(|rest| rest.split_once(':')).and_then(|(n, m)| Some((n.parse::<u64>().ok()?, m)))
        };
        match (counted("after-"), counted("every-")) {
            (Some((n, m)), _) => Schedule::AfterPerConnection(n, m),
            (_, Some((n, m))) if n > 0 => Schedule::EveryNth(n, m),
            _ => Schedule::Always(mode),
        }
    }

    /// The mode for a connection's `served`-th request (from 1).
    fn mode_for(&self, served: u64) -> &'a str {
        match *self {
            Schedule::Always(m) => m,
            Schedule::AfterPerConnection(n, m) => {
                if served <= n {
                    "ok"
                } else {
                    m
                }
            }
            Schedule::EveryNth(n, m) => {
                if (SERVED.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(n) {
                    m
                } else {
                    "ok"
                }
            }
        }
    }
}

/// A plain HTTP server's answer to bytes that are no request line (a TLS ClientHello), as
/// nginx gives it: 400, then close.
const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: close\r\n\r\nbad request\n";

/// Does this look like the start of an HTTP request (`GET /...`): a method of capitals, a space?
fn request_line_start(bytes: &[u8]) -> bool {
    let method = bytes.iter().take_while(|b| b.is_ascii_uppercase()).count();
    method > 0 && bytes.get(method) == Some(&b' ')
}

fn serve<S: Read + Write>(mut s: S, mode: &str, abort: fn(S)) {
    if mode.starts_with("fcgi-") {
        return serve_fastcgi(s, mode);
    }
    let pause = |ms| std::thread::sleep(Duration::from_millis(ms));
    // `plain-http`: a healthy plain HTTP server that answers bytes which are not HTTP (a TLS
    // ClientHello from a gateway told https://) with 400 at once, as real servers do.
    if mode == "plain-http" {
        // Large enough for a whole ClientHello: bytes left unread would turn the close into
        // an RST, which can overtake the answer.
        let mut first = [0u8; 16384];
        match s.read(&mut first) {
            Ok(n) if n > 0 && !request_line_start(&first[..n]) => {
                let _ = s.write_all(BAD_REQUEST);
                return;
            }
            Ok(n) if n > 0 => {}
            _ => return,
        }
        // A request: answer it (and the rest of the connection) as `ok`.
        let _ = s.write_all(OK);
        return serve(s, "ok", abort);
    }
    let schedule = Schedule::parse(mode);
    let mut served = 0u64;
    loop {
        if !read_request(&mut s) {
            return;
        }
        served += 1;
        let mode = schedule.mode_for(served);
        match mode {
            "ok" => {
                if s.write_all(OK).is_err() {
                    return;
                }
                continue;
            }
            // Answer the first request on a connection, then die before the next one.
            "ok-then-crash" => {
                let _ = s.write_all(OK);
                pause(50);
                die();
            }
            "close-before-headers" => return,
            // A TLS server behind http://: the plain request is no ClientHello, and the server
            // answers with a fatal alert record (protocol_version), as OpenSSL does for a
            // record of an unknown version, then closes.
            "tls-alert" => {
                let _ = s.write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 70]);
                return;
            }
            "reset-before-headers" => return abort(s),
            "reset-partial-headers" => {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n");
                pause(200);
                return abort(s);
            }
            "truncated-headers" => {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Ty");
                return;
            }
            "truncated-body" => {
                let _ = s.write_all(LONG_HEAD);
                let _ = s.write_all(&[b'x'; 1000]);
                return;
            }
            "garbage" => {
                let _ = s.write_all(b"this is not http at all\r\n\r\n");
                return;
            }
            "bad-header" => {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nX\x01Bad header: y\r\nContent-Length: 2\r\n\r\nok");
                pause(100);
                return;
            }
            "stall" => {
                pause(30_000);
                return;
            }
            "crash-before-headers" => {
                pause(100);
                die();
            }
            "crash-mid-body" => {
                let _ = s.write_all(LONG_HEAD);
                let _ = s.write_all(&[b'x'; 1000]);
                pause(100);
                die();
            }
            // A valid response whose head is KB kilobytes (a big cookie), on a connection kept
            // open: larger than a gateway's header buffer. `big-head-KB`.
            other if other.strip_prefix("big-head-").and_then(|kb| kb.parse::<usize>().ok()).is_some() => {
                let kb: usize = other["big-head-".len()..].parse().unwrap_or(9);
                let cookie = "c".repeat((kb * 1024).saturating_sub(100));
                let response =
                    format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nSet-Cookie: session={cookie}\r\nContent-Length: 2\r\n\r\nok");
                if s.write_all(response.as_bytes()).is_err() {
                    return;
                }
            }
            // The application's own 5xx, whole: `upstream-503-length`, `-chunked` (both on a
            // connection kept open) or `-close` (close-delimited, then closed). One write, so
            // the gateway's first read holds it all.
            other if own_5xx(other).is_some() => {
                let (status, framing) = own_5xx(other).unwrap();
                let reason = if status == 503 { "Service Unavailable" } else { "Internal Server Error" };
                // Short, so that a chunked answer ends within the 128 bytes the kernel keeps.
                let body = if status == 503 { "maintenance" } else { "app error" };
                let head = format!("HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n");
                let response = match framing {
                    "length" => format!("{head}Content-Length: {}\r\n\r\n{body}", body.len()),
                    "chunked" => format!("{head}Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n", body.len()),
                    _ => format!("{head}Connection: close\r\n\r\n{body}"),
                };
                if s.write_all(response.as_bytes()).is_err() || framing == "close" {
                    return;
                }
            }
            other => {
                eprintln!("upstrace-lab-upstream: unknown mode {other}");
                std::process::exit(2);
            }
        }
    }
}

/// `upstream-STATUS-FRAMING`: a 5xx status and how its body ends (length, chunked, close).
fn own_5xx(mode: &str) -> Option<(u16, &str)> {
    let (status, framing) = mode.strip_prefix("upstream-")?.split_once('-')?;
    let status: u16 = status.parse().ok().filter(|s| (500..600).contains(s))?;
    ["length", "chunked", "close"].contains(&framing).then_some((status, framing))
}

/// A FastCGI record: version 1, type, request id, content (no padding needed for these).
fn fcgi_record(kind: u8, id: u16, content: &[u8]) -> Vec<u8> {
    let len = content.len() as u16;
    let mut r = vec![1, kind, (id >> 8) as u8, id as u8, (len >> 8) as u8, len as u8, 0, 0];
    r.extend_from_slice(content);
    r
}

/// Read one FastCGI request (records up to its empty FCGI_STDIN); its request id, or None at EOF.
fn read_fastcgi_request(stream: &mut impl Read) -> Option<u16> {
    let mut id = 1;
    loop {
        let mut header = [0u8; 8];
        stream.read_exact(&mut header).ok()?;
        let len = u16::from_be_bytes([header[4], header[5]]) as usize + header[6] as usize;
        let mut content = vec![0u8; len];
        stream.read_exact(&mut content).ok()?;
        match header[1] {
            1 => id = u16::from_be_bytes([header[2], header[3]]), // FCGI_BEGIN_REQUEST
            5 if len == 0 => return Some(id),                     // the empty FCGI_STDIN ends it
            _ => {}
        }
    }
}

/// The FastCGI modes (`--listen unix:...` behind nginx's fastcgi_pass): `fcgi-ok`,
/// `fcgi-truncated-headers` (the CGI head cut, then close), `fcgi-stall` (no answer), `fcgi-truncated-body` (a head and
/// part of the body, then close: no FCGI_END_REQUEST either way; the server does not die).
fn serve_fastcgi<S: Read + Write>(mut s: S, mode: &str) {
    const STDOUT: u8 = 6;
    const END_REQUEST: u8 = 3;
    while let Some(id) = read_fastcgi_request(&mut s) {
        let mut out = Vec::new();
        match mode {
            "fcgi-ok" => {
                out.extend(fcgi_record(STDOUT, id, b"Content-type: text/plain\r\n\r\nok"));
                out.extend(fcgi_record(STDOUT, id, b""));
                out.extend(fcgi_record(END_REQUEST, id, &[0; 8]));
            }
            "fcgi-truncated-headers" => out.extend(fcgi_record(STDOUT, id, b"Content-type: text/pl")),
            "fcgi-stall" => {
                std::thread::sleep(Duration::from_secs(30));
                return;
            }
            "fcgi-truncated-body" => {
                let mut content = b"Content-type: text/plain\r\n\r\n".to_vec();
                content.extend_from_slice(&[b'x'; 1000]);
                out.extend(fcgi_record(STDOUT, id, &content));
            }
            other => {
                eprintln!("upstrace-lab-upstream: unknown mode {other}");
                std::process::exit(2);
            }
        }
        if s.write_all(&out).is_err() || mode != "fcgi-ok" {
            return;
        }
    }
}

/// The lab's DNS server (`--listen udp:IP:53 --mode dns-*`): every name is the listening
/// address (`dns-ok`: an A record, an empty answer for other types), or every query gets
/// NXDOMAIN, SERVFAIL or REFUSED, or no answer at all (`dns-silent`). `dns-tcp-*`: every UDP
/// answer is truncated (TC, no records) so that the client asks again over TCP, where nothing
/// listens (`dns-tcp-down`) or NXDOMAIN is answered (`dns-tcp-nxdomain`).
fn resolver(addr: &str, mode: &str) {
    let socket = match std::net::UdpSocket::bind(addr) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("upstrace-lab-upstream: cannot listen on udp:{addr}: {e}");
            std::process::exit(1);
        }
    };
    let ip = match socket.local_addr() {
        Ok(std::net::SocketAddr::V4(a)) => a.ip().octets(),
        _ => [127, 0, 0, 1],
    };
    if let Some(over_tcp) = mode.strip_prefix("dns-tcp-") {
        if over_tcp == "nxdomain" {
            let tcp = match TcpListener::bind(addr) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("upstrace-lab-upstream: cannot listen on tcp:{addr}: {e}");
                    std::process::exit(1);
                }
            };
            std::thread::spawn(move || {
                for conn in tcp.incoming().flatten() {
                    std::thread::spawn(move || answer_over_tcp(conn, 3, ip));
                }
            });
        } else if over_tcp != "down" {
            eprintln!("upstrace-lab-upstream: unknown DNS mode {mode}");
            std::process::exit(2);
        }
        println!("ready");
        let _ = std::io::stdout().flush();
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            if let Some(answer) = dns_answer(&buf[..n], Answer { rcode: 0, ip, truncated: true }) {
                let _ = socket.send_to(&answer, from);
            }
        }
        return;
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    let rcode = match mode {
        "dns-ok" => 0,
        "dns-servfail" => 2,
        "dns-nxdomain" => 3,
        "dns-refused" => 5,
        "dns-silent" => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        other => {
            eprintln!("upstrace-lab-upstream: unknown DNS mode {other}");
            std::process::exit(2);
        }
    };
    let mut buf = [0u8; 1500];
    while let Ok((n, from)) = socket.recv_from(&mut buf) {
        if let Some(answer) = dns_answer(&buf[..n], Answer { rcode, ip, truncated: false }) {
            let _ = socket.send_to(&answer, from);
        }
    }
}

/// DNS over TCP (RFC 7766): each message after its two-byte length; one connection may carry
/// several queries.
fn answer_over_tcp(mut conn: TcpStream, rcode: u8, ip: [u8; 4]) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    loop {
        let mut len = [0u8; 2];
        if conn.read_exact(&mut len).is_err() {
            return;
        }
        let mut query = vec![0u8; u16::from_be_bytes(len) as usize];
        if conn.read_exact(&mut query).is_err() {
            return;
        }
        let Some(answer) = dns_answer(&query, Answer { rcode, ip, truncated: false }) else { return };
        let mut framed = (answer.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&answer);
        if conn.write_all(&framed).is_err() {
            return;
        }
    }
}

/// How to answer a query.
struct Answer {
    rcode: u8,
    ip: [u8; 4],
    /// TC set and no records: the answer did not fit, ask again over TCP.
    truncated: bool,
}

/// The answer to one query: its header and question, then one A record (TTL 1 s) when the
/// code is NOERROR and the question is for A.
fn dns_answer(query: &[u8], Answer { rcode, ip, truncated }: Answer) -> Option<Vec<u8>> {
    let mut end = 12;
    loop {
        let len = *query.get(end)? as usize;
        end += 1 + len;
        if len == 0 {
            break;
        }
    }
    let question = query.get(12..end + 4)?;
    let a_record = rcode == 0 && !truncated && question[question.len() - 4..question.len() - 2] == [0, 1];
    let mut out = query[..2].to_vec();
    // QR, TC when truncated, the query's RD, RA, and the code.
    out.push(0x80 | if truncated { 0x02 } else { 0 } | (query[2] & 0x01));
    out.push(0x80 | rcode);
    out.extend_from_slice(&[0, 1, 0, a_record as u8, 0, 0, 0, 0]);
    out.extend_from_slice(question);
    if a_record {
        out.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4]);
        out.extend_from_slice(&ip);
    }
    Some(out)
}
