#![no_main]
//! Ring-buffer records from the kernel: decode, describe, serialize and read back.
use libfuzzer_sys::fuzz_target;
use upstrace::engine::decode::{Decoder, KernelEvent};

fuzz_target!(|data: &[u8]| {
    let decoder = Decoder::default();
    if let Ok(ev) = decoder.decode(data) {
        let _ = ev.detail();
        let text = serde_json::to_string(&ev).unwrap();
        let back: KernelEvent = serde_json::from_str(&text).unwrap();
        assert_eq!(back, ev);
    }
});
