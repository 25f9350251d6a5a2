//! Functions of Go binaries, found even when they are stripped: Go keeps its own function table
//! (`.gopclntab`) for stack traces, with every function's name and entry. Caddy and Traefik
//! release builds carry no symbol table, only this. Read for Go 1.18 and later (the table
//! layout of `runtime/symtab.go` since then: magics 0xfffffff0 and 0xfffffff1).
use anyhow::{Context as _, Result, bail};

use super::elf::{c_str, read_u32, read_u64, sections, text_offset};

/// The function whose plaintext argument upstrace reads in Go gateways.
pub const GO_TLS_WRITE: &str = "crypto/tls.(*Conn).Write";

const GO_118_MAGIC: u32 = 0xffff_fff0;
const GO_120_MAGIC: u32 = 0xffff_fff1;

/// The file offset of a Go function's entry (what a uprobe attaches at), by its full name.
pub fn function_offset(elf: &[u8], function: &str) -> Result<u64> {
    let sections = sections(elf).context("not a 64-bit little-endian ELF file")?;
    let table = sections.iter().find(|s| s.name == b".gopclntab").context("no .gopclntab: not a Go binary")?;
    let start = usize::try_from(table.offset)?;
    let end = start.checked_add(usize::try_from(table.size)?).context("bad .gopclntab size")?;
    let tab = elf.get(start..end).context(".gopclntab past the end of the file")?;
    let magic = read_u32(tab, 0).context("short .gopclntab")?;
    if magic != GO_118_MAGIC && magic != GO_120_MAGIC {
        bail!(".gopclntab of a Go release before 1.18 (magic {magic:#x})");
    }
    if tab.get(7) != Some(&8) {
        bail!(".gopclntab of a 32-bit build");
    }
    let field = |i: usize| read_u64(tab, 8 + 8 * i).and_then(|v| usize::try_from(v).ok()).context("short .gopclntab header");
    let (nfunc, text_start, names, functab) = (field(0)?, read_u64(tab, 8 + 8 * 2).context("header")?, field(3)?, field(7)?);
    // The table's own numbers may be garbage: every sum is checked (a wrapped one would read
    // elsewhere, an overflowing one would panic where overflow is checked).
    for i in 0..nfunc {
        let Some(entry) = i.checked_mul(8).and_then(|at| functab.checked_add(at)) else { break };
        let (Some(entry_off), Some(func_off)) = (read_u32(tab, entry), entry.checked_add(4).and_then(|at| read_u32(tab, at))) else {
            break;
        };
        let Some(name_off) = functab.checked_add(func_off as usize + 4).and_then(|at| read_u32(tab, at)) else { continue };
        if names.checked_add(name_off as usize).and_then(|at| c_str(tab, at)) != Some(function.as_bytes()) {
            continue;
        }
        let addr = text_start.checked_add(u64::from(entry_off)).context("the function's address overflows")?;
        return text_offset(&sections, addr).context("the function is outside .text");
    }
    bail!("no function {function} in .gopclntab")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [&b""[..], b"\x7fELF\x02\x01\x01\x00", &[0xffu8; 256][..], b"MZ\x90\x00"] {
            assert!(function_offset(bytes, GO_TLS_WRITE).is_err());
        }
        // A real ELF file that is not Go: upstrace's own test binary.
        let own = std::fs::read("/proc/self/exe").unwrap();
        let err = function_offset(&own, GO_TLS_WRITE).unwrap_err();
        assert!(format!("{err:#}").contains("not a Go binary"), "{err:#}");
    }

    /// Debian's Caddy (installed by `cargo xtask setup`) is a stripped Go binary.
    #[test]
    fn finds_crypto_tls_write_in_a_stripped_go_binary() {
        let Ok(caddy) = std::fs::read("/usr/bin/caddy") else {
            eprintln!("skipped: /usr/bin/caddy is not installed (cargo xtask setup installs it)");
            return;
        };
        let offset = function_offset(&caddy, GO_TLS_WRITE).unwrap();
        // Go functions start with the stack-bound check: mov rcx/r12, [r14+0x10] or lea r12.
        let code = &caddy[offset as usize..offset as usize + 4];
        assert!(code.starts_with(&[0x49]) || code.starts_with(&[0x4c]), "{code:x?} at {offset:#x}");
        assert!(function_offset(&caddy, "crypto/tls.(*Conn).NoSuchMethod").is_err());
    }
}
