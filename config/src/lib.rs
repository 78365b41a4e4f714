//! vaultline's configuration: the TOML schema, its defaults, and validation
//! that reports every problem precisely.
//!
//! Loading has two stages. [`raw`](crate::raw) deserializes the file with
//! unknown keys rejected and every value carrying its span; `validate` then
//! applies defaults and checks meanings, producing a [`Config`] whose values
//! can no longer be wrong. Every problem, from either stage, is reported as
//! `FILE:LINE:COLUMN: TOML.PATH: message` (see [`ConfigError`]), for example
//!
//! ```text
//! config.toml:14:12: jobs[1].schedule: invalid cron expression "61 * * * *": minute must be 0-59
//! ```
//!
//! This crate knows TOML and validation only. What it needs from the running
//! system (host name, HOME, XDG directories, whether it runs as root) comes in
//! an [`Environment`] the caller fills, which keeps loading a pure function
//! and testable. `packaging/config/vaultline.toml` documents every key.

mod cron;
mod error;
mod model;
mod pattern;
mod raw;
mod validate;

use std::path::{Path, PathBuf};

pub use cron::Schedule;
pub use error::{ConfigError, Problem};
pub use model::{
    Agent, Aws, CHECKS, CheckPolicy, ChecksumPolicy, CommandSource, Config, Excludes, Hardening, Hooks, Job,
    KEEP_EVERYTHING_FLOOR_DAYS, KeyConfig, KeyStorage, Lifecycle, MAX_STREAM_NAME, ObjectLock, OnChange,
    PathMap, Repository, Retention, RetentionFloor, S3Repository, STREAMS_ROOT, StorageClass, Tag,
    check_stream_name, stream_path,
};
pub use pattern::{PatternError, Patterns};
pub use validate::{
    DEFAULT_COMPRESSION_LEVEL, DEFAULT_FULL_EVERY_DAYS, DEFAULT_FULL_EVERY_RUNS, DEFAULT_HOOK_TIMEOUT_SECS,
    DEFAULT_MAX_ATTEMPTS, DEFAULT_PART_SIZE_MIB, DEFAULT_PARTS_IN_FLIGHT, DEFAULT_PREFIX,
    DEFAULT_RESTORE_DAYS, DEFAULT_RESTORE_TIER, DEFAULT_TIER_TAG, DEFAULT_TIMEOUT_SECS, ROOT_METRICS_FILE,
    ROOT_STATE_DIR, valid_kms_key_arn,
};

use error::LineIndex;

/// The system facts configuration defaults depend on.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// The machine's host name.
    pub hostname: Option<String>,
    /// Whether the process runs as root.
    pub is_root: bool,
    /// Whether the configuration file belongs to root: the system's
    /// configuration, whose state is the system's whoever reads it.
    pub config_of_root: bool,
    /// `$HOME`.
    pub home: Option<PathBuf>,
    /// `$XDG_CONFIG_HOME`.
    pub xdg_config_home: Option<PathBuf>,
    /// `$XDG_STATE_HOME`.
    pub xdg_state_home: Option<PathBuf>,
    /// `$VAULTLINE_CONFIG`.
    pub config_env: Option<PathBuf>,
}

/// The system-wide configuration file.
pub const SYSTEM_CONFIG: &str = "/etc/vaultline/config.toml";

impl Environment {
    /// The state directory when none is configured: `/var/lib/vaultline` for
    /// root or a configuration of root's (a user reading the system's
    /// configuration reads the system's state, not an empty one of their
    /// own), else `$XDG_STATE_HOME/vaultline` (default
    /// `~/.local/state/vaultline`).
    pub fn default_state_dir(&self) -> Option<PathBuf> {
        if self.is_root || self.config_of_root {
            return Some(PathBuf::from(ROOT_STATE_DIR));
        }
        absolute(&self.xdg_state_home)
            .or_else(|| absolute(&self.home).map(|h| h.join(".local/state")))
            .map(|d| d.join("vaultline"))
    }

    /// The per-user configuration file: `$XDG_CONFIG_HOME/vaultline/config.toml`
    /// (default `~/.config/vaultline/config.toml`).
    pub fn user_config(&self) -> Option<PathBuf> {
        absolute(&self.xdg_config_home)
            .or_else(|| absolute(&self.home).map(|h| h.join(".config")))
            .map(|d| d.join("vaultline").join("config.toml"))
    }
}

/// XDG says relative values are to be ignored.
fn absolute(p: &Option<PathBuf>) -> Option<PathBuf> {
    p.as_ref().filter(|p| p.is_absolute()).cloned()
}

/// Finds the configuration file: `explicit` (`--config`), else
/// `$VAULTLINE_CONFIG`, else `/etc/vaultline/config.toml`, else
/// `$XDG_CONFIG_HOME/vaultline/config.toml`: the first one given or existing.
pub fn locate(explicit: Option<&Path>, env: &Environment) -> Result<PathBuf, ConfigError> {
    if let Some(p) = explicit.or(env.config_env.as_deref()) {
        return Ok(p.to_path_buf());
    }
    let mut searched = vec![PathBuf::from(SYSTEM_CONFIG)];
    searched.extend(env.user_config());
    match searched.iter().find(|p| p.is_file()) {
        Some(p) => Ok(p.clone()),
        None => Err(ConfigError::NotFound { searched }),
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path, env: &Environment) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path, env)
    }

    /// Validates `text` as if read from `file` (which only names it in errors).
    pub fn parse(text: &str, file: &Path, env: &Environment) -> Result<Config, ConfigError> {
        let index = LineIndex::new(text);
        let invalid = |problems| ConfigError::Invalid {
            file: file.to_path_buf(),
            problems,
        };
        let deserializer = match toml::Deserializer::parse(text) {
            Ok(d) => d,
            Err(e) => return Err(invalid(vec![index.problem(e.span(), "", e.message().trim())])),
        };
        let raw: raw::RawConfig = match serde_path_to_error::deserialize(deserializer) {
            Ok(raw) => raw,
            Err(e) => {
                let path = clean_path(&e.path().to_string());
                let inner = e.into_inner();
                return Err(invalid(vec![index.problem(
                    inner.span(),
                    path,
                    error::in_words(inner.message().trim()),
                )]));
            }
        };
        validate::validate(raw, file, &index, env).map_err(invalid)
    }
}

/// serde_path_to_error shows `Spanned`'s private wrapper field; drop it.
fn clean_path(path: &str) -> String {
    let cleaned: Vec<&str> = path.split('.').filter(|seg| !seg.starts_with("$__")).collect();
    let joined = cleaned.join(".");
    if joined == "." { String::new() } else { joined }
}
