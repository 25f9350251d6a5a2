//! Just enough of 64-bit little-endian ELF files for uprobes: the section table, a function's
//! file offset by its symbol, and its first bytes of code.

/// A section of a 64-bit little-endian ELF file: (name, address, file offset, size).
pub struct Section<'a> {
    pub name: &'a [u8],
    pub addr: u64,
    pub offset: u64,
    pub size: u64,
}

pub fn read_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at.checked_add(2)?)?.try_into().ok()?))
}

pub fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

pub fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

pub fn c_str(b: &[u8], at: usize) -> Option<&[u8]> {
    let rest = b.get(at..)?;
    Some(&rest[..rest.iter().position(|&c| c == 0)?])
}

pub fn sections(elf: &[u8]) -> Option<Vec<Section<'_>>> {
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let shoff = usize::try_from(read_u64(elf, 0x28)?).ok()?;
    let (entsize, count, names) = (read_u16(elf, 0x3a)? as usize, read_u16(elf, 0x3c)? as usize, read_u16(elf, 0x3e)? as usize);
    let header = |i: usize| shoff.checked_add(i.checked_mul(entsize)?);
    let names_at = usize::try_from(read_u64(elf, header(names)? + 0x18)?).ok()?;
    (0..count)
        .map(|i| {
            let h = header(i)?;
            Some(Section {
                name: c_str(elf, names_at.checked_add(read_u32(elf, h)? as usize)?)?,
                addr: read_u64(elf, h + 0x10)?,
                offset: read_u64(elf, h + 0x18)?,
                size: read_u64(elf, h + 0x20)?,
            })
        })
        .collect()
}

/// The file offset of the section holding `addr`, among the executable ones (`.text*`).
pub fn text_offset(sections: &[Section<'_>], addr: u64) -> Option<u64> {
    let text = sections.iter().find(|s| s.addr <= addr && addr < s.addr.saturating_add(s.size) && s.name.starts_with(b".text"))?;
    Some(addr - text.addr + text.offset)
}

const SYMBOL_SIZE: usize = 24;
const SYMBOL_FUNC: u8 = 2;

/// The file offset of a defined function symbol, looked up in the dynamic symbols (a shared
/// library's exports) and then the full table when the file has one.
pub fn function_symbol_offset(elf: &[u8], name: &str) -> Option<u64> {
    let sections = sections(elf)?;
    for (symbols, strings) in [(&b".dynsym"[..], &b".dynstr"[..]), (b".symtab", b".strtab")] {
        let (Some(table), Some(names)) = (sections.iter().find(|s| s.name == symbols), sections.iter().find(|s| s.name == strings)) else {
            continue;
        };
        let (start, names_at) = (usize::try_from(table.offset).ok()?, usize::try_from(names.offset).ok()?);
        for i in 0..usize::try_from(table.size).ok()? / SYMBOL_SIZE {
            let at = start.checked_add(i * SYMBOL_SIZE)?;
            let info = *elf.get(at + 4)?;
            let (section, value) = (read_u16(elf, at + 6)?, read_u64(elf, at + 8)?);
            if info & 0xf != SYMBOL_FUNC || section == 0 || value == 0 {
                continue;
            }
            if c_str(elf, names_at.checked_add(read_u32(elf, at)? as usize)?) == Some(name.as_bytes()) {
                return text_offset(&sections, value);
            }
        }
    }
    None
}
