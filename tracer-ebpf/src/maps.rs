//! The maps shared by all hook families, with their accessors (the configuration and the
//! counters are in config.rs).
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use tracer_common::{
    AF_UNIX, Exchange, MAX_CLOSED_SOCKETS, MAX_EXCHANGES, MAX_LISTENERS, MAX_OWNED_SOCKETS, MAX_PEERS, MAX_PENDING, MAX_TRACED_PROCESSES,
    MAX_UNIX_SOCKETS, PATH_LEN, PHASE_IDLE, PeerKey, PendingStatus, RING_BYTES, SockOwner, counter,
};

use crate::config::count;
use crate::read::{current_cgroup, current_comm, sock_netns, socket_ino};

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Set by userspace once the close(2) hook is attached (it is attached on demand, once the
/// first unix-socket upstream is seen). Until then a unix-socket upstream's story is shipped as
/// it happens, not held: held, it could only go out at a close no program would see.
#[map]
pub static CLOSE_HOOKED: Array<u32> = Array::with_max_entries(1, 0);

#[inline(always)]
pub fn close_hooked() -> bool {
    CLOSE_HOOKED.get(0).is_some_and(|v| *v != 0)
}

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

/// Unix-socket upstream connections (adopted at connect(2), see `connect.rs`). Only the
/// gateway's close(2) is seen, not the socket's end, so the least recently used make room for
/// new ones (counted: `UNIX_ADDED`).
#[map]
pub static UNIX_OWNED: LruHashMap<u64, SockOwner> = LruHashMap::with_max_entries(MAX_UNIX_SOCKETS, 0);

/// A unix-socket upstream's connect, held like a TCP connection's opening (see `OWNER_STORY_HELD`)
/// and shipped as the `ConnectSyscall` it stands for ahead of the first failure on it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UnixOpening {
    pub ts_ns: u64,
    pub fd: u32,
    pub _pad: u32,
    pub path: [u8; PATH_LEN],
}

#[map]
pub static UNIX_OPENINGS: LruHashMap<u64, UnixOpening> = LruHashMap::with_max_entries(MAX_UNIX_SOCKETS, 0);

/// Unix-socket upstreams by (tgid << 32 | fd): close(2) is the only sign of the gateway giving up
/// on one (no TCP state machine), and it knows only the fd.
#[map]
pub static UNIX_FDS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(MAX_UNIX_SOCKETS, 0);

/// Exchanges held back on kept-alive upstream connections, keyed by socket (see `Exchange`).
/// A plain hash, not LRU: when it is full the exchange is shipped at once, never dropped.
#[map]
pub static HELD: HashMap<u64, Exchange> = HashMap::with_max_entries(MAX_EXCHANGES, 0);

/// What a new `HELD` record starts from (see `new_held`).
static EMPTY_EXCHANGE: Exchange = Exchange::zeroed();

/// A value left by a thread on this CPU for a later hook of the same thread (a response read,
/// then the 5xx written for it). Both run on the same CPU unless the task migrates in between,
/// hence the tid check (a moved thread leaves the slot unused); a per-CPU slot costs a fraction
/// of a hash update.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ThreadSlot {
    pub tid: u32,
    pub _pad: u32,
    pub value: u64,
}

/// The upstream socket whose response a thread read last on this CPU. A gateway that rejects a
/// response (a header it will not take) writes its 5xx right after, on the same thread: the
/// status ships that socket's held story.
#[map]
pub static LAST_RESPONSE: PerCpuArray<ThreadSlot> = PerCpuArray::with_max_entries(1, 0);

/// 5xx status lines written by a thread, waiting for the socket send that carries them.
#[map]
pub static PENDING_STATUS: HashMap<u32, PendingStatus> = HashMap::with_max_entries(MAX_PENDING, 0);

/// Upstream endpoints of traced connections: packet hooks report only flows touching these.
#[map]
pub static PEERS: LruHashMap<PeerKey, u64> = LruHashMap::with_max_entries(MAX_PEERS, 0);

// The map accessors below turn the maps' raw value pointers into references. That is sound
// for the life of one program run: the kernel frees a removed element only after an RCU grace
// period, and a program holds no second reference to the same element. (What BPF cannot
// rule out is another CPU updating the same element at the same time; the records here are
// per socket or per thread, so that only happens when a socket is used by two threads at once,
// and then a counter may be off, never memory.)

#[inline(always)]
pub fn is_traced(tgid: u32) -> bool {
    // SAFETY: see above (only the presence of the key is used).
    tgid != 0 && unsafe { TRACED.get(tgid) }.is_some()
}

#[inline(always)]
pub fn is_listener(tgid: u32) -> bool {
    // SAFETY: see above (only the presence of the key is used).
    unsafe { LISTENERS.get(tgid) }.is_some()
}

/// The owner record of an upstream socket, open or recently closed.
#[inline(always)]
pub fn owner_of(sk: u64) -> Option<&'static mut SockOwner> {
    let owner = OWNED.get_ptr_mut(sk).or_else(|| CLOSED.get_ptr_mut(sk))?;
    // SAFETY: see above.
    Some(unsafe { &mut *owner })
}

/// The owner record of an open TCP upstream socket.
#[inline(always)]
pub fn open_owner_of(sk: u64) -> Option<&'static mut SockOwner> {
    let owner = OWNED.get_ptr_mut(sk)?;
    // SAFETY: see above.
    Some(unsafe { &mut *owner })
}

/// The owner record of a unix-socket upstream; looked up only for AF_UNIX sockets, so TCP
/// and the gateway's client sockets pay nothing for it. A record left by a closed socket whose
/// memory now holds another one (say, a client of a gateway listening on a unix socket) is
/// recognised by the inode number and forgotten.
#[inline(always)]
pub fn unix_owner_of(sk: u64, family: u16) -> Option<&'static mut SockOwner> {
    if family != AF_UNIX as u16 {
        return None;
    }
    let owner = UNIX_OWNED.get_ptr_mut(sk)?;
    // SAFETY: see above.
    let owner = unsafe { &mut *owner };
    if owner.ino != socket_ino(sk) {
        let _ = UNIX_OWNED.remove(sk);
        let _ = HELD.remove(sk);
        return None;
    }
    Some(owner)
}

/// Record a connected unix-socket upstream. A socket address seen before belongs to a socket
/// since freed: whatever was held for it goes.
#[inline(always)]
pub fn add_unix_owner(sk: u64, owner: SockOwner) {
    let _ = HELD.remove(sk);
    // SAFETY: see above (only the presence of the key is used).
    if unsafe { UNIX_OWNED.get(sk) }.is_none() {
        count(counter::UNIX_ADDED);
    }
    let _ = UNIX_OWNED.insert(sk, owner, 0);
}

/// A unix-socket upstream whose exchange ended whole and whose peer closed: nothing more to
/// watch (its fd entry goes at close(2) or makes room for others).
#[inline(always)]
pub fn forget_unix_socket(sk: u64) {
    let _ = UNIX_OWNED.remove(sk);
    let _ = UNIX_OPENINGS.remove(sk);
    let _ = HELD.remove(sk);
}

/// Forget a socket address entirely (its memory now holds another socket).
#[inline(always)]
pub fn forget_socket(sk: u64) {
    // Looked up first: this runs for every socket accepted on the host, most addresses are in
    // no map, and a lookup takes no lock where a removal takes the bucket's.
    if OWNED.get_ptr(sk).is_some() {
        let _ = OWNED.remove(sk);
    }
    if CLOSED.get_ptr(sk).is_some() && CLOSED.remove(sk).is_ok() {
        count(counter::CLOSED_REMOVED);
    }
    if HELD.get_ptr(sk).is_some() {
        let _ = HELD.remove(sk);
    }
}

/// A new, zeroed held record for a socket; None when the map is full (counted: what would be
/// held is shipped at once instead).
#[inline(always)]
pub fn new_held(sk: u64) -> Option<&'static mut Exchange> {
    // By reference: the map update copies from the static, where a value would be built on
    // the stack first (the record is over half of the 512 bytes BPF has).
    #[allow(clippy::needless_borrows_for_generic_args)]
    if HELD.insert(sk, &EMPTY_EXCHANGE, 0).is_err() {
        count(counter::EXCHANGE_MAP_FULL);
        return None;
    }
    held(sk)
}

/// The exchange held for a socket, if any.
#[inline(always)]
pub fn held(sk: u64) -> Option<&'static mut Exchange> {
    let held = HELD.get_ptr_mut(sk)?;
    // SAFETY: see above.
    Some(unsafe { &mut *held })
}

/// Take this thread's pending 5xx status line (the slot is used once).
#[inline(always)]
pub fn take_pending_status(tid: u32) -> Option<PendingStatus> {
    // SAFETY: see above; the value is copied out before the element is removed.
    let pending = *unsafe { PENDING_STATUS.get(tid) }?;
    let _ = PENDING_STATUS.remove(tid);
    Some(pending)
}

#[inline(always)]
fn put_slot(slots: &PerCpuArray<ThreadSlot>, tid: u32, value: u64) {
    if let Some(slot) = slots.get_ptr_mut(0) {
        // SAFETY: see above; a per-CPU slot is this CPU's alone.
        unsafe { *slot = ThreadSlot { tid, _pad: 0, value } };
    }
}

/// The value this thread left in the slot, or 0; the slot is used once.
#[inline(always)]
fn take_slot(slots: &PerCpuArray<ThreadSlot>, tid: u32) -> u64 {
    let Some(slot) = slots.get_ptr_mut(0) else { return 0 };
    // SAFETY: see above; a per-CPU slot is this CPU's alone.
    let slot = unsafe { &mut *slot };
    if slot.tid != tid {
        return 0;
    }
    slot.tid = 0;
    slot.value
}

/// Remember that this thread read the first bytes of a response on `sk`.
#[inline(always)]
pub fn remember_last_response(tid: u32, sk: u64) {
    put_slot(&LAST_RESPONSE, tid, sk);
}

/// The socket this thread read a response on last (on this CPU), or 0; the slot is used once.
#[inline(always)]
pub fn take_last_response(tid: u32) -> u64 {
    take_slot(&LAST_RESPONSE, tid)
}

/// Note an upstream endpoint, so the packet hooks report its drops and ICMP errors.
#[inline(always)]
pub fn add_peer(peer: PeerKey, now: u64) {
    // SAFETY: see above (only the presence of the key is used). A lookup marks the entry as
    // used for the LRU too: the update is needed only for a new endpoint.
    if unsafe { PEERS.get(peer) }.is_none() {
        count(counter::PEERS_ADDED);
        let _ = PEERS.insert(peer, now, 0);
    }
}

#[inline(always)]
pub fn is_peer(addr: &[u8; 16], port: u16) -> bool {
    let key = PeerKey { addr: *addr, port, _pad: [0; 6] };
    // SAFETY: see above (only the presence of the key is used).
    unsafe { PEERS.get(key) }.is_some()
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
        phase: PHASE_IDLE,
        tcp_state,
        fd,
        exchanges: 0,
        flags: 0,
        comm: current_comm(),
        ino,
    }
}
