//! Stage two's output: the resolved configuration the agent runs with.
//!
//! Every default has been applied and every value checked; nothing here can
//! be invalid. The agent never looks at the raw TOML.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::pattern::Patterns;

use crate::cron::Schedule;

/// A loaded, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was loaded from.
    pub file: PathBuf,
    /// Agent-wide settings.
    pub agent: Agent,
    /// Where snapshots are stored.
    pub repository: Repository,
    /// Where data keys are wrapped.
    pub key: KeyConfig,
    /// AWS connection settings (used by S3 repositories and KMS keys).
    pub aws: Aws,
    /// Bucket-hardening policy (used with S3 repositories).
    pub hardening: Hardening,
    /// The backup jobs, in file order.
    pub jobs: Vec<Job>,
}

impl Config {
    /// The job called `name`.
    pub fn job(&self, name: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.name == name)
    }
}

/// `[agent]`.
#[derive(Debug, Clone)]
pub struct Agent {
    /// The host name backups are filed under.
    pub host: String,
    /// Local state: locks, the key file, caches.
    pub state_dir: PathBuf,
    /// The Prometheus text file rewritten after every run.
    pub metrics_file: PathBuf,
    /// IANA time zone the schedules are read in (`UTC` by default).
    pub timezone: String,
    /// How long a stopping agent lets a running backup finish.
    pub grace_period_secs: u64,
    /// How often watched jobs are rescanned when the kernel's watch limit
    /// is reached.
    pub scan_interval_secs: u64,
}

/// `[repository]`. Exhaustive on purpose: a new kind must be handled
/// everywhere repositories are opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repository {
    /// A directory on a local or mounted file system.
    Local {
        /// The repository directory.
        path: PathBuf,
        /// Object-name prefix inside it (may be empty).
        prefix: String,
    },
    /// An S3 bucket.
    S3(S3Repository),
}

impl Repository {
    /// The object-name prefix.
    pub fn prefix(&self) -> &str {
        match self {
            Repository::Local { prefix, .. } => prefix,
            Repository::S3(s3) => &s3.prefix,
        }
    }
}

/// `[repository]` with `type = "s3"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Repository {
    /// Bucket name.
    pub bucket: String,
    /// Object-key prefix (may be empty).
    pub prefix: String,
    /// Endpoint URL for S3-compatible servers; `None` = AWS.
    pub endpoint: Option<String>,
    /// Path-style addressing (`https://host/bucket/key`).
    pub path_style: bool,
    /// Storage class for archive objects at upload.
    pub storage_class: StorageClass,
    /// The tag put on archive objects, for lifecycle rules to match.
    pub tier_tag: Tag,
    /// First multipart part size in bytes; grows for very large archives.
    pub part_size: u64,
    /// Parts uploaded concurrently per object.
    pub parts_in_flight: usize,
    /// When the SDK adds its own request checksums.
    pub request_checksum: ChecksumPolicy,
    /// Retrieval tier for thawing GLACIER / DEEP_ARCHIVE archives.
    pub restore_tier: String,
    /// Days a thawed copy stays readable.
    pub restore_days: u32,
}

/// S3 storage classes archives may be uploaded into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageClass {
    /// STANDARD.
    Standard,
    /// GLACIER_IR (instant retrieval).
    GlacierIr,
    /// GLACIER (flexible retrieval): restore needs a thaw.
    Glacier,
    /// DEEP_ARCHIVE: restore needs a thaw of up to 48 hours.
    DeepArchive,
}

impl StorageClass {
    /// The S3 API name.
    pub fn as_str(self) -> &'static str {
        match self {
            StorageClass::Standard => "STANDARD",
            StorageClass::GlacierIr => "GLACIER_IR",
            StorageClass::Glacier => "GLACIER",
            StorageClass::DeepArchive => "DEEP_ARCHIVE",
        }
    }
}

/// An S3 object tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    /// Tag key.
    pub key: String,
    /// Tag value.
    pub value: String,
}

/// When the SDK computes request checksums on its own (our uploads always
/// carry an explicit SHA-256 either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumPolicy {
    /// On every operation that supports one (the SDK default).
    WhenSupported,
    /// Only where the operation requires one; for S3-compatible servers that
    /// reject the SDK's default checksums.
    WhenRequired,
}

/// `[aws]`: settings shared by every AWS client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aws {
    /// Region; `None` = the standard chain (`AWS_REGION`, profile).
    pub region: Option<String>,
    /// Named profile; `None` = the standard chain.
    pub profile: Option<String>,
    /// Extra PEM CA certificates to trust (S3-compatible servers, proxies).
    pub ca_bundle: Option<PathBuf>,
    /// Whether plain-http endpoints are allowed.
    pub allow_http: bool,
    /// Attempts per request, first included, before a run fails.
    pub max_attempts: u32,
    /// Per-attempt timeout, seconds.
    pub timeout_secs: u64,
    /// Endpoint URL for SNS-compatible servers; `None` = AWS.
    pub sns_endpoint: Option<String>,
}

/// `[key]`. Exhaustive on purpose, like [`Repository`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyConfig {
    /// A local master key.
    Local {
        /// Where the master key is kept.
        storage: KeyStorage,
        /// The key file, used for `file` storage and as the `auto` fallback.
        file: PathBuf,
    },
    /// An AWS KMS key wraps every data key.
    Kms {
        /// Key id, alias (`alias/…`) or ARN.
        key_id: String,
        /// Endpoint URL for KMS-compatible servers; `None` = AWS.
        endpoint: Option<String>,
        /// Further keys (full key ARNs) whose data keys may be unwrapped
        /// when reading, e.g. the old key during a rotation. Objects under
        /// any other key are refused, whatever KMS would allow.
        accepted_keys: Vec<String>,
    },
}

/// Where a local master key is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStorage {
    /// The OS keyring when reachable, else the key file.
    Auto,
    /// The OS keyring only.
    Keyring,
    /// The key file only.
    File,
}

/// What to do when a hardening check fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckPolicy {
    /// Refuse the run (exit code 3).
    Abort,
    /// Log a warning and go on.
    Warn,
}

/// The hardening checks, by stable id, with their default policy.
pub const CHECKS: &[(&str, CheckPolicy)] = &[
    ("public-access-block", CheckPolicy::Abort),
    ("no-public-policy", CheckPolicy::Abort),
    ("acls-disabled", CheckPolicy::Abort),
    ("versioning", CheckPolicy::Abort),
    ("default-encryption", CheckPolicy::Abort),
    ("tls-only", CheckPolicy::Abort),
    ("access-logging", CheckPolicy::Warn),
    ("lifecycle-archive", CheckPolicy::Warn),
    ("lifecycle-abort-mpu", CheckPolicy::Warn),
    ("lifecycle-no-early-expiry", CheckPolicy::Abort),
    ("object-lock", CheckPolicy::Warn),
    ("kms-key", CheckPolicy::Warn),
    ("account-public-access-block", CheckPolicy::Warn),
];

/// `[hardening]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hardening {
    /// Whether a setting the principal may not read counts as passing.
    pub accept_unknown: bool,
    /// Policy per check id, for every id in [`CHECKS`].
    pub policies: Vec<(&'static str, CheckPolicy)>,
    /// Lifecycle rules `harden` creates and `audit` expects.
    pub lifecycle: Lifecycle,
    /// Bucket that receives server access logs (`harden` sets it up).
    pub access_log_bucket: Option<String>,
    /// Key prefix of the access logs in that bucket.
    pub access_log_prefix: String,
}

/// The lifecycle rules of a hardened bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifecycle {
    /// Days after upload before tier-tagged archives move to `archive_class`.
    pub archive_after_days: u32,
    /// The Glacier class archives move to.
    pub archive_class: StorageClass,
    /// Days before incomplete multipart uploads are aborted.
    pub abort_incomplete_uploads_days: u32,
    /// Days before noncurrent versions move to `archive_class` (0 = never).
    pub noncurrent_transition_days: u32,
    /// Days before noncurrent versions are deleted (0 = never).
    pub noncurrent_expire_days: u32,
}

impl Hardening {
    /// The policy for check `id`.
    pub fn policy(&self, id: &str) -> Option<CheckPolicy> {
        self.policies.iter().find(|(c, _)| *c == id).map(|(_, p)| *p)
    }
}

/// A `[[jobs]]` entry.
#[derive(Debug, Clone)]
pub struct Job {
    /// Unique name: lowercase letters, digits, `-`, `_`.
    pub name: String,
    /// Absolute paths to back up, none inside another.
    pub paths: Vec<PathBuf>,
    /// What to leave out.
    pub exclude: Excludes,
    /// Stay on the file system of each path.
    pub one_file_system: bool,
    /// zstd level, 1–19.
    pub compression_level: i32,
    /// zstd worker threads; 0 = one per CPU.
    pub compression_threads: u32,
    /// When the agent runs the job.
    pub schedule: Option<Schedule>,
    /// Whether the agent watches the paths for changes.
    pub watch: bool,
    /// Run after changes settle (watched jobs only).
    pub on_change: Option<OnChange>,
    /// Run once at agent start when a scheduled run was missed.
    pub catch_up: bool,
    /// Command run (through `sh -c`) when a run of this job fails.
    pub on_failure: Option<String>,
    /// SNS topic ARN notified when a run of this job fails.
    pub on_failure_sns: Option<String>,
    /// How many snapshots `forget` keeps.
    pub retention: Retention,
    /// A full (non-incremental) archive at least every this many runs.
    pub full_every_runs: u32,
    /// … and when the last full is this many days old (0: no age limit).
    pub full_every_days: u32,
    /// S3 Object Lock retention for every object of each snapshot.
    pub object_lock: Option<ObjectLock>,
    /// Commands run before and after each run (`[jobs.hooks]`).
    pub hooks: Hooks,
    /// Commands whose standard output is backed up as a file of the
    /// snapshot (`[[jobs.commands]]`), in file order.
    pub commands: Vec<CommandSource>,
    /// Where some of `paths` are read from (`[[jobs.map]]`): a file-system
    /// snapshot mounted elsewhere, recorded under the original path.
    pub map: Vec<PathMap>,
}

impl Job {
    /// Where `path` (one of the job's paths) is read from: its mapping's
    /// `from`, or itself.
    pub fn source_of<'p>(&'p self, path: &'p Path) -> &'p Path {
        self.map
            .iter()
            .find(|m| m.to == path)
            .map_or(path, |m| m.from.as_path())
    }

    /// Whether the job holds commands vaultline runs (hooks, command
    /// sources), listed for messages (`jobs "db" hooks.before`).
    pub fn commands_run(&self) -> Vec<String> {
        let mut out = Vec::new();
        let at = |what: &str| format!("jobs {:?} {what}", self.name);
        if self.on_failure.is_some() {
            out.push(at("on-failure"));
        }
        if self.hooks.before.is_some() {
            out.push(at("hooks.before"));
        }
        if self.hooks.after.is_some() {
            out.push(at("hooks.after"));
        }
        if !self.commands.is_empty() {
            out.push(at("commands"));
        }
        out
    }
}

/// Where the files of command sources and of `backup stdin` are placed in
/// a snapshot: `/vaultline-streams/NAME`. Restores select them by that path.
pub const STREAMS_ROOT: &str = "/vaultline-streams";

/// The path in a snapshot of the stream named `name` (a valid name, see
/// [`check_stream_name`]).
pub fn stream_path(name: &str) -> PathBuf {
    Path::new(STREAMS_ROOT).join(name)
}

/// Longest stream name, in bytes.
pub const MAX_STREAM_NAME: usize = 1024;

/// Checks a stream's name (a command source's `name`, or `backup stdin`'s
/// NAME): a relative path of non-empty components, none `.` or `..`, each
/// at most 255 bytes, at most [`MAX_STREAM_NAME`] bytes in all, without
/// control characters. Says what is wrong.
pub fn check_stream_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_STREAM_NAME {
        return Err(format!("{name:?} is too long: at most {MAX_STREAM_NAME} bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("{name:?} must not contain control characters"));
    }
    if name.starts_with('/') {
        return Err(format!(
            "{name:?} must be a relative path (it is placed under {STREAMS_ROOT}/)"
        ));
    }
    if name.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(format!("{name:?} must not contain empty, `.` or `..` components"));
    }
    if name.split('/').any(|c| c.len() > 255) {
        return Err(format!("{name:?} has a component longer than 255 bytes"));
    }
    Ok(())
}

/// `[jobs.hooks]`: commands run (through `sh -c`) around each run of the
/// job, under its lock: `before` (a failure stops the run) and `after`
/// (always, whatever the run's outcome).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Hooks {
    /// Run before anything is read; a failure stops the run.
    pub before: Option<String>,
    /// Run after the run, whatever its outcome.
    pub after: Option<String>,
    /// Seconds each hook may take before its process group is killed.
    pub timeout_secs: u64,
}

/// Command lines are not shown by `Debug`: they may hold a password.
impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("before", &self.before.as_ref().map(|_| "[command]"))
            .field("after", &self.after.as_ref().map(|_| "[command]"))
            .field("timeout_secs", &self.timeout_secs)
            .finish()
    }
}

/// `[[jobs.commands]]`: a command whose standard output is backed up as
/// the file [`stream_path`]`(name)` of each snapshot.
#[derive(Clone, PartialEq, Eq)]
pub struct CommandSource {
    /// Its name: a relative path (see [`check_stream_name`]).
    pub name: String,
    /// The command, run through `sh -c`.
    pub command: String,
    /// Seconds it may take before its process group is killed; `None`: no
    /// limit.
    pub timeout_secs: Option<u64>,
}

/// Command lines are not shown by `Debug`: they may hold a password.
impl std::fmt::Debug for CommandSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandSource")
            .field("name", &self.name)
            .field("command", &"[command]")
            .field("timeout_secs", &self.timeout_secs)
            .finish()
    }
}

/// `[[jobs.map]]`: the job's path `to` is read from `from` (a file-system
/// snapshot's mount point) and recorded as `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathMap {
    /// Where the files are read.
    pub from: PathBuf,
    /// The job's path they are recorded under.
    pub to: PathBuf,
}

/// `[jobs.object-lock]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectLock {
    /// `GOVERNANCE` or `COMPLIANCE`.
    pub mode: String,
    /// Days from the snapshot's start that its objects stay locked.
    pub days: u32,
}

/// `on-change` of a watched job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnChange {
    /// Quiet time after the last change before a run starts.
    pub debounce_secs: u64,
    /// Minimum time between the starts of two change-triggered runs.
    pub min_interval_secs: u64,
}

/// A job's exclude patterns, in the pattern language of
/// [`Patterns`](crate::Patterns) (`docs/patterns.md`): a pattern without
/// `/` matches a name anywhere (`*.tmp`, `node_modules`); a pattern with `/`
/// matches the path from the root (`/var/cache/**`, `/home/*/.cache`). `*`
/// and `?` stay within one path component, `**` spans any number of them.
#[derive(Debug, Clone, Default)]
pub struct Excludes {
    /// The patterns as written.
    pub patterns: Vec<String>,
    pub(crate) set: Patterns,
}

impl Excludes {
    /// True when `path` (absolute) is excluded.
    pub fn is_excluded(&self, path: &Path) -> bool {
        self.matching(path).is_some()
    }

    /// The pattern (as written) that excludes `path` (absolute), if one does.
    pub fn matching(&self, path: &Path) -> Option<&str> {
        self.set.matching(path.as_os_str().as_bytes())
    }
}

/// How long the configuration keeps history: no lifecycle rule may delete a
/// noncurrent version sooner (the `lifecycle-no-early-expiry` check).
///
/// A noncurrent version of a vaultline object exists because someone
/// deleted the object (vaultline never overwrites one): `forget`, or a
/// mistake, or an attacker with delete rights. Until S3 expires it, an
/// administrator can bring it back; after that it is gone. So noncurrent
/// versions must be kept at least as long as the configuration promises to
/// keep snapshots, or a deletion destroys history the retention policy (or
/// an Object Lock) still covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionFloor {
    /// The minimum, in days.
    pub days: u32,
    /// Why, worded to follow "the N days ": `job etc keeps snapshots (keep-daily = 14)`.
    pub why: String,
}

/// Days a deletion must stay recoverable for a job without a retention
/// policy. Such a job's snapshots are never deleted by vaultline, so a
/// noncurrent version of them is a deletion someone else made; a month is
/// the time to notice it (an alert, a failed restore test) and undo it.
pub const KEEP_EVERYTHING_FLOOR_DAYS: u32 = 30;

impl Config {
    /// The longest time any job keeps its history, with the job and setting
    /// that ask for it: each job's Object Lock days; its time-based keep-*
    /// rules as days (hourly N → N/24 rounded up, daily N → N, weekly N → 7N,
    /// monthly N → 31N, yearly N → 366N); [`KEEP_EVERYTHING_FLOOR_DAYS`] for a
    /// job without a retention policy. `keep-last` counts snapshots, not
    /// time, so it sets no minimum; `None` when no job sets one.
    pub fn retention_floor(&self) -> Option<RetentionFloor> {
        let mut floor: Option<RetentionFloor> = None;
        let mut consider = |days: u32, why: String| {
            if floor.as_ref().is_none_or(|f| days > f.days) {
                floor = Some(RetentionFloor { days, why });
            }
        };
        for job in &self.jobs {
            if let Some(lock) = &job.object_lock {
                consider(
                    lock.days,
                    format!(
                        "job {} locks its objects (object-lock.days = {})",
                        job.name, lock.days
                    ),
                );
            }
            if job.retention.keeps_everything() {
                consider(
                    KEEP_EVERYTHING_FLOOR_DAYS,
                    format!(
                        "job {} keeps every snapshot (no retention policy: a noncurrent version is a deletion \
                         vaultline did not make, to be noticed and undone)",
                        job.name
                    ),
                );
            } else if let Some((days, rule)) = job.retention.longest_days() {
                consider(days, format!("job {} keeps snapshots ({rule})", job.name));
            }
        }
        floor
    }
}

/// `[jobs.retention]`: how many snapshots to keep per period (0 = none by
/// that rule). All zero means keep everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// The most recent N.
    pub keep_last: u32,
    /// The last snapshot of each of the last N hours.
    pub keep_hourly: u32,
    /// … days.
    pub keep_daily: u32,
    /// … weeks.
    pub keep_weekly: u32,
    /// … months.
    pub keep_monthly: u32,
    /// … years.
    pub keep_yearly: u32,
}

impl Retention {
    /// Whether every rule is zero: `forget` keeps every snapshot.
    pub fn keeps_everything(&self) -> bool {
        *self == Retention::default()
    }

    /// The longest time one of the time-based rules keeps a snapshot, in
    /// whole days, with that rule as written (`keep-monthly = 12`); `None`
    /// when only `keep-last` (or nothing) is set.
    pub fn longest_days(&self) -> Option<(u32, String)> {
        [
            ("keep-hourly", self.keep_hourly, self.keep_hourly.div_ceil(24)),
            ("keep-daily", self.keep_daily, self.keep_daily),
            (
                "keep-weekly",
                self.keep_weekly,
                self.keep_weekly.saturating_mul(7),
            ),
            (
                "keep-monthly",
                self.keep_monthly,
                self.keep_monthly.saturating_mul(31),
            ),
            (
                "keep-yearly",
                self.keep_yearly,
                self.keep_yearly.saturating_mul(366),
            ),
        ]
        .into_iter()
        .filter(|&(_, n, _)| n > 0)
        .fold(None, |best: Option<(u32, String)>, (rule, n, days)| match best {
            Some((d, _)) if d >= days => best,
            _ => Some((days, format!("{rule} = {n}"))),
        })
    }
}
