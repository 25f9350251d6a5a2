//! Root integration tests for the kernel side: real eBPF programs, real nginx in its own
//! network namespace, real faults from the lab upstream. Each checks upstrace's own output.
use std::time::Duration;

use serde_json::Value;
use upstrace_lab::{
    lab::{GatewayKind, Lab},
    require_root,
    tracer::{Tracer, events},
};

fn setup() {
    // SAFETY: set once, before any lab or tracer thread starts.
    unsafe { std::env::set_var("UPSTRACE_LAB_UPSTREAM", env!("CARGO_BIN_EXE_upstrace-lab-upstream")) };
}

fn start(lab: &mut Lab, mode: Option<&str>) -> Tracer {
    if let Some(mode) = mode {
        lab.start_upstream(mode).expect("upstream");
    }
    let pid = lab.start_gateway(GatewayKind::Nginx).expect("nginx");
    Tracer::start(&["--pid", &pid.to_string()]).expect("upstrace")
}

fn same_sock<'a>(lines: &'a [Value], sock: &Value) -> Vec<&'a Value> {
    lines.iter().filter(|v| v["type"] == "event" && &v["sock"] == sock).collect()
}

fn assert_status_502(lines: &[Value]) {
    let statuses = events(lines, "http_status");
    assert!(
        statuses.iter().any(|s| s["value"] == 502 && s["line"].as_str().unwrap_or("").starts_with("HTTP/1.1 502")),
        "no 502 status line event in {statuses:?}"
    );
}

#[test]
#[cfg_attr(not_root, ignore = "needs root: loads eBPF programs and creates network namespaces")]
fn refused_connect_is_one_rst_event_with_tuple_and_worker_owner() {
    require_root();
    setup();
    let mut lab = Lab::new().unwrap();
    let tracer = start(&mut lab, None);
    let (status, _) = lab.request("/").unwrap();
    assert_eq!(status, 502, "nginx answers a refused upstream with 502");
    tracer.wait_for(Duration::from_secs(5), |v| v["kind"] == "http_status");
    let workers = lab.gateway.as_ref().unwrap().workers();
    let master = lab.gateway.as_ref().unwrap().pid;
    let (code, lines) = tracer.stop().unwrap();
    assert_eq!(code, 0);

    let upstream = lab.upstream_addr();
    let rst = events(&lines, "reset_received")
        .into_iter()
        .find(|e| e["new_state"] == "SYN_SENT" && e["dst"] == upstream.as_str())
        .unwrap_or_else(|| panic!("no RST to the SYN for {upstream}: {lines:#?}"));
    let pid = rst["pid"].as_u64().unwrap() as u32;
    assert!(workers.contains(&pid), "owner {pid} is not an nginx worker {workers:?}");
    assert_ne!(pid, master);
    assert_eq!(rst["comm"], "nginx");
    let src: std::net::SocketAddr = rst["src"].as_str().unwrap().parse().unwrap();
    assert_eq!(src.ip().to_string(), lab.gw_ip, "source address is the gateway's veth");
    assert_ne!(src.port(), 0, "ephemeral source port known");

    // The RST says it all: the CLOSE and the ECONNREFUSED that follow it are not sent.
    let conn = same_sock(&lines, &rst["sock"]);
    let kinds: Vec<&str> = conn.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["connect_start", "reset_received"], "{conn:#?}");
    assert_eq!(conn[0]["dst"], upstream.as_str());
    assert_status_502(&lines);
    let verdict = lines.iter().find(|l| l["type"] == "verdict").expect("a verdict");
    assert_eq!(verdict["cause"], "refused", "{verdict:#}");
}

#[test]
#[cfg_attr(not_root, ignore = "needs root: loads eBPF programs and creates network namespaces")]
fn reset_before_response_is_rst_received_on_established() {
    require_root();
    setup();
    let mut lab = Lab::new().unwrap();
    let tracer = start(&mut lab, Some("reset-before-headers"));
    let (status, _) = lab.request("/").unwrap();
    assert_eq!(status, 502);
    tracer.wait_for(Duration::from_secs(5), |v| v["kind"] == "http_status");
    let (_, lines) = tracer.stop().unwrap();

    let rst = events(&lines, "reset_received")
        .into_iter()
        .find(|e| e["dst"] == lab.upstream_addr().as_str())
        .unwrap_or_else(|| panic!("no reset_received: {lines:#?}"));
    assert_eq!(rst["new_state"], "ESTABLISHED");
    assert!(rst["bytes_sent"].as_u64().unwrap() > 0, "request was sent before the reset");
    assert_eq!(rst["bytes_recv"], 0, "no response byte before the reset");
    let conn = same_sock(&lines, &rst["sock"]);
    // The first request's first 8 bytes, "GET / HT": its method, the rest masked.
    assert!(conn.iter().any(|e| e["kind"] == "request_sent" && e["head"] == "GET * **"), "{conn:#?}");
    assert!(conn.iter().any(|e| e["kind"] == "recv_end" && e["value"] == -104), "nginx's read saw ECONNRESET: {conn:#?}");
    assert_status_502(&lines);
}

#[test]
#[cfg_attr(not_root, ignore = "needs root: loads eBPF programs and creates network namespaces")]
fn upstream_closing_before_answering_is_fin_with_zero_response_bytes() {
    require_root();
    setup();
    let mut lab = Lab::new().unwrap();
    let tracer = start(&mut lab, Some("close-before-headers"));
    let (status, _) = lab.request("/").unwrap();
    assert_eq!(status, 502);
    tracer.wait_for(Duration::from_secs(5), |v| v["kind"] == "http_status");
    let (_, lines) = tracer.stop().unwrap();

    let fin = events(&lines, "state_change")
        .into_iter()
        .find(|e| e["old_state"] == "ESTABLISHED" && e["new_state"] == "CLOSE_WAIT")
        .unwrap_or_else(|| panic!("no ESTABLISHED -> CLOSE_WAIT: {lines:#?}"));
    assert_eq!(fin["dst"], lab.upstream_addr().as_str());
    assert!(fin["bytes_sent"].as_u64().unwrap() > 0);
    assert_eq!(fin["bytes_recv"], 0);
    let conn = same_sock(&lines, &fin["sock"]);
    assert!(conn.iter().any(|e| e["kind"] == "recv_end" && e["value"] == 0), "EOF read: {conn:#?}");
    assert_status_502(&lines);
}

#[test]
#[cfg_attr(not_root, ignore = "needs root: loads eBPF programs and creates network namespaces")]
fn healthy_keepalive_exchanges_stay_in_the_kernel() {
    require_root();
    healthy_traffic_ships_nothing(true);
}

#[test]
#[cfg_attr(not_root, ignore = "needs root: loads eBPF programs and creates network namespaces")]
fn healthy_connections_per_request_stay_in_the_kernel() {
    require_root();
    healthy_traffic_ships_nothing(false);
}

/// Healthy requests through nginx, with a keep-alive pool or with nginx's default (a new
/// upstream connection per request): the connections' whole stories stay in the kernel.
fn healthy_traffic_ships_nothing(keepalive: bool) {
    setup();
    let mut lab = Lab::new().unwrap();
    lab.upstream_keepalive = keepalive;
    let tracer = start(&mut lab, Some("ok"));
    const REQUESTS: usize = 12;
    for _ in 0..REQUESTS {
        assert_eq!(lab.request("/").unwrap().0, 200);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_hook_set(&tracer.stderr());
    let (_, lines) = tracer.stop().unwrap();
    let socket_events: Vec<&Value> = lines.iter().filter(|v| v["type"] == "event" && v["sock"] != "0x0" && v["kind"] != "listen").collect();
    assert!(socket_events.is_empty(), "healthy traffic ships no socket event: {socket_events:#?}");
    let stats = lines.iter().rev().find(|v| v["type"] == "stats").expect("final stats line");
    assert_eq!(stats["lost_total"], 0);
    assert_eq!(stats["exchanges_shipped_early"], 0);
    assert_eq!(stats["evicted"]["closed_sockets"], 0, "{stats}");
    assert_on_demand(stats, &[]);
}

/// The hooks every socket call and state change runs are attached as tp_btf on this kernel
/// (their classic forms are fallbacks only), no syscall entry is hooked at start, and close(2)
/// waits for a unix-socket upstream: the start line says so.
fn assert_hook_set(stderr: &str) {
    let attached =
        stderr.lines().find(|l| l.contains("attached ") && l.contains(" programs: ")).unwrap_or_else(|| panic!("no start line: {stderr}"));
    let (now, wanted) = attached.split_once("attached when wanted: ").unwrap_or((attached, ""));
    let now: Vec<&str> = now.split_once(" programs: ").map_or("", |(_, p)| p).split([',', ';']).map(str::trim).collect();
    for program in ["inet_sock_set_state_btf", "sock_send_length_btf", "sock_recv_length_btf", "sys_exit_connect"] {
        assert!(now.contains(&program), "{program} attached at start: {attached}");
    }
    for program in ["inet_sock_set_state", "sock_send_length", "sock_recv_length", "sys_enter_connect", "sys_enter_close"] {
        assert!(!now.contains(&program), "{program} not attached at start: {attached}");
    }
    assert!(wanted.contains("sys_enter_close"), "close(2) attached when wanted: {attached}");
}

/// Which on-demand hooks the traffic had attached (the stats line's `on_demand_attached`): no
/// per-packet program for healthy traffic (the socket hooks read each call's buffer
/// themselves: no syscall hook on the I/O path), and no close(2) hook without a unix-socket
/// upstream.
fn assert_on_demand(stats: &Value, expected: &[&str]) {
    let attached: Vec<&str> =
        stats["on_demand_attached"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    assert_eq!(attached, expected, "on-demand hooks attached: {stats}");
}

#[test]
#[cfg_attr(not_root, ignore = "needs root: loads eBPF programs and creates network namespaces")]
fn healthy_fastcgi_exchanges_stay_in_the_kernel() {
    require_root();
    setup();
    // Real php-fpm behind nginx's fastcgi_pass: a new unix-socket connection per request, each
    // response ended by FCGI_END_REQUEST.
    let mut lab = Lab::new().unwrap();
    lab.start_php(upstrace_lab::lab::PhpMode::Ok).expect("php-fpm");
    let tracer = start(&mut lab, None);
    // The first unix-socket connection comes before the close(2) hook is attached (on demand,
    // once one is seen): its story is shipped as it happens. Every later one stays in the kernel.
    assert_eq!(lab.request("/").unwrap().0, 200);
    std::thread::sleep(Duration::from_millis(300));
    const REQUESTS: usize = 12;
    for _ in 0..REQUESTS {
        assert_eq!(lab.request("/").unwrap().0, 200);
    }
    std::thread::sleep(Duration::from_millis(500));
    let (_, lines) = tracer.stop().unwrap();
    let shipped: Vec<&Value> = lines
        .iter()
        .filter(|v| {
            v["type"] == "event"
                && ["connect_syscall", "request_sent", "response_start", "recv_end", "state_change"]
                    .contains(&v["kind"].as_str().unwrap_or(""))
        })
        .collect();
    let connections: std::collections::BTreeSet<&str> = shipped.iter().filter_map(|v| v["sock"].as_str()).collect();
    assert!(connections.len() <= 1, "healthy FastCGI ships no socket event after the first connection: {shipped:#?}");
    let stats = lines.iter().rev().find(|v| v["type"] == "stats").expect("final stats line");
    assert_eq!(stats["lost_total"], 0);
    // nginx reads php-fpm's answers with recv(2): php-fpm's own reads run no program. The
    // close(2) hook is attached once a unix-socket upstream is seen, and only then (the TCP
    // rows above run without it).
    assert_on_demand(stats, &["sys_enter_close"]);
}

/// Three good exchanges on one kept-alive connection, then a fault on the fourth: the kernel
/// ships the held fourth exchange (with its own times), and nothing of the connection's opening
/// or of the three healthy exchanges; upstrace explains the 5xx.
fn fault_after_healthy_exchanges(fault: &str, status: u16, cause: &str) {
    setup();
    let mut lab = Lab::new().unwrap();
    let tracer = start(&mut lab, Some(&format!("after-3:{fault}")));
    for _ in 0..3 {
        assert_eq!(lab.request("/").unwrap().0, 200);
    }
    assert_eq!(lab.request("/").unwrap().0, status, "{}", lab.gateway.as_ref().unwrap().log());
    let verdict = tracer.wait_for(Duration::from_secs(8), |v| v["type"] == "verdict");
    let (_, lines) = tracer.stop().unwrap();
    let verdict = verdict.unwrap_or_else(|| panic!("no verdict: {lines:#?}"));
    assert_eq!(verdict["status"], status);
    assert_eq!(verdict["cause"], cause, "{verdict:#}");

    let connects = events(&lines, "connect_start");
    assert!(connects.is_empty(), "a reused connection's opening is not shipped: {connects:#?}");
    let requests = events(&lines, "request_sent");
    assert_eq!(requests.len(), 1, "the failed fourth exchange alone, not the three healthy ones: {requests:#?}");
    let held = requests[0];
    assert!(held["bytes_recv"].as_u64().unwrap() >= 3 * 60, "the fourth request follows three responses: {held}");
    // Shipped late, stamped with the time the request was really sent.
    let status_line = events(&lines, "http_status").into_iter().find(|e| e["value"] == status).expect("status event");
    let (sent, answered) = (held["ts_ns"].as_u64().unwrap(), status_line["ts_ns"].as_u64().unwrap());
    assert!(sent < answered, "request at {sent}, status at {answered}");
    if fault == "stall" {
        assert!(answered - sent >= 1_500_000_000, "the 504 came after nginx's 2 s read timeout: {sent} -> {answered}");
    }
}

#[test]
#[cfg_attr(not_root, ignore = "needs root: loads eBPF programs and creates network namespaces")]
fn bad_header_after_healthy_exchanges_is_explained() {
    require_root();
    fault_after_healthy_exchanges("bad-header", 502, "invalid-response");
}

#[test]
#[cfg_attr(not_root, ignore = "needs root: loads eBPF programs and creates network namespaces")]
fn stall_after_healthy_exchanges_is_explained() {
    require_root();
    fault_after_healthy_exchanges("stall", 504, "stalled");
}

#[test]
#[cfg_attr(not_root, ignore = "needs root: loads eBPF programs and creates network namespaces")]
fn unix_socket_upstream_is_followed_on_its_socket() {
    require_root();
    setup();
    let mut lab = Lab::new().unwrap();
    lab.unix_upstream = true;
    let tracer = start(&mut lab, Some("ok"));
    assert_eq!(lab.request("/").unwrap().0, 200);
    // A new server that closes before answering (not a failed reuse, which nginx would retry).
    lab.start_upstream("close-before-headers").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(lab.request("/").unwrap().0, 502, "{}", lab.gateway.as_ref().unwrap().log());
    let verdict = tracer.wait_for(Duration::from_secs(5), |v| v["type"] == "verdict");
    let (_, lines) = tracer.stop().unwrap();
    let verdict = verdict.unwrap_or_else(|| panic!("no verdict: {lines:#?}"));

    let path = lab.unix_socket_path().display().to_string();
    let connects: Vec<_> =
        events(&lines, "connect_syscall").into_iter().filter(|e| e["path"] == path.as_str() && e["value"] == 0).collect();
    assert_eq!(connects.len(), 2, "one connection per server: {lines:#?}");
    assert!(connects.iter().all(|c| c["sock"] != "0x0"), "connected unix sockets are known to the kernel side: {connects:#?}");
    // Their I/O is seen on their sockets (a freed socket's address may come back, hence the
    // time bounds).
    let ts = |e: &Value| e["ts_ns"].as_u64().unwrap();
    let on = |c: &Value, until: u64| -> Vec<&Value> {
        same_sock(&lines, &c["sock"]).into_iter().filter(|e| ts(e) >= ts(c) && ts(e) < until).collect()
    };
    let first = on(connects[0], ts(connects[1]));
    let response = first.iter().find(|e| e["kind"] == "response_start").unwrap_or_else(|| panic!("{first:#?}"));
    assert!(response["head"].as_str().unwrap_or("").starts_with("HTTP/1.1 200"), "{response:#}");
    assert!(first.iter().any(|e| e["kind"] == "request_sent"), "{first:#?}");
    let second = on(connects[1], u64::MAX);
    let kinds: Vec<&str> = second.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    // The gateway's close(2) that follows is shipped too (HTTP over a unix socket has no end
    // marker that would let the kernel drop it).
    assert_eq!(kinds[..3], ["connect_syscall", "request_sent", "recv_end"], "{second:#?}");
    assert!(kinds[3..].iter().all(|k| *k == "state_change"), "{second:#?}");
    assert_eq!(second[2]["value"], 0, "nginx read EOF");
    assert_eq!(second[2]["bytes_recv"], 0);
    assert_status_502(&lines);

    assert_eq!(verdict["upstream"], format!("unix:{path}"), "{verdict:#}");
    assert_eq!(verdict["class"], "upstream", "{verdict:#}");
    assert_eq!(verdict["cause"], "closed-early", "{verdict:#}");
    let evidence = verdict["evidence"].to_string();
    assert!(evidence.contains("recv_end") && evidence.contains(&format!("unix:{path}")), "{verdict:#}");
}

#[test]
#[cfg_attr(not_root, ignore = "needs root: loads eBPF programs and creates network namespaces")]
fn workers_forked_after_attach_are_followed() {
    require_root();
    setup();
    let mut lab = Lab::new().unwrap();
    let tracer = start(&mut lab, None);
    let old_workers = lab.gateway.as_ref().unwrap().workers();
    // A reload makes the master fork fresh workers and retire the old ones.
    unsafe { libc::kill(lab.gateway.as_ref().unwrap().pid as i32, libc::SIGHUP) };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let new_workers = loop {
        let now: Vec<u32> = lab.gateway.as_ref().unwrap().workers();
        if !now.is_empty() && now.iter().all(|w| !old_workers.contains(w)) {
            break now;
        }
        assert!(std::time::Instant::now() < deadline, "nginx did not reload");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(lab.request("/").unwrap().0, 502);
    let err = tracer
        .wait_for(Duration::from_secs(5), |v| v["kind"] == "reset_received" && v["new_state"] == "SYN_SENT")
        .expect("refusal seen from a worker forked after attach");
    assert!(new_workers.contains(&(err["pid"].as_u64().unwrap() as u32)));
    let (_, lines) = tracer.stop().unwrap();
    assert!(events(&lines, "process_fork").iter().any(|f| new_workers.contains(&(f["aux"].as_u64().unwrap() as u32))));
}

#[test]
#[cfg_attr(not_root, ignore = "needs root: loads eBPF programs and creates network namespaces")]
fn a_restarted_gateway_is_followed_by_name() {
    require_root();
    setup();
    let mut lab = Lab::new().unwrap();
    // Started before any nginx of this lab exists: it waits, then picks gateways up by name.
    let tracer = Tracer::start(&["--comm", "nginx", "--wait"]).expect("upstrace");
    let first = lab.start_gateway(GatewayKind::Nginx).unwrap();
    let first_workers = lab.gateway.as_ref().unwrap().workers();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(lab.request("/").unwrap().0, 502);
    tracer
        .wait_for(Duration::from_secs(5), |v| {
            v["type"] == "verdict" && first_workers.contains(&(v["gateway"]["pid"].as_u64().unwrap_or(0) as u32))
        })
        .expect("verdict from the first nginx");
    // Kill it and start a new one: new pids, same name.
    lab.stop_gateway();
    let second = lab.start_gateway(GatewayKind::Nginx).unwrap();
    assert_ne!(first, second);
    let workers = lab.gateway.as_ref().unwrap().workers();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(lab.request("/").unwrap().0, 502);
    let v = tracer
        .wait_for(Duration::from_secs(5), |v| {
            v["type"] == "verdict" && workers.contains(&(v["gateway"]["pid"].as_u64().unwrap_or(0) as u32))
        })
        .expect("verdict from the restarted nginx's worker");
    assert_eq!(v["cause"], "refused");
    let (code, lines) = tracer.stop().unwrap();
    assert_eq!(code, 0);
    // Other nginx instances on the machine may be traced too (by name): count ours only.
    let ours = |v: &&serde_json::Value| {
        let pid = v["gateway"]["pid"].as_u64().unwrap_or(0) as u32;
        first_workers.contains(&pid) || workers.contains(&pid)
    };
    let verdicts: Vec<_> = lines.iter().filter(|l| l["type"] == "verdict").filter(ours).collect();
    assert_eq!(verdicts.len(), 2, "one verdict per 502, nothing stale: {verdicts:#?}");
}

#[test]
#[cfg_attr(not_root, ignore = "needs root: loads eBPF programs and creates network namespaces")]
fn a_status_line_is_read_at_its_socket_send_not_at_a_file_write() {
    require_root();
    // A traced process writes a 5xx status line to a file, then, over a second later, sends a
    // byte and then a 503 status line on a client socket (fd 3, one end of a loopback connection
    // of this test, like a gateway's accepted connection). Status lines are read at the socket
    // send itself: the file's line is never taken for the socket's, the 503 is reported once,
    // and nothing waits for a send that never comes.
    use std::os::{fd::AsRawFd, unix::process::CommandExt};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    let accepted_fd = accepted.as_raw_fd();
    let dir = std::env::temp_dir().join(format!("upstrace-expired-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = std::process::Command::new("bash");
    cmd.arg("-c").arg(format!(
        // Bounded wait (10 s) for the tracer to be attached.
        "for i in $(seq 200); do [ -e {go} ] && break; sleep 0.05; done; \
         printf 'HTTP/1.1 502 Bad Gateway\\r\\n' > {file}; sleep 1.3; printf x >&3; sleep 0.1; \
         printf 'HTTP/1.1 503 Service Unavailable\\r\\n' >&3; sleep 0.3",
        go = dir.join("go").display(),
        file = dir.join("not-a-socket").display()
    ));
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::dup2(accepted_fd, 3);
            Ok(())
        })
    };
    let mut writer = cmd.spawn().unwrap();
    let tracer = Tracer::start(&["--pid", &writer.id().to_string(), "--stats-interval", "1"]).expect("upstrace");
    std::fs::write(dir.join("go"), "").unwrap();
    assert!(writer.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(300));
    let (_, lines) = tracer.stop().unwrap();
    drop((client, accepted));
    let _ = std::fs::remove_dir_all(&dir);
    let statuses = events(&lines, "http_status");
    assert_eq!(statuses.len(), 1, "{lines:#?}");
    assert_eq!(statuses[0]["value"], 503, "{:#?}", statuses[0]);
    let stats = lines.iter().rev().find(|v| v["type"] == "stats").expect("final stats line");
    assert_eq!(stats["status_lines_expired"], 0, "{stats}");
}

/// How a test thread moves bytes through a socket: one syscall per shape, each of which the
/// socket hooks must read the buffer of (from the registers the call entered the kernel with).
#[derive(Clone, Copy, Debug)]
enum Call {
    ReadWrite,
    Vector,
    SendRecv,
    Msg,
}

impl Call {
    fn send(self, fd: i32, bytes: &[u8]) -> isize {
        let half = bytes.len() / 2;
        let mut iov = [
            libc::iovec { iov_base: bytes.as_ptr() as *mut _, iov_len: half },
            libc::iovec { iov_base: bytes[half..].as_ptr() as *mut _, iov_len: bytes.len() - half },
        ];
        // SAFETY: the buffers and iovecs outlive the calls; fd is an open socket of this test.
        unsafe {
            match self {
                Call::ReadWrite => libc::write(fd, bytes.as_ptr().cast(), bytes.len()),
                Call::Vector => libc::writev(fd, iov.as_ptr(), 2),
                Call::SendRecv => libc::send(fd, bytes.as_ptr().cast(), bytes.len(), 0),
                Call::Msg => libc::sendmsg(fd, &msghdr_of(&mut iov), 0),
            }
        }
    }

    fn recv(self, fd: i32, buf: &mut [u8]) -> isize {
        let mut iov = [libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() }];
        // SAFETY: as for `send`.
        unsafe {
            match self {
                Call::ReadWrite => libc::read(fd, buf.as_mut_ptr().cast(), buf.len()),
                Call::Vector => libc::readv(fd, iov.as_ptr(), 1),
                Call::SendRecv => libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0),
                Call::Msg => libc::recvmsg(fd, &mut msghdr_of(&mut iov), 0),
            }
        }
    }
}

/// A message header over `iov` (no address, no control data).
fn msghdr_of(iov: &mut [libc::iovec]) -> libc::msghdr {
    // SAFETY: all-zero is a valid msghdr (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len();
    msg
}

#[test]
#[cfg_attr(not_root, ignore = "needs root: loads eBPF programs")]
fn every_socket_call_shape_is_read_at_the_socket_hooks() {
    require_root();
    // This test's own process is traced. Its client side connects to its server side (a
    // thread) over loopback, once per call shape: the request and the server's 503 are sent
    // with that shape, and the client reads the 503 with it. Every 503 the server sends is a
    // status line written to a client; every 503 the client reads is an upstream's answer whose
    // head must reach userspace (a 5xx is never held in the kernel).
    use std::os::fd::AsRawFd;
    const SHAPES: [Call; 4] = [Call::ReadWrite, Call::Vector, Call::SendRecv, Call::Msg];
    const RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let tracer = Tracer::start(&["--pid", &std::process::id().to_string()]).expect("upstrace");
    let server = std::thread::spawn(move || {
        for shape in SHAPES {
            let (conn, _) = listener.accept().unwrap();
            let mut request = [0u8; 256];
            assert!(shape.recv(conn.as_raw_fd(), &mut request) > 0, "{shape:?}: request read");
            assert_eq!(shape.send(conn.as_raw_fd(), RESPONSE), RESPONSE.len() as isize, "{shape:?}: response sent");
        }
    });
    for shape in SHAPES {
        let conn = std::net::TcpStream::connect(addr).unwrap();
        let request = format!("GET /{shape:?} HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(shape.send(conn.as_raw_fd(), request.as_bytes()), request.len() as isize, "{shape:?}: request sent");
        let mut response = [0u8; 256];
        assert_eq!(shape.recv(conn.as_raw_fd(), &mut response), RESPONSE.len() as isize, "{shape:?}: response read");
    }
    server.join().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (_, lines) = tracer.stop().unwrap();
    let statuses = events(&lines, "http_status");
    assert_eq!(statuses.len(), SHAPES.len(), "a status per send shape: {statuses:#?}");
    assert!(statuses.iter().all(|s| s["value"] == 503), "{statuses:#?}");
    let heads: Vec<&str> = events(&lines, "response_start").iter().filter_map(|e| e["head"].as_str()).collect();
    assert_eq!(heads.len(), SHAPES.len(), "a response head per receive shape: {lines:#?}");
    assert!(heads.iter().all(|h| h.starts_with("HTTP/1.1 503")), "{heads:#?}");
}
