//! Entry uprobes in the libraries gateways encrypt with: the plaintext a gateway hands to
//! OpenSSL is read where `SSL_write`/`SSL_write_ex` begin (no return probe: nothing is needed
//! from the return, and return probes cost more). One attachment per library file serves every
//! process that maps it; the programs keep to traced processes themselves.
use std::collections::BTreeMap;

use anyhow::{Context as _, Result, anyhow};
use aya::programs::{UProbe, uprobe::UProbeScope};

use super::Probes;
use crate::source::tls::LibraryFile;

const PROGRAM: &str = "ssl_write";
/// Both take the plaintext buffer as their second argument.
const SYMBOLS: [&str; 2] = ["SSL_write", "SSL_write_ex"];

/// The libssl files attached so far, by (device, inode).
#[derive(Default)]
pub struct OpenSsl {
    loaded: bool,
    attached: BTreeMap<(u64, u64), String>,
}

impl OpenSsl {
    /// Attach to this library file unless it already is. Ok(true) when newly attached (at
    /// least one of the symbols); an error names the file and what is missing.
    pub fn attach(&mut self, probes: &mut Probes, lib: &LibraryFile) -> Result<bool> {
        if self.attached.contains_key(&(lib.dev, lib.ino)) {
            return Ok(false);
        }
        let program: &mut UProbe = probes.ebpf.program_mut(PROGRAM).context("ssl_write program missing")?.try_into()?;
        if !self.loaded {
            program.load().map_err(|e| anyhow!("loading {PROGRAM}: {e}"))?;
            self.loaded = true;
        }
        let mut missing = Vec::new();
        for symbol in SYMBOLS {
            if let Err(e) = program.attach(symbol, &lib.open_path, UProbeScope::AllProcesses) {
                missing.push(format!("{symbol}: {e}"));
            }
        }
        if missing.len() == SYMBOLS.len() {
            return Err(anyhow!("{}: {}", lib.path, missing.join("; ")));
        }
        self.attached.insert((lib.dev, lib.ino), lib.path.clone());
        if !probes.report.attached.iter().any(|p| p == PROGRAM) {
            probes.report.attached.push(PROGRAM.to_owned());
        }
        Ok(true)
    }
}
