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
