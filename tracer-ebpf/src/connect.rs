//! connect(2) entry/exit: the destination as the gateway asked for it (including unix socket
//! paths, which have no TCP events), and results that never reach the TCP state machine
//! (no route, EACCES from a prohibit route, EAGAIN from a full unix backlog, ...).
use aya_ebpf::{
    helpers::{bpf_probe_read_user, bpf_probe_read_user_str_bytes},
    macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{AF_INET, AF_INET6, AF_UNIX, EventKind, PATH_LEN, PendingConnect, counter};

use crate::maps::{cfg_get, 
    PENDING_CONNECT, count, current_cgroup, current_comm, current_ids, emit, is_traced,
    now_ns,
};

// Syscall tracepoints have a fixed ABI: 8-byte header, syscall nr, then 8-byte args from 16.
const ARG0: usize = 16;
const ARG1: usize = 24;
const EXIT_RET: usize = 16;
const EINPROGRESS: i64 = -115;
/// Event loops (HAProxy) poll a pending connect by calling connect() again: "still in
/// progress" and "now connected" answers are noise; the TCP hooks tell the outcome.
const EALREADY: i64 = -114;
const EISCONN: i64 = -106;

#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current_ids();
    if !is_traced(tgid) || tgid == cfg_get!(self_tgid) {
        return 0;
    }
    let (Ok(fd), Ok(addr)) = (unsafe { (ctx.read_at::<u64>(ARG0), ctx.read_at::<u64>(ARG1)) }) else {
        return 0;
    };
    let Ok(family) = (unsafe { bpf_probe_read_user(addr as *const u16) }) else {
        return 0;
    };
    let mut pending = PendingConnect {
        ts_ns: now_ns(),
        fd: fd as u32,
        family,
        port: 0,
        addr: [0; 16],
        path: [0; PATH_LEN],
        _pad: [0; 4],
    };
    match family as u8 {
        AF_INET => {
            let port = unsafe { bpf_probe_read_user((addr + 2) as *const u16) }.unwrap_or(0);
            let ip = unsafe { bpf_probe_read_user((addr + 4) as *const [u8; 4]) }.unwrap_or([0; 4]);
            pending.port = u16::from_be(port);
            pending.addr[..4].copy_from_slice(&ip);
        }
        AF_INET6 => {
            let port = unsafe { bpf_probe_read_user((addr + 2) as *const u16) }.unwrap_or(0);
            pending.port = u16::from_be(port);
            pending.addr =
                unsafe { bpf_probe_read_user((addr + 8) as *const [u8; 16]) }.unwrap_or([0; 16]);
        }
        AF_UNIX => {
            let _ = unsafe { bpf_probe_read_user_str_bytes((addr + 2) as *const u8, &mut pending.path) };
        }
        _ => return 0,
    }
    if PENDING_CONNECT.insert(tid, pending, 0).is_err() {
        count(counter::PENDING_MAP_FULL);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current_ids();
    if !is_traced(tgid) {
        return 0;
    }
    let Some(pending) = (unsafe { PENDING_CONNECT.get(tid) }) else {
        return 0;
    };
    let pending = *pending;
    let _ = PENDING_CONNECT.remove(tid);
    let Ok(ret) = (unsafe { ctx.read_at::<i64>(EXIT_RET) }) else {
        return 0;
    };
    // In progress: the outcome arrives through the TCP hooks, keyed by socket.
    if (ret == EINPROGRESS && pending.family as u8 != AF_UNIX) || ret == EALREADY || ret == EISCONN {
        return 0;
    }
    emit(EventKind::ConnectSyscall, |e| {
        e.pid = tgid;
        e.tid = tid;
        e.comm = current_comm();
        e.cgroup = current_cgroup();
        e.family = pending.family as u8;
        e.dport = pending.port;
        e.daddr = pending.addr;
        e.aux = pending.fd;
        e.value = ret;
        e.data[..PATH_LEN].copy_from_slice(&pending.path);
    });
    0
}
