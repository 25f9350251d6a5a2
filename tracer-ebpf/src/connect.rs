//! connect(2)'s exit: the destination as the gateway asked for it (including unix socket
//! paths, which have no TCP events), and results that never reach the TCP state machine
//! (no route, EACCES from a prohibit route, EAGAIN from a full unix backlog, ...). Its
//! arguments come from the registers saved at its entry, so no program runs there: a connect
//! in progress (every healthy TCP one) costs one run that reads nothing but its result.
//! close(2) of a unix-socket upstream: the one sign of the gateway giving up on it.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tracer_common::{
    AF_INET, AF_INET6, AF_UNIX, EventKind, OWNER_FCGI_ENDED, OWNER_OPENING_SHIPPED, OWNER_QUIET, OWNER_STORY_HELD, PATH_LEN, TcpState,
    errno,
};

use crate::{
    config::cfg_get,
    done,
    event::{Who, emit, emit_socket, ship_held},
    maps::{UNIX_FDS, UNIX_OPENINGS, UnixOpening, add_unix_owner, close_hooked, forget_unix_socket, is_traced, new_owner, unix_owner_of},
    read::{connect_args, current_ids, current_task, now_ns, read_kernel, read_user, read_user_str, socket_ino, syscall_arg, syscall_ret},
};

const SOCK_STREAM: u16 = 1;

/// Where a connect(2) was asked to go, read from the caller's `struct sockaddr`.
struct Destination {
    family: u16,
    port: u16,
    addr: [u8; 16],
    path: [u8; PATH_LEN],
}

fn destination(sockaddr: u64) -> Option<Destination> {
    let family = read_user::<u16>(sockaddr)?;
    let mut to = Destination { family, port: 0, addr: [0; 16], path: [0; PATH_LEN] };
    match family as u8 {
        AF_INET => {
            to.port = u16::from_be(read_user::<u16>(sockaddr + 2).unwrap_or(0));
            to.addr[..4].copy_from_slice(&read_user::<[u8; 4]>(sockaddr + 4).unwrap_or([0; 4]));
        }
        AF_INET6 => {
            to.port = u16::from_be(read_user::<u16>(sockaddr + 2).unwrap_or(0));
            to.addr = read_user::<[u8; 16]>(sockaddr + 8).unwrap_or([0; 16]);
        }
        AF_UNIX => read_user_str(sockaddr + 2, &mut to.path),
        _ => return None,
    }
    Some(to)
}

#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    done(try_sys_exit_connect(&ctx))
}

fn try_sys_exit_connect(ctx: &TracePointContext) -> Result<(), i32> {
    let (tgid, tid) = current_ids();
    if !is_traced(tgid) || tgid == cfg_get!(self_tgid) {
        return Ok(());
    }
    let ret = syscall_ret(ctx)?;
    // In progress: the outcome arrives through the TCP hooks, keyed by socket (a unix stream
    // connect never answers so). Event loops (HAProxy) poll a pending connect by calling
    // connect() again: "still in progress" and "now connected" answers are noise too.
    let failed_with = |errno: i32| ret == -(errno as i64);
    if failed_with(errno::EINPROGRESS) || failed_with(errno::EALREADY) || failed_with(errno::EISCONN) {
        return Ok(());
    }
    // The caller's sockaddr is still where it passed it: connect(2) has just returned.
    let Some((fd, sockaddr)) = connect_args() else { return Ok(()) };
    let Some(to) = destination(sockaddr) else { return Ok(()) };
    let unix = to.family as u8 == AF_UNIX;
    let hold = close_hooked();
    let sk = if unix && ret == 0 { adopt_unix_socket(fd, tgid, tid, hold) } else { 0 };
    if sk != 0 {
        let _ = UNIX_FDS.insert((tgid as u64) << 32 | fd as u64, sk, 0);
        // A healthy FastCGI exchange ends with its connection: its connect is held with the
        // rest of its story, and shipped (`event::ship_held`) only ahead of a failure.
        if hold && UNIX_OPENINGS.insert(sk, UnixOpening { ts_ns: now_ns(), fd, _pad: 0, path: to.path }, 0).is_ok() {
            return Ok(());
        }
    }
    emit(EventKind::ConnectSyscall, Who::Current(tgid, tid), |e| {
        e.sock = sk;
        e.family = to.family as u8;
        e.dport = to.port;
        e.daddr = to.addr;
        e.aux = fd;
        e.value = ret;
        e.data[..PATH_LEN].copy_from_slice(&to.path);
    });
    Ok(())
}

/// close(2) of a unix-socket upstream by the gateway. Ended whole (or already shipped with its
/// end of stream): forgotten. Otherwise the gateway gave up on it (a timeout, its client gone):
/// the held story goes out with the close, as a TCP connection's FIN_WAIT1 would.
#[tracepoint(category = "syscalls", name = "sys_enter_close")]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    done(try_sys_enter_close(&ctx))
}

fn try_sys_enter_close(ctx: &TracePointContext) -> Result<(), i32> {
    let (tgid, _) = current_ids();
    if !is_traced(tgid) {
        return Ok(());
    }
    let key = (tgid as u64) << 32 | syscall_arg(ctx, 0)? as u32 as u64;
    // SAFETY: a map value copied out at once.
    let Some(sk) = (unsafe { UNIX_FDS.get(key) }).copied() else { return Ok(()) };
    let _ = UNIX_FDS.remove(key);
    // An fd closed unseen (close_range, dup2 over it, an LRU entry outliving its socket) is
    // reused: only a close of the same socket says anything.
    if socket_of_fd(syscall_arg(ctx, 0)? as u32) != sk {
        return Ok(());
    }
    let Some(owner) = unix_owner_of(sk, AF_UNIX as u16) else { return Ok(()) };
    // An HTTP response on a unix socket is not judged whole here: a gateway that rejects one
    // (a bad header) closes the socket before it writes its 5xx, which must find the story.
    let ended = owner.flags & (OWNER_QUIET | OWNER_FCGI_ENDED) != 0;
    let shipped = owner.flags & OWNER_OPENING_SHIPPED != 0;
    if !ended && (owner.exchanges > 0 || shipped) {
        ship_held(sk, owner);
        emit_socket(EventKind::StateChange, sk, owner, |e| {
            e.old_state = TcpState::Established as u8;
            e.new_state = TcpState::FinWait1 as u8;
        });
    }
    forget_unix_socket(sk);
    Ok(())
}

/// A connected unix-socket upstream: find its socket (the socket hooks know only that) and
/// record it like a TCP upstream, so its requests, responses and end of stream are seen.
/// Unix connects are rare next to the I/O on them, so the walk from fd to socket is cheap here.
fn adopt_unix_socket(fd: u32, tgid: u32, tid: u32, hold: bool) -> u64 {
    // connect(2) with a unix address succeeds only on a unix socket: no family check needed.
    let sk = socket_of_fd(fd);
    if sk == 0 {
        return 0;
    }
    // Unix stream sockets are connected when connect(2) returns: recorded as ESTABLISHED.
    let mut owner = new_owner(sk, tgid, tid, fd, TcpState::Established as u32, socket_ino(sk));
    if hold {
        owner.flags = OWNER_STORY_HELD;
    }
    add_unix_owner(sk, owner);
    sk
}

/// The calling task's stream socket's `struct sock` behind `fd`, or 0:
/// task->files->fdt->fd[fd]->private_data (the `struct socket`)->sk. Datagram sockets (syslog
/// over /dev/log) are not upstreams.
fn socket_of_fd(fd: u32) -> u64 {
    let nonzero = |p: &u64| *p != 0;
    let Some(files) = read_kernel::<u64>(current_task(), cfg_get!(kernel.task_files)).filter(nonzero) else { return 0 };
    let Some(fdt) = read_kernel::<u64>(files, cfg_get!(kernel.files_fdt)).filter(nonzero) else { return 0 };
    let max_fds: u32 = read_kernel(fdt, cfg_get!(kernel.fdtable_max_fds)).unwrap_or(0);
    if fd >= max_fds {
        return 0;
    }
    let Some(fds) = read_kernel::<u64>(fdt, cfg_get!(kernel.fdtable_fd)).filter(nonzero) else { return 0 };
    let Some(file) = read_kernel::<u64>(fds + fd as u64 * 8, 0).filter(nonzero) else { return 0 };
    let Some(socket) = read_kernel::<u64>(file, cfg_get!(kernel.file_private_data)).filter(nonzero) else { return 0 };
    if read_kernel::<u16>(socket, cfg_get!(kernel.socket_type)) != Some(SOCK_STREAM) {
        return 0;
    }
    read_kernel::<u64>(socket, cfg_get!(kernel.socket_sk)).unwrap_or(0)
}
