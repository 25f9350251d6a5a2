//! The fault lab's upstream: a tiny HTTP/1.1 server that misbehaves on command.
//! `upstrace-lab-upstream --listen ADDR --mode MODE`; prints "ready" once listening.
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
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
    for stream in listener.incoming().flatten() {
        let mode = mode.clone();
        std::thread::spawn(move || serve(stream, &mode));
    }
}

fn bind(addr: &str, backlog: i32) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr)?;
    // std listens with a fixed backlog; re-listen with the requested one.
    unsafe { libc::listen(listener.as_raw_fd(), backlog) };
    Ok(listener)
}

/// Read one request head (up to the blank line). Returns false on EOF.
fn read_request(stream: &mut TcpStream) -> bool {
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

/// `after-N:MODE` answers the first N requests of each connection well, then misbehaves:
/// a fault on a kept-alive connection, after healthy exchanges.
fn split_mode(mode: &str) -> (u32, &str) {
    mode.strip_prefix("after-")
        .and_then(|rest| rest.split_once(':'))
        .and_then(|(n, m)| Some((n.parse().ok()?, m)))
        .unwrap_or((0, mode))
}

fn serve(mut s: TcpStream, mode: &str) {
    let pause = |ms| std::thread::sleep(Duration::from_millis(ms));
    let (healthy_first, fault) = split_mode(mode);
    let mut served = 0u32;
    loop {
        if !read_request(&mut s) {
            return;
        }
        served += 1;
        let mode = if served <= healthy_first { "ok" } else { fault };
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
            "reset-before-headers" => return reset(s),
            "reset-partial-headers" => {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n");
                pause(200);
                return reset(s);
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
            other => {
                eprintln!("upstrace-lab-upstream: unknown mode {other}");
                std::process::exit(2);
            }
        }
    }
}
