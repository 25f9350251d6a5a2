//! Entry uprobes where gateways hand their answers to TLS: OpenSSL's `SSL_write`/`SSL_write_ex`
//! in a shared libssl, and Go's `crypto/tls.(*Conn).Write` in the gateway's own binary (no
//! return probes: nothing is needed from the return, they cost more, and they break Go). One
//! attachment per file (device, inode) serves every process that maps it; the programs keep to
//! traced processes themselves.
use std::collections::BTreeMap;

use anyhow::{Context as _, Result, anyhow};
use aya::programs::{UProbe, uprobe::UProbeScope};

use super::Probes;
use crate::source::{gosym, tls::LibraryFile};

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

/// Executables looked at so far, by (device, inode): attached (a Go binary) or not Go.
#[derive(Default)]
pub struct GoTls {
    loaded: bool,
    seen: BTreeMap<(u64, u64), bool>,
}

impl GoTls {
    /// Read this executable's TLS plaintext if it is a Go binary: attach at
    /// `crypto/tls.(*Conn).Write`, found in the binary's own table (`.gopclntab`), stripped or
    /// not. Ok(true) when it is read (now or already), Ok(false) when it is not Go; each file is
    /// looked at once.
    pub fn read(&mut self, probes: &mut Probes, exe: &LibraryFile) -> Result<bool> {
        if let Some(&attached) = self.seen.get(&(exe.dev, exe.ino)) {
            return Ok(attached);
        }
        let bytes = std::fs::read(&exe.open_path).with_context(|| format!("reading {}", exe.path))?;
        if gosym::function_offset(&bytes, "runtime.main").is_err() {
            self.seen.insert((exe.dev, exe.ino), false);
            return Ok(false);
        }
        let offset = gosym::function_offset(&bytes, gosym::GO_TLS_WRITE).with_context(|| exe.path.clone())?;
        drop(bytes);
        let program: &mut UProbe = probes.ebpf.program_mut(GO_PROGRAM).context("go_tls_write program missing")?.try_into()?;
        if !self.loaded {
            program.load().map_err(|e| anyhow!("loading {GO_PROGRAM}: {e}"))?;
            self.loaded = true;
        }
        program.attach(offset, &exe.open_path, UProbeScope::AllProcesses).map_err(|e| anyhow!("{}: {e}", exe.path))?;
        self.seen.insert((exe.dev, exe.ino), true);
        if !probes.report.attached.iter().any(|p| p == GO_PROGRAM) {
            probes.report.attached.push(GO_PROGRAM.to_owned());
        }
        Ok(true)
    }
}

const GO_PROGRAM: &str = "go_tls_write";
