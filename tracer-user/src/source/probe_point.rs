//! Where in a function to put an entry uprobe so that it costs least. A uprobe replaces one
//! instruction with a breakpoint. The kernel then either emulates that instruction (x86:
//! jumps, conditional jumps and nops on every kernel; register pushes and multi-byte nops on
//! recent ones) or copies it out and single-steps it, which takes a second trap. Measured on
//! this project's VM: 0.5-0.6 µs per hit when emulated, 9.6-9.8 µs when single-stepped.
//! `SSL_write` begins with `sub rsp` (and in CET builds with `endbr64`), both single-stepped.
//!
//! So the probe goes on an emulated instruction of the function's straight-line start, where
//! the register the program reads (the plaintext pointer) still holds what it held at the
//! entry. The scan stops at the first instruction that may not fall through (a branch, a
//! return), so whatever it chooses runs on every call; and nothing later in the function may
//! jump back to the chosen instruction or before it, or the probe would fire again, with other
//! registers. A `call` is never chosen: emulating one must also keep a user shadow stack in
//! step (x86 CET), which not every kernel version is known to do, and a process whose shadow
//! stack is out of step dies on its return.
use iced_x86::{Code, Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, OpAccess, Register};

/// How far into a function to look for the probe point (prologues reach their first branch
/// well within this).
const LOOK_BYTES: usize = 128;
const LOOK_INSTRUCTIONS: usize = 32;
/// How much of the function is checked for jumps back to its start, when its size is unknown.
const CHECKED_BYTES: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbePoint {
    /// This many bytes past the entry, on an instruction the kernel emulates.
    Emulated(u64),
    /// At the entry: no better place was found (or the code could not be read), so it is
    /// single-stepped unless the function's first instruction is one the kernel emulates.
    Entry,
}

impl ProbePoint {
    pub fn offset(self) -> u64 {
        match self {
            ProbePoint::Emulated(offset) => offset,
            ProbePoint::Entry => 0,
        }
    }

    /// `SSL_write+0x16`, or the entry.
    pub fn describe(self, function: &str) -> String {
        match self {
            ProbePoint::Emulated(0) => function.to_owned(),
            ProbePoint::Emulated(offset) => format!("{function}+{offset:#x}"),
            ProbePoint::Entry => format!("{function} (entry)"),
        }
    }
}

/// The cheapest probe point of the function at `entry` (a file offset) in `file`, `size` bytes
/// long when its symbol says (x86-64 code; elsewhere, the entry).
pub fn cheapest_in(file: &[u8], entry: u64, size: Option<u64>, kept: Register) -> ProbePoint {
    if !cfg!(target_arch = "x86_64") {
        return ProbePoint::Entry;
    }
    let start = usize::try_from(entry).unwrap_or(usize::MAX);
    let code = file.get(start..).unwrap_or_default();
    let len = size.and_then(|s| usize::try_from(s).ok()).filter(|&s| s > 0).unwrap_or(CHECKED_BYTES);
    cheapest(&code[..code.len().min(len)], kept)
}

/// The cheapest place in `code` (a whole function, or its first bytes, x86-64) where `kept`
/// still holds what it held at the entry.
pub fn cheapest(code: &[u8], kept: Register) -> ProbePoint {
    let Some(point) = first_emulated(&code[..code.len().min(LOOK_BYTES)], kept) else { return ProbePoint::Entry };
    if point > 0 && jumped_back_to(code, point) {
        return ProbePoint::Entry;
    }
    ProbePoint::Emulated(point)
}

/// The first instruction of the straight-line start that every kernel emulates, else the first
/// that recent ones do; None when `kept` is written, or the start branches, before either.
fn first_emulated(code: &[u8], kept: Register) -> Option<u64> {
    let kept = kept.full_register();
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    let mut instr = Instruction::default();
    let mut recent_only = None;
    for _ in 0..LOOK_INSTRUCTIONS {
        if !decoder.can_decode() {
            break;
        }
        decoder.decode_out(&mut instr);
        if instr.is_invalid() {
            break;
        }
        let bytes = code.get(usize::try_from(instr.ip()).unwrap_or(usize::MAX)..).unwrap_or_default();
        match emulation(&instr, bytes) {
            Some(Emulated::Always) => return Some(instr.ip()),
            Some(Emulated::Recently) => {
                recent_only.get_or_insert(instr.ip());
            }
            None => {}
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
    recent_only
}

/// Whether a direct jump anywhere in `code` lands in `(0, point]`: a loop back into the
/// function's start would run the probe again.
fn jumped_back_to(code: &[u8], point: u64) -> bool {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut instr = Instruction::default();
    while decoder.can_decode() {
        decoder.decode_out(&mut instr);
        let direct = matches!(instr.flow_control(), FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch);
        if direct && (1..=point).contains(&instr.near_branch_target()) {
            return true;
        }
    }
    false
}

enum Emulated {
    /// By every kernel with uprobes (arch/x86/kernel/uprobes.c: branches, `nop`).
    Always,
    /// By recent kernels only (pushes of a register; multi-byte nops); older ones single-step
    /// them, which costs what the entry costs.
    Recently,
}

/// How the kernel treats this instruction. Prefixed forms are refused (the kernel rejects
/// 16-bit branches), but for the REX prefix of a push of r8-r15.
fn emulation(instr: &Instruction, bytes: &[u8]) -> Option<Emulated> {
    let first = bytes.first().copied().unwrap_or_default();
    let unprefixed = |opcodes: &[u8]| opcodes.contains(&first);
    match instr.code() {
        Code::Jmp_rel8_64 if unprefixed(&[0xeb]) => Some(Emulated::Always),
        Code::Jmp_rel32_64 if unprefixed(&[0xe9]) => Some(Emulated::Always),
        Code::Nopd if unprefixed(&[0x90]) => Some(Emulated::Always),
        Code::Nop_rm32 if unprefixed(&[0x0f]) => Some(Emulated::Recently),
        Code::Push_r64 if (0x50..=0x57).contains(&first) || (first == 0x41 && instr.len() == 2) => Some(Emulated::Recently),
        _ if instr.is_jcc_short() && (0x70..=0x7f).contains(&first) => Some(Emulated::Always),
        _ if instr.is_jcc_near() && first == 0x0f => Some(Emulated::Always),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(code: &[u8], kept: Register) -> ProbePoint {
        cheapest(code, kept)
    }

    /// Debian 12's libssl3 `SSL_write`: sub rsp; mov rax, fs:[0x28]; mov [rsp+8], rax;
    /// xor eax, eax; test edx, edx; js.
    const SSL_WRITE: &[u8] = &[
        0x48, 0x83, 0xec, 0x18, 0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0, 0, 0, 0x48, 0x89, 0x44, 0x24, 0x08, 0x31, 0xc0, 0x85, 0xd2, 0x78,
        0x2f,
    ];

    #[test]
    fn an_emulated_instruction_before_any_write_of_the_buffer() {
        assert_eq!(at(SSL_WRITE, Register::RSI), ProbePoint::Emulated(0x16));
        // CET builds: endbr64 (single-stepped), push rbp (recent kernels), then a jump (all):
        // the jump, which every kernel emulates.
        assert_eq!(at(&[0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0x74, 0x00], Register::RSI), ProbePoint::Emulated(5));
        // Without one, the push.
        assert_eq!(at(&[0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0x48, 0x89, 0xfe, 0xc3], Register::RSI), ProbePoint::Emulated(4));
        // Go: cmp rsp, [r14+0x10]; jbe (the slice pointer stays in rbx).
        assert_eq!(at(&[0x49, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0x10, 0x01, 0, 0], Register::RBX), ProbePoint::Emulated(4));
        // push r12 carries a REX prefix the kernel accepts.
        assert_eq!(at(&[0x41, 0x54, 0xc3], Register::RSI), ProbePoint::Emulated(0));
    }

    #[test]
    fn the_entry_when_the_buffer_is_written_first_or_nothing_is_emulated() {
        // mov rsi, rdi; jmp: at the jump, rsi no longer holds the buffer.
        assert_eq!(at(&[0x48, 0x89, 0xfe, 0xeb, 0], Register::RSI), ProbePoint::Entry);
        // mov esi, 1 (a 32-bit write clears the upper half too); jmp.
        assert_eq!(at(&[0xbe, 1, 0, 0, 0, 0xeb, 0], Register::RSI), ProbePoint::Entry);
        // The same with another register kept: the jump is fine.
        assert_eq!(at(&[0xbe, 1, 0, 0, 0, 0xeb, 0], Register::RBX), ProbePoint::Emulated(5));
        // SSL_write_ex: sub rsp, 8; call. A call is never chosen (shadow stacks).
        assert_eq!(at(&[0x48, 0x83, 0xec, 0x08, 0xe8, 0x87, 0xfb, 0xff, 0xff], Register::RSI), ProbePoint::Entry);
        // sub rsp; ret: nothing emulated before the function leaves.
        assert_eq!(at(&[0x48, 0x83, 0xec, 0x08, 0xc3, 0xeb, 0], Register::RSI), ProbePoint::Entry);
        // A 16-bit-prefixed jump (66 e9) is refused by the kernel; garbage and nothing decode.
        assert_eq!(at(&[0x66, 0xe9, 0, 0], Register::RSI), ProbePoint::Entry);
        assert_eq!(at(&[0xff; 4], Register::RSI), ProbePoint::Entry);
        assert_eq!(at(&[], Register::RSI), ProbePoint::Entry);
    }

    #[test]
    fn the_entry_when_the_function_jumps_back_to_its_start() {
        // sub rsp, 8; test edx, edx; js +0; ...; jmp back to the test (offset 4): the probe on
        // the js would fire on every pass of the loop.
        let looping = [0x48, 0x83, 0xec, 0x08, 0x85, 0xd2, 0x78, 0x00, 0x90, 0xeb, 0xf9];
        assert_eq!(at(&looping, Register::RSI), ProbePoint::Entry);
        // A jump back to the entry itself (Go's morestack path) re-runs an entry probe too.
        let to_entry = [0x48, 0x83, 0xec, 0x08, 0x85, 0xd2, 0x78, 0x00, 0xeb, 0xf6];
        assert_eq!(at(&to_entry, Register::RSI), ProbePoint::Emulated(6));
    }

    /// The libssl every gateway here maps (Debian 12's OpenSSL 3): `SSL_write` (what nginx and
    /// HAProxy call) on an emulated instruction past the entry.
    #[test]
    fn the_systems_libssl_write_gets_an_emulated_point() {
        let Ok(libssl) = std::fs::read("/lib/x86_64-linux-gnu/libssl.so.3") else {
            eprintln!("skipped: no /lib/x86_64-linux-gnu/libssl.so.3 (apt package libssl3)");
            return;
        };
        let (entry, size) = crate::source::elf::function_symbol(&libssl, "SSL_write").expect("SSL_write");
        let point = cheapest_in(&libssl, entry, Some(size), Register::RSI);
        assert!(matches!(point, ProbePoint::Emulated(offset) if offset > 0), "{point:?}");
        assert!(crate::source::elf::function_symbol(&libssl, "SSL_write_ex").is_some());
        assert_eq!(crate::source::elf::function_symbol(&libssl, "SSL_no_such_function"), None);
    }

    /// Caddy's `crypto/tls.(*Conn).Write`: the stack-bound check's conditional jump.
    #[test]
    fn caddys_tls_write_gets_an_emulated_point() {
        let Ok(caddy) = std::fs::read("/usr/bin/caddy") else {
            eprintln!("skipped: /usr/bin/caddy is not installed (cargo xtask setup installs it)");
            return;
        };
        let entry = crate::source::gosym::function_offset(&caddy, crate::source::gosym::GO_TLS_WRITE).unwrap();
        let point = cheapest_in(&caddy, entry, None, Register::RBX);
        assert!(matches!(point, ProbePoint::Emulated(offset) if offset > 0), "{point:?}");
    }
}
