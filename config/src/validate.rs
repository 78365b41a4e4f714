//! Stage two: from the raw file to a [`Config`], applying defaults and
//! collecting every problem with its position and TOML path.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use globset::{GlobBuilder, GlobSetBuilder};
use toml::Spanned;

use crate::Environment;
use crate::cron::Schedule;
use crate::error::{LineIndex, Problem};
use crate::model::*;
use crate::raw::*;

/// Defaults, in one place (also documented in packaging/config/vaultline.toml).
pub const DEFAULT_PREFIX: &str = "vaultline";
/// zstd level when a job gives none: zstd's own default.
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 3;
/// The state directory when running as root.
pub const ROOT_STATE_DIR: &str = "/var/lib/vaultline";

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
    let repository = match *repo.kind.get_ref() {
        RepositoryType::Local => match &repo.path {
            Some(p) => Repository::Local {
                path: c.absolute_path(p, "repository.path").unwrap_or_default(),
                prefix,
            },
            None => {
                c.report(
                    Some(repo_span),
                    "repository",
                    "missing field `path` (required when type = \"local\")",
                );
                Repository::Local {
                    path: PathBuf::new(),
                    prefix,
                }
            }
        },
    };

    // [key]
    let key_file = match &raw.key.file {
        Some(f) => c.absolute_path(f, "key.file").unwrap_or_default(),
        None => state_dir.join("keys").join("master.key"),
    };
    let storage = match raw.key.storage.unwrap_or(RawKeyStorage::Auto) {
        RawKeyStorage::Auto => KeyStorage::Auto,
        RawKeyStorage::Keyring => KeyStorage::Keyring,
        RawKeyStorage::File => KeyStorage::File,
    };
    let provider = raw
        .key
        .provider
        .as_ref()
        .map_or(KeyProviderKind::Local, |p| *p.get_ref());
    let key = match provider {
        KeyProviderKind::Local => KeyConfig::Local {
            storage,
            file: key_file,
        },
    };

    // [hardening]
    let hardening = hardening(&raw.hardening);

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
        if job.paths.get_ref().is_empty() {
            c.report(
                Some(job.paths.span()),
                format!("{at}.paths"),
                "at least one path is required",
            );
        }
        for (k, p) in job.paths.get_ref().iter().enumerate() {
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

        let mut by_name = GlobSetBuilder::new();
        let mut by_path = GlobSetBuilder::new();
        let mut patterns = Vec::new();
        for (k, pat) in job.exclude.iter().enumerate() {
            let text = pat.get_ref();
            match GlobBuilder::new(text)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
            {
                Ok(glob) if text.contains('/') => {
                    by_path.add(glob);
                }
                Ok(glob) => {
                    by_name.add(glob);
                }
                Err(e) => {
                    c.report(
                        Some(pat.span()),
                        format!("{at}.exclude[{k}]"),
                        format!("invalid glob {text:?}: {}", glob_reason(&e)),
                    );
                    continue;
                }
            }
            patterns.push(text.clone());
        }
        let exclude = match (by_name.build(), by_path.build()) {
            (Ok(by_name), Ok(by_path)) => Excludes {
                patterns,
                by_name,
                by_path,
            },
            (Err(e), _) | (_, Err(e)) => {
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
        let r = job.retention.as_ref();
        let retention = Retention {
            keep_last: r.and_then(|r| r.keep_last).unwrap_or(0),
            keep_hourly: r.and_then(|r| r.keep_hourly).unwrap_or(0),
            keep_daily: r.and_then(|r| r.keep_daily).unwrap_or(0),
            keep_weekly: r.and_then(|r| r.keep_weekly).unwrap_or(0),
            keep_monthly: r.and_then(|r| r.keep_monthly).unwrap_or(0),
            keep_yearly: r.and_then(|r| r.keep_yearly).unwrap_or(0),
        };
        jobs.push(Job {
            name: name.clone(),
            paths,
            exclude,
            one_file_system: job.one_file_system.unwrap_or(false),
            compression_level,
            compression_threads,
            schedule,
            watch: job.watch.unwrap_or(false),
            retention,
        });
    }

    if c.problems.is_empty() {
        Ok(Config {
            file: file.to_path_buf(),
            agent: Agent { host, state_dir },
            repository,
            key,
            hardening,
            jobs,
        })
    } else {
        c.problems.sort_by_key(|p| (p.line, p.column));
        Err(c.problems)
    }
}

fn hardening(raw: &RawHardening) -> Hardening {
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
    }
}

fn glob_reason(e: &globset::Error) -> String {
    e.kind().to_string()
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
