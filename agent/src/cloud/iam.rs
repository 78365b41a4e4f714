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
//!
//! Every statement names the exact bucket, prefix and key ARN; KMS
//! statements are conditioned on the encryption context (`host`), so a
//! host's role cannot ask for another host's keys.

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
            // Object Lock: new objects carry their retention in the upload;
            // the archives a snapshot reuses from its chain get theirs
            // extended to the snapshot's (never shortened).
            if config.jobs.iter().any(|j| j.object_lock.is_some()) {
                statements.push(json!({
                    "Sid": "ExtendLocksOfOwnArchives",
                    "Effect": "Allow",
                    "Action": ["s3:GetObjectRetention", "s3:PutObjectRetention"],
                    "Resource": format!("{bucket}/{base}{host}/*/archives/*")
                }));
            }
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
