#![no_main]
//! The status matcher the kernel runs on what a gateway writes to its clients (plain writes and
//! TLS plaintext): HTTP/1.x status lines and HTTP/2 HEADERS frames. Any bytes: no panic, and a
//! status only in the 5xx range.
use libfuzzer_sys::fuzz_target;
use tracer_common::status::{SCAN_LEN, find_5xx};

fuzz_target!(|data: &[u8]| {
    let mut scan = [0u8; SCAN_LEN];
    let n = data.len().min(SCAN_LEN);
    scan[..n].copy_from_slice(&data[..n]);
    if let Some(found) = find_5xx(&scan) {
        assert!((500..=599).contains(&found.status));
    }
});
