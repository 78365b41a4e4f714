//! The least-privilege IAM policy text for each way vaultline is used with
//! a configuration (`vaultline policy iam --role …` prints it).
//!
//! - `backup` is write-only: it may add objects under this host's part of
//!   the repository and have KMS generate data keys for this host's
//!   encryption context, but it can neither read archives or manifests
//!   (`s3:GetObject` only on the repository marker) nor unwrap a data key
//!   (`kms:Decrypt` is not granted). A compromised server cannot read its
//!   own history.
//! - `restore` reads this host's snapshots and unwraps their keys; it
//!   cannot write or delete.
//! - `admin` manages the repository: everything under the prefix, every
//!   host, key rotation (`kms:ReEncrypt*`), and the bucket settings that
//!   `audit` reads and `harden` changes.
//! - `auditor` runs the fleet commands: it lists the repository, reads the
//!   marker and every host's plain audit segments, reads the bucket
//!   settings and the key's state; it writes nothing, and Denies keep it
//!   from reading archives or manifests and from unwrapping a data key
//!   even when another policy (AWS's ReadOnlyAccess has `s3:Get*`) would
//!   allow it.
//!
//! Every statement names the exact bucket, prefix and key ARN; KMS
//! statements are conditioned on the encryption context (`host`), so a
//! host's role cannot ask for another host's keys. The backup role's Object
//! Lock retention is bounded by the configured modes and days (see
//! [`LOCK_MARGIN_DAYS`]); `s3:ListBucketMultipartUploads` takes no prefix
//! condition and is granted on the bucket (docs/s3.md says what that
//! reveals).

use anyhow::Result;
use serde_json::{Value, json};
use vaultline_config::{Config, Repository};

use crate::error::UsageError;

/// What the pre-run hardening checks read (bucket settings only).
const HARDENING_READS: &[&str] = &[
    "s3:GetBucketPublicAccessBlock",
    "s3:GetBucketPolicy",
    "s3:GetBucketOwnershipControls",
    "s3:GetBucketAcl",
    "s3:GetBucketVersioning",
    "s3:GetEncryptionConfiguration",
    "s3:GetBucketLogging",
    "s3:GetLifecycleConfiguration",
    "s3:GetBucketObjectLockConfiguration",
];

/// The roles a policy is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Runs backups; may not read them back.
    Backup,
    /// Restores and verifies this host's snapshots.
    Restore,
    /// Manages the repository and bucket.
    Admin,
    /// Runs the fleet commands: lists, reads audit trails, decrypts nothing.
    Auditor,
}

/// Days added to the largest configured `object-lock.days` in the backup
/// role's bound. A retain-until date is the snapshot's start on the host's
/// clock plus `days`, while S3 computes the remaining days on its own clock
/// (and does not document its rounding): a host clock a little ahead must
/// not make every locked upload fail. One day is that slack, and all an
/// attacker gains from it.
pub const LOCK_MARGIN_DAYS: u32 = 1;

/// Object Lock for the backup role. New manifests, node packs and archives
/// carry their retention in the upload, and the archives and node packs a
/// snapshot reuses get theirs extended; S3 authorizes both as `s3:PutObjectRetention`, which is
/// granted only for the configured modes and at most the longest configured
/// days (plus [`LOCK_MARGIN_DAYS`]). Unbounded, a compromised host could
/// lock its objects in COMPLIANCE mode for a century: storage nobody, not
/// even the root user, could delete. The same bounds are also Denies on
/// `s3:PutObject` (which takes the same condition keys), so no other policy
/// attached to the role can lift them; without a locking job every lock
/// header is denied.
fn lock_statements(config: &Config, host_objects: &str, host_shared: &[String]) -> Vec<Value> {
    let locks: Vec<&vaultline_config::ObjectLock> = config
        .jobs
        .iter()
        .filter_map(|j| j.object_lock.as_ref())
        .collect();
    let Some(days) = locks.iter().map(|l| l.days).max() else {
        return vec![json!({
            "Sid": "NoLocks",
            "Effect": "Deny",
            "Action": ["s3:PutObject", "s3:PutObjectRetention"],
            "Resource": host_objects,
            "Condition": { "Null": { "s3:object-lock-mode": "false" } }
        })];
    };
    let modes: Vec<&str> = locks
        .iter()
        .map(|l| l.mode.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let bound = days.saturating_add(LOCK_MARGIN_DAYS).to_string();
    vec![
        json!({
            "Sid": "ReadLocksOfOwnArchives",
            "Effect": "Allow",
            "Action": ["s3:GetObjectRetention"],
            "Resource": host_shared
        }),
        json!({
            "Sid": "LockOwnObjectsWithinConfiguredRetention",
            "Effect": "Allow",
            "Action": ["s3:PutObjectRetention"],
            "Resource": host_objects,
            "Condition": {
                "StringEquals": { "s3:object-lock-mode": modes },
                "NumericLessThanEquals": { "s3:object-lock-remaining-retention-days": bound }
            }
        }),
        // Null: a request without the header (an UploadPart, an upload
        // without a lock) is not a lock in another mode.
        json!({
            "Sid": "NoOtherLockMode",
            "Effect": "Deny",
            "Action": ["s3:PutObject", "s3:PutObjectRetention"],
            "Resource": host_objects,
            "Condition": {
                "Null": { "s3:object-lock-mode": "false" },
                "StringNotEquals": { "s3:object-lock-mode": modes }
            }
        }),
        // A missing key never matches NumericGreaterThan.
        json!({
            "Sid": "NoLongerLock",
            "Effect": "Deny",
            "Action": ["s3:PutObject", "s3:PutObjectRetention"],
            "Resource": host_objects,
            "Condition": {
                "NumericGreaterThan": { "s3:object-lock-remaining-retention-days": bound }
            }
        }),
    ]
}

/// The policy document for `role`. `key_arn` is the KMS key's ARN (KMS
/// statements are left out for a local key).
pub fn iam_policy(config: &Config, role: Role, key_arn: Option<&str>) -> Result<Value> {
    let Repository::S3(s3) = &config.repository else {
        return Err(UsageError(format!(
            "{}: IAM policies are for S3 repositories; this configuration uses a local repository",
            config.file.display()
        ))
        .into());
    };
    let bucket = format!("arn:aws:s3:::{}", s3.bucket);
    let base = if s3.prefix.is_empty() {
        String::new()
    } else {
        format!("{}/", s3.prefix)
    };
    let host = &config.agent.host;
    let tier = &s3.tier_tag;
    let marker = format!("{bucket}/{base}repository.json");
    let host_objects = format!("{bucket}/{base}{host}/*");
    let all_objects = format!("{bucket}/{base}*");
    let host_context = json!({ "StringEquals": { "kms:EncryptionContext:host": host } });
    let list_own = json!({
        "Sid": "ListOwnSnapshots",
        "Effect": "Allow",
        "Action": ["s3:ListBucket"],
        "Resource": bucket,
        "Condition": { "StringLike": { "s3:prefix": [format!("{base}{host}/*")] } }
    });
    let describe_key = |key: &str| {
        json!({
            "Sid": "ReadKeyState",
            "Effect": "Allow",
            "Action": ["kms:DescribeKey", "kms:GetKeyRotationStatus"],
            "Resource": key
        })
    };

    let mut statements = Vec::new();
    match role {
        Role::Backup => {
            statements.push(list_own.clone());
            // ListBucketMultipartUploads supports no s3:prefix (nor any
            // key that narrows what it lists): the bucket is as tight as
            // IAM allows. It reveals other hosts' in-progress object names
            // and start times, nothing more (docs/s3.md).
            statements.push(json!({
                "Sid": "FindOwnIncompleteUploads",
                "Effect": "Allow",
                "Action": ["s3:ListBucketMultipartUploads"],
                "Resource": bucket
            }));
            statements.push(json!({
                "Sid": "CheckBucketHardening",
                "Effect": "Allow",
                "Action": HARDENING_READS,
                "Resource": bucket
            }));
            statements.push(json!({
                "Sid": "CheckAccountPublicAccessBlock",
                "Effect": "Allow",
                "Action": ["s3:GetAccountPublicAccessBlock"],
                "Resource": "*"
            }));
            statements.push(json!({
                "Sid": "ReadRepositoryMarker",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": marker
            }));
            statements.push(json!({
                "Sid": "WriteOwnObjects",
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:AbortMultipartUpload"],
                "Resource": host_objects
            }));
            // vaultline creates objects only with If-None-Match: *; without
            // it, s3:PutObject could overwrite (in a versioned bucket: hide)
            // past backups. UploadPart and CreateMultipartUpload are not
            // creation operations and need no header.
            statements.push(json!({
                "Sid": "NeverOverwrite",
                "Effect": "Deny",
                "Action": ["s3:PutObject"],
                "Resource": host_objects,
                "Condition": {
                    "Null": { "s3:if-none-match": "true" },
                    "Bool": { "s3:ObjectCreationOperation": "true" }
                }
            }));
            // Only archives are tagged, and only with the tier tag: the role
            // cannot retag manifests into a cold class.
            statements.push(json!({
                "Sid": "TagOwnArchivesWithTheTierTag",
                "Effect": "Allow",
                "Action": ["s3:PutObjectTagging"],
                "Resource": format!("{bucket}/{base}{host}/*/archives/*"),
                "Condition": {
                    "ForAllValues:StringEquals": { "s3:RequestObjectTagKeys": [tier.key.as_str()] },
                    "StringEquals": { format!("s3:RequestObjectTag/{}", tier.key): tier.value.as_str() }
                }
            }));
            statements.extend(lock_statements(
                config,
                &host_objects,
                &[
                    format!("{bucket}/{base}{host}/*/archives/*"),
                    format!("{bucket}/{base}{host}/*/nodes/*"),
                ],
            ));
            let topics: Vec<&str> = config
                .jobs
                .iter()
                .filter_map(|j| j.on_failure_sns.as_deref())
                .collect();
            if !topics.is_empty() {
                statements.push(json!({
                    "Sid": "PublishFailures",
                    "Effect": "Allow",
                    "Action": ["sns:Publish"],
                    "Resource": topics
                }));
            }
            if let Some(key) = key_arn {
                statements.push(json!({
                    "Sid": "GenerateDataKeysForThisHost",
                    "Effect": "Allow",
                    "Action": ["kms:GenerateDataKey"],
                    "Resource": key,
                    "Condition": host_context
                }));
                statements.push(describe_key(key));
            }
        }
        Role::Restore => {
            statements.push(list_own.clone());
            statements.push(json!({
                "Sid": "ReadOwnSnapshots",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": [marker, host_objects.clone()]
            }));
            // The audit trail of every command is shipped before it exits
            // (docs/threat-model.md): a restore's record too, new segments
            // only, never over an existing one.
            let audit = format!("{bucket}/{base}{host}/audit/*");
            statements.push(json!({
                "Sid": "ShipOwnAuditTrail",
                "Effect": "Allow",
                "Action": ["s3:PutObject"],
                "Resource": audit.clone()
            }));
            statements.push(json!({
                "Sid": "NeverOverwriteAuditTrail",
                "Effect": "Deny",
                "Action": ["s3:PutObject"],
                "Resource": audit.clone(),
                "Condition": {
                    "Null": { "s3:if-none-match": "true" },
                    "Bool": { "s3:ObjectCreationOperation": "true" }
                }
            }));
            statements.extend(
                lock_statements(config, &audit, std::slice::from_ref(&audit))
                    .into_iter()
                    .filter(|s| s["Sid"] != "ReadLocksOfOwnArchives"),
            );
            // Thawing archives that are in GLACIER or DEEP_ARCHIVE.
            statements.push(json!({
                "Sid": "ThawOwnArchives",
                "Effect": "Allow",
                "Action": ["s3:RestoreObject"],
                "Resource": format!("{bucket}/{base}{host}/*/archives/*")
            }));
            if let Some(key) = key_arn {
                statements.push(json!({
                    "Sid": "UnwrapDataKeysOfThisHost",
                    "Effect": "Allow",
                    "Action": ["kms:Decrypt"],
                    "Resource": key,
                    "Condition": host_context
                }));
                statements.push(describe_key(key));
            }
        }
        Role::Auditor => {
            // Both listings: the hosts (PREFIX/ with a delimiter) and each
            // host's objects. A repository that is the whole bucket is
            // listed without a prefix, which no s3:prefix condition admits.
            let mut list = json!({
                "Sid": "ListRepository",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": bucket
            });
            if !base.is_empty() {
                list["Condition"] = json!({ "StringLike": { "s3:prefix": [format!("{base}*")] } });
            }
            statements.push(list);
            // Audit segments are the only objects named .jsonl (archives
            // and manifests end in .archive and .manifest, also a job
            // named audit's).
            statements.push(json!({
                "Sid": "ReadMarkerAndAuditTrails",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": [marker, format!("{bucket}/{base}*/audit/*.jsonl")]
            }));
            statements.push(json!({
                "Sid": "CheckBucketHardening",
                "Effect": "Allow",
                "Action": HARDENING_READS,
                "Resource": bucket
            }));
            statements.push(json!({
                "Sid": "CheckAccountPublicAccessBlock",
                "Effect": "Allow",
                "Action": ["s3:GetAccountPublicAccessBlock"],
                "Resource": "*"
            }));
            statements.push(json!({
                "Sid": "NeverReadBackups",
                "Effect": "Deny",
                "Action": ["s3:GetObject", "s3:GetObjectVersion"],
                "Resource": [
                    format!("{bucket}/{base}*/archives/*"),
                    format!("{bucket}/{base}*/nodes/*"),
                    format!("{bucket}/{base}*/snapshots/*")
                ]
            }));
            if let Some(key) = key_arn {
                statements.push(describe_key(key));
                statements.push(json!({
                    "Sid": "NeverUnwrapDataKeys",
                    "Effect": "Deny",
                    "Action": ["kms:Decrypt", "kms:ReEncryptFrom", "kms:GenerateDataKey"],
                    "Resource": key
                }));
            }
        }
        Role::Admin => {
            statements.push(json!({
                "Sid": "ListRepository",
                "Effect": "Allow",
                "Action": ["s3:ListBucket", "s3:ListBucketVersions", "s3:ListBucketMultipartUploads"],
                "Resource": bucket
            }));
            statements.push(json!({
                "Sid": "ManageRepositoryObjects",
                "Effect": "Allow",
                "Action": [
                    "s3:GetObject",
                    "s3:GetObjectVersion",
                    "s3:GetObjectTagging",
                    "s3:PutObject",
                    "s3:PutObjectTagging",
                    "s3:DeleteObject",
                    "s3:AbortMultipartUpload",
                    "s3:GetObjectRetention",
                    "s3:PutObjectRetention",
                    "s3:RestoreObject"
                ],
                "Resource": all_objects
            }));
            statements.push(json!({
                "Sid": "AuditAndHardenBucket",
                "Effect": "Allow",
                "Action": [
                    "s3:GetBucketPublicAccessBlock",
                    "s3:PutBucketPublicAccessBlock",
                    "s3:GetBucketPolicy",
                    "s3:GetBucketPolicyStatus",
                    "s3:PutBucketPolicy",
                    "s3:GetBucketAcl",
                    "s3:PutBucketAcl",
                    "s3:GetBucketOwnershipControls",
                    "s3:PutBucketOwnershipControls",
                    "s3:GetBucketVersioning",
                    "s3:PutBucketVersioning",
                    "s3:GetEncryptionConfiguration",
                    "s3:PutEncryptionConfiguration",
                    "s3:GetBucketLogging",
                    "s3:PutBucketLogging",
                    "s3:GetLifecycleConfiguration",
                    "s3:PutLifecycleConfiguration",
                    "s3:GetBucketObjectLockConfiguration"
                ],
                "Resource": bucket
            }));
            statements.push(json!({
                "Sid": "CheckAccountPublicAccessBlock",
                "Effect": "Allow",
                "Action": ["s3:GetAccountPublicAccessBlock"],
                "Resource": "*"
            }));
            if let Some(key) = key_arn {
                statements.push(json!({
                    "Sid": "UseAndRotateDataKeys",
                    "Effect": "Allow",
                    "Action": [
                        "kms:GenerateDataKey",
                        "kms:Decrypt",
                        "kms:ReEncryptFrom",
                        "kms:ReEncryptTo",
                        "kms:DescribeKey",
                        "kms:GetKeyRotationStatus",
                        "kms:EnableKeyRotation"
                    ],
                    "Resource": key
                }));
            }
        }
    }
    Ok(json!({ "Version": "2012-10-17", "Statement": statements }))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;
    use vaultline_config::Environment;

    use super::*;

    const KEY: &str = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

    fn config(jobs: &str) -> Config {
        let text = format!(
            "[agent]\nhost = \"web1\"\nstate-dir = \"/var/lib/vaultline\"\n\n\
             [repository]\ntype = \"s3\"\nbucket = \"acme-backups\"\n\n{jobs}"
        );
        Config::parse(&text, Path::new("config.toml"), &Environment::default())
            .expect("a valid configuration")
    }

    fn statements(config: &Config) -> Vec<Value> {
        let doc = iam_policy(config, Role::Backup, Some(KEY)).expect("policy");
        assert_eq!(doc["Version"], "2012-10-17");
        doc["Statement"].as_array().expect("statements").clone()
    }

    /// The statements every backup policy has, before the Object Lock ones.
    fn common() -> Vec<Value> {
        vec![
            json!({
                "Sid": "ListOwnSnapshots",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": "arn:aws:s3:::acme-backups",
                "Condition": { "StringLike": { "s3:prefix": ["vaultline/web1/*"] } }
            }),
            // ListBucketMultipartUploads takes no s3:prefix: the bucket is
            // as narrow as IAM allows (docs/s3.md).
            json!({
                "Sid": "FindOwnIncompleteUploads",
                "Effect": "Allow",
                "Action": ["s3:ListBucketMultipartUploads"],
                "Resource": "arn:aws:s3:::acme-backups"
            }),
            json!({
                "Sid": "CheckBucketHardening",
                "Effect": "Allow",
                "Action": HARDENING_READS,
                "Resource": "arn:aws:s3:::acme-backups"
            }),
            json!({
                "Sid": "CheckAccountPublicAccessBlock",
                "Effect": "Allow",
                "Action": ["s3:GetAccountPublicAccessBlock"],
                "Resource": "*"
            }),
            json!({
                "Sid": "ReadRepositoryMarker",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": "arn:aws:s3:::acme-backups/vaultline/repository.json"
            }),
            json!({
                "Sid": "WriteOwnObjects",
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:AbortMultipartUpload"],
                "Resource": "arn:aws:s3:::acme-backups/vaultline/web1/*"
            }),
            json!({
                "Sid": "NeverOverwrite",
                "Effect": "Deny",
                "Action": ["s3:PutObject"],
                "Resource": "arn:aws:s3:::acme-backups/vaultline/web1/*",
                "Condition": {
                    "Null": { "s3:if-none-match": "true" },
                    "Bool": { "s3:ObjectCreationOperation": "true" }
                }
            }),
            json!({
                "Sid": "TagOwnArchivesWithTheTierTag",
                "Effect": "Allow",
                "Action": ["s3:PutObjectTagging"],
                "Resource": "arn:aws:s3:::acme-backups/vaultline/web1/*/archives/*",
                "Condition": {
                    "ForAllValues:StringEquals": { "s3:RequestObjectTagKeys": ["vaultline-tier"] },
                    "StringEquals": { "s3:RequestObjectTag/vaultline-tier": "archive" }
                }
            }),
        ]
    }

    fn kms() -> Vec<Value> {
        vec![
            json!({
                "Sid": "GenerateDataKeysForThisHost",
                "Effect": "Allow",
                "Action": ["kms:GenerateDataKey"],
                "Resource": KEY,
                "Condition": { "StringEquals": { "kms:EncryptionContext:host": "web1" } }
            }),
            json!({
                "Sid": "ReadKeyState",
                "Effect": "Allow",
                "Action": ["kms:DescribeKey", "kms:GetKeyRotationStatus"],
                "Resource": KEY
            }),
        ]
    }

    #[test]
    fn locks_are_bounded_by_the_configured_modes_and_days() {
        // Two locking jobs: their modes, and the longest days plus a day.
        let c = config(
            "[[jobs]]\nname = \"etc\"\npaths = [\"/etc\"]\n\
             [jobs.object-lock]\nmode = \"GOVERNANCE\"\ndays = 35\n\n\
             [[jobs]]\nname = \"db\"\npaths = [\"/srv/db\"]\n\
             [jobs.object-lock]\nmode = \"COMPLIANCE\"\ndays = 10\n\n\
             [[jobs]]\nname = \"logs\"\npaths = [\"/var/log\"]\n",
        );
        let mut want = common();
        want.extend([
            json!({
                "Sid": "ReadLocksOfOwnArchives",
                "Effect": "Allow",
                "Action": ["s3:GetObjectRetention"],
                "Resource": [
                    "arn:aws:s3:::acme-backups/vaultline/web1/*/archives/*",
                    "arn:aws:s3:::acme-backups/vaultline/web1/*/nodes/*"
                ]
            }),
            // Uploads with lock headers need s3:PutObjectRetention too, so
            // this bounds new manifests and archives as well as extensions.
            json!({
                "Sid": "LockOwnObjectsWithinConfiguredRetention",
                "Effect": "Allow",
                "Action": ["s3:PutObjectRetention"],
                "Resource": "arn:aws:s3:::acme-backups/vaultline/web1/*",
                "Condition": {
                    "StringEquals": { "s3:object-lock-mode": ["COMPLIANCE", "GOVERNANCE"] },
                    "NumericLessThanEquals": { "s3:object-lock-remaining-retention-days": "36" }
                }
            }),
            json!({
                "Sid": "NoOtherLockMode",
                "Effect": "Deny",
                "Action": ["s3:PutObject", "s3:PutObjectRetention"],
                "Resource": "arn:aws:s3:::acme-backups/vaultline/web1/*",
                "Condition": {
                    "Null": { "s3:object-lock-mode": "false" },
                    "StringNotEquals": { "s3:object-lock-mode": ["COMPLIANCE", "GOVERNANCE"] }
                }
            }),
            json!({
                "Sid": "NoLongerLock",
                "Effect": "Deny",
                "Action": ["s3:PutObject", "s3:PutObjectRetention"],
                "Resource": "arn:aws:s3:::acme-backups/vaultline/web1/*",
                "Condition": {
                    "NumericGreaterThan": { "s3:object-lock-remaining-retention-days": "36" }
                }
            }),
        ]);
        want.extend(kms());
        assert_eq!(Value::Array(statements(&c)), Value::Array(want));

        // One GOVERNANCE job: COMPLIANCE is refused outright.
        let c = config(
            "[[jobs]]\nname = \"etc\"\npaths = [\"/etc\"]\n\
             [jobs.object-lock]\nmode = \"GOVERNANCE\"\ndays = 7\n",
        );
        let st = statements(&c);
        let sid = |s: &str| st.iter().find(|x| x["Sid"] == s).cloned().expect("statement");
        assert_eq!(
            sid("LockOwnObjectsWithinConfiguredRetention")["Condition"],
            json!({
                "StringEquals": { "s3:object-lock-mode": ["GOVERNANCE"] },
                "NumericLessThanEquals": { "s3:object-lock-remaining-retention-days": "8" }
            })
        );
        assert_eq!(
            sid("NoOtherLockMode")["Condition"]["StringNotEquals"],
            json!({ "s3:object-lock-mode": ["GOVERNANCE"] })
        );
        assert_eq!(
            sid("NoLongerLock")["Condition"],
            json!({ "NumericGreaterThan": { "s3:object-lock-remaining-retention-days": "8" } })
        );
    }

    #[test]
    fn without_object_lock_the_backup_role_can_lock_nothing() {
        let c = config("[[jobs]]\nname = \"etc\"\npaths = [\"/etc\"]\n");
        let mut want = common();
        want.push(json!({
            "Sid": "NoLocks",
            "Effect": "Deny",
            "Action": ["s3:PutObject", "s3:PutObjectRetention"],
            "Resource": "arn:aws:s3:::acme-backups/vaultline/web1/*",
            "Condition": { "Null": { "s3:object-lock-mode": "false" } }
        }));
        want.extend(kms());
        assert_eq!(Value::Array(statements(&c)), Value::Array(want));
    }

    #[test]
    fn the_restore_role_ships_its_audit_trail_and_overwrites_nothing() {
        let doc = iam_policy(
            &config("[[jobs]]\nname = \"etc\"\npaths = [\"/etc\"]\n"),
            Role::Restore,
            Some(KEY),
        )
        .expect("policy");
        let statements = doc["Statement"].as_array().expect("statements");
        let by_sid = |sid: &str| statements.iter().find(|s| s["Sid"] == sid).cloned();
        assert_eq!(
            by_sid("ShipOwnAuditTrail"),
            Some(json!({
                "Sid": "ShipOwnAuditTrail",
                "Effect": "Allow",
                "Action": ["s3:PutObject"],
                "Resource": "arn:aws:s3:::acme-backups/vaultline/web1/audit/*"
            }))
        );
        assert_eq!(
            by_sid("NeverOverwriteAuditTrail").map(|s| s["Condition"].clone()),
            Some(json!({
                "Null": { "s3:if-none-match": "true" },
                "Bool": { "s3:ObjectCreationOperation": "true" }
            }))
        );
        // Without a locking job, no lock of any kind.
        assert_eq!(
            by_sid("NoLocks").map(|s| s["Resource"].clone()),
            Some(json!("arn:aws:s3:::acme-backups/vaultline/web1/audit/*"))
        );
        // Nothing else may be written.
        let writes: Vec<&Value> = statements
            .iter()
            .filter(|s| {
                s["Effect"] == "Allow"
                    && s["Action"]
                        .as_array()
                        .is_some_and(|a| a.contains(&json!("s3:PutObject")))
            })
            .collect();
        assert_eq!(writes.len(), 1, "{writes:?}");
    }

    #[test]
    fn the_auditor_lists_and_reads_audit_trails_but_never_backups_or_keys() {
        let c = config("[[jobs]]\nname = \"etc\"\npaths = [\"/etc\"]\n");
        let doc = iam_policy(&c, Role::Auditor, Some(KEY)).expect("policy");
        assert_eq!(
            doc,
            json!({
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Sid": "ListRepository",
                        "Effect": "Allow",
                        "Action": ["s3:ListBucket"],
                        "Resource": "arn:aws:s3:::acme-backups",
                        "Condition": { "StringLike": { "s3:prefix": ["vaultline/*"] } }
                    },
                    {
                        "Sid": "ReadMarkerAndAuditTrails",
                        "Effect": "Allow",
                        "Action": ["s3:GetObject"],
                        "Resource": [
                            "arn:aws:s3:::acme-backups/vaultline/repository.json",
                            "arn:aws:s3:::acme-backups/vaultline/*/audit/*.jsonl"
                        ]
                    },
                    {
                        "Sid": "CheckBucketHardening",
                        "Effect": "Allow",
                        "Action": HARDENING_READS,
                        "Resource": "arn:aws:s3:::acme-backups"
                    },
                    {
                        "Sid": "CheckAccountPublicAccessBlock",
                        "Effect": "Allow",
                        "Action": ["s3:GetAccountPublicAccessBlock"],
                        "Resource": "*"
                    },
                    {
                        "Sid": "NeverReadBackups",
                        "Effect": "Deny",
                        "Action": ["s3:GetObject", "s3:GetObjectVersion"],
                        "Resource": [
                            "arn:aws:s3:::acme-backups/vaultline/*/archives/*",
                            "arn:aws:s3:::acme-backups/vaultline/*/nodes/*",
                            "arn:aws:s3:::acme-backups/vaultline/*/snapshots/*"
                        ]
                    },
                    {
                        "Sid": "ReadKeyState",
                        "Effect": "Allow",
                        "Action": ["kms:DescribeKey", "kms:GetKeyRotationStatus"],
                        "Resource": KEY
                    },
                    {
                        "Sid": "NeverUnwrapDataKeys",
                        "Effect": "Deny",
                        "Action": ["kms:Decrypt", "kms:ReEncryptFrom", "kms:GenerateDataKey"],
                        "Resource": KEY
                    }
                ]
            })
        );
        // Nothing written, nothing deleted, no key used.
        let text = doc.to_string();
        for action in ["s3:Put", "s3:Delete", "s3:Abort", "s3:Restore"] {
            assert!(!text.contains(action), "{action} in {text}");
        }
        // A repository that is the whole bucket: the listing has no prefix.
        let whole = Config::parse(
            "[agent]\nhost = \"web1\"\nstate-dir = \"/var/lib/vaultline\"\n\n\
             [repository]\ntype = \"s3\"\nbucket = \"acme-backups\"\nprefix = \"\"\n",
            Path::new("config.toml"),
            &Environment::default(),
        )
        .expect("a valid configuration");
        let doc = iam_policy(&whole, Role::Auditor, None).expect("policy");
        assert_eq!(
            doc["Statement"][0],
            json!({
                "Sid": "ListRepository",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": "arn:aws:s3:::acme-backups"
            })
        );
        assert_eq!(
            doc["Statement"][1]["Resource"],
            json!([
                "arn:aws:s3:::acme-backups/repository.json",
                "arn:aws:s3:::acme-backups/*/audit/*.jsonl"
            ])
        );
        assert!(
            !doc.to_string().contains("kms:"),
            "no key statements for a local key"
        );
    }
}
