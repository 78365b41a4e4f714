//! `vaultline audit [--json]`: the bucket hardening report; and the gate
//! every backup passes first.

use anyhow::{Context, Result};
use vaultline_config::Repository;

use crate::app::App;
use crate::exit::UsageError;
use crate::hardening::{self, BucketState, HardeningError, Report};

/// Reads the bucket and judges it.
pub fn report(app: &App) -> Result<Option<Report>> {
    let Repository::S3(s3) = &app.config.repository else {
        return Ok(None);
    };
    let (sdk, client) = app.aws().context("AWS clients")?;
    let state = BucketState::read(sdk, &app.config, s3, client)
        .with_context(|| format!("reading the settings of bucket {}", s3.bucket))?;
    Ok(Some(hardening::evaluate(&state, &app.config)))
}

/// Runs `audit`: exit 0 when every required check passes, 3 otherwise.
pub fn run(app: &App) -> Result<()> {
    let Some(report) = report(app)? else {
        return Err(
            UsageError("audit checks S3 buckets; this configuration uses a local repository".into()).into(),
        );
    };
    app.out.result(&report, || report.render(&app.config.hardening))?;
    if report.passed {
        Ok(())
    } else {
        Err(refusal(app, &report, "the bucket is not hardened").into())
    }
}

fn refusal(app: &App, report: &Report, what: &str) -> HardeningError {
    let ids: Vec<&str> = report.blocking(&app.config.hardening).map(|f| f.id).collect();
    HardeningError(format!(
        "{what}: bucket {} fails required check(s) {} (see `vaultline audit`; `vaultline harden` shows the \
         changes that fix them)",
        report.bucket,
        ids.join(", ")
    ))
}

/// Before a backup: refuses (exit 3) when a required check fails, printing
/// the report on stderr; logs a warning per failing `warn` check.
pub fn gate(app: &App) -> Result<()> {
    let Some(report) = report(app)? else {
        return Ok(());
    };
    for f in report.checks.iter().filter(|f| {
        matches!(f.status, hardening::Status::Fail | hardening::Status::Unknown)
            && !f.blocks(&app.config.hardening)
    }) {
        tracing::warn!("hardening check {} ({}): {}", f.id, f.policy, f.finding);
    }
    if report.passed {
        tracing::info!("bucket {} passed every required hardening check", report.bucket);
        return Ok(());
    }
    eprint!("{}", report.render(&app.config.hardening));
    Err(refusal(app, &report, "backup refused, nothing was uploaded").into())
}
