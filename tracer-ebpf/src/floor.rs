//! An empty program, loaded only by `upstrace floor` for `cargo xtask bench`: attached to the
//! same tracepoints as the real programs, it measures what merely running a BPF program at
//! those hooks costs on this machine, the floor under any tracer's overhead.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

#[tracepoint]
pub fn floor(_ctx: TracePointContext) -> u32 {
    0
}
