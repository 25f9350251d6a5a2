//! FastCGI responses (php-fpm and other FastCGI servers behind `fastcgi_pass`): a stream of
//! records, each an 8-byte header (version 1, type, request id, content length, padding)
//! and its content. `FCGI_STDOUT` carries a CGI response (headers, a `Status:` header for a
//! status other than 200, then the body); `FCGI_END_REQUEST` ends the response, so a stream cut
//! before it was cut short whoever closed.
use std::ops::Range;

const VERSION: u8 = 1;
const HEADER_LEN: usize = 8;

/// Record types a server sends (FastCGI 1.0, section 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordType {
    EndRequest = 3,
    Stdout = 6,
    Stderr = 7,
    GetValuesResult = 10,
    UnknownType = 11,
}

impl RecordType {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            3 => RecordType::EndRequest,
            6 => RecordType::Stdout,
            7 => RecordType::Stderr,
            10 => RecordType::GetValuesResult,
            11 => RecordType::UnknownType,
            _ => return None,
        })
    }
}

/// `FCGI_END_REQUEST`'s protocol status: why the server ended the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolStatus {
    RequestComplete,
    CantMultiplex,
    Overloaded,
    UnknownRole,
    Other(u8),
}

impl ProtocolStatus {
    fn from_byte(b: u8) -> Self {
        match b {
            0 => ProtocolStatus::RequestComplete,
            1 => ProtocolStatus::CantMultiplex,
            2 => ProtocolStatus::Overloaded,
            3 => ProtocolStatus::UnknownRole,
            other => ProtocolStatus::Other(other),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndRequest {
    pub app_status: u32,
    pub protocol_status: ProtocolStatus,
}

/// One record within the captured bytes: its type and where its content lies (cut to what
/// was captured).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: RecordType,
    pub content: Range<usize>,
    /// The whole content lies within the captured bytes.
    pub whole: bool,
}

/// Do these bytes start like a FastCGI record stream from a server? An HTTP response starts
/// with `H`, so one byte would do; the type and the reserved byte make a mistake unlikely.
pub fn is_records(head: &[u8]) -> bool {
    head.len() >= 2 && head[0] == VERSION && RecordType::from_byte(head[1]).is_some() && head.get(7).is_none_or(|&r| r == 0)
}

/// The records within the captured bytes, in order; stops at the first that is not a valid
/// record header (a stream the gateway would reject).
pub fn records(head: &[u8]) -> Vec<Record> {
    walk(head).0
}

/// The records, and where the walk stopped: past the end of the captured bytes, inside a
/// record header cut by the capture, or at a header that is not FastCGI 1.0.
fn walk(head: &[u8]) -> (Vec<Record>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(h) = head.get(at..at + HEADER_LEN) {
        let Some(kind) = RecordType::from_byte(h[1]).filter(|_| h[0] == VERSION) else { break };
        let len = u16::from_be_bytes([h[4], h[5]]) as usize;
        let padding = h[6] as usize;
        let start = at + HEADER_LEN;
        let end = start + len;
        out.push(Record { kind, content: start..end.min(head.len()), whole: end <= head.len() });
        at = end + padding;
    }
    (out, at)
}

/// Why a record stream cannot be valid, if it cannot: a header that is not FastCGI 1.0.
pub fn invalid(head: &[u8]) -> Option<&'static str> {
    let (_, stopped) = walk(head);
    (stopped + HEADER_LEN <= head.len()).then_some("bytes that are not FastCGI records")
}

/// The end of the response, if its `FCGI_END_REQUEST` record is within the captured bytes.
pub fn end_request(head: &[u8], records: &[Record]) -> Option<EndRequest> {
    records.iter().find(|r| r.kind == RecordType::EndRequest && r.whole && r.content.len() >= 8).map(|r| {
        let c = &head[r.content.clone()];
        EndRequest { app_status: u32::from_be_bytes([c[0], c[1], c[2], c[3]]), protocol_status: ProtocolStatus::from_byte(c[4]) }
    })
}

/// Where the CGI response begins: the first `FCGI_STDOUT` record's content.
pub fn first_stdout(records: &[Record]) -> Option<Range<usize>> {
    records.iter().find(|r| r.kind == RecordType::Stdout).map(|r| r.content.clone())
}

/// The CGI status of a response head (`Status: 503 ...`; none means 200).
pub fn cgi_status(block: &str) -> Option<u16> {
    block.split("\r\n").flat_map(|l| l.split('\n')).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim().eq_ignore_ascii_case("status").then(|| value.trim().get(..3)?.parse().ok())?
    })
}

#[cfg(test)]
pub mod build {
    //! Record streams for tests.
    pub fn record(kind: u8, content: &[u8]) -> Vec<u8> {
        let padding = (8 - content.len() % 8) % 8;
        let mut r = vec![1, kind, 0, 1, (content.len() >> 8) as u8, content.len() as u8, padding as u8, 0];
        r.extend_from_slice(content);
        r.extend(std::iter::repeat_n(0, padding));
        r
    }

    pub fn end(protocol_status: u8) -> Vec<u8> {
        record(3, &[0, 0, 0, 0, protocol_status, 0, 0, 0])
    }
}

#[cfg(test)]
mod tests {
    use super::{build::*, *};

    #[test]
    fn a_whole_response_is_read_through_its_end_record() {
        let mut stream = record(6, b"X-Powered-By: PHP/8.2\r\nContent-type: text/html\r\n\r\nhello");
        stream.extend(end(0));
        assert!(is_records(&stream));
        assert_eq!(invalid(&stream), None);
        let end = end_request(&stream, &records(&stream)).unwrap();
        assert_eq!(end.protocol_status, ProtocolStatus::RequestComplete);
        let out = first_stdout(&records(&stream)).unwrap();
        assert!(stream[out].starts_with(b"X-Powered-By"));
    }

    #[test]
    fn a_cut_stream_has_no_end_and_never_panics() {
        let stream = record(6, b"Status: 500 Internal Server Error\r\n\r\nboom");
        assert_eq!(end_request(&stream, &records(&stream)), None);
        for cut in 0..stream.len() {
            let part = &stream[..cut];
            let found = records(part);
            let _ = (invalid(part), end_request(part, &found), first_stdout(&found));
        }
        assert_eq!(cgi_status("Status: 500 Internal Server Error\r\n\r\n"), Some(500));
        assert_eq!(cgi_status("Content-type: text/html\r\n\r\n"), None);
    }

    #[test]
    fn http_and_garbage_are_not_records() {
        assert!(!is_records(b"HTTP/1.1 200 OK\r\n"));
        assert!(!is_records(b"\x01\x63garbage"));
        assert_eq!(
            invalid(b"\x01\x06\x00\x01\x00\x00\x00\x00\x02\x06\x00\x01\x00\x00\x00\x00"),
            Some("bytes that are not FastCGI records")
        );
    }
}
