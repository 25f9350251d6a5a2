//! Finding a 5xx status in the bytes a gateway writes to its client, for both sides: the
//! kernel programs run these on the first bytes of a write (plain or the plaintext handed to
//! TLS), and userspace tests and fuzzes them. Written for the verifier: fixed-size input,
//! bounded loops, every index checked.

/// Bytes of a write that are looked at: enough for an HTTP/1.x status line, or for an HTTP/2
/// HEADERS frame behind a few small control frames (SETTINGS ack, WINDOW_UPDATE).
pub const SCAN_LEN: usize = 64;

/// A 5xx status found in a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    pub status: u16,
    /// The HTTP/2 stream the HEADERS frame belongs to; 0 for HTTP/1.x.
    pub stream: u32,
}

/// `HTTP/1.x 5dd` at the start of the buffer.
#[inline(always)]
pub fn http1_5xx(b: &[u8; SCAN_LEN]) -> Option<Found> {
    if b[0] != b'H' || b[1] != b'T' || b[2] != b'T' || b[3] != b'P' || b[4] != b'/' || b[5] != b'1' || b[6] != b'.' {
        return None;
    }
    if b[8] != b' ' || b[9] != b'5' || !b[10].is_ascii_digit() || !b[11].is_ascii_digit() {
        return None;
    }
    Some(Found { status: 500 + (b[10] - b'0') as u16 * 10 + (b[11] - b'0') as u16, stream: 0 })
}

const FRAME_HEADER: usize = 9;
/// HTTP/2's initial SETTINGS_MAX_FRAME_SIZE. A status's HEADERS frame and the small frames
/// before it within [`SCAN_LEN`] bytes are far below it. What is not: the header of a TLS record
/// (0x14-0x17 0x03 0x0N) read as a frame length, since the ciphertext a gateway writes after
/// `SSL_write` passes through the same matcher.
const MAX_FRAME_LEN: usize = 16_384;
const TYPE_HEADERS: u8 = 1;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// Frames walked before giving up: a response's HEADERS comes first or behind a few small
/// control frames.
const MAX_FRAMES: usize = 4;

/// An HTTP/2 HEADERS frame whose header block starts with a 5xx `:status`, within the first
/// [`MAX_FRAMES`] frames of the buffer. Reads what needs no HPACK state: the static-table
/// entry 14 (`:status: 500`) and a literal `:status` (name index 8-14) whose value is three
/// digits, raw or Huffman-coded. nginx and HAProxy encode `:status` only so; an encoder that
/// indexes it in its dynamic table (Go, Envoy) is not read here.
#[inline(always)]
pub fn http2_5xx(b: &[u8; SCAN_LEN]) -> Option<Found> {
    let mut pos = 0usize;
    let mut i = 0;
    while i < MAX_FRAMES {
        i += 1;
        if pos + FRAME_HEADER > SCAN_LEN {
            return None;
        }
        let len = (b[pos] as usize) << 16 | (b[pos + 1] as usize) << 8 | b[pos + 2] as usize;
        let kind = b[pos + 3];
        let flags = b[pos + 4];
        // Frame types above 9 (CONTINUATION) are extensions; anything that is not a frame at
        // all ends the walk: a stream of frames has the reserved bit clear.
        if kind > 9 || b[pos + 5] & 0x80 != 0 || len > MAX_FRAME_LEN {
            return None;
        }
        let stream = (b[pos + 5] as u32 & 0x7f) << 24 | (b[pos + 6] as u32) << 16 | (b[pos + 7] as u32) << 8 | b[pos + 8] as u32;
        let body = pos + FRAME_HEADER;
        if kind == TYPE_HEADERS && stream != 0 {
            let mut p = body;
            if flags & FLAG_PADDED != 0 {
                p += 1;
            }
            if flags & FLAG_PRIORITY != 0 {
                p += 5;
            }
            return block_status(b, p).map(|status| Found { status, stream });
        }
        pos = body + len;
    }
    None
}

/// The status at the start of an HPACK header block beginning at `p`.
#[inline(always)]
fn block_status(b: &[u8; SCAN_LEN], mut p: usize) -> Option<u16> {
    // Dynamic table size updates (001xxxxx) may come first; nginx sends 0x20.
    let mut skipped = 0;
    while skipped < 3 {
        skipped += 1;
        let c = *b.get(p)?;
        if c & 0xe0 != 0x20 {
            break;
        }
        p += 1;
        if c & 0x1f == 0x1f {
            // A multi-byte size: continuation bytes have the high bit set.
            let mut n = 0;
            while n < 4 && b.get(p)? & 0x80 != 0 {
                p += 1;
                n += 1;
            }
            p += 1;
        }
    }
    let first = *b.get(p)?;
    if first == 0x8e {
        return Some(500);
    }
    // A literal whose name is `:status`: static entries 8-14 all carry that name (nginx and
    // HAProxy use 8, Go's encoder 14), with, without or never indexing (0x40, 0x00, 0x10).
    let name_index = match first & 0xf0 {
        0x40 => first & 0x3f,
        0x00 | 0x10 => first & 0x0f,
        _ => return None,
    };
    if !(8..=14).contains(&name_index) {
        return None;
    }
    let len_byte = *b.get(p + 1)?;
    let len = (len_byte & 0x7f) as usize;
    let v = p + 2;
    let digits = if len_byte & 0x80 == 0 {
        if len != 3 {
            return None;
        }
        [*b.get(v)?, *b.get(v + 1)?, *b.get(v + 2)?]
    } else {
        if !(2..=3).contains(&len) {
            return None;
        }
        let third = if len == 3 { *b.get(v + 2)? } else { 0xff };
        huffman_digits(*b.get(v)?, *b.get(v + 1)?, third, len as u32 * 8)?
    };
    if digits[0] != b'5' || !digits[1].is_ascii_digit() || !digits[2].is_ascii_digit() {
        return None;
    }
    Some(500 + (digits[1] - b'0') as u16 * 10 + (digits[2] - b'0') as u16)
}

/// Three digits from HPACK's Huffman code (RFC 7541, appendix B): '0'-'2' are the 5-bit codes
/// 0-2, '3'-'9' the 6-bit codes 0x19-0x1f. The rest of the last byte must be the EOS padding
/// (all ones). Anything else is not a three-digit status.
#[inline(always)]
fn huffman_digits(b0: u8, b1: u8, b2: u8, total: u32) -> Option<[u8; 3]> {
    let bits: u32 = (b0 as u32) << 16 | (b1 as u32) << 8 | b2 as u32;
    let mut used = 0u32;
    let mut out = [0u8; 3];
    let mut k = 0;
    while k < 3 {
        if used + 5 > total {
            return None;
        }
        let five = (bits >> (24 - used - 5)) & 0x1f;
        if five <= 2 {
            out[k] = b'0' + five as u8;
            used += 5;
        } else {
            if used + 6 > total {
                return None;
            }
            let six = (bits >> (24 - used - 6)) & 0x3f;
            if !(0x19..=0x1f).contains(&six) {
                return None;
            }
            out[k] = b'3' + (six - 0x19) as u8;
            used += 6;
        }
        k += 1;
    }
    // Padding: fewer than 8 bits, all ones, up to the end of the coded bytes.
    if total - used >= 8 {
        return None;
    }
    let pad = total - used;
    let mask = (1u32 << pad) - 1;
    if (bits >> (24 - total)) & mask != mask {
        return None;
    }
    Some(out)
}

/// Whichever protocol the write speaks.
#[inline(always)]
pub fn find_5xx(b: &[u8; SCAN_LEN]) -> Option<Found> {
    match http1_5xx(b) {
        Some(f) => Some(f),
        None => http2_5xx(b),
    }
}

/// The bytes a response takes (head + Content-Length), if its head shows both within the bytes
/// kept (`len` of them are valid); 0 if not. The kernel judges a connection's end by it.
///
/// Three searches, each a loop that stops at its match. For the verifier, each stop is a path
/// on which the position found is a known constant, and the paths of a search multiply those
/// of the next past its limit: `forget` runs between them (the kernel stores the position in
/// map memory and reads it back, which the verifier does not track), so they meet again.
#[inline(always)]
pub fn response_length(head: &[u8; crate::RESPONSE_HEAD], len: u32, mut forget: impl FnMut(u64) -> u64) -> u64 {
    const N: usize = crate::RESPONSE_HEAD;
    let len = (len as usize).min(N);
    // The end of the head ("\r\n\r\n").
    let mut end = 0;
    for i in 0..N - 3 {
        if i + 4 > len {
            break;
        }
        let Some(w) = head.get(i..i + 4).and_then(|w| w.first_chunk::<4>()) else { break };
        if u32::from_le_bytes(*w) == u32::from_le_bytes(*b"\r\n\r\n") {
            end = i + 4;
            break;
        }
    }
    let end = forget(end as u64) as usize;
    if end == 0 || end > N {
        return 0;
    }
    // "\ncontent-length:" in any case (0x20 lowers letters and leaves '\n', '-' and ':').
    const LOWER: u64 = 0x2020_2020_2020_2000;
    const FIRST: u64 = u64::from_le_bytes(*b"\ncontent");
    const SECOND: u64 = u64::from_le_bytes(*b"-length:");
    let mut value = 0;
    for i in 0..N - 15 {
        if i + 16 > end {
            break;
        }
        let Some(w) = head.get(i..i + 16) else { break };
        let (Some(a), Some(b)) = (w.first_chunk::<8>(), w.last_chunk::<8>()) else { break };
        if u64::from_le_bytes(*a) | LOWER == FIRST && u64::from_le_bytes(*b) | LOWER | 0x20 == SECOND {
            value = i + 16;
            break;
        }
    }
    let value = forget(value as u64) as usize;
    if value == 0 {
        return 0;
    }
    // Optional spaces, then the digits, before the end of the head.
    let mut at = value;
    for _ in 0..4 {
        if head.get(at) != Some(&b' ') {
            break;
        }
        at += 1;
    }
    let at = forget(at as u64) as usize;
    let (mut length, mut digits) = (0u64, 0);
    for k in 0..12 {
        match head.get(at + k) {
            Some(&b) if b.is_ascii_digit() && at + k < end => {
                length = length * 10 + (b - b'0') as u64;
                digits += 1;
            }
            _ => break,
        }
    }
    if digits == 0 { 0 } else { end as u64 + length }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    fn buf(bytes: &[u8]) -> [u8; SCAN_LEN] {
        let mut b = [0u8; SCAN_LEN];
        b[..bytes.len().min(SCAN_LEN)].copy_from_slice(&bytes[..bytes.len().min(SCAN_LEN)]);
        b
    }

    fn frame(kind: u8, flags: u8, stream: u32, body: &[u8]) -> Vec<u8> {
        let len = body.len();
        let mut f = std::vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    /// HPACK Huffman for a string of digits (the codes of RFC 7541 appendix B), EOS-padded.
    fn huffman(digits: &str) -> Vec<u8> {
        let (mut acc, mut n) = (0u64, 0u32);
        for d in digits.bytes() {
            let (code, len) = match d {
                b'0'..=b'2' => ((d - b'0') as u64, 5),
                _ => ((0x19 + d - b'3') as u64, 6),
            };
            acc = acc << len | code;
            n += len;
        }
        let pad = (8 - n % 8) % 8;
        acc = acc << pad | ((1 << pad) - 1);
        n += pad;
        (0..n / 8).rev().map(|i| (acc >> (i * 8)) as u8).collect()
    }

    #[test]
    fn http1_status_lines() {
        assert_eq!(http1_5xx(&buf(b"HTTP/1.1 502 Bad Gateway\r\n")), Some(Found { status: 502, stream: 0 }));
        assert_eq!(http1_5xx(&buf(b"HTTP/1.0 504 Gateway Time-out\r\n")).map(|f| f.status), Some(504));
        assert_eq!(http1_5xx(&buf(b"HTTP/1.1 200 OK\r\n")), None);
        assert_eq!(http1_5xx(&buf(b"HTTP/1.1 5x2 Bad\r\n")), None);
    }

    #[test]
    fn nginx_headers_frame_with_table_update_and_raw_literal() {
        // nginx: SETTINGS ack, then HEADERS on stream 3 with 0x20 then `0x48 0x03 "502"`.
        let mut w = frame(4, 1, 0, &[]);
        w.extend(frame(1, 4, 3, b"\x20\x48\x03502\x0f\x10\x05nginx"));
        assert_eq!(http2_5xx(&buf(&w)), Some(Found { status: 502, stream: 3 }));
    }

    #[test]
    fn indexed_500_and_haproxy_literal() {
        assert_eq!(http2_5xx(&buf(&frame(1, 5, 1, b"\x8e"))), Some(Found { status: 500, stream: 1 }));
        assert_eq!(http2_5xx(&buf(&frame(1, 4, 7, b"\x48\x03503"))).map(|f| f.status), Some(503));
        assert_eq!(http2_5xx(&buf(&frame(1, 4, 7, b"\x08\x03504"))).map(|f| f.status), Some(504));
        // 200 and 404 from the static table are not 5xx.
        assert_eq!(http2_5xx(&buf(&frame(1, 4, 1, b"\x88"))), None);
        assert_eq!(http2_5xx(&buf(&frame(1, 4, 1, b"\x8d"))), None);
    }

    #[test]
    fn huffman_coded_statuses() {
        for status in ["500", "502", "503", "504", "599", "520"] {
            let mut block = std::vec![0x48, 0x80 | huffman(status).len() as u8];
            block.extend(huffman(status));
            let found = http2_5xx(&buf(&frame(1, 4, 5, &block)));
            assert_eq!(found.map(|f| f.status), Some(status.parse().unwrap()), "{status} {block:x?}");
        }
        let mut block = std::vec![0x48, 0x80 | huffman("404").len() as u8];
        block.extend(huffman("404"));
        assert_eq!(http2_5xx(&buf(&frame(1, 4, 5, &block))), None);
    }

    #[test]
    fn go_names_status_by_the_500_entry() {
        // Caddy 2.6 (Go's hpack), as written to crypto/tls.(*Conn).Write: 0x4e = literal with
        // incremental indexing, name index 14; value Huffman "502".
        let w = b"\x00\x00\x3f\x01\x05\x00\x00\x00\x01\x4e\x82\x6c\x02\x40\x85\x1d\x09";
        assert_eq!(http2_5xx(&buf(w)), Some(Found { status: 502, stream: 1 }));
        // Name index 7 (`:scheme`) or 15 (`accept-charset`) is not a status.
        assert_eq!(http2_5xx(&buf(&frame(1, 4, 1, b"\x47\x03502"))), None);
        assert_eq!(http2_5xx(&buf(&frame(1, 4, 1, b"\x0f\x00\x03502"))), None);
    }

    #[test]
    fn padded_and_priority_headers() {
        let w = frame(1, FLAG_PADDED | FLAG_PRIORITY | 4, 9, b"\x02\x00\x00\x00\x01\x10\x48\x03502\x00\x00");
        assert_eq!(http2_5xx(&buf(&w)), Some(Found { status: 502, stream: 9 }));
    }

    #[test]
    fn data_frames_and_garbage_give_nothing() {
        assert_eq!(http2_5xx(&buf(&frame(0, 0, 1, b"HTTP/1.1 502 Bad Gateway"))), None);
        assert_eq!(find_5xx(&buf(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")), None);
        assert_eq!(find_5xx(&buf(&[0xff; SCAN_LEN])), None);
        assert_eq!(find_5xx(&[0u8; SCAN_LEN]), None);
        // A HEADERS frame whose block starts past the scanned bytes.
        let mut w = frame(0, 0, 1, &[0u8; 50]);
        w.extend(frame(1, 4, 3, b"\x48\x03502"));
        assert_eq!(http2_5xx(&buf(&w)), None);
    }

    /// TLS 1.2 application data records of 256-511 bytes: their header reads as a HEADERS
    /// frame (type 0x01) on a stream named by the explicit nonce. Never a status.
    #[test]
    fn tls_ciphertext_is_not_an_http2_frame() {
        for len_lo in 0..=255u8 {
            for block_start in [0x8e, 0x48, 0x20] {
                let mut w = std::vec![0x17, 0x03, 0x03, 0x01, len_lo, 0x00, 0x00, 0x00, 0x05, block_start, 0x03, b'5', b'0', b'2'];
                w.resize(SCAN_LEN, 0);
                assert_eq!(find_5xx(&buf(&w)), None, "{len_lo:#x} {block_start:#x}");
            }
        }
    }

    #[test]
    fn every_input_is_safe() {
        // Exhaustive over the bytes that steer the walk, random-ish elsewhere.
        let mut seed = 0x1234_5678u32;
        for _ in 0..200_000 {
            let mut b = [0u8; SCAN_LEN];
            for x in b.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                *x = seed as u8;
            }
            if let Some(f) = find_5xx(&b) {
                assert!((500..=599).contains(&f.status));
            }
        }
    }

    fn head(text: &[u8]) -> ([u8; crate::RESPONSE_HEAD], u32) {
        let mut h = [0u8; crate::RESPONSE_HEAD];
        let n = text.len().min(h.len());
        h[..n].copy_from_slice(&text[..n]);
        (h, n as u32)
    }

    #[test]
    fn a_response_length_is_its_head_and_content_length() {
        let (h, n) = head(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok");
        assert_eq!(response_length(&h, n, |x| x), 64 + 2);
        let (h, n) = head(b"HTTP/1.1 200 OK\r\ncontent-length:100000\r\n\r\n");
        assert_eq!(response_length(&h, n, |x| x), 42 + 100_000);
        let (h, n) = head(b"HTTP/1.0 204 No Content\r\nServer: x\r\nContent-Length:  0\r\n\r\n");
        assert_eq!(response_length(&h, n, |x| x), n as u64);
    }

    #[test]
    fn no_response_length_without_both_the_length_and_the_end_of_the_head() {
        for text in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Ty",
            b"HTTP/1.1 200 OK\r\nX-Content-Length: 2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\nok",
            b"",
        ] {
            let (h, n) = head(text);
            assert_eq!(response_length(&h, n, |x| x), 0, "{text:?}");
        }
        // Only the valid bytes count.
        let (h, _) = head(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        assert_eq!(response_length(&h, 20, |x| x), 0);
    }
}
