//! Events in, verdicts out: `decode` (ring records -> typed events), `track` (per-connection
//! and per-request state), `attribute` (the pure, clock-injected judge), `http` (what the
//! gateway's and the upstream's bytes say), `tls` (TLS records seen in the clear), `dns`
//! (the gateway's own lookups).
pub mod attribute;
pub mod comm;
pub mod decode;
pub mod dns;
pub mod dns_wire;
pub mod escaped;
pub mod fastcgi;
pub mod http;
pub mod tls;
pub mod track;
pub mod verdict;
