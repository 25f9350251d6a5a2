#![no_main]
//! Response heads captured from the upstream's bytes, and their escaped form in traces.
use libfuzzer_sys::fuzz_target;
use upstrace::{
    engine::http::{ResponseHead, invalid_http},
    engine::escaped::{escape_bytes, unescape_bytes},
};

fuzz_target!(|data: &[u8]| {
    let _ = ResponseHead::parse(data);
    let _ = invalid_http(data);
    assert_eq!(unescape_bytes(&escape_bytes(data)), data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = unescape_bytes(text);
    }
});
