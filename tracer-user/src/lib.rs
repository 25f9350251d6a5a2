//! upstrace: why is my gateway returning 502?
//!
//! Data flows one way, and the module tree follows it:
//! `source` (kernel programs and their ring buffer, or a recorded trace) -> `engine`
//! (`decode` typed events -> `track` per connection and exchange -> `attribute` verdicts,
//! with `http` reading the bytes) -> `output` (JSON/text lines, the trace file, the
//! dashboard, metrics, OpenTelemetry, behind one trait). `pipeline` strings them together;
//! `serve` is the always-on service around it.
pub mod cli;
pub mod clock;
pub mod engine;
pub mod gateway_log;
pub mod health;
pub mod output;
pub mod pipeline;
pub mod procfs;
pub mod serve;
pub mod source;
pub mod trace_format;
