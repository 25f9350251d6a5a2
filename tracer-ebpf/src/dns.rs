//! DNS exchanges of traced processes with their resolvers (connected UDP sockets to port 53,
//! as nginx's `resolver`, HAProxy's `resolvers` and Go's resolver use): rare next to HTTP
//! traffic, so each query and each read of an answer is shipped with the message's first
//! bytes. Userspace reads the name, the response code, and what never came back. Answers read
//! on a TCP connection to port 53 that was open before tracing began (HAProxy's `tcp@`
//! nameservers keep theirs) are shipped too, behind their two-byte length; TCP connections
//! seen from their connect are followed like upstream connections (userspace tells them apart).
use tracer_common::{EventKind, IPPROTO_TCP, errno};

use crate::{
    config::cfg_get,
    event::{Who, emit, fill_tuple_from_sock},
    read::{read_kernel, read_user, read_user_bytes},
};

const DNS_PORT: u16 = 53;
/// The header and a question for names up to ~100 characters.
const DNS_HEAD: usize = 128;
/// What is readable of a short message near the end of its mapping: header and a short name.
const DNS_SHORT: usize = 48;

/// Ship a DNS query (`DnsQuery`, from a send) or an answer (`DnsAnswer`, from a read) in
/// `buf` on socket `sk` of IP protocol `protocol` (`IPPROTO_UDP`, or `IPPROTO_TCP` for reads only: in
/// the event's `old_state`); false when the socket does not talk to port 53.
#[inline(always)]
pub fn on_socket(kind: EventKind, protocol: u8, sk: u64, tgid: u32, tid: u32, buf: impl FnOnce() -> u64, ret: i32) -> bool {
    let dport = u16::from_be(read_kernel::<u16>(sk, cfg_get!(kernel.skc_dport)).unwrap_or(0));
    if dport != DNS_PORT {
        return false;
    }
    // An event loop's last read of a round finds nothing: not an answer.
    if ret == -errno::EAGAIN {
        return true;
    }
    // The message's bytes, only once the socket is known to be a resolver's.
    let buf = buf();
    // Over TCP, only what reads as a whole answer behind its length: a client connection
    // whose peer port is 53 is no resolver, and its request stays unread.
    if protocol == IPPROTO_TCP && !(ret > 0 && tcp_answer(buf, ret)) {
        return true;
    }
    emit(kind, Who::Current(tgid, tid), |e| {
        e.sock = sk;
        fill_tuple_from_sock(e, sk);
        e.value = ret as i64;
        e.old_state = protocol;
        // A query whose send failed is still the query (an earlier ICMP error reported on the
        // connected socket); a failed read left nothing in its buffer.
        let readable = ret > 0 || (kind == EventKind::DnsQuery && ret < 0);
        if !readable || buf == 0 {
            return;
        }
        let len = if ret > 0 { ret as u32 } else { DNS_HEAD as u32 };
        let Some(head) = e.data.first_chunk_mut::<DNS_HEAD>() else { return };
        if read_user_bytes(buf, head) {
            e.aux = len.min(DNS_HEAD as u32);
            return;
        }
        *head = [0; DNS_HEAD];
        let Some(short) = e.data.first_chunk_mut::<DNS_SHORT>() else { return };
        if read_user_bytes(buf, short) {
            e.aux = len.min(DNS_SHORT as u32);
        } else {
            *short = [0; DNS_SHORT];
        }
    });
    true
}

/// A read that starts with a DNS response over TCP: its two-byte length fits the read, QR is
/// set and there is one question.
#[inline(always)]
fn tcp_answer(buf: u64, ret: i32) -> bool {
    let Some(h) = read_user::<[u8; 8]>(buf) else { return false };
    let length = u16::from_be_bytes([h[0], h[1]]) as i32;
    length >= 12 && length + 2 <= ret && h[4] & 0x80 != 0 && h[6] == 0 && h[7] == 1
}
