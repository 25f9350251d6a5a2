//! A small reader for the kernel's BTF (/sys/kernel/btf/vmlinux): just enough to find member
//! offsets of kernel structs and the values of enums by name, since Rust eBPF programs have no
//! CO-RE field relocations. It takes untrusted bytes and never panics on them.
use std::collections::HashMap;

use anyhow::{Context as _, Result, anyhow, bail, ensure};

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Member {
    name: u32,
    type_id: u32,
    bit_offset: u32,
}

#[derive(Debug, Clone)]
struct Type {
    name: u32,
    kind: u32,
    /// size for structs, unions and enums; the referenced type for typedefs, pointers, ...
    size_or_type: u32,
    members: Vec<Member>,
    enum_values: Vec<(u32, i64)>,
}

pub struct Btf {
    /// Index 0 is the implicit `void` type.
    types: Vec<Type>,
    strings: Vec<u8>,
    by_name: HashMap<(String, u32), u32>,
}

fn u16_at(b: &[u8], off: usize) -> Result<u16> {
    let s = b.get(off..off + 2).ok_or_else(|| anyhow!("BTF truncated at byte {off}"))?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32> {
    let s = b.get(off..off + 4).ok_or_else(|| anyhow!("BTF truncated at byte {off}"))?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

impl Btf {
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let data = std::fs::read(path).with_context(|| format!("reading BTF {}", path.display()))?;
        Self::parse(&data).with_context(|| format!("parsing BTF {}", path.display()))
    }

    pub fn parse(data: &[u8]) -> Result<Self> {
        ensure!(u16_at(data, 0)? == MAGIC, "not BTF (bad magic)");
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let section = |off: usize, len: usize| -> Result<&[u8]> {
            let start = hdr_len.checked_add(off).ok_or_else(|| anyhow!("BTF offset overflow"))?;
            let end = start.checked_add(len).ok_or_else(|| anyhow!("BTF length overflow"))?;
            data.get(start..end).ok_or_else(|| anyhow!("BTF section out of bounds"))
        };
        let type_data = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?.to_vec();

        let mut types = vec![Type { name: 0, kind: 0, size_or_type: 0, members: vec![], enum_values: vec![] }];
        let mut pos = 0usize;
        while pos < type_data.len() {
            let name = u32_at(type_data, pos)?;
            let info = u32_at(type_data, pos + 4)?;
            let size_or_type = u32_at(type_data, pos + 8)?;
            pos += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            let mut enum_values = Vec::new();
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => pos += 4,
                KIND_ARRAY => pos += 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let at = pos + i * 12;
                        let offset = u32_at(type_data, at + 8)?;
                        members.push(Member {
                            name: u32_at(type_data, at)?,
                            type_id: u32_at(type_data, at + 4)?,
                            bit_offset: if kind_flag { offset & 0x00ff_ffff } else { offset },
                        });
                    }
                    pos += vlen * 12;
                }
                KIND_ENUM => {
                    for i in 0..vlen {
                        let at = pos + i * 8;
                        let value = u32_at(type_data, at + 4)? as i32 as i64;
                        enum_values.push((u32_at(type_data, at)?, value));
                    }
                    pos += vlen * 8;
                }
                KIND_ENUM64 => {
                    for i in 0..vlen {
                        let at = pos + i * 12;
                        let lo = u32_at(type_data, at + 4)? as u64;
                        let hi = u32_at(type_data, at + 8)? as u64;
                        enum_values.push((u32_at(type_data, at)?, (hi << 32 | lo) as i64));
                    }
                    pos += vlen * 12;
                }
                KIND_FUNC_PROTO => pos += vlen * 8,
                KIND_DATASEC => pos += vlen * 12,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_FUNC | KIND_FLOAT
                | KIND_TYPE_TAG => {}
                other => bail!("unknown BTF kind {other} at type {}", types.len()),
            }
            if pos > type_data.len() {
                bail!("BTF type section truncated");
            }
            types.push(Type { name, kind, size_or_type, members, enum_values });
        }
        let mut btf = Btf { types, strings, by_name: HashMap::new() };
        for id in 1..btf.types.len() {
            let t = &btf.types[id];
            if t.name != 0 {
                let key = (btf.string(t.name).to_owned(), t.kind);
                btf.by_name.entry(key).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    fn string(&self, off: u32) -> &str {
        let Some(rest) = self.strings.get(off as usize..) else { return "" };
        let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn get(&self, id: u32) -> Result<&Type> {
        self.types.get(id as usize).ok_or_else(|| anyhow!("BTF type id {id} out of range"))
    }

    /// Follow typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Result<u32> {
        for _ in 0..32 {
            let t = self.get(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => id = t.size_or_type,
                _ => return Ok(id),
            }
        }
        bail!("BTF type chain too long at id {id}")
    }

    /// Bit offset of `name` inside the struct/union `id`, looking into anonymous members.
    fn find_member(&self, id: u32, name: &str, depth: u32) -> Result<Option<(u32, u32)>> {
        ensure!(depth < 8, "BTF nesting too deep");
        let t = self.get(self.resolve(id)?)?;
        for m in &t.members {
            if m.name != 0 && self.string(m.name) == name {
                return Ok(Some((m.bit_offset, m.type_id)));
            }
        }
        for m in &t.members {
            if m.name == 0 {
                let inner = self.get(self.resolve(m.type_id)?)?;
                if matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                    && let Some((off, ty)) = self.find_member(m.type_id, name, depth + 1)?
                {
                    return Ok(Some((m.bit_offset + off, ty)));
                }
            }
        }
        Ok(None)
    }

    /// Byte offset of a member path such as `sock` -> [`__sk_common`, `skc_daddr`].
    pub fn member_offset(&self, struct_name: &str, path: &[&str]) -> Result<u32> {
        let mut id =
            *self.by_name.get(&(struct_name.to_owned(), KIND_STRUCT)).ok_or_else(|| anyhow!("struct {struct_name} not in kernel BTF"))?;
        let mut bits = 0u32;
        for name in path {
            let (off, ty) =
                self.find_member(id, name, 0)?.ok_or_else(|| anyhow!("no member {name} in struct {struct_name} (kernel BTF)"))?;
            bits += off;
            id = ty;
        }
        ensure!(bits.is_multiple_of(8), "{struct_name}.{} is a bitfield", path.join("."));
        Ok(bits / 8)
    }

    /// All enumerators of an enum, by name.
    pub fn enum_values(&self, enum_name: &str) -> Vec<(String, i64)> {
        [KIND_ENUM, KIND_ENUM64]
            .iter()
            .find_map(|kind| self.by_name.get(&(enum_name.to_owned(), *kind)))
            .and_then(|id| self.types.get(*id as usize))
            .map(|t| t.enum_values.iter().map(|(n, v)| (self.string(*n).to_owned(), *v)).collect())
            .unwrap_or_default()
    }

    /// Value of one enumerator, e.g. (`skb_drop_reason`, `SKB_DROP_REASON_NETFILTER_DROP`).
    pub fn enum_value(&self, enum_name: &str, variant: &str) -> Option<i64> {
        [KIND_ENUM, KIND_ENUM64].iter().find_map(|kind| {
            let id = self.by_name.get(&(enum_name.to_owned(), *kind))?;
            let t = self.types.get(*id as usize)?;
            t.enum_values.iter().find(|(n, _)| self.string(*n) == variant).map(|(_, v)| *v)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Build a tiny BTF blob: struct outer { int a; union { int b; int c; }; };
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0b\0c\0reason\0R_ONE\0".to_vec();
        let s = |name: &str| -> u32 {
            let needle = format!("\0{name}\0");
            strings.windows(needle.len()).position(|w| w == needle.as_bytes()).unwrap() as u32 + 1
        };
        let mut t = Vec::new();
        let mut push = |vals: &[u32]| vals.iter().for_each(|v| t.extend_from_slice(&v.to_le_bytes()));
        push(&[s("int"), KIND_INT << 24, 4, 32]); // 1: int
        push(&[0, (KIND_UNION << 24) | 2, 4, s("b"), 1, 0, s("c"), 1, 0]); // 2: anon union
        push(&[s("outer"), (KIND_STRUCT << 24) | 2, 8, s("a"), 1, 0, 0, 2, 32]); // 3
        push(&[s("reason"), (KIND_ENUM << 24) | 1, 4, s("R_ONE"), 7]); // 4
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for v in [24u32, 0, t.len() as u32, t.len() as u32, strings.len() as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&t);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn finds_members_inside_anonymous_unions() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("outer", &["a"]).unwrap(), 0);
        assert_eq!(btf.member_offset("outer", &["c"]).unwrap(), 4);
        assert!(btf.member_offset("outer", &["zz"]).is_err());
        assert!(btf.member_offset("nope", &["a"]).is_err());
        assert_eq!(btf.enum_value("reason", "R_ONE"), Some(7));
        assert_eq!(btf.enum_value("reason", "R_TWO"), None);
    }

    #[test]
    fn rejects_truncated_and_garbage_input() {
        let blob = sample();
        for len in 0..blob.len() {
            let _ = Btf::parse(&blob[..len]); // must not panic
        }
        assert!(Btf::parse(b"garbage that is not btf at all").is_err());
    }

    #[test]
    fn reads_the_running_kernel() {
        let path = std::path::Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            eprintln!("skipped: no /sys/kernel/btf/vmlinux on this machine");
            return;
        }
        let btf = Btf::from_file(path).unwrap();
        let daddr = btf.member_offset("sock", &["__sk_common", "skc_daddr"]).unwrap();
        let saddr = btf.member_offset("sock", &["__sk_common", "skc_rcv_saddr"]).unwrap();
        assert_eq!(saddr, daddr + 4);
        assert!(btf.member_offset("sock", &["sk_err"]).unwrap() > 0);
        assert!(btf.enum_value("skb_drop_reason", "SKB_DROP_REASON_NETFILTER_DROP").is_some());
    }
}
