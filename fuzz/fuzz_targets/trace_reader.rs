#![no_main]
//! Trace files come from disk and may be anything: the reader and the engine behind it must
//! return errors, never panic or hang.
use libfuzzer_sys::fuzz_target;
use upstrace::{engine::attribute::Engine, source::replay::read_events_from};

fuzz_target!(|data: &[u8]| {
    let mut engine = Engine::new();
    let _ = read_events_from(data, std::path::Path::new("fuzz"), |ev| {
        engine.handle(&ev);
        Ok(())
    });
    let _ = engine.flush();
});
