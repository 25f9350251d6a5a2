//! What TLS looks like from the kernel, on the gateway->upstream connection: the record layer
//! is in the clear (record type, version, length), and so are the handshake's first messages
//! and, before keys are agreed, alerts. Only the first bytes of each exchange's first read are
//! kept, so this reads record headers, not whole handshakes.

/// A TLS record header: content type, legacy version 3.x, and a length that fits a record.
const RECORD_HEADER: usize = 5;
/// The largest record length allowed (2^14 plus the expansion TLS 1.2 permits).
const MAX_RECORD_LEN: usize = (1 << 14) + 2048;

/// The content types of TLS records (RFC 8446 section 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    ChangeCipherSpec,
    Alert,
    Handshake,
    ApplicationData,
}

impl ContentType {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0x14 => ContentType::ChangeCipherSpec,
            0x15 => ContentType::Alert,
            0x16 => ContentType::Handshake,
            0x17 => ContentType::ApplicationData,
            _ => return None,
        })
    }
}

/// A TLS alert in the clear: its level and description (RFC 8446 section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Alert {
    pub fatal: bool,
    pub description: u8,
}

impl Alert {
    /// The description's name in the RFC, or its number.
    pub fn name(self) -> String {
        let name = match self.description {
            0 => "close_notify",
            10 => "unexpected_message",
            20 => "bad_record_mac",
            22 => "record_overflow",
            40 => "handshake_failure",
            42 => "bad_certificate",
            43 => "unsupported_certificate",
            44 => "certificate_revoked",
            45 => "certificate_expired",
            46 => "certificate_unknown",
            47 => "illegal_parameter",
            48 => "unknown_ca",
            49 => "access_denied",
            50 => "decode_error",
            51 => "decrypt_error",
            70 => "protocol_version",
            71 => "insufficient_security",
            80 => "internal_error",
            86 => "inappropriate_fallback",
            90 => "user_canceled",
            109 => "missing_extension",
            110 => "unsupported_extension",
            112 => "unrecognized_name",
            116 => "certificate_required",
            120 => "no_application_protocol",
            other => return format!("alert {other}"),
        };
        format!("{name} ({})", self.description)
    }

    /// What the alert usually means when a server sends it in answer to a ClientHello.
    pub fn meaning(self) -> &'static str {
        match self.description {
            70 => "the server supports none of the TLS versions the gateway offered",
            40 | 71 => "the server shares no cipher suite, group or version with the gateway",
            112 => "the server has no certificate for the name the gateway sent (SNI)",
            116 => "the server requires a client certificate the gateway did not send",
            120 => "the server shares no application protocol (ALPN) with the gateway",
            42..=46 | 48 => "the server rejected the gateway's client certificate",
            _ => "the server ended the handshake",
        }
    }
}

/// The first TLS record of a read, as far as its first bytes show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub content: ContentType,
    /// The record's legacy version minor byte: 1 (TLS 1.0) to 4; 3 in TLS 1.2 and 1.3 alike.
    pub minor: u8,
    pub len: usize,
    /// The handshake message type, when the read holds it (1 ClientHello, 2 ServerHello).
    pub handshake: Option<u8>,
    /// The alert, when the read holds it whole.
    pub alert: Option<Alert>,
}

impl Record {
    /// Parse the header of a TLS record at the start of `bytes` (at least the 5 header bytes).
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let header = bytes.get(..RECORD_HEADER)?;
        let content = ContentType::from_byte(header[0])?;
        let minor = header[2];
        let len = u16::from_be_bytes([header[3], header[4]]) as usize;
        if header[1] != 3 || minor > 4 || len == 0 || len > MAX_RECORD_LEN {
            return None;
        }
        let body = &bytes[RECORD_HEADER..];
        let handshake = (content == ContentType::Handshake).then(|| body.first().copied()).flatten();
        let alert = match (content, body) {
            (ContentType::Alert, [level, description, ..]) if len == 2 => Some(Alert { fatal: *level == 2, description: *description }),
            _ => None,
        };
        Some(Record { content, minor, len, handshake, alert })
    }

    /// Just the 5 header bytes: how an OpenSSL client reads each record (header, then body).
    pub fn header_only(bytes: &[u8]) -> bool {
        bytes.len() == RECORD_HEADER && Record::parse(bytes).is_some()
    }

    /// "a TLS handshake record (ServerHello)", for summaries and evidence.
    pub fn describe(&self) -> String {
        match (self.content, self.handshake, self.alert) {
            (ContentType::Alert, _, Some(alert)) => {
                format!("a TLS {} alert, {}", if alert.fatal { "fatal" } else { "warning" }, alert.name())
            }
            (ContentType::Alert, _, None) => "a TLS alert record".into(),
            (ContentType::Handshake, Some(2), _) => "a TLS handshake record (ServerHello)".into(),
            (ContentType::Handshake, Some(1), _) => "a TLS handshake record (ClientHello)".into(),
            (ContentType::Handshake, _, _) => format!("a TLS handshake record of {} bytes", self.len),
            (ContentType::ChangeCipherSpec, _, _) => "a TLS ChangeCipherSpec record".into(),
            (ContentType::ApplicationData, _, _) => "a TLS application data record".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_read_from_their_headers() {
        let hello = Record::parse(b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\x03\x03").unwrap();
        assert_eq!((hello.content, hello.handshake, hello.len), (ContentType::Handshake, Some(2), 0x7a));
        assert_eq!(hello.describe(), "a TLS handshake record (ServerHello)");
        let alert = Record::parse(b"\x15\x03\x03\x00\x02\x02\x46").unwrap();
        assert_eq!(alert.alert, Some(Alert { fatal: true, description: 70 }));
        assert_eq!(alert.describe(), "a TLS fatal alert, protocol_version (70)");
        // The header alone, as OpenSSL reads it: type and length, no description.
        let header = Record::parse(b"\x15\x03\x01\x00\x02").unwrap();
        assert_eq!((header.content, header.alert), (ContentType::Alert, None));
        assert!(Record::header_only(b"\x16\x03\x03\x00\x7a"));
        assert!(!Record::header_only(b"HTTP/"));
        for not_tls in
            [&b"HTTP/1.1 400 Bad Request"[..], b"\x16\x03", b"\x16\x02\x03\x00\x10", b"\x16\x03\x03\x00\x00", b"\x16\x03\x03\xff\xff"]
        {
            assert_eq!(Record::parse(not_tls), None, "{not_tls:?}");
        }
        assert_eq!(Alert { fatal: true, description: 200 }.name(), "alert 200");
    }
}
