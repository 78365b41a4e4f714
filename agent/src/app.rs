//! What every command starts from: the loaded configuration, the repository
//! it names, the key provider, and the output settings.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use vaultline_config::{Config, Environment, Repository};

use crate::cli::Cli;
use crate::exit::UsageError;
use crate::keys::{LocalKey, LocalKeySettings};
use crate::output::Output;
use crate::repo::Repo;
use crate::store::local::LocalStore;

/// A loaded configuration and what it implies.
pub struct App {
    /// The configuration.
    pub config: Config,
    /// The repository it names.
    pub repo: Repo,
    /// Output settings.
    pub out: Output,
    local_store: Option<LocalStore>,
}

impl App {
    /// Locates and loads the configuration named by the flags.
    pub fn load(cli: &Cli, out: Output) -> Result<App> {
        let env = process_environment();
        let path = vaultline_config::locate(cli.config.as_deref(), &env)?;
        let config = Config::load(&path, &env)?;
        tracing::debug!("configuration {}", path.display());
        let (repo, local_store) = match &config.repository {
            Repository::Local { path, prefix } => {
                let store = LocalStore::new(path);
                (Repo::new(Arc::new(store.clone()), prefix), Some(store))
            }
        };
        Ok(App {
            config,
            repo,
            out,
            local_store,
        })
    }

    /// The local store, when the repository is local.
    pub fn local_store(&self) -> Option<&LocalStore> {
        self.local_store.as_ref()
    }

    /// The local key settings.
    pub fn key_settings(&self) -> LocalKeySettings<'_> {
        LocalKeySettings::new(&self.config.key, &self.config.agent.state_dir)
    }

    /// The existing local key.
    pub fn local_key(&self) -> Result<LocalKey> {
        self.key_settings().load()
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
