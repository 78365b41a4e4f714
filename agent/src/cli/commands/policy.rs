//! `vaultline policy iam --role backup|restore|admin|auditor`: prints the
//! least-privilege IAM policy (written by [`crate::cloud::iam`]) for this
//! configuration.

use anyhow::Result;
use vaultline_config::KeyConfig;
use vaultline_crypto::KeyWrap;

use crate::cli::app::App;
use crate::cli::args::PolicyRole;
use crate::cloud::iam::{Role, iam_policy};

/// Runs `policy iam`.
pub fn run(app: &App, role: PolicyRole) -> Result<()> {
    let key_arn = match &app.config.key {
        // A key ARN is the key: printing a policy needs neither KMS nor
        // credentials. An alias or a bare id is looked up (DescribeKey).
        KeyConfig::Kms { key_id, .. } if vaultline_config::valid_kms_key_arn(key_id) => Some(key_id.clone()),
        KeyConfig::Kms { .. } => Some(app.keys()?.key_id().to_string()),
        KeyConfig::Local { .. } => None,
    };
    let role = match role {
        PolicyRole::Backup => Role::Backup,
        PolicyRole::Restore => Role::Restore,
        PolicyRole::Admin => Role::Admin,
        PolicyRole::Auditor => Role::Auditor,
    };
    let doc = iam_policy(&app.config, role, key_arn.as_deref())?;
    crate::cli::output::print_line(&serde_json::to_string_pretty(&doc)?)?;
    Ok(())
}
