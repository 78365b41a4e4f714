//! What every command starts from: the loaded configuration, the repository
//! it names, the key provider, and the output settings.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use aws_config::SdkConfig;
use vaultline_config::{Config, Environment, KeyConfig, Repository};
use vaultline_crypto::KeyWrap;

use crate::cli::Cli;
use crate::exit::UsageError;
use crate::keys::{LocalKey, LocalKeySettings};
use crate::kms::KmsKeyWrap;
use crate::output::Output;
use crate::repo::Repo;
use crate::store::local::LocalStore;
use crate::store::s3::S3Store;

const NO_SDK: &str = "internal error: the AWS configuration was not loaded";

/// A key provider as the commands use it.
pub type Keys = Box<dyn KeyWrap + Send + Sync>;

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
}

impl App {
    /// Locates and loads the configuration named by the flags.
    pub fn load(cli: &Cli, out: Output) -> Result<App> {
        let env = process_environment();
        let path = vaultline_config::locate(cli.config.as_deref(), &env)?;
        let config = Config::load(&path, &env)?;
        tracing::debug!("configuration {}", path.display());
        let uses_aws =
            matches!(config.repository, Repository::S3(_)) || matches!(config.key, KeyConfig::Kms { .. });
        let sdk = if uses_aws {
            Some(crate::aws::sdk_config(&config.aws).context("setting up the AWS clients")?)
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
                let client = crate::aws::s3_client(sdk.as_ref().context(NO_SDK)?, s3);
                s3_client = Some(client.clone());
                let store = S3Store::new(client, s3.clone(), &config.aws);
                (Repo::new(Arc::new(store), &s3.prefix), None)
            }
        };
        Ok(App {
            config,
            repo,
            out,
            local_store,
            sdk,
            s3_client,
        })
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
        match &self.config.key {
            KeyConfig::Local { .. } => Ok(Box::new(self.local_key()?.provider())),
            KeyConfig::Kms { key_id, endpoint } => {
                let client = crate::aws::kms_client(self.sdk.as_ref().context(NO_SDK)?, endpoint.as_deref());
                Ok(Box::new(KmsKeyWrap::connect(client, key_id)?))
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
        let mut own = vec![self.config.agent.state_dir.clone()];
        own.extend(self.local_store.as_ref().map(|s| s.root().to_path_buf()));
        // Also as the kernel sees them, in case the configuration names them
        // through a symlink.
        let real: Vec<PathBuf> = own.iter().filter_map(|p| std::fs::canonicalize(p).ok()).collect();
        own.extend(real);
        own.sort();
        own.dedup();
        own
    }

    /// The host whose snapshots to read: `--host` or the configured one.
    pub fn host<'a>(&'a self, flag: &'a Option<String>) -> &'a str {
        flag.as_deref().unwrap_or(&self.config.agent.host)
    }
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
        home: var("HOME"),
        xdg_config_home: var("XDG_CONFIG_HOME"),
        xdg_state_home: var("XDG_STATE_HOME"),
        config_env: var("VAULTLINE_CONFIG"),
    }
}
