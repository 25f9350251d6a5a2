#![no_main]
//! tracefs `format` files, as the kernel writes them.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = upstrace::source::probes::layout::parse_format(text);
    }
});
