//! TCP state machine hooks: connect start (ownership is recorded here, in the connecting
//! thread's own context), state changes, resets, retransmits and socket errors.
use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use tracer_common::{
    AF_INET6, EventKind, Exchange, HELD_STATES, OWNER_RST_IN_SYN_SENT, OWNER_STORY_HELD, PHASE_RECEIVING, PeerKey, SockOwner, TcpState,
    counter, errno,
};

use crate::{
    config::{cfg_get, count},
    done,
    event::{Who, emit, emit_socket, fill_tuple_from_sock, ship_held},
    maps::{CLOSED, HELD, LISTENERS, OWNED, add_peer, forget_socket, held, is_traced, new_held, new_owner, open_owner_of, owner_of},
    packet::IPPROTO_TCP,
    read::{connect_args, current_ids, now_ns, read_kernel, sock_netns, sock_protocol, tp_field},
};

const SYN_SENT: i32 = TcpState::SynSent as i32;
const CLOSE: i32 = TcpState::Close as i32;

/// The state tracepoint as tp_btf: the socket and both states are the arguments themselves,
/// with no trace record built and no field read through a helper (the classic tracepoint's
/// four probe reads were most of its cost per run). Only a listen needs the protocol.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_btf(ctx: BtfTracePointContext) -> u32 {
    let sk: u64 = ctx.arg(0);
    let (old, new): (i32, i32) = (ctx.arg(1), ctx.arg(2));
    on_state_change(sk, old, new, || sock_protocol(sk) == IPPROTO_TCP as u16);
    0
}

/// The classic tracepoint, where tp_btf cannot attach.
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
    on_state_change(sk, old, new, || true);
    Ok(())
}

/// A state change of a TCP socket, or of an SCTP one (the same tracepoint): SCTP sockets
/// never connect through SYN_SENT nor pass SYN_RECV, and are never owned, so only a listen
/// has to tell them apart (`is_tcp`).
#[inline(always)]
fn on_state_change(sk: u64, old: i32, new: i32, is_tcp: impl FnOnce() -> bool) {
    if new == SYN_SENT && old == CLOSE {
        // connect(): we are in the connecting thread, so pid/comm are the real owner's.
        on_connect_start(sk);
    } else if new == TcpState::SynRecv as i32 {
        // The socket memory is being reused by an accepted socket: forget any old owner.
        forget_socket(sk);
    } else if new == TcpState::Listen as i32 {
        if is_tcp() {
            on_listen(sk);
        }
    } else {
        on_owned_state_change(sk, old, new);
    }
}

fn on_connect_start(sk: u64) {
    // A reused socket address must not keep a stale owner.
    forget_socket(sk);
    let (tgid, tid) = current_ids();
    if !is_traced(tgid) || tgid == cfg_get!(self_tgid) {
        return;
    }
    let fd = connect_args().map_or(u32::MAX, |(fd, _)| fd);
    let mut owner = new_owner(sk, tgid, tid, fd, SYN_SENT as u32, 0);
    let now = now_ns();
    let mut peer = PeerKey::default();
    // The connection's story stays in the kernel until something goes wrong (see `Exchange`).
    if let Some(held) = hold_connect(sk, now) {
        owner.flags |= OWNER_STORY_HELD;
        peer.addr = held.daddr;
        peer.port = held.dport;
    }
    if OWNED.insert(sk, owner, 0).is_err() {
        count(counter::OWNED_MAP_FULL);
        // Nothing more of this socket will be seen: what there is goes out now.
        owner.flags &= !OWNER_STORY_HELD;
        let _ = HELD.remove(sk);
    }
    if owner.flags & OWNER_STORY_HELD == 0 {
        emit_socket(EventKind::ConnectStart, sk, &owner, |e| {
            e.old_state = CLOSE as u8;
            e.new_state = SYN_SENT as u8;
            peer.addr = e.daddr;
            peer.port = e.dport;
        });
    }
    // Let the packet hooks know this endpoint matters (drops, ICMP errors).
    add_peer(peer, now);
}

/// A held record for a connection being opened: its start time and tuple (the local port is
/// not bound yet). None when the held-exchange map is full (counted): it is then shipped live.
#[inline(always)]
fn hold_connect(sk: u64, now: u64) -> Option<&'static mut Exchange> {
    let held = new_held(sk)?;
    held.connect_ts = now;
    let family: u16 = read_kernel(sk, cfg_get!(kernel.skc_family)).unwrap_or(0);
    held.family = family as u8;
    if family == AF_INET6 as u16 {
        held.saddr = read_kernel(sk, cfg_get!(kernel.skc_v6_rcv_saddr)).unwrap_or([0; 16]);
        held.daddr = read_kernel(sk, cfg_get!(kernel.skc_v6_daddr)).unwrap_or([0; 16]);
    } else {
        let s: [u8; 4] = read_kernel(sk, cfg_get!(kernel.skc_rcv_saddr)).unwrap_or([0; 4]);
        let d: [u8; 4] = read_kernel(sk, cfg_get!(kernel.skc_daddr)).unwrap_or([0; 4]);
        held.saddr[..4].copy_from_slice(&s);
        held.daddr[..4].copy_from_slice(&d);
    }
    held.dport = u16::from_be(read_kernel::<u16>(sk, cfg_get!(kernel.skc_dport)).unwrap_or(0));
    Some(held)
}

/// Hold a state change of a connection whose story is held, if it is a step of a healthy
/// connection's life: established, the upstream's FIN, the gateway's close once the response
/// was read whole (or its length is unknown), and the rest of an orderly close. Anything else
/// (a connect that ends without ESTABLISHED, the gateway closing before any response byte or
/// before the announced length was read, an abort) and a story with no room left: false, and
/// the story is shipped.
#[inline(always)]
fn hold_state(sk: u64, owner: &SockOwner, old: i32, new: i32) -> bool {
    const EST: i32 = TcpState::Established as i32;
    const FIN_WAIT1: i32 = TcpState::FinWait1 as i32;
    const FIN_WAIT2: i32 = TcpState::FinWait2 as i32;
    const TIME_WAIT: i32 = TcpState::TimeWait as i32;
    const CLOSE_WAIT: i32 = TcpState::CloseWait as i32;
    const LAST_ACK: i32 = TcpState::LastAck as i32;
    const CLOSING: i32 = TcpState::Closing as i32;
    let Some(held) = held(sk) else { return false };
    let healthy = match (old, new) {
        (SYN_SENT, EST) | (EST, CLOSE_WAIT) => true,
        (EST, FIN_WAIT1) | (CLOSE_WAIT, LAST_ACK) => {
            let start = held.response_bytes_recv.saturating_sub(held.response_len as u64);
            owner.phase == PHASE_RECEIVING && owner.bytes_recv.saturating_sub(start) >= held.response_expected
        }
        (FIN_WAIT1 | FIN_WAIT2 | CLOSING | LAST_ACK | TIME_WAIT, FIN_WAIT2 | CLOSING | TIME_WAIT | CLOSE) => true,
        _ => false,
    };
    let i = held.states as usize;
    if !healthy || i >= HELD_STATES {
        return false;
    }
    held.state_ts[i] = now_ns();
    held.state_old[i] = old as u8;
    held.state_new[i] = new as u8;
    held.states += 1;
    if old == SYN_SENT {
        held.sport = read_kernel::<u16>(sk, cfg_get!(kernel.skc_num)).unwrap_or(0);
    }
    true
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
    owner.tcp_state = new as u32;
    if owner.flags & OWNER_STORY_HELD != 0 && hold_state(sk, owner, old, new) {
        if new == CLOSE {
            // A healthy connection's whole story ends here, unshipped, and its owner with it:
            // kept among the closed sockets, it could only give events that explain nothing.
            let _ = HELD.remove(sk);
            let _ = OWNED.remove(sk);
        }
        return;
    }
    ship_held(sk, owner);
    let refused = old == SYN_SENT && new == CLOSE && owner.flags & OWNER_RST_IN_SYN_SENT != 0;
    if !refused {
        emit_socket(EventKind::StateChange, sk, owner, |e| {
            e.old_state = old as u8;
            e.new_state = new as u8;
            // The error that closed it, read now: the gateway woken by the close may take it
            // (SO_ERROR) before the error report that follows runs.
            if new == CLOSE {
                e.value = read_kernel::<i32>(sk, cfg_get!(kernel.sk_err)).unwrap_or(0) as i64;
            }
        });
    }
    if new == CLOSE {
        close_owner(sk, owner);
    }
}

/// Move a socket's owner record to the closed ones. Open sockets are never evicted; closed
/// ones make room for each other.
#[inline(always)]
fn close_owner(sk: u64, owner: &SockOwner) {
    let closed = *owner;
    if CLOSED.insert(sk, closed, 0).is_ok() {
        count(counter::CLOSED_ADDED);
    }
    let _ = OWNED.remove(sk);
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
fn emit_for_owner(sk: u64, owner: &mut SockOwner, kind: EventKind, value: i64) {
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
