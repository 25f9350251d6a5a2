//! upstrace: why is my gateway returning 502?
//!
//! Data flows one way: `probes` (kernel programs, ring buffer) -> `decode` (typed events) ->
//! `sink` (JSON Lines / text). Replay and the attribution engine plug into the same flow.
pub mod clock;
pub mod decode;
pub mod discover;
pub mod live;
pub mod probes;
pub mod sink;
