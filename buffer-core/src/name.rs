//! Store names and namespaces, and their injective, key-safe and path-safe encoding.

use std::fmt;

use crate::error::{Error, Result};

/// The longest store name accepted, in bytes of UTF-8.
pub const MAX_STORE_NAME_BYTES: usize = 256;

/// The longest namespace accepted, in bytes.
pub const MAX_NAMESPACE_BYTES: usize = 64;

/// A validated store name: any UTF-8 string of 1..=256 bytes.
///
/// The name itself is never put into a Redis key or a path; [`StoreName::encoded`] is. The
/// encoding percent-encodes every byte outside `[A-Za-z0-9._-]` (so `%`, `:`, `{`, `}`, `*`,
/// `/`, `\` and every non-ASCII byte are encoded) and also a `.` in first position, so the
/// encoded form is never `.`, `..` or a hidden file name. It is injective: two different
/// names never share an encoding, hence never share a key or a file.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StoreName {
    name: String,
    encoded: String,
}

impl StoreName {
    /// Validates `name` and computes its encoding.
    ///
    /// # Errors
    /// [`Error::InvalidStoreName`] when the name is empty, longer than
    /// [`MAX_STORE_NAME_BYTES`], or contains a NUL byte (which no file system accepts in a path).
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let reason = if name.is_empty() {
            Some("a store name cannot be empty".to_owned())
        } else if name.len() > MAX_STORE_NAME_BYTES {
            Some(format!(
                "a store name is at most {MAX_STORE_NAME_BYTES} bytes, this one has {}",
                name.len()
            ))
        } else if name.contains('\0') {
            Some("a store name cannot contain a NUL byte".to_owned())
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(Error::InvalidStoreName {
                name: shorten(&name),
                reason,
            });
        }
        let encoded = encode(&name);
        Ok(Self { name, encoded })
    }

    /// Decodes a name from its encoded form, as read back from a Redis index.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when `encoded` is not the encoding of a valid name.
    pub fn from_encoded(encoded: &str) -> Result<Self> {
        let corrupt = || Error::Corrupt {
            what: format!("store name encoding {encoded:?}"),
        };
        let name = decode(encoded).ok_or_else(corrupt)?;
        let store = Self::new(name).map_err(|_| corrupt())?;
        // Only the canonical encoding is accepted, so every name has exactly one key.
        if store.encoded != encoded {
            return Err(corrupt());
        }
        Ok(store)
    }

    /// The name as the user gave it.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The key-safe and path-safe encoding (at most 768 bytes, of `[A-Za-z0-9._%-]`).
    pub fn encoded(&self) -> &str {
        &self.encoded
    }

    /// The slot group of this store: the hash of its name modulo `groups`.
    ///
    /// FNV-1a is used because it is stable across Rust versions and platforms; the group is part
    /// of every key, so it may never change for a given name.
    pub(crate) fn group(&self, groups: u16) -> u16 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in self.name.as_bytes() {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        // `groups` is at least 1 (checked in BufferConfig), so the remainder fits in a u16.
        (hash % u64::from(groups.max(1))) as u16
    }
}

impl fmt::Debug for StoreName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.name, f)
    }
}

impl fmt::Display for StoreName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl TryFrom<&str> for StoreName {
    type Error = Error;
    fn try_from(name: &str) -> Result<Self> {
        Self::new(name)
    }
}

impl TryFrom<String> for StoreName {
    type Error = Error;
    fn try_from(name: String) -> Result<Self> {
        Self::new(name)
    }
}

impl TryFrom<&String> for StoreName {
    type Error = Error;
    fn try_from(name: &String) -> Result<Self> {
        Self::new(name.as_str())
    }
}

impl TryFrom<&StoreName> for StoreName {
    type Error = Error;
    fn try_from(name: &StoreName) -> Result<Self> {
        Ok(name.clone())
    }
}

/// A validated key namespace (default `buf`): 1..=64 bytes of `[A-Za-z0-9._-]`.
///
/// The namespace appears inside every key's hash tag, so it may not contain `{`, `}` or `:`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Namespace(String);

impl Namespace {
    /// Validates a namespace.
    ///
    /// # Errors
    /// [`Error::InvalidNamespace`] when it is empty, too long or has a byte outside
    /// `[A-Za-z0-9._-]`.
    pub fn new(namespace: impl Into<String>) -> Result<Self> {
        let namespace = namespace.into();
        let reason = if namespace.is_empty() {
            Some(String::from("a namespace cannot be empty"))
        } else if namespace.len() > MAX_NAMESPACE_BYTES {
            Some(format!(
                "a namespace is at most {MAX_NAMESPACE_BYTES} bytes"
            ))
        } else {
            namespace
                .chars()
                .find(|c| !is_plain(*c))
                .map(|bad| format!("{bad:?} is not allowed; use letters, digits, '.', '_' or '-'"))
        };
        match reason {
            Some(reason) => Err(Error::InvalidNamespace {
                namespace: shorten(&namespace),
                reason,
            }),
            None => Ok(Self(namespace)),
        }
    }

    /// The namespace as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Namespace {
    fn default() -> Self {
        Self("buf".to_owned())
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (index, byte) in name.bytes().enumerate() {
        let c = char::from(byte);
        let plain = byte.is_ascii() && is_plain(c) && !(index == 0 && c == '.');
        if plain {
            out.push(c);
        } else {
            out.push('%');
            out.push(hex_digit(byte >> 4));
            out.push(hex_digit(byte & 0xf));
        }
    }
    out
}

fn hex_digit(nibble: u8) -> char {
    char::from(b"0123456789ABCDEF"[usize::from(nibble & 0xf)])
}

fn decode(encoded: &str) -> Option<String> {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = encoded.get(index + 1..index + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Shortens a rejected input for an error message, on a character boundary.
pub(crate) fn shorten(text: &str) -> String {
    const LIMIT: usize = 80;
    if text.len() <= LIMIT {
        return text.to_owned();
    }
    let mut end = LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_names_are_kept_and_specials_are_encoded() {
        assert_eq!(
            StoreName::new("orders-2024_v1.x").unwrap().encoded(),
            "orders-2024_v1.x"
        );
        assert_eq!(StoreName::new("a:b").unwrap().encoded(), "a%3Ab");
        assert_eq!(StoreName::new("{a}").unwrap().encoded(), "%7Ba%7D");
        assert_eq!(StoreName::new("%").unwrap().encoded(), "%25");
        assert_eq!(StoreName::new("../x").unwrap().encoded(), "%2E.%2Fx");
        assert_eq!(StoreName::new(".").unwrap().encoded(), "%2E");
        assert_eq!(StoreName::new("..").unwrap().encoded(), "%2E.");
        assert_eq!(StoreName::new("é").unwrap().encoded(), "%C3%A9");
        assert_eq!(
            StoreName::new("orders/eu").unwrap().encoded(),
            "orders%2Feu",
            "as docs/outputs.md says"
        );
    }

    #[test]
    fn bad_names_are_refused_with_the_reason() {
        let err = StoreName::new("").unwrap_err();
        assert!(
            matches!(err, Error::InvalidStoreName { ref reason, .. } if reason.contains("empty"))
        );
        let long = "x".repeat(257);
        let err = StoreName::new(long).unwrap_err();
        assert!(
            matches!(err, Error::InvalidStoreName { ref reason, .. } if reason.contains("257"))
        );
        let err = StoreName::new("a\0b").unwrap_err();
        assert!(
            matches!(err, Error::InvalidStoreName { ref reason, .. } if reason.contains("NUL"))
        );
        assert!(StoreName::new("y".repeat(256)).is_ok());
    }

    #[test]
    fn non_canonical_encodings_are_corrupt() {
        assert!(
            StoreName::from_encoded("%61").is_err(),
            "'a' must not be encoded"
        );
        assert!(StoreName::from_encoded("%zz").is_err());
        assert!(StoreName::from_encoded("%C3").is_err(), "not UTF-8");
        assert_eq!(StoreName::from_encoded("a%3Ab").unwrap().as_str(), "a:b");
    }

    #[test]
    fn namespaces_refuse_hash_tag_characters() {
        assert!(Namespace::new("buf-test.1").is_ok());
        for bad in ["", "a{b", "a}b", "a:b", "a b"] {
            assert!(
                matches!(Namespace::new(bad), Err(Error::InvalidNamespace { .. })),
                "{bad:?} accepted"
            );
        }
    }

    proptest! {
        #[test]
        fn encoding_round_trips_and_is_safe(name in "\\PC{1,64}") {
            prop_assume!(!name.contains('\0'));
            let store = StoreName::new(name.clone()).unwrap();
            let enc = store.encoded();
            prop_assert!(enc.bytes().all(|b| b.is_ascii_alphanumeric() || b"._%-".contains(&b)));
            prop_assert!(!enc.starts_with('.'));
            let decoded = StoreName::from_encoded(enc).unwrap();
            prop_assert_eq!(decoded.as_str(), name.as_str());
        }

        #[test]
        fn different_names_never_share_an_encoding(a in "[a-z%:.]{1,6}", b in "[a-z%:.]{1,6}") {
            let (sa, sb) = (StoreName::new(a.clone()).unwrap(), StoreName::new(b.clone()).unwrap());
            prop_assert_eq!(a == b, sa.encoded() == sb.encoded());
        }
    }
}
