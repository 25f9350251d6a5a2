//! TCP state machine hooks: connect start (ownership is recorded here, in the connecting
//! thread's own context), state changes, resets, retransmits and socket errors.
use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use tracer_common::{EventKind, OWNER_RST_IN_SYN_SENT, PeerKey, SockOwner, counter};

use crate::maps::{cfg_get, 
    CLOSED, LISTENERS, OWNED, PEERS, PENDING_CONNECT, forget_socket, new_owner, now_ns, owner_of, ship_held, count, current_cgroup, current_comm, current_ids,
    emit, fill_owner, fill_tuple_from_sock, is_traced, read_kernel, sock_netns,
};

const IPPROTO_TCP: u16 = 6;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;
const ECONNREFUSED: i32 = 111;

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let Ok(protocol) = (unsafe { ctx.read_at::<u16>(cfg_get!(tp.set_state_protocol) as usize) }) else {
        return 0;
    };
    if protocol != IPPROTO_TCP {
        return 0;
    }
    let (Ok(sk), Ok(old), Ok(new)) = (unsafe {
        (
            ctx.read_at::<u64>(cfg_get!(tp.set_state_skaddr) as usize),
            ctx.read_at::<i32>(cfg_get!(tp.set_state_oldstate) as usize),
            ctx.read_at::<i32>(cfg_get!(tp.set_state_newstate) as usize),
        )
    }) else {
        return 0;
    };

    match new {
        // connect(): we are in the connecting thread, so pid/comm are the real owner's.
        TCP_SYN_SENT if old == TCP_CLOSE => on_connect_start(sk),
        // The socket memory is being reused by an accepted socket: forget any old owner.
        TCP_SYN_RECV => forget_socket(sk),
        TCP_LISTEN => on_listen(sk),
        _ => on_owned_state_change(sk, old, new),
    }
    0
}

fn on_connect_start(sk: u64) {
    // A reused socket address must not keep a stale owner.
    forget_socket(sk);
    let (tgid, tid) = current_ids();
    if !is_traced(tgid) || tgid == cfg_get!(self_tgid) {
        return;
    }
    let fd = unsafe { PENDING_CONNECT.get(tid) }.map(|p| p.fd).unwrap_or(u32::MAX);
    let owner = new_owner(sk, tgid, tid, fd, TCP_SYN_SENT as u32, 0);
    if OWNED.insert(sk, owner, 0).is_err() {
        count(counter::OWNED_MAP_FULL);
    }
    let mut peer = PeerKey::default();
    emit(EventKind::ConnectStart, |e| {
        e.sock = sk;
        fill_owner(e, &owner);
        fill_tuple_from_sock(e, sk);
        e.old_state = TCP_CLOSE as u8;
        e.new_state = TCP_SYN_SENT as u8;
        peer.addr = e.daddr;
        peer.port = e.dport;
    });
    // Let the packet hooks know this endpoint matters (drops, ICMP errors).
    if unsafe { PEERS.get(peer) }.is_none() {
        count(counter::PEERS_ADDED);
    }
    let _ = PEERS.insert(peer, now_ns(), 0);
}

fn on_listen(sk: u64) {
    forget_socket(sk);
    let (tgid, tid) = current_ids();
    if LISTENERS.insert(tgid, 1, 0).is_err() {
        count(counter::LISTENER_MAP_FULL);
    }
    emit(EventKind::Listen, |e| {
        e.sock = sk;
        e.pid = tgid;
        e.tid = tid;
        e.comm = current_comm();
        e.cgroup = current_cgroup();
        fill_tuple_from_sock(e, sk);
        e.netns = sock_netns(sk);
        e.aux = e.sport as u32;
    });
}

fn on_owned_state_change(sk: u64, old: i32, new: i32) {
    let Some(owner) = OWNED.get_ptr_mut(sk) else {
        return;
    };
    let owner = unsafe { &mut *owner };
    ship_held(sk, owner);
    owner.tcp_state = new as u32;
    let refused = old == TCP_SYN_SENT && new == TCP_CLOSE && owner.flags & OWNER_RST_IN_SYN_SENT != 0;
    if !refused {
        emit(EventKind::StateChange, |e| {
            e.sock = sk;
            fill_owner(e, owner);
            fill_tuple_from_sock(e, sk);
            e.old_state = old as u8;
            e.new_state = new as u8;
        });
    }
    if new == TCP_CLOSE {
        // Open sockets are never evicted; closed ones make room for each other.
        let closed = *owner;
        if CLOSED.insert(sk, closed, 0).is_ok() {
            count(counter::CLOSED_ADDED);
        }
        let _ = OWNED.remove(sk);
    }
}

/// Emit a socket event for an owned socket; softirq context, so identity comes from the map.
#[inline(always)]
fn emit_owned(sk: u64, kind: EventKind, value: i64) {
    if sk == 0 {
        return;
    }
    if let Some(owner) = owner_of(sk) {
        emit_for_owner(sk, unsafe { &*owner }, kind, value);
    }
}

/// Whatever is held for the socket goes first: this event may explain a failure.
#[inline(always)]
fn emit_for_owner(sk: u64, owner: &SockOwner, kind: EventKind, value: i64) {
    ship_held(sk, owner);
    emit(kind, |e| {
        e.sock = sk;
        fill_owner(e, owner);
        fill_tuple_from_sock(e, sk);
        e.new_state = owner.tcp_state as u8;
        e.value = value;
    });
}

#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    let Ok(sk) = (unsafe { ctx.read_at::<u64>(cfg_get!(tp.recv_reset_skaddr) as usize) }) else {
        return 0;
    };
    let Some(owner) = owner_of(sk) else {
        return 0;
    };
    let owner = unsafe { &mut *owner };
    if owner.tcp_state == TCP_SYN_SENT as u32 {
        owner.flags |= OWNER_RST_IN_SYN_SENT;
    }
    emit_for_owner(sk, owner, EventKind::ResetReceived, 0);
    0
}

#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    let (Ok(sk), Ok(state)) = (unsafe {
        (
            ctx.read_at::<u64>(cfg_get!(tp.send_reset_skaddr) as usize),
            ctx.read_at::<i32>(cfg_get!(tp.send_reset_state) as usize),
        )
    }) else {
        return 0;
    };
    emit_owned(sk, EventKind::ResetSent, state as i64);
    0
}

#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    let (Ok(sk), Ok(state)) = (unsafe {
        (
            ctx.read_at::<u64>(cfg_get!(tp.retransmit_skaddr) as usize),
            ctx.read_at::<i32>(cfg_get!(tp.retransmit_state) as usize),
        )
    }) else {
        return 0;
    };
    emit_owned(sk, EventKind::Retransmit, state as i64);
    0
}

/// The tp_btf flavour gives the socket pointer (the plain tracepoint only has the tuple, whose
/// source port is already cleared after close).
#[btf_tracepoint(function = "inet_sk_error_report")]
pub fn inet_sk_error_report(ctx: BtfTracePointContext) -> u32 {
    let sk: u64 = ctx.arg(0);
    if sk == 0 {
        return 0;
    }
    let Some(owner) = owner_of(sk) else {
        return 0;
    };
    let owner = unsafe { &*owner };
    let err: i32 = read_kernel(sk, cfg_get!(kernel.sk_err)).unwrap_or(0);
    if err == ECONNREFUSED && owner.flags & OWNER_RST_IN_SYN_SENT != 0 {
        return 0;
    }
    emit_for_owner(sk, owner, EventKind::SockError, err as i64);
    0
}

