//! What the bytes say: HTTP/1.x response heads read from the upstream side. HTTP/2 frames
//! and FastCGI records will be read here too.

/// What the first bytes of a response say about it.
#[derive(Debug, PartialEq)]
pub struct ResponseHead {
    pub status: u16,
    /// Length of the header block, if it ended within the captured bytes.
    pub header_len: Option<u64>,
    pub content_length: Option<u64>,
    /// `Transfer-Encoding: chunked` (its last coding), within the captured header block.
    pub chunked: bool,
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
        let chunked = block.split("\r\n").any(|line| {
            line.split_once(':').is_some_and(|(name, value)| {
                name.eq_ignore_ascii_case("transfer-encoding")
                    && value.rsplit(',').next().is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
            })
        });
        Some(ResponseHead { status, header_len, content_length, chunked })
    }

    pub fn framing(&self) -> Framing {
        if matches!(self.status, 100..=199 | 204 | 304) {
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
        let Some(header_len) = self.header_len else { return Completeness::Short };
        match self.framing() {
            Framing::NoBody => Completeness::Complete,
            Framing::Length(n) if received >= header_len + n => Completeness::Complete,
            Framing::Length(_) => Completeness::Short,
            Framing::UntilClose if closed_cleanly => Completeness::Complete,
            Framing::UntilClose => Completeness::Short,
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
        head.get(self.header_len? as usize..)
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
