//! Keys: where data keys come from and go back to.
//!
//! Every sealed object has its own data key, made and wrapped by a key
//! provider ([`vaultline_crypto::KeyWrap`]): [`local`] holds the embedded
//! default's master key (OS keyring or a 0600 key file), [`kms`] is AWS
//! KMS (GenerateDataKey to seal, Decrypt to open, ReEncrypt to rewrap).
//! [`CountingKeys`] wraps either and counts its calls for the audit trail.
//!
//! Uses: `cloud` (the AWS runtime and KMS client), `error`. Knows nothing
//! of repositories or commands.

pub mod kms;
pub mod local;

use std::sync::atomic::{AtomicU64, Ordering};

use vaultline_crypto::{DataKey, EncryptionContext, KeyEnvelope, KeyWrap};

/// A key provider as the commands use it: counted, for the audit trail.
pub type Keys = Box<CountingKeys>;

/// A key provider that counts the data keys it generates and unwraps (each
/// one a KMS call with the KMS provider), for the audit trail.
pub struct CountingKeys {
    inner: Box<dyn KeyWrap + Send + Sync>,
    generated: AtomicU64,
    unwrapped: AtomicU64,
}

impl CountingKeys {
    /// Wraps `inner`.
    pub fn new(inner: Box<dyn KeyWrap + Send + Sync>) -> Keys {
        Box::new(CountingKeys {
            inner,
            generated: AtomicU64::new(0),
            unwrapped: AtomicU64::new(0),
        })
    }

    /// Key use so far, for the audit trail.
    pub fn usage(&self) -> serde_json::Value {
        serde_json::json!({
            "provider": self.inner.provider_id(),
            "key": self.inner.key_id(),
            "data_keys_generated": self.generated.load(Ordering::Relaxed),
            "data_keys_unwrapped": self.unwrapped.load(Ordering::Relaxed),
        })
    }
}

impl KeyWrap for CountingKeys {
    fn provider_id(&self) -> &str {
        self.inner.provider_id()
    }

    fn key_id(&self) -> &str {
        self.inner.key_id()
    }

    fn wrap(&self, key: &DataKey, context: &EncryptionContext) -> vaultline_crypto::Result<KeyEnvelope> {
        self.inner.wrap(key, context)
    }

    fn unwrap(
        &self,
        envelope: &KeyEnvelope,
        context: &EncryptionContext,
    ) -> vaultline_crypto::Result<DataKey> {
        self.unwrapped.fetch_add(1, Ordering::Relaxed);
        self.inner.unwrap(envelope, context)
    }

    fn generate(&self, context: &EncryptionContext) -> vaultline_crypto::Result<(DataKey, KeyEnvelope)> {
        self.generated.fetch_add(1, Ordering::Relaxed);
        self.inner.generate(context)
    }
}
