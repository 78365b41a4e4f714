//! The encryption context: an ordered map of strings that names what an
//! object is (host, job, snapshot, object kind, format version).
//!
//! It is stored in the authenticated header, passed to the key provider as
//! associated data (the local wrap) or as the KMS `EncryptionContext`, and
//! checked by the agent against what it expected to read. Its canonical byte
//! encoding (FORMAT.md §4) is the same everywhere, so one object's wrapped key
//! cannot be unwrapped under another object's context.

use std::collections::BTreeMap;
use std::fmt;

use crate::error::{Error, Result};

/// Most entries an encryption context may have.
pub const MAX_CONTEXT_ENTRIES: usize = 32;
/// Longest key, in bytes.
pub const MAX_CONTEXT_KEY_LEN: usize = 256;
/// Longest value, in bytes.
pub const MAX_CONTEXT_VALUE_LEN: usize = 1024;

/// A validated, canonically ordered string map (keys sorted by their UTF-8
/// bytes, each key unique and non-empty).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct EncryptionContext(BTreeMap<String, String>);

impl EncryptionContext {
    /// An empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an entry, checking the format's limits. Replacing an existing key
    /// is an error: a context is built once, from known fields.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) -> Result<()> {
        let (key, value) = (key.into(), value.into());
        check_entry(&key, &value)?;
        if self.0.contains_key(&key) {
            return Err(Error::InvalidContext {
                reason: format!("duplicate key `{key}`"),
            });
        }
        if self.0.len() >= MAX_CONTEXT_ENTRIES {
            return Err(Error::InvalidContext {
                reason: format!("more than {MAX_CONTEXT_ENTRIES} entries"),
            });
        }
        self.0.insert(key, value);
        Ok(())
    }

    /// Builder form of [`insert`](Self::insert).
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Result<Self> {
        self.insert(key, value)?;
        Ok(self)
    }

    /// The value for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Entries in canonical order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The canonical encoding (FORMAT.md §4): `u16` entry count, then per
    /// entry in key order `u16` key length, key, `u16` value length, value;
    /// all integers big-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(2 + self.0.iter().map(|(k, v)| 4 + k.len() + v.len()).sum::<usize>());
        // Lengths fit in u16: `insert` and `decode` enforce the limits above.
        out.extend_from_slice(&(self.0.len() as u16).to_be_bytes());
        for (k, v) in &self.0 {
            out.extend_from_slice(&(k.len() as u16).to_be_bytes());
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(&(v.len() as u16).to_be_bytes());
            out.extend_from_slice(v.as_bytes());
        }
        out
    }

    /// Adds an entry read from a header, which must come in canonical order.
    pub(crate) fn push_decoded(&mut self, key: String, value: String) -> Result<(), String> {
        check_entry(&key, &value).map_err(|e| e.to_string())?;
        if let Some((last, _)) = self.0.last_key_value()
            && last.as_bytes() >= key.as_bytes()
        {
            return Err(format!(
                "keys are not in strictly increasing byte order (`{key}` after `{last}`)"
            ));
        }
        self.0.insert(key, value);
        Ok(())
    }
}

fn check_entry(key: &str, value: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_CONTEXT_KEY_LEN {
        return Err(Error::InvalidContext {
            reason: format!("key `{key}` must be 1 to {MAX_CONTEXT_KEY_LEN} bytes"),
        });
    }
    if value.len() > MAX_CONTEXT_VALUE_LEN {
        return Err(Error::InvalidContext {
            reason: format!("value of `{key}` is longer than {MAX_CONTEXT_VALUE_LEN} bytes"),
        });
    }
    Ok(())
}

impl fmt::Debug for EncryptionContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter()).finish()
    }
}

impl fmt::Display for EncryptionContext {
    /// `host=web1, job=etc, …` in canonical order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

impl<'a> IntoIterator for &'a EncryptionContext {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_bytes_are_sorted_regardless_of_insertion_order() {
        let a = EncryptionContext::new()
            .with("job", "etc")
            .unwrap()
            .with("host", "web1")
            .unwrap();
        let b = EncryptionContext::new()
            .with("host", "web1")
            .unwrap()
            .with("job", "etc")
            .unwrap();
        assert_eq!(a.to_bytes(), b.to_bytes());
        assert_eq!(
            a.to_bytes(),
            b"\x00\x02\x00\x04host\x00\x04web1\x00\x03job\x00\x03etc".to_vec()
        );
        assert_eq!(a.to_string(), "host=web1, job=etc");
    }

    #[test]
    fn rejects_empty_duplicate_and_oversized_entries() {
        let mut c = EncryptionContext::new();
        assert!(matches!(c.insert("", "x"), Err(Error::InvalidContext { .. })));
        c.insert("k", "v").unwrap();
        assert!(matches!(c.insert("k", "w"), Err(Error::InvalidContext { .. })));
        assert!(c.insert("big", "x".repeat(MAX_CONTEXT_VALUE_LEN + 1)).is_err());
        assert!(c.insert("x".repeat(MAX_CONTEXT_KEY_LEN + 1), "v").is_err());
        for i in 0..MAX_CONTEXT_ENTRIES - 1 {
            c.insert(format!("key{i:02}"), "v").unwrap();
        }
        assert!(c.insert("one-too-many", "v").is_err());
    }

    #[test]
    fn decoding_rejects_non_canonical_order() {
        let mut c = EncryptionContext::new();
        c.push_decoded("b".into(), "1".into()).unwrap();
        assert!(c.push_decoded("a".into(), "2".into()).is_err());
        assert!(c.push_decoded("b".into(), "2".into()).is_err());
    }
}
