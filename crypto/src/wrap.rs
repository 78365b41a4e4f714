//! Key wrapping: the [`KeyWrap`] trait that key providers implement, and the
//! `local` provider ([`LocalKeyWrap`]) built on a 32-byte [`MasterKey`].
//!
//! A provider turns a data key into a [`KeyEnvelope`] bound to an encryption
//! context, and back. The agent implements the trait for AWS KMS
//! (`GenerateDataKey` / `Decrypt` with the context as KMS encryption
//! context); this crate implements the local provider, used when there is no
//! AWS at all (FORMAT.md §6).

use std::fmt;

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::context::EncryptionContext;
use crate::error::{Error, Result};
use crate::keys::{DataKey, KEY_SIZE, KeyEnvelope, random_bytes};

/// Provider id of the local master-key provider.
pub const LOCAL_PROVIDER: &str = "local";
/// Version byte that opens a local wrapped key.
pub const LOCAL_WRAP_VERSION: u8 = 1;
/// Length of a local wrapped key: version, 24-byte nonce, 32-byte
/// encrypted data key, 16-byte tag.
pub const LOCAL_WRAPPED_LEN: usize = 1 + 24 + KEY_SIZE + 16;
const LABEL_WRAP: &[u8] = b"vaultline v1 local wrap key";
const LABEL_FINGERPRINT: &[u8] = b"vaultline v1 local key fingerprint";
/// Domain-separation prefix of the local wrap's associated data.
const WRAP_AAD_PREFIX: &[u8] = b"vaultline v1 local wrap\x00";

/// Wraps and unwraps data keys under one provider key.
pub trait KeyWrap {
    /// The provider id written into envelopes (`local`, `aws-kms`, …).
    fn provider_id(&self) -> &str;

    /// The id of the key this provider wraps under.
    fn key_id(&self) -> &str;

    /// Wraps `key`, bound to `context`.
    fn wrap(&self, key: &DataKey, context: &EncryptionContext) -> Result<KeyEnvelope>;

    /// Unwraps an envelope made by this provider under the same `context`.
    fn unwrap(&self, envelope: &KeyEnvelope, context: &EncryptionContext) -> Result<DataKey>;

    /// A fresh data key and its envelope. Providers that generate keys
    /// themselves (KMS `GenerateDataKey`) override this.
    fn generate(&self, context: &EncryptionContext) -> Result<(DataKey, KeyEnvelope)> {
        let key = DataKey::generate()?;
        let envelope = self.wrap(&key, context)?;
        Ok((key, envelope))
    }
}

/// The local provider's 32-byte master key. Zeroized on drop; never shown.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey([u8; KEY_SIZE]);

impl MasterKey {
    /// A fresh random master key.
    pub fn generate() -> Result<Self> {
        let mut k = MasterKey([0; KEY_SIZE]);
        random_bytes(&mut k.0)?;
        Ok(k)
    }

    /// A master key from stored bytes.
    pub fn from_bytes(bytes: [u8; KEY_SIZE]) -> Self {
        MasterKey(bytes)
    }

    /// The key bytes, for storing in the keyring or key file only.
    pub fn expose_secret(&self) -> &[u8; KEY_SIZE] {
        &self.0
    }

    /// The public fingerprint that names this key (FORMAT.md §6.1): 16 bytes
    /// of HKDF output, as 32 lowercase hex digits. It reveals nothing about
    /// the key but tells two keys apart.
    pub fn fingerprint(&self) -> String {
        let mut fp = [0u8; 16];
        self.expand(LABEL_FINGERPRINT, &mut fp);
        hex::encode(fp)
    }

    fn expand(&self, label: &[u8], out: &mut [u8]) {
        let hk = Hkdf::<Sha256>::new(None, &self.0);
        // Outputs of 16 and 32 bytes are always valid for HKDF-SHA256.
        if hk.expand(label, out).is_err() {
            out.zeroize();
        }
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey(fingerprint {})", self.fingerprint())
    }
}

/// The `local` provider: XChaCha20-Poly1305 under a key derived from the
/// master key, with the canonical encryption context as associated data.
pub struct LocalKeyWrap {
    wrap_key: WrapKey,
    fingerprint: String,
}

#[derive(Zeroize, ZeroizeOnDrop)]
struct WrapKey([u8; KEY_SIZE]);

impl LocalKeyWrap {
    /// A provider wrapping under `master`.
    pub fn new(master: &MasterKey) -> Self {
        let mut wrap_key = WrapKey([0; KEY_SIZE]);
        master.expand(LABEL_WRAP, &mut wrap_key.0);
        LocalKeyWrap {
            wrap_key,
            fingerprint: master.fingerprint(),
        }
    }

    /// Wraps with a fixed nonce, for test vectors.
    pub fn wrap_with_nonce(
        &self,
        key: &DataKey,
        context: &EncryptionContext,
        nonce: [u8; 24],
    ) -> Result<KeyEnvelope> {
        let aead = XChaCha20Poly1305::new(&Key::from(self.wrap_key.0));
        let mut wrapped = Vec::with_capacity(LOCAL_WRAPPED_LEN);
        wrapped.push(LOCAL_WRAP_VERSION);
        wrapped.extend_from_slice(&nonce);
        wrapped.extend_from_slice(key.expose_secret());
        let tag = aead
            .encrypt_inout_detached(
                &XNonce::from(nonce),
                &wrap_aad(context),
                (&mut wrapped[25..]).into(),
            )
            .map_err(|_| Error::UnwrapFailed {
                key_id: self.fingerprint.clone(),
                reason: "wrapping failed".into(),
            })?;
        wrapped.extend_from_slice(&tag);
        Ok(KeyEnvelope {
            provider: LOCAL_PROVIDER.into(),
            key_id: self.fingerprint.clone(),
            wrapped,
        })
    }
}

fn wrap_aad(context: &EncryptionContext) -> Vec<u8> {
    let mut aad = WRAP_AAD_PREFIX.to_vec();
    aad.extend_from_slice(&context.to_bytes());
    aad
}

impl fmt::Debug for LocalKeyWrap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LocalKeyWrap(fingerprint {})", self.fingerprint)
    }
}

impl KeyWrap for LocalKeyWrap {
    fn provider_id(&self) -> &str {
        LOCAL_PROVIDER
    }

    fn key_id(&self) -> &str {
        &self.fingerprint
    }

    fn wrap(&self, key: &DataKey, context: &EncryptionContext) -> Result<KeyEnvelope> {
        let mut nonce = [0u8; 24];
        random_bytes(&mut nonce)?;
        self.wrap_with_nonce(key, context, nonce)
    }

    fn unwrap(&self, envelope: &KeyEnvelope, context: &EncryptionContext) -> Result<DataKey> {
        if envelope.provider != LOCAL_PROVIDER {
            return Err(Error::ProviderMismatch {
                expected: LOCAL_PROVIDER.into(),
                found: envelope.provider.clone(),
            });
        }
        if envelope.key_id != self.fingerprint {
            return Err(Error::KeyMismatch {
                sealed_with: envelope.key_id.clone(),
                have: self.fingerprint.clone(),
            });
        }
        let w = &envelope.wrapped;
        let malformed = |reason: String| Error::MalformedWrappedKey {
            key_id: envelope.key_id.clone(),
            reason,
        };
        if w.len() != LOCAL_WRAPPED_LEN {
            return Err(malformed(format!(
                "{} bytes, expected {LOCAL_WRAPPED_LEN}",
                w.len()
            )));
        }
        if w[0] != LOCAL_WRAP_VERSION {
            return Err(malformed(format!(
                "layout version {}, expected {LOCAL_WRAP_VERSION}",
                w[0]
            )));
        }
        let nonce = XNonce::try_from(&w[1..25]).map_err(|_| malformed("bad nonce".into()))?;
        let tag = Tag::try_from(&w[57..73]).map_err(|_| malformed("bad tag".into()))?;
        let mut key = [0u8; KEY_SIZE];
        key.copy_from_slice(&w[25..57]);
        let aead = XChaCha20Poly1305::new(&Key::from(self.wrap_key.0));
        if aead
            .decrypt_inout_detached(&nonce, &wrap_aad(context), (&mut key[..]).into(), &tag)
            .is_err()
        {
            key.zeroize();
            return Err(Error::UnwrapFailed {
                key_id: envelope.key_id.clone(),
                reason: "authentication failed: the wrapped key was altered, or it was wrapped \
                         for another encryption context"
                    .into(),
            });
        }
        let data_key = DataKey::from_bytes(key);
        key.zeroize();
        Ok(data_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(snapshot: &str) -> EncryptionContext {
        EncryptionContext::new().with("snapshot", snapshot).unwrap()
    }

    #[test]
    fn wraps_and_unwraps() {
        let wrap = LocalKeyWrap::new(&MasterKey::from_bytes([3; KEY_SIZE]));
        let key = DataKey::from_bytes([4; KEY_SIZE]);
        let env = wrap.wrap(&key, &ctx("a")).unwrap();
        assert_eq!(env.wrapped.len(), LOCAL_WRAPPED_LEN);
        assert_eq!(env.provider, "local");
        assert_eq!(
            wrap.unwrap(&env, &ctx("a")).unwrap().expose_secret(),
            key.expose_secret()
        );
    }

    #[test]
    fn other_context_or_master_key_is_refused() {
        let master = MasterKey::from_bytes([3; KEY_SIZE]);
        let wrap = LocalKeyWrap::new(&master);
        let env = wrap.wrap(&DataKey::from_bytes([4; KEY_SIZE]), &ctx("a")).unwrap();
        assert!(matches!(
            wrap.unwrap(&env, &ctx("b")),
            Err(Error::UnwrapFailed { .. })
        ));
        let other = LocalKeyWrap::new(&MasterKey::from_bytes([5; KEY_SIZE]));
        match other.unwrap(&env, &ctx("a")) {
            Err(Error::KeyMismatch { sealed_with, have }) => {
                assert_eq!(sealed_with, master.fingerprint());
                assert_eq!(have, other.key_id());
            }
            other => panic!("expected KeyMismatch, got {other:?}"),
        }
        let mut bad = env.clone();
        bad.wrapped[30] ^= 1;
        assert!(matches!(
            wrap.unwrap(&bad, &ctx("a")),
            Err(Error::UnwrapFailed { .. })
        ));
    }

    #[test]
    fn debug_shows_only_the_fingerprint() {
        let master = MasterKey::from_bytes([0x42; KEY_SIZE]);
        let shown = format!("{master:?} {:?}", LocalKeyWrap::new(&master));
        assert!(shown.contains(&master.fingerprint()));
        assert!(!shown.contains("42, 42"));
        assert_eq!(master.fingerprint().len(), 32);
    }
}
