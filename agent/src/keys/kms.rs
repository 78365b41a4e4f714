//! The `aws-kms` key provider: every data key comes from KMS
//! `GenerateDataKey` and is unwrapped with KMS `Decrypt`, both under the
//! object's encryption context (host, job, snapshot, kind, object, format),
//! the same context that is authenticated in the sealed header.
//!
//! The wrapped key stored in the header is KMS's ciphertext blob, unchanged
//! (docs/FORMAT.md §6.2). The plaintext key KMS returns is copied into a
//! zeroizing `DataKey` and the SDK's decoded buffer is wiped at once (the
//! HTTP response it was parsed from belongs to the SDK and is freed, not
//! wiped, when the call returns).
//!
//! Backups need only `kms:GenerateDataKey` (and `kms:DescribeKey`), never
//! `kms:Decrypt`: a backup host cannot unwrap what it wrote.
//!
//! `vaultline rewrap` moves data keys to another KMS key with `ReEncrypt`
//! ([`KmsKeyWrap::reencrypt`]), so their plaintext never leaves KMS.

use std::collections::HashMap;

use anyhow::{Context, Result, anyhow};
use aws_sdk_kms::Client;
use aws_sdk_kms::types::{DataKeySpec, KeyState};
use vaultline_crypto::{DataKey, EncryptionContext, Error as CryptoError, KEY_SIZE, KeyEnvelope, KeyWrap};
use zeroize::Zeroize;

use crate::cloud::aws::{block_on, describe, error_code};
use crate::error::UsageError;

/// The provider id written into envelopes.
pub const PROVIDER: &str = "aws-kms";

/// A KMS key, resolved to its ARN, and the other keys a reader trusts.
pub struct KmsKeyWrap {
    client: Client,
    /// The key's ARN (what envelopes and the repository marker record).
    arn: String,
    /// Further key ARNs whose data keys may be unwrapped (a rotation
    /// window: `[key] accepted-keys`).
    accepted: Vec<String>,
}

/// Why KMS refused, with what it means for the operator.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct KmsError {
    message: String,
}

impl KmsKeyWrap {
    /// Resolves `key_id` (id, alias or ARN) with `DescribeKey`.
    pub fn connect(client: Client, key_id: &str) -> Result<Self> {
        let out = block_on(client.describe_key().key_id(key_id).send())?.map_err(|e| {
            let hint = match error_code(&e).as_deref() {
                Some("NotFoundException") => " (no such key or alias in this account and region)",
                Some("AccessDeniedException" | "AccessDenied") => {
                    " (this principal may not use the key: see `vaultline policy iam`)"
                }
                _ => "",
            };
            anyhow!(KmsError {
                message: format!("KMS DescribeKey of key {key_id} failed: {}{hint}", describe(&e)),
            })
        })?;
        let meta = out
            .key_metadata()
            .with_context(|| format!("KMS DescribeKey of key {key_id}: the response has no key metadata"))?;
        if meta.key_spec().is_some_and(|s| s.as_str() != "SYMMETRIC_DEFAULT") {
            return Err(UsageError(format!(
                "KMS key {key_id} is a {} key; vaultline needs a symmetric encryption key (SYMMETRIC_DEFAULT)",
                meta.key_spec().map(|s| s.as_str()).unwrap_or("?")
            ))
            .into());
        }
        if meta.key_state() == Some(&KeyState::PendingDeletion) {
            tracing::warn!(
                "KMS key {key_id} is pending deletion: once deleted, nothing sealed under it can be restored"
            );
        }
        let arn = meta
            .arn()
            .map(str::to_string)
            .with_context(|| format!("KMS DescribeKey of key {key_id}: the response has no ARN"))?;
        Ok(KmsKeyWrap {
            client,
            arn,
            accepted: Vec::new(),
        })
    }

    /// Also trusts `keys` (key ARNs) when unwrapping.
    #[must_use]
    pub fn trusting(mut self, keys: &[String]) -> Self {
        for k in keys {
            if !self.accepted.contains(k) && *k != self.arn {
                self.accepted.push(k.clone());
            }
        }
        self
    }

    /// The key to ask KMS to decrypt with for an envelope naming `key`, if
    /// `key` is trusted: the configured key or an accepted one, or a replica
    /// of one of them (the replica in this configuration's Region is used).
    /// KMS would decrypt under any key this principal may use, so an
    /// envelope is never taken at its word: an object sealed under a key
    /// nobody configured (planted by someone who may use some other key) is
    /// refused before KMS is asked.
    fn trusted(&self, key: &str) -> Option<&str> {
        std::iter::once(&self.arn)
            .chain(&self.accepted)
            .find(|t| key == t.as_str() || same_multi_region_key(key, t))
            .map(String::as_str)
    }

    fn untrusted(&self, key: &str) -> CryptoError {
        CryptoError::UntrustedKey {
            sealed_with: key.to_string(),
            trusted: std::iter::once(&self.arn)
                .chain(&self.accepted)
                .cloned()
                .collect(),
        }
    }

    /// Moves a data key from the KMS key its envelope names to `to`'s key
    /// with `ReEncrypt` (for `vaultline rewrap`): the plaintext data key never
    /// leaves KMS. The source key is pinned to the envelope's key ARN, and
    /// both the source and the destination encryption context are the
    /// object's full context, so the new blob is bound to the same object.
    pub fn reencrypt(
        &self,
        envelope: &KeyEnvelope,
        context: &EncryptionContext,
        to: &KmsKeyWrap,
    ) -> vaultline_crypto::Result<KeyEnvelope> {
        if envelope.provider != PROVIDER {
            return Err(CryptoError::ProviderMismatch {
                expected: PROVIDER.to_string(),
                found: envelope.provider.clone(),
            });
        }
        let source = self
            .trusted(&envelope.key_id)
            .ok_or_else(|| self.untrusted(&envelope.key_id))?;
        let req = self
            .client
            .re_encrypt()
            .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(envelope.wrapped.clone()))
            .source_key_id(source)
            .set_source_encryption_context(Some(kms_context(context)))
            .destination_key_id(&to.arn)
            .set_destination_encryption_context(Some(kms_context(context)));
        let out = block_on(req.send())
            .map_err(|e| {
                self.error(
                    "ReEncrypt",
                    &envelope.key_id,
                    context,
                    format!("to key {}: {e:#}", to.arn),
                )
            })?
            .map_err(|e| {
                let code = error_code(&e);
                let code = code.as_deref();
                let hint = match code {
                    Some("AccessDeniedException" | "AccessDenied") => {
                        " — rewrap needs kms:ReEncryptFrom on the source key and kms:ReEncryptTo on the \
                         destination key for this encryption context (docs/key-rotation.md)"
                    }
                    other => explain(other),
                };
                let why = format!("{}{hint}", describe(&e));
                match code {
                    // The wrapped key and its context do not belong together:
                    // stored data that is not what we wrote.
                    Some("InvalidCiphertextException" | "IncorrectKeyException") => {
                        CryptoError::UnwrapFailed {
                            key_id: envelope.key_id.clone(),
                            reason: format!(
                                "KMS ReEncrypt refused it for object {}: {why}",
                                context.get("object").unwrap_or("?")
                            ),
                        }
                    }
                    _ => self.error(
                        "ReEncrypt",
                        &envelope.key_id,
                        context,
                        format!("to key {}: {why}", to.arn),
                    ),
                }
            })?;
        let wrapped = out
            .ciphertext_blob()
            .map(|b| b.as_ref().to_vec())
            .filter(|b| !b.is_empty())
            .ok_or_else(|| {
                self.error(
                    "ReEncrypt",
                    &envelope.key_id,
                    context,
                    format!("to key {}: no ciphertext in the response", to.arn),
                )
            })?;
        Ok(KeyEnvelope {
            provider: PROVIDER.to_string(),
            key_id: out.key_id().unwrap_or(&to.arn).to_string(),
            wrapped,
        })
    }

    fn error(
        &self,
        operation: &'static str,
        key: &str,
        context: &EncryptionContext,
        why: String,
    ) -> CryptoError {
        let object = context.get("object").unwrap_or("?");
        CryptoError::Provider {
            provider: PROVIDER.to_string(),
            key_id: key.to_string(),
            operation,
            source: Box::new(KmsError {
                message: format!("{why} (object {object})"),
            }),
        }
    }
}

fn kms_context(context: &EncryptionContext) -> HashMap<String, String> {
    context
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// What a KMS error code means here.
fn explain(code: Option<&str>) -> &'static str {
    match code {
        Some("DisabledException") => {
            " — the key is disabled; enable it (aws kms enable-key) or, after a rotation, check the \
             repository's key"
        }
        Some("AccessDeniedException" | "AccessDenied") => {
            " — this principal is not allowed this operation on the key with this encryption context \
             (see `vaultline policy iam`)"
        }
        Some("InvalidCiphertextException") => {
            " — the wrapped key does not belong to this key and encryption context: the object's \
             header was altered or the object was moved"
        }
        Some("IncorrectKeyException") => " — the data key was wrapped under another KMS key",
        Some("NotFoundException") => " — the key does not exist (deleted?) in this account and region",
        Some("KMSInvalidStateException") => {
            " — the key is not usable in its current state (pending deletion?)"
        }
        _ => "",
    }
}

impl KeyWrap for KmsKeyWrap {
    fn provider_id(&self) -> &str {
        PROVIDER
    }

    fn key_id(&self) -> &str {
        &self.arn
    }

    fn generate(&self, context: &EncryptionContext) -> vaultline_crypto::Result<(DataKey, KeyEnvelope)> {
        let req = self
            .client
            .generate_data_key()
            .key_id(&self.arn)
            .key_spec(DataKeySpec::Aes256)
            .set_encryption_context(Some(kms_context(context)));
        let mut out = block_on(req.send())
            .map_err(|e| self.error("GenerateDataKey", &self.arn, context, format!("{e:#}")))?
            .map_err(|e| {
                let code = error_code(&e);
                let code = code.as_deref();
                self.error(
                    "GenerateDataKey",
                    &self.arn,
                    context,
                    format!("{}{}", describe(&e), explain(code)),
                )
            })?;
        // The plaintext first, into our zeroizing type, whatever else is wrong.
        let mut plain = out.plaintext.take().map(|b| b.into_inner()).unwrap_or_default();
        let key = data_key(&plain);
        plain.zeroize();
        let key_id = out.key_id().unwrap_or(&self.arn).to_string();
        let wrapped = out
            .ciphertext_blob()
            .map(|b| b.as_ref().to_vec())
            .ok_or_else(|| {
                self.error(
                    "GenerateDataKey",
                    &key_id,
                    context,
                    "no ciphertext in the response".into(),
                )
            })?;
        let key = key.ok_or_else(|| {
            self.error(
                "GenerateDataKey",
                &key_id,
                context,
                format!("expected a {KEY_SIZE}-byte data key"),
            )
        })?;
        Ok((
            key,
            KeyEnvelope {
                provider: PROVIDER.to_string(),
                key_id,
                wrapped,
            },
        ))
    }

    fn wrap(&self, key: &DataKey, context: &EncryptionContext) -> vaultline_crypto::Result<KeyEnvelope> {
        let req = self
            .client
            .encrypt()
            .key_id(&self.arn)
            .plaintext(aws_sdk_kms::primitives::Blob::new(key.expose_secret().to_vec()))
            .set_encryption_context(Some(kms_context(context)));
        let out = block_on(req.send())
            .map_err(|e| self.error("Encrypt", &self.arn, context, format!("{e:#}")))?
            .map_err(|e| {
                let code = error_code(&e);
                let code = code.as_deref();
                self.error(
                    "Encrypt",
                    &self.arn,
                    context,
                    format!("{}{}", describe(&e), explain(code)),
                )
            })?;
        Ok(KeyEnvelope {
            provider: PROVIDER.to_string(),
            key_id: out.key_id().unwrap_or(&self.arn).to_string(),
            wrapped: out
                .ciphertext_blob()
                .map(|b| b.as_ref().to_vec())
                .ok_or_else(|| {
                    self.error(
                        "Encrypt",
                        &self.arn,
                        context,
                        "no ciphertext in the response".into(),
                    )
                })?,
        })
    }

    fn unwrap(
        &self,
        envelope: &KeyEnvelope,
        context: &EncryptionContext,
    ) -> vaultline_crypto::Result<DataKey> {
        if envelope.provider != PROVIDER {
            return Err(CryptoError::ProviderMismatch {
                expected: PROVIDER.to_string(),
                found: envelope.provider.clone(),
            });
        }
        // Decrypt under a trusted key only (the configured one, or one the
        // operator accepted, e.g. the old key during a rotation), named in
        // the request so KMS cannot pick another; a replica of the same
        // multi-Region key stands in for it (a restore in another Region).
        let decrypt_with = self
            .trusted(&envelope.key_id)
            .ok_or_else(|| self.untrusted(&envelope.key_id))?;
        let req = self
            .client
            .decrypt()
            .key_id(decrypt_with)
            .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(envelope.wrapped.clone()))
            .set_encryption_context(Some(kms_context(context)));
        let out = block_on(req.send())
            .map_err(|e| self.error("Decrypt", &envelope.key_id, context, format!("{e:#}")))?
            .map_err(|e| {
                let code = error_code(&e);
                let code = code.as_deref();
                let why = format!("{}{}", describe(&e), explain(code));
                match code {
                    // The wrapped key and its context do not belong together:
                    // stored data that is not what we wrote.
                    Some("InvalidCiphertextException" | "IncorrectKeyException") => {
                        CryptoError::UnwrapFailed {
                            key_id: envelope.key_id.clone(),
                            reason: format!(
                                "KMS Decrypt refused it for object {}: {why}",
                                context.get("object").unwrap_or("?")
                            ),
                        }
                    }
                    _ => self.error("Decrypt", &envelope.key_id, context, why),
                }
            })?;
        let mut plain = out.plaintext.map(|b| b.into_inner()).unwrap_or_default();
        let key = data_key(&plain);
        plain.zeroize();
        key.ok_or_else(|| {
            self.error(
                "Decrypt",
                &envelope.key_id,
                context,
                format!("expected a {KEY_SIZE}-byte data key"),
            )
        })
    }
}

fn data_key(plain: &[u8]) -> Option<DataKey> {
    DataKey::from_slice(plain)
}

/// True when `a` and `b` are ARNs of the same multi-Region key (same
/// partition, account and `mrk-` key id), in the same or different Regions:
/// a replica decrypts what its primary encrypted.
pub fn same_multi_region_key(a: &str, b: &str) -> bool {
    let parts = |arn: &str| -> Option<(String, String, String)> {
        let p: Vec<&str> = arn.splitn(6, ':').collect();
        match p.as_slice() {
            ["arn", partition, "kms", _region, account, resource] => {
                let id = resource.strip_prefix("key/")?;
                id.starts_with("mrk-")
                    .then(|| (partition.to_string(), account.to_string(), id.to_string()))
            }
            _ => None,
        }
    };
    matches!((parts(a), parts(b)), (Some(x), Some(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(arn: &str, accepted: &[&str]) -> KmsKeyWrap {
        let conf = aws_sdk_kms::Config::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("eu-west-1"))
            .build();
        KmsKeyWrap {
            client: Client::from_conf(conf),
            arn: arn.into(),
            accepted: Vec::new(),
        }
        .trusting(&accepted.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn only_configured_and_accepted_keys_are_trusted() {
        let configured = "arn:aws:kms:eu-west-1:111122223333:key/11111111-1111-1111-1111-111111111111";
        let old = "arn:aws:kms:eu-west-1:111122223333:key/22222222-2222-2222-2222-222222222222";
        let foreign = "arn:aws:kms:eu-west-1:444455556666:key/33333333-3333-3333-3333-333333333333";
        let p = provider(configured, &[old]);
        assert_eq!(p.trusted(configured), Some(configured));
        assert_eq!(p.trusted(old), Some(old));
        assert_eq!(p.trusted(foreign), None);
        let envelope = KeyEnvelope {
            provider: PROVIDER.into(),
            key_id: foreign.into(),
            wrapped: vec![1, 2, 3],
        };
        let ctx = EncryptionContext::new().with("job", "j").unwrap();
        // Refused before any request: this client has no credentials or endpoint.
        match p.unwrap(&envelope, &ctx) {
            Err(e @ CryptoError::UntrustedKey { .. }) => {
                assert!(e.is_integrity());
                assert_eq!(
                    e.to_string(),
                    format!(
                        "this object's data key is wrapped by key {foreign}, which is not a trusted key \
                         (trusted: {configured}, {old})"
                    )
                );
            }
            other => panic!("expected UntrustedKey, got {:?}", other.map(|_| ())),
        }
        let mrk = "arn:aws:kms:eu-west-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab";
        let replica = "arn:aws:kms:eu-central-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab";
        assert_eq!(
            provider(mrk, &[]).trusted(replica),
            Some(mrk),
            "the replica here decrypts"
        );
    }

    #[test]
    fn replicas_of_a_multi_region_key_are_the_same_key() {
        let primary = "arn:aws:kms:eu-west-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab";
        let replica = "arn:aws:kms:eu-central-1:111122223333:key/mrk-1234abcd12ab34cd56ef1234567890ab";
        assert!(same_multi_region_key(primary, replica));
        assert!(same_multi_region_key(primary, primary));
        let other_account = "arn:aws:kms:eu-central-1:999922223333:key/mrk-1234abcd12ab34cd56ef1234567890ab";
        assert!(!same_multi_region_key(primary, other_account));
        let single = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        let single_elsewhere =
            "arn:aws:kms:eu-central-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        assert!(!same_multi_region_key(single, single_elsewhere));
        assert!(!same_multi_region_key("alias/x", "alias/x"));
    }
}
