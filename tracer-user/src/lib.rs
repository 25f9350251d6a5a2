//! upstrace: why is my gateway returning 502?
//!
//! Data flows one way:
//! `probes` (kernel programs, ring buffer) -> `decode` (typed events) -> `track` (per
//! connection and exchange) -> `attribute` (verdicts) -> `sink` (JSON Lines / text).
//! `pipeline` strings them together; `live` is the source that feeds it from the kernel.
pub mod attribute;
pub mod clock;
pub mod decode;
pub mod discover;
pub mod live;
pub mod pipeline;
pub mod probes;
pub mod record;
pub mod replay;
pub mod report;
pub mod sink;
pub mod track;
pub mod tui;
