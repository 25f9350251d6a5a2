//! connect(2) entry/exit: the destination as the gateway asked for it (including unix socket
//! paths, which have no TCP events), and results that never reach the TCP state machine
//! (no route, EACCES from a prohibit route, EAGAIN from a full unix backlog, ...).
use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_probe_read_user, bpf_probe_read_user_str_bytes},
    macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{AF_INET, AF_INET6, AF_UNIX, EventKind, PATH_LEN, PendingConnect, counter};

use crate::maps::{
    HELD, PENDING_CONNECT, UNIX_OWNED, cfg_get, count, current_cgroup, current_comm, current_ids, emit,
    is_traced, new_owner, now_ns, read_kernel, socket_ino,
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
const SOCK_STREAM: u16 = 1;
/// Unix stream sockets are connected when connect(2) returns: recorded as ESTABLISHED.
const TCP_ESTABLISHED: u32 = 1;

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
    let sk = if pending.family as u8 == AF_UNIX && ret == 0 { adopt_unix_socket(pending.fd, tgid, tid) } else { 0 };
    emit(EventKind::ConnectSyscall, |e| {
        e.sock = sk;
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

/// A connected unix-socket upstream: find its socket (the socket hooks know only that) and
/// record it like a TCP upstream, so its requests, responses and end of stream are seen.
/// Unix connects are rare next to the I/O on them, so the walk from fd to socket is cheap here.
fn adopt_unix_socket(fd: u32, tgid: u32, tid: u32) -> u64 {
    // connect(2) with a unix address succeeds only on a unix socket: no family check needed.
    let sk = socket_of_fd(fd);
    if sk == 0 {
        return 0;
    }
    let owner = new_owner(sk, tgid, tid, fd, TCP_ESTABLISHED, socket_ino(sk));
    // A socket address seen before belongs to a socket since freed.
    let _ = HELD.remove(sk);
    if unsafe { UNIX_OWNED.get(sk) }.is_none() {
        count(counter::UNIX_ADDED);
    }
    let _ = UNIX_OWNED.insert(sk, owner, 0);
    sk
}

/// The calling task's stream socket's `struct sock` behind `fd`, or 0:
/// task->files->fdt->fd[fd]->private_data (the `struct socket`)->sk. Datagram sockets (syslog
/// over /dev/log) are not upstreams.
fn socket_of_fd(fd: u32) -> u64 {
    let task = unsafe { bpf_get_current_task() };
    let Some(files) = read_kernel::<u64>(task, cfg_get!(kernel.task_files)).filter(|&p| p != 0) else { return 0 };
    let Some(fdt) = read_kernel::<u64>(files, cfg_get!(kernel.files_fdt)).filter(|&p| p != 0) else { return 0 };
    let max_fds: u32 = read_kernel(fdt, cfg_get!(kernel.fdtable_max_fds)).unwrap_or(0);
    if fd >= max_fds {
        return 0;
    }
    let Some(fds) = read_kernel::<u64>(fdt, cfg_get!(kernel.fdtable_fd)).filter(|&p| p != 0) else { return 0 };
    let Some(file) = read_kernel::<u64>(fds + fd as u64 * 8, 0).filter(|&p| p != 0) else { return 0 };
    let Some(socket) = read_kernel::<u64>(file, cfg_get!(kernel.file_private_data)).filter(|&p| p != 0) else { return 0 };
    if read_kernel::<u16>(socket, cfg_get!(kernel.socket_type)) != Some(SOCK_STREAM) {
        return 0;
    }
    read_kernel::<u64>(socket, cfg_get!(kernel.socket_sk)).unwrap_or(0)
}
