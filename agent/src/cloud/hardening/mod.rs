//! Bucket hardening: reading the bucket's security settings, judging them
//! check by check, and the gate that stops a backup before anything is
//! written into an unsafe bucket (exit code 3).
//!
//! [`BucketState::read`] fetches every setting once; a setting the
//! principal may not read is `Unknown`, never assumed compliant. [`evaluate`]
//! turns the state into one [`Finding`] per check (stable id, severity, the
//! AWS Config rule and Security Hub control, what was observed, the exact
//! fix). [`harden`] plans and applies the missing settings from the same
//! state. docs/hardening.md explains every check.

pub mod harden;
pub mod policy_doc;

use anyhow::{Result, anyhow};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::types::LifecycleRule;
use serde::Serialize;
use vaultline_config::{CheckPolicy, Config, Hardening, KeyConfig, Repository, S3Repository};

use crate::cloud::aws::{block_on, describe, error_code};

/// Static facts about one check.
pub struct CheckInfo {
    /// Stable id (also the config key under `[hardening.checks]`).
    pub id: &'static str,
    /// What it requires, in a few words.
    pub title: &'static str,
    /// critical, high, medium or low.
    pub severity: &'static str,
    /// The AWS Config managed rule.
    pub config_rule: &'static str,
    /// The Security Hub control(s).
    pub control: &'static str,
}

/// Every check, in report order.
pub const CHECKS: &[CheckInfo] = &[
    CheckInfo {
        id: "public-access-block",
        title: "all four Block Public Access settings on for the bucket",
        severity: "critical",
        config_rule: "s3-bucket-level-public-access-prohibited",
        control: "S3.8",
    },
    CheckInfo {
        id: "no-public-policy",
        title: "the bucket policy grants nothing to everyone",
        severity: "critical",
        config_rule: "s3-bucket-public-read-prohibited, s3-bucket-public-write-prohibited",
        control: "S3.2, S3.3",
    },
    CheckInfo {
        id: "acls-disabled",
        title: "ACLs disabled (BucketOwnerEnforced), no public grants",
        severity: "high",
        config_rule: "s3-bucket-acl-prohibited",
        control: "S3.12",
    },
    CheckInfo {
        id: "versioning",
        title: "versioning enabled",
        severity: "high",
        config_rule: "s3-bucket-versioning-enabled",
        control: "S3.14",
    },
    CheckInfo {
        id: "default-encryption",
        title: "default encryption on (SSE-KMS preferred)",
        severity: "high",
        config_rule: "s3-default-encryption-kms",
        control: "S3.17",
    },
    CheckInfo {
        id: "tls-only",
        title: "the bucket policy denies requests without TLS",
        severity: "high",
        config_rule: "s3-bucket-ssl-requests-only",
        control: "S3.5",
    },
    CheckInfo {
        id: "access-logging",
        title: "server access logging to another bucket",
        severity: "medium",
        config_rule: "s3-bucket-logging-enabled",
        control: "S3.9",
    },
    CheckInfo {
        id: "lifecycle-archive",
        title: "a lifecycle rule moves tier-tagged archives to a Glacier class",
        severity: "low",
        config_rule: "s3-lifecycle-policy-check",
        control: "S3.13",
    },
    CheckInfo {
        id: "lifecycle-abort-mpu",
        title: "a lifecycle rule aborts incomplete multipart uploads",
        severity: "low",
        config_rule: "s3-lifecycle-policy-check",
        control: "S3.13",
    },
    CheckInfo {
        id: "lifecycle-no-early-expiry",
        title: "no enabled lifecycle rule deletes backups before vaultline lets them go",
        severity: "high",
        // No managed rule or control looks at what lifecycle rules delete
        // (s3-lifecycle-policy-check and S3.13 only ask that rules exist).
        config_rule: "-",
        control: "-",
    },
    CheckInfo {
        id: "object-lock",
        title: "object lock enabled with a default retention",
        severity: "medium",
        config_rule: "s3-bucket-default-lock-enabled",
        control: "S3.15",
    },
    CheckInfo {
        id: "kms-key",
        title: "the KMS key is enabled and rotates",
        severity: "medium",
        config_rule: "cmk-backing-key-rotation-enabled",
        control: "KMS.4",
    },
    CheckInfo {
        id: "account-public-access-block",
        title: "all four Block Public Access settings on for the account",
        severity: "high",
        config_rule: "s3-account-level-public-access-blocks-periodic",
        control: "S3.1",
    },
];

/// A setting as read from AWS.
#[derive(Debug, Clone, PartialEq)]
pub enum Obs<T> {
    /// The setting exists with this value.
    Set(T),
    /// The setting is not configured at all.
    Absent,
    /// It could not be read (the reason): never treated as compliant.
    Unknown(String),
}

/// Block Public Access flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PublicAccessBlock {
    /// BlockPublicAcls.
    pub block_public_acls: bool,
    /// IgnorePublicAcls.
    pub ignore_public_acls: bool,
    /// BlockPublicPolicy.
    pub block_public_policy: bool,
    /// RestrictPublicBuckets.
    pub restrict_public_buckets: bool,
}

impl PublicAccessBlock {
    fn all(&self) -> bool {
        self.block_public_acls
            && self.ignore_public_acls
            && self.block_public_policy
            && self.restrict_public_buckets
    }

    fn off(&self) -> Vec<&'static str> {
        [
            ("BlockPublicAcls", self.block_public_acls),
            ("IgnorePublicAcls", self.ignore_public_acls),
            ("BlockPublicPolicy", self.block_public_policy),
            ("RestrictPublicBuckets", self.restrict_public_buckets),
        ]
        .into_iter()
        .filter(|(_, on)| !on)
        .map(|(n, _)| n)
        .collect()
    }
}

/// Everything the checks look at, read once.
#[derive(Debug, Clone)]
pub struct BucketState {
    /// The bucket.
    pub bucket: String,
    /// Bucket-level Block Public Access.
    pub public_access_block: Obs<PublicAccessBlock>,
    /// The bucket policy document.
    pub policy: Obs<serde_json::Value>,
    /// Object ownership setting.
    pub ownership: Obs<String>,
    /// Grantee URIs of public ACL grants (AllUsers, AuthenticatedUsers).
    pub public_grants: Obs<Vec<String>>,
    /// Versioning status and MFA delete.
    pub versioning: Obs<(String, bool)>,
    /// Default encryption algorithms (`AES256`, `aws:kms`, …).
    pub encryption: Obs<Vec<String>>,
    /// Access logging target bucket and prefix.
    pub logging: Obs<(String, String)>,
    /// Lifecycle rules, as S3 returns them.
    pub lifecycle: Obs<Vec<LifecycleRule>>,
    /// The lifecycle configuration's TransitionDefaultMinimumObjectSize,
    /// kept as it is when `harden` rewrites the rules.
    pub lifecycle_min_size: Option<aws_sdk_s3::types::TransitionDefaultMinimumObjectSize>,
    /// Object lock: enabled, and its default retention when set.
    pub object_lock: Obs<(bool, Option<String>)>,
    /// The KMS key: enabled, rotation on (`Absent` for a local key).
    pub kms_key: Obs<(bool, bool)>,
    /// Account-level Block Public Access.
    pub account_public_access_block: Obs<PublicAccessBlock>,
}

/// One check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Compliant.
    Pass,
    /// Not compliant.
    Fail,
    /// Could not be read.
    Unknown,
    /// Does not apply to this configuration.
    NotApplicable,
}

/// A check's result, for reports and JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Check id.
    pub id: &'static str,
    /// What the check requires.
    pub title: &'static str,
    /// Verdict.
    pub status: Status,
    /// Severity.
    pub severity: &'static str,
    /// `abort` or `warn`, from the configuration.
    pub policy: &'static str,
    /// What was observed.
    pub finding: String,
    /// How to fix it by hand (empty when passing).
    pub fix: String,
    /// AWS Config managed rule.
    pub config_rule: &'static str,
    /// Security Hub control(s).
    pub control: &'static str,
}

impl Finding {
    /// Whether this finding refuses a run under `hardening`.
    pub fn blocks(&self, hardening: &Hardening) -> bool {
        self.policy == "abort"
            && match self.status {
                Status::Fail => true,
                Status::Unknown => !hardening.accept_unknown,
                Status::Pass | Status::NotApplicable => false,
            }
    }
}

/// The result of all checks.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The bucket checked.
    pub bucket: String,
    /// One finding per check, in [`CHECKS`] order.
    pub checks: Vec<Finding>,
    /// Whether every required check passed.
    pub passed: bool,
}

/// The marker error for "hardening refused the run" (exit code 3).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HardeningError(pub String);

fn read<T, O, E>(
    what: &str,
    absent: &[&str],
    result: Result<std::result::Result<O, SdkError<E, HttpResponse>>>,
    get: impl FnOnce(O) -> Obs<T>,
) -> Result<Obs<T>>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match result? {
        Ok(out) => Ok(get(out)),
        Err(e) => match error_code(&e).as_deref() {
            Some(code) if absent.contains(&code) => Ok(Obs::Absent),
            Some("AccessDenied" | "AccessDeniedException" | "AllAccessDisabled") => Ok(Obs::Unknown(
                format!("not allowed to read ({what}: {})", describe(&e)),
            )),
            Some("NotImplemented" | "MethodNotAllowed") => Ok(Obs::Unknown(format!(
                "the server does not support {what} ({})",
                describe(&e)
            ))),
            _ => Err(anyhow!("{what} failed: {}", describe(&e))),
        },
    }
}

/// Block Public Access flags from the bucket (S3) or account (S3 Control)
/// shape, which have the same four optional fields.
macro_rules! pab_from {
    ($c:expr) => {
        match $c {
            Some(c) => Obs::Set(PublicAccessBlock {
                block_public_acls: c.block_public_acls().unwrap_or(false),
                ignore_public_acls: c.ignore_public_acls().unwrap_or(false),
                block_public_policy: c.block_public_policy().unwrap_or(false),
                restrict_public_buckets: c.restrict_public_buckets().unwrap_or(false),
            }),
            None => Obs::Absent,
        }
    };
}

impl BucketState {
    /// Reads every setting of `s3.bucket` (and the account and KMS key).
    pub fn read(
        sdk: &aws_config::SdkConfig,
        config: &Config,
        s3: &S3Repository,
        client: &Client,
    ) -> Result<Self> {
        let bucket = s3.bucket.as_str();
        let public_access_block = read(
            "GetPublicAccessBlock",
            &["NoSuchPublicAccessBlockConfiguration"],
            block_on(client.get_public_access_block().bucket(bucket).send()),
            |o| pab_from!(o.public_access_block_configuration()),
        )?;
        let policy = read(
            "GetBucketPolicy",
            &["NoSuchBucketPolicy"],
            block_on(client.get_bucket_policy().bucket(bucket).send()),
            |o| match o.policy().map(serde_json::from_str::<serde_json::Value>) {
                Some(Ok(v)) => Obs::Set(v),
                Some(Err(e)) => Obs::Unknown(format!("the bucket policy is not valid JSON: {e}")),
                None => Obs::Absent,
            },
        )?;
        let ownership = read(
            "GetBucketOwnershipControls",
            &["OwnershipControlsNotFoundError"],
            block_on(client.get_bucket_ownership_controls().bucket(bucket).send()),
            |o| match o
                .ownership_controls()
                .and_then(|c| c.rules().first())
                .map(|r| r.object_ownership().as_str().to_string())
            {
                Some(v) => Obs::Set(v),
                None => Obs::Absent,
            },
        )?;
        let public_grants = read(
            "GetBucketAcl",
            &[],
            block_on(client.get_bucket_acl().bucket(bucket).send()),
            |o| {
                Obs::Set(
                    o.grants()
                        .iter()
                        .filter_map(|g| g.grantee().and_then(|g| g.uri()))
                        .filter(|uri| uri.ends_with("/AllUsers") || uri.ends_with("/AuthenticatedUsers"))
                        .map(str::to_string)
                        .collect(),
                )
            },
        )?;
        let versioning = read(
            "GetBucketVersioning",
            &[],
            block_on(client.get_bucket_versioning().bucket(bucket).send()),
            |o| match o.status() {
                Some(s) => Obs::Set((
                    s.as_str().to_string(),
                    o.mfa_delete().is_some_and(|m| m.as_str() == "Enabled"),
                )),
                None => Obs::Absent,
            },
        )?;
        let encryption = read(
            "GetBucketEncryption",
            &["ServerSideEncryptionConfigurationNotFoundError"],
            block_on(client.get_bucket_encryption().bucket(bucket).send()),
            |o| {
                let algs: Vec<String> = o
                    .server_side_encryption_configuration()
                    .map(|c| {
                        c.rules()
                            .iter()
                            .filter_map(|r| r.apply_server_side_encryption_by_default())
                            .map(|d| d.sse_algorithm().as_str().to_string())
                            .collect()
                    })
                    .unwrap_or_default();
                if algs.is_empty() {
                    Obs::Absent
                } else {
                    Obs::Set(algs)
                }
            },
        )?;
        let logging = read(
            "GetBucketLogging",
            &[],
            block_on(client.get_bucket_logging().bucket(bucket).send()),
            |o| match o.logging_enabled() {
                Some(l) => Obs::Set((l.target_bucket().to_string(), l.target_prefix().to_string())),
                None => Obs::Absent,
            },
        )?;
        let mut lifecycle_min_size = None;
        let lifecycle = read(
            "GetBucketLifecycleConfiguration",
            &["NoSuchLifecycleConfiguration"],
            block_on(client.get_bucket_lifecycle_configuration().bucket(bucket).send()),
            |o| {
                lifecycle_min_size = o.transition_default_minimum_object_size().cloned();
                Obs::Set(o.rules().to_vec())
            },
        )?;
        let object_lock = read(
            "GetObjectLockConfiguration",
            &["ObjectLockConfigurationNotFoundError"],
            block_on(client.get_object_lock_configuration().bucket(bucket).send()),
            |o| match o.object_lock_configuration() {
                Some(c) => Obs::Set((
                    c.object_lock_enabled().is_some_and(|e| e.as_str() == "Enabled"),
                    c.rule().and_then(|r| r.default_retention()).map(|d| {
                        format!(
                            "{} {} {}",
                            d.mode().map(|m| m.as_str()).unwrap_or("?"),
                            d.days().or(d.years()).unwrap_or(0),
                            if d.days().is_some() { "days" } else { "years" }
                        )
                    }),
                )),
                None => Obs::Absent,
            },
        )?;
        let kms_key = match &config.key {
            KeyConfig::Local { .. } => Obs::Absent,
            KeyConfig::Kms { key_id, endpoint, .. } => {
                let kms = crate::cloud::aws::kms_client(sdk, &config.aws, endpoint.as_deref())?;
                let enabled = read(
                    "kms:DescribeKey",
                    &[],
                    block_on(kms.describe_key().key_id(key_id).send()),
                    |o| Obs::Set(o.key_metadata().is_some_and(|m| m.enabled())),
                )?;
                let rotation = read(
                    "kms:GetKeyRotationStatus",
                    &[],
                    block_on(kms.get_key_rotation_status().key_id(key_id).send()),
                    |o| Obs::Set(o.key_rotation_enabled()),
                )?;
                match (enabled, rotation) {
                    (Obs::Set(e), Obs::Set(r)) => Obs::Set((e, r)),
                    (Obs::Unknown(why), _) | (_, Obs::Unknown(why)) => Obs::Unknown(why),
                    _ => Obs::Unknown("the key's state could not be read".into()),
                }
            }
        };
        let account_public_access_block = account_pab(sdk, &config.aws, s3.endpoint.as_deref())?;
        Ok(BucketState {
            bucket: bucket.to_string(),
            public_access_block,
            policy,
            ownership,
            public_grants,
            versioning,
            encryption,
            logging,
            lifecycle,
            lifecycle_min_size,
            object_lock,
            kms_key,
            account_public_access_block,
        })
    }
}

/// Account-level Block Public Access (needs the account id from STS). With
/// a custom S3 endpoint, STS and S3 Control are asked at that endpoint too
/// (S3-compatible servers usually have neither: the check is then unknown).
fn account_pab(
    sdk: &aws_config::SdkConfig,
    aws: &vaultline_config::Aws,
    endpoint: Option<&str>,
) -> Result<Obs<PublicAccessBlock>> {
    let control = crate::cloud::aws::s3control_client(sdk, aws, endpoint)?;
    let sts = crate::cloud::aws::sts_client(sdk, aws, endpoint)?;
    let account = match block_on(sts.get_caller_identity().send())? {
        Ok(o) => match o.account() {
            Some(a) => a.to_string(),
            None => return Ok(Obs::Unknown("STS did not name the account".into())),
        },
        Err(e) => {
            return Ok(Obs::Unknown(format!(
                "sts:GetCallerIdentity failed: {}",
                describe(&e)
            )));
        }
    };
    read(
        "s3:GetAccountPublicAccessBlock",
        &["NoSuchPublicAccessBlockConfiguration"],
        block_on(control.get_public_access_block().account_id(&account).send()),
        |o| pab_from!(o.public_access_block_configuration()),
    )
}

const GLACIER_CLASSES: &[&str] = &["GLACIER", "DEEP_ARCHIVE", "GLACIER_IR"];

/// Whether `rule` applies to tier-tagged archives under `prefix` and to
/// nothing untagged (a rule moving everything would freeze manifests too).
fn rule_targets_tagged(rule: &LifecycleRule, s3: &S3Repository) -> Option<bool> {
    let tag_matches =
        |t: &aws_sdk_s3::types::Tag| t.key() == s3.tier_tag.key && t.value() == s3.tier_tag.value;
    let prefix_ok = |p: Option<&str>| p.is_none_or(|p| s3.prefix.starts_with(p) || p.is_empty());
    let filter = rule.filter()?;
    if let Some(tag) = filter.tag() {
        return Some(tag_matches(tag));
    }
    if let Some(and) = filter.and() {
        // Every tag of an And filter must match, so the rule's only tag
        // must be the tier tag.
        return Some(!and.tags().is_empty() && and.tags().iter().all(tag_matches) && prefix_ok(and.prefix()));
    }
    // A prefix-only or empty filter moves untagged objects too.
    Some(false)
}

fn enabled(rule: &LifecycleRule) -> bool {
    rule.status().as_str() == "Enabled"
}

/// Whether a rule applies to every object of the repository (no filter, or
/// only a prefix that the repository's prefix starts with).
fn rule_covers_repository(rule: &LifecycleRule, s3: &S3Repository) -> bool {
    match rule.filter() {
        None => true,
        Some(f) => {
            f.tag().is_none()
                && f.and().is_none()
                && f.object_size_greater_than().is_none()
                && f.object_size_less_than().is_none()
                && f.prefix().is_none_or(|p| s3.prefix.starts_with(p))
        }
    }
}

/// Whether a rule that transitions every object covers the repository.
fn rule_freezes_everything(rule: &LifecycleRule, s3: &S3Repository) -> bool {
    let Some(filter) = rule.filter() else {
        return enabled(rule) && !rule.transitions().is_empty();
    };
    enabled(rule)
        && filter.tag().is_none()
        && filter.and().is_none()
        && filter.prefix().is_none_or(|p| s3.prefix.starts_with(p))
        && rule.transitions().iter().any(|t| {
            t.storage_class()
                .is_some_and(|c| GLACIER_CLASSES.contains(&c.as_str()))
        })
}

/// The repository's objects as a key prefix (`vaultline/`; empty when the
/// repository is the whole bucket).
fn repository_keys(s3: &S3Repository) -> String {
    if s3.prefix.is_empty() {
        String::new()
    } else {
        format!("{}/", s3.prefix)
    }
}

/// Which of the repository's objects `rule` applies to, in words ("under
/// prefix vaultline/", "on every object", "on objects tagged
/// vaultline-tier=archive"); `None` when it applies to none of them.
///
/// A prefix reaches the repository when either it or the repository's
/// prefix starts with the other. Archives carry exactly one tag, the tier
/// tag, and manifests none, so a tag filter reaches the archives only when
/// every tag it asks for is the tier tag. Size filters still select some
/// archives, so they narrow the words, never the verdict.
fn reach(rule: &LifecycleRule, s3: &S3Repository) -> Option<String> {
    // Rules written with the original API have a top-level Prefix and no
    // Filter; S3 still returns them that way.
    #[allow(deprecated)]
    let legacy = rule.prefix();
    let (prefix, tags, larger, smaller) = match rule.filter() {
        None => (legacy, Vec::new(), None, None),
        Some(f) => match f.and() {
            Some(a) => (
                a.prefix(),
                a.tags().iter().collect(),
                a.object_size_greater_than(),
                a.object_size_less_than(),
            ),
            None => (
                f.prefix(),
                f.tag().into_iter().collect::<Vec<_>>(),
                f.object_size_greater_than(),
                f.object_size_less_than(),
            ),
        },
    };
    let keys = repository_keys(s3);
    let prefix = prefix.filter(|p| !p.is_empty());
    if prefix.is_some_and(|p| !keys.starts_with(p) && !p.starts_with(&keys))
        || !tags
            .iter()
            .all(|t| t.key() == s3.tier_tag.key && t.value() == s3.tier_tag.value)
    {
        return None;
    }
    let mut objects = match (tags.is_empty(), prefix) {
        (false, _) => format!("on objects tagged {}={}", s3.tier_tag.key, s3.tier_tag.value),
        (true, None) => "on every object".to_string(),
        (true, Some(_)) => String::new(),
    };
    for (bound, words) in [(larger, "larger"), (smaller, "smaller")] {
        if let Some(n) = bound {
            if objects.is_empty() {
                objects.push_str("on objects");
            }
            objects.push_str(&format!(" {words} than {n} bytes"));
        }
    }
    Some(match prefix {
        Some(p) if objects.is_empty() => format!("under prefix {p}"),
        Some(p) => format!("under prefix {p} {objects}"),
        None => objects,
    })
}

/// The `lifecycle-no-early-expiry` verdict on `rules`: no enabled rule that
/// reaches the repository may expire current versions (S3 would put a delete
/// marker on live backups, and `snapshots` would no longer see them), nor
/// expire noncurrent versions sooner than the configuration keeps history
/// ([`Config::retention_floor`]). Transitions, aborting incomplete uploads
/// and removing expired delete markers delete nothing vaultline needs.
fn early_expiry(
    rules: &[LifecycleRule],
    s3: &S3Repository,
    config: &Config,
    b: &str,
) -> (Status, String, String) {
    let keys = repository_keys(s3);
    let (under, leave) = if keys.is_empty() {
        (
            "in the bucket".to_string(),
            "the repository's objects".to_string(),
        )
    } else {
        (format!("under {keys}"), keys.clone())
    };
    let floor = config.retention_floor();
    let mut problems = Vec::new();
    let mut fixes = Vec::new();
    let mut kept = Vec::new();
    for rule in rules.iter().filter(|r| enabled(r)) {
        let Some(scope) = reach(rule, s3) else {
            continue;
        };
        let id = rule.id().unwrap_or("(without an ID)");
        if let Some(exp) = rule.expiration() {
            let when = match (exp.days(), exp.date()) {
                (Some(days), _) => Some(format!("after {days} days")),
                (None, Some(date)) => Some(format!(
                    "on {}",
                    date.fmt(aws_smithy_types::date_time::Format::DateTime)
                        .ok()
                        .and_then(|d| d.split('T').next().map(str::to_string))
                        .unwrap_or_else(|| date.secs().to_string())
                )),
                // ExpiredObjectDeleteMarker alone: S3 removes a delete
                // marker only once no version is left behind it.
                (None, None) => None,
            };
            if let Some(when) = when {
                problems.push(format!(
                    "rule {id} expires current versions {when} {scope}: S3 would delete live backups"
                ));
                fixes.push(format!(
                    "rule {id}: remove its Expiration, or narrow its filter so that it leaves {leave} alone \
                     (vaultline forget deletes what the retention policy lets go)"
                ));
            }
        }
        if let Some(nve) = rule.noncurrent_version_expiration() {
            // Missing days would mean "at once": judged as 0.
            let days = nve.noncurrent_days().unwrap_or(0).max(0) as u32;
            // Only postpones: a version must also have this many newer
            // noncurrent versions, and vaultline writes each object once.
            let newer = match nve.newer_noncurrent_versions() {
                Some(n) if n > 0 => format!(" (once {n} newer noncurrent versions of the same object exist)"),
                _ => String::new(),
            };
            match &floor {
                Some(f) if days < f.days => {
                    problems.push(format!(
                        "rule {id} expires noncurrent versions {days} days after they become noncurrent \
                         {scope}{newer}, sooner than the {} days {}: a deleted backup would be gone for good \
                         before the configuration lets it go",
                        f.days, f.why
                    ));
                    fixes.push(format!(
                        "rule {id}: raise NoncurrentDays to at least {}, or remove its \
                         NoncurrentVersionExpiration",
                        f.days
                    ));
                }
                Some(f) => kept.push(format!(
                    "rule {id} expires noncurrent versions after {days} days{newer}, no sooner than the {} days {}",
                    f.days, f.why
                )),
                None => kept.push(format!(
                    "rule {id} expires noncurrent versions after {days} days{newer} (no job sets a minimum: \
                     keep-last counts snapshots, not days)"
                )),
            }
        }
    }
    if problems.is_empty() {
        let noncurrent = if kept.is_empty() {
            "no rule expires noncurrent versions".to_string()
        } else {
            kept.join("; ")
        };
        (
            Status::Pass,
            format!("no enabled rule expires current versions {under}; {noncurrent}"),
            String::new(),
        )
    } else {
        (
            Status::Fail,
            problems.join("; "),
            format!(
                "{} — edit the rules: aws s3api get-bucket-lifecycle-configuration --bucket {b} > rules.json, \
                 change them, aws s3api put-bucket-lifecycle-configuration --bucket {b} --lifecycle-configuration \
                 file://rules.json",
                fixes.join("; ")
            ),
        )
    }
}

/// Judges `state` under the configuration.
pub fn evaluate(state: &BucketState, config: &Config) -> Report {
    let Repository::S3(s3) = &config.repository else {
        return Report {
            bucket: String::new(),
            checks: Vec::new(),
            passed: true,
        };
    };
    let b = &state.bucket;
    let unknown = |why: &String| (Status::Unknown, why.clone(), String::new());
    let mut checks = Vec::new();
    for info in CHECKS {
        let (status, finding, fix) = match info.id {
            "public-access-block" => match &state.public_access_block {
                Obs::Set(p) if p.all() => (Status::Pass, "all four settings on".into(), String::new()),
                Obs::Set(p) => (Status::Fail, format!("off: {}", p.off().join(", ")), pab_fix(b)),
                Obs::Absent => (Status::Fail, "no Block Public Access configuration".into(), pab_fix(b)),
                Obs::Unknown(w) => unknown(w),
            },
            "no-public-policy" => match &state.policy {
                Obs::Set(p) => {
                    let public = policy_doc::public_statements(p);
                    if public.is_empty() {
                        (Status::Pass, "no statement grants access to everyone".into(), String::new())
                    } else {
                        (
                            Status::Fail,
                            format!("public: {} allow(s) access to everyone", public.join(", ")),
                            format!(
                                "remove or restrict those statements (aws s3api get-bucket-policy --bucket {b}, \
                                 edit, put-bucket-policy); Block Public Access also neutralizes them"
                            ),
                        )
                    }
                }
                Obs::Absent => (Status::Pass, "no bucket policy".into(), String::new()),
                Obs::Unknown(w) => unknown(w),
            },
            "acls-disabled" => {
                let grants = match &state.public_grants {
                    Obs::Set(g) => Ok(g.clone()),
                    Obs::Absent => Ok(Vec::new()),
                    Obs::Unknown(w) => Err(w.clone()),
                };
                match (&state.ownership, grants) {
                    (_, Err(w)) => unknown(&w),
                    (Obs::Unknown(w), _) => unknown(w),
                    (own, Ok(grants)) => {
                        let own = match own {
                            Obs::Set(o) => o.clone(),
                            _ => "not set (ObjectWriter)".into(),
                        };
                        let mut problems = Vec::new();
                        if own != "BucketOwnerEnforced" {
                            problems.push(format!("object ownership is {own}"));
                        }
                        if !grants.is_empty() {
                            problems.push(format!("public ACL grants to {}", grants.join(", ")));
                        }
                        if problems.is_empty() {
                            (Status::Pass, "ACLs disabled (BucketOwnerEnforced)".into(), String::new())
                        } else {
                            (
                                Status::Fail,
                                problems.join("; "),
                                format!(
                                    "aws s3api put-bucket-acl --bucket {b} --acl private && aws s3api \
                                     put-bucket-ownership-controls --bucket {b} --ownership-controls \
                                     'Rules=[{{ObjectOwnership=BucketOwnerEnforced}}]'"
                                ),
                            )
                        }
                    }
                }
            }
            "versioning" => {
                let fix =
                    format!("aws s3api put-bucket-versioning --bucket {b} --versioning-configuration Status=Enabled");
                match &state.versioning {
                    Obs::Set((s, mfa)) if s == "Enabled" => (
                        Status::Pass,
                        format!("Enabled; MFA delete {}", if *mfa { "on" } else { "off" }),
                        String::new(),
                    ),
                    Obs::Set((s, _)) => (Status::Fail, format!("versioning is {s}"), fix),
                    Obs::Absent => (Status::Fail, "versioning was never enabled".into(), fix),
                    Obs::Unknown(w) => unknown(w),
                }
            }
            "default-encryption" => match &state.encryption {
                Obs::Set(algs) if algs.iter().any(|a| a.starts_with("aws:kms")) => {
                    (Status::Pass, format!("SSE-KMS ({})", algs.join(", ")), String::new())
                }
                Obs::Set(algs) => (
                    Status::Pass,
                    format!("{} (SSE-S3); SSE-KMS with its own key is preferred", algs.join(", ")),
                    String::new(),
                ),
                Obs::Absent => (
                    Status::Fail,
                    "no default encryption".into(),
                    format!(
                        "aws s3api put-bucket-encryption --bucket {b} --server-side-encryption-configuration \
                         '{{\"Rules\":[{{\"ApplyServerSideEncryptionByDefault\":{{\"SSEAlgorithm\":\"aws:kms\"}},\
                         \"BucketKeyEnabled\":true}}]}}'"
                    ),
                ),
                Obs::Unknown(w) => unknown(w),
            },
            "tls-only" => {
                let fix = format!(
                    "add to the bucket policy: {} (vaultline harden --apply merges it)",
                    policy_doc::tls_only_statement(b)
                );
                match &state.policy {
                    Obs::Set(p) if policy_doc::denies_insecure_transport(p, b) => (
                        Status::Pass,
                        "the policy denies every request without TLS".into(),
                        String::new(),
                    ),
                    Obs::Set(_) => (
                        Status::Fail,
                        "the bucket policy does not deny requests without TLS on the bucket and all objects".into(),
                        fix,
                    ),
                    Obs::Absent => (Status::Fail, "no bucket policy, so plain-http requests are allowed".into(), fix),
                    Obs::Unknown(w) => unknown(w),
                }
            }
            "access-logging" => {
                let fix = format!(
                    "aws s3api put-bucket-logging --bucket {b} --bucket-logging-status \
                     '{{\"LoggingEnabled\":{{\"TargetBucket\":\"LOG-BUCKET\",\"TargetPrefix\":\"{b}/\"}}}}' \
                     (or set hardening.access-log-bucket and run vaultline harden --apply)"
                );
                match &state.logging {
                    Obs::Set((target, _)) if target != b => {
                        (Status::Pass, format!("logging to bucket {target}"), String::new())
                    }
                    Obs::Set(_) => (Status::Fail, "logs go to the bucket itself".into(), fix),
                    Obs::Absent => (Status::Fail, "server access logging is off".into(), fix),
                    Obs::Unknown(w) => unknown(w),
                }
            }
            "lifecycle-archive" => {
                let fix = "vaultline harden --apply (adds a rule moving tagged archives to the configured \
                           Glacier class), or add such a rule by hand"
                    .to_string();
                match &state.lifecycle {
                    Obs::Set(rules) => {
                        if let Some(r) = rules.iter().find(|r| rule_freezes_everything(r, s3)) {
                            (
                                Status::Fail,
                                format!(
                                    "rule {:?} moves every object to Glacier, manifests included",
                                    r.id().unwrap_or("?")
                                ),
                                "filter that rule on the tier tag".into(),
                            )
                        } else if let Some(r) = rules.iter().find(|r| {
                            enabled(r)
                                && rule_targets_tagged(r, s3) == Some(true)
                                && r.transitions()
                                    .iter()
                                    .any(|t| t.storage_class().is_some_and(|c| GLACIER_CLASSES.contains(&c.as_str())))
                        }) {
                            (
                                Status::Pass,
                                format!("rule {:?} moves tagged archives to Glacier", r.id().unwrap_or("?")),
                                String::new(),
                            )
                        } else {
                            (
                                Status::Fail,
                                format!("no enabled rule moves objects tagged {}={}", s3.tier_tag.key, s3.tier_tag.value),
                                fix,
                            )
                        }
                    }
                    Obs::Absent => (Status::Fail, "no lifecycle configuration".into(), fix),
                    Obs::Unknown(w) => unknown(w),
                }
            }
            "lifecycle-abort-mpu" => {
                let fix = "vaultline harden --apply (adds a rule aborting incomplete uploads)".to_string();
                match &state.lifecycle {
                    Obs::Set(rules) => match rules.iter().find(|r| {
                        enabled(r)
                            && rule_covers_repository(r, s3)
                            && r.abort_incomplete_multipart_upload()
                                .and_then(|a| a.days_after_initiation())
                                .is_some()
                    }) {
                        Some(r) => (
                            Status::Pass,
                            format!(
                                "rule {:?} aborts incomplete uploads after {} days",
                                r.id().unwrap_or("?"),
                                r.abort_incomplete_multipart_upload()
                                    .and_then(|a| a.days_after_initiation())
                                    .unwrap_or(0)
                            ),
                            String::new(),
                        ),
                        None => (Status::Fail, "no rule aborts incomplete multipart uploads".into(), fix),
                    },
                    Obs::Absent => (Status::Fail, "no lifecycle configuration".into(), fix),
                    Obs::Unknown(w) => unknown(w),
                }
            }
            "lifecycle-no-early-expiry" => match &state.lifecycle {
                Obs::Set(rules) => early_expiry(rules, s3, config, b),
                Obs::Absent => (
                    Status::Pass,
                    "no lifecycle configuration: nothing expires".into(),
                    String::new(),
                ),
                Obs::Unknown(w) => unknown(w),
            },
            "object-lock" => match &state.object_lock {
                Obs::Set((true, Some(ret))) => (Status::Pass, format!("enabled, default {ret}"), String::new()),
                Obs::Set((true, None)) => (
                    Status::Fail,
                    "enabled without a default retention".into(),
                    format!(
                        "aws s3api put-object-lock-configuration --bucket {b} --object-lock-configuration \
                         '{{\"ObjectLockEnabled\":\"Enabled\",\"Rule\":{{\"DefaultRetention\":{{\"Mode\":\"GOVERNANCE\",\"Days\":30}}}}}}'"
                    ),
                ),
                Obs::Set((false, _)) | Obs::Absent => (
                    Status::Fail,
                    "object lock is not enabled".into(),
                    "enable object lock (irreversible; see docs/hardening.md) with a default retention".into(),
                ),
                Obs::Unknown(w) => unknown(w),
            },
            "kms-key" => match &state.kms_key {
                Obs::Set((true, true)) => (Status::Pass, "enabled, automatic rotation on".into(), String::new()),
                Obs::Set((enabled, rotation)) => {
                    let key = match &config.key {
                        KeyConfig::Kms { key_id, .. } => key_id.as_str(),
                        KeyConfig::Local { .. } => "",
                    };
                    let mut problems = Vec::new();
                    let mut fixes = Vec::new();
                    if !enabled {
                        problems.push("the key is disabled");
                        fixes.push(format!("aws kms enable-key --key-id {key}"));
                    }
                    if !rotation {
                        problems.push("automatic rotation is off");
                        fixes.push(format!("aws kms enable-key-rotation --key-id {key}"));
                    }
                    (Status::Fail, problems.join("; "), fixes.join(" && "))
                }
                Obs::Absent => (Status::NotApplicable, "local key provider".into(), String::new()),
                Obs::Unknown(w) => unknown(w),
            },
            "account-public-access-block" => match &state.account_public_access_block {
                Obs::Set(p) if p.all() => (Status::Pass, "all four settings on".into(), String::new()),
                Obs::Set(p) => (
                    Status::Fail,
                    format!("off: {}", p.off().join(", ")),
                    "aws s3control put-public-access-block --account-id ACCOUNT --public-access-block-configuration \
                     BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true"
                        .into(),
                ),
                Obs::Absent => (
                    Status::Fail,
                    "no account-level Block Public Access configuration".into(),
                    "aws s3control put-public-access-block --account-id ACCOUNT --public-access-block-configuration \
                     BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true"
                        .into(),
                ),
                Obs::Unknown(w) => unknown(w),
            },
            _ => continue,
        };
        let policy = match config.hardening.policy(info.id) {
            Some(CheckPolicy::Abort) => "abort",
            _ => "warn",
        };
        checks.push(Finding {
            id: info.id,
            title: info.title,
            status,
            severity: info.severity,
            policy,
            finding,
            fix,
            config_rule: info.config_rule,
            control: info.control,
        });
    }
    let passed = !checks.iter().any(|f| f.blocks(&config.hardening));
    Report {
        bucket: state.bucket.clone(),
        checks,
        passed,
    }
}

fn pab_fix(b: &str) -> String {
    format!(
        "aws s3api put-public-access-block --bucket {b} --public-access-block-configuration \
         BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true"
    )
}

impl Report {
    /// The report as text: one block per check, failing ones first.
    pub fn render(&self, hardening: &Hardening) -> String {
        let mut out = format!("bucket {}:\n", self.bucket);
        let mut rows: Vec<&Finding> = self.checks.iter().collect();
        rows.sort_by_key(|f| match f.status {
            Status::Fail | Status::Unknown if f.blocks(hardening) => 0,
            Status::Fail | Status::Unknown => 1,
            Status::Pass => 2,
            Status::NotApplicable => 3,
        });
        for f in rows {
            let status = match f.status {
                Status::Pass => "PASS",
                Status::Fail => "FAIL",
                Status::Unknown => "UNKNOWN",
                Status::NotApplicable => "N/A",
            };
            out.push_str(&format!(
                "{status:<8}{:<28}{:<9}[{}] {} | {}\n",
                f.id, f.severity, f.policy, f.control, f.config_rule
            ));
            out.push_str(&format!("        check: {}\n", f.title));
            out.push_str(&format!("        found: {}\n", f.finding));
            if !f.fix.is_empty() {
                out.push_str(&format!("        fix:   {}\n", f.fix));
            }
        }
        out
    }

    /// The findings that refuse a run.
    pub fn blocking<'a>(&'a self, hardening: &'a Hardening) -> impl Iterator<Item = &'a Finding> + 'a {
        self.checks.iter().filter(move |f| f.blocks(hardening))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use aws_sdk_s3::types::{
        AbortIncompleteMultipartUpload, ExpirationStatus, LifecycleExpiration, LifecycleRuleAndOperator,
        LifecycleRuleFilter, NoncurrentVersionExpiration, Tag, Transition, TransitionStorageClass,
    };
    use vaultline_config::Environment;

    use super::*;

    const CHECK: &str = "lifecycle-no-early-expiry";

    /// An S3 configuration (prefix `vaultline`, tier tag
    /// `vaultline-tier=archive`) with `jobs` and further settings.
    fn config(rest: &str) -> Config {
        let text = format!(
            "[agent]\nhost = \"web1\"\nstate-dir = \"/var/lib/vaultline\"\n\n\
             [repository]\ntype = \"s3\"\nbucket = \"acme-backups\"\n\n{rest}"
        );
        Config::parse(&text, Path::new("config.toml"), &Environment::default())
            .expect("a valid configuration")
    }

    fn job(name: &str, settings: &str) -> String {
        format!("[[jobs]]\nname = \"{name}\"\npaths = [\"/etc\"]\n{settings}\n")
    }

    /// A job that keeps snapshots for 14 days.
    fn daily14() -> Config {
        config(&job("etc", "[jobs.retention]\nkeep-daily = 14"))
    }

    /// A bucket that passes every check, with these lifecycle rules.
    fn state(lifecycle: Obs<Vec<LifecycleRule>>) -> BucketState {
        let all = PublicAccessBlock {
            block_public_acls: true,
            ignore_public_acls: true,
            block_public_policy: true,
            restrict_public_buckets: true,
        };
        BucketState {
            bucket: "acme-backups".into(),
            public_access_block: Obs::Set(all),
            policy: Obs::Set(serde_json::json!({"Version": "2012-10-17", "Statement": [
                policy_doc::tls_only_statement("acme-backups")]})),
            ownership: Obs::Set("BucketOwnerEnforced".into()),
            public_grants: Obs::Set(Vec::new()),
            versioning: Obs::Set(("Enabled".into(), false)),
            encryption: Obs::Set(vec!["aws:kms".into()]),
            logging: Obs::Set(("acme-logs".into(), "acme-backups/".into())),
            lifecycle,
            lifecycle_min_size: None,
            object_lock: Obs::Set((true, Some("GOVERNANCE 30 days".into()))),
            kms_key: Obs::Absent,
            account_public_access_block: Obs::Set(all),
        }
    }

    fn rule(id: &str) -> aws_sdk_s3::types::builders::LifecycleRuleBuilder {
        LifecycleRule::builder().id(id).status(ExpirationStatus::Enabled)
    }

    fn prefix(p: &str) -> LifecycleRuleFilter {
        LifecycleRuleFilter::builder().prefix(p).build()
    }

    fn tag(key: &str, value: &str) -> Tag {
        Tag::builder().key(key).value(value).build().expect("tag")
    }

    fn expire_after(days: i32) -> LifecycleExpiration {
        LifecycleExpiration::builder().days(days).build()
    }

    fn noncurrent_after(days: i32) -> NoncurrentVersionExpiration {
        NoncurrentVersionExpiration::builder()
            .noncurrent_days(days)
            .build()
    }

    fn judged(config: &Config, rules: Vec<LifecycleRule>) -> Finding {
        let report = evaluate(&state(Obs::Set(rules)), config);
        report
            .checks
            .into_iter()
            .find(|f| f.id == CHECK)
            .expect("the check is evaluated")
    }

    #[track_caller]
    fn fails(config: &Config, rules: Vec<LifecycleRule>, finding: &str) -> Finding {
        let f = judged(config, rules);
        assert_eq!((f.status, f.finding.as_str()), (Status::Fail, finding));
        f
    }

    #[track_caller]
    fn passes(config: &Config, rules: Vec<LifecycleRule>, finding: &str) {
        let f = judged(config, rules);
        assert_eq!((f.status, f.finding.as_str()), (Status::Pass, finding));
        assert_eq!(f.fix, "");
    }

    const EDIT: &str = " — edit the rules: aws s3api get-bucket-lifecycle-configuration --bucket acme-backups > \
                        rules.json, change them, aws s3api put-bucket-lifecycle-configuration --bucket acme-backups \
                        --lifecycle-configuration file://rules.json";

    #[test]
    fn the_check_is_required_high_and_has_no_managed_rule() {
        let f = judged(&daily14(), Vec::new());
        assert_eq!(
            (f.severity, f.policy, f.config_rule, f.control),
            ("high", "abort", "-", "-")
        );
        assert_eq!(
            f.title,
            "no enabled lifecycle rule deletes backups before vaultline lets them go"
        );
    }

    #[test]
    fn expiring_current_versions_fails_whatever_covers_the_prefix() {
        let c = daily14();
        let expire = |id: &str, filter: Option<LifecycleRuleFilter>| {
            rule(id)
                .set_filter(filter)
                .expiration(expire_after(30))
                .build()
                .expect("rule")
        };
        let f = fails(
            &c,
            vec![expire("expire-old", Some(prefix("vaultline/")))],
            "rule expire-old expires current versions after 30 days under prefix vaultline/: S3 would delete \
             live backups",
        );
        assert_eq!(
            f.fix,
            format!(
                "rule expire-old: remove its Expiration, or narrow its filter so that it leaves vaultline/ alone \
                 (vaultline forget deletes what the retention policy lets go){EDIT}"
            )
        );
        // No filter, an empty filter and an empty prefix cover every object.
        for filter in [
            None,
            Some(LifecycleRuleFilter::builder().build()),
            Some(prefix("")),
        ] {
            fails(
                &c,
                vec![expire("all", filter)],
                "rule all expires current versions after 30 days on every object: S3 would delete live backups",
            );
        }
        // A prefix of the repository's prefix, and a prefix inside it.
        fails(
            &c,
            vec![expire("vault", Some(prefix("vault")))],
            "rule vault expires current versions after 30 days under prefix vault: S3 would delete live backups",
        );
        fails(
            &c,
            vec![expire("host", Some(prefix("vaultline/web2/")))],
            "rule host expires current versions after 30 days under prefix vaultline/web2/: S3 would delete \
             live backups",
        );
        // The archives carry the tier tag.
        fails(
            &c,
            vec![expire(
                "tagged",
                Some(
                    LifecycleRuleFilter::builder()
                        .tag(tag("vaultline-tier", "archive"))
                        .build(),
                ),
            )],
            "rule tagged expires current versions after 30 days on objects tagged vaultline-tier=archive: S3 \
             would delete live backups",
        );
        let and = |p: &str, tags: &[Tag]| {
            let mut a = LifecycleRuleAndOperator::builder().prefix(p);
            for t in tags {
                a = a.tags(t.clone());
            }
            Some(LifecycleRuleFilter::builder().and(a.build()).build())
        };
        fails(
            &c,
            vec![expire(
                "and",
                and("vaultline/", &[tag("vaultline-tier", "archive")]),
            )],
            "rule and expires current versions after 30 days under prefix vaultline/ on objects tagged \
             vaultline-tier=archive: S3 would delete live backups",
        );
        // A size filter still selects some archives.
        fails(
            &c,
            vec![expire(
                "big",
                Some(
                    LifecycleRuleFilter::builder()
                        .object_size_greater_than(1 << 20)
                        .build(),
                ),
            )],
            "rule big expires current versions after 30 days on every object larger than 1048576 bytes: S3 \
             would delete live backups",
        );
        // An expiration date, in the past or the future, is the same threat.
        fails(
            &c,
            vec![
                rule("cutoff")
                    .filter(prefix("vaultline/"))
                    .expiration(
                        LifecycleExpiration::builder()
                            .date(aws_smithy_types::DateTime::from_secs(1_893_456_000))
                            .build(),
                    )
                    .build()
                    .expect("rule"),
            ],
            "rule cutoff expires current versions on 2030-01-01 under prefix vaultline/: S3 would delete live \
             backups",
        );
        // Rules written with the legacy top-level Prefix instead of a Filter.
        #[allow(deprecated)]
        let legacy = rule("legacy")
            .prefix("vaultline/")
            .expiration(expire_after(7))
            .build()
            .expect("rule");
        fails(
            &c,
            vec![legacy],
            "rule legacy expires current versions after 7 days under prefix vaultline/: S3 would delete live \
             backups",
        );
    }

    #[test]
    fn rules_that_do_not_reach_the_repository_pass() {
        let c = daily14();
        let expire = |id: &str, filter: LifecycleRuleFilter| {
            rule(id)
                .filter(filter)
                .expiration(expire_after(1))
                .build()
                .expect("rule")
        };
        let and = |p: &str, t: Tag| {
            LifecycleRuleFilter::builder()
                .and(LifecycleRuleAndOperator::builder().prefix(p).tags(t).build())
                .build()
        };
        let ok =
            "no enabled rule expires current versions under vaultline/; no rule expires noncurrent versions";
        passes(&c, vec![expire("logs", prefix("logs/"))], ok);
        // Shares the first letters, not the folder.
        passes(&c, vec![expire("sibling", prefix("vaultline-old/"))], ok);
        passes(
            &c,
            vec![expire(
                "other-tag",
                LifecycleRuleFilter::builder().tag(tag("team", "web")).build(),
            )],
            ok,
        );
        passes(
            &c,
            vec![expire(
                "other-value",
                LifecycleRuleFilter::builder()
                    .tag(tag("vaultline-tier", "hot"))
                    .build(),
            )],
            ok,
        );
        // Every tag of an And filter must match; archives carry only the tier tag.
        passes(
            &c,
            vec![expire("and-other-tag", and("vaultline/", tag("team", "web")))],
            ok,
        );
        passes(
            &c,
            vec![expire(
                "and-elsewhere",
                and("logs/", tag("vaultline-tier", "archive")),
            )],
            ok,
        );
        // A disabled rule does nothing (until someone enables it: audit runs before every backup).
        passes(
            &c,
            vec![
                rule("paused")
                    .status(ExpirationStatus::Disabled)
                    .filter(prefix(""))
                    .expiration(expire_after(1))
                    .noncurrent_version_expiration(noncurrent_after(1))
                    .build()
                    .expect("rule"),
            ],
            ok,
        );
    }

    #[test]
    fn transitions_aborted_uploads_and_expired_delete_markers_pass() {
        let c = daily14();
        let rules = vec![
            rule("archive")
                .filter(
                    LifecycleRuleFilter::builder()
                        .tag(tag("vaultline-tier", "archive"))
                        .build(),
                )
                .transitions(
                    Transition::builder()
                        .days(30)
                        .storage_class(TransitionStorageClass::DeepArchive)
                        .build(),
                )
                .build()
                .expect("rule"),
            rule("abort")
                .filter(prefix(""))
                .abort_incomplete_multipart_upload(
                    AbortIncompleteMultipartUpload::builder()
                        .days_after_initiation(1)
                        .build(),
                )
                .build()
                .expect("rule"),
            // Removes only delete markers with no version left behind them.
            rule("markers")
                .filter(prefix(""))
                .expiration(
                    LifecycleExpiration::builder()
                        .expired_object_delete_marker(true)
                        .build(),
                )
                .build()
                .expect("rule"),
        ];
        passes(
            &c,
            rules,
            "no enabled rule expires current versions under vaultline/; no rule expires noncurrent versions",
        );
        passes(
            &c,
            Vec::new(),
            "no enabled rule expires current versions under vaultline/; no rule expires noncurrent versions",
        );
        let f = judged(&c, Vec::new());
        assert_eq!(f.status, Status::Pass);
        let none = evaluate(&state(Obs::Absent), &c);
        let f = none.checks.iter().find(|f| f.id == CHECK).expect("check");
        assert_eq!(
            (f.status, f.finding.as_str()),
            (Status::Pass, "no lifecycle configuration: nothing expires")
        );
        let unknown = evaluate(&state(Obs::Unknown("not allowed to read".into())), &c);
        let f = unknown.checks.iter().find(|f| f.id == CHECK).expect("check");
        assert_eq!(
            (f.status, f.finding.as_str()),
            (Status::Unknown, "not allowed to read")
        );
        assert!(!unknown.passed, "unknown refuses unless accepted");
    }

    #[test]
    fn noncurrent_versions_must_outlive_the_longest_retention() {
        let tidy = |days: i32| {
            vec![
                rule("tidy")
                    .filter(prefix("vaultline/"))
                    .noncurrent_version_expiration(noncurrent_after(days))
                    .build()
                    .expect("rule"),
            ]
        };
        let tail = ": a deleted backup would be gone for good before the configuration lets it go";
        let c = daily14();
        let f = fails(
            &c,
            tidy(13),
            &format!(
                "rule tidy expires noncurrent versions 13 days after they become noncurrent under prefix \
                 vaultline/, sooner than the 14 days job etc keeps snapshots (keep-daily = 14){tail}"
            ),
        );
        assert_eq!(
            f.fix,
            format!(
                "rule tidy: raise NoncurrentDays to at least 14, or remove its NoncurrentVersionExpiration{EDIT}"
            )
        );
        passes(
            &c,
            tidy(14),
            "no enabled rule expires current versions under vaultline/; rule tidy expires noncurrent versions \
             after 14 days, no sooner than the 14 days job etc keeps snapshots (keep-daily = 14)",
        );

        // Each keep-* rule as days; the longest job wins.
        for (retention, days, why) in [
            (
                "keep-hourly = 48",
                2,
                "job etc keeps snapshots (keep-hourly = 48)",
            ),
            (
                "keep-hourly = 49",
                3,
                "job etc keeps snapshots (keep-hourly = 49)",
            ),
            ("keep-weekly = 4", 28, "job etc keeps snapshots (keep-weekly = 4)"),
            (
                "keep-monthly = 12",
                372,
                "job etc keeps snapshots (keep-monthly = 12)",
            ),
            (
                "keep-yearly = 2",
                732,
                "job etc keeps snapshots (keep-yearly = 2)",
            ),
            (
                "keep-last = 7\nkeep-daily = 7\nkeep-weekly = 8\nkeep-monthly = 3",
                93,
                "job etc keeps snapshots (keep-monthly = 3)",
            ),
        ] {
            let c = config(&job("etc", &format!("[jobs.retention]\n{retention}")));
            fails(
                &c,
                tidy(days - 1),
                &format!(
                    "rule tidy expires noncurrent versions {} days after they become noncurrent under prefix \
                     vaultline/, sooner than the {days} days {why}{tail}",
                    days - 1
                ),
            );
            assert_eq!(judged(&c, tidy(days)).status, Status::Pass, "{retention}");
        }

        // Object Lock days count, and the longest of all jobs wins.
        let c = config(&format!(
            "{}{}",
            job(
                "etc",
                "[jobs.retention]\nkeep-daily = 7\n[jobs.object-lock]\nmode = \"GOVERNANCE\"\ndays = 35"
            ),
            job("db", "[jobs.retention]\nkeep-weekly = 6")
        ));
        fails(
            &c,
            tidy(41),
            &format!(
                "rule tidy expires noncurrent versions 41 days after they become noncurrent under prefix \
                 vaultline/, sooner than the 42 days job db keeps snapshots (keep-weekly = 6){tail}"
            ),
        );
        let c = config(&job(
            "etc",
            "[jobs.retention]\nkeep-last = 3\n[jobs.object-lock]\nmode = \"COMPLIANCE\"\ndays = 35",
        ));
        fails(
            &c,
            tidy(34),
            &format!(
                "rule tidy expires noncurrent versions 34 days after they become noncurrent under prefix \
                 vaultline/, sooner than the 35 days job etc locks its objects (object-lock.days = 35){tail}"
            ),
        );

        // keep-last alone says nothing about time: no minimum...
        let c = config(&job("etc", "[jobs.retention]\nkeep-last = 3"));
        passes(
            &c,
            tidy(1),
            "no enabled rule expires current versions under vaultline/; rule tidy expires noncurrent versions \
             after 1 days (no job sets a minimum: keep-last counts snapshots, not days)",
        );
        // ...but expiring current versions still fails.
        fails(
            &c,
            vec![rule("all").expiration(expire_after(400)).build().expect("rule")],
            "rule all expires current versions after 400 days on every object: S3 would delete live backups",
        );

        // A job without a retention policy keeps everything: a noncurrent
        // version of it is a deletion vaultline did not make.
        let c = config(&job("etc", ""));
        fails(
            &c,
            tidy(29),
            &format!(
                "rule tidy expires noncurrent versions 29 days after they become noncurrent under prefix \
                 vaultline/, sooner than the 30 days job etc keeps every snapshot (no retention policy: a \
                 noncurrent version is a deletion vaultline did not make, to be noticed and undone){tail}"
            ),
        );
        assert_eq!(judged(&c, tidy(30)).status, Status::Pass);
    }

    #[test]
    fn newer_noncurrent_versions_only_postpone_and_are_reported() {
        let c = daily14();
        let keep3 = |days: i32| {
            vec![
                rule("keep3")
                    .filter(prefix(""))
                    .noncurrent_version_expiration(
                        NoncurrentVersionExpiration::builder()
                            .noncurrent_days(days)
                            .newer_noncurrent_versions(3)
                            .build(),
                    )
                    .build()
                    .expect("rule"),
            ]
        };
        fails(
            &c,
            keep3(7),
            "rule keep3 expires noncurrent versions 7 days after they become noncurrent on every object (once 3 \
             newer noncurrent versions of the same object exist), sooner than the 14 days job etc keeps \
             snapshots (keep-daily = 14): a deleted backup would be gone for good before the configuration lets \
             it go",
        );
        passes(
            &c,
            keep3(20),
            "no enabled rule expires current versions under vaultline/; rule keep3 expires noncurrent versions \
             after 20 days (once 3 newer noncurrent versions of the same object exist), no sooner than the 14 \
             days job etc keeps snapshots (keep-daily = 14)",
        );
        // With the marker rule beside it, the noncurrent expiration is what counts.
        let mut rules = keep3(7);
        rules.push(
            rule("markers")
                .filter(prefix(""))
                .expiration(
                    LifecycleExpiration::builder()
                        .expired_object_delete_marker(true)
                        .build(),
                )
                .build()
                .expect("rule"),
        );
        assert_eq!(judged(&c, rules).status, Status::Fail);
    }

    #[test]
    fn every_offending_rule_is_named() {
        let c = daily14();
        let f = fails(
            &c,
            vec![
                rule("expire-old")
                    .filter(prefix("vaultline/"))
                    .expiration(expire_after(30))
                    .noncurrent_version_expiration(noncurrent_after(1))
                    .build()
                    .expect("rule"),
                rule("logs")
                    .filter(prefix("logs/"))
                    .expiration(expire_after(1))
                    .build()
                    .expect("rule"),
            ],
            "rule expire-old expires current versions after 30 days under prefix vaultline/: S3 would delete \
             live backups; rule expire-old expires noncurrent versions 1 days after they become noncurrent under \
             prefix vaultline/, sooner than the 14 days job etc keeps snapshots (keep-daily = 14): a deleted \
             backup would be gone for good before the configuration lets it go",
        );
        assert_eq!(
            f.fix,
            format!(
                "rule expire-old: remove its Expiration, or narrow its filter so that it leaves vaultline/ alone \
                 (vaultline forget deletes what the retention policy lets go); rule expire-old: raise \
                 NoncurrentDays to at least 14, or remove its NoncurrentVersionExpiration{EDIT}"
            )
        );
    }

    #[test]
    fn the_policy_can_be_relaxed_to_warn() {
        let c = config(&format!(
            "[hardening.checks]\nlifecycle-no-early-expiry = \"warn\"\n\n{}",
            job("etc", "")
        ));
        let report = evaluate(
            &state(Obs::Set(vec![
                rule("all").expiration(expire_after(1)).build().expect("rule"),
            ])),
            &c,
        );
        let f = report.checks.iter().find(|f| f.id == CHECK).expect("check");
        assert_eq!((f.status, f.policy), (Status::Fail, "warn"));
        assert!(report.passed);
    }

    #[test]
    fn harden_leaves_customer_rules_to_a_person_with_the_exact_change() {
        let c = daily14();
        let Repository::S3(s3) = &c.repository else {
            unreachable!("an S3 configuration")
        };
        // Beside rules that pass the other lifecycle checks.
        let rules = vec![
            rule("archive")
                .filter(
                    LifecycleRuleFilter::builder()
                        .tag(tag("vaultline-tier", "archive"))
                        .build(),
                )
                .transitions(
                    Transition::builder()
                        .days(30)
                        .storage_class(TransitionStorageClass::DeepArchive)
                        .build(),
                )
                .build()
                .expect("rule"),
            rule("abort")
                .filter(prefix(""))
                .abort_incomplete_multipart_upload(
                    AbortIncompleteMultipartUpload::builder()
                        .days_after_initiation(1)
                        .build(),
                )
                .build()
                .expect("rule"),
            rule("expire-old")
                .filter(prefix(""))
                .expiration(expire_after(30))
                .build()
                .expect("rule"),
        ];
        let st = state(Obs::Set(rules));
        let report = evaluate(&st, &c);
        let plan = harden::plan(&st, &report, &c, s3).expect("plan");
        assert!(
            plan.changes.is_empty(),
            "nothing is rewritten: {:?}",
            plan.changes
        );
        assert_eq!(
            plan.manual,
            vec![format!(
                "lifecycle-no-early-expiry: harden never deletes or edits lifecycle rules it did not write; \
                 rule expire-old: remove its Expiration, or narrow its filter so that it leaves vaultline/ alone \
                 (vaultline forget deletes what the retention policy lets go){EDIT}"
            )]
        );
    }

    #[test]
    fn harden_never_installs_a_noncurrent_expiration_the_check_would_fail() {
        let c = config(&format!(
            "[hardening]\nnoncurrent-expire-days = 7\nnoncurrent-transition-days = 3\n\n{}",
            job("etc", "[jobs.retention]\nkeep-daily = 14")
        ));
        let Repository::S3(s3) = &c.repository else {
            unreachable!("an S3 configuration")
        };
        let st = state(Obs::Absent);
        let plan = harden::plan(&st, &evaluate(&st, &c), &c, s3).expect("plan");
        let lifecycle: Vec<&str> = plan
            .changes
            .iter()
            .filter(|ch| ch.check == "lifecycle-archive")
            .map(|ch| ch.change.as_str())
            .collect();
        assert_eq!(
            lifecycle,
            vec![
                "add lifecycle rule(s) vaultline-archive-tier (objects tagged vaultline-tier=archive → \
                 DEEP_ARCHIVE after 30 days), vaultline-abort-incomplete-uploads (abort incomplete multipart \
                 uploads after 7 days), vaultline-noncurrent-versions (noncurrent versions under \"vaultline/\": \
                 transition after 3 days, expire after 0 days; 0 = never) to bucket acme-backups, keeping its 0 \
                 existing rule(s)"
            ]
        );
        assert_eq!(
            plan.manual,
            vec![
                "lifecycle-no-early-expiry: hardening.noncurrent-expire-days = 7 is shorter than the 14 days job \
                 etc keeps snapshots (keep-daily = 14), so harden does not install that expiration: raise it to \
                 at least 14, or 0 to keep noncurrent versions"
                    .to_string()
            ]
        );
        // Long enough: installed as configured.
        let c = config(&format!(
            "[hardening]\nnoncurrent-expire-days = 14\n\n{}",
            job("etc", "[jobs.retention]\nkeep-daily = 14")
        ));
        let plan = harden::plan(&st, &evaluate(&st, &c), &c, s3).expect("plan");
        assert!(plan.manual.is_empty(), "{:?}", plan.manual);
        assert!(
            plan.changes.iter().any(|ch| ch
                .change
                .contains("vaultline-noncurrent-versions (noncurrent versions under \"vaultline/\": transition after 0 days, expire after 14 days")),
            "{:?}",
            plan.changes
        );
    }
}
