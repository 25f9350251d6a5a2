//! Socket I/O of traced processes: byte counts on upstream sockets (one event per exchange,
//! not per call), and 5xx status lines written to downstream (client) sockets. One program per
//! send and one per receive, at the socket tracepoints: they name the socket, and the bytes are
//! read from the buffer the syscall was given (`read::syscall_buffer`), so no syscall is hooked.
use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use tracer_common::{
    EventKind, IPPROTO_TCP, IPPROTO_UDP, OWNER_FCGI_ENDED, OWNER_QUIET, OWNER_STORY_HELD, PHASE_RECEIVING, PHASE_SENDING, PendingStatus,
    RECV_END_AFTER_FCGI_END, REQUEST_HEAD, RESPONSE_HEAD, SEEN_PLAIN, STATUS_SEEN_AT, STATUS_STREAM_AT, SockOwner, counter, errno,
    status::{SCAN_LEN, find_5xx, response_length},
};

use crate::{
    config::{cfg_get, count},
    dns::on_socket as on_dns,
    done,
    event::{Who, emit, emit_socket, fill_tuple_from_sock, ship_held},
    maps::{
        HELD, PENDING_STATUS, forget_unix_socket, held, is_traced, new_held, open_owner_of, owner_of, remember_last_response,
        take_last_response, take_pending_status, unix_owner_of,
    },
    read::{
        current_ids, now_ns, read_user, read_user_bytes, read_user_prefix, sock_family, sock_netns, sock_protocol, syscall_buffer,
        syscall_fd_and_buffer, tp_field,
    },
};

/// A status line seen in TLS plaintext (`SSL_write`) must reach the socket within this long
/// (else its ciphertext never went out, and it must not stick to a later send). Generous: a
/// thread preempted, or a vCPU descheduled by the hypervisor, between the two can take tens
/// of milliseconds (10 ms lost one 5xx in 205k in a 30-minute soak).
const STATUS_MAX_AGE_NS: u64 = 1_000_000_000;

/// The send hook as tp_btf: the socket and the length are its arguments (no trace record is
/// built, no helper reads them); the family and protocol are read from the socket only when it
/// is no known upstream.
#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length_btf(ctx: BtfTracePointContext) -> u32 {
    done(on_send(|| Ok((ctx.arg(0), ctx.arg(1))), sock_family, sock_protocol))
}

/// The classic tracepoint, where tp_btf cannot attach: the same fields, from its record.
#[tracepoint(category = "sock", name = "sock_send_length")]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    done(on_send(
        || Ok((tp_field(&ctx, cfg_get!(tp.send_len_sk))?, tp_field(&ctx, cfg_get!(tp.send_len_ret))?)),
        |_| tp_field(&ctx, cfg_get!(tp.send_len_family)).unwrap_or(0),
        |_| tp_field(&ctx, cfg_get!(tp.send_len_protocol)).unwrap_or(0),
    ))
}

/// A traced process's send on socket `sk` (read by `call` only for traced processes).
#[inline(always)]
fn on_send(
    call: impl FnOnce() -> Result<(u64, i32), i32>,
    family: impl FnOnce(u64) -> u16,
    protocol: impl FnOnce(u64) -> u16,
) -> Result<(), i32> {
    let (tgid, tid) = current_ids();
    if !is_traced(tgid) {
        return Ok(());
    }
    let (sk, ret) = call()?;
    let owner = open_owner_of(sk).or_else(|| unix_owner_of(sk, family(sk)));
    let Some(owner) = owner else {
        let (fd, buf) = syscall_fd_and_buffer();
        if protocol(sk) == IPPROTO_UDP as u16 && on_dns(EventKind::DnsQuery, IPPROTO_UDP, sk, tgid, tid, || buf, ret) {
            return Ok(());
        }
        // Reported even when the send fails (the client gone): the gateway answered it.
        if buf != 0 {
            look_for_status(tid, fd, buf, SEEN_PLAIN);
        }
        on_downstream_send(sk, tgid, tid);
        return Ok(());
    };
    if ret <= 0 {
        return Ok(());
    }
    owner.bytes_sent += ret as u64;
    if owner.phase == PHASE_SENDING {
        return Ok(());
    }
    owner.phase = PHASE_SENDING;
    owner.exchanges += 1;
    owner.flags &= !(OWNER_FCGI_ENDED | OWNER_QUIET);
    // Exchanges are held, and only shipped if something goes wrong: every one on a connection
    // whose story is held from its connect, the later ones on other kept-alive connections.
    // The request's first bytes are kept for a connection's first exchange only.
    let buf = if owner.exchanges == 1 { syscall_buffer() } else { 0 };
    if (owner.flags & OWNER_STORY_HELD != 0 || owner.exchanges > 1) && hold_request(sk, owner, ret, buf) {
        return Ok(());
    }
    emit_socket(EventKind::RequestSent, sk, owner, |e| {
        e.value = ret as i64;
        e.new_state = owner.tcp_state as u8;
        if owner.exchanges == 1 {
            read_request_head(buf, ret, e);
        }
    });
    Ok(())
}

/// The first bytes of a connection's first request (a TLS ClientHello or an HTTP request
/// line), into `data`; bytes past the write's length stay zero.
#[inline(always)]
fn read_request_head(buf: u64, len: i32, e: &mut tracer_common::Event) {
    let Some(head) = e.data.first_chunk_mut::<REQUEST_HEAD>() else { return };
    read_request_bytes(buf, len, head);
}

#[inline(always)]
fn read_request_bytes(buf: u64, len: i32, head: &mut [u8; REQUEST_HEAD]) {
    *head = [0; REQUEST_HEAD];
    if read_user_prefix(buf, len, head) == 0 {
        *head = [0; REQUEST_HEAD];
    }
}

#[inline(always)]
fn hold_request(sk: u64, owner: &mut SockOwner, len: i32, buf: u64) -> bool {
    let Some(held) = held(sk).or_else(|| new_held(sk)) else {
        return false;
    };
    if owner.exchanges > 1 {
        // The previous exchange ended well (the gateway is sending the next request): forget
        // it, and the connection's opening with it (a reused connection's failure is told
        // from its exchange).
        owner.flags &= !OWNER_STORY_HELD;
        held.connect_ts = 0;
        held.states = 0;
    }
    held.request_ts = now_ns();
    held.request_bytes_sent = owner.bytes_sent;
    held.request_bytes_recv = owner.bytes_recv;
    held.request_len = len;
    if owner.exchanges == 1 {
        read_request_bytes(buf, len, &mut held.request_head);
    } else {
        held.request_head = [0; REQUEST_HEAD];
    }
    held.response_ts = 0;
    held.head_len = 0;
    held.response_expected = 0;
    true
}

/// TLS record type of a handshake message (a ClientHello starts `16 03 0x`).
const TLS_HANDSHAKE: u8 = 0x16;

/// Read the head of a response from the caller's buffer; returns how many bytes are valid.
#[inline(always)]
fn read_head(buf: u64, len: i32, head: &mut [u8; RESPONSE_HEAD]) -> u32 {
    read_user_prefix(buf, len, head)
}

/// A response that starts like a plain HTTP/1.x 1xx-4xx answer (or a FastCGI response whose
/// CGI head does not begin with a 5xx `Status:`) explains no 5xx by itself; nor does a TLS
/// application data record (a kept-alive HTTPS upstream's answer: opaque).
/// `after_tls_hello`: the request was a TLS ClientHello, which only a TLS record answers (plain
/// HTTP's 400 from a server that does not speak TLS is no answer at all).
#[inline(always)]
fn plain_answer(head: &[u8; RESPONSE_HEAD], len: u32, after_tls_hello: bool) -> bool {
    if len == 0 {
        return true; // nothing to judge by: hold it like the rest
    }
    if after_tls_hello && !(head[0] >= 0x14 && head[0] <= 0x17 && head[1] == 0x03) {
        return false;
    }
    if len >= 3 && head[0] == 0x17 && head[1] == 0x03 {
        return true;
    }
    if head[0] == 1 && head[1] == 6 && head[7] == 0 {
        // FCGI_STDOUT first (an FCGI_STDERR first, PHP's warnings, is worth shipping).
        let status_5xx = head[8] == b'S'
            && head[9] == b't'
            && head[10] == b'a'
            && head[11] == b't'
            && head[12] == b'u'
            && head[13] == b's'
            && head[14] == b':'
            && head[15] == b' '
            && head[16] == b'5';
        return len >= 8 && !status_5xx;
    }
    // Byte by byte: a slice comparison could become a memcmp call, which BPF does not have.
    len >= 12
        && head[0] == b'H'
        && head[1] == b'T'
        && head[2] == b'T'
        && head[3] == b'P'
        && head[4] == b'/'
        && head[5] == b'1'
        && head[6] == b'.'
        && head[8] == b' '
        && head[9] >= b'1'
        && head[9] <= b'4'
}

fn on_downstream_send(sk: u64, tgid: u32, tid: u32) {
    let Some(pending) = take_pending_status(tid) else {
        return;
    };
    if now_ns().saturating_sub(pending.ts_ns) > STATUS_MAX_AGE_NS {
        count(counter::STATUS_EXPIRED);
        return;
    }
    // A gateway that rejects a response it read (a header it will not take) answers 5xx at
    // once, on the same thread: what is held for that upstream socket goes first.
    let upstream = take_last_response(tid);
    if upstream != 0
        && let Some(owner) = owner_of(upstream)
    {
        ship_held(upstream, owner);
    }
    emit(EventKind::HttpStatus, Who::Current(tgid, tid), |e| {
        e.sock = sk;
        fill_tuple_from_sock(e, sk);
        e.netns = sock_netns(sk);
        e.value = pending.status as i64;
        e.aux = pending.fd;
        e.data[..32].copy_from_slice(&pending.head);
        e.data[STATUS_STREAM_AT..STATUS_STREAM_AT + 4].copy_from_slice(&pending.stream.to_le_bytes());
        e.data[STATUS_SEEN_AT..STATUS_SEEN_AT + 4].copy_from_slice(&pending.seen.to_le_bytes());
    });
}

/// The receive hook as tp_btf (see `sock_send_length_btf`).
#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length_btf(ctx: BtfTracePointContext) -> u32 {
    done(on_recv(|| Ok((ctx.arg(0), ctx.arg(1))), sock_family, sock_protocol))
}

/// The classic tracepoint, where tp_btf cannot attach: the same fields, from its record.
#[tracepoint(category = "sock", name = "sock_recv_length")]
pub fn sock_recv_length(ctx: TracePointContext) -> u32 {
    done(on_recv(
        || Ok((tp_field(&ctx, cfg_get!(tp.recv_len_sk))?, tp_field(&ctx, cfg_get!(tp.recv_len_ret))?)),
        |_| tp_field(&ctx, cfg_get!(tp.recv_len_family)).unwrap_or(0),
        |_| tp_field(&ctx, cfg_get!(tp.recv_len_protocol)).unwrap_or(0),
    ))
}

/// A traced process's receive on socket `sk` (read by `call` only for traced processes).
#[inline(always)]
fn on_recv(
    call: impl FnOnce() -> Result<(u64, i32), i32>,
    family: impl FnOnce(u64) -> u16,
    protocol: impl FnOnce(u64) -> u16,
) -> Result<(), i32> {
    let (tgid, tid) = current_ids();
    if !is_traced(tgid) {
        return Ok(());
    }
    let (sk, ret) = call()?;
    // Reads after CLOSE (data that arrived before an RST, the error itself) count too.
    let owner = owner_of(sk).or_else(|| unix_owner_of(sk, family(sk)));
    let Some(owner) = owner else {
        // UDP answers; and TCP answers on a resolver connection older than the trace (one
        // read of the port per read of a client's request: the price of seeing them).
        let protocol = protocol(sk) as u8;
        if protocol == IPPROTO_UDP || (protocol == IPPROTO_TCP && ret > 0) {
            on_dns(EventKind::DnsAnswer, protocol, sk, tgid, tid, syscall_buffer, ret);
        }
        return Ok(());
    };
    let unix = owner.ino != 0;
    if ret > 0 {
        owner.bytes_recv += ret as u64;
        let first = owner.phase != PHASE_RECEIVING;
        // Unix-socket upstreams (FastCGI) are judged by each read's last bytes.
        let buf = if first || unix { syscall_buffer() } else { 0 };
        if first {
            owner.phase = PHASE_RECEIVING;
            on_response_start(sk, owner, ret, tid, buf);
        }
        if unix && buf != 0 {
            on_unix_read(sk, owner, buf, ret);
        }
    } else if ret != -errno::EAGAIN {
        if ret == 0 && owner.flags & OWNER_QUIET != 0 {
            // A whole FastCGI exchange, dropped in the kernel: its end of stream is its close.
            forget_unix_socket(sk);
            return Ok(());
        }
        ship_held(sk, owner);
        emit_socket(EventKind::RecvEnd, sk, owner, |e| {
            e.value = ret as i64;
            e.new_state = owner.tcp_state as u8;
            if owner.flags & OWNER_FCGI_ENDED != 0 {
                e.aux = RECV_END_AFTER_FCGI_END;
            }
        });
    }
    Ok(())
}

/// A FastCGI response ends with its 16-byte `FCGI_END_REQUEST` record (header: version 1,
/// type 3, request id, content length 8, no padding): a read ending with one ended the
/// response whole. If nothing about the exchange went out, it is dropped here.
#[inline(always)]
fn on_unix_read(sk: u64, owner: &mut SockOwner, buf: u64, len: i32) {
    if len < 16 {
        return;
    }
    let Some(h) = read_user::<[u8; 8]>(buf + len as u64 - 16) else { return };
    if !(h[0] == 1 && h[1] == 3 && h[4] == 0 && h[5] == 8 && h[6] == 0 && h[7] == 0) {
        return;
    }
    owner.flags |= OWNER_FCGI_ENDED;
    if held(sk).is_some() {
        let _ = HELD.remove(sk);
        owner.flags &= !OWNER_STORY_HELD;
        owner.flags |= OWNER_QUIET;
    }
}

/// The first bytes of a response. The data is already in the caller's buffer: keep its head,
/// so userspace can tell garbage and broken headers from a valid response.
#[inline(always)]
fn on_response_start(sk: u64, owner: &mut SockOwner, len: i32, tid: u32, buf: u64) {
    remember_last_response(tid, sk);
    if (owner.exchanges > 1 || owner.flags & OWNER_STORY_HELD != 0)
        && let Some(held) = held(sk)
    {
        held.response_ts = now_ns();
        held.response_bytes_sent = owner.bytes_sent;
        held.response_bytes_recv = owner.bytes_recv;
        held.response_len = len;
        held.head_len = read_head(buf, len, &mut held.head);
        if !plain_answer(&held.head, held.head_len, held.request_head[0] == TLS_HANDSHAKE) {
            ship_held(sk, owner);
        } else if owner.flags & OWNER_STORY_HELD != 0 {
            // A connection's end is judged by it (see `tcp::hold_state`).
            let slot = &raw mut held.response_expected;
            let forget = |x: u64| {
                // SAFETY: a field of the record this program holds (see maps.rs); volatile, so
                // the value is read back from map memory, not kept in a register.
                unsafe {
                    core::ptr::write_volatile(slot, x);
                    core::ptr::read_volatile(slot)
                }
            };
            let expected = response_length(&held.head, held.head_len, forget);
            held.response_expected = expected;
        }
        return;
    }
    emit_socket(EventKind::ResponseStart, sk, owner, |e| {
        e.value = len as i64;
        e.new_state = owner.tcp_state as u8;
        if let Some(head) = e.data.first_chunk_mut::<RESPONSE_HEAD>() {
            e.aux = read_head(buf, len, head);
        }
    });
}

/// Look at the plaintext a traced thread hands to TLS (`SSL_write`, Go's `Conn.Write`):
/// remember a 5xx status (an HTTP/1.x status line, or an HTTP/2 HEADERS frame's `:status`)
/// until the socket send that carries it (the ciphertext) names the client socket.
#[inline(always)]
pub fn peek_write(fd: u32, buf: u64, seen: u32) {
    let (tgid, tid) = current_ids();
    if is_traced(tgid) {
        look_for_status(tid, fd, buf, seen);
    }
}

/// Remember a 5xx status at the start of `buf` for the current thread's next client send. Only
/// a hit is kept, so the ciphertext send that follows `SSL_write` cannot clobber it.
#[inline(always)]
fn look_for_status(tid: u32, fd: u32, buf: u64, seen: u32) {
    let mut scan = [0u8; SCAN_LEN];
    // A short write near the end of its mapping cannot be read whole: its first 32 bytes
    // still hold any HTTP/1.x status line and a small HEADERS frame.
    if !read_user_bytes(buf, &mut scan) {
        scan = [0u8; SCAN_LEN];
        let Some(first) = scan.first_chunk_mut::<32>() else { return };
        if !read_user_bytes(buf, first) {
            return;
        }
    }
    let Some(found) = find_5xx(&scan) else { return };
    let mut head = [0u8; 32];
    if let Some(first) = scan.first_chunk::<32>() {
        head = *first;
    }
    let pending = PendingStatus { ts_ns: now_ns(), status: found.status as u32, fd, stream: found.stream, seen, head };
    if PENDING_STATUS.insert(tid, pending, 0).is_err() {
        count(counter::PENDING_MAP_FULL);
    }
}
