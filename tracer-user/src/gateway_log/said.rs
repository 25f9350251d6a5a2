//! What a verdict carries of the gateway's own account (`gateway_said`): the line, what matched
//! it, what it says and whether that agrees with the kernel. Plain types, so that a verdict can
//! hold them without the matching that finds them.
use serde::{Deserialize, Serialize};

use super::parse::Claim;

/// What matched a line to a verdict (JSON names: `pid`, `time`, `client`, `client-port`,
/// `upstream`, `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MatchKey {
    Pid,
    Time,
    Client,
    ClientPort,
    Upstream,
    Status,
}

/// Whether the gateway's words fit the kernel's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Agreement {
    Agrees,
    /// A finding: the gateway's log names another cause than the kernel saw.
    Disagrees,
    /// The line names no cause upstrace reads, or the kernel did not decide.
    Unknown,
}

/// The gateway's log line for a verdict (`gateway_said` in the JSON verdict).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewaySaid {
    /// The log it came from: a file path (`/var/log/nginx/error.log`).
    pub source: String,
    /// The line, bounded, control characters escaped, query strings masked (Caddy: its
    /// level, logger, message and error, not the whole entry).
    pub line: String,
    pub matched_by: Vec<MatchKey>,
    /// What the words say went wrong, when upstrace reads them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub says: Option<Claim>,
    pub agreement: Agreement,
}
