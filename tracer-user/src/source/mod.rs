//! Where events come from: the kernel (`probes` loads and attaches the programs, `live` drains
//! their ring buffer, `ring_fill` says how full it is, `discover` finds the gateways) or a
//! recorded trace (`replay`).
pub mod discover;
pub(crate) mod elf;
pub mod gosym;
pub mod live;
pub(crate) mod probe_point;
pub mod probes;
pub mod replay;
pub mod ring_fill;
pub mod tls;
