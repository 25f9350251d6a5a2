//! Just enough of 64-bit little-endian ELF files for uprobes: the section table, and a
//! function's file offset and size by its symbol. Files come from the gateway's disk: any
//! offset in them may be garbage, so every sum is checked and every string is bounded by its
//! table.

/// A section of a 64-bit little-endian ELF file: (name, address, file offset, size, the
/// section its `sh_link` names).
pub struct Section<'a> {
    pub name: &'a [u8],
    pub addr: u64,
    pub offset: u64,
    pub size: u64,
    link: u32,
}

impl<'a> Section<'a> {
    /// The section's bytes, if the file holds them whole.
    fn bytes(&self, elf: &'a [u8]) -> Option<&'a [u8]> {
        let start = usize::try_from(self.offset).ok()?;
        elf.get(start..start.checked_add(usize::try_from(self.size).ok()?)?)
    }
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

/// The NUL-terminated string at `at` in `table` (a string table, not the whole file: a
/// string without its NUL cannot send the search through the rest of the file).
pub fn c_str(table: &[u8], at: usize) -> Option<&[u8]> {
    let rest = table.get(at..)?;
    Some(&rest[..rest.iter().position(|&c| c == 0)?])
}

pub fn sections(elf: &[u8]) -> Option<Vec<Section<'_>>> {
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let shoff = usize::try_from(read_u64(elf, 0x28)?).ok()?;
    let (entsize, count, names) = (read_u16(elf, 0x3a)? as usize, read_u16(elf, 0x3c)? as usize, read_u16(elf, 0x3e)? as usize);
    let header = |i: usize| shoff.checked_add(i.checked_mul(entsize)?);
    let field = |h: usize, at: usize| read_u64(elf, h.checked_add(at)?);
    let names_header = header(names)?;
    let (names_at, names_size) = (usize::try_from(field(names_header, 0x18)?).ok()?, usize::try_from(field(names_header, 0x20)?).ok()?);
    let names_table = elf.get(names_at..names_at.checked_add(names_size)?)?;
    (0..count)
        .map(|i| {
            let h = header(i)?;
            Some(Section {
                name: c_str(names_table, read_u32(elf, h)? as usize)?,
                addr: field(h, 0x10)?,
                offset: field(h, 0x18)?,
                size: field(h, 0x20)?,
                link: read_u32(elf, h.checked_add(0x28)?)?,
            })
        })
        .collect()
}

/// The file offset of the section holding `addr`, among the executable ones (`.text*`).
pub fn text_offset(sections: &[Section<'_>], addr: u64) -> Option<u64> {
    let text = sections.iter().find(|s| s.addr <= addr && addr < s.addr.saturating_add(s.size) && s.name.starts_with(b".text"))?;
    (addr - text.addr).checked_add(text.offset)
}

const SYMBOL_SIZE: usize = 24;
const SYMBOL_FUNC: u8 = 2;

/// The file offset and size of a defined function symbol, looked up in the dynamic symbols (a
/// shared library's exports), then in the full table when the file has one. The first symbol
/// of that name counts (as in aya's own lookup).
pub fn function_symbol(elf: &[u8], name: &str) -> Option<(u64, u64)> {
    let sections = sections(elf)?;
    for table_name in [&b".dynsym"[..], b".symtab"] {
        let Some(table) = sections.iter().find(|s| s.name == table_name) else { continue };
        let (Some(symbols), Some(strings)) = (table.bytes(elf), sections.get(table.link as usize).and_then(|s| s.bytes(elf))) else {
            continue;
        };
        for symbol in symbols.chunks_exact(SYMBOL_SIZE) {
            let (info, section, value) = (symbol[4], read_u16(symbol, 6)?, read_u64(symbol, 8)?);
            if info & 0xf != SYMBOL_FUNC || section == 0 || value == 0 {
                continue;
            }
            if c_str(strings, read_u32(symbol, 0)? as usize) == Some(name.as_bytes()) {
                return Some((text_offset(&sections, value)?, read_u64(symbol, 16)?));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_and_truncated_files_are_none_not_a_panic() {
        let own = std::fs::read("/proc/self/exe").unwrap();
        for len in [0, 6, 64, 0x40, 4096, own.len() / 2] {
            let _ = function_symbol(&own[..len.min(own.len())], "main");
        }
        let mut huge_offsets = own[..own.len().min(4096)].to_vec();
        if huge_offsets.len() >= 0x30 {
            huge_offsets[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        }
        assert_eq!(function_symbol(&huge_offsets, "main"), None);
        assert_eq!(function_symbol(&[0xffu8; 256], "main"), None);
    }
}
