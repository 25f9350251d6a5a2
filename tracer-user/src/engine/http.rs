//! What the bytes say: response heads read from the upstream side, HTTP/1.x or a FastCGI
//! record stream carrying a CGI response (see `fastcgi`).
use crate::engine::fastcgi::{self, EndRequest};

/// What the first bytes of a response say about it.
#[derive(Debug, PartialEq)]
pub struct ResponseHead {
    pub status: u16,
    /// Length of the header block, if it ended within the captured bytes.
    pub header_len: Option<u64>,
    pub content_length: Option<u64>,
    /// `Transfer-Encoding: chunked` (its last coding), within the captured header block.
    pub chunked: bool,
    /// A FastCGI response: where its first `FCGI_STDOUT` content ends in the captured bytes,
    /// and its `FCGI_END_REQUEST` if that was captured too.
    pub fastcgi: Option<FastCgiStream>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastCgiStream {
    pub stdout_start: usize,
    pub stdout_end: usize,
    pub ended: Option<EndRequest>,
}

/// How the end of a response body is known (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// 1xx, 204, 304: no body.
    NoBody,
    Length(u64),
    Chunked,
    /// Neither: the body ends when the upstream closes.
    UntilClose,
    /// FastCGI: the response ends with its `FCGI_END_REQUEST` record, whoever closes.
    Records,
}

/// Whether a response arrived whole, judged by its framing alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completeness {
    Complete,
    /// Its framing says more was due (or the head never ended).
    Short,
    /// Its end lies past the bytes kept (a chunked body longer than the captured head).
    Unseen,
}

impl ResponseHead {
    pub fn parse(head: &[u8]) -> Option<Self> {
        if fastcgi::is_records(head) {
            return Self::parse_fastcgi(head);
        }
        let text = valid_prefix(head)?;
        let rest = text.strip_prefix("HTTP/1.")?;
        let status: u16 = rest.get(2..5)?.parse().ok()?;
        let header_len = text.find("\r\n\r\n").map(|i| (i + 4) as u64);
        let block = &text[..header_len.map(|h| h as usize).unwrap_or(text.len())];
        let (content_length, chunked) = framing_headers(block);
        Some(ResponseHead { status, header_len, content_length, chunked, fastcgi: None })
    }

    /// A CGI response in FastCGI records: its status is the `Status:` header's (200 without
    /// one); `header_len` counts from the start of the captured bytes, like HTTP's.
    fn parse_fastcgi(head: &[u8]) -> Option<Self> {
        let records = fastcgi::records(head);
        let stdout = fastcgi::first_stdout(&records)?;
        let text = valid_prefix(&head[stdout.clone()])?;
        let block_len = text.find("\r\n\r\n").map(|i| i + 4).or_else(|| text.find("\n\n").map(|i| i + 2));
        let block = &text[..block_len.unwrap_or(text.len())];
        let status = fastcgi::cgi_status(block).unwrap_or(200);
        let (content_length, chunked) = framing_headers(block);
        Some(ResponseHead {
            status,
            header_len: block_len.map(|l| (stdout.start + l) as u64),
            content_length,
            chunked,
            fastcgi: Some(FastCgiStream {
                stdout_start: stdout.start,
                stdout_end: stdout.end,
                ended: fastcgi::end_request(head, &records),
            }),
        })
    }

    pub fn framing(&self) -> Framing {
        if self.fastcgi.is_some() {
            Framing::Records
        } else if matches!(self.status, 100..=199 | 204 | 304) {
            Framing::NoBody
        } else if self.chunked {
            // Chunked wins over a Content-Length (RFC 9112 6.3).
            Framing::Chunked
        } else if let Some(n) = self.content_length {
            Framing::Length(n)
        } else {
            Framing::UntilClose
        }
    }

    /// Did the whole response arrive? `head` is the captured start of it, `received` the bytes
    /// the gateway read, `closed_cleanly` whether the upstream ended with a FIN (no reset, no
    /// crash): only that ends a close-delimited body.
    pub fn completeness(&self, head: &[u8], received: u64, closed_cleanly: bool) -> Completeness {
        if let Some(stream) = self.fastcgi {
            return match stream.ended {
                Some(_) => Completeness::Complete,
                None if received > head.len() as u64 => Completeness::Unseen,
                None => Completeness::Short,
            };
        }
        let Some(header_len) = self.header_len else { return Completeness::Short };
        match self.framing() {
            Framing::NoBody => Completeness::Complete,
            Framing::Length(n) if received >= header_len + n => Completeness::Complete,
            Framing::Length(_) => Completeness::Short,
            Framing::UntilClose if closed_cleanly => Completeness::Complete,
            Framing::UntilClose => Completeness::Short,
            Framing::Records => Completeness::Unseen,
            // The last chunk and the empty trailer section end it; only visible when every
            // byte read is in the captured head.
            Framing::Chunked if received > head.len() as u64 => Completeness::Unseen,
            Framing::Chunked => {
                let body = &head[(header_len as usize).min(head.len())..];
                if body == b"0\r\n\r\n" || body.ends_with(b"\r\n0\r\n\r\n") { Completeness::Complete } else { Completeness::Short }
            }
        }
    }

    /// The body bytes within the captured head, if the head ended there.
    pub fn body<'a>(&self, head: &'a [u8]) -> Option<&'a [u8]> {
        let end = self.fastcgi.map_or(head.len(), |f| f.stdout_end);
        head.get(self.header_len? as usize..end)
    }
}

/// The bytes as text, as far as they are valid UTF-8.
fn valid_prefix(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes).ok().or_else(|| {
        let valid = std::str::from_utf8(bytes).err()?.valid_up_to();
        std::str::from_utf8(&bytes[..valid]).ok()
    })
}

/// Content-Length and whether the last transfer coding is chunked, from a header block.
fn framing_headers(block: &str) -> (Option<u64>, bool) {
    let content_length = block.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
    });
    let chunked = block.split("\r\n").any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case("transfer-encoding")
                && value.rsplit(',').next().is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
        })
    });
    (content_length, chunked)
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Why a response head cannot be valid HTTP/1.x (or a valid FastCGI stream), if it cannot.
pub fn invalid_http(head: &[u8]) -> Option<&'static str> {
    if head.is_empty() {
        return None;
    }
    if fastcgi::is_records(head) {
        return fastcgi::invalid(head);
    }
    let prefix = &head[..head.len().min(5)];
    if !b"HTTP/".starts_with(prefix) {
        return Some("bytes that are not an HTTP response");
    }
    let end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(head.len());
    if head[..end].iter().any(|&c| c < 0x20 && c != b'\r' && c != b'\n' && c != b'\t' || c == 0x7f) {
        return Some("an invalid header (control characters)");
    }
    None
}

/// The longest status line kept whole by [`mask_head`].
pub const MAX_STATUS_LINE: usize = 64;

/// The first bytes of a request with what could be secret hidden: a TLS record (a ClientHello:
/// binary, public) is kept; text keeps its method (`GET `) and every other printable byte
/// becomes `*` (the path may hold a token).
pub fn mask_request_head(head: &[u8]) -> Vec<u8> {
    if crate::engine::tls::Record::parse(head).is_some() {
        return head.to_vec();
    }
    let method = head.iter().take_while(|b| b.is_ascii_uppercase()).count();
    let keep = if head.get(method) == Some(&b' ') { method + 1 } else { 0 };
    head.iter().enumerate().map(|(i, &c)| if i < keep || c.is_ascii_control() || c == b' ' { c } else { b'*' }).collect()
}

/// Does this look like the start of an HTTP/1.x request (`GET /`): a method, a space?
pub fn request_line_start(head: &[u8]) -> bool {
    let method = head.iter().take_while(|b| b.is_ascii_uppercase()).count();
    method > 0 && head.get(method) == Some(&b' ')
}

/// A response head with what could be secret hidden, for every output (lines, traces, evidence):
/// the status line is kept, and beyond it each header keeps its name while its value becomes
/// `*`s (Set-Cookie, Authorization and the like, and any other value), as does any body but a
/// 5xx's (an error page is the evidence an operator needs, and its chunked framing tells
/// whether it came whole). The length and the line structure stay (CR, LF and other control
/// bytes are kept), so the engine's checks read the masked head as they read the real one:
/// where the header block ends, whether it holds control characters. Content-Length and
/// Transfer-Encoding keep their values: the framing checks need them, and they are no secret.
/// Masking a masked head changes nothing.
pub fn mask_head(head: &[u8]) -> Vec<u8> {
    let mut out = head.to_vec();
    let keep_body = ResponseHead::parse(head).is_some_and(|h| h.status >= 500);
    if fastcgi::is_records(head) {
        mask_fastcgi(head, &mut out, keep_body);
        return out;
    }
    let first_end = head.iter().position(|&c| c == b'\n').map_or(head.len(), |i| i + 1);
    // A status line is short; a long "first line" is data (not HTTP), kept only as far as
    // the evidence quotes it.
    for c in out.iter_mut().take(first_end).skip(MAX_STATUS_LINE) {
        if !c.is_ascii_control() {
            *c = b'*';
        }
    }
    mask_header_block(head, &mut out, first_end..head.len(), keep_body);
    out
}

/// A FastCGI stream keeps its record headers (binary framing), its `FCGI_END_REQUEST` and the
/// application's stderr (the error an operator looks for, which the gateway logs anyway); the
/// CGI response in `FCGI_STDOUT` is masked like an HTTP head, its `Status:` kept.
fn mask_fastcgi(head: &[u8], out: &mut [u8], keep_body: bool) {
    let mut in_headers = true;
    let records = fastcgi::records(head);
    for record in records.iter().cloned() {
        match record.kind {
            fastcgi::RecordType::Stdout if in_headers => {
                in_headers = !mask_header_block(head, out, record.content, keep_body);
            }
            fastcgi::RecordType::Stdout if !keep_body => {
                for c in &mut out[record.content] {
                    if !(c.is_ascii_control() || *c == b' ') {
                        *c = b'*';
                    }
                }
            }
            _ => {}
        }
    }
    // Bytes past the last record header that could be read (a stream the gateway rejects)
    // are data: masked.
    let parsed_end = records.last().map_or(0, |r| r.content.end);
    if fastcgi::invalid(head).is_some() {
        for c in &mut out[parsed_end..] {
            if !c.is_ascii_control() {
                *c = b'*';
            }
        }
    }
}

/// Mask header values (but the framing headers' and a CGI `Status:`) in the lines of
/// `range`, and the body after the blank line unless `keep_body`; returns whether the blank
/// line was seen.
fn mask_header_block(head: &[u8], out: &mut [u8], range: std::ops::Range<usize>, keep_body: bool) -> bool {
    let mut at = range.start;
    let mut in_headers = true;
    while at < range.end {
        let end = head[at..range.end].iter().position(|&c| c == b'\n').map_or(range.end, |i| at + i + 1);
        let line = &head[at..end];
        let content = line.strip_suffix(b"\n").map_or(line, |l| l.strip_suffix(b"\r").unwrap_or(l));
        if in_headers && content.is_empty() {
            in_headers = false; // the blank line: a body follows
            at = end;
            continue;
        }
        let mut value_from = 0;
        if in_headers && let Some(colon) = content.iter().position(|&c| c == b':') {
            let name = &content[..colon];
            let token = !name.is_empty() && name.iter().all(|&c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c));
            if token {
                let value = &content[colon + 1..];
                let length_digits = value.iter().all(|&c| c.is_ascii_digit() || c == b' ' || c == b'\t');
                let codings = value.iter().all(|&c| c.is_ascii_alphabetic() || b" \t,".contains(&c));
                let status_line = value.len() <= MAX_STATUS_LINE && value.iter().all(|&c| c.is_ascii_alphanumeric() || c == b' ');
                let kept = (name.eq_ignore_ascii_case(b"content-length") && length_digits)
                    || (name.eq_ignore_ascii_case(b"transfer-encoding") && codings)
                    || (name.eq_ignore_ascii_case(b"status") && status_line);
                value_from = if kept { content.len() } else { colon + 1 };
            }
        }
        if !in_headers && keep_body {
            break;
        }
        for c in &mut out[at + value_from..end] {
            if !(c.is_ascii_control() || *c == b' ') {
                *c = b'*';
            }
        }
        at = end;
    }
    !in_headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_masked_and_the_status_line_kept() {
        let head = b"HTTP/1.1 200 OK\r\nSet-Cookie: session=s3cr3t; Path=/\r\nAuthorization: Bearer abc\r\n\
                     Cookie: a=b\r\nProxy-Authorization: Basic Zm9v\r\nX-Internal: 10.1.2.3\r\nContent-Length: 17\r\n\r\n{\"token\":\"xyz\"}";
        let masked = mask_head(head);
        let text = String::from_utf8(masked.clone()).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\nSet-Cookie: "), "{text}");
        for secret in ["s3cr3t", "Bearer", "abc", "a=b", "Zm9v", "10.1.2.3", "token", "xyz"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert!(text.contains("Authorization: ******"), "{text}");
        assert!(text.contains("\r\nContent-Length: 17\r\n\r\n"), "{text}");
        assert_eq!(masked.len(), head.len(), "same length: the engine's offsets stay true");
        assert_eq!(mask_head(&masked), masked, "idempotent");
        // What the engine reads from a head is unchanged.
        assert_eq!(ResponseHead::parse(&masked), ResponseHead::parse(head));
        assert_eq!(ResponseHead::parse(&masked).unwrap().content_length, Some(17));
        // A 5xx keeps its body (the error page) and its chunked framing; its headers are masked.
        let error = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\nSet-Cookie: s=1\r\n\r\n5\r\ndown!\r\n0\r\n\r\n";
        let text = String::from_utf8(mask_head(error)).unwrap();
        assert!(text.contains("Transfer-Encoding: chunked\r\nSet-Cookie: ***\r\n\r\n5\r\ndown!\r\n0\r\n\r\n"), "{text}");
    }

    #[test]
    fn masking_keeps_what_makes_a_head_invalid() {
        let bad = b"HTTP/1.1 200 OK\r\nX-Bad: a\x01b\r\n\r\n";
        assert_eq!(invalid_http(&mask_head(bad)), invalid_http(bad));
        assert!(invalid_http(&mask_head(bad)).is_some());
        let garbage = b"SSH-2.0-OpenSSH_9.2\r\nmore secret stuff";
        let masked = mask_head(garbage);
        assert!(masked.starts_with(b"SSH-2.0-OpenSSH_9.2\r\n"));
        assert!(!crate::engine::http::contains(&masked, b"secret"));
        assert_eq!(invalid_http(&masked), invalid_http(garbage));
        // A bogus Content-Length value is a value like any other.
        let text = String::from_utf8(mask_head(b"HTTP/1.1 200 OK\r\nContent-Length: 12; secret\r\n")).unwrap();
        assert!(!text.contains("secret"), "{text}");
        assert_eq!(mask_head(b""), b"");
        assert_eq!(mask_head(b"HTTP/1.1 200 OK"), b"HTTP/1.1 200 OK");
        assert_eq!(mask_request_head(b"GET /adm"), b"GET ****");
        assert_eq!(mask_request_head(b"\x16\x03\x01\x02\x00\x01\x00\x01"), b"\x16\x03\x01\x02\x00\x01\x00\x01");
        assert_eq!(mask_request_head(b"secret12"), b"********");
        assert!(request_line_start(b"GET ****") && !request_line_start(b"\x16\x03\x01\x02"));
        let long = [b'x'; 100];
        let masked = mask_head(&long);
        assert!(masked[..MAX_STATUS_LINE].iter().all(|&c| c == b'x') && masked[MAX_STATUS_LINE..].iter().all(|&c| c == b'*'));
    }

    #[test]
    fn a_fastcgi_response_is_framed_by_its_records_and_masked_like_a_head() {
        use crate::engine::fastcgi::build::{end, record};
        let mut whole = record(6, b"Status: 503 Service Unavailable\r\nSet-Cookie: s3cr3t\r\n\r\ndown for maintenance");
        whole.extend(end(0));
        let parsed = ResponseHead::parse(&whole).unwrap();
        assert_eq!(parsed.status, 503);
        assert_eq!(parsed.framing(), Framing::Records);
        assert_eq!(parsed.completeness(&whole, whole.len() as u64, false), Completeness::Complete);
        assert_eq!(parsed.body(&whole), Some(&b"down for maintenance"[..]));
        let masked = mask_head(&whole);
        assert_eq!(masked.len(), whole.len());
        assert!(!contains(&masked, b"s3cr3t"));
        assert!(contains(&masked, b"Status: 503 Service Unavailable\r\n"));
        assert!(contains(&masked, b"down for maintenance"), "a 5xx keeps its body");
        assert_eq!(ResponseHead::parse(&masked), Some(parsed));
        assert_eq!(invalid_http(&masked), None);
        assert_eq!(mask_head(&masked), masked);

        // A 200 without Status:, cut before its end record: short; its body is masked.
        let cut = record(6, b"X-Powered-By: PHP/8.2\r\nContent-type: text/html\r\n\r\nprivate page");
        let parsed = ResponseHead::parse(&cut).unwrap();
        assert_eq!(parsed.status, 200);
        assert_eq!(parsed.completeness(&cut, cut.len() as u64, true), Completeness::Short);
        assert_eq!(parsed.completeness(&cut, cut.len() as u64 + 100, true), Completeness::Unseen);
        let masked = mask_head(&cut);
        assert!(!contains(&masked, b"private") && !contains(&masked, b"PHP/8.2"));
        assert_eq!(&masked[..8], &cut[..8], "record headers are framing, kept");
        assert_eq!(ResponseHead::parse(&masked), Some(parsed));
    }
}
