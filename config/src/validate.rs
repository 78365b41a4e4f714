//! Stage two: from the raw file to a [`Config`], applying defaults and
//! collecting every problem with its position and TOML path.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use toml::Spanned;

use crate::Environment;
use crate::cron::Schedule;
use crate::error::{LineIndex, Problem};
use crate::model::*;
use crate::pattern::Patterns;
use crate::raw::*;

/// Defaults, in one place (also documented in packaging/config/vaultline.toml).
pub const DEFAULT_PREFIX: &str = "vaultline";
/// First multipart part size, MiB.
pub const DEFAULT_PART_SIZE_MIB: u64 = 8;
/// Parts uploaded at once per object.
pub const DEFAULT_PARTS_IN_FLIGHT: usize = 4;
/// The tag archive objects carry for lifecycle rules.
pub const DEFAULT_TIER_TAG: &str = "vaultline-tier=archive";
/// Attempts per AWS request (first included).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Per-attempt timeout for AWS requests, seconds.
pub const DEFAULT_TIMEOUT_SECS: u64 = 120;
/// zstd level when a job gives none: zstd's own default.
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 3;
/// Seconds a hook may run before it is killed.
pub const DEFAULT_HOOK_TIMEOUT_SECS: u64 = 300;
/// A full archive at least every this many runs.
pub const DEFAULT_FULL_EVERY_RUNS: u32 = 30;
/// … or when the last full is this many days old.
pub const DEFAULT_FULL_EVERY_DAYS: u32 = 30;
/// Glacier retrieval tier.
pub const DEFAULT_RESTORE_TIER: &str = "Standard";
/// Days a thawed copy stays readable.
pub const DEFAULT_RESTORE_DAYS: u32 = 7;
/// The state directory when running as root.
pub const ROOT_STATE_DIR: &str = "/var/lib/vaultline";
/// The metrics file with the root state directory: outside it (it is 0700),
/// in a directory node_exporter's user can read.
pub const ROOT_METRICS_FILE: &str = "/var/lib/vaultline-metrics/vaultline.prom";

struct Checker<'a> {
    index: &'a LineIndex<'a>,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn report(&mut self, span: Option<Range<usize>>, path: impl Into<String>, message: impl Into<String>) {
        let problem = self.index.problem(span, path, message);
        self.problems.push(problem);
    }

    /// An absolute, normalized path, or a reported problem.
    fn absolute_path(&mut self, value: &Spanned<String>, path: &str) -> Option<PathBuf> {
        let p = Path::new(value.get_ref());
        if value.get_ref().is_empty() {
            self.report(Some(value.span()), path, "must not be empty");
            return None;
        }
        if !p.is_absolute() {
            self.report(
                Some(value.span()),
                path,
                format!("{:?} must be an absolute path", value.get_ref()),
            );
            return None;
        }
        if p.components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            self.report(
                Some(value.span()),
                path,
                format!("{:?} must not contain `.` or `..` components", value.get_ref()),
            );
            return None;
        }
        Some(p.components().collect())
    }
}

pub(crate) fn validate(
    raw: RawConfig,
    file: &Path,
    index: &LineIndex<'_>,
    env: &Environment,
) -> Result<Config, Vec<Problem>> {
    let mut c = Checker {
        index,
        problems: Vec::new(),
    };

    // [agent]
    let host = match &raw.agent.host {
        Some(h) => {
            if !valid_host(h.get_ref()) {
                c.report(
                    Some(h.span()),
                    "agent.host",
                    format!(
                        "{:?} is not a valid host name: use 1 to 253 letters, digits, `.`, `-` or `_`, \
                         not starting with `.` or `-`",
                        h.get_ref()
                    ),
                );
            }
            h.get_ref().clone()
        }
        None => match env.hostname.as_deref().filter(|h| valid_host(h)) {
            Some(h) => h.to_string(),
            None => {
                c.report(
                    None,
                    "agent.host",
                    "the machine's host name is unusable here; set agent.host",
                );
                String::new()
            }
        },
    };
    let state_dir = match &raw.agent.state_dir {
        Some(s) => c.absolute_path(s, "agent.state-dir").unwrap_or_default(),
        None => match env.default_state_dir() {
            Some(d) => d,
            None => {
                c.report(
                    None,
                    "agent.state-dir",
                    "cannot choose a default (HOME is not set); set agent.state-dir",
                );
                PathBuf::new()
            }
        },
    };

    // node_exporter reads the metrics as another user: never inside the
    // system's private (0700) state directory.
    let metrics_file = match &raw.agent.metrics_file {
        Some(p) => c.absolute_path(p, "agent.metrics-file").unwrap_or_default(),
        None if state_dir == Path::new(ROOT_STATE_DIR) => PathBuf::from(ROOT_METRICS_FILE),
        None => state_dir.join("vaultline.prom"),
    };
    let timezone = match &raw.agent.timezone {
        Some(tz) => {
            if tz.get_ref().parse::<chrono_tz::Tz>().is_err() {
                c.report(
                    Some(tz.span()),
                    "agent.timezone",
                    format!(
                        "unknown time zone {:?}: expected an IANA name such as \"UTC\" or \"Europe/Berlin\"",
                        tz.get_ref()
                    ),
                );
            }
            tz.get_ref().clone()
        }
        None => "UTC".to_string(),
    };
    let grace_period_secs = int_in(
        &mut c,
        raw.agent.grace_period_secs.as_ref(),
        "agent.grace-period-secs",
        0..=86400,
        "seconds a running backup may take to finish when the agent stops",
    )
    .map_or(60, |v| v as u64);
    let scan_interval_secs = int_in(
        &mut c,
        raw.agent.scan_interval_secs.as_ref(),
        "agent.scan-interval-secs",
        1..=86400,
        "seconds between rescans of a watched job that cannot be watched",
    )
    .map_or(300, |v| v as u64);

    // [repository]
    let repo_span = raw.repository.span();
    let repo = raw.repository.into_inner();
    let prefix = match &repo.prefix {
        Some(p) => {
            if !valid_prefix(p.get_ref()) {
                c.report(
                    Some(p.span()),
                    "repository.prefix",
                    format!(
                        "{:?} is not a valid prefix: use `/`-separated segments of letters, digits, `.`, `-`, `_` \
                         (no empty, `.` or `..` segments, no leading or trailing `/`)",
                        p.get_ref()
                    ),
                );
            }
            p.get_ref().clone()
        }
        None => DEFAULT_PREFIX.to_string(),
    };
    let aws = aws(&mut c, &raw.aws);
    let repository = repository(&mut c, repo, repo_span, prefix, &aws);
    let key = key(&mut c, &raw.key, &state_dir, &aws);

    // [hardening]
    let hardening = hardening(&mut c, &raw.hardening);

    // [[jobs]]
    let mut jobs = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, raw_job) in raw.jobs.iter().enumerate() {
        let at = format!("jobs[{i}]");
        let job = raw_job.get_ref();
        let name = job.name.get_ref();
        if !valid_job_name(name) {
            c.report(
                Some(job.name.span()),
                format!("{at}.name"),
                format!(
                    "{name:?} is not a valid job name: use 1 to 64 lowercase letters, digits, `-` or `_`, \
                     starting with a letter or digit"
                ),
            );
        } else if let Some(first) = seen.insert(name.clone(), i) {
            c.report(
                Some(job.name.span()),
                format!("{at}.name"),
                format!("duplicate job name {name:?} (also jobs[{first}].name)"),
            );
            seen.insert(name.clone(), first);
        }

        let mut paths: Vec<PathBuf> = Vec::new();
        // A job may consist of command sources alone; any other needs a path.
        let no_paths: Vec<Spanned<String>> = Vec::new();
        let raw_paths = job.paths.as_ref().map_or(&no_paths, |p| p.get_ref());
        match &job.paths {
            None if job.commands.is_empty() => {
                c.report(Some(raw_job.span()), at.clone(), "missing key `paths`");
            }
            Some(p) if p.get_ref().is_empty() && job.commands.is_empty() => {
                c.report(
                    Some(p.span()),
                    format!("{at}.paths"),
                    "at least one path is required (or a command source, [[jobs.commands]])",
                );
            }
            _ => {}
        }
        for (k, p) in raw_paths.iter().enumerate() {
            let here = format!("{at}.paths[{k}]");
            let Some(path) = c.absolute_path(p, &here) else {
                continue;
            };
            if let Some((j, other)) = paths
                .iter()
                .enumerate()
                .find(|(_, o)| path.starts_with(o) || o.starts_with(&path))
            {
                let msg = if *other == path {
                    format!("{} is listed twice (also {at}.paths[{j}])", path.display())
                } else if path.starts_with(other) {
                    format!(
                        "{} is inside {} ({at}.paths[{j}]); list only {}",
                        path.display(),
                        other.display(),
                        other.display()
                    )
                } else {
                    format!(
                        "{} contains {} ({at}.paths[{j}]); list only {}",
                        path.display(),
                        other.display(),
                        path.display()
                    )
                };
                c.report(Some(p.span()), here, msg);
                continue;
            }
            paths.push(path);
        }

        let mut patterns = Vec::new();
        for (k, pat) in job.exclude.iter().enumerate() {
            let text = pat.get_ref();
            match Patterns::new(std::slice::from_ref(text)) {
                Ok(_) => patterns.push(text.clone()),
                Err(e) => c.report(Some(pat.span()), format!("{at}.exclude[{k}]"), e.to_string()),
            }
        }
        let exclude = match Patterns::new(&patterns) {
            Ok(set) => Excludes { patterns, set },
            Err(e) => {
                c.report(
                    Some(raw_job.span()),
                    format!("{at}.exclude"),
                    format!("cannot compile the patterns: {e}"),
                );
                continue;
            }
        };

        let compression_level = match &job.compression_level {
            Some(l) if !(1..=19).contains(l.get_ref()) => {
                c.report(
                    Some(l.span()),
                    format!("{at}.compression-level"),
                    format!("{} is out of range: expected 1 to 19", l.get_ref()),
                );
                DEFAULT_COMPRESSION_LEVEL
            }
            Some(l) => *l.get_ref() as i32,
            None => DEFAULT_COMPRESSION_LEVEL,
        };
        let compression_threads = match &job.compression_threads {
            Some(t) if !(0..=256).contains(t.get_ref()) => {
                c.report(
                    Some(t.span()),
                    format!("{at}.compression-threads"),
                    format!("{} is out of range: expected 0 (one per CPU) to 256", t.get_ref()),
                );
                0
            }
            Some(t) => *t.get_ref() as u32,
            None => 0,
        };
        let schedule = match &job.schedule {
            Some(s) => match Schedule::parse(s.get_ref()) {
                Ok(s) => Some(s),
                Err(msg) => {
                    c.report(Some(s.span()), format!("{at}.schedule"), msg);
                    None
                }
            },
            None => None,
        };
        let on_change = job.on_change.as_ref().map(|oc| {
            if !job.watch.unwrap_or(false) {
                c.report(
                    Some(oc.span()),
                    format!("{at}.on-change"),
                    "needs watch = true (changes are only seen in watched jobs)",
                );
            }
            let oc = oc.get_ref();
            OnChange {
                debounce_secs: int_in(
                    &mut c,
                    oc.debounce_secs.as_ref(),
                    &format!("{at}.on-change.debounce-secs"),
                    1..=86400,
                    "quiet seconds after the last change",
                )
                .map_or(30, |v| v as u64),
                min_interval_secs: int_in(
                    &mut c,
                    oc.min_interval_secs.as_ref(),
                    &format!("{at}.on-change.min-interval-secs"),
                    0..=604800,
                    "seconds between change-triggered runs",
                )
                .map_or(300, |v| v as u64),
            }
        });
        if let Some(cmd) = &job.on_failure
            && cmd.get_ref().trim().is_empty()
        {
            c.report(
                Some(cmd.span()),
                format!("{at}.on-failure"),
                "must not be empty (leave it out for no hook)",
            );
        }
        let on_failure_sns = job.on_failure_sns.as_ref().map(|t| {
            let parts: Vec<&str> = t.get_ref().splitn(6, ':').collect();
            if parts.len() != 6 || parts[0] != "arn" || parts[2] != "sns" || parts[5].is_empty() {
                c.report(
                    Some(t.span()),
                    format!("{at}.on-failure-sns"),
                    format!(
                        "{:?} is not an SNS topic ARN: expected arn:aws:sns:REGION:ACCOUNT:TOPIC",
                        t.get_ref()
                    ),
                );
            }
            t.get_ref().clone()
        });
        let r = job.retention.as_ref();
        let retention = Retention {
            keep_last: r.and_then(|r| r.keep_last).unwrap_or(0),
            keep_hourly: r.and_then(|r| r.keep_hourly).unwrap_or(0),
            keep_daily: r.and_then(|r| r.keep_daily).unwrap_or(0),
            keep_weekly: r.and_then(|r| r.keep_weekly).unwrap_or(0),
            keep_monthly: r.and_then(|r| r.keep_monthly).unwrap_or(0),
            keep_yearly: r.and_then(|r| r.keep_yearly).unwrap_or(0),
        };
        let full_every_runs = int_in(
            &mut c,
            job.full_every_runs.as_ref(),
            &format!("{at}.full-every-runs"),
            1..=100,
            "runs per chain of incremental snapshots; 1 makes every run full",
        )
        .map_or(DEFAULT_FULL_EVERY_RUNS, |v| v as u32);
        let full_every_days = int_in(
            &mut c,
            job.full_every_days.as_ref(),
            &format!("{at}.full-every-days"),
            0..=3650,
            "age in days of the last full that forces a new one; 0 for no limit",
        )
        .map_or(DEFAULT_FULL_EVERY_DAYS, |v| v as u32);
        let object_lock = job.object_lock.as_ref().and_then(|l| {
            if matches!(repository, Repository::Local { .. }) {
                c.report(
                    Some(l.span()),
                    format!("{at}.object-lock"),
                    "needs an S3 repository (type = \"s3\"): a local repository has no Object Lock",
                );
            }
            let l = l.get_ref();
            let mode = l.mode.get_ref().as_str();
            if !matches!(mode, "GOVERNANCE" | "COMPLIANCE") {
                c.report(
                    Some(l.mode.span()),
                    format!("{at}.object-lock.mode"),
                    format!("{mode:?} is not a lock mode: expected \"GOVERNANCE\" or \"COMPLIANCE\""),
                );
            }
            let days = int_in(
                &mut c,
                Some(&l.days),
                &format!("{at}.object-lock.days"),
                1..=36_500,
                "days each snapshot's objects stay locked",
            )?;
            Some(ObjectLock {
                mode: mode.to_string(),
                days: days as u32,
            })
        });
        let hooks = hooks(&mut c, job.hooks.as_ref(), &at);
        let commands = commands(&mut c, &job.commands, &paths, raw_paths, &at);
        let map = path_map(&mut c, &job.map, &paths, &at);
        jobs.push(Job {
            name: name.clone(),
            paths,
            exclude,
            one_file_system: job.one_file_system.unwrap_or(false),
            compression_level,
            compression_threads,
            schedule,
            watch: job.watch.unwrap_or(false),
            on_change,
            catch_up: job.catch_up.unwrap_or(false),
            on_failure: job.on_failure.as_ref().map(|c| c.get_ref().clone()),
            on_failure_sns,
            retention,
            full_every_runs,
            full_every_days,
            object_lock,
            hooks,
            commands,
            map,
        });
    }

    if c.problems.is_empty() {
        Ok(Config {
            file: file.to_path_buf(),
            agent: Agent {
                host,
                metrics_file,
                timezone,
                grace_period_secs,
                scan_interval_secs,
                state_dir,
            },
            repository,
            key,
            aws,
            hardening,
            jobs,
        })
    } else {
        c.problems.sort_by_key(|p| (p.line, p.column));
        Err(c.problems)
    }
}

/// `[jobs.hooks]`.
fn hooks(c: &mut Checker<'_>, raw: Option<&Spanned<RawHooks>>, at: &str) -> Hooks {
    let Some(raw) = raw.map(Spanned::get_ref) else {
        return Hooks {
            before: None,
            after: None,
            timeout_secs: DEFAULT_HOOK_TIMEOUT_SECS,
        };
    };
    let command = |c: &mut Checker<'_>, v: &Option<Spanned<String>>, key: &str| {
        let v = v.as_ref()?;
        if v.get_ref().trim().is_empty() {
            c.report(
                Some(v.span()),
                format!("{at}.hooks.{key}"),
                "must not be empty (leave it out for no hook)",
            );
            return None;
        }
        Some(v.get_ref().clone())
    };
    let before = command(c, &raw.before, "before");
    let after = command(c, &raw.after, "after");
    let timeout_secs = int_in(
        c,
        raw.timeout_secs.as_ref(),
        &format!("{at}.hooks.timeout-secs"),
        1..=86400,
        "seconds each hook may take before it is killed",
    )
    .map_or(DEFAULT_HOOK_TIMEOUT_SECS, |v| v as u64);
    Hooks {
        before,
        after,
        timeout_secs,
    }
}

/// `[[jobs.commands]]`: names are valid, unique, neither a file and a
/// directory at once, and the job's paths keep out of where they go.
fn commands(
    c: &mut Checker<'_>,
    raw: &[Spanned<RawCommand>],
    paths: &[PathBuf],
    raw_paths: &[Spanned<String>],
    at: &str,
) -> Vec<CommandSource> {
    let mut out: Vec<(usize, CommandSource)> = Vec::new();
    for (k, cmd) in raw.iter().enumerate() {
        let here = format!("{at}.commands[{k}]");
        let cmd = cmd.get_ref();
        let name = cmd.name.get_ref();
        if let Err(why) = check_stream_name(name) {
            c.report(Some(cmd.name.span()), format!("{here}.name"), why);
            continue;
        }
        if let Some((j, other)) = out.iter().find(|(_, o)| {
            o.name == *name
                || name.starts_with(&format!("{}/", o.name))
                || o.name.starts_with(&format!("{name}/"))
        }) {
            let msg = if other.name == *name {
                format!("duplicate command name {name:?} (also {at}.commands[{j}].name)")
            } else {
                let (file, inside) = if name.starts_with(&other.name) {
                    (&other.name, name)
                } else {
                    (name, &other.name)
                };
                format!(
                    "{name:?} and {:?} ({at}.commands[{j}].name) collide: {file:?} would be a file and the \
                     directory of {inside:?}",
                    other.name
                )
            };
            c.report(Some(cmd.name.span()), format!("{here}.name"), msg);
            continue;
        }
        if cmd.command.get_ref().trim().is_empty() {
            c.report(
                Some(cmd.command.span()),
                format!("{here}.command"),
                "must not be empty",
            );
        }
        let timeout_secs = int_in(
            c,
            cmd.timeout_secs.as_ref(),
            &format!("{here}.timeout-secs"),
            1..=604_800,
            "seconds the command may take before it is killed",
        )
        .map(|v| v as u64);
        out.push((
            k,
            CommandSource {
                name: name.clone(),
                command: cmd.command.get_ref().clone(),
                timeout_secs,
            },
        ));
    }
    if !out.is_empty() {
        // The command sources' files are placed below STREAMS_ROOT: no path
        // of the job may be there too.
        for (p, raw) in paths.iter().zip(raw_paths) {
            if p.starts_with(STREAMS_ROOT) {
                c.report(
                    Some(raw.span()),
                    format!("{at}.paths"),
                    format!(
                        "{} is where the job's command sources are placed ({STREAMS_ROOT}/NAME): it cannot \
                         also be one of its paths",
                        p.display()
                    ),
                );
            }
        }
    }
    out.into_iter().map(|(_, c)| c).collect()
}

/// `[[jobs.map]]`: each maps one of the job's paths, once, from elsewhere.
fn path_map(c: &mut Checker<'_>, raw: &[Spanned<RawMap>], paths: &[PathBuf], at: &str) -> Vec<PathMap> {
    let mut out: Vec<(usize, PathMap)> = Vec::new();
    for (k, m) in raw.iter().enumerate() {
        let here = format!("{at}.map[{k}]");
        let m = m.get_ref();
        let from = c.absolute_path(&m.from, &format!("{here}.from"));
        let to = c.absolute_path(&m.to, &format!("{here}.to"));
        let (Some(from), Some(to)) = (from, to) else {
            continue;
        };
        if !paths.contains(&to) {
            c.report(
                Some(m.to.span()),
                format!("{here}.to"),
                format!(
                    "{} is not one of the job's paths: a mapping says where one of them is read from",
                    to.display()
                ),
            );
            continue;
        }
        if let Some((j, _)) = out.iter().find(|(_, o)| o.to == to) {
            c.report(
                Some(m.to.span()),
                format!("{here}.to"),
                format!("{} is mapped twice (also {at}.map[{j}].to)", to.display()),
            );
            continue;
        }
        if from == to {
            c.report(
                Some(m.from.span()),
                format!("{here}.from"),
                format!("{} is read from itself: leave the mapping out", from.display()),
            );
            continue;
        }
        out.push((k, PathMap { from, to }));
    }
    out.into_iter().map(|(_, m)| m).collect()
}

fn hardening(c: &mut Checker<'_>, raw: &RawHardening) -> Hardening {
    let days = |c: &mut Checker<'_>, v: &Option<Spanned<i64>>, path: &str, min: i64, default: u32| {
        int_in(c, v.as_ref(), path, min..=36500, "days").map_or(default, |d| d as u32)
    };
    let lifecycle = Lifecycle {
        archive_after_days: days(c, &raw.archive_after_days, "hardening.archive-after-days", 0, 30),
        archive_class: match raw.archive_class.as_ref().map(|a| *a.get_ref()) {
            Some(RawArchiveClass::GlacierIr) => StorageClass::GlacierIr,
            Some(RawArchiveClass::Glacier) => StorageClass::Glacier,
            None | Some(RawArchiveClass::DeepArchive) => StorageClass::DeepArchive,
        },
        abort_incomplete_uploads_days: days(
            c,
            &raw.abort_incomplete_uploads_days,
            "hardening.abort-incomplete-uploads-days",
            1,
            7,
        ),
        noncurrent_transition_days: days(
            c,
            &raw.noncurrent_transition_days,
            "hardening.noncurrent-transition-days",
            0,
            0,
        ),
        noncurrent_expire_days: days(
            c,
            &raw.noncurrent_expire_days,
            "hardening.noncurrent-expire-days",
            0,
            0,
        ),
    };
    let access_log_bucket = raw.access_log_bucket.as_ref().map(|b| {
        if let Err(why) = check_bucket_name(b.get_ref()) {
            c.report(
                Some(b.span()),
                "hardening.access-log-bucket",
                format!("{:?} is not a valid bucket name: {why}", b.get_ref()),
            );
        }
        b.get_ref().clone()
    });
    let access_log_prefix = raw
        .access_log_prefix
        .as_ref()
        .map_or_else(|| "s3-access-logs/".to_string(), |p| p.get_ref().clone());
    let c = &raw.checks;
    let given = [
        c.public_access_block,
        c.no_public_policy,
        c.acls_disabled,
        c.versioning,
        c.default_encryption,
        c.tls_only,
        c.access_logging,
        c.lifecycle_archive,
        c.lifecycle_abort_mpu,
        c.lifecycle_no_early_expiry,
        c.object_lock,
        c.kms_key,
        c.account_public_access_block,
    ];
    let policies = CHECKS
        .iter()
        .zip(given)
        .map(|(&(id, default), given)| {
            let policy = match given {
                Some(RawPolicy::Abort) => CheckPolicy::Abort,
                Some(RawPolicy::Warn) => CheckPolicy::Warn,
                None => default,
            };
            (id, policy)
        })
        .collect();
    Hardening {
        accept_unknown: raw.accept_unknown.unwrap_or(false),
        policies,
        lifecycle,
        access_log_bucket,
        access_log_prefix,
    }
}

fn valid_host(h: &str) -> bool {
    (1..=253).contains(&h.len())
        && !h.starts_with(['.', '-'])
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

fn valid_job_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_'))
}

fn valid_prefix(p: &str) -> bool {
    p.is_empty()
        || p.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        })
}

/// Fields that belong to one repository type, reported when given for another.
const LOCAL_ONLY: &str = "path";

fn repository(
    c: &mut Checker<'_>,
    repo: RawRepository,
    repo_span: Range<usize>,
    prefix: String,
    aws: &Aws,
) -> Repository {
    let kind = *repo.kind.get_ref();
    let misplaced = |c: &mut Checker<'_>, span: Range<usize>, field: &str, kind: &str| {
        c.report(
            Some(span),
            format!("repository.{field}"),
            format!("is only used with type = \"{kind}\""),
        );
    };
    match kind {
        RepositoryType::Local => {
            for (field, span) in [
                ("bucket", repo.bucket.as_ref().map(Spanned::span)),
                ("endpoint", repo.endpoint.as_ref().map(Spanned::span)),
                ("path-style", repo.path_style.as_ref().map(Spanned::span)),
                ("storage-class", repo.storage_class.as_ref().map(Spanned::span)),
                ("tier-tag", repo.tier_tag.as_ref().map(Spanned::span)),
                ("part-size-mib", repo.part_size_mib.as_ref().map(Spanned::span)),
                (
                    "parts-in-flight",
                    repo.parts_in_flight.as_ref().map(Spanned::span),
                ),
                (
                    "request-checksum",
                    repo.request_checksum.as_ref().map(Spanned::span),
                ),
                ("restore-tier", repo.restore_tier.as_ref().map(Spanned::span)),
                ("restore-days", repo.restore_days.as_ref().map(Spanned::span)),
            ] {
                if let Some(span) = span {
                    misplaced(c, span, field, "s3");
                }
            }
            let path = match &repo.path {
                Some(p) => c.absolute_path(p, "repository.path").unwrap_or_default(),
                None => {
                    c.report(
                        Some(repo_span),
                        "repository",
                        "missing key `path` (required when type = \"local\")",
                    );
                    PathBuf::new()
                }
            };
            Repository::Local { path, prefix }
        }
        RepositoryType::S3 => {
            if let Some(p) = &repo.path {
                misplaced(c, p.span(), LOCAL_ONLY, "local");
            }
            let bucket = match &repo.bucket {
                Some(b) => {
                    if let Err(why) = check_bucket_name(b.get_ref()) {
                        c.report(
                            Some(b.span()),
                            "repository.bucket",
                            format!("{:?} is not a valid bucket name: {why}", b.get_ref()),
                        );
                    }
                    b.get_ref().clone()
                }
                None => {
                    c.report(
                        Some(repo_span),
                        "repository",
                        "missing key `bucket` (required when type = \"s3\")",
                    );
                    String::new()
                }
            };
            let endpoint = repo
                .endpoint
                .as_ref()
                .and_then(|e| endpoint(c, e, "repository.endpoint", aws));
            let storage_class = match repo.storage_class.as_ref().map(|s| *s.get_ref()) {
                None | Some(RawStorageClass::Standard) => StorageClass::Standard,
                Some(RawStorageClass::GlacierIr) => StorageClass::GlacierIr,
                Some(RawStorageClass::Glacier) => StorageClass::Glacier,
                Some(RawStorageClass::DeepArchive) => StorageClass::DeepArchive,
            };
            let tier_tag = match &repo.tier_tag {
                Some(t) => match parse_tag(t.get_ref()) {
                    Ok(tag) => tag,
                    Err(why) => {
                        c.report(
                            Some(t.span()),
                            "repository.tier-tag",
                            format!("{:?} is not a valid tag: {why}", t.get_ref()),
                        );
                        Tag {
                            key: String::new(),
                            value: String::new(),
                        }
                    }
                },
                None => parse_tag(DEFAULT_TIER_TAG).unwrap_or_else(|_| Tag {
                    key: String::new(),
                    value: String::new(),
                }),
            };
            let part_size_mib = int_in(
                c,
                repo.part_size_mib.as_ref(),
                "repository.part-size-mib",
                5..=5120,
                "S3 parts are 5 MiB to 5 GiB",
            )
            .map_or(DEFAULT_PART_SIZE_MIB, |v| v as u64);
            let parts_in_flight = int_in(
                c,
                repo.parts_in_flight.as_ref(),
                "repository.parts-in-flight",
                1..=64,
                "each part in flight holds one part-sized buffer",
            )
            .map_or(DEFAULT_PARTS_IN_FLIGHT, |v| v as usize);
            let request_checksum = match repo.request_checksum.as_ref().map(|r| *r.get_ref()) {
                None | Some(RawChecksumPolicy::WhenSupported) => ChecksumPolicy::WhenSupported,
                Some(RawChecksumPolicy::WhenRequired) => ChecksumPolicy::WhenRequired,
            };
            let restore_tier = match &repo.restore_tier {
                Some(t) if matches!(t.get_ref().as_str(), "Standard" | "Bulk" | "Expedited") => {
                    t.get_ref().clone()
                }
                Some(t) => {
                    c.report(
                        Some(t.span()),
                        "repository.restore-tier",
                        format!(
                            "{:?} is not a retrieval tier: expected \"Standard\", \"Bulk\" or \"Expedited\"",
                            t.get_ref()
                        ),
                    );
                    DEFAULT_RESTORE_TIER.to_string()
                }
                None => DEFAULT_RESTORE_TIER.to_string(),
            };
            let restore_days = int_in(
                c,
                repo.restore_days.as_ref(),
                "repository.restore-days",
                1..=365,
                "days a thawed copy of a Glacier archive stays readable",
            )
            .map_or(DEFAULT_RESTORE_DAYS, |v| v as u32);
            Repository::S3(S3Repository {
                bucket,
                restore_tier,
                restore_days,
                prefix,
                endpoint,
                path_style: repo.path_style.as_ref().is_some_and(|p| *p.get_ref()),
                storage_class,
                tier_tag,
                part_size: part_size_mib << 20,
                parts_in_flight,
                request_checksum,
            })
        }
    }
}

fn key(c: &mut Checker<'_>, raw: &RawKey, state_dir: &Path, aws: &Aws) -> KeyConfig {
    let provider = raw
        .provider
        .as_ref()
        .map_or(KeyProviderKind::Local, |p| *p.get_ref());
    match provider {
        KeyProviderKind::Local => {
            for (field, span) in [
                ("key-id", raw.key_id.as_ref().map(Spanned::span)),
                ("endpoint", raw.endpoint.as_ref().map(Spanned::span)),
                (
                    "accepted-keys",
                    raw.accepted_keys
                        .as_ref()
                        .and_then(|k| k.first())
                        .map(Spanned::span),
                ),
            ] {
                if let Some(span) = span {
                    c.report(
                        Some(span),
                        format!("key.{field}"),
                        "is only used with provider = \"kms\"",
                    );
                }
            }
            let file = match &raw.file {
                Some(f) => c.absolute_path(f, "key.file").unwrap_or_default(),
                None => state_dir.join("keys").join("master.key"),
            };
            let storage = match raw.storage.as_ref().map(|s| *s.get_ref()) {
                None | Some(RawKeyStorage::Auto) => KeyStorage::Auto,
                Some(RawKeyStorage::Keyring) => KeyStorage::Keyring,
                Some(RawKeyStorage::File) => KeyStorage::File,
            };
            KeyConfig::Local { storage, file }
        }
        KeyProviderKind::Kms => {
            for (field, span) in [
                ("file", raw.file.as_ref().map(Spanned::span)),
                ("storage", raw.storage.as_ref().map(Spanned::span)),
            ] {
                if let Some(span) = span {
                    c.report(
                        Some(span),
                        format!("key.{field}"),
                        "is only used with provider = \"local\"",
                    );
                }
            }
            let key_id = match &raw.key_id {
                Some(k) => {
                    if !valid_kms_key_id(k.get_ref()) {
                        c.report(
                            Some(k.span()),
                            "key.key-id",
                            format!(
                                "{:?} is not a KMS key id: expected a key id (1234abcd-…), an alias \
                                 (alias/NAME) or a key or alias ARN (arn:aws:kms:REGION:ACCOUNT:key/…)",
                                k.get_ref()
                            ),
                        );
                    }
                    k.get_ref().clone()
                }
                None => {
                    let span = raw.provider.as_ref().map(Spanned::span);
                    c.report(
                        span,
                        "key",
                        "missing key `key-id` (required when provider = \"kms\")",
                    );
                    String::new()
                }
            };
            let endpoint = raw
                .endpoint
                .as_ref()
                .and_then(|e| endpoint(c, e, "key.endpoint", aws));
            let mut accepted_keys = Vec::new();
            for (i, k) in raw.accepted_keys.iter().flatten().enumerate() {
                // Key ARNs only: an alias can be pointed elsewhere by whoever
                // may update aliases, and a bare id depends on the Region.
                if !valid_kms_key_arn(k.get_ref()) {
                    c.report(
                        Some(k.span()),
                        format!("key.accepted-keys[{i}]"),
                        format!(
                            "{:?} is not a KMS key ARN: accepted keys must be full key ARNs \
                             (arn:aws:kms:REGION:ACCOUNT:key/ID), not aliases or bare ids, so that \
                             what is trusted cannot be redirected",
                            k.get_ref()
                        ),
                    );
                } else {
                    accepted_keys.push(k.get_ref().clone());
                }
            }
            KeyConfig::Kms {
                key_id,
                endpoint,
                accepted_keys,
            }
        }
    }
}

fn aws(c: &mut Checker<'_>, raw: &RawAws) -> Aws {
    let nonempty = |c: &mut Checker<'_>, v: &Option<Spanned<String>>, path: &str| -> Option<String> {
        let v = v.as_ref()?;
        if v.get_ref().trim().is_empty() {
            c.report(
                Some(v.span()),
                path,
                "must not be empty (leave it out to use the default)",
            );
            return None;
        }
        Some(v.get_ref().clone())
    };
    let region = nonempty(c, &raw.region, "aws.region");
    if let Some(r) = &raw.region
        && !r.get_ref().is_empty()
        && !r
            .get_ref()
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        c.report(
            Some(r.span()),
            "aws.region",
            format!(
                "{:?} is not a region name (expected e.g. \"eu-west-1\")",
                r.get_ref()
            ),
        );
    }
    let profile = nonempty(c, &raw.profile, "aws.profile");
    let ca_bundle = raw
        .ca_bundle
        .as_ref()
        .and_then(|p| c.absolute_path(p, "aws.ca-bundle"));
    let max_attempts = int_in(
        c,
        raw.max_attempts.as_ref(),
        "aws.max-attempts",
        1..=20,
        "attempts per request, the first included",
    )
    .map_or(DEFAULT_MAX_ATTEMPTS, |v| v as u32);
    let timeout_secs = int_in(
        c,
        raw.timeout_secs.as_ref(),
        "aws.timeout-secs",
        1..=3600,
        "seconds per attempt",
    )
    .map_or(DEFAULT_TIMEOUT_SECS, |v| v as u64);
    let mut aws = Aws {
        region,
        profile,
        ca_bundle,
        allow_http: raw.allow_http.unwrap_or(false),
        max_attempts,
        timeout_secs,
        sns_endpoint: None,
    };
    aws.sns_endpoint = raw
        .sns_endpoint
        .as_ref()
        .and_then(|e| endpoint(c, e, "aws.sns-endpoint", &aws));
    aws
}

/// An integer setting within `range`, or a reported problem.
fn int_in(
    c: &mut Checker<'_>,
    value: Option<&Spanned<i64>>,
    path: &str,
    range: std::ops::RangeInclusive<i64>,
    why: &str,
) -> Option<i64> {
    let v = value?;
    if range.contains(v.get_ref()) {
        Some(*v.get_ref())
    } else {
        c.report(
            Some(v.span()),
            path,
            format!(
                "{} is out of range: expected {} to {} ({why})",
                v.get_ref(),
                range.start(),
                range.end()
            ),
        );
        None
    }
}

/// An endpoint URL: `https://host[:port][/]`, or `http://` when allowed.
fn endpoint(c: &mut Checker<'_>, value: &Spanned<String>, path: &str, aws: &Aws) -> Option<String> {
    let url = value.get_ref();
    let (scheme, rest) = match url.split_once("://") {
        Some(parts) => parts,
        None => {
            c.report(
                Some(value.span()),
                path,
                format!("{url:?} is not a URL: expected https://HOST[:PORT]"),
            );
            return None;
        }
    };
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains(['/', '?', '#', '@', ' ']) {
        c.report(
            Some(value.span()),
            path,
            format!(
                "{url:?} is not an endpoint URL: expected https://HOST[:PORT] with no path, query or user"
            ),
        );
        return None;
    }
    match scheme {
        "https" => Some(url.trim_end_matches('/').to_string()),
        "http" if aws.allow_http => Some(url.trim_end_matches('/').to_string()),
        "http" => {
            c.report(
                Some(value.span()),
                path,
                format!(
                    "plain-http endpoint {url:?} refused: requests, data and signatures would cross the \
                     network unencrypted; use https, or set aws.allow-http = true for a trusted test network"
                ),
            );
            None
        }
        other => {
            c.report(
                Some(value.span()),
                path,
                format!("unsupported URL scheme {other:?}: expected https (or http with aws.allow-http)"),
            );
            None
        }
    }
}

/// S3's bucket naming rules (general purpose buckets).
fn check_bucket_name(b: &str) -> Result<(), &'static str> {
    if !(3..=63).contains(&b.len()) {
        return Err("must be 3 to 63 characters long");
    }
    if !b
        .bytes()
        .all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || x == b'.' || x == b'-')
    {
        return Err("use only lowercase letters, digits, `.` and `-`");
    }
    let first_last_ok = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !first_last_ok(b.as_bytes()[0]) || !first_last_ok(b.as_bytes()[b.len() - 1]) {
        return Err("must begin and end with a letter or digit");
    }
    if b.contains("..") {
        return Err("must not contain two adjacent periods");
    }
    if b.split('.').count() == 4 && b.split('.').all(|p| p.parse::<u8>().is_ok()) {
        return Err("must not be formatted as an IP address");
    }
    Ok(())
}

fn parse_tag(t: &str) -> Result<Tag, &'static str> {
    let (key, value) = t.split_once('=').ok_or("expected KEY=VALUE")?;
    let ok = |s: &str| {
        s.chars()
            .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '+' | '-' | '=' | '.' | '_' | ':' | '/' | '@'))
    };
    if key.is_empty() || key.chars().count() > 128 {
        return Err("the key must be 1 to 128 characters");
    }
    if value.chars().count() > 256 {
        return Err("the value must be at most 256 characters");
    }
    if !ok(key) || !ok(value) {
        return Err("use letters, digits, spaces and + - = . _ : / @");
    }
    if key.starts_with("aws:") {
        return Err("keys starting with `aws:` are reserved by AWS");
    }
    Ok(Tag {
        key: key.to_string(),
        value: value.to_string(),
    })
}

/// True for a full KMS key ARN (`arn:aws:kms:REGION:ACCOUNT:key/ID`): the
/// key itself, which needs no lookup (an alias or a bare id does).
pub fn valid_kms_key_arn(k: &str) -> bool {
    let parts: Vec<&str> = k.splitn(6, ':').collect();
    matches!(parts.as_slice(), ["arn", _, "kms", region, account, resource]
    if !region.is_empty()
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && resource.strip_prefix("key/").is_some_and(|id| {
            !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        }))
}

fn valid_kms_key_id(k: &str) -> bool {
    let plain = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/' | b'.' | b':'))
    };
    if let Some(rest) = k.strip_prefix("arn:") {
        // arn:PARTITION:kms:REGION:ACCOUNT:key/ID or :alias/NAME
        let parts: Vec<&str> = rest.splitn(5, ':').collect();
        return parts.len() == 5
            && parts[1] == "kms"
            && (parts[4].starts_with("key/") || parts[4].starts_with("alias/"))
            && plain(parts[4]);
    }
    if let Some(name) = k.strip_prefix("alias/") {
        return plain(name) && !name.starts_with("aws/");
    }
    k.len() <= 2048 && plain(k) && !k.contains('/')
}
