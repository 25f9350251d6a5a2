//! TLS plaintext: entry uprobes where a gateway hands its response to OpenSSL
//! (`SSL_write(ssl, buf, num)`, `SSL_write_ex(ssl, buf, num, written)`: the buffer is the second
//! argument of both). The status found there waits, like a plain write's, for the socket send
//! the same thread makes inside the call (the ciphertext), which names the client socket. The
//! probe is attached once per library file for every process; it keeps to traced ones.
use aya_ebpf::{macros::uprobe, programs::ProbeContext};
use tracer_common::{FD_UNKNOWN, SEEN_GO_TLS, SEEN_OPENSSL};

use crate::{done, io::peek_write};

#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    done(try_ssl_write(&ctx))
}

fn try_ssl_write(ctx: &ProbeContext) -> Result<(), i32> {
    let buf: u64 = ctx.arg(1).ok_or(0)?;
    peek_write(FD_UNKNOWN, buf, SEEN_OPENSSL);
    Ok(())
}

/// `crypto/tls.(*Conn).Write(b []byte)` in Go gateways (Caddy, Traefik). Go's register ABI
/// (amd64, Go 1.17+): the receiver in RAX, the slice's pointer and length in RBX and RCX. Entry
/// only: Go moves goroutine stacks, so return probes would corrupt them.
#[uprobe]
pub fn go_tls_write(ctx: ProbeContext) -> u32 {
    done(try_go_tls_write(&ctx))
}

fn try_go_tls_write(ctx: &ProbeContext) -> Result<(), i32> {
    // SAFETY: a uprobe's context is the probed task's saved registers, readable as pt_regs.
    let buf = unsafe { (*ctx.regs).rbx };
    peek_write(FD_UNKNOWN, buf, SEEN_GO_TLS);
    Ok(())
}
