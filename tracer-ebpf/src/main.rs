//! upstrace's kernel side: tracepoints and tp_btf programs only (this kernel class may have
//! neither kprobes nor BPF trampolines). One file per hook family; all of them filter in the
//! kernel and send compact `tracer_common::Event`s over a single ring buffer.
#![no_std]
#![no_main]

mod connect;
mod floor;
mod io;
mod maps;
mod packet;
mod process;
mod tcp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
