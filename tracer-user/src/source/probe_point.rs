//! Where in a function to put an entry uprobe so that it costs least. A uprobe replaces one
//! instruction with a breakpoint. The kernel then either emulates that instruction (x86: a
//! call, jump, conditional jump, nop or push of a register) or copies it out and single-steps
//! it, which takes a second trap. Measured on this project's VM: 0.5-0.6 µs per hit when
//! emulated, 9.6-9.8 µs when single-stepped. `SSL_write` and `SSL_write_ex` begin with
//! `sub rsp` (and CET builds with `endbr64`), both single-stepped.
//!
//! So the probe goes on the first emulated instruction of the function's straight-line start,
//! provided the register the program reads (the plaintext pointer) is not written before it.
//! Every branch is emulated, so that instruction comes at or before the first branch: it runs
//! on every call. When no such instruction is found, the probe stays at the entry.
use iced_x86::{Code, Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, OpAccess, Register};

/// How far into a function to look (prologues reach their first branch well within this).
pub const LOOK_BYTES: usize = 128;
const LOOK_INSTRUCTIONS: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbePoint {
    /// Bytes from the function's entry.
    pub offset: u64,
    /// The kernel emulates the instruction there (no single-step).
    pub emulated: bool,
}

impl ProbePoint {
    pub const ENTRY: ProbePoint = ProbePoint { offset: 0, emulated: false };
}

/// The cheapest place in `code` (a function's first bytes, x86-64) where `kept` still holds
/// what it held at the entry.
pub fn cheapest(code: &[u8], kept: Register) -> ProbePoint {
    let kept = kept.full_register();
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    let mut instr = Instruction::default();
    for _ in 0..LOOK_INSTRUCTIONS {
        if !decoder.can_decode() {
            break;
        }
        decoder.decode_out(&mut instr);
        if instr.is_invalid() {
            break;
        }
        let at = usize::try_from(instr.ip()).unwrap_or(usize::MAX);
        if is_emulated(&instr, code.get(at..).unwrap_or_default()) {
            return ProbePoint { offset: instr.ip(), emulated: true };
        }
        let writes_kept = info
            .info(&instr)
            .used_registers()
            .iter()
            .any(|used| used.register().full_register() == kept && !matches!(used.access(), OpAccess::Read | OpAccess::CondRead));
        if writes_kept || instr.flow_control() != FlowControl::Next {
            break;
        }
    }
    ProbePoint::ENTRY
}

/// The instructions x86's uprobes emulate (arch/x86/kernel/uprobes.c: branches, nops, pushes
/// of a register), without prefixes, which the kernel refuses for some or decodes otherwise.
fn is_emulated(instr: &Instruction, bytes: &[u8]) -> bool {
    let first = bytes.first().copied().unwrap_or_default();
    match instr.code() {
        Code::Call_rel32_64 | Code::Jmp_rel8_64 | Code::Jmp_rel32_64 | Code::Nopd | Code::Nop_rm32 => {
            matches!(first, 0xe8 | 0xe9 | 0xeb | 0x90 | 0x0f)
        }
        Code::Push_r64 => matches!(first, 0x50..=0x57) || (first == 0x41 && instr.len() == 2),
        _ => instr.is_jcc_short_or_near() && matches!(first, 0x70..=0x7f | 0x0f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(code: &[u8], kept: Register) -> (u64, bool) {
        let p = cheapest(code, kept);
        (p.offset, p.emulated)
    }

    /// Debian 12's libssl3 `SSL_write`: sub rsp; mov rax, fs:[0x28]; mov [rsp+8], rax;
    /// xor eax, eax; test edx, edx; js.
    const SSL_WRITE: &[u8] = &[
        0x48, 0x83, 0xec, 0x18, 0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0, 0, 0, 0x48, 0x89, 0x44, 0x24, 0x08, 0x31, 0xc0, 0x85, 0xd2, 0x78,
        0x2f,
    ];

    #[test]
    fn the_first_emulated_instruction_before_any_write_of_the_buffer() {
        assert_eq!(at(SSL_WRITE, Register::RSI), (0x16, true));
        // SSL_write_ex: sub rsp, 8; call.
        assert_eq!(at(&[0x48, 0x83, 0xec, 0x08, 0xe8, 0x87, 0xfb, 0xff, 0xff], Register::RSI), (4, true));
        // CET builds: endbr64 (single-stepped), then push rbp.
        assert_eq!(at(&[0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0x48, 0x89, 0xe5], Register::RSI), (4, true));
        // Go: cmp rsp, [r14+0x10]; jbe (the slice pointer stays in rbx).
        assert_eq!(at(&[0x49, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0x10, 0x01, 0, 0], Register::RBX), (4, true));
        // push r12 carries a REX prefix the kernel accepts.
        assert_eq!(at(&[0x41, 0x54, 0x48, 0x89, 0xf5], Register::RSI), (0, true));
    }

    #[test]
    fn the_entry_when_the_buffer_is_written_first_or_nothing_is_emulated() {
        // mov rsi, rdi; call: at the call, rsi no longer holds the buffer.
        assert_eq!(at(&[0x48, 0x89, 0xfe, 0xe8, 0, 0, 0, 0], Register::RSI), (0, false));
        // mov esi, 1 (a 32-bit write clears the upper half too); jmp.
        assert_eq!(at(&[0xbe, 1, 0, 0, 0, 0xeb, 0], Register::RSI), (0, false));
        // The same with another register kept: the jmp is fine.
        assert_eq!(at(&[0xbe, 1, 0, 0, 0, 0xeb, 0], Register::RBX), (5, true));
        // sub rsp; ret: nothing to emulate before the function leaves.
        assert_eq!(at(&[0x48, 0x83, 0xec, 0x08, 0xc3, 0xe8, 0, 0, 0, 0], Register::RSI), (0, false));
        // A 16-bit-prefixed call (66 e8) is refused by the kernel; garbage and nothing decode.
        assert_eq!(at(&[0x66, 0xe8, 0, 0], Register::RSI), (0, false));
        assert_eq!(at(&[0xff; 4], Register::RSI), (0, false));
        assert_eq!(at(&[], Register::RSI), (0, false));
    }

    fn point_in(file: &[u8], entry: u64, kept: Register) -> ProbePoint {
        let code = &file[entry as usize..];
        cheapest(&code[..code.len().min(LOOK_BYTES)], kept)
    }

    /// The libssl every gateway here maps (Debian 12's OpenSSL 3): both symbols found, both
    /// probes on an emulated instruction past the entry.
    #[test]
    fn the_systems_libssl_gets_emulated_points() {
        let Ok(libssl) = std::fs::read("/lib/x86_64-linux-gnu/libssl.so.3") else {
            eprintln!("skipped: no /lib/x86_64-linux-gnu/libssl.so.3 (apt package libssl3)");
            return;
        };
        for symbol in ["SSL_write", "SSL_write_ex"] {
            let entry = crate::source::elf::function_symbol_offset(&libssl, symbol).expect(symbol);
            let point = point_in(&libssl, entry, Register::RSI);
            assert!(point.emulated && point.offset > 0, "{symbol}: {point:?}");
        }
        assert_eq!(crate::source::elf::function_symbol_offset(&libssl, "SSL_no_such_function"), None);
    }

    /// Caddy's `crypto/tls.(*Conn).Write`: the stack-bound check's conditional jump.
    #[test]
    fn caddys_tls_write_gets_an_emulated_point() {
        let Ok(caddy) = std::fs::read("/usr/bin/caddy") else {
            eprintln!("skipped: /usr/bin/caddy is not installed (cargo xtask setup installs it)");
            return;
        };
        let entry = crate::source::gosym::function_offset(&caddy, crate::source::gosym::GO_TLS_WRITE).unwrap();
        let point = point_in(&caddy, entry, Register::RBX);
        assert!(point.emulated && point.offset > 0, "{point:?}");
    }
}
