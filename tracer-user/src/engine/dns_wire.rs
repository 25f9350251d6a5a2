//! DNS messages as the kernel ships them (`dns_query`, `dns_answer`): the RFC 1035 header and
//! first question, and the names of codes and types.
use serde::{Deserialize, Serialize};

use super::escaped::escape_bytes;

/// The port resolvers listen on, UDP and TCP.
pub const DNS_PORT: u16 = 53;

/// What a DNS message's first bytes say: its header and first question.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsMessage {
    pub id: u16,
    pub response: bool,
    /// The response code (0 NOERROR, 2 SERVFAIL, 3 NXDOMAIN, 5 REFUSED).
    pub rcode: u8,
    pub answers: u16,
    /// The question's name, dotted (bytes outside names' usual set escaped); `...` ends one
    /// cut short by the kernel's copy.
    pub name: String,
    /// The question's type (1 A, 28 AAAA, 33 SRV), 0 if not read.
    pub qtype: u16,
    /// TC: the answer did not fit a datagram (the resolver's client asks again over TCP).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// Read on a TCP connection to the resolver (one open before the trace began: those seen
    /// from their connect are followed as connections, `TcpLookup`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tcp: bool,
}

const HEADER: usize = 12;

/// Read a DNS message's header and first question; None if it is not one.
pub fn parse(bytes: &[u8]) -> Option<DnsMessage> {
    let header = bytes.get(..HEADER)?;
    let word = |i: usize| u16::from_be_bytes([header[i], header[i + 1]]);
    let (id, flags, questions, answers) = (word(0), word(2), word(4), word(6));
    let response = flags & 0x8000 != 0;
    // Opcode 0 (a standard query) with one question is all resolvers send; some answer an
    // error without the question.
    if (flags >> 11) & 0xf != 0 || !(questions == 1 || (questions == 0 && response)) {
        return None;
    }
    let truncated = flags & 0x0200 != 0;
    let rcode = (flags & 0xf) as u8;
    if questions == 0 {
        return Some(DnsMessage { id, response, rcode, answers, name: String::new(), qtype: 0, truncated, tcp: false });
    }
    let mut name = Vec::new();
    let mut at = HEADER;
    let mut whole = false;
    while let Some(&len) = bytes.get(at) {
        if len == 0 {
            at += 1;
            whole = true;
            break;
        }
        // Questions are never compressed; longer labels do not exist.
        if len > 63 {
            return None;
        }
        let label = &bytes[at + 1..bytes.len().min(at + 1 + len as usize)];
        if !name.is_empty() {
            name.push(b'.');
        }
        name.extend_from_slice(label);
        if label.len() < len as usize {
            break;
        }
        at += 1 + len as usize;
    }
    let qtype = if whole { bytes.get(at..at + 2).map_or(0, |t| u16::from_be_bytes([t[0], t[1]])) } else { 0 };
    let mut name = escape_bytes(&name);
    if !whole {
        name.push_str("...");
    }
    Some(DnsMessage { id, response, rcode, answers, name, qtype, truncated, tcp: false })
}

/// A response code's name.
pub fn rcode_name(rcode: u8) -> &'static str {
    match rcode {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        _ => "an error code",
    }
}

pub fn qtype_name(qtype: u16) -> String {
    match qtype {
        1 => "A".into(),
        28 => "AAAA".into(),
        33 => "SRV".into(),
        5 => "CNAME".into(),
        t => format!("type {t}"),
    }
}
