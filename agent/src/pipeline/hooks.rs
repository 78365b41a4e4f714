//! A job's hooks: the `before` and `after` commands around each run
//! (`[jobs.hooks]`), for backups of live services that need a moment of
//! consistency: flush and freeze, take a file-system snapshot, and undo it.
//!
//! [`around`] is the one place a run of a job goes through, whoever
//! started it (`backup now`, the agent, a timer: each is a `backup now
//! JOB`): under the job's lock it runs `before`; a `before` that fails (or
//! outlives its timeout, its process group then killed) stops the run
//! before anything is read or uploaded; otherwise the backup runs; then
//! `after` runs whatever happened — success, failure, a failed `before`, an
//! interruption (SIGINT, SIGTERM) — and is told which in
//! `VAULTLINE_STATUS`. Each hook runs with `sh -c` in a process group of
//! its own ([`child`]), its output logged.
//!
//! Environment: `VAULTLINE_JOB`, `VAULTLINE_HOST`, `VAULTLINE_HOOK`
//! (`before` or `after`), `VAULTLINE_SNAPSHOT` (in `before`: the id the
//! snapshot will have; in `after`: the id of the snapshot committed, empty
//! when none was) and, in `after`, `VAULTLINE_STATUS`: `succeeded`,
//! `incomplete` (committed, but something is missing from it), `failed` or
//! `interrupted`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use vaultline_config::Job;

use crate::error::Interrupted;
use crate::pipeline::backup::BackupReport;
use crate::pipeline::child::{self, Spec};

/// A hook that failed: what it was and how it ended.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HookFailed(pub String);

/// How a run ended, as `after` is told in `VAULTLINE_STATUS`.
pub fn status(result: &Result<BackupReport>) -> &'static str {
    match result {
        Ok(r) if r.is_complete() => "succeeded",
        Ok(_) => "incomplete",
        Err(e) if e.chain().any(|c| c.is::<Interrupted>()) => "interrupted",
        Err(_) => "failed",
    }
}

/// Runs `backup` (one run of `job`, whose snapshot will be `snapshot`)
/// between the job's hooks. A failing `before` is the run's error (nothing
/// ran); a failing `after` after a committed snapshot is recorded in the
/// report (the run is then incomplete), after a failed run it is logged
/// beside the run's own error.
pub fn around(
    job: &Job,
    host: &str,
    snapshot: &str,
    cancel: &AtomicBool,
    backup: impl FnOnce() -> Result<BackupReport>,
) -> Result<BackupReport> {
    let result = match before(job, host, snapshot, cancel) {
        Ok(()) if cancel.load(Ordering::SeqCst) => Err(Interrupted(None).into()),
        Ok(()) => backup(),
        Err(e) => Err(e),
    };
    let status = status(&result);
    let committed = result.as_ref().map(|r| r.snapshot.clone()).unwrap_or_default();
    match (result, after(job, host, &committed, status)) {
        (result, Ok(())) => result,
        (Ok(mut report), Err(e)) => {
            tracing::error!("job {}: {e:#}", job.name);
            report.after_hook = Some(format!("{e:#}"));
            Ok(report)
        }
        (Err(run), Err(e)) => {
            tracing::error!("job {}: {e:#}", job.name);
            Err(run)
        }
    }
}

fn env(job: &Job, host: &str, hook: &str, snapshot: &str) -> Vec<(&'static str, String)> {
    vec![
        ("VAULTLINE_JOB", job.name.clone()),
        ("VAULTLINE_HOST", host.to_string()),
        ("VAULTLINE_HOOK", hook.to_string()),
        ("VAULTLINE_SNAPSHOT", snapshot.to_string()),
    ]
}

/// Runs the `before` hook, if any: stopped (its group) when the run is
/// interrupted or it outlives its timeout.
fn before(job: &Job, host: &str, snapshot: &str, cancel: &AtomicBool) -> Result<()> {
    let Some(command) = &job.hooks.before else {
        return Ok(());
    };
    tracing::info!("job {}: running its before hook", job.name);
    let f = child::run(&Spec {
        what: format!("the before hook of job {}", job.name),
        command,
        env: env(job, host, "before", snapshot),
        timeout: Some(Duration::from_secs(job.hooks.timeout_secs)),
        cancel: Some(cancel),
    })?;
    if f.ended == child::Ended::Cancelled {
        return Err(Interrupted(None).into());
    }
    if !f.success() {
        // (The status and the error name the job already.)
        return Err(HookFailed(format!(
            "the before hook {}{}: the run did not start, nothing was read or uploaded",
            f.outcome(),
            f.stderr_note()
        ))
        .into());
    }
    tracing::info!(
        "job {}: before hook done in {:.1}s",
        job.name,
        f.took.as_secs_f64()
    );
    Ok(())
}

/// Runs the `after` hook, if any, to its end (or its timeout): it is not
/// stopped by an interruption, which it may have to clean up after.
fn after(job: &Job, host: &str, snapshot: &str, status: &str) -> Result<()> {
    let Some(command) = &job.hooks.after else {
        return Ok(());
    };
    tracing::info!("job {}: running its after hook (the run {status})", job.name);
    let mut env = env(job, host, "after", snapshot);
    env.push(("VAULTLINE_STATUS", status.to_string()));
    let f = child::run(&Spec {
        what: format!("the after hook of job {}", job.name),
        command,
        env,
        timeout: Some(Duration::from_secs(job.hooks.timeout_secs)),
        cancel: None,
    })?;
    if !f.success() {
        return Err(HookFailed(format!("the after hook {}{}", f.outcome(), f.stderr_note())).into());
    }
    tracing::info!(
        "job {}: after hook done in {:.1}s",
        job.name,
        f.took.as_secs_f64()
    );
    Ok(())
}
