//! What the bytes say: HTTP/1.x response heads read from the upstream side. HTTP/2 frames
//! and FastCGI records will be read here too.

/// What the first bytes of a response say about it.
#[derive(Debug, PartialEq)]
pub struct ResponseHead {
    pub status: u16,
    /// Length of the header block, if it ended within the captured bytes.
    pub header_len: Option<u64>,
    pub content_length: Option<u64>,
}

impl ResponseHead {
    pub fn parse(head: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(head).ok().or_else(|| {
            let valid = std::str::from_utf8(head).err()?.valid_up_to();
            std::str::from_utf8(&head[..valid]).ok()
        })?;
        let rest = text.strip_prefix("HTTP/1.")?;
        let status: u16 = rest.get(2..5)?.parse().ok()?;
        let header_len = text.find("\r\n\r\n").map(|i| (i + 4) as u64);
        let block = &text[..header_len.map(|h| h as usize).unwrap_or(text.len())];
        let content_length = block.split("\r\n").find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
        });
        Some(ResponseHead { status, header_len, content_length })
    }
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Why a response head cannot be valid HTTP/1.x, if it cannot.
pub fn invalid_http(head: &[u8]) -> Option<&'static str> {
    if head.is_empty() {
        return None;
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

/// A response head with what could be secret hidden, for every output (lines, traces, evidence):
/// the status line is kept, and beyond it each header keeps its name while its value becomes
/// `*`s (Set-Cookie, Authorization and the like, and any other value), as does any body. The
/// length and the line structure stay (CR, LF and other control bytes are kept), so the
/// engine's checks read the masked head as they read the real one: where the header block
/// ends, whether it holds control characters. Content-Length keeps its digits: the truncation
/// check needs them, and a length is no secret. Masking a masked head changes nothing.
pub fn mask_head(head: &[u8]) -> Vec<u8> {
    let mut out = head.to_vec();
    let first_end = head.iter().position(|&c| c == b'\n').map_or(head.len(), |i| i + 1);
    // A status line is short; a long "first line" is data (not HTTP), kept only as far as
    // the evidence quotes it.
    for c in out.iter_mut().take(first_end).skip(MAX_STATUS_LINE) {
        if !c.is_ascii_control() {
            *c = b'*';
        }
    }
    let mut at = first_end;
    let mut in_headers = true;
    while at < head.len() {
        let end = head[at..].iter().position(|&c| c == b'\n').map_or(head.len(), |i| at + i + 1);
        let line = &head[at..end];
        let content = line.strip_suffix(b"\n").map_or(line, |l| l.strip_suffix(b"\r").unwrap_or(l));
        if content.is_empty() {
            in_headers = false; // the blank line: a body follows
        }
        let mut value_from = 0;
        if in_headers && let Some(colon) = content.iter().position(|&c| c == b':') {
            let name = &content[..colon];
            let token = !name.is_empty() && name.iter().all(|&c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c));
            if token {
                let value = &content[colon + 1..];
                let length_digits = value.iter().all(|&c| c.is_ascii_digit() || c == b' ' || c == b'\t');
                value_from = if name.eq_ignore_ascii_case(b"content-length") && length_digits { content.len() } else { colon + 1 };
            }
        }
        for c in &mut out[at + value_from..end] {
            if !(c.is_ascii_control() || *c == b' ') {
                *c = b'*';
            }
        }
        at = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_masked_and_the_status_line_kept() {
        let head = b"HTTP/1.1 502 Bad Gateway\r\nSet-Cookie: session=s3cr3t; Path=/\r\nAuthorization: Bearer abc\r\n\
                     Cookie: a=b\r\nProxy-Authorization: Basic Zm9v\r\nX-Internal: 10.1.2.3\r\nContent-Length: 17\r\n\r\n{\"token\":\"xyz\"}";
        let masked = mask_head(head);
        let text = String::from_utf8(masked.clone()).unwrap();
        assert!(text.starts_with("HTTP/1.1 502 Bad Gateway\r\nSet-Cookie: "), "{text}");
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
        let long = [b'x'; 100];
        let masked = mask_head(&long);
        assert!(masked[..MAX_STATUS_LINE].iter().all(|&c| c == b'x') && masked[MAX_STATUS_LINE..].iter().all(|&c| c == b'*'));
    }
}
