//! Key material: the per-object [`DataKey`], the keys derived from it, and
//! the [`KeyEnvelope`] that carries a wrapped data key.
//!
//! A fresh 256-bit data key seals each object. Three values are derived from
//! it with HKDF-SHA256 and the header's salt (FORMAT.md §3): the payload key,
//! the header MAC key and the key commitment. Only the envelope (the data key
//! wrapped by a key provider) is stored; the data key itself lives in memory,
//! is zeroized on drop and never appears in `Debug` output.

use std::fmt;

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::{Error, Result};

/// Size of a data key, of every derived key and of the header salt.
pub const KEY_SIZE: usize = 32;

/// HKDF `info` labels (FORMAT.md §3). Distinct labels keep the three derived
/// values independent even though they share one input key.
pub(crate) const LABEL_PAYLOAD: &[u8] = b"vaultline v1 payload key";
pub(crate) const LABEL_HEADER: &[u8] = b"vaultline v1 header mac key";
pub(crate) const LABEL_COMMITMENT: &[u8] = b"vaultline v1 key commitment";

/// Fills `buf` from the operating system's random number generator.
pub(crate) fn random_bytes(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|e| Error::Random(e.to_string()))
}

/// The secret 256-bit key that seals one object.
///
/// Zeroized on drop; `Debug` never shows it.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DataKey([u8; KEY_SIZE]);

impl DataKey {
    /// A fresh random data key.
    pub fn generate() -> Result<Self> {
        let mut key = DataKey([0; KEY_SIZE]);
        random_bytes(&mut key.0)?;
        Ok(key)
    }

    /// Wraps key bytes obtained elsewhere (a KMS plaintext, a test vector).
    pub fn from_bytes(bytes: [u8; KEY_SIZE]) -> Self {
        DataKey(bytes)
    }

    /// Copies key bytes from a slice, which must be exactly [`KEY_SIZE`] long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let arr: [u8; KEY_SIZE] = bytes.try_into().ok()?;
        Some(DataKey(arr))
    }

    /// The key bytes, for handing to a key provider. Do not store or log them.
    pub fn expose_secret(&self) -> &[u8; KEY_SIZE] {
        &self.0
    }

    /// Derives the payload key, header MAC key and commitment for `salt`.
    pub(crate) fn derive(&self, salt: &[u8; KEY_SIZE]) -> DerivedKeys {
        let hk = Hkdf::<Sha256>::new(Some(salt), &self.0);
        let mut keys = DerivedKeys {
            payload: [0; KEY_SIZE],
            header_mac: [0; KEY_SIZE],
            commitment: [0; KEY_SIZE],
        };
        // 32 bytes is far below HKDF-SHA256's 8160-byte output limit, so
        // expand cannot fail; the fallback would only zero a key and fail later.
        for (label, out) in [
            (LABEL_PAYLOAD, &mut keys.payload),
            (LABEL_HEADER, &mut keys.header_mac),
            (LABEL_COMMITMENT, &mut keys.commitment),
        ] {
            if hk.expand(label, out).is_err() {
                out.zeroize();
            }
        }
        keys
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey([redacted])")
    }
}

/// The three values derived from a data key and salt (FORMAT.md §3).
#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct DerivedKeys {
    pub(crate) payload: [u8; KEY_SIZE],
    pub(crate) header_mac: [u8; KEY_SIZE],
    pub(crate) commitment: [u8; KEY_SIZE],
}

impl fmt::Debug for DerivedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DerivedKeys([redacted])")
    }
}

/// A data key wrapped by a key provider, with the names needed to unwrap it.
///
/// This is the replaceable part of a header (FORMAT.md §2.2): re-wrapping a
/// data key under a new provider key changes only the envelope, never the
/// authenticated header or the payload.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyEnvelope {
    /// Provider id: `local`, `aws-kms`, … (ASCII `[a-z0-9-]`, 1–64 bytes).
    pub provider: String,
    /// The wrapping key's id: the local key's fingerprint, a KMS key ARN, …
    pub key_id: String,
    /// The wrapped data key, in the provider's layout.
    pub wrapped: Vec<u8>,
}

impl fmt::Debug for KeyEnvelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The wrapped key is not secret, but it is long and useless in logs.
        f.debug_struct("KeyEnvelope")
            .field("provider", &self.provider)
            .field("key_id", &self.key_id)
            .field("wrapped_len", &self.wrapped.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_key_bytes() {
        let key = DataKey::from_bytes([0xAB; KEY_SIZE]);
        let shown = format!("{key:?}");
        assert_eq!(shown, "DataKey([redacted])");
        let derived = key.derive(&[0; KEY_SIZE]);
        assert!(!format!("{derived:?}").to_lowercase().contains("ab"));
    }

    #[test]
    fn derived_values_are_distinct_and_salt_dependent() {
        let key = DataKey::from_bytes([7; KEY_SIZE]);
        let a = key.derive(&[1; KEY_SIZE]);
        let b = key.derive(&[2; KEY_SIZE]);
        assert_ne!(a.payload, a.header_mac);
        assert_ne!(a.payload, a.commitment);
        assert_ne!(a.header_mac, a.commitment);
        assert_ne!(a.payload, b.payload);
        assert_ne!(a.commitment, b.commitment);
    }

    #[test]
    fn generated_keys_differ() {
        let a = DataKey::generate().unwrap();
        let b = DataKey::generate().unwrap();
        assert_ne!(a.expose_secret(), b.expose_secret());
    }
}
