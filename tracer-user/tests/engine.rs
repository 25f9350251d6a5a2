//! The attribution engine on event streams: pure, deterministic, no kernel needed.
use upstrace::{
    engine::attribute::{Cause, Class, Engine, SETTLE_NS, Verdict},
    engine::decode::{KernelEvent, Kind, TcpState},
    pipeline::Pipeline,
};

const MS: u64 = 1_000_000;
const UP: &str = "10.0.0.2:8081";
const GW_TID: u32 = 200;

fn ev(kind: Kind, ts_ms: u64, sock: u64) -> KernelEvent {
    KernelEvent {
        kind,
        ts_ns: 1_000_000 * MS + ts_ms * MS,
        pid: GW_TID,
        tid: GW_TID,
        comm: "nginx".into(),
        netns: 1,
        cgroup: 1,
        sock,
        src: Some("10.0.0.1:40000".parse().unwrap()),
        dst: Some(UP.parse().unwrap()),
        path: None,
        old_state: None,
        new_state: None,
        value: 0,
        bytes_sent: 0,
        bytes_recv: 0,
        aux: 0,
        line: None,
        reason: None,
        stream: None,
        tls: false,
        head: None,
        socket_file: None,
        dns: None,
    }
}

fn state(ts: u64, sock: u64, old: &str, new: &str) -> KernelEvent {
    let mut e = ev(Kind::StateChange, ts, sock);
    let named = |name: &str| TcpState::ALL.into_iter().find(|s| s.name() == name);
    e.old_state = named(old);
    e.new_state = named(new);
    e
}

fn with(mut e: KernelEvent, f: impl FnOnce(&mut KernelEvent)) -> KernelEvent {
    f(&mut e);
    e
}

fn status(ts: u64, code: i64) -> KernelEvent {
    with(ev(Kind::HttpStatus, ts, 0xc1), |e| {
        e.value = code;
        e.dst = Some("127.0.0.1:5555".parse().unwrap());
        e.line = Some(format!("HTTP/1.1 {code} X"));
    })
}

fn connect(ts: u64, sock: u64) -> Vec<KernelEvent> {
    vec![
        with(ev(Kind::ConnectStart, ts, sock), |e| e.src = Some("10.0.0.1:0".parse().unwrap())),
        state(ts, sock, "SYN_SENT", "ESTABLISHED"),
        with(ev(Kind::RequestSent, ts + 1, sock), |e| {
            e.value = 80;
            e.bytes_sent = 80;
        }),
    ]
}

fn refused(ts: u64, sock: u64) -> Vec<KernelEvent> {
    vec![
        ev(Kind::ConnectStart, ts, sock),
        with(ev(Kind::ResetReceived, ts, sock), |e| e.new_state = Some(TcpState::SynSent)),
        state(ts, sock, "SYN_SENT", "CLOSE"),
        with(ev(Kind::SockError, ts, sock), |e| e.value = 111),
    ]
}

/// Run events through a fresh engine, then let the clock pass the settle time.
fn judge(events: &[KernelEvent]) -> Vec<Verdict> {
    let mut engine = Engine::new();
    let mut out = Vec::new();
    for e in events {
        out.extend(engine.handle(e));
    }
    let last = events.iter().map(|e| e.ts_ns).max().unwrap_or(0);
    out.extend(engine.advance(last + SETTLE_NS + 1000 * MS));
    out
}

fn one(events: &[KernelEvent]) -> Verdict {
    let v = judge(events);
    assert_eq!(v.len(), 1, "exactly one verdict per 5xx: {v:#?}");
    v.into_iter().next().unwrap()
}

fn listen_and_die(ts_listen: u64, ts_die: u64, signal: i64) -> Vec<KernelEvent> {
    vec![
        with(ev(Kind::Listen, ts_listen, 0x99), |e| {
            e.pid = 777;
            e.tid = 777;
            e.comm = "app".into();
            e.src = Some("0.0.0.0:8081".parse().unwrap());
            e.dst = None;
        }),
        with(ev(Kind::ProcessExit, ts_die, 0), |e| {
            e.pid = 777;
            e.tid = 777;
            e.comm = "app".into();
            e.value = signal;
        }),
    ]
}

#[test]
fn refused_connect_is_upstream_refused_with_evidence() {
    let mut events = refused(10, 0xa1);
    events.push(status(11, 502));
    let v = one(&events);
    assert_eq!((v.class, v.cause.as_str()), (Class::Upstream, "refused"));
    assert_eq!(v.upstream, UP);
    assert_eq!(v.client, "127.0.0.1:5555");
    assert_eq!(v.status, Some(502));
    assert!(v.evidence.iter().any(|e| e.event == "reset_received" && e.t_ms < 0.0));
    assert!(v.evidence.iter().any(|e| e.event == "http_status" && e.t_ms == 0.0));
    assert_eq!(v.attempts.len(), 1);
    assert!(v.attempts[0].outcome.contains("refused"));
}

#[test]
fn no_verdict_before_the_settle_time_and_none_for_success() {
    let mut engine = Engine::new();
    let mut events = connect(0, 0xa1);
    events.push(with(ev(Kind::ResponseStart, 5, 0xa1), |e| e.bytes_recv = 100));
    for e in &events {
        assert!(engine.handle(e).is_empty());
    }
    assert!(engine.advance(events[0].ts_ns + 10_000 * MS).is_empty(), "successes give no verdict");
    for e in refused(20_000, 0xa2) {
        engine.handle(&e);
    }
    let s = status(20_001, 502);
    assert!(engine.handle(&s).is_empty(), "waits for the story to settle");
    assert_eq!(engine.advance(s.ts_ns + SETTLE_NS).len(), 1);
}

#[test]
fn refused_after_the_listener_was_killed_is_a_crash() {
    let mut events = listen_and_die(0, 500, 9);
    events.extend(refused(900, 0xa1));
    events.push(status(901, 502));
    let v = one(&events);
    assert_eq!((v.class, v.cause.as_str()), (Class::Upstream, "crashed"));
    assert!(v.summary.contains("777") && v.summary.contains("SIGKILL"), "{}", v.summary);
}

#[test]
fn refused_after_a_clean_stop_is_refused_not_crashed() {
    let mut events = listen_and_die(0, 500, 0); // exit code 0
    events.extend(refused(900, 0xa1));
    events.push(status(901, 502));
    let v = one(&events);
    assert_eq!(v.cause.as_str(), "refused");
    assert!(v.summary.contains("777"), "names the process that stopped listening: {}", v.summary);
}

#[test]
fn death_during_the_request_is_a_crash() {
    let mut events = listen_and_die(0, 0, 0);
    events.truncate(1);
    events.extend(connect(100, 0xa1));
    events.extend(listen_and_die(0, 200, 9).into_iter().skip(1));
    events.push(with(state(200, 0xa1, "ESTABLISHED", "CLOSE_WAIT"), |e| e.bytes_sent = 80));
    events.push(with(ev(Kind::RecvEnd, 200, 0xa1), |e| e.bytes_sent = 80));
    events.push(status(201, 502));
    let v = one(&events);
    assert_eq!((v.class, v.cause.as_str()), (Class::Upstream, "crashed"));
    assert!(v.evidence.iter().any(|e| e.event == "process_exit"));
}

#[test]
fn reset_and_early_close_on_an_established_connection() {
    let mut events = connect(0, 0xa1);
    events.push(with(ev(Kind::ResetReceived, 5, 0xa1), |e| e.new_state = Some(TcpState::Established)));
    events.push(status(6, 502));
    assert_eq!(one(&events).cause.as_str(), "reset");

    let mut events = connect(0, 0xa1);
    events.push(state(5, 0xa1, "ESTABLISHED", "CLOSE_WAIT"));
    events.push(ev(Kind::RecvEnd, 5, 0xa1));
    events.push(status(6, 502));
    let v = one(&events);
    assert_eq!(v.cause.as_str(), "closed-early");
    assert!(v.summary.contains("before sending any response byte"), "{}", v.summary);
}

#[test]
fn garbage_and_bad_headers_are_invalid_responses() {
    for (head, why) in [("this is not http\\r\\n", "not an HTTP response"), ("HTTP/1.1 200 OK\\r\\nX\\x01Bad: y\\r\\n", "invalid header")] {
        let mut events = connect(0, 0xa1);
        events.push(with(ev(Kind::ResponseStart, 3, 0xa1), |e| {
            e.value = 20;
            e.bytes_recv = 20;
            e.head = Some(head.into());
        }));
        events.push(state(4, 0xa1, "ESTABLISHED", "CLOSE_WAIT"));
        events.push(status(5, 502));
        let v = one(&events);
        assert_eq!((v.class, v.cause.as_str()), (Class::Upstream, "invalid-response"), "{head}");
        assert!(v.summary.contains(why), "{}", v.summary);
    }
    // A valid start cut short in the headers is an early close, not an invalid response.
    let mut events = connect(0, 0xa1);
    events.push(with(ev(Kind::ResponseStart, 3, 0xa1), |e| {
        e.bytes_recv = 27;
        e.head = Some("HTTP/1.1 200 OK\\r\\nContent-Ty".into());
    }));
    events.push(with(state(4, 0xa1, "ESTABLISHED", "CLOSE_WAIT"), |e| e.bytes_recv = 27));
    events.push(status(5, 502));
    let v = one(&events);
    assert_eq!(v.cause.as_str(), "closed-early");
    assert!(v.summary.contains("middle of the response headers"), "{}", v.summary);
}

#[test]
fn stall_and_loss_before_a_timeout() {
    let mut events = connect(0, 0xa1);
    events.push(state(2000, 0xa1, "ESTABLISHED", "FIN_WAIT1"));
    events.push(status(2000, 504));
    let v = one(&events);
    assert_eq!((v.class, v.cause.as_str()), (Class::Upstream, "stalled"));

    let mut events = connect(0, 0xa1);
    events.push(with(ev(Kind::Retransmit, 300, 0xa1), |e| e.value = 1));
    events.push(state(2000, 0xa1, "ESTABLISHED", "FIN_WAIT1"));
    events.push(status(2000, 504));
    let v = one(&events);
    assert_eq!((v.class, v.cause.as_str()), (Class::Network, "loss"));
}

#[test]
fn firewall_and_network_evidence() {
    // SYN dropped by netfilter, then the gateway's connect timeout.
    let mut events = vec![ev(Kind::ConnectStart, 0, 0xa1)];
    events.push(with(ev(Kind::Drop, 1, 0), |e| {
        e.reason = Some("NETFILTER_DROP".into());
        e.netns = 4026532000;
    }));
    events.push(with(ev(Kind::Retransmit, 1000, 0xa1), |e| e.value = 2));
    events.push(state(2000, 0xa1, "SYN_SENT", "CLOSE"));
    events.push(status(2000, 504));
    let v = one(&events);
    assert_eq!((v.class, v.cause.as_str()), (Class::Firewall, "dropped"));
    assert!(v.summary.contains("4026532000"), "names the netns: {}", v.summary);

    // ICMP admin prohibited vs host unreachable.
    for (code, class, cause) in [(13, Class::Firewall, "rejected"), (1, Class::Network, "unreachable")] {
        let mut events = vec![ev(Kind::ConnectStart, 0, 0xa1)];
        events.push(with(ev(Kind::IcmpError, 1, 0), |e| {
            e.value = 3 << 8 | code;
            e.aux = u32::from_le_bytes([10, 0, 0, 254]);
        }));
        events.push(with(ev(Kind::SockError, 1, 0xa1), |e| e.value = 113));
        events.push(state(1, 0xa1, "SYN_SENT", "CLOSE"));
        events.push(status(2, 502));
        let v = one(&events);
        assert_eq!((v.class, v.cause.as_str()), (class, cause), "code {code}");
        assert!(v.summary.contains("10.0.0.254"), "names the ICMP sender: {}", v.summary);
    }

    // The same ICMP errors with the packet hook off (it is attached on a retransmit): the
    // socket's own error tells. A refusal without a reset is an ICMP port unreachable, a
    // host unreachable reported while connecting an administratively prohibited one.
    // The gateway woken by the close may take the error before its report runs (the report
    // then reads 0): the close carries it too.
    // Both read 0 when the gateway took the error first: an error while connecting and no
    // reset is still an ICMP error.
    for (errno, reported) in [(111, 111), (113, 113), (111, 0), (0, 0)] {
        let mut events = vec![ev(Kind::ConnectStart, 0, 0xa1)];
        events.push(with(ev(Kind::Drop, 1, 0), |e| {
            e.reason = Some("NETFILTER_DROP".into());
            e.netns = 4026532000;
        }));
        events.push(with(ev(Kind::SockError, 1, 0xa1), |e| {
            e.value = reported;
            e.new_state = Some(TcpState::SynSent);
        }));
        events.push(with(state(1, 0xa1, "SYN_SENT", "CLOSE"), |e| e.value = errno));
        events.push(status(2, 502));
        let v = one(&events);
        assert_eq!((v.class, v.cause.as_str()), (Class::Firewall, "rejected"), "errno {errno}: {}", v.summary);
        assert!(v.summary.contains("4026532000") && v.summary.contains("ICMP"), "{}", v.summary);
    }

    // Immediate connect errors from routing.
    for (errno, cause) in [(-101, "no-route"), (-22, "no-route"), (-13, "no-route"), (-99, "local-resources")] {
        let events = vec![with(ev(Kind::ConnectSyscall, 0, 0), |e| e.value = errno), status(1, 502)];
        let v = one(&events);
        assert_eq!(v.cause.as_str(), cause, "errno {errno}");
    }
}

/// The kernel holds a connection's opening until something goes wrong, while drops and ICMP
/// errors go out at once: they arrive first, and the held events follow, with their own times,
/// ahead of the event that shipped them.
#[test]
fn packets_that_came_before_a_held_connection_story_still_explain_it() {
    // SYN dropped by netfilter; the retransmit ships the opening.
    let events = vec![
        with(ev(Kind::Drop, 1, 0), |e| {
            e.reason = Some("NETFILTER_DROP".into());
            e.netns = 4026532000;
        }),
        ev(Kind::ConnectStart, 0, 0xa1),
        with(ev(Kind::Retransmit, 1000, 0xa1), |e| e.value = 2),
        state(2000, 0xa1, "SYN_SENT", "CLOSE"),
        status(2000, 504),
    ];
    let v = one(&events);
    assert_eq!((v.class, v.cause.as_str()), (Class::Firewall, "dropped"));

    // ICMP admin prohibited; the socket error ships the opening.
    let events = vec![
        with(ev(Kind::IcmpError, 1, 0), |e| {
            e.value = 3 << 8 | 13;
            e.aux = u32::from_le_bytes([10, 0, 0, 254]);
        }),
        ev(Kind::ConnectStart, 0, 0xa1),
        with(ev(Kind::SockError, 1, 0xa1), |e| e.value = 113),
        state(1, 0xa1, "SYN_SENT", "CLOSE"),
        status(2, 502),
    ];
    let v = one(&events);
    assert_eq!((v.class, v.cause.as_str()), (Class::Firewall, "rejected"));
    assert!(v.summary.contains("10.0.0.254"), "names the ICMP sender: {}", v.summary);
}

/// A held story is shipped as connect, state changes, request, response: the state changes
/// that came after the request arrive before it. The verdict is the same as in time order.
#[test]
fn a_held_story_in_shipping_order_gets_the_time_order_verdict() {
    let head = "HTTP/1.1 200 OK\\r\\nContent-Length: 100000\\r\\n\\r\\n";
    let request = with(ev(Kind::RequestSent, 1, 0xa1), |e| {
        e.value = 80;
        e.bytes_sent = 80;
    });
    let response = with(ev(Kind::ResponseStart, 2, 0xa1), |e| {
        e.value = 500;
        e.bytes_sent = 80;
        e.bytes_recv = 500;
        e.head = Some(head.into());
    });
    let fin = with(state(3, 0xa1, "ESTABLISHED", "CLOSE_WAIT"), |e| {
        e.bytes_sent = 80;
        e.bytes_recv = 900;
    });
    let close = with(state(4, 0xa1, "CLOSE_WAIT", "LAST_ACK"), |e| {
        e.bytes_sent = 80;
        e.bytes_recv = 900;
    });
    let in_time = [connect(0, 0xa1)[..2].to_vec(), vec![request.clone(), response.clone(), fin.clone(), close.clone()]].concat();
    let shipped = [connect(0, 0xa1)[..2].to_vec(), vec![fin, request, response, close]].concat();
    let (a, b) = (one(&in_time), one(&shipped));
    assert_eq!((a.cause.as_str(), b.cause.as_str()), ("closed-early", "closed-early"));
    assert_eq!(a.summary, b.summary);
}

#[test]
fn keepalive_reset_then_retry_is_one_verdict_with_both_attempts() {
    let mut events = connect(0, 0xa1);
    events.push(with(ev(Kind::ResponseStart, 2, 0xa1), |e| {
        e.bytes_sent = 80;
        e.bytes_recv = 100;
    }));
    // Reuse 5 s later: the request goes out, the upstream resets, nginx retries fresh.
    events.push(with(ev(Kind::RequestSent, 5000, 0xa1), |e| {
        e.value = 80;
        e.bytes_sent = 160;
        e.bytes_recv = 100;
    }));
    events.push(with(ev(Kind::ResetReceived, 5001, 0xa1), |e| e.new_state = Some(TcpState::Established)));
    events.extend(refused(5002, 0xa2));
    events.push(status(5003, 502));
    let v = one(&events);
    assert_eq!(v.attempts.len(), 2, "{:#?}", v.attempts);
    assert!(v.attempts[0].reused && !v.attempts[1].reused);
    assert_eq!(v.cause.as_str(), "refused", "the last attempt decides");
}

#[test]
fn concurrent_requests_link_to_the_attempt_that_failed() {
    // A slow healthy request in flight on the same worker must not be blamed.
    let mut events = connect(0, 0xb1);
    events.extend(refused(100, 0xa1));
    events.push(status(101, 502));
    events.push(with(ev(Kind::ResponseStart, 300, 0xb1), |e| e.bytes_recv = 10));
    let verdicts = judge(&events);
    assert_eq!(verdicts.len(), 1);
    assert_eq!(verdicts[0].cause.as_str(), "refused");
}

#[test]
fn a_5xx_without_any_attempt_is_unknown_and_says_so() {
    let v = one(&[status(5, 503)]);
    assert_eq!(v.class, Class::Unknown);
    assert!(v.summary.contains("without any upstream connection attempt"));
}

#[test]
fn a_5xx_without_an_attempt_after_its_servers_failed_takes_their_cause() {
    // nginx "no live upstreams": both servers refused the first request, the second request
    // 2 s later is answered without a connect.
    let mut events = refused(10, 0xa1);
    events.extend(refused(11, 0xa2).into_iter().map(|e| with(e, |e| e.dst = Some("10.0.0.2:8082".parse().unwrap()))));
    events.push(status(12, 502));
    events.push(status(2_000, 502));
    let v = judge(&events);
    assert_eq!(v.len(), 2, "{v:#?}");
    assert_eq!((v[1].class, v[1].cause), (Class::Upstream, Cause::Refused), "{}", v[1].summary);
    assert!(v[1].summary.contains("without trying any upstream for this request"), "{}", v[1].summary);
    assert!(v[1].summary.contains("2 failures"), "{}", v[1].summary);
    assert!(v[1].attempts.is_empty(), "no attempt is claimed for it");
    assert_eq!(v[1].evidence.iter().filter(|e| e.event == "earlier_failure").count(), 2);
    // Failures of another gateway program, or too old, explain nothing.
    let other = with(status(12, 502), |e| e.comm = "haproxy".into());
    let v = judge(&[refused(10, 0xa1), vec![other, status(40_000, 502)]].concat());
    assert_eq!(v.last().map(|v| v.cause), Some(Cause::NoUpstreamAttempt), "{v:#?}");
}

#[test]
fn a_5xx_without_an_attempt_is_explained_by_failed_health_checks() {
    // Connections no request claimed (HAProxy's checks) failed shortly before.
    let mut events = refused(10, 0xa1);
    events.push(status(1_500, 503));
    let v = one(&events);
    assert_eq!(v.cause, Cause::Refused, "{}", v.summary);
    assert!(v.summary.contains("without trying any upstream"), "{}", v.summary);
}

#[test]
fn same_events_same_verdicts() {
    let mut events = listen_and_die(0, 500, 9);
    events.extend(refused(900, 0xa1));
    events.push(status(901, 502));
    events.extend(connect(1000, 0xa2));
    events.push(state(3000, 0xa2, "ESTABLISHED", "FIN_WAIT1"));
    events.push(status(3000, 504));
    assert_eq!(judge(&events), judge(&events));
}

#[test]
fn responses_cut_short_are_flagged_truncated_with_the_real_status() {
    let head = "HTTP/1.1 200 OK\\r\\nContent-Length: 100000\\r\\n\\r\\n";
    let mut events = connect(0, 0xa1);
    events.push(with(ev(Kind::ResponseStart, 3, 0xa1), |e| {
        e.bytes_recv = 1043;
        e.head = Some(head.into());
    }));
    events.push(with(state(100, 0xa1, "ESTABLISHED", "CLOSE_WAIT"), |e| e.bytes_recv = 1043));
    events.push(with(ev(Kind::RecvEnd, 100, 0xa1), |e| e.bytes_recv = 1043));
    let v = one(&events);
    assert_eq!(v.delivered, upstrace::engine::attribute::Delivered::Truncated);
    assert_eq!(v.status, Some(200));
    assert_eq!(v.cause.as_str(), "closed-early");
    assert!(v.summary.contains("1000 of 100000 body bytes"), "{}", v.summary);

    // The whole announced body arrived: a normal end, no verdict.
    let mut events = connect(0, 0xa1);
    events.push(with(ev(Kind::ResponseStart, 3, 0xa1), |e| {
        e.bytes_recv = 47;
        e.head = Some("HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok".into());
    }));
    events.push(with(state(100, 0xa1, "ESTABLISHED", "CLOSE_WAIT"), |e| e.bytes_recv = 40));
    assert!(judge(&events).is_empty());
}

#[test]
fn response_heads_are_parsed() {
    use upstrace::engine::http::ResponseHead;
    let h = ResponseHead::parse(b"HTTP/1.1 206 Partial\r\ncontent-length: 12\r\n\r\nabc").unwrap();
    assert_eq!(h, ResponseHead { status: 206, header_len: Some(44), content_length: Some(12), chunked: false, fastcgi: None });
    assert_eq!(ResponseHead::parse(b"garbage"), None);
    assert_eq!(ResponseHead::parse(b"HTTP/1.1 2"), None);
    let h = ResponseHead::parse(b"HTTP/1.0 200 OK\r\nServer: x\r\nContent-Le").unwrap();
    assert_eq!((h.header_len, h.content_length), (None, None));
}

#[test]
fn a_full_accept_queue_explains_unanswered_syns() {
    let mut events = vec![KernelEvent::listen_overflow(1_000_000 * MS - 1500 * MS, 777, "app", "0.0.0.0:8081".parse().unwrap(), 2, 1)];
    events.push(ev(Kind::ConnectStart, 0, 0xa1));
    events.push(with(ev(Kind::Retransmit, 1000, 0xa1), |e| e.value = 2));
    events.push(state(2000, 0xa1, "SYN_SENT", "CLOSE"));
    events.push(status(2000, 504));
    let v = one(&events);
    assert_eq!((v.class, v.cause.as_str()), (Class::Upstream, "overloaded"));
    assert!(v.evidence.iter().any(|e| e.event == "listen_overflow"));
}

#[test]
fn a_refused_connect_is_the_rst_alone() {
    // What the kernel sends for a refusal: the CLOSE and ECONNREFUSED that follow the RST to
    // the SYN are left out.
    let v = one(&[
        ev(Kind::ConnectStart, 0, 0xa1),
        with(ev(Kind::ResetReceived, 0, 0xa1), |e| e.new_state = Some(TcpState::SynSent)),
        status(1, 502),
    ]);
    assert_eq!((v.class, v.cause.as_str()), (Class::Upstream, "refused"), "{v:#?}");
}

#[test]
fn lost_statuses_keep_a_threads_linking_queue_short() {
    // A refused storm where 3 statuses in 10 never arrived (ring buffer overflow): every
    // status that did arrive is explained, and the thread's queue does not fill with the
    // attempts whose statuses were lost (each status would walk past all of them).
    let mut engine = Engine::new();
    let mut verdicts = Vec::new();
    let mut statuses = 0;
    for i in 0..5000u64 {
        let sock = 0x10_0000 + i;
        let mut events =
            vec![ev(Kind::ConnectStart, i, sock), with(ev(Kind::ResetReceived, i, sock), |e| e.new_state = Some(TcpState::SynSent))];
        if i % 10 >= 3 {
            events.push(status(i, 502));
            statuses += 1;
        }
        for e in &events {
            verdicts.extend(engine.handle(e));
        }
    }
    verdicts.extend(engine.advance(1_000_000 * MS + 6000 * MS));
    assert_eq!(verdicts.len(), statuses);
    assert!(verdicts.iter().all(|v| v.cause == Cause::Refused), "{:?}", verdicts.iter().find(|v| v.cause != Cause::Refused));
    let queue = engine.tracker.by_tid.get(&GW_TID).map_or(0, |q| q.len());
    assert!(queue <= 200, "the thread's queue holds {queue} attempts");
}

/// A unix-socket upstream: connect(2) names the path and the socket; the I/O events that
/// follow carry only the socket.
fn unix_connect(ts: u64, sock: u64, path: &str) -> Vec<KernelEvent> {
    let unix = |mut e: KernelEvent| {
        e.src = None;
        e.dst = None;
        e
    };
    vec![
        with(unix(ev(Kind::ConnectSyscall, ts, sock)), |e| e.path = Some(path.into())),
        with(unix(ev(Kind::RequestSent, ts + 1, sock)), |e| {
            e.value = 80;
            e.bytes_sent = 80;
        }),
    ]
}

#[test]
fn a_unix_socket_upstream_is_judged_on_its_socket_events() {
    const FPM: &str = "/run/php/fpm.sock";
    let unix_event = |kind, ts, f: fn(&mut KernelEvent)| {
        with(ev(kind, ts, 0xb1), |e| {
            e.src = None;
            e.dst = None;
            f(e)
        })
    };
    // The server closed before answering: EOF on the gateway's read.
    let mut events = unix_connect(0, 0xb1, FPM);
    events.push(unix_event(Kind::RecvEnd, 5, |e| e.bytes_sent = 80));
    events.push(status(6, 502));
    let v = one(&events);
    assert_eq!((v.class, v.cause.as_str()), (Class::Upstream, "closed-early"), "{v:#?}");
    assert_eq!(v.upstream, format!("unix:{FPM}"));
    assert!(v.summary.contains("before sending any response byte"), "{}", v.summary);
    assert!(
        v.evidence.iter().any(|e| e.event == "recv_end" && e.detail.to_string().starts_with(&format!("unix:{FPM}"))),
        "socket events are named by the path: {:#?}",
        v.evidence
    );
    assert!(!v.evidence.iter().any(|e| e.detail.to_string().contains("SYN")), "no TCP steps for a unix socket: {:#?}", v.evidence);

    // A response head the gateway rejects, then the close.
    let mut events = unix_connect(0, 0xb1, FPM);
    events.push(unix_event(Kind::ResponseStart, 3, |e| {
        e.value = 30;
        e.bytes_recv = 30;
        e.head = Some("HTTP/1.1 200 OK\\r\\nX\\x01Bad: y\\r\\n".into());
    }));
    events.push(unix_event(Kind::RecvEnd, 4, |e| e.bytes_recv = 30));
    events.push(status(6, 502));
    assert_eq!(one(&events).cause.as_str(), "invalid-response");

    // Request sent, nothing back before the gateway's timeout.
    let mut events = unix_connect(0, 0xb1, FPM);
    events.push(status(2000, 504));
    let v = one(&events);
    assert_eq!((v.status, v.cause.as_str()), (Some(504), "stalled"), "{v:#?}");
}

#[test]
fn a_unix_server_worker_that_dies_is_named_and_a_kill_by_its_manager_is_told_apart() {
    const FPM: &str = "/run/php/fpm.sock";
    let fpm = |kind, ts, pid: u32, f: fn(&mut KernelEvent)| {
        with(ev(kind, ts, 0), |e| {
            e.pid = pid;
            e.tid = pid;
            e.comm = "php-fpm8.2".into();
            e.src = None;
            e.dst = None;
            f(e)
        })
    };
    let listening = [
        KernelEvent::unix_listen_snapshot(1_000_000 * MS, 900, "php-fpm8.2", FPM, Some("php-fpm: master process".into())),
        KernelEvent::unix_listen_snapshot(1_000_000 * MS, 901, "php-fpm8.2", FPM, Some("php-fpm: pool www".into())),
    ];
    let eof = with(ev(Kind::RecvEnd, 12, 0xb1), |e| {
        e.src = None;
        e.dst = None;
        e.bytes_sent = 80;
    });
    // The worker crashes mid-request.
    let mut events = listening.to_vec();
    events.extend(unix_connect(0, 0xb1, FPM));
    events.push(fpm(Kind::ProcessExit, 10, 901, |e| e.value = 11));
    events.extend([eof.clone(), status(13, 502)]);
    let v = one(&events);
    assert_eq!(v.cause, Cause::Crashed, "{}", v.summary);
    assert!(v.summary.contains("upstream process 901 (php-fpm: pool www) killed by SIGSEGV"), "{}", v.summary);
    // Its master sends it SIGTERM (request_terminate_timeout): the worker was killed, not crashed.
    let mut events = listening.to_vec();
    events.extend(unix_connect(0, 0xb1, FPM));
    events.push(fpm(Kind::Signal, 9, 901, |e| {
        e.value = 15;
        e.aux = 900;
    }));
    // PHP's handler re-raises it on itself before dying.
    events.push(fpm(Kind::Signal, 9, 901, |e| {
        e.value = 15;
        e.aux = 901;
    }));
    events.push(fpm(Kind::ProcessExit, 10, 901, |e| e.value = 15));
    events.extend([eof.clone(), status(13, 502)]);
    let v = one(&events);
    assert_eq!((v.class, v.cause), (Class::Upstream, Cause::WorkerKilled), "{}", v.summary);
    assert!(v.summary.contains("sent by its manager 900 (php-fpm: master process)"), "{}", v.summary);
    // A worker forked after upstrace looked (not listed) is known by its name.
    let mut events = listening.to_vec();
    events.extend(unix_connect(0, 0xb1, FPM));
    events.push(fpm(Kind::ProcessExit, 10, 955, |e| e.value = 6));
    events.extend([eof, status(13, 502)]);
    let v = one(&events);
    assert_eq!(v.cause, Cause::Crashed, "{}", v.summary);
    assert!(v.summary.contains("upstream process 955 (php-fpm8.2) killed by SIGABRT"), "{}", v.summary);
}

/// A gateway whose answers cannot be read (TLS in a library upstrace does not read).
fn unreadable_engine() -> Engine {
    let mut engine = Engine::new();
    engine.set_answers_readable("nginx", false);
    engine
}

fn run(mut engine: Engine, events: &[KernelEvent]) -> Vec<Verdict> {
    let mut out = Vec::new();
    for e in events {
        out.extend(engine.handle(e));
    }
    let last = events.iter().map(|e| e.ts_ns).max().unwrap_or(0);
    out.extend(engine.advance(last + 2000 * MS));
    out.extend(engine.flush());
    out
}

#[test]
fn an_unreadable_gateway_gets_an_inferred_verdict_for_a_failure_no_retry_followed() {
    let verdicts = run(unreadable_engine(), &refused(10, 0xa1));
    assert_eq!(verdicts.len(), 1, "{verdicts:#?}");
    let v = &verdicts[0];
    assert_eq!((v.status, v.delivered), (None, upstrace::engine::attribute::Delivered::Inferred));
    assert_eq!((v.class, v.cause), (Class::Upstream, Cause::Refused));
    assert!(v.summary.contains("not readable"), "{}", v.summary);
    let json = serde_json::to_value(v).unwrap();
    assert!(json["status"].is_null() && json["delivered"] == "inferred", "{json}");
}

#[test]
fn a_failure_retried_with_success_or_answered_in_the_clear_gets_no_inferred_verdict() {
    // Retried on the same thread right away on the group's next server, which answered.
    let mut events = refused(10, 0xa1);
    let next: std::net::SocketAddr = "10.0.0.3:8081".parse().unwrap();
    events.extend(connect(12, 0xa2).into_iter().map(|e| with(e, |e| e.dst = Some(next))));
    events.push(with(ev(Kind::ResponseStart, 13, 0xa2), |e| {
        e.dst = Some(next);
        e.value = 100;
        e.bytes_recv = 100;
        e.head = Some("HTTP/1.1 200 OK\\r\\n".into());
    }));
    events.push(with(ev(Kind::RecvEnd, 14, 0xa2), |e| {
        e.dst = Some(next);
        e.value = 0;
    }));
    let verdicts: Vec<_> = run(unreadable_engine(), &events).into_iter().filter(|v| v.status.is_none()).collect();
    assert!(verdicts.is_empty(), "{verdicts:#?}");
    // A readable gateway: its status decides, nothing is inferred.
    let mut events = refused(10, 0xa1);
    events.push(status(11, 502));
    let verdicts = run(Engine::new(), &events);
    assert_eq!(verdicts.len(), 1);
    assert_eq!(verdicts[0].status, Some(502));
    // Unreadable by name, but a status was read after all: one verdict, with the status.
    let verdicts = run(unreadable_engine(), &events);
    assert_eq!(verdicts.iter().map(|v| v.status).collect::<Vec<_>>(), vec![Some(502)]);
}

#[test]
fn a_unix_socket_connect_error_speaks_of_the_file_not_of_routes() {
    let path = "/run/php/php8.2-fpm.sock";
    for (errno, class, cause, says) in [
        (-13, Class::Gateway, Cause::PermissionDenied, "owner and mode"),
        (-1, Class::Gateway, Cause::PermissionDenied, "owner and mode"),
        (-2, Class::Upstream, Cause::NoSocketFile, "does not exist"),
        (-111, Class::Upstream, Cause::Refused, "nothing listens on it"),
    ] {
        let connect = with(ev(Kind::ConnectSyscall, 0, 0), |e| {
            e.value = errno;
            e.src = None;
            e.dst = None;
            e.path = Some(path.into());
        });
        let v = one(&[connect, status(1, 502)]);
        assert_eq!((v.class, v.cause), (class, cause), "errno {errno}: {}", v.summary);
        assert!(v.summary.contains(says) && v.summary.contains(path), "{}", v.summary);
        assert!(v.next_check().contains(path), "{}", v.next_check());
    }
    // The same errno on a TCP connect is the route's doing.
    let v = one(&[with(ev(Kind::ConnectSyscall, 0, 0), |e| e.value = -13), status(1, 502)]);
    assert_eq!((v.class, v.cause), (Class::Network, Cause::NoRoute));
}

/// A response whose first read held just `head` (escaped as the decoder gives it).
fn len(head: &str) -> u64 {
    upstrace::engine::escaped::unescape_bytes(head).len() as u64
}

fn answered(ts: u64, sock: u64, head: &str) -> KernelEvent {
    let len = len(head);
    with(ev(Kind::ResponseStart, ts, sock), |e| {
        e.value = len as i64;
        e.bytes_recv = len;
        e.head = Some(head.into());
    })
}

#[test]
fn an_upstreams_own_complete_5xx_is_its_own_cause_whoever_closed() {
    // Content-Length, then the upstream closes: complete by its length.
    let head = "HTTP/1.1 503 Service Unavailable\\r\\nContent-Length: 11\\r\\n\\r\\nmaintenance";
    let mut events = connect(0, 0xa1);
    events.push(answered(3, 0xa1, head));
    events.push(with(state(4, 0xa1, "ESTABLISHED", "CLOSE_WAIT"), |e| e.bytes_recv = len(head)));
    events.push(with(ev(Kind::RecvEnd, 4, 0xa1), |e| e.bytes_recv = len(head)));
    events.push(status(5, 503));
    let v = one(&events);
    assert_eq!((v.class, v.cause.as_str()), (Class::Upstream, "upstream-5xx"), "{}", v.summary);
    assert!(v.summary.contains("\"HTTP/1.1 503 Service Unavailable\" itself"), "{}", v.summary);
    assert!(v.summary.contains("all 11 body bytes"), "{}", v.summary);
    assert!(v.summary.contains("its body begins \"maintenance\""), "{}", v.summary);
    assert!(v.next_check().contains("answered this 5xx itself"));

    // Chunked, through its last chunk, on a kept-alive connection that stays open.
    let head = "HTTP/1.1 500 Internal Server Error\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n5\\r\\noops!\\r\\n0\\r\\n\\r\\n";
    let mut events = connect(0, 0xa1);
    events.push(answered(3, 0xa1, head));
    events.push(status(5, 500));
    let v = one(&events);
    assert_eq!(v.cause.as_str(), "upstream-5xx", "{}", v.summary);
    assert!(v.summary.contains("through its last chunk"), "{}", v.summary);

    // Close-delimited: the upstream's FIN ends the body.
    let head = "HTTP/1.0 500 Internal Server Error\\r\\n\\r\\nboom";
    let mut events = connect(0, 0xa1);
    events.push(answered(3, 0xa1, head));
    events.push(with(state(4, 0xa1, "ESTABLISHED", "CLOSE_WAIT"), |e| e.bytes_recv = len(head)));
    events.push(with(ev(Kind::RecvEnd, 4, 0xa1), |e| e.bytes_recv = len(head)));
    events.push(status(5, 500));
    let v = one(&events);
    assert_eq!(v.cause.as_str(), "upstream-5xx", "{}", v.summary);
    assert!(v.summary.contains("ended by the upstream's close"), "{}", v.summary);
}

#[test]
fn a_5xx_cut_short_or_not_the_one_passed_on_is_not_the_upstreams_own() {
    // The announced length never arrived before the upstream closed.
    let head = "HTTP/1.1 503 Service Unavailable\\r\\nContent-Length: 500\\r\\n\\r\\nmaint";
    let mut events = connect(0, 0xa1);
    events.push(answered(3, 0xa1, head));
    events.push(with(state(4, 0xa1, "ESTABLISHED", "CLOSE_WAIT"), |e| e.bytes_recv = len(head)));
    events.push(with(ev(Kind::RecvEnd, 4, 0xa1), |e| e.bytes_recv = len(head)));
    events.push(status(5, 503));
    assert_eq!(one(&events).cause.as_str(), "closed-early");

    // A close-delimited body ended by a reset is not complete.
    let head = "HTTP/1.0 500 Internal Server Error\\r\\n\\r\\nboom";
    let mut events = connect(0, 0xa1);
    events.push(answered(3, 0xa1, head));
    events.push(with(ev(Kind::ResetReceived, 4, 0xa1), |e| e.new_state = Some(TcpState::Established)));
    events.push(status(5, 500));
    assert_eq!(one(&events).cause.as_str(), "reset");

    // The gateway answered another status than the upstream's (it made its own 502).
    let head = "HTTP/1.1 500 Internal Server Error\\r\\nContent-Length: 4\\r\\n\\r\\nboom";
    let mut events = connect(0, 0xa1);
    events.push(answered(3, 0xa1, head));
    events.push(with(state(4, 0xa1, "ESTABLISHED", "CLOSE_WAIT"), |e| e.bytes_recv = len(head)));
    events.push(status(5, 502));
    assert_ne!(one(&events).cause.as_str(), "upstream-5xx");
}

#[test]
fn a_head_larger_than_the_gateways_buffer_is_told_from_an_early_close() {
    let head = "HTTP/1.1 200 OK\\r\\nContent-Type: text/plain\\r\\nSet-Cookie: session=cccccccccccccccccccc";
    // nginx read its 4 KB buffer full, found no end of the head and closed with bytes unread
    // (its RST); the upstream had sent the rest and closed (a FIN nginx never read).
    let mut events = connect(0, 0xa1);
    events.push(with(answered(3, 0xa1, head), |e| e.bytes_recv = 4096));
    events.push(with(state(3, 0xa1, "ESTABLISHED", "CLOSE_WAIT"), |e| e.bytes_recv = 4096));
    events.push(with(ev(Kind::ResetSent, 4, 0xa1), |e| e.value = TcpState::CloseWait as i64));
    events.push(with(state(4, 0xa1, "CLOSE_WAIT", "CLOSE"), |e| e.bytes_recv = 4096));
    events.push(status(5, 502));
    let v = one(&events);
    assert_eq!((v.class, v.cause.as_str()), (Class::Gateway, "head-too-large"), "{}", v.summary);
    assert!(v.summary.contains("read 4096 bytes with no end of the head"), "{}", v.summary);
    assert!(v.summary.contains("proxy_buffer_size"), "{}", v.summary);
    assert!(v.next_check().contains("tune.bufsize"));

    // HAProxy writes its 502 first, then resets the connection (16320 bytes read).
    let mut events = connect(0, 0xa1);
    events.push(with(answered(3, 0xa1, head), |e| e.bytes_recv = 15360));
    events.push(status(4, 502));
    events.push(with(state(4, 0xa1, "ESTABLISHED", "CLOSE"), |e| e.bytes_recv = 16320));
    events.push(with(ev(Kind::ResetSent, 4, 0xa1), |e| e.value = TcpState::Close as i64));
    let v = one(&events);
    assert_eq!(v.cause.as_str(), "head-too-large", "{}", v.summary);
    assert!(v.summary.contains("read 16320 bytes"), "{}", v.summary);

    // A partial head, then silence until the gateway's read timeout: a stall, not this.
    let mut events = connect(0, 0xa1);
    events.push(with(answered(3, 0xa1, head), |e| e.bytes_recv = 4096));
    events.push(with(state(2003, 0xa1, "ESTABLISHED", "FIN_WAIT1"), |e| e.bytes_recv = 4096));
    events.push(status(2003, 504));
    assert_ne!(one(&events).cause.as_str(), "head-too-large");

    // The upstream closed in the middle of its head: the gateway read on to the EOF.
    let mut events = connect(0, 0xa1);
    events.push(with(answered(3, 0xa1, head), |e| e.bytes_recv = 4096));
    events.push(with(state(3, 0xa1, "ESTABLISHED", "CLOSE_WAIT"), |e| e.bytes_recv = 4096));
    events.push(with(ev(Kind::RecvEnd, 4, 0xa1), |e| e.bytes_recv = 4096));
    events.push(with(state(4, 0xa1, "CLOSE_WAIT", "LAST_ACK"), |e| e.bytes_recv = 4096));
    events.push(status(5, 502));
    let v = one(&events);
    assert_eq!(v.cause.as_str(), "closed-early", "{}", v.summary);
    assert!(v.summary.contains("after 4096 response bytes"), "{}", v.summary);
}

/// A connection opened with a TLS ClientHello (its first 8 bytes, as the kernel keeps them).
fn tls_connect(ts: u64, sock: u64) -> Vec<KernelEvent> {
    vec![
        with(ev(Kind::ConnectStart, ts, sock), |e| e.src = Some("10.0.0.1:0".parse().unwrap())),
        state(ts, sock, "SYN_SENT", "ESTABLISHED"),
        with(ev(Kind::RequestSent, ts + 1, sock), |e| {
            e.value = 517;
            e.bytes_sent = 517;
            e.head = Some("\\x16\\x03\\x01\\x02\\x00\\x01\\x00\\x01".into());
        }),
    ]
}

fn first_read(ts: u64, sock: u64, sent: u64, len: u64, head: &str) -> KernelEvent {
    with(ev(Kind::ResponseStart, ts, sock), |e| {
        e.value = len as i64;
        e.bytes_sent = sent;
        e.bytes_recv = len;
        e.head = Some(head.into());
    })
}

#[test]
fn a_gateway_that_closes_after_the_upstreams_tls_hello_rejected_its_certificate() {
    // The gateway reads the ServerHello, sends only an alert, and closes (no HTTP request).
    let mut events = tls_connect(10, 0xb1);
    events.push(first_read(12, 0xb1, 517, 5, "\\x16\\x03\\x03\\x00z"));
    events.push(with(ev(Kind::RequestSent, 13, 0xb1), |e| {
        e.value = 7;
        e.bytes_sent = 524;
        e.bytes_recv = 611;
    }));
    events.push(with(state(13, 0xb1, "ESTABLISHED", "FIN_WAIT1"), |e| {
        e.bytes_sent = 524;
        e.bytes_recv = 611;
    }));
    events.push(status(14, 502));
    let v = one(&events);
    assert_eq!((v.class, v.cause), (Class::Upstream, Cause::TlsCertRejected), "{}", v.summary);
    assert!(v.summary.contains("without sending an HTTP request") && v.summary.contains("7 bytes (a TLS alert"), "{}", v.summary);

    // A healthy handshake's next flight (Finished and the request) is no rejection: the
    // upstream's silence afterwards is a stall.
    let mut events = tls_connect(10, 0xb2);
    events.push(first_read(12, 0xb2, 517, 631, "\\x16\\x03\\x03\\x00A\\x02\\x00\\x00="));
    events.push(with(ev(Kind::RequestSent, 13, 0xb2), |e| {
        e.value = 180;
        e.bytes_sent = 697;
        e.bytes_recv = 631;
    }));
    events.push(with(state(2013, 0xb2, "ESTABLISHED", "FIN_WAIT1"), |e| {
        e.bytes_sent = 697;
        e.bytes_recv = 631;
    }));
    events.push(status(2014, 504));
    assert_eq!(one(&events).cause, Cause::Stalled);
}

#[test]
fn tls_alerts_and_protocol_mismatches_are_named() {
    // The upstream answers the ClientHello with a fatal protocol_version alert.
    let mut events = tls_connect(10, 0xc1);
    events.push(first_read(12, 0xc1, 517, 7, "\\x15\\x03\\x03\\x00\\x02\\x02F"));
    events.push(state(12, 0xc1, "ESTABLISHED", "FIN_WAIT1"));
    events.push(status(13, 502));
    let v = one(&events);
    assert_eq!((v.class, v.cause), (Class::Upstream, Cause::TlsAlert));
    assert!(v.summary.contains("protocol_version (70)"), "{}", v.summary);

    // A plain HTTP server answers the ClientHello with 400.
    let mut events = tls_connect(10, 0xc2);
    events.push(first_read(12, 0xc2, 517, 99, "HTTP/1.1 400 Bad Request\\r\\nContent-Length: 12\\r\\n\\r\\n************"));
    events.push(state(12, 0xc2, "ESTABLISHED", "CLOSE_WAIT"));
    events.push(status(13, 502));
    let v = one(&events);
    assert_eq!((v.class, v.cause), (Class::Gateway, Cause::PlainHttpBehindHttps), "{}", v.summary);

    // A TLS server answers a plain request with an alert record.
    let mut events = connect(10, 0xc3);
    events[2].head = Some("GET ****".into());
    events.push(first_read(12, 0xc3, 80, 7, "\\x15\\x03\\x03\\x00\\x02\\x02F"));
    events.push(state(12, 0xc3, "ESTABLISHED", "CLOSE_WAIT"));
    events.push(status(13, 502));
    let v = one(&events);
    assert_eq!((v.class, v.cause), (Class::Gateway, Cause::TlsBehindHttp), "{}", v.summary);

    // Without the request's bytes (an older kernel side), a whole alert read stays what it
    // was: bytes that are not HTTP.
    let mut events = connect(10, 0xc4);
    events.push(first_read(12, 0xc4, 80, 7, "\\x15\\x03\\x03\\x00\\x02\\x02F"));
    events.push(state(12, 0xc4, "ESTABLISHED", "CLOSE_WAIT"));
    events.push(status(13, 502));
    assert_eq!(one(&events).cause, Cause::InvalidResponse);
}

#[test]
fn an_idle_tls_connections_close_notify_is_no_failed_request() {
    // A healthy HTTPS upstream connection; a minute later the gateway closes it, idle, with a
    // 31-byte close_notify. A 5xx the same thread writes then is not explained by it.
    let mut events = tls_connect(10, 0xd1);
    events.push(first_read(12, 0xd1, 517, 631, "\\x16\\x03\\x03\\x00A\\x02\\x00\\x00="));
    events.push(with(ev(Kind::RequestSent, 60_000, 0xd1), |e| {
        e.value = 31;
        e.bytes_sent = 1200;
        e.bytes_recv = 2000;
    }));
    events.push(with(state(60_000, 0xd1, "ESTABLISHED", "FIN_WAIT1"), |e| {
        e.bytes_sent = 1200;
        e.bytes_recv = 2000;
    }));
    events.push(status(60_010, 502));
    let v = one(&events);
    assert_eq!(v.cause, Cause::NoUpstreamAttempt, "{}", v.summary);
}

/// Live batches: a verdict held while the ring never runs dry (no flush, no tick) still
/// leaves within 10 ms of event time once decided.
#[test]
fn held_verdicts_leave_within_ten_ms_of_event_time_in_an_endless_drain() {
    let mut pipeline = Pipeline::new().collecting();
    pipeline.hold_verdicts();
    let mut events = refused(10, 0xa1);
    events.push(status(11, 502));
    for e in &events {
        pipeline.event(e).unwrap();
    }
    // Unrelated traffic every millisecond: retransmits on another connection.
    let settled_ms = 11 + SETTLE_NS / MS;
    let mut left_at = None;
    for t in 12..settled_ms + 100 {
        pipeline.event(&with(ev(Kind::Retransmit, t, 0xb1), |e| e.value = 1)).unwrap();
        if left_at.is_none() && !pipeline.collected.as_ref().unwrap().is_empty() {
            left_at = Some(t);
        }
    }
    let left_at = left_at.expect("the verdict left without a flush");
    assert!((settled_ms..=settled_ms + 12).contains(&left_at), "left at {left_at} ms, settled at {settled_ms} ms");
    assert_eq!(pipeline.collected.as_ref().unwrap()[0].cause, Cause::Refused);
}

/// A killed PHP-FPM in a storm: one thread's unix connects refused back to back, each answered
/// 502 at once. Each status links its own refused attempt (none is taken for a polled TCP
/// connect's second report, none is left to "servers marked failed").
#[test]
fn back_to_back_refused_unix_connects_are_one_attempt_each() {
    let path = "/run/php/php8.2-fpm.sock";
    let mut events = Vec::new();
    for i in 0..20u64 {
        events.push(with(ev(Kind::ConnectSyscall, i * 2, 0xd0 + i), |e| {
            e.value = -111;
            e.src = None;
            e.dst = None;
            e.path = Some(path.into());
        }));
        events.push(status(i * 2 + 1, 502));
    }
    let verdicts = judge(&events);
    assert_eq!(verdicts.len(), 20);
    for v in &verdicts {
        assert_eq!(v.cause, Cause::Refused, "{}", v.summary);
        assert_eq!(v.attempts.len(), 1, "{v:#?}");
        assert!(v.summary.contains("nothing listens on it"), "{}", v.summary);
    }
}
