//! Empty programs, loaded only by `upstrace floor` for `cargo xtask bench`: attached to the
//! same hooks as the real programs, they measure what merely running a BPF program there
//! costs on this machine (the floor under any tracer's overhead), as a classic tracepoint
//! and, for the socket and packet hooks, as tp_btf (no trace record is built for those).
use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};

#[tracepoint]
pub fn floor(_ctx: TracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "sock_send_length")]
pub fn floor_btf_sock_send_length(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn floor_btf_sock_recv_length(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "netif_receive_skb")]
pub fn floor_btf_netif_receive_skb(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn floor_btf_inet_sock_set_state(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "kfree_skb")]
pub fn floor_btf_kfree_skb(_ctx: BtfTracePointContext) -> i32 {
    0
}
