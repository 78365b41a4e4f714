//! What every command starts from: the loaded configuration, the repository
//! it names, the key provider, and the output settings.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use aws_config::SdkConfig;
use vaultline_config::{Config, Environment, KeyConfig, Repository};

use crate::cli::args::Cli;
use crate::cli::output::Output;
use crate::error::UsageError;
use crate::keys::kms::KmsKeyWrap;
use crate::keys::local::{LocalKey, LocalKeySettings, MissingKey};
use crate::keys::{CountingKeys, Keys};
use crate::ops::report::{Destinations, Recorder};
use crate::repo::Repo;
use crate::repo::store::local::LocalStore;
use crate::repo::store::s3::S3Store;

const NO_SDK: &str = "internal error: the AWS configuration was not loaded";

/// A loaded configuration and what it implies.
pub struct App {
    /// The configuration.
    pub config: Config,
    /// The repository it names.
    pub repo: Repo,
    /// Output settings.
    pub out: Output,
    local_store: Option<LocalStore>,
    /// Loaded when the repository or the key is in AWS.
    sdk: Option<SdkConfig>,
    s3_client: Option<aws_sdk_s3::Client>,
    /// Built up front with the S3 client, so that an endpoint that is not
    /// allowed stops a command before it sends anything anywhere.
    kms_client: Option<aws_sdk_kms::Client>,
    sts_client: Option<aws_sdk_sts::Client>,
    sns_client: Option<aws_sdk_sns::Client>,
}

impl App {
    /// Locates and loads the configuration named by the flags.
    pub fn load(cli: &Cli, out: Output) -> Result<App> {
        let mut env = process_environment();
        let path = vaultline_config::locate(cli.config.as_deref(), &env)?;
        env.config_of_root = config_of_root(&path);
        let config = Config::load(&path, &env)?;
        tracing::debug!("configuration {}", path.display());
        if env.is_root {
            check_commands_file(&config)?;
        }
        App::with_output(config, out)
    }

    /// An app for a configuration loaded elsewhere (the agent's reloads).
    pub fn from_config(config: Config) -> Result<App> {
        App::with_output(
            config,
            Output {
                json: false,
                quiet: true,
                verbose: 0,
                log_json: false,
            },
        )
    }

    fn with_output(config: Config, out: Output) -> Result<App> {
        let uses_aws = matches!(config.repository, Repository::S3(_))
            || matches!(config.key, KeyConfig::Kms { .. })
            || config.jobs.iter().any(|j| j.on_failure_sns.is_some());
        let sdk = if uses_aws {
            Some(crate::cloud::aws::sdk_config(&config.aws).context("setting up the AWS clients")?)
        } else {
            None
        };
        let mut s3_client = None;
        let (repo, local_store) = match &config.repository {
            Repository::Local { path, prefix } => {
                let store = LocalStore::new(path);
                (Repo::new(Arc::new(store.clone()), prefix), Some(store))
            }
            Repository::S3(s3) => {
                let client = crate::cloud::aws::s3_client(sdk.as_ref().context(NO_SDK)?, &config.aws, s3)
                    .context("setting up the AWS clients")?;
                s3_client = Some(client.clone());
                let store = S3Store::new(client, s3.clone(), &config.aws);
                (Repo::new(Arc::new(store), &s3.prefix), None)
            }
        };
        let (mut kms_client, mut sts_client, mut sns_client) = (None, None, None);
        if let Some(sdk) = &sdk {
            let aws = &config.aws;
            let setup = "setting up the AWS clients";
            if let KeyConfig::Kms { endpoint, .. } = &config.key {
                kms_client =
                    Some(crate::cloud::aws::kms_client(sdk, aws, endpoint.as_deref()).context(setup)?);
            }
            sts_client = Some(crate::cloud::aws::sts_client(sdk, aws, sts_endpoint(&config)).context(setup)?);
            if config.jobs.iter().any(|j| j.on_failure_sns.is_some()) {
                sns_client = Some(crate::cloud::aws::sns_client(sdk, aws).context(setup)?);
            }
        }
        Ok(App {
            config,
            repo,
            out,
            local_store,
            sdk,
            s3_client,
            kms_client,
            sts_client,
            sns_client,
        })
    }

    /// The audit trail for this invocation of `command`: who is the AWS
    /// caller identity (STS) for AWS configurations, else the local user.
    pub fn audit(&self, command: &str) -> crate::ops::audit_log::AuditLog {
        use sha2::Digest;
        let who = match &self.sts_client {
            Some(sts) => match crate::cloud::aws::block_on(sts.get_caller_identity().send()) {
                Ok(Ok(id)) => id.arn().unwrap_or("unknown AWS principal").to_string(),
                Ok(Err(e)) => format!("unknown AWS principal ({})", crate::cloud::aws::describe(&e)),
                Err(e) => format!("unknown AWS principal ({e:#})"),
            },
            None => local_user(),
        };
        let config_sha256 = std::fs::read(&self.config.file)
            .map(|b| hex::encode(sha2::Sha256::digest(&b)))
            .unwrap_or_default();
        crate::ops::audit_log::AuditLog::new(
            &self.config.agent.state_dir,
            who,
            crate::ops::audit_log::How {
                command: command.to_string(),
                host: self.config.agent.host.clone(),
                version: env!("CARGO_PKG_VERSION"),
                config_sha256,
            },
        )
    }

    /// The recorder of this invocation of `command` (see [`crate::ops::report`]).
    pub fn recorder(&self, command: &str) -> Recorder {
        let trigger = std::env::var("VAULTLINE_TRIGGER").unwrap_or_else(|_| "manual".into());
        self.recorder_triggered(command, &trigger)
    }

    /// Like [`App::recorder`], for a run started by `trigger` (the agent
    /// recording a run it had to kill).
    pub fn recorder_triggered(&self, command: &str, trigger: &str) -> Recorder {
        Recorder::new(
            self.audit(command),
            Destinations {
                state_dir: self.config.agent.state_dir.clone(),
                metrics_file: self.config.agent.metrics_file.clone(),
                jobs: self.config.jobs.iter().map(|j| j.name.clone()).collect(),
                repo: self.repo.clone(),
                host: self.config.agent.host.clone(),
                trigger: trigger.to_string(),
                lock: self
                    .config
                    .jobs
                    .iter()
                    .filter_map(|j| j.object_lock.as_ref())
                    .max_by_key(|l| (l.days, l.mode == "COMPLIANCE"))
                    .map(|l| (l.mode.clone(), l.days)),
                hardened: matches!(self.config.repository, Repository::S3(_)),
            },
        )
    }

    /// Publishes a failed run of `job` to its SNS topic, if it has one.
    pub fn notify_failure(&self, job: &str) -> Result<()> {
        let Some(topic) = self.config.job(job).and_then(|j| j.on_failure_sns.clone()) else {
            return Ok(());
        };
        let sns = self.sns_client.as_ref().context(NO_SDK)?;
        let status = crate::ops::status::load(&self.config.agent.state_dir, job)?;
        let host = &self.config.agent.host;
        let result = status.last_run.as_ref().map_or("failed", |r| r.result.as_str());
        let subject = format!("vaultline: job {job} on {host}: {result}");
        let message = serde_json::json!({ "host": host, "job": job, "status": status }).to_string();
        crate::cloud::aws::block_on(
            sns.publish()
                .topic_arn(&topic)
                .subject(subject)
                .message(message)
                .send(),
        )?
        .map_err(|e| anyhow::anyhow!("SNS Publish to {topic}: {}", crate::cloud::aws::describe(&e)))?;
        Ok(())
    }

    /// The SDK configuration and the S3 client, for an S3 repository.
    pub fn aws(&self) -> Result<(&SdkConfig, &aws_sdk_s3::Client)> {
        match (&self.sdk, &self.s3_client) {
            (Some(sdk), Some(client)) => Ok((sdk, client)),
            _ => Err(UsageError("this configuration has no S3 repository".into()).into()),
        }
    }

    /// The configured key provider, ready to wrap and unwrap: the local
    /// master key (which must exist: `vaultline init` creates it) or the KMS
    /// key, resolved to its ARN.
    pub fn keys(&self) -> Result<Keys> {
        self.keys_also_trusting(&[])
    }

    /// Like [`App::keys`], trusting also the KMS keys `extra` (ARNs) when
    /// unwrapping (`rewrap` reads manifests it already moved to its new key).
    pub fn keys_also_trusting(&self, extra: &[String]) -> Result<Keys> {
        match &self.config.key {
            KeyConfig::Local { .. } => match self.local_key() {
                Ok(key) => Ok(CountingKeys::new(Box::new(key.provider()))),
                Err(e) => Err(self.missing_key(e)),
            },
            KeyConfig::Kms {
                key_id,
                accepted_keys,
                ..
            } => {
                let client = self.kms_client.clone().context(NO_SDK)?;
                let kms = KmsKeyWrap::connect(client, key_id)?
                    .trusting(accepted_keys)
                    .trusting(extra);
                Ok(CountingKeys::new(Box::new(kms)))
            }
        }
    }

    /// The local store, when the repository is local.
    pub fn local_store(&self) -> Option<&LocalStore> {
        self.local_store.as_ref()
    }

    /// The local key settings; an error when the key is in KMS.
    pub fn key_settings(&self) -> Result<LocalKeySettings<'_>> {
        LocalKeySettings::new(&self.config.key, &self.config.agent.state_dir).ok_or_else(|| {
            UsageError(format!(
                "{} configures a KMS key, not a local master key",
                self.config.file.display()
            ))
            .into()
        })
    }

    /// The existing local key.
    pub fn local_key(&self) -> Result<LocalKey> {
        self.key_settings()?.load()
    }

    /// A missing local key (`err` a [`MissingKey`]) worded for what the
    /// operator must do: when a repository exists, the key it was sealed
    /// with must come back from the key backup (a new key cannot read it,
    /// so `init` is no help); only without a repository is `init` the
    /// answer. Other errors are returned as they are.
    pub fn missing_key(&self, err: anyhow::Error) -> anyhow::Error {
        let Some(missing) = err.downcast_ref::<MissingKey>() else {
            return err;
        };
        let repo = self.repo.store().describe();
        let message = match self.repo.read_marker() {
            Ok(Some(m)) if m.key_provider == vaultline_crypto::LOCAL_PROVIDER => format!(
                "{missing}; {repo} was sealed with local key {}: put that key back from your key backup with \
                 `vaultline key import FILE` (docs/operations.md, \"The local master key\"); `vaultline init` \
                 cannot help, a new key cannot read this repository",
                m.key_id
            ),
            Ok(Some(m)) => format!(
                "{missing}; {repo} was sealed with {} key {}: configure that key in the [key] section of {}",
                m.key_provider,
                m.key_id,
                self.config.file.display()
            ),
            Ok(None) => {
                format!("{missing}; {repo} has no repository yet: run `vaultline init` to create both")
            }
            Err(e) => {
                tracing::debug!("{e:#}");
                format!(
                    "{missing}; if {repo} holds a repository, put its key back from your key backup with \
                     `vaultline key import FILE`, else run `vaultline init`"
                )
            }
        };
        UsageError(message).into()
    }

    /// The jobs named (all when `names` is empty); unknown names are a usage error.
    pub fn select_jobs(&self, names: &[String]) -> Result<Vec<&vaultline_config::Job>> {
        if names.is_empty() {
            if self.config.jobs.is_empty() {
                return Err(UsageError(format!("{} defines no [[jobs]]", self.config.file.display())).into());
            }
            return Ok(self.config.jobs.iter().collect());
        }
        names
            .iter()
            .map(|n| {
                self.config.job(n).ok_or_else(|| {
                    let known: Vec<&str> = self.config.jobs.iter().map(|j| j.name.as_str()).collect();
                    UsageError(format!(
                        "no job named {n:?} in {} (jobs: {})",
                        self.config.file.display(),
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ))
                    .into()
                })
            })
            .collect()
    }

    /// vaultline's own directories, which backups never enter: the state
    /// directory (locks, key file) and a local repository.
    pub fn own_paths(&self) -> Vec<PathBuf> {
        own_paths(&self.config)
    }

    /// The host whose snapshots to read: `--host` or the configured one.
    pub fn host<'a>(&'a self, flag: &'a Option<String>) -> &'a str {
        flag.as_deref().unwrap_or(&self.config.agent.host)
    }
}

/// The running user for the audit trail and messages, from the kernel (the
/// real uid) and the password database, not from `$USER`, which anyone can
/// set: `local user alice (uid 1000)`, or `local user (uid 1000)` when the
/// uid has no entry there.
pub fn local_user() -> String {
    let uid = rustix::process::getuid().as_raw();
    match passwd_name(uid) {
        Some(name) => format!("local user {name} (uid {uid})"),
        None => format!("local user (uid {uid})"),
    }
}

/// The name of `uid` in `/etc/passwd`. (Users only a directory service
/// knows are named by uid alone: reading NSS would take libc.)
pub fn passwd_name(uid: u32) -> Option<String> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id = fields.nth(1)?.parse::<u32>().ok()?;
        (id == uid && !name.is_empty()).then(|| name.to_string())
    })
}

/// Where STS is asked who the caller is: at the S3 or KMS endpoint when
/// one is custom (compatible servers that have STS serve it there).
fn sts_endpoint(config: &Config) -> Option<&str> {
    match (&config.repository, &config.key) {
        (Repository::S3(s3), _) if s3.endpoint.is_some() => s3.endpoint.as_deref(),
        (_, KeyConfig::Kms { endpoint, .. }) => endpoint.as_deref(),
        _ => None,
    }
}

/// vaultline's own directories for `config`: the state directory and a
/// local repository, also as the kernel sees them (through symlinks).
pub fn own_paths(config: &Config) -> Vec<PathBuf> {
    let mut own = vec![config.agent.state_dir.clone()];
    if let Repository::Local { path, .. } = &config.repository {
        own.push(path.clone());
    }
    let real: Vec<PathBuf> = own.iter().filter_map(|p| std::fs::canonicalize(p).ok()).collect();
    own.extend(real);
    own.sort();
    own.dedup();
    own
}

/// A configuration that holds commands vaultline runs as root (a job's
/// `on-failure`, its hooks, its command sources) must be writable by root
/// alone: whoever can edit it (or replace it, through its
/// directory) chooses what root runs. Refused with the exact fix.
fn check_commands_file(config: &Config) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let commands: Vec<String> = config.jobs.iter().flat_map(|j| j.commands_run()).collect();
    if commands.is_empty() {
        return Ok(());
    }
    let file = &config.file;
    // (A file named without a directory, `--config config.toml`, is in `.`.)
    let dir = match file.parent() {
        Some(d) if d.as_os_str().is_empty() => std::path::Path::new("."),
        Some(d) => d,
        None => std::path::Path::new("/"),
    };
    for (path, what) in [(file.as_path(), "file"), (dir, "directory")] {
        let meta = std::fs::metadata(path).with_context(|| format!("cannot stat {}", path.display()))?;
        let problem = if meta.uid() != 0 {
            Some((
                format!("is owned by uid {}", meta.uid()),
                format!("chown root: {}", path.display()),
            ))
        } else if meta.mode() & 0o022 != 0 && !(what == "directory" && meta.mode() & 0o1000 != 0) {
            // (A sticky directory lets nobody but the owner replace the file.)
            Some((
                format!(
                    "is writable by {} (mode {:04o})",
                    if meta.mode() & 0o002 != 0 {
                        "everyone"
                    } else {
                        "its group"
                    },
                    meta.mode() & 0o7777
                ),
                format!("chmod go-w {}", path.display()),
            ))
        } else {
            None
        };
        if let Some((why, fix)) = problem {
            let subject = if what == "file" {
                format!("configuration file {}", path.display())
            } else {
                format!(
                    "the directory {} of configuration file {}",
                    path.display(),
                    file.display()
                )
            };
            return Err(UsageError(format!(
                "{subject} {why}, and the configuration holds commands vaultline runs as root ({}): \
                 anyone who can change it chooses what root runs; fix with `{fix}`",
                commands.join(", ")
            ))
            .into());
        }
    }
    Ok(())
}

/// Whether the configuration file at `path` belongs to root.
pub fn config_of_root(path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).is_ok_and(|m| m.uid() == 0)
}

/// Reads the facts configuration defaults depend on from this process.
pub fn process_environment() -> Environment {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let hostname = rustix::system::uname()
        .nodename()
        .to_str()
        .ok()
        .map(str::to_string);
    Environment {
        hostname,
        is_root: rustix::process::geteuid().is_root(),
        config_of_root: false,
        home: var("HOME"),
        xdg_config_home: var("XDG_CONFIG_HOME"),
        xdg_state_home: var("XDG_STATE_HOME"),
        config_env: var("VAULTLINE_CONFIG"),
    }
}
