//! Maps shared by all hook families, the load-time configuration, and small helpers.
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use tracer_common::{
    Config, Event, EventKind, Exchange, MAX_UNIX_SOCKETS, MAX_CLOSED_SOCKETS, MAX_EXCHANGES, MAX_LISTENERS, MAX_OWNED_SOCKETS, MAX_PEERS,
    MAX_PENDING, MAX_TRACED_PROCESSES, PeerKey, PendingConnect, PendingStatus, RESPONSE_HEAD,
    RING_BYTES, SockOwner, counter,
};

/// Written by the loader before the programs load. Fields are read one at a time with
/// volatile loads: copying the whole struct would cost stack, and plain reads of an
/// all-zero static would be constant-folded away.
#[unsafe(no_mangle)]
pub static CONFIG: Config = Config::zeroed();

macro_rules! cfg_get {
    ($($field:ident).+) => {
        {
            #[allow(unused_unsafe)]
            let value = unsafe { core::ptr::read_volatile(&raw const $crate::maps::CONFIG.$($field).+) };
            value
        }
    };
}
pub(crate) use cfg_get;

#[inline(always)]
pub fn wants_drop_reason(reason: u32) -> bool {
    if reason >= tracer_common::MAX_DROP_REASON {
        return false;
    }
    let word = unsafe {
        core::ptr::read_volatile((&raw const CONFIG.drop_reasons).cast::<u64>().add((reason / 64) as usize))
    };
    word & (1 << (reason % 64)) != 0
}

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Gateway processes (tgid and threads/children), filled by userspace and by fork.
#[map]
pub static TRACED: HashMap<u32, u32> = HashMap::with_max_entries(MAX_TRACED_PROCESSES, 0);

/// Processes that listen on a TCP port: their deaths explain refused and reset upstreams.
#[map]
pub static LISTENERS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_LISTENERS, 0);

/// Open upstream sockets a traced process connected, keyed by kernel socket address.
#[map]
pub static OWNED: HashMap<u64, SockOwner> = HashMap::with_max_entries(MAX_OWNED_SOCKETS, 0);

/// Upstream sockets that reached CLOSE, kept a while for the events that follow a close.
#[map]
pub static CLOSED: LruHashMap<u64, SockOwner> = LruHashMap::with_max_entries(MAX_CLOSED_SOCKETS, 0);

/// Unix-socket upstream connections (adopted at connect(2), see `connect.rs`). No hook sees
/// them close, so the least recently used make room for new ones (counted: `UNIX_ADDED`).
#[map]
pub static UNIX_OWNED: LruHashMap<u64, SockOwner> = LruHashMap::with_max_entries(MAX_UNIX_SOCKETS, 0);

/// The owner record of a unix-socket upstream; looked up only for AF_UNIX sockets, so TCP
/// and the gateway's client sockets pay nothing for it. A record left by a closed socket whose
/// memory now holds another one (say, a client of a gateway listening on a unix socket) is
/// recognised by the inode number and forgotten.
#[inline(always)]
pub fn unix_owner_of(sk: u64, family: u16) -> Option<*mut SockOwner> {
    if family != tracer_common::AF_UNIX as u16 {
        return None;
    }
    let owner = UNIX_OWNED.get_ptr_mut(sk)?;
    if unsafe { (*owner).ino } != socket_ino(sk) {
        let _ = UNIX_OWNED.remove(sk);
        let _ = HELD.remove(sk);
        return None;
    }
    Some(owner)
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

/// The owner record of an upstream socket, open or recently closed.
#[inline(always)]
pub fn owner_of(sk: u64) -> Option<*mut SockOwner> {
    OWNED.get_ptr_mut(sk).or_else(|| CLOSED.get_ptr_mut(sk))
}

/// Forget a socket address entirely (its memory now holds another socket).
#[inline(always)]
pub fn forget_socket(sk: u64) {
    let _ = OWNED.remove(sk);
    if CLOSED.remove(sk).is_ok() {
        count(counter::CLOSED_REMOVED);
    }
    let _ = HELD.remove(sk);
}

/// Exchanges held back on kept-alive upstream connections, keyed by socket (see `Exchange`).
/// A plain hash, not LRU: when it is full the exchange is shipped at once, never dropped.
#[map]
pub static HELD: HashMap<u64, Exchange> = HashMap::with_max_entries(MAX_EXCHANGES, 0);

#[map]
pub static PENDING_CONNECT: HashMap<u32, PendingConnect> =
    HashMap::with_max_entries(MAX_PENDING, 0);

/// User buffer of the receive call in progress on this CPU (to show the response's head).
/// Syscall entry and the socket tracepoint run on the same CPU unless the task migrates in
/// between, hence the tid check; a per-CPU slot costs a fraction of a hash update.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RecvBuffer {
    pub tid: u32,
    pub _pad: u32,
    pub buf: u64,
}

#[map]
pub static PENDING_RECV: PerCpuArray<RecvBuffer> = PerCpuArray::with_max_entries(1, 0);

/// The buffer remembered at syscall entry, if this thread's; the slot is used once.
#[inline(always)]
pub fn take_recv_buffer(tid: u32) -> u64 {
    let Some(slot) = PENDING_RECV.get_ptr_mut(0) else { return 0 };
    let slot = unsafe { &mut *slot };
    if slot.tid != tid {
        return 0;
    }
    slot.tid = 0;
    slot.buf
}

#[map]
pub static PENDING_STATUS: HashMap<u32, PendingStatus> = HashMap::with_max_entries(MAX_PENDING, 0);

/// Upstream endpoints of traced connections: packet hooks report only flows touching these.
#[map]
pub static PEERS: LruHashMap<PeerKey, u64> = LruHashMap::with_max_entries(MAX_PEERS, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub fn now_ns() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

/// (tgid, tid) of the current task.
#[inline(always)]
pub fn current_ids() -> (u32, u32) {
    let id = bpf_get_current_pid_tgid();
    ((id >> 32) as u32, id as u32)
}

#[inline(always)]
pub fn is_traced(tgid: u32) -> bool {
    tgid != 0 && unsafe { TRACED.get(tgid) }.is_some()
}

#[inline(always)]
pub fn current_comm() -> [u8; 16] {
    bpf_get_current_comm().unwrap_or([0; 16])
}

#[inline(always)]
pub fn current_cgroup() -> u64 {
    unsafe { bpf_get_current_cgroup_id() }
}

#[inline(always)]
pub fn read_kernel<T>(base: u64, offset: u16) -> Option<T> {
    match unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) } {
        Ok(v) => Some(v),
        Err(_) => {
            count(counter::READ_FAILED);
            None
        }
    }
}

/// Reserve an event in the ring buffer, zero it, let `fill` write it, and submit it.
/// A full ring buffer is counted, never silent.
#[inline(always)]
pub fn emit(kind: tracer_common::EventKind, fill: impl FnOnce(&mut Event)) {
    match EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            let event = unsafe { &mut *entry.as_mut_ptr() };
            *event = Event::zeroed();
            event.ts_ns = now_ns();
            event.kind = kind as u8;
            fill(event);
            entry.submit(0);
        }
        None => count(counter::RINGBUF_FULL),
    }
}

/// Fill the 4-tuple from the socket itself (offsets come from BTF). Local side is
/// `saddr`/`sport`, remote side `daddr`/`dport`. The netns comes from the owner record (read
/// once at connect), or from `sock_netns` for sockets without one.
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

#[inline(always)]
pub fn sock_netns(sk: u64) -> u32 {
    match read_kernel::<u64>(sk, cfg_get!(kernel.skc_net)) {
        Some(net) if net != 0 => read_kernel::<u32>(net, cfg_get!(kernel.net_ns_inum)).unwrap_or(0),
        _ => 0,
    }
}

/// The owner record of an upstream socket `sk`, made in the connecting thread's own context
/// (pid, comm and cgroup are the real owner's), with no bytes or exchanges yet.
#[inline(always)]
pub fn new_owner(sk: u64, tgid: u32, tid: u32, fd: u32, tcp_state: u32, ino: u64) -> SockOwner {
    SockOwner {
        bytes_sent: 0,
        bytes_recv: 0,
        cgroup: current_cgroup(),
        pid: tgid,
        tid,
        netns: sock_netns(sk),
        phase: tracer_common::PHASE_IDLE,
        tcp_state,
        fd,
        exchanges: 0,
        flags: 0,
        comm: current_comm(),
        ino,
    }
}

/// Copy the owner's identity and byte counters into a socket event.
#[inline(always)]
pub fn fill_owner(event: &mut Event, owner: &SockOwner) {
    event.pid = owner.pid;
    event.tid = owner.tid;
    event.comm = owner.comm;
    event.cgroup = owner.cgroup;
    event.netns = owner.netns;
    event.bytes_sent = owner.bytes_sent;
    event.bytes_recv = owner.bytes_recv;
    event.aux = owner.fd;
}

/// Ship the exchange held for a socket, as the `RequestSent`/`ResponseStart` events it stands
/// for (stamped with their own times), ahead of the event that makes it worth knowing.
#[inline(always)]
pub fn ship_held(sk: u64, owner: &SockOwner) {
    let Some(held) = HELD.get_ptr(sk) else {
        return;
    };
    let held = unsafe { &*held };
    if held.request_ts != 0 {
        emit(EventKind::RequestSent, |e| {
            e.sock = sk;
            fill_owner(e, owner);
            fill_tuple_from_sock(e, sk);
            e.ts_ns = held.request_ts;
            e.bytes_sent = held.request_bytes_sent;
            e.bytes_recv = held.request_bytes_recv;
            e.value = held.request_len as i64;
            e.new_state = ESTABLISHED;
        });
    }
    if held.response_ts != 0 {
        emit(EventKind::ResponseStart, |e| {
            e.sock = sk;
            fill_owner(e, owner);
            fill_tuple_from_sock(e, sk);
            e.ts_ns = held.response_ts;
            e.bytes_sent = held.response_bytes_sent;
            e.bytes_recv = held.response_bytes_recv;
            e.value = held.response_len as i64;
            e.new_state = ESTABLISHED;
            e.aux = held.head_len;
            e.data[..RESPONSE_HEAD].copy_from_slice(&held.head);
        });
    }
    let _ = HELD.remove(sk);
}

const ESTABLISHED: u8 = 1;
