//! A task's command name, kept inline: every event carries one and most verdicts copy it,
//! so it must cost no heap allocation (in a storm that was a tenth of the engine's).
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Room for the kernel's 15 bytes even when invalid UTF-8 turns each into a 3-byte U+FFFD.
const CAPACITY: usize = 47;

/// A command name (`nginx`, `php-fpm8.2`): a string of at most 47 bytes, `Copy`.
/// Longer text (a hand-made trace) is cut at a character boundary.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Comm {
    len: u8,
    bytes: [u8; CAPACITY],
}

impl Comm {
    pub const EMPTY: Comm = Comm { len: 0, bytes: [0; CAPACITY] };

    pub fn new(s: &str) -> Self {
        let mut end = s.len().min(CAPACITY);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let mut bytes = [0; CAPACITY];
        bytes[..end].copy_from_slice(&s.as_bytes()[..end]);
        Comm { len: end as u8, bytes }
    }

    /// The kernel's NUL-padded `comm` field.
    pub fn from_kernel(raw: &[u8]) -> Self {
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        match std::str::from_utf8(&raw[..end]) {
            Ok(s) => Self::new(s),
            Err(_) => Self::new(&String::from_utf8_lossy(&raw[..end])),
        }
    }

    pub fn as_str(&self) -> &str {
        // Built only from whole characters of a &str (`new`).
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or_default()
    }
}

// Hashed and ordered as its text, as `Borrow<str>` requires (a map keyed by `Comm` must find
// it by `&str`).
impl std::hash::Hash for Comm {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.as_str().hash(h)
    }
}

impl PartialOrd for Comm {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Comm {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Default for Comm {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl std::ops::Deref for Comm {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::borrow::Borrow<str> for Comm {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for Comm {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl From<String> for Comm {
    fn from(s: String) -> Self {
        Self::new(&s)
    }
}

impl PartialEq<str> for Comm {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Comm {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Comm {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl std::fmt::Display for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Serialize for Comm {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Comm {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(Self::new(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_round_trip_and_long_text_is_cut_at_a_character() {
        let c = Comm::from_kernel(b"php-fpm8.2\0\0\0\0\0\0");
        assert_eq!(c, "php-fpm8.2");
        assert_eq!(serde_json::to_string(&c).unwrap(), "\"php-fpm8.2\"");
        assert_eq!(serde_json::from_str::<Comm>("\"php-fpm8.2\"").unwrap(), c);
        // 15 invalid bytes: 15 replacement characters, 45 bytes, all kept.
        let lossy = Comm::from_kernel(&[0xff; 15]);
        assert_eq!(lossy.chars().count(), 15);
        let long = "é".repeat(30);
        let cut = Comm::new(&long);
        assert_eq!(cut.len(), 46);
        assert!(long.starts_with(cut.as_str()));
        assert_eq!(format!("[{:<7}]", Comm::new("ab")), "[ab     ]");
        let set: std::collections::BTreeSet<Comm> = ["nginx", "haproxy", "ab"].into_iter().map(Comm::new).collect();
        assert!(set.contains("nginx"));
        assert_eq!(set.iter().map(|c| c.as_str()).collect::<Vec<_>>(), ["ab", "haproxy", "nginx"]);
    }
}
