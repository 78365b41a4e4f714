//! `vaultline audit [--json]`: the bucket hardening report; and the gate
//! every backup passes first.

use anyhow::{Context, Result};
use vaultline_config::Repository;

use crate::cli::app::App;
use crate::cloud::hardening::{self, BucketState, HardeningError, Report};
use crate::error::{IntegrityError, NothingToCheck, UsageError};
use crate::units::count;
use std::io::Write;
use std::path::Path;

use crate::cli::output::Output;
use crate::ops::audit_log::{ShippedTrail, verify_against};
use crate::ops::report::Recorder;

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

fn record(recorder: &Recorder, report: &Report, hardening: &vaultline_config::Hardening) -> Result<()> {
    let failing: Vec<&str> = report
        .checks
        .iter()
        .filter(|f| {
            matches!(
                f.status,
                crate::cloud::hardening::Status::Fail | crate::cloud::hardening::Status::Unknown
            )
        })
        .map(|f| f.id)
        .collect();
    let blocking: Vec<&str> = report.blocking(hardening).map(|f| f.id).collect();
    recorder.event(
        "hardening-checked",
        serde_json::json!({ "bucket": report.bucket, "passed": report.passed, "not_passing": failing, "blocking": blocking }),
    )
}

/// Runs `audit`: exit 0 when every required check passes, 3 otherwise.
pub fn run(app: &App) -> Result<()> {
    let Some(report) = report(app)? else {
        return Err(
            UsageError("audit checks S3 buckets; this configuration uses a local repository".into()).into(),
        );
    };
    let recorder = app.recorder("audit");
    record(&recorder, &report, &app.config.hardening)?;
    if report.passed {
        // (Nothing is written into a bucket that is not hardened.)
        recorder.reached();
    }
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
pub fn gate(app: &App, recorder: &Recorder) -> Result<Gate> {
    let Some(report) = report(app)? else {
        return Ok(Gate {
            record: None,
            refused: None,
        });
    };
    record(recorder, &report, &app.config.hardening)?;
    let record = Some(crate::ops::status::HardeningRecord {
        time: jiff::Timestamp::now().round(jiff::Unit::Second)?.to_string(),
        passed: report.passed,
        blocking: report
            .blocking(&app.config.hardening)
            .map(|f| f.id.to_string())
            .collect(),
    });
    for f in report.checks.iter().filter(|f| {
        matches!(f.status, hardening::Status::Fail | hardening::Status::Unknown)
            && !f.blocks(&app.config.hardening)
    }) {
        tracing::warn!("hardening check {} ({}): {}", f.id, f.policy, f.finding);
    }
    if report.passed {
        tracing::info!("bucket {} passed every required hardening check", report.bucket);
        return Ok(Gate {
            record,
            refused: None,
        });
    }
    let _ = write!(std::io::stderr(), "{}", report.render(&app.config.hardening));
    Ok(Gate {
        record,
        refused: Some(refusal(app, &report, "backup refused, nothing was uploaded")),
    })
}

/// The gate's verdict: the result to record, and the refusal, if any.
pub struct Gate {
    /// For the job status (S3 repositories only).
    pub record: Option<crate::ops::status::HardeningRecord>,
    /// Set when a required check failed.
    pub refused: Option<HardeningError>,
}

/// Runs `audit-log verify`: the hash chain of the trail (the local one, or
/// `file`), then, when a configuration is at hand, every line against the
/// segments its host shipped to the repository. `app` is `None` when no
/// configuration could be loaded and a `file` was given: an auditor's
/// copy is checked on its own, and the output says the comparison was not
/// made.
pub fn verify_log(app: Option<&App>, file: Option<&Path>, out: &Output) -> Result<()> {
    let path = match (file, app) {
        (Some(f), _) => f.to_path_buf(),
        (None, Some(app)) => app.config.agent.state_dir.join("audit.jsonl"),
        (None, None) => {
            return Err(UsageError("audit-log verify needs a configuration, or --file".into()).into());
        }
    };
    if file.is_some() && !path.exists() {
        return Err(UsageError(format!("no audit trail at {}: no such file", path.display())).into());
    }
    if let (None, Some(app)) = (file, app)
        && !path.exists()
    {
        // No local trail: nothing was recorded with this state directory,
        // or the trail is gone, which the shipped segments would show.
        let host = &app.config.agent.host;
        let shipped = crate::ops::audit_log::shipped_trails(&app.repo, host)?;
        if !shipped.is_empty() {
            let segments: u64 = shipped.values().sum();
            let ids: Vec<&str> = shipped.keys().map(String::as_str).collect();
            return Err(IntegrityError(format!(
                "no audit trail at {}, but {} holds {} shipped by host {host} (trail {}): the local trail \
                 was removed, or agent.state-dir is not the state directory that wrote it",
                path.display(),
                app.repo.store().describe(),
                count(segments, "audit segment", "audit segments"),
                ids.join(", ")
            ))
            .into());
        }
        return Err(NothingToCheck(format!(
            "nothing to verify: no audit trail at {} (nothing has been recorded with this state directory \
             yet) and {} holds none shipped by host {host}",
            path.display(),
            app.repo.store().describe()
        ))
        .into());
    }
    let v = match app {
        Some(app) => {
            // The trail's own host and id: a copy from another host is
            // compared with that host's segments of that trail.
            let (host, trail) = crate::ops::audit_log::trail_identity(&path)?;
            let host = host.unwrap_or_else(|| app.config.agent.host.clone());
            let shipped = match trail {
                Some(trail) => ShippedTrail::fetch(&app.repo, &host, &trail)?,
                None => ShippedTrail::default(),
            };
            if file.is_none() {
                crate::ops::audit_log::verify(&path)?;
            }
            verify_against(&path, &shipped)?
        }
        None => crate::ops::audit_log::verify(&path)?,
    };
    if v.lines == 0 && v.shipped.is_none_or(|n| n == 0) {
        return Err(NothingToCheck(format!(
            "nothing to verify: the audit trail {} has no lines",
            path.display()
        ))
        .into());
    }
    out.summary(&v, || match v.shipped {
        Some(n) => format!(
            "{}: {} line(s), hash chain intact (head {}); the {n} line(s) shipped to the repository match",
            v.file, v.lines, v.head
        ),
        None => format!(
            "{}: {} line(s), hash chain intact (head {}); NOT compared with the shipped copy (no \
             configuration): the chain alone does not show the file was not rewritten",
            v.file, v.lines, v.head
        ),
    })
}
