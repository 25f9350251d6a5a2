//! Building and sending events: `emit` is the one place that fills an `Event`'s time, kind and
//! identity (pid, tid, comm, cgroup), for every program that sends one.
use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use tracer_common::{
    AF_UNIX, COMM_LEN, Event, EventKind, Exchange, HELD_STATES, OWNER_OPENING_SHIPPED, OWNER_QUIET, OWNER_STORY_HELD, PATH_LEN,
    REQUEST_HEAD, RESPONSE_HEAD, RING_BYTES, SockOwner, TcpState, counter,
};

use crate::{
    config::{cfg_get, count},
    maps::{EVENTS, HELD, UNIX_OPENINGS, held},
    read::{current_cgroup, current_comm, now_ns, read_kernel},
};

/// Whom an event is about.
pub enum Who<'a> {
    /// The task running the hook, in its own context (tgid, tid); comm and cgroup are read now.
    Current(u32, u32),
    /// The process that connected a socket, as recorded then (socket hooks often run in
    /// softirq context, on behalf of whatever task is on the CPU): identity, netns, the
    /// socket's byte counters and fd.
    Owner(&'a SockOwner),
    /// Another process, as the hook's record names it (pid, comm): a signal's target.
    Process(u32, [u8; COMM_LEN]),
    /// No process (packet events).
    Nobody,
}

/// Bytes waiting in the ring buffer from which a submit wakes userspace at once. Below that,
/// userspace reads the ring on its own 10 ms tick: in a storm, a wakeup per submit cost an
/// irq_work in the gateway's own context and a context switch in upstrace's.
const WAKE_AT_BYTES: u64 = RING_BYTES as u64 / 64;

/// Reserve an event in the ring buffer, zero it, stamp it with the time, `kind` and `who`, let
/// `fill` write the rest, and submit it. A full ring buffer is counted, never silent.
#[inline(always)]
pub fn emit(kind: EventKind, who: Who, fill: impl FnOnce(&mut Event)) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(counter::RINGBUF_FULL);
        return;
    };
    let event = entry.write(Event::zeroed());
    event.ts_ns = now_ns();
    event.kind = kind as u8;
    match who {
        Who::Current(tgid, tid) => {
            event.pid = tgid;
            event.tid = tid;
            event.comm = current_comm();
            event.cgroup = current_cgroup();
        }
        Who::Owner(owner) => fill_owner(event, owner),
        Who::Process(pid, comm) => {
            event.pid = pid;
            event.tid = pid;
            event.comm = comm;
        }
        Who::Nobody => {}
    }
    fill(event);
    let waiting = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    entry.submit(if waiting >= WAKE_AT_BYTES { BPF_RB_FORCE_WAKEUP } else { BPF_RB_NO_WAKEUP } as u64);
}

/// Copy a socket owner's identity and the socket's byte counters into an event.
#[inline(always)]
fn fill_owner(event: &mut Event, owner: &SockOwner) {
    event.pid = owner.pid;
    event.tid = owner.tid;
    // A non-overlapping copy, which the BPF backend inlines (`event.comm = owner.comm` here
    // became a call to memmove: the compiler cannot tell the two records apart).
    event.comm.copy_from_slice(&owner.comm);
    event.cgroup = owner.cgroup;
    event.netns = owner.netns;
    event.bytes_sent = owner.bytes_sent;
    event.bytes_recv = owner.bytes_recv;
    event.aux = owner.fd;
}

/// `emit` for an event on upstream socket `sk`: the owner's identity and the socket's tuple.
#[inline(always)]
pub fn emit_socket(kind: EventKind, sk: u64, owner: &SockOwner, fill: impl FnOnce(&mut Event)) {
    emit(kind, Who::Owner(owner), |e| {
        e.sock = sk;
        fill_tuple_from_sock(e, sk);
        fill(e);
    });
}

/// Fill the 4-tuple from the socket itself (offsets come from BTF). Local side is
/// `saddr`/`sport`, remote side `daddr`/`dport`.
#[inline(always)]
pub fn fill_tuple_from_sock(event: &mut Event, sk: u64) {
    let family: u16 = read_kernel(sk, cfg_get!(kernel.skc_family)).unwrap_or(0);
    event.family = family as u8;
    if family == tracer_common::AF_INET6 as u16 {
        event.saddr = read_kernel(sk, cfg_get!(kernel.skc_v6_rcv_saddr)).unwrap_or([0; 16]);
        event.daddr = read_kernel(sk, cfg_get!(kernel.skc_v6_daddr)).unwrap_or([0; 16]);
    } else {
        let s: [u8; 4] = read_kernel(sk, cfg_get!(kernel.skc_rcv_saddr)).unwrap_or([0; 4]);
        let d: [u8; 4] = read_kernel(sk, cfg_get!(kernel.skc_daddr)).unwrap_or([0; 4]);
        event.saddr[..4].copy_from_slice(&s);
        event.daddr[..4].copy_from_slice(&d);
    }
    event.sport = read_kernel::<u16>(sk, cfg_get!(kernel.skc_num)).unwrap_or(0);
    event.dport = u16::from_be(read_kernel::<u16>(sk, cfg_get!(kernel.skc_dport)).unwrap_or(0));
}

/// The `ConnectSyscall` a unix-socket upstream's held opening stands for (see `connect.rs`).
#[inline(always)]
fn ship_unix_opening(sk: u64, owner: &SockOwner) {
    let Some(opening) = UNIX_OPENINGS.get_ptr(sk) else { return };
    // SAFETY: a map value, read before the record is removed below.
    let opening = unsafe { &*opening };
    emit(EventKind::ConnectSyscall, Who::Owner(owner), |e| {
        e.ts_ns = opening.ts_ns;
        e.sock = sk;
        e.family = AF_UNIX;
        e.aux = opening.fd;
        e.bytes_sent = 0;
        e.bytes_recv = 0;
        e.data[..PATH_LEN].copy_from_slice(&opening.path);
    });
    let _ = UNIX_OPENINGS.remove(sk);
}

/// `emit` for a held fact: the owner's identity, the tuple kept in the record (by then the
/// socket may be closed, its port cleared, or freed) and the fact's own time.
#[inline(always)]
fn emit_held(kind: EventKind, sk: u64, owner: &SockOwner, held: &Exchange, ts: u64, fill: impl FnOnce(&mut Event)) {
    emit(kind, Who::Owner(owner), |e| {
        e.sock = sk;
        e.family = held.family;
        e.saddr = held.saddr;
        e.daddr = held.daddr;
        e.dport = held.dport;
        e.sport = held.sport;
        e.ts_ns = ts;
        fill(e);
    });
}

/// Ship what is held for a socket, as the events it stands for (each stamped with its own
/// time), ahead of the event that makes it worth knowing: the connection's opening if it is
/// held (connect, then its state changes), then the exchange (request, response start). The
/// engine sets fields from them whatever their order; the response goes last so that the
/// attempt's byte counts are the latest. From here on the connection's events go out live.
#[inline(always)]
pub fn ship_held(sk: u64, owner: &mut SockOwner) {
    let story = owner.flags & OWNER_STORY_HELD != 0;
    owner.flags &= !(OWNER_STORY_HELD | OWNER_QUIET);
    // Unix sockets are known by their inode; their opening is the connect(2) with its path.
    let unix = owner.ino != 0;
    if unix && owner.flags & OWNER_OPENING_SHIPPED == 0 {
        owner.flags |= OWNER_OPENING_SHIPPED;
        ship_unix_opening(sk, owner);
    }
    let Some(held) = held(sk) else {
        return;
    };
    let owner: &SockOwner = owner;
    if unix {
        // No tuple, no TCP states: the exchange alone.
    } else if held.family == 0 {
        // An exchange held on a connection whose opening was not: the socket is open.
        let mut e = Event::zeroed();
        fill_tuple_from_sock(&mut e, sk);
        held.family = e.family;
        held.saddr = e.saddr;
        held.daddr = e.daddr;
        held.sport = e.sport;
        held.dport = e.dport;
    } else if held.sport == 0 {
        // Never established: the port was bound after SYN_SENT, and is still there.
        held.sport = read_kernel::<u16>(sk, cfg_get!(kernel.skc_num)).unwrap_or(0);
    }
    if !unix && story && held.connect_ts != 0 {
        emit_held(EventKind::ConnectStart, sk, owner, held, held.connect_ts, |e| {
            e.old_state = TcpState::Close as u8;
            e.new_state = TcpState::SynSent as u8;
        });
        let states = held.states as usize;
        for i in 0..HELD_STATES {
            if i >= states {
                break;
            }
            let (old, new) = (held.state_old[i], held.state_new[i]);
            emit_held(EventKind::StateChange, sk, owner, held, held.state_ts[i], |e| {
                e.old_state = old;
                e.new_state = new;
            });
        }
    }
    if held.request_ts != 0 {
        emit_held(EventKind::RequestSent, sk, owner, held, held.request_ts, |e| {
            e.bytes_sent = held.request_bytes_sent;
            e.bytes_recv = held.request_bytes_recv;
            e.value = held.request_len as i64;
            e.new_state = TcpState::Established as u8;
            e.data[..REQUEST_HEAD].copy_from_slice(&held.request_head);
        });
    }
    if held.response_ts != 0 {
        emit_held(EventKind::ResponseStart, sk, owner, held, held.response_ts, |e| {
            e.bytes_sent = held.response_bytes_sent;
            e.bytes_recv = held.response_bytes_recv;
            e.value = held.response_len as i64;
            e.new_state = TcpState::Established as u8;
            e.aux = held.head_len;
            e.data[..RESPONSE_HEAD].copy_from_slice(&held.head);
        });
    }
    let _ = HELD.remove(sk);
}
