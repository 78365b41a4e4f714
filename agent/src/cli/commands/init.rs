//! `vaultline init`: create (or check) the repository and the local master
//! key. Safe to run again: an existing key is never replaced, an existing
//! repository is only checked against the key.

use anyhow::{Context, Result};
use serde::Serialize;

use vaultline_config::KeyConfig;
use vaultline_crypto::KeyWrap;

use crate::cli::app::App;
use crate::keys::{CountingKeys, Keys};
use crate::repo::{Kind, REPOSITORY_VERSION, RepoMarker};

#[derive(Serialize)]
struct InitReport {
    repository: String,
    repository_created: bool,
    key_provider: String,
    key_id: String,
    key_location: String,
    key_created: bool,
}

/// Runs `init`.
pub fn run(app: &App) -> Result<()> {
    let (provider, key_location, key_created): (Keys, String, bool) = match &app.config.key {
        KeyConfig::Local { .. } => {
            let (key, created) = app
                .key_settings()?
                .load_or_create()
                .context("setting up the local master key")?;
            (
                CountingKeys::new(Box::new(key.provider())),
                key.location.to_string(),
                created,
            )
        }
        KeyConfig::Kms { key_id, .. } => {
            let keys = app.keys().context("checking the KMS key")?;
            // Prove GenerateDataKey works with this host's context, as every
            // backup will need it; the key is dropped (zeroized) unused.
            let ctx = app
                .repo
                .context(&app.config.agent.host, "init", "init", Kind::Manifest, "init")?;
            keys.generate(&ctx)
                .with_context(|| format!("checking that KMS key {key_id} can generate data keys"))?;
            (keys, "AWS KMS".to_string(), false)
        }
    };
    let provider = provider.as_ref();
    if let Some(local) = app.local_store() {
        local
            .create_root()
            .with_context(|| format!("cannot create repository directory {}", local.root().display()))?;
    }
    let repository_created = match app.repo.read_marker()? {
        Some(_) => {
            app.repo.check_key(provider)?;
            false
        }
        None => {
            app.repo.write_marker(&RepoMarker {
                vaultline_repository: REPOSITORY_VERSION,
                key_provider: provider.provider_id().to_string(),
                key_id: provider.key_id().to_string(),
                created: jiff::Timestamp::now().to_string(),
            })?;
            true
        }
    };
    let report = InitReport {
        repository: app.repo.store().describe(),
        repository_created,
        key_provider: provider.provider_id().to_string(),
        key_id: provider.key_id().to_string(),
        key_location,
        key_created,
    };
    app.out.result(&report, || {
        let repo_state = if repository_created {
            "created"
        } else {
            "exists, matches the key"
        };
        if report.key_provider == crate::keys::kms::PROVIDER {
            return format!(
                "repository: {} ({repo_state})\nKMS key: {} (can generate data keys)",
                report.repository, report.key_id
            );
        }
        let mut t = format!(
            "repository: {} ({repo_state})\nmaster key: {} {} (fingerprint {})",
            report.repository,
            if key_created { "created in" } else { "found in" },
            report.key_location,
            report.key_id,
        );
        if key_created {
            t.push_str(
                "\nKeep a copy of the master key somewhere safe and separate (see docs/operations.md): \
                 without it no backup can be restored.",
            );
        }
        t
    })
}
