//! The trace file (JSON Lines): its name and version, written in the header line by the
//! recorder and checked by replay.
pub const FORMAT_NAME: &str = "upstrace-trace";
pub const FORMAT_VERSION: u32 = 1;
