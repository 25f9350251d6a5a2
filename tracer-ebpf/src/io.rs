//! Socket I/O of traced processes: byte counts on upstream sockets (one event per exchange,
//! not per call), and 5xx status lines written to downstream (client) sockets.
use aya_ebpf::{
    helpers::{bpf_probe_read_user, bpf_probe_read_user_buf},
    macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{
    EventKind, Exchange, PHASE_RECEIVING, PHASE_SENDING, PendingStatus, RESPONSE_HEAD, SockOwner,
    counter,
};

use crate::maps::{
    HELD, OWNED, PENDING_RECV, PENDING_STATUS, owner_of, take_recv_buffer, unix_owner_of, cfg_get, count, current_cgroup, current_comm,
    current_ids, emit, fill_owner, fill_tuple_from_sock, is_traced, now_ns, ship_held, sock_netns,
};

const ARG0: usize = 16;
const ARG1: usize = 24;
const EAGAIN: i32 = -11;
/// A status line must reach the socket within this long of the write(2) that carried it
/// (else it went to something that is not a socket and must not stick to a later send).
/// Generous: a thread preempted, or a vCPU descheduled by the hypervisor, between syscall
/// entry and the socket send can take tens of milliseconds (10 ms lost one 5xx in 205k in a
/// 30-minute soak).
const STATUS_MAX_AGE_NS: u64 = 1_000_000_000;

#[tracepoint(category = "sock", name = "sock_send_length")]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current_ids();
    if !is_traced(tgid) {
        return 0;
    }
    let (Ok(sk), Ok(ret)) = (unsafe {
        (ctx.read_at::<u64>(cfg_get!(tp.send_len_sk) as usize), ctx.read_at::<i32>(cfg_get!(tp.send_len_ret) as usize))
    }) else {
        return 0;
    };
    let owner = OWNED.get_ptr_mut(sk).or_else(|| {
        let family = unsafe { ctx.read_at::<u16>(cfg_get!(tp.send_len_family) as usize) }.unwrap_or(0);
        unix_owner_of(sk, family)
    });
    if let Some(owner) = owner {
        let owner = unsafe { &mut *owner };
        if ret > 0 {
            owner.bytes_sent += ret as u64;
            if owner.phase != PHASE_SENDING {
                owner.phase = PHASE_SENDING;
                owner.exchanges += 1;
                // The first exchange on a connection goes out at once; later ones on a kept-alive
                // connection are held, and only shipped if something goes wrong.
                if owner.exchanges > 1 && hold_request(sk, owner, ret) {
                    return 0;
                }
                emit(EventKind::RequestSent, |e| {
                    e.sock = sk;
                    fill_owner(e, owner);
                    fill_tuple_from_sock(e, sk);
                    e.value = ret as i64;
                    e.new_state = owner.tcp_state as u8;
                });
            }
        }
        return 0;
    }
    on_downstream_send(sk, tgid, tid);
    0
}

#[inline(always)]
fn hold_request(sk: u64, owner: &SockOwner, len: i32) -> bool {
    let now = now_ns();
    if let Some(held) = HELD.get_ptr_mut(sk) {
        // The previous exchange ended well (the gateway is sending the next request): forget it.
        let held = unsafe { &mut *held };
        held.request_ts = now;
        held.request_bytes_sent = owner.bytes_sent;
        held.request_bytes_recv = owner.bytes_recv;
        held.request_len = len;
        held.response_ts = 0;
        held.head_len = 0;
        return true;
    }
    let held = Exchange {
        request_ts: now,
        request_bytes_sent: owner.bytes_sent,
        request_bytes_recv: owner.bytes_recv,
        response_ts: 0,
        response_bytes_sent: 0,
        response_bytes_recv: 0,
        request_len: len,
        response_len: 0,
        head_len: 0,
        _pad: 0,
        head: [0; RESPONSE_HEAD],
    };
    if HELD.insert(sk, held, 0).is_err() {
        count(counter::EXCHANGE_MAP_FULL);
        return false;
    }
    true
}

/// Read the head of a response from the caller's buffer; returns how many bytes are valid.
#[inline(always)]
fn read_head(buf: u64, len: i32, head: &mut [u8; RESPONSE_HEAD]) -> u32 {
    if buf == 0 {
        return 0;
    }
    let n = if (len as usize) < RESPONSE_HEAD { len as u32 } else { RESPONSE_HEAD as u32 };
    if unsafe { bpf_probe_read_user_buf(buf as *const u8, &mut head[..]) }.is_ok() {
        return n;
    }
    // The buffer ends close by: settle for less.
    if unsafe { bpf_probe_read_user_buf(buf as *const u8, &mut head[..32]) }.is_ok() {
        return if n < 32 { n } else { 32 };
    }
    0
}

/// A response that starts like a plain HTTP/1.x 1xx-4xx answer explains no 5xx by itself.
#[inline(always)]
fn plain_answer(head: &[u8; RESPONSE_HEAD], len: u32) -> bool {
    if len == 0 {
        return true; // nothing to judge by (a read(2) caller): hold it like the rest
    }
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
    let Some(pending) = (unsafe { PENDING_STATUS.get(tid) }) else {
        return;
    };
    let pending = *pending;
    let _ = PENDING_STATUS.remove(tid);
    if now_ns().saturating_sub(pending.ts_ns) > STATUS_MAX_AGE_NS {
        count(counter::STATUS_EXPIRED);
        return;
    }
    emit(EventKind::HttpStatus, |e| {
        e.sock = sk;
        e.pid = tgid;
        e.tid = tid;
        e.comm = current_comm();
        e.cgroup = current_cgroup();
        fill_tuple_from_sock(e, sk);
        e.netns = sock_netns(sk);
        e.value = pending.status as i64;
        e.aux = pending.fd;
        e.data[..32].copy_from_slice(&pending.head);
    });
}

#[tracepoint(category = "sock", name = "sock_recv_length")]
pub fn sock_recv_length(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current_ids();
    if !is_traced(tgid) {
        return 0;
    }
    let (Ok(sk), Ok(ret)) = (unsafe {
        (ctx.read_at::<u64>(cfg_get!(tp.recv_len_sk) as usize), ctx.read_at::<i32>(cfg_get!(tp.recv_len_ret) as usize))
    }) else {
        return 0;
    };
    // Reads after CLOSE (data that arrived before an RST, the error itself) count too.
    let owner = owner_of(sk).or_else(|| {
        let family = unsafe { ctx.read_at::<u16>(cfg_get!(tp.recv_len_family) as usize) }.unwrap_or(0);
        unix_owner_of(sk, family)
    });
    let Some(owner) = owner else {
        // Not an upstream socket: its buffer must not be taken for a later read(2) of one.
        take_recv_buffer(tid);
        return 0;
    };
    let owner = unsafe { &mut *owner };
    if ret > 0 {
        owner.bytes_recv += ret as u64;
        if owner.phase != PHASE_RECEIVING {
            owner.phase = PHASE_RECEIVING;
            // The data is already in the caller's buffer: keep its head, so userspace can
            // tell garbage and broken headers from a valid response.
            let buf = take_recv_buffer(tid);
            if owner.exchanges > 1 {
                if let Some(held) = HELD.get_ptr_mut(sk) {
                    let held = unsafe { &mut *held };
                    held.response_ts = now_ns();
                    held.response_bytes_sent = owner.bytes_sent;
                    held.response_bytes_recv = owner.bytes_recv;
                    held.response_len = ret;
                    held.head_len = read_head(buf, ret, &mut held.head);
                    if !plain_answer(&held.head, held.head_len) {
                        ship_held(sk, owner);
                    }
                    return 0;
                }
            }
            emit(EventKind::ResponseStart, |e| {
                e.sock = sk;
                fill_owner(e, owner);
                fill_tuple_from_sock(e, sk);
                e.value = ret as i64;
                e.new_state = owner.tcp_state as u8;
                let head = unsafe { &mut *(e.data.as_mut_ptr() as *mut [u8; RESPONSE_HEAD]) };
                e.aux = read_head(buf, ret, head);
            });
        }
    } else if ret != EAGAIN {
        ship_held(sk, owner);
        emit(EventKind::RecvEnd, |e| {
            e.sock = sk;
            fill_owner(e, owner);
            fill_tuple_from_sock(e, sk);
            e.value = ret as i64;
            e.new_state = owner.tcp_state as u8;
        });
    }
    0
}

/// Parse "HTTP/1.x 5dd" at the start of a buffer; returns the status or 0.
#[inline(always)]
fn status_5xx(head: &[u8; 32]) -> u32 {
    if head[0] != b'H' || head[1] != b'T' || head[2] != b'T' || head[3] != b'P' {
        return 0;
    }
    if head[4] != b'/' || head[5] != b'1' || head[6] != b'.' || head[8] != b' ' || head[9] != b'5'
    {
        return 0;
    }
    let (d1, d2) = (head[10], head[11]);
    if !d1.is_ascii_digit() || !d2.is_ascii_digit() {
        return 0;
    }
    500 + (d1 - b'0') as u32 * 10 + (d2 - b'0') as u32
}

/// Look at the first bytes a traced thread writes; remember a 5xx status line until the socket
/// send that carries it (sock_send_length knows the socket, the syscall only knows the fd).
#[inline(always)]
fn peek_write(fd: u64, buf: u64) {
    let (tgid, tid) = current_ids();
    if !is_traced(tgid) {
        return;
    }
    let mut head = [0u8; 32];
    if unsafe { bpf_probe_read_user_buf(buf as *const u8, &mut head) }.is_err() {
        return;
    }
    let status = status_5xx(&head);
    if status == 0 {
        return;
    }
    let pending = PendingStatus { ts_ns: now_ns(), status, fd: fd as u32, head };
    if PENDING_STATUS.insert(tid, pending, 0).is_err() {
        count(counter::PENDING_MAP_FULL);
    }
}

#[tracepoint(category = "syscalls", name = "sys_enter_write")]
pub fn sys_enter_write(ctx: TracePointContext) -> u32 {
    if let (Ok(fd), Ok(buf)) = unsafe { (ctx.read_at::<u64>(ARG0), ctx.read_at::<u64>(ARG1)) } {
        peek_write(fd, buf);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_sendto")]
pub fn sys_enter_sendto(ctx: TracePointContext) -> u32 {
    if let (Ok(fd), Ok(buf)) = unsafe { (ctx.read_at::<u64>(ARG0), ctx.read_at::<u64>(ARG1)) } {
        peek_write(fd, buf);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_writev")]
pub fn sys_enter_writev(ctx: TracePointContext) -> u32 {
    if let (Ok(fd), Ok(iov)) = unsafe { (ctx.read_at::<u64>(ARG0), ctx.read_at::<u64>(ARG1)) } {
        // iov[0].iov_base (user ABI: struct iovec { void *base; size_t len; }).
        if let Ok(base) = unsafe { bpf_probe_read_user(iov as *const u64) } {
            peek_write(fd, base);
        }
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_sendmsg")]
pub fn sys_enter_sendmsg(ctx: TracePointContext) -> u32 {
    if let (Ok(fd), Ok(msg)) = unsafe { (ctx.read_at::<u64>(ARG0), ctx.read_at::<u64>(ARG1)) } {
        // msg->msg_iov is at offset 16 of the user ABI's struct msghdr on 64-bit.
        if let Ok(iov) = unsafe { bpf_probe_read_user((msg + 16) as *const u64) } {
            if let Ok(base) = unsafe { bpf_probe_read_user(iov as *const u64) } {
                peek_write(fd, base);
            }
        }
    }
    0
}

#[inline(always)]
fn remember_recv_buffer(buf: u64) {
    let (tgid, tid) = current_ids();
    if is_traced(tgid) {
        if let Some(slot) = PENDING_RECV.get_ptr_mut(0) {
            unsafe { *slot = crate::maps::RecvBuffer { tid, _pad: 0, buf } };
        }
    }
}

#[tracepoint(category = "syscalls", name = "sys_enter_recvfrom")]
pub fn sys_enter_recvfrom(ctx: TracePointContext) -> u32 {
    if let Ok(buf) = unsafe { ctx.read_at::<u64>(ARG1) } {
        remember_recv_buffer(buf);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_readv")]
pub fn sys_enter_readv(ctx: TracePointContext) -> u32 {
    if let Ok(iov) = unsafe { ctx.read_at::<u64>(ARG1) } {
        if let Ok(base) = unsafe { bpf_probe_read_user(iov as *const u64) } {
            remember_recv_buffer(base);
        }
    }
    0
}
