//! Entry uprobes where gateways hand their answers to TLS: OpenSSL's `SSL_write`/`SSL_write_ex`
//! in a shared libssl, and Go's `crypto/tls.(*Conn).Write` in the gateway's own binary (no
//! return probes: nothing is needed from the return, they cost more, and they break Go). One
//! attachment per file (device, inode) serves every process that maps it; the programs keep to
//! traced processes themselves. Each probe sits on an instruction the kernel emulates where
//! there is one (`probe_point`), not always at the entry.
use std::collections::BTreeMap;

use anyhow::{Context as _, Result, anyhow};
use aya::programs::{UProbe, uprobe::UProbeScope};
use iced_x86::Register;

use super::Probes;
use crate::source::{
    elf, gosym,
    probe_point::{self, ProbePoint},
    tls::LibraryFile,
};

const PROGRAM: &str = "ssl_write";
/// Both take the plaintext buffer as their second argument.
const SYMBOLS: [&str; 2] = ["SSL_write", "SSL_write_ex"];

/// The libssl files attached so far, by (device, inode), with where their probes sit
/// (`SSL_write+0x16`): the same file may have another path in another gateway's mounts.
#[derive(Default)]
pub struct OpenSsl {
    loaded: bool,
    attached: BTreeMap<(u64, u64), String>,
}

impl OpenSsl {
    /// Attach to this library file unless it already is. Ok says the file and where its
    /// probes sit (at least one of the symbols); an error names the file and what is missing.
    pub fn attach(&mut self, probes: &mut Probes, lib: &LibraryFile) -> Result<String> {
        if let Some(placed) = self.attached.get(&(lib.dev, lib.ino)) {
            return Ok(where_placed(&lib.path, placed));
        }
        let program = loaded(probes, PROGRAM, &mut self.loaded)?;
        // Unreadable here, the file is still attached by aya's own lookup, at the entries.
        let bytes = std::fs::read(&lib.open_path).unwrap_or_default();
        let (mut placed, mut missing) = (Vec::new(), Vec::new());
        for symbol in SYMBOLS {
            let attached = match elf::function_symbol(&bytes, symbol) {
                Some((entry, size)) => {
                    let point = probe_point::cheapest_in(&bytes, entry, Some(size), Register::RSI);
                    program.attach(entry + point.offset(), &lib.open_path, UProbeScope::AllProcesses).map(|_| point)
                }
                None => program.attach(symbol, &lib.open_path, UProbeScope::AllProcesses).map(|_| ProbePoint::Entry),
            };
            match attached {
                Ok(point) => placed.push(point.describe(symbol)),
                Err(e) => missing.push(format!("{symbol}: {e}")),
            }
        }
        if placed.is_empty() {
            return Err(anyhow!("{}: {}", lib.path, missing.join("; ")));
        }
        let placed = placed.join(", ");
        let said = where_placed(&lib.path, &placed);
        self.attached.insert((lib.dev, lib.ino), placed);
        report_attached(probes, PROGRAM);
        Ok(said)
    }
}

/// Executables looked at so far, by (device, inode): where the probe sits (a Go binary), or
/// None (not Go).
#[derive(Default)]
pub struct GoTls {
    loaded: bool,
    seen: BTreeMap<(u64, u64), Option<String>>,
}

impl GoTls {
    /// Read this executable's TLS plaintext if it is a Go binary: attach at
    /// `crypto/tls.(*Conn).Write`, found in the binary's own table (`.gopclntab`), stripped or
    /// not. Ok(Some) says where its probe sits (now or already), Ok(None) that it is not Go;
    /// each file is looked at once.
    pub fn read(&mut self, probes: &mut Probes, exe: &LibraryFile) -> Result<Option<String>> {
        if let Some(placed) = self.seen.get(&(exe.dev, exe.ino)) {
            return Ok(placed.as_ref().map(|placed| where_placed(&exe.path, placed)));
        }
        let bytes = std::fs::read(&exe.open_path).with_context(|| format!("reading {}", exe.path))?;
        if gosym::function_offset(&bytes, "runtime.main").is_err() {
            self.seen.insert((exe.dev, exe.ino), None);
            return Ok(None);
        }
        let entry = gosym::function_offset(&bytes, gosym::GO_TLS_WRITE).with_context(|| exe.path.clone())?;
        let point = probe_point::cheapest_in(&bytes, entry, None, Register::RBX);
        drop(bytes);
        let program = loaded(probes, GO_PROGRAM, &mut self.loaded)?;
        program.attach(entry + point.offset(), &exe.open_path, UProbeScope::AllProcesses).map_err(|e| anyhow!("{}: {e}", exe.path))?;
        let placed = point.describe(gosym::GO_TLS_WRITE);
        let said = where_placed(&exe.path, &placed);
        self.seen.insert((exe.dev, exe.ino), Some(placed));
        report_attached(probes, GO_PROGRAM);
        Ok(Some(said))
    }
}

const GO_PROGRAM: &str = "go_tls_write";

/// The uprobe program `name`, loaded the first time it is needed.
fn loaded<'a>(probes: &'a mut Probes, name: &str, done: &mut bool) -> Result<&'a mut UProbe> {
    let program: &mut UProbe = probes.ebpf.program_mut(name).with_context(|| format!("{name} program missing"))?.try_into()?;
    if !*done {
        program.load().map_err(|e| anyhow!("loading {name}: {e}"))?;
        *done = true;
    }
    Ok(program)
}

/// Listed once among the attached programs, however many files it is attached to.
fn report_attached(probes: &mut Probes, name: &str) {
    if !probes.report.attached.iter().any(|p| p == name) {
        probes.report.attached.push(name.to_owned());
    }
}

/// `/usr/lib/.../libssl.so.3 at SSL_write+0x16, ...`: the path as this gateway sees it.
fn where_placed(path: &str, placed: &str) -> String {
    format!("{path} at {placed}")
}
