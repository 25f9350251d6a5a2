//! The kernel/user ABI of upstrace: every type here crosses the boundary between the eBPF
//! programs and userspace, so it is `#[repr(C)]`, plain old data without implicit padding, and
//! its size is asserted at compile time on both sides.
#![no_std]

pub mod status;

/// Version of the types below as the kernel programs and userspace share them. Bump it with
/// every change to a shared type (a field, its size or its meaning): the eBPF object carries
/// it (`UPSTRACE_ABI_VERSION`) and the loader refuses an object built with another one.
pub const ABI_VERSION: u32 = 8;

/// Capacity of the traced-process map (gateway tgids and their forked children).
pub const MAX_TRACED_PROCESSES: u32 = 4096;
/// Capacity of the per-socket ownership map (open upstream connections). A plain hash: an
/// open connection is never evicted; a full map is counted (`owned_map_full`).
pub const MAX_OWNED_SOCKETS: u32 = 65536;
/// Capacity of the map of recently closed upstream sockets (LRU: the gateway's last reads and
/// resets after CLOSE are still attributed; the oldest closed sockets make room).
pub const MAX_CLOSED_SOCKETS: u32 = 16384;
/// Capacity of the LRU map of unix-socket upstream connections (no close event exists for
/// them, so the least recently used make room; evictions are counted).
pub const MAX_UNIX_SOCKETS: u32 = 4096;
/// Capacity of the per-thread scratch maps (connect arguments, pending status lines).
pub const MAX_PENDING: u32 = 16384;
/// Capacity of the listener-owner map (processes that listen, to report their deaths).
pub const MAX_LISTENERS: u32 = 8192;
/// Ring buffer size in bytes (a power of two multiple of the page size).
pub const RING_BYTES: u32 = 4 << 20;

pub const COMM_LEN: usize = 16;
/// Payload bytes: a unix socket path (sun_path is 108 bytes) or the head of a status line.
pub const DATA_LEN: usize = 136;
pub const PATH_LEN: usize = 108;

/// What an [`Event`] reports: the one list of event kinds. The numeric values are the
/// kernel/user ABI and part of the trace file format; the JSON names (`connect_start`, ...)
/// are [`EventKind::name`]. Userspace adds the detail sentence and the fields each kind carries.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(Hash, serde::Serialize, serde::Deserialize), serde(rename_all = "snake_case"))]
pub enum EventKind {
    /// A traced process started a TCP connect (CLOSE -> SYN_SENT, in its own context).
    ConnectStart = 1,
    /// connect(2) returned something other than EINPROGRESS (unix sockets, immediate errors).
    ConnectSyscall = 2,
    /// A TCP state change of an owned socket; `old_state`/`new_state` hold the states; into
    /// CLOSE, `value` is the socket's error then (sk_err, positive errno, 0 for none).
    StateChange = 3,
    /// A socket error was reported on an owned socket; `value` is sk_err (positive errno).
    SockError = 4,
    /// An RST arrived on an owned socket.
    ResetReceived = 5,
    /// This host sent an RST on an owned socket; `value` is the TCP state.
    ResetSent = 6,
    /// A segment was retransmitted on an owned socket; `value` is the TCP state.
    Retransmit = 7,
    /// The gateway sent the first bytes of a request on an owned socket; `value` = bytes.
    RequestSent = 8,
    /// The gateway read the first bytes of a response on an owned socket; `value` = bytes.
    ResponseStart = 9,
    /// A read on an owned socket returned end-of-file (0) or an error (`value` < 0).
    RecvEnd = 10,
    /// A traced process wrote a 5xx HTTP/1.x status line to a downstream socket;
    /// `value` is the status code and `data` the head of the line.
    HttpStatus = 11,
    /// A watched process (traced, or one that listens) exited; `value` is its exit code word.
    ProcessExit = 12,
    /// A fatal signal was generated for a process; `value` is the signal number.
    Signal = 13,
    /// A traced process forked; `aux` is the child pid, now traced too.
    ProcessFork = 14,
    /// A process started listening; `aux` is the port (host order).
    Listen = 15,
    /// The kernel dropped a packet of a traced flow; `value` is the skb_drop_reason number,
    /// the tuple is the packet's own (src = sender), `netns` where it was dropped.
    Drop = 16,
    /// An ICMP error arrived about a packet of a traced flow; `value` = type << 8 | code, the
    /// tuple is the offending packet's (src = this side), `aux` the ICMP sender's IPv4 address.
    IcmpError = 17,
    /// Never sent by the kernel: userspace samples a listening socket's accept queue and finds
    /// it full (`value` = queue length, `aux` = its limit).
    ListenOverflow = 18,
    /// A traced process sent a DNS query (a UDP datagram to port 53 on a connected socket);
    /// the tuple is the socket's (daddr = the resolver), `data` the message's first bytes
    /// (header and question), `aux` how many of them, `value` the send's result.
    DnsQuery = 19,
    /// A traced process read from its DNS socket: `value` is the read's result (bytes, or
    /// -errno: -ECONNREFUSED when the resolver's port answered with ICMP), `data` the
    /// message's first bytes (header with the response code, question), `aux` how many.
    /// `old_state` of both DNS kinds is the socket's IP protocol: `IPPROTO_TCP` for a read on
    /// a TCP connection to port 53 (its bytes start with the message's two-byte length).
    DnsAnswer = 20,
}

impl EventKind {
    pub const ALL: [EventKind; 20] = [
        Self::ConnectStart,
        Self::ConnectSyscall,
        Self::StateChange,
        Self::SockError,
        Self::ResetReceived,
        Self::ResetSent,
        Self::Retransmit,
        Self::RequestSent,
        Self::ResponseStart,
        Self::RecvEnd,
        Self::HttpStatus,
        Self::ProcessExit,
        Self::Signal,
        Self::ProcessFork,
        Self::Listen,
        Self::Drop,
        Self::IcmpError,
        Self::ListenOverflow,
        Self::DnsQuery,
        Self::DnsAnswer,
    ];

    /// The kinds a kernel record may carry (all but the ones userspace makes itself).
    pub const fn from_kernel(v: u8) -> Option<Self> {
        if v == 0 || v as usize > Self::ALL.len() || v == Self::ListenOverflow as u8 { None } else { Some(Self::ALL[v as usize - 1]) }
    }

    /// The JSON name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::ConnectStart => "connect_start",
            Self::ConnectSyscall => "connect_syscall",
            Self::StateChange => "state_change",
            Self::SockError => "sock_error",
            Self::ResetReceived => "reset_received",
            Self::ResetSent => "reset_sent",
            Self::Retransmit => "retransmit",
            Self::RequestSent => "request_sent",
            Self::ResponseStart => "response_start",
            Self::RecvEnd => "recv_end",
            Self::HttpStatus => "http_status",
            Self::ProcessExit => "process_exit",
            Self::Signal => "signal",
            Self::ProcessFork => "process_fork",
            Self::Listen => "listen",
            Self::Drop => "drop",
            Self::IcmpError => "icmp_error",
            Self::ListenOverflow => "listen_overflow",
            Self::DnsQuery => "dns_query",
            Self::DnsAnswer => "dns_answer",
        }
    }
}

pub const AF_UNIX: u8 = 1;
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// TCP states as the kernel numbers them (include/net/tcp_states.h), shared by the programs
/// that compare them and userspace that names them.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(Hash))]
pub enum TcpState {
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Listen = 10,
    Closing = 11,
    NewSynRecv = 12,
}

impl TcpState {
    pub const ALL: [TcpState; 12] = [
        Self::Established,
        Self::SynSent,
        Self::SynRecv,
        Self::FinWait1,
        Self::FinWait2,
        Self::TimeWait,
        Self::Close,
        Self::CloseWait,
        Self::LastAck,
        Self::Listen,
        Self::Closing,
        Self::NewSynRecv,
    ];

    pub const fn from_u8(v: u8) -> Option<Self> {
        if v >= 1 && v <= 12 { Some(Self::ALL[v as usize - 1]) } else { None }
    }

    /// The kernel's own name (`SYN_SENT`), as traces spell it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Established => "ESTABLISHED",
            Self::SynSent => "SYN_SENT",
            Self::SynRecv => "SYN_RECV",
            Self::FinWait1 => "FIN_WAIT1",
            Self::FinWait2 => "FIN_WAIT2",
            Self::TimeWait => "TIME_WAIT",
            Self::Close => "CLOSE",
            Self::CloseWait => "CLOSE_WAIT",
            Self::LastAck => "LAST_ACK",
            Self::Listen => "LISTEN",
            Self::Closing => "CLOSING",
            Self::NewSynRecv => "NEW_SYN_RECV",
        }
    }
}

/// Signal numbers (x86-64 and arm64 agree on these) and which ones end a process abnormally:
/// one list, so the kernel's filter and userspace's "crashed" cannot disagree.
pub mod signal {
    pub const SIGILL: i32 = 4;
    pub const SIGABRT: i32 = 6;
    pub const SIGBUS: i32 = 7;
    pub const SIGFPE: i32 = 8;
    pub const SIGKILL: i32 = 9;
    pub const SIGSEGV: i32 = 11;
    pub const SIGTERM: i32 = 15;
    pub const SIGSYS: i32 = 31;
    /// Signals that kill a process without its consent: a crash (or the OOM killer's SIGKILL).
    pub const FATAL: [i32; 7] = [SIGILL, SIGABRT, SIGBUS, SIGFPE, SIGKILL, SIGSEGV, SIGSYS];

    pub const fn is_fatal(sig: i32) -> bool {
        let mut i = 0;
        while i < FATAL.len() {
            if FATAL[i] == sig {
                return true;
            }
            i += 1;
        }
        false
    }

    pub const fn name(sig: i32) -> &'static str {
        match sig {
            SIGILL => "SIGILL",
            SIGABRT => "SIGABRT",
            SIGBUS => "SIGBUS",
            SIGFPE => "SIGFPE",
            SIGKILL => "SIGKILL",
            SIGSEGV => "SIGSEGV",
            SIGTERM => "SIGTERM",
            SIGSYS => "SIGSYS",
            _ => "SIG?",
        }
    }
}

/// errno values the programs and the engine decide on (positive; syscalls return them negated).
pub mod errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const EINTR: i32 = 4;
    pub const EAGAIN: i32 = 11;
    pub const EACCES: i32 = 13;
    pub const EINVAL: i32 = 22;
    pub const ENFILE: i32 = 23;
    pub const EMFILE: i32 = 24;
    pub const EPIPE: i32 = 32;
    pub const EADDRNOTAVAIL: i32 = 99;
    pub const ENETUNREACH: i32 = 101;
    pub const ECONNABORTED: i32 = 103;
    pub const ECONNRESET: i32 = 104;
    pub const ENOBUFS: i32 = 105;
    pub const EISCONN: i32 = 106;
    pub const ETIMEDOUT: i32 = 110;
    pub const ECONNREFUSED: i32 = 111;
    pub const EHOSTUNREACH: i32 = 113;
    pub const EALREADY: i32 = 114;
    pub const EINPROGRESS: i32 = 115;

    pub const fn name(errno: i32) -> &'static str {
        match errno {
            EPERM => "EPERM",
            ENOENT => "ENOENT",
            EINTR => "EINTR",
            EAGAIN => "EAGAIN",
            EACCES => "EACCES",
            EINVAL => "EINVAL",
            ENFILE => "ENFILE",
            EMFILE => "EMFILE",
            EPIPE => "EPIPE",
            EADDRNOTAVAIL => "EADDRNOTAVAIL",
            ENETUNREACH => "ENETUNREACH",
            ECONNABORTED => "ECONNABORTED",
            ECONNRESET => "ECONNRESET",
            ENOBUFS => "ENOBUFS",
            EISCONN => "EISCONN",
            ETIMEDOUT => "ETIMEDOUT",
            ECONNREFUSED => "ECONNREFUSED",
            EHOSTUNREACH => "EHOSTUNREACH",
            EALREADY => "EALREADY",
            EINPROGRESS => "EINPROGRESS",
            _ => "E?",
        }
    }
}

/// One kernel observation. Fixed size, so the ring buffer never needs length prefixes.
/// Addresses are in network byte order as the kernel keeps them; ports in host order.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns).
    pub ts_ns: u64,
    /// Kernel address of the socket: the connection's identity while it lives. 0 if none.
    pub sock: u64,
    /// cgroup v2 id of the process the event is attributed to.
    pub cgroup: u64,
    /// Kind-specific number: return code, errno, status, signal, byte count.
    pub value: i64,
    /// Bytes sent and received on the socket so far (owned sockets only).
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    /// Owner (for socket events: the process that connected, recorded in its own context).
    pub pid: u32,
    pub tid: u32,
    /// Network namespace inode of the socket (or of the process, for process events).
    pub netns: u32,
    /// Kind-specific: fd, child pid, sender pid, port.
    pub aux: u32,
    pub kind: u8,
    pub family: u8,
    pub old_state: u8,
    pub new_state: u8,
    pub sport: u16,
    pub dport: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub comm: [u8; COMM_LEN],
    pub data: [u8; DATA_LEN],
}

pub const EVENT_SIZE: usize = 256;
const _: () = assert!(size_of::<Event>() == EVENT_SIZE);

impl Event {
    pub const fn zeroed() -> Self {
        Self {
            ts_ns: 0,
            sock: 0,
            cgroup: 0,
            value: 0,
            bytes_sent: 0,
            bytes_recv: 0,
            pid: 0,
            tid: 0,
            netns: 0,
            aux: 0,
            kind: 0,
            family: 0,
            old_state: 0,
            new_state: 0,
            sport: 0,
            dport: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            comm: [0; COMM_LEN],
            data: [0; DATA_LEN],
        }
    }
}

/// Per-socket state kept in the kernel for sockets a traced process connected.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SockOwner {
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub cgroup: u64,
    pub pid: u32,
    pub tid: u32,
    pub netns: u32,
    /// Request/response phase, see `PHASE_*`: lets the kernel emit one event per exchange.
    pub phase: u32,
    /// Last TCP state seen. At CLOSE the record moves from the open-socket map to the LRU map
    /// of closed ones, so the gateway's last reads are still attributed.
    pub tcp_state: u32,
    pub fd: u32,
    /// Request/response exchanges begun on the connection (the first one is shipped at once,
    /// later ones are held in `Exchange` records until something goes wrong).
    pub exchanges: u32,
    /// See `OWNER_*`.
    pub flags: u32,
    pub comm: [u8; COMM_LEN],
    /// Unix sockets: the socket's inode number, to recognise the same socket later (0 for TCP).
    pub ino: u64,
}

/// An RST answered the SYN (connection refused): the CLOSE and the ECONNREFUSED error that
/// follow it say nothing new and are not sent (a refused connect is one event, not three).
pub const OWNER_RST_IN_SYN_SENT: u32 = 1;
/// The connection's own story (its connect, its state changes and its first exchange) is held
/// in its `Exchange` record, not yet shipped: see `Exchange`.
pub const OWNER_STORY_HELD: u32 = 2;
/// Unix sockets: the last read ended with a FastCGI `FCGI_END_REQUEST` record (the response is
/// whole, whoever closes next).
pub const OWNER_FCGI_ENDED: u32 = 4;
/// Unix sockets: the exchange ended whole while everything about it was held, and it was
/// dropped: the end of stream that follows says nothing.
pub const OWNER_QUIET: u32 = 8;
/// Unix sockets: the connect (with its path) went out; later failures need not repeat it.
pub const OWNER_OPENING_SHIPPED: u32 = 16;
/// `RecvEnd`'s `aux`: the read before it ended with `FCGI_END_REQUEST` (see `OWNER_FCGI_ENDED`).
pub const RECV_END_AFTER_FCGI_END: u32 = 1;
const _: () = assert!(size_of::<SockOwner>() == 80);

/// Bytes of a response's head kept (status line and the first headers).
pub const RESPONSE_HEAD: usize = 128;
/// IP protocol numbers: a DNS event's `old_state` is its socket's.
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// Bytes of a connection's first request kept in `RequestSent`'s `data` (zeros: not read):
/// enough to tell a TLS ClientHello record from an HTTP request line, too few to hold a secret.
pub const REQUEST_HEAD: usize = 8;
/// Capacity of the held-exchange map; when it is full, exchanges are shipped at once instead.
pub const MAX_EXCHANGES: u32 = 16384;
/// State changes a held connection story keeps: a healthy connection makes 4 (ESTABLISHED and
/// three on the way to CLOSE); one more than this and the story is shipped.
pub const HELD_STATES: usize = 6;

/// What the kernel holds back for an upstream connection instead of shipping it, and ships
/// (as the events it stands for, each with its own time) only ahead of an event that can
/// explain a failure: a reset, an error, an end of stream, a retransmit, a connect that did
/// not complete, the gateway closing before any response byte, a response that does not start
/// like a plain HTTP/1.x 1xx-4xx answer, or a 5xx status line written by the thread that read
/// the response last. Healthy traffic thus crosses no ring buffer.
///
/// Two parts. The exchange in progress (request and first response bytes): held for every
/// exchange of a kept-alive connection, and for the first one of a new connection. The
/// connection's opening (`connect_ts`, the state changes and the tuple), held from the connect
/// while `OWNER_STORY_HELD` is set: it is dropped when a second exchange begins (a reused
/// connection's failures are told from its exchange alone) and with the record at a healthy
/// CLOSE.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Exchange {
    pub request_ts: u64,
    pub request_bytes_sent: u64,
    pub request_bytes_recv: u64,
    pub response_ts: u64,
    pub response_bytes_sent: u64,
    pub response_bytes_recv: u64,
    pub request_len: i32,
    pub response_len: i32,
    pub head_len: u32,
    pub _pad: u32,
    pub head: [u8; RESPONSE_HEAD],
    /// When the connect began (CLOSE -> SYN_SENT); 0 once the opening is not held.
    pub connect_ts: u64,
    /// The state changes held, oldest first: time, old and new state.
    pub state_ts: [u64; HELD_STATES],
    pub state_old: [u8; HELD_STATES],
    pub state_new: [u8; HELD_STATES],
    pub states: u8,
    pub family: u8,
    pub dport: u16,
    /// Local port, read when the connection is established (it is 0 at SYN_SENT).
    pub sport: u16,
    pub _pad2: [u8; 6],
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Bytes the held response should take on the connection (head + Content-Length, counted
    /// from its first byte), when the head told; 0 if not. A connection closed before they
    /// were read had its response cut short: its story is shipped.
    pub response_expected: u64,
    /// The first bytes of the connection's first request (see `REQUEST_HEAD`), zeros if unread
    /// or for a later exchange.
    pub request_head: [u8; REQUEST_HEAD],
}
const _: () = assert!(size_of::<Exchange>() == 320);

impl Exchange {
    pub const fn zeroed() -> Self {
        // SAFETY: every field is an integer or an array of integers.
        unsafe { core::mem::zeroed() }
    }
}

pub const PHASE_IDLE: u32 = 0;
pub const PHASE_SENDING: u32 = 1;
pub const PHASE_RECEIVING: u32 = 2;

/// A 5xx status line seen in TLS plaintext (`SSL_write`), waiting for the socket send that
/// carries it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingStatus {
    pub ts_ns: u64,
    pub status: u32,
    /// The client fd, or [`FD_UNKNOWN`] when not known (TLS plaintext, a call without one).
    pub fd: u32,
    /// The HTTP/2 stream of a HEADERS frame; 0 for HTTP/1.x.
    pub stream: u32,
    /// Where it was seen, see `SEEN_*`.
    pub seen: u32,
    pub head: [u8; 32],
}
const _: () = assert!(size_of::<PendingStatus>() == 56);

pub const FD_UNKNOWN: u32 = u32::MAX;
/// A status seen in a plain write(2) to a socket.
pub const SEEN_PLAIN: u32 = 0;
/// A status seen in the plaintext handed to OpenSSL (`SSL_write`/`SSL_write_ex`).
pub const SEEN_OPENSSL: u32 = 1;
/// A status seen in the plaintext a Go gateway hands to `crypto/tls.(*Conn).Write`.
pub const SEEN_GO_TLS: u32 = 2;
/// Where the HTTP/2 stream id and the `SEEN_*` value of an `HttpStatus` event are in its `data`
/// (after the 32 bytes of the write's head), little-endian.
pub const STATUS_STREAM_AT: usize = 32;
pub const STATUS_SEEN_AT: usize = 36;

/// Indexes into the per-CPU `COUNTERS` array: everything the kernel side had to drop (the
/// losses, `0..LOSSES`), and the bookkeeping that lets userspace count LRU evictions.
pub mod counter {
    pub const RINGBUF_FULL: u32 = 0;
    pub const OWNED_MAP_FULL: u32 = 1;
    pub const TRACED_MAP_FULL: u32 = 2;
    pub const PENDING_MAP_FULL: u32 = 3;
    pub const LISTENER_MAP_FULL: u32 = 4;
    pub const READ_FAILED: u32 = 5;
    /// Counters below this index are losses.
    pub const LOSSES: u32 = 6;
    /// Not a loss: exchanges were shipped at once because the held-exchange map was full.
    pub const EXCHANGE_MAP_FULL: u32 = 6;
    /// Entries added to and removed from the LRU map of closed sockets, and endpoints added to
    /// the LRU endpoint map: with the maps' sizes they give the number of evictions.
    pub const CLOSED_ADDED: u32 = 7;
    pub const CLOSED_REMOVED: u32 = 8;
    pub const PEERS_ADDED: u32 = 9;
    /// Unix-socket upstream connections added to their LRU map (evictions derived the same way).
    pub const UNIX_ADDED: u32 = 10;
    /// A 5xx status line handed to TLS that reached no socket send within `STATUS_MAX_AGE_NS`
    /// (its ciphertext never went out, or the thread stalled that long): not reported.
    pub const STATUS_EXPIRED: u32 = 11;
    pub const COUNT: u32 = 12;
    pub const NAMES: [&str; COUNT as usize] = [
        "ringbuf_full",
        "owned_map_full",
        "traced_map_full",
        "pending_map_full",
        "listener_map_full",
        "kernel_read_failed",
        "exchange_map_full",
        "closed_added",
        "closed_removed",
        "peers_added",
        "unix_added",
        "status_expired",
    ];
}

/// Byte offsets of tracepoint fields, read by userspace from tracefs `format` files so the
/// programs never rely on one kernel's layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TracepointLayout {
    pub set_state_skaddr: u16,
    pub set_state_oldstate: u16,
    pub set_state_newstate: u16,
    pub set_state_sport: u16,
    pub set_state_dport: u16,
    pub set_state_family: u16,
    pub set_state_protocol: u16,
    pub set_state_saddr: u16,
    pub set_state_daddr: u16,
    pub set_state_saddr_v6: u16,
    pub set_state_daddr_v6: u16,
    pub recv_reset_skaddr: u16,
    pub send_reset_skaddr: u16,
    pub send_reset_state: u16,
    pub retransmit_skaddr: u16,
    pub retransmit_state: u16,
    pub send_len_sk: u16,
    pub send_len_ret: u16,
    pub recv_len_sk: u16,
    pub recv_len_ret: u16,
    pub fork_parent_pid: u16,
    pub fork_child_pid: u16,
    pub exit_pid: u16,
    pub exit_group_dead: u16,
    pub signal_sig: u16,
    pub signal_pid: u16,
    pub signal_comm: u16,
    pub signal_result: u16,
    pub send_len_family: u16,
    pub recv_len_family: u16,
    pub kfree_skbaddr: u16,
    pub kfree_protocol: u16,
    pub kfree_reason: u16,
    pub netif_skbaddr: u16,
    pub send_len_protocol: u16,
    pub recv_len_protocol: u16,
    /// Keeps `Config`'s bitmap 8-aligned without implicit padding.
    pub _pad: [u16; 2],
}
const _: () = assert!(size_of::<TracepointLayout>() == 76);

/// Byte offsets inside kernel structs, read by userspace from /sys/kernel/btf/vmlinux
/// (Rust eBPF has no CO-RE field relocations).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelLayout {
    pub skc_daddr: u16,
    pub skc_rcv_saddr: u16,
    pub skc_dport: u16,
    pub skc_num: u16,
    pub skc_family: u16,
    pub skc_v6_daddr: u16,
    pub skc_v6_rcv_saddr: u16,
    pub skc_net: u16,
    pub net_ns_inum: u16,
    pub sk_err: u16,
    pub task_exit_code: u16,
    pub skb_head: u16,
    pub skb_data: u16,
    pub skb_network_header: u16,
    pub skb_protocol: u16,
    pub skb_dev: u16,
    pub dev_nd_net: u16,
    /// fd -> socket, for unix-socket upstreams (which have no TCP hook to show their socket).
    pub task_files: u16,
    pub files_fdt: u16,
    pub fdtable_max_fds: u16,
    pub fdtable_fd: u16,
    pub file_private_data: u16,
    pub socket_sk: u16,
    pub socket_type: u16,
    /// sock -> socket -> its inode number: tells a unix socket from a later one at the same
    /// address (no hook sees unix sockets close).
    pub sk_socket: u16,
    pub socket_alloc_inode: u16,
    pub inode_ino: u16,
    /// `sock.sk_protocol`; 0 where the kernel's BTF has no such plain field (then the state
    /// hook stays the classic tracepoint, whose record carries the protocol).
    pub sk_protocol: u16,
}
const _: () = assert!(size_of::<KernelLayout>() == 56);

/// Key of the map of upstream endpoints (address, port) that traced sockets connect to: the
/// packet hooks only report drops and ICMP errors for flows to or from these.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerKey {
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: [u8; 6],
}
const _: () = assert!(size_of::<PeerKey>() == 24);

/// Capacity of the upstream-endpoint map.
pub const MAX_PEERS: u32 = 16384;
/// Drop reasons are reported only when their bit is set in `Config::drop_reasons`.
pub const MAX_DROP_REASON: u32 = 512;

/// Load-time configuration, written into the programs' `CONFIG` global by the loader.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// upstrace's own tgid, never traced.
    pub self_tgid: u32,
    pub tp: TracepointLayout,
    pub kernel: KernelLayout,
    /// Bitmap over enum skb_drop_reason values (resolved by name from BTF at start).
    pub drop_reasons: [u64; (MAX_DROP_REASON / 64) as usize],
}
// 4 + 76 + 56 = 136 bytes before the bitmap: it needs no padding to be 8-aligned.
const _: () = assert!(size_of::<Config>() == 200);

impl Config {
    pub const fn zeroed() -> Self {
        // SAFETY: every field is an integer or an array of integers.
        unsafe { core::mem::zeroed() }
    }
}

#[cfg(feature = "user")]
mod user {
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::SockOwner {}
    unsafe impl aya::Pod for super::Exchange {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::PeerKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_states_round_trip_through_their_kernel_numbers() {
        for (i, state) in TcpState::ALL.into_iter().enumerate() {
            assert_eq!(state as usize, i + 1);
            assert_eq!(TcpState::from_u8(state as u8), Some(state));
        }
        assert_eq!(TcpState::from_u8(0), None);
        assert_eq!(TcpState::from_u8(13), None);
    }

    #[test]
    fn the_fatal_signal_list_is_what_is_fatal_answers() {
        for sig in 0..65 {
            assert_eq!(signal::is_fatal(sig), signal::FATAL.contains(&sig), "signal {sig}");
        }
        assert!(signal::is_fatal(signal::SIGSYS));
        assert!(!signal::is_fatal(signal::SIGTERM));
    }
}
