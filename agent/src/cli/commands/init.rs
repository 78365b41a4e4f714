//! `vaultline init`: create (or check) the repository and the local master
//! key. Safe to run again: an existing key is never replaced, an existing
//! repository is only checked against the key, and no key is ever created
//! for an existing repository (a new key cannot read it: a missing one
//! must come back from the key backup, `vaultline key import`).

use anyhow::{Context, Result};
use serde::Serialize;

use vaultline_config::KeyConfig;
use vaultline_crypto::KeyWrap;

use crate::cli::app::App;
use crate::keys::{CountingKeys, Keys};
use crate::repo::{Kind, REPOSITORY_VERSION, RepoMarker};
use crate::units::count;

#[derive(Serialize)]
struct InitReport {
    repository: String,
    /// Whether the repository marker was written now.
    repository_created: bool,
    /// `created` (the directory too), `initialized` (in a directory or
    /// bucket that existed), or `exists` (and matches the key).
    repository_state: &'static str,
    /// Entries a local repository directory held before it was initialized.
    #[serde(skip_serializing_if = "Option::is_none")]
    foreign_entries: Option<usize>,
    key_provider: String,
    key_id: String,
    key_location: String,
    key_created: bool,
}

/// Runs `init`: for an existing repository, only checks the key (never
/// creates one: a new key cannot read it); otherwise makes sure the
/// repository can be written before a key is created, then writes the
/// marker.
pub fn run(app: &App) -> Result<()> {
    let existing = app.repo.read_marker()?;
    let mut foreign_entries = None;
    let mut dir_created = false;
    let (provider, key_location, key_created): (Keys, String, bool) = match (&app.config.key, &existing) {
        (KeyConfig::Local { .. }, Some(_)) => {
            let key = app.local_key().map_err(|e| app.missing_key(e))?;
            (
                CountingKeys::new(Box::new(key.provider())),
                key.location.to_string(),
                false,
            )
        }
        (KeyConfig::Local { .. }, None) => {
            if let Some(local) = app.local_store() {
                // The repository first: a key is made only for a repository
                // that can be written.
                let before = local.foreign_entries()?;
                dir_created = before.is_none();
                foreign_entries = before.filter(|n| *n > 0);
                local
                    .create_root()
                    .context("cannot create the repository directory")?;
                local.check_writable()?;
            }
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
        (KeyConfig::Kms { key_id, .. }, _) => {
            let keys = app.keys().context("checking the KMS key")?;
            // Prove GenerateDataKey works with this host's context, as every
            // backup will need it; the key is dropped (zeroized) unused.
            let ctx = app
                .repo
                .context(&app.config.agent.host, "init", "init", Kind::Manifest, "init")?;
            keys.generate(&ctx)
                .with_context(|| format!("checking that KMS key {key_id} can generate data keys"))?;
            if existing.is_none()
                && let Some(local) = app.local_store()
            {
                let before = local.foreign_entries()?;
                dir_created = before.is_none();
                foreign_entries = before.filter(|n| *n > 0);
                local
                    .create_root()
                    .context("cannot create the repository directory")?;
            }
            (keys, "AWS KMS".to_string(), false)
        }
    };
    let provider = provider.as_ref();
    let repository_created = match existing {
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
    let repository_state = match (repository_created, dir_created) {
        (false, _) => "exists",
        (true, true) => "created",
        (true, false) => "initialized",
    };
    let report = InitReport {
        repository: app.repo.store().describe(),
        repository_created,
        repository_state,
        foreign_entries,
        key_provider: provider.provider_id().to_string(),
        key_id: provider.key_id().to_string(),
        key_location,
        key_created,
    };
    if let Some(n) = foreign_entries {
        tracing::warn!(
            "{} already held {} that vaultline did not write (is it the right path?); vaultline leaves them \
             alone",
            report.repository,
            count(n as u64, "entry", "entries")
        );
    }
    app.out.summary(&report, || {
        let repo_state = match (repository_state, foreign_entries) {
            ("exists", _) => "exists, matches the key".to_string(),
            ("created", _) => "created".to_string(),
            (_, Some(n)) => format!(
                "initialized in an existing directory that already holds {}",
                count(n as u64, "other entry", "other entries")
            ),
            (_, None) if app.local_store().is_some() => "initialized in an existing empty directory".into(),
            _ => "initialized".into(),
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
                "\nBack the master key up now, somewhere safe and apart from the backups: `vaultline key export \
                 > FILE` (see docs/operations.md); without it no backup can be restored.",
            );
        }
        t
    })
}
