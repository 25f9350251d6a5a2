//! Reading what the programs look at: the hook's tracepoint record, kernel and user memory, and
//! the current task. The unsafe BPF reads live here, each with the reason it is sound; the hook
//! families call these safe helpers.
use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_task_btf,
        bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user, bpf_probe_read_user_buf, bpf_probe_read_user_str_bytes,
        bpf_task_pt_regs,
    },
    programs::TracePointContext,
};
use tracer_common::{COMM_LEN, FD_UNKNOWN, counter};

use crate::config::{cfg_get, count};

/// Types for which every bit pattern is a valid value (integers and byte arrays): what a probe
/// read may return, since it copies whatever bytes the kernel or the process holds there.
///
/// # Safety
///
/// Implement it only for types without padding, pointers, references or invalid bit patterns.
pub unsafe trait Plain: Copy {}

// SAFETY: integers and byte arrays are valid for every bit pattern and have no padding.
unsafe impl Plain for u8 {}
// SAFETY: as above.
unsafe impl Plain for u16 {}
// SAFETY: as above.
unsafe impl Plain for u32 {}
// SAFETY: as above.
unsafe impl Plain for u64 {}
// SAFETY: as above.
unsafe impl Plain for i32 {}
// SAFETY: as above.
unsafe impl Plain for i64 {}
// SAFETY: as above.
unsafe impl<const N: usize> Plain for [u8; N] {}
// SAFETY: as above.
unsafe impl<const N: usize> Plain for [u64; N] {}

/// The `T` at `offset` in the hook's tracepoint record: an offset from `CONFIG.tp` (read by
/// userspace from the tracepoint's tracefs `format`) or from the fixed syscall record layout.
#[inline(always)]
pub fn tp_field<T: Plain>(ctx: &TracePointContext, offset: u16) -> Result<T, i32> {
    // SAFETY: `read_at` is a bpf_probe_read_kernel of size_of::<T>() bytes at ctx + offset into
    // a local: an offset past the record gives an error, never a fault, and whatever bytes it
    // copies are a valid `T` (`Plain`).
    unsafe { ctx.read_at::<T>(offset as usize) }
}

/// Syscall tracepoint records have a fixed layout: the 8-byte common header, the syscall number
/// (padded to 8 bytes), then the 8-byte arguments; a sys_exit record has the return value there.
const SYSCALL_ARGS: u16 = 16;

/// Argument `n` (from 0) of the syscall whose sys_enter tracepoint runs.
#[inline(always)]
pub fn syscall_arg(ctx: &TracePointContext, n: u16) -> Result<u64, i32> {
    tp_field(ctx, SYSCALL_ARGS + 8 * n)
}

/// The return value of the syscall whose sys_exit tracepoint runs.
#[inline(always)]
pub fn syscall_ret(ctx: &TracePointContext) -> Result<i64, i32> {
    tp_field(ctx, SYSCALL_ARGS)
}

/// x86_64 numbers of the syscalls whose arguments the hooks read from the saved registers.
mod nr {
    pub const READ: u64 = 0;
    pub const WRITE: u64 = 1;
    pub const READV: u64 = 19;
    pub const WRITEV: u64 = 20;
    pub const CONNECT: u64 = 42;
    pub const SENDTO: u64 = 44;
    pub const RECVFROM: u64 = 45;
    pub const SENDMSG: u64 = 46;
    pub const RECVMSG: u64 = 47;
}

/// The current thread's syscall as it entered the kernel: its number, its first argument and
/// its second. The registers stay saved until it returns, so hooks inside the syscall and at
/// its exit read them with no program at its entry. None outside a syscall's registers.
#[inline(always)]
fn current_syscall() -> Option<(u64, u64, u64)> {
    // SAFETY: both helpers take and give the current task's own pointers; the registers are
    // then copied with a probe read, which fails instead of faulting.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf() as *mut _) } as u64;
    const FIRST: usize = core::mem::offset_of!(pt_regs, rsi);
    const _: () = assert!(core::mem::offset_of!(pt_regs, orig_rax) == FIRST + 16);
    // rsi (the second argument), rdi (the first), orig_rax (the syscall number).
    let [arg1, arg0, number] = read_kernel::<[u64; 3]>(regs, FIRST as u16)?;
    Some((number, arg0, arg1))
}

/// The user buffer of the socket I/O syscall the current thread is in (the first segment of a
/// vector): the socket tracepoints know the socket, and this gives them the bytes, with no
/// program at the syscall's entry. 0 for other callers (sendfile, splice, io_uring workers,
/// the kernel's own sends).
#[inline(always)]
pub fn syscall_buffer() -> u64 {
    syscall_fd_and_buffer().1
}

/// The fd argument and the buffer of the socket I/O syscall the current thread is in (see
/// `syscall_buffer`); (`FD_UNKNOWN`, 0) for other callers.
#[inline(always)]
pub fn syscall_fd_and_buffer() -> (u32, u64) {
    let Some((number, arg0, arg1)) = current_syscall() else { return (FD_UNKNOWN, 0) };
    let buf = match number {
        nr::READ | nr::WRITE | nr::RECVFROM | nr::SENDTO => arg1,
        // iov[0].iov_base (user ABI: struct iovec { void *base; size_t len; }).
        nr::READV | nr::WRITEV => read_user::<u64>(arg1).unwrap_or(0),
        // msg->msg_iov is at offset 16 of the user ABI's struct msghdr on 64-bit.
        nr::RECVMSG | nr::SENDMSG => read_user::<u64>(arg1 + 16).and_then(read_user::<u64>).unwrap_or(0),
        _ => return (FD_UNKNOWN, 0),
    };
    (arg0 as u32, buf)
}

/// The fd and the user address (`struct sockaddr *`) of the connect(2) the current thread is
/// in, at any hook inside it or at its exit; None in any other syscall.
#[inline(always)]
pub fn connect_args() -> Option<(u32, u64)> {
    let (number, fd, addr) = current_syscall()?;
    (number == nr::CONNECT).then_some((fd as u32, addr))
}

/// The `T` at `base + offset` in kernel memory: a field of a kernel struct at an offset from
/// `CONFIG.kernel` (read by userspace from BTF), or raw bytes (packet headers) at offset 0.
/// A failed read is counted (`kernel_read_failed`) and gives `None`.
#[inline(always)]
pub fn read_kernel<T: Plain>(base: u64, offset: u16) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel copies size_of::<T>() bytes into a local and returns an
    // error instead of faulting on a bad address (a freed socket, a wrong offset), and whatever
    // bytes it copies are a valid `T` (`Plain`).
    match unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) } {
        Ok(v) => Some(v),
        Err(_) => {
            count(counter::READ_FAILED);
            None
        }
    }
}

/// The `T` at `addr` in the current process's memory (a syscall's argument), or `None`.
#[inline(always)]
pub fn read_user<T: Plain>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_user copies size_of::<T>() bytes into a local and returns an error
    // on an unmapped or kernel address, and whatever bytes it copies are a valid `T` (`Plain`).
    unsafe { bpf_probe_read_user(addr as *const T) }.ok()
}

/// Fill `dst` from the current process's memory at `addr`; false (and `dst` unspecified) if
/// any of it cannot be read.
#[inline(always)]
pub fn read_user_bytes(addr: u64, dst: &mut [u8]) -> bool {
    // SAFETY: bpf_probe_read_user_buf writes at most dst.len() bytes into `dst` and returns an
    // error on a bad user address; any bytes are valid `u8`s.
    unsafe { bpf_probe_read_user_buf(addr as *const u8, dst) }.is_ok()
}

/// Fill the start of `dst` with the `len` bytes a call left at `addr` (at most `dst.len()`);
/// how many, or 0 if they cannot be read. Never past `len`: there the buffer may run into a
/// page the process never touched, which a BPF read cannot fault in (a 93-byte answer read
/// into a fresh buffer near a page's end lost its head that way).
#[inline(always)]
pub fn read_user_prefix(addr: u64, len: i32, dst: &mut [u8]) -> u32 {
    if addr == 0 || len <= 0 {
        return 0;
    }
    let n = (len as u32).min(dst.len() as u32);
    if let Some(valid) = dst.get_mut(..n as usize)
        && read_user_bytes(addr, valid)
    {
        return n;
    }
    0
}

/// Copy the NUL-terminated string at `addr` in the current process's memory into `dst`
/// (truncated to fit); `dst` is left as it was if nothing can be read.
#[inline(always)]
pub fn read_user_str(addr: u64, dst: &mut [u8]) {
    // SAFETY: bpf_probe_read_user_str_bytes writes at most dst.len() bytes into `dst` and returns
    // an error on a bad user address; any bytes are valid `u8`s.
    let _ = unsafe { bpf_probe_read_user_str_bytes(addr as *const u8, dst) };
}

/// Kernel address of the current task's `struct task_struct`, a base for `read_kernel`.
#[inline(always)]
pub fn current_task() -> u64 {
    // SAFETY: the helper takes no argument and only returns an address, never dereferenced
    // here except through bpf_probe_read_kernel.
    unsafe { bpf_get_current_task() }
}

/// (tgid, tid) of the current task.
#[inline(always)]
pub fn current_ids() -> (u32, u32) {
    let id = bpf_get_current_pid_tgid();
    ((id >> 32) as u32, id as u32)
}

#[inline(always)]
pub fn current_comm() -> [u8; COMM_LEN] {
    bpf_get_current_comm().unwrap_or([0; COMM_LEN])
}

/// cgroup v2 id of the current task.
#[inline(always)]
pub fn current_cgroup() -> u64 {
    // SAFETY: the helper takes no argument and returns a number.
    unsafe { bpf_get_current_cgroup_id() }
}

/// CLOCK_MONOTONIC nanoseconds.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: the helper takes no argument and returns a number.
    unsafe { bpf_ktime_get_ns() }
}

/// A socket's address family (`sk_family`).
#[inline(always)]
pub fn sock_family(sk: u64) -> u16 {
    read_kernel::<u16>(sk, cfg_get!(kernel.skc_family)).unwrap_or(0)
}

/// A socket's protocol (`sk_protocol`: IPPROTO_TCP, IPPROTO_UDP, ...).
#[inline(always)]
pub fn sock_protocol(sk: u64) -> u16 {
    read_kernel::<u16>(sk, cfg_get!(kernel.sk_protocol)).unwrap_or(0)
}

/// Network namespace inode of a socket (0 if unknown): sk->__sk_common.skc_net->ns.inum.
#[inline(always)]
pub fn sock_netns(sk: u64) -> u32 {
    match read_kernel::<u64>(sk, cfg_get!(kernel.skc_net)) {
        Some(net) if net != 0 => read_kernel::<u32>(net, cfg_get!(kernel.net_ns_inum)).unwrap_or(0),
        _ => 0,
    }
}

/// Inode number of the socket that `sk` belongs to (0 if unknown): sk->sk_socket, whose inode
/// is allocated with it (`struct socket_alloc`).
#[inline(always)]
pub fn socket_ino(sk: u64) -> u64 {
    match read_kernel::<u64>(sk, cfg_get!(kernel.sk_socket)) {
        Some(socket) if socket != 0 => {
            read_kernel::<u64>(socket + cfg_get!(kernel.socket_alloc_inode) as u64, cfg_get!(kernel.inode_ino)).unwrap_or(0)
        }
        _ => 0,
    }
}
