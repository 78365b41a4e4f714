//! Stage one: the file as serde sees it.
//!
//! Unknown keys are rejected everywhere (`deny_unknown_fields`), keys are
//! kebab-case, and every value that stage two validates is `Spanned`, so its
//! problems can be reported at its line and column. Nothing here applies a
//! default or checks a meaning; that is `validate`'s job.

use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub agent: RawAgent,
    pub repository: Spanned<RawRepository>,
    #[serde(default)]
    pub key: RawKey,
    #[serde(default)]
    pub aws: RawAws,
    #[serde(default)]
    pub hardening: RawHardening,
    #[serde(default)]
    pub jobs: Vec<Spanned<RawJob>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawAgent {
    pub host: Option<Spanned<String>>,
    pub state_dir: Option<Spanned<String>>,
    pub metrics_file: Option<Spanned<String>>,
    pub timezone: Option<Spanned<String>>,
    pub grace_period_secs: Option<Spanned<i64>>,
    pub scan_interval_secs: Option<Spanned<i64>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RepositoryType {
    Local,
    S3,
}

/// Flat rather than an internally tagged enum: serde's tagged enums buffer
/// their content and lose the spans we report errors with.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawRepository {
    #[serde(rename = "type")]
    pub kind: Spanned<RepositoryType>,
    pub path: Option<Spanned<String>>,
    pub prefix: Option<Spanned<String>>,
    pub bucket: Option<Spanned<String>>,
    pub endpoint: Option<Spanned<String>>,
    pub path_style: Option<Spanned<bool>>,
    pub storage_class: Option<Spanned<RawStorageClass>>,
    pub tier_tag: Option<Spanned<String>>,
    pub part_size_mib: Option<Spanned<i64>>,
    pub parts_in_flight: Option<Spanned<i64>>,
    pub request_checksum: Option<Spanned<RawChecksumPolicy>>,
    pub restore_tier: Option<Spanned<String>>,
    pub restore_days: Option<Spanned<i64>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum RawStorageClass {
    #[serde(rename = "STANDARD")]
    Standard,
    #[serde(rename = "GLACIER_IR")]
    GlacierIr,
    #[serde(rename = "GLACIER")]
    Glacier,
    #[serde(rename = "DEEP_ARCHIVE")]
    DeepArchive,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum RawArchiveClass {
    #[serde(rename = "GLACIER_IR")]
    GlacierIr,
    #[serde(rename = "GLACIER")]
    Glacier,
    #[serde(rename = "DEEP_ARCHIVE")]
    DeepArchive,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RawChecksumPolicy {
    WhenSupported,
    WhenRequired,
}

/// `[aws]`: connection settings shared by the S3 and KMS clients.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawAws {
    pub region: Option<Spanned<String>>,
    pub profile: Option<Spanned<String>>,
    pub ca_bundle: Option<Spanned<String>>,
    pub allow_http: Option<bool>,
    pub max_attempts: Option<Spanned<i64>>,
    pub timeout_secs: Option<Spanned<i64>>,
    pub sns_endpoint: Option<Spanned<String>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum KeyProviderKind {
    Local,
    Kms,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RawKeyStorage {
    Auto,
    Keyring,
    File,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawKey {
    pub provider: Option<Spanned<KeyProviderKind>>,
    pub storage: Option<Spanned<RawKeyStorage>>,
    pub file: Option<Spanned<String>>,
    pub key_id: Option<Spanned<String>>,
    pub endpoint: Option<Spanned<String>>,
    pub accepted_keys: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RawPolicy {
    Abort,
    Warn,
}

/// One optional policy per hardening check; the field list is the set of
/// known check ids, so a misspelt id is an "unknown field" with the list.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawChecks {
    pub public_access_block: Option<RawPolicy>,
    pub no_public_policy: Option<RawPolicy>,
    pub acls_disabled: Option<RawPolicy>,
    pub versioning: Option<RawPolicy>,
    pub default_encryption: Option<RawPolicy>,
    pub tls_only: Option<RawPolicy>,
    pub access_logging: Option<RawPolicy>,
    pub lifecycle_archive: Option<RawPolicy>,
    pub lifecycle_abort_mpu: Option<RawPolicy>,
    pub lifecycle_no_early_expiry: Option<RawPolicy>,
    pub object_lock: Option<RawPolicy>,
    pub kms_key: Option<RawPolicy>,
    pub account_public_access_block: Option<RawPolicy>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawHardening {
    pub accept_unknown: Option<bool>,
    pub archive_after_days: Option<Spanned<i64>>,
    pub archive_class: Option<Spanned<RawArchiveClass>>,
    pub abort_incomplete_uploads_days: Option<Spanned<i64>>,
    pub noncurrent_transition_days: Option<Spanned<i64>>,
    pub noncurrent_expire_days: Option<Spanned<i64>>,
    pub access_log_bucket: Option<Spanned<String>>,
    pub access_log_prefix: Option<Spanned<String>>,
    #[serde(default)]
    pub checks: RawChecks,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawJob {
    pub name: Spanned<String>,
    /// Optional only for a job that has command sources.
    pub paths: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub exclude: Vec<Spanned<String>>,
    pub one_file_system: Option<bool>,
    pub compression_level: Option<Spanned<i64>>,
    pub compression_threads: Option<Spanned<i64>>,
    pub schedule: Option<Spanned<String>>,
    pub watch: Option<bool>,
    pub on_change: Option<Spanned<RawOnChange>>,
    pub catch_up: Option<bool>,
    pub on_failure: Option<Spanned<String>>,
    pub on_failure_sns: Option<Spanned<String>>,
    pub retention: Option<RawRetention>,
    pub full_every_runs: Option<Spanned<i64>>,
    pub full_every_days: Option<Spanned<i64>>,
    pub object_lock: Option<Spanned<RawObjectLock>>,
    pub hooks: Option<Spanned<RawHooks>>,
    #[serde(default)]
    pub commands: Vec<Spanned<RawCommand>>,
    #[serde(default)]
    pub map: Vec<Spanned<RawMap>>,
}

/// `[jobs.hooks]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawHooks {
    pub before: Option<Spanned<String>>,
    pub after: Option<Spanned<String>>,
    pub timeout_secs: Option<Spanned<i64>>,
}

/// `[[jobs.commands]]`: a command whose output is backed up as a file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawCommand {
    pub name: Spanned<String>,
    pub command: Spanned<String>,
    pub timeout_secs: Option<Spanned<i64>>,
}

/// `[[jobs.map]]`: where one of the job's paths is read from.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawMap {
    pub from: Spanned<String>,
    pub to: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawObjectLock {
    pub mode: Spanned<String>,
    pub days: Spanned<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawOnChange {
    pub debounce_secs: Option<Spanned<i64>>,
    pub min_interval_secs: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawRetention {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
}
