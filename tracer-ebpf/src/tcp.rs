//! TCP state machine hooks: connect start (ownership is recorded here, in the connecting
//! thread's own context), state changes, resets, retransmits and socket errors.
use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use tracer_common::{EventKind, OWNER_RST_IN_SYN_SENT, PeerKey, SockOwner, TcpState, counter, errno};

use crate::{
    done,
    event::{Who, emit, emit_socket, fill_tuple_from_sock, ship_held},
    maps::{
        CLOSED, LISTENERS, OWNED, add_peer, cfg_get, count, forget_socket, is_traced, new_owner, open_owner_of, owner_of,
        pending_connect_fd,
    },
    packet::IPPROTO_TCP,
    read::{current_ids, now_ns, read_kernel, sock_netns, tp_field},
};

const SYN_SENT: i32 = TcpState::SynSent as i32;
const CLOSE: i32 = TcpState::Close as i32;

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    done(try_inet_sock_set_state(&ctx))
}

fn try_inet_sock_set_state(ctx: &TracePointContext) -> Result<(), i32> {
    let protocol: u16 = tp_field(ctx, cfg_get!(tp.set_state_protocol))?;
    if protocol != IPPROTO_TCP as u16 {
        return Ok(());
    }
    let sk: u64 = tp_field(ctx, cfg_get!(tp.set_state_skaddr))?;
    let old: i32 = tp_field(ctx, cfg_get!(tp.set_state_oldstate))?;
    let new: i32 = tp_field(ctx, cfg_get!(tp.set_state_newstate))?;
    if new == SYN_SENT && old == CLOSE {
        // connect(): we are in the connecting thread, so pid/comm are the real owner's.
        on_connect_start(sk);
    } else if new == TcpState::SynRecv as i32 {
        // The socket memory is being reused by an accepted socket: forget any old owner.
        forget_socket(sk);
    } else if new == TcpState::Listen as i32 {
        on_listen(sk);
    } else {
        on_owned_state_change(sk, old, new);
    }
    Ok(())
}

fn on_connect_start(sk: u64) {
    // A reused socket address must not keep a stale owner.
    forget_socket(sk);
    let (tgid, tid) = current_ids();
    if !is_traced(tgid) || tgid == cfg_get!(self_tgid) {
        return;
    }
    let fd = pending_connect_fd(tid).unwrap_or(u32::MAX);
    let owner = new_owner(sk, tgid, tid, fd, SYN_SENT as u32, 0);
    if OWNED.insert(sk, owner, 0).is_err() {
        count(counter::OWNED_MAP_FULL);
    }
    let mut peer = PeerKey::default();
    emit_socket(EventKind::ConnectStart, sk, &owner, |e| {
        e.old_state = CLOSE as u8;
        e.new_state = SYN_SENT as u8;
        peer.addr = e.daddr;
        peer.port = e.dport;
    });
    // Let the packet hooks know this endpoint matters (drops, ICMP errors).
    add_peer(peer, now_ns());
}

fn on_listen(sk: u64) {
    forget_socket(sk);
    let (tgid, tid) = current_ids();
    if LISTENERS.insert(tgid, 1, 0).is_err() {
        count(counter::LISTENER_MAP_FULL);
    }
    emit(EventKind::Listen, Who::Current(tgid, tid), |e| {
        e.sock = sk;
        fill_tuple_from_sock(e, sk);
        e.netns = sock_netns(sk);
        e.aux = e.sport as u32;
    });
}

fn on_owned_state_change(sk: u64, old: i32, new: i32) {
    let Some(owner) = open_owner_of(sk) else {
        return;
    };
    ship_held(sk, owner);
    owner.tcp_state = new as u32;
    let refused = old == SYN_SENT && new == CLOSE && owner.flags & OWNER_RST_IN_SYN_SENT != 0;
    if !refused {
        emit_socket(EventKind::StateChange, sk, owner, |e| {
            e.old_state = old as u8;
            e.new_state = new as u8;
        });
    }
    if new == CLOSE {
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
        emit_for_owner(sk, owner, kind, value);
    }
}

/// Whatever is held for the socket goes first: this event may explain a failure.
#[inline(always)]
fn emit_for_owner(sk: u64, owner: &SockOwner, kind: EventKind, value: i64) {
    ship_held(sk, owner);
    emit_socket(kind, sk, owner, |e| {
        e.new_state = owner.tcp_state as u8;
        e.value = value;
    });
}

#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    done(try_tcp_receive_reset(&ctx))
}

fn try_tcp_receive_reset(ctx: &TracePointContext) -> Result<(), i32> {
    let sk: u64 = tp_field(ctx, cfg_get!(tp.recv_reset_skaddr))?;
    let Some(owner) = owner_of(sk) else {
        return Ok(());
    };
    if owner.tcp_state == SYN_SENT as u32 {
        owner.flags |= OWNER_RST_IN_SYN_SENT;
    }
    emit_for_owner(sk, owner, EventKind::ResetReceived, 0);
    Ok(())
}

#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    done(try_tcp_send_reset(&ctx))
}

fn try_tcp_send_reset(ctx: &TracePointContext) -> Result<(), i32> {
    let sk: u64 = tp_field(ctx, cfg_get!(tp.send_reset_skaddr))?;
    let state: i32 = tp_field(ctx, cfg_get!(tp.send_reset_state))?;
    emit_owned(sk, EventKind::ResetSent, state as i64);
    Ok(())
}

#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    done(try_tcp_retransmit_skb(&ctx))
}

fn try_tcp_retransmit_skb(ctx: &TracePointContext) -> Result<(), i32> {
    let sk: u64 = tp_field(ctx, cfg_get!(tp.retransmit_skaddr))?;
    let state: i32 = tp_field(ctx, cfg_get!(tp.retransmit_state))?;
    emit_owned(sk, EventKind::Retransmit, state as i64);
    Ok(())
}

/// The tp_btf flavour gives the socket pointer (the plain tracepoint only has the tuple, whose
/// source port is already cleared after close).
#[btf_tracepoint(function = "inet_sk_error_report")]
pub fn inet_sk_error_report(ctx: BtfTracePointContext) -> u32 {
    done(try_inet_sk_error_report(&ctx))
}

fn try_inet_sk_error_report(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let sk: u64 = ctx.arg(0);
    if sk == 0 {
        return Ok(());
    }
    let Some(owner) = owner_of(sk) else {
        return Ok(());
    };
    let err: i32 = read_kernel(sk, cfg_get!(kernel.sk_err)).unwrap_or(0);
    if err == errno::ECONNREFUSED && owner.flags & OWNER_RST_IN_SYN_SENT != 0 {
        return Ok(());
    }
    emit_for_owner(sk, owner, EventKind::SockError, err as i64);
    Ok(())
}
