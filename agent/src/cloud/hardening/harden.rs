//! `harden`: the changes that make a bucket pass, planned from its current
//! state and applied idempotently. Settings are only ever tightened: an
//! existing bucket policy keeps every statement (the TLS-only Deny is
//! added), existing lifecycle rules are kept (ours are added only where no
//! rule already does the job; a rule that deletes backups is left to a
//! person, with the exact change), and nothing that passes is touched, so a
//! second run plans nothing.

use anyhow::{Context, Result, anyhow};
use aws_sdk_s3::Client;
use aws_sdk_s3::types::{
    AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, BucketLoggingStatus,
    BucketVersioningStatus, ExpirationStatus, LifecycleRule, LifecycleRuleFilter, LoggingEnabled,
    NoncurrentVersionExpiration, NoncurrentVersionTransition, ObjectOwnership, OwnershipControls,
    OwnershipControlsRule, PublicAccessBlockConfiguration, ServerSideEncryption,
    ServerSideEncryptionByDefault, ServerSideEncryptionConfiguration, ServerSideEncryptionRule, Tag,
    Transition, TransitionStorageClass, VersioningConfiguration,
};
use serde::Serialize;
use serde_json::Value;
use vaultline_config::{Config, KeyConfig, S3Repository};

use super::policy_doc::{TLS_ONLY_SID, tls_only_statement};
use super::{BucketState, Obs, Report, Status};
use crate::cloud::aws::{block_on, describe};

/// Rule ids `harden` owns.
pub const ARCHIVE_RULE: &str = "vaultline-archive-tier";
/// …
pub const ABORT_RULE: &str = "vaultline-abort-incomplete-uploads";
/// …
pub const NONCURRENT_RULE: &str = "vaultline-noncurrent-versions";

/// One change to make.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// The check it fixes.
    pub check: &'static str,
    /// What will be done, exactly.
    pub change: String,
    #[serde(skip)]
    action: Action,
}

#[derive(Debug, Clone)]
enum Action {
    PublicAccessBlock,
    PrivateAcl,
    Ownership,
    Versioning,
    Encryption,
    Policy(Value),
    Lifecycle(
        Vec<LifecycleRule>,
        Option<aws_sdk_s3::types::TransitionDefaultMinimumObjectSize>,
    ),
    Logging {
        bucket: String,
        prefix: String,
    },
    KeyRotation(String),
}

/// The plan: changes `--apply` makes, and what only a person can do.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Changes, in the order they are applied.
    pub changes: Vec<Change>,
    /// Failing checks harden does not fix, with why.
    pub manual: Vec<String>,
}

fn failing(report: &Report, id: &str) -> bool {
    report
        .checks
        .iter()
        .any(|f| f.id == id && f.status == Status::Fail)
}

fn rule(id: &str) -> aws_sdk_s3::types::builders::LifecycleRuleBuilder {
    LifecycleRule::builder().id(id).status(ExpirationStatus::Enabled)
}

/// Plans the changes for `state`, judged as `report`.
pub fn plan(state: &BucketState, report: &Report, config: &Config, s3: &S3Repository) -> Result<Plan> {
    let b = &state.bucket;
    let mut changes = Vec::new();
    let mut manual = Vec::new();
    let mut add = |check: &'static str, change: String, action: Action| {
        changes.push(Change {
            check,
            change,
            action,
        });
    };
    for f in &report.checks {
        if f.status == Status::Unknown {
            manual.push(format!(
                "{}: could not be read ({}); check it by hand",
                f.id, f.finding
            ));
        }
    }
    if failing(report, "public-access-block") {
        add(
            "public-access-block",
            format!("turn on all four Block Public Access settings of bucket {b}"),
            Action::PublicAccessBlock,
        );
    }
    if failing(report, "acls-disabled") {
        if matches!(&state.public_grants, Obs::Set(g) if !g.is_empty()) {
            add(
                "acls-disabled",
                format!("reset the ACL of bucket {b} to private"),
                Action::PrivateAcl,
            );
        }
        if !matches!(&state.ownership, Obs::Set(o) if o == "BucketOwnerEnforced") {
            add(
                "acls-disabled",
                format!("set object ownership of bucket {b} to BucketOwnerEnforced (disables ACLs)"),
                Action::Ownership,
            );
        }
    }
    if failing(report, "versioning") {
        add(
            "versioning",
            format!("enable versioning on bucket {b}"),
            Action::Versioning,
        );
    }
    if failing(report, "default-encryption") {
        add(
            "default-encryption",
            format!(
                "set default encryption of bucket {b} to SSE-KMS (aws:kms, AWS managed key, bucket key on)"
            ),
            Action::Encryption,
        );
    }
    if failing(report, "no-public-policy") {
        manual.push(
            "no-public-policy: remove or restrict the public statements by hand (harden never deletes policy \
             statements); Block Public Access neutralizes them meanwhile"
                .into(),
        );
    }
    if failing(report, "tls-only") {
        let mut doc = match &state.policy {
            Obs::Set(p) => p.clone(),
            _ => serde_json::json!({ "Version": "2012-10-17", "Statement": [] }),
        };
        let statements = match doc.get_mut("Statement") {
            Some(Value::Array(a)) => a,
            Some(other) => {
                let single = other.take();
                doc["Statement"] = Value::Array(vec![single]);
                doc["Statement"].as_array_mut().context("policy statements")?
            }
            None => {
                doc["Statement"] = Value::Array(Vec::new());
                doc["Statement"].as_array_mut().context("policy statements")?
            }
        };
        statements.retain(|st| st.get("Sid").and_then(Value::as_str) != Some(TLS_ONLY_SID));
        statements.push(tls_only_statement(b));
        let kept = statements.len() - 1;
        add(
            "tls-only",
            format!(
                "add statement {TLS_ONLY_SID} (Deny s3:* on {b} and {b}/* when aws:SecureTransport is false) to the \
                 bucket policy, keeping its {kept} other statement(s)"
            ),
            Action::Policy(doc),
        );
    }
    // Lifecycle: one PutBucketLifecycleConfiguration with the existing rules
    // plus whichever of ours are missing.
    let existing: Vec<LifecycleRule> = match &state.lifecycle {
        Obs::Set(r) => r.clone(),
        _ => Vec::new(),
    };
    let lc = &config.hardening.lifecycle;
    let mut added = Vec::new();
    let mut rules = existing.clone();
    if failing(report, "lifecycle-archive") {
        if existing.iter().any(|r| super::rule_freezes_everything(r, s3)) {
            manual.push(
                "lifecycle-archive: an existing rule moves every object (manifests too) to Glacier; filter it on \
                 the tier tag by hand"
                    .into(),
            );
        } else {
            rules.retain(|r| r.id() != Some(ARCHIVE_RULE));
            rules.push(
                rule(ARCHIVE_RULE)
                    .filter(
                        LifecycleRuleFilter::builder()
                            .tag(
                                Tag::builder()
                                    .key(&s3.tier_tag.key)
                                    .value(&s3.tier_tag.value)
                                    .build()?,
                            )
                            .build(),
                    )
                    .transitions(
                        Transition::builder()
                            .days(lc.archive_after_days as i32)
                            .storage_class(TransitionStorageClass::from(lc.archive_class.as_str()))
                            .build(),
                    )
                    .build()?,
            );
            added.push(format!(
                "{ARCHIVE_RULE} (objects tagged {}={} → {} after {} days)",
                s3.tier_tag.key,
                s3.tier_tag.value,
                lc.archive_class.as_str(),
                lc.archive_after_days
            ));
        }
    }
    if failing(report, "lifecycle-abort-mpu") {
        rules.retain(|r| r.id() != Some(ABORT_RULE));
        rules.push(
            rule(ABORT_RULE)
                .filter(LifecycleRuleFilter::builder().prefix("").build())
                .abort_incomplete_multipart_upload(
                    AbortIncompleteMultipartUpload::builder()
                        .days_after_initiation(lc.abort_incomplete_uploads_days as i32)
                        .build(),
                )
                .build()?,
        );
        added.push(format!(
            "{ABORT_RULE} (abort incomplete multipart uploads after {} days)",
            lc.abort_incomplete_uploads_days
        ));
    }
    // Only the repository's objects: other data in the bucket is not ours.
    let repo_prefix = if s3.prefix.is_empty() {
        String::new()
    } else {
        format!("{}/", s3.prefix)
    };
    let has_noncurrent = existing.iter().any(|r| {
        super::enabled(r)
            && (r.noncurrent_version_expiration().is_some() || !r.noncurrent_version_transitions().is_empty())
    });
    let may_add_noncurrent = !has_noncurrent && !matches!(state.lifecycle, Obs::Unknown(_));
    // Never install an expiration the lifecycle-no-early-expiry check fails:
    // it would refuse every backup from then on.
    let mut expire_days = lc.noncurrent_expire_days;
    if let Some(floor) = config.retention_floor()
        && expire_days > 0
        && expire_days < floor.days
    {
        if may_add_noncurrent {
            manual.push(format!(
                "lifecycle-no-early-expiry: hardening.noncurrent-expire-days = {expire_days} is shorter than the {} \
                 days {}, so harden does not install that expiration: raise it to at least {}, or 0 to keep \
                 noncurrent versions",
                floor.days, floor.why, floor.days
            ));
        }
        expire_days = 0;
    }
    let wants_noncurrent = expire_days > 0 || lc.noncurrent_transition_days > 0;
    if wants_noncurrent && may_add_noncurrent {
        let mut r = rule(NONCURRENT_RULE).filter(LifecycleRuleFilter::builder().prefix(&repo_prefix).build());
        if lc.noncurrent_transition_days > 0 {
            r = r.noncurrent_version_transitions(
                NoncurrentVersionTransition::builder()
                    .noncurrent_days(lc.noncurrent_transition_days as i32)
                    .storage_class(TransitionStorageClass::from(lc.archive_class.as_str()))
                    .build(),
            );
        }
        if expire_days > 0 {
            r = r.noncurrent_version_expiration(
                NoncurrentVersionExpiration::builder()
                    .noncurrent_days(expire_days as i32)
                    .build(),
            );
        }
        rules.push(r.build()?);
        added.push(format!(
            "{NONCURRENT_RULE} (noncurrent versions under {repo_prefix:?}: transition after {} days, expire after \
             {} days; 0 = never)",
            lc.noncurrent_transition_days, expire_days
        ));
    }
    if !added.is_empty() {
        add(
            "lifecycle-archive",
            format!(
                "add lifecycle rule(s) {} to bucket {b}, keeping its {} existing rule(s)",
                added.join(", "),
                existing.len()
            ),
            Action::Lifecycle(rules, state.lifecycle_min_size.clone()),
        );
    }
    if failing(report, "access-logging") {
        match &config.hardening.access_log_bucket {
            Some(target) if target != b => add(
                "access-logging",
                format!(
                    "log server access of bucket {b} to bucket {target} under {}{b}/",
                    config.hardening.access_log_prefix
                ),
                Action::Logging {
                    bucket: target.clone(),
                    prefix: format!("{}{b}/", config.hardening.access_log_prefix),
                },
            ),
            _ => manual.push(
                "access-logging: set hardening.access-log-bucket (another bucket that accepts S3 log delivery) and \
                 rerun"
                    .into(),
            ),
        }
    }
    if let Some(f) = report
        .checks
        .iter()
        .find(|f| f.id == "lifecycle-no-early-expiry" && f.status == Status::Fail)
    {
        manual.push(format!(
            "lifecycle-no-early-expiry: harden never deletes or edits lifecycle rules it did not write; {}",
            f.fix
        ));
    }
    if failing(report, "object-lock") {
        manual.push(
            "object-lock: enabling object lock cannot be undone; do it deliberately (docs/hardening.md)"
                .into(),
        );
    }
    if failing(report, "kms-key")
        && let (Obs::Set((enabled, rotation)), KeyConfig::Kms { key_id, .. }) = (&state.kms_key, &config.key)
    {
        if !rotation {
            add(
                "kms-key",
                format!("enable automatic rotation of KMS key {key_id}"),
                Action::KeyRotation(key_id.clone()),
            );
        }
        if !enabled {
            manual.push(format!(
                "kms-key: key {key_id} is disabled; enabling it is a decision for its owner"
            ));
        }
    }
    if failing(report, "account-public-access-block") {
        manual.push(
            "account-public-access-block: an account-wide setting; apply it with the command in the audit report"
                .into(),
        );
    }
    Ok(Plan { changes, manual })
}

/// Hears of each change `apply` made, with its outcome (the service's
/// error message when it failed).
pub type Applied<'a> = dyn FnMut(&Change, &std::result::Result<(), String>) -> Result<()> + 'a;

/// Applies `plan` in order; stops at the first failure (what was applied
/// stays applied; rerunning continues from the rest). `applied` hears of
/// every change attempted, with its outcome, before the next one is made
/// (the command records it in the audit trail; an error from it stops).
pub fn apply(
    client: &Client,
    sdk: &aws_config::SdkConfig,
    config: &Config,
    bucket: &str,
    plan: &Plan,
    applied: &mut Applied<'_>,
) -> Result<()> {
    for change in &plan.changes {
        let result = match &change.action {
            Action::PublicAccessBlock => block_on(
                client
                    .put_public_access_block()
                    .bucket(bucket)
                    .public_access_block_configuration(
                        PublicAccessBlockConfiguration::builder()
                            .block_public_acls(true)
                            .ignore_public_acls(true)
                            .block_public_policy(true)
                            .restrict_public_buckets(true)
                            .build(),
                    )
                    .send(),
            )?
            .map(|_| ())
            .map_err(|e| describe(&e)),
            Action::PrivateAcl => block_on(
                client
                    .put_bucket_acl()
                    .bucket(bucket)
                    .acl(aws_sdk_s3::types::BucketCannedAcl::Private)
                    .send(),
            )?
            .map(|_| ())
            .map_err(|e| describe(&e)),
            Action::Ownership => block_on(
                client
                    .put_bucket_ownership_controls()
                    .bucket(bucket)
                    .ownership_controls(
                        OwnershipControls::builder()
                            .rules(
                                OwnershipControlsRule::builder()
                                    .object_ownership(ObjectOwnership::BucketOwnerEnforced)
                                    .build()?,
                            )
                            .build()?,
                    )
                    .send(),
            )?
            .map(|_| ())
            .map_err(|e| describe(&e)),
            Action::Versioning => block_on(
                client
                    .put_bucket_versioning()
                    .bucket(bucket)
                    .versioning_configuration(
                        VersioningConfiguration::builder()
                            .status(BucketVersioningStatus::Enabled)
                            .build(),
                    )
                    .send(),
            )?
            .map(|_| ())
            .map_err(|e| describe(&e)),
            Action::Encryption => block_on(
                client
                    .put_bucket_encryption()
                    .bucket(bucket)
                    .server_side_encryption_configuration(
                        ServerSideEncryptionConfiguration::builder()
                            .rules(
                                ServerSideEncryptionRule::builder()
                                    .apply_server_side_encryption_by_default(
                                        ServerSideEncryptionByDefault::builder()
                                            .sse_algorithm(ServerSideEncryption::AwsKms)
                                            .build()?,
                                    )
                                    .bucket_key_enabled(true)
                                    .build(),
                            )
                            .build()?,
                    )
                    .send(),
            )?
            .map(|_| ())
            .map_err(|e| describe(&e)),
            Action::Policy(doc) => block_on(
                client
                    .put_bucket_policy()
                    .bucket(bucket)
                    .policy(serde_json::to_string(doc)?)
                    .send(),
            )?
            .map(|_| ())
            .map_err(|e| describe(&e)),
            Action::Lifecycle(rules, min_size) => block_on(
                client
                    .put_bucket_lifecycle_configuration()
                    .bucket(bucket)
                    .set_transition_default_minimum_object_size(min_size.clone())
                    .lifecycle_configuration(
                        BucketLifecycleConfiguration::builder()
                            .set_rules(Some(rules.clone()))
                            .build()?,
                    )
                    .send(),
            )?
            .map(|_| ())
            .map_err(|e| describe(&e)),
            Action::Logging {
                bucket: target,
                prefix,
            } => block_on(
                client
                    .put_bucket_logging()
                    .bucket(bucket)
                    .bucket_logging_status(
                        BucketLoggingStatus::builder()
                            .logging_enabled(
                                LoggingEnabled::builder()
                                    .target_bucket(target)
                                    .target_prefix(prefix)
                                    .build()?,
                            )
                            .build(),
                    )
                    .send(),
            )?
            .map(|_| ())
            .map_err(|e| describe(&e)),
            Action::KeyRotation(key_id) => {
                let endpoint = match &config.key {
                    KeyConfig::Kms { endpoint, .. } => endpoint.as_deref(),
                    KeyConfig::Local { .. } => None,
                };
                let kms = crate::cloud::aws::kms_client(sdk, &config.aws, endpoint)?;
                block_on(kms.enable_key_rotation().key_id(key_id).send())?
                    .map(|_| ())
                    .map_err(|e| describe(&e))
            }
        };
        applied(change, &result)?;
        result.map_err(|why| anyhow!("{} ({}): {why}", change.change, change.check))?;
        tracing::info!("applied: {}", change.change);
    }
    Ok(())
}
