//! upstrace's kernel side: tracepoints and tp_btf programs only (this kernel class may have
//! neither kprobes nor BPF trampolines). One file per hook family; all of them filter in the
//! kernel and send compact `tracer_common::Event`s over a single ring buffer. Shared by all of
//! them: config.rs (the configuration and counters), maps.rs (the maps), read.rs (probe reads),
//! event.rs (building events).
//!
//! Every program (but the empty ones in floor.rs) is a thin wrapper around a body that may stop
//! early with `?`: a `try_` function, or the body a tp_btf program and its classic fallback
//! share, handed the way each reads its fields.
#![no_std]
#![no_main]

mod config;
mod connect;
mod dns;
mod event;
mod floor;
mod io;
mod maps;
mod packet;
mod process;
mod read;
mod tcp;
mod tls;

/// The shared types' version this object was built with (`tracer_common::ABI_VERSION`). No
/// program reads it: the loader reads it back from the object's symbol table before loading,
/// and refuses an object built against other shared types (a stale build).
#[unsafe(no_mangle)]
static UPSTRACE_ABI_VERSION: u32 = tracer_common::ABI_VERSION;

/// Every program's return value. The kernel ignores what tracepoint and tp_btf programs return,
/// and an `Err` (a failed read of the hook's own record) only means there is nothing to report.
#[inline(always)]
fn done(_: Result<(), i32>) -> u32 {
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
